import Foundation
import KeystoreClient
import TestSupport
import XCTest

#if canImport(Glibc)
import Glibc
#endif

final class CertificateRegistryClusterTests: ClusterTestCase {
    let nodes = ["node1", "node2", "node3"]

    private func apiError(_ body: () throws -> Void) -> (Int, String, String)? {
        do { try body() } catch KeystoreClientError.api(let status, let code, let message) { return (status, code, message) } catch { XCTFail("\(error)") }
        return nil
    }

    func testRegisterVerifyEverywhereRevokeEverywhereAndEvents() throws {
        let cluster = try makeCluster(nodes: nodes)
        try cluster.startAll()
        let phone = try UserCertificates.make(jids: ["alice@first.com"], in: cluster.scratch.path, name: "phone")
        let info = try cluster.client("node1").addCert(domain: "first.com", user: "alice", name: "phone", certificate: phone)
        XCTAssertEqual(info.name, "phone")
        XCTAssertEqual(info.jids, ["alice@first.com"])

        for node in nodes {
            waitUntil("\(node) verifies the certificate registered on node1") {
                (try? cluster.client(node).verifyCert(domain: "first.com", certificate: phone).jid) == "alice@first.com"
            }
            XCTAssertEqual(try cluster.client(node).listCerts(domain: "first.com", user: "alice").certs.map(\.name), ["phone"])
        }
        // Another domain's client sees nothing of it, and the domain must match the JID.
        XCTAssertEqual(apiError { _ = try cluster.client("node2").verifyCert(domain: "second.com", certificate: phone) }?.0, 403)

        let events = EventCollector(socketPath: cluster.socketPath("node3"))
        defer { events.close() }
        waitUntil("stream ready") { !events.events(ofType: "hello").isEmpty }

        try cluster.client("node2").revokeCert(domain: "first.com", user: "alice", name: "phone")
        for node in nodes {
            waitUntil("\(node) refuses the revoked certificate") {
                guard let error = apiError({ _ = try cluster.client(node).verifyCert(domain: "first.com", certificate: phone) }) else { return false }
                return error.0 == 403
            }
            XCTAssertEqual(try cluster.client(node).listCerts(domain: "first.com", user: "alice").certs.count, 0)
        }
        waitUntil("node3 streams the revocation made on node2") {
            events.events(ofType: "cert_revoked").contains { $0["user"] as? String == "alice@first.com" && $0["name"] as? String == "phone" }
        }
        // A revoked certificate can never be registered again.
        let again = apiError { try cluster.client("node1").addCert(domain: "first.com", user: "alice", name: "phone2", certificate: phone) }
        XCTAssertEqual(again?.0, 409, "\(String(describing: again))")
    }

    func testAppendRulesAreEnforcedWithSpecificErrors() throws {
        let cluster = try makeCluster(nodes: ["node1"])
        try cluster.start("node1")
        cluster.waitReady("node1")
        let client = cluster.client("node1")
        let dir = cluster.scratch.path
        let alice = try UserCertificates.make(jids: ["alice@first.com"], in: dir, name: "a1")
        let alice2 = try UserCertificates.make(jids: ["alice@first.com/laptop"], in: dir, name: "a2")
        let bob = try UserCertificates.make(jids: ["bob@first.com"], in: dir, name: "b1")
        let two = try UserCertificates.make(jids: ["alice@first.com", "carol@first.com"], in: dir, name: "two")

        try client.addCert(domain: "first.com", user: "alice", name: "phone", certificate: alice)
        let sameName = apiError { try client.addCert(domain: "first.com", user: "alice", name: "phone", certificate: alice2) }
        XCTAssertEqual(sameName?.0, 409); XCTAssertEqual(sameName?.1, "conflict")
        let sameCert = apiError { try client.addCert(domain: "first.com", user: "alice", name: "other", certificate: alice) }
        XCTAssertEqual(sameCert?.0, 409)
        let wrongUser = apiError { try client.addCert(domain: "first.com", user: "alice", name: "bobs", certificate: bob) }
        XCTAssertEqual(wrongUser?.1, "invalid_certificate")
        XCTAssertTrue(wrongUser?.2.contains("alice@first.com") ?? false, "\(String(describing: wrongUser))")
        let garbage = apiError { try client.addCert(domain: "first.com", user: "alice", name: "junk", certificate: "not a certificate") }
        XCTAssertEqual(garbage?.0, 422); XCTAssertEqual(garbage?.1, "invalid_certificate")

        // A full-JID certificate authorizes only its resource.
        try client.addCert(domain: "first.com", user: "alice", name: "laptop", certificate: alice2, noCertManagement: true)
        XCTAssertEqual(try client.verifyCert(domain: "first.com", certificate: alice2).jid, "alice@first.com/laptop")
        XCTAssertEqual(try client.verifyCert(domain: "first.com", certificate: alice2, authzid: "alice@first.com/laptop").jid, "alice@first.com/laptop")
        XCTAssertEqual(apiError { _ = try client.verifyCert(domain: "first.com", certificate: alice2, authzid: "alice@first.com/phone") }?.0, 403)
        XCTAssertEqual(apiError { _ = try client.verifyCert(domain: "first.com", certificate: alice2, authzid: "alice@first.com") }?.0, 403)
        XCTAssertEqual(try client.listCerts(domain: "first.com", user: "alice").certs.first { $0.name == "laptop" }?.noCertManagement, true)

        // Two JIDs: no authzid is ambiguous; with one, it must be registered for that user.
        try client.addCert(domain: "first.com", user: "alice", name: "shared", certificate: two)
        XCTAssertEqual(apiError { _ = try client.verifyCert(domain: "first.com", certificate: two) }?.0, 403)
        XCTAssertEqual(try client.verifyCert(domain: "first.com", certificate: two, authzid: "alice@first.com").jid, "alice@first.com")
        XCTAssertEqual(apiError { _ = try client.verifyCert(domain: "first.com", certificate: two, authzid: "carol@first.com") }?.0, 403,
                       "registered for alice only")
        // An unregistered certificate.
        XCTAssertEqual(apiError { _ = try client.verifyCert(domain: "first.com", certificate: bob) }?.0, 403)
        // Disable removes it from use too.
        try client.disableCert(domain: "first.com", user: "alice", name: "phone")
        XCTAssertEqual(apiError { _ = try client.verifyCert(domain: "first.com", certificate: alice) }?.0, 403)
        XCTAssertEqual(apiError { try client.disableCert(domain: "first.com", user: "alice", name: "phone") }?.0, 404)
    }

    func testRevokeWhileANodeIsDownStaysRevokedAfterItsRestart() throws {
        let cluster = try makeCluster(nodes: nodes)
        try cluster.startAll()
        let cert = try UserCertificates.make(jids: ["dave@first.com"], in: cluster.scratch.path, name: "dave")
        try cluster.client("node1").addCert(domain: "first.com", user: "dave", name: "tablet", certificate: cert)
        waitUntil("node3 has the registration") {
            (try? cluster.client("node3").verifyCert(domain: "first.com", certificate: cert).jid) == "dave@first.com"
        }
        // Replicated records are persisted asynchronously on the receiving node; wait until
        // node3's own database holds the live record, so the restart really starts stale.
        let database = cluster.scratch.file("data/node3/registry.sqlite3")
        waitUntil("node3's database holds the registration") {
            let count = try? SharedCertificates.run("/usr/bin/sqlite3", [database, "SELECT count(*) FROM certificates WHERE removal_kind IS NULL"])
            return count?.trimmingCharacters(in: .whitespacesAndNewlines) == "1"
        }
        cluster.processes["node3"]!.kill9()
        try cluster.client("node2").revokeCert(domain: "first.com", user: "dave", name: "tablet")
        try cluster.start("node3")
        cluster.waitReady("node3")
        let error = apiError { _ = try cluster.client("node3").verifyCert(domain: "first.com", certificate: cert) }
        XCTAssertEqual(error?.0, 403, "node3's database still had the live record; the cluster's tombstone must win")
        XCTAssertTrue(cluster.processes["node3"]!.log.contains("loaded 1 certificate records"), cluster.processes["node3"]!.log)
        // The join wrote the tombstone with SQLite's automatic checkpoints paused; after ready
        // node3 moved its WAL (the kill -9 left one) into the database file and truncated it, so
        // the file itself now holds the tombstone.
        waitUntil("node3 checkpointed its WAL after the join") {
            ((try? FileManager.default.attributesOfItem(atPath: database + "-wal"))?[.size] as? Int) == 0
        }
        XCTAssertEqual(try SharedCertificates.run("/usr/bin/sqlite3", [database, "SELECT count(*) FROM certificates WHERE removal_kind IS NOT NULL"])
                        .trimmingCharacters(in: .whitespacesAndNewlines), "1")
        // node3 said what it kept; a ready peer sent the keys and only the bucket with the
        // revoked record (every other bucket is empty on both sides).
        let answered = ["node1", "node2"].map { cluster.processes[$0]!.log }.joined()
        XCTAssertTrue(answered.contains("node3 asks for the cluster state holding registry records from its database: sending every RAM key and 1 of 1024 registry buckets"),
                      answered)
        // Ready means equal to the cluster: anti-entropy then finds nothing to repair (node3's
        // key declarations are the ones the cluster already held, not fresh copies that made
        // every bucket differ and had the whole state exchanged again after each restart).
        let digestsBefore = cluster.gossipMessages("node3", direction: "in", type: "digest")
        waitUntil("node3 took part in a few anti-entropy rounds") {
            cluster.gossipMessages("node3", direction: "in", type: "digest") >= digestsBefore + 4
        }
        for direction in ["in", "out"] {
            XCTAssertEqual(cluster.gossipMessages("node3", direction: direction, type: "bucket_digests"), 0, "digests differed (\(direction))")
            XCTAssertEqual(cluster.gossipMessages("node3", direction: direction, type: "delta_repair"), 0, "a repair (\(direction))")
        }
    }

    func testRegistrationsSurviveAFullClusterRestart() throws {
        let cluster = try makeCluster(nodes: nodes)
        try cluster.startAll()
        let keep = try UserCertificates.make(jids: ["erin@first.com"], in: cluster.scratch.path, name: "keep")
        let gone = try UserCertificates.make(jids: ["erin@first.com/old"], in: cluster.scratch.path, name: "gone")
        try cluster.client("node1").addCert(domain: "first.com", user: "erin", name: "keep", certificate: keep)
        try cluster.client("node2").addCert(domain: "first.com", user: "erin", name: "gone", certificate: gone)
        waitUntil("node3 learned both registrations") {
            ((try? cluster.client("node3").listCerts(domain: "first.com", user: "erin").certs.count) ?? 0) == 2
        }
        try cluster.client("node3").revokeCert(domain: "first.com", user: "erin", name: "gone")
        let key = cluster.waitForAgreement()
        waitUntil("every node has the revocation before the cluster stops") {
            nodes.allSatisfy { ((try? cluster.client($0).listCerts(domain: "first.com", user: "erin").certs.count) ?? 0) == 1 }
        }
        for node in nodes { cluster.processes[node]!.stop() }
        try cluster.startAll()
        for node in nodes {
            XCTAssertEqual(try cluster.client(node).verifyCert(domain: "first.com", certificate: keep).jid, "erin@first.com")
            XCTAssertEqual(apiError { _ = try cluster.client(node).verifyCert(domain: "first.com", certificate: gone) }?.0, 403)
        }
        XCTAssertNotEqual(cluster.waitForAgreement(), key, "RAM keys never reach the database: a full restart makes new ones")
    }
}
