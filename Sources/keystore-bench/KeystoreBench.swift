import ArgumentParser
import Foundation
import NIOCore
import NIOPosix

@main
struct KeystoreBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keystore-bench",
        abstract: "Convergence and sync benchmarks for keystored, and a bare-NIO reference server (bench/run.sh runs the whole table; see BENCHMARKS.md). The get-key load client is bench/loadgen.c.",
        subcommands: [Converge.self, Sync.self, StaticServer.self])
}

/// Time for a rotation to be served by every node of a running cluster.
struct Converge: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Rotate repeatedly and time until every node's /v1/events reports the new primary.")

    @Option(help: "Comma-separated Unix sockets, one per node of the running cluster.") var sockets = ""
    @Option var domain = "first.com"
    @Option var key = "token_secret"
    @Option(help: "Measured rotations.") var rotations = 40
    @Option(help: "Unmeasured rotations first (they also prove every event stream is subscribed).") var warmups = 3
    @Option(help: "Seconds to wait for the cluster to be ready and fully alive.") var readyTimeout = 120.0
    @Option(help: "Seconds after which a rotation counts as missed.") var rotationTimeout = 10.0
    @Flag(help: "Print only the markdown row (for bench/run.sh).") var rowOnly = false

    static let header = """
        | nodes | rotations | missed | all nodes p50 ms | p90 ms | p99 ms | max ms | > 100 ms | > 500 ms | median node p50 ms | rotate call p50 ms |
        |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|
        """
    @Flag(help: "Print only the table header and exit.") var headerOnly = false

    func run() throws {
        if headerOnly { print(Converge.header); return }
        let list = sockets.split(separator: ",").map(String.init).filter { !$0.isEmpty }
        guard list.count >= 2 else { throw BenchError.badArgument("--sockets needs at least two nodes, comma-separated") }
        let readyStart = monotonicNanos()
        try waitForCluster(sockets: list, timeout: readyTimeout)
        let readySeconds = Double(monotonicNanos() - readyStart) / 1e9
        let book = ArrivalBook()
        startEventReaders(sockets: list, book: book, domain: domain, key: key)
        let r = try measureConvergence(sockets: list, domain: domain, key: key, rotations: rotations, warmups: warmups,
                                       perRotationTimeout: rotationTimeout, book: book)
        if !rowOnly {
            print("converge: \(list.count) nodes ready and all alive after \(fmt(readySeconds, 1)) s; \(rotations) rotations (round-robin origin)")
            print("")
            print(Converge.header)
        }
        print("| \(r.nodes) | \(r.rotations) | \(r.missed) | \(fmt(r.all.p50)) | \(fmt(r.all.p90)) | \(fmt(r.all.p99)) | \(fmt(r.all.max)) | \(r.over100ms) | \(r.over500ms) | \(fmt(r.median.p50)) | \(fmt(r.rotateCall.p50)) |")
        fflush(nil)
        // The reader threads block in read(2) forever; the process exit ends them.
        Foundation.exit(0)
    }
}
