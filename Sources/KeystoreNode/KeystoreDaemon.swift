import Dispatch
import KeystoreConfig
import LocalAPI
import Logging
import NIOCore
import NIOPosix
import PeerTLS
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
    let cluster: ClusterShell
    public let events: EventHub
    private let stopRequested = Mutex<CheckedContinuation<Void, Never>?>(nil)

    private init(state: NodeState, arena: SecretArena, logger: Logger, group: MultiThreadedEventLoopGroup, tls: PeerTLSContext) {
        self.state = state
        self.arena = arena
        self.logger = logger
        self.group = group
        self.events = EventHub(nodeName: state.nodeName, logger: logger)
        self.cluster = ClusterShell(state: state, tls: tls, loop: group.next(), logger: logger, events: events)
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
        let tls: PeerTLSContext
        do {
            tls = try PeerTLSContext(caFile: config.tls.ca, certificateFile: config.tls.certificate, privateKeyFile: config.tls.privateKey)
            let names = try PeerTLSContext.dnsNames(inCertificateFile: config.tls.certificate)
            guard names.contains(node) else {
                throw DaemonError.config("tls.cert: \(config.tls.certificate) names \(names.isEmpty ? "no DNS names" : names.joined(separator: ", ")), not this node '\(node)'; issue it with subjectAltName DNS:\(node) (deploy/gen-certs.sh)")
            }
        } catch let error as PeerTLSError {
            throw DaemonError.config("tls: \(error.description)")
        }
        let threads = min(System.coreCount, 4)
        return KeystoreDaemon(state: state, arena: arena, logger: logger, group: MultiThreadedEventLoopGroup(numberOfThreads: threads), tls: tls)
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
        logger.info("serving the local API on \(me.socketPath) (mode \(String(me.socketMode, radix: 8)))")

        let signals = installSignalHandlers()
        defer { for source in signals { source.cancel() } }

        do {
            try await cluster.start()
        } catch {
            await server.close()
            throw error
        }
        // DESIGN.md RAM keys 2: adopt the cluster's keys before generating any.
        let started = monotonicMillis()
        let outcome = await cluster.joinCluster(timeoutMillis: state.config.joinTimeoutMillis)
        let created = try state.becomeReady()
        publish(created)
        let generated = created.keyVersions.count
        switch outcome {
        case .adopted(let peer):
            logger.info("ready after \(monotonicMillis() - started) ms: adopted the cluster's keys from \(peer); generated \(generated) missing ram keys")
        case .clusterStarting:
            logger.info("ready: the whole cluster is starting; generated \(generated) ram keys")
        case .timedOut:
            logger.notice("ready: no peer answered within join_timeout_ms=\(state.config.joinTimeoutMillis); bootstrapped alone with \(generated) new ram keys")
        case .alone:
            logger.info("ready: single-node cluster; generated \(generated) ram keys")
        }

        let expiry = group.next().scheduleRepeatedTask(initialDelay: .seconds(1), delay: .seconds(1)) { [state, logger] _ in
            for (ref, id) in state.expire() { logger.info("version \(id) of \(ref) expired after its grace period") }
        }

        await withCheckedContinuation { continuation in
            stopRequested.withLock { $0 = continuation }
        }
        expiry.cancel()
        logger.info("shutting down")
        await server.close()
        await cluster.shutdown()
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
        cluster.publish(delta)
    }

    public func clusterStatus() -> ClusterStatus {
        cluster.status
    }

    public func reload() throws -> [KeyRef] {
        let changed = try state.loadFileKeys()
        // New PSK fingerprints go out at once so mismatches show up cluster-wide.
        let mine = state.withStore { $0.store.pskFingerprints().filter { $0.node == state.nodeName && changed.contains($0.key) } }
        publish(StoreDelta(pskFingerprints: mine))
        return changed
    }
}
