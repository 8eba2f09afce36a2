import Logging
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#endif

public enum LocalAPIServerError: Error, CustomStringConvertible {
    case socketPathTooLong(String)
    case socketInUse(String)
    case notASocket(String)
    case cannotPrepare(path: String, reason: String)
    case cannotBind(path: String, reason: String)

    public var description: String {
        switch self {
        case .socketPathTooLong(let path):
            return "socket path \(path) is longer than 107 bytes; choose a shorter nodes.<name>.socket"
        case .socketInUse(let path):
            return "another process is serving on \(path); stop it (is a keystored for this node already running?) or use another socket path"
        case .notASocket(let path):
            return "\(path) exists and is not a socket; remove it or choose another socket path"
        case .cannotPrepare(let path, let reason):
            return "cannot prepare socket \(path): \(reason)"
        case .cannotBind(let path, let reason):
            return "cannot listen on \(path): \(reason)"
        }
    }
}

public struct LocalAPIServerConfiguration: Sendable {
    public var socketPath: String
    public var socketMode: UInt32
    /// Group owning the socket file (`socket_group`), nil to keep the daemon's.
    public var socketGroupID: UInt32?
    public var limits: LocalAPILimits
    public init(socketPath: String, socketMode: UInt32 = 0o660, socketGroupID: UInt32? = nil, limits: LocalAPILimits = .init()) {
        self.socketPath = socketPath
        self.socketMode = socketMode
        self.socketGroupID = socketGroupID
        self.limits = limits
    }
}

/// The HTTP/1.1 listener on the node's Unix socket.
public final class LocalAPIServer: Sendable {
    public let configuration: LocalAPIServerConfiguration
    private let channel: Channel
    private let counters: LocalAPIServerCounters

    private init(configuration: LocalAPIServerConfiguration, channel: Channel, counters: LocalAPIServerCounters) {
        self.configuration = configuration
        self.channel = channel
        self.counters = counters
    }

    public static func start(configuration: LocalAPIServerConfiguration, responder: APIResponder,
                             group: EventLoopGroup, logger: Logger) async throws -> LocalAPIServer {
        let path = configuration.socketPath
        try prepareSocketPath(path)
        let counters = LocalAPIServerCounters()
        let limits = configuration.limits
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 256)
            .childChannelInitializer { channel in
                acceptConnection(channel, responder: responder, limits: limits, counters: counters, logger: logger, anonymous: false)
            }
            .childChannelOption(.allowRemoteHalfClosure, value: false)

        // The socket must never exist with a looser mode than configured, even briefly.
        let oldMask = umask(0o177)
        let channel: Channel
        do {
            channel = try await bootstrap.bind(unixDomainSocketPath: path).get()
        } catch {
            umask(oldMask)
            throw LocalAPIServerError.cannotBind(path: path, reason: socketErrorDescription(error))
        }
        umask(oldMask)
        if chmod(path, mode_t(configuration.socketMode)) != 0 {
            let reason = String(cString: strerror(errno))
            try? await channel.close()
            throw LocalAPIServerError.cannotPrepare(path: path, reason: "chmod \(String(configuration.socketMode, radix: 8)): \(reason)")
        }
        if let gid = configuration.socketGroupID, chown(path, uid_t.max, gid_t(gid)) != 0 {
            let reason = String(cString: strerror(errno))
            try? await channel.close()
            throw LocalAPIServerError.cannotPrepare(path: path, reason: "chown to gid \(gid): \(reason) (the daemon must be a member of socket_group)")
        }
        return LocalAPIServer(configuration: configuration, channel: channel, counters: counters)
    }

    public var openConnections: Int { counters.connections.load(ordering: .relaxed) }

    /// A plain-HTTP TCP listener for routes that need no caller identity (the Prometheus
    /// scrape). Callers are `PeerCredentials.anonymous`; the responder decides what they get.
    public static func startTCP(host: String, port: Int, responder: APIResponder, group: EventLoopGroup,
                                limits: LocalAPILimits = .init(), logger: Logger) async throws -> LocalAPIServer {
        let counters = LocalAPIServerCounters()
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 64)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                acceptConnection(channel, responder: responder, limits: limits, counters: counters, logger: logger, anonymous: true)
            }
            .childChannelOption(.allowRemoteHalfClosure, value: false)
        let channel: Channel
        do {
            channel = try await bootstrap.bind(host: host, port: port).get()
        } catch {
            throw LocalAPIServerError.cannotBind(path: "\(host):\(port)", reason: socketErrorDescription(error))
        }
        return LocalAPIServer(configuration: LocalAPIServerConfiguration(socketPath: ""), channel: channel, counters: counters)
    }

    /// The one setup of every local API connection: the Unix socket, the metrics TCP listener
    /// and the HTTP fuzz harness all go through it. Connections beyond `limits.maxConnections`
    /// are closed at once; the rest get the bounded HTTP/1.1 connection handler.
    static func acceptConnection(_ channel: Channel, responder: APIResponder, limits: LocalAPILimits,
                                 counters: LocalAPIServerCounters, logger: Logger, anonymous: Bool) -> EventLoopFuture<Void> {
        let open = counters.connections.add(1, ordering: .relaxed).newValue
        channel.closeFuture.whenComplete { _ in counters.connections.subtract(1, ordering: .relaxed) }
        if open > limits.maxConnections {
            logger.warning("local connection refused: \(open - 1) connections open (limit \(limits.maxConnections))")
            return channel.close()
        }
        return channel.eventLoop.makeCompletedFuture {
            try channel.pipeline.syncOperations.addHandler(
                HTTPConnectionHandler(responder: responder, limits: limits, server: counters, logger: logger, anonymous: anonymous))
        }
    }

    /// Stops listening and removes the socket file (only if it is still ours).
    public func close() async {
        try? await channel.close()
        if !configuration.socketPath.isEmpty { unlink(configuration.socketPath) }
    }

    /// Replaces a stale socket file left by a crashed daemon, but refuses to steal the socket of
    /// a live one: only a refused connect (or a vanished file) proves nobody serves there.
    static func prepareSocketPath(_ path: String) throws(LocalAPIServerError) {
        guard path.utf8.count <= 107 else { throw .socketPathTooLong(path) }
        let directory = path.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
        if !directory.isEmpty && access(directory, F_OK) != 0 {
            try createDirectories(directory)
        }
        var info = stat()
        guard lstat(path, &info) == 0 else { return }
        guard (info.st_mode & S_IFMT) == S_IFSOCK else { throw .notASocket(path) }
        switch probeSocket(path) {
        case .stale: break
        case .inUse: throw .socketInUse(path)
        case .unknown(let reason):
            throw .cannotPrepare(path: path, reason: "cannot tell whether another process serves on it (connect: \(reason)), so it is left alone; check its permissions and whether a keystored is running")
        }
        if unlink(path) != 0 {
            throw .cannotPrepare(path: path, reason: "cannot remove stale socket: \(String(cString: strerror(errno)))")
        }
    }

    private static func createDirectories(_ directory: String) throws(LocalAPIServerError) {
        var current = ""
        for component in directory.split(separator: "/") {
            current += "/" + component
            if access(current, F_OK) == 0 { continue }
            if mkdir(current, 0o755) != 0 && errno != EEXIST {
                throw .cannotPrepare(path: directory, reason: "cannot create directory \(current): \(String(cString: strerror(errno)))")
            }
        }
    }

    /// What a connect to an existing socket file says about it.
    enum SocketProbe: Equatable {
        /// Connected: a live process serves there.
        case inUse
        /// `ECONNREFUSED` (nobody listens on the file) or `ENOENT` (it vanished): safe to replace.
        case stale
        /// Anything else (`EAGAIN` from a full listen backlog, `EACCES`, ...): a live server may
        /// be there, so the socket must not be taken over.
        case unknown(String)
    }

    /// Connects without blocking (a full backlog answers `EAGAIN` instead of waiting).
    static func probeSocket(_ path: String) -> SocketProbe {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return .unknown("socket(): \(String(cString: strerror(errno)))") }
        defer { Glibc.close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            let bytes = Array(path.utf8.prefix(raw.count - 1))
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        if result == 0 { return .inUse }
        let error = errno
        switch error {
        case ECONNREFUSED, ENOENT: return .stale
        default: return .unknown(String(cString: strerror(error)))
        }
    }

    /// Whether the socket must be left alone: anything but a definite "nobody listens".
    static func isSomeoneListening(_ path: String) -> Bool {
        probeSocket(path) != .stale
    }
}

/// What went wrong with a socket call, in the words an operator expects ("Address already in
/// use"), not NIO's internal call description.
public func socketErrorDescription(_ error: Error) -> String {
    if let io = error as? IOError { return String(cString: strerror(io.errnoCode)) }
    return "\(error)"
}
