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
        _ = store.removeCertificates(domain: "first.com", user: alice, name: "phone", kind: .disabled, stamp: ts(4), origin: "n1")
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
        let removed = node.removeCertificates(domain: "first.com", user: alice, name: "phone",
                                              kind: .revoked, stamp: ts(200), origin: "n1")
        XCTAssertEqual(removed.map(\.removal), [removal(.revoked, 200, "n1")])
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
        var earlierCompacted = earlier
        earlierCompacted.der = []   // a revoked record never carries the DER (compaction)
        XCTAssertEqual(late.certificatesChanged, [record(id, earlierCompacted, removal(.revoked, 200, "n1"))])
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
        XCTAssertEqual(s.removeCertificates(domain: "first.com", user: alice, name: "phone", kind: .revoked,
                                            stamp: ts(70), origin: "n1"), [], "a removed record is not live")

        // A record with neither part says nothing and is not stored.
        var empty = ReplicatedStore(graceMillis: 1)
        let none = empty.merge(StoreDelta(certificates: [record(id, nil)]), nowMillis: 0)
        XCTAssertTrue(none.certificatesChanged.isEmpty && none.forwardable.isEmpty)
        XCTAssertEqual(empty, ReplicatedStore(graceMillis: 1))
        XCTAssertFalse(StoreDelta(certificates: [record(id, nil)]).isEmpty)
    }

    /// Issue 11 item 3. Five nodes each accept "phone" for alice concurrently (different
    /// certificates) and acknowledge it. Whatever order gossip delivers them in, every replica
    /// lists all five, in the same order, all usable; a removal by name then removes all five
    /// on every replica, and nothing of that name is usable afterwards in any merge order.
    /// (Replaces testNameResolutionIsDeterministicAcrossFiveReplicas, which asserted that only
    /// the earliest of them was listed: the hiding rule this issue removes.)
    func testConcurrentSameNameRegistrationsAllStayListedAndUsable() {
        let adds: [(NodeID, UInt64, UInt8)] = [("n3", 1_000, 3), ("n1", 1_001, 1), ("n2", 1_000, 2),
                                               ("n4", 999, 4), ("n5", 999, 5)]
        var replicas = adds.map { node, wall, fp -> ReplicatedStore in
            var s = ReplicatedStore(graceMillis: 1)
            XCTAssertNotNil(s.appendCertificate(certID(alice, fp), certContent("phone", added: ts(wall), origin: node)))
            XCTAssertEqual(s.liveCertificates(domain: "first.com", user: alice).count, 1)
            return s
        }
        var rng = SplitMix64(seed: 5)
        func gossip() {
            // Random pairwise gossip until every pair has exchanged both ways at least once.
            for _ in 0..<3 {
                for i in replicas.indices.shuffled(using: &rng) {
                    for j in replicas.indices.shuffled(using: &rng) where i != j {
                        _ = replicas[j].merge(replicas[i].fullDelta(), nowMillis: 0)
                    }
                }
            }
        }
        gossip()
        // Listed by (added, id): 999 (fp 4, fp 5), then 1000 (fp 2, fp 3), then 1001.
        let expected = [4, 5, 2, 3, 1].map { certID(alice, UInt8($0)) }
        for r in replicas {
            XCTAssertEqual(r, replicas[0])
            let live = r.liveCertificates(domain: "first.com", user: alice)
            XCTAssertEqual(live.map(\.id), expected, "every acknowledged registration is listed")
            XCTAssertTrue(live.allSatisfy(\.isLive))
            XCTAssertEqual(Set(live.compactMap(\.content?.name)), ["phone"])
        }

        // Revoking "phone" on one replica removes every live certificate of that name there,
        let removed = replicas[2].removeCertificates(domain: "first.com", user: alice, name: "phone", kind: .revoked,
                                                     stamp: ts(2_000), origin: "n2")
        XCTAssertEqual(removed.map(\.id), expected)
        XCTAssertTrue(removed.allSatisfy { $0.removal == removal(.revoked, 2_000, "n2") })
        XCTAssertEqual(replicas[2].liveCertificates(domain: "first.com", user: alice), [])
        // and once gossiped, on every replica, whichever records arrive first.
        let revocations = removed
        for (index, _) in replicas.enumerated() where index != 2 {
            for record in revocations.shuffled(using: &rng) {
                _ = replicas[index].merge(StoreDelta(certificates: [record]), nowMillis: 0)
            }
            XCTAssertEqual(replicas[index].liveCertificates(domain: "first.com", user: alice), [])
        }
        gossip()
        for r in replicas {
            XCTAssertEqual(r, replicas[0])
            XCTAssertEqual(r.liveCertificates(domain: "first.com", user: alice), [], "no certificate named phone is usable")
            XCTAssertEqual(r.certificates(domain: "first.com", user: alice).count, 5)
        }
    }

    /// The two-node form of issue 11 item 3, in both merge orders: n1 and n2 each acknowledge a
    /// "phone" for alice; after the merge both are listed on both; n2 revokes "phone" by name
    /// and the revocation reaches n1 before or after n2's own add: nothing named phone is
    /// usable on either, and neither record comes back.
    func testSameNameOnTwoNodesInBothMergeOrdersThenRevokeByName() {
        let a = certID(alice, 1), b = certID(alice, 2)
        for n1First in [true, false] {
            var n1 = ReplicatedStore(graceMillis: 1), n2 = ReplicatedStore(graceMillis: 1)
            let addA = n1.appendCertificate(a, certContent("phone", added: ts(100), origin: "n1"))!
            let addB = n2.appendCertificate(b, certContent("phone", added: ts(100), origin: "n2"))!
            let order = n1First ? [addA, addB] : [addB, addA]
            for r in order { _ = n1.merge(StoreDelta(certificates: [r]), nowMillis: 0) }
            for r in order.reversed() { _ = n2.merge(StoreDelta(certificates: [r]), nowMillis: 0) }
            XCTAssertEqual(n1, n2)
            XCTAssertEqual(n1.liveCertificates(domain: "first.com", user: alice).map(\.id), [a, b])

            let revoked = n2.removeCertificates(domain: "first.com", user: alice, name: "phone", kind: .revoked,
                                                stamp: ts(200), origin: "n2")
            XCTAssertEqual(revoked.map(\.id), [a, b])
            // A third replica that only ever saw the revocations (in either order) and then the
            // stale adds: still nothing usable.
            var late = ReplicatedStore(graceMillis: 1)
            for r in (n1First ? revoked : revoked.reversed()) + order {
                _ = late.merge(StoreDelta(certificates: [r]), nowMillis: 0)
            }
            _ = n1.merge(StoreDelta(certificates: n1First ? revoked : revoked.reversed()), nowMillis: 0)
            _ = n1.merge(StoreDelta(certificates: order), nowMillis: 0)
            for r in [n1, n2, late] {
                XCTAssertEqual(r, n2)
                XCTAssertEqual(r.liveCertificates(domain: "first.com", user: alice), [])
                XCTAssertEqual(r.certificateRemovals(domain: "first.com", user: alice, name: "phone", kind: .revoked,
                                                     stamp: ts(300), origin: "n1"), [], "nothing left to remove")
            }
        }
    }

    /// Replaces testRemovalByNameTargetsTheVisibleRecordNeverAHiddenOne (the old rule removed
    /// only the visible one of two same-named records).
    func testRemovalByNameRemovesEveryLiveRecordOfThatNameAndNothingElse() {
        let first = certID(alice, 1), second = certID(alice, 2), other = certID(alice, 3), old = certID(alice, 4)
        var n2 = ReplicatedStore(graceMillis: 1)
        _ = n2.appendCertificate(second, certContent("phone", added: ts(200), origin: "n2"))
        _ = n2.appendCertificate(other, certContent("laptop", added: ts(150), origin: "n2"))
        _ = n2.merge(StoreDelta(certificates: [record(first, certContent("phone", added: ts(100), origin: "n1")),
                                               record(old, certContent("phone", added: ts(50), origin: "n1"),
                                                      removal(.disabled, 60, "n1"))]), nowMillis: 0)
        XCTAssertEqual(n2.liveCertificates(domain: "first.com", user: alice).map(\.id), [first, other, second])
        XCTAssertEqual(n2.certificates(domain: "first.com", user: alice).map(\.id), [old, first, other, second])

        // The proposal changes nothing; applying it changes exactly those records.
        let before = n2
        let proposed = n2.certificateRemovals(domain: "first.com", user: alice, name: "phone", kind: .disabled,
                                              stamp: ts(300), origin: "n2")
        XCTAssertEqual(n2, before)
        XCTAssertEqual(proposed.map(\.id), [first, second], "both live phones, not the already disabled one")
        XCTAssertTrue(proposed.allSatisfy { $0.removal == removal(.disabled, 300, "n2") && $0.content?.der.isEmpty == false })
        var viaMerge = n2
        let outcome = viaMerge.merge(StoreDelta(certificates: proposed), nowMillis: 0)
        XCTAssertEqual(outcome.certificatesChanged, proposed)
        XCTAssertEqual(outcome.certificatesNewlyRemoved, proposed)
        XCTAssertEqual(n2.removeCertificates(domain: "first.com", user: alice, name: "phone", kind: .disabled,
                                             stamp: ts(300), origin: "n2"), proposed)
        XCTAssertEqual(viaMerge, n2)
        XCTAssertEqual(n2.liveCertificates(domain: "first.com", user: alice).map(\.id), [other])
        XCTAssertEqual(n2.removeCertificates(domain: "first.com", user: alice, name: "phone", kind: .revoked,
                                             stamp: ts(301), origin: "n2"), [], "a removed record is not live")
        XCTAssertEqual(n2.removeCertificates(domain: "first.com", user: "bob@first.com", name: "laptop", kind: .revoked,
                                             stamp: ts(303), origin: "n2"), [], "another user's name")
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

    /// A load with hashes computed ahead (a restart's reader thread) holds what a merge of the
    /// same records holds, digests included, also when a later batch brings an id already
    /// held (joined the general way) and for a revoked row still carrying its DER (compacted).
    func testLoadingHashedRecordsHoldsWhatAMergeHolds() {
        let live = record(certID(alice, 1), certContent("a", added: ts(5), origin: "n1"))
        let revokedWithDER = record(certID(alice, 2), certContent("b", added: ts(5), origin: "n1"), removal(.revoked, 6, "n2"))
        let disabled = record(certID(alice, 3), certContent("c", added: ts(5), origin: "n1"), removal(.disabled, 7, "n2"))
        let liveRevokedLater = record(certID(alice, 1), nil, removal(.revoked, 9, "n3"))
        var merged = ReplicatedStore(graceMillis: 1, bucketCount: 16)
        _ = merged.merge(StoreDelta(certificates: [live, revokedWithDER, disabled, liveRevokedLater]), nowMillis: 0)
        var loaded = ReplicatedStore(graceMillis: 1, bucketCount: 16)
        loaded.loadCertificates([live, revokedWithDER, disabled].map(HashedCertificateRecord.init))
        loaded.loadCertificates([HashedCertificateRecord(liveRevokedLater)])
        XCTAssertEqual(loaded, merged)
        XCTAssertEqual(loaded.bucketDigests(), merged.bucketDigests())
        XCTAssertEqual(loaded.durableBucketDigests(), merged.durableBucketDigests())
        XCTAssertEqual(loaded.certificateRecord(certID(alice, 2))?.content?.der, [], "stored compacted")
        XCTAssertEqual(loaded.certificateRecord(certID(alice, 1))?.removal?.kind, .revoked)
    }

    /// A restart reserves room from a guess of the row count (too high or too low) and loads
    /// rows of one database without looking each id up (`noneHeld`): both hold exactly what
    /// the plain load holds, and the store still finds, merges and grows afterwards.
    func testReservedNoneHeldLoadHoldsWhatThePlainLoadHolds() {
        let records: [CertificateRecord] = (0..<3_000).map { (i: Int) -> CertificateRecord in
            let fingerprint: [UInt8] = [UInt8(i & 0xFF), UInt8(i >> 8)] + [UInt8](repeating: 7, count: 30)
            let id = CertificateID(domain: i % 3 == 0 ? "second.com" : "first.com", user: "u\(i % 700)@first.com", sha256: fingerprint)
            let kind: RemovalKind = i % 2 == 0 ? .revoked : .disabled
            let removed: CertificateRemoval? = i % 5 == 0 ? removal(kind, UInt64(i + 1), "n1") : nil
            return record(id, certContent("c\(i)", added: ts(UInt64(i)), origin: "n\(i % 3)"), removed)
        }
        var plain = ReplicatedStore(graceMillis: 1, bucketCount: 16)
        plain.loadCertificates(records.map(HashedCertificateRecord.init))
        for guess in [0, 1_000, 3_000, 50_000] {
            var loaded = ReplicatedStore(graceMillis: 1, bucketCount: 16)
            loaded.reserveCertificates(guess)
            for batch in stride(from: 0, to: records.count, by: 512) {
                loaded.loadCertificates(records[batch..<min(batch + 512, records.count)].map(HashedCertificateRecord.init), noneHeld: true)
            }
            XCTAssertEqual(loaded, plain, "guess \(guess)")
            XCTAssertEqual(loaded.durableBucketDigests(), plain.durableBucketDigests(), "guess \(guess)")
            XCTAssertEqual(loaded.certificateRecord(records[2_999].id), plain.certificateRecord(records[2_999].id))
            // Still a working table: a later revocation of a loaded id is found and joined.
            let later = record(records[1].id, nil, removal(.revoked, 99_999, "n3"))
            var mergedPlain = plain
            _ = mergedPlain.merge(StoreDelta(certificates: [later]), nowMillis: 0)
            _ = loaded.merge(StoreDelta(certificates: [later]), nowMillis: 0)
            XCTAssertEqual(loaded, mergedPlain, "guess \(guess)")
            XCTAssertEqual(loaded.certificateRecord(records[1].id)?.removal?.kind, .revoked)
        }
    }

    /// What a joining node's writer stores for the records it applied: per id, what is held now
    /// (the record itself when unchanged, the later value when something changed it since, nothing
    /// once it is forgotten), exactly what `certificateRecord` gives.
    func testHeldCertificatesAreWhatIsHeldForEachId() {
        var store = ReplicatedStore(graceMillis: 1)
        let applied: [CertificateRecord] = (0..<40).map { (i: Int) -> CertificateRecord in
            let fingerprint: [UInt8] = [UInt8(i)] + [UInt8](repeating: 3, count: 31)
            let id = CertificateID(domain: i % 2 == 0 ? "first.com" : "second.com", user: "u\(i)@first.com", sha256: fingerprint)
            return record(id, certContent("c\(i)", added: ts(UInt64(i + 1)), origin: "n1"))
        }
        _ = store.merge(StoreDelta(certificates: applied), nowMillis: 0)
        XCTAssertEqual(store.heldCertificates(applied), applied, "unchanged: the records themselves")

        // Since applied: one revoked, one given a later removal by another node, one never held.
        let revoked = record(applied[3].id, nil, removal(.revoked, 500, "n2"))
        let disabled = record(applied[8].id, nil, removal(.disabled, 600, "n3"))
        _ = store.merge(StoreDelta(certificates: [revoked, disabled]), nowMillis: 0)
        let stranger = record(CertificateID(domain: "first.com", user: "nobody@first.com", sha256: [UInt8](repeating: 9, count: 32)),
                              certContent("x", added: ts(1), origin: "n1"))
        let asked = applied + [stranger]
        let held = store.heldCertificates(asked)
        XCTAssertEqual(held, applied.compactMap { store.certificateRecord($0.id) }, "what is held, in order, the stranger left out")
        XCTAssertEqual(held[3].removal?.kind, .revoked)
        XCTAssertNil(held[3].content?.der.first, "compacted as held: a revoked record keeps no DER")
        XCTAssertEqual(held[8].removal?.kind, .disabled)
        XCTAssertEqual(held.count, applied.count)
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
        let removedRecords = b.removeCertificates(domain: "first.com", user: "u7@first.com", name: "c407", kind: .revoked,
                                                  stamp: ts(2_000), origin: "n2")
        XCTAssertEqual(removedRecords.count, 1)
        let removed = removedRecords.first
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
        _ = s.removeCertificates(domain: "first.com", user: alice, name: "phone", kind: .disabled,
                                 stamp: ts(1_700_000_000_001), origin: "node2")
        XCTAssertEqual(live, 14_725_660_780_590_872_924)
        XCTAssertEqual(s.rootDigest(), 423_265_742_761_882_038)
    }
}
