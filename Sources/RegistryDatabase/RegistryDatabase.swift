import CSQLite
import FoundationEssentials

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The node's durable copy of the replicated registry (DESIGN.md "Certificate registry" 5 and 6):
/// certificate records with their tombstones, and the users' refresh-token sequence floors.
///
/// Registrations, removal tombstones and floors must survive a full-cluster restart, so `write` (and
/// `upsert`) return only after SQLite has committed and fsynced (WAL with `synchronous=FULL`); the API
/// acknowledges a request only after that. RAM keys never come here: no record type has a field that
/// could hold one.
///
/// Plain system libsqlite3 through a tiny module map instead of GRDB: for one table and three
/// statements, GRDB's build time on our 2-core builders costs far more than these few hundred lines.
///
/// Not `Sendable`: an SQLite connection and its prepared statements must be used from one thread at a
/// time, so the owner confines the instance to one actor/thread (the connection is opened NOMUTEX).
public final class RegistryDatabase {
    /// The schema this build writes and understands; `migrate` upgrades anything older to it.
    public static let schemaVersion: Int32 = 2

    /// Path of the SQLite file, used in every error so the operator knows which node's file is meant.
    public let path: String
    /// Path of the flock'ed file that keeps a second keystored out of this data_dir.
    public let lockPath: String

    private var db: OpaquePointer?
    private var lockFD: Int32
    private var statements: Statements?
    /// Reused: building a coder per row was a measurable share of loading 100,000 rows.
    private let jidEncoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.withoutEscapingSlashes]
        return encoder
    }()
    private let jidDecoder = JSONDecoder()

    /// Opens (creating if needed) `<directory>/registry.sqlite3` and takes `<directory>/lock`.
    ///
    /// The lock is taken before SQLite touches the file, so a second daemon fails with `locked` without
    /// ever opening the database; the file is created 0600 by us because SQLite would use the umask.
    public init(directory: String) throws(RegistryDatabaseError) {
        let directory = directory.count > 1 && directory.hasSuffix("/") ? String(directory.dropLast()) : directory
        try Self.createDirectory(directory)
        let lockPath = directory + "/lock"
        let dbPath = directory + "/registry.sqlite3"
        self.path = dbPath
        self.lockPath = lockPath

        let fd = open(lockPath, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw .cannotOpen(path: lockPath, reason: "cannot open lock file: \(Self.errnoString())") }
        if flock(fd, LOCK_EX | LOCK_NB) != 0 {
            let err = errno
            _ = closeDescriptor(fd)
            if err == EWOULDBLOCK { throw .locked(path: lockPath) }
            throw .cannotOpen(path: lockPath, reason: "cannot lock: \(String(cString: strerror(err)))")
        }
        self.lockFD = fd

        do throws(RegistryDatabaseError) {
            try Self.createFileIfMissing(dbPath, directory: directory)
            let connection = try Self.openConnection(dbPath)
            self.db = connection
            try configure()
            try migrate()
            try checkIntegrity()
            self.statements = try Statements(db: connection, path: dbPath)
        } catch {
            close()
            throw error
        }
    }

    deinit { close() }

    /// Writes `records` in ONE transaction, replacing any row with the same (domain, user, sha256).
    /// The same as `write(RegistryWrite(certificates: records))`.
    public func upsert(_ records: [StoredCertificate]) throws(RegistryDatabaseError) {
        try write(RegistryWrite(certificates: records))
    }

    /// Applies one batch in ONE transaction: certificate rows are replaced by (domain, user, sha256),
    /// forgotten certificates deleted, floor rows replaced by (domain, user).
    ///
    /// The caller passes already-merged records (one merge outcome, or one local operation); the
    /// database does not merge. Returns only after the commit is on disk, so acknowledging the
    /// request afterwards is safe. On error nothing of the batch is stored.
    public func write(_ batch: RegistryWrite) throws(RegistryDatabaseError) {
        guard let db, let statements else { throw .writeFailed(reason: "registry database \(path) is closed") }
        if batch.isEmpty { return }
        // Encode first so a bad record cannot leave a transaction half-written.
        var encodedJIDs: [String] = []
        encodedJIDs.reserveCapacity(batch.certificates.count)
        for record in batch.certificates {
            guard let json = encodeJIDs(record.jids) else {
                throw .writeFailed(reason: "\(path): the jids of \(record.user)@\(record.domain) cannot be encoded")
            }
            encodedJIDs.append(json)
        }

        try runWrite(statements.begin, what: "begin transaction")
        do throws(RegistryDatabaseError) {
            for key in batch.deletedCertificates {
                try bind(key, to: statements.deleteCertificate)
                try runWrite(statements.deleteCertificate, what: "delete \(key.user)@\(key.domain)")
            }
            // By index: a `zip` iterator hands out a copy of each record (~30 ms of retains and
            // releases per 100,000 rows of a join).
            for index in batch.certificates.indices {
                try bind(batch.certificates[index], jids: encodedJIDs[index], to: statements.upsert)
                try runWrite(statements.upsert, what: "write \(batch.certificates[index].user)@\(batch.certificates[index].domain)")
            }
            for user in batch.deletedTokenSequenceFloors {
                sqlite3_reset(statements.deleteFloor)
                sqlite3_clear_bindings(statements.deleteFloor)
                let codes = [Self.bindText(statements.deleteFloor, 1, user.domain), Self.bindText(statements.deleteFloor, 2, user.user)]
                if let bad = codes.firstIndex(where: { $0 != SQLITE_OK }) {
                    throw writeError(codes[bad], what: "bind key column \(bad + 1) of the token floor of \(user.user)@\(user.domain)")
                }
                try runWrite(statements.deleteFloor, what: "delete the token floor of \(user.user)@\(user.domain)")
            }
            for floor in batch.tokenSequenceFloors {
                try bind(floor, to: statements.upsertFloor)
                try runWrite(statements.upsertFloor, what: "write the token floor of \(floor.user)@\(floor.domain)")
            }
            try runWrite(statements.commit, what: "commit")
        } catch {
            // A failed COMMIT (e.g. SQLITE_BUSY) can leave the transaction open; some I/O errors roll back
            // by themselves, in which case ROLLBACK would only complain.
            if sqlite3_get_autocommit(db) == 0 {
                sqlite3_reset(statements.rollback)
                _ = sqlite3_step(statements.rollback)
                sqlite3_reset(statements.rollback)
            }
            throw error
        }
    }

    /// Every stored record (registrations and tombstones), ordered by (domain, user, sha256).
    public func loadAll() throws(RegistryDatabaseError) -> [StoredCertificate] {
        try readRows(\.selectAll, what: "read records") { stmt throws(RegistryDatabaseError) in try decodeRow(stmt) }
    }

    /// Every stored certificate record like `loadAll`, handed over `batchSize` rows at a time,
    /// so the caller can put one batch to use (on another thread) while the next is read: at
    /// start-up 100,000 rows are read and indexed in parallel instead of one after the other.
    public func forEachCertificateBatch(batchSize: Int = 4096, _ body: ([StoredCertificate]) -> Void) throws(RegistryDatabaseError) {
        try readRows(\.selectAll, what: "read records", batchSize: batchSize,
                     { stmt throws(RegistryDatabaseError) in try decodeRow(stmt) }, body)
    }

    /// The file bytes `estimatedCertificateCount` counts per row; a loader sizing its memory from
    /// that count multiplies back by it.
    public static let estimatedBytesPerCertificateRow = 640

    /// About how many certificate rows the file holds, from its size alone (two O(1) PRAGMAs;
    /// counting the rows reads the whole file): what a start-up load reserves room for. A row
    /// with a typical client certificate takes 650–1,500 bytes on disk, so this errs high for
    /// small certificates and low for large ones; capped so a huge file cannot ask for absurd
    /// reservations.
    public func estimatedCertificateCount() throws(RegistryDatabaseError) -> Int {
        let pages = Int(try scalar("PRAGMA page_count", what: "read the page count") ?? "") ?? 0
        let pageSize = Int(try scalar("PRAGMA page_size", what: "read the page size") ?? "") ?? 0
        return min(pages * pageSize / Self.estimatedBytesPerCertificateRow, 1 << 22)
    }

    // MARK: - Checkpoints

    /// SQLite's own threshold for an automatic checkpoint (pages of WAL; 16 MiB with our pages).
    static let automaticCheckpointPages: Int32 = 1000

    /// True between `pauseAutomaticCheckpoints` and `checkpointAndResumeAutomaticCheckpoints`.
    public private(set) var automaticCheckpointsPaused = false

    /// Stops SQLite from copying the WAL into the database file while a bulk write (a fresh
    /// node's join) runs. Every commit stays as durable as before: with `synchronous=FULL` a
    /// commit is durable once its WAL frames are fsynced, and a checkpoint only moves committed
    /// pages into the main file. Without the pause, a join of 100,000 rows wrote every page twice
    /// (~70 MB into the WAL, then again into the file, each checkpoint with its own fsync of the
    /// file) before the node was ready: 14 fresh joins alternated with the code before, median
    /// spawn to ready −130 to −160 ms (BENCHMARKS.md, "Large state"). The WAL grows to the size
    /// of what is written until `checkpointAndResumeAutomaticCheckpoints`; a crash meanwhile
    /// loses nothing (the next open reads the WAL, the next checkpoint moves it).
    public func pauseAutomaticCheckpoints() throws(RegistryDatabaseError) {
        guard !automaticCheckpointsPaused else { return }
        guard let db else { throw .cannotOpen(path: path, reason: "the database is closed") }
        let rc = sqlite3_wal_autocheckpoint(db, 0)
        guard rc == SQLITE_OK else { throw writeError(rc, what: "pause automatic checkpoints") }
        automaticCheckpointsPaused = true
    }

    /// What `checkpointAndResumeAutomaticCheckpoints` found and did.
    public struct CheckpointOutcome: Sendable, Equatable {
        /// The WAL file's size before the checkpoint.
        public var walBytes: Int
        /// Whether all of it is now in the database file and the WAL truncated; false when
        /// another connection (an operator's `sqlite3`, say) was reading: SQLite moves the rest
        /// by its automatic checkpoints on later commits.
        public var complete: Bool
    }

    /// Turns automatic checkpoints back on, then copies the whole WAL into the database file
    /// and truncates the WAL to zero bytes (`SQLITE_CHECKPOINT_TRUNCATE`: the file a paused
    /// join left tens of megabytes long gives its disk space back). Automatic checkpoints are
    /// on again even when the checkpoint fails.
    @discardableResult
    public func checkpointAndResumeAutomaticCheckpoints() throws(RegistryDatabaseError) -> CheckpointOutcome {
        guard let db else { throw .cannotOpen(path: path, reason: "the database is closed") }
        if automaticCheckpointsPaused {
            let rc = sqlite3_wal_autocheckpoint(db, Self.automaticCheckpointPages)
            guard rc == SQLITE_OK else { throw writeError(rc, what: "resume automatic checkpoints") }
            automaticCheckpointsPaused = false
        }
        var info = stat()
        let walBytes = stat(path + "-wal", &info) == 0 ? Int(info.st_size) : 0
        let rc = sqlite3_wal_checkpoint_v2(db, nil, SQLITE_CHECKPOINT_TRUNCATE, nil, nil)
        if rc == SQLITE_BUSY { return CheckpointOutcome(walBytes: walBytes, complete: false) }
        guard rc == SQLITE_OK else { throw writeError(rc, what: "checkpoint the WAL into the database file") }
        return CheckpointOutcome(walBytes: walBytes, complete: true)
    }

    /// Every stored refresh-token sequence floor, ordered by (domain, user).
    public func loadTokenSequenceFloors() throws(RegistryDatabaseError) -> [StoredTokenSequenceFloor] {
        try readRows(\.selectFloors, what: "read token floors") { stmt throws(RegistryDatabaseError) in try decodeFloorRow(stmt) }
    }

    /// Steps one prepared SELECT to the end, decoding each row.
    private func readRows<Row>(_ statement: KeyPath<Statements, OpaquePointer>, what: String,
                               _ decode: (OpaquePointer) throws(RegistryDatabaseError) -> Row) throws(RegistryDatabaseError) -> [Row] {
        var result: [Row] = []
        try readRows(statement, what: what, batchSize: Int.max, decode) { result = $0 }
        return result
    }

    /// `readRows` in batches: `emit` gets every `batchSize` rows (and the rest at the end; never
    /// an empty batch). A read error stops it, after the batches already emitted.
    private func readRows<Row>(_ statement: KeyPath<Statements, OpaquePointer>, what: String, batchSize: Int,
                               _ decode: (OpaquePointer) throws(RegistryDatabaseError) -> Row,
                               _ emit: ([Row]) -> Void) throws(RegistryDatabaseError) {
        guard db != nil, let statements else {
            throw .cannotOpen(path: path, reason: "the database was closed; open it again to read")
        }
        let stmt = statements[keyPath: statement]
        defer { sqlite3_reset(stmt) }
        sqlite3_reset(stmt)
        let size = max(1, batchSize)
        var batch: [Row] = []
        if size < Int.max { batch.reserveCapacity(size) }
        while true {
            let rc = sqlite3_step(stmt)
            if rc == SQLITE_DONE { break }
            guard rc == SQLITE_ROW else { throw readError(rc, what: what) }
            batch.append(try decode(stmt))
            if batch.count == size {
                emit(batch)
                batch = []
                batch.reserveCapacity(size)
            }
        }
        if !batch.isEmpty { emit(batch) }
    }

    /// Finalizes statements, closes the connection (which checkpoints the WAL) and only then releases
    /// the lock, so the next opener never races our checkpoint. Safe to call more than once.
    public func close() {
        statements?.finalize()
        statements = nil
        if let db {
            // All our statements are finalized, so this cannot return SQLITE_BUSY; close_v2 guarantees
            // the handle is released even if something we did not expect is still open.
            _ = sqlite3_close_v2(db)
            self.db = nil
        }
        if lockFD >= 0 {
            _ = closeDescriptor(lockFD)
            lockFD = -1
        }
    }

    // MARK: - Opening

    private static func createDirectory(_ directory: String) throws(RegistryDatabaseError) {
        guard !directory.isEmpty else {
            throw .cannotCreateDirectory(path: directory, reason: "data_dir is empty; set it to a directory path")
        }
        // mkdir -p, each level 0700: the registry is nobody else's business.
        var prefix = directory.hasPrefix("/") ? "/" : ""
        let components = directory.split(separator: "/", omittingEmptySubsequences: true)
        for (index, component) in components.enumerated() {
            prefix += (prefix.isEmpty || prefix.hasSuffix("/") ? "" : "/") + component
            if mkdir(prefix, 0o700) == 0 {
                // Make the new entry itself durable, or a crash could lose the directory with the data.
                syncDirectory(parentOf: prefix)
                continue
            }
            let err = errno
            guard err == EEXIST else {
                throw .cannotCreateDirectory(path: prefix, reason: String(cString: strerror(err)))
            }
            var info = stat()
            guard stat(prefix, &info) == 0 else {
                throw .cannotCreateDirectory(path: prefix, reason: errnoString())
            }
            if info.st_mode & S_IFMT != S_IFDIR {
                let what = index == components.count - 1 ? "data_dir" : "a parent of data_dir"
                throw .cannotCreateDirectory(path: prefix, reason: "\(what) exists but is not a directory")
            }
        }
    }

    private static func createFileIfMissing(_ dbPath: String, directory: String) throws(RegistryDatabaseError) {
        let fd = open(dbPath, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        if fd >= 0 {
            _ = closeDescriptor(fd)
            syncDirectory(directory)
            return
        }
        let err = errno
        if err != EEXIST { throw .cannotOpen(path: dbPath, reason: String(cString: strerror(err))) }
    }

    private static func syncDirectory(parentOf path: String) {
        guard let slash = path.lastIndex(of: "/") else { syncDirectory("."); return }
        syncDirectory(slash == path.startIndex ? "/" : String(path[..<slash]))
    }

    /// Best effort: a failure here does not make the data wrong, only a power loss more damaging.
    private static func syncDirectory(_ directory: String) {
        let fd = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { return }
        _ = fsync(fd)
        _ = closeDescriptor(fd)
    }

    private static func openConnection(_ dbPath: String) throws(RegistryDatabaseError) -> OpaquePointer {
        var handle: OpaquePointer?
        let rc = sqlite3_open_v2(dbPath, &handle, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, nil)
        guard rc == SQLITE_OK, let handle else {
            let reason = handle.map { String(cString: sqlite3_errmsg($0)) } ?? String(cString: sqlite3_errstr(rc))
            if let handle { _ = sqlite3_close_v2(handle) }
            throw .cannotOpen(path: dbPath, reason: reason)
        }
        sqlite3_extended_result_codes(handle, 1)
        // Short: the flock keeps other daemons out, so only an operator's sqlite3 shell can make us wait.
        sqlite3_busy_timeout(handle, 1000)
        return handle
    }

    private func configure() throws(RegistryDatabaseError) {
        // 16 KiB pages for a new file (an existing one keeps its size: SQLite changes it only by
        // VACUUM, and never in WAL mode, so this must come before the journal mode). A record is
        // ~700 bytes, about a sixth of a 4 KiB page; with 16 KiB pages a fresh node's 100,000-row
        // join writes a quarter as many pages and checkpoints a quarter as often (the sqlite3
        // shell, 100,000 such rows in 1,200-row transactions: 1.4–1.6 s → 1.0–1.25 s).
        try execute("PRAGMA page_size=16384", what: "set the page size")
        // The first read of the header: a non-SQLite file fails here (NOTADB).
        let mode = try scalar("PRAGMA journal_mode=WAL", what: "enable WAL")
        guard mode?.lowercased() == "wal" else {
            throw .cannotOpen(path: path, reason: "cannot switch to WAL journal mode (got \(mode ?? "nothing")); "
                + "put data_dir on a local filesystem")
        }
        // In WAL mode FULL fsyncs the WAL at every commit: that is what makes upsert durable on return.
        try execute("PRAGMA synchronous=FULL", what: "set synchronous=FULL")
        try execute("PRAGMA foreign_keys=ON", what: "enable foreign keys")
    }

    /// Brings an older file up to `schemaVersion`; each step runs in its own transaction together with
    /// the `user_version` bump, so a crash mid-migration leaves the old, still readable, version.
    private func migrate() throws(RegistryDatabaseError) {
        let found = try userVersion()
        if found > Self.schemaVersion { throw .schemaTooNew(found: found, supported: Self.schemaVersion) }
        if found < 0 { throw .corrupt(path: path, reason: "schema version \(found) is not a keystore schema version") }
        var version = found
        while version < Self.schemaVersion {
            let next = version + 1
            try execute("BEGIN IMMEDIATE", what: "begin migration to schema \(next)")
            do throws(RegistryDatabaseError) {
                for sql in Self.migrationSteps(to: next) {
                    try execute(sql, what: "migrate to schema \(next)")
                }
                try execute("PRAGMA user_version=\(next)", what: "record schema \(next)")
                try execute("COMMIT", what: "commit migration to schema \(next)")
            } catch {
                if let db, sqlite3_get_autocommit(db) == 0 { try? execute("ROLLBACK", what: "roll back migration") }
                throw error
            }
            version = next
        }
    }

    private static func migrationSteps(to version: Int32) -> [String] {
        switch version {
        case 1:
            // UInt64 clocks are stored as their Int64 bit pattern (SQLite integers are signed 64-bit);
            // jids are a JSON array of strings so the file stays readable with the sqlite3 shell.
            return ["""
                CREATE TABLE certificates (
                    domain TEXT NOT NULL,
                    user TEXT NOT NULL,
                    sha256 BLOB NOT NULL,
                    name TEXT,
                    der BLOB,
                    not_before_ms INTEGER,
                    not_after_ms INTEGER,
                    jids TEXT NOT NULL,
                    no_cert_management INTEGER NOT NULL,
                    added_wall INTEGER,
                    added_logical INTEGER,
                    added_origin TEXT,
                    removal_kind INTEGER,
                    removal_wall INTEGER,
                    removal_logical INTEGER,
                    removal_origin TEXT,
                    PRIMARY KEY (domain, user, sha256)
                ) WITHOUT ROWID
                """]
        case 2:
            // Refresh-token sequence floors (issue 14): one row per user, the replicated maximum.
            // floor and stamp_wall are UInt64 stored by bit pattern, like the clocks above.
            return ["""
                CREATE TABLE token_sequence_floors (
                    domain TEXT NOT NULL,
                    user TEXT NOT NULL,
                    floor INTEGER NOT NULL,
                    stamp_wall INTEGER NOT NULL,
                    stamp_logical INTEGER NOT NULL,
                    origin TEXT NOT NULL,
                    PRIMARY KEY (domain, user)
                ) WITHOUT ROWID
                """]
        default:
            return []
        }
    }

    /// A full integrity_check was measured at well under a second for 100,000 rows; a registry that
    /// cannot be trusted is worse than a slower start, since the node can re-sync it from peers.
    private func checkIntegrity() throws(RegistryDatabaseError) {
        let verdict = try scalar("PRAGMA integrity_check(1)", what: "check integrity")
        guard verdict == "ok" else { throw .corrupt(path: path, reason: "integrity_check: \(verdict ?? "no answer")") }
    }

    private func userVersion() throws(RegistryDatabaseError) -> Int32 {
        guard let text = try scalar("PRAGMA user_version", what: "read schema version"), let value = Int32(text) else {
            throw .corrupt(path: path, reason: "schema version is unreadable")
        }
        return value
    }

    // MARK: - Statements

    /// Prepared once and reused: preparing per call would dominate the cost of small upserts.
    private struct Statements {
        let begin: OpaquePointer
        let commit: OpaquePointer
        let rollback: OpaquePointer
        let upsert: OpaquePointer
        let selectAll: OpaquePointer
        let deleteCertificate: OpaquePointer
        let upsertFloor: OpaquePointer
        let selectFloors: OpaquePointer
        let deleteFloor: OpaquePointer

        static let columns = """
            domain, user, sha256, name, der, not_before_ms, not_after_ms, jids, no_cert_management, \
            added_wall, added_logical, added_origin, removal_kind, removal_wall, removal_logical, removal_origin
            """

        init(db: OpaquePointer, path: String) throws(RegistryDatabaseError) {
            var prepared: [OpaquePointer] = []
            let sqls = [
                "BEGIN IMMEDIATE",
                "COMMIT",
                "ROLLBACK",
                "INSERT OR REPLACE INTO certificates (\(Self.columns)) "
                    + "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
                "SELECT \(Self.columns) FROM certificates ORDER BY domain, user, sha256",
                "DELETE FROM certificates WHERE domain = ?1 AND user = ?2 AND sha256 = ?3",
                "INSERT OR REPLACE INTO token_sequence_floors (\(Self.floorColumns)) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                "SELECT \(Self.floorColumns) FROM token_sequence_floors ORDER BY domain, user",
                "DELETE FROM token_sequence_floors WHERE domain = ?1 AND user = ?2",
            ]
            for sql in sqls {
                var stmt: OpaquePointer?
                let rc = sqlite3_prepare_v3(db, sql, -1, UInt32(SQLITE_PREPARE_PERSISTENT), &stmt, nil)
                guard rc == SQLITE_OK, let stmt else {
                    let message = String(cString: sqlite3_errmsg(db))
                    for done in prepared { sqlite3_finalize(done) }
                    if RegistryDatabase.isCorruption(rc) { throw .corrupt(path: path, reason: message) }
                    throw .cannotOpen(path: path, reason: "cannot prepare statement: \(message)")
                }
                prepared.append(stmt)
            }
            (begin, commit, rollback, upsert, selectAll) = (prepared[0], prepared[1], prepared[2], prepared[3], prepared[4])
            (deleteCertificate, upsertFloor, selectFloors, deleteFloor) = (prepared[5], prepared[6], prepared[7], prepared[8])
        }

        static let floorColumns = "domain, user, floor, stamp_wall, stamp_logical, origin"

        func finalize() {
            for stmt in [begin, commit, rollback, upsert, selectAll, deleteCertificate, upsertFloor, selectFloors, deleteFloor] {
                sqlite3_finalize(stmt)
            }
        }
    }

    /// `what` is built only for an error: interpolated for every row, it was ~30 ms of writing
    /// a fresh node's 100,000 rows.
    private func runWrite(_ stmt: OpaquePointer, what: @autoclosure () -> String) throws(RegistryDatabaseError) {
        defer {
            sqlite3_reset(stmt)
            sqlite3_clear_bindings(stmt)
        }
        let rc = sqlite3_step(stmt)
        guard rc == SQLITE_DONE else { throw writeError(rc, what: what()) }
    }

    private func execute(_ sql: String, what: String) throws(RegistryDatabaseError) {
        _ = try scalar(sql, what: what)
    }

    /// Runs one ad-hoc statement to completion and returns the first column of its first row.
    private func scalar(_ sql: String, what: String) throws(RegistryDatabaseError) -> String? {
        guard let db else { throw .cannotOpen(path: path, reason: "the database is closed") }
        var stmt: OpaquePointer?
        var rc = sqlite3_prepare_v2(db, sql, -1, &stmt, nil)
        guard rc == SQLITE_OK, let stmt else { throw openError(rc, what: what) }
        defer { sqlite3_finalize(stmt) }
        var first: String?
        var sawRow = false
        while true {
            rc = sqlite3_step(stmt)
            if rc == SQLITE_DONE { return first }
            guard rc == SQLITE_ROW else { throw openError(rc, what: what) }
            if !sawRow {
                sawRow = true
                if let text = sqlite3_column_text(stmt, 0) {
                    first = String(cString: text)
                }
            }
        }
    }

    // MARK: - Binding and decoding

    /// SQLite copies bound values at once (SQLITE_TRANSIENT), so Swift buffers need only live for the call.
    private static var transient: sqlite3_destructor_type { unsafeBitCast(-1, to: sqlite3_destructor_type.self) }

    private func bind(_ record: StoredCertificate, jids: String, to stmt: OpaquePointer) throws(RegistryDatabaseError) {
        sqlite3_reset(stmt)
        sqlite3_clear_bindings(stmt)
        let codes: [Int32] = [
            Self.bindText(stmt, 1, record.domain),
            Self.bindText(stmt, 2, record.user),
            Self.bindBlob(stmt, 3, record.sha256),
            Self.bindText(stmt, 4, record.name),
            Self.bindBlob(stmt, 5, record.der),
            Self.bindInt(stmt, 6, record.notBeforeMillis),
            Self.bindInt(stmt, 7, record.notAfterMillis),
            Self.bindText(stmt, 8, jids),
            Self.bindInt(stmt, 9, record.noCertManagement ? 1 : 0),
            Self.bindInt(stmt, 10, record.addedWall.map { Int64(bitPattern: $0) }),
            Self.bindInt(stmt, 11, record.addedLogical.map { Int64($0) }),
            Self.bindText(stmt, 12, record.addedOrigin),
            Self.bindInt(stmt, 13, record.removalKind.map { Int64($0) }),
            Self.bindInt(stmt, 14, record.removalWall.map { Int64(bitPattern: $0) }),
            Self.bindInt(stmt, 15, record.removalLogical.map { Int64($0) }),
            Self.bindText(stmt, 16, record.removalOrigin),
        ]
        if let bad = codes.firstIndex(where: { $0 != SQLITE_OK }) {
            throw writeError(codes[bad], what: "bind column \(bad + 1) of \(record.user)@\(record.domain)")
        }
    }

    private func bind(_ key: StoredCertificateKey, to stmt: OpaquePointer) throws(RegistryDatabaseError) {
        sqlite3_reset(stmt)
        sqlite3_clear_bindings(stmt)
        let codes = [Self.bindText(stmt, 1, key.domain), Self.bindText(stmt, 2, key.user), Self.bindBlob(stmt, 3, key.sha256)]
        if let bad = codes.firstIndex(where: { $0 != SQLITE_OK }) {
            throw writeError(codes[bad], what: "bind key column \(bad + 1) of \(key.user)@\(key.domain)")
        }
    }

    private func bind(_ floor: StoredTokenSequenceFloor, to stmt: OpaquePointer) throws(RegistryDatabaseError) {
        sqlite3_reset(stmt)
        sqlite3_clear_bindings(stmt)
        let codes = [
            Self.bindText(stmt, 1, floor.domain),
            Self.bindText(stmt, 2, floor.user),
            Self.bindInt(stmt, 3, Int64(bitPattern: floor.floor)),
            Self.bindInt(stmt, 4, Int64(bitPattern: floor.stampWall)),
            Self.bindInt(stmt, 5, Int64(floor.stampLogical)),
            Self.bindText(stmt, 6, floor.origin),
        ]
        if let bad = codes.firstIndex(where: { $0 != SQLITE_OK }) {
            throw writeError(codes[bad], what: "bind floor column \(bad + 1) of \(floor.user)@\(floor.domain)")
        }
    }

    private static func bindText(_ stmt: OpaquePointer, _ index: Int32, _ value: String?) -> Int32 {
        guard var value else { return sqlite3_bind_null(stmt, index) }
        // Explicit length: embedded NULs survive and nothing depends on a terminator.
        return value.withUTF8 { buffer in
            guard let base = buffer.baseAddress, buffer.count > 0 else {
                // A nil pointer would bind NULL; an empty string must stay an empty string.
                return sqlite3_bind_text(stmt, index, "", 0, transient)
            }
            return base.withMemoryRebound(to: CChar.self, capacity: buffer.count) { chars in
                sqlite3_bind_text64(stmt, index, chars, UInt64(buffer.count), transient, UInt8(SQLITE_UTF8))
            }
        }
    }

    private static func bindBlob(_ stmt: OpaquePointer, _ index: Int32, _ value: [UInt8]?) -> Int32 {
        guard let value else { return sqlite3_bind_null(stmt, index) }
        return value.withUnsafeBytes { buffer in
            guard let base = buffer.baseAddress, buffer.count > 0 else {
                // A nil pointer would bind NULL; an empty array must stay an empty blob.
                return sqlite3_bind_zeroblob(stmt, index, 0)
            }
            return sqlite3_bind_blob64(stmt, index, base, UInt64(buffer.count), transient)
        }
    }

    private static func bindInt(_ stmt: OpaquePointer, _ index: Int32, _ value: Int64?) -> Int32 {
        guard let value else { return sqlite3_bind_null(stmt, index) }
        return sqlite3_bind_int64(stmt, index, value)
    }

    /// Strict: a value of the wrong type or range means the file was damaged or edited by hand, and
    /// guessing would silently resurrect or lose a registration.
    private func decodeRow(_ stmt: OpaquePointer) throws(RegistryDatabaseError) -> StoredCertificate {
        let row = RowReader(stmt: stmt)
        let domain = row.text(0), user = row.text(1), sha256 = row.blob(2)
        guard let domain, let user, let sha256 else {
            throw .corrupt(path: path, reason: "a row has no domain, user or sha256")
        }
        func bad(_ column: String) -> RegistryDatabaseError {
            .corrupt(path: path, reason: "column \(column) of \(user)@\(domain) holds an invalid value")
        }
        guard let jidsText = row.text(7), let jids = decodeJIDs(jidsText) else { throw bad("jids") }
        guard let flag = row.int(8), flag == 0 || flag == 1 else { throw bad("no_cert_management") }
        guard let name = row.optionalText(3) else { throw bad("name") }
        guard let der = row.optionalBlob(4) else { throw bad("der") }
        guard let notBefore = row.optionalInt(5) else { throw bad("not_before_ms") }
        guard let notAfter = row.optionalInt(6) else { throw bad("not_after_ms") }
        guard let addedWall = row.optionalInt(9) else { throw bad("added_wall") }
        guard let addedLogical = row.optionalInt(10), Self.fits(addedLogical, UInt32.self) else {
            throw bad("added_logical")
        }
        guard let addedOrigin = row.optionalText(11) else { throw bad("added_origin") }
        guard let removalKind = row.optionalInt(12), Self.fits(removalKind, UInt8.self) else {
            throw bad("removal_kind")
        }
        guard let removalWall = row.optionalInt(13) else { throw bad("removal_wall") }
        guard let removalLogical = row.optionalInt(14), Self.fits(removalLogical, UInt32.self) else {
            throw bad("removal_logical")
        }
        guard let removalOrigin = row.optionalText(15) else { throw bad("removal_origin") }
        return StoredCertificate(
            domain: domain, user: user, sha256: sha256, name: name, der: der,
            notBeforeMillis: notBefore, notAfterMillis: notAfter, jids: jids, noCertManagement: flag == 1,
            addedWall: addedWall.map { UInt64(bitPattern: $0) },
            addedLogical: addedLogical.flatMap { UInt32(exactly: $0) },
            addedOrigin: addedOrigin,
            removalKind: removalKind.flatMap { UInt8(exactly: $0) },
            removalWall: removalWall.map { UInt64(bitPattern: $0) },
            removalLogical: removalLogical.flatMap { UInt32(exactly: $0) },
            removalOrigin: removalOrigin)
    }

    /// Strict like `decodeRow`: a floor read wrongly could un-revoke refresh tokens.
    private func decodeFloorRow(_ stmt: OpaquePointer) throws(RegistryDatabaseError) -> StoredTokenSequenceFloor {
        let row = RowReader(stmt: stmt)
        guard let domain = row.text(0), let user = row.text(1) else {
            throw .corrupt(path: path, reason: "a token floor row has no domain or user")
        }
        func bad(_ column: String) -> RegistryDatabaseError {
            .corrupt(path: path, reason: "column \(column) of the token floor of \(user)@\(domain) holds an invalid value")
        }
        guard let floor = row.int(2) else { throw bad("floor") }
        guard let wall = row.int(3) else { throw bad("stamp_wall") }
        guard let logical = row.int(4), let logical32 = UInt32(exactly: logical) else { throw bad("stamp_logical") }
        guard let origin = row.text(5) else { throw bad("origin") }
        return StoredTokenSequenceFloor(domain: domain, user: user, floor: UInt64(bitPattern: floor),
                                        stampWall: UInt64(bitPattern: wall), stampLogical: logical32, origin: origin)
    }

    private static func fits<T: FixedWidthInteger>(_ value: Int64?, _: T.Type) -> Bool {
        guard let value else { return true }
        return T(exactly: value) != nil
    }

    /// `["a@b","c@d"]`, exactly the bytes `jidEncoder` writes, built by hand when every JID is
    /// printable ASCII without `"` or `\` (then JSON needs no escape): JSONEncoder per row showed in
    /// the profile of a 100,000-record sync. Anything else goes through the encoder.
    private func encodeJIDs(_ jids: [String]) -> String? {
        if let plain = Self.encodePlainJIDs(jids) { return plain }
        guard let data = try? jidEncoder.encode(jids) else { return nil }
        return String(data: data, encoding: .utf8)
    }

    /// The hand-built form of `encodeJIDs`, nil when a JID needs the encoder. Checked and copied
    /// from each JID's contiguous bytes into one string of the exact length: joining and
    /// concatenating (three intermediate strings per row) and stepping through `utf8` were ~65 ms
    /// of a fresh node's registry writer storing 100,000 rows (`perf record`).
    static func encodePlainJIDs(_ jids: [String]) -> String? {
        let quote = UInt8(ascii: "\""), backslash = UInt8(ascii: "\\")
        var length = 2 + max(0, jids.count - 1)
        for jid in jids {
            var jid = jid
            let plain = jid.withUTF8 { bytes in bytes.allSatisfy { $0 >= 0x20 && $0 < 0x7F && $0 != quote && $0 != backslash } }
            guard plain else { return nil }
            length += jid.utf8.count + 2
        }
        return String(unsafeUninitializedCapacity: length) { out in
            var at = 0
            func put(_ byte: UInt8) { out[at] = byte; at += 1 }
            put(UInt8(ascii: "["))
            for (index, jid) in jids.enumerated() {
                if index > 0 { put(UInt8(ascii: ",")) }
                put(quote)
                var jid = jid
                jid.withUTF8 { bytes in
                    _ = UnsafeMutableBufferPointer(rebasing: out[at...]).initialize(fromContentsOf: bytes)
                    at += bytes.count
                }
                put(quote)
            }
            put(UInt8(ascii: "]"))
            return at
        }
    }

    /// The inverse of `encodeJIDs`: the exact shape it writes (no whitespace, no escapes) is read
    /// by hand, anything else (a file edited by hand, escaped characters) by JSONDecoder, which
    /// also rejects what is not a JSON array of strings. JSONDecoder per row was a tenth of
    /// loading 100,000 rows.
    private func decodeJIDs(_ text: String) -> [String]? {
        if let plain = Self.decodePlainJIDs(text) { return plain }
        return try? jidDecoder.decode([String].self, from: Data(text.utf8))
    }

    /// The hand-read form of `decodeJIDs`, nil when the text needs the decoder (or is not a
    /// JSON array of strings at all).
    static func decodePlainJIDs(_ text: String) -> [String]? {
        var text = text
        return text.withUTF8 { bytes -> [String]? in
            let quote = UInt8(ascii: "\""), comma = UInt8(ascii: ","), count = bytes.count
            guard count >= 2, bytes[0] == UInt8(ascii: "["), bytes[count - 1] == UInt8(ascii: "]") else { return nil }
            if count == 2 { return [] }
            var result: [String] = []
            var i = 1
            while true {
                guard i < count - 1, bytes[i] == quote else { return nil }
                let start = i + 1
                var end = start
                while end < count - 1, bytes[end] != quote {
                    // An escape or a raw control character: leave it to the JSON decoder.
                    if bytes[end] == UInt8(ascii: "\\") || bytes[end] < 0x20 { return nil }
                    end += 1
                }
                guard end < count - 1 else { return nil }
                result.append(String(decoding: UnsafeBufferPointer(rebasing: bytes[start..<end]), as: UTF8.self))
                i = end + 1
                if i == count - 1 { return result }
                guard bytes[i] == comma else { return nil }
                i += 1
            }
        }
    }

    // MARK: - Errors

    static func isCorruption(_ rc: Int32) -> Bool {
        let primary = rc & 0xff
        return primary == SQLITE_CORRUPT || primary == SQLITE_NOTADB
    }

    private func message(_ rc: Int32) -> String {
        let text = db.map { String(cString: sqlite3_errmsg($0)) } ?? String(cString: sqlite3_errstr(rc))
        return "\(text) (sqlite code \(rc))"
    }

    private func openError(_ rc: Int32, what: String) -> RegistryDatabaseError {
        if Self.isCorruption(rc) { return .corrupt(path: path, reason: message(rc)) }
        return .cannotOpen(path: path, reason: "\(what): \(message(rc))")
    }

    private func readError(_ rc: Int32, what: String) -> RegistryDatabaseError {
        if Self.isCorruption(rc) { return .corrupt(path: path, reason: message(rc)) }
        return .cannotOpen(path: path, reason: "\(what): \(message(rc))")
    }

    private func writeError(_ rc: Int32, what: String) -> RegistryDatabaseError {
        if Self.isCorruption(rc) { return .corrupt(path: path, reason: message(rc)) }
        return .writeFailed(reason: "\(path): \(what): \(message(rc))")
    }

    private static func errnoString() -> String { String(cString: strerror(errno)) }
}

/// Typed column access: `nil` from the non-optional readers means "missing or wrong type"; the
/// optional readers return `.some(nil)` for SQL NULL and `nil` for a wrong type.
private struct RowReader {
    let stmt: OpaquePointer

    private func type(_ column: Int32) -> Int32 { sqlite3_column_type(stmt, column) }

    func text(_ column: Int32) -> String? {
        guard type(column) == SQLITE_TEXT else { return nil }
        let count = Int(sqlite3_column_bytes(stmt, column))
        guard let base = sqlite3_column_text(stmt, column) else { return count == 0 ? "" : nil }
        return String(decoding: UnsafeBufferPointer(start: base, count: count), as: UTF8.self)
    }

    func blob(_ column: Int32) -> [UInt8]? {
        guard type(column) == SQLITE_BLOB else { return nil }
        let count = Int(sqlite3_column_bytes(stmt, column))
        // A zero-length blob comes back as a NULL pointer.
        guard count > 0 else { return [] }
        guard let base = sqlite3_column_blob(stmt, column) else { return nil }
        return Array(UnsafeRawBufferPointer(start: base, count: count))
    }

    func int(_ column: Int32) -> Int64? {
        guard type(column) == SQLITE_INTEGER else { return nil }
        return sqlite3_column_int64(stmt, column)
    }

    func optionalText(_ column: Int32) -> String?? {
        type(column) == SQLITE_NULL ? .some(nil) : text(column).map { .some($0) }
    }

    func optionalBlob(_ column: Int32) -> [UInt8]?? {
        type(column) == SQLITE_NULL ? .some(nil) : blob(column).map { .some($0) }
    }

    func optionalInt(_ column: Int32) -> Int64?? {
        type(column) == SQLITE_NULL ? .some(nil) : int(column).map { .some($0) }
    }
}

/// `close` is also a method name here, so the libc call needs an unambiguous spelling.
@inline(__always)
private func closeDescriptor(_ fd: Int32) -> Int32 {
    #if canImport(Glibc)
    return Glibc.close(fd)
    #elseif canImport(Musl)
    return Musl.close(fd)
    #else
    return Darwin.close(fd)
    #endif
}
