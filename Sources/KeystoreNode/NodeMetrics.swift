import Metrics
import NIOHTTP1
import class Prometheus.PrometheusCollectorRegistry
import Synchronization

/// The node's Prometheus metrics, recorded through swift-metrics.
///
/// Metric handles are created once per label set and cached: making a `Metrics.Counter` goes through
/// the factory's registry lock, too slow for the per-request path.
public final class NodeMetrics: Sendable {
    public let registry: PrometheusCollectorRegistry?

    /// Per (route, status): the request counter and the route's duration timer, found with one
    /// lock and one lookup (no key string built per request: get-key profile).
    private struct RouteStatus: Hashable {
        var route: String
        var code: UInt
    }
    private let requestHandles = Mutex<[RouteStatus: (counter: Metrics.Counter, timer: Metrics.Timer)]>([:])
    private let gossipCounters = Mutex<[String: Metrics.Counter]>([:])
    private let gauges = Mutex<[String: Metrics.Gauge]>([:])
    fileprivate let counters = Mutex<[String: Metrics.Counter]>([:])

    /// - Parameter registry: the registry the process bootstrapped `MetricsSystem` with, for
    ///   `GET /metrics`; nil when metrics are not exported (tests).
    public init(registry: PrometheusCollectorRegistry?) {
        self.registry = registry
    }

    func request(route: String, status: HTTPResponseStatus, nanoseconds: UInt64) {
        let handles = requestHandles.withLock { cache in
            let key = RouteStatus(route: route, code: status.code)
            if let found = cache[key] { return found }
            // The timer is per route: the registry hands every status the same histogram.
            let made = (counter: Metrics.Counter(label: "keystore_requests_total", dimensions: [("route", route), ("code", String(status.code))]),
                        timer: Metrics.Timer(label: "keystore_request_duration_seconds", dimensions: [("route", route)], preferredDisplayUnit: .seconds))
            cache[key] = made
            return made
        }
        handles.counter.increment()
        handles.timer.recordNanoseconds(Int64(nanoseconds))
    }

    func gossip(direction: String, type: String, bytes: Int) {
        let (messages, volume) = gossipCounters.withLock { cache -> (Metrics.Counter, Metrics.Counter) in
            let key = direction + " " + type
            let m = cache[key] ?? Metrics.Counter(label: "keystore_gossip_messages_total", dimensions: [("direction", direction), ("type", type)])
            cache[key] = m
            let bytesKey = "bytes " + direction
            let b = cache[bytesKey] ?? Metrics.Counter(label: "keystore_gossip_bytes_total", dimensions: [("direction", direction)])
            cache[bytesKey] = b
            return (m, b)
        }
        messages.increment()
        volume.increment(by: Int64(bytes))
    }

    func gauge(_ label: String, _ dimensions: [(String, String)] = [], _ value: Double) {
        let gauge = gauges.withLock { cache in
            let key = label + dimensions.map { "\($0.0)=\($0.1)" }.joined(separator: ",")
            if let g = cache[key] { return g }
            let g = Metrics.Gauge(label: label, dimensions: dimensions)
            cache[key] = g
            return g
        }
        gauge.record(value)
    }

    func joinDuration(milliseconds: UInt64) {
        Metrics.Timer(label: "keystore_join_duration_seconds", preferredDisplayUnit: .seconds).recordMilliseconds(Int64(milliseconds))
    }

    /// Prometheus text exposition.
    func exposition() -> [UInt8] {
        registry?.emitToBuffer() ?? Array("# metrics are not enabled in this process\n".utf8)
    }
}

extension NodeMetrics {
    /// A counter by label set (cached like the others).
    func counter(_ label: String, _ dimensions: [(String, String)] = [], by amount: Int = 1) {
        let counter = counters.withLock { cache in
            let key = label + dimensions.map { "\($0.0)=\($0.1)" }.joined(separator: ",")
            if let c = cache[key] { return c }
            let c = Metrics.Counter(label: label, dimensions: dimensions)
            cache[key] = c
            return c
        }
        counter.increment(by: Int64(amount))
    }
}
