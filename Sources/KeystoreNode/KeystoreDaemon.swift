import Dispatch
import KeystoreConfig
import LocalAPI
import Logging
import NIOCore
import NIOPosix
import ReplicatedStore
import SecretMemory
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Start-up failures that are the operator's to fix; `keystored` prints the description as
/// its one-line exit reason.
public enum DaemonError: Error, CustomStringConvertible {
    case config(String)
    case socketGroup(String)
    case startup(String)

    public var description: String {
        switch self {
        case .config(let message): return message
        case .socketGroup(let group): return "socket_group '\(group)' is not a known group name or number; create it or fix nodes.<name>.socket_group"
        case .startup(let message): return message
        }
    }
}

/// One running node: owns the event loops, the local API, the cluster shell and the state.
public final class KeystoreDaemon: NodeServices {
    public let state: NodeState
    public let logger: Logger
    let group: MultiThreadedEventLoopGroup
    let arena: SecretArena
    private let api = Mutex<LocalAPIServer?>(nil)
    private let stopRequested = Mutex<CheckedContinuation<Void, Never>?>(nil)

    private init(state: NodeState, arena: SecretArena, logger: Logger, group: MultiThreadedEventLoopGroup) {
        self.state = state
        self.arena = arena
        self.logger = logger
        self.group = group
    }

    public var memoryLocked: Bool {
        let stats = arena.statistics
        return stats.lockFailures == 0
    }

    /// Loads and checks everything that can be wrong in the config before anything starts,
    /// so a bad deploy fails at once with one line.
    public static func load(configPath: String, node: String, logger: Logger) throws -> KeystoreDaemon {
        let config: ClusterConfig
        do {
            config = try ClusterConfig.load(path: configPath, node: node)
        } catch {
            throw DaemonError.config(error.description)
        }
        var logger = logger
        logger[metadataKey: "node"] = "\(node)"
        let warningLogger = logger
        let arena = try SecretArena { message in warningLogger.critical("\(message)") }
        let state = NodeState(config: config, arena: arena)
        do {
            try state.loadFileKeys()
        } catch let error as ConfigError {
            throw DaemonError.config(error.description)
        }
        let threads = min(System.coreCount, 4)
        return KeystoreDaemon(state: state, arena: arena, logger: logger, group: MultiThreadedEventLoopGroup(numberOfThreads: threads))
    }

    /// Serves until SIGTERM/SIGINT (or `stop()`), then shuts down cleanly.
    public func run() async throws {
        let me = state.config.me
        var groupID: UInt32?
        if let name = me.socketGroup {
            if let number = UInt32(name) { groupID = number }
            else if let entry = getgrnam(name) { groupID = entry.pointee.gr_gid }
            else { throw DaemonError.socketGroup(name) }
        }
        let acl = state.config.accessControl(daemonUID: getuid())
        let router = APIRouter(services: self, acl: acl)
        let server = try await LocalAPIServer.start(
            configuration: LocalAPIServerConfiguration(socketPath: me.socketPath, socketMode: me.socketMode, socketGroupID: groupID),
            responder: router, group: group, logger: logger)
        api.withLock { $0 = server }
        logger.info("serving the local API on \(me.socketPath) (mode \(String(me.socketMode, radix: 8)))")

        let signals = installSignalHandlers()
        defer { for source in signals { source.cancel() } }

        // Single node for now: nobody to join, so the bootstrap decision is immediate.
        let created = try state.becomeReady()
        publish(created)
        logger.info("ready: \(state.ramKeys.count) ram keys, \(state.fileKeyPaths.count) file keys")

        let expiry = group.next().scheduleRepeatedTask(initialDelay: .seconds(1), delay: .seconds(1)) { [state, logger] _ in
            for (ref, id) in state.expire() { logger.info("version \(id) of \(ref) expired after its grace period") }
        }

        await withCheckedContinuation { continuation in
            stopRequested.withLock { $0 = continuation }
        }
        expiry.cancel()
        logger.info("shutting down")
        await server.close()
        try? await group.shutdownGracefully()
    }

    /// Ends `run()`.
    public func stop() {
        stopRequested.withLock { continuation in
            continuation?.resume()
            continuation = nil
        }
    }

    private func installSignalHandlers() -> [DispatchSourceSignal] {
        var sources: [DispatchSourceSignal] = []
        for (signo, action) in [(SIGHUP, "reload"), (SIGTERM, "stop"), (SIGINT, "stop")] {
            signal(signo, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: signo, queue: .global())
            source.setEventHandler { [weak self] in
                guard let self else { return }
                if action == "reload" {
                    do {
                        let changed = try self.reload()
                        self.logger.info("SIGHUP: reloaded file keys; changed: \(changed.isEmpty ? "none" : changed.map(\.description).joined(separator: ", "))")
                    } catch {
                        self.logger.error("SIGHUP: reload failed, previous keys kept: \(error)")
                    }
                } else {
                    self.stop()
                }
            }
            source.resume()
            sources.append(source)
        }
        return sources
    }

    // MARK: NodeServices

    public func publish(_ delta: StoreDelta) {
        // Replication arrives with the cluster shell.
    }

    public func clusterStatus() -> ClusterStatus {
        let me = state.config.me
        return ClusterStatus(
            members: [ClusterStatus.Member(node: me.name, address: me.peerAddress, state: "alive", lastContactMillis: wallClockMillis(), version: keystoreVersion)],
            aliveNodes: [me.name])
    }

    public func reload() throws -> [KeyRef] {
        try state.loadFileKeys()
    }
}
