import Foundation
import KeystoreAPI
import KeystoreClient
import TestSupport
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// Cluster members added and removed by reload (docs/config.md, "Membership is configured, not
/// discovered"), on a running 3-node cluster with real processes: no restart, the RAM keys stay.
final class MembershipReloadTests: ClusterTestCase {
    private let founders = ["node1", "node2", "node3"]

    /// A cluster whose config lists node1..node3; node4's entry (its own port, certificate and
    /// directories) is returned for the test to add.
    private func startFounders() throws -> (ClusterHarness, node4: [String: Any]) {
        let cluster = try makeCluster(nodes: founders + ["node4"])
        let node4 = try XCTUnwrap((cluster.config["nodes"] as? [String: Any])?["node4"] as? [String: Any])
        try setNode4(cluster, nil)
        // One after the other, so node1 alone generates the keys.
        for node in founders {
            try cluster.start(node)
            cluster.waitReady(node)
        }
        return (cluster, node4)
    }

    private func setNode4(_ cluster: ClusterHarness, _ entry: [String: Any]?) throws {
        var config = cluster.config
        var nodes = config["nodes"] as! [String: Any]
        nodes["node4"] = entry
        config["nodes"] = nodes
        _ = try cluster.writeConfig("cluster.json", config)
    }

    private func keys(_ cluster: ClusterHarness) -> [String?] {
        [cluster.waitForAgreement("first.com", "token_secret"), cluster.waitForAgreement("second.com", "token_secret")]
    }

    /// How `observer` sees `node` (nil: not listed).
    private func state(of node: String, on observer: String, in cluster: ClusterHarness) -> MemberState? {
        (try? cluster.client(observer).clusterStatus())?.members.first { $0.node == node }?.state
    }

    /// Members `observer` shows in a state other than alive.
    private func unwell(on observer: String, in cluster: ClusterHarness) -> [String] {
        ((try? cluster.client(observer).clusterStatus())?.members ?? []).filter { $0.state != .alive }.map { "\($0.node) \($0.state.rawValue)" }
    }

    /// Waits until each of `nodes` has received `rounds` more anti-entropy digests: that many
    /// comparisons with its peers, and many more membership probe rounds (one per 300 ms).
    private func waitForAntiEntropy(_ cluster: ClusterHarness, _ nodes: [String], rounds: Int) {
        let start = Dictionary(uniqueKeysWithValues: nodes.map { ($0, cluster.gossipMessages($0, direction: "in", type: "digest")) })
        for node in nodes {
            waitUntil("\(node) received \(rounds) more anti-entropy digests", timeout: 30) {
                cluster.gossipMessages(node, direction: "in", type: "digest") >= start[node]! + rounds
            }
        }
    }

    private func pids(_ cluster: ClusterHarness) -> [Int32] { founders.map { cluster.processes[$0]!.pid } }

    func testANodeAddedByReloadJoinsAndARemovedOneIsLeftAndNeverDialledAgain() throws {
        let (cluster, node4) = try startFounders()
        let original = keys(cluster)
        XCTAssertFalse(original.contains(nil))
        let pids = pids(cluster)
        XCTAssertNil(state(of: "node4", on: "node1", in: cluster))

        // Add node4 to the shared file and reload the running nodes, seconds apart.
        try setNode4(cluster, node4)
        XCTAssertEqual(try cluster.client("node1").reload().config, ["node node4 added"])
        // node1 probes it at once; nothing listens yet, so it ends `dead` like a seed that was
        // never started, and comes alive when it starts.
        waitUntil("node1 gave up on the not yet started node4") { self.state(of: "node4", on: "node1", in: cluster) == .dead }
        for node in ["node2", "node3"] { XCTAssertEqual(try cluster.client(node).reload().config, ["node node4 added"]) }

        try cluster.start("node4")
        cluster.waitReady("node4")
        // The line follows `ready` (the daemon logs it after becoming ready): wait for it.
        waitUntil("node4 logs that it adopted the cluster's keys") { cluster.processes["node4"]!.log.contains("adopted the cluster's keys from") }
        XCTAssertEqual(keys(cluster), original, "node4 serves the cluster's RAM keys")
        for observer in founders + ["node4"] {
            waitUntil("\(observer) sees every member alive") {
                let status = try? cluster.client(observer).clusterStatus()
                return status?.members.count == 4 && status?.members.allSatisfy { $0.state == .alive } == true
            }
        }
        waitUntil("node1 compared its state with node4") {
            (try? cluster.client("node1").clusterStatus())?.members.first { $0.node == "node4" }?.sync == .inSync
        }

        // Remove it again: stop it, take it out of the file, reload.
        cluster.processes["node4"]!.stop()
        let port = cluster.ports["node4"]!
        // Until the reload the others keep pinging the stopped node: a listener on its port
        // sees their dials (and shows this check can see one).
        let watcher = try LoopbackListener(port: port)
        waitUntil("a node dials the stopped, still configured node4") { watcher.drain() > 0 }
        let events = EventCollector(socketPath: cluster.socketPath("node2"))
        defer { events.close() }
        waitUntil("node2's event stream says hello") { !events.events(ofType: "hello").isEmpty }
        try setNode4(cluster, nil)
        for node in founders { XCTAssertEqual(try cluster.client(node).reload().config, ["node node4 removed"]) }
        waitUntil("node2 streams node4's departure") {
            events.events(ofType: "member").contains { $0["member"] as? String == "node4" && $0["state"] as? String == "left" }
        }
        for observer in founders {
            waitUntil("\(observer) shows node4 left") { self.state(of: "node4", on: observer, in: cluster) == .left }
        }
        let raced = watcher.drain() // dials made before the last reload took effect
        waitForAntiEntropy(cluster, founders, rounds: 5)
        XCTAssertEqual(watcher.drain(), 0, "no node dialled node4 after the reload (\(raced) before it)")
        for observer in founders {
            XCTAssertEqual(state(of: "node4", on: observer, in: cluster), .left, "not dead: it left")
            XCTAssertEqual(unwell(on: observer, in: cluster), ["node4 left"])
            XCTAssertTrue(cluster.processes[observer]!.log.contains("node node4 was removed from \(cluster.configPath)"))
        }
        XCTAssertEqual(keys(cluster), original, "the RAM keys never changed")
        XCTAssertEqual(self.pids(cluster), pids, "no node restarted")
        XCTAssertTrue(founders.allSatisfy { cluster.processes[$0]!.isRunning })

        // A restart forgets it: a node lists only what its config lists.
        cluster.processes["node3"]!.stop()
        try cluster.start("node3")
        cluster.waitReady("node3")
        waitUntil("the restarted node3 sees node1 and node2 alive") {
            (try? cluster.client("node3").clusterStatus())?.members.map { "\($0.node) \($0.state.rawValue)" }
                == ["node1 alive", "node2 alive", "node3 alive"]
        }
        XCTAssertEqual(keys(cluster), original)
    }

    func testDuringARollingEditOnlyTheNodesListingANewNodeTalkToItAndNothingElseMoves() throws {
        let (cluster, node4) = try startFounders()
        let original = keys(cluster)
        XCTAssertFalse(original.contains(nil))
        let pids = pids(cluster)

        // The operator adds node4 to the file and starts it before reloading anyone: every
        // node refuses it, so it waits in its join and generates no key.
        try setNode4(cluster, node4)
        try cluster.start("node4")
        waitUntil("node4 reports its join waiting past join_timeout_ms") {
            (try? cluster.client("node4").health())?.problems.contains { $0.hasPrefix("still joining") } == true
        }
        XCTAssertEqual(try cluster.client("node4").health().ready, false)
        XCTAssertFalse(cluster.processes["node4"]!.log.contains("generated"), "no key generated while refused")
        // node1 reloads: node4 joins through it.
        XCTAssertEqual(try cluster.client("node1").reload().config, ["node node4 added"])
        cluster.waitReady("node4")
        waitUntil("node4 logs that it adopted the cluster's keys from node1") {
            cluster.processes["node4"]!.log.contains("adopted the cluster's keys from node1")
        }
        XCTAssertEqual(keys(cluster), original, "node4 serves the cluster's RAM keys")
        waitUntil("node1 and node4 see each other alive") {
            self.state(of: "node4", on: "node1", in: cluster) == .alive && self.state(of: "node1", on: "node4", in: cluster) == .alive
        }
        for node in ["node2", "node3"] {
            waitUntil("\(node) refused node4, naming its config") {
                cluster.processes[node]!.log.contains("peer node4 is not listed in this node's config (\(cluster.configPath)); refusing its connection")
            }
        }
        // Every pair of the three compared equal states; node4's own records (its key
        // declarations) reached node2 and node3 through node1.
        for observer in founders {
            waitUntil("\(observer) is in sync with the other two") {
                let members = (try? cluster.client(observer).clusterStatus())?.members ?? []
                return members.filter { $0.node != observer && self.founders.contains($0.node) }.allSatisfy { $0.sync == .inSync }
                    && members.count >= 3
            }
        }
        // node4's own records (its key declarations) reach node1 by anti-entropy and the other
        // two from node1: a few repairs, then quiet. A repair loop would never be quiet.
        let deadline = Date().addingTimeInterval(60)
        var quiet = false
        while !quiet && Date() < deadline {
            let repairs = founders.map { cluster.gossipMessages($0, direction: "out", type: "bucket_digests") }
            waitForAntiEntropy(cluster, founders, rounds: 4)
            quiet = founders.map { cluster.gossipMessages($0, direction: "out", type: "bucket_digests") } == repairs
        }
        XCTAssertTrue(quiet, "no repair loop between nodes whose configs differ: 4 anti-entropy rounds without a repair")
        for node in ["node2", "node3"] {
            XCTAssertNil(state(of: "node4", on: node, in: cluster), "\(node) neither lists nor probes a node it does not admit")
            XCTAssertEqual(unwell(on: node, in: cluster), [])
        }
        XCTAssertEqual(unwell(on: "node1", in: cluster), [])
        // (node4 itself showed its seeds dead while all of them refused it: a seed never heard
        // of, which is not gossiped; had it spread, these logs would say so.)
        for node in founders {
            XCTAssertFalse(cluster.processes[node]!.log.contains(" is dead"), "\(node) declared someone dead:\n\(cluster.processes[node]!.log)")
            XCTAssertFalse(cluster.processes[node]!.log.contains(" is suspect"), "\(node) suspected someone:\n\(cluster.processes[node]!.log)")
        }

        // The edit completes: node2 and node3 reload and admit node4.
        for node in ["node2", "node3"] { XCTAssertEqual(try cluster.client(node).reload().config, ["node node4 added"]) }
        for observer in founders + ["node4"] {
            waitUntil("\(observer) sees every member alive") {
                let status = try? cluster.client(observer).clusterStatus()
                return status?.members.count == 4 && status?.members.allSatisfy { $0.state == .alive } == true
            }
        }
        XCTAssertEqual(keys(cluster), original)
        XCTAssertEqual(self.pids(cluster), pids, "no node restarted")
    }

    func testANodeMovedToAnotherAddressIsDialledThereAfterTheReload() throws {
        let (cluster, _) = try startFounders()
        let original = keys(cluster)
        XCTAssertFalse(original.contains(nil))
        let pids = ["node1", "node2"].map { cluster.processes[$0]!.pid }

        // node3 moves: stopped, its entry gets a new port, the others reload, then it starts there.
        cluster.processes["node3"]!.stop()
        let oldPort = cluster.ports["node3"]!
        var newPort = try freeTCPPort()
        while cluster.ports.values.contains(newPort) { newPort = try freeTCPPort() }
        var config = cluster.config
        var nodes = config["nodes"] as! [String: Any]
        var entry = nodes["node3"] as! [String: Any]
        entry["peer"] = "127.0.0.1:\(newPort)"
        nodes["node3"] = entry
        config["nodes"] = nodes
        _ = try cluster.writeConfig("cluster.json", config)
        for node in ["node1", "node2"] {
            XCTAssertEqual(try cluster.client(node).reload().config, ["node node3 changed"])
            waitUntil("\(node) dials node3's new address") {
                cluster.processes[node]!.log.contains("peer node3 moved from 127.0.0.1:\(oldPort) to 127.0.0.1:\(newPort)")
            }
        }
        // The others keep pinging the stopped node3, at its new address only.
        let watcher = try LoopbackListener(port: oldPort)
        waitForAntiEntropy(cluster, ["node1", "node2"], rounds: 4)
        XCTAssertEqual(watcher.drain(), 0, "no dial to the old address after the reload")
        waitUntil("node1 and node2 dialled the new address in vain") {
            ["node1", "node2"].allSatisfy { cluster.processes[$0]!.log.contains("cannot reach peer node3 at 127.0.0.1:\(newPort)") }
        }

        try cluster.start("node3")
        cluster.waitReady("node3")
        for observer in founders {
            waitUntil("\(observer) sees every member alive") {
                let status = try? cluster.client(observer).clusterStatus()
                return status?.members.count == 3 && status?.members.allSatisfy { $0.state == .alive } == true
            }
        }
        for observer in ["node1", "node2"] {
            XCTAssertEqual((try cluster.client(observer).clusterStatus()).members.first { $0.node == "node3" }?.address, "127.0.0.1:\(newPort)")
        }
        XCTAssertEqual(keys(cluster), original)
        XCTAssertEqual(["node1", "node2"].map { cluster.processes[$0]!.pid }, pids, "no node restarted")
    }
}
