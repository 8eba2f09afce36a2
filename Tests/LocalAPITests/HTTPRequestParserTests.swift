@testable import LocalAPI
import NIOCore
import NIOHTTP1
import XCTest

/// The local API's HTTP/1.1 request parser on its own: every limit and every refusal it documents.
final class HTTPRequestParserTests: XCTestCase {
    let limits = HTTPParserLimits(maxHeadBytes: 16 * 1024, maxHeaderCount: 128, maxBodyBytes: 256 * 1024)

    enum Outcome: Equatable {
        case request(method: String, target: String, version: String, keepAlive: Bool, body: String)
        case sendContinue
        case failure(status: UInt, code: String)
    }

    /// Feeds `input` in pieces of `split` bytes (0: all at once) and collects every event.
    private func parse(_ input: [UInt8], split: Int = 0, limits: HTTPParserLimits? = nil) -> [Outcome] {
        var parser = HTTPRequestParser(limits: limits ?? self.limits)
        var buffer = ByteBuffer()
        var outcomes: [Outcome] = []
        var offset = 0
        repeat {
            let end = split == 0 ? input.count : min(input.count, offset + split)
            buffer.writeBytes(input[offset..<end])
            offset = end
            events: while true {
                switch parser.next(&buffer) {
                case .needMore: break events
                case .sendContinue: outcomes.append(.sendContinue)
                case .request(let head, let body):
                    outcomes.append(.request(method: head.method.rawValue, target: head.target,
                                             version: head.version == .http1_1 ? "1.1" : "1.0", keepAlive: head.keepAlive,
                                             body: String(decoding: body.readableBytesView, as: UTF8.self)))
                case .failure(let error, _):
                    outcomes.append(.failure(status: error.status.code, code: error.code.rawValue))
                    return outcomes
                }
            }
        } while offset < input.count
        return outcomes
    }

    private func parse(_ text: String, split: Int = 0) -> [Outcome] { parse(Array(text.utf8), split: split) }

    private func get(_ target: String = "/v1/health", version: String = "1.1", keepAlive: Bool = true, body: String = "") -> Outcome {
        .request(method: "GET", target: target, version: version, keepAlive: keepAlive, body: body)
    }

    private let badRequest = Outcome.failure(status: 400, code: "bad_request")
    private let tooLarge = Outcome.failure(status: 413, code: "payload_too_large")

    func testSimpleRequestsAndKeepAliveRules() {
        XCTAssertEqual(parse("GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n"), [get()])
        XCTAssertEqual(parse("GET /v1/health HTTP/1.1\r\n\r\n"), [get()], "no header at all")
        XCTAssertEqual(parse("GET /v1/health HTTP/1.1\r\nConnection: close\r\n\r\n"), [get(keepAlive: false)])
        XCTAssertEqual(parse("GET /v1/health HTTP/1.1\r\nConnection: Keep-Alive, CLOSE\r\n\r\n"), [get(keepAlive: false)])
        XCTAssertEqual(parse("GET /v1/health HTTP/1.0\r\n\r\n"), [get(version: "1.0", keepAlive: false)])
        XCTAssertEqual(parse("GET /v1/health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"), [get(version: "1.0", keepAlive: true)])
        XCTAssertEqual(parse("GET http://localhost/v1/health HTTP/1.1\r\n\r\n"), [get("http://localhost/v1/health")], "absolute form")
        XCTAssertEqual(parse("\r\n\r\nGET /v1/health HTTP/1.1\r\n\r\n"), [get()], "empty lines before the request line are skipped")
        XCTAssertEqual(parse("get / HTTP/1.1\r\n\r\n"), [.request(method: "get", target: "/", version: "1.1", keepAlive: true, body: "")],
                       "methods are case-sensitive: 'get' is an unknown method the router refuses")
        XCTAssertEqual(parse("BREW /pot HTTP/1.1\r\n\r\n"), [.request(method: "BREW", target: "/pot", version: "1.1", keepAlive: true, body: "")])
    }

    func testPipelinedRequestsComeOutInOrderWhateverTheReadSizes() {
        let input = "GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET /c HTTP/1.1\r\n\r\n"
        let expected: [Outcome] = [get("/a"), .request(method: "POST", target: "/b", version: "1.1", keepAlive: true, body: "hello"), get("/c")]
        for split in [0, 1, 2, 3, 7, 16, 64] {
            XCTAssertEqual(parse(input, split: split), expected, "split \(split)")
        }
    }

    func testContentLengthRules() {
        func post(_ headers: String, _ body: String = "hello") -> [Outcome] {
            parse("POST /x HTTP/1.1\r\n\(headers)\r\n\r\n\(body)")
        }
        let hello = Outcome.request(method: "POST", target: "/x", version: "1.1", keepAlive: true, body: "hello")
        XCTAssertEqual(post("Content-Length: 5"), [hello])
        XCTAssertEqual(post("Content-Length:5  "), [hello], "OWS around the value")
        XCTAssertEqual(post("Content-Length: 5\r\nContent-Length: 5"), [hello], "identical duplicates are one length")
        XCTAssertEqual(post("Content-Length: 5, 5"), [hello])
        XCTAssertEqual(post("Content-Length: 0005"), [hello])
        XCTAssertEqual(post("Content-Length: 5\r\nContent-Length: 6"), [badRequest], "differing duplicates (smuggling)")
        XCTAssertEqual(post("Content-Length: 5, 6"), [badRequest])
        XCTAssertEqual(post("Content-Length: +5"), [badRequest])
        XCTAssertEqual(post("Content-Length: -1"), [badRequest])
        XCTAssertEqual(post("Content-Length: 5 5"), [badRequest])
        XCTAssertEqual(post("Content-Length: 0x5"), [badRequest])
        XCTAssertEqual(post("Content-Length: "), [badRequest])
        XCTAssertEqual(post("Content-Length: 262145", ""), [tooLarge], "refused from the head, before any body byte")
        XCTAssertEqual(post("Content-Length: 99999999999999999999999999", ""), [tooLarge])
        XCTAssertEqual(post("Content-Length: 0", ""), [.request(method: "POST", target: "/x", version: "1.1", keepAlive: true, body: "")])
        // Exactly the limit is accepted.
        let body = String(repeating: "a", count: 256 * 1024)
        XCTAssertEqual(post("Content-Length: \(body.utf8.count)", body),
                       [.request(method: "POST", target: "/x", version: "1.1", keepAlive: true, body: body)])
    }

    func testChunkedBodies() {
        let chunked = "POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        let hello = Outcome.request(method: "POST", target: "/x", version: "1.1", keepAlive: true, body: "hello world")
        let body = "5\r\nhello\r\n6;ext=1;other\r\n world\r\n0\r\nX-Trailer: ignored\r\n\r\n"
        for split in [0, 1, 3, 10] {
            XCTAssertEqual(parse(chunked + body + "GET /next HTTP/1.1\r\n\r\n", split: split), [hello, get("/next")], "split \(split)")
        }
        XCTAssertEqual(parse("POST /x HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\nB\r\nhello world\r\n0\r\n\r\n"), [hello], "case-insensitive, hex digits")
        XCTAssertEqual(parse(chunked + "0\r\n\r\n"), [.request(method: "POST", target: "/x", version: "1.1", keepAlive: true, body: "")])
        // Over the limit: refused as soon as a chunk size would pass it.
        let big = String(repeating: "10000\r\n" + String(repeating: "b", count: 65536) + "\r\n", count: 5) + "0\r\n\r\n"
        XCTAssertEqual(parse(chunked + big), [tooLarge])
        XCTAssertEqual(parse(chunked + "FFFFFFFFFFFFFFFFFFFF\r\n"), [tooLarge], "a size that would overflow")
        XCTAssertEqual(parse(chunked + "zz\r\nhello\r\n0\r\n\r\n"), [badRequest], "not hex")
        XCTAssertEqual(parse(chunked + "\r\nhello\r\n0\r\n\r\n"), [badRequest], "no size")
        XCTAssertEqual(parse(chunked + "5 x\r\nhello\r\n0\r\n\r\n"), [badRequest], "junk after the size")
        XCTAssertEqual(parse(chunked + "5\r\nhelloXX0\r\n\r\n"), [badRequest], "data not followed by CRLF")
        XCTAssertEqual(parse(chunked + "5\nhello\r\n0\r\n\r\n"), [badRequest], "bare LF in a chunk line")
        XCTAssertEqual(parse(chunked + "5;\u{01}\r\nhello\r\n0\r\n\r\n"), [badRequest], "control character in an extension")
        XCTAssertEqual(parse(chunked + String(repeating: "0", count: 5000)), [badRequest], "chunk-size line without end")
        XCTAssertEqual(parse(chunked + "0\r\n" + String(repeating: "X-T: \(String(repeating: "t", count: 1000))\r\n", count: 20)), [badRequest],
                       "trailers are bounded like a head")
    }

    func testTransferEncodingSmugglingDefences() {
        XCTAssertEqual(parse("POST /x HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), [badRequest])
        XCTAssertEqual(parse("POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"), [badRequest])
        XCTAssertEqual(parse("POST /x HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"), [badRequest])
        XCTAssertEqual(parse("POST /x HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n"), [badRequest])
        XCTAssertEqual(parse("POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"), [badRequest])
        XCTAssertEqual(parse("POST /x HTTP/1.1\r\nTransfer-Encoding: identity\r\n\r\n"), [badRequest])
        XCTAssertEqual(parse("POST /x HTTP/1.1\r\nTransfer-Encoding: xchunked\r\n\r\n"), [badRequest])
        XCTAssertEqual(parse("POST /x HTTP/1.1\r\nTransfer-Encoding:\r\n\r\n"), [badRequest])
        XCTAssertEqual(parse("POST /x HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), [badRequest], "no chunked in HTTP/1.0")
        XCTAssertEqual(parse("POST /x HTTP/1.1\r\nTransfer-Encoding : chunked\r\n\r\n"), [badRequest], "space before the colon")
        XCTAssertEqual(parse("POST /x HTTP/1.1\r\nX: y\r\n Transfer-Encoding: chunked\r\n\r\n"), [badRequest], "obs-fold")
        XCTAssertEqual(parse("POST /x HTTP/1.1\r\nX: y\r\n\tContent-Length: 5\r\n\r\n"), [badRequest], "obs-fold with a tab")
    }

    func testLineEndsAndCharacters() {
        XCTAssertEqual(parse("GET / HTTP/1.1\n\n"), [badRequest], "bare LF")
        XCTAssertEqual(parse("GET / HTTP/1.1\r\nHost: x\n\r\n"), [badRequest], "bare LF inside the head")
        XCTAssertEqual(parse("GET / HTTP/1.1\r\nHost: x\rY: z\r\n\r\n"), [badRequest], "bare CR")
        XCTAssertEqual(parse("GET / HTTP/1.1\r\nHost: x\r"), [], "a CR at the end waits for its LF")
        XCTAssertEqual(parse("GET / HTTP/1.1\r\nX-A: \u{01}\r\n\r\n"), [badRequest], "control character in a value")
        XCTAssertEqual(parse("GET / HTTP/1.1\r\nX-A: a\u{7F}b\r\n\r\n"), [badRequest], "DEL in a value")
        XCTAssertEqual(parse(Array("GET / HTTP/1.1\r\nX-A: a\tb ".utf8) + [0xC3, 0x28, 0xFF] + Array("\r\n\r\n".utf8)),
                       [.request(method: "GET", target: "/", version: "1.1", keepAlive: true, body: "")], "HTAB and obs-text in values")
        XCTAssertEqual(parse("GET / HTTP/1.1\r\nX(A): b\r\n\r\n"), [badRequest], "non-token character in a name")
        XCTAssertEqual(parse("GET / HTTP/1.1\r\n: b\r\n\r\n"), [badRequest], "empty name")
        XCTAssertEqual(parse("GET / HTTP/1.1\r\nNo colon here\r\n\r\n"), [badRequest])
        XCTAssertEqual(parse(Array("GET /".utf8) + [0xFF, 0xFE] + Array(" HTTP/1.1\r\n\r\n".utf8)), [badRequest], "non-ASCII target")
        XCTAssertEqual(parse("GET /a\u{01}b HTTP/1.1\r\n\r\n"), [badRequest], "control character in the target")
        XCTAssertEqual(parse("GET  / HTTP/1.1\r\n\r\n"), [badRequest], "two spaces")
        XCTAssertEqual(parse("GET / HTTP/1.1 \r\n\r\n"), [badRequest], "trailing space")
        XCTAssertEqual(parse("GET\t/ HTTP/1.1\r\n\r\n"), [badRequest], "tab as separator")
        XCTAssertEqual(parse(" GET / HTTP/1.1\r\n\r\n"), [badRequest])
        XCTAssertEqual(parse("\u{01}\u{02}\u{03} / HTTP/9.9\r\n\r\n"), [badRequest])
    }

    func testVersions() {
        for version in ["HTTP/1.2", "HTTP/2.0", "HTTP/0.9", "http/1.1", "HTTP/1.10", "HTTP/1", "HTTP/1.1x", "HTTPS/1.1", ""] {
            XCTAssertEqual(parse("GET / \(version)\r\n\r\n"), [badRequest], version)
        }
        XCTAssertEqual(parse("GET /\r\n\r\n"), [badRequest], "HTTP/0.9-style request line")
    }

    func testHeadLimits() {
        let filler = String(repeating: "a", count: 16 * 1024)
        XCTAssertEqual(parse("GET / HTTP/1.1\r\nX-Big: \(filler)\r\n\r\n"), [badRequest], "head over 16 KiB")
        XCTAssertEqual(parse("GET / HTTP/1.1\r\nX-Big: \(filler)"), [badRequest], "refused before the head ends")
        XCTAssertEqual(parse("GET / HTTP/1.1\r\nX-Big: \(filler)", split: 100), [badRequest], "and when trickled")
        let fits = String(repeating: "a", count: 16 * 1024 - 64)
        XCTAssertEqual(parse("GET / HTTP/1.1\r\nX-Big: \(fits)\r\n\r\n"), [get("/")])
        let many = { (n: Int) in "GET / HTTP/1.1\r\n" + (0..<n).map { "X-\($0): a\r\n" }.joined() + "\r\n" }
        XCTAssertEqual(parse(many(128)), [get("/")])
        XCTAssertEqual(parse(many(129)), [badRequest])
        XCTAssertEqual(parse(many(300)), [badRequest])
    }

    func testExpectContinue() {
        let head = "POST /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
        let hello = Outcome.request(method: "POST", target: "/x", version: "1.1", keepAlive: true, body: "hello")
        // Head first, body after the interim answer (what curl does).
        var parser = HTTPRequestParser(limits: limits)
        var buffer = ByteBuffer(string: head)
        guard case .sendContinue(let version) = parser.next(&buffer) else { return XCTFail("expected 100 Continue") }
        XCTAssertEqual(version, .http1_1)
        guard case .needMore = parser.next(&buffer) else { return XCTFail("expected to wait for the body") }
        buffer.writeString("hello")
        guard case .request(_, let body) = parser.next(&buffer) else { return XCTFail("expected the request") }
        XCTAssertEqual(String(buffer: body), "hello")
        // A client that did not wait: no interim answer needed.
        XCTAssertEqual(parse(head + "hello"), [hello])
        XCTAssertEqual(parse("POST /x HTTP/1.1\r\nExpect: 100-Continue\r\nTransfer-Encoding: chunked\r\n\r\n", split: 0), [.sendContinue])
        // Refused before the body is sent: 413 instead of 100.
        XCTAssertEqual(parse("POST /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 300000\r\n\r\n"), [tooLarge])
        XCTAssertEqual(parse("POST /x HTTP/1.1\r\nExpect: 200-ok\r\nContent-Length: 5\r\n\r\nhello"), [.failure(status: 417, code: "bad_request")])
        XCTAssertEqual(parse("POST /x HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"), [], "ignored in HTTP/1.0: no interim answer")
        XCTAssertEqual(parse("GET /x HTTP/1.1\r\nExpect: 100-continue\r\n\r\n"), [get("/x")], "nothing to continue without a body")
    }

    func testNothingIsParsedAfterAFailure() {
        var parser = HTTPRequestParser(limits: limits)
        var buffer = ByteBuffer(string: "GET / HTTP/9.9\r\n\r\nGET / HTTP/1.1\r\n\r\n")
        guard case .failure = parser.next(&buffer) else { return XCTFail("expected a failure") }
        guard case .needMore = parser.next(&buffer) else { return XCTFail("nothing after a failure") }
    }

    func testHeadersAreKeptForTheResponder() {
        var parser = HTTPRequestParser(limits: limits)
        var buffer = ByteBuffer(string: "GET / HTTP/1.1\r\nHost: localhost\r\nX-Multi: a\r\nx-multi: b\r\n\r\n")
        guard case .request(let head, _) = parser.next(&buffer) else { return XCTFail("expected a request") }
        XCTAssertEqual(head.headers["host"], ["localhost"])
        XCTAssertEqual(head.headers["X-Multi"], ["a", "b"])
    }
}
