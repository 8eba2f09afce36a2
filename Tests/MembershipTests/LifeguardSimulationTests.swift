import XCTest
import Membership

/// The failure-detection goals (issue 16) in the deterministic simulation with the default
/// settings: a killed member is dead everywhere within 3 s, a member frozen for 2 s or starved
/// of CPU is never declared dead, and message loss causes no false death.
final class LifeguardSimulationTests: XCTestCase {
    let names = (1...5).map { "node\($0)" }

    private func converged(seed: UInt64, tick: UInt64 = 50) -> Simulation {
        let sim = Simulation(tickMillis: tick, seed: seed)
        sim.startCluster(names)
        XCTAssertNotNil(sim.run(until: { sim.converged }, within: 3_000))
        sim.advance(by: 5_000 + seed * 37 % 1_000) // settle, and vary the phase of the fault
        return sim
    }

    private func deaths(_ sim: Simulation, after time: UInt64) -> [Simulation.Event] {
        sim.events.filter { $0.time > time && $0.member.status == .dead }
    }

    func testKilledMemberIsDeadEverywhereWithinThreeSeconds() {
        var times: [UInt64] = []
        for seed in UInt64(1)...20 {
            let sim = converged(seed: seed)
            let victim = names[Int(seed) % names.count]
            let observers = names.filter { $0 != victim }
            sim.kill(victim)
            let elapsed = sim.run(until: { observers.allSatisfy { sim.status(of: victim, seenBy: $0) == .dead } },
                                  within: 10_000)
            XCTAssertNotNil(elapsed, "seed \(seed): \(victim) never dead everywhere")
            times.append(elapsed ?? .max)
            XCTAssertFalse(sim.events.contains { $0.member.node != victim && $0.member.status != .alive },
                           "seed \(seed): only the victim may be suspected")
        }
        times.sort()
        print("kill → dead everywhere (5 nodes, 20 seeds): p50 \(times[times.count / 2]) ms, max \(times.last ?? 0) ms")
        XCTAssertLessThanOrEqual(times.last ?? .max, 3_000)
    }

    func testSilentlyVanishedMemberIsStillDetected() {
        // No refusal (host gone, partition): only the timeouts speak, so it takes longer.
        for seed in UInt64(1)...5 {
            let sim = converged(seed: seed)
            sim.stop("node3")
            let observers = names.filter { $0 != "node3" }
            XCTAssertNotNil(sim.run(until: { observers.allSatisfy { sim.status(of: "node3", seenBy: $0) == .dead } },
                                    within: 6_000), "seed \(seed)")
        }
    }

    func testTwoSecondFreezeIsNeverDeclaredDead() {
        for seed in UInt64(1)...30 {
            for deliverHeld in [true, false] {
                let sim = converged(seed: seed)
                let start = sim.now
                let victim = names[Int(seed) % names.count]
                sim.freeze(victim)
                sim.advance(by: 2_000)
                sim.thaw(victim, deliverHeld: deliverHeld)
                XCTAssertNotNil(sim.run(until: { sim.converged }, within: 5_000), "seed \(seed): no recovery")
                sim.advance(by: 5_000)
                XCTAssertEqual(deaths(sim, after: start).map { "\($0.observer) saw \($0.member.node) dead" }, [],
                               "seed \(seed), held messages \(deliverHeld ? "delivered" : "lost")")
                XCTAssertFalse(sim.events.contains { $0.time > start && $0.member.node != victim && $0.member.status != .alive },
                               "seed \(seed): the frozen node accused others when it woke")
            }
        }
    }

    func testStarvedMemberNeitherDiesNorKillsOthers() {
        for seed in UInt64(1)...5 {
            let sim = converged(seed: seed)
            let start = sim.now
            sim.starve("node2", maxLagMillis: 800)
            var peakHealth = 0
            for _ in 0..<600 { // 60 s
                sim.advance(by: 100)
                peakHealth = max(peakHealth, sim.nodes["node2"]?.swim.localHealth ?? 0)
            }
            sim.starve("node2", maxLagMillis: 0)
            XCTAssertNotNil(sim.run(until: { sim.converged }, within: 10_000), "seed \(seed)")
            XCTAssertEqual(deaths(sim, after: start).map { "\($0.observer) saw \($0.member.node) dead" }, [], "seed \(seed)")
            XCTAssertGreaterThan(peakHealth, 0, "seed \(seed): the starved node should notice it is the slow one")
            sim.advance(by: 30_000)
            XCTAssertEqual(sim.nodes["node2"]?.swim.localHealth, 0, "seed \(seed): health recovers once the CPU is back")
        }
    }

    func testMessageLossCausesNoFalseDeathAndDeathIsStillDetected() {
        for (seed, loss) in [(UInt64(1), 0.05), (2, 0.10), (3, 0.10)] {
            let sim = Simulation(seed: seed)
            let ten = (1...10).map { "n\($0)" }
            sim.startCluster(ten)
            XCTAssertNotNil(sim.run(until: { sim.converged }, within: 5_000))
            sim.lossRate = loss
            let start = sim.now
            sim.advance(by: 120_000)
            XCTAssertEqual(deaths(sim, after: start).count, 0, "\(Int(loss * 100)) % loss, seed \(seed)")
            XCTAssertGreaterThan(sim.lost, 0)
            sim.kill("n4")
            let observers = ten.filter { $0 != "n4" }
            XCTAssertNotNil(sim.run(until: { observers.allSatisfy { sim.status(of: "n4", seenBy: $0) == .dead } }, within: 10_000))
        }
    }
}
