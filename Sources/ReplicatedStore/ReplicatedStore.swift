/// The replicated cluster state: RAM key version metadata, PSK fingerprints, the
/// certificate registry (see ReplicatedStore+Certificates.swift) and the refresh-token
/// sequence floors (see ReplicatedStore+TokenFloors.swift).
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
    /// A change recomputes each key's cached earliest expiry.
    public var graceMillis: UInt64 {
        didSet {
            guard graceMillis != oldValue else { return }
            for key in multiVersionKeys {
                if let versions = keys[key]?.versions {
                    keys[key]?.nextExpiryMillis = Self.nextExpiry(versions, grace: graceMillis)
                }
            }
        }
    }
    public let bucketCount: Int

    struct KeyEntry: Sendable, Equatable {
        /// Sorted by rank (primary first); never empty.
        var versions: [KeyVersion]
        let bucket: Int
        /// Earliest expiry among the non-primary versions (nil with a single version), so
        /// `expire` skips keys where nothing can expire yet. Derived from `versions`.
        var nextExpiryMillis: UInt64?
    }

    struct PSKSlot: Hashable, Sendable {
        var node: NodeID
        var key: KeyRef
    }

    struct PSKEntry: Sendable, Equatable {
        var record: PSKFingerprint
        let bucket: Int
    }

    struct UserRef: Hashable, Sendable {
        var domain: String
        var user: String
    }

    /// Internal (not private), like `psk`, for `StateWalk`, which reads a copy.
    var keys: [KeyRef: KeyEntry] = [:]
    var psk: [PSKSlot: PSKEntry] = [:]
    /// Counts changes to the PSK fingerprints and key declarations, so a caller can cache what
    /// it derives from them (`pskMismatches` costs O(declared keys × nodes), and `/v1/health`
    /// asks for it on every call). Not replicated state: not part of `==`.
    public private(set) var pskChanges: UInt64 = 0
    /// Per key, each distinct non-empty fingerprint held for it and how many nodes hold it, and
    /// how many keys have more than one: `pskMismatches` answers at once when none has, which is
    /// the rule. `/v1/health` asks for the mismatches on every call; each time the PSK records
    /// had changed that scanned all of them (20,000 for 10,000 keys on two nodes, ~2 ms under the
    /// state lock), ~70 ms of a joining node's cluster loop while a monitor polled health
    /// (`perf record`). Derived from `psk`: not part of `==`. ~1 MB for 10,000 keys. The count
    /// is internal for the tests, which check it exactly.
    private var pskFingerprintHolders: [KeyRef: [(fingerprint: [UInt8], nodes: Int)]] = [:]
    private(set) var pskKeysDisagreeing = 0
    /// Records are deleted only once their certificate has expired (see the compaction rule in
    /// ReplicatedStore+Certificates.swift). Each slot caches the record's bucket, content hash
    /// (a removal arriving for a stored certificate must not rehash its DER) and entry hash.
    var certificateTable = CertificateTable()
    /// Lower bound of the earliest instant `expireCertificates` can forget anything.
    var nextCertificateForgettableAtMillis = Int64.max
    var tokenFloors: [UserRef: TokenFloorEntry] = [:]
    /// Only keys with a non-primary version can expire anything; `expire` scans just these.
    private var multiVersionKeys: Set<KeyRef> = []
    /// Per-bucket wrapping sum and count of entry hashes, kept incrementally so the digest
    /// the shell asks for every gossip round costs O(bucketCount), not O(state).
    /// Internal (not private) so the certificate extension keeps them in step too.
    var bucketSums: [UInt64]
    var bucketCounts: [UInt64]
    /// The same sums over key versions only and over PSK fingerprints only (the durable part of
    /// a bucket is the rest), so a repair can carry just the sections of a bucket that differ.
    private var versionSums: [UInt64]
    private var versionCounts: [UInt64]
    private var pskSums: [UInt64]
    private var pskCounts: [UInt64]

    /// `bucketCount` below 1 is treated as 1 rather than trapping; all nodes of a cluster must
    /// use the same value or anti-entropy degrades to full exchanges.
    public init(graceMillis: UInt64, bucketCount: Int = 64) {
        self.graceMillis = graceMillis
        self.bucketCount = max(1, bucketCount)
        self.bucketSums = Array(repeating: 0, count: self.bucketCount)
        self.bucketCounts = Array(repeating: 0, count: self.bucketCount)
        self.versionSums = self.bucketSums
        self.versionCounts = self.bucketCounts
        self.pskSums = self.bucketSums
        self.pskCounts = self.bucketCounts
    }

    /// Replicas are equal when their replicated content is; the digest caches follow from it.
    public static func == (lhs: ReplicatedStore, rhs: ReplicatedStore) -> Bool {
        lhs.graceMillis == rhs.graceMillis && lhs.bucketCount == rhs.bucketCount
            && lhs.keys == rhs.keys && lhs.psk == rhs.psk && sameCertificates(lhs, rhs)
            && lhs.tokenFloors == rhs.tokenFloors
    }

    // MARK: - RAM key versions

    public func keyRefs() -> [KeyRef] { keys.keys.sorted() }

    public func hasVersions(_ key: KeyRef) -> Bool { keys[key] != nil }

    /// Generation 0, and only when the key has nothing: at startup the shell calls this only for
    /// keys still missing after the initial sync, so an adopted cluster key is never shadowed.
    public mutating func createInitialVersion(of key: KeyRef, id: VersionID) -> KeyVersion? {
        guard keys[key] == nil else { return nil }
        let version = KeyVersion(id: id, generation: 0)
        install(key, [version], added: [version], removed: [])
        return version
    }

    /// The new version outranks every version this replica knows (higher generation), so it is
    /// primary here immediately; concurrent rotations elsewhere tie on generation and are
    /// ordered by creation time on every node.
    ///
    /// Costs O(versions) (one insertion into the ranked list and one digest update), not a
    /// re-sort: with many versions inside the grace period each rotation used to sort and
    /// rehash the whole list, so n rotations cost O(n² log n).
    public mutating func rotate(_ key: KeyRef, id: VersionID) -> KeyVersion {
        let previous = keys[key]?.versions ?? []
        // Rank order puts the highest generation first. Saturate rather than trap on a
        // (hostile) maximal generation.
        let generation = previous.first.map { $0.generation == UInt32.max ? $0.generation : $0.generation + 1 } ?? 0
        let version = KeyVersion(id: id, generation: generation)
        let merged = Self.union(previous, [version])
        install(key, merged.versions, added: merged.admitted, removed: merged.displaced)
        return version
    }

    /// Views of the versions still valid at `nowMillis`, primary first. Computed from the
    /// set itself, so it is right even if the shell has not called `expire` yet. O(versions).
    public func versions(of key: KeyRef, nowMillis: UInt64) -> [KeyVersionView] {
        guard let versions = keys[key]?.versions else { return [] }
        var views: [KeyVersionView] = []
        views.reserveCapacity(versions.count)
        Self.forEachExpiry(versions, grace: graceMillis) { index, expiresAt in
            if let expiresAt, nowMillis >= expiresAt { return }
            views.append(KeyVersionView(version: versions[index], isPrimary: index == 0, expiresAtMillis: expiresAt))
        }
        return views
    }

    /// Removes versions whose expiry is at or before `nowMillis` (valid while now < expiry) and
    /// returns them sorted by key then id, so the shell can zero their secret bytes. Keys
    /// whose earliest expiry is still ahead are skipped without looking at their versions.
    public mutating func expire(nowMillis: UInt64) -> [(KeyRef, VersionID)] {
        var pruned: [(KeyRef, VersionID)] = []
        for key in multiVersionKeys {
            guard let entry = keys[key], let next = entry.nextExpiryMillis, nowMillis >= next else { continue }
            let (survivors, expired) = Self.splitExpired(entry.versions, grace: graceMillis, nowMillis: nowMillis)
            guard !expired.isEmpty else { continue }
            for version in expired { pruned.append((key, version.id)) }
            install(key, survivors, added: [], removed: expired)
        }
        pruned.sort { $0.0 != $1.0 ? $0.0 < $1.0 : $0.1 < $1.1 }
        return pruned
    }

    // MARK: - Merge

    /// Admits whatever is new and not already expired against the merged set at `nowMillis`,
    /// and prunes what that set expires. Keys unknown here are admitted: filtering by config is
    /// the shell's job, done before calling, so every replica sees the same function.
    /// Costs O(held + incoming·log incoming) per key: a one-version push into a key with many
    /// versions no longer sorts and rehashes the held list.
    public mutating func merge(_ delta: StoreDelta, nowMillis: UInt64) -> MergeOutcome {
        var outcome = MergeOutcome()
        for (key, incoming) in delta.keyVersions where !incoming.isEmpty {
            let entry = keys[key]
            // A join's common case: one version of a key not held yet. A lone version is primary
            // and cannot expire, so it is admitted as it is: the steps below reach the same
            // outcome through several temporary arrays and sets per key.
            if entry == nil, incoming.count == 1 {
                outcome.added.append((key, incoming[0]))
                outcome.primaryChanged.append(key)
                outcome.forwardable.keyVersions[key] = incoming
                install(key, incoming, added: incoming, removed: [])
                continue
            }
            let previous = entry?.versions ?? []
            let merged = Self.union(previous, incoming)
            // Nothing new and nothing due: the held list stands as it is.
            if merged.admitted.isEmpty && (entry?.nextExpiryMillis.map { nowMillis < $0 } ?? true) { continue }
            let (survivors, expired) = Self.splitExpired(merged.versions, grace: graceMillis, nowMillis: nowMillis)
            // Incoming versions expired on arrival were never held: neither added nor pruned.
            let expiredIDs = Set(expired.map(\.id))
            let admitted = merged.admitted.filter { !expiredIDs.contains($0.id) }
            let admittedIDs = Set(merged.admitted.map(\.id))
            let expiredHeld = expired.filter { !admittedIDs.contains($0.id) }
            guard !admitted.isEmpty || !expiredHeld.isEmpty || !merged.displaced.isEmpty else { continue }

            for version in admitted { outcome.added.append((key, version)) }
            // A generation upgrade displaces the held record of an id; it is a prune only when
            // the upgraded version did not survive either.
            let survivingAdmitted = Set(admitted.map(\.id))
            for version in expiredHeld { outcome.pruned.append((key, version.id)) }
            for version in merged.displaced where !survivingAdmitted.contains(version.id) {
                outcome.pruned.append((key, version.id))
            }
            if previous.first != survivors.first { outcome.primaryChanged.append(key) }
            if !admitted.isEmpty { outcome.forwardable.keyVersions[key] = admitted }
            install(key, survivors, added: admitted, removed: merged.displaced + expiredHeld)
        }

        var changedSlots: Set<PSKSlot> = []
        var changeOrder: [PSKSlot] = []
        for record in delta.pskFingerprints where apply(record) {
            let slot = PSKSlot(node: record.node, key: record.key)
            if changedSlots.insert(slot).inserted { changeOrder.append(slot) }
        }
        if !changeOrder.isEmpty {
            outcome.pskChanged = true
            // Only the final winner per slot: an input record superseded within the same
            // delta was never part of this replica's state and is not worth forwarding.
            // In the order of each slot's first change, the delta's own order, which makes
            // it as deterministic as the input without sorting (the 20,000 records of a
            // 10,000-key join took ~30 ms to sort).
            outcome.forwardable.pskFingerprints = changeOrder.compactMap { psk[$0]?.record }
        }

        mergeCertificates(delta.certificates, nowMillis: nowMillis, into: &outcome)
        mergeTokenSequenceFloors(delta.tokenSequenceFloors, into: &outcome)

        outcome.added.sort { $0.0 != $1.0 ? $0.0 < $1.0 : KeyVersion.ranksBefore($0.1, $1.1) }
        outcome.pruned.sort { $0.0 != $1.0 ? $0.0 < $1.0 : $0.1 < $1.1 }
        outcome.primaryChanged.sort()
        return outcome
    }

    /// Forgets every version of `key` (no node declares it any more) and returns their ids so
    /// the shell can zero the secrets.
    public mutating func forgetKey(_ key: KeyRef) -> [VersionID] {
        guard let previous = keys[key]?.versions else { return [] }
        install(key, [], added: [], removed: previous)
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

    /// One node's record for one key (nil: none held).
    public func pskFingerprint(node: NodeID, key: KeyRef) -> PSKFingerprint? {
        psk[PSKSlot(node: node, key: key)]?.record
    }

    /// Every record one node made, deletions included.
    public func pskFingerprints(from node: NodeID) -> [PSKFingerprint] {
        psk.values.lazy.map(\.record).filter { $0.node == node }.sorted(by: Self.pskOrder)
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
        // Nodes that all agree on every key agree among any of them.
        guard pskKeysDisagreeing > 0 else { return [] }
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

    /// Each bucket's short digest per section (key versions, PSK fingerprints, durable entries).
    /// O(bucketCount): the section sums are kept as entries change.
    public func sectionDigests() -> SectionDigests {
        func short(_ digest: UInt64) -> UInt16 { UInt16(truncatingIfNeeded: digest) }  // the digest is mixed: any 16 bits do
        return SectionDigests(
            keyVersions: (0..<bucketCount).map { short(Self.bucketDigest(sum: versionSums[$0], count: versionCounts[$0])) },
            pskFingerprints: (0..<bucketCount).map { short(Self.bucketDigest(sum: pskSums[$0], count: pskCounts[$0])) },
            durable: durableBucketDigests().map(short))
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
        delta(forBuckets: buckets, sections: Array(repeating: .all, count: buckets.count))
    }

    /// The given sections of the given buckets (`sections[i]` for `buckets[i]`; a bucket
    /// without a section mask gets every section).
    public func delta(forBuckets buckets: [Int], sections: [BucketSections]) -> StoreDelta {
        var wanted = Array(repeating: BucketSections(), count: bucketCount)
        for (i, b) in buckets.enumerated() where b >= 0 && b < bucketCount {
            wanted[b].formUnion(i < sections.count ? sections[i] : .all)
        }
        var delta = StoreDelta()
        for (key, entry) in keys where wanted[entry.bucket].contains(.keyVersions) {
            delta.keyVersions[key] = entry.versions
        }
        delta.pskFingerprints = psk.values.filter { wanted[$0.bucket].contains(.pskFingerprints) }.map(\.record).sorted(by: Self.pskOrder)
        let durable = wanted.map { $0.contains(.durable) }
        if durable.contains(true) {
            delta.certificates = certificates(inBuckets: durable).sorted { $0.id < $1.id }
            delta.tokenSequenceFloors = floors(inBuckets: durable).sorted(by: Self.floorOrder)
        }
        return delta
    }

    /// `wanted[b]` for each bucket index in `buckets`; out-of-range indices are ignored.
    func bucketMask(_ buckets: [Int]) -> [Bool] {
        var wanted = Array(repeating: false, count: bucketCount)
        for b in buckets where b >= 0 && b < bucketCount { wanted[b] = true }
        return wanted
    }

    /// The certificate records of the wanted buckets, in slot order.
    private func certificates(inBuckets wanted: [Bool]) -> [CertificateRecord] {
        var certificates: [CertificateRecord] = []
        certificateTable.forEachSlot { index, slot in
            if wanted[Int(slot.bucket)] { certificates.append(certificateTable.record(index)) }
        }
        return certificates
    }

    /// The token floors of the wanted buckets, unsorted.
    private func floors(inBuckets wanted: [Bool]) -> [TokenSequenceFloor] {
        tokenFloors.values.filter { wanted[$0.bucket] }.map(\.record)
    }

    /// Everything this replica holds (`StateWalk`, collected).
    public func fullDelta() -> StoreDelta {
        StateWalk(self).collected()
    }

    // MARK: - Join of a node that kept its database

    /// Per-bucket digests of the durable entries only: certificate records and token floors, the
    /// ones a node keeps in its database across a restart. A restarting node sends them with its
    /// state request, so that a ready peer streams the durable buckets that differ instead of
    /// 100,000 records the node already holds (RAM key versions and PSK fingerprints are not
    /// durable and always travel).
    public func durableBucketDigests() -> [UInt64] {
        (0..<bucketCount).map {
            Self.bucketDigest(sum: bucketSums[$0] &- versionSums[$0] &- pskSums[$0], count: bucketCounts[$0] - versionCounts[$0] - pskCounts[$0])
        }
    }

    /// The state answer for a joining peer whose durable entries have `peerDurableDigests`
    /// (`durableBucketDigests()` on its side): every key version and PSK fingerprint, and the
    /// certificate records and token floors of each durable bucket whose digest differs from
    /// this replica's. Where a digest is equal the peer already holds exactly this replica's
    /// records of that bucket (the 64-bit digest is the same trust anti-entropy places in it),
    /// so after merging the answer it holds everything `fullDelta()` would have given it.
    public func joinDelta(peerDurableDigests: [UInt64]) -> StoreDelta {
        StateWalk(self, peerDurableDigests: peerDurableDigests).collected()
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

    static func pskOrder(_ a: PSKFingerprint, _ b: PSKFingerprint) -> Bool {
        a.key != b.key ? a.key < b.key : a.node < b.node
    }

    private func bucket(of key: KeyRef) -> Int {
        Int(StableHash.identity(key) % UInt64(bucketCount))
    }

    /// Union by id of a rank-sorted list and any incoming versions. If two records disagree on
    /// an id's generation (only a buggy or hostile peer can cause that) the higher wins, which
    /// is still a commutative, idempotent choice. Returns the rank-sorted union, the incoming
    /// versions it admitted (new ids or a raised generation, rank-sorted) and the held
    /// versions a raised generation displaced.
    ///
    /// O(held·k) id comparisons for a handful of incoming versions (a push: no hashing), a
    /// dictionary beyond that, plus one linear merge of two sorted lists: never a re-sort of
    /// the held list.
    static func union(_ base: [KeyVersion], _ incoming: [KeyVersion])
        -> (versions: [KeyVersion], admitted: [KeyVersion], displaced: [KeyVersion]) {
        // Incoming, one record per id (the highest generation).
        var candidates: [KeyVersion] = []
        if incoming.count <= 8 {
            candidates.reserveCapacity(incoming.count)
            for version in incoming {
                if let i = candidates.firstIndex(where: { $0.id == version.id }) {
                    candidates[i].generation = max(candidates[i].generation, version.generation)
                } else {
                    candidates.append(version)
                }
            }
        } else {
            var generations: [VersionID: UInt32] = [:]
            for version in incoming { generations[version.id] = max(generations[version.id] ?? 0, version.generation) }
            candidates = generations.map { KeyVersion(id: $0.key, generation: $0.value) }
        }

        // Ids already held: the held record stays unless the incoming generation is higher.
        var dropCandidate = [Bool](repeating: false, count: candidates.count)
        var displaced: [KeyVersion] = []
        var kept = base
        var displacedIndices: [Int] = []
        func resolve(_ heldIndex: Int, _ candidateIndex: Int) {
            if candidates[candidateIndex].generation > base[heldIndex].generation {
                displacedIndices.append(heldIndex)
            } else {
                dropCandidate[candidateIndex] = true
            }
        }
        if candidates.count <= 8 {
            for (heldIndex, held) in base.enumerated() {
                if let c = candidates.firstIndex(where: { $0.id == held.id }) { resolve(heldIndex, c) }
            }
        } else {
            var candidateIndex: [VersionID: Int] = [:]
            for (i, c) in candidates.enumerated() { candidateIndex[c.id] = i }
            for (heldIndex, held) in base.enumerated() {
                if let c = candidateIndex[held.id] { resolve(heldIndex, c) }
            }
        }
        if !displacedIndices.isEmpty {
            for i in displacedIndices { displaced.append(base[i]) }
            let gone = Set(displacedIndices)
            kept = base.enumerated().filter { !gone.contains($0.offset) }.map(\.element)
        }
        var admitted: [KeyVersion] = []
        for (i, c) in candidates.enumerated() where !dropCandidate[i] { admitted.append(c) }
        guard !admitted.isEmpty else { return (base, [], []) }
        admitted.sort(by: KeyVersion.ranksBefore)

        // Linear merge of two rank-sorted lists.
        var result: [KeyVersion] = []
        result.reserveCapacity(kept.count + admitted.count)
        var i = 0, j = 0
        while i < kept.count && j < admitted.count {
            if KeyVersion.ranksBefore(admitted[j], kept[i]) {
                result.append(admitted[j]); j += 1
            } else {
                result.append(kept[i]); i += 1
            }
        }
        result.append(contentsOf: kept[i...])
        result.append(contentsOf: admitted[j...])
        return (result, admitted, displaced)
    }

    /// Calls `body` with each index of a rank-sorted list and its expiry instant (nil for the
    /// primary): max(own created wall, earliest created wall ranked above) + grace, saturating.
    /// One pass, no allocation.
    @inline(__always)
    private static func forEachExpiry(_ ranked: [KeyVersion], grace: UInt64, _ body: (Int, UInt64?) -> Void) {
        var earliestAbove = UInt64.max
        for index in ranked.indices {
            let wall = ranked[index].id.created.wallMillis
            if index == 0 {
                body(0, nil)
            } else {
                let (sum, overflow) = max(wall, earliestAbove).addingReportingOverflow(grace)
                body(index, overflow ? UInt64.max : sum)
            }
            earliestAbove = min(earliestAbove, wall)
        }
    }

    /// The versions still valid at `nowMillis` and the expired ones, both in rank order.
    private static func splitExpired(_ ranked: [KeyVersion], grace: UInt64, nowMillis: UInt64)
        -> (survivors: [KeyVersion], expired: [KeyVersion]) {
        guard ranked.count > 1 else { return (ranked, []) }
        var survivors: [KeyVersion] = []
        var expired: [KeyVersion] = []
        survivors.reserveCapacity(ranked.count)
        forEachExpiry(ranked, grace: grace) { index, expiresAt in
            if let expiresAt, nowMillis >= expiresAt {
                expired.append(ranked[index])
            } else {
                survivors.append(ranked[index])
            }
        }
        return (survivors, expired)
    }

    private static func nextExpiry(_ ranked: [KeyVersion], grace: UInt64) -> UInt64? {
        guard ranked.count > 1 else { return nil }
        var next = UInt64.max
        forEachExpiry(ranked, grace: grace) { _, expiresAt in
            if let expiresAt { next = min(next, expiresAt) }
        }
        return next
    }

    /// Replaces a key's version list and keeps the digest sums and the expiry index in step.
    /// `added` and `removed` are exactly the records that differ between the old and the new
    /// list (a raised generation is one removed and one added record), so the digest update
    /// costs O(changes), not a diff of the whole list.
    private mutating func install(_ key: KeyRef, _ versions: [KeyVersion], added: [KeyVersion], removed: [KeyVersion]) {
        let bucket = keys[key]?.bucket ?? bucket(of: key)
        for version in removed {
            let hash = StableHash.entry(key, version)
            bucketSums[bucket] &-= hash
            bucketCounts[bucket] -= 1
            versionSums[bucket] &-= hash
            versionCounts[bucket] -= 1
        }
        for version in added {
            let hash = StableHash.entry(key, version)
            bucketSums[bucket] &+= hash
            bucketCounts[bucket] += 1
            versionSums[bucket] &+= hash
            versionCounts[bucket] += 1
        }
        if versions.isEmpty {
            keys[key] = nil
        } else {
            keys[key] = KeyEntry(versions: versions, bucket: bucket, nextExpiryMillis: Self.nextExpiry(versions, grace: graceMillis))
        }
        if versions.count > 1 { multiVersionKeys.insert(key) } else { multiVersionKeys.remove(key) }
    }

    private mutating func apply(_ record: PSKFingerprint) -> Bool {
        let slot = PSKSlot(node: record.node, key: record.key)
        if let current = psk[slot] {
            guard record.supersedes(current.record) else { return false }
            countFingerprintHolders(of: record.key, removing: current.record.fingerprint, adding: record.fingerprint)
            let change = StableHash.entry(record) &- StableHash.entry(current.record)
            bucketSums[current.bucket] &+= change
            pskSums[current.bucket] &+= change
            psk[slot] = PSKEntry(record: record, bucket: current.bucket)
        } else {
            countFingerprintHolders(of: record.key, removing: [], adding: record.fingerprint)
            let bucket = Int(StableHash.identity(node: record.node, key: record.key) % UInt64(bucketCount))
            let hash = StableHash.entry(record)
            bucketSums[bucket] &+= hash
            bucketCounts[bucket] += 1
            pskSums[bucket] &+= hash
            pskCounts[bucket] += 1
            psk[slot] = PSKEntry(record: record, bucket: bucket)
        }
        pskChanges &+= 1
        return true
    }

    /// Keeps `pskFingerprintHolders` and `pskKeysDisagreeing` in step with one node's record for
    /// `key` changing from `removing` to `adding` (empty: no fingerprint, a deletion or no record).
    private mutating func countFingerprintHolders(of key: KeyRef, removing: [UInt8], adding: [UInt8]) {
        guard removing != adding else { return }
        func update(_ holders: inout [(fingerprint: [UInt8], nodes: Int)]) -> Int {
            let disagreedBefore = holders.count > 1
            if !removing.isEmpty, let index = holders.firstIndex(where: { $0.fingerprint == removing }) {
                holders[index].nodes -= 1
                if holders[index].nodes == 0 { holders.remove(at: index) }
            }
            if !adding.isEmpty {
                if let index = holders.firstIndex(where: { $0.fingerprint == adding }) {
                    holders[index].nodes += 1
                } else {
                    holders.append((adding, 1))
                }
            }
            return (holders.count > 1 ? 1 : 0) - (disagreedBefore ? 1 : 0)
        }
        pskKeysDisagreeing += update(&pskFingerprintHolders[key, default: []])
        if adding.isEmpty, pskFingerprintHolders[key]?.isEmpty == true { pskFingerprintHolders[key] = nil }
    }
}
