import CertificateRegistry
import KeystoreConfig
import PeerWire
import ReplicatedStore
import SecretMemory
import Synchronization

/// A file key as this node holds it: the trimmed PSK in protected memory plus the keyed
/// fingerprint that is all the cluster ever learns of it.
struct FileKey: Sendable {
    var secret: SecretBytes
    var fingerprint: [UInt8]
    var loadedAtMillis: UInt64
    /// Stable while the file content is unchanged, so clients can tell a new PSK apart.
    var versionID: String { "psk-" + fingerprint.prefix(6).map { byteHex($0) }.joined() }
}

func byteHex(_ b: UInt8) -> String {
    let digits: [Character] = Array("0123456789abcdef")
    return String([digits[Int(b >> 4)], digits[Int(b & 0xF)]])
}

func hexString(_ bytes: [UInt8]) -> String { bytes.map(byteHex).joined() }

/// What a key lookup found, with references to the secrets so the JSON can be written
/// outside the lock.
enum KeyLookup {
    case ram([(view: KeyVersionView, secret: SecretBytes)])
    case file(FileKey)
    case notReady
    case notFound
}

/// The node's replicated state plus the secrets behind it, under one lock.
///
/// The pure `ReplicatedStore` never sees key bytes; they live here, indexed by version id,
/// in the secret arena, and are dropped (zeroed) exactly when the store prunes a version.
/// Only `NodeOperations` changes it (the one change path); everything else reads.
final class NodeState: Sendable {
    struct Inner {
        var store: ReplicatedStore
        var clock = HybridLogicalClock()
        var ramSecrets: [VersionID: SecretBytes] = [:]
        var fileKeys: [KeyRef: FileKey] = [:]
        /// False until the startup join decision is made (DESIGN.md RAM keys 3).
        var ready = false
    }

    /// Anti-entropy buckets (same on every node: part of the peer protocol). A one-entry
    /// difference costs the bucket digests (8 bytes each) plus that bucket's entries, so more
    /// buckets trade a bigger digest list for a smaller repair; 1024 keeps both small up to
    /// ~100k entries (see the codec's anti-entropy cost test).
    static let antiEntropyBuckets = 1024

    let config: ClusterConfig
    let nodeName: String
    let arena: SecretArena
    /// The RAM keys this node's config declares, with their sizes.
    let ramKeys: [KeyRef: Int]
    let fileKeyPaths: [KeyRef: String]
    private let inner: Mutex<Inner>

    init(config: ClusterConfig, arena: SecretArena) {
        self.config = config
        self.nodeName = config.nodeName
        self.arena = arena
        var ram: [KeyRef: Int] = [:]
        var files: [KeyRef: String] = [:]
        for (domainName, domain) in config.domains {
            for key in domain.keys {
                let ref = KeyRef(domain: domainName, name: key.name)
                switch key.kind {
                case .ram: ram[ref] = domain.ramKeySize
                case .file(let path): files[ref] = path
                }
            }
        }
        self.ramKeys = ram
        self.fileKeyPaths = files
        self.inner = Mutex(Inner(store: ReplicatedStore(graceMillis: UInt64(config.gracePeriodSeconds) * 1000,
                                                        bucketCount: NodeState.antiEntropyBuckets)))
    }

    var isReady: Bool { inner.withLock { $0.ready } }

    // MARK: Keys

    /// The key used to fingerprint PSKs: public (every node derives the same one) but specific
    /// to the cluster and key, so fingerprints cannot be compared across clusters or keys.
    func fingerprintKey(for ref: KeyRef) -> [UInt8] {
        blake2b(Array("keystore psk fingerprint v1\u{0}\(config.cluster)\u{0}\(ref.domain)\u{0}\(ref.name)".utf8))
    }

    /// (Re)reads every PSK file. All files are read before anything changes, so a bad file
    /// leaves the previous keys in place and the error names it. Returns the keys whose
    /// content changed and this node's new fingerprint records (for peers).
    func loadFileKeys() throws -> (changed: [KeyRef], fingerprints: [PSKFingerprint]) {
        var loaded: [KeyRef: FileKey] = [:]
        let now = wallClockMillis()
        for (ref, path) in fileKeyPaths.sorted(by: { $0.key < $1.key }) {
            let field = "domains[\"\(ref.domain)\"].keys[\"\(ref.name)\"].path"
            let secret = try PSKFile.withTrimmedContents(path: path, field: field) { bytes in
                try SecretBytes.copy(of: bytes, in: arena)
            }
            loaded[ref] = FileKey(secret: secret, fingerprint: secret.keyedFingerprint(key: fingerprintKey(for: ref)), loadedAtMillis: now)
        }
        return inner.withLock { state in
            var changed: [KeyRef] = []
            var records: [PSKFingerprint] = []
            for (ref, new) in loaded {
                if let old = state.fileKeys[ref], old.fingerprint == new.fingerprint {
                    continue // keep the original load time for an unchanged file
                }
                state.fileKeys[ref] = new
                changed.append(ref)
                let record = PSKFingerprint(node: nodeName, key: ref, fingerprint: new.fingerprint, stamp: state.clock.now(wallMillis: now))
                if state.store.setLocalPSKFingerprint(record) { records.append(record) }
            }
            return (changed.sorted(), records)
        }
    }

    func lookup(_ ref: KeyRef) -> KeyLookup {
        if fileKeyPaths[ref] != nil {
            return inner.withLock { state in state.fileKeys[ref].map(KeyLookup.file) ?? .notFound }
        }
        guard ramKeys[ref] != nil else { return .notFound }
        let now = wallClockMillis()
        return inner.withLock { state in
            guard state.ready else { return .notReady }
            let views = state.store.versions(of: ref, nowMillis: now)
            var result: [(view: KeyVersionView, secret: SecretBytes)] = []
            result.reserveCapacity(views.count)
            for view in views {
                if let secret = state.ramSecrets[view.version.id] { result.append((view, secret)) }
            }
            return result.isEmpty ? .notReady : .ram(result)
        }
    }

    /// Version metadata without key material (rotate's answer), primary first.
    func versionViews(_ ref: KeyRef) -> [KeyVersionView] {
        let now = wallClockMillis()
        return inner.withLock { $0.store.versions(of: ref, nowMillis: now) }
    }

    /// Number of live versions (for listings), nil when unknown / not ready.
    func versionCount(_ ref: KeyRef) -> Int? {
        if fileKeyPaths[ref] != nil { return inner.withLock { $0.fileKeys[ref] == nil ? 0 : 1 } }
        let now = wallClockMillis()
        return inner.withLock { state in
            state.ready ? state.store.versions(of: ref, nowMillis: now).count : nil
        }
    }

    /// After the join decision: generate every configured RAM key the cluster did not give us,
    /// then serve. Returns the versions this node created (to be pushed to peers).
    func becomeReady() throws(NodeError) -> StoreDelta {
        let now = wallClockMillis()
        // Generate outside the lock: randombytes for thousands of keys takes a while.
        let missing = inner.withLock { state in ramKeys.keys.filter { !state.store.hasVersions($0) } }
        var fresh: [KeyRef: SecretBytes] = [:]
        for ref in missing {
            do { fresh[ref] = try SecretBytes.random(count: ramKeys[ref]!, in: arena) } catch { throw .secretMemory(error) }
        }
        return inner.withLock { state in
            var delta = StoreDelta()
            for ref in missing.sorted() {
                let id = VersionID(created: state.clock.now(wallMillis: now), origin: nodeName)
                // A peer may have delivered this key while we were generating: then keep theirs.
                if let version = state.store.createInitialVersion(of: ref, id: id), let secret = fresh[ref] {
                    state.ramSecrets[id] = secret
                    delta.keyVersions[ref, default: []].append(version)
                }
            }
            state.ready = true
            return delta
        }
    }

    /// A new primary version for a RAM key (DESIGN.md RAM keys 5).
    func rotate(_ ref: KeyRef) throws(NodeError) -> (KeyVersion, StoreDelta) {
        if fileKeyPaths[ref] != nil { throw .notRAMKey(ref) }
        guard let size = ramKeys[ref] else { throw .unknownKey(ref) }
        let secret: SecretBytes
        do { secret = try SecretBytes.random(count: size, in: arena) } catch { throw .secretMemory(error) }
        let now = wallClockMillis()
        return try inner.withLock { state throws(NodeError) in
            guard state.ready else { throw .notReady("ram key \(ref.name)") }
            let id = VersionID(created: state.clock.now(wallMillis: now), origin: nodeName)
            let version = state.store.rotate(ref, id: id)
            state.ramSecrets[id] = secret
            for (_, pruned) in state.store.expire(nowMillis: now) { state.ramSecrets[pruned] = nil }
            return (version, StoreDelta(keyVersions: [ref: [version]]))
        }
    }

    func primaryVersionID(_ ref: KeyRef) -> VersionID? {
        let now = wallClockMillis()
        return inner.withLock { $0.store.versions(of: ref, nowMillis: now).first?.version.id }
    }

    /// Drops versions past their grace period, zeroing their secrets.
    func expire() -> [(KeyRef, VersionID)] {
        let now = wallClockMillis()
        return inner.withLock { state in
            let pruned = state.store.expire(nowMillis: now)
            for (_, id) in pruned { state.ramSecrets[id] = nil }
            return pruned
        }
    }

    /// PSK keys whose fingerprints differ among `nodes`.
    func pskMismatches(among nodes: Set<String>) -> [PSKMismatch] {
        inner.withLock { $0.store.pskMismatches(among: nodes) }
    }

    /// Gauges: live RAM key versions and certificate records by state.
    func counts() -> (ramVersions: Int, certificates: (registered: Int, removed: Int)) {
        inner.withLock { ($0.ramSecrets.count, $0.store.certificateCounts()) }
    }

    // MARK: Replication

    /// Attaches the secrets to locally known versions (versions whose secret is gone are
    /// left out: they were pruned meanwhile).
    func wireDelta(for delta: StoreDelta) -> WireDelta {
        inner.withLock { Self.wire(for: delta, secrets: $0.ramSecrets) }
    }

    private static func wire(for delta: StoreDelta, secrets: [VersionID: SecretBytes]) -> WireDelta {
        var wire = WireDelta(pskFingerprints: delta.pskFingerprints, certificates: delta.certificates)
        for (ref, versions) in delta.keyVersions.sorted(by: { $0.key < $1.key }) {
            for version in versions {
                if let secret = secrets[version.id] {
                    wire.versions.append(WireKeyVersion(key: ref, version: version, secret: secret))
                }
            }
        }
        return wire
    }

    func fullWireDelta() -> WireDelta {
        inner.withLock { Self.wire(for: $0.store.fullDelta(), secrets: $0.ramSecrets) }
    }

    func wireDelta(forBuckets buckets: [Int]) -> WireDelta {
        inner.withLock { Self.wire(for: $0.store.delta(forBuckets: buckets), secrets: $0.ramSecrets) }
    }

    var rootDigest: UInt64 { inner.withLock { $0.store.rootDigest() } }
    var bucketDigests: [UInt64] { inner.withLock { $0.store.bucketDigests() } }

    /// Current HLC reading for outgoing messages.
    func stamp() -> HLCTimestamp {
        let now = wallClockMillis()
        return inner.withLock { $0.clock.now(wallMillis: now) }
    }

    /// Advances our clock past a peer's; refuses stamps from a clock far in the future.
    func observe(_ stamp: HLCTimestamp) throws(ClockError) {
        let now = wallClockMillis()
        let result: Result<HLCTimestamp, ClockError> = inner.withLock { state in
            do throws(ClockError) { return .success(try state.clock.observe(stamp, wallMillis: now)) } catch { return .failure(error) }
        }
        _ = try result.get()
    }

    /// Merges a peer's key versions and PSK fingerprints (never persisted: they live in memory
    /// only). Only RAM keys this node's config declares are admitted; the secrets of admitted
    /// versions move into the vault, the rest are dropped (zeroed).
    func mergeRemoteKeys(_ wire: WireDelta) -> MergeOutcome {
        var secrets: [VersionID: SecretBytes] = [:]
        var delta = StoreDelta(pskFingerprints: wire.pskFingerprints)
        for item in wire.versions {
            guard ramKeys[item.key] != nil else { continue }
            secrets[item.version.id] = item.secret
            delta.keyVersions[item.key, default: []].append(item.version)
        }
        guard !delta.isEmpty else { return MergeOutcome() }
        let now = wallClockMillis()
        return inner.withLock { state in
            let outcome = state.store.merge(delta, nowMillis: now)
            for (_, version) in outcome.added { state.ramSecrets[version.id] = secrets[version.id] }
            for (_, id) in outcome.pruned { state.ramSecrets[id] = nil }
            return outcome
        }
    }

    // MARK: Registry (reads)

    /// Every record of the user, removed ones included.
    func certificates(domain: String, user: JID) -> [CertificateRecord] {
        inner.withLock { $0.store.certificates(domain: domain, user: user.description) }
    }

    func liveCertificates(domain: String, user: JID) -> [CertificateRecord] {
        inner.withLock { $0.store.liveCertificates(domain: domain, user: user.description) }
    }

    /// What the XEP-0257 rules see: live records plus removed ones (a tombstone beats any copy).
    func registrations(domain: String, user: JID) -> [RegisteredCertificate] {
        inner.withLock { state in
            state.store.certificates(domain: domain, user: user.description).compactMap { $0.registered(user: user) }
        }
    }

    // MARK: Registry (the writer's primitives; call only from `RegistryWriter`)

    /// The record an `append` would store, or the rule it breaks. Does not change anything.
    func planAppend(domain: String, user: JID, name: String, certificate parsed: ParsedCertificate,
                    noCertManagement: Bool) throws(NodeError) -> CertificateRecord {
        let now = wallClockMillis()
        let result: Result<CertificateRecord, NodeError> = inner.withLock { state in
            let existing = state.store.certificates(domain: domain, user: user.description).compactMap { $0.registered(user: user) }
            do throws(RegistryError) {
                try CertificateRules.checkAppend(parsed, name: name, user: user, existing: existing, nowMillis: Int64(now))
            } catch {
                return .failure(.registry(error))
            }
            let id = CertificateID(domain: domain, user: user.description, sha256: parsed.sha256)
            let content = CertificateContent(name: name, der: parsed.der, notBeforeMillis: parsed.notBeforeMillis,
                                             notAfterMillis: parsed.notAfterMillis, jids: parsed.xmppAddrs.map(\.description),
                                             noCertManagement: noCertManagement, added: state.clock.now(wallMillis: now), origin: nodeName)
            return .success(CertificateRecord(id: id, content: content, removal: nil))
        }
        return try result.get()
    }

    /// The records a disable/revoke would store: every live certificate of the user with that
    /// name (two nodes may have accepted one name concurrently), or all of them (`name == nil`,
    /// revoke-all also covers disabled ones, upgrading them to revoked). Changes nothing.
    func planRemoval(domain: String, user: JID, name: String?, kind: RemovalKind) -> [CertificateRecord] {
        let now = wallClockMillis()
        return inner.withLock { state in
            let targets = state.store.certificates(domain: domain, user: user.description).filter { record in
                guard let content = record.content else { return false }
                if let name { return record.removal == nil && content.name == name }
                return record.removal == nil || (kind == .revoked && record.removal?.kind == .disabled)
            }
            let stamp = state.clock.now(wallMillis: now)
            return targets.map { record in
                record.merged(with: CertificateRecord(id: record.id, content: nil,
                                                      removal: CertificateRemoval(kind: kind, stamp: stamp, origin: nodeName)))
            }
        }
    }

    /// The merged value of every incoming record that would change this replica (what must
    /// be persisted before `applyCertificates`). Changes nothing.
    func certificateChanges(_ incoming: [CertificateRecord]) -> [CertificateRecord] {
        inner.withLock { $0.store.certificateChanges(incoming) }
    }

    func certificateRecord(_ id: CertificateID) -> CertificateRecord? {
        inner.withLock { $0.store.certificateRecord(id) }
    }

    /// Joins records into the store (after they were persisted).
    func applyCertificates(_ records: [CertificateRecord]) -> MergeOutcome {
        let now = wallClockMillis()
        return inner.withLock { $0.store.merge(StoreDelta(certificates: records), nowMillis: now) }
    }

    /// Start-up: the records read from the local database.
    func loadPersisted(_ records: [CertificateRecord]) {
        inner.withLock { $0.store.loadCertificates(records) }
    }
}
