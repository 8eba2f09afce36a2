import Membership

/// Everything that determines a run: the same config (seed included) gives the same run.
public struct SimulationConfig: Sendable, Equatable {
    public var nodes = 100
    public var seed: UInt64 = 1
    /// Upper bound for the start-up phase (nodes start within the first 2 s, then join).
    public var joinSeconds = 120
    /// Fault-free phase with the workload running; `bytes_per_node_s` is measured here.
    public var steadySeconds = 20
    /// Faults and workload.
    public var chaosSeconds = 60
    /// Upper bound for the final phase (no faults, no workload) before the invariants are judged.
    public var quiesceSeconds = 60
    /// One-way link latency: a fixed per-link part in this range plus up to `jitterMillis`.
    public var minLatencyMillis: UInt64 = 1
    public var maxLatencyMillis: UInt64 = 4
    public var jitterMillis: UInt64 = 1
    public var lossRate = 0.001
    /// Cluster-wide workload rates.
    public var rotationsPerSecond = 0.2
    public var registrationsPerSecond = 1.0
    public var revocationsPerSecond = 0.25
    /// Cluster-wide fault rates during the chaos phase.
    public var crashesPerMinute = 10.0
    public var pausesPerMinute = 10.0
    public var partitionsPerMinute = 1.0
    public var skewJumpsPerMinute = 4.0
    /// A paused (SIGSTOPped, starved) process stays frozen this long at most: up to 2 s it must
    /// never be declared dead, so every death of one counts as a false death.
    public var maxPauseMillis: UInt64 = 2_000
    /// Initial clock offsets are within ±this; skew jumps move a clock by up to ±5 s.
    public var maxClockSkewMillis: UInt64 = 250
    public var domains = 4
    public var keysPerDomain = 5
    public var keyBytes = 2048
    public var swim = SWIMSettings()
    /// Deliver the suspicion origin (Lifeguard's "from") in gossip, as a future wire version
    /// could; today's `PeerFrameCodec` drops it, and by default so does the simulation.
    public var suspicionOriginOnWire = false
    /// The shell change proposed for detection: tell SWIM when a peer's connection closes
    /// (`connectionClosed`), so a killed process is probed at once instead of in its turn.
    /// Today's `ClusterShell` does not.
    public var shellReportsClosedConnections = false
    /// Form the cluster through the real join of N nodes starting together (O(N³) to simulate
    /// with today's replication core) instead of the pre-seeded formation.
    public var coldStart = false
    /// SWIM tick period of the shell.
    public var tickMillis: UInt64 = 100
    public var joinTimeoutMillis: UInt64 = 3000
    /// A crashed node restarts this long after the crash (uniformly at random).
    public var restartAfterMillis: ClosedRange<UInt64> = 8_000...15_000
    public var progress = false

    public init() {}

    /// The command line that reproduces this run.
    public var replayCommand: String {
        var parts = ["swift run -c release keystore-sim", "--nodes \(nodes)", "--seed \(seed)",
                     "--steady \(steadySeconds)", "--chaos \(chaosSeconds)"]
        let defaults = SimulationConfig()
        if joinSeconds != defaults.joinSeconds { parts.append("--join-seconds \(joinSeconds)") }
        if quiesceSeconds != defaults.quiesceSeconds { parts.append("--quiesce-seconds \(quiesceSeconds)") }
        if lossRate != defaults.lossRate { parts.append("--loss \(lossRate)") }
        if crashesPerMinute != defaults.crashesPerMinute { parts.append("--crashes \(crashesPerMinute)") }
        if pausesPerMinute != defaults.pausesPerMinute { parts.append("--pauses \(pausesPerMinute)") }
        if partitionsPerMinute != defaults.partitionsPerMinute { parts.append("--partitions \(partitionsPerMinute)") }
        if rotationsPerSecond != defaults.rotationsPerSecond { parts.append("--rotations \(rotationsPerSecond)") }
        if registrationsPerSecond != defaults.registrationsPerSecond { parts.append("--registrations \(registrationsPerSecond)") }
        if maxPauseMillis != defaults.maxPauseMillis { parts.append("--max-pause-ms \(maxPauseMillis)") }
        if suspicionOriginOnWire { parts.append("--suspicion-origin") }
        if shellReportsClosedConnections { parts.append("--shell-reports-closed") }
        if coldStart { parts.append("--cold-start") }
        return parts.joined(separator: " ")
    }
}
