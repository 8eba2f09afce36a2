import Foundation
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// What the end-to-end tests need from Debian. A missing piece fails the test with the package
/// to install (CI installs them in .ci/run); it never skips.
enum ProsodyPrerequisites {
    struct Missing: Error, CustomStringConvertible { var description: String }

    static func check() throws {
        var missing: [String] = []
        for (path, package) in [("/usr/bin/prosody", "prosody"), ("/usr/bin/prosodyctl", "prosody"), ("/usr/bin/lua5.4", "prosody (lua5.4)"),
                                ("/usr/bin/python3", "python3"), ("/usr/bin/openssl", "openssl"), ("/usr/bin/setpriv", "util-linux")]
        where !FileManager.default.isExecutableFile(atPath: path) {
            missing.append("\(path) (apt-get install -y \(package))")
        }
        if missing.isEmpty {
            if (try? runCommand("/usr/bin/lua5.4", ["-e", "require 'socket.unix'"]))?.status != 0 {
                missing.append("Lua's socket.unix (apt-get install -y lua-socket)")
            }
            if (try? runCommand("/usr/bin/python3", ["-c", "import slixmpp.plugins.xep_0257"]))?.status != 0 {
                missing.append("slixmpp for /usr/bin/python3 (apt-get install -y python3-slixmpp)")
            }
        }
        guard missing.isEmpty else {
            throw Missing(description: "the Prosody end-to-end tests need: " + missing.joined(separator: "; "))
        }
    }
}

/// The uid Prosody runs as: `nobody` when the tests run as root (as in CI), so the keystore's
/// ACL and socket_group are exercised for real; the test's own uid otherwise.
enum ProsodyUser {
    static let runsAsNobody = geteuid() == 0
    static var uid: uid_t { runsAsNobody ? 65534 : geteuid() }
    static var gid: gid_t { runsAsNobody ? 65534 : getegid() }
    /// The group owning the keystore sockets (the group of `uid`).
    static var groupName: String {
        guard let entry = getgrgid(gid), let name = entry.pointee.gr_name else { return "nogroup" }
        return String(cString: name)
    }

    /// `command` as the Prosody user (through setpriv when we are root).
    static func wrap(_ executable: String, _ arguments: [String]) -> (String, [String]) {
        guard runsAsNobody else { return (executable, arguments) }
        return ("/usr/bin/setpriv", ["--reuid=\(uid)", "--regid=\(gid)", "--clear-groups", executable] + arguments)
    }

    static func chown(_ path: String) {
        _ = Glibc.chown(path, uid, gid)
    }
}

/// One Prosody 0.12 process serving `host` with mod_keystore_certs loaded from integrations/prosody.
final class ProsodyServer {
    let name: String
    let directory: String
    let host: String
    let port: Int
    let keystoreSocket: String
    private var process: Process?

    var configPath: String { directory + "/prosody.cfg.lua" }
    var logPath: String { directory + "/prosody.log" }
    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }
    var isRunning: Bool { process?.isRunning ?? false }

    init(name: String, scratch: ScratchDirectory, host: String, keystoreSocket: String, serverCertificate: String, serverKey: String) throws {
        self.name = name
        self.host = host
        self.keystoreSocket = keystoreSocket
        directory = scratch.file(name)
        port = try freeTCPPort()
        for dir in [directory, directory + "/data", directory + "/certs"] {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            ProsodyUser.chown(dir)
        }
        let modules = Products.repositoryRoot.appendingPathComponent("integrations/prosody").path
        let config = """
        -- Written by ProsodyHarness for test \(name).
        pidfile = "\(directory)/prosody.pid"
        data_path = "\(directory)/data"
        certificates = "\(directory)/certs"
        log = { { levels = { min = "debug" }, to = "file", filename = "\(logPath)" } }
        plugin_paths = { "\(modules)" }
        modules_enabled = { "saslauth", "tls", "disco", "ping", "register", "keystore_certs" }
        modules_disabled = { "s2s" }
        c2s_ports = { \(port) }
        c2s_interfaces = { "127.0.0.1" }
        c2s_direct_tls_ports = { }
        s2s_ports = { }
        -- Ask for client certificates; the default verifyext lets self-signed ones reach SASL.
        c2s_ssl = { verify = { "peer", "client_once" } }
        keystore_socket = "\(keystoreSocket)"
        keystore_events_max_backoff = 1

        VirtualHost "\(host)"
          ssl = { certificate = "\(serverCertificate)", key = "\(serverKey)" }
          authentication = "internal_hashed"
        """
        try scratch.write("\(name)/prosody.cfg.lua", config, mode: 0o644)
    }

    /// Creates an account (prosodyctl, as the Prosody user, before or while the server runs).
    func register(_ user: String, password: String) throws {
        let (executable, arguments) = ProsodyUser.wrap("/usr/bin/prosodyctl", ["--config", configPath, "register", user, host, password])
        let result = try runCommand(executable, arguments)
        guard result.status == 0 else { throw ProsodyPrerequisites.Missing(description: "prosodyctl register \(user) failed: \(result.output)") }
    }

    /// Starts Prosody and waits until it listens and its event stream is connected.
    func start(file: StaticString = #filePath, line: UInt = #line) throws {
        let logLinesBefore = log.components(separatedBy: "keystore events: connected").count
        let (executable, arguments) = ProsodyUser.wrap("/usr/bin/prosody", ["-F", "--config", configPath])
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        let output = FileHandle(forWritingAtPath: directory + "/stdout.log") ?? {
            FileManager.default.createFile(atPath: directory + "/stdout.log", contents: nil)
            return FileHandle(forWritingAtPath: directory + "/stdout.log")!
        }()
        output.seekToEndOfFile()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        self.process = process
        waitUntil("Prosody \(name) listens on \(port) and follows the keystore's events", timeout: 30, file: file, line: line) {
            guard process.isRunning else { return true }
            return log.components(separatedBy: "keystore events: connected").count > logLinesBefore
                && log.contains("Activated service 'c2s' on [127.0.0.1]:\(port)")
        }
        XCTAssertTrue(process.isRunning, "Prosody \(name) exited:\n\(log.suffix(4000))", file: file, line: line)
    }

    func stop() {
        guard let process, process.isRunning else { return }
        kill(process.processIdentifier, SIGTERM)
        let deadline = Date().addingTimeInterval(10)
        while process.isRunning && Date() < deadline { usleep(10_000) }
        if process.isRunning { kill(process.processIdentifier, SIGKILL); process.waitUntilExit() }
    }
}

/// A stanza error or a failed command, as the client driver reports it.
struct XMPPError: Error, Equatable, CustomStringConvertible {
    var type: String
    var condition: String
    var text: String
    var description: String { "\(type)/\(condition)\(text.isEmpty ? "" : ": \(text)")" }
}

/// One slixmpp client (integrations/prosody/test/xmpp_client.py under Debian's python3),
/// driven through JSON lines on its stdin/stdout.
final class XMPPClient: @unchecked Sendable {
    let label: String
    private let process = Process()
    private let input = Pipe()
    private let lock = NSLock()
    private var received: [[String: Any]] = []
    private var nextID = 1
    let stderrPath: String

    /// Connects at once; use `waitForSession()` or `waitForAuthFailure()` next.
    init(label: String, jid: String, password: String? = nil, certificate: (pem: String, key: String)? = nil,
         server: ProsodyServer, ca: String, scratch: ScratchDirectory) throws {
        self.label = label
        let script = Products.repositoryRoot.appendingPathComponent("integrations/prosody/test/xmpp_client.py").path
        var arguments = [script, "--jid", jid, "--port", String(server.port), "--ca", ca]
        if let password { arguments += ["--password", password] }
        if let certificate { arguments += ["--cert", certificate.pem, "--key", certificate.key] }
        if ProcessInfo.processInfo.environment["XMPP_CLIENT_DEBUG"] != nil { arguments.append("--debug") }
        process.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        process.arguments = arguments
        process.standardInput = input
        let output = Pipe()
        process.standardOutput = output
        stderrPath = scratch.file("client-\(label)-\(UUID().uuidString.prefix(8)).stderr")
        FileManager.default.createFile(atPath: stderrPath, contents: nil)
        process.standardError = FileHandle(forWritingAtPath: stderrPath)
        try process.run()
        let handle = output.fileHandleForReading
        Thread.detachNewThread { [self] in
            var buffer = Data()
            while true {
                let chunk = handle.availableData
                if chunk.isEmpty { break }
                buffer.append(chunk)
                while let newline = buffer.firstIndex(of: UInt8(ascii: "\n")) {
                    let line = buffer[buffer.startIndex..<newline]
                    buffer = Data(buffer[buffer.index(after: newline)...])
                    if let object = try? JSONSerialization.jsonObject(with: line) as? [String: Any] {
                        lock.lock(); received.append(object); lock.unlock()
                    }
                }
            }
        }
    }

    var messages: [[String: Any]] { lock.lock(); defer { lock.unlock() }; return received }
    func events(_ name: String) -> [[String: Any]] { messages.filter { $0["event"] as? String == name } }
    var transcript: String {
        messages.map { String(decoding: (try? JSONSerialization.data(withJSONObject: $0, options: [.sortedKeys])) ?? Data(), as: UTF8.self) }
            .joined(separator: "\n") + "\n(stderr) " + ((try? String(contentsOfFile: stderrPath, encoding: .utf8)) ?? "")
    }

    /// The first event named `name`, waiting up to `timeout` for it; fails the test if it never comes.
    @discardableResult
    func waitForEvent(_ name: String, timeout: TimeInterval = 20, file: StaticString = #filePath, line: UInt = #line) -> [String: Any]? {
        var found: [String: Any]?
        waitUntil("client \(label) reports \(name)", timeout: timeout, file: file, line: line) {
            if let fatal = events("fatal").first { XCTFail("\(fatal["message"] ?? "client failed")", file: file, line: line); return true }
            found = events(name).first
            return found != nil
        }
        if found == nil { print("client \(label) transcript:\n\(transcript)") }
        return found
    }

    /// Waits for the session and returns the bound JID.
    @discardableResult
    func waitForSession(file: StaticString = #filePath, line: UInt = #line) -> String? {
        waitForEvent("session_start", file: file, line: line)?["jid"] as? String
    }

    /// Waits until the login failed; returns the SASL condition of the first failure.
    func waitForAuthFailure(file: StaticString = #filePath, line: UInt = #line) -> String? {
        guard let failure = waitForEvent("failed_auth", file: file, line: line) else { return nil }
        XCTAssertTrue(events("session_start").isEmpty, "client \(label) logged in although SASL failed", file: file, line: line)
        return failure["condition"] as? String
    }

    /// Sends one command and waits for its answer; throws XMPPError for an error answer.
    @discardableResult
    func send(_ command: String, _ fields: [String: Any] = [:], timeout: TimeInterval = 20,
              file: StaticString = #filePath, line: UInt = #line) throws -> [String: Any] {
        lock.lock(); let id = nextID; nextID += 1; lock.unlock()
        var request = fields
        request["id"] = id
        request["cmd"] = command
        var data = try JSONSerialization.data(withJSONObject: request)
        data.append(UInt8(ascii: "\n"))
        input.fileHandleForWriting.write(data)
        var answer: [String: Any]?
        waitUntil("client \(label) answers \(command)", timeout: timeout, file: file, line: line) {
            answer = messages.first { $0["id"] as? Int == id }
            return answer != nil
        }
        guard let answer else { throw XMPPError(type: "timeout", condition: "no-answer", text: "\(command) unanswered\n\(transcript)") }
        if answer["ok"] as? Bool == true { return answer }
        let error = answer["error"] as? [String: Any] ?? [:]
        throw XMPPError(type: error["type"] as? String ?? "?", condition: error["condition"] as? String ?? "?",
                        text: error["text"] as? String ?? "")
    }

    /// The stanza error a command fails with (nil, and a test failure, if it succeeds).
    func error(_ command: String, _ fields: [String: Any] = [:], file: StaticString = #filePath, line: UInt = #line) -> XMPPError? {
        do {
            try send(command, fields, file: file, line: line)
            XCTFail("\(command) succeeded on client \(label); an error was expected", file: file, line: line)
            return nil
        } catch let error as XMPPError {
            return error
        } catch {
            XCTFail("\(command): \(error)", file: file, line: line)
            return nil
        }
    }

    var isRunning: Bool { process.isRunning }

    func stop() {
        if process.isRunning {
            process.terminate()
            let deadline = Date().addingTimeInterval(5)
            while process.isRunning && Date() < deadline { usleep(10_000) }
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        }
    }
}

/// Two keystored nodes and two Prosody instances for one virtual host: A attached to node1,
/// B to node2. Torn down (and logs printed on failure) by ProsodyTestCase.
final class ProsodyCluster {
    static let host = "prosody.test"
    let keystore: ClusterHarness
    let scratch: ScratchDirectory
    let a: ProsodyServer
    let b: ProsodyServer
    /// CA that signed Prosody's server certificate (the clients verify it).
    let serverCA: String
    private(set) var clients: [XMPPClient] = []

    init(keystore: ClusterHarness) throws {
        self.keystore = keystore
        scratch = try ScratchDirectory(prefix: "ks-prosody")
        // Prosody's uid must reach the keystore sockets and its own files.
        chmod(keystore.scratch.path, 0o711)
        chmod(scratch.path, 0o711)
        let certs = try SharedCertificates.directory()
        serverCA = certs + "/ca.pem"
        let cnf = """
        basicConstraints = critical, CA:FALSE
        keyUsage = critical, digitalSignature, keyEncipherment
        extendedKeyUsage = serverAuth
        subjectAltName = DNS:\(ProsodyCluster.host)
        """
        try scratch.write("server.ext", cnf, mode: 0o644)
        let key = scratch.file("server.key"), csr = scratch.file("server.csr"), pem = scratch.file("server.pem")
        try SharedCertificates.run("/usr/bin/openssl", ["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                                                        "-subj", "/CN=\(ProsodyCluster.host)", "-keyout", key, "-out", csr])
        try SharedCertificates.run("/usr/bin/openssl", ["x509", "-req", "-in", csr, "-CA", certs + "/ca.pem", "-CAkey", certs + "/ca.key",
                                                        "-days", "30", "-extfile", scratch.file("server.ext"), "-out", pem])
        ProsodyUser.chown(key)
        chmod(pem, 0o644)
        a = try ProsodyServer(name: "A", scratch: scratch, host: ProsodyCluster.host, keystoreSocket: keystore.socketPath("node1"),
                              serverCertificate: pem, serverKey: key)
        b = try ProsodyServer(name: "B", scratch: scratch, host: ProsodyCluster.host, keystoreSocket: keystore.socketPath("node2"),
                              serverCertificate: pem, serverKey: key)
    }

    /// The keystore config: the virtual host as a domain, Prosody's uid allowed exactly what the
    /// module uses, and the sockets' group set to Prosody's group.
    static func makeKeystore(_ testCase: ClusterTestCase) throws -> ClusterHarness {
        try testCase.makeCluster(nodes: ["node1", "node2"], domains: [
            host: ["keys": [["name": "token_secret", "type": "ram"]]],
        ], clients: [
            ["uid": Int(ProsodyUser.uid), "domains": [host], "allow": ["certs:read", "certs:write", "certs:verify", "events:read"]],
        ]) { config in
            guard var nodes = config["nodes"] as? [String: Any] else { return }
            for (name, entry) in nodes {
                guard var node = entry as? [String: Any] else { continue }
                node["socket_group"] = ProsodyUser.groupName
                nodes[name] = node
            }
            config["nodes"] = nodes
        }
    }

    /// A client certificate for `jids` (the seed's openssl recipe); returns PEM text and file paths.
    func certificate(_ name: String, jids: [String]) throws -> (text: String, pem: String, key: String) {
        let text = try UserCertificates.make(jids: jids, in: scratch.path, name: name)
        return (text, scratch.file("\(name).pem"), scratch.file("\(name).key"))
    }

    func connect(_ label: String, to server: ProsodyServer, jid: String, password: String? = nil,
                 certificate: (text: String, pem: String, key: String)? = nil) throws -> XMPPClient {
        let client = try XMPPClient(label: label, jid: jid, password: password, certificate: certificate.map { ($0.pem, $0.key) },
                                    server: server, ca: serverCA, scratch: scratch)
        clients.append(client)
        return client
    }

    func shutdown(dumpLogs: Bool) {
        for client in clients { client.stop() }
        a.stop()
        b.stop()
        if dumpLogs {
            for client in clients { print("===== client \(client.label) =====\n\(client.transcript)") }
            for server in [a, b] { print("===== Prosody \(server.name) (\(server.logPath)) =====\n\(server.log.suffix(60_000))") }
        }
        scratch.remove()
    }
}

/// Base class: the Prosody side is torn down before the keystore nodes, logs printed on failure.
class ProsodyTestCase: ClusterTestCase {
    var prosodyClusters: [ProsodyCluster] = []

    override func setUpWithError() throws {
        try super.setUpWithError()
        do {
            try ProsodyPrerequisites.check()
        } catch {
            XCTFail("\(error)")
            throw error
        }
    }

    /// Starts node1 and node2 and Prosody A (on node1) and B (on node2), each with `accounts`.
    func startProsodyCluster(accounts: [String: String] = ["alice": "alice-password"]) throws -> ProsodyCluster {
        let keystore = try ProsodyCluster.makeKeystore(self)
        try keystore.startAll()
        let cluster = try ProsodyCluster(keystore: keystore)
        prosodyClusters.append(cluster)
        for server in [cluster.a, cluster.b] {
            for (user, password) in accounts { try server.register(user, password: password) }
            try server.start()
        }
        return cluster
    }

    override func tearDown() {
        let failed = (testRun?.failureCount ?? 0) + (testRun?.unexpectedExceptionCount ?? 0) > 0
        for cluster in prosodyClusters { cluster.shutdown(dumpLogs: failed) }
        prosodyClusters.removeAll()
        super.tearDown()
    }
}
