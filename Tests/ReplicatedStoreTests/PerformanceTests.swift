import XCTest
import ReplicatedStore

/// Prints figures for the lead; asserts only correctness, never timings (shared 2-core box).
final class PerformanceTests: XCTestCase {
    func testTimingsAtTenThousandKeys() {
        var delta = StoreDelta()
        for i in 0..<10_000 {
            let key = KeyRef(domain: "domain\(i % 50).example", name: "token_secret_\(i)")
            delta.keyVersions[key] = [KeyVersion(id: vid(1_000_000 + UInt64(i), "node\(i % 5)"), generation: 1),
                                      KeyVersion(id: vid(900_000 + UInt64(i), "node\(i % 3)"), generation: 0)]
        }
        let clock = ContinuousClock()
        var a = ReplicatedStore(graceMillis: 3_600_000)
        let mergeEmpty = clock.measure { _ = a.merge(delta, nowMillis: 1_500_000) }
        var b = a
        var noop = MergeOutcome()
        let mergeSame = clock.measure { noop = b.merge(delta, nowMillis: 1_500_000) }
        XCTAssertTrue(noop.forwardable.isEmpty)
        XCTAssertEqual(a.keyRefs().count, 10_000)

        var root: UInt64 = 0
        let rounds = 1_000
        let rootTime = clock.measure { for _ in 0..<rounds { root ^= a.rootDigest() } }
        XCTAssertEqual(a.rootDigest(), b.rootDigest())
        var buckets: [UInt64] = []
        let bucketTime = clock.measure { buckets = a.bucketDigests() }
        var bucketDelta = StoreDelta()
        let deltaTime = clock.measure { bucketDelta = a.delta(forBuckets: [3]) }
        XCTAssertFalse(bucketDelta.isEmpty)
        var pruned = 0
        let expireTime = clock.measure { pruned = b.expire(nowMillis: 5_000_000).count }
        XCTAssertEqual(pruned, 10_000)
        XCTAssertEqual(buckets.count, 64)
        print("""
            [ReplicatedStore timings, 10k keys x 2 versions, debug build unless -c release]
              merge into empty: \(mergeEmpty)
              merge identical (no-op): \(mergeSame)
              rootDigest: \(rootTime / rounds) per call
              bucketDigests: \(bucketTime)
              delta(forBuckets: [one]): \(deltaTime)
              expire pruning 10k versions: \(expireTime)
            """)
    }
}

extension PerformanceTests {
    /// Full sync of a registry with 100,000 records (a joining node's first anti-entropy), with
    /// certificate-sized DER so hashing cost is realistic. Prints, never asserts, timings.
    func testTimingsForFullSyncOfOneHundredThousandCertificates() {
        let count = 100_000
        // One shared buffer: the cost measured is hashing/copying 800 bytes per record, not RAM.
        let der = (0..<800).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        var records: [CertificateRecord] = []
        records.reserveCapacity(count)
        for i in 0..<count {
            let id = CertificateID(domain: "domain\(i % 20).example", user: "user\(i % 25_000)@domain\(i % 20).example",
                                   sha256: (0..<4).flatMap { _ in [UInt8(i & 0xFF), UInt8((i >> 8) & 0xFF), UInt8(i >> 16), 0xAB,
                                                                  1, 2, 3, 4] })
            let content = certContent("cert\(i)", added: ts(1_000_000 + UInt64(i)), origin: "node\(i % 5)", der: der)
            let removed = i % 10 == 0 ? removal(.disabled, 2_000_000 + UInt64(i), "node1") : nil
            records.append(CertificateRecord(id: id, content: content, removal: removed))
        }
        let clock = ContinuousClock()
        // What a peer's fullDelta() carries, built directly so the test pays for one store only.
        let full = StoreDelta(certificates: records)
        var joiner = ReplicatedStore(graceMillis: 3_600_000)
        var out = MergeOutcome()
        let mergeEmpty = clock.measure { out = joiner.merge(full, nowMillis: 3_000_000) }
        XCTAssertEqual(out.certificatesChanged.count, count)
        XCTAssertEqual(out.certificatesNewlyRemoved.count, count / 10)
        let mergeSame = clock.measure { out = joiner.merge(full, nowMillis: 3_000_000) }
        XCTAssertTrue(out.forwardable.isEmpty)

        var root: UInt64 = 0
        let rounds = 1_000
        let rootTime = clock.measure { for _ in 0..<rounds { root ^= joiner.rootDigest() } }
        var back = StoreDelta()
        let fullDeltaTime = clock.measure { back = joiner.fullDelta() }
        XCTAssertEqual(back.certificates.count, count)
        XCTAssertEqual(Set(back.certificates.map(\.id)), Set(records.map(\.id)))
        var bucket = StoreDelta()
        let bucketTime = clock.measure { bucket = joiner.delta(forBuckets: [5]) }
        XCTAssertFalse(bucket.certificates.isEmpty)
        let liveTime = clock.measure { _ = joiner.liveCertificates(domain: "domain3.example", user: "user3@domain3.example") }
        print("""
            [ReplicatedStore certificate timings, 100k records x 800-byte DER, debug build unless -c release]
              merge full sync into empty: \(mergeEmpty)
              merge identical full sync (no-op): \(mergeSame)
              rootDigest: \(rootTime / rounds) per call
              fullDelta: \(fullDeltaTime)
              delta(forBuckets: [one]): \(bucketTime)
              liveCertificates(one user): \(liveTime)
            """)
    }
}
