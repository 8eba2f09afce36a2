import CertificateRegistry
@testable import KeystoreNode
import XCTest

/// `loadPersisted` skips libidn for users `JID.isPreparedBareASCII` accepts; that is only sound
/// if full preparation maps every such user to itself.
final class PreparedJIDShortcutTests: XCTestCase {
    func testAcceptedUsersArePreparedAlready() {
        let accepted = ["u1@first.com", "a@b", "a.b-c_d+e@x-y.example", "0@0", "user@1.2.3.4", "a@b.c.d",
                        String(repeating: "a", count: JID.maxPartBytes) + "@" + String(repeating: "b", count: JID.maxPartBytes)]
        for user in accepted {
            XCTAssertTrue(JID.isPreparedBareASCII(user), user)
            XCTAssertEqual(JID(user)?.description, user, user)
        }
        let refused = ["", "@b", "a@", "a", "A@b", "a@B", "a@b.", "a@.b", "a@b..c", "a@@b", "a@b@c", "a@b/r", "a b@c", "a@b_c",
                       "a@b+c", "é@x", "a@x\u{301}", "a\"@b", "a&@b", "a:b@c", "a@b\t", "\u{0}@b",
                       String(repeating: "a", count: JID.maxPartBytes + 1) + "@b", "a@" + String(repeating: "b", count: JID.maxPartBytes + 1)]
        for user in refused { XCTAssertFalse(JID.isPreparedBareASCII(user), user) }
    }

    /// Random strings over an alphabet of the characters the shortcut decides on and their
    /// neighbours: whatever it accepts, full preparation leaves unchanged.
    func testShortcutNeverDisagreesWithPreparation() {
        let alphabet = Array("ab09.-_+@/AZ é:\"".unicodeScalars)
        var generator = SplitMix64(seed: 16)
        var accepted = 0
        for _ in 0..<100_000 {
            let length = Int(generator.next() % 10) + 1
            var user = ""
            for _ in 0..<length { user.unicodeScalars.append(alphabet[Int(generator.next() % UInt64(alphabet.count))]) }
            guard JID.isPreparedBareASCII(user) else { continue }
            accepted += 1
            XCTAssertEqual(JID(user)?.description, user, user)
        }
        XCTAssertGreaterThan(accepted, 100)
    }
}

private struct SplitMix64 {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
