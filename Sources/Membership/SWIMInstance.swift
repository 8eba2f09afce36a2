/// SWIM failure detection and gossip membership as a pure state machine (after
/// apple/swift-cluster-membership's `SWIM.Instance`). The caller owns all I/O, time and
/// randomness, so the whole protocol can be run deterministically in tests.
///
/// Precedence between rumours about one member (see `supersedes`): a higher `instance` replaces
/// everything (the node restarted); within an instance the pair (incarnation, status) is ordered
/// lexicographically with alive < suspect < dead. That gives exactly SWIM's rules
/// (alive(i) > suspect(j) iff i > j; suspect(i) > alive(j) iff i ≥ j; dead(i) > alive/suspect(j)
/// iff i ≥ j) and additionally lets a process that was declared dead but is in fact running
/// (partition, pause) refute with a higher incarnation, like hashicorp/memberlist does. Only the
/// process itself ever raises its incarnation, so a crashed process stays dead.
public struct SWIMInstance: Sendable {
    public let settings: SWIMSettings
    public private(set) var myself: Member

    private enum State: Hashable, Sendable {
        /// A configured seed nobody has vouched for yet: probed, never reported. It becomes
        /// `dead` at `deadline` unless some process of it is heard of.
        case unconfirmed(deadline: UInt64)
        case alive
        case suspect(since: UInt64)
        case dead

        var status: MemberStatus? {
            switch self {
            case .unconfirmed: return nil
            case .alive: return .alive
            case .suspect: return .suspect
            case .dead: return .dead
            }
        }
    }

    private struct Peer: Sendable {
        var address: String
        var instance: UInt64
        var incarnation: UInt64
        var state: State
        var lastChange: UInt64
        var lastHeard: UInt64?
    }

    /// One failure-detection probe. Probes may overlap: a new round starts on schedule while
    /// the previous probe's indirect phase (two round trips through a helper) is still running.
    private struct Probe: Sendable {
        var target: NodeID
        var address: String
        var sequence: UInt64
        var indirectDueAt: UInt64
        var indirectSent: Bool
        /// Without an ack by then, the target becomes suspect.
        var deadline: UInt64
    }

    /// A ping this node sends on someone else's behalf.
    private struct Relay: Sendable {
        var requester: NodeID
        var requesterAddress: String
        var requesterSequence: UInt64
        var target: NodeID
        var deadline: UInt64
    }

    private struct Rumour: Sendable {
        var update: GossipUpdate
        var sent: Int
    }

    /// Caps so a confused or hostile peer cannot make this node's memory grow without bound.
    static let maxPeers = 4096
    static let maxRelays = 1024
    static let maxGossipProcessed = 4096
    /// Bounds the join answer so it fits a peer frame; a larger cluster fills in by gossip.
    static let maxFullSync = 256

    private var peers: [NodeID: Peer] = [:]
    private var rumours: [NodeID: Rumour] = [:]
    private var probeOrder: [NodeID] = []
    private var probeIndex = 0
    private var toInsert: [NodeID] = []
    private var probes: [Probe] = []
    private var relays: [UInt64: Relay] = [:]
    private var nextSequence: UInt64 = 1
    private var nextRoundAt: UInt64
    private var round: UInt64 = 0
    private var lastTick: UInt64?
    /// The only nodes this instance takes as members once `limitMembershipToKnownNodes()` was
    /// called (see "Configured membership"); nil: members are learned from gossip.
    private var allowedMembers: Set<NodeID>?

    /// - Parameters:
    ///   - seeds: the other configured nodes. They are pinged every round until they answer (or
    ///     anyone vouches for them); one that never does is reported `dead` after about
    ///     `probeInterval + suspicionTimeout`.
    ///   - settings: invalid values are not rejected here; call `settings.validate()` at config time.
    public init(myself: NodeID, address: String, instance: UInt64,
                seeds: [(node: NodeID, address: String)], settings: SWIMSettings, nowMillis: UInt64) {
        self.settings = settings
        self.myself = Member(node: myself, address: address, instance: instance, incarnation: 0,
                             status: .alive, lastChangeMillis: nowMillis, lastHeardMillis: nil)
        self.nextRoundAt = nowMillis
        for seed in seeds where !seed.node.isEmpty && seed.node != myself && peers[seed.node] == nil {
            peers[seed.node] = Peer(address: seed.address, instance: 0, incarnation: 0,
                                    state: .unconfirmed(deadline: 0), lastChange: nowMillis, lastHeard: nil)
        }
        let deadline = nowMillis &+ settings.probeIntervalMillis
            &+ settings.suspicionTimeoutMillis(memberCount: peers.count + 1)
        for name in peers.keys { peers[name]?.state = .unconfirmed(deadline: deadline) }
    }

    // MARK: - Views

    /// Every known member except this node, by name. Seeds not yet heard of are left out until
    /// they answer (then `alive`) or time out (then `dead`).
    public var members: [Member] {
        peers.keys.sorted().compactMap { member($0) }
    }

    /// Configured seeds that neither answered nor timed out yet.
    public var pendingSeeds: [NodeID] {
        peers.filter { if case .unconfirmed = $0.value.state { return true } else { return false } }
            .keys.sorted()
    }

    public func member(_ node: NodeID) -> Member? {
        guard let peer = peers[node], let status = peer.state.status else { return nil }
        return Member(node: node, address: peer.address, instance: peer.instance, incarnation: peer.incarnation,
                      status: status, lastChangeMillis: peer.lastChange, lastHeardMillis: peer.lastHeard)
    }

    // MARK: - Tick

    /// Advances timers: probe rounds, indirect escalation, suspicion and seed timeouts, relays.
    /// Call every 50–100 ms; coarser ticks only make detection slower.
    public mutating func tick(nowMillis now: UInt64, random: inout some RandomNumberGenerator) -> [SWIMDirective] {
        var out: [SWIMDirective] = []
        if let last = lastTick, now > last, now - last > settings.stallThresholdMillis {
            recoverFromStall(gap: now - last, now: now)
        }
        lastTick = now

        insertNewcomers(random: &random)
        expireRelays(now: now, into: &out)
        expireTimers(now: now, into: &out)

        for index in probes.indices where !probes[index].indirectSent && now >= probes[index].indirectDueAt {
            probes[index].indirectSent = true
            // The indirect path is two round trips; give it twice the direct allowance.
            probes[index].deadline = max(probes[index].deadline, now &+ 2 &* settings.probeTimeoutMillis)
            sendPingRequests(for: probes[index], random: &random, into: &out)
        }
        concludeProbes(now: now, into: &out)

        if now >= nextRoundAt {
            nextRoundAt = nextRoundAt &+ settings.probeIntervalMillis
            if nextRoundAt <= now { nextRoundAt = now &+ settings.probeIntervalMillis }
            round &+= 1
            startProbe(now: now, random: &random, into: &out)
            pingUnconfirmed(into: &out)
            if round % UInt64(max(1, settings.deadPingEveryRounds)) == 0 { pingDead(into: &out) }
        }
        return out
    }

    /// Optional hint from the shell that dialing `node` failed: skip waiting for the probe
    /// timeout (escalate on the next tick) and answer requesters we ping it for right away.
    @discardableResult
    public mutating func connectionFailed(to node: NodeID, nowMillis now: UInt64) -> [SWIMDirective] {
        var out: [SWIMDirective] = []
        for index in probes.indices where probes[index].target == node && !probes[index].indirectSent {
            probes[index].indirectDueAt = min(probes[index].indirectDueAt, now)
        }
        for sequence in relays.keys.sorted() {
            guard let relay = relays[sequence], relay.target == node else { continue }
            relays[sequence] = nil
            out.append(.send(.nack(sequence: relay.requesterSequence, target: node),
                             to: relay.requester, address: relay.requesterAddress))
        }
        return out
    }

    // MARK: - Receive

    /// Handles one message. `address` must be the sender's advertised peer address (what others
    /// should dial), `instance` its process instance from the frame header. Messages from an
    /// older process than the one already known, from "myself", or with instance 0 are ignored.
    public mutating func receive(_ message: SWIMMessage, from node: NodeID, instance: UInt64, address: String,
                                 nowMillis now: UInt64) -> [SWIMDirective] {
        guard !node.isEmpty, node != myself.node, instance != 0 else { return [] }
        guard allowedMembers?.contains(node) ?? true else { return [] }
        if let known = peers[node], known.instance != 0, instance < known.instance { return [] }
        var out: [SWIMDirective] = []
        let firstContact = peers[node]?.instance != instance
        for update in message.gossip.prefix(Self.maxGossipProcessed) {
            merge(update, now: now, into: &out)
        }
        heardDirectly(from: node, instance: instance, address: address, now: now, into: &out)

        switch message {
        case .ping(let sequence, _):
            // A newcomer gets the whole membership at once: that is the join, and rumours about
            // long-settled members are no longer being gossiped.
            let gossip = gossip(for: node, full: firstContact)
            out.append(.send(.ack(sequence: sequence, target: myself.node, gossip: gossip), to: node, address: address))

        case .pingRequest(let sequence, let target, let targetAddress, _):
            if target == myself.node {
                out.append(.send(.ack(sequence: sequence, target: target, gossip: gossip(for: node, full: false)),
                                 to: node, address: address))
            } else {
                // The requester's address for the target wins: it is the one that just failed
                // for the requester, and the point is to test that very process from elsewhere.
                let dial = targetAddress.isEmpty ? (peers[target]?.address ?? "") : targetAddress
                if target.isEmpty || dial.isEmpty || relays.count >= Self.maxRelays || !(allowedMembers?.contains(target) ?? true) {
                    out.append(.send(.nack(sequence: sequence, target: target), to: node, address: address))
                } else {
                    let mine = takeSequence()
                    relays[mine] = Relay(requester: node, requesterAddress: address, requesterSequence: sequence,
                                         target: target, deadline: now &+ settings.probeTimeoutMillis)
                    out.append(.send(.ping(sequence: mine, gossip: gossip(for: target, full: false)),
                                     to: target, address: dial))
                }
            }

        case .ack(let sequence, let target, _):
            if let index = probes.firstIndex(where: { $0.sequence == sequence && $0.target == target }) {
                probes.remove(at: index)
            } else if let relay = relays[sequence], relay.target == node, target == node {
                relays[sequence] = nil
                out.append(.send(.ack(sequence: relay.requesterSequence, target: node,
                                      gossip: gossip(for: relay.requester, full: false)),
                                 to: relay.requester, address: relay.requesterAddress))
            }

        case .nack:
            break // Lifeguard would lower its own health score here; the period timeout decides.
        }
        return out
    }

    // MARK: - Membership changes

    /// Order of rumours about one process: (incarnation, status rank) lexicographically.
    static func supersedes(_ new: (incarnation: UInt64, status: MemberStatus),
                           _ old: (incarnation: UInt64, status: MemberStatus)) -> Bool {
        if new.incarnation != old.incarnation { return new.incarnation > old.incarnation }
        return new.status.rank > old.status.rank
    }

    private mutating func merge(_ update: GossipUpdate, now: UInt64, into out: inout [SWIMDirective]) {
        guard !update.node.isEmpty, update.instance != 0 else { return }
        if update.node == myself.node {
            refuteIfNeeded(update)
            return
        }
        guard allowedMembers?.contains(update.node) ?? true else { return }
        guard let peer = peers[update.node] else {
            guard peers.count < Self.maxPeers else { return }
            adopt(update, now: now, previous: nil, lastHeard: nil, into: &out)
            return
        }
        if peer.instance == 0 || update.instance > peer.instance {
            adopt(update, now: now, previous: peer.state.status,
                  lastHeard: update.instance == peer.instance ? peer.lastHeard : nil, into: &out)
            return
        }
        guard update.instance == peer.instance, let status = peer.state.status else { return }
        guard Self.supersedes((update.incarnation, update.status), (peer.incarnation, status)) else { return }
        if update.status == status {
            // Same status, newer incarnation: nothing to report, but pass the news on.
            peers[update.node]?.incarnation = update.incarnation
            if !update.address.isEmpty { peers[update.node]?.address = update.address }
            enqueue(update)
        } else {
            adopt(update, now: now, previous: status, lastHeard: peer.lastHeard, into: &out)
        }
    }

    private mutating func adopt(_ update: GossipUpdate, now: UInt64, previous: MemberStatus?, lastHeard: UInt64?,
                                into out: inout [SWIMDirective]) {
        let state: State
        switch update.status {
        case .alive: state = .alive
        case .suspect: state = .suspect(since: now)
        case .dead: state = .dead
        }
        let known = peers[update.node]
        let address = update.address.isEmpty ? (known?.address ?? "") : update.address
        peers[update.node] = Peer(address: address, instance: update.instance, incarnation: update.incarnation,
                                  state: state, lastChange: now, lastHeard: lastHeard)
        if update.status != .dead { toInsert.append(update.node) }
        enqueue(update)
        if let member = member(update.node) { out.append(.statusChanged(member, previous: previous)) }
    }

    private mutating func refuteIfNeeded(_ update: GossipUpdate) {
        guard update.instance == myself.instance, update.status != .alive,
              update.incarnation >= myself.incarnation else { return }
        // Saturate rather than trap: only a forged rumour can get here, and it must not crash us.
        myself.incarnation = update.incarnation == .max ? .max : update.incarnation + 1
        enqueue(selfUpdate)
    }

    /// Direct evidence only proves the *process* is running. A new process replaces the old
    /// one; for the same process a suspect/dead verdict is lifted by its own refutation (it gets
    /// the verdict as a hint on everything we send it, and its self-rumour rides on every reply).
    private mutating func heardDirectly(from node: NodeID, instance: UInt64, address: String, now: UInt64,
                                        into out: inout [SWIMDirective]) {
        if let peer = peers[node], peer.instance == instance {
            peers[node]?.lastHeard = now
            if !address.isEmpty { peers[node]?.address = address }
            return
        }
        guard peers[node] != nil || peers.count < Self.maxPeers else { return }
        let previous = peers[node]?.state.status
        let update = GossipUpdate(node: node, address: address.isEmpty ? (peers[node]?.address ?? "") : address,
                                  instance: instance, incarnation: 0, status: .alive)
        adopt(update, now: now, previous: previous, lastHeard: now, into: &out)
    }

    private mutating func setState(_ node: NodeID, _ state: State, now: UInt64, into out: inout [SWIMDirective]) {
        guard let peer = peers[node] else { return }
        let previous = peer.state.status
        peers[node]?.state = state
        peers[node]?.lastChange = now
        guard let member = member(node) else { return }
        if peer.instance != 0 {
            enqueue(GossipUpdate(node: node, address: peer.address, instance: peer.instance,
                                 incarnation: peer.incarnation, status: member.status))
        }
        out.append(.statusChanged(member, previous: previous))
    }

    // MARK: - Timers

    private mutating func recoverFromStall(gap: UInt64, now: UInt64) {
        // Nobody answered because we were not running: drop our probe and relays, and don't let
        // the pause count towards anyone's suspicion or seed timeout.
        probes = []
        relays = [:]
        for name in peers.keys.sorted() {
            switch peers[name]?.state {
            case .suspect(let since)?: peers[name]?.state = .suspect(since: since &+ gap)
            case .unconfirmed(let deadline)?: peers[name]?.state = .unconfirmed(deadline: deadline &+ gap)
            default: break
            }
        }
        nextRoundAt = now
    }

    private mutating func expireRelays(now: UInt64, into out: inout [SWIMDirective]) {
        for sequence in relays.keys.sorted() {
            guard let relay = relays[sequence], now >= relay.deadline else { continue }
            relays[sequence] = nil
            out.append(.send(.nack(sequence: relay.requesterSequence, target: relay.target),
                             to: relay.requester, address: relay.requesterAddress))
        }
    }

    private mutating func expireTimers(now: UInt64, into out: inout [SWIMDirective]) {
        let timeout = settings.suspicionTimeoutMillis(memberCount: peers.count + 1)
        for name in peers.keys.sorted() {
            guard let peer = peers[name] else { continue }
            switch peer.state {
            case .suspect(let since) where now >= since &+ timeout:
                setState(name, .dead, now: now, into: &out)
            case .unconfirmed(let deadline) where now >= deadline:
                setState(name, .dead, now: now, into: &out)
            default:
                break
            }
        }
    }

    private mutating func concludeProbes(now: UInt64, into out: inout [SWIMDirective]) {
        let expired = probes.filter { now >= $0.deadline }
        probes.removeAll { now >= $0.deadline }
        for current in expired where peers[current.target]?.state == .alive {
            setState(current.target, .suspect(since: now), now: now, into: &out)
        }
    }

    private mutating func startProbe(now: UInt64, random: inout some RandomNumberGenerator,
                                     into out: inout [SWIMDirective]) {
        guard let target = nextProbeTarget(random: &random), let peer = peers[target] else { return }
        let sequence = takeSequence()
        probes.append(Probe(target: target, address: peer.address, sequence: sequence,
                            indirectDueAt: now &+ settings.probeTimeoutMillis, indirectSent: false,
                            deadline: now &+ settings.probeIntervalMillis))
        out.append(.send(.ping(sequence: sequence, gossip: gossip(for: target, full: false)),
                         to: target, address: peer.address))
    }

    private func isProbeable(_ node: NodeID) -> Bool {
        switch peers[node]?.state {
        case .alive?, .suspect?: return true
        default: return false
        }
    }

    /// SWIM's round-robin over a shuffled list: every member is probed once per pass, which
    /// bounds the time to first detection, unlike picking at random each round.
    private mutating func nextProbeTarget(random: inout some RandomNumberGenerator) -> NodeID? {
        for pass in 0..<2 {
            while probeIndex < probeOrder.count {
                let candidate = probeOrder[probeIndex]
                probeIndex += 1
                if isProbeable(candidate) { return candidate }
            }
            guard pass == 0 else { break }
            probeOrder = peers.keys.sorted().filter(isProbeable)
            probeOrder.shuffle(using: &random)
            probeIndex = 0
            toInsert.removeAll()
        }
        return nil
    }

    private mutating func insertNewcomers(random: inout some RandomNumberGenerator) {
        for name in toInsert where !probeOrder[probeIndex...].contains(name) {
            let position = Int.random(in: probeIndex...probeOrder.count, using: &random)
            probeOrder.insert(name, at: position)
        }
        toInsert.removeAll()
    }

    private mutating func sendPingRequests(for current: Probe, random: inout some RandomNumberGenerator,
                                           into out: inout [SWIMDirective]) {
        var helpers = peers.keys.sorted().filter { $0 != current.target && peers[$0]?.state == .alive }
        helpers.shuffle(using: &random)
        for helper in helpers.prefix(max(0, settings.indirectProbeCount)) {
            guard let address = peers[helper]?.address else { continue }
            out.append(.send(.pingRequest(sequence: current.sequence, target: current.target,
                                          targetAddress: current.address, gossip: gossip(for: helper, full: false)),
                             to: helper, address: address))
        }
    }

    private mutating func pingUnconfirmed(into out: inout [SWIMDirective]) {
        for name in pendingSeeds {
            guard let address = peers[name]?.address else { continue }
            out.append(.send(.ping(sequence: takeSequence(), gossip: gossip(for: name, full: false)),
                             to: name, address: address))
        }
    }

    private mutating func pingDead(into out: inout [SWIMDirective]) {
        for name in peers.keys.sorted() where peers[name]?.state == .dead {
            guard let address = peers[name]?.address else { continue }
            out.append(.send(.ping(sequence: takeSequence(), gossip: gossip(for: name, full: false)),
                             to: name, address: address))
        }
    }

    private mutating func takeSequence() -> UInt64 {
        defer { nextSequence &+= 1 }
        return nextSequence
    }

    // MARK: - Gossip

    private var selfUpdate: GossipUpdate {
        GossipUpdate(node: myself.node, address: myself.address, instance: myself.instance,
                     incarnation: myself.incarnation, status: .alive)
    }

    private func update(for node: NodeID) -> GossipUpdate? {
        guard let peer = peers[node], peer.instance != 0, let status = peer.state.status else { return nil }
        return GossipUpdate(node: node, address: peer.address, instance: peer.instance,
                            incarnation: peer.incarnation, status: status)
    }

    private mutating func enqueue(_ update: GossipUpdate) {
        rumours[update.node] = Rumour(update: update, sent: 0)
    }

    /// Piggyback for one message: our own record (so the receiver learns our incarnation from
    /// any contact), the recipient's own bad status if we hold one (so it can refute at once),
    /// then the least-sent rumours. `full` sends every known member instead of rumours.
    private mutating func gossip(for recipient: NodeID, full: Bool) -> [GossipUpdate] {
        var result = [selfUpdate]
        let hint = update(for: recipient).flatMap { $0.status == .alive ? nil : $0 }
        if let hint { result.append(hint) }
        if full {
            for name in peers.keys.sorted() where name != recipient {
                guard result.count < Self.maxFullSync + 2 else { break }
                if let known = update(for: name) { result.append(known) }
            }
            return result
        }
        let limit = settings.retransmitLimit(memberCount: peers.count + 1)
        let chosen = rumours.sorted { ($0.value.sent, $0.key) < ($1.value.sent, $1.key) }
            .prefix(max(0, settings.gossipPerMessage))
        for (name, rumour) in chosen {
            if rumour.update != hint { result.append(rumour.update) }
            if rumour.sent + 1 >= limit { rumours[name] = nil } else { rumours[name]?.sent += 1 }
        }
        return result
    }

    // MARK: - Configured membership

    /// From now on only the current seeds and members, and nodes added with `addSeed`, are
    /// members: messages from any other node and rumours about it are ignored. The node's shell
    /// calls it because membership is configured, not discovered (docs/config.md): a node
    /// forms and spreads opinions only about the nodes its own config lists, so nodes whose
    /// configs differ during a rolling edit never accuse or announce a node the other side
    /// does not admit.
    public mutating func limitMembershipToKnownNodes() {
        allowedMembers = Set(peers.keys)
    }

    /// A node added to the configuration (reload): probed like a seed given at start, reported
    /// `alive` once any process of it is heard of, `dead` if none is before the seed timeout.
    /// Returns false when the node is already known (then nothing changes).
    @discardableResult
    public mutating func addSeed(node: NodeID, address: String, nowMillis now: UInt64) -> Bool {
        guard !node.isEmpty, node != myself.node else { return false }
        allowedMembers?.insert(node)
        guard peers[node] == nil else { return false }
        let deadline = now &+ settings.probeIntervalMillis &+ settings.suspicionTimeoutMillis(memberCount: peers.count + 2)
        peers[node] = Peer(address: address, instance: 0, incarnation: 0, state: .unconfirmed(deadline: deadline),
                           lastChange: now, lastHeard: nil)
        return true
    }

    /// A node removed from the configuration (reload): forgotten at once, with its probes,
    /// rumours and the pings we relay for it or to it; with `limitMembershipToKnownNodes` in
    /// effect, nothing it sends and nothing said about it is taken any more. Requesters of
    /// pings to it get their nack now. Returns its last view (nil: it was not reported yet)
    /// and the nacks to send. No `statusChanged` is emitted: the caller decided this.
    public mutating func remove(node: NodeID) -> (last: Member?, directives: [SWIMDirective]) {
        allowedMembers?.remove(node)
        let last = member(node)
        peers[node] = nil
        rumours[node] = nil
        if let index = probeOrder.firstIndex(of: node) {
            probeOrder.remove(at: index)
            if index < probeIndex { probeIndex -= 1 }
        }
        toInsert.removeAll { $0 == node }
        probes.removeAll { $0.target == node }
        var out: [SWIMDirective] = []
        for sequence in relays.keys.sorted() {
            guard let relay = relays[sequence], relay.target == node || relay.requester == node else { continue }
            relays[sequence] = nil
            if relay.requester != node {
                out.append(.send(.nack(sequence: relay.requesterSequence, target: node),
                                 to: relay.requester, address: relay.requesterAddress))
            }
        }
        return (last, out)
    }
}
