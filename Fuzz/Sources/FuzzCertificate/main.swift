import CertificateRegistry
import FuzzSupport

#if canImport(Glibc)
import Glibc
#endif

// Fuzz target 4: certificate parsing for `certs add` / `sasl-external` (XEP-0257). The same
// bytes go to `parse(der:)` and, when they are UTF-8, to `parse(_ text:)` (PEM or base64 DER).
//
// Oracles beyond "does not crash":
// - error messages are one line (certificate text must not forge log lines);
// - a parsed certificate parses identically from its PEM and from line-wrapped base64;
// - every xmppAddr is normalized (parsing its own description gives it back);
// - a certificate that may be appended for one of its JIDs then verifies as that JID.

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzCertificate(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    check(parse { () throws(CertificateError) in try ParsedCertificate.parse(der: bytes) })
    if let text = String(validating: bytes, as: UTF8.self) {
        check(parse { () throws(CertificateError) in try ParsedCertificate.parse(text) })
    }
    return 0
}

private func parse(_ body: () throws(CertificateError) -> ParsedCertificate) -> ParsedCertificate? {
    do {
        return try body()
    } catch {
        oneLine(error.description, "certificate error")
        return nil
    }
}

private func check(_ parsed: ParsedCertificate?) {
    guard let cert = parsed else { return }
    if getenv("FUZZ_ECHO") != nil { print("parsed: \(cert.subject) \(cert.xmppAddrs) \(cert.fingerprintHex)") }
    guard cert.sha256.count == 32 else { fatalError("fuzz: SHA-256 fingerprint of \(cert.sha256.count) bytes") }

    let base64 = encodeBase64(cert.der)
    let wrapped = stride(from: 0, to: base64.count, by: 64).map { String(base64[$0..<min($0 + 64, base64.count)]) }
    let pem = "-----BEGIN CERTIFICATE-----\n" + wrapped.joined(separator: "\n") + "\n-----END CERTIFICATE-----\n"
    for (form, text) in [("PEM", pem), ("base64", wrapped.joined(separator: "\r\n"))] {
        do {
            let again = try ParsedCertificate.parse(text)
            if again != cert { fatalError("fuzz: the certificate parses differently from its \(form) form") }
        } catch {
            fatalError("fuzz: a parsed certificate is refused in \(form) form: \(error)")
        }
    }

    for addr in cert.xmppAddrs {
        guard JID(addr.description) == addr else {
            fatalError("fuzz: xmppAddr \(addr.description.debugDescription) is not normalized: it parses to \(String(describing: JID(addr.description)))")
        }
    }

    // Appendable for a user at some instant => verifies as that user at that instant.
    guard cert.notBeforeMillis <= cert.notAfterMillis, let addr = cert.xmppAddrs.first else { return }
    let now = cert.notBeforeMillis
    let user = addr.bare
    do {
        try CertificateRules.checkAppend(cert, name: "fuzz", user: user, existing: [], nowMillis: now)
    } catch {
        oneLine(error.description, "registry error")
        fatalError("fuzz: a valid certificate naming \(user) cannot be appended for it: \(error)")
    }
    let record = RegisteredCertificate(name: "fuzz", user: user, certificate: cert, noCertManagement: false)
    switch CertificateRules.verify(cert, authzid: addr, domain: addr.domain, nowMillis: now, registered: { _ in [record] }) {
    case .success(let jid):
        if jid != addr { fatalError("fuzz: verify answered \(jid) for authzid \(addr)") }
    case .failure(let failure):
        fatalError("fuzz: a registered certificate does not verify as its own xmppAddr \(addr): \(failure)")
    }
    if cert.xmppAddrs.count == 1 {
        if case .failure(let failure) = CertificateRules.verify(cert, authzid: nil, domain: addr.domain, nowMillis: now, registered: { _ in [record] }) {
            fatalError("fuzz: a single-JID certificate does not verify without authzid: \(failure)")
        }
    }
    var removed = record
    removed.removed = true
    if case .success = CertificateRules.verify(cert, authzid: addr, domain: addr.domain, nowMillis: now, registered: { _ in [record, removed] }) {
        fatalError("fuzz: a removed (tombstoned) certificate still verifies")
    }
}

private func oneLine(_ message: String, _ what: String) {
    if message.contains(where: { $0 == "\n" || $0 == "\r" }) {
        fatalError("fuzz: \(what) spans several lines: \(message.debugDescription)")
    }
}

private func encodeBase64(_ bytes: [UInt8]) -> [Character] {
    let table = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
    var out: [Character] = []
    out.reserveCapacity((bytes.count + 2) / 3 * 4)
    var i = 0
    while i < bytes.count {
        let b0 = Int(bytes[i]), b1 = i + 1 < bytes.count ? Int(bytes[i + 1]) : 0, b2 = i + 2 < bytes.count ? Int(bytes[i + 2]) : 0
        out.append(table[b0 >> 2])
        out.append(table[(b0 & 3) << 4 | b1 >> 4])
        out.append(i + 1 < bytes.count ? table[(b1 & 15) << 2 | b2 >> 6] : "=")
        out.append(i + 2 < bytes.count ? table[b2 & 63] : "=")
        i += 3
    }
    return out
}

@_cdecl("FuzzCertificate_main")
public func fuzzCertificateMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runFuzzer(argc, argv, fuzzCertificate)
}
