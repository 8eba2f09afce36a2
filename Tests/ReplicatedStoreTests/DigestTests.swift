import XCTest
import ReplicatedStore
import TestSupport

final class DigestTests: XCTestCase {
    func populated(keys: Int, bucketCount: Int = 64) -> ReplicatedStore {
        var store = ReplicatedStore(graceMillis: 60_000, bucketCount: bucketCount)
        var delta = StoreDelta()
        for i in 0..<keys {
            delta.keyVersions[KeyRef(domain: "d\(i % 7).com", name: "key\(i)")] =
                [KeyVersion(id: vid(1_000 + UInt64(i), "node\(i % 3)"), generation: 0)]
        }
        delta.pskFingerprints = (0..<20).map {
            PSKFingerprint(node: "node\($0 % 3)", key: KeyRef(domain: "p.com", name: "psk\($0)"),
                           fingerprint: [UInt8($0), 7], stamp: ts(5))
        }
        _ = store.merge(delta, nowMillis: 2_000)
        return store
    }

    func testEqualStatesHaveEqualDigestsWhateverTheInsertionOrder() {
        let a = populated(keys: 300)
        var b = ReplicatedStore(graceMillis: 60_000)
        var rng = SplitMix64(seed: 9)
        let full = a.fullDelta()
        for key in full.keyVersions.keys.shuffled(using: &rng) {
            _ = b.merge(StoreDelta(keyVersions: [key: full.keyVersions[key]!]), nowMillis: 2_000)
        }
        for fp in full.pskFingerprints.shuffled(using: &rng) { _ = b.merge(StoreDelta(pskFingerprints: [fp]), nowMillis: 2_000) }
        XCTAssertEqual(a, b)
        XCTAssertEqual(a.rootDigest(), b.rootDigest())
        XCTAssertEqual(a.bucketDigests(), b.bucketDigests())
        XCTAssertEqual(ReplicatedStore.differingBuckets(mine: a.bucketDigests(), theirs: b.bucketDigests()), [])
        XCTAssertEqual(ReplicatedStore(graceMillis: 1).rootDigest(), ReplicatedStore(graceMillis: 1).rootDigest())
        XCTAssertNotEqual(ReplicatedStore(graceMillis: 1).rootDigest(), a.rootDigest())
    }

    /// Digests are compared between processes, so they must not depend on per-process seeds:
    /// pin the value of a fixed state.
    func testDigestIsStableAcrossProcesses() {
        var store = ReplicatedStore(graceMillis: 1_000, bucketCount: 4)
        _ = store.createInitialVersion(of: tokenKey, id: vid(1_700_000_000_000, "node1", logical: 2))
        _ = store.setLocalPSKFingerprint(PSKFingerprint(node: "node1", key: tokenKey, fingerprint: [1, 2, 3], stamp: ts(9, 1)))
        XCTAssertEqual(store.rootDigest(), 11_268_888_318_102_939_449)
        XCTAssertEqual(store.bucketDigests().count, 4)
        XCTAssertEqual(store.bucketDigests().filter { $0 != 0 }.count, 2, "key and PSK land in different buckets here")
    }

    func testDifferingBucketsIdentifyAOneEntryDifference() {
        let base = populated(keys: 500)
        let key = KeyRef(domain: "d3.com", name: "key10")

        var a = base, b = base
        _ = a.rotate(key, id: vid(3_000, "node1"))
        XCTAssertNotEqual(a.rootDigest(), b.rootDigest())
        var differing = ReplicatedStore.differingBuckets(mine: a.bucketDigests(), theirs: b.bucketDigests())
        XCTAssertEqual(differing.count, 1)
        let fromA = a.delta(forBuckets: differing)
        XCTAssertNotNil(fromA.keyVersions[key])
        XCTAssertLessThan(fromA.keyVersions.count, 40, "a bucket, not the state")
        _ = b.merge(fromA, nowMillis: 3_000)
        _ = a.merge(b.delta(forBuckets: differing), nowMillis: 3_000)
        XCTAssertEqual(a, b)
        XCTAssertEqual(a.rootDigest(), b.rootDigest())

        // One PSK record.
        _ = a.setLocalPSKFingerprint(PSKFingerprint(node: "node9", key: tokenKey, fingerprint: [1], stamp: ts(1)))
        differing = b.differingBuckets(mine: b.bucketDigests(), theirs: a.bucketDigests())
        XCTAssertEqual(differing.count, 1)
        XCTAssertEqual(a.delta(forBuckets: differing).pskFingerprints.filter { $0.node == "node9" }.count, 1)
        XCTAssertTrue(b.delta(forBuckets: differing).pskFingerprints.allSatisfy { $0.node != "node9" })
        _ = b.merge(a.delta(forBuckets: differing), nowMillis: 3_000)
        XCTAssertEqual(a.rootDigest(), b.rootDigest())

        // An expiry is a one-entry difference too.
        _ = a.expire(nowMillis: 3_000 + 60_000)
        differing = ReplicatedStore.differingBuckets(mine: a.bucketDigests(), theirs: b.bucketDigests())
        XCTAssertEqual(differing.count, 1)
        XCTAssertNotEqual(a.rootDigest(), b.rootDigest())
        _ = b.expire(nowMillis: 3_000 + 60_000)
        XCTAssertEqual(a, b)
        XCTAssertEqual(a.rootDigest(), b.rootDigest())
    }

    func testBucketEdgeCases() {
        XCTAssertEqual(ReplicatedStore.differingBuckets(mine: [1, 2], theirs: [1, 2, 3]), [0, 1, 2])
        XCTAssertEqual(ReplicatedStore.differingBuckets(mine: [1, 2, 3], theirs: [1, 5, 3]), [1])
        let store = populated(keys: 50, bucketCount: 0)     // clamped, not a trap
        XCTAssertEqual(store.bucketCount, 1)
        XCTAssertEqual(store.bucketDigests().count, 1)
        XCTAssertEqual(store.delta(forBuckets: [0]), store.fullDelta())
        XCTAssertTrue(store.delta(forBuckets: [-1, 7, Int.max]).isEmpty)
        XCTAssertNotEqual(populated(keys: 50, bucketCount: 8).rootDigest(), populated(keys: 50, bucketCount: 16).rootDigest())
    }

    /// Each section digest is the bucket digest of a store holding only that section's entries,
    /// through rotations, superseded fingerprints, revocations, expiry and raised floors; and a
    /// sectioned delta carries exactly the sections asked for.
    func testSectionDigestsAreTheDigestsOfEachSectionAlone() {
        var whole = populated(keys: 200, bucketCount: 16)
        var records = ReplicatedStore(graceMillis: 60_000, bucketCount: 16)
        for i in 0..<40 {
            _ = records.appendCertificate(certID("u\(i)@first.com", UInt8(i)), certContent("d", added: ts(10), origin: "node1"))
        }
        records.raiseTokenSequenceFloor(domain: "first.com", user: "u1@first.com", stamp: ts(11), origin: "node1")
        _ = whole.merge(records.fullDelta(), nowMillis: 2_000)
        func check(_ context: String, line: UInt = #line) {
            let full = whole.fullDelta()
            var versionsOnly = ReplicatedStore(graceMillis: 60_000, bucketCount: 16)
            _ = versionsOnly.merge(StoreDelta(keyVersions: full.keyVersions), nowMillis: 2_000)
            var pskOnly = ReplicatedStore(graceMillis: 60_000, bucketCount: 16)
            _ = pskOnly.merge(StoreDelta(pskFingerprints: full.pskFingerprints), nowMillis: 2_000)
            var durableOnly = ReplicatedStore(graceMillis: 60_000, bucketCount: 16)
            _ = durableOnly.merge(StoreDelta(certificates: full.certificates, tokenSequenceFloors: full.tokenSequenceFloors), nowMillis: 2_000)
            let sections = whole.sectionDigests()
            func short(_ digests: [UInt64]) -> [UInt16] { digests.map { UInt16(truncatingIfNeeded: $0) } }
            XCTAssertEqual(sections.keyVersions, short(versionsOnly.bucketDigests()), context, line: line)
            XCTAssertEqual(sections.pskFingerprints, short(pskOnly.bucketDigests()), context, line: line)
            XCTAssertEqual(sections.durable, short(durableOnly.bucketDigests()), context, line: line)
            XCTAssertEqual(whole.durableBucketDigests(), durableOnly.bucketDigests(), context, line: line)
        }
        check("populated")
        _ = whole.rotate(KeyRef(domain: "d3.com", name: "key10"), id: vid(3_000, "node1"))
        _ = whole.merge(StoreDelta(pskFingerprints: [PSKFingerprint(node: "node1", key: KeyRef(domain: "p.com", name: "psk1"),
                                                                    fingerprint: [9], stamp: ts(50))]), nowMillis: 2_000)
        _ = whole.removeCertificates(domain: "first.com", user: "u7@first.com", name: "d", kind: .revoked, stamp: ts(20), origin: "node2")
        whole.raiseTokenSequenceFloor(domain: "first.com", user: "u1@first.com", stamp: ts(21), origin: "node2")
        check("after changes to every section")
        _ = whole.expire(nowMillis: 10_000_000)
        check("after expiry")

        let buckets = Array(0..<16)
        let pskOnlyDelta = whole.delta(forBuckets: buckets, sections: Array(repeating: .pskFingerprints, count: 16))
        XCTAssertEqual(pskOnlyDelta, StoreDelta(pskFingerprints: whole.pskFingerprints()))
        let durableDelta = whole.delta(forBuckets: buckets, sections: Array(repeating: .durable, count: 16))
        XCTAssertTrue(durableDelta.keyVersions.isEmpty && durableDelta.pskFingerprints.isEmpty)
        XCTAssertEqual(durableDelta.certificates.count, 40)
        XCTAssertEqual(durableDelta.tokenSequenceFloors.count, 1)
        XCTAssertEqual(whole.delta(forBuckets: buckets, sections: Array(repeating: .all, count: 16)), whole.delta(forBuckets: buckets))
        XCTAssertEqual(whole.delta(forBuckets: [3], sections: [.keyVersions]).keyVersions,
                       whole.delta(forBuckets: [3]).keyVersions)
        XCTAssertTrue(whole.delta(forBuckets: [3], sections: [.keyVersions]).certificates.isEmpty)

        // Only a fingerprint differs: only that section of its bucket.
        var other = whole
        _ = other.merge(StoreDelta(pskFingerprints: [PSKFingerprint(node: "node2", key: KeyRef(domain: "p.com", name: "new"),
                                                                    fingerprint: [1], stamp: ts(60))]), nowMillis: 2_000)
        let differing = ReplicatedStore.differingBuckets(mine: whole.bucketDigests(), theirs: other.bucketDigests())
        XCTAssertEqual(differing.count, 1)
        XCTAssertEqual(whole.sectionDigests().differingSections(from: other.sectionDigests(), in: differing), [.pskFingerprints])
        XCTAssertEqual(whole.sectionDigests().differingSections(from: SectionDigests(keyVersions: [], pskFingerprints: [], durable: []),
                                                                in: differing), [.all], "another bucket count: whole buckets")
        XCTAssertEqual(whole.sectionDigests().differingSections(from: whole.sectionDigests(), in: differing), [.all],
                       "the totals differ but no section seems to (16-bit digests collided): the whole bucket")
    }

    /// The join of a node that kept its database: durable digests cover certificate records and
    /// token floors only, and the answer carries every key and PSK fingerprint but only the
    /// durable entries of the buckets that differ.
    func testDurableDigestsCoverOnlyRecordsAndFloorsAndTheJoinAnswerSendsOnlyDifferingBuckets() {
        var disk = ReplicatedStore(graceMillis: 60_000, bucketCount: 16)
        for i in 0..<40 {
            _ = disk.appendCertificate(certID("u\(i)@first.com", UInt8(i)), certContent("d", added: ts(10), origin: "node1"))
        }
        disk.raiseTokenSequenceFloor(domain: "first.com", user: "u1@first.com", stamp: ts(11), origin: "node1")
        var cluster = populated(keys: 100, bucketCount: 16)
        _ = cluster.merge(disk.fullDelta(), nowMillis: 2_000)
        XCTAssertEqual(cluster.durableBucketDigests(), disk.durableBucketDigests(), "keys and PSK fingerprints are not durable")
        XCTAssertNotEqual(cluster.bucketDigests(), disk.bucketDigests())
        XCTAssertTrue(ReplicatedStore(graceMillis: 1, bucketCount: 16).durableBucketDigests().allSatisfy { $0 == 0 })

        var answer = cluster.joinDelta(peerDurableDigests: disk.durableBucketDigests())
        XCTAssertEqual(answer.keyVersions, cluster.fullDelta().keyVersions)
        XCTAssertEqual(answer.pskFingerprints, cluster.pskFingerprints())
        XCTAssertEqual(answer.certificates, [])
        XCTAssertEqual(answer.tokenSequenceFloors, [])

        // Revoked and a floor raised on the cluster while the node was down: just those buckets.
        _ = cluster.removeCertificates(domain: "first.com", user: "u7@first.com", name: "d", kind: .revoked, stamp: ts(20), origin: "node2")
        cluster.raiseTokenSequenceFloor(domain: "first.com", user: "u1@first.com", stamp: ts(21), origin: "node2")
        answer = cluster.joinDelta(peerDurableDigests: disk.durableBucketDigests())
        XCTAssertTrue(answer.certificates.contains { $0.id.user == "u7@first.com" && $0.removal?.kind == .revoked })
        XCTAssertLessThan(answer.certificates.count, 40)
        XCTAssertEqual(answer.tokenSequenceFloors.map(\.floor), [3])
        var restarted = disk
        _ = restarted.merge(answer, nowMillis: 2_000)
        XCTAssertEqual(restarted, cluster, "what the full state would have given")

        // A peer with another bucket count: indices mean nothing, every durable entry goes.
        XCTAssertEqual(cluster.joinDelta(peerDurableDigests: Array(repeating: 1, count: 8)).certificates.count, 40)
        XCTAssertEqual(cluster.joinDelta(peerDurableDigests: []).certificates.count, 40)
    }

    /// A state answer is walked entry by entry over a copy of the store taken when it began:
    /// whatever the store does meanwhile, the walk gives what `fullDelta()` gave then, and
    /// `rewind` gives it again.
    func testAStateWalkGivesTheStateAsOfItsStart() {
        var store = populated(keys: 50, bucketCount: 16)
        for i in 0..<30 {
            _ = store.appendCertificate(certID("u\(i)@first.com", UInt8(i)), certContent("d", added: ts(10), origin: "node1"))
            store.raiseTokenSequenceFloor(domain: "first.com", user: "u\(i)@first.com", stamp: ts(11), origin: "node1")
        }
        let before = store.fullDelta()
        var walk = StateWalk(store)
        var entries: [StateWalk.Entry] = []
        for _ in 0..<20 { if let entry = walk.next() { entries.append(entry) } }
        _ = store.rotate(tokenKey, id: VersionID(created: ts(50), origin: "node2"))
        _ = store.setLocalPSKFingerprint(PSKFingerprint(node: "node7", key: tokenKey, fingerprint: [9], stamp: ts(51)))
        _ = store.removeCertificates(domain: "first.com", user: "u29@first.com", name: "d", kind: .revoked, stamp: ts(52), origin: "node2")
        _ = store.appendCertificate(certID("late@first.com", 99), certContent("d", added: ts(53), origin: "node2"))
        store.raiseTokenSequenceFloor(domain: "first.com", user: "u0@first.com", stamp: ts(54), origin: "node2")
        XCTAssertNotEqual(store.fullDelta(), before)
        while let entry = walk.next() { entries.append(entry) }

        var given = StoreDelta()
        for entry in entries {
            switch entry {
            case .pskFingerprint(let fingerprint): given.pskFingerprints.append(fingerprint)
            case .tokenFloor(let floor): given.tokenSequenceFloors.append(floor)
            case .keyVersions(let key, let versions): given.keyVersions[key] = versions
            case .certificate(let record): given.certificates.append(record)
            }
        }
        given.pskFingerprints.sort { ($0.key, $0.node) < ($1.key, $1.node) }  // a walk gives them unsorted
        XCTAssertEqual(given, before)
        XCTAssertEqual(given.certificates.count, 30)
        XCTAssertNil(walk.next())
        walk.rewind()
        XCTAssertEqual(walk.collected(), before)
    }

    /// Nodes of different versions compare these digests during a rolling upgrade, so the bytes
    /// each entry is hashed from must never change: pinned values, computed once, for one entry
    /// of each kind (non-ASCII strings included, since strings are hashed as their UTF-8 bytes).
    func testDigestsAreTheSameInEveryVersion() {
        var store = ReplicatedStore(graceMillis: 60_000, bucketCount: 16)
        _ = store.merge(StoreDelta(keyVersions: [KeyRef(domain: "zoé.example", name: "token_secret"): [KeyVersion(id: vid(1_000, "nöde1"), generation: 2)]],
                                   pskFingerprints: [PSKFingerprint(node: "node2", key: KeyRef(domain: "first.com", name: "psk"),
                                                                    fingerprint: [1, 2, 3, 4], stamp: ts(5, 1))]),
                        nowMillis: 2_000)
        _ = store.appendCertificate(certID("zoé@first.com", 7), certContent("phone ☎", added: ts(10, 2), origin: "node1", der: Array(0..<77)))
        _ = store.removeCertificates(domain: "first.com", user: "zoé@first.com", name: "phone ☎", kind: .disabled, stamp: ts(20), origin: "node3")
        store.raiseTokenSequenceFloor(domain: "first.com", user: "amy@first.com", stamp: ts(30), origin: "node2")
        XCTAssertEqual(store.rootDigest(), 6_087_670_476_677_814_670)
        XCTAssertEqual(store.durableBucketDigests().reduce(0, &+), 3_371_781_153_258_766_043)
    }
}
