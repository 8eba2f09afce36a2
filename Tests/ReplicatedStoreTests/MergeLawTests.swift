import XCTest
import ReplicatedStore

/// Randomized CRDT laws. Small value ranges on purpose: id collisions, generation conflicts,
/// LWW ties and expiry boundaries all happen often.
final class MergeLawTests: XCTestCase {
    let grace: UInt64 = 5_000
    let keyPool = [KeyRef(domain: "a.com", name: "k1"), KeyRef(domain: "a.com", name: "k2"),
                   KeyRef(domain: "b.org", name: "k1"), KeyRef(domain: "b.org", name: "zz")]
    let nodes: [NodeID] = ["n1", "n2", "n3", "n4"]

    /// Validity of the certificate behind each fingerprint byte of `randomDelta`, relative to
    /// `expiryEpoch`: the id hashes the DER the validity comes from, so it is a function of the
    /// id in every real cluster. Fingerprint 0 is expired beyond the retention margin from the
    /// start, 1 and 2 become forgettable inside the tested time range, 3 never does.
    static let day: Int64 = 24 * 3600 * 1000
    static let expiryEpoch: UInt64 = 10 * 24 * 3600 * 1000
    static func notAfter(fingerprint: UInt8) -> Int64 {
        let epoch = Int64(expiryEpoch)
        switch fingerprint {
        case 0: return epoch - 2 * day
        case 1: return epoch
        case 2: return epoch + day
        default: return 4_000_000_000_000
        }
    }

    func randomDelta(_ rng: inout SeededGenerator) -> StoreDelta {
        randomDelta(&rng, expiring: false)
    }

    /// With `expiring`, certificates carry the validity of `notAfter(fingerprint:)` and bare
    /// tombstones use only the never-expiring fingerprint 3: a bare tombstone has no validity,
    /// and the compaction rule (ReplicatedStore+Certificates.swift, rule 3) documents that a
    /// bare tombstone meeting an already expired content is order-dependent.
    func randomDelta(_ rng: inout SeededGenerator, expiring: Bool) -> StoreDelta {
        var delta = StoreDelta()
        for _ in 0..<Int.random(in: 0...5, using: &rng) {
            let key = keyPool.randomElement(using: &rng)!
            let version = KeyVersion(
                id: vid(UInt64.random(in: 0...30, using: &rng) * 1_000, nodes.randomElement(using: &rng)!,
                        logical: UInt32.random(in: 0...1, using: &rng)),
                generation: UInt32.random(in: 0...3, using: &rng))
            delta.keyVersions[key, default: []].append(version)
        }
        let fingerprints: [[UInt8]] = [[], [1], [2], [1, 2]]
        for _ in 0..<Int.random(in: 0...3, using: &rng) {
            delta.pskFingerprints.append(PSKFingerprint(
                node: nodes.randomElement(using: &rng)!, key: keyPool.randomElement(using: &rng)!,
                fingerprint: fingerprints.randomElement(using: &rng)!,
                stamp: ts(UInt64.random(in: 0...3, using: &rng), UInt32.random(in: 0...1, using: &rng))))
        }
        // Certificates: few ids, names, stamps and origins, so concurrent adds of one id,
        // same-name duplicates, bare tombstones and removal ties all happen often.
        for _ in 0..<Int.random(in: 0...4, using: &rng) {
            let fingerprint = expiring ? UInt8.random(in: 0...3, using: &rng) : UInt8.random(in: 0...2, using: &rng)
            let id = certID(["alice@a.com", "bob@a.com"].randomElement(using: &rng)!, fingerprint, domain: "a.com")
            let bare = Int.random(in: 0...2, using: &rng) == 0 && (!expiring || fingerprint == 3)
            var content: CertificateContent? = bare ? nil : certContent(
                ["phone", "laptop"].randomElement(using: &rng)!,
                added: ts(UInt64.random(in: 0...2, using: &rng)), origin: nodes.randomElement(using: &rng)!,
                der: [UInt8.random(in: 0...1, using: &rng)])
            if expiring { content?.notAfterMillis = Self.notAfter(fingerprint: fingerprint) }
            let removed: CertificateRemoval? = content != nil && Bool.random(using: &rng) ? nil : removal(
                Bool.random(using: &rng) ? .disabled : .revoked, UInt64.random(in: 0...2, using: &rng),
                nodes.randomElement(using: &rng)!)
            delta.certificates.append(CertificateRecord(id: id, content: content, removal: removed))
        }
        // Token floors: two users, small floors and stamps, so equal-floor ties happen often.
        for _ in 0..<Int.random(in: 0...2, using: &rng) {
            delta.tokenSequenceFloors.append(TokenSequenceFloor(
                domain: "a.com", user: ["alice@a.com", "bob@a.com"].randomElement(using: &rng)!,
                floor: UInt64.random(in: 0...3, using: &rng),
                stamp: ts(UInt64.random(in: 0...2, using: &rng)), origin: nodes.randomElement(using: &rng)!))
        }
        return delta
    }

    func assertConverged(_ replicas: [ReplicatedStore], _ context: String, file: StaticString = #filePath, line: UInt = #line) {
        for r in replicas.dropFirst() {
            XCTAssertEqual(r, replicas[0], context, file: file, line: line)
            XCTAssertEqual(r.rootDigest(), replicas[0].rootDigest(), context, file: file, line: line)
            XCTAssertEqual(r.bucketDigests(), replicas[0].bucketDigests(), context, file: file, line: line)
        }
    }

    func testMergeIsIdempotentCommutativeAssociativeAtFixedTime() {
        var rng = SeededGenerator(seed: 0xC0FFEE)
        var distinctStatesSeen = 0
        var certificateChanges = 0
        var removedAndLiveSeen = 0
        var sameNameLiveSeen = 0
        for iteration in 0..<300 {
            let deltas = (0..<6).map { _ in randomDelta(&rng) }
            let now = UInt64.random(in: 0...40_000, using: &rng)
            let ctx = "iteration \(iteration) now \(now)"

            var replicas: [ReplicatedStore] = []
            for _ in 0..<4 {
                var r = ReplicatedStore(graceMillis: grace, bucketCount: 8)
                for d in deltas.shuffled(using: &rng) {
                    let before = r
                    let planned = before.certificateChanges(d.certificates, nowMillis: now)
                    let out = r.merge(d, nowMillis: now)
                    // The node persists `certificateChanges` before merging: exactly what the merge changes.
                    XCTAssertEqual(planned, out.certificatesChanged, ctx)
                    // `forwardable` carries the whole change and only input records.
                    var replay = before
                    _ = replay.merge(out.forwardable, nowMillis: now)
                    XCTAssertEqual(replay, r, ctx)
                    for (k, vs) in out.forwardable.keyVersions {
                        for v in vs { XCTAssertTrue(d.keyVersions[k]?.contains(v) ?? false, ctx) }
                    }
                    XCTAssertTrue(out.forwardable.pskFingerprints.allSatisfy(d.pskFingerprints.contains), ctx)
                    XCTAssertEqual(out.pskChanged, !out.forwardable.pskFingerprints.isEmpty, ctx)
                    XCTAssertEqual(out.forwardable.certificates, out.certificatesChanged, ctx)
                    XCTAssertEqual(out.forwardable.tokenSequenceFloors, out.tokenSequenceFloorsChanged, ctx)
                    XCTAssertTrue(out.forwardable.tokenSequenceFloors.allSatisfy(d.tokenSequenceFloors.contains), ctx)
                    // A floor never goes down.
                    for old in before.allTokenSequenceFloors() {
                        XCTAssertGreaterThanOrEqual(r.tokenSequenceFloor(domain: old.domain, user: old.user)?.floor ?? 0, old.floor, ctx)
                    }
                    let inputIDs = Set(d.certificates.map(\.id))
                    XCTAssertTrue(out.certificatesChanged.allSatisfy { inputIDs.contains($0.id) }, ctx)
                    XCTAssertTrue(out.certificatesNewlyRemoved.allSatisfy(out.certificatesChanged.contains), ctx)
                    // A removal, once held, is never lost.
                    for old in before.allCertificateRecords() where old.removal != nil {
                        XCTAssertNotNil(r.certificates(domain: old.id.domain, user: old.id.user)
                            .first { $0.id == old.id }?.removal, ctx)
                    }
                    if before != r { certificateChanges += out.certificatesChanged.count }
                    // Digests equal iff states equal.
                    XCTAssertEqual(before == r, before.rootDigest() == r.rootDigest(), ctx)
                    if before != r { distinctStatesSeen += 1 }
                }
                replicas.append(r)
            }
            // Associativity: pre-merged groups, and one combined delta.
            var left = ReplicatedStore(graceMillis: grace, bucketCount: 8)
            var right = left
            for d in deltas[0..<3] { _ = left.merge(d, nowMillis: now) }
            for d in deltas[3...] { _ = right.merge(d, nowMillis: now) }
            var grouped = ReplicatedStore(graceMillis: grace, bucketCount: 8)
            _ = grouped.merge(right.fullDelta(), nowMillis: now)
            _ = grouped.merge(left.fullDelta(), nowMillis: now)
            var oneShot = ReplicatedStore(graceMillis: grace, bucketCount: 8)
            _ = oneShot.merge(combine(deltas), nowMillis: now)
            replicas += [grouped, oneShot]
            assertConverged(replicas, ctx)

            // Idempotence: re-applying anything already merged changes nothing and forwards nothing.
            var again = replicas[0]
            for d in deltas + [replicas[1].fullDelta()] {
                let out = again.merge(d, nowMillis: now)
                XCTAssertTrue(out.added.isEmpty && out.pruned.isEmpty && out.primaryChanged.isEmpty, ctx)
                XCTAssertFalse(out.pskChanged, ctx)
                XCTAssertTrue(out.certificatesChanged.isEmpty && out.certificatesNewlyRemoved.isEmpty, ctx)
                XCTAssertTrue(out.certificatesForgotten.isEmpty && out.tokenSequenceFloorsChanged.isEmpty, ctx)
                XCTAssertTrue(out.forwardable.isEmpty, ctx)
            }
            XCTAssertEqual(again, replicas[0], ctx)

            // Every replica lists the same records the same way. Nothing is hidden: the live
            // listing is every record with content and no removal, same-named ones included
            // (this replaced an assertion that live names were unique, the old hiding rule).
            for user in ["alice@a.com", "bob@a.com"] {
                let live = replicas[0].liveCertificates(domain: "a.com", user: user)
                XCTAssertEqual(live, replicas[0].certificates(domain: "a.com", user: user)
                    .filter { $0.content != nil && $0.removal == nil }, ctx)
                XCTAssertTrue(live.allSatisfy(\.isLive), ctx)
                if Set(live.compactMap(\.content?.name)).count < live.count { sameNameLiveSeen += 1 }
                // Compaction: a revoked record never holds its DER, a disabled or live one does.
                for record in replicas[0].certificates(domain: "a.com", user: user) {
                    guard let content = record.content else { continue }
                    XCTAssertEqual(content.der.isEmpty, record.removal?.kind == .revoked, ctx)
                }
                for r in replicas.dropFirst() {
                    XCTAssertEqual(r.liveCertificates(domain: "a.com", user: user), live, ctx)
                    XCTAssertEqual(r.certificates(domain: "a.com", user: user),
                                   replicas[0].certificates(domain: "a.com", user: user), ctx)
                }
                if !live.isEmpty && replicas[0].certificates(domain: "a.com", user: user).contains(where: { $0.removal != nil }) {
                    removedAndLiveSeen += 1
                }
            }
        }
        XCTAssertGreaterThan(distinctStatesSeen, 1_000, "generator too weak to exercise the laws")
        XCTAssertGreaterThan(certificateChanges, 1_000, "certificate paths not exercised")
        XCTAssertGreaterThan(removedAndLiveSeen, 20, "tombstones next to live records not exercised")
        XCTAssertGreaterThan(sameNameLiveSeen, 10, "same-named live records not exercised")
    }

    /// Replicas merge at different, advancing times and expire in between; after a final
    /// expire they must equal one merge of everything at the final time.
    func testConvergenceWithAdvancingTimeAndInterleavedExpiry() {
        var rng = SeededGenerator(seed: 42)
        var prunesSeen = 0
        for iteration in 0..<300 {
            let deltas = (0..<6).map { _ in randomDelta(&rng) }
            let finalNow = UInt64.random(in: 0...45_000, using: &rng)
            var reference = ReplicatedStore(graceMillis: grace, bucketCount: 8)
            _ = reference.merge(combine(deltas), nowMillis: finalNow)

            var replicas: [ReplicatedStore] = [reference]
            for _ in 0..<3 {
                var r = ReplicatedStore(graceMillis: grace, bucketCount: 8)
                var now: UInt64 = 0
                for d in deltas.shuffled(using: &rng) {
                    now = UInt64.random(in: now...finalNow, using: &rng)
                    let pruned = r.merge(d, nowMillis: now).pruned
                    prunesSeen += pruned.count
                    if Bool.random(using: &rng) { prunesSeen += r.expire(nowMillis: now).count }
                }
                _ = r.expire(nowMillis: finalNow)
                replicas.append(r)
            }
            assertConverged(replicas, "iteration \(iteration) finalNow \(finalNow)")
        }
        XCTAssertGreaterThan(prunesSeen, 50, "expiry paths not exercised")
    }

    /// The compaction rules of ReplicatedStore+Certificates.swift under the laws: certificates
    /// expire while replicas merge at different, advancing times and forget in between
    /// (`expireCertificates`), floors are merged alongside. At every fixed time the merge is
    /// idempotent, commutative and associative (expired records are simply never admitted),
    /// and after a final `expireCertificates` every replica equals one merge of everything at
    /// the final time: forgetting early or late, or never seeing a record, ends the same.
    func testCompactionAndExpiryKeepTheLaws() {
        var rng = SeededGenerator(seed: 0xE1_1E)
        var forgottenSeen = 0, refusedOnArrival = 0, revokedCompacted = 0
        let epoch = Self.expiryEpoch
        for iteration in 0..<300 {
            let deltas = (0..<6).map { _ in randomDelta(&rng, expiring: true) }
            let finalNow = epoch + UInt64.random(in: 0...(3 * UInt64(Self.day)), using: &rng)
            let ctx = "iteration \(iteration) finalNow \(finalNow)"

            // Fixed time: every order and grouping gives the same state.
            var fixed: [ReplicatedStore] = []
            for _ in 0..<3 {
                var r = ReplicatedStore(graceMillis: grace, bucketCount: 8)
                for d in deltas.shuffled(using: &rng) {
                    let before = r
                    let planned = before.certificateChanges(d.certificates, nowMillis: finalNow)
                    let out = r.merge(d, nowMillis: finalNow)
                    XCTAssertEqual(planned, out.certificatesChanged, ctx)
                    XCTAssertTrue(out.certificatesForgotten.isEmpty, "nothing held is expired at a fixed time; \(ctx)")
                    XCTAssertEqual(before == r, before.rootDigest() == r.rootDigest(), ctx)
                    refusedOnArrival += d.certificates.filter { $0.content?.isForgettable(atMillis: finalNow) ?? false }.count
                }
                fixed.append(r)
            }
            var oneShot = ReplicatedStore(graceMillis: grace, bucketCount: 8)
            _ = oneShot.merge(combine(deltas), nowMillis: finalNow)
            var again = oneShot
            let repeated = again.merge(combine(deltas), nowMillis: finalNow)
            XCTAssertTrue(repeated.forwardable.isEmpty && repeated.certificatesForgotten.isEmpty, ctx)
            assertConverged(fixed + [oneShot, again], ctx)
            // Nothing forgettable is ever held, and nothing forgettable at the final time
            // survives the final expireCertificates.
            for record in oneShot.allCertificateRecords() {
                XCTAssertFalse(record.content?.isForgettable(atMillis: finalNow) ?? false, ctx)
                if record.removal?.kind == .revoked && record.content != nil { revokedCompacted += 1 }
            }

            // Advancing time, with forgetting in between.
            var replicas: [ReplicatedStore] = [oneShot]
            for _ in 0..<3 {
                var r = ReplicatedStore(graceMillis: grace, bucketCount: 8)
                var now = epoch - 3 * UInt64(Self.day)
                for d in deltas.shuffled(using: &rng) {
                    now = UInt64.random(in: now...finalNow, using: &rng)
                    let out = r.merge(d, nowMillis: now)
                    forgottenSeen += out.certificatesForgotten.count
                    if Bool.random(using: &rng) {
                        let forgotten = r.expireCertificates(nowMillis: now)
                        forgottenSeen += forgotten.count
                        XCTAssertTrue(forgotten.allSatisfy { r.certificateRecord($0) == nil }, ctx)
                    }
                }
                let forgotten = r.expireCertificates(nowMillis: finalNow)
                forgottenSeen += forgotten.count
                XCTAssertEqual(r.expireCertificates(nowMillis: finalNow), [], "forgetting is idempotent; \(ctx)")
                replicas.append(r)
            }
            assertConverged(replicas, ctx)
            // A stale replica that saw everything early and never forgot cannot bring anything back.
            var stale = ReplicatedStore(graceMillis: grace, bucketCount: 8)
            _ = stale.merge(combine(deltas), nowMillis: 0)
            var target = replicas[1]
            let out = target.merge(stale.fullDelta(), nowMillis: finalNow)
            XCTAssertTrue(out.certificatesChanged.isEmpty && out.certificatesForgotten.isEmpty, ctx)
            XCTAssertEqual(target, replicas[1], ctx)
        }
        XCTAssertGreaterThan(forgottenSeen, 100, "forgetting not exercised")
        XCTAssertGreaterThan(refusedOnArrival, 100, "refusal of expired records not exercised")
        XCTAssertGreaterThan(revokedCompacted, 50, "compaction not exercised")
    }
}
