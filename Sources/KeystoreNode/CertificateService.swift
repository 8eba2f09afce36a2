import KeystoreAPI
import CertificateRegistry
import Dispatch
import LocalAPI
import Logging
import NIOCore
import RegistryDatabase
import ReplicatedStore
import Synchronization

/// The node side of the certificate registry (DESIGN.md "Certificate registry"): XEP-0257
/// rules from `CertificateRegistry`, replicated records in the store, durability in SQLite.
///
/// Every write is committed to the node's database (WAL, synchronous=FULL) before the request
/// is acknowledged; the database is only touched from one serial queue.
public final class CertificateService: Sendable {
    let state: NodeState
    let logger: Logger
    let events: EventHub
    private let database: DatabaseWorker?

    init(state: NodeState, database: RegistryDatabase?, logger: Logger, events: EventHub) {
        self.state = state
        self.logger = logger
        self.events = events
        self.database = database.map(DatabaseWorker.init)
    }

    /// Loads the persisted records into the store (before joining the cluster).
    static func loadPersisted(_ database: RegistryDatabase, into state: NodeState) throws -> Int {
        let rows = try database.loadAll()
        let records = rows.compactMap(CertificateRecord.init(stored:))
        state.withStore { $0.store.loadCertificates(records) }
        return records.count
    }

    // MARK: Operations

    struct Registration: Sendable {
        var record: CertificateRecord
        var parsed: ParsedCertificate
    }

    /// `append` for `user@domain`; the future completes after the record is durable.
    func append(domain: String, user: JID, name: String, certificateText: String, noCertManagement: Bool,
                eventLoop: EventLoop) throws(APIError) -> EventLoopFuture<CertificateRecord> {
        let parsed: ParsedCertificate
        do { parsed = try ParsedCertificate.parse(certificateText) } catch {
            throw APIError(.invalidCertificate, error.description)
        }
        let now = wallClockMillis()
        let userKey = user.description
        let result: Result<CertificateRecord, RegistryError> = state.withStore { inner in
            let existing = inner.store.certificates(domain: domain, user: userKey).compactMap { $0.registered(user: user) }
            do throws(RegistryError) {
                try CertificateRules.checkAppend(parsed, name: name, user: user, existing: existing, nowMillis: Int64(now))
            } catch {
                return .failure(error)
            }
            let id = CertificateID(domain: domain, user: userKey, sha256: parsed.sha256)
            let content = CertificateContent(name: name, der: parsed.der, notBeforeMillis: parsed.notBeforeMillis,
                                             notAfterMillis: parsed.notAfterMillis, jids: parsed.xmppAddrs.map(\.description),
                                             noCertManagement: noCertManagement, added: inner.clock.now(wallMillis: now), origin: state.nodeName)
            guard let record = inner.store.appendCertificate(id, content) else {
                return .failure(.alreadyRegistered(name: name))
            }
            return .success(record)
        }
        switch result {
        case .failure(let error): throw APIError(error.apiCode, error.description)
        case .success(let record): return persist([record], on: eventLoop).map { record }
        }
    }

    /// `disable` / `revoke` by name; completes after the tombstone is durable.
    func remove(domain: String, user: JID, name: String, kind: RemovalKind, eventLoop: EventLoop) throws(APIError) -> EventLoopFuture<CertificateRecord> {
        let now = wallClockMillis()
        let record = state.withStore { inner in
            inner.store.removeCertificate(domain: domain, user: user.description, name: name, kind: kind,
                                          stamp: inner.clock.now(wallMillis: now), origin: state.nodeName)
        }
        guard let record else {
            throw APIError(.notFound, "\(user) has no active certificate named '\(name)'")
        }
        announceRemoval(record, by: "local request")
        return persist([record], on: eventLoop).map { record }
    }

    /// Live registrations (and, with `includeRemoved`, the removed ones) of `user@domain`.
    func list(domain: String, user: JID, includeRemoved: Bool) -> [CertificateRecord] {
        state.withStore { inner in
            includeRemoved ? inner.store.certificates(domain: domain, user: user.description)
                           : inner.store.liveCertificates(domain: domain, user: user.description)
        }
    }

    /// SASL EXTERNAL: which JID does the presented certificate authenticate as, right now?
    func verify(domain: String, certificateText: String, authzid: JID?) throws(APIError) -> JID {
        let parsed: ParsedCertificate
        do { parsed = try ParsedCertificate.parse(certificateText) } catch {
            throw APIError(.invalidCertificate, error.description)
        }
        let now = Int64(wallClockMillis())
        let result = CertificateRules.verify(parsed, authzid: authzid, domain: domain, nowMillis: now) { user in
            self.registrations(domain: domain, user: user)
        }
        switch result {
        case .success(let jid): return jid
        case .failure(let failure): throw APIError(.forbidden, "certificate not accepted: \(failure.description)")
        }
    }

    /// What the rules see: live records plus removed ones (a tombstone beats any live copy).
    private func registrations(domain: String, user: JID) -> [RegisteredCertificate] {
        state.withStore { inner in
            let live = Set(inner.store.liveCertificates(domain: domain, user: user.description).map(\.id))
            return inner.store.certificates(domain: domain, user: user.description).compactMap { record in
                // A record hidden by name resolution is neither live nor removed: not registered.
                guard record.removal != nil || live.contains(record.id) else { return nil }
                return record.registered(user: user)
            }
        }
    }

    /// Waits for pending writes and closes the database (shutdown).
    func close() { database?.close() }

    // MARK: Replication hooks

    /// Called by the cluster shell after merging a peer's delta.
    func merged(_ outcome: MergeOutcome, from node: String) {
        for record in outcome.certificatesNewlyRemoved { announceRemoval(record, by: node) }
        if !outcome.certificatesChanged.isEmpty {
            database?.upsert(outcome.certificatesChanged.map(\.stored)) { [logger] error in
                if let error { logger.error("cannot persist \(outcome.certificatesChanged.count) certificate records from \(node): \(error)") }
            }
        }
    }

    private func announceRemoval(_ record: CertificateRecord, by source: String) {
        guard let removal = record.removal else { return }
        let kind: NodeEvent.Kind = removal.kind == .revoked ? .certificateRevoked : .certificateDisabled
        var fields: [(String, String)] = [("user", record.id.user), ("fingerprint_sha256", record.id.sha256.map(byteHex).joined())]
        if let name = record.content?.name { fields.append(("name", name)) }
        fields.append(("origin", removal.origin))
        events.publish(NodeEvent(kind: kind, domain: record.id.domain, fields: fields))
        logger.info("certificate \(record.content?.name ?? "?") of \(record.id.user) \(removal.kind == .revoked ? "revoked" : "disabled") (\(source))")
    }

    private func persist(_ records: [CertificateRecord], on eventLoop: EventLoop) -> EventLoopFuture<Void> {
        guard let database else { return eventLoop.makeSucceededVoidFuture() }
        let promise = eventLoop.makePromise(of: Void.self)
        database.upsert(records.map(\.stored)) { error in
            if let error {
                promise.fail(APIError(.internalError, "the registration could not be written to this node's database: \(error)"))
            } else {
                promise.succeed()
            }
        }
        return promise.futureResult
    }
}

/// Owns the SQLite handle; every call runs on one serial queue, which is what makes sharing
/// the non-Sendable database object sound.
final class DatabaseWorker: @unchecked Sendable {
    private let database: RegistryDatabase
    private let queue = DispatchQueue(label: "keystore.registry-db")

    init(_ database: RegistryDatabase) { self.database = database }

    func upsert(_ rows: [StoredCertificate], completion: @escaping @Sendable (RegistryDatabaseError?) -> Void) {
        queue.async {
            do throws(RegistryDatabaseError) { try self.database.upsert(rows); completion(nil) } catch { completion(error) }
        }
    }

    func close() { queue.sync { database.close() } }
}

// MARK: Mapping

extension RegistryError {
    var apiCode: APIErrorCode {
        switch self {
        case .nameInUse, .alreadyRegistered, .previouslyRemoved: return .conflict
        case .badName, .userNotBare: return .badRequest
        default: return .invalidCertificate
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
