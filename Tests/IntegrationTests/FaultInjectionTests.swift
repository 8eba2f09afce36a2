import Foundation
import KeystoreClient
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// Faults real clusters meet. Each test is bounded (seconds); `KEYSTORE_SOAK=1` repeats the
/// rolling-restart and freeze cycles many times for an on-demand soak.
final class FaultInjectionTests: ClusterTestCase {
    var soakRounds: Int { ProcessInfo.processInfo.environment["KEYSTORE_SOAK"] == "1" ? 10 : 1 }

    /// Keep-alive GET load against some nodes on background threads.
    final class Load: @unchecked Sendable {
        private let lock = NSLock()
        private var stop = false
        private(set) var requests = 0
        private(set) var failures: [String] = []
        private(set) var keys: Set<String> = []
        private let group = DispatchGroup()

        init(sockets: [String], threadsPerSocket: Int = 2) {
            for socket in sockets {
                for _ in 0..<threadsPerSocket {
                    group.enter()
                    Thread.detachNewThread { [self] in
                        defer { group.leave() }
                        var connection = try? KeystoreConnection(socketPath: socket, timeoutSeconds: 5)
                        while !isStopped {
                            do {
                                if connection == nil { connection = try KeystoreConnection(socketPath: socket, timeoutSeconds: 5) }
                                let response = try connection!.request("GET", "/v1/domains/first.com/keys/token_secret")
                                let json = try JSONSerialization.jsonObject(with: Data(response.body)) as? [String: Any]
                                let primary = (json?["versions"] as? [[String: Any]])?.first { $0["primary"] as? Bool == true }?["key"] as? String
                                record(status: response.status, key: primary, socket: socket)
                            } catch {
                                record(error: "\(socket): \(error)")
                                connection = nil
                            }
                        }
                    }
                }
            }
        }

        private var isStopped: Bool { lock.lock(); defer { lock.unlock() }; return stop }

        private func record(status: Int, key: String?, socket: String) {
            lock.lock(); defer { lock.unlock() }
            requests += 1
            if status != 200 || key == nil { failures.append("\(socket): HTTP \(status)") }
            if let key { keys.insert(key) }
        }

        private func record(error: String) {
            lock.lock(); defer { lock.unlock() }
            requests += 1
            failures.append(error)
        }

        func finish() -> (requests: Int, failures: [String], keys: Set<String>) {
            lock.lock(); stop = true; lock.unlock()
            group.wait()
            lock.lock(); defer { lock.unlock() }
            return (requests, failures, keys)
        }
    }

    func testRollingRestartUnderLoadFailsNoRequestOnTheOtherNodesAndKeepsTheKey() throws {
        let nodes = ["node1", "node2", "node3"]
        let cluster = try makeCluster(nodes: nodes)
        try cluster.startAll()
        let key = try XCTUnwrap(cluster.waitForAgreement())
        for round in 0..<soakRounds {
            for node in nodes {
                let others = nodes.filter { $0 != node }
                let load = Load(sockets: others.map(cluster.socketPath))
                if round % 2 == 0 { cluster.processes[node]!.stop() } else { cluster.processes[node]!.kill9() }
                try cluster.start(node)
                cluster.waitReady(node)
                let result = load.finish()
                print("fault: restarting \(node) (round \(round)) under \(result.requests) requests to \(others): \(result.failures.count) failures")
                XCTAssertEqual(result.failures, [], "requests to the nodes that stayed up must not fail")
                XCTAssertGreaterThan(result.requests, 0)
                XCTAssertEqual(result.keys, [key], "the RAM key never changes during a rolling restart")
                XCTAssertEqual(try cluster.client(node).getKey(domain: "first.com", name: "token_secret").primary?.key, key)
            }
        }
    }

    func testKillDashNineDuringRegistrationsLosesNoAcknowledgedRegistration() throws {
        let cluster = try makeCluster(nodes: ["node1"])
        try cluster.start("node1")
        cluster.waitReady("node1")
        let certificates = try (0..<30).map { i in
            try UserCertificates.make(jids: ["user\(i)@first.com"], in: cluster.scratch.path, name: "u\(i)")
        }
        let socket = cluster.socketPath("node1")
        final class Acknowledged: @unchecked Sendable {
            let lock = NSLock()
            var indices: [Int] = []
            var snapshot: [Int] { lock.withLock { indices } }
            func add(_ i: Int) { lock.withLock { indices.append(i) } }
        }
        let acknowledged = Acknowledged()
        let done = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            let client = KeystoreClient(socketPath: socket, timeoutSeconds: 5)
            for (i, pem) in certificates.enumerated() {
                do {
                    try client.addCert(domain: "first.com", user: "user\(i)", name: "device", certificate: pem)
                    acknowledged.add(i)
                } catch {
                    break
                }
            }
            done.signal()
        }
        waitUntil("some registrations are acknowledged") { acknowledged.snapshot.count >= 8 }
        cluster.processes["node1"]!.kill9()
        done.wait()
        let acked = acknowledged.snapshot
        XCTAssertLessThan(acked.count, certificates.count, "the kill must land mid-stream for this test to mean anything")
        try cluster.start("node1")
        cluster.waitReady("node1")
        for i in acked {
            XCTAssertEqual(try cluster.client("node1").verifyCert(domain: "first.com", certificate: certificates[i]).jid, "user\(i)@first.com",
                           "acknowledged registration \(i) lost")
        }
        print("fault: kill -9 after \(acked.count) acknowledged registrations: all present after restart")
    }

    func testAFrozenNodeIsSuspectedAndRejoinsWithoutFalseDeaths() throws {
        let nodes = ["node1", "node2", "node3", "node4"]
        let cluster = try makeCluster(nodes: nodes)
        try cluster.startAll()
        let key = try XCTUnwrap(cluster.waitForAgreement())
        waitUntil("everyone sees four alive members") {
            nodes.allSatisfy { ((try? cluster.client($0).clusterStatus().members.filter { $0.state == .alive }.count) ?? 0) == 4 }
        }
        let events = EventCollector(socketPath: cluster.socketPath("node1"))
        defer { events.close() }
        waitUntil("stream ready") { !events.events(ofType: "hello").isEmpty }
        for round in 0..<soakRounds {
            cluster.processes["node2"]!.signal(SIGSTOP)
            waitUntil("node1 suspects the frozen node2 (round \(round))", timeout: 15) {
                let state = try? cluster.client("node1").clusterStatus().members.first { $0.node == "node2" }?.state
                return state == .suspect || state == .dead
            }
            cluster.processes["node2"]!.signal(SIGCONT)
            waitUntil("node2 is alive again everywhere (round \(round))", timeout: 20) {
                ["node1", "node3", "node4"].allSatisfy {
                    (try? cluster.client($0).clusterStatus().members.first { $0.node == "node2" }?.state) == .alive
                }
            }
        }
        let falseDeaths = events.events(ofType: "member").filter {
            ($0["member"] as? String) != "node2" && (($0["state"] as? String) == "dead" || ($0["state"] as? String) == "suspect")
        }
        XCTAssertEqual(falseDeaths.count, 0, "only the frozen node may be suspected: \(falseDeaths)")
        XCTAssertEqual(cluster.waitForAgreement(), key)
    }

    func testPartitionWithRotationsAndRevocationsOnBothSidesHealsAndNothingRevokedComesBack() throws {
        guard NamespaceNetwork.available else { throw XCTSkip("needs root and iproute2 for network namespaces") }
        let nodes = ["node1", "node2", "node3"]
        let network = try NamespaceNetwork(nodes: nodes, subnet: Int(getpid() % 200) + 1)
        defer { network.destroy() }
        let cluster = try makeCluster(nodes: nodes, peerAddresses: Dictionary(uniqueKeysWithValues: nodes.map { ($0, "\(network.addresses[$0]!):7400") }))
        for node in nodes { cluster.launchPrefix[node] = network.prefix(node) }
        try cluster.startAll()
        let original = try XCTUnwrap(cluster.waitForAgreement())
        let dir = cluster.scratch.path
        let c1 = try UserCertificates.make(jids: ["p1@first.com"], in: dir, name: "p1")
        let c2 = try UserCertificates.make(jids: ["p2@first.com"], in: dir, name: "p2")
        let c3 = try UserCertificates.make(jids: ["p3@first.com"], in: dir, name: "p3")
        try cluster.client("node1").addCert(domain: "first.com", user: "p1", name: "d", certificate: c1)
        try cluster.client("node1").addCert(domain: "first.com", user: "p2", name: "d", certificate: c2)
        waitUntil("registrations everywhere") {
            nodes.allSatisfy { (try? cluster.client($0).verifyCert(domain: "first.com", certificate: c2).jid) == "p2@first.com" }
        }

        try network.partition(["node1"])
        waitUntil("both sides notice the partition", timeout: 20) {
            let fromA = try? cluster.client("node1").clusterStatus().members.first { $0.node == "node2" }?.state
            let fromB = try? cluster.client("node2").clusterStatus().members.first { $0.node == "node1" }?.state
            return fromA != .alive && fromB != .alive
        }
        // Both sides keep serving the original key...
        XCTAssertEqual(cluster.primaries().values.filter { $0 == original }.count, 3)
        // ...and change things independently.
        _ = try cluster.client("node1").rotateKey(domain: "first.com", name: "token_secret")
        _ = try cluster.client("node2").rotateKey(domain: "first.com", name: "token_secret")
        try cluster.client("node1").revokeCert(domain: "first.com", user: "p1", name: "d")
        try cluster.client("node3").revokeCert(domain: "first.com", user: "p2", name: "d")
        try cluster.client("node2").addCert(domain: "first.com", user: "p3", name: "d", certificate: c3)
        XCTAssertEqual(try cluster.client("node1").verifyCert(domain: "first.com", certificate: c2).jid, "p2@first.com",
                       "node1 cannot know yet about the other side's revocation")

        try network.heal()
        let healed = try XCTUnwrap(cluster.waitForAgreement(timeout: 30))
        XCTAssertNotEqual(healed, original)
        waitUntil("every node holds the same three versions") {
            let lists = nodes.map { (try? cluster.client($0).getKey(domain: "first.com", name: "token_secret").versions.map(\.id)) ?? [] }
            return lists.allSatisfy { $0.count == 3 } && Set(lists.map { $0.joined(separator: ",") }).count == 1
        }
        for node in nodes {
            waitUntil("\(node) converged on the registry") {
                let c1Refused = (try? cluster.client(node).verifyCert(domain: "first.com", certificate: c1)) == nil
                let c2Refused = (try? cluster.client(node).verifyCert(domain: "first.com", certificate: c2)) == nil
                let c3Accepted = (try? cluster.client(node).verifyCert(domain: "first.com", certificate: c3).jid) == "p3@first.com"
                return c1Refused && c2Refused && c3Accepted
            }
        }
    }
}

extension NSLock {
    func withLock<T>(_ body: () throws -> T) rethrows -> T {
        lock(); defer { unlock() }
        return try body()
    }
}
