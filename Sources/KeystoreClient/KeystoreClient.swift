import Foundation

// MARK: Typed results (unknown fields are ignored; the v1 contract only ever adds fields)

public struct Health: Sendable, Equatable {
    public var status: String
    public var ready: Bool
    public var node: String?
    /// The whole answer, so callers can show fields added after v1 (e.g. PSK mismatches).
    public var raw: JSONValue

    public init(json: JSONValue) throws {
        let r = try FieldReader(json, "health response")
        status = try r.string("status")
        ready = try r.bool("ready")
        node = r.optionalScalarText("node")
        raw = json
    }
}

public struct KeySummary: Sendable, Equatable {
    public var name: String
    public var type: String
    public var versions: Int

    public init(json: JSONValue) throws {
        let r = try FieldReader(json, "key list entry")
        name = try r.string("name")
        type = try r.string("type")
        versions = try r.int("versions")
    }

    public static func list(json: JSONValue) throws -> [KeySummary] {
        try FieldReader(json, "key list response").array("keys").map(KeySummary.init(json:))
    }
}

public struct KeyVersion: Sendable, Equatable {
    public var id: String
    /// Base64 key material; nil when a route answers with metadata only (e.g. rotate may omit it).
    public var key: String?
    public var primary: Bool
    public var created: String

    public init(json: JSONValue) throws {
        let r = try FieldReader(json, "key version")
        id = try r.scalarText("id")
        key = r.optionalString("key")
        primary = try r.bool("primary")
        created = try r.scalarText("created")
    }
}

public struct KeyResponse: Sendable, Equatable {
    public var domain: String
    public var name: String
    public var type: String
    /// Primary first, as the daemon sends them.
    public var versions: [KeyVersion]

    public init(json: JSONValue) throws {
        let r = try FieldReader(json, "key response")
        domain = try r.string("domain")
        name = try r.string("name")
        type = try r.string("type")
        versions = try r.array("versions").map(KeyVersion.init(json:))
    }

    public var primary: KeyVersion? { versions.first { $0.primary } }
}

public struct CertInfo: Sendable, Equatable {
    public var name: String
    public var fingerprintSHA256: String
    public var notBefore: String
    public var notAfter: String
    public var jids: [String]
    public var noCertManagement: Bool

    public init(json: JSONValue) throws {
        let r = try FieldReader(json, "certificate entry")
        name = try r.string("name")
        fingerprintSHA256 = try r.string("fingerprint_sha256")
        notBefore = try r.scalarText("not_before")
        notAfter = try r.scalarText("not_after")
        jids = try r.array("jids").compactMap(\.stringValue)
        noCertManagement = r.object["no_cert_management"]?.boolValue ?? false
    }

    public static func list(json: JSONValue) throws -> [CertInfo] {
        try FieldReader(json, "certificate list response").array("certs").map(CertInfo.init(json:))
    }
}

public struct ClusterMember: Sendable, Equatable {
    public var node: String
    public var address: String
    public var state: String
    /// Every field of the member object, for columns added after v1 (last contact, version...).
    public var fields: [String: JSONValue]

    public init(json: JSONValue) throws {
        let r = try FieldReader(json, "cluster member")
        node = try r.string("node")
        address = r.optionalScalarText("address") ?? ""
        state = try r.string("state")
        fields = r.object
    }
}

public struct ClusterStatus: Sendable, Equatable {
    public var node: String?
    public var members: [ClusterMember]
    /// Shape is the daemon's call (strings or objects naming key and nodes); shown as-is.
    public var pskMismatches: [JSONValue]

    public init(json: JSONValue) throws {
        let r = try FieldReader(json, "cluster response")
        node = r.optionalScalarText("node")
        members = try r.array("members").map(ClusterMember.init(json:))
        pskMismatches = r.object["psk_mismatches"]?.arrayValue ?? []
    }
}

// MARK: Requests

/// One local-API call, built without I/O so the CLI can send it and print the raw body for `--json`.
public struct APIRequest: Sendable, Equatable {
    public var method: String
    public var path: String
    public var body: [UInt8]?

    public init(method: String, path: String, body: [UInt8]? = nil) {
        self.method = method
        self.path = path
        self.body = body
    }

    /// Percent-encodes everything but RFC 3986 unreserved characters, so '/', '%', '@', '?'
    /// and '#' inside a domain, user or name can never change the route.
    public static func encodeSegment(_ segment: String) -> String {
        var out = ""
        for byte in segment.utf8 {
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
                 UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "."),
                 UInt8(ascii: "_"), UInt8(ascii: "~"):
                out.unicodeScalars.append(Unicode.Scalar(byte))
            default:
                out += "%" + String(byte >> 4, radix: 16, uppercase: true) + String(byte & 0xF, radix: 16, uppercase: true)
            }
        }
        return out
    }

    private static func seg(_ value: String, _ what: String) throws -> String {
        guard !value.isEmpty else { throw KeystoreClientError.invalidArgument("\(what) must not be empty") }
        // "." and ".." would be collapsed by URL normalisation into a different route.
        guard value != "." && value != ".." else {
            throw KeystoreClientError.invalidArgument("\(what) must not be \"\(value)\"")
        }
        return encodeSegment(value)
    }

    private static func json(_ object: [String: Any]) throws -> [UInt8] {
        do {
            return Array(try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes]))
        } catch {
            throw KeystoreClientError.invalidArgument("request body cannot be encoded as JSON")
        }
    }

    public static let health = APIRequest(method: "GET", path: "/v1/health")
    public static let clusterStatus = APIRequest(method: "GET", path: "/v1/cluster")
    public static let reload = APIRequest(method: "POST", path: "/v1/reload")
    public static let eventsPath = "/v1/events"

    public static func listKeys(domain: String) throws -> APIRequest {
        APIRequest(method: "GET", path: "/v1/domains/\(try seg(domain, "domain"))/keys")
    }
    public static func getKey(domain: String, name: String) throws -> APIRequest {
        APIRequest(method: "GET", path: "/v1/domains/\(try seg(domain, "domain"))/keys/\(try seg(name, "key name"))")
    }
    public static func rotateKey(domain: String, name: String) throws -> APIRequest {
        APIRequest(method: "POST",
                   path: "/v1/domains/\(try seg(domain, "domain"))/keys/\(try seg(name, "key name"))/rotate")
    }
    public static func listCerts(domain: String, user: String) throws -> APIRequest {
        APIRequest(method: "GET", path: "/v1/domains/\(try seg(domain, "domain"))/users/\(try seg(user, "user"))/certs")
    }
    public static func addCert(domain: String, user: String, name: String, certificate: String,
                               noCertManagement: Bool? = nil) throws -> APIRequest {
        _ = try seg(name, "certificate name")
        var body: [String: Any] = ["name": name, "certificate": certificate]
        if let noCertManagement { body["no_cert_management"] = noCertManagement }
        return APIRequest(method: "POST",
                          path: "/v1/domains/\(try seg(domain, "domain"))/users/\(try seg(user, "user"))/certs",
                          body: try json(body))
    }
    public static func disableCert(domain: String, user: String, name: String) throws -> APIRequest {
        try certAction(domain, user, name, "disable")
    }
    public static func revokeCert(domain: String, user: String, name: String) throws -> APIRequest {
        try certAction(domain, user, name, "revoke")
    }
    private static func certAction(_ d: String, _ u: String, _ n: String, _ action: String) throws -> APIRequest {
        APIRequest(method: "POST", path: "/v1/domains/\(try seg(d, "domain"))/users/\(try seg(u, "user"))"
                   + "/certs/\(try seg(n, "certificate name"))/\(action)", body: [])
    }
    public static func verifyCert(domain: String, certificate: String, authzid: String? = nil) throws -> APIRequest {
        var body: [String: Any] = ["certificate": certificate]
        if let authzid { body["authzid"] = authzid }
        return APIRequest(method: "POST", path: "/v1/domains/\(try seg(domain, "domain"))/sasl-external",
                          body: try json(body))
    }
}

/// What to put in the `certificate` field for a file's bytes: PEM text as-is, anything else
/// is taken as DER and base64-encoded (the API accepts both).
public enum CertificateEncoding {
    public static func fieldValue(forFile bytes: [UInt8]) -> String {
        if let text = String(bytes: bytes, encoding: .utf8), text.contains("-----BEGIN ") {
            return text
        }
        return Data(bytes).base64EncodedString()
    }
}

// MARK: Client

/// Convenience client: one short-lived connection per call, so it is trivially `Sendable`.
/// Use `KeystoreConnection` directly to reuse one socket for many requests.
public struct KeystoreClient: Sendable {
    public let socketPath: String
    public let timeoutSeconds: Double

    public init(socketPath: String, timeoutSeconds: Double = 10) {
        self.socketPath = socketPath
        self.timeoutSeconds = timeoutSeconds
    }

    /// Sends the request; any non-2xx answer becomes `KeystoreClientError.api`.
    public func send(_ request: APIRequest) throws -> HTTPResponse {
        let connection = try KeystoreConnection(socketPath: socketPath, timeoutSeconds: timeoutSeconds)
        defer { connection.close() }
        let response = try connection.request(request.method, request.path, body: request.body,
                                              headers: [("Accept", "application/json"), ("Connection", "close")])
        guard (200..<300).contains(response.status) else { throw Self.apiError(from: response) }
        return response
    }

    /// Maps an error response to `.api`, using the status line when the body is not the JSON error shape.
    public static func apiError(from response: HTTPResponse) -> KeystoreClientError {
        if let json = try? JSONValue.parse(response.body), let code = json["error"]?.stringValue {
            let message = json["message"]?.stringValue ?? "HTTP \(response.status) \(response.reason)"
            return .api(status: response.status, code: code, message: message)
        }
        let line = "HTTP \(response.status)" + (response.reason.isEmpty ? "" : " \(response.reason)")
        return .api(status: response.status, code: "http_\(response.status)", message: line)
    }

    private func json(_ request: APIRequest) throws -> JSONValue {
        try JSONValue.parse(send(request).body)
    }

    public func health() throws -> Health {
        try Health(json: json(.health))
    }
    public func listKeys(domain: String) throws -> [KeySummary] {
        try KeySummary.list(json: json(.listKeys(domain: domain)))
    }
    public func getKey(domain: String, name: String) throws -> KeyResponse {
        try KeyResponse(json: json(.getKey(domain: domain, name: name)))
    }
    @discardableResult
    public func rotateKey(domain: String, name: String) throws -> KeyResponse {
        try KeyResponse(json: json(.rotateKey(domain: domain, name: name)))
    }
    public func clusterStatus() throws -> ClusterStatus {
        try ClusterStatus(json: json(.clusterStatus))
    }
    public func listCerts(domain: String, user: String) throws -> [CertInfo] {
        try CertInfo.list(json: json(.listCerts(domain: domain, user: user)))
    }
    /// Returns the registered entry when the daemon echoes it, nil for an empty/other 2xx body.
    @discardableResult
    public func addCert(domain: String, user: String, name: String, certificate: String,
                        noCertManagement: Bool? = nil) throws -> CertInfo? {
        let response = try send(.addCert(domain: domain, user: user, name: name, certificate: certificate,
                                         noCertManagement: noCertManagement))
        return (try? JSONValue.parse(response.body)).flatMap { try? CertInfo(json: $0) }
    }
    public func disableCert(domain: String, user: String, name: String) throws {
        _ = try send(.disableCert(domain: domain, user: user, name: name))
    }
    public func revokeCert(domain: String, user: String, name: String) throws {
        _ = try send(.revokeCert(domain: domain, user: user, name: name))
    }
    /// The authenticated JID; a refused certificate throws `.api` (403).
    public func verifyCert(domain: String, certificate: String, authzid: String? = nil) throws -> String {
        let answer = try json(.verifyCert(domain: domain, certificate: certificate, authzid: authzid))
        return try FieldReader(answer, "sasl-external response").string("jid")
    }
    /// The daemon's answer, whatever it reports about the reread files.
    @discardableResult
    public func reload() throws -> JSONValue {
        let body = try send(.reload).body
        return body.isEmpty ? .null : try JSONValue.parse(body)
    }
    /// Raw event lines as they arrive; return false to stop.
    public func eventLines(idleTimeoutSeconds: Double? = nil, onLine: (String) throws -> Bool) throws {
        let connection = try KeystoreConnection(socketPath: socketPath, timeoutSeconds: timeoutSeconds)
        defer { connection.close() }
        try connection.streamLines(APIRequest.eventsPath, idleTimeoutSeconds: idleTimeoutSeconds, onLine: onLine)
    }
    /// Parsed events; a line that is not JSON is a malformed response.
    public func events(idleTimeoutSeconds: Double? = nil, onEvent: (JSONValue) throws -> Bool) throws {
        try eventLines(idleTimeoutSeconds: idleTimeoutSeconds) { line in
            try onEvent(JSONValue.parse(Array(line.utf8)))
        }
    }
}
