import KeystoreConfig
import LocalAPI
import Logging
import CertificateRegistry
import Dispatch
import Foundation
import NIOCore
import NIOHTTP1
import ReplicatedStore
import SecretMemory

/// What the router needs from the rest of the node.
public protocol NodeServices: AnyObject, Sendable {
    var state: NodeState { get }
    /// Locally created versions to push to peers.
    func publish(_ delta: StoreDelta)
    func clusterStatus() -> ClusterStatus
    /// Reread PSK files; returns the keys whose content changed.
    func reload() throws -> [KeyRef]
    /// Whether secret memory is locked (else health shows a warning).
    var memoryLocked: Bool { get }
    var events: EventHub { get }
    var metrics: NodeMetrics { get }
    var certificates: CertificateService { get }
    var logger: Logger { get }
}

public let keystoreVersion = "0.1.0"

/// Routes local API requests (DESIGN.md "HTTP routes"), enforcing the per-domain ACL first so
/// a caller learns nothing about domains it may not use.
public final class APIRouter: APIResponder {
    let services: NodeServices
    let acl: AccessControl
    let domains: [String: DomainConfig]

    public init(services: NodeServices, acl: AccessControl) {
        self.services = services
        self.acl = acl
        self.domains = services.state.config.domains
    }

    public func handle(_ request: APIRequest, allocator: ByteBufferAllocator, eventLoop: EventLoop) -> APIResult {
        let started = DispatchTime.now().uptimeNanoseconds
        var label = "unknown"
        let result: APIResult
        do {
            result = try route(request, allocator: allocator, eventLoop: eventLoop, label: &label)
        } catch let error as APIError {
            result = .response(.error(error, allocator: allocator))
        } catch {
            services.logger.error("request \(request.requestID) failed: \(error)")
            result = .response(.error(APIError(.internalError, "internal error; see the node's log (request \(request.requestID))"), allocator: allocator))
        }
        let metrics = services.metrics
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

    private func require(_ permission: Permission, domain: String?, _ request: APIRequest) throws(APIError) {
        let caller = request.caller
        guard acl.permits(uid: caller.uid, gids: [caller.gid], permission: permission, domain: domain) else {
            services.logger.notice("request \(request.requestID): uid \(caller.uid) gid \(caller.gid) denied \(permission.rawValue) on \(domain ?? "*")")
            let scope = domain.map { "domain \($0)" } ?? "this node"
            throw APIError(.forbidden, "uid \(caller.uid) (gid \(caller.gid)) is not allowed \(permission.rawValue) on \(scope); add a clients rule to the config")
        }
    }

    private func requireMethod(_ request: APIRequest, _ allowed: HTTPMethod) throws(APIError) {
        guard request.method == allowed else {
            throw APIError(.methodNotAllowed, "\(request.method.rawValue) is not allowed on \(request.uri); use \(allowed.rawValue)")
        }
    }

    private func domain(_ name: String) throws(APIError) -> DomainConfig {
        guard let domain = domains[name] else { throw APIError(.notFound, "no domain \(name) on this node") }
        return domain
    }

    /// `label` receives the route template (low cardinality, no user data) for metrics.
    private func route(_ request: APIRequest, allocator: ByteBufferAllocator, eventLoop: EventLoop, label: inout String) throws -> APIResult {
        guard let path = request.pathSegments else {
            throw APIError(.badRequest, "request path is not valid percent-encoded UTF-8")
        }
        label = APIRouter.routeLabel(path)
        switch path.count {
        case 1 where path[0] == "metrics":
            try requireMethod(request, .GET)
            return .response(metricsResponse(services.metrics, allocator))
        case 2 where path[0] == "v1" && path[1] == "health":
            try requireMethod(request, .GET)
            return .response(health(allocator))
        case 2 where path[0] == "v1" && path[1] == "cluster":
            try requireMethod(request, .GET)
            try require(.clusterRead, domain: nil, request)
            return .response(cluster(allocator))
        case 2 where path[0] == "v1" && path[1] == "reload":
            try requireMethod(request, .POST)
            try require(.admin, domain: nil, request)
            let changed: [KeyRef]
            do {
                changed = try services.reload()
            } catch let error as ConfigError {
                throw APIError(.conflict, "reload refused, previous keys kept: \(error.description)")
            }
            var json = JSONWriter(allocator: allocator)
            json.beginObject()
            json.key("reloaded"); json.bool(true)
            json.key("changed"); json.beginArray()
            for ref in changed { json.string("\(ref.domain)/\(ref.name)") }
            json.endArray()
            json.endObject(); json.newline()
            return .response(APIResponse(body: json.buffer))
        case 2 where path[0] == "v1" && path[1] == "events":
            try requireMethod(request, .GET)
            let caller = request.caller
            let all = domains.keys.sorted()
            let visible = acl.visibleDomains(uid: caller.uid, gids: [caller.gid], permission: .eventsRead, allDomains: all)
            let nodeWide = acl.permits(uid: caller.uid, gids: [caller.gid], permission: .eventsRead, domain: nil)
            if !nodeWide && visible.isEmpty { try require(.eventsRead, domain: nil, request) }
            let subscription = services.events.subscribe(domains: nodeWide ? nil : Set(visible), nodeWide: nodeWide)
            return .stream(status: .ok, subscription)
        case 4 where path[0] == "v1" && path[1] == "domains" && path[3] == "keys":
            try requireMethod(request, .GET)
            try require(.keysRead, domain: path[2], request)
            return .response(listKeys(try domain(path[2]), allocator))
        case 5 where path[0] == "v1" && path[1] == "domains" && path[3] == "keys":
            try requireMethod(request, .GET)
            try require(.keysRead, domain: path[2], request)
            return .response(try getKey(try domain(path[2]), name: path[4], allocator))
        case 6 where path[0] == "v1" && path[1] == "domains" && path[3] == "keys" && path[5] == "rotate":
            try requireMethod(request, .POST)
            try require(.keysRotate, domain: path[2], request)
            return .response(try rotate(try domain(path[2]), name: path[4], request, allocator))
        case 6 where path[0] == "v1" && path[1] == "domains" && path[3] == "users" && path[5] == "certs":
            try require(request.method == .GET ? .certsRead : .certsWrite, domain: path[2], request)
            let domain = try domain(path[2]).name
            let user = try userJID(path[4], domain: domain)
            if request.method == .GET {
                try requireReady()
                let all = request.uri.contains("all=1") || request.uri.contains("all=true")
                return .response(listCertificates(services.certificates.list(domain: domain, user: user, includeRemoved: all), user: user, allocator))
            }
            try requireMethod(request, .POST)
            try requireReady()
            let body = try jsonBody(request)
            guard let name = body["name"] as? String else { throw APIError(.badRequest, "body needs \"name\": a string naming the certificate") }
            guard let certificate = body["certificate"] as? String else {
                throw APIError(.badRequest, "body needs \"certificate\": the certificate as PEM or base64 DER")
            }
            let noCertManagement: Bool
            switch body["no_cert_management"] {
            case nil: noCertManagement = false
            case let flag as Bool: noCertManagement = flag
            default: throw APIError(.badRequest, "\"no_cert_management\" must be true or false")
            }
            let future = try services.certificates.append(domain: domain, user: user, name: name, certificateText: certificate,
                                                          noCertManagement: noCertManagement, eventLoop: eventLoop)
            let services = self.services
            return .deferred(future.map { record in
                services.publish(StoreDelta(certificates: [record]))
                services.logger.info("request \(request.requestID): uid \(request.caller.uid) registered certificate '\(name)' for \(user)")
                var json = JSONWriter(allocator: allocator)
                APIRouter.writeCertificate(record, into: &json)
                json.newline()
                return APIResponse(status: .created, body: json.buffer)
            })
        case 8 where path[0] == "v1" && path[1] == "domains" && path[3] == "users" && path[5] == "certs"
                     && (path[7] == "disable" || path[7] == "revoke"):
            try requireMethod(request, .POST)
            try require(.certsWrite, domain: path[2], request)
            let domain = try domain(path[2]).name
            try requireReady()
            let user = try userJID(path[4], domain: domain)
            let kind: RemovalKind = path[7] == "revoke" ? .revoked : .disabled
            let name = path[6]
            let future = try services.certificates.remove(domain: domain, user: user, name: name, kind: kind, eventLoop: eventLoop)
            let services = self.services
            return .deferred(future.map { record in
                services.publish(StoreDelta(certificates: [record]))
                services.logger.info("request \(request.requestID): uid \(request.caller.uid) \(path[7] == "revoke" ? "revoked" : "disabled") certificate '\(name)' of \(user)")
                var json = JSONWriter(allocator: allocator)
                APIRouter.writeCertificate(record, into: &json)
                json.newline()
                return APIResponse(body: json.buffer)
            })
        case 4 where path[0] == "v1" && path[1] == "domains" && path[3] == "sasl-external":
            try requireMethod(request, .POST)
            try require(.certsVerify, domain: path[2], request)
            let domain = try domain(path[2]).name
            try requireReady()
            let body = try jsonBody(request)
            guard let certificate = body["certificate"] as? String else {
                throw APIError(.badRequest, "body needs \"certificate\": the client certificate as PEM or base64 DER")
            }
            var authzid: JID?
            if let raw = body["authzid"] {
                guard let text = raw as? String, let jid = JID(text) else {
                    throw APIError(.badRequest, "\"authzid\" must be a JID such as user@\(domain) or user@\(domain)/resource")
                }
                authzid = jid
            }
            let jid = try services.certificates.verify(domain: domain, certificateText: certificate, authzid: authzid)
            var json = JSONWriter(allocator: allocator)
            json.beginObject()
            json.key("jid"); json.string(jid.description)
            json.endObject(); json.newline()
            return .response(APIResponse(body: json.buffer))
        default:
            throw APIError(.notFound, "no route \(request.method.rawValue) \(request.uri); see DESIGN.md for the v1 routes")
        }
    }

    /// Registry answers wait for the join: a restarted node's database may still hold a
    /// certificate that peers revoked while it was down.
    private func requireReady() throws(APIError) {
        guard services.state.isReady else {
            throw APIError(.notReady, "this node is still catching up with the cluster; retry shortly")
        }
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

    private func jsonBody(_ request: APIRequest) throws(APIError) -> [String: Any] {
        guard request.body.readableBytes > 0 else { throw APIError(.badRequest, "this route needs a JSON object body") }
        let data = Data(request.body.readableBytesView)
        guard let object = try? JSONSerialization.jsonObject(with: data), let dictionary = object as? [String: Any] else {
            throw APIError(.badRequest, "request body is not a JSON object")
        }
        return dictionary
    }

    private func listCertificates(_ records: [CertificateRecord], user: JID, _ allocator: ByteBufferAllocator) -> APIResponse {
        var json = JSONWriter(allocator: allocator, capacity: 256 + 256 * records.count)
        json.beginObject()
        json.key("user"); json.string(user.description)
        json.key("certs"); json.beginArray()
        for record in records where record.content != nil { APIRouter.writeCertificate(record, into: &json) }
        json.endArray()
        json.endObject(); json.newline()
        return APIResponse(body: json.buffer)
    }

    static func writeCertificate(_ record: CertificateRecord, into json: inout JSONWriter) {
        json.beginObject()
        if let content = record.content {
            json.key("name"); json.string(content.name)
        }
        json.key("fingerprint_sha256"); json.string(record.id.sha256.map(byteHex).joined())
        if let content = record.content {
            json.key("not_before"); json.string(iso8601(millis: UInt64(max(0, content.notBeforeMillis))))
            json.key("not_after"); json.string(iso8601(millis: UInt64(max(0, content.notAfterMillis))))
            json.key("jids"); json.strings(content.jids)
            json.key("no_cert_management"); json.bool(content.noCertManagement)
            json.key("added"); json.string(iso8601(millis: content.added.wallMillis))
        }
        json.key("state")
        switch record.removal?.kind {
        case nil: json.string("active")
        case .disabled: json.string("disabled")
        case .revoked: json.string("revoked")
        }
        json.endObject()
    }

    /// The route template of a path, e.g. `/v1/domains/{d}/keys/{k}`; anything that is not a
    /// route is "other", so clients cannot mint metric series (or memory) with made-up paths.
    static func routeLabel(_ path: [String]) -> String {
        if path == ["metrics"] { return "/metrics" }
        guard path.first == "v1" else { return "other" }
        switch path.count {
        case 2 where ["health", "cluster", "reload", "events"].contains(path[1]):
            return "/v1/" + path[1]
        case 4 where path[1] == "domains" && path[3] == "keys": return "/v1/domains/{d}/keys"
        case 4 where path[1] == "domains" && path[3] == "sasl-external": return "/v1/domains/{d}/sasl-external"
        case 5 where path[1] == "domains" && path[3] == "keys": return "/v1/domains/{d}/keys/{k}"
        case 6 where path[1] == "domains" && path[3] == "keys" && path[5] == "rotate": return "/v1/domains/{d}/keys/{k}/rotate"
        case 6 where path[1] == "domains" && path[3] == "users" && path[5] == "certs": return "/v1/domains/{d}/users/{u}/certs"
        case 8 where path[1] == "domains" && path[3] == "users" && path[5] == "certs" && path[7] == "disable":
            return "/v1/domains/{d}/users/{u}/certs/{name}/disable"
        case 8 where path[1] == "domains" && path[3] == "users" && path[5] == "certs" && path[7] == "revoke":
            return "/v1/domains/{d}/users/{u}/certs/{name}/revoke"
        default: return "other"
        }
    }

    private func health(_ allocator: ByteBufferAllocator) -> APIResponse {
        let state = services.state
        let status = services.clusterStatus()
        let mismatches = state.pskMismatches(among: status.aliveNodes.union([state.nodeName]))
        var json = JSONWriter(allocator: allocator)
        json.beginObject()
        json.key("status"); json.string(mismatches.isEmpty ? "ok" : "degraded")
        json.key("ready"); json.bool(state.isReady)
        json.key("node"); json.string(state.nodeName)
        json.key("cluster"); json.string(state.config.cluster)
        json.key("version"); json.string(keystoreVersion)
        json.key("memory_locked"); json.bool(services.memoryLocked)
        if !mismatches.isEmpty {
            json.key("problems"); json.beginArray()
            for m in mismatches {
                json.string("PSK \(m.key.domain)/\(m.key.name) differs between nodes \(m.fingerprintsByNode.keys.sorted().joined(separator: ", "))")
            }
            json.endArray()
        }
        json.endObject(); json.newline()
        return APIResponse(body: json.buffer)
    }

    private func cluster(_ allocator: ByteBufferAllocator) -> APIResponse {
        let state = services.state
        let status = services.clusterStatus()
        let mismatches = state.pskMismatches(among: status.aliveNodes.union([state.nodeName]))
        var json = JSONWriter(allocator: allocator, capacity: 512)
        json.beginObject()
        json.key("node"); json.string(state.nodeName)
        json.key("cluster"); json.string(state.config.cluster)
        json.key("ready"); json.bool(state.isReady)
        json.key("members"); json.beginArray()
        for member in status.members {
            json.beginObject()
            json.key("node"); json.string(member.node)
            json.key("address"); json.string(member.address)
            json.key("state"); json.string(member.state)
            if let last = member.lastContactMillis { json.key("last_contact"); json.string(iso8601(millis: last)) }
            if let version = member.version { json.key("version"); json.string(version) }
            if let sync = member.sync { json.key("sync"); json.string(sync) }
            json.endObject()
        }
        json.endArray()
        json.key("psk_mismatches"); json.beginArray()
        for m in mismatches {
            json.beginObject()
            json.key("domain"); json.string(m.key.domain)
            json.key("name"); json.string(m.key.name)
            json.key("nodes"); json.strings(m.fingerprintsByNode.keys.sorted())
            json.key("fingerprints"); json.beginObject()
            for (node, fp) in m.fingerprintsByNode.sorted(by: { $0.key < $1.key }) {
                json.key(node); json.string(fp.prefix(8).map(byteHex).joined())
            }
            json.endObject()
            json.endObject()
        }
        json.endArray()
        json.endObject(); json.newline()
        return APIResponse(body: json.buffer)
    }

    private func listKeys(_ domain: DomainConfig, _ allocator: ByteBufferAllocator) -> APIResponse {
        var json = JSONWriter(allocator: allocator)
        json.beginObject()
        json.key("domain"); json.string(domain.name)
        json.key("keys"); json.beginArray()
        for key in domain.keys {
            json.beginObject()
            json.key("name"); json.string(key.name)
            switch key.kind {
            case .ram: json.key("type"); json.string("ram")
            case .file: json.key("type"); json.string("file")
            }
            json.key("versions")
            if let count = services.state.versionCount(KeyRef(domain: domain.name, name: key.name)) { json.int(count) } else { json.null() }
            json.endObject()
        }
        json.endArray()
        json.endObject(); json.newline()
        return APIResponse(body: json.buffer)
    }

    /// Served from the prepared body (PreparedResponses.swift); the ACL was checked by `route`.
    private func getKey(_ domain: DomainConfig, name: String, _ allocator: ByteBufferAllocator) throws(APIError) -> APIResponse {
        try services.state.getKeyResponse(KeyRef(domain: domain.name, name: name), allocator: allocator)
    }

    private func keyHeader(_ ref: KeyRef, type: String, capacity: Int, _ allocator: ByteBufferAllocator) -> JSONWriter {
        var json = JSONWriter(allocator: allocator, capacity: capacity)
        json.beginObject()
        json.key("domain"); json.string(ref.domain)
        json.key("name"); json.string(ref.name)
        json.key("type"); json.string(type)
        json.key("versions"); json.beginArray()
        return json
    }

    private func keyFooter(_ json: inout JSONWriter) -> APIResponse {
        json.endArray()
        json.endObject(); json.newline()
        return APIResponse(body: json.buffer, extraHeaders: [("cache-control", "no-store")])
    }

    private func rotate(_ domain: DomainConfig, name: String, _ request: APIRequest, _ allocator: ByteBufferAllocator) throws -> APIResponse {
        let ref = KeyRef(domain: domain.name, name: name)
        let version: KeyVersion
        let delta: StoreDelta
        do {
            (version, delta) = try services.state.rotate(ref)
        } catch NodeStateError.unknownKey {
            throw APIError(.notFound, "no key named \(name) in domain \(domain.name)")
        } catch NodeStateError.notRAMKey(let key) {
            throw APIError(.badRequest, NodeStateError.notRAMKey(key).description)
        } catch NodeStateError.notReady {
            throw APIError(.notReady, NodeStateError.notReady.description)
        }
        services.publish(delta)
        services.logger.info("request \(request.requestID): uid \(request.caller.uid) rotated \(domain.name)/\(name); new primary \(version.id)")
        services.events.publish(NodeEvent(kind: .keyRotated, domain: domain.name, fields: [("name", name), ("primary", version.id.description)]))
        // The new metadata: the GET shape without key material.
        guard case .ram(let versions) = services.state.lookup(ref) else {
            throw APIError(.notReady, NodeStateError.notReady.description)
        }
        var json = keyHeader(ref, type: "ram", capacity: 128 * versions.count + 128, allocator)
        for (view, _) in versions {
            json.beginObject()
            json.key("id"); json.string(view.version.id.description)
            json.key("primary"); json.bool(view.isPrimary)
            json.key("created"); json.string(iso8601(millis: view.version.id.created.wallMillis))
            if let expires = view.expiresAtMillis { json.key("expires"); json.string(iso8601(millis: expires)) }
            json.endObject()
        }
        return keyFooter(&json)
    }
}
