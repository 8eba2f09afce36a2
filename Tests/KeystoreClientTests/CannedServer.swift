import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// One request as the canned server saw it.
struct RecordedRequest: Sendable {
    var method: String
    var path: String
    var headers: [(String, String)]
    var body: [UInt8]

    func header(_ name: String) -> String? {
        headers.first { $0.0.lowercased() == name.lowercased() }?.1
    }
}

/// What the canned server does with a request.
enum CannedReply: Sendable {
    /// Write the bytes (optionally one send per byte), then keep serving or close.
    case bytes([UInt8], byteAtATime: Bool = false, close: Bool = false)
    /// Read nothing more, write nothing, wait until the client hangs up (for timeouts).
    case silence
}

/// A tiny blocking HTTP responder on a real Unix socket. The client's parsing is what is under
/// test, so this only splits requests (head + Content-Length body) and writes canned bytes.
///
/// `@unchecked Sendable`: the mutable state (`requests`, `accepts`) is only touched under `lock`;
/// the file descriptors are set once in `init` and only closed in `stop()`.
final class CannedServer: @unchecked Sendable {
    let path: String
    private let listenFD: Int32
    private let lock = NSLock()
    private var _requests: [RecordedRequest] = []
    private var _accepts = 0
    private var currentConnection: Int32 = -1
    private var stopping = false
    private let handler: @Sendable (RecordedRequest) -> CannedReply
    private let done = DispatchSemaphore(value: 0)

    var requests: [RecordedRequest] { lock.withLock { _requests } }
    var accepts: Int { lock.withLock { _accepts } }

    /// - Parameter path: where to listen (default: a fresh name under /tmp).
    init(path: String? = nil, handler: @escaping @Sendable (RecordedRequest) -> CannedReply) throws {
        self.handler = handler
        self.path = path ?? "/tmp/ksc-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        unlink(self.path)
        #if canImport(Glibc)
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        #else
        let fd = socket(AF_UNIX, SOCK_STREAM, 0)
        #endif
        guard fd >= 0 else { throw NSError(domain: "CannedServer", code: Int(errno)) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(self.path.utf8)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        let rc = withUnsafePointer(to: &addr) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard rc == 0, listen(fd, 16) == 0 else {
            close(fd)
            throw NSError(domain: "CannedServer", code: Int(errno))
        }
        listenFD = fd
        let thread = Thread { [self] in self.acceptLoop() }
        thread.start()
    }

    /// Wakes the blocked accept() and waits for the serving thread to finish.
    func stop() {
        lock.withLock {
            stopping = true
            if currentConnection >= 0 { shutdown(currentConnection, Int32(SHUT_RDWR)) }
        }
        shutdown(listenFD, Int32(SHUT_RDWR))
        done.wait()
        close(listenFD)
        unlink(path)
    }

    private func acceptLoop() {
        defer { done.signal() }
        while true {
            let conn = accept(listenFD, nil, nil)
            if conn < 0 {
                if errno == EINTR { continue }
                return
            }
            let stop = lock.withLock { () -> Bool in
                _accepts += 1
                currentConnection = conn
                return stopping
            }
            if !stop { serve(conn) }
            lock.withLock {
                currentConnection = -1
                close(conn)
            }
        }
    }

    private func serve(_ fd: Int32) {
        var buffer: [UInt8] = []
        while true {
            guard let request = readRequest(fd, &buffer) else { return }
            lock.withLock { _requests.append(request) }
            switch handler(request) {
            case let .bytes(bytes, byteAtATime, closeAfter):
                if byteAtATime {
                    for byte in bytes {
                        guard write(fd, [byte]) else { return }
                        usleep(50)  // pacing so the client really sees many small reads
                    }
                } else {
                    guard write(fd, bytes) else { return }
                }
                if closeAfter { return }
            case .silence:
                var scratch = [UInt8](repeating: 0, count: 1024)
                while recv(fd, &scratch, scratch.count, 0) > 0 {}
                return
            }
        }
    }

    private func write(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        var offset = 0
        while offset < bytes.count {
            #if canImport(Glibc)
            let flags = Int32(MSG_NOSIGNAL)
            #else
            let flags: Int32 = 0
            #endif
            let n = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + offset, bytes.count - offset, flags) }
            if n <= 0 { return false }
            offset += n
        }
        return true
    }

    private func readRequest(_ fd: Int32, _ buffer: inout [UInt8]) -> RecordedRequest? {
        var scratch = [UInt8](repeating: 0, count: 4096)
        func fill() -> Bool {
            let n = recv(fd, &scratch, scratch.count, 0)
            if n <= 0 { return false }
            buffer.append(contentsOf: scratch[0..<n])
            return true
        }
        var headEnd: Int?
        while headEnd == nil {
            if buffer.count >= 4 {
                headEnd = (0...(buffer.count - 4)).first {
                    buffer[$0] == 13 && buffer[$0 + 1] == 10 && buffer[$0 + 2] == 13 && buffer[$0 + 3] == 10
                }
            }
            if headEnd == nil, !fill() { return nil }
        }
        guard let end = headEnd else { return nil }
        let lines = String(decoding: buffer[0..<end], as: UTF8.self).components(separatedBy: "\r\n")
        let parts = lines[0].split(separator: " ")
        guard parts.count == 3 else { return nil }
        var headers: [(String, String)] = []
        for line in lines.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers.append((String(line[..<colon]),
                            line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)))
        }
        buffer.removeSubrange(0..<(end + 4))
        let length = headers.first { $0.0.lowercased() == "content-length" }.flatMap { Int($0.1) } ?? 0
        while buffer.count < length { if !fill() { return nil } }
        let body = Array(buffer[0..<length])
        buffer.removeSubrange(0..<length)
        return RecordedRequest(method: String(parts[0]), path: String(parts[1]), headers: headers, body: body)
    }
}

/// Canned response builders.
enum Canned {
    static func response(_ status: Int = 200, _ reason: String = "OK", headers: [(String, String)] = [],
                         body: String = "") -> [UInt8] {
        var text = "HTTP/1.1 \(status) \(reason)\r\n"
        for (n, v) in headers { text += "\(n): \(v)\r\n" }
        text += "Content-Length: \(body.utf8.count)\r\n\r\n" + body
        return Array(text.utf8)
    }

    static func json(_ status: Int = 200, _ body: String, close: Bool = false) -> CannedReply {
        .bytes(response(status, status == 200 ? "OK" : "Error",
                        headers: [("Content-Type", "application/json")] + (close ? [("Connection", "close")] : []),
                        body: body), close: close)
    }

    static func chunked(_ chunks: [String], status: Int = 200, trailer: String = "") -> [UInt8] {
        var text = "HTTP/1.1 \(status) OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        for chunk in chunks where !chunk.isEmpty {
            text += String(chunk.utf8.count, radix: 16) + "\r\n" + chunk + "\r\n"
        }
        text += "0\r\n" + trailer + "\r\n"
        return Array(text.utf8)
    }
}
