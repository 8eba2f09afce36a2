/// What a reload would change, computed from the running config and the newly loaded one
/// (pure: the node applies it, tests check it without a node).
///
/// Reloadable: domains and their keys, `ram_key_size` (new keys and rotations), `clients`,
/// `grace_period_s`, `log_level`, `join_timeout_ms` (used at the next start) and the other
/// nodes. Not reloadable, because the running process is bound to them: the cluster name,
/// the TLS files, and this node's own entry (peer address, socket, socket mode and group,
/// data_dir, metrics listener). A config that changes one of those is refused as a whole.
public struct ConfigChanges: Sendable, Equatable {
    public struct KeyChange: Sendable, Equatable {
        public var domain: String
        public var name: String
        public var kind: KeyKind
    }

    public var addedDomains: [String] = []
    public var removedDomains: [String] = []
    public var addedKeys: [KeyChange] = []
    /// Keys gone from a domain that stays, or whose type or file path changed (then they are
    /// listed here and in `addedKeys`).
    public var removedKeys: [KeyChange] = []
    public var ramKeySizeChanged: [String] = []
    public var clientsChanged = false
    public var gracePeriodChanged = false
    public var logLevelChanged = false
    public var joinTimeoutChanged = false
    public var addedNodes: [String] = []
    public var removedNodes: [String] = []
    /// Other nodes whose entry changed (new peer address...).
    public var changedNodes: [String] = []
    /// Each entry: the field and why it needs a restart. Non-empty means the reload is refused.
    public var needsRestart: [String] = []

    public var isEmpty: Bool { summary.isEmpty && needsRestart.isEmpty }

    /// One line per change, for the reload answer and the log.
    public var summary: [String] {
        var lines: [String] = []
        lines += addedDomains.map { "domain \($0) added" }
        lines += removedDomains.map { "domain \($0) removed" }
        lines += removedKeys.map { "key \($0.domain)/\($0.name) removed" }
        lines += addedKeys.map { "key \($0.domain)/\($0.name) added (\($0.kind.label))" }
        lines += ramKeySizeChanged.map { "ram_key_size of \($0) changed (applies to new keys and rotations)" }
        if clientsChanged { lines.append("clients (ACL rules) changed") }
        if gracePeriodChanged { lines.append("grace_period_s changed") }
        if logLevelChanged { lines.append("log_level changed") }
        if joinTimeoutChanged { lines.append("join_timeout_ms changed (applies at the next start)") }
        lines += addedNodes.map { "node \($0) added" }
        lines += removedNodes.map { "node \($0) removed" }
        lines += changedNodes.map { "node \($0) changed" }
        return lines
    }

    public init() {}

    /// `new` must have been loaded for the same `--node` as `old`.
    public init(from old: ClusterConfig, to new: ClusterConfig) {
        if old.cluster != new.cluster {
            needsRestart.append("cluster: the cluster name cannot change on a running node (every peer checks it); restart every node with the new name")
        }
        if old.tls != new.tls {
            needsRestart.append("tls: TLS files are read at start; restart this node to use the new files")
        }
        let me = old.nodeName
        if let before = old.nodes[me], let after = new.nodes[me] {
            for (field, changed) in [("peer", before.peerAddress != after.peerAddress), ("socket", before.socketPath != after.socketPath),
                                     ("socket_mode", before.socketMode != after.socketMode), ("socket_group", before.socketGroup != after.socketGroup),
                                     ("data_dir", before.dataDir != after.dataDir),
                                     ("metrics", before.metricsHost != after.metricsHost || before.metricsPort != after.metricsPort)] where changed {
                needsRestart.append("nodes.\(me).\(field): this node's own \(field) is bound at start; restart this node to change it")
            }
        }

        let oldDomains = Set(old.domains.keys), newDomains = Set(new.domains.keys)
        addedDomains = newDomains.subtracting(oldDomains).sorted()
        removedDomains = oldDomains.subtracting(newDomains).sorted()
        for domain in oldDomains.union(newDomains).sorted() {
            let before = old.domains[domain]?.keys ?? [], after = new.domains[domain]?.keys ?? []
            let beforeByName = Dictionary(before.map { ($0.name, $0.kind) }, uniquingKeysWith: { a, _ in a })
            let afterByName = Dictionary(after.map { ($0.name, $0.kind) }, uniquingKeysWith: { a, _ in a })
            for key in before where afterByName[key.name] != key.kind {
                removedKeys.append(KeyChange(domain: domain, name: key.name, kind: key.kind))
            }
            for key in after where beforeByName[key.name] != key.kind {
                addedKeys.append(KeyChange(domain: domain, name: key.name, kind: key.kind))
            }
            if let b = old.domains[domain], let a = new.domains[domain], b.ramKeySize != a.ramKeySize {
                ramKeySizeChanged.append(domain)
            }
        }
        clientsChanged = old.clients != new.clients
        gracePeriodChanged = old.gracePeriodSeconds != new.gracePeriodSeconds
        logLevelChanged = old.logLevel != new.logLevel
        joinTimeoutChanged = old.joinTimeoutMillis != new.joinTimeoutMillis

        let oldNodes = Set(old.nodes.keys).subtracting([me]), newNodes = Set(new.nodes.keys).subtracting([me])
        addedNodes = newNodes.subtracting(oldNodes).sorted()
        removedNodes = oldNodes.subtracting(newNodes).sorted()
        changedNodes = oldNodes.intersection(newNodes).filter { old.nodes[$0]?.peerAddress != new.nodes[$0]?.peerAddress }.sorted()
    }
}

extension KeyKind {
    var label: String {
        switch self {
        case .ram: return "ram"
        case .file: return "file"
        }
    }
}
