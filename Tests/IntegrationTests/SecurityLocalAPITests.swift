import Foundation
import KeystoreClient
import TestSupport
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// Issue 5, local API robustness: hostile or broken clients on the Unix socket get a JSON error
/// or a closed connection, never a crash, and never stall a well-behaved client.
final class SecurityLocalAPITests: ClusterTestCase {
    private func startSingle() throws -> (ClusterHarness, NodeProcess) {
        let cluster = try makeCluster(nodes: ["node1"], joinTimeoutMillis: 200)
        let node = try cluster.start("node1")
        cluster.waitReady("node1")
        return (cluster, node)
    }

    /// Sends raw bytes on a fresh connection and returns everything the node answers until it
    /// closes the connection (or 5 s pass).
    private func exchange(_ socketPath: String, _ bytes: [UInt8]) throws -> String {
        _ = PeerAttack.ignoreSIGPIPE
        let fd = try connectUnix(socketPath)
        defer { close(fd) }
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + offset, bytes.count - offset) }
            if n <= 0 { break } // the node may close before reading everything (oversized input)
            offset += n
        }
        return readUntil(fd) { _ in false }
    }

    private func get(_ path: [UInt8]) -> [UInt8] {
        Array("GET ".utf8) + path + Array(" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".utf8)
    }

    /// The JSON error code of a raw HTTP answer, nil if it is not one.
    private func errorCode(_ answer: String) -> (status: Int, code: String)? {
        guard answer.hasPrefix("HTTP/1.1 ") || answer.hasPrefix("HTTP/1.0 "), let status = Int(answer.dropFirst(9).prefix(3)),
              let bodyStart = answer.range(of: "\r\n\r\n")?.upperBound,
              let json = try? JSONSerialization.jsonObject(with: Data(answer[bodyStart...].utf8)) as? [String: Any],
              let code = json["error"] as? String, json["message"] is String else { return nil }
        return (status, code)
    }

    func testMalformedOversizedAndTrickyRequestsGetJSONErrors() throws {
        let (_, node) = try startSingle()
        let socket = node.socketPath
        let key = try XCTUnwrap(node.client.getKey(domain: "first.com", name: "token_secret").primary?.key)

        // (request bytes, expected status, expected error code)
        var cases: [(String, [UInt8], Int, String)] = [
            ("huge header", Array("GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Big: \(String(repeating: "a", count: 20_000))\r\n\r\n".utf8), 400, "bad_request"),
            ("many headers", Array(("GET /v1/health HTTP/1.1\r\n" + (0..<300).map { "X-\($0): a\r\n" }.joined() + "\r\n").utf8), 400, "bad_request"),
            ("body over the limit", Array("POST /v1/domains/first.com/keys/token_secret/rotate HTTP/1.1\r\nHost: x\r\nContent-Length: 300000\r\n\r\n".utf8)
                + [UInt8](repeating: 0x61, count: 300_000), 413, "payload_too_large"),
            ("chunked body over the limit", Array("POST /v1/domains/first.com/keys/token_secret/rotate HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".utf8)
                + Array(String(repeating: "10000\r\n" + String(repeating: "b", count: 65536) + "\r\n", count: 5).utf8) + Array("0\r\n\r\n".utf8),
             413, "payload_too_large"),
            ("garbage request line", Array("\u{01}\u{02}\u{03} / HTTP/9.9\r\n\r\n".utf8), 400, "bad_request"),
            ("bad header syntax", Array("GET /v1/health HTTP/1.1\r\nNo colon here\r\n\r\n".utf8), 400, "bad_request"),
            ("invalid UTF-8 in path", get(Array("/v1/domains/".utf8) + [0xFF, 0xFE] + Array("/keys".utf8)), 400, "bad_request"),
            ("overlong UTF-8 slash in path", get(Array("/v1/domains/first.com/keys/".utf8) + [0xC0, 0xAF]), 400, "bad_request"),
            ("percent-encoded overlong dots", get(Array("/v1/domains/%C0%AE%C0%AE/keys".utf8)), 400, "bad_request"),
            ("percent-encoded NUL in key", get(Array("/v1/domains/first.com/keys/token_secret%00".utf8)), 400, "bad_request"),
            ("percent-encoded NUL in domain", get(Array("/v1/domains/first.com%00/keys/token_secret".utf8)), 400, "bad_request"),
            ("bad percent escape", get(Array("/v1/domains/first.com/keys/%G0".utf8)), 400, "bad_request"),
            ("dot-dot domain", get(Array("/v1/domains/../keys".utf8)), 404, "not_found"),
            ("dot-dot key", get(Array("/v1/domains/first.com/keys/..".utf8)), 404, "not_found"),
            ("encoded slash in key", get(Array("/v1/domains/first.com/keys/..%2Ftoken_secret".utf8)), 404, "not_found"),
            ("encoded slash in domain", get(Array("/v1/domains/first.com%2Fkeys%2Ftoken_secret/keys".utf8)), 404, "not_found"),
            ("dot-dot into another route", get(Array("/v1/domains/first.com/keys/token_secret/../provision_pre_shared".utf8)), 404, "not_found"),
            ("dot-dot across domains", get(Array("/v1/domains/second.com/../first.com/keys/token_secret".utf8)), 404, "not_found"),
            ("double slash", get(Array("/v1/domains/first.com//keys/token_secret".utf8)), 404, "not_found"),
        ]
        // Request smuggling and framing tricks (the local API's own parser refuses them all).
        let rotate = "POST /v1/domains/first.com/keys/token_secret/rotate HTTP/1.1\r\nHost: x\r\n"
        cases += [
            ("Content-Length with Transfer-Encoding", Array((rotate + "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n").utf8), 400, "bad_request"),
            ("differing duplicate Content-Length", Array((rotate + "Content-Length: 0\r\nContent-Length: 5\r\n\r\nhello").utf8), 400, "bad_request"),
            ("Content-Length list that disagrees", Array((rotate + "Content-Length: 0, 5\r\n\r\nhello").utf8), 400, "bad_request"),
            ("signed Content-Length", Array((rotate + "Content-Length: +0\r\n\r\n").utf8), 400, "bad_request"),
            ("Transfer-Encoding other than chunked", Array((rotate + "Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n").utf8), 400, "bad_request"),
            ("Transfer-Encoding in HTTP/1.0", Array("POST /v1/domains/first.com/keys/token_secret/rotate HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".utf8), 400, "bad_request"),
            ("obs-fold header", Array((rotate + "X-A: a\r\n Transfer-Encoding: chunked\r\n\r\n").utf8), 400, "bad_request"),
            ("space before the colon", Array((rotate + "Transfer-Encoding : chunked\r\n\r\n").utf8), 400, "bad_request"),
            ("bare LF line ends", Array("GET /v1/health HTTP/1.1\nHost: x\n\n".utf8), 400, "bad_request"),
            ("bare CR inside a header", Array("GET /v1/health HTTP/1.1\r\nHost: x\rX: y\r\n\r\n".utf8), 400, "bad_request"),
            ("control character in a header value", Array("GET /v1/health HTTP/1.1\r\nX-A: \u{01}\r\n\r\n".utf8), 400, "bad_request"),
            ("HTTP/1.2", Array("GET /v1/health HTTP/1.2\r\n\r\n".utf8), 400, "bad_request"),
            ("HTTP/2.0 request line", Array("GET /v1/health HTTP/2.0\r\n\r\n".utf8), 400, "bad_request"),
            ("malformed chunk size", Array((rotate + "Transfer-Encoding: chunked\r\n\r\nzz\r\n\r\n").utf8), 400, "bad_request"),
            ("chunk data without CRLF", Array((rotate + "Transfer-Encoding: chunked\r\n\r\n2\r\nabcd\r\n0\r\n\r\n").utf8), 400, "bad_request"),
            ("overflowing chunk size", Array((rotate + "Transfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFFF\r\n").utf8), 413, "payload_too_large"),
            ("huge Content-Length with 100-continue", Array((rotate + "Expect: 100-continue\r\nContent-Length: 99999999999999999999\r\n\r\n").utf8), 413, "payload_too_large"),
            ("unknown expectation", Array((rotate + "Expect: 102-processing\r\nContent-Length: 0\r\n\r\n").utf8), 417, "bad_request"),
        ]
        // Invalid UTF-8 in a header value and in a body the route ignores: no crash, an answer.
        cases.append(("invalid UTF-8 header value", Array("GET /v1/domains/nowhere/keys HTTP/1.1\r\nHost: x\r\nX-A: ".utf8) + [0xC3, 0x28, 0xFF]
                      + Array("\r\nConnection: close\r\n\r\n".utf8), 404, "not_found"))
        for (name, bytes, status, code) in cases {
            var answer = ""
            let millis = try measureMillis { answer = try exchange(socket, bytes) }
            let parsed = errorCode(answer)
            XCTAssertEqual(parsed?.status, status, "\(name): \(answer.prefix(300))")
            XCTAssertEqual(parsed?.code, code, "\(name): \(answer.prefix(300))")
            XCTAssertFalse(answer.contains(key), "\(name) leaked the key")
            print(String(format: "security: %@ -> %d %@ in %.1f ms", name, parsed?.status ?? 0, parsed?.code ?? "closed", millis))
        }
        XCTAssertTrue(node.isRunning)
        XCTAssertEqual(try node.client.getKey(domain: "first.com", name: "token_secret").primary?.key, key)
    }

    /// Request bodies the way real clients send them: curl's `Expect: 100-continue` and chunked
    /// uploads, and a chunked request pipelined with the next one. A made-up certificate gets 422
    /// `invalid_certificate`, which proves the JSON body arrived whole (a cut body would be 400).
    func testChunkedBodiesAndExpectContinueFromRealClients() throws {
        let (cluster, node) = try startSingle()
        let body = "{\"certificate\":\"" + String(repeating: "A", count: 4000) + "\"}"
        try cluster.scratch.write("body.json", body)
        let url = "http://localhost/v1/domains/first.com/sasl-external"
        let common = ["-sS", "-v", "--unix-socket", node.socketPath, "-H", "Content-Type: application/json",
                      "--data-binary", "@" + cluster.scratch.file("body.json"), "-w", "\nstatus=%{http_code}\n"]
        let continued = try runCommand("/usr/bin/curl", common + ["-H", "Expect: 100-continue", url]).output
        XCTAssertTrue(continued.contains("< HTTP/1.1 100 Continue"), continued)
        XCTAssertTrue(continued.contains("status=422") && continued.contains("invalid_certificate"), continued)
        let chunked = try runCommand("/usr/bin/curl", common + ["-H", "Transfer-Encoding: chunked", "-H", "Expect:", url]).output
        XCTAssertTrue(chunked.contains("> Transfer-Encoding: chunked"), chunked)
        XCTAssertTrue(chunked.contains("status=422") && chunked.contains("invalid_certificate"), chunked)

        // On one raw connection: a chunked POST (body in two chunks), then a GET, answered in order.
        let json = Array(body.utf8)
        var request = Array("POST /v1/domains/first.com/sasl-external HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".utf8)
        request += Array("\(String(100, radix: 16))\r\n".utf8) + json[0..<100] + Array("\r\n".utf8)
        request += Array("\(String(json.count - 100, radix: 16));ext=1\r\n".utf8) + json[100...] + Array("\r\n0\r\n\r\n".utf8)
        request += Array("GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".utf8)
        let answer = try exchange(node.socketPath, request)
        let statuses = answer.components(separatedBy: "HTTP/1.1 ").dropFirst().map { String($0.prefix(3)) }
        XCTAssertEqual(statuses, ["422", "200"], answer)
        XCTAssertTrue(node.isRunning)
    }

    func testSlowAndIdleClientsDoNotStallANormalClient() throws {
        _ = PeerAttack.ignoreSIGPIPE
        let (_, node) = try startSingle()
        // 300 connections that never send a byte, and 100 slowloris connections trickling one
        // header byte each 50 ms (a request that would take minutes to finish).
        let idle = try (0..<300).map { _ in try connectUnix(node.socketPath) }
        defer { for fd in idle { close(fd) } }
        let slow = try (0..<100).map { _ in try connectUnix(node.socketPath) }
        defer { for fd in slow { close(fd) } }
        let stop = LockedBox(false)
        let trickled = Thread {
            let header = Array("GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Slow: ".utf8) + [UInt8](repeating: 0x7A, count: 10_000)
            var index = 0
            while !stop.withLockedValue({ $0 }) {
                for fd in slow { _ = header.withUnsafeBytes { write(fd, $0.baseAddress! + (index % header.count), 1) } }
                index += 1
                usleep(50_000)
            }
        }
        trickled.start()
        defer { stop.withLockedValue { $0 = true } }

        var latencies: [Double] = []
        for i in 0..<30 {
            let millis = try measureMillis {
                let reply = try node.client.getKey(domain: "first.com", name: i % 2 == 0 ? "token_secret" : "provision_pre_shared")
                XCTAssertNotNil(reply.primary?.key)
            }
            latencies.append(millis)
            usleep(50_000) // spread the samples over the attack (~1.5 s, i.e. ~30 trickled bytes per slow client)
        }
        print("security: normal client during 300 idle + 100 slowloris connections: \(latencySummary(latencies))")
        XCTAssertLessThan(latencies.max() ?? .infinity, 5_000, "a normal request took longer than 5 s under attack")
        XCTAssertTrue(node.isRunning)
        stop.withLockedValue { $0 = true }
    }

    /// Beyond `LocalAPILimits.maxConnections` (1024) a connection is closed at once: the node
    /// neither stalls nor runs out of descriptors. A well-behaved client arriving while an
    /// attacker holds every slot is refused too (closed, not hung) until slots free up; that is
    /// the documented cost of the bound (see SECURITY.md), and why socket_mode matters.
    func testConnectionsBeyondTheLimitAreClosedAtOnceAndServiceRecovers() throws {
        let (_, node) = try startSingle()
        var held: [Int32] = []
        defer { for fd in held { close(fd) } }
        for _ in 0..<1024 { held.append(try connectUnix(node.socketPath)) }
        // One request on the last held connection proves all 1024 were accepted and counted.
        let last = try XCTUnwrap(held.last)
        _ = "GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n".withCString { write(last, $0, strlen($0)) }
        XCTAssertTrue(readUntil(last) { $0.contains("\"ready\"") }.hasPrefix("HTTP/1.1 200"))

        var refusedMillis: [Double] = []
        for _ in 0..<20 {
            let fd = try connectUnix(node.socketPath)
            defer { close(fd) }
            var answer = ""
            refusedMillis.append(measureMillis {
                _ = "GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n".withCString { write(fd, $0, strlen($0)) }
                answer = readUntil(fd) { _ in false }
            })
            XCTAssertEqual(answer, "", "a connection beyond the limit must be closed without an answer")
        }
        print("security: connections beyond 1024 closed after \(latencySummary(refusedMillis))")
        XCTAssertLessThan(refusedMillis.max() ?? .infinity, 2_000, "over-limit connections must be closed at once, not left hanging")
        XCTAssertTrue(node.log.contains("local connection refused"), node.log)

        for fd in held { close(fd) }
        held.removeAll()
        waitUntil("the node serves again once the attacker lets go", timeout: 5) {
            (try? node.client.getKey(domain: "first.com", name: "token_secret").primary?.key) != nil
        }
        XCTAssertTrue(node.isRunning)
    }
}
