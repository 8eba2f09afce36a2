import Dispatch
import KeystoreAPI
import KeystoreConfig
import LocalAPI
import Logging
import NIOCore
import NIOPosix
import PeerTLS
import RegistryDatabase
import ReplicatedStore
import SecretMemory
import ServiceLifecycle
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
/// Runs as a swift-service-lifecycle `Service`: SIGTERM/SIGINT trigger a graceful shutdown
/// (stop accepting, close peers, remove the socket); SIGHUP reloads the config and PSK files.
public final class KeystoreDaemon: NodeEnvironment, Service {
    let state: NodeState
    public let logger: Logger
    let events: EventHub
    public let metrics: NodeMetrics
    let group: MultiThreadedEventLoopGroup
    let arena: SecretArena
    let cluster: ClusterShell
    let operations: NodeOperations

    private init(state: NodeState, arena: SecretArena, logger: Logger, group: MultiThreadedEventLoopGroup, tls: PeerTLSContext,
                 metrics: NodeMetrics, database: sending RegistryDatabase, eventsMaxBacklog: Int) {
        self.state = state
        self.arena = arena
        self.logger = logger
        self.group = group
        self.metrics = metrics
        self.events = EventHub(nodeName: state.nodeName, maxBacklogBytes: eventsMaxBacklog, logger: logger)
        let operations = NodeOperations(state: state, registry: RegistryWriter(database: database), events: events, logger: logger, metrics: metrics)
        self.operations = operations
        let cluster = ClusterShell(config: state.config, replica: operations, tls: tls, loop: group.next(), logger: logger, metrics: metrics)
        self.cluster = cluster
        operations.attachPublisher { wire in cluster.publish(wire) }
        operations.onReconfiguration { config, _ in cluster.reconfigure(to: config) }
    }

    public var memoryLocked: Bool { arena.statistics.lockFailures == 0 }

    /// Loads and checks everything that can be wrong in the config before anything starts,
    /// so a bad deploy fails at once with one line.
    public static func load(configPath: String, node: String, logger: Logger, metrics: NodeMetrics = NodeMetrics(registry: nil),
                            eventsMaxBacklog: Int = 1 << 20, logLevel: LogLevelControl? = nil) throws -> KeystoreDaemon {
        let config: ClusterConfig
        do {
            config = try ClusterConfig.load(path: configPath, node: node)
        } catch {
            throw DaemonError.config(error.description)
        }
        if let logLevel, !logLevel.pinned, let level = config.logLevel.flatMap({ Logger.Level(rawValue: $0.rawValue) }) {
            logLevel.set(level)
        }
        var logger = logger
        logger[metadataKey: "node"] = "\(node)"
        let warningLogger = logger
        let arena = try SecretArena { message in warningLogger.critical("\(message)") }
        let state = NodeState(config: config, arena: arena)
        do {
            _ = try state.loadFileKeys(declaring: false)
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
        // Registrations survive restarts: start from the local database, then catch up from peers.
        let database: RegistryDatabase
        do {
            database = try RegistryDatabase(directory: config.me.dataDir)
            let count = try NodeOperations.loadPersisted(database, into: state)
            logger.info("loaded \(count) certificate records from \(database.path)")
        } catch {
            throw DaemonError.startup("nodes.\(node).data_dir: \(error.description)")
        }
        let threads = min(System.coreCount, 4)
        let daemon = KeystoreDaemon(state: state, arena: arena, logger: logger, group: MultiThreadedEventLoopGroup(numberOfThreads: threads),
                              tls: tls, metrics: metrics, database: database, eventsMaxBacklog: eventsMaxBacklog)
        if let logLevel {
            daemon.operations.onReconfiguration { config, changes in
                guard changes.logLevelChanged, !logLevel.pinned, let level = config.logLevel.flatMap({ Logger.Level(rawValue: $0.rawValue) }) else { return }
                logLevel.set(level)
            }
        }
        return daemon
    }

    /// Serves until graceful shutdown is requested (SIGTERM/SIGINT via the ServiceGroup).
    public func run() async throws {
        let me = state.config.me
        var groupID: UInt32?
        if let name = me.socketGroup {
            if let number = UInt32(name) { groupID = number }
            else if let entry = getgrnam(name) { groupID = entry.pointee.gr_gid }
            else { throw DaemonError.socketGroup(name) }
        }
        let router = APIRouter(node: operations, environment: self, daemonUID: getuid())
        var limits = LocalAPILimits()
        limits.uncappedUID = getuid()
        let server = try await LocalAPIServer.start(
            configuration: LocalAPIServerConfiguration(socketPath: me.socketPath, socketMode: me.socketMode, socketGroupID: groupID, limits: limits),
            responder: router, group: group, logger: logger)
        var servers = [server]
        // Every listener is bound before any is announced: a port already in use stops the
        // start with one line, not after the log said the node was serving.
        do {
            if let host = me.metricsHost, let port = me.metricsPort {
                do {
                    servers.append(try await LocalAPIServer.startTCP(host: host, port: port, responder: MetricsResponder(metrics: metrics),
                                                                     group: group, logger: logger))
                } catch let error as LocalAPIServerError {
                    throw DaemonError.startup("nodes.\(me.name).metrics: \(error)")
                }
            }
            try await cluster.start()
        } catch {
            for s in servers { await s.close() }
            throw error
        }
        logger.info("serving the local API on \(me.socketPath) (mode \(String(me.socketMode, radix: 8)))")
        if let host = me.metricsHost, let port = me.metricsPort {
            logger.info("serving Prometheus metrics on http://\(host):\(port)/metrics")
        }

        installReloadHandler()
        // DESIGN.md RAM keys 2: adopt the cluster's keys before generating any.
        let started = monotonicMillis()
        // A join's records that could not be stored hold the join until a retry stores them
        // (`NodeOperations.applyWhileJoining`); after ready, housekeeping retries.
        let joinRetry = group.next().scheduleRepeatedTask(initialDelay: .seconds(1), delay: .seconds(1)) { [operations] _ in
            operations.retryPendingPeerRecords()
        }
        // nil: asked to shut down while still waiting for peers; then no key may be generated.
        let joined = await cluster.joinCluster(timeoutMillis: state.config.joinTimeoutMillis)
        if joined != nil { await operations.finishJoin() }
        joinRetry.cancel()
        guard let outcome = joined else {
            for s in servers { await s.close() }
            await cluster.shutdown()
            await operations.registry.close()
            try? await group.shutdownGracefully()
            logger.info("stopped")
            return
        }
        let generated: Int
        do { generated = try operations.becomeReady() } catch { throw DaemonError.startup(error.description) }
        metrics.joinDuration(milliseconds: monotonicMillis() - started)
        operations.checkpointAfterJoin()
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

        // The load and the join leave their transient buffers free but resident (see ProcessMemory).
        let trimStarted = monotonicMillis()
        let heapTrimmer = HeapTrimmer()
        heapTrimmer.trim()
        logger.debug("returned the heap freed by the start-up load and the join to the system in \(monotonicMillis() - trimStarted) ms")

        let housekeeping = group.next().scheduleRepeatedTask(initialDelay: .seconds(1), delay: .seconds(1)) { [self] _ in
            operations.expireVersions()
            operations.retryPendingPeerRecords()
            operations.expireCertificates()
            recordGauges()
        }
        // Answering a join, or a large repair, frees as much as the start did (HeapTrimmer); the
        // check walks every arena, so it runs off the event loops.
        let heapCheck = group.next().scheduleRepeatedTask(initialDelay: .seconds(10), delay: .seconds(10)) { [logger] _ in
            DispatchQueue.global(qos: .utility).async {
                if let freed = heapTrimmer.trimIfWorthIt() {
                    logger.debug("returned \(freed >> 20) MiB of freed heap to the system")
                }
            }
        }
        declareCounters()
        recordGauges()

        // Suspends until SIGTERM/SIGINT (or the ServiceGroup ends).
        try? await gracefulShutdown()
        housekeeping.cancel()
        heapCheck.cancel()
        logger.info("shutting down")
        for s in servers { await s.close() }
        await cluster.shutdown()
        await operations.registry.close()
        try? await group.shutdownGracefully()
        logger.info("stopped")
    }

    /// Counters a dashboard graphs exist from the start, at 0, not from their first event.
    private func declareCounters() {
        for origin in ["local", "peer"] { metrics.counter("keystore_key_rotations_total", [("origin", origin)], by: 0) }
        for source in ["local", "peer"] { metrics.counter("keystore_registry_write_failures_total", [("source", source)], by: 0) }
        metrics.gauge("keystore_build_info", [("version", keystoreVersion)], 1)
    }

    private func recordGauges() {
        let stats = arena.statistics
        metrics.gauge("keystore_secret_memory_locked_bytes", [], Double(stats.lockedBytes))
        metrics.gauge("keystore_secret_memory_reserved_bytes", [], Double(stats.reservedBytes))
        metrics.gauge("keystore_ready", [], state.isReady ? 1 : 0)
        let counts = state.counts()
        metrics.gauge("keystore_keys", [("type", "ram")], Double(counts.ramKeys))
        metrics.gauge("keystore_keys", [("type", "file")], Double(counts.fileKeys))
        metrics.gauge("keystore_key_versions", [], Double(counts.ramVersions))
        metrics.gauge("keystore_event_subscribers", [], Double(events.subscriberCount))
        let (live, removed) = counts.certificates
        metrics.gauge("keystore_registry_pending_records", [], Double(operations.registry.failures.withLock { $0.pendingRecords }))
        var sync: [String: Int] = Dictionary(uniqueKeysWithValues: SyncState.allCases.map { ($0.rawValue, 0) })
        for member in cluster.status.members { if let state = member.sync { sync[state.rawValue, default: 0] += 1 } }
        for (state, count) in sync { metrics.gauge("keystore_member_sync", [("state", state)], Double(count)) }
        metrics.gauge("keystore_certificates", [("state", "registered")], Double(live))
        metrics.gauge("keystore_certificates", [("state", "removed")], Double(removed))
    }

    /// SIGHUP reloads (signals are taken by `ProcessSignals`; see keystored main).
    private func installReloadHandler() {
        ProcessSignals.on(SIGHUP) { [weak self] in
            guard let self else { return }
            do {
                let (changed, changes) = try self.operations.reload()
                self.logger.info("SIGHUP: reloaded; file keys changed: \(changed.isEmpty ? "none" : changed.map(\.description).joined(separator: ", ")); config changes: \(changes.summary.isEmpty ? "none" : changes.summary.joined(separator: "; "))")
            } catch {
                self.logger.error("SIGHUP: \(error)")
            }
        }
    }

    // MARK: NodeEnvironment

    public func clusterStatus() -> ClusterStatus {
        cluster.status
    }
}
