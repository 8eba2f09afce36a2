import CertificateRegistry
import Dispatch
import FoundationEssentials
import KeystoreAPI
import KeystoreConfig
import KeystoreJSON
import LocalAPI
import Logging
import NIOCore
import NIOHTTP1
import ReplicatedStore
import SecretMemory

/// What the router needs to know about the running node besides its operations.
public protocol NodeEnvironment: AnyObject, Sendable {
    func clusterStatus() -> ClusterStatus
    /// Whether secret memory is locked (else health shows a warning).
    var memoryLocked: Bool { get }
}

/// The local API's edge: matches a request against the contract's route table, enforces the
/// route's permission before anything else (a caller learns nothing about domains it may not
/// use), decodes the body strictly, calls one operation or query, and encodes the answer with
/// the contract's types. Node errors become HTTP errors here and nowhere else.
public final class APIRouter: APIResponder {
    let node: NodeOperations
    let environment: NodeEnvironment
    /// The daemon's own uid, always allowed (the ACL rules come from the current config).
    let daemonUID: UInt32

    init(node: NodeOperations, environment: NodeEnvironment, daemonUID: UInt32) {
        self.node = node
        self.environment = environment
        self.daemonUID = daemonUID
    }

    /// The ACL and domains of the config in force (a reload swaps them between requests).
    private var acl: AccessControl { node.state.config.accessControl(daemonUID: daemonUID) }
    private var domains: [String: DomainConfig] { node.state.config.domains }

    private var logger: Logger { node.logger }

    public func handle(_ request: APIRequest, allocator: ByteBufferAllocator, eventLoop: EventLoop) -> APIResult {
        let started = DispatchTime.now().uptimeNanoseconds
        var label = "other"
        let result: APIResult
        do {
            result = try route(request, allocator: allocator, eventLoop: eventLoop, label: &label)
        } catch {
            result = .response(.error(error, allocator: allocator))
        }
        let metrics = node.metrics
        let routeLabel = label
        switch result {
        case .response(let response):
            metrics.request(route: label, status: response.status, nanoseconds: DispatchTime.now().uptimeNanoseconds - started)
        case .deferred(let future):
            future.whenComplete { outcome in
                let status: HTTPResponseStatus
                switch outcome {
                case .success(let response): status = response.status
                case .failure(let error): status = (error as? APIError)?.status ?? .internalServerError
                }
                metrics.request(route: routeLabel, status: status, nanoseconds: DispatchTime.now().uptimeNanoseconds - started)
            }
        case .stream(let status, _):
            metrics.request(route: label, status: status, nanoseconds: DispatchTime.now().uptimeNanoseconds - started)
        }
        return result
    }

    // MARK: Dispatch

    /// `label` receives the route template (low cardinality, no user data) for metrics.
    private func route(_ request: APIRequest, allocator: ByteBufferAllocator, eventLoop: EventLoop,
                       label: inout String) throws(APIError) -> APIResult {
        guard let segments = request.pathSegments else {
            throw APIError(.badRequest, "request path is not valid percent-encoded UTF-8")
        }
        let endpoint: Endpoint
        let parameters: RouteParameters
        let match = RouteTable.match(method: request.method.rawValue, segments: segments)
        label = Self.metricLabel(match)
        switch match {
        case .notFound:
            throw APIError(.notFound, "no route \(request.method.rawValue) \(request.uri); see docs/api.md for the v1 routes")
        case .methodNotAllowed(let allowed):
            throw APIError(.methodNotAllowed, "\(request.method.rawValue) is not allowed on \(request.uri); use \(allowed.map(\.rawValue).joined(separator: " or "))")
        case .matched(let found, let values):
            endpoint = found
            parameters = values
        }
        let spec = endpoint.spec
        switch spec.access {
        case .open, .filtered: break
        case .node(let permission): try require(permission, domain: nil, request)
        case .domain(let permission): try require(permission, domain: parameters.domain, request)
        }
        let query: QueryParameters
        do { query = try QueryParameters(parsing: request.query, allowed: spec.query) } catch {
            throw APIError(.badRequest, error.description)
        }

        switch endpoint {
        case .health:
            return .response(try encode(health(), allocator))
        case .metrics:
            return .response(metricsResponse(node.metrics, allocator))
        case .cluster:
            return .response(try encode(cluster(), allocator))
        case .reload:
            let (changed, changes) = try mapped { () throws(NodeError) in try node.reload() }
            return .response(try encode(ReloadResponse(reloaded: true, changed: changed.map(\.description), config: changes.summary), allocator))
        case .events:
            return try events(request, since: query["since"])
        case .listKeys:
            return .response(try encode(listKeys(try domain(parameters)), allocator))
        case .getKey:
            return .response(try getKey(KeyRef(domain: try domain(parameters).name, name: parameters.key!), allocator))
        case .rotateKey:
            let ref = KeyRef(domain: try domain(parameters).name, name: parameters.key!)
            let views = try mapped { () throws(NodeError) in try node.rotate(ref, requestID: request.requestID) }
            return .response(try encode(KeyResponse(domain: ref.domain, name: ref.name, type: .ram, versions: views.map { Self.info($0, key: nil) }), allocator))
        case .signHMAC:
            let ref = KeyRef(domain: try domain(parameters).name, name: parameters.key!)
            let body = try decode(HMACRequest.self, request)
            let input = try base64(body.input, field: "input")
            let (mac, version) = try mapped { () throws(NodeError) in try node.signHMAC(ref, algorithm: body.algorithm, input: input) }
            return .response(try encode(HMACResponse(mac: Data(mac).base64EncodedString(), version: version, algorithm: body.algorithm), allocator))
        case .verifyHMAC:
            let ref = KeyRef(domain: try domain(parameters).name, name: parameters.key!)
            let body = try decode(VerifyMACRequest.self, request)
            let input = try base64(body.input, field: "input")
            let mac = try base64(body.mac, field: "mac")
            let version = try mapped { () throws(NodeError) in try node.verifyHMAC(ref, algorithm: body.algorithm, input: input, mac: mac) }
            return .response(try encode(VerifyMACResponse(valid: version != nil, version: version), allocator))
        case .issueToken:
            let domain = try domain(parameters).name
            let body = try decode(IssueTokenRequest.self, request)
            guard let jid = JID(body.jid) else { throw APIError(.badRequest, "\"jid\" must be a JID such as user@\(domain)") }
            let issued = try mapped { () throws(NodeError) in
                try node.issueToken(domain: domain, type: body.type, jid: jid, validForSeconds: body.validForSeconds, vcard: body.vcard)
            }
            return .response(try encode(issued, allocator))
        case .verifyToken:
            let domain = try domain(parameters).name
            let body = try decode(VerifyTokenRequest.self, request)
            return .response(try encode(try mapped { () throws(NodeError) in try node.verifyToken(domain: domain, token: body.token) }, allocator))
        case .revokeTokens:
            let (domain, user) = try account(parameters)
            try requireReady()
            let future = node.revokeTokens(domain: domain, user: user, requestID: request.requestID)
            return deferred(future, allocator) { floor in (RevokeTokensResponse(user: user.description, sequence: Int(clamping: floor.floor)), .ok) }
        case .listCerts:
            let (domain, user) = try account(parameters)
            try requireReady()
            guard let all = query.flag("all") else { throw APIError(.badRequest, "query parameter 'all' must be 1, 0, true or false") }
            let records = node.certificates(domain: domain, user: user, includeRemoved: all)
            return .response(try encode(CertificateListResponse(user: user.description, certs: records.compactMap(Self.entry)), allocator))
        case .addCert:
            let (domain, user) = try account(parameters)
            try requireReady()
            let body = try decode(AddCertificateRequest.self, request)
            let future = node.appendCertificate(domain: domain, user: user, name: body.name, certificate: body.certificate,
                                                noCertManagement: body.noCertManagement ?? false, requestID: request.requestID)
            return deferred(future, allocator) { record in (Self.entry(record), .created) }
        case .disableCert, .revokeCert:
            let (domain, user) = try account(parameters)
            try requireReady()
            let kind: RemovalKind = endpoint == .revokeCert ? .revoked : .disabled
            let future = node.removeCertificates(domain: domain, user: user, name: parameters.name!, kind: kind, requestID: request.requestID)
            return deferred(future, allocator) { records in (CertificateRemovalResponse(certs: records.compactMap(Self.entry)), .ok) }
        case .revokeAllCerts:
            let (domain, user) = try account(parameters)
            try requireReady()
            let future = node.removeCertificates(domain: domain, user: user, name: nil, kind: .revoked, requestID: request.requestID)
            return deferred(future, allocator) { records in (CertificateListResponse(user: user.description, certs: records.compactMap(Self.entry)), .ok) }
        case .certStatus:
            let domain = try domain(parameters).name
            try requireReady()
            let body = try decode(CertificateStatusRequest.self, request)
            guard body.certs.count <= CertificateStatusRequest.maxCertificates else {
                throw APIError(.badRequest, "\"certs\" lists \(body.certs.count) certificates; ask for at most \(CertificateStatusRequest.maxCertificates) at a time")
            }
            var refs: [(user: JID, sha256: [UInt8])] = []
            for (index, item) in body.certs.enumerated() {
                let user = try userJID(item.user, domain: domain)
                guard let sha256 = Self.parseFingerprint(item.fingerprintSHA256) else {
                    throw APIError(.badRequest, "certs[\(index)].fingerprint_sha256 must be 64 hex digits (the certificate's SHA-256)")
                }
                refs.append((user, sha256))
            }
            let states = node.certificateStatus(domain: domain, of: refs)
            let entries = zip(refs, states).map { CertificateStatusEntry(user: $0.0.user.description, fingerprintSHA256: hexString($0.0.sha256), state: $0.1) }
            return .response(try encode(CertificateStatusResponse(certs: entries), allocator))
        case .saslExternal:
            let domain = try domain(parameters).name
            try requireReady()
            let body = try decode(SASLExternalRequest.self, request)
            var authzid: JID?
            if let text = body.authzid {
                guard let jid = JID(text) else {
                    throw APIError(.badRequest, "\"authzid\" must be a JID such as user@\(domain) or user@\(domain)/resource")
                }
                authzid = jid
            }
            let (jid, record) = try mapped { () throws(NodeError) in try node.verifyCertificate(domain: domain, certificate: body.certificate, authzid: authzid) }
            let content = record.content!
            return .response(try encode(SASLExternalResponse(jid: jid.description, name: content.name, fingerprintSHA256: hexString(record.id.sha256),
                                                             noCertManagement: content.noCertManagement,
                                                             notAfter: iso8601(millis: UInt64(max(0, content.notAfterMillis)))), allocator))
        }
    }

    /// The route template, or "other" for anything that is not a route, so clients cannot
    /// mint metric series (or memory) with made-up paths.
    static func metricLabel(_ match: RouteMatch) -> String {
        if case .matched(let endpoint, _) = match { return endpoint.spec.template }
        return "other"
    }

    // MARK: Access

    private func require(_ permission: Permission, domain: String?, _ request: APIRequest) throws(APIError) {
        let caller = request.caller
        guard acl.permits(uid: caller.uid, gids: [caller.gid], permission: permission, domain: domain) else {
            logger.notice("request \(request.requestID): uid \(caller.uid) gid \(caller.gid) denied \(permission.rawValue) on \(domain ?? "*")")
            let scope = domain.map { "domain \($0)" } ?? "this node"
            throw APIError(.forbidden, "uid \(caller.uid) (gid \(caller.gid)) is not allowed \(permission.rawValue) on \(scope); add a clients rule to the config")
        }
    }

    /// Registry answers wait for the join: a restarted node's database may still hold a
    /// certificate that peers revoked while it was down.
    private func requireReady() throws(APIError) {
        guard node.isReady else {
            throw APIError(.notReady, "this node is still catching up with the cluster; retry shortly")
        }
    }

    private func domain(_ parameters: RouteParameters) throws(APIError) -> DomainConfig {
        let name = parameters.domain ?? ""
        guard let domain = domains[name] else { throw APIError(.notFound, "no domain \(name) on this node") }
        return domain
    }

    private func account(_ parameters: RouteParameters) throws(APIError) -> (domain: String, user: JID) {
        let domain = try domain(parameters).name
        return (domain, try userJID(parameters.user ?? "", domain: domain))
    }

    /// `{u}` is the account's localpart (or the bare JID `local@domain`).
    private func userJID(_ segment: String, domain: String) throws(APIError) -> JID {
        let text = segment.contains("@") ? segment : "\(segment)@\(domain)"
        guard let jid = JID(text), jid.isBare, jid.local != nil else {
            throw APIError(.badRequest, "'\(segment)' is not a valid user: use the localpart of a JID (e.g. alice for alice@\(domain))")
        }
        guard jid.domain == domain else {
            throw APIError(.badRequest, "user \(jid) does not belong to domain \(domain)")
        }
        return jid
    }

    // MARK: Bodies and answers

    private func decode<T: StrictlyDecodable>(_ type: T.Type, _ request: APIRequest) throws(APIError) -> T {
        guard request.body.readableBytes > 0 else { throw APIError(.badRequest, "this route needs a JSON object body") }
        do {
            return try StrictJSON.decode(type, from: Array(request.body.readableBytesView))
        } catch {
            throw APIError(.badRequest, error.description)
        }
    }

    private static let encoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.withoutEscapingSlashes]
        return encoder
    }()

    private func encode<T: Encodable>(_ value: T, _ allocator: ByteBufferAllocator, status: HTTPResponseStatus = .ok) throws(APIError) -> APIResponse {
        do {
            var data = try Self.encoder.encode(value)
            data.append(0x0A)
            var buffer = allocator.buffer(capacity: data.count)
            buffer.writeBytes(data)
            return APIResponse(status: status, body: buffer)
        } catch {
            throw APIError(.internalError, "cannot encode the answer: \(error)")
        }
    }

    /// An operation that completes later: its value is encoded, its `NodeError` mapped.
    private func deferred<T, Body: Encodable & Sendable>(_ future: EventLoopFuture<T>, _ allocator: ByteBufferAllocator,
                                             _ answer: @escaping @Sendable (T) -> (Body, HTTPResponseStatus)) -> APIResult {
        .deferred(future.flatMapErrorThrowing { error in
            throw (error as? NodeError).map(Self.apiError) ?? APIError(.internalError, "request failed: \(error)")
        }.flatMapThrowing { value in
            let (body, status) = answer(value)
            return try self.encode(body, allocator, status: status)
        })
    }

    private func base64(_ text: String, field: String) throws(APIError) -> [UInt8] {
        guard let data = Data(base64Encoded: text) else { throw APIError(.badRequest, "\"\(field)\" must be base64") }
        return Array(data)
    }

    /// Runs a synchronous operation, mapping its error.
    private func mapped<R>(_ body: () throws(NodeError) -> R) throws(APIError) -> R {
        do { return try body() } catch { throw Self.apiError(error) }
    }

    /// The one place node errors become HTTP errors.
    static func apiError(_ error: NodeError) -> APIError {
        switch error {
        case .unknownDomain, .unknownKey, .noSuchCertificate: return APIError(.notFound, error.description)
        case .notRAMKey, .invalidUser, .invalidArgument: return APIError(.badRequest, error.description)
        case .notReady: return APIError(.notReady, error.description)
        case .unparsableCertificate: return APIError(.invalidCertificate, error.description)
        case .registry(let rule):
            switch rule {
            case .nameInUse, .alreadyRegistered, .previouslyRemoved: return APIError(.conflict, error.description)
            case .badName, .userNotBare: return APIError(.badRequest, error.description)
            default: return APIError(.invalidCertificate, error.description)
            }
        case .verification: return APIError(.forbidden, error.description)
        case .reloadRefused: return APIError(.conflict, error.description)
        case .notPersisted, .secretMemory, .crypto: return APIError(.internalError, error.description)
        }
    }

    static func entry(_ record: CertificateRecord) -> CertificateEntry? {
        guard let content = record.content else { return nil }
        let state: CertificateState
        switch record.removal?.kind {
        case nil: state = .active
        case .disabled?: state = .disabled
        case .revoked?: state = .revoked
        }
        return CertificateEntry(name: content.name, fingerprintSHA256: hexString(record.id.sha256),
                                notBefore: iso8601(millis: UInt64(max(0, content.notBeforeMillis))),
                                notAfter: iso8601(millis: UInt64(max(0, content.notAfterMillis))),
                                jids: content.jids, noCertManagement: content.noCertManagement,
                                added: iso8601(millis: content.added.wallMillis), state: state,
                                certificate: state == .active && !content.der.isEmpty ? Data(content.der).base64EncodedString() : nil)
    }

    static func parseFingerprint(_ text: String) -> [UInt8]? {
        let hex = String(text.filter { $0 != ":" }).lowercased()
        guard hex.utf8.count == 64 else { return nil }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(32)
        var index = hex.startIndex
        while index < hex.endIndex {
            let next = hex.index(index, offsetBy: 2)
            guard let byte = UInt8(hex[index..<next], radix: 16) else { return nil }
            bytes.append(byte)
            index = next
        }
        return bytes
    }

    static func info(_ view: KeyVersionView, key: String?) -> KeyVersionInfo {
        KeyVersionInfo(id: view.version.id.description, key: key, primary: view.isPrimary,
                       created: iso8601(millis: view.version.id.created.wallMillis),
                       expires: view.expiresAtMillis.map { iso8601(millis: $0) })
    }

    // MARK: Node-wide routes

    private func health() -> HealthResponse {
        let status = environment.clusterStatus()
        var problems: [String] = node.state.pskMismatches(among: status.aliveNodes.union([node.nodeName])).map { m in
            "PSK \(m.key.domain)/\(m.key.name) differs between nodes \(m.fingerprintsByNode.keys.sorted().joined(separator: ", "))"
        }
        let failures = node.registry.failures.withLock { $0 }
        if failures.pendingRecords > 0, let error = failures.lastError, let since = failures.sinceMillis {
            problems.append("registry database \(node.registry.path): \(failures.pendingRecords) records from peers could not be written since \(iso8601(millis: since)) (\(error)); they are applied once a write succeeds (peers resend them)")
        }
        if let waiting = status.joinProblem { problems.append(waiting) }
        if !environment.memoryLocked {
            problems.append("secret memory is not locked (mlock failed): raise LimitMEMLOCK for the service")
        }
        return HealthResponse(status: problems.isEmpty ? .ok : .degraded, ready: node.isReady, node: node.nodeName,
                              cluster: node.clusterName, version: keystoreVersion, memoryLocked: environment.memoryLocked,
                              problems: problems)
    }

    private func cluster() -> ClusterResponse {
        let status = environment.clusterStatus()
        let mismatches = node.state.pskMismatches(among: status.aliveNodes.union([node.nodeName]))
        let members = status.members.map { member in
            ClusterMemberInfo(node: member.node, address: member.address, state: MemberState(rawValue: member.state) ?? .joining,
                              lastContact: member.lastContactMillis.map { iso8601(millis: $0) }, version: member.version,
                              sync: member.sync)
        }
        let psk = mismatches.map { m in
            PSKMismatchInfo(domain: m.key.domain, name: m.key.name, nodes: m.fingerprintsByNode.keys.sorted(),
                            fingerprints: m.fingerprintsByNode.mapValues { hexString(Array($0.prefix(8))) })
        }
        return ClusterResponse(node: node.nodeName, cluster: node.clusterName, ready: node.isReady, members: members, pskMismatches: psk)
    }

    private func events(_ request: APIRequest, since: String?) throws(APIError) -> APIResult {
        let caller = request.caller
        let acl = self.acl
        let visible = acl.visibleDomains(uid: caller.uid, gids: [caller.gid], permission: .eventsRead, allDomains: domains.keys.sorted())
        let nodeWide = acl.permits(uid: caller.uid, gids: [caller.gid], permission: .eventsRead, domain: nil)
        if !nodeWide && visible.isEmpty { try require(.eventsRead, domain: nil, request) }
        do {
            let subscription = try node.events.subscribe(domains: nodeWide ? nil : Set(visible), nodeWide: nodeWide, since: since)
            return .stream(status: .ok, subscription)
        } catch {
            throw APIError(.badRequest, "query parameter 'since' must be a cursor from an earlier event (\"<process>.<seq>\")")
        }
    }

    // MARK: Keys

    private func listKeys(_ domain: DomainConfig) -> KeyListResponse {
        KeyListResponse(domain: domain.name, keys: domain.keys.map { key in
            let type: KeyType
            switch key.kind {
            case .ram: type = .ram
            case .file: type = .file
            }
            return KeySummary(name: key.name, type: type, versions: node.state.versionCount(KeyRef(domain: domain.name, name: key.name)))
        })
    }

    /// The prepared body (NodeState.preparedKeyBody), copied into the response buffer. Written
    /// by hand, not with `JSONEncoder`: the base64 key material goes straight from protected
    /// memory into the response and never exists as a Swift `String`; prepared once per key
    /// version set because building it was 22 % of a get-key's CPU (base64 alone 7 %).
    private func getKey(_ ref: KeyRef, _ allocator: ByteBufferAllocator) throws(APIError) -> APIResponse {
        let body = try mapped { () throws(NodeError) in try node.state.preparedKeyBody(ref) }
        var buffer = allocator.buffer(capacity: body.count)
        _ = body.withUnsafeBytes { buffer.writeBytes($0) }
        return APIResponse(body: buffer, extraHeaders: Self.getKeyHeaders)
    }

    /// Headers of every get-key answer (one shared array, not one per request).
    private static let getKeyHeaders = [("cache-control", "no-store")]
}

/// Serves `GET /metrics` only: the optional TCP listener for Prometheus.
struct MetricsResponder: APIResponder {
    let metrics: NodeMetrics
    func handle(_ request: APIRequest, allocator: ByteBufferAllocator, eventLoop: EventLoop) -> APIResult {
        guard request.method == .GET, request.pathSegments == ["metrics"] else {
            return .response(.error(APIError(.notFound, "only GET /metrics is served on this listener"), allocator: allocator))
        }
        return .response(metricsResponse(metrics, allocator))
    }
}

func metricsResponse(_ metrics: NodeMetrics, _ allocator: ByteBufferAllocator) -> APIResponse {
    let bytes = metrics.exposition()
    var buffer = allocator.buffer(capacity: bytes.count)
    buffer.writeBytes(bytes)
    return APIResponse(contentType: "text/plain; version=0.0.4", body: buffer)
}
