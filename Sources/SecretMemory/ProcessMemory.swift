import CSystemShims
import Synchronization

/// The process's ordinary heap (not the locked secret arena, which libsodium maps apart).
public enum ProcessMemory {
    /// Hands every whole free page of glibc's heap back to the kernel. `free` returns memory
    /// only from the top of an arena; after a start-up load or a join, the rows read and the peer
    /// frames decoded leave tens of MiB free but resident between the records that stay
    /// (100,000 certificates: ~30 MiB on a restarted node, ~45 MiB on a node that joined).
    /// `malloc_trim` walks every arena and `madvise`s those pages away; it holds each arena's
    /// lock while it does, so call it once after bulk work, never on a request path.
    public static func releaseFreedHeap() {
        _ = ks_malloc_trim()
    }

    /// Readies the calling thread's heap for about `bytes` of allocations it is about to make
    /// (`ks_prepare_thread_heap`): glibc grows a thread's arena one page and one `mprotect` at a
    /// time, which was ~80 ms of a 100,000-certificate restart's indexing thread (`perf record`;
    /// `strace -c`: 22,290 `mprotect` calls, 5,300 with this). Leaves nothing resident; returns
    /// the bytes it readied (at most 48 MiB).
    @discardableResult
    public static func prepareThreadHeap(forBytes bytes: Int) -> Int {
        Int(ks_prepare_thread_heap(bytes > 0 ? size_t(bytes) : 0))
    }

    /// Resident memory the heap holds free (see `ks_resident_free_heap_bytes`), nil when
    /// /proc cannot be read.
    public static var residentFreeHeapBytes: Int? {
        let bytes = ks_resident_free_heap_bytes()
        return bytes < 0 ? nil : Int(bytes)
    }
}

/// Trims the heap again once enough freed memory is resident again.
///
/// Why: bulk work after start-up frees just as much as the start did, and nothing returns it. A
/// node holding 100,000 certificates that answered four fresh members' joins (the whole state
/// encoded and sent each time) was measured at 202 MiB resident with 102 MB of heap in use, and
/// stayed there; `malloc_trim` brought it to 151 MiB. The rule compares the resident free heap
/// with its value right after the last trim (what a trim cannot return: slivers between live
/// blocks, thread stacks), so a node whose residue is large does not trim on every check.
public final class HeapTrimmer: Sendable {
    public let thresholdBytes: Int
    /// Resident free heap right after the last trim.
    private let residue = Mutex<Int?>(nil)

    public init(thresholdBytes: Int = 32 << 20) {
        self.thresholdBytes = thresholdBytes
    }

    /// Trims now (after the start-up load and the join) and takes what is left as the residue.
    public func trim() {
        residue.withLock { residue in
            ProcessMemory.releaseFreedHeap()
            residue = ProcessMemory.residentFreeHeapBytes
        }
    }

    /// Trims when the resident free heap grew by more than `thresholdBytes` since the last trim;
    /// returns the bytes the trim gave back, nil when it did not trim. Reads /proc and walks
    /// every arena: call it from a background thread, every few seconds at most.
    @discardableResult
    public func trimIfWorthIt() -> Int? {
        residue.withLock { residue -> Int? in
            guard let before = ProcessMemory.residentFreeHeapBytes else { return nil }
            guard before - (residue ?? 0) > thresholdBytes else {
                residue = min(residue ?? before, before)
                return nil
            }
            ProcessMemory.releaseFreedHeap()
            let after = ProcessMemory.residentFreeHeapBytes ?? before
            residue = after
            return max(0, before - after)
        }
    }
}
