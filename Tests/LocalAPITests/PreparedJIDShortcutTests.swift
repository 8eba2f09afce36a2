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

    /// Every string of up to 4 characters over the characters the shortcut decides on and their
    /// neighbours: whatever it accepts, full preparation leaves unchanged.
    func testShortcutNeverDisagreesWithPreparation() {
        let alphabet = Array("a0.-_+@AZé/ :".unicodeScalars)
        var strings = [""]
        var accepted = 0
        for _ in 1...4 {
            strings = strings.flatMap { prefix in alphabet.map { prefix + String($0) } }
            for user in strings where JID.isPreparedBareASCII(user) {
                accepted += 1
                XCTAssertEqual(JID(user)?.description, user, user)
            }
        }
        XCTAssertGreaterThan(accepted, 100)
    }
}
