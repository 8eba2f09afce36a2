import KeystoreAPI
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A fully validated v1 cluster config as seen by one node: `{node}` substituted, relative
/// paths resolved, defaults filled in, TLS and PSK files checked. Holding one of these means
/// the daemon can start without re-checking anything (files can still change afterwards).
public struct ClusterConfig: Sendable {
    public var cluster: String
    /// Absolute path of the file this was loaded from (for `parse`, see its `configFile`).
    public var configFile: String
    public var tls: TLSFiles
    public var joinTimeoutMillis: Int
    public var gracePeriodSeconds: Int
    /// Cluster-wide default; each `DomainConfig.ramKeySize` already has overrides applied.
    public var ramKeySize: Int
    public var nodes: [String: NodeConfig]
    public var domains: [String: DomainConfig]
    /// Empty when `clients` is absent: then only the daemon's own uid gets access.
    public var clients: [ClientRule]
    /// `log_level`: applied at start (unless `--log-level` is given) and on every reload.
    public var logLevel: LogLevelSetting?
    /// The `--node` this config was loaded for; `{node}` outside `nodes` was replaced by it.
    public let nodeName: String

    /// The `--node` entry; `load`/`parse` guarantee it exists.
    public var me: NodeConfig {
        // Validation guarantees presence; the fallback only exists to avoid a force-unwrap
        // if a caller mutates `nodes` afterwards.
        nodes[nodeName] ?? NodeConfig(name: nodeName, peerHost: "", peerPort: 0, peerAddress: "",
                                      socketPath: "", socketMode: 0o660, socketGroup: nil, dataDir: "")
    }

    /// Domain names in a stable order, for listings and deterministic iteration.
    public var sortedDomainNames: [String] { domains.keys.sorted() }

    /// The ACL for this config as enforced by a daemon running as `daemonUID`.
    public func accessControl(daemonUID: UInt32) -> AccessControl {
        AccessControl(rules: clients, daemonUID: daemonUID)
    }

    public init(cluster: String, configFile: String, tls: TLSFiles, joinTimeoutMillis: Int,
                gracePeriodSeconds: Int, ramKeySize: Int, nodes: [String: NodeConfig],
                domains: [String: DomainConfig], clients: [ClientRule], nodeName: String) {
        self.cluster = cluster
        self.configFile = configFile
        self.tls = tls
        self.joinTimeoutMillis = joinTimeoutMillis
        self.gracePeriodSeconds = gracePeriodSeconds
        self.ramKeySize = ramKeySize
        self.nodes = nodes
        self.domains = domains
        self.clients = clients
        self.nodeName = nodeName
    }
}

/// Absolute paths of this node's TLS material.
public struct TLSFiles: Sendable, Equatable {
    public var ca: String
    public var certificate: String
    public var privateKey: String

    public init(ca: String, certificate: String, privateKey: String) {
        self.ca = ca
        self.certificate = certificate
        self.privateKey = privateKey
    }
}

/// One `nodes` entry. Strings inside it had `{node}` replaced by *this entry's* name, so a
/// shared template like `/run/keystore/{node}.sock` gives each node its own socket.
public struct NodeConfig: Sendable, Equatable {
    public var name: String
    /// Host without brackets (an IPv6 literal is bare here).
    public var peerHost: String
    public var peerPort: Int
    /// As written, `host:port` or `[v6]:port`, ready to show or to split again.
    public var peerAddress: String
    public var socketPath: String
    public var socketMode: UInt32
    /// Group name or number exactly as configured; resolving it is the daemon's job.
    public var socketGroup: String?
    public var dataDir: String
    /// Optional plain-HTTP listener serving only `GET /metrics` (Prometheus); meant for loopback.
    public var metricsHost: String?
    public var metricsPort: Int?

    public init(name: String, peerHost: String, peerPort: Int, peerAddress: String, socketPath: String,
                socketMode: UInt32 = 0o660, socketGroup: String? = nil, dataDir: String,
                metricsHost: String? = nil, metricsPort: Int? = nil) {
        self.metricsHost = metricsHost
        self.metricsPort = metricsPort
        self.name = name
        self.peerHost = peerHost
        self.peerPort = peerPort
        self.peerAddress = peerAddress
        self.socketPath = socketPath
        self.socketMode = socketMode
        self.socketGroup = socketGroup
        self.dataDir = dataDir
    }
}

public struct DomainConfig: Sendable, Equatable {
    public var name: String
    /// Effective size: the domain's own `ram_key_size` or the global one.
    public var ramKeySize: Int
    /// In config order, so listings match what the operator wrote.
    public var keys: [KeyConfig]

    public init(name: String, ramKeySize: Int, keys: [KeyConfig]) {
        self.name = name
        self.ramKeySize = ramKeySize
        self.keys = keys
    }
}

public struct KeyConfig: Sendable, Equatable {
    public var name: String
    public var kind: KeyKind

    public init(name: String, kind: KeyKind) {
        self.name = name
        self.kind = kind
    }
}

public enum KeyKind: Sendable, Equatable {
    case ram
    /// Absolute path of this node's PSK file.
    case file(path: String)
}

/// One `clients` entry. Matches a caller by uid, or by any of its gids.
public struct ClientRule: Sendable, Equatable {
    public var uid: UInt32?
    public var gid: UInt32?
    /// Domain names, or `"*"` for every domain (and for domain-less permissions).
    public var domains: [String]
    public var allow: Set<Permission>

    public init(uid: UInt32? = nil, gid: UInt32? = nil, domains: [String], allow: Set<Permission>) {
        self.uid = uid
        self.gid = gid
        self.domains = domains
        self.allow = allow
    }
}

/// The `log_level` values (swift-log's levels, by name).
public enum LogLevelSetting: String, Sendable, CaseIterable, Equatable {
    case trace, debug, info, notice, warning, error, critical
}
