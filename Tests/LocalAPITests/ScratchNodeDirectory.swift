import Foundation

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
