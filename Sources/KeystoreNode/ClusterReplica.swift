import Membership
import PeerWire
import ReplicatedStore
import SecretMemory

/// What the cluster shell needs from the rest of the node. The shell never touches the store,
/// the registry database or the event hub itself: everything a peer changes goes through
/// `applyRemote`, the same change path local requests take (persist, apply, events).
protocol ClusterReplica: AnyObject, Sendable {
    var nodeName: String { get }
    var clusterName: String { get }
    /// Where decoded key material is placed (the frame decoder writes secrets straight into it).
    var arena: SecretArena { get }
    /// True once the startup join decision has been made and missing keys generated.
    var isReady: Bool { get }

    /// Current hybrid-logical-clock reading for outgoing messages.
    func stamp() -> HLCTimestamp
    /// Advances the clock past a peer's; refuses stamps from a clock far in the future.
    func observe(_ stamp: HLCTimestamp) throws(ClockError)

    var rootDigest: UInt64 { get }
    var bucketDigests: [UInt64] { get }
    var sectionDigests: SectionDigests { get }
    func wireDelta(forBuckets buckets: [Int], sections: [BucketSections]) -> WireDelta
    var durableBucketDigests: [UInt64] { get }
    /// The state answer for a joining peer, as of now (`ReplicaContent.stateAnswer`).
    func stateAnswer(peerDurableDigests: [UInt64]?, chunkBytes: Int) -> WireStateAnswer

    /// Merges a peer's entries. Certificate records are persisted before they are applied, and
    /// one that cannot be persisted is not applied (anti-entropy delivers it again later).
    /// `completion` receives what was new here, to forward; it may run on any thread, and runs
    /// only after everything in `wire` that will be applied has been applied.
    func applyRemote(_ wire: WireDelta, from node: String, completion: @escaping @Sendable (WireDelta) -> Void)

    /// Membership news, for the event stream and the log.
    func memberChanged(_ member: Member, previous: MemberStatus?)
    /// A member removed from this node's config by a reload: `left` (event stream).
    func memberLeft(_ node: String, address: String, previous: MemberStatus?)
}
