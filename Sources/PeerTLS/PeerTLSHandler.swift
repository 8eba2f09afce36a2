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

/// Mutual TLS 1.3 for one peer connection, as a NIO duplex handler between the socket (ciphertext) and
/// the cluster protocol (plaintext).
///
/// All TLS work happens in a `TLSEngine`; this handler only moves bytes, keeps the close timer and the
/// promises, and turns the engine's answers into pipeline events. State machine:
/// idle → handshaking → active → closing → closed. Writes and flushes issued before the handshake
/// completes are held and replayed after it (flushed exactly where the caller flushed), so the shell can
/// queue its hello right away. Any failure fires `errorCaught(PeerTLSError)` once and closes the channel.
public final class PeerTLSHandler: ChannelDuplexHandler, RemovableChannelHandler {
    public typealias InboundIn = ByteBuffer
    public typealias InboundOut = ByteBuffer
    public typealias OutboundIn = ByteBuffer
    public typealias OutboundOut = ByteBuffer

    /// Each case carries exactly what is valid in it: the engine while the connection lives, and while
    /// closing the give-up timer and the promise of the `close` that started it.
    fileprivate enum State {
        /// The engine could not be created; reported as the connection's error once it is active.
        case unusable(PeerTLSError)
        case idle(TLSEngine)
        case handshaking(TLSEngine)
        case active(TLSEngine)
        /// Our close_notify is sent; waiting for the peer's until `timer` fires.
        case closing(TLSEngine, timer: Scheduled<Void>, promise: EventLoopPromise<Void>?)
        case closed
    }

    private struct BufferedWrite {
        var data: ByteBuffer
        var promise: EventLoopPromise<Void>?
    }

    private var state: State
    private let closeTimeout: TimeAmount
    /// Plaintext not yet encrypted: everything written before the handshake completed, then whatever was
    /// written since the last flush. The mark is the last write a flush covered.
    private var bufferedWrites = MarkedCircularBuffer<BufferedWrite>(initialCapacity: 16)

    /// - Parameter closeTimeout: how long `close()` waits for the peer's close_notify before closing anyway,
    ///   so a vanished peer cannot hold a connection open.
    public init(context: PeerTLSContext, role: PeerTLSRole, closeTimeout: TimeAmount = .seconds(3)) {
        self.closeTimeout = closeTimeout
        do {
            self.state = .idle(try TLSEngine(context: context, role: role))
        } catch {
            self.state = .unusable(error)
        }
    }

    // MARK: lifecycle

    public func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { startHandshake(context: context) }
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        let previous = state
        state = .closed
        if case .closing(_, let timer, let promise) = previous {
            timer.cancel()
            promise?.fail(ChannelError.ioOnClosedChannel)
        }
        failBufferedWrites(ChannelError.ioOnClosedChannel)
    }

    public func channelActive(context: ChannelHandlerContext) {
        context.fireChannelActive()
        startHandshake(context: context)
    }

    public func channelInactive(context: ChannelHandlerContext) {
        let previous = state
        state = .closed
        failBufferedWrites(ChannelError.ioOnClosedChannel)
        switch previous {
        case .handshaking:
            context.fireErrorCaught(PeerTLSError.handshakeFailed(reason: "connection closed by the peer during the handshake"))
        case .active:
            context.fireErrorCaught(PeerTLSError.uncleanShutdown)
        case .closing(_, let timer, let promise):
            // We asked to close and the connection is closed; a peer that drops TCP instead of answering
            // our close_notify cannot truncate anything we still wanted.
            timer.cancel()
            promise?.succeed(())
        case .unusable, .idle, .closed:
            break
        }
        context.fireChannelInactive()
    }

    public func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            // Half-closure without close_notify is the same truncation risk as EOF.
            switch state {
            case .active:
                fail(context: context, error: .uncleanShutdown)
                return
            case .handshaking:
                fail(context: context, error: .handshakeFailed(reason: "connection closed by the peer during the handshake"))
                return
            case .unusable, .idle, .closing, .closed:
                break
            }
        }
        context.fireUserInboundEventTriggered(event)
    }

    // MARK: inbound

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let ciphertext = unwrapInboundIn(data)
        switch state {
        case .idle(let engine):
            engine.receive(ciphertext)
            startHandshake(context: context)
        case .handshaking(let engine):
            engine.receive(ciphertext)
            handshakeStep(context: context)
        case .active(let engine), .closing(let engine, _, _):
            engine.receive(ciphertext)
            readPlaintext(context: context)
        case .unusable, .closed:
            break
        }
    }

    public func channelReadComplete(context: ChannelHandlerContext) {
        if let engine = state.engine { sendPendingRecords(engine, context: context) }
        context.fireChannelReadComplete()
    }

    // MARK: outbound

    public func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch state {
        case .unusable, .idle, .handshaking, .active:
            bufferedWrites.append(BufferedWrite(data: unwrapOutboundIn(data), promise: promise))
        case .closing:
            promise?.fail(ChannelError.outputClosed)
        case .closed:
            promise?.fail(ChannelError.ioOnClosedChannel)
        }
    }

    public func flush(context: ChannelHandlerContext) {
        switch state {
        case .unusable, .idle, .handshaking:
            bufferedWrites.mark()
        case .active:
            bufferedWrites.mark()
            writeFlushedBufferedWrites(context: context)
        case .closing, .closed:
            context.flush()
        }
    }

    public func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        switch mode {
        case .input:
            context.close(mode: .input, promise: promise)
            return
        case .output:
            // Half-closing TLS output would need a separate state; peers always close fully.
            promise?.fail(ChannelError.operationUnsupported)
            return
        case .all:
            break
        }
        switch state {
        case .unusable, .idle, .handshaking:
            // Nothing authenticated to say goodbye to; OpenSSL cannot send close_notify mid-handshake.
            state = .closed
            failBufferedWrites(ChannelError.ioOnClosedChannel)
            context.close(mode: .all, promise: promise)
        case .active(let engine):
            // What was written before close goes out before our close_notify.
            bufferedWrites.mark()
            writeFlushedBufferedWrites(context: context)
            guard case .active = state else {
                context.close(mode: .all, promise: promise)
                return
            }
            switch engine.shutdown() {
            case .complete:
                state = .closed
                sendPendingRecords(engine, context: context)
                context.close(promise: promise)
            case .closeNotifySent:
                let timer = context.eventLoop.assumeIsolated().scheduleTask(in: closeTimeout) { [self] in
                    // The peer never answered our close_notify: close without it.
                    finishClose(context: context)
                }
                state = .closing(engine, timer: timer, promise: promise)
                sendPendingRecords(engine, context: context)
            }
        case .closing(let engine, let timer, let pending):
            guard let promise else { return }
            if let pending {
                pending.futureResult.cascade(to: promise)
            } else {
                state = .closing(engine, timer: timer, promise: promise)
            }
        case .closed:
            context.close(mode: mode, promise: promise)
        }
    }

    // MARK: driving the engine

    private func startHandshake(context: ChannelHandlerContext) {
        switch state {
        case .unusable(let error):
            fail(context: context, error: error)
        case .idle(let engine):
            state = .handshaking(engine)
            handshakeStep(context: context)
        case .handshaking, .active, .closing, .closed:
            break
        }
    }

    private func handshakeStep(context: ChannelHandlerContext) {
        guard case .handshaking(let engine) = state else { return }
        switch engine.handshake() {
        case .wantRead, .wantWrite:
            sendPendingRecords(engine, context: context)
        case .failed(let error):
            fail(context: context, error: error)
        case .completed(let names, let version):
            sendPendingRecords(engine, context: context)
            state = .active(engine)
            if bufferedWrites.hasMark { writeFlushedBufferedWrites(context: context) }
            guard case .active = state else { return }
            context.fireUserInboundEventTriggered(PeerTLSEvent.handshakeCompleted(peerDNSNames: names, protocolVersion: version))
            // Application data may have arrived in the same read as the peer's final handshake flight.
            readPlaintext(context: context)
        }
    }

    /// Hands up every chunk of plaintext the received ciphertext holds, as long as the connection is
    /// readable (a handler above may close it from inside `channelRead`).
    private func readPlaintext(context: ChannelHandlerContext) {
        while let engine = state.readableEngine {
            switch engine.read(allocator: context.channel.allocator) {
            case .data(let plaintext):
                context.fireChannelRead(wrapInboundOut(plaintext))
            case .wantRead, .wantWrite:
                // Post-handshake messages (KeyUpdate) may need an answer.
                sendPendingRecords(engine, context: context)
                return
            case .closeNotify:
                peerSentCloseNotify(context: context)
                return
            case .failed(let error):
                fail(context: context, error: error)
                return
            }
        }
    }

    private func peerSentCloseNotify(context: ChannelHandlerContext) {
        switch state {
        case .active(let engine):
            // Answer with our own close_notify, then close: the peer chose to end the connection.
            _ = engine.shutdown()
            state = .closed
            sendPendingRecords(engine, context: context)
            failBufferedWrites(ChannelError.ioOnClosedChannel)
            context.close(promise: nil)
        case .closing:
            finishClose(context: context)
        case .unusable, .idle, .handshaking, .closed:
            break
        }
    }

    /// Ends a close we started, once the peer answered or the timer gave up on it.
    private func finishClose(context: ChannelHandlerContext) {
        guard case .closing(_, let timer, let promise) = state else { return }
        state = .closed
        timer.cancel()
        context.close(promise: promise)
    }

    /// Encrypts the buffered writes up to and including the marked one, writes their records (each
    /// write's promise completes with its records), then flushes once. A write or flush issued from a
    /// promise callback meanwhile queues behind them, so the order of writes always holds.
    private func writeFlushedBufferedWrites(context: ChannelHandlerContext) {
        while bufferedWrites.hasMark, case .active(let engine) = state {
            let write = bufferedWrites.removeFirst()
            switch engine.write(write.data) {
            case .encrypted:
                // An empty write has no record; passing it on keeps its promise in order with the others.
                let records = engine.pendingOutput(allocator: context.channel.allocator) ?? context.channel.allocator.buffer(capacity: 0)
                context.write(wrapOutboundOut(records), promise: write.promise)
            case .failed(let error):
                write.promise?.fail(error)
                fail(context: context, error: error)
            }
        }
        context.flush()
    }

    private func sendPendingRecords(_ engine: TLSEngine, context: ChannelHandlerContext) {
        guard let records = engine.pendingOutput(allocator: context.channel.allocator) else { return }
        context.writeAndFlush(wrapOutboundOut(records), promise: nil)
    }

    private func fail(context: ChannelHandlerContext, error: PeerTLSError) {
        let engine: TLSEngine?
        let closePromise: EventLoopPromise<Void>?
        switch state {
        case .closed:
            return
        case .unusable:
            (engine, closePromise) = (nil, nil)
        case .idle(let current), .handshaking(let current), .active(let current):
            (engine, closePromise) = (current, nil)
        case .closing(let current, let timer, let promise):
            timer.cancel()
            (engine, closePromise) = (current, promise)
        }
        state = .closed
        failBufferedWrites(error)
        if let engine { sendPendingRecords(engine, context: context) }  // the alert, so the peer learns why
        context.fireErrorCaught(error)
        context.close(promise: closePromise)
    }

    private func failBufferedWrites(_ error: Error) {
        while let write = bufferedWrites.popFirst() { write.promise?.fail(error) }
    }
}

extension PeerTLSHandler.State {
    /// The engine, in every state that still has one.
    fileprivate var engine: TLSEngine? {
        switch self {
        case .idle(let engine), .handshaking(let engine), .active(let engine), .closing(let engine, _, _): engine
        case .unusable, .closed: nil
        }
    }

    /// The engine while application data may still arrive: after the handshake, until closed.
    fileprivate var readableEngine: TLSEngine? {
        switch self {
        case .active(let engine), .closing(let engine, _, _): engine
        case .unusable, .idle, .handshaking, .closed: nil
        }
    }
}
