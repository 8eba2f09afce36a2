import KeystoreAPI

/// A snapshot of cluster membership for `/v1/cluster` and health.
public struct ClusterStatus: Sendable {
    public struct Member: Sendable {
        public var node: String
        public var address: String
        public var state: String
        /// Wall-clock time of the newest evidence that this member's process runs: a message
        /// received from it directly, an ack another member relayed for it (an indirect probe
        /// confirmed it), or the last change of its status that membership reported. So an alive
        /// member always shows one, even when only its peers hear it; a member that was never
        /// heard of shows none.
        public var lastContactMillis: UInt64?
        public var version: String?
        /// Anti-entropy with this member (`in_sync`, `repairing`, `unknown`); for this node itself
        /// `ready` or `joining`. Nil for configured nodes not yet heard of.
        public var sync: SyncState? = nil
    }
    public var members: [Member]
    public var aliveNodes: Set<String>
    /// Set while this node is still joining after `join_timeout_ms` because peers it can reach
    /// do not answer (or are still streaming their state): a node never bootstraps new RAM keys
    /// while a reachable peer may hold the cluster's, so it waits and says why, e.g.
    /// "still joining 12.3 s after join_timeout_ms; waiting for peers node2, node3: reachable but
    /// not answering (...)". Health reports it as a problem.
    public var joinProblem: String? = nil
}
