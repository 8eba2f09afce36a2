import CertificateRegistry
import Dispatch
import KeystoreAPI
import KeystoreConfig
import Logging
import Membership
import NIOCore
import PeerWire
import RegistryDatabase
import ReplicatedStore
import SecretMemory
import ServiceLifecycle
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
    /// True until the join ends (`finishJoin`): registry records from peers are applied as
    /// they arrive and stored behind them (`applyWhileJoining`).
    private let joinApplies = Mutex(true)
    /// The join's applied records waiting for the writer, stored together by whichever
    /// `storeJoinWrites` runs next (`applyWhileJoining`).
    private let joinWrites = Mutex<[JoinWrite]>([])

    /// Records per transaction of the join's group commits (`storeJoinWrites`): ~3 MB of rows.
    static let joinWriteRecords = 4_096

    private struct JoinWrite: Sendable {
        let changed: PendingRegistry
        let forgotten: [CertificateID]
        let source: String
        /// Answers the chunk (the join counts it) once its records are stored.
        let finish: @Sendable () -> Void
    }
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
        metrics.counter("keystore_key_rotations_total", [("origin", "local")])
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

    // MARK: Registry (certificates, token floors)

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
            try persist(RegistryWrite(certificates: [record.stored]), count: 1, in: database)
            _ = state.applyRegistry(certificates: [record], nowMillis: wallClockMillis())
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
            try persist(RegistryWrite(certificates: records.map(\.stored)), count: records.count, in: database)
            let outcome = state.applyRegistry(certificates: records, nowMillis: wallClockMillis())
            publish(StoreDelta(certificates: records))
            let verb = kind == .revoked ? "revoked" : "disabled"
            logger.info("\(requestID.map { "request \($0): " } ?? "")\(verb) \(records.count) certificate(s) of \(user)\(name.map { " named '\($0)'" } ?? "")")
            announce(outcome)
            return records
        }
    }

    /// Revokes every refresh token of the user issued so far (MongooseIM's `revoke`): the
    /// user's sequence floor rises, durably, here and then on every node.
    func revokeTokens(domain: String, user: JID, requestID: UInt64? = nil) -> EventLoopFuture<TokenSequenceFloor> {
        registry.perform { [self] database in
            let floor = state.planTokenRevocation(domain: domain, user: user)
            try persist(RegistryWrite(tokenSequenceFloors: [floor.stored]), count: 1, in: database)
            let outcome = state.applyRegistry(certificates: [], floors: [floor], nowMillis: wallClockMillis())
            publish(StoreDelta(tokenSequenceFloors: [floor]))
            logger.info("\(requestID.map { "request \($0): " } ?? "")revoked the refresh tokens of \(user) (sequence floor \(floor.floor))")
            announce(outcome)
            return floor
        }
    }

    /// Writes one batch (one transaction) or throws `notPersisted`: nothing is applied then.
    private func persist(_ batch: RegistryWrite, count: Int, in database: RegistryDatabase) throws(NodeError) {
        do {
            try database.write(batch)
        } catch {
            metrics.counter("keystore_registry_write_failures_total", [("source", "local")], by: count)
            logger.error("registry write failed, request refused and nothing applied: \(error)")
            throw .notPersisted("this node could not write its registry database (\(error.description))")
        }
    }

    /// Events for what a merge removed or revoked.
    private func announce(_ outcome: MergeOutcome) {
        for record in outcome.certificatesNewlyRemoved {
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
        for floor in outcome.tokenSequenceFloorsChanged {
            var event = Event(type: EventType.tokensRevoked.rawValue)
            event.domain = floor.domain
            event.user = floor.user
            event.sequence = Int(clamping: floor.floor)
            event.origin = floor.origin
            events.publish(event)
        }
    }

    /// Housekeeping: certificates expired past their retention are forgotten (docs/replication.md,
    /// "Compaction") and their rows deleted. A row whose delete fails is deleted after the next
    /// restart, which forgets it again right after loading.
    func expireCertificates() {
        registry.perform { [self] database in
            let forgotten = state.expireCertificates()
            guard !forgotten.isEmpty else { return }
            do {
                try database.write(RegistryWrite(deletedCertificates: forgotten.map(\.storedKey)))
                logger.info("forgot \(forgotten.count) certificate records past their expiry")
            } catch {
                logger.warning("could not delete \(forgotten.count) expired certificate rows (\(error)); they are removed after the next restart")
            }
        }.whenFailure { [logger] error in logger.error("certificate expiry failed: \(error)") }
    }

    /// Start-up: records from this node's database, before joining the cluster. Rows written
    /// by an older version are brought up to date first: users are re-prepared with the JID
    /// rules (a localpart stored in NFD or upper case becomes the one canonical key), records are
    /// compacted, and rows expired past their retention are deleted.
    ///
    /// Per-row work is kept to what a row needs (100,000 rows must load in a fraction of a
    /// second): a user that is plain lowercase ASCII is already prepared (nodeprep and nameprep
    /// are the identity on it) and skips libidn; rows are unique by key in the database, and
    /// renamed rows are joined into the store after the others, by the store's own join.
    static func loadPersisted(_ database: RegistryDatabase, into state: NodeState) throws(RegistryDatabaseError) -> Int {
        // Reading and decoding rows and indexing them in the store take about as long each
        // (0.4–0.5 s per 100,000 rows here): the store takes each batch on its own thread while
        // the next one is read, which is what brings a restart with 100,000 records near 1 s.
        // The reader also computes the records' hashes, which leaves the two steps about even.
        let indexing = DispatchQueue(label: "keystore.load-certificates")
        let indexed = DispatchGroup()
        var renamed: [CertificateID] = []
        var renamedRecords: [CertificateRecord] = []
        var rewrite: [CertificateRecord] = []
        let startsEmpty = state.certificateRecordCount == 0
        let expected = startsEmpty ? try database.estimatedCertificateCount() : 0
        if startsEmpty { state.reserveCertificates(expected) }
        if expected > 0 {
            // Both threads' heaps readied for what they allocate (`ProcessMemory.prepareThreadHeap`):
            // the indexer keeps every record's DER and strings, about the file's size; the reader
            // holds the batches in flight.
            let indexedBytes = expected * RegistryDatabase.estimatedBytesPerCertificateRow
            indexing.async(group: indexed) { ProcessMemory.prepareThreadHeap(forBytes: indexedBytes) }
            ProcessMemory.prepareThreadHeap(forBytes: 16 << 20)
        }
        let loaded: Result<Void, RegistryDatabaseError>
        do {
            try database.forEachCertificateBatch { rows in
                var batch: [HashedCertificateRecord] = []
                batch.reserveCapacity(rows.count)
                for row in rows {
                    guard let record = CertificateRecord(stored: row) else { continue }
                    if let prepared = JID.preparedIfDifferent(record.id.user) {
                        renamed.append(record.id)
                        var moved = record
                        moved.id = CertificateID(domain: record.id.domain, user: prepared, sha256: record.id.sha256)
                        renamedRecords.append(moved)
                        continue
                    }
                    if record.needsCompaction { rewrite.append(record.compacted()) }
                    batch.append(HashedCertificateRecord(record))
                }
                // Rows of one table (distinct primary keys) into a store that held none, and
                // renamed rows wait until after: then nothing in these batches is held yet.
                indexing.async(group: indexed) { [batch] in state.loadPersisted(batch, floors: [], noneHeld: startsEmpty) }
            }
            loaded = .success(())
        } catch {
            loaded = .failure(error)
        }
        // Whatever was handed over is indexed before anything else touches the store.
        indexed.wait()
        try loaded.get()
        if !renamedRecords.isEmpty {
            // Joined with whatever else has their new key (the store's join), and rewritten under it.
            state.loadPersisted(renamedRecords.map(HashedCertificateRecord.init), floors: [])
            let targets = Set(renamedRecords.map(\.id))
            rewrite.removeAll { targets.contains($0.id) }
            rewrite += state.certificateRecords(Array(targets)).map { $0.compacted() }
        }
        var floors: [String: TokenSequenceFloor] = [:]
        var renamedFloors: [(domain: String, user: String)] = []
        for row in try database.loadTokenSequenceFloors() {
            var floor = TokenSequenceFloor(stored: row)
            if let prepared = JID.preparedIfDifferent(floor.user) {
                renamedFloors.append((floor.domain, floor.user))
                floor.user = prepared
            }
            let key = floor.domain + "\u{0}" + floor.user
            if let held = floors[key], !floor.supersedes(held) { continue }
            floors[key] = floor
        }
        state.loadPersisted([], floors: Array(floors.values))
        let count = state.certificateRecordCount
        let expired = Set(state.expireCertificates())
        if !rewrite.isEmpty || !expired.isEmpty || !renamed.isEmpty || !renamedFloors.isEmpty {
            try database.write(RegistryWrite(certificates: rewrite.filter { !expired.contains($0.id) }.map(\.stored),
                                             deletedCertificates: renamed.map(\.storedKey) + expired.map(\.storedKey),
                                             tokenSequenceFloors: renamedFloors.isEmpty ? [] : floors.values.map(\.stored),
                                             deletedTokenSequenceFloors: renamedFloors))
        }
        return count
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
    var sectionDigests: SectionDigests { state.sectionDigests }
    func wireDelta(forBuckets buckets: [Int], sections: [BucketSections]) -> WireDelta {
        state.wireDelta(forBuckets: buckets, sections: sections)
    }
    var durableBucketDigests: [UInt64] { state.durableBucketDigests }
    func stateAnswer(peerDurableDigests: [UInt64]?, chunkBytes: Int) -> WireStateAnswer {
        state.stateAnswer(peerDurableDigests: peerDurableDigests, chunkBytes: chunkBytes)
    }

    /// Key versions and key declarations live in memory only: applied at once. Registry
    /// records (certificates, token floors) are persisted first, on the registry writer (see
    /// `persistPeerRecords`).
    func applyRemote(_ wire: WireDelta, from node: String, completion: @escaping @Sendable (WireDelta) -> Void) {
        let (keys, forgotten) = state.mergeRemoteKeys(wire)
        for ref in forgotten { logger.info("\(ref): no member declares this ram key any more; its versions are forgotten and zeroed") }
        for ref in keys.primaryChanged {
            let primary = state.primaryVersionID(ref)
            // While joining, every key is "new": 10,000 lines would say nothing the ready line does not.
            logger.log(level: state.isReady ? .info : .debug,
                       "\(ref): new primary version \(primary.map(\.description) ?? "?") learned from \(node)")
            if state.isReady, let primary {
                metrics.counter("keystore_key_rotations_total", [("origin", "peer")])
                announceRotation(ref, primary: primary)
            }
        }
        if !keys.added.isEmpty { logger.debug("merged \(keys.added.count) key versions from \(node)") }
        let forwardKeys = keys.forwardable
        guard !wire.certificates.isEmpty || !wire.tokenSequenceFloors.isEmpty else {
            completion(forwardKeys.isEmpty ? WireDelta() : state.wireDelta(for: forwardKeys))
            return
        }
        let incoming = PendingRegistry(certificates: wire.certificates, floors: wire.tokenSequenceFloors)
        let appliedWhileJoining = joinApplies.withLock { joining in
            guard joining, !state.isReady else { return false }
            applyWhileJoining(incoming, forwardKeys: forwardKeys, from: node, completion: completion)
            return true
        }
        if appliedWhileJoining { return }
        registry.perform { [self] database -> StoreDelta in
            let registryForward = persistPeerRecords(incoming, from: node, in: database).forward
            var forward = forwardKeys
            forward.certificates = registryForward.certificates
            forward.tokenSequenceFloors = registryForward.tokenSequenceFloors
            return forward
        }.whenComplete { [state] result in
            let forward = (try? result.get()) ?? forwardKeys
            completion(forward.isEmpty ? WireDelta() : state.wireDelta(for: forward))
        }
    }

    /// While the node joins it serves nothing (no request is answered before ready), so the
    /// registry records of its join are applied here, on the cluster loop, as they are decoded,
    /// and stored behind them by the writer (each id's value as held at write time): the store's
    /// merge and the database's writes run on two threads rather than one after the other on
    /// the writer, which was most of a fresh node's time to ready (BENCHMARKS.md, large state).
    /// Ready still waits for every write: the join counts this completion, which comes once the
    /// records are stored; when the write fails it waits for a retry that stores them
    /// (`finishJoin` waits for the rest), so a node is never ready with records it could not store.
    private func applyWhileJoining(_ incoming: PendingRegistry, forwardKeys: StoreDelta, from node: String,
                                   completion: @escaping @Sendable (WireDelta) -> Void) {
        let now = wallClockMillis()
        // Records whose certificate has expired are not admitted (as `certificateChanges` leaves
        // them out of a write after ready).
        let certificates = incoming.certificates.filter { record in !(record.content?.isForgettable(atMillis: now) ?? false) }
        let outcome = state.applyRegistry(certificates: certificates, floors: incoming.floors, nowMillis: now)
        announce(outcome)
        var forward = outcome.forwardable
        forward.keyVersions = forwardKeys.keyVersions
        forward.pskFingerprints = forwardKeys.pskFingerprints
        let finish: @Sendable () -> Void = { [state, forward] in completion(forward.isEmpty ? WireDelta() : state.wireDelta(for: forward)) }
        let changed = PendingRegistry(certificates: outcome.certificatesChanged, floors: outcome.tokenSequenceFloorsChanged)
        let forgotten = outcome.certificatesForgotten
        guard !changed.isEmpty || !forgotten.isEmpty else {
            finish()
            return
        }
        // Group commit: the chunks that arrive while the writer is busy are stored together by
        // its next turn, in one transaction and one fsync. One transaction per chunk cost a
        // fresh node's 100,000-record join 108 fdatasync calls, ~0.87 s of the writer waiting
        // on them (strace; 53 and ~0.63 s now), and rewrote the same index pages into the WAL
        // every time.
        let first = joinWrites.withLock { queue in
            queue.append(JoinWrite(changed: changed, forgotten: forgotten, source: node, finish: finish))
            return queue.count == 1
        }
        if first { scheduleJoinWrites() }
    }

    private func scheduleJoinWrites() {
        registry.perform { [self] database in storeJoinWrites(in: database) }.whenFailure { [self] _ in
            // Not run (the writer is shutting down): answered as before, the process is ending.
            for write in joinWrites.withLock({ queue in defer { queue = [] }; return queue }) { write.finish() }
        }
    }

    /// The writer's side of `applyWhileJoining`: stores every queued chunk's records as held
    /// now (each id's current value), then answers the chunks. When the write fails, they are
    /// answered once a retry has stored them (`persistPeerRecords` keeps them pending).
    ///
    /// One transaction takes queued chunks up to `joinWriteRecords` records (at least one
    /// chunk) and leaves the rest to the writer's next turn: everything queued at once made the
    /// transient copies of a write (rows, encoded JIDs) of tens of thousands of records, and a
    /// fresh node kept ~8 MiB more resident after its join.
    private func storeJoinWrites(in database: RegistryDatabase) {
        let (writes, more) = joinWrites.withLock { queue -> ([JoinWrite], Bool) in
            var taken = 0, records = 0
            while taken < queue.count, taken == 0 || records + queue[taken].changed.count <= Self.joinWriteRecords {
                records += queue[taken].changed.count
                taken += 1
            }
            defer { queue.removeFirst(taken) }
            return (Array(queue.prefix(taken)), taken < queue.count)
        }
        if more { scheduleJoinWrites() }
        guard !writes.isEmpty else { return }
        // Only while the join lasts: `checkpointAfterJoin` turns them back on after it, on this
        // thread, so a write queued before the join ended and run after cannot pause them again.
        // It fails only on a closed database, and then the write below says so.
        if joinApplies.withLock({ $0 }) { try? database.pauseAutomaticCheckpoints() }
        let forgotten = writes.flatMap(\.forgotten)
        if !forgotten.isEmpty { try? database.write(RegistryWrite(deletedCertificates: forgotten.map(\.storedKey))) }
        let changed = PendingRegistry(certificates: writes.flatMap(\.changed.certificates), floors: writes.flatMap(\.changed.floors))
        let sources = Set(writes.map(\.source)).sorted().joined(separator: ", ")
        if changed.isEmpty || persistPeerRecords(changed, alreadyApplied: true, from: sources, in: database).stored {
            for write in writes { write.finish() }
        } else {
            registry.waitingForPendingRecords.value += writes.map(\.finish)
        }
    }

    /// Records arriving from now on are persisted, then applied (`finishJoin`'s first step).
    func stopApplyingWhileJoining() {
        joinApplies.withLock { $0 = false }
    }

    /// Ends the join's way of applying registry records (`applyWhileJoining`) and waits until
    /// every record applied that way is stored (or the process is asked to stop): only then may
    /// the node serve. Records arriving from now on are persisted, then applied.
    func finishJoin() async {
        stopApplyingWhileJoining()
        // Resumed once, by the writer or by a shutdown, whichever comes first (a shutdown may
        // come before the continuation exists).
        let waiter = Mutex<(continuation: CheckedContinuation<Void, Never>?, done: Bool)>((nil, false))
        let resume: @Sendable () -> Void = {
            waiter.withLock { state -> CheckedContinuation<Void, Never>? in
                state.done = true
                defer { state.continuation = nil }
                return state.continuation
            }?.resume()
        }
        await withGracefulShutdownHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let done = waiter.withLock { state -> Bool in
                    if !state.done { state.continuation = continuation }
                    return state.done
                }
                if done {
                    continuation.resume()
                    return
                }
                registry.perform { [registry] _ in
                    if registry.pendingPeerRecords.value.isEmpty { resume() } else { registry.waitingForPendingRecords.value.append(resume) }
                }.whenFailure { _ in resume() }
            }
        } onGracefulShutdown: {
            resume()
        }
    }

    /// After ready: moves what the join wrote into the database file and turns SQLite's
    /// automatic checkpoints back on (`storeJoinWrites` paused them: without the pause a fresh
    /// node wrote each of the join's pages twice, into the WAL and then into the file, before
    /// it could be ready). Registrations made meanwhile wait behind it on the writer (~0.45 s
    /// after a 100,000-record join); reads are served from memory and do not wait.
    func checkpointAfterJoin() {
        let started = monotonicMillis()
        registry.perform { database in try database.checkpointAndResumeAutomaticCheckpoints() }.whenComplete { [logger] result in
            switch result {
            case .success(let outcome) where !outcome.complete:
                logger.notice("the registry database's WAL (\(outcome.walBytes >> 20) MiB after the join) is busy with another reader; SQLite moves it into the database file on later writes")
            case .success(let outcome):
                logger.debug("moved the join's \(outcome.walBytes >> 20) MiB of WAL into the registry database in \(monotonicMillis() - started) ms")
            case .failure(let error):
                logger.warning("cannot checkpoint the registry database after the join (\(error)); SQLite retries on later writes")
            }
        }
    }

    /// Persist, then apply, registry records from peers (on the writer). When the write fails,
    /// the records are kept and retried with every later write and every second
    /// (`retryPendingPeerRecords`) until one succeeds, and health reports it meanwhile.
    /// Registrations wait for their write: this node does not serve what it could not store.
    /// Revocations (certificate removals, token floors) are applied in memory at once all the
    /// same, because a revocation this node ignored would be worse than one it might forget:
    /// after a restart it relearns it from peers before serving the registry.
    /// `alreadyApplied`: the records were applied during the join (`applyWhileJoining`); what
    /// is written is each id's value as held now, and nothing is applied.
    /// Returns what changed here, for forwarding, and whether the records are stored.
    private func persistPeerRecords(_ incoming: PendingRegistry, alreadyApplied: Bool = false, from source: String,
                                    in database: RegistryDatabase) -> (forward: StoreDelta, stored: Bool) {
        let now = wallClockMillis()
        // Write the join of what is held and what was pending: joins only grow, so the row
        // written is never older than one written before it. A pending floor is in memory
        // already (applied when its write failed), so it is written as held, not as a change.
        let pending = registry.pendingPeerRecords.value
        let pendingCertificates = pending.certificates.map { record in state.certificateRecord(record.id).map { $0.merged(with: record) } ?? record }
        let certificates: [CertificateRecord]
        let floors: [TokenSequenceFloor]
        if alreadyApplied {
            certificates = pendingCertificates + state.heldCertificates(incoming.certificates)
            floors = state.joinedTokenFloors(pending.floors + incoming.floors)
        } else {
            certificates = pendingCertificates + state.certificateChanges(incoming.certificates, nowMillis: now)
            floors = state.joinedTokenFloors(pending.floors + state.tokenFloorChanges(incoming.floors))
        }
        guard !certificates.isEmpty || !floors.isEmpty else { return (StoreDelta(), true) }
        do {
            try database.write(RegistryWrite(certificates: certificates.map(\.stored), tokenSequenceFloors: floors.map(\.stored)))
        } catch {
            let kept = PendingRegistry(certificates: Array(Dictionary(certificates.map { ($0.id, $0) }, uniquingKeysWith: { $0.merged(with: $1) }).values),
                                       floors: floors)
            registry.pendingPeerRecords.value = kept
            registry.recordPeerWrite(failedRecords: kept.count, error: "\(error)")
            metrics.counter("keystore_registry_write_failures_total", [("source", "peer")], by: kept.count)
            if alreadyApplied {
                logger.error("cannot persist \(kept.count) registry records from \(source) (\(error)); the join waits until they are stored; retrying every second")
                return (StoreDelta(), false)
            }
            logger.error("cannot persist \(kept.count) registry records from \(source) (\(error)); registrations wait, revocations apply in memory; retrying every second")
            let removals = certificates.filter { $0.removal != nil }
            guard !removals.isEmpty || !floors.isEmpty else { return (StoreDelta(), false) }
            let outcome = state.applyRegistry(certificates: removals, floors: floors, nowMillis: now)
            announce(outcome)
            return (outcome.forwardable, false)
        }
        let pendingStored = !pending.isEmpty
        if pendingStored {
            logger.notice("registry database writable again: \(pending.count) pending peer records stored")
            registry.pendingPeerRecords.value = PendingRegistry()
        }
        registry.recordPeerWrite(failedRecords: 0, error: nil)
        // Records applied during the join are held already; pending ones that waited for this
        // write are applied now (a no-op for a join's).
        let outcome = state.applyRegistry(certificates: alreadyApplied ? pendingCertificates : certificates, floors: floors, nowMillis: now)
        if !outcome.certificatesForgotten.isEmpty {
            try? database.write(RegistryWrite(deletedCertificates: outcome.certificatesForgotten.map(\.storedKey)))
        }
        announce(outcome)
        if pendingStored {
            let waiting = registry.waitingForPendingRecords.value
            registry.waitingForPendingRecords.value = []
            for resume in waiting { resume() }
        }
        var forward = outcome.forwardable
        forward.keyVersions = [:]
        forward.pskFingerprints = []
        return (forward, true)
    }

    /// Housekeeping: another attempt at peer records a failed write left pending.
    func retryPendingPeerRecords() {
        registry.perform { [self] database -> StoreDelta in
            guard !registry.pendingPeerRecords.value.isEmpty else { return StoreDelta() }
            return persistPeerRecords(PendingRegistry(), from: "the retry queue", in: database).forward
        }.whenSuccess { [self] forward in
            publish(forward)
        }
    }

    func memberChanged(_ member: Member, previous: MemberStatus?) {
        announceMember(member.node, state: member.status.rawValue, address: member.address, previous: previous)
    }

    func memberLeft(_ node: String, address: String, previous: MemberStatus?) {
        announceMember(node, state: MemberState.left.rawValue, address: address, previous: previous)
    }

    private func announceMember(_ node: String, state: String, address: String, previous: MemberStatus?) {
        var event = Event(type: EventType.member.rawValue)
        event.member = node
        event.state = state
        event.address = address
        event.previous = previous?.rawValue
        events.publish(event)
    }
}

/// Registry records from peers that could not be written yet.
struct PendingRegistry: Sendable {
    var certificates: [CertificateRecord] = []
    var floors: [TokenSequenceFloor] = []
    var count: Int { certificates.count + floors.count }
    var isEmpty: Bool { certificates.isEmpty && floors.isEmpty }
}

extension RegistryWriter {
    /// A failed future on the writer's loop (for refusals found before any write).
    func failed<T: Sendable>(_ error: NodeError) -> EventLoopFuture<T> {
        perform { _ in throw error }
    }
}

// MARK: Mapping between store records and database rows

extension JID {
    /// The prepared form of a stored user when it differs from what is stored (a row written by
    /// an older version), nil when the stored user is already prepared or does not parse.
    static func preparedIfDifferent(_ user: String) -> String? {
        guard !isPreparedBareASCII(user), let prepared = JID(user)?.description, !prepared.utf8.elementsEqual(user.utf8) else { return nil }
        return prepared
    }

    /// True for `local@domain` in lowercase ASCII letters, digits and `.-_+` (the domain without
    /// `_+`), each part 1...1023 bytes and the domain without empty labels: nodeprep and nameprep
    /// map such a string to itself, so `JID(user)?.description == user` without asking libidn.
    /// Anything else (upper case, other punctuation, non-ASCII) answers false and takes the full
    /// preparation.
    static func isPreparedBareASCII(_ user: String) -> Bool {
        var user = user
        return user.withUTF8 { bytes in
            var at = -1
            for (index, byte) in bytes.enumerated() {
                switch byte {
                case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "."), UInt8(ascii: "-"):
                    continue
                case UInt8(ascii: "_"), UInt8(ascii: "+"):
                    if at >= 0 { return false }
                case UInt8(ascii: "@"):
                    if at >= 0 { return false }
                    at = index
                default:
                    return false
                }
            }
            let localCount = at, domainCount = bytes.count - at - 1
            guard at > 0, localCount <= maxPartBytes, domainCount > 0, domainCount <= maxPartBytes else { return false }
            // No empty DNS label: no leading or trailing dot, no two dots in a row.
            var previous = UInt8(ascii: ".")
            for byte in bytes[(at + 1)...] {
                if byte == UInt8(ascii: "."), previous == UInt8(ascii: ".") { return false }
                previous = byte
            }
            return previous != UInt8(ascii: ".")
        }
    }
}

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

    var storedKey: StoredCertificateKey { id.storedKey }

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

extension CertificateID {
    var storedKey: StoredCertificateKey { StoredCertificateKey(domain: domain, user: user, sha256: sha256) }
}

extension TokenSequenceFloor {
    var stored: StoredTokenSequenceFloor {
        StoredTokenSequenceFloor(domain: domain, user: user, floor: floor, stampWall: stamp.wallMillis,
                                 stampLogical: stamp.logical, origin: origin)
    }

    init(stored row: StoredTokenSequenceFloor) {
        self.init(domain: row.domain, user: row.user, floor: row.floor,
                  stamp: HLCTimestamp(wallMillis: row.stampWall, logical: row.stampLogical), origin: row.origin)
    }
}
