import Foundation
import KeystoreClient
import TestSupport
import XCTest

#if canImport(Glibc)
import Glibc
#endif

// Helpers for the security tests: a hostile peer driven through `openssl s_client` and hand-built
// peer frames (expired and not-yet-valid certificates come from TestSupport.TestCertificateAuthority).

/// What one `openssl s_client` attack observed.
struct PeerAttackResult {
    /// s_client exited by itself: the node closed the connection (or refused the handshake).
    var closedByNode: Bool
    var exitStatus: Int32
    var output: String
    var seconds: Double
}

enum PeerAttack {
    /// Ignoring SIGPIPE lets a test keep writing into a pipe whose s_client the node already cut
    /// off; the default action would kill the whole test process.
    static let ignoreSIGPIPE: Void = { signal(SIGPIPE, SIG_IGN); return () }()

    /// Connects to `port` with `openssl s_client`, sends `payload` after the handshake and waits
    /// until the node closes the connection or `timeout` passes (then the client is killed and
    /// `closedByNode` is false). `-quiet` implies `-ign_eof`: s_client keeps the connection open
    /// after its input ends, so only the node can end it quickly.
    static func run(port: Int, certificate: String?, key: String?, caFile: String, payload: [UInt8] = [],
                    extraArguments: [String] = [], timeout: TimeInterval = 5) throws -> PeerAttackResult {
        _ = ignoreSIGPIPE
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        var arguments = ["s_client", "-connect", "127.0.0.1:\(port)", "-CAfile", caFile, "-quiet"]
        if let certificate, let key { arguments += ["-cert", certificate, "-key", key] }
        process.arguments = arguments + extraArguments
        let input = Pipe(), output = Pipe()
        process.standardInput = input
        process.standardOutput = output
        process.standardError = output
        let started = Date()
        try process.run()
        // Written from another thread: a payload larger than the pipe buffer must not block the
        // test while s_client is still handshaking.
        let writer = input.fileHandleForWriting.fileDescriptor
        let bytes = payload
        let writerDone = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            bytes.withUnsafeBytes { raw in
                var offset = 0
                while offset < raw.count {
                    let n = write(writer, raw.baseAddress! + offset, raw.count - offset)
                    if n <= 0 { break }
                    offset += n
                }
            }
            writerDone.signal()
        }
        let reader = output.fileHandleForReading
        let collected = LockedBox(Data())
        let readerDone = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            let more = reader.readDataToEndOfFile()
            collected.withLockedValue { $0.append(more) }
            readerDone.signal()
        }
        let deadline = started.addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(5_000) }
        let closed = !process.isRunning
        if !closed { process.terminate(); kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
        let elapsed = Date().timeIntervalSince(started)
        // The writer may be blocked on a full pipe whose reader is gone: closing our end ends it.
        try? input.fileHandleForWriting.close()
        _ = writerDone.wait(timeout: .now() + 5)
        _ = readerDone.wait(timeout: .now() + 5)
        return PeerAttackResult(closedByNode: closed, exitStatus: process.terminationStatus,
                                output: String(decoding: collected.withLockedValue { $0 }, as: UTF8.self), seconds: elapsed)
    }
}

/// Peer frames built by hand (`u32 length | u8 version | u8 type | payload`, big-endian), so the
/// tests do not depend on the codec they attack.
enum PeerFrames {
    static func frame(version: UInt8 = 1, type: UInt8, payload: [UInt8]) -> [UInt8] {
        let length = UInt32(2 + payload.count)
        return u32(length) + [version, type] + payload
    }

    static func hello(cluster: String, node: String, version: UInt8 = 1) -> [UInt8] {
        let nowMillis = UInt64(Date().timeIntervalSince1970 * 1000)
        let payload = string(cluster) + string(node) + u64(0x5EC0_0001) + string("127.0.0.1:1") + string("0.1.0")
            + u64(nowMillis) + u32(0)
        return frame(version: version, type: 1, payload: payload)
    }

    /// A digest message (type 3): valid, but not allowed as the first frame.
    static func digest() -> [UInt8] {
        frame(type: 3, payload: u64(1) + u64(UInt64(Date().timeIntervalSince1970 * 1000)) + u32(0))
    }

    static func string(_ s: String) -> [UInt8] { u16(UInt16(s.utf8.count)) + Array(s.utf8) }
    static func u16(_ v: UInt16) -> [UInt8] { withUnsafeBytes(of: v.bigEndian, Array.init) }
    static func u32(_ v: UInt32) -> [UInt8] { withUnsafeBytes(of: v.bigEndian, Array.init) }
    static func u64(_ v: UInt64) -> [UInt8] { withUnsafeBytes(of: v.bigEndian, Array.init) }
}

/// Milliseconds a closure took.
func measureMillis(_ body: () throws -> Void) rethrows -> Double {
    let start = DispatchTime.now().uptimeNanoseconds
    try body()
    return Double(DispatchTime.now().uptimeNanoseconds - start) / 1e6
}

/// Median and maximum of some latencies, for printing.
func latencySummary(_ millis: [Double]) -> String {
    guard !millis.isEmpty else { return "no samples" }
    let sorted = millis.sorted()
    return String(format: "n=%d median=%.1f ms max=%.1f ms", sorted.count, sorted[sorted.count / 2], sorted[sorted.count - 1])
}
