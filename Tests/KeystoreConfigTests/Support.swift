import XCTest
import Foundation
#if canImport(Glibc)
import Glibc
#endif
@testable import KeystoreConfig

/// A unique temp directory holding a valid cluster layout (TLS files for node1 and node2, a PSK)
/// plus helpers to write configs that differ from the valid one in exactly one place.
final class Fixture {
    let dir: String

    init() throws {
        var template = Array("/tmp/ksconf-XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        guard let made else { throw XCTSkip("mkdtemp failed") }
        dir = String(cString: made)
        try mkdir("certs")
        try mkdir("psk")
        try write("certs/ca.pem", "CA", mode: 0o644)
        for node in ["node1", "node2"] {
            try write("certs/\(node).pem", "CERT", mode: 0o644)
            try write("certs/\(node).key", "KEY", mode: 0o600)
        }
        try write("psk/first_provision", "  s3cret-psk\r\n", mode: 0o600)
    }

    deinit { try? FileManager.default.removeItem(atPath: dir) }

    func path(_ relative: String) -> String { dir + "/" + relative }

    func mkdir(_ relative: String) throws {
        try FileManager.default.createDirectory(atPath: path(relative), withIntermediateDirectories: true)
    }

    func write(_ relative: String, _ contents: String, mode: mode_t) throws {
        try writeBytes(relative, Array(contents.utf8), mode: mode)
    }

    func writeBytes(_ relative: String, _ contents: [UInt8], mode: mode_t) throws {
        let full = path(relative)
        try Data(contents).write(to: URL(fileURLWithPath: full))
        // Set explicitly: the umask must not decide what the permission tests see.
        XCTAssertEqual(chmod(full, mode), 0)
    }

    /// The DESIGN.md example adapted to this directory (relative paths) with a second node.
    static func validConfig() -> [String: Any] {
        [
            "cluster": "xmpp-prod",
            "tls": ["ca": "certs/ca.pem", "cert": "certs/{node}.pem", "key": "certs/{node}.key"],
            "nodes": [
                "node1": ["peer": "127.0.0.1:7401", "socket": "{node}.sock", "socket_mode": "0660",
                          "data_dir": "data/{node}"],
                "node2": ["peer": "[::1]:7402", "socket": "{node}.sock", "socket_group": "xmpp-{node}",
                          "data_dir": "/var/lib/keystore/{node}"],
            ],
            "domains": [
                "first.com": ["ram_key_size": 4096, "keys": [
                    ["name": "token_secret", "type": "ram"],
                    ["name": "provision_pre_shared", "type": "file", "path": "psk/first_provision"],
                ]],
                "second.org": ["keys": [["name": "tok", "type": "ram"]]],
            ],
            "clients": [
                ["uid": 0, "domains": ["*"], "allow": ["*"]],
                ["uid": 1001, "domains": ["first.com"], "allow": ["keys:read", "certs:verify"]],
            ],
        ]
    }

    func writeConfig(_ object: [String: Any]) throws -> String {
        let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
        let file = path("cluster.json")
        try data.write(to: URL(fileURLWithPath: file))
        return file
    }

    func load(_ object: [String: Any], node: String = "node1") throws -> ClusterConfig {
        try ClusterConfig.load(path: writeConfig(object), node: node)
    }

    func loadText(_ text: String, node: String = "node1") throws -> ClusterConfig {
        try ClusterConfig.parse(json: Array(text.utf8), configDirectory: dir, node: node,
                                configFile: path("cluster.json"))
    }
}

/// Sets `value` (nil removes) at `path` of string keys and array indices inside a JSON object.
func setting(_ object: [String: Any], _ path: [Any], _ value: Any?) -> [String: Any] {
    func apply(_ node: Any, _ path: ArraySlice<Any>) -> Any? {
        guard let head = path.first else { return value }
        let rest = path.dropFirst()
        if let key = head as? String, var dict = node as? [String: Any] {
            if rest.isEmpty { dict[key] = value } else { dict[key] = apply(dict[key] ?? [String: Any](), rest) }
            return dict
        }
        if let index = head as? Int, var array = node as? [Any] {
            if rest.isEmpty {
                if let value { array[index] = value } else { array.remove(at: index) }
            } else if let updated = apply(array[index], rest) {
                array[index] = updated
            }
            return array
        }
        XCTFail("bad path component \(head)")
        return node
    }
    return apply(object, path[...]) as? [String: Any] ?? object
}

extension XCTestCase {
    /// Loading must fail with a `ConfigError` whose one-line description contains every fragment.
    @discardableResult
    func assertConfigError(_ body: () throws -> ClusterConfig, contains fragments: [String],
                           file: StaticString = #filePath, line: UInt = #line) -> ConfigError? {
        do {
            _ = try body()
            XCTFail("expected a ConfigError, config loaded", file: file, line: line)
            return nil
        } catch let error as ConfigError {
            let text = error.description
            for fragment in fragments {
                XCTAssertTrue(text.contains(fragment), "\(text.debugDescription) lacks \(fragment.debugDescription)",
                              file: file, line: line)
            }
            XCTAssertFalse(text.contains("\n"), "description must be one line: \(text.debugDescription)",
                           file: file, line: line)
            return error
        } catch {
            XCTFail("unexpected error type \(error)", file: file, line: line)
            return nil
        }
    }
}
