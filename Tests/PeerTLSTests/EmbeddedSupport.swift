import NIOCore
import NIOEmbedded
import PeerTLS
import XCTest

/// Records what a PeerTLSHandler delivers upwards on an EmbeddedChannel (same thread, no locking).
final class EmbeddedRecorder: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    var events: [PeerTLSEvent] = []
    var errors: [Error] = []
    var received = ""
    var inactive = false

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? PeerTLSEvent { events.append(event) }
    }
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        received += String(buffer: unwrapInboundIn(data))
    }
    // Consumed here so EmbeddedChannel does not rethrow it from the next writeInbound.
    func errorCaught(context: ChannelHandlerContext, error: Error) { errors.append(error) }
    func channelInactive(context: ChannelHandlerContext) { inactive = true }
}

/// Between the channel and the TLS handler: passes writes through until armed, then fails every one,
/// like a transport that can no longer send.
final class FailingWrites: ChannelOutboundHandler {
    typealias OutboundIn = ByteBuffer
    struct InjectedWriteError: Error, Equatable {}
    var armed = false

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if armed { promise?.fail(InjectedWriteError()) } else { context.write(data, promise: promise) }
    }
}

/// One end of a peer connection on an EmbeddedChannel: transport → PeerTLSHandler → recorder.
struct EmbeddedSide {
    let channel: EmbeddedChannel
    let recorder: EmbeddedRecorder
    let transport: FailingWrites

    /// Certificates default to the node's own from the shared fixture; a test swaps any of them.
    init(_ role: PeerTLSRole, node: String, ca: String? = nil, cert: String? = nil, key: String? = nil) throws {
        let f = try CertFixture.shared()
        let context = try PeerTLSContext(caFile: ca ?? f.ca, certificateFile: cert ?? f.cert(node),
                                         privateKeyFile: key ?? f.key(node))
        recorder = EmbeddedRecorder()
        transport = FailingWrites()
        channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandlers(
            transport, PeerTLSHandler(context: context, role: role, closeTimeout: .seconds(2)), recorder)
    }

    func connect() throws {
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 7401)).wait()
    }
}

/// Moves ciphertext both ways until neither side has anything left to say.
func shuttle(_ a: EmbeddedSide, _ b: EmbeddedSide) throws {
    var moved = true
    while moved {
        moved = false
        for (from, to) in [(a, b), (b, a)] {
            while let bytes = try from.channel.readOutbound(as: ByteBuffer.self) {
                moved = true
                if to.channel.isActive { try to.channel.writeInbound(bytes) }
            }
        }
    }
}
