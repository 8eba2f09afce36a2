import Foundation
import FuzzSupport
import KeystoreConfig
@testable import KeystoreNode
@testable import LocalAPI
import Logging
import NIOCore
import NIOEmbedded
import RegistryDatabase
import ReplicatedStore
import SecretMemory
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

// Fuzz target 2: what a local client can send on the Unix socket. The bytes go through the
// production connection setup (`LocalAPIServer.acceptConnection`: the connection cap, the
// LocalAPI connection handler with its bounded HTTP/1.1 parser and the server's limits) into the
// real router over a real NodeState, on an EmbeddedChannel. Needs `-enable-testing` (run.sh
// passes it): the connection setup, the parser and `becomeReady` are internal.
//
// Input layout: byte 0 picks the caller (low 2 bits: uid 0 / 1001 / 1002 / a stranger with gid
// 1003) and whether the node has made its join decision (bit 2); byte 1 picks how the rest is
// split into reads (1...64 bytes per read, or all at once), so partial heads and bodies are
// exercised; the rest is the byte stream from the client.
//
// Oracles beyond "does not crash or hang":
// - a caller without keys:read on first.com never receives the PSK of first.com (in base64, as
//   the API would send it), whatever path tricks it uses;
// - the parser is split-invariant: the same bytes fed in one piece and in the chosen reads give
//   the same requests and the same verdict;
// - what the server writes is well-framed HTTP/1.x: interim 100s, then answers whose
//   Content-Length matches their body, or one chunked / close-delimited event stream last.

/// `SO_PEERCRED` for an EmbeddedChannel: the handler reads the caller from the socket, which an
/// EmbeddedChannel does not have. Set before each input; libFuzzer runs inputs on one thread.
nonisolated(unsafe) private var currentCaller = PeerCredentials(pid: 1, uid: 0, gid: 0)

extension EmbeddedChannel: @retroactive SocketOptionProvider {
    public func unsafeSetSocketOption<Value: Sendable>(level: SocketOptionLevel, name: SocketOptionName, value: Value) -> EventLoopFuture<Void> {
        eventLoop.makeSucceededFuture(())
    }
    public func unsafeSetSocketOption<Value: Sendable>(level: NIOBSDSocket.OptionLevel, name: NIOBSDSocket.Option, value: Value) -> EventLoopFuture<Void> {
        eventLoop.makeSucceededFuture(())
    }
    public func unsafeGetSocketOption<Value: Sendable>(level: SocketOptionLevel, name: SocketOptionName) -> EventLoopFuture<Value> {
        guard name == SO_PEERCRED, let credentials = currentCaller as? Value else {
            return eventLoop.makeFailedFuture(ChannelError.operationUnsupported)
        }
        return eventLoop.makeSucceededFuture(credentials)
    }
    public func unsafeGetSocketOption<Value: Sendable>(level: NIOBSDSocket.OptionLevel, name: NIOBSDSocket.Option) -> EventLoopFuture<Value> {
        unsafeGetSocketOption(level: SocketOptionLevel(level.rawValue), name: SocketOptionName(name.rawValue))
    }
}

/// One loop for the connection and the registry writer, so registrations complete inside the
/// same `run()` that served them: deterministic, single-threaded.
private let loop = EmbeddedEventLoop()

/// Counts changes published to (absent) peers, so the harness knows when the state changed and
/// must be rebuilt (else versions and registrations pile up over millions of inputs).
final class PublishCounter: Sendable {
    private let count = Mutex<Int>(0)
    func bump() { count.withLock { $0 += 1 } }
    var value: Int { count.withLock { $0 } }
}

final class FuzzEnvironment: NodeEnvironment {
    let node: String
    init(node: String) { self.node = node }
    func clusterStatus() -> ClusterStatus { ClusterStatus(members: [], aliveNodes: [node]) }
    var memoryLocked: Bool { true }
}

private let logger: Logger = {
    var logger = Logger(label: "fuzz", factory: { _ in SwiftLogNoOpLogHandler() })
    logger.logLevel = .critical
    return logger
}()
private let arena: SecretArena = {
    do { return try SecretArena() } catch { fatalError("fuzz: cannot create the secret arena: \(error)") }
}()
private let config: ClusterConfig = {
    do {
        return try ClusterConfig.parse(json: Array(Fixture.configJSON.utf8), configDirectory: Fixture.directory, node: Fixture.nodeName)
    } catch {
        fatalError("fuzz: the fixture config does not load: \(error)")
    }
}()
/// `FUZZ_ECHO=1 FuzzHTTP input` prints what the server answered (for reading reproducers).
private let echo = getenv("FUZZ_ECHO") != nil
private enum FileHandleEcho {
    static func write(_ bytes: [UInt8]) {
        _ = bytes.withUnsafeBytes { Glibc.write(2, $0.baseAddress, $0.count) }
        _ = Glibc.write(2, "\n", 1)
    }
}
/// The first.com PSK as the API would send it.
private let pskBase64 = Array(base64(Array(Fixture.pskValue.utf8)).utf8)

/// A node, built lazily and rebuilt after any input that changed it. Its registry database is
/// a fresh file in shared memory each time (registrations never touch a real disk).
private struct Node {
    var published = PublishCounter()
    var router: APIRouter
    let directory = "/dev/shm/keystore-fuzz-\(getpid())-\(UInt64.random(in: 0...UInt64.max))"
    init(ready: Bool) {
        let state = NodeState(config: config, arena: arena)
        let operations: NodeOperations
        do {
            _ = try state.loadFileKeys()
            let database = try RegistryDatabase(directory: directory)
            operations = NodeOperations(state: state, registry: RegistryWriter(database: database, on: loop),
                                        events: EventHub(nodeName: state.nodeName, logger: logger), logger: logger,
                                        metrics: NodeMetrics(registry: nil))
            if ready { _ = try operations.becomeReady() }
        } catch {
            fatalError("fuzz: the fixture node does not start: \(error)")
        }
        let published = self.published
        operations.attachPublisher { _ in published.bump() }
        router = APIRouter(node: operations, environment: FuzzEnvironment(node: state.nodeName), daemonUID: 0)
    }
}
nonisolated(unsafe) private var nodes: [Bool: Node] = [:]

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzHTTP(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    guard size >= 2 else { return 0 }
    let input = UnsafeBufferPointer(start: data, count: size)
    let callers: [PeerCredentials] = [
        PeerCredentials(pid: 1, uid: 0, gid: 0), PeerCredentials(pid: 1, uid: 1001, gid: 1001),
        PeerCredentials(pid: 1, uid: 1002, gid: 1002), PeerCredentials(pid: 1, uid: 4321, gid: 1003),
    ]
    currentCaller = callers[Int(input[0] & 3)]
    let ready = input[0] & 4 != 0
    let split = Int(input[1] % 65) // 0: one read
    let stream = UnsafeBufferPointer(rebasing: input[2...])

    let node = nodes[ready] ?? Node(ready: ready)
    nodes[ready] = node
    let before = node.published.value

    let output = serve(stream, split: split, router: node.router)

    if echo { FileHandleEcho.write(output) }
    if split != 0 {
        let whole = parserVerdicts(stream, split: 0), pieces = parserVerdicts(stream, split: split)
        if whole != pieces { fatalError("fuzz: the parser's verdict depends on read sizes:\n\(whole)\nvs\n\(pieces)") }
    }
    if let problem = framingProblem(output) { fatalError("fuzz: badly framed output: \(problem)") }
    if node.published.value != before { // a rotation or registration changed the state
        nodes[ready] = nil
        _ = try? FileManager.default.removeItem(atPath: node.directory)
    }
    let mayReadPSK = currentCaller.uid == 0 || currentCaller.uid == 1001
    if !mayReadPSK && contains(output, pskBase64) {
        fatalError("fuzz: uid \(currentCaller.uid) received the first.com PSK without keys:read")
    }
    return 0
}

/// Runs one connection to completion and returns everything the server wrote.
private func serve(_ stream: UnsafeBufferPointer<UInt8>, split: Int, router: APIRouter) -> [UInt8] {
    let channel = EmbeddedChannel(loop: loop)
    let limits = LocalAPILimits()
    do {
        try LocalAPIServer.acceptConnection(channel, responder: router, limits: limits, counters: LocalAPIServerCounters(),
                                            logger: logger, anonymous: false).wait()
        try channel.connect(to: SocketAddress(unixDomainSocketPath: "/fuzz.sock")).wait()
    } catch {
        fatalError("fuzz: cannot set up the embedded connection: \(error)")
    }

    var output: [UInt8] = []
    func drain() {
        while let chunk = try? channel.readOutbound(as: ByteBuffer.self) {
            output.append(contentsOf: chunk.readableBytesView)
        }
    }
    var offset = 0
    while offset < stream.count && channel.isActive {
        let end = split == 0 ? stream.count : min(stream.count, offset + split)
        let buffer = ByteBuffer(bytes: UnsafeBufferPointer(rebasing: stream[offset..<end]))
        offset = end
        do { try channel.writeInbound(buffer) } catch { break } // the handler closed the connection
        channel.embeddedEventLoop.run()
        drain()
    }
    // The client goes silent: the request timeout closes a connection still open.
    channel.embeddedEventLoop.advanceTime(by: limits.requestTimeout + .seconds(1))
    drain()
    if channel.isActive, !streaming(output) {
        fatalError("fuzz: a connection outlived the request timeout")
    }
    _ = try? channel.finish(acceptAlreadyClosed: true)
    drain()
    return output
}

/// Whether the output ends in an event stream (which has no request deadline).
private func streaming(_ output: [UInt8]) -> Bool {
    contains(output, Array("content-type: application/x-ndjson".utf8))
}

/// What the parser makes of `stream`, fed in reads of `split` bytes (0: at once).
private func parserVerdicts(_ stream: UnsafeBufferPointer<UInt8>, split: Int) -> [String] {
    let defaults = LocalAPILimits()
    var parser = HTTPRequestParser(limits: HTTPParserLimits(maxHeadBytes: defaults.maxHeaderBytes,
                                                            maxHeaderCount: defaults.maxHeaderCount, maxBodyBytes: defaults.maxBodyBytes))
    var buffer = ByteBuffer()
    var verdicts: [String] = []
    var offset = 0
    repeat {
        let end = split == 0 ? stream.count : min(stream.count, offset + split)
        buffer.writeBytes(UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(stream)[offset..<end]))
        offset = end
        parsing: while true {
            switch parser.next(&buffer) {
            case .needMore: break parsing
            case .sendContinue: continue // depends on where a read ends: not part of the verdict
            case .request(let head, let body):
                verdicts.append("\(head.method.rawValue) \(head.target) \(head.version) keepAlive=\(head.keepAlive) headers=\(head.headers.count) body=\(Array(body.readableBytesView))")
            case .failure(let error, _):
                verdicts.append("failure \(error.status.code) \(error.code.rawValue)")
                return verdicts
            }
        }
    } while offset < stream.count
    return verdicts
}

/// Checks that `output` is a sequence of well-framed HTTP/1.x answers; returns what is wrong.
private func framingProblem(_ output: [UInt8]) -> String? {
    var index = 0
    while index < output.count {
        let rest = output[index...]
        guard let headEnd = firstRange(of: Array("\r\n\r\n".utf8), in: rest) else { return "an answer head without its end" }
        let head = String(decoding: output[index..<headEnd], as: UTF8.self)
        guard head.hasPrefix("HTTP/1.1 ") || head.hasPrefix("HTTP/1.0 ") else { return "an answer not starting with a status line" }
        let status = head.dropFirst(9).prefix(3)
        let lines = head.split(separator: "\r\n").dropFirst()
        let lengths = lines.filter { $0.lowercased().hasPrefix("content-length: ") }.map { Int($0.dropFirst(16)) }
        let chunked = lines.contains { $0.lowercased() == "transfer-encoding: chunked" }
        index = headEnd + 4
        if status == "100" {
            guard lengths.isEmpty else { return "a 100 answer with a body" }
            continue
        }
        if chunked || head.contains("application/x-ndjson") {
            return nil // an event stream is the last thing on a connection
        }
        guard lengths.count == 1, let length = lengths[0] else { return "an answer without exactly one valid Content-Length: \(head)" }
        // The body, unless this answered a HEAD (no body): then the next answer or the end follows.
        let statusLine = Array("HTTP/1.".utf8)
        let afterBody = index + length
        if afterBody == output.count || (afterBody < output.count && output[afterBody...].starts(with: statusLine)) {
            index = afterBody
        } else if index == output.count || output[index...].starts(with: statusLine) {
            continue
        } else {
            return "a body that does not match its Content-Length \(length): \(head)"
        }
    }
    return nil
}

private func firstRange(of needle: [UInt8], in haystack: ArraySlice<UInt8>) -> Int? {
    guard haystack.count >= needle.count else { return nil }
    var start = haystack.startIndex
    while start <= haystack.endIndex - needle.count {
        if haystack[start] == needle[0] && haystack[start..<(start + needle.count)].elementsEqual(needle) { return start }
        start += 1
    }
    return nil
}

private func contains(_ haystack: [UInt8], _ needle: [UInt8]) -> Bool {
    guard !needle.isEmpty, haystack.count >= needle.count else { return false }
    for start in 0...(haystack.count - needle.count) where haystack[start] == needle[0] {
        if haystack[start..<(start + needle.count)].elementsEqual(needle) { return true }
    }
    return false
}

private func base64(_ bytes: [UInt8]) -> String {
    let table = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
    var out: [UInt8] = []
    var i = 0
    while i < bytes.count {
        let b0 = Int(bytes[i]), b1 = i + 1 < bytes.count ? Int(bytes[i + 1]) : 0, b2 = i + 2 < bytes.count ? Int(bytes[i + 2]) : 0
        out.append(table[b0 >> 2])
        out.append(table[(b0 & 3) << 4 | b1 >> 4])
        out.append(i + 1 < bytes.count ? table[(b1 & 15) << 2 | b2 >> 6] : UInt8(ascii: "="))
        out.append(i + 2 < bytes.count ? table[b2 & 63] : UInt8(ascii: "="))
        i += 3
    }
    return String(decoding: out, as: UTF8.self)
}

@_cdecl("FuzzHTTP_main")
public func fuzzHTTPMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runFuzzer(argc, argv, fuzzHTTP)
}
