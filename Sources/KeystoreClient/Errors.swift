/// Everything the client can fail with. Each description is one line an operator can act on.
/// Associated values never contain key material: bodies of successful responses are never quoted.
public enum KeystoreClientError: Error, CustomStringConvertible, Sendable, Equatable {
    /// `connect(2)` on the Unix socket failed (missing file, no daemon, permissions).
    case cannotConnect(socket: String, reason: String)
    /// `sun_path` holds at most 107 bytes plus the terminating NUL on Linux.
    case socketPathTooLong(path: String, bytes: Int, limit: Int)
    /// No (complete) answer within the configured timeout.
    case timedOut(seconds: Double)
    /// The daemon closed the connection before the response was complete.
    case connectionClosed
    /// The bytes on the wire are not an HTTP/1.1 response this client accepts.
    case malformedResponse(String)
    /// A non-2xx answer; `code` and `message` come from the daemon's JSON error body.
    case api(status: Int, code: String, message: String)
    /// A caller-supplied value cannot be put on the wire (empty path segment, CR/LF in a header...).
    case invalidArgument(String)
    /// An unexpected socket error other than the ones above.
    case io(operation: String, reason: String)

    public var description: String {
        switch self {
        case let .cannotConnect(socket, reason):
            return "cannot connect to keystore socket \(socket): \(reason); check that keystored is running "
                + "and that this user may open the socket (set --socket or $KEYSTORE_SOCKET)"
        case let .socketPathTooLong(path, bytes, limit):
            return "socket path \(path) is \(bytes) bytes, longer than the \(limit)-byte limit for Unix "
                + "sockets; use a shorter path (e.g. a symlinked directory)"
        case let .timedOut(seconds):
            return "keystore daemon did not answer within \(seconds) s; check that keystored is healthy "
                + "or raise the timeout"
        case .connectionClosed:
            return "keystore daemon closed the connection before the response was complete; check the daemon log"
        case let .malformedResponse(what):
            return "malformed response from keystore daemon: \(what)"
        case let .api(status, code, message):
            return "\(message) (\(code), HTTP \(status))"
        case let .invalidArgument(what):
            return "invalid argument: \(what)"
        case let .io(operation, reason):
            return "socket \(operation) failed: \(reason)"
        }
    }
}
