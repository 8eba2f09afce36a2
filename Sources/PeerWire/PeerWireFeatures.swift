/// What a peer's decoder understands, derived from the software version in its hello.
///
/// Frames keep wire version 1 (a 0.1.0 node refuses any other); newer content is either left
/// out or sent in the older form for an older peer, so a mixed-version cluster (a rolling
/// upgrade) keeps replicating everything the old nodes can hold.
public struct PeerWireFeatures: Sendable, Equatable {
    /// The delta section with refresh-token sequence floors (0.2.0+). Left out for older peers:
    /// they cannot hold floors, so a revocation is enforced only by upgraded nodes.
    public var tokenSequenceFloors: Bool
    /// Revoked certificate records with an empty DER (0.2.0+; 0.1.0 refuses a certificate of
    /// length 0). An older peer gets such a record as a bare tombstone, which it joins into
    /// what it holds; its digest for that record then differs from the upgraded nodes' until it
    /// is upgraded too (anti-entropy keeps repairing that bucket, without changing anything).
    public var compactedCertificates: Bool
    /// As a dialer, takes the accepting node's hello and messages back on the connection it
    /// opened (0.2.0+), so its join does not depend on getting into its own peer port. A 0.1.0
    /// dialer closes a dialed connection on which anything arrives: it keeps getting answers
    /// over the accepting node's own dial, and rolling upgrades from 0.1.0 keep working.
    public var answersOnDialedConnection: Bool
    /// A state request carrying the requester's durable bucket digests (0.2.0+), so a node that
    /// restarts from its database is sent only the certificate records it lacks. An older peer
    /// gets the bare request (it refuses trailing bytes) and answers with its full state.
    public var syncRequestDigests: Bool
    /// Bucket digests followed by per-section digests, and repairs naming the sections of each
    /// bucket they carry (0.2.0+), so a repair after a join does not resend every certificate and
    /// key secret. An older peer gets bare bucket digests and whole-bucket repairs.
    public var sectionRepairs: Bool

    public init(tokenSequenceFloors: Bool, compactedCertificates: Bool, answersOnDialedConnection: Bool,
                syncRequestDigests: Bool, sectionRepairs: Bool) {
        self.tokenSequenceFloors = tokenSequenceFloors
        self.compactedCertificates = compactedCertificates
        self.answersOnDialedConnection = answersOnDialedConnection
        self.syncRequestDigests = syncRequestDigests
        self.sectionRepairs = sectionRepairs
    }

    /// Everything this build encodes.
    public static let current = PeerWireFeatures(tokenSequenceFloors: true, compactedCertificates: true, answersOnDialedConnection: true,
                                                 syncRequestDigests: true, sectionRepairs: true)
    /// What keystored 0.1.0 decodes.
    public static let version0_1 = PeerWireFeatures(tokenSequenceFloors: false, compactedCertificates: false, answersOnDialedConnection: false,
                                                    syncRequestDigests: false, sectionRepairs: false)

    /// From the `softwareVersion` of a peer's hello ("major.minor.patch", optionally followed by
    /// "-suffix" or "+build"). 0.2.0 and later get `current`; 0.1.x, and anything that does not
    /// parse, gets `version0_1`: sending an older peer less is safe, sending it more breaks its
    /// connection.
    public init(peerSoftwareVersion: String) {
        let core = peerSoftwareVersion.split(omittingEmptySubsequences: false, whereSeparator: { $0 == "-" || $0 == "+" }).first ?? ""
        let parts = core.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3, let major = Int(parts[0]), let minor = Int(parts[1]), Int(parts[2]) != nil,
              major >= 0, minor >= 0 else {
            self = .version0_1
            return
        }
        self = (major, minor) >= (0, 2) ? .current : .version0_1
    }
}
