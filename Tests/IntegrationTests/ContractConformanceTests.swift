import Foundation
import KeystoreClient
import TestSupport
import XCTest

/// Every route of the contract, answered by a real node and decoded with the client's types:
/// the server and the client cannot drift apart unnoticed. The switch is exhaustive, so a new
/// route does not compile here until it is exercised.
final class ContractConformanceTests: ClusterTestCase {
    func testEveryRouteAnswersInTheShapeTheClientDecodes() throws {
        let cluster = try makeCluster(nodes: ["node1"])
        try cluster.startAll()
        let client = cluster.client("node1")
        let pem = try UserCertificates.make(jids: ["alice@first.com"], in: cluster.scratch.path, name: "phone")
        let other = try UserCertificates.make(jids: ["alice@first.com"], in: cluster.scratch.path, name: "tablet")
        var fingerprint = ""
        var token = ""
        var mac = ""
        // Ordered so that each route finds what it needs (a registration before its removal...).
        let order: [Endpoint] = [.health, .metrics, .cluster, .reload, .events, .listKeys, .getKey, .rotateKey, .signHMAC, .verifyHMAC,
                                 .addCert, .listCerts, .saslExternal, .certStatus, .disableCert, .revokeCert, .revokeAllCerts,
                                 .issueToken, .verifyToken, .revokeTokens]
        XCTAssertEqual(Set(order), Set(Endpoint.allCases), "every route is exercised")
        for endpoint in order {
            switch endpoint {
            case .health: XCTAssertTrue(try client.health().ready)
            case .metrics: XCTAssertTrue(try client.metrics().contains("keystore_ready 1"))
            case .cluster: XCTAssertEqual(try client.clusterStatus().members.first?.node, "node1")
            case .reload: XCTAssertTrue(try client.reload().reloaded)
            case .events:
                var first: Event?
                try client.events { event in first = event; return false }
                XCTAssertEqual(first?.eventType, .hello)
            case .listKeys: XCTAssertEqual(try client.listKeys(domain: "first.com").keys.count, 2)
            case .getKey: XCTAssertNotNil(try client.getKey(domain: "first.com", name: "token_secret").primary?.key)
            case .rotateKey: XCTAssertEqual(try client.rotateKey(domain: "first.com", name: "token_secret").versions.count, 2)
            case .signHMAC: mac = try client.signHMAC(domain: "first.com", name: "token_secret", input: [1, 2, 3]).mac
            case .verifyHMAC: XCTAssertTrue(try client.verifyHMAC(domain: "first.com", name: "token_secret", input: [1, 2, 3], mac: mac).valid)
            case .addCert:
                fingerprint = try client.addCert(domain: "first.com", user: "alice", name: "phone", certificate: pem).fingerprintSHA256
                _ = try client.addCert(domain: "first.com", user: "alice", name: "tablet", certificate: other)
            case .listCerts: XCTAssertEqual(try client.listCerts(domain: "first.com", user: "alice").certs.count, 2)
            case .saslExternal: XCTAssertEqual(try client.verifyCert(domain: "first.com", certificate: pem).jid, "alice@first.com")
            case .certStatus:
                let status = try client.certificateStatus(domain: "first.com", certs: [CertificateRef(user: "alice", fingerprintSHA256: fingerprint)])
                XCTAssertEqual(status.certs.map(\.state), [.active])
            case .disableCert: XCTAssertEqual(try client.disableCert(domain: "first.com", user: "alice", name: "phone").entry.state, .disabled)
            case .revokeCert: XCTAssertEqual(try client.revokeCert(domain: "first.com", user: "alice", name: "tablet").entry.state, .revoked)
            case .revokeAllCerts: XCTAssertEqual(try client.revokeAllCerts(domain: "first.com", user: "alice").certs.map(\.name), ["phone"])
            case .issueToken: token = try client.issueToken(domain: "first.com", type: .refresh, jid: "alice@first.com").token
            case .verifyToken: XCTAssertTrue(try client.verifyToken(domain: "first.com", token: token).valid)
            case .revokeTokens: XCTAssertEqual(try client.revokeTokens(domain: "first.com", user: "alice").sequence, 2)
            }
        }
    }
}
