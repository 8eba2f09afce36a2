internal import CLibIDN

/// An XMPP address, prepared once when it is parsed so that every spelling of the same account is the
/// same bytes everywhere it goes: store keys, SQLite rows, digests, events and logs.
///
/// Each part goes through the RFC 6122 stringprep profile Prosody applies (nodeprep, nameprep,
/// resourceprep, via libidn with the same flags), so a JID prepared here is byte-identical to the one
/// the XMPP server uses: "Ä" written precomposed (NFC) or decomposed (NFD), upper or lower case, is one
/// user. On top of that, rules the profiles leave out are kept: no empty DNS labels, no control or
/// whitespace characters in the domain.
public struct JID: Hashable, Sendable, CustomStringConvertible {
    /// RFC 6122/7622 cap every part at 1023 bytes; longer parts cannot be stored by any conforming server.
    public static let maxPartBytes = 1023
    /// Characters RFC 7622 §3.3.1 forbids in a localpart (nodeprep prohibits them too; checked again
    /// after preparation so the rule stays visible here).
    static let forbiddenLocalScalars: Set<Unicode.Scalar> = ["\"", "&", "'", "/", ":", "<", ">", "@"]

    public let local: String?
    public let domain: String
    public let resource: String?

    /// Split at the first '/' (everything after it is the resource) and, before it, at the first '@'
    /// (local part), then prepare each part. Returns nil for anything a server would refuse; use
    /// `init(parsing:)` to learn why.
    public init?(_ string: String) {
        guard let jid = try? JID(parsing: string) else { return nil }
        self = jid
    }

    /// Parses and prepares `string`, or says which part is wrong and why.
    ///
    /// The split works on Unicode scalars, not Characters: a combining mark or joiner right after '@' or
    /// '/' would otherwise glue the separator into one grapheme and hide it (Prosody splits bytes).
    public init(parsing string: String) throws(JIDError) {
        guard !string.isEmpty else { throw .empty }
        let scalars = string.unicodeScalars
        var head = scalars[...]
        var resource: Substring.UnicodeScalarView? = nil
        if let slash = scalars.firstIndex(of: "/") {
            head = scalars[..<slash]
            resource = scalars[scalars.index(after: slash)...]
        }
        var local: Substring.UnicodeScalarView? = nil
        var domain = head
        if let at = head.firstIndex(of: "@") {
            local = head[..<at]
            domain = head[head.index(after: at)...]
        }
        // A trailing dot names the same DNS domain; RFC 7622 §3.2 (and Prosody) strip it before nameprep.
        if domain.last == "." { domain.removeLast() }

        let preparedDomain = try StringPrep.prepare(domain, .domainpart)
        try JID.checkDomain(preparedDomain)
        var preparedLocal: String? = nil
        if let local {
            let prepared = try StringPrep.prepare(local, .localpart)
            if prepared.unicodeScalars.contains(where: { $0.properties.isWhitespace || JID.forbiddenLocalScalars.contains($0) }) {
                throw .prohibitedCharacters(.localpart)
            }
            preparedLocal = prepared
        }
        let preparedResource = try resource.map { (text) throws(JIDError) in try StringPrep.prepare(text, .resourcepart) }
        self.local = preparedLocal
        self.domain = preparedDomain
        self.resource = preparedResource
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

    static func hasControlCharacters(_ s: some StringProtocol) -> Bool {
        s.unicodeScalars.contains { $0.properties.generalCategory == .control }
    }

    /// Characters that can appear in neither a DNS name nor an IP literal.
    static let forbiddenDomainScalars: Set<Unicode.Scalar> = ["\"", "&", "'", "/", "<", ">", "@", "\\"]

    /// nameprep leaves ASCII punctuation, spaces and controls alone; a domain must have none of them.
    /// Empty labels ("a..b", ".a", "a..") are rejected so that stripping one trailing dot is idempotent.
    private static func checkDomain(_ d: String) throws(JIDError) {
        if d.unicodeScalars.contains(where: {
            $0.properties.generalCategory == .control || $0.properties.isWhitespace || forbiddenDomainScalars.contains($0)
        }) {
            throw .prohibitedCharacters(.domainpart)
        }
        if d.split(separator: ".", omittingEmptySubsequences: false).contains(where: { $0.isEmpty }) {
            throw .emptyDomainLabel
        }
    }
}

/// The three parts of a JID, for error messages.
public enum JIDPart: String, Sendable {
    case localpart, domainpart, resourcepart
}

/// Why a string is not a JID. Messages name the part and the rule, never echo the input (which may come
/// from a certificate or a request and hold anything).
public enum JIDError: Error, CustomStringConvertible, Equatable, Sendable {
    case empty
    /// A part is empty, as written ("@first.com", "first.com/") or after preparation removed every
    /// character (only soft hyphens or zero-width joiners, say).
    case emptyPart(JIDPart)
    /// A part is longer than `JID.maxPartBytes` bytes of UTF-8, as written or after preparation.
    case partTooLong(JIDPart)
    /// A part holds a code point its stringprep profile (or RFC 7622) prohibits: spaces, controls,
    /// `"&'/:<>@` in a localpart, private-use or unassigned-surrogate code points, NUL, ...
    case prohibitedCharacters(JIDPart)
    /// Mixed left-to-right and right-to-left text that violates the stringprep bidi rule.
    case bidiViolation(JIDPart)
    /// The domain has an empty label ("first..com", ".first.com").
    case emptyDomainLabel
    /// libidn failed for a reason unrelated to the input (out of memory).
    case preparationFailed(JIDPart, code: Int32)

    public var description: String {
        switch self {
        case .empty:
            return "JID is empty: use user@domain or user@domain/resource"
        case let .emptyPart(part):
            return "JID \(part.rawValue) is empty (as written or after stringprep): write a non-empty \(part.rawValue)"
        case let .partTooLong(part):
            return "JID \(part.rawValue) is longer than \(JID.maxPartBytes) bytes (as written or after stringprep): shorten it"
        case let .prohibitedCharacters(part):
            return "JID \(part.rawValue) contains characters XMPP prohibits there (spaces, controls, or \"&'/:<>@ in a localpart): remove them"
        case let .bidiViolation(part):
            return "JID \(part.rawValue) mixes left-to-right and right-to-left text in a way stringprep forbids"
        case .emptyDomainLabel:
            return "JID domainpart has an empty label (\"..\" or a leading dot): write the domain name as DNS spells it"
        case let .preparationFailed(part, code):
            return "JID \(part.rawValue) could not be prepared (libidn stringprep error \(code)); retry"
        }
    }
}

/// libidn's stringprep, the way Prosody's util.encodings calls it, behind Swift strings only.
private enum StringPrep {
    /// Prosody prepares into a 1024-byte buffer; so do we, which is what caps a prepared part at 1023 bytes.
    static let capacity = JID.maxPartBytes + 1

    static func prepare(_ text: Substring.UnicodeScalarView, _ part: JIDPart) throws(JIDError) -> String {
        let input = Array(String(text).utf8)
        guard !input.isEmpty else { throw .emptyPart(part) }
        guard input.count <= JID.maxPartBytes else { throw .partTooLong(part) }
        // A C string ends at the first NUL; Prosody refuses such input for the same reason.
        guard !input.contains(0) else { throw .prohibitedCharacters(part) }
        var buffer = [CChar](repeating: 0, count: capacity)
        let rc = buffer.withUnsafeMutableBufferPointer { space -> Int32 in
            let start = space.baseAddress!
            input.withUnsafeBytes { UnsafeMutableRawPointer(start).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
            switch part {
            case .localpart: return ks_xmpp_nodeprep(start, space.count)
            case .domainpart: return ks_nameprep(start, space.count)
            case .resourcepart: return ks_xmpp_resourceprep(start, space.count)
            }
        }
        switch Int(rc) {
        case Int(STRINGPREP_OK.rawValue): break
        case Int(STRINGPREP_CONTAINS_PROHIBITED.rawValue), Int(STRINGPREP_CONTAINS_UNASSIGNED.rawValue):
            throw .prohibitedCharacters(part)
        case Int(STRINGPREP_BIDI_BOTH_L_AND_RAL.rawValue), Int(STRINGPREP_BIDI_LEADTRAIL_NOT_RAL.rawValue),
             Int(STRINGPREP_BIDI_CONTAINS_PROHIBITED.rawValue):
            throw .bidiViolation(part)
        case Int(STRINGPREP_TOO_SMALL_BUFFER.rawValue):
            throw .partTooLong(part)
        default:
            throw .preparationFailed(part, code: rc)
        }
        let prepared = buffer.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        guard !prepared.isEmpty else { throw .emptyPart(part) }
        return prepared
    }
}
