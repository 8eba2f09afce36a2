import Foundation
import KeystoreClient
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// Issue 5, secrets hygiene: RAM key bytes stay in the node's locked memory and in API answers
/// to authorised callers, nowhere else a test can look.
final class SecuritySecretsTests: ClusterTestCase {
    /// Byte strings that betray a key: overlapping windows tiling its raw bytes, its base64 and
    /// its hex, so any leaked run of at least 24 raw bytes / 32 base64 or 48 hex characters
    /// contains a whole window, wherever in the key it starts.
    private func needles(for base64Key: String) -> [(String, Data)] {
        guard let raw = Data(base64Encoded: base64Key), raw.count >= 16 else { return [] }
        func tiles(_ bytes: [UInt8], width: Int, step: Int, _ what: String) -> [(String, Data)] {
            var starts = Array(stride(from: 0, through: bytes.count - width, by: step))
            if starts.last != bytes.count - width { starts.append(bytes.count - width) }
            return starts.map { ("\(what) @\($0)", Data(bytes[$0..<$0 + width])) }
        }
        let hex = raw.map { String(format: "%02x", $0) }.joined()
        return tiles(Array(raw), width: 16, step: 8, "raw bytes")
            + tiles(Array(base64Key.utf8), width: 24, step: 8, "base64")
            + tiles(Array(hex.utf8), width: 32, step: 16, "hex")
            + tiles(Array(hex.uppercased().utf8), width: 32, step: 16, "HEX")
    }

    private func assertNoNeedles(_ haystack: Data, _ needles: [(String, Data)], in place: String, file: StaticString = #filePath, line: UInt = #line) {
        for (what, needle) in needles where haystack.range(of: needle) != nil {
            XCTFail("RAM key \(what) found in \(place)", file: file, line: line)
        }
    }

    func testRAMKeyBytesNeverReachLogsFilesEnvironmentOrErrors() throws {
        let cluster = try makeCluster(nodes: ["node1"], joinTimeoutMillis: 200)
        let node = try cluster.start("node1", arguments: ["--log-level", "trace"])
        cluster.waitReady("node1")
        let client = node.client

        // Fetch every RAM key over the API, including a rotated one, so the node has written
        // them into responses (the path most likely to leave copies behind).
        _ = try client.rotateKey(domain: "first.com", name: "token_secret")
        var keys: [String] = []
        for domain in ["first.com", "second.com"] {
            let reply = try client.getKey(domain: domain, name: "token_secret")
            keys += reply.versions.compactMap(\.key)
        }
        XCTAssertEqual(keys.count, 3, "two first.com versions and one second.com version")
        let allNeedles = keys.flatMap { needles(for: $0) }
        XCTAssertGreaterThan(allNeedles.count, 2 * 1000, "dense windows over two 2048-byte keys and one 64-byte key")

        // Every error we can provoke, over the API and through keystorectl.
        var errorTexts: [String] = []
        let connection = try KeystoreConnection(socketPath: node.socketPath)
        for (method, path) in [("GET", "/v1/domains/first.com/keys/nope"), ("GET", "/v1/domains/nowhere/keys/token_secret"),
                               ("POST", "/v1/domains/first.com/keys/provision_pre_shared/rotate"),
                               ("DELETE", "/v1/domains/first.com/keys/token_secret"), ("POST", "/v1/domains/first.com/keys/token_secret"),
                               ("GET", "/v1/domains/first.com/keys/token_secret%00"), ("GET", "/v1/domains/%ZZ/keys"),
                               ("GET", "/v1/domains/first.com/keys/token_secret/extra"), ("POST", "/v1/reload?x=" + String(repeating: "y", count: 100))] {
            let response = try connection.request(method, path, body: method == "POST" ? Array(keys[0].utf8) : nil)
            XCTAssertGreaterThanOrEqual(response.status, 200)
            errorTexts.append("\(method) \(path) -> \(response.status) \(response.bodyText)")
        }
        // A reload that fails (bad PSK file) names the file, never a key.
        try cluster.scratch.write("psk/first_provision", "   ")
        XCTAssertThrowsError(try client.reload()) { errorTexts.append("reload: \($0)") }
        node.signal(SIGHUP)
        waitUntil("the SIGHUP reload failure is logged") { node.log.contains("first_provision") }
        for arguments in [["keys", "get", "first.com", "nope"], ["keys", "rotate", "first.com", "provision_pre_shared"],
                          ["keys", "get", "first.com", "token_secret", "--bogus"]] {
            do {
                _ = try SharedCertificates.run(Products.keystorectl, ["--socket", node.socketPath] + arguments)
                XCTFail("keystorectl \(arguments) should fail")
            } catch {
                errorTexts.append("keystorectl \(arguments): \(error)")
            }
        }
        XCTAssertEqual(errorTexts.count, 13)
        assertNoNeedles(Data(errorTexts.joined(separator: "\n").utf8), allNeedles, in: "error texts")

        // The live process: environment, command line, no core dumps, locked memory.
        let pid = node.pid
        for file in ["environ", "cmdline"] {
            let data = try Data(contentsOf: URL(fileURLWithPath: "/proc/\(pid)/\(file)"))
            assertNoNeedles(data, allNeedles, in: "/proc/\(pid)/\(file)")
        }
        let limits = try String(contentsOfFile: "/proc/\(pid)/limits", encoding: .utf8)
        let core = limits.split(separator: "\n").first { $0.hasPrefix("Max core file size") }
        XCTAssertEqual(core?.split(separator: " ", omittingEmptySubsequences: true).dropFirst(4).prefix(2).joined(separator: " "), "0 0",
                       "core dumps disabled (soft and hard): \(core ?? "missing")")
        let status = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
        let lockedKB = status.split(separator: "\n").first { $0.hasPrefix("VmLck:") }
            .flatMap { Int($0.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") } ?? 0
        XCTAssertGreaterThan(lockedKB, 0, "secret memory is mlocked")
        print("security: VmLck \(lockedKB) kB, \(core ?? "")")

        // Stop cleanly (shutdown logs too), then search every file the node could have written:
        // logs, data_dir, socket directory, config directory, recursively.
        node.stop()
        var scanned = 0, bytes = 0
        let root = cluster.scratch.path
        let enumerator = try XCTUnwrap(FileManager.default.enumerator(atPath: root))
        while let relative = enumerator.nextObject() as? String {
            let path = root + "/" + relative
            var info = stat()
            guard lstat(path, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG else { continue }
            let data = try Data(contentsOf: URL(fileURLWithPath: path))
            scanned += 1; bytes += data.count
            assertNoNeedles(data, allNeedles, in: path)
        }
        XCTAssertTrue(FileManager.default.fileExists(atPath: node.logPath))
        XCTAssertGreaterThan(node.log.split(separator: "\n").count, 3, "the log has content to search")
        print("security: searched \(scanned) files (\(bytes) bytes incl. the trace log) and \(errorTexts.count) error texts for \(allNeedles.count) key fragments")
    }

    /// With RLIMIT_MEMLOCK 0 and no CAP_IPC_LOCK the node must still run, but say so loudly
    /// (naming LimitMEMLOCK) and report it in health.
    func testMlockFailureIsLoggedAsCriticalAndReportedInHealth() throws {
        let nobody: uid_t = 65534
        let dir = try ScratchDirectory(prefix: "ks-nobody")
        defer { dir.remove() }
        let certs = try SharedCertificates.directory()
        XCTAssertEqual(chmod(dir.path, 0o755), 0)
        XCTAssertEqual(chown(dir.path, nobody, gid_t(nobody)), 0)
        let port = try freeTCPPort()
        let config: [String: Any] = [
            "cluster": "test-cluster",
            "tls": ["ca": "certs/ca.pem", "cert": "certs/{node}.pem", "key": "certs/{node}.key"],
            "join_timeout_ms": 200,
            "nodes": ["node1": ["peer": "127.0.0.1:\(port)", "socket": "\(dir.path)/{node}.sock", "data_dir": "\(dir.path)/data/{node}"]],
            "domains": ["first.com": ["keys": [["name": "token_secret", "type": "ram"],
                                               ["name": "provision_pre_shared", "type": "file", "path": "psk/first"]]]],
            "clients": [["uid": 0, "domains": ["*"], "allow": ["*"]]],
        ]
        try dir.write("cluster.json", String(decoding: try JSONSerialization.data(withJSONObject: config), as: UTF8.self))
        try dir.write("psk/first", "nobody-psk")
        for name in ["ca.pem", "node1.pem", "node1.key"] {
            try dir.write("certs/\(name)", try String(contentsOfFile: "\(certs)/\(name)", encoding: .utf8))
        }
        for path in ["cluster.json", "psk/first", "certs/ca.pem", "certs/node1.pem", "certs/node1.key", "psk", "certs"] {
            XCTAssertEqual(chown(dir.file(path), nobody, gid_t(nobody)), 0, path)
        }
        chmod(dir.file("psk"), 0o700)
        chmod(dir.file("certs"), 0o700)

        let logPath = dir.file("node1.log")
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        let log = try FileHandle(forWritingTo: URL(fileURLWithPath: logPath))
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/prlimit")
        process.arguments = ["--memlock=0:0", "/usr/bin/setpriv", "--reuid=\(nobody)", "--regid=\(nobody)", "--clear-groups",
                             Products.keystored, "--config", dir.file("cluster.json"), "--node", "node1"]
        process.standardOutput = log
        process.standardError = log
        try process.run()
        defer {
            if process.isRunning { process.terminate() }
            process.waitUntilExit()
        }
        let readLog = { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }
        let client = KeystoreClient(socketPath: dir.file("node1.sock"), timeoutSeconds: 5)
        waitUntil("the unprivileged node is ready (or exited)") {
            !process.isRunning || (try? client.health().ready) == true
        }
        XCTAssertTrue(process.isRunning, "keystored as uid \(nobody) exited: \(readLog())")
        let health = try client.send(.health()).bodyText
        XCTAssertTrue(health.contains("\"memory_locked\":false"), health)
        let warning = readLog().split(separator: "\n").first { $0.contains("LimitMEMLOCK") }
        XCTAssertNotNil(warning, "no LimitMEMLOCK warning in: \(readLog())")
        XCTAssertTrue(warning?.contains("critical") == true, "the mlock warning must be critical: \(warning ?? "")")
        // Still useful: keys are served (from unlocked memory, as the warning says).
        XCTAssertNotNil(try client.getKey(domain: "first.com", name: "token_secret").primary?.key)
        let status = try String(contentsOfFile: "/proc/\(process.processIdentifier)/status", encoding: .utf8)
        XCTAssertTrue(status.contains("Uid:\t\(nobody)"), "the daemon really runs as uid \(nobody)")
        print("security: unprivileged node with memlock 0 -> \(warning ?? "")")
    }
}
