import Foundation
import KeystoreClient
import TestSupport
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

    /// `keystorectl call` reaches every route of the table by name (a route added to the contract
    /// is in the CLI at once), passes bodies and query parameters through, and reports refusals
    /// with the daemon's code.
    func testCallReachesEveryRouteOfTheTableByName() throws {
        let cluster = try makeCluster(nodes: ["node1"])
        try cluster.start("node1")
        cluster.waitReady("node1")
        let socket = cluster.socketPath("node1")
        _ = try UserCertificates.make(jids: ["grace@first.com"], in: cluster.scratch.path, name: "grace")
        let pem = try String(contentsOfFile: cluster.scratch.file("grace.pem"), encoding: .utf8)
        // A second certificate for disableCert (revokeCert takes the first).
        _ = try UserCertificates.make(jids: ["grace@first.com"], in: cluster.scratch.path, name: "grace-tablet")
        _ = try cluster.client("node1").addCert(domain: "first.com", user: "grace", name: "tablet",
                                                certificate: try String(contentsOfFile: cluster.scratch.file("grace-tablet.pem"), encoding: .utf8))
        func jsonString(_ text: String) throws -> String {
            String(decoding: try JSONSerialization.data(withJSONObject: [text], options: []), as: UTF8.self).dropFirst().dropLast().description
        }
        let input = Data("hello".utf8).base64EncodedString()
        let bodyFile = cluster.scratch.file("cert-body.json")
        try Data("{\"name\":\"phone\",\"certificate\":\(try jsonString(pem))}".utf8).write(to: URL(fileURLWithPath: bodyFile))

        // One call per route (every route of the table but the event stream), in an order where
        // each finds what it needs: the certificate is checked before it is disabled and revoked.
        let order: [Endpoint] = [.health, .metrics, .cluster, .reload, .listKeys, .getKey, .rotateKey, .signHMAC, .verifyHMAC,
                                 .addCert, .listCerts, .certStatus, .saslExternal, .disableCert, .revokeCert, .revokeAllCerts,
                                 .issueToken, .verifyToken, .revokeTokens]
        XCTAssertEqual(Set(order), Set(Endpoint.allCases).subtracting([.events]), "a new route needs a call here")
        var answers: [Endpoint: [String: Any]] = [:]
        for endpoint in order {
            var arguments = ["call", endpoint.rawValue]
            for parameter in endpoint.spec.parameters {
                let value = ["domain": "first.com", "key": "token_secret", "user": "grace",
                             "name": endpoint == .disableCert ? "tablet" : "phone"][parameter.rawValue]!
                arguments += ["--\(parameter.rawValue)", value]
            }
            switch endpoint {
            case .signHMAC: arguments += ["--body", "{\"input\":\"\(input)\",\"algorithm\":\"sha256\"}"]
            case .verifyHMAC:
                let mac = answers[.signHMAC]?["mac"] as? String ?? ""
                arguments += ["--body", "{\"input\":\"\(input)\",\"mac\":\"\(mac)\",\"algorithm\":\"sha256\"}"]
            case .listCerts: arguments += ["--query", "all=1"]
            case .addCert: arguments += ["--body", "@" + bodyFile]
            case .certStatus:
                let print = (answers[.addCert]?["fingerprint_sha256"] as? String) ?? ""
                arguments += ["--body", "{\"certs\":[{\"user\":\"grace\",\"fingerprint_sha256\":\"\(print)\"}]}"]
            case .saslExternal: arguments += ["--body", "{\"certificate\":\(try jsonString(pem))}"]
            case .issueToken: arguments += ["--body", "{\"type\":\"refresh\",\"jid\":\"grace@first.com\"}"]
            case .verifyToken: arguments += ["--body", "{\"token\":\"\(answers[.issueToken]?["token"] as? String ?? "")\"}"]
            default: break
            }
            let result = try ctl(socket, arguments)
            if endpoint == .metrics {
                XCTAssertTrue(result.output.contains("keystore_build_info"), result.output)
                continue
            }
            XCTAssertEqual(result.status, 0, "\(arguments): \(result.output)")
            answers[endpoint] = try JSONSerialization.jsonObject(with: Data(result.output.utf8)) as? [String: Any]
        }
        XCTAssertEqual(answers[.health]?["ready"] as? Bool, true)
        XCTAssertEqual(answers[.verifyHMAC]?["valid"] as? Bool, true, "the MAC signed by call verifies by call")
        XCTAssertEqual(answers[.saslExternal]?["jid"] as? String, "grace@first.com")
        XCTAssertEqual((answers[.certStatus]?["certs"] as? [[String: Any]])?.first?["state"] as? String, "active")
        XCTAssertEqual(answers[.verifyToken]?["valid"] as? Bool, true)
        XCTAssertEqual(answers[.disableCert]?["name"] as? String, "tablet")
        XCTAssertEqual(answers[.revokeCert]?["name"] as? String, "phone")
        XCTAssertNotNil(answers[.revokeAllCerts]?["certs"] as? [Any])
        XCTAssertEqual((answers[.listCerts]?["certs"] as? [Any])?.count, 2)

        // Refusals: the daemon's code and exit 1; what the CLI can tell alone is a usage error (2).
        let badBody = try ctl(socket, ["call", "signHMAC", "--domain", "first.com", "--key", "token_secret", "--body", "{\"input\":1}"])
        XCTAssertEqual(badBody.status, 1, badBody.output)
        XCTAssertTrue(badBody.output.contains("(bad_request)"), badBody.output)
        let unknownKey = try ctl(socket, ["call", "getKey", "--domain", "first.com", "--key", "nope"])
        XCTAssertEqual(unknownKey.status, 1, unknownKey.output)
        XCTAssertTrue(unknownKey.output.contains("(not_found)"), unknownKey.output)
        for (arguments, expected) in [
            (["call", "getKey", "--domain", "first.com"], "needs --key"),
            (["call", "health", "--user", "grace"], "takes no user"),
            (["call", "listKeys", "--domain", "first.com", "--query", "all=1"], "takes no query parameter 'all'"),
            (["call", "getKey", "--domain", "first.com", "--key", "token_secret", "--body", "{}"], "is a GET and takes no body"),
            (["call", "rotate"], "no route named 'rotate'"),
            (["call", "events"], "use 'keystorectl events'"),
        ] {
            let result = try ctl(socket, arguments)
            XCTAssertEqual(result.status, 2, "\(arguments): \(result.output)")
            XCTAssertTrue(result.output.contains(expected), "\(arguments): \(result.output)")
        }
    }
}
