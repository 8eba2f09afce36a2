import COpenSSL
import COpenSSLShims
import NIOCore

/// Which side of a peer connection this handler is, and who we expect on the other end.
public enum PeerTLSRole: Sendable, Equatable {
    /// We dialed `expectedPeer`; its certificate must name it (subjectAltName DNS) or the handshake fails,
    /// so a misrouted address can never be mistaken for the intended node.
    case client(expectedPeer: String)
    /// We accepted; any cluster-CA certificate is accepted and its DNS names are reported for the shell
    /// to match against membership.
    case server
}

/// User inbound events fired by `PeerTLSHandler`.
public enum PeerTLSEvent: Sendable, Equatable {
    /// The peer passed CA verification and the name check. With TLS 1.3 the *client* reaches this point
    /// before the server has checked the client's certificate; a server-side rejection then arrives as
    /// `errorCaught(.handshakeFailed)` right afterwards, so treat the link as mutual only once the peer
    /// has sent data.
    case handshakeCompleted(peerDNSNames: [String], protocolVersion: String)
}

/// One OpenSSL connection fed through memory BIOs, so NIO owns all socket I/O and OpenSSL only ever
/// transforms bytes (the swift-nio-ssl engine/handler split).
final class SSLConnection {
    let ssl: OpaquePointer
    /// Ciphertext from the network, consumed by OpenSSL.
    let networkIn: OpaquePointer
    /// Ciphertext produced by OpenSSL, to be written to the network.
    let networkOut: OpaquePointer
    /// Keeps the SSL_CTX alive for as long as this SSL uses it.
    let context: PeerTLSContext

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

    func feed(_ buffer: ByteBuffer) {
        buffer.withUnsafeReadableBytes { bytes in
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

    /// Pending ciphertext, or nil when OpenSSL has nothing to send.
    func takeOutput(allocator: ByteBufferAllocator) -> ByteBuffer? {
        let pending = Int(ks_BIO_pending(networkOut))
        guard pending > 0 else { return nil }
        var buffer = allocator.buffer(capacity: pending)
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: pending) { space in
            var read = 0
            guard BIO_read_ex(networkOut, space.baseAddress, pending, &read) == 1 else { return 0 }
            return read
        }
        return buffer.readableBytes > 0 ? buffer : nil
    }

    var peerDNSNames: [String] {
        guard let cert = SSL_get0_peer_certificate(ssl) else { return [] }
        return X509Names.dnsNames(cert)
    }

    /// Names in the certificate the peer presented even when verification failed (for error messages).
    var presentedDNSNames: [String] {
        guard let cert = ks_SSL_peer_chain_leaf(ssl) else { return peerDNSNames }
        return X509Names.dnsNames(cert)
    }
}

/// Mutual TLS 1.3 for one peer connection, as a NIO duplex handler between the socket (ciphertext) and
/// the cluster protocol (plaintext).
///
/// State machine: idle → handshaking → active → closing → closed. Writes and flushes issued before the
/// handshake completes are held and replayed after it, so the shell can queue its hello right away.
/// Any failure fires `errorCaught(PeerTLSError)` once and closes the channel.
public final class PeerTLSHandler: ChannelDuplexHandler, RemovableChannelHandler {
    public typealias InboundIn = ByteBuffer
    public typealias InboundOut = ByteBuffer
    public typealias OutboundIn = ByteBuffer
    public typealias OutboundOut = ByteBuffer

    enum State: Equatable { case idle, handshaking, active, closing, closed }

    private(set) var state: State = .idle
    private let role: PeerTLSRole
    private let closeTimeout: TimeAmount
    private let connection: SSLConnection?
    private let setupError: PeerTLSError?
    private var bufferedWrites: [(data: ByteBuffer, promise: EventLoopPromise<Void>?)] = []
    /// How many of `bufferedWrites` were followed by a flush before the handshake completed.
    private var bufferedFlushedCount = 0
    private var closePromise: EventLoopPromise<Void>?
    private var closeTimer: Scheduled<Void>?
    private var receivedApplicationData = false

    /// - Parameter closeTimeout: how long `close()` waits for the peer's close_notify before closing anyway,
    ///   so a vanished peer cannot hold a connection open.
    public init(context: PeerTLSContext, role: PeerTLSRole, closeTimeout: TimeAmount = .seconds(3)) {
        self.role = role
        self.closeTimeout = closeTimeout
        do {
            self.connection = try SSLConnection(context: context, role: role)
            self.setupError = nil
        } catch {
            self.connection = nil
            self.setupError = error
        }
    }

    // MARK: lifecycle

    public func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { startHandshake(context: context) }
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        cancelCloseTimer()
        failBufferedWrites(ChannelError.ioOnClosedChannel)
        if state != .closed { state = .closed }
    }

    public func channelActive(context: ChannelHandlerContext) {
        context.fireChannelActive()
        if state == .idle { startHandshake(context: context) }
    }

    public func channelInactive(context: ChannelHandlerContext) {
        let previous = state
        state = .closed
        cancelCloseTimer()
        failBufferedWrites(ChannelError.ioOnClosedChannel)
        switch previous {
        case .handshaking:
            context.fireErrorCaught(PeerTLSError.handshakeFailed(reason: "connection closed by the peer during the handshake"))
        case .active:
            context.fireErrorCaught(PeerTLSError.uncleanShutdown)
        case .closing:
            // We asked to close and the connection is closed; a peer that drops TCP instead of answering
            // our close_notify cannot truncate anything we still wanted.
            closePromise?.succeed(())
            closePromise = nil
        case .idle, .closed:
            break
        }
        context.fireChannelInactive()
    }

    public func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed, state == .active || state == .handshaking {
            // Half-closure without close_notify is the same truncation risk as EOF.
            fail(context: context, error: state == .active ? .uncleanShutdown
                 : .handshakeFailed(reason: "connection closed by the peer during the handshake"))
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    // MARK: inbound

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard let connection, state != .closed else { return }
        connection.feed(unwrapInboundIn(data))
        switch state {
        case .idle:
            startHandshake(context: context)
        case .handshaking:
            doHandshakeStep(context: context)
        case .active, .closing:
            readPlaintext(context: context)
        case .closed:
            break
        }
    }

    public func channelReadComplete(context: ChannelHandlerContext) {
        flushOutput(context: context)
        context.fireChannelReadComplete()
    }

    // MARK: outbound

    public func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let buffer = unwrapOutboundIn(data)
        switch state {
        case .idle, .handshaking:
            bufferedWrites.append((buffer, promise))
        case .active:
            encryptAndWrite(context: context, buffer, promise: promise)
        case .closing:
            promise?.fail(ChannelError.outputClosed)
        case .closed:
            promise?.fail(ChannelError.ioOnClosedChannel)
        }
    }

    public func flush(context: ChannelHandlerContext) {
        switch state {
        case .idle, .handshaking:
            bufferedFlushedCount = bufferedWrites.count
        case .active, .closing, .closed:
            context.flush()
        }
    }

    public func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        guard mode == .all else {
            if mode == .input {
                context.close(mode: mode, promise: promise)
            } else {
                // Half-closing TLS output would need a separate state; peers always close fully.
                promise?.fail(ChannelError.operationUnsupported)
            }
            return
        }
        switch state {
        case .idle, .handshaking:
            // Nothing authenticated to say goodbye to; OpenSSL cannot send close_notify mid-handshake.
            state = .closed
            failBufferedWrites(ChannelError.ioOnClosedChannel)
            context.close(mode: .all, promise: promise)
        case .active:
            guard let connection else { return }
            state = .closing
            closePromise = promise
            OpenSSLErrors.clear()
            let rc = SSL_shutdown(connection.ssl)
            if rc < 0 { _ = OpenSSLErrors.drain(fallback: "") }
            flushOutput(context: context)
            if rc == 1 {
                finishClose(context: context)
            } else {
                closeTimer = context.eventLoop.assumeIsolated().scheduleTask(in: closeTimeout) { [self] in
                    // The peer never answered our close_notify: close without it.
                    if state == .closing { finishClose(context: context) }
                }
            }
        case .closing:
            if let promise {
                if let closePromise { closePromise.futureResult.cascade(to: promise) } else { closePromise = promise }
            }
        case .closed:
            context.close(mode: mode, promise: promise)
        }
    }

    // MARK: engine

    private func startHandshake(context: ChannelHandlerContext) {
        guard state == .idle else { return }
        if let setupError {
            fail(context: context, error: setupError)
            return
        }
        state = .handshaking
        doHandshakeStep(context: context)
    }

    private func doHandshakeStep(context: ChannelHandlerContext) {
        guard let connection, state == .handshaking else { return }
        OpenSSLErrors.clear()
        let rc = SSL_do_handshake(connection.ssl)
        if rc == 1 {
            flushOutput(context: context)
            handshakeCompleted(context: context)
            return
        }
        let code = SSL_get_error(connection.ssl, rc)
        switch code {
        case SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE:
            flushOutput(context: context)
        default:
            let error = handshakeError(connection: connection, code: code)
            fail(context: context, error: error)
        }
    }

    private func handshakeError(connection: SSLConnection, code: Int32) -> PeerTLSError {
        let reasons = OpenSSLErrors.drain(fallback: "OpenSSL error \(code)")
        let verify = SSL_get_verify_result(connection.ssl)
        if verify != Int(X509_V_OK) {
            if verify == Int(X509_V_ERR_HOSTNAME_MISMATCH), case .client(let expected) = role {
                return .peerNameMismatch(expected: sanitize(expected), found: connection.presentedDNSNames)
            }
            return .peerCertificateRejected(reason: OpenSSLErrors.verifyResultString(verify))
        }
        return .handshakeFailed(reason: reasons)
    }

    private func handshakeCompleted(context: ChannelHandlerContext) {
        guard let connection else { return }
        // Verification is mandatory in the context, but check again: a handshake that "succeeds" without
        // a verified peer certificate must never reach the cluster protocol.
        let verify = SSL_get_verify_result(connection.ssl)
        guard verify == Int(X509_V_OK) else {
            fail(context: context, error: .peerCertificateRejected(reason: OpenSSLErrors.verifyResultString(verify)))
            return
        }
        guard SSL_get0_peer_certificate(connection.ssl) != nil else {
            fail(context: context, error: .peerCertificateRejected(reason: "peer sent no certificate"))
            return
        }
        // The context pins TLS 1.3; refuse anything else even if a future OpenSSL default changes.
        guard SSL_version(connection.ssl) == TLS1_3_VERSION else {
            fail(context: context, error: .handshakeFailed(reason: "peer negotiated a protocol older than TLS 1.3"))
            return
        }
        let names = connection.peerDNSNames
        switch role {
        case .client(let expected):
            guard names.contains(where: { $0.lowercased() == expected.lowercased() }) else {
                fail(context: context, error: .peerNameMismatch(expected: sanitize(expected), found: names))
                return
            }
        case .server:
            guard !names.isEmpty else {
                fail(context: context, error: .peerCertificateRejected(
                    reason: "certificate has no subjectAltName DNS entry naming its node"))
                return
            }
        }
        let version = SSL_get_version(connection.ssl).map { String(cString: $0) } ?? "unknown"
        state = .active
        flushBufferedWrites(context: context)
        guard state == .active else { return }
        context.fireUserInboundEventTriggered(PeerTLSEvent.handshakeCompleted(peerDNSNames: names, protocolVersion: version))
        // Application data may have arrived in the same read as the peer's final handshake flight.
        if state == .active || state == .closing { readPlaintext(context: context) }
    }

    private func readPlaintext(context: ChannelHandlerContext) {
        guard let connection else { return }
        let chunk = 16 * 1024
        while state == .active || state == .closing {
            OpenSSLErrors.clear()
            var buffer = context.channel.allocator.buffer(capacity: chunk)
            var rc: Int32 = 0
            buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: chunk) { space in
                var read = 0
                rc = SSL_read_ex(connection.ssl, space.baseAddress, space.count, &read)
                return rc == 1 ? read : 0
            }
            if rc == 1 {
                receivedApplicationData = true
                context.fireChannelRead(wrapInboundOut(buffer))
                continue
            }
            let code = SSL_get_error(connection.ssl, rc)
            switch code {
            case SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE:
                // Post-handshake messages (KeyUpdate) may need an answer.
                flushOutput(context: context)
            case SSL_ERROR_ZERO_RETURN:
                peerSentCloseNotify(context: context)
            default:
                let reasons = OpenSSLErrors.drain(fallback: "OpenSSL error \(code)")
                // In TLS 1.3 the server judges the client's certificate after the client finished its side,
                // so the server's rejection alert arrives here, before any application data.
                if case .client = role, !receivedApplicationData {
                    fail(context: context, error: .handshakeFailed(reason: "peer rejected the connection: \(reasons)"))
                } else {
                    fail(context: context, error: .protocolError(reason: reasons))
                }
            }
            return
        }
    }

    private func peerSentCloseNotify(context: ChannelHandlerContext) {
        guard let connection else { return }
        switch state {
        case .active:
            // Answer with our own close_notify, then close: the peer chose to end the connection.
            OpenSSLErrors.clear()
            if SSL_shutdown(connection.ssl) < 0 { _ = OpenSSLErrors.drain(fallback: "") }
            flushOutput(context: context)
            state = .closed
            failBufferedWrites(ChannelError.ioOnClosedChannel)
            context.close(promise: nil)
        case .closing:
            finishClose(context: context)
        case .idle, .handshaking, .closed:
            break
        }
    }

    private func finishClose(context: ChannelHandlerContext) {
        state = .closed
        cancelCloseTimer()
        let promise = closePromise
        closePromise = nil
        context.close(promise: promise)
    }

    private func encryptAndWrite(context: ChannelHandlerContext, _ buffer: ByteBuffer, promise: EventLoopPromise<Void>?) {
        guard let connection else { return }
        guard buffer.readableBytes > 0 else {
            // SSL_write rejects empty writes; pass it on so promise order is kept.
            context.write(wrapOutboundOut(buffer), promise: promise)
            return
        }
        OpenSSLErrors.clear()
        var written = 0
        let rc = buffer.withUnsafeReadableBytes { bytes in
            SSL_write_ex(connection.ssl, bytes.baseAddress, bytes.count, &written)
        }
        guard rc == 1 else {
            let error = PeerTLSError.protocolError(reason: OpenSSLErrors.drain(fallback: "SSL_write failed"))
            promise?.fail(error)
            fail(context: context, error: error)
            return
        }
        if let output = connection.takeOutput(allocator: context.channel.allocator) {
            context.write(wrapOutboundOut(output), promise: promise)
        } else {
            promise?.succeed(())
        }
    }

    private func flushBufferedWrites(context: ChannelHandlerContext) {
        let writes = bufferedWrites
        let flushedCount = bufferedFlushedCount
        bufferedWrites = []
        bufferedFlushedCount = 0
        for (index, write) in writes.enumerated() {
            guard state == .active else {
                write.promise?.fail(ChannelError.ioOnClosedChannel)
                continue
            }
            encryptAndWrite(context: context, write.data, promise: write.promise)
            if index + 1 == flushedCount { context.flush() }
        }
    }

    private func flushOutput(context: ChannelHandlerContext) {
        guard let connection, let output = connection.takeOutput(allocator: context.channel.allocator) else { return }
        context.writeAndFlush(wrapOutboundOut(output), promise: nil)
    }

    private func fail(context: ChannelHandlerContext, error: PeerTLSError) {
        guard state != .closed else { return }
        state = .closed
        cancelCloseTimer()
        failBufferedWrites(error)
        flushOutput(context: context)  // the alert, so the peer learns why
        context.fireErrorCaught(error)
        let promise = closePromise
        closePromise = nil
        context.close(promise: promise)
    }

    private func failBufferedWrites(_ error: Error) {
        let writes = bufferedWrites
        bufferedWrites = []
        bufferedFlushedCount = 0
        for write in writes { write.promise?.fail(error) }
    }

    private func cancelCloseTimer() {
        closeTimer?.cancel()
        closeTimer = nil
    }
}
