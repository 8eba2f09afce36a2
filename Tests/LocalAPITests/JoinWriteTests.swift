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

    func testChunksQueuedWhileTheWriterIsBusyAreStoredTogetherAndAnsweredOnlyOnceStored() throws {
        let state = NodeState(config: try oneNodeConfig(in: directory), arena: try SecretArena())
        let writerLoop = EmbeddedEventLoop()
        let registry = RegistryWriter(database: try RegistryDatabase(directory: directory + "/data"), on: writerLoop)
        let logger = Logger(label: "test")
        let operations = NodeOperations(state: state, registry: registry, events: EventHub(nodeName: "node1", logger: logger),
                                        logger: logger, metrics: NodeMetrics(registry: nil))
        let answered = Mutex<[Int]>([])
        func deliver(_ chunk: Int, _ indexes: [Int]) {
            operations.applyRemote(WireDelta(certificates: indexes.map(record)), from: "node2") { _ in
                answered.withLock { $0.append(chunk) }
            }
        }
        func storedUsers() throws -> Set<String> {
            let rows = registry.perform { try $0.loadAll() }
            writerLoop.run()
            return Set(try rows.wait().map(\.user))
        }

        deliver(1, [1, 2])
        deliver(2, [3])
        deliver(3, [4, 5, 6])
        XCTAssertEqual(state.certificateRecord(record(4).id), record(4), "applied in memory as it arrives")
        XCTAssertEqual(answered.withLock { $0 }, [], "no chunk is answered before its records are stored")

        writerLoop.run()
        XCTAssertEqual(answered.withLock { $0 }, [1, 2, 3], "the writer's next turn stored all three and answered them in order")
        XCTAssertEqual(try storedUsers(), Set((1...6).map { "u\($0)@first.com" }))

        // A chunk after that turn gets a write of its own, and again is answered only after it.
        deliver(4, [7])
        XCTAssertEqual(answered.withLock { $0 }, [1, 2, 3])
        writerLoop.run()
        XCTAssertEqual(answered.withLock { $0 }, [1, 2, 3, 4])
        XCTAssertEqual(try storedUsers().count, 7)

        // More than one transaction's worth queued (`joinWriteRecords`): stored over several
        // turns of the writer, every chunk answered once, in order, and nothing left out.
        let big = NodeOperations.joinWriteRecords * 3 / 4
        for chunk in 5...7 { deliver(chunk, Array((chunk * 10_000)..<(chunk * 10_000 + big))) }
        XCTAssertEqual(answered.withLock { $0 }, [1, 2, 3, 4])
        writerLoop.run()
        XCTAssertEqual(answered.withLock { $0 }, [1, 2, 3, 4, 5, 6, 7])
        XCTAssertEqual(try storedUsers().count, 7 + 3 * big)
        try writerLoop.syncShutdownGracefully()
    }
}
