import NIOCore
import NIOHTTP1

// A bounded HTTP/1.1 request parser for the local API (RFC 9112), hand-written instead of
// NIOHTTP1's decoder + pipelining handler + encoder.
//
// Why hand-written (house rule: only where a profile proves the need): on `bench/run.sh get-key`
// (32 keep-alive connections, release build, 2 cores) the NIOHTTP1 pipeline cost keystored
// about 6 µs of CPU per request on top of a bare NIO channel that serves the same bytes at
// nginx's cost (BENCHMARKS.md, get-key: "nio-static" rows; perf: HTTPDecoder/llhttp callbacks
// building HTTPHeaders, HTTPServerPipelineHandler's buffering state machine, the encoder's three
// writes per response). The local API needs a small, strict subset: one request at a time,
// bodies of at most 256 KiB, no upgrades, no trailers that mean anything.
//
// What it accepts and refuses (each has a test in LocalAPITests/HTTPRequestParserTests and a seed
// in Fuzz/corpus/http):
// - request line `method SP request-target SP HTTP/1.1|HTTP/1.0 CRLF`, single spaces; the target
//   visible ASCII only (origin-, absolute-, asterisk- or authority-form: the router decides);
// - lines end in CRLF: a bare CR or bare LF is refused (request smuggling through parsers that
//   disagree on line ends); empty lines before the request line are skipped (RFC 9112 2.2);
// - header names are tokens with no space before the colon; values are VCHAR / obs-text / SP /
//   HTAB; obs-fold (a line starting with SP or HTAB) is refused;
// - at most `maxHeadBytes` (16 KiB) of head and `maxHeaderCount` (128) fields;
// - the body is framed by Content-Length (digits only; duplicates must agree) or by
//   `Transfer-Encoding: chunked` (the only coding; HTTP/1.1 only; chunk extensions and trailers
//   are read and dropped), never both; at most `maxBodyBytes` (256 KiB), refused with 413 before
//   the body is read when the length is declared;
// - `Expect: 100-continue` makes the caller send `100 Continue` before a body still to come;
//   any other expectation is answered 417.
// Every refusal is an `APIError` the connection answers (JSON body) and then closes.

/// The limits the parser enforces; see `LocalAPILimits` for the values the server uses.
struct HTTPParserLimits: Sendable {
    var maxHeadBytes: Int
    var maxHeaderCount: Int
    var maxBodyBytes: Int
    /// Longest chunk-size line (with extensions) or trailer line accepted in a chunked body.
    var maxChunkLineBytes: Int = 4096
}

/// How a request's body is delimited (RFC 9112 6.3).
enum HTTPBodyFraming: Equatable, Sendable {
    case none
    case length(Int)
    case chunked
}

/// A parsed request head.
struct ParsedRequestHead: Sendable {
    var method: HTTPMethod
    /// The request target exactly as sent (visible ASCII).
    var target: String
    var version: HTTPVersion
    /// The header field lines as received (validated), `name: value CRLF` each: turned into
    /// `HTTPHeaders` only when someone asks (no route reads them; building them was measurable).
    var fieldLines: ByteBuffer
    var headers: HTTPHeaders { HTTPRequestParser.headers(fromFieldLines: fieldLines) }
    /// Whether the connection stays open after the answer (HTTP/1.1 unless `Connection: close`,
    /// HTTP/1.0 only with `Connection: keep-alive`).
    var keepAlive: Bool
    var framing: HTTPBodyFraming
    var expectsContinue: Bool
}

/// Parses requests one after another out of a connection's received bytes.
struct HTTPRequestParser {
    enum Event {
        /// Not enough bytes yet for the next step.
        case needMore
        /// The head asked for `100 Continue` and its body has not started: send the interim
        /// answer, then keep feeding bytes.
        case sendContinue(HTTPVersion)
        /// A complete request.
        case request(ParsedRequestHead, body: ByteBuffer)
        /// The bytes are not an acceptable request: answer `error` (in `version`) and close.
        case failure(APIError, version: HTTPVersion)
    }

    private enum Phase {
        /// Looking for the end of the head; `scanned` bytes from the reader index are known not
        /// to end it (so a client trickling bytes costs linear, not quadratic, time).
        case head(scanned: Int)
        case fixedBody(ParsedRequestHead, length: Int)
        case chunked(ParsedRequestHead, ChunkedDecoder)
        /// A failure was reported: nothing more is parsed on this connection.
        case failed
    }

    let limits: HTTPParserLimits
    private var phase = Phase.head(scanned: 0)

    init(limits: HTTPParserLimits) {
        self.limits = limits
    }

    /// Consumes what it can of `buffer` (moving its reader index) and says what happened.
    /// Call again after `.sendContinue` and `.request`: more requests may be buffered.
    mutating func next(_ buffer: inout ByteBuffer) -> Event {
        switch phase {
        case .failed:
            return .needMore
        case .head(let scanned):
            return parseHead(&buffer, scanned: scanned)
        case .fixedBody(let head, let length):
            guard buffer.readableBytes >= length else { return .needMore }
            let body = buffer.readSlice(length: length)!
            phase = .head(scanned: 0)
            return .request(head, body: body)
        case .chunked(let head, var decoder):
            phase = .failed // drop the decoder's reference while it mutates (no copy of the body)
            switch decoder.decode(&buffer, limits: limits) {
            case .needMore:
                phase = .chunked(head, decoder)
                return .needMore
            case .done(let body):
                phase = .head(scanned: 0)
                return .request(head, body: body)
            case .failure(let error):
                return .failure(error, version: head.version)
            }
        }
    }

    // MARK: Head

    private mutating func parseHead(_ buffer: inout ByteBuffer, scanned: Int) -> Event {
        // Empty lines before a request line are skipped (RFC 9112 2.2): some clients send CRLF
        // after a body. They count against nothing: each pair is consumed at once.
        if scanned == 0 {
            while buffer.readableBytes >= 2, buffer.getInteger(at: buffer.readerIndex, as: UInt16.self) == 0x0D0A {
                buffer.moveReaderIndex(forwardBy: 2)
            }
            if buffer.readableBytes == 1, buffer.getInteger(at: buffer.readerIndex, as: UInt8.self) == 0x0D { return .needMore }
        }
        let limit = limits.maxHeadBytes
        let scan = buffer.withUnsafeReadableBytes { bytes in Self.findHeadEnd(bytes, from: scanned, limit: limit) }
        switch scan {
        case .incomplete(let safe):
            if buffer.readableBytes > limit {
                return fail(APIError(.badRequest, "request head exceeds the \(limit)-byte limit"), .http1_1)
            }
            phase = .head(scanned: safe)
            return .needMore
        case .invalidLineEnd:
            return fail(APIError(.badRequest, "malformed HTTP request: lines must end in CRLF (bare CR or LF found)"), .http1_1)
        case .tooLong:
            return fail(APIError(.badRequest, "request head exceeds the \(limit)-byte limit"), .http1_1)
        case .complete(let headLength):
            let parsed = buffer.withUnsafeReadableBytes { bytes in
                Self.parseHeadBlock(UnsafeRawBufferPointer(rebasing: bytes[0..<headLength]), limits: limits)
            }
            switch parsed {
            case .failure(let error, let version):
                return fail(error, version)
            case .success(var head, let fields):
                head.fieldLines = buffer.getSlice(at: buffer.readerIndex + fields.lowerBound, length: fields.count)!
                buffer.moveReaderIndex(forwardBy: headLength)
                return startBody(head, &buffer)
            }
        }
    }

    private mutating func startBody(_ head: ParsedRequestHead, _ buffer: inout ByteBuffer) -> Event {
        switch head.framing {
        case .none:
            phase = .head(scanned: 0)
            return .request(head, body: ByteBuffer())
        case .length(let length):
            phase = .fixedBody(head, length: length)
            if head.expectsContinue && buffer.readableBytes == 0 { return .sendContinue(head.version) }
            return next(&buffer)
        case .chunked:
            phase = .chunked(head, ChunkedDecoder())
            if head.expectsContinue && buffer.readableBytes == 0 { return .sendContinue(head.version) }
            return next(&buffer)
        }
    }

    private mutating func fail(_ error: APIError, _ version: HTTPVersion) -> Event {
        phase = .failed
        return .failure(error, version: version)
    }

    enum HeadScan: Equatable {
        /// No end yet; bytes before `safe` need not be scanned again.
        case incomplete(safe: Int)
        /// The head is `length` bytes including its final empty line.
        case complete(length: Int)
        case invalidLineEnd
        case tooLong
    }

    /// Finds the CRLF CRLF ending a head that starts at `bytes[0]`, checking on the way that
    /// every CR is followed by LF and every LF preceded by CR.
    static func findHeadEnd(_ bytes: UnsafeRawBufferPointer, from start: Int, limit: Int) -> HeadScan {
        let count = min(bytes.count, limit)
        var i = start
        while i < count {
            let byte = bytes[i]
            if byte == 0x0A {
                guard i > 0, bytes[i - 1] == 0x0D else { return .invalidLineEnd }
                if i >= 3 && bytes[i - 2] == 0x0A { return .complete(length: i + 1) } // bytes[i-3] is CR: checked at i-2
            } else if byte == 0x0D {
                if i + 1 < bytes.count {
                    guard bytes[i + 1] == 0x0A else { return .invalidLineEnd }
                } else {
                    return .incomplete(safe: i) // rescan the CR once its LF arrives
                }
            }
            i += 1
        }
        if bytes.count > limit { return .tooLong }
        return .incomplete(safe: count)
    }

    enum HeadResult {
        /// The head, and where its field lines are (offsets into the head block).
        case success(ParsedRequestHead, fields: Range<Int>)
        case failure(APIError, HTTPVersion)
    }

    /// Parses a complete head (request line, fields, final CRLF CRLF).
    static func parseHeadBlock(_ head: UnsafeRawBufferPointer, limits: HTTPParserLimits) -> HeadResult {
        func bad(_ message: String, _ version: HTTPVersion = .http1_1) -> HeadResult {
            .failure(APIError(.badRequest, "malformed HTTP request: \(message)"), version)
        }
        // Request line.
        var i = 0
        while i < head.count && isTokenChar(head[i]) { i += 1 }
        guard i > 0, i < head.count, head[i] == 0x20 else { return bad("the request line must start with a method and one space") }
        let method = methodFromBytes(UnsafeRawBufferPointer(rebasing: head[0..<i]))
        let targetStart = i + 1
        i = targetStart
        while i < head.count && head[i] > 0x20 && head[i] < 0x7F { i += 1 }
        guard i > targetStart, i < head.count, head[i] == 0x20 else {
            return bad("the request target must be visible ASCII followed by one space (percent-encode anything else)")
        }
        let target = String(decoding: UnsafeRawBufferPointer(rebasing: head[targetStart..<i]), as: UTF8.self)
        let versionStart = i + 1
        guard versionStart + 10 <= head.count, head[versionStart + 8] == 0x0D,
              let version = httpVersion(UnsafeRawBufferPointer(rebasing: head[versionStart..<(versionStart + 8)])) else {
            return bad("the version must be HTTP/1.1 or HTTP/1.0")
        }
        i = versionStart + 10 // past CRLF

        let fieldsStart = i
        var fieldCount = 0
        var contentLength: Int?
        var contentLengthTooLarge = false
        var transferEncodings: [Substring] = []
        var sawTransferEncoding = false
        var connectionClose = false, connectionKeepAlive = false
        var expectsContinue = false
        let end = head.count - 2 // the final empty line's CRLF
        while i < end {
            // One field line: name ":" OWS value OWS CRLF.
            if head[i] == 0x20 || head[i] == 0x09 {
                return bad("header line folding (obs-fold) is not accepted", version)
            }
            let nameStart = i
            while i < end && isTokenChar(head[i]) { i += 1 }
            guard i > nameStart, i < end, head[i] == 0x3A else {
                return bad("a header line must be a name (token characters), a colon and a value, with no space before the colon", version)
            }
            let nameEnd = i
            i += 1
            while i < end && (head[i] == 0x20 || head[i] == 0x09) { i += 1 }
            let valueStart = i
            while head[i] != 0x0D {
                let c = head[i]
                guard c >= 0x20 ? c != 0x7F : c == 0x09 else {
                    return bad("header values may not contain control characters", version)
                }
                i += 1
            }
            var valueEnd = i
            while valueEnd > valueStart && (head[valueEnd - 1] == 0x20 || head[valueEnd - 1] == 0x09) { valueEnd -= 1 }
            i += 2 // CRLF (checked by findHeadEnd)
            fieldCount += 1
            guard fieldCount <= limits.maxHeaderCount else {
                return bad("more than \(limits.maxHeaderCount) header fields", version)
            }
            let nameBytes = UnsafeRawBufferPointer(rebasing: head[nameStart..<nameEnd])
            let valueBytes = UnsafeRawBufferPointer(rebasing: head[valueStart..<valueEnd])

            switch nameBytes.count {
            case 14 where equalsLowercased(nameBytes, "content-length"):
                // Digits only (no sign, no space inside), possibly a list of equal values (RFC 9110 8.6).
                for item in String(decoding: valueBytes, as: UTF8.self).split(separator: ",", omittingEmptySubsequences: false) {
                    let digits = item.trimmingOWS()
                    guard !digits.isEmpty, digits.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else {
                        return bad("Content-Length must be a decimal number", version)
                    }
                    let length = digits.utf8.count > 18 ? Int.max : Int(digits)!
                    if let previous = contentLength, previous != length {
                        return bad("conflicting Content-Length values", version)
                    }
                    contentLength = length
                    if length > limits.maxBodyBytes { contentLengthTooLarge = true }
                }
            case 17 where equalsLowercased(nameBytes, "transfer-encoding"):
                sawTransferEncoding = true
                for item in String(decoding: valueBytes, as: UTF8.self).split(separator: ",", omittingEmptySubsequences: false) {
                    transferEncodings.append(item.trimmingOWS())
                }
            case 10 where equalsLowercased(nameBytes, "connection"):
                for item in String(decoding: valueBytes, as: UTF8.self).split(separator: ",") {
                    let option = item.trimmingOWS()
                    if option.utf8.count == 5 && equalsLowercased(option, "close") { connectionClose = true }
                    if option.utf8.count == 10 && equalsLowercased(option, "keep-alive") { connectionKeepAlive = true }
                }
            case 6 where version == .http1_1 && equalsLowercased(nameBytes, "expect"): // ignored in HTTP/1.0 (RFC 9110 10.1.1)
                guard valueBytes.count == 12, equalsLowercased(valueBytes, "100-continue") else {
                    return .failure(APIError(.badRequest, "only 'Expect: 100-continue' is supported", status: .expectationFailed), version)
                }
                expectsContinue = true
            default:
                break
            }
        }

        let framing: HTTPBodyFraming
        if sawTransferEncoding {
            guard contentLength == nil else {
                return bad("Content-Length and Transfer-Encoding together are refused (request smuggling)", version)
            }
            guard version == .http1_1 else { return bad("Transfer-Encoding is not allowed in HTTP/1.0", version) }
            guard transferEncodings.count == 1, equalsLowercased(transferEncodings[0], "chunked") else {
                return bad("the only supported Transfer-Encoding is 'chunked'; send the body with Content-Length instead", version)
            }
            framing = .chunked
        } else if let contentLength {
            if contentLengthTooLarge {
                let shown = contentLength == Int.max ? "more than 10^18" : "\(contentLength)"
                return .failure(APIError(.payloadTooLarge, "request body of \(shown) bytes exceeds the \(limits.maxBodyBytes)-byte limit"), version)
            }
            framing = contentLength == 0 ? .none : .length(contentLength)
        } else {
            framing = .none
        }
        let keepAlive = version == .http1_1 ? !connectionClose : (connectionKeepAlive && !connectionClose)
        return .success(ParsedRequestHead(method: method, target: target, version: version, fieldLines: ByteBuffer(),
                                          keepAlive: keepAlive, framing: framing, expectsContinue: expectsContinue),
                        fields: fieldsStart..<end)
    }

    /// `HTTPHeaders` from field lines `parseHeadBlock` accepted (so no validation here).
    static func headers(fromFieldLines lines: ByteBuffer) -> HTTPHeaders {
        var headers = HTTPHeaders()
        lines.withUnsafeReadableBytes { bytes in
            var i = 0
            while i < bytes.count {
                let nameStart = i
                while bytes[i] != UInt8(ascii: ":") { i += 1 }
                let name = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[nameStart..<i]), as: UTF8.self)
                i += 1
                while bytes[i] == 0x20 || bytes[i] == 0x09 { i += 1 }
                let valueStart = i
                while bytes[i] != 0x0D { i += 1 }
                var valueEnd = i
                while valueEnd > valueStart && (bytes[valueEnd - 1] == 0x20 || bytes[valueEnd - 1] == 0x09) { valueEnd -= 1 }
                headers.add(name: name, value: String(decoding: UnsafeRawBufferPointer(rebasing: bytes[valueStart..<valueEnd]), as: UTF8.self))
                i += 2
            }
        }
        return headers
    }

    /// RFC 9110 5.6.2 tchar.
    @inline(__always)
    static func isTokenChar(_ c: UInt8) -> Bool {
        tokenTable[Int(c)]
    }

    private static let tokenTable: [Bool] = (0..<256).map { value in
        let c = UInt8(value)
        switch c {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            return true
        default:
            return Array("!#$%&'*+-.^_`|~".utf8).contains(c)
        }
    }

    private static func methodFromBytes(_ bytes: UnsafeRawBufferPointer) -> HTTPMethod {
        if bytes.count == 3 && bytes[0] == UInt8(ascii: "G") && bytes[1] == UInt8(ascii: "E") && bytes[2] == UInt8(ascii: "T") { return .GET }
        if bytes.count == 4 && bytes[0] == UInt8(ascii: "P") && bytes[1] == UInt8(ascii: "O")
            && bytes[2] == UInt8(ascii: "S") && bytes[3] == UInt8(ascii: "T") { return .POST }
        // Methods are case-sensitive (RFC 9110 9.1): "get" is an unknown method, not GET.
        return HTTPMethod(rawValue: String(decoding: bytes, as: UTF8.self))
    }

    private static func httpVersion(_ bytes: UnsafeRawBufferPointer) -> HTTPVersion? {
        let prefix: StaticString = "HTTP/1."
        for k in 0..<7 where bytes[k] != prefix.utf8Start[k] { return nil }
        switch bytes[7] {
        case UInt8(ascii: "1"): return .http1_1
        case UInt8(ascii: "0"): return .http1_0
        default: return nil
        }
    }
}

/// Case-insensitive ASCII comparison of `bytes` with a lowercase literal of the same length.
@inline(__always)
private func equalsLowercased(_ bytes: UnsafeRawBufferPointer, _ lowercase: StaticString) -> Bool {
    guard bytes.count == lowercase.utf8CodeUnitCount else { return false }
    let expected = lowercase.utf8Start
    for k in 0..<bytes.count where bytes[k] | 0x20 != expected[k] { return false }
    return true
}

private func equalsLowercased(_ text: Substring, _ lowercase: StaticString) -> Bool {
    var text = text
    return text.withUTF8 { equalsLowercased(UnsafeRawBufferPointer($0), lowercase) }
}

extension Substring {
    /// Without leading and trailing SP / HTAB (RFC 9110 OWS).
    func trimmingOWS() -> Substring {
        var s = self[...]
        while let f = s.utf8.first, f == 0x20 || f == 0x09 { s = s.dropFirst() }
        while let l = s.utf8.last, l == 0x20 || l == 0x09 { s = s.dropLast() }
        return s
    }
}

extension String {
    func trimmingOWS() -> Substring { self[...].trimmingOWS() }
}

// MARK: Chunked bodies

/// Decodes a `Transfer-Encoding: chunked` body (RFC 9112 7.1) as it arrives, bounded.
struct ChunkedDecoder {
    enum Result {
        case needMore
        case done(ByteBuffer)
        case failure(APIError)
    }

    private enum Step {
        case size
        case data(remaining: Int)
        case dataEnd
        case trailers(bytes: Int)
    }

    private var step = Step.size
    private var body = ByteBuffer()

    mutating func decode(_ buffer: inout ByteBuffer, limits: HTTPParserLimits) -> Result {
        while true {
            switch step {
            case .size:
                guard let line = takeLine(&buffer, limit: limits.maxChunkLineBytes) else {
                    if buffer.readableBytes > limits.maxChunkLineBytes { return .failure(bad("chunk-size line too long")) }
                    return .needMore
                }
                guard let lineBytes = line else { return .failure(bad("lines must end in CRLF")) }
                // chunk-size [ BWS ";" chunk-ext ]: hex digits, then optionally extensions we ignore.
                var size = 0, digits = 0
                let bytes = lineBytes.readableBytesView
                var index = bytes.startIndex
                while index < bytes.endIndex, let value = hexValue(bytes[index]) {
                    digits += 1
                    size = size << 4 | Int(value)
                    // Far above any accepted body; stops the shift from overflowing.
                    guard size <= 0xFFFF_FFFF else { return .failure(tooLarge(limits)) }
                    index = bytes.index(after: index)
                }
                guard digits > 0 else { return .failure(bad("a chunk must start with its size in hexadecimal")) }
                var rest = bytes[index...].drop { $0 == 0x20 || $0 == 0x09 }
                if let first = rest.first {
                    guard first == UInt8(ascii: ";") else { return .failure(bad("unexpected bytes after a chunk size")) }
                    rest = rest.dropFirst()
                    guard rest.allSatisfy({ $0 >= 0x20 ? $0 != 0x7F : $0 == 0x09 }) else {
                        return .failure(bad("control characters in a chunk extension"))
                    }
                }
                if size == 0 {
                    step = .trailers(bytes: 0)
                } else {
                    guard body.readableBytes + size <= limits.maxBodyBytes else { return .failure(tooLarge(limits)) }
                    step = .data(remaining: size)
                }
            case .data(let remaining):
                let take = min(remaining, buffer.readableBytes)
                guard take > 0 else { return .needMore }
                var slice = buffer.readSlice(length: take)!
                body.writeBuffer(&slice)
                step = remaining == take ? .dataEnd : .data(remaining: remaining - take)
            case .dataEnd:
                guard buffer.readableBytes >= 2 else { return .needMore }
                guard buffer.readInteger(as: UInt16.self) == 0x0D0A else { return .failure(bad("a chunk's data must be followed by CRLF")) }
                step = .size
            case .trailers(let seen):
                guard let line = takeLine(&buffer, limit: limits.maxChunkLineBytes) else {
                    if buffer.readableBytes > limits.maxChunkLineBytes { return .failure(bad("trailer line too long")) }
                    return .needMore
                }
                guard let lineBytes = line else { return .failure(bad("lines must end in CRLF")) }
                if lineBytes.readableBytes == 0 {
                    let done = body
                    body = ByteBuffer()
                    step = .size
                    return .done(done)
                }
                // Trailer fields are read and ignored, but bounded like a head.
                let total = seen + lineBytes.readableBytes + 2
                guard total <= limits.maxHeadBytes else { return .failure(bad("trailer section exceeds \(limits.maxHeadBytes) bytes")) }
                guard lineBytes.readableBytesView.allSatisfy({ $0 >= 0x20 ? $0 != 0x7F : $0 == 0x09 }) else {
                    return .failure(bad("control characters in a trailer field"))
                }
                step = .trailers(bytes: total)
            }
        }
    }

    /// The next CRLF-terminated line without its CRLF; nil when none is complete yet, `.some(nil)`
    /// for a bare CR or LF.
    private func takeLine(_ buffer: inout ByteBuffer, limit: Int) -> ByteBuffer?? {
        let view = buffer.readableBytesView
        guard let lf = view.prefix(limit + 2).firstIndex(of: 0x0A) else {
            if let cr = view.prefix(limit + 2).firstIndex(of: 0x0D), cr + 1 < view.endIndex { return .some(nil) }
            return nil
        }
        let length = lf - view.startIndex
        guard length >= 1, view[lf - 1] == 0x0D else { return .some(nil) }
        if view[view.startIndex..<(lf - 1)].contains(0x0D) { return .some(nil) }
        let line = buffer.readSlice(length: length - 1)!
        buffer.moveReaderIndex(forwardBy: 2)
        return .some(line)
    }

    private func hexValue(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return c - UInt8(ascii: "A") + 10
        default: return nil
        }
    }

    private func bad(_ message: String) -> APIError {
        APIError(.badRequest, "malformed chunked body: \(message)")
    }

    private func tooLarge(_ limits: HTTPParserLimits) -> APIError {
        APIError(.payloadTooLarge, "request body exceeds the \(limits.maxBodyBytes)-byte limit")
    }
}
