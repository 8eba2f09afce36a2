import Foundation
import KeystoreClient
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// Real keystored clusters on loopback with real certificates (DESIGN.md "RAM keys", "Cluster").
final class ClusterTests: ClusterTestCase {
    let three = ["node1", "node2", "node3"]

    func testThreeNodesAgreeOnEveryRAMKey() throws {
        let cluster = try makeCluster(nodes: three)
        try cluster.startAll()
        let first = try XCTUnwrap(cluster.waitForAgreement("first.com", "token_secret"))
        let second = try XCTUnwrap(cluster.waitForAgreement("second.com", "token_secret"))
        XCTAssertNotEqual(first, second)
        XCTAssertEqual(Data(base64Encoded: first)?.count, 2048)
        XCTAssertEqual(Data(base64Encoded: second)?.count, 64)
        // Exactly one version: concurrent start-up versions must not linger as primaries.
        waitUntil("every node holds the same version set") {
            let ids = three.map { (try? cluster.client($0).getKey(domain: "first.com", name: "token_secret").versions.map(\.id)) ?? [] }
            return Set(ids.map { $0.joined(separator: ",") }).count == 1
        }
        let status = try cluster.client("node1").clusterStatus()
        waitUntil("node1 sees all three members alive") {
            ((try? cluster.client("node1").clusterStatus().members.filter { $0.state == .alive }.count) ?? 0) == 3
        }
        XCTAssertEqual(Set(status.members.map(\.node)), Set(three))
    }

    func testKillingTheGeneratorAndRestartingItKeepsTheKey() throws {
        let cluster = try makeCluster(nodes: three)
        try cluster.startAll()
        let key = try XCTUnwrap(cluster.waitForAgreement())
        let origin = try XCTUnwrap(cluster.client("node1").getKey(domain: "first.com", name: "token_secret").primary?.id.split(separator: ".").last.map(String.init))
        XCTAssertTrue(three.contains(origin), origin)
        cluster.processes[origin]!.kill9()
        try cluster.start(origin)
        cluster.waitReady(origin)
        XCTAssertEqual(try cluster.client(origin).getKey(domain: "first.com", name: "token_secret").primary?.key, key,
                       "a node restarting while peers live must adopt the cluster's key")
        XCTAssertEqual(cluster.waitForAgreement(), key)
        // The line follows `ready` (the daemon logs it after becoming ready): wait for it.
        waitUntil("\(origin) logs that it adopted the cluster's keys") { cluster.processes[origin]!.log.contains("adopted the cluster's keys") }
    }

    func testRollingRestartOfEveryNodeKeepsTheKeyAndStoppingAllMakesANewOne() throws {
        let cluster = try makeCluster(nodes: three)
        try cluster.startAll()
        let key = try XCTUnwrap(cluster.waitForAgreement())
        for round in 0..<2 {
            for node in three {
                if round == 0 { cluster.processes[node]!.stop() } else { cluster.processes[node]!.kill9() }
                try cluster.start(node)
                cluster.waitReady(node)
                XCTAssertEqual(try cluster.client(node).getKey(domain: "first.com", name: "token_secret").primary?.key, key, "after restarting \(node)")
            }
        }
        XCTAssertEqual(cluster.waitForAgreement(), key)

        for node in three { cluster.processes[node]!.stop() }
        try cluster.startAll()
        let fresh = try XCTUnwrap(cluster.waitForAgreement())
        XCTAssertNotEqual(fresh, key, "when the whole cluster is gone, the key is gone")
    }

    func testFiveNodesStartedAtOnceConvergeToOnePrimary() throws {
        let five = (1...5).map { "node\($0)" }
        let cluster = try makeCluster(nodes: five)
        try cluster.startAll()
        let key = try XCTUnwrap(cluster.waitForAgreement())
        // Every node ranks the versions the same way: same ids, same primary, in the same order.
        waitUntil("all five nodes list identical versions") {
            let lists = five.map { (try? cluster.client($0).getKey(domain: "first.com", name: "token_secret").versions.map { "\($0.id):\($0.primary)" }) ?? [] }
            return Set(lists.map { $0.joined(separator: ",") }).count == 1
        }
        XCTAssertEqual(cluster.primaries().values.filter { $0 == key }.count, 5)
    }

    func testARotationOnOneNodeIsServedByAll() throws {
        let cluster = try makeCluster(nodes: three)
        try cluster.startAll()
        let old = try XCTUnwrap(cluster.waitForAgreement())
        let rotated = try cluster.client("node2").rotateKey(domain: "first.com", name: "token_secret")
        let newID = try XCTUnwrap(rotated.versions.first { $0.primary }?.id)
        waitUntil("every node serves the rotated primary") {
            three.allSatisfy { (try? cluster.client($0).getKey(domain: "first.com", name: "token_secret").primary?.id) == newID }
        }
        let fresh = try XCTUnwrap(cluster.waitForAgreement())
        XCTAssertNotEqual(fresh, old)
        for node in three {
            let versions = try cluster.client(node).getKey(domain: "first.com", name: "token_secret").versions
            XCTAssertEqual(versions.count, 2, "\(node) keeps the previous primary active for the grace period")
            XCTAssertEqual(versions.last?.key, old)
        }
    }

    func testRAMKeysAreNotReadyUntilTheJoinDecisionButFileKeysAre() throws {
        let cluster = try makeCluster(nodes: three, joinTimeoutMillis: 4000)
        let node = try cluster.start("node1")
        // Peers are configured but down: the node waits join_timeout_ms before bootstrapping.
        XCTAssertThrowsError(try node.client.getKey(domain: "first.com", name: "token_secret")) { error in
            guard case KeystoreClientError.api(let status, let code, _) = error else { return XCTFail("\(error)") }
            XCTAssertEqual(status, 503)
            XCTAssertEqual(code, "not_ready")
        }
        XCTAssertEqual(try node.client.health().ready, false)
        XCTAssertNotNil(try node.client.getKey(domain: "first.com", name: "provision_pre_shared").primary?.key)
        cluster.waitReady("node1", timeout: 15)
        XCTAssertNotNil(try node.client.getKey(domain: "first.com", name: "token_secret").primary?.key)
        XCTAssertTrue(node.log.contains("bootstrapped alone"), node.log)
    }

    func testANodeWithACertificateFromAnotherCANeverJoinsNorGetsAKey() throws {
        let four = three + ["node4"]
        let cluster = try makeCluster(nodes: four)
        for node in three { try cluster.start(node, waitForSocket: false) }
        for node in three { cluster.waitReady(node) }
        let key = try XCTUnwrap(cluster.waitForAgreement())

        let rogueCerts = cluster.scratch.file("rogue-certs")
        try SharedCertificates.run(Products.repositoryRoot.appendingPathComponent("deploy/gen-certs.sh").path, [rogueCerts, "node4"])
        var config = cluster.config
        config["tls"] = ["ca": "\(rogueCerts)/ca.pem", "cert": "\(rogueCerts)/{node}.pem", "key": "\(rogueCerts)/{node}.key"]
        let rogueConfig = try cluster.writeConfig("rogue.json", config)
        let rogue = try cluster.start("node4", config: rogueConfig)
        cluster.waitReady("node4", timeout: 15)
        let rogueKey = try rogue.client.getKey(domain: "first.com", name: "token_secret").primary?.key
        XCTAssertNotEqual(rogueKey, key, "the rogue node must never receive the cluster's key")
        XCTAssertTrue(rogue.log.contains("bootstrapped alone"), rogue.log)
        // The members refused it, and it never shows as alive.
        waitUntil("a member logged the refused handshake") {
            three.contains { cluster.processes[$0]!.log.contains("failed") && cluster.processes[$0]!.log.contains("certificate") }
        }
        for node in three {
            let members = try cluster.client(node).clusterStatus().members
            XCTAssertNotEqual(members.first { $0.node == "node4" }?.state, .alive, "\(node): \(members)")
            XCTAssertEqual(try cluster.client(node).getKey(domain: "first.com", name: "token_secret").primary?.key, key)
        }
    }

    func testAPSKThatDiffersOnOneNodeIsReported() throws {
        let domains: [String: Any] = ["first.com": ["keys": [
            ["name": "token_secret", "type": "ram"],
            ["name": "provision_pre_shared", "type": "file", "path": "psk/{node}/first"]]]]
        let cluster = try makeCluster(nodes: three, domains: domains)
        try cluster.scratch.write("psk/node1/first", "same-secret\n")
        try cluster.scratch.write("psk/node2/first", "  same-secret")
        try cluster.scratch.write("psk/node3/first", "different-secret")
        try cluster.startAll()
        waitUntil("health reports the mismatch as degraded") {
            (try? cluster.client("node1").health().status) == .degraded
        }
        waitUntil("node2 reports it too, with every node's fingerprint") {
            (try? cluster.client("node2").clusterStatus().pskMismatches.first?.fingerprints.count) == 3
        }
        let status = try cluster.client("node2").send(.cluster())
        let json = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(status.body)) as? [String: Any])
        let mismatches = try XCTUnwrap(json["psk_mismatches"] as? [[String: Any]])
        XCTAssertEqual(mismatches.count, 1)
        if let first = mismatches.first {
            XCTAssertEqual(first["domain"] as? String, "first.com")
            XCTAssertEqual(first["name"] as? String, "provision_pre_shared")
            XCTAssertEqual(Set((first["fingerprints"] as? [String: Any])?.keys.map { $0 } ?? []), Set(three))
        }
        // Fingerprints, never the PSK, cross the wire: the local PSK stays node-local.
        let node3Key = try cluster.client("node3").getKey(domain: "first.com", name: "provision_pre_shared").primary?.key
        XCTAssertEqual(node3Key.flatMap { Data(base64Encoded: $0) }, Data("different-secret".utf8))

        // Fix the file and reload: the mismatch clears.
        try cluster.scratch.write("psk/node3/first", "same-secret")
        _ = try cluster.client("node3").reload()
        waitUntil("the mismatch clears after the fix") {
            (try? cluster.client("node1").health().status) == .ok
        }
    }
}
