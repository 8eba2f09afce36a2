import Foundation
import RegistryDatabase
import XCTest

final class RegistryDatabaseTests: XCTestCase {
    private var root = ""

    override func setUpWithError() throws {
        root = FileManager.default.temporaryDirectory
            .appendingPathComponent("registry-db-tests-\(UUID().uuidString)").path
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(atPath: root)
    }

    private var dataDir: String { root + "/node1/data" }
    private var dbPath: String { dataDir + "/registry.sqlite3" }

    // MARK: - Fixtures

    private func fullRecord(_ index: Int, domain: String = "first.com", derSize: Int = 24) -> StoredCertificate {
        StoredCertificate(
            domain: domain, user: "user\(index)", sha256: sha(index),
            name: "laptop \(index)", der: [0x30, 0x82] + Array(repeating: UInt8(index & 0xff), count: derSize),
            notBeforeMillis: 1_700_000_000_000, notAfterMillis: 1_800_000_000_000,
            jids: ["user\(index)@\(domain)", "user\(index)@\(domain)/phone"], noCertManagement: index % 2 == 0,
            addedWall: 1_700_000_000_123, addedLogical: 7, addedOrigin: "node1")
    }

    private func sha(_ index: Int) -> [UInt8] {
        var bytes = [UInt8](repeating: 0xab, count: 32)
        withUnsafeBytes(of: UInt64(index).bigEndian) { bytes.replaceSubrange(0..<8, with: $0) }
        return bytes
    }

    private func sorted(_ records: [StoredCertificate]) -> [StoredCertificate] {
        records.sorted {
            if $0.domain != $1.domain { return Array($0.domain.utf8).lexicographicallyPrecedes($1.domain.utf8) }
            if $0.user != $1.user { return Array($0.user.utf8).lexicographicallyPrecedes($1.user.utf8) }
            return $0.sha256.lexicographicallyPrecedes($1.sha256)
        }
    }

    private func expectError(
        _ expected: (RegistryDatabaseError) -> Bool, file: StaticString = #filePath, line: UInt = #line,
        _ body: () throws -> Void
    ) -> RegistryDatabaseError? {
        do {
            try body()
            XCTFail("expected an error, got success", file: file, line: line)
            return nil
        } catch let error as RegistryDatabaseError {
            XCTAssertTrue(expected(error), "unexpected error: \(error)", file: file, line: line)
            return error
        } catch {
            XCTFail("unexpected error type: \(error)", file: file, line: line)
            return nil
        }
    }

    // MARK: - Round trips

    func testRoundTripOfFullRecordsAndBareTombstones() throws {
        let db = try RegistryDatabase(directory: dataDir)
        defer { db.close() }
        var edge = fullRecord(1)
        edge.user = "ünïcødé\u{0}nul"  // explicit-length binding keeps the NUL
        edge.name = ""  // empty text must stay empty text, not NULL
        edge.der = []  // empty blob must stay an empty blob, not NULL
        edge.jids = ["a\"b\\c/d@x.example/🚀", ""]
        edge.notBeforeMillis = Int64.min
        edge.notAfterMillis = Int64.max
        edge.addedWall = UInt64.max  // beyond Int64: stored by bit pattern
        edge.addedLogical = UInt32.max
        edge.removalKind = UInt8.max
        edge.removalWall = UInt64(Int64.max) + 1
        edge.removalLogical = 0
        edge.removalOrigin = "node2"
        let tombstone = StoredCertificate(
            domain: "second.org", user: "bob", sha256: sha(99),
            removalKind: 2, removalWall: 1_750_000_000_000, removalLogical: 3, removalOrigin: "node3")
        let records = [fullRecord(2), edge, tombstone, fullRecord(3, domain: "second.org")]

        try db.upsert(records)
        let loaded = try db.loadAll()
        XCTAssertEqual(loaded, sorted(records))
        let loadedTombstone = try XCTUnwrap(loaded.first { $0.user == "bob" })
        XCTAssertNil(loadedTombstone.der)
        XCTAssertNil(loadedTombstone.name)
        XCTAssertNil(loadedTombstone.addedWall)
        XCTAssertEqual(loaded.first { $0.user == edge.user }?.der, [])
    }

    func testUpsertReplacesTheRowWithTheMergedRecord() throws {
        let db = try RegistryDatabase(directory: dataDir)
        defer { db.close() }
        let original = fullRecord(5)
        try db.upsert([original, fullRecord(6)])

        var merged = original
        merged.removalKind = 1
        merged.removalWall = 1_760_000_000_000
        merged.removalLogical = 4
        merged.removalOrigin = "node2"
        merged.name = nil
        merged.jids = []
        try db.upsert([merged])

        let loaded = try db.loadAll()
        XCTAssertEqual(loaded.count, 2)
        XCTAssertEqual(loaded.first { $0.user == "user5" }, merged)
        XCTAssertEqual(loaded.first { $0.user == "user6" }, fullRecord(6))
    }

    func testSameUserDifferentCertificatesAreDistinctRows() throws {
        let db = try RegistryDatabase(directory: dataDir)
        defer { db.close() }
        var a = fullRecord(1)
        var b = fullRecord(1)
        b.sha256 = sha(2)
        b.name = "other"
        a.domain = "x.com"
        b.domain = "x.com"
        try db.upsert([a, b])
        XCTAssertEqual(try db.loadAll(), sorted([a, b]))
    }

    /// Start-up reads in batches so the store can index one while the next is read: the batches
    /// are the rows of `loadAll`, in order, none empty and none over the size.
    func testBatchesAreTheRowsOfLoadAllInOrder() throws {
        let db = try RegistryDatabase(directory: dataDir)
        defer { db.close() }
        var batches: [[StoredCertificate]] = []
        try db.forEachCertificateBatch(batchSize: 2) { batches.append($0) }
        XCTAssertEqual(batches, [])
        let records = (0..<5).map { fullRecord($0) }
        try db.upsert(records)
        try db.forEachCertificateBatch(batchSize: 2) { batches.append($0) }
        XCTAssertEqual(batches.map(\.count), [2, 2, 1])
        XCTAssertEqual(batches.flatMap { $0 }, try db.loadAll())
        XCTAssertEqual(try db.loadAll(), sorted(records))
    }

    func testEmptyUpsertIsANoOp() throws {
        let db = try RegistryDatabase(directory: dataDir)
        defer { db.close() }
        try db.upsert([])
        XCTAssertEqual(try db.loadAll(), [])
    }

    func testHundredThousandRowsInBatches() throws {
        let db = try RegistryDatabase(directory: dataDir)
        let total = 100_000, batch = 1_000
        let records = (0..<total).map { fullRecord($0, domain: "d\($0 % 10).example", derSize: 600) }  // ~certificate-sized
        let start = Date()
        for offset in stride(from: 0, to: total, by: batch) {
            try db.upsert(Array(records[offset..<offset + batch]))
        }
        let written = Date()
        let loaded = try db.loadAll()
        let read = Date()
        db.close()
        let reopened = try RegistryDatabase(directory: dataDir)  // includes the full integrity_check
        let opened = Date()
        defer { reopened.close() }
        print(String(
            format: "RegistryDatabase: %d rows in %d durable transactions: upsert %.2fs, loadAll %.2fs, reopen+integrity_check %.2fs",
            total, total / batch, written.timeIntervalSince(start), read.timeIntervalSince(written),
            opened.timeIntervalSince(read)))
        XCTAssertEqual(loaded.count, total)
        XCTAssertEqual(Set(loaded.map(\.sha256)).count, total)
        XCTAssertEqual(loaded.first { $0.user == "user4242" }, records[4242])
    }

    /// What a restart reserves room for: from the file's size alone, near the row count for
    /// certificate-sized rows, and next to nothing for an empty registry.
    func testEstimatedCertificateCountFollowsTheFileSize() throws {
        let db = try RegistryDatabase(directory: dataDir)
        defer { db.close() }
        XCTAssertLessThan(try db.estimatedCertificateCount(), 100)
        try db.upsert((0..<4_000).map { fullRecord($0, derSize: 600) })
        let estimate = try db.estimatedCertificateCount()
        XCTAssertGreaterThan(estimate, 2_000)
        XCTAssertLessThan(estimate, 8_000)
    }

    // MARK: - Checkpoints

    private func fileSize(_ path: String) -> Int {
        ((try? FileManager.default.attributesOfItem(atPath: path))?[.size] as? Int) ?? -1
    }

    /// A fresh node's join pauses SQLite's automatic checkpoints, so its pages are written once
    /// (into the WAL) before it is ready, and checkpoints them after. Committed rows are in the
    /// WAL meanwhile (another process reads them); the checkpoint moves every one into the
    /// database file and truncates the WAL; automatic checkpoints work again after it.
    func testPausedCheckpointsLeaveTheFileAloneUntilTheCheckpointAfterTheJoin() throws {
        let db = try RegistryDatabase(directory: dataDir)
        defer { db.close() }
        try db.upsert([fullRecord(0)])
        try db.checkpointAndResumeAutomaticCheckpoints()
        let fileBefore = fileSize(dbPath)
        XCTAssertFalse(db.automaticCheckpointsPaused)

        // ~24 MB of rows, past the 1,000-page (16 MiB) automatic checkpoint.
        try db.pauseAutomaticCheckpoints()
        try db.pauseAutomaticCheckpoints()  // idempotent
        XCTAssertTrue(db.automaticCheckpointsPaused)
        for batch in 0..<8 {
            try db.upsert((1 + batch * 4_000..<1 + (batch + 1) * 4_000).map { fullRecord($0, derSize: 600) })
        }
        XCTAssertEqual(fileSize(dbPath), fileBefore, "no checkpoint wrote into the database file while paused")
        XCTAssertGreaterThan(fileSize(dbPath + "-wal"), 20 << 20, "every committed page is in the WAL")
        XCTAssertEqual(try sqlite3(dbPath, "SELECT count(*) FROM certificates;"), "32001", "committed: another process reads them")

        let outcome = try db.checkpointAndResumeAutomaticCheckpoints()
        XCTAssertTrue(outcome.complete)
        XCTAssertGreaterThan(outcome.walBytes, 20 << 20)
        XCTAssertFalse(db.automaticCheckpointsPaused)
        XCTAssertEqual(fileSize(dbPath + "-wal"), 0, "truncated")
        XCTAssertGreaterThan(fileSize(dbPath), fileBefore + (20 << 20), "the rows are in the database file")

        // Automatic again: the next 24 MB grow the file without being asked.
        let fileAfter = fileSize(dbPath)
        for batch in 8..<16 {
            try db.upsert((1 + batch * 4_000..<1 + (batch + 1) * 4_000).map { fullRecord($0, derSize: 600) })
        }
        XCTAssertGreaterThan(fileSize(dbPath), fileAfter + (10 << 20), "SQLite checkpointed by itself")
        XCTAssertEqual(try sqlite3(dbPath, "SELECT count(*) FROM certificates;"), "64001")
    }

    /// Another process in the middle of a transaction keeps the WAL from being truncated: the
    /// checkpoint says it is incomplete (it is not an error: SQLite finishes it on a later
    /// commit) and automatic checkpoints are back on all the same.
    func testACheckpointBlockedByAnotherProcessIsIncompleteNotAnError() throws {
        let db = try RegistryDatabase(directory: dataDir)
        defer { db.close() }
        try db.pauseAutomaticCheckpoints()
        try db.upsert((0..<100).map { fullRecord($0) })
        let holder = try LockHolder(dbPath: dbPath)
        let outcome = try db.checkpointAndResumeAutomaticCheckpoints()
        try holder.release()
        XCTAssertFalse(outcome.complete)
        XCTAssertGreaterThan(outcome.walBytes, 0)
        XCTAssertFalse(db.automaticCheckpointsPaused)
        XCTAssertTrue(try db.checkpointAndResumeAutomaticCheckpoints().complete, "complete once the other process is gone")
        XCTAssertEqual(fileSize(dbPath + "-wal"), 0)
    }

    // MARK: - Durability and reopening

    func testReopenAfterCloseKeepsEverything() throws {
        let records = (0..<50).map { fullRecord($0) } + [
            StoredCertificate(domain: "first.com", user: "gone", sha256: sha(1000),
                              removalKind: 1, removalWall: 5, removalLogical: 6, removalOrigin: "node9"),
        ]
        do {
            let db = try RegistryDatabase(directory: dataDir)
            try db.upsert(Array(records[0..<20]))
            try db.upsert(Array(records[20...]))
            db.close()
            db.close()  // idempotent
        }
        let again = try RegistryDatabase(directory: dataDir)
        defer { again.close() }
        XCTAssertEqual(try again.loadAll(), sorted(records))
    }

    func testCommittedRowsAreVisibleToAnotherProcessBeforeClose() throws {
        let db = try RegistryDatabase(directory: dataDir)
        defer { db.close() }
        let records = (0..<3).map { fullRecord($0) }
        try db.upsert(records)
        // The commit must be in the WAL (not merely in our process) while the connection is still open.
        let walSize = try FileManager.default.attributesOfItem(atPath: dbPath + "-wal")[.size] as? Int
        XCTAssertGreaterThan(walSize ?? 0, 0)
        let out = try sqlite3(dbPath, "SELECT count(*), hex(sha256) FROM certificates WHERE user = 'user2';")
        XCTAssertEqual(out, "1|" + sha(2).map { String(format: "%02X", $0) }.joined())
    }

    func testFailedTransactionStoresNothing() throws {
        let db = try RegistryDatabase(directory: dataDir)
        defer { db.close() }
        try db.upsert([fullRecord(1)])
        // Another process holds the write lock, so our transaction must fail as a whole (after busy_timeout).
        let holder = try LockHolder(dbPath: dbPath)
        let error = expectError({ if case .writeFailed = $0 { true } else { false } }) {
            try db.upsert([fullRecord(2), fullRecord(3)])
        }
        XCTAssertTrue(error?.description.contains(dbPath) ?? false, "\(String(describing: error))")
        try holder.release()
        XCTAssertEqual(try db.loadAll(), [fullRecord(1)])
        try db.upsert([fullRecord(2)])  // the connection is usable again
        XCTAssertEqual(try db.loadAll().count, 2)
    }

    // MARK: - Locking, files, schema

    func testSecondOpenOfTheSameDirectoryIsLocked() throws {
        let first = try RegistryDatabase(directory: dataDir)
        let error = expectError({ if case .locked = $0 { true } else { false } }) {
            _ = try RegistryDatabase(directory: dataDir)
        }
        XCTAssertTrue(error?.description.contains("another keystored uses this data_dir") ?? false)
        try first.upsert([fullRecord(1)])  // the failed open did not disturb the first
        first.close()
        let second = try RegistryDatabase(directory: dataDir + "/")
        defer { second.close() }
        XCTAssertEqual(try second.loadAll(), [fullRecord(1)])
    }

    func testFilesAreCreatedPrivate() throws {
        let db = try RegistryDatabase(directory: dataDir)
        defer { db.close() }
        try db.upsert([fullRecord(1)])
        XCTAssertEqual(try mode(dataDir), 0o700)
        XCTAssertEqual(try mode(dbPath), 0o600)
        XCTAssertEqual(try mode(dataDir + "/lock"), 0o600)
        XCTAssertEqual(try mode(dbPath + "-wal"), 0o600)
        XCTAssertEqual(try sqlite3(dbPath, "PRAGMA journal_mode;"), "wal")
    }

    func testDirectoryThatIsAFileFails() throws {
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        let blocker = root + "/node1"
        XCTAssertTrue(FileManager.default.createFile(atPath: blocker, contents: Data("x".utf8)))
        let error = expectError({ if case .cannotCreateDirectory(blocker, _) = $0 { true } else { false } }) {
            _ = try RegistryDatabase(directory: dataDir)
        }
        XCTAssertTrue(error?.description.contains("not a directory") ?? false, "\(String(describing: error))")
    }

    func testSchemaVersionIsTwo() throws {
        try RegistryDatabase(directory: dataDir).close()
        XCTAssertEqual(try sqlite3(dbPath, "PRAGMA user_version;"), "2")
        XCTAssertEqual(RegistryDatabase.schemaVersion, 2)
    }

    /// A new file gets 16 KiB pages (a fresh node's bulk write); one made with SQLite's default
    /// 4 KiB keeps them and works as before (see the schema-one migration test).
    func testANewDatabaseHasSixteenKiBPages() throws {
        let db = try RegistryDatabase(directory: dataDir)
        try db.upsert([fullRecord(1)])
        db.close()
        XCTAssertEqual(try sqlite3(dbPath, "PRAGMA page_size;"), "16384")
        XCTAssertEqual(try sqlite3(dbPath, "PRAGMA journal_mode;"), "wal")
    }

    func testSchemaTooNewIsRefused() throws {
        let db = try RegistryDatabase(directory: dataDir)
        try db.upsert([fullRecord(1)])
        db.close()
        _ = try sqlite3(dbPath, "PRAGMA user_version = 99;")
        let error = expectError({ $0 == .schemaTooNew(found: 99, supported: RegistryDatabase.schemaVersion) }) {
            _ = try RegistryDatabase(directory: dataDir)
        }
        XCTAssertTrue(error?.description.contains("99") ?? false)
    }

    func testGarbageFileIsCorruptWithRecoveryHint() throws {
        try FileManager.default.createDirectory(atPath: dataDir, withIntermediateDirectories: true)
        let garbage = Data((0..<8192).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 11) })
        XCTAssertTrue(FileManager.default.createFile(atPath: dbPath, contents: garbage))
        for _ in 0..<2 {  // the second attempt proves the failed open released the lock
            let error = expectError({ if case .corrupt(dbPath, _) = $0 { true } else { false } }) {
                _ = try RegistryDatabase(directory: dataDir)
            }
            let text = error?.description ?? ""
            XCTAssertTrue(text.contains("move the file"), text)
            XCTAssertTrue(text.contains("re-syncs the registry from its peers"), text)
        }
        XCTAssertEqual(FileManager.default.contents(atPath: dbPath), garbage, "a corrupt file must not be modified")
    }

    func testDamagedTablePagesAreCorrupt() throws {
        let db = try RegistryDatabase(directory: dataDir)
        try db.upsert((0..<200).map { fullRecord($0) })
        db.close()  // checkpoints the WAL into the main file
        let handle = try XCTUnwrap(FileHandle(forUpdatingAtPath: dbPath))
        let size = try handle.seekToEnd()
        XCTAssertGreaterThan(size, 8192)
        try handle.seek(toOffset: 4096)  // page 2 onwards: the table's b-tree
        try handle.write(contentsOf: Data(repeating: 0xee, count: Int(size) - 4096))
        try handle.close()
        _ = expectError({ if case .corrupt(dbPath, _) = $0 { true } else { false } }) {
            _ = try RegistryDatabase(directory: dataDir)
        }
    }

    /// SQLite's integrity_check text spans lines ("*** in database main ***\nPage 2: ..."); the
    /// operator's exit reason and the log line must not.
    func testCorruptionMessageIsOneLine() throws {
        let db = try RegistryDatabase(directory: dataDir)
        try db.upsert((0..<200).map { fullRecord($0) })
        db.close()
        let handle = try XCTUnwrap(FileHandle(forUpdatingAtPath: dbPath))
        let size = try handle.seekToEnd()
        try handle.seek(toOffset: 8192)  // leave the schema page readable so integrity_check runs and reports
        try handle.write(contentsOf: Data((0..<(Int(size) - 8192)).map { UInt8(truncatingIfNeeded: $0 &* 131 &+ 7) }))
        try handle.close()
        let error = expectError({ if case .corrupt(dbPath, _) = $0 { true } else { false } }) {
            _ = try RegistryDatabase(directory: dataDir)
        }
        let text = try XCTUnwrap(error?.description)
        XCTAssertFalse(text.contains("\n") || text.contains("\r"), text)
        XCTAssertTrue(text.contains("move the file"), text)

        let multiLine = RegistryDatabaseError.corrupt(path: dbPath, reason: "integrity_check: *** in database main ***\nPage 2: btree\r\n\tbad")
        XCTAssertEqual(multiLine.description.filter { $0.isNewline }, "")
        XCTAssertTrue(multiLine.description.contains("*** in database main ***; Page 2: btree; bad"), multiLine.description)
    }

    func testUseAfterCloseFailsCleanly() throws {
        let db = try RegistryDatabase(directory: dataDir)
        db.close()
        _ = expectError({ if case .writeFailed = $0 { true } else { false } }) { try db.upsert([fullRecord(1)]) }
        _ = expectError({ if case .cannotOpen = $0 { true } else { false } }) { _ = try db.loadAll() }
    }

    func testHandEditedRowOfWrongTypeIsReportedNotCrashed() throws {
        let db = try RegistryDatabase(directory: dataDir)
        try db.upsert([fullRecord(1)])
        db.close()
        _ = try sqlite3(dbPath, "UPDATE certificates SET added_logical = 4294967296, jids = 'not json';")
        let reopened = try RegistryDatabase(directory: dataDir)
        defer { reopened.close() }
        let error = expectError({ if case .corrupt(dbPath, _) = $0 { true } else { false } }) {
            _ = try reopened.loadAll()
        }
        XCTAssertTrue(error?.description.contains("user1@first.com") ?? false, "\(String(describing: error))")
    }

    // MARK: - Token sequence floors and batches (schema 2)

    private func floor(_ user: String, _ value: UInt64, wall: UInt64 = 1_700_000_000_000) -> StoredTokenSequenceFloor {
        StoredTokenSequenceFloor(domain: "first.com", user: user, floor: value, stampWall: wall, stampLogical: 3, origin: "node2")
    }

    func testFloorsRoundTripAndSurviveReopen() throws {
        let floors = [floor("bob@first.com", 2), floor("alice@first.com", UInt64.max, wall: UInt64.max),
                      StoredTokenSequenceFloor(domain: "ünï.com", user: "a\u{0}b@ünï.com", floor: 0, stampWall: 0,
                                               stampLogical: UInt32.max, origin: "")]
        do {
            let db = try RegistryDatabase(directory: dataDir)
            try db.write(RegistryWrite(tokenSequenceFloors: floors))
            XCTAssertEqual(try db.loadTokenSequenceFloors(), [floors[1], floors[0], floors[2]], "ordered by (domain, user)")
            // Replaced by (domain, user).
            try db.write(RegistryWrite(tokenSequenceFloors: [floor("bob@first.com", 3)]))
            db.close()
        }
        let again = try RegistryDatabase(directory: dataDir)
        defer { again.close() }
        XCTAssertEqual(try again.loadTokenSequenceFloors(), [floors[1], floor("bob@first.com", 3), floors[2]])
        XCTAssertEqual(try again.loadAll(), [])
    }

    func testBatchDeletesForgottenCertificatesUpsertsAndRaisesFloorsInOneCommit() throws {
        let db = try RegistryDatabase(directory: dataDir)
        defer { db.close() }
        try db.upsert((0..<4).map { fullRecord($0) })
        let key = { (r: StoredCertificate) in StoredCertificateKey(domain: r.domain, user: r.user, sha256: r.sha256) }
        var revoked = fullRecord(2)
        revoked.der = []   // a compacted (revoked) record keeps an empty DER, not NULL
        revoked.removalKind = 2
        revoked.removalWall = 5
        revoked.removalLogical = 0
        revoked.removalOrigin = "node1"
        try db.write(RegistryWrite(certificates: [revoked, fullRecord(3)],
                                   deletedCertificates: [key(fullRecord(0)), key(fullRecord(3)),
                                                         StoredCertificateKey(domain: "none.com", user: "x", sha256: sha(9))],
                                   tokenSequenceFloors: [floor("user1", 2)]))
        XCTAssertEqual(try db.loadAll(), [fullRecord(1), revoked, fullRecord(3)], "a key both deleted and written stays written")
        XCTAssertEqual(try db.loadAll().first { $0.user == "user2" }?.der, [])
        XCTAssertEqual(try db.loadTokenSequenceFloors(), [floor("user1", 2)])
        try db.write(RegistryWrite())  // empty batch: no transaction at all
    }

    func testFailedBatchStoresNothingOfIt() throws {
        let db = try RegistryDatabase(directory: dataDir)
        defer { db.close() }
        try db.write(RegistryWrite(certificates: [fullRecord(1)], tokenSequenceFloors: [floor("a", 2)]))
        let holder = try LockHolder(dbPath: dbPath)
        _ = expectError({ if case .writeFailed = $0 { true } else { false } }) {
            try db.write(RegistryWrite(certificates: [fullRecord(2)],
                                       deletedCertificates: [StoredCertificateKey(domain: "first.com", user: "user1", sha256: sha(1))],
                                       tokenSequenceFloors: [floor("a", 3), floor("b", 2)]))
        }
        try holder.release()
        XCTAssertEqual(try db.loadAll(), [fullRecord(1)])
        XCTAssertEqual(try db.loadTokenSequenceFloors(), [floor("a", 2)])
    }

    func testHandEditedFloorRowIsReportedNotCrashed() throws {
        let db = try RegistryDatabase(directory: dataDir)
        try db.write(RegistryWrite(tokenSequenceFloors: [floor("alice@first.com", 2)]))
        db.close()
        _ = try sqlite3(dbPath, "UPDATE token_sequence_floors SET stamp_logical = -1;")
        let reopened = try RegistryDatabase(directory: dataDir)
        defer { reopened.close() }
        let error = expectError({ if case .corrupt(dbPath, _) = $0 { true } else { false } }) {
            _ = try reopened.loadTokenSequenceFloors()
        }
        XCTAssertTrue(error?.description.contains("stamp_logical") ?? false, "\(String(describing: error))")
    }

    // MARK: - Migration from schema 1 (keystored 0.1.0)

    /// The schema-1 file exactly as keystored 0.1.0 wrote it: its DDL, WAL mode, user_version 1.
    private func makeSchemaOneDatabase(extraSQL: String = "") throws {
        try FileManager.default.createDirectory(atPath: dataDir, withIntermediateDirectories: true)
        let ddl = """
            PRAGMA journal_mode=WAL;
            CREATE TABLE certificates (
                domain TEXT NOT NULL, user TEXT NOT NULL, sha256 BLOB NOT NULL, name TEXT, der BLOB,
                not_before_ms INTEGER, not_after_ms INTEGER, jids TEXT NOT NULL, no_cert_management INTEGER NOT NULL,
                added_wall INTEGER, added_logical INTEGER, added_origin TEXT, removal_kind INTEGER, removal_wall INTEGER,
                removal_logical INTEGER, removal_origin TEXT,
                PRIMARY KEY (domain, user, sha256)
            ) WITHOUT ROWID;
            INSERT INTO certificates VALUES ('first.com', 'alice@first.com', x'\(hex(sha(1)))', 'phone', x'3082aabb',
                1700000000000, 1800000000000, '["alice@first.com"]', 0, 1700000000123, 7, 'node1', NULL, NULL, NULL, NULL);
            INSERT INTO certificates VALUES ('first.com', 'bob@first.com', x'\(hex(sha(2)))', NULL, NULL, NULL, NULL, '[]', 0,
                NULL, NULL, NULL, 2, 1750000000000, 3, 'node3');
            \(extraSQL)
            PRAGMA user_version=1;
            """
        _ = try sqlite3(dbPath, ddl)
        XCTAssertEqual(try sqlite3(dbPath, "PRAGMA user_version;"), "1")
    }

    private func hex(_ bytes: [UInt8]) -> String { bytes.map { String(format: "%02x", $0) }.joined() }

    func testMigrationFromSchemaOneKeepsEveryRowAndAddsTheFloorTable() throws {
        try makeSchemaOneDatabase()
        let expected = [
            StoredCertificate(domain: "first.com", user: "alice@first.com", sha256: sha(1), name: "phone",
                              der: [0x30, 0x82, 0xaa, 0xbb], notBeforeMillis: 1_700_000_000_000,
                              notAfterMillis: 1_800_000_000_000, jids: ["alice@first.com"], noCertManagement: false,
                              addedWall: 1_700_000_000_123, addedLogical: 7, addedOrigin: "node1"),
            StoredCertificate(domain: "first.com", user: "bob@first.com", sha256: sha(2),
                              removalKind: 2, removalWall: 1_750_000_000_000, removalLogical: 3, removalOrigin: "node3"),
        ]
        do {
            let db = try RegistryDatabase(directory: dataDir)
            XCTAssertEqual(try db.loadAll(), expected)
            XCTAssertEqual(try db.loadTokenSequenceFloors(), [])
            try db.write(RegistryWrite(tokenSequenceFloors: [floor("alice@first.com", 2)]))
            db.close()
        }
        XCTAssertEqual(try sqlite3(dbPath, "PRAGMA user_version;"), "2")
        // Reopening a migrated file migrates nothing and loses nothing.
        let again = try RegistryDatabase(directory: dataDir)
        defer { again.close() }
        XCTAssertEqual(try again.loadAll(), expected)
        XCTAssertEqual(try again.loadTokenSequenceFloors(), [floor("alice@first.com", 2)])
        XCTAssertEqual(try sqlite3(dbPath, "PRAGMA page_size;"), "4096", "an existing file keeps its page size")
    }

    /// Each migration step commits together with its user_version bump: a step that fails
    /// leaves the file at schema 1 with every row, and says which step failed.
    func testFailedMigrationLeavesTheSchemaOneFileIntact() throws {
        try makeSchemaOneDatabase(extraSQL: "CREATE TABLE token_sequence_floors (x INTEGER);")
        let error = expectError({ if case .cannotOpen(dbPath, _) = $0 { true } else { false } }) {
            _ = try RegistryDatabase(directory: dataDir)
        }
        XCTAssertTrue(error?.description.contains("migrate to schema 2") ?? false, "\(String(describing: error))")
        XCTAssertEqual(try sqlite3(dbPath, "PRAGMA user_version;"), "1")
        XCTAssertEqual(try sqlite3(dbPath, "SELECT count(*) FROM certificates;"), "2")
    }

    // MARK: - Helpers

    private func mode(_ path: String) throws -> Int {
        let attributes = try FileManager.default.attributesOfItem(atPath: path)
        return (attributes[.posixPermissions] as? Int ?? -1) & 0o777
    }

    private func sqlite3(_ path: String, _ sql: String) throws -> String {
        let process = Process()
        process.executableURL = try sqlite3Executable()
        process.arguments = [path, sql]
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        let errors = err.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        XCTAssertEqual(process.terminationStatus, 0, String(decoding: errors, as: UTF8.self))
        return String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }
}

func sqlite3Executable() throws -> URL {
    for dir in (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin").split(separator: ":") + ["/usr/bin"] {
        let candidate = "\(dir)/sqlite3"
        if FileManager.default.isExecutableFile(atPath: candidate) { return URL(fileURLWithPath: candidate) }
    }
    // A missing prerequisite fails the test, it never skips it (house rule).
    throw MissingPrerequisite(message: "the sqlite3 command-line shell is not installed (apt-get install -y sqlite3)")
}

struct MissingPrerequisite: Error, CustomStringConvertible {
    let message: String
    var description: String { message }
}

/// An sqlite3 shell in another process holding the database's write lock until released.
private final class LockHolder {
    private let process = Process()
    private let input = Pipe()
    private let output = Pipe()

    init(dbPath: String) throws {
        process.executableURL = try sqlite3Executable()
        process.arguments = [dbPath]
        process.standardInput = input
        process.standardOutput = output
        try process.run()
        // `.shell echo` runs only after BEGIN IMMEDIATE succeeded and writes unbuffered to our pipe.
        input.fileHandleForWriting.write(Data("BEGIN IMMEDIATE;\n.shell echo locked\n".utf8))
        var seen = Data()
        while !String(decoding: seen, as: UTF8.self).contains("locked") {
            let chunk = output.fileHandleForReading.availableData
            if chunk.isEmpty { throw LockHolderError.shellExitedBeforeLocking }
            seen.append(chunk)
        }
    }

    func release() throws {
        input.fileHandleForWriting.write(Data("ROLLBACK;\n.quit\n".utf8))
        try input.fileHandleForWriting.close()
        process.waitUntilExit()
    }

    deinit {
        if process.isRunning { process.terminate() }
    }
}

private enum LockHolderError: Error { case shellExitedBeforeLocking }
