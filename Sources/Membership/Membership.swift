/// A node's configured name (e.g. "node1"); the peer TLS certificate must carry it as a DNS SAN.
public typealias NodeID = String

/// Liveness of a member as this node currently believes it. The raw values are part of the
/// HTTP API (`GET /v1/cluster` "state") and must not be renamed.
public enum MemberStatus: String, Hashable, Sendable, CaseIterable {
    case alive, suspect, dead

    /// Within one incarnation, a worse status wins: the order in which SWIM lets news override.
    var rank: Int {
        switch self {
        case .alive: return 0
        case .suspect: return 1
        case .dead: return 2
        }
    }
}

/// One peer as seen by this node.
public struct Member: Hashable, Sendable {
    public var node: NodeID
    /// The peer's advertised listen address ("host:port"), not the ephemeral source of a connection.
    public var address: String
    /// The peer process (its start time in ms). 0 only for a configured seed that was never heard
    /// from by anyone and then timed out: it is shown `dead` but no process of it is known.
    public var instance: UInt64
    public var incarnation: UInt64
    public var status: MemberStatus
    public var lastChangeMillis: UInt64
    /// When this node last received a message directly from that process (nil: never).
    public var lastHeardMillis: UInt64?

    public init(node: NodeID, address: String, instance: UInt64, incarnation: UInt64,
                status: MemberStatus, lastChangeMillis: UInt64, lastHeardMillis: UInt64?) {
        self.node = node
        self.address = address
        self.instance = instance
        self.incarnation = incarnation
        self.status = status
        self.lastChangeMillis = lastChangeMillis
        self.lastHeardMillis = lastHeardMillis
    }
}

/// A rumour about one member, piggybacked on protocol messages.
public struct GossipUpdate: Hashable, Sendable {
    public var node: NodeID
    public var address: String
    public var instance: UInt64
    public var incarnation: UInt64
    public var status: MemberStatus
    /// For `suspect`: the node whose own failed probe raised this suspicion, so receivers can
    /// count independent confirmations (Lifeguard). Empty when unknown (the peer wire format
    /// does not carry it yet); the receiver then counts the node that delivered the rumour.
    public var origin: NodeID

    public init(node: NodeID, address: String, instance: UInt64, incarnation: UInt64, status: MemberStatus,
                origin: NodeID = "") {
        self.node = node
        self.address = address
        self.instance = instance
        self.incarnation = incarnation
        self.status = status
        self.origin = origin
    }
}

/// The wire vocabulary. Plain data so the shell can encode it however its frame format wants;
/// the sender's name, instance and advertised address travel in the shell's frame header and
/// are handed to `SWIMInstance.receive`.
public enum SWIMMessage: Hashable, Sendable {
    case ping(sequence: UInt64, gossip: [GossipUpdate])
    /// "Please ping `target` for me and relay its ack": the indirect probe that keeps one broken
    /// link from looking like a dead node.
    case pingRequest(sequence: UInt64, target: NodeID, targetAddress: String, gossip: [GossipUpdate])
    /// `target` is the node whose liveness is confirmed: the responder itself for a direct ack,
    /// the probed node when an intermediary relays.
    case ack(sequence: UInt64, target: NodeID, gossip: [GossipUpdate])
    /// An intermediary could not reach `target` in time (the requester needs no action).
    case nack(sequence: UInt64, target: NodeID)

    public var gossip: [GossipUpdate] {
        switch self {
        case .ping(_, let gossip), .pingRequest(_, _, _, let gossip), .ack(_, _, let gossip):
            return gossip
        case .nack:
            return []
        }
    }
}

/// What the shell must do after a call.
public enum SWIMDirective: Hashable, Sendable {
    /// Deliver `message` to `node` at `address` (best effort; a failure may be reported with
    /// `connectionFailed`).
    case send(SWIMMessage, to: NodeID, address: String)
    /// A member's reported status changed, it appeared (`previous == nil`), or it restarted
    /// (its `instance` changed; `previous` is the old process's status, possibly `.alive`). The
    /// shell uses it for events and to start a state sync with a newly alive process.
    case statusChanged(Member, previous: MemberStatus?)
}

/// Why a set of `SWIMSettings` cannot work.
public enum SWIMSettingsError: Error, CustomStringConvertible, Hashable, Sendable {
    case zero(field: String)
    case probeTimeoutNotBelowInterval(timeout: UInt64, interval: UInt64)

    public var description: String {
        switch self {
        case .zero(let field):
            return "membership setting \(field) must be greater than 0"
        case .probeTimeoutNotBelowInterval(let timeout, let interval):
            return "membership probeTimeoutMillis (\(timeout)) must be below probeIntervalMillis (\(interval)) "
                + "so indirect probes have time to run; lower the timeout or raise the interval"
        }
    }
}

/// Protocol timing (SWIM with the Lifeguard extensions). The defaults are tuned so that, on a
/// LAN or loopback, a crashed process (connections refused) is `dead` on every member within
/// 3 s in small clusters and 5 s at 1,000 nodes, while a process frozen for 2 s (SIGSTOP, a VM
/// pause, a swap storm) refutes in time and is never declared dead. `keystore-sim` and the
/// `bench/run.sh detect` figures in BENCHMARKS.md are the evidence.
public struct SWIMSettings: Hashable, Sendable {
    /// One probe round at full local health; scaled by the local health multiplier.
    public var probeIntervalMillis: UInt64 = 300
    /// After this without a direct ack (at full health; scaled like the interval), the probe
    /// escalates to indirect ping-requests.
    public var probeTimeoutMillis: UInt64 = 200
    public var indirectProbeCount: Int = 3
    /// Lifeguard's local health multiplier ceiling (memberlist's awareness, default 8): a node
    /// that misses nacks or has to refute runs its probes up to this many times slower, so its
    /// own sluggishness does not turn into suspicions of healthy peers.
    public var maxLocalHealthMultiplier: Int = 8
    /// The shortest suspicion (Lifeguard's Min) for a one- or two-node view: long enough that a
    /// process frozen for 2 s, suspected ~0.6 s into the freeze, refutes before it expires.
    public var suspicionBaseMillis: UInt64 = 1500
    /// Added to the minimum per doubling of the member count: each doubling is about one more
    /// gossip hop for a refutation to travel.
    public var suspicionPerDoublingMillis: UInt64 = 100
    /// Lifeguard's β: a suspicion starts at this multiple of the minimum and shrinks towards the
    /// minimum as independent confirmations arrive.
    public var suspicionMaxMultiplier: Int = 3
    /// Lifeguard's K: independent confirmations that bring a suspicion down to the minimum.
    public var suspicionConfirmations: Int = 3
    /// Pending rumours are also pushed to `gossipFanout` random alive members this often, not
    /// only piggybacked on probes: at 1,000 nodes the probe traffic alone spreads news in ~3 s.
    public var gossipIntervalMillis: UInt64 = 200
    public var gossipFanout: Int = 5
    /// Rumours piggybacked per message; with a backlog (a quarter of it is more) up to four
    /// times as many, so the verdicts queued when a partition heals do not hold up news.
    public var gossipPerMessage: Int = 8
    /// λ in "each update is piggybacked λ·log2(n) times".
    public var retransmitMultiplier: Int = 3
    /// Dead members are pinged once every this many rounds, so a healed partition or a restarted
    /// process is noticed without trusting gossip alone.
    public var deadPingEveryRounds: Int = 5
    /// At most this many dead members and this many never-heard-of seeds are pinged per round
    /// (round-robin), so a 1,000-node static config does not start with 1,000 pings per node.
    public var maxPingsPerRoundToUnconfirmed: Int = 8
    /// A gap between ticks longer than this means this process was paused (SIGSTOP, swap, VM
    /// freeze): its own timers are then not evidence against anyone else.
    public var stallThresholdMillis: UInt64 = 1000

    public init() {}

    /// Lifeguard's minimum suspicion timeout for a view of `memberCount` members (self included).
    public func suspicionTimeoutMillis(memberCount: Int) -> UInt64 {
        let doublings = binaryLogarithm(Double(max(1, memberCount)))
        return suspicionBaseMillis &+ UInt64((Double(suspicionPerDoublingMillis) * doublings).rounded())
    }

    /// Lifeguard's suspicion timeout after `confirmations` independent confirmations (suspecters
    /// beyond the first): max(Min, Max − (Max − Min)·log(C + 1)/log(K + 1)), K capped at n − 2.
    public func suspicionTimeoutMillis(memberCount: Int, confirmations: Int) -> UInt64 {
        let minimum = suspicionTimeoutMillis(memberCount: memberCount)
        let expected = min(suspicionConfirmations, memberCount - 2)
        guard expected >= 1 else { return minimum }
        let maximum = minimum &* UInt64(max(1, suspicionMaxMultiplier))
        let fraction = binaryLogarithm(Double(max(0, confirmations) + 1)) / binaryLogarithm(Double(expected + 1))
        let shrunk = Double(maximum) - Double(maximum - minimum) * min(1, fraction)
        return max(minimum, UInt64(shrunk.rounded()))
    }

    func retransmitLimit(memberCount: Int) -> Int {
        let logN = Int(log2Double(max(1, memberCount) + 1).rounded(.up))
        return max(1, retransmitMultiplier * max(1, logN))
    }

    public func validate() throws(SWIMSettingsError) {
        if probeIntervalMillis == 0 { throw .zero(field: "probeIntervalMillis") }
        if probeTimeoutMillis == 0 { throw .zero(field: "probeTimeoutMillis") }
        if suspicionBaseMillis == 0 { throw .zero(field: "suspicionBaseMillis") }
        if suspicionMaxMultiplier <= 0 { throw .zero(field: "suspicionMaxMultiplier") }
        if maxLocalHealthMultiplier <= 0 { throw .zero(field: "maxLocalHealthMultiplier") }
        if gossipIntervalMillis == 0 { throw .zero(field: "gossipIntervalMillis") }
        if gossipPerMessage <= 0 { throw .zero(field: "gossipPerMessage") }
        if retransmitMultiplier <= 0 { throw .zero(field: "retransmitMultiplier") }
        if deadPingEveryRounds <= 0 { throw .zero(field: "deadPingEveryRounds") }
        if maxPingsPerRoundToUnconfirmed <= 0 { throw .zero(field: "maxPingsPerRoundToUnconfirmed") }
        if stallThresholdMillis == 0 { throw .zero(field: "stallThresholdMillis") }
        if probeTimeoutMillis >= probeIntervalMillis {
            throw .probeTimeoutNotBelowInterval(timeout: probeTimeoutMillis, interval: probeIntervalMillis)
        }
    }
}

func log2Double(_ n: Int) -> Double { binaryLogarithm(Double(n)) }

/// log2 without Foundation (the target has no dependencies), 0 below 1: plenty for timeouts.
func binaryLogarithm(_ x: Double) -> Double {
    guard x > 1 else { return 0 }
    return naturalLogarithm(x) / 0.693_147_180_559_945_3
}

/// ln without Foundation: the exponent times ln 2 plus ln of the significand in [1, 2) from the
/// atanh series, accurate to ~1e-9. Public for the cluster simulation's random delays.
public func naturalLogarithm(_ x: Double) -> Double {
    guard x > 0 else { return -.infinity }
    let m = x.significand
    let t = (m - 1) / (m + 1), t2 = t * t
    var term = t, sum = 0.0
    for k in stride(from: 1, through: 21, by: 2) {
        sum += term / Double(k)
        term *= t2
    }
    return Double(x.exponent) * 0.693_147_180_559_945_3 + 2 * sum
}

extension Array where Element: Comparable {
    /// Where `element` is or belongs in this sorted array (binary search). Public for the
    /// replication core, which keeps its alive peers sorted the same way as SWIM's names.
    public func sortedInsertionIndex(of element: Element) -> Int {
        var low = 0, high = count
        while low < high {
            let mid = (low + high) / 2
            if self[mid] < element { low = mid + 1 } else { high = mid }
        }
        return low
    }
}
