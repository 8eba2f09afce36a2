public typealias NodeID = String

/// A key's identity; the store never looks at the key's type or config (the shell filters).
public struct KeyRef: Hashable, Comparable, Sendable, CustomStringConvertible {
    public var domain: String
    public var name: String

    public init(domain: String, name: String) {
        self.domain = domain
        self.name = name
    }

    public static func < (lhs: KeyRef, rhs: KeyRef) -> Bool {
        if lhs.domain != rhs.domain { return lhs.domain < rhs.domain }
        return lhs.name < rhs.name
    }

    public var description: String { "\(domain)/\(name)" }
}

/// Identity of one key version: unique cluster-wide because each node's HLC is strictly
/// monotonic and the origin disambiguates equal timestamps from different nodes.
public struct VersionID: Hashable, Comparable, Sendable, LosslessStringConvertible {
    public var created: HLCTimestamp
    public var origin: NodeID

    public init(created: HLCTimestamp, origin: NodeID) {
        self.created = created
        self.origin = origin
    }

    public static func < (lhs: VersionID, rhs: VersionID) -> Bool {
        if lhs.created != rhs.created { return lhs.created < rhs.created }
        return lhs.origin < rhs.origin
    }

    /// The `id` users see in the API, so it must never change format: `<wall>.<logical>.<origin>`.
    public var description: String { "\(created.wallMillis).\(created.logical).\(origin)" }

    /// Longest origin accepted when parsing; node names are short config identifiers, and a
    /// bound keeps a hostile `id` path segment from becoming a large allocation.
    public static let maxOriginBytes = 255

    /// Accepts only the canonical form produced by `description` (no signs, spaces or leading
    /// zeros), so parse(description) round-trips and two spellings never name one version.
    /// The origin is everything after the second dot and may itself contain dots.
    public init?(_ string: String) {
        let utf8 = Array(string.utf8)
        guard let firstDot = utf8.firstIndex(of: UInt8(ascii: ".")) else { return nil }
        guard let secondDot = utf8[(firstDot + 1)...].firstIndex(of: UInt8(ascii: ".")) else { return nil }
        guard let wall = Self.parseCanonical(utf8[..<firstDot], max: UInt64.max),
              let logical = Self.parseCanonical(utf8[(firstDot + 1)..<secondDot], max: UInt64(UInt32.max))
        else { return nil }
        let originBytes = utf8[(secondDot + 1)...]
        guard !originBytes.isEmpty, originBytes.count <= Self.maxOriginBytes else { return nil }
        // Control characters and spaces would make ids ambiguous in logs and URLs.
        guard originBytes.allSatisfy({ $0 > 0x20 && $0 != 0x7F }) else { return nil }
        self.init(created: HLCTimestamp(wallMillis: wall, logical: UInt32(logical)),
                  origin: String(decoding: originBytes, as: UTF8.self))
    }

    private static func parseCanonical(_ digits: ArraySlice<UInt8>, max: UInt64) -> UInt64? {
        CanonicalDecimal.parse(digits, max: max)
    }
}

/// Decimal numbers written one way only (so two spellings never name one value): digits only,
/// no sign, no leading zero except "0" itself, at most `max`. Version ids and token fields use it.
public enum CanonicalDecimal {
    public static func parse(_ digits: ArraySlice<UInt8>, max: UInt64) -> UInt64? {
        guard !digits.isEmpty, digits.count <= 20 else { return nil }
        if digits.count > 1 && digits.first == UInt8(ascii: "0") { return nil }
        var value: UInt64 = 0
        for byte in digits {
            guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") else { return nil }
            let (times10, o1) = value.multipliedReportingOverflow(by: 10)
            let (sum, o2) = times10.addingReportingOverflow(UInt64(byte - UInt8(ascii: "0")))
            guard !o1, !o2, sum <= max else { return nil }
            value = sum
        }
        return value
    }
}

/// Metadata of one RAM key version. The secret bytes live in the shell's vault, indexed by `id`.
public struct KeyVersion: Hashable, Sendable {
    public var id: VersionID
    /// Rotation count: a rotate produces max(live generations) + 1, so a rotation always
    /// outranks every version it has seen regardless of clock skew.
    public var generation: UInt32

    public init(id: VersionID, generation: UInt32) {
        self.id = id
        self.generation = generation
    }

    /// Rank order of DESIGN "RAM keys" 4–5: generation DESC, then created ASC, then origin ASC.
    @inlinable
    public static func ranksBefore(_ a: KeyVersion, _ b: KeyVersion) -> Bool {
        if a.generation != b.generation { return a.generation > b.generation }
        return a.id < b.id
    }
}

public struct KeyVersionView: Hashable, Sendable {
    public var version: KeyVersion
    public var isPrimary: Bool
    /// Unix epoch ms from which the version is no longer served (valid while now < this);
    /// nil for the primary, which never expires.
    public var expiresAtMillis: UInt64?

    public init(version: KeyVersion, isPrimary: Bool, expiresAtMillis: UInt64?) {
        self.version = version
        self.isPrimary = isPrimary
        self.expiresAtMillis = expiresAtMillis
    }
}

/// A node's keyed hash of its local PSK for one key (never the PSK). `fingerprint == []`
/// means "this node no longer has the key" and is kept as a tombstone so LWW stays correct.
public struct PSKFingerprint: Hashable, Sendable {
    public var node: NodeID
    public var key: KeyRef
    public var fingerprint: [UInt8]
    public var stamp: HLCTimestamp

    public init(node: NodeID, key: KeyRef, fingerprint: [UInt8], stamp: HLCTimestamp) {
        self.node = node
        self.key = key
        self.fingerprint = fingerprint
        self.stamp = stamp
    }

    public var isDeletion: Bool { fingerprint.isEmpty }

    /// Last-writer-wins with a total order (stamp, then bytes), so every replica picks the
    /// same record whatever order the gossip arrives in.
    public func supersedes(_ other: PSKFingerprint) -> Bool {
        if stamp != other.stamp { return stamp > other.stamp }
        return other.fingerprint.lexicographicallyPrecedes(fingerprint)
    }
}

public struct PSKMismatch: Hashable, Sendable {
    public var key: KeyRef
    public var fingerprintsByNode: [NodeID: [UInt8]]

    public init(key: KeyRef, fingerprintsByNode: [NodeID: [UInt8]]) {
        self.key = key
        self.fingerprintsByNode = fingerprintsByNode
    }
}

/// A piece of replicated state as exchanged between nodes (metadata only, no secrets).
public struct StoreDelta: Hashable, Sendable {
    public var keyVersions: [KeyRef: [KeyVersion]]
    public var pskFingerprints: [PSKFingerprint]
    /// Certificate registry records; several records for one id are allowed (they are joined).
    public var certificates: [CertificateRecord]
    /// Refresh-token sequence floors; several records for one user are allowed (joined).
    public var tokenSequenceFloors: [TokenSequenceFloor]

    public init(keyVersions: [KeyRef: [KeyVersion]] = [:], pskFingerprints: [PSKFingerprint] = [],
                certificates: [CertificateRecord] = [], tokenSequenceFloors: [TokenSequenceFloor] = []) {
        self.keyVersions = keyVersions
        self.pskFingerprints = pskFingerprints
        self.certificates = certificates
        self.tokenSequenceFloors = tokenSequenceFloors
    }

    public var isEmpty: Bool {
        pskFingerprints.isEmpty && certificates.isEmpty && tokenSequenceFloors.isEmpty
            && keyVersions.values.allSatisfy { $0.isEmpty }
    }
}

public struct MergeOutcome: Sendable {
    /// Versions admitted by this merge (new ids, or an id whose generation was raised by a
    /// conflicting record): the shell must keep their secret bytes.
    public var added: [(KeyRef, KeyVersion)]
    /// Versions this replica held before and dropped (expired): the shell zeroes their secrets.
    /// Incoming versions that were already expired on arrival are in neither list.
    public var pruned: [(KeyRef, VersionID)]
    public var primaryChanged: [KeyRef]
    public var pskChanged: Bool
    /// The merged value of every certificate record this merge changed, once per id, in the
    /// order the input first changed them: the shell persists exactly these (DESIGN
    /// "Certificate registry" 6).
    public var certificatesChanged: [CertificateRecord]
    /// The subset of `certificatesChanged` that gained a removal here or was upgraded from
    /// disabled to revoked: the records the shell emits disable/revoke events for. A removal
    /// that only lost a tie to an equal-kind earlier one is not news and is not listed.
    public var certificatesNewlyRemoved: [CertificateRecord]
    /// Records this merge forgot (a bare tombstone or an expired record met by a record whose
    /// certificate has already expired; see ReplicatedStore+Certificates.swift), sorted: the
    /// shell deletes their rows. Never also in `certificatesChanged`.
    public var certificatesForgotten: [CertificateID]
    /// The new value of every floor this merge raised, sorted by (domain, user): the shell
    /// persists exactly these.
    public var tokenSequenceFloorsChanged: [TokenSequenceFloor]
    /// The part of the input that changed this replica; gossip it on (eager push). For
    /// certificates it carries the merged record (the join of the input with what was held),
    /// which tells a peer everything the input did and never less. Forgetting is not
    /// forwarded: every replica forgets by its own clock.
    public var forwardable: StoreDelta

    public init(added: [(KeyRef, KeyVersion)] = [], pruned: [(KeyRef, VersionID)] = [],
                primaryChanged: [KeyRef] = [], pskChanged: Bool = false,
                certificatesChanged: [CertificateRecord] = [],
                certificatesNewlyRemoved: [CertificateRecord] = [],
                certificatesForgotten: [CertificateID] = [],
                tokenSequenceFloorsChanged: [TokenSequenceFloor] = [],
                forwardable: StoreDelta = StoreDelta()) {
        self.added = added
        self.pruned = pruned
        self.primaryChanged = primaryChanged
        self.pskChanged = pskChanged
        self.certificatesChanged = certificatesChanged
        self.certificatesNewlyRemoved = certificatesNewlyRemoved
        self.certificatesForgotten = certificatesForgotten
        self.tokenSequenceFloorsChanged = tokenSequenceFloorsChanged
        self.forwardable = forwardable
    }
}

/// The parts of an anti-entropy bucket that can be digested and repaired on their own. After a
/// join every key declaration of the new node lands in almost every bucket; repairing whole
/// buckets then sent every certificate record and every key secret both ways (measured: 64 MB
/// of certificates each way between two nodes holding 100,000, both event loops busy for
/// seconds and SWIM probes late enough to declare a live member dead).
public struct BucketSections: OptionSet, Hashable, Sendable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    public static let keyVersions = BucketSections(rawValue: 1)
    public static let pskFingerprints = BucketSections(rawValue: 2)
    /// Certificate records and token floors: what a node keeps in its database.
    public static let durable = BucketSections(rawValue: 4)
    public static let all: BucketSections = [.keyVersions, .pskFingerprints, .durable]
}

/// Per-bucket digests of each section (`ReplicatedStore.sectionDigests()`), 16 bits each: they
/// travel with every bucket-digest answer (6 KB at 1,024 buckets, beside the 8 KB of the totals),
/// and only choose what a repair carries. Two different sections that collide are not repaired
/// in that round; the bucket's total still differs, and once no section looks different the
/// whole bucket is repaired (`differingSections`), so a collision delays, never loses, a repair.
public struct SectionDigests: Hashable, Sendable {
    public var keyVersions: [UInt16]
    public var pskFingerprints: [UInt16]
    public var durable: [UInt16]

    public init(keyVersions: [UInt16], pskFingerprints: [UInt16], durable: [UInt16]) {
        self.keyVersions = keyVersions
        self.pskFingerprints = pskFingerprints
        self.durable = durable
    }

    /// For each of `buckets`, the sections whose digests differ between `self` and `other`.
    /// Every section when the bucket counts differ (indices then mean nothing) or when no
    /// section differs (the totals differed, so something does: a digest collision).
    public func differingSections(from other: SectionDigests, in buckets: [Int]) -> [BucketSections] {
        let count = keyVersions.count
        guard pskFingerprints.count == count, durable.count == count, other.keyVersions.count == count,
              other.pskFingerprints.count == count, other.durable.count == count else {
            return Array(repeating: .all, count: buckets.count)
        }
        return buckets.map { b in
            guard b >= 0 && b < count else { return .all }
            var sections = BucketSections()
            if keyVersions[b] != other.keyVersions[b] { sections.insert(.keyVersions) }
            if pskFingerprints[b] != other.pskFingerprints[b] { sections.insert(.pskFingerprints) }
            if durable[b] != other.durable[b] { sections.insert(.durable) }
            return sections.isEmpty ? .all : sections
        }
    }
}
