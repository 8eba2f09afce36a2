import Foundation
import KeystoreAPI

/// One local-API call, built from the contract's route table without I/O: the method and path
/// come from `Endpoint`, the body is the contract's request type encoded as JSON, and
/// `Response` is the contract type the answer decodes to. Built apart from sending so the CLI
/// can print the raw answer for `--json` and tests can check exactly what goes on the wire.
public struct APIRequest<Response: Sendable>: Sendable, Equatable {
    public let endpoint: Endpoint
    /// Percent-encoded path plus query, as `Endpoint.path(_:query:)` builds it.
    public let path: String
    /// JSON body; nil for routes that take none (a POST then carries `Content-Length: 0`).
    public let body: [UInt8]?

    public var method: String { endpoint.spec.method.rawValue }

    init(_ endpoint: Endpoint, _ parameters: RouteParameters = RouteParameters(),
         query: [(String, String)] = [], body: [UInt8]? = nil) throws(KeystoreClientError) {
        self.endpoint = endpoint
        do {
            path = try endpoint.path(parameters, query: query)
        } catch {
            throw .invalidArgument(error.description)
        }
        self.body = body
    }

    init<Body: Encodable>(_ endpoint: Endpoint, _ parameters: RouteParameters = RouteParameters(),
                          json body: Body) throws(KeystoreClientError) {
        try self.init(endpoint, parameters, body: Self.encode(body))
    }

    /// Sorted keys so the bytes are stable (tests compare them); optional fields left nil are omitted.
    static func encode<Body: Encodable>(_ body: Body) throws(KeystoreClientError) -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        do {
            return Array(try encoder.encode(body))
        } catch {
            throw .invalidArgument("request body cannot be encoded as JSON: \(error)")
        }
    }
}

// MARK: One builder per route (Endpoint), typed by the contract's response body

extension APIRequest where Response == HealthResponse {
    public static func health() throws(KeystoreClientError) -> Self { try Self(.health) }
}

/// `GET /metrics` answers Prometheus text, not JSON.
extension APIRequest where Response == String {
    public static func metrics() throws(KeystoreClientError) -> Self { try Self(.metrics) }
}

extension APIRequest where Response == ClusterResponse {
    public static func cluster() throws(KeystoreClientError) -> Self { try Self(.cluster) }
}

extension APIRequest where Response == ReloadResponse {
    public static func reload() throws(KeystoreClientError) -> Self { try Self(.reload) }
}

/// `GET /v1/events` is a stream: `Response` is the type of one line.
extension APIRequest where Response == Event {
    /// - Parameter since: the `cursor` of the last event seen, to resume after a reconnect.
    public static func events(since cursor: String? = nil) throws(KeystoreClientError) -> Self {
        try Self(.events, query: cursor.map { [("since", $0)] } ?? [])
    }
}

extension APIRequest where Response == KeyListResponse {
    public static func listKeys(domain: String) throws(KeystoreClientError) -> Self {
        try Self(.listKeys, RouteParameters(domain: domain))
    }
}

extension APIRequest where Response == KeyResponse {
    public static func getKey(domain: String, name: String) throws(KeystoreClientError) -> Self {
        try Self(.getKey, RouteParameters(domain: domain, key: name))
    }
    public static func rotateKey(domain: String, name: String) throws(KeystoreClientError) -> Self {
        try Self(.rotateKey, RouteParameters(domain: domain, key: name))
    }
}

extension APIRequest where Response == HMACResponse {
    public static func signHMAC(domain: String, name: String, input: [UInt8],
                                algorithm: MACAlgorithm = .sha256) throws(KeystoreClientError) -> Self {
        try Self(.signHMAC, RouteParameters(domain: domain, key: name),
                 json: HMACRequest(input: Data(input).base64EncodedString(), algorithm: algorithm))
    }
}

extension APIRequest where Response == VerifyMACResponse {
    /// - Parameter mac: base64, as `signHMAC` answered it.
    public static func verifyHMAC(domain: String, name: String, input: [UInt8], mac: String,
                                  algorithm: MACAlgorithm = .sha256) throws(KeystoreClientError) -> Self {
        try Self(.verifyHMAC, RouteParameters(domain: domain, key: name),
                 json: VerifyMACRequest(input: Data(input).base64EncodedString(), mac: mac, algorithm: algorithm))
    }
}

extension APIRequest where Response == CertificateListResponse {
    /// - Parameter includeRemoved: also disabled and revoked entries (`?all=1`).
    public static func listCerts(domain: String, user: String, includeRemoved: Bool = false) throws(KeystoreClientError) -> Self {
        try Self(.listCerts, RouteParameters(domain: domain, user: user), query: includeRemoved ? [("all", "1")] : [])
    }
    /// Revokes every active certificate of the user; answers the entries it revoked.
    public static func revokeAllCerts(domain: String, user: String) throws(KeystoreClientError) -> Self {
        try Self(.revokeAllCerts, RouteParameters(domain: domain, user: user))
    }
}

extension APIRequest where Response == CertificateEntry {
    public static func addCert(domain: String, user: String, name: String, certificate: String,
                               noCertManagement: Bool? = nil) throws(KeystoreClientError) -> Self {
        try Self(.addCert, RouteParameters(domain: domain, user: user),
                 json: AddCertificateRequest(name: name, certificate: certificate, noCertManagement: noCertManagement))
    }
}

extension APIRequest where Response == CertificateRemovalResponse {
    public static func disableCert(domain: String, user: String, name: String) throws(KeystoreClientError) -> Self {
        try Self(.disableCert, RouteParameters(domain: domain, user: user, name: name))
    }
    public static func revokeCert(domain: String, user: String, name: String) throws(KeystoreClientError) -> Self {
        try Self(.revokeCert, RouteParameters(domain: domain, user: user, name: name))
    }
}

extension APIRequest where Response == CertificateStatusResponse {
    public static func certificateStatus(domain: String, certs: [CertificateRef]) throws(KeystoreClientError) -> Self {
        try Self(.certStatus, RouteParameters(domain: domain), json: CertificateStatusRequest(certs: certs))
    }
}

extension APIRequest where Response == SASLExternalResponse {
    /// `POST .../sasl-external`: the certificate as SASL EXTERNAL would check it.
    public static func verifyCert(domain: String, certificate: String, authzid: String? = nil) throws(KeystoreClientError) -> Self {
        try Self(.saslExternal, RouteParameters(domain: domain), json: SASLExternalRequest(certificate: certificate, authzid: authzid))
    }
}

extension APIRequest where Response == IssueTokenResponse {
    public static func issueToken(domain: String, _ request: IssueTokenRequest) throws(KeystoreClientError) -> Self {
        try Self(.issueToken, RouteParameters(domain: domain), json: request)
    }
}

extension APIRequest where Response == VerifyTokenResponse {
    /// - Parameter token: base64, as `issueToken` answered it.
    public static func verifyToken(domain: String, token: String) throws(KeystoreClientError) -> Self {
        try Self(.verifyToken, RouteParameters(domain: domain), json: VerifyTokenRequest(token: token))
    }
}

extension APIRequest where Response == RevokeTokensResponse {
    public static func revokeTokens(domain: String, user: String) throws(KeystoreClientError) -> Self {
        try Self(.revokeTokens, RouteParameters(domain: domain, user: user))
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

// MARK: Any route, by name

/// Any route of the table, answered as raw bytes: a route added to the contract is reachable
/// from this client (and from `keystorectl call`) before anyone writes its typed builder above.
/// What can be checked without the daemon is checked here, so a typo is a usage error naming
/// the route, not a round trip; the body is sent as given (the server decodes it strictly).
extension APIRequest where Response == [UInt8] {
    public static func route(_ endpoint: Endpoint, _ parameters: RouteParameters = RouteParameters(),
                             query: [(String, String)] = [], body: [UInt8]? = nil) throws(KeystoreClientError) -> Self {
        let spec = endpoint.spec
        for parameter in [RouteParameter.domain, .key, .user, .name] where parameters[parameter] != nil && !spec.parameters.contains(parameter) {
            throw .invalidArgument("\(endpoint.rawValue) (\(spec.method.rawValue) \(spec.template)) takes no \(parameter.label)")
        }
        for (name, _) in query where !spec.query.contains(name) {
            let accepted = spec.query.isEmpty ? "it takes none" : "it takes: \(spec.query.joined(separator: ", "))"
            throw .invalidArgument("\(endpoint.rawValue) takes no query parameter '\(name)' (\(accepted))")
        }
        if spec.method == .GET, body != nil {
            throw .invalidArgument("\(endpoint.rawValue) is a GET and takes no body")
        }
        return try Self(endpoint, parameters, query: query, body: body)
    }
}
