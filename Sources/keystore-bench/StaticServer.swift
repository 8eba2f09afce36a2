import ArgumentParser
import Foundation
import NIOCore
import NIOPosix

/// A reference server with no application work: a fixed body, served by a bare "find the blank
/// line, write a prebuilt response" NIO handler with as many event loops as keystored. Its row in
/// `bench/run.sh get-key` is the floor a Swift NIO server pays per request (event loop, channel
/// pipeline, read and write), to tell it apart from what keystored itself costs.
struct StaticServer: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "static-server", abstract: "Serve a fixed body over a Unix socket with bare NIO (a floor to compare keystored with).")

    @Option(help: "Unix socket to listen on.") var socket: String
    @Option(help: "File whose bytes are the response body.") var bodyFile: String
    @Option(help: "Event-loop threads (keystored: min(cores, 4)).") var threads = min(System.coreCount, 4)

    func run() async throws {
        guard let body = FileManager.default.contents(atPath: bodyFile) else {
            throw BenchError.badArgument("--body-file \(bodyFile) cannot be read")
        }
        var full = ByteBufferAllocator().buffer(capacity: body.count + 128)
        full.writeString("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: \(body.count)\r\ncache-control: no-store\r\n\r\n")
        full.writeBytes(body)
        let fixedResponse = full
        unlink(socket)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
        let channel = try await ServerBootstrap(group: group)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(RawResponder(response: fixedResponse))
                }
            }
            .bind(unixDomainSocketPath: socket).get()
        print("static-server listening on \(socket)")
        fflush(nil)
        try await channel.closeFuture.get()
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
