import Membership
import Replication
import ReplicatedStore
import XCTest

/// Members added and removed by reload on simulated nodes running both real cores, with the
/// shell's rules (a node talks only to the nodes its config lists). Nodes reload at different
/// times, as a rolling edit of the shared config does, and must not fight meanwhile.
final class MembershipChangeSimulationTests: XCTestCase {
    let token = KeyRef(domain: "first.com", name: "token")
    let founders = ["node1", "node2", "node3"]
    let all = ["node1", "node2", "node3", "node4"]

    /// node1..node3 listing one another only, started one after the other and converged.
    private func founded(seed: UInt64, settings: ReplicationSimulation.Settings = .init(),
                         file: StaticString = #filePath, line: UInt = #line) -> ReplicationSimulation {
        let sim = ReplicationSimulation(nodes: all, seed: seed, settings: settings)
        for node in founders { sim.configure(node, lists: founders) }
        for node in founders {
            sim.start(node)
            sim.advance(by: 200)
        }
        XCTAssertNotNil(sim.run(until: { sim.converged }, within: 20_000), "seed \(seed): never converged", file: file, line: line)
        return sim
    }

    /// Verdicts other than alive that `observers` reached about a running process of one of
    /// `members` since `time` (`deadOnly`: only deaths). A seed never heard of that times out is
    /// no accusation: no process of it is known, and it is not gossiped.
    private func accusations(_ sim: ReplicationSimulation, by observers: [String], about members: [String], since time: UInt64,
                             deadOnly: Bool = false) -> [String] {
        sim.verdicts.filter {
            $0.time >= time && observers.contains($0.observer) && members.contains($0.member) && $0.status != .alive
                && $0.instance != 0 && (!deadOnly || $0.status == .dead)
        }.map { "\($0.observer) says \($0.member) is \($0.status) at \($0.time)" }
    }

    /// Seeds 1–4 run on a clean network: nobody is suspected at all. Seeds 5–6 break a
    /// connection with 0.2% of messages, where a lost ack may raise a suspicion (as often as in
    /// a cluster with no edit under way), refuted in time: nobody is declared dead.
    private func settings(seed: UInt64) -> ReplicationSimulation.Settings {
        var settings = ReplicationSimulation.Settings()
        settings.breakProbability = seed > 4 ? 0.002 : 0
        return settings
    }

    private func status(of member: String, on observer: String, _ sim: ReplicationSimulation) -> MemberStatus? {
        sim.nodes[observer]?.swim.member(member)?.status
    }

    func testWhileOnlyOneNodeListsTheNewNodeItJoinsThroughItAndTheOthersNeverTalkAboutIt() {
        for seed: UInt64 in 1...6 {
            let lossy = seed > 4
            let sim = founded(seed: seed, settings: settings(seed: seed))
            let primary = sim.primary(token, on: "node1")
            let mintedBefore = sim.minted.count
            let editStart = sim.now

            // node1 reloads with node4; node4 starts with the new file (it lists everyone).
            sim.configure("node1", lists: all)
            sim.advance(by: 2_000)
            sim.start("node4")
            XCTAssertNotNil(sim.run(until: { sim.converged && sim.nodes["node4"]?.ready == true }, within: 15_000), "seed \(seed)")
            XCTAssertEqual(sim.nodes["node4"]?.outcome, .adopted(from: "node1"), "seed \(seed)")
            XCTAssertEqual(sim.primary(token, on: "node4"), primary, "seed \(seed)")

            // A long stretch of the mixed state.
            sim.advance(by: 30_000)
            XCTAssertTrue(sim.converged, "seed \(seed): the four hold one state")
            XCTAssertEqual(sim.minted.count, mintedBefore, "seed \(seed): no key was generated")
            XCTAssertEqual(status(of: "node4", on: "node1", sim), .alive, "seed \(seed)")
            for node in ["node2", "node3"] {
                XCTAssertNil(sim.nodes[node]?.swim.member("node4"), "seed \(seed): \(node) has no opinion of a node it does not list")
                XCTAssertEqual(sim.sendAttempts["\(node)→node4"] ?? 0, 0, "seed \(seed): \(node) never tried to reach node4")
                XCTAssertEqual(sim.nodes[node]?.replication.peers, founders.filter { $0 != node })
            }
            XCTAssertGreaterThan(sim.refusedConnections, 0, "seed \(seed): node4's dials to node2 and node3 were refused")
            XCTAssertEqual(accusations(sim, by: all, about: founders, since: editStart, deadOnly: lossy), [],
                           "seed \(seed): no founder was \(lossy ? "declared dead" : "suspected")")
            XCTAssertNotNil(sim.run(until: {
                self.founders.allSatisfy { observer in self.founders.allSatisfy { $0 == observer || self.status(of: $0, on: observer, sim) == .alive } }
            }, within: 5_000), "seed \(seed): the founders see one another alive")
            XCTAssertEqual(status(of: "node1", on: "node4", sim), .alive, "seed \(seed)")
            for refuser in ["node2", "node3"] {
                // node4 hears of no process of the nodes that refuse it (node1, for which it is a
                // configured seed, sends it no full membership): a seed that never answered.
                XCTAssertNotEqual(status(of: refuser, on: "node4", sim), .alive, "seed \(seed)")
                XCTAssertEqual(sim.nodes["node4"]?.swim.member(refuser)?.instance ?? 0, 0, "seed \(seed)")
            }

            // The edit completes.
            sim.configure("node2", lists: all)
            sim.advance(by: 1_500)
            sim.configure("node3", lists: all)
            XCTAssertNotNil(sim.run(until: {
                self.all.allSatisfy { observer in self.all.allSatisfy { $0 == observer || self.status(of: $0, on: observer, sim) == .alive } }
            }, within: 10_000), "seed \(seed): every node sees every other alive")
            XCTAssertNotNil(sim.run(until: { sim.converged }, within: 10_000), "seed \(seed)")
            XCTAssertEqual(accusations(sim, by: all, about: all, since: editStart, deadOnly: lossy), [], "seed \(seed)")
            XCTAssertEqual(sim.primary(token, on: "node3"), primary, "seed \(seed)")
        }
    }

    func testARemovedNodeIsNeverContactedAgainEvenWhileItStillRuns() {
        for seed: UInt64 in 1...6 {
            let lossy = seed > 4
            let sim = founded(seed: seed, settings: settings(seed: seed))
            for node in founders { sim.configure(node, lists: all) }
            sim.configure("node4", lists: all)
            sim.start("node4")
            XCTAssertNotNil(sim.run(until: { sim.converged && sim.nodes["node4"]?.ready == true }, within: 15_000), "seed \(seed)")
            XCTAssertNotNil(sim.run(until: { self.founders.allSatisfy { self.status(of: "node4", on: $0, sim) == .alive } }, within: 5_000))
            let primary = sim.primary(token, on: "node1")
            let mintedBefore = sim.minted.count
            let editStart = sim.now

            // The operator forgets to stop node4 (odd seeds) or stops it, then removes it from
            // the file and reloads the three, seconds apart.
            let stillRunning = seed % 2 == 1
            if !stillRunning { sim.crash("node4") }
            var attemptsAtRemoval: [String: Int] = [:]
            for node in founders {
                sim.configure(node, lists: founders)
                attemptsAtRemoval[node] = sim.sendAttempts["\(node)→node4"] ?? 0
                XCTAssertNil(sim.nodes[node]?.swim.member("node4"), "seed \(seed)")
                XCTAssertFalse(sim.nodes[node]?.replication.peers.contains("node4") ?? true, "seed \(seed)")
                sim.advance(by: 2_000)
            }
            sim.advance(by: 30_000)
            for node in founders {
                XCTAssertEqual(sim.sendAttempts["\(node)→node4"] ?? 0, attemptsAtRemoval[node], "seed \(seed): \(node) contacted node4 after removing it")
                XCTAssertNil(sim.nodes[node]?.swim.member("node4"), "seed \(seed): \(node) took a rumour about node4")
            }
            XCTAssertEqual(accusations(sim, by: founders, about: founders, since: editStart, deadOnly: lossy), [],
                           "seed \(seed): no founder was \(lossy ? "declared dead" : "suspected") by another")
            let founderStores = founders.compactMap { sim.nodes[$0]?.store }
            XCTAssertEqual(Set(founderStores.map { $0.rootDigest() }).count, 1, "seed \(seed): the three agree")
            for node in founders { XCTAssertEqual(sim.primary(token, on: node), primary, "seed \(seed)") }
            XCTAssertEqual(sim.minted.count, mintedBefore, "seed \(seed)")
            if stillRunning {
                XCTAssertGreaterThan(sim.refusedConnections, 0, "seed \(seed): the still-running node4 was refused")
            }
        }
    }
}
