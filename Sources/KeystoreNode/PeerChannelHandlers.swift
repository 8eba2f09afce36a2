import Logging
import NIOCore
import PeerTLS
import PeerWire
import SecretMemory

/// Cuts the decrypted byte stream into peer frames and decodes them. A malformed or oversized
/// frame closes this connection only (DESIGN.md Cluster 4).
final class PeerFrameDecoder: ByteToMessageDecoder {
    typealias InboundOut = PeerMessage
    let arena: SecretArena
    let metrics: NodeMetrics

    init(arena: SecretArena, metrics: NodeMetrics) {
        self.arena = arena
        self.metrics = metrics
    }

    func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let frame = try PeerFrameCodec.nextFrame(from: &buffer) else { return .needMoreData }
        let message = try PeerFrameCodec.decode(frame, arena: arena)
        metrics.gossip(direction: "in", type: message.kindLabel, bytes: frame.readableBytes + 4)
        context.fireChannelRead(wrapInboundOut(message))
        return .continue
    }
}

/// The last handler of every peer connection. Inbound (accepted) connections carry the other
/// node's messages to us; the first must be a hello naming a node its certificate names.
/// Outbound (dialed) connections only carry our messages: anything the peer sends there is a
/// protocol error.
final class PeerConnectionHandler: ChannelInboundHandler {
    typealias InboundIn = PeerMessage

    enum Direction { case inbound, outbound(node: String) }

    private let direction: Direction
    private unowned let shell: ClusterShell
    private let logger: Logger
    private var certificateNames: [String]?
    private var peer: PeerIdentity?

    init(direction: Direction, shell: ClusterShell, logger: Logger) {
        self.direction = direction
        self.shell = shell
        self.logger = logger
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .handshakeCompleted(let names, _) = event as? PeerTLSEvent {
            certificateNames = names
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let message = unwrapInboundIn(data)
        guard case .inbound = direction else {
            logger.warning("peer sent data on a connection we dialed; closing it")
            context.close(promise: nil)
            return
        }
        if let peer {
            shell.receive(message, from: peer)
            return
        }
        guard case .hello(let hello) = message else {
            logger.warning("peer connection from \(context.remoteAddress?.description ?? "?") did not start with hello; closing")
            context.close(promise: nil)
            return
        }
        guard let names = certificateNames, names.contains(hello.node) else {
            logger.warning("peer claims to be \(hello.node) but its certificate names \(certificateNames ?? []); closing")
            context.close(promise: nil)
            return
        }
        guard let identity = shell.admit(hello) else {
            context.close(promise: nil)
            return
        }
        peer = identity
        admissionDeadline?.cancel()
        admissionDeadline = nil
        shell.leftUnadmitted()
    }

    /// Unadmitted inbound connections (no verified hello yet) are bounded in time: a peer port
    /// reachable by anyone must not let strangers hold sockets open forever.
    private var admissionDeadline: Scheduled<Void>?
    private var counted = false

    func handlerAdded(context: ChannelHandlerContext) {
        guard case .inbound = direction else { return }
        counted = true
        let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        let logger = self.logger
        admissionDeadline = context.eventLoop.scheduleTask(in: ClusterShell.admissionTimeout) {
            logger.warning("peer connection from \(loopBound.value.remoteAddress?.description ?? "?") sent no valid hello within \(ClusterShell.admissionTimeout); closing")
            loopBound.value.close(promise: nil)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        admissionDeadline?.cancel()
        if counted && peer == nil { shell.leftUnadmitted() }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        switch direction {
        case .inbound:
            logger.warning("peer connection from \(peer?.node ?? context.remoteAddress?.description ?? "?") failed: \(error)")
        case .outbound(let node):
            logger.notice("connection to peer \(node) failed: \(error)")
        }
        context.close(promise: nil)
    }
}

/// Who is on the other end of an admitted inbound connection.
struct PeerIdentity: Sendable {
    var node: String
    var instance: UInt64
    var address: String
    var softwareVersion: String
}
