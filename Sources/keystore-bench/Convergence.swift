import Foundation
import KeystoreClient
import Synchronization

/// Arrival times of `key_rotated` events, per node, keyed by the new primary version id.
final class ArrivalBook: Sendable {
    private let arrivals = Mutex<[String: [Int: UInt64]]>([:])
    private let failures = Mutex<[Int: String]>([:])

    func record(primary: String, node: Int, at nanos: UInt64) {
        arrivals.withLock { book in
            // First arrival counts: a node may republish after anti-entropy repeats the delta.
            if book[primary, default: [:]][node] == nil { book[primary, default: [:]][node] = nanos }
        }
    }

    func arrivals(for primary: String) -> [Int: UInt64] { arrivals.withLock { $0[primary] ?? [:] } }
    func fail(node: Int, _ message: String) { failures.withLock { $0[node] = message } }
    var failureMessages: [Int: String] { failures.withLock { $0 } }
}

/// Opens `/v1/events` on every node and timestamps each `key_rotated` line as it arrives. One
/// blocking reader thread per node: the threads sleep in read(2), so they cost nothing while
/// the cluster works, and the timestamp is taken the moment the kernel hands over the line.
func startEventReaders(sockets: [String], book: ArrivalBook, domain: String, key: String) {
    for (index, socket) in sockets.enumerated() {
        let thread = Thread {
            let client = KeystoreClient(socketPath: socket, timeoutSeconds: 10)
            do {
                try client.eventLines(idleTimeoutSeconds: nil) { line in
                    let now = monotonicNanos()
                    guard line.contains("\"key_rotated\"") else { return true }
                    guard let event = try? KeystoreClient.decode(Event.self, body: Array(line.utf8), what: "event line"),
                          event.domain == domain, event.name == key, let primary = event.primary else { return true }
                    book.record(primary: primary, node: index, at: now)
                    return true
                }
                book.fail(node: index, "event stream ended")
            } catch {
                book.fail(node: index, "event stream failed: \(error)")
            }
        }
        thread.stackSize = 1 << 20
        thread.start()
    }
}

/// Waits until every node is ready and sees all `sockets.count` members alive.
func waitForCluster(sockets: [String], timeout: Double) throws {
    let deadline = monotonicNanos() + UInt64(timeout * 1e9)
    var pending = Set(sockets.indices)
    var lastProblem = ""
    while !pending.isEmpty {
        for i in pending.sorted() {
            let client = KeystoreClient(socketPath: sockets[i], timeoutSeconds: 5)
            do {
                let health = try client.health()
                guard health.ready else { lastProblem = "\(sockets[i]) not ready"; continue }
                let status = try client.clusterStatus()
                let alive = status.members.filter { $0.state == .alive }.count
                if alive >= sockets.count { pending.remove(i) } else {
                    lastProblem = "\(sockets[i]) sees \(alive) alive members of \(sockets.count)"
                }
            } catch {
                lastProblem = "\(sockets[i]): \(error)"
            }
        }
        if pending.isEmpty { break }
        guard monotonicNanos() < deadline else {
            throw BenchError.notReady("after \(Int(timeout)) s: \(lastProblem)")
        }
        usleep(50_000)
    }
}

struct ConvergenceResult {
    var nodes: Int
    var rotations: Int
    var missed: Int
    /// Rotate request sent → last node's event.
    var all: LatencySummary
    /// Rotate request sent → its response (the origin node's own work).
    var rotateCall: LatencySummary
    /// Rotate request sent → median node's event.
    var median: LatencySummary
    var over100ms: Int
    var over500ms: Int
}

/// Rotates `rotations` times (round-robin over the nodes' sockets) and times each until every
/// node has published the new primary on its event stream.
func measureConvergence(sockets: [String], domain: String, key: String, rotations: Int, warmups: Int,
                        perRotationTimeout: Double, book: ArrivalBook) throws -> ConvergenceResult {
    var toAll: [UInt64] = [], toMedian: [UInt64] = [], call: [UInt64] = []
    var missed = 0
    var round = 0
    /// One rotation: returns (rotate answered, per-node arrival delays) measured from the send.
    func rotateOnce() throws -> (call: UInt64, delays: [Int: UInt64], primary: String) {
        let origin = sockets[round % sockets.count]
        round += 1
        let started = monotonicNanos()
        let response = try KeystoreClient(socketPath: origin, timeoutSeconds: 10).rotateKey(domain: domain, name: key)
        let answered = monotonicNanos()
        guard let primary = response.primary?.id ?? response.versions.first?.id else {
            throw BenchError.loadFailed("rotate answer from \(origin) names no primary version")
        }
        let deadline = started + UInt64(perRotationTimeout * 1e9)
        var seen = book.arrivals(for: primary)
        while seen.count < sockets.count && monotonicNanos() < deadline {
            if !book.failureMessages.isEmpty {
                throw BenchError.loadFailed(book.failureMessages.map { "\(sockets[$0.key]): \($0.value)" }.joined(separator: "; "))
            }
            usleep(200)
            seen = book.arrivals(for: primary)
        }
        return (answered - started, seen.mapValues { $0 > started ? $0 - started : 0 }, primary)
    }
    // Warm-up until `warmups` rotations in a row reach every node: the reader threads subscribe
    // asynchronously, so the first rotations may predate some subscriptions.
    var streak = 0, attempts = 0
    while streak < max(1, warmups) {
        attempts += 1
        let (_, seen, primary) = try rotateOnce()
        streak = seen.count == sockets.count ? streak + 1 : 0
        if attempts >= 10 + warmups && streak == 0 {
            let missing = sockets.indices.filter { seen[$0] == nil }.map { sockets[$0] }
            throw BenchError.notReady("warm-up rotation \(primary) never reached \(missing.joined(separator: ", "))")
        }
    }
    for _ in 0..<rotations {
        let (callTime, seen, _) = try rotateOnce()
        call.append(callTime)
        if seen.count < sockets.count { missed += 1; continue }
        let delays = seen.values.sorted()
        toAll.append(delays.last ?? 0)
        toMedian.append(delays[delays.count / 2])
        // Let the previous rumour's duplicates drain so rotations do not queue behind each other.
        usleep(20_000)
    }
    return ConvergenceResult(nodes: sockets.count, rotations: rotations, missed: missed,
                             all: LatencySummary(nanos: toAll), rotateCall: LatencySummary(nanos: call),
                             median: LatencySummary(nanos: toMedian),
                             over100ms: toAll.filter { $0 > 100_000_000 }.count,
                             over500ms: toAll.filter { $0 > 500_000_000 }.count)
}
