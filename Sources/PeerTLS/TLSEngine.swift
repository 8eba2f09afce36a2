internal import COpenSSL
internal import COpenSSLShims
import NIOCore

/// Where the handshake stands after feeding it what the peer sent so far.
enum HandshakeProgress: Equatable {
    /// The engine needs more ciphertext from the peer; send `pendingOutput` first.
    case wantRead
    /// OpenSSL could not write. Memory BIOs never refuse a write, so this only completes the mapping of
    /// OpenSSL's answers; the handler treats it like `wantRead` (send output, wait for the peer).
    case wantWrite
    /// The peer is authenticated: its certificate chains to the cluster CA, TLS 1.3 was negotiated and,
    /// as a client, the certificate names the node we dialed.
    case completed(peerDNSNames: [String], protocolVersion: String)
    /// The handshake is over and failed; `pendingOutput` may hold the alert that tells the peer why.
    case failed(PeerTLSError)
}

/// What decrypting the buffered ciphertext produced.
enum PlaintextRead {
    /// One chunk of application data; read again, more may follow.
    case data(ByteBuffer)
    /// Nothing more can be decrypted until the peer sends more (a record may be incomplete).
    case wantRead
    /// See `HandshakeProgress.wantWrite`: send `pendingOutput`, wait for the peer.
    case wantWrite
    /// The peer sent close_notify: everything it will ever send has been read.
    case closeNotify
    /// The peer sent something TLS-invalid or a fatal alert.
    case failed(PeerTLSError)
}

/// What encrypting one plaintext buffer did.
enum PlaintextWrite: Equatable {
    /// The records are in `pendingOutput`.
    case encrypted
    /// OpenSSL refused (the connection is shut down or broken); nothing of the buffer was sent.
    case failed(PeerTLSError)
}

/// Where our side of the closing handshake stands.
enum ShutdownProgress: Equatable {
    /// Our close_notify is in `pendingOutput`; the peer's has not arrived yet.
    case closeNotifySent
    /// Both close_notify alerts have been exchanged.
    case complete
}

/// One mutual-TLS 1.3 connection as a pure byte transformer: ciphertext in through `receive`, records
/// out through `pendingOutput`, and every OpenSSL answer mapped to a Swift enum. OpenSSL runs on memory
/// BIOs, so it never touches a socket, a timer or a promise; those belong to `PeerTLSHandler` (the
/// swift-nio-ssl `SSLConnection`/`NIOSSLHandler` split).
///
/// Not thread-safe: one engine belongs to one channel handler, used on its event loop only.
final class TLSEngine {
    private let ssl: OpaquePointer
    /// Ciphertext from the network, consumed by OpenSSL.
    private let networkIn: OpaquePointer
    /// Ciphertext produced by OpenSSL, to be written to the network.
    private let networkOut: OpaquePointer
    /// Keeps the SSL_CTX alive for as long as this SSL uses it.
    private let context: PeerTLSContext
    private let role: PeerTLSRole
    /// In TLS 1.3 the server judges the client's certificate after the client has finished, so until
    /// the server has sent data a client can still learn that it was rejected.
    private var receivedApplicationData = false

    /// The largest plaintext chunk handed up at once (one TLS record's worth).
    static let readChunkBytes = 16 * 1024

    init(context: PeerTLSContext, role: PeerTLSRole) throws(PeerTLSError) {
        OpenSSLErrors.clear()
        guard let ssl = SSL_new(context.sslContext) else {
            throw .handshakeFailed(reason: OpenSSLErrors.drain(fallback: "SSL_new failed"))
        }
        guard let rbio = BIO_new(BIO_s_mem()), let wbio = BIO_new(BIO_s_mem()) else {
            SSL_free(ssl)
            throw .handshakeFailed(reason: OpenSSLErrors.drain(fallback: "BIO_new failed"))
        }
        // SSL_set_bio takes ownership of both BIOs; SSL_free releases them.
        SSL_set_bio(ssl, rbio, wbio)
        self.ssl = ssl
        self.networkIn = rbio
        self.networkOut = wbio
        self.context = context
        self.role = role
        switch role {
        case .server:
            SSL_set_accept_state(ssl)
        case .client(let expected):
            SSL_set_connect_state(ssl)
            // OpenSSL checks the name inside the handshake, so a wrong peer gets an alert and never sees
            // our Finished. Only SAN DNS entries count, never the subject CN, and no wildcards.
            SSL_set_hostflags(ssl, UInt32(X509_CHECK_FLAG_NO_WILDCARDS | X509_CHECK_FLAG_NEVER_CHECK_SUBJECT))
            guard !expected.isEmpty, SSL_set1_host(ssl, expected) == 1 else {
                OpenSSLErrors.clear()
                throw .peerNameMismatch(expected: sanitize(expected), found: [])
            }
            _ = ks_SSL_set_tlsext_host_name(ssl, expected)
            OpenSSLErrors.clear()
        }
    }

    deinit { SSL_free(ssl) }

    // MARK: bytes in and out

    /// Queues ciphertext from the peer; nothing is decrypted until `handshake()` or `read`.
    func receive(_ ciphertext: ByteBuffer) {
        ciphertext.withUnsafeReadableBytes { bytes in
            var offset = 0
            while offset < bytes.count {
                var written = 0
                // A memory BIO grows without bound; a write only fails on allocation failure.
                guard BIO_write_ex(networkIn, bytes.baseAddress.map { $0 + offset }, bytes.count - offset, &written) == 1,
                      written > 0 else { return }
                offset += written
            }
        }
    }

    /// Records OpenSSL produced (handshake flights, application data, alerts), or nil when there are none.
    func pendingOutput(allocator: ByteBufferAllocator) -> ByteBuffer? {
        let pending = Int(BIO_ctrl_pending(networkOut))
        guard pending > 0 else { return nil }
        var buffer = allocator.buffer(capacity: pending)
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: pending) { space in
            var read = 0
            guard BIO_read_ex(networkOut, space.baseAddress, pending, &read) == 1 else { return 0 }
            return read
        }
        return buffer.readableBytes > 0 ? buffer : nil
    }

    // MARK: handshake

    /// Advances the handshake as far as the received ciphertext allows. Call until it stops returning
    /// `.wantRead`/`.wantWrite` with new input; never after `.completed` or `.failed`.
    func handshake() -> HandshakeProgress {
        OpenSSLErrors.clear()
        let rc = SSL_do_handshake(ssl)
        if rc == 1 { return verifyCompletedHandshake() }
        let code = SSL_get_error(ssl, rc)
        switch code {
        case SSL_ERROR_WANT_READ: return .wantRead
        case SSL_ERROR_WANT_WRITE: return .wantWrite
        default: return .failed(handshakeError(code: code))
        }
    }

    private func handshakeError(code: Int32) -> PeerTLSError {
        let reasons = OpenSSLErrors.drain(fallback: "OpenSSL error \(code)")
        let verify = SSL_get_verify_result(ssl)
        if verify != Int(X509_V_OK) {
            if verify == Int(X509_V_ERR_HOSTNAME_MISMATCH), case .client(let expected) = role {
                return .peerNameMismatch(expected: sanitize(expected), found: presentedDNSNames)
            }
            return .peerCertificateRejected(reason: OpenSSLErrors.verifyResultString(verify))
        }
        return .handshakeFailed(reason: reasons)
    }

    /// Verification is mandatory in the context, but a handshake that "succeeds" without a verified peer
    /// certificate must never reach the cluster protocol, so check again here.
    private func verifyCompletedHandshake() -> HandshakeProgress {
        let verify = SSL_get_verify_result(ssl)
        guard verify == Int(X509_V_OK) else {
            return .failed(.peerCertificateRejected(reason: OpenSSLErrors.verifyResultString(verify)))
        }
        guard SSL_get0_peer_certificate(ssl) != nil else {
            return .failed(.peerCertificateRejected(reason: "peer sent no certificate"))
        }
        // The context pins TLS 1.3; refuse anything else even if a future OpenSSL default changes.
        guard SSL_version(ssl) == TLS1_3_VERSION else {
            return .failed(.handshakeFailed(reason: "peer negotiated a protocol older than TLS 1.3"))
        }
        let names = peerDNSNames
        switch role {
        case .client(let expected):
            guard names.contains(where: { $0.lowercased() == expected.lowercased() }) else {
                return .failed(.peerNameMismatch(expected: sanitize(expected), found: names))
            }
        case .server:
            guard !names.isEmpty else {
                return .failed(.peerCertificateRejected(reason: "certificate has no subjectAltName DNS entry naming its node"))
            }
        }
        let version = SSL_get_version(ssl).map { String(cString: $0) } ?? "unknown"
        return .completed(peerDNSNames: names, protocolVersion: version)
    }

    private var peerDNSNames: [String] {
        guard let cert = SSL_get0_peer_certificate(ssl) else { return [] }
        return X509Names.dnsNames(cert)
    }

    /// Names in the certificate the peer presented even when verification failed (for error messages).
    private var presentedDNSNames: [String] {
        guard let cert = ks_SSL_peer_chain_leaf(ssl) else { return peerDNSNames }
        return X509Names.dnsNames(cert)
    }

    // MARK: application data

    /// Decrypts the next chunk of application data from the received ciphertext.
    func read(allocator: ByteBufferAllocator) -> PlaintextRead {
        OpenSSLErrors.clear()
        let chunk = Self.readChunkBytes
        var buffer = allocator.buffer(capacity: chunk)
        var rc: Int32 = 0
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: chunk) { space in
            var read = 0
            rc = SSL_read_ex(ssl, space.baseAddress, space.count, &read)
            return rc == 1 ? read : 0
        }
        if rc == 1 {
            receivedApplicationData = true
            return .data(buffer)
        }
        let code = SSL_get_error(ssl, rc)
        switch code {
        case SSL_ERROR_WANT_READ: return .wantRead
        case SSL_ERROR_WANT_WRITE: return .wantWrite
        case SSL_ERROR_ZERO_RETURN: return .closeNotify
        default:
            let reasons = OpenSSLErrors.drain(fallback: "OpenSSL error \(code)")
            // In TLS 1.3 the server judges the client's certificate after the client finished its side,
            // so the server's rejection alert arrives here, before any application data.
            if case .client = role, !receivedApplicationData {
                return .failed(.handshakeFailed(reason: "peer rejected the connection: \(reasons)"))
            }
            return .failed(.protocolError(reason: reasons))
        }
    }

    /// Encrypts all of `plaintext` into records (memory BIOs take everything; no partial writes).
    /// An empty buffer produces no record (OpenSSL refuses empty writes).
    func write(_ plaintext: ByteBuffer) -> PlaintextWrite {
        guard plaintext.readableBytes > 0 else { return .encrypted }
        OpenSSLErrors.clear()
        var written = 0
        let rc = plaintext.withUnsafeReadableBytes { bytes in
            SSL_write_ex(ssl, bytes.baseAddress, bytes.count, &written)
        }
        guard rc == 1 else {
            return .failed(.protocolError(reason: OpenSSLErrors.drain(fallback: "SSL_write failed")))
        }
        return .encrypted
    }

    // MARK: closing

    /// Queues our close_notify (once) and reports whether the peer's has already arrived. Failures are
    /// ignored: a connection too broken to say goodbye is closed by the handler either way.
    func shutdown() -> ShutdownProgress {
        OpenSSLErrors.clear()
        let rc = SSL_shutdown(ssl)
        if rc < 0 { _ = OpenSSLErrors.drain(fallback: "") }
        return rc == 1 ? .complete : .closeNotifySent
    }
}
