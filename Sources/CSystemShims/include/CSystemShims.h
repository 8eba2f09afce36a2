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
#endif
