import XCTest
import ReplicatedStore

/// Issue 14: the per-user refresh-token sequence floor as a replicated record.
final class TokenFloorTests: XCTestCase {
    let alice = "alice@first.com"

    func floor(_ value: UInt64, _ wall: UInt64, _ origin: NodeID, user: String = "alice@first.com") -> TokenSequenceFloor {
        TokenSequenceFloor(domain: "first.com", user: user, floor: value, stamp: ts(wall), origin: origin)
    }

    func testSequenceStartsAtOneAndEachRevocationRaisesItByOne() {
        var s = ReplicatedStore(graceMillis: 1)
        XCTAssertNil(s.tokenSequenceFloor(domain: "first.com", user: alice))
        XCTAssertEqual(s.tokenSequence(domain: "first.com", user: alice), 1, "MongooseIM's first seq_no")
        let before = s
        let proposed = s.tokenFloorRaise(domain: "first.com", user: alice, stamp: ts(10), origin: "n1")
        XCTAssertEqual(proposed, floor(2, 10, "n1"))
        XCTAssertEqual(s, before, "a proposal changes nothing")
        XCTAssertEqual(s.raiseTokenSequenceFloor(domain: "first.com", user: alice, stamp: ts(10), origin: "n1"), proposed)
        XCTAssertEqual(s.tokenSequence(domain: "first.com", user: alice), 2)
        XCTAssertEqual(s.raiseTokenSequenceFloor(domain: "first.com", user: alice, stamp: ts(11), origin: "n1").floor, 3)
        XCTAssertEqual(s.tokenSequence(domain: "second.com", user: alice), 1, "per domain")
        XCTAssertEqual(s.tokenSequence(domain: "first.com", user: "bob@first.com"), 1, "per user")
        // Saturates instead of trapping.
        _ = s.merge(StoreDelta(tokenSequenceFloors: [floor(UInt64.max, 12, "n9")]), nowMillis: 0)
        XCTAssertEqual(s.tokenFloorRaise(domain: "first.com", user: alice, stamp: ts(13), origin: "n1").floor, UInt64.max)
    }

    func testJoinIsTheMaximumInAnyOrderAndTiesKeepTheEarliestRevocation() {
        let records = [floor(2, 10, "n1"), floor(3, 5, "n2"), floor(3, 4, "n3"), floor(1, 99, "n1"),
                       floor(3, 4, "n1"), floor(7, 1, "n2", user: "bob@first.com")]
        var rng = SeededGenerator(seed: 14)
        var results: Set<[TokenSequenceFloor]> = []
        var digests: Set<UInt64> = []
        for _ in 0..<30 {
            var s = ReplicatedStore(graceMillis: 1)
            for r in records.shuffled(using: &rng) { _ = s.merge(StoreDelta(tokenSequenceFloors: [r]), nowMillis: 0) }
            results.insert(s.allTokenSequenceFloors())
            digests.insert(s.rootDigest())
        }
        XCTAssertEqual(results, [[floor(3, 4, "n1"), floor(7, 1, "n2", user: "bob@first.com")]])
        XCTAssertEqual(digests.count, 1)
    }

    /// Two nodes revoke concurrently from the same floor: both propose 2, the cluster agrees on
    /// 2 (the earlier revocation's provenance), and a refresh token issued at 1 anywhere is
    /// below it. A stale replica cannot lower it, a restart keeps it.
    func testConcurrentRevocationsConvergeAndStaleReplicasCannotLowerTheFloor() {
        var a = ReplicatedStore(graceMillis: 1), b = ReplicatedStore(graceMillis: 1)
        let stale = a
        XCTAssertEqual(a.tokenSequence(domain: "first.com", user: alice), 1)     // a token issued here carries 1
        let ra = a.raiseTokenSequenceFloor(domain: "first.com", user: alice, stamp: ts(20), origin: "a")
        let rb = b.raiseTokenSequenceFloor(domain: "first.com", user: alice, stamp: ts(21), origin: "b")
        let outA = a.merge(b.fullDelta(), nowMillis: 0)
        let outB = b.merge(a.fullDelta(), nowMillis: 0)
        XCTAssertEqual(a, b)
        XCTAssertEqual(a.rootDigest(), b.rootDigest())
        XCTAssertEqual(a.tokenSequenceFloor(domain: "first.com", user: alice), ra)
        XCTAssertEqual(outA.tokenSequenceFloorsChanged, [], "b's equal floor from a later revocation is not news")
        XCTAssertEqual(outB.tokenSequenceFloorsChanged, [ra])
        XCTAssertEqual(outB.forwardable.tokenSequenceFloors, [ra])
        XCTAssertNotEqual(rb, ra)

        // A stale replica's state changes nothing; the stale replica learns the floor.
        let settled = a
        XCTAssertTrue(a.merge(stale.fullDelta(), nowMillis: 0).forwardable.isEmpty)
        XCTAssertEqual(a, settled)
        var s = stale
        XCTAssertEqual(s.merge(a.fullDelta(), nowMillis: 0).tokenSequenceFloorsChanged, [ra])
        XCTAssertEqual(s, a)
        // Lower floors never win.
        XCTAssertTrue(s.merge(StoreDelta(tokenSequenceFloors: [floor(1, 1, "a")]), nowMillis: 0).forwardable.isEmpty)

        // Restart: reloading what the shell persisted gives the same state and digest.
        var restarted = ReplicatedStore(graceMillis: 1)
        restarted.loadTokenSequenceFloors(a.allTokenSequenceFloors())
        XCTAssertEqual(restarted, a)
        XCTAssertEqual(restarted.rootDigest(), a.rootDigest())
    }

    func testFloorsTakePartInDigestsAndBucketDeltas() {
        var a = ReplicatedStore(graceMillis: 1, bucketCount: 64)
        for i in 0..<300 { _ = a.raiseTokenSequenceFloor(domain: "first.com", user: "u\(i)@first.com", stamp: ts(UInt64(i)), origin: "n1") }
        var b = a
        _ = b.raiseTokenSequenceFloor(domain: "first.com", user: "u42@first.com", stamp: ts(1_000), origin: "n2")
        XCTAssertNotEqual(a.rootDigest(), b.rootDigest())
        let differing = ReplicatedStore.differingBuckets(mine: a.bucketDigests(), theirs: b.bucketDigests())
        XCTAssertEqual(differing.count, 1)
        let fromB = b.delta(forBuckets: differing)
        XCTAssertTrue(fromB.tokenSequenceFloors.contains { $0.user == "u42@first.com" && $0.floor == 3 })
        XCTAssertLessThan(fromB.tokenSequenceFloors.count, 30, "a bucket, not every user")
        XCTAssertFalse(fromB.isEmpty)
        _ = a.merge(fromB, nowMillis: 0)
        XCTAssertEqual(a, b)
        XCTAssertEqual(a.rootDigest(), b.rootDigest())
        XCTAssertEqual(b.fullDelta().tokenSequenceFloors.count, 300)
        XCTAssertFalse(StoreDelta(tokenSequenceFloors: [floor(1, 1, "x")]).isEmpty)
    }

    /// Pins the floor encoding of the digest (compared between processes and versions).
    func testFloorDigestIsStableAcrossProcesses() {
        var s = ReplicatedStore(graceMillis: 1, bucketCount: 4)
        _ = s.raiseTokenSequenceFloor(domain: "first.com", user: alice, stamp: ts(1_700_000_000_000, 2), origin: "node1")
        XCTAssertEqual(s.rootDigest(), 4_356_035_831_036_242_440)
    }
}
