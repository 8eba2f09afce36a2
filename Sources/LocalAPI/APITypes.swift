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
    public var headers: HTTPHeaders
    public var body: ByteBuffer
    public var caller: PeerCredentials
    /// Per-node sequence number, for log correlation.
    public var requestID: UInt64

    /// What follows '?' in the target (without a fragment); empty when there is no query.
    public var query: Substring {
        guard let mark = uri.firstIndex(of: "?") else { return "" }
        let rest = uri[uri.index(after: mark)...]
        return rest.firstIndex(of: "#").map { rest[..<$0] } ?? rest
    }

    public init(method: HTTPMethod, uri: String, headers: HTTPHeaders, body: ByteBuffer, caller: PeerCredentials, requestID: UInt64) {
        self.method = method
        self.uri = uri
        self.pathSegments = APIRequest.decodePath(uri)
        self.headers = headers
        self.body = body
        self.caller = caller
        self.requestID = requestID
    }

    /// Splits the path (query dropped) on `/` and percent-decodes each segment. Returns nil for
    /// malformed escapes, invalid UTF-8, NUL bytes, or a non-absolute path.
    public static func decodePath(_ uri: String) -> [String]? {
        var path = Substring(uri)
        if let q = path.firstIndex(where: { $0 == "?" || $0 == "#" }) { path = path[..<q] }
        // Absolute form (RFC 9112 3.2.2): "http://host/path" — the authority is irrelevant here.
        if path.hasPrefix("http://") || path.hasPrefix("https://") {
            let afterScheme = path[path.index(path.firstIndex(of: ":")!, offsetBy: 3)...]
            path = afterScheme.firstIndex(of: "/").map { afterScheme[$0...] } ?? "/"
        }
        guard path.first == "/" else { return nil }
        // No escapes (the usual case): the segments are the text itself; only NUL is refused.
        if !path.utf8.contains(where: { $0 == UInt8(ascii: "%") || $0 == 0 }) {
            var segments = path.utf8.dropFirst().split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false)
                .map { String(Substring($0)) }
            if segments.last == "" && segments.count > 1 { segments.removeLast() }
            return segments
        }
        var segments: [String] = []
        for raw in path.dropFirst().split(separator: "/", omittingEmptySubsequences: false) {
            var bytes: [UInt8] = []
            bytes.reserveCapacity(raw.utf8.count)
            var iterator = raw.utf8.makeIterator()
            while let byte = iterator.next() {
                if byte == UInt8(ascii: "%") {
                    guard let h = iterator.next(), let l = iterator.next(),
                          let hv = hexValue(h), let lv = hexValue(l) else { return nil }
                    bytes.append(hv << 4 | lv)
                } else {
                    bytes.append(byte)
                }
            }
            guard !bytes.contains(0), let segment = String(validating: bytes, as: UTF8.self) else { return nil }
            segments.append(segment)
        }
        if segments.last == "" && segments.count > 1 { segments.removeLast() } // tolerate one trailing slash
        return segments
    }

    private static func hexValue(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return c - UInt8(ascii: "A") + 10
        default: return nil
        }
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
