import Foundation
import KeystoreAPI
import KeystoreClient
import TestSupport
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// What the node says is what is true (issue "never acknowledge what is not stored"): a write
/// that fails on a full, read-only or failing disk changes nothing anywhere and says so, and a
/// replica that cannot store what peers send keeps retrying and reports it. Real processes on
/// real filesystems: a tmpfs per node (mounting needs root, which CI has).
final class DataSafetyTests: ClusterTestCase {
    private var mounts: [String] = []

    override func tearDown() {
        // Lazily unmounted first (a node may still hold files open), so that super.tearDown, which
        // stops the nodes and removes the scratch directory, finds no mount point inside it.
        for mount in mounts.reversed() { _ = try? runCommand("/usr/bin/umount", ["-l", mount]) }
        mounts.removeAll()
        super.tearDown()
    }

    /// A small tmpfs at `path` (the node's data_dir).
    private func mountTmpfs(_ path: String, size: String = "1m") throws {
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        let result = try runCommand("/usr/bin/mount", ["-t", "tmpfs", "-o", "size=\(size),mode=0700", "tmpfs", path])
        guard result.status == 0 else {
            throw HarnessError("cannot mount a tmpfs at \(path) (these tests need root): \(result.output)")
        }
        mounts.append(path)
    }

    /// Fills the filesystem holding `directory` until writes fail with ENOSPC.
    private func fill(_ directory: String) throws {
        let result = try runCommand("/bin/sh", ["-c", "dd if=/dev/zero of='\(directory)/filler' bs=4096 2>/dev/null; sync; df -k '\(directory)' | tail -1"])
        XCTAssertTrue(result.output.contains("100%"), "the filesystem is full: \(result.output)")
    }

    private func api(_ cluster: ClusterHarness, _ node: String, _ method: String, _ path: String, body: [UInt8]? = nil) throws -> (status: Int, body: [UInt8]) {
        let response = try KeystoreConnection(socketPath: cluster.socketPath(node), timeoutSeconds: 10)
            .request(method, path, body: body, headers: [("Content-Type", "application/json")])
        return (response.status, response.body)
    }

    private func addCertificate(_ cluster: ClusterHarness, on node: String, name: String, pem: String) throws -> (status: Int, body: [UInt8]) {
        let body = try JSONEncoder().encode(AddCertificateRequest(name: name, certificate: pem))
        return try api(cluster, node, "POST", "/v1/domains/first.com/users/alice/certs", body: Array(body))
    }

    private func verifies(_ cluster: ClusterHarness, on node: String, _ pem: String) throws -> Bool {
        let body = try JSONEncoder().encode(SASLExternalRequest(certificate: pem))
        return try api(cluster, node, "POST", "/v1/domains/first.com/sasl-external", body: Array(body)).status == 200
    }

    private func names(_ cluster: ClusterHarness, on node: String) throws -> [String] {
        let answer = try api(cluster, node, "GET", "/v1/domains/first.com/users/alice/certs")
        return try JSONDecoder().decode(CertificateListResponse.self, from: Data(answer.body)).certs.map(\.name).sorted()
    }

    private func health(_ cluster: ClusterHarness, _ node: String) throws -> HealthResponse {
        try JSONDecoder().decode(HealthResponse.self, from: Data(api(cluster, node, "GET", "/v1/health").body))
    }

    /// Anti-entropy digests `node` has received so far: once this grows by two after an event,
    /// the node has compared its whole state with its peer at least once since.
    private func digestsReceived(_ cluster: ClusterHarness, _ node: String) throws -> Int {
        let text = String(decoding: try api(cluster, node, "GET", "/metrics").body, as: UTF8.self)
        let line = text.split(separator: "\n").first { $0.hasPrefix("keystore_gossip_messages_total") && $0.contains("direction=\"in\"") && $0.contains("type=\"digest\"") }
        return line.flatMap { Int(Double($0.split(separator: " ").last ?? "") ?? -1) } ?? 0
    }

    private func waitForAntiEntropy(_ cluster: ClusterHarness, on node: String) throws {
        let start = try digestsReceived(cluster, node)
        waitUntil("\(node) ran two more anti-entropy comparisons") { (try? self.digestsReceived(cluster, node)) ?? 0 >= start + 2 }
    }

    private func assertRefusedAsNotStored(_ answer: (status: Int, body: [UInt8]), file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(answer.status, 500, String(decoding: answer.body, as: UTF8.self), file: file, line: line)
        let error = try? JSONDecoder().decode(APIErrorBody.self, from: Data(answer.body))
        XCTAssertEqual(error?.code, .internalError, file: file, line: line)
        XCTAssertTrue(error?.message.contains("nothing was stored") ?? false, error?.message ?? "", file: file, line: line)
    }

    /// An LD_PRELOAD library that makes the node's disk misbehave on demand, the way the kernel
    /// answers on a dying disk (fsync/fdatasync fail with EIO while `KS_FAIL_SYNC_TRIGGER`
    /// exists) or on a filesystem the kernel remounted read-only after errors (pwrite fails with
    /// EROFS while `KS_READONLY_TRIGGER` exists). A real `mount -o remount,ro` is refused while
    /// SQLite holds the database open for writing, which is why the errno is injected instead.
    private func faultyDiskLibrary(in cluster: ClusterHarness) throws -> String {
        let source = cluster.scratch.file("faultydisk.c")
        try """
        #define _GNU_SOURCE
        #include <errno.h>
        #include <stdlib.h>
        #include <unistd.h>
        #include <dlfcn.h>
        static int on(const char *name) { const char *t = getenv(name); return t && access(t, F_OK) == 0; }
        int fsync(int fd) { if (on("KS_FAIL_SYNC_TRIGGER")) { errno = EIO; return -1; } int (*real)(int) = dlsym(RTLD_NEXT, "fsync"); return real(fd); }
        int fdatasync(int fd) { if (on("KS_FAIL_SYNC_TRIGGER")) { errno = EIO; return -1; } int (*real)(int) = dlsym(RTLD_NEXT, "fdatasync"); return real(fd); }
        ssize_t pwrite(int fd, const void *b, size_t n, off_t o) { if (on("KS_READONLY_TRIGGER")) { errno = EROFS; return -1; } ssize_t (*real)(int, const void *, size_t, off_t) = dlsym(RTLD_NEXT, "pwrite"); return real(fd, b, n, o); }
        ssize_t pwrite64(int fd, const void *b, size_t n, off_t o) { if (on("KS_READONLY_TRIGGER")) { errno = EROFS; return -1; } ssize_t (*real)(int, const void *, size_t, off_t) = dlsym(RTLD_NEXT, "pwrite64"); return real(fd, b, n, o); }
        """.write(toFile: source, atomically: true, encoding: .utf8)
        let library = cluster.scratch.file("faultydisk.so")
        let built = try runCommand("/usr/bin/cc", ["-shared", "-fPIC", "-o", library, source, "-ldl"])
        guard built.status == 0 else { throw HarnessError("cannot build the fault-injection library: \(built.output)") }
        return library
    }

    // MARK: Tests

    func testARegistrationOnAFullDiskChangesNothingAnywhereAndARetryWorksOnceThereIsSpace() throws {
        let cluster = try makeCluster(nodes: ["node1", "node2"])
        let data1 = cluster.scratch.file("data/node1")
        try mountTmpfs(data1)
        try cluster.startAll()
        let early = try UserCertificates.make(jids: ["alice@first.com"], in: cluster.scratch.path, name: "early")
        XCTAssertEqual(try addCertificate(cluster, on: "node1", name: "early", pem: early).status, 201)

        try fill(data1)
        let phone = try UserCertificates.make(jids: ["alice@first.com"], in: cluster.scratch.path, name: "phone")
        assertRefusedAsNotStored(try addCertificate(cluster, on: "node1", name: "phone", pem: phone))
        XCTAssertFalse(try verifies(cluster, on: "node1", phone), "a registration that was not stored must not verify")
        XCTAssertEqual(try names(cluster, on: "node1"), ["early"])
        try waitForAntiEntropy(cluster, on: "node2")
        XCTAssertFalse(try verifies(cluster, on: "node2", phone), "nor reach a peer")
        XCTAssertEqual(try names(cluster, on: "node2"), ["early"])

        try FileManager.default.removeItem(atPath: data1 + "/filler")
        XCTAssertEqual(try addCertificate(cluster, on: "node1", name: "phone", pem: phone).status, 201, "the retry is not a conflict")
        for node in ["node1", "node2"] {
            waitUntil("\(node) verifies the stored registration") { (try? self.verifies(cluster, on: node, phone)) == true }
        }
    }

    func testARevocationOnAReadOnlyDiskChangesNothingAndSaysSo() throws {
        let cluster = try makeCluster(nodes: ["node1", "node2"])
        let library = try faultyDiskLibrary(in: cluster)
        let trigger = cluster.scratch.file("read-only-now")
        try cluster.start("node1", environment: ["LD_PRELOAD": library, "KS_READONLY_TRIGGER": trigger], waitForSocket: false)
        try cluster.start("node2", waitForSocket: false)
        for node in ["node1", "node2"] { cluster.waitReady(node) }
        let phone = try UserCertificates.make(jids: ["alice@first.com"], in: cluster.scratch.path, name: "phone")
        XCTAssertEqual(try addCertificate(cluster, on: "node1", name: "phone", pem: phone).status, 201)
        waitUntil("node2 verifies the registration") { (try? self.verifies(cluster, on: "node2", phone)) == true }

        XCTAssertTrue(FileManager.default.createFile(atPath: trigger, contents: nil), "cannot create \(trigger)")
        assertRefusedAsNotStored(try api(cluster, "node1", "POST", "/v1/domains/first.com/users/alice/certs/phone/revoke"))
        XCTAssertTrue(try verifies(cluster, on: "node1", phone), "the refused revocation changed nothing")
        try waitForAntiEntropy(cluster, on: "node2")
        XCTAssertTrue(try verifies(cluster, on: "node2", phone))

        try FileManager.default.removeItem(atPath: trigger)
        XCTAssertEqual(try api(cluster, "node1", "POST", "/v1/domains/first.com/users/alice/certs/phone/revoke").status, 200)
        for node in ["node1", "node2"] {
            waitUntil("\(node) refuses the revoked certificate") { (try? self.verifies(cluster, on: node, phone)) == false }
        }
    }

    func testAnIOErrorOnSyncChangesNothing() throws {
        let cluster = try makeCluster(nodes: ["node1"])
        let library = try faultyDiskLibrary(in: cluster)
        let trigger = cluster.scratch.file("fail-now")
        try cluster.start("node1", environment: ["LD_PRELOAD": library, "KS_FAIL_SYNC_TRIGGER": trigger])
        cluster.waitReady("node1")

        let phone = try UserCertificates.make(jids: ["alice@first.com"], in: cluster.scratch.path, name: "phone")
        XCTAssertTrue(FileManager.default.createFile(atPath: trigger, contents: nil), "cannot create \(trigger)")
        assertRefusedAsNotStored(try addCertificate(cluster, on: "node1", name: "phone", pem: phone))
        XCTAssertFalse(try verifies(cluster, on: "node1", phone))
        XCTAssertEqual(try names(cluster, on: "node1"), [])

        try FileManager.default.removeItem(atPath: trigger)
        XCTAssertEqual(try addCertificate(cluster, on: "node1", name: "phone", pem: phone).status, 201)
        XCTAssertTrue(try verifies(cluster, on: "node1", phone))
    }

    func testAReplicaThatCannotStorePeerRecordsKeepsRetryingAndReportsIt() throws {
        let cluster = try makeCluster(nodes: ["node1", "node2"])
        let data2 = cluster.scratch.file("data/node2")
        try mountTmpfs(data2)
        try cluster.startAll()
        let old = try UserCertificates.make(jids: ["alice@first.com"], in: cluster.scratch.path, name: "old")
        XCTAssertEqual(try addCertificate(cluster, on: "node1", name: "old", pem: old).status, 201)
        waitUntil("node2 verifies the first registration") { (try? self.verifies(cluster, on: "node2", old)) == true }

        try fill(data2)
        let phone = try UserCertificates.make(jids: ["alice@first.com"], in: cluster.scratch.path, name: "phone")
        XCTAssertEqual(try addCertificate(cluster, on: "node1", name: "phone", pem: phone).status, 201)
        waitUntil("node2 reports that it cannot store peer records") {
            guard let health = try? self.health(cluster, "node2") else { return false }
            return health.status == .degraded && health.problems.contains { $0.contains("registry database") && $0.contains("could not be written") }
        }
        let metrics = String(decoding: try api(cluster, "node2", "GET", "/metrics").body, as: UTF8.self)
        XCTAssertTrue(metrics.contains("keystore_registry_write_failures_total"), "a metric counts the failures")
        XCTAssertFalse(try verifies(cluster, on: "node2", phone), "node2 does not serve a registration it could not store")

        // A revocation is applied in memory at once even though it cannot be stored yet.
        XCTAssertEqual(try api(cluster, "node1", "POST", "/v1/domains/first.com/users/alice/certs/old/revoke").status, 200)
        waitUntil("node2 refuses the revoked certificate at once") { (try? self.verifies(cluster, on: "node2", old)) == false }

        try FileManager.default.removeItem(atPath: data2 + "/filler")
        waitUntil("node2 stores the pending records and is healthy again") {
            (try? self.health(cluster, "node2").status) == .ok && (try? self.verifies(cluster, on: "node2", phone)) == true
        }
        // Stored for real: node2 alone, from its own database (node1 stopped), still knows both.
        cluster.processes["node1"]?.stop()
        cluster.processes["node2"]?.stop()
        try cluster.start("node2")
        cluster.waitReady("node2")
        XCTAssertTrue(try verifies(cluster, on: "node2", phone))
        XCTAssertFalse(try verifies(cluster, on: "node2", old))
    }

    /// A token revocation from a peer is applied at once even when it cannot be stored (as a
    /// certificate revocation is), and the retry then stores it: after the disk has room again
    /// the node is healthy, and restarted alone from its own database it still refuses the token.
    func testATokenRevocationFromAPeerThatCouldNotBeStoredIsStoredByTheRetry() throws {
        // token_secret as a file key: the token outlives the restart of the whole cluster.
        var domains: [String: Any] = [:]
        domains["second.com"] = ["keys": [["name": "token_secret", "type": "file", "path": "psk/second_provision"]]]
        let cluster = try makeCluster(nodes: ["node1", "node2"], domains: domains)
        let data2 = cluster.scratch.file("data/node2")
        try mountTmpfs(data2)
        try cluster.startAll()
        let refresh = try cluster.client("node1").issueToken(domain: "second.com", type: .refresh, jid: "carol@second.com")

        try fill(data2)
        XCTAssertEqual(try cluster.client("node1").revokeTokens(domain: "second.com", user: "carol").sequence, 2)
        waitUntil("node2 refuses the revoked refresh token at once") {
            (try? cluster.client("node2").verifyToken(domain: "second.com", token: refresh.token).reason) == .revoked
        }
        waitUntil("node2 reports that it cannot store the revocation") {
            guard let health = try? self.health(cluster, "node2") else { return false }
            return health.problems.contains { $0.contains("registry database") && $0.contains("could not be written") }
        }

        try FileManager.default.removeItem(atPath: data2 + "/filler")
        waitUntil("node2 stores the revocation and is healthy again") { (try? self.health(cluster, "node2").status) == .ok }
        cluster.processes["node1"]?.stop()
        cluster.processes["node2"]?.stop()
        try cluster.start("node2")
        cluster.waitReady("node2")
        XCTAssertEqual(try cluster.client("node2").verifyToken(domain: "second.com", token: refresh.token).reason, .revoked,
                       "the revocation was stored, not only applied")
    }

    /// A joining node serves nothing, so it applies the join's registry records as they arrive
    /// and stores them behind; when it cannot store them it stays not ready, says why, and
    /// becomes ready once a retry has stored them (not before, with records only in memory).
    func testAJoiningNodeThatCannotStoreTheClustersRecordsIsNotReadyUntilItHas() throws {
        let cluster = try makeCluster(nodes: ["node1", "node2"])
        let library = try faultyDiskLibrary(in: cluster)
        let trigger = cluster.scratch.file("fail-now")
        let faulty = ["LD_PRELOAD": library, "KS_FAIL_SYNC_TRIGGER": trigger]
        try cluster.start("node1", waitForSocket: false)
        try cluster.start("node2", environment: faulty, waitForSocket: false)
        for node in ["node1", "node2"] { cluster.waitReady(node) }
        cluster.processes["node2"]?.stop()
        let phone = try UserCertificates.make(jids: ["alice@first.com"], in: cluster.scratch.path, name: "phone")
        XCTAssertEqual(try addCertificate(cluster, on: "node1", name: "phone", pem: phone).status, 201)

        // node2 restarts from its database; the registration reaches it in its join, on a disk whose syncs fail.
        XCTAssertTrue(FileManager.default.createFile(atPath: trigger, contents: nil), "cannot create \(trigger)")
        try cluster.start("node2", environment: faulty)
        waitUntil("node2 is not ready and says it cannot store records from peers") {
            guard let health = try? self.health(cluster, "node2") else { return false }
            return !health.ready && health.problems.contains { $0.contains("registry database") && $0.contains("could not be written") }
        }
        waitUntil("node2 failed to store them twice more (its retries, a second apart)") {
            (cluster.processes["node2"]?.log.components(separatedBy: "cannot persist").count ?? 0) > 3
        }
        XCTAssertFalse(try health(cluster, "node2").ready, "node2 does not become ready with a record it has not stored")

        try FileManager.default.removeItem(atPath: trigger)
        cluster.waitReady("node2")
        XCTAssertTrue(try verifies(cluster, on: "node2", phone))
        XCTAssertEqual(try health(cluster, "node2").status, .ok)
        // Stored for real: node2 alone, from its own database, still knows it.
        cluster.processes["node1"]?.stop()
        cluster.processes["node2"]?.stop()
        try cluster.start("node2")
        cluster.waitReady("node2")
        XCTAssertTrue(try verifies(cluster, on: "node2", phone))
    }
}

/// A prerequisite the test could not set up: it fails the test (never skips it).
struct HarnessError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
