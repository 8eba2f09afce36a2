import Foundation
import KeystoreClient
import XCTest

/// The real keystorectl binary against a real node: the v1 CLI names from DESIGN.md.
final class CLITests: ClusterTestCase {
    private func ctl(_ socket: String, _ arguments: [String]) throws -> CommandResult {
        try runCommand(Products.keystorectl, ["--socket", socket] + arguments)
    }

    func testCertsAndKeysCommandsEndToEnd() throws {
        let cluster = try makeCluster(nodes: ["node1"])
        try cluster.start("node1")
        cluster.waitReady("node1")
        let socket = cluster.socketPath("node1")
        _ = try UserCertificates.make(jids: ["frank@first.com"], in: cluster.scratch.path, name: "frank")
        let pem = cluster.scratch.file("frank.pem")
        // DER input too (sent base64 by the CLI).
        let der = cluster.scratch.file("frank.der")
        try SharedCertificates.run("/usr/bin/openssl", ["x509", "-in", pem, "-outform", "DER", "-out", der])

        // The user given as a bare JID: the answer, not the arguments, names who got it.
        let add = try ctl(socket, ["certs", "add", "first.com", "frank@first.com", "laptop", der])
        XCTAssertEqual(add.status, 0, add.output)
        XCTAssertTrue(add.output.hasPrefix("added certificate laptop for frank@first.com  sha256="), add.output)
        XCTAssertFalse(add.output.contains("@first.com@first.com"), add.output)
        let list = try ctl(socket, ["certs", "list", "first.com", "frank"])
        XCTAssertEqual(list.status, 0, list.output)
        XCTAssertTrue(list.output.contains("laptop"), list.output)
        let json = try ctl(socket, ["--json", "certs", "list", "first.com", "frank"])
        let parsed = try JSONSerialization.jsonObject(with: Data(json.output.utf8)) as? [String: Any]
        XCTAssertEqual((parsed?["certs"] as? [[String: Any]])?.first?["jids"] as? [String], ["frank@first.com"])
        let verify = try ctl(socket, ["certs", "verify", "first.com", pem])
        XCTAssertEqual(verify.status, 0, verify.output)
        XCTAssertTrue(verify.output.contains("frank@first.com"), verify.output)
        let duplicate = try ctl(socket, ["certs", "add", "first.com", "frank", "laptop", pem])
        XCTAssertEqual(duplicate.status, 1, duplicate.output)
        XCTAssertTrue(duplicate.output.contains("conflict"), duplicate.output)

        let revoke = try ctl(socket, ["certs", "revoke", "first.com", "frank", "laptop"])
        XCTAssertEqual(revoke.status, 0, revoke.output)
        XCTAssertEqual(revoke.output, "revoked certificate laptop for frank@first.com\n")
        let active = try ctl(socket, ["certs", "list", "first.com", "frank"])
        XCTAssertFalse(active.output.contains("laptop"), active.output)
        let all = try ctl(socket, ["certs", "list", "--all", "first.com", "frank"])
        XCTAssertEqual(all.status, 0, all.output)
        XCTAssertTrue(all.output.contains("laptop  revoked"), all.output)
        let refused = try ctl(socket, ["certs", "verify", "first.com", pem])
        XCTAssertEqual(refused.status, 1, refused.output)
        XCTAssertTrue(refused.output.contains("forbidden"), refused.output)

        let key = try ctl(socket, ["keys", "get", "first.com", "token_secret"])
        XCTAssertEqual(key.status, 0, key.output)
        XCTAssertTrue(key.output.contains("primary"), key.output)
        let rotate = try ctl(socket, ["keys", "rotate", "first.com", "token_secret"])
        XCTAssertEqual(rotate.status, 0, rotate.output)
        XCTAssertTrue(rotate.output.hasPrefix("rotated first.com/token_secret\n"), rotate.output)
        // The old version stays active for the grace period, and says until when.
        let rotated = try ctl(socket, ["keys", "get", "first.com", "token_secret"])
        let lines = rotated.output.split(separator: "\n")
        XCTAssertEqual(lines.count, 2, rotated.output)
        XCTAssertTrue(lines.first?.contains("  primary  ") == true && lines.first?.contains("expires=") == false, rotated.output)
        XCTAssertTrue(lines.last?.contains("  active  ") == true && lines.last?.contains("  expires=20") == true, rotated.output)
        let keys = try ctl(socket, ["keys", "list", "first.com"])
        XCTAssertTrue(keys.output.contains("token_secret") && keys.output.contains("2"), keys.output)
        let status = try ctl(socket, ["cluster", "status"])
        XCTAssertTrue(status.output.contains("node1 (self)") && status.output.contains("ready"), status.output)
        XCTAssertTrue(status.output.hasPrefix("NODE          ADDRESS  "), status.output)
        XCTAssertTrue(status.output.contains("  SYNC  ") && status.output.contains("  LAST_CONTACT  "), status.output)
        let reload = try ctl(socket, ["reload"])
        XCTAssertEqual(reload.status, 0, reload.output)
        XCTAssertEqual(reload.output, "reloaded: nothing changed\n")
        let version = try runCommand(Products.keystorectl, ["--version"])
        XCTAssertEqual(version.output, keystoreVersion + "\n")
        let daemonVersion = try runCommand(Products.keystored, ["--version"])
        XCTAssertEqual(daemonVersion.output, keystoreVersion + "\n")
        let missing = try ctl(socket, ["keys", "get", "first.com", "nope"])
        XCTAssertEqual(missing.status, 1)
        XCTAssertTrue(missing.output.contains("no key named nope"), missing.output)
    }

    func testEventsCommandStreamsLines() throws {
        let cluster = try makeCluster(nodes: ["node1"])
        try cluster.start("node1")
        cluster.waitReady("node1")
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Products.keystorectl)
        process.arguments = ["--socket", cluster.socketPath("node1"), "events"]
        let output = cluster.scratch.file("events.out")
        _ = FileManager.default.createFile(atPath: output, contents: nil)
        process.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: output))
        try process.run()
        defer { process.terminate(); process.waitUntilExit() }
        waitUntil("keystorectl events printed the hello line") {
            ((try? String(contentsOfFile: output, encoding: .utf8)) ?? "").contains("\"hello\"")
        }
        _ = try cluster.client("node1").rotateKey(domain: "first.com", name: "token_secret")
        waitUntil("keystorectl events printed the rotation") {
            ((try? String(contentsOfFile: output, encoding: .utf8)) ?? "").contains("key_rotated")
        }
    }
}
