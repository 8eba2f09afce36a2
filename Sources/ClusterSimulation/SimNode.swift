import Membership
import Replication
import ReplicatedStore

/// What travels between simulated nodes: the shell's two kinds of peer messages (the
/// `StoreDelta` stands for a `WireDelta` without its key material; sizes come from the codec).
enum SimMessage {
    case swim(SWIMMessage)
    case replication(ReplicationMessage<StoreDelta>, stamp: HLCTimestamp)
}

struct Envelope {
    var from: Int
    var fromGeneration: Int
    var fromInstance: UInt64
    var to: Int
    var message: SimMessage
    /// The connection it travels on; a broken connection loses what was in flight on it.
    var connection: UInt64
}

/// `ReplicaContent` over a node's store with a cached root digest (computing it costs 1,024
/// bucket hashes; the core asks on every digest and on every member that appears).
struct CachedStoreContent: ReplicaContent {
    typealias Payload = StoreDelta
    let node: SimNode
    var rootDigest: UInt64 {
        if let cached = node.cachedRoot { return cached }
        let value = node.store.rootDigest()
        node.cachedRoot = value
        return value
    }
    var bucketDigests: [UInt64] { node.store.bucketDigests() }
    var sectionDigests: SectionDigests { node.store.sectionDigests() }
    func chunks(forBuckets buckets: [Int], sections: [BucketSections]) -> [StoreDelta] {
        plain.chunks(forBuckets: buckets, sections: sections)
    }
    var durableBucketDigests: [UInt64] { node.store.durableBucketDigests() }
    func stateAnswer(peerDurableDigests: [UInt64]?) -> any StateAnswer<StoreDelta> {
        var delta = peerDurableDigests.map { node.store.joinDelta(peerDurableDigests: $0) } ?? node.store.fullDelta()
        delta.certificates.sort { $0.id < $1.id }  // reproducible chunking
        return PrebuiltStateAnswer(plain.chunks(of: delta))
    }
    func chunks(of payload: StoreDelta) -> [StoreDelta] { plain.chunks(of: payload) }
    private var plain: StoreReplicaContent { StoreReplicaContent(store: node.store) }
}

/// One simulated keystored process slot: the real cores (SWIM, replicated store, HLC) plus
/// what survives a crash (its certificate database). `generation` counts process starts, so
/// timers and messages of a crashed process are recognised and dropped.
final class SimNode {
    let index: Int
    let name: String
    let address: String
    var generation = 0
    var up = false
    var paused = false
    var held: [Envelope] = []
    var instance: UInt64 = 0
    var swim: SWIMInstance
    var rng: SimRandom
    var store: ReplicatedStore
    var hlc = HybridLogicalClock()
    var skewMillis: Int64 = 0
    /// This process's monotonic clock starts at an arbitrary offset (like CLOCK_MONOTONIC).
    var monotonicOffset: UInt64
    var ready = false
    var replication: ReplicationInstance<StoreDelta>
    /// Merges issued by the core, completing after the persist delay.
    var applies: [(id: ApplyID, payload: StoreDelta, from: Int)] = []
    /// Certificate records persisted before acknowledging (SQLite in the real node).
    var database: [CertificateID: CertificateRecord] = [:]
    /// Peers that asked for the full state and have not had its `syncDone` yet.
    var streams: Set<Int> = []
    /// Messages waiting for a connection to be usable, per peer.
    var queued: [Int: [SimMessage]] = [:]
    /// Certificate ids this node has seen removed: a removal must never be undone here.
    var sawRemoval: Set<CertificateID> = []
    /// The store's root digest, recomputed only after a change (1,024 buckets per call).
    var cachedRoot: UInt64?
    /// Partition side (0: with the majority).
    var side = 0

    init(index: Int, settings: SWIMSettings, seed: UInt64, graceMillis: UInt64) {
        self.index = index
        self.name = "n\(index)"
        self.address = "n\(index):7400"
        self.rng = SimRandom(seed: seed)
        self.monotonicOffset = 1_000_000 + UInt64(index) * 7_919
        self.swim = SWIMInstance(myself: name, address: address, instance: 1, seeds: [], settings: settings, nowMillis: 0)
        self.store = ReplicatedStore(graceMillis: graceMillis, bucketCount: 1024)
        self.replication = ReplicationInstance(myself: name, peers: [], nowMillis: 0)
    }

    var content: CachedStoreContent { CachedStoreContent(node: self) }

    func monotonic(_ now: UInt64) -> UInt64 { monotonicOffset &+ now }

    func wall(_ now: UInt64, epoch: UInt64) -> UInt64 {
        let value = Int64(epoch &+ now) + skewMillis
        return UInt64(max(0, value))
    }
}
