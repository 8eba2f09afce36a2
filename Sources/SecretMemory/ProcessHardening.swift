import CSystemShims
#if canImport(Glibc)
import Glibc
#endif

/// Process-wide protections a key daemon applies before it holds any secret (DESIGN.md RAM keys 7):
/// no core dumps (`RLIMIT_CORE` = 0) and not dumpable (`PR_SET_DUMPABLE` 0, which also forbids
/// ptrace attach by other processes of the same uid and makes /proc/<pid>/mem unreadable to them).
public enum ProcessHardening {
    public struct Report: Sendable, Equatable {
        public var coreDumpsDisabled: Bool
        public var nonDumpable: Bool
        /// `RLIMIT_MEMLOCK` soft limit in bytes (`nil` = unlimited).
        public var memlockLimit: UInt64?
    }

    public static func apply() -> Report {
        var zero = rlimit(rlim_cur: 0, rlim_max: 0)
        let coreOK = setrlimit(Int32(RLIMIT_CORE.rawValue), &zero) == 0
        let dumpableOK = ks_disable_dumpable() == 0 && ks_get_dumpable() == 0
        var memlock = rlimit()
        var limit: UInt64? = nil
        if getrlimit(Int32(__RLIMIT_MEMLOCK.rawValue), &memlock) == 0, memlock.rlim_cur != rlim_t.max {
            limit = UInt64(memlock.rlim_cur)
        }
        return Report(coreDumpsDisabled: coreOK, nonDumpable: dumpableOK, memlockLimit: limit)
    }
}
