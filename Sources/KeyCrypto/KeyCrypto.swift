import COpenSSL
import CSodium
import SecretMemory

/// The HMAC digests the key store signs with (the API's `algorithm`).
public enum HMACAlgorithm: String, Sendable, CaseIterable {
    case sha256, sha384, sha512

    /// MAC length in bytes.
    public var macByteCount: Int {
        switch self {
        case .sha256: return 32
        case .sha384: return 48
        case .sha512: return 64
        }
    }

    /// OpenSSL's digest name, as static C strings: OSSL_PARAM keeps the pointer until
    /// EVP_MAC_init has read it.
    var openSSLDigestName: StaticString {
        switch self {
        case .sha256: return "SHA256"
        case .sha384: return "SHA384"
        case .sha512: return "SHA512"
        }
    }
}

/// Why OpenSSL could not compute a MAC. Never carries key bytes or input.
public enum KeyCryptoError: Error, Equatable, CustomStringConvertible {
    /// OpenSSL has no HMAC implementation loaded (a broken or FIPS-restricted installation).
    case hmacUnavailable
    /// An OpenSSL call failed (out of memory, typically); names the call.
    case openSSLFailure(String)

    public var description: String {
        switch self {
        case .hmacUnavailable:
            return "OpenSSL provides no HMAC implementation (EVP_MAC_fetch(\"HMAC\") failed); check the libssl3 installation"
        case .openSSLFailure(let call): return "OpenSSL failed in \(call) while computing an HMAC"
        }
    }
}

/// HMAC with keys that stay in protected memory (issue 14).
///
/// The key is handed to OpenSSL straight from its `SecretBytes` slot (libsodium-locked memory);
/// no Swift array ever holds it. What OpenSSL 3 does with it: the HMAC provider
/// (providers/implementations/macs/hmac_prov.c) copies the key into `OPENSSL_secure_malloc`
/// memory (plain heap unless the process set up OpenSSL's secure heap) and `HMAC_Init_ex`
/// (crypto/hmac/hmac.c) derives the inner and outer pads from it into the context's digest
/// states, using stack buffers it cleanses (`OPENSSL_cleanse`) before returning. Freeing the
/// context (`EVP_MAC_CTX_free`, done before every function here returns) frees the key copy with
/// `OPENSSL_secure_clear_free` and the digest states with `EVP_MD_CTX_free`, which clears them:
/// key material lives in OpenSSL's (unlocked) memory only for the duration of one call and is
/// wiped afterwards.
///
/// Hand-written on OpenSSL rather than libsodium: libsodium has HMAC-SHA256/512 but no SHA-384,
/// which MongooseIM's tokens need; OpenSSL is already the project's X.509/TLS library.
public enum KeyCrypto {
    /// HMAC of `input` under `key`.
    public static func hmac(algorithm: HMACAlgorithm, key: SecretBytes, input: [UInt8]) throws(KeyCryptoError) -> [UInt8] {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: algorithm.macByteCount, alignment: 1)
        defer { buffer.deallocate() }
        try compute(algorithm, key: key, input: input, into: buffer)
        return Array(buffer)
    }

    /// Which of `keys` (in order, e.g. every active version, primary first) made `mac` for
    /// `input`: the index of the first one that matches, or nil.
    ///
    /// Constant time in what matters: the MAC is computed under every key (no early exit) and
    /// each comparison is `sodium_memcmp`; which key matched is selected with masks, not
    /// branches. The time depends only on the number of keys and the input length. A `mac` of
    /// the wrong length cannot match any key and is refused at once (lengths are public).
    /// The expected MACs, which would be forgeries for this input, are wiped after use.
    public static func verify(algorithm: HMACAlgorithm, keys: [SecretBytes], input: [UInt8],
                              mac: [UInt8]) throws(KeyCryptoError) -> Int? {
        let length = algorithm.macByteCount
        guard mac.count == length else { return nil }
        let expected = UnsafeMutableRawBufferPointer.allocate(byteCount: length, alignment: 1)
        defer {
            sodium_memzero(expected.baseAddress, length)
            expected.deallocate()
        }
        var found = -1
        for (index, key) in keys.enumerated() {
            try compute(algorithm, key: key, input: input, into: expected)
            // sodium_memcmp returns 0 when equal, -1 otherwise: turned into an all-ones mask
            // when equal, zero when not.
            let equal = Int(sodium_memcmp(expected.baseAddress, mac, length)) ^ -1
            let nothingFoundYet = found >> (Int.bitWidth - 1)       // all ones while found < 0
            let take = equal & nothingFoundYet
            found = (found & ~take) | (index & take)
        }
        return found >= 0 ? found : nil
    }

    /// EVP_MAC "HMAC", fetched once: fetching per call costs a provider lookup under a lock.
    /// `EVP_MAC` objects are immutable and reference-counted; OpenSSL documents them as safe to
    /// share between threads (openssl-threads(7)), hence the unchecked Sendable.
    private struct FetchedMAC: @unchecked Sendable {
        let pointer: OpaquePointer?
    }
    private static let hmacImplementation = FetchedMAC(pointer: EVP_MAC_fetch(nil, "HMAC", nil))

    private static func compute(_ algorithm: HMACAlgorithm, key: SecretBytes, input: [UInt8],
                                into out: UnsafeMutableRawBufferPointer) throws(KeyCryptoError) {
        guard let implementation = hmacImplementation.pointer else { throw .hmacUnavailable }
        guard let context = EVP_MAC_CTX_new(implementation) else { throw .openSSLFailure("EVP_MAC_CTX_new") }
        // Frees the key copy and the pad-derived digest states, cleared (see the type's comment).
        defer { EVP_MAC_CTX_free(context) }

        let parameterName: StaticString = "digest"
        let digestName = algorithm.openSSLDigestName
        var parameters = [
            OSSL_PARAM_construct_utf8_string(
                UnsafeRawPointer(parameterName.utf8Start).assumingMemoryBound(to: CChar.self),
                UnsafeMutableRawPointer(mutating: digestName.utf8Start).assumingMemoryBound(to: CChar.self), 0),
            OSSL_PARAM_construct_end(),
        ]
        let initialized = key.withUnsafeBytes { keyBytes in
            EVP_MAC_init(context, keyBytes.baseAddress?.assumingMemoryBound(to: UInt8.self), keyBytes.count, &parameters)
        }
        guard initialized == 1 else { throw .openSSLFailure("EVP_MAC_init") }
        let updated = input.withUnsafeBufferPointer { EVP_MAC_update(context, $0.baseAddress, $0.count) }
        guard updated == 1 else { throw .openSSLFailure("EVP_MAC_update") }
        var written = 0
        let finished = EVP_MAC_final(context, out.baseAddress?.assumingMemoryBound(to: UInt8.self), &written, out.count)
        guard finished == 1, written == out.count else { throw .openSSLFailure("EVP_MAC_final") }
    }
}
