internal import COpenSSL
internal import COpenSSLShims

/// The parts of an X.509 certificate that XEP-0257 decisions need, extracted once so the rules stay
/// pure and never touch OpenSSL. Signatures and chains are deliberately not checked: a registered
/// certificate is trusted because its exact bytes (SHA-256) were registered by the account owner.
public struct ParsedCertificate: Sendable, Equatable {
    /// The exact DER bytes submitted; the fingerprint is over these, so store and re-send these.
    public let der: [UInt8]
    /// SHA-256 of `der` (32 bytes): the certificate's identity in the registry.
    public let sha256: [UInt8]
    public let notBeforeMillis: Int64
    public let notAfterMillis: Int64
    /// Every id-on-xmppAddr in subjectAltName, normalized, duplicates removed, in certificate order.
    public let xmppAddrs: [JID]
    /// Subject DN in RFC 2253 form, for listings only (never used for authorization).
    public let subject: String

    /// Large enough for any real client certificate, small enough that a hostile request costs little.
    public static let maxInputBytes = 64 * 1024

    /// Lowercase hex without colons, the form the API and CLI print.
    public var fingerprintHex: String { Hex.encode(sha256) }

    /// Accepts PEM (one "-----BEGIN CERTIFICATE-----" block; text around it is ignored as RFC 7468
    /// allows) or base64 DER with any whitespace, because users paste both.
    public static func parse(_ text: String) throws(CertificateError) -> ParsedCertificate {
        let utf8 = Array(text.utf8)
        guard utf8.count <= maxInputBytes else { throw .tooLarge(bytes: utf8.count, limit: maxInputBytes) }
        let der: [UInt8]
        if let blocks = PEM.certificateBlocks(utf8) {
            guard blocks.count == 1, let body = blocks.first else { throw .multipleCertificates }
            guard let decoded = Base64.decode(body), !decoded.isEmpty else { throw .notPEMOrBase64 }
            der = decoded
        } else {
            guard let decoded = Base64.decode(utf8[...]), !decoded.isEmpty else { throw .notPEMOrBase64 }
            der = decoded
        }
        return try parse(der: der)
    }

    public static func parse(der: [UInt8]) throws(CertificateError) -> ParsedCertificate {
        guard der.count <= maxInputBytes else { throw .tooLarge(bytes: der.count, limit: maxInputBytes) }
        guard !der.isEmpty else { throw .unparseable(reason: "input is empty") }
        // Leave OpenSSL's per-thread error queue empty: PeerTLS on the same thread reads it after SSL calls.
        defer { ERR_clear_error() }

        let parsed: (cert: OpaquePointer?, consumed: Int) = der.withUnsafeBufferPointer { buf in
            guard let base = buf.baseAddress else { return (nil, 0) }
            var p: UnsafePointer<UInt8>? = base
            let cert = d2i_X509(nil, &p, buf.count)
            let consumed = p.map { base.distance(to: $0) } ?? 0
            return (cert, consumed)
        }
        guard let cert = parsed.cert else {
            throw .unparseable(reason: opensslReason(default: "not a DER X.509 certificate"))
        }
        defer { X509_free(cert) }
        if parsed.consumed != der.count {
            let rest = Array(der[max(0, min(parsed.consumed, der.count))...])
            throw startsWithCertificate(rest) ? .multipleCertificates : .trailingData(bytes: rest.count)
        }

        var notBefore: Int64 = 0
        var notAfter: Int64 = 0
        guard ks_X509_not_before_epoch(cert, &notBefore) == 1 else { throw .unparseable(reason: "notBefore is not a valid time") }
        guard ks_X509_not_after_epoch(cert, &notAfter) == 1 else { throw .unparseable(reason: "notAfter is not a valid time") }
        // Seconds beyond ±292 million years cannot be expressed in Int64 milliseconds.
        let (nbMillis, o1) = notBefore.multipliedReportingOverflow(by: 1000)
        let (naMillis, o2) = notAfter.multipliedReportingOverflow(by: 1000)
        guard !o1, !o2 else { throw .unparseable(reason: "validity dates are out of range") }

        var digest = [UInt8](repeating: 0, count: 32)
        var digestLength: UInt32 = 0
        guard X509_digest(cert, EVP_sha256(), &digest, &digestLength) == 1, digestLength == 32 else {
            throw .unparseable(reason: "could not compute the SHA-256 fingerprint")
        }

        return ParsedCertificate(der: der, sha256: digest, notBeforeMillis: nbMillis, notAfterMillis: naMillis,
                                 xmppAddrs: try xmppAddrs(of: cert), subject: subject(of: cert))
    }

    /// For tests that need exact field values; outside this module `parse` is the only way to get one.
    init(der: [UInt8], sha256: [UInt8], notBeforeMillis: Int64, notAfterMillis: Int64, xmppAddrs: [JID], subject: String) {
        self.der = der
        self.sha256 = sha256
        self.notBeforeMillis = notBeforeMillis
        self.notAfterMillis = notAfterMillis
        self.xmppAddrs = xmppAddrs
        self.subject = subject
    }

    private static func xmppAddrs(of cert: OpaquePointer) throws(CertificateError) -> [JID] {
        var status: Int32 = 0
        let names = ks_X509_get_subject_alt_names_checked(cert, &status)
        defer { ks_general_names_free(names) }
        guard status >= 0 else { throw .unparseable(reason: "subjectAltName extension is malformed or repeated") }
        guard let names else { return [] }
        var result: [JID] = []
        for i in 0..<ks_general_names_count(names) {
            var valueType: Int32 = -1
            var data: UnsafePointer<UInt8>? = nil
            var length: Int32 = 0
            guard ks_general_name_xmppaddr_at(names, i, &valueType, &data, &length) == 1 else { continue }
            guard valueType == V_ASN1_UTF8STRING else {
                throw .invalidXmppAddr(reason: "value is ASN.1 type \(valueType), not a UTF8String")
            }
            let bytes: [UInt8] = (data != nil && length > 0)
                ? Array(UnsafeBufferPointer(start: data, count: Int(length))) : []
            guard let text = String(validating: bytes, as: UTF8.self) else {
                throw .invalidXmppAddr(reason: "UTF8String is not valid UTF-8")
            }
            let jid: JID
            do throws(JIDError) {
                jid = try JID(parsing: text)
            } catch {
                throw .invalidXmppAddr(reason: "\"\(printable(text))\" is not a valid JID: \(error)")
            }
            if !result.contains(jid) { result.append(jid) }
        }
        return result
    }

    private static func subject(of cert: OpaquePointer) -> String {
        var buffer = [CChar](repeating: 0, count: 1024)
        let n = buffer.withUnsafeMutableBufferPointer { ks_X509_subject_rfc2253(cert, $0.baseAddress, $0.count) }
        guard n >= 0 else { return "" }
        let bytes = buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
        return String(decoding: bytes, as: UTF8.self)
    }

    private static func startsWithCertificate(_ bytes: [UInt8]) -> Bool {
        bytes.withUnsafeBufferPointer { buf in
            guard let base = buf.baseAddress else { return false }
            var p: UnsafePointer<UInt8>? = base
            guard let other = d2i_X509(nil, &p, buf.count) else { return false }
            X509_free(other)
            return true
        }
    }

    private static func opensslReason(default fallback: String) -> String {
        let code = ERR_peek_error()  // the innermost cause ("wrong tag"), not "nested asn1 error"
        guard code != 0, let s = ERR_reason_error_string(code) else { return fallback }
        return String(cString: s)
    }

    /// Certificate text goes into error messages only escaped and shortened, so a hostile value cannot
    /// forge log lines or flood them.
    static func printable(_ s: String) -> String {
        var out = ""
        for scalar in s.unicodeScalars.prefix(80) {
            if scalar.properties.generalCategory == .control { out += "\\u{\(String(scalar.value, radix: 16))}" }
            else { out.unicodeScalars.append(scalar) }
        }
        return s.unicodeScalars.count > 80 ? out + "…" : out
    }
}

enum Hex {
    static func encode(_ bytes: [UInt8]) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out = [UInt8]()
        out.reserveCapacity(bytes.count * 2)
        for b in bytes {
            out.append(digits[Int(b >> 4)])
            out.append(digits[Int(b & 0x0f)])
        }
        return String(decoding: out, as: UTF8.self)
    }
}

/// Just enough RFC 7468 to find CERTIFICATE blocks; anything else in the text is ignored.
enum PEM {
    static let begin = Array("-----BEGIN CERTIFICATE-----".utf8)
    static let end = Array("-----END CERTIFICATE-----".utf8)

    /// nil when the text has no BEGIN CERTIFICATE line at all (so it may be bare base64); otherwise the
    /// body of every block. An unterminated block counts as a block with an undecodable body.
    static func certificateBlocks(_ text: [UInt8]) -> [ArraySlice<UInt8>]? {
        var blocks: [ArraySlice<UInt8>] = []
        var i = 0
        while let start = find(begin, in: text, from: i) {
            let bodyStart = start + begin.count
            guard let stop = find(end, in: text, from: bodyStart) else {
                blocks.append(Array("!".utf8)[...])
                break
            }
            blocks.append(text[bodyStart..<stop])
            i = stop + end.count
        }
        return blocks.isEmpty ? nil : blocks
    }

    private static func find(_ needle: [UInt8], in hay: [UInt8], from: Int) -> Int? {
        guard needle.count <= hay.count, from <= hay.count - needle.count else { return nil }
        var i = from
        while i <= hay.count - needle.count {
            if hay[i] == needle[0] && hay[i..<(i + needle.count)].elementsEqual(needle) { return i }
            i += 1
        }
        return nil
    }
}

/// Strict standard-alphabet base64: whitespace is skipped, padding is optional, anything else fails.
/// (Foundation's decoder either rejects whitespace or ignores every unknown character.)
enum Base64 {
    static func decode(_ input: ArraySlice<UInt8>) -> [UInt8]? {
        var out: [UInt8] = []
        out.reserveCapacity(input.count * 3 / 4)
        var acc: UInt32 = 0
        var bits = 0
        var sextets = 0
        var padding = 0
        for c in input {
            let v: UInt32
            switch c {
            case UInt8(ascii: " "), UInt8(ascii: "\t"), UInt8(ascii: "\n"), UInt8(ascii: "\r"): continue
            case UInt8(ascii: "="): padding += 1; continue
            case UInt8(ascii: "A")...UInt8(ascii: "Z"): v = UInt32(c - UInt8(ascii: "A"))
            case UInt8(ascii: "a")...UInt8(ascii: "z"): v = UInt32(c - UInt8(ascii: "a")) + 26
            case UInt8(ascii: "0")...UInt8(ascii: "9"): v = UInt32(c - UInt8(ascii: "0")) + 52
            case UInt8(ascii: "+"): v = 62
            case UInt8(ascii: "/"): v = 63
            default: return nil
            }
            guard padding == 0 else { return nil }  // data after '='
            acc = (acc << 6) | v
            bits += 6
            sextets += 1
            if bits >= 8 {
                bits -= 8
                out.append(UInt8(truncatingIfNeeded: acc >> UInt32(bits)))
                acc &= (1 << UInt32(bits)) - 1
            }
        }
        let rem = sextets % 4
        guard rem != 1, padding <= 2 else { return nil }
        if padding > 0 && (rem + padding) % 4 != 0 { return nil }
        // Leftover bits must be zero, or two different texts would decode to the same bytes.
        guard acc == 0 else { return nil }
        return out
    }
}
