import XCTest
import Membership

final class SimulationTests: XCTestCase {
    let settings = SWIMSettings()

    func testThreeNodesAllBecomeAlive() {
        let sim = Simulation()
        sim.startCluster(["node1", "node2", "node3"])
        for name in ["node1", "node2"] { XCTAssertEqual(sim.nodes[name]?.swim.members, [], "unconfirmed seeds are not reported") }
        let elapsed = sim.run(until: { sim.converged }, within: 2_000)
        XCTAssertNotNil(elapsed, "3 nodes did not converge")
        XCTAssertLessThanOrEqual(elapsed ?? .max, settings.probeIntervalMillis, "join pings go to every seed in round 1")
        for name in ["node1", "node2", "node3"] {
            XCTAssertEqual(sim.nodes[name]?.swim.pendingSeeds, [])
            XCTAssertEqual(sim.nodes[name]?.swim.members.map(\.node).count, 2)
        }
        let announced = sim.events.filter { $0.previous == nil && $0.member.status == .alive }
        XCTAssertEqual(announced.count, 6, "each node announces each peer exactly once")
        sim.advance(by: 10_000)
        XCTAssertTrue(sim.converged)
        XCTAssertEqual(sim.events.count, 6, "a healthy cluster produces no further status changes")
        XCTAssertEqual(sim.member("node2", seenBy: "node1")?.address, Simulation.address("node2"))
        XCTAssertNotNil(sim.member("node2", seenBy: "node1")?.lastHeardMillis)
    }

    func testJoinThroughOneSeedLearnsAllOthersByGossip() {
        let sim = Simulation()
        let names = (1...6).map { "node\($0)" }
        // node1 knows node2; everyone else knows only node1. Start them a little apart.
        sim.start("node1", seeds: ["node2"])
        for name in names.dropFirst() {
            sim.advance(by: 100)
            sim.start(name, seeds: ["node1"])
        }
        let elapsed = sim.run(until: { sim.converged }, within: 3_000)
        XCTAssertNotNil(elapsed, "join via one seed did not converge: \(sim.nodes["node6"]?.swim.members.map(\.node) ?? [])")
        XCTAssertEqual(sim.nodes["node3"]?.swim.members.map(\.node), ["node1", "node2", "node4", "node5", "node6"])
        XCTAssertFalse(sim.events.contains { $0.member.status != .alive }, "nobody was suspected during the join")
    }

    func testStoppedNodeBecomesSuspectThenDeadWithinBound() {
        let sim = Simulation()
        let names = ["node1", "node2", "node3", "node4"]
        sim.startCluster(names)
        XCTAssertNotNil(sim.run(until: { sim.converged }, within: 2_000))
        sim.stop("node4")
        let stoppedAt = sim.now
        let observers = ["node1", "node2", "node3"]
        let elapsed = sim.run(until: { observers.allSatisfy { sim.status(of: "node4", seenBy: $0) == .dead } },
                              within: 20_000)
        XCTAssertNotNil(elapsed, "node4 was never declared dead everywhere")
        // Bound: each observer probes node4 within two passes over its 3 peers, the probe fails
        // after 3 probe timeouts (direct + indirect), then the suspicion timeout, plus a round
        // for the verdict to spread.
        let interval = settings.probeIntervalMillis
        let bound = interval * (2 * 3) + 3 * settings.probeTimeoutMillis
            + settings.suspicionTimeoutMillis(memberCount: 4) + interval
        XCTAssertLessThanOrEqual(elapsed ?? .max, bound)
        for observer in observers {
            let mine = sim.events.filter { $0.observer == observer && $0.member.node == "node4" && $0.time > stoppedAt }
            XCTAssertEqual(mine.last?.member.status, .dead)
            XCTAssertEqual(sim.nodes[observer]?.swim.members.first { $0.node == "node4" }?.status, .dead, "shown dead")
        }
        let firstSuspect = sim.events.first { $0.member.node == "node4" && $0.member.status == .suspect }
        let firstDead = sim.events.first { $0.member.node == "node4" && $0.member.status == .dead }
        XCTAssertNotNil(firstSuspect)
        XCTAssertGreaterThanOrEqual((firstDead?.time ?? 0) - (firstSuspect?.time ?? .max),
                                    settings.suspicionTimeoutMillis(memberCount: 4), "suspect lasts the full timeout")
        print("stopped node declared dead everywhere after \(elapsed ?? 0) ms (bound \(bound) ms)")
        XCTAssertFalse(sim.events.contains { $0.member.node != "node4" && $0.member.status != .alive })
    }

    func testFrozenNodeIsSuspectedThenRefutesWithoutFalseDeaths() {
        for deliverHeld in [true, false] {
            frozenNodeScenario(deliverHeld: deliverHeld)
        }
    }

    private func frozenNodeScenario(deliverHeld: Bool, file: StaticString = #filePath, line: UInt = #line) {
        let sim = Simulation()
        let names = ["node1", "node2", "node3", "node4"]
        sim.startCluster(names)
        XCTAssertNotNil(sim.run(until: { sim.converged }, within: 2_000))
        sim.freeze("node4")
        let suspected = sim.run(until: { sim.events.contains { $0.member.node == "node4" && $0.member.status == .suspect } },
                                within: 3_000)
        XCTAssertNotNil(suspected, "nobody suspected the frozen node")
        sim.advance(by: 300)
        XCTAssertLessThan((suspected ?? 0) + 300, settings.suspicionTimeoutMillis(memberCount: 4))
        sim.thaw("node4", deliverHeld: deliverHeld)
        let recovered = sim.run(until: { sim.converged }, within: 3_000)
        XCTAssertNotNil(recovered, "the frozen node did not come back alive")
        sim.advance(by: 5_000)
        XCTAssertTrue(sim.converged)
        XCTAssertFalse(sim.events.contains { $0.member.status == .dead }, "nobody may be declared dead")
        XCTAssertFalse(sim.events.contains { $0.member.node != "node4" && $0.member.status != .alive },
                       "the paused node must not suspect the others when it wakes up")
        XCTAssertGreaterThan(sim.nodes["node4"]?.swim.myself.incarnation ?? 0, 0, "node4 refuted by raising its incarnation")
        XCTAssertEqual(sim.member("node4", seenBy: "node1")?.incarnation, sim.nodes["node4"]?.swim.myself.incarnation)
    }

    func testNetworkLatencyCausesNoFalseSuspicionButDeathIsStillDetected() {
        // 50 ms each way: a direct round trip fits the 200 ms probe timeout, an indirect one
        // (4 hops) fits the rest of the 300 ms period.
        let sim = Simulation(latencyMillis: 50)
        let names = (1...5).map { "n\($0)" }
        sim.startCluster(names)
        XCTAssertNotNil(sim.run(until: { sim.converged }, within: 2_000))
        sim.cutLink("n1", "n2")
        sim.advance(by: 15_000)
        XCTAssertTrue(sim.converged)
        XCTAssertFalse(sim.events.contains { $0.member.status != .alive }, "latency alone must not raise suspicion")
        sim.stop("n5")
        XCTAssertNotNil(sim.run(until: { names.dropLast().allSatisfy { sim.status(of: "n5", seenBy: $0) == .dead } },
                                within: 20_000))
        XCTAssertFalse(sim.events.contains { $0.member.node != "n5" && $0.member.status != .alive })
    }

    func testIndirectProbesPreventFalseSuspicionOverOneBrokenLink() {
        let sim = Simulation()
        sim.startCluster(["a", "b", "c"])
        XCTAssertNotNil(sim.run(until: { sim.converged }, within: 2_000))
        sim.cutLink("a", "b")
        sim.advance(by: 20_000)
        XCTAssertTrue(sim.converged)
        XCTAssertFalse(sim.events.contains { $0.member.status != .alive }, "no suspicion with a working detour")

        // Control: the same broken link without indirect probes does raise suspicion.
        var noIndirect = SWIMSettings()
        noIndirect.indirectProbeCount = 0
        let control = Simulation(settings: noIndirect)
        control.startCluster(["a", "b", "c"])
        XCTAssertNotNil(control.run(until: { control.converged }, within: 2_000))
        control.cutLink("a", "b")
        control.advance(by: 5_000)
        XCTAssertTrue(control.events.contains { $0.member.status == .suspect })
    }

    func testRestartedNodeReplacesItsDeadPredecessor() {
        let sim = Simulation()
        let names = ["node1", "node2", "node3"]
        sim.startCluster(names)
        XCTAssertNotNil(sim.run(until: { sim.converged }, within: 2_000))
        let oldInstance = sim.nodes["node3"]?.instance ?? 0
        sim.stop("node3")
        XCTAssertNotNil(sim.run(until: { ["node1", "node2"].allSatisfy { sim.status(of: "node3", seenBy: $0) == .dead } },
                                within: 20_000))
        sim.start("node3", seeds: ["node1", "node2"])
        let newInstance = sim.nodes["node3"]?.instance ?? 0
        XCTAssertGreaterThan(newInstance, oldInstance)
        XCTAssertNotNil(sim.run(until: { sim.converged }, within: 1_000), "restarted node not seen alive")
        for observer in ["node1", "node2"] {
            let member = sim.member("node3", seenBy: observer)
            XCTAssertEqual(member?.instance, newInstance)
            XCTAssertEqual(member?.incarnation, 0, "incarnation starts over with the new process")
            XCTAssertTrue(sim.events.contains {
                $0.observer == observer && $0.member.node == "node3" && $0.member.instance == newInstance
                    && $0.member.status == .alive && $0.previous == .dead
            })
        }
        sim.advance(by: 10_000)
        XCTAssertTrue(sim.converged, "stale dead rumours about the old process must not kill the new one")
    }

    func testQuickRestartReplacesAliveProcessWithoutDeath() {
        let sim = Simulation()
        sim.startCluster(["node1", "node2", "node3"])
        XCTAssertNotNil(sim.run(until: { sim.converged }, within: 2_000))
        sim.stop("node2")
        sim.advance(by: 100)
        sim.start("node2", seeds: ["node1", "node3"])
        XCTAssertNotNil(sim.run(until: { sim.converged && sim.member("node2", seenBy: "node1")?.instance == sim.nodes["node2"]?.instance
            && sim.member("node2", seenBy: "node3")?.instance == sim.nodes["node2"]?.instance }, within: 1_000))
        sim.advance(by: 10_000)
        XCTAssertTrue(sim.converged)
        XCTAssertFalse(sim.events.contains { $0.member.status == .dead })
        XCTAssertTrue(sim.events.contains { $0.member.node == "node2" && $0.previous == .alive && $0.member.status == .alive },
                      "a restart is reported even when alive turns into alive")
    }

    func testSeedThatNeverAnswersEndsDeadAndIsNoticedWhenItStarts() {
        let sim = Simulation()
        sim.start("node1", seeds: ["node2", "node3"])
        sim.start("node2", seeds: ["node1", "node3"])
        let deadline = settings.probeIntervalMillis + settings.suspicionTimeoutMillis(memberCount: 3)
        let elapsed = sim.run(until: { ["node1", "node2"].allSatisfy { sim.status(of: "node3", seenBy: $0) == .dead } },
                              within: 10_000)
        XCTAssertNotNil(elapsed)
        XCTAssertGreaterThanOrEqual(elapsed ?? 0, deadline - sim.tickMillis)
        XCTAssertLessThanOrEqual(elapsed ?? .max, deadline + sim.tickMillis)
        let shown = sim.nodes["node1"]?.swim.members.first { $0.node == "node3" }
        XCTAssertEqual(shown?.status, .dead)
        XCTAssertEqual(shown?.instance, 0)
        XCTAssertTrue(sim.events.contains { $0.observer == "node1" && $0.member.node == "node3" && $0.previous == nil })
        XCTAssertEqual(sim.status(of: "node2", seenBy: "node1"), .alive)

        sim.start("node3", seeds: ["node1"])
        XCTAssertNotNil(sim.run(until: { sim.converged }, within: 2_000), "late starter not noticed")
    }

    func testPartitionHealRevivesSameInstances() {
        let sim = Simulation()
        let names = ["a", "b", "c", "d"]
        sim.startCluster(names)
        XCTAssertNotNil(sim.run(until: { sim.converged }, within: 2_000))
        for x in ["a", "b"] { for y in ["c", "d"] { sim.cutLink(x, y) } }
        XCTAssertNotNil(sim.run(until: { sim.status(of: "c", seenBy: "a") == .dead && sim.status(of: "a", seenBy: "c") == .dead },
                                within: 20_000))
        sim.cut = []
        let healed = sim.run(until: { sim.converged }, within: 5_000)
        XCTAssertNotNil(healed, "partition heal not noticed")
        let deathsBefore = sim.events.filter { $0.member.status == .dead }.count
        sim.advance(by: 10_000)
        XCTAssertTrue(sim.converged)
        XCTAssertEqual(sim.events.filter { $0.member.status == .dead }.count, deathsBefore, "no flapping after heal")
        print("partition heal: all alive again after \(healed ?? 0) ms")
    }

    func testGossipDisseminationIsLogarithmic() {
        var report: [String] = []
        for n in [5, 10, 25] {
            let sim = Simulation(seed: UInt64(n))
            let names = (1...n).map { "n\($0)" }
            sim.startCluster(names)
            XCTAssertNotNil(sim.run(until: { sim.converged }, within: 3_000))
            sim.advance(by: 5_000) // let the start-up rumours die out
            sim.start("joiner", seeds: ["n1"])
            let elapsed = sim.run(until: { names.allSatisfy { sim.status(of: "joiner", seenBy: $0) == .alive } },
                                  within: 20_000)
            XCTAssertNotNil(elapsed, "joiner not known everywhere in a cluster of \(n)")
            let rounds = Int(((elapsed ?? 0) + settings.probeIntervalMillis - 1) / settings.probeIntervalMillis)
            let logN = Int.bitWidth - (n + 1 - 1).leadingZeroBitCount // ceil(log2(N))
            XCTAssertLessThanOrEqual(rounds, 2 * logN + 2, "join dissemination for N=\(n + 1) is not O(log N)")

            // A pure rumour: n2 falsely suspects n1; n1's refutation (incarnation 1) must reach all.
            sim.advance(by: 5_000)
            let everyone = names + ["joiner"]
            sim.inject(.ping(sequence: 1, gossip: [GossipUpdate(node: "n1", address: Simulation.address("n1"),
                                                                instance: sim.nodes["n1"]?.instance ?? 0,
                                                                incarnation: 0, status: .suspect)]),
                       to: "n1", from: "n2")
            XCTAssertEqual(sim.nodes["n1"]?.swim.myself.incarnation, 1)
            let spread = sim.run(until: { everyone.allSatisfy { $0 == "n1" || sim.member("n1", seenBy: $0)?.incarnation == 1 } },
                                 within: 20_000)
            XCTAssertNotNil(spread, "refutation did not reach everyone in a cluster of \(n + 1)")
            let rumourRounds = Int(((spread ?? 0) + settings.probeIntervalMillis - 1) / settings.probeIntervalMillis)
            XCTAssertLessThanOrEqual(rumourRounds, 2 * logN + 2, "rumour dissemination for N=\(n + 1) is not O(log N)")
            report.append("N=\(n + 1): join known everywhere in \(rounds) rounds, rumour in \(rumourRounds) rounds (log2 N ≈ \(logN))")
        }
        print("gossip dissemination: " + report.joined(separator: "; "))
    }
}
