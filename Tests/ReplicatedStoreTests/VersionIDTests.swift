import XCTest
import ReplicatedStore

final class VersionIDTests: XCTestCase {
    func testTextRoundTrip() {
        let samples = [vid(1_717_000_000_123, "node1", logical: 4), vid(0, "n", logical: 0),
                       vid(UInt64.max, "node.with.dots", logical: UInt32.max), vid(42, "ü-node")]
        for id in samples {
            XCTAssertEqual(VersionID(id.description), id, id.description)
        }
        XCTAssertEqual(vid(1_717_000_000_123, "node1", logical: 4).description, "1717000000123.4.node1")
    }

    func testGarbageIsRejected() {
        let garbage = ["", ".", "..", "1.2.", "1..n", ".2.n", "a.2.n", "1.b.n", "1.2", "12n",
                       "+1.2.n", "-1.2.n", " 1.2.n", "1 .2.n", "01.2.n", "1.02.n", "1.2.n n", "1.2.n\n",
                       "1.2.\u{0}", "18446744073709551616.0.n", "1.4294967296.n", "1.2.\u{7F}",
                       "99999999999999999999999.0.n", "1.2." + String(repeating: "x", count: 256),
                       "١.2.n"]
        for text in garbage {
            XCTAssertNil(VersionID(text), "accepted \(text.debugDescription)")
        }
        XCTAssertNotNil(VersionID("1.2." + String(repeating: "x", count: 255)))
    }

    func testOrderIsCreatedThenOrigin() {
        XCTAssertLessThan(vid(1, "b"), vid(2, "a"))
        XCTAssertLessThan(vid(1, "a", logical: 1), vid(1, "a", logical: 2))
        XCTAssertLessThan(vid(1, "a"), vid(1, "b"))
    }
}
