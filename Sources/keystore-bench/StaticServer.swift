import ArgumentParser
import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix

/// A reference server with no application work: a fixed body, served either through the same
/// NIOHTTP1 pipeline keystored uses or through a bare "find the blank line, write a prebuilt
/// response" handler. Rows against it separate NIO's own per-request cost from keystored's.
struct StaticServer: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "static-server", abstract: "Serve a fixed body over a Unix socket (a floor to compare keystored with).")

    @Option(help: "Unix socket to listen on.") var socket: String
    @Option(help: "File whose bytes are the response body.") var bodyFile: String
    @Option(help: "nio-http1 (configureHTTPServerPipeline, like keystored) or raw (no HTTP codec).") var mode = "nio-http1"
    @Option(help: "Event-loop threads.") var threads = 2

    func run() async throws {
        guard let body = FileManager.default.contents(atPath: bodyFile) else {
            throw BenchError.badArgument("--body-file \(bodyFile) cannot be read")
        }
        guard mode == "nio-http1" || mode == "raw" else { throw BenchError.badArgument("--mode must be nio-http1 or raw") }
        var bodyBuffer = ByteBufferAllocator().buffer(capacity: body.count)
        bodyBuffer.writeBytes(body)
        var full = ByteBufferAllocator().buffer(capacity: body.count + 128)
        full.writeString("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: \(body.count)\r\ncache-control: no-store\r\n\r\n")
        full.writeBytes(body)
        let (fixedBody, fixedResponse, raw) = (bodyBuffer, full, mode == "raw")
        unlink(socket)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
        let channel = try await ServerBootstrap(group: group)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if raw {
                        try channel.pipeline.syncOperations.addHandler(RawResponder(response: fixedResponse))
                    } else {
                        try channel.pipeline.syncOperations.configureHTTPServerPipeline(
                            withPipeliningAssistance: true, withErrorHandling: false)
                        try channel.pipeline.syncOperations.addHandler(HTTP1Responder(body: fixedBody))
                    }
                }
            }
            .bind(unixDomainSocketPath: socket).get()
        print("static-server (\(mode)) listening on \(socket)")
        fflush(nil)
        try await channel.closeFuture.get()
    }
}

final class HTTP1Responder: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart
    let body: ByteBuffer
    init(body: ByteBuffer) { self.body = body }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .end = unwrapInboundIn(data) else { return }
        var headers = HTTPHeaders()
        headers.add(name: "content-type", value: "application/json")
        headers.add(name: "content-length", value: String(body.readableBytes))
        headers.add(name: "cache-control", value: "no-store")
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .ok, headers: headers))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
    }
}

/// Answers every request (anything up to a blank line; bodies are not supported) with one write.
final class RawResponder: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    let response: ByteBuffer
    var pending: ByteBuffer?
    init(response: ByteBuffer) { self.response = response }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buf = unwrapInboundIn(data)
        if var p = pending { p.writeBuffer(&buf); buf = p; pending = nil }
        var answered = false
        while let end = buf.withUnsafeReadableBytes({ Self.blankLine($0) }) {
            buf.moveReaderIndex(forwardBy: end)
            context.write(wrapOutboundOut(response), promise: nil)
            answered = true
        }
        if buf.readableBytes > 0 { pending = buf }
        if answered { context.flush() }
    }

    /// Offset just past the first "\r\n\r\n", if any.
    private static func blankLine(_ bytes: UnsafeRawBufferPointer) -> Int? {
        var i = 3
        while i < bytes.count {
            if bytes[i] == 10 && bytes[i - 1] == 13 && bytes[i - 2] == 10 && bytes[i - 3] == 13 { return i + 1 }
            i += 1
        }
        return nil
    }
}
