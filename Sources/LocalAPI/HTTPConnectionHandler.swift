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
    /// Header block limit enforced by the HTTP decoder.
    public var maxHeaderBytes: Int = 16 * 1024
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

/// Drives one local connection: assembles requests (bounded), asks the responder, writes the
/// answer. `HTTPServerPipelineHandler` in front of it guarantees one request at a time, so
/// pipelined requests are answered in order.
final class HTTPConnectionHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private enum State {
        case idle
        case receiving(HTTPRequestHead, ByteBuffer)
        case responding
        case streaming(APIEventStream)
        case closed
    }

    private let responder: APIResponder
    private let limits: LocalAPILimits
    private let server: LocalAPIServerCounters
    private let logger: Logger
    private var state = State.idle
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
        if holdsUIDSlot, let caller { server.release(uid: caller.uid); holdsUIDSlot = false }
        if case .streaming(let stream) = state { stream.cancel() }
        state = .closed
        context.fireChannelInactive()
    }

    private func armTimeout(context: ChannelHandlerContext) {
        requestDeadline = .now() + limits.requestTimeout
        if timer == nil { scheduleTimer(context: context, at: requestDeadline!) }
    }

    private func scheduleTimer(context: ChannelHandlerContext, at deadline: NIODeadline) {
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleTask(deadline: deadline) {
            let (handler, context) = loopBound.value
            handler.timer = nil
            guard let due = handler.requestDeadline else { return } // re-armed by the next armTimeout
            if due > .now() {
                handler.scheduleTimer(context: context, at: due)
            } else {
                handler.logger.debug("local connection idle or too slow for \(handler.limits.requestTimeout); closing")
                context.close(promise: nil)
            }
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            guard case .idle = state else { return }
            if let length = head.headers.first(name: "content-length").flatMap(Int.init), length > limits.maxBodyBytes {
                reject(context: context, head: head, APIError(.payloadTooLarge, "request body of \(length) bytes exceeds the \(limits.maxBodyBytes)-byte limit"))
                return
            }
            state = .receiving(head, context.channel.allocator.buffer(capacity: 0))
        case .body(var chunk):
            switch state {
            case .receiving(let head, var body):
                if body.readableBytes + chunk.readableBytes > limits.maxBodyBytes {
                    reject(context: context, head: head, APIError(.payloadTooLarge, "request body exceeds the \(limits.maxBodyBytes)-byte limit"))
                    return
                }
                state = .idle // drop the reference so the append does not copy
                body.writeBuffer(&chunk)
                state = .receiving(head, body)
            default:
                return
            }
        case .end:
            switch state {
            case .receiving(let head, let body):
                requestDeadline = nil
                dispatch(context: context, head: head, body: body)
            default:
                return
            }
        }
    }

    /// Answers at once and closes: the rest of an oversized body is never read.
    private func reject(context: ChannelHandlerContext, head: HTTPRequestHead, _ error: APIError) {
        let response = APIResponse.error(error, allocator: context.channel.allocator)
        write(context: context, response: response, version: head.version, keepAlive: false)
    }

    private func dispatch(context: ChannelHandlerContext, head: HTTPRequestHead, body: ByteBuffer) {
        guard let caller else {
            context.close(promise: nil)
            return
        }
        let request = APIRequest(method: head.method, uri: head.uri, headers: head.headers, body: body,
                                 caller: caller, requestID: server.nextRequestID())
        state = .responding
        let keepAlive = head.isKeepAlive
        var requestLogger = logger
        // Only when the access log is on: copying the logger's metadata and formatting the id
        // on every request showed up in the get-key profile.
        if logger.logLevel <= .debug { requestLogger[metadataKey: "request"] = "\(request.requestID)" }
        let accessLog = requestLogger
        switch responder.handle(request, allocator: context.channel.allocator, eventLoop: context.eventLoop) {
        case .response(let response):
            requestLogger.debug("uid \(caller.uid) \(head.method.rawValue) \(head.uri) -> \(response.status.code)")
            write(context: context, response: response, version: head.version, keepAlive: keepAlive)
        case .deferred(let future):
            let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            future.hop(to: context.eventLoop).whenComplete { result in
                let (handler, context) = loopBound.value
                guard case .responding = handler.state else { return }
                switch result {
                case .success(let response):
                    accessLog.debug("uid \(caller.uid) \(head.method.rawValue) \(head.uri) -> \(response.status.code)")
                    handler.write(context: context, response: response, version: head.version, keepAlive: keepAlive)
                case .failure(let error):
                    let apiError = (error as? APIError) ?? APIError(.internalError, "request failed: \(error)")
                    handler.write(context: context, response: .error(apiError, allocator: context.channel.allocator),
                               version: head.version, keepAlive: keepAlive)
                }
            }
        case .stream(let status, let stream):
            requestLogger.debug("uid \(caller.uid) \(head.method.rawValue) \(head.uri) -> \(status.code) (stream)")
            startStream(context: context, status: status, stream: stream, version: head.version)
        }
    }

    private func write(context: ChannelHandlerContext, response: APIResponse, version: HTTPVersion, keepAlive: Bool) {
        var headers = HTTPHeaders()
        headers.reserveCapacity(4 + response.extraHeaders.count)
        headers.add(name: "content-type", value: response.contentType)
        headers.add(name: "content-length", value: String(response.body.readableBytes))
        for (name, value) in response.extraHeaders { headers.add(name: name, value: value) }
        if !keepAlive { headers.add(name: "connection", value: "close") }
        let head = HTTPResponseHead(version: version, status: response.status, headers: headers)
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        if response.body.readableBytes > 0 {
            context.write(wrapOutboundOut(.body(.byteBuffer(response.body))), promise: nil)
        }
        let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in
            if !keepAlive { loopBound.value.close(promise: nil) }
        }
        if keepAlive {
            state = .idle
            armTimeout(context: context)
        } else {
            state = .closed
        }
    }

    private func startStream(context: ChannelHandlerContext, status: HTTPResponseStatus, stream: APIEventStream, version: HTTPVersion) {
        var headers = HTTPHeaders()
        headers.add(name: "content-type", value: "application/x-ndjson")
        headers.add(name: "transfer-encoding", value: "chunked")
        headers.add(name: "cache-control", value: "no-store")
        context.writeAndFlush(wrapOutboundOut(.head(HTTPResponseHead(version: version, status: status, headers: headers))), promise: nil)
        state = .streaming(stream)
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        let eventLoop = context.eventLoop
        let sink = APIStreamSink(
            eventLoop: eventLoop,
            writeChunk: { chunk in
                eventLoop.preconditionInEventLoop()
                let (handler, context) = loopBound.value
                guard case .streaming = handler.state else { return }
                let size = chunk.readableBytes
                handler.streamBacklog += size
                context.writeAndFlush(handler.wrapOutboundOut(.body(.byteBuffer(chunk)))).whenComplete { _ in
                    loopBound.value.0.streamBacklog -= size
                }
            },
            finishStream: {
                eventLoop.preconditionInEventLoop()
                let (handler, context) = loopBound.value
                guard case .streaming = handler.state else { return }
                handler.state = .closed
                context.writeAndFlush(handler.wrapOutboundOut(.end(nil))).whenComplete { _ in
                    loopBound.value.1.close(promise: nil)
                }
            },
            pending: { loopBound.value.0.streamBacklog }
        )
        stream.start(sink: sink)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if error is HTTPParserError {
            switch state {
            case .idle, .receiving:
                let response = APIResponse.error(APIError(.badRequest, "malformed HTTP request: \(error)"), allocator: context.channel.allocator)
                write(context: context, response: response, version: .http1_1, keepAlive: false)
            default:
                context.close(promise: nil)
            }
            return
        }
        logger.debug("local connection error: \(error)")
        context.close(promise: nil)
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
