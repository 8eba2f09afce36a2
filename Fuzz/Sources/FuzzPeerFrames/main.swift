import FuzzSupport
import NIOCore
import PeerWire
import Replication
import SecretMemory

#if canImport(Glibc)
import Glibc
#endif

// Fuzz target 1: what a peer can send once TLS is up. The bytes are treated as a stream of
// frames exactly as the node's peer handler does (`nextFrame` until it wants more, `decode` each
// body), so framing, bounds checks and secret copies into the arena all see hostile input.
//
// Oracles beyond "does not crash":
// - a frame that decodes re-encodes to the identical bytes (the format is canonical, so any
//   difference means the decoder accepted something it misread);
// - every secret copied into the arena while decoding is released once the message is dropped.

/// One arena for the whole run: creating one per input would dominate the run time. libFuzzer
/// calls the entry point from one thread only, and the arena is thread-safe anyway.
private let arena: SecretArena = {
    do { return try SecretArena() } catch { fatalError("fuzz: cannot create the secret arena: \(error)") }
}()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzPeerFrames(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    var stream = ByteBuffer(bytes: UnsafeBufferPointer(start: data, count: size))
    decodeStream(&stream)
    let live = arena.statistics.liveSecrets
    if live != 0 { fatalError("fuzz: \(live) secrets still live in the arena after the decoded messages were dropped") }
    return 0
}

private func decodeStream(_ stream: inout ByteBuffer) {
    while true {
        let frame: ByteBuffer
        do {
            guard let next = try PeerFrameCodec.nextFrame(from: &stream) else { return }
            frame = next
        } catch {
            _ = error.description // error messages must be buildable for any input
            return
        }
        let message: PeerMessage
        do {
            message = try PeerFrameCodec.decode(frame, arena: arena)
        } catch {
            _ = error.description
            continue // the node closes the connection; going on only widens what one input covers
        }
        var reencoded = ByteBuffer()
        do {
            try PeerFrameCodec.encode(message, into: &reencoded)
        } catch {
            // The decoder admits no string the encoder would refuse.
            fatalError("fuzz: a decoded peer frame cannot be encoded again: \(error)")
        }
        guard reencoded.readInteger(as: UInt32.self) == UInt32(frame.readableBytes),
              reencoded.readableBytesView.elementsEqual(frame.readableBytesView) else {
            fatalError("fuzz: a decoded peer frame (\(frame.readableBytes) bytes) re-encodes differently: the decoder misread it")
        }
        if case .replication(.delta(let delta, _), _) = message {
            // What the node does next with a delta: chunking must keep every version.
            let chunks = PeerFrameCodec.chunks(of: delta, limit: 256)
            let total = chunks.reduce(0) { $0 + $1.versions.count }
            if total != delta.versions.count { fatalError("fuzz: chunks(of:) lost key versions (\(total) of \(delta.versions.count))") }
            _ = delta.storeDelta
        }
    }
}

@_cdecl("FuzzPeerFrames_main")
public func fuzzPeerFramesMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runFuzzer(argc, argv, fuzzPeerFrames)
}
