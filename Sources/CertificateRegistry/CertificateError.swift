/// Why a submitted certificate could not be read. Messages name the input problem and the fix; they
/// never echo the submitted bytes.
public enum CertificateError: Error, CustomStringConvertible, Equatable, Sendable {
    /// The input exceeds `ParsedCertificate.maxInputBytes`.
    case tooLarge(bytes: Int, limit: Int)
    /// Neither a "-----BEGIN CERTIFICATE-----" block nor plain base64.
    case notPEMOrBase64
    /// The bytes are not a DER X.509 certificate OpenSSL accepts (or a needed field is unreadable).
    case unparseable(reason: String)
    /// More than one certificate was submitted; the registry stores exactly one per name.
    case multipleCertificates
    /// Bytes follow the certificate's DER encoding.
    case trailingData(bytes: Int)
    /// An id-on-xmppAddr subjectAltName is not a UTF8String holding a valid JID.
    case invalidXmppAddr(reason: String)

    public var description: String {
        switch self {
        case let .tooLarge(bytes, limit):
            return "certificate input is \(bytes) bytes, over the \(limit)-byte limit: submit a single certificate, not a bundle or a file of other data"
        case .notPEMOrBase64:
            return "certificate is neither PEM (-----BEGIN CERTIFICATE-----) nor base64 DER: submit the certificate file's PEM text or its DER bytes in base64"
        case let .unparseable(reason):
            return "certificate could not be parsed as DER X.509 (\(reason)): submit a valid X.509 certificate"
        case .multipleCertificates:
            return "expected exactly one certificate, found several: submit only the client certificate, not a chain"
        case let .trailingData(bytes):
            return "certificate DER is followed by \(bytes) unexpected bytes: submit exactly one DER certificate with nothing after it"
        case let .invalidXmppAddr(reason):
            return "certificate has an invalid id-on-xmppAddr subjectAltName (\(reason)): reissue it with otherName 1.3.6.1.5.5.7.8.5;UTF8:user@domain"
        }
    }
}
