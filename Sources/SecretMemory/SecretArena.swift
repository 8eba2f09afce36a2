import CSodium
import CSystemShims
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Errors of the secret-memory layer. Messages never contain secret bytes.
public enum SecretMemoryError: Error, CustomStringConvertible, Equatable {
    case sodiumInitFailed
    case outOfMemory(requestedBytes: Int)
    case invalidSize(Int)

    public var description: String {
        switch self {
        case .sodiumInitFailed:
            return "libsodium failed to initialise (sodium_init); check that libsodium is installed and /dev/urandom is readable"
        case .outOfMemory(let bytes):
            return "cannot allocate \(bytes) bytes of protected memory (sodium_malloc failed); raise the memory limits of the service"
        case .invalidSize(let size):
            return "invalid secret size \(size); sizes must be between 1 and \(SecretArena.maxSecretSize) bytes"
        }
    }
}

/// What the arena managed to lock, so operators (and `/v1/health`) can see whether
/// secrets might be swapped out.
public struct SecretArenaStatistics: Sendable, Equatable {
    /// Bytes of chunk memory reserved (locked or not).
    public var reservedBytes: Int
    /// Bytes of chunk memory that `mlock` accepted.
    public var lockedBytes: Int
    /// Chunks whose `mlock` failed (typically `RLIMIT_MEMLOCK` too low).
    public var lockFailures: Int
    /// Secrets currently alive.
    public var liveSecrets: Int
    /// Bytes handed out to live secrets (rounded up to their size class).
    public var liveBytes: Int
}

/// Sub-allocates secrets from a few large libsodium allocations.
///
/// One `sodium_malloc` per secret would cost two guard pages and a separate `mlock`ed page
/// for every 2 KiB key, so a few thousand keys would exhaust a normal `RLIMIT_MEMLOCK`
/// (8 MiB) on page overhead alone. Instead the arena takes chunks (default 256 KiB) from
/// `sodium_malloc` — guard pages around each chunk, `MADV_DONTDUMP`, locked — and hands out
/// power-of-two slots from them. A released slot is zeroed at once and reused for the next
/// secret of its size class; chunk memory is never returned to the system before exit.
///
/// When `mlock` fails the arena still works (the memory stays guarded, excluded from core
/// dumps and zeroed on release) but counts the failure in `statistics.lockFailures` and
/// calls `onLockFailure` once, so the daemon can warn loudly: secrets could then reach swap.
public final class SecretArena: Sendable {
    public static let maxSecretSize = 1 << 20
    public static let minimumSlotSize = 32

    private struct Chunk {
        let base: UnsafeMutableRawPointer
        let size: Int
        var used: Int
    }

    private struct State {
        var chunks: [Chunk] = []
        /// Free slots per size class (index = log2(slot size)).
        var freeSlots: [[UnsafeMutableRawPointer]] = Array(repeating: [], count: 64)
        var statistics = SecretArenaStatistics(reservedBytes: 0, lockedBytes: 0, lockFailures: 0, liveSecrets: 0, liveBytes: 0)
        var warnedAboutLock = false
    }

    /// Raw pointers are only dereferenced by the slot owner (a `SecretBytes`), and all
    /// bookkeeping goes through this mutex, so the state may cross threads.
    private struct UnsafeState: @unchecked Sendable { var state: State }
    private let state: Mutex<UnsafeState>
    private let chunkSize: Int
    private let onLockFailure: @Sendable (String) -> Void

    /// - Parameters:
    ///   - chunkSize: bytes per `sodium_malloc` chunk; secrets larger than a chunk get a chunk of their own.
    ///   - onLockFailure: called once, with an operator-facing message, the first time `mlock` fails.
    public init(chunkSize: Int = 256 * 1024, onLockFailure: @escaping @Sendable (String) -> Void = { _ in }) throws(SecretMemoryError) {
        try SecretArena.initializeSodium()
        self.chunkSize = max(chunkSize, SecretArena.minimumSlotSize)
        self.onLockFailure = onLockFailure
        self.state = Mutex(UnsafeState(state: State()))
    }

    public static func initializeSodium() throws(SecretMemoryError) {
        if sodium_init() < 0 { throw .sodiumInitFailed }
    }

    public var statistics: SecretArenaStatistics {
        state.withLock { $0.state.statistics }
    }

    static func sizeClass(for count: Int) -> (index: Int, slotSize: Int) {
        var size = minimumSlotSize
        var index = 5
        while size < count { size <<= 1; index += 1 }
        return (index, size)
    }

    /// Returns a zeroed slot able to hold `count` bytes.
    func allocateSlot(count: Int) throws(SecretMemoryError) -> (UnsafeMutableRawPointer, slotSize: Int) {
        guard count > 0, count <= SecretArena.maxSecretSize else { throw .invalidSize(count) }
        let (index, slotSize) = SecretArena.sizeClass(for: count)
        var lockWarning: String?
        let result: Result<UnsafeMutableRawPointer, SecretMemoryError> = state.withLock { box in
            defer {
                if box.state.statistics.lockFailures > 0 && !box.state.warnedAboutLock {
                    box.state.warnedAboutLock = true
                    lockWarning = "mlock of secret memory failed: RAM keys may be written to swap. Raise RLIMIT_MEMLOCK (systemd: LimitMEMLOCK=) to at least \(box.state.statistics.reservedBytes + self.chunkSize) bytes"
                }
            }
            if let slot = box.state.freeSlots[index].popLast() {
                box.state.statistics.liveSecrets += 1
                box.state.statistics.liveBytes += slotSize
                return .success(slot)
            }
            if let last = box.state.chunks.indices.last, box.state.chunks[last].size - box.state.chunks[last].used >= slotSize {
                let slot = box.state.chunks[last].base + box.state.chunks[last].used
                box.state.chunks[last].used += slotSize
                box.state.statistics.liveSecrets += 1
                box.state.statistics.liveBytes += slotSize
                return .success(slot)
            }
            // New chunk. The tail of the previous chunk is cut into free slots so nothing is wasted.
            if let last = box.state.chunks.indices.last {
                var remaining = box.state.chunks[last].size - box.state.chunks[last].used
                var offset = box.state.chunks[last].used
                var size = SecretArena.sizeClass(for: max(remaining, 1)).slotSize
                while remaining >= SecretArena.minimumSlotSize {
                    while size > remaining { size >>= 1 }
                    box.state.freeSlots[SecretArena.sizeClass(for: size).index].append(box.state.chunks[last].base + offset)
                    offset += size
                    remaining -= size
                }
                box.state.chunks[last].used = box.state.chunks[last].size
            }
            let size = max(self.chunkSize, slotSize)
            guard let base = sodium_malloc(size) else { return .failure(.outOfMemory(requestedBytes: size)) }
            sodium_memzero(base, size)
            box.state.statistics.reservedBytes += size
            // sodium_malloc already tries mlock but ignores failure; ask again to learn the outcome.
            if sodium_mlock(base, size) == 0 {
                box.state.statistics.lockedBytes += size
            } else {
                box.state.statistics.lockFailures += 1
            }
            box.state.chunks.append(Chunk(base: base, size: size, used: slotSize))
            box.state.statistics.liveSecrets += 1
            box.state.statistics.liveBytes += slotSize
            return .success(base)
        }
        if let lockWarning { onLockFailure(lockWarning) }
        switch result {
        case .success(let pointer): return (pointer, slotSize)
        case .failure(let error): throw error
        }
    }

    /// Zeroes the slot and makes it available again.
    func releaseSlot(_ pointer: UnsafeMutableRawPointer, slotSize: Int) {
        sodium_memzero(pointer, slotSize)
        let index = SecretArena.sizeClass(for: slotSize).index
        state.withLock { box in
            box.state.freeSlots[index].append(pointer)
            box.state.statistics.liveSecrets -= 1
            box.state.statistics.liveBytes -= slotSize
        }
    }

    deinit {
        state.withLock { box in
            for chunk in box.state.chunks {
                sodium_free(chunk.base) // zeroes and unlocks
            }
            box.state.chunks.removeAll()
        }
    }
}
