import KeystoreJSON

// The request and response bodies of every route (see Routes.swift). Timestamps are ISO 8601
// text in UTC with milliseconds (`2026-12-06T13:28:38.123Z`); keys, MACs and DER certificates
// are base64. Responses only ever gain fields: clients decode leniently (unknown fields are
// ignored), the server decodes request bodies strictly (`StrictJSON`).

// MARK: Health and cluster

public enum HealthStatus: String, Codable, Sendable { case ok, degraded }

/// `GET /v1/health`
public struct HealthResponse: Codable, Sendable, Equatable {
    public var status: HealthStatus
    public var ready: Bool
    public var node: String
    public var cluster: String
    public var version: String
    public var memoryLocked: Bool
    /// One line each, what an operator should look at (PSK mismatch, failing disk, peers not answering).
    public var problems: [String]

    public init(status: HealthStatus, ready: Bool, node: String, cluster: String, version: String, memoryLocked: Bool, problems: [String]) {
        self.status = status; self.ready = ready; self.node = node; self.cluster = cluster
        self.version = version; self.memoryLocked = memoryLocked; self.problems = problems
    }

    enum CodingKeys: String, CodingKey {
        case status, ready, node, cluster, version, problems
        case memoryLocked = "memory_locked"
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        status = try c.decode(HealthStatus.self, forKey: .status)
        ready = try c.decode(Bool.self, forKey: .ready)
        node = try c.decode(String.self, forKey: .node)
        cluster = try c.decodeIfPresent(String.self, forKey: .cluster) ?? ""
        version = try c.decodeIfPresent(String.self, forKey: .version) ?? ""
        memoryLocked = try c.decodeIfPresent(Bool.self, forKey: .memoryLocked) ?? true
        problems = try c.decodeIfPresent([String].self, forKey: .problems) ?? []
    }
}

/// Liveness of a member as the answering node sees it.
public enum MemberState: String, Codable, Sendable, CaseIterable {
    case alive, suspect, dead
    /// Listed in the config but not heard from yet.
    case joining
    /// Removed from this node's config: no longer dialled or expected.
    case left
}

/// Anti-entropy state with a member (for the answering node itself: `ready` or `joining`).
public enum SyncState: String, Codable, Sendable, CaseIterable {
    /// This node: serving.
    case ready
    /// This node: still making its startup join decision.
    case joining
    /// The member's state digest equals ours at the last comparison.
    case inSync = "in_sync"
    /// Digests differed; a repair exchange is under way.
    case repairing
    /// Not compared yet (or the member is not alive).
    case unknown
}

public struct ClusterMemberInfo: Codable, Sendable, Equatable {
    public var node: String
    public var address: String
    public var state: MemberState
    public var lastContact: String?
    public var version: String?
    public var sync: SyncState?

    public init(node: String, address: String, state: MemberState, lastContact: String?, version: String?, sync: SyncState?) {
        self.node = node; self.address = address; self.state = state
        self.lastContact = lastContact; self.version = version; self.sync = sync
    }

    enum CodingKeys: String, CodingKey {
        case node, address, state, version, sync
        case lastContact = "last_contact"
    }
}

public struct PSKMismatchInfo: Codable, Sendable, Equatable {
    public var domain: String
    public var name: String
    public var nodes: [String]
    /// Node → first bytes of its keyed fingerprint (hex): enough to see which nodes agree.
    public var fingerprints: [String: String]

    public init(domain: String, name: String, nodes: [String], fingerprints: [String: String]) {
        self.domain = domain; self.name = name; self.nodes = nodes; self.fingerprints = fingerprints
    }
}

/// `GET /v1/cluster`
public struct ClusterResponse: Codable, Sendable, Equatable {
    public var node: String
    public var cluster: String
    public var ready: Bool
    public var members: [ClusterMemberInfo]
    public var pskMismatches: [PSKMismatchInfo]

    public init(node: String, cluster: String, ready: Bool, members: [ClusterMemberInfo], pskMismatches: [PSKMismatchInfo]) {
        self.node = node; self.cluster = cluster; self.ready = ready; self.members = members; self.pskMismatches = pskMismatches
    }

    enum CodingKeys: String, CodingKey {
        case node, cluster, ready, members
        case pskMismatches = "psk_mismatches"
    }
}

/// `POST /v1/reload`
public struct ReloadResponse: Codable, Sendable, Equatable {
    public var reloaded: Bool
    /// File keys whose content changed, as `domain/name`.
    public var changed: [String]
    /// Configuration changes applied, one line each (`domain second.com added`, ...).
    public var config: [String]

    public init(reloaded: Bool, changed: [String], config: [String]) {
        self.reloaded = reloaded; self.changed = changed; self.config = config
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        reloaded = try c.decode(Bool.self, forKey: .reloaded)
        changed = try c.decodeIfPresent([String].self, forKey: .changed) ?? []
        config = try c.decodeIfPresent([String].self, forKey: .config) ?? []
    }
}

// MARK: Keys

public enum KeyType: String, Codable, Sendable { case ram, file }

public struct KeySummary: Codable, Sendable, Equatable {
    public var name: String
    public var type: KeyType
    /// Live versions; nil while a RAM key is not ready yet.
    public var versions: Int?

    public init(name: String, type: KeyType, versions: Int?) {
        self.name = name; self.type = type; self.versions = versions
    }
}

/// `GET /v1/domains/{d}/keys`
public struct KeyListResponse: Codable, Sendable, Equatable {
    public var domain: String
    public var keys: [KeySummary]

    public init(domain: String, keys: [KeySummary]) { self.domain = domain; self.keys = keys }
}

public struct KeyVersionInfo: Codable, Sendable, Equatable {
    public var id: String
    /// Base64 key material; absent in metadata-only answers (rotate).
    public var key: String?
    public var primary: Bool
    public var created: String
    /// When a non-primary version stops being served (end of its grace period).
    public var expires: String?

    public init(id: String, key: String?, primary: Bool, created: String, expires: String?) {
        self.id = id; self.key = key; self.primary = primary; self.created = created; self.expires = expires
    }
}

/// `GET /v1/domains/{d}/keys/{k}` (with key material) and `POST .../rotate` (without).
public struct KeyResponse: Codable, Sendable, Equatable {
    public var domain: String
    public var name: String
    public var type: KeyType
    /// Primary first.
    public var versions: [KeyVersionInfo]

    public init(domain: String, name: String, type: KeyType, versions: [KeyVersionInfo]) {
        self.domain = domain; self.name = name; self.type = type; self.versions = versions
    }

    public var primary: KeyVersionInfo? { versions.first { $0.primary } }
}

public enum MACAlgorithm: String, Codable, Sendable, CaseIterable {
    case sha256, sha384, sha512
}

/// `POST /v1/domains/{d}/keys/{k}/hmac`
public struct HMACRequest: Codable, Sendable, Equatable, StrictlyDecodable {
    /// Base64 of the bytes to sign.
    public var input: String
    public var algorithm: MACAlgorithm

    public init(input: String, algorithm: MACAlgorithm) { self.input = input; self.algorithm = algorithm }
    public static let fieldNames = ["input", "algorithm"]
}

public struct HMACResponse: Codable, Sendable, Equatable {
    /// Base64 MAC.
    public var mac: String
    /// The key version that signed (the primary).
    public var version: String
    public var algorithm: MACAlgorithm

    public init(mac: String, version: String, algorithm: MACAlgorithm) { self.mac = mac; self.version = version; self.algorithm = algorithm }
}

/// `POST /v1/domains/{d}/keys/{k}/verify`
public struct VerifyMACRequest: Codable, Sendable, Equatable, StrictlyDecodable {
    public var input: String
    public var mac: String
    public var algorithm: MACAlgorithm

    public init(input: String, mac: String, algorithm: MACAlgorithm) { self.input = input; self.mac = mac; self.algorithm = algorithm }
    public static let fieldNames = ["input", "mac", "algorithm"]
}

public struct VerifyMACResponse: Codable, Sendable, Equatable {
    public var valid: Bool
    /// The active version the MAC matched (only when valid).
    public var version: String?

    public init(valid: Bool, version: String?) { self.valid = valid; self.version = version }
}

// MARK: Certificates (XEP-0257)

public enum CertificateState: String, Codable, Sendable { case active, disabled, revoked }

public struct CertificateEntry: Codable, Sendable, Equatable {
    public var name: String
    public var fingerprintSHA256: String
    public var notBefore: String
    public var notAfter: String
    /// The certificate's id-on-xmppAddr values (as prepared JIDs).
    public var jids: [String]
    public var noCertManagement: Bool
    public var added: String
    public var state: CertificateState
    /// Base64 DER; present while the certificate is active (a disabled or revoked entry keeps
    /// only what it takes to refuse the certificate again).
    public var certificate: String?

    public init(name: String, fingerprintSHA256: String, notBefore: String, notAfter: String, jids: [String],
                noCertManagement: Bool, added: String, state: CertificateState, certificate: String?) {
        self.name = name; self.fingerprintSHA256 = fingerprintSHA256; self.notBefore = notBefore; self.notAfter = notAfter
        self.jids = jids; self.noCertManagement = noCertManagement; self.added = added; self.state = state; self.certificate = certificate
    }

    enum CodingKeys: String, CodingKey {
        case name, jids, added, state, certificate
        case fingerprintSHA256 = "fingerprint_sha256"
        case notBefore = "not_before"
        case notAfter = "not_after"
        case noCertManagement = "no_cert_management"
    }
}

/// `GET /v1/domains/{d}/users/{u}/certs`, and the answer of `revoke-all`.
public struct CertificateListResponse: Codable, Sendable, Equatable {
    /// The bare JID.
    public var user: String
    public var certs: [CertificateEntry]

    public init(user: String, certs: [CertificateEntry]) { self.user = user; self.certs = certs }
}

/// `POST /v1/domains/{d}/users/{u}/certs`
public struct AddCertificateRequest: Codable, Sendable, Equatable, StrictlyDecodable {
    public var name: String
    /// PEM, or base64 DER.
    public var certificate: String
    public var noCertManagement: Bool?

    public init(name: String, certificate: String, noCertManagement: Bool? = nil) {
        self.name = name; self.certificate = certificate; self.noCertManagement = noCertManagement
    }

    enum CodingKeys: String, CodingKey {
        case name, certificate
        case noCertManagement = "no_cert_management"
    }
    public static let fieldNames = ["name", "certificate", "no_cert_management"]
}

/// `POST .../certs/{name}/disable` and `/revoke`. v1 answered with the one removed entry; a name
/// can now cover several certificates (two nodes may have accepted one name concurrently, and
/// the removal applies to all of them), so the answer is the first entry's fields, as before,
/// plus `certs` with every entry removed.
public struct CertificateRemovalResponse: Codable, Sendable, Equatable {
    public var entry: CertificateEntry
    public var certs: [CertificateEntry]

    public init(certs: [CertificateEntry]) {
        self.entry = certs[0]
        self.certs = certs
    }

    enum CodingKeys: String, CodingKey { case certs }

    public init(from decoder: Decoder) throws {
        entry = try CertificateEntry(from: decoder)
        certs = try decoder.container(keyedBy: CodingKeys.self).decodeIfPresent([CertificateEntry].self, forKey: .certs) ?? [entry]
    }

    public func encode(to encoder: Encoder) throws {
        try entry.encode(to: encoder)
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(certs, forKey: .certs)
    }
}

public struct CertificateRef: Codable, Sendable, Equatable {
    /// Localpart or bare JID.
    public var user: String
    public var fingerprintSHA256: String

    public init(user: String, fingerprintSHA256: String) { self.user = user; self.fingerprintSHA256 = fingerprintSHA256 }

    enum CodingKeys: String, CodingKey, CaseIterable {
        case user
        case fingerprintSHA256 = "fingerprint_sha256"
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        try c.rejectUnknownMembers(CodingKeys.self, decoder: decoder)
        user = try c.decode(String.self, forKey: .user)
        fingerprintSHA256 = try c.decode(String.self, forKey: .fingerprintSHA256)
    }
}

/// `POST /v1/domains/{d}/certs/status`: the batch re-check of sessions after an event gap.
public struct CertificateStatusRequest: Codable, Sendable, Equatable, StrictlyDecodable {
    public static let maxCertificates = 1000
    public var certs: [CertificateRef]

    public init(certs: [CertificateRef]) { self.certs = certs }
    public static let fieldNames = ["certs"]
}

public enum CertificateStatus: String, Codable, Sendable {
    case active, disabled, revoked
    /// Registered but outside its validity period now.
    case expired
    /// Never registered for this user.
    case unknown
}

public struct CertificateStatusEntry: Codable, Sendable, Equatable {
    /// The bare JID.
    public var user: String
    public var fingerprintSHA256: String
    public var state: CertificateStatus

    public init(user: String, fingerprintSHA256: String, state: CertificateStatus) {
        self.user = user; self.fingerprintSHA256 = fingerprintSHA256; self.state = state
    }

    enum CodingKeys: String, CodingKey {
        case user, state
        case fingerprintSHA256 = "fingerprint_sha256"
    }
}

public struct CertificateStatusResponse: Codable, Sendable, Equatable {
    /// In request order.
    public var certs: [CertificateStatusEntry]
    public init(certs: [CertificateStatusEntry]) { self.certs = certs }
}

/// `POST /v1/domains/{d}/sasl-external`
public struct SASLExternalRequest: Codable, Sendable, Equatable, StrictlyDecodable {
    public var certificate: String
    public var authzid: String?

    public init(certificate: String, authzid: String? = nil) { self.certificate = certificate; self.authzid = authzid }
    public static let fieldNames = ["certificate", "authzid"]
}

public struct SASLExternalResponse: Codable, Sendable, Equatable {
    /// The authenticated identity: the full JID for a full-JID certificate, else the bare JID.
    public var jid: String
    public var name: String
    public var fingerprintSHA256: String
    public var noCertManagement: Bool
    public var notAfter: String

    public init(jid: String, name: String, fingerprintSHA256: String, noCertManagement: Bool, notAfter: String) {
        self.jid = jid; self.name = name; self.fingerprintSHA256 = fingerprintSHA256
        self.noCertManagement = noCertManagement; self.notAfter = notAfter
    }

    enum CodingKeys: String, CodingKey {
        case jid, name
        case fingerprintSHA256 = "fingerprint_sha256"
        case noCertManagement = "no_cert_management"
        case notAfter = "not_after"
    }
}

// MARK: Tokens (MongooseIM mod_auth_token format)

public enum TokenType: String, Codable, Sendable, CaseIterable {
    case access, refresh, provision
}

/// `POST /v1/domains/{d}/tokens`
public struct IssueTokenRequest: Codable, Sendable, Equatable, StrictlyDecodable {
    public var type: TokenType
    /// Bare JID of the user (in domain `{d}`).
    public var jid: String
    /// Lifetime; defaults as MongooseIM: access 3600 s, refresh 25 days, provision 3600 s.
    public var validForSeconds: Int?
    /// The vCard XML carried by a provision token.
    public var vcard: String?

    public init(type: TokenType, jid: String, validForSeconds: Int? = nil, vcard: String? = nil) {
        self.type = type; self.jid = jid; self.validForSeconds = validForSeconds; self.vcard = vcard
    }

    enum CodingKeys: String, CodingKey {
        case type, jid, vcard
        case validForSeconds = "valid_for_s"
    }
    public static let fieldNames = ["type", "jid", "valid_for_s", "vcard"]
}

public struct IssueTokenResponse: Codable, Sendable, Equatable {
    /// Base64 of the NUL-separated token.
    public var token: String
    public var expires: String
    /// The key version that signed it.
    public var version: String
    /// Refresh tokens: the user's sequence number embedded in the token.
    public var sequence: Int?

    public init(token: String, expires: String, version: String, sequence: Int?) {
        self.token = token; self.expires = expires; self.version = version; self.sequence = sequence
    }
}

/// `POST /v1/domains/{d}/tokens/verify`
public struct VerifyTokenRequest: Codable, Sendable, Equatable, StrictlyDecodable {
    public var token: String
    public init(token: String) { self.token = token }
    public static let fieldNames = ["token"]
}

public enum TokenRejection: String, Codable, Sendable {
    case malformed, mac, expired, revoked
}

public struct VerifyTokenResponse: Codable, Sendable, Equatable {
    public var valid: Bool
    public var type: TokenType?
    public var jid: String?
    public var expires: String?
    public var sequence: Int?
    /// Vcard XML of a valid provision token.
    public var vcard: String?
    /// Why an invalid token was refused.
    public var reason: TokenRejection?

    public init(valid: Bool, type: TokenType? = nil, jid: String? = nil, expires: String? = nil, sequence: Int? = nil,
                vcard: String? = nil, reason: TokenRejection? = nil) {
        self.valid = valid; self.type = type; self.jid = jid; self.expires = expires
        self.sequence = sequence; self.vcard = vcard; self.reason = reason
    }
}

/// `POST /v1/domains/{d}/users/{u}/tokens/revoke`: refresh tokens with a sequence below the
/// new floor are refused on every node.
public struct RevokeTokensResponse: Codable, Sendable, Equatable {
    public var user: String
    /// The user's new sequence floor: refresh tokens issued from now on carry at least this.
    public var sequence: Int

    public init(user: String, sequence: Int) { self.user = user; self.sequence = sequence }
}

// MARK: Events

public enum EventType: String, Codable, Sendable {
    case hello
    case keyRotated = "key_rotated"
    case certificateRevoked = "cert_revoked"
    case certificateDisabled = "cert_disabled"
    case tokensRevoked = "tokens_revoked"
    case member
    case heartbeat
    /// Events were missed and cannot be replayed: re-check everything.
    case resync
    /// This consumer fell too far behind and is being disconnected.
    case overflow
}

/// One line of `GET /v1/events`. Which fields are present depends on `type`; `type` stays a
/// string so a consumer keeps working when a newer daemon adds event types.
public struct Event: Codable, Sendable, Equatable {
    public var type: String
    /// Resume point: pass the last one seen as `?since=` after a reconnect.
    public var cursor: String?
    public var seq: Int?
    public var time: String?
    public var node: String?
    public var domain: String?
    // key_rotated
    public var name: String?
    public var primary: String?
    // cert_revoked, cert_disabled, tokens_revoked
    public var user: String?
    public var fingerprintSHA256: String?
    public var origin: String?
    public var sequence: Int?
    // member
    public var member: String?
    public var state: String?
    public var address: String?
    public var previous: String?
    // resync, overflow
    public var reason: String?
    public var message: String?

    public init(type: String) { self.type = type }

    public var eventType: EventType? { EventType(rawValue: type) }

    enum CodingKeys: String, CodingKey {
        case type, cursor, seq, time, node, domain, name, primary, user, origin, sequence, member, state, address, previous, reason, message
        case fingerprintSHA256 = "fingerprint_sha256"
    }
}

/// The software version every binary reports (`--version`, health, peer hellos).
public let keystoreVersion = "0.2.0"
