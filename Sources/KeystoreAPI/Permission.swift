/// ACL permission names (config `clients[].allow`). Every route names the one it needs; new
/// capabilities add new names rather than widening old ones.
public enum Permission: String, Sendable, CaseIterable, Hashable, Codable {
    case all = "*"
    case keysRead = "keys:read"
    case keysRotate = "keys:rotate"
    /// Sign with a key (HMAC) without being able to read it.
    case keysSign = "keys:sign"
    /// Verify a MAC against a key's active versions without being able to read or sign.
    case keysVerify = "keys:verify"
    case certsRead = "certs:read"
    case certsWrite = "certs:write"
    case certsVerify = "certs:verify"
    case tokensIssue = "tokens:issue"
    case tokensVerify = "tokens:verify"
    case tokensRevoke = "tokens:revoke"
    case clusterRead = "cluster:read"
    case eventsRead = "events:read"
    /// Reload (SIGHUP equivalent) and other node-wide operations.
    case admin = "admin"
}
