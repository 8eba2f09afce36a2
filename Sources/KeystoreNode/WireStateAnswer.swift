import PeerWire
import Replication
import ReplicatedStore
import SecretMemory

/// The node's answer to a joining peer (`ReplicaContent.stateAnswer`), chunked by the wire
/// codec's sizes one chunk at a time, as the connection drains: a walk over a copy of the store
/// taken when the request arrived, with the secrets of the key versions held then.
///
/// The copies cost nothing until the node changes its state during the answer; that change then
/// copies what it touches, once (the certificate slots of 100,000 records: ~18 MB). A version
/// pruned meanwhile keeps its secret referenced, not zeroed, until the answer is done, as the
/// chunks of an answer built whole did.
struct WireStateAnswer: StateAnswer {
    private var walk: StateWalk
    private let secrets: [VersionID: SecretBytes]
    private var chunker: WireDeltaChunker
    /// Chunks closed and not given yet (one entry can close a chunk; a key's versions, several).
    private var closed: [WireDelta] = []

    init(walk: StateWalk, secrets: [VersionID: SecretBytes], chunkBytes: Int) {
        self.walk = walk
        self.secrets = secrets
        self.chunker = WireDeltaChunker(limit: chunkBytes)
    }

    mutating func nextChunk() -> WireDelta? {
        while closed.isEmpty, let entry = walk.next() {
            switch entry {
            case .pskFingerprint(let fingerprint):
                chunker.add(fingerprint)
            case .tokenFloor(let floor):
                if let full = chunker.add(floor) { closed.append(full) }
            case .keyVersions(let key, let versions):
                // A version whose secret is gone was pruned before the answer began: left out.
                for version in versions {
                    guard let secret = secrets[version.id] else { continue }
                    if let full = chunker.add(WireKeyVersion(key: key, version: version, secret: secret)) { closed.append(full) }
                }
            case .certificate(let record):
                if let full = chunker.add(record) { closed.append(full) }
            }
        }
        return closed.isEmpty ? chunker.finish() : closed.removeFirst()
    }

    mutating func rewind() {
        walk.rewind()
        chunker = WireDeltaChunker(limit: chunker.limit)
        closed = []
    }
}
