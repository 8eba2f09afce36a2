/// One certificate registration (or its removal tombstone) as it is kept on disk.
///
/// Plain data on purpose: the replicated store owns the merge rules and maps its own record type to
/// this one, so the database never has to know about HLCs or merge semantics. Certificates are public
/// data; nothing secret (RAM keys, PSKs) has a field here, so nothing secret can reach the disk.
///
/// A bare tombstone (a removal heard of before the registration itself) has `nil` content fields:
/// `name`, `der`, `notBeforeMillis`, `notAfterMillis` and the `added*` fields.
public struct StoredCertificate: Sendable, Equatable {
    public var domain: String
    public var user: String
    /// SHA-256 of the DER; together with `domain` and `user` it identifies the row.
    public var sha256: [UInt8]
    public var name: String?
    public var der: [UInt8]?
    public var notBeforeMillis: Int64?
    public var notAfterMillis: Int64?
    public var jids: [String]
    public var noCertManagement: Bool
    public var addedWall: UInt64?
    public var addedLogical: UInt32?
    public var addedOrigin: String?
    public var removalKind: UInt8?
    public var removalWall: UInt64?
    public var removalLogical: UInt32?
    public var removalOrigin: String?

    public init(
        domain: String, user: String, sha256: [UInt8],
        name: String? = nil, der: [UInt8]? = nil,
        notBeforeMillis: Int64? = nil, notAfterMillis: Int64? = nil,
        jids: [String] = [], noCertManagement: Bool = false,
        addedWall: UInt64? = nil, addedLogical: UInt32? = nil, addedOrigin: String? = nil,
        removalKind: UInt8? = nil, removalWall: UInt64? = nil, removalLogical: UInt32? = nil,
        removalOrigin: String? = nil
    ) {
        self.domain = domain
        self.user = user
        self.sha256 = sha256
        self.name = name
        self.der = der
        self.notBeforeMillis = notBeforeMillis
        self.notAfterMillis = notAfterMillis
        self.jids = jids
        self.noCertManagement = noCertManagement
        self.addedWall = addedWall
        self.addedLogical = addedLogical
        self.addedOrigin = addedOrigin
        self.removalKind = removalKind
        self.removalWall = removalWall
        self.removalLogical = removalLogical
        self.removalOrigin = removalOrigin
    }
}
