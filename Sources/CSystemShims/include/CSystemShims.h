#ifndef KEYSTORE_CSYSTEMSHIMS_H
#define KEYSTORE_CSYSTEMSHIMS_H
#include <sys/types.h>

/// prctl(PR_SET_DUMPABLE, 0): no core dumps, no ptrace attach by same-uid processes.
/// Returns 0 or -1 with errno set.
int ks_disable_dumpable(void);
/// Current value of prctl(PR_GET_DUMPABLE).
int ks_get_dumpable(void);

/// Installs an async-signal-safe handler for each of `signals` that writes the signal number
/// (one byte) to a pipe, and returns the pipe's read end (or -1 with errno set). Works no
/// matter which thread the kernel picks to take the signal.
int ks_signal_pipe(const int *signals, int count);

/// Replaces the Swift runtime's crash handler, which on a fatal signal runs swift-backtrace and prints
/// registers and the memory they point at (possibly key bytes) to stderr, i.e. the journal. For each
/// of SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGTRAP and SIGQUIT (the runtime's list) the new
/// handler writes one fixed line naming the signal, restores the default action and re-raises, so the
/// process still dies by that signal. Call first thing in main, before any secret exists.
/// Returns 0, or -1 with errno set if a handler could not be installed.
int ks_install_fatal_signal_reporter(void);

/// malloc_trim(0): returns every whole free page of every glibc arena to the kernel (the Glibc
/// module does not export <malloc.h>). Returns 1 if memory was released, 0 otherwise.
int ks_malloc_trim(void);

/// Readies the calling thread's glibc arena for `bytes` of allocations to come, and returns how
/// many bytes it grew by. An arena other than the main one (every thread but the first) grows
/// its heap with one mprotect call per page it needs, ~25,000 calls and ~0.1 s of CPU for the
/// ~100 MB a 100,000-certificate start-up load allocates on its two threads, and the heap keeps
/// its readable size when it shrinks. So this allocates `bytes` in blocks below the mmap
/// threshold (one mprotect each) and frees them: the heap shrinks back with one madvise, the
/// pages are not resident, and later growth up to that size needs no system call. Only whole
/// 96 KiB blocks; stops early if malloc fails or after 48 MiB (a thread arena's heap is 64 MiB).
size_t ks_prepare_thread_heap(size_t bytes);

/// Resident memory glibc's heap holds free, in bytes: the process's resident anonymous memory
/// (RssAnon) less its locked memory (VmLck: libsodium's secret pages) and less the heap in use
/// (mallinfo2 uordblks + hblkhd). Includes thread stacks and other anonymous mappings (a few MiB,
/// constant). -1 if /proc/self/status cannot be read.
long long ks_resident_free_heap_bytes(void);
#endif
