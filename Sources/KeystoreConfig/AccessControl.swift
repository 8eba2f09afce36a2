import KeystoreAPI
/// Decides what a local caller (identified by SO_PEERCRED) may do. Pure and immutable so the
/// API can share one instance across event loops and swap it atomically on reload.
public struct AccessControl: Sendable {
    public let rules: [ClientRule]
    /// The daemon's own uid is always allowed: the operator running keystored must never be
    /// able to lock themselves out by editing `clients`.
    public let daemonUID: UInt32

    public init(rules: [ClientRule], daemonUID: UInt32) {
        self.rules = rules
        self.daemonUID = daemonUID
    }

    /// `domain == nil` is for permissions not tied to one domain (cluster:read, admin, events
    /// across all domains); those need a rule covering `"*"`, because a grant on some domains
    /// must not leak information about the others.
    public func permits(uid: UInt32, gids: [UInt32], permission: Permission, domain: String?) -> Bool {
        if uid == daemonUID { return true }
        for rule in rules where Self.matches(rule, uid: uid, gids: gids) {
            let domainOK: Bool
            if rule.domains.contains("*") {
                domainOK = true
            } else if let domain {
                domainOK = rule.domains.contains(domain)
            } else {
                domainOK = false
            }
            if domainOK && (rule.allow.contains(.all) || rule.allow.contains(permission)) { return true }
        }
        return false
    }

    /// The subset of `allDomains` (order kept) on which the caller holds `permission`.
    public func visibleDomains(uid: UInt32, gids: [UInt32], permission: Permission, allDomains: [String]) -> [String] {
        allDomains.filter { permits(uid: uid, gids: gids, permission: permission, domain: $0) }
    }

    private static func matches(_ rule: ClientRule, uid: UInt32, gids: [UInt32]) -> Bool {
        if let ruleUID = rule.uid, ruleUID == uid { return true }
        if let ruleGID = rule.gid, gids.contains(ruleGID) { return true }
        return false
    }
}
