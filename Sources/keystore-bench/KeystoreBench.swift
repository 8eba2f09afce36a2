import ArgumentParser
import Foundation
import NIOCore
import NIOPosix

@main
struct KeystoreBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keystore-bench",
        abstract: "Load and convergence benchmarks for keystored (bench/run.sh runs the whole table; see BENCHMARKS.md).",
        subcommands: [GetKey.self, Converge.self, Sync.self, StaticServer.self])
}

/// Get-key throughput and latency against keystored and, in the same run and with the same
/// client, against nginx serving a body of the same size.
struct GetKey: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "get-key", abstract: "Closed-loop keep-alive GET load over Unix sockets; keystored vs nginx.")

    @Option(help: "keystored's Unix socket.") var keystored: String
    @Option(help: "nginx's Unix socket (omit to measure keystored alone).") var nginx: String?
    @Option(help: "Request path.") var path = "/v1/domains/first.com/keys/token_secret"
    @Option(help: "Comma-separated connection counts, one row each.") var connections = "1,8,32,128"
    @Option(help: "Warm-up seconds per row (not measured).") var warmup = 1.0
    @Option(help: "Measured seconds per row.") var duration = 3.0
    @Option(help: "Client event-loop threads.") var clientThreads = 1
    @Option(help: "Extra reference server, LABEL=SOCKET[=PID] (repeatable), measured after nginx in each row.") var also: [String] = []
    @Option(help: "keystored's pid, to report its CPU time per request.") var keystoredPid: Int32?
    @Option(help: "Comma-separated nginx pids (master and workers), to report their CPU time per request.") var nginxPids: String?

    func run() async throws {
        let counts = try parseIntList(connections, what: "--connections")
        let ksPIDs = keystoredPid.map { [$0] } ?? []
        let ngPIDs = try nginxPids.map { try parseIntList($0, what: "--nginx-pids").map { Int32($0) } } ?? []
        guard duration > 0, warmup >= 0 else { throw BenchError.badArgument("--duration must be > 0 and --warmup >= 0") }
        guard clientThreads > 0 else { throw BenchError.badArgument("--client-threads must be >= 1") }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: clientThreads)
        print("get-key: GET \(path), closed loop, \(fmt(warmup, 1)) s warm-up + \(fmt(duration, 1)) s per row, \(clientThreads) client thread(s)")
        print("")
        print("| conns | server | req/s | p50 ms | p99 ms | p99.9 ms | max ms | errors | resp bytes (body) | server CPU µs/req | client CPU µs/req | keystored/nginx req/s |")
        print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for count in counts {
            let ks = try await runLoad(group: group, target: "keystored", socketPath: keystored, path: path, serverPIDs: ksPIDs,
                                       connections: count, warmup: warmup, duration: duration)
            printRow(ks, ratio: nil)
            if let nginx {
                let ng = try await runLoad(group: group, target: "nginx", socketPath: nginx, path: path, serverPIDs: ngPIDs,
                                           connections: count, warmup: warmup, duration: duration)
                printRow(ng, ratio: ks.throughput / ng.throughput)
            }
            for extra in also {
                let parts = extra.split(separator: "=").map(String.init)
                guard parts.count >= 2 else { throw BenchError.badArgument("--also \(extra): use LABEL=SOCKET[=PID]") }
                let pids = parts.count > 2 ? [Int32(parts[2])].compactMap { $0 } : []
                let row = try await runLoad(group: group, target: parts[0], socketPath: parts[1], path: path, serverPIDs: pids,
                                            connections: count, warmup: warmup, duration: duration)
                printRow(row, ratio: nil)
            }
        }
        try await group.shutdownGracefully()
    }

    private func printRow(_ row: LoadRow, ratio: Double?) {
        let errors = row.errors + row.closedEarly
        print("| \(row.connections) | \(row.target) | \(fmt(row.throughput, 0)) | \(fmt(row.latency.p50, 3)) | \(fmt(row.latency.p99, 3)) | \(fmt(row.latency.p999, 3)) | \(fmt(row.latency.max, 2)) | \(errors) | \(row.responseBytes) (\(row.bodyBytes)) | \(row.serverCPUMicros.map { fmt($0, 1) } ?? "-") | \(row.clientCPUMicros.map { fmt($0, 1) } ?? "-") | \(ratio.map { fmt($0, 2) } ?? "") |")
        fflush(nil)
    }
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
