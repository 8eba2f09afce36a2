import Foundation
import KeystoreClient
import TestSupport
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// Where the built products (keystored, keystorectl) live: next to the test bundle.
enum Products {
    static var directory: URL {
        let exe = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        var dir = exe.deletingLastPathComponent()
        // `swift test` runs .build/<triple>/debug/<pkg>PackageTests.xctest directly.
        if dir.lastPathComponent.hasSuffix(".xctest") { dir = dir.deletingLastPathComponent() }
        return dir
    }
    static var keystored: String { directory.appendingPathComponent("keystored").path }
    static var keystorectl: String { directory.appendingPathComponent("keystorectl").path }
    static var repositoryRoot: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    }
}

/// Polls `condition` until it holds or `timeout` passes. Used instead of fixed sleeps: the
/// test continues the moment the system reaches the state it waits for.
@discardableResult
func waitUntil(_ what: String, timeout: TimeInterval = 20, file: StaticString = #filePath, line: UInt = #line,
               _ condition: () throws -> Bool) rethrows -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    var delay: useconds_t = 2_000
    while Date() < deadline {
        if try condition() { return true }
        usleep(delay)
        delay = min(delay * 2, 100_000)
    }
    if try condition() { return true }
    XCTFail("timed out after \(timeout)s waiting until \(what)", file: file, line: line)
    return false
}

/// Cluster CA and node certificates made once per test run with deploy/gen-certs.sh.
enum SharedCertificates {
    nonisolated(unsafe) private static var cached: String?
    private static let lock = NSLock()

    static let nodeNames = (1...6).map { "node\($0)" }

    static func directory() throws -> String {
        lock.lock(); defer { lock.unlock() }
        if let cached { return cached }
        // Node keys in <scratch>/certs, the CA key in <scratch>/certs-ca: removed when the test process exits.
        let dir = try ScratchDirectory.forProcessLifetime(prefix: "ks-certs").file("certs")
        try ClusterCertificates.generate(in: dir, nodes: nodeNames)
        cached = dir
        return dir
    }

    /// Runs a command to completion; throws (with its output) unless it exits 0.
    @discardableResult
    static func run(_ executable: String, _ arguments: [String], environment: [String: String] = [:]) throws -> String {
        let result = try runCommand(executable, arguments, environment: environment)
        guard result.status == 0 else {
            throw NSError(domain: "harness", code: Int(result.status), userInfo: [NSLocalizedDescriptionKey: "\(executable) \(arguments) failed: \(result.output)"])
        }
        return result.output
    }
}

/// One real `keystored` process.
final class NodeProcess {
    let name: String
    let socketPath: String
    let logPath: String
    let process: Process

    init(name: String, socketPath: String, logPath: String, process: Process) {
        self.name = name
        self.socketPath = socketPath
        self.logPath = logPath
        self.process = process
    }

    var pid: Int32 { process.processIdentifier }
    var isRunning: Bool { process.isRunning }
    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }
    var client: KeystoreClient { KeystoreClient(socketPath: socketPath, timeoutSeconds: 5) }

    func signal(_ signo: Int32) { kill(process.processIdentifier, signo) }

    /// SIGTERM and wait for exit (SIGKILL after `timeout`).
    func stop(timeout: TimeInterval = 10) {
        guard process.isRunning else { return }
        signal(SIGTERM)
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(5_000) }
        if process.isRunning { signal(SIGKILL); process.waitUntilExit() }
    }

    func kill9() {
        guard process.isRunning else { return }
        signal(SIGKILL)
        process.waitUntilExit()
    }
}

/// Builds a cluster config in a scratch directory and starts/stops real keystored nodes.
final class ClusterHarness {
    let scratch: ScratchDirectory
    let nodeNames: [String]
    var ports: [String: Int] = [:]
    var processes: [String: NodeProcess] = [:]
    var configPath: String { scratch.file("cluster.json") }
    private var retired: [NodeProcess] = []

    /// Command prefix per node (e.g. `ip netns exec NS`), for multi-host tests.
    var launchPrefix: [String: [String]] = [:]

    /// - Parameters:
    ///   - peerAddresses: "host:port" per node; default: ephemeral loopback ports.
    ///   - extra: mutates the config dictionary before it is written.
    init(nodes: [String], joinTimeoutMillis: Int = 1500, domains: [String: Any]? = nil, clients: [[String: Any]]? = nil,
         peerAddresses: [String: String]? = nil, extra: (inout [String: Any]) -> Void = { _ in }) throws {
        scratch = try ScratchDirectory()
        nodeNames = nodes
        let certs = try SharedCertificates.directory()
        for node in nodes where peerAddresses == nil {
            // The kernel may hand a just-released port out again: every node needs its own.
            var port = try freeTCPPort()
            while ports.values.contains(port) { port = try freeTCPPort() }
            ports[node] = port
        }
        try scratch.write("psk/first_provision", "  first-psk-secret \n")
        try scratch.write("psk/second_provision", "second-psk-secret\n")
        var nodeEntries: [String: Any] = [:]
        for node in nodes {
            nodeEntries[node] = ["peer": peerAddresses?[node] ?? "127.0.0.1:\(ports[node]!)", "socket": "\(scratch.path)/{node}.sock",
                                 "data_dir": "\(scratch.path)/data/{node}"]
        }
        var config: [String: Any] = [
            "cluster": "test-cluster",
            "tls": ["ca": "\(certs)/ca.pem", "cert": "\(certs)/{node}.pem", "key": "\(certs)/{node}.key"],
            "join_timeout_ms": joinTimeoutMillis,
            "grace_period_s": 3600,
            "ram_key_size": 2048,
            "nodes": nodeEntries,
            "domains": domains ?? [
                "first.com": ["keys": [
                    ["name": "token_secret", "type": "ram"],
                    ["name": "provision_pre_shared", "type": "file", "path": "psk/first_provision"]]],
                "second.com": ["ram_key_size": 64, "keys": [
                    ["name": "token_secret", "type": "ram"],
                    ["name": "provision_pre_shared", "type": "file", "path": "psk/second_provision"]]],
            ],
        ]
        if let clients { config["clients"] = clients }
        extra(&config)
        let data = try JSONSerialization.data(withJSONObject: config, options: [.prettyPrinted, .sortedKeys])
        try scratch.write("cluster.json", String(decoding: data, as: UTF8.self), mode: 0o644)
    }

    func socketPath(_ node: String) -> String { "\(scratch.path)/\(node).sock" }

    /// Starts `node`; returns once its socket answers (not necessarily ready).
    @discardableResult
    /// `logLevel` nil leaves the level to the config's `log_level` (the flag would pin it).
    func start(_ node: String, arguments: [String] = [], config: String? = nil, environment: [String: String] = [:],
               logLevel: String? = "debug", waitForSocket: Bool = true, file: StaticString = #filePath, line: UInt = #line) throws -> NodeProcess {
        let logPath = scratch.file("\(node).\(retired.count + processes.count).log")
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        let log = try FileHandle(forWritingTo: URL(fileURLWithPath: logPath))
        let process = Process()
        let daemonArguments = ["--config", config ?? configPath, "--node", node] + (logLevel.map { ["--log-level", $0] } ?? []) + arguments
        if let prefix = launchPrefix[node], let first = prefix.first {
            process.executableURL = URL(fileURLWithPath: first)
            process.arguments = Array(prefix.dropFirst()) + [Products.keystored] + daemonArguments
        } else {
            process.executableURL = URL(fileURLWithPath: Products.keystored)
            process.arguments = daemonArguments
        }
        if !environment.isEmpty {
            process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        }
        process.standardOutput = log
        process.standardError = log
        try process.run()
        let handle = NodeProcess(name: node, socketPath: socketPath(node), logPath: logPath, process: process)
        if let old = processes[node] { retired.append(old) }
        processes[node] = handle
        if waitForSocket {
            waitUntil("\(node)'s socket answers", file: file, line: line) {
                guard handle.isRunning else { return true }
                return (try? handle.client.health()) != nil
            }
            XCTAssertTrue(handle.isRunning, "\(node) exited early:\n\(handle.log)", file: file, line: line)
        }
        return handle
    }

    func waitReady(_ node: String, timeout: TimeInterval = 20, file: StaticString = #filePath, line: UInt = #line) {
        guard let handle = processes[node] else { return XCTFail("\(node) not started", file: file, line: line) }
        waitUntil("\(node) is ready", timeout: timeout, file: file, line: line) {
            (try? handle.client.health().ready) == true
        }
    }

    func client(_ node: String) -> KeystoreClient { KeystoreClient(socketPath: socketPath(node), timeoutSeconds: 5) }

    /// Starts every node at once (no waiting in between) and waits until all are ready.
    func startAll(file: StaticString = #filePath, line: UInt = #line) throws {
        for node in nodeNames { try start(node, waitForSocket: false) }
        for node in nodeNames { waitReady(node, file: file, line: line) }
    }

    /// The primary key (base64) each running node serves for `domain/name`.
    /// `keystore_gossip_messages_total` of one direction and frame type on `node` (-1: no answer).
    func gossipMessages(_ node: String, direction: String, type: String) -> Int {
        guard let response = try? KeystoreConnection(socketPath: socketPath(node)).request("GET", "/metrics") else { return -1 }
        let line = response.bodyText.split(separator: "\n").first {
            $0.hasPrefix("keystore_gossip_messages_total{") && $0.contains("direction=\"\(direction)\"") && $0.contains("type=\"\(type)\"")
        }
        return line.flatMap { Int(Double($0.split(separator: " ").last ?? "") ?? -1) } ?? 0
    }

    func primaries(_ domain: String = "first.com", _ name: String = "token_secret") -> [String: String] {
        var result: [String: String] = [:]
        for (node, process) in processes where process.isRunning {
            if let key = try? process.client.getKey(domain: domain, name: name).primary?.key { result[node] = key }
        }
        return result
    }

    /// Waits until every running node serves the same primary for the key, and returns it.
    @discardableResult
    func waitForAgreement(_ domain: String = "first.com", _ name: String = "token_secret", timeout: TimeInterval = 20,
                          file: StaticString = #filePath, line: UInt = #line) -> String? {
        var agreed: String?
        let running = processes.values.filter(\.isRunning).count
        waitUntil("all \(running) nodes serve one primary for \(domain)/\(name)", timeout: timeout, file: file, line: line) {
            let keys = primaries(domain, name)
            guard keys.count == running, Set(keys.values).count == 1 else { return false }
            agreed = keys.values.first
            return true
        }
        return agreed
    }

    func writeConfig(_ name: String, _ config: [String: Any]) throws -> String {
        let data = try JSONSerialization.data(withJSONObject: config, options: [.prettyPrinted, .sortedKeys])
        try scratch.write(name, String(decoding: data, as: UTF8.self), mode: 0o644)
        return scratch.file(name)
    }

    var config: [String: Any] {
        (try? JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: configPath)))) as? [String: Any] ?? [:]
    }

    /// Every log this harness produced, for failure reports.
    var allLogs: String {
        (retired + processes.values.sorted { $0.name < $1.name }).map { "===== \($0.name) (\($0.logPath)) =====\n\($0.log)" }.joined(separator: "\n")
    }

    func shutdown(dumpLogs: Bool) {
        // Retired processes too: a test may start a node again while the first one still runs.
        for process in retired + Array(processes.values) { process.stop() }
        if dumpLogs { print(allLogs) }
        scratch.remove()
    }
}

/// Base class: tears the cluster down and prints every node's log only when the test failed.
class ClusterTestCase: XCTestCase {
    var harnesses: [ClusterHarness] = []

    override class func setUp() {
        super.setUp()
        // Writing to a socket or pipe a killed node left behind must fail the write, not kill
        // the whole test process (tests kill nodes on purpose).
        signal(SIGPIPE, SIG_IGN)
    }

    func makeCluster(nodes: [String], joinTimeoutMillis: Int = 1500, domains: [String: Any]? = nil,
                     clients: [[String: Any]]? = nil, peerAddresses: [String: String]? = nil,
                     extra: (inout [String: Any]) -> Void = { _ in }) throws -> ClusterHarness {
        let harness = try ClusterHarness(nodes: nodes, joinTimeoutMillis: joinTimeoutMillis, domains: domains, clients: clients,
                                         peerAddresses: peerAddresses, extra: extra)
        harnesses.append(harness)
        return harness
    }

    override func tearDown() {
        let failed = (testRun?.failureCount ?? 0) + (testRun?.unexpectedExceptionCount ?? 0) > 0
        for harness in harnesses {
            harness.shutdown(dumpLogs: failed)
            // The scratch directory holds client private keys: a test that leaves it behind fails.
            XCTAssertFalse(FileManager.default.fileExists(atPath: harness.scratch.path),
                           "\(harness.scratch.path) survived the test (a mount inside it, or a node still writing?)")
        }
        harnesses.removeAll()
        super.tearDown()
    }
}

extension HTTPResponse {
    var bodyText: String { String(decoding: body, as: UTF8.self) }
    func throwIfError() throws {
        guard (200..<300).contains(status) else { throw KeystoreClientError.malformedResponse("HTTP \(status): \(bodyText)") }
    }
}
