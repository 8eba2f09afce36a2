internal import COpenSSL
internal import COpenSSLShims
import FoundationEssentials
import Glibc

/// The cluster's TLS configuration: the CA every peer must chain to, and this node's certificate and key.
///
/// One context serves every peer connection in both directions, so the node loads and checks its files
/// once at start and fails fast with a message naming the bad file.
public final class PeerTLSContext: @unchecked Sendable {
    // @unchecked Sendable: `sslContext` is fully configured in init and never mutated afterwards; OpenSSL
    // documents an SSL_CTX as safe to use from many threads for SSL_new once configured (its internal
    // reference counts and caches are locked). The pointer is freed only in deinit, when no SSL made from
    // it can still exist because each PeerTLSHandler holds a strong reference to this object.
    let sslContext: OpaquePointer

    /// Expiry of this node's own certificate, so the node can warn or export it as a metric before peers
    /// start rejecting it.
    public let certificateNotAfter: Date?

    /// Loads PEM files, checks the key belongs to the certificate, and pins TLS 1.3 with mandatory
    /// peer verification (DESIGN.md "Cluster" 1).
    public init(caFile: String, certificateFile: String, privateKeyFile: String) throws(PeerTLSError) {
        for file in [caFile, certificateFile, privateKeyFile] {
            guard access(file, R_OK) == 0 else {
                let reason = String(cString: strerror(errno))
                throw .cannotLoad(file: file, reason: reason)
            }
        }
        OpenSSLErrors.clear()
        guard let ctx = SSL_CTX_new(TLS_method()) else {
            throw .unsupportedOpenSSL(reason: OpenSSLErrors.drain(fallback: "SSL_CTX_new failed"))
        }
        // From here on `ctx` must be freed on every error path.
        func fail(_ error: PeerTLSError) -> PeerTLSError {
            SSL_CTX_free(ctx)
            return error
        }
        guard ks_SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) == 1,
              ks_SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) == 1 else {
            throw fail(.unsupportedOpenSSL(reason: OpenSSLErrors.drain(fallback: "cannot restrict to TLS 1.3")))
        }
        // Peers reconnect rarely and must always present a fresh certificate (a revoked or expired
        // peer must not resume a session), so no tickets and no session cache.
        SSL_CTX_set_options(ctx, ks_peer_ssl_options())
        _ = SSL_CTX_set_num_tickets(ctx, 0)
        _ = ks_SSL_CTX_set_session_cache_mode(ctx, ks_SSL_SESS_CACHE_OFF())
        // FAIL_IF_NO_PEER_CERT only applies in server mode; in client mode PEER alone already aborts
        // on a bad server certificate. One mode for both roles keeps the context role-agnostic.
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nil)

        guard SSL_CTX_load_verify_locations(ctx, caFile, nil) == 1 else {
            throw fail(.cannotLoad(file: caFile, reason: OpenSSLErrors.drain(fallback: "no CA certificate found")))
        }
        guard SSL_CTX_use_certificate_chain_file(ctx, certificateFile) == 1 else {
            throw fail(.cannotLoad(file: certificateFile, reason: OpenSSLErrors.drain(fallback: "no certificate found")))
        }
        guard SSL_CTX_use_PrivateKey_file(ctx, privateKeyFile, SSL_FILETYPE_PEM) == 1 else {
            let reason = OpenSSLErrors.drain(fallback: "no private key found")
            // OpenSSL reports a mismatching key at this point already ("key values mismatch").
            if reason.contains("values mismatch") { throw fail(.keyDoesNotMatchCertificate(file: privateKeyFile)) }
            throw fail(.cannotLoad(file: privateKeyFile, reason: reason))
        }
        guard SSL_CTX_check_private_key(ctx) == 1 else {
            OpenSSLErrors.clear()
            throw fail(.keyDoesNotMatchCertificate(file: privateKeyFile))
        }
        var notAfter: Date? = nil
        if let cert = SSL_CTX_get0_certificate(ctx) {
            var epoch: Int64 = 0
            if ks_X509_not_after_epoch(cert, &epoch) == 1 { notAfter = Date(timeIntervalSince1970: TimeInterval(epoch)) }
        }
        OpenSSLErrors.clear()
        self.sslContext = ctx
        self.certificateNotAfter = notAfter
    }

    deinit { SSL_CTX_free(sslContext) }

    /// The subjectAltName DNS entries of the first certificate in a PEM file, so a node can check at
    /// start that its own certificate names it (and fail with a clear message instead of being
    /// refused by every peer).
    public static func dnsNames(inCertificateFile file: String) throws(PeerTLSError) -> [String] {
        let cert = try loadCertificate(file)
        defer { X509_free(cert) }
        return X509Names.dnsNames(cert)
    }

    /// The not-after date of the first certificate in a PEM file.
    public static func notAfter(inCertificateFile file: String) throws(PeerTLSError) -> Date {
        let cert = try loadCertificate(file)
        defer { X509_free(cert) }
        var epoch: Int64 = 0
        guard ks_X509_not_after_epoch(cert, &epoch) == 1 else {
            throw .cannotLoad(file: file, reason: "certificate has an unreadable notAfter date")
        }
        return Date(timeIntervalSince1970: TimeInterval(epoch))
    }

    private static func loadCertificate(_ file: String) throws(PeerTLSError) -> OpaquePointer {
        OpenSSLErrors.clear()
        guard let fp = fopen(file, "r") else {
            throw .cannotLoad(file: file, reason: String(cString: strerror(errno)))
        }
        defer { fclose(fp) }
        guard let cert = PEM_read_X509(fp, nil, nil, nil) else {
            throw .cannotLoad(file: file, reason: OpenSSLErrors.drain(fallback: "no PEM certificate found"))
        }
        return cert
    }
}
