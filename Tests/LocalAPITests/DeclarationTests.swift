import Foundation
import KeystoreConfig
@testable import KeystoreNode
import PeerWire
import ReplicatedStore
import SecretMemory
import XCTest

/// A node's key declarations (a RAM key's marker, a PSK's fingerprint) are made once its join
/// has brought back what the cluster holds for it, and only where they differ: an unchanged
/// restart declares nothing, so anti-entropy finds the restarted node equal to its peers.
final class DeclarationTests: XCTestCase {
    private var directory = ""
    private let ram = KeyRef(domain: "first.com", name: "token_secret")
    private let psk = KeyRef(domain: "first.com", name: "provision")
    private let dropped = KeyRef(domain: "first.com", name: "dropped_while_down")

    override func setUpWithError() throws {
        directory = try scratchNodeDirectory("declarations", files: ["provision.psk": "the-psk\n"])
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(atPath: directory)
    }

    private func startingNode() throws -> NodeState {
        let json = """
        { "cluster": "c", "tls": { "ca": "ca.pem", "cert": "{node}.pem", "key": "{node}.key" },
          "nodes": { "node1": { "peer": "127.0.0.1:7401", "socket": "/tmp/r.sock", "data_dir": "data" } },
          "domains": { "first.com": { "keys": [ { "name": "token_secret", "type": "ram" },
                                                { "name": "provision", "type": "file", "path": "provision.psk" } ] } } }
        """
        let config = try ClusterConfig.parse(json: Array(json.utf8), configDirectory: directory, node: "node1")
        let state = NodeState(config: config, arena: try SecretArena())
        XCTAssertEqual(try state.loadFileKeys(declaring: false).declarations, [], "nothing declared before the join")
        return state
    }

    private func record(_ key: KeyRef, _ fingerprint: [UInt8], at wall: UInt64) -> PSKFingerprint {
        PSKFingerprint(node: "node1", key: key, fingerprint: fingerprint, stamp: HLCTimestamp(wallMillis: wall, logical: 0))
    }

    func testAnUnchangedRestartDeclaresNothingAndAKeyDroppedWhileDownIsWithdrawn() throws {
        let state = try startingNode()
        let fingerprint = try XCTUnwrap(try state.readFileKeys()[psk]).fingerprint
        // What the cluster held for node1 from its previous run.
        _ = state.mergeRemoteKeys(WireDelta(pskFingerprints: [record(ram, NodeState.ramDeclaration, at: 5), record(psk, fingerprint, at: 5),
                                                              record(dropped, NodeState.ramDeclaration, at: 5)]))
        let declared = try state.becomeReady().pskFingerprints
        XCTAssertEqual(declared.map(\.key), [dropped])
        XCTAssertEqual(declared.first?.isDeletion, true)
    }

    func testAChangedPSKAndAFreshNodeAreDeclared() throws {
        let changed = try startingNode()
        _ = changed.mergeRemoteKeys(WireDelta(pskFingerprints: [record(ram, NodeState.ramDeclaration, at: 5), record(psk, [1, 2, 3], at: 5)]))
        let redeclared = try changed.becomeReady().pskFingerprints
        XCTAssertEqual(redeclared.map(\.key), [psk])
        XCTAssertEqual(redeclared.first?.fingerprint, try XCTUnwrap(try changed.readFileKeys()[psk]).fingerprint)

        let fresh = try startingNode()
        XCTAssertEqual(Set(try fresh.becomeReady().pskFingerprints.map(\.key)), [ram, psk])
    }
}
