/// One user's refresh-token sequence floor as it is kept on disk (plain data: the replicated store
/// owns the join, the node maps its `TokenSequenceFloor` to this and back).
public struct StoredTokenSequenceFloor: Sendable, Equatable {
    public var domain: String
    /// Bare JID `local@domain`.
    public var user: String
    public var floor: UInt64
    public var stampWall: UInt64
    public var stampLogical: UInt32
    public var origin: String

    public init(domain: String, user: String, floor: UInt64, stampWall: UInt64, stampLogical: UInt32, origin: String) {
        self.domain = domain
        self.user = user
        self.floor = floor
        self.stampWall = stampWall
        self.stampLogical = stampLogical
        self.origin = origin
    }
}

/// Identifies one certificate row (the replicated store's `CertificateID`).
public struct StoredCertificateKey: Sendable, Equatable {
    public var domain: String
    public var user: String
    public var sha256: [UInt8]

    public init(domain: String, user: String, sha256: [UInt8]) {
        self.domain = domain
        self.user = user
        self.sha256 = sha256
    }
}

/// Everything one merge outcome or one local operation changes, written in one transaction so a
/// crash never leaves half of it: e.g. `certificatesChanged` + `certificatesForgotten` +
/// `tokenSequenceFloorsChanged` of a `MergeOutcome`, or the result of `expireCertificates`.
public struct RegistryWrite: Sendable, Equatable {
    /// Rows to insert or replace.
    public var certificates: [StoredCertificate]
    /// Rows to delete (forgotten after expiry). Deleted before `certificates` are written, so a
    /// key in both ends up stored.
    public var deletedCertificates: [StoredCertificateKey]
    /// Floor rows to insert or replace.
    public var tokenSequenceFloors: [StoredTokenSequenceFloor]

    public init(certificates: [StoredCertificate] = [], deletedCertificates: [StoredCertificateKey] = [],
                tokenSequenceFloors: [StoredTokenSequenceFloor] = []) {
        self.certificates = certificates
        self.deletedCertificates = deletedCertificates
        self.tokenSequenceFloors = tokenSequenceFloors
    }

    public var isEmpty: Bool { certificates.isEmpty && deletedCertificates.isEmpty && tokenSequenceFloors.isEmpty }
}
