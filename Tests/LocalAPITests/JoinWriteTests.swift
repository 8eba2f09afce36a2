import Foundation
@testable import KeystoreNode
import Logging
import NIOEmbedded
import PeerWire
import RegistryDatabase
import ReplicatedStore
import SecretMemory
import Synchronization
import XCTest

/// The join's records are applied as they arrive and stored behind them (`applyWhileJoining`):
/// the chunks that arrive while the writer is busy are stored by its next turn, and each chunk
/// is answered (the join counts it) only once its records are in the database. The writer runs
/// on an `EmbeddedEventLoop` here, so "busy" is "not run yet".
final class JoinWriteTests: XCTestCase {
    private var directory = ""

    override func setUpWithError() throws {
        directory = try scratchNodeDirectory("join-writes")
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(atPath: directory)
    }

    private func record(_ index: Int) -> CertificateRecord {
        CertificateRecord(id: CertificateID(domain: "first.com", user: "u\(index)@first.com", sha256: Array(repeating: UInt8(truncatingIfNeeded: index), count: 32)),
                          content: CertificateContent(name: "phone", der: [0x30, 3, 1, 2, UInt8(truncatingIfNeeded: index)], notBeforeMillis: 0,
                                                      notAfterMillis: 4_102_444_800_000, jids: ["u\(index)@first.com"],
                                                      noCertManagement: false, added: HLCTimestamp(wallMillis: 1_000 + UInt64(index), logical: 0),
                                                      origin: "node2"),
                          removal: nil)
    }

    /// The chunks answered so far, in order.
    private final class AnsweredChunks: Sendable {
        private let chunks = Mutex<[Int]>([])
        func append(_ chunk: Int) { chunks.withLock { $0.append(chunk) } }
        var all: [Int] { chunks.withLock { $0 } }
    }

    /// A joining node whose writer runs only when the test runs `writerLoop`.
    private final class JoiningNode {
        let state: NodeState
        let writerLoop = EmbeddedEventLoop()
        let registry: RegistryWriter
        let operations: NodeOperations
        let answered = AnsweredChunks()

        init(directory: String) throws {
            state = NodeState(config: try oneNodeConfig(in: directory), arena: try SecretArena())
            registry = RegistryWriter(database: try RegistryDatabase(directory: directory + "/data"), on: writerLoop)
            let logger = Logger(label: "test")
            operations = NodeOperations(state: state, registry: registry, events: EventHub(nodeName: "node1", logger: logger),
                                        logger: logger, metrics: NodeMetrics(registry: nil))
        }

        /// Delivers a chunk of the join; `answered` gets its number once the join may count it.
        func deliver(_ chunk: Int, _ records: [CertificateRecord]) {
            operations.applyRemote(WireDelta(certificates: records), from: "node2") { [answered] _ in answered.append(chunk) }
        }

        /// Runs `body` on the writer, after everything queued before it.
        func onWriter<R: Sendable>(_ body: @escaping @Sendable (RegistryDatabase) throws -> R) throws -> R {
            let result = registry.perform(body)
            writerLoop.run()
            return try result.wait()
        }

        func storedUsers() throws -> Set<String> { Set(try onWriter { try $0.loadAll() }.map(\.user)) }
    }

    func testChunksQueuedWhileTheWriterIsBusyAreStoredTogetherAndAnsweredOnlyOnceStored() throws {
        let node = try JoiningNode(directory: directory)
        let (state, writerLoop, answered) = (node.state, node.writerLoop, node.answered)
        func deliver(_ chunk: Int, _ indexes: [Int]) { node.deliver(chunk, indexes.map(record)) }
        func storedUsers() throws -> Set<String> { try node.storedUsers() }

        deliver(1, [1, 2])
        deliver(2, [3])
        deliver(3, [4, 5, 6])
        XCTAssertEqual(state.certificateRecord(record(4).id), record(4), "applied in memory as it arrives")
        XCTAssertEqual(answered.all, [], "no chunk is answered before its records are stored")

        writerLoop.run()
        XCTAssertEqual(answered.all, [1, 2, 3], "the writer's next turn stored all three and answered them in order")
        XCTAssertEqual(try storedUsers(), Set((1...6).map { "u\($0)@first.com" }))

        // A chunk after that turn gets a write of its own, and again is answered only after it.
        deliver(4, [7])
        XCTAssertEqual(answered.all, [1, 2, 3])
        writerLoop.run()
        XCTAssertEqual(answered.all, [1, 2, 3, 4])
        XCTAssertEqual(try storedUsers().count, 7)

        // More than one transaction's worth queued (`joinWriteRecords`): stored over several
        // turns of the writer, every chunk answered once, in order, and nothing left out.
        let big = NodeOperations.joinWriteRecords * 3 / 4
        for chunk in 5...7 { deliver(chunk, Array((chunk * 10_000)..<(chunk * 10_000 + big))) }
        XCTAssertEqual(answered.all, [1, 2, 3, 4])
        writerLoop.run()
        XCTAssertEqual(answered.all, [1, 2, 3, 4, 5, 6, 7])
        XCTAssertEqual(try storedUsers().count, 7 + 3 * big)
        try writerLoop.syncShutdownGracefully()
    }

    /// The join's writes pause SQLite's automatic checkpoints (each page written once before
    /// ready); `checkpointAfterJoin` moves the WAL into the file and turns them back on. A
    /// join write the writer runs after that (the rest of a group commit, when a join ended
    /// with writes still queued) must not pause them again: they would stay off for good.
    func testTheJoinPausesCheckpointsAndTheCheckpointAfterItResumesThemForGood() throws {
        let node = try JoiningNode(directory: directory)
        let walPath = directory + "/data/registry.sqlite3-wal"
        XCTAssertFalse(try node.onWriter { $0.automaticCheckpointsPaused })
        node.deliver(1, [record(1)])
        XCTAssertTrue(try node.onWriter { $0.automaticCheckpointsPaused }, "the join's first write paused them")

        // Two chunks of more than one transaction's worth together: the writer's turn stores
        // the first and queues another turn for the second, behind the checkpoint.
        let big = NodeOperations.joinWriteRecords * 3 / 4
        node.deliver(2, (10_000..<10_000 + big).map(record))
        node.deliver(3, (20_000..<20_000 + big).map(record))
        node.operations.stopApplyingWhileJoining()
        node.operations.checkpointAfterJoin()
        node.writerLoop.run()
        XCTAssertEqual(node.answered.all, [1, 2, 3])
        XCTAssertFalse(try node.onWriter { $0.automaticCheckpointsPaused }, "resumed, and not paused again by the late write")
        XCTAssertEqual(try node.storedUsers().count, 1 + 2 * big)
        let wal = try FileManager.default.attributesOfItem(atPath: walPath)[.size] as? Int
        XCTAssertGreaterThan(wal ?? 0, 0, "the late write went to the WAL after the truncation")
        XCTAssertEqual(try node.onWriter { try $0.checkpointAndResumeAutomaticCheckpoints() }.complete, true)
        try node.writerLoop.syncShutdownGracefully()
    }
}
