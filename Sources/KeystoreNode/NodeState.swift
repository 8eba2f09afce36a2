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

/// Which keys this node's config declares (changes on reload).
struct KeyLayout: Sendable {
    var config: ClusterConfig
    /// The RAM keys this node's config declares, with their sizes.
    var ramKeys: [KeyRef: Int] = [:]
    var fileKeyPaths: [KeyRef: String] = [:]

    init(_ config: ClusterConfig) {
        self.config = config
        for (domainName, domain) in config.domains {
            for key in domain.keys {
                let ref = KeyRef(domain: domainName, name: key.name)
                switch key.kind {
                case .ram: ramKeys[ref] = domain.ramKeySize
                case .file(let path): fileKeyPaths[ref] = path
                }
            }
        }
    }
}

/// The node's replicated state plus the secrets behind it, under one lock.
///
/// The pure `ReplicatedStore` never sees key bytes; they live here, indexed by version id,
/// in the secret arena, and are dropped (zeroed) exactly when the store prunes a version.
/// Only `NodeOperations` changes it (the one change path); everything else reads.
///
/// Key declarations: every node announces each key its config declares, in the replicated
/// per-(node, key) records that also carry PSK fingerprints: a file key with its keyed
/// fingerprint, a RAM key with the marker `ramDeclaration`, a key removed from the config with
/// an empty record. A node keeps the versions of every RAM key some member declares (so a node
/// that adds the key by reload later adopts the cluster's value instead of minting a second one)
/// and serves only the keys it declares itself; once no member declares a key, every node
/// forgets its versions and zeroes their secrets.
final class NodeState: Sendable {
    struct Inner {
        var store: ReplicatedStore
        var layout: KeyLayout
        var clock = HybridLogicalClock()
        var ramSecrets: [VersionID: SecretBytes] = [:]
        var fileKeys: [KeyRef: FileKey] = [:]
        /// False until the startup join decision is made (DESIGN.md RAM keys 3).
        var ready = false
        /// Get-key bodies built once; every change to a key's versions invalidates its body.
        var prepared = PreparedResponses()
        /// The last `pskMismatches` answer, valid while the store's `pskChanges` and the node set
        /// are the same: with 10,000 RAM keys it cost ~10 ms per `/v1/health` otherwise, under
        /// the lock merges need.
        var pskMismatchCache: (changes: UInt64, nodes: Set<String>, result: [PSKMismatch])?
        /// RAM keys some member declares, valid while `pskChanges` is the same: a join merges
        /// 10,000 keys in ~20 chunks, and each asked for this set anew.
        var declaredByMembersCache: (changes: UInt64, keys: Set<KeyRef>)?
    }

    /// Anti-entropy buckets (same on every node: part of the peer protocol). A one-entry
    /// difference costs the bucket digests (8 bytes each) plus that bucket's entries, so more
    /// buckets trade a bigger digest list for a smaller repair; 1024 keeps both small up to
    /// ~100k entries (see the codec's anti-entropy cost test).
    static let antiEntropyBuckets = 1024

    /// The declaration record's "fingerprint" for a RAM key: 3 bytes, so it can never equal a
    /// PSK's 32-byte keyed fingerprint.
    static let ramDeclaration: [UInt8] = Array("ram".utf8)

    let nodeName: String
    let clusterName: String
    let arena: SecretArena
    private let inner: Mutex<Inner>

    init(config: ClusterConfig, arena: SecretArena) {
        self.nodeName = config.nodeName
        self.clusterName = config.cluster
        self.arena = arena
        self.inner = Mutex(Inner(store: ReplicatedStore(graceMillis: UInt64(config.gracePeriodSeconds) * 1000,
                                                        bucketCount: NodeState.antiEntropyBuckets),
                                 layout: KeyLayout(config)))
    }

    /// The config currently applied (reload replaces it).
    var config: ClusterConfig { inner.withLock { $0.layout.config } }

    var isReady: Bool { inner.withLock { $0.ready } }

    // MARK: Keys

    /// The key used to fingerprint PSKs: public (every node derives the same one) but specific
    /// to the cluster and key, so fingerprints cannot be compared across clusters or keys.
    func fingerprintKey(for ref: KeyRef) -> [UInt8] {
        blake2b(Array("keystore psk fingerprint v1\u{0}\(clusterName)\u{0}\(ref.domain)\u{0}\(ref.name)".utf8))
    }

    /// Reads every PSK file of `layout` (default: the current one) without changing anything,
    /// so a bad file leaves the previous keys in place and the error names it.
    func readFileKeys(for layout: KeyLayout? = nil) throws -> [KeyRef: FileKey] {
        let paths = layout?.fileKeyPaths ?? inner.withLock { $0.layout.fileKeyPaths }
        var loaded: [KeyRef: FileKey] = [:]
        let now = wallClockMillis()
        for (ref, path) in paths.sorted(by: { $0.key < $1.key }) {
            let field = "domains[\"\(ref.domain)\"].keys[\"\(ref.name)\"].path"
            let secret = try PSKFile.withTrimmedContents(path: path, field: field) { bytes in
                try SecretBytes.copy(of: bytes, in: arena)
            }
            loaded[ref] = FileKey(secret: secret, fingerprint: secret.keyedFingerprint(key: fingerprintKey(for: ref)), loadedAtMillis: now)
        }
        return loaded
    }

    /// (Re)reads every PSK file and installs what changed. Returns the keys whose content
    /// changed and this node's new declaration records (for peers). At start-up (`declaring`
    /// false) the declarations wait for the join: `becomeReady` makes only those that differ
    /// from what the cluster holds for this node.
    func loadFileKeys(declaring: Bool = true) throws -> (changed: [KeyRef], declarations: [PSKFingerprint]) {
        let loaded = try readFileKeys()
        return inner.withLock { state in
            let (changed, records) = Self.install(fileKeys: loaded, into: &state, nodeName: nodeName, declaring: declaring)
            return (changed, declaring ? records + Self.declareRAMKeys(&state, nodeName: nodeName) : [])
        }
    }

    /// After the join: this node's declarations, as far as they differ from what the cluster
    /// holds for it (its records came back with the cluster's state). A restart with an
    /// unchanged config declares nothing: fresh stamps on 10,000 unchanged declarations made
    /// every anti-entropy bucket differ, and the first repair after each restart exchanged the
    /// whole state again. A key removed from this node's config while it was down is withdrawn.
    private static func declareOwnKeys(_ state: inout Inner, nodeName: String) -> [PSKFingerprint] {
        let now = wallClockMillis()
        var records: [PSKFingerprint] = []
        let configured = Set(state.layout.ramKeys.keys).union(state.layout.fileKeyPaths.keys)
        for held in state.store.pskFingerprints(from: nodeName) where !held.isDeletion && !configured.contains(held.key) {
            let record = PSKFingerprint(node: nodeName, key: held.key, fingerprint: [], stamp: state.clock.now(wallMillis: now))
            if state.store.setLocalPSKFingerprint(record) { records.append(record) }
        }
        for (ref, key) in state.fileKeys.sorted(by: { $0.key < $1.key }) {
            if state.store.pskFingerprint(node: nodeName, key: ref)?.fingerprint == key.fingerprint { continue }
            let record = PSKFingerprint(node: nodeName, key: ref, fingerprint: key.fingerprint, stamp: state.clock.now(wallMillis: now))
            if state.store.setLocalPSKFingerprint(record) { records.append(record) }
        }
        return records + declareRAMKeys(&state, nodeName: nodeName)
    }

    /// Replaces the file keys (keeping the original load time of an unchanged file).
    private static func install(fileKeys loaded: [KeyRef: FileKey], into state: inout Inner, nodeName: String,
                                declaring: Bool = true) -> (changed: [KeyRef], declarations: [PSKFingerprint]) {
        var changed: [KeyRef] = []
        var records: [PSKFingerprint] = []
        let now = wallClockMillis()
        for (ref, new) in loaded.sorted(by: { $0.key < $1.key }) {
            if let old = state.fileKeys[ref], old.fingerprint == new.fingerprint { continue }
            state.fileKeys[ref] = new
            state.prepared.invalidate(ref)
            changed.append(ref)
            guard declaring else { continue }
            let record = PSKFingerprint(node: nodeName, key: ref, fingerprint: new.fingerprint, stamp: state.clock.now(wallMillis: now))
            if state.store.setLocalPSKFingerprint(record) { records.append(record) }
        }
        return (changed, records)
    }

    /// Declares every RAM key of the layout that this node has not declared yet.
    private static func declareRAMKeys(_ state: inout Inner, nodeName: String) -> [PSKFingerprint] {
        let now = wallClockMillis()
        var records: [PSKFingerprint] = []
        let declared = state.store.keys(withFingerprint: ramDeclaration, from: nodeName)
        for ref in state.layout.ramKeys.keys.filter({ !declared.contains($0) }).sorted() {
            let record = PSKFingerprint(node: nodeName, key: ref, fingerprint: ramDeclaration, stamp: state.clock.now(wallMillis: now))
            if state.store.setLocalPSKFingerprint(record) { records.append(record) }
        }
        return records
    }

    /// Whether some member (this node included) declares a RAM key. A predicate, not a set: the
    /// union of the members' and this node's 10,000 keys was built for every chunk of a join
    /// (measured: 40 ms of a restart's 300–450 ms join).
    private static func declaredRAMKeys(in state: inout Inner) -> (KeyRef) -> Bool {
        let byMembers: Set<KeyRef>
        if let cached = state.declaredByMembersCache, cached.changes == state.store.pskChanges {
            byMembers = cached.keys
        } else {
            byMembers = state.store.keys(withFingerprint: ramDeclaration)
            state.declaredByMembersCache = (state.store.pskChanges, byMembers)
        }
        let mine = state.layout.ramKeys
        return { mine[$0] != nil || byMembers.contains($0) }
    }

    /// Forgets RAM keys no member declares any more, zeroing their secrets.
    private static func forgetUndeclaredKeys(_ state: inout Inner) -> [KeyRef] {
        var forgotten: [KeyRef] = []
        let isDeclared = declaredRAMKeys(in: &state)
        for ref in state.store.keyRefs() where !isDeclared(ref) {
            for id in state.store.forgetKey(ref) { state.ramSecrets[id] = nil }
            state.prepared.invalidate(ref)
            forgotten.append(ref)
        }
        return forgotten
    }

    /// What a reload applied to the state.
    struct Reconfiguration {
        var changedFileKeys: [KeyRef] = []
        /// Declarations (and PSK fingerprints) to push to peers.
        var declarations: [PSKFingerprint] = []
        /// RAM keys no member declares any more, whose secrets were zeroed.
        var forgotten: [KeyRef] = []
    }

    /// Switches to a new config (reload): file keys already read by `readFileKeys(for:)`,
    /// declarations for added and removed keys, the grace period. New RAM keys are minted by
    /// `mintMissingKeys` afterwards (only once the node is ready).
    func reconfigure(to layout: KeyLayout, fileKeys: [KeyRef: FileKey]) -> Reconfiguration {
        let now = wallClockMillis()
        return inner.withLock { state in
            let before = state.layout
            state.layout = layout
            state.store.graceMillis = UInt64(layout.config.gracePeriodSeconds) * 1000
            // Keys come and go, and a new grace period moves every expiry a body shows.
            state.prepared.invalidateAll()
            var result = Reconfiguration()
            // Keys this node no longer declares: an empty record tells the cluster.
            let declaredBefore = Set(before.ramKeys.keys).union(before.fileKeyPaths.keys)
            let declaredNow = Set(layout.ramKeys.keys).union(layout.fileKeyPaths.keys)
            for ref in declaredBefore.subtracting(declaredNow).sorted() {
                let record = PSKFingerprint(node: nodeName, key: ref, fingerprint: [], stamp: state.clock.now(wallMillis: now))
                if state.store.setLocalPSKFingerprint(record) { result.declarations.append(record) }
            }
            for ref in state.fileKeys.keys where layout.fileKeyPaths[ref] == nil { state.fileKeys[ref] = nil }
            let (changed, records) = Self.install(fileKeys: fileKeys, into: &state, nodeName: nodeName)
            result.changedFileKeys = changed
            result.declarations += records + Self.declareRAMKeys(&state, nodeName: nodeName)
            result.forgotten = Self.forgetUndeclaredKeys(&state)
            return result
        }
    }

    func lookup(_ ref: KeyRef) -> KeyLookup {
        let now = wallClockMillis()
        return inner.withLock { state in
            if state.layout.fileKeyPaths[ref] != nil { return state.fileKeys[ref].map(KeyLookup.file) ?? .notFound }
            guard state.layout.ramKeys[ref] != nil else { return .notFound }
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

    /// The get-key answer's body for `ref`, with the key material, in protected memory: built
    /// once and kept until the key's versions change (or the first expiry it shows passes).
    func preparedKeyBody(_ ref: KeyRef) throws(NodeError) -> SecretBytes {
        let now = wallClockMillis()
        let (cached, generation) = inner.withLock { ($0.prepared.body(for: ref, nowMillis: now), $0.prepared.generation) }
        if let cached { return cached }
        let found = lookup(ref)
        let built: (SecretBytes, UInt64)?
        do { built = try PreparedResponses.build(ref, found, arena: arena) } catch { throw .secretMemory(error) }
        guard let (fresh, validUntil) = built else {
            if case .notReady = found { throw .notReady("ram key \(ref.name)") }
            throw .unknownKey(ref)
        }
        inner.withLock { $0.prepared.store(fresh, for: ref, validUntilMillis: validUntil, builtAt: generation) }
        return fresh
    }

    /// Get-key bodies currently prepared (tests).
    var preparedCount: Int { inner.withLock { $0.prepared.count } }

    /// Version metadata without key material (rotate's answer), primary first.
    func versionViews(_ ref: KeyRef) -> [KeyVersionView] {
        let now = wallClockMillis()
        return inner.withLock { $0.store.versions(of: ref, nowMillis: now) }
    }

    /// Number of live versions (for listings), nil when unknown / not ready.
    func versionCount(_ ref: KeyRef) -> Int? {
        let now = wallClockMillis()
        return inner.withLock { state in
            if state.layout.fileKeyPaths[ref] != nil { return state.fileKeys[ref] == nil ? 0 : 1 }
            return state.ready ? state.store.versions(of: ref, nowMillis: now).count : nil
        }
    }

    /// After the join decision: generate every configured RAM key the cluster did not give us,
    /// then serve. Returns the versions this node created and the declarations it (re)made
    /// (to be pushed to peers).
    func becomeReady() throws(NodeError) -> StoreDelta {
        try mintMissingKeys(andBecomeReady: true)
    }

    /// Generates a first version for every declared RAM key that has none (none from the
    /// cluster either): at the end of the join, and after a reload added keys.
    func mintMissingKeys(andBecomeReady: Bool = false) throws(NodeError) -> StoreDelta {
        let now = wallClockMillis()
        // Generate outside the lock: randombytes for thousands of keys takes a while.
        let missing = inner.withLock { state in
            state.layout.ramKeys.filter { !state.store.hasVersions($0.key) }
        }
        var fresh: [KeyRef: SecretBytes] = [:]
        for (ref, size) in missing {
            do { fresh[ref] = try SecretBytes.random(count: size, in: arena) } catch { throw .secretMemory(error) }
        }
        return inner.withLock { state in
            var delta = StoreDelta()
            for ref in missing.keys.sorted() where state.layout.ramKeys[ref] != nil {
                let id = VersionID(created: state.clock.now(wallMillis: now), origin: nodeName)
                // A peer may have delivered this key while we were generating: then keep theirs.
                if let version = state.store.createInitialVersion(of: ref, id: id), let secret = fresh[ref] {
                    state.ramSecrets[id] = secret
                    delta.keyVersions[ref, default: []].append(version)
                }
            }
            if andBecomeReady {
                delta.pskFingerprints = Self.declareOwnKeys(&state, nodeName: nodeName)
                state.ready = true
            }
            state.prepared.invalidate(delta.keyVersions.keys)
            if andBecomeReady { state.prepared.invalidateAll() }
            return delta
        }
    }

    /// A new primary version for a RAM key (DESIGN.md RAM keys 5).
    func rotate(_ ref: KeyRef) throws(NodeError) -> (KeyVersion, StoreDelta) {
        let kind: (ram: Int?, file: Bool) = inner.withLock { ($0.layout.ramKeys[ref], $0.layout.fileKeyPaths[ref] != nil) }
        if kind.file { throw .notRAMKey(ref) }
        guard let size = kind.ram else { throw .unknownKey(ref) }
        let secret: SecretBytes
        do { secret = try SecretBytes.random(count: size, in: arena) } catch { throw .secretMemory(error) }
        let now = wallClockMillis()
        return try inner.withLock { state throws(NodeError) in
            guard state.ready else { throw .notReady("ram key \(ref.name)") }
            guard state.layout.ramKeys[ref] != nil else { throw .unknownKey(ref) }
            let id = VersionID(created: state.clock.now(wallMillis: now), origin: nodeName)
            let version = state.store.rotate(ref, id: id)
            state.ramSecrets[id] = secret
            state.prepared.invalidate(ref)
            for (prunedRef, pruned) in state.store.expire(nowMillis: now) {
                state.ramSecrets[pruned] = nil
                state.prepared.invalidate(prunedRef)
            }
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
            for (ref, id) in pruned {
                state.ramSecrets[id] = nil
                state.prepared.invalidate(ref)
            }
            return pruned
        }
    }

    /// PSK keys whose fingerprints differ among `nodes`.
    func pskMismatches(among nodes: Set<String>) -> [PSKMismatch] {
        inner.withLock { state in
            if let cached = state.pskMismatchCache, cached.changes == state.store.pskChanges, cached.nodes == nodes {
                return cached.result
            }
            let result = state.store.pskMismatches(among: nodes)
            state.pskMismatchCache = (state.store.pskChanges, nodes, result)
            return result
        }
    }

    /// Gauges: declared keys, live RAM key versions and certificate records by state.
    func counts() -> (ramKeys: Int, fileKeys: Int, ramVersions: Int, certificates: (registered: Int, removed: Int)) {
        inner.withLock { ($0.layout.ramKeys.count, $0.layout.fileKeyPaths.count, $0.ramSecrets.count, $0.store.certificateCounts()) }
    }

    // MARK: Replication

    /// Attaches the secrets to locally known versions (versions whose secret is gone are
    /// left out: they were pruned meanwhile).
    func wireDelta(for delta: StoreDelta) -> WireDelta {
        inner.withLock { Self.wire(for: delta, secrets: $0.ramSecrets) }
    }

    private static func wire(for delta: StoreDelta, secrets: [VersionID: SecretBytes]) -> WireDelta {
        var wire = WireDelta(pskFingerprints: delta.pskFingerprints, certificates: delta.certificates)
        wire.tokenSequenceFloors = delta.tokenSequenceFloors
        for (ref, versions) in delta.keyVersions.sorted(by: { $0.key < $1.key }) {
            for version in versions {
                if let secret = secrets[version.id] {
                    wire.versions.append(WireKeyVersion(key: ref, version: version, secret: secret))
                }
            }
        }
        return wire
    }

    /// The state answer for a joining peer, as of now (see `WireStateAnswer`): the lock is held
    /// only to copy the store and the secrets' references.
    func stateAnswer(peerDurableDigests: [UInt64]?, chunkBytes: Int) -> WireStateAnswer {
        inner.withLock { state in
            let walk = peerDurableDigests.map { StateWalk(state.store, peerDurableDigests: $0) } ?? StateWalk(state.store)
            return WireStateAnswer(walk: walk, secrets: state.ramSecrets, chunkBytes: chunkBytes)
        }
    }

    var durableBucketDigests: [UInt64] { inner.withLock { $0.store.durableBucketDigests() } }

    func wireDelta(forBuckets buckets: [Int], sections: [BucketSections]) -> WireDelta {
        inner.withLock { Self.wire(for: $0.store.delta(forBuckets: buckets, sections: sections), secrets: $0.ramSecrets) }
    }

    var rootDigest: UInt64 { inner.withLock { $0.store.rootDigest() } }
    var bucketDigests: [UInt64] { inner.withLock { $0.store.bucketDigests() } }
    var sectionDigests: SectionDigests { inner.withLock { $0.store.sectionDigests() } }

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

    /// Merges a peer's key versions and key declarations (never persisted: they live in memory
    /// only). Declarations go first, then versions of RAM keys some member declares; the
    /// secrets of admitted versions move into the vault, the rest are dropped (zeroed).
    func mergeRemoteKeys(_ wire: WireDelta) -> (outcome: MergeOutcome, forgotten: [KeyRef]) {
        guard !wire.versions.isEmpty || !wire.pskFingerprints.isEmpty else { return (MergeOutcome(), []) }
        let now = wallClockMillis()
        return inner.withLock { state in
            var outcome = state.store.merge(StoreDelta(pskFingerprints: wire.pskFingerprints), nowMillis: now)
            let forgotten = outcome.pskChanged ? Self.forgetUndeclaredKeys(&state) : []
            let isDeclared = wire.versions.isEmpty ? { _ in false } : Self.declaredRAMKeys(in: &state)
            var secrets: [VersionID: SecretBytes] = [:]
            var delta = StoreDelta()
            for item in wire.versions where isDeclared(item.key) {
                secrets[item.version.id] = item.secret
                delta.keyVersions[item.key, default: []].append(item.version)
            }
            guard !delta.isEmpty else { return (outcome, forgotten) }
            let versions = state.store.merge(delta, nowMillis: now)
            for (_, version) in versions.added { state.ramSecrets[version.id] = secrets[version.id] }
            for (_, id) in versions.pruned { state.ramSecrets[id] = nil }
            state.prepared.invalidate(versions.added.map(\.0) + versions.pruned.map(\.0) + versions.primaryChanged)
            outcome.added += versions.added
            outcome.pruned += versions.pruned
            outcome.primaryChanged += versions.primaryChanged
            outcome.forwardable.keyVersions = versions.forwardable.keyVersions
            return (outcome, forgotten)
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

    /// The merged value of every incoming record that would change this replica at `nowMillis`
    /// (what must be persisted before `applyRegistry`). Changes nothing.
    func certificateChanges(_ incoming: [CertificateRecord], nowMillis: UInt64) -> [CertificateRecord] {
        inner.withLock { $0.store.certificateChanges(incoming, nowMillis: nowMillis) }
    }

    /// The incoming floors that would raise what is held (the highest per user). Changes nothing.
    func tokenFloorChanges(_ incoming: [TokenSequenceFloor]) -> [TokenSequenceFloor] {
        guard !incoming.isEmpty else { return [] }
        return inner.withLock { state in
            // Joins only grow: the join differs from what is held exactly when it supersedes it.
            Self.joined(incoming, with: state.store).filter { floor in
                state.store.tokenSequenceFloor(domain: floor.domain, user: floor.user).map { floor.supersedes($0) } ?? true
            }
        }
    }

    /// For each user of `floors`, the join of the floor held and theirs: what the user's row
    /// must hold (the highest), sorted by (domain, user). Changes nothing.
    func joinedTokenFloors(_ floors: [TokenSequenceFloor]) -> [TokenSequenceFloor] {
        guard !floors.isEmpty else { return [] }
        return inner.withLock { Self.joined(floors, with: $0.store) }
    }

    /// Per user of `floors`, the highest of the held floor and theirs, sorted by (domain, user).
    private static func joined(_ floors: [TokenSequenceFloor], with store: ReplicatedStore) -> [TokenSequenceFloor] {
        var best: [String: TokenSequenceFloor] = [:]
        for record in floors {
            let key = record.domain + "\u{0}" + record.user
            let held = best[key] ?? store.tokenSequenceFloor(domain: record.domain, user: record.user)
            best[key] = held.map { record.supersedes($0) ? record : $0 } ?? record
        }
        return best.values.sorted { ($0.domain, $0.user) < ($1.domain, $1.user) }
    }

    /// The floor record a revocation of the user's refresh tokens stores. Changes nothing.
    func planTokenRevocation(domain: String, user: JID) -> TokenSequenceFloor {
        let now = wallClockMillis()
        return inner.withLock { state in
            state.store.tokenFloorRaise(domain: domain, user: user.description, stamp: state.clock.now(wallMillis: now), origin: nodeName)
        }
    }

    /// The sequence the user's refresh tokens carry now (and are checked against).
    func tokenSequence(domain: String, user: JID) -> UInt64 {
        inner.withLock { $0.store.tokenSequence(domain: domain, user: user.description) }
    }

    /// Joins registry records (certificates, token floors) into the store, after they were
    /// persisted. `nowMillis` must be the time their changes were computed with.
    func applyRegistry(certificates: [CertificateRecord], floors: [TokenSequenceFloor] = [], nowMillis: UInt64) -> MergeOutcome {
        inner.withLock { $0.store.merge(StoreDelta(certificates: certificates, tokenSequenceFloors: floors), nowMillis: nowMillis) }
    }

    /// Forgets certificates expired past their retention; returns their ids (rows to delete).
    func expireCertificates() -> [CertificateID] {
        let now = wallClockMillis()
        return inner.withLock { $0.store.expireCertificates(nowMillis: now) }
    }

    func certificateRecord(_ id: CertificateID) -> CertificateRecord? {
        inner.withLock { $0.store.certificateRecord(id) }
    }

    /// Start-up: the records read from the local database.
    /// The records' hashes are computed by the caller, off this lock (see `NodeOperations.loadPersisted`).
    /// `noneHeld` as in `ReplicatedStore.loadCertificates`.
    func loadPersisted(_ records: [HashedCertificateRecord], floors: [TokenSequenceFloor], noneHeld: Bool = false) {
        inner.withLock { state in
            state.store.loadCertificates(records, noneHeld: noneHeld)
            state.store.loadTokenSequenceFloors(floors)
        }
    }

    /// Before `loadPersisted`: sizes the empty store for about `expected` records.
    func reserveCertificates(_ expected: Int) {
        inner.withLock { $0.store.reserveCertificates(expected) }
    }

    /// The records held for these ids (after a load joined renamed rows into them).
    func certificateRecords(_ ids: [CertificateID]) -> [CertificateRecord] {
        inner.withLock { state in ids.compactMap { state.store.certificateRecord($0) } }
    }

    /// What is held for these records' ids (`ReplicatedStore.heldCertificates`).
    func heldCertificates(_ records: [CertificateRecord]) -> [CertificateRecord] {
        inner.withLock { $0.store.heldCertificates(records) }
    }

    /// Certificate records held, removed ones included.
    var certificateRecordCount: Int {
        inner.withLock { state in
            let counts = state.store.certificateCounts()
            return counts.registered + counts.removed
        }
    }
}
