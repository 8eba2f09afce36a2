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

/// The last handler of every peer connection; lives on the cluster loop like `ClusterLoop`.
///
/// - Inbound (accepted): the first message must be a hello naming a node the TLS certificate
///   names; until then the connection holds an admission slot and has `admissionTimeout` to get
///   there. Once admitted, messages go to the shell; a dialer from 0.2 on also gets our hello back
///   and our messages on this connection.
/// - Outbound (dialed): usable for our messages once TLS completes. A peer from 0.2 on answers our
///   hello with its own, after which its messages arrive here too; anything before that hello is
///   a protocol error (a 0.1.0 peer sends nothing here at all).
final class PeerConnectionHandler: ChannelInboundHandler {
    typealias InboundIn = PeerMessage

    enum Direction { case inbound, outbound(node: String) }

    private let direction: Direction
    private unowned let shell: ClusterLoop
    private let logger: Logger
    private var certificateNames: [String]?
    private var peer: PeerIdentity?
    private var tlsDone = false
    private var tlsFailure: PeerTLSError?
    private var handshakeDeadline: Scheduled<Void>?

    init(direction: Direction, shell: ClusterLoop, logger: Logger) {
        self.direction = direction
        self.shell = shell
        self.logger = logger
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        let logger = self.logger
        switch direction {
        case .inbound:
            // Unadmitted inbound connections are bounded in time: a peer port reachable by anyone
            // must not let strangers hold sockets open.
            handshakeDeadline = context.eventLoop.scheduleTask(in: ClusterLoop.admissionTimeout) {
                logger.warning("peer connection from \(loopBound.value.remoteAddress?.description ?? "?") sent no valid hello within \(ClusterLoop.admissionTimeout); closing")
                loopBound.value.close(promise: nil)
            }
        case .outbound:
            // Started once TCP is up (`channelActive`): until then the connect timeout applies.
            break
        }
    }

    func channelActive(context: ChannelHandlerContext) {
        if case .outbound(let node) = direction, !tlsDone {
            let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
            let logger = self.logger
            handshakeDeadline = context.eventLoop.scheduleTask(in: ClusterLoop.admissionTimeout) {
                logger.notice("peer \(node) accepted the connection but did not complete TLS within \(ClusterLoop.admissionTimeout); closing")
                loopBound.value.close(promise: nil)
            }
        }
        context.fireChannelActive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        handshakeDeadline?.cancel()
        handshakeDeadline = nil
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .handshakeCompleted(let names, _) = event as? PeerTLSEvent {
            certificateNames = names
            tlsDone = true
            if case .outbound(let node) = direction {
                handshakeDeadline?.cancel()
                handshakeDeadline = nil
                shell.outboundReady(node: node, channel: context.channel)
            }
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let message = unwrapInboundIn(data)
        if let peer {
            shell.receive(message, from: peer)
            return
        }
        guard let identity = greet(message, on: context) else {
            context.close(promise: nil)
            return
        }
        peer = identity
        handshakeDeadline?.cancel()
        handshakeDeadline = nil
    }

    /// The first message must be a hello from the node the certificate names (inbound) or from
    /// the node we dialled (outbound); the shell then admits it. Nil: close the connection.
    private func greet(_ message: PeerMessage, on context: ChannelHandlerContext) -> PeerIdentity? {
        guard case .hello(let hello) = message else {
            switch direction {
            case .inbound:
                logger.warning("peer connection from \(context.remoteAddress?.description ?? "?") did not start with hello; closing")
            case .outbound(let node):
                logger.warning("peer \(node) sent data before its hello on a connection we dialed; closing it")
            }
            return nil
        }
        switch direction {
        case .inbound:
            guard let names = certificateNames, names.contains(hello.node) else {
                logger.warning("peer claims to be \(hello.node) but its certificate names \(certificateNames ?? []); closing")
                return nil
            }
            return shell.admit(hello, on: context.channel)
        case .outbound(let node):
            guard hello.node == node else {
                logger.warning("peer \(node) answered with a hello naming \(hello.node); closing")
                return nil
            }
            return shell.answered(hello, on: context.channel)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        handshakeDeadline?.cancel()
        handshakeDeadline = nil
        switch direction {
        case .inbound:
            shell.inboundClosed(context.channel, admitted: peer)
        case .outbound(let node):
            shell.outboundClosed(node: node, channel: context.channel, tlsDone: tlsDone, tlsFailure: tlsFailure, answered: peer != nil)
        }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if let tls = error as? PeerTLSError, tlsFailure == nil { tlsFailure = tls }
        switch direction {
        case .inbound:
            logger.warning("peer connection from \(peer?.node ?? context.remoteAddress?.description ?? "?") failed: \(error)")
        case .outbound(let node):
            logger.notice("connection to peer \(node) failed: \(error)")
        }
        context.close(promise: nil)
    }
}

/// Who is on the other end of an admitted connection.
struct PeerIdentity: Sendable {
    var node: String
    var instance: UInt64
    var address: String
    var softwareVersion: String
    /// What its decoder understands and whether it takes answers on its own dial.
    var features: PeerWireFeatures
}
