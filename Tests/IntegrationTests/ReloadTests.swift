import Foundation
import KeystoreAPI
import KeystoreClient
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// Live reconfiguration (`POST /v1/reload`, SIGHUP): what a multi-tenant host does every day,
/// on a running cluster, with no restart and no RAM key lost.
final class ReloadTests: ClusterTestCase {
    private func reload(_ cluster: ClusterHarness, _ node: String) throws -> ReloadResponse {
        let response = try KeystoreConnection(socketPath: cluster.socketPath(node)).request("POST", "/v1/reload")
        guard response.status == 200 else {
            let error = try JSONDecoder().decode(APIErrorBody.self, from: Data(response.body))
            throw KeystoreClientError.api(status: response.status, code: error.error, message: error.message)
        }
        return try JSONDecoder().decode(ReloadResponse.self, from: Data(response.body))
    }

    private func refusal(_ cluster: ClusterHarness, _ node: String) -> String {
        do {
            _ = try reload(cluster, node)
            return "accepted"
        } catch KeystoreClientError.api(let status, let code, let message) {
            return "\(status) \(code): \(message)"
        } catch {
            return "\(error)"
        }
    }

    private func rewrite(_ cluster: ClusterHarness, _ change: (inout [String: Any]) -> Void) throws {
        var config = cluster.config
        change(&config)
        _ = try cluster.writeConfig("cluster.json", config)
    }

    private func keyVersionsHeld(_ cluster: ClusterHarness, _ node: String) throws -> Int {
        let text = try KeystoreConnection(socketPath: cluster.socketPath(node)).request("GET", "/metrics").bodyText
        let line = text.split(separator: "\n").first { $0.hasPrefix("keystore_key_versions ") }
        return line.flatMap { Int(Double($0.split(separator: " ").last ?? "") ?? -1) } ?? -1
    }

    private func keystorectl(as uid: Int, _ arguments: [String]) throws -> CommandResult {
        try runCommand("/usr/bin/setpriv", ["--reuid=\(uid)", "--regid=\(uid)", "--clear-groups", Products.keystorectl] + arguments)
    }

    func testADomainItsKeyAndAnACLRuleComeAndGoWithoutARestartAndTheRAMKeysStay() throws {
        let nodes = ["node1", "node2", "node3"]
        let cluster = try makeCluster(nodes: nodes, clients: [["uid": 0, "domains": ["*"], "allow": ["*"]]]) { config in
            var entries = config["nodes"] as! [String: Any]
            for node in entries.keys {
                var entry = entries[node] as! [String: Any]
                entry["socket_mode"] = "0666" // everyone may connect; the ACL decides
                entries[node] = entry
            }
            config["nodes"] = entries
        }
        chmod(cluster.scratch.path, 0o755)
        try cluster.startAll()
        let original = try XCTUnwrap(cluster.waitForAgreement())
        let pids = nodes.map { cluster.processes[$0]!.process.processIdentifier }
        let held = try keyVersionsHeld(cluster, "node1")

        let socket1 = ["--socket", cluster.socketPath("node1")]
        XCTAssertTrue(try keystorectl(as: 65534, socket1 + ["keys", "get", "third.org", "token_secret", "--raw"]).output.contains("forbidden"))

        // The operator edits the shared config: a new tenant with a RAM key and an ACL rule.
        try rewrite(cluster) { config in
            var domains = config["domains"] as! [String: Any]
            domains["third.org"] = ["keys": [["name": "token_secret", "type": "ram"]]]
            config["domains"] = domains
            config["clients"] = [["uid": 0, "domains": ["*"], "allow": ["*"]],
                                 ["uid": 65534, "domains": ["third.org"], "allow": ["keys:read"]]]
        }
        // Nodes reload one after the other, seconds apart, as a rolling edit does.
        let first = try reload(cluster, "node1")
        XCTAssertEqual(first.config, ["domain third.org added", "key third.org/token_secret added (ram)", "clients (ACL rules) changed"])
        let tenantKey = try XCTUnwrap(cluster.client("node1").getKey(domain: "third.org", name: "token_secret").primary?.key)
        waitUntil("node2 holds the new key before its own reload") { (try? self.keyVersionsHeld(cluster, "node2")) == held + 1 }
        // Mixed config versions do not fight: node2 keeps node1's key without serving it, and
        // anti-entropy between them settles (no repair loop).
        XCTAssertThrowsError(try cluster.client("node2").getKey(domain: "third.org", name: "token_secret"))
        waitUntil("node2 and node1 are in sync") {
            ((try? cluster.client("node2").clusterStatus())?.members.first { $0.node == "node1" }?.sync) == .inSync
        }
        for node in ["node2", "node3"] {
            XCTAssertEqual(try reload(cluster, node).config.first, "domain third.org added")
            XCTAssertEqual(try cluster.client(node).getKey(domain: "third.org", name: "token_secret").primary?.key, tenantKey,
                           "\(node) adopts the cluster's key instead of generating a second one")
            XCTAssertEqual(try cluster.client(node).getKey(domain: "third.org", name: "token_secret").versions.count, 1)
        }
        let allowed = try keystorectl(as: 65534, socket1 + ["keys", "get", "third.org", "token_secret", "--raw"])
        XCTAssertEqual(allowed.output.trimmingCharacters(in: .whitespacesAndNewlines), tenantKey, allowed.output)
        XCTAssertTrue(try keystorectl(as: 65534, socket1 + ["keys", "get", "first.com", "token_secret"]).output.contains("forbidden"))

        // And the tenant leaves again.
        try rewrite(cluster) { config in
            var domains = config["domains"] as! [String: Any]
            domains["third.org"] = nil
            config["domains"] = domains
            config["clients"] = [["uid": 0, "domains": ["*"], "allow": ["*"]]]
        }
        for node in ["node1", "node2"] {
            XCTAssertEqual(try reload(cluster, node).config, ["domain third.org removed", "key third.org/token_secret removed", "clients (ACL rules) changed"])
            XCTAssertThrowsError(try cluster.client(node).getKey(domain: "third.org", name: "token_secret"), "\(node) stops serving it")
        }
        XCTAssertEqual(try keyVersionsHeld(cluster, "node1"), held + 1, "node3 still declares the key: its value is kept")
        _ = try reload(cluster, "node3")
        for node in nodes {
            waitUntil("\(node) zeroed the removed tenant's key") { (try? self.keyVersionsHeld(cluster, node)) == held }
        }
        XCTAssertTrue(try keystorectl(as: 65534, socket1 + ["keys", "get", "third.org", "token_secret"]).output.contains("forbidden"))

        XCTAssertEqual(cluster.waitForAgreement(), original, "the existing RAM keys never changed")
        XCTAssertEqual(nodes.map { cluster.processes[$0]!.process.processIdentifier }, pids, "no node restarted")
        XCTAssertTrue(nodes.allSatisfy { cluster.processes[$0]!.isRunning })
    }

    func testABrokenConfigIsRefusedAsAWholeAndWhatNeedsARestartIsNamed() throws {
        let cluster = try makeCluster(nodes: ["node1"])
        try cluster.startAll()
        let good = cluster.config

        // A new domain plus a typo: nothing of it is applied.
        try rewrite(cluster) { config in
            var domains = config["domains"] as! [String: Any]
            domains["third.org"] = ["keys": [["name": "token_secret", "type": "ram", "paht": "x"]]]
            config["domains"] = domains
        }
        let typo = refusal(cluster, "node1")
        XCTAssertTrue(typo.hasPrefix("409 conflict: reload refused"), typo)
        XCTAssertTrue(typo.contains("domains[\"third.org\"].keys[0].paht"), typo)
        XCTAssertThrowsError(try cluster.client("node1").getKey(domain: "third.org", name: "token_secret"))

        // What the running process is bound to needs a restart, and the message says so.
        _ = try cluster.writeConfig("cluster.json", good)
        try rewrite(cluster) { config in
            var entries = config["nodes"] as! [String: Any]
            var node1 = entries["node1"] as! [String: Any]
            node1["socket"] = cluster.scratch.file("elsewhere.sock")
            entries["node1"] = node1
            config["nodes"] = entries
            config["cluster"] = "another-cluster"
        }
        let restart = refusal(cluster, "node1")
        XCTAssertTrue(restart.contains("need a restart") && restart.contains("nodes.node1.socket") && restart.contains("cluster:"), restart)

        // Back to the good config: accepted, nothing to change.
        _ = try cluster.writeConfig("cluster.json", good)
        XCTAssertEqual(try reload(cluster, "node1").config, [])
    }

    func testSIGHUPAppliesTheConfigAndTheLogLevelFollowsIt() throws {
        let cluster = try makeCluster(nodes: ["node1"])
        let process = try cluster.start("node1", logLevel: nil)
        cluster.waitReady("node1")
        _ = try cluster.client("node1").health()
        XCTAssertFalse(process.log.contains("GET /v1/health -> 200"), "info level: no access log")

        try rewrite(cluster) { config in
            config["log_level"] = "debug"
            var domains = config["domains"] as! [String: Any]
            domains["third.org"] = ["keys": [["name": "token_secret", "type": "ram"]]]
            config["domains"] = domains
        }
        process.signal(SIGHUP)
        waitUntil("SIGHUP added the domain") { (try? cluster.client("node1").getKey(domain: "third.org", name: "token_secret")) != nil }
        _ = try cluster.client("node1").health()
        waitUntil("the access log appears at debug level") { process.log.contains("GET /v1/health -> 200") }
    }
}
