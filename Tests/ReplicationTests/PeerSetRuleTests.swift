import Membership
import Replication
import ReplicatedStore
import XCTest

/// `addPeer` / `removePeer`: the peer set following a reload, on one instance (helpers in
/// `RuleTests`).
extension RuleTests {
    func testAPeerAddedDuringTheJoinIsDialledAndCanBeTheOneWhoseStateIsAdopted() {
        var instance = Instance(myself: "node1", peers: ["node2"], nowMillis: 0)
        XCTAssertEqual(summary(instance.addPeer("node5", nowMillis: 0)), [], "before the join starts: dialled by startJoin")
        XCTAssertEqual(summary(instance.startJoin(timeoutMillis: 1000, nowMillis: 0, replica: empty)), ["connect→node2", "connect→node5"])
        XCTAssertEqual(summary(instance.addPeer("node3", nowMillis: 10)), ["connect→node3"])
        XCTAssertEqual(instance.peers, ["node2", "node3", "node5"])
        XCTAssertEqual(summary(instance.addPeer("node3", nowMillis: 11)), [], "already a peer")
        XCTAssertEqual(summary(instance.addPeer("node1", nowMillis: 11)), [], "not itself")
        XCTAssertEqual(instance.peers, ["node2", "node3", "node5"])

        _ = instance.linkChanged("node2", .up, nowMillis: 20)
        _ = instance.linkChanged("node5", .up, nowMillis: 20)
        _ = instance.receive(.syncDone(ready: false), from: "node2", nowMillis: 30, replica: empty)
        _ = instance.receive(.syncDone(ready: false), from: "node5", nowMillis: 30, replica: empty)
        XCTAssertNil(instance.joinOutcome, "node3 has not answered: the cluster is not known to be starting")
        XCTAssertEqual(summary(instance.tick(nowMillis: 510, random: &random, replica: empty)), ["connect→node3"], "redialled like any peer")
        XCTAssertEqual(summary(instance.linkChanged("node3", .up, nowMillis: 520)), ["syncRequest→node3"])
        let merge = applyIDs(instance.receive(syncChunk(), from: "node3", nowMillis: 530, replica: empty))
        _ = instance.receive(.syncDone(ready: true), from: "node3", nowMillis: 540, replica: empty)
        XCTAssertEqual(summary(instance.applied(merge[0], new: StoreDelta(), nowMillis: 550, random: &random, replica: empty)),
                       ["finished:adopted(from: \"node3\")"])
    }

    func testAPeerAddedAfterTheJoinIsComparedWithOnceAlive() {
        var instance = readyInstance()
        XCTAssertEqual(summary(instance.addPeer("node5", nowMillis: 100)), [], "no dial of its own: membership probes it")
        XCTAssertEqual(summary(instance.memberChanged(member("node5", .alive), previous: nil, replica: replica())), ["digest→node5"])
        // It is one of the members anti-entropy and pushes reach.
        var digests: Set<String> = []
        for round in 1...60 {
            for case .send(.digest, let to) in instance.tick(nowMillis: 100 + UInt64(round) * 1000, random: &random, replica: replica()) {
                digests.insert(to)
            }
        }
        XCTAssertEqual(digests, ["node2", "node3", "node4", "node5"])
        XCTAssertEqual(Set(summary(instance.localChange(replica().fullStateChunks()[0], replica: replica()))),
                       ["push→node2", "push→node3", "push→node4", "push→node5"])
    }

    func testARemovedPeerCanNeverKeepTheJoinWaiting() {
        var instance = Instance(myself: "node1", peers: ["node2", "node3"], nowMillis: 0)
        _ = instance.startJoin(timeoutMillis: 1000, nowMillis: 0, replica: empty)
        _ = instance.linkChanged("node2", .up, nowMillis: 10)
        _ = instance.linkChanged("node3", .up, nowMillis: 10)
        _ = instance.receive(.syncDone(ready: false), from: "node2", nowMillis: 20, replica: empty)
        // node3 is reachable and silent: the join waits for it, past the timeout too.
        XCTAssertEqual(summary(instance.tick(nowMillis: 2000, random: &random, replica: empty)).filter { $0.hasPrefix("finished") }, [])
        XCTAssertEqual(instance.joinProblem?.notAnswering, ["node3"])
        // The operator removes it: node1 and node2 are a cluster starting together.
        XCTAssertEqual(summary(instance.removePeer("node3", nowMillis: 2010)), ["finished:clusterStarting"])
        XCTAssertEqual(instance.peers, ["node2"])
        XCTAssertEqual(summary(instance.removePeer("node3", nowMillis: 2020)), [], "removing it twice changes nothing")
    }

    func testRemovingTheLastPeerDuringTheJoinLeavesTheNodeAloneOnceItsMergesAreDone() {
        var instance = Instance(myself: "node1", peers: ["node2"], nowMillis: 0)
        _ = instance.startJoin(timeoutMillis: 1000, nowMillis: 0, replica: empty)
        _ = instance.linkChanged("node2", .up, nowMillis: 10)
        let merge = applyIDs(instance.receive(syncChunk(), from: "node2", nowMillis: 20, replica: empty))
        XCTAssertEqual(summary(instance.removePeer("node2", nowMillis: 30)), [], "a merge of what it sent is still running")
        XCTAssertEqual(summary(instance.applied(merge[0], new: StoreDelta(), nowMillis: 40, random: &random, replica: empty)),
                       ["finished:alone"], "what it sent was merged, and no one was asked to forward it")
    }

    func testARemovedPeerGetsNoStateAnswerNoDigestAndNoPush() {
        let big = replica(certificates: 20, chunk: 2)
        var instance = readyInstance()
        let started = summary(instance.receive(.syncRequest(durableDigests: nil), from: "node2", nowMillis: 10, replica: big))
        XCTAssertEqual(started, ["sync→node2"])
        XCTAssertEqual(instance.streamingTo, ["node2"])
        XCTAssertEqual(summary(instance.removePeer("node2", nowMillis: 20)), [])
        XCTAssertEqual(instance.streamingTo, [], "the answer under way is dropped")
        XCTAssertEqual(summary(instance.pump()), [])
        XCTAssertNil(instance.repairState(with: "node2"))
        // Anything it still sends is ignored; nothing is addressed to it any more.
        XCTAssertEqual(summary(instance.receive(.syncRequest(durableDigests: nil), from: "node2", nowMillis: 30, replica: big)), [])
        XCTAssertEqual(summary(instance.receive(.digest(root: 1), from: "node2", nowMillis: 30, replica: big)), [])
        XCTAssertEqual(summary(instance.receive(.delta(big.fullStateChunks()[0], purpose: .push), from: "node2", nowMillis: 30, replica: big)), [])
        XCTAssertEqual(summary(instance.memberChanged(member("node2", .alive), previous: nil, replica: big)), [])
        XCTAssertEqual(summary(instance.linkChanged("node2", .up, nowMillis: 40)), [])
        var recipients: Set<String> = []
        for round in 1...60 {
            for directive in instance.tick(nowMillis: UInt64(round) * 1000, random: &random, replica: big) {
                if case .send(_, let to) = directive { recipients.insert(to) }
            }
        }
        for directive in instance.localChange(big.fullStateChunks()[0], replica: big) {
            if case .send(_, let to) = directive { recipients.insert(to) }
        }
        XCTAssertFalse(recipients.contains("node2"), "\(recipients)")
        XCTAssertEqual(recipients, ["node3", "node4"])
    }

    func testAStateRequestHeldWhileFinishingIsDroppedWithItsPeer() {
        var instance = Instance(myself: "node1", peers: peers, nowMillis: 0)
        for node in peers { _ = instance.linkChanged(node, .up, nowMillis: 0) }
        _ = instance.startJoin(timeoutMillis: 1000, nowMillis: 0, replica: empty)
        for node in peers { _ = instance.receive(.syncDone(ready: false), from: node, nowMillis: 0, replica: empty) }
        XCTAssertEqual(instance.joinOutcome, .clusterStarting)
        _ = instance.receive(.syncRequest(durableDigests: nil), from: "node2", nowMillis: 5, replica: empty)
        _ = instance.receive(.syncRequest(durableDigests: nil), from: "node3", nowMillis: 5, replica: empty)
        _ = instance.removePeer("node2", nowMillis: 6)
        XCTAssertEqual(summary(instance.markReady(nowMillis: 10, replica: replica())), ["sync→node3"],
                       "only the remaining peer's held request is answered")
    }
}
