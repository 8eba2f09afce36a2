import Foundation
import KeystoreClient
import TestSupport
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// Real requests from other uids (via `setpriv`) against the per-domain ACL: the caller's
/// uid/gid come from SO_PEERCRED, so these are the credentials the kernel reports.
final class AccessControlTests: ClusterTestCase {
    private func keystorectl(as uid: Int, gid: Int, _ arguments: [String]) throws -> CommandResult {
        try runCommand("/usr/bin/setpriv", ["--reuid=\(uid)", "--regid=\(gid)", "--clear-groups", Products.keystorectl] + arguments)
    }

    func testCallersSeeOnlyTheDomainsAndOperationsTheACLGrants() throws {
        let clients: [[String: Any]] = [
            ["uid": 0, "domains": ["*"], "allow": ["*"]],
            ["uid": 65534, "domains": ["first.com"], "allow": ["keys:read"]],
            ["gid": 4242, "domains": ["second.com"], "allow": ["keys:read", "keys:rotate"]],
        ]
        let cluster = try makeCluster(nodes: ["node1"], clients: clients) { config in
            var nodes = config["nodes"] as! [String: Any]
            var node1 = nodes["node1"] as! [String: Any]
            node1["socket_mode"] = "0666" // everyone may connect; the ACL decides
            nodes["node1"] = node1
            config["nodes"] = nodes
        }
        chmod(cluster.scratch.path, 0o755)
        try cluster.start("node1")
        cluster.waitReady("node1")
        let socket = ["--socket", cluster.socketPath("node1")]

        // uid 65534: first.com keys:read only.
        let allowed = try keystorectl(as: 65534, gid: 65534, socket + ["keys", "get", "first.com", "token_secret", "--raw"])
        XCTAssertEqual(allowed.status, 0, allowed.output)
        let root = try cluster.client("node1").getKey(domain: "first.com", name: "token_secret").primary?.key
        XCTAssertEqual(allowed.output.trimmingCharacters(in: .whitespacesAndNewlines), root)

        for denied in [["keys", "get", "second.com", "token_secret"], ["keys", "list", "second.com"],
                       ["keys", "rotate", "first.com", "token_secret"], ["cluster", "status"], ["reload"]] {
            let result = try keystorectl(as: 65534, gid: 65534, socket + denied)
            XCTAssertEqual(result.status, 1, "\(denied): \(result.output)")
            XCTAssertTrue(result.output.contains("forbidden"), "\(denied): \(result.output)")
        }
        // Another domain's unknown key is forbidden too, not 404: nothing leaks about other domains.
        let probe = try keystorectl(as: 65534, gid: 65534, socket + ["keys", "get", "second.com", "no_such_key"])
        XCTAssertTrue(probe.output.contains("forbidden"), probe.output)

        // A gid rule: any uid whose primary gid is 4242 gets second.com read+rotate, nothing of first.com.
        let viaGroup = try keystorectl(as: 65533, gid: 4242, socket + ["keys", "rotate", "second.com", "token_secret"])
        XCTAssertEqual(viaGroup.status, 0, viaGroup.output)
        let groupDenied = try keystorectl(as: 65533, gid: 4242, socket + ["keys", "get", "first.com", "token_secret"])
        XCTAssertEqual(groupDenied.status, 1, groupDenied.output)
        XCTAssertTrue(groupDenied.output.contains("forbidden"), groupDenied.output)

        // No rule at all.
        let stranger = try keystorectl(as: 65533, gid: 65533, socket + ["keys", "get", "first.com", "token_secret"])
        XCTAssertEqual(stranger.status, 1, stranger.output)
        XCTAssertTrue(stranger.output.contains("uid 65533"), stranger.output)
        XCTAssertTrue(cluster.processes["node1"]!.log.contains("uid 65533 gid 65533 denied keys:read on first.com"))
    }

    func testTheDefaultSocketModeKeepsOtherUsersOut() throws {
        let cluster = try makeCluster(nodes: ["node1"], clients: [["uid": 65534, "domains": ["*"], "allow": ["*"]]])
        chmod(cluster.scratch.path, 0o755)
        try cluster.start("node1")
        cluster.waitReady("node1")
        // Allowed by the ACL, but the 0660 root:root socket does not let uid 65534 connect at all.
        let result = try keystorectl(as: 65534, gid: 65534, ["--socket", cluster.socketPath("node1"), "health"])
        XCTAssertEqual(result.status, 3, result.output)
        XCTAssertTrue(result.output.contains(cluster.socketPath("node1")), result.output)
    }
}

extension AccessControlTests {
    /// One local user holding many connections cannot lock others out: its connections beyond
    /// `maxConnectionsPerUID` (256) are closed, while another uid is still served.
    func testOneUIDCannotExhaustTheSocketForOthers() throws {
        let cluster = try makeCluster(nodes: ["node1"], clients: [["uid": 0, "domains": ["*"], "allow": ["*"]]]) { config in
            var nodes = config["nodes"] as! [String: Any]
            var node1 = nodes["node1"] as! [String: Any]
            node1["socket_mode"] = "0666"
            nodes["node1"] = node1
            config["nodes"] = nodes
        }
        chmod(cluster.scratch.path, 0o755)
        try cluster.start("node1")
        cluster.waitReady("node1")
        // uid 65534 opens 300 connections and reports how many the daemon kept open.
        let script = """
        import socket, sys, time
        held = []
        for _ in range(300):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(sys.argv[1])
            held.append(s)
        time.sleep(1.0)
        alive = 0
        for s in held:
            try:
                s.settimeout(2.0)
                s.sendall(b"GET /v1/health HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
                if s.recv(16).startswith(b"HTTP/1.1"):
                    alive += 1
            except OSError:
                pass
        print(alive)
        """
        let scriptPath = cluster.scratch.file("hog.py")
        try script.write(toFile: scriptPath, atomically: true, encoding: .utf8)
        chmod(scriptPath, 0o644)
        let hog = Process()
        hog.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
        hog.arguments = ["--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", scriptPath, cluster.socketPath("node1")]
        let pipe = Pipe()
        hog.standardOutput = pipe
        try hog.run()
        // While the hog holds its connections, root (another uid) is served.
        waitUntil("the hog's connections are open") { cluster.processes["node1"]!.log.contains("uid 65534 already holds 256 connections") }
        XCTAssertEqual(try cluster.client("node1").health().ready, true)
        hog.waitUntilExit()
        let served = Int(String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))
        XCTAssertEqual(served, 256, "exactly the per-uid cap of the hog's connections stay usable")
    }
}
