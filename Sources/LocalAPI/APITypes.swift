import KeystoreAPI
import NIOCore
import NIOHTTP1

/// Who is on the other end of a local connection, from `SO_PEERCRED` (filled by the kernel,
/// so the client cannot lie about it). Layout matches `struct ucred`.
public struct PeerCredentials: Sendable, Equatable, CustomStringConvertible {
    public var pid: Int32
    public var uid: UInt32
    public var gid: UInt32
    public init(pid: Int32, uid: UInt32, gid: UInt32) { self.pid = pid; self.uid = uid; self.gid = gid }
    public var description: String { "pid=\(pid) uid=\(uid) gid=\(gid)" }
    /// A caller on a TCP listener: no credentials, so no ACL rule can match it.
    public static let anonymous = PeerCredentials(pid: 0, uid: UInt32.max, gid: UInt32.max)
}

/// A fully received request (the API has no streaming uploads: bodies are small JSON).
public struct APIRequest: Sendable {
    public var method: HTTPMethod
    /// The raw request target, e.g. `/v1/domains/first.com/keys?x=1`.
    public var uri: String
    /// Percent-decoded path segments (`["v1", "domains", "first.com", "keys"]`), or nil when the
    /// path is not valid UTF-8 / has bad escapes.
    public var pathSegments: [String]?
    /// The request's header fields. From the connection they are kept as received and parsed
    /// on first read: no route reads them, and building them on every request was measurable.
    public var headers: HTTPHeaders {
        get { explicitHeaders ?? HTTPRequestParser.headers(fromFieldLines: fieldLines) }
        set { explicitHeaders = newValue }
    }
    private var explicitHeaders: HTTPHeaders?
    /// Validated `name: value CRLF` lines from the parser.
    var fieldLines = ByteBuffer()
    public var body: ByteBuffer
    public var caller: PeerCredentials
    /// Per-node sequence number, for log correlation.
    public var requestID: UInt64

    /// What follows '?' in the target (without a fragment); empty when there is no query.
    /// Searched as bytes: searching the `String` walks it by grapheme, which was 6 % of a
    /// get-key's CPU (`perf record` of `bench/run.sh get-key`).
    public var query: Substring {
        let bytes = uri.utf8
        guard let mark = bytes.firstIndex(of: UInt8(ascii: "?")) else { return "" }
        let start = bytes.index(after: mark)
        let end = bytes[start...].firstIndex(of: UInt8(ascii: "#")) ?? bytes.endIndex
        return uri[start..<end]
    }

    public init(method: HTTPMethod, uri: String, headers: HTTPHeaders, body: ByteBuffer, caller: PeerCredentials, requestID: UInt64) {
        self.method = method
        self.uri = uri
        self.pathSegments = APIRequest.decodePath(uri)
        self.explicitHeaders = headers
        self.body = body
        self.caller = caller
        self.requestID = requestID
    }

    /// A request as the connection parsed it.
    init(method: HTTPMethod, uri: String, fieldLines: ByteBuffer, body: ByteBuffer, caller: PeerCredentials, requestID: UInt64) {
        self.method = method
        self.uri = uri
        self.pathSegments = APIRequest.decodePath(uri)
        self.fieldLines = fieldLines
        self.body = body
        self.caller = caller
        self.requestID = requestID
    }

    /// Splits the path (query dropped) on `/` and percent-decodes each segment. Returns nil for
    /// malformed escapes, invalid UTF-8, NUL bytes, or a non-absolute path.
    public static func decodePath(_ uri: String) -> [String]? {
        var uri = uri
        // Byte-wise: on the get-key path, Character-wise scanning (grapheme breaking) of the
        // target was 13 % of the request's CPU.
        return uri.withUTF8 { decodePath(bytes: $0) }
    }

    private static func decodePath(bytes: UnsafeBufferPointer<UInt8>) -> [String]? {
        let slash = UInt8(ascii: "/")
        var end = bytes.count
        if let q = bytes.firstIndex(where: { $0 == UInt8(ascii: "?") || $0 == UInt8(ascii: "#") }) { end = q }
        var start = 0
        // Absolute form (RFC 9112 3.2.2): "http://host/path" — the authority is irrelevant here.
        let afterScheme = hasPrefix(bytes, end: end, "http://") ? 7 : hasPrefix(bytes, end: end, "https://") ? 8 : 0
        if afterScheme > 0 {
            guard let pathStart = bytes[afterScheme..<end].firstIndex(of: slash) else { return [""] }
            start = pathStart
        }
        guard start < end, bytes[start] == slash else { return nil }
        var segments: [String] = []
        segments.reserveCapacity(8) // every route has at most 8 segments: one allocation
        var segmentStart = start + 1
        while true {
            let segmentEnd = bytes[segmentStart..<end].firstIndex(of: slash) ?? end
            guard let segment = decodeSegment(UnsafeBufferPointer(rebasing: bytes[segmentStart..<segmentEnd])) else { return nil }
            segments.append(segment)
            if segmentEnd == end { break }
            segmentStart = segmentEnd + 1
        }
        if segments.last == "" && segments.count > 1 { segments.removeLast() } // tolerate one trailing slash
        return segments
    }

    private static func hasPrefix(_ bytes: UnsafeBufferPointer<UInt8>, end: Int, _ prefix: StaticString) -> Bool {
        let count = prefix.utf8CodeUnitCount
        guard end >= count else { return false }
        for k in 0..<count where bytes[k] != prefix.utf8Start[k] { return false }
        return true
    }

    private static func decodeSegment(_ raw: UnsafeBufferPointer<UInt8>) -> String? {
        // No escapes (the usual case): the segment is the text itself; only NUL is refused.
        guard raw.contains(where: { $0 == UInt8(ascii: "%") || $0 == 0 }) else {
            return String(decoding: raw, as: UTF8.self)
        }
        return PercentEncoding.decode(raw)
    }
}

extension APIErrorCode {
    /// The code's HTTP status (fixed in the contract, `APIErrorCode.httpStatus`).
    public var status: HTTPResponseStatus { HTTPResponseStatus(statusCode: httpStatus) }
}

/// An API failure: the code is for programs, the message tells a person what to fix.
/// Messages must never include secret material.
public struct APIError: Error, Sendable, CustomStringConvertible {
    public var code: APIErrorCode
    public var message: String
    public var status: HTTPResponseStatus
    public init(_ code: APIErrorCode, _ message: String, status: HTTPResponseStatus? = nil) {
        self.code = code
        self.message = message
        self.status = status ?? code.status
    }
    public var description: String { "\(code.rawValue): \(message)" }
}

public struct APIResponse: Sendable {
    public var status: HTTPResponseStatus
    public var contentType: String
    public var body: ByteBuffer
    public var extraHeaders: [(String, String)]

    public init(status: HTTPResponseStatus = .ok, contentType: String = "application/json", body: ByteBuffer, extraHeaders: [(String, String)] = []) {
        self.status = status
        self.contentType = contentType
        self.body = body
        self.extraHeaders = extraHeaders
    }

    public static func error(_ error: APIError, allocator: ByteBufferAllocator) -> APIResponse {
        var writer = JSONWriter(allocator: allocator, capacity: 64 + error.message.utf8.count)
        writer.beginObject()
        writer.key("error"); writer.string(error.code.rawValue)
        writer.key("message"); writer.string(error.message)
        writer.endObject()
        writer.newline()
        return APIResponse(status: error.status, body: writer.buffer)
    }
}

/// A long-lived response (`GET /v1/events`): the head goes out at once with chunked encoding,
/// then the producer pushes lines until it finishes or the client goes away.
public protocol APIEventStream: AnyObject, Sendable {
    /// Called on the connection's event loop once the head is written. `sink` must only be
    /// used from that event loop (hop with `sink.eventLoop.execute`).
    func start(sink: APIStreamSink)
    /// The client disconnected (or the server is closing): stop producing.
    func cancel()
}

/// The writing end of a streamed response; only valid on `eventLoop`.
public struct APIStreamSink: Sendable {
    public let eventLoop: EventLoop
    let writeChunk: @Sendable (ByteBuffer) -> Void
    let finishStream: @Sendable () -> Void
    /// Bytes accepted by the sink but not yet flushed to the socket: producers use it to cut
    /// off consumers that fall behind.
    let pending: @Sendable () -> Int

    public func write(_ chunk: ByteBuffer) { writeChunk(chunk) }
    public func finish() { finishStream() }
    public var pendingBytes: Int { pending() }
}

public enum APIResult: Sendable {
    case response(APIResponse)
    case deferred(EventLoopFuture<APIResponse>)
    case stream(status: HTTPResponseStatus, APIEventStream)
}

/// The application behind the HTTP plumbing. `handle` runs on the connection's event loop and
/// must not block: slow work returns `.deferred`.
public protocol APIResponder: Sendable {
    func handle(_ request: APIRequest, allocator: ByteBufferAllocator, eventLoop: EventLoop) -> APIResult
}
