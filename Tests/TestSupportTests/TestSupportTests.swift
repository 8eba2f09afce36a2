import Foundation
import TestSupport
import XCTest

#if canImport(Glibc)
import Glibc
#endif

final class SplitMix64Tests: XCTestCase {
    /// The reference sequence of Vigna's splitmix64.c seeded with 0: the shared generator must stay
    /// bit-identical, or every seeded test would silently start testing different inputs.
    func testMatchesTheReferenceSequence() {
        var generator = SplitMix64(seed: 0)
        XCTAssertEqual((0..<3).map { _ in generator.next() }, [0xE220_A839_7B1D_CDAF, 0x6E78_9E6A_A1B9_65F4, 0x06C4_5D18_8009_454F])
    }
}

final class ScratchDirectoryTests: XCTestCase {
    func testNamesCarryThePidAndRemoveDeletesEverything() throws {
        let directory = try ScratchDirectory(prefix: "ks-scratch")
        XCTAssertTrue(directory.path.hasPrefix("/tmp/ks-scratch-\(getpid())-"), directory.path)
        try directory.write("nested/secret.key", "key material")
        XCTAssertEqual(try String(contentsOfFile: directory.file("nested/secret.key"), encoding: .utf8), "key material")
        let mode = try FileManager.default.attributesOfItem(atPath: directory.file("nested/secret.key"))[.posixPermissions] as? NSNumber
        XCTAssertEqual(mode?.intValue, 0o600)
        directory.remove()
        XCTAssertFalse(FileManager.default.fileExists(atPath: directory.path))
    }
}

/// Tests write CA and client private keys into /tmp; none may outlive the test process that made it.
/// Runs real test classes that use every certificate fixture in a child test process, then looks
/// for anything that child left in /tmp (every scratch directory is named `<prefix>-<pid>-XXXXXX`).
final class FixtureCleanupTests: XCTestCase {
    /// One class or test per fixture: the shared PeerTLS cluster certificates (with the foreign CA and
    /// the expired certificate), the per-test gen-certs.sh directories, the openssl CLI client
    /// certificates, and the integration harness's cluster certificates, scratch directories and user
    /// certificates.
    static let fixtureTests = [
        "PeerTLSTests.ContextTests",
        "PeerTLSTests.GenCertsScriptTests",
        "CertificateRegistryTests.ParsingTests/testFingerprintMatchesOpenSSLCLI",
        "CertificateRegistryTests.RulesTests",
        "IntegrationTests.CLITests/testCertsAndKeysCommandsEndToEnd",
    ]

    func testNoFixtureDirectorySurvivesItsTestProcess() throws {
        let bundle = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path
        let child = Process()
        child.executableURL = URL(fileURLWithPath: bundle)
        child.arguments = [Self.fixtureTests.joined(separator: ",")]
        let output = Pipe()
        child.standardOutput = output
        child.standardError = output
        child.standardInput = FileHandle.nullDevice
        try child.run()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        child.waitUntilExit()
        XCTAssertEqual(child.terminationStatus, 0, "the fixture tests failed:\n\(text)")
        XCTAssertTrue(text.contains("testFingerprintMatchesOpenSSLCLI") && text.contains("testCertsAndKeysCommandsEndToEnd"),
                      "the child did not run the fixture tests:\n\(text)")

        let tag = "-\(child.processIdentifier)-"
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: "/tmp").filter { $0.contains(tag) }
        XCTAssertEqual(leftovers, [], "test process \(child.processIdentifier) left these in /tmp")
        for leftover in leftovers { try? FileManager.default.removeItem(atPath: "/tmp/" + leftover) }
    }
}
