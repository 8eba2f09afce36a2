import ArgumentParser
import Foundation
import KeystoreClient

/// Exit codes are part of the CLI contract: scripts distinguish "the daemon said no" (1),
/// "you typed it wrong" (2) and "there is no daemon to ask" (3).
enum ExitStatus: Int32 {
    case apiError = 1
    case usage = 2
    case cannotConnect = 3
}

/// Problems found before anything is sent (unreadable file, missing primary...).
struct CLIError: Error, CustomStringConvertible {
    var description: String
    var status: ExitStatus
}

struct Keystorectl: ParsableCommand {
    static let defaultSocket = "/run/keystore/keystore.sock"

    static let configuration = CommandConfiguration(
        commandName: "keystorectl",
        abstract: "Query and manage a keystored node over its local Unix socket.",
        discussion: "Exit status: 0 ok, 1 API or protocol error, 2 usage error, 3 cannot connect.",
        subcommands: [Keys.self, Certs.self, Cluster.self, Events.self, Reload.self, HealthCommand.self])

    @Option(name: .long, help: ArgumentHelp(
        "Path of the daemon's Unix socket (default: $KEYSTORE_SOCKET or \(defaultSocket)).",
        valueName: "path"))
    var socket: String?

    @Flag(name: .long, help: "Print the API's JSON answer verbatim.")
    var json = false

    @Option(name: .long, help: ArgumentHelp("Seconds to wait for an answer.", valueName: "seconds"))
    var timeout: Double = 10

    func validate() throws {
        guard timeout > 0, timeout.isFinite else { throw ValidationError("--timeout must be a positive number") }
        if let socket, socket.isEmpty { throw ValidationError("--socket must not be empty") }
    }

    var socketPath: String {
        if let socket { return socket }
        if let env = ProcessInfo.processInfo.environment["KEYSTORE_SOCKET"], !env.isEmpty { return env }
        return Self.defaultSocket
    }

    var client: KeystoreClient { KeystoreClient(socketPath: socketPath, timeoutSeconds: timeout) }

    /// Sends `request`; with `--json` prints the body verbatim and returns nil, else returns parsed JSON.
    func perform(_ request: APIRequest) throws -> JSONValue? {
        let response = try client.send(request)
        if json {
            Output.writeRaw(response.body)
            return nil
        }
        return response.body.isEmpty ? .null : try JSONValue.parse(response.body)
    }

    /// Parses, runs and maps errors to the documented exit codes (ArgumentParser's own default
    /// for usage errors is 64, which is not what the contract promises).
    static func runMain() {
        let command: ParsableCommand
        do {
            command = try parseAsRoot()
        } catch {
            if exitCode(for: error) == .success { exit(withError: error) }  // --help, --version
            Output.stderr(fullMessage(for: error))
            Foundation.exit(ExitStatus.usage.rawValue)
        }
        do {
            var command = command
            try command.run()
            Foundation.exit(0)
        } catch let error as KeystoreClientError {
            switch error {
            case let .api(_, code, message):
                Output.stderr("keystorectl: \(message) (\(code))")
                Foundation.exit(ExitStatus.apiError.rawValue)
            case .cannotConnect, .socketPathTooLong:
                Output.stderr("keystorectl: \(error)")
                Foundation.exit(ExitStatus.cannotConnect.rawValue)
            case .invalidArgument:
                Output.stderr("keystorectl: \(error)")
                Foundation.exit(ExitStatus.usage.rawValue)
            default:
                Output.stderr("keystorectl: \(error)")
                Foundation.exit(ExitStatus.apiError.rawValue)
            }
        } catch let error as CLIError {
            Output.stderr("keystorectl: \(error)")
            Foundation.exit(error.status.rawValue)
        } catch {
            if exitCode(for: error) == .success { exit(withError: error) }
            Output.stderr(fullMessage(for: error))
            Foundation.exit(ExitStatus.usage.rawValue)
        }
    }
}

// MARK: keys

struct Keys: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Read, list and rotate keys.", subcommands: [Get.self, List.self, Rotate.self])

    struct Get: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show every version of a key (primary first).")
        @ParentCommand var root: Keystorectl
        @Argument(help: "Domain, e.g. first.com.") var domain: String
        @Argument(help: "Key name.") var name: String
        @Flag(help: "Print only the primary version's base64 key (for scripts).") var raw = false

        func run() throws {
            if raw {
                let key = try root.client.getKey(domain: domain, name: name)
                guard let primary = key.primary, let material = primary.key else {
                    throw CLIError(description: "key \(domain)/\(name) has no primary version with key material",
                                   status: .apiError)
                }
                print(material)
                return
            }
            guard let json = try root.perform(.getKey(domain: domain, name: name)) else { return }
            let key = try KeyResponse(json: json)
            for line in Output.versionLines(key.versions, withKeys: true) { print(line) }
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List a domain's keys (no key material).")
        @ParentCommand var root: Keystorectl
        @Argument(help: "Domain.") var domain: String

        func run() throws {
            guard let json = try root.perform(.listKeys(domain: domain)) else { return }
            let keys = try KeySummary.list(json: json)
            print(Output.table(header: ["NAME", "TYPE", "VERSIONS"],
                               rows: keys.map { [$0.name, $0.type, String($0.versions)] }))
        }
    }

    struct Rotate: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create a new primary version of a ram key cluster-wide.")
        @ParentCommand var root: Keystorectl
        @Argument(help: "Domain.") var domain: String
        @Argument(help: "Key name.") var name: String

        func run() throws {
            guard let json = try root.perform(.rotateKey(domain: domain, name: name)) else { return }
            print("rotated \(domain)/\(name)")
            if let key = try? KeyResponse(json: json) {
                for line in Output.versionLines(key.versions, withKeys: false) { print(line) }
            }
        }
    }
}

// MARK: certs

struct Certs: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Manage the per-user certificate registry (XEP-0257).",
        subcommands: [Add.self, List.self, Disable.self, Revoke.self, Verify.self])

    /// PEM is sent as text, anything else as base64 DER; the size cap keeps a wrong path
    /// (e.g. a disk image) from being slurped into memory.
    static func readCertificate(_ path: String) throws -> String {
        let maxBytes = 1 << 20
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw CLIError(description: "cannot read certificate file \(path); check the path and its permissions",
                           status: .usage)
        }
        defer { try? handle.close() }
        let data = (try? handle.read(upToCount: maxBytes + 1)) ?? nil
        guard let data else {
            throw CLIError(description: "cannot read certificate file \(path)", status: .usage)
        }
        guard data.count <= maxBytes else {
            throw CLIError(description: "certificate file \(path) is larger than 1 MiB; pass a PEM or DER certificate",
                           status: .usage)
        }
        guard !data.isEmpty else {
            throw CLIError(description: "certificate file \(path) is empty", status: .usage)
        }
        return CertificateEncoding.fieldValue(forFile: Array(data))
    }

    struct Add: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Register a certificate for USER@DOMAIN.")
        @ParentCommand var root: Keystorectl
        @Argument(help: "Domain.") var domain: String
        @Argument(help: "User (localpart of the bare JID).") var user: String
        @Argument(help: "Name for this certificate, unique per user.") var name: String
        @Argument(help: "Certificate file, PEM or DER.") var file: String
        @Flag(name: .customLong("no-cert-management"),
              help: "Register with XEP-0257 no-cert-management.") var noCertManagement = false

        func run() throws {
            let certificate = try Certs.readCertificate(file)
            let request = try APIRequest.addCert(domain: domain, user: user, name: name, certificate: certificate,
                                                 noCertManagement: noCertManagement ? true : nil)
            guard try root.perform(request) != nil else { return }
            print("added certificate \(name) for \(user)@\(domain)")
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List USER@DOMAIN's certificates.")
        @ParentCommand var root: Keystorectl
        @Argument(help: "Domain.") var domain: String
        @Argument(help: "User.") var user: String

        func run() throws {
            guard let json = try root.perform(.listCerts(domain: domain, user: user)) else { return }
            let certs = try CertInfo.list(json: json)
            print(Output.table(
                header: ["NAME", "NOT_BEFORE", "NOT_AFTER", "JIDS", "NO_CERT_MGMT", "SHA256"],
                rows: certs.map { [$0.name, $0.notBefore, $0.notAfter, $0.jids.joined(separator: ","),
                                   $0.noCertManagement ? "yes" : "no", $0.fingerprintSHA256] }))
        }
    }

    struct Disable: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Stop accepting a certificate.")
        @ParentCommand var root: Keystorectl
        @Argument(help: "Domain.") var domain: String
        @Argument(help: "User.") var user: String
        @Argument(help: "Certificate name.") var name: String

        func run() throws {
            guard try root.perform(.disableCert(domain: domain, user: user, name: name)) != nil else { return }
            print("disabled certificate \(name) of \(user)@\(domain)")
        }
    }

    struct Revoke: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Stop accepting a certificate and publish a revocation event.")
        @ParentCommand var root: Keystorectl
        @Argument(help: "Domain.") var domain: String
        @Argument(help: "User.") var user: String
        @Argument(help: "Certificate name.") var name: String

        func run() throws {
            guard try root.perform(.revokeCert(domain: domain, user: user, name: name)) != nil else { return }
            print("revoked certificate \(name) of \(user)@\(domain)")
        }
    }

    struct Verify: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Check a certificate as SASL EXTERNAL would; prints the authenticated JID.")
        @ParentCommand var root: Keystorectl
        @Argument(help: "Domain.") var domain: String
        @Argument(help: "Certificate file, PEM or DER.") var file: String
        @Option(help: ArgumentHelp("Identity to authorize as.", valueName: "jid")) var authzid: String?

        func run() throws {
            let certificate = try Certs.readCertificate(file)
            guard let json = try root.perform(.verifyCert(domain: domain, certificate: certificate,
                                                          authzid: authzid)) else { return }
            guard let jid = json["jid"]?.stringValue else {
                throw KeystoreClientError.malformedResponse("sasl-external answer has no \"jid\" string")
            }
            print(jid)
        }
    }
}

// MARK: cluster, events, reload, health

struct Cluster: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Cluster membership.", subcommands: [Status.self])

    struct Status: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show members, their state and PSK mismatches.")
        @ParentCommand var root: Keystorectl

        func run() throws {
            guard let json = try root.perform(.clusterStatus) else { return }
            print(Output.clusterText(try ClusterStatus(json: json)))
        }
    }
}

struct Events: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print each event (one JSON object per line) as it arrives, until interrupted.")
    @ParentCommand var root: Keystorectl

    func run() throws {
        try root.client.eventLines { line in
            // Unbuffered write(2): each event must show up immediately even when piped.
            FileHandle.standardOutput.write(Data((line + "\n").utf8))
            return true
        }
    }
}

struct Reload: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Reread PSK files (like SIGHUP).")
    @ParentCommand var root: Keystorectl

    func run() throws {
        guard let json = try root.perform(.reload) else { return }
        if let message = json["message"]?.stringValue { print(message) } else { print("reloaded") }
    }
}

struct HealthCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "health", abstract: "Node health and readiness.")
    @ParentCommand var root: Keystorectl

    func run() throws {
        guard let json = try root.perform(.health) else { return }
        let health = try Health(json: json)
        var parts = ["status=\(health.status)", "ready=\(health.ready)"]
        if let node = health.node { parts.append("node=\(node)") }
        for (key, value) in (json.objectValue ?? [:]).sorted(by: { $0.key < $1.key })
        where !["status", "ready", "node"].contains(key) {
            parts.append("\(key)=\(value.text)")
        }
        print(parts.joined(separator: "  "))
    }
}

// MARK: Output

enum Output {
    static func stderr(_ text: String) {
        FileHandle.standardError.write(Data((text.hasSuffix("\n") ? text : text + "\n").utf8))
    }

    static func writeRaw(_ body: [UInt8]) {
        var bytes = body
        if bytes.last != UInt8(ascii: "\n") { bytes.append(UInt8(ascii: "\n")) }
        FileHandle.standardOutput.write(Data(bytes))
    }

    static func versionLines(_ versions: [KeyVersion], withKeys: Bool) -> [String] {
        versions.map { v in
            var line = "\(v.id)  \(v.primary ? "primary" : "active")  created=\(v.created)"
            if withKeys, let key = v.key { line += "  key=\(key)" }
            return line
        }
    }

    static func table(header: [String], rows: [[String]]) -> String {
        var widths = header.map(\.count)
        for row in rows {
            for (i, cell) in row.enumerated() where i < widths.count { widths[i] = max(widths[i], cell.count) }
        }
        func render(_ row: [String]) -> String {
            row.enumerated().map { i, cell in
                i == row.count - 1 ? cell : cell.padding(toLength: widths[i], withPad: " ", startingAt: 0)
            }.joined(separator: "  ")
        }
        return ([render(header)] + rows.map(render)).joined(separator: "\n")
    }

    /// Optional columns appear only when some member carries one of the listed fields.
    static let optionalColumns: [(String, [String])] = [
        ("LAST_CONTACT", ["last_contact", "last_contact_ms", "last_seen", "last_seen_ms", "last_contact_ago_ms"]),
        ("INCARNATION", ["incarnation"]),
        ("SYNC", ["sync"]),
        ("VERSION", ["version"]),
    ]

    static func clusterText(_ status: ClusterStatus) -> String {
        let columns = optionalColumns.compactMap { title, keys -> (String, String)? in
            for key in keys where status.members.contains(where: { $0.fields[key] != nil }) { return (title, key) }
            return nil
        }
        let rows = status.members.map { m -> [String] in
            let name = m.node == status.node ? "\(m.node) (self)" : m.node
            return [name, m.address, m.state] + columns.map { m.fields[$0.1]?.text ?? "-" }
        }
        var out = table(header: ["NODE", "ADDRESS", "STATE"] + columns.map(\.0), rows: rows)
        if status.pskMismatches.isEmpty {
            out += "\nPSK mismatches: none"
        } else {
            out += "\nPSK mismatches:"
            for mismatch in status.pskMismatches { out += "\n  " + mismatchText(mismatch) }
        }
        return out
    }

    static func mismatchText(_ value: JSONValue) -> String {
        guard let o = value.objectValue else { return value.text }
        let domain = o["domain"]?.text
        let key = (o["key"] ?? o["name"])?.text
        let nodes = o["nodes"]?.arrayValue?.map(\.text).joined(separator: ", ")
        if let key {
            let what = domain.map { "\($0)/\(key)" } ?? key
            return nodes.map { "\(what): nodes \($0)" } ?? what
        }
        return value.description
    }
}
