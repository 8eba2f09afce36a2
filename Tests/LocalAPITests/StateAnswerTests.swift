import Foundation
import KeystoreConfig
@testable import KeystoreNode
import PeerWire
import ReplicatedStore
import SecretMemory
import XCTest

/// The node's answer to a joining peer, produced a chunk at a time (`WireStateAnswer`): it is
/// the state as of the request whatever the node does while it is sent, it starts over the same
/// on `rewind`, and a peer holding the node's durable records gets the keys alone.
final class StateAnswerTests: XCTestCase {
    private var directory = ""

    override func setUpWithError() throws {
        directory = try scratchNodeDirectory("state-answer")
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(atPath: directory)
    }

    private struct Sent: Hashable {
        var key: KeyRef
        var id: VersionID
        var secret: [UInt8]
    }

    private func makeState(keys: Int) throws -> NodeState {
        let keyList = (0..<keys).map { "{ \"name\": \"k\($0)\", \"type\": \"ram\" }" }.joined(separator: ", ")
        let json = """
        { "cluster": "c", "ram_key_size": 512, "tls": { "ca": "ca.pem", "cert": "{node}.pem", "key": "{node}.key" },
          "nodes": { "node1": { "peer": "127.0.0.1:7401", "socket": "/tmp/r.sock", "data_dir": "data" } },
          "domains": { "first.com": { "keys": [ \(keyList) ] } } }
        """
        let config = try ClusterConfig.parse(json: Array(json.utf8), configDirectory: directory, node: "node1")
        let state = NodeState(config: config, arena: try SecretArena())
        _ = try state.becomeReady()
        return state
    }

    private func certificate(_ n: Int, removal: CertificateRemoval? = nil) -> CertificateRecord {
        let user = "u\(n)@first.com"
        let content = CertificateContent(name: "phone", der: [0x30] + Array(repeating: UInt8(n & 0xff), count: 300), notBeforeMillis: 0,
                                         notAfterMillis: 4_102_444_800_000, jids: [user], noCertManagement: false,
                                         added: HLCTimestamp(wallMillis: 1_000 + UInt64(n), logical: 0), origin: "node1")
        return CertificateRecord(id: CertificateID(domain: "first.com", user: user, sha256: Array(repeating: UInt8(n & 0xff), count: 31) + [7]),
                                 content: content, removal: removal)
    }

    private func drain(_ answer: inout WireStateAnswer) -> (chunks: [WireDelta], versions: [Sent], certificates: [CertificateRecord]) {
        var chunks: [WireDelta] = []
        while let chunk = answer.nextChunk() {
            XCTAssertFalse(chunk.isEmpty, "an empty chunk was produced")
            chunks.append(chunk)
            if chunks.count > 10_000 { XCTFail("the answer never ends"); break }
        }
        let versions = chunks.flatMap(\.versions).map { v in
            Sent(key: v.key, id: v.version.id, secret: v.secret.withUnsafeBytes { Array($0) })
        }
        return (chunks, versions, chunks.flatMap(\.certificates))
    }

    /// What the state holds now, as an answer would carry it.
    private func held(_ state: NodeState, keys: Int) -> [Sent] {
        let refs = (0..<keys).map { KeyRef(domain: "first.com", name: "k\($0)") }
        let delta = StoreDelta(keyVersions: Dictionary(uniqueKeysWithValues: refs.map { ($0, state.versionViews($0).map(\.version)) }))
        return state.wireDelta(for: delta).versions.map { v in
            Sent(key: v.key, id: v.version.id, secret: v.secret.withUnsafeBytes { Array($0) })
        }
    }

    func testTheAnswerIsTheStateAsOfTheRequestWhateverChangesWhileItIsSent() throws {
        let state = try makeState(keys: 40)
        let records = (0..<30).map { certificate($0) }
        _ = state.applyRegistry(certificates: records, nowMillis: 2_000)
        let keysBefore = held(state, keys: 40)
        XCTAssertEqual(keysBefore.count, 40)

        // 4 KiB chunks: ~6 key versions of 512 bytes, or ~7 certificates, each.
        var answer = state.stateAnswer(peerDurableDigests: nil, chunkBytes: 4096)
        let first = try XCTUnwrap(answer.nextChunk())
        // While it is sent: rotations, a revocation, a new registration.
        for n in 0..<5 { _ = try state.rotate(KeyRef(domain: "first.com", name: "k\(n * 7)")) }
        let revocation = CertificateRemoval(kind: .revoked, stamp: HLCTimestamp(wallMillis: 3_000, logical: 0), origin: "node1")
        _ = state.applyRegistry(certificates: [certificate(29, removal: revocation), certificate(99)], nowMillis: 3_000)
        XCTAssertEqual(held(state, keys: 40).count, 45, "the rotations took effect")
        XCTAssertNotNil(state.certificateRecord(certificate(99).id))

        var rest = drain(&answer)
        rest.chunks.insert(first, at: 0)
        let versions = first.versions.map { v in Sent(key: v.key, id: v.version.id, secret: v.secret.withUnsafeBytes { Array($0) }) } + rest.versions
        // XCTAssertTrue, not XCTAssertEqual: a failure must not print the secrets.
        XCTAssertTrue(Set(versions) == Set(keysBefore), "every key version held at the request, with its secret, and nothing newer")
        XCTAssertEqual(versions.count, keysBefore.count, "each version once")
        let certificates = first.certificates + rest.certificates
        XCTAssertEqual(certificates.count, records.count)
        XCTAssertEqual(Set(certificates.map(\.id)), Set(records.map(\.id)))
        for record in certificates { XCTAssertNil(record.removal, "a change made after the request was sent as part of it") }
        XCTAssertGreaterThan(rest.chunks.count, 10, "4 KiB chunks")
        for chunk in rest.chunks {
            let cost = chunk.versions.reduce(0) { $0 + $1.secret.count + 128 } + chunk.certificates.reduce(0) { $0 + ($1.content?.der.count ?? 0) + 256 }
            XCTAssertLessThanOrEqual(cost, 4096)
        }

        // A new connection: the same answer again, from its first chunk.
        answer.rewind()
        let again = drain(&answer)
        XCTAssertEqual(again.chunks.count, rest.chunks.count)
        XCTAssertTrue(Set(again.versions) == Set(keysBefore), "the rewound answer carries the same key versions")
        XCTAssertTrue(again.certificates == certificates, "the rewound answer carries the same records in the same order")
        XCTAssertNil(answer.nextChunk(), "a finished answer stays finished")
    }

    func testAPeerHoldingTheDurableRecordsGetsTheKeysAlone() throws {
        let state = try makeState(keys: 12)
        _ = state.applyRegistry(certificates: (0..<20).map { certificate($0) }, nowMillis: 2_000)
        var same = state.stateAnswer(peerDurableDigests: state.durableBucketDigests, chunkBytes: 4096)
        let sent = drain(&same)
        XCTAssertTrue(Set(sent.versions) == Set(held(state, keys: 12)), "every key version, with its secret")
        XCTAssertEqual(sent.certificates, [])

        var empty = state.stateAnswer(peerDurableDigests: Array(repeating: 0, count: state.durableBucketDigests.count), chunkBytes: 4096)
        XCTAssertEqual(Set(drain(&empty).certificates.map(\.id)), Set((0..<20).map { certificate($0).id }))
    }
}
