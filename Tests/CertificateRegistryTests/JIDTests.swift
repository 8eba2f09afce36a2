import Foundation
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

/// JIDs are prepared once, at parsing, with the stringprep profiles Prosody uses, so that canonically
/// equivalent spellings of one account are the same bytes everywhere (issue 11 item 6).
final class JIDPreparationTests: XCTestCase {
    /// Swift's `==` on String already treats NFC and NFD as equal; store keys, SQLite rows, digests and
    /// the wire compare bytes, so every assertion here is on UTF-8 bytes.
    private func bytes(_ jid: JID?) -> [UInt8]? { jid.map { Array($0.description.utf8) } }

    let nfc = "J\u{E9}r\u{F4}me"                  // Jérôme, precomposed
    let nfd = "Je\u{301}ro\u{302}me"              // the same, decomposed
    let upperNFD = "JE\u{301}RO\u{302}ME"

    func testCanonicallyEquivalentAndCaseVariantLocalpartsAreTheSameUserByteForByte() throws {
        XCTAssertNotEqual(Array(nfc.utf8), Array(nfd.utf8), "the inputs really differ in bytes")
        let expected = Array("j\u{E9}r\u{F4}me@first.com".utf8)
        for spelling in [nfc, nfd, nfc.uppercased(), upperNFD, "j\u{E9}r\u{F4}me"] {
            let parsed = try JID(parsing: "\(spelling)@First.COM")
            XCTAssertEqual(bytes(parsed), expected, "\(spelling.unicodeScalars.map { String($0.value, radix: 16) })")
            XCTAssertEqual(Array(parsed.bare.description.utf8), expected)
        }
        // Compatibility forms and case folding beyond ASCII, as nodeprep defines them.
        XCTAssertEqual(bytes(JID("Stra\u{DF}e@first.com")), Array("strasse@first.com".utf8))
        XCTAssertEqual(bytes(JID("\u{FB03}x@first.com")), Array("ffix@first.com".utf8))
        XCTAssertEqual(bytes(JID("soft\u{AD}hyphen@first.com")), Array("softhyphen@first.com".utf8), "mapped to nothing")
        // Separators are found by scalar: a joiner or combining mark after '/' or '@' does not hide them.
        XCTAssertEqual(try JID(parsing: "a@first.com/\u{200D}Phone").resource, "Phone")
        XCTAssertEqual(bytes(JID("a\u{AD}@first.com")), Array("a@first.com".utf8))
        // Resources keep their case but are normalized too.
        XCTAssertEqual(try JID(parsing: "a@first.com/Caf\u{65}\u{301}").resource.map { Array($0.utf8) }, Array("Caf\u{E9}".utf8))
    }

    func testPreparationIsIdempotent() throws {
        for text in ["\(nfd)@First.COM/Phone\u{FB03}", "Stra\u{DF}e@x.org", "\u{3300}@first.com"] {
            let once = try JID(parsing: text)
            XCTAssertEqual(bytes(try JID(parsing: once.description)), bytes(once), text)
        }
    }

    func testXmppAddrInNFDMatchesTheNFCUser() throws {
        // A client.cnf as users write it (FORMAT:UTF8 makes openssl take the bytes as UTF-8, not Latin-1).
        let made = try OpenSSLCLI.makeCert(extSection: UserCertificates.xmppAddrExtensions(["\(upperNFD)@first.com"]))
        let nfdBytes = Array("\(upperNFD)@first.com".utf8)
        XCTAssertTrue((0...(made.der.count - nfdBytes.count)).contains { Array(made.der[$0..<($0 + nfdBytes.count)]) == nfdBytes },
                      "the certificate carries the decomposed, upper-case spelling")
        let cert = try ParsedCertificate.parse(made.pem)
        XCTAssertEqual(cert.xmppAddrs.map { Array($0.description.utf8) }, [Array("j\u{E9}r\u{F4}me@first.com".utf8)])

        let user = try JID(parsing: "\(nfc)@first.com")
        XCTAssertNoThrow(try CertificateRules.checkAppend(cert, name: "laptop", user: user, existing: [], nowMillis: nowMillis()))
        let record = RegisteredCertificate(name: "laptop", user: user, certificate: cert, noCertManagement: false)
        let verdict = CertificateRules.verify(cert, authzid: nil, domain: "first.com", nowMillis: nowMillis()) { _ in [record] }
        XCTAssertEqual(try bytes(verdict.get()), Array("j\u{E9}r\u{F4}me@first.com".utf8))
        let withAuthzid = CertificateRules.verify(cert, authzid: JID("\(nfd)@first.com"), domain: "first.com", nowMillis: nowMillis()) { _ in [record] }
        XCTAssertEqual(try bytes(withAuthzid.get()), Array("j\u{E9}r\u{F4}me@first.com".utf8))
    }

    func testInvalidInputIsAClearErrorNamingThePart() {
        let table: [(String, JIDError)] = [
            ("", .empty),
            ("@first.com", .emptyPart(.localpart)),
            ("\u{AD}@first.com", .emptyPart(.localpart)),          // empty after preparation
            ("user@", .emptyPart(.domainpart)),
            ("user@first.com/", .emptyPart(.resourcepart)),
            ("us er@first.com", .prohibitedCharacters(.localpart)),
            ("us:er@first.com", .prohibitedCharacters(.localpart)),
            ("us\u{E000}er@first.com", .prohibitedCharacters(.localpart)),  // private use
            ("us\u{0}er@first.com", .prohibitedCharacters(.localpart)),
            ("user@first.com/ph\u{7}one", .prohibitedCharacters(.resourcepart)),
            ("user@fir st.com", .prohibitedCharacters(.domainpart)),
            ("\u{5D0}a@first.com", .bidiViolation(.localpart)),
            ("user@first..com", .emptyDomainLabel),
            (String(repeating: "a", count: 1024) + "@first.com", .partTooLong(.localpart)),
            // 300 bytes as written, 1200 after NFKC (each ㌀ becomes アパート): too long once prepared.
            (String(repeating: "\u{3300}", count: 100) + "@first.com", .partTooLong(.localpart)),
            ("user@first.com/" + String(repeating: "r", count: 1024), .partTooLong(.resourcepart)),
        ]
        for (input, expected) in table {
            XCTAssertThrowsError(try JID(parsing: input), input.debugDescription) { error in
                XCTAssertEqual(error as? JIDError, expected, input.debugDescription)
                let message = "\(error)"
                XCTAssertFalse(message.contains("\n"), message)
                XCTAssertFalse(message.contains("\u{0}") || message.contains("\u{7}"), "never echoes the input: \(message)")
            }
            XCTAssertNil(JID(input))
        }
        XCTAssertEqual(try JID(parsing: String(repeating: "a", count: 1023) + "@first.com").local?.utf8.count, 1023)
    }

    /// The same preparation as the XMPP server, checked against Prosody's own util.encodings (libidn)
    /// through lua5.4 on a fixed list and a seeded random corpus of awkward strings.
    func testPreparationIsByteIdenticalWithProsody() throws {
        var rng = SplitMix64(seed: 0x1D4)
        let alphabet: [String] = ["a", "Z", "0", ".", "-", " ", ":", "&", "'", "\u{7}", "\u{E9}", "e\u{301}", "\u{C9}",
                                  "\u{DF}", "\u{FB03}", "\u{3300}", "\u{AD}", "\u{200D}", "\u{5D0}", "\u{627}", "\u{1F600}",
                                  "\u{212B}", "\u{130}", "\u{3A3}", "\u{E000}", "\u{A0}", "\u{2028}", "\u{FF21}"]
        var samples = ["J\u{E9}r\u{F4}me", "Je\u{301}RO\u{302}me", "Stra\u{DF}e", "\u{5D0}\u{5D1}", "\u{5D0}a", "a\u{627}",
                       "\u{627}1\u{627}", String(repeating: "\u{3300}", count: 100), String(repeating: "x", count: 1023)]
        for _ in 0..<400 {
            samples.append((0..<Int.random(in: 1...8, using: &rng)).map { _ in alphabet.randomElement(using: &rng)! }.joined())
        }
        let profiles: [(prosody: String, part: JIDPart, ours: (String) -> [UInt8]?)] = [
            ("nodeprep", .localpart, { (try? JID(parsing: "\($0)@first.com").local).map { Array($0.utf8) } }),
            ("nameprep", .domainpart, { (try? JID(parsing: "u@\($0)").domain).map { Array($0.utf8) } }),
            ("resourceprep", .resourcepart, { (try? JID(parsing: "u@first.com/\($0)").resource).map { Array($0.utf8) } }),
        ]
        var queries: [String] = []
        for profile in profiles {
            for sample in samples {
                // Prosody's jid.prep strips one trailing dot from the domain before nameprep, as JID does.
                let input = profile.part == .domainpart && sample.unicodeScalars.last == "." ? String(sample.unicodeScalars.dropLast()) : sample
                queries.append("\(profile.prosody) \(hex(Array(input.utf8)))")
            }
        }
        let answers = try prosodyPrep(queries)
        XCTAssertEqual(answers.count, queries.count)
        var compared = 0
        for (index, (profile, sample)) in profiles.flatMap({ p in samples.map { (p, $0) } }).enumerated() where index < answers.count {
            // A part that prepares to nothing is refused here (Prosody's stringprep returns "" for it).
            let theirs = answers[index] == "nil" || answers[index].isEmpty ? nil : answers[index]
            let ours = profile.ours(sample).map(hex)
            let what = "\(profile.prosody)(\(sample.unicodeScalars.map { String($0.value, radix: 16) }))"
            if profile.part == .domainpart, ours == nil {
                // Stricter than nameprep on purpose: DNS labels, whitespace and punctuation (JID.checkDomain).
                continue
            }
            XCTAssertEqual(ours, theirs, what)
            compared += 1
        }
        XCTAssertGreaterThan(compared, 2 * samples.count, "most samples were compared")
    }

    private func hex(_ bytes: [UInt8]) -> String { bytes.map { String(format: "%02x", $0) }.joined() }

    /// Prosody's stringprep (util.encodings, libidn) for each "profile hexinput" line: hex output or "nil".
    private func prosodyPrep(_ queries: [String]) throws -> [String] {
        let script = """
            package.cpath = "/usr/lib/prosody/?.so;" .. package.cpath
            local stringprep = require("util.encodings").stringprep
            for line in io.lines() do
              local profile, input = line:match("^(%a+) (%x*)$")
              local text = input:gsub("..", function(h) return string.char(tonumber(h, 16)) end)
              local out = stringprep[profile](text)
              if out then
                io.write((out:gsub(".", function(c) return string.format("%02x", c:byte()) end)), "\\n")
              else
                io.write("nil\\n")
              end
            end
            """
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/lua5.4")
        process.arguments = ["-e", script]
        let input = Pipe(), output = Pipe()
        process.standardInput = input
        process.standardOutput = output
        process.standardError = output
        try process.run()
        let writer = Thread {
            input.fileHandleForWriting.write(Data((queries.joined(separator: "\n") + "\n").utf8))
            try? input.fileHandleForWriting.close()
        }
        writer.start()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw CommandFailed(description: "lua5.4 with Prosody's util.encodings failed (install prosody): \(text)")
        }
        return text.split(separator: "\n", omittingEmptySubsequences: false).dropLast().map(String.init)
    }
}
