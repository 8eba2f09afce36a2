import Foundation
import KeystoreAPI
import XCTest

/// Runs the real `keystorectl` binary, which the package builds next to the test bundle.
final class KeystorectlTests: XCTestCase {
    func binary() throws -> URL {
        var dirs: [URL] = [URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent(),
                           Bundle.main.bundleURL.deletingLastPathComponent()]
        dirs += Bundle.allBundles.map { $0.bundleURL.deletingLastPathComponent() }
        for dir in dirs {
            let candidate = dir.appendingPathComponent("keystorectl")
            if FileManager.default.isExecutableFile(atPath: candidate.path) { return candidate }
        }
        XCTFail("keystorectl not found next to the test bundle (looked in \(dirs.map(\.path))); build it first")
        throw CocoaError(.fileNoSuchFile)
    }

    func run(_ arguments: [String], environment: [String: String] = [:]) throws -> (Int32, String, String) {
        let process = Process()
        process.executableURL = try binary()
        process.arguments = arguments
        var env = ProcessInfo.processInfo.environment
        env.removeValue(forKey: "KEYSTORE_SOCKET")
        env.removeValue(forKey: "KEYSTORE_RUNTIME_DIR")
        env.merge(environment) { $1 }
        process.environment = env
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        let stdout = out.fileHandleForReading.readDataToEndOfFile()
        let stderr = err.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: stdout, as: UTF8.self), String(decoding: stderr, as: UTF8.self))
    }

    func temporaryDirectory() throws -> String {
        var template = Array("/tmp/kscdir-XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw CocoaError(.fileWriteUnknown) }
        let path = String(cString: made)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: path) }
        return path
    }

    func testMissingSocketExitsThreeNamingThePath() throws {
        let path = "/tmp/ksc-missing-\(getpid()).sock"
        let (code, _, stderr) = try run(["--socket", path, "keys", "get", "first.com", "token_secret"])
        XCTAssertEqual(code, 3)
        XCTAssertTrue(stderr.hasPrefix("keystorectl: cannot connect to keystore socket \(path)"), stderr)
        XCTAssertTrue(stderr.contains("keystored is running"), stderr)
        // $KEYSTORE_SOCKET is the default when --socket is absent.
        let (code2, _, stderr2) = try run(["cluster", "status"], environment: ["KEYSTORE_SOCKET": path])
        XCTAssertEqual(code2, 3)
        XCTAssertTrue(stderr2.contains(path), stderr2)
    }

    func testUsageErrorExitsTwo() throws {
        let (code, _, stderr) = try run(["keys", "get", "only-domain"])
        XCTAssertEqual(code, 2)
        XCTAssertTrue(stderr.contains("Missing expected argument"), stderr)
        let (both, _, bothErr) = try run(["keys", "hmac", "first.com", "k", "--input", "a", "--input-base64", "YQ=="])
        XCTAssertEqual(both, 2)
        XCTAssertTrue(bothErr.contains("give only one of --input-file, --input-base64 and --input"), bothErr)
        let (badType, _, badTypeErr) = try run(["tokens", "issue", "first.com", "alice@first.com", "--type", "bearer"])
        XCTAssertEqual(badType, 2)
        XCTAssertTrue(badTypeErr.contains("'access', 'refresh' or 'provision'"), badTypeErr)
    }

    func testVersionPrintsTheContractVersion() throws {
        let (code, out, _) = try run(["--version"])
        XCTAssertEqual(code, 0)
        XCTAssertEqual(out, keystoreVersion + "\n")
    }

    func testClusterStatusHelpExplainsEverySyncValueAndMemberState() throws {
        let (code, out, _) = try run(["cluster", "status", "--help"])
        XCTAssertEqual(code, 0)
        let lines = out.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
        for value in SyncState.allCases.map(\.rawValue) + MemberState.allCases.map(\.rawValue) {
            // "  in_sync    the member's state digest..." : the value opens a line and is explained on it.
            XCTAssertTrue(lines.contains { $0.hasPrefix(value + " ") && $0.count > value.count + 10 }, "\(value) unexplained in:\n\(out)")
        }
        XCTAssertTrue(out.contains("LAST_CONTACT"), out)
    }

    func testHumanJSONAndErrorOutputAgainstCannedDaemon() throws {
        let server = try CannedServer { req in
            switch req.path {
            case "/v1/domains/first.com/keys/token_secret": return Canned.json(200, KeystoreClientTests.keyJSON)
            case "/v1/events":
                return .bytes(Canned.chunked(["{\"type\":\"rotation\"}\n{\"ty", "pe\":\"revocation\"}\n"]))
            case "/v1/cluster":
                return Canned.json(200, #"{"node":"node1","cluster":"c","ready":true,"members":[{"node":"node1","address":"127.0.0.1:7401","state":"alive","last_contact":"now"}],"psk_mismatches":[]}"#)
            default: return Canned.json(403, #"{"error":"forbidden","message":"uid 1001 may not rotate keys in first.com"}"#)
            }
        }
        defer { server.stop() }
        let (code, out, _) = try run(["--socket", server.path, "keys", "get", "first.com", "token_secret"])
        XCTAssertEqual(code, 0)
        XCTAssertEqual(out, "v2  primary  created=2026-11-23T04:00:00Z  key=AAEC\n"
                       + "7  active  created=2024-11-23T04:00:00.000Z  expires=2026-11-24T04:00:00.000Z  key=AwQF\n")

        let (rawCode, rawOut, _) = try run(["--socket", server.path, "keys", "get", "--raw", "first.com", "token_secret"])
        XCTAssertEqual(rawCode, 0)
        XCTAssertEqual(rawOut, "AAEC\n")

        let (jsonCode, jsonOut, _) = try run(["--socket", server.path, "--json", "keys", "get", "first.com", "token_secret"])
        XCTAssertEqual(jsonCode, 0)
        XCTAssertEqual(jsonOut, KeystoreClientTests.keyJSON + "\n")

        let (clusterCode, clusterOut, _) = try run(["--socket", server.path, "cluster", "status"])
        XCTAssertEqual(clusterCode, 0)
        XCTAssertEqual(clusterOut, "NODE          ADDRESS         STATE  SYNC  LAST_CONTACT  VERSION\n"
                       + "node1 (self)  127.0.0.1:7401  alive  -     now           -\nPSK mismatches: none\n")

        let (eventsCode, eventsOut, _) = try run(["--socket", server.path, "events"])
        XCTAssertEqual(eventsCode, 0)
        XCTAssertEqual(eventsOut, "{\"type\":\"rotation\"}\n{\"type\":\"revocation\"}\n")

        let (errCode, _, errText) = try run(["--socket", server.path, "keys", "rotate", "first.com", "token_secret"])
        XCTAssertEqual(errCode, 1)
        XCTAssertEqual(errText, "keystorectl: uid 1001 may not rotate keys in first.com (forbidden)\n")
    }

    /// Every answer below differs from the arguments on purpose: the text must come from the answer.
    func testNewSubcommandsPrintWhatTheDaemonAnswered() throws {
        let entry = KeystoreClientTests.entryJSON(state: "revoked")
        let server = try CannedServer { req in
            switch (req.method, req.path) {
            case ("POST", "/v1/domains/first.com/keys/token_secret/hmac"):
                return Canned.json(200, #"{"mac":"bWFj","version":"v2","algorithm":"sha512"}"#)
            case ("POST", "/v1/domains/first.com/keys/token_secret/verify"):
                return Canned.json(200, req.body.count > 60 ? #"{"valid":false}"# : #"{"valid":true,"version":"v1"}"#)
            case ("POST", "/v1/domains/first.com/users/alice/certs/revoke-all"):
                return Canned.json(200, #"{"user":"alice@first.com","certs":["# + entry + "]}")
            case ("POST", "/v1/domains/first.com/users/nobody/certs/revoke-all"):
                return Canned.json(200, #"{"user":"nobody@first.com","certs":[]}"#)
            case ("POST", "/v1/domains/first.com/certs/status"):
                return Canned.json(200, #"{"certs":[{"user":"alice@first.com","fingerprint_sha256":"abcd","state":"revoked"},{"user":"alice@first.com","fingerprint_sha256":"ef01","state":"unknown"}]}"#)
            case ("POST", "/v1/domains/first.com/tokens"):
                return Canned.json(200, #"{"token":"dG9r","expires":"2026-12-31T00:00:00.000Z","version":"v2","sequence":7}"#)
            case ("POST", "/v1/domains/first.com/tokens/verify"):
                return Canned.json(200, req.body == Array(#"{"token":"dG9r"}"#.utf8)
                    ? #"{"valid":true,"type":"refresh","jid":"alice@first.com","expires":"2026-12-31T00:00:00.000Z","sequence":7}"#
                    : #"{"valid":false,"reason":"expired"}"#)
            case ("POST", "/v1/domains/first.com/users/alice/tokens/revoke"):
                return Canned.json(200, #"{"user":"alice@first.com","sequence":8}"#)
            case ("GET", "/v1/domains/first.com/users/alice/certs?all=1"):
                return Canned.json(200, #"{"user":"alice@first.com","certs":["# + KeystoreClientTests.entryJSON(state: "active") + "," + entry + "]}")
            case ("GET", "/v1/events?since=c42"):
                return .bytes(Canned.chunked([#"{"type":"cert_revoked","cursor":"c43"}"# + "\n"]))
            default:
                return Canned.json(404, #"{"error":"not_found","message":"no route \#(req.method) \#(req.path)"}"#)
            }
        }
        defer { server.stop() }
        func ctl(_ arguments: [String]) throws -> (Int32, String, String) { try run(["--socket", server.path] + arguments) }

        var (code, out, err) = try ctl(["keys", "hmac", "first.com", "token_secret", "--input", "hello", "--algorithm", "sha512"])
        XCTAssertEqual(code, 0, err)
        XCTAssertEqual(out, "mac=bWFj  version=v2  algorithm=sha512\n")
        XCTAssertEqual(server.requests.last?.body, Array(#"{"algorithm":"sha512","input":"aGVsbG8="}"#.utf8))

        (code, out, err) = try ctl(["keys", "verify", "first.com", "token_secret", "--mac", "bWFj", "--input-base64", "aGVsbG8="])
        XCTAssertEqual(code, 0, err)
        XCTAssertEqual(out, "valid  version=v1\n")
        let input = try temporaryDirectory() + "/input.bin"
        try Data(repeating: 0x41, count: 64).write(to: URL(fileURLWithPath: input))
        (code, out, err) = try ctl(["keys", "verify", "first.com", "token_secret", "--mac", "bWFj", "--input-file", input])
        XCTAssertEqual(code, 1, "an invalid MAC is a failure for scripts")
        XCTAssertEqual(out, "invalid\n")
        XCTAssertEqual(err, "")
        (code, out, _) = try ctl(["--json", "keys", "verify", "first.com", "token_secret", "--mac", "bWFj", "--input-file", input])
        XCTAssertEqual(code, 1)
        XCTAssertEqual(out, #"{"valid":false}"# + "\n")

        (code, out, err) = try ctl(["certs", "revoke-all", "first.com", "alice"])
        XCTAssertEqual(code, 0, err)
        XCTAssertEqual(out, "revoked certificate laptop of alice@first.com  sha256=abcd\n")
        (code, out, _) = try ctl(["certs", "revoke-all", "first.com", "nobody"])
        XCTAssertEqual(out, "nobody@first.com had no active certificates\n")

        (code, out, err) = try ctl(["certs", "status", "first.com", "alice", "abcd", "ef01"])
        XCTAssertEqual(code, 0, err)
        XCTAssertEqual(out, "USER             STATE    SHA256\nalice@first.com  revoked  abcd\nalice@first.com  unknown  ef01\n")
        XCTAssertEqual(server.requests.last?.body,
                       Array(#"{"certs":[{"fingerprint_sha256":"abcd","user":"alice"},{"fingerprint_sha256":"ef01","user":"alice"}]}"#.utf8))

        (code, out, err) = try ctl(["certs", "list", "--all", "first.com", "alice"])
        XCTAssertEqual(code, 0, err)
        XCTAssertEqual(out, """
            NAME    STATE    NOT_BEFORE                NOT_AFTER                 JIDS             NO_CERT_MGMT  SHA256
            laptop  active   2026-01-01T00:00:00.000Z  2027-01-01T00:00:00.000Z  alice@first.com  no            abcd
            laptop  revoked  2026-01-01T00:00:00.000Z  2027-01-01T00:00:00.000Z  alice@first.com  no            abcd

            """)

        let vcard = try temporaryDirectory() + "/card.xml"
        try Data(#"<vCard xmlns="vcard-temp"><FN>Alice</FN></vCard>"#.utf8).write(to: URL(fileURLWithPath: vcard))
        (code, out, err) = try ctl(["tokens", "issue", "first.com", "alice@first.com", "--type", "provision", "--valid-for", "60",
                                    "--vcard-file", vcard])
        XCTAssertEqual(code, 0, err)
        XCTAssertEqual(out, "token=dG9r  expires=2026-12-31T00:00:00.000Z  version=v2  sequence=7\n")
        XCTAssertEqual(server.requests.last?.body, Array(
            #"{"jid":"alice@first.com","type":"provision","valid_for_s":60,"vcard":"<vCard xmlns=\"vcard-temp\"><FN>Alice</FN></vCard>"}"#.utf8))

        (code, out, err) = try ctl(["tokens", "verify", "first.com", "dG9r"])
        XCTAssertEqual(code, 0, err)
        XCTAssertEqual(out, "valid  type=refresh  jid=alice@first.com  expires=2026-12-31T00:00:00.000Z  sequence=7\n")
        (code, out, err) = try ctl(["tokens", "verify", "first.com", "b2xk"])
        XCTAssertEqual(code, 1)
        XCTAssertEqual(out, "invalid  reason=expired\n")

        (code, out, err) = try ctl(["tokens", "revoke", "first.com", "alice"])
        XCTAssertEqual(code, 0, err)
        XCTAssertEqual(out, "revoked refresh tokens of alice@first.com; new tokens start at sequence 8\n")

        (code, out, err) = try ctl(["events", "--since", "c42"])
        XCTAssertEqual(code, 0, err)
        XCTAssertEqual(out, #"{"type":"cert_revoked","cursor":"c43"}"# + "\n")
    }

    /// `certs add first.com alice@first.com` once printed "for alice@first.com@first.com" and
    /// `reload` a `message` the daemon never sends: output comes from the answer.
    func testTextOutputNeverEchoesArguments() throws {
        let server = try CannedServer { req in
            switch (req.method, req.path) {
            case ("POST", "/v1/domains/first.com/users/alice%40first.com/certs"):
                return .bytes(Canned.response(201, "Created", body: KeystoreClientTests.entryJSON(state: "active", name: "stored-name")))
            case ("POST", "/v1/domains/first.com/users/alice%40first.com/certs/laptop/revoke"):
                return Canned.json(200, KeystoreClientTests.removalJSON(states: ["revoked", "revoked"]))
            case ("POST", "/v1/domains/first.com/users/alice/certs/laptop/disable"):
                return Canned.json(200, KeystoreClientTests.removalJSON(states: ["disabled"]))
            case ("POST", "/v1/reload"):
                return Canned.json(200, #"{"reloaded":true,"changed":["first.com/provision_pre_shared"],"config":["domain second.com added"],"message":"never shown"}"#)
            case ("POST", "/v1/domains/FIRST.com/keys/token_secret/rotate"):
                return Canned.json(200, #"{"domain":"first.com","name":"token_secret","type":"ram","versions":[{"id":"v3","primary":true,"created":"c3"},{"id":"v2","primary":false,"created":"c2","expires":"e2"}]}"#)
            case ("GET", "/v1/health"):
                return Canned.json(200, #"{"status":"degraded","ready":true,"node":"node1","cluster":"c1","version":"0.2.0","memory_locked":true,"problems":["PSK first.com/psk differs between nodes node1, node2"]}"#)
            default:
                return Canned.json(404, #"{"error":"not_found","message":"no route \#(req.method) \#(req.path)"}"#)
            }
        }
        defer { server.stop() }
        let pem = try temporaryDirectory() + "/alice.pem"
        try Data("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".utf8).write(to: URL(fileURLWithPath: pem))
        func ctl(_ arguments: [String]) throws -> (Int32, String, String) { try run(["--socket", server.path] + arguments) }

        var (code, out, err) = try ctl(["certs", "add", "first.com", "alice@first.com", "laptop", pem])
        XCTAssertEqual(code, 0, err)
        XCTAssertEqual(out, "added certificate stored-name for alice@first.com  sha256=abcd\n")
        XCTAssertFalse(out.contains("@first.com@first.com"), out)

        (code, out, err) = try ctl(["certs", "revoke", "first.com", "alice@first.com", "laptop"])
        XCTAssertEqual(code, 0, err)
        XCTAssertEqual(out, "revoked certificate laptop for alice@first.com (2 certificates of that name)\n")
        (code, out, err) = try ctl(["certs", "disable", "first.com", "alice", "laptop"])
        XCTAssertEqual(code, 0, err)
        XCTAssertEqual(out, "disabled certificate laptop for alice@first.com\n")

        (code, out, err) = try ctl(["reload"])
        XCTAssertEqual(code, 0, err)
        XCTAssertEqual(out, "reloaded\nkey changed: first.com/provision_pre_shared\nconfig: domain second.com added\n")

        (code, out, err) = try ctl(["keys", "rotate", "FIRST.com", "token_secret"])
        XCTAssertEqual(code, 0, err)
        XCTAssertEqual(out, "rotated first.com/token_secret\nv3  primary  created=c3\nv2  active  created=c2  expires=e2\n")

        (code, out, err) = try ctl(["health"])
        XCTAssertEqual(code, 0, err)
        XCTAssertEqual(out, "status=degraded  ready=true  node=node1  cluster=c1  version=0.2.0  memory_locked=true\n"
                       + "problem: PSK first.com/psk differs between nodes node1, node2\n")
    }

    /// Without --socket and $KEYSTORE_SOCKET: the one *.sock in the runtime directory the
    /// systemd unit uses ($KEYSTORE_RUNTIME_DIR stands in for /run/keystore here).
    func testSocketDiscoveryInTheRuntimeDirectory() throws {
        let directory = try temporaryDirectory()
        let environment = ["KEYSTORE_RUNTIME_DIR": directory]

        var (code, _, err) = try run(["health"], environment: environment)
        XCTAssertEqual(code, 3)
        XCTAssertEqual(err, "keystorectl: no socket given and no *.sock socket in \(directory); is keystored running on this host? "
                       + "Pass --socket PATH or set $KEYSTORE_SOCKET\n")

        let health = #"{"status":"ok","ready":true,"node":"node1","cluster":"c","version":"0.2.0","memory_locked":true,"problems":[]}"#
        let node1 = try CannedServer(path: directory + "/node1.sock") { _ in Canned.json(200, health) }
        defer { node1.stop() }
        // A stale regular file with the right name is not a socket to talk to.
        try Data().write(to: URL(fileURLWithPath: directory + "/stale.sock"))
        var out: String
        (code, out, err) = try run(["health"], environment: environment)
        XCTAssertEqual(code, 0, err)
        XCTAssertEqual(out, "status=ok  ready=true  node=node1  cluster=c  version=0.2.0  memory_locked=true\n")
        XCTAssertEqual(node1.requests.map(\.path), ["/v1/health"])

        let node2 = try CannedServer(path: directory + "/node2.sock") { _ in Canned.json(200, health) }
        defer { node2.stop() }
        (code, _, err) = try run(["health"], environment: environment)
        XCTAssertEqual(code, 2)
        XCTAssertEqual(err, "keystorectl: several keystore sockets in \(directory) (node1.sock, node2.sock); "
                       + "choose one with --socket PATH or $KEYSTORE_SOCKET\n")
        // $KEYSTORE_SOCKET and --socket still win.
        (code, _, err) = try run(["health"], environment: environment.merging(["KEYSTORE_SOCKET": node2.path]) { $1 })
        XCTAssertEqual(code, 0, err)
        (code, _, err) = try run(["--socket", node2.path, "health"], environment: environment)
        XCTAssertEqual(code, 0, err)
        XCTAssertEqual(node2.requests.count, 2)

        (code, _, err) = try run(["health"], environment: ["KEYSTORE_RUNTIME_DIR": directory + "/missing"])
        XCTAssertEqual(code, 3)
        XCTAssertTrue(err.contains("cannot list \(directory)/missing to find one (No such file or directory)"), err)
    }
}
