// Closed-loop HTTP/1.1 keep-alive load client for Unix sockets (bench/run.sh get-key).
//
// Why C: the client shares the machine's cores with the server under test, so every cycle it
// burns is taken from the server. One thread, one epoll set, N connections; each connection has
// exactly one request in flight and writes the next one the moment the previous response is
// complete. The request (GET, or POST with a body read once from --body-file and framed by
// Content-Length) is a fixed byte string built once, so a POST costs the client no more than a
// GET; responses are framed by Content-Length only (keystored and nginx never send chunked ones).
//
// Reports one markdown row: req/s, latency p50/p99/p99.9/max, errors, response size, and the
// CPU time the server processes (utime+stime from /proc/PID/stat, summed over --pids) and this
// client spent per measured request over the measured window.
//
// Build: gcc -O2 -o loadgen bench/loadgen.c
// Usage: loadgen --socket PATH --path /v1/... --connections N [--warmup S] [--duration S]
//                [--method GET|POST] [--body-file F] [--pids P1,P2,...] [--label NAME]
//        loadgen --header

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define BUFFER_BYTES (256 * 1024)
#define MAX_PIDS 64

struct connection {
    int fd;
    int done;           // past the measured window (or failed): no further requests
    uint64_t sent_at;   // monotonic ns of the request in flight
    size_t used;        // bytes in buf
    long head_length;   // -1 until the head of the current response is parsed
    long body_length;
    int status;
    char *buf;
};

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *message) {
    fprintf(stderr, "loadgen: %s\n", message);
    exit(2);
}

static void die_errno(const char *what) {
    fprintf(stderr, "loadgen: %s: %s\n", what, strerror(errno));
    exit(2);
}

// utime + stime of a process (all its threads) in seconds, from /proc/PID/stat fields 14 and 15.
static double process_cpu_seconds(int pid) {
    char path[64], text[4096];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    int fd = open(path, O_RDONLY);
    if (fd < 0) return -1;
    ssize_t n = read(fd, text, sizeof text - 1);
    close(fd);
    if (n <= 0) return -1;
    text[n] = 0;
    // The command name (field 2) may contain spaces and parentheses: fields resume after the last ')'.
    char *p = strrchr(text, ')');
    if (!p) return -1;
    // After ") ": field 3 (state), 4, 5, ...; utime is field 14, stime field 15.
    char *save = NULL;
    unsigned long long utime = 0, stime = 0;
    int field = 3;
    for (char *t = strtok_r(p + 2, " ", &save); t && field <= 15; t = strtok_r(NULL, " ", &save), field++) {
        if (field == 14) utime = strtoull(t, NULL, 10);
        if (field == 15) stime = strtoull(t, NULL, 10);
    }
    if (field <= 15) return -1;
    return (double)(utime + stime) / (double)sysconf(_SC_CLK_TCK);
}

static double pids_cpu_seconds(const int *pids, int count) {
    double total = 0;
    for (int i = 0; i < count; i++) {
        double s = process_cpu_seconds(pids[i]);
        if (s < 0) return -1;
        total += s;
    }
    return total;
}

static double own_cpu_seconds(void) {
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    return usage.ru_utime.tv_sec + usage.ru_utime.tv_usec / 1e6 + usage.ru_stime.tv_sec + usage.ru_stime.tv_usec / 1e6;
}

static int compare_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

// Nearest rank: the smallest sample with at least q of all samples at or below it (ms).
static double percentile_ms(const uint64_t *sorted, size_t count, double q) {
    if (count == 0) return 0;
    double rank = q * (double)count;
    size_t index = (size_t)rank;
    if ((double)index < rank) index++;
    if (index > 0) index--;
    if (index >= count) index = count - 1;
    return sorted[index] / 1e6;
}

// Parses the head of the response at the start of c->buf, if complete.
static int parse_head(struct connection *c) {
    if (c->used < 16) return 0;
    char *end = memmem(c->buf, c->used, "\r\n\r\n", 4);
    if (!end) return 0;
    c->head_length = end + 4 - c->buf;
    c->status = 0;
    if (memcmp(c->buf, "HTTP/1.", 7) == 0 && c->buf[8] == ' ') {
        for (int i = 9; i < 12; i++) c->status = c->status * 10 + (c->buf[i] - '0');
    }
    c->body_length = -1;
    const char *line = memchr(c->buf, '\n', (size_t)c->head_length);
    while (line && line + 1 < end) {
        line++;
        if (strncasecmp(line, "content-length:", 15) == 0) {
            c->body_length = strtol(line + 15, NULL, 10);
        }
        line = memchr(line, '\n', (size_t)(end + 2 - line));
    }
    if (c->body_length < 0) { c->status = 0; c->body_length = 0; } // unframed: count as an error
    return 1;
}

static void usage(void) {
    fprintf(stderr, "usage: loadgen --socket PATH --path PATH --connections N [--warmup S] [--duration S]\n"
                    "               [--method GET|POST] [--body-file F] [--pids P,...] [--label NAME]\n"
                    "       loadgen --header\n");
    exit(2);
}

int main(int argc, char **argv) {
    const char *socket_path = NULL, *path = "/v1/domains/first.com/keys/token_secret", *label = "server";
    const char *method = "GET", *body_file = NULL;
    int connections = 32, pid_count = 0, pids[MAX_PIDS];
    double warmup = 1, duration = 3;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--header") == 0) {
            printf("| conns | server | req/s | p50 ms | p99 ms | p99.9 ms | max ms | errors | resp bytes | server CPU µs/req | client CPU µs/req |\n");
            printf("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
            return 0;
        }
        if (i + 1 >= argc) usage();
        const char *v = argv[++i];
        if (strcmp(a, "--socket") == 0) socket_path = v;
        else if (strcmp(a, "--path") == 0) path = v;
        else if (strcmp(a, "--label") == 0) label = v;
        else if (strcmp(a, "--method") == 0) method = v;
        else if (strcmp(a, "--body-file") == 0) body_file = v;
        else if (strcmp(a, "--connections") == 0) connections = atoi(v);
        else if (strcmp(a, "--warmup") == 0) warmup = atof(v);
        else if (strcmp(a, "--duration") == 0) duration = atof(v);
        else if (strcmp(a, "--pids") == 0) {
            char *copy = strdup(v), *save = NULL;
            for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
                if (pid_count == MAX_PIDS) die("too many --pids");
                pids[pid_count++] = atoi(t);
            }
            free(copy);
        } else usage();
    }
    if (!socket_path || connections < 1 || duration <= 0 || warmup < 0) usage();

    if (strcmp(method, "GET") != 0 && strcmp(method, "POST") != 0) die("--method must be GET or POST");
    char body[16384];
    size_t body_length = 0;
    if (body_file) {
        FILE *f = fopen(body_file, "rb");
        if (!f) die_errno(body_file);
        body_length = fread(body, 1, sizeof body, f);
        if (!feof(f)) die("--body-file is larger than 16 KiB");
        fclose(f);
    } else if (strcmp(method, "POST") == 0) {
        die("--method POST needs --body-file");
    }
    char request[1024 + sizeof body];
    int request_length = body_file
        ? snprintf(request, sizeof request, "%s %s HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
                   method, path, body_length)
        : snprintf(request, sizeof request, "%s %s HTTP/1.1\r\nHost: localhost\r\n\r\n", method, path);
    if (request_length <= 0 || request_length + body_length >= sizeof request) die("--path too long");
    memcpy(request + request_length, body, body_length);
    request_length += (int)body_length;

    int ep = epoll_create1(0);
    if (ep < 0) die_errno("epoll_create1");
    struct connection *conns = calloc((size_t)connections, sizeof *conns);
    for (int i = 0; i < connections; i++) {
        struct connection *c = &conns[i];
        c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (c->fd < 0) die_errno("socket");
        struct sockaddr_un address = {.sun_family = AF_UNIX};
        if (strlen(socket_path) >= sizeof address.sun_path) die("socket path too long");
        strcpy(address.sun_path, socket_path);
        if (connect(c->fd, (struct sockaddr *)&address, sizeof address) != 0) die_errno(socket_path);
        fcntl(c->fd, F_SETFL, O_NONBLOCK);
        c->buf = malloc(BUFFER_BYTES);
        c->head_length = -1;
        struct epoll_event event = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &event) != 0) die_errno("epoll_ctl");
    }

    size_t capacity = 1 << 20, count = 0;
    uint64_t *samples = malloc(capacity * sizeof *samples);
    long errors = 0, closed = 0, response_bytes = 0;
    int varying_size = 0;

    uint64_t start = now_ns();
    uint64_t measure_start = start + (uint64_t)(warmup * 1e9), measure_end = measure_start + (uint64_t)(duration * 1e9);
    uint64_t give_up = measure_end + 5000000000ull;
    double server0 = -1, client0 = 0, server1 = -1, client1 = 0;
    int measuring = 0, active = connections;

    for (int i = 0; i < connections; i++) {
        conns[i].sent_at = now_ns();
        if (write(conns[i].fd, request, (size_t)request_length) != request_length) die_errno("write");
    }
    if (warmup == 0) { server0 = pids_cpu_seconds(pids, pid_count); client0 = own_cpu_seconds(); measuring = 1; }

    struct epoll_event events[256];
    while (active > 0) {
        int n = epoll_wait(ep, events, 256, 100);
        uint64_t now = now_ns();
        if (!measuring && now >= measure_start) {
            server0 = pids_cpu_seconds(pids, pid_count); client0 = own_cpu_seconds(); measuring = 1;
        }
        if (measuring == 1 && now >= measure_end) {
            server1 = pids_cpu_seconds(pids, pid_count); client1 = own_cpu_seconds(); measuring = 2;
        }
        if (now >= give_up) { errors += active; break; } // a server that stopped answering
        for (int e = 0; e < n; e++) {
            struct connection *c = &conns[events[e].data.u32];
            if (c->done) continue;
            ssize_t got = read(c->fd, c->buf + c->used, BUFFER_BYTES - c->used);
            if (got <= 0) {
                if (got < 0 && (errno == EAGAIN || errno == EINTR)) continue;
                closed++; c->done = 1; active--; close(c->fd);
                continue;
            }
            c->used += (size_t)got;
            for (;;) {
                if (c->head_length < 0 && !parse_head(c)) break;
                size_t total = (size_t)(c->head_length + c->body_length);
                if (total > BUFFER_BYTES) die("response larger than the client's buffer");
                if (c->used < total) break;
                now = now_ns();
                if (c->sent_at >= measure_start && now <= measure_end) {
                    if (c->status == 200) {
                        if (count == capacity) { capacity *= 2; samples = realloc(samples, capacity * sizeof *samples); }
                        samples[count++] = now - c->sent_at;
                        if (response_bytes && response_bytes != (long)total) varying_size = 1;
                        response_bytes = (long)total;
                    } else {
                        errors++;
                    }
                }
                memmove(c->buf, c->buf + total, c->used - total);
                c->used -= total;
                c->head_length = -1;
                if (now >= measure_end) { c->done = 1; active--; break; }
                c->sent_at = now;
                if (write(c->fd, request, (size_t)request_length) != request_length) {
                    errors++; c->done = 1; active--; break;
                }
            }
        }
    }
    if (measuring < 2) { server1 = pids_cpu_seconds(pids, pid_count); client1 = own_cpu_seconds(); }
    for (int i = 0; i < connections; i++) if (!conns[i].done) close(conns[i].fd);

    qsort(samples, count, sizeof *samples, compare_u64);
    double per_request = count ? 1e6 / (double)count : 0;
    char server_cpu[32] = "-";
    if (pid_count > 0 && server0 >= 0 && server1 >= 0) snprintf(server_cpu, sizeof server_cpu, "%.1f", (server1 - server0) * per_request);
    printf("| %d | %s | %.0f | %.3f | %.3f | %.3f | %.3f | %ld | %ld%s | %s | %.1f |\n",
           connections, label, (double)count / duration,
           percentile_ms(samples, count, 0.50), percentile_ms(samples, count, 0.99), percentile_ms(samples, count, 0.999),
           count ? samples[count - 1] / 1e6 : 0.0, errors + closed, response_bytes, varying_size ? " (varied)" : "",
           server_cpu, (client1 - client0) * per_request);
    fflush(stdout);
    return errors + closed > 0 ? 1 : 0;
}
