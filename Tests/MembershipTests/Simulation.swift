import Membership

/// SplitMix64: tiny, seedable, good enough to shuffle probe orders reproducibly.
struct SeededRNG: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE5_E4B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// A deterministic in-memory network of SWIM instances with a fake clock. Messages are delivered
/// with zero latency after each tick (replies included), unless a link is cut, the receiver is
/// stopped (dropped) or frozen (held, then delivered in a burst on thaw, like a SIGSTOPped
/// process's socket buffers). `lossRate` drops messages at random; a `starve`d node runs late
/// (its ticks and every message it receives are delayed by up to its lag, like a process that
/// gets the CPU only now and then); a `kill`ed node's port refuses connections, which the
/// sender learns through `connectionFailed` (a stopped one just stays silent, like a host that
/// vanished).
final class Simulation {
    struct Node {
        var name: String
        var address: String
        var instance: UInt64
        var swim: SWIMInstance
        var rng: SeededRNG
        var up = true
        var frozen = false
        var held: [Envelope] = []
        /// Connections to a stopped node are refused (killed process) rather than unanswered.
        var refuses = false
        /// Up to this much lag on every tick and received message (0: runs on time).
        var starvedMillis: UInt64 = 0
        var nextTickAt: UInt64 = 0
    }

    struct Envelope {
        var from: String
        var fromInstance: UInt64
        var fromAddress: String
        var to: String
        var toAddress: String
        var message: SWIMMessage
        var due: UInt64 = 0
        /// Set once the receiver's starvation lag has been applied.
        var lagged = false
    }

    struct Event {
        var time: UInt64
        var observer: String
        var member: Member
        var previous: MemberStatus?
    }

    struct Link: Hashable { var from: String; var to: String }

    let settings: SWIMSettings
    let tickMillis: UInt64
    /// One-way delay of every message; 0 delivers within the same tick (replies included).
    let latencyMillis: UInt64
    private(set) var now: UInt64 = 1_000_000
    private(set) var nodes: [String: Node] = [:]
    private(set) var events: [Event] = []
    private(set) var sent = 0
    var cut: Set<Link> = []
    /// Fraction of messages lost in transit (0 ... 1).
    var lossRate = 0.0
    private(set) var lost = 0
    private var lastDial: [Link: UInt64] = [:]
    private var queue: [Envelope] = []
    private var rngSeed: UInt64
    private var network: SeededRNG

    init(settings: SWIMSettings = SWIMSettings(), tickMillis: UInt64 = 50, latencyMillis: UInt64 = 0, seed: UInt64 = 42) {
        self.settings = settings
        self.tickMillis = tickMillis
        self.latencyMillis = latencyMillis
        self.rngSeed = seed
        self.network = SeededRNG(seed: seed ^ 0x5EED)
    }

    static func address(_ name: String) -> String { "addr-\(name)" }

    /// Starts (or restarts with a strictly higher instance) a node knowing only `seeds`.
    func start(_ name: String, seeds: [String]) {
        rngSeed &+= 1
        let instance = max(now, (nodes[name]?.instance ?? 0) + 1)
        let swim = SWIMInstance(myself: name, address: Self.address(name), instance: instance,
                                seeds: seeds.map { (node: $0, address: Self.address($0)) },
                                settings: settings, nowMillis: now)
        nodes[name] = Node(name: name, address: Self.address(name), instance: instance, swim: swim,
                           rng: SeededRNG(seed: rngSeed))
    }

    /// Starts `names` with every other name as a seed (the normal static configuration).
    func startCluster(_ names: [String]) {
        for name in names { start(name, seeds: names.filter { $0 != name }) }
    }

    func stop(_ name: String) { nodes[name]?.up = false }
    /// Like kill -9: the process is gone and its port refuses connections.
    func kill(_ name: String) {
        nodes[name]?.up = false
        nodes[name]?.refuses = true
    }
    /// The node gets the CPU only now and then: each of its ticks and received messages is
    /// delayed by a random 0 ... `maxLagMillis` (0 ends the starvation).
    func starve(_ name: String, maxLagMillis: UInt64) { nodes[name]?.starvedMillis = maxLagMillis }
    func freeze(_ name: String) { nodes[name]?.frozen = true }
    /// `deliverHeld: false` models messages that were lost while the node was unresponsive.
    func thaw(_ name: String, deliverHeld: Bool = true) {
        guard var node = nodes[name] else { return }
        node.frozen = false
        let held = node.held
        node.held = []
        nodes[name] = node
        if deliverHeld { queue += held }
        deliverAll()
    }
    /// Hands `message` to `name` as if `from` (a running node) had sent it, then runs the network.
    func inject(_ message: SWIMMessage, to name: String, from: String) {
        guard let sender = nodes[from] else { return }
        queue.append(Envelope(from: from, fromInstance: sender.instance, fromAddress: sender.address,
                              to: name, toAddress: Self.address(name), message: message))
        deliverAll()
    }

    func cutLink(_ a: String, _ b: String) { cut.insert(Link(from: a, to: b)); cut.insert(Link(from: b, to: a)) }

    func status(of target: String, seenBy observer: String) -> MemberStatus? {
        nodes[observer]?.swim.member(target)?.status
    }

    func member(_ target: String, seenBy observer: String) -> Member? {
        nodes[observer]?.swim.member(target)
    }

    /// True when every running node sees every other running node alive.
    var converged: Bool {
        let running = nodes.values.filter(\.up).map(\.name)
        return running.allSatisfy { observer in
            running.allSatisfy { $0 == observer || status(of: $0, seenBy: observer) == .alive }
        }
    }

    func advance(by millis: UInt64) {
        let end = now + millis
        while now < end { step() }
    }

    /// Steps until `condition` holds; returns the elapsed simulated time, or nil on timeout.
    @discardableResult
    func run(until condition: () -> Bool, within millis: UInt64) -> UInt64? {
        let start = now
        while now - start <= millis {
            if condition() { return now - start }
            step()
        }
        return condition() ? now - start : nil
    }

    func step() {
        now += tickMillis
        for name in nodes.keys.sorted() {
            guard var node = nodes[name], node.up, !node.frozen, now >= node.nextTickAt else { continue }
            if node.starvedMillis > 0 {
                node.nextTickAt = now + UInt64.random(in: 0...node.starvedMillis, using: &network)
            }
            let directives = node.swim.tick(nowMillis: now, random: &node.rng)
            nodes[name] = node
            handle(directives, of: name)
        }
        deliverAll()
    }

    private func handle(_ directives: [SWIMDirective], of name: String) {
        guard let node = nodes[name] else { return }
        for directive in directives {
            switch directive {
            case .send(let message, let to, let address):
                sent += 1
                queue.append(Envelope(from: name, fromInstance: node.instance, fromAddress: node.address,
                                      to: to, toAddress: address, message: message, due: now + latencyMillis))
            case .statusChanged(let member, let previous):
                events.append(Event(time: now, observer: name, member: member, previous: previous))
            }
        }
    }

    private func deliverAll() {
        var budget = 1_000_000
        while let index = queue.firstIndex(where: { $0.due <= now }), budget > 0 {
            budget -= 1
            let envelope = queue.remove(at: index)
            // Route by address as the shell does, then the TLS name check: wrong name, no delivery.
            if lossRate > 0, Double.random(in: 0..<1, using: &network) < lossRate {
                lost += 1
                continue
            }
            guard let name = nodes.values.first(where: { $0.address == envelope.toAddress })?.name,
                  name == envelope.to, var node = nodes[name], node.up,
                  !cut.contains(Link(from: envelope.from, to: name)) else {
                refuse(envelope)
                continue
            }
            if node.starvedMillis > 0 && !envelope.lagged {
                var late = envelope
                late.lagged = true
                late.due = now + UInt64.random(in: 0...node.starvedMillis, using: &network)
                queue.append(late)
                continue
            }
            if node.frozen {
                node.held.append(envelope)
                nodes[name] = node
                continue
            }
            let directives = node.swim.receive(envelope.message, from: envelope.from, instance: envelope.fromInstance,
                                               address: envelope.fromAddress, nowMillis: now)
            nodes[name] = node
            handle(directives, of: name)
        }
    }

    /// A killed node's port refuses the connection: the sender's shell reports it.
    /// Like the shell, which redials a peer at most every `redialBackoffMillis` (500 ms) and
    /// reports only the dials that fail.
    private func refuse(_ envelope: Envelope) {
        guard let target = nodes[envelope.to], !target.up, target.refuses,
              var sender = nodes[envelope.from], sender.up, !sender.frozen,
              sender.instance == envelope.fromInstance else { return }
        let link = Link(from: envelope.from, to: envelope.to)
        if let last = lastDial[link], now - last < 500 { return }
        lastDial[link] = now
        let directives = sender.swim.connectionFailed(to: envelope.to, nowMillis: now)
        nodes[envelope.from] = sender
        handle(directives, of: envelope.from)
    }
}
