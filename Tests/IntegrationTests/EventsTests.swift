import Foundation
import KeystoreClient
import XCTest

/// Collects `/v1/events` lines on a background thread.
final class EventCollector: @unchecked Sendable {
    private let lock = NSLock()
    private var collected: [String] = []
    private var finished = false
    private var stop = false

    init(socketPath: String) {
        Thread.detachNewThread { [self] in
            let client = KeystoreClient(socketPath: socketPath, timeoutSeconds: 5)
            try? client.eventLines(idleTimeoutSeconds: 60) { line in
                self.lock.lock(); defer { self.lock.unlock() }
                self.collected.append(line)
                return !self.stop
            }
            self.lock.lock(); self.finished = true; self.lock.unlock()
        }
    }

    var lines: [String] { lock.lock(); defer { lock.unlock() }; return collected }
    var isFinished: Bool { lock.lock(); defer { lock.unlock() }; return finished }
    func close() { lock.lock(); stop = true; lock.unlock() }

    func events(ofType type: String) -> [[String: Any]] {
        lines.compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
            .filter { $0["type"] as? String == type }
    }
}

final class EventsTests: ClusterTestCase {
    func testRotationsAndMembershipChangesReachStreamsOnOtherNodes() throws {
        let nodes = ["node1", "node2", "node3"]
        let cluster = try makeCluster(nodes: nodes)
        try cluster.startAll()
        cluster.waitForAgreement()
        let collector = EventCollector(socketPath: cluster.socketPath("node3"))
        defer { collector.close() }
        waitUntil("the stream says hello") { !collector.events(ofType: "hello").isEmpty }

        let rotated = try cluster.client("node1").rotateKey(domain: "first.com", name: "token_secret")
        let primary = try XCTUnwrap(rotated.versions.first { $0.primary }?.id)
        waitUntil("node3 streams the rotation made on node1") {
            collector.events(ofType: "key_rotated").contains { $0["primary"] as? String == primary && $0["domain"] as? String == "first.com" }
        }

        cluster.processes["node2"]!.kill9()
        waitUntil("node3 streams node2's failure", timeout: 30) {
            collector.events(ofType: "member").contains { $0["member"] as? String == "node2" && ($0["state"] as? String == "suspect" || $0["state"] as? String == "dead") }
        }
    }

    func testDomainRestrictedConsumersSeeOnlyTheirDomains() throws {
        let cluster = try makeCluster(nodes: ["node1"], clients: [
            ["uid": 0, "domains": ["*"], "allow": ["*"]],
        ])
        try cluster.start("node1")
        cluster.waitReady("node1")
        // The daemon's own uid sees everything; a domain-scoped view is covered by the router's ACL
        // unit tests. Here: events for both domains arrive, in order, each once.
        let collector = EventCollector(socketPath: cluster.socketPath("node1"))
        defer { collector.close() }
        waitUntil("hello") { !collector.events(ofType: "hello").isEmpty }
        _ = try cluster.client("node1").rotateKey(domain: "first.com", name: "token_secret")
        _ = try cluster.client("node1").rotateKey(domain: "second.com", name: "token_secret")
        waitUntil("both rotations arrive") { collector.events(ofType: "key_rotated").count == 2 }
        let domains = collector.events(ofType: "key_rotated").map { $0["domain"] as? String }
        XCTAssertEqual(domains, ["first.com", "second.com"])
        let seqs = collector.events(ofType: "key_rotated").compactMap { $0["seq"] as? Int }
        XCTAssertEqual(seqs, seqs.sorted())
    }
}

extension EventsTests {
    /// A consumer that stops reading is cut off with a final `overflow` event once its backlog
    /// passes the limit, instead of growing the daemon's memory; others are unaffected.
    func testAConsumerThatFallsBehindIsCutOffWithAFinalEvent() throws {
        // Many small keys: rotating round-robin keeps each key's version list short, so the
        // loop is cheap and the events (not the rotations) are what piles up.
        let keys = (0..<32).map { ["name": "k\($0)", "type": "ram"] }
        let cluster = try makeCluster(nodes: ["node1"], domains: ["second.com": ["ram_key_size": 16, "keys": keys]])
        let node = try cluster.start("node1", arguments: ["--events-max-backlog", "16384"])
        cluster.waitReady("node1")
        let stuck = try connectUnix(node.socketPath)
        defer { close(stuck) }
        var small: Int32 = 4096
        setsockopt(stuck, SOL_SOCKET, SO_RCVBUF, &small, socklen_t(MemoryLayout<Int32>.size))
        _ = "GET /v1/events HTTP/1.1\r\nHost: x\r\n\r\n".withCString { write(stuck, $0, strlen($0)) }
        let healthy = EventCollector(socketPath: node.socketPath)
        defer { healthy.close() }
        waitUntil("the healthy consumer is subscribed") { !healthy.events(ofType: "hello").isEmpty }

        // Rotations produce events faster than the stuck consumer (which reads nothing) drains.
        let connection = try KeystoreConnection(socketPath: node.socketPath)
        var rotations = 0
        while rotations < 5000 {
            _ = try connection.request("POST", "/v1/domains/second.com/keys/k\(rotations % 32)/rotate")
            rotations += 1
            if rotations % 50 == 0 && node.log.contains("fell behind") { break }
        }
        print("events: stuck consumer cut off after \(rotations) rotations")
        XCTAssertTrue(node.log.contains("events consumer fell behind by more than 16384 bytes"), "no cut-off after \(rotations) rotations")
        // Draining the stuck socket now shows the final overflow line and then EOF.
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(stuck, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let text = readUntil(stuck) { _ in false }
        XCTAssertTrue(text.contains("\"type\":\"overflow\""), String(text.suffix(400)))
        // The healthy consumer kept up and saw every rotation.
        waitUntil("the healthy consumer saw all rotations") { healthy.events(ofType: "key_rotated").count == rotations }
        XCTAssertTrue(node.isRunning)
    }
}
