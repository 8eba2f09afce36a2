import Membership
import NIOCore
import PeerWire
import Replication
import ReplicatedStore
import SecretMemory

/// SplitMix64: tiny, seedable, and the same sequence on every machine.
public struct SimRandom: RandomNumberGenerator, Sendable {
    private var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE5_E4B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    /// Exponentially distributed delay with the given mean (Poisson arrivals).
    mutating func exponential(meanMillis: Double) -> UInt64 {
        let u = Double.random(in: Double.ulpOfOne..<1, using: &self)
        return UInt64(max(1, -meanMillis * naturalLogarithm(u)))
    }
}


/// Min-heap of timed events; ties keep insertion order, so runs are reproducible. The heap
/// holds only (time, order, slot); elements sit in a slot table, so sifting moves three
/// integers instead of copying messages (a 1,000-node run queues millions of them).
struct EventQueue<Element> {
    private var heap: [(time: UInt64, order: UInt64, slot: Int)] = []
    private var slots: [Element?] = []
    private var free: [Int] = []
    private var counter: UInt64 = 0

    var isEmpty: Bool { heap.isEmpty }
    var count: Int { heap.count }

    mutating func push(_ element: Element, at time: UInt64) {
        counter &+= 1
        let slot: Int
        if let reused = free.popLast() {
            slot = reused
            slots[slot] = element
        } else {
            slot = slots.count
            slots.append(element)
        }
        heap.append((time, counter, slot))
        var child = heap.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            guard Self.before(heap[child], heap[parent]) else { break }
            heap.swapAt(child, parent)
            child = parent
        }
    }

    mutating func pop() -> (time: UInt64, element: Element)? {
        guard !heap.isEmpty else { return nil }
        heap.swapAt(0, heap.count - 1)
        let top = heap.removeLast()
        var parent = 0
        while true {
            let left = 2 * parent + 1, right = left + 1
            var smallest = parent
            if left < heap.count && Self.before(heap[left], heap[smallest]) { smallest = left }
            if right < heap.count && Self.before(heap[right], heap[smallest]) { smallest = right }
            if smallest == parent { break }
            heap.swapAt(parent, smallest)
            parent = smallest
        }
        let element = slots[top.slot]!
        slots[top.slot] = nil
        free.append(top.slot)
        return (top.time, element)
    }

    private static func before(_ a: (time: UInt64, order: UInt64, slot: Int), _ b: (time: UInt64, order: UInt64, slot: Int)) -> Bool {
        a.time != b.time ? a.time < b.time : a.order < b.order
    }
}

/// Sizes of real peer frames: every simulated message is encoded with `PeerFrameCodec`, key
/// material as a placeholder of the configured size (the codec writes secret bytes verbatim),
/// plus the TLS 1.3 record overhead of one record per frame (5-byte header, content type,
/// 16-byte AEAD tag). TCP/IP headers are not counted.
final class WireSizer {
    static let tlsRecordOverhead = 22
    private var buffer = ByteBufferAllocator().buffer(capacity: 64 * 1024)
    private let placeholder: SecretBytes

    init(keyBytes: Int) throws {
        try SecretArena.initializeSodium()
        let arena = try SecretArena(chunkSize: max(64 * 1024, keyBytes * 4))
        placeholder = try SecretBytes.random(count: keyBytes, in: arena)
    }

    func size(_ message: PeerMessage) -> Int {
        buffer.clear()
        // The simulation only makes strings the codec takes; a refusal would count as nothing sent.
        guard (try? PeerFrameCodec.encode(message, into: &buffer)) != nil else { return 0 }
        return buffer.readableBytes + Self.tlsRecordOverhead
    }

    func wire(_ delta: StoreDelta) -> WireDelta {
        var versions: [WireKeyVersion] = []
        for key in delta.keyVersions.keys.sorted() {
            for version in delta.keyVersions[key] ?? [] {
                versions.append(WireKeyVersion(key: key, version: version, secret: placeholder))
            }
        }
        return WireDelta(versions: versions, pskFingerprints: delta.pskFingerprints, certificates: delta.certificates)
    }

    /// Bytes of one replication message as the shell frames it.
    func size(_ message: ReplicationMessage<StoreDelta>, stamp: HLCTimestamp) -> Int {
        let wire: ReplicationMessage<WireDelta>
        switch message {
        case .digest(let root): wire = .digest(root: root)
        case .bucketDigests(let digests, let sections): wire = .bucketDigests(digests, sections: sections)
        case .delta(let delta, let purpose): wire = .delta(self.wire(delta), purpose: purpose)
        case .syncRequest(let digests): wire = .syncRequest(durableDigests: digests)
        case .syncDone(let ready): wire = .syncDone(ready: ready)
        }
        return size(.replication(wire, stamp: stamp))
    }
}

/// Nearest-rank percentile of unsorted samples (nil when empty).
func percentile(_ samples: [UInt64], _ p: Double) -> UInt64? {
    guard !samples.isEmpty else { return nil }
    let sorted = samples.sorted()
    let rank = Int((p / 100 * Double(sorted.count)).rounded(.up))
    return sorted[min(sorted.count - 1, max(0, rank - 1))]
}
