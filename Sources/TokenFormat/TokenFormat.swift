import ReplicatedStore
import FoundationEssentials

/// MongooseIM's `mod_auth_token` token format (`src/mod_auth_token.erl`), byte for byte, so
/// tokens made here are accepted by MongooseIM and the other way round.
///
/// A token is `body NUL mac`: the body is the fields joined by NUL (`join_fields/1`),
///
///     access    NUL jid NUL expiry
///     refresh   NUL jid NUL expiry NUL sequence
///     provision NUL jid NUL expiry NUL vcard-xml
///
/// with the expiry in Gregorian seconds (`datetime_to_seconds/1`, i.e.
/// `calendar:datetime_to_gregorian_seconds`: Unix time + 62167219200) and integers in decimal
/// (`integer_to_binary`); the MAC is HMAC-SHA384 over the body (`keyed_hash/2`, `hmac_type`
/// defaulting to sha384) in lowercase hex (`serialize/1`, `base16:encode`). On the wire (the
/// token IQ, `token_to_xmlel/1`) the token is base64; SASL X-OAUTH (`cyrsasl_oauth:mech_step/2`)
/// carries the token itself inside SASL's own base64.
///
/// Pure: no keys, no clock. The node computes and compares the MAC (KeyCrypto, every active key
/// version) and decides expired or revoked; this type only builds bodies and takes tokens apart,
/// refusing anything malformed with a reason.
public enum TokenFormat {
    /// Seconds from 0000-01-01 (proleptic Gregorian, Erlang's `calendar`) to 1970-01-01.
    public static let gregorianEpochOffsetSeconds: Int64 = 62_167_219_200
    /// HMAC-SHA384 output length: the MAC field is twice this many hex digits.
    public static let macByteCount = 48
    /// Upper bound of a decoded token (a provision token carries a vCard): keeps a hostile input
    /// from becoming a large allocation.
    public static let maxTokenBytes = 64 * 1024

    /// Default lifetimes as MongooseIM's `default_validity_period/1` / its config defaults:
    /// access 1 hour, refresh 25 days. MongooseIM has none for provision tokens (it never issues
    /// them; a provisioning service does, with `provision_pre_shared`): 1 hour, like access.
    public static func defaultValiditySeconds(_ kind: TokenKind) -> Int64 {
        switch kind {
        case .access: return 3600
        case .refresh: return 25 * 24 * 3600
        case .provision: return 3600
        }
    }

    /// `body NUL lowercase-hex(mac)`: MongooseIM's `serialize/1`.
    public static func serialize(body: [UInt8], mac: [UInt8]) -> [UInt8] {
        var token = body
        token.reserveCapacity(body.count + 1 + 2 * mac.count)
        token.append(0)
        let digits = Array("0123456789abcdef".utf8)
        for byte in mac {
            token.append(digits[Int(byte >> 4)])
            token.append(digits[Int(byte & 0x0F)])
        }
        return token
    }

    /// Standard base64 with padding of `serialize(body:mac:)`, as the token IQ carries it
    /// (`jlib:encode_base64`).
    public static func base64Token(body: [UInt8], mac: [UInt8]) -> String {
        Data(serialize(body: body, mac: mac)).base64EncodedString()
    }

    /// Takes a base64 token apart. Standard alphabet; the padding may be left out (clients strip
    /// it); anything else, whitespace included, is malformed.
    public static func parse(base64 text: String) throws(TokenMalformation) -> ParsedToken {
        let limit = (maxTokenBytes + 2) / 3 * 4
        guard text.utf8.count <= limit else { throw .tooLong(bytes: text.utf8.count, limit: limit) }
        var padded = text
        switch text.utf8.count % 4 {
        case 0: break
        case 2: padded += "=="
        case 3: padded += "="
        default: throw .notBase64
        }
        guard let data = Data(base64Encoded: padded) else { throw .notBase64 }
        return try parse(serialized: Array(data))
    }

    /// Takes a serialized token (`body NUL mac`) apart, as `get_token_as_record/1` does, but
    /// strictly: decimal fields must be canonical (no sign, no leading zero) and the MAC exactly
    /// 96 hex digits (either case, as `base16:decode` accepts). The returned `body` is the bytes
    /// the MAC must cover: for access and refresh tokens these equal MongooseIM's re-serialized
    /// body (`join_fields/1` of the parsed record) because only canonical numbers are accepted;
    /// for provision tokens MongooseIM re-serializes the parsed vCard (`exml:to_binary`), which
    /// equals the received bytes for every token MongooseIM or this type made.
    public static func parse(serialized token: [UInt8]) throws(TokenMalformation) -> ParsedToken {
        guard token.count <= maxTokenBytes else { throw .tooLong(bytes: token.count, limit: maxTokenBytes) }
        let fields = token.split(separator: 0, omittingEmptySubsequences: false)
        guard let typeField = fields.first, let kindName = String(validating: typeField, as: UTF8.self),
              let kind = TokenKind(rawValue: kindName) else {
            throw .unknownType
        }
        let expected = kind == .access ? 4 : 5
        guard fields.count == expected else { throw .fieldCount(kind: kind, found: fields.count, expected: expected) }

        guard let jid = String(validating: fields[1], as: UTF8.self), !jid.isEmpty else { throw .badJID }
        guard let expiry = parseCanonicalDecimal(fields[2], max: UInt64(Int64.max)) else { throw .badExpiry }
        let payload: TokenPayload
        switch kind {
        case .access:
            payload = .access
        case .refresh:
            guard let sequence = parseCanonicalDecimal(fields[3], max: UInt64.max) else { throw .badSequence }
            payload = .refresh(sequence: sequence)
        case .provision:
            guard let vcard = String(validating: fields[3], as: UTF8.self), !vcard.isEmpty else { throw .badVCard }
            payload = .provision(vcard: vcard)
        }
        guard let mac = decodeHex(fields[expected - 1]), mac.count == macByteCount else { throw .badMAC }
        // The MAC field is the last one and holds no NUL, so the body is everything before it.
        let bodyLength = token.count - fields[expected - 1].count - 1
        let body = TokenBody(jid: jid, expiryGregorianSeconds: Int64(expiry), payload: payload)
        return ParsedToken(body: body, signedBytes: Array(token[..<bodyLength]), mac: mac)
    }

    static func parseCanonicalDecimal(_ digits: ArraySlice<UInt8>, max: UInt64) -> UInt64? {
        CanonicalDecimal.parse(digits, max: max)
    }

    static func decodeHex(_ text: ArraySlice<UInt8>) -> [UInt8]? {
        guard text.count % 2 == 0 else { return nil }
        func nibble(_ c: UInt8) -> UInt8? {
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): return c - UInt8(ascii: "A") + 10
            default: return nil
            }
        }
        var out: [UInt8] = []
        out.reserveCapacity(text.count / 2)
        var index = text.startIndex
        while index < text.endIndex {
            guard let high = nibble(text[index]), let low = nibble(text[index + 1]) else { return nil }
            out.append(high << 4 | low)
            index += 2
        }
        return out
    }
}

/// MongooseIM's `token_type()`: `access | refresh | provision`.
public enum TokenKind: String, Sendable, CaseIterable {
    case access, refresh, provision
}

/// What distinguishes the three token kinds.
public enum TokenPayload: Sendable, Equatable {
    case access
    /// The user's sequence number when the token was issued; the token is revoked once the
    /// user's floor is above it (`is_revoked/1`).
    case refresh(sequence: UInt64)
    /// The vCard XML a provision token sets for the user.
    case provision(vcard: String)
}

/// The fields of a token, i.e. what `join_fields/1` serializes.
public struct TokenBody: Sendable, Equatable {
    /// The JID as written in the token (a bare JID, or a full one: MongooseIM's token IQ signs
    /// the requester's full JID).
    public var jid: String
    /// Expiry in Gregorian seconds, as carried in the token.
    public var expiryGregorianSeconds: Int64
    public var payload: TokenPayload

    public init(jid: String, expiryGregorianSeconds: Int64, payload: TokenPayload) {
        self.jid = jid
        self.expiryGregorianSeconds = expiryGregorianSeconds
        self.payload = payload
    }

    /// A token expiring at `expiresAtUnixSeconds` (MongooseIM's `expiry_datetime/3` adds the
    /// validity period to the current time). Clamped to 0...Int64.max Gregorian seconds, the
    /// range `TokenFormat.parse` accepts, instead of wrapping.
    public init(jid: String, expiresAtUnixSeconds: Int64, payload: TokenPayload) {
        let (sum, overflow) = expiresAtUnixSeconds.addingReportingOverflow(TokenFormat.gregorianEpochOffsetSeconds)
        self.init(jid: jid, expiryGregorianSeconds: overflow ? Int64.max : max(0, sum), payload: payload)
    }

    public var kind: TokenKind {
        switch payload {
        case .access: return .access
        case .refresh: return .refresh
        case .provision: return .provision
        }
    }

    /// Valid while the current Unix time is below this (`is_not_expired/1`: now < expiry).
    public var expiresAtUnixSeconds: Int64 { expiryGregorianSeconds &- TokenFormat.gregorianEpochOffsetSeconds }

    /// The MAC input: fields joined by NUL (`join_fields/1`).
    public var serialized: [UInt8] {
        var fields: [String] = [kind.rawValue, jid, String(expiryGregorianSeconds)]
        switch payload {
        case .access: break
        case .refresh(let sequence): fields.append(String(sequence))
        case .provision(let vcard): fields.append(vcard)
        }
        return Array(fields.joined(separator: "\u{0}").utf8)
    }
}

/// A token taken apart. Its MAC has not been checked: that needs the key (KeyCrypto).
public struct ParsedToken: Sendable, Equatable {
    public var body: TokenBody
    /// The exact bytes the MAC covers.
    public var signedBytes: [UInt8]
    /// The MAC the token carries (decoded from hex, 48 bytes).
    public var mac: [UInt8]
}

/// Why a token is malformed (the API's `"reason": "malformed"`); the messages never echo the
/// token, which is a credential.
public enum TokenMalformation: Error, Equatable, CustomStringConvertible {
    case notBase64
    case tooLong(bytes: Int, limit: Int)
    case unknownType
    case fieldCount(kind: TokenKind, found: Int, expected: Int)
    case badJID
    case badExpiry
    case badSequence
    case badVCard
    case badMAC

    public var description: String {
        switch self {
        case .notBase64: return "the token is not base64"
        case let .tooLong(bytes, limit): return "the token has \(bytes) bytes, more than the \(limit) allowed"
        case .unknownType: return "the token does not start with access, refresh or provision"
        case let .fieldCount(kind, found, expected):
            return "a \(kind.rawValue) token has \(expected) NUL-separated fields, this one has \(found)"
        case .badJID: return "the token's JID is empty or not UTF-8"
        case .badExpiry: return "the token's expiry is not a canonical decimal number of seconds"
        case .badSequence: return "the refresh token's sequence number is not a canonical decimal number"
        case .badVCard: return "the provision token's vCard is empty or not UTF-8"
        case .badMAC: return "the token's MAC is not \(TokenFormat.macByteCount * 2) hex digits"
        }
    }
}
