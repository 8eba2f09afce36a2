import LocalAPI
import Logging
import NIOCore
import Synchronization

/// Something an XMPP server on any node may need to react to: a revoked certificate (close the
/// streams that used it), a rotated key, a member that came or went.
public struct NodeEvent: Sendable {
    public enum Kind: String, Sendable {
        case keyRotated = "key_rotated"
        case certificateRevoked = "cert_revoked"
        case certificateDisabled = "cert_disabled"
        case member = "member"
    }
    public var kind: Kind
    /// nil for node-wide events (membership), visible only to callers allowed every domain.
    public var domain: String?
    /// Extra string fields, written in order.
    public var fields: [(String, String)]

    public init(kind: Kind, domain: String?, fields: [(String, String)]) {
        self.kind = kind
        self.domain = domain
        self.fields = fields
    }
}

/// Fans events out to `/v1/events` streams.
///
/// Each subscriber writes on its own connection's event loop; a consumer whose unsent backlog
/// passes `maxBacklogBytes` is sent a final `overflow` event and disconnected, so a stuck reader
/// costs bounded memory instead of growing the daemon without limit.
public final class EventHub: Sendable {
    let nodeName: String
    let maxBacklogBytes: Int
    let logger: Logger
    private let subscribers = Mutex<[ObjectIdentifier: EventSubscription]>([:])
    private let sequence = Atomic<UInt64>(0)

    public init(nodeName: String, maxBacklogBytes: Int = 1 << 20, logger: Logger) {
        self.nodeName = nodeName
        self.maxBacklogBytes = maxBacklogBytes
        self.logger = logger
    }

    var subscriberCount: Int { subscribers.withLock { $0.count } }

    public func publish(_ event: NodeEvent) {
        let seq = sequence.add(1, ordering: .relaxed).newValue
        var json = JSONWriter(allocator: ByteBufferAllocator(), capacity: 256)
        json.beginObject()
        json.key("type"); json.string(event.kind.rawValue)
        json.key("seq"); json.int(seq)
        json.key("time"); json.string(iso8601(millis: wallClockMillis()))
        json.key("node"); json.string(nodeName)
        if let domain = event.domain { json.key("domain"); json.string(domain) }
        for (name, value) in event.fields { json.key(name); json.string(value) }
        json.endObject()
        json.newline()
        let line = json.buffer
        let targets = subscribers.withLock { Array($0.values) }
        for subscriber in targets where subscriber.wants(event) {
            subscriber.deliver(line)
        }
    }

    func subscribe(domains: Set<String>?, nodeWide: Bool) -> EventSubscription {
        EventSubscription(hub: self, domains: domains, nodeWide: nodeWide)
    }

    fileprivate func register(_ subscription: EventSubscription) {
        subscribers.withLock { $0[ObjectIdentifier(subscription)] = subscription }
    }

    fileprivate func unregister(_ subscription: EventSubscription) {
        subscribers.withLock { $0[ObjectIdentifier(subscription)] = nil }
    }
}

/// One `/v1/events` consumer.
final class EventSubscription: APIEventStream {
    private unowned let hub: EventHub
    /// nil = every domain.
    let domains: Set<String>?
    let nodeWide: Bool
    private let sink = Mutex<APIStreamSink?>(nil)
    private let heartbeat = Mutex<RepeatedTask?>(nil)

    init(hub: EventHub, domains: Set<String>?, nodeWide: Bool) {
        self.hub = hub
        self.domains = domains
        self.nodeWide = nodeWide
    }

    func wants(_ event: NodeEvent) -> Bool {
        guard let domain = event.domain else { return nodeWide }
        return domains?.contains(domain) ?? true
    }

    func start(sink: APIStreamSink) {
        self.sink.withLock { $0 = sink }
        hub.register(self)
        var hello = JSONWriter(allocator: ByteBufferAllocator(), capacity: 96)
        hello.beginObject()
        hello.key("type"); hello.string("hello")
        hello.key("node"); hello.string(hub.nodeName)
        hello.key("time"); hello.string(iso8601(millis: wallClockMillis()))
        hello.endObject(); hello.newline()
        sink.write(hello.buffer)
        // Lets consumers (and the daemon, via failed writes) notice a dead connection.
        let task = sink.eventLoop.scheduleRepeatedTask(initialDelay: .seconds(30), delay: .seconds(30)) { [weak self] _ in
            var beat = JSONWriter(allocator: ByteBufferAllocator(), capacity: 64)
            beat.beginObject(); beat.key("type"); beat.string("heartbeat"); beat.key("time"); beat.string(iso8601(millis: wallClockMillis())); beat.endObject(); beat.newline()
            self?.deliver(beat.buffer)
        }
        heartbeat.withLock { $0 = task }
    }

    func deliver(_ line: ByteBuffer) {
        guard let sink = sink.withLock({ $0 }) else { return }
        let limit = hub.maxBacklogBytes
        sink.eventLoop.execute { [self] in
            if sink.pendingBytes + line.readableBytes > limit {
                var last = JSONWriter(allocator: ByteBufferAllocator(), capacity: 160)
                last.beginObject()
                last.key("type"); last.string("overflow")
                last.key("message"); last.string("this consumer fell more than \(limit) bytes behind; reconnect and re-read state")
                last.endObject(); last.newline()
                hub.logger.warning("events consumer fell behind by more than \(limit) bytes; disconnecting it")
                sink.write(last.buffer)
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
