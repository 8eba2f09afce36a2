/// The replicated cluster state: RAM key version metadata, PSK fingerprints and the
/// certificate registry (see ReplicatedStore+Certificates.swift).
///
/// Pure and deterministic (time is an argument) so every node computes the same merge result
/// from the same inputs, and so it can be tested exhaustively without sockets or clocks.
/// It never holds secret bytes: the shell keeps them by `VersionID` and frees them when a
/// version shows up in `expire`'s result or `MergeOutcome.pruned`.
///
/// Merge model: the version set of a key is the union of everything seen, minus versions that
/// are expired *with respect to that union* at `nowMillis`. Dropping an expired version never
/// changes whether any other version is expired (the versions that made it expire still rank
/// above the others), so "prune then merge" equals "merge then prune": the merge stays
/// idempotent, commutative and associative, and a stale replica cannot resurrect a version
/// that was pruned here.
public struct ReplicatedStore: Sendable, Equatable {
    /// Changed only by a config reload (`grace_period_s`); nodes of one cluster should agree on
    /// it, or a version one node already expired keeps coming back in repairs until they do.
    public var graceMillis: UInt64
    public let bucketCount: Int

    private struct KeyEntry: Sendable, Equatable {
        /// Sorted by rank (primary first); never empty.
        var versions: [KeyVersion]
        let bucket: Int
    }

    private struct PSKSlot: Hashable, Sendable {
        var node: NodeID
        var key: KeyRef
    }

    private struct PSKEntry: Sendable, Equatable {
        var record: PSKFingerprint
        let bucket: Int
    }

    struct CertificateEntry: Sendable, Equatable {
        var record: CertificateRecord
        let bucket: Int
        /// Cached digest inputs: a removal arriving for a stored certificate must not rehash its DER.
        var contentHash: UInt64?
        var entryHash: UInt64
    }

    struct UserRef: Hashable, Sendable {
        var domain: String
        var user: String
    }

    private var keys: [KeyRef: KeyEntry] = [:]
    private var psk: [PSKSlot: PSKEntry] = [:]
    /// Records are never deleted (tombstones are forever, DESIGN "Certificate registry" 5).
    var certEntries: [CertificateID: CertificateEntry] = [:]
    /// Every id of a user, so per-user queries do not scan the whole registry.
    var certIDsByUser: [UserRef: [CertificateID]] = [:]
    /// Only keys with a non-primary version can expire anything; `expire` scans just these.
    private var multiVersionKeys: Set<KeyRef> = []
    /// Per-bucket wrapping sum and count of entry hashes, kept incrementally so the digest
    /// the shell asks for every gossip round costs O(bucketCount), not O(state).
    /// Internal (not private) so the certificate extension keeps them in step too.
    var bucketSums: [UInt64]
    var bucketCounts: [UInt64]

    /// `bucketCount` below 1 is treated as 1 rather than trapping; all nodes of a cluster must
    /// use the same value or anti-entropy degrades to full exchanges.
    public init(graceMillis: UInt64, bucketCount: Int = 64) {
        self.graceMillis = graceMillis
        self.bucketCount = max(1, bucketCount)
        self.bucketSums = Array(repeating: 0, count: self.bucketCount)
        self.bucketCounts = Array(repeating: 0, count: self.bucketCount)
    }

    /// Replicas are equal when their replicated content is; the digest caches follow from it.
    public static func == (lhs: ReplicatedStore, rhs: ReplicatedStore) -> Bool {
        lhs.graceMillis == rhs.graceMillis && lhs.bucketCount == rhs.bucketCount
            && lhs.keys == rhs.keys && lhs.psk == rhs.psk && lhs.certEntries == rhs.certEntries
    }

    // MARK: - RAM key versions

    public func keyRefs() -> [KeyRef] { keys.keys.sorted() }

    public func hasVersions(_ key: KeyRef) -> Bool { keys[key] != nil }

    /// Generation 0, and only when the key has nothing: at startup the shell calls this only for
    /// keys still missing after the initial sync, so an adopted cluster key is never shadowed.
    public mutating func createInitialVersion(of key: KeyRef, id: VersionID) -> KeyVersion? {
        guard keys[key] == nil else { return nil }
        let version = KeyVersion(id: id, generation: 0)
        install(key, [version], previous: [])
        return version
    }

    /// The new version outranks every version this replica knows (higher generation), so it is
    /// primary here immediately; concurrent rotations elsewhere tie on generation and are
    /// ordered by creation time on every node.
    public mutating func rotate(_ key: KeyRef, id: VersionID) -> KeyVersion {
        let previous = keys[key]?.versions ?? []
        let top = previous.map(\.generation).max()
        // Saturate rather than trap on a (hostile) maximal generation.
        let generation = top.map { $0 == UInt32.max ? $0 : $0 + 1 } ?? 0
        let version = KeyVersion(id: id, generation: generation)
        install(key, Self.union(previous, [version]), previous: previous)
        return version
    }

    /// Views of the versions still valid at `nowMillis`, primary first. Computed from the
    /// set itself, so it is right even if the shell has not called `expire` yet.
    public func versions(of key: KeyRef, nowMillis: UInt64) -> [KeyVersionView] {
        guard let versions = keys[key]?.versions else { return [] }
        let expiries = Self.expiries(versions, grace: graceMillis)
        var views: [KeyVersionView] = []
        views.reserveCapacity(versions.count)
        for (index, version) in versions.enumerated() {
            let expiresAt = expiries[index]
            if let expiresAt, nowMillis >= expiresAt { continue }
            views.append(KeyVersionView(version: version, isPrimary: index == 0, expiresAtMillis: expiresAt))
        }
        return views
    }

    /// Removes versions whose expiry is at or before `nowMillis` (valid while now < expiry) and
    /// returns them sorted by key then id, so the shell can zero their secret bytes.
    public mutating func expire(nowMillis: UInt64) -> [(KeyRef, VersionID)] {
        var pruned: [(KeyRef, VersionID)] = []
        for key in multiVersionKeys {
            guard let previous = keys[key]?.versions else { continue }
            let survivors = Self.unexpired(previous, grace: graceMillis, nowMillis: nowMillis)
            guard survivors.count != previous.count else { continue }
            for version in Self.difference(from: previous, to: survivors).removed {
                pruned.append((key, version.id))
            }
            install(key, survivors, previous: previous)
        }
        pruned.sort { $0.0 != $1.0 ? $0.0 < $1.0 : $0.1 < $1.1 }
        return pruned
    }

    // MARK: - Merge

    /// Admits whatever is new and not already expired against the merged set at `nowMillis`,
    /// and prunes what that set expires. Keys unknown here are admitted: filtering by config is
    /// the shell's job, done before calling, so every replica sees the same function.
    public mutating func merge(_ delta: StoreDelta, nowMillis: UInt64) -> MergeOutcome {
        var outcome = MergeOutcome()
        for (key, incoming) in delta.keyVersions where !incoming.isEmpty {
            let previous = keys[key]?.versions ?? []
            let survivors = Self.unexpired(Self.union(previous, incoming), grace: graceMillis, nowMillis: nowMillis)
            guard survivors != previous else { continue }

            let (removed, admitted) = Self.difference(from: previous, to: survivors)
            for version in admitted { outcome.added.append((key, version)) }
            // A generation upgrade shows up as removed+admitted with the same id; it is not a prune.
            let survivingIDs = Set(survivors.map(\.id))
            for version in removed where !survivingIDs.contains(version.id) {
                outcome.pruned.append((key, version.id))
            }
            if previous.first != survivors.first { outcome.primaryChanged.append(key) }
            if !admitted.isEmpty { outcome.forwardable.keyVersions[key] = admitted }
            install(key, survivors, previous: previous)
        }

        var changedSlots: Set<PSKSlot> = []
        for record in delta.pskFingerprints where apply(record) {
            changedSlots.insert(PSKSlot(node: record.node, key: record.key))
        }
        if !changedSlots.isEmpty {
            outcome.pskChanged = true
            // Only the final winner per slot: an input record superseded within the same
            // delta was never part of this replica's state and is not worth forwarding.
            outcome.forwardable.pskFingerprints = changedSlots.compactMap { psk[$0]?.record }
                .sorted(by: Self.pskOrder)
        }

        mergeCertificates(delta.certificates, into: &outcome)

        outcome.added.sort { $0.0 != $1.0 ? $0.0 < $1.0 : KeyVersion.ranksBefore($0.1, $1.1) }
        outcome.pruned.sort { $0.0 != $1.0 ? $0.0 < $1.0 : $0.1 < $1.1 }
        outcome.primaryChanged.sort()
        return outcome
    }

    /// Forgets every version of `key` (no node declares it any more) and returns their ids so
    /// the shell can zero the secrets.
    public mutating func forgetKey(_ key: KeyRef) -> [VersionID] {
        guard let previous = keys[key]?.versions else { return [] }
        install(key, [], previous: previous)
        return previous.map(\.id)
    }

    // MARK: - PSK fingerprints

    /// Keys with a record carrying exactly `fingerprint` (from `node`, or from any node).
    public func keys(withFingerprint fingerprint: [UInt8], from node: NodeID? = nil) -> Set<KeyRef> {
        var result = Set<KeyRef>()
        for entry in psk.values where entry.record.fingerprint == fingerprint && (node == nil || entry.record.node == node) {
            result.insert(entry.record.key)
        }
        return result
    }

    /// The records of every node for one key, deletions included.
    public func pskFingerprints(of key: KeyRef) -> [PSKFingerprint] {
        psk.values.lazy.map(\.record).filter { $0.key == key }.sorted(by: Self.pskOrder)
    }

    /// Returns true if the record changed this replica (it must win LWW against what is held).
    public mutating func setLocalPSKFingerprint(_ fp: PSKFingerprint) -> Bool {
        apply(fp)
    }

    /// Every record, deletions (empty fingerprint) included, sorted by key then node.
    public func pskFingerprints() -> [PSKFingerprint] {
        psk.values.map(\.record).sorted(by: Self.pskOrder)
    }

    /// Keys where the given (alive) nodes hold different non-empty fingerprints; a node that
    /// has no file for the key is not a mismatch, it is just not configured there.
    public func pskMismatches(among nodes: Set<NodeID>) -> [PSKMismatch] {
        var byKey: [KeyRef: [NodeID: [UInt8]]] = [:]
        for (slot, entry) in psk where nodes.contains(slot.node) && !entry.record.isDeletion {
            byKey[slot.key, default: [:]][slot.node] = entry.record.fingerprint
        }
        return byKey.compactMap { key, fingerprints in
            Set(fingerprints.values).count > 1 ? PSKMismatch(key: key, fingerprintsByNode: fingerprints) : nil
        }.sorted { $0.key < $1.key }
    }

    // MARK: - Anti-entropy digests

    public func bucketDigests() -> [UInt64] {
        (0..<bucketCount).map { Self.bucketDigest(sum: bucketSums[$0], count: bucketCounts[$0]) }
    }

    public func rootDigest() -> UInt64 {
        var h = StableHasher()
        h.byte(EntryTag.root.rawValue)
        h.u64(UInt64(bucketCount))
        for i in 0..<bucketCount {
            h.u64(Self.bucketDigest(sum: bucketSums[i], count: bucketCounts[i]))
        }
        return h.finalize()
    }

    /// Everything in the given buckets (whole keys, since a key's versions share a bucket;
    /// certificate records, tombstones included).
    /// Out-of-range indices are ignored.
    public func delta(forBuckets buckets: [Int]) -> StoreDelta {
        var wanted = Array(repeating: false, count: bucketCount)
        for b in buckets where b >= 0 && b < bucketCount { wanted[b] = true }
        var delta = StoreDelta()
        for (key, entry) in keys where wanted[entry.bucket] {
            delta.keyVersions[key] = entry.versions
        }
        delta.pskFingerprints = psk.values.filter { wanted[$0.bucket] }.map(\.record).sorted(by: Self.pskOrder)
        delta.certificates = certEntries.values.filter { wanted[$0.bucket] }.map(\.record).sorted { $0.id < $1.id }
        return delta
    }

    public func fullDelta() -> StoreDelta {
        // Certificates unsorted: the receiver does not care, and sorting 100k records costs
        // more than collecting them.
        StoreDelta(keyVersions: keys.mapValues(\.versions), pskFingerprints: pskFingerprints(),
                   certificates: certEntries.values.map(\.record))
    }

    /// Bucket indices whose digests differ. If the lists have different lengths the peers use
    /// different bucket counts, so indices mean nothing: every index either side has is returned
    /// (the shell then effectively exchanges full state).
    public static func differingBuckets(mine: [UInt64], theirs: [UInt64]) -> [Int] {
        guard mine.count == theirs.count else { return Array(0..<max(mine.count, theirs.count)) }
        return mine.indices.filter { mine[$0] != theirs[$0] }
    }

    public func differingBuckets(mine: [UInt64], theirs: [UInt64]) -> [Int] {
        Self.differingBuckets(mine: mine, theirs: theirs)
    }

    // MARK: - Internals

    private static func bucketDigest(sum: UInt64, count: UInt64) -> UInt64 {
        count == 0 ? 0 : mix64(sum &+ mix64(count ^ 0x9E37_79B9_7F4A_7C15))
    }

    private static func pskOrder(_ a: PSKFingerprint, _ b: PSKFingerprint) -> Bool {
        a.key != b.key ? a.key < b.key : a.node < b.node
    }

    private func bucket(of key: KeyRef) -> Int {
        Int(StableHash.identity(key) % UInt64(bucketCount))
    }

    /// Union by id; if two records disagree on an id's generation (only a buggy or hostile
    /// peer can cause that) the higher wins, which is still a commutative, idempotent choice.
    private static func union(_ base: [KeyVersion], _ incoming: [KeyVersion]) -> [KeyVersion] {
        var result = base
        if base.count + incoming.count <= 16 {
            for version in incoming {
                if let i = result.firstIndex(where: { $0.id == version.id }) {
                    if version.generation > result[i].generation { result[i].generation = version.generation }
                } else {
                    result.append(version)
                }
            }
        } else {
            // Large inputs (hostile or bulk) would make the linear scan quadratic.
            var generations: [VersionID: UInt32] = [:]
            for version in base + incoming {
                generations[version.id] = max(generations[version.id] ?? 0, version.generation)
            }
            result = generations.map { KeyVersion(id: $0.key, generation: $0.value) }
        }
        result.sort(by: KeyVersion.ranksBefore)
        return result
    }

    /// Expiry instant of each version of a rank-sorted list (nil for the primary):
    /// max(own created wall, earliest created wall ranked above) + grace, saturating.
    private static func expiries(_ ranked: [KeyVersion], grace: UInt64) -> [UInt64?] {
        var result: [UInt64?] = []
        result.reserveCapacity(ranked.count)
        var earliestAbove = UInt64.max
        for (index, version) in ranked.enumerated() {
            let wall = version.id.created.wallMillis
            if index == 0 {
                result.append(nil)
            } else {
                let (sum, overflow) = max(wall, earliestAbove).addingReportingOverflow(grace)
                result.append(overflow ? UInt64.max : sum)
            }
            earliestAbove = min(earliestAbove, wall)
        }
        return result
    }

    private static func unexpired(_ ranked: [KeyVersion], grace: UInt64, nowMillis: UInt64) -> [KeyVersion] {
        guard ranked.count > 1 else { return ranked }
        let expiries = expiries(ranked, grace: grace)
        var result: [KeyVersion] = []
        result.reserveCapacity(ranked.count)
        for (index, version) in ranked.enumerated() {
            if let expiresAt = expiries[index], nowMillis >= expiresAt { continue }
            result.append(version)
        }
        return result
    }

    /// Exact-record difference, in the order of the inputs. Linear scans for the usual handful
    /// of versions; sets beyond that so an oversized peer delta cannot make merges quadratic.
    private static func difference(from old: [KeyVersion], to new: [KeyVersion])
        -> (removed: [KeyVersion], added: [KeyVersion]) {
        if old.count + new.count <= 16 {
            return (old.filter { !new.contains($0) }, new.filter { !old.contains($0) })
        }
        let oldSet = Set(old), newSet = Set(new)
        return (old.filter { !newSet.contains($0) }, new.filter { !oldSet.contains($0) })
    }

    /// Replaces a key's version list and keeps the digest sums and the expiry index in step.
    private mutating func install(_ key: KeyRef, _ versions: [KeyVersion], previous: [KeyVersion]) {
        let bucket = keys[key]?.bucket ?? bucket(of: key)
        let (removed, added) = Self.difference(from: previous, to: versions)
        for version in removed {
            bucketSums[bucket] &-= StableHash.entry(key, version)
            bucketCounts[bucket] -= 1
        }
        for version in added {
            bucketSums[bucket] &+= StableHash.entry(key, version)
            bucketCounts[bucket] += 1
        }
        if versions.isEmpty {
            keys[key] = nil
        } else {
            keys[key] = KeyEntry(versions: versions, bucket: bucket)
        }
        if versions.count > 1 { multiVersionKeys.insert(key) } else { multiVersionKeys.remove(key) }
    }

    private mutating func apply(_ record: PSKFingerprint) -> Bool {
        let slot = PSKSlot(node: record.node, key: record.key)
        if let current = psk[slot] {
            guard record.supersedes(current.record) else { return false }
            bucketSums[current.bucket] &-= StableHash.entry(current.record)
            bucketSums[current.bucket] &+= StableHash.entry(record)
            psk[slot] = PSKEntry(record: record, bucket: current.bucket)
        } else {
            let bucket = Int(StableHash.identity(node: record.node, key: record.key) % UInt64(bucketCount))
            bucketSums[bucket] &+= StableHash.entry(record)
            bucketCounts[bucket] += 1
            psk[slot] = PSKEntry(record: record, bucket: bucket)
        }
        return true
    }
}
