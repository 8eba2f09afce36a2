import Foundation
import NIOCore
import NIOPosix

/// What one connection saw during the measured window.
struct ConnectionResult: Sendable {
    var latencies: [UInt64] = []
    var errors = 0
    var responseBytes = 0
    var bodyBytes = 0
    var closedEarly = false
}

/// Tells every connection when to start sending and which completions count.
struct LoadWindow: Sendable {
    var measureStart: UInt64
    var measureEnd: UInt64
}

/// A closed-loop HTTP/1.1 keep-alive client connection: one request in flight, the next one is
/// written the moment the previous response is complete.
///
/// It parses only what it must (status code, Content-Length, header end) instead of running the
/// full NIOHTTP1 decoder, because the client shares 2 cores with the server under test and every
/// cycle it burns is taken from the server. keystored and nginx get exactly the same client.
final class ClosedLoopHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let request: ByteBuffer
    private let promise: EventLoopPromise<ConnectionResult>
    private var window: LoadWindow?
    private var buffer: ByteBuffer
    private var sentAt: UInt64 = 0
    private var result = ConnectionResult()
    private var finished = false
    /// Header length and body length of the response being received, once its head is parsed.
    private var framing: (head: Int, body: Int, status: Int)?

    init(request: ByteBuffer, promise: EventLoopPromise<ConnectionResult>) {
        self.request = request
        self.promise = promise
        self.buffer = ByteBufferAllocator().buffer(capacity: 8192)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let window = event as? LoadWindow {
            self.window = window
            // A server that stops answering must not hang the whole run: give up 5 s after the end.
            let remaining = Int64(window.measureEnd &- min(window.measureEnd, monotonicNanos())) + 5_000_000_000
            context.eventLoop.assumeIsolated().scheduleTask(in: .nanoseconds(remaining)) { [self] in
                if !finished { result.errors += 1; finish() }
            }
            send(context: context)
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    private func send(context: ChannelHandlerContext) {
        sentAt = monotonicNanos()
        context.writeAndFlush(wrapOutboundOut(request), promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = unwrapInboundIn(data)
        buffer.writeBuffer(&incoming)
        while !finished, let done = takeResponse() {
            let now = monotonicNanos()
            guard let window else { continue }
            if sentAt >= window.measureStart && now <= window.measureEnd {
                if done.status == 200 {
                    result.latencies.append(now - sentAt)
                    result.responseBytes = done.total
                    result.bodyBytes = done.body
                } else {
                    result.errors += 1
                }
            }
            if now >= window.measureEnd {
                finish()
                return
            }
            send(context: context)
        }
    }

    /// Removes one complete response from `buffer`, if there is one.
    private func takeResponse() -> (status: Int, total: Int, body: Int)? {
        if framing == nil {
            guard let head = buffer.withUnsafeReadableBytes({ Self.parseHead($0) }) else { return nil }
            framing = head
        }
        guard let f = framing, buffer.readableBytes >= f.head + f.body else { return nil }
        buffer.moveReaderIndex(forwardBy: f.head + f.body)
        buffer.discardReadBytes()
        framing = nil
        return (f.status, f.head + f.body, f.body)
    }

    /// Finds the end of the head and reads the status and Content-Length. A response without a
    /// Content-Length would be misread, so it is reported as status 0 (an error) with no body.
    private static func parseHead(_ bytes: UnsafeRawBufferPointer) -> (head: Int, body: Int, status: Int)? {
        guard bytes.count >= 16 else { return nil }
        var end: Int?
        var i = 3
        while i < bytes.count {
            if bytes[i] == 10 && bytes[i - 1] == 13 && bytes[i - 2] == 10 && bytes[i - 3] == 13 { end = i; break }
            i += 1
        }
        guard let end else { return nil }
        let headLength = end + 1
        let head = UnsafeRawBufferPointer(rebasing: bytes[0..<headLength])
        // "HTTP/1.1 200 OK"
        var status = 0
        for i in 9..<12 { status = status * 10 + Int(head[i] &- 48) }
        var contentLength: Int?
        var lineStart = 0
        let needle = Array("content-length:".utf8)
        for i in 0..<(headLength - 1) where head[i] == 13 && head[i + 1] == 10 {
            let line = lineStart..<i
            lineStart = i + 2
            guard line.count > needle.count else { continue }
            var matches = true
            for (j, c) in needle.enumerated() where head[line.lowerBound + j] | 0x20 != c { matches = false; break }
            guard matches else { continue }
            var n = 0
            for k in (line.lowerBound + needle.count)..<line.upperBound {
                let d = head[k]
                if d == 32 { continue }
                guard d >= 48 && d <= 57 else { break }
                n = n * 10 + Int(d - 48)
            }
            contentLength = n
        }
        guard let contentLength else { return (headLength, 0, 0) }
        return (headLength, contentLength, status)
    }

    private func finish() {
        guard !finished else { return }
        finished = true
        promise.succeed(result)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !finished { result.closedEarly = true; finish() }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        result.errors += 1
        context.close(promise: nil)
    }
}

/// One row of the table.
struct LoadRow: Sendable {
    var target: String
    var connections: Int
    var requests: Int
    var seconds: Double
    var latency: LatencySummary
    var errors: Int
    var closedEarly: Int
    var responseBytes: Int
    var bodyBytes: Int
    /// CPU time per measured request (µs), or nil when not measured.
    var serverCPUMicros: Double?
    var clientCPUMicros: Double?
    var throughput: Double { Double(requests) / seconds }
}

/// Runs `connections` closed-loop connections against a Unix socket for warm-up + duration.
func runLoad(group: EventLoopGroup, target: String, socketPath: String, path: String, serverPIDs: [Int32],
             connections: Int, warmup: Double, duration: Double) async throws -> LoadRow {
    var head = ByteBufferAllocator().buffer(capacity: 128)
    head.writeString("GET \(path) HTTP/1.1\r\nHost: localhost\r\nUser-Agent: keystore-bench\r\n\r\n")
    let request = head
    let bootstrap = ClientBootstrap(group: group)
    var channels: [(Channel, EventLoopFuture<ConnectionResult>)] = []
    defer { for (channel, _) in channels { channel.close(promise: nil) } }
    for _ in 0..<connections {
        let channel: Channel
        do {
            channel = try await bootstrap.connect(unixDomainSocketPath: socketPath).get()
        } catch {
            throw BenchError.loadFailed("cannot connect to \(target) at \(socketPath): \(error); is it running?")
        }
        let promise = channel.eventLoop.makePromise(of: ConnectionResult.self)
        try await channel.eventLoop.submit {
            try channel.pipeline.syncOperations.addHandler(ClosedLoopHandler(request: request, promise: promise))
        }.get()
        channels.append((channel, promise.futureResult))
    }
    let start = monotonicNanos()
    let window = LoadWindow(measureStart: start + UInt64(warmup * 1e9), measureEnd: start + UInt64((warmup + duration) * 1e9))
    for (channel, _) in channels { channel.pipeline.fireUserInboundEventTriggered(window) }
    let now = monotonicNanos()
    if window.measureStart > now { try await Task.sleep(nanoseconds: window.measureStart - now) }
    let serverCPU0 = serverPIDs.isEmpty ? nil : cpuSeconds(pids: serverPIDs)
    let clientCPU0 = ownCPUSeconds()
    var all: [UInt64] = []
    all.reserveCapacity(connections * 1000)
    var errors = 0, closed = 0, responseBytes = 0, bodyBytes = 0
    for (_, future) in channels {
        let r = try await future.get()
        all.append(contentsOf: r.latencies)
        errors += r.errors
        if r.closedEarly { closed += 1 }
        responseBytes = max(responseBytes, r.responseBytes)
        bodyBytes = max(bodyBytes, r.bodyBytes)
    }
    let clientCPU = ownCPUSeconds() - clientCPU0
    var serverCPU: Double?
    if let start = serverCPU0, let end = cpuSeconds(pids: serverPIDs) { serverCPU = end - start }
    let perRequest = { (seconds: Double) in all.isEmpty ? Double.nan : seconds * 1e6 / Double(all.count) }
    return LoadRow(target: target, connections: connections, requests: all.count, seconds: duration,
                   latency: LatencySummary(nanos: all), errors: errors, closedEarly: closed,
                   responseBytes: responseBytes, bodyBytes: bodyBytes,
                   serverCPUMicros: serverCPU.map(perRequest), clientCPUMicros: perRequest(clientCPU))
}
