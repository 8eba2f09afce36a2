import Foundation
import KeystoreAPI
import KeystoreClient
import XCTest

/// The registry routes an XMPP server integration needs (certificate bytes in listings, the
/// full sasl-external answer, revoke-all, the batch status check) and resumable events, against
/// real nodes; every answer is decoded with the contract's types.
final class RegistryAPITests: ClusterTestCase {
    private func call<T: Decodable>(_ cluster: ClusterHarness, _ node: String, _ endpoint: Endpoint, _ parameters: RouteParameters,
                                    query: [(String, String)] = [], body: (some Encodable)? = Optional<String>.none, as type: T.Type,
                                    file: StaticString = #filePath, line: UInt = #line) throws -> T {
        let path = try endpoint.path(parameters, query: query)
        let bytes = try body.map { Array(try JSONEncoder().encode($0)) }
        let response = try KeystoreConnection(socketPath: cluster.socketPath(node), timeoutSeconds: 10)
            .request(endpoint.spec.method.rawValue, path, body: bytes, headers: [("Content-Type", "application/json")])
        guard (200..<300).contains(response.status) else {
            let error = try JSONDecoder().decode(APIErrorBody.self, from: Data(response.body))
            throw KeystoreClientError.api(status: response.status, code: error.error, message: error.message)
        }
        return try JSONDecoder().decode(T.self, from: Data(response.body))
    }

    private func status(_ body: () throws -> Void) -> Int? {
        do { try body() } catch KeystoreClientError.api(let status, _, _) { return status } catch { XCTFail("\(error)") }
        return nil
    }

    func testListingsCarryTheCertificateAndSASLExternalSaysWhichRegistrationMatched() throws {
        let cluster = try makeCluster(nodes: ["node1"])
        try cluster.startAll()
        let alice = RouteParameters(domain: "first.com", user: "alice")
        let phone = try UserCertificates.make(jids: ["alice@first.com"], in: cluster.scratch.path, name: "phone")
        let laptop = try UserCertificates.make(jids: ["alice@first.com/laptop"], in: cluster.scratch.path, name: "laptop")
        let added = try call(cluster, "node1", .addCert, alice, body: AddCertificateRequest(name: "phone", certificate: phone), as: CertificateEntry.self)
        _ = try call(cluster, "node1", .addCert, alice, body: AddCertificateRequest(name: "laptop", certificate: laptop, noCertManagement: true),
                     as: CertificateEntry.self)

        let list = try call(cluster, "node1", .listCerts, alice, as: CertificateListResponse.self)
        XCTAssertEqual(list.user, "alice@first.com")
        XCTAssertEqual(list.certs.map(\.name), ["phone", "laptop"])
        let der = try XCTUnwrap(list.certs.first?.certificate.flatMap { Data(base64Encoded: $0) })
        let pemBody = phone.split(separator: "\n").filter { !$0.hasPrefix("-----") }.joined()
        XCTAssertEqual(der, Data(base64Encoded: pemBody), "the listing carries the DER that was registered")

        let external = try call(cluster, "node1", .saslExternal, RouteParameters(domain: "first.com"),
                                body: SASLExternalRequest(certificate: phone), as: SASLExternalResponse.self)
        XCTAssertEqual(external.jid, "alice@first.com")
        XCTAssertEqual(external.name, "phone")
        XCTAssertEqual(external.fingerprintSHA256, added.fingerprintSHA256)
        XCTAssertFalse(external.noCertManagement)
        XCTAssertEqual(external.notAfter, added.notAfter)
        let full = try call(cluster, "node1", .saslExternal, RouteParameters(domain: "first.com"),
                            body: SASLExternalRequest(certificate: laptop), as: SASLExternalResponse.self)
        XCTAssertEqual(full.jid, "alice@first.com/laptop", "a full-JID certificate authenticates only its resource")
        XCTAssertTrue(full.noCertManagement)

        // Strict bodies: a number is not a boolean, a field may not repeat, unknown fields are refused.
        for bad in [#"{"name":"x","certificate":"y","no_cert_management":1}"#, #"{"name":"x","name":"z","certificate":"y"}"#,
                    #"{"name":"x","certificate":"y","no_cert_managment":true}"#] {
            let response = try KeystoreConnection(socketPath: cluster.socketPath("node1"))
                .request("POST", "/v1/domains/first.com/users/alice/certs", body: Array(bad.utf8))
            XCTAssertEqual(response.status, 400, bad)
        }
        // Query strings are parsed: `?recall=1` is not `?all=1`, and a user named "small=1" is a user.
        XCTAssertEqual(status { _ = try call(cluster, "node1", .listCerts, alice, query: [("recall", "1")], as: CertificateListResponse.self) }, 400)
        XCTAssertEqual(try call(cluster, "node1", .listCerts, RouteParameters(domain: "first.com", user: "small=1"),
                                as: CertificateListResponse.self).certs, [])
    }

    func testRevokeAllAndTheBatchStatusCheck() throws {
        let cluster = try makeCluster(nodes: ["node1", "node2"])
        try cluster.startAll()
        let alice = RouteParameters(domain: "first.com", user: "alice")
        let a = try UserCertificates.make(jids: ["alice@first.com"], in: cluster.scratch.path, name: "a")
        let b = try UserCertificates.make(jids: ["alice@first.com"], in: cluster.scratch.path, name: "b")
        let c = try UserCertificates.make(jids: ["alice@first.com"], in: cluster.scratch.path, name: "c")
        var fingerprints: [String: String] = [:]
        for (name, pem) in [("a", a), ("b", b), ("c", c)] {
            fingerprints[name] = try call(cluster, "node1", .addCert, alice, body: AddCertificateRequest(name: name, certificate: pem),
                                          as: CertificateEntry.self).fingerprintSHA256
        }
        let disabled = try call(cluster, "node1", .disableCert, RouteParameters(domain: "first.com", user: "alice", name: "a"),
                                as: CertificateRemovalResponse.self)
        XCTAssertEqual(disabled.entry.state, .disabled)
        XCTAssertEqual(disabled.certs.map(\.name), ["a"])

        let probe = CertificateStatusRequest(certs: [
            CertificateRef(user: "alice", fingerprintSHA256: fingerprints["a"]!),
            CertificateRef(user: "alice@first.com", fingerprintSHA256: fingerprints["b"]!),
            CertificateRef(user: "bob", fingerprintSHA256: fingerprints["c"]!),
        ])
        waitUntil("node2 sees the disable") {
            (try? self.call(cluster, "node2", .certStatus, RouteParameters(domain: "first.com"), body: probe, as: CertificateStatusResponse.self))?
                .certs.map(\.state) == [.disabled, .active, .unknown]
        }

        let revoked = try call(cluster, "node2", .revokeAllCerts, alice, as: CertificateListResponse.self)
        XCTAssertEqual(Set(revoked.certs.map(\.name)), ["a", "b", "c"], "revoke-all covers active and disabled certificates")
        XCTAssertTrue(revoked.certs.allSatisfy { $0.state == .revoked })
        waitUntil("node1 sees every certificate revoked") {
            (try? self.call(cluster, "node1", .certStatus, RouteParameters(domain: "first.com"), body: probe, as: CertificateStatusResponse.self))?
                .certs.map(\.state) == [.revoked, .revoked, .unknown]
        }
        XCTAssertEqual(try call(cluster, "node1", .listCerts, alice, as: CertificateListResponse.self).certs, [])
        let everything = try call(cluster, "node1", .listCerts, alice, query: [("all", "1")], as: CertificateListResponse.self)
        XCTAssertEqual(everything.certs.count, 3)
        XCTAssertTrue(everything.certs.allSatisfy { $0.certificate == nil }, "a revoked entry no longer carries the certificate")
        XCTAssertEqual(try call(cluster, "node1", .revokeAllCerts, alice, as: CertificateListResponse.self).certs, [], "nothing left to revoke")
    }

    func testAConsumerResumesFromItsCursorAndIsToldWhenItCannot() throws {
        let cluster = try makeCluster(nodes: ["node1"])
        try cluster.startAll()
        let client = cluster.client("node1")
        func read(since: String?, count: Int) throws -> [Event] {
            var events: [Event] = []
            let connection = try KeystoreConnection(socketPath: cluster.socketPath("node1"), timeoutSeconds: 10)
            let path = try Endpoint.events.path(query: since.map { [("since", $0)] } ?? [])
            try connection.streamLines(path) { line in
                events.append(try JSONDecoder().decode(Event.self, from: Data(line.utf8)))
                return events.count < count
            }
            return events
        }
        let first = try read(since: nil, count: 1)
        let cursor = try XCTUnwrap(first.first?.cursor)
        XCTAssertEqual(first.first?.eventType, .hello)
        // Missed while disconnected: two rotations.
        try client.rotateKey(domain: "first.com", name: "token_secret")
        try client.rotateKey(domain: "second.com", name: "token_secret")
        let resumed = try read(since: cursor, count: 3)
        XCTAssertEqual(resumed.map(\.type), ["hello", "key_rotated", "key_rotated"])
        XCTAssertEqual(resumed.dropFirst().map(\.domain), ["first.com", "second.com"])
        let last = try XCTUnwrap(resumed.last?.cursor)
        XCTAssertEqual(resumed.first?.cursor, last, "hello carries the cursor of the newest event")
        // Nothing missed since: the line after hello is live news, not a replay.
        try client.rotateKey(domain: "first.com", name: "token_secret")
        let caughtUp = try read(since: last, count: 2)
        XCTAssertEqual(caughtUp.map(\.type), ["hello", "key_rotated"])

        // After a restart the buffer is gone: the consumer is told plainly.
        cluster.processes["node1"]?.stop()
        try cluster.start("node1")
        cluster.waitReady("node1")
        let afterRestart = try read(since: last, count: 2)
        XCTAssertEqual(afterRestart.map(\.type), ["hello", "resync"])
        XCTAssertTrue(afterRestart.last?.reason?.contains("restarted") ?? false)
        let response = try KeystoreConnection(socketPath: cluster.socketPath("node1")).request("GET", "/v1/events?since=garbage")
        XCTAssertEqual(response.status, 400)
    }
}
