import XCTest
import ReplicatedStore

final class ClockTests: XCTestCase {
    func testNowIsStrictlyMonotonicEvenWhenWallStallsOrGoesBack() {
        var clock = HybridLogicalClock()
        var previous = clock.now(wallMillis: 1_000)
        XCTAssertEqual(previous, ts(1_000, 0))
        for wall: UInt64 in [1_000, 1_000, 999, 500, 1_000, 1_001, 1_001, 2_000, 1_500] {
            let t = clock.now(wallMillis: wall)
            XCTAssertGreaterThan(t, previous, "wall \(wall)")
            XCTAssertEqual(clock.last, t)
            previous = t
        }
        XCTAssertEqual(previous, ts(2_000, 1))  // 1_500 after 2_000 only bumps the counter
    }

    func testLogicalCounterExhaustionBorrowsNextMillisecondInsteadOfTrapping() throws {
        var clock = HybridLogicalClock()
        _ = try clock.observe(ts(10, UInt32.max), wallMillis: 10)
        XCTAssertEqual(clock.last, ts(11, 0))
        XCTAssertEqual(clock.now(wallMillis: 5), ts(11, 1))
    }

    func testObserveTakesMaxAndAdvances() throws {
        var clock = HybridLogicalClock()
        _ = clock.now(wallMillis: 1_000)                        // 1000.0
        // Remote ahead within drift: adopt its wall, counter + 1.
        XCTAssertEqual(try clock.observe(ts(1_500, 7), wallMillis: 1_000), ts(1_500, 8))
        // Remote behind: local counter advances.
        XCTAssertEqual(try clock.observe(ts(900, 50), wallMillis: 1_100), ts(1_500, 9))
        // Same wall as local: max counter + 1.
        XCTAssertEqual(try clock.observe(ts(1_500, 20), wallMillis: 1_200), ts(1_500, 21))
        // Physical clock passes both: counter resets.
        XCTAssertEqual(try clock.observe(ts(1_600, 3), wallMillis: 2_000), ts(2_000, 0))
        // A send after a receive is later than what was received (causality).
        let received = ts(2_000, 40)
        _ = try clock.observe(received, wallMillis: 2_000)
        XCTAssertGreaterThan(clock.now(wallMillis: 2_000), received)
    }

    func testRemoteTooFarAheadIsRejectedWithoutMovingTheClock() {
        var clock = HybridLogicalClock(maxForwardDriftMillis: 60_000)
        _ = clock.now(wallMillis: 1_000)
        let before = clock.last
        XCTAssertThrowsError(try clock.observe(ts(61_001), wallMillis: 1_000)) { error in
            XCTAssertEqual(error as? ClockError, .remoteTooFarAhead(by: 60_001))
            XCTAssertTrue("\(error)".contains("60001"))
        }
        XCTAssertEqual(clock.last, before)
        // Exactly at the limit is accepted.
        XCTAssertEqual(try clock.observe(ts(61_000), wallMillis: 1_000), ts(61_000, 1))
        // A hostile maximal timestamp neither traps nor is accepted.
        XCTAssertThrowsError(try clock.observe(ts(UInt64.max, UInt32.max), wallMillis: 1_000))
    }

    func testTimestampOrderIsWallThenLogical() {
        XCTAssertLessThan(ts(1, 9), ts(2, 0))
        XCTAssertLessThan(ts(2, 0), ts(2, 1))
        XCTAssertEqual(ts(3, 4).description, "3.4")
    }
}
