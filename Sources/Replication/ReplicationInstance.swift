import Membership
import ReplicatedStore

/// Replication of the store between cluster members as a pure state machine (like
/// `SWIMInstance`): the startup join decision, eager push, anti-entropy repair and full-state
/// streaming. The caller owns I/O, time, randomness and the replica itself: every input returns
/// directives, and the replica's content is read through `ReplicaContent` only when needed.
///
/// The rules (docs/replication.md):
/// - **Join.** A starting node connects to every peer and asks each for its state on every new
///   usable connection. It adopts the state of the first *ready* peer whose `syncDone` arrives,
///   but finishes only when every merge issued before that `syncDone` has completed (merges are
///   asynchronous: the node persists certificate records before applying them). When every peer
///   answered "starting too" (`clusterStarting`), or `join_timeout_ms` has passed and every peer
///   either answered so or cannot be reached at all (`timedOut`), one node generates the keys:
///   the smallest name among itself and the reachable peers starting too. The others keep
///   asking it and adopt its state, so a cluster started at once gets one version per key. A
///   peer that is reachable but silent (flooded port, paused process, slow TLS) keeps the join
///   waiting, because that peer may hold the cluster's keys. Until the node calls `markReady`
///   (after generating the keys still missing), state requests are held, not answered "not
///   ready", so no peer mistakes a node finishing its join for a cluster that is starting.
///   A node that restarts from its database says what it holds (durable bucket digests), and
///   the answer carries every key version but only the certificate records and token floors
///   of the buckets that differ.
/// - **Push.** A local change goes to every alive member (changes are rare; no member then waits
///   for a rumour). What a merge of a push found new is forwarded to ⌈√N⌉ random alive members
///   (at least `minimumFanout`), not back to the sender.
/// - **Anti-entropy.** Once ready, every interval a digest goes to one random alive member; a
///   differing digest is answered with bucket digests (total and per section), those with the
///   differing sections of the differing buckets (`repair`), those with the receiver's entries
///   of the same sections (`repairReply`). One repair per peer at
///   a time, a new one only after the reply or `repairCooldownMillis`; none while joining (the
///   full state is on its way then).
/// - **Streaming.** A full-state answer is produced and sent one chunk per `pump` (see
///   `StateAnswer`), only while the connection to the requester is up (a chunk is never queued
///   behind a dial), and starts over on a new connection; `syncDone` follows the last chunk on
///   the same connection.
public struct ReplicationInstance<Payload: ReplicationPayload>: Sendable {
    public typealias Directive = ReplicationDirective<Payload>
    public typealias Message = ReplicationMessage<Payload>

    public let myself: NodeID
    /// The other configured nodes, sorted (`addPeer` / `removePeer` follow a reload).
    public private(set) var peers: [NodeID]
    public let settings: ReplicationSettings

    private enum Phase: Sendable {
        case joining(Join)
        /// Decided (`joinFinished` emitted); waiting for `markReady`.
        case finishing(JoinOutcome)
        case ready
    }

    private struct Join: Sendable {
        var startedAt: UInt64?
        var timeoutMillis: UInt64 = 0
        /// Chosen outcome, emitted once every apply in `waitingFor` has completed.
        var decision: JoinOutcome?
        var waitingFor: Set<ApplyID> = []
        /// Sent with every state request: what this node already holds from its database.
        var durableDigests: [UInt64]?
    }

    /// A state request waiting for `markReady`, with what the requester said it holds.
    private struct HeldRequest: Sendable {
        var durableDigests: [UInt64]?
    }

    /// Latest evidence about reaching a peer.
    private enum Reach: Sendable {
        case unknown, unreachable, unresponsive, connected
        /// Was connected; the connection dropped and no new attempt has concluded yet.
        case lost
    }

    private enum Answer: Sendable { case notReady(at: UInt64), ready }

    private struct Stream: Sendable {
        var answer: any StateAnswer<Payload>
    }

    private struct Peer: Sendable {
        var linkUp = false
        var reach = Reach.unknown
        var lastConnectAt: UInt64?
        /// Anti-entropy verdict (nil: unknown).
        var sync: RepairState?
        var repairRequestedAt: UInt64?
        /// The repair last answered on this connection: its buckets and when. A repair arrives in
        /// as many chunks as its content needs, each naming the same buckets; answering every
        /// chunk sent those buckets' whole content back once per chunk (measured: a 12-chunk repair
        /// of all 1,024 buckets drew 1,236 reply chunks, about 1 GB, from a node holding 100,000
        /// certificates, which held them in memory while the peer read).
        var answeredRepair: (buckets: [Int], sections: [BucketSections], at: UInt64)?
        /// A state request that arrived while this node was finishing its join.
        var heldSyncRequest: HeldRequest?
        // Join bookkeeping (only while joining).
        var answer: Answer?
        var requestedOnLink = false
        /// A state request on the current connection has not been answered yet: one at a time,
        /// or every extra request still in flight when the answer starts costs a whole answer.
        var awaitingAnswer = false
        var receiving = false
    }

    private struct PendingApply: Sendable {
        var from: NodeID
        var forward: Bool
    }

    private var phase: Phase = .joining(Join())
    private var state: [NodeID: Peer]
    /// The peers membership holds alive, sorted: what every push, forward and anti-entropy round
    /// picks from. Kept beside `state` so those need not look up every configured peer (at 1,000
    /// peers that scan, once per anti-entropy round, was 40 % of a simulated node's CPU).
    private var alivePeers: [NodeID] = []
    /// Our full-state answers in progress, by requester. Apart from `Peer`, so that `Peer` holds
    /// no payload and a scan of the peers copies no chunks.
    private var streams: [NodeID: Stream] = [:]
    private var pending: [ApplyID: PendingApply] = [:]
    private var nextApply: UInt64 = 1
    private var nextAntiEntropyAt: UInt64 = 0
    private var now: UInt64

    public init(myself: NodeID, peers: [NodeID], settings: ReplicationSettings = ReplicationSettings(), nowMillis: UInt64) {
        self.myself = myself
        let others = Set(peers).subtracting([myself]).filter { !$0.isEmpty }
        self.peers = others.sorted()
        self.settings = settings
        self.state = Dictionary(uniqueKeysWithValues: others.map { ($0, Peer()) })
        self.now = nowMillis
    }

    // MARK: - Views

    /// True once `markReady` was called: the node serves and answers state requests as ready.
    public var isReady: Bool { if case .ready = phase { return true } else { return false } }

    /// The join's outcome once decided.
    public var joinOutcome: JoinOutcome? {
        switch phase {
        case .joining: return nil
        case .finishing(let outcome): return outcome
        case .ready: return nil
        }
    }

    /// Anti-entropy with `node`; nil until a digest exchange (or after the member left).
    public func repairState(with node: NodeID) -> RepairState? { state[node]?.sync }

    /// Whether a usable connection to `node` was last reported.
    public func isLinked(_ node: NodeID) -> Bool { state[node]?.linkUp ?? false }

    /// Peers a full-state answer is being streamed to, over a usable connection right now.
    public var streamingTo: [NodeID] {
        streams.keys.filter { state[$0]?.linkUp == true }.sorted()
    }

    /// Merges issued and not yet reported complete.
    public var pendingApplies: Int { pending.count }

    /// Set while the join is past `join_timeout_ms` without a decision: what it waits for.
    public var joinProblem: JoinProblem? {
        guard case .joining(let join) = phase, join.decision == nil, let started = join.startedAt,
              now >= started &+ join.timeoutMillis else { return nil }
        var problem = JoinProblem(notAnswering: [], receivingFrom: [], unreachable: [], notReady: [], starter: awaitedStarter,
                                  overdueMillis: now - (started &+ join.timeoutMillis))
        for node in peers {
            guard let peer = state[node] else { continue }
            if peer.receiving { problem.receivingFrom.append(node); continue }
            if case .notReady = peer.answer { problem.notReady.append(node); continue }
            if case .unreachable = peer.reach { problem.unreachable.append(node) } else { problem.notAnswering.append(node) }
        }
        return problem
    }

    // MARK: - Join

    /// Starts the join: connects to every peer (state requests follow on each `.up`), or
    /// finishes at once when no other node is configured. `replica` is what the node loaded
    /// from its database: its durable digests go with every state request (none when it holds
    /// nothing durable), so a ready peer does not send again what the node already has. Merges
    /// during the join only add to it, so the digests stay a safe statement of what it holds.
    public mutating func startJoin(timeoutMillis: UInt64, nowMillis: UInt64,
                                   replica: some ReplicaContent<Payload>) -> [Directive] {
        now = max(now, nowMillis)
        guard case .joining(var join) = phase, join.startedAt == nil else { return [] }
        join.startedAt = now
        join.timeoutMillis = timeoutMillis
        let digests = replica.durableBucketDigests
        join.durableDigests = digests.allSatisfy { $0 == 0 } ? nil : digests
        phase = .joining(join)
        var out: [Directive] = []
        if peers.isEmpty {
            finish(.alone, into: &out)
            return out
        }
        for node in peers {
            if state[node]?.linkUp == true {
                requestState(from: node, into: &out)
            } else {
                state[node]?.lastConnectAt = now
                out.append(.connect(node))
            }
        }
        return out
    }

    /// The node generated what the cluster did not give it and serves now: answer the state
    /// requests held meanwhile and start anti-entropy.
    public mutating func markReady(nowMillis: UInt64, replica: some ReplicaContent<Payload>) -> [Directive] {
        now = max(now, nowMillis)
        guard !isReady else { return [] }
        phase = .ready
        nextAntiEntropyAt = now &+ settings.antiEntropyIntervalMillis
        var out: [Directive] = []
        for node in peers {
            guard let held = state[node]?.heldSyncRequest else { continue }
            state[node]?.heldSyncRequest = nil
            startStream(to: node, holding: held.durableDigests, replica: replica, into: &out)
        }
        for node in alivePeers {
            out.append(.send(.digest(root: replica.rootDigest), to: node))
        }
        return out
    }

    // MARK: - Inputs

    /// Handles one message from `node` (a configured peer; others are ignored).
    public mutating func receive(_ message: Message, from node: NodeID, nowMillis: UInt64,
                                 replica: some ReplicaContent<Payload>) -> [Directive] {
        now = max(now, nowMillis)
        guard state[node] != nil else { return [] }
        var out: [Directive] = []
        switch message {
        case .syncRequest(let durableDigests):
            switch phase {
            case .joining:
                out.append(.send(.syncDone(ready: false), to: node))
            case .finishing:
                state[node]?.heldSyncRequest = HeldRequest(durableDigests: durableDigests)
            case .ready:
                // Asked again on the same connection while answering: the answer under way ends
                // with its `syncDone`; starting over would never finish for a peer that re-asks.
                guard streams[node] == nil else { break }
                startStream(to: node, holding: durableDigests, replica: replica, into: &out)
            }

        case .syncDone(let ready):
            state[node]?.receiving = false
            state[node]?.awaitingAnswer = false
            guard case .joining(var join) = phase, join.startedAt != nil, join.decision == nil else { break }
            if ready {
                state[node]?.answer = .ready
                join.decision = .adopted(from: node)
                join.waitingFor = Set(pending.keys)
                phase = .joining(join)
            } else {
                state[node]?.answer = .notReady(at: now)
            }
            evaluateJoin(into: &out)

        case .delta(let payload, let purpose):
            let id = ApplyID(rawValue: nextApply)
            nextApply &+= 1
            pending[id] = PendingApply(from: node, forward: purpose == .push)
            out.append(.apply(payload, from: node, id: id))
            switch purpose {
            case .push:
                break
            case .repair(let buckets, let sections):
                // The same repair's next chunks: already answered (one answer per repair).
                if let answered = state[node]?.answeredRepair, answered.buckets == buckets, answered.sections == sections,
                   now < answered.at &+ settings.repairCooldownMillis { break }
                state[node]?.answeredRepair = (buckets, sections, now)
                for chunk in nonEmptyChunks(replica.chunks(forBuckets: buckets, sections: sections)) {
                    out.append(.send(.delta(chunk, purpose: .repairReply), to: node))
                }
            case .repairReply:
                state[node]?.sync = .inSync
                state[node]?.repairRequestedAt = nil
            case .sync:
                if case .joining(let join) = phase, join.decision == nil { state[node]?.receiving = true }
            }

        case .digest(let root):
            // While joining the full state is on its way; a repair now would send it all again.
            guard isReady else { break }
            if root == replica.rootDigest {
                state[node]?.sync = .inSync
                state[node]?.repairRequestedAt = nil
                break
            }
            // One repair per peer at a time: a large one takes longer than a round.
            if let asked = state[node]?.repairRequestedAt, now < asked &+ settings.repairCooldownMillis { break }
            state[node]?.repairRequestedAt = now
            state[node]?.sync = .repairing
            out.append(.send(.bucketDigests(replica.bucketDigests, sections: replica.sectionDigests), to: node))

        case .bucketDigests(let theirs, let theirSections):
            guard isReady else { break }
            let differing = ReplicatedStore.differingBuckets(mine: replica.bucketDigests, theirs: theirs)
            guard !differing.isEmpty else { break }
            // Only the sections that differ: after a join the new node's key declarations change
            // nearly every bucket, and whole buckets would carry every certificate and key secret.
            let sections = theirSections.map { replica.sectionDigests.differingSections(from: $0, in: differing) }
                ?? Array(repeating: .all, count: differing.count)
            for chunk in nonEmptyChunks(replica.chunks(forBuckets: differing, sections: sections)) {
                out.append(.send(.delta(chunk, purpose: .repair(buckets: differing, sections: sections)), to: node))
            }
        }
        return out
    }

    /// A merge finished; `new` is what it added here. News learned from a push is forwarded.
    public mutating func applied(_ id: ApplyID, new: Payload, nowMillis: UInt64, random: inout some RandomNumberGenerator,
                                 replica: some ReplicaContent<Payload>) -> [Directive] {
        now = max(now, nowMillis)
        var out: [Directive] = []
        guard let done = pending.removeValue(forKey: id) else { return out }
        let forward = done.forward ? new.excludingChanges(madeBy: done.from) : Payload.empty
        if !forward.isEmpty {
            let targets = forwardTargets(excluding: done.from, random: &random)
            for chunk in replica.chunks(of: forward) where !chunk.isEmpty {
                for node in targets { out.append(.send(.delta(chunk, purpose: .push), to: node)) }
            }
        }
        evaluateJoin(into: &out)
        return out
    }

    /// A change made on this node (rotation, new key, registration, PSK fingerprint): every
    /// alive member hears it directly (every configured peer while membership knows none).
    public mutating func localChange(_ payload: Payload, replica: some ReplicaContent<Payload>) -> [Directive] {
        guard !payload.isEmpty else { return [] }
        let targets = alivePeers.isEmpty ? peers : alivePeers
        var out: [Directive] = []
        for chunk in replica.chunks(of: payload) where !chunk.isEmpty {
            for node in targets { out.append(.send(.delta(chunk, purpose: .push), to: node)) }
        }
        return out
    }

    /// What the transport learned about its connection to `node`.
    public mutating func linkChanged(_ node: NodeID, _ event: LinkEvent, nowMillis: UInt64) -> [Directive] {
        now = max(now, nowMillis)
        guard var peer = state[node] else { return [] }
        var out: [Directive] = []
        switch event {
        case .up:
            guard !peer.linkUp else { return [] }
            peer.linkUp = true
            peer.reach = .connected
            peer.requestedOnLink = false
            // A full-state answer starts over on the new connection: what went out on the old
            // one may be lost, and `syncDone` must follow every chunk on one connection.
            streams[node]?.answer.rewind()
            state[node] = peer
            requestState(from: node, into: &out)
        case .down:
            guard peer.linkUp else { return [] }
            peer.linkUp = false
            peer.reach = .lost
            peer.requestedOnLink = false
            peer.awaitingAnswer = false
            peer.receiving = false
            // The reply to a repair asked on that connection will not come; a repair asked on
            // the next one is a new one.
            peer.repairRequestedAt = nil
            peer.answeredRepair = nil
            state[node] = peer
        case .unreachable, .unresponsive:
            // A failed extra attempt while a connection is usable says nothing new.
            guard !peer.linkUp else { return [] }
            peer.reach = event == .unreachable ? .unreachable : .unresponsive
            state[node] = peer
            evaluateJoin(into: &out)
        }
        return out
    }

    /// Membership news from SWIM. A member that (re)appears is compared with at once.
    public mutating func memberChanged(_ member: Member, previous: MemberStatus?,
                                       replica: some ReplicaContent<Payload>) -> [Directive] {
        guard state[member.node] != nil else { return [] }
        if member.status == .alive {
            setAlive(member.node, true)
            return isReady ? [.send(.digest(root: replica.rootDigest), to: member.node)] : []
        }
        setAlive(member.node, false)
        state[member.node]?.sync = nil
        state[member.node]?.repairRequestedAt = nil
        state[member.node]?.answeredRepair = nil
        if member.status == .dead {
            // A state answer to a process that is gone would hold a copy of everything until
            // it came back; its next process asks anew.
            streams[member.node] = nil
            state[member.node]?.heldSyncRequest = nil
        }
        return []
    }

    /// Timers: while joining, redials, repeated questions and the timeout; once ready, one
    /// anti-entropy digest per interval.
    public mutating func tick(nowMillis: UInt64, random: inout some RandomNumberGenerator,
                              replica: some ReplicaContent<Payload>) -> [Directive] {
        now = max(now, nowMillis)
        var out: [Directive] = []
        switch phase {
        case .joining(let join):
            guard let started = join.startedAt, join.decision == nil else { break }
            let starter = awaitedStarter
            for node in peers {
                guard let peer = state[node] else { continue }
                if !peer.linkUp {
                    if now >= (peer.lastConnectAt ?? 0) &+ settings.redialIntervalMillis {
                        state[node]?.lastConnectAt = now
                        out.append(.connect(node))
                    }
                } else if case .notReady(let at) = peer.answer, !peer.awaitingAnswer, !peer.receiving,
                          now >= at &+ settings.reaskNotReadyMillis, node == starter || now >= started &+ join.timeoutMillis {
                    // The starter is generating the keys, or (past the timeout, still waiting)
                    // one that was starting may be ready now: ask again.
                    state[node]?.awaitingAnswer = true
                    out.append(.send(.syncRequest(durableDigests: join.durableDigests), to: node))
                }
            }
            evaluateJoin(into: &out)
        case .finishing:
            break
        case .ready:
            guard now >= nextAntiEntropyAt else { break }
            nextAntiEntropyAt = now &+ settings.antiEntropyIntervalMillis
            if let target = alivePeers.randomElement(using: &random) {
                out.append(.send(.digest(root: replica.rootDigest), to: target))
            }
        }
        return out
    }

    /// Sends the next chunk (or the closing `syncDone`) of every full-state answer whose
    /// connection is up and for which `canSend` agrees (the shell's write backpressure). Call
    /// once per loop turn while `streamingTo` is not empty.
    public mutating func pump(canSend: (NodeID) -> Bool = { _ in true }) -> [Directive] {
        var out: [Directive] = []
        for node in streamingTo where canSend(node) { pumpOne(node, into: &out) }
        return out
    }

    // MARK: - Configuration changes

    /// A node added to the configuration (reload). While the join is undecided it is dialled
    /// now and its answer counts like any other peer's; afterwards it is compared with once
    /// membership reports it alive. Adding a known node (or this node) changes nothing.
    public mutating func addPeer(_ node: NodeID, nowMillis: UInt64) -> [Directive] {
        now = max(now, nowMillis)
        guard !node.isEmpty, node != myself, state[node] == nil else { return [] }
        state[node] = Peer()
        peers.append(node)
        peers.sort()
        guard case .joining(let join) = phase, join.startedAt != nil, join.decision == nil else { return [] }
        state[node]?.lastConnectAt = now
        return [.connect(node)]
    }

    /// A node removed from the configuration (reload): its full-state answer, held request and
    /// join bookkeeping go, so it can never keep the join waiting; the join is evaluated again
    /// without it (with no peer left, this node is `alone`). Merges of what it sent before
    /// complete as usual. Directives are never addressed to it again.
    public mutating func removePeer(_ node: NodeID, nowMillis: UInt64) -> [Directive] {
        now = max(now, nowMillis)
        guard state.removeValue(forKey: node) != nil else { return [] }
        peers.removeAll { $0 == node }
        alivePeers.removeAll { $0 == node }
        streams[node] = nil
        var out: [Directive] = []
        if peers.isEmpty, case .joining(var join) = phase, join.startedAt != nil, join.decision == nil {
            join.decision = .alone
            join.waitingFor = Set(pending.keys)
            phase = .joining(join)
        }
        evaluateJoin(into: &out)
        return out
    }

    // MARK: - Internals

    /// `alivePeers` is the one record of who is alive (callers pass configured peers only).
    private mutating func setAlive(_ node: NodeID, _ alive: Bool) {
        let index = alivePeers.sortedInsertionIndex(of: node)
        let held = index < alivePeers.count && alivePeers[index] == node
        if alive && !held {
            alivePeers.insert(node, at: index)
        } else if !alive && held {
            alivePeers.remove(at: index)
        }
    }

    private mutating func requestState(from node: NodeID, into out: inout [Directive]) {
        guard case .joining(let join) = phase, join.startedAt != nil, join.decision == nil,
              let peer = state[node], peer.linkUp, !peer.requestedOnLink else { return }
        if case .ready? = peer.answer { return }
        state[node]?.requestedOnLink = true
        state[node]?.awaitingAnswer = true
        out.append(.send(.syncRequest(durableDigests: join.durableDigests), to: node))
    }

    /// `durableDigests`: what the requester said it holds from its database (nil: nothing, or a
    /// peer too old to say), so only the durable buckets that differ are sent.
    private mutating func startStream(to node: NodeID, holding durableDigests: [UInt64]?,
                                      replica: some ReplicaContent<Payload>, into out: inout [Directive]) {
        streams[node] = Stream(answer: replica.stateAnswer(peerDurableDigests: durableDigests))
        if state[node]?.linkUp == true { pumpOne(node, into: &out) }
    }

    private mutating func pumpOne(_ node: NodeID, into out: inout [Directive]) {
        guard streams[node] != nil else { return }
        if let chunk = streams[node]?.answer.nextChunk() {
            out.append(.send(.delta(chunk, purpose: .sync), to: node))
        } else {
            out.append(.send(.syncDone(ready: true), to: node))
            streams[node] = nil
        }
    }

    /// Decides the join when its rule is met, and finishes once the merges it waits for are done.
    private mutating func evaluateJoin(into out: inout [Directive]) {
        guard case .joining(var join) = phase, let started = join.startedAt else { return }
        if join.decision == nil {
            let notReady = peers.filter { if case .notReady? = state[$0]?.answer { return true } else { return false } }
            let unreachable = peers.filter { if case .unreachable? = state[$0]?.reach { return true } else { return false } }
            let candidate: JoinOutcome
            if notReady.count == peers.count {
                candidate = .clusterStarting
            } else if now >= started &+ join.timeoutMillis, Set(notReady).union(unreachable).count == peers.count {
                candidate = .timedOut
            } else {
                return
            }
            // Of the nodes starting together, only one generates keys; the others wait for its
            // state (re-asking it), so a cluster started at once gets one version of each key,
            // not one per node. Deterministic: every node picks the same starter.
            guard starter(among: notReady, unreachable: unreachable) == myself else { return }
            join.decision = candidate
            join.waitingFor = Set(pending.keys)
            phase = .joining(join)
        }
        guard let decision = join.decision, join.waitingFor.allSatisfy({ pending[$0] == nil }) else { return }
        finish(decision, into: &out)
    }

    /// The node that generates keys for a cluster starting together: the smallest name among
    /// this node and the peers that answered "starting too" and can still be reached.
    private func starter(among notReady: [NodeID], unreachable: [NodeID]) -> NodeID {
        let reachable = Set(notReady).subtracting(unreachable)
        return ([myself] + reachable).min() ?? myself
    }

    /// While joining: the starter this node waits for, if the join is held only by it.
    private var awaitedStarter: NodeID? {
        guard case .joining(let join) = phase, join.decision == nil else { return nil }
        let notReady = peers.filter { if case .notReady? = state[$0]?.answer { return true } else { return false } }
        guard !notReady.isEmpty else { return nil }
        let unreachable = peers.filter { if case .unreachable? = state[$0]?.reach { return true } else { return false } }
        let starter = starter(among: notReady, unreachable: unreachable)
        return starter == myself ? nil : starter
    }

    private mutating func finish(_ outcome: JoinOutcome, into out: inout [Directive]) {
        phase = .finishing(outcome)
        for node in peers {
            state[node]?.answer = nil
            state[node]?.receiving = false
            state[node]?.requestedOnLink = false
            state[node]?.awaitingAnswer = false
        }
        out.append(.joinFinished(outcome))
    }

    private func forwardTargets(excluding sender: NodeID, random: inout some RandomNumberGenerator) -> [NodeID] {
        var candidates = alivePeers.filter { $0 != sender }
        // Before membership confirms anyone (startup), use every configured peer.
        if candidates.isEmpty { candidates = peers.filter { $0 != sender } }
        let fanout = max(settings.minimumFanout, Int(Double(candidates.count + 1).squareRoot().rounded(.up)))
        guard candidates.count > fanout else { return candidates }
        candidates.shuffle(using: &random)
        return Array(candidates.prefix(fanout)).sorted()
    }

    /// A repair message must go out even when this side holds nothing in those buckets: the
    /// other side answers (or stops waiting) only on receiving one.
    private func nonEmptyChunks(_ chunks: [Payload]) -> [Payload] {
        chunks.isEmpty ? [.empty] : chunks
    }
}
