import Membership
import ReplicatedStore

/// What replicated content travels as: a delta of entries. The node uses `WireDelta` (entries plus
/// the secrets behind key versions), a simulation can use `StoreDelta` directly.
public protocol ReplicationPayload: Sendable {
    /// A payload holding nothing (an empty repair answer still has to be sent).
    static var empty: Self { get }
    var isEmpty: Bool { get }
    /// The entries whose latest change was made by someone other than `node`. The origin of a
    /// change pushes it to every alive member itself, so forwarding what a push's origin made
    /// only repeats it (N·√N frames per change at 1,000 nodes); what the sender learned
    /// elsewhere is still forwarded.
    func excludingChanges(madeBy node: NodeID) -> Self
}

extension StoreDelta: ReplicationPayload {
    public static var empty: StoreDelta { StoreDelta() }

    public func excludingChanges(madeBy node: NodeID) -> StoreDelta {
        var kept = StoreDelta(pskFingerprints: pskFingerprints.filter { $0.node != node },
                              certificates: certificates.filter { $0.changedBy != node },
                              tokenSequenceFloors: tokenSequenceFloors.filter { $0.origin != node })
        for (key, versions) in keyVersions {
            let others = versions.filter { $0.id.origin != node }
            if !others.isEmpty { kept.keyVersions[key] = others }
        }
        return kept
    }
}

extension CertificateRecord {
    /// Who made the record's latest change: the removal's origin, else the registration's.
    public var changedBy: NodeID? { removal?.origin ?? content?.origin }
}

/// What the replication core reads from the local replica. The node implements it over its
/// `ClusterReplica` (with the wire codec's chunking), a simulation over a plain `ReplicatedStore`.
/// Chunks are what one message may carry: implementations split so each fits a frame.
public protocol ReplicaContent<Payload> {
    associatedtype Payload: ReplicationPayload
    var rootDigest: UInt64 { get }
    var bucketDigests: [UInt64] { get }
    /// Each bucket's digest per section, sent along with `bucketDigests` so the peer repairs
    /// only the sections that differ.
    var sectionDigests: SectionDigests { get }
    /// The entries of these sections of these buckets (`sections[i]` of `buckets[i]`), in
    /// message-sized chunks.
    func chunks(forBuckets buckets: [Int], sections: [BucketSections]) -> [Payload]
    /// Per-bucket digests of the durable entries (certificate records, token floors: what a
    /// node reloads from its database), all zero when it holds none.
    var durableBucketDigests: [UInt64] { get }
    /// The state for a joining peer, in message-sized chunks produced as they are sent: the
    /// whole replicated state when `peerDurableDigests` is nil, else every non-durable entry and
    /// the durable entries of the buckets whose digest differs from `peerDurableDigests`. The
    /// answer is the state as of this call, whatever changes while it is sent.
    func stateAnswer(peerDurableDigests: [UInt64]?) -> any StateAnswer<Payload>
    /// `payload` in message-sized chunks.
    func chunks(of payload: Payload) -> [Payload]
}

/// A full-state answer in progress, one chunk per `nextChunk`. Produced as the connection
/// drains rather than built whole: the node's answer to a peer joining with 100,000
/// certificates took ~0.2 s to build and held ~45 MiB until its last chunk was written.
public protocol StateAnswer<Payload>: Sendable {
    associatedtype Payload: ReplicationPayload
    /// The next chunk (never empty), nil once every chunk was given.
    mutating func nextChunk() -> Payload?
    /// Back to the first chunk: the answer starts over on a new connection.
    mutating func rewind()
}

/// An answer built whole and chunked up front (the simulation and tests, whose states are small).
public struct PrebuiltStateAnswer<Payload: ReplicationPayload>: StateAnswer {
    public let chunks: [Payload]
    private var next = 0

    public init(_ chunks: [Payload]) {
        self.chunks = chunks.filter { !$0.isEmpty }
    }

    public mutating func nextChunk() -> Payload? {
        guard next < chunks.count else { return nil }
        defer { next += 1 }
        return chunks[next]
    }

    public mutating func rewind() {
        next = 0
    }
}

/// Why a delta is sent; decides how the receiver answers.
public enum DeltaPurpose: Sendable, Hashable {
    /// New entries (a local change, or news forwarded after a merge); no answer.
    case push
    /// Anti-entropy repair of these buckets: the receiver merges and answers with `.repairReply`
    /// carrying its own entries of the same sections of the same buckets (`sections[i]` of
    /// `buckets[i]`; `.all` for each when the peer sent no section digests).
    case repair(buckets: [Int], sections: [BucketSections])
    case repairReply
    /// One chunk of a full-state answer to `syncRequest`.
    case sync
}

/// The replication protocol's vocabulary. Plain data: the shell wraps it in its frame format
/// together with the sender's clock reading, the way it wraps `SWIMMessage`.
public enum ReplicationMessage<Payload: ReplicationPayload>: Sendable {
    /// Anti-entropy opener: "this is my state's digest".
    case digest(root: UInt64)
    /// Answer to a differing digest: my per-bucket digests, and per section (nil from a peer
    /// that does not send them: keystored 0.1).
    case bucketDigests([UInt64], sections: SectionDigests?)
    case delta(Payload, purpose: DeltaPurpose)
    /// A starting node asks for the cluster's state (DESIGN.md RAM keys 2). `durableDigests`:
    /// the per-bucket digests of the certificate records and token floors it loaded from its
    /// own database (`ReplicaContent.durableBucketDigests`), nil when it holds none; a ready peer
    /// then sends those only for the buckets that differ (every key version still travels).
    case syncRequest(durableDigests: [UInt64]?)
    /// End of the full-state answer. `ready` tells whether the sender had finished its own join:
    /// only a ready peer's state can be adopted as "the cluster's".
    case syncDone(ready: Bool)
}

/// What the transport learned about its connection to a peer. The join decision rests on these:
/// only peers that cannot be reached at all may be given up on.
public enum LinkEvent: Sendable, Hashable {
    /// A connection to the peer is usable both ways: messages sent to the peer go out on it and
    /// the peer's answers come back. Reported once per transition from "no usable connection".
    case up
    /// The usable connection closed; messages in flight on it may be lost.
    case down
    /// An attempt to connect failed without the peer taking part: TCP refused, no route, connect
    /// timeout, or the peer's TLS refused this node's certificate (or this node the peer's). No
    /// process of that peer can serve this node now.
    case unreachable
    /// TCP connected but the handshake (TLS, hello) did not complete in time or the connection
    /// was closed during it: the peer is there but busy, paused, or its port is flooded. Such a
    /// peer may hold the cluster's keys, so a joining node keeps waiting for it.
    case unresponsive
}

/// How the startup join ended (DESIGN.md RAM keys 2).
public enum JoinOutcome: Sendable, Hashable {
    /// A ready peer sent us the cluster's full state (and every merge of it has completed).
    case adopted(from: NodeID)
    /// Every peer answered, none was ready: the cluster is starting together. Only the starter
    /// (the smallest node name among this node and those peers) gets this; the others wait for
    /// its state.
    case clusterStarting
    /// For `join_timeout_ms` and after it, every peer either could not be reached at all (its
    /// latest connection attempt failed before any handshake) or answered that it is starting
    /// too, and this node is the starter among those: bootstrap. Peers that are reachable but do
    /// not answer never lead here.
    case timedOut
    /// No other node configured.
    case alone
}

/// Anti-entropy with one peer, as last observed (nil: not compared yet, or the peer left).
public enum RepairState: Sendable, Hashable {
    /// The last digest exchange found equal states.
    case inSync
    /// The digests differed and a repair is in progress.
    case repairing
}

/// Identifies one `apply` directive, so its completion can be reported back.
public struct ApplyID: Hashable, Comparable, Sendable, CustomStringConvertible {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public static func < (lhs: ApplyID, rhs: ApplyID) -> Bool { lhs.rawValue < rhs.rawValue }
    public var description: String { "apply#\(rawValue)" }
}

/// What the shell must do after a call.
public enum ReplicationDirective<Payload: ReplicationPayload>: Sendable {
    /// Deliver `message` to `node` over the connection to it, in order with the other messages
    /// to the same node (a full-state answer must arrive before its `syncDone`).
    case send(ReplicationMessage<Payload>, to: NodeID)
    /// Open a connection to `node` unless one is usable or being opened; report the result with
    /// `linkChanged`. Only emitted while joining: afterwards sends and SWIM probes connect.
    case connect(NodeID)
    /// Merge `payload` received from `node` (asynchronously: the node persists certificate
    /// records first) and call `applied(id, new:)` with what was new when done.
    case apply(Payload, from: NodeID, id: ApplyID)
    /// The join decision is made and every merge it depends on has completed. Generate the keys
    /// still missing, then call `markReady`.
    case joinFinished(JoinOutcome)
}

/// Why a joining node is still waiting after `join_timeout_ms`, for health reports.
public struct JoinProblem: Sendable, Hashable, CustomStringConvertible {
    /// Reachable (TCP answers, or a connection was up) but no answer to the state request yet.
    public var notAnswering: [NodeID]
    /// Streaming their state to this node right now.
    public var receivingFrom: [NodeID]
    /// Cannot be reached at all (latest attempt refused / no route / timed out).
    public var unreachable: [NodeID]
    /// Answered that they are starting too.
    public var notReady: [NodeID]
    /// The peer expected to generate the keys for nodes starting together, when that is all the
    /// join waits for.
    public var starter: NodeID?
    /// How long past `join_timeout_ms` the node has been waiting.
    public var overdueMillis: UInt64

    public var description: String {
        var parts: [String] = []
        if !receivingFrom.isEmpty {
            parts.append("receiving the cluster state from \(receivingFrom.joined(separator: ", "))")
        }
        if !notAnswering.isEmpty {
            parts.append("waiting for peers \(notAnswering.joined(separator: ", ")): reachable but not answering")
        }
        if !unreachable.isEmpty { parts.append("unreachable: \(unreachable.joined(separator: ", "))") }
        if let starter, notAnswering.isEmpty && receivingFrom.isEmpty {
            parts.append("waiting for \(starter) to generate the keys of the starting cluster")
        }
        if !notReady.isEmpty { parts.append("starting too: \(notReady.joined(separator: ", "))") }
        let seconds = Double(overdueMillis / 100) / 10
        return "still joining \(seconds) s after join_timeout_ms; " + parts.joined(separator: "; ")
            + " (no new RAM key is generated while a reachable peer may hold the cluster's keys)"
    }
}

/// Protocol timing and fan-out.
public struct ReplicationSettings: Sendable, Hashable {
    /// One digest to one random alive member per interval. A member that missed a push (a
    /// connection reset under it) waits for its own next round, so this interval is the p99 of a
    /// rotation's spread at 1,000 nodes (keystore-sim: ~1 s at 1,000 ms, 0.4–0.5 s at 500 ms);
    /// a round between agreeing replicas costs a digest of a few dozen bytes.
    public var antiEntropyIntervalMillis: UInt64 = 500
    /// A repair asked of a peer that never answered may be asked again after this long.
    public var repairCooldownMillis: UInt64 = 5000
    /// While joining, how often a peer without a usable connection is dialled again.
    public var redialIntervalMillis: UInt64 = 500
    /// How often a peer that answered "starting too" is asked again when this node waits for it:
    /// the starter of a cluster starting together, or any such peer past `join_timeout_ms`.
    public var reaskNotReadyMillis: UInt64 = 250
    /// Forwarding reaches max(minimumFanout, ⌈√N⌉) random alive members.
    public var minimumFanout: Int = 3

    public init() {}
}
