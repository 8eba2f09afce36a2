import KeystoreAPI
import KeystoreJSON
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

extension ClusterConfig {
    /// The config file is a few KiB; the cap only stops a wrong path (a disk image, /dev/zero)
    /// from eating memory.
    static let maxConfigSize = 4 << 20

    /// Reads, substitutes and validates the config for node `node`, including the TLS and PSK
    /// files it names (PSK contents are wiped, not kept). The first problem found, in a fixed
    /// order (top-level fields, nodes, domains, clients, then files), is thrown.
    public static func load(path: String, node: String) throws(ConfigError) -> ClusterConfig {
        let absolute = PathUtil.absolute(path, relativeTo: PathUtil.currentDirectory())
        let bytes = try readConfigFile(absolute)
        return try parse(json: bytes, configDirectory: PathUtil.parent(of: absolute), node: node,
                         configFile: absolute)
    }

    /// Like `load` for a config already in memory (tests, reload from a buffer). Relative paths
    /// resolve against `configDirectory`; `configFile` (default: `configDirectory`) is only
    /// recorded and used in syntax-error messages.
    public static func parse(json: [UInt8], configDirectory: String, node: String,
                             configFile: String? = nil) throws(ConfigError) -> ClusterConfig {
        let directory = PathUtil.absolute(configDirectory, relativeTo: PathUtil.currentDirectory())
        let file = configFile.map { PathUtil.absolute($0, relativeTo: directory) } ?? directory
        let document: JSONValue
        do {
            document = try JSONReader.parse(json, allowComments: true)
        } catch {
            throw ConfigError.syntax(file: file, line: error.line, column: error.column, message: error.message)
        }
        var loader = Loader(nodeName: node, directory: directory, configFile: file)
        return try loader.load(document)
    }

    private static func readConfigFile(_ path: String) throws(ConfigError) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY)
        guard fd >= 0 else { throw .configFileUnreadable(path: path, reason: errnoString(errno)) }
        defer { _ = close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw .configFileUnreadable(path: path, reason: errnoString(errno)) }
        guard (info.st_mode & S_IFMT) == S_IFREG else {
            throw .configFileUnreadable(path: path, reason: "not a regular file")
        }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                let err = errno
                if err == EINTR { continue }
                throw .configFileUnreadable(path: path, reason: errnoString(err))
            }
            if n == 0 { break }
            bytes.append(contentsOf: chunk[0..<n])
            if bytes.count > maxConfigSize {
                throw .configFileUnreadable(path: path, reason: "larger than \(maxConfigSize) bytes")
            }
        }
        return bytes
    }
}

// MARK: - Field paths

/// Builds the operator-facing field paths used in every message, e.g.
/// `domains["first.com"].keys[1].path`.
enum FieldPath {
    static func field(_ base: String, _ name: String) -> String {
        let plain = !name.isEmpty && name.utf8.allSatisfy { c in
            (c >= 0x61 && c <= 0x7A) || (c >= 0x41 && c <= 0x5A) || (c >= 0x30 && c <= 0x39) || c == 0x5F
        }
        if !plain { return key(base, name) }
        return base.isEmpty ? name : base + "." + name
    }

    static func key(_ base: String, _ name: String) -> String {
        base + "[" + jsonQuoted(name) + "]"
    }

    static func index(_ base: String, _ i: Int) -> String { base + "[\(i)]" }

    static func display(_ path: String) -> String { path.isEmpty ? "(top level)" : path }

    /// JSON-style quoting keeps hostile names on one line and copy-pasteable.
    static func jsonQuoted(_ s: String) -> String { quotedOnOneLine(s, quote: "\"") }
}

// MARK: - Object access

/// A JSON object checked against the fields allowed at its position: duplicates and unknown
/// names are rejected up front so a typo like `"socket_mdoe"` can never be silently ignored.
struct ObjectFields {
    let path: String
    private var members: [String: JSONValue] = [:]

    init(_ value: JSONValue, path: String, allowed: [String]) throws(ConfigError) {
        self.path = path
        guard case .object(let list) = value else {
            throw .wrongType(field: FieldPath.display(path), expected: "an object", found: value.typeName)
        }
        for (key, member) in list {
            let childPath = FieldPath.field(path, key)
            guard allowed.contains(key) else { throw .unknownField(field: childPath, allowed: allowed) }
            guard members[key] == nil else { throw .duplicateField(field: childPath) }
            members[key] = member
        }
    }

    func path(_ name: String) -> String { FieldPath.field(path, name) }

    func value(_ name: String) -> JSONValue? { members[name] }

    func required(_ name: String) throws(ConfigError) -> JSONValue {
        guard let v = members[name] else { throw .missingField(field: path(name)) }
        return v
    }

    /// `nil` only when absent; an explicit `null` is a type error (it is never meaningful here).
    func string(_ name: String, required isRequired: Bool) throws(ConfigError) -> String? {
        guard let v = members[name] else {
            if isRequired { throw .missingField(field: path(name)) }
            return nil
        }
        return try Self.string(v, path: path(name))
    }

    static func string(_ v: JSONValue, path: String) throws(ConfigError) -> String {
        guard case .string(let s) = v else {
            throw .wrongType(field: path, expected: "a string", found: v.typeName)
        }
        return s
    }

    func integer(_ name: String, default def: Int, range: ClosedRange<Int>) throws(ConfigError) -> Int {
        guard let v = members[name] else { return def }
        return try Self.integer(v, path: path(name), range: range)
    }

    static func integer(_ v: JSONValue, path: String, range: ClosedRange<Int>) throws(ConfigError) -> Int {
        guard case .number(let raw, let int) = v else {
            throw .wrongType(field: path, expected: "an integer", found: v.typeName)
        }
        guard let int else {
            let looksInteger = !raw.contains(where: { $0 == "." || $0 == "e" || $0 == "E" })
            if looksInteger { throw .outOfRange(field: path, value: raw, min: range.lowerBound, max: range.upperBound) }
            throw .wrongType(field: path, expected: "an integer", found: "the non-integer number \(raw)")
        }
        guard range.contains(int) else {
            throw .outOfRange(field: path, value: raw, min: range.lowerBound, max: range.upperBound)
        }
        return int
    }
}

/// Entries of a JSON object used as a name → value map (`nodes`, `domains`), in document order.
func mapEntries(_ value: JSONValue, path: String) throws(ConfigError) -> [(key: String, value: JSONValue)] {
    guard case .object(let list) = value else {
        throw .wrongType(field: path, expected: "an object", found: value.typeName)
    }
    var seen = Set<String>()
    for (key, _) in list {
        guard seen.insert(key).inserted else { throw .duplicateField(field: FieldPath.key(path, key)) }
    }
    return list
}

func array(_ value: JSONValue, path: String) throws(ConfigError) -> [JSONValue] {
    guard case .array(let items) = value else {
        throw .wrongType(field: path, expected: "an array", found: value.typeName)
    }
    return items
}

// MARK: - Loader

struct Loader {
    let nodeName: String
    let directory: String
    let configFile: String

    static let topLevelFields = ["cluster", "tls", "join_timeout_ms", "grace_period_s", "ram_key_size",
                                 "log_level", "nodes", "domains", "clients"]
    static let tlsFields = ["ca", "cert", "key"]
    static let nodeFields = ["peer", "socket", "socket_mode", "socket_group", "data_dir", "metrics"]
    static let domainFields = ["ram_key_size", "keys"]
    static let keyFields = ["name", "type", "path"]
    static let clientFields = ["uid", "gid", "domains", "allow"]

    static let joinTimeoutRange = 0...600_000
    static let gracePeriodRange = 0...2_592_000
    static let ramKeySizeRange = 16...65_536
    /// (uid_t)-1 means "no change" to chown and friends, so it cannot name a real principal.
    static let idRange = 0...Int(UInt32.max - 1)
    /// sun_path is 108 bytes including the terminating NUL.
    static let maxSocketPathBytes = 107

    mutating func load(_ document: JSONValue) throws(ConfigError) -> ClusterConfig {
        let top = try ObjectFields(document, path: "", allowed: Self.topLevelFields)

        let cluster = try nonEmpty(top.string("cluster", required: true) ?? "", path: top.path("cluster"))
        guard Syntax.isClusterName(cluster) else { throw .badClusterName(field: top.path("cluster"), name: cluster) }
        let tls = try loadTLS(top.required("tls"), path: top.path("tls"))
        let joinTimeout = try top.integer("join_timeout_ms", default: 3000, range: Self.joinTimeoutRange)
        let grace = try top.integer("grace_period_s", default: 3600, range: Self.gracePeriodRange)
        let ramKeySize = try top.integer("ram_key_size", default: 2048, range: Self.ramKeySizeRange)
        var logLevel: LogLevelSetting?
        if let raw = try top.string("log_level", required: false) {
            guard let level = LogLevelSetting(rawValue: raw) else {
                throw .badEnumValue(field: top.path("log_level"), value: raw, allowed: LogLevelSetting.allCases.map(\.rawValue))
            }
            logLevel = level
        }

        let nodes = try loadNodes(top.required("nodes"), path: top.path("nodes"))
        guard nodes.contains(where: { $0.name == nodeName }) else {
            throw .unknownNode(name: nodeName, configured: nodes.map(\.name))
        }

        let domains = try loadDomains(top.required("domains"), path: top.path("domains"), defaultRAMKeySize: ramKeySize)
        let clients = try top.value("clients").map { (v) throws(ConfigError) in
            try loadClients(v, path: top.path("clients"), domainNames: domains.map(\.name))
        } ?? []

        // Filesystem checks last: a structural mistake is reported even on a host without the files.
        try checkTLSFile(tls.ca, field: FieldPath.field(top.path("tls"), "ca"), isPrivateKey: false)
        try checkTLSFile(tls.certificate, field: FieldPath.field(top.path("tls"), "cert"), isPrivateKey: false)
        try checkTLSFile(tls.privateKey, field: FieldPath.field(top.path("tls"), "key"), isPrivateKey: true)
        for domain in domains {
            for (i, key) in domain.config.keys.enumerated() {
                if case .file(let path) = key.kind {
                    let field = FieldPath.field(FieldPath.index(FieldPath.field(domain.path, "keys"), i), "path")
                    try PSKFile.validate(path: path, field: field)
                }
            }
        }

        var nodeMap: [String: NodeConfig] = [:]
        for node in nodes { nodeMap[node.name] = node.config }
        var domainMap: [String: DomainConfig] = [:]
        for domain in domains { domainMap[domain.name] = domain.config }
        var config = ClusterConfig(cluster: cluster, configFile: configFile, tls: tls, joinTimeoutMillis: joinTimeout,
                                   gracePeriodSeconds: grace, ramKeySize: ramKeySize, nodes: nodeMap,
                                   domains: domainMap, clients: clients, nodeName: nodeName)
        config.logLevel = logLevel
        return config
    }

    // MARK: strings and paths

    /// `{node}` is replaced in every string value; inside `nodes["X"]` it means X, elsewhere the
    /// `--node` name, so one shared file describes every node on every host.
    func substitute(_ s: String, node: String? = nil) -> String {
        // The byte test first: the standard library's substring search costs ~5 µs a call, and a
        // config declaring 10,000 keys calls this 20,000 times (measured: 80 ms of a restart).
        guard s.utf8.contains(UInt8(ascii: "{")), s.contains("{node}") else { return s }
        return s.split(separator: "{node}", omittingEmptySubsequences: false).joined(separator: node ?? nodeName)
    }

    func nonEmpty(_ s: String, path: String) throws(ConfigError) -> String {
        guard !s.isEmpty else { throw .emptyValue(field: path) }
        return s
    }

    func pathValue(_ fields: ObjectFields, _ name: String, node: String? = nil) throws(ConfigError) -> String? {
        guard let raw = try fields.string(name, required: false) else { return nil }
        let s = try nonEmpty(substitute(raw, node: node), path: fields.path(name))
        return PathUtil.absolute(s, relativeTo: directory)
    }

    // MARK: tls

    func loadTLS(_ value: JSONValue, path: String) throws(ConfigError) -> TLSFiles {
        let fields = try ObjectFields(value, path: path, allowed: Self.tlsFields)
        func req(_ name: String) throws(ConfigError) -> String {
            guard let p = try pathValue(fields, name) else { throw .missingField(field: fields.path(name)) }
            return p
        }
        return TLSFiles(ca: try req("ca"), certificate: try req("cert"), privateKey: try req("key"))
    }

    func checkTLSFile(_ path: String, field: String, isPrivateKey: Bool) throws(ConfigError) {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY)
        if fd < 0 {
            let err = errno
            if err == ENOENT || err == ENOTDIR { throw .tlsFileMissing(field: field, path: path) }
            throw .tlsFileUnreadable(field: field, path: path, reason: errnoString(err))
        }
        defer { _ = close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw .tlsFileUnreadable(field: field, path: path, reason: errnoString(errno)) }
        guard (info.st_mode & S_IFMT) == S_IFREG else { throw .tlsFileNotRegularFile(field: field, path: path) }
        let mode = UInt32(info.st_mode) & 0o7777
        if isPrivateKey && mode & 0o077 != 0 {
            throw .tlsKeyInsecureMode(field: field, path: path, mode: mode)
        }
    }

    // MARK: nodes

    struct LoadedNode {
        var name: String
        var config: NodeConfig
    }

    func loadNodes(_ value: JSONValue, path: String) throws(ConfigError) -> [LoadedNode] {
        let entries = try mapEntries(value, path: path)
        guard !entries.isEmpty else { throw .noNodes(field: path) }
        var result: [LoadedNode] = []
        var peers: [String: String] = [:]
        var sockets: [String: String] = [:]
        for (name, entry) in entries {
            let nodePath = FieldPath.key(path, name)
            guard Syntax.isDNSLabel(name) else { throw .badNodeName(field: nodePath, name: name) }
            let fields = try ObjectFields(entry, path: nodePath, allowed: Self.nodeFields)

            let peerRaw = try nonEmpty(substitute(fields.string("peer", required: true) ?? "", node: name),
                                       path: fields.path("peer"))
            let peer = try Syntax.parsePeer(peerRaw, field: fields.path("peer"))

            guard let socket = try pathValue(fields, "socket", node: name) else {
                throw .missingField(field: fields.path("socket"))
            }
            let socketBytes = socket.utf8.count
            guard socketBytes <= Self.maxSocketPathBytes else {
                throw .socketPathTooLong(field: fields.path("socket"), path: socket, bytes: socketBytes)
            }

            var mode: UInt32 = 0o660
            if let modeRaw = try fields.string("socket_mode", required: false) {
                let substituted = substitute(modeRaw, node: name)
                guard let parsed = Syntax.parseMode(substituted) else {
                    throw .badSocketMode(field: fields.path("socket_mode"), value: substituted)
                }
                mode = parsed
            }

            var group: String?
            if let g = try fields.string("socket_group", required: false) {
                group = try nonEmpty(substitute(g, node: name), path: fields.path("socket_group"))
            }

            guard let dataDir = try pathValue(fields, "data_dir", node: name) else {
                throw .missingField(field: fields.path("data_dir"))
            }

            // Optional Prometheus listener ("host:port"), same syntax as peer.
            var metrics: (host: String, port: Int)?
            if let metricsRaw = try fields.string("metrics", required: false) {
                let substituted = try nonEmpty(substitute(metricsRaw, node: name), path: fields.path("metrics"))
                let parsed = try Syntax.parsePeer(substituted, field: fields.path("metrics"))
                metrics = (parsed.host, parsed.port)
            }

            let peerKey = "[\(peer.host.lowercased())]:\(peer.port)"
            if let other = peers[peerKey] {
                throw .duplicatePeerAddress(field: fields.path("peer"), address: peerRaw, otherNode: other)
            }
            peers[peerKey] = name
            if let other = sockets[socket] {
                throw .duplicateSocketPath(field: fields.path("socket"), path: socket, otherNode: other)
            }
            sockets[socket] = name

            result.append(LoadedNode(name: name, config: NodeConfig(
                name: name, peerHost: peer.host, peerPort: peer.port, peerAddress: peerRaw,
                socketPath: socket, socketMode: mode, socketGroup: group, dataDir: dataDir,
                metricsHost: metrics?.host, metricsPort: metrics?.port)))
        }
        return result
    }

    // MARK: domains

    struct LoadedDomain {
        var name: String
        var path: String
        var config: DomainConfig
    }

    func loadDomains(_ value: JSONValue, path: String, defaultRAMKeySize: Int) throws(ConfigError) -> [LoadedDomain] {
        var result: [LoadedDomain] = []
        for (name, entry) in try mapEntries(value, path: path) {
            let domainPath = FieldPath.key(path, name)
            guard Syntax.isDomainName(name) else { throw .badDomainName(field: domainPath, name: name) }
            let fields = try ObjectFields(entry, path: domainPath, allowed: Self.domainFields)
            let size = try fields.integer("ram_key_size", default: defaultRAMKeySize, range: Self.ramKeySizeRange)
            var keys: [KeyConfig] = []
            if let keysValue = fields.value("keys") {
                var names = Set<String>()
                for (i, item) in try array(keysValue, path: fields.path("keys")).enumerated() {
                    let key = try loadKey(item, path: FieldPath.index(fields.path("keys"), i))
                    guard names.insert(key.name).inserted else {
                        throw .duplicateKeyName(field: FieldPath.field(FieldPath.index(fields.path("keys"), i), "name"),
                                                name: key.name)
                    }
                    keys.append(key)
                }
            }
            result.append(LoadedDomain(name: name, path: domainPath,
                                       config: DomainConfig(name: name, ramKeySize: size, keys: keys)))
        }
        return result
    }

    func loadKey(_ value: JSONValue, path: String) throws(ConfigError) -> KeyConfig {
        let fields = try ObjectFields(value, path: path, allowed: Self.keyFields)
        let name = substitute(try fields.string("name", required: true) ?? "")
        guard Syntax.isKeyName(name) else { throw .badKeyName(field: fields.path("name"), name: name) }
        let type = substitute(try fields.string("type", required: true) ?? "")
        switch type {
        case "ram":
            guard fields.value("path") == nil else { throw .ramKeyWithPath(field: fields.path("path")) }
            return KeyConfig(name: name, kind: .ram)
        case "file":
            guard let file = try pathValue(fields, "path") else { throw .fileKeyWithoutPath(field: fields.path("path")) }
            return KeyConfig(name: name, kind: .file(path: file))
        default:
            throw .unknownKeyType(field: fields.path("type"), value: type)
        }
    }

    // MARK: clients

    func loadClients(_ value: JSONValue, path: String, domainNames: [String]) throws(ConfigError) -> [ClientRule] {
        var rules: [ClientRule] = []
        for (i, item) in try array(value, path: path).enumerated() {
            let rulePath = FieldPath.index(path, i)
            let fields = try ObjectFields(item, path: rulePath, allowed: Self.clientFields)
            let uid = try id(fields, "uid")
            let gid = try id(fields, "gid")
            guard uid != nil || gid != nil else { throw .clientWithoutPrincipal(field: rulePath) }

            let domainsPath = fields.path("domains")
            let domainItems = try array(fields.required("domains"), path: domainsPath)
            guard !domainItems.isEmpty else { throw .clientDomainsEmpty(field: domainsPath) }
            var domains: [String] = []
            for (j, d) in domainItems.enumerated() {
                let itemPath = FieldPath.index(domainsPath, j)
                let name = substitute(try ObjectFields.string(d, path: itemPath))
                guard name == "*" || domainNames.contains(name) else {
                    throw .clientUnknownDomain(field: itemPath, domain: name, configured: domainNames.sorted())
                }
                if !domains.contains(name) { domains.append(name) }
            }

            let allowPath = fields.path("allow")
            let allowItems = try array(fields.required("allow"), path: allowPath)
            guard !allowItems.isEmpty else { throw .clientAllowEmpty(field: allowPath) }
            var allow = Set<Permission>()
            for (j, p) in allowItems.enumerated() {
                let itemPath = FieldPath.index(allowPath, j)
                let raw = substitute(try ObjectFields.string(p, path: itemPath))
                guard let permission = Permission(rawValue: raw) else {
                    throw .unknownPermission(field: itemPath, value: raw)
                }
                allow.insert(permission)
            }
            rules.append(ClientRule(uid: uid, gid: gid, domains: domains, allow: allow))
        }
        return rules
    }

    func id(_ fields: ObjectFields, _ name: String) throws(ConfigError) -> UInt32? {
        guard let v = fields.value(name) else { return nil }
        guard case .number(let raw, let int) = v else {
            throw .wrongType(field: fields.path(name), expected: "an integer", found: v.typeName)
        }
        guard let int, Self.idRange.contains(int), let value = UInt32(exactly: int) else {
            throw .badClientID(field: fields.path(name), value: raw)
        }
        return value
    }
}
