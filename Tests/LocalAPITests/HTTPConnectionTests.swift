@testable import LocalAPI
import Logging
import NIOCore
import NIOEmbedded
import NIOHTTP1
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// The connection handler as the server installs it (`LocalAPIServer.acceptConnection`), on an
/// EmbeddedChannel: framing of answers, keep-alive, pipelining order, 100-continue, streaming,
/// timeouts and the connection cap.
final class HTTPConnectionTests: XCTestCase {
    /// Answers by path: `/deferred` later (when the test completes `pending`), `/stream` with an
    /// event stream, anything else at once with the request echoed back.
    /// @unchecked Sendable: used only from the test's thread (the EmbeddedEventLoop runs there).
    final class Responder: APIResponder, @unchecked Sendable {
        var seen: [String] = []
        var pending: EventLoopPromise<APIResponse>?
        var stream: TestStream?

        func handle(_ request: APIRequest, allocator: ByteBufferAllocator, eventLoop: EventLoop) -> APIResult {
            seen.append("\(request.method.rawValue) \(request.uri)")
            switch request.pathSegments ?? [] {
            case ["deferred"]:
                let promise = eventLoop.makePromise(of: APIResponse.self)
                pending = promise
                return .deferred(promise.futureResult)
            case ["stream"]:
                let stream = TestStream()
                self.stream = stream
                return .stream(status: .ok, stream)
            case ["missing"]:
                return .response(.error(APIError(.notFound, "no such thing"), allocator: allocator))
            default:
                var body = allocator.buffer(capacity: 64)
                body.writeString("\(request.method.rawValue) \(request.uri) body=\(String(buffer: request.body))")
                return .response(APIResponse(contentType: "text/plain", body: body, extraHeaders: [("cache-control", "no-store")]))
            }
        }
    }

    /// @unchecked Sendable: as above, one thread.
    final class TestStream: APIEventStream, @unchecked Sendable {
        var sink: APIStreamSink?
        var cancelled = false
        func start(sink: APIStreamSink) { self.sink = sink }
        func cancel() { cancelled = true }
    }

    var responder: Responder!
    var counters: LocalAPIServerCounters!
    var limits = LocalAPILimits()

    override func setUp() {
        responder = Responder()
        counters = LocalAPIServerCounters()
    }

    private func connect() throws -> EmbeddedChannel {
        let channel = EmbeddedChannel()
        try LocalAPIServer.acceptConnection(channel, responder: responder, limits: limits, counters: counters,
                                            logger: Logger(label: "test"), anonymous: true).wait()
        try channel.connect(to: SocketAddress(unixDomainSocketPath: "/test.sock")).wait()
        return channel
    }

    private func send(_ channel: EmbeddedChannel, _ text: String) throws {
        try channel.writeInbound(ByteBuffer(string: text))
        channel.embeddedEventLoop.run()
    }

    private func output(_ channel: EmbeddedChannel) throws -> String {
        var text = ""
        while let chunk = try channel.readOutbound(as: ByteBuffer.self) { text += String(buffer: chunk) }
        return text
    }

    func testAnswersAreFramedAndKeepAliveIsTheDefault() throws {
        let channel = try connect()
        try send(channel, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        let body = "GET /hello body="
        XCTAssertEqual(try output(channel),
                       "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: \(body.utf8.count)\r\ncache-control: no-store\r\n\r\n\(body)")
        XCTAssertTrue(channel.isActive)
        try send(channel, "GET /missing HTTP/1.1\r\nConnection: close\r\n\r\n")
        let answer = try output(channel)
        XCTAssertTrue(answer.hasPrefix("HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\n"), answer)
        XCTAssertTrue(answer.contains("\r\nconnection: close\r\n\r\n{\"error\":\"not_found\",\"message\":\"no such thing\"}\n"), answer)
        XCTAssertFalse(channel.isActive, "closed after Connection: close")
    }

    func testHTTP10() throws {
        let channel = try connect()
        try send(channel, "GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        let first = try output(channel)
        XCTAssertTrue(first.hasPrefix("HTTP/1.0 200 OK\r\n"), first)
        XCTAssertTrue(first.contains("\r\nconnection: keep-alive\r\n"), first)
        XCTAssertTrue(channel.isActive)
        try send(channel, "GET /b HTTP/1.0\r\n\r\n")
        let second = try output(channel)
        XCTAssertTrue(second.hasPrefix("HTTP/1.0 200 OK\r\n") && second.contains("\r\nconnection: close\r\n"), second)
        XCTAssertFalse(channel.isActive, "HTTP/1.0 closes by default")
    }

    func testPipelinedRequestsWaitForADeferredAnswer() throws {
        let channel = try connect()
        try send(channel, "POST /deferred HTTP/1.1\r\nContent-Length: 2\r\n\r\nhiGET /after HTTP/1.1\r\n\r\nGET /last HTTP/1.1\r\n\r\n")
        XCTAssertEqual(responder.seen, ["POST /deferred"], "the next request waits for the outstanding answer")
        XCTAssertEqual(try output(channel), "")
        var body = ByteBuffer()
        body.writeString("done")
        responder.pending?.succeed(APIResponse(contentType: "text/plain", body: body))
        channel.embeddedEventLoop.run()
        XCTAssertEqual(responder.seen, ["POST /deferred", "GET /after", "GET /last"])
        let answers = try output(channel)
        let bodies = answers.components(separatedBy: "\r\n\r\n").dropFirst().map { $0.components(separatedBy: "HTTP/1.1").first ?? "" }
        XCTAssertEqual(bodies, ["done", "GET /after body=", "GET /last body="], answers)
    }

    /// A client that pipelines requests but does not read the answers: once the channel stops
    /// being writable, no more requests are answered (nor read) until it is writable again.
    func testAnswersWaitWhileTheClientDoesNotRead() throws {
        let channel = try connect()
        channel.isWritable = false
        channel.pipeline.fireChannelWritabilityChanged()
        try send(channel, "GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n")
        XCTAssertEqual(responder.seen, [], "nothing is answered while answers cannot be sent")
        XCTAssertEqual(try output(channel), "")
        channel.isWritable = true
        channel.pipeline.fireChannelWritabilityChanged()
        XCTAssertEqual(responder.seen, ["GET /a", "GET /b"])
        let answers = try output(channel)
        XCTAssertEqual(answers.components(separatedBy: "HTTP/1.1 200 OK").count - 1, 2, answers)
    }

    func testExpectContinueGetsAnInterimAnswer() throws {
        let channel = try connect()
        try send(channel, "POST /upload HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
        XCTAssertEqual(try output(channel), "HTTP/1.1 100 Continue\r\n\r\n")
        try send(channel, "data")
        let answer = try output(channel)
        XCTAssertTrue(answer.hasPrefix("HTTP/1.1 200 OK\r\n") && answer.hasSuffix("POST /upload body=data"), answer)
        // Too large: 413 at once, no 100, closed.
        try send(channel, "POST /upload HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 999999\r\n\r\n")
        let refused = try output(channel)
        XCTAssertTrue(refused.hasPrefix("HTTP/1.1 413 Payload Too Large\r\n"), refused)
        XCTAssertTrue(refused.contains("\"error\":\"payload_too_large\""), refused)
        XCTAssertFalse(channel.isActive)
    }

    func testChunkedRequestBody() throws {
        let channel = try connect()
        try send(channel, "POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        XCTAssertEqual(try output(channel), "")
        try send(channel, "2\r\nde\r\n0\r\n\r\n")
        XCTAssertTrue(try output(channel).hasSuffix("POST /c body=abcde"))
    }

    func testBadRequestsGetAJSONErrorAndTheConnectionCloses() throws {
        for request in ["NOT HTTP AT ALL\r\n\r\n", "GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
                        "GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n", "GET / HTTP/1.1\nHost: x\n\n"] {
            let channel = try connect()
            try send(channel, request + "GET /never HTTP/1.1\r\n\r\n")
            let answer = try output(channel)
            XCTAssertTrue(answer.hasPrefix("HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"), answer)
            XCTAssertTrue(answer.contains("\"error\":\"bad_request\",\"message\":\"malformed"), answer)
            XCTAssertTrue(answer.contains("connection: close"), answer)
            XCTAssertFalse(channel.isActive, request)
            XCTAssertFalse(responder.seen.contains("GET /never"), "nothing after a refused request is answered")
        }
    }

    func testHEADAnswersCarryNoBody() throws {
        let channel = try connect()
        try send(channel, "HEAD /x HTTP/1.1\r\n\r\nGET /y HTTP/1.1\r\n\r\n")
        let answers = try output(channel)
        let length = "HEAD /x body=".utf8.count
        XCTAssertTrue(answers.hasPrefix("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: \(length)\r\ncache-control: no-store\r\n\r\nHTTP/1.1 200 OK"), answers)
    }

    func testEventStreamsAreChunkedAndEndTheConnection() throws {
        let channel = try connect()
        try send(channel, "GET /stream HTTP/1.1\r\n\r\n")
        XCTAssertEqual(try output(channel), "HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\ncache-control: no-store\r\ntransfer-encoding: chunked\r\n\r\n")
        let sink = try XCTUnwrap(responder.stream?.sink)
        sink.write(ByteBuffer(string: "{\"type\":\"hello\"}\n"))
        sink.write(ByteBuffer())
        XCTAssertEqual(try output(channel), "11\r\n{\"type\":\"hello\"}\n\r\n", "an empty write would end the body, so it is skipped")
        try send(channel, "GET /ignored HTTP/1.1\r\n\r\n")
        XCTAssertEqual(responder.seen, ["GET /stream"], "requests during a stream are not answered")
        sink.finish()
        channel.embeddedEventLoop.run()
        XCTAssertEqual(try output(channel), "0\r\n\r\n")
        XCTAssertFalse(channel.isActive)
    }

    func testEventStreamInHTTP10IsDelimitedByClose() throws {
        let channel = try connect()
        try send(channel, "GET /stream HTTP/1.0\r\n\r\n")
        XCTAssertEqual(try output(channel), "HTTP/1.0 200 OK\r\ncontent-type: application/x-ndjson\r\ncache-control: no-store\r\nconnection: close\r\n\r\n")
        responder.stream?.sink?.write(ByteBuffer(string: "line\n"))
        XCTAssertEqual(try output(channel), "line\n")
        _ = try channel.finish(acceptAlreadyClosed: true)
        XCTAssertEqual(responder.stream?.cancelled, true, "a closed connection cancels its stream")
    }

    func testSlowOrIdleClientsAreClosedAfterTheRequestTimeout() throws {
        let channel = try connect()
        channel.embeddedEventLoop.advanceTime(by: .seconds(119))
        XCTAssertTrue(channel.isActive)
        // Trickling does not extend the deadline: only a complete request does.
        try send(channel, "GET /slow HTTP/1.1\r\nX-Slow: ")
        channel.embeddedEventLoop.advanceTime(by: .seconds(2))
        XCTAssertFalse(channel.isActive, "a request not complete within 120 s of connecting is cut off")

        let idle = try connect()
        try send(idle, "GET /a HTTP/1.1\r\n\r\n")
        _ = try output(idle)
        idle.embeddedEventLoop.advanceTime(by: .seconds(119))
        try send(idle, "GET /b HTTP/1.1\r\n\r\n")
        idle.embeddedEventLoop.advanceTime(by: .seconds(119))
        XCTAssertTrue(idle.isActive, "each answer re-arms the deadline")
        idle.embeddedEventLoop.advanceTime(by: .seconds(2))
        XCTAssertFalse(idle.isActive, "an idle keep-alive connection is closed after 120 s")
    }

    func testConnectionsBeyondTheLimitAreClosedAtOnce() throws {
        limits.maxConnections = 2
        let first = try connect(), second = try connect()
        let third = EmbeddedChannel()
        try LocalAPIServer.acceptConnection(third, responder: responder, limits: limits, counters: counters,
                                            logger: Logger(label: "test"), anonymous: true).wait()
        third.embeddedEventLoop.run()
        XCTAssertFalse(third.isActive)
        XCTAssertEqual(counters.connections.load(ordering: .relaxed), 2)
        XCTAssertTrue(first.isActive && second.isActive)
        _ = try first.finish()
        let fourth = try connect()
        XCTAssertTrue(fourth.isActive, "a slot frees when a connection closes")
    }

    // MARK: The stale-socket probe (issue 11 item 6)

    private func listeningSocket(_ path: String, backlog: Int32) throws -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: Array(path.utf8)); raw[path.utf8.count] = 0
        }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        XCTAssertEqual(bound, 0)
        if backlog >= 0 { XCTAssertEqual(listen(fd, backlog), 0) }
        return fd
    }

    func testOnlyARefusedConnectMakesASocketStale() throws {
        let directory = try XCTUnwrap(String(validatingCString: mkdtemp(strdup("/tmp/ks-probe-XXXXXX"))!))
        defer { _ = try? FileManager.default.removeItem(atPath: directory) }

        // Bound but nobody listens (a crashed daemon's file): ECONNREFUSED, replaced.
        let stalePath = directory + "/stale.sock"
        let stale = try listeningSocket(stalePath, backlog: -1)
        close(stale)
        XCTAssertEqual(LocalAPIServer.probeSocket(stalePath), .stale)
        XCTAssertNoThrow(try LocalAPIServer.prepareSocketPath(stalePath))
        XCTAssertFalse(FileManager.default.fileExists(atPath: stalePath), "the stale file was removed")
        XCTAssertEqual(LocalAPIServer.probeSocket(directory + "/none.sock"), .stale, "ENOENT")

        // A live server: in use.
        let livePath = directory + "/live.sock"
        let live = try listeningSocket(livePath, backlog: 16)
        defer { close(live) }
        XCTAssertEqual(LocalAPIServer.probeSocket(livePath), .inUse)

        // A live server whose listen backlog is full answers EAGAIN: it must not be taken over.
        let busyPath = directory + "/busy.sock"
        let busy = try listeningSocket(busyPath, backlog: 0)
        defer { close(busy) }
        var queued: [Int32] = []
        defer { for fd in queued { close(fd) } }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in raw.copyBytes(from: Array(busyPath.utf8)); raw[busyPath.utf8.count] = 0 }
        var lastErrno: Int32 = 0
        for _ in 0..<64 {
            let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
            queued.append(fd)
            let result = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
            if result != 0 { lastErrno = errno; break }
        }
        XCTAssertEqual(lastErrno, EAGAIN, "the backlog should be full")
        guard case .unknown(let reason) = LocalAPIServer.probeSocket(busyPath) else {
            return XCTFail("a full backlog must not count as stale: \(LocalAPIServer.probeSocket(busyPath))")
        }
        XCTAssertTrue(LocalAPIServer.isSomeoneListening(busyPath))
        XCTAssertThrowsError(try LocalAPIServer.prepareSocketPath(busyPath)) { error in
            let text = "\(error)"
            XCTAssertTrue(text.contains(busyPath) && text.contains(reason) && text.contains("left alone"), text)
        }
        XCTAssertTrue(FileManager.default.fileExists(atPath: busyPath), "the busy server's socket is still there")
    }
}
