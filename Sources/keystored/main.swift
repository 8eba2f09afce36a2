import ArgumentParser
import KeystoreNode
import Logging
import SecretMemory

#if canImport(Glibc)
import Glibc
#endif

@main
struct Keystored: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keystored",
        abstract: "A keystore cluster node: serves RAM and file keys over a local Unix socket.")

    @Option(name: .long, help: "Path to the cluster config (JSON).")
    var config: String

    @Option(name: .long, help: "This node's name in the config's \"nodes\".")
    var node: String

    @Option(name: .long, help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = "info"

    func run() async throws {
        // Before any secret exists: no core dumps, no ptrace attach (DESIGN.md RAM keys 7).
        let hardening = ProcessHardening.apply()
        guard let level = Logger.Level(rawValue: logLevel) else {
            fail("unknown --log-level '\(logLevel)'; use trace, debug, info, notice, warning, error or critical")
        }
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "keystored")
        if !hardening.coreDumpsDisabled || !hardening.nonDumpable {
            logger.critical("could not disable core dumps / ptrace (core=\(hardening.coreDumpsDisabled), nondumpable=\(hardening.nonDumpable)); secrets may be exposed in a crash dump")
        }
        let daemon: KeystoreDaemon
        do {
            daemon = try KeystoreDaemon.load(configPath: config, node: node, logger: logger)
        } catch {
            fail("\(error)")
        }
        do {
            try await daemon.run()
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
