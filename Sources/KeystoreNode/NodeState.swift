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

/// What a key lookup found, with references to the secrets so the JSON can be written
/// outside the lock.
enum KeyLookup {
    case ram([(view: KeyVersionView, secret: SecretBytes)])
    case file(FileKey)
    case notReady
    case notFound
}

public enum NodeStateError: Error, CustomStringConvertible {
    case notRAMKey(KeyRef)
    case unknownKey(KeyRef)
    case notReady
    case memory(SecretMemoryError)

    public var description: String {
        switch self {
        case .notRAMKey(let key): return "\(key.name) in \(key.domain) is a file key; only ram keys can be rotated (replace the PSK file and reload instead)"
        case .unknownKey(let key): return "no key named \(key.name) in domain \(key.domain)"
        case .notReady: return "this node is still joining the cluster; retry shortly"
        case .memory(let error): return error.description
        }
    }
}

/// The node's replicated state plus the secrets behind it, under one lock.
///
/// The pure `ReplicatedStore` never sees key bytes; they live here, indexed by version id,
/// in the secret arena, and are dropped (zeroed) exactly when the store prunes a version.
public final class NodeState: Sendable {
    struct Inner {
        var store: ReplicatedStore
        var clock = HybridLogicalClock()
        var ramSecrets: [VersionID: SecretBytes] = [:]
        var fileKeys: [KeyRef: FileKey] = [:]
        /// False until the startup join decision is made (DESIGN.md RAM keys 3).
        var ready = false
        /// Get-key bodies kept ready; every change to a key's versions below invalidates its entry.
        var prepared = PreparedResponses()
    }

    /// Anti-entropy buckets (same on every node: part of the peer protocol). A one-entry
    /// difference costs the bucket digests (8 bytes each) plus that bucket's entries, so more
    /// buckets trade a bigger digest list for a smaller repair; 1024 keeps both small up to
    /// ~100k entries (see the codec's anti-entropy cost test).
    public static let antiEntropyBuckets = 1024

    public let config: ClusterConfig
    public let nodeName: String
    let arena: SecretArena
    /// The RAM keys this node's config declares, with their sizes.
    let ramKeys: [KeyRef: Int]
    let fileKeyPaths: [KeyRef: String]
    private let inner: Mutex<Inner>

    public init(config: ClusterConfig, arena: SecretArena) {
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

    /// The key used to fingerprint PSKs: public (every node derives the same one) but specific
    /// to the cluster and key, so fingerprints cannot be compared across clusters or keys.
    func fingerprintKey(for ref: KeyRef) -> [UInt8] {
        blake2b(Array("keystore psk fingerprint v1\u{0}\(config.cluster)\u{0}\(ref.domain)\u{0}\(ref.name)".utf8))
    }

    /// (Re)reads every PSK file. All files are read before anything changes, so a bad file
    /// leaves the previous keys in place and the error names it.
    @discardableResult
    public func loadFileKeys() throws -> [KeyRef] {
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
            for (ref, new) in loaded {
                if let old = state.fileKeys[ref], old.fingerprint == new.fingerprint {
                    continue // keep the original load time for an unchanged file
                }
                state.fileKeys[ref] = new
                state.prepared.invalidate(ref)
                changed.append(ref)
                let stamp = state.clock.now(wallMillis: now)
                _ = state.store.setLocalPSKFingerprint(PSKFingerprint(node: nodeName, key: ref, fingerprint: new.fingerprint, stamp: stamp))
            }
            return changed.sorted()
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
    func becomeReady() throws(NodeStateError) -> StoreDelta {
        let now = wallClockMillis()
        // Generate outside the lock: randombytes for thousands of keys takes a while.
        let missing = inner.withLock { state in ramKeys.keys.filter { !state.store.hasVersions($0) } }
        var fresh: [KeyRef: SecretBytes] = [:]
        for ref in missing {
            do { fresh[ref] = try SecretBytes.random(count: ramKeys[ref]!, in: arena) } catch { throw .memory(error) }
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
            state.prepared.invalidateAll()
            return delta
        }
    }

    /// A new primary version for a RAM key (DESIGN.md RAM keys 5).
    func rotate(_ ref: KeyRef) throws(NodeStateError) -> (KeyVersion, StoreDelta) {
        if fileKeyPaths[ref] != nil { throw .notRAMKey(ref) }
        guard let size = ramKeys[ref] else { throw .unknownKey(ref) }
        let secret: SecretBytes
        do { secret = try SecretBytes.random(count: size, in: arena) } catch { throw .memory(error) }
        let now = wallClockMillis()
        return try inner.withLock { state throws(NodeStateError) in
            guard state.ready else { throw .notReady }
            let id = VersionID(created: state.clock.now(wallMillis: now), origin: nodeName)
            let version = state.store.rotate(ref, id: id)
            state.ramSecrets[id] = secret
            state.prepared.invalidate(ref)
            for (prunedRef, pruned) in state.store.expire(nowMillis: now) { state.ramSecrets[pruned] = nil; state.prepared.invalidate(prunedRef) }
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
            for (ref, id) in pruned { state.ramSecrets[id] = nil; state.prepared.invalidate(ref) }
            return pruned
        }
    }

    func withStore<R>(_ body: (inout Inner) throws -> R) rethrows -> R {
        try inner.withLock { try body(&$0) }
    }

    /// PSK keys whose fingerprints differ among `nodes`.
    func pskMismatches(among nodes: Set<String>) -> [PSKMismatch] {
        inner.withLock { $0.store.pskMismatches(among: nodes) }
    }
}

// MARK: Replication



extension NodeState {
    /// Attaches the secrets to locally known versions (versions whose secret is gone are
    /// left out: they were pruned meanwhile).
    func wireDelta(for delta: StoreDelta) -> WireDelta {
        withStore { state in
            var wire = WireDelta(pskFingerprints: delta.pskFingerprints, certificates: delta.certificates)
            for (ref, versions) in delta.keyVersions.sorted(by: { $0.key < $1.key }) {
                for version in versions {
                    if let secret = state.ramSecrets[version.id] {
                        wire.versions.append(WireKeyVersion(key: ref, version: version, secret: secret))
                    }
                }
            }
            return wire
        }
    }

    func fullWireDelta() -> WireDelta {
        wireDelta(for: withStore { $0.store.fullDelta() })
    }

    func wireDelta(forBuckets buckets: [Int]) -> WireDelta {
        wireDelta(for: withStore { $0.store.delta(forBuckets: buckets) })
    }

    var rootDigest: UInt64 { withStore { $0.store.rootDigest() } }
    var bucketDigests: [UInt64] { withStore { $0.store.bucketDigests() } }

    func differingBuckets(theirs: [UInt64]) -> [Int] {
        withStore { $0.store.differingBuckets(mine: $0.store.bucketDigests(), theirs: theirs) }
    }

    /// Current HLC reading for outgoing messages.
    func stamp() -> HLCTimestamp {
        let now = wallClockMillis()
        return withStore { $0.clock.now(wallMillis: now) }
    }

    /// Advances our clock past a peer's; refuses stamps from a clock far in the future.
    func observe(_ stamp: HLCTimestamp) throws(ClockError) {
        let now = wallClockMillis()
        let result: Result<HLCTimestamp, ClockError> = withStore { state in
            do throws(ClockError) { return .success(try state.clock.observe(stamp, wallMillis: now)) } catch { return .failure(error) }
        }
        _ = try result.get()
    }

    /// Merges a peer's entries. Only RAM keys this node's config declares are admitted; the
    /// secrets of admitted versions move into the vault, the rest are dropped (zeroed).
    func mergeRemote(_ wire: WireDelta) -> MergeOutcome {
        var secrets: [VersionID: SecretBytes] = [:]
        var delta = StoreDelta(pskFingerprints: wire.pskFingerprints)
        // Registrations for domains this node does not serve are still kept: they cost little and
        // keep every replica's digest equal, so anti-entropy does not loop on them.
        delta.certificates = wire.certificates
        for item in wire.versions {
            guard ramKeys[item.key] != nil else { continue }
            secrets[item.version.id] = item.secret
            delta.keyVersions[item.key, default: []].append(item.version)
        }
        let now = wallClockMillis()
        return withStore { state in
            let outcome = state.store.merge(delta, nowMillis: now)
            for (_, version) in outcome.added { state.ramSecrets[version.id] = secrets[version.id] }
            for (_, id) in outcome.pruned { state.ramSecrets[id] = nil }
            state.prepared.invalidate(outcome.added.map(\.0) + outcome.pruned.map(\.0) + outcome.primaryChanged)
            return outcome
        }
    }
}
