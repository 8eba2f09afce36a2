import Foundation
import KeystoreClient
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// Issue 11 item 2: idle TCP connections flooding the peer ports while a node restarts must
/// never make it generate new RAM keys (two primaries). Real processes, floods from loopback.
final class PeerFloodTests: ClusterTestCase {
    let three = ["node1", "node2", "node3"]

    /// Polls node1 for `seconds`: it may be waiting (not ready) or serving the cluster's key,
    /// never another one. Returns whether it became ready.
    private func watchNeverServesANewKey(_ cluster: ClusterHarness, key: String, seconds: TimeInterval,
                                         file: StaticString = #filePath, line: UInt = #line) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        var ready = false
        while Date() < deadline {
            if let served = try? cluster.client("node1").getKey(domain: "first.com", name: "token_secret").primary?.key {
                XCTAssertEqual(served, key, "node1 serves a new primary while its peers hold the cluster's key", file: file, line: line)
                if served != key { return ready }
                ready = true
            }
            usleep(50_000)
        }
        return ready
    }

    private func assertNeverBootstrapped(_ cluster: ClusterHarness, file: StaticString = #filePath, line: UInt = #line) {
        let log = cluster.processes["node1"]?.log ?? ""
        XCTAssertFalse(log.contains("bootstrapped alone"), "node1 generated keys alone", file: file, line: line)
        XCTAssertFalse(log.contains("bootstrapping alone"), "node1 generated keys alone", file: file, line: line)
    }

    /// A converged three-node cluster whose node1 was killed and whose peer ports (node1's
    /// included) are now flooded from `source`; node1 has just been started again.
    private func restartNode1DuringAFlood(from source: String, connectionsPerPort: Int) throws
        -> (cluster: ClusterHarness, key: String, flood: PeerPortFlood) {
        let cluster = try makeCluster(nodes: three)
        try cluster.startAll()
        let key = try XCTUnwrap(cluster.waitForAgreement())
        cluster.processes["node1"]!.kill9()
        let flood = PeerPortFlood(ports: three.map { cluster.ports[$0]! }, connectionsPerPort: connectionsPerPort, source: source)
        waitUntil("the flood holds connections on every port") { flood.openedTotal >= 3 * connectionsPerPort }
        try cluster.start("node1")
        return (cluster, key, flood)
    }

    func testARestartWhileEveryPeerPortIsFloodedFromLoopbackAdoptsOrWaitsButNeverMints() throws {
        // More idle connections than the old 64 unadmitted slots, at every peer port, reopened
        // as soon as the nodes close them, from the address the peers themselves use.
        let (cluster, key, flood) = try restartNode1DuringAFlood(from: "127.0.0.1", connectionsPerPort: 80)
        defer { flood.stop() }
        let ready = watchNeverServesANewKey(cluster, key: key, seconds: 8)
        print("flood: \(flood.openedTotal) connections opened while node1 restarted; node1 \(ready ? "adopted the cluster's key" : "kept waiting")")
        assertNeverBootstrapped(cluster)
        flood.stop()
        cluster.waitReady("node1", timeout: 20)
        XCTAssertEqual(cluster.waitForAgreement(), key)
        assertNeverBootstrapped(cluster)
        XCTAssertTrue(cluster.processes["node1"]!.log.contains("adopted the cluster state from"))
    }

    func testAFloodFromAnotherAddressCannotKeepTheNodesOwnPeersOut() throws {
        // 127.0.0.2 holds at most its per-address share of the unadmitted slots; the peers (on
        // 127.0.0.1) always find room, so the restart adopts while the flood goes on.
        let (cluster, key, flood) = try restartNode1DuringAFlood(from: "127.0.0.2", connectionsPerPort: 100)
        defer { flood.stop() }
        cluster.waitReady("node1", timeout: 15)
        XCTAssertEqual(try cluster.client("node1").getKey(domain: "first.com", name: "token_secret").primary?.key, key)
        XCTAssertTrue(flood.isRunning)
        assertNeverBootstrapped(cluster)
        XCTAssertTrue(cluster.processes["node2"]!.log.contains("to make room"), "the flood filled 127.0.0.2's share at node2")
        print("flood from 127.0.0.2: \(flood.openedTotal) connections opened; node1 adopted the cluster's key during it")
    }

    func testPausedPeersKeepARestartingNodeWaitingAndSIGTERMEndsTheWaitWithoutAKey() throws {
        let cluster = try makeCluster(nodes: three, joinTimeoutMillis: 1000)
        try cluster.startAll()
        let key = try XCTUnwrap(cluster.waitForAgreement())
        cluster.processes["node1"]!.kill9()
        // Frozen peers still complete TCP (the kernel accepts), but never TLS.
        for node in ["node2", "node3"] { cluster.processes[node]!.signal(SIGSTOP) }
        defer { for node in ["node2", "node3"] { cluster.processes[node]?.signal(SIGCONT) } }
        let node1 = try cluster.start("node1")
        XCTAssertFalse(watchNeverServesANewKey(cluster, key: key, seconds: 6), "node1 became ready while its peers were paused")
        XCTAssertEqual(try node1.client.health().ready, false)
        XCTAssertTrue(node1.log.contains("did not complete TLS"), "node1 classified the paused peers as reachable")
        let stopping = Date()
        node1.stop()
        XCTAssertLessThan(Date().timeIntervalSince(stopping), 5, "SIGTERM must end the wait promptly")
        XCTAssertTrue(node1.log.contains("no RAM key was generated"), node1.log)
        assertNeverBootstrapped(cluster)
        for node in ["node2", "node3"] { cluster.processes[node]!.signal(SIGCONT) }
        try cluster.start("node1")
        cluster.waitReady("node1", timeout: 20)
        XCTAssertEqual(cluster.waitForAgreement(), key)
    }

    func testWithEveryPeerDownTheNodeStillBootstrapsAfterTheJoinTimeoutEvenWithItsOwnPortFlooded() throws {
        let cluster = try makeCluster(nodes: three, joinTimeoutMillis: 2000)
        let flood = PeerPortFlood(ports: [cluster.ports["node1"]!], connectionsPerPort: 80, source: "127.0.0.1")
        defer { flood.stop() }
        let started = Date()
        try cluster.start("node1")
        cluster.waitReady("node1", timeout: 15)
        let elapsed = Date().timeIntervalSince(started)
        XCTAssertGreaterThanOrEqual(elapsed, 2.0, "bootstrapped before join_timeout_ms")
        XCTAssertTrue(cluster.processes["node1"]!.log.contains("bootstrapped alone"))
        XCTAssertNotNil(try cluster.client("node1").getKey(domain: "first.com", name: "token_secret").primary?.key)
    }
}

/// Idle TCP connections to some ports from one source address, each reopened when the far end
/// closes it, until `stop`. The connections never send a byte.
final class PeerPortFlood: @unchecked Sendable {
    // @unchecked: `sockets`, `opened` and `running` are only touched while holding `lock`.
    private let lock = NSLock()
    private var sockets: [Int32] = []
    private var opened = 0
    private var running = true
    private let done = DispatchSemaphore(value: 0)

    init(ports: [Int], connectionsPerPort: Int, source: String) {
        Thread.detachNewThread { [self] in
            var held: [Int: [Int32]] = [:]
            while isRunning {
                for port in ports {
                    var alive = (held[port] ?? []).filter { fd in
                        var byte: UInt8 = 0
                        let n = recv(fd, &byte, 1, Int32(MSG_DONTWAIT | MSG_PEEK))
                        if n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) { close(fd); return false }
                        return true
                    }
                    while alive.count < connectionsPerPort, let fd = Self.connect(port: port, from: source) {
                        alive.append(fd)
                        lock.withLock { opened += 1 }
                    }
                    held[port] = alive
                }
                lock.withLock { sockets = held.values.flatMap { $0 } }
                usleep(50_000)
            }
            for fd in held.values.flatMap({ $0 }) { close(fd) }
            done.signal()
        }
    }

    var isRunning: Bool { lock.withLock { running } }
    var openedTotal: Int { lock.withLock { opened } }

    func stop() {
        let wasRunning = lock.withLock { () -> Bool in
            defer { running = false }
            return running
        }
        if wasRunning { done.wait() }
    }

    private static func connect(port: Int, from source: String) -> Int32? {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return nil }
        var local = sockaddr_in()
        local.sin_family = sa_family_t(AF_INET)
        local.sin_addr.s_addr = inet_addr(source)
        var remote = sockaddr_in()
        remote.sin_family = sa_family_t(AF_INET)
        remote.sin_addr.s_addr = inet_addr("127.0.0.1")
        remote.sin_port = UInt16(port).bigEndian
        let size = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafePointer(to: &local) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, size) } }
        let connected = withUnsafePointer(to: &remote) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, size) } }
        guard bound == 0, connected == 0 else { close(fd); return nil }
        return fd
    }
}
