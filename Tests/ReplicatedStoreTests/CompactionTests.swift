import XCTest
import ReplicatedStore
import TestSupport

/// Issue 11 item 7: what removed and expired certificate records shrink to, and when the
/// store forgets them (the rule is the comment of ReplicatedStore+Certificates.swift).
final class CompactionTests: XCTestCase {
    let alice = "alice@first.com"
    let day: Int64 = 24 * 3600 * 1000
    let margin = ReplicatedStore.certificateRetentionAfterExpiryMillis
    let der: [UInt8] = (0..<600).map { UInt8(truncatingIfNeeded: $0 &* 7) }

    func content(_ name: String, added: UInt64, origin: NodeID, notAfter: Int64 = 4_000_000_000_000) -> CertificateContent {
        var c = certContent(name, added: ts(added), origin: origin, der: der)
        c.notAfterMillis = notAfter
        return c
    }

    func record(_ id: CertificateID, _ content: CertificateContent?, _ removed: CertificateRemoval? = nil) -> CertificateRecord {
        CertificateRecord(id: id, content: content, removal: removed)
    }

    func testRevokedRecordDropsItsDERWhateverTheArrivalOrder() {
        let id = certID(alice, 1)
        let add = record(id, content("phone", added: 100, origin: "n1"))
        let disable = record(id, nil, removal(.disabled, 150, "n2"))
        let revokeBare = record(id, nil, removal(.revoked, 200, "n3"))
        // A 0.1.0 node sends the whole merged record, DER included.
        let revokeFull = record(id, content("phone", added: 100, origin: "n1"), removal(.revoked, 200, "n3"))
        var rng = SplitMix64(seed: 77)
        var stores: [ReplicatedStore] = []
        for inputs in [[add, disable, revokeBare], [add, revokeFull], [revokeBare, add], [disable, revokeFull, add]] {
            for _ in 0..<6 {
                var s = ReplicatedStore(graceMillis: 1)
                for r in inputs.shuffled(using: &rng) { _ = s.merge(StoreDelta(certificates: [r]), nowMillis: 0) }
                stores.append(s)
            }
        }
        var compactContent = content("phone", added: 100, origin: "n1")
        compactContent.der = []
        let expected = record(id, compactContent, removal(.revoked, 200, "n3"))
        for s in stores {
            XCTAssertEqual(s.certificateRecord(id), expected, "fingerprint, name, validity, JIDs and removal stay; the DER goes")
            XCTAssertEqual(s, stores[0])
            XCTAssertEqual(s.rootDigest(), stores[0].rootDigest())
        }
        // A disabled record keeps its DER: XEP-0257 still lists it with its certificate.
        var disabled = ReplicatedStore(graceMillis: 1)
        _ = disabled.merge(StoreDelta(certificates: [add, disable]), nowMillis: 0)
        XCTAssertEqual(disabled.certificateRecord(id)?.content?.der, der)
        // Revoking it by name compacts it.
        _ = disabled.merge(StoreDelta(certificates: [revokeBare]), nowMillis: 0)
        XCTAssertEqual(disabled.certificateRecord(id)?.content?.der, [])
        XCTAssertEqual(disabled.certificateRecord(id)?.content?.notAfterMillis, 4_000_000_000_000)

        // The record-level join compacts too, and compaction commutes with it.
        XCTAssertEqual(add.merged(with: revokeBare), expected)
        XCTAssertEqual(revokeBare.merged(with: add), expected)
        XCTAssertEqual(revokeFull.compacted().merged(with: add), revokeFull.merged(with: add))
        XCTAssertEqual(add.compacted(), add, "a live record is not compacted")
    }

    func testRevokingByNameReturnsCompactedRecordsAndLoadCompactsOldRows() {
        var s = ReplicatedStore(graceMillis: 1)
        _ = s.appendCertificate(certID(alice, 1), content("phone", added: 1, origin: "n1"))
        let revoked = s.removeCertificates(domain: "first.com", user: alice, name: "phone", kind: .revoked,
                                           stamp: ts(2), origin: "n1")
        XCTAssertEqual(revoked.map { $0.content?.der }, [[]], "what the shell persists and gossips is compact")

        // A database written before compaction holds the DER of revoked rows: loading compacts
        // them (the shell spots such rows with `compacted() != record`); live and disabled rows
        // keep their DER.
        let oldRevokedRow = record(certID(alice, 1), content("phone", added: 1, origin: "n1"), removal(.revoked, 2, "n1"))
        let disabledRow = record(certID(alice, 2), content("laptop", added: 1, origin: "n1"), removal(.disabled, 2, "n1"))
        let liveRow = record(certID(alice, 3), content("tablet", added: 1, origin: "n1"))
        var restarted = ReplicatedStore(graceMillis: 1)
        restarted.loadCertificates([oldRevokedRow, disabledRow, liveRow])
        XCTAssertEqual([oldRevokedRow, disabledRow, liveRow].filter { $0.compacted() != $0 }.map(\.id), [certID(alice, 1)])
        XCTAssertEqual(restarted.certificateRecord(certID(alice, 1)), s.certificateRecord(certID(alice, 1)))
        XCTAssertEqual(restarted.certificateRecord(certID(alice, 1)), oldRevokedRow.compacted())
        XCTAssertEqual(restarted.certificateRecord(certID(alice, 2)), disabledRow)
        XCTAssertEqual(restarted.certificateRecord(certID(alice, 3)), liveRow)
    }

    /// The node persists `certificateChanges` before it merges: compacted like the merge
    /// stores them, and without what the merge refuses as expired.
    func testCertificateChangesPlanWhatTheMergeStores() {
        let id = certID(alice, 1), expired = certID(alice, 2)
        let add = record(id, content("phone", added: 100, origin: "n1"))
        let revoke = record(id, nil, removal(.revoked, 200, "n3"))
        let old = record(expired, content("old", added: 1, origin: "n1", notAfter: 0))
        var s = ReplicatedStore(graceMillis: 1)
        let now = UInt64(margin) + 1
        let planned = s.certificateChanges([add, revoke, old], nowMillis: now)
        XCTAssertEqual(planned, [add.merged(with: revoke)])
        XCTAssertEqual(planned.first?.content?.der, [])
        XCTAssertEqual(s.certificateChanges([add, revoke, old]).map(\.id), [id, expired], "without a time nothing is refused")
        XCTAssertEqual(s.merge(StoreDelta(certificates: [add, revoke, old]), nowMillis: now).certificatesChanged, planned)
    }

    /// Pins the encoding of a compacted record: digests are compared between processes and
    /// versions.
    func testCompactedRecordDigestIsStableAcrossProcesses() {
        var s = ReplicatedStore(graceMillis: 1, bucketCount: 4)
        _ = s.appendCertificate(certID(alice, 9), certContent("phone", added: ts(1_700_000_000_000, 3), origin: "node1"))
        _ = s.removeCertificates(domain: "first.com", user: alice, name: "phone", kind: .revoked,
                                 stamp: ts(1_700_000_000_001), origin: "node2")
        XCTAssertEqual(s.rootDigest(), 1_740_419_366_888_873_690)
    }

    func testExpiredRecordsAreForgottenAfterTheMarginAndNeverReadmitted() {
        let notAfter: Int64 = 10 * day
        let live = certID(alice, 1), revoked = certID(alice, 2), lasting = certID(alice, 3)
        var node = ReplicatedStore(graceMillis: 1)
        let empty = node
        _ = node.appendCertificate(lasting, content("desk", added: 1, origin: "n1", notAfter: 40 * day))
        let withLastingOnly = node
        _ = node.appendCertificate(live, content("phone", added: 2, origin: "n1", notAfter: notAfter))
        _ = node.appendCertificate(revoked, content("old", added: 3, origin: "n1", notAfter: notAfter))
        _ = node.removeCertificates(domain: "first.com", user: alice, name: "old", kind: .revoked, stamp: ts(4), origin: "n1")
        let stale = node                     // a replica that stops here and never forgets

        // Kept through the certificate's expiry and the whole margin.
        let forgetAt = UInt64(notAfter + margin)
        XCTAssertEqual(node.expireCertificates(nowMillis: UInt64(notAfter)), [])
        XCTAssertEqual(node.expireCertificates(nowMillis: forgetAt - 1), [])
        XCTAssertEqual(node, stale)
        XCTAssertEqual(node.expireCertificates(nowMillis: forgetAt), [live, revoked])
        XCTAssertEqual(node.certificates(domain: "first.com", user: alice).map(\.id), [lasting])
        XCTAssertEqual(node.expireCertificates(nowMillis: forgetAt), [], "nothing left to forget")
        // Forgotten means gone: the digest equals a replica that never saw the records.
        XCTAssertEqual(node, withLastingOnly)
        XCTAssertEqual(node.rootDigest(), withLastingOnly.rootDigest())
        XCTAssertNotEqual(node.rootDigest(), empty.rootDigest())

        // The stale replica's full state, its single records, or a 0.1.0 node's full records
        // bring nothing back: a record whose certificate expired is never admitted.
        for delta in [stale.fullDelta(), StoreDelta(certificates: stale.allCertificateRecords().reversed())] {
            let out = node.merge(delta, nowMillis: forgetAt)
            XCTAssertTrue(out.forwardable.isEmpty && out.certificatesChanged.isEmpty && out.certificatesForgotten.isEmpty)
            XCTAssertEqual(node, withLastingOnly)
        }
        var fresh = ReplicatedStore(graceMillis: 1)
        _ = fresh.merge(stale.fullDelta(), nowMillis: forgetAt + 1)
        XCTAssertEqual(fresh, withLastingOnly, "a joining node never takes in expired records either")

        // The stale replica forgets the same records by its own clock and converges.
        var laggard = stale
        _ = laggard.merge(node.fullDelta(), nowMillis: forgetAt)
        XCTAssertEqual(laggard.expireCertificates(nowMillis: forgetAt + 5), [live, revoked])
        XCTAssertEqual(laggard, node)
    }

    /// A removal that arrived without its content has no validity (rule 3): it is kept until
    /// the content arrives. Content that is still valid completes the record, which then
    /// expires like any other; content that has already expired forgets it at once.
    func testBareTombstoneIsKeptUntilItsContentArrives() {
        let notAfter: Int64 = 10 * day
        let forgetAt = UInt64(notAfter + margin)
        let id = certID(alice, 5)
        let bare = record(id, nil, removal(.revoked, 50, "n2"))
        let full = record(id, content("phone", added: 10, origin: "n1", notAfter: notAfter))

        var s = ReplicatedStore(graceMillis: 1)
        _ = s.merge(StoreDelta(certificates: [bare]), nowMillis: 0)
        XCTAssertEqual(s.expireCertificates(nowMillis: UInt64.max), [], "no validity, never forgotten on its own")
        XCTAssertEqual(s.certificateRecord(id), bare)

        var completed = s
        let joined = completed.merge(StoreDelta(certificates: [full]), nowMillis: 5)
        XCTAssertEqual(joined.certificatesChanged.map(\.id), [id])
        XCTAssertEqual(completed.certificateRecord(id)?.content?.der, [], "completed and compacted")
        XCTAssertEqual(completed.expireCertificates(nowMillis: forgetAt), [id])
        XCTAssertEqual(completed, ReplicatedStore(graceMillis: 1))

        // A 0.1.0 node still holding the expired content sends it: the tombstone goes.
        var cleaned = s
        let out = cleaned.merge(StoreDelta(certificates: [full]), nowMillis: forgetAt)
        XCTAssertEqual(out.certificatesForgotten, [id])
        XCTAssertTrue(out.certificatesChanged.isEmpty && out.forwardable.isEmpty, "forgetting is not news to gossip")
        XCTAssertEqual(cleaned, ReplicatedStore(graceMillis: 1))
        XCTAssertEqual(cleaned.rootDigest(), ReplicatedStore(graceMillis: 1).rootDigest())

        // Within one delta: forgotten, then the bare tombstone again: stored, reported as
        // changed and not as forgotten.
        var within = s
        let both = within.merge(StoreDelta(certificates: [full, bare]), nowMillis: forgetAt)
        XCTAssertEqual(both.certificatesForgotten, [])
        XCTAssertEqual(both.certificatesChanged, [], "it ends as it started")
        XCTAssertEqual(within, s)

        // A held record whose content is valid is not forgotten by a conflicting expired
        // content (only a faulty peer sends two validities for one DER).
        var held = ReplicatedStore(graceMillis: 1)
        _ = held.merge(StoreDelta(certificates: [record(id, content("phone", added: 10, origin: "n1", notAfter: 40 * day))]),
                       nowMillis: 0)
        let before = held
        XCTAssertTrue(held.merge(StoreDelta(certificates: [full]), nowMillis: forgetAt).certificatesForgotten.isEmpty)
        XCTAssertEqual(held, before)
    }

    func testExpiryHandlesExtremeValiditiesWithoutTrapping() {
        var s = ReplicatedStore(graceMillis: 1)
        _ = s.appendCertificate(certID(alice, 1), content("max", added: 1, origin: "n1", notAfter: Int64.max))
        _ = s.appendCertificate(certID(alice, 2), content("min", added: 1, origin: "n1", notAfter: Int64.min))
        XCTAssertEqual(s.expireCertificates(nowMillis: 0), [certID(alice, 2)])
        XCTAssertEqual(s.expireCertificates(nowMillis: UInt64.max), [certID(alice, 1)])
        var t = ReplicatedStore(graceMillis: 1)
        let out = t.merge(StoreDelta(certificates: [record(certID(alice, 3), content("min", added: 1, origin: "n1",
                                                                                      notAfter: Int64.min))]), nowMillis: 0)
        XCTAssertTrue(out.certificatesChanged.isEmpty)
    }

    /// Several records for one id in a delta are reported once, with their combined effect, in
    /// the order of first touch, whether the id was new, held, or forgotten and admitted again
    /// within the delta (the merge keeps no index of touched ids until an id it touches was
    /// held: this checks both sides of that switch).
    func testADeltaTouchingIdsSeveralTimesReportsEachOnceWithItsCombinedEffect() {
        let now = UInt64(margin) + 1
        let held = certID(alice, 1), newA = certID(alice, 2), newB = certID(alice, 3), tombstone = certID(alice, 4)
        var s = ReplicatedStore(graceMillis: 1)
        _ = s.merge(StoreDelta(certificates: [record(held, content("desk", added: 1, origin: "n1")),
                                              record(tombstone, nil, removal(.revoked, 2, "n2"))]), nowMillis: now)
        let expiredCopy = record(tombstone, content("gone", added: 1, origin: "n1", notAfter: 0))
        let readded = record(tombstone, content("gone", added: 1, origin: "n1"))
        let delta = [
            record(newA, content("phone", added: 10, origin: "n1")),
            record(newB, content("laptop", added: 11, origin: "n1")),
            record(newA, nil, removal(.disabled, 12, "n1")),
            record(held, nil, removal(.revoked, 13, "n2")),
            expiredCopy,  // forgets the bare tombstone
            readded,      // and its id comes back within the same delta
            record(newB, nil, removal(.revoked, 14, "n3")),
        ]
        let planned = s.certificateChanges(delta, nowMillis: now)
        let out = s.merge(StoreDelta(certificates: delta), nowMillis: now)
        XCTAssertEqual(out.certificatesChanged.map(\.id), [newA, newB, held, tombstone])
        // The re-admitted copy is live: its bare tombstone was forgotten with the expired copy.
        XCTAssertEqual(out.certificatesChanged.map(\.removal?.kind), [.disabled, .revoked, .revoked, nil])
        XCTAssertEqual(out.certificatesNewlyRemoved.map(\.id), [newA, newB, held])
        XCTAssertEqual(out.certificatesForgotten, [], "forgotten and stored again: a change, not a deletion")
        XCTAssertEqual(Set(out.certificatesChanged.map(\.id)), Set(planned.map(\.id)))
        for changed in out.certificatesChanged { XCTAssertEqual(s.certificateRecord(changed.id), changed) }
    }
}
