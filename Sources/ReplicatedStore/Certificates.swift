/// Identity of one registered certificate (XEP-0257): one user may register a given
/// certificate once, so (domain, bare JID, SHA-256 of the DER) names it cluster-wide. The
/// store never hashes DER itself: the shell computed `sha256` when it parsed the certificate.
public struct CertificateID: Hashable, Comparable, Sendable, CustomStringConvertible {
    public var domain: String
    /// Bare JID `local@domain`.
    public var user: String
    public var sha256: [UInt8]

    public init(domain: String, user: String, sha256: [UInt8]) {
        self.domain = domain
        self.user = user
        self.sha256 = sha256
    }

    public static func < (lhs: CertificateID, rhs: CertificateID) -> Bool {
        if lhs.domain != rhs.domain { return lhs.domain < rhs.domain }
        if lhs.user != rhs.user { return lhs.user < rhs.user }
        return lhs.sha256.lexicographicallyPrecedes(rhs.sha256)
    }

    /// Hashes the fingerprint as one block: the synthesized version feeds `Hasher` a byte at
    /// a time, which dominated full-sync merges of large registries.
    public func hash(into hasher: inout Hasher) {
        hasher.combine(domain)
        hasher.combine(user)
        hasher.combine(sha256.count)
        sha256.withUnsafeBytes { hasher.combine(bytes: $0) }
    }

    /// A fingerprint is public (it identifies a public certificate), so it may appear in logs.
    public var description: String {
        let hex = sha256.map { byte -> String in
            let s = String(byte, radix: 16)
            return byte < 16 ? "0" + s : s
        }.joined()
        return "\(domain)/\(user)/\(hex)"
    }
}

/// Raw values are part of the digest encoding and of what the shell persists: never renumber.
public enum RemovalKind: UInt8, Hashable, Comparable, Sendable {
    case disabled = 1
    case revoked = 2

    /// Revoked outranks disabled: a revocation is the stronger statement (it also closes
    /// streams), so a concurrent disable must not water it down.
    public static func < (lhs: RemovalKind, rhs: RemovalKind) -> Bool { lhs.rawValue < rhs.rawValue }
}

/// A tombstone. Once any replica holds one for an id, that id is never usable again.
public struct CertificateRemoval: Hashable, Sendable {
    public var kind: RemovalKind
    public var stamp: HLCTimestamp
    public var origin: NodeID

    public init(kind: RemovalKind, stamp: HLCTimestamp, origin: NodeID) {
        self.kind = kind
        self.stamp = stamp
        self.origin = origin
    }

    /// Total order so concurrent removals pick the same winner everywhere: revoked beats
    /// disabled; within a kind the earliest (stamp, origin) is kept, i.e. the first removal
    /// is the one the cluster remembers.
    public func supersedes(_ other: CertificateRemoval) -> Bool {
        if kind != other.kind { return kind > other.kind }
        if stamp != other.stamp { return stamp < other.stamp }
        return origin < other.origin
    }
}

/// What the user registered. Public data (a certificate and its metadata), never secret.
public struct CertificateContent: Hashable, Sendable {
    /// The user's label for the certificate. Unique per user among the records one node
    /// accepts, but two nodes may accept one name concurrently: then both records stay live,
    /// told apart by fingerprint (see `ReplicatedStore.liveCertificates`).
    public var name: String
    /// Empty once the record is revoked (see `CertificateRecord.merged(with:)`).
    public var der: [UInt8]
    public var notBeforeMillis: Int64
    public var notAfterMillis: Int64
    /// The `id-on-xmppAddr` values of the certificate, as the shell extracted them.
    public var jids: [String]
    public var noCertManagement: Bool
    public var added: HLCTimestamp
    public var origin: NodeID

    public init(name: String, der: [UInt8], notBeforeMillis: Int64, notAfterMillis: Int64,
                jids: [String], noCertManagement: Bool, added: HLCTimestamp, origin: NodeID) {
        self.name = name
        self.der = der
        self.notBeforeMillis = notBeforeMillis
        self.notAfterMillis = notAfterMillis
        self.jids = jids
        self.noCertManagement = noCertManagement
        self.added = added
        self.origin = origin
    }

    /// The same certificate registered on two nodes concurrently: the earliest (added, origin)
    /// wins. Remaining fields only break ties a correct cluster never produces (one node's HLC
    /// is strictly monotonic), so that even a buggy peer cannot make replicas disagree.
    ///
    /// The DER is compared last on purpose: compaction empties it (`CertificateRecord`), and
    /// with the DER last, emptying it never changes which of two contents wins except between
    /// contents that are equal once emptied. That is what makes "compact, then join" equal
    /// "join, then compact", whatever order records arrive in.
    public func precedes(_ other: CertificateContent) -> Bool {
        if added != other.added { return added < other.added }
        if origin != other.origin { return origin < other.origin }
        if name != other.name { return name < other.name }
        if notBeforeMillis != other.notBeforeMillis { return notBeforeMillis < other.notBeforeMillis }
        if notAfterMillis != other.notAfterMillis { return notAfterMillis < other.notAfterMillis }
        if jids != other.jids { return jids.lexicographicallyPrecedes(other.jids) }
        if noCertManagement != other.noCertManagement { return !noCertManagement }
        return der.lexicographicallyPrecedes(other.der)
    }

    /// The instant from which the store may forget a record with this content: `not_after`
    /// plus `ReplicatedStore.certificateRetentionAfterExpiryMillis`, saturating.
    public var forgettableAtMillis: Int64 {
        let (sum, overflow) = notAfterMillis.addingReportingOverflow(ReplicatedStore.certificateRetentionAfterExpiryMillis)
        return overflow ? (notAfterMillis < 0 ? Int64.min : Int64.max) : sum
    }

    /// True when the record may be forgotten at `nowMillis` (see `forgettableAtMillis`).
    public func isForgettable(atMillis nowMillis: UInt64) -> Bool {
        Int64(clamping: nowMillis) >= forgettableAtMillis
    }
}

/// One certificate's replicated state. Both parts are optional because either may arrive
/// first: a bare tombstone (content nil) that reaches a replica before the add must still
/// suppress the add when it shows up.
public struct CertificateRecord: Hashable, Sendable {
    public var id: CertificateID
    public var content: CertificateContent?
    public var removal: CertificateRemoval?

    public init(id: CertificateID, content: CertificateContent?, removal: CertificateRemoval?) {
        self.id = id
        self.content = content
        self.removal = removal
    }

    /// Registered and not removed: listed and usable. Every live record is shown, also when
    /// two share a name (see `ReplicatedStore.liveCertificates`).
    public var isLive: Bool { content != nil && removal == nil }

    /// Join of two states of the same certificate: commutative, associative, idempotent,
    /// and a removal once present is never lost. Records of different ids are not joined
    /// (self is returned unchanged) rather than trapping on a caller mistake.
    ///
    /// The result is always `compacted()`: a revoked record never carries its DER, whatever
    /// order the add and the revocation arrive in, so every replica holds (and digests) the
    /// same bytes. Sound because compaction only ever empties the DER of a record whose
    /// removal is `revoked`, a removal only grows, and `precedes` compares the DER last.
    public func merged(with other: CertificateRecord) -> CertificateRecord {
        guard id == other.id else { return self }
        var result = self
        if let theirs = other.content {
            if let mine = result.content {
                if theirs.precedes(mine) { result.content = theirs }
            } else {
                result.content = theirs
            }
        }
        if let theirs = other.removal {
            if let mine = result.removal {
                if theirs.supersedes(mine) { result.removal = theirs }
            } else {
                result.removal = theirs
            }
        }
        return result.compacted()
    }

    /// True when `compacted()` would change the record (revoked, DER still held): cheaper than
    /// comparing `compacted()` with the record, which compares the DER.
    public var needsCompaction: Bool {
        removal?.kind == .revoked && !(content?.der.isEmpty ?? true)
    }

    /// What a revoked certificate keeps: everything needed to refuse it again and to show it
    /// (fingerprint, name, validity, JIDs, the removal), not the DER, which is the bulk of a
    /// record and is never needed again. A disabled record keeps its DER: XEP-0257 still
    /// lists disabled certificates with their certificate (the API contract shows it), and it
    /// is forgotten at expiry anyway (`ReplicatedStore.expireCertificates`).
    public func compacted() -> CertificateRecord {
        guard needsCompaction else { return self }
        var result = self
        result.content?.der = []
        return result
    }
}
