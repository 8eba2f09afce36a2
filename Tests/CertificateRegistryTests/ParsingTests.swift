import Foundation
import TestSupport
import XCTest

@testable import CertificateRegistry

final class ParsingTests: XCTestCase {
    // MARK: certificates made with the openssl CLI, as users make them

    func testBareJIDCertFromOpenSSLCLIParsesFromPEM() throws {
        let made = try OpenSSLCLI.makeCert(san: "otherName.0:1.3.6.1.5.5.7.8.5;UTF8:user@first.com")
        let cert = try ParsedCertificate.parse(made.pem)
        XCTAssertEqual(cert.xmppAddrs, [jid("user@first.com")])
        XCTAssertEqual(cert.der, made.der)
        XCTAssertEqual(cert.sha256.count, 32)
        XCTAssertTrue(cert.subject.contains("CN=user@first.com"), cert.subject)
        let now = nowMillis()
        XCTAssertLessThanOrEqual(cert.notBeforeMillis, now)
        XCTAssertGreaterThan(cert.notBeforeMillis, now - 600_000)
        XCTAssertEqual(Double(cert.notAfterMillis - cert.notBeforeMillis), 30 * 86_400_000, accuracy: 2000)
    }

    func testAltNamesSectionWithFormatUTF8AsInDesign() throws {
        let made = try OpenSSLCLI.makeCert(extSection: """
            subjectAltName = @alt_names
            [alt_names]
            otherName.0 = 1.3.6.1.5.5.7.8.5;FORMAT:UTF8,UTF8:user@first.com
            """)
        XCTAssertEqual(try ParsedCertificate.parse(made.pem).xmppAddrs, [jid("user@first.com")])
    }

    func testBase64DERWithWhitespaceParsesToSameCertificate() throws {
        let made = try OpenSSLCLI.makeCert(san: xmpp("user@first.com"))
        let b64 = base64(made.der)
        var wrapped = "  \r\n"
        for (i, c) in b64.enumerated() { wrapped.append(c); if i % 64 == 63 { wrapped += "\n\t" } }
        wrapped += "\n "
        let fromB64 = try ParsedCertificate.parse(wrapped)
        XCTAssertEqual(fromB64, try ParsedCertificate.parse(made.pem))
        XCTAssertEqual(fromB64, try ParsedCertificate.parse(der: made.der))
        XCTAssertEqual(try ParsedCertificate.parse(b64.replacingOccurrences(of: "=", with: "")), fromB64, "padding is optional")
    }

    func testPEMWithExplanatoryTextAroundItIsAccepted() throws {
        let made = try OpenSSLCLI.makeCert(san: xmpp("user@first.com"))
        let text = "subject=CN = user@first.com\nissuer=whatever\n" + made.pem + "\ntrailing notes\n"
        XCTAssertEqual(try ParsedCertificate.parse(text).der, made.der)
    }

    func testFingerprintMatchesOpenSSLCLI() throws {
        let directory = try makeScratchDirectory(prefix: "ks-x509")
        let made = try UserCertificates.make(extensions: "subjectAltName = \(xmpp("user@first.com"))",
                                             commonName: "user@first.com", in: directory.path, name: "client")
        let out = try openssl(["x509", "-noout", "-fingerprint", "-sha256", "-in", made.pemPath])
        // e.g. "sha256 Fingerprint=AB:CD:..."
        let value = try XCTUnwrap(out.split(separator: "=", maxSplits: 1).last)
        let expected = value.trimmingCharacters(in: .whitespacesAndNewlines).replacingOccurrences(of: ":", with: "").lowercased()
        XCTAssertEqual(expected.count, 64)
        XCTAssertEqual(try ParsedCertificate.parse(made.pem).fingerprintHex, expected)
    }

    func testFullJIDCert() throws {
        let made = try OpenSSLCLI.makeCert(san: xmpp("user@first.com/Phone"))
        let addrs = try ParsedCertificate.parse(made.pem).xmppAddrs
        XCTAssertEqual(addrs, [jid("user@first.com/Phone")])
        XCTAssertEqual(addrs.first?.resource, "Phone")
    }

    func testTwoJIDCertKeepsOrderAndDropsDuplicates() throws {
        let made = try OpenSSLCLI.makeCert(
            san: "\(xmpp("user@first.com")), \(xmpp("other@first.com")), \(xmpp("USER@first.com"))")
        XCTAssertEqual(try ParsedCertificate.parse(made.pem).xmppAddrs, [jid("user@first.com"), jid("other@first.com")])
    }

    func testCertWithoutSubjectAltNameParsesWithNoJIDs() throws {
        let made = try OpenSSLCLI.makeCert(san: nil)
        let cert = try ParsedCertificate.parse(made.pem)
        XCTAssertEqual(cert.xmppAddrs, [])
        XCTAssertEqual(cert.sha256.count, 32)
    }

    func testOtherSubjectAltNamesAreIgnored() throws {
        let made = try OpenSSLCLI.makeCert(
            san: "DNS:first.com, otherName:1.3.6.1.5.5.7.8.7;IA5:_xmpp-client.first.com, email:u@first.com, \(xmpp("user@first.com"))")
        XCTAssertEqual(try ParsedCertificate.parse(made.pem).xmppAddrs, [jid("user@first.com")])
    }

    func testNonUTF8StringXmppAddrIsRejected() throws {
        let made = try OpenSSLCLI.makeCert(san: "otherName:1.3.6.1.5.5.7.8.5;IA5:user@first.com")
        XCTAssertThrowsError(try ParsedCertificate.parse(made.pem)) { error in
            guard case let .invalidXmppAddr(reason) = error as? CertificateError else { return XCTFail("\(error)") }
            XCTAssertTrue(reason.contains("not a UTF8String"), reason)
        }
    }

    func testXmppAddrThatIsNotAJIDIsRejected() throws {
        let made = try OpenSSLCLI.makeCert(san: "\(xmpp("user@first.com")), \(xmpp("us<er@first.com"))")
        XCTAssertThrowsError(try ParsedCertificate.parse(made.pem)) { error in
            guard case let .invalidXmppAddr(reason) = error as? CertificateError else { return XCTFail("\(error)") }
            XCTAssertTrue(reason.contains("us<er@first.com"), reason)
        }
    }

    func testXmppAddrWithInvalidUTF8IsRejected() throws {
        let der = try CodeCert.make(san: xmpp("user@first.com"))
        let bad = try XCTUnwrap(patch(der, replacing: Array("user@".utf8), with: [0xC3, 0x28] + Array("er@".utf8)))
        XCTAssertEqual(try? ParsedCertificate.parse(der: der).xmppAddrs, [jid("user@first.com")], "control")
        XCTAssertThrowsError(try ParsedCertificate.parse(der: bad)) { error in
            XCTAssertEqual(error as? CertificateError, .invalidXmppAddr(reason: "UTF8String is not valid UTF-8"))
        }
    }

    func testXmppAddrWithEmbeddedNULIsRejectedWithEscapedMessage() throws {
        let der = try CodeCert.make(san: xmpp("user@first.com"))
        let bad = try XCTUnwrap(patch(der, replacing: Array("user@".utf8), with: Array("us\0r@".utf8)))
        XCTAssertThrowsError(try ParsedCertificate.parse(der: bad)) { error in
            guard case let .invalidXmppAddr(reason) = error as? CertificateError else { return XCTFail("\(error)") }
            XCTAssertTrue(reason.contains("us\\u{0}r@first.com"), reason)
            XCTAssertFalse(String(describing: error).contains("\0"))
        }
    }

    func testRepeatedSubjectAltNameExtensionIsRejected() throws {
        // Two SAN extensions would let a certificate show different names to different parsers.
        let der = try CodeCert.make(san: xmpp("user@first.com"), sanCopies: 2)
        XCTAssertThrowsError(try ParsedCertificate.parse(der: der)) { error in
            XCTAssertEqual(error as? CertificateError, .unparseable(reason: "subjectAltName extension is malformed or repeated"))
        }
    }

    func testUndecodableSubjectAltNameIsRejected() throws {
        let der = try CodeCert.make(san: xmpp("user@first.com"))
        // The otherName [0] tag inside the SAN extension's OCTET STRING becomes [5]: the certificate still
        // parses, its SAN does not.
        let sanOID: [UInt8] = [0x06, 0x03, 0x55, 0x1d, 0x11]
        let at = try XCTUnwrap((0...(der.count - sanOID.count)).first { Array(der[$0..<($0 + sanOID.count)]) == sanOID })
        var bad = der
        let otherNameTag = try XCTUnwrap((at..<der.count).first { der[$0] == 0xA0 })
        bad[otherNameTag] = 0xA5
        XCTAssertThrowsError(try ParsedCertificate.parse(der: bad)) { error in
            XCTAssertEqual(error as? CertificateError, .unparseable(reason: "subjectAltName extension is malformed or repeated"))
        }
    }

    // MARK: validity read exactly (certificates built in code)

    func testValidityIsReadToTheMillisecond() throws {
        let der = try CodeCert.make(san: xmpp("user@first.com"), notBefore: .absolute("20200101000000Z"),
                                    notAfter: .absolute("20600101000000Z"))
        let cert = try ParsedCertificate.parse(der: der)
        XCTAssertEqual(cert.notBeforeMillis, 1_577_836_800_000)  // UTCTime
        XCTAssertEqual(cert.notAfterMillis, 2_840_140_800_000)  // GeneralizedTime (year >= 2050)
        XCTAssertEqual(cert.subject, "CN=code-generated")
    }

    // MARK: bad input

    func testOversizedTextIsRejectedBeforeDecoding() {
        let text = String(repeating: "A", count: ParsedCertificate.maxInputBytes + 1)
        XCTAssertThrowsError(try ParsedCertificate.parse(text)) { error in
            XCTAssertEqual(error as? CertificateError, .tooLarge(bytes: 65537, limit: 65536))
        }
    }

    func testOversizedDERIsRejected() {
        XCTAssertThrowsError(try ParsedCertificate.parse(der: [UInt8](repeating: 0x30, count: 70_000))) { error in
            XCTAssertEqual(error as? CertificateError, .tooLarge(bytes: 70_000, limit: 65536))
        }
    }

    func testGarbageIsRejected() {
        let cases: [(String, CertificateError)] = [
            ("", .notPEMOrBase64),
            ("   \n", .notPEMOrBase64),
            ("hello, world!", .notPEMOrBase64),
            ("aGVsbG8", .unparseable(reason: "")),  // valid base64 of "hello", not DER
            ("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", .notPEMOrBase64),
            ("-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n", .notPEMOrBase64),
            ("-----BEGIN CERTIFICATE-----\n\n-----END CERTIFICATE-----\n", .notPEMOrBase64),
        ]
        for (input, expected) in cases {
            XCTAssertThrowsError(try ParsedCertificate.parse(input), input.debugDescription) { error in
                switch (error as? CertificateError, expected) {
                case (.unparseable?, .unparseable): break
                case let (got, want): XCTAssertEqual(got, want, input.debugDescription)
                }
            }
        }
        XCTAssertThrowsError(try ParsedCertificate.parse(der: [])) { error in
            XCTAssertEqual(error as? CertificateError, .unparseable(reason: "input is empty"))
        }
    }

    func testUnterminatedPEMIsRejected() throws {
        let made = try OpenSSLCLI.makeCert(san: xmpp("user@first.com"))
        let cut = String(made.pem.dropLast(26))  // drop "-----END CERTIFICATE-----\n"
        XCTAssertFalse(cut.contains("-----END"))
        XCTAssertThrowsError(try ParsedCertificate.parse(cut)) { error in
            XCTAssertEqual(error as? CertificateError, .notPEMOrBase64)
        }
    }

    func testPEMWithTwoCertificatesIsRejected() throws {
        let a = try OpenSSLCLI.makeCert(san: xmpp("user@first.com"))
        let b = try OpenSSLCLI.makeCert(san: xmpp("user@first.com"))
        XCTAssertThrowsError(try ParsedCertificate.parse(a.pem + b.pem)) { error in
            XCTAssertEqual(error as? CertificateError, .multipleCertificates)
            XCTAssertTrue(String(describing: error).contains("expected exactly one certificate"))
        }
    }

    func testConcatenatedDERIsRejectedAsMultipleCertificates() throws {
        let der = try CodeCert.make(san: xmpp("user@first.com"))
        XCTAssertThrowsError(try ParsedCertificate.parse(der: der + der)) { error in
            XCTAssertEqual(error as? CertificateError, .multipleCertificates)
        }
        XCTAssertThrowsError(try ParsedCertificate.parse(base64(der + der))) { error in
            XCTAssertEqual(error as? CertificateError, .multipleCertificates)
        }
    }

    func testTrailingGarbageAfterDERIsRejected() throws {
        let der = try CodeCert.make(san: xmpp("user@first.com"))
        XCTAssertThrowsError(try ParsedCertificate.parse(der: der + [0, 1, 2])) { error in
            XCTAssertEqual(error as? CertificateError, .trailingData(bytes: 3))
        }
    }

    func testTruncatedDERIsRejected() throws {
        let der = try CodeCert.make(san: xmpp("user@first.com"))
        XCTAssertThrowsError(try ParsedCertificate.parse(der: Array(der.dropLast(10)))) { error in
            guard case .unparseable? = error as? CertificateError else { return XCTFail("\(error)") }
        }
    }

    func testBase64DecoderIsStrict() {
        XCTAssertEqual(Base64.decode(Array("aGk=".utf8)[...]), Array("hi".utf8))
        XCTAssertEqual(Base64.decode(Array("aGk".utf8)[...]), Array("hi".utf8))
        XCTAssertEqual(Base64.decode(Array("aG\n k=".utf8)[...]), Array("hi".utf8))
        XCTAssertNil(Base64.decode(Array("aGl=".utf8)[...]), "non-zero leftover bits")
        XCTAssertNil(Base64.decode(Array("aGk=aGk=".utf8)[...]), "data after padding")
        XCTAssertNil(Base64.decode(Array("a".utf8)[...]))
        XCTAssertNil(Base64.decode(Array("aGk===".utf8)[...]))
        XCTAssertNil(Base64.decode(Array("aG-k".utf8)[...]), "base64url alphabet is not accepted")
    }

    // MARK: robustness

    func testRandomMutationsOfARealCertificateNeverCrash() throws {
        let der = try OpenSSLCLI.makeCert(san: "\(xmpp("user@first.com")), \(xmpp("o@first.com/r"))").der
        var rng = SplitMix64(seed: 0x5eed)
        var accepted = 0
        var rejected = 0
        for _ in 0..<3000 {
            var m = der
            for _ in 0..<Int.random(in: 1...4, using: &rng) {
                switch Int.random(in: 0..<5, using: &rng) {
                case 0: m[Int.random(in: 0..<m.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
                case 1: m[Int.random(in: 0..<m.count, using: &rng)] ^= 1 << UInt8.random(in: 0..<8, using: &rng)
                case 2: if m.count > 1 { m.removeSubrange(Int.random(in: 0..<m.count, using: &rng)...) }
                case 3: m.insert(UInt8.random(in: 0...255, using: &rng), at: Int.random(in: 0...m.count, using: &rng))
                default:  // length bytes are where parsers go wrong: hit small values near tags
                    let i = Int.random(in: 0..<m.count, using: &rng)
                    m[i] = [0x00, 0x7f, 0x80, 0x81, 0x82, 0x84, 0xff].randomElement(using: &rng) ?? 0
                }
                if m.isEmpty { m = [0x30] }
            }
            do {
                let cert = try ParsedCertificate.parse(der: m)
                XCTAssertEqual(cert.der, m)
                XCTAssertEqual(cert.sha256.count, 32)
                accepted += 1
            } catch {
                XCTAssertFalse(error.description.isEmpty)
                XCTAssertFalse(error.description.contains("\n"))
                rejected += 1
            }
            _ = try? ParsedCertificate.parse(base64(m))
        }
        XCTAssertGreaterThan(rejected, 1000, "mutations must actually exercise the rejection paths")
        XCTAssertGreaterThan(accepted, 0, "some mutations (e.g. in the signature) still parse")
    }

    func testErrorDescriptionsAreSingleLineAndActionable() {
        let errors: [CertificateError] = [
            .tooLarge(bytes: 1, limit: 2), .notPEMOrBase64, .unparseable(reason: "x"), .multipleCertificates,
            .trailingData(bytes: 3), .invalidXmppAddr(reason: "y"),
        ]
        for e in errors {
            XCTAssertFalse(e.description.contains("\n"), e.description)
            XCTAssertTrue(e.description.contains(":"), "must say what to do: \(e.description)")
        }
    }
}
