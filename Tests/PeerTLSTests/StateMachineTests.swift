import NIOCore
import NIOEmbedded
import TestSupport
import XCTest

@testable import PeerTLS

/// The handler's state machine on EmbeddedChannel: half-closure, close_notify in both directions and
/// at once, writes and flushes before the handshake, and write failures reaching the writer.
final class StateMachineTests: XCTestCase {
    private typealias Side = EmbeddedSide

    private func makeSide(_ role: PeerTLSRole, node: String) throws -> Side { try EmbeddedSide(role, node: node) }

    private func connect(_ sides: Side...) throws {
        for side in sides { try side.connect() }
    }

    private func connectedPair() throws -> (client: Side, server: Side) {
        let client = try makeSide(.client(expectedPeer: "node2"), node: "node1")
        let server = try makeSide(.server, node: "node2")
        try connect(client, server)
        try shuttle(client, server)
        XCTAssertEqual(client.recorder.events.count, 1)
        XCTAssertEqual(server.recorder.events.count, 1)
        return (client, server)
    }

    private func outcome(_ future: EventLoopFuture<Void>) -> Result<Void, Error>? {
        let box = LockedBox<Result<Void, Error>?>(nil)
        future.whenComplete { result in box.withLockedValue { $0 = result } }
        return box.withLockedValue { $0 }
    }

    // MARK: half-closure

    func testPeerHalfCloseWithoutCloseNotifyIsUncleanShutdown() throws {
        let (client, _) = try connectedPair()
        client.channel.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        XCTAssertEqual(client.recorder.errors as? [PeerTLSError], [.uncleanShutdown])
        XCTAssertFalse(client.channel.isActive)
    }

    func testPeerHalfCloseDuringHandshakeFailsTheHandshake() throws {
        let client = try makeSide(.client(expectedPeer: "node2"), node: "node1")
        let early = client.channel.writeAndFlush(ByteBuffer(string: "hello"))
        try connect(client)
        XCTAssertNotNil(try client.channel.readOutbound(as: ByteBuffer.self), "ClientHello")
        client.channel.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        XCTAssertEqual(client.recorder.errors as? [PeerTLSError],
                       [.handshakeFailed(reason: "connection closed by the peer during the handshake")])
        XCTAssertEqual(outcome(early).map { (try? $0.get()) == nil }, true, "the buffered write fails")
        XCTAssertFalse(client.channel.isActive)
        XCTAssertTrue(client.recorder.events.isEmpty)
    }

    func testOutputHalfCloseIsRefusedAndTheConnectionKeepsWorking() throws {
        let (client, server) = try connectedPair()
        let halfClose = client.channel.close(mode: .output)
        XCTAssertThrowsError(try halfClose.wait()) { XCTAssertEqual($0 as? ChannelError, .operationUnsupported) }
        XCTAssertTrue(client.channel.isActive)
        let write = client.channel.writeAndFlush(ByteBuffer(string: "still here"))
        try shuttle(client, server)
        XCTAssertNoThrow(try write.wait())
        XCTAssertEqual(server.recorder.received, "still here")
        XCTAssertTrue(client.recorder.errors.isEmpty, "\(client.recorder.errors)")
    }

    // MARK: close_notify

    func testCloseNotifyCrossingInBothDirectionsClosesBothCleanly() throws {
        let (client, server) = try connectedPair()
        let clientClosed = client.channel.close()
        let serverClosed = server.channel.close()
        XCTAssertNil(outcome(clientClosed), "each side waits for the other's close_notify")
        XCTAssertNil(outcome(serverClosed))
        try shuttle(client, server)
        XCTAssertNoThrow(try clientClosed.wait())
        XCTAssertNoThrow(try serverClosed.wait())
        XCTAssertFalse(client.channel.isActive)
        XCTAssertFalse(server.channel.isActive)
        XCTAssertTrue(client.recorder.errors.isEmpty, "\(client.recorder.errors)")
        XCTAssertTrue(server.recorder.errors.isEmpty, "\(server.recorder.errors)")
    }

    func testWhileClosingWritesAreRefusedButThePeersLastDataArrives() throws {
        let (client, server) = try connectedPair()
        let closed = client.channel.close()
        let secondClose = client.channel.close()
        let refused = client.channel.writeAndFlush(ByteBuffer(string: "too late"))
        XCTAssertThrowsError(try refused.wait()) { XCTAssertEqual($0 as? ChannelError, .outputClosed) }
        // The server sent this before it saw our close_notify: it must still be delivered.
        server.channel.writeAndFlush(ByteBuffer(string: "last words"), promise: nil)
        try shuttle(client, server)
        XCTAssertEqual(client.recorder.received, "last words")
        XCTAssertNoThrow(try closed.wait())
        XCTAssertNoThrow(try secondClose.wait(), "a second close completes with the first")
        XCTAssertEqual(server.recorder.received, "")
        XCTAssertTrue(client.recorder.errors.isEmpty, "\(client.recorder.errors)")
    }

    func testDataAfterPeersCloseNotifyIsNotDelivered() throws {
        let (client, server) = try connectedPair()
        // Let the server close: its close_notify reaches the client, which answers and closes.
        server.channel.close(promise: nil)
        while let bytes = try server.channel.readOutbound(as: ByteBuffer.self) { try client.channel.writeInbound(bytes) }
        XCTAssertFalse(client.channel.isActive)
        let late = client.channel.writeAndFlush(ByteBuffer(string: "after close"))
        XCTAssertThrowsError(try late.wait()) { XCTAssertEqual($0 as? ChannelError, .ioOnClosedChannel) }
        XCTAssertTrue(client.recorder.errors.isEmpty, "\(client.recorder.errors)")
    }

    // MARK: writes before the handshake completes

    func testWritesBeforeTheHandshakeAreSentInOrderAndOnlyFlushedWhereTheCallerFlushed() throws {
        let client = try makeSide(.client(expectedPeer: "node2"), node: "node1")
        let server = try makeSide(.server, node: "node2")
        let first = client.channel.write(ByteBuffer(string: "one "))
        let second = client.channel.write(ByteBuffer(string: "two "))
        client.channel.flush()
        let unflushed = client.channel.write(ByteBuffer(string: "three"))
        try connect(client, server)
        try shuttle(client, server)

        XCTAssertEqual(server.recorder.received, "one two ", "only what was flushed before the handshake")
        XCTAssertNoThrow(try first.wait())
        XCTAssertNoThrow(try second.wait())
        XCTAssertNil(outcome(unflushed), "a write never flushed is not sent")

        client.channel.flush()
        try shuttle(client, server)
        XCTAssertEqual(server.recorder.received, "one two three")
        XCTAssertNoThrow(try unflushed.wait())
    }

    func testEmptyWriteBeforeTheHandshakeCompletesInOrder() throws {
        let client = try makeSide(.client(expectedPeer: "node2"), node: "node1")
        let server = try makeSide(.server, node: "node2")
        let empty = client.channel.write(ByteBuffer())
        let data = client.channel.writeAndFlush(ByteBuffer(string: "data"))
        try connect(client, server)
        try shuttle(client, server)
        XCTAssertNoThrow(try empty.wait())
        XCTAssertNoThrow(try data.wait())
        XCTAssertEqual(server.recorder.received, "data")
    }

    // MARK: write failures

    func testTransportWriteFailureReachesTheWritersPromise() throws {
        let (client, server) = try connectedPair()
        client.transport.armed = true
        let write = client.channel.writeAndFlush(ByteBuffer(string: "lost"))
        XCTAssertThrowsError(try write.wait()) { XCTAssertEqual($0 as? FailingWrites.InjectedWriteError, FailingWrites.InjectedWriteError()) }
        client.transport.armed = false
        try shuttle(client, server)
        XCTAssertEqual(server.recorder.received, "")
    }

    func testTransportFailureOfABufferedWriteReachesItsPromise() throws {
        let client = try makeSide(.client(expectedPeer: "node2"), node: "node1")
        let server = try makeSide(.server, node: "node2")
        try connect(client, server)
        // Handshake flights go out; arm the transport before the client's Finished is written so the
        // buffered write, replayed right after it, hits the failing transport.
        let early = client.channel.writeAndFlush(ByteBuffer(string: "early"))
        while let bytes = try client.channel.readOutbound(as: ByteBuffer.self) { try server.channel.writeInbound(bytes) }
        client.transport.armed = true
        while let bytes = try server.channel.readOutbound(as: ByteBuffer.self) { try client.channel.writeInbound(bytes) }
        XCTAssertEqual(client.recorder.events.count, 1, "the client completed its handshake")
        XCTAssertThrowsError(try early.wait()) { XCTAssertEqual($0 as? FailingWrites.InjectedWriteError, FailingWrites.InjectedWriteError()) }
    }

    func testClosedChannelFailsWritesWithIOOnClosedChannel() throws {
        let client = try makeSide(.client(expectedPeer: "node2"), node: "node1")
        let early = client.channel.write(ByteBuffer(string: "buffered"))
        try connect(client)
        client.channel.pipeline.fireChannelInactive()
        XCTAssertThrowsError(try early.wait()) { XCTAssertEqual($0 as? ChannelError, .ioOnClosedChannel) }
    }
}

/// The engine alone, without NIO channels: what each OpenSSL step maps to.
final class TLSEngineTests: XCTestCase {
    private func engines() throws -> (client: TLSEngine, server: TLSEngine) {
        let f = try CertFixture.shared()
        let clientContext = try PeerTLSContext(caFile: f.ca, certificateFile: f.cert("node1"), privateKeyFile: f.key("node1"))
        let serverContext = try PeerTLSContext(caFile: f.ca, certificateFile: f.cert("node2"), privateKeyFile: f.key("node2"))
        return (try TLSEngine(context: clientContext, role: .client(expectedPeer: "node2")),
                try TLSEngine(context: serverContext, role: .server))
    }

    private let allocator = ByteBufferAllocator()

    /// Moves every pending record from `from` to `to`; returns whether there were any.
    @discardableResult
    private func move(_ from: TLSEngine, _ to: TLSEngine) -> Bool {
        guard let records = from.pendingOutput(allocator: allocator) else { return false }
        to.receive(records)
        return true
    }

    private func handshake() throws -> (client: TLSEngine, server: TLSEngine) {
        let (client, server) = try engines()
        XCTAssertEqual(client.handshake(), .wantRead)
        XCTAssertTrue(move(client, server), "ClientHello")
        XCTAssertEqual(server.handshake(), .wantRead, "the server waits for the client's certificate and Finished")
        XCTAssertTrue(move(server, client), "ServerHello ... Finished")
        XCTAssertEqual(client.handshake(), .completed(peerDNSNames: ["node2"], protocolVersion: "TLSv1.3"))
        XCTAssertTrue(move(client, server), "client certificate and Finished")
        XCTAssertEqual(server.handshake(), .completed(peerDNSNames: ["node1"], protocolVersion: "TLSv1.3"))
        move(server, client)  // session-less TLS 1.3: nothing, or nothing the client must act on
        return (client, server)
    }

    private func readAll(_ engine: TLSEngine) -> (text: String, last: PlaintextRead) {
        var text = ""
        while true {
            let result = engine.read(allocator: allocator)
            guard case .data(let chunk) = result else { return (text, result) }
            text += String(buffer: chunk)
        }
    }

    func testHandshakeApplicationDataAndCloseNotifyMapToEnums() throws {
        let (client, server) = try handshake()
        guard case .wantRead = readAll(client).last else { return XCTFail("nothing to read yet") }

        XCTAssertEqual(client.write(ByteBuffer(string: "ping")), .encrypted)
        XCTAssertEqual(client.write(ByteBuffer()), .encrypted, "an empty write is accepted and makes no record")
        XCTAssertTrue(move(client, server))
        let received = readAll(server)
        XCTAssertEqual(received.text, "ping")
        guard case .wantRead = received.last else { return XCTFail("\(received.last)") }

        XCTAssertEqual(client.shutdown(), .closeNotifySent)
        XCTAssertTrue(move(client, server))
        guard case .closeNotify = readAll(server).last else { return XCTFail("the server sees close_notify") }
        XCTAssertEqual(server.shutdown(), .complete, "both close_notify alerts exchanged")
        XCTAssertTrue(move(server, client))
        guard case .closeNotify = readAll(client).last else { return XCTFail("the client sees the answer") }
    }

    func testWriteAfterShutdownFailsWithAProtocolError() throws {
        let (client, _) = try handshake()
        XCTAssertEqual(client.shutdown(), .closeNotifySent)
        guard case .failed(.protocolError(let reason)) = client.write(ByteBuffer(string: "after close_notify")) else {
            return XCTFail("SSL_write after shutdown must fail")
        }
        XCTAssertFalse(reason.isEmpty)
    }

    func testGarbageIsAFailedHandshake() throws {
        let (_, server) = try engines()
        server.receive(ByteBuffer(string: "GET / HTTP/1.1\r\n\r\n"))
        guard case .failed(.handshakeFailed(let reason)) = server.handshake() else { return XCTFail() }
        XCTAssertFalse(reason.isEmpty)
    }

    func testWrongPeerNameFailsTheClientAndSendsTheServerAnAlert() throws {
        let f = try CertFixture.shared()
        let client = try TLSEngine(context: PeerTLSContext(caFile: f.ca, certificateFile: f.cert("node1"), privateKeyFile: f.key("node1")),
                                   role: .client(expectedPeer: "node3"))
        let server = try TLSEngine(context: PeerTLSContext(caFile: f.ca, certificateFile: f.cert("node2"), privateKeyFile: f.key("node2")),
                                   role: .server)
        XCTAssertEqual(client.handshake(), .wantRead)
        move(client, server)
        XCTAssertEqual(server.handshake(), .wantRead)
        move(server, client)
        XCTAssertEqual(client.handshake(), .failed(.peerNameMismatch(expected: "node3", found: ["node2"])))
        XCTAssertTrue(move(client, server), "the alert telling the server why")
        guard case .failed(.handshakeFailed(let reason)) = server.handshake() else { return XCTFail() }
        XCTAssertTrue(reason.contains("alert"), reason)
    }

    private func corruptedRecord(from server: TLSEngine, _ text: String) throws -> ByteBuffer {
        XCTAssertEqual(server.write(ByteBuffer(string: text)), .encrypted)
        var records = try XCTUnwrap(server.pendingOutput(allocator: allocator))
        let last = records.writerIndex - 1
        records.setInteger(records.getInteger(at: last, as: UInt8.self)! ^ 0xFF, at: last)  // breaks the AEAD tag
        return records
    }

    func testCorruptedRecordAfterApplicationDataIsAProtocolError() throws {
        let (client, server) = try handshake()
        XCTAssertEqual(server.write(ByteBuffer(string: "first")), .encrypted)
        move(server, client)
        XCTAssertEqual(readAll(client).text, "first")
        client.receive(try corruptedRecord(from: server, "second"))
        guard case .failed(.protocolError(let reason)) = readAll(client).last else { return XCTFail("a corrupted record must fail") }
        XCTAssertFalse(reason.isEmpty)
    }

    /// In TLS 1.3 the server judges the client's certificate after the client finished, so a failure
    /// before any application data arrived is reported as the handshake failing.
    func testFailureBeforeAnyApplicationDataIsAFailedHandshakeForTheClient() throws {
        let (client, server) = try handshake()
        client.receive(try corruptedRecord(from: server, "first"))
        guard case .failed(.handshakeFailed(let reason)) = readAll(client).last else { return XCTFail() }
        XCTAssertTrue(reason.hasPrefix("peer rejected the connection: "), reason)
    }
}
