import Foundation
import PeerTLS
import TestSupport
import XCTest

final class ContextTests: XCTestCase {
    func testLoadsClusterFilesAndReportsOwnCertificate() throws {
        let f = try CertFixture.shared()
        let context = try PeerTLSContext(caFile: f.ca, certificateFile: f.cert("node1"), privateKeyFile: f.key("node1"))
        XCTAssertEqual(try PeerTLSContext.dnsNames(inCertificateFile: f.cert("node1")), ["node1"])
        let notAfter = try XCTUnwrap(context.certificateNotAfter)
        let days = notAfter.timeIntervalSinceNow / 86_400
        XCTAssertEqual(days, 825, accuracy: 1)
        XCTAssertEqual(try PeerTLSContext.notAfter(inCertificateFile: f.cert("node1")), notAfter)
    }

    func testMissingFileNamesTheFile() throws {
        let f = try CertFixture.shared()
        XCTAssertThrowsError(try PeerTLSContext(caFile: f.ca, certificateFile: f.dir + "/nope.pem",
                                                privateKeyFile: f.key("node1"))) { error in
            guard case .cannotLoad(let file, _)? = error as? PeerTLSError else { return XCTFail("\(error)") }
            XCTAssertEqual(file, f.dir + "/nope.pem")
            XCTAssertTrue("\(error)".contains("nope.pem"))
        }
        XCTAssertThrowsError(try PeerTLSContext.dnsNames(inCertificateFile: f.dir + "/nope.pem"))
    }

    func testNonPEMFilesAreRejected() throws {
        let f = try CertFixture.shared()
        // A key where the CA belongs, and a key where the certificate belongs.
        XCTAssertThrowsError(try PeerTLSContext(caFile: f.key("node1"), certificateFile: f.cert("node1"),
                                                privateKeyFile: f.key("node1"))) { error in
            guard case .cannotLoad(let file, let reason)? = error as? PeerTLSError else { return XCTFail("\(error)") }
            XCTAssertEqual(file, f.key("node1"))
            XCTAssertFalse(reason.isEmpty)
        }
        XCTAssertThrowsError(try PeerTLSContext(caFile: f.ca, certificateFile: f.key("node1"),
                                                privateKeyFile: f.key("node1"))) { error in
            guard case .cannotLoad(let file, _)? = error as? PeerTLSError else { return XCTFail("\(error)") }
            XCTAssertEqual(file, f.key("node1"))
        }
    }

    func testKeyOfAnotherNodeIsRejected() throws {
        let f = try CertFixture.shared()
        XCTAssertThrowsError(try PeerTLSContext(caFile: f.ca, certificateFile: f.cert("node1"),
                                                privateKeyFile: f.key("node2"))) { error in
            XCTAssertEqual(error as? PeerTLSError, .keyDoesNotMatchCertificate(file: f.key("node2")))
        }
    }

    func testErrorDescriptionsAreOneLineAndActionable() {
        let errors: [PeerTLSError] = [
            .cannotLoad(file: "a.pem", reason: "x"), .keyDoesNotMatchCertificate(file: "a.key"),
            .handshakeFailed(reason: "r"), .peerCertificateRejected(reason: "certificate has expired"),
            .peerNameMismatch(expected: "node1", found: ["node2"]), .uncleanShutdown, .protocolError(reason: "p"),
        ]
        for error in errors {
            XCTAssertFalse(error.description.contains("\n"))
        }
        XCTAssertTrue(PeerTLSError.peerNameMismatch(expected: "node1", found: ["node2"]).description.contains("node2"))
    }
}

final class GenCertsScriptTests: XCTestCase {
    /// A path gen-certs.sh creates (it must make the directory itself), inside a scratch directory
    /// removed after the test.
    private func tempDir() throws -> String {
        try makeScratchDirectory(prefix: "gencerts").file("certs")
    }

    private func mode(_ path: String) throws -> Int {
        let attributes = try FileManager.default.attributesOfItem(atPath: path)
        return (attributes[.posixPermissions] as? NSNumber)?.intValue ?? -1
    }

    func testCreatesCAAndNodeCertificatesWithRequiredProperties() throws {
        let f = try CertFixture.shared()
        for file in [f.dir + "-ca/ca.key", f.key("node1"), f.key("node2")] {
            XCTAssertEqual(try mode(file), 0o600, file)
        }
        let text = try runTool("/usr/bin/env", ["openssl", "x509", "-in", f.cert("node1"), "-noout", "-text"])
        XCTAssertTrue(text.contains("DNS:node1\n"), text)
        XCTAssertFalse(text.contains("IP Address"), "no address unless --ip asks for one: \(text)")
        XCTAssertTrue(text.contains("TLS Web Server Authentication, TLS Web Client Authentication"))
        XCTAssertTrue(text.contains("Digital Signature"))
        XCTAssertTrue(text.contains("prime256v1") || text.contains("P-256"))
        XCTAssertNoThrow(try runTool("/usr/bin/env", ["openssl", "verify", "-CAfile", f.ca, f.cert("node3")]))
    }

    func testIsIdempotentReusesCAAndForceReissues() throws {
        let dir = try tempDir()
        let script = ClusterCertificates.scriptPath
        try runTool("/bin/bash", [script, dir, "a"], environment: ["KEYSTORE_CERT_DAYS": "2"])
        let ca1 = try String(contentsOfFile: dir + "/ca.pem", encoding: .utf8)
        let a1 = try String(contentsOfFile: dir + "/a.pem", encoding: .utf8)
        try runTool("/bin/bash", [script, dir, "a", "b"])
        XCTAssertEqual(try String(contentsOfFile: dir + "/ca.pem", encoding: .utf8), ca1)
        XCTAssertEqual(try String(contentsOfFile: dir + "/a.pem", encoding: .utf8), a1)
        XCTAssertNoThrow(try runTool("/usr/bin/env", ["openssl", "verify", "-CAfile", dir + "/ca.pem", dir + "/b.pem"]))
        XCTAssertEqual(try PeerTLSContext.notAfter(inCertificateFile: dir + "/a.pem").timeIntervalSinceNow / 86_400,
                       2, accuracy: 0.1)
        try runTool("/bin/bash", [script, "--force", dir, "a"])
        XCTAssertNotEqual(try String(contentsOfFile: dir + "/a.pem", encoding: .utf8), a1)
        XCTAssertEqual(try String(contentsOfFile: dir + "/ca.pem", encoding: .utf8), ca1)
    }

    /// The CA key never lands in OUT_DIR (what gets copied to the nodes): it lives in OUT_DIR-ca
    /// or --ca-dir, and a key an older version left in OUT_DIR is moved there.
    func testKeepsTheCAKeyApartFromTheNodeFiles() throws {
        let dir = try tempDir()
        let script = ClusterCertificates.scriptPath
        try runTool("/bin/bash", [script, dir, "a"])
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir).sorted(), ["a.key", "a.pem", "ca.pem"])
        XCTAssertEqual(try mode(dir + "-ca"), 0o700)
        XCTAssertEqual(try mode(dir + "-ca/ca.key"), 0o600)
        XCTAssertEqual(try String(contentsOfFile: dir + "-ca/ca.pem", encoding: .utf8),
                       try String(contentsOfFile: dir + "/ca.pem", encoding: .utf8))

        // An explicit --ca-dir signs certificates for a second output directory with the same CA.
        let other = try tempDir()
        try runTool("/bin/bash", [script, "--ca-dir", dir + "-ca", other, "b"])
        XCTAssertNoThrow(try runTool("/usr/bin/env", ["openssl", "verify", "-CAfile", dir + "/ca.pem", other + "/b.pem"]))
        XCTAssertFalse(FileManager.default.fileExists(atPath: other + "-ca"))

        // The old layout (ca.key beside the node keys) is migrated, and the CA still signs.
        try FileManager.default.moveItem(atPath: dir + "-ca/ca.key", toPath: dir + "/ca.key")
        try FileManager.default.removeItem(atPath: dir + "-ca/ca.pem")
        let migrated = try runTool("/bin/bash", [script, dir, "c"])
        XCTAssertTrue(migrated.contains("moved \(dir)/ca.key to \(dir)-ca/ca.key"), migrated)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/ca.key"))
        XCTAssertNoThrow(try runTool("/usr/bin/env", ["openssl", "verify", "-CAfile", dir + "/ca.pem", dir + "/c.pem"]))

        // Without the key, kept certificates are fine and a new one is refused with the path named.
        try FileManager.default.removeItem(atPath: dir + "-ca")
        XCTAssertNoThrow(try runTool("/bin/bash", [script, dir, "a"]))
        XCTAssertThrowsError(try runTool("/bin/bash", [script, dir, "d"])) { error in
            XCTAssertTrue("\(error)".contains("\(dir)-ca/ca.key is missing"), "\(error)")
        }
    }

    func testAddsAddressesOnlyWhenAsked() throws {
        let dir = try tempDir()
        try runTool("/bin/bash", [ClusterCertificates.scriptPath, "--ip", "10.0.0.7", "--ip", "fd00::7", dir, "a"])
        let text = try runTool("/usr/bin/env", ["openssl", "x509", "-in", dir + "/a.pem", "-noout", "-ext", "subjectAltName"])
        XCTAssertTrue(text.contains("DNS:a, IP Address:10.0.0.7, IP Address:FD00:0:0:0:0:0:0:7"), text)
        XCTAssertThrowsError(try runTool("/bin/bash", [ClusterCertificates.scriptPath, "--ip", "10.0.0.7,DNS:evil", dir, "b"]))
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/b.pem"))
    }

    func testRejectsUnsafeNodeNames() throws {
        let dir = try tempDir()
        XCTAssertThrowsError(try runTool("/bin/bash", [ClusterCertificates.scriptPath, dir, "../evil"]))
        XCTAssertThrowsError(try runTool("/bin/bash", [ClusterCertificates.scriptPath, dir, "ca"]))
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/ca.pem"))
    }
}
