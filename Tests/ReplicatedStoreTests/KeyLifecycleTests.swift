import XCTest
import ReplicatedStore

final class KeyLifecycleTests: XCTestCase {
    let grace: UInt64 = 3_600_000

    func testInitialVersionOnlyWhenKeyIsMissing() {
        var store = ReplicatedStore(graceMillis: grace)
        XCTAssertFalse(store.hasVersions(tokenKey))
        let first = store.createInitialVersion(of: tokenKey, id: vid(1_000, "node1"))
        XCTAssertEqual(first, KeyVersion(id: vid(1_000, "node1"), generation: 0))
        XCTAssertTrue(store.hasVersions(tokenKey))

        let snapshot = store
        XCTAssertNil(store.createInitialVersion(of: tokenKey, id: vid(500, "node0")))
        XCTAssertEqual(store, snapshot)
        XCTAssertEqual(store.rootDigest(), snapshot.rootDigest())

        // A key adopted from the cluster during sync blocks local generation too.
        var joiner = ReplicatedStore(graceMillis: grace)
        _ = joiner.merge(store.fullDelta(), nowMillis: 2_000)
        XCTAssertNil(joiner.createInitialVersion(of: tokenKey, id: vid(2_000, "node2")))
        XCTAssertEqual(joiner.ids(of: tokenKey, nowMillis: 2_000), [vid(1_000, "node1")])
        XCTAssertEqual(joiner.keyRefs(), [tokenKey])
    }

    func testRotateMakesNewPrimaryAndOldOneLivesExactlyGraceAfterSuccessor() {
        var store = ReplicatedStore(graceMillis: 10_000)
        let v0 = store.createInitialVersion(of: tokenKey, id: vid(1_000, "node1"))!
        let v1 = store.rotate(tokenKey, id: vid(5_000, "node2"))
        XCTAssertEqual(v1.generation, 1)

        let views = store.versions(of: tokenKey, nowMillis: 5_000)
        XCTAssertEqual(views, [
            KeyVersionView(version: v1, isPrimary: true, expiresAtMillis: nil),
            KeyVersionView(version: v0, isPrimary: false, expiresAtMillis: 15_000),
        ])
        XCTAssertEqual(store.ids(of: tokenKey, nowMillis: 14_999), [v1.id, v0.id])
        XCTAssertEqual(store.expire(nowMillis: 14_999).count, 0)
        XCTAssertEqual(store.ids(of: tokenKey, nowMillis: 15_000), [v1.id])  // view hides it at once
        let pruned = store.expire(nowMillis: 15_000)
        XCTAssertEqual(pruned.map(\.0), [tokenKey])
        XCTAssertEqual(pruned.map(\.1), [v0.id])
        XCTAssertEqual(store.fullDelta().keyVersions[tokenKey], [v1])
        XCTAssertEqual(store.expire(nowMillis: 1_000_000).count, 0, "primary never expires")

        let v2 = store.rotate(tokenKey, id: vid(20_000, "node1"))
        XCTAssertEqual(v2.generation, 2)
        XCTAssertEqual(store.versions(of: tokenKey, nowMillis: 20_000).first?.isPrimary, true)
        XCTAssertEqual(store.ids(of: tokenKey, nowMillis: 20_000), [v2.id, v1.id])
    }

    func testRotateOfMissingKeyStartsAtGenerationZero() {
        var store = ReplicatedStore(graceMillis: grace)
        XCTAssertEqual(store.rotate(tokenKey, id: vid(1, "n")).generation, 0)
    }

    func testConcurrentInitialVersionsOnFiveReplicasConvergeToEarliest() {
        let g: UInt64 = 60_000
        // node2 and node3 tie on the earliest timestamp: the smaller node id wins.
        let walls: [(NodeID, UInt64)] = [("node1", 1_005), ("node2", 1_000), ("node3", 1_000),
                                         ("node4", 1_010), ("node5", 1_003)]
        var replicas: [ReplicatedStore] = walls.map { node, wall in
            var clock = HybridLogicalClock()
            var store = ReplicatedStore(graceMillis: g)
            XCTAssertNotNil(store.createInitialVersion(of: tokenKey,
                                                      id: VersionID(created: clock.now(wallMillis: wall), origin: node)))
            return store
        }
        var rng = SeededGenerator(seed: 5)
        let deltas = replicas.map { $0.fullDelta() }
        for i in replicas.indices {
            for d in deltas.shuffled(using: &rng) { _ = replicas[i].merge(d, nowMillis: 1_020) }
        }
        for r in replicas {
            XCTAssertEqual(r, replicas[0])
            XCTAssertEqual(r.rootDigest(), replicas[0].rootDigest())
        }
        let views = replicas[0].versions(of: tokenKey, nowMillis: 1_020)
        XCTAssertEqual(views.map(\.version.id.origin), ["node2", "node3", "node5", "node1", "node4"])
        XCTAssertEqual(views.map(\.isPrimary), [true, false, false, false, false])
        // Each loser lives `grace` after its own creation.
        XCTAssertEqual(views.map(\.expiresAtMillis), [nil, 1_000 + g, 1_003 + g, 1_005 + g, 1_010 + g])
        XCTAssertEqual(replicas[0].ids(of: tokenKey, nowMillis: 1_000 + g - 1).count, 5)
        XCTAssertEqual(replicas[0].ids(of: tokenKey, nowMillis: 1_005 + g).map(\.origin), ["node2", "node4"])
        var r = replicas[0]
        XCTAssertEqual(r.expire(nowMillis: 1_009 + g).map(\.1.origin), ["node3", "node5", "node1"])
        XCTAssertEqual(r.expire(nowMillis: 1_010 + g).map(\.1.origin), ["node4"])
        XCTAssertEqual(r.ids(of: tokenKey, nowMillis: 10_000_000).map(\.origin), ["node2"])
    }

    func testConcurrentRotationsConvergeAndNextRotationOutranksBoth() {
        let g: UInt64 = 10_000
        var a = ReplicatedStore(graceMillis: g)
        let v0 = a.createInitialVersion(of: tokenKey, id: vid(1_000, "a"))!
        var b = a
        let va = a.rotate(tokenKey, id: vid(2_500, "a"))
        let vb = b.rotate(tokenKey, id: vid(2_000, "b"))
        XCTAssertEqual(va.generation, 1)
        XCTAssertEqual(vb.generation, 1)

        let outA = a.merge(b.fullDelta(), nowMillis: 3_000)
        let outB = b.merge(a.fullDelta(), nowMillis: 3_000)
        XCTAssertEqual(a, b)
        XCTAssertEqual(outA.primaryChanged, [tokenKey], "a's own rotation loses to the earlier one")
        XCTAssertEqual(outB.primaryChanged, [])
        XCTAssertEqual(outA.added.map(\.1), [vb])
        XCTAssertEqual(outA.forwardable.keyVersions, [tokenKey: [vb]])

        let views = a.versions(of: tokenKey, nowMillis: 3_000)
        XCTAssertEqual(views.map(\.version), [vb, va, v0])
        XCTAssertEqual(views.map(\.expiresAtMillis), [nil, 2_500 + g, 2_000 + g])

        let v2 = a.rotate(tokenKey, id: vid(4_000, "a"))
        XCTAssertEqual(v2.generation, 2)
        XCTAssertEqual(a.versions(of: tokenKey, nowMillis: 4_000).map(\.version), [v2, vb, va, v0])
        // va already lost to vb at its own creation, so its deadline does not move.
        XCTAssertEqual(a.versions(of: tokenKey, nowMillis: 4_000).map(\.expiresAtMillis),
                       [nil, 4_000 + g, 2_500 + g, 2_000 + g])
    }

    func testStaleReplicaCannotResurrectExpiredVersions() {
        let g: UInt64 = 10_000
        var a = ReplicatedStore(graceMillis: g)
        let v0 = a.createInitialVersion(of: tokenKey, id: vid(1_000, "a"))!
        let stale = a                                   // partitioned right after sync
        let v1 = a.rotate(tokenKey, id: vid(2_000, "a"))
        let half = a                                    // saw v1, then partitioned
        let v2 = a.rotate(tokenKey, id: vid(50_000, "a"))
        XCTAssertEqual(a.expire(nowMillis: 70_000).map(\.1), [v1.id, v0.id].sorted())
        let settled = a

        for old in [stale, half] {
            let out = a.merge(old.fullDelta(), nowMillis: 70_000)
            XCTAssertTrue(out.added.isEmpty)
            XCTAssertTrue(out.pruned.isEmpty)
            XCTAssertTrue(out.forwardable.isEmpty)
            XCTAssertEqual(a, settled)
            XCTAssertEqual(a.ids(of: tokenKey, nowMillis: 70_000), [v2.id])
        }

        // The stale side learns the truth and drops what it held.
        var s = stale
        let out = s.merge(a.fullDelta(), nowMillis: 70_000)
        XCTAssertEqual(out.pruned.map(\.1), [v0.id])
        XCTAssertEqual(out.added.map(\.1), [v2])
        XCTAssertEqual(out.primaryChanged, [tokenKey])
        XCTAssertEqual(s, a)
        XCTAssertEqual(s.rootDigest(), a.rootDigest())

        // Merge also refuses versions that are expired on arrival even when never seen before.
        var fresh = ReplicatedStore(graceMillis: g)
        _ = fresh.merge(StoreDelta(keyVersions: [tokenKey: [v2]]), nowMillis: 70_000)
        let late = fresh.merge(StoreDelta(keyVersions: [tokenKey: [v1, v0]]), nowMillis: 70_000)
        XCTAssertTrue(late.added.isEmpty)
        XCTAssertEqual(fresh, a)
    }

    func testConflictingGenerationForOneIDResolvesToHigher() {
        var a = ReplicatedStore(graceMillis: 1_000)
        var b = ReplicatedStore(graceMillis: 1_000)
        let low = KeyVersion(id: vid(10, "x"), generation: 0)
        let high = KeyVersion(id: vid(10, "x"), generation: 3)
        _ = a.merge(StoreDelta(keyVersions: [tokenKey: [low]]), nowMillis: 20)
        let out = a.merge(StoreDelta(keyVersions: [tokenKey: [high]]), nowMillis: 20)
        _ = b.merge(StoreDelta(keyVersions: [tokenKey: [high]]), nowMillis: 20)
        _ = b.merge(StoreDelta(keyVersions: [tokenKey: [low]]), nowMillis: 20)
        XCTAssertEqual(a, b)
        XCTAssertEqual(a.fullDelta().keyVersions[tokenKey], [high])
        XCTAssertEqual(out.added.map(\.1), [high])
        XCTAssertTrue(out.pruned.isEmpty, "same id survives: not a prune")
        XCTAssertEqual(a.rootDigest(), b.rootDigest())
    }

    func testHostileHugeTimestampsDoNotTrap() {
        var store = ReplicatedStore(graceMillis: UInt64.max)
        let top = KeyVersion(id: vid(UInt64.max, "x", logical: UInt32.max), generation: UInt32.max)
        let other = KeyVersion(id: vid(UInt64.max - 1, "y"), generation: 0)
        _ = store.merge(StoreDelta(keyVersions: [tokenKey: [top, other]]), nowMillis: 0)
        XCTAssertEqual(store.versions(of: tokenKey, nowMillis: 0).map(\.expiresAtMillis), [nil, UInt64.max])
        XCTAssertEqual(store.rotate(tokenKey, id: vid(5, "z")).generation, UInt32.max)
        _ = store.expire(nowMillis: UInt64.max)
        XCTAssertTrue(store.hasVersions(tokenKey))
    }

    /// A reload may change `grace_period_s`: the cached earliest expiry per key follows, so
    /// `expire` neither misses a version the shorter grace expires nor prunes one early.
    func testChangingTheGracePeriodRecomputesWhatExpireSees() {
        var store = ReplicatedStore(graceMillis: 10_000)
        let v0 = store.createInitialVersion(of: tokenKey, id: vid(1_000, "n1"))!
        let v1 = store.rotate(tokenKey, id: vid(2_000, "n1"))
        XCTAssertEqual(store.expire(nowMillis: 5_000).count, 0)
        store.graceMillis = 2_000                     // v0 now expires at 4_000
        XCTAssertEqual(store.expire(nowMillis: 5_000).map(\.1), [v0.id])
        _ = store.rotate(tokenKey, id: vid(6_000, "n1"))
        store.graceMillis = 60_000                    // v1 now lives until 66_000
        XCTAssertEqual(store.expire(nowMillis: 10_000).count, 0)
        XCTAssertEqual(store.ids(of: tokenKey, nowMillis: 10_000).count, 2)
        store.graceMillis = 60_000                    // unchanged: nothing to recompute
        XCTAssertEqual(store.expire(nowMillis: 66_000).map(\.1), [v1.id])
        XCTAssertEqual(store.forgetKey(tokenKey).count, 1)
        XCTAssertFalse(store.hasVersions(tokenKey))
        XCTAssertEqual(store, ReplicatedStore(graceMillis: 60_000))
    }
}
