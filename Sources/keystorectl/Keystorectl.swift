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

/// Problems found before anything is sent (unreadable file, no socket found...).
struct CLIError: Error, CustomStringConvertible {
    var description: String
    var status: ExitStatus
}

/// A verify command's answer was "not valid": stdout already says so, the exit status tells scripts.
struct NegativeVerdict: Error {}

struct Keystorectl: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keystorectl",
        abstract: "Query and manage a keystored node over its local Unix socket.",
        discussion: """
            Exit status: 0 ok, 1 API or protocol error (and a verify command whose answer is \
            "invalid"), 2 usage error, 3 cannot connect.

            Socket: --socket, else $KEYSTORE_SOCKET, else the only *.sock socket in \
            \(SocketDiscovery.defaultRuntimeDirectory) (the RuntimeDirectory of \
            deploy/keystored@.service; $KEYSTORE_RUNTIME_DIR overrides it). With several nodes \
            on one host, name the socket.
            """,
        version: keystoreVersion,
        subcommands: [Keys.self, Certs.self, Tokens.self, Cluster.self, Events.self, Reload.self,
                      HealthCommand.self, Metrics.self, Call.self])

    @Option(name: .long, help: ArgumentHelp(
        "Path of the daemon's Unix socket (default: $KEYSTORE_SOCKET, else the only *.sock in "
            + "$KEYSTORE_RUNTIME_DIR or \(SocketDiscovery.defaultRuntimeDirectory)).",
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

    func client() throws -> KeystoreClient {
        let path = try SocketDiscovery.socketPath(flag: socket, environment: ProcessInfo.processInfo.environment)
        return KeystoreClient(socketPath: path, timeoutSeconds: timeout)
    }

    /// Sends `request`; with `--json` prints the answer verbatim (without needing to understand
    /// it) and returns nil, else returns the decoded answer for the caller to print.
    func perform<Response: Decodable>(_ request: APIRequest<Response>) throws -> Response? {
        let response = try client().send(request)
        if json {
            Output.writeRaw(response.body)
            return nil
        }
        return try KeystoreClient.decode(Response.self, from: response)
    }

    /// Like `perform`, but always decodes: for verdicts whose exit status depends on the answer.
    func performAndDecode<Response: Decodable>(_ request: APIRequest<Response>) throws -> Response {
        let response = try client().send(request)
        if json { Output.writeRaw(response.body) }
        return try KeystoreClient.decode(Response.self, from: response)
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
        } catch is NegativeVerdict {
            Foundation.exit(ExitStatus.apiError.rawValue)
        } catch {
            if exitCode(for: error) == .success { exit(withError: error) }
            Output.stderr(fullMessage(for: error))
            Foundation.exit(ExitStatus.usage.rawValue)
        }
    }
}

// MARK: Socket discovery

/// Finds the socket without flags on a host running one node under the systemd unit, which
/// puts `/run/keystore/{node}.sock` in its RuntimeDirectory (deploy/keystored@.service).
enum SocketDiscovery {
    static let defaultRuntimeDirectory = "/run/keystore"

    static func socketPath(flag: String?, environment: [String: String]) throws -> String {
        if let flag { return flag }
        if let env = environment["KEYSTORE_SOCKET"], !env.isEmpty { return env }
        let directory = environment["KEYSTORE_RUNTIME_DIR"].flatMap { $0.isEmpty ? nil : $0 } ?? defaultRuntimeDirectory
        guard let stream = opendir(directory) else {
            let reason = String(cString: strerror(errno))
            throw CLIError(description: "no socket given and cannot list \(directory) to find one (\(reason)); "
                           + "is keystored running on this host? Pass --socket PATH or set $KEYSTORE_SOCKET",
                           status: .cannotConnect)
        }
        defer { closedir(stream) }
        var sockets: [String] = []
        while let entry = readdir(stream) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name.hasSuffix(".sock") && isSocket(directory + "/" + name) { sockets.append(name) }
        }
        sockets.sort()
        switch sockets.count {
        case 0:
            throw CLIError(description: "no socket given and no *.sock socket in \(directory); is keystored running "
                           + "on this host? Pass --socket PATH or set $KEYSTORE_SOCKET", status: .cannotConnect)
        case 1:
            return directory + "/" + sockets[0]
        default:
            throw CLIError(description: "several keystore sockets in \(directory) (\(sockets.joined(separator: ", "))); "
                           + "choose one with --socket PATH or $KEYSTORE_SOCKET", status: .usage)
        }
    }

    /// A stale regular file named `*.sock` is not a daemon to talk to.
    private static func isSocket(_ path: String) -> Bool {
        var info = stat()
        return stat(path, &info) == 0 && (info.st_mode & S_IFMT) == S_IFSOCK
    }
}

// MARK: Files

enum InputFile {
    /// The cap keeps a wrong path (e.g. a disk image) from being slurped into memory; the
    /// daemon's own request limit is lower still.
    static func read(_ path: String, what: String, maxBytes: Int = 1 << 20) throws -> [UInt8] {
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw CLIError(description: "cannot read \(what) file \(path); check the path and its permissions", status: .usage)
        }
        defer { try? handle.close() }
        let data: Data
        do {
            data = try handle.read(upToCount: maxBytes + 1) ?? Data()  // nil: empty file
        } catch {
            throw CLIError(description: "cannot read \(what) file \(path): \(error.localizedDescription)", status: .usage)
        }
        guard data.count <= maxBytes else {
            throw CLIError(description: "\(what) file \(path) is larger than \(maxBytes / 1024) KiB", status: .usage)
        }
        return Array(data)
    }

    /// PEM is sent as text, anything else as base64 DER.
    static func certificate(_ path: String) throws -> String {
        let bytes = try read(path, what: "certificate")
        guard !bytes.isEmpty else { throw CLIError(description: "certificate file \(path) is empty", status: .usage) }
        return CertificateEncoding.fieldValue(forFile: bytes)
    }
}

// MARK: keys

extension MACAlgorithm: ExpressibleByArgument {}
extension TokenType: ExpressibleByArgument {}

struct Keys: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Read, list, rotate keys; sign and verify with them (HMAC).",
        subcommands: [Get.self, List.self, Rotate.self, HMAC.self, Verify.self])

    struct Get: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show every version of a key (primary first), with its grace-period expiry.")
        @ParentCommand var root: Keystorectl
        @Argument(help: "Domain, e.g. first.com.") var domain: String
        @Argument(help: "Key name.") var name: String
        @Flag(help: "Print only the primary version's base64 key (for scripts).") var raw = false

        func run() throws {
            if raw {
                let key = try root.client().getKey(domain: domain, name: name)
                guard let primary = key.primary, let material = primary.key else {
                    throw CLIError(description: "key \(key.domain)/\(key.name) has no primary version with key material",
                                   status: .apiError)
                }
                print(material)
                return
            }
            guard let key = try root.perform(.getKey(domain: domain, name: name)) else { return }
            for line in Output.versionLines(key.versions, withKeys: true) { print(line) }
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List a domain's keys (no key material).")
        @ParentCommand var root: Keystorectl
        @Argument(help: "Domain.") var domain: String

        func run() throws {
            guard let list = try root.perform(.listKeys(domain: domain)) else { return }
            print(Output.table(header: ["NAME", "TYPE", "VERSIONS"],
                               rows: list.keys.map { [$0.name, $0.type.rawValue, $0.versions.map(String.init) ?? "-"] }))
        }
    }

    struct Rotate: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create a new primary version of a ram key cluster-wide.")
        @ParentCommand var root: Keystorectl
        @Argument(help: "Domain.") var domain: String
        @Argument(help: "Key name.") var name: String

        func run() throws {
            guard let key = try root.perform(.rotateKey(domain: domain, name: name)) else { return }
            print("rotated \(key.domain)/\(key.name)")
            for line in Output.versionLines(key.versions, withKeys: false) { print(line) }
        }
    }

    /// The bytes to sign or verify: exactly one of three spellings.
    struct MACInput: ParsableArguments {
        @Option(name: .customLong("input-file"), help: ArgumentHelp("Read the input from a file.", valueName: "file"))
        var file: String?
        @Option(name: .customLong("input-base64"), help: ArgumentHelp("The input as base64.", valueName: "base64"))
        var base64: String?
        @Option(name: .customLong("input"), help: ArgumentHelp("The input as text (its UTF-8 bytes).", valueName: "text"))
        var text: String?
        @Option(help: ArgumentHelp("HMAC algorithm: sha256, sha384 or sha512.", valueName: "name"))
        var algorithm: MACAlgorithm = .sha256

        func validate() throws {
            let given = [file, base64, text].compactMap { $0 }.count
            guard given == 1 else {
                throw ValidationError(given == 0 ? "give the input with --input-file, --input-base64 or --input"
                                                 : "give only one of --input-file, --input-base64 and --input")
            }
        }

        func bytes() throws -> [UInt8] {
            if let file { return try InputFile.read(file, what: "input") }
            if let base64 {
                guard let data = Data(base64Encoded: base64) else {
                    throw CLIError(description: "--input-base64 is not valid base64", status: .usage)
                }
                return Array(data)
            }
            return Array((text ?? "").utf8)
        }
    }

    struct HMAC: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "hmac",
            abstract: "MAC the input with the key's primary version; the key never leaves the daemon.")
        @ParentCommand var root: Keystorectl
        @Argument(help: "Domain.") var domain: String
        @Argument(help: "Key name.") var name: String
        @OptionGroup var input: MACInput

        func run() throws {
            let request = try APIRequest.signHMAC(domain: domain, name: name, input: input.bytes(), algorithm: input.algorithm)
            guard let answer = try root.perform(request) else { return }
            print("mac=\(answer.mac)  version=\(answer.version)  algorithm=\(answer.algorithm.rawValue)")
        }
    }

    struct Verify: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Check a MAC against every active version of the key.",
            discussion: "Prints \"valid\" and the matching version, or \"invalid\" and exits 1.")
        @ParentCommand var root: Keystorectl
        @Argument(help: "Domain.") var domain: String
        @Argument(help: "Key name.") var name: String
        @Option(help: ArgumentHelp("The MAC to check, base64 (as keys hmac prints it).", valueName: "base64"))
        var mac: String
        @OptionGroup var input: MACInput

        func run() throws {
            let request = try APIRequest.verifyHMAC(domain: domain, name: name, input: input.bytes(), mac: mac,
                                                    algorithm: input.algorithm)
            let answer = try root.performAndDecode(request)
            if !root.json { print(Output.verdict(answer)) }
            if !answer.valid { throw NegativeVerdict() }
        }
    }
}

// MARK: certs

struct Certs: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Manage the per-user certificate registry (XEP-0257).",
        subcommands: [Add.self, List.self, Disable.self, Revoke.self, RevokeAll.self, Status.self, Verify.self])

    struct Add: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Register a certificate for USER@DOMAIN.")
        @ParentCommand var root: Keystorectl
        @Argument(help: "Domain.") var domain: String
        @Argument(help: "User (localpart or bare JID).") var user: String
        @Argument(help: "Name for this certificate, unique per user.") var name: String
        @Argument(help: "Certificate file, PEM or DER.") var file: String
        @Flag(name: .customLong("no-cert-management"),
              help: "Register with XEP-0257 no-cert-management.") var noCertManagement = false

        func run() throws {
            let request = try APIRequest.addCert(domain: domain, user: user, name: name,
                                                 certificate: InputFile.certificate(file),
                                                 noCertManagement: noCertManagement ? true : nil)
            guard let entry = try root.perform(request) else { return }
            print("added certificate \(entry.name) for \(entry.jids.joined(separator: ", "))  sha256=\(entry.fingerprintSHA256)"
                  + (entry.noCertManagement ? "  no-cert-management" : ""))
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List USER@DOMAIN's active certificates.")
        @ParentCommand var root: Keystorectl
        @Argument(help: "Domain.") var domain: String
        @Argument(help: "User.") var user: String
        @Flag(help: "Include disabled and revoked certificates.") var all = false

        func run() throws {
            guard let list = try root.perform(.listCerts(domain: domain, user: user, includeRemoved: all)) else { return }
            print(Output.table(
                header: ["NAME", "STATE", "NOT_BEFORE", "NOT_AFTER", "JIDS", "NO_CERT_MGMT", "SHA256"],
                rows: list.certs.map { [$0.name, $0.state.rawValue, $0.notBefore, $0.notAfter, $0.jids.joined(separator: ","),
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
            guard let answer = try root.perform(.disableCert(domain: domain, user: user, name: name)) else { return }
            print(Output.removal("disabled", answer))
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
            guard let answer = try root.perform(.revokeCert(domain: domain, user: user, name: name)) else { return }
            print(Output.removal("revoked", answer))
        }
    }

    struct RevokeAll: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "revoke-all",
            abstract: "Revoke every active certificate of USER@DOMAIN (e.g. when the account is deleted).")
        @ParentCommand var root: Keystorectl
        @Argument(help: "Domain.") var domain: String
        @Argument(help: "User.") var user: String

        func run() throws {
            guard let answer = try root.perform(.revokeAllCerts(domain: domain, user: user)) else { return }
            if answer.certs.isEmpty { print("\(answer.user) had no active certificates") }
            for entry in answer.certs {
                print("revoked certificate \(entry.name) of \(answer.user)  sha256=\(entry.fingerprintSHA256)")
            }
        }
    }

    struct Status: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "State of certificates by fingerprint: active, disabled, revoked, expired or unknown.")
        @ParentCommand var root: Keystorectl
        @Argument(help: "Domain.") var domain: String
        @Argument(help: "User.") var user: String
        @Argument(help: "SHA-256 fingerprints (hex), as certs list prints them.") var fingerprints: [String]

        func validate() throws {
            guard !fingerprints.isEmpty else { throw ValidationError("give at least one fingerprint") }
        }

        func run() throws {
            let refs = fingerprints.map { CertificateRef(user: user, fingerprintSHA256: $0) }
            guard let answer = try root.perform(.certificateStatus(domain: domain, certs: refs)) else { return }
            print(Output.table(header: ["USER", "STATE", "SHA256"],
                               rows: answer.certs.map { [$0.user, $0.state.rawValue, $0.fingerprintSHA256] }))
        }
    }

    struct Verify: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Check a certificate as SASL EXTERNAL would.",
            discussion: "Prints the authenticated JID first, then the registered certificate's name, fingerprint and expiry.")
        @ParentCommand var root: Keystorectl
        @Argument(help: "Domain.") var domain: String
        @Argument(help: "Certificate file, PEM or DER.") var file: String
        @Option(help: ArgumentHelp("Identity to authorize as.", valueName: "jid")) var authzid: String?

        func run() throws {
            let request = try APIRequest.verifyCert(domain: domain, certificate: InputFile.certificate(file), authzid: authzid)
            guard let answer = try root.perform(request) else { return }
            print("\(answer.jid)  name=\(answer.name)  sha256=\(answer.fingerprintSHA256)  not_after=\(answer.notAfter)"
                  + (answer.noCertManagement ? "  no-cert-management" : ""))
        }
    }
}

// MARK: tokens

struct Tokens: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Issue, verify and revoke MongooseIM mod_auth_token tokens.",
        subcommands: [Issue.self, Verify.self, Revoke.self])

    struct Issue: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Issue a token (access and refresh: token_secret; provision: provision_pre_shared).")
        @ParentCommand var root: Keystorectl
        @Argument(help: "Domain.") var domain: String
        @Argument(help: "Bare JID of the user.") var jid: String
        @Option(help: ArgumentHelp("access, refresh or provision.", valueName: "type")) var type: TokenType
        @Option(name: .customLong("valid-for"),
                help: ArgumentHelp("Lifetime in seconds (default: access 3600, refresh 25 days, provision 3600).", valueName: "seconds"))
        var validFor: Int?
        @Option(name: .customLong("vcard-file"), help: ArgumentHelp("vCard XML carried by a provision token.", valueName: "file"))
        var vcardFile: String?

        func validate() throws {
            if let validFor, validFor <= 0 { throw ValidationError("--valid-for must be a positive number of seconds") }
            if vcardFile != nil && type != .provision { throw ValidationError("--vcard-file only goes with --type provision") }
        }

        func run() throws {
            var vcard: String?
            if let vcardFile {
                let bytes = try InputFile.read(vcardFile, what: "vCard")
                guard let text = String(validating: bytes, as: UTF8.self) else {
                    throw CLIError(description: "vCard file \(vcardFile) is not UTF-8 text", status: .usage)
                }
                vcard = text
            }
            let request = try APIRequest.issueToken(domain: domain, IssueTokenRequest(type: type, jid: jid, validForSeconds: validFor, vcard: vcard))
            guard let answer = try root.perform(request) else { return }
            print("token=\(answer.token)  expires=\(answer.expires)  version=\(answer.version)"
                  + (answer.sequence.map { "  sequence=\($0)" } ?? ""))
        }
    }

    struct Verify: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Check a token.",
            discussion: "Prints \"valid\" with the token's type, JID and expiry, or \"invalid\" with the reason "
                + "(malformed, mac, expired, revoked) and exits 1.")
        @ParentCommand var root: Keystorectl
        @Argument(help: "Domain.") var domain: String
        @Argument(help: "The token, base64 (as tokens issue prints it).") var token: String

        func run() throws {
            let answer = try root.performAndDecode(.verifyToken(domain: domain, token: token))
            if !root.json { print(Output.verdict(answer)) }
            if !answer.valid { throw NegativeVerdict() }
        }
    }

    struct Revoke: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Refuse USER@DOMAIN's outstanding refresh tokens on every node.")
        @ParentCommand var root: Keystorectl
        @Argument(help: "Domain.") var domain: String
        @Argument(help: "User.") var user: String

        func run() throws {
            guard let answer = try root.perform(.revokeTokens(domain: domain, user: user)) else { return }
            print("revoked refresh tokens of \(answer.user); new tokens start at sequence \(answer.sequence)")
        }
    }
}

// MARK: cluster, events, reload, health, metrics

struct Cluster: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Cluster membership.", subcommands: [Status.self])

    struct Status: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show members, their state, anti-entropy sync and PSK mismatches.",
            discussion: Output.clusterLegend)
        @ParentCommand var root: Keystorectl

        func run() throws {
            guard let status = try root.perform(.cluster()) else { return }
            print(Output.clusterText(status))
        }
    }
}

struct Events: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print each event (one JSON object per line) as it arrives, until interrupted.")
    @ParentCommand var root: Keystorectl
    @Option(help: ArgumentHelp("Resume after this event cursor (the \"cursor\" of the last event seen).", valueName: "cursor"))
    var since: String?

    func run() throws {
        try root.client().eventLines(since: since) { line in
            // Unbuffered write(2): each event must show up immediately even when piped.
            FileHandle.standardOutput.write(Data((line + "\n").utf8))
            return true
        }
    }
}

struct Reload: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Reread the configuration and PSK files (like SIGHUP).")
    @ParentCommand var root: Keystorectl

    func run() throws {
        guard let answer = try root.perform(.reload()) else { return }
        print(Output.reloadText(answer))
    }
}

struct HealthCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "health", abstract: "Node health and readiness.")
    @ParentCommand var root: Keystorectl

    func run() throws {
        guard let health = try root.perform(.health()) else { return }
        print(Output.healthText(health))
    }
}

struct Metrics: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print the node's Prometheus metrics.")
    @ParentCommand var root: Keystorectl

    func run() throws {
        Output.writeRaw(try root.client().send(.metrics()).body)
    }
}

/// Any route of the contract by its name: a route added to the table is usable from the CLI at
/// once, before it has a command of its own (the route list in the help is the table itself).
struct Call: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Call any local-API route by name and print its JSON answer.",
        discussion: """
            Path parameters are given with --domain, --key, --user and --name, query parameters \
            with --query NAME=VALUE, a request body with --body (JSON text, @FILE, or - for stdin). \
            Exit status as for every command (1 when the daemon refuses, with its message).

            Routes:
            \(routeList)
            """)

    static var routeList: String {
        let width = Endpoint.allCases.map(\.rawValue.count).max() ?? 0
        return Endpoint.allCases.filter { $0 != .events }.map { endpoint in
            let spec = endpoint.spec
            let query = spec.query.isEmpty ? "" : " (query: \(spec.query.joined(separator: ", ")))"
            return "  " + endpoint.rawValue.padding(toLength: width, withPad: " ", startingAt: 0)
                + "  \(spec.method.rawValue) \(spec.template)\(query)"
        }.joined(separator: "\n")
    }

    @ParentCommand var root: Keystorectl

    @Argument(help: "The route's name (see the list below).")
    var route: String

    @Option(help: "Path parameter {d}.") var domain: String?
    @Option(help: "Path parameter {k}.") var key: String?
    @Option(help: "Path parameter {u}.") var user: String?
    @Option(help: "Path parameter {name}.") var name: String?

    @Option(name: .customLong("query"), help: ArgumentHelp("A query parameter (repeatable).", valueName: "name=value"))
    var query: [String] = []

    @Option(help: ArgumentHelp("The JSON request body, @FILE to read it from a file, or - for stdin.", valueName: "json"))
    var body: String?

    func run() throws {
        guard let endpoint = Endpoint(rawValue: route) else {
            throw CLIError(description: "no route named '\(route)'; known routes:\n\(Self.routeList)", status: .usage)
        }
        guard endpoint != .events else {
            throw CLIError(description: "events is a stream: use 'keystorectl events'", status: .usage)
        }
        let parameters = RouteParameters(domain: domain, key: key, user: user, name: name)
        for parameter in endpoint.spec.parameters where parameters[parameter] == nil {
            throw CLIError(description: "\(route) (\(endpoint.spec.method.rawValue) \(endpoint.spec.template)) needs "
                           + "--\(parameter.rawValue) (the \(parameter.label))", status: .usage)
        }
        let pairs = try query.map { item -> (String, String) in
            guard let equals = item.firstIndex(of: "="), equals != item.startIndex else {
                throw CLIError(description: "--query takes NAME=VALUE, got '\(item)'", status: .usage)
            }
            return (String(item[..<equals]), String(item[item.index(after: equals)...]))
        }
        let response = try root.client().send(APIRequest.route(endpoint, parameters, query: pairs, body: try bodyBytes()))
        Output.writeRaw(response.body)
    }

    private func bodyBytes() throws -> [UInt8]? {
        guard let body else { return nil }
        if body == "-" { return Array(FileHandle.standardInput.readDataToEndOfFile()) }
        if body.hasPrefix("@") { return try InputFile.read(String(body.dropFirst()), what: "request body") }
        return Array(body.utf8)
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

    static func versionLines(_ versions: [KeyVersionInfo], withKeys: Bool) -> [String] {
        versions.map { v in
            var line = "\(v.id)  \(v.primary ? "primary" : "active")  created=\(v.created)"
            if let expires = v.expires { line += "  expires=\(expires)" }
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

    static func clusterText(_ status: ClusterResponse) -> String {
        let rows = status.members.map { m -> [String] in
            [m.node == status.node ? "\(m.node) (self)" : m.node, m.address, m.state.rawValue,
             m.sync?.rawValue ?? "-", m.lastContact ?? "-", m.version ?? "-"]
        }
        var out = table(header: ["NODE", "ADDRESS", "STATE", "SYNC", "LAST_CONTACT", "VERSION"], rows: rows)
        if status.pskMismatches.isEmpty {
            out += "\nPSK mismatches: none"
        } else {
            out += "\nPSK mismatches:"
            for m in status.pskMismatches {
                let prints = m.fingerprints.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
                out += "\n  \(m.domain)/\(m.name): nodes \(m.nodes.joined(separator: ", "))"
                    + (prints.isEmpty ? "" : " (fingerprints \(prints.joined(separator: ", ")))")
            }
        }
        return out
    }

    /// `cluster status --help`: one line per value, from exhaustive switches so a new state
    /// cannot ship unexplained.
    static var clusterLegend: String {
        func meaning(_ state: MemberState) -> String {
            switch state {
            case .alive: return "answering probes"
            case .suspect: return "missed probes; declared dead unless it answers soon"
            case .dead: return "stayed suspect past the timeout; still pinged now and then, alive again once it answers"
            case .joining: return "listed in the config, not heard from yet"
            case .left: return "removed from this node's config: no longer dialled or expected"
            }
        }
        func meaning(_ sync: SyncState) -> String {
            switch sync {
            case .ready: return "this node: joined and serving"
            case .joining: return "this node: still making its startup join decision (ram keys not served yet)"
            case .inSync: return "the member's state digest equalled ours at the last comparison"
            case .repairing: return "digests differed; a repair exchange is under way"
            case .unknown: return "not compared yet, or the member is not alive"
            }
        }
        func lines<T: RawRepresentable>(_ values: [T], _ meaning: (T) -> String) -> String where T.RawValue == String {
            let width = values.map(\.rawValue.count).max() ?? 0
            return values.map { "  " + $0.rawValue.padding(toLength: width, withPad: " ", startingAt: 0) + "  " + meaning($0) }
                .joined(separator: "\n")
        }
        return """
            STATE, the member's liveness as this node sees it:
            \(lines(MemberState.allCases, meaning))

            SYNC, anti-entropy with the member (on this node's own row: ready or joining):
            \(lines(SyncState.allCases, meaning))

            LAST_CONTACT is when this node last heard from the member (UTC); "-" when never \
            or for this node itself. VERSION is the member's keystored version.
            """
    }

    static func removal(_ verb: String, _ answer: CertificateRemovalResponse) -> String {
        var line = "\(verb) certificate \(answer.entry.name) for \(answer.entry.jids.joined(separator: ", "))"
        // Two nodes may have accepted the same name concurrently: every such certificate is removed.
        if answer.certs.count > 1 { line += " (\(answer.certs.count) certificates of that name)" }
        return line
    }

    static func reloadText(_ answer: ReloadResponse) -> String {
        guard answer.reloaded else { return "not reloaded" }
        var lines = ["reloaded"]
        lines += answer.changed.map { "key changed: \($0)" }
        lines += answer.config.map { "config: \($0)" }
        if answer.changed.isEmpty && answer.config.isEmpty { lines = ["reloaded: nothing changed"] }
        return lines.joined(separator: "\n")
    }

    static func healthText(_ health: HealthResponse) -> String {
        var line = "status=\(health.status.rawValue)  ready=\(health.ready)  node=\(health.node)"
        if !health.cluster.isEmpty { line += "  cluster=\(health.cluster)" }
        if !health.version.isEmpty { line += "  version=\(health.version)" }
        line += "  memory_locked=\(health.memoryLocked)"
        return ([line] + health.problems.map { "problem: \($0)" }).joined(separator: "\n")
    }

    static func verdict(_ answer: VerifyMACResponse) -> String {
        answer.valid ? "valid" + (answer.version.map { "  version=\($0)" } ?? "") : "invalid"
    }

    static func verdict(_ answer: VerifyTokenResponse) -> String {
        guard answer.valid else { return "invalid" + (answer.reason.map { "  reason=\($0.rawValue)" } ?? "") }
        var line = "valid"
        if let type = answer.type { line += "  type=\(type.rawValue)" }
        if let jid = answer.jid { line += "  jid=\(jid)" }
        if let expires = answer.expires { line += "  expires=\(expires)" }
        if let sequence = answer.sequence { line += "  sequence=\(sequence)" }
        if let vcard = answer.vcard { line += "\nvcard: \(vcard)" }
        return line
    }
}
