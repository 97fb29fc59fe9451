/* See inproc.h. The start-up sequence follows src/main.c step by step
 * (the module registrations, then one reactor, its VM, pre_init and init,
 * listeners, spool, enumeration); the fuzzer's thread waits for each step
 * that runs on the reactor. The spool lives in a fresh directory, on tmpfs
 * when /dev/shm exists, so that a message's fsync costs nothing; the
 * directory is removed when the fuzzing process exits. */
#include "support/inproc.h"

#include <arpa/inet.h>
#include <errno.h>
#include <ftw.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/reactor.h"
#include "modules.h"
#include "delivery/deferred.h"
#include "delivery/lua_deliver.h"
#include "delivery/maildir.h"
#include "delivery/smtp_deliver.h"
#include "http/http.h"
#include "http/metrics_http.h"
#include "lua/dns_lua.h"
#include "lua/klua.h"
#include "lua/make_message_lua.h"
#include "lua/services.h"
#include "queue/queue.h"
#include "queue/recovery.h"
#include "smtp/server.h"

static char dir[256];
static char policy_path[300];

struct job {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool done;
    int rc;
    const char *event;
    char err[2048];
};

static void job_finish(struct job *j, int rc)
{
    pthread_mutex_lock(&j->lock);
    j->rc = rc;
    j->done = true;
    pthread_cond_signal(&j->cond);
    pthread_mutex_unlock(&j->lock);
}

static int job_run(void (*fn)(void *), struct job *j)
{
    pthread_mutex_init(&j->lock, NULL);
    pthread_cond_init(&j->cond, NULL);
    j->done = false;
    reactor_post(reactor_get(0), fn, j);
    pthread_mutex_lock(&j->lock);
    while (!j->done)
        pthread_cond_wait(&j->cond, &j->lock);
    pthread_mutex_unlock(&j->lock);
    pthread_mutex_destroy(&j->lock);
    pthread_cond_destroy(&j->cond);
    return j->rc;
}

static void load_vm(void *arg)
{
    struct job *j = arg;
    klua *vm = klua_load(policy_path, 0, j->err, sizeof(j->err));
    if (!vm) {
        job_finish(j, -1);
        return;
    }
    klua_install(vm);
    klua_unref(vm);
    job_finish(j, 0);
}

static void event_done(klua_call *c, int status, void *ud)
{
    struct job *j = ud;
    klua_set_in_init(false);
    if (status != KLUA_OK)
        snprintf(j->err, sizeof(j->err), "%s", klua_call_error(c));
    job_finish(j, status == KLUA_OK ? 0 : -1);
}

static void run_event(void *arg)
{
    struct job *j = arg;
    klua_call *c;
    klua_call_begin(klua_current(), j->event, &c);
    klua_set_in_init(true);
    klua_call_run(c, 0, event_done, j);
}

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof(sa);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &sl) != 0) {
        perror("inproc: free port");
        exit(1);
    }
    close(fd);
    return ntohs(sa.sin_port);
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    remove(path);
    return 0;
}

static void remove_dir(void)
{
    nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* template with {dir}, {smtp_port} and {http_port} replaced */
static char *fill(const char *tmpl, const inproc_ports *p)
{
    char ports[2][16];
    snprintf(ports[0], sizeof(ports[0]), "%d", p->smtp);
    snprintf(ports[1], sizeof(ports[1]), "%d", p->http);
    const char *keys[3] = {"{dir}", "{smtp_port}", "{http_port}"};
    const char *vals[3] = {dir, ports[0], ports[1]};
    size_t cap = strlen(tmpl) * 2 + 4096, o = 0;
    char *out = malloc(cap);
    for (const char *s = tmpl; *s;) {
        int k = -1;
        for (int i = 0; i < 3 && k < 0; i++)
            if (strncmp(s, keys[i], strlen(keys[i])) == 0)
                k = i;
        const char *add = k >= 0 ? vals[k] : s;
        size_t n = k >= 0 ? strlen(vals[k]) : 1;
        if (o + n + 1 > cap) {
            fputs("inproc: policy too long\n", stderr);
            exit(1);
        }
        memcpy(out + o, add, n);
        o += n;
        s += k >= 0 ? strlen(keys[k]) : 1;
    }
    out[o] = 0;
    return out;
}

void inproc_start(const char *policy_template, inproc_ports *out)
{
    signal(SIGPIPE, SIG_IGN);
    struct stat st;
    const char *base = stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode) ? "/dev/shm" : "/tmp";
    snprintf(dir, sizeof(dir), "%s/kumod-fuzz-XXXXXX", base);
    if (!mkdtemp(dir)) {
        perror("inproc: mkdtemp");
        exit(1);
    }
    atexit(remove_dir);
    out->smtp = free_port();
    out->http = free_port();
    snprintf(policy_path, sizeof(policy_path), "%s/policy.lua", dir);
    char *policy = fill(policy_template, out);
    FILE *f = fopen(policy_path, "w");
    if (!f || fputs(policy, f) < 0 || fclose(f) != 0) {
        perror("inproc: writing the policy");
        exit(1);
    }
    free(policy);

    /* the same modules as src/main.c, in the same order */
    kumod_register_modules();
    services_set_validate_only(false);
    if (reactor_pool_init(1) != 0 || reactor_pool_start() != 0) {
        fputs("inproc: cannot start the reactor\n", stderr);
        exit(1);
    }
    static struct job j;
    char err[4096];
    if (job_run(load_vm, &j) != 0) {
        fprintf(stderr, "inproc: policy: %s\n", j.err);
        exit(1);
    }
    const char *events[2] = {"pre_init", "init"};
    for (int i = 0; i < 2; i++) {
        j.event = events[i];
        if (job_run(run_event, &j) != 0) {
            fprintf(stderr, "inproc: %s: %s\n", events[i], j.err);
            exit(1);
        }
    }
    if (smtpsrv_start_listeners(err, sizeof(err)) != 0 ||
        http_start_listeners(err, sizeof(err)) != 0 || services_open_spool(err, sizeof(err)) != 0 ||
        recovery_start() != 0) {
        fprintf(stderr, "inproc: start-up: %s\n", err);
        exit(1);
    }
    /* the listener answers 421 until the (empty) spool is enumerated */
    for (int i = 0; i < 500; i++) {
        inproc_result r;
        inproc_exchange(out->smtp, "QUIT\r\n", 6, true, 5000, &r);
        bool ready = strncmp(r.reply, "220 ", 4) == 0;
        inproc_result_fini(&r);
        if (ready)
            return;
        usleep(10000);
    }
    fputs("inproc: kumod did not greet with 220\n", stderr);
    exit(1);
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void inproc_exchange(int port, const void *data, size_t len, bool half_close, int deadline_ms,
                     inproc_result *out)
{
    memset(out, 0, sizeof(*out));
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (fd < 0 || (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 && errno != EINPROGRESS)) {
        perror("inproc: connect");
        abort();
    }
    size_t cap = 4096;
    out->reply = malloc(cap);
    const char *p = data;
    size_t sent = 0;
    bool shut = false;
    int64_t deadline = now_ms() + deadline_ms;
    for (;;) {
        if (sent == len && half_close && !shut) {
            shutdown(fd, SHUT_WR);
            shut = true;
        }
        struct pollfd pfd = {.fd = fd, .events = POLLIN | (sent < len ? POLLOUT : 0)};
        int64_t left = deadline - now_ms();
        if (left <= 0)
            break;
        int n = poll(&pfd, 1, (int)(left > 100 ? 100 : left));
        if (n < 0 && errno != EINTR) {
            perror("inproc: poll");
            abort();
        }
        if (n <= 0)
            continue;
        if ((pfd.revents & POLLOUT) && sent < len) {
            ssize_t w = send(fd, p + sent, len - sent, MSG_NOSIGNAL);
            if (w > 0)
                sent += (size_t)w;
            else if (w < 0 && errno != EAGAIN && errno != EINTR)
                sent = len; /* the server went away: read what it said */
        }
        if (pfd.revents & (POLLIN | POLLHUP | POLLERR)) {
            if (out->reply_len + 4096 + 1 > cap) {
                cap *= 2;
                out->reply = realloc(out->reply, cap);
            }
            ssize_t r = recv(fd, out->reply + out->reply_len, cap - out->reply_len - 1, 0);
            if (r > 0) {
                out->reply_len += (size_t)r;
            } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
                out->closed_by_server = true;
                break;
            }
        }
    }
    out->reply[out->reply_len] = 0;
    close(fd);
}

void inproc_result_fini(inproc_result *r)
{
    free(r->reply);
    r->reply = NULL;
}

void inproc_fuzzer_flags(int *argc, char ***argv)
{
    for (int i = 1; i < *argc; i++)
        if (strncmp((*argv)[i], "-detect_leaks=", 14) == 0)
            return;
    /* a copy of argv with one more flag after the program name; it lives
     * as long as the process, as libFuzzer expects */
    static char flag[] = "-detect_leaks=0";
    char **nv = calloc((size_t)*argc + 2, sizeof(char *));
    nv[0] = (*argv)[0];
    nv[1] = flag;
    for (int i = 1; i < *argc; i++)
        nv[i + 1] = (*argv)[i];
    *argv = nv;
    (*argc)++;
}

bool inproc_env_flag(const char *name)
{
    const char *e = getenv(name);
    return e && strcmp(e, "1") == 0;
}
