#define _GNU_SOURCE
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
