import Foundation
import KeystoreClient
import TestSupport
import XCTest

/// End to end (issue 14): integrations/prosody/mod_keystore_tokens.lua on Prosody A (node1) and B
/// (node2), with slixmpp clients that ask for tokens with MongooseIM's token IQ and log in with
/// SASL X-OAUTH. The keystore issues and verifies every token; Prosody never sees the key.
final class ProsodyTokenTests: ProsodyTestCase {
    let host = ProsodyCluster.host
    let password = "alice-password"

    // MARK: Helpers

    /// MongooseIM's token as bytes split at NUL: [type, jid, expiry, (sequence,) mac]. Read here
    /// from the format description, not from any production code.
    private func fields(_ base64Token: String, file: StaticString = #filePath, line: UInt = #line) -> [String] {
        guard let bytes = Data(base64Encoded: base64Token) else {
            XCTFail("token is not base64: \(base64Token)", file: file, line: line)
            return []
        }
        return bytes.split(separator: 0, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
    }

    /// Checks a token's shape: type, the bare JID, a Gregorian-seconds expiry about `validFor`
    /// from now, and a lowercase hex HMAC-SHA384.
    private func assertToken(_ token: String, type: String, validFor: TimeInterval, file: StaticString = #filePath, line: UInt = #line) {
        let parts = fields(token, file: file, line: line)
        XCTAssertEqual(parts.count, type == "refresh" ? 5 : 4, "\(type) token fields: \(parts)", file: file, line: line)
        guard parts.count >= 4 else { return }
        XCTAssertEqual(parts[0], type, file: file, line: line)
        XCTAssertEqual(parts[1], "alice@\(host)", file: file, line: line)
        // Erlang's calendar:datetime_to_gregorian_seconds: seconds since 0000-01-01 (proleptic).
        let gregorianOffset = 62_167_219_200.0
        if let expiry = Double(parts[2]) {
            let expected = Date().timeIntervalSince1970 + gregorianOffset + validFor
            XCTAssertEqual(expiry, expected, accuracy: 120, "\(type) token expiry \(parts[2])", file: file, line: line)
        } else {
            XCTFail("expiry is not a number: \(parts[2])", file: file, line: line)
        }
        let mac = parts[parts.count - 1]
        XCTAssertEqual(mac.count, 96, "HMAC-SHA384 in hex", file: file, line: line)
        XCTAssertTrue(mac.allSatisfy { "0123456789abcdef".contains($0) }, "lowercase hex MAC: \(mac)", file: file, line: line)
    }

    /// What `node` says of a token right now (the test runs as root, which the keystore allows everything).
    private func verdict(_ cluster: ProsodyCluster, _ node: String, _ token: String) throws -> VerifyTokenResponse {
        try cluster.keystore.client(node).verifyToken(domain: host, token: token)
    }

    /// Waits until `node` refuses the token as revoked (replication from the node that revoked it).
    private func waitUntilRevoked(_ cluster: ProsodyCluster, on node: String, _ token: String, file: StaticString = #filePath, line: UInt = #line) {
        waitUntil("\(node) refuses the refresh token as revoked", file: file, line: line) {
            (try? verdict(cluster, node, token))?.reason == .revoked
        }
    }

    /// A password login on `server` that asks for a token pair by IQ; returns (access, refresh).
    private func tokensByIQ(_ cluster: ProsodyCluster, on server: ProsodyServer, user: String = "alice", password: String? = nil,
                            file: StaticString = #filePath, line: UInt = #line) throws -> (session: XMPPClient, access: String, refresh: String) {
        let session = try cluster.connect("\(user)-password@\(server.name)", to: server, jid: "\(user)@\(host)/desk",
                                          password: password ?? self.password)
        XCTAssertEqual(session.waitForSession(file: file, line: line), "\(user)@\(host)/desk", file: file, line: line)
        let answer = try session.send("request_tokens", file: file, line: line)
        let access = answer["access_token"] as? String ?? "", refresh = answer["refresh_token"] as? String ?? ""
        XCTAssertFalse(access.isEmpty || refresh.isEmpty, "token IQ answer: \(answer)", file: file, line: line)
        return (session, access, refresh)
    }

    /// Logs in with X-OAUTH and `token`; returns the client and the <success/> data (base64) once
    /// the session started, or fails the test.
    @discardableResult
    private func tokenLogin(_ cluster: ProsodyCluster, _ label: String, on server: ProsodyServer, token: String, resource: String,
                            file: StaticString = #filePath, line: UInt = #line) throws -> (client: XMPPClient, successData: String) {
        let client = try cluster.connect(label, to: server, jid: "alice@\(host)/\(resource)", token: token)
        XCTAssertEqual(client.waitForSession(file: file, line: line), "alice@\(host)/\(resource)", "\(label): X-OAUTH login",
                       file: file, line: line)
        let success = client.events("auth_success").first
        XCTAssertEqual(success?["mechanism"] as? String, "X-OAUTH", "\(label) used X-OAUTH: \(client.transcript)", file: file, line: line)
        return (client, success?["data"] as? String ?? "")
    }

    /// Logs in with X-OAUTH and `token`, expecting the SASL failure `condition`.
    private func refusedTokenLogin(_ cluster: ProsodyCluster, _ label: String, on server: ProsodyServer, token: String,
                                   condition: String, text: String? = nil, file: StaticString = #filePath, line: UInt = #line) throws {
        let client = try cluster.connect(label, to: server, jid: "alice@\(host)/\(label)", token: token)
        XCTAssertEqual(client.waitForAuthFailure(file: file, line: line), condition, "\(label)", file: file, line: line)
        if let text {
            XCTAssertEqual(client.events("failed_auth").first?["text"] as? String, text, "\(label) failure text", file: file, line: line)
        }
        client.stop()
    }

    // MARK: Tests

    /// Password login on A, tokens by IQ, X-OAUTH with the access token on A and B, with the
    /// refresh token on B (which yields a fresh access token that logs in on A); a revocation on
    /// node2 refuses the refresh token on both Prosodys, a new pair works, and a revocation on
    /// node1 refuses that one on both too.
    func testTokensByIQLogInOnBothProsodysAndRevocationOnEitherNodeRefusesRefreshTokens() throws {
        let cluster = try startProsodyCluster()
        let (alice, access, refresh) = try tokensByIQ(cluster, on: cluster.a)
        let features = try alice.send("disco_features")["features"] as? [String] ?? []
        XCTAssertTrue(features.contains("erlang-solutions.com:xmpp:token-auth:0"), "\(features)")
        assertToken(access, type: "access", validFor: 3600)
        assertToken(refresh, type: "refresh", validFor: 25 * 86400)

        // The access token logs in on A and, through node2, on B; <success/> carries nothing.
        let (_, accessSuccessOnA) = try tokenLogin(cluster, "access@A", on: cluster.a, token: access, resource: "phone")
        XCTAssertEqual(accessSuccessOnA, "", "an access-token login's <success/> is empty")
        try tokenLogin(cluster, "access@B", on: cluster.b, token: access, resource: "tablet")
        XCTAssertTrue(cluster.b.log.contains("Logged in with an access token"), "B logs the token login")

        // The refresh token logs in on B and yields a fresh access token (MongooseIM's cyrsasl_oauth).
        let (_, fresh) = try tokenLogin(cluster, "refresh@B", on: cluster.b, token: refresh, resource: "watch")
        assertToken(fresh, type: "access", validFor: 3600)
        // MongooseIM's format is deterministic (no nonce): a fresh token minted in the same
        // second as the first is byte-for-byte the same token, so only its expiry can be compared.
        XCTAssertGreaterThanOrEqual(Int(fields(fresh)[2]) ?? 0, Int(fields(access)[2]) ?? .max, "the fresh token does not expire before the first")
        try tokenLogin(cluster, "fresh-access@A", on: cluster.a, token: fresh, resource: "car")

        // A forged MAC and a garbage token are refused.
        var forged = fields(access)
        forged[forged.count - 1] = String(repeating: "0", count: 96)
        let forgedToken = Data(forged.joined(separator: "\0").utf8).base64EncodedString()
        try refusedTokenLogin(cluster, "forged", on: cluster.a, token: forgedToken, condition: "not-authorized", text: "Invalid token")
        try refusedTokenLogin(cluster, "garbage", on: cluster.b, token: Data("not a token".utf8).base64EncodedString(),
                              condition: "not-authorized")

        // Revocation on node2: refused on B at once and on A once node1 has it.
        try cluster.keystore.client("node2").revokeTokens(domain: host, user: "alice")
        waitUntilRevoked(cluster, on: "node1", refresh)
        for server in [cluster.a, cluster.b] {
            try refusedTokenLogin(cluster, "revoked@\(server.name)", on: server, token: refresh, condition: "not-authorized",
                                  text: "Token revoked")
        }
        // Access tokens are not revocable (MongooseIM's design): they expire within the hour.
        try tokenLogin(cluster, "access-after-revoke@B", on: cluster.b, token: access, resource: "laptop")

        // A new pair after the revocation carries the new floor and logs in; revoking on node1
        // refuses it on both Prosodys as well.
        let second = try alice.send("request_tokens")["refresh_token"] as? String ?? ""
        XCTAssertNotEqual(second, refresh)
        XCTAssertEqual(try verdict(cluster, "node2", second).valid, true)
        try tokenLogin(cluster, "second-refresh@A", on: cluster.a, token: second, resource: "tv")
        try cluster.keystore.client("node1").revokeTokens(domain: host, user: "alice")
        waitUntilRevoked(cluster, on: "node2", second)
        for server in [cluster.a, cluster.b] {
            try refusedTokenLogin(cluster, "second-revoked@\(server.name)", on: server, token: second, condition: "not-authorized",
                                  text: "Token revoked")
        }
        try alice.send("ping")
    }

    /// Tokens signed before a rotation of token_secret still log in after it, on both Prosodys
    /// (the keystore verifies against every active version), and new ones work too.
    func testTokensIssuedBeforeAKeyRotationStillLogInAfterIt() throws {
        let cluster = try startProsodyCluster()
        let (alice, access, refresh) = try tokensByIQ(cluster, on: cluster.b)
        let before = cluster.keystore.waitForAgreement(host, "token_secret")
        try cluster.keystore.client("node1").rotateKey(domain: host, name: "token_secret")
        waitUntil("both nodes serve the new token_secret") {
            let primaries = cluster.keystore.primaries(host, "token_secret")
            return primaries.count == 2 && Set(primaries.values).count == 1 && primaries.values.first != before
        }
        try tokenLogin(cluster, "old-access@A", on: cluster.a, token: access, resource: "one")
        try tokenLogin(cluster, "old-access@B", on: cluster.b, token: access, resource: "two")
        let (_, fresh) = try tokenLogin(cluster, "old-refresh@A", on: cluster.a, token: refresh, resource: "three")
        try tokenLogin(cluster, "fresh-after-rotation@B", on: cluster.b, token: fresh, resource: "four")
        let newAccess = try alice.send("request_tokens")["access_token"] as? String ?? ""
        try tokenLogin(cluster, "new-access@A", on: cluster.a, token: newAccess, resource: "five")
    }

    /// node1 down: X-OAUTH on A answers temporary-auth-failure (the client keeps its token) and the
    /// token IQ wait/service-unavailable, while B keeps working; once node1 is back, A logs in again.
    func testKeystoreDownRefusesXOAUTHWithTemporaryAuthFailure() throws {
        let cluster = try startProsodyCluster()
        let (alice, access, refresh) = try tokensByIQ(cluster, on: cluster.a)

        cluster.keystore.processes["node1"]!.stop()
        for (label, token) in [("access-down@A", access), ("refresh-down@A", refresh)] {
            try refusedTokenLogin(cluster, label, on: cluster.a, token: token, condition: "temporary-auth-failure")
        }
        let unavailable = alice.error("request_tokens")
        XCTAssertEqual(unavailable?.type, "wait")
        XCTAssertEqual(unavailable?.condition, "service-unavailable")
        try tokenLogin(cluster, "access@B", on: cluster.b, token: access, resource: "b")

        try cluster.keystore.start("node1")
        cluster.keystore.waitReady("node1")
        try tokenLogin(cluster, "refresh-back@A", on: cluster.a, token: refresh, resource: "back")
        XCTAssertFalse((try alice.send("request_tokens")["access_token"] as? String ?? "").isEmpty, "the IQ works again")
    }

    /// Deleting an account on A revokes its refresh tokens in the keystore, so B (where the
    /// account still exists) refuses them too; a password change on B does the same for alice on A.
    func testAccountDeletionAndPasswordChangeRevokeRefreshTokens() throws {
        let cluster = try startProsodyCluster(accounts: ["alice": password, "bob": "bob-password"])
        let (bob, _, bobsRefresh) = try tokensByIQ(cluster, on: cluster.a, user: "bob", password: "bob-password")
        try bob.send("delete_account")
        waitUntilRevoked(cluster, on: "node2", bobsRefresh)
        let refused = try cluster.connect("bob-refresh@B", to: cluster.b, jid: "bob@\(host)/phone", token: bobsRefresh)
        XCTAssertEqual(refused.waitForAuthFailure(), "not-authorized")
        XCTAssertTrue(cluster.a.log.contains("Revoked the refresh tokens of bob@\(host)"), "A logs the revocation")

        let (alice, _, refresh) = try tokensByIQ(cluster, on: cluster.b)
        try alice.send("change_password", ["password": "new-alice-password"])
        waitUntilRevoked(cluster, on: "node1", refresh)
        try refusedTokenLogin(cluster, "refresh-after-password-change@A", on: cluster.a, token: refresh, condition: "not-authorized",
                              text: "Token revoked")
    }
}

/// mod_keystore_tokens.lua's decisions against a scripted keystore peer on a real Unix socket
/// (503, 403, 400, provision and foreign tokens, a failed refresh issuance, revocation retries),
/// on Prosody's own loop and util.sasl.
final class KeystoreTokensModuleTests: ProsodyTestCase {
    func testModuleAgainstAScriptedKeystore() throws {
        let script = Products.repositoryRoot.appendingPathComponent("integrations/prosody/test/keystore_tokens_test.lua").path
        let result = try runCommand("/usr/bin/lua5.4", [script])
        XCTAssertEqual(result.status, 0, result.output)
        XCTAssertTrue(result.output.contains("mod_keystore_tokens.lua: all 10 steps passed"), result.output)
    }
}
