import Membership
import Replication
import ReplicatedStore
import TestSupport

/// A deterministic in-memory cluster running the real cores: per node a `SWIMInstance`, a
/// `ReplicationInstance<StoreDelta>`, a `ReplicatedStore` and a hybrid logical clock, plus a
/// "disk" of certificate records that survives restarts (RAM keys do not, as in the node).
///
/// The network models what the shell gives the cores: one connection per pair of nodes, opened
/// on demand, FIFO with a fixed latency. A lost message breaks its connection (TCP does not lose
/// messages inside a connection): that message and everything still in flight on it are gone
/// and both ends see `.down`. A connection attempt to a stopped node is refused, one across a
/// partition times out (both `.unreachable`); one to a node whose port is flooded completes TCP
/// but never the handshake (`.unresponsive`). Merges complete asynchronously after `applyMillis`,
/// like the node's persist-then-apply.
///
/// Each node has a config listing the nodes it knows (default: every other name), and follows
/// the shell's rules for it: it sends to and admits only those, its membership is limited to
/// them, and `configure` changes them on a running node as a reload does. A connection to a node
/// that does not list the dialler comes up and is closed at once (the hello is refused).
final class ReplicationSimulation {
    struct Settings {
        var stepMillis: UInt64 = 10
        var latencyMillis: UInt64 = 2
        var applyMillis: UInt64 = 15
        var connectTimeoutMillis: UInt64 = 2000
        var handshakeTimeoutMillis: UInt64 = 3000
        var joinTimeoutMillis: UInt64 = 1500
        /// Chance that a message breaks its connection.
        var breakProbability = 0.0
        var maxEntriesPerChunk = 4
        var graceMillis: UInt64 = 3_600_000
        var keys = [KeyRef(domain: "first.com", name: "token"), KeyRef(domain: "second.com", name: "token")]
        var swim = SWIMSettings()
        var replication = ReplicationSettings()
    }

    enum Payload {
        case swim(SWIMMessage)
        case replication(ReplicationMessage<StoreDelta>, stamp: HLCTimestamp)
    }

    struct Envelope {
        var from: String
        var fromInstance: UInt64
        var to: String
        var payload: Payload
        var due: UInt64
        var epoch: UInt64
    }

    struct PendingApply {
        var id: ApplyID
        var payload: StoreDelta
        var due: UInt64
    }

    struct Node {
        var name: String
        var up = true
        var instance: UInt64
        var store: ReplicatedStore
        var clock = HybridLogicalClock()
        var skewMillis: UInt64 = 0
        var swim: SWIMInstance
        var replication: ReplicationInstance<StoreDelta>
        var random: SplitMix64
        var ready = false
        var outcome: JoinOutcome?
        var applies: [PendingApply] = []
        /// Messages waiting for a connection, per destination.
        var queued: [String: [Payload]] = [:]
    }

    struct Pair: Hashable {
        let a: String, b: String
        init(_ x: String, _ y: String) { (a, b) = x < y ? (x, y) : (y, x) }
    }

    enum Link {
        case connecting(initiator: String, due: UInt64)
        case up(epoch: UInt64)
    }

    struct Minted: Equatable { var node: String; var instance: UInt64; var key: KeyRef; var id: VersionID }
    struct Joined { var node: String; var instance: UInt64; var outcome: JoinOutcome; var time: UInt64 }

    let settings: Settings
    let names: [String]
    private(set) var now: UInt64 = 1_000_000
    private(set) var nodes: [String: Node] = [:]
    /// Certificate records each node persisted; survives restarts.
    private(set) var disks: [String: [CertificateID: CertificateRecord]] = [:]
    private(set) var links: [Pair: Link] = [:]
    private(set) var cut: Set<Pair> = []
    /// Nodes whose peer port is flooded: new connections to them complete TCP but never the
    /// handshake. A property of the port, so it outlives restarts.
    private(set) var flooded: Set<String> = []
    private(set) var minted: [Minted] = []
    /// Each node's config: the other nodes it lists (absent: every other name).
    private(set) var configs: [String: Set<String>] = [:]
    /// Every status change each node's membership reported, in order (`instance` 0: a seed no
    /// process of which was ever heard of).
    private(set) var verdicts: [(time: UInt64, observer: String, member: String, instance: UInt64, status: MemberStatus)] = []
    /// Messages each node handed to the network per destination ("node1→node4"), sent or not.
    private(set) var sendAttempts: [String: Int] = [:]
    private(set) var refusedConnections = 0
    private(set) var joins: [Joined] = []
    private(set) var messages = 0
    /// Certificate records sent in state answers (`delta` with purpose `sync`).
    private(set) var certificatesStreamed = 0
    private(set) var brokenConnections = 0
    private var inFlight: [Envelope] = []
    private var network: SplitMix64
    private var nextEpoch: UInt64 = 1
    private var seed: UInt64

    init(nodes names: [String], seed: UInt64 = 1, settings: Settings = Settings()) {
        self.settings = settings
        self.names = names.sorted()
        self.seed = seed
        self.network = SplitMix64(seed: seed &* 7919)
    }

    // MARK: Control

    /// Starts (or restarts, as a new process) a node and begins its join.
    func start(_ name: String) {
        seed &+= 1
        let instance = max(now, (nodes[name]?.instance ?? 0) + 1)
        let peers = names.filter { lists(name, $0) }
        var store = ReplicatedStore(graceMillis: settings.graceMillis, bucketCount: 16)
        store.loadCertificates(Array((disks[name] ?? [:]).values))
        var node = Node(name: name, instance: instance, store: store,
                        swim: SWIMInstance(myself: name, address: name, instance: instance,
                                           seeds: peers.map { (node: $0, address: $0) }, settings: settings.swim, nowMillis: now),
                        replication: ReplicationInstance(myself: name, peers: peers, settings: settings.replication, nowMillis: now),
                        random: SplitMix64(seed: seed))
        node.skewMillis = nodes[name]?.skewMillis ?? 0
        node.swim.limitMembershipToKnownNodes()
        nodes[name] = node
        execute(nodes[name]!.replication.startJoin(timeoutMillis: settings.joinTimeoutMillis, nowMillis: now,
                                                        replica: content(nodes[name]!)), at: name)
    }

    func startAll() { for name in names { start(name) } }

    /// kill -9: the process and its connections are gone; its disk stays.
    func crash(_ name: String) {
        guard nodes[name]?.up == true else { return }
        nodes[name]?.up = false
        nodes[name]?.applies = []
        nodes[name]?.queued = [:]
        for pair in links.keys where pair.a == name || pair.b == name { breakLink(pair) }
    }

    /// The node's database is gone too (a replaced disk): its next start holds nothing.
    func loseDisk(_ name: String) { disks[name] = nil }

    func setUnresponsive(_ name: String, _ isFlooded: Bool) {
        if isFlooded { flooded.insert(name) } else { flooded.remove(name) }
    }

    func setSkew(_ name: String, millis: UInt64) { nodes[name]?.skewMillis = millis }

    /// Cuts every pair between different groups; connections across break.
    func partition(_ groups: [[String]]) {
        cut = []
        for (i, first) in groups.enumerated() {
            for second in groups[(i + 1)...] {
                for a in first { for b in second { cut.insert(Pair(a, b)) } }
            }
        }
        for pair in links.keys where cut.contains(pair) { breakLink(pair) }
    }

    func heal() { cut = [] }

    /// Whether `name`'s config lists `other`.
    func lists(_ name: String, _ other: String) -> Bool {
        name != other && (configs[name]?.contains(other) ?? names.contains(other))
    }

    /// Sets the nodes `name`'s config lists; on a running node, applies it like a reload
    /// (`ClusterShell.reconfigure`): removed nodes are dropped from both cores and their
    /// connections closed, added ones become seeds and replication peers.
    func configure(_ name: String, lists listed: [String]) {
        let before = Set(names.filter { lists(name, $0) })
        configs[name] = Set(listed).subtracting([name])
        guard nodes[name]?.up == true else { return }
        for gone in before.subtracting(listed).sorted() {
            let (_, nacks) = nodes[name]!.swim.remove(node: gone)
            execute(nacks, at: name)
            execute(nodes[name]!.replication.removePeer(gone, nowMillis: now), at: name)
            nodes[name]?.queued[gone] = nil
            breakLink(Pair(name, gone))
        }
        for added in Set(listed).subtracting(before).subtracting([name]).sorted() {
            nodes[name]!.swim.addSeed(node: added, address: added, nowMillis: now)
            execute(nodes[name]!.replication.addPeer(added, nowMillis: now), at: name)
        }
    }

    // MARK: Local operations (what the node's API does: change the store, then publish)

    @discardableResult
    func rotate(_ key: KeyRef, on name: String) -> VersionID? {
        guard var node = nodes[name], node.up, node.ready else { return nil }
        let id = VersionID(created: node.clock.now(wallMillis: wall(node)), origin: name)
        let version = node.store.rotate(key, id: id)
        nodes[name] = node
        localChange(StoreDelta(keyVersions: [key: [version]]), on: name)
        return id
    }

    /// Registers a certificate; returns its id once persisted (acknowledged), nil when refused.
    @discardableResult
    func register(user: String, name certificateName: String, fingerprint: UInt8, on name: String) -> CertificateID? {
        guard var node = nodes[name], node.up, node.ready else { return nil }
        let id = CertificateID(domain: "first.com", user: user, sha256: Array(repeating: fingerprint, count: 32))
        let content = CertificateContent(name: certificateName, der: [0x30, 0x03, 0x02, 0x01, fingerprint], notBeforeMillis: 0,
                                         notAfterMillis: 4_000_000_000_000, jids: ["\(user)@first.com"], noCertManagement: false,
                                         added: node.clock.now(wallMillis: wall(node)), origin: name)
        guard let record = node.store.appendCertificate(id, content) else { return nil }
        disks[name, default: [:]][id] = record
        nodes[name] = node
        localChange(StoreDelta(certificates: [record]), on: name)
        return id
    }

    @discardableResult
    func revoke(user: String, name certificateName: String, on name: String) -> CertificateID? {
        guard var node = nodes[name], node.up, node.ready else { return nil }
        let stamp = node.clock.now(wallMillis: wall(node))
        let records = node.store.removeCertificates(domain: "first.com", user: user, name: certificateName, kind: .revoked,
                                                    stamp: stamp, origin: name)
        guard let record = records.first else { return nil }
        for record in records { disks[name, default: [:]][record.id] = record }
        nodes[name] = node
        localChange(StoreDelta(certificates: records), on: name)
        return record.id
    }

    private func localChange(_ delta: StoreDelta, on name: String) {
        guard let node = nodes[name] else { return }
        execute(nodes[name]!.replication.localChange(delta, replica: content(node)), at: name)
    }

    // MARK: Views

    var running: [String] { names.filter { nodes[$0]?.up == true } }

    func primary(_ key: KeyRef, on name: String) -> VersionID? {
        guard let node = nodes[name], node.ready else { return nil }
        return node.store.versions(of: key, nowMillis: wall(node)).first?.version.id
    }

    func versions(_ key: KeyRef, on name: String) -> [VersionID] {
        guard let node = nodes[name] else { return [] }
        return node.store.versions(of: key, nowMillis: wall(node)).map(\.version.id)
    }

    func isLive(_ id: CertificateID, on name: String) -> Bool {
        nodes[name]?.store.liveCertificates(domain: id.domain, user: id.user).contains { $0.id == id } ?? false
    }

    func holds(_ id: CertificateID, on name: String) -> Bool {
        nodes[name]?.store.certificates(domain: id.domain, user: id.user).contains { $0.id == id } ?? false
    }

    /// Every running node is ready and holds the same replicated state.
    var converged: Bool {
        let up = running.compactMap { nodes[$0] }
        guard let first = up.first, up.allSatisfy(\.ready) else { return false }
        return up.allSatisfy { $0.store == first.store }
    }

    // MARK: Time

    /// Steps until `condition` holds; the elapsed simulated time, or nil once `millis` passed.
    @discardableResult
    func run(until condition: () -> Bool, within millis: UInt64) -> UInt64? {
        let start = now
        while !condition() {
            guard now - start <= millis else { return nil }
            step()
        }
        return now - start
    }

    func advance(by millis: UInt64) {
        if millis > 0 { run(until: { false }, within: millis - 1) }
    }

    func step() {
        now += settings.stepMillis
        completeConnections()
        deliver()
        for name in names {
            guard var node = nodes[name], node.up else { continue }
            let due = node.applies.filter { $0.due <= now }
            node.applies.removeAll { $0.due <= now }
            nodes[name] = node
            for apply in due { complete(apply, at: name) }
            guard nodes[name]?.up == true else { continue }
            execute(swimTick(name), at: name)
            var random = nodes[name]!.random
            let replica = content(nodes[name]!)
            execute(nodes[name]!.replication.tick(nowMillis: now, random: &random, replica: replica), at: name)
            nodes[name]!.random = random
            execute(nodes[name]!.replication.pump(), at: name)
        }
    }

    // MARK: The shell's part

    private func wall(_ node: Node) -> UInt64 { now + node.skewMillis }

    private func content(_ node: Node) -> StoreReplicaContent {
        StoreReplicaContent(store: node.store, maxEntriesPerChunk: settings.maxEntriesPerChunk)
    }

    private func swimTick(_ name: String) -> [SWIMDirective] {
        var random = nodes[name]!.random
        let directives = nodes[name]!.swim.tick(nowMillis: now, random: &random)
        nodes[name]!.random = random
        return directives
    }

    private func execute(_ directives: [ReplicationDirective<StoreDelta>], at name: String) {
        for directive in directives {
            guard nodes[name]?.up == true else { return }
            switch directive {
            case .send(let message, let to):
                let stamp = nodes[name]!.clock.now(wallMillis: wall(nodes[name]!))
                send(.replication(message, stamp: stamp), from: name, to: to)
            case .connect(let to):
                connect(name, to)
            case .apply(let payload, _, let id):
                nodes[name]!.applies.append(PendingApply(id: id, payload: payload, due: now + settings.applyMillis))
            case .joinFinished(let outcome):
                finishJoin(name, outcome)
            }
        }
    }

    private func execute(_ directives: [SWIMDirective], at name: String) {
        for directive in directives {
            guard nodes[name]?.up == true else { return }
            switch directive {
            case .send(let message, let to, _):
                send(.swim(message), from: name, to: to)
            case .statusChanged(let member, let previous):
                verdicts.append((now, name, member.node, member.instance, member.status))
                let replica = content(nodes[name]!)
                execute(nodes[name]!.replication.memberChanged(member, previous: previous, replica: replica), at: name)
            }
        }
    }

    /// The node generates the keys the cluster did not give it, serves, and publishes them.
    private func finishJoin(_ name: String, _ outcome: JoinOutcome) {
        var node = nodes[name]!
        node.outcome = outcome
        joins.append(Joined(node: name, instance: node.instance, outcome: outcome, time: now))
        var created = StoreDelta()
        for key in settings.keys where !node.store.hasVersions(key) {
            let id = VersionID(created: node.clock.now(wallMillis: wall(node)), origin: name)
            if let version = node.store.createInitialVersion(of: key, id: id) {
                created.keyVersions[key] = [version]
                minted.append(Minted(node: name, instance: node.instance, key: key, id: id))
            }
        }
        node.ready = true
        nodes[name] = node
        execute(nodes[name]!.replication.markReady(nowMillis: now, replica: content(nodes[name]!)), at: name)
        localChange(created, on: name)
    }

    /// Persist, then apply, then report what was new (the node's order).
    private func complete(_ apply: PendingApply, at name: String) {
        var node = nodes[name]!
        let outcome = node.store.merge(apply.payload, nowMillis: wall(node))
        for record in outcome.certificatesChanged { disks[name, default: [:]][record.id] = record }
        nodes[name] = node
        var random = nodes[name]!.random
        let replica = content(nodes[name]!)
        execute(nodes[name]!.replication.applied(apply.id, new: outcome.forwardable, nowMillis: now, random: &random, replica: replica), at: name)
        nodes[name]?.random = random
    }

    private func linkEvent(_ name: String, _ peer: String, _ event: LinkEvent) {
        guard nodes[name]?.up == true else { return }
        if event == .unreachable || event == .unresponsive {
            nodes[name]!.queued[peer] = nil
            execute(nodes[name]!.swim.connectionFailed(to: peer, nowMillis: now), at: name)
        }
        // Like the shell: what waited for the connection goes first, then the core hears of it.
        if event == .up, let waiting = nodes[name]?.queued.removeValue(forKey: peer) {
            for payload in waiting { send(payload, from: name, to: peer) }
        }
        execute(nodes[name]!.replication.linkChanged(peer, event, nowMillis: now), at: name)
    }

    // MARK: Network

    private func connect(_ from: String, _ to: String) {
        guard from != to, nodes[from]?.up == true, links[Pair(from, to)] == nil else { return }
        links[Pair(from, to)] = .connecting(initiator: from, due: now + 2 * settings.latencyMillis)
    }

    private func completeConnections() {
        for pair in links.keys.sorted(by: { ($0.a, $0.b) < ($1.a, $1.b) }) {
            guard case .connecting(let initiator, let due)? = links[pair], now >= due else { continue }
            let target = pair.a == initiator ? pair.b : pair.a
            let targetNode = nodes[target]
            if cut.contains(pair) {
                // SYNs vanish: the attempt times out.
                guard now >= due + settings.connectTimeoutMillis else { continue }
                links[pair] = nil
                linkEvent(initiator, target, .unreachable)
            } else if targetNode?.up != true {
                links[pair] = nil
                linkEvent(initiator, target, .unreachable)
            } else if !lists(target, initiator) {
                // TLS completes, then the target's shell refuses the hello and closes.
                links[pair] = nil
                refusedConnections += 1
                nodes[initiator]?.queued[target] = nil
                linkEvent(initiator, target, .up)
                linkEvent(initiator, target, .down)
                nodes[initiator]?.queued[target] = nil
            } else if flooded.contains(target) {
                guard now >= due + settings.handshakeTimeoutMillis else { continue }
                links[pair] = nil
                linkEvent(initiator, target, .unresponsive)
            } else {
                links[pair] = .up(epoch: nextEpoch)
                nextEpoch += 1
                linkEvent(initiator, target, .up)
                linkEvent(target, initiator, .up)
            }
        }
    }

    private func breakLink(_ pair: Pair) {
        guard let link = links.removeValue(forKey: pair) else { return }
        guard case .up(let epoch) = link else { return }
        brokenConnections += 1
        inFlight.removeAll { $0.epoch == epoch }
        linkEvent(pair.a, pair.b, .down)
        linkEvent(pair.b, pair.a, .down)
    }

    private func send(_ payload: Payload, from: String, to: String) {
        guard let sender = nodes[from], sender.up, names.contains(to), from != to else { return }
        sendAttempts["\(from)→\(to)", default: 0] += 1
        // The shell sends only to nodes its config lists.
        guard lists(from, to) else { return }
        guard case .up(let epoch)? = links[Pair(from, to)] else {
            nodes[from]!.queued[to, default: []].append(payload)
            connect(from, to)
            return
        }
        messages += 1
        if case .replication(.delta(let delta, .sync), _) = payload { certificatesStreamed += delta.certificates.count }
        if settings.breakProbability > 0, Double.random(in: 0..<1, using: &network) < settings.breakProbability {
            breakLink(Pair(from, to))
            return
        }
        inFlight.append(Envelope(from: from, fromInstance: sender.instance, to: to, payload: payload,
                                 due: now + settings.latencyMillis, epoch: epoch))
    }

    private func deliver() {
        while let index = inFlight.firstIndex(where: { $0.due <= now }) {
            let envelope = inFlight.remove(at: index)
            // A node removed meanwhile: the receiving shell takes nothing more from it.
            guard var node = nodes[envelope.to], node.up, lists(envelope.to, envelope.from) else { continue }
            switch envelope.payload {
            case .swim(let message):
                let directives = node.swim.receive(message, from: envelope.from, instance: envelope.fromInstance,
                                                   address: envelope.from, nowMillis: now)
                nodes[envelope.to] = node
                execute(directives, at: envelope.to)
            case .replication(let message, let stamp):
                guard (try? node.clock.observe(stamp, wallMillis: wall(node))) != nil else { continue }
                nodes[envelope.to] = node
                let replica = content(node)
                execute(nodes[envelope.to]!.replication.receive(message, from: envelope.from, nowMillis: now, replica: replica),
                        at: envelope.to)
            }
        }
    }
}
