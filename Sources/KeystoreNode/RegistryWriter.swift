import Logging
import NIOCore
import NIOPosix
import RegistryDatabase
import ReplicatedStore
import Synchronization

/// The single writer of the registry: every change to durable registry state (local requests
/// and records from peers alike) runs here, one at a time, in submission order, on a thread of
/// its own so a slow `fsync` never stalls an event loop serving requests or peers.
///
/// Serial execution is also what makes "check the rules, persist, then apply" atomic: no other
/// registry change can slip in between a check and the apply that follows its write.
final class RegistryWriter: Sendable {
    /// The writer's own thread (nil when it runs on a loop someone else owns: tests, fuzzing).
    private let group: MultiThreadedEventLoopGroup?
    private let loop: EventLoop
    /// Confined to `loop`: the SQLite handle is not thread-safe.
    private let database: NIOLoopBoundBox<RegistryDatabase>
    let path: String
    /// Persist failures of records from peers, for health and metrics (read from any thread).
    let failures = Mutex<PersistFailures>(PersistFailures())
    /// Records from peers that could not be written yet (confined to the writer's loop). They
    /// are retried on every later write and by `retryPending`, until one succeeds.
    let pendingPeerRecords: NIOLoopBoundBox<PendingRegistry>
    /// Called, and emptied, once `pendingPeerRecords` is stored (confined to the writer's loop):
    /// what waits for records that were applied before they could be stored (a join's).
    let waitingForPendingRecords: NIOLoopBoundBox<[@Sendable () -> Void]>

    struct PersistFailures: Sendable {
        /// Peer records not stored at the last attempt (they stay unapplied; anti-entropy
        /// delivers them again, so each delivery is a retry).
        var pendingRecords = 0
        var total = 0
        var lastError: String?
        var sinceMillis: UInt64?
    }

    convenience init(database: sending RegistryDatabase) {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        self.init(database: database, loop: group.next(), group: group)
    }

    /// Runs the writer on `loop` (an `EmbeddedEventLoop` makes it deterministic for the fuzzer).
    convenience init(database: sending RegistryDatabase, on loop: EventLoop) {
        self.init(database: database, loop: loop, group: nil)
    }

    private init(database: sending RegistryDatabase, loop: EventLoop, group: MultiThreadedEventLoopGroup?) {
        path = database.path
        self.group = group
        self.loop = loop
        self.database = NIOLoopBoundBox.makeBoxSendingValue(database, eventLoop: loop)
        self.pendingPeerRecords = NIOLoopBoundBox.makeBoxSendingValue(PendingRegistry(), eventLoop: loop)
        self.waitingForPendingRecords = NIOLoopBoundBox.makeBoxSendingValue([], eventLoop: loop)
    }

    /// Runs `body` with the database on the writer thread, after everything submitted before.
    func perform<R: Sendable>(_ body: @escaping @Sendable (RegistryDatabase) throws -> R) -> EventLoopFuture<R> {
        loop.submit { try body(self.database.value) }
    }

    func perform<R: Sendable>(_ body: @escaping @Sendable (RegistryDatabase) throws -> R) async throws -> R {
        try await perform(body).get()
    }

    /// Notes the outcome of persisting records from peers.
    func recordPeerWrite(failedRecords: Int, error: String?) {
        failures.withLock { state in
            if let error {
                state.pendingRecords = failedRecords
                state.total += failedRecords
                state.lastError = error
                if state.sinceMillis == nil { state.sinceMillis = wallClockMillis() }
            } else {
                state = PersistFailures(pendingRecords: 0, total: state.total, lastError: nil, sinceMillis: nil)
            }
        }
    }

    /// Waits for pending writes, closes the database and stops the thread (shutdown).
    func close() async {
        _ = try? await loop.submit { self.database.value.close() }.get()
        try? await group?.shutdownGracefully()
    }
}
