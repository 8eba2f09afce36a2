import Foundation
// The contract's types are this client's types: callers get them with `import KeystoreClient`.
@_exported import KeystoreAPI
import KeystoreJSON

/// Convenience client: one short-lived connection per call, so it is trivially `Sendable`.
/// Use `KeystoreConnection` directly to reuse one socket for many requests.
///
/// One method per route of the contract (`Endpoint`), each answering the contract's response
/// type. Answers are decoded leniently (fields a newer daemon adds are ignored); error answers
/// become `KeystoreClientError.api` with the daemon's `APIErrorBody`.
public struct KeystoreClient: Sendable {
    public let socketPath: String
    public let timeoutSeconds: Double

    public init(socketPath: String, timeoutSeconds: Double = 10) {
        self.socketPath = socketPath
        self.timeoutSeconds = timeoutSeconds
    }

    // MARK: Sending and decoding

    /// Sends the request and returns the raw answer; any non-2xx answer becomes `KeystoreClientError.api`.
    public func send<Response>(_ request: APIRequest<Response>) throws -> HTTPResponse {
        let connection = try KeystoreConnection(socketPath: socketPath, timeoutSeconds: timeoutSeconds)
        defer { connection.close() }
        let response = try connection.request(request.method, request.path, body: request.body,
                                              headers: [("Accept", "application/json"), ("Connection", "close")])
        guard (200..<300).contains(response.status) else { throw Self.apiError(from: response) }
        return response
    }

    /// Sends the request and decodes its answer as the route's response type.
    public func perform<Response: Decodable>(_ request: APIRequest<Response>) throws -> Response {
        try Self.decode(Response.self, from: send(request))
    }

    /// Decodes a response body (whatever its status) as `type`, ignoring fields `type` does not
    /// know; a body that does not fit is a `malformedResponse` naming the field.
    public static func decode<T: Decodable>(_ type: T.Type, from response: HTTPResponse) throws(KeystoreClientError) -> T {
        try decode(type, body: response.body, what: "HTTP \(response.status) answer")
    }

    /// The same for bytes that did not come as a whole response (an event line); `what` names them in the error.
    public static func decode<T: Decodable>(_ type: T.Type, body: [UInt8], what: String) throws(KeystoreClientError) -> T {
        do {
            return try JSONDecoder().decode(T.self, from: Data(body))
        } catch let error as DecodingError {
            // The body itself is never quoted: it may hold key material.
            throw .malformedResponse("\(what) is not a valid \(T.self): \(StrictJSON.describe(error))")
        } catch {
            throw .malformedResponse("\(what) is not a valid \(T.self)")
        }
    }

    /// Maps an error response to `.api`, using the status line when the body is not an `APIErrorBody`.
    public static func apiError(from response: HTTPResponse) -> KeystoreClientError {
        if let body = try? decode(APIErrorBody.self, from: response) {
            return .api(status: response.status, code: body.error, message: body.message)
        }
        let line = "HTTP \(response.status)" + (response.reason.isEmpty ? "" : " \(response.reason)")
        return .api(status: response.status, code: "http_\(response.status)", message: line)
    }

    // MARK: Node

    public func health() throws -> HealthResponse { try perform(.health()) }

    /// The Prometheus exposition text.
    public func metrics() throws -> String { String(decoding: try send(.metrics()).body, as: UTF8.self) }

    public func clusterStatus() throws -> ClusterResponse { try perform(.cluster()) }

    @discardableResult
    public func reload() throws -> ReloadResponse { try perform(.reload()) }

    // MARK: Keys

    public func listKeys(domain: String) throws -> KeyListResponse { try perform(.listKeys(domain: domain)) }

    public func getKey(domain: String, name: String) throws -> KeyResponse { try perform(.getKey(domain: domain, name: name)) }

    @discardableResult
    public func rotateKey(domain: String, name: String) throws -> KeyResponse {
        try perform(.rotateKey(domain: domain, name: name))
    }

    /// MAC of `input` with the key's primary version; the key never leaves the daemon.
    public func signHMAC(domain: String, name: String, input: [UInt8], algorithm: MACAlgorithm = .sha256) throws -> HMACResponse {
        try perform(.signHMAC(domain: domain, name: name, input: input, algorithm: algorithm))
    }

    /// Checks `mac` (base64) against every active version of the key.
    public func verifyHMAC(domain: String, name: String, input: [UInt8], mac: String,
                           algorithm: MACAlgorithm = .sha256) throws -> VerifyMACResponse {
        try perform(.verifyHMAC(domain: domain, name: name, input: input, mac: mac, algorithm: algorithm))
    }

    // MARK: Certificates

    public func listCerts(domain: String, user: String, includeRemoved: Bool = false) throws -> CertificateListResponse {
        try perform(.listCerts(domain: domain, user: user, includeRemoved: includeRemoved))
    }

    /// The entry the daemon registered.
    @discardableResult
    public func addCert(domain: String, user: String, name: String, certificate: String,
                        noCertManagement: Bool? = nil) throws -> CertificateEntry {
        try perform(.addCert(domain: domain, user: user, name: name, certificate: certificate, noCertManagement: noCertManagement))
    }

    @discardableResult
    public func disableCert(domain: String, user: String, name: String) throws -> CertificateRemovalResponse {
        try perform(.disableCert(domain: domain, user: user, name: name))
    }

    @discardableResult
    public func revokeCert(domain: String, user: String, name: String) throws -> CertificateRemovalResponse {
        try perform(.revokeCert(domain: domain, user: user, name: name))
    }

    /// Revokes every active certificate of the user; answers the entries revoked.
    @discardableResult
    public func revokeAllCerts(domain: String, user: String) throws -> CertificateListResponse {
        try perform(.revokeAllCerts(domain: domain, user: user))
    }

    /// The state of each (user, fingerprint), in request order.
    public func certificateStatus(domain: String, certs: [CertificateRef]) throws -> CertificateStatusResponse {
        try perform(.certificateStatus(domain: domain, certs: certs))
    }

    /// Checks a certificate as SASL EXTERNAL would; a refused certificate throws `.api` (403).
    public func verifyCert(domain: String, certificate: String, authzid: String? = nil) throws -> SASLExternalResponse {
        try perform(.verifyCert(domain: domain, certificate: certificate, authzid: authzid))
    }

    // MARK: Tokens

    public func issueToken(domain: String, type: TokenType, jid: String, validForSeconds: Int? = nil,
                           vcard: String? = nil) throws -> IssueTokenResponse {
        try perform(.issueToken(domain: domain, IssueTokenRequest(type: type, jid: jid, validForSeconds: validForSeconds, vcard: vcard)))
    }

    /// An invalid token is an answer (`valid: false` and a reason), not an error.
    public func verifyToken(domain: String, token: String) throws -> VerifyTokenResponse {
        try perform(.verifyToken(domain: domain, token: token))
    }

    /// Refuses the user's outstanding refresh tokens on every node.
    @discardableResult
    public func revokeTokens(domain: String, user: String) throws -> RevokeTokensResponse {
        try perform(.revokeTokens(domain: domain, user: user))
    }

    // MARK: Events

    /// Raw event lines as they arrive; return false to stop.
    /// - Parameter since: the `cursor` of the last event seen, to resume after a reconnect.
    public func eventLines(since cursor: String? = nil, idleTimeoutSeconds: Double? = nil,
                           onLine: (String) throws -> Bool) throws {
        let request = try APIRequest.events(since: cursor)
        let connection = try KeystoreConnection(socketPath: socketPath, timeoutSeconds: timeoutSeconds)
        defer { connection.close() }
        try connection.streamLines(request.path, idleTimeoutSeconds: idleTimeoutSeconds, onLine: onLine)
    }

    /// Decoded events; a line that is not an `Event` is a malformed response.
    public func events(since cursor: String? = nil, idleTimeoutSeconds: Double? = nil,
                       onEvent: (Event) throws -> Bool) throws {
        try eventLines(since: cursor, idleTimeoutSeconds: idleTimeoutSeconds) { line in
            try onEvent(Self.decode(Event.self, body: Array(line.utf8), what: "event line"))
        }
    }
}
