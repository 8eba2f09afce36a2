import CSystemShims

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
}
