import ArgumentParser
import Foundation
import KeystoreClient

/// Memory figures of one process, from /proc (kB).
func procStatus(pid: Int32) -> (rss: Int, locked: Int)? {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
    func field(_ name: String) -> Int {
        guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix(name + ":") }) else { return -1 }
        return Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") ?? -1
    }
    return (field("VmRSS"), field("VmLck"))
}

/// Time for a fresh node to join a running node and hold every RAM key, and what holding them costs.
struct Sync: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Start a fresh node against a running one; time until it is ready and serves the same keys.")

    @Option(help: "keystored binary.") var keystored: String
    @Option(help: "Cluster config (the running node and the fresh one are both in it).") var config: String
    @Option(help: "Name of the fresh node to start.") var node: String
    @Option(help: "The fresh node's Unix socket.") var socket: String
    @Option(help: "The running node's Unix socket.") var reference: String
    @Option(help: "The running node's pid (for RSS/VmLck).") var referencePid: Int32
    @Option(help: "Comma-separated domains whose keys are compared after the sync.") var domains: String
    @Option(help: "Where the fresh node logs.") var log: String

    func run() throws {
        let ref = KeystoreClient(socketPath: reference, timeoutSeconds: 30)
        let domainList = domains.split(separator: ",").map(String.init)
        var expected = 0
        for d in domainList { expected += try ref.listKeys(domain: d).keys.filter { $0.type == .ram }.count }

        _ = FileManager.default.createFile(atPath: log, contents: nil)
        let logHandle = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
        let process = Process()
        process.executableURL = URL(fileURLWithPath: keystored)
        process.arguments = ["--config", config, "--node", node]
        process.standardError = logHandle
        process.standardOutput = logHandle
        let started = monotonicNanos()
        try process.run()
        defer { process.terminate(); process.waitUntilExit() }
        let fresh = KeystoreClient(socketPath: socket, timeoutSeconds: 30)
        var socketUp: UInt64?
        var ready: UInt64?
        while ready == nil {
            guard process.isRunning else { throw BenchError.notReady("\(node) exited; see \(log)") }
            if let health = try? fresh.health() {
                if socketUp == nil { socketUp = monotonicNanos() }
                if health.ready { ready = monotonicNanos() }
            }
            if ready == nil { usleep(1_000) }
            guard monotonicNanos() - started < 120_000_000_000 else { throw BenchError.notReady("\(node) not ready after 120 s; see \(log)") }
        }
        // Ready must mean "adopted the cluster's keys": compare every RAM key's primary id.
        var same = 0, different = 0
        for d in domainList {
            for summary in try ref.listKeys(domain: d).keys where summary.type == .ram {
                let a = try ref.getKey(domain: d, name: summary.name).primary?.id
                let b = try fresh.getKey(domain: d, name: summary.name).primary?.id
                if a != nil && a == b { same += 1 } else { different += 1 }
            }
        }
        let startup = Double((socketUp ?? started) - started) / 1e6
        let total = Double((ready ?? started) - started) / 1e6
        let refMem = procStatus(pid: referencePid)
        let freshMem = procStatus(pid: process.processIdentifier)
        print("| RAM keys | fresh node: spawn → socket up ms | spawn → ready (all keys adopted) ms | keys identical | reference RSS MiB | reference VmLck MiB | fresh RSS MiB | fresh VmLck MiB |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|")
        func mib(_ kb: Int?) -> String { kb.map { $0 < 0 ? "-" : fmt(Double($0) / 1024, 1) } ?? "-" }
        print("| \(expected) | \(fmt(startup, 0)) | \(fmt(total, 0)) | \(same)/\(same + different) | \(mib(refMem?.rss)) | \(mib(refMem?.locked)) | \(mib(freshMem?.rss)) | \(mib(freshMem?.locked)) |")
        fflush(nil)
    }
}
