#define _GNU_SOURCE
#include "CSystemShims.h"
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/mman.h>

int ks_disable_dumpable(void) { return prctl(PR_SET_DUMPABLE, 0, 0, 0, 0); }
int ks_get_dumpable(void) { return prctl(PR_GET_DUMPABLE, 0, 0, 0, 0); }

int ks_peer_credentials(int fd, pid_t *pid, uid_t *uid, gid_t *gid) {
    struct ucred cred;
    socklen_t len = sizeof(cred);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return -1;
    *pid = cred.pid; *uid = cred.uid; *gid = cred.gid;
    return 0;
}

int ks_madvise_dontdump(void *addr, size_t len) { return madvise(addr, len, MADV_DONTDUMP); }
