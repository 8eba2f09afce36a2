import Foundation
import NIOCore
import NIOPosix
import PeerTLS
import TestSupport
import XCTest

struct ChannelClosedFirst: Error {}

/// What a PeerTLSHandler reported on a real socket; every promise is completed by the time the channel is
/// inactive, so waiting on one can never hang past the connection's end.
final class Probe: Sendable {
    let handshake: EventLoopPromise<PeerTLSEvent>
    let error: EventLoopPromise<PeerTLSError>
    let received: EventLoopPromise<String>
    let closed: EventLoopPromise<Void>
    let expect: String
    let sendOnActive: String?
    let sendOnHandshake: String?

    init(loop: EventLoop, expect: String = "\n", sendOnActive: String? = nil, sendOnHandshake: String? = nil) {
        handshake = loop.makePromise()
        error = loop.makePromise()
        received = loop.makePromise()
        closed = loop.makePromise()
        self.expect = expect
        self.sendOnActive = sendOnActive
        self.sendOnHandshake = sendOnHandshake
        // A backstop so a broken test fails instead of hanging.
        loop.scheduleTask(in: .seconds(15)) { [self] in
            handshake.fail(ChannelClosedFirst()); error.fail(ChannelClosedFirst())
            received.fail(ChannelClosedFirst()); closed.fail(ChannelClosedFirst())
        }
    }

    func handler() -> ProbeHandler { ProbeHandler(probe: self) }
}

final class ProbeHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    let probe: Probe
    var text = ""
    init(probe: Probe) { self.probe = probe }

    func channelActive(context: ChannelHandlerContext) {
        if let message = probe.sendOnActive {
            context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: message)), promise: nil)
        }
        context.fireChannelActive()
    }
    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard let event = event as? PeerTLSEvent else { return }
        probe.handshake.succeed(event)
        if let message = probe.sendOnHandshake {
            context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: message)), promise: nil)
        }
    }
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        text += String(buffer: unwrapInboundIn(data))
        if text.contains(probe.expect) { probe.received.succeed(text) }
    }
    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if let error = error as? PeerTLSError { probe.error.succeed(error) }
    }
    func channelInactive(context: ChannelHandlerContext) {
        probe.handshake.fail(ChannelClosedFirst())
        probe.error.fail(ChannelClosedFirst())
        probe.received.fail(ChannelClosedFirst())
        probe.closed.succeed(())
    }
}

final class OpenSSLInteropTests: XCTestCase {
    private var group: MultiThreadedEventLoopGroup!
    private var processes: [OpenSSLProcess] = []
    private var channels: [Channel] = []

    override func setUp() {
        group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    }

    override func tearDown() {
        for channel in channels { try? channel.close().wait() }
        for process in processes { process.terminate() }
        try? group.syncShutdownGracefully()
        channels = []
        processes = []
    }

    private func context(node: String, ca: String? = nil, cert: String? = nil, key: String? = nil) throws -> PeerTLSContext {
        let f = try CertFixture.shared()
        return try PeerTLSContext(caFile: ca ?? f.ca, certificateFile: cert ?? f.cert(node), privateKeyFile: key ?? f.key(node))
    }

    private func spawn(_ arguments: [String]) throws -> OpenSSLProcess {
        let process = try OpenSSLProcess(arguments)
        processes.append(process)
        return process
    }

    /// `openssl s_server` presenting `cert`, requiring a client certificate from the cluster CA.
    private func startServer(cert: String, key: String, version: String = "-tls1_3") throws -> Int {
        let f = try CertFixture.shared()
        let port = try freeTCPPort()
        let server = try spawn(["s_server", "-accept", "127.0.0.1:\(port)", "-cert", cert, "-key", key,
                                "-CAfile", f.ca, "-Verify", "1", "-verify_return_error", version,
                                "-naccept", "1", "-rev"])
        XCTAssertTrue(server.waitFor("ACCEPT"), server.text)
        return port
    }

    /// Dials `port` with a PeerTLSHandler in the client role.
    private func dial(_ port: Int, context: PeerTLSContext, expecting peer: String, probe: Probe) throws {
        let channel = try ClientBootstrap(group: group)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandlers(
                        PeerTLSHandler(context: context, role: .client(expectedPeer: peer)), probe.handler())
                }
            }
            .connect(host: "127.0.0.1", port: port).wait()
        channels.append(channel)
    }

    /// Listens on an ephemeral port with a PeerTLSHandler in the server role.
    private func listen(context: PeerTLSContext, probe: Probe) throws -> Int {
        let channel = try ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandlers(
                        PeerTLSHandler(context: context, role: .server), probe.handler())
                }
            }
            .bind(host: "127.0.0.1", port: 0).wait()
        channels.append(channel)
        return try XCTUnwrap(channel.localAddress?.port)
    }

    private func sClient(_ port: Int, extra: [String], version: String = "-tls1_3") throws -> OpenSSLProcess {
        let f = try CertFixture.shared()
        return try spawn(["s_client", "-connect", "127.0.0.1:\(port)", "-CAfile", f.ca, "-verify_return_error",
                          "-verify_hostname", "node2", version] + extra)
    }

    private func expectError(_ probe: Probe, file: StaticString = #filePath, line: UInt = #line) -> PeerTLSError? {
        do {
            return try probe.error.futureResult.wait()
        } catch {
            XCTFail("no PeerTLSError before the channel closed", file: file, line: line)
            return nil
        }
    }

    // MARK: our client against openssl s_server

    func testClientTalksToOpenSSLServer() throws {
        let f = try CertFixture.shared()
        let port = try startServer(cert: f.cert("node2"), key: f.key("node2"))
        // Written before the handshake completes: must be buffered and then delivered.
        let probe = Probe(loop: group.next(), expect: "\n", sendOnActive: "hello\n")
        try dial(port, context: context(node: "node1"), expecting: "node2", probe: probe)
        XCTAssertEqual(try probe.handshake.futureResult.wait(),
                       .handshakeCompleted(peerDNSNames: ["node2"], protocolVersion: "TLSv1.3"))
        XCTAssertEqual(try probe.received.futureResult.wait(), "olleh\n")
        XCTAssertNoThrow(try channels[0].close().wait())
        XCTAssertNoThrow(try probe.closed.futureResult.wait())
        XCTAssertThrowsError(try probe.error.futureResult.wait(), "a requested close reports no error")
    }

    func testClientRejectsServerWithAnotherNodesCertificate() throws {
        let f = try CertFixture.shared()
        let port = try startServer(cert: f.cert("node3"), key: f.key("node3"))
        let probe = Probe(loop: group.next())
        try dial(port, context: context(node: "node1"), expecting: "node2", probe: probe)
        XCTAssertEqual(expectError(probe), .peerNameMismatch(expected: "node2", found: ["node3"]))
        XCTAssertThrowsError(try probe.handshake.futureResult.wait())
    }

    func testClientRejectsServerFromAnotherCA() throws {
        let f = try CertFixture.shared()
        let port = try startServer(cert: f.otherCert("node1"), key: f.otherKey("node1"))
        let probe = Probe(loop: group.next())
        try dial(port, context: context(node: "node1"), expecting: "node1", probe: probe)
        XCTAssertEqual(expectError(probe), .peerCertificateRejected(reason: "unable to get local issuer certificate"))
    }

    func testClientRefusesTLS12OnlyServer() throws {
        let f = try CertFixture.shared()
        let port = try startServer(cert: f.cert("node2"), key: f.key("node2"), version: "-tls1_2")
        let probe = Probe(loop: group.next())
        try dial(port, context: context(node: "node1"), expecting: "node2", probe: probe)
        guard case .handshakeFailed(let reason)? = expectError(probe) else { return XCTFail() }
        XCTAssertTrue(reason.contains("protocol version"), reason)
    }

    func testOpenSSLServerRejectsOurExpiredCertificate() throws {
        let f = try CertFixture.shared()
        let port = try startServer(cert: f.cert("node2"), key: f.key("node2"))
        let probe = Probe(loop: group.next(), sendOnActive: "hello\n")
        try dial(port, context: context(node: "node1", cert: f.expiredCert), expecting: "node2", probe: probe)
        guard case .handshakeFailed(let reason)? = expectError(probe) else { return XCTFail() }
        XCTAssertTrue(reason.contains("certificate expired"), reason)
        XCTAssertThrowsError(try probe.received.futureResult.wait())
    }

    // MARK: openssl s_client against our server

    func testOpenSSLClientTalksToOurServerAndClosesCleanly() throws {
        let f = try CertFixture.shared()
        let probe = Probe(loop: group.next(), expect: "ping", sendOnHandshake: "hello from node2\n")
        let port = try listen(context: context(node: "node2"), probe: probe)
        let client = try sClient(port, extra: ["-cert", f.cert("node1"), "-key", f.key("node1")])
        XCTAssertEqual(try probe.handshake.futureResult.wait(),
                       .handshakeCompleted(peerDNSNames: ["node1"], protocolVersion: "TLSv1.3"))
        XCTAssertTrue(client.waitFor("hello from node2"), client.text)
        XCTAssertTrue(client.text.contains("Verify return code: 0 (ok)"), client.text)
        try client.writeInput("ping\n")
        XCTAssertEqual(try probe.received.futureResult.wait(), "ping\n")
        client.closeInput()  // s_client sends close_notify on stdin EOF
        XCTAssertNoThrow(try probe.closed.futureResult.wait())
        XCTAssertThrowsError(try probe.error.futureResult.wait(), "clean close_notify reports no error")
    }

    func testServerRefusesClientWithoutCertificate() throws {
        let probe = Probe(loop: group.next())
        let port = try listen(context: context(node: "node2"), probe: probe)
        let client = try sClient(port, extra: [])
        guard case .handshakeFailed(let reason)? = expectError(probe) else { return XCTFail(client.text) }
        XCTAssertTrue(reason.contains("peer did not return a certificate"), reason)
    }

    func testServerRefusesClientFromAnotherCA() throws {
        let f = try CertFixture.shared()
        let probe = Probe(loop: group.next())
        let port = try listen(context: context(node: "node2"), probe: probe)
        _ = try sClient(port, extra: ["-cert", f.otherCert("node1"), "-key", f.otherKey("node1")])
        XCTAssertEqual(expectError(probe), .peerCertificateRejected(reason: "unable to get local issuer certificate"))
        XCTAssertThrowsError(try probe.handshake.futureResult.wait())
    }

    func testServerRefusesExpiredClientCertificate() throws {
        let f = try CertFixture.shared()
        let probe = Probe(loop: group.next())
        let port = try listen(context: context(node: "node2"), probe: probe)
        _ = try sClient(port, extra: ["-cert", f.expiredCert, "-key", f.key("node1")])
        XCTAssertEqual(expectError(probe), .peerCertificateRejected(reason: "certificate has expired"))
    }

    func testServerRefusesTLS12Client() throws {
        let f = try CertFixture.shared()
        let probe = Probe(loop: group.next())
        let port = try listen(context: context(node: "node2"), probe: probe)
        _ = try sClient(port, extra: ["-cert", f.cert("node1"), "-key", f.key("node1")], version: "-tls1_2")
        guard case .handshakeFailed(let reason)? = expectError(probe) else { return XCTFail() }
        XCTAssertTrue(reason.contains("unsupported protocol"), reason)
    }
}
