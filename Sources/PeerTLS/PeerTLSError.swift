/// Everything that can go wrong loading peer TLS material or running a peer connection.
///
/// Reasons carry OpenSSL's own error strings and X.509 verify results so an operator can tell an
/// expired certificate from a wrong CA without a packet capture; they never carry key material.
public enum PeerTLSError: Error, CustomStringConvertible, Equatable, Sendable {
    /// A PEM file (CA, certificate or key) could not be read or parsed.
    case cannotLoad(file: String, reason: String)
    /// The private key file does not belong to the certificate file.
    case keyDoesNotMatchCertificate(file: String)
    /// OpenSSL refused a setting we require (TLS 1.3 only, verification); the system OpenSSL is unusable.
    case unsupportedOpenSSL(reason: String)
    /// The TLS handshake failed for a reason other than the peer's certificate (protocol version, peer
    /// alert, missing peer certificate, connection closed mid-handshake, ...).
    case handshakeFailed(reason: String)
    /// The peer's certificate failed verification against the cluster CA (expired, unknown CA, ...).
    case peerCertificateRejected(reason: String)
    /// The peer's certificate is valid but does not name the node we dialed.
    case peerNameMismatch(expected: String, found: [String])
    /// The connection ended without the peer's close_notify, so data may have been truncated.
    case uncleanShutdown
    /// The peer sent something TLS-invalid after the handshake.
    case protocolError(reason: String)

    public var description: String {
        switch self {
        case .cannotLoad(let file, let reason):
            return "cannot load TLS file '\(file)': \(reason); check the path in the config's \"tls\" section and that it is a readable PEM file"
        case .keyDoesNotMatchCertificate(let file):
            return "TLS private key '\(file)' does not match its certificate; point \"tls.key\" at the key generated with that certificate (deploy/gen-certs.sh)"
        case .unsupportedOpenSSL(let reason):
            return "system OpenSSL cannot be configured for TLS 1.3 peer connections: \(reason); install OpenSSL 3"
        case .handshakeFailed(let reason):
            return "peer TLS handshake failed: \(reason)"
        case .peerCertificateRejected(let reason):
            return "peer certificate rejected: \(reason); issue the peer a certificate from this cluster's CA (deploy/gen-certs.sh)"
        case .peerNameMismatch(let expected, let found):
            let names = found.isEmpty ? "no DNS names" : found.joined(separator: ", ")
            return "peer certificate does not name node '\(expected)' (it names: \(names)); check the peer address in \"nodes\" or re-issue that node's certificate"
        case .uncleanShutdown:
            return "peer closed the TLS connection without close_notify; data may have been truncated"
        case .protocolError(let reason):
            return "peer TLS protocol error: \(reason)"
        }
    }
}
