import KeystoreAPI
import KeystoreConfig
import Logging
import Membership
import NIOCore
import NIOPosix
import PeerTLS
import PeerWire
import ReplicatedStore
import SecretMemory
import Synchronization

/// How the startup join ended (DESIGN.md RAM keys 2).
enum JoinOutcome: Sendable, Equatable {
    /// A ready peer sent us the cluster's full state.
    case adopted(from: String)
    /// Every peer answered, none was ready: the cluster is starting together.
    case clusterStarting
    /// No ready peer within `join_timeout_ms`: bootstrap alone.
    case timedOut
    /// No other node configured.
    case alone
}

/// The NIO shell around the pure membership and store cores: peer TLS connections, framing,
/// the join, eager push, anti-entropy and SWIM timers.
///
/// Every mutable field is touched only on `loop` (entry points from other threads hop onto
/// it), which is what makes the `@unchecked Sendable` sound; `snapshot` is the one piece read
/// from other threads and sits behind a mutex.
final class ClusterShell: @unchecked Sendable {
    /// How long an inbound connection may take to finish TLS and send a valid hello.
    static let admissionTimeout: TimeAmount = .seconds(10)
    /// Inbound connections without a verified hello beyond this are closed at accept.
    static let maxUnadmitted = 64

    /// Inbound connections that have not been admitted yet (touched on `loop` only).
    private var unadmitted = 0

    /// An inbound connection left the unadmitted state (admitted, or closed before its hello).
    func leftUnadmitted() { unadmitted -= 1 }

    struct Settings {
        var antiEntropyInterval: TimeAmount = .milliseconds(1000)
        var tickInterval: TimeAmount = .milliseconds(100)
        var redialBackoffMillis: UInt64 = 500
        var maxQueuedFramesPerPeer = 256
        var swim = SWIMSettings()
    }

    private struct OutboundPeer {
        var channel: Channel?
        var connecting = false
        var queued: [ByteBuffer] = []
        var lastDialMillis: UInt64 = 0
    }

    let loop: EventLoop
    let replica: ClusterReplica
    let tls: PeerTLSContext
    let logger: Logger
    let settings: Settings
    let instance: UInt64
    let metrics: NodeMetrics
    private let me: NodeConfig
    private let peers: [String: NodeConfig]
    private var swim: SWIMInstance
    private var random = SystemRandomNumberGenerator()
    private var outbound: [String: OutboundPeer] = [:]
    private var identities: [String: PeerIdentity] = [:]
    /// Last anti-entropy verdict per peer: digests equal (in sync) or a repair in progress.
    private var syncState: [String: String] = [:]
    /// When we last asked a peer for a repair (bucket digests sent); cleared by its reply.
    private var repairRequested: [String: UInt64] = [:]
    static let repairCooldownMillis: UInt64 = 5000
    private var listener: Channel?
    private var timers: [RepeatedTask] = []
    private var join: (promise: EventLoopPromise<JoinOutcome>, notReadyAnswers: Set<String>)?
    private var joinDeadline: Scheduled<Void>?
    /// Once a ready peer is streaming its state, the join waits for its syncDone this long at
    /// most (a large registry takes longer than `join_timeout_ms` to transfer; becoming ready
    /// halfway would serve an incomplete registry).
    static let syncTransferTimeout: TimeAmount = .seconds(60)
    private var extendedFor: String?
    private let snapshot: Mutex<ClusterStatus>
    private var stopped = false

    init(config: ClusterConfig, replica: ClusterReplica, tls: PeerTLSContext, loop: EventLoop, logger: Logger, metrics: NodeMetrics,
         settings: Settings = Settings()) {
        self.metrics = metrics
        self.replica = replica
        self.tls = tls
        self.loop = loop
        self.logger = logger
        self.settings = settings
        self.instance = wallClockMillis()
        self.me = config.me
        var peers = config.nodes
        peers[config.nodeName] = nil
        self.peers = peers
        self.swim = SWIMInstance(myself: config.nodeName, address: me.peerAddress, instance: instance,
                                 seeds: peers.values.sorted { $0.name < $1.name }.map { (node: $0.name, address: $0.peerAddress) },
                                 settings: settings.swim, nowMillis: monotonicMillis())
        self.snapshot = Mutex(ClusterStatus(members: [], aliveNodes: []))
        refreshSnapshot()
    }

    // MARK: Lifecycle

    /// Binds the peer listener and starts the timers.
    func start() async throws {
        let bootstrap = ServerBootstrap(group: loop)
            .serverChannelOption(.backlog, value: 64)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { [unowned self] channel in
                if self.unadmitted >= ClusterShell.maxUnadmitted {
                    self.logger.warning("refusing peer connection from \(channel.remoteAddress?.description ?? "?"): \(self.unadmitted) connections are still completing their handshake")
                    return channel.close()
                }
                self.unadmitted += 1
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandlers([
                        PeerTLSHandler(context: self.tls, role: .server),
                        ByteToMessageHandler(PeerFrameDecoder(arena: self.replica.arena, metrics: self.metrics)),
                        PeerConnectionHandler(direction: .inbound, shell: self, logger: self.logger),
                    ])
                }
            }
        do {
            listener = try await bootstrap.bind(host: me.peerHost, port: me.peerPort).get()
        } catch {
            throw DaemonError.startup("cannot listen for peers on \(me.peerAddress): \(error); is another process using the port? (nodes.\(me.name).peer)")
        }
        logger.info("listening for peers on \(me.peerAddress)")
        try await loop.submit {
            self.timers.append(self.loop.scheduleRepeatedTask(initialDelay: self.settings.tickInterval, delay: self.settings.tickInterval) { _ in
                self.tick()
            })
            self.timers.append(self.loop.scheduleRepeatedTask(initialDelay: self.settings.antiEntropyInterval, delay: self.settings.antiEntropyInterval) { _ in
                self.antiEntropyRound()
            })
        }.get()
    }

    /// Asks every peer for its state and waits for the join decision.
    func joinCluster(timeoutMillis: Int) async -> JoinOutcome {
        if peers.isEmpty { return .alone }
        let future: EventLoopFuture<JoinOutcome> = loop.flatSubmit {
            let promise = self.loop.makePromise(of: JoinOutcome.self)
            self.join = (promise, [])
            for node in self.peers.keys.sorted() { self.send(.syncRequest(stamp: self.replica.stamp()), to: node) }
            self.joinDeadline = self.loop.scheduleTask(in: .milliseconds(Int64(timeoutMillis))) { self.finishJoin(.timedOut) }
            return promise.futureResult
        }
        return (try? await future.get()) ?? .timedOut
    }

    private func finishJoin(_ outcome: JoinOutcome) {
        guard let join else { return }
        self.join = nil
        joinDeadline?.cancel()
        joinDeadline = nil
        join.promise.succeed(outcome)
    }

    func shutdown() async {
        let channels: [Channel] = (try? await loop.submit { () -> [Channel] in
            self.stopped = true
            for timer in self.timers { timer.cancel() }
            self.timers.removeAll()
            self.finishJoin(.timedOut)
            let channels = self.outbound.values.compactMap(\.channel) + [self.listener].compactMap { $0 }
            self.outbound.removeAll()
            return channels
        }.get()) ?? []
        for channel in channels { try? await channel.close() }
    }

    // MARK: Status

    var status: ClusterStatus { snapshot.withLock { $0 } }

    private func refreshSnapshot() {
        var members = [ClusterStatus.Member(node: replica.nodeName, address: me.peerAddress, state: "alive",
                                            lastContactMillis: wallClockMillis(), version: keystoreVersion,
                                            sync: replica.isReady ? "ready" : "joining")]
        var alive: Set<String> = [replica.nodeName]
        let monoNow = monotonicMillis(), wallNow = wallClockMillis()
        var listed = Set<String>()
        for member in swim.members {
            listed.insert(member.node)
            let lastContact = member.lastHeardMillis.map { wallNow - min(wallNow, monoNow - min(monoNow, $0)) }
            members.append(ClusterStatus.Member(node: member.node, address: member.address, state: member.status.rawValue,
                                                lastContactMillis: lastContact, version: identities[member.node]?.softwareVersion,
                                                sync: syncState[member.node] ?? "unknown"))
            if member.status == .alive { alive.insert(member.node) }
        }
        for node in peers.keys where !listed.contains(node) {
            members.append(ClusterStatus.Member(node: node, address: peers[node]!.peerAddress, state: "joining", lastContactMillis: nil, version: nil))
        }
        members.sort { $0.node < $1.node }
        var counts: [String: Int] = ["alive": 0, "suspect": 0, "dead": 0, "joining": 0]
        for member in members { counts[member.state, default: 0] += 1 }
        for (state, count) in counts { metrics.gauge("keystore_members", [("state", state)], Double(count)) }
        snapshot.withLock { $0 = ClusterStatus(members: members, aliveNodes: alive) }
    }

    // MARK: Sending

    private func encode(_ message: PeerMessage) -> ByteBuffer {
        var buffer = ByteBufferAllocator().buffer(capacity: 256)
        PeerFrameCodec.encode(message, into: &buffer)
        return buffer
    }

    /// Sends over our own connection to `node`, dialing it when needed. Frames queued while a
    /// dial is in progress are bounded; beyond that they are dropped (SWIM and anti-entropy
    /// recover from loss).
    private func send(_ message: PeerMessage, to node: String) {
        loop.preconditionInEventLoop()
        guard !stopped, let config = peers[node] else { return }
        let frame = encode(message)
        metrics.gossip(direction: "out", type: message.kindLabel, bytes: frame.readableBytes)
        var peer = outbound[node] ?? OutboundPeer()
        if let channel = peer.channel {
            channel.writeAndFlush(frame, promise: nil)
            return
        }
        if peer.queued.count < settings.maxQueuedFramesPerPeer { peer.queued.append(frame) }
        let now = monotonicMillis()
        if !peer.connecting && now - peer.lastDialMillis >= settings.redialBackoffMillis {
            peer.connecting = true
            peer.lastDialMillis = now
            dial(config)
        }
        outbound[node] = peer
    }

    private func dial(_ config: NodeConfig) {
        let node = config.name
        let hello = PeerMessage.hello(PeerHello(cluster: replica.clusterName, node: replica.nodeName, instance: instance,
                                                address: me.peerAddress, softwareVersion: keystoreVersion, stamp: replica.stamp()))
        ClientBootstrap(group: loop)
            .connectTimeout(.seconds(2))
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { [unowned self] channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandlers([
                        PeerTLSHandler(context: self.tls, role: .client(expectedPeer: node)),
                        ByteToMessageHandler(PeerFrameDecoder(arena: self.replica.arena, metrics: self.metrics)),
                        PeerConnectionHandler(direction: .outbound(node: node), shell: self, logger: self.logger),
                    ])
                }
            }
            .connect(host: config.peerHost, port: config.peerPort)
            .whenComplete { result in
                var peer = self.outbound[node] ?? OutboundPeer()
                peer.connecting = false
                switch result {
                case .success(let channel):
                    if self.stopped { channel.close(promise: nil); return }
                    peer.channel = channel
                    // The TLS handler holds these until the handshake is done.
                    channel.write(self.encode(hello), promise: nil)
                    for frame in peer.queued { channel.write(frame, promise: nil) }
                    channel.flush()
                    peer.queued.removeAll()
                    channel.closeFuture.whenComplete { _ in
                        if self.outbound[node]?.channel === channel { self.outbound[node]?.channel = nil }
                    }
                case .failure(let error):
                    self.logger.debug("cannot reach peer \(node) at \(config.peerAddress): \(error)")
                    peer.queued.removeAll()
                    let directives = self.swim.connectionFailed(to: node, nowMillis: monotonicMillis())
                    self.apply(directives)
                }
                self.outbound[node] = peer
            }
    }

    /// Fan-out for eager push: enough random peers that the rumour reaches everyone in
    /// O(log N) hops; anti-entropy repairs whatever a rumour misses.
    private func pushTargets(excluding: String?, all: Bool = false) -> [String] {
        var candidates = swim.members.filter { $0.status == .alive && $0.node != excluding }.map(\.node)
        // Before membership confirms anyone (startup), use every configured peer.
        if candidates.isEmpty { candidates = peers.keys.filter { $0 != excluding } }
        let fanout = max(3, Int((Double(candidates.count + 1)).squareRoot().rounded(.up)))
        if all || candidates.count <= fanout { return candidates }
        candidates.shuffle(using: &random)
        return Array(candidates.prefix(fanout))
    }

    /// Pushes locally created entries (new keys, rotations, PSK fingerprints, registrations) to peers.
    func publish(_ wire: WireDelta) {
        guard !wire.isEmpty else { return }
        loop.execute {
            // The origin tells every alive member directly: local changes (rotations, new keys)
            // are rare, so N-1 frames are cheap, and no member then depends on a random rumour
            // reaching it (a miss waited for anti-entropy, up to ~1 s). Forwarding stays sqrt(N).
            self.push(wire, excluding: nil, toEveryone: true)
        }
    }

    private func push(_ wire: WireDelta, excluding: String?, toEveryone: Bool = false) {
        guard !wire.isEmpty else { return }
        let targets = pushTargets(excluding: excluding, all: toEveryone)
        let stamp = replica.stamp()
        for chunk in PeerFrameCodec.chunks(of: wire) {
            for node in targets { send(.delta(chunk, purpose: .push, stamp: stamp), to: node) }
        }
    }

    // MARK: Receiving

    /// Accepts a verified inbound connection's hello.
    func admit(_ hello: PeerHello) -> PeerIdentity? {
        loop.preconditionInEventLoop()
        guard hello.cluster == replica.clusterName else {
            logger.warning("peer \(hello.node) belongs to cluster '\(hello.cluster)', not '\(replica.clusterName)'; closing")
            return nil
        }
        guard peers[hello.node] != nil else {
            logger.warning("peer \(hello.node) is not in this node's config; closing (add it to \"nodes\" on every node)")
            return nil
        }
        do { try replica.observe(hello.stamp) } catch {
            logger.warning("peer \(hello.node): \(error); closing")
            return nil
        }
        let identity = PeerIdentity(node: hello.node, instance: hello.instance, address: hello.address, softwareVersion: hello.softwareVersion)
        if identities[hello.node]?.instance != hello.instance {
            logger.info("peer \(hello.node) connected (instance \(hello.instance), version \(hello.softwareVersion))")
        }
        identities[hello.node] = identity
        return identity
    }

    func receive(_ message: PeerMessage, from peer: PeerIdentity) {
        loop.preconditionInEventLoop()
        guard !stopped else { return }
        switch message {
        case .hello:
            logger.warning("peer \(peer.node) sent a second hello; ignored")
        case .swim(let swimMessage):
            let directives = swim.receive(swimMessage, from: peer.node, instance: peer.instance, address: peer.address, nowMillis: monotonicMillis())
            apply(directives)
        case .digest(let root, let stamp):
            guard observe(stamp, from: peer) else { return }
            if root == replica.rootDigest {
                syncState[peer.node] = "in_sync"
                return
            }
            // While joining, the full state is already on its way; a repair now would send it
            // all again. And one repair per peer at a time: a large one takes longer than a round.
            let now = monotonicMillis()
            guard replica.isReady, now - (repairRequested[peer.node] ?? 0) >= ClusterShell.repairCooldownMillis else { return }
            repairRequested[peer.node] = now
            syncState[peer.node] = "repairing"
            send(.bucketDigests(replica.bucketDigests, stamp: replica.stamp()), to: peer.node)
        case .bucketDigests(let theirs, let stamp):
            guard observe(stamp, from: peer) else { return }
            let differing = ReplicatedStore.differingBuckets(mine: replica.bucketDigests, theirs: theirs)
            guard !differing.isEmpty else { return }
            let wire = replica.wireDelta(forBuckets: differing)
            for chunk in PeerFrameCodec.chunks(of: wire) {
                send(.delta(chunk, purpose: .repair(buckets: differing), stamp: replica.stamp()), to: peer.node)
            }
        case .delta(let wire, let purpose, let stamp):
            guard observe(stamp, from: peer) else { return }
            if case .push = purpose {
                replica.applyRemote(wire, from: peer.node) { forwardable in
                    self.loop.execute { self.push(forwardable, excluding: peer.node) }
                }
            } else {
                replica.applyRemote(wire, from: peer.node) { _ in }
            }
            switch purpose {
            case .push:
                break
            case .repair(let buckets):
                let mine = replica.wireDelta(forBuckets: buckets)
                for chunk in PeerFrameCodec.chunks(of: mine) {
                    send(.delta(chunk, purpose: .repairReply, stamp: replica.stamp()), to: peer.node)
                }
            case .repairReply:
                syncState[peer.node] = "in_sync"
                repairRequested[peer.node] = nil
            case .sync:
                // A ready peer is streaming its state: wait for all of it, not just join_timeout.
                if join != nil && extendedFor == nil {
                    extendedFor = peer.node
                    joinDeadline?.cancel()
                    joinDeadline = loop.scheduleTask(in: ClusterShell.syncTransferTimeout) { self.finishJoin(.timedOut) }
                    logger.info("receiving the cluster state from \(peer.node); waiting for all of it")
                }
            }
        case .syncRequest(let stamp):
            guard observe(stamp, from: peer) else { return }
            let ready = replica.isReady
            let chunks = ready ? PeerFrameCodec.chunks(of: replica.fullWireDelta()) : []
            sendSync(chunks, from: 0, to: peer.node, ready: ready)
        case .syncDone(let stamp, let ready):
            guard observe(stamp, from: peer), var join else { return }
            if ready {
                logger.info("adopted the cluster state from \(peer.node)")
                finishJoin(.adopted(from: peer.node))
            } else {
                join.notReadyAnswers.insert(peer.node)
                self.join = join
                if join.notReadyAnswers.count == peers.count {
                    logger.info("every peer is starting too; generating keys now (concurrent versions merge deterministically)")
                    finishJoin(.clusterStarting)
                }
            }
        }
    }

    /// Sends a full-state answer one frame per loop turn, so encoding a large registry does not
    /// hold the loop (and SWIM's probes) for seconds; syncDone follows the last chunk.
    private func sendSync(_ chunks: [WireDelta], from index: Int, to node: String, ready: Bool) {
        guard !stopped else { return }
        guard index < chunks.count else {
            send(.syncDone(stamp: replica.stamp(), ready: ready), to: node)
            return
        }
        send(.delta(chunks[index], purpose: .sync, stamp: replica.stamp()), to: node)
        loop.scheduleTask(in: .milliseconds(1)) { self.sendSync(chunks, from: index + 1, to: node, ready: ready) }
    }

    private func observe(_ stamp: HLCTimestamp, from peer: PeerIdentity) -> Bool {
        do {
            try replica.observe(stamp)
            return true
        } catch {
            logger.warning("ignoring a message from \(peer.node): \(error)")
            return false
        }
    }

    // MARK: Timers

    private func tick() {
        guard !stopped else { return }
        let directives = swim.tick(nowMillis: monotonicMillis(), random: &random)
        apply(directives)
        refreshSnapshot()
    }

    private func apply(_ directives: [SWIMDirective]) {
        var changed = false
        for directive in directives {
            switch directive {
            case .send(let message, let node, _):
                send(.swim(message), to: node)
            case .statusChanged(let member, let previous):
                changed = true
                logger.notice("member \(member.node) is \(member.status.rawValue)\(previous.map { " (was \($0.rawValue))" } ?? "")")
                replica.memberChanged(member, previous: previous)
                if member.status == .alive {
                    // A member (re)appeared: compare state with it at once instead of waiting a round.
                    send(.digest(root: replica.rootDigest, stamp: replica.stamp()), to: member.node)
                } else if member.status == .dead, let channel = outbound[member.node]?.channel {
                    // After a partition the old TCP connection may sit in retransmission backoff for
                    // many seconds; a fresh dial gets through as soon as the network does. Only on
                    // `dead`: a member merely suspected (busy merging a large sync, say) keeps its
                    // connection and the transfer on it.
                    outbound[member.node]?.channel = nil
                    channel.close(promise: nil)
                }
            }
        }
        if changed { refreshSnapshot() }
    }

    private func antiEntropyRound() {
        guard !stopped, replica.isReady else { return }
        let alive = swim.members.filter { $0.status == .alive }.map(\.node)
        guard let target = alive.randomElement(using: &random) else { return }
        send(.digest(root: replica.rootDigest, stamp: replica.stamp()), to: target)
    }
}

extension PeerMessage {
    /// Low-cardinality label for metrics.
    var kindLabel: String {
        switch self {
        case .hello: return "hello"
        case .swim: return "swim"
        case .digest: return "digest"
        case .bucketDigests: return "bucket_digests"
        case .delta(_, let purpose, _):
            switch purpose {
            case .push: return "delta_push"
            case .repair: return "delta_repair"
            case .repairReply: return "delta_repair_reply"
            case .sync: return "delta_sync"
            }
        case .syncRequest: return "sync_request"
        case .syncDone: return "sync_done"
        }
    }
}
