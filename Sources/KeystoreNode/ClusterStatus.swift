/// A snapshot of cluster membership for `/v1/cluster` and health.
public struct ClusterStatus: Sendable {
    public struct Member: Sendable {
        public var node: String
        public var address: String
        public var state: String
        public var lastContactMillis: UInt64?
        public var version: String?
        /// Anti-entropy with this member: "in_sync", "repairing", "unknown"; for self "ready"/"joining".
        public var sync: String? = nil
    }
    public var members: [Member]
    public var aliveNodes: Set<String>
}
