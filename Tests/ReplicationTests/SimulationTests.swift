import Membership
import Replication
import ReplicatedStore
import TestSupport
import XCTest

/// The replication core on many simulated nodes with the real store and real SWIM: the join
/// rules and convergence under partitions, broken connections and restarts.
final class SimulationTests: XCTestCase {
    let token = KeyRef(domain: "first.com", name: "token")
    let five = (1...5).map { "node\($0)" }
    let three = (1...3).map { "node\($0)" }

    private func startConverged(_ names: [String], seed: UInt64 = 1, settings: ReplicationSimulation.Settings = .init(),
                                file: StaticString = #filePath, line: UInt = #line) -> ReplicationSimulation {
        let sim = ReplicationSimulation(nodes: names, seed: seed, settings: settings)
        sim.startAll()
        XCTAssertNotNil(sim.run(until: { sim.converged }, within: 20_000), "the cluster never converged", file: file, line: line)
        return sim
    }

    func testNodesStartedAtOnceGetOneVersionOfEachKeyFromOneStarter() {
        for seed: UInt64 in 1...5 {
            let sim = startConverged(five, seed: seed)
            for key in sim.settings.keys {
                let lists = five.map { sim.versions(key, on: $0) }
                XCTAssertEqual(lists.first?.count, 1, "seed \(seed): one version of \(key), not one per node: \(lists)")
                XCTAssertEqual(Set(lists).count, 1, "seed \(seed): every node holds the same version")
            }
            XCTAssertEqual(Set(sim.minted.map(\.node)), ["node1"], "seed \(seed): only the starter generates keys")
            let outcomes = Dictionary(uniqueKeysWithValues: sim.joins.map { ($0.node, $0.outcome) })
            XCTAssertEqual(outcomes["node1"], .clusterStarting, "seed \(seed)")
            for name in five.dropFirst() { XCTAssertEqual(outcomes[name], .adopted(from: "node1"), "seed \(seed): \(name)") }
        }
    }

    func testNodesStartedApartAdoptTheFirstNodesKeys() {
        let sim = ReplicationSimulation(nodes: three)
        sim.start("node3")
        // Alone in a three-node config: node3 bootstraps only after the join timeout.
        XCTAssertNil(sim.run(until: { sim.nodes["node3"]?.ready == true }, within: sim.settings.joinTimeoutMillis - 100))
        XCTAssertNotNil(sim.run(until: { sim.nodes["node3"]?.ready == true }, within: 1_000))
        XCTAssertEqual(sim.nodes["node3"]?.outcome, .timedOut)
        let primary = sim.primary(token, on: "node3")
        sim.start("node1")
        sim.advance(by: 300)
        sim.start("node2")
        XCTAssertNotNil(sim.run(until: { sim.converged }, within: 10_000))
        XCTAssertEqual(sim.nodes["node1"]?.outcome, .adopted(from: "node3"))
        XCTAssertEqual(sim.primary(token, on: "node2"), primary)
        XCTAssertEqual(sim.minted.map(\.node), ["node3", "node3"], "only the first node generated keys")
    }

    func testARestartedNodeAdoptsTheClusterKeyInsteadOfMintingOne() {
        let sim = startConverged(three)
        let primary = sim.primary(token, on: "node2")
        for round in 0..<3 {
            // The starter (which generated the key) and then the others, each killed and restarted.
            let victim = three[round]
            sim.crash(victim)
            sim.advance(by: 500)
            let before = sim.minted.count
            sim.start(victim)
            XCTAssertNotNil(sim.run(until: { sim.converged }, within: 10_000), "round \(round)")
            guard case .adopted? = sim.nodes[victim]?.outcome else { return XCTFail("round \(round): \(String(describing: sim.nodes[victim]?.outcome))") }
            XCTAssertEqual(sim.minted.count, before, "round \(round): the restarted node generated a key")
            XCTAssertEqual(sim.primary(token, on: victim), primary, "round \(round)")
        }
    }

    func testARestartWhilePeersAreFloodedWaitsWithoutMintingThenAdopts() {
        let sim = startConverged(three)
        let primary = sim.primary(token, on: "node2")
        sim.crash("node1")
        // Every peer port is flooded, the restarting node's own too (so no peer's dial gets in).
        for name in three { sim.setUnresponsive(name, true) }
        sim.start("node1")
        sim.advance(by: 15_000)
        XCTAssertEqual(sim.nodes["node1"]?.ready, false, "a node must not bootstrap while reachable peers may hold the keys")
        XCTAssertEqual(sim.minted.filter { $0.node == "node1" && $0.instance == sim.nodes["node1"]?.instance }, [])
        let problem = sim.nodes["node1"]?.replication.joinProblem
        XCTAssertEqual(problem?.notAnswering, ["node2", "node3"])
        XCTAssertTrue(problem?.description.contains("waiting for peers node2, node3: reachable but not answering") == true,
                      problem?.description ?? "no problem reported")
        // The flood stops: the next attempt gets through and the node adopts.
        for name in three { sim.setUnresponsive(name, false) }
        XCTAssertNotNil(sim.run(until: { sim.converged }, within: 10_000))
        XCTAssertEqual(sim.primary(token, on: "node1"), primary)
        XCTAssertNil(sim.nodes["node1"]?.replication.joinProblem)
    }

    func testAllPeersDownBootstrapsAfterTheTimeoutButOneUnreachableAndOneFloodedWaits() {
        let sim = ReplicationSimulation(nodes: three)
        // node2 was up before the flood began on both ports; node3 is down.
        sim.start("node2")
        sim.setUnresponsive("node2", true)
        sim.start("node1")
        sim.setUnresponsive("node1", true)
        sim.advance(by: 10_000)
        XCTAssertEqual(sim.nodes["node1"]?.ready, false, "node2 answers TCP: it may hold the keys")
        XCTAssertEqual(sim.nodes["node1"]?.replication.joinProblem?.unreachable, ["node3"])
        // node2 goes away for good: now nobody can be reached, node1 bootstraps.
        sim.crash("node2")
        XCTAssertNotNil(sim.run(until: { sim.nodes["node1"]?.ready == true }, within: 3_000))
        XCTAssertEqual(sim.nodes["node1"]?.outcome, .timedOut)
    }

    func testTombstonesAreNeverUndoneByAStaleReplica() {
        let sim = startConverged(three)
        let phone = sim.register(user: "alice", name: "phone", fingerprint: 1, on: "node1")!
        let laptop = sim.register(user: "alice", name: "laptop", fingerprint: 2, on: "node2")!
        XCTAssertNotNil(sim.run(until: { sim.converged }, within: 5_000))
        // node3 is cut off, and later also killed, holding both as live records on its disk.
        sim.partition([["node1", "node2"], ["node3"]])
        XCTAssertNotNil(sim.revoke(user: "alice", name: "phone", on: "node1"))
        sim.advance(by: 2_000)
        sim.crash("node3")
        XCTAssertNotNil(sim.revoke(user: "alice", name: "laptop", on: "node2"))
        sim.heal()
        sim.start("node3")
        XCTAssertNotNil(sim.run(until: { sim.converged }, within: 15_000))
        for name in three {
            XCTAssertFalse(sim.isLive(phone, on: name), "\(name) resurrected a revoked certificate")
            XCTAssertFalse(sim.isLive(laptop, on: name), "\(name) resurrected a revoked certificate")
            XCTAssertTrue(sim.holds(phone, on: name), "\(name) lost the tombstone")
        }
        // And the stale disk was corrected too: a further restart does not bring them back.
        sim.crash("node3")
        sim.start("node3")
        XCTAssertNotNil(sim.run(until: { sim.converged }, within: 10_000))
        XCTAssertFalse(sim.isLive(phone, on: "node3"))
    }

    func testALargeStateStreamsOneChunkPerTurnAndTheJoinWaitsForEveryMerge() {
        var settings = ReplicationSimulation.Settings()
        settings.maxEntriesPerChunk = 2
        settings.applyMillis = 40
        let sim = startConverged(three, settings: settings)
        for i in 0..<60 { sim.register(user: "user\(i)", name: "device", fingerprint: UInt8(i), on: "node\(i % 3 + 1)") }
        XCTAssertNotNil(sim.run(until: { sim.converged }, within: 10_000))
        // Restarted with its database: it says what it holds and is sent no record again.
        sim.crash("node3")
        sim.advance(by: 100)
        var streamedBefore = sim.certificatesStreamed
        sim.start("node3")
        XCTAssertNotNil(sim.run(until: { sim.nodes["node3"]?.ready == true }, within: 10_000))
        let expected = sim.nodes["node1"]!.store.certificateCounts()
        XCTAssertEqual(sim.nodes["node3"]!.store.certificateCounts().registered, expected.registered)
        XCTAssertEqual(sim.certificatesStreamed - streamedBefore, 0, "records it loaded from its database")
        // Restarted without it (a replaced disk): the whole registry, many chunks.
        sim.crash("node3")
        sim.loseDisk("node3")
        sim.advance(by: 100)
        streamedBefore = sim.certificatesStreamed
        let sentBefore = sim.messages
        sim.start("node3")
        XCTAssertNotNil(sim.run(until: { sim.nodes["node3"]?.ready == true }, within: 10_000))
        // Ready means complete: every record was merged before the join finished.
        XCTAssertEqual(sim.nodes["node3"]!.store.certificateCounts().registered, expected.registered)
        XCTAssertGreaterThanOrEqual(sim.certificatesStreamed - streamedBefore, 60)
        XCTAssertGreaterThan(sim.messages - sentBefore, 30, "the state went out in many chunks")
        XCTAssertEqual(sim.minted.filter { $0.node == "node3" }, [], "the restarted node generated nothing")
        XCTAssertNotNil(sim.run(until: { sim.converged }, within: 5_000))
    }

    func testARotationReachesEveryNodeByPushWithinAFewHops() {
        let nine = (1...9).map { "node\($0)" }
        var settings = ReplicationSimulation.Settings()
        // Anti-entropy off for the measurement: the push alone must reach everyone.
        settings.replication.antiEntropyIntervalMillis = 3_600_000
        let sim = startConverged(nine, settings: settings)
        let id = sim.rotate(token, on: "node5")
        let elapsed = sim.run(until: { nine.allSatisfy { sim.primary(token, on: $0) == id } }, within: 2_000)
        XCTAssertNotNil(elapsed, "a rotation did not reach every node by push")
        XCTAssertLessThanOrEqual(elapsed ?? .max, 200)
    }

    /// Random operations, partitions, broken connections and crashes; after healing everything,
    /// every node converges, no acknowledged registration is lost, no revoked one comes back,
    /// and every node serves the same primary for every key.
    func testRandomFaultsConvergeWithoutLossOrResurrection() {
        for seed: UInt64 in 1...6 {
            chaos(seed: seed)
        }
    }

    private func chaos(seed: UInt64) {
        var settings = ReplicationSimulation.Settings()
        settings.breakProbability = 0.002
        let sim = startConverged(five, seed: seed, settings: settings)
        var random = SplitMix64(seed: seed)
        var acknowledged: [CertificateID: (user: String, name: String)] = [:]
        var revoked: Set<CertificateID> = []
        var fingerprint: UInt8 = 0
        for round in 0..<40 {
            let node = five.randomElement(using: &random)!
            switch Int.random(in: 0..<10, using: &random) {
            case 0..<3:
                fingerprint &+= 1
                let user = "u\(round)"
                if let id = sim.register(user: user, name: "d", fingerprint: fingerprint, on: node) { acknowledged[id] = (user, "d") }
            case 3:
                if let (id, owner) = acknowledged.filter({ !revoked.contains($0.key) }).sorted(by: { $0.key < $1.key }).first,
                   sim.revoke(user: owner.user, name: owner.name, on: node) == id {
                    revoked.insert(id)
                }
            case 4..<6:
                sim.rotate(token, on: node)
            case 6:
                let side = five.shuffled(using: &random).prefix(2)
                sim.partition([Array(side), five.filter { !side.contains($0) }])
            case 7:
                sim.heal()
            case 8:
                if sim.running.count > 3 { sim.crash(node) }
            default:
                if sim.nodes[node]?.up == false { sim.start(node) }
            }
            sim.advance(by: UInt64.random(in: 50...800, using: &random))
        }
        sim.heal()
        for name in five where sim.nodes[name]?.up == false { sim.start(name) }
        XCTAssertNotNil(sim.run(until: { sim.converged }, within: 30_000), "seed \(seed): no convergence")
        for (id, _) in acknowledged {
            for name in five {
                XCTAssertTrue(sim.holds(id, on: name), "seed \(seed): \(name) lost acknowledged \(id)")
                if revoked.contains(id) { XCTAssertFalse(sim.isLive(id, on: name), "seed \(seed): \(name) resurrected \(id)") }
            }
        }
        for key in settings.keys {
            XCTAssertEqual(Set(five.map { sim.primary(key, on: $0) }).count, 1, "seed \(seed): split primaries for \(key)")
        }
        print("simulation seed \(seed): \(sim.messages) messages, \(sim.brokenConnections) broken connections, \(sim.joins.count) joins, t=\(sim.now - 1_000_000) ms")
    }
}
