import Membership
import PeerWire
import Replication
import ReplicatedStore

/// What a run measured and what it found wrong.
public struct SimulationReport: Sendable {
    public var nodes: Int
    public var convergeP99Millis: UInt64?
    public var convergeMaxMillis: UInt64?
    public var rotations: Int
    public var detectP99Millis: UInt64?
    public var detectMaxMillis: UInt64?
    public var crashesMeasured: Int
    public var bytesPerNodePerSecond: Int
    public var chaosBytesPerNodePerSecond: Int
    public var falseDeaths: Int
    public var lostWrites: Int
    public var resurrections: Int
    public var splitKeys: Int
    public var violations: [String]
    public var simulatedMillis: UInt64
    public var events: Int

    public var passed: Bool {
        falseDeaths == 0 && lostWrites == 0 && resurrections == 0 && splitKeys == 0 && violations.isEmpty
    }

    /// The line the issue asks for (more fields welcome, these first).
    public var summaryLine: String {
        func ms(_ v: UInt64?) -> String { v.map(String.init) ?? "none" }
        return "nodes=\(nodes) converge_p99_ms=\(ms(convergeP99Millis)) detect_p99_ms=\(ms(detectP99Millis)) "
            + "bytes_per_node_s=\(bytesPerNodePerSecond) false_deaths=\(falseDeaths) lost_writes=\(lostWrites) "
            + "resurrections=\(resurrections) split_keys=\(splitKeys) violations=\(violations.count) "
            + "rotations=\(rotations) converge_max_ms=\(ms(convergeMaxMillis)) crashes=\(crashesMeasured) "
            + "detect_max_ms=\(ms(detectMaxMillis)) chaos_bytes_per_node_s=\(chaosBytesPerNodePerSecond) "
            + "simulated_s=\(simulatedMillis / 1000) events=\(events)"
    }
}

/// N keystore nodes of the real protocol cores (`SWIMInstance`, `ReplicatedStore`, HLC) in one
/// process over a simulated network, in simulated time, driven by one seeded event queue.
///
/// Each node runs `SWIMInstance`, `ReplicationInstance<StoreDelta>` and `ReplicatedStore`; the
/// simulator is their shell. The network is what the shell gives the cores: one TCP connection
/// per pair, opened on demand (`.up` for both ends), FIFO per direction with per-link latency;
/// a lost message breaks its connection (TCP does not lose messages inside one): it and what is
/// in flight on it are gone and both ends see `.down`. A connection to a crashed process is
/// refused, one across a partition times out after 2 s (both `.unreachable`, and SWIM's
/// `connectionFailed`), one to a paused process completes when it wakes or is `.unresponsive`
/// after the 3 s handshake deadline. A partition resets the connections it cuts. Merges
/// complete after a persist delay, like the node's persist-then-apply.
public final class Simulator {
    public let config: SimulationConfig

    enum Phase: Int, Comparable {
        case join, steady, chaos, quiesce, done
        static func < (a: Phase, b: Phase) -> Bool { a.rawValue < b.rawValue }
    }

    enum Action {
        case start(Int)
        case tick(Int, generation: Int)
        case deliver(Envelope)
        case resume(Int, generation: Int)
        case applyDone(Int, generation: Int)
        case pump(Int, generation: Int)
        case connectDone(link: Int, connection: UInt64)
        case restart(Int)
        case heal(partition: Int)
        case fault
        case workload
        case check
    }

    private struct RotationTrack {
        var key: KeyRef
        var start: UInt64
        var pending: Set<Int>
        var done = false
    }

    private struct CrashTrack {
        var victim: Int
        var instance: UInt64
        var start: UInt64
        var pending: Set<Int>
        var valid = true
        var done = false
    }

    private var queue = EventQueue<Action>()
    private var nodes: [SimNode] = []
    private var indexByName: [String: Int] = [:]
    private var rng: SimRandom
    private(set) var now: UInt64 = 0
    private var phase = Phase.join
    private var phaseStart: UInt64 = 0
    private var events = 0
    private let epoch: UInt64 = 1_800_000_000_000
    private let sizer: WireSizer
    private let keys: [KeyRef]
    private let graceMillis: UInt64 = 24 * 3600 * 1000

    // Measurements
    private var bytesByPhase: [Phase: Int] = [:]
    private var steadyBytesByKind: [String: Int] = [:]
    private var joinBytesByKind: [String: Int] = [:]
    private var phaseDuration: [Phase: UInt64] = [:]
    private var rotationTracks: [VersionID: RotationTrack] = [:]
    private var convergeTimes: [UInt64] = []
    private var crashTracks: [CrashTrack] = []
    private var detectTimes: [UInt64] = []
    private var falseDeaths = 0
    private var violations: [String] = []
    /// Registrations acknowledged to a client, and removals acknowledged.
    private var acknowledged: [CertificateID] = []
    private var removed: Set<CertificateID> = []
    private var removable: [CertificateID] = []
    private var registrationCounter = 0
    private var lastLinkDelivery: [Int: UInt64] = [:]
    private enum Link {
        case connecting(initiator: Int, started: UInt64, connection: UInt64)
        case up(connection: UInt64)
    }
    private var links: [Int: Link] = [:]
    private var linked: [Set<Int>] = []
    private var nextConnection: UInt64 = 1
    private var pumping: Set<Int> = []
    private var brokenConnections = 0
    static let connectTimeoutMillis: UInt64 = 2_000
    static let handshakeTimeoutMillis: UInt64 = 3_000
    static let persistMillis: UInt64 = 5
    static let maxQueuedPerPeer = 256
    private var partitionActive = false
    private var partitionCounter = 0
    /// Deaths are not judged while a partition is up or shortly after (a partition makes
    /// deaths legitimate, and their rumours outlive it by a suspicion timeout or so).
    private var partitionQuietUntil: UInt64 = 0
    private var pausedUntil: [Int: UInt64] = [:]
    /// n0's state after it generated the keys (the warm start's "transfer").
    private var bootstrapState: ReplicatedStore?
    private var log: [String] = []

    public init(config: SimulationConfig) throws {
        self.config = config
        self.rng = SimRandom(seed: config.seed)
        self.sizer = try WireSizer(keyBytes: config.keyBytes)
        var keys: [KeyRef] = []
        for d in 0..<max(1, config.domains) {
            for k in 0..<max(1, config.keysPerDomain) { keys.append(KeyRef(domain: "d\(d).example", name: "key\(k)")) }
        }
        self.keys = keys
        self.linked = Array(repeating: [], count: config.nodes)
        for i in 0..<config.nodes {
            let node = SimNode(index: i, settings: config.swim, seed: config.seed &* 1_000_003 &+ UInt64(i) &+ 1,
                               graceMillis: graceMillis)
            node.skewMillis = Int64(rng.next() % (2 * config.maxClockSkewMillis + 1)) - Int64(config.maxClockSkewMillis)
            nodes.append(node)
            indexByName[node.name] = i
        }
    }

    // MARK: - Running

    public func run() -> SimulationReport {
        for i in nodes.indices {
                let at: UInt64 = i == 0 ? 0 : 1 + rng.next() % 2_000
            queue.push(.start(i), at: at)
        }
        queue.push(.check, at: 1_000)
        let hardStop = UInt64(config.joinSeconds + config.steadySeconds + config.chaosSeconds + config.quiesceSeconds + 5) * 1000
        while let (time, action) = queue.pop() {
            now = time
            if now > hardStop || phase == .done { break }
            events += 1
            if config.progress && events % 200_000 == 0 {
                let rumours = nodes.reduce(0) { $0 + $1.swim.pendingRumourCount }
                let joining = nodes.filter { $0.up && !$0.ready }.count
                progress("\(events) events, \(queue.count) queued, \(rumours) rumours pending, \(joining) joining, \(convergeTimes.count) rotations, \(detectTimes.count) crashes measured")
            }
            handle(action)
        }
        finish()
        return report()
    }

    private func progress(_ line: @autoclosure () -> String) {
        guard config.progress else { return }
        print("[t=\(now / 1000).\(now % 1000 / 100)s] \(line())")
    }

    private func enter(_ next: Phase) {
        phaseDuration[phase] = now - phaseStart
        phase = next
        phaseStart = now
        progress("phase \(next)")
        switch next {
        case .steady:
            scheduleWorkload()
        case .chaos:
            scheduleFault()
        case .quiesce:
            // Heal everything; crashed nodes come back.
            for node in nodes where node.side != 0 { node.side = 0 }
            partitionActive = false
            partitionQuietUntil = max(partitionQuietUntil, now + 15_000)
            for node in nodes where node.paused { resume(node.index) }
            for node in nodes where !node.up { queue.push(.restart(node.index), at: now + 1) }
        default:
            break
        }
    }

    private func handle(_ action: Action) {
        switch action {
        case .start(let i):
            start(i)
        case .restart(let i):
            if !nodes[i].up { start(i) }
        case .tick(let i, let generation):
            let node = nodes[i]
            guard node.up, node.generation == generation, !node.paused else { return }
            apply(node.swim.tick(nowMillis: node.monotonic(now), random: &node.rng), of: node)
            guard node.up, node.generation == generation else { return }
            execute(node.replication.tick(nowMillis: node.monotonic(now), random: &node.rng, replica: node.content), at: node)
            queue.push(.tick(i, generation: generation), at: now + config.tickMillis)
        case .deliver(let envelope):
            deliver(envelope)
        case .resume(let i, let generation):
            if nodes[i].generation == generation && nodes[i].paused { resume(i) }
        case .applyDone(let i, let generation):
            let node = nodes[i]
            guard node.up, node.generation == generation, !node.applies.isEmpty else { return }
            if node.paused {
                queue.push(.applyDone(i, generation: generation), at: (pausedUntil[i] ?? now) + Self.persistMillis)
                return
            }
            let done = node.applies.removeFirst()
            let outcome = merge(done.payload, into: node)
            execute(node.replication.applied(done.id, new: outcome.forwardable, nowMillis: node.monotonic(now),
                                             random: &node.rng, replica: node.content), at: node)
        case .pump(let i, let generation):
            let node = nodes[i]
            pumping.remove(i)
            guard node.up, node.generation == generation, !node.paused, !node.streams.isEmpty else { return }
            let out = node.replication.pump(canSend: { self.isLinkUp(node.index, self.indexByName[$0] ?? -1) })
            execute(out, at: node)
            // One chunk per loop turn while a stream can move; otherwise look again a bit later.
            if !node.streams.isEmpty { schedulePump(node, after: out.isEmpty ? 50 : 1) }
        case .connectDone(let link, let connection):
            connectDone(link, connection)
        case .heal(let partition):
            guard partitionActive, partition == partitionCounter else { return }
            for node in nodes { node.side = 0 }
            partitionActive = false
            partitionQuietUntil = now + 15_000
            progress("partition \(partition) healed")
        case .fault:
            guard phase == .chaos else { return }
            injectFault()
            scheduleFault()
        case .workload:
            guard phase == .steady || phase == .chaos else { return }
            performWorkload()
            scheduleWorkload()
        case .check:
            periodicCheck()
            queue.push(.check, at: now + 1_000)
        }
    }

    private func periodicCheck() {
        let elapsed = now - phaseStart
        switch phase {
        case .join:
            if elapsed >= UInt64(config.joinSeconds) * 1000 {
                violations.append("start-up did not converge within \(config.joinSeconds) s")
                enter(.steady)
            } else if now % 2_000 < 1_000, nodes.allSatisfy({ $0.ready && $0.swim.pendingRumourCount == 0 }),
                      membershipConverged() {
                // Steady state starts once the start-up rumours have been gossiped out.
                progress("joined: every node ready, sees every other alive, no rumour pending")
                enter(.steady)
            } else if config.progress && now % 5_000 < 1_000 {
                let pending = nodes.reduce(0) { $0 + $1.swim.pendingRumourCount }
                progress("joining: \(nodes.filter(\.ready).count) ready, \(pending) rumours pending, \(events) events")
            }
        case .steady:
            if elapsed >= UInt64(config.steadySeconds) * 1000 { enter(.chaos) }
        case .chaos:
            if elapsed >= UInt64(config.chaosSeconds) * 1000 { enter(.quiesce) }
        case .quiesce:
            let timeUp = elapsed >= UInt64(config.quiesceSeconds) * 1000
            if (elapsed >= 5_000 && now % 2_000 < 1_000 && nodes.allSatisfy({ $0.up && $0.ready })
                && storesConverged() && membershipConverged()) || timeUp {
                if timeUp { progress("quiescence not reached within \(config.quiesceSeconds) s") }
                enter(.done)
            }
        case .done:
            break
        }
    }

    // MARK: - Processes

    private func start(_ i: Int) {
        let node = nodes[i]
        // A crash not yet seen by everyone when the process is back cannot be measured any more;
        // after 10 s it should have been.
        for index in crashTracks.indices where crashTracks[index].victim == i && !crashTracks[index].done {
            if crashTracks[index].valid && now - crashTracks[index].start >= 10_000 {
                violations.append("crash of \(node.name) at t=\(crashTracks[index].start) ms not seen dead by \(crashTracks[index].pending.count) members within 10 s")
            }
            crashTracks[index].done = true
        }
        node.generation += 1
        node.up = true
        node.paused = false
        node.held = []
        node.ready = false
        node.applies = []
        node.queued = [:]
        node.streams = []
        node.hlc = HybridLogicalClock()
        // A process's instance is its start time in ms: strictly increasing per restart.
        node.instance = max(node.instance + 1, node.wall(now, epoch: epoch))
        let others = nodes.filter { $0.index != i }
        node.swim = SWIMInstance(myself: node.name, address: node.address, instance: node.instance,
                                 seeds: others.map { (node: $0.name, address: $0.address) },
                                 settings: config.swim, nowMillis: node.monotonic(now))
        node.store = ReplicatedStore(graceMillis: graceMillis, bucketCount: 1024)
        node.store.loadCertificates(node.database.values.sorted { $0.id < $1.id })
        node.cachedRoot = nil
        node.sawRemoval = Set(node.database.values.filter { $0.removal != nil }.map(\.id))
        node.replication = ReplicationInstance(myself: node.name, peers: others.map(\.name).sorted(),
                                               nowMillis: node.monotonic(now))
        let generation = node.generation
        queue.push(.tick(i, generation: generation), at: now + 1 + node.rng.next() % config.tickMillis)
        if generation == 1 && !config.coldStart {
            warmStart(node)
        } else {
            execute(node.replication.startJoin(timeoutMillis: config.joinTimeoutMillis, nowMillis: node.monotonic(now),
                                               replica: node.content), at: node)
        }
    }

    /// The initial formation, pre-seeded: the real join costs O(N) per input in the replication
    /// core, so N nodes starting together cost O(N³) to simulate (hours at 1,000 nodes). Instead
    /// n0 generates the keys as the starter of a cluster starting together, and every other node
    /// adopts n0's state as if its join had completed: the core is driven through exactly the
    /// inputs of that outcome (link up, `syncDone(ready)`, link down), minus the transfer. SWIM
    /// forms the membership for real. Restarts during the run go through the full join.
    private func warmStart(_ node: SimNode) {
        let mono = node.monotonic(now)
        _ = node.replication.startJoin(timeoutMillis: config.joinTimeoutMillis, nowMillis: mono, replica: node.content)
        if node.index == 0 {
            for peer in node.replication.peers {
                _ = node.replication.linkChanged(peer, .up, nowMillis: mono)
            }
            var decided: [ReplicationDirective<StoreDelta>] = []
            for peer in node.replication.peers {
                decided += node.replication.receive(.syncDone(ready: false), from: peer, nowMillis: mono, replica: node.content)
            }
            for peer in node.replication.peers { _ = node.replication.linkChanged(peer, .down, nowMillis: mono) }
            for case .joinFinished(let outcome) in decided { finishJoin(node, outcome) }
            bootstrapState = node.store
        } else {
            if let state = bootstrapState {
                node.store = state
                node.cachedRoot = nil
            }
            _ = node.replication.linkChanged("n0", .up, nowMillis: mono)
            let decided = node.replication.receive(.syncDone(ready: true), from: "n0", nowMillis: mono, replica: node.content)
            _ = node.replication.linkChanged("n0", .down, nowMillis: mono)
            for case .joinFinished(let outcome) in decided { finishJoin(node, outcome) }
        }
    }

    /// The node generates the keys the cluster did not give it, serves, and publishes them.
    private func finishJoin(_ node: SimNode, _ outcome: JoinOutcome) {
        var created = StoreDelta()
        for key in keys where !node.store.hasVersions(key) {
            let id = VersionID(created: node.hlc.now(wallMillis: node.wall(now, epoch: epoch)), origin: node.name)
            if let version = node.store.createInitialVersion(of: key, id: id) {
                created.keyVersions[key] = [version]
                node.cachedRoot = nil
            }
        }
        node.ready = true
        execute(node.replication.markReady(nowMillis: node.monotonic(now), replica: node.content), at: node)
        schedulePump(node)
        if !created.isEmpty { publish(created, from: node) }
    }

    private func crash(_ i: Int) {
        let node = nodes[i]
        guard node.up else { return }
        node.up = false
        node.paused = false
        node.held = []
        node.generation += 1
        node.applies = []
        node.queued = [:]
        pausedUntil[i] = nil
        progress("crash \(node.name) (instance \(node.instance))")
        // The kernel resets the process's connections: every peer sees them close.
        for peer in linked[i].sorted() { breakLink(i, peer) }
        disturb(i)
        // Who must notice: every running, reachable member that does not hold this process dead
        // already (a member cut off with it by a partition that healed a moment ago still holds
        // the partition's verdict; no new one is coming, and none is needed).
        let observers = Set(nodes.filter { observer in
            observer.up && !observer.paused && observer.side == node.side && observer.index != i
                && !(observer.swim.member(node.name).map { $0.status == .dead && $0.instance == node.instance } ?? false)
        }.map(\.index))
        crashTracks.append(CrashTrack(victim: i, instance: node.instance, start: now, pending: observers,
                                      valid: !partitionActive))
        let delay = UInt64.random(in: config.restartAfterMillis, using: &rng)
        queue.push(.restart(i), at: now + delay)
    }

    private func pause(_ i: Int, for millis: UInt64) {
        let node = nodes[i]
        guard node.up, !node.paused else { return }
        node.paused = true
        pausedUntil[i] = now + millis
        progress("pause \(node.name) for \(millis) ms")
        disturb(i)
        queue.push(.resume(i, generation: node.generation), at: now + millis)
    }

    private func resume(_ i: Int) {
        let node = nodes[i]
        node.paused = false
        let held = node.held
        node.held = []
        // The kernel kept the sockets' data: the process reads it all on waking, then ticks.
        for envelope in held { deliver(envelope) }
        queue.push(.tick(i, generation: node.generation), at: now)
        schedulePump(node)
    }

    /// A node that stops being reachable (paused, partitioned) no longer holds up a
    /// convergence or detection measurement: those measure the undisturbed members.
    private func disturb(_ i: Int) {
        for index in crashTracks.indices where crashTracks[index].pending.contains(i) {
            crashTracks[index].pending.remove(i)
            completeCrashTrackIfDone(index)
        }
        for id in rotationTracks.keys.sorted() where rotationTracks[id]?.pending.contains(i) == true {
            rotationTracks[id]?.pending.remove(i)
            completeRotationIfDone(id)
        }
    }

    // MARK: - Network

    private func root(_ node: SimNode) -> UInt64 { node.content.rootDigest }

    private func stamp(_ node: SimNode) -> HLCTimestamp { node.hlc.now(wallMillis: node.wall(now, epoch: epoch)) }

    private func linkLatency(_ a: Int, _ b: Int) -> UInt64 {
        let spread = config.maxLatencyMillis >= config.minLatencyMillis ? config.maxLatencyMillis - config.minLatencyMillis + 1 : 1
        var h = UInt64(min(a, b)) &* 0x9E37_79B9_7F4A_7C15 ^ UInt64(max(a, b)) &* 0xC2B2_AE3D_27D4_EB4F
        h ^= h >> 29
        return config.minLatencyMillis + h % spread
    }

    private func linkKey(_ a: Int, _ b: Int) -> Int { min(a, b) &* config.nodes &+ max(a, b) }

    private func isLinkUp(_ a: Int, _ b: Int) -> Bool {
        guard b >= 0, case .up? = links[linkKey(a, b)] else { return false }
        return true
    }

    private func send(_ message: SimMessage, from node: SimNode, to target: Int) {
        guard target != node.index, node.up else { return }
        guard case .up(let connection)? = links[linkKey(node.index, target)] else {
            if node.queued[target, default: []].count < Self.maxQueuedPerPeer { node.queued[target, default: []].append(message) }
            connect(node.index, target)
            return
        }
        let bytes = size(of: message)
        bytesByPhase[phase, default: 0] += bytes
        if phase == .steady { steadyBytesByKind[Self.kind(of: message), default: 0] += bytes }
        if phase == .join { joinBytesByKind[Self.kind(of: message), default: 0] += bytes }
        if config.lossRate > 0, Double.random(in: 0..<1, using: &rng) < config.lossRate {
            breakLink(node.index, target)
            return
        }
        var delay = linkLatency(node.index, target)
        if config.jitterMillis > 0 { delay += rng.next() % (config.jitterMillis + 1) }
        // TCP keeps each direction of a connection in order.
        let direction = node.index &* config.nodes &+ target
        let at = max(now + delay, lastLinkDelivery[direction] ?? 0)
        lastLinkDelivery[direction] = at
        var message = message
        if !config.suspicionOriginOnWire, case .swim(let swim) = message { message = .swim(Self.withoutOrigins(swim)) }
        queue.push(.deliver(Envelope(from: node.index, fromGeneration: node.generation, fromInstance: node.instance,
                                     to: target, message: message, connection: connection)), at: at)
    }

    private static func kind(of message: SimMessage) -> String {
        switch message {
        case .swim(let message):
            switch message {
            case .ping: return "swim_ping"
            case .pingRequest: return "swim_ping_request"
            case .ack(0, _, _): return "swim_gossip"
            case .ack: return "swim_ack"
            case .nack: return "swim_nack"
            }
        case .replication(let message, _):
            switch message {
            case .digest: return "digest"
            case .bucketDigests: return "bucket_digests"
            case .delta(_, .push): return "push"
            case .delta(_, .repair), .delta(_, .repairReply): return "repair"
            case .delta(_, .sync): return "sync"
            case .syncRequest, .syncDone: return "sync_control"
            }
        }
    }

    private func connect(_ from: Int, _ to: Int) {
        let key = linkKey(from, to)
        guard links[key] == nil, nodes[from].up else { return }
        let connection = nextConnection
        nextConnection += 1
        links[key] = .connecting(initiator: from, started: now, connection: connection)
        queue.push(.connectDone(link: key, connection: connection), at: now + 2 * linkLatency(from, to))
    }

    private func connectDone(_ key: Int, _ connection: UInt64) {
        guard case .connecting(let initiator, let started, connection)? = links[key] else { return }
        let target = key / config.nodes == initiator ? key % config.nodes : key / config.nodes
        let dialer = nodes[initiator], callee = nodes[target]
        guard dialer.up else { links[key] = nil; return }
        if dialer.side != callee.side {
            // SYNs vanish: the attempt times out.
            if now < started + Self.connectTimeoutMillis {
                queue.push(.connectDone(link: key, connection: connection), at: started + Self.connectTimeoutMillis)
                return
            }
            links[key] = nil
            linkEvent(dialer, target, .unreachable)
        } else if !callee.up {
            links[key] = nil
            linkEvent(dialer, target, .unreachable)
        } else if callee.paused {
            // The kernel accepts; the handshake waits for the process.
            let deadline = started + Self.handshakeTimeoutMillis
            if now < deadline {
                queue.push(.connectDone(link: key, connection: connection), at: min(deadline, max(now + 1, pausedUntil[target] ?? deadline)))
                return
            }
            links[key] = nil
            linkEvent(dialer, target, .unresponsive)
        } else {
            links[key] = .up(connection: connection)
            linked[initiator].insert(target)
            linked[target].insert(initiator)
            linkEvent(dialer, target, .up)
            linkEvent(callee, initiator, .up)
        }
    }

    private func breakLink(_ a: Int, _ b: Int) {
        let key = linkKey(a, b)
        guard case .up? = links.removeValue(forKey: key) else { return }
        brokenConnections += 1
        linked[a].remove(b)
        linked[b].remove(a)
        if nodes[a].up { linkEvent(nodes[a], b, .down) }
        if nodes[b].up { linkEvent(nodes[b], a, .down) }
    }

    private func linkEvent(_ node: SimNode, _ peer: Int, _ event: LinkEvent) {
        guard node.up else { return }
        let name = nodes[peer].name
        if event == .unreachable || event == .unresponsive {
            node.queued[peer] = nil
            apply(node.swim.connectionFailed(to: name, nowMillis: node.monotonic(now)), of: node)
        }
        // Like the shell: what waited for the connection goes first, then the core hears of it.
        if event == .up, let waiting = node.queued.removeValue(forKey: peer) {
            for message in waiting { send(message, from: node, to: peer) }
        }
        if event == .down && config.shellReportsClosedConnections { node.swim.connectionClosed(to: name) }
        execute(node.replication.linkChanged(name, event, nowMillis: node.monotonic(now)), at: node)
        if event == .up { schedulePump(node) }
    }

    /// Only nodes with a full-state answer in progress pump (`pump` scans every peer).
    private func schedulePump(_ node: SimNode, after delay: UInt64 = 1) {
        guard node.up, !node.streams.isEmpty, !pumping.contains(node.index) else { return }
        pumping.insert(node.index)
        queue.push(.pump(node.index, generation: node.generation), at: now + delay)
    }

    /// Today's wire format has no field for a suspicion's origin.
    private static func withoutOrigins(_ message: SWIMMessage) -> SWIMMessage {
        func strip(_ gossip: [GossipUpdate]) -> [GossipUpdate] {
            gossip.map { var g = $0; g.origin = ""; return g }
        }
        switch message {
        case .ping(let s, let g): return .ping(sequence: s, gossip: strip(g))
        case .pingRequest(let s, let t, let a, let g): return .pingRequest(sequence: s, target: t, targetAddress: a, gossip: strip(g))
        case .ack(let s, let t, let g): return .ack(sequence: s, target: t, gossip: strip(g))
        case .nack: return message
        }
    }

    private func size(of message: SimMessage) -> Int {
        switch message {
        case .swim(let swim):
            var bytes = sizer.size(.swim(swim))
            if config.suspicionOriginOnWire {
                bytes += swim.gossip.reduce(0) { $0 + ($1.origin.isEmpty ? 0 : 2 + $1.origin.utf8.count) }
            }
            return bytes
        case .replication(let message, let stamp):
            return sizer.size(message, stamp: stamp)
        }
    }

    private func deliver(_ envelope: Envelope) {
        let receiver = nodes[envelope.to]
        guard receiver.up, case .up(let connection)? = links[linkKey(envelope.from, envelope.to)],
              connection == envelope.connection else { return }
        if receiver.paused {
            receiver.held.append(envelope)
            return
        }
        let sender = nodes[envelope.from]
        switch envelope.message {
        case .swim(let message):
            let directives = receiver.swim.receive(message, from: sender.name, instance: envelope.fromInstance,
                                                   address: sender.address, nowMillis: receiver.monotonic(now))
            apply(directives, of: receiver)
        case .replication(let message, let stamp):
            do { _ = try receiver.hlc.observe(stamp, wallMillis: receiver.wall(now, epoch: epoch)) } catch { return }
            execute(receiver.replication.receive(message, from: sender.name, nowMillis: receiver.monotonic(now),
                                                 replica: receiver.content), at: receiver)
            if case .syncRequest = message {
                receiver.streams.insert(envelope.from)
                schedulePump(receiver)
            }
        }
    }

    private func execute(_ directives: [ReplicationDirective<StoreDelta>], at node: SimNode) {
        let generation = node.generation
        for directive in directives {
            guard node.up, node.generation == generation else { return }
            switch directive {
            case .send(let message, let to):
                guard let target = indexByName[to] else { continue }
                if case .syncDone = message { node.streams.remove(target) }
                send(.replication(message, stamp: stamp(node)), from: node, to: target)
            case .connect(let to):
                if let target = indexByName[to] { connect(node.index, target) }
            case .apply(let payload, let from, let id):
                node.applies.append((id: id, payload: payload, from: indexByName[from] ?? -1))
                queue.push(.applyDone(node.index, generation: generation), at: now + Self.persistMillis)
            case .joinFinished(let outcome):
                progressJoin(node, outcome)
                finishJoin(node, outcome)
            }
        }
    }

    private func progressJoin(_ node: SimNode, _ outcome: JoinOutcome) {
        if case .adopted = outcome { return }
        progress("\(node.name) finished its join: \(outcome)")
    }

    // MARK: - Membership directives and the false-death rule

    private func apply(_ directives: [SWIMDirective], of node: SimNode) {
        for directive in directives {
            switch directive {
            case .send(let message, let to, _):
                guard let target = indexByName[to] else { continue }
                send(.swim(message), from: node, to: target)
            case .statusChanged(let member, let previous):
                guard let subject = indexByName[member.node] else { continue }
                if member.status == .dead { judgeDeath(of: subject, member: member, previous: previous, seenBy: node) }
                execute(node.replication.memberChanged(member, previous: previous, replica: node.content), at: node)
            }
        }
    }

    private func judgeDeath(of subject: Int, member: Member, previous: MemberStatus?, seenBy observer: SimNode) {
        let instance = member.instance
        let target = nodes[subject]
        if target.up && target.instance == instance && !partitionActive && now >= partitionQuietUntil {
            falseDeaths += 1
            let paused = pausedUntil[subject].map { " (paused until t=\($0) ms)" } ?? ""
            if falseDeaths <= 5 {
                // What tells the mechanism apart: a verdict on an incarnation the target already
                // refuted means the refutation had not reached the observer.
                let heard = member.lastHeardMillis.map { "\(observer.monotonic(now) &- $0) ms before" } ?? "never"
                log.append("false death: \(observer.name) declared \(target.name) dead at t=\(now) ms while it ran\(paused); "
                    + "it held it \(previous.map(\.rawValue) ?? "unknown") at incarnation \(member.incarnation), the process was at "
                    + "\(target.swim.myself.incarnation); last heard from it directly: \(heard)")
            }
        }
        for index in crashTracks.indices where crashTracks[index].victim == subject && crashTracks[index].instance == instance
            && crashTracks[index].pending.contains(observer.index) {
            crashTracks[index].pending.remove(observer.index)
            completeCrashTrackIfDone(index)
        }
    }

    private func completeCrashTrackIfDone(_ index: Int) {
        guard !crashTracks[index].done, crashTracks[index].pending.isEmpty else { return }
        crashTracks[index].done = true
        if crashTracks[index].valid { detectTimes.append(now - crashTracks[index].start) }
    }

    // MARK: - Replication stand-in

    private func publish(_ delta: StoreDelta, from node: SimNode) {
        execute(node.replication.localChange(delta, replica: node.content), at: node)
    }

    @discardableResult
    private func merge(_ delta: StoreDelta, into node: SimNode) -> MergeOutcome {
        var primaries: [KeyRef: KeyVersion] = [:]
        for key in delta.keyVersions.keys { primaries[key] = node.store.versions(of: key, nowMillis: node.wall(now, epoch: epoch)).first?.version }
        let outcome = node.store.merge(delta, nowMillis: node.wall(now, epoch: epoch))
        node.cachedRoot = nil
        for record in outcome.certificatesChanged {
            node.database[record.id] = record
            if record.removal != nil {
                node.sawRemoval.insert(record.id)
            } else if node.sawRemoval.contains(record.id) {
                violations.append("resurrection at t=\(now): \(node.name) lost the removal of \(record.id)")
            }
        }
        for key in outcome.primaryChanged {
            let after = node.store.versions(of: key, nowMillis: node.wall(now, epoch: epoch)).first?.version
            if let before = primaries[key], let after, !KeyVersion.ranksBefore(after, before) {
                violations.append("primary of \(key) went backwards on \(node.name) at t=\(now): \(before.id) → \(after.id)")
            }
        }
        for (_, version) in outcome.added where rotationTracks[version.id] != nil {
            rotationTracks[version.id]?.pending.remove(node.index)
            completeRotationIfDone(version.id)
        }
        return outcome
    }

    private func completeRotationIfDone(_ id: VersionID) {
        guard let track = rotationTracks[id], !track.done, track.pending.isEmpty else { return }
        rotationTracks[id]?.done = true
        convergeTimes.append(now - track.start)
    }

    // MARK: - Workload

    private func scheduleWorkload() {
        let rate = config.rotationsPerSecond + config.registrationsPerSecond + config.revocationsPerSecond
        guard rate > 0 else { return }
        queue.push(.workload, at: now + rng.exponential(meanMillis: 1000 / rate))
    }

    private func performWorkload() {
        let candidates = nodes.filter { $0.up && $0.ready && !$0.paused }
        guard !candidates.isEmpty else { return }
        let node = candidates[Int(rng.next() % UInt64(candidates.count))]
        let total = config.rotationsPerSecond + config.registrationsPerSecond + config.revocationsPerSecond
        let pick = Double.random(in: 0..<total, using: &rng)
        if pick < config.rotationsPerSecond {
            rotate(on: node)
        } else if pick < config.rotationsPerSecond + config.registrationsPerSecond {
            register(on: node)
        } else {
            revoke(on: node)
        }
    }

    private func rotate(on node: SimNode) {
        let key = keys[Int(rng.next() % UInt64(keys.count))]
        let id = VersionID(created: stamp(node), origin: node.name)
        let version = node.store.rotate(key, id: id)
        node.cachedRoot = nil
        let targets = Set(nodes.filter { $0.up && $0.ready && !$0.paused && $0.side == node.side && $0.index != node.index }.map(\.index))
        rotationTracks[id] = RotationTrack(key: key, start: now, pending: targets)
        completeRotationIfDone(id)
        publish(StoreDelta(keyVersions: [key: [version]]), from: node)
    }

    private func register(on node: SimNode) {
        registrationCounter += 1
        let n = registrationCounter
        let domain = "d\(n % max(1, config.domains)).example"
        let user = "u\(n)@\(domain)"
        var sha = [UInt8](repeating: 0, count: 32)
        for i in sha.indices { sha[i] = UInt8(truncatingIfNeeded: rng.next()) }
        var der = [UInt8](repeating: 0x30, count: 600)
        for i in 0..<32 { der[i] = sha[i] }
        let content = CertificateContent(name: "device", der: der, notBeforeMillis: 0, notAfterMillis: 4_102_444_800_000,
                                         jids: [user], noCertManagement: false, added: stamp(node), origin: node.name)
        let id = CertificateID(domain: domain, user: user, sha256: sha)
        guard let record = node.store.appendCertificate(id, content) else { return }
        node.cachedRoot = nil
        // Persisted, then acknowledged, then published: the shell's order.
        node.database[id] = record
        acknowledged.append(id)
        removable.append(id)
        publish(StoreDelta(certificates: [record]), from: node)
    }

    private func revoke(on node: SimNode) {
        guard !removable.isEmpty else { return }
        let pick = Int(rng.next() % UInt64(removable.count))
        let id = removable[pick]
        let records = node.store.removeCertificates(domain: id.domain, user: id.user, name: "device", kind: .revoked,
                                                    stamp: stamp(node), origin: node.name)
        if !records.isEmpty { node.cachedRoot = nil }
        guard let record = records.first(where: { $0.id == id }) else { return }
        removable.remove(at: pick)
        node.database[id] = record
        node.sawRemoval.insert(id)
        removed.insert(id)
        publish(StoreDelta(certificates: [record]), from: node)
    }

    // MARK: - Faults

    private func scheduleFault() {
        let rate = config.crashesPerMinute + config.pausesPerMinute + config.partitionsPerMinute + config.skewJumpsPerMinute
        guard rate > 0 else { return }
        queue.push(.fault, at: now + rng.exponential(meanMillis: 60_000 / rate))
    }

    private func injectFault() {
        let total = config.crashesPerMinute + config.pausesPerMinute + config.partitionsPerMinute + config.skewJumpsPerMinute
        let pick = Double.random(in: 0..<total, using: &rng)
        let running = nodes.filter { $0.up && !$0.paused }
        guard running.count > 2 else { return }
        let victim = running[Int(rng.next() % UInt64(running.count))]
        if pick < config.crashesPerMinute {
            // Keep a majority running: the measurements need someone to observe.
            if running.count > nodes.count / 2 { crash(victim.index) }
        } else if pick < config.crashesPerMinute + config.pausesPerMinute {
            let shortest = min(200, config.maxPauseMillis)
            pause(victim.index, for: shortest + rng.next() % (config.maxPauseMillis - shortest + 1))
        } else if pick < config.crashesPerMinute + config.pausesPerMinute + config.partitionsPerMinute {
            guard !partitionActive else { return }
            partitionActive = true
            partitionCounter += 1
            let size = 1 + Int(rng.next() % UInt64(max(1, nodes.count / 10)))
            var members = nodes.map(\.index)
            members.shuffle(using: &rng)
            for i in members.prefix(size) {
                nodes[i].side = partitionCounter
                disturb(i)
            }
            // The cut connections reset; new ones across it time out.
            for i in members.prefix(size) {
                for peer in linked[i].sorted() where nodes[peer].side != nodes[i].side { breakLink(i, peer) }
            }
            for index in crashTracks.indices where !crashTracks[index].done { crashTracks[index].valid = false }
            let duration = 5_000 + rng.next() % 10_000
            progress("partition \(partitionCounter): \(size) nodes cut off for \(duration) ms")
            queue.push(.heal(partition: partitionCounter), at: now + duration)
        } else {
            let jump = Int64(rng.next() % 10_001) - 5_000
            victim.skewMillis += jump
            progress("clock of \(victim.name) jumps \(jump) ms")
        }
    }

    // MARK: - Judging

    private func membershipConverged() -> Bool {
        let running = nodes.filter { $0.up }
        for observer in running {
            for other in running where other.index != observer.index {
                guard let member = observer.swim.member(other.name), member.status == .alive,
                      member.instance == other.instance else { return false }
            }
        }
        return true
    }

    private func storesConverged() -> Bool {
        let running = nodes.filter { $0.up }
        guard let first = running.first.map(root) else { return true }
        return running.allSatisfy { root($0) == first }
    }

    private var splitKeys = 0
    private var lostWrites = 0
    private var resurrections = 0

    private func finish() {
        phaseDuration[phase] = now - phaseStart
        let running = nodes.filter { $0.up }
        for key in keys {
            let primaries = Set(running.map { $0.store.versions(of: key, nowMillis: $0.wall(now, epoch: epoch)).first?.version.id.description ?? "none" })
            if primaries.count != 1 || primaries.contains("none") { splitKeys += 1 }
        }
        for id in acknowledged {
            if running.contains(where: { node in !node.store.certificates(domain: id.domain, user: id.user).contains { $0.id == id && $0.content != nil } }) {
                lostWrites += 1
            }
        }
        for id in removed {
            if running.contains(where: { node in node.store.liveCertificates(domain: id.domain, user: id.user).contains { $0.id == id } }) {
                resurrections += 1
            }
        }
        if !membershipConverged() { violations.append("membership did not converge after quiescence") }
        if !storesConverged() { violations.append("replicas differ after quiescence") }
        for index in crashTracks.indices where crashTracks[index].valid && !crashTracks[index].done {
            let track = crashTracks[index]
            violations.append("crash of \(nodes[track.victim].name) at t=\(track.start) ms never seen dead by \(track.pending.count) members")
        }
        for (id, track) in rotationTracks where !track.done {
            violations.append("rotation \(id) of \(track.key) at t=\(track.start) ms never reached \(track.pending.count) members")
        }
    }

    public var findings: [String] { log + violations }

    /// Start-up bytes per node by message kind.
    public var joinTraffic: String {
        joinBytesByKind.keys.sorted().map { "\($0)=\((joinBytesByKind[$0] ?? 0) / max(1, nodes.count))" }.joined(separator: " ")
    }

    /// Steady-phase bytes per node per second by message kind.
    public var steadyTraffic: String {
        let seconds = max(1, Double(phaseDuration[.steady] ?? 1) / 1000)
        return steadyBytesByKind.keys.sorted().map {
            "\($0)=\(Int(Double(steadyBytesByKind[$0] ?? 0) / seconds / Double(max(1, nodes.count))))"
        }.joined(separator: " ")
    }

    private func report() -> SimulationReport {
        let steadyMillis = max(1, phaseDuration[.steady] ?? 1)
        let chaosMillis = max(1, phaseDuration[.chaos] ?? 1)
        let n = max(1, nodes.count)
        return SimulationReport(
            nodes: nodes.count,
            convergeP99Millis: percentile(convergeTimes, 99), convergeMaxMillis: convergeTimes.max(),
            rotations: convergeTimes.count,
            detectP99Millis: percentile(detectTimes, 99), detectMaxMillis: detectTimes.max(),
            crashesMeasured: detectTimes.count,
            bytesPerNodePerSecond: Int(UInt64(bytesByPhase[.steady] ?? 0) * 1000 / steadyMillis / UInt64(n)),
            chaosBytesPerNodePerSecond: Int(UInt64(bytesByPhase[.chaos] ?? 0) * 1000 / chaosMillis / UInt64(n)),
            falseDeaths: falseDeaths, lostWrites: lostWrites, resurrections: resurrections, splitKeys: splitKeys,
            violations: violations, simulatedMillis: now, events: events)
    }
}
