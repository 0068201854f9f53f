/*
 * tlsload: a small, bounded TLS load generator for bench/run.sh.
 *
 * One thread, epoll, non-blocking sockets, OpenSSL. Every connection is new:
 * TCP connect, full TLS handshake (no session cache, no tickets), so every
 * connection costs the servers a full handshake.
 *
 *   tlsload rate  ADDR PORT SNI CONC SECONDS MAXCONN [ALPN_PAD]
 *       CONC connections in flight; each sends "GET /small" with
 *       "Connection: close", reads to EOF, and is replaced by a new one.
 *       Stops after SECONDS or MAXCONN started connections, whichever first.
 *       Prints one line: ok=N err=N secs=S rate=R ttfb_p50_us=.. ttfb_p99_us=..
 *       (TTFB: from connect() to the first byte of the HTTP response.)
 *   tlsload ttfb  SNI ROUNDS ALPN_PAD ADDR:PORT...
 *       Sequential connections as in "rate" with one client, taking the targets
 *       in turn (round r starts at target r mod T), so that every target meets
 *       the same machine noise. Stops after ROUNDS rounds or 120 s. Prints per
 *       target: target=I ok=N err=N ttfb_p50_us=.. ttfb_p99_us=..
 *   tlsload hold  ADDR PORT SNI COUNT INFLIGHT SECONDS [ALPN_PAD]
 *       Opens COUNT connections (at most INFLIGHT handshakes at once), keeps
 *       each one idle once its handshake completes, prints "held N err=N" when
 *       all are up (or none finished for 10 s), then holds them until stdin
 *       closes or SECONDS pass.
 *
 * ALPN_PAD > 0 adds padding protocol names (plus "http/1.1") to the ALPN
 * extension, so the ClientHello grows by about that many bytes: a hello of
 * about 1.9 KB, two TCP segments, like a browser's post-quantum hello.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum state { CONNECTING, HANDSHAKING, WRITING, READING, IDLE };

struct conn {
    int fd;
    SSL *ssl;
    enum state st;
    double t0, tfirst;
    size_t sent;
    int in_use;
};

static SSL_CTX *ctx;
static struct sockaddr_in dst;
static const char *sni;
static int ep;
static char request[256];
static size_t request_len;
static double *ttfb;
static long ttfb_n, ttfb_cap;
static long ok_count, err_count, started;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void set_alpn(int pad) {
    unsigned char buf[8192];
    size_t len = 0;
    const char *h11 = "http/1.1";
    while (pad > 0 && len + 260 < sizeof buf) {
        int n = pad > 200 ? 200 : pad;
        if (n < 8) n = 8;
        buf[len++] = (unsigned char)n;
        memset(buf + len, 'p', n);
        memcpy(buf + len, "pad-", 4);
        len += n;
        pad -= n + 1;
    }
    buf[len++] = (unsigned char)strlen(h11);
    memcpy(buf + len, h11, strlen(h11));
    len += strlen(h11);
    if (SSL_CTX_set_alpn_protos(ctx, buf, (unsigned)len) != 0) {
        fprintf(stderr, "tlsload: ALPN list rejected\n");
        exit(2);
    }
}

static void arm(struct conn *c, unsigned events) {
    struct epoll_event ev = {.events = events, .data.ptr = c};
    if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) != 0) {
        perror("epoll_ctl mod");
        exit(2);
    }
}

static int open_conn(struct conn *c) {
    memset(c, 0, sizeof *c);
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) return -1;
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->t0 = now();
    c->in_use = 1;
    c->st = CONNECTING;
    started++;
    int r = connect(c->fd, (struct sockaddr *)&dst, sizeof dst);
    if (r != 0 && errno != EINPROGRESS) {
        close(c->fd);
        c->in_use = 0;
        return -1;
    }
    struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
    return 0;
}

static void close_conn(struct conn *c) {
    if (c->ssl) SSL_free(c->ssl);
    c->ssl = NULL;
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->in_use = 0;
}

/* Drive one connection as far as it goes. Returns 1 when it finished well,
 * -1 on error, 0 when it waits (or, in hold mode, sits idle). */
static int step(struct conn *c, int hold) {
    for (;;) {
        switch (c->st) {
        case CONNECTING: {
            int e = 0;
            socklen_t l = sizeof e;
            getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &e, &l);
            if (e == EINPROGRESS) return 0;
            if (e != 0) return -1;
            c->ssl = SSL_new(ctx);
            SSL_set_fd(c->ssl, c->fd);
            SSL_set_tlsext_host_name(c->ssl, sni);
            SSL_set_connect_state(c->ssl);
            c->st = HANDSHAKING;
            break;
        }
        case HANDSHAKING: {
            int r = SSL_do_handshake(c->ssl);
            if (r == 1) {
                if (hold) {
                    c->st = IDLE;
                    arm(c, 0);
                    return 1;
                }
                c->st = WRITING;
                break;
            }
            int e = SSL_get_error(c->ssl, r);
            if (e == SSL_ERROR_WANT_READ) { arm(c, EPOLLIN); return 0; }
            if (e == SSL_ERROR_WANT_WRITE) { arm(c, EPOLLOUT); return 0; }
            return -1;
        }
        case WRITING: {
            int r = SSL_write(c->ssl, request + c->sent, (int)(request_len - c->sent));
            if (r > 0) {
                c->sent += (size_t)r;
                if (c->sent == request_len) c->st = READING;
                break;
            }
            int e = SSL_get_error(c->ssl, r);
            if (e == SSL_ERROR_WANT_READ) { arm(c, EPOLLIN); return 0; }
            if (e == SSL_ERROR_WANT_WRITE) { arm(c, EPOLLOUT); return 0; }
            return -1;
        }
        case READING: {
            char buf[16384];
            int r = SSL_read(c->ssl, buf, sizeof buf);
            if (r > 0) {
                if (c->tfirst == 0) {
                    if (r < 12 || memcmp(buf, "HTTP/1.1 200", 12) != 0) return -1;
                    c->tfirst = now();
                }
                continue;
            }
            int e = SSL_get_error(c->ssl, r);
            if (e == SSL_ERROR_WANT_READ) { arm(c, EPOLLIN); return 0; }
            if (e == SSL_ERROR_WANT_WRITE) { arm(c, EPOLLOUT); return 0; }
            /* EOF (clean or not) after a response is the normal end. */
            if (c->tfirst != 0) return 1;
            return -1;
        }
        case IDLE:
            return 0;
        }
    }
}

static void record_ttfb(double v) {
    if (ttfb_n == ttfb_cap) {
        ttfb_cap = ttfb_cap ? ttfb_cap * 2 : 4096;
        ttfb = realloc(ttfb, ttfb_cap * sizeof *ttfb);
        if (!ttfb) exit(2);
    }
    ttfb[ttfb_n++] = v;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double pct(double p) {
    if (ttfb_n == 0) return 0;
    long i = (long)(p * (ttfb_n - 1) + 0.5);
    return ttfb[i];
}

static void setup(const char *addr, const char *port, const char *name, int pad, long fds) {
    struct rlimit rl = {fds, fds};
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
        getrlimit(RLIMIT_NOFILE, &rl);
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    memset(&dst, 0, sizeof dst);
    dst.sin_family = AF_INET;
    dst.sin_port = htons((unsigned short)atoi(port));
    if (inet_pton(AF_INET, addr, &dst.sin_addr) != 1) {
        fprintf(stderr, "tlsload: bad IPv4 address %s\n", addr);
        exit(2);
    }
    sni = name;
    request_len = (size_t)snprintf(request, sizeof request,
                                   "GET /small HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", name);
    ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    if (pad > 0) set_alpn(pad);
    else {
        static const unsigned char h11[] = "\x08http/1.1";
        SSL_CTX_set_alpn_protos(ctx, h11, 9);
    }
    ep = epoll_create1(EPOLL_CLOEXEC);
}

static int rate(int argc, char **argv) {
    if (argc < 8) return 2;
    int conc = atoi(argv[5]);
    double secs = atof(argv[6]);
    long maxconn = atol(argv[7]);
    int pad = argc > 8 ? atoi(argv[8]) : 0;
    setup(argv[2], argv[3], argv[4], pad, conc + 64);
    struct conn *cs = calloc((size_t)conc, sizeof *cs);
    double start = now(), end = start + secs;
    int active = 0;
    for (int i = 0; i < conc && started < maxconn; i++) {
        if (open_conn(&cs[i]) == 0) active++;
        else err_count++;
    }
    struct epoll_event evs[256];
    while (active > 0) {
        double t = now();
        /* Hard stop a second past the end: whatever hangs is an error. */
        if (t > end + 1.0) {
            for (int i = 0; i < conc; i++)
                if (cs[i].in_use) { close_conn(&cs[i]); err_count++; active--; }
            break;
        }
        int n = epoll_wait(ep, evs, 256, 100);
        for (int k = 0; k < n; k++) {
            struct conn *c = evs[k].data.ptr;
            int r = step(c, 0);
            if (r == 0) continue;
            if (r > 0) { ok_count++; record_ttfb(c->tfirst - c->t0); }
            else err_count++;
            close_conn(c);
            active--;
            if (now() < end && started < maxconn) {
                if (open_conn(c) == 0) active++;
                else err_count++;
            }
        }
    }
    double elapsed = now() - start;
    qsort(ttfb, (size_t)ttfb_n, sizeof *ttfb, cmp);
    printf("ok=%ld err=%ld secs=%.3f rate=%.1f ttfb_p50_us=%.0f ttfb_p99_us=%.0f\n", ok_count, err_count,
           elapsed, ok_count / elapsed, pct(0.50) * 1e6, pct(0.99) * 1e6);
    return 0;
}

static int hold(int argc, char **argv) {
    if (argc < 8) return 2;
    long count = atol(argv[5]);
    long inflight = atol(argv[6]);
    double secs = atof(argv[7]);
    int pad = argc > 8 ? atoi(argv[8]) : 0;
    setup(argv[2], argv[3], argv[4], pad, count + 64);
    struct conn *cs = calloc((size_t)count, sizeof *cs);
    /* Handshakes get SECONDS; so does the holding. No handshake finishing for
     * 10 s (a gateway out of descriptors) also ends the first phase: what is
     * held then is held and measured, and the shortfall is reported. */
    double start = now(), end = start + secs, progress = start;
    long next = 0, pending = 0, held = 0;
    struct epoll_event evs[256];
    int reported = 0;
    fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
    while (now() < end) {
        while (!reported && next < count && pending < inflight) {
            if (open_conn(&cs[next]) == 0) pending++;
            else err_count++;
            next++;
        }
        int stalled = now() - progress > 10;
        if (!reported && ((next == count && pending == 0) || stalled)) {
            printf("held %ld err=%ld pending=%ld secs=%.3f%s\n", held, err_count, pending, now() - start,
                   stalled ? " stalled" : "");
            fflush(stdout);
            reported = 1;
            end = now() + secs;
        }
        if (reported) {
            /* Wait for stdin to close (the script is done measuring). */
            struct pollfd p = {.fd = 0, .events = POLLIN};
            if (poll(&p, 1, 200) > 0) {
                char b[64];
                ssize_t r = read(0, b, sizeof b);
                if (r <= 0 || memchr(b, 'q', (size_t)r)) break;
            }
            continue;
        }
        int n = epoll_wait(ep, evs, 256, 100);
        for (int k = 0; k < n; k++) {
            struct conn *c = evs[k].data.ptr;
            if (c->st == IDLE) continue;
            int r = step(c, 1);
            if (r == 0) continue;
            pending--;
            progress = now();
            if (r > 0) held++;
            else { err_count++; close_conn(c); }
        }
    }
    if (!reported) printf("held %ld err=%ld pending=%ld secs=%.3f timeout\n", held, err_count, pending, now() - start);
    return 0;
}

static int ttfb_mode(int argc, char **argv) {
    if (argc < 6) return 2;
    long rounds = atol(argv[3]);
    int pad = atoi(argv[4]);
    int nt = argc - 5;
    struct sockaddr_in *addrs = calloc((size_t)nt, sizeof *addrs);
    double **samples = calloc((size_t)nt, sizeof *samples);
    long *ns = calloc((size_t)nt, sizeof *ns), *errs = calloc((size_t)nt, sizeof *errs);
    for (int t = 0; t < nt; t++) {
        char host[64];
        const char *colon = strrchr(argv[5 + t], ':');
        if (!colon || colon - argv[5 + t] >= (long)sizeof host) return 2;
        memcpy(host, argv[5 + t], (size_t)(colon - argv[5 + t]));
        host[colon - argv[5 + t]] = 0;
        setup(host, colon + 1, argv[2], pad, 256);
        addrs[t] = dst;
        samples[t] = calloc((size_t)rounds, sizeof(double));
    }
    struct conn c;
    struct epoll_event ev;
    double end = now() + 120;
    for (long r = 0; r < rounds && now() < end; r++) {
        for (int k = 0; k < nt; k++) {
            int t = (int)((r + k) % nt);
            dst = addrs[t];
            if (open_conn(&c) != 0) { errs[t]++; continue; }
            int res = 0;
            double limit = now() + 5;
            while (res == 0 && now() < limit) {
                if (epoll_wait(ep, &ev, 1, 100) > 0) res = step(&c, 0);
            }
            if (res > 0) samples[t][ns[t]++] = c.tfirst - c.t0;
            else errs[t]++;
            close_conn(&c);
        }
    }
    for (int t = 0; t < nt; t++) {
        ttfb = samples[t];
        ttfb_n = ns[t];
        qsort(ttfb, (size_t)ttfb_n, sizeof *ttfb, cmp);
        printf("target=%d ok=%ld err=%ld ttfb_p50_us=%.0f ttfb_p99_us=%.0f\n", t, ns[t], errs[t], pct(0.50) * 1e6,
               pct(0.99) * 1e6);
    }
    return 0;
}

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN);
    if (argc > 1 && strcmp(argv[1], "rate") == 0) return rate(argc, argv);
    if (argc > 1 && strcmp(argv[1], "hold") == 0) return hold(argc, argv);
    if (argc > 1 && strcmp(argv[1], "ttfb") == 0) return ttfb_mode(argc, argv);
    fprintf(stderr,
            "usage: tlsload rate ADDR PORT SNI CONC SECONDS MAXCONN [ALPN_PAD]\n"
            "       tlsload ttfb SNI ROUNDS ALPN_PAD ADDR:PORT...\n"
            "       tlsload hold ADDR PORT SNI COUNT INFLIGHT SECONDS [ALPN_PAD]\n");
    return 2;
}
