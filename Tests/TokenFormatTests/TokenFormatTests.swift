import Foundation
import KeyCrypto
import SecretMemory
import TokenFormat
import XCTest

/// MongooseIM's token format, checked against an independent implementation written from the
/// format (not from the production code) with Python's hmac/hashlib/base64, run by Debian's
/// /usr/bin/python3: tokens made here must verify there and the other way round.
final class TokenFormatTests: XCTestCase {
    let arena = try! SecretArena()
    let keyBytes: [UInt8] = (0..<64).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 5) }
    let otherKeyBytes: [UInt8] = (0..<64).map { UInt8(truncatingIfNeeded: $0 &* 11 &+ 200) }

    func secret(_ bytes: [UInt8]) throws -> SecretBytes {
        try bytes.withUnsafeBytes { try SecretBytes.copy(of: $0, in: arena) }
    }

    // MARK: The independent implementation

    /// Written from the format description (mod_auth_token.erl's join_fields/serialize and
    /// Erlang's calendar), sharing nothing with TokenFormat: the Gregorian offset is computed
    /// from Python's proleptic calendar, not copied.
    static let python = #"""
    import base64, datetime, hashlib, hmac, json, sys
    # calendar:datetime_to_gregorian_seconds({{1970,1,1},{0,0,0}}): year 0 is a leap year.
    GREGORIAN_1970 = (datetime.date(1970, 1, 1).toordinal() + 365) * 86400
    request = json.load(sys.stdin)
    key = bytes.fromhex(request["key"])

    def make(t):
        fields = [t["kind"].encode(), t["jid"].encode("utf-8"), str(t["expires_unix"] + GREGORIAN_1970).encode()]
        if t["kind"] == "refresh":
            fields.append(str(t["sequence"]).encode())
        if t["kind"] == "provision":
            fields.append(t["vcard"].encode("utf-8"))
        body = b"\0".join(fields)
        mac = hmac.new(key, body, hashlib.sha384).hexdigest().encode()
        return base64.b64encode(body + b"\0" + mac).decode()

    def check(token):
        raw = base64.b64decode(token, validate=True)
        body, _, mac = raw.rpartition(b"\0")
        fields = body.split(b"\0")
        expected = hmac.new(key, body, hashlib.sha384).hexdigest().encode()
        result = {"valid": hmac.compare_digest(expected, mac), "kind": fields[0].decode(),
                  "jid": fields[1].decode("utf-8"), "expires_unix": int(fields[2]) - GREGORIAN_1970,
                  "field_count": len(fields) + 1}
        if len(fields) > 3:
            result["extra"] = fields[3].decode("utf-8")
        return result

    print(json.dumps({"made": [make(t) for t in request["make"]], "checked": [check(t) for t in request["check"]]}))
    """#

    struct PythonRun {
        var made: [String]
        var checked: [[String: Any]]
    }

    /// A missing /usr/bin/python3 fails the test (house rule: never skip).
    func runPython(key: [UInt8], make: [[String: Any]], check: [String]) throws -> PythonRun {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        process.arguments = ["-c", Self.python]
        let input = Pipe(), output = Pipe(), errors = Pipe()
        process.standardInput = input
        process.standardOutput = output
        process.standardError = errors
        try process.run()
        let request: [String: Any] = ["key": key.map { String(format: "%02x", $0) }.joined(), "make": make, "check": check]
        input.fileHandleForWriting.write(try JSONSerialization.data(withJSONObject: request))
        try input.fileHandleForWriting.close()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        let stderr = errors.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        XCTAssertEqual(process.terminationStatus, 0, String(decoding: stderr, as: UTF8.self))
        let json = try XCTUnwrap(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        return PythonRun(made: try XCTUnwrap(json["made"] as? [String]), checked: try XCTUnwrap(json["checked"] as? [[String: Any]]))
    }

    // MARK: Fixtures

    /// Bodies covering the three kinds, full and bare JIDs, non-ASCII text, extreme numbers.
    var bodies: [TokenBody] {
        [
            TokenBody(jid: "alice@localhost", expiresAtUnixSeconds: 1_767_225_600, payload: .access),
            TokenBody(jid: "alice@localhost/phone", expiresAtUnixSeconds: 1_767_229_200, payload: .access),
            TokenBody(jid: "bob@example.org", expiresAtUnixSeconds: 1_769_385_600, payload: .refresh(sequence: 1)),
            TokenBody(jid: "ålice@exämple.org", expiresAtUnixSeconds: 4_102_444_800, payload: .refresh(sequence: UInt64.max)),
            TokenBody(jid: "carol@localhost", expiresAtUnixSeconds: 1_767_225_600,
                      payload: .provision(vcard: "<vCard xmlns='vcard-temp'><FN>Carol Ü</FN><NICKNAME>c&amp;c</NICKNAME></vCard>")),
            TokenBody(jid: "old@localhost", expiresAtUnixSeconds: 0, payload: .access),
        ]
    }

    func pythonRequest(_ body: TokenBody) -> [String: Any] {
        var t: [String: Any] = ["kind": body.kind.rawValue, "jid": body.jid, "expires_unix": body.expiresAtUnixSeconds]
        switch body.payload {
        case .access: break
        case .refresh(let sequence): t["sequence"] = NSNumber(value: sequence)
        case .provision(let vcard): t["vcard"] = vcard
        }
        return t
    }

    func swiftToken(_ body: TokenBody, key: SecretBytes) throws -> String {
        let signed = body.serialized
        return TokenFormat.base64Token(body: signed, mac: try KeyCrypto.hmac(algorithm: .sha384, key: key, input: signed))
    }

    // MARK: Cross-checks

    func testTokensMadeHereVerifyInTheIndependentImplementation() throws {
        let key = try secret(keyBytes), other = try secret(otherKeyBytes)
        let tokens = try bodies.map { try swiftToken($0, key: key) }
        let forged = try swiftToken(bodies[0], key: other)
        let run = try runPython(key: keyBytes, make: [], check: tokens + [forged])
        XCTAssertEqual(run.checked.count, bodies.count + 1)
        for (body, result) in zip(bodies, run.checked) {
            XCTAssertEqual(result["valid"] as? Bool, true, "\(body)")
            XCTAssertEqual(result["kind"] as? String, body.kind.rawValue)
            XCTAssertEqual(result["jid"] as? String, body.jid)
            XCTAssertEqual((result["expires_unix"] as? NSNumber)?.int64Value, body.expiresAtUnixSeconds)
            XCTAssertEqual(result["field_count"] as? Int, body.kind == .access ? 4 : 5)
            switch body.payload {
            case .access: XCTAssertNil(result["extra"])
            case .refresh(let sequence): XCTAssertEqual(result["extra"] as? String, String(sequence))
            case .provision(let vcard): XCTAssertEqual(result["extra"] as? String, vcard)
            }
        }
        XCTAssertEqual(run.checked.last?["valid"] as? Bool, false, "a token signed with another key does not verify")
    }

    func testTokensMadeByTheIndependentImplementationParseAndVerifyHere() throws {
        let key = try secret(keyBytes), other = try secret(otherKeyBytes)
        let run = try runPython(key: keyBytes, make: bodies.map(pythonRequest), check: [])
        XCTAssertEqual(run.made.count, bodies.count)
        for (body, token) in zip(bodies, run.made) {
            let parsed = try TokenFormat.parse(base64: token)
            XCTAssertEqual(parsed.body, body)
            XCTAssertEqual(parsed.signedBytes, body.serialized, "the MAC covers exactly the canonical body")
            // Verified against the active versions, as after a rotation: the signing key is second.
            XCTAssertEqual(try KeyCrypto.verify(algorithm: .sha384, keys: [other, key], input: parsed.signedBytes, mac: parsed.mac), 1)
            XCTAssertNil(try KeyCrypto.verify(algorithm: .sha384, keys: [other], input: parsed.signedBytes, mac: parsed.mac))
            // Byte for byte the token this side makes.
            XCTAssertEqual(try swiftToken(body, key: key), token)
        }
        // Tampering with any field keeps the token well-formed but breaks the MAC.
        var raw = Array(Data(base64Encoded: run.made[2])!)
        raw[raw.firstIndex(of: UInt8(ascii: "b"))!] = UInt8(ascii: "c")      // bob -> cob
        let tampered = try TokenFormat.parse(serialized: raw)
        XCTAssertEqual(tampered.body.jid, "cob@example.org")
        XCTAssertNil(try KeyCrypto.verify(algorithm: .sha384, keys: [key], input: tampered.signedBytes, mac: tampered.mac))
    }

    // MARK: Format details

    func testExpiryIsGregorianSecondsAndDefaultsAreMongooseIMs() {
        XCTAssertEqual(TokenFormat.gregorianEpochOffsetSeconds, 62_167_219_200)
        let body = TokenBody(jid: "a@b", expiresAtUnixSeconds: 1_767_225_600, payload: .access)
        XCTAssertEqual(body.expiryGregorianSeconds, 63_934_444_800)
        XCTAssertEqual(String(decoding: body.serialized, as: UTF8.self), "access\u{0}a@b\u{0}63934444800")
        XCTAssertEqual(String(decoding: TokenBody(jid: "a@b", expiryGregorianSeconds: 7, payload: .refresh(sequence: 12)).serialized,
                              as: UTF8.self), "refresh\u{0}a@b\u{0}7\u{0}12")
        XCTAssertEqual(TokenFormat.defaultValiditySeconds(.access), 3600)
        XCTAssertEqual(TokenFormat.defaultValiditySeconds(.refresh), 25 * 86400)
        XCTAssertEqual(TokenFormat.defaultValiditySeconds(.provision), 3600)
        // Out-of-range expiries clamp instead of wrapping.
        XCTAssertEqual(TokenBody(jid: "a@b", expiresAtUnixSeconds: Int64.max, payload: .access).expiryGregorianSeconds, Int64.max)
        XCTAssertEqual(TokenBody(jid: "a@b", expiresAtUnixSeconds: Int64.min, payload: .access).expiryGregorianSeconds, 0)
        let serialized = TokenFormat.serialize(body: Array("access\u{0}a@b\u{0}1".utf8), mac: [0x00, 0xAB, 0xFF])
        XCTAssertEqual(String(decoding: serialized, as: UTF8.self), "access\u{0}a@b\u{0}1\u{0}00abff", "lowercase hex")
    }

    func testMalformedTokensAreRefusedWithAReason() {
        let mac = String(repeating: "ab", count: 48)
        func parse(_ text: String) -> TokenMalformation? {
            do { _ = try TokenFormat.parse(serialized: Array(text.utf8)); return nil } catch { return error }
        }
        func parse64(_ text: String) -> TokenMalformation? {
            do { _ = try TokenFormat.parse(base64: text); return nil } catch { return error }
        }
        XCTAssertNil(parse("access\u{0}a@b\u{0}63934444800\u{0}\(mac)"))
        XCTAssertNil(parse("access\u{0}a@b\u{0}0\u{0}\(mac.uppercased())"), "base16:decode accepts either case")
        XCTAssertEqual(parse("bearer\u{0}a@b\u{0}1\u{0}\(mac)"), .unknownType)
        XCTAssertEqual(parse("\u{0}a@b\u{0}1\u{0}\(mac)"), .unknownType)
        XCTAssertEqual(parse(""), .unknownType)
        XCTAssertEqual(parse("access\u{0}a@b\u{0}1\u{0}5\u{0}\(mac)"), .fieldCount(kind: .access, found: 5, expected: 4))
        XCTAssertEqual(parse("refresh\u{0}a@b\u{0}1\u{0}\(mac)"), .fieldCount(kind: .refresh, found: 4, expected: 5))
        XCTAssertEqual(parse("provision\u{0}a@b\u{0}1\u{0}<v/>\u{0}x\u{0}\(mac)"), .fieldCount(kind: .provision, found: 6, expected: 5))
        XCTAssertEqual(parse("access\u{0}\u{0}1\u{0}\(mac)"), .badJID)
        for expiry in ["", "0123", "-5", "+5", "1.5", "12a", "9223372036854775808", "99999999999999999999999"] {
            XCTAssertEqual(parse("access\u{0}a@b\u{0}\(expiry)\u{0}\(mac)"), .badExpiry, expiry)
        }
        XCTAssertNil(parse("access\u{0}a@b\u{0}9223372036854775807\u{0}\(mac)"))
        for sequence in ["", "01", "-1", "18446744073709551616", "x"] {
            XCTAssertEqual(parse("refresh\u{0}a@b\u{0}1\u{0}\(sequence)\u{0}\(mac)"), .badSequence, sequence)
        }
        XCTAssertNil(parse("refresh\u{0}a@b\u{0}1\u{0}0\u{0}\(mac)"))
        XCTAssertEqual(parse("provision\u{0}a@b\u{0}1\u{0}\u{0}\(mac)"), .badVCard)
        for bad in ["", String(mac.dropLast()), mac + "ab", String(mac.dropLast(2)) + "zz"] {
            XCTAssertEqual(parse("access\u{0}a@b\u{0}1\u{0}\(bad)"), .badMAC, bad)
        }
        var invalidUTF8 = Array("access\u{0}".utf8) + [0xC3, 0x28] + Array("\u{0}1\u{0}\(mac)".utf8)
        XCTAssertThrowsError(try TokenFormat.parse(serialized: invalidUTF8)) { XCTAssertEqual($0 as? TokenMalformation, .badJID) }
        invalidUTF8 = Array("provision\u{0}a@b\u{0}1\u{0}".utf8) + [0xFF] + Array("\u{0}\(mac)".utf8)
        XCTAssertThrowsError(try TokenFormat.parse(serialized: invalidUTF8)) { XCTAssertEqual($0 as? TokenMalformation, .badVCard) }

        // Base64: standard alphabet, padding optional, nothing else.
        let good = Data("access\u{0}a@b\u{0}1\u{0}\(mac)".utf8).base64EncodedString()
        XCTAssertNil(parse64(good))
        XCTAssertTrue(good.hasSuffix("=="))
        XCTAssertNil(parse64(String(good.dropLast(2))), "unpadded")
        for bad in ["!!!!", good + "\n", " " + good, good.replacingOccurrences(of: "+", with: "-") + "-", "A"] {
            XCTAssertEqual(parse64(bad), .notBase64, bad)
        }
        let huge = String(repeating: "A", count: 100_000)
        XCTAssertEqual(parse64(huge), .tooLong(bytes: 100_000, limit: (TokenFormat.maxTokenBytes + 2) / 3 * 4))
        XCTAssertEqual(parse(String(repeating: "a", count: TokenFormat.maxTokenBytes + 1)),
                       .tooLong(bytes: TokenFormat.maxTokenBytes + 1, limit: TokenFormat.maxTokenBytes))

        // A reason never repeats the token (a credential).
        let secretJID = "do-not-log-me@example.org"
        let refused = parse("access\u{0}\(secretJID)\u{0}01\u{0}\(mac)")
        XCTAssertEqual(refused, .badExpiry)
        XCTAssertFalse(refused?.description.contains(secretJID) ?? true)
    }
}
