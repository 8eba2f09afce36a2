import COpenSSL
import Foundation
import TestSupport
import XCTest

@testable import CertificateRegistry

struct FixtureError: Error, CustomStringConvertible { let description: String }

/// A certificate as a user would produce it (bytes only; its files are gone).
struct CLICert {
    let pem: String
    let der: [UInt8]
}

/// Drives the real `openssl` CLI the way the docs tell users to make a client certificate
/// (`TestSupport.UserCertificates`), in a scratch directory removed before returning: the private
/// key never outlives the call.
enum OpenSSLCLI {
    /// `extSection` is the body of the `[ext]` section (plus any extra sections it references).
    static func makeCert(extSection: String?, cn: String = "user@first.com") throws -> CLICert {
        let directory = try ScratchDirectory(prefix: "ks-x509")
        defer { directory.remove() }
        let made = try UserCertificates.make(extensions: extSection, commonName: cn, in: directory.path, name: "client")
        return CLICert(pem: made.pem, der: made.der)
    }

    static func makeCert(san: String?) throws -> CLICert {
        try makeCert(extSection: san.map { "subjectAltName = \($0)" })
    }
}

/// Builds certificates in process so validity can be set to any instant (openssl 3.0's CLI cannot backdate).
enum CodeCert {
    enum Time {
        case relative(seconds: Int)
        case absolute(String)  // RFC 5280 text, e.g. "20200101000000Z"
    }

    static func make(san: String?, notBefore: Time = .relative(seconds: -3600),
                     notAfter: Time = .relative(seconds: 86400), sanCopies: Int = 1) throws -> [UInt8] {
        guard let kctx = EVP_PKEY_CTX_new_id(EVP_PKEY_ED25519, nil) else { throw FixtureError(description: "EVP_PKEY_CTX_new_id") }
        defer { EVP_PKEY_CTX_free(kctx) }
        var key: OpaquePointer? = nil
        guard EVP_PKEY_keygen_init(kctx) == 1, EVP_PKEY_keygen(kctx, &key) == 1, let key else {
            throw FixtureError(description: "Ed25519 keygen failed")
        }
        defer { EVP_PKEY_free(key) }
        guard let x = X509_new() else { throw FixtureError(description: "X509_new") }
        defer { X509_free(x) }
        X509_set_version(x, 2)
        ASN1_INTEGER_set(X509_get_serialNumber(x), 42)
        for (time, field) in [(notBefore, X509_getm_notBefore(x)), (notAfter, X509_getm_notAfter(x))] {
            switch time {
            case let .relative(s): guard X509_gmtime_adj(field, s) != nil else { throw FixtureError(description: "gmtime_adj") }
            case let .absolute(text): guard ASN1_TIME_set_string_X509(field, text) == 1 else { throw FixtureError(description: "bad time \(text)") }
            }
        }
        let name = X509_get_subject_name(x)
        X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, "code-generated", -1, -1, 0)
        X509_set_issuer_name(x, name)
        X509_set_pubkey(x, key)
        if let san {
            var ctx = X509V3_CTX()
            X509V3_set_ctx(&ctx, x, x, nil, nil, 0)
            guard let ext = X509V3_EXT_conf_nid(nil, &ctx, NID_subject_alt_name, san) else {
                ERR_clear_error()
                throw FixtureError(description: "bad subjectAltName spec \(san)")
            }
            for _ in 0..<sanCopies { X509_add_ext(x, ext, -1) }
            X509_EXTENSION_free(ext)
        }
        guard X509_sign(x, key, nil) > 0 else { throw FixtureError(description: "X509_sign") }
        var out: UnsafeMutablePointer<UInt8>? = nil
        let n = i2d_X509(x, &out)
        guard n > 0, let out else { throw FixtureError(description: "i2d_X509") }
        defer { CRYPTO_free(out, #file, #line) }
        return Array(UnsafeBufferPointer(start: out, count: Int(n)))
    }
}

func xmpp(_ jid: String) -> String { "otherName:1.3.6.1.5.5.7.8.5;UTF8:\(jid)" }

func jid(_ s: String, file: StaticString = #filePath, line: UInt = #line) -> JID {
    guard let j = JID(s) else {
        XCTFail("test JID \(s) did not parse", file: file, line: line)
        return JID(uncheckedLocal: nil, domain: "invalid", resource: nil)
    }
    return j
}

func nowMillis() -> Int64 { Int64(Date().timeIntervalSince1970 * 1000) }

/// Replaces the first occurrence of `needle` in `bytes`; DER lengths stay valid when sizes match.
func patch(_ bytes: [UInt8], replacing needle: [UInt8], with replacement: [UInt8]) -> [UInt8]? {
    guard needle.count == replacement.count, needle.count <= bytes.count else { return nil }
    for i in 0...(bytes.count - needle.count) where Array(bytes[i..<(i + needle.count)]) == needle {
        var out = bytes
        out.replaceSubrange(i..<(i + needle.count), with: replacement)
        return out
    }
    return nil
}

func base64(_ bytes: [UInt8]) -> String { Data(bytes).base64EncodedString() }
