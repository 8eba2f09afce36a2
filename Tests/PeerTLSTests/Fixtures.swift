import Foundation
import TestSupport
import XCTest

/// Certificates for every test in this target, generated once per test process with the operator
/// script (so the script itself is exercised) plus test-only tricks (expired cert, foreign CA). They
/// live in one scratch directory removed when the test process exits.
struct CertFixture: Sendable {
    let dir: String
    let otherCADir: String
    let expiredCert: String
    var ca: String { dir + "/ca.pem" }
    func cert(_ node: String) -> String { "\(dir)/\(node).pem" }
    func key(_ node: String) -> String { "\(dir)/\(node).key" }
    var otherCA: String { otherCADir + "/ca.pem" }
    func otherCert(_ node: String) -> String { "\(otherCADir)/\(node).pem" }
    func otherKey(_ node: String) -> String { "\(otherCADir)/\(node).key" }

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
        let base = try ScratchDirectory.forProcessLifetime(prefix: "peertls").path
        let dir = base + "/cluster", other = base + "/other"
        try ClusterCertificates.generate(in: dir, nodes: ["node1", "node2", "node3"])
        try ClusterCertificates.generate(in: other, nodes: ["node1"])
        // Expired node1 certificate for node1's key, signed by the real cluster CA.
        let authority = try TestCertificateAuthority(directory: base + "/expired", caCertificate: dir + "/ca.pem",
                                                     caKey: ClusterCertificates.caKey(for: dir))
        let expired = try authority.issue("expired-node1", dnsName: "node1", extraNames: ["IP:127.0.0.1"],
                                          start: "20200101000000Z", end: "20200201000000Z", key: dir + "/node1.key")
        return CertFixture(dir: dir, otherCADir: other, expiredCert: expired.certificate)
    }
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
