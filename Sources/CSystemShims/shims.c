#define _GNU_SOURCE
#include <malloc.h>
#include <stdio.h>
#include "CSystemShims.h"
#include <sys/prctl.h>

int ks_disable_dumpable(void) { return prctl(PR_SET_DUMPABLE, 0, 0, 0, 0); }
int ks_get_dumpable(void) { return prctl(PR_GET_DUMPABLE, 0, 0, 0, 0); }

#include <signal.h>
#include <unistd.h>
#include <fcntl.h>
#include <errno.h>

static int ks_signal_write_fd = -1;

static void ks_signal_handler(int signo) {
    int saved = errno;
    unsigned char byte = (unsigned char)signo;
    if (ks_signal_write_fd >= 0) { (void)write(ks_signal_write_fd, &byte, 1); }
    errno = saved;
}

int ks_signal_pipe(const int *signals, int count) {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) return -1;
    fcntl(fds[1], F_SETFL, O_NONBLOCK);
    ks_signal_write_fd = fds[1];
    for (int i = 0; i < count; i++) {
        struct sigaction action;
        action.sa_handler = ks_signal_handler;
        sigemptyset(&action.sa_mask);
        action.sa_flags = SA_RESTART;
        if (sigaction(signals[i], &action, NULL) != 0) return -1;
    }
    return fds[0];
}

// --- Fatal signals: one line, no backtrace, no memory ---

// Fixed text per signal, built before any crash: the handler may only call async-signal-safe
// functions (write, sigaction, raise), so it formats nothing.
#define KS_FATAL(name, what) "keystored: fatal signal " name " (" what "); exiting without a backtrace so that no memory reaches the log\n"
static const struct { int signo; const char *line; } ks_fatal_signals[] = {
    { SIGSEGV, KS_FATAL("SIGSEGV", "invalid memory access") },
    { SIGBUS,  KS_FATAL("SIGBUS", "bus error") },
    { SIGILL,  KS_FATAL("SIGILL", "illegal instruction, e.g. a Swift runtime trap") },
    { SIGFPE,  KS_FATAL("SIGFPE", "arithmetic exception") },
    { SIGABRT, KS_FATAL("SIGABRT", "abort") },
    { SIGTRAP, KS_FATAL("SIGTRAP", "trap, e.g. a Swift runtime trap") },
    { SIGQUIT, KS_FATAL("SIGQUIT", "quit requested") },
};
#define KS_FATAL_COUNT (sizeof(ks_fatal_signals) / sizeof(ks_fatal_signals[0]))

static void ks_fatal_signal_handler(int signo) {
    for (size_t i = 0; i < KS_FATAL_COUNT; i++) {
        if (ks_fatal_signals[i].signo != signo) continue;
        const char *line = ks_fatal_signals[i].line;
        size_t len = 0;
        while (line[len]) len++;
        while (len > 0) {
            ssize_t n = write(2, line, len);
            if (n > 0) { line += n; len -= (size_t)n; }
            else if (n < 0 && errno == EINTR) continue;
            else break;
        }
        break;
    }
    // Die by the same signal: with the default action restored, a fault re-executes the faulting
    // instruction and a sent signal is delivered again as soon as this handler returns (it is
    // blocked while the handler runs).
    struct sigaction dfl;
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    dfl.sa_flags = 0;
    sigaction(signo, &dfl, NULL);
    raise(signo);
}

int ks_install_fatal_signal_reporter(void) {
    for (size_t i = 0; i < KS_FATAL_COUNT; i++) {
        struct sigaction action;
        action.sa_handler = ks_fatal_signal_handler;
        sigemptyset(&action.sa_mask);
        // SA_ONSTACK: on the runtime's alternate signal stack where one exists (the main thread), so
        // a stack overflow there is still reported.
        action.sa_flags = SA_ONSTACK;
        if (sigaction(ks_fatal_signals[i].signo, &action, NULL) != 0) return -1;
    }
    return 0;
}

int ks_malloc_trim(void) {
    return malloc_trim(0);
}

size_t ks_prepare_thread_heap(size_t bytes) {
    enum { block_size = 96 * 1024, max_blocks = (48 * 1024 * 1024) / block_size };
    void *blocks[max_blocks];
    size_t count = bytes / block_size;
    if (count > max_blocks) count = max_blocks;
    size_t held = 0;
    while (held < count && (blocks[held] = malloc(block_size)) != NULL) held++;
    // In allocation order: the blocks coalesce into one free chunk that joins the top with the
    // last free, so the heap is trimmed once.
    for (size_t i = 0; i < held; i++) free(blocks[i]);
    return held * (size_t)block_size;
}

long long ks_resident_free_heap_bytes(void) {
    FILE *status = fopen("/proc/self/status", "re");
    if (status == NULL) return -1;
    char line[256];
    long long anonymous = -1, locked = 0, kilobytes;
    while (fgets(line, sizeof line, status) != NULL) {
        if (sscanf(line, "RssAnon: %lld kB", &kilobytes) == 1) anonymous = kilobytes * 1024;
        else if (sscanf(line, "VmLck: %lld kB", &kilobytes) == 1) locked = kilobytes * 1024;
    }
    fclose(status);
    if (anonymous < 0) return -1;
    struct mallinfo2 info = mallinfo2();
    long long free = anonymous - locked - (long long)(info.uordblks + info.hblkhd);
    return free < 0 ? 0 : free;
}
