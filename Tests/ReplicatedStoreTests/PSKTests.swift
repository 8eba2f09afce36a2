import XCTest
@testable import ReplicatedStore
import TestSupport

final class PSKTests: XCTestCase {
    let psk1 = KeyRef(domain: "first.com", name: "provision_pre_shared")
    let psk2 = KeyRef(domain: "second.com", name: "provision_pre_shared")

    func fp(_ node: NodeID, _ key: KeyRef, _ bytes: [UInt8], _ wall: UInt64, _ logical: UInt32 = 0) -> PSKFingerprint {
        PSKFingerprint(node: node, key: key, fingerprint: bytes, stamp: ts(wall, logical))
    }

    func testLastWriterWinsInAnyOrder() {
        let records = [fp("n1", psk1, [1], 10), fp("n1", psk1, [2], 20), fp("n1", psk1, [], 15),
                       fp("n1", psk1, [0], 20), fp("n1", psk1, [3], 19, 9)]
        var rng = SplitMix64(seed: 3)
        var results: Set<[PSKFingerprint]> = []
        for _ in 0..<20 {
            var store = ReplicatedStore(graceMillis: 1)
            for r in records.shuffled(using: &rng) { _ = store.merge(StoreDelta(pskFingerprints: [r]), nowMillis: 0) }
            results.insert(store.pskFingerprints())
        }
        // Stamp 20 ties: larger bytes win.
        XCTAssertEqual(results, [[fp("n1", psk1, [2], 20)]])
    }

    func testSetLocalReportsChangesOnlyAndDeletionsAreKept() {
        var store = ReplicatedStore(graceMillis: 1)
        XCTAssertTrue(store.setLocalPSKFingerprint(fp("n1", psk1, [1], 10)))
        XCTAssertFalse(store.setLocalPSKFingerprint(fp("n1", psk1, [1], 10)), "identical")
        XCTAssertFalse(store.setLocalPSKFingerprint(fp("n1", psk1, [9], 9)), "older")
        let digest = store.rootDigest()
        XCTAssertTrue(store.setLocalPSKFingerprint(fp("n1", psk1, [], 11)))
        XCTAssertNotEqual(store.rootDigest(), digest)
        XCTAssertEqual(store.pskFingerprints(), [fp("n1", psk1, [], 11)])
        // A stale copy of the old fingerprint does not undo the deletion.
        let out = store.merge(StoreDelta(pskFingerprints: [fp("n1", psk1, [1], 10)]), nowMillis: 0)
        XCTAssertFalse(out.pskChanged)
        XCTAssertTrue(out.forwardable.isEmpty)
        XCTAssertEqual(store.pskFingerprints(), [fp("n1", psk1, [], 11)])
    }

    func testMergeForwardsOnlyTheWinningRecordPerSlot() {
        var store = ReplicatedStore(graceMillis: 1)
        let out = store.merge(StoreDelta(pskFingerprints: [fp("n1", psk1, [1], 10), fp("n1", psk1, [2], 12),
                                                          fp("n2", psk1, [1], 3)]), nowMillis: 0)
        XCTAssertTrue(out.pskChanged)
        XCTAssertEqual(out.forwardable.pskFingerprints, [fp("n1", psk1, [2], 12), fp("n2", psk1, [1], 3)])
    }

    /// Forwarded in the order of each slot's first change (the delta's own order, as
    /// deterministic as the input), not sorted: a 10,000-key join sorted 20,000 of them.
    func testForwardedRecordsKeepTheOrderOfFirstChange() {
        var store = ReplicatedStore(graceMillis: 1)
        let out = store.merge(StoreDelta(pskFingerprints: [fp("n2", psk1, [1], 3), fp("n1", psk1, [1], 10),
                                                          fp("n2", psk1, [5], 4)]), nowMillis: 0)
        XCTAssertEqual(out.forwardable.pskFingerprints, [fp("n2", psk1, [5], 4), fp("n1", psk1, [1], 10)])
    }

    /// `pskChanges` is what the node's caches of mismatches and declarations are keyed on: it
    /// must move with every accepted record and only then.
    func testPSKChangesCountsEveryAcceptedRecordAndNothingElse() {
        var store = ReplicatedStore(graceMillis: 1)
        XCTAssertEqual(store.pskChanges, 0)
        _ = store.merge(StoreDelta(pskFingerprints: [fp("n1", psk1, [1], 1), fp("n2", psk1, [1], 1)]), nowMillis: 0)
        XCTAssertEqual(store.pskChanges, 2)
        _ = store.merge(StoreDelta(pskFingerprints: [fp("n1", psk1, [1], 1), fp("n2", psk1, [9], 0)]), nowMillis: 0)
        XCTAssertEqual(store.pskChanges, 2, "a repeat and an older record change nothing")
        XCTAssertTrue(store.setLocalPSKFingerprint(fp("n1", psk1, [2], 2)))
        XCTAssertEqual(store.pskChanges, 3)
        _ = store.merge(StoreDelta(keyVersions: [psk2: [KeyVersion(id: vid(5, "n1"), generation: 0)]]), nowMillis: 0)
        XCTAssertEqual(store.pskChanges, 3, "key versions are not fingerprints")
    }

    func testMismatchesAmongAliveNodes() {
        var store = ReplicatedStore(graceMillis: 1)
        let records = [fp("n1", psk1, [1], 1), fp("n2", psk1, [1], 1), fp("n3", psk1, [2], 1),
                       fp("n1", psk2, [5], 1), fp("n2", psk2, [6], 1), fp("n3", psk2, [], 1)]
        _ = store.merge(StoreDelta(pskFingerprints: records), nowMillis: 0)

        XCTAssertEqual(store.pskMismatches(among: ["n1"]), [])
        XCTAssertEqual(store.pskMismatches(among: ["n1", "n3"]).map(\.key), [psk1])
        XCTAssertEqual(store.pskMismatches(among: ["n1", "n2"]),
                       [PSKMismatch(key: psk2, fingerprintsByNode: ["n1": [5], "n2": [6]])])
        XCTAssertEqual(store.pskMismatches(among: ["n1", "n2", "n3", "dead"]), [
            PSKMismatch(key: psk1, fingerprintsByNode: ["n1": [1], "n2": [1], "n3": [2]]),
            PSKMismatch(key: psk2, fingerprintsByNode: ["n1": [5], "n2": [6]]),
        ])
        // n3 fixes its deploy: the mismatch on psk1 disappears once the new record arrives.
        _ = store.merge(StoreDelta(pskFingerprints: [fp("n3", psk1, [1], 2)]), nowMillis: 0)
        XCTAssertEqual(store.pskMismatches(among: ["n1", "n2", "n3"]).map(\.key), [psk2])
        // A node that deleted its file is not a mismatch.
        _ = store.merge(StoreDelta(pskFingerprints: [fp("n2", psk2, [], 2)]), nowMillis: 0)
        XCTAssertEqual(store.pskMismatches(among: ["n1", "n2", "n3"]), [])
    }

    /// `pskMismatches` answers from counts kept as records change when no key disagrees: after
    /// every record of a random history (replacements, deletions, stale copies, re-added files)
    /// it must equal the mismatches computed from the records held, among every subset tried.
    func testMismatchesFollowEveryChangeOfARandomHistory() {
        let nodes: [NodeID] = ["n1", "n2", "n3"]
        let keys = [psk1, psk2, KeyRef(domain: "third.com", name: "k")]
        let fingerprints: [[UInt8]] = [[], [1], [2], [3]]
        func expected(_ store: ReplicatedStore, among alive: Set<NodeID>) -> [PSKMismatch] {
            var byKey: [KeyRef: [NodeID: [UInt8]]] = [:]
            for record in store.pskFingerprints() where alive.contains(record.node) && !record.isDeletion {
                byKey[record.key, default: [:]][record.node] = record.fingerprint
            }
            return byKey.filter { Set($0.value.values).count > 1 }.map { PSKMismatch(key: $0.key, fingerprintsByNode: $0.value) }
                .sorted { $0.key < $1.key }
        }
        var rng = SplitMix64(seed: 16)
        var sawMismatch = false, sawAgreement = false
        for _ in 0..<20 {
            var store = ReplicatedStore(graceMillis: 1)
            for step in 0..<60 {
                let record = fp(nodes.randomElement(using: &rng)!, keys.randomElement(using: &rng)!,
                                fingerprints.randomElement(using: &rng)!, UInt64(Int.random(in: 0...step, using: &rng)))
                if Bool.random(using: &rng) {
                    _ = store.merge(StoreDelta(pskFingerprints: [record]), nowMillis: 0)
                } else {
                    _ = store.setLocalPSKFingerprint(record)
                }
                // Kept exactly (not only never too low, which the answers above check): a count
                // that stays high would only cost the scan, but the scan on every health call.
                XCTAssertEqual(store.pskKeysDisagreeing, expected(store, among: Set(nodes)).count)
                for alive in [Set(nodes), ["n1", "n2"], ["n2", "n3"], ["n1"]] as [Set<NodeID>] {
                    let held = store.pskMismatches(among: alive)
                    XCTAssertEqual(held, expected(store, among: alive), "after \(record) among \(alive.sorted())")
                    if alive.count == 3 { if held.isEmpty { sawAgreement = true } else { sawMismatch = true } }
                }
            }
        }
        XCTAssertTrue(sawMismatch && sawAgreement, "the history reaches both")
    }
}
