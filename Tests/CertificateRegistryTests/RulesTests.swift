import XCTest

@testable import CertificateRegistry

final class AppendRulesTests: XCTestCase {
    let user = jid("user@first.com")

    func record(_ cert: ParsedCertificate, name: String, user: JID? = nil, removed: Bool = false) -> RegisteredCertificate {
        var r = RegisteredCertificate(name: name, user: user ?? self.user, certificate: cert, noCertManagement: false)
        r.removed = removed
        return r
    }

    func assertAppendFails(_ cert: ParsedCertificate, name: String = "laptop", user: JID? = nil,
                           existing: [RegisteredCertificate] = [], now: Int64? = nil, _ expected: RegistryError,
                           file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try CertificateRules.checkAppend(cert, name: name, user: user ?? self.user, existing: existing,
                                                             nowMillis: now ?? nowMillis()), file: file, line: line) { error in
            XCTAssertEqual(error as? RegistryError, expected, file: file, line: line)
        }
    }

    func testAcceptsBareJIDCertificateMadeWithOpenSSLCLI() throws {
        let cert = try ParsedCertificate.parse(OpenSSLCLI.makeCert(san: xmpp("user@first.com")).pem)
        XCTAssertNoThrow(try CertificateRules.checkAppend(cert, name: "laptop", user: user, existing: [], nowMillis: nowMillis()))
        let stored = RegisteredCertificate(name: "laptop", user: user, certificate: cert, noCertManagement: true)
        XCTAssertEqual(stored.fingerprintHex, cert.fingerprintHex)
        XCTAssertEqual(stored.xmppAddrs, [user])
        XCTAssertFalse(stored.removed)
    }

    func testAcceptsFullJIDCertificateForItsBareUser() throws {
        let cert = try ParsedCertificate.parse(OpenSSLCLI.makeCert(san: xmpp("user@first.com/Phone")).pem)
        XCTAssertNoThrow(try CertificateRules.checkAppend(cert, name: "phone", user: user, existing: [], nowMillis: nowMillis()))
    }

    func testAcceptsTwoJIDCertificateForEitherUser() throws {
        let cert = try ParsedCertificate.parse(der: CodeCert.make(san: "\(xmpp("user@first.com")), \(xmpp("other@first.com"))"))
        XCTAssertNoThrow(try CertificateRules.checkAppend(cert, name: "a", user: user, existing: [], nowMillis: nowMillis()))
        XCTAssertNoThrow(try CertificateRules.checkAppend(cert, name: "a", user: jid("other@first.com"), existing: [], nowMillis: nowMillis()))
    }

    func testRejectsCertificateNamingAnotherUser() throws {
        let cert = try ParsedCertificate.parse(der: CodeCert.make(san: "\(xmpp("other@first.com")), \(xmpp("user@second.com/x"))"))
        assertAppendFails(cert, .noXmppAddrForUser(user: user, found: [jid("other@first.com"), jid("user@second.com/x")]))
    }

    func testRejectsCertificateWithoutXmppAddr() throws {
        let cert = try ParsedCertificate.parse(OpenSSLCLI.makeCert(san: nil).pem)
        assertAppendFails(cert, .noXmppAddrForUser(user: user, found: []))
    }

    func testRejectsExpiredCertificate() throws {
        let cert = try ParsedCertificate.parse(der: CodeCert.make(san: xmpp("user@first.com"), notBefore: .relative(seconds: -7200),
                                                                  notAfter: .relative(seconds: -60)))
        assertAppendFails(cert, .expired(notAfter: cert.notAfterMillis))
    }

    func testRejectsNotYetValidCertificate() throws {
        let cert = try ParsedCertificate.parse(der: CodeCert.make(san: xmpp("user@first.com"), notBefore: .relative(seconds: 3600),
                                                                  notAfter: .relative(seconds: 7200)))
        assertAppendFails(cert, .notYetValid(notBefore: cert.notBeforeMillis))
    }

    func testValidityBoundsAreInclusive() throws {
        let cert = try ParsedCertificate.parse(der: CodeCert.make(san: xmpp("user@first.com"), notBefore: .absolute("20300101000000Z"),
                                                                  notAfter: .absolute("20300102000000Z")))
        for now in [cert.notBeforeMillis, cert.notAfterMillis] {
            XCTAssertNoThrow(try CertificateRules.checkAppend(cert, name: "n", user: user, existing: [], nowMillis: now))
        }
        assertAppendFails(cert, now: cert.notBeforeMillis - 1, .notYetValid(notBefore: cert.notBeforeMillis))
        assertAppendFails(cert, now: cert.notAfterMillis + 1, .expired(notAfter: cert.notAfterMillis))
    }

    func testRejectsNameUsedByLiveRecord() throws {
        let old = try ParsedCertificate.parse(der: CodeCert.make(san: xmpp("user@first.com")))
        let new = try ParsedCertificate.parse(der: CodeCert.make(san: xmpp("user@first.com")))
        assertAppendFails(new, name: "laptop", existing: [record(old, name: "laptop")], .nameInUse("laptop"))
    }

    func testAllowsNameOfRemovedRecordAndOfOtherUsers() throws {
        let old = try ParsedCertificate.parse(der: CodeCert.make(san: xmpp("user@first.com")))
        let new = try ParsedCertificate.parse(der: CodeCert.make(san: xmpp("user@first.com")))
        let existing = [record(old, name: "laptop", removed: true), record(old, name: "desk", user: jid("other@first.com"))]
        XCTAssertNoThrow(try CertificateRules.checkAppend(new, name: "laptop", user: user, existing: existing, nowMillis: nowMillis()))
        XCTAssertNoThrow(try CertificateRules.checkAppend(new, name: "desk", user: user, existing: existing, nowMillis: nowMillis()))
    }

    func testRejectsSameCertificateAlreadyRegistered() throws {
        let cert = try ParsedCertificate.parse(OpenSSLCLI.makeCert(san: xmpp("user@first.com")).pem)
        assertAppendFails(cert, name: "again", existing: [record(cert, name: "laptop")], .alreadyRegistered(name: "laptop"))
        // same name and same certificate: report the duplicate certificate, the more useful fact
        assertAppendFails(cert, name: "laptop", existing: [record(cert, name: "laptop")], .alreadyRegistered(name: "laptop"))
    }

    func testRejectsPreviouslyRemovedCertificateForever() throws {
        let cert = try ParsedCertificate.parse(der: CodeCert.make(san: xmpp("user@first.com")))
        assertAppendFails(cert, name: "new-name", existing: [record(cert, name: "laptop", removed: true)],
                          .previouslyRemoved(fingerprint: cert.fingerprintHex))
    }

    func testSameCertificateOfAnotherUserDoesNotBlock() throws {
        let cert = try ParsedCertificate.parse(der: CodeCert.make(san: "\(xmpp("user@first.com")), \(xmpp("other@first.com"))"))
        let theirs = [record(cert, name: "laptop", user: jid("other@first.com"), removed: true)]
        XCTAssertNoThrow(try CertificateRules.checkAppend(cert, name: "laptop", user: user, existing: theirs, nowMillis: nowMillis()))
    }

    func testRejectsBadNames() throws {
        let cert = try ParsedCertificate.parse(der: CodeCert.make(san: xmpp("user@first.com")))
        for bad in ["", String(repeating: "n", count: 129), "lap\ntop", "lap\u{0}top", "lap/top", String(repeating: "é", count: 65)] {
            XCTAssertThrowsError(try CertificateRules.checkAppend(cert, name: bad, user: user, existing: [], nowMillis: nowMillis()),
                                 bad.debugDescription) { error in
                guard case .badName? = error as? RegistryError else { return XCTFail("\(error)") }
            }
        }
        for good in ["n", String(repeating: "n", count: 128), "My Laptop (2025)", "phone@home"] {
            XCTAssertNoThrow(try CertificateRules.checkAppend(cert, name: good, user: user, existing: [], nowMillis: nowMillis()))
        }
    }

    func testRejectsFullJIDAsUser() throws {
        let cert = try ParsedCertificate.parse(der: CodeCert.make(san: xmpp("user@first.com/Phone")))
        assertAppendFails(cert, user: jid("user@first.com/Phone"), .userNotBare(jid("user@first.com/Phone")))
    }

    func testDescriptionsAreSingleLine() {
        let errors: [RegistryError] = [
            .certificate(.multipleCertificates), .notYetValid(notBefore: 1), .expired(notAfter: 2),
            .noXmppAddrForUser(user: user, found: []), .nameInUse("a\nb"), .alreadyRegistered(name: "x"),
            .previouslyRemoved(fingerprint: "ab"), .badName("why"), .userNotBare(jid("a@b/c")),
        ]
        for e in errors { XCTAssertFalse(e.description.contains("\n"), e.description) }
        XCTAssertTrue(RegistryError.noXmppAddrForUser(user: user, found: []).description.contains("user@first.com"))
    }
}

final class VerifyRulesTests: XCTestCase {
    let domain = "first.com"

    /// A registry view holding `records`; also records which accounts were looked up.
    final class Lookup {
        var records: [RegisteredCertificate]
        var asked: [JID] = []
        init(_ records: [RegisteredCertificate]) { self.records = records }
        func callAsFunction(_ user: JID) -> [RegisteredCertificate] {
            asked.append(user)
            return records.filter { $0.user == user }
        }
    }

    func registered(_ cert: ParsedCertificate, for users: [String], removed: Bool = false) -> Lookup {
        Lookup(users.map { u in
            var r = RegisteredCertificate(name: "n", user: jid(u), certificate: cert, noCertManagement: false)
            r.removed = removed
            return r
        })
    }

    func verify(_ cert: ParsedCertificate, authzid: String? = nil, domain: String? = nil, now: Int64? = nil,
                _ lookup: Lookup) -> Result<JID, VerificationFailure> {
        CertificateRules.verify(cert, authzid: authzid.map { jid($0) }, domain: domain ?? self.domain,
                                nowMillis: now ?? nowMillis(), registered: { lookup($0) })
    }

    func testSingleJIDCertificateWithoutAuthzid() throws {
        let cert = try ParsedCertificate.parse(OpenSSLCLI.makeCert(san: xmpp("user@first.com")).pem)
        let lookup = registered(cert, for: ["user@first.com"])
        XCTAssertEqual(verify(cert, lookup), .success(jid("user@first.com")))
        XCTAssertEqual(lookup.asked, [jid("user@first.com")])
    }

    func testTwoJIDCertificateWithoutAuthzidIsAmbiguous() throws {
        let cert = try ParsedCertificate.parse(der: CodeCert.make(san: "\(xmpp("user@first.com")), \(xmpp("other@first.com"))"))
        XCTAssertEqual(verify(cert, registered(cert, for: ["user@first.com", "other@first.com"])),
                       .failure(.ambiguousIdentity([jid("user@first.com"), jid("other@first.com")])))
    }

    func testTwoJIDCertificateWithAuthzidPicksThatAccount() throws {
        let cert = try ParsedCertificate.parse(der: CodeCert.make(san: "\(xmpp("user@first.com")), \(xmpp("other@first.com"))"))
        let lookup = registered(cert, for: ["other@first.com"])
        XCTAssertEqual(verify(cert, authzid: "other@first.com", lookup), .success(jid("other@first.com")))
        // registered for `other` only: it does not log in as `user`
        XCTAssertEqual(verify(cert, authzid: "user@first.com", lookup), .failure(.notRegistered))
    }

    func testBareCertificateAuthorizesBareAndAnyResource() throws {
        let cert = try ParsedCertificate.parse(der: CodeCert.make(san: xmpp("user@first.com")))
        let lookup = registered(cert, for: ["user@first.com"])
        XCTAssertEqual(verify(cert, authzid: "User@First.com", lookup), .success(jid("user@first.com")))
        XCTAssertEqual(verify(cert, authzid: "user@first.com/Laptop", lookup), .success(jid("user@first.com/Laptop")))
        XCTAssertEqual(lookup.asked.last, jid("user@first.com"), "records are looked up by bare JID")
    }

    func testFullJIDCertificateAuthorizesOnlyThatResource() throws {
        let cert = try ParsedCertificate.parse(OpenSSLCLI.makeCert(san: xmpp("user@first.com/Phone")).pem)
        let lookup = registered(cert, for: ["user@first.com"])
        XCTAssertEqual(verify(cert, lookup), .success(jid("user@first.com/Phone")))
        XCTAssertEqual(verify(cert, authzid: "user@first.com/Phone", lookup), .success(jid("user@first.com/Phone")))
        XCTAssertEqual(verify(cert, authzid: "user@first.com", lookup), .failure(.resourceRestricted(allowed: [jid("user@first.com/Phone")])))
        XCTAssertEqual(verify(cert, authzid: "user@first.com/phone", lookup), .failure(.resourceRestricted(allowed: [jid("user@first.com/Phone")])))
    }

    func testAuthzidNotInCertificate() throws {
        let cert = try ParsedCertificate.parse(der: CodeCert.make(san: xmpp("user@first.com")))
        XCTAssertEqual(verify(cert, authzid: "admin@first.com", registered(cert, for: ["user@first.com", "admin@first.com"])),
                       .failure(.authzidNotInCertificate(jid("admin@first.com"))))
    }

    func testWrongDomain() throws {
        let cert = try ParsedCertificate.parse(der: CodeCert.make(san: xmpp("user@second.com")))
        let lookup = registered(cert, for: ["user@second.com"])
        XCTAssertEqual(verify(cert, lookup), .failure(.wrongDomain(jid: jid("user@second.com"), domain: "first.com")))
        XCTAssertEqual(lookup.asked, [], "no lookup for an identity outside the domain")
        XCTAssertEqual(verify(cert, domain: "Second.COM", lookup), .success(jid("user@second.com")))
    }

    func testNotRegistered() throws {
        let cert = try ParsedCertificate.parse(der: CodeCert.make(san: xmpp("user@first.com")))
        let other = try ParsedCertificate.parse(der: CodeCert.make(san: xmpp("user@first.com")))
        XCTAssertEqual(verify(cert, registered(other, for: ["user@first.com"])), .failure(.notRegistered))
        XCTAssertEqual(verify(cert, Lookup([])), .failure(.notRegistered))
    }

    func testRemovedCertificateIsRefused() throws {
        let cert = try ParsedCertificate.parse(der: CodeCert.make(san: xmpp("user@first.com")))
        XCTAssertEqual(verify(cert, registered(cert, for: ["user@first.com"], removed: true)), .failure(.removed))
        // a tombstone wins even if a stale live copy is also present
        let both = Lookup(registered(cert, for: ["user@first.com"], removed: true).records + registered(cert, for: ["user@first.com"]).records)
        XCTAssertEqual(verify(cert, both), .failure(.removed))
    }

    func testRecordsOfOtherAccountsReturnedByLookupAreIgnored() throws {
        let cert = try ParsedCertificate.parse(der: CodeCert.make(san: xmpp("user@first.com")))
        let wrongOwner = registered(cert, for: ["other@first.com"]).records
        XCTAssertEqual(CertificateRules.verify(cert, authzid: nil, domain: domain, nowMillis: nowMillis(), registered: { _ in wrongOwner }),
                       .failure(.notRegistered))
    }

    func testExpiredAndNotYetValidAreRefused() throws {
        let cert = try ParsedCertificate.parse(der: CodeCert.make(san: xmpp("user@first.com"), notBefore: .absolute("20300101000000Z"),
                                                                  notAfter: .absolute("20300102000000Z")))
        let lookup = registered(cert, for: ["user@first.com"])
        XCTAssertEqual(verify(cert, now: cert.notBeforeMillis - 1, lookup), .failure(.notYetValid))
        XCTAssertEqual(verify(cert, now: cert.notAfterMillis + 1, lookup), .failure(.expired))
        XCTAssertEqual(verify(cert, now: cert.notAfterMillis, lookup), .success(jid("user@first.com")))
        let expired = try ParsedCertificate.parse(der: CodeCert.make(san: xmpp("user@first.com"), notBefore: .relative(seconds: -7200),
                                                                     notAfter: .relative(seconds: -1)))
        XCTAssertEqual(verify(expired, registered(expired, for: ["user@first.com"])), .failure(.expired))
    }

    func testCertificateWithoutXmppAddr() throws {
        let cert = try ParsedCertificate.parse(OpenSSLCLI.makeCert(san: "DNS:first.com").pem)
        XCTAssertEqual(verify(cert, authzid: "user@first.com", registered(cert, for: ["user@first.com"])), .failure(.noXmppAddr))
    }

    func testConstantTimeEqual() {
        XCTAssertTrue(CertificateRules.constantTimeEqual([], []))
        XCTAssertTrue(CertificateRules.constantTimeEqual([1, 2, 3], [1, 2, 3]))
        XCTAssertFalse(CertificateRules.constantTimeEqual([1, 2, 3], [1, 2, 4]))
        XCTAssertFalse(CertificateRules.constantTimeEqual([0, 2, 3], [1, 2, 3]))
        XCTAssertFalse(CertificateRules.constantTimeEqual([1, 2], [1, 2, 3]))
    }

    func testDescriptionsAreSingleLine() {
        let failures: [VerificationFailure] = [
            .notRegistered, .removed, .notYetValid, .expired, .noXmppAddr, .ambiguousIdentity([jid("a@b")]),
            .authzidNotInCertificate(jid("a@b")), .resourceRestricted(allowed: [jid("a@b/c")]), .wrongDomain(jid: jid("a@b"), domain: "c"),
        ]
        for f in failures { XCTAssertFalse(f.description.isEmpty || f.description.contains("\n"), f.description) }
    }
}
