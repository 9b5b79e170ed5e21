/*
 * echo_client.c - epoll load client for the echo-server benchmark.
 *
 * One job: open N non-blocking TCP connections to HOST:PORT, then have every
 * connection do M request/echo round trips concurrently (send the message,
 * read exactly the same bytes back, repeat), bounded by a time limit, and
 * print one JSON object on stdout:
 *
 *   {"clients":N,"rounds":M,"expected":N*M,"round_trips":done,
 *    "completed_clients":c,"connect_seconds":s,"wall_seconds":s,
 *    "p50_us":x,"p90_us":x,"p99_us":x,"max_us":x,"errors":e,
 *    "timed_out":false,"first_error":"..."}
 *
 * wall_seconds covers the round-trip phase only: it starts once every
 * connection is established (connect time is reported apart, so a server's
 * listen backlog does not distort the throughput figure).  A round trip's
 * latency runs from the send() of the message to the arrival of its last
 * echoed byte.  Echoed bytes are compared with what was sent; a mismatch,
 * extra bytes, EOF or a socket error counts as one error and closes that
 * connection (its remaining round trips are not done).
 *
 * Single-threaded, level-triggered epoll; written in C because a Python
 * client on a 2-core machine saturates before the servers under test do.
 *
 * Build: cc -O2 -o echo_client echo_client.c
 * Usage: echo_client -p PORT [-H 127.0.0.1] [-c CLIENTS] [-n ROUNDS]
 *                    [-t TIME_LIMIT_S] [-m MESSAGE] [-k MAX_CONNECTING]
 * Exit status: 0 when every round trip was done without error, 1 otherwise,
 * 2 on bad arguments or setup failure.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Largest N*M accepted: the latency samples take 8 bytes each (80 MB). */
#define MAX_SAMPLES 10000000ULL
#define MAX_MSG 4096
#define EVENTS 256

enum state { S_IDLE, S_CONNECTING, S_SENDING, S_READING, S_DONE };

struct conn {
    int fd;
    enum state st;
    int rounds_done;
    size_t sent;      /* bytes of the current message sent */
    size_t got;       /* bytes of the current echo received */
    uint64_t t_send;  /* ns, when the current round trip started */
};

static const char *msg = "Hello World\n";
static size_t msg_len;
static uint64_t *samples;
static uint64_t n_samples;
static long errors;
static char first_error[256];

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void note_error(int idx, const char *what, int err) {
    errors++;
    if (!first_error[0])
        snprintf(first_error, sizeof first_error, "client %d: %s%s%s", idx, what,
                 err ? ": " : "", err ? strerror(err) : "");
}

static void close_conn(int ep, struct conn *c) {
    if (c->fd >= 0) {
        epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->fd = -1;
    }
    c->st = S_DONE;
}

static int set_events(int ep, struct conn *c, uint32_t ev, int idx) {
    struct epoll_event e = {.events = ev, .data.u32 = (uint32_t)idx};
    return epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e);
}

/* Start a non-blocking connect; returns 0 or -1 (error already noted). */
static int start_connect(int ep, struct conn *c, int idx, const struct sockaddr_in *sa) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) { note_error(idx, "socket", errno); c->st = S_DONE; return -1; }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->fd = fd;
    if (connect(fd, (const struct sockaddr *)sa, sizeof *sa) < 0 && errno != EINPROGRESS) {
        note_error(idx, "connect", errno);
        close(fd); c->fd = -1; c->st = S_DONE;
        return -1;
    }
    struct epoll_event e = {.events = EPOLLOUT, .data.u32 = (uint32_t)idx};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e) < 0) {
        note_error(idx, "epoll_ctl", errno);
        close(fd); c->fd = -1; c->st = S_DONE;
        return -1;
    }
    c->st = S_CONNECTING;
    return 0;
}

/* Send (the rest of) the current message; waits for EPOLLOUT if the kernel took part. */
static void do_send(int ep, struct conn *c, int idx) {
    if (c->sent == 0) { c->t_send = now_ns(); c->got = 0; }
    while (c->sent < msg_len) {
        ssize_t n = send(c->fd, msg + c->sent, msg_len - c->sent, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                if (c->st != S_SENDING) { c->st = S_SENDING; set_events(ep, c, EPOLLOUT, idx); }
                return;
            }
            note_error(idx, "send", errno);
            close_conn(ep, c);
            return;
        }
        c->sent += (size_t)n;
    }
    if (c->st != S_READING) { c->st = S_READING; set_events(ep, c, EPOLLIN, idx); }
}

/* Read echoed bytes; on a whole echo, record the latency and start the next round. */
static void do_read(int ep, struct conn *c, int idx, int rounds) {
    char buf[MAX_MSG + 64];
    for (int tries = 0; tries < 4; tries++) {
        ssize_t n = recv(c->fd, buf, sizeof buf, 0);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            note_error(idx, "recv", errno);
            close_conn(ep, c);
            return;
        }
        if (n == 0) { note_error(idx, "server closed the connection early", 0); close_conn(ep, c); return; }
        if (c->got + (size_t)n > msg_len) { note_error(idx, "server echoed extra bytes", 0); close_conn(ep, c); return; }
        if (memcmp(buf, msg + c->got, (size_t)n) != 0) { note_error(idx, "echoed bytes differ from sent bytes", 0); close_conn(ep, c); return; }
        c->got += (size_t)n;
        if (c->got == msg_len) break;
    }
    if (c->got < msg_len) return;
    samples[n_samples++] = now_ns() - c->t_send;
    c->rounds_done++;
    if (c->rounds_done >= rounds) { close_conn(ep, c); return; }
    c->sent = 0;
    do_send(ep, c, idx);
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static double pct_us(double p) {
    if (n_samples == 0) return 0.0;
    uint64_t rank = (uint64_t)(p * (double)n_samples + 0.999999);  /* nearest rank */
    if (rank < 1) rank = 1;
    if (rank > n_samples) rank = n_samples;
    return (double)samples[rank - 1] / 1000.0;
}

static void json_string(const char *s) {
    putchar('"');
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') { putchar('\\'); putchar(*s); }
        else if ((unsigned char)*s < 0x20) printf("\\u%04x", (unsigned char)*s);
        else putchar(*s);
    }
    putchar('"');
}

static void usage(void) {
    fprintf(stderr, "usage: echo_client -p PORT [-H HOST] [-c CLIENTS] [-n ROUNDS] "
                    "[-t TIME_LIMIT_S] [-m MESSAGE] [-k MAX_CONNECTING]\n");
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1";
    int port = 0, clients = 500, rounds = 100, max_connecting = 100;
    double time_limit = 60.0;
    int opt;
    while ((opt = getopt(argc, argv, "H:p:c:n:t:m:k:")) != -1) {
        switch (opt) {
        case 'H': host = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 'c': clients = atoi(optarg); break;
        case 'n': rounds = atoi(optarg); break;
        case 't': time_limit = atof(optarg); break;
        case 'm': msg = optarg; break;
        case 'k': max_connecting = atoi(optarg); break;
        default: usage(); return 2;
        }
    }
    msg_len = strlen(msg);
    if (port <= 0 || port > 65535 || clients <= 0 || rounds <= 0 || time_limit <= 0
        || msg_len == 0 || msg_len > MAX_MSG || max_connecting <= 0) {
        usage(); return 2;
    }
    if ((unsigned long long)clients * (unsigned long long)rounds > MAX_SAMPLES) {
        fprintf(stderr, "echo_client: clients*rounds exceeds %llu\n", MAX_SAMPLES);
        return 2;
    }
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        fprintf(stderr, "echo_client: HOST must be an IPv4 address, got %s\n", host);
        return 2;
    }
    /* N client sockets + epoll + stdio: raise the soft fd limit to the hard one if needed. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)clients + 16) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    struct conn *conns = calloc((size_t)clients, sizeof *conns);
    samples = malloc((size_t)clients * (size_t)rounds * sizeof *samples);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (!conns || !samples || ep < 0) { perror("echo_client: setup"); return 2; }
    for (int i = 0; i < clients; i++) { conns[i].fd = -1; conns[i].st = S_IDLE; }

    struct epoll_event evs[EVENTS];
    uint64_t t0 = now_ns();
    uint64_t deadline = t0 + (uint64_t)(time_limit * 1e9);
    int timed_out = 0;

    /* Phase 1: connect all, at most max_connecting handshakes in flight
     * (a burst of N SYNs would overflow a small listen backlog). */
    int next = 0, connecting = 0, connected = 0, failed = 0;
    while (connected + failed < clients) {
        while (next < clients && connecting < max_connecting) {
            if (start_connect(ep, &conns[next], next, &sa) == 0) connecting++; else failed++;
            next++;
        }
        if (connecting == 0) continue;
        uint64_t t = now_ns();
        if (t >= deadline) { timed_out = 1; break; }
        int ms = (int)((deadline - t) / 1000000ULL) + 1;
        int n = epoll_wait(ep, evs, EVENTS, ms);
        if (n < 0) { if (errno == EINTR) continue; perror("echo_client: epoll_wait"); return 2; }
        for (int i = 0; i < n; i++) {
            int idx = (int)evs[i].data.u32;
            struct conn *c = &conns[idx];
            if (c->st != S_CONNECTING) continue;
            int err = 0; socklen_t len = sizeof err;
            getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
            connecting--;
            if (err) { note_error(idx, "connect", err); close_conn(ep, c); failed++; continue; }
            c->st = S_IDLE; /* connected; parked until phase 2 */
            set_events(ep, c, 0, idx);
            connected++;
        }
    }
    uint64_t t1 = now_ns();

    /* Phase 2: every connected client starts its first round trip, then epoll drives the rest. */
    int active = 0;
    for (int i = 0; i < clients && !timed_out; i++) {
        if (conns[i].st != S_IDLE) continue;
        conns[i].sent = 0;
        do_send(ep, &conns[i], i);
    }
    for (int i = 0; i < clients; i++) if (conns[i].st == S_SENDING || conns[i].st == S_READING) active++;
    while (active > 0 && !timed_out) {
        uint64_t t = now_ns();
        if (t >= deadline) { timed_out = 1; break; }
        int ms = (int)((deadline - t) / 1000000ULL) + 1;
        int n = epoll_wait(ep, evs, EVENTS, ms);
        if (n < 0) { if (errno == EINTR) continue; perror("echo_client: epoll_wait"); return 2; }
        for (int i = 0; i < n; i++) {
            int idx = (int)evs[i].data.u32;
            struct conn *c = &conns[idx];
            if (c->st == S_SENDING) do_send(ep, c, idx);
            else if (c->st == S_READING) {
                if ((evs[i].events & (EPOLLERR | EPOLLHUP)) && !(evs[i].events & EPOLLIN)) {
                    int err = 0; socklen_t len = sizeof err;
                    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
                    note_error(idx, "socket error", err); close_conn(ep, c);
                } else do_read(ep, c, idx, rounds);
            }
            if (c->st == S_DONE) active--;
        }
    }
    uint64_t t2 = now_ns();

    int completed = 0;
    for (int i = 0; i < clients; i++) {
        if (conns[i].rounds_done >= rounds) completed++;
        if (conns[i].fd >= 0) close(conns[i].fd);
    }
    qsort(samples, n_samples, sizeof *samples, cmp_u64);
    unsigned long long expected = (unsigned long long)clients * (unsigned long long)rounds;
    printf("{\"clients\":%d,\"rounds\":%d,\"expected\":%llu,\"round_trips\":%llu,"
           "\"completed_clients\":%d,\"connect_seconds\":%.6f,\"wall_seconds\":%.6f,"
           "\"p50_us\":%.3f,\"p90_us\":%.3f,\"p99_us\":%.3f,\"max_us\":%.3f,"
           "\"errors\":%ld,\"timed_out\":%s,\"first_error\":",
           clients, rounds, expected, (unsigned long long)n_samples, completed,
           (double)(t1 - t0) / 1e9, (double)(t2 - t1) / 1e9,
           pct_us(0.50), pct_us(0.90), pct_us(0.99), n_samples ? (double)samples[n_samples - 1] / 1000.0 : 0.0,
           errors, timed_out ? "true" : "false");
    if (first_error[0]) json_string(first_error); else fputs("null", stdout);
    puts("}");
    fflush(stdout);
    return (n_samples == expected && errors == 0 && !timed_out) ? 0 : 1;
}
