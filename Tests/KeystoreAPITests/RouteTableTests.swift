import KeystoreAPI
import XCTest

final class RouteTableTests: XCTestCase {
    private func segments(_ path: String) -> [String] {
        path.split(separator: "?")[0].split(separator: "/", omittingEmptySubsequences: false).dropFirst()
            .map { PercentEncoding.decode($0.utf8)! }
    }

    func testEveryRouteMatchesThePathItBuildsWithItsParameters() throws {
        let parameters = RouteParameters(domain: "first.com", key: "token/secret", user: "alice?x", name: "my phone#1")
        for endpoint in Endpoint.allCases {
            let path = try endpoint.path(parameters)
            let match = RouteTable.match(method: endpoint.spec.method.rawValue, segments: segments(path))
            guard case .matched(let found, let got) = match else { return XCTFail("\(endpoint): \(path) gave \(match)") }
            XCTAssertEqual(found, endpoint, path)
            for case .parameter(let p) in endpoint.spec.segments { XCTAssertEqual(got[p], parameters[p], "\(endpoint) \(p)") }
        }
    }

    func testTemplatesAreUniquePerMethod() {
        var seen = Set<String>()
        for endpoint in Endpoint.allCases {
            XCTAssertTrue(seen.insert("\(endpoint.spec.method) \(endpoint.spec.template)").inserted, "\(endpoint)")
        }
    }

    func testWrongMethodOnAKnownPathIsMethodNotAllowedAndUnknownPathsAreNotFound() {
        XCTAssertEqual(RouteTable.match(method: "POST", segments: ["v1", "domains", "d", "keys", "k"]), .methodNotAllowed(allowed: [.GET]))
        XCTAssertEqual(RouteTable.match(method: "DELETE", segments: ["v1", "domains", "d", "users", "u", "certs"]),
                       .methodNotAllowed(allowed: [.GET, .POST]))
        XCTAssertEqual(RouteTable.match(method: "GET", segments: ["v1", "domains", "d", "nope"]), .notFound)
        XCTAssertEqual(RouteTable.match(method: "GET", segments: ["v2", "health"]), .notFound)
    }

    func testACertificateNamedLikeAnActionIsStillACertificateName() {
        XCTAssertEqual(RouteTable.match(method: "POST", segments: ["v1", "domains", "d", "users", "u", "certs", "revoke-all", "revoke"]),
                       .matched(.revokeCert, RouteParameters(domain: "d", user: "u", name: "revoke-all")))
        XCTAssertEqual(RouteTable.match(method: "POST", segments: ["v1", "domains", "d", "users", "u", "certs", "revoke-all"]),
                       .matched(.revokeAllCerts, RouteParameters(domain: "d", user: "u")))
    }

    func testPathBuildingRefusesEmptyAndDotSegments() {
        XCTAssertThrowsError(try Endpoint.getKey.path(RouteParameters(domain: "d", key: "")))
        XCTAssertThrowsError(try Endpoint.getKey.path(RouteParameters(domain: "..", key: "k")))
        XCTAssertThrowsError(try Endpoint.getKey.path(RouteParameters(domain: "d")))
        XCTAssertEqual(try Endpoint.listCerts.path(RouteParameters(domain: "d", user: "a b"), query: [("all", "1")]),
                       "/v1/domains/d/users/a%20b/certs?all=1")
    }

    func testQueryParametersAreParsedNotSearched() throws {
        XCTAssertEqual(try QueryParameters(parsing: "all=1", allowed: ["all"]).flag("all"), true)
        XCTAssertEqual(try QueryParameters(parsing: "all=true", allowed: ["all"]).flag("all"), true)
        XCTAssertEqual(try QueryParameters(parsing: "", allowed: ["all"]).flag("all"), false)
        XCTAssertEqual(try QueryParameters(parsing: "all=yes", allowed: ["all"]).flag("all"), nil)
        XCTAssertThrowsError(try QueryParameters(parsing: "recall=1", allowed: ["all"])) { error in
            XCTAssertEqual(error as? QueryParameters.ParseError, .unknown("recall", allowed: ["all"]))
        }
        XCTAssertThrowsError(try QueryParameters(parsing: "all=1&all=0", allowed: ["all"]))
        XCTAssertThrowsError(try QueryParameters(parsing: "all=%zz", allowed: ["all"]))
        XCTAssertEqual(try QueryParameters(parsing: "since=abc%3A12", allowed: ["since"])["since"], "abc:12")
    }

    func testEveryProtectedRouteNamesAPermissionAndMetricLabelsCarryNoUserData() {
        for endpoint in Endpoint.allCases {
            let spec = endpoint.spec
            if endpoint != .health && endpoint != .metrics { XCTAssertNotNil(spec.access.permission, "\(endpoint)") }
            XCTAssertTrue(spec.template.hasPrefix("/"), "\(endpoint)")
        }
    }
}
