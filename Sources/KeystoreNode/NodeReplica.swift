import Logging
import Membership
import PeerWire
import ReplicatedStore
import SecretMemory

/// The node's side of `ClusterReplica`: merges from peers, with their events.
final class NodeReplica: ClusterReplica {
    let state: NodeState
    let certificates: CertificateService
    let events: EventHub
    let logger: Logger

    init(state: NodeState, certificates: CertificateService, events: EventHub, logger: Logger) {
        self.state = state
        self.certificates = certificates
        self.events = events
        self.logger = logger
    }

    var nodeName: String { state.nodeName }
    var clusterName: String { state.config.cluster }
    var arena: SecretArena { state.arena }
    var isReady: Bool { state.isReady }
    func stamp() -> HLCTimestamp { state.stamp() }
    func observe(_ stamp: HLCTimestamp) throws(ClockError) { try state.observe(stamp) }
    var rootDigest: UInt64 { state.rootDigest }
    var bucketDigests: [UInt64] { state.bucketDigests }
    func wireDelta(forBuckets buckets: [Int]) -> WireDelta { state.wireDelta(forBuckets: buckets) }
    func fullWireDelta() -> WireDelta { state.fullWireDelta() }

    func applyRemote(_ wire: WireDelta, from node: String, completion: @escaping @Sendable (WireDelta) -> Void) {
        let outcome = state.mergeRemote(wire)
        certificates.merged(outcome, from: node)
        for ref in outcome.primaryChanged {
            let primary = state.primaryVersionID(ref)
            logger.info("\(ref): new primary version \(primary.map(\.description) ?? "?") learned from \(node)")
            if state.isReady, let primary {
                events.publish(NodeEvent(kind: .keyRotated, domain: ref.domain, fields: [("name", ref.name), ("primary", primary.description)]))
            }
        }
        if !outcome.added.isEmpty {
            logger.debug("merged \(outcome.added.count) key versions from \(node)")
        }
        completion(outcome.forwardable.isEmpty ? WireDelta() : state.wireDelta(for: outcome.forwardable))
    }

    func memberChanged(_ member: Member, previous: MemberStatus?) {
        var fields = [("member", member.node), ("state", member.status.rawValue), ("address", member.address)]
        if let previous { fields.append(("previous", previous.rawValue)) }
        events.publish(NodeEvent(kind: .member, domain: nil, fields: fields))
    }
}
