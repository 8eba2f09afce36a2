/// What the XEP-0257 rules need to know about one stored registration (live or tombstoned).
public struct RegisteredCertificate: Sendable, Equatable {
    public var name: String
    /// The owning account; always a bare JID.
    public var user: JID
    public var sha256: [UInt8]
    public var notBeforeMillis: Int64
    public var notAfterMillis: Int64
    public var xmppAddrs: [JID]
    /// XEP-0257 `<no-cert-management/>`: a session authenticated with this certificate may not manage
    /// certificates. The rules here do not use it; the API layer enforces it.
    public var noCertManagement: Bool
    /// Disabled or revoked: a tombstone that keeps the fingerprint from ever being used or re-added.
    public var removed: Bool

    public init(name: String, user: JID, sha256: [UInt8], notBeforeMillis: Int64, notAfterMillis: Int64,
                xmppAddrs: [JID], noCertManagement: Bool, removed: Bool) {
        self.name = name
        self.user = user
        self.sha256 = sha256
        self.notBeforeMillis = notBeforeMillis
        self.notAfterMillis = notAfterMillis
        self.xmppAddrs = xmppAddrs
        self.noCertManagement = noCertManagement
        self.removed = removed
    }

    /// The live record an accepted `append` should store.
    public init(name: String, user: JID, certificate: ParsedCertificate, noCertManagement: Bool) {
        self.init(name: name, user: user.bare, sha256: certificate.sha256, notBeforeMillis: certificate.notBeforeMillis,
                  notAfterMillis: certificate.notAfterMillis, xmppAddrs: certificate.xmppAddrs,
                  noCertManagement: noCertManagement, removed: false)
    }

    public var fingerprintHex: String { Hex.encode(sha256) }
}

/// Why `append` refused a certificate. Each case maps to one DESIGN.md rule 2 clause.
public enum RegistryError: Error, CustomStringConvertible, Equatable, Sendable {
    case certificate(CertificateError)
    case notYetValid(notBefore: Int64)
    case expired(notAfter: Int64)
    case noXmppAddrForUser(user: JID, found: [JID])
    /// A live registration of this user already has this name.
    case nameInUse(String)
    /// This exact certificate is already registered (live) for this user, under `name`.
    case alreadyRegistered(name: String)
    /// This certificate was disabled or revoked for this user; tombstones are permanent.
    case previouslyRemoved(fingerprint: String)
    case badName(String)
    /// Registrations belong to accounts, so `user` must be a bare JID.
    case userNotBare(JID)

    public var description: String {
        switch self {
        case let .certificate(e): return e.description
        case let .notYetValid(nb):
            return "certificate is not valid yet (notBefore \(nb) ms since epoch): register it once its validity period has started"
        case let .expired(na):
            return "certificate has expired (notAfter \(na) ms since epoch): issue a new certificate"
        case let .noXmppAddrForUser(user, found):
            let list = found.isEmpty ? "none" : found.map { $0.description }.joined(separator: ", ")
            return "certificate has no id-on-xmppAddr for \(user) (found: \(list)): reissue it with otherName 1.3.6.1.5.5.7.8.5;UTF8:\(user)"
        case let .nameInUse(name):
            return "certificate name \"\(ParsedCertificate.printable(name))\" is already used by this user: choose another name or remove the existing certificate"
        case let .alreadyRegistered(name):
            return "this certificate is already registered for this user as \"\(ParsedCertificate.printable(name))\": nothing to do"
        case let .previouslyRemoved(fp):
            return "certificate \(fp) was disabled or revoked for this user and can never be registered again: issue a new certificate"
        case let .badName(reason):
            return "invalid certificate name: \(reason)"
        case let .userNotBare(jid):
            return "user \(jid) has a resource: certificates are registered for bare JIDs (user@domain)"
        }
    }
}

/// Why SASL EXTERNAL with a certificate was refused (DESIGN.md certificate rule 4).
public enum VerificationFailure: Error, CustomStringConvertible, Equatable, Sendable {
    case notRegistered
    case removed
    case notYetValid
    case expired
    case noXmppAddr
    /// No authzid was given and the certificate names several JIDs, so the identity is not determined.
    case ambiguousIdentity([JID])
    case authzidNotInCertificate(JID)
    /// The authzid's account is in the certificate only as full JIDs, and the authzid is not one of them.
    case resourceRestricted(allowed: [JID])
    /// The authenticated JID is not in the virtual domain the request came for.
    case wrongDomain(jid: JID, domain: String)

    public var description: String {
        switch self {
        case .notRegistered: return "certificate is not registered for this account: register it with certs add first"
        case .removed: return "certificate was disabled or revoked: register a new certificate"
        case .notYetValid: return "certificate is not valid yet: retry once its notBefore time has passed"
        case .expired: return "certificate has expired: register a new certificate"
        case .noXmppAddr: return "certificate has no id-on-xmppAddr subjectAltName: it cannot identify an account"
        case let .ambiguousIdentity(jids):
            return "certificate names several JIDs (\(jids.map { $0.description }.joined(separator: ", "))): send an authzid to choose one"
        case let .authzidNotInCertificate(jid):
            return "authzid \(jid) is not named in the certificate's id-on-xmppAddr: use a JID the certificate names"
        case let .resourceRestricted(allowed):
            return "certificate only authorizes \(allowed.map { $0.description }.joined(separator: ", ")): use one of these full JIDs as authzid"
        case let .wrongDomain(jid, domain):
            return "\(jid) is not in domain \(domain): authenticate against the JID's own domain"
        }
    }
}

/// The XEP-0257 decisions, free of I/O and clocks so every replica reaches the same verdict.
public enum CertificateRules {
    public static let maxNameBytes = 128

    /// append(name, cert) for `user` (bare JID) given the user's current records (live AND removed).
    /// Records of other users in `existing` are ignored: every rule here is per account.
    public static func checkAppend(_ cert: ParsedCertificate, name: String, user: JID,
                                   existing: [RegisteredCertificate], nowMillis: Int64) throws(RegistryError) {
        guard user.isBare else { throw .userNotBare(user) }
        if let problem = nameProblem(name) { throw .badName(problem) }
        guard cert.xmppAddrs.contains(where: { $0.bare == user }) else {
            throw .noXmppAddrForUser(user: user, found: cert.xmppAddrs)
        }
        if nowMillis < cert.notBeforeMillis { throw .notYetValid(notBefore: cert.notBeforeMillis) }
        if nowMillis > cert.notAfterMillis { throw .expired(notAfter: cert.notAfterMillis) }
        let mine = existing.filter { $0.user == user }
        if mine.contains(where: { $0.removed && $0.sha256 == cert.sha256 }) {
            throw .previouslyRemoved(fingerprint: cert.fingerprintHex)
        }
        if let same = mine.first(where: { !$0.removed && $0.sha256 == cert.sha256 }) {
            throw .alreadyRegistered(name: same.name)
        }
        if mine.contains(where: { !$0.removed && $0.name == name }) { throw .nameInUse(name) }
    }

    /// nil when `name` is acceptable. Names appear in URL paths and CLI output, hence no '/' or controls.
    public static func nameProblem(_ name: String) -> String? {
        let bytes = name.utf8.count
        if bytes == 0 { return "name is empty: give the certificate a name of 1 to \(maxNameBytes) bytes" }
        if bytes > maxNameBytes { return "name is \(bytes) bytes: use at most \(maxNameBytes) bytes" }
        if JID.hasControlCharacters(name) { return "name contains control characters: use printable characters only" }
        if name.contains("/") { return "name contains '/': choose a name without slashes" }
        return nil
    }

    /// SASL EXTERNAL: which JID does this certificate authenticate as, in virtual domain `domain`?
    /// A bare-JID xmppAddr authorizes that bare JID and any of its full JIDs; a full-JID xmppAddr
    /// authorizes only that exact full JID.
    public static func verify(_ cert: ParsedCertificate, authzid: JID?, domain: String, nowMillis: Int64,
                              registered: (_ user: JID) -> [RegisteredCertificate]) -> Result<JID, VerificationFailure> {
        if nowMillis < cert.notBeforeMillis { return .failure(.notYetValid) }
        if nowMillis > cert.notAfterMillis { return .failure(.expired) }
        guard !cert.xmppAddrs.isEmpty else { return .failure(.noXmppAddr) }

        let identity: JID
        if let authzid {
            let authorized = cert.xmppAddrs.contains { addr in
                addr.isBare ? addr == authzid.bare : addr == authzid
            }
            if !authorized {
                let sameAccount = cert.xmppAddrs.filter { $0.bare == authzid.bare }
                return .failure(sameAccount.isEmpty ? .authzidNotInCertificate(authzid) : .resourceRestricted(allowed: sameAccount))
            }
            identity = authzid
        } else {
            guard cert.xmppAddrs.count == 1, let only = cert.xmppAddrs.first else {
                return .failure(.ambiguousIdentity(cert.xmppAddrs))
            }
            identity = only
        }
        // JID domains are stored lowercased and without a trailing dot; normalize the caller's the same way.
        let wanted = JID(domain).map { $0.domain } ?? domain.lowercased()
        guard identity.domain == wanted else {
            return .failure(.wrongDomain(jid: identity, domain: domain))
        }

        let account = identity.bare
        var live = false
        var tombstoned = false
        // Compare against every record without an early exit so timing does not reveal which matched.
        for record in registered(account) where record.user == account {
            let match = constantTimeEqual(record.sha256, cert.sha256)
            if record.removed { tombstoned = tombstoned || match } else { live = live || match }
        }
        if tombstoned { return .failure(.removed) }
        return live ? .success(identity) : .failure(.notRegistered)
    }

    /// Equal-length inputs are compared in time independent of their contents; lengths are public.
    public static func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        guard a.count == b.count else { return false }
        var diff: UInt8 = 0
        for i in 0..<a.count { diff |= a[i] ^ b[i] }
        return diff == 0
    }
}
