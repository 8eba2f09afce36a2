import FoundationEssentials
import KeystoreAPI
import LocalAPI
import Logging
import NIOCore
import Synchronization

/// Fans events out to `/v1/events` streams, and keeps the most recent ones so a consumer that
/// reconnects with `?since=<cursor>` gets what it missed instead of silently losing it.
///
/// Each subscriber writes on its own connection's event loop; a consumer whose unsent backlog
/// passes `maxBacklogBytes` is sent a final `overflow` event and disconnected, so a stuck reader
/// costs bounded memory instead of growing the daemon without limit.
public final class EventHub: Sendable {
    let nodeName: String
    let maxBacklogBytes: Int
    let logger: Logger
    /// Names this process's cursor space: a cursor from before a restart cannot be replayed
    /// (the buffer is in memory), and the consumer is told so with `resync`.
    let instance: String
    /// How many recent events are kept for replay.
    let replayCapacity: Int

    private struct Published: Sendable {
        var seq: UInt64
        var domain: String?
        var line: ByteBuffer
    }

    private struct State: Sendable {
        var seq: UInt64 = 0
        var recent: [Published] = []
        var recentStart = 0
        var subscribers: [ObjectIdentifier: EventSubscription] = [:]
    }

    private let state = Mutex(State())

    public init(nodeName: String, maxBacklogBytes: Int = 1 << 20, replayCapacity: Int = 4096, logger: Logger) {
        self.nodeName = nodeName
        self.maxBacklogBytes = maxBacklogBytes
        self.replayCapacity = max(1, replayCapacity)
        self.logger = logger
        self.instance = String(UInt64.random(in: 1...UInt64.max), radix: 16)
    }

    var subscriberCount: Int { state.withLock { $0.subscribers.count } }

    private static let encoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.withoutEscapingSlashes]
        return encoder
    }()

    static func line(_ event: Event) -> ByteBuffer {
        var data = (try? encoder.encode(event)) ?? Data(#"{"type":"internal"}"#.utf8)
        data.append(0x0A)
        return ByteBuffer(bytes: data)
    }

    func cursor(_ seq: UInt64) -> String { "\(instance).\(seq)" }

    /// Stamps `event` (sequence, cursor, time, node) and delivers it to every subscriber that
    /// may see its domain. Membership events (no domain) go only to node-wide subscribers.
    public func publish(_ event: Event) {
        var event = event
        let targets: [EventSubscription] = state.withLock { state in
            state.seq += 1
            event.seq = Int(state.seq)
            event.cursor = cursor(state.seq)
            event.time = iso8601(millis: wallClockMillis())
            event.node = nodeName
            let published = Published(seq: state.seq, domain: event.domain, line: Self.line(event))
            if state.recent.count < replayCapacity {
                state.recent.append(published)
            } else {
                state.recent[state.recentStart] = published
                state.recentStart = (state.recentStart + 1) % replayCapacity
            }
            // Delivered under the lock so a subscriber registering concurrently sees each
            // event exactly once: either in its replay or live, never both, never neither.
            let line = published.line
            let targets = state.subscribers.values.filter { $0.wants(domain: event.domain) }
            for subscriber in targets { subscriber.deliver(line) }
            return targets
        }
        _ = targets
    }

    /// Why `?since=` cannot be honoured by a replay.
    enum CursorProblem: Error {
        case malformed
    }

    func subscribe(domains: Set<String>?, nodeWide: Bool, since: String?) throws(CursorProblem) -> EventSubscription {
        var resumeAfter: (instance: Substring, seq: UInt64)?
        if let since {
            let parts = since.split(separator: ".", maxSplits: 1)
            guard parts.count == 2, let seq = UInt64(parts[1]), !parts[0].isEmpty else { throw .malformed }
            resumeAfter = (parts[0], seq)
        }
        return EventSubscription(hub: self, domains: domains, nodeWide: nodeWide, resumeAfter: resumeAfter.map { ($0.instance == instance[...], $0.seq) })
    }

    /// Registers `subscription` and returns, atomically with that, what it must be sent first:
    /// the current cursor, and either the missed events or the reason they cannot be replayed.
    fileprivate func register(_ subscription: EventSubscription, resumeAfter: (sameProcess: Bool, seq: UInt64)?)
        -> (cursor: String, replay: [ByteBuffer], resync: String?) {
        state.withLock { state in
            state.subscribers[ObjectIdentifier(subscription)] = subscription
            let current = cursor(state.seq)
            guard let resumeAfter else { return (current, [], nil) }
            guard resumeAfter.sameProcess else {
                return (current, [], "the cursor is from an earlier run of this node (it restarted); events may have been missed")
            }
            guard resumeAfter.seq <= state.seq else {
                return (current, [], "the cursor is ahead of this node's events (it belongs to another node?)")
            }
            let ordered = state.recent[state.recentStart...] + state.recent[..<state.recentStart]
            let oldest = ordered.first?.seq ?? state.seq + 1
            guard resumeAfter.seq + 1 >= oldest else {
                return (current, [], "more than \(replayCapacity) events happened since the cursor; they are no longer kept")
            }
            let missed = ordered.filter { $0.seq > resumeAfter.seq && subscription.wants(domain: $0.domain) }.map(\.line)
            return (current, missed, nil)
        }
    }

    fileprivate func unregister(_ subscription: EventSubscription) {
        state.withLock { _ = $0.subscribers.removeValue(forKey: ObjectIdentifier(subscription)) }
    }
}

/// One `/v1/events` consumer.
final class EventSubscription: APIEventStream {
    private unowned let hub: EventHub
    /// nil = every domain.
    let domains: Set<String>?
    let nodeWide: Bool
    private let resumeAfter: (sameProcess: Bool, seq: UInt64)?
    private let sink = Mutex<APIStreamSink?>(nil)
    private let heartbeat = Mutex<RepeatedTask?>(nil)

    init(hub: EventHub, domains: Set<String>?, nodeWide: Bool, resumeAfter: (sameProcess: Bool, seq: UInt64)?) {
        self.hub = hub
        self.domains = domains
        self.nodeWide = nodeWide
        self.resumeAfter = resumeAfter
    }

    func wants(domain: String?) -> Bool {
        guard let domain else { return nodeWide }
        return domains?.contains(domain) ?? true
    }

    func start(sink: APIStreamSink) {
        self.sink.withLock { $0 = sink }
        let (cursor, replay, resync) = hub.register(self, resumeAfter: resumeAfter)
        var hello = Event(type: EventType.hello.rawValue)
        hello.node = hub.nodeName
        hello.time = iso8601(millis: wallClockMillis())
        hello.cursor = cursor
        sink.write(EventHub.line(hello))
        if let resync {
            var event = Event(type: EventType.resync.rawValue)
            event.reason = resync
            event.cursor = cursor
            sink.write(EventHub.line(event))
        }
        for line in replay { sink.write(line) }
        // Lets consumers (and the daemon, via failed writes) notice a dead connection.
        let task = sink.eventLoop.scheduleRepeatedTask(initialDelay: .seconds(30), delay: .seconds(30)) { [weak self] _ in
            var beat = Event(type: EventType.heartbeat.rawValue)
            beat.time = iso8601(millis: wallClockMillis())
            self?.deliver(EventHub.line(beat))
        }
        heartbeat.withLock { $0 = task }
    }

    func deliver(_ line: ByteBuffer) {
        guard let sink = sink.withLock({ $0 }) else { return }
        let limit = hub.maxBacklogBytes
        sink.eventLoop.execute { [self] in
            if sink.pendingBytes + line.readableBytes > limit {
                var last = Event(type: EventType.overflow.rawValue)
                last.message = "this consumer fell more than \(limit) bytes behind; reconnect with ?since=<last cursor>"
                hub.logger.warning("events consumer fell behind by more than \(limit) bytes; disconnecting it")
                sink.write(EventHub.line(last))
                sink.finish()
                cancel()
                return
            }
            sink.write(line)
        }
    }

    func cancel() {
        hub.unregister(self)
        sink.withLock { $0 = nil }
        heartbeat.withLock { $0?.cancel(); $0 = nil }
    }
}
