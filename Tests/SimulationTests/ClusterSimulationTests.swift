import ClusterSimulation
import XCTest

/// `keystore-sim` at 100 nodes for a few seeds: every invariant holds and the detection and
/// convergence figures stay within the 1,000-node targets (simulated time, so deterministic).
final class ClusterSimulationTests: XCTestCase {
    func testHundredNodesUnderFaultsKeepEveryInvariant() throws {
        for seed: UInt64 in [1, 2, 3] {
            var config = SimulationConfig()
            config.nodes = 100
            config.seed = seed
            config.steadySeconds = 5
            config.chaosSeconds = 30
            let simulator = try Simulator(config: config)
            let report = simulator.run()
            print(report.summaryLine)
            XCTAssertTrue(report.passed, "seed \(seed): \(simulator.findings.prefix(10))\nreplay: \(config.replayCommand)")
            XCTAssertEqual(report.falseDeaths, 0)
            XCTAssertEqual(report.lostWrites, 0)
            XCTAssertEqual(report.resurrections, 0)
            XCTAssertEqual(report.splitKeys, 0)
            XCTAssertGreaterThan(report.rotations, 0, "seed \(seed): no rotation was measured")
            XCTAssertGreaterThan(report.crashesMeasured, 0, "seed \(seed): no crash was measured")
            XCTAssertLessThanOrEqual(report.convergeP99Millis ?? .max, 1_000, "seed \(seed)")
            XCTAssertLessThanOrEqual(report.detectP99Millis ?? .max, 5_000, "seed \(seed)")
            // Traffic is a benchmark figure (BENCHMARKS.md), printed with the summary line.
        }
    }

    /// A failing run prints the command that replays it: the phase limits are part of it once
    /// they differ from the defaults (a 5,000-node run needs a longer start-up).
    func testReplayCommandCarriesThePhaseLimits() {
        var config = SimulationConfig()
        config.nodes = 5000
        XCTAssertFalse(config.replayCommand.contains("--join-seconds"))
        config.joinSeconds = 300
        config.quiesceSeconds = 240
        XCTAssertTrue(config.replayCommand.contains("--join-seconds 300 --quiesce-seconds 240"), config.replayCommand)
    }

    func testSameSeedReplaysTheSameRun() throws {
        var config = SimulationConfig()
        config.nodes = 30
        config.seed = 7
        config.steadySeconds = 5
        config.chaosSeconds = 20
        let first = try Simulator(config: config).run()
        let second = try Simulator(config: config).run()
        XCTAssertEqual(first.summaryLine, second.summaryLine)
        XCTAssertGreaterThan(first.events, 0)
    }
}
