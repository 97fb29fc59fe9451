/* latgen: an open-loop SMTP latency generator.
 *
 * What: keeps a pool of ESMTP connections to HOST:PORT open (EHLO done)
 * and starts one transaction per arrival: arrivals are fixed-interval
 * (1/rate) or Poisson (--poisson), scheduled on CLOCK_MONOTONIC
 * independently of the server's answers (open loop). A transaction is
 * MAIL FROM, RCPT TO, DATA, body and dot, each step waiting for its reply
 * as a non-pipelining client does; its latency is the time from writing
 * MAIL FROM to reading the 250 after the dot. An arrival that finds no
 * idle connection waits in a backlog and starts when one frees up; an
 * arrival that starts more than --late-ms after its scheduled time is a
 * late start (counted, with the largest start lag): when that count is
 * not small, the server (or this machine) did not keep up and the
 * percentiles describe an overloaded system. The generator itself does
 * no work per transaction beyond a few syscalls, so on a shared machine
 * its own stalls are far below the latencies it measures.
 *
 * Output: one JSON object on stdout: offered and achieved rate, counts,
 * late starts, p50/p90/p99/p99.9/max/mean of the transaction latency (ms)
 * and the same percentiles measured from the scheduled arrival (queueing
 * in the generator included).
 *
 * Thread: one (epoll + timerfd). Built by bench/run with
 * `cc -O2 -o latgen latgen.c -lm`. Failure: a connection error or an
 * unexpected reply ends that connection (the transaction counts as an
 * error) and a new connection replaces it; exit 2 on bad arguments or
 * when no connection can be made at all. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

enum st { S_CONNECT, S_GREET, S_EHLO, S_IDLE, S_MAIL, S_RCPT, S_DATA, S_DOT, S_DEAD };

typedef struct conn {
    int fd;
    enum st st;
    char in[8192];
    size_t in_len;
    const char *out; /* pending output (body or a command) */
    size_t out_len, out_off;
    char cmd[600];
    int64_t t_sched, t_mail; /* ns */
    unsigned gen;            /* bumped by every (re)connect */
    struct conn *next_idle;
} conn;

static struct {
    const char *host, *sender, *rcpt;
    int port, conns, size;
    double rate, duration, late_ms;
    bool poisson, fifo;
} opt = {"127.0.0.1", "bench@loadgen.bench.test", "rcpt@example.com", 0, 32, 5120, 50, 30,
         1.0, false, false};

static int ep;
static conn *pool;
static conn *idle_head, *idle_tail;
static char *body;
static size_t body_len;
static int64_t *lat, *lat_sched;
static size_t n_lat, n_cap;
static uint64_t n_err, n_late, n_started, n_arrivals, n_reconnects;
static int64_t max_lag;
static int64_t *backlog; /* scheduled times of arrivals waiting for a connection */
static size_t bl_head, bl_tail, bl_cap;
static char err_sample[5][200];
static int n_err_sample;

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void note_err(const char *what)
{
    if (n_err_sample < 5)
        snprintf(err_sample[n_err_sample++], sizeof(err_sample[0]), "%s", what);
}

static void idle_push(conn *c)
{
    c->st = S_IDLE;
    c->next_idle = NULL;
    if (idle_tail)
        idle_tail->next_idle = c;
    else
        idle_head = c;
    idle_tail = c;
}

static conn *idle_pop(void)
{
    conn *c = idle_head;
    if (c) {
        idle_head = c->next_idle;
        if (!idle_head)
            idle_tail = NULL;
    }
    return c;
}

static void ep_mod(conn *c, uint32_t ev)
{
    struct epoll_event e = {.events = ev, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e);
}

static void conn_open(conn *c)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)opt.port)};
    inet_pton(AF_INET, opt.host, &sa.sin_addr);
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    /* replies are awaited one by one: Nagle must not hold a command back */
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c->in_len = 0;
    c->out_len = c->out_off = 0;
    c->st = S_CONNECT;
    c->gen++;
    if (connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 && errno != EINPROGRESS) {
        note_err("connect failed");
        close(c->fd);
        c->fd = -1;
        c->st = S_DEAD;
        return;
    }
    struct epoll_event e = {.events = EPOLLOUT, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &e);
}

static void conn_fail(conn *c, const char *why)
{
    if (c->st >= S_MAIL && c->st <= S_DOT)
        n_err++;
    note_err(why);
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    n_reconnects++;
    conn_open(c);
}

/* writes what is pending; arms EPOLLOUT for a remainder */
static void conn_flush(conn *c)
{
    while (c->out_off < c->out_len) {
        ssize_t w = write(c->fd, c->out + c->out_off, c->out_len - c->out_off);
        if (w < 0) {
            if (errno == EAGAIN) {
                ep_mod(c, EPOLLIN | EPOLLOUT);
                return;
            }
            if (errno == EINTR)
                continue;
            conn_fail(c, "write failed");
            return;
        }
        c->out_off += (size_t)w;
    }
    ep_mod(c, EPOLLIN);
}

static void conn_send(conn *c, const char *p, size_t n)
{
    c->out = p;
    c->out_len = n;
    c->out_off = 0;
    conn_flush(c);
}

static void conn_cmd(conn *c, const char *fmt, const char *arg)
{
    int n = snprintf(c->cmd, sizeof(c->cmd), fmt, arg);
    conn_send(c, c->cmd, (size_t)n);
}

static void start_tx(conn *c, int64_t sched)
{
    int64_t t = now_ns();
    int64_t lag = t - sched;
    if (lag > max_lag)
        max_lag = lag;
    if (lag > (int64_t)(opt.late_ms * 1e6))
        n_late++;
    n_started++;
    c->t_sched = sched;
    c->t_mail = t;
    c->st = S_MAIL;
    conn_cmd(c, "MAIL FROM:<%s>\r\n", opt.sender);
}

static void record(conn *c)
{
    int64_t t = now_ns();
    if (n_lat == n_cap) {
        n_cap = n_cap ? n_cap * 2 : 65536;
        lat = realloc(lat, n_cap * sizeof(*lat));
        lat_sched = realloc(lat_sched, n_cap * sizeof(*lat_sched));
        if (!lat || !lat_sched) {
            perror("realloc");
            exit(2);
        }
    }
    lat[n_lat] = t - c->t_mail;
    lat_sched[n_lat++] = t - c->t_sched;
}

static void backlog_push(int64_t sched)
{
    if (bl_tail - bl_head == bl_cap) {
        size_t ncap = bl_cap ? bl_cap * 2 : 1024;
        int64_t *nb = malloc(ncap * sizeof(*nb));
        if (!nb) {
            perror("malloc");
            exit(2);
        }
        for (size_t i = bl_head; i < bl_tail; i++)
            nb[i - bl_head] = backlog[i % bl_cap];
        free(backlog);
        backlog = nb;
        bl_tail -= bl_head;
        bl_head = 0;
        bl_cap = ncap;
    }
    backlog[bl_tail++ % bl_cap] = sched;
}

/* the connection is free: the oldest waiting arrival, else the idle list */
static void conn_free(conn *c)
{
    if (bl_head < bl_tail)
        start_tx(c, backlog[bl_head++ % bl_cap]);
    else
        idle_push(c);
}

/* one complete reply (last line "NNN " or bare "NNN") */
static void on_reply(conn *c, int code)
{
    switch (c->st) {
    case S_GREET:
        if (code != 220)
            return conn_fail(c, "greeting not 220");
        c->st = S_EHLO;
        return conn_cmd(c, "EHLO %s\r\n", "latgen.bench.test");
    case S_EHLO:
        if (code != 250)
            return conn_fail(c, "EHLO not 250");
        return conn_free(c);
    case S_MAIL:
        if (code != 250)
            return conn_fail(c, "MAIL not 250");
        c->st = S_RCPT;
        return conn_cmd(c, "RCPT TO:<%s>\r\n", opt.rcpt);
    case S_RCPT:
        if (code != 250 && code != 251)
            return conn_fail(c, "RCPT not 250");
        c->st = S_DATA;
        return conn_cmd(c, "DATA\r\n%s", "");
    case S_DATA:
        if (code != 354)
            return conn_fail(c, "DATA not 354");
        c->st = S_DOT;
        return conn_send(c, body, body_len);
    case S_DOT:
        if (code != 250)
            return conn_fail(c, "dot not 250");
        record(c);
        return conn_free(c);
    default:
        return conn_fail(c, "unexpected reply");
    }
}

static void on_readable(conn *c)
{
    for (;;) {
        ssize_t r = read(c->fd, c->in + c->in_len, sizeof(c->in) - c->in_len);
        if (r < 0) {
            if (errno == EAGAIN)
                break;
            if (errno == EINTR)
                continue;
            return conn_fail(c, "read failed");
        }
        if (r == 0)
            return conn_fail(c, "server closed the connection");
        c->in_len += (size_t)r;
        size_t off = 0;
        for (;;) {
            char *nl = memchr(c->in + off, '\n', c->in_len - off);
            if (!nl)
                break;
            char *line = c->in + off;
            size_t len = (size_t)(nl - line) + 1;
            off += len;
            if (len >= 4 && line[3] == '-')
                continue; /* continuation of a multi-line reply */
            int code = (len >= 3) ? atoi(line) : 0;
            unsigned gen = c->gen;
            on_reply(c, code);
            if (c->gen != gen)
                return; /* reconnected: the old input is gone */
        }
        memmove(c->in, c->in + off, c->in_len - off);
        c->in_len -= off;
        if (c->in_len == sizeof(c->in))
            return conn_fail(c, "reply line too long");
    }
}

static void on_event(conn *c, uint32_t ev)
{
    if (c->st == S_CONNECT) {
        int err = 0;
        socklen_t l = sizeof(err);
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
        if (err || (ev & (EPOLLERR | EPOLLHUP))) {
            note_err("connect refused");
            epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
            close(c->fd);
            c->st = S_DEAD;
            c->fd = -1;
            return;
        }
        c->st = S_GREET;
        ep_mod(c, EPOLLIN);
        return;
    }
    if (ev & EPOLLOUT)
        conn_flush(c);
    if (ev & (EPOLLIN | EPOLLERR | EPOLLHUP))
        on_readable(c);
}

static int cmp64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* nearest-rank percentile, in ms */
static double pct(int64_t *v, size_t n, double p)
{
    if (!n)
        return NAN;
    size_t k = (size_t)ceil(p / 100.0 * (double)n);
    if (k < 1)
        k = 1;
    if (k > n)
        k = n;
    return (double)v[k - 1] / 1e6;
}

static void print_dist(const char *prefix, int64_t *v, size_t n)
{
    qsort(v, n, sizeof(*v), cmp64);
    double sum = 0;
    for (size_t i = 0; i < n; i++)
        sum += (double)v[i];
    static const struct {
        const char *name;
        double p;
    } ps[] = {{"p50", 50}, {"p90", 90}, {"p99", 99}, {"p99_9", 99.9}};
    for (size_t i = 0; i < sizeof(ps) / sizeof(ps[0]); i++) {
        double x = pct(v, n, ps[i].p);
        if (isnan(x))
            printf("  \"%s%s_ms\": null,\n", prefix, ps[i].name);
        else
            printf("  \"%s%s_ms\": %.3f,\n", prefix, ps[i].name, x);
    }
    if (n) {
        printf("  \"%smax_ms\": %.3f,\n", prefix, (double)v[n - 1] / 1e6);
        printf("  \"%smean_ms\": %.3f,\n", prefix, sum / (double)n / 1e6);
    } else {
        printf("  \"%smax_ms\": null,\n  \"%smean_ms\": null,\n", prefix, prefix);
    }
}

static void make_body(void)
{
    char head[1024];
    int h = snprintf(head, sizeof(head),
                     "From: <%s>\r\nTo: <%s>\r\nSubject: latency probe\r\n"
                     "Message-ID: <%lld@latgen.bench.test>\r\n\r\n",
                     opt.sender, opt.rcpt, (long long)now_ns());
    size_t lines = (size_t)opt.size / 78 + 1;
    body = malloc((size_t)h + lines * 78 + 8);
    if (!body) {
        perror("malloc");
        exit(2);
    }
    memcpy(body, head, (size_t)h);
    body_len = (size_t)h;
    for (size_t i = 0; i < lines; i++) {
        memset(body + body_len, 'x', 76);
        memcpy(body + body_len + 76, "\r\n", 2);
        body_len += 78;
    }
    memcpy(body + body_len, ".\r\n", 3);
    body_len += 3;
}

static void usage(void)
{
    fprintf(stderr, "usage: latgen --port P [--host H] [--rate R] [--duration S] [--conns N]\n"
                    "              [--size B] [--sender A] [--rcpt A] [--poisson] [--late-ms MS]\n"
                    "              [--fifo]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    static const struct option lo[] = {
        {"host", 1, 0, 'h'},     {"port", 1, 0, 'p'},   {"rate", 1, 0, 'r'},
        {"duration", 1, 0, 'd'}, {"conns", 1, 0, 'c'},  {"size", 1, 0, 's'},
        {"sender", 1, 0, 'f'},   {"rcpt", 1, 0, 't'},   {"poisson", 0, 0, 'P'},
        {"late-ms", 1, 0, 'l'},  {"fifo", 0, 0, 'F'},   {0, 0, 0, 0}};
    int o;
    while ((o = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (o) {
        case 'h': opt.host = optarg; break;
        case 'p': opt.port = atoi(optarg); break;
        case 'r': opt.rate = atof(optarg); break;
        case 'd': opt.duration = atof(optarg); break;
        case 'c': opt.conns = atoi(optarg); break;
        case 's': opt.size = atoi(optarg); break;
        case 'f': opt.sender = optarg; break;
        case 't': opt.rcpt = optarg; break;
        case 'P': opt.poisson = true; break;
        case 'l': opt.late_ms = atof(optarg); break;
        case 'F': opt.fifo = true; break;
        default: usage();
        }
    }
    if (opt.port <= 0 || opt.rate <= 0 || opt.duration <= 0 || opt.conns <= 0 || opt.size < 0)
        usage();
    make_body();
    /* --fifo: on a shared machine the generator's own wake-ups must not
     * wait behind other work, or its stalls count as the server's latency
     * (it sleeps in epoll_wait between a few syscalls per transaction) */
    const char *sched = "SCHED_OTHER";
    if (opt.fifo) {
        struct sched_param sp = {.sched_priority = 1};
        sched = sched_setscheduler(0, SCHED_FIFO, &sp) == 0 ? "SCHED_FIFO 1"
                                                            : "SCHED_OTHER (SCHED_FIFO refused)";
    }
    ep = epoll_create1(EPOLL_CLOEXEC);
    pool = calloc((size_t)opt.conns, sizeof(*pool));
    for (int i = 0; i < opt.conns; i++)
        conn_open(&pool[i]);

    /* wait (up to 10 s) until every connection is idle after EHLO */
    struct epoll_event evs[256];
    int64_t deadline = now_ns() + 10000000000LL;
    for (;;) {
        int idle = 0, dead = 0;
        for (int i = 0; i < opt.conns; i++) {
            idle += pool[i].st == S_IDLE;
            dead += pool[i].st == S_DEAD;
        }
        if (idle + dead == opt.conns || now_ns() > deadline) {
            if (!idle) {
                fprintf(stderr, "latgen: no connection to %s:%d\n", opt.host, opt.port);
                return 2;
            }
            break;
        }
        int n = epoll_wait(ep, evs, 256, 100);
        for (int i = 0; i < n; i++)
            on_event(evs[i].data.ptr, evs[i].events);
    }

    int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    struct epoll_event te = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &te);
    srand48((long)now_ns());
    double interval = 1e9 / opt.rate;
    int64_t t0 = now_ns() + 1000000; /* 1 ms from now */
    int64_t t_end = t0 + (int64_t)(opt.duration * 1e9);
    double next = (double)t0;
    bool arriving = true;
    int64_t drain_deadline = 0;

    for (;;) {
        if (arriving) {
            /* start every arrival that is due */
            int64_t t = now_ns();
            while (next <= (double)t) {
                int64_t sched = (int64_t)next;
                n_arrivals++;
                conn *c = idle_pop();
                if (c)
                    start_tx(c, sched);
                else
                    backlog_push(sched);
                next += opt.poisson ? -log(1.0 - drand48()) * interval : interval;
                if (next >= (double)t_end) {
                    arriving = false;
                    drain_deadline = now_ns() + 60000000000LL;
                    break;
                }
            }
            if (arriving) {
                int64_t at = (int64_t)next;
                struct itimerspec its = {.it_value = {.tv_sec = at / 1000000000LL,
                                                      .tv_nsec = at % 1000000000LL}};
                timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL);
            }
        }
        if (!arriving) {
            bool busy = bl_head < bl_tail;
            for (int i = 0; i < opt.conns && !busy; i++)
                busy = pool[i].st >= S_MAIL && pool[i].st <= S_DOT;
            if (!busy || now_ns() > drain_deadline)
                break;
        }
        int n = epoll_wait(ep, evs, 256, arriving ? -1 : 100);
        for (int i = 0; i < n; i++) {
            if (evs[i].data.ptr == NULL) {
                uint64_t x;
                if (read(tfd, &x, sizeof(x)) < 0 && errno != EAGAIN)
                    perror("timerfd");
                continue;
            }
            on_event(evs[i].data.ptr, evs[i].events);
        }
    }
    double elapsed = (double)(now_ns() - t0) / 1e9;
    for (int i = 0; i < opt.conns; i++) {
        if (pool[i].st == S_IDLE) {
            if (write(pool[i].fd, "QUIT\r\n", 6) < 0) {
                /* closing anyway */
            }
        }
        if (pool[i].fd >= 0)
            close(pool[i].fd);
    }

    printf("{\n  \"generator\": \"bench/latgen.c (open loop, epoll, %s arrivals)\",\n",
           opt.poisson ? "Poisson" : "fixed-interval");
    printf("  \"scheduling\": \"%s\",\n", sched);
    printf("  \"offered_msgs_per_s\": %.3f,\n  \"duration_s\": %.3f,\n  \"conns\": %d,\n",
           opt.rate, opt.duration, opt.conns);
    printf("  \"size\": %d,\n  \"arrivals\": %llu,\n  \"started\": %llu,\n", opt.size,
           (unsigned long long)n_arrivals, (unsigned long long)n_started);
    printf("  \"messages\": %zu,\n  \"errors\": %llu,\n  \"reconnects\": %llu,\n", n_lat,
           (unsigned long long)n_err, (unsigned long long)n_reconnects);
    printf("  \"not_started\": %llu,\n", (unsigned long long)(n_arrivals - n_started));
    printf("  \"late_ms\": %.3f,\n  \"late_starts\": %llu,\n  \"max_start_lag_ms\": %.3f,\n",
           opt.late_ms, (unsigned long long)n_late, (double)max_lag / 1e6);
    printf("  \"achieved_msgs_per_s\": %.3f,\n", elapsed > 0 ? (double)n_lat / elapsed : 0.0);
    print_dist("", lat, n_lat);
    print_dist("sched_", lat_sched, n_lat);
    printf("  \"error_samples\": [");
    for (int i = 0; i < n_err_sample; i++)
        printf("%s\"%s\"", i ? ", " : "", err_sample[i]);
    printf("]\n}\n");
    return 0;
}
