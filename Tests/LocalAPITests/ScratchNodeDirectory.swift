import Foundation
import KeystoreConfig

/// A fresh directory holding what a one-node config needs to parse (`ca.pem`, `node1.pem`,
/// `node1.key`: placeholders, these tests open no TLS), plus `files` (name → contents, mode 0600).
func scratchNodeDirectory(_ prefix: String, files: [String: String] = [:]) throws -> String {
    let directory = NSTemporaryDirectory() + "\(prefix)-\(UUID().uuidString)"
    try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    for (name, contents) in files.merging(["ca.pem": "x", "node1.pem": "x", "node1.key": "x"], uniquingKeysWith: { mine, _ in mine }) {
        guard FileManager.default.createFile(atPath: "\(directory)/\(name)", contents: Data(contents.utf8), attributes: [.posixPermissions: 0o600]) else {
            throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: "\(directory)/\(name)"])
        }
    }
    return directory
}

/// The one-node config these tests share (node1, the placeholder files `scratchNodeDirectory`
/// makes), with `domains` as its "domains" object: by default one RAM key, first.com/token_secret.
func oneNodeConfig(in directory: String,
                   domains: String = #"{ "first.com": { "keys": [ { "name": "token_secret", "type": "ram" } ] } }"#) throws -> ClusterConfig {
    let json = """
    { "cluster": "c", "tls": { "ca": "ca.pem", "cert": "{node}.pem", "key": "{node}.key" },
      "nodes": { "node1": { "peer": "127.0.0.1:7401", "socket": "/tmp/r.sock", "data_dir": "data" } },
      "domains": \(domains) }
    """
    return try ClusterConfig.parse(json: Array(json.utf8), configDirectory: directory, node: "node1")
}
