import Foundation
import XCTest

/// Certificates for every test in this target, generated once per test process with the operator
/// script (so the script itself is exercised) plus test-only tricks (expired cert, foreign CA).
struct CertFixture: Sendable {
    let dir: String
    let otherCADir: String
    var ca: String { dir + "/ca.pem" }
    func cert(_ node: String) -> String { "\(dir)/\(node).pem" }
    func key(_ node: String) -> String { "\(dir)/\(node).key" }
    var expiredCert: String { dir + "/expired-node1.pem" }
    var otherCA: String { otherCADir + "/ca.pem" }
    func otherCert(_ node: String) -> String { "\(otherCADir)/\(node).pem" }
    func otherKey(_ node: String) -> String { "\(otherCADir)/\(node).key" }

    static let scriptPath: String = {
        // Tests/PeerTLSTests/Fixtures.swift → repo root → deploy/gen-certs.sh
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("deploy/gen-certs.sh").path
    }()

    private static let cache = LockedBox<Result<CertFixture, Error>?>(nil)

    static func shared() throws -> CertFixture {
        try cache.withLockedValue { cached in
            if let cached { return try cached.get() }
            let result = Result { try make() }
            cached = result
            return try result.get()
        }
    }

    private static func make() throws -> CertFixture {
        let base = NSTemporaryDirectory() + "peertls-\(getpid())-\(UInt32.random(in: 0 ... .max))"
        let dir = base + "/cluster", other = base + "/other"
        try runTool("/bin/bash", [scriptPath, dir, "node1", "node2", "node3"])
        try runTool("/bin/bash", [scriptPath, other, "node1"])
        // Expired node1 certificate signed by the real cluster CA: OpenSSL 3.0's `x509 -req` cannot
        // backdate, `openssl ca` can.
        let work = base + "/expired"
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
        try "".write(toFile: work + "/index.txt", atomically: true, encoding: .utf8)
        try "01\n".write(toFile: work + "/serial", atomically: true, encoding: .utf8)
        try """
        [ca]
        default_ca = ca_default
        [ca_default]
        database = \(work)/index.txt
        new_certs_dir = \(work)
        serial = \(work)/serial
        default_md = sha256
        policy = policy_any
        [policy_any]
        commonName = supplied
        [ext]
        basicConstraints = critical, CA:FALSE
        keyUsage = critical, digitalSignature
        extendedKeyUsage = serverAuth, clientAuth
        subjectAltName = DNS:node1, IP:127.0.0.1
        """.write(toFile: work + "/ca.cnf", atomically: true, encoding: .utf8)
        try runTool("/usr/bin/env", ["openssl", "req", "-new", "-key", dir + "/node1.key", "-subj", "/CN=node1",
                                     "-out", work + "/node1.csr"])
        try runTool("/usr/bin/env", ["openssl", "ca", "-batch", "-config", work + "/ca.cnf", "-extensions", "ext",
                                     "-cert", dir + "/ca.pem", "-keyfile", dir + "-ca/ca.key", "-notext",
                                     "-startdate", "20200101000000Z", "-enddate", "20200201000000Z",
                                     "-in", work + "/node1.csr", "-out", dir + "/expired-node1.pem"])
        return CertFixture(dir: dir, otherCADir: other)
    }
}

struct ToolFailed: Error, CustomStringConvertible {
    let description: String
}

/// Runs a tool to completion and returns its combined output; throws on a non-zero exit.
@discardableResult
func runTool(_ executable: String, _ arguments: [String], environment: [String: String] = [:]) throws -> String {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    var env = ProcessInfo.processInfo.environment
    env.merge(environment) { $1 }
    process.environment = env
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = pipe
    process.standardInput = FileHandle.nullDevice
    try process.run()
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    let output = String(decoding: data, as: UTF8.self)
    guard process.terminationStatus == 0 else {
        throw ToolFailed(description: "\(arguments.joined(separator: " ")) exited \(process.terminationStatus): \(output)")
    }
    return output
}

/// A long-running `openssl s_server` / `s_client` whose output the test waits on line by line.
final class OpenSSLProcess: Sendable {
    private let process: Process
    private let stdin: Pipe
    private let output = LockedBox("")
    private let condition = NSCondition()

    init(_ arguments: [String]) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["openssl"] + arguments
        let out = Pipe(), input = Pipe()
        process.standardOutput = out
        process.standardError = out
        process.standardInput = input
        self.process = process
        self.stdin = input
        let output = self.output, condition = self.condition
        out.fileHandleForReading.readabilityHandler = { handle in
            let data = handle.availableData
            condition.lock()
            if data.isEmpty {
                handle.readabilityHandler = nil
            } else {
                output.withLockedValue { $0 += String(decoding: data, as: UTF8.self) }
            }
            condition.broadcast()
            condition.unlock()
        }
        try process.run()
    }

    var text: String { output.withLockedValue { $0 } }

    /// Waits until the output contains `needle` (or the process exits / the deadline passes).
    @discardableResult
    func waitFor(_ needle: String, timeout: TimeInterval = 10) -> Bool {
        let deadline = Date(timeIntervalSinceNow: timeout)
        condition.lock()
        defer { condition.unlock() }
        while !text.contains(needle) {
            if !condition.wait(until: deadline) { return text.contains(needle) }
            if !process.isRunning && !text.contains(needle) {
                // Give the pipe a last chance to deliver what the process wrote before exiting.
                _ = condition.wait(until: min(deadline, Date(timeIntervalSinceNow: 0.5)))
                return text.contains(needle)
            }
        }
        return true
    }

    func writeInput(_ text: String) throws {
        try stdin.fileHandleForWriting.write(contentsOf: Data(text.utf8))
    }

    func closeInput() { try? stdin.fileHandleForWriting.close() }

    func terminate() {
        if process.isRunning { process.terminate() }
        process.waitUntilExit()
    }
}

/// A TCP port nobody listens on right now (bind port 0, read it, release it).
func freeLocalPort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw ToolFailed(description: "socket() failed") }
    defer { close(fd) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = 0
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &addr) { ptr in
        ptr.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa -> Int32 in
            guard bind(fd, sa, len) == 0 else { return -1 }
            return getsockname(fd, sa, &len)
        }
    }
    guard bound == 0 else { throw ToolFailed(description: "bind() failed") }
    return Int(UInt16(bigEndian: addr.sin_port))
}

/// Minimal lock-protected box (the test target does not depend on NIOConcurrencyHelpers).
final class LockedBox<Value>: @unchecked Sendable {
    // @unchecked Sendable: every access to `value` goes through `lock`.
    private let lock = NSLock()
    private var value: Value
    init(_ value: Value) { self.value = value }
    func withLockedValue<T>(_ body: (inout Value) throws -> T) rethrows -> T {
        lock.lock()
        defer { lock.unlock() }
        return try body(&value)
    }
}
