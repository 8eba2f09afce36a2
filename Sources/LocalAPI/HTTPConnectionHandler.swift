import Logging
import NIOCore
import NIOHTTP1
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Per-connection limits; all bounded so one client cannot exhaust the daemon.
public struct LocalAPILimits: Sendable {
    /// Largest accepted request body (certificate uploads are the biggest legitimate ones).
    public var maxBodyBytes: Int = 256 * 1024
    /// Request head limit (request line and header fields); larger heads get 400.
    public var maxHeaderBytes: Int = 16 * 1024
    /// Header fields one request may carry; more get 400.
    public var maxHeaderCount: Int = 128
    /// A connection must deliver a complete request within this time of connecting or of its
    /// previous response, or it is closed (bounds idle keep-alive and slowloris clients).
    public var requestTimeout: TimeAmount = .seconds(120)
    /// Connections beyond this are closed at once.
    public var maxConnections: Int = 1024
    /// Connections one uid may hold, so a single local user cannot lock every other out.
    public var maxConnectionsPerUID: Int = 256
    /// A uid exempt from the per-uid cap (the daemon's own: it is trusted with everything anyway).
    public var uncappedUID: UInt32? = nil
    /// Streamed responses whose unsent backlog exceeds this are cut off.
    public var maxStreamBacklogBytes: Int = 1 << 20
    public init() {}
}

/// Drives one local connection: parses requests with `HTTPRequestParser` (bounded), asks the
/// responder, writes each answer as one buffer. Requests are handled one at a time, so pipelined
/// requests are answered in order: while an answer is outstanding, received bytes wait in
/// `received` and no more are read once some are waiting.
final class HTTPConnectionHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private enum State {
        /// Reading (and parsing) the next request.
        case idle
        /// A `.deferred` answer is outstanding.
        case responding
        case streaming(APIEventStream)
        /// The last answer is written; the connection closes once it is flushed.
        case closing
        case closed
    }

    private let responder: APIResponder
    private let limits: LocalAPILimits
    private let server: LocalAPIServerCounters
    private let logger: Logger
    private var state = State.idle
    private var parser: HTTPRequestParser
    /// Received bytes not yet parsed (nil when none, so the channel's receive buffer is not kept
    /// referenced and NIO can reuse it for the next read).
    private var received: ByteBuffer?
    /// A `read()` held back because requests are waiting (backpressure for pipelining clients).
    private var readHeld = false
    private var caller: PeerCredentials?
    /// When the connection must have delivered its next request; nil while a request is being
    /// answered or streamed. One timer per connection re-checks it, instead of scheduling and
    /// cancelling a timer for every request (a heap insert/remove and allocations each time).
    private var requestDeadline: NIODeadline?
    private var timer: Scheduled<Void>?
    private var streamBacklog = 0

    /// TCP listeners (metrics) have no SO_PEERCRED; their callers are `PeerCredentials.anonymous`.
    private let anonymous: Bool

    init(responder: APIResponder, limits: LocalAPILimits, server: LocalAPIServerCounters, logger: Logger, anonymous: Bool = false) {
        self.anonymous = anonymous
        self.responder = responder
        self.limits = limits
        self.server = server
        self.logger = logger
        self.parser = HTTPRequestParser(limits: HTTPParserLimits(
            maxHeadBytes: limits.maxHeaderBytes, maxHeaderCount: limits.maxHeaderCount, maxBodyBytes: limits.maxBodyBytes))
    }

    func channelActive(context: ChannelHandlerContext) {
        if anonymous {
            caller = .anonymous
            armTimeout(context: context)
            context.fireChannelActive()
            return
        }
        let channel = context.channel
        guard let provider = channel as? SocketOptionProvider else {
            logger.error("local connection without socket options; closing")
            context.close(promise: nil)
            return
        }
        // On the event loop this completes synchronously.
        let credentials: EventLoopFuture<PeerCredentials> = provider.unsafeGetSocketOption(
            level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(SO_PEERCRED))
        let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
        credentials.whenComplete { result in
            switch result {
            case .success(let cred):
                if cred.uid == handler.value.limits.uncappedUID {
                    handler.value.caller = cred
                    return
                }
                guard handler.value.server.acquire(uid: cred.uid, limit: handler.value.limits.maxConnectionsPerUID) else {
                    handler.value.logger.warning("local connection refused: uid \(cred.uid) already holds \(handler.value.limits.maxConnectionsPerUID) connections")
                    channel.close(promise: nil)
                    return
                }
                handler.value.caller = cred
                handler.value.holdsUIDSlot = true
            case .failure(let error):
                handler.value.logger.error("cannot read SO_PEERCRED of a local connection (\(error)); closing")
                channel.close(promise: nil)
            }
        }
        armTimeout(context: context)
        context.fireChannelActive()
    }

    /// Whether this connection counts against its uid's limit.
    private var holdsUIDSlot = false

    func channelInactive(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
        requestDeadline = nil
        received = nil
        if holdsUIDSlot, let caller { server.release(uid: caller.uid); holdsUIDSlot = false }
        if case .streaming(let stream) = state { stream.cancel() }
        state = .closed
        context.fireChannelInactive()
    }

    private func armTimeout(context: ChannelHandlerContext) {
        requestDeadline = context.eventLoop.now + limits.requestTimeout
        if timer == nil { scheduleTimer(context: context, at: requestDeadline!) }
    }

    private func scheduleTimer(context: ChannelHandlerContext, at deadline: NIODeadline) {
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleTask(deadline: deadline) {
            let (handler, context) = loopBound.value
            handler.timer = nil
            guard let due = handler.requestDeadline else { return } // re-armed by the next armTimeout
            if due > context.eventLoop.now {
                handler.scheduleTimer(context: context, at: due)
            } else {
                handler.logger.debug("local connection idle or too slow for \(handler.limits.requestTimeout); closing")
                context.close(promise: nil)
            }
        }
    }

    // MARK: Reading

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = unwrapInboundIn(data)
        switch state {
        case .idle, .responding:
            if received == nil {
                received = incoming
            } else {
                received!.writeBuffer(&incoming)
            }
            processReceived(context: context)
        case .streaming, .closing, .closed:
            // A streamed answer ends the connection: anything the client sends meanwhile is
            // dropped (it is still read, so a closed connection is noticed at once).
            return
        }
    }

    /// Holds reads back while requests are waiting to be answered, and while answers are waiting
    /// to be sent (the channel is not writable: the client does not read), so a pipelining client
    /// cannot make the daemon buffer requests or answers without bound.
    func read(context: ChannelHandlerContext) {
        if mustHoldReads(context) {
            readHeld = true
            return
        }
        context.read()
    }

    private func mustHoldReads(_ context: ChannelHandlerContext) -> Bool {
        switch state {
        case .responding: return received != nil
        case .idle: return !context.channel.isWritable
        case .streaming, .closing, .closed: return false
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { processReceived(context: context) }
        context.fireChannelWritabilityChanged()
    }

    /// Parses and answers buffered requests until one is outstanding, more bytes are needed, or
    /// the client stops reading; answers go out in one flush at the end.
    private func processReceived(context: ChannelHandlerContext) {
        parsing: while case .idle = state, var buffer = received, context.channel.isWritable {
            received = nil // unique while parsing: no copy-on-write
            let event = parser.next(&buffer)
            received = buffer.readableBytes > 0 ? buffer : nil
            switch event {
            case .needMore:
                break parsing
            case .sendContinue(let version):
                var interim = context.channel.allocator.buffer(capacity: 32)
                interim.writeStaticString(version == .http1_0 ? "HTTP/1.0 100 Continue\r\n\r\n" : "HTTP/1.1 100 Continue\r\n\r\n")
                context.write(wrapOutboundOut(interim), promise: nil)
                unflushed = true
            case .request(let head, let body):
                requestDeadline = nil
                dispatch(context: context, head: head, body: body)
            case .failure(let error, let version):
                received = nil
                logger.debug("local connection sent a bad request: \(error.message)")
                write(context: context, response: .error(error, allocator: context.channel.allocator),
                      version: version, keepAlive: false, headRequest: false)
            }
        }
        if unflushed {
            unflushed = false
            context.flush()
        }
        if readHeld, !mustHoldReads(context) {
            readHeld = false
            context.read()
        }
    }

    /// Answers written but not flushed yet (flushed once per batch of pipelined requests).
    private var unflushed = false

    private func dispatch(context: ChannelHandlerContext, head: ParsedRequestHead, body: ByteBuffer) {
        guard let caller else {
            state = .closing
            context.close(promise: nil)
            return
        }
        let request = APIRequest(method: head.method, uri: head.target, fieldLines: head.fieldLines, body: body,
                                 caller: caller, requestID: server.nextRequestID())
        let keepAlive = head.keepAlive
        let isHead = head.method == .HEAD
        // Only when the access log is on: copying the logger's metadata and formatting the id
        // on every request showed up in the get-key profile.
        let accessLog = logger.logLevel <= .debug ? { () -> Logger in
            var requestLogger = logger
            requestLogger[metadataKey: "request"] = "\(request.requestID)"
            return requestLogger
        }() : nil
        switch responder.handle(request, allocator: context.channel.allocator, eventLoop: context.eventLoop) {
        case .response(let response):
            accessLog?.debug("uid \(caller.uid) \(head.method.rawValue) \(head.target) -> \(response.status.code)")
            write(context: context, response: response, version: head.version, keepAlive: keepAlive, headRequest: isHead)
        case .deferred(let future):
            state = .responding
            let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            future.hop(to: context.eventLoop).whenComplete { result in
                let (handler, context) = loopBound.value
                guard case .responding = handler.state else { return }
                let response: APIResponse
                switch result {
                case .success(let answer):
                    response = answer
                    accessLog?.debug("uid \(caller.uid) \(head.method.rawValue) \(head.target) -> \(answer.status.code)")
                case .failure(let error):
                    let apiError = (error as? APIError) ?? APIError(.internalError, "request failed: \(error)")
                    response = .error(apiError, allocator: context.channel.allocator)
                }
                handler.state = .idle
                handler.write(context: context, response: response, version: head.version, keepAlive: keepAlive, headRequest: isHead)
                handler.processReceived(context: context)
            }
        case .stream(let status, let stream):
            accessLog?.debug("uid \(caller.uid) \(head.method.rawValue) \(head.target) -> \(status.code) (stream)")
            startStream(context: context, status: status, stream: stream, version: head.version)
        }
    }

    // MARK: Writing

    /// Writes the whole answer (status line, headers, body) as one buffer and, for keep-alive,
    /// re-arms the request deadline; otherwise closes once it is flushed.
    private func write(context: ChannelHandlerContext, response: APIResponse, version: HTTPVersion, keepAlive: Bool, headRequest: Bool) {
        let bodyBytes = headRequest ? 0 : response.body.readableBytes
        var out = context.channel.allocator.buffer(capacity: 160 + response.contentType.utf8.count + bodyBytes)
        HTTPResponseWriter.writeHead(into: &out, version: version, status: response.status, contentType: response.contentType,
                                     contentLength: response.body.readableBytes, extraHeaders: response.extraHeaders,
                                     connection: keepAlive ? (version == .http1_0 ? .keepAlive : .default) : .close)
        if bodyBytes > 0 { out.writeImmutableBuffer(response.body) }
        if keepAlive {
            // Flushed by `processReceived`, which every path to here returns through.
            context.write(wrapOutboundOut(out), promise: nil)
            unflushed = true
            state = .idle
            armTimeout(context: context)
        } else {
            state = .closing
            received = nil
            let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
            context.writeAndFlush(wrapOutboundOut(out)).whenComplete { _ in
                loopBound.value.close(promise: nil)
            }
        }
    }

    /// `GET /v1/events`: the head at once, then one chunk per producer write. HTTP/1.0 has no
    /// chunked encoding, so there the body is delimited by the connection's close.
    private func startStream(context: ChannelHandlerContext, status: HTTPResponseStatus, stream: APIEventStream, version: HTTPVersion) {
        let chunked = version != .http1_0
        var head = context.channel.allocator.buffer(capacity: 160)
        HTTPResponseWriter.writeStatusLine(into: &head, version: version, status: status)
        head.writeStaticString("content-type: application/x-ndjson\r\ncache-control: no-store\r\n")
        head.writeStaticString(chunked ? "transfer-encoding: chunked\r\n\r\n" : "connection: close\r\n\r\n")
        context.writeAndFlush(wrapOutboundOut(head), promise: nil)
        state = .streaming(stream)
        received = nil
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        let eventLoop = context.eventLoop
        let sink = APIStreamSink(
            eventLoop: eventLoop,
            writeChunk: { chunk in
                eventLoop.preconditionInEventLoop()
                let (handler, context) = loopBound.value
                guard case .streaming = handler.state else { return }
                let size = chunk.readableBytes
                guard size > 0 else { return } // an empty chunk would end the body
                var out = context.channel.allocator.buffer(capacity: size + 16)
                if chunked {
                    out.writeString(String(size, radix: 16))
                    out.writeStaticString("\r\n")
                }
                out.writeImmutableBuffer(chunk)
                if chunked { out.writeStaticString("\r\n") }
                handler.streamBacklog += size
                context.writeAndFlush(handler.wrapOutboundOut(out)).whenComplete { _ in
                    loopBound.value.0.streamBacklog -= size
                }
            },
            finishStream: {
                eventLoop.preconditionInEventLoop()
                let (handler, context) = loopBound.value
                guard case .streaming = handler.state else { return }
                handler.state = .closing
                var end = context.channel.allocator.buffer(capacity: 8)
                if chunked { end.writeStaticString("0\r\n\r\n") }
                context.writeAndFlush(handler.wrapOutboundOut(end)).whenComplete { _ in
                    loopBound.value.1.close(promise: nil)
                }
            },
            pending: { loopBound.value.0.streamBacklog }
        )
        stream.start(sink: sink)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        logger.debug("local connection error: \(error)")
        context.close(promise: nil)
    }
}

/// Serializes response heads (RFC 9112 4 and 5). Every header is the daemon's own (constants,
/// lengths, content types chosen by the router), so nothing is re-validated here.
enum HTTPResponseWriter {
    enum ConnectionHeader { case `default`, keepAlive, close }

    static func writeStatusLine(into buffer: inout ByteBuffer, version: HTTPVersion, status: HTTPResponseStatus) {
        buffer.writeStaticString(version == .http1_0 ? "HTTP/1.0 " : "HTTP/1.1 ")
        switch status {
        case .ok: buffer.writeStaticString("200 OK\r\n")
        case .notFound: buffer.writeStaticString("404 Not Found\r\n")
        default:
            buffer.writeString(String(status.code))
            buffer.writeStaticString(" ")
            buffer.writeString(status.reasonPhrase)
            buffer.writeStaticString("\r\n")
        }
    }

    static func writeHead(into buffer: inout ByteBuffer, version: HTTPVersion, status: HTTPResponseStatus, contentType: String,
                          contentLength: Int, extraHeaders: [(String, String)], connection: ConnectionHeader) {
        writeStatusLine(into: &buffer, version: version, status: status)
        buffer.writeStaticString("content-type: ")
        buffer.writeString(contentType)
        buffer.writeStaticString("\r\ncontent-length: ")
        writeDecimal(contentLength, into: &buffer)
        buffer.writeStaticString("\r\n")
        for (name, value) in extraHeaders {
            buffer.writeString(name)
            buffer.writeStaticString(": ")
            buffer.writeString(value)
            buffer.writeStaticString("\r\n")
        }
        switch connection {
        case .default: break
        case .keepAlive: buffer.writeStaticString("connection: keep-alive\r\n")
        case .close: buffer.writeStaticString("connection: close\r\n")
        }
        buffer.writeStaticString("\r\n")
    }

    /// A non-negative integer in decimal, without going through `String`.
    static func writeDecimal(_ value: Int, into buffer: inout ByteBuffer) {
        var digits: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8,
                     UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8) =
            (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        var n = UInt(max(0, value))
        var count = 0
        withUnsafeMutableBytes(of: &digits) { raw in
            repeat {
                raw[19 - count] = UInt8(ascii: "0") + UInt8(n % 10)
                n /= 10
                count += 1
            } while n > 0
            buffer.writeBytes(UnsafeRawBufferPointer(rebasing: raw[(20 - count)...]))
        }
    }
}

/// Counters shared by all connections of one server.
final class LocalAPIServerCounters: Sendable {
    private let requestIDs = Atomic<UInt64>(0)
    let connections = Atomic<Int>(0)
    private let perUID = Mutex<[UInt32: Int]>([:])
    func nextRequestID() -> UInt64 { requestIDs.add(1, ordering: .relaxed).newValue }

    func acquire(uid: UInt32, limit: Int) -> Bool {
        perUID.withLock { counts in
            let current = counts[uid, default: 0]
            guard current < limit else { return false }
            counts[uid] = current + 1
            return true
        }
    }

    func release(uid: UInt32) {
        perUID.withLock { counts in
            let left = counts[uid, default: 1] - 1
            counts[uid] = left > 0 ? left : nil
        }
    }
}
