import ArgumentParser
import ClusterSimulation
#if canImport(Glibc)
import Glibc
#endif

/// Swift seeds its hash function per process, so dictionary order (and with it the order of
/// some ties) would differ between runs; a seeded run must replay exactly, so re-exec once with
/// deterministic hashing.
private func ensureDeterministicHashing() {
    guard getenv("SWIFT_DETERMINISTIC_HASHING") == nil else { return }
    setenv("SWIFT_DETERMINISTIC_HASHING", "1", 1)
    execv("/proc/self/exe", CommandLine.unsafeArgv)
    // execv only returns on failure: go on, merely without the replay guarantee.
    print("keystore-sim: could not re-exec with deterministic hashing; runs may not replay exactly")
}

struct KeystoreSim: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keystore-sim",
        abstract: "N keystore nodes of the real protocol cores over a simulated network (seeded, simulated time).",
        discussion: """
            Phases: start-up (join), steady (workload, no faults: bytes_per_node_s), chaos (crashes, \
            restarts, pauses ≤ --max-pause-ms, partitions, clock jumps, loss), quiescence; invariants are \
            checked at every step and at the end. The last line is the summary; exit status 1 on any finding.
            """)

    @Option(help: "Number of nodes.") var nodes = 100
    @Option(help: "Seed of the run.") var seed: UInt64 = 1
    @Option(help: "Steady phase, simulated seconds.") var steady = 20
    @Option(help: "Chaos phase, simulated seconds.") var chaos = 60
    @Option(name: .customLong("join-seconds"), help: "Longest start-up phase, simulated seconds (membership forms in ~N/27 s at most: every node confirms each configured peer itself).")
    var joinSeconds = 120
    @Option(name: .customLong("quiesce-seconds"), help: "Longest final phase before the invariants are judged, simulated seconds.")
    var quiesceSeconds = 60
    @Option(help: "Message loss rate (0...1).") var loss = 0.001
    @Option(help: "Crashes per simulated minute (chaos phase).") var crashes = 10.0
    @Option(help: "Pauses per simulated minute (chaos phase).") var pauses = 10.0
    @Option(help: "Partitions per simulated minute (chaos phase).") var partitions = 1.0
    @Option(help: "Key rotations per simulated second, cluster-wide.") var rotations = 0.2
    @Option(help: "Certificate registrations per simulated second, cluster-wide.") var registrations = 1.0
    @Option(name: .customLong("max-pause-ms"), help: "Longest pause (SIGSTOP) of a process.") var maxPauseMillis: UInt64 = 2000
    @Flag(name: .customLong("suspicion-origin"), help: "Carry Lifeguard's suspicion origin in gossip (a future wire format).")
    var suspicionOrigin = false
    @Flag(name: .customLong("shell-reports-closed"), help: "Model the proposed shell change: SWIM hears when a peer's connection closes.")
    var shellReportsClosed = false
    @Flag(name: .customLong("cold-start"), help: "Form the cluster through the real join of N nodes starting together (slow beyond ~200 nodes).")
    var coldStart = false
    @Flag(help: "Print phases and faults as they happen.") var verbose = false

    func run() throws {
        var config = SimulationConfig()
        config.nodes = nodes
        config.seed = seed
        config.steadySeconds = steady
        config.chaosSeconds = chaos
        config.joinSeconds = joinSeconds
        config.quiesceSeconds = quiesceSeconds
        config.lossRate = loss
        config.crashesPerMinute = crashes
        config.pausesPerMinute = pauses
        config.partitionsPerMinute = partitions
        config.rotationsPerSecond = rotations
        config.registrationsPerSecond = registrations
        config.maxPauseMillis = maxPauseMillis
        config.suspicionOriginOnWire = suspicionOrigin
        config.shellReportsClosedConnections = shellReportsClosed
        config.coldStart = coldStart
        config.progress = verbose
        guard nodes >= 3 else { throw ValidationError("--nodes must be at least 3") }
        guard joinSeconds > 0, quiesceSeconds > 0 else { throw ValidationError("--join-seconds and --quiesce-seconds must be positive") }
        let simulator = try Simulator(config: config)
        let report = simulator.run()
        for finding in simulator.findings.prefix(20) { print("finding: \(finding)") }
        print("start-up traffic, bytes per node by kind: \(simulator.joinTraffic)")
        print("steady traffic, bytes per node per second by kind: \(simulator.steadyTraffic)")
        if !report.passed {
            print("replay: \(config.replayCommand) --verbose")
        }
        print(report.summaryLine)
        if !report.passed { throw ExitCode(1) }
    }
}

ensureDeterministicHashing()
KeystoreSim.main()
