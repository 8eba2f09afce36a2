import ReplicatedStore

/// `ReplicaContent` over a plain `ReplicatedStore` with `StoreDelta` payloads: what an
/// in-process driver (the simulation tests, `keystore-sim`) replicates when no secrets travel.
/// Chunks hold at most `maxEntriesPerChunk` entries (key versions, fingerprints, certificate
/// records, token floors), standing in for the wire codec's byte limit.
public struct StoreReplicaContent: ReplicaContent {
    public typealias Payload = StoreDelta

    public var store: ReplicatedStore
    public var maxEntriesPerChunk: Int

    public init(store: ReplicatedStore, maxEntriesPerChunk: Int = 256) {
        self.store = store
        self.maxEntriesPerChunk = max(1, maxEntriesPerChunk)
    }

    public var rootDigest: UInt64 { store.rootDigest() }
    public var bucketDigests: [UInt64] { store.bucketDigests() }
    public var sectionDigests: SectionDigests { store.sectionDigests() }
    public func chunks(forBuckets buckets: [Int], sections: [BucketSections]) -> [StoreDelta] {
        chunks(of: store.delta(forBuckets: buckets, sections: sections))
    }
    public var durableBucketDigests: [UInt64] { store.durableBucketDigests() }
    public func stateAnswer(peerDurableDigests: [UInt64]?) -> any StateAnswer<StoreDelta> {
        PrebuiltStateAnswer(peerDurableDigests.map { joinChunks(peerDurableDigests: $0) } ?? fullStateChunks())
    }
    /// The whole state in chunks (what `stateAnswer(peerDurableDigests: nil)` sends).
    public func fullStateChunks() -> [StoreDelta] { chunks(of: store.fullDelta()) }
    /// What `stateAnswer(peerDurableDigests:)` sends a peer holding those durable digests.
    public func joinChunks(peerDurableDigests: [UInt64]) -> [StoreDelta] {
        chunks(of: store.joinDelta(peerDurableDigests: peerDurableDigests))
    }

    public func chunks(of payload: StoreDelta) -> [StoreDelta] {
        guard !payload.isEmpty else { return [] }
        var result: [StoreDelta] = []
        var current = StoreDelta()
        var count = 0
        func close() {
            if count > 0 { result.append(current) }
            current = StoreDelta()
            count = 0
        }
        // A key's versions stay together: a merge judges expiry against the whole set.
        for key in payload.keyVersions.keys.sorted() {
            guard let versions = payload.keyVersions[key], !versions.isEmpty else { continue }
            if count > 0 && count + versions.count > maxEntriesPerChunk { close() }
            current.keyVersions[key] = versions
            count += versions.count
        }
        for fingerprint in payload.pskFingerprints {
            if count >= maxEntriesPerChunk { close() }
            current.pskFingerprints.append(fingerprint)
            count += 1
        }
        for record in payload.certificates {
            if count >= maxEntriesPerChunk { close() }
            current.certificates.append(record)
            count += 1
        }
        for floor in payload.tokenSequenceFloors {
            if count >= maxEntriesPerChunk { close() }
            current.tokenSequenceFloors.append(floor)
            count += 1
        }
        close()
        return result
    }
}
