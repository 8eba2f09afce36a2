import NIOCore
import NIOEmbedded
import PeerTLS
import TestSupport
import XCTest

final class EmbeddedHandshakeTests: XCTestCase {
    private func makeSide(_ role: PeerTLSRole, node: String, ca: String? = nil, cert: String? = nil,
                          key: String? = nil) throws -> EmbeddedSide {
        try EmbeddedSide(role, node: node, ca: ca, cert: cert, key: key)
    }

    private func connect(_ sides: EmbeddedSide...) throws {
        for side in sides { try side.connect() }
    }

    private func buffer(_ text: String) -> ByteBuffer { ByteBuffer(string: text) }

    func testHandshakeDataBothWaysEarlyWritesAndCleanClose() throws {
        let client = try makeSide(.client(expectedPeer: "node2"), node: "node1")
        let server = try makeSide(.server, node: "node2")
        // Issued before the channel is even active: must be held and sent after the handshake.
        let early = client.channel.writeAndFlush(buffer("early hello"))
        try connect(client, server)
        XCTAssertTrue(client.recorder.events.isEmpty)
        try shuttle(client, server)

        XCTAssertEqual(client.recorder.events, [.handshakeCompleted(peerDNSNames: ["node2"], protocolVersion: "TLSv1.3")])
        XCTAssertEqual(server.recorder.events, [.handshakeCompleted(peerDNSNames: ["node1"], protocolVersion: "TLSv1.3")])
        XCTAssertNoThrow(try early.wait())
        XCTAssertEqual(server.recorder.received, "early hello")

        let reply = server.channel.writeAndFlush(buffer("reply"))
        try shuttle(client, server)
        XCTAssertNoThrow(try reply.wait())
        XCTAssertEqual(client.recorder.received, "reply")

        let closedBox = LockedBox(false)
        client.channel.close().whenSuccess { closedBox.withLockedValue { $0 = true } }
        var closed: Bool { closedBox.withLockedValue { $0 } }
        XCTAssertFalse(closed, "close must wait for the peer's close_notify")
        XCTAssertTrue(client.channel.isActive)
        try shuttle(client, server)
        XCTAssertTrue(closed)
        XCTAssertFalse(client.channel.isActive)
        XCTAssertFalse(server.channel.isActive, "receiving close_notify closes the receiver")
        XCTAssertTrue(client.recorder.errors.isEmpty, "\(client.recorder.errors)")
        XCTAssertTrue(server.recorder.errors.isEmpty, "\(server.recorder.errors)")
    }

    func testLargeWriteIsDeliveredIntact() throws {
        let client = try makeSide(.client(expectedPeer: "node2"), node: "node1")
        let server = try makeSide(.server, node: "node2")
        try connect(client, server)
        try shuttle(client, server)
        let payload = String(repeating: "0123456789abcdef", count: 10_000)  // 160 KB: many TLS records
        client.channel.writeAndFlush(buffer(payload), promise: nil)
        try shuttle(client, server)
        XCTAssertEqual(server.recorder.received.count, payload.count)
        XCTAssertEqual(server.recorder.received, payload)
    }

    func testClientRejectsServerNamingAnotherNode() throws {
        let client = try makeSide(.client(expectedPeer: "node3"), node: "node1")
        let server = try makeSide(.server, node: "node2")
        let early = client.channel.writeAndFlush(buffer("secret-ish"))
        try connect(client, server)
        try shuttle(client, server)

        XCTAssertEqual(client.recorder.errors as? [PeerTLSError], [.peerNameMismatch(expected: "node3", found: ["node2"])])
        XCTAssertTrue(client.recorder.events.isEmpty)
        XCTAssertThrowsError(try early.wait())
        XCTAssertFalse(client.channel.isActive)
        XCTAssertEqual(server.recorder.received, "")
        // The server learns through the alert and fails its handshake too.
        guard case .handshakeFailed(let reason)? = server.recorder.errors.first as? PeerTLSError else {
            return XCTFail("server errors: \(server.recorder.errors)")
        }
        XCTAssertTrue(reason.contains("alert"), reason)
        XCTAssertFalse(server.channel.isActive)
    }

    func testServerRejectsClientFromAnotherCA() throws {
        let f = try CertFixture.shared()
        let client = try makeSide(.client(expectedPeer: "node2"), node: "node1", ca: f.ca,
                                  cert: f.otherCert("node1"), key: f.otherKey("node1"))
        let server = try makeSide(.server, node: "node2")
        try connect(client, server)
        try shuttle(client, server)
        XCTAssertEqual(server.recorder.errors as? [PeerTLSError],
                       [.peerCertificateRejected(reason: "unable to get local issuer certificate")])
        XCTAssertTrue(server.recorder.events.isEmpty)
        // TLS 1.3: the client finished first, then hears the server's alert.
        guard case .handshakeFailed(let reason)? = client.recorder.errors.last as? PeerTLSError else {
            return XCTFail("client errors: \(client.recorder.errors)")
        }
        XCTAssertTrue(reason.contains("unknown ca"), reason)
        XCTAssertFalse(client.channel.isActive)
    }

    func testPeerInitiatedCloseNotifyClosesCleanly() throws {
        let client = try makeSide(.client(expectedPeer: "node2"), node: "node1")
        let server = try makeSide(.server, node: "node2")
        try connect(client, server)
        try shuttle(client, server)
        let closed = server.channel.close()
        try shuttle(client, server)
        XCTAssertNoThrow(try closed.wait())
        XCTAssertFalse(client.channel.isActive)
        XCTAssertTrue(client.recorder.inactive)
        XCTAssertTrue(client.recorder.errors.isEmpty, "\(client.recorder.errors)")
    }

    func testEOFWithoutCloseNotifyIsUncleanShutdown() throws {
        let client = try makeSide(.client(expectedPeer: "node2"), node: "node1")
        let server = try makeSide(.server, node: "node2")
        try connect(client, server)
        try shuttle(client, server)
        // The transport goes away under an active TLS session.
        client.channel.pipeline.fireChannelInactive()
        XCTAssertEqual(client.recorder.errors as? [PeerTLSError], [.uncleanShutdown])
    }

    func testCloseDuringHandshakeClosesAndFailsBufferedWrites() throws {
        let client = try makeSide(.client(expectedPeer: "node2"), node: "node1")
        let early = client.channel.writeAndFlush(buffer("never sent"))
        try connect(client)
        XCTAssertNotNil(try client.channel.readOutbound(as: ByteBuffer.self), "ClientHello")
        XCTAssertNoThrow(try client.channel.close().wait())
        XCTAssertFalse(client.channel.isActive)
        XCTAssertThrowsError(try early.wait())
        XCTAssertTrue(client.recorder.errors.isEmpty, "a requested close is not an error: \(client.recorder.errors)")
    }

    func testCloseGivesUpWaitingForSilentPeer() throws {
        let client = try makeSide(.client(expectedPeer: "node2"), node: "node1")
        let server = try makeSide(.server, node: "node2")
        try connect(client, server)
        try shuttle(client, server)
        let closedBox = LockedBox(false)
        client.channel.close().whenSuccess { closedBox.withLockedValue { $0 = true } }
        var closed: Bool { closedBox.withLockedValue { $0 } }
        XCTAssertNotNil(try client.channel.readOutbound(as: ByteBuffer.self), "close_notify")
        client.channel.embeddedEventLoop.advanceTime(by: .milliseconds(1999))
        XCTAssertFalse(closed)
        client.channel.embeddedEventLoop.advanceTime(by: .milliseconds(1))
        XCTAssertTrue(closed)
        XCTAssertFalse(client.channel.isActive)
        XCTAssertTrue(client.recorder.errors.isEmpty, "\(client.recorder.errors)")
    }

    func testGarbageFromPeerFailsHandshake() throws {
        let server = try makeSide(.server, node: "node2")
        try connect(server)
        try server.channel.writeInbound(buffer("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
        guard case .handshakeFailed(let reason)? = server.recorder.errors.first as? PeerTLSError else {
            return XCTFail("\(server.recorder.errors)")
        }
        XCTAssertFalse(reason.isEmpty)
        XCTAssertFalse(server.channel.isActive)
    }
}
