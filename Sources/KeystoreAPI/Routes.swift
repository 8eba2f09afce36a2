/// Every route of the local API, in one table shared by the server (matching, permission,
/// metric label), `KeystoreClient` and `keystorectl` (building paths). Adding a route means a
/// case here, its spec below, its body types in Types.swift, and one operation in the node.
public enum Endpoint: String, Sendable, CaseIterable {
    case health, metrics, cluster, reload, events
    case listKeys, getKey, rotateKey, signHMAC, verifyHMAC
    case listCerts, addCert, disableCert, revokeCert, revokeAllCerts, certStatus, saslExternal
    case issueToken, verifyToken, revokeTokens

    /// The route's method, template, access and query names. Built once per process: the
    /// server asks for it twice per request (route and metric label), and building it splits the
    /// template (that was ~2 µs of a 20 µs get-key, `perf record` of `bench/run.sh get-key`).
    public var spec: RouteSpec { Self.specs[self] ?? makeSpec() }

    private static let specs: [Endpoint: RouteSpec] = Dictionary(uniqueKeysWithValues: allCases.map { ($0, $0.makeSpec()) })

    private func makeSpec() -> RouteSpec {
        switch self {
        case .health: return RouteSpec(.GET, "/v1/health", access: .open)
        case .metrics: return RouteSpec(.GET, "/metrics", access: .open)
        case .cluster: return RouteSpec(.GET, "/v1/cluster", access: .node(.clusterRead))
        case .reload: return RouteSpec(.POST, "/v1/reload", access: .node(.admin))
        case .events: return RouteSpec(.GET, "/v1/events", access: .filtered(.eventsRead), query: ["since"])
        case .listKeys: return RouteSpec(.GET, "/v1/domains/{d}/keys", access: .domain(.keysRead))
        case .getKey: return RouteSpec(.GET, "/v1/domains/{d}/keys/{k}", access: .domain(.keysRead))
        case .rotateKey: return RouteSpec(.POST, "/v1/domains/{d}/keys/{k}/rotate", access: .domain(.keysRotate))
        case .signHMAC: return RouteSpec(.POST, "/v1/domains/{d}/keys/{k}/hmac", access: .domain(.keysSign))
        case .verifyHMAC: return RouteSpec(.POST, "/v1/domains/{d}/keys/{k}/verify", access: .domain(.keysVerify))
        case .listCerts: return RouteSpec(.GET, "/v1/domains/{d}/users/{u}/certs", access: .domain(.certsRead), query: ["all"])
        case .addCert: return RouteSpec(.POST, "/v1/domains/{d}/users/{u}/certs", access: .domain(.certsWrite))
        case .disableCert: return RouteSpec(.POST, "/v1/domains/{d}/users/{u}/certs/{name}/disable", access: .domain(.certsWrite))
        case .revokeCert: return RouteSpec(.POST, "/v1/domains/{d}/users/{u}/certs/{name}/revoke", access: .domain(.certsWrite))
        case .revokeAllCerts: return RouteSpec(.POST, "/v1/domains/{d}/users/{u}/certs/revoke-all", access: .domain(.certsWrite))
        case .certStatus: return RouteSpec(.POST, "/v1/domains/{d}/certs/status", access: .domain(.certsVerify))
        case .saslExternal: return RouteSpec(.POST, "/v1/domains/{d}/sasl-external", access: .domain(.certsVerify))
        case .issueToken: return RouteSpec(.POST, "/v1/domains/{d}/tokens", access: .domain(.tokensIssue))
        case .verifyToken: return RouteSpec(.POST, "/v1/domains/{d}/tokens/verify", access: .domain(.tokensVerify))
        case .revokeTokens: return RouteSpec(.POST, "/v1/domains/{d}/users/{u}/tokens/revoke", access: .domain(.tokensRevoke))
        }
    }

    /// Specs in table order, computed once (the server matches against it per request).
    public static let table: [(endpoint: Endpoint, spec: RouteSpec)] = allCases.map { ($0, $0.spec) }
}

public enum HTTPMethodName: String, Sendable {
    case GET, POST
}

/// Who may call a route.
public enum RouteAccess: Sendable, Equatable {
    /// Anyone who can connect (health, metrics).
    case open
    /// Node-wide: needs a rule with domains `["*"]` granting the permission.
    case node(Permission)
    /// Scoped to the `{d}` domain of the path.
    case domain(Permission)
    /// Any domain the caller holds the permission on; the answer is filtered to those (events).
    case filtered(Permission)

    public var permission: Permission? {
        switch self {
        case .open: return nil
        case .node(let p), .domain(let p), .filtered(let p): return p
        }
    }
}

public struct RouteSpec: Sendable {
    public enum Segment: Sendable, Equatable {
        case literal(String)
        case parameter(RouteParameter)
    }

    public let method: HTTPMethodName
    /// As written above, e.g. `/v1/domains/{d}/keys/{k}`: also the metric label, which carries
    /// the template and never a domain, user or key name.
    public let template: String
    public let segments: [Segment]
    public let access: RouteAccess
    /// Query parameters the route accepts; any other is a `bad_request`.
    public let query: [String]
    /// The path parameters of the template, in order.
    public var parameters: [RouteParameter] {
        segments.compactMap { if case .parameter(let parameter) = $0 { return parameter } else { return nil } }
    }

    init(_ method: HTTPMethodName, _ template: String, access: RouteAccess, query: [String] = []) {
        self.method = method
        self.template = template
        self.access = access
        self.query = query
        self.segments = template.split(separator: "/").map { part in
            switch part {
            case "{d}": return .parameter(.domain)
            case "{k}": return .parameter(.key)
            case "{u}": return .parameter(.user)
            case "{name}": return .parameter(.name)
            default: return .literal(String(part))
            }
        }
    }
}

public enum RouteParameter: String, Sendable {
    case domain, key, user, name

    /// What the CLI and error messages call it.
    public var label: String {
        switch self {
        case .domain: return "domain"
        case .key: return "key name"
        case .user: return "user"
        case .name: return "certificate name"
        }
    }
}

/// The path parameters of one request (decoded, not percent-encoded).
public struct RouteParameters: Sendable, Equatable {
    public var domain: String?
    public var key: String?
    public var user: String?
    public var name: String?

    public init(domain: String? = nil, key: String? = nil, user: String? = nil, name: String? = nil) {
        self.domain = domain
        self.key = key
        self.user = user
        self.name = name
    }

    public subscript(parameter: RouteParameter) -> String? {
        get {
            switch parameter {
            case .domain: return domain
            case .key: return key
            case .user: return user
            case .name: return name
            }
        }
        set {
            switch parameter {
            case .domain: domain = newValue
            case .key: key = newValue
            case .user: user = newValue
            case .name: name = newValue
            }
        }
    }
}

/// What the route table says about a request line.
public enum RouteMatch: Sendable, Equatable {
    case matched(Endpoint, RouteParameters)
    /// The path is a route, the method is not one of `allowed`.
    case methodNotAllowed(allowed: [HTTPMethodName])
    case notFound
}

public enum RouteTable {
    /// Matches percent-decoded path segments (`["v1", "domains", "first.com", "keys"]`).
    public static func match(method: String, segments: [String]) -> RouteMatch {
        var allowed: [HTTPMethodName] = []
        for (endpoint, spec) in Endpoint.table where spec.segments.count == segments.count {
            var parameters = RouteParameters()
            var fits = true
            for (pattern, segment) in zip(spec.segments, segments) {
                switch pattern {
                case .literal(let literal): fits = literal == segment
                case .parameter(let parameter): parameters[parameter] = segment
                }
                if !fits { break }
            }
            guard fits else { continue }
            if spec.method.rawValue == method { return .matched(endpoint, parameters) }
            allowed.append(spec.method)
        }
        return allowed.isEmpty ? .notFound : .methodNotAllowed(allowed: allowed)
    }
}

public enum PathBuildError: Error, Sendable, CustomStringConvertible, Equatable {
    case missing(RouteParameter)
    case invalid(RouteParameter, String)

    public var description: String {
        switch self {
        case .missing(let p): return "\(p.label) is required"
        case .invalid(let p, let why): return "\(p.label) \(why)"
        }
    }
}

extension Endpoint {
    /// The request target for this route: parameters percent-encoded so '/', '%', '?', '#'
    /// inside a domain, user or name can never change the route, plus the query (encoded).
    public func path(_ parameters: RouteParameters = RouteParameters(), query: [(String, String)] = []) throws(PathBuildError) -> String {
        var out = ""
        for segment in spec.segments {
            out += "/"
            switch segment {
            case .literal(let literal): out += literal
            case .parameter(let parameter):
                guard let value = parameters[parameter] else { throw .missing(parameter) }
                guard !value.isEmpty else { throw .invalid(parameter, "must not be empty") }
                // "." and ".." would be collapsed by URL normalisation into another route.
                guard value != "." && value != ".." else { throw .invalid(parameter, "must not be \"\(value)\"") }
                out += PercentEncoding.encode(value)
            }
        }
        if !query.isEmpty {
            out += "?" + query.map { PercentEncoding.encode($0.0) + "=" + PercentEncoding.encode($0.1) }.joined(separator: "&")
        }
        return out
    }
}

public enum PercentEncoding {
    /// Everything but RFC 3986 unreserved characters is escaped.
    public static func encode(_ text: String) -> String {
        var out = ""
        out.reserveCapacity(text.utf8.count)
        let hex: [Character] = Array("0123456789ABCDEF")
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
                 UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "."),
                 UInt8(ascii: "_"), UInt8(ascii: "~"):
                out.unicodeScalars.append(Unicode.Scalar(byte))
            default:
                out.append("%")
                out.append(hex[Int(byte >> 4)])
                out.append(hex[Int(byte & 0xF)])
            }
        }
        return out
    }

    /// nil for a malformed escape, invalid UTF-8 or a NUL byte.
    public static func decode<S: Sequence>(_ bytes: S) -> String? where S.Element == UInt8 {
        var out: [UInt8] = []
        var iterator = bytes.makeIterator()
        while let byte = iterator.next() {
            if byte == UInt8(ascii: "%") {
                guard let h = iterator.next(), let l = iterator.next(), let hv = hexValue(h), let lv = hexValue(l) else { return nil }
                out.append(hv << 4 | lv)
            } else {
                out.append(byte)
            }
        }
        guard !out.contains(0) else { return nil }
        return String(validating: out, as: UTF8.self)
    }

    private static func hexValue(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return c - UInt8(ascii: "A") + 10
        default: return nil
        }
    }
}

/// A request's query string, parsed: every name at most once, each a name the route accepts.
public struct QueryParameters: Sendable, Equatable {
    public private(set) var values: [String: String] = [:]

    public enum ParseError: Error, Sendable, CustomStringConvertible, Equatable {
        case malformed(String)
        case unknown(String, allowed: [String])
        case repeated(String)

        public var description: String {
            switch self {
            case .malformed(let part): return "query parameter '\(part)' is not valid percent-encoded UTF-8"
            case .unknown(let name, let allowed):
                return "unknown query parameter '\(name)'" + (allowed.isEmpty ? "; this route takes none" : "; allowed: \(allowed.joined(separator: ", "))")
            case .repeated(let name): return "query parameter '\(name)' is given more than once"
            }
        }
    }

    public init() {}

    /// `raw` is what follows '?' (without the fragment).
    public init(parsing raw: Substring, allowed: [String]) throws(ParseError) {
        for part in raw.split(separator: "&", omittingEmptySubsequences: true) {
            let pieces = part.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let plusAsSpace = { (s: Substring) in s.utf8.map { $0 == UInt8(ascii: "+") ? UInt8(ascii: " ") : $0 } }
            guard let name = PercentEncoding.decode(plusAsSpace(pieces[0])),
                  let value = PercentEncoding.decode(pieces.count > 1 ? plusAsSpace(pieces[1]) : []) else {
                throw .malformed(String(part))
            }
            guard allowed.contains(name) else { throw .unknown(name, allowed: allowed) }
            guard values[name] == nil else { throw .repeated(name) }
            values[name] = value
        }
    }

    public subscript(name: String) -> String? { values[name] }

    /// `1`/`true` → true, `0`/`false` → false, absent → `defaultValue`; anything else is an error.
    public func flag(_ name: String, default defaultValue: Bool = false) -> Bool? {
        guard let value = values[name] else { return defaultValue }
        switch value {
        case "1", "true": return true
        case "0", "false": return false
        default: return nil
        }
    }
}
