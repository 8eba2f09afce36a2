import CertificateRegistry
import KeystoreConfig
import ReplicatedStore
import SecretMemory

/// Why a node operation or query was refused. Services throw these; the local API maps them to
/// HTTP in one place (`APIRouter.apiError(for:)`), so no service knows about HTTP.
public enum NodeError: Error, Sendable, CustomStringConvertible {
    case unknownDomain(String)
    case unknownKey(KeyRef)
    /// Rotation (and RAM-only operations) on a file key.
    case notRAMKey(KeyRef)
    /// The node has not finished its startup join; `what` says what is not served yet.
    case notReady(String)
    /// An uploaded or presented certificate that cannot be parsed.
    case unparsableCertificate(String)
    /// An XEP-0257 rule refused an append.
    case registry(RegistryError)
    /// SASL EXTERNAL refused the certificate.
    case verification(VerificationFailure)
    case noSuchCertificate(user: String, name: String)
    /// A user segment that is not a valid account of the domain.
    case invalidUser(String)
    /// A request value the operation cannot use (the message names it).
    case invalidArgument(String)
    /// Nothing was stored: the write to this node's registry database failed.
    case notPersisted(String)
    /// A reload that was refused as a whole; the previous config stays.
    case reloadRefused(String)
    case secretMemory(SecretMemoryError)

    public var description: String {
        switch self {
        case .unknownDomain(let domain): return "no domain \(domain) on this node"
        case .unknownKey(let ref): return "no key named \(ref.name) in domain \(ref.domain)"
        case .notRAMKey(let ref):
            return "\(ref.name) in \(ref.domain) is a file key; only ram keys can be rotated (replace the PSK file and reload instead)"
        case .notReady(let what): return "this node is still joining the cluster and cannot serve \(what) yet; retry shortly"
        case .unparsableCertificate(let why): return why
        case .registry(let error): return error.description
        case .verification(let failure): return "certificate not accepted: \(failure.description)"
        case .noSuchCertificate(let user, let name): return "\(user) has no active certificate named '\(name)'"
        case .invalidUser(let why): return why
        case .invalidArgument(let why): return why
        case .notPersisted(let why): return "nothing was stored: \(why)"
        case .reloadRefused(let why): return "reload refused, previous keys kept: \(why)"
        case .secretMemory(let error): return error.description
        }
    }
}
