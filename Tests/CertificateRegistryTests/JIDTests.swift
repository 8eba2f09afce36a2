import TestSupport
import XCTest

@testable import CertificateRegistry

final class JIDTests: XCTestCase {
    func testParsingTable() {
        // input → (local, domain, resource), or nil when the JID must be rejected
        let long = String(repeating: "a", count: 1023)
        let table: [(String, (String?, String, String?)?)] = [
            ("user@first.com", ("user", "first.com", nil)),
            ("User@First.COM", ("user", "first.com", nil)),
            ("first.com", (nil, "first.com", nil)),
            ("first.com.", (nil, "first.com", nil)),
            ("user@first.com/Phone", ("user", "first.com", "Phone")),
            ("user@first.com/a/b@c d", ("user", "first.com", "a/b@c d")),
            ("first.com/res@x", (nil, "first.com", "res@x")),
            ("Ünïcode@Exämple.org", ("ünïcode", "exämple.org", nil)),
            ("\(long)@first.com", (long, "first.com", nil)),
            ("", nil),
            ("@first.com", nil),
            ("user@", nil),
            ("user@first.com/", nil),
            ("/res", nil),
            ("a@b@first.com", nil),
            ("us er@first.com", nil),
            ("us\"er@first.com", nil), ("us&er@first.com", nil), ("us'er@first.com", nil),
            ("us:er@first.com", nil), ("us<er@first.com", nil), ("us>er@first.com", nil),
            ("user@fir st.com", nil),
            ("user@first..com", nil), ("user@.first.com", nil), ("user@first.com..", nil), (".", nil),
            ("user@fir<st.com", nil), ("user@fir\\st.com", nil),
            ("user@[::1]", ("user", "[::1]", nil)),
            ("us\u{0}er@first.com", nil),
            ("user@first.com/ph\u{7}one", nil),
            ("user@first\n.com", nil),
            ("\(long)a@first.com", nil),
            ("user@first.com/\(long)a", nil),
        ]
        for (input, expected) in table {
            let parsed = JID(input)
            guard let (local, domain, resource) = expected else {
                XCTAssertNil(parsed, "\(input.debugDescription) must be rejected")
                continue
            }
            guard let parsed else { XCTFail("\(input.debugDescription) must parse"); continue }
            XCTAssertEqual(parsed.local, local, input)
            XCTAssertEqual(parsed.domain, domain, input)
            XCTAssertEqual(parsed.resource, resource, input)
        }
    }

    func testBareDescriptionAndEquality() {
        let full = jid("User@First.com/Desk")
        XCTAssertFalse(full.isBare)
        XCTAssertEqual(full.description, "user@first.com/Desk")
        XCTAssertEqual(full.bare, jid("user@first.com"))
        XCTAssertTrue(full.bare.isBare)
        XCTAssertEqual(full.bare.description, "user@first.com")
        XCTAssertNotEqual(jid("user@first.com/desk"), full, "resources are case-sensitive")
        XCTAssertEqual(Set([jid("a@b.c"), jid("A@B.C")]).count, 1)
        XCTAssertEqual(jid("first.com/x").description, "first.com/x")
    }

    func testRandomStringsNeverCrashAndRoundTrip() {
        var rng = SplitMix64(seed: 7)
        let alphabet = Array("aZ@/. \"&'<>:\u{0}\u{7f}éß😀1")
        for _ in 0..<5000 {
            let s = String((0..<Int.random(in: 0...12, using: &rng)).map { _ in alphabet.randomElement(using: &rng)! })
            if let j = JID(s) {
                XCTAssertEqual(JID(j.description), j, "description of \(s.debugDescription) must parse back to itself")
            }
        }
    }
}
