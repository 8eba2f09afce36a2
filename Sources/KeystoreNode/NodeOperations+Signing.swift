import CertificateRegistry
import KeyCrypto
import KeystoreAPI
import ReplicatedStore
import SecretMemory
import TokenFormat

/// Keys that never leave: HMAC and MongooseIM-format tokens computed inside the node, with the
/// key in protected memory, so a service that signs or verifies never holds the secret.
/// Verification accepts every active version, so a rotation logs nobody out within the grace
/// period (MongooseIM itself accepts exactly one key).
extension NodeOperations {
    /// The key MongooseIM's `mod_auth_token` uses for each token type.
    static func tokenKeyName(_ type: TokenType) -> String {
        switch type {
        case .access, .refresh: return "token_secret"
        case .provision: return "provision_pre_shared"
        }
    }

    /// A key's usable versions, primary first (a file key has one).
    private func activeSecrets(_ ref: KeyRef) throws(NodeError) -> [(id: String, secret: SecretBytes)] {
        switch state.lookup(ref) {
        case .notFound: throw .unknownKey(ref)
        case .notReady: throw .notReady("ram key \(ref.name)")
        case .file(let key): return [(key.versionID, key.secret)]
        case .ram(let versions): return versions.map { ($0.view.version.id.description, $0.secret) }
        }
    }

    private static func algorithm(_ algorithm: MACAlgorithm) -> HMACAlgorithm {
        switch algorithm {
        case .sha256: return .sha256
        case .sha384: return .sha384
        case .sha512: return .sha512
        }
    }

    /// HMAC of `input` with the key's primary version.
    func signHMAC(_ ref: KeyRef, algorithm: MACAlgorithm, input: [UInt8]) throws(NodeError) -> (mac: [UInt8], version: String) {
        guard let primary = try activeSecrets(ref).first else { throw .notReady("ram key \(ref.name)") }
        do {
            return (try KeyCrypto.hmac(algorithm: Self.algorithm(algorithm), key: primary.secret, input: input), primary.id)
        } catch {
            throw .crypto(error.description)
        }
    }

    /// The active version `mac` was made with, nil when none matches (compared in constant time
    /// against every active version).
    func verifyHMAC(_ ref: KeyRef, algorithm: MACAlgorithm, input: [UInt8], mac: [UInt8]) throws(NodeError) -> String? {
        let versions = try activeSecrets(ref)
        do {
            let index = try KeyCrypto.verify(algorithm: Self.algorithm(algorithm), keys: versions.map(\.secret), input: input, mac: mac)
            return index.map { versions[$0].id }
        } catch {
            throw .crypto(error.description)
        }
    }

    /// A token for `jid` (bare or full, in `domain`) in MongooseIM's format, signed with the
    /// primary version of the type's key. A refresh token carries the user's current sequence.
    func issueToken(domain: String, type: TokenType, jid: JID, validForSeconds: Int?, vcard: String?) throws(NodeError) -> IssueTokenResponse {
        guard jid.local != nil, jid.domain == domain else {
            throw .invalidArgument("\"jid\" must be a user of \(domain) (user@\(domain), optionally with a resource)")
        }
        let kind = TokenKind(rawValue: type.rawValue)!
        let validity = Int64(validForSeconds ?? Int(TokenFormat.defaultValiditySeconds(kind)))
        guard validity > 0, validity <= 10 * 365 * 86400 else {
            throw .invalidArgument("\"valid_for_s\" must be between 1 and \(10 * 365 * 86400) seconds")
        }
        let payload: TokenPayload
        var sequence: UInt64?
        switch type {
        case .access:
            guard vcard == nil else { throw .invalidArgument("\"vcard\" belongs to provision tokens only") }
            payload = .access
        case .refresh:
            guard vcard == nil else { throw .invalidArgument("\"vcard\" belongs to provision tokens only") }
            let current = state.tokenSequence(domain: domain, user: jid.bare)
            sequence = current
            payload = .refresh(sequence: current)
        case .provision:
            guard let vcard, !vcard.isEmpty else { throw .invalidArgument("a provision token needs \"vcard\": the vCard XML it sets") }
            payload = .provision(vcard: vcard)
        }
        let expires = Int64(wallClockMillis() / 1000) + validity
        let body = TokenBody(jid: jid.description, expiresAtUnixSeconds: expires, payload: payload)
        let ref = KeyRef(domain: domain, name: Self.tokenKeyName(type))
        let (mac, version) = try signHMAC(ref, algorithm: .sha384, input: body.serialized)
        return IssueTokenResponse(token: TokenFormat.base64Token(body: body.serialized, mac: mac),
                                  expires: iso8601(millis: UInt64(max(0, body.expiresAtUnixSeconds)) * 1000),
                                  version: version, sequence: sequence.map { Int(clamping: $0) })
    }

    /// Checks a token as MongooseIM does (format, MAC, expiry, revocation), with the MAC
    /// checked against every active version of the type's key.
    func verifyToken(domain: String, token: String) throws(NodeError) -> VerifyTokenResponse {
        let parsed: ParsedToken
        do { parsed = try TokenFormat.parse(base64: token) } catch {
            return VerifyTokenResponse(valid: false, reason: .malformed)
        }
        guard let jid = JID(parsed.body.jid), jid.local != nil, jid.domain == domain else {
            return VerifyTokenResponse(valid: false, reason: .malformed)
        }
        let type = TokenType(rawValue: parsed.body.kind.rawValue)!
        let ref = KeyRef(domain: domain, name: Self.tokenKeyName(type))
        // The token carries its MAC as lowercase hex; the MAC input is the body as written.
        guard try verifyHMAC(ref, algorithm: .sha384, input: parsed.signedBytes, mac: parsed.mac) != nil else {
            return VerifyTokenResponse(valid: false, reason: .mac)
        }
        let expires = iso8601(millis: UInt64(max(0, parsed.body.expiresAtUnixSeconds)) * 1000)
        guard Int64(wallClockMillis() / 1000) < parsed.body.expiresAtUnixSeconds else {
            return VerifyTokenResponse(valid: false, type: type, jid: jid.description, expires: expires, reason: .expired)
        }
        var response = VerifyTokenResponse(valid: true, type: type, jid: jid.description, expires: expires)
        switch parsed.body.payload {
        case .access: break
        case .refresh(let sequence):
            response.sequence = Int(clamping: sequence)
            if sequence < state.tokenSequence(domain: domain, user: jid.bare) {
                response.valid = false
                response.reason = .revoked
            }
        case .provision(let vcard):
            response.vcard = vcard
        }
        return response
    }
}
