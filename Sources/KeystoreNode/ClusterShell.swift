import KeystoreAPI
import KeystoreConfig
import LocalAPI
import Logging
import Membership
import NIOCore
import NIOPosix
import PeerTLS
import PeerWire
import Replication
import ReplicatedStore
import SecretMemory
import ServiceLifecycle
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// How the startup join ended (DESIGN.md RAM keys 2); decided by the replication core.
typealias JoinOutcome = Replication.JoinOutcome

/// The NIO shell around the pure membership (`SWIMInstance`) and replication
/// (`ReplicationInstance`) cores: it owns peer TLS connections, framing and timers, feeds the
/// cores what happens and executes their directives. It decides nothing about the protocol.
///
/// Confinement is explicit: every mutable piece lives in `ClusterLoop`, which is reachable from
/// other threads only through a `NIOLoopBoundBox` (every access checks it runs on `loop`); the
/// status snapshot read by the API is the one piece shared across threads, behind a mutex.
final class ClusterShell: Sendable {
    struct Settings: Sendable {
        var tickInterval: TimeAmount = .milliseconds(100)
        var redialBackoffMillis: UInt64 = 500
        /// Frames waiting for a connection to a peer, per peer. Full-state answers never wait
        /// here (the replication core streams them only over a usable connection), so this holds
        /// control messages and pushes; beyond it frames are dropped and anti-entropy repairs.
        var maxQueuedBytesPerPeer = 8 << 20
        /// Size of the chunks state is sent in. `KEYSTORE_PEER_CHUNK_BYTES` lowers it for tests
        /// and diagnostics (many small frames exercise streaming without gigabytes of state);
        /// it is not a config field because nodes with different values interoperate.
        var chunkBytes = ClusterShell.chunkBytesFromEnvironment()
        var swim = SWIMSettings()
        var replication = ReplicationSettings()
    }

    let loop: EventLoop
    private let state: NIOLoopBoundBox<ClusterLoop>
    private let snapshot: StatusSnapshot

    init(config: ClusterConfig, replica: ClusterReplica, tls: PeerTLSContext, loop: EventLoop, logger: Logger, metrics: NodeMetrics,
         settings: Settings = Settings()) {
        self.loop = loop
        let snapshot = StatusSnapshot()
        self.snapshot = snapshot
        self.state = NIOLoopBoundBox.makeBoxSendingValue(
            ClusterLoop(config: config, replica: replica, tls: tls, loop: loop, logger: logger, metrics: metrics,
                        settings: settings, snapshot: snapshot),
            eventLoop: loop)
    }

    static func chunkBytesFromEnvironment() -> Int {
        guard let raw = getenv("KEYSTORE_PEER_CHUNK_BYTES").map({ String(cString: $0) }), let value = Int(raw) else {
            return PeerFrameCodec.deltaChunkBytes
        }
        return min(max(value, 4096), PeerFrameCodec.deltaChunkBytes)
    }

    /// Binds the peer listener and starts the timers.
    func start() async throws {
        let state = self.state
        let bound = try await loop.flatSubmit { state.value.bind() }.get()
        try await loop.submit { state.value.started(listener: bound) }.get()
    }

    /// Waits for the join decision (the replication core's rules). Returns nil when the process
    /// is asked to shut down first: then no key may be generated.
    func joinCluster(timeoutMillis: Int) async -> JoinOutcome? {
        let state = self.state
        let future = loop.flatSubmit { state.value.startJoin(timeoutMillis: UInt64(max(0, timeoutMillis))) }
        return await withGracefulShutdownHandler {
            (try? await future.get()) ?? nil
        } onGracefulShutdown: {
            state.eventLoop.execute { state.value.abandonJoin() }
        }
    }

    /// Pushes locally created entries (new keys, rotations, PSK fingerprints, registrations) to peers.
    func publish(_ wire: WireDelta) {
        guard !wire.isEmpty else { return }
        let state = self.state
        loop.execute { state.value.localChange(wire) }
    }

    /// Follows a reload's `nodes` (docs/config.md, "Membership is configured, not discovered"):
    /// added nodes become seeds (probed, dialled, admitted, replicated with); removed nodes are
    /// `left` (connections closed, never dialled, probed or admitted again, rumours about them
    /// ignored) until the next restart; another node's changed peer address is dialled anew.
    /// Applied on the cluster loop shortly after the call returns.
    func reconfigure(to config: ClusterConfig) {
        let state = self.state
        loop.execute { state.value.reconfigure(nodes: config.nodes, configFile: config.configFile) }
    }

    var status: ClusterStatus { snapshot.value }

    func shutdown() async {
        let state = self.state
        let channels = (try? await loop.submit { state.value.stop() }.get()) ?? []
        for channel in channels { try? await channel.close() }
    }
}

/// The status snapshot: written on the loop, read by API handlers on any thread.
final class StatusSnapshot: Sendable {
    private let mutex = Mutex(ClusterStatus(members: [], aliveNodes: []))
    var value: ClusterStatus {
        get { mutex.withLock { $0 } }
        set { mutex.withLock { $0 = newValue } }
    }
}

/// `ReplicaContent` for the replication core: the node's replica, chunked by the wire codec.
struct NodeReplicaContent: ReplicaContent {
    let replica: ClusterReplica
    let chunkBytes: Int
    var rootDigest: UInt64 { replica.rootDigest }
    var bucketDigests: [UInt64] { replica.bucketDigests }
    var sectionDigests: SectionDigests { replica.sectionDigests }
    func chunks(forBuckets buckets: [Int], sections: [BucketSections]) -> [WireDelta] {
        chunks(of: replica.wireDelta(forBuckets: buckets, sections: sections))
    }
    var durableBucketDigests: [UInt64] { replica.durableBucketDigests }
    func stateAnswer(peerDurableDigests: [UInt64]?) -> any StateAnswer<WireDelta> {
        replica.stateAnswer(peerDurableDigests: peerDurableDigests, chunkBytes: chunkBytes)
    }
    func chunks(of payload: WireDelta) -> [WireDelta] {
        payload.isEmpty ? [] : PeerFrameCodec.chunks(of: payload, limit: chunkBytes)
    }
}

/// Everything the cluster shell does, on its event loop only (see `ClusterShell`): connections,
/// the two cores, and the execution of their directives. Channel handlers and scheduled tasks
/// reach it on the same loop.
final class ClusterLoop {
    /// How long a connection may take from TCP connect to a completed TLS handshake and (inbound)
    /// a valid hello. Short: a genuine peer needs milliseconds, and every second a stranger holds
    /// a slot is a second a real peer may find them all taken.
    static let admissionTimeout: TimeAmount = .seconds(3)
    /// Unadmitted inbound connections per source address, and in total (see `AdmissionSlots`).
    static let maxUnadmittedPerSource = 16
    static let maxUnadmitted = 64

    /// One configured peer's connections.
    private struct PeerLinks {
        /// Our dial, once TCP connected (TLS may still be in progress).
        var outbound: Channel?
        var outboundUsable = false
        /// The dial in progress (its number): a dial that completes after the node's address
        /// changed or the node left is not this one and is closed.
        var dialing: UInt64?
        var lastDialMillis: UInt64 = 0
        /// The peer's admitted dial, when it takes our messages back on it (0.2 on).
        var inbound: Channel?
        /// Where messages to the peer go; kept until it closes, so that messages (a state
        /// stream and its `syncDone`) stay in order on one connection.
        var path: Channel?
        var queue: [ByteBuffer] = []
        var queuedBytes = 0
    }

    let loop: EventLoop
    let replica: ClusterReplica
    private let content: NodeReplicaContent
    private let tls: PeerTLSContext
    private let logger: Logger
    private let metrics: NodeMetrics
    private let settings: ClusterShell.Settings
    private let instance: UInt64
    private let me: NodeConfig
    /// The other nodes this node's config lists: the only ones it dials, admits and keeps
    /// membership of (a reload changes them, see `reconfigure`).
    private var peers: [String: NodeConfig]
    private var configFile: String
    /// Nodes removed from the config since the start, with what was last known of them,
    /// shown `left` until the process ends.
    private var left: [String: LeftMember] = [:]
    /// When a refused hello from a node was last logged as a warning (one a minute per node;
    /// a refused node redials twice a second).
    private var refusalLogged: [String: UInt64] = [:]
    private var nextDial: UInt64 = 1
    private let snapshot: StatusSnapshot
    private var swim: SWIMInstance
    private var replication: ReplicationInstance<WireDelta>
    private var random = SystemRandomNumberGenerator()
    private var links: [String: PeerLinks] = [:]
    private var identities: [String: PeerIdentity] = [:]
    /// A state request with durable digests for a peer whose hello has not said yet whether it
    /// decodes them (a restarting node dials before it knows anyone's version). It goes out when
    /// the hello arrives (a 0.2 peer answers our dial with one at once), or bare, asking for the
    /// full state, after `stateRequestHelloWaitMillis` (a 0.1 peer only says so when it dials us).
    private var stateRequestsAwaitingHello: [String: (message: PeerMessage, since: UInt64)] = [:]
    private static let stateRequestHelloWaitMillis: UInt64 = 1000
    /// Monotonic time of the last frame received from a node, on any connection.
    private var lastFrame: [String: UInt64] = [:]
    /// Monotonic time another member last relayed an ack for a node (an indirect probe confirmed it).
    private var lastRelayedAck: [String: UInt64] = [:]
    private var slots = AdmissionSlots<ObjectIdentifier>(perSource: ClusterLoop.maxUnadmittedPerSource, total: ClusterLoop.maxUnadmitted)
    private var unadmitted: [ObjectIdentifier: Channel] = [:]
    private var listener: Channel?
    private var timers: [RepeatedTask] = []
    private var joinPromise: EventLoopPromise<JoinOutcome?>?
    private var pumpScheduled = false
    private var stopped = false
    private var lastTick: UInt64?

    private struct LeftMember {
        var address: String
        var lastContactWallMillis: UInt64?
    }

    init(config: ClusterConfig, replica: ClusterReplica, tls: PeerTLSContext, loop: EventLoop, logger: Logger, metrics: NodeMetrics,
         settings: ClusterShell.Settings, snapshot: StatusSnapshot) {
        self.loop = loop
        self.replica = replica
        self.content = NodeReplicaContent(replica: replica, chunkBytes: settings.chunkBytes)
        self.tls = tls
        self.logger = logger
        self.metrics = metrics
        self.settings = settings
        self.snapshot = snapshot
        self.instance = wallClockMillis()
        self.me = config.me
        self.configFile = config.configFile
        var peers = config.nodes
        peers[config.nodeName] = nil
        self.peers = peers
        let now = monotonicMillis()
        self.swim = SWIMInstance(myself: config.nodeName, address: config.me.peerAddress, instance: instance,
                                 seeds: peers.values.sorted { $0.name < $1.name }.map { (node: $0.name, address: $0.peerAddress) },
                                 settings: settings.swim, nowMillis: now)
        swim.limitMembershipToKnownNodes()
        self.replication = ReplicationInstance(myself: config.nodeName, peers: Array(peers.keys), settings: settings.replication, nowMillis: now)
        refreshSnapshot()
    }

    private var bound: NIOLoopBound<ClusterLoop> { NIOLoopBound(self, eventLoop: loop) }

    // MARK: Lifecycle

    func bind() -> EventLoopFuture<Channel> {
        let me = self.me, bound = self.bound
        return ServerBootstrap(group: loop)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in
                bound.value.accepted(channel)
            }
            .bind(host: me.peerHost, port: me.peerPort)
            .flatMapErrorThrowing { error in
                throw DaemonError.startup("cannot listen for peers on \(me.peerAddress): \(socketErrorDescription(error)); is another process using the port? (nodes.\(me.name).peer)")
            }
    }

    func started(listener: Channel) {
        self.listener = listener
        logger.info("listening for peers on \(me.peerAddress)")
        let bound = self.bound
        timers.append(loop.scheduleRepeatedTask(initialDelay: settings.tickInterval, delay: settings.tickInterval) { _ in
            bound.value.tick()
        })
    }

    func startJoin(timeoutMillis: UInt64) -> EventLoopFuture<JoinOutcome?> {
        let promise = loop.makePromise(of: JoinOutcome?.self)
        joinPromise = promise
        execute(replication.startJoin(timeoutMillis: timeoutMillis, nowMillis: monotonicMillis(), replica: content))
        return promise.futureResult
    }

    func abandonJoin() {
        guard let promise = joinPromise else { return }
        joinPromise = nil
        logger.notice("shutting down before the join decision; no RAM key was generated")
        promise.succeed(nil)
    }

    func stop() -> [Channel] {
        stopped = true
        for timer in timers { timer.cancel() }
        timers.removeAll()
        abandonJoin()
        var channels = links.values.flatMap { [$0.outbound, $0.inbound].compactMap { $0 } } + Array(unadmitted.values)
        if let listener { channels.append(listener) }
        links.removeAll()
        unadmitted.removeAll()
        return channels
    }

    // MARK: Inbound connections

    /// Pipeline for an accepted connection, after claiming an admission slot.
    func accepted(_ channel: Channel) -> EventLoopFuture<Void> {
        let id = ObjectIdentifier(channel)
        let source = channel.remoteAddress?.ipAddress ?? "?"
        if let evicted = slots.arrive(id, from: source), let victim = unadmitted.removeValue(forKey: evicted) {
            logger.warning("closing an unadmitted peer connection from \(victim.remoteAddress?.description ?? "?") to make room: \(slots.pending(from: source)) from \(source) and \(slots.count) in all are still completing their handshake")
            victim.close(promise: nil)
        }
        unadmitted[id] = channel
        return channel.eventLoop.makeCompletedFuture {
            try channel.pipeline.syncOperations.addHandlers([
                PeerTLSHandler(context: tls, role: .server),
                ByteToMessageHandler(PeerFrameDecoder(arena: replica.arena, metrics: metrics)),
                PeerConnectionHandler(direction: .inbound, shell: self, logger: logger),
            ])
        }
    }

    /// Accepts a verified inbound connection's hello. A dialer that takes answers on its own
    /// connection gets our hello back, and the connection becomes a path for our messages.
    func admit(_ hello: PeerHello, on channel: Channel) -> PeerIdentity? {
        guard let identity = verify(hello) else { return nil }
        let id = ObjectIdentifier(channel)
        slots.leave(id)
        unadmitted[id] = nil
        if identity.features.answersOnDialedConnection {
            // Gated on the dialer's version: a 0.1.0 dialer closes a dialed connection on which
            // anything arrives, so it keeps getting our messages over our own dial (rolling
            // upgrades from 0.1.0 keep working).
            if let frame = encode(.hello(myHello())) { channel.writeAndFlush(frame, promise: nil) }
            links[hello.node, default: PeerLinks()].inbound = channel
            becameUsable(channel, for: hello.node)
        }
        return identity
    }

    func inboundClosed(_ channel: Channel, admitted: PeerIdentity?) {
        let id = ObjectIdentifier(channel)
        slots.leave(id)
        unadmitted[id] = nil
        guard let node = admitted?.node else { return }
        if links[node]?.inbound === channel { links[node]?.inbound = nil }
        // Also when a newer connection from the peer replaced it as `inbound`.
        lostPath(channel, for: node)
    }

    private func verify(_ hello: PeerHello) -> PeerIdentity? {
        guard hello.cluster == replica.clusterName else {
            logger.warning("peer \(hello.node) belongs to cluster '\(hello.cluster)', not '\(replica.clusterName)'; closing")
            return nil
        }
        guard peers[hello.node] != nil else {
            logRefusal(of: hello.node)
            return nil
        }
        do { try replica.observe(hello.stamp) } catch {
            logger.warning("peer \(hello.node): \(error); closing")
            return nil
        }
        let identity = PeerIdentity(node: hello.node, instance: hello.instance, address: hello.address, softwareVersion: hello.softwareVersion,
                                    features: PeerWireFeatures(peerSoftwareVersion: hello.softwareVersion))
        if identities[hello.node]?.instance != hello.instance {
            logger.info("peer \(hello.node) connected (instance \(hello.instance), version \(hello.softwareVersion))")
        }
        identities[hello.node] = identity
        if let held = stateRequestsAwaitingHello.removeValue(forKey: hello.node) { send(held.message, to: hello.node) }
        return identity
    }

    private func myHello() -> PeerHello {
        PeerHello(cluster: replica.clusterName, node: replica.nodeName, instance: instance, address: me.peerAddress,
                  softwareVersion: keystoreVersion, stamp: replica.stamp())
    }

    // MARK: Outbound connections

    private func dialIfNeeded(_ node: String, now: UInt64) {
        guard !stopped, let config = peers[node] else { return }
        var link = links[node] ?? PeerLinks()
        guard link.path == nil, link.outbound == nil, link.dialing == nil else { return }
        guard link.lastDialMillis == 0 || now >= link.lastDialMillis &+ settings.redialBackoffMillis else { return }
        let dial = nextDial
        nextDial += 1
        link.dialing = dial
        link.lastDialMillis = now
        links[node] = link
        let bound = self.bound
        ClientBootstrap(group: loop)
            .connectTimeout(.seconds(2))
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                let shell = bound.value
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandlers([
                        PeerTLSHandler(context: shell.tls, role: .client(expectedPeer: node)),
                        ByteToMessageHandler(PeerFrameDecoder(arena: shell.replica.arena, metrics: shell.metrics)),
                        PeerConnectionHandler(direction: .outbound(node: node), shell: shell, logger: shell.logger),
                    ])
                }
            }
            .connect(host: config.peerHost, port: config.peerPort)
            .whenComplete { result in
                bound.value.dialed(node, dial: dial, config: config, result: result)
            }
    }

    private func dialed(_ node: String, dial: UInt64, config: NodeConfig, result: Result<Channel, Error>) {
        guard links[node]?.dialing == dial else {
            // The node left or moved while we dialled its old address.
            if case .success(let channel) = result { channel.close(promise: nil) }
            return
        }
        links[node]?.dialing = nil
        switch result {
        case .success(let channel):
            guard !stopped else { channel.close(promise: nil); return }
            links[node]?.outbound = channel
            // The TLS handler holds it until the handshake is done.
            if let frame = encode(.hello(myHello())) { channel.writeAndFlush(frame, promise: nil) }
        case .failure(let error):
            // Refused, no route, connect timeout: no process of that peer can serve us now.
            logger.debug("cannot reach peer \(node) at \(config.peerAddress): \(error)")
            dropQueue(node)
            linkEvent(node, .unreachable)
            execute(swim.connectionFailed(to: node, nowMillis: monotonicMillis()))
        }
    }

    /// Our dial completed TLS: usable for our messages.
    func outboundReady(node: String, channel: Channel) {
        guard links[node]?.outbound === channel else { return }
        links[node]?.outboundUsable = true
        becameUsable(channel, for: node)
    }

    /// The peer answered our hello on our dial (it runs 0.2 or later).
    func answered(_ hello: PeerHello, on channel: Channel) -> PeerIdentity? {
        verify(hello)
    }

    func outboundClosed(node: String, channel: Channel, tlsDone: Bool, tlsFailure: PeerTLSError?, answered: Bool) {
        lostPath(channel, for: node)
        guard links[node]?.outbound === channel else { return }
        links[node]?.outbound = nil
        links[node]?.outboundUsable = false
        if !answered, let failure = tlsFailure, Self.isRefusal(failure) {
            // The peer's TLS took part and refused us (or we refused its certificate): that peer
            // cannot serve this node, however long it waits.
            dropQueue(node)
            linkEvent(node, .unreachable)
            execute(swim.connectionFailed(to: node, nowMillis: monotonicMillis()))
        } else if !tlsDone {
            // TCP was up but the handshake never finished: busy, paused, or a flooded port.
            dropQueue(node)
            linkEvent(node, .unresponsive)
            execute(swim.connectionFailed(to: node, nowMillis: monotonicMillis()))
        }
    }

    /// A TLS failure in which the peer took part (an alert, a certificate either side refused),
    /// as opposed to a connection that was dropped or never got an answer.
    static func isRefusal(_ failure: PeerTLSError) -> Bool {
        switch failure {
        case .peerCertificateRejected, .peerNameMismatch: return true
        case .handshakeFailed(let reason): return !reason.hasPrefix("connection closed")
        case .cannotLoad, .keyDoesNotMatchCertificate, .unsupportedOpenSSL, .uncleanShutdown, .protocolError: return false
        }
    }

    // MARK: Paths

    private func becameUsable(_ channel: Channel, for node: String) {
        guard links[node]?.path == nil else { return }
        links[node]?.path = channel
        let queued = links[node]?.queue ?? []
        links[node]?.queue = []
        links[node]?.queuedBytes = 0
        for frame in queued { channel.write(frame, promise: nil) }
        channel.flush()
        linkEvent(node, .up)
    }

    private func lostPath(_ channel: Channel, for node: String) {
        guard let link = links[node], link.path === channel else { return }
        links[node]?.path = nil
        // The core asks again on the next usable connection.
        stateRequestsAwaitingHello[node] = nil
        linkEvent(node, .down)
        // The peer's process may have exited: probe it now rather than at its turn.
        if !stopped { swim.connectionClosed(to: node) }
        if let other = link.inbound, other !== channel {
            becameUsable(other, for: node)
        } else if let other = link.outbound, other !== channel, link.outboundUsable {
            becameUsable(other, for: node)
        }
    }

    private func dropQueue(_ node: String) {
        links[node]?.queue = []
        links[node]?.queuedBytes = 0
    }

    private func linkEvent(_ node: String, _ event: LinkEvent) {
        execute(replication.linkChanged(node, event, nowMillis: monotonicMillis()))
    }

    // MARK: Sending

    /// `features`: what the receiving peer decodes; until its hello says, what 0.1.0 does
    /// (sending an older peer less is safe, anti-entropy fills in the rest later).
    /// nil (and a log line) for a message the codec refuses: a string longer than a frame allows
    /// is never cut short and sent, it is not sent at all.
    private func encode(_ message: PeerMessage, for features: PeerWireFeatures = .version0_1) -> ByteBuffer? {
        var buffer = ByteBufferAllocator().buffer(capacity: 256)
        do {
            try PeerFrameCodec.encode(message, into: &buffer, for: features)
        } catch {
            logger.error("not sending a \(message.kindLabel) message: \(error)")
            return nil
        }
        return buffer
    }

    /// Sends on the path to `node`, or queues (bounded in bytes) and dials.
    private func send(_ message: PeerMessage, to node: String, awaitingHello: Bool = true) {
        guard !stopped, peers[node] != nil else { return }
        if awaitingHello, identities[node] == nil, case .replication(.syncRequest(_?), _) = message {
            stateRequestsAwaitingHello[node] = (message, monotonicMillis())
            return
        }
        guard let frame = encode(message, for: identities[node]?.features ?? .version0_1) else { return }
        metrics.gossip(direction: "out", type: message.kindLabel, bytes: frame.readableBytes)
        var link = links[node] ?? PeerLinks()
        if let path = link.path {
            path.writeAndFlush(frame, promise: nil)
            return
        }
        if link.queuedBytes + frame.readableBytes <= settings.maxQueuedBytesPerPeer {
            link.queue.append(frame)
            link.queuedBytes += frame.readableBytes
        } else {
            logger.debug("dropping a \(message.kindLabel) frame for \(node): \(link.queuedBytes) bytes already wait for a connection")
        }
        links[node] = link
        dialIfNeeded(node, now: monotonicMillis())
    }

    // MARK: Receiving

    func receive(_ message: PeerMessage, from peer: PeerIdentity) {
        // A node removed by a reload: its connections are closing, what is still in them is not taken.
        guard !stopped, peers[peer.node] != nil else { return }
        let now = monotonicMillis()
        lastFrame[peer.node] = now
        switch message {
        case .hello:
            logger.warning("peer \(peer.node) sent a second hello; ignored")
        case .swim(let swimMessage):
            if case .ack(_, let target, _) = swimMessage, target != peer.node { lastRelayedAck[target] = now }
            execute(swim.receive(swimMessage, from: peer.node, instance: peer.instance, address: peer.address, nowMillis: now))
        case .replication(let message, let stamp):
            do { try replica.observe(stamp) } catch {
                logger.warning("ignoring a message from \(peer.node): \(error)")
                return
            }
            if case .syncRequest(let held) = message { logStateRequest(from: peer.node, holding: held) }
            execute(replication.receive(message, from: peer.node, nowMillis: now, replica: content))
        }
    }

    // MARK: Directives

    private func execute(_ directives: [ReplicationDirective<WireDelta>]) {
        for directive in directives {
            switch directive {
            case .send(let message, let node):
                switch message {
                case .syncRequest: logger.debug("asking \(node) for the cluster state")
                case .syncDone(let ready): logger.debug("sent \(ready ? "the whole state" : "\"not ready\"") to \(node)")
                default: break
                }
                send(.replication(message, stamp: replica.stamp()), to: node)
            case .connect(let node):
                dialIfNeeded(node, now: monotonicMillis())
            case .apply(let wire, let node, let id):
                let bound = self.bound
                let loop = self.loop
                replica.applyRemote(wire, from: node) { new in
                    loop.execute { bound.value.applied(id, new: new) }
                }
            case .joinFinished(let outcome):
                logJoin(outcome)
                joinPromise?.succeed(outcome)
                joinPromise = nil
            }
        }
        if !replication.streamingTo.isEmpty { schedulePump(nextTurn: true) }
    }

    private func execute(_ directives: [SWIMDirective]) {
        var changed = false
        for directive in directives {
            switch directive {
            case .send(let message, let node, _):
                send(.swim(message), to: node)
            case .statusChanged(let member, let previous):
                changed = true
                logger.notice("member \(member.node) is \(member.status.rawValue)\(previous.map { " (was \($0.rawValue))" } ?? "")")
                replica.memberChanged(member, previous: previous)
                execute(replication.memberChanged(member, previous: previous, replica: content))
                if member.status == .dead, let link = links[member.node] {
                    // After a partition an old TCP connection may sit in retransmission backoff for
                    // many seconds; a fresh dial gets through as soon as the network does. Only on
                    // `dead`: a member merely suspected (busy merging a large sync, say) keeps its
                    // connections and the transfer on them.
                    link.outbound?.close(promise: nil)
                    link.inbound?.close(promise: nil)
                }
            }
        }
        if changed { refreshSnapshot() }
    }

    private func applied(_ id: ApplyID, new: WireDelta) {
        guard !stopped else { return }
        execute(replication.applied(id, new: new, nowMillis: monotonicMillis(), random: &random, replica: content))
    }

    func localChange(_ wire: WireDelta) {
        guard !stopped else { return }
        execute(replication.localChange(wire, replica: content))
    }

    private func logJoin(_ outcome: JoinOutcome) {
        switch outcome {
        case .adopted(let peer): logger.info("adopted the cluster state from \(peer)")
        case .clusterStarting: logger.info("every peer is starting too; generating keys now (concurrent versions merge deterministically)")
        case .timedOut: logger.notice("no peer could be reached within join_timeout_ms; bootstrapping alone")
        case .alone: break
        }
    }

    /// Full-state answers go out one chunk per loop turn, and only while the connection has
    /// drained what it was given (`isWritable`), so a large registry neither holds the loop nor
    /// piles up in memory; a connection that is not writable is looked at again 1 ms later.
    private func schedulePump(nextTurn: Bool = false) {
        guard !pumpScheduled, !stopped else { return }
        pumpScheduled = true
        let bound = self.bound
        if nextTurn {
            loop.execute { bound.value.pump() }
        } else {
            loop.scheduleTask(in: .milliseconds(1)) { bound.value.pump() }
        }
    }

    private func pump() {
        guard !stopped else { return }
        let links = self.links
        let directives = replication.pump { links[$0]?.path?.isWritable ?? false }
        execute(directives) // still marked scheduled: the next pump is chosen below
        pumpScheduled = false
        if !replication.streamingTo.isEmpty { schedulePump(nextTurn: !directives.isEmpty) }
    }

    // MARK: Timers

    private func tick() {
        guard !stopped else { return }
        let now = monotonicMillis()
        if let last = lastTick, now - last > 1000 {
            // Peers will have suspected us meanwhile; worth knowing why (CPU starvation, a
            // blocking call on the loop, a paused process).
            logger.warning("the cluster loop ran no timer for \(now - last) ms")
        }
        lastTick = now
        for (node, held) in stateRequestsAwaitingHello where now >= held.since &+ Self.stateRequestHelloWaitMillis {
            stateRequestsAwaitingHello[node] = nil
            logger.info("\(node) has not said its version within \(Self.stateRequestHelloWaitMillis) ms; asking it for the full cluster state")
            send(held.message, to: node, awaitingHello: false)
        }
        execute(swim.tick(nowMillis: now, random: &random))
        // The node's becomeReady (keys generated) happens outside the shell; notice it here.
        if !replication.isReady && replica.isReady {
            execute(replication.markReady(nowMillis: now, replica: content))
        }
        execute(replication.tick(nowMillis: now, random: &random, replica: content))
        refreshSnapshot()
    }

    // MARK: Reconfiguration

    /// See `ClusterShell.reconfigure`. Idempotent: compares with the nodes in effect.
    func reconfigure(nodes: [String: NodeConfig], configFile: String) {
        guard !stopped else { return }
        self.configFile = configFile
        var wanted = nodes
        wanted[replica.nodeName] = nil
        let now = monotonicMillis()
        for node in peers.keys.sorted() where wanted[node] == nil {
            removePeer(node, now: now)
        }
        for (node, config) in wanted.sorted(by: { $0.key < $1.key }) {
            if let old = peers[node] {
                guard old.peerAddress != config.peerAddress else { continue }
                peers[node] = config
                logger.notice("peer \(node) moved from \(old.peerAddress) to \(config.peerAddress) in \(configFile); dialling the new address")
                // Our dial goes to the old address, and the peer's own connection came from
                // the process that was there: both are replaced.
                closeLinks(to: node)
                dialIfNeeded(node, now: now)
            } else {
                peers[node] = config
                left[node] = nil
                refusalLogged[node] = nil
                logger.notice("node \(node) (\(config.peerAddress)) was added to \(configFile); probing it and admitting its connections")
                swim.addSeed(node: node, address: config.peerAddress, nowMillis: now)
                execute(replication.addPeer(node, nowMillis: now))
            }
        }
        refreshSnapshot()
    }

    private func removePeer(_ node: String, now: UInt64) {
        guard let config = peers.removeValue(forKey: node) else { return }
        let contact = lastContact(of: node, member: swim.member(node))
        let (last, nacks) = swim.remove(node: node)
        execute(nacks)
        execute(replication.removePeer(node, nowMillis: now))
        closeLinks(to: node)
        links[node] = nil
        identities[node] = nil
        lastFrame[node] = nil
        lastRelayedAck[node] = nil
        let wallNow = wallClockMillis()
        left[node] = LeftMember(address: last?.address ?? config.peerAddress,
                                lastContactWallMillis: contact.map { wallNow - min(wallNow, now - min(now, $0)) })
        replica.memberLeft(node, address: last?.address ?? config.peerAddress, previous: last?.status)
        logger.notice("node \(node) was removed from \(configFile): shown as left; its connections are closed and it is no longer dialled, probed or admitted")
    }

    /// Closes every connection to `node` and forgets them (the replication core hears the
    /// usable one went down); what waited for a connection is dropped, anti-entropy repairs.
    private func closeLinks(to node: String) {
        guard let link = links[node] else { return }
        links[node] = PeerLinks()
        link.outbound?.close(promise: nil)
        link.inbound?.close(promise: nil)
        if link.path != nil { linkEvent(node, .down) }
    }

    private func logRefusal(of node: String) {
        let now = monotonicMillis()
        let reason = left[node] != nil
            ? "peer \(node) was removed from this node's config (\(configFile)); refusing its connection (it is shown as left)"
            : "peer \(node) is not listed in this node's config (\(configFile)); refusing its connection (add it to \"nodes\" on every node and reload)"
        if let last = refusalLogged[node], now < last &+ 60_000 {
            logger.debug("\(reason)")
        } else {
            refusalLogged[node] = now
            logger.warning("\(reason)")
        }
    }

    // MARK: Status

    /// Monotonic time of the newest evidence that `node`'s process runs (see `ClusterStatus.Member`).
    private func lastContact(of node: String, member: Member?) -> UInt64? {
        [member?.lastHeardMillis, lastFrame[node], lastRelayedAck[node], member?.lastChangeMillis].compactMap { $0 }.max()
    }

    private func refreshSnapshot() {
        let monoNow = monotonicMillis(), wallNow = wallClockMillis()
        func wall(_ mono: UInt64) -> UInt64 { wallNow - min(wallNow, monoNow - min(monoNow, mono)) }
        var members = [ClusterStatus.Member(node: replica.nodeName, address: me.peerAddress, state: "alive",
                                            lastContactMillis: wallNow, version: keystoreVersion,
                                            sync: replication.isReady ? .ready : .joining)]
        var alive: Set<String> = [replica.nodeName]
        var listed = Set<String>()
        for member in swim.members {
            listed.insert(member.node)
            let contact = lastContact(of: member.node, member: member)
            members.append(ClusterStatus.Member(node: member.node, address: member.address, state: member.status.rawValue,
                                                lastContactMillis: contact.map(wall), version: identities[member.node]?.softwareVersion,
                                                sync: syncState(with: member.node)))
            if member.status == .alive { alive.insert(member.node) }
        }
        for node in peers.keys where !listed.contains(node) {
            members.append(ClusterStatus.Member(node: node, address: peers[node]!.peerAddress, state: "joining",
                                                lastContactMillis: lastFrame[node].map(wall), version: identities[node]?.softwareVersion))
        }
        for (node, gone) in left {
            members.append(ClusterStatus.Member(node: node, address: gone.address, state: MemberState.left.rawValue,
                                                lastContactMillis: gone.lastContactWallMillis, version: nil))
        }
        members.sort { $0.node < $1.node }
        var counts: [String: Int] = ["alive": 0, "suspect": 0, "dead": 0, "joining": 0, "left": 0]
        for member in members { counts[member.state, default: 0] += 1 }
        for (state, count) in counts { metrics.gauge("keystore_members", [("state", state)], Double(count)) }
        snapshot.value = ClusterStatus(members: members, aliveNodes: alive, joinProblem: replication.joinProblem?.description)
    }
}

extension ClusterLoop {
    /// A node joining; rare, and what it costs this node depends on what it kept, so say it.
    fileprivate func logStateRequest(from node: String, holding durableDigests: [UInt64]?) {
        guard replication.isReady else {
            logger.debug("\(node) asks for the cluster state; this node has not finished its own join")
            return
        }
        guard let durableDigests else {
            logger.info("\(node) asks for the cluster state holding no registry records: sending all of it")
            return
        }
        let mine = content.durableBucketDigests
        let differing = ReplicatedStore.differingBuckets(mine: mine, theirs: durableDigests).count
        logger.info("\(node) asks for the cluster state holding registry records from its database: sending every RAM key and \(differing) of \(mine.count) registry buckets")
    }

    /// The replication core's view of a peer, in the API's vocabulary.
    private func syncState(with node: String) -> SyncState {
        switch replication.repairState(with: node) {
        case .inSync?: return .inSync
        case .repairing?: return .repairing
        case nil: return .unknown
        }
    }
}

extension PeerMessage {
    /// Low-cardinality label for metrics.
    var kindLabel: String {
        switch self {
        case .hello: return "hello"
        case .swim: return "swim"
        case .replication(let message, _):
            switch message {
            case .digest: return "digest"
            case .bucketDigests: return "bucket_digests"
            case .delta(_, let purpose):
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
}
