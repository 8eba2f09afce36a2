import Membership
import PeerWire
import ReplicatedStore

/// What travels between simulated nodes: the shell's peer messages, as plain values (the
/// `StoreDelta` stands for a `WireDelta` without its key material; sizes come from the codec).
enum SimMessage {
    case swim(SWIMMessage)
    case digest(root: UInt64, stamp: HLCTimestamp)
    case bucketDigests([UInt64], stamp: HLCTimestamp)
    case delta(StoreDelta, purpose: DeltaPurpose, stamp: HLCTimestamp)
    case syncRequest(stamp: HLCTimestamp)
    case syncDone(stamp: HLCTimestamp, ready: Bool)

    var stamp: HLCTimestamp? {
        switch self {
        case .swim: return nil
        case .digest(_, let s), .bucketDigests(_, let s), .delta(_, _, let s), .syncRequest(let s), .syncDone(let s, _):
            return s
        }
    }
}

struct Envelope {
    var from: Int
    var fromGeneration: Int
    var fromInstance: UInt64
    var to: Int
    var message: SimMessage
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
    var joinAsked: Set<Int> = []
    var joinNotReady: Set<Int> = []
    /// Certificate records persisted before acknowledging (SQLite in the real node).
    var database: [CertificateID: CertificateRecord] = [:]
    var repairRequested: [Int: UInt64] = [:]
    /// The shell redials a peer at most every 500 ms; only dials report refusals.
    var lastDial: [Int: UInt64] = [:]
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
    }

    func monotonic(_ now: UInt64) -> UInt64 { monotonicOffset &+ now }

    func wall(_ now: UInt64, epoch: UInt64) -> UInt64 {
        let value = Int64(epoch &+ now) + skewMillis
        return UInt64(max(0, value))
    }
}
