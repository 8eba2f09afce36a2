import Foundation
import KeystoreJSON
import XCTest
@testable import KeystoreClient

final class KeystoreConnectionTests: XCTestCase {
    /// Runs `body` against a canned server and always tears both ends down.
    func withServer(_ handler: @escaping @Sendable (RecordedRequest) -> CannedReply,
                    _ body: (CannedServer) throws -> Void) throws {
        let server = try CannedServer(handler: handler)
        defer { server.stop() }
        try body(server)
    }

    func assertError(_ expected: (KeystoreClientError) -> Bool, _ what: String,
                     file: StaticString = #filePath, line: UInt = #line, _ call: () throws -> Void) {
        do {
            try call()
            XCTFail("expected \(what), got success", file: file, line: line)
        } catch let error as KeystoreClientError {
            XCTAssertTrue(expected(error), "expected \(what), got \(error)", file: file, line: line)
        } catch {
            XCTFail("expected \(what), got \(error)", file: file, line: line)
        }
    }

    func isMalformed(_ e: KeystoreClientError) -> Bool { if case .malformedResponse = e { return true }; return false }

    func testContentLengthResponse() throws {
        try withServer({ _ in .bytes(Canned.response(200, "OK", headers: [("X-Thing", "a b ")], body: #"{"ok":true}"#)) }) { server in
            let conn = try KeystoreConnection(socketPath: server.path)
            defer { conn.close() }
            let r = try conn.request("GET", "/v1/health")
            XCTAssertEqual(r.status, 200)
            XCTAssertEqual(r.reason, "OK")
            XCTAssertEqual(r.header("x-thing"), "a b")
            XCTAssertEqual(r.header("CONTENT-LENGTH"), "11")
            XCTAssertEqual(String(decoding: r.body, as: UTF8.self), #"{"ok":true}"#)
            XCTAssertEqual(try JSONReader.parse(r.body)["ok"]?.boolValue, true)
            XCTAssertEqual(server.requests.first?.path, "/v1/health")
            XCTAssertEqual(server.requests.first?.header("host"), "localhost")
        }
    }

    func testChunkedResponseWithExtensionsAndTrailers() throws {
        var bytes = Array("HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n".utf8)
        bytes += Array("5;name=value\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\n".utf8)
        let reply = bytes
        try withServer({ _ in .bytes(reply) }) { server in
            let conn = try KeystoreConnection(socketPath: server.path)
            defer { conn.close() }
            let r = try conn.request("GET", "/x")
            XCTAssertEqual(String(decoding: r.body, as: UTF8.self), "hello 0123456789")
            // The connection stays usable after the trailer.
            let r2 = try conn.request("GET", "/y")
            XCTAssertEqual(r2.body.count, 16)
            XCTAssertEqual(server.accepts, 1)
        }
    }

    func testKeepAliveReusesOneConnection() throws {
        try withServer({ req in Canned.json(200, #"{"path":"\#(req.path)"}"#) }) { server in
            let conn = try KeystoreConnection(socketPath: server.path)
            defer { conn.close() }
            for i in 0..<50 {
                let body: [UInt8]? = i % 2 == 0 ? Array("{\"n\":\(i)}".utf8) : nil
                let r = try conn.request(i % 2 == 0 ? "POST" : "GET", "/r/\(i)", body: body)
                XCTAssertEqual(String(decoding: r.body, as: UTF8.self), #"{"path":"/r/\#(i)"}"#)
            }
            XCTAssertEqual(server.accepts, 1)
            XCTAssertEqual(conn.connectionsOpened, 1)
            XCTAssertEqual(server.requests.count, 50)
            XCTAssertEqual(server.requests[0].body, Array(#"{"n":0}"#.utf8))
            XCTAssertEqual(server.requests[0].header("content-type"), "application/json")
        }
    }

    func testConnectionCloseReconnectsForNextRequest() throws {
        try withServer({ _ in Canned.json(200, "{}", close: true) }) { server in
            let conn = try KeystoreConnection(socketPath: server.path)
            defer { conn.close() }
            for _ in 0..<3 { XCTAssertEqual(try conn.request("GET", "/a").status, 200) }
            XCTAssertEqual(server.accepts, 3)
        }
    }

    func testIdleKeepAliveClosedByServerIsRetriedForGET() throws {
        // The server closes after each answer without saying so; a GET on the stale socket is retried.
        try withServer({ _ in .bytes(Canned.response(body: "{}"), close: true) }) { server in
            let conn = try KeystoreConnection(socketPath: server.path)
            defer { conn.close() }
            XCTAssertEqual(try conn.request("GET", "/a").status, 200)
            XCTAssertEqual(try conn.request("GET", "/b").status, 200)
            XCTAssertEqual(server.requests.map(\.path), ["/a", "/b"])
        }
    }

    func testPOSTIsNotRetriedOnStaleConnection() throws {
        try withServer({ _ in .bytes(Canned.response(body: "{}"), close: true) }) { server in
            let conn = try KeystoreConnection(socketPath: server.path)
            defer { conn.close() }
            XCTAssertEqual(try conn.request("GET", "/a").status, 200)
            assertError({ $0 == .connectionClosed }, "connectionClosed") {
                _ = try conn.request("POST", "/v1/domains/d/keys/k/rotate")
            }
            XCTAssertEqual(server.requests.map(\.path), ["/a"])
        }
    }

    func testSplitReadsByteAtATime() throws {
        let chunked = Canned.chunked(["{\"a\":", "1}\n", "{\"b\":2}\n"])
        let plain = Canned.response(200, "OK", headers: [("X-Long", String(repeating: "h", count: 300))],
                                    body: #"{"versions":[1,2,3]}"#)
        try withServer({ req in .bytes(req.path == "/chunked" ? chunked : plain, byteAtATime: true) }) { server in
            let conn = try KeystoreConnection(socketPath: server.path)
            defer { conn.close() }
            let a = try conn.request("GET", "/plain")
            XCTAssertEqual(String(decoding: a.body, as: UTF8.self), #"{"versions":[1,2,3]}"#)
            XCTAssertEqual(a.header("x-long")?.count, 300)
            let b = try conn.request("GET", "/chunked")
            XCTAssertEqual(String(decoding: b.body, as: UTF8.self), "{\"a\":1}\n{\"b\":2}\n")
            var lines: [String] = []
            try conn.streamLines("/chunked") { lines.append($0); return true }
            XCTAssertEqual(lines, [#"{"a":1}"#, #"{"b":2}"#])
            XCTAssertEqual(server.accepts, 1)
        }
    }

    func testLargeBodiesAcrossManyReads() throws {
        let big = String(repeating: "0123456789abcdef", count: 200_000)  // 3.2 MB, many recv() calls
        let chunks = (0..<300).map { String(repeating: Character(UnicodeScalar(UInt8(97 + $0 % 26))), count: 1000 + $0) }
        let chunkedReply = Canned.chunked(chunks)
        try withServer({ req in req.path == "/big" ? .bytes(Canned.response(body: big)) : .bytes(chunkedReply) }) { server in
            let conn = try KeystoreConnection(socketPath: server.path)
            defer { conn.close() }
            for _ in 0..<2 {
                XCTAssertEqual(try conn.request("GET", "/big").body, Array(big.utf8))
                XCTAssertEqual(try conn.request("GET", "/chunks").body, Array(chunks.joined().utf8))
            }
            XCTAssertEqual(server.accepts, 1)
        }
    }

    func testMalformedStatusLines() throws {
        let bad = ["HTTP/1.1 2OO OK\r\n\r\n", "HTTP/2 200 OK\r\n\r\n", "FOO\r\n\r\n", "HTTP/1.1 200OK\r\n\r\n",
                   "HTTP/1.1 099 Low\r\n\r\n", "HTTP/1.1 200 OK\r\nBad Header: x\r\n\r\n",
                   "HTTP/1.1 200 OK\r\n folded\r\n\r\n", "HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n"]
        for text in bad {
            try withServer({ _ in .bytes(Array(text.utf8), close: true) }) { server in
                assertError(isMalformed, "malformedResponse for \(text.debugDescription)") {
                    _ = try KeystoreConnection(socketPath: server.path).request("GET", "/")
                }
            }
        }
    }

    func testBadFramingIsRejected() throws {
        let bad = [
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
            "HTTP/1.1 200 OK\r\nContent-Length: 999999999999999999\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: \(HTTPLimits.maxBodyBytes + 1)\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXY0\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5000000\r\n",  // 80 MiB chunk
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
        ]
        for text in bad {
            try withServer({ _ in .bytes(Array(text.utf8)) }) { server in
                let conn = try KeystoreConnection(socketPath: server.path)
                defer { conn.close() }
                assertError(isMalformed, "malformedResponse for \(text.debugDescription)") {
                    _ = try conn.request("GET", "/")
                }
            }
        }
    }

    func testOversizedHeaderBlockIsRefused() throws {
        let huge = Canned.response(200, "OK", headers: [("X-Big", String(repeating: "a", count: 70 * 1024))], body: "{}")
        try withServer({ _ in .bytes(huge) }) { server in
            let conn = try KeystoreConnection(socketPath: server.path)
            defer { conn.close() }
            assertError({ $0 == .malformedResponse("header block exceeds 65536 bytes") }, "header limit") {
                _ = try conn.request("GET", "/")
            }
        }
    }

    func testInterimResponseIsSkippedAndHTTP10BodyReadToEOF() throws {
        let reply = Array("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 200 OK\r\n\r\nuntil-close".utf8)
        try withServer({ _ in .bytes(reply, close: true) }) { server in
            let conn = try KeystoreConnection(socketPath: server.path)
            defer { conn.close() }
            let r = try conn.request("GET", "/")
            XCTAssertEqual(r.status, 200)
            XCTAssertEqual(String(decoding: r.body, as: UTF8.self), "until-close")
            XCTAssertFalse(conn.isOpen, "a body framed by EOF leaves nothing to reuse")
        }
    }

    func testServerClosingMidBody() throws {
        let partials = [
            "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"partial\":",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nonly-some",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n",
            "HTTP/1.1 200 OK\r\nContent-Le",
        ]
        for text in partials {
            try withServer({ _ in .bytes(Array(text.utf8), close: true) }) { server in
                let conn = try KeystoreConnection(socketPath: server.path)
                defer { conn.close() }
                assertError({ $0 == .connectionClosed }, "connectionClosed for \(text.debugDescription)") {
                    _ = try conn.request("GET", "/")
                }
            }
        }
    }

    func testTimeoutWhenDaemonNeverAnswers() throws {
        try withServer({ _ in .silence }) { server in
            let conn = try KeystoreConnection(socketPath: server.path, timeoutSeconds: 0.2)
            defer { conn.close() }
            let start = Date()
            assertError({ if case .timedOut = $0 { return true }; return false }, "timedOut") {
                _ = try conn.request("GET", "/")
            }
            XCTAssertLessThan(Date().timeIntervalSince(start), 5)
        }
    }

    func testSunPathTooLongAndMissingSocket() {
        let long = "/tmp/" + String(repeating: "x", count: 103)  // 108 bytes
        XCTAssertEqual(long.utf8.count, 108)
        assertError({ $0 == .socketPathTooLong(path: long, bytes: 108, limit: 107) }, "socketPathTooLong") {
            _ = try KeystoreConnection(socketPath: long)
        }
        let fits = String(long.dropLast())  // 107 bytes: accepted by the length check, then ENOENT
        assertError({ if case .cannotConnect(fits, _) = $0 { return true }; return false }, "cannotConnect") {
            _ = try KeystoreConnection(socketPath: fits)
        }
        let err = KeystoreClientError.socketPathTooLong(path: long, bytes: 108, limit: 107)
        XCTAssertTrue(err.description.contains(long))
        let missing = KeystoreClientError.cannotConnect(socket: "/nope.sock", reason: "No such file or directory")
        XCTAssertTrue(missing.description.contains("/nope.sock"))
        XCTAssertFalse(missing.description.contains("\n"))
    }

    func testRequestHeadRejectsInjection() {
        assertError({ if case .invalidArgument = $0 { return true }; return false }, "invalid path") {
            _ = try KeystoreConnection.requestHead(method: "GET", path: "/a b\r\nX: y", body: nil, headers: [])
        }
        assertError({ if case .invalidArgument = $0 { return true }; return false }, "invalid header") {
            _ = try KeystoreConnection.requestHead(method: "GET", path: "/a", body: nil, headers: [("X", "a\r\nB: c")])
        }
        let head = try? KeystoreConnection.requestHead(method: "POST", path: "/v1/reload", body: nil, headers: [])
        XCTAssertEqual(head.map { String(decoding: $0, as: UTF8.self) },
                       "POST /v1/reload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n")
    }

    func testStreamLinesStopsEarlyAndMapsErrors() throws {
        // Lines split across chunk boundaries, CRLF line ends and blank keep-alive lines.
        let stream = Array("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".utf8)
            + Array("7\r\n{\"n\":1}\r\n3\r\n\n{\"\r\n9\r\nn\":2}\r\n\r\n\r\n8\r\n{\"n\":3}\n\r\n8\r\n{\"n\":4}\n\r\n".utf8)
        let error = Canned.response(403, "Forbidden", body: #"{"error":"forbidden","message":"uid 1001 may not read events"}"#)
        try withServer({ req in .bytes(req.path == "/v1/events" ? stream : error) }) { server in
            var lines: [String] = []
            try KeystoreClient(socketPath: server.path).eventLines { line in
                lines.append(line)
                return lines.count < 3
            }
            XCTAssertEqual(lines, [#"{"n":1}"#, #"{"n":2}"#, #"{"n":3}"#])
            let conn = try KeystoreConnection(socketPath: server.path)
            defer { conn.close() }
            assertError({ $0 == .api(status: 403, code: "forbidden", message: "uid 1001 may not read events") },
                        "api error") {
                try conn.streamLines("/v1/other") { _ in true }
            }
        }
    }
}
