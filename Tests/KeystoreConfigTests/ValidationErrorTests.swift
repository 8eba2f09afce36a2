import XCTest
import Foundation
#if canImport(Glibc)
import Glibc
#endif
@testable import KeystoreConfig

/// One test per rejection rule: each changes the valid config in one place and checks that the
/// one-line message names the field (and, where useful, the fix).
final class ValidationErrorTests: XCTestCase {
    var fx: Fixture!

    override func setUpWithError() throws { fx = try Fixture() }
    override func tearDown() { fx = nil }

    private func expect(_ path: [Any], _ value: Any?, node: String = "node1", contains: [String],
                        file: StaticString = #filePath, line: UInt = #line) {
        let object = setting(Fixture.validConfig(), path, value)
        assertConfigError({ try fx.load(object, node: node) }, contains: contains, file: file, line: line)
    }

    private func expectText(_ text: String, contains: [String], file: StaticString = #filePath, line: UInt = #line) {
        assertConfigError({ try fx.loadText(text) }, contains: contains, file: file, line: line)
    }

    // MARK: file and syntax

    func testUnreadableConfigFile() {
        assertConfigError({ try ClusterConfig.load(path: fx.path("nope.json"), node: "node1") },
                          contains: ["cannot read config file", "nope.json", "No such file"])
    }

    func testSyntaxErrorSaysWhere() {
        let error = assertConfigError({ try fx.loadText("{\n  \"cluster\": \"x\",\n  \"tls\": }\n") },
                                      contains: ["cluster.json", "line 3, column 10", "invalid JSON"])
        XCTAssertEqual(error, .syntax(file: fx.path("cluster.json"), line: 3, column: 10,
                                      message: "expected a value but found '}'"))
    }

    func testClusterNameThatCannotCrossTheWireIntactIsRefused() {
        expect(["cluster"], String(repeating: "x", count: 1500), contains: ["cluster: bad cluster name", "1500 bytes", "1-64 characters"])
        expect(["cluster"], "prod\u{0}x", contains: ["cluster: bad cluster name", "\\u0000"])
        expect(["cluster"], "xmpp prod", contains: ["cluster: bad cluster name"])
        expect(["cluster"], "-prod", contains: ["cluster: bad cluster name"])
    }

    func testConfigFilesMayCarryLineComments() throws {
        let text = String(decoding: try JSONSerialization.data(withJSONObject: Fixture.validConfig(), options: [.prettyPrinted]), as: UTF8.self)
        let commented = "// production cluster\n" + text.replacingOccurrences(of: "\n", with: " // note\n")
        XCTAssertNoThrow(try fx.loadText(commented))
    }

    func testDuplicateFieldRejected() {
        expectText(#"{"cluster": "a", "cluster": "b"}"#, contains: ["cluster: appears more than once"])
        let nodes = #"{"cluster": "a", "tls": {"ca": "x", "cert": "y", "key": "z"}, "nodes": {"n": {}, "n": {}}}"#
        expectText(nodes, contains: [#"nodes["n"]: appears more than once"#])
    }

    // MARK: types, unknown and missing fields

    func testWrongTypes() {
        expect(["cluster"], 5, contains: ["cluster: expected a string, found a number"])
        expect(["tls"], "certs", contains: ["tls: expected an object, found a string"])
        expect(["join_timeout_ms"], "3000", contains: ["join_timeout_ms: expected an integer, found a string"])
        expect(["grace_period_s"], 1.5, contains: ["grace_period_s: expected an integer", "1.5"])
        expect(["ram_key_size"], true, contains: ["ram_key_size: expected an integer, found a boolean"])
        expect(["nodes"], [1], contains: ["nodes: expected an object, found an array"])
        expect(["domains", "first.com", "keys"], ["name": "x"], contains: [#"domains["first.com"].keys: expected an array"#])
        expect(["clients", 1, "allow", 0], 7, contains: ["clients[1].allow[0]: expected a string, found a number"])
        expect(["nodes", "node1", "socket_mode"], 660, contains: [#"nodes["node1"].socket_mode: expected a string"#])
        expect(["clients", 0, "uid"], "root", contains: ["clients[0].uid: expected an integer, found a string"])
        expectText("[1]", contains: ["(top level): expected an object, found an array"])
    }

    func testUnknownFieldsAnywhere() {
        expect(["nodes", "node1", "socket_mdoe"], "0600",
               contains: [#"nodes["node1"].socket_mdoe: unknown field"#, "allowed here: peer, socket, socket_mode, socket_group, data_dir"])
        expect(["grace_period"], 5, contains: ["grace_period: unknown field", "grace_period_s"])
        expect(["tls", "crt"], "x", contains: ["tls.crt: unknown field", "ca, cert, key"])
        expect(["domains", "first.com", "key"], [], contains: [#"domains["first.com"].key: unknown field"#])
        expect(["domains", "first.com", "keys", 0, "size"], 1, contains: [#"domains["first.com"].keys[0].size: unknown field"#])
        expect(["clients", 1, "allows"], ["*"], contains: ["clients[1].allows: unknown field", "uid, gid, domains, allow"])
    }

    func testMissingRequiredFields() {
        expect(["cluster"], nil, contains: ["cluster: required field is missing"])
        expect(["tls"], nil, contains: ["tls: required field is missing"])
        expect(["tls", "ca"], nil, contains: ["tls.ca: required field is missing"])
        expect(["tls", "cert"], nil, contains: ["tls.cert: required field is missing"])
        expect(["tls", "key"], nil, contains: ["tls.key: required field is missing"])
        expect(["nodes"], nil, contains: ["nodes: required field is missing"])
        expect(["domains"], nil, contains: ["domains: required field is missing"])
        expect(["nodes", "node1", "peer"], nil, contains: [#"nodes["node1"].peer: required field is missing"#])
        expect(["nodes", "node1", "socket"], nil, contains: [#"nodes["node1"].socket: required field is missing"#])
        expect(["nodes", "node2", "data_dir"], nil, contains: [#"nodes["node2"].data_dir: required field is missing"#])
        expect(["domains", "first.com", "keys", 0, "name"], nil, contains: [#"domains["first.com"].keys[0].name: required"#])
        expect(["domains", "first.com", "keys", 0, "type"], nil, contains: [#"domains["first.com"].keys[0].type: required"#])
        expect(["clients", 0, "domains"], nil, contains: ["clients[0].domains: required field is missing"])
        expect(["clients", 0, "allow"], nil, contains: ["clients[0].allow: required field is missing"])
    }

    func testEmptyStrings() {
        expect(["cluster"], "", contains: ["cluster: must not be empty"])
        expect(["tls", "ca"], "", contains: ["tls.ca: must not be empty"])
        expect(["nodes", "node1", "data_dir"], "", contains: [#"nodes["node1"].data_dir: must not be empty"#])
        expect(["nodes", "node1", "socket_group"], "", contains: [#"nodes["node1"].socket_group: must not be empty"#])
    }

    // MARK: nodes

    func testNoNodes() {
        expect(["nodes"], [String: Any](), contains: ["nodes: at least one node is required"])
    }

    func testUnknownNodeName() {
        let error = assertConfigError({ try fx.load(Fixture.validConfig(), node: "x") },
                                      contains: ["unknown node name 'x'; configured: node1, node2"])
        XCTAssertEqual(error, .unknownNode(name: "x", configured: ["node1", "node2"]))
    }

    func testBadNodeNames() {
        let node: [String: Any] = ["peer": "10.0.0.9:1", "socket": "/tmp/x.sock", "data_dir": "/d"]
        for name in ["Node1", "node_1", "-node", "node-", String(repeating: "a", count: 64), ""] {
            expect(["nodes", name], node, contains: ["nodes[\"\(name)\"]: bad node name", "DNS label"])
        }
        let ok = setting(Fixture.validConfig(), ["nodes", String(repeating: "a", count: 63)],
                         ["peer": "10.0.0.9:1", "socket": "/tmp/y.sock", "data_dir": "/d"])
        XCTAssertNoThrow(try fx.load(ok))
    }

    func testBadPeers() {
        let field = #"nodes["node1"].peer"#
        expect(["nodes", "node1", "peer"], "localhost", contains: [field, "bad peer address 'localhost'", "missing ':port'"])
        expect(["nodes", "node1", "peer"], "::1:7401", contains: [field, "IPv6 addresses must be in brackets"])
        expect(["nodes", "node1", "peer"], "[::1]7401", contains: [field, "missing ':port' after ']'"])
        expect(["nodes", "node1", "peer"], "[zz]:1", contains: [field, "not an IPv6 address"])
        expect(["nodes", "node1", "peer"], ":7401", contains: [field, "missing host"])
        expect(["nodes", "node1", "peer"], "host:http", contains: [field, "port must be a decimal number"])
        expect(["nodes", "node1", "peer"], "a b:1", contains: [field, "host may only contain"])
    }

    func testPortOutOfRange() {
        for port in ["0", "65536", "99999999999999999999"] {
            expect(["nodes", "node1", "peer"], "127.0.0.1:\(port)",
                   contains: [#"nodes["node1"].peer: port '\#(port)' is out of range; use 1-65535"#])
        }
    }

    func testSocketPathTooLong() {
        let long = "/" + String(repeating: "s", count: 107)
        expect(["nodes", "node2", "socket"], long, contains: [#"nodes["node2"].socket"#, "108 bytes", "at most 107"])
        let exact = "/" + String(repeating: "s", count: 106)
        XCTAssertNoThrow(try fx.load(setting(Fixture.validConfig(), ["nodes", "node2", "socket"], exact)))
    }

    func testBadSocketMode() {
        for mode in ["0999", "1777", "rw-rw----", "66", "07777", ""] {
            expect(["nodes", "node2", "socket_mode"], mode, contains: [#"nodes["node2"].socket_mode: bad socket mode"#, "0660"])
        }
    }

    func testDuplicatePeerAddress() {
        expect(["nodes", "node2", "peer"], "127.0.0.1:7401",
               contains: [#"nodes["node2"].peer: peer address '127.0.0.1:7401' is also used by node 'node1'"#])
    }

    func testDuplicateSocketPath() {
        var object = setting(Fixture.validConfig(), ["nodes", "node1", "socket"], "/run/ks.sock")
        object = setting(object, ["nodes", "node2", "socket"], "/run/./ks.sock")
        assertConfigError({ try fx.load(object) },
                          contains: [#"nodes["node2"].socket: socket path '/run/ks.sock' is also used by node 'node1'"#])
    }

    // MARK: numbers

    func testRanges() {
        expect(["join_timeout_ms"], 600_001, contains: ["join_timeout_ms: value 600001 is out of range", "0 to 600000"])
        expect(["grace_period_s"], -1, contains: ["grace_period_s: value -1 is out of range", "0 to 2592000"])
        expect(["ram_key_size"], 15, contains: ["ram_key_size: value 15 is out of range", "16 to 65536"])
        expect(["domains", "first.com", "ram_key_size"], 65_537,
               contains: [#"domains["first.com"].ram_key_size: value 65537 is out of range"#])
        expect(["join_timeout_ms"], Decimal(string: "123456789012345678901234")!,
               contains: ["join_timeout_ms: value 123456789012345678901234 is out of range"])
    }

    // MARK: domains and keys

    func testBadDomainNames() {
        for name in ["First.com", "a..b", "a.com.", "-a.com", "under_score.com", String(repeating: "a.", count: 127) + "a"] {
            expect(["domains", name], [String: Any](), contains: ["domains[\"\(name)\"]: bad domain name", "lowercase DNS name"])
        }
    }

    func testBadKeyNames() {
        for name in [".hidden", "a/b", "", "sp ace", String(repeating: "k", count: 129)] {
            expect(["domains", "first.com", "keys", 0, "name"], name,
                   contains: [#"domains["first.com"].keys[0].name: bad key name"#])
        }
        let ok = setting(Fixture.validConfig(), ["domains", "first.com", "keys", 0, "name"], "A-z_0.9")
        XCTAssertNoThrow(try fx.load(ok))
    }

    func testDuplicateKeyName() {
        expect(["domains", "first.com", "keys", 1, "name"], "token_secret",
               contains: [#"domains["first.com"].keys[1].name: key name 'token_secret' is already used"#])
    }

    func testUnknownKeyType() {
        expect(["domains", "first.com", "keys", 0, "type"], "disk",
               contains: [#"domains["first.com"].keys[0].type: unknown key type 'disk'"#, "\"ram\" or \"file\""])
    }

    func testFileKeyWithoutPath() {
        expect(["domains", "first.com", "keys", 1, "path"], nil,
               contains: [#"domains["first.com"].keys[1].path: required for keys of type "file""#])
    }

    func testRAMKeyWithPath() {
        expect(["domains", "first.com", "keys", 0, "path"], "psk/first_provision",
               contains: [#"domains["first.com"].keys[0].path: path is only for file keys"#])
    }

    // MARK: PSK files

    private let pskField = #"domains["first.com"].keys[1].path"#

    func testPSKMissing() {
        expect(["domains", "first.com", "keys", 1, "path"], "psk/absent",
               contains: [pskField, "PSK file '\(fx.path("psk/absent"))' does not exist"])
    }

    func testPSKNotRegularFile() {
        expect(["domains", "first.com", "keys", 1, "path"], "psk", contains: [pskField, "is not a regular file"])
    }

    func testPSKUnreadable() throws {
        // A symlink loop fails open() even for root, which ignores permission bits.
        XCTAssertEqual(symlink(fx.path("psk/loop"), fx.path("psk/loop")), 0)
        expect(["domains", "first.com", "keys", 1, "path"], "psk/loop",
               contains: [pskField, "cannot read PSK file", "make it readable"])
    }

    func testPSKEmptyAfterTrimming() throws {
        try fx.write("psk/first_provision", " \r\n\t\n", mode: 0o600)
        expect([], nil, contains: [pskField, "is empty after trimming whitespace"])
    }

    func testPSKInsecureMode() throws {
        for mode: mode_t in [0o640, 0o604, 0o602, 0o620] {
            try fx.write("psk/first_provision", "k", mode: mode)
            let path = fx.path("psk/first_provision")
            expect([], nil, contains: [pskField, "readable or writable by group or others", "chmod 600 \(path)"])
        }
    }

    func testPSKTooLarge() throws {
        try fx.writeBytes("psk/first_provision", [UInt8](repeating: 0x41, count: PSKFile.maxSize + 1), mode: 0o600)
        expect([], nil, contains: [pskField, "larger than"])
    }

    // MARK: TLS files

    func testTLSFileMissing() {
        expect(["tls", "cert"], "certs/{node}.crt", contains: ["tls.cert: TLS file '\(fx.path("certs/node1.crt"))' does not exist"])
    }

    func testTLSFileNotRegular() {
        expect(["tls", "ca"], "certs", contains: ["tls.ca: TLS file", "is not a regular file"])
    }

    func testTLSFileUnreadable() {
        XCTAssertEqual(symlink(fx.path("certs/loop"), fx.path("certs/loop")), 0)
        expect(["tls", "ca"], "certs/loop", contains: ["tls.ca: cannot read TLS file"])
    }

    func testTLSKeyInsecureMode() throws {
        XCTAssertEqual(chmod(fx.path("certs/node1.key"), 0o640), 0)
        expect([], nil, contains: ["tls.key: private key", "mode 0640", "chmod 600 \(fx.path("certs/node1.key"))"])
        // Certificates are public: a 0644 cert is fine (the fixture's default).
        XCTAssertEqual(chmod(fx.path("certs/node1.key"), 0o600), 0)
        XCTAssertNoThrow(try fx.load(Fixture.validConfig()))
    }

    // MARK: clients

    func testClientWithoutUIDOrGID() {
        expect(["clients", 1, "uid"], nil, contains: ["clients[1]: a client rule needs \"uid\" or \"gid\""])
    }

    func testBadClientIDs() {
        expect(["clients", 1, "uid"], -1, contains: ["clients[1].uid: -1 is not a valid id"])
        expect(["clients", 1, "gid"], 4_294_967_295, contains: ["clients[1].gid: 4294967295 is not a valid id"])
        expect(["clients", 1, "gid"], 2.5, contains: ["clients[1].gid: 2.5 is not a valid id"])
    }

    func testClientDomainsEmpty() {
        expect(["clients", 1, "domains"], [String](), contains: ["clients[1].domains: must list at least one domain"])
    }

    func testClientUnknownDomain() {
        expect(["clients", 1, "domains", 0], "third.net",
               contains: ["clients[1].domains[0]: domain 'third.net' is not configured", "first.com, second.org"])
    }

    func testClientAllowEmpty() {
        expect(["clients", 1, "allow"], [String](), contains: ["clients[1].allow: must list at least one permission"])
    }

    func testUnknownPermission() {
        expect(["clients", 1, "allow", 1], "keys:write",
               contains: ["clients[1].allow[1]: unknown permission 'keys:write'", "keys:read", "admin"])
    }

    // MARK: message hygiene

    func testHostileNamesStayOnOneLine() {
        let node: [String: Any] = ["peer": "10.0.0.9:1", "socket": "/tmp/x.sock", "data_dir": "/d"]
        expect(["nodes", "evil\nname"], node, contains: [#"nodes["evil\nname"]: bad node name 'evil\nname'"#])
    }
}
