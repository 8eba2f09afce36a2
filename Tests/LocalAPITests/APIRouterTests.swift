import Foundation
import KeystoreAPI
import KeystoreConfig
@testable import KeystoreNode
import LocalAPI
import Logging
import NIOCore
import NIOEmbedded
import NIOHTTP1
import PeerWire
import RegistryDatabase
import ReplicatedStore
import Synchronization
import SecretMemory
import XCTest

/// The router against a real NodeState (no sockets): routes, ACL decisions, JSON shapes.
final class APIRouterTests: XCTestCase {
    final class Environment: NodeEnvironment {
        let node: String
        init(node: String) { self.node = node }
        func clusterStatus() -> ClusterStatus { ClusterStatus(members: [], aliveNodes: [node]) }
        var memoryLocked: Bool { true }
    }

    var directory: String!
    var operations: NodeOperations!
    var state: NodeState { operations.state }
    final class Published: Sendable { let deltas = Mutex<[WireDelta]>([]) }
    let published = Published()
    var router: APIRouter!
    let loop = EmbeddedEventLoop()

    override func setUpWithError() throws {
        directory = try scratchNodeDirectory("router", files: ["psk": " psk-value \n"])
        let json = """
        { "cluster": "c", "tls": { "ca": "ca.pem", "cert": "{node}.pem", "key": "{node}.key" },
          "nodes": { "node1": { "peer": "127.0.0.1:7401", "socket": "/tmp/r.sock", "data_dir": "data" } },
          "domains": { "first.com": { "keys": [ { "name": "token_secret", "type": "ram" },
                                                { "name": "psk", "type": "file", "path": "psk" } ] },
                       "second.com": { "ram_key_size": 32, "keys": [ { "name": "token_secret", "type": "ram" } ] } },
          "clients": [ { "uid": 1001, "domains": ["first.com"], "allow": ["keys:read"] },
                       { "uid": 1002, "domains": ["*"], "allow": ["cluster:read"] } ] }
        """
        let config = try ClusterConfig.parse(json: Array(json.utf8), configDirectory: directory, node: "node1")
        let state = NodeState(config: config, arena: try SecretArena())
        _ = try state.loadFileKeys()
        let logger = Logger(label: "test")
        let database = try RegistryDatabase(directory: directory + "/data")
        operations = NodeOperations(state: state, registry: RegistryWriter(database: database),
                                    events: EventHub(nodeName: state.nodeName, logger: logger), logger: logger, metrics: NodeMetrics(registry: nil))
        let published = self.published
        operations.attachPublisher { wire in published.deltas.withLock { $0.append(wire) } }
        router = APIRouter(node: operations, environment: Environment(node: state.nodeName), daemonUID: 0)
    }

    override func tearDown() async throws {
        await operations.registry.close()
        try? FileManager.default.removeItem(atPath: directory)
    }

    private func call(_ method: HTTPMethod, _ uri: String, uid: UInt32 = 0, gid: UInt32 = 0) throws -> (Int, [String: Any]) {
        let request = APIRequest(method: method, uri: uri, headers: [:], body: ByteBuffer(),
                                 caller: PeerCredentials(pid: 1, uid: uid, gid: gid), requestID: 1)
        guard case .response(let response) = router.handle(request, allocator: ByteBufferAllocator(), eventLoop: loop) else {
            XCTFail("expected an immediate response"); return (0, [:])
        }
        let json = try JSONSerialization.jsonObject(with: Data(response.body.readableBytesView)) as? [String: Any] ?? [:]
        return (Int(response.status.code), json)
    }

    func testRAMKeysAreNotReadyBeforeTheJoinDecisionFileKeysAre() throws {
        let (status, body) = try call(.GET, "/v1/domains/first.com/keys/token_secret")
        XCTAssertEqual(status, 503)
        XCTAssertEqual(body["error"] as? String, "not_ready")
        let (fileStatus, file) = try call(.GET, "/v1/domains/first.com/keys/psk")
        XCTAssertEqual(fileStatus, 200)
        let versions = file["versions"] as? [[String: Any]]
        XCTAssertEqual((versions?.first?["key"] as? String).flatMap { Data(base64Encoded: $0) }, Data("psk-value".utf8))
        let (_, health) = try call(.GET, "/v1/health")
        XCTAssertEqual(health["ready"] as? Bool, false)
    }

    func testKeyShapesAfterReady() throws {
        let created = try operations.becomeReady()
        XCTAssertEqual(created, 2)
        let (status, body) = try call(.GET, "/v1/domains/second.com/keys/token_secret")
        XCTAssertEqual(status, 200)
        XCTAssertEqual(body["domain"] as? String, "second.com")
        XCTAssertEqual(body["type"] as? String, "ram")
        let version = try XCTUnwrap((body["versions"] as? [[String: Any]])?.first)
        XCTAssertEqual(version["primary"] as? Bool, true)
        XCTAssertEqual((version["key"] as? String).flatMap { Data(base64Encoded: $0) }?.count, 32)
        XCTAssertNotNil(VersionID(version["id"] as? String ?? ""))
        XCTAssertTrue((version["created"] as? String)?.hasSuffix("Z") ?? false)

        let (_, list) = try call(.GET, "/v1/domains/first.com/keys")
        let keys = try XCTUnwrap(list["keys"] as? [[String: Any]])
        XCTAssertEqual(keys.map { $0["name"] as? String }, ["token_secret", "psk"])
        XCTAssertFalse(String(describing: list).contains("\"key\""), "listing carries no key material")

        let (rotated, meta) = try call(.POST, "/v1/domains/first.com/keys/token_secret/rotate")
        XCTAssertEqual(rotated, 200)
        XCTAssertEqual((meta["versions"] as? [[String: Any]])?.count, 2)
        XCTAssertNil((meta["versions"] as? [[String: Any]])?.first?["key"])
        XCTAssertEqual(published.deltas.withLock { $0.count }, 2, "the new keys, then the rotation, are pushed to peers")
    }

    func testACLIsCheckedBeforeExistence() throws {
        _ = try operations.becomeReady()
        XCTAssertEqual(try call(.GET, "/v1/domains/first.com/keys/token_secret", uid: 1001, gid: 1001).0, 200)
        XCTAssertEqual(try call(.GET, "/v1/domains/second.com/keys/token_secret", uid: 1001, gid: 1001).0, 403)
        XCTAssertEqual(try call(.GET, "/v1/domains/nowhere.org/keys/x", uid: 1001, gid: 1001).0, 403, "no probing of other domains")
        XCTAssertEqual(try call(.POST, "/v1/domains/first.com/keys/token_secret/rotate", uid: 1001, gid: 1001).0, 403)
        XCTAssertEqual(try call(.GET, "/v1/cluster", uid: 1001, gid: 1001).0, 403)
        XCTAssertEqual(try call(.GET, "/v1/cluster", uid: 1002, gid: 1002).0, 200)
        XCTAssertEqual(try call(.POST, "/v1/reload", uid: 1002, gid: 1002).0, 403)
        XCTAssertEqual(try call(.GET, "/v1/health", uid: 4321, gid: 4321).0, 200, "health needs only a connection")
        let (status, body) = try call(.GET, "/v1/domains/second.com/keys", uid: 1001, gid: 1001)
        XCTAssertEqual(status, 403)
        XCTAssertEqual(body["error"] as? String, "forbidden")
        XCTAssertTrue((body["message"] as? String)?.contains("uid 1001") ?? false)
    }

    func testUnknownRoutesMethodsAndBadPaths() throws {
        XCTAssertEqual(try call(.GET, "/v1/nothing").0, 404)
        XCTAssertEqual(try call(.DELETE, "/v1/domains/first.com/keys").0, 405)
        XCTAssertEqual(try call(.GET, "/v1/domains/first.com/keys/%E0%80").0, 400, "invalid UTF-8")
        XCTAssertEqual(try call(.GET, "/v1/domains/first.com/keys/a%00b").0, 400, "NUL byte")
        XCTAssertEqual(try call(.GET, "/v1/domains/first.com/keys/nope").0, 404, "an unconfigured key is unknown even before ready")
        _ = try operations.becomeReady()
        XCTAssertEqual(try call(.GET, "/v1/domains/first.com/keys/nope").0, 404)
        XCTAssertEqual(try call(.GET, "/v1/domains/first.com/keys/..%2F..%2Fetc").0, 404, "a decoded path trick is just an unknown key")
        XCTAssertEqual(try call(.POST, "/v1/domains/first.com/keys/psk/rotate").0, 400, "file keys cannot be rotated")
    }

    func testMetricLabelsAreRouteTemplatesOnly() {
        func label(_ method: String, _ path: [String]) -> String { APIRouter.metricLabel(RouteTable.match(method: method, segments: path)) }
        XCTAssertEqual(label("GET", ["v1", "domains", "first.com", "keys", "token_secret"]), "/v1/domains/{d}/keys/{k}")
        XCTAssertEqual(label("POST", ["v1", "domains", "x", "users", "alice", "certs", "phone", "revoke"]),
                       "/v1/domains/{d}/users/{u}/certs/{name}/revoke")
        XCTAssertEqual(label("GET", ["v1", "random-\(UUID().uuidString)"]), "other", "made-up paths must not mint series")
        XCTAssertEqual(label("GET", ["v1", "domains", "d", "whatever", "x"]), "other")
        XCTAssertEqual(label("GET", ["metrics"]), "/metrics")
    }

    func testPathDecoding() {
        XCTAssertEqual(APIRequest.decodePath("/v1/domains/a%40b/keys?x=1"), ["v1", "domains", "a@b", "keys"])
        XCTAssertEqual(APIRequest.decodePath("/v1/health/"), ["v1", "health"])
        XCTAssertNil(APIRequest.decodePath("v1/health"))
        XCTAssertNil(APIRequest.decodePath("/v1/%zz"))
        XCTAssertNil(APIRequest.decodePath("/v1/%4"))
        XCTAssertEqual(APIRequest.decodePath("/"), [""])
        XCTAssertEqual(APIRequest.decodePath("/v1//x"), ["v1", "", "x"])
        XCTAssertEqual(APIRequest.decodePath("/a%2Fb/%C3%A9#frag"), ["a/b", "é"])
        XCTAssertEqual(APIRequest.decodePath("http://localhost/v1/health?x=/y"), ["v1", "health"], "absolute form")
        XCTAssertEqual(APIRequest.decodePath("https://localhost"), [""])
        XCTAssertNil(APIRequest.decodePath("?/v1"))
        XCTAssertNil(APIRequest.decodePath("/a%00b"))
        XCTAssertNil(APIRequest.decodePath("/%C3"), "invalid UTF-8 after decoding")
    }

    func testQueryIsWhatFollowsTheFirstQuestionMarkUpToAFragment() {
        func query(_ uri: String) -> String {
            String(APIRequest(method: .GET, uri: uri, headers: [:], body: ByteBuffer(),
                              caller: PeerCredentials(pid: 1, uid: 0, gid: 0), requestID: 1).query)
        }
        XCTAssertEqual(query("/v1/domains/first.com/users/a%40first.com/certs?all=1"), "all=1")
        XCTAssertEqual(query("/v1/events?since=42&x=%3F#frag?no"), "since=42&x=%3F")
        XCTAssertEqual(query("/v1/events?a=b?c"), "a=b?c", "a later '?' belongs to the query")
        XCTAssertEqual(query("/v1/é/x?q=é#f"), "q=é", "non-ASCII around the delimiters")
        XCTAssertEqual(query("/v1/health?"), "")
        XCTAssertEqual(query("/v1/health#f"), "")
        XCTAssertEqual(query("/v1/health"), "")
    }

    // MARK: Prepared get-key bodies (PreparedResponses.swift)

    private func rawGetKey(_ uri: String) throws -> (status: UInt, body: [UInt8]) {
        let request = APIRequest(method: .GET, uri: uri, headers: [:], body: ByteBuffer(),
                                 caller: PeerCredentials(pid: 1, uid: 0, gid: 0), requestID: 1)
        guard case .response(let response) = router.handle(request, allocator: ByteBufferAllocator(), eventLoop: loop) else {
            XCTFail("expected an immediate response"); return (0, [])
        }
        return (response.status.code, Array(response.body.readableBytesView))
    }

    private var preparedCount: Int { state.preparedCount }

    func testGetKeyBodiesArePreparedOnceInSecretMemoryAndReplacedOnEveryChange() throws {
        _ = try operations.becomeReady()
        let ram = "/v1/domains/first.com/keys/token_secret"
        let arena = state.arena
        let secretsBefore = arena.statistics.liveSecrets
        let first = try rawGetKey(ram)
        XCTAssertEqual(first.status, 200)
        XCTAssertEqual(preparedCount, 1)
        XCTAssertEqual(arena.statistics.liveSecrets, secretsBefore + 1, "the prepared body lives in the secret arena")
        XCTAssertEqual(try rawGetKey(ram).body, first.body, "served again from the prepared body")
        XCTAssertEqual(arena.statistics.liveSecrets, secretsBefore + 1, "not rebuilt")

        // Rotation: replaced (the old body's slot is released, the new one shows both versions).
        XCTAssertEqual(try call(.POST, "/v1/domains/first.com/keys/token_secret/rotate").0, 200)
        XCTAssertEqual(preparedCount, 0, "a rotation drops the key's prepared body")
        let rotated = try JSONSerialization.jsonObject(with: Data(try rawGetKey(ram).body)) as? [String: Any]
        let versions = try XCTUnwrap(rotated?["versions"] as? [[String: Any]])
        XCTAssertEqual(versions.count, 2)
        XCTAssertEqual(versions[1]["key"] as? String, (try JSONSerialization.jsonObject(with: Data(first.body)) as? [String: Any])
            .flatMap { ($0["versions"] as? [[String: Any]])?.first?["key"] as? String }, "the old primary is still served")

        // Merge from a peer: a newer generation arrives, the prepared body follows it.
        let before = try rawGetKey(ram).body
        let peerBytes = [UInt8](repeating: 7, count: 2048)
        let peerSecret = try peerBytes.withUnsafeBytes { try SecretBytes.copy(of: $0, in: arena) }
        let peerVersion = KeyVersion(id: VersionID(created: HLCTimestamp(wallMillis: UInt64(Date().timeIntervalSince1970 * 1000), logical: 9), origin: "node2"),
                                     generation: 99)
        let (outcome, _) = state.mergeRemoteKeys(WireDelta(versions: [WireKeyVersion(key: KeyRef(domain: "first.com", name: "token_secret"),
                                                                                       version: peerVersion, secret: peerSecret)]))
        XCTAssertEqual(outcome.added.count, 1)
        let merged = try rawGetKey(ram).body
        XCTAssertNotEqual(merged, before)
        let mergedJSON = try JSONSerialization.jsonObject(with: Data(merged)) as? [String: Any]
        let primary = try XCTUnwrap((mergedJSON?["versions"] as? [[String: Any]])?.first)
        XCTAssertEqual(primary["id"] as? String, peerVersion.id.description)
        XCTAssertEqual((primary["key"] as? String).flatMap { Data(base64Encoded: $0) }, Data(repeating: 7, count: 2048))

        // PSK reload: the file key's body is replaced too.
        let psk = "/v1/domains/first.com/keys/psk"
        XCTAssertEqual(try rawGetKey(psk).status, 200)
        try Data("second-psk".utf8).write(to: URL(fileURLWithPath: "\(directory!)/psk"))
        XCTAssertEqual(try state.loadFileKeys().changed, [KeyRef(domain: "first.com", name: "psk")])
        let reloaded = try JSONSerialization.jsonObject(with: Data(try rawGetKey(psk).body)) as? [String: Any]
        XCTAssertEqual(((reloaded?["versions"] as? [[String: Any]])?.first?["key"] as? String).flatMap { Data(base64Encoded: $0) },
                       Data("second-psk".utf8))
    }

    func testAPreparedBodyIsOnlyValidUntilAVersionInItExpires() throws {
        var prepared = PreparedResponses()
        let arena = state.arena
        let body = try SecretBytes.random(count: 16, in: arena)
        let ref = KeyRef(domain: "first.com", name: "token_secret")
        prepared.store(body, for: ref, validUntilMillis: 1_000, builtAt: prepared.generation)
        XCTAssertNotNil(prepared.body(for: ref, nowMillis: 999))
        XCTAssertNil(prepared.body(for: ref, nowMillis: 1_000), "stale from the first expiry it shows")
        // A body built from state read before a change is not kept after it.
        let generation = prepared.generation
        prepared.invalidate(ref)
        prepared.store(body, for: ref, validUntilMillis: .max, builtAt: generation)
        XCTAssertNil(prepared.body(for: ref, nowMillis: 0))
        prepared.store(body, for: ref, validUntilMillis: .max, builtAt: prepared.generation)
        XCTAssertNotNil(prepared.body(for: ref, nowMillis: 0))
        prepared.invalidateAll()
        XCTAssertEqual(prepared.count, 0)
    }

    func testPreparedBodiesAreBoundedInSize() throws {
        var prepared = PreparedResponses()
        let arena = state.arena
        let size = 64 * 1024
        for index in 0..<(PreparedResponses.maxBytes / size + 5) {
            prepared.store(try SecretBytes.random(count: size, in: arena), for: KeyRef(domain: "d", name: "k\(index)"),
                           validUntilMillis: .max, builtAt: prepared.generation)
        }
        XCTAssertEqual(prepared.count, PreparedResponses.maxBytes / size, "at most maxBytes of bodies are kept")
    }

    /// With a 1 s grace period and no housekeeping at all, the body served after a rotation drops
    /// the old version once its grace period ends: the prepared body does not outlive it.
    func testPreparedBodyDropsAnExpiredVersionWithoutHousekeeping() async throws {
        let json = """
        { "cluster": "c", "grace_period_s": 1, "tls": { "ca": "ca.pem", "cert": "{node}.pem", "key": "{node}.key" },
          "nodes": { "node1": { "peer": "127.0.0.1:7401", "socket": "/tmp/r.sock", "data_dir": "data" } },
          "domains": { "first.com": { "ram_key_size": 32, "keys": [ { "name": "token_secret", "type": "ram" } ] } } }
        """
        let config = try ClusterConfig.parse(json: Array(json.utf8), configDirectory: directory, node: "node1")
        await operations.registry.close()
        let logger = Logger(label: "test")
        let state = NodeState(config: config, arena: try SecretArena())
        operations = NodeOperations(state: state, registry: RegistryWriter(database: try RegistryDatabase(directory: directory + "/data2")),
                                    events: EventHub(nodeName: state.nodeName, logger: logger), logger: logger, metrics: NodeMetrics(registry: nil))
        _ = try operations.becomeReady()
        router = APIRouter(node: operations, environment: Environment(node: state.nodeName), daemonUID: 0)
        XCTAssertEqual(try call(.POST, "/v1/domains/first.com/keys/token_secret/rotate").0, 200)
        func versionCount() throws -> Int {
            let body = try JSONSerialization.jsonObject(with: Data(try rawGetKey("/v1/domains/first.com/keys/token_secret").body)) as? [String: Any]
            return (body?["versions"] as? [[String: Any]])?.count ?? -1
        }
        XCTAssertEqual(try versionCount(), 2)
        let deadline = Date().addingTimeInterval(5)
        while try versionCount() == 2 && Date() < deadline { usleep(10_000) }
        XCTAssertEqual(try versionCount(), 1, "the old version is gone once its grace period has passed")
    }
}
