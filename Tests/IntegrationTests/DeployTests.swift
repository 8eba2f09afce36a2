import Foundation
import KeystoreClient
import TestSupport
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// What an operator runs from deploy/: install.sh staged into a DESTDIR, the staged files used as
/// a host would use them (systemd-sysusers, systemd-tmpfiles, the keystore user running the
/// production example config), the development scripts, and the Grafana dashboard against the
/// metrics of real nodes.
///
/// install.sh builds release, as in production, into `.build/install-test`: `swift test` holds
/// SwiftPM's lock on `.build` while tests run, so a nested build there would wait forever. The
/// first run in a fresh checkout compiles everything in release mode (see docs/operations.md for
/// the measured time); later runs only check that it is up to date.
///
/// Runs as root (CI does): new mount and network namespaces isolate the daemons these tests
/// start from the host's /run, /var/lib, /etc/group and ports.
final class DeployTests: ClusterTestCase {
    private var repo: String { Products.repositoryRoot.path }

    // MARK: install.sh

    func testInstallStagesEveryFileWithItsModeAndNeverOverwritesTheConfig() throws {
        let stage = try ScratchDirectory(prefix: "ks-stage")
        defer { stage.remove() }
        let root = stage.file("root")
        let first = try install(into: root)
        XCTAssertTrue(first.contains("installed /etc/keystore/cluster.json (the annotated example"), first)
        XCTAssertTrue(first.contains("systemd-sysusers /usr/local/lib/sysusers.d/keystore.conf"), "staging prints the host steps: \(first)")

        let expected: [String: Int] = [
            "usr/local/bin/keystored": 0o755,
            "usr/local/bin/keystorectl": 0o755,
            "usr/local/lib/systemd/system/keystored@.service": 0o644,
            "usr/local/lib/sysusers.d/keystore.conf": 0o644,
            "usr/local/lib/tmpfiles.d/keystore.conf": 0o644,
            "usr/local/share/doc/keystore/README.md": 0o644,
            "usr/local/share/doc/keystore/SECURITY.md": 0o644,
            "usr/local/share/doc/keystore/operations.md": 0o644,
            "usr/local/share/doc/keystore/cluster.production.json": 0o644,
            "usr/local/share/doc/keystore/grafana-dashboard.json": 0o644,
            "etc/keystore/cluster.json": 0o640,
        ]
        let installed = try snapshot(root)
        XCTAssertEqual(Set(installed.keys), Set(expected.keys), "exactly these files are installed")
        for (path, mode) in expected { XCTAssertEqual(installed[path]?.mode, mode, path) }
        XCTAssertEqual(try mode(root + "/etc/keystore"), 0o750)
        // What was built is what is installed, and the example is the repository's.
        XCTAssertEqual(installed["usr/local/bin/keystored"]?.contents,
                       try Data(contentsOf: URL(fileURLWithPath: repo + "/.build/install-test/release/keystored")))
        XCTAssertEqual(installed["etc/keystore/cluster.json"]?.contents,
                       try Data(contentsOf: URL(fileURLWithPath: repo + "/deploy/cluster.production.json")))
        let unit = String(decoding: installed["usr/local/lib/systemd/system/keystored@.service"]!.contents, as: UTF8.self)
        XCTAssertTrue(unit.contains("ExecStart=/usr/local/bin/keystored --config /etc/keystore/cluster.json --node %i"), unit)

        // Running again changes nothing; the unedited example is recognised as such.
        let again = try install(into: root)
        XCTAssertTrue(again.contains("kept /etc/keystore/cluster.json (still the unedited example)"), again)
        XCTAssertEqual(try snapshot(root), installed)

        // An operator's config is kept; the new example goes beside it, and says so.
        let edited = Data("{ \"cluster\": \"mine\" }\n".utf8)
        try edited.write(to: URL(fileURLWithPath: root + "/etc/keystore/cluster.json"))
        let upgrade = try install(into: root)
        XCTAssertTrue(upgrade.contains("kept your /etc/keystore/cluster.json; installed the current example beside it as /etc/keystore/cluster.json.example"), upgrade)
        let afterUpgrade = try snapshot(root)
        XCTAssertEqual(afterUpgrade["etc/keystore/cluster.json"]?.contents, edited)
        XCTAssertEqual(afterUpgrade["etc/keystore/cluster.json.example"]?.contents, installed["etc/keystore/cluster.json"]?.contents)
        XCTAssertEqual(afterUpgrade["etc/keystore/cluster.json.example"]?.mode, 0o640)
        XCTAssertEqual(try snapshot(root).count, expected.count + 1)

        // Other directories: the unit and the tmpfiles.d entry follow them.
        let custom = stage.file("custom")
        let customOutput = try install(into: custom, ["--prefix", "/opt/keystore", "--sysconfdir", "/srv/conf"])
        XCTAssertTrue(customOutput.contains("installed /srv/conf/keystore/cluster.json"), customOutput)
        let customUnit = try String(contentsOfFile: custom + "/opt/keystore/lib/systemd/system/keystored@.service", encoding: .utf8)
        XCTAssertTrue(customUnit.contains("ExecStart=/opt/keystore/bin/keystored --config /srv/conf/keystore/cluster.json --node %i"), customUnit)
        XCTAssertTrue(customUnit.contains("ReadOnlyPaths=/srv/conf/keystore"), customUnit)
        XCTAssertTrue(customUnit.contains("file:///opt/keystore/share/doc/keystore/operations.md"), customUnit)
        let customTmpfiles = try String(contentsOfFile: custom + "/opt/keystore/lib/tmpfiles.d/keystore.conf", encoding: .utf8)
        XCTAssertTrue(customTmpfiles.contains("z     /srv/conf/keystore/cluster.json"), customTmpfiles)
        XCTAssertFalse(customUnit.contains("/usr/local") || customUnit.contains("/etc/keystore") || customTmpfiles.contains("/etc/keystore"))

        let help = try runCommand("/bin/bash", [repo + "/deploy/install.sh", "--help"])
        XCTAssertEqual(help.status, 0, help.output)
        XCTAssertTrue(help.output.contains("--prefix DIR"), help.output)
        let wrong = try runCommand("/bin/bash", [repo + "/deploy/install.sh", "--prefix", "relative/dir"], environment: ["DESTDIR": custom])
        XCTAssertNotEqual(wrong.status, 0)
        XCTAssertTrue(wrong.output.contains("'relative/dir' is not an absolute path"), wrong.output)
    }

    /// The staged tree on a host: systemd-sysusers makes the user and group, systemd-tmpfiles the
    /// directories, the unit passes `systemd-analyze verify`, and the installed keystored runs the
    /// installed example config unchanged as the keystore user with the unit's groups. Clients
    /// then need exactly what the example says: the socket group to connect, a rule to read.
    func testTheStagedServiceRunsTheProductionExampleAsTheKeystoreUser() throws {
        let stage = try ScratchDirectory(prefix: "ks-host")
        defer { stage.remove() }
        chmod(stage.path, 0o755)  // the keystore user and the client uid walk into it
        let root = stage.file("root")
        try install(into: root)

        // sysusers.d and tmpfiles.d applied to the staged root (users resolved from its /etc).
        try FileManager.default.createDirectory(atPath: root + "/etc", withIntermediateDirectories: true)
        for file in ["passwd", "group", "shadow", "gshadow"] where FileManager.default.fileExists(atPath: "/etc/" + file) {
            try FileManager.default.copyItem(atPath: "/etc/" + file, toPath: root + "/etc/" + file)
        }
        try SharedCertificates.run("/usr/bin/systemd-sysusers", ["--root=" + root, root + "/usr/local/lib/sysusers.d/keystore.conf"])
        let users = try accounts(root + "/etc/passwd"), groups = try accounts(root + "/etc/group")
        let keystoreUID = try XCTUnwrap(users["keystore"]?.id), keystoreGID = try XCTUnwrap(groups["keystore"]?.id)
        let clientsGID = try XCTUnwrap(groups["keystore-clients"]?.id)
        XCTAssertEqual(groups["keystore-clients"]?.members, ["keystore"], "keystored must be in the socket's group")
        try SharedCertificates.run("/usr/bin/systemd-tmpfiles", ["--root=" + root, "--create", root + "/usr/local/lib/tmpfiles.d/keystore.conf"])
        let layout: [(String, Int, UInt32, UInt32)] = [
            ("etc/keystore", 0o750, 0, keystoreGID),
            ("etc/keystore/certs", 0o750, 0, keystoreGID),
            ("etc/keystore/psk", 0o750, 0, keystoreGID),
            ("etc/keystore/cluster.json", 0o640, 0, keystoreGID),
            ("run/keystore", 0o750, keystoreUID, clientsGID),
            ("var/lib/keystore", 0o700, keystoreUID, keystoreGID),
        ]
        for (path, expectedMode, uid, gid) in layout {
            var info = stat()
            XCTAssertEqual(stat(root + "/" + path, &info), 0, path)
            XCTAssertEqual(Int(info.st_mode) & 0o7777, expectedMode, path)
            XCTAssertEqual([info.st_uid, info.st_gid], [uid, gid], path)
        }

        // Every directive of the installed unit is one systemd knows (warnings go to stderr).
        let unitCopy = stage.file("keystored@kv1.service")
        let unit = try String(contentsOfFile: root + "/usr/local/lib/systemd/system/keystored@.service", encoding: .utf8)
        try unit.replacingOccurrences(of: "/usr/local/bin/", with: root + "/usr/local/bin/").write(toFile: unitCopy, atomically: true, encoding: .utf8)
        let verify = try runCommand("/usr/bin/systemd-analyze", ["verify", "--man=no", unitCopy])
        XCTAssertEqual(verify.status, 0, verify.output)
        XCTAssertEqual(verify.output.trimmingCharacters(in: .whitespacesAndNewlines), "", "systemd-analyze verify complains")

        // What the operator adds (docs/operations.md "First start"): certificates and PSK files.
        let admin = stage.file("admin-certs")
        try SharedCertificates.run(repo + "/deploy/gen-certs.sh", [admin, "kv1", "kv2", "kv3"])
        XCTAssertFalse(FileManager.default.fileExists(atPath: admin + "/ca.key"), "the CA key is not among the files copied to nodes")
        let etc = root + "/etc/keystore"
        try SharedCertificates.run("/usr/bin/install", ["-o", "0", "-g", "\(keystoreGID)", "-m", "0644", admin + "/ca.pem", admin + "/kv1.pem", etc + "/certs/"])
        try SharedCertificates.run("/usr/bin/install", ["-o", "\(keystoreUID)", "-g", "\(keystoreGID)", "-m", "0600", admin + "/kv1.key", etc + "/certs/"])
        try stage.write("example.com.provision", "a-pre-shared-key\n")
        try SharedCertificates.run("/usr/bin/install", ["-o", "\(keystoreUID)", "-g", "\(keystoreGID)", "-m", "0600", stage.file("example.com.provision"), etc + "/psk/"])

        // The host as the unit sees it: the example's peer address kv1 = 10.0.0.11, /run and
        // /var/lib of its own with the tmpfiles.d directories, the staged users and groups.
        let node = try startIsolated(log: stage.file("kv1.log"), script: """
            ip=\(NamespaceNetwork.ipPath)
            $ip link set lo up
            $ip addr add 10.0.0.11/32 dev lo
            mount -t tmpfs -o mode=0755 tmpfs /run
            mount -t tmpfs -o mode=0755 tmpfs /var/lib
            mount --bind "$ROOT/etc/passwd" /etc/passwd
            mount --bind "$ROOT/etc/group" /etc/group
            systemd-tmpfiles --create --prefix=/run/keystore --prefix=/var/lib/keystore "$ROOT/usr/local/lib/tmpfiles.d/keystore.conf"
            # User=keystore, Group=keystore, SupplementaryGroups=keystore-clients
            exec setpriv --reuid=keystore --regid=keystore --init-groups \\
                "$ROOT/usr/local/bin/keystored" --config "$ROOT/etc/keystore/cluster.json" --node kv1
            """, environment: ["ROOT": root])
        defer { node.stop() }
        let inside = ["--target", "\(node.pid)", "--mount", "--net"]
        let socket = "/run/keystore/kv1.sock"
        // No peer answers (kv2, kv3 do not exist), so it starts alone after join_timeout_ms.
        waitUntil("kv1 is ready", timeout: 30) {
            guard node.isRunning else { return true }
            let health = try? runCommand("/usr/bin/nsenter", inside + ["curl", "-s", "--unix-socket", socket, "http://localhost/v1/health"])
            return health?.output.contains("\"ready\":true") == true
        }
        XCTAssertTrue(node.isRunning, node.log)

        var info = stat()
        XCTAssertEqual(stat("/proc/\(node.pid)/root" + socket, &info), 0)
        XCTAssertEqual([info.st_uid, info.st_gid], [keystoreUID, clientsGID], "the socket belongs to the keystore-clients group")
        XCTAssertEqual(Int(info.st_mode) & 0o777, 0o660)
        XCTAssertEqual(stat("/proc/\(node.pid)/root/var/lib/keystore/kv1/registry.sqlite3", &info), 0, "data_dir under StateDirectory")
        XCTAssertEqual(info.st_uid, keystoreUID)

        // The example's XMPP server (uid 110): in keystore-clients it reads example.com's keys,
        // and nothing its rule does not grant; outside the group it cannot even connect.
        func prosody(groups: String, _ arguments: [String]) throws -> CommandResult {
            try runCommand("/usr/bin/nsenter", inside + ["setpriv", "--reuid=110", "--regid=110", groups,
                                                         root + "/usr/local/bin/keystorectl", "--socket", socket] + arguments)
        }
        let member = "--groups=\(clientsGID)"
        let read = try prosody(groups: member, ["keys", "get", "example.com", "provision_pre_shared", "--raw"])
        XCTAssertEqual(read.status, 0, read.output)
        XCTAssertEqual(Data(base64Encoded: read.output.trimmingCharacters(in: .whitespacesAndNewlines)), Data("a-pre-shared-key".utf8))
        XCTAssertEqual(try prosody(groups: member, ["keys", "get", "example.org", "token_secret", "--raw"]).status, 0)
        let rotate = try prosody(groups: member, ["keys", "rotate", "example.com", "token_secret"])
        XCTAssertEqual(rotate.status, 1, rotate.output)
        XCTAssertTrue(rotate.output.contains("forbidden") || rotate.output.contains("not allowed"), rotate.output)
        let outsider = try prosody(groups: "--clear-groups", ["keys", "get", "example.com", "token_secret"])
        XCTAssertEqual(outsider.status, 3, "not in keystore-clients: cannot connect: \(outsider.output)")

        // The example's metrics listener, for Prometheus.
        let metrics = try runCommand("/usr/bin/nsenter", inside + ["curl", "-sS", "http://127.0.0.1:9470/metrics"])
        XCTAssertTrue(metrics.output.contains("keystore_ready 1"), metrics.output)
    }

    // MARK: development scripts

    /// local-cluster.sh with the example config, as shipped: members of the example's
    /// socket_group reach the sockets and get what their rules grant; `stop` returns only once
    /// every node has exited.
    func testLocalClusterExampleRulesWorkAndStopWaitsForTheNodes() throws {
        let scratch = try ScratchDirectory(prefix: "ks-local")
        defer { scratch.remove() }
        let root = scratch.path
        try copyScripts(to: root, ["local-cluster.sh", "common.sh", "gen-certs.sh"])
        try FileManager.default.copyItem(atPath: repo + "/cluster.example.json", toPath: root + "/cluster.example.json")
        // The sockets' directory gets a tmpfs of its own in the namespace; the mount point must exist.
        try FileManager.default.createDirectory(atPath: "/tmp/keystore-example", withIntermediateDirectories: true)
        let (groupFile, clientsGID) = try groupFileWithKeystoreClients(in: scratch)

        // Foundation's Process learns that a child exited when a socket it passes to the child
        // closes; the nodes local-cluster.sh leaves running would inherit and hold it. Close
        // every descriptor beyond stdio first, as a login shell would not have them either.
        let setup = """
            for fd in $(ls /proc/$$/fd); do [ "$fd" -le 2 ] || eval "exec $fd>&-"; done
            \(NamespaceNetwork.ipPath) link set lo up
            mount -t tmpfs -o mode=0755 tmpfs /tmp/keystore-example
            mount --bind "$GROUP_FILE" /etc/group
            """
        let start = try runCommand("/usr/bin/unshare", ["--mount", "--net", "--propagation", "private", "/bin/bash", "-euc",
                                                        setup + "\nexec \"$ROOT/deploy/local-cluster.sh\" start"],
                                   environment: ["ROOT": root, "GROUP_FILE": groupFile, "KEYSTORE_BIN_DIR": Products.directory.path])
        let pids = ["node1", "node2", "node3"].compactMap { try? String(contentsOfFile: "\(root)/run/\($0).pid", encoding: .utf8) }
            .compactMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        addTeardownBlock { for pid in pids where processAlive(pid) { kill(pid, SIGKILL) } }
        XCTAssertEqual(start.status, 0, start.output)
        XCTAssertEqual(pids.count, 3, start.output)
        guard start.status == 0, let first = pids.first else { return }
        XCTAssertTrue(start.output.contains("setpriv --reuid=1001 --regid=1001 --groups=\(clientsGID)"), "start shows how to try a client: \(start.output)")

        let inside = ["--target", "\(first)", "--mount", "--net"]
        func client(_ uid: Int, groups: String, _ arguments: [String]) throws -> CommandResult {
            try runCommand("/usr/bin/nsenter", inside + ["setpriv", "--reuid=\(uid)", "--regid=\(uid)", groups, Products.keystorectl,
                                                         "--socket", "/tmp/keystore-example/node1.sock"] + arguments)
        }
        let member = "--groups=\(clientsGID)"
        let own = try client(1001, groups: member, ["keys", "get", "first.com", "token_secret", "--raw"])
        XCTAssertEqual(own.status, 0, own.output)
        let other = try client(1001, groups: member, ["keys", "get", "second.com", "token_secret"])
        XCTAssertEqual(other.status, 1, other.output)
        XCTAssertEqual(try client(1002, groups: member, ["keys", "get", "second.com", "token_secret", "--raw"]).status, 0)
        XCTAssertEqual(try client(1002, groups: member, ["keys", "rotate", "second.com", "token_secret"]).status, 1)
        XCTAssertEqual(try client(1001, groups: "--clear-groups", ["keys", "get", "first.com", "token_secret"]).status, 3,
                       "outside the socket group a rule alone does not let uid 1001 connect")

        let stop = try runCommand("/usr/bin/nsenter", inside + [root + "/deploy/local-cluster.sh", "stop"])
        let stillRunning = pids.filter(processAlive)
        XCTAssertEqual(stop.status, 0, stop.output)
        XCTAssertTrue(stop.output.contains("stopped node1 node2 node3"), stop.output)
        XCTAssertEqual(stillRunning, [], "local-cluster.sh stop returned while nodes still ran")
        for node in ["node1", "node2", "node3"] {
            XCTAssertFalse(FileManager.default.fileExists(atPath: "\(root)/run/\(node).pid"), node)
            let log = (try? String(contentsOfFile: "\(root)/run/logs/\(node).log", encoding: .utf8)) ?? ""
            XCTAssertTrue(log.contains("stopped"), "\(node) shut down gracefully: \(log)")
        }
        let again = try runCommand("/bin/bash", [root + "/deploy/local-cluster.sh", "stop"])
        XCTAssertTrue(again.output.contains("no node was running"), again.output)
    }

    /// SwiftPM prints compiler errors on stdout: every script that builds must show them.
    func testScriptsThatBuildShowCompilerErrors() throws {
        let scratch = try ScratchDirectory(prefix: "ks-broken")
        defer { scratch.remove() }
        let root = scratch.path
        try scratch.write("Package.swift", """
            // swift-tools-version:6.0
            import PackageDescription
            let package = Package(name: "broken", targets: [
                .executableTarget(name: "keystored"), .executableTarget(name: "keystorectl")])
            """, mode: 0o644)
        try scratch.write("Sources/keystored/main.swift", "let port: Int = \"not a number\"\n", mode: 0o644)
        try scratch.write("Sources/keystorectl/main.swift", "print(\"ok\")\n", mode: 0o644)
        try scratch.write("cluster.example.json", "{}\n", mode: 0o644)
        try copyScripts(to: root, ["install.sh", "local-cluster.sh", "netns-cluster.sh", "common.sh", "gen-certs.sh"])

        let runs: [(String, [String], [String: String])] = [
            ("install.sh", [], ["DESTDIR": scratch.file("stage")]),
            ("local-cluster.sh", ["start"], [:]),
            ("netns-cluster.sh", ["start", "2"], [:]),
        ]
        for (script, arguments, environment) in runs {
            let result = try runCommand("/bin/bash", ["\(root)/deploy/\(script)"] + arguments, environment: environment)
            XCTAssertNotEqual(result.status, 0, script)
            XCTAssertTrue(result.output.contains("Sources/keystored/main.swift:1:"), "\(script) hides the compiler error: \(result.output)")
            XCTAssertTrue(result.output.contains("build failed"), "\(script) says what failed: \(result.output)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: scratch.file("stage")), "a failed build installs nothing")
        XCTAssertFalse(FileManager.default.fileExists(atPath: root + "/run/netns/node1.pid"), "no node started")
    }

    // MARK: Grafana dashboard

    /// Every metric the dashboard queries (panels and variables), with every label it matches or
    /// groups by, is one two real nodes export after a little traffic of every kind.
    func testDashboardQueriesOnlyMetricsTheNodesExport() throws {
        let dashboard = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: repo + "/deploy/grafana/keystore.json"))) as? [String: Any]
        let panels = try XCTUnwrap(dashboard?["panels"] as? [[String: Any]])
        var expressions: [(panel: String, expr: String)] = []
        var ids = Set<Int>()
        for panel in panels {
            let title = panel["title"] as? String ?? "?"
            XCTAssertTrue(ids.insert(panel["id"] as? Int ?? -1).inserted, "duplicate panel id: \(title)")
            XCTAssertNotNil(panel["gridPos"] as? [String: Any], title)
            if panel["type"] as? String == "row" { continue }
            let targets = try XCTUnwrap(panel["targets"] as? [[String: Any]], title)
            XCTAssertFalse(targets.isEmpty, title)
            for target in targets { expressions.append((title, try XCTUnwrap(target["expr"] as? String, title))) }
        }
        let variables = (dashboard?["templating"] as? [String: Any])?["list"] as? [[String: Any]] ?? []
        for variable in variables where variable["type"] as? String == "query" {
            expressions.append(("variable \(variable["name"] ?? "?")", try XCTUnwrap(variable["definition"] as? String)))
        }
        let wanted = ["keystore_members", "keystore_ready", "keystore_requests_total", "keystore_request_duration_seconds_bucket",
                      "keystore_join_duration_seconds_sum", "keystore_gossip_bytes_total", "keystore_gossip_messages_total",
                      "keystore_certificates", "keystore_event_subscribers", "keystore_secret_memory_locked_bytes", "keystore_keys"]
        let queried = Set(expressions.flatMap { PromQLReferences($0.expr).selectors.map(\.metric) })
        XCTAssertTrue(queried.isSuperset(of: wanted), "the dashboard lacks \(Set(wanted).subtracting(queried).sorted())")

        let cluster = try makeCluster(nodes: ["node1", "node2"])
        try cluster.startAll()
        cluster.waitForAgreement()
        let client = cluster.client("node1")
        _ = try client.health()
        _ = try client.listKeys(domain: "first.com")
        _ = try client.rotateKey(domain: "first.com", name: "token_secret")
        _ = try? client.getKey(domain: "first.com", name: "missing")
        _ = try client.clusterStatus()
        try client.eventLines(idleTimeoutSeconds: 5) { _ in false }

        var exported: [PrometheusSample] = []
        waitUntil("node1 exports every metric and label the dashboard queries") {
            exported = PrometheusSample.parse((try? KeystoreConnection(socketPath: cluster.socketPath("node1")).request("GET", "/metrics").bodyText) ?? "")
            return expressions.allSatisfy { PromQLReferences($0.expr).problems(against: exported).isEmpty }
        }
        for (panel, expr) in expressions {
            XCTAssertEqual(PromQLReferences(expr).problems(against: exported), [], "panel \"\(panel)\": \(expr)")
        }
    }

    // MARK: helpers

    @discardableResult
    private func install(into destdir: String, _ arguments: [String] = [], file: StaticString = #filePath, line: UInt = #line) throws -> String {
        let started = Date()
        let result = try runCommand("/bin/bash", [repo + "/deploy/install.sh", "--scratch-path", repo + "/.build/install-test"] + arguments,
                                    environment: ["DESTDIR": destdir])
        print("deploy/install.sh into \(destdir): exit \(result.status) after \(String(format: "%.1f", Date().timeIntervalSince(started))) s")
        guard result.status == 0 else {
            XCTFail("install.sh failed: \(result.output)", file: file, line: line)
            throw CocoaError(.executableLoad)
        }
        return result.output
    }

    private struct InstalledFile: Equatable { var mode: Int; var contents: Data }

    /// Every regular file under `root`, by relative path.
    private func snapshot(_ root: String) throws -> [String: InstalledFile] {
        var files: [String: InstalledFile] = [:]
        let enumerator = FileManager.default.enumerator(atPath: root)
        while let path = enumerator?.nextObject() as? String {
            var info = stat()
            guard lstat(root + "/" + path, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG else { continue }
            files[path] = InstalledFile(mode: Int(info.st_mode) & 0o7777, contents: try Data(contentsOf: URL(fileURLWithPath: root + "/" + path)))
        }
        return files
    }

    private func mode(_ path: String) throws -> Int {
        var info = stat()
        guard stat(path, &info) == 0 else { throw POSIXError(.ENOENT) }
        return Int(info.st_mode) & 0o7777
    }

    /// name → (id, members) from a passwd or group file.
    private func accounts(_ file: String) throws -> [String: (id: UInt32, members: [String])] {
        var result: [String: (id: UInt32, members: [String])] = [:]
        for line in try String(contentsOfFile: file, encoding: .utf8).split(separator: "\n") {
            let fields = line.split(separator: ":", omittingEmptySubsequences: false)
            guard fields.count >= 4, let id = UInt32(fields[2]) else { continue }
            result[String(fields[0])] = (id, fields[3].split(separator: ",").map(String.init))
        }
        return result
    }

    private func copyScripts(to root: String, _ names: [String]) throws {
        try FileManager.default.createDirectory(atPath: root + "/deploy", withIntermediateDirectories: true)
        for name in names { try FileManager.default.copyItem(atPath: repo + "/deploy/" + name, toPath: root + "/deploy/" + name) }
    }

    /// The host's /etc/group plus keystore-clients (if the host lacks it), to bind-mount over
    /// /etc/group in a namespace: local-cluster.sh then finds the group instead of creating it.
    private func groupFileWithKeystoreClients(in scratch: ScratchDirectory) throws -> (path: String, gid: UInt32) {
        var text = try String(contentsOfFile: "/etc/group", encoding: .utf8)
        let groups = try accounts("/etc/group")
        let gid: UInt32
        if let existing = groups["keystore-clients"] {
            gid = existing.id
        } else {
            let used = Set(groups.values.map(\.id))
            gid = (4200...4999).map(UInt32.init).first { !used.contains($0) }!
            if !text.hasSuffix("\n") { text += "\n" }
            text += "keystore-clients:x:\(gid):\n"
        }
        try scratch.write("group", text, mode: 0o644)
        return (scratch.file("group"), gid)
    }

    /// Starts `script` (bash) in new mount and network namespaces; its last command should `exec`
    /// the daemon, so the returned process is the daemon itself.
    private func startIsolated(log: String, script: String, environment: [String: String]) throws -> NodeProcess {
        _ = FileManager.default.createFile(atPath: log, contents: nil)
        let output = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/unshare")
        process.arguments = ["--mount", "--net", "--propagation", "private", "/bin/bash", "-euc", script]
        var env = ProcessInfo.processInfo.environment
        for (k, v) in environment { env[k] = v }
        process.environment = env
        process.standardOutput = output
        process.standardError = output
        try process.run()
        return NodeProcess(name: "isolated", socketPath: "", logPath: log, process: process)
    }
}

/// True while `pid` runs (a zombie has exited: it holds no socket or port any more).
private func processAlive(_ pid: Int32) -> Bool {
    guard kill(pid, 0) == 0 else { return false }
    let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
    return !status.contains("State:\tZ")
}

/// One sample line of the Prometheus text format.
struct PrometheusSample {
    var name: String
    var labels: [String: String]

    static func parse(_ text: String) -> [PrometheusSample] {
        text.split(separator: "\n").compactMap { line -> PrometheusSample? in
            guard !line.hasPrefix("#") else { return nil }
            var chars = Substring(line)
            let name = chars.prefix { $0.isLetter || $0.isNumber || $0 == "_" || $0 == ":" }
            guard !name.isEmpty else { return nil }
            chars = chars.dropFirst(name.count)
            var labels: [String: String] = [:]
            if chars.first == "{" {
                chars = chars.dropFirst()
                while let first = chars.first, first != "}" {
                    if first == "," || first == " " { chars = chars.dropFirst(); continue }
                    let label = chars.prefix { $0 != "=" }
                    chars = chars.dropFirst(label.count + 2)  // `="`
                    var value = ""
                    while let c = chars.first, c != "\"" {
                        if c == "\\", let next = chars.dropFirst().first { value.append(next == "n" ? "\n" : next); chars = chars.dropFirst(2) }
                        else { value.append(c); chars = chars.dropFirst() }
                    }
                    chars = chars.dropFirst()
                    labels[String(label)] = value
                }
            }
            return PrometheusSample(name: String(name), labels: labels)
        }
    }
}

/// The series a PromQL expression (or a Grafana `label_values(metric, label)` query) selects:
/// metric names with their label matchers, and the labels it aggregates by. Enough PromQL for
/// dashboards: strings, label matchers, range selectors, functions, `by`/`without` lists.
struct PromQLReferences {
    struct Selector { var metric: String; var matchers: [(label: String, op: String, value: String)] }
    var selectors: [Selector] = []
    var groupingLabels: [String] = []

    /// Labels Prometheus adds when scraping (or histograms carry), not the node.
    static let scrapeLabels: Set<String> = ["instance", "job"]
    static let keywords: Set<String> = ["by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"]
    /// Aggregations may put `by (...)` between their name and their parenthesis.
    static let aggregations: Set<String> = ["sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk",
                                            "quantile", "count_values", "group"]

    init(_ expression: String) {
        let s = Array(expression)
        var i = 0
        func skipSpaces() { while i < s.count, s[i].isWhitespace { i += 1 } }
        func identifier() -> String {
            let start = i
            while i < s.count, s[i].isLetter || s[i].isNumber || s[i] == "_" || s[i] == ":" { i += 1 }
            return String(s[start..<i])
        }
        func quoted() -> String {
            let quote = s[i]; i += 1
            var value = ""
            while i < s.count, s[i] != quote {
                if s[i] == "\\", i + 1 < s.count { i += 1 }
                value.append(s[i]); i += 1
            }
            i += 1
            return value
        }
        func labelList() -> [String] {  // `(a, b)`
            skipSpaces()
            guard i < s.count, s[i] == "(" else { return [] }
            i += 1
            var labels: [String] = []
            while i < s.count, s[i] != ")" {
                if s[i].isLetter || s[i] == "_" { labels.append(identifier()) } else { i += 1 }
            }
            i += 1
            return labels
        }
        while i < s.count {
            let c = s[i]
            if c == "\"" || c == "'" { _ = quoted(); continue }
            if c == "[" { while i < s.count, s[i] != "]" { i += 1 }; i += 1; continue }
            if c.isNumber { while i < s.count, s[i].isNumber || s[i] == "." || s[i] == "e" { i += 1 }; continue }
            if c == "{" {  // matchers of a selector without a name: none here
                while i < s.count, s[i] != "}" { if s[i] == "\"" { _ = quoted() } else { i += 1 } }
                i += 1; continue
            }
            guard c.isLetter || c == "_" || c == ":" else { i += 1; continue }
            let word = identifier()
            skipSpaces()
            if word == "by" || word == "without" || word == "on" || word == "ignoring" {
                groupingLabels += labelList(); continue
            }
            if Self.keywords.contains(word) || Self.aggregations.contains(word) { continue }
            if word == "label_values", i < s.count, s[i] == "(" {  // Grafana: label_values(metric, label)
                i += 1; skipSpaces()
                let metric = identifier()
                var matchers: [(label: String, op: String, value: String)] = []
                skipSpaces()
                if i < s.count, s[i] == "," { i += 1; skipSpaces(); matchers.append((identifier(), "has", "")) }
                selectors.append(Selector(metric: metric, matchers: matchers))
                continue
            }
            if i < s.count, s[i] == "(" { continue }  // a function or aggregation
            var selector = Selector(metric: word, matchers: [])
            if i < s.count, s[i] == "{" {
                i += 1
                while i < s.count, s[i] != "}" {
                    skipSpaces()
                    guard i < s.count, s[i].isLetter || s[i] == "_" else { i += 1; continue }
                    let label = identifier()
                    skipSpaces()
                    var op = ""
                    while i < s.count, "=!~".contains(s[i]) { op.append(s[i]); i += 1 }
                    skipSpaces()
                    let value = i < s.count && s[i] == "\"" ? quoted() : ""
                    selector.matchers.append((label, op, value))
                }
                i += 1
            }
            selectors.append(selector)
        }
    }

    /// What the expression asks for that `samples` lack: metric names, labels, and label values
    /// of `=` and `=~` matchers (a regex must match some value). Template variables ($…) and
    /// Prometheus' own labels are not the node's to provide.
    func problems(against samples: [PrometheusSample]) -> [String] {
        var problems: [String] = []
        var selected: [PrometheusSample] = []
        for selector in selectors {
            let series = samples.filter { $0.name == selector.metric }
            guard !series.isEmpty else { problems.append("no metric \(selector.metric)"); continue }
            selected += series
            for matcher in selector.matchers where !Self.scrapeLabels.contains(matcher.label) && !matcher.value.contains("$") {
                let values = series.compactMap { $0.labels[matcher.label] }
                guard !values.isEmpty else { problems.append("\(selector.metric) has no label \(matcher.label)"); continue }
                switch matcher.op {
                case "=":
                    if !values.contains(matcher.value) { problems.append("\(selector.metric){\(matcher.label)=\"\(matcher.value)\"} matches nothing; values: \(Set(values).sorted())") }
                case "=~":
                    let regex = try? NSRegularExpression(pattern: "^(?:\(matcher.value))$")
                    let matches = values.contains { v in regex?.firstMatch(in: v, range: NSRange(v.startIndex..., in: v)) != nil }
                    if !matches { problems.append("\(selector.metric){\(matcher.label)=~\"\(matcher.value)\"} matches nothing; values: \(Set(values).sorted())") }
                default: break  // negative matchers and `has` (label existence, checked above)
                }
            }
        }
        for label in groupingLabels where !Self.scrapeLabels.contains(label) {
            if !selected.contains(where: { $0.labels[label] != nil }) { problems.append("no selected series has label \(label) to group by") }
        }
        return problems
    }
}
