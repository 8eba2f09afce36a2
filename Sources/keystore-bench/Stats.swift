import Foundation

/// Latency summary over one row. A sorted array is exact and, at a few hundred thousand samples
/// per row, cheaper than getting a bucketed histogram's edges right.
struct LatencySummary: Sendable {
    var count: Int
    var p50: Double
    var p90: Double
    var p99: Double
    var p999: Double
    var max: Double

    /// - Parameter nanos: unsorted samples in nanoseconds; reported in milliseconds.
    init(nanos: [UInt64]) {
        let sorted = nanos.sorted()
        count = sorted.count
        func at(_ q: Double) -> Double {
            guard !sorted.isEmpty else { return .nan }
            // Nearest rank: the smallest sample with at least q of all samples at or below it.
            let index = Swift.max(0, Swift.min(sorted.count - 1, Int((Double(sorted.count) * q).rounded(.up)) - 1))
            return Double(sorted[index]) / 1_000_000
        }
        p50 = at(0.50)
        p90 = at(0.90)
        p99 = at(0.99)
        p999 = at(0.999)
        max = sorted.last.map { Double($0) / 1_000_000 } ?? .nan
    }
}

func monotonicNanos() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

func fmt(_ value: Double, _ digits: Int = 2) -> String {
    value.isNaN ? "-" : String(format: "%.\(digits)f", value)
}

/// Parses "1,8,32,128".
func parseIntList(_ text: String, what: String) throws -> [Int] {
    let parts = text.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
    var out: [Int] = []
    for part in parts {
        guard let n = Int(part), n > 0 else { throw BenchError.badArgument("\(what): '\(part)' is not a positive integer; use a comma-separated list like 1,8,32") }
        out.append(n)
    }
    guard !out.isEmpty else { throw BenchError.badArgument("\(what) is empty; use a comma-separated list like 1,8,32") }
    return out
}

enum BenchError: Error, CustomStringConvertible {
    case badArgument(String)
    case notReady(String)
    case loadFailed(String)

    var description: String {
        switch self {
        case .badArgument(let m): return "bad argument: \(m)"
        case .notReady(let m): return "cluster not ready: \(m)"
        case .loadFailed(let m): return "load run failed: \(m)"
        }
    }
}
