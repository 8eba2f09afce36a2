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
