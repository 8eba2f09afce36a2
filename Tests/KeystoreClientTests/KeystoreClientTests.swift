import Foundation
import KeystoreAPI
import KeystoreJSON
import XCTest
@testable import KeystoreClient

final class KeystoreClientTests: XCTestCase {
    static let keyJSON = #"{"domain":"first.com","name":"token_secret","type":"ram","versions":["#
        + #"{"id":"v2","key":"AAEC","primary":true,"created":"2026-11-23T04:00:00Z"},"#
        + #"{"id":"7","key":"AwQF","primary":false,"created":"2024-11-23T04:00:00.000Z","expires":"2026-11-24T04:00:00.000Z","future_field":{"x":1}}]}"#

    func testTypedCallsDecodeAndHitTheRightRoutes() throws {
        let server = try CannedServer { req in
            switch (req.method, req.path) {
            case ("GET", "/v1/health"): return Canned.json(200, #"{"status":"ok","ready":true,"node":"node1"}"#)
            case ("GET", "/v1/domains/first.com/keys"):
                return Canned.json(200, #"{"domain":"first.com","keys":[{"name":"token_secret","type":"ram","versions":2}]}"#)
            case ("GET", "/v1/domains/first.com/keys/token_secret"): return Canned.json(200, Self.keyJSON)
            case ("POST", "/v1/domains/first.com/keys/token_secret/rotate"):
                return Canned.json(200, #"{"domain":"first.com","name":"token_secret","type":"ram","versions":[{"id":"v3","primary":true,"created":"t"}]}"#)
            case ("GET", "/v1/cluster"):
                return Canned.json(200, #"{"node":"node1","cluster":"c","ready":true,"members":[{"node":"node1","address":"127.0.0.1:7401","state":"alive","incarnation":3},"#
                    + #"{"node":"node2","address":"127.0.0.1:7402","state":"suspect"}],"psk_mismatches":[{"domain":"first.com","name":"psk","nodes":["node1","node2"],"fingerprints":{}}]}"#)
            case ("POST", "/v1/domains/first.com/users/alice/certs"):
                return .bytes(Canned.response(201, "Created", body: Self.entryJSON(state: "active")))
            case ("GET", "/v1/domains/first.com/users/alice/certs"):
                return Canned.json(200, #"{"user":"alice@first.com","certs":["# + Self.entryJSON(state: "active") + "]}")
            case ("POST", "/v1/domains/first.com/users/alice/certs/laptop/revoke"):
                return Canned.json(200, Self.removalJSON(states: ["revoked"]))
            case ("POST", "/v1/domains/first.com/sasl-external"):
                return Canned.json(200, #"{"jid":"alice@first.com","name":"laptop","fingerprint_sha256":"abcd","no_cert_management":false,"not_after":"2027-01-01T00:00:00.000Z"}"#)
            case ("POST", "/v1/reload"): return Canned.json(200, #"{"reloaded":true,"changed":["first.com/psk"]}"#)
            default: return Canned.json(404, #"{"error":"not_found","message":"no route \#(req.path)"}"#)
            }
        }
        defer { server.stop() }
        let client = KeystoreClient(socketPath: server.path, timeoutSeconds: 5)

        let health = try client.health()
        XCTAssertEqual(health.status, .ok)
        XCTAssertTrue(health.ready)
        XCTAssertEqual(health.node, "node1")

        XCTAssertEqual(try client.listKeys(domain: "first.com").keys.map(\.name), ["token_secret"])
        let key = try client.getKey(domain: "first.com", name: "token_secret")
        XCTAssertEqual(key.versions.map(\.id), ["v2", "7"])
        XCTAssertEqual(key.versions.map(\.created), ["2026-11-23T04:00:00Z", "2024-11-23T04:00:00.000Z"])
        XCTAssertEqual(key.versions.map(\.expires), [nil, "2026-11-24T04:00:00.000Z"])
        XCTAssertEqual(key.primary?.key, "AAEC")
        XCTAssertEqual(try client.rotateKey(domain: "first.com", name: "token_secret").primary?.id, "v3")

        // "incarnation" is not in the contract: ignored, not an error.
        let cluster = try client.clusterStatus()
        XCTAssertEqual(cluster.members.map(\.state), [.alive, .suspect])
        XCTAssertEqual(cluster.pskMismatches, [PSKMismatchInfo(domain: "first.com", name: "psk", nodes: ["node1", "node2"], fingerprints: [:])])

        let added = try client.addCert(domain: "first.com", user: "alice", name: "laptop",
                                       certificate: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
                                       noCertManagement: true)
        XCTAssertEqual(added.jids, ["alice@first.com"])
        let addBody = try StrictJSON.decode(AddCertificateRequest.self, from: try XCTUnwrap(server.requests.last).body)
        XCTAssertEqual(addBody.name, "laptop")
        XCTAssertEqual(addBody.noCertManagement, true)
        XCTAssertEqual(addBody.certificate, "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")

        XCTAssertEqual(try client.listCerts(domain: "first.com", user: "alice").certs.first?.jids, ["alice@first.com"])
        XCTAssertEqual(try client.revokeCert(domain: "first.com", user: "alice", name: "laptop").certs.map(\.state), [.revoked])
        XCTAssertEqual(try client.verifyCert(domain: "first.com", certificate: "AAAA", authzid: "alice@first.com").jid,
                       "alice@first.com")
        let verify = try StrictJSON.decode(SASLExternalRequest.self, from: server.requests.last?.body ?? [])
        XCTAssertEqual(verify, SASLExternalRequest(certificate: "AAAA", authzid: "alice@first.com"))
        XCTAssertEqual(try client.reload(), ReloadResponse(reloaded: true, changed: ["first.com/psk"], config: []))

        do {
            try client.disableCert(domain: "first.com", user: "alice", name: "nope")
            XCTFail("expected not_found")
        } catch let KeystoreClientError.api(status, code, message) {
            XCTAssertEqual(status, 404)
            XCTAssertEqual(code, "not_found")
            XCTAssertEqual(message, "no route /v1/domains/first.com/users/alice/certs/nope/disable")
        }
    }

    static func entryJSON(state: String, name: String = "laptop") -> String {
        #"{"name":"\#(name)","fingerprint_sha256":"abcd","not_before":"2026-01-01T00:00:00.000Z","not_after":"2027-01-01T00:00:00.000Z","#
            + #""jids":["alice@first.com"],"no_cert_management":false,"added":"2026-06-01T00:00:00.000Z","state":"\#(state)""#
            + (state == "revoked" ? "" : #","certificate":"MIIB""#) + "}"
    }

    /// A disable/revoke answer: the first entry's fields plus `certs` with every entry removed.
    static func removalJSON(states: [String]) -> String {
        String(entryJSON(state: states[0]).dropLast()) + #","certs":["# + states.map { entryJSON(state: $0) }.joined(separator: ",") + "]}"
    }

    static func entry(state: CertificateState, name: String = "laptop") -> CertificateEntry {
        CertificateEntry(name: name, fingerprintSHA256: "abcd", notBefore: "2026-01-01T00:00:00.000Z",
                         notAfter: "2027-01-01T00:00:00.000Z", jids: ["alice@first.com"], noCertManagement: false,
                         added: "2026-06-01T00:00:00.000Z", state: state, certificate: state == .revoked ? nil : "MIIB")
    }

    /// One route's exchange: what the client must send, what the canned daemon answers, and a
    /// call through the typed method that checks the decoded answer.
    struct RouteExchange {
        var method: String
        var path: String
        /// Exact request body bytes; nil for none.
        var body: String?
        /// The body decoded strictly, as the server will: proves it accepts what the client sends.
        var strictCheck: (([UInt8]) throws -> Void)?
        var answer: CannedReply
        var call: (KeystoreClient) throws -> Void
    }

    /// Exhaustive over `Endpoint`: a new route does not compile until it is tested here.
    func exchange(_ endpoint: Endpoint) -> RouteExchange {
        func ok(_ json: String) -> CannedReply { Canned.json(200, json) }
        func strict<T: StrictlyDecodable & Equatable>(_ expected: T) -> ([UInt8]) throws -> Void {
            { XCTAssertEqual(try StrictJSON.decode(T.self, from: $0), expected, "\(endpoint)") }
        }
        switch endpoint {
        case .health:
            return RouteExchange(method: "GET", path: "/v1/health", answer: ok(
                #"{"status":"degraded","ready":false,"node":"node1","cluster":"c1","version":"0.2.0","memory_locked":false,"problems":["PSK first.com/psk differs"],"new":1}"#)) {
                XCTAssertEqual(try $0.health(), HealthResponse(status: .degraded, ready: false, node: "node1", cluster: "c1", version: "0.2.0",
                                                               memoryLocked: false, problems: ["PSK first.com/psk differs"]))
            }
        case .metrics:
            return RouteExchange(method: "GET", path: "/metrics",
                                 answer: .bytes(Canned.response(body: "# TYPE keystore_ready gauge\nkeystore_ready 1\n"))) {
                XCTAssertEqual(try $0.metrics(), "# TYPE keystore_ready gauge\nkeystore_ready 1\n")
            }
        case .cluster:
            return RouteExchange(method: "GET", path: "/v1/cluster", answer: ok(
                #"{"node":"node1","cluster":"c1","ready":true,"members":[{"node":"node1","address":"a1","state":"alive","version":"0.2.0","sync":"ready"},"#
                + #"{"node":"node2","address":"a2","state":"left","last_contact":"2026-12-06T13:28:38.123Z","sync":"in_sync"}],"#
                + #""psk_mismatches":[{"domain":"first.com","name":"psk","nodes":["node1","node2"],"fingerprints":{"node1":"ab","node2":"cd"}}]}"#)) {
                XCTAssertEqual(try $0.clusterStatus(), ClusterResponse(
                    node: "node1", cluster: "c1", ready: true,
                    members: [ClusterMemberInfo(node: "node1", address: "a1", state: .alive, lastContact: nil, version: "0.2.0", sync: .ready),
                              ClusterMemberInfo(node: "node2", address: "a2", state: .left, lastContact: "2026-12-06T13:28:38.123Z",
                                                version: nil, sync: .inSync)],
                    pskMismatches: [PSKMismatchInfo(domain: "first.com", name: "psk", nodes: ["node1", "node2"],
                                                    fingerprints: ["node1": "ab", "node2": "cd"])]))
            }
        case .reload:
            return RouteExchange(method: "POST", path: "/v1/reload",
                                 answer: ok(#"{"reloaded":true,"changed":["first.com/psk"],"config":["domain second.com added"]}"#)) {
                XCTAssertEqual(try $0.reload(), ReloadResponse(reloaded: true, changed: ["first.com/psk"], config: ["domain second.com added"]))
            }
        case .events:
            return RouteExchange(method: "GET", path: "/v1/events?since=c%2F7", answer: .bytes(Canned.chunked([
                #"{"type":"resync","cursor":"c9","reason":"gap"}"# + "\n",
                #"{"type":"cert_revoked","seq":10,"cursor":"c10","domain":"first.com","user":"alice@first.com","fingerprint_sha256":"abcd","origin":"node2"}"# + "\n",
            ]))) {
                var events: [Event] = []
                try $0.events(since: "c/7") { events.append($0); return true }
                var resync = Event(type: "resync")
                resync.cursor = "c9"; resync.reason = "gap"
                var revoked = Event(type: "cert_revoked")
                revoked.seq = 10; revoked.cursor = "c10"; revoked.domain = "first.com"; revoked.user = "alice@first.com"
                revoked.fingerprintSHA256 = "abcd"; revoked.origin = "node2"
                XCTAssertEqual(events, [resync, revoked])
                XCTAssertEqual(events.map(\.eventType), [.resync, .certificateRevoked])
            }
        case .listKeys:
            return RouteExchange(method: "GET", path: "/v1/domains/first.com/keys", answer: ok(
                #"{"domain":"first.com","keys":[{"name":"token_secret","type":"ram","versions":2},{"name":"fresh","type":"ram","versions":null},{"name":"psk","type":"file","versions":1}]}"#)) {
                XCTAssertEqual(try $0.listKeys(domain: "first.com"), KeyListResponse(domain: "first.com", keys: [
                    KeySummary(name: "token_secret", type: .ram, versions: 2), KeySummary(name: "fresh", type: .ram, versions: nil),
                    KeySummary(name: "psk", type: .file, versions: 1)]))
            }
        case .getKey:
            return RouteExchange(method: "GET", path: "/v1/domains/first.com/keys/token_secret", answer: ok(Self.keyJSON)) {
                XCTAssertEqual(try $0.getKey(domain: "first.com", name: "token_secret"), KeyResponse(
                    domain: "first.com", name: "token_secret", type: .ram,
                    versions: [KeyVersionInfo(id: "v2", key: "AAEC", primary: true, created: "2026-11-23T04:00:00Z", expires: nil),
                               KeyVersionInfo(id: "7", key: "AwQF", primary: false, created: "2024-11-23T04:00:00.000Z",
                                              expires: "2026-11-24T04:00:00.000Z")]))
            }
        case .rotateKey:
            return RouteExchange(method: "POST", path: "/v1/domains/first.com/keys/token_secret/rotate", answer: ok(
                #"{"domain":"first.com","name":"token_secret","type":"ram","versions":[{"id":"v3","primary":true,"created":"c3"},{"id":"v2","primary":false,"created":"c2","expires":"e2"}]}"#)) {
                XCTAssertEqual(try $0.rotateKey(domain: "first.com", name: "token_secret").versions,
                               [KeyVersionInfo(id: "v3", key: nil, primary: true, created: "c3", expires: nil),
                                KeyVersionInfo(id: "v2", key: nil, primary: false, created: "c2", expires: "e2")])
            }
        case .signHMAC:
            return RouteExchange(method: "POST", path: "/v1/domains/first.com/keys/token_secret/hmac",
                                 body: #"{"algorithm":"sha384","input":"aGVsbG8="}"#,
                                 strictCheck: strict(HMACRequest(input: "aGVsbG8=", algorithm: .sha384)),
                                 answer: ok(#"{"mac":"bWFj","version":"v2","algorithm":"sha384"}"#)) {
                XCTAssertEqual(try $0.signHMAC(domain: "first.com", name: "token_secret", input: Array("hello".utf8), algorithm: .sha384),
                               HMACResponse(mac: "bWFj", version: "v2", algorithm: .sha384))
            }
        case .verifyHMAC:
            return RouteExchange(method: "POST", path: "/v1/domains/first.com/keys/token_secret/verify",
                                 body: #"{"algorithm":"sha256","input":"aGVsbG8=","mac":"bWFj"}"#,
                                 strictCheck: strict(VerifyMACRequest(input: "aGVsbG8=", mac: "bWFj", algorithm: .sha256)),
                                 answer: ok(#"{"valid":true,"version":"v1"}"#)) {
                XCTAssertEqual(try $0.verifyHMAC(domain: "first.com", name: "token_secret", input: Array("hello".utf8), mac: "bWFj"),
                               VerifyMACResponse(valid: true, version: "v1"))
            }
        case .listCerts:
            return RouteExchange(method: "GET", path: "/v1/domains/first.com/users/alice/certs?all=1", answer: ok(
                #"{"user":"alice@first.com","certs":["# + Self.entryJSON(state: "disabled") + "," + Self.entryJSON(state: "revoked", name: "old") + "]}")) {
                XCTAssertEqual(try $0.listCerts(domain: "first.com", user: "alice", includeRemoved: true),
                               CertificateListResponse(user: "alice@first.com", certs: [Self.entry(state: .disabled), Self.entry(state: .revoked, name: "old")]))
            }
        case .addCert:
            return RouteExchange(method: "POST", path: "/v1/domains/first.com/users/alice/certs",
                                 body: #"{"certificate":"MIIB","name":"laptop","no_cert_management":true}"#,
                                 strictCheck: strict(AddCertificateRequest(name: "laptop", certificate: "MIIB", noCertManagement: true)),
                                 answer: .bytes(Canned.response(201, "Created", body: Self.entryJSON(state: "active")))) {
                XCTAssertEqual(try $0.addCert(domain: "first.com", user: "alice", name: "laptop", certificate: "MIIB", noCertManagement: true),
                               Self.entry(state: .active))
            }
        case .disableCert:
            return RouteExchange(method: "POST", path: "/v1/domains/first.com/users/alice/certs/laptop/disable", answer: ok(
                Self.removalJSON(states: ["disabled"]))) {
                XCTAssertEqual(try $0.disableCert(domain: "first.com", user: "alice", name: "laptop"),
                               CertificateRemovalResponse(certs: [Self.entry(state: .disabled)]))
            }
        case .revokeCert:
            return RouteExchange(method: "POST", path: "/v1/domains/first.com/users/alice/certs/laptop/revoke", answer: ok(
                Self.removalJSON(states: ["revoked", "revoked"]))) {
                XCTAssertEqual(try $0.revokeCert(domain: "first.com", user: "alice", name: "laptop"),
                               CertificateRemovalResponse(certs: [Self.entry(state: .revoked), Self.entry(state: .revoked)]))
            }
        case .revokeAllCerts:
            return RouteExchange(method: "POST", path: "/v1/domains/first.com/users/alice/certs/revoke-all", answer: ok(
                #"{"user":"alice@first.com","certs":["# + Self.entryJSON(state: "revoked") + "]}")) {
                XCTAssertEqual(try $0.revokeAllCerts(domain: "first.com", user: "alice"),
                               CertificateListResponse(user: "alice@first.com", certs: [Self.entry(state: .revoked)]))
            }
        case .certStatus:
            let refs = [CertificateRef(user: "alice", fingerprintSHA256: "abcd"), CertificateRef(user: "bob@first.com", fingerprintSHA256: "ef01")]
            return RouteExchange(method: "POST", path: "/v1/domains/first.com/certs/status",
                                 body: #"{"certs":[{"fingerprint_sha256":"abcd","user":"alice"},{"fingerprint_sha256":"ef01","user":"bob@first.com"}]}"#,
                                 strictCheck: strict(CertificateStatusRequest(certs: refs)),
                                 answer: ok(#"{"certs":[{"user":"alice@first.com","fingerprint_sha256":"abcd","state":"expired"},{"user":"bob@first.com","fingerprint_sha256":"ef01","state":"unknown"}]}"#)) {
                XCTAssertEqual(try $0.certificateStatus(domain: "first.com", certs: refs), CertificateStatusResponse(certs: [
                    CertificateStatusEntry(user: "alice@first.com", fingerprintSHA256: "abcd", state: .expired),
                    CertificateStatusEntry(user: "bob@first.com", fingerprintSHA256: "ef01", state: .unknown)]))
            }
        case .saslExternal:
            return RouteExchange(method: "POST", path: "/v1/domains/first.com/sasl-external",
                                 body: #"{"certificate":"MIIB"}"#, strictCheck: strict(SASLExternalRequest(certificate: "MIIB")),
                                 answer: ok(#"{"jid":"alice@first.com/laptop","name":"laptop","fingerprint_sha256":"abcd","no_cert_management":true,"not_after":"2027-01-01T00:00:00.000Z"}"#)) {
                XCTAssertEqual(try $0.verifyCert(domain: "first.com", certificate: "MIIB"), SASLExternalResponse(
                    jid: "alice@first.com/laptop", name: "laptop", fingerprintSHA256: "abcd", noCertManagement: true,
                    notAfter: "2027-01-01T00:00:00.000Z"))
            }
        case .issueToken:
            return RouteExchange(method: "POST", path: "/v1/domains/first.com/tokens",
                                 body: #"{"jid":"alice@first.com","type":"provision","valid_for_s":60,"vcard":"<vCard xmlns=\"vcard-temp\"/>"}"#,
                                 strictCheck: strict(IssueTokenRequest(type: .provision, jid: "alice@first.com", validForSeconds: 60,
                                                                       vcard: #"<vCard xmlns="vcard-temp"/>"#)),
                                 answer: ok(#"{"token":"dG9r","expires":"2026-12-06T14:28:38.123Z","version":"v2"}"#)) {
                XCTAssertEqual(try $0.issueToken(domain: "first.com", type: .provision, jid: "alice@first.com", validForSeconds: 60,
                                                 vcard: #"<vCard xmlns="vcard-temp"/>"#),
                               IssueTokenResponse(token: "dG9r", expires: "2026-12-06T14:28:38.123Z", version: "v2", sequence: nil))
            }
        case .verifyToken:
            return RouteExchange(method: "POST", path: "/v1/domains/first.com/tokens/verify",
                                 body: #"{"token":"dG9r"}"#, strictCheck: strict(VerifyTokenRequest(token: "dG9r")),
                                 answer: ok(#"{"valid":true,"type":"refresh","jid":"alice@first.com","expires":"e","sequence":4}"#)) {
                XCTAssertEqual(try $0.verifyToken(domain: "first.com", token: "dG9r"),
                               VerifyTokenResponse(valid: true, type: .refresh, jid: "alice@first.com", expires: "e", sequence: 4))
            }
        case .revokeTokens:
            return RouteExchange(method: "POST", path: "/v1/domains/first.com/users/alice/tokens/revoke",
                                 answer: ok(#"{"user":"alice@first.com","sequence":5}"#)) {
                XCTAssertEqual(try $0.revokeTokens(domain: "first.com", user: "alice"), RevokeTokensResponse(user: "alice@first.com", sequence: 5))
            }
        }
    }

    func testEveryRouteIsSentAsTheRouteTableSaysAndItsAnswerDecodes() throws {
        for endpoint in Endpoint.allCases {
            let expected = exchange(endpoint)
            // The expectation is written out by hand; it must also agree with the route table.
            XCTAssertEqual(expected.method, endpoint.spec.method.rawValue, "\(endpoint)")
            let answer = expected.answer
            let server = try CannedServer { _ in answer }
            defer { server.stop() }
            try expected.call(KeystoreClient(socketPath: server.path, timeoutSeconds: 5))
            XCTAssertEqual(server.requests.count, 1, "\(endpoint)")
            let sent = try XCTUnwrap(server.requests.first)
            XCTAssertEqual(sent.method, expected.method, "\(endpoint)")
            XCTAssertEqual(sent.path, expected.path, "\(endpoint)")
            XCTAssertEqual(String(decoding: sent.body, as: UTF8.self), expected.body ?? "", "\(endpoint)")
            if expected.body != nil {
                XCTAssertEqual(sent.header("content-type"), "application/json", "\(endpoint)")
            }
            try expected.strictCheck?(sent.body)
        }
    }

    func testOptionalAnswerFieldsMayBeAbsentAndVerdictsCarryReasons() throws {
        func decode<T: Decodable>(_ type: T.Type, _ json: String) throws -> T {
            try KeystoreClient.decode(type, from: HTTPResponse(status: 200, body: Array(json.utf8)))
        }
        XCTAssertEqual(try decode(VerifyMACResponse.self, #"{"valid":false}"#), VerifyMACResponse(valid: false, version: nil))
        XCTAssertEqual(try decode(VerifyTokenResponse.self, #"{"valid":false,"reason":"revoked"}"#),
                       VerifyTokenResponse(valid: false, reason: .revoked))
        XCTAssertEqual(try decode(HealthResponse.self, #"{"status":"ok","ready":true,"node":"n"}"#),
                       HealthResponse(status: .ok, ready: true, node: "n", cluster: "", version: "", memoryLocked: true, problems: []))
        XCTAssertEqual(try decode(ReloadResponse.self, #"{"reloaded":true}"#), ReloadResponse(reloaded: true, changed: [], config: []))
        XCTAssertEqual(try decode(Event.self, #"{"type":"some_future_event","cursor":"c1","extra":[1]}"#).eventType, nil)
        XCTAssertEqual(try decode(APIErrorBody.self, #"{"error":"teapot","message":"m"}"#).code, nil)
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
        XCTAssertEqual(PercentEncoding.encode("a/b%c@d e?f#g"), "a%2Fb%25c%40d%20e%3Ff%23g")
        XCTAssertEqual(PercentEncoding.encode("xn--bcher-kva.example_1~"), "xn--bcher-kva.example_1~")
        XCTAssertEqual(PercentEncoding.encode("é"), "%C3%A9")
        XCTAssertEqual(try APIRequest.disableCert(domain: "ex/am%ple.com", user: "al@ice", name: "..x").path,
                       "/v1/domains/ex%2Fam%25ple.com/users/al%40ice/certs/..x/disable")
        for bad in ["", ".", ".."] {
            XCTAssertThrowsError(try APIRequest.getKey(domain: "d", name: bad)) { error in
                guard case KeystoreClientError.invalidArgument = error else { return XCTFail("\(error)") }
            }
        }
        // And on the wire, as the daemon sees it.
        let server = try CannedServer { _ in Canned.json(200, #"{"user":"u@x","certs":[]}"#) }
        defer { server.stop() }
        _ = try KeystoreClient(socketPath: server.path).listCerts(domain: "a/b%c", user: "u@x")
        XCTAssertEqual(server.requests.first?.path, "/v1/domains/a%2Fb%25c/users/u%40x/certs")
    }

    func testMissingFieldsAreMalformedResponsesNamingTheField() {
        let noVersions = HTTPResponse(status: 200, body: Array(#"{"domain":"d","name":"n","type":"ram"}"#.utf8))
        XCTAssertThrowsError(try KeystoreClient.decode(KeyResponse.self, from: noVersions)) { error in
            XCTAssertEqual(error as? KeystoreClientError,
                           .malformedResponse("HTTP 200 answer is not a valid KeyResponse: missing field \"versions\""))
        }
        let wrongType = HTTPResponse(status: 200, body: Array(#"{"valid":"yes"}"#.utf8))
        XCTAssertThrowsError(try KeystoreClient.decode(VerifyMACResponse.self, from: wrongType)) { error in
            XCTAssertEqual(error as? KeystoreClientError,
                           .malformedResponse("HTTP 200 answer is not a valid VerifyMACResponse: field \"valid\": expected true or false"))
        }
        XCTAssertThrowsError(try KeystoreClient.decode(HealthResponse.self, from: HTTPResponse(status: 200, body: Array("[]".utf8))))
        XCTAssertThrowsError(try KeystoreClient.decode(HealthResponse.self, from: HTTPResponse(status: 200, body: Array("{nope".utf8)))) { error in
            guard case KeystoreClientError.malformedResponse = error else { return XCTFail("\(error)") }
        }
    }

    func testCertificateEncoding() throws {
        XCTAssertEqual(CertificateEncoding.fieldValue(forFile: Array("-----BEGIN CERTIFICATE-----\nAA==\n".utf8)),
                       "-----BEGIN CERTIFICATE-----\nAA==\n")
        XCTAssertEqual(CertificateEncoding.fieldValue(forFile: [0x30, 0x82, 0x01, 0xff]), "MIIB/w==")
    }
}
