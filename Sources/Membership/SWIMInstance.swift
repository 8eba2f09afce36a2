/// SWIM failure detection and gossip membership as a pure state machine (after
/// apple/swift-cluster-membership's `SWIM.Instance`), with the Lifeguard extensions
/// (Dadgar et al., 2018; hashicorp/memberlist's awareness and suspicion timers). The caller owns
/// all I/O, time and randomness, so the whole protocol can be run deterministically in tests.
///
/// Precedence between rumours about one member (see `supersedes`): a higher `instance` replaces
/// everything (the node restarted); within an instance the pair (incarnation, status) is ordered
/// lexicographically with alive < suspect < dead. That gives exactly SWIM's rules
/// (alive(i) > suspect(j) iff i > j; suspect(i) > alive(j) iff i ≥ j; dead(i) > alive/suspect(j)
/// iff i ≥ j) and additionally lets a process that was declared dead but is in fact running
/// (partition, pause) refute with a higher incarnation, like hashicorp/memberlist does. Only the
/// process itself ever raises its incarnation, so a crashed process stays dead.
///
/// Lifeguard, as implemented here:
/// - **Local health** (`localHealth`, 0 ..< `maxLocalHealthMultiplier`): a probe that fails
///   while the helpers it asked did not even nack (+1 per missing nack; +1 when nobody could
///   be asked), and having to refute a suspicion of ourselves (+1), are signs that *this*
///   process is slow; an acknowledged probe (−1) is a sign it is fine. The probe interval and
///   the probe timeout are multiplied by `localHealth + 1`, so a starved node probes less and
///   waits longer instead of accusing healthy peers.
/// - **Dynamic suspicion**: a suspicion starts at Max = β·Min and shrinks with every
///   independent confirmation (another node's own failed probe) towards Min, on Lifeguard's
///   log curve; a lone (possibly slow) accuser gets the long timeout, a real failure that
///   everyone confirms the short one. A member that learns of a suspicion probes the suspect
///   itself soon (all of them in a small cluster, about 2K of them in a large one), which is
///   where those confirmations come from.
/// - **Buddy system**: every message to a member we suspect carries that suspicion, so it can
///   refute at once.
/// Beyond Lifeguard: a refused connection (`connectionFailed`) is evidence no process listens;
/// when the direct path was refused and every helper nacked, the probe fails at once instead
/// of waiting out its deadline (a killed process is suspected in ~0.2 s, a frozen one only at
/// the deadline).
public struct SWIMInstance: Sendable {
    public let settings: SWIMSettings
    public private(set) var myself: Member
    /// Lifeguard's local health score: probe interval and timeout are multiplied by this + 1.
    public private(set) var localHealth = 0

    private struct Suspicion: Hashable, Sendable {
        var since: UInt64
        /// Every node known to suspect this incarnation independently (the first included).
        var suspecters: Set<NodeID>

        var confirmations: Int { max(0, suspecters.count - 1) }
    }

    private enum State: Hashable, Sendable {
        /// A configured seed nobody has vouched for yet: probed, never reported. It becomes
        /// `dead` at `deadline` unless some process of it is heard of.
        case unconfirmed(deadline: UInt64)
        case alive
        case suspect(Suspicion)
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
        var helpersAsked = 0
        var nacks = 0
        /// The transport could not even connect: nobody is listening at the target's address.
        var refused = false
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
        /// When it was queued (a counter): among rumours sent equally often the newest goes first.
        var queued: UInt64
    }

    /// Caps so a confused or hostile peer cannot make this node's memory grow without bound.
    static let maxPeers = 16384
    static let maxRelays = 1024
    static let maxGossipProcessed = 4096
    /// Bounds the join answer so it fits a peer frame; a larger cluster fills in by gossip.
    static let maxFullSync = 256
    /// Clusters up to this size pick indirect-probe helpers from a full scan (every alive
    /// member is a candidate); larger ones sample the probe order at random.
    static let fullScanLimit = 64

    private var peers: [NodeID: Peer] = [:]
    private var rumours: [NodeID: Rumour] = [:]
    /// Counts rumours queued, to order equally sent ones newest first.
    private var rumoursQueued: UInt64 = 0
    /// Members with a running timer (suspect or unconfirmed), so a tick does not scan everyone.
    private var timed: Set<NodeID> = []
    /// No timer in `timed` expires before this (0: unknown, scan at the next tick).
    private var timersCheckedUntil: UInt64 = 0
    /// Every member name, sorted (a member is never forgotten): the full-membership answer
    /// walks it instead of sorting the whole view per newcomer.
    private var sortedNames: [NodeID] = []
    /// Configured seeds in ping order; confirmed ones are dropped as the cursor meets them.
    private var seedOrder: [NodeID] = []
    private var configuredSeeds: Set<NodeID> = []
    private var deadMembers: Set<NodeID> = []
    private var deadPingCursor = 0
    private var seedPingCursor = 0
    private var probeOrder: [NodeID] = []
    private var probeIndex = 0
    /// The names in `probeOrder[probeIndex...]`, for O(1) "already queued" checks.
    private var queuedInPass: Set<NodeID> = []
    private var toInsert: [NodeID] = []
    /// Members to probe at the next tick, out of round-robin order (a refused connection, or
    /// a suspicion we should confirm or dispel ourselves).
    private var urgent: [NodeID] = []
    /// Members we heard are suspect; the next tick decides (it has the RNG) whether we probe them.
    private var heardSuspect: [NodeID] = []
    private var probes: [Probe] = []
    private var relays: [UInt64: Relay] = [:]
    private var nextSequence: UInt64 = 1
    private var nextRoundAt: UInt64
    private var nextGossipAt: UInt64
    private var round: UInt64 = 0
    private var lastTick: UInt64?
    /// The only nodes this instance takes as members once `limitMembershipToKnownNodes()` was
    /// called (see "Configured membership"); nil: members are learned from gossip.
    private var allowedMembers: Set<NodeID>?

    /// - Parameters:
    ///   - seeds: the other configured nodes. They are pinged (a bounded number per round,
    ///     round-robin) until they answer or anyone vouches for them; one that never does is
    ///     reported `dead` once it has been pinged and `probeInterval + suspicionTimeout` passed.
    ///   - settings: invalid values are not rejected here; call `settings.validate()` at config time.
    public init(myself: NodeID, address: String, instance: UInt64,
                seeds: [(node: NodeID, address: String)], settings: SWIMSettings, nowMillis: UInt64) {
        self.settings = settings
        self.myself = Member(node: myself, address: address, instance: instance, incarnation: 0,
                             status: .alive, lastChangeMillis: nowMillis, lastHeardMillis: nil)
        self.nextRoundAt = nowMillis
        self.nextGossipAt = nowMillis &+ settings.gossipIntervalMillis
        for seed in seeds where !seed.node.isEmpty && seed.node != myself && peers[seed.node] == nil {
            peers[seed.node] = Peer(address: seed.address, instance: 0, incarnation: 0,
                                    state: .unconfirmed(deadline: 0), lastChange: nowMillis, lastHeard: nil)
        }
        // Every seed gets pinged before it can time out, however many there are.
        let pingRounds = UInt64((peers.count + max(1, settings.maxPingsPerRoundToUnconfirmed) - 1)
                                / max(1, settings.maxPingsPerRoundToUnconfirmed))
        let deadline = nowMillis &+ max(1, pingRounds) &* settings.probeIntervalMillis
            &+ settings.suspicionTimeoutMillis(memberCount: peers.count + 1)
        for name in peers.keys {
            peers[name]?.state = .unconfirmed(deadline: deadline)
            timed.insert(name)
        }
        sortedNames = peers.keys.sorted()
        seedOrder = sortedNames
        configuredSeeds = Set(sortedNames)
    }

    // MARK: - Views

    /// Every known member except this node, by name. Seeds not yet heard of are left out until
    /// they answer (then `alive`) or time out (then `dead`).
    public var members: [Member] {
        peers.keys.sorted().compactMap { member($0) }
    }

    /// Configured seeds that neither answered nor timed out yet.
    public var pendingSeeds: [NodeID] {
        timed.filter { if case .unconfirmed? = peers[$0]?.state { return true } else { return false } }.sorted()
    }

    public func member(_ node: NodeID) -> Member? {
        guard let peer = peers[node], let status = peer.state.status else { return nil }
        return Member(node: node, address: peer.address, instance: peer.instance, incarnation: peer.incarnation,
                      status: status, lastChangeMillis: peer.lastChange, lastHeardMillis: peer.lastHeard)
    }

    /// Rumours still being piggybacked and pushed; 0 once news has settled.
    public var pendingRumourCount: Int { rumours.count }

    /// Members known (alive, suspect or dead), for the caller's own bookkeeping; O(1).
    public var memberCount: Int { peers.count }

    /// The current probe interval and timeout after local-health scaling.
    public var effectiveProbeIntervalMillis: UInt64 { settings.probeIntervalMillis &* UInt64(localHealth + 1) }
    public var effectiveProbeTimeoutMillis: UInt64 { settings.probeTimeoutMillis &* UInt64(localHealth + 1) }

    /// When the running suspicion of `node` expires (nil: not suspect), as Lifeguard's timer
    /// currently stands: it moves earlier with every independent confirmation.
    public func suspicionDeadline(of node: NodeID) -> UInt64? {
        guard case .suspect(let suspicion)? = peers[node]?.state else { return nil }
        return suspicion.since &+ suspicionTimeout(suspicion)
    }

    /// Independent confirmations of the running suspicion of `node` (suspecters beyond the first).
    public func suspicionConfirmations(of node: NodeID) -> Int? {
        guard case .suspect(let suspicion)? = peers[node]?.state else { return nil }
        return suspicion.confirmations
    }

    // MARK: - Tick

    /// Advances timers: probe rounds, indirect escalation, suspicion and seed timeouts, relays,
    /// gossip. Call every 50–100 ms; coarser ticks only make detection slower.
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
            probes[index].deadline = max(probes[index].deadline, now &+ 2 &* effectiveProbeTimeoutMillis)
            probes[index].helpersAsked = sendPingRequests(for: probes[index], random: &random, into: &out)
        }
        concludeProbes(now: now, into: &out)
        decideSuspicionProbes(random: &random)
        startUrgentProbes(now: now, into: &out)

        if now >= nextRoundAt {
            let interval = effectiveProbeIntervalMillis
            nextRoundAt = nextRoundAt &+ interval
            if nextRoundAt <= now { nextRoundAt = now &+ interval }
            round &+= 1
            startProbe(now: now, random: &random, into: &out)
            pingUnconfirmed(into: &out)
            if round % UInt64(max(1, settings.deadPingEveryRounds)) == 0 { pingDead(into: &out) }
        }
        if now >= nextGossipAt {
            nextGossipAt = now &+ settings.gossipIntervalMillis
            pushGossip(random: &random, into: &out)
        }
        return out
    }

    /// Hint from the shell that dialing `node` failed (connection refused or unreachable):
    /// nobody listens there. A running probe of it escalates at the next tick and fails as soon
    /// as every helper has nacked too; requesters we ping it for get their nack right away; if
    /// no probe of it is running, one starts at the next tick.
    @discardableResult
    public mutating func connectionFailed(to node: NodeID, nowMillis now: UInt64) -> [SWIMDirective] {
        var out: [SWIMDirective] = []
        var probing = false
        for index in probes.indices where probes[index].target == node {
            probing = true
            probes[index].refused = true
            if !probes[index].indirectSent { probes[index].indirectDueAt = min(probes[index].indirectDueAt, now) }
        }
        if !probing { scheduleUrgentProbe(of: node) }
        for sequence in relays.keys.sorted() {
            guard let relay = relays[sequence], relay.target == node else { continue }
            relays[sequence] = nil
            out.append(.send(.nack(sequence: relay.requesterSequence, target: node),
                             to: relay.requester, address: relay.requesterAddress))
        }
        concludeRefusedProbes(now: now, into: &out)
        return out
    }

    /// Hint from the shell that an established connection with `node` was closed by the other
    /// side or reset (the process exited, crashed or restarted): probe it at the next tick
    /// instead of waiting for its turn. Not evidence by itself.
    public mutating func connectionClosed(to node: NodeID) {
        if !probes.contains(where: { $0.target == node }) { scheduleUrgentProbe(of: node) }
    }

    // MARK: - Receive

    /// Handles one message. `address` must be the sender's advertised peer address (what others
    /// should dial), `instance` its process instance from the frame header. Messages from an
    /// older process than the one already known, from "myself", or with instance 0 are ignored.
    /// An ack with sequence 0 is a one-way gossip push (`gossipIntervalMillis`): merged, not answered.
    public mutating func receive(_ message: SWIMMessage, from node: NodeID, instance: UInt64, address: String,
                                 nowMillis now: UInt64) -> [SWIMDirective] {
        guard !node.isEmpty, node != myself.node, instance != 0 else { return [] }
        guard allowedMembers?.contains(node) ?? true else { return [] }
        if let known = peers[node], known.instance != 0, instance < known.instance { return [] }
        var out: [SWIMDirective] = []
        // A newcomer gets the whole membership, unless it is one of our configured seeds: then
        // it has every member configured too and confirms them by its own seed pings (a full
        // answer per pair of a 1,000-node static cluster starting would be ~11 GB).
        let firstContact = peers[node]?.instance != instance && !configuredSeeds.contains(node)
        for update in message.gossip.prefix(Self.maxGossipProcessed) {
            merge(update, messenger: node, now: now, into: &out)
        }
        heardDirectly(from: node, instance: instance, address: address, now: now, into: &out)

        switch message {
        case .ping(let sequence, _):
            // That is the join for a node that knows only some seeds, and rumours about
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
                    // Unscaled by our own health, like memberlist: the requester's indirect
                    // deadline (two of its timeouts) must see our nack in time.
                    relays[mine] = Relay(requester: node, requesterAddress: address, requesterSequence: sequence,
                                         target: target, deadline: now &+ settings.probeTimeoutMillis)
                    out.append(.send(.ping(sequence: mine, gossip: gossip(for: target, full: false)),
                                     to: target, address: dial))
                }
            }

        case .ack(let sequence, let target, _):
            if let index = probes.firstIndex(where: { $0.sequence == sequence && $0.target == target }) {
                probes.remove(at: index)
                adjustHealth(-1)
            } else if let relay = relays[sequence], relay.target == node, target == node {
                relays[sequence] = nil
                out.append(.send(.ack(sequence: relay.requesterSequence, target: node,
                                      gossip: gossip(for: relay.requester, full: false)),
                                 to: relay.requester, address: relay.requesterAddress))
            }

        case .nack(let sequence, let target):
            // Lifeguard: a nack shows the helper (and our link to it) works; a probe whose
            // helpers all nacked failed for the target's sake, not ours.
            if let index = probes.firstIndex(where: { $0.sequence == sequence && $0.target == target }) {
                probes[index].nacks += 1
                concludeRefusedProbes(now: now, into: &out)
            }
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

    private mutating func merge(_ update: GossipUpdate, messenger: NodeID, now: UInt64, into out: inout [SWIMDirective]) {
        guard !update.node.isEmpty, update.instance != 0 else { return }
        if update.node == myself.node {
            refuteIfNeeded(update)
            return
        }
        guard allowedMembers?.contains(update.node) ?? true else { return }
        // Who raised this suspicion; unknown on today's wire, then whoever told us.
        let suspecter = update.origin.isEmpty ? messenger : update.origin
        guard let peer = peers[update.node] else {
            guard peers.count < Self.maxPeers else { return }
            adopt(update, suspecter: suspecter, now: now, previous: nil, lastHeard: nil, into: &out)
            return
        }
        if peer.instance == 0 || update.instance > peer.instance {
            adopt(update, suspecter: suspecter, now: now, previous: peer.state.status,
                  lastHeard: update.instance == peer.instance ? peer.lastHeard : nil, into: &out)
            return
        }
        guard update.instance == peer.instance, let status = peer.state.status else { return }
        if case .suspect = peer.state, update.status == .suspect, update.incarnation == peer.incarnation {
            confirmSuspicion(of: update.node, by: suspecter)
            return
        }
        guard Self.supersedes((update.incarnation, update.status), (peer.incarnation, status)) else { return }
        if update.status == status {
            // Same status, newer incarnation: nothing to report, but pass the news on. A
            // suspicion of a newer incarnation is a new suspicion.
            peers[update.node]?.incarnation = update.incarnation
            if !update.address.isEmpty { peers[update.node]?.address = update.address }
            if status == .suspect {
                peers[update.node]?.state = .suspect(Suspicion(since: now, suspecters: [suspecter]))
                heardSuspect.append(update.node)
                timersCheckedUntil = 0
            }
            enqueue(update)
        } else {
            adopt(update, suspecter: suspecter, now: now, previous: status, lastHeard: peer.lastHeard, into: &out)
        }
    }

    private mutating func adopt(_ update: GossipUpdate, suspecter: NodeID, now: UInt64, previous: MemberStatus?,
                                lastHeard: UInt64?, into out: inout [SWIMDirective]) {
        let state: State
        switch update.status {
        case .alive: state = .alive
        case .suspect:
            state = .suspect(Suspicion(since: now, suspecters: [suspecter]))
            heardSuspect.append(update.node)
        case .dead: state = .dead
        }
        let known = peers[update.node]
        if known == nil { insertSorted(update.node) }
        let address = update.address.isEmpty ? (known?.address ?? "") : update.address
        peers[update.node] = Peer(address: address, instance: update.instance, incarnation: update.incarnation,
                                  state: state, lastChange: now, lastHeard: lastHeard)
        track(update.node, state)
        if update.status != .dead { toInsert.append(update.node) }
        // A configured seed turning out alive is no news worth gossiping: every member has it
        // configured and pings it itself before its seed timeout. Gossiping each start-up
        // confirmation would be an N² rumour storm (N rumours on each of N nodes).
        if case .unconfirmed? = known?.state, update.status == .alive, known?.instance == 0 {
            // not enqueued
        } else {
            enqueue(update)
        }
        if let member = member(update.node) { out.append(.statusChanged(member, previous: previous)) }
    }

    /// Lifeguard's Confirm: a new independent suspecter shortens the timer and is passed on
    /// (until K are known; more would not shorten anything).
    private mutating func confirmSuspicion(of node: NodeID, by suspecter: NodeID) {
        guard let peer = peers[node], case .suspect(var suspicion) = peer.state,
              suspicion.confirmations < expectedConfirmations, !suspicion.suspecters.contains(suspecter) else { return }
        suspicion.suspecters.insert(suspecter)
        peers[node]?.state = .suspect(suspicion)
        timersCheckedUntil = 0
        enqueue(GossipUpdate(node: node, address: peer.address, instance: peer.instance,
                             incarnation: peer.incarnation, status: .suspect, origin: suspecter))
    }

    private var expectedConfirmations: Int {
        max(0, min(settings.suspicionConfirmations, peers.count + 1 - 2))
    }

    private func suspicionTimeout(_ suspicion: Suspicion) -> UInt64 {
        settings.suspicionTimeoutMillis(memberCount: peers.count + 1, confirmations: suspicion.confirmations)
    }

    private mutating func refuteIfNeeded(_ update: GossipUpdate) {
        guard update.instance == myself.instance, update.status != .alive,
              update.incarnation >= myself.incarnation else { return }
        // Saturate rather than trap: only a forged rumour can get here, and it must not crash us.
        myself.incarnation = update.incarnation == .max ? .max : update.incarnation + 1
        enqueue(selfUpdate)
        // Lifeguard: being suspected hints that we were too slow to answer.
        adjustHealth(+1)
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
        adopt(update, suspecter: node, now: now, previous: previous, lastHeard: now, into: &out)
    }

    private mutating func setState(_ node: NodeID, _ state: State, now: UInt64, into out: inout [SWIMDirective]) {
        guard let peer = peers[node] else { return }
        let previous = peer.state.status
        peers[node]?.state = state
        peers[node]?.lastChange = now
        track(node, state)
        guard let member = member(node) else { return }
        if peer.instance != 0 {
            let origin: NodeID
            if case .suspect = state { origin = myself.node } else { origin = "" }
            enqueue(GossipUpdate(node: node, address: peer.address, instance: peer.instance,
                                 incarnation: peer.incarnation, status: member.status, origin: origin))
        }
        out.append(.statusChanged(member, previous: previous))
    }

    private mutating func insertSorted(_ node: NodeID) {
        let low = sortedNames.sortedInsertionIndex(of: node)
        if low == sortedNames.count || sortedNames[low] != node { sortedNames.insert(node, at: low) }
    }

    /// Keeps the timer and dead indexes in step with a member's state.
    private mutating func track(_ node: NodeID, _ state: State) {
        switch state {
        case .unconfirmed, .suspect:
            timersCheckedUntil = 0
            timed.insert(node)
            deadMembers.remove(node)
        case .dead:
            timed.remove(node)
            deadMembers.insert(node)
        case .alive:
            timed.remove(node)
            deadMembers.remove(node)
        }
    }

    private mutating func adjustHealth(_ delta: Int) {
        localHealth = min(max(0, localHealth + delta), max(1, settings.maxLocalHealthMultiplier) - 1)
    }

    // MARK: - Timers

    private mutating func recoverFromStall(gap: UInt64, now: UInt64) {
        // Nobody answered because we were not running: drop our probe and relays, and don't let
        // the pause count towards anyone's suspicion or seed timeout.
        probes = []
        relays = [:]
        urgent = []
        for name in timed.sorted() {
            switch peers[name]?.state {
            case .suspect(var suspicion)?:
                suspicion.since &+= gap
                peers[name]?.state = .suspect(suspicion)
            case .unconfirmed(let deadline)?: peers[name]?.state = .unconfirmed(deadline: deadline &+ gap)
            default: break
            }
        }
        nextRoundAt = now
        nextGossipAt = now
        timersCheckedUntil = 0
    }

    private mutating func expireRelays(now: UInt64, into out: inout [SWIMDirective]) {
        guard !relays.isEmpty else { return }
        for sequence in relays.keys.sorted() {
            guard let relay = relays[sequence], now >= relay.deadline else { continue }
            relays[sequence] = nil
            out.append(.send(.nack(sequence: relay.requesterSequence, target: relay.target),
                             to: relay.requester, address: relay.requesterAddress))
        }
    }

    private mutating func expireTimers(now: UInt64, into out: inout [SWIMDirective]) {
        guard !timed.isEmpty, now >= timersCheckedUntil else { return }
        var next = UInt64.max
        for name in timed.sorted() {
            guard let peer = peers[name] else { continue }
            switch peer.state {
            case .suspect(let suspicion):
                let deadline = suspicion.since &+ suspicionTimeout(suspicion)
                if now >= deadline { setState(name, .dead, now: now, into: &out) } else { next = min(next, deadline) }
            case .unconfirmed(let deadline):
                if now >= deadline { setState(name, .dead, now: now, into: &out) } else { next = min(next, deadline) }
            default:
                break
            }
        }
        // The scan only declares deaths; a timer added or shortened later resets this to 0.
        timersCheckedUntil = next
    }

    private mutating func concludeProbes(now: UInt64, into out: inout [SWIMDirective]) {
        guard probes.contains(where: { now >= $0.deadline }) else { return }
        let expired = probes.filter { now >= $0.deadline }
        probes.removeAll { now >= $0.deadline }
        for current in expired { probeFailed(current, now: now, into: &out) }
    }

    /// The direct path was refused and every helper nacked: nothing can still answer.
    private mutating func concludeRefusedProbes(now: UInt64, into out: inout [SWIMDirective]) {
        let isSettled: (Probe) -> Bool = { $0.refused && $0.indirectSent && $0.nacks >= $0.helpersAsked }
        guard probes.contains(where: isSettled) else { return }
        let settled = probes.filter(isSettled)
        probes.removeAll(where: isSettled)
        for current in settled { probeFailed(current, now: now, into: &out) }
    }

    private mutating func probeFailed(_ probe: Probe, now: UInt64, into out: inout [SWIMDirective]) {
        // Lifeguard: helpers that did not even nack point at our own slowness (or our links);
        // with nobody to ask, the failed probe itself is the only signal.
        adjustHealth(probe.helpersAsked > 0 ? max(0, probe.helpersAsked - probe.nacks) : 1)
        guard let peer = peers[probe.target] else { return }
        switch peer.state {
        case .alive:
            setState(probe.target, .suspect(Suspicion(since: now, suspecters: [myself.node])), now: now, into: &out)
        case .suspect:
            confirmSuspicion(of: probe.target, by: myself.node)
        default:
            break
        }
    }

    private mutating func scheduleUrgentProbe(of node: NodeID) {
        guard isProbeable(node), !urgent.contains(node) else { return }
        urgent.append(node)
    }

    /// Lifeguard's confirmations come from members that probe the suspect themselves. In a
    /// small cluster everyone does; in a large one about 2K of those who hear of it do.
    private mutating func decideSuspicionProbes(random: inout some RandomNumberGenerator) {
        guard !heardSuspect.isEmpty else { return }
        let others = max(1, peers.count - 1)
        let wanted = 2 * max(1, expectedConfirmations)
        for node in heardSuspect {
            if wanted >= others || Int.random(in: 0..<others, using: &random) < wanted {
                scheduleUrgentProbe(of: node)
            }
        }
        heardSuspect.removeAll()
    }

    private mutating func startUrgentProbes(now: UInt64, into out: inout [SWIMDirective]) {
        guard !urgent.isEmpty else { return }
        let due = urgent
        urgent.removeAll()
        for target in due where isProbeable(target) && !probes.contains(where: { $0.target == target }) {
            startProbe(of: target, now: now, into: &out)
        }
    }

    private mutating func startProbe(now: UInt64, random: inout some RandomNumberGenerator,
                                     into out: inout [SWIMDirective]) {
        guard var target = nextProbeTarget(random: &random) else { return }
        // Already probed out of turn: take the next one rather than probe it twice.
        if probes.contains(where: { $0.target == target }) {
            guard let next = nextProbeTarget(random: &random) else { return }
            target = next
        }
        startProbe(of: target, now: now, into: &out)
    }

    private mutating func startProbe(of target: NodeID, now: UInt64, into out: inout [SWIMDirective]) {
        guard let peer = peers[target] else { return }
        let sequence = takeSequence()
        probes.append(Probe(target: target, address: peer.address, sequence: sequence,
                            indirectDueAt: now &+ effectiveProbeTimeoutMillis, indirectSent: false,
                            deadline: now &+ effectiveProbeIntervalMillis))
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
                queuedInPass.remove(candidate)
                if isProbeable(candidate) { return candidate }
            }
            guard pass == 0 else { break }
            probeOrder = peers.keys.sorted().filter(isProbeable)
            probeOrder.shuffle(using: &random)
            probeIndex = 0
            queuedInPass = Set(probeOrder)
            toInsert.removeAll()
        }
        return nil
    }

    private mutating func insertNewcomers(random: inout some RandomNumberGenerator) {
        guard !toInsert.isEmpty else { return }
        for name in toInsert where !queuedInPass.contains(name) {
            let position = Int.random(in: probeIndex...probeOrder.count, using: &random)
            probeOrder.insert(name, at: position)
            queuedInPass.insert(name)
        }
        toInsert.removeAll()
    }

    /// Up to `count` distinct alive members other than `excluded`, at random.
    private func randomAliveMembers(_ count: Int, excluding excluded: NodeID?,
                                    random: inout some RandomNumberGenerator) -> [NodeID] {
        guard count > 0 else { return [] }
        if peers.count <= Self.fullScanLimit {
            var candidates = peers.keys.sorted().filter { $0 != excluded && peers[$0]?.state == .alive }
            candidates.shuffle(using: &random)
            return Array(candidates.prefix(count))
        }
        // Large views: sample the probe order (every probeable member, newcomers included).
        var chosen: [NodeID] = []
        var attempts = 0
        while chosen.count < count && attempts < count * 8 && !probeOrder.isEmpty {
            attempts += 1
            let candidate = probeOrder[Int.random(in: 0..<probeOrder.count, using: &random)]
            if candidate != excluded && peers[candidate]?.state == .alive && !chosen.contains(candidate) {
                chosen.append(candidate)
            }
        }
        return chosen
    }

    private mutating func sendPingRequests(for current: Probe, random: inout some RandomNumberGenerator,
                                           into out: inout [SWIMDirective]) -> Int {
        let helpers = randomAliveMembers(max(0, settings.indirectProbeCount), excluding: current.target, random: &random)
        var asked = 0
        for helper in helpers {
            guard let address = peers[helper]?.address else { continue }
            asked += 1
            out.append(.send(.pingRequest(sequence: current.sequence, target: current.target,
                                          targetAddress: current.address, gossip: gossip(for: helper, full: false)),
                             to: helper, address: address))
        }
        return asked
    }

    /// Pending rumours also go straight to a few random members (a one-way ack, sequence 0),
    /// so news spreads in O(log N) gossip intervals rather than probe rounds.
    private mutating func pushGossip(random: inout some RandomNumberGenerator, into out: inout [SWIMDirective]) {
        guard !rumours.isEmpty, settings.gossipFanout > 0 else { return }
        for target in randomAliveMembers(settings.gossipFanout, excluding: nil, random: &random) {
            guard !rumours.isEmpty, let address = peers[target]?.address else { break }
            out.append(.send(.ack(sequence: 0, target: myself.node, gossip: gossip(for: target, full: false)),
                             to: target, address: address))
        }
    }

    private mutating func pingUnconfirmed(into out: inout [SWIMDirective]) {
        var picked = 0
        var visited = 0
        let limit = max(1, settings.maxPingsPerRoundToUnconfirmed)
        while picked < limit && !seedOrder.isEmpty && visited < seedOrder.count {
            if seedPingCursor >= seedOrder.count { seedPingCursor = 0 }
            let name = seedOrder[seedPingCursor]
            guard case .unconfirmed? = peers[name]?.state, let address = peers[name]?.address else {
                seedOrder.remove(at: seedPingCursor)
                continue
            }
            visited += 1
            picked += 1
            seedPingCursor += 1
            out.append(.send(.ping(sequence: takeSequence(), gossip: gossip(for: name, full: false)),
                             to: name, address: address))
        }
    }

    private mutating func pingDead(into out: inout [SWIMDirective]) {
        guard !deadMembers.isEmpty else { return }
        let dead = deadMembers.sorted()
        let count = min(dead.count, max(1, settings.maxPingsPerRoundToUnconfirmed))
        for offset in 0..<count {
            let name = dead[(deadPingCursor + offset) % dead.count]
            guard let address = peers[name]?.address else { continue }
            out.append(.send(.ping(sequence: takeSequence(), gossip: gossip(for: name, full: false)),
                             to: name, address: address))
        }
        deadPingCursor = (deadPingCursor + count) % max(1, dead.count)
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
        rumoursQueued &+= 1
        rumours[update.node] = Rumour(update: update, sent: 0, queued: rumoursQueued)
    }

    /// Piggyback for one message: our own record (so the receiver learns our incarnation from
    /// any contact), the recipient's own bad status if we hold one (so it can refute at once),
    /// then the least-sent rumours. `full` sends every known member instead of rumours.
    private mutating func gossip(for recipient: NodeID, full: Bool) -> [GossipUpdate] {
        var result = [selfUpdate]
        let hint = update(for: recipient).flatMap { $0.status == .alive ? nil : $0 }
        if let hint { result.append(hint) }
        if full {
            for name in sortedNames where name != recipient {
                guard result.count < Self.maxFullSync + 2 else { break }
                if let known = update(for: name) { result.append(known) }
            }
            return result
        }
        guard !rumours.isEmpty else { return result }
        let limit = settings.retransmitLimit(memberCount: peers.count + 1)
        // A backlog (after a partition heals every member queues a verdict per member it lost)
        // drains up to 4× faster: at 8 per message a crash verdict queued behind it reached the
        // last of 1,000 members ~3 s after the others.
        let perMessage = max(0, settings.gossipPerMessage)
        for name in leastSentRumours(min(4 * perMessage, max(perMessage, rumours.count / 4))) {
            guard let rumour = rumours[name] else { continue }
            let repeatsHint = hint.map {
                $0.node == rumour.update.node && $0.instance == rumour.update.instance
                    && $0.incarnation == rumour.update.incarnation && $0.status == rumour.update.status
            } ?? false
            if !repeatsHint { result.append(rumour.update) }
            if rumour.sent + 1 >= limit { rumours[name] = nil } else { rumours[name]?.sent += 1 }
        }
        return result
    }

    /// The `count` rumours sent least often, the newest first among equals (memberlist's
    /// order): after a partition heals every member queues hundreds of verdicts from its side,
    /// and a refutation queued behind them (ties broken by name) reached some members only after
    /// their own suspicion of the refuting member expired (`keystore-sim --nodes 1000
    /// --rotations 0 --registrations 0`: 311 false deaths, 303 of them a stale suspicion).
    /// A bounded selection, not a sort, since a large cluster's start-up queues a rumour per member.
    private func leastSentRumours(_ count: Int) -> [NodeID] {
        guard count > 0 else { return [] }
        // Tuples compare in order; `~queued` makes a later rumour compare smaller (the counter
        // is unique, so the name never decides).
        var best: [(sent: Int, age: UInt64, name: NodeID)] = []
        best.reserveCapacity(count + 1)
        for (name, rumour) in rumours {
            let entry = (sent: rumour.sent, age: ~rumour.queued, name: name)
            if best.count == count, let last = best.last, !(entry < last) { continue }
            let position = best.firstIndex { entry < $0 } ?? best.count
            best.insert(entry, at: position)
            if best.count > count { best.removeLast() }
        }
        return best.map(\.name)
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

    /// A node added to the configuration (reload): pinged like a seed given at start, reported
    /// `alive` once any process of it is heard of, `dead` if none is before the seed timeout
    /// (counted, as at start, from when its turn among the pending seeds' pings comes).
    /// Returns false when the node is already known (then nothing changes).
    @discardableResult
    public mutating func addSeed(node: NodeID, address: String, nowMillis now: UInt64) -> Bool {
        guard !node.isEmpty, node != myself.node else { return false }
        allowedMembers?.insert(node)
        guard peers[node] == nil else { return false }
        seedOrder.append(node)
        configuredSeeds.insert(node)
        insertSorted(node)
        let perRound = max(1, settings.maxPingsPerRoundToUnconfirmed)
        let pingRounds = UInt64((seedOrder.count + perRound - 1) / perRound)
        let state = State.unconfirmed(deadline: now &+ max(1, pingRounds) &* effectiveProbeIntervalMillis
                                      &+ settings.suspicionTimeoutMillis(memberCount: peers.count + 2))
        peers[node] = Peer(address: address, instance: 0, incarnation: 0, state: state, lastChange: now, lastHeard: nil)
        track(node, state)
        return true
    }

    /// A node removed from the configuration (reload): forgotten at once, with its probes,
    /// rumours, timers and the pings we relay for it or to it; with
    /// `limitMembershipToKnownNodes` in effect, nothing it sends and nothing said about it is
    /// taken any more. Requesters of pings to it get their nack now. Returns its last view
    /// (nil: it was not reported yet) and the nacks to send. No `statusChanged` is emitted: the
    /// caller decided this.
    public mutating func remove(node: NodeID) -> (last: Member?, directives: [SWIMDirective]) {
        allowedMembers?.remove(node)
        let last = member(node)
        peers[node] = nil
        rumours[node] = nil
        timed.remove(node)
        deadMembers.remove(node)
        configuredSeeds.remove(node)
        sortedNames.removeAll { $0 == node }
        if let index = seedOrder.firstIndex(of: node) {
            seedOrder.remove(at: index)
            if index < seedPingCursor { seedPingCursor -= 1 }
        }
        if let index = probeOrder.firstIndex(of: node) {
            probeOrder.remove(at: index)
            if index < probeIndex { probeIndex -= 1 }
        }
        queuedInPass.remove(node)
        toInsert.removeAll { $0 == node }
        urgent.removeAll { $0 == node }
        heardSuspect.removeAll { $0 == node }
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
