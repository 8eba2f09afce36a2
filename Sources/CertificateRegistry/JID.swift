/// An XMPP address, normalized so that two spellings of the same account compare equal.
///
/// This is a deliberately simplified RFC 7622: local and domain parts are lowercased with Unicode
/// `lowercased()` instead of the full PRECIS/IDNA profiles, and only the characters RFC 7622 forbids
/// outright in a localpart are rejected. That is enough for the registry, where JIDs come from
/// certificates and requests that the XMPP server already normalized; it is not a general validator.
public struct JID: Hashable, Sendable, CustomStringConvertible {
    /// RFC 7622 caps every part at 1023 bytes; longer parts cannot be stored by any conforming server.
    public static let maxPartBytes = 1023
    /// Characters RFC 7622 §3.3.1 forbids in a localpart (besides whitespace and controls).
    static let forbiddenLocalCharacters: Set<Character> = ["\"", "&", "'", "/", ":", "<", ">", "@"]

    public let local: String?
    public let domain: String
    public let resource: String?

    /// Split at the first '/' (resource, kept verbatim because resources are case-sensitive) and, before
    /// it, at the first '@' (local part). Returns nil for anything a server would refuse.
    public init?(_ string: String) {
        var head = Substring(string)
        var resource: String? = nil
        if let slash = string.firstIndex(of: "/") {
            head = string[..<slash]
            resource = String(string[string.index(after: slash)...])
        }
        var local: String? = nil
        var domainPart = head
        if let at = head.firstIndex(of: "@") {
            local = String(head[..<at]).lowercased()
            domainPart = head[head.index(after: at)...]
        }
        var domain = String(domainPart).lowercased()
        // A trailing dot names the same DNS domain; RFC 7622 §3.2 says to strip it.
        if domain.hasSuffix(".") { domain.removeLast() }
        guard JID.validDomain(domain) else { return nil }
        if let local, !JID.validLocal(local) { return nil }
        if let resource, !JID.validResource(resource) { return nil }
        self.local = local
        self.domain = domain
        self.resource = resource
    }

    init(uncheckedLocal local: String?, domain: String, resource: String?) {
        self.local = local
        self.domain = domain
        self.resource = resource
    }

    /// The account this address belongs to; certificates are registered per bare JID.
    public var bare: JID { JID(uncheckedLocal: local, domain: domain, resource: nil) }
    public var isBare: Bool { resource == nil }

    public var description: String {
        var s = ""
        if let local { s += local + "@" }
        s += domain
        if let resource { s += "/" + resource }
        return s
    }

    static func hasControlCharacters(_ s: String) -> Bool {
        s.unicodeScalars.contains { $0.properties.generalCategory == .control }
    }

    /// Characters that can appear in neither a DNS name nor an IP literal.
    static let forbiddenDomainCharacters: Set<Character> = ["\"", "&", "'", "/", "<", ">", "@", "\\"]

    /// Empty labels ("a..b", ".a", "a..") are rejected so that stripping one trailing dot is idempotent.
    static func validDomain(_ d: String) -> Bool {
        guard !d.isEmpty, d.utf8.count <= maxPartBytes, !hasControlCharacters(d) else { return false }
        guard !d.split(separator: ".", omittingEmptySubsequences: false).contains(where: { $0.isEmpty }) else { return false }
        return !d.contains { $0.isWhitespace || forbiddenDomainCharacters.contains($0) }
    }

    static func validLocal(_ l: String) -> Bool {
        guard !l.isEmpty, l.utf8.count <= maxPartBytes, !hasControlCharacters(l) else { return false }
        return !l.contains { $0.isWhitespace || forbiddenLocalCharacters.contains($0) }
    }

    static func validResource(_ r: String) -> Bool {
        !r.isEmpty && r.utf8.count <= maxPartBytes && !hasControlCharacters(r)
    }
}
