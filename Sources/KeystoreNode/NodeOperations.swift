import CertificateRegistry
import KeystoreAPI
import KeystoreConfig
import Logging
import Membership
import NIOCore
import PeerWire
import RegistryDatabase
import ReplicatedStore
import SecretMemory
import Synchronization

/// The one path every change takes: persist → apply → publish to peers → emit event.
///
/// Routes and the cluster shell call these methods and nothing else that changes state, so no
/// change can skip a step: a registration is on disk before any replica (this one included)
/// can see it, a failed write changes nothing anywhere, and every applied change is pushed to
/// peers and announced exactly once.
public final class NodeOperations: Sendable {
    let state: NodeState
    let registry: RegistryWriter
    let events: EventHub
    let logger: Logger
    let metrics: NodeMetrics
    /// Sends locally made changes to peers (the cluster shell); set once the shell exists.
    private let publisher = Mutex<(@Sendable (WireDelta) -> Void)?>(nil)
    /// Parts of the node outside the state that follow a reload (cluster membership, log level).
    private let reconfigurationHandlers = Mutex<[@Sendable (ClusterConfig, ConfigChanges) -> Void]>([])

    init(state: NodeState, registry: RegistryWriter, events: EventHub, logger: Logger, metrics: NodeMetrics) {
        self.state = state
        self.registry = registry
        self.events = events
        self.logger = logger
        self.metrics = metrics
    }

    func attachPublisher(_ publish: @escaping @Sendable (WireDelta) -> Void) {
        publisher.withLock { $0 = publish }
    }

    private func publish(_ delta: StoreDelta) {
        guard !delta.isEmpty, let send = publisher.withLock({ $0 }) else { return }
        send(state.wireDelta(for: delta))
    }

    // MARK: Keys

    /// After the join decision: generates the RAM keys the cluster did not give us, serves,
    /// and pushes the new versions. Returns how many keys were generated.
    func becomeReady() throws(NodeError) -> Int {
        let created = try state.becomeReady()
        publish(created)
        return created.keyVersions.count
    }

    /// A new primary version of a RAM key; returns the key's versions (metadata only).
    func rotate(_ ref: KeyRef, requestID: UInt64? = nil) throws(NodeError) -> [KeyVersionView] {
        let (version, delta) = try state.rotate(ref)
        publish(delta)
        logger.info("\(requestID.map { "request \($0): " } ?? "")rotated \(ref); new primary \(version.id)")
        announceRotation(ref, primary: version.id)
        return state.versionViews(ref)
    }

    func onReconfiguration(_ handler: @escaping @Sendable (ClusterConfig, ConfigChanges) -> Void) {
        reconfigurationHandlers.withLock { $0.append(handler) }
    }

    /// `SIGHUP` / `POST /v1/reload`: rereads the config file and every PSK file and applies
    /// whatever can change without a restart, all or nothing: a config that does not load, a
    /// PSK file that is bad, or a change that needs a restart leaves everything as it was.
    /// New RAM keys adopt the cluster's value when a peer already has one; only a key no
    /// member has yet is generated here. Returns the PSKs whose content changed and one line
    /// per configuration change.
    func reload() throws(NodeError) -> (changedFileKeys: [KeyRef], changes: ConfigChanges) {
        let current = state.config
        let new: ClusterConfig
        do { new = try ClusterConfig.load(path: current.configFile, node: current.nodeName) } catch {
            throw .reloadRefused(error.description)
        }
        let changes = ConfigChanges(from: current, to: new)
        guard changes.needsRestart.isEmpty else {
            throw .reloadRefused("these changes need a restart: " + changes.needsRestart.joined(separator: "; "))
        }
        let layout = KeyLayout(new)
        let fileKeys: [KeyRef: FileKey]
        do { fileKeys = try state.readFileKeys(for: layout) } catch {
            throw .reloadRefused((error as? ConfigError)?.description ?? "\(error)")
        }
        let result = state.reconfigure(to: layout, fileKeys: fileKeys)
        publish(StoreDelta(pskFingerprints: result.declarations))
        for ref in result.forgotten { logger.info("\(ref): no member declares this ram key any more; its versions are forgotten and zeroed") }
        if state.isReady {
            let minted = try state.mintMissingKeys()
            publish(minted)
            for ref in minted.keyVersions.keys.sorted() { logger.info("\(ref): new ram key generated (no member had it)") }
        }
        for handler in reconfigurationHandlers.withLock({ $0 }) { handler(new, changes) }
        if !changes.summary.isEmpty { logger.notice("reloaded the config: \(changes.summary.joined(separator: "; "))") }
        return (result.changedFileKeys, changes)
    }

    /// Housekeeping: versions past their grace period are dropped and their secrets zeroed.
    func expireVersions() {
        for (ref, id) in state.expire() { logger.info("version \(id) of \(ref) expired after its grace period") }
    }

    private func announceRotation(_ ref: KeyRef, primary: VersionID) {
        var event = Event(type: EventType.keyRotated.rawValue)
        event.domain = ref.domain
        event.name = ref.name
        event.primary = primary.description
        events.publish(event)
    }

    // MARK: Certificate registry

    /// XEP-0257 append for `user@domain`; the future succeeds once the record is durable here
    /// (and applied, and on its way to peers).
    func appendCertificate(domain: String, user: JID, name: String, certificate text: String, noCertManagement: Bool,
                           requestID: UInt64? = nil) -> EventLoopFuture<CertificateRecord> {
        let parsed: ParsedCertificate
        do { parsed = try ParsedCertificate.parse(text) } catch {
            return registry.failed(NodeError.unparsableCertificate(error.description))
        }
        return registry.perform { [self] database in
            let record = try state.planAppend(domain: domain, user: user, name: name, certificate: parsed,
                                              noCertManagement: noCertManagement)
            try persist([record], in: database)
            _ = state.applyCertificates([record])
            publish(StoreDelta(certificates: [record]))
            logger.info("\(requestID.map { "request \($0): " } ?? "")registered certificate '\(name)' for \(user)")
            return record
        }
    }

    /// Disable or revoke every live certificate of the user named `name` (two nodes may have
    /// accepted one name concurrently; a removal by name must leave none of them usable), or,
    /// with `name == nil`, every certificate of the user (revoke-all).
    func removeCertificates(domain: String, user: JID, name: String?, kind: RemovalKind,
                            requestID: UInt64? = nil) -> EventLoopFuture<[CertificateRecord]> {
        registry.perform { [self] database in
            let records = state.planRemoval(domain: domain, user: user, name: name, kind: kind)
            if records.isEmpty, let name { throw NodeError.noSuchCertificate(user: user.description, name: name) }
            guard !records.isEmpty else { return [] }
            try persist(records, in: database)
            let outcome = state.applyCertificates(records)
            publish(StoreDelta(certificates: records))
            let verb = kind == .revoked ? "revoked" : "disabled"
            logger.info("\(requestID.map { "request \($0): " } ?? "")\(verb) \(records.count) certificate(s) of \(user)\(name.map { " named '\($0)'" } ?? "")")
            announceRemovals(outcome.certificatesNewlyRemoved)
            return records
        }
    }

    /// Writes `records` (one transaction) or throws `notPersisted`: nothing is applied then.
    private func persist(_ records: [CertificateRecord], in database: RegistryDatabase) throws(NodeError) {
        do {
            try database.upsert(records.map(\.stored))
        } catch {
            metrics.counter("keystore_registry_write_failures_total", [("source", "local")], by: records.count)
            logger.error("registry write failed, request refused and nothing applied: \(error)")
            throw .notPersisted("this node could not write its registry database (\(error.description))")
        }
    }

    private func announceRemovals(_ records: [CertificateRecord]) {
        for record in records {
            guard let removal = record.removal else { continue }
            var event = Event(type: (removal.kind == .revoked ? EventType.certificateRevoked : .certificateDisabled).rawValue)
            event.domain = record.id.domain
            event.user = record.id.user
            event.fingerprintSHA256 = hexString(record.id.sha256)
            event.name = record.content?.name
            event.origin = removal.origin
            events.publish(event)
            logger.info("certificate \(record.content?.name ?? "?") of \(record.id.user) \(removal.kind == .revoked ? "revoked" : "disabled") (by \(removal.origin))")
        }
    }

    /// Start-up: records from this node's database, before joining the cluster.
    static func loadPersisted(_ database: RegistryDatabase, into state: NodeState) throws(RegistryDatabaseError) -> Int {
        let records = try database.loadAll().compactMap(CertificateRecord.init(stored:))
        state.loadPersisted(records)
        return records.count
    }
}

// MARK: Changes from peers (the shell's side of the change path)

extension NodeOperations: ClusterReplica {
    var nodeName: String { state.nodeName }
    var clusterName: String { state.config.cluster }
    var arena: SecretArena { state.arena }
    var isReady: Bool { state.isReady }
    func stamp() -> HLCTimestamp { state.stamp() }
    func observe(_ stamp: HLCTimestamp) throws(ClockError) { try state.observe(stamp) }
    var rootDigest: UInt64 { state.rootDigest }
    var bucketDigests: [UInt64] { state.bucketDigests }
    func wireDelta(forBuckets buckets: [Int]) -> WireDelta { state.wireDelta(forBuckets: buckets) }
    func fullWireDelta() -> WireDelta { state.fullWireDelta() }

    /// Key versions and PSK fingerprints live in memory only: applied at once. Certificate
    /// records are persisted first, on the registry writer (see `persistPeerRecords`).
    func applyRemote(_ wire: WireDelta, from node: String, completion: @escaping @Sendable (WireDelta) -> Void) {
        let (keys, forgotten) = state.mergeRemoteKeys(wire)
        for ref in forgotten { logger.info("\(ref): no member declares this ram key any more; its versions are forgotten and zeroed") }
        for ref in keys.primaryChanged {
            let primary = state.primaryVersionID(ref)
            logger.info("\(ref): new primary version \(primary.map(\.description) ?? "?") learned from \(node)")
            if state.isReady, let primary { announceRotation(ref, primary: primary) }
        }
        if !keys.added.isEmpty { logger.debug("merged \(keys.added.count) key versions from \(node)") }
        let forwardKeys = keys.forwardable
        guard !wire.certificates.isEmpty else {
            completion(forwardKeys.isEmpty ? WireDelta() : state.wireDelta(for: forwardKeys))
            return
        }
        let incoming = wire.certificates
        registry.perform { [self] database -> StoreDelta in
            var forward = forwardKeys
            forward.certificates = persistPeerRecords(incoming, from: node, in: database)
            return forward
        }.whenComplete { [state] result in
            let forward = (try? result.get()) ?? forwardKeys
            completion(forward.isEmpty ? WireDelta() : state.wireDelta(for: forward))
        }
    }

    /// Persist, then apply, records from peers (on the writer). When the write fails, the
    /// records are kept and retried with every later write and every second (`retryPendingPeerRecords`)
    /// until one succeeds, and health reports it meanwhile. Registrations wait for their write:
    /// this node does not serve what it could not store. Removals are applied in memory at once
    /// all the same, because a revocation this node ignored would be worse than one it might
    /// forget: after a restart it relearns it from peers before serving the registry.
    /// Returns what changed here, for forwarding.
    private func persistPeerRecords(_ incoming: [CertificateRecord], from source: String,
                                    in database: RegistryDatabase) -> [CertificateRecord] {
        // Write the join of what is held and what was pending: joins only grow, so the row
        // written is never older than one written before it.
        let pending = registry.pendingPeerRecords.value.map { record in state.certificateRecord(record.id).map { $0.merged(with: record) } ?? record }
        let changes = state.certificateChanges(incoming)
        let rows = pending + changes
        guard !rows.isEmpty else { return [] }
        do {
            try database.upsert(rows.map(\.stored))
        } catch {
            let failed = Dictionary(rows.map { ($0.id, $0) }, uniquingKeysWith: { $0.merged(with: $1) })
            registry.pendingPeerRecords.value = Array(failed.values)
            registry.recordPeerWrite(failedRecords: failed.count, error: "\(error)")
            metrics.counter("keystore_registry_write_failures_total", [("source", "peer")], by: changes.count)
            logger.error("cannot persist \(rows.count) certificate records from \(source) (\(error)); registrations wait, revocations apply in memory; retrying every second")
            let removals = changes.filter { $0.removal != nil }
            guard !removals.isEmpty else { return [] }
            let outcome = state.applyCertificates(removals)
            announceRemovals(outcome.certificatesNewlyRemoved)
            return outcome.forwardable.certificates
        }
        if !registry.pendingPeerRecords.value.isEmpty {
            logger.notice("registry database writable again: \(registry.pendingPeerRecords.value.count) pending peer records stored")
            registry.pendingPeerRecords.value = []
        }
        registry.recordPeerWrite(failedRecords: 0, error: nil)
        let outcome = state.applyCertificates(rows)
        announceRemovals(outcome.certificatesNewlyRemoved)
        return outcome.forwardable.certificates
    }

    /// Housekeeping: another attempt at peer records a failed write left pending.
    func retryPendingPeerRecords() {
        registry.perform { [self] database -> [CertificateRecord] in
            guard !registry.pendingPeerRecords.value.isEmpty else { return [] }
            return persistPeerRecords([], from: "the retry queue", in: database)
        }.whenSuccess { [self] forward in
            publish(StoreDelta(certificates: forward))
        }
    }

    func memberChanged(_ member: Member, previous: MemberStatus?) {
        var event = Event(type: EventType.member.rawValue)
        event.member = member.node
        event.state = member.status.rawValue
        event.address = member.address
        event.previous = previous?.rawValue
        events.publish(event)
    }
}

extension RegistryWriter {
    /// A failed future on the writer's loop (for refusals found before any write).
    func failed<T: Sendable>(_ error: NodeError) -> EventLoopFuture<T> {
        perform { _ in throw error }
    }
}

// MARK: Mapping between store records and database rows

extension CertificateRecord {
    /// The rules' view of this record, nil for a bare tombstone (nothing to match against).
    func registered(user: JID) -> RegisteredCertificate? {
        guard let content else {
            return RegisteredCertificate(name: "", user: user, sha256: id.sha256, notBeforeMillis: 0, notAfterMillis: 0,
                                         xmppAddrs: [], noCertManagement: false, removed: true)
        }
        return RegisteredCertificate(name: content.name, user: user, sha256: id.sha256, notBeforeMillis: content.notBeforeMillis,
                                     notAfterMillis: content.notAfterMillis, xmppAddrs: content.jids.compactMap(JID.init),
                                     noCertManagement: content.noCertManagement, removed: removal != nil)
    }

    var stored: StoredCertificate {
        StoredCertificate(domain: id.domain, user: id.user, sha256: id.sha256, name: content?.name, der: content?.der,
                          notBeforeMillis: content?.notBeforeMillis, notAfterMillis: content?.notAfterMillis,
                          jids: content?.jids ?? [], noCertManagement: content?.noCertManagement ?? false,
                          addedWall: content?.added.wallMillis, addedLogical: content?.added.logical, addedOrigin: content?.origin,
                          removalKind: removal?.kind.rawValue, removalWall: removal?.stamp.wallMillis,
                          removalLogical: removal?.stamp.logical, removalOrigin: removal?.origin)
    }

    init?(stored row: StoredCertificate) {
        var content: CertificateContent?
        if let name = row.name, let der = row.der, let notBefore = row.notBeforeMillis, let notAfter = row.notAfterMillis,
           let wall = row.addedWall, let logical = row.addedLogical, let origin = row.addedOrigin {
            content = CertificateContent(name: name, der: der, notBeforeMillis: notBefore, notAfterMillis: notAfter, jids: row.jids,
                                         noCertManagement: row.noCertManagement, added: HLCTimestamp(wallMillis: wall, logical: logical), origin: origin)
        }
        var removal: CertificateRemoval?
        if let raw = row.removalKind, let kind = RemovalKind(rawValue: raw), let wall = row.removalWall,
           let logical = row.removalLogical, let origin = row.removalOrigin {
            removal = CertificateRemoval(kind: kind, stamp: HLCTimestamp(wallMillis: wall, logical: logical), origin: origin)
        }
        guard content != nil || removal != nil, row.sha256.count == 32 else { return nil }
        self.init(id: CertificateID(domain: row.domain, user: row.user, sha256: row.sha256), content: content, removal: removal)
    }
}
