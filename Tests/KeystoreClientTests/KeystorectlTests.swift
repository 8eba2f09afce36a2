import Foundation
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
    }

    func testHumanJSONAndErrorOutputAgainstCannedDaemon() throws {
        let server = try CannedServer { req in
            switch req.path {
            case "/v1/domains/first.com/keys/token_secret": return Canned.json(200, KeystoreClientTests.keyJSON)
            case "/v1/events":
                return .bytes(Canned.chunked(["{\"type\":\"rotation\"}\n{\"ty", "pe\":\"revocation\"}\n"]))
            case "/v1/cluster":
                return Canned.json(200, #"{"node":"node1","members":[{"node":"node1","address":"127.0.0.1:7401","state":"alive","last_contact":"now"}],"psk_mismatches":[]}"#)
            default: return Canned.json(403, #"{"error":"forbidden","message":"uid 1001 may not rotate keys in first.com"}"#)
            }
        }
        defer { server.stop() }
        let (code, out, _) = try run(["--socket", server.path, "keys", "get", "first.com", "token_secret"])
        XCTAssertEqual(code, 0)
        XCTAssertEqual(out, "v2  primary  created=2026-11-23T04:00:00Z  key=AAEC\n7  active  created=1732334400000  key=AwQF\n")

        let (rawCode, rawOut, _) = try run(["--socket", server.path, "keys", "get", "--raw", "first.com", "token_secret"])
        XCTAssertEqual(rawCode, 0)
        XCTAssertEqual(rawOut, "AAEC\n")

        let (jsonCode, jsonOut, _) = try run(["--socket", server.path, "--json", "keys", "get", "first.com", "token_secret"])
        XCTAssertEqual(jsonCode, 0)
        XCTAssertEqual(jsonOut, KeystoreClientTests.keyJSON + "\n")

        let (clusterCode, clusterOut, _) = try run(["--socket", server.path, "cluster", "status"])
        XCTAssertEqual(clusterCode, 0)
        XCTAssertEqual(clusterOut, "NODE          ADDRESS         STATE  LAST_CONTACT\nnode1 (self)  127.0.0.1:7401  alive  now\nPSK mismatches: none\n")

        let (eventsCode, eventsOut, _) = try run(["--socket", server.path, "events"])
        XCTAssertEqual(eventsCode, 0)
        XCTAssertEqual(eventsOut, "{\"type\":\"rotation\"}\n{\"type\":\"revocation\"}\n")

        let (errCode, _, errText) = try run(["--socket", server.path, "keys", "rotate", "first.com", "token_secret"])
        XCTAssertEqual(errCode, 1)
        XCTAssertEqual(errText, "keystorectl: uid 1001 may not rotate keys in first.com (forbidden)\n")
    }
}
