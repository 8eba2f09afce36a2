/// The stable error codes of the local API. The HTTP status of each is fixed here, in one
/// place, for the server and for clients that want to reason about a status line.
public enum APIErrorCode: String, Sendable, Codable, CaseIterable {
    case badRequest = "bad_request"
    case notFound = "not_found"
    case forbidden = "forbidden"
    case conflict = "conflict"
    case notReady = "not_ready"
    case invalidCertificate = "invalid_certificate"
    case payloadTooLarge = "payload_too_large"
    case methodNotAllowed = "method_not_allowed"
    case internalError = "internal"

    public var httpStatus: Int {
        switch self {
        case .badRequest: return 400
        case .notFound: return 404
        case .forbidden: return 403
        case .conflict: return 409
        case .notReady: return 503
        case .invalidCertificate: return 422
        case .payloadTooLarge: return 413
        case .methodNotAllowed: return 405
        case .internalError: return 500
        }
    }
}

/// The body of every error answer: the code is for programs, the message tells a person what
/// to fix. Messages never include secret material.
public struct APIErrorBody: Codable, Sendable, Equatable {
    /// The code as sent: a newer daemon may send a code this client does not know yet.
    public var error: String
    public var message: String

    public init(code: APIErrorCode, message: String) {
        self.error = code.rawValue
        self.message = message
    }

    public var code: APIErrorCode? { APIErrorCode(rawValue: error) }
}
