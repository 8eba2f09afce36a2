#if canImport(Glibc)
import Glibc
#endif

/// A private directory holding every file the seed configs refer to, so fuzzed configs get past
/// the file checks into the code that only runs for a loadable config.
///
/// Created once per process and removed at exit; a crashed run leaves a few bytes under /tmp.
public enum Fixture {
    public static let nodeName = "node1"
    /// The PSK file's content before trimming; the served key is `pskValue`.
    public static let pskValue = "fuzz-psk-value"

    /// The config every harness that needs a node uses: two domains, a RAM and a file key, and
    /// rules for a reader (1001), a cluster reader (1002) and an event reader (1003).
    public static let configJSON = """
    { "cluster": "fuzz", "tls": { "ca": "certs/ca.pem", "cert": "certs/{node}.pem", "key": "certs/{node}.key" },
      "join_timeout_ms": 3000, "grace_period_s": 3600, "ram_key_size": 64,
      "nodes": { "node1": { "peer": "127.0.0.1:7401", "socket": "/tmp/fuzz/{node}.sock", "socket_mode": "0660", "data_dir": "data/{node}" },
                 "node2": { "peer": "127.0.0.1:7402", "socket": "/tmp/fuzz/{node}.sock", "data_dir": "data/{node}" } },
      "domains": { "first.com": { "keys": [ { "name": "token_secret", "type": "ram" },
                                            { "name": "provision_pre_shared", "type": "file", "path": "psk/first_provision" } ] },
                   "second.com": { "ram_key_size": 32, "keys": [ { "name": "token_secret", "type": "ram" } ] } },
      "clients": [ { "uid": 0, "domains": ["*"], "allow": ["*"] },
                   { "uid": 1001, "domains": ["first.com"], "allow": ["keys:read", "certs:verify"] },
                   { "uid": 1002, "domains": ["*"], "allow": ["cluster:read"] },
                   { "gid": 1003, "domains": ["second.com"], "allow": ["events:read", "keys:rotate"] } ] }
    """

    /// Absolute path of the fixture directory (created on first use).
    public static let directory: String = {
        var template = Array("/tmp/keystore-fuzz-XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        guard made != nil else { fatalError("fuzz fixture: cannot create a directory under /tmp") }
        let dir = String(decoding: template.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
        for sub in ["certs", "psk", "data"] { mkdir(dir + "/" + sub, 0o700) }
        write(dir + "/certs/ca.pem", "ca\n", mode: 0o644)
        for node in ["node1", "node2"] {
            write(dir + "/certs/\(node).pem", "cert\n", mode: 0o644)
            write(dir + "/certs/\(node).key", "key\n", mode: 0o600)
        }
        write(dir + "/psk/first_provision", "  \(pskValue)\n", mode: 0o600)
        write(dir + "/psk/second_provision", "second\n", mode: 0o600)
        fixtureDirectoryForCleanup = dir
        atexit { removeFixture() }
        return dir
    }()

    private static func write(_ path: String, _ content: String, mode: mode_t) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode)
        guard fd >= 0 else { fatalError("fuzz fixture: cannot create \(path)") }
        let bytes = Array(content.utf8)
        _ = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        fchmod(fd, mode)
        close(fd)
    }
}

/// Written once before `atexit` registers the cleanup; read only by the exit handler.
nonisolated(unsafe) private var fixtureDirectoryForCleanup: String?

private func removeFixture() {
    guard let dir = fixtureDirectoryForCleanup else { return }
    for file in ["certs/ca.pem", "certs/node1.pem", "certs/node1.key", "certs/node2.pem", "certs/node2.key",
                 "psk/first_provision", "psk/second_provision"] {
        unlink(dir + "/" + file)
    }
    for sub in ["certs", "psk", "data", ""] { rmdir(dir + "/" + sub) }
}
