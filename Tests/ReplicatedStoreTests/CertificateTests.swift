import XCTest
import ReplicatedStore
import TestSupport

final class CertificateTests: XCTestCase {
    let alice = "alice@first.com"

    func record(_ id: CertificateID, _ content: CertificateContent?, _ removed: CertificateRemoval? = nil) -> CertificateRecord {
        CertificateRecord(id: id, content: content, removal: removed)
    }

    /// Applies the records one delta each, in every order given, and returns the final stores.
    func replay(_ records: [CertificateRecord], orders: Int, seed: UInt64) -> [ReplicatedStore] {
        var rng = SplitMix64(seed: seed)
        return (0..<orders).map { _ in
            var store = ReplicatedStore(graceMillis: 1)
            for r in records.shuffled(using: &rng) { _ = store.merge(StoreDelta(certificates: [r]), nowMillis: 0) }
            return store
        }
    }

    func testCertificateCountsSeparateRegisteredFromRemoved() {
        var store = ReplicatedStore(graceMillis: 1)
        XCTAssertTrue(store.certificateCounts() == (0, 0))
        _ = store.merge(StoreDelta(certificates: [
            record(certID(alice, 1), certContent("phone", added: ts(1), origin: "n1")),
            record(certID(alice, 2), certContent("laptop", added: ts(2), origin: "n1")),
            record(certID(alice, 3), nil, removal(.revoked, 3, "n2")),
        ]), nowMillis: 0)
        XCTAssertTrue(store.certificateCounts() == (2, 1), "\(store.certificateCounts())")
        _ = store.removeCertificate(domain: "first.com", user: alice, name: "phone", kind: .disabled, stamp: ts(4), origin: "n1")
        XCTAssertTrue(store.certificateCounts() == (1, 2), "\(store.certificateCounts())")
    }

    func testTombstoneWinsOverConcurrentAddInAnyOrder() {
        let id = certID(alice, 1)
        // n1 and n2 register the same certificate concurrently; n2 disables its copy at once.
        let addN1 = record(id, certContent("phone", added: ts(100), origin: "n1"))
        let addN2 = record(id, certContent("phone", added: ts(100), origin: "n2"))
        let disable = record(id, nil, removal(.disabled, 101, "n2"))
        let stores = replay([addN1, addN2, disable], orders: 24, seed: 1)
        for s in stores {
            XCTAssertEqual(s, stores[0])
            XCTAssertEqual(s.rootDigest(), stores[0].rootDigest())
            XCTAssertEqual(s.liveCertificates(domain: "first.com", user: alice), [])
            let all = s.certificates(domain: "first.com", user: alice)
            XCTAssertEqual(all, [record(id, addN1.content, removal(.disabled, 101, "n2"))], "earliest add kept, still removed")
        }
    }

    func testStaleAddArrivingLaterNeverResurrects() {
        let id = certID(alice, 1)
        var node = ReplicatedStore(graceMillis: 1)
        XCTAssertNotNil(node.appendCertificate(id, certContent("phone", added: ts(100), origin: "n1")))
        let staleReplica = node                      // knows only the add
        let removed = node.removeCertificate(domain: "first.com", user: alice, name: "phone",
                                             kind: .revoked, stamp: ts(200), origin: "n1")
        XCTAssertEqual(removed?.removal, removal(.revoked, 200, "n1"))
        let afterRemoval = node

        // The stale replica's full state (restart, partition heal, anti-entropy) changes nothing.
        let out = node.merge(staleReplica.fullDelta(), nowMillis: 500)
        XCTAssertTrue(out.certificatesChanged.isEmpty && out.forwardable.isEmpty)
        XCTAssertEqual(node, afterRemoval)
        XCTAssertEqual(node.liveCertificates(domain: "first.com", user: alice), [])

        // An earlier concurrent add of the same certificate arriving late replaces the content
        // (earliest add wins) but never the tombstone, and is no new removal.
        let earlier = certContent("old-phone", added: ts(90), origin: "n3")
        let late = node.merge(StoreDelta(certificates: [record(id, earlier)]), nowMillis: 500)
        XCTAssertEqual(late.certificatesChanged, [record(id, earlier, removal(.revoked, 200, "n1"))])
        XCTAssertEqual(late.certificatesNewlyRemoved, [])
        XCTAssertEqual(node.liveCertificates(domain: "first.com", user: alice), [])

        // The stale side adopts the tombstone and reports it as news (event + persistence).
        var stale = staleReplica
        let healed = stale.merge(node.fullDelta(), nowMillis: 500)
        XCTAssertEqual(healed.certificatesNewlyRemoved.map(\.id), [id])
        XCTAssertEqual(stale, node)
        XCTAssertEqual(stale.rootDigest(), node.rootDigest())
        // Re-registering the removed certificate is refused on both.
        XCTAssertNil(stale.appendCertificate(id, certContent("phone2", added: ts(600), origin: "n2")))
        XCTAssertEqual(stale, node)
    }

    func testRevokedBeatsDisabledAndEarliestRemovalOfAKindWins() {
        let id = certID(alice, 1)
        let add = record(id, certContent("phone", added: ts(100), origin: "n1"))
        let d1 = record(id, nil, removal(.disabled, 150, "n2"))
        let d2 = record(id, nil, removal(.disabled, 140, "n3"))
        let r1 = record(id, nil, removal(.revoked, 300, "n4"))
        let r2 = record(id, nil, removal(.revoked, 300, "n1"))
        let stores = replay([add, d1, d2, r1, r2], orders: 30, seed: 2)
        for s in stores {
            XCTAssertEqual(s.certificates(domain: "first.com", user: alice).map(\.removal), [removal(.revoked, 300, "n1")])
            XCTAssertEqual(s.rootDigest(), stores[0].rootDigest())
        }
        XCTAssertTrue(removal(.revoked, 900, "z").supersedes(removal(.disabled, 1, "a")))
        XCTAssertFalse(removal(.disabled, 1, "a").supersedes(removal(.revoked, 900, "z")))

        // A disable then a revoke: both are news (the revoke publishes its own event); a later,
        // weaker or equal-kind removal is absorbed silently.
        var s = ReplicatedStore(graceMillis: 1)
        _ = s.merge(StoreDelta(certificates: [add]), nowMillis: 0)
        XCTAssertEqual(s.merge(StoreDelta(certificates: [d1]), nowMillis: 0).certificatesNewlyRemoved.map(\.removal), [d1.removal])
        XCTAssertEqual(s.merge(StoreDelta(certificates: [r1]), nowMillis: 0).certificatesNewlyRemoved.map(\.removal), [r1.removal])
        let tie = s.merge(StoreDelta(certificates: [r2]), nowMillis: 0)
        XCTAssertEqual(tie.certificatesChanged.map(\.removal), [r2.removal], "earlier revoke replaces the stored one")
        XCTAssertEqual(tie.certificatesNewlyRemoved, [], "but it is not a new removal")
        XCTAssertTrue(s.merge(StoreDelta(certificates: [d2]), nowMillis: 0).certificatesChanged.isEmpty)
    }

    func testBareTombstoneBeforeAddSuppressesIt() {
        let id = certID(alice, 7)
        var s = ReplicatedStore(graceMillis: 1)
        let tomb = record(id, nil, removal(.disabled, 50, "n2"))
        let first = s.merge(StoreDelta(certificates: [tomb]), nowMillis: 0)
        XCTAssertEqual(first.certificatesChanged, [tomb])
        XCTAssertEqual(first.certificatesNewlyRemoved, [tomb])
        XCTAssertEqual(s.certificates(domain: "first.com", user: alice), [tomb])
        XCTAssertNil(s.appendCertificate(id, certContent("phone", added: ts(60), origin: "n1")))

        let add = record(id, certContent("phone", added: ts(10), origin: "n1"))
        let out = s.merge(StoreDelta(certificates: [add]), nowMillis: 0)
        XCTAssertEqual(out.certificatesChanged, [record(id, add.content, tomb.removal)])
        XCTAssertEqual(out.certificatesNewlyRemoved, [], "the removal was already known")
        XCTAssertEqual(s.liveCertificates(domain: "first.com", user: alice), [])
        XCTAssertNil(s.removeCertificate(domain: "first.com", user: alice, name: "phone", kind: .revoked,
                                         stamp: ts(70), origin: "n1"), "a removed record is not live")

        // A record with neither part says nothing and is not stored.
        var empty = ReplicatedStore(graceMillis: 1)
        let none = empty.merge(StoreDelta(certificates: [record(id, nil)]), nowMillis: 0)
        XCTAssertTrue(none.certificatesChanged.isEmpty && none.forwardable.isEmpty)
        XCTAssertEqual(empty, ReplicatedStore(graceMillis: 1))
        XCTAssertFalse(StoreDelta(certificates: [record(id, nil)]).isEmpty)
    }

    /// Five nodes each accept "phone" for alice concurrently (different certificates); every
    /// replica must show the same single one whatever order gossip delivers them in.
    func testNameResolutionIsDeterministicAcrossFiveReplicas() {
        let adds: [(NodeID, UInt64, UInt8)] = [("n3", 1_000, 3), ("n1", 1_001, 1), ("n2", 1_000, 2),
                                               ("n4", 999, 4), ("n5", 999, 5)]
        var replicas = adds.map { node, wall, fp -> ReplicatedStore in
            var s = ReplicatedStore(graceMillis: 1)
            XCTAssertNotNil(s.appendCertificate(certID(alice, fp), certContent("phone", added: ts(wall), origin: node)))
            XCTAssertEqual(s.liveCertificates(domain: "first.com", user: alice).count, 1)
            return s
        }
        var rng = SplitMix64(seed: 5)
        // Random pairwise gossip until every pair has exchanged both ways at least once.
        for _ in 0..<3 {
            for i in replicas.indices.shuffled(using: &rng) {
                for j in replicas.indices.shuffled(using: &rng) where i != j {
                    _ = replicas[j].merge(replicas[i].fullDelta(), nowMillis: 0)
                }
            }
        }
        for r in replicas {
            XCTAssertEqual(r, replicas[0])
            XCTAssertEqual(r.certificates(domain: "first.com", user: alice).count, 5)
            let live = r.liveCertificates(domain: "first.com", user: alice)
            XCTAssertEqual(live.map(\.id), [certID(alice, 4)], "earliest added (999), ties by origin n4 < n5")
        }
    }

    func testRemovalByNameTargetsTheVisibleRecordNeverAHiddenOne() {
        let visible = certID(alice, 1), hidden = certID(alice, 2), other = certID(alice, 3)
        var n2 = ReplicatedStore(graceMillis: 1)
        _ = n2.appendCertificate(hidden, certContent("phone", added: ts(200), origin: "n2"))
        _ = n2.appendCertificate(other, certContent("laptop", added: ts(150), origin: "n2"))
        _ = n2.merge(StoreDelta(certificates: [record(visible, certContent("phone", added: ts(100), origin: "n1"))]),
                     nowMillis: 0)
        XCTAssertEqual(n2.liveCertificates(domain: "first.com", user: alice).map(\.id), [visible, other])
        XCTAssertEqual(n2.certificates(domain: "first.com", user: alice).map(\.id), [visible, other, hidden])

        // n2's own (hidden) record cannot be removed by name: the visible one is.
        let removed = n2.removeCertificate(domain: "first.com", user: alice, name: "phone", kind: .disabled,
                                           stamp: ts(300), origin: "n2")
        XCTAssertEqual(removed?.id, visible)
        XCTAssertEqual(removed?.removal, removal(.disabled, 300, "n2"))
        XCTAssertNil(n2.certificates(domain: "first.com", user: alice).first { $0.id == hidden }?.removal)
        // With the winner gone, the other acknowledged registration of that name is visible.
        XCTAssertEqual(n2.liveCertificates(domain: "first.com", user: alice).map(\.id), [other, hidden])
        XCTAssertEqual(n2.removeCertificate(domain: "first.com", user: alice, name: "phone", kind: .revoked,
                                            stamp: ts(301), origin: "n2")?.id, hidden)
        XCTAssertNil(n2.removeCertificate(domain: "first.com", user: alice, name: "phone", kind: .revoked,
                                          stamp: ts(302), origin: "n2"))
        XCTAssertNil(n2.removeCertificate(domain: "first.com", user: "bob@first.com", name: "laptop", kind: .revoked,
                                          stamp: ts(303), origin: "n2"), "another user's name")
        XCTAssertEqual(n2.liveCertificates(domain: "first.com", user: alice).map(\.id), [other])
    }

    func testAppendListLoadAndRecordJoinEdgeCases() {
        var s = ReplicatedStore(graceMillis: 1)
        let a = certID(alice, 1), b = certID(alice, 2)
        let appended = s.appendCertificate(b, certContent("b", added: ts(5), origin: "n1"))
        XCTAssertEqual(appended, record(b, certContent("b", added: ts(5), origin: "n1")))
        XCTAssertNil(s.appendCertificate(b, certContent("other", added: ts(6), origin: "n1")), "known id")
        _ = s.appendCertificate(a, certContent("a", added: ts(5), origin: "n2"))
        _ = s.appendCertificate(certID(alice, 1, domain: "second.com"), certContent("a", added: ts(1), origin: "n2"))
        // Sorted by (added, id), per user and domain.
        XCTAssertEqual(s.certificates(domain: "first.com", user: alice).map(\.id), [a, b])
        XCTAssertEqual(s.certificates(domain: "first.com", user: "nobody@first.com"), [])
        XCTAssertEqual(s.allCertificateRecords().count, 3)

        var restarted = ReplicatedStore(graceMillis: 1)
        restarted.loadCertificates(s.allCertificateRecords())
        XCTAssertEqual(restarted, s)
        XCTAssertEqual(restarted.rootDigest(), s.rootDigest())

        let x = record(a, certContent("a", added: ts(5), origin: "n2"))
        XCTAssertEqual(x.merged(with: record(b, nil, removal(.revoked, 1, "n1"))), x, "different ids are not joined")
        XCTAssertEqual(x.merged(with: x), x)
        XCTAssertTrue(x.isLive)
        XCTAssertEqual(a.description, "first.com/\(alice)/" + String(repeating: "01", count: 32))
    }

    func testDigestsChangeOnRemovalAndDifferingBucketsIdentifyIt() throws {
        var a = ReplicatedStore(graceMillis: 1)
        for i in 0..<1_000 {
            _ = a.appendCertificate(CertificateID(domain: "first.com", user: "u\(i % 100)@first.com",
                                                  sha256: [UInt8(i & 0xFF), UInt8(i >> 8)]),
                                    certContent("c\(i)", added: ts(UInt64(i)), origin: "n1"))
        }
        _ = a.createInitialVersion(of: tokenKey, id: vid(1, "n1"))
        var b = a
        XCTAssertEqual(a.rootDigest(), b.rootDigest())
        let removed = b.removeCertificate(domain: "first.com", user: "u7@first.com", name: "c407", kind: .revoked,
                                          stamp: ts(2_000), origin: "n2")
        XCTAssertNotNil(removed)
        XCTAssertNotEqual(a.rootDigest(), b.rootDigest())
        let differing = ReplicatedStore.differingBuckets(mine: a.bucketDigests(), theirs: b.bucketDigests())
        XCTAssertEqual(differing.count, 1)
        let fromB = b.delta(forBuckets: differing)
        XCTAssertTrue(fromB.certificates.contains { $0.removal != nil && $0.id == removed?.id })
        XCTAssertLessThan(fromB.certificates.count, 100, "a bucket, not the registry")
        let out = a.merge(fromB, nowMillis: 0)
        XCTAssertEqual(out.certificatesNewlyRemoved.map(\.id), [removed?.id])
        _ = b.merge(a.delta(forBuckets: differing), nowMillis: 0)
        XCTAssertEqual(a, b)
        XCTAssertEqual(a.rootDigest(), b.rootDigest())

        // An earlier removal of the same kind replacing the stored one is a difference too.
        _ = a.merge(StoreDelta(certificates: [CertificateRecord(id: try XCTUnwrap(removed).id, content: nil,
                                                                removal: removal(.revoked, 1_500, "n3"))]), nowMillis: 0)
        XCTAssertEqual(ReplicatedStore.differingBuckets(mine: a.bucketDigests(), theirs: b.bucketDigests()), differing)
        XCTAssertEqual(b.fullDelta().certificates.count, 1_000)
    }

    /// Pins the encoding: certificate digests are compared between processes and versions.
    func testCertificateDigestIsStableAcrossProcesses() {
        var s = ReplicatedStore(graceMillis: 1, bucketCount: 4)
        _ = s.appendCertificate(certID(alice, 9), certContent("phone", added: ts(1_700_000_000_000, 3), origin: "node1"))
        let live = s.rootDigest()
        _ = s.removeCertificate(domain: "first.com", user: alice, name: "phone", kind: .disabled,
                                stamp: ts(1_700_000_000_001), origin: "node2")
        XCTAssertEqual(live, 14_725_660_780_590_872_924)
        XCTAssertEqual(s.rootDigest(), 423_265_742_761_882_038)
    }
}
