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

    public init(node: NodeID, address: String, instance: UInt64, incarnation: UInt64, status: MemberStatus) {
        self.node = node
        self.address = address
        self.instance = instance
        self.incarnation = incarnation
        self.status = status
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

/// Protocol timing. Defaults suit a LAN cluster of a handful to a few dozen nodes.
public struct SWIMSettings: Hashable, Sendable {
    /// One probe round: the time a member has to answer (directly or via intermediaries).
    public var probeIntervalMillis: UInt64 = 300
    /// After this without a direct ack, the probe escalates to indirect ping-requests.
    public var probeTimeoutMillis: UInt64 = 200
    public var indirectProbeCount: Int = 3
    /// Scaled by log2(member count): larger clusters need longer for a refutation to come back.
    public var suspicionBaseMillis: UInt64 = 1500
    public var gossipPerMessage: Int = 8
    /// λ in "each update is piggybacked λ·log2(n) times".
    public var retransmitMultiplier: Int = 3
    /// Dead members are pinged once every this many rounds, so a healed partition or a restarted
    /// process is noticed without trusting gossip alone.
    public var deadPingEveryRounds: Int = 5
    /// A gap between ticks longer than this means this process was paused (SIGSTOP, swap, VM
    /// freeze): its own timers are then not evidence against anyone else.
    public var stallThresholdMillis: UInt64 = 1000

    public init() {}

    public func suspicionTimeoutMillis(memberCount: Int) -> UInt64 {
        let factor = max(1.0, log2Double(max(1, memberCount)))
        return UInt64(Double(suspicionBaseMillis) * factor)
    }

    func retransmitLimit(memberCount: Int) -> Int {
        let logN = Int(log2Double(max(1, memberCount) + 1).rounded(.up))
        return max(1, retransmitMultiplier * max(1, logN))
    }

    public func validate() throws(SWIMSettingsError) {
        if probeIntervalMillis == 0 { throw .zero(field: "probeIntervalMillis") }
        if probeTimeoutMillis == 0 { throw .zero(field: "probeTimeoutMillis") }
        if suspicionBaseMillis == 0 { throw .zero(field: "suspicionBaseMillis") }
        if gossipPerMessage <= 0 { throw .zero(field: "gossipPerMessage") }
        if retransmitMultiplier <= 0 { throw .zero(field: "retransmitMultiplier") }
        if deadPingEveryRounds <= 0 { throw .zero(field: "deadPingEveryRounds") }
        if stallThresholdMillis == 0 { throw .zero(field: "stallThresholdMillis") }
        if probeTimeoutMillis >= probeIntervalMillis {
            throw .probeTimeoutNotBelowInterval(timeout: probeTimeoutMillis, interval: probeIntervalMillis)
        }
    }
}

/// log2 without Foundation (the target has no dependencies); precision is irrelevant here.
func log2Double(_ n: Int) -> Double {
    guard n > 1 else { return 0 }
    var value = Double(n)
    var result = 0.0
    while value >= 2 { value /= 2; result += 1 }
    // Linear interpolation of the fractional part is good enough for timeouts.
    return result + (value - 1)
}
