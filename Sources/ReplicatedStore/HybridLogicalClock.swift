/// A hybrid-logical-clock reading. Ordered by wall time first so timestamps stay close to
/// physical time (operators can read them), with the logical counter breaking ties causally.
public struct HLCTimestamp: Comparable, Hashable, Sendable, CustomStringConvertible {
    public var wallMillis: UInt64
    public var logical: UInt32

    public init(wallMillis: UInt64, logical: UInt32) {
        self.wallMillis = wallMillis
        self.logical = logical
    }

    public static let zero = HLCTimestamp(wallMillis: 0, logical: 0)

    public static func < (lhs: HLCTimestamp, rhs: HLCTimestamp) -> Bool {
        if lhs.wallMillis != rhs.wallMillis { return lhs.wallMillis < rhs.wallMillis }
        return lhs.logical < rhs.logical
    }

    public var description: String { "\(wallMillis).\(logical)" }
}

public enum ClockError: Error, CustomStringConvertible, Equatable, Sendable {
    /// The remote timestamp is further ahead of our wall clock than the allowed drift.
    case remoteTooFarAhead(by: UInt64)

    public var description: String {
        switch self {
        case .remoteTooFarAhead(let by):
            return "peer timestamp is \(by) ms ahead of the local clock (beyond the allowed drift); "
                + "fix NTP on the peer or on this host"
        }
    }
}

/// Hybrid logical clock (Kulkarni et al., 2014). Version ids are HLC timestamps so that
/// "earliest created wins" is meaningful across nodes even with mild clock skew, and causally
/// later events (a rotate after seeing a version) always get larger timestamps.
public struct HybridLogicalClock: Sendable, Hashable {
    public let maxForwardDriftMillis: UInt64
    public private(set) var last: HLCTimestamp

    public init(maxForwardDriftMillis: UInt64 = 60_000) {
        self.maxForwardDriftMillis = maxForwardDriftMillis
        self.last = .zero
    }

    /// Local or send event. Strictly greater than every timestamp returned or observed before.
    public mutating func now(wallMillis: UInt64) -> HLCTimestamp {
        if wallMillis > last.wallMillis {
            last = HLCTimestamp(wallMillis: wallMillis, logical: 0)
        } else {
            last = Self.successor(of: last)
        }
        return last
    }

    /// Receive event. Rejects (without changing the clock) a remote timestamp beyond the allowed
    /// drift, so one peer with a broken clock cannot drag every node's versions into the future.
    public mutating func observe(_ remote: HLCTimestamp, wallMillis: UInt64) throws(ClockError) -> HLCTimestamp {
        if remote.wallMillis > wallMillis, remote.wallMillis - wallMillis > maxForwardDriftMillis {
            throw .remoteTooFarAhead(by: remote.wallMillis - wallMillis)
        }
        let wall = max(last.wallMillis, remote.wallMillis, wallMillis)
        if wall == last.wallMillis && wall == remote.wallMillis {
            last = Self.successor(of: max(last, remote))
        } else if wall == last.wallMillis {
            last = Self.successor(of: last)
        } else if wall == remote.wallMillis {
            last = Self.successor(of: remote)
        } else {
            last = HLCTimestamp(wallMillis: wall, logical: 0)
        }
        return last
    }

    /// Next timestamp on the same wall tick; if the counter is exhausted we borrow the next
    /// millisecond instead of trapping, which keeps monotonicity (the wall catches up anyway).
    private static func successor(of t: HLCTimestamp) -> HLCTimestamp {
        if t.logical < UInt32.max {
            return HLCTimestamp(wallMillis: t.wallMillis, logical: t.logical + 1)
        }
        if t.wallMillis < UInt64.max {
            return HLCTimestamp(wallMillis: t.wallMillis + 1, logical: 0)
        }
        return t  // Unreachable with real clocks (year 584 million); never trap on it.
    }
}
