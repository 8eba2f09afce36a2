import Foundation
import XCTest
@testable import KeystoreClient

final class KeystoreClientTests: XCTestCase {
    static let keyJSON = #"{"domain":"first.com","name":"token_secret","type":"ram","versions":["#
        + #"{"id":"v2","key":"AAEC","primary":true,"created":"2026-11-23T04:00:00Z"},"#
        + #"{"id":7,"key":"AwQF","primary":false,"created":1732334400000,"future_field":{"x":1}}]}"#

    func testTypedCallsDecodeAndHitTheRightRoutes() throws {
        let server = try CannedServer { req in
            switch (req.method, req.path) {
            case ("GET", "/v1/health"): return Canned.json(200, #"{"status":"ok","ready":true,"node":"node1"}"#)
            case ("GET", "/v1/domains/first.com/keys"):
                return Canned.json(200, #"{"keys":[{"name":"token_secret","type":"ram","versions":2}]}"#)
            case ("GET", "/v1/domains/first.com/keys/token_secret"): return Canned.json(200, Self.keyJSON)
            case ("POST", "/v1/domains/first.com/keys/token_secret/rotate"):
                return Canned.json(200, #"{"domain":"first.com","name":"token_secret","type":"ram","versions":[{"id":"v3","primary":true,"created":"t"}]}"#)
            case ("GET", "/v1/cluster"):
                return Canned.json(200, #"{"node":"node1","members":[{"node":"node1","address":"127.0.0.1:7401","state":"alive","incarnation":3},"#
                    + #"{"node":"node2","address":"127.0.0.1:7402","state":"suspect"}],"psk_mismatches":[{"domain":"first.com","key":"psk","nodes":["node1","node2"]}]}"#)
            case ("POST", "/v1/domains/first.com/users/alice/certs"): return .bytes(Canned.response(201, "Created"))
            case ("GET", "/v1/domains/first.com/users/alice/certs"):
                return Canned.json(200, #"{"certs":[{"name":"laptop","fingerprint_sha256":"ab:cd","not_before":"2026-01-01T00:00:00Z","not_after":"2027-01-01T00:00:00Z","jids":["alice@first.com"],"no_cert_management":false}]}"#)
            case ("POST", "/v1/domains/first.com/users/alice/certs/laptop/revoke"): return Canned.json(200, "{}")
            case ("POST", "/v1/domains/first.com/sasl-external"): return Canned.json(200, #"{"jid":"alice@first.com"}"#)
            case ("POST", "/v1/reload"): return Canned.json(200, #"{"status":"reloaded"}"#)
            default: return Canned.json(404, #"{"error":"not_found","message":"no route \#(req.path)"}"#)
            }
        }
        defer { server.stop() }
        let client = KeystoreClient(socketPath: server.path, timeoutSeconds: 5)

        let health = try client.health()
        XCTAssertEqual(health.status, "ok")
        XCTAssertTrue(health.ready)
        XCTAssertEqual(health.node, "node1")

        XCTAssertEqual(try client.listKeys(domain: "first.com").map(\.name), ["token_secret"])
        let key = try client.getKey(domain: "first.com", name: "token_secret")
        XCTAssertEqual(key.versions.map(\.id), ["v2", "7"])
        XCTAssertEqual(key.versions.map(\.created), ["2026-11-23T04:00:00Z", "1732334400000"])
        XCTAssertEqual(key.primary?.key, "AAEC")
        XCTAssertEqual(try client.rotateKey(domain: "first.com", name: "token_secret").primary?.id, "v3")

        let cluster = try client.clusterStatus()
        XCTAssertEqual(cluster.members.map(\.state), ["alive", "suspect"])
        XCTAssertEqual(cluster.members[0].fields["incarnation"], .number(3))
        XCTAssertEqual(cluster.pskMismatches.count, 1)

        XCTAssertNil(try client.addCert(domain: "first.com", user: "alice", name: "laptop",
                                        certificate: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
                                        noCertManagement: true))
        let added = try XCTUnwrap(server.requests.last)
        let addBody = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(added.body)) as? [String: Any])
        XCTAssertEqual(addBody["name"] as? String, "laptop")
        XCTAssertEqual(addBody["no_cert_management"] as? Bool, true)
        XCTAssertEqual(addBody["certificate"] as? String,
                       "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")

        XCTAssertEqual(try client.listCerts(domain: "first.com", user: "alice").first?.jids, ["alice@first.com"])
        try client.revokeCert(domain: "first.com", user: "alice", name: "laptop")
        XCTAssertEqual(try client.verifyCert(domain: "first.com", certificate: "AAAA", authzid: "alice@first.com"),
                       "alice@first.com")
        let verify = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(server.requests.last?.body ?? [])) as? [String: String])
        XCTAssertEqual(verify, ["certificate": "AAAA", "authzid": "alice@first.com"])
        XCTAssertEqual(try client.reload()["status"], .string("reloaded"))

        do {
            try client.disableCert(domain: "first.com", user: "alice", name: "nope")
            XCTFail("expected not_found")
        } catch let KeystoreClientError.api(status, code, message) {
            XCTAssertEqual(status, 404)
            XCTAssertEqual(code, "not_found")
            XCTAssertEqual(message, "no route /v1/domains/first.com/users/alice/certs/nope/disable")
        }
    }

    func testAPIErrorWithoutJSONBodyUsesStatusLine() {
        let html = HTTPResponse(status: 502, reason: "Bad Gateway", body: Array("<html>".utf8))
        XCTAssertEqual(KeystoreClient.apiError(from: html), .api(status: 502, code: "http_502", message: "HTTP 502 Bad Gateway"))
        let json = HTTPResponse(status: 503, reason: "Service Unavailable",
                                body: Array(#"{"error":"not_ready","message":"cluster join in progress"}"#.utf8))
        XCTAssertEqual(KeystoreClient.apiError(from: json), .api(status: 503, code: "not_ready", message: "cluster join in progress"))
        XCTAssertEqual(KeystoreClientError.api(status: 503, code: "not_ready", message: "m").description, "m (not_ready, HTTP 503)")
    }

    func testPathSegmentsArePercentEncoded() throws {
        XCTAssertEqual(APIRequest.encodeSegment("a/b%c@d e?f#g"), "a%2Fb%25c%40d%20e%3Ff%23g")
        XCTAssertEqual(APIRequest.encodeSegment("xn--bcher-kva.example_1~"), "xn--bcher-kva.example_1~")
        XCTAssertEqual(APIRequest.encodeSegment("é"), "%C3%A9")
        XCTAssertEqual(try APIRequest.disableCert(domain: "ex/am%ple.com", user: "al@ice", name: "..x").path,
                       "/v1/domains/ex%2Fam%25ple.com/users/al%40ice/certs/..x/disable")
        for bad in ["", ".", ".."] {
            XCTAssertThrowsError(try APIRequest.getKey(domain: "d", name: bad)) { error in
                guard case KeystoreClientError.invalidArgument = error else { return XCTFail("\(error)") }
            }
        }
        // And on the wire, as the daemon sees it.
        let server = try CannedServer { _ in Canned.json(200, #"{"certs":[]}"#) }
        defer { server.stop() }
        _ = try KeystoreClient(socketPath: server.path).listCerts(domain: "a/b%c", user: "u@x")
        XCTAssertEqual(server.requests.first?.path, "/v1/domains/a%2Fb%25c/users/u%40x/certs")
    }

    func testMissingFieldsAreMalformedResponsesNamingTheField() {
        XCTAssertThrowsError(try KeyResponse(json: JSONValue.parse(Array(#"{"domain":"d","name":"n","type":"ram"}"#.utf8)))) { error in
            XCTAssertEqual(error as? KeystoreClientError,
                           .malformedResponse("field \"versions\" of key response is missing or not an array"))
        }
        XCTAssertThrowsError(try Health(json: .array([])))
    }

    func testJSONValueRoundTripsScalarsAndCertificateEncoding() throws {
        let v = try JSONValue.parse(Array(#"{"b":true,"n":1.5,"i":42,"s":"x\"y","a":[null,false]}"#.utf8))
        XCTAssertEqual(v["b"], .bool(true))
        XCTAssertEqual(v["i"]?.intValue, 42)
        XCTAssertEqual(v.description, #"{"a":[null,false],"b":true,"i":42,"n":1.5,"s":"x\"y"}"#)
        XCTAssertThrowsError(try JSONValue.parse(Array("{nope".utf8)))

        XCTAssertEqual(CertificateEncoding.fieldValue(forFile: Array("-----BEGIN CERTIFICATE-----\nAA==\n".utf8)),
                       "-----BEGIN CERTIFICATE-----\nAA==\n")
        XCTAssertEqual(CertificateEncoding.fieldValue(forFile: [0x30, 0x82, 0x01, 0xff]), "MIIB/w==")
    }
}
