import Foundation
import KeystoreClient
import TestSupport
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// Issue 5, peer security: a real two-member cluster (node1, node2; node3 configured but down)
/// whose node1 peer port is attacked with `openssl s_client`. After every attack the node must
/// have cut that connection off, must not list the attacker, and node1/node2 must still agree.
final class SecurityPeerTests: ClusterTestCase {
    private let members = ["node1", "node2"]

    /// Starts node1 and node2 of a three-node config and waits until they agree on a key.
    private func startVictims() throws -> (ClusterHarness, key: String) {
        let cluster = try makeCluster(nodes: ["node1", "node2", "node3"], joinTimeoutMillis: 1000)
        for node in members { try cluster.start(node, waitForSocket: false) }
        for node in members { cluster.waitReady(node) }
        let key = try XCTUnwrap(cluster.waitForAgreement())
        waitUntil("node1 and node2 see each other alive") { self.aliveMembers(cluster, "node1") == Set(members) && self.aliveMembers(cluster, "node2") == Set(members) }
        return (cluster, key)
    }

    private func aliveMembers(_ cluster: ClusterHarness, _ node: String) -> Set<String> {
        let status = try? cluster.client(node).clusterStatus()
        return Set((status?.members ?? []).filter { $0.state == .alive }.map(\.node))
    }

    /// The checks every attack must leave true: the victim logged `expected` for the attack,
    /// the attacker is not a member, both members are alive, agree and serve the old key.
    private func assertSurvived(_ cluster: ClusterHarness, key: String, logOffset: Int, expected: String, attacker: String,
                                result: PeerAttackResult, file: StaticString = #filePath, line: UInt = #line) throws {
        XCTAssertTrue(result.closedByNode, "\(attacker): node1 did not close the connection within 5 s: \(result.output)", file: file, line: line)
        let node1 = try XCTUnwrap(cluster.processes["node1"], file: file, line: line)
        waitUntil("node1 logged '\(expected)' for \(attacker)", timeout: 5, file: file, line: line) {
            String(node1.log.dropFirst(logOffset)).contains(expected)
        }
        for node in members {
            XCTAssertTrue(cluster.processes[node]?.isRunning == true, "\(node) died after \(attacker)", file: file, line: line)
            let status = try cluster.client(node).clusterStatus()
            XCTAssertEqual(Set(status.members.map(\.node)), ["node1", "node2", "node3"], "\(node) lists an unknown member after \(attacker)", file: file, line: line)
            XCTAssertNotEqual(status.members.first { $0.node == "node3" }?.state, .alive, "\(node) admitted \(attacker) as node3", file: file, line: line)
            XCTAssertEqual(try cluster.client(node).getKey(domain: "first.com", name: "token_secret").primary?.key, key,
                           "\(node) no longer serves the cluster key after \(attacker)", file: file, line: line)
        }
        XCTAssertEqual(aliveMembers(cluster, "node1"), Set(members), "node1 lost node2 after \(attacker)", file: file, line: line)
        XCTAssertEqual(aliveMembers(cluster, "node2"), Set(members), "node2 lost node1 after \(attacker)", file: file, line: line)
    }

    /// The node's peer link must still carry updates after the attacks, not only look alive.
    private func assertRotationStillSpreads(_ cluster: ClusterHarness, file: StaticString = #filePath, line: UInt = #line) throws {
        _ = try cluster.client("node2").rotateKey(domain: "first.com", name: "token_secret")
        let rotated = try XCTUnwrap(cluster.client("node2").getKey(domain: "first.com", name: "token_secret").primary?.key, file: file, line: line)
        waitUntil("node1 serves node2's rotation", timeout: 10, file: file, line: line) {
            (try? cluster.client("node1").getKey(domain: "first.com", name: "token_secret").primary?.key) == rotated
        }
    }

    func testPeersWithBadCertificatesOrOldTLSAreRefused() throws {
        let (cluster, key) = try startVictims()
        let certs = try SharedCertificates.directory()
        let ca = "\(certs)/ca.pem"
        let port = try XCTUnwrap(cluster.ports["node1"])
        let node1 = try XCTUnwrap(cluster.processes["node1"])

        // Certificates gen-certs.sh will not make: from the cluster CA, naming node3, but outside
        // their validity period.
        let authority = try TestCertificateAuthority(directory: cluster.scratch.file("testca"), caCertificate: ca, caKey: "\(certs)-ca/ca.key")
        let expired = try authority.issue("expired", dnsName: "node3", start: "20200101000000Z", end: "20210101000000Z")
        let future = try authority.issue("future", dnsName: "node3", start: "20400101000000Z", end: "20410101000000Z")
        // A second CA's node3 certificate: right name, wrong issuer.
        let rogue = cluster.scratch.file("rogue-ca")
        try SharedCertificates.run(Products.repositoryRoot.appendingPathComponent("deploy/gen-certs.sh").path, [rogue, "node3"])

        let hello3 = PeerFrames.hello(cluster: "test-cluster", node: "node3")
        struct Attack { var name: String; var cert: String?; var key: String?; var payload: [UInt8]; var args: [String] = []; var expected: String }
        let attacks = [
            Attack(name: "certificate-less peer", cert: nil, key: nil, payload: hello3, expected: "peer did not return a certificate"),
            Attack(name: "TLS 1.2 peer", cert: "\(certs)/node3.pem", key: "\(certs)/node3.key", payload: hello3,
                   args: ["-tls1_2"], expected: "unsupported protocol"),
            Attack(name: "expired certificate", cert: expired.certificate, key: expired.key, payload: hello3, expected: "certificate has expired"),
            Attack(name: "not-yet-valid certificate", cert: future.certificate, key: future.key, payload: hello3, expected: "certificate is not yet valid"),
            Attack(name: "certificate from another CA", cert: "\(rogue)/node3.pem", key: "\(rogue)/node3.key", payload: hello3,
                   expected: "peer certificate rejected"),
            // node4's certificate is from the cluster CA, but node4 is not in this cluster's config.
            Attack(name: "unconfigured node name", cert: "\(certs)/node4.pem", key: "\(certs)/node4.key",
                   payload: PeerFrames.hello(cluster: "test-cluster", node: "node4"), expected: "peer node4 is not listed in this node's config"),
            // A valid node4 certificate claiming to be node3, and node3's claiming to be node2 (a live member).
            Attack(name: "node4 claiming node3", cert: "\(certs)/node4.pem", key: "\(certs)/node4.key",
                   payload: PeerFrames.hello(cluster: "test-cluster", node: "node3"), expected: "peer claims to be node3 but its certificate names [\"node4\"]"),
            Attack(name: "node3 claiming node2", cert: "\(certs)/node3.pem", key: "\(certs)/node3.key",
                   payload: PeerFrames.hello(cluster: "test-cluster", node: "node2"), expected: "peer claims to be node2 but its certificate names [\"node3\"]"),
            Attack(name: "valid node3 from another cluster", cert: "\(certs)/node3.pem", key: "\(certs)/node3.key",
                   payload: PeerFrames.hello(cluster: "other-cluster", node: "node3"), expected: "belongs to cluster 'other-cluster'"),
        ]
        for attack in attacks {
            let offset = node1.log.count
            let result = try PeerAttack.run(port: port, certificate: attack.cert, key: attack.key, caFile: ca,
                                            payload: attack.payload, extraArguments: attack.args)
            print(String(format: "security: %@ closed after %.0f ms (s_client exit %d)", attack.name, result.seconds * 1000, result.exitStatus))
            try assertSurvived(cluster, key: key, logOffset: offset, expected: attack.expected, attacker: attack.name, result: result)
        }
        // The handshake failures were seen by s_client too (alerts), not just logged.
        try assertRotationStillSpreads(cluster)
    }

    func testAuthenticatedPeerSendingGarbageOrFloodingIsCutOffAlone() throws {
        let (cluster, key) = try startVictims()
        let certs = try SharedCertificates.directory()
        let ca = "\(certs)/ca.pem"
        let port = try XCTUnwrap(cluster.ports["node1"])
        let node1 = try XCTUnwrap(cluster.processes["node1"])
        // node3 is configured but not running: its real certificate completes TLS and gets as far
        // as the frame decoder, the strongest position a stolen-but-valid identity has.
        let cert = "\(certs)/node3.pem", tlsKey = "\(certs)/node3.key"

        var random = SystemRandomNumberGenerator()
        var noise = (0..<4096).map { _ in UInt8.random(in: 0...255, using: &random) }
        noise[0] = max(noise[0], 1) // a length prefix of at least 16 MiB: refused without waiting for more bytes
        let hello3 = PeerFrames.hello(cluster: "test-cluster", node: "node3")
        let attacks: [(String, [UInt8], String)] = [
            ("random bytes", noise, "exceeds the 4194304-byte limit"),
            ("length prefix 0xFFFFFFFF", [0xFF, 0xFF, 0xFF, 0xFF, 1, 1], "peer frame of 4294967295 bytes exceeds the 4194304-byte limit"),
            ("length prefix 1", [0, 0, 0, 1, 1], "peer frame of 1 bytes is too short"),
            ("frame with wire version 2", PeerFrames.hello(cluster: "test-cluster", node: "node3", version: 2), "peer speaks wire version 2"),
            ("frame of unknown type", PeerFrames.frame(type: 99, payload: [1, 2, 3]), "unknown peer message type 99"),
            ("truncated hello", PeerFrames.frame(type: 1, payload: [0, 200, 65]), "peer frame ends inside cluster name"),
            ("digest before hello", PeerFrames.digest(), "did not start with hello"),
            ("hello, then wrong version", hello3 + PeerFrames.frame(version: 7, type: 3, payload: [0]), "peer speaks wire version 7"),
            ("hello, then hostile list count", hello3 + PeerFrames.frame(type: 4, payload: PeerFrames.u64(1) + PeerFrames.u32(0) + PeerFrames.u32(0xFFFF_FFFF)),
             "peer frame ends inside bucket digests"),
        ]
        for (name, payload, expected) in attacks {
            let offset = node1.log.count
            let result = try PeerAttack.run(port: port, certificate: cert, key: tlsKey, caFile: ca, payload: payload)
            print(String(format: "security: node3 cert + %@: closed after %.0f ms", name, result.seconds * 1000))
            try assertSurvived(cluster, key: key, logOffset: offset, expected: expected, attacker: name, result: result)
        }

        // Flood: 8 authenticated connections at once, each pushing a 4 MiB frame (the largest
        // allowed, so the node must buffer all of it) with a bad version, while plain TCP
        // connections that never even start TLS sit open. Each flooder is cut off on its own.
        let offset = node1.log.count
        let silent = try (0..<50).map { _ in try connectTCP(port: port) }
        defer { for fd in silent { close(fd) } }
        let big = PeerFrames.frame(version: 9, type: 3, payload: [UInt8](repeating: 0xA5, count: (4 << 20) - 2))
        let results = LockedBox<[PeerAttackResult?]>([])
        let group = DispatchGroup()
        let floodMillis = measureMillis {
            for _ in 0..<8 {
                group.enter()
                Thread.detachNewThread {
                    let result = try? PeerAttack.run(port: port, certificate: cert, key: tlsKey, caFile: ca, payload: big, timeout: 20)
                    results.withLockedValue { $0.append(result) }
                    group.leave()
                }
            }
            // While the flood runs, the members keep serving and agreeing.
            XCTAssertEqual(try? cluster.client("node1").getKey(domain: "first.com", name: "token_secret").primary?.key, key)
            group.wait()
        }
        let floods = results.withLockedValue { $0 }
        print(String(format: "security: 8 x 4 MiB flood + 50 idle TCP connections: all cut off after %.0f ms", floodMillis))
        XCTAssertEqual(floods.count, 8)
        XCTAssertTrue(floods.allSatisfy { $0?.closedByNode == true }, "a flooder was not cut off: \(floods.map { $0?.output ?? "nil" })")
        waitUntil("node1 logged all 8 refused floods", timeout: 5) {
            String(node1.log.dropFirst(offset)).components(separatedBy: "peer speaks wire version 9").count - 1 >= 8
        }
        try assertSurvived(cluster, key: key, logOffset: offset, expected: "wire version 9", attacker: "flood",
                           result: PeerAttackResult(closedByNode: true, exitStatus: 0, output: "", seconds: 0))
        try assertRotationStillSpreads(cluster)
    }
}

/// A plain TCP connection to the loopback peer port that never speaks.
func connectTCP(port: Int) throws -> Int32 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = UInt16(port).bigEndian
    let result = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    guard result == 0 else { close(fd); throw POSIXError(.ECONNREFUSED) }
    return fd
}
