@testable import KeystoreConfig
import XCTest

/// What a reload would change, and what it must refuse, from two configs.
final class ConfigChangesTests: XCTestCase {
    var fx: Fixture!
    override func setUpWithError() throws { fx = try Fixture() }
    override func tearDown() { fx = nil }

    private func changes(_ path: [Any], _ value: Any?) throws -> ConfigChanges {
        let old = try fx.load(Fixture.validConfig())
        let new = try fx.load(setting(Fixture.validConfig(), path, value))
        return ConfigChanges(from: old, to: new)
    }

    func testIdenticalConfigsChangeNothing() throws {
        XCTAssertTrue(try changes(["cluster"], "xmpp-prod").isEmpty)
    }

    func testDomainsKeysAndSizes() throws {
        let added = try changes(["domains", "third.net"], ["keys": [["name": "k", "type": "ram"]]])
        XCTAssertEqual(added.summary, ["domain third.net added", "key third.net/k added (ram)"])
        XCTAssertTrue(added.needsRestart.isEmpty)
        let removed = try changes(["domains", "second.org"], nil)
        XCTAssertEqual(removed.summary, ["domain second.org removed", "key second.org/tok removed"])
        let retyped = try changes(["domains", "second.org", "keys", 0], ["name": "tok", "type": "file", "path": "psk/first_provision"])
        XCTAssertEqual(retyped.summary, ["key second.org/tok removed", "key second.org/tok added (file)"])
        XCTAssertEqual(try changes(["domains", "first.com", "ram_key_size"], 64).summary,
                       ["ram_key_size of first.com changed (applies to new keys and rotations)"])
    }

    func testACLGraceLogLevelJoinTimeoutAndOtherNodes() throws {
        XCTAssertEqual(try changes(["clients", 1, "allow"], ["keys:read"]).summary, ["clients (ACL rules) changed"])
        XCTAssertEqual(try changes(["grace_period_s"], 60).summary, ["grace_period_s changed"])
        XCTAssertEqual(try changes(["log_level"], "debug").summary, ["log_level changed"])
        XCTAssertEqual(try changes(["join_timeout_ms"], 500).summary, ["join_timeout_ms changed (applies at the next start)"])
        XCTAssertEqual(try changes(["nodes", "node3"], ["peer": "10.0.0.3:7401", "socket": "{node}.sock", "data_dir": "d/{node}"]).summary,
                       ["node node3 added"])
        XCTAssertEqual(try changes(["nodes", "node2"], nil).summary, ["node node2 removed"])
        XCTAssertEqual(try changes(["nodes", "node2", "peer"], "[::1]:7499").summary, ["node node2 changed"])
    }

    func testWhatTheRunningProcessIsBoundToNeedsARestart() throws {
        XCTAssertEqual(try changes(["cluster"], "other").needsRestart.count, 1)
        XCTAssertTrue(try changes(["nodes", "node1", "socket"], "x.sock").needsRestart.first?.hasPrefix("nodes.node1.socket:") ?? false)
        XCTAssertTrue(try changes(["nodes", "node1", "peer"], "127.0.0.1:7499").needsRestart.first?.hasPrefix("nodes.node1.peer:") ?? false)
        XCTAssertTrue(try changes(["nodes", "node1", "data_dir"], "elsewhere").needsRestart.first?.hasPrefix("nodes.node1.data_dir:") ?? false)
        XCTAssertTrue(try changes(["tls", "ca"], "certs/node1.pem").needsRestart.first?.hasPrefix("tls:") ?? false)
    }
}
