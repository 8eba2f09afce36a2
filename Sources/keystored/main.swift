import ArgumentParser
import KeystoreAPI
import KeystoreNode
import Logging
import Metrics
import Prometheus
import SecretMemory
import ServiceLifecycle

#if canImport(Glibc)
import Glibc
#endif

/// Signals the daemon handles (SIGHUP: reload; SIGTERM/SIGINT: graceful shutdown).
let handledSignals: [Int32] = [SIGTERM, SIGINT, SIGHUP]

@available(macOS 10.15, macCatalyst 13, iOS 13, tvOS 13, watchOS 6, *)
struct Keystored: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keystored",
        abstract: "A keystore cluster node: serves RAM and file keys over a local Unix socket.",
        version: keystoreVersion)

    @Option(name: .long, help: "Path to the cluster config (JSON).")
    var config: String

    @Option(name: .long, help: "This node's name in the config's \"nodes\".")
    var node: String

    @Option(name: .long, help: "Log level: trace, debug, info, notice, warning, error, critical (default: the config's log_level, else info; given here, it wins over the config, also on reload).")
    var logLevel: String?

    @Option(name: .long, help: "Bytes an /v1/events consumer may fall behind before it is cut off.")
    var eventsMaxBacklog: Int = 1 << 20

    func run() async throws { try await serve() }

    /// The daemon's life; `run()` forwards here so top-level code can call it unambiguously.
    func serve() async throws {
        // Before any secret exists: no core dumps, no ptrace attach (DESIGN.md RAM keys 7).
        let hardening = ProcessHardening.apply()
        let level = logLevel.map { Logger.Level(rawValue: $0) } ?? .info
        guard let level else {
            fail("unknown --log-level '\(logLevel ?? "")'; use trace, debug, info, notice, warning, error or critical")
        }
        let logLevelControl = LogLevelControl(level, pinned: logLevel != nil)
        LoggingSystem.bootstrap { label in LiveLevelLogHandler(label: label, control: logLevelControl) }
        let logger = Logger(label: "keystored")
        if !hardening.coreDumpsDisabled || !hardening.nonDumpable {
            logger.critical("could not disable core dumps / ptrace (core=\(hardening.coreDumpsDisabled), nondumpable=\(hardening.nonDumpable)); secrets may be exposed in a crash dump")
        }
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        let daemon: KeystoreDaemon
        do {
            guard eventsMaxBacklog >= 1024 else { fail("--events-max-backlog must be at least 1024 bytes") }
            daemon = try KeystoreDaemon.load(configPath: config, node: node, logger: logger, metrics: NodeMetrics(registry: registry),
                                             eventsMaxBacklog: eventsMaxBacklog, logLevel: logLevelControl)
        } catch {
            fail("\(error)")
        }
        let services = ServiceGroup(configuration: .init(services: [.init(service: daemon)], logger: logger))
        // SIGTERM/SIGINT trigger the group's graceful shutdown. ServiceGroup's own Dispatch-based
        // signal handling lost them on Linux once NIO's threads were running; ProcessSignals
        // uses a sigaction handler and a self-pipe instead.
        for signo in [SIGTERM, SIGINT] {
            ProcessSignals.on(signo) {
                logger.info("signal \(signo): shutting down gracefully")
                Task { await services.triggerGracefulShutdown() }
            }
        }
        ProcessSignals.install(handledSignals)
        // A client that hangs up mid-response must cost an EPIPE, never the daemon.
        signal(SIGPIPE, SIG_IGN)
        do {
            try await services.run()
        } catch {
            fail("\(error)")
        }
    }

    private func fail(_ message: String) -> Never {
        FileHandleStderr.write("keystored: \(message)\n")
        Glibc.exit(2)
    }
}

enum FileHandleStderr {
    static func write(_ text: String) {
        var bytes = Array(text.utf8)
        _ = Glibc.write(2, &bytes, bytes.count)
    }
}

do {
    let command = try Keystored.parse()
    try await command.serve()
} catch {
    Keystored.exit(withError: error)
}
