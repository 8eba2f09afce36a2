import Foundation
import KeystoreClient
import TestSupport
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// Keys that never leave (issue 14): HMAC and MongooseIM-format tokens made inside real nodes,
/// cross-checked against an independent implementation of the token format (Python's
/// standard library, written from MongooseIM's `mod_auth_token.erl`, not from our code).
final class SigningTests: ClusterTestCase {
    /// mod_auth_token.erl: `join_fields/1`, `keyed_hash/2` (HMAC-SHA384, lowercase hex),
    /// `serialize/1` (body NUL mac), base64 on the wire; expiry in Gregorian seconds.
    private static let python = #"""
    import base64, hashlib, hmac, sys, time
    GREGORIAN = 62167219200
    def mac(key, body): return hmac.new(key, body, hashlib.sha384).hexdigest().encode()
    mode = sys.argv[1]
    key = base64.b64decode(sys.argv[2])
    if mode == "make":
        kind, jid, ttl = sys.argv[3], sys.argv[4], int(sys.argv[5])
        fields = [kind.encode(), jid.encode(), str(int(time.time()) + GREGORIAN + ttl).encode()]
        if kind == "refresh": fields.append(sys.argv[6].encode())
        body = b"\0".join(fields)
        print(base64.b64encode(body + b"\0" + mac(key, body)).decode())
    else:
        raw = base64.b64decode(sys.argv[3])
        body, _, tag = raw.rpartition(b"\0")
        fields = body.split(b"\0")
        ok = hmac.compare_digest(tag, mac(key, body))
        print("ok" if ok else "bad-mac", fields[0].decode(), fields[1].decode(), int(fields[2]) - GREGORIAN)
    """#

    private func python(_ arguments: [String]) throws -> String {
        let result = try runCommand("/usr/bin/python3", ["-c", Self.python] + arguments)
        XCTAssertEqual(result.status, 0, result.output)
        return result.output.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    func testTokensInteroperateWithAnIndependentImplementationBothWays() throws {
        let cluster = try makeCluster(nodes: ["node1"])
        try cluster.startAll()
        let client = cluster.client("node1")
        let key = try XCTUnwrap(client.getKey(domain: "first.com", name: "token_secret").primary?.key)

        let issued = try client.issueToken(domain: "first.com", type: .refresh, jid: "alice@first.com")
        XCTAssertEqual(issued.sequence, 1, "MongooseIM's first sequence number")
        let checked = try python(["check", key, issued.token]).split(separator: " ")
        XCTAssertEqual(checked.prefix(3), ["ok", "refresh", "alice@first.com"], "\(checked)")
        let expiresIn = (Double(checked[3]) ?? 0) - Date().timeIntervalSince1970
        XCTAssertEqual(expiresIn, 25 * 86400, accuracy: 60, "refresh tokens live 25 days by default")

        let access = try python(["make", key, "access", "alice@first.com/phone", "3600"])
        let verdict = try client.verifyToken(domain: "first.com", token: access)
        XCTAssertTrue(verdict.valid, "\(verdict)")
        XCTAssertEqual(verdict.type, .access)
        XCTAssertEqual(verdict.jid, "alice@first.com/phone")
        let forged = try python(["make", Data(repeating: 7, count: 32).base64EncodedString(), "access", "alice@first.com", "3600"])
        XCTAssertEqual(try client.verifyToken(domain: "first.com", token: forged).reason, .mac)
        let expired = try python(["make", key, "access", "alice@first.com", "-10"])
        XCTAssertEqual(try client.verifyToken(domain: "first.com", token: expired).reason, .expired)
        XCTAssertEqual(try client.verifyToken(domain: "first.com", token: "bm90IGEgdG9rZW4=").reason, .malformed)
        let otherDomain = try python(["make", key, "access", "alice@second.com", "3600"])
        XCTAssertEqual(try client.verifyToken(domain: "first.com", token: otherDomain).reason, .malformed)
    }

    func testATokenAndAMACMadeBeforeARotationStillVerifyAfterIt() throws {
        let cluster = try makeCluster(nodes: ["node1", "node2"])
        try cluster.startAll()
        let one = cluster.client("node1"), two = cluster.client("node2")
        let token = try one.issueToken(domain: "first.com", type: .access, jid: "alice@first.com")
        let input = Array("a message".utf8)
        let mac = try one.signHMAC(domain: "first.com", name: "token_secret", input: input, algorithm: .sha512)
        XCTAssertEqual(Data(base64Encoded: mac.mac)?.count, 64)

        try two.rotateKey(domain: "first.com", name: "token_secret")
        cluster.waitForAgreement()
        let verdict = try one.verifyToken(domain: "first.com", token: token.token)
        XCTAssertTrue(verdict.valid, "a rotation logs nobody out within the grace period: \(verdict)")
        let check = try two.verifyHMAC(domain: "first.com", name: "token_secret", input: input, mac: mac.mac, algorithm: .sha512)
        XCTAssertEqual(check, VerifyMACResponse(valid: true, version: mac.version), "matched by the old version")
        let fresh = try two.signHMAC(domain: "first.com", name: "token_secret", input: input, algorithm: .sha512)
        XCTAssertNotEqual(fresh.version, mac.version, "signing uses the new primary")
        XCTAssertFalse(try one.verifyHMAC(domain: "first.com", name: "token_secret", input: Array("another".utf8), mac: mac.mac,
                                          algorithm: .sha512).valid)
        // File keys sign too (provision tokens use provision_pre_shared).
        let psk = try one.signHMAC(domain: "first.com", name: "provision_pre_shared", input: input, algorithm: .sha256)
        XCTAssertTrue(try two.verifyHMAC(domain: "first.com", name: "provision_pre_shared", input: input, mac: psk.mac).valid)
        let provision = try one.issueToken(domain: "first.com", type: .provision, jid: "bob@first.com", vcard: "<vCard xmlns='vcard-temp'/>")
        XCTAssertEqual(try two.verifyToken(domain: "first.com", token: provision.token).vcard, "<vCard xmlns='vcard-temp'/>")
    }

    func testARevocationOnOneNodeRefusesTheRefreshTokenEverywhereAndSurvivesAFullRestart() throws {
        // token_secret as a file key in second.com: tokens outlive a full-cluster restart, so
        // the restart shows the revocation itself is durable.
        var domains: [String: Any] = [:]
        domains["first.com"] = ["keys": [["name": "token_secret", "type": "ram"]]]
        domains["second.com"] = ["keys": [["name": "token_secret", "type": "file", "path": "psk/second_provision"]]]
        let nodes = ["node1", "node2", "node3"]
        let cluster = try makeCluster(nodes: nodes, domains: domains)
        try cluster.startAll()
        let before = try cluster.client("node1").issueToken(domain: "second.com", type: .refresh, jid: "carol@second.com")
        let access = try cluster.client("node1").issueToken(domain: "second.com", type: .access, jid: "carol@second.com")
        let revoked = try cluster.client("node2").revokeTokens(domain: "second.com", user: "carol")
        XCTAssertEqual(revoked, RevokeTokensResponse(user: "carol@second.com", sequence: 2))
        for node in nodes {
            waitUntil("\(node) refuses the revoked refresh token") {
                (try? cluster.client(node).verifyToken(domain: "second.com", token: before.token).reason) == .revoked
            }
            XCTAssertTrue(try cluster.client(node).verifyToken(domain: "second.com", token: access.token).valid, "access tokens are not revoked")
        }
        let after = try cluster.client("node3").issueToken(domain: "second.com", type: .refresh, jid: "carol@second.com")
        XCTAssertEqual(after.sequence, 2)

        for node in nodes { cluster.processes[node]?.stop() }
        try cluster.startAll()
        for node in nodes {
            XCTAssertEqual(try cluster.client(node).verifyToken(domain: "second.com", token: before.token).reason, .revoked)
            XCTAssertTrue(try cluster.client(node).verifyToken(domain: "second.com", token: after.token).valid)
        }
    }

    func testAVerifyOnlyServiceCanNeverReadOrSign() throws {
        let clients: [[String: Any]] = [["uid": 0, "domains": ["*"], "allow": ["*"]],
                                        ["uid": 65534, "domains": ["first.com"], "allow": ["keys:verify", "tokens:verify"]]]
        let cluster = try makeCluster(nodes: ["node1"], clients: clients) { config in
            var entries = config["nodes"] as! [String: Any]
            var node1 = entries["node1"] as! [String: Any]
            node1["socket_mode"] = "0666"
            entries["node1"] = node1
            config["nodes"] = entries
        }
        chmod(cluster.scratch.path, 0o755)
        try cluster.startAll()
        let root = cluster.client("node1")
        let token = try root.issueToken(domain: "first.com", type: .access, jid: "alice@first.com")
        let mac = try root.signHMAC(domain: "first.com", name: "token_secret", input: Array("m".utf8))
        let socket = ["--socket", cluster.socketPath("node1")]
        func ctl(_ arguments: [String]) throws -> CommandResult {
            try runCommand("/usr/bin/setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", Products.keystorectl] + socket + arguments)
        }
        XCTAssertEqual(try ctl(["tokens", "verify", "first.com", token.token]).status, 0)
        XCTAssertEqual(try ctl(["keys", "verify", "first.com", "token_secret", "--input", "m", "--mac", mac.mac]).status, 0)
        for denied in [["keys", "get", "first.com", "token_secret"], ["keys", "hmac", "first.com", "token_secret", "--input", "m"],
                       ["tokens", "issue", "first.com", "alice@first.com", "--type", "access"], ["tokens", "revoke", "first.com", "alice"]] {
            let result = try ctl(denied)
            XCTAssertEqual(result.status, 1, "\(denied): \(result.output)")
            XCTAssertTrue(result.output.contains("forbidden"), "\(denied): \(result.output)")
        }
    }
}
