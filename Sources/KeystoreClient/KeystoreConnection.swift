import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// One parsed HTTP/1.x response.
public struct HTTPResponse: Sendable {
    public var status: Int
    public var reason: String
    /// Header fields in wire order, names as sent; use `header(_:)` for case-insensitive lookup.
    public var headers: [(String, String)]
    public var body: [UInt8]

    public init(status: Int, reason: String = "", headers: [(String, String)] = [], body: [UInt8] = []) {
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body
    }

    /// First value of the named header; HTTP field names are case-insensitive.
    public func header(_ name: String) -> String? {
        let wanted = name.lowercased()
        return headers.first { $0.0.lowercased() == wanted }?.1
    }
}

/// Limits that keep a broken or hostile peer from making the client allocate without bound.
public enum HTTPLimits {
    public static let maxHeaderBytes = 64 * 1024
    public static let maxBodyBytes = 64 * 1024 * 1024
    /// One event line of `/v1/events`; the stream itself is open-ended.
    public static let maxLineBytes = 16 * 1024 * 1024
    static let maxChunkSizeLine = 4096
}

/// One keep-alive HTTP/1.1 connection to the daemon's Unix socket, using blocking POSIX calls.
///
/// Deliberately not NIO: the CLI and tests need something tiny that builds fast.
/// NOT thread-safe: it owns a read buffer and one file descriptor, so use it from one thread at a time
/// (it is intentionally not `Sendable`). It is reusable for any number of sequential requests; when the
/// daemon closes the connection (`Connection: close`), the next request transparently reconnects.
public final class KeystoreConnection {
    public let socketPath: String
    public let timeoutSeconds: Double

    private var fd: Int32 = -1
    private var buffer: [UInt8] = []
    /// recv() target, allocated once per connection object (re-zeroing 64 KiB per read is measurable).
    private var readScratch = [UInt8](repeating: 0, count: 64 * 1024)
    private var position = 0
    private var deadline: ContinuousClock.Instant?
    private var requestsOnSocket = 0
    private var bytesReadForResponse = 0
    /// How many sockets this object has opened; tests use it to prove keep-alive reuse.
    public private(set) var connectionsOpened = 0

    /// Connects at once so a wrong path or a stopped daemon is reported before any request is built.
    public init(socketPath: String, timeoutSeconds: Double = 10) throws {
        self.socketPath = socketPath
        self.timeoutSeconds = timeoutSeconds
        guard timeoutSeconds > 0, timeoutSeconds.isFinite else {
            throw KeystoreClientError.invalidArgument("timeout must be a positive number of seconds")
        }
        try connectSocket()
    }

    deinit {
        if fd >= 0 { _ = Glibc_close(fd) }
    }

    public var isOpen: Bool { fd >= 0 }

    public func close() {
        if fd >= 0 { _ = Glibc_close(fd) }
        fd = -1
        buffer.removeAll(keepingCapacity: false)
        position = 0
        requestsOnSocket = 0
    }

    // MARK: Requests

    /// Sends one request and reads the complete response. Any status is returned as-is
    /// (mapping non-2xx to `KeystoreClientError.api` is `KeystoreClient`'s job).
    public func request(_ method: String, _ path: String, body: [UInt8]? = nil,
                        headers: [(String, String)] = []) throws -> HTTPResponse {
        let head = try Self.requestHead(method: method, path: path, body: body, headers: headers)
        let idempotent = ["GET", "HEAD", "OPTIONS"].contains(method)
        if fd < 0 { try connectSocket() }
        let reused = requestsOnSocket > 0
        do {
            return try exchange(head: head, body: body, method: method)
        } catch KeystoreClientError.connectionClosed where reused && idempotent && bytesReadForResponse == 0 {
            // A kept-alive socket the daemon closed while idle: nothing was answered, so a retry
            // of a side-effect-free request on a fresh socket is safe.
            close()
            try connectSocket()
            return try exchange(head: head, body: body, method: method)
        }
    }

    /// Sends a GET and hands each newline-delimited line of the (usually chunked, open-ended) body
    /// to `onLine` as it arrives; `onLine` returns false to stop. Empty lines (keep-alives) are skipped.
    /// `idleTimeoutSeconds` nil waits for events forever once the response head has arrived.
    /// A non-2xx answer throws `KeystoreClientError.api`.
    public func streamLines(_ path: String, headers: [(String, String)] = [],
                            idleTimeoutSeconds: Double? = nil,
                            onLine: (String) throws -> Bool) throws {
        let head = try Self.requestHead(method: "GET", path: path, body: nil,
                                        headers: [("Accept", "application/x-ndjson")] + headers)
        if fd < 0 { try connectSocket() }
        var finished = false
        defer { if !finished { close() } }
        try beginExchange(head: head, body: nil)
        let response = try readHead()
        if !(200..<300).contains(response.head.status) {
            var full = response.head
            full.body = try readBody(framing: response.framing, limit: HTTPLimits.maxBodyBytes)
            finishExchange(keepAlive: response.keepAlive)
            finished = true
            throw KeystoreClient.apiError(from: full)
        }
        deadline = nil
        try setTimeouts(idleTimeoutSeconds ?? 0)
        defer { try? setTimeouts(timeoutSeconds) }
        var line: [UInt8] = []
        var stopped = false
        try readBodyPieces(framing: response.framing, limit: nil) { piece in
            var start = piece.startIndex
            while let nl = piece[start...].firstIndex(of: UInt8(ascii: "\n")) {
                line.append(contentsOf: piece[start..<nl])
                start = nl + 1
                if line.last == UInt8(ascii: "\r") { line.removeLast() }
                let text = String(decoding: line, as: UTF8.self)
                line.removeAll(keepingCapacity: true)
                if text.isEmpty { continue }
                if try !onLine(text) { stopped = true; return false }
            }
            line.append(contentsOf: piece[start...])
            if line.count > HTTPLimits.maxLineBytes {
                throw KeystoreClientError.malformedResponse("event line exceeds \(HTTPLimits.maxLineBytes) bytes")
            }
            return true
        }
        if stopped { return }  // mid-stream: the socket cannot be reused, defer closes it
        if !line.isEmpty, try !onLine(String(decoding: line, as: UTF8.self)) { return }
        finishExchange(keepAlive: response.keepAlive)
        finished = true
    }

    // MARK: Exchange

    private func exchange(head: [UInt8], body: [UInt8]?, method: String) throws -> HTTPResponse {
        do {
            try beginExchange(head: head, body: body)
            var parsed = try readHead()
            let limit = HTTPLimits.maxBodyBytes
            parsed.head.body = method == "HEAD" ? [] : try readBody(framing: parsed.framing, limit: limit)
            finishExchange(keepAlive: parsed.keepAlive)
            return parsed.head
        } catch {
            close()  // the socket is in an unknown state after any failure
            throw error
        }
    }

    private func beginExchange(head: [UInt8], body: [UInt8]?) throws {
        // Leftover bytes after a complete response mean the daemon sent more than it framed.
        if position < buffer.count { close(); try connectSocket() }
        deadline = ContinuousClock.now + .milliseconds(Int64(timeoutSeconds * 1000))
        bytesReadForResponse = 0
        requestsOnSocket += 1
        try sendAll(head)
        if let body, !body.isEmpty { try sendAll(body) }
    }

    private func finishExchange(keepAlive: Bool) {
        deadline = nil
        if !keepAlive || position < buffer.count { close() }
    }

    static func requestHead(method: String, path: String, body: [UInt8]?,
                            headers: [(String, String)]) throws -> [UInt8] {
        guard !method.isEmpty, method.utf8.allSatisfy(isTokenByte) else {
            throw KeystoreClientError.invalidArgument("HTTP method \"\(method)\" is not a token")
        }
        guard path.hasPrefix("/"), path.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7f }) else {
            throw KeystoreClientError.invalidArgument(
                "request path must start with / and contain only printable ASCII (percent-encode the rest)")
        }
        var text = "\(method) \(path) HTTP/1.1\r\nHost: localhost\r\n"
        let names = Set(headers.map { $0.0.lowercased() })
        for (name, value) in headers {
            guard !name.isEmpty, name.utf8.allSatisfy(isTokenByte) else {
                throw KeystoreClientError.invalidArgument("header name \"\(name)\" is not a token")
            }
            guard !value.utf8.contains(where: { $0 == 13 || $0 == 10 || $0 == 0 }) else {
                throw KeystoreClientError.invalidArgument("header \(name) contains CR, LF or NUL")
            }
            if ["host", "content-length", "transfer-encoding"].contains(name.lowercased()) {
                throw KeystoreClientError.invalidArgument("header \(name) is set by the client itself")
            }
            text += "\(name): \(value)\r\n"
        }
        if let body {
            text += "Content-Length: \(body.count)\r\n"
            if !names.contains("content-type") { text += "Content-Type: application/json\r\n" }
        } else if ["POST", "PUT", "PATCH"].contains(method) {
            text += "Content-Length: 0\r\n"
        }
        text += "\r\n"
        return Array(text.utf8)
    }

    // MARK: Response parsing

    enum Framing { case empty, length(Int), chunked, untilClose }

    private struct ParsedHead {
        var head: HTTPResponse
        var framing: Framing
        var keepAlive: Bool
    }

    private func readHead() throws -> ParsedHead {
        while true {
            let block = try readHeaderBlock(limit: HTTPLimits.maxHeaderBytes)
            let parsed = try Self.parseHead(block)
            if (100..<200).contains(parsed.head.status) {
                if parsed.head.status == 101 {
                    throw KeystoreClientError.malformedResponse("unexpected 101 Switching Protocols")
                }
                continue  // interim response; the final one follows
            }
            return parsed
        }
    }

    /// Returns the header block without the final CRLFCRLF.
    private func readHeaderBlock(limit: Int) throws -> ArraySlice<UInt8> {
        // Offsets are kept relative to `position` because fill() may compact the buffer.
        var searched = 0
        while true {
            if let end = Self.findDoubleCRLF(buffer, from: position + searched, start: position) {
                guard end + 4 - position <= limit else {
                    throw KeystoreClientError.malformedResponse("header block exceeds \(limit) bytes")
                }
                let block = buffer[position..<end]
                position = end + 4
                return block
            }
            if buffer.count - position > limit {
                throw KeystoreClientError.malformedResponse("header block exceeds \(limit) bytes")
            }
            searched = max(0, buffer.count - position - 3)
            guard try fill() else { throw KeystoreClientError.connectionClosed }
        }
    }

    private static func findDoubleCRLF(_ b: [UInt8], from: Int, start: Int) -> Int? {
        var i = max(from, start)
        while i + 3 < b.count {
            if b[i] == 13 && b[i + 1] == 10 && b[i + 2] == 13 && b[i + 3] == 10 { return i }
            i += 1
        }
        return nil
    }

    private static func parseHead(_ block: ArraySlice<UInt8>) throws -> ParsedHead {
        var lines: [ArraySlice<UInt8>] = []
        var lineStart = block.startIndex
        var i = block.startIndex
        while i < block.endIndex {
            if block[i] == 13, i + 1 < block.endIndex, block[i + 1] == 10 {
                lines.append(block[lineStart..<i])
                i += 2
                lineStart = i
            } else {
                i += 1
            }
        }
        lines.append(block[lineStart..<block.endIndex])
        for line in lines where line.contains(13) || line.contains(10) || line.contains(0) {
            throw KeystoreClientError.malformedResponse("bare CR, LF or NUL in response head")
        }
        let (version, status, reason) = try parseStatusLine(lines[0])
        var headers: [(String, String)] = []
        for line in lines.dropFirst() {
            guard let first = line.first else {
                throw KeystoreClientError.malformedResponse("empty line inside header block")
            }
            if first == 32 || first == 9 {
                throw KeystoreClientError.malformedResponse("obsolete folded header line")
            }
            guard let colon = line.firstIndex(of: UInt8(ascii: ":")) else {
                throw KeystoreClientError.malformedResponse("header line without ':'")
            }
            let name = line[line.startIndex..<colon]
            guard !name.isEmpty, name.allSatisfy(isTokenByte) else {
                throw KeystoreClientError.malformedResponse("invalid header name")
            }
            var value = line[(colon + 1)...]
            while let f = value.first, f == 32 || f == 9 { value = value.dropFirst() }
            while let l = value.last, l == 32 || l == 9 { value = value.dropLast() }
            headers.append((String(decoding: name, as: UTF8.self),
                            String(bytes: value, encoding: .isoLatin1) ?? ""))
        }
        let response = HTTPResponse(status: status, reason: reason, headers: headers)
        let framing = try framing(for: response)
        let connectionTokens = Set(values(headers, "connection").map { $0.lowercased() })
        var keepAlive = version == 1 ? !connectionTokens.contains("close") : connectionTokens.contains("keep-alive")
        if case .untilClose = framing { keepAlive = false }
        return ParsedHead(head: response, framing: framing, keepAlive: keepAlive)
    }

    /// Strict `HTTP/1.<d> SP <3 digits> [SP reason]`.
    private static func parseStatusLine(_ line: ArraySlice<UInt8>) throws -> (Int, Int, String) {
        let bytes = Array(line)
        let prefix = Array("HTTP/1.".utf8)
        guard bytes.count >= 12, Array(bytes[0..<7]) == prefix,
              bytes[7] == UInt8(ascii: "0") || bytes[7] == UInt8(ascii: "1"),
              bytes[8] == 32,
              bytes[9...11].allSatisfy({ $0 >= 48 && $0 <= 57 }),
              bytes.count == 12 || bytes[12] == 32 else {
            // The offending bytes are not quoted: after a framing error they could be key material.
            throw KeystoreClientError.malformedResponse("status line is not \"HTTP/1.x NNN reason\"")
        }
        let status = bytes[9...11].reduce(0) { $0 * 10 + Int($1 - 48) }
        guard (100...599).contains(status) else {
            throw KeystoreClientError.malformedResponse("status code \(status) out of range")
        }
        let reason = bytes.count > 13 ? String(decoding: bytes[13...], as: UTF8.self) : ""
        return (Int(bytes[7] - 48), status, reason)
    }

    private static func values(_ headers: [(String, String)], _ name: String) -> [String] {
        headers.filter { $0.0.lowercased() == name }
            .flatMap { $0.1.split(separator: ",") }
            .map { $0.trimmingCharacters(in: .whitespaces) }
            .filter { !$0.isEmpty }
    }

    private static func framing(for response: HTTPResponse) throws -> Framing {
        if response.status == 204 || response.status == 304 { return .empty }
        let te = values(response.headers, "transfer-encoding").map { $0.lowercased() }
        let cl = values(response.headers, "content-length")
        if !te.isEmpty {
            guard cl.isEmpty else {
                throw KeystoreClientError.malformedResponse("both Transfer-Encoding and Content-Length present")
            }
            guard te == ["chunked"] else {
                throw KeystoreClientError.malformedResponse("unsupported Transfer-Encoding \(te.joined(separator: ", "))")
            }
            return .chunked
        }
        if let first = cl.first {
            guard cl.allSatisfy({ $0 == first }) else {
                throw KeystoreClientError.malformedResponse("conflicting Content-Length values")
            }
            guard first.utf8.count <= 12, first.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }),
                  let n = Int(first) else {
                throw KeystoreClientError.malformedResponse("invalid Content-Length")
            }
            guard n <= HTTPLimits.maxBodyBytes else {
                throw KeystoreClientError.malformedResponse("body of \(n) bytes exceeds \(HTTPLimits.maxBodyBytes)")
            }
            return .length(n)
        }
        return .untilClose
    }

    private func readBody(framing: Framing, limit: Int) throws -> [UInt8] {
        var body: [UInt8] = []
        if case let .length(n) = framing { body.reserveCapacity(n) }
        try readBodyPieces(framing: framing, limit: limit) { piece in
            body.append(contentsOf: piece)
            return true
        }
        return body
    }

    /// Delivers the body in pieces; `sink` returns false to stop early. `limit` nil = unbounded
    /// (only for the event stream, whose lines are bounded by the caller).
    private func readBodyPieces(framing: Framing, limit: Int?,
                                sink: (ArraySlice<UInt8>) throws -> Bool) throws {
        var total = 0
        func account(_ n: Int) throws {
            total += n
            if let limit, total > limit {
                throw KeystoreClientError.malformedResponse("body exceeds \(limit) bytes")
            }
        }
        switch framing {
        case .empty:
            return
        case let .length(n):
            try account(n)
            _ = try readExactly(n, sink: sink)
        case .untilClose:
            while true {
                if position == buffer.count, try !fill() { return }
                let piece = takeBuffered(Int.max)
                try account(piece.count)
                if try !sink(piece) { return }
            }
        case .chunked:
            while true {
                let sizeLine = try readLine(limit: HTTPLimits.maxChunkSizeLine, what: "chunk size line")
                let size = try Self.parseChunkSize(sizeLine)
                if size == 0 { break }
                try account(size)
                if try !readExactly(size, sink: sink) { return }
                let crlf = try readLine(limit: 0, what: "chunk terminator")
                guard crlf.isEmpty else {
                    throw KeystoreClientError.malformedResponse("chunk data not followed by CRLF")
                }
            }
            var trailerBytes = 0
            while true {
                let line = try readLine(limit: HTTPLimits.maxHeaderBytes, what: "trailer")
                if line.isEmpty { break }
                trailerBytes += line.count + 2
                if trailerBytes > HTTPLimits.maxHeaderBytes {
                    throw KeystoreClientError.malformedResponse("trailer block exceeds \(HTTPLimits.maxHeaderBytes) bytes")
                }
            }
        }
    }

    private static func parseChunkSize(_ line: [UInt8]) throws -> Int {
        var digits = line[...]
        if let semi = digits.firstIndex(of: UInt8(ascii: ";")) { digits = digits[..<semi] }
        while let l = digits.last, l == 32 || l == 9 { digits = digits.dropLast() }
        guard !digits.isEmpty, digits.count <= 15,
              let text = String(bytes: digits, encoding: .ascii),
              text.utf8.allSatisfy({ isHexDigit($0) }), let n = Int(text, radix: 16) else {
            throw KeystoreClientError.malformedResponse("invalid chunk size line")
        }
        return n
    }

    /// Reads one CRLF-terminated line (without the CRLF) of at most `limit` bytes.
    private func readLine(limit: Int, what: String) throws -> [UInt8] {
        var scanned = 0  // relative to `position`, which fill() may move
        while true {
            var i = position + scanned
            while i + 1 < buffer.count {
                if buffer[i] == 13 && buffer[i + 1] == 10 {
                    let line = Array(buffer[position..<i])
                    position = i + 2
                    return line
                }
                i += 1
            }
            scanned = max(0, buffer.count - position - 1)
            if buffer.count - position > limit + 1 {
                throw KeystoreClientError.malformedResponse("\(what) too long or missing CRLF")
            }
            guard try fill() else { throw KeystoreClientError.connectionClosed }
        }
    }

    private func readExactly(_ n: Int, sink: (ArraySlice<UInt8>) throws -> Bool) throws -> Bool {
        var remaining = n
        while remaining > 0 {
            if position == buffer.count {
                guard try fill() else { throw KeystoreClientError.connectionClosed }
            }
            let piece = takeBuffered(remaining)
            remaining -= piece.count
            if try !sink(piece) { return false }
        }
        return true
    }

    private func takeBuffered(_ max: Int) -> ArraySlice<UInt8> {
        let end = position + min(max, buffer.count - position)
        let piece = buffer[position..<end]
        position = end
        return piece
    }

    // MARK: Socket I/O

    /// Appends whatever is readable to the buffer; false on orderly EOF.
    private func fill() throws -> Bool {
        if position > 0 && position == buffer.count {
            buffer.removeAll(keepingCapacity: true)
            position = 0
        } else if position > 64 * 1024 && position * 2 > buffer.count {
            buffer.removeSubrange(0..<position)
            position = 0
        }
        guard fd >= 0 else { throw KeystoreClientError.connectionClosed }
        while true {
            let n = readScratch.withUnsafeMutableBytes { raw in
                recv(fd, raw.baseAddress, raw.count, 0)
            }
            if n > 0 {
                buffer.append(contentsOf: readScratch[0..<n])
                bytesReadForResponse += n
                if let deadline, ContinuousClock.now > deadline {
                    throw KeystoreClientError.timedOut(seconds: timeoutSeconds)
                }
                return true
            }
            let err = errno
            if n < 0 && err == EINTR { continue }
            if n == 0 { return false }
            if err == EAGAIN || err == EWOULDBLOCK { throw KeystoreClientError.timedOut(seconds: timeoutSeconds) }
            if err == ECONNRESET || err == EPIPE { throw KeystoreClientError.connectionClosed }
            throw KeystoreClientError.io(operation: "recv", reason: Self.errnoText(err))
        }
    }

    private func sendAll(_ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { raw in
                send(fd, raw.baseAddress! + offset, bytes.count - offset, Self.sendFlags)
            }
            if n >= 0 { offset += n; continue }
            let err = errno
            if err == EINTR { continue }
            if err == EAGAIN || err == EWOULDBLOCK { throw KeystoreClientError.timedOut(seconds: timeoutSeconds) }
            if err == EPIPE || err == ECONNRESET { throw KeystoreClientError.connectionClosed }
            throw KeystoreClientError.io(operation: "send", reason: Self.errnoText(err))
        }
    }

    #if canImport(Glibc)
    /// Writing to a socket the daemon closed must be an error, not a process-killing SIGPIPE.
    private static let sendFlags = Int32(MSG_NOSIGNAL)
    #else
    private static let sendFlags: Int32 = 0
    #endif

    /// Linux `sun_path` is 108 bytes including the terminating NUL.
    public static let maxSocketPathBytes = MemoryLayout.size(ofValue: sockaddr_un().sun_path) - 1

    private func connectSocket() throws {
        let pathBytes = Array(socketPath.utf8)
        guard !pathBytes.isEmpty, !pathBytes.contains(0) else {
            throw KeystoreClientError.invalidArgument("socket path must be non-empty and contain no NUL byte")
        }
        guard pathBytes.count <= Self.maxSocketPathBytes else {
            throw KeystoreClientError.socketPathTooLong(path: socketPath, bytes: pathBytes.count,
                                                        limit: Self.maxSocketPathBytes)
        }
        #if canImport(Glibc)
        let s = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        #else
        let s = socket(AF_UNIX, SOCK_STREAM, 0)
        #endif
        guard s >= 0 else {
            throw KeystoreClientError.io(operation: "socket", reason: Self.errnoText(errno))
        }
        #if canImport(Darwin)
        var one: Int32 = 1
        _ = setsockopt(s, SOL_SOCKET, SO_NOSIGPIPE, &one, socklen_t(MemoryLayout<Int32>.size))
        #endif
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            raw.copyBytes(from: pathBytes)
            raw[pathBytes.count] = 0
        }
        let length = socklen_t(MemoryLayout<sockaddr_un>.offset(of: \sockaddr_un.sun_path) ?? 2) + socklen_t(pathBytes.count + 1)
        var rc: Int32
        repeat {
            rc = withUnsafePointer(to: &addr) { p in
                p.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(s, $0, length) }
            }
        } while rc < 0 && errno == EINTR
        if rc < 0 {
            let err = errno
            _ = Glibc_close(s)
            throw KeystoreClientError.cannotConnect(socket: socketPath, reason: Self.errnoText(err))
        }
        fd = s
        connectionsOpened += 1
        requestsOnSocket = 0
        buffer.removeAll(keepingCapacity: true)
        position = 0
        do { try setTimeouts(timeoutSeconds) } catch { close(); throw error }
    }

    /// 0 means block forever (the kernel's meaning for a zero timeval).
    private func setTimeouts(_ seconds: Double) throws {
        guard fd >= 0 else { return }
        let whole = seconds.rounded(.down)
        var tv = timeval()
        tv.tv_sec = .init(whole)
        tv.tv_usec = .init(((seconds - whole) * 1_000_000).rounded())
        if seconds > 0 && tv.tv_sec == 0 && tv.tv_usec == 0 { tv.tv_usec = 1 }
        for option in [SO_RCVTIMEO, SO_SNDTIMEO] {
            if setsockopt(fd, SOL_SOCKET, option, &tv, socklen_t(MemoryLayout<timeval>.size)) != 0 {
                throw KeystoreClientError.io(operation: "setsockopt", reason: Self.errnoText(errno))
            }
        }
    }

    static func errnoText(_ err: Int32) -> String {
        String(cString: strerror(err))
    }
}

@inline(__always) private func isTokenByte(_ b: UInt8) -> Bool {
    switch b {
    case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
         UInt8(ascii: "0")...UInt8(ascii: "9"):
        return true
    default:
        return "!#$%&'*+-.^_`|~".utf8.contains(b)
    }
}

@inline(__always) private func isHexDigit(_ b: UInt8) -> Bool {
    (b >= 48 && b <= 57) || (b >= 65 && b <= 70) || (b >= 97 && b <= 102)
}

/// `close` is shadowed by `KeystoreConnection.close()`; this reaches the libc one.
@inline(__always) private func Glibc_close(_ fd: Int32) -> Int32 {
    #if canImport(Glibc)
    return Glibc.close(fd)
    #else
    return Darwin.close(fd)
    #endif
}
