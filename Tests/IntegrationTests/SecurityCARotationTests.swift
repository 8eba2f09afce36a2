import Foundation
import KeystoreClient
import XCTest

/// SECURITY.md's CA rotation relies on one property: a node's `tls.ca` file may hold several CA
/// certificates (OpenSSL loads every certificate in the PEM), so during a rotation nodes with
/// old-CA and new-CA certificates trust each other. This proves the mixed middle step.
final class SecurityCARotationTests: ClusterTestCase {
    func testNodesTrustingACABundleJoinAcrossOldAndNewCA() throws {
        let cluster = try makeCluster(nodes: ["node1", "node2"], joinTimeoutMillis: 1000)
        let genCerts = Products.repositoryRoot.appendingPathComponent("deploy/gen-certs.sh").path
        let old = cluster.scratch.file("old-ca"), new = cluster.scratch.file("new-ca"), mixed = cluster.scratch.file("mixed")
        try SharedCertificates.run(genCerts, [old, "node1", "node2"])
        try SharedCertificates.run(genCerts, [new, "node1", "node2"])
        let oldCA = try String(contentsOfFile: "\(old)/ca.pem", encoding: .utf8)
        let newCA = try String(contentsOfFile: "\(new)/ca.pem", encoding: .utf8)
        XCTAssertNotEqual(oldCA, newCA, "two distinct CAs")
        try FileManager.default.createDirectory(atPath: mixed, withIntermediateDirectories: true)
        try (oldCA + newCA).write(toFile: "\(mixed)/ca.pem", atomically: false, encoding: .utf8)
        // node1 still has its old-CA certificate, node2 was already re-issued from the new CA.
        for (node, source) in [("node1", old), ("node2", new)] {
            for ext in ["pem", "key"] {
                try FileManager.default.copyItem(atPath: "\(source)/\(node).\(ext)", toPath: "\(mixed)/\(node).\(ext)")
            }
        }
        var config = cluster.config
        config["tls"] = ["ca": "\(mixed)/ca.pem", "cert": "\(mixed)/{node}.pem", "key": "\(mixed)/{node}.key"]
        let configPath = try cluster.writeConfig("rotation.json", config)
        for node in ["node1", "node2"] { try cluster.start(node, config: configPath, waitForSocket: false) }
        for node in ["node1", "node2"] { cluster.waitReady(node) }
        let key = cluster.waitForAgreement()
        XCTAssertNotNil(key)
        waitUntil("both nodes see each other alive across the two CAs") {
            ["node1", "node2"].allSatisfy { node in
                let members = (try? cluster.client(node).clusterStatus().members) ?? []
                return members.filter { $0.state == .alive }.count == 2
            }
        }
    }
}
