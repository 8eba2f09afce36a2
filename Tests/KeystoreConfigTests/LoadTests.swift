import KeystoreJSON
import XCTest
import Foundation
@testable import KeystoreConfig

final class LoadTests: XCTestCase {
    func testValidConfigLoadsWithSubstitutionsAndResolvedPaths() throws {
        let fx = try Fixture()
        let config = try fx.load(Fixture.validConfig())
        XCTAssertEqual(config.cluster, "xmpp-prod")
        XCTAssertEqual(config.nodeName, "node1")
        XCTAssertEqual(config.configFile, fx.path("cluster.json"))
        XCTAssertEqual(config.tls, TLSFiles(ca: fx.path("certs/ca.pem"), certificate: fx.path("certs/node1.pem"),
                                            privateKey: fx.path("certs/node1.key")))

        XCTAssertEqual(config.me, NodeConfig(name: "node1", peerHost: "127.0.0.1", peerPort: 7401,
                                             peerAddress: "127.0.0.1:7401", socketPath: fx.path("node1.sock"),
                                             socketMode: 0o660, socketGroup: nil, dataDir: fx.path("data/node1")))
        // Inside nodes["node2"], {node} means node2 even when loading for node1.
        XCTAssertEqual(config.nodes["node2"], NodeConfig(name: "node2", peerHost: "::1", peerPort: 7402,
                                                         peerAddress: "[::1]:7402", socketPath: fx.path("node2.sock"),
                                                         socketMode: 0o660, socketGroup: "xmpp-node2",
                                                         dataDir: "/var/lib/keystore/node2"))

        XCTAssertEqual(config.sortedDomainNames, ["first.com", "second.org"])
        XCTAssertEqual(config.domains["first.com"], DomainConfig(name: "first.com", ramKeySize: 4096, keys: [
            KeyConfig(name: "token_secret", kind: .ram),
            KeyConfig(name: "provision_pre_shared", kind: .file(path: fx.path("psk/first_provision"))),
        ]))
        XCTAssertEqual(config.domains["second.org"]?.ramKeySize, 2048, "domain without override inherits global")

        XCTAssertEqual(config.clients, [
            ClientRule(uid: 0, gid: nil, domains: ["*"], allow: [.all]),
            ClientRule(uid: 1001, gid: nil, domains: ["first.com"], allow: [.keysRead, .certsVerify]),
        ])
    }

    func testDefaults() throws {
        let fx = try Fixture()
        var object = Fixture.validConfig()
        object["clients"] = nil
        let config = try fx.load(object)
        XCTAssertEqual(config.joinTimeoutMillis, 3000)
        XCTAssertEqual(config.gracePeriodSeconds, 3600)
        XCTAssertEqual(config.ramKeySize, 2048)
        XCTAssertEqual(config.clients, [], "absent clients = only the daemon uid")
        XCTAssertEqual(config.nodes["node2"]?.socketMode, 0o660, "socket_mode defaults to 0660")
    }

    func testExplicitGlobalsAndOverrides() throws {
        let fx = try Fixture()
        var object = Fixture.validConfig()
        object["join_timeout_ms"] = 0
        object["grace_period_s"] = 2_592_000
        object["ram_key_size"] = 16
        object = setting(object, ["nodes", "node1", "socket_mode"], "600")
        let config = try fx.load(object)
        XCTAssertEqual(config.joinTimeoutMillis, 0)
        XCTAssertEqual(config.gracePeriodSeconds, 2_592_000)
        XCTAssertEqual(config.ramKeySize, 16)
        XCTAssertEqual(config.domains["second.org"]?.ramKeySize, 16)
        XCTAssertEqual(config.domains["first.com"]?.ramKeySize, 4096)
        XCTAssertEqual(config.me.socketMode, 0o600)
    }

    func testLoadingForAnotherNodeSubstitutesItsName() throws {
        let fx = try Fixture()
        var object = Fixture.validConfig()
        object = setting(object, ["domains", "first.com", "keys", 1, "path"], "psk/{node}")
        try fx.write("psk/node2", "k2\n", mode: 0o400)
        let config = try fx.load(object, node: "node2")
        XCTAssertEqual(config.nodeName, "node2")
        XCTAssertEqual(config.tls.certificate, fx.path("certs/node2.pem"))
        XCTAssertEqual(config.tls.privateKey, fx.path("certs/node2.key"))
        XCTAssertEqual(config.me.socketPath, fx.path("node2.sock"))
        XCTAssertEqual(config.domains["first.com"]?.keys[1].kind, .file(path: fx.path("psk/node2")))
    }

    func testRelativeConfigPathIsMadeAbsolute() throws {
        let fx = try Fixture()
        let file = try fx.writeConfig(Fixture.validConfig())
        let previous = FileManager.default.currentDirectoryPath
        defer { _ = FileManager.default.changeCurrentDirectoryPath(previous) }
        XCTAssertTrue(FileManager.default.changeCurrentDirectoryPath(fx.dir))
        let config = try ClusterConfig.load(path: "./cluster.json", node: "node1")
        XCTAssertEqual(config.configFile, file)
        XCTAssertEqual(config.tls.ca, fx.path("certs/ca.pem"))
    }

    func testEmptyDomainsObjectIsAllowed() throws {
        let fx = try Fixture()
        var object = Fixture.validConfig()
        object["domains"] = [String: Any]()
        object["clients"] = [["gid": 50, "domains": ["*"], "allow": ["cluster:read"]]]
        let config = try fx.load(object)
        XCTAssertTrue(config.domains.isEmpty)
        XCTAssertEqual(config.clients, [ClientRule(uid: nil, gid: 50, domains: ["*"], allow: [.clusterRead])])
    }

    func testParseFromMemoryWithExactText() throws {
        let fx = try Fixture()
        let text = """
        { "cluster": "c", "tls": { "ca": "certs/ca.pem", "cert": "certs/{node}.pem", "key": "certs/{node}.key" },
          "nodes": { "node1": { "peer": "db.example:1", "socket": "/run/k/{node}.sock", "data_dir": "d" } },
          "domains": {} }
        """
        let config = try fx.loadText(text)
        XCTAssertEqual(config.me.peerHost, "db.example")
        XCTAssertEqual(config.me.peerPort, 1)
        XCTAssertEqual(config.me.socketPath, "/run/k/node1.sock")
        XCTAssertEqual(config.me.dataDir, fx.path("d"))
    }

    func testAccessControlFromConfig() throws {
        let fx = try Fixture()
        let acl = try fx.load(Fixture.validConfig()).accessControl(daemonUID: 999)
        XCTAssertTrue(acl.permits(uid: 1001, gids: [1001], permission: .keysRead, domain: "first.com"))
        XCTAssertFalse(acl.permits(uid: 1001, gids: [1001], permission: .keysRead, domain: "second.org"))
        XCTAssertTrue(acl.permits(uid: 999, gids: [], permission: .admin, domain: nil))
    }
}

final class JSONReaderTests: XCTestCase {
    func testParsesEscapesAndKeepsIntegersExact() throws {
        let value = try JSONReader.parse(Array(#"{"a":"\u00e9\ud83d\ude00\n","b":[9007199254740993,-0,1.5,true,null]}"#.utf8))
        guard case .object(let members) = value, members.count == 2,
              case .string(let s) = members[0].value, case .array(let items) = members[1].value else {
            return XCTFail("unexpected shape \(value)")
        }
        XCTAssertEqual(s, "é😀\n")
        guard case .number(_, let big) = items[0], case .number(_, let frac) = items[2], case .bool(true) = items[3],
              case .null = items[4] else { return XCTFail("unexpected items \(items)") }
        XCTAssertEqual(big, 9007199254740993)
        XCTAssertNil(frac)
    }

    func testRejectsMalformedInputWithPosition() {
        let cases: [(String, Int, Int)] = [
            ("{\"a\": 1,}", 1, 9),
            ("{\n  \"a\" 1}", 2, 7),
            ("[01]", 1, 2),
            ("\"abc", 1, 1),
            ("{} x", 1, 4),
            ("\"\\ud800\"", 1, 8),
            (String(repeating: "[", count: 100), 1, 65),
        ]
        for (text, line, column) in cases {
            XCTAssertThrowsError(try JSONReader.parse(Array(text.utf8)), text) { error in
                guard let e = error as? JSONSyntaxError else { return XCTFail("wrong error \(error)") }
                XCTAssertEqual(e.line, line, text)
                XCTAssertEqual(e.column, column, "\(text): \(e.message)")
            }
        }
        XCTAssertThrowsError(try JSONReader.parse([0x22, 0xFF, 0x22]), "invalid UTF-8 in a string")
    }
}
