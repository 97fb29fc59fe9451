/* Tests of src/smtp/client.c: the reply parser and body encoder as tables,
 * then whole sessions against real peers started as child processes —
 * aiosmtpd (tests/unit/smtp/client_peer.py, which logs every read it does so
 * pipelining is visible, and misbehaves on request), Postfix's smtp-sink, a
 * TCP listener that never speaks, and a closed port. TLS uses a self-signed
 * certificate for localhost/127.0.0.1 made with openssl(1) in a temp dir. */
#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <fcntl.h>
#include <jansson.h>
#include <libgen.h>
#include <limits.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <setjmp.h>
#include <stddef.h>

#include <cmocka.h>

#include "core/diag.h"
#include "core/kerr.h"
#include "smtp/client.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define MS (1000000LL)

/* ---- peers ---------------------------------------------------------------------------------- */

typedef struct peer {
    pid_t pid;
    int port;
    char log[PATH_MAX];
} peer;

static struct {
    char dir[256];
    char cert[PATH_MAX], key[PATH_MAX];
    char script[PATH_MAX];
    peer plain;         /* aiosmtpd: PIPELINING, AUTH PLAIN offered without TLS */
    peer tls;           /* aiosmtpd: STARTTLS, AUTH PLAIN after TLS */
    peer sink;          /* smtp-sink */
    peer sink8;         /* smtp-sink without 8BITMIME */
    SSL_CTX *trusting;  /* trusts the test certificate */
    SSL_CTX *untrusted; /* system store only */
} g;

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t l = sizeof(sin);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sin, sizeof(sin)) != 0 ||
        getsockname(fd, (struct sockaddr *)&sin, &l) != 0)
        return -1;
    close(fd);
    return ntohs(sin.sin_port);
}

static bool can_connect(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET,
                              .sin_port = htons((uint16_t)port),
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    bool ok = fd >= 0 && connect(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0;
    if (fd >= 0)
        close(fd);
    return ok;
}

/* Starts client_peer.py and waits for its "READY <port>" line. */
static int start_py_peer(peer *p, const char *name, const char *const *extra)
{
    snprintf(p->log, sizeof(p->log), "%s/%s.log", g.dir, name);
    int fds[2];
    if (pipe(fds) != 0)
        return -1;
    const char *argv[32];
    int a = 0;
    argv[a++] = "/usr/bin/python3";
    argv[a++] = g.script;
    argv[a++] = "--log";
    argv[a++] = p->log;
    for (int i = 0; extra && extra[i] && a < 30; i++)
        argv[a++] = extra[i];
    argv[a] = NULL;
    p->pid = fork();
    if (p->pid < 0)
        return -1;
    if (p->pid == 0) {
        /* the peer's own complaints (expected TLS failures...) go to a file */
        char errlog[PATH_MAX + 8];
        snprintf(errlog, sizeof(errlog), "%s.stderr", p->log);
        int efd = open(errlog, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (efd >= 0)
            dup2(efd, 2);
        dup2(fds[1], 1);
        close(fds[0]);
        close(fds[1]);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    close(fds[1]);
    char buf[64] = {0};
    size_t n = 0;
    struct pollfd pfd = {.fd = fds[0], .events = POLLIN};
    while (n < sizeof(buf) - 1 && !strchr(buf, '\n')) {
        if (poll(&pfd, 1, 15000) <= 0)
            break;
        ssize_t r = read(fds[0], buf + n, sizeof(buf) - 1 - n);
        if (r <= 0)
            break;
        n += (size_t)r;
    }
    close(fds[0]);
    if (sscanf(buf, "READY %d", &p->port) != 1) {
        fprintf(stderr, "peer %s did not start: '%s'\n", name, buf);
        return -1;
    }
    return 0;
}

static int start_sink(peer *p, const char *extra)
{
    p->port = free_port();
    char hp[64];
    snprintf(hp, sizeof(hp), "127.0.0.1:%d", p->port);
    p->log[0] = 0;
    p->pid = fork();
    if (p->pid < 0)
        return -1;
    if (p->pid == 0) {
        int nul = open("/dev/null", O_RDWR);
        dup2(nul, 1);
        dup2(nul, 2);
        if (getuid() == 0)
            execl("/usr/sbin/smtp-sink", "smtp-sink", "-u", "root", extra ? extra : "-c", hp, "100",
                  (char *)NULL);
        else
            execl("/usr/sbin/smtp-sink", "smtp-sink", extra ? extra : "-c", hp, "100",
                  (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 500; i++) {
        if (can_connect(p->port))
            return 0;
        usleep(10000);
    }
    return -1;
}

static void stop_peer(peer *p)
{
    if (p->pid > 0) {
        kill(p->pid, SIGTERM);
        waitpid(p->pid, NULL, 0);
        p->pid = 0;
    }
}

static int rm_rf(const char *dir)
{
    char cmd[PATH_MAX + 16];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    return system(cmd);
}

static int group_setup(void **state)
{
    (void)state;
    signal(SIGPIPE, SIG_IGN);
    snprintf(g.dir, sizeof(g.dir), "/tmp/smtpcli-test-XXXXXX");
    if (!mkdtemp(g.dir))
        return -1;
    char src[PATH_MAX];
    snprintf(src, sizeof(src), "%s", __FILE__);
    snprintf(g.script, sizeof(g.script), "%s/client_peer.py", dirname(src));
    snprintf(g.cert, sizeof(g.cert), "%s/cert.pem", g.dir);
    snprintf(g.key, sizeof(g.key), "%s/key.pem", g.dir);
    char cmd[4 * PATH_MAX];
    snprintf(cmd, sizeof(cmd),
             "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 "
             "-subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 "
             "-keyout '%s' -out '%s' >/dev/null 2>&1",
             g.key, g.cert);
    if (system(cmd) != 0) {
        fprintf(stderr, "openssl req failed\n");
        return -1;
    }
    char err[256];
    g.trusting = smtpcli_tls_ctx_new(g.cert, err, sizeof(err));
    g.untrusted = smtpcli_tls_ctx_new(NULL, err, sizeof(err));
    if (!g.trusting || !g.untrusted)
        return -1;
    const char *plain_args[] = {"--auth", "user:secret", "--auth-without-tls", NULL};
    const char *tls_args[] = {"--auth",    "user:secret", "--tls-cert", g.cert,
                              "--tls-key", g.key,         NULL};
    if (start_py_peer(&g.plain, "plain", plain_args) != 0 ||
        start_py_peer(&g.tls, "tls", tls_args) != 0 || start_sink(&g.sink, NULL) != 0 ||
        start_sink(&g.sink8, "-8") != 0)
        return -1;
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    stop_peer(&g.plain);
    stop_peer(&g.tls);
    stop_peer(&g.sink);
    stop_peer(&g.sink8);
    SSL_CTX_free(g.trusting);
    SSL_CTX_free(g.untrusted);
    if (g.dir[0])
        rm_rf(g.dir);
    return 0;
}

/* ---- the peer's log ------------------------------------------------------------------------ */

static long log_mark(const peer *p)
{
    struct stat st;
    return stat(p->log, &st) == 0 ? (long)st.st_size : 0;
}

/* Every event logged since mark, as a JSON array (caller decrefs). */
static json_t *log_since(const peer *p, long mark)
{
    json_t *arr = json_array();
    FILE *f = fopen(p->log, "r");
    if (!f)
        return arr;
    fseek(f, mark, SEEK_SET);
    char *line = NULL;
    size_t cap = 0;
    while (getline(&line, &cap, f) > 0) {
        json_t *ev = json_loads(line, 0, NULL);
        if (ev)
            json_array_append_new(arr, ev);
    }
    free(line);
    fclose(f);
    return arr;
}

static int count_events(json_t *evs, const char *type);

/* Waits until the peer has logged n events of type since mark (the peer
 * logs a close only after it noticed ours). */
static json_t *log_wait(const peer *p, long mark, const char *type, int n)
{
    for (int i = 0;; i++) {
        json_t *evs = log_since(p, mark);
        if (count_events(evs, type) >= n || i == 200)
            return evs;
        json_decref(evs);
        usleep(10000);
    }
}

static const char *ev_str(json_t *ev, const char *key)
{
    return json_string_value(json_object_get(ev, key));
}

static json_t *nth_event(json_t *evs, const char *type, int nth)
{
    size_t i;
    json_t *ev;
    json_array_foreach(evs, i, ev)
    {
        if (strcmp(ev_str(ev, "ev"), type) == 0 && nth-- == 0)
            return ev;
    }
    return NULL;
}

static int count_events(json_t *evs, const char *type)
{
    int n = 0;
    size_t i;
    json_t *ev;
    json_array_foreach(evs, i, ev)
    {
        n += strcmp(ev_str(ev, "ev"), type) == 0;
    }
    return n;
}

/* The chunk (one read by the server) that contains needle, or NULL. */
static const char *chunk_with(json_t *evs, const char *needle)
{
    size_t i;
    json_t *ev;
    json_array_foreach(evs, i, ev)
    {
        if (strcmp(ev_str(ev, "ev"), "chunk") == 0 && strstr(ev_str(ev, "data"), needle))
            return ev_str(ev, "data");
    }
    return NULL;
}

/* All chunks concatenated: the client's side of the conversation. */
static char *all_chunks(json_t *evs)
{
    size_t total = 1, i;
    json_t *ev;
    json_array_foreach(evs, i, ev)
    {
        if (strcmp(ev_str(ev, "ev"), "chunk") == 0)
            total += strlen(ev_str(ev, "data"));
    }
    char *s = calloc(1, total);
    json_array_foreach(evs, i, ev)
    {
        if (strcmp(ev_str(ev, "ev"), "chunk") == 0)
            strcat(s, ev_str(ev, "data"));
    }
    return s;
}

/* ---- driving sessions ----------------------------------------------------------------------- */

typedef struct rresp {
    int code, ec, es, ed;
    char content[1024];
    char command[512];
    bool has_command;
} rresp;

typedef struct run {
    struct event_base *base;
    smtpcli *cli;
    bool ready_called;
    int ready_err;
    rresp ready;
    int done_calls;
    bool transport_failed;
    size_t n;
    struct {
        char rcpt[256];
        bool accepted;
        rresp r;
    } rc[8];
    int closed_calls;
    rresp closed;
    bool stop;
} run;

static void copy_resp(rresp *d, const smtpcli_response *s)
{
    d->code = s->code;
    d->ec = s->enh_class;
    d->es = s->enh_subject;
    d->ed = s->enh_detail;
    snprintf(d->content, sizeof(d->content), "%s", s->content ? s->content : "");
    d->has_command = s->command != NULL;
    snprintf(d->command, sizeof(d->command), "%s", s->command ? s->command : "");
}

static void on_ready(smtpcli *cli, int err, const smtpcli_response *resp, void *ud)
{
    run *r = ud;
    r->ready_called = true;
    r->ready_err = err;
    copy_resp(&r->ready, resp);
    r->stop = true;
    event_base_loopbreak(r->base);
}

static void on_done(smtpcli *cli, const smtpcli_result *res, void *ud)
{
    run *r = ud;
    r->done_calls++;
    r->transport_failed = res->transport_failed;
    r->n = res->n_rcpts;
    for (size_t i = 0; i < res->n_rcpts && i < ARRAY_LEN(r->rc); i++) {
        snprintf(r->rc[i].rcpt, sizeof(r->rc[i].rcpt), "%s", res->rcpts[i].recipient);
        r->rc[i].accepted = res->rcpts[i].accepted;
        copy_resp(&r->rc[i].r, &res->rcpts[i].response);
    }
    r->stop = true;
    event_base_loopbreak(r->base);
}

static void on_closed(smtpcli *cli, const smtpcli_response *why, void *ud)
{
    run *r = ud;
    r->closed_calls++;
    copy_resp(&r->closed, why);
    r->stop = true;
    event_base_loopbreak(r->base);
}

static void deadline_cb(evutil_socket_t fd, short what, void *arg)
{
    event_base_loopbreak(arg);
}

/* Runs the loop until a callback sets r->stop or ms pass. */
static void run_loop(run *r, int ms)
{
    r->stop = false;
    struct event *dl = evtimer_new(r->base, deadline_cb, r->base);
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(dl, &tv);
    while (!r->stop) {
        event_base_dispatch(r->base);
        if (!evtimer_pending(dl, NULL))
            break;
    }
    event_free(dl);
}

static void params_for_tests(smtpcli_params *p)
{
    smtpcli_params_init(p);
    p->ehlo_domain = "client.test";
    p->enable_tls = SMTPCLI_TLS_DISABLED;
    p->timeouts.idle_ns = 3000 * MS;
    p->tls_ctx = g.trusting;
}

static struct sockaddr_in loopback(int port)
{
    struct sockaddr_in sin = {.sin_family = AF_INET,
                              .sin_port = htons((uint16_t)port),
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    return sin;
}

static void run_init(run *r)
{
    memset(r, 0, sizeof(*r));
    r->base = event_base_new();
    assert_non_null(r->base);
}

/* Connects and waits for on_ready; returns its err. */
static int run_connect(run *r, int port, const smtpcli_params *p)
{
    struct sockaddr_in sin = loopback(port);
    r->cli = smtpcli_connect(r->base, (struct sockaddr *)&sin, sizeof(sin), p, on_ready, r);
    assert_non_null(r->cli);
    smtpcli_set_closed_cb(r->cli, on_closed, r);
    run_loop(r, 10000);
    assert_true(r->ready_called);
    return r->ready_err;
}

static void run_send(run *r, const char *sender, const char *const *rcpts, size_t n,
                     const char *data)
{
    int before = r->done_calls;
    assert_int_equal(smtpcli_send(r->cli, sender, rcpts, n, data, strlen(data), on_done, r), 0);
    run_loop(r, 10000);
    assert_int_equal(r->done_calls, before + 1);
    assert_int_equal(r->n, n);
}

/* Releases the session and runs the loop until everything is freed. */
static void run_fini(run *r)
{
    if (r->cli)
        smtpcli_quit(r->cli);
    r->cli = NULL;
    for (int i = 0; i < 500; i++) {
        if (event_base_get_num_events(r->base, EVENT_BASE_COUNT_ADDED | EVENT_BASE_COUNT_ACTIVE) ==
            0)
            break;
        event_base_loop(r->base, EVLOOP_ONCE);
    }
    assert_int_equal(
        event_base_get_num_events(r->base, EVENT_BASE_COUNT_ADDED | EVENT_BASE_COUNT_ACTIVE), 0);
    event_base_free(r->base);
}

static const char *const MSG = "Subject: test\r\n\r\nHello there.\r\n";

/* ---- pure pieces --------------------------------------------------------------------------- */

static void test_parse_reply(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        int rc;
        int code, ec, es, ed;
        const char *text;
        size_t used; /* 0: the whole input */
    } cases[] = {
        {"250 ok\r\n", SMTPCLI_PARSE_OK, 250, 0, 0, 0, "ok", 0},
        {"250 2.1.0 sender ok\r\n", SMTPCLI_PARSE_OK, 250, 2, 1, 0, "sender ok", 0},
        {"550 5.1.1 <a@b>: no such user\r\nEXTRA", SMTPCLI_PARSE_OK, 550, 5, 1, 1,
         "<a@b>: no such user", 31},
        {"250-mx.test Hello\r\n250-PIPELINING\r\n250 SIZE 1000\r\n", SMTPCLI_PARSE_OK, 250, 0, 0, 0,
         "mx.test Hello\nPIPELINING\nSIZE 1000", 0},
        {"451-4.3.0 first\r\n451-4.3.0 second\r\n451 third\r\n", SMTPCLI_PARSE_OK, 451, 4, 3, 0,
         "first\nsecond\nthird", 0},
        {"220\r\n", SMTPCLI_PARSE_OK, 220, 0, 0, 0, "", 0},
        {"220 \r\n", SMTPCLI_PARSE_OK, 220, 0, 0, 0, "", 0},
        {"250 2.0.0\r\n", SMTPCLI_PARSE_OK, 250, 0, 0, 0, "2.0.0", 0}, /* KumoMTA: needs text */
        {"250 3.0.0 x\r\n", SMTPCLI_PARSE_OK, 250, 0, 0, 0, "3.0.0 x", 0},
        {"250 2.0.0.1 x\r\n", SMTPCLI_PARSE_OK, 250, 0, 0, 0, "2.0.0.1 x", 0},
        {"250 ok\n", SMTPCLI_PARSE_OK, 250, 0, 0, 0, "ok", 0},
        {"250-first\r\n250 second", SMTPCLI_PARSE_AGAIN, 0, 0, 0, 0, NULL, 0},
        {"25", SMTPCLI_PARSE_AGAIN, 0, 0, 0, 0, NULL, 0},
        {"", SMTPCLI_PARSE_AGAIN, 0, 0, 0, 0, NULL, 0},
        {"250-first\r\n251 second\r\n", SMTPCLI_PARSE_INVALID, 0, 0, 0, 0, NULL, 0},
        {"hello\r\n", SMTPCLI_PARSE_INVALID, 0, 0, 0, 0, NULL, 0},
        {"250x\r\n", SMTPCLI_PARSE_INVALID, 0, 0, 0, 0, NULL, 0},
        {"650 no\r\n", SMTPCLI_PARSE_INVALID, 0, 0, 0, 0, NULL, 0},
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        smtpcli_reply r;
        size_t used = 0;
        int rc = smtpcli_parse_reply(cases[i].in, strlen(cases[i].in), &used, &r);
        if (rc != cases[i].rc)
            fail_msg("case %zu (%s): rc %d, want %d", i, cases[i].in, rc, cases[i].rc);
        if (rc != SMTPCLI_PARSE_OK)
            continue;
        assert_int_equal(r.code, cases[i].code);
        assert_int_equal(r.enh_class, cases[i].ec);
        assert_int_equal(r.enh_subject, cases[i].es);
        assert_int_equal(r.enh_detail, cases[i].ed);
        assert_string_equal(r.text, cases[i].text);
        assert_int_equal(used, cases[i].used ? cases[i].used : strlen(cases[i].in));
    }

    /* a line longer than KumoMTA's 4096 limit */
    size_t big = SMTPCLI_LINE_MAX + 100;
    char *s = malloc(big + 3);
    memset(s, 'x', big);
    memcpy(s, "250 ", 4);
    smtpcli_reply r;
    size_t used;
    assert_int_equal(smtpcli_parse_reply(s, big, &used, &r), SMTPCLI_PARSE_INVALID);
    memcpy(s + big, "\r\n", 3);
    assert_int_equal(smtpcli_parse_reply(s, big + 2, &used, &r), SMTPCLI_PARSE_INVALID);
    free(s);

    /* text beyond SMTPCLI_REPLY_MAX is dropped, the reply still parses */
    struct evbuffer *eb = evbuffer_new();
    for (int i = 0; i < 300; i++)
        evbuffer_add_printf(eb, "250-%040d\r\n", i);
    evbuffer_add_printf(eb, "250 end\r\n");
    size_t n = evbuffer_get_length(eb);
    const char *p = (const char *)evbuffer_pullup(eb, -1);
    assert_int_equal(smtpcli_parse_reply(p, n, &used, &r), SMTPCLI_PARSE_OK);
    assert_int_equal(used, n);
    assert_int_equal(r.n_lines, 301);
    assert_int_equal(r.text_len, SMTPCLI_REPLY_MAX - 1);
    evbuffer_free(eb);
}

static void test_encode_body(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        const char *out;
        bool eightbit;
    } cases[] = {
        {"", ".\r\n", false},
        {"a", "a\r\n.\r\n", false},
        {"a\r\n", "a\r\n.\r\n", false},
        {"a\nb\n", "a\r\nb\r\n.\r\n", false},
        {"a\rb\r", "a\r\nb\r\n.\r\n", false},
        {".", "..\r\n.\r\n", false},
        {".\r\n", "..\r\n.\r\n", false},
        {"x\r\n.\r\ny", "x\r\n..\r\ny\r\n.\r\n", false},
        {"..a\n.b\r\n...\n", "...a\r\n..b\r\n....\r\n.\r\n", false},
        {"a.b\r\n .c\r\n", "a.b\r\n .c\r\n.\r\n", false},
        {"\r\n\r\n", "\r\n\r\n.\r\n", false},
        {"\n.\n", "\r\n..\r\n.\r\n", false},
        {"caf\xc3\xa9\r\n", "caf\xc3\xa9\r\n.\r\n", true},
        {"a\r\r\nb", "a\r\n\r\nb\r\n.\r\n", false},
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        struct evbuffer *eb = evbuffer_new();
        bool hi = !cases[i].eightbit;
        assert_int_equal(smtpcli_encode_body(eb, cases[i].in, strlen(cases[i].in), &hi), 0);
        size_t n = evbuffer_get_length(eb);
        char *got = calloc(1, n + 1);
        evbuffer_remove(eb, got, n);
        if (strcmp(got, cases[i].out) != 0)
            fail_msg("case %zu: got '%s'", i, got);
        assert_int_equal(hi, cases[i].eightbit);
        free(got);
        evbuffer_free(eb);
    }
}

static void test_names_and_durations(void **state)
{
    (void)state;
    static const char *const modes[] = {"Opportunistic", "OpportunisticInsecure", "Required",
                                        "RequiredInsecure", "Disabled"};
    for (size_t i = 0; i < ARRAY_LEN(modes); i++) {
        smtpcli_tls_mode m;
        assert_int_equal(smtpcli_tls_mode_parse(modes[i], &m), 0);
        assert_int_equal(m, (smtpcli_tls_mode)i);
        assert_string_equal(smtpcli_tls_mode_name(m), modes[i]);
    }
    smtpcli_tls_mode m;
    assert_int_equal(smtpcli_tls_mode_parse("required", &m), KERR_PARSE);
    assert_int_equal(smtpcli_tls_mode_parse(NULL, &m), KERR_PARSE);

    static const struct {
        int64_t ns;
        const char *s;
    } d[] = {{60000 * MS, "60s"}, {1500 * MS, "1.5s"},
             {300 * MS, "300ms"}, {1, "1ns"},
             {0, "0ns"},          {10000, "10\xc2\xb5s"},
             {1500000, "1.5ms"},  {1000000001, "1.000000001s"}};
    for (size_t i = 0; i < ARRAY_LEN(d); i++) {
        char buf[32];
        smtpcli_format_duration(d[i].ns, buf, sizeof(buf));
        assert_string_equal(buf, d[i].s);
    }

    smtpcli_params p;
    smtpcli_params_init(&p);
    assert_int_equal(p.enable_tls, SMTPCLI_TLS_OPPORTUNISTIC);
    assert_true(p.enable_pipelining && p.enable_rset);
    assert_int_equal(p.timeouts.ehlo_ns, 300000 * MS);
    assert_int_equal(p.timeouts.idle_ns, 5000 * MS);

    /* bad parameters never start a session */
    struct event_base *base = event_base_new();
    struct sockaddr_in sin = loopback(25);
    p.ehlo_domain = "bad\r\nname";
    assert_null(smtpcli_connect(base, (struct sockaddr *)&sin, sizeof(sin), &p, on_ready, NULL));
    p.ehlo_domain = NULL;
    assert_null(smtpcli_connect(base, (struct sockaddr *)&sin, sizeof(sin), &p, on_ready, NULL));
    event_base_free(base);
}

/* ---- delivery ------------------------------------------------------------------------------- */

static void test_sink_delivery(void **state)
{
    (void)state;
    run r;
    run_init(&r);
    smtpcli_params p;
    params_for_tests(&p);
    assert_int_equal(run_connect(&r, g.sink.port, &p), 0);
    assert_int_equal(r.ready.code, 250);
    assert_string_equal(r.ready.command, "EHLO client.test\r\n");
    assert_string_equal(smtpcli_state_name(r.cli), "Ready");
    assert_true(smtpcli_usable(r.cli));
    const smtpcli_caps *caps = smtpcli_capabilities(r.cli);
    assert_true(caps->esmtp && caps->pipelining && caps->eightbitmime);
    assert_null(smtpcli_tls(r.cli));
    socklen_t ll = 0;
    const struct sockaddr *la = smtpcli_local_address(r.cli, &ll);
    assert_non_null(la);
    assert_int_equal(la->sa_family, AF_INET);

    const char *rcpts[] = {"a@example.com", "b@example.com"};
    run_send(&r, "sender@example.com", rcpts, 2, MSG);
    assert_false(r.transport_failed);
    for (int i = 0; i < 2; i++) {
        assert_string_equal(r.rc[i].rcpt, rcpts[i]);
        assert_true(r.rc[i].accepted);
        assert_int_equal(r.rc[i].r.code, 250);
        assert_string_equal(r.rc[i].r.command, ".\r\n");
    }
    assert_true(smtpcli_usable(r.cli));
    /* a second message on the same connection */
    run_send(&r, "sender@example.com", rcpts, 1, MSG);
    assert_int_equal(r.rc[0].r.code, 250);
    run_fini(&r);
}

static void test_pipelined_group(void **state)
{
    (void)state;
    long mark = log_mark(&g.plain);
    run r;
    run_init(&r);
    smtpcli_params p;
    params_for_tests(&p);
    assert_int_equal(run_connect(&r, g.plain.port, &p), 0);
    assert_true(smtpcli_capabilities(r.cli)->pipelining);
    assert_true(smtpcli_capabilities(r.cli)->enhancedstatuscodes);
    const char *rcpts[] = {"a@example.com", "b@example.com", "c@example.com"};
    run_send(&r, "s@example.com", rcpts, 3, MSG);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(r.rc[i].r.code, 250);
        assert_int_equal(r.rc[i].r.ec, 2);
        assert_string_equal(r.rc[i].r.content, "queued as 1234");
    }
    run_fini(&r);
    json_t *evs = log_since(&g.plain, mark);
    /* RFC 2920: the server saw the whole group in one read */
    const char *c = chunk_with(evs, "MAIL FROM:<s@example.com>");
    assert_non_null(c);
    assert_string_equal(c, "MAIL FROM:<s@example.com>\r\nRCPT TO:<a@example.com>\r\n"
                           "RCPT TO:<b@example.com>\r\nRCPT TO:<c@example.com>\r\nDATA\r\n");
    json_t *m = nth_event(evs, "message", 0);
    assert_non_null(m);
    assert_int_equal(json_array_size(json_object_get(m, "rcpts")), 3);
    assert_non_null(chunk_with(evs, "QUIT\r\n"));
    json_decref(evs);
}

static void lockstep(const char *ehlo, bool enable_pipelining)
{
    long mark = log_mark(&g.plain);
    run r;
    run_init(&r);
    smtpcli_params p;
    params_for_tests(&p);
    p.ehlo_domain = ehlo;
    p.enable_pipelining = enable_pipelining;
    assert_int_equal(run_connect(&r, g.plain.port, &p), 0);
    const char *rcpts[] = {"a@example.com", "reject5@example.com", "b@example.com"};
    run_send(&r, "s@example.com", rcpts, 3, MSG);
    assert_int_equal(r.rc[0].r.code, 250);
    assert_int_equal(r.rc[1].r.code, 550);
    assert_int_equal(r.rc[2].r.code, 250);
    run_fini(&r);
    json_t *evs = log_since(&g.plain, mark);
    /* one command per read */
    assert_string_equal(chunk_with(evs, "MAIL FROM"), "MAIL FROM:<s@example.com>\r\n");
    assert_string_equal(chunk_with(evs, "RCPT TO:<a@"), "RCPT TO:<a@example.com>\r\n");
    assert_string_equal(chunk_with(evs, "RCPT TO:<b@"), "RCPT TO:<b@example.com>\r\n");
    assert_string_equal(chunk_with(evs, "DATA"), "DATA\r\n");
    json_decref(evs);
}

static void test_lockstep(void **state)
{
    (void)state;
    lockstep("client.test", false); /* we do not want it */
    lockstep("nopipe.test", true);  /* the server does not offer it */
}

static void test_rset_between_transactions(void **state)
{
    (void)state;
    for (int enable_rset = 1; enable_rset >= 0; enable_rset--) {
        long mark = log_mark(&g.plain);
        run r;
        run_init(&r);
        smtpcli_params p;
        params_for_tests(&p);
        p.enable_rset = enable_rset;
        assert_int_equal(run_connect(&r, g.plain.port, &p), 0);
        const char *rcpts[] = {"a@example.com"};
        for (int i = 0; i < 3; i++) {
            run_send(&r, "s@example.com", rcpts, 1, MSG);
            assert_int_equal(r.rc[0].r.code, 250);
        }
        run_fini(&r);
        json_t *evs = log_since(&g.plain, mark);
        assert_int_equal(count_events(evs, "connect"), 1);
        assert_int_equal(count_events(evs, "message"), 3);
        char *all = all_chunks(evs);
        /* never before the first MAIL; pipelined with the others */
        const char *first = strstr(all, "MAIL FROM");
        assert_non_null(first);
        assert_true(first - all < 6 || strncmp(first - 6, "RSET\r\n", 6) != 0);
        int rsets = 0;
        for (const char *s = all; (s = strstr(s, "RSET\r\nMAIL FROM:<s@example.com>\r\n")); s++)
            rsets++;
        assert_int_equal(rsets, enable_rset ? 2 : 0);
        assert_null(enable_rset ? NULL : strstr(all, "RSET"));
        if (enable_rset)
            assert_non_null(chunk_with(evs, "RSET\r\nMAIL FROM:<s@example.com>\r\nRCPT TO:<a@"
                                            "example.com>\r\nDATA\r\n"));
        free(all);
        json_decref(evs);
    }
}

static void test_one_recipient_refused(void **state)
{
    (void)state;
    long mark = log_mark(&g.plain);
    run r;
    run_init(&r);
    smtpcli_params p;
    params_for_tests(&p);
    assert_int_equal(run_connect(&r, g.plain.port, &p), 0);
    const char *rcpts[] = {"ok1@example.com", "reject5@example.com", "reject4@example.com",
                           "ok2@example.com"};
    run_send(&r, "s@example.com", rcpts, 4, MSG);
    assert_false(r.transport_failed);
    assert_int_equal(r.rc[0].r.code, 250);
    assert_string_equal(r.rc[0].r.command, ".\r\n");
    assert_true(r.rc[0].accepted);
    assert_int_equal(r.rc[1].r.code, 550);
    assert_false(r.rc[1].accepted);
    assert_int_equal(r.rc[1].r.ec, 5);
    assert_int_equal(r.rc[1].r.es, 1);
    assert_int_equal(r.rc[1].r.ed, 1);
    assert_string_equal(r.rc[1].r.content, "<reject5@example.com>: no such user");
    assert_string_equal(r.rc[1].r.command, "RCPT TO:<reject5@example.com>\r\n");
    assert_int_equal(r.rc[2].r.code, 451);
    assert_string_equal(r.rc[2].r.command, "RCPT TO:<reject4@example.com>\r\n");
    assert_int_equal(r.rc[3].r.code, 250);
    run_fini(&r);
    json_t *evs = log_since(&g.plain, mark);
    json_t *m = nth_event(evs, "message", 0);
    assert_non_null(m);
    json_t *got = json_object_get(m, "rcpts");
    assert_int_equal(json_array_size(got), 2);
    assert_string_equal(json_string_value(json_array_get(got, 0)), "ok1@example.com");
    assert_string_equal(json_string_value(json_array_get(got, 1)), "ok2@example.com");
    json_decref(evs);
}

static void test_all_recipients_refused(void **state)
{
    (void)state;
    for (int pipelining = 1; pipelining >= 0; pipelining--) {
        long mark = log_mark(&g.plain);
        run r;
        run_init(&r);
        smtpcli_params p;
        params_for_tests(&p);
        p.enable_pipelining = pipelining;
        assert_int_equal(run_connect(&r, g.plain.port, &p), 0);
        const char *rcpts[] = {"reject5@example.com", "reject4@example.com"};
        run_send(&r, "s@example.com", rcpts, 2, MSG);
        assert_false(r.transport_failed);
        assert_int_equal(r.rc[0].r.code, 550);
        assert_int_equal(r.rc[1].r.code, 451);
        /* the connection is still in step: the next message goes through */
        assert_true(smtpcli_usable(r.cli));
        const char *ok[] = {"ok@example.com"};
        run_send(&r, "s@example.com", ok, 1, MSG);
        assert_int_equal(r.rc[0].r.code, 250);
        run_fini(&r);
        json_t *evs = log_since(&g.plain, mark);
        assert_int_equal(count_events(evs, "message"), 1);
        char *all = all_chunks(evs);
        /* pipelined, DATA went out and the server refused it (503) so no
         * body followed; lock-step never sent DATA. Either way the next
         * transaction starts with RSET. */
        int datas = 0;
        for (const char *d = all; (d = strstr(d, "DATA\r\n")); d++)
            datas++;
        assert_int_equal(datas, pipelining ? 2 : 1);
        assert_non_null(strstr(all, "RSET\r\n"));
        assert_null(strstr(all, "Hello there.\r\n.\r\nRSET")); /* no body for nobody */
        free(all);
        json_decref(evs);
    }
}

/* RFC 2920 §3.1: a server may take the pipelined DATA although every RCPT
 * was refused; the client then sends a lone dot, and nothing else. */
static void test_data_accepted_for_nobody(void **state)
{
    (void)state;
    long mark = log_mark(&g.plain);
    run r;
    run_init(&r);
    smtpcli_params p;
    params_for_tests(&p);
    assert_int_equal(run_connect(&r, g.plain.port, &p), 0);
    const char *rcpts[] = {"reject5@example.com", "reject5b@example.com"};
    run_send(&r, "data354@example.com", rcpts, 2, MSG);
    assert_false(r.transport_failed);
    assert_int_equal(r.rc[0].r.code, 550);
    assert_string_equal(r.rc[0].r.command, "RCPT TO:<reject5@example.com>\r\n");
    assert_int_equal(r.rc[1].r.code, 550);
    assert_true(smtpcli_usable(r.cli));
    const char *ok[] = {"ok@example.com"};
    run_send(&r, "s@example.com", ok, 1, MSG);
    assert_int_equal(r.rc[0].r.code, 250);
    run_fini(&r);
    json_t *evs = log_since(&g.plain, mark);
    json_t *m = nth_event(evs, "message", 0);
    assert_non_null(m);
    assert_string_equal(ev_str(m, "data"), ""); /* the lone dot */
    assert_int_equal(count_events(evs, "message"), 2);
    json_decref(evs);
}

static void test_big_body(void **state)
{
    (void)state;
    /* several MB: the body drains over many writes (progress callbacks) */
    size_t n = 4 * 1024 * 1024;
    char *body = malloc(n + 1);
    for (size_t i = 0; i < n; i++)
        body[i] = (i % 100 == 99) ? '\n' : (i % 100 == 0 ? '.' : 'a' + (char)(i % 26));
    body[n] = 0;
    for (int tls = 0; tls < 2; tls++) {
        run r;
        run_init(&r);
        smtpcli_params p;
        params_for_tests(&p);
        p.enable_tls = tls ? SMTPCLI_TLS_REQUIRED : SMTPCLI_TLS_DISABLED;
        p.hostname = "localhost";
        assert_int_equal(run_connect(&r, tls ? g.tls.port : g.sink.port, &p), 0);
        const char *rcpts[] = {"a@example.com"};
        run_send(&r, "s@example.com", rcpts, 1, body);
        assert_false(r.transport_failed);
        assert_int_equal(r.rc[0].r.code, 250);
        run_fini(&r);
    }
    free(body);
}

static void test_mail_refused(void **state)
{
    (void)state;
    for (int pipelining = 1; pipelining >= 0; pipelining--) {
        long mark = log_mark(&g.plain);
        run r;
        run_init(&r);
        smtpcli_params p;
        params_for_tests(&p);
        p.enable_pipelining = pipelining;
        assert_int_equal(run_connect(&r, g.plain.port, &p), 0);
        const char *rcpts[] = {"a@example.com", "b@example.com"};
        run_send(&r, "tempfail@example.com", rcpts, 2, MSG);
        assert_false(r.transport_failed);
        for (int i = 0; i < 2; i++) {
            assert_int_equal(r.rc[i].r.code, 451);
            assert_int_equal(r.rc[i].r.ec, 4);
            assert_int_equal(r.rc[i].r.es, 3);
            assert_string_equal(r.rc[i].r.content, "sender deferred");
            assert_string_equal(r.rc[i].r.command, "MAIL FROM:<tempfail@example.com>\r\n");
            assert_false(r.rc[i].accepted);
        }
        assert_true(smtpcli_usable(r.cli));
        run_send(&r, "s@example.com", rcpts, 1, MSG);
        assert_int_equal(r.rc[0].r.code, 250);
        run_fini(&r);
        json_t *evs = log_since(&g.plain, mark);
        char *all = all_chunks(evs);
        if (!pipelining) /* lock-step stops at the refused MAIL */
            assert_null(strstr(all, "RCPT TO:<b@example.com>"));
        free(all);
        json_decref(evs);
    }
}

static void test_data_refused(void **state)
{
    (void)state;
    long mark = log_mark(&g.plain);
    run r;
    run_init(&r);
    smtpcli_params p;
    params_for_tests(&p);
    assert_int_equal(run_connect(&r, g.plain.port, &p), 0);
    const char *rcpts[] = {"a@example.com", "reject5@example.com"};
    run_send(&r, "datafail@example.com", rcpts, 2, MSG);
    assert_false(r.transport_failed);
    assert_int_equal(r.rc[0].r.code, 451);
    assert_string_equal(r.rc[0].r.content, "no DATA today");
    assert_string_equal(r.rc[0].r.command, "DATA\r\n");
    assert_true(r.rc[0].accepted);
    assert_int_equal(r.rc[1].r.code, 550);
    assert_true(smtpcli_usable(r.cli));

    /* refused at the final dot */
    run_send(&r, "dotfail@example.com", rcpts, 2, MSG);
    assert_int_equal(r.rc[0].r.code, 452);
    assert_int_equal(r.rc[0].r.ec, 4);
    assert_int_equal(r.rc[0].r.es, 3);
    assert_int_equal(r.rc[0].r.ed, 1);
    assert_string_equal(r.rc[0].r.command, ".\r\n");
    assert_int_equal(r.rc[1].r.code, 550);
    run_fini(&r);
    json_t *evs = log_since(&g.plain, mark);
    assert_int_equal(count_events(evs, "message"), 1); /* only the dotfail one got DATA */
    json_decref(evs);
}

static void test_server_closes_after_421(void **state)
{
    (void)state;
    run r;
    run_init(&r);
    smtpcli_params p;
    params_for_tests(&p);
    assert_int_equal(run_connect(&r, g.plain.port, &p), 0);
    const char *rcpts[] = {"a@example.com", "b@example.com"};
    run_send(&r, "close421@example.com", rcpts, 2, MSG);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(r.rc[i].r.code, 421);
        assert_string_equal(r.rc[i].r.command, "MAIL FROM:<close421@example.com>\r\n");
    }
    assert_false(smtpcli_usable(r.cli));
    assert_int_equal(smtpcli_send(r.cli, "s@example.com", rcpts, 1, "x", 1, on_done, &r), KERR_IO);
    run_fini(&r);
}

static void test_data_dot_timeout(void **state)
{
    (void)state;
    run r;
    run_init(&r);
    smtpcli_params p;
    params_for_tests(&p);
    p.label = "unspecified->localhost@smtp_client";
    p.timeouts.data_dot_ns = 300 * MS;
    assert_int_equal(run_connect(&r, g.plain.port, &p), 0);
    const char *rcpts[] = {"a@example.com", "reject5@example.com"};
    run_send(&r, "dotslow@example.com", rcpts, 2, MSG);
    assert_true(r.transport_failed);
    assert_int_equal(r.rc[0].r.code, 421);
    assert_int_equal(r.rc[0].r.ec, 4);
    assert_int_equal(r.rc[0].r.es, 4);
    assert_int_equal(r.rc[0].r.ed, 2);
    char want[256];
    snprintf(want, sizeof(want),
             "KumoMTA internal: failed to send message to unspecified->localhost@smtp_client "
             "127.0.0.1:%d: Timed Out waiting 300ms for response to cmd=.",
             g.plain.port);
    assert_string_equal(r.rc[0].r.content, want);
    assert_string_equal(r.rc[0].r.command, ".\r\n");
    assert_int_equal(r.rc[1].r.code, 550); /* a refusal stands */
    assert_false(smtpcli_usable(r.cli));
    assert_string_equal(smtpcli_state_name(r.cli), "Closed");
    run_fini(&r);
}

static void test_helo_fallback(void **state)
{
    (void)state;
    long mark = log_mark(&g.plain);
    run r;
    run_init(&r);
    smtpcli_params p;
    params_for_tests(&p);
    p.ehlo_domain = "noehlo.test";
    assert_int_equal(run_connect(&r, g.plain.port, &p), 0);
    assert_string_equal(r.ready.command, "HELO noehlo.test\r\n");
    assert_false(smtpcli_capabilities(r.cli)->esmtp);
    assert_false(smtpcli_capabilities(r.cli)->pipelining);
    const char *rcpts[] = {"a@example.com"};
    run_send(&r, "s@example.com", rcpts, 1, MSG);
    assert_int_equal(r.rc[0].r.code, 250);
    run_fini(&r);
    json_t *evs = log_since(&g.plain, mark);
    assert_non_null(chunk_with(evs, "EHLO noehlo.test"));
    assert_non_null(chunk_with(evs, "HELO noehlo.test"));
    assert_string_equal(chunk_with(evs, "MAIL FROM"), "MAIL FROM:<s@example.com>\r\n");
    json_decref(evs);
}

static void test_dot_stuffing_round_trip(void **state)
{
    (void)state;
    long mark = log_mark(&g.plain);
    run r;
    run_init(&r);
    smtpcli_params p;
    params_for_tests(&p);
    assert_int_equal(run_connect(&r, g.plain.port, &p), 0);
    const char *rcpts[] = {"a@example.com"};
    const char *body = ".leading dot\r\n"
                       ".\r\n"
                       "..two dots\n"
                       "bare LF line\n"
                       "bare CR line\r"
                       "a . in the middle\r\n"
                       "\r\n"
                       ".\n"
                       "no end";
    const char *want = ".leading dot\r\n"
                       ".\r\n"
                       "..two dots\r\n"
                       "bare LF line\r\n"
                       "bare CR line\r\n"
                       "a . in the middle\r\n"
                       "\r\n"
                       ".\r\n"
                       "no end\r\n";
    run_send(&r, "s@example.com", rcpts, 1, body);
    assert_int_equal(r.rc[0].r.code, 250);
    run_fini(&r);
    json_t *evs = log_since(&g.plain, mark);
    json_t *m = nth_event(evs, "message", 0);
    assert_non_null(m);
    assert_string_equal(ev_str(m, "data"), want);
    /* and on the wire it was stuffed */
    char *all = all_chunks(evs);
    assert_non_null(strstr(all, "\r\n..leading dot\r\n..\r\n...two dots\r\n"));
    assert_non_null(strstr(all, "\r\n..\r\nno end\r\n.\r\n"));
    free(all);
    json_decref(evs);
}

static void test_eight_bit(void **state)
{
    (void)state;
    long mark = log_mark(&g.plain);
    run r;
    run_init(&r);
    smtpcli_params p;
    params_for_tests(&p);
    assert_int_equal(run_connect(&r, g.plain.port, &p), 0);
    const char *rcpts[] = {"a@example.com"};
    run_send(&r, "s@example.com", rcpts, 1, "Subject: caf\xc3\xa9\r\n\r\nna\xc3\xafve\r\n");
    assert_int_equal(r.rc[0].r.code, 250);
    const char *urcpt[] = {"j\xc3\xb8rn@example.com"};
    run_send(&r, "s@example.com", urcpt, 1, MSG);
    assert_int_equal(r.rc[0].r.code, 250);
    run_fini(&r);
    json_t *evs = log_since(&g.plain, mark);
    assert_non_null(chunk_with(evs, "MAIL FROM:<s@example.com> BODY=8BITMIME\r\n"));
    assert_non_null(chunk_with(evs, "MAIL FROM:<s@example.com> SMTPUTF8\r\n"));
    json_decref(evs);

    /* smtp-sink -8 does not offer 8BITMIME: refused before anything is sent */
    run_init(&r);
    assert_int_equal(run_connect(&r, g.sink8.port, &p), 0);
    assert_false(smtpcli_capabilities(r.cli)->eightbitmime);
    run_send(&r, "s@example.com", rcpts, 1, "caf\xc3\xa9\r\n");
    assert_int_equal(r.rc[0].r.code, 554);
    assert_int_equal(r.rc[0].r.ec, 5);
    assert_int_equal(r.rc[0].r.es, 6);
    assert_int_equal(r.rc[0].r.ed, 3);
    assert_false(r.rc[0].r.has_command);
    assert_non_null(strstr(r.rc[0].r.content, "KumoMTA internal: DATA is 8bit"));
    assert_true(smtpcli_usable(r.cli));
    /* ignore_8bit_checks sends it anyway */
    run_fini(&r);
    run_init(&r);
    p.ignore_8bit_checks = true;
    assert_int_equal(run_connect(&r, g.sink8.port, &p), 0);
    run_send(&r, "s@example.com", rcpts, 1, "caf\xc3\xa9\r\n");
    assert_int_equal(r.rc[0].r.code, 250);
    run_fini(&r);
}

/* ---- TLS ------------------------------------------------------------------------------------ */

typedef struct tls_case {
    smtpcli_tls_mode mode;
    SSL_CTX **ctx;
    const char *hostname;
    int want_err;
    bool want_tls, want_authenticated;
    const char *want_text;
} tls_case;

static void tls_against(const peer *pr, const tls_case *tc, size_t i)
{
    long mark = log_mark(pr);
    run r;
    run_init(&r);
    smtpcli_params p;
    params_for_tests(&p);
    p.enable_tls = tc->mode;
    p.tls_ctx = *tc->ctx;
    p.hostname = tc->hostname;
    int err = run_connect(&r, pr->port, &p);
    if (err != tc->want_err)
        fail_msg("case %zu (%s): err %d, want %d: %d %s", i, smtpcli_tls_mode_name(tc->mode), err,
                 tc->want_err, r.ready.code, r.ready.content);
    if (tc->want_text && !strstr(r.ready.content, tc->want_text))
        fail_msg("case %zu: '%s' lacks '%s'", i, r.ready.content, tc->want_text);
    const smtpcli_tls_info *ti = smtpcli_tls(r.cli);
    if (tc->want_tls) {
        assert_non_null(ti);
        assert_true(strlen(ti->cipher) > 0);
        assert_true(strncmp(ti->protocol_version, "TLSv1.", 6) == 0);
        assert_string_equal(ti->provider_name, "openssl");
        assert_int_equal(ti->n_subject_name, 1);
        assert_string_equal(ti->subject_name[0], "CN=localhost");
        assert_int_equal(ti->authenticated, tc->want_authenticated);
    } else if (!err) {
        assert_null(ti);
    }
    if (!err) {
        const char *rcpts[] = {"a@example.com"};
        run_send(&r, "s@example.com", rcpts, 1, MSG);
        assert_int_equal(r.rc[0].r.code, 250);
    } else {
        assert_false(smtpcli_usable(r.cli));
        assert_string_equal(smtpcli_state_name(r.cli), "Closed");
    }
    run_fini(&r);
    if (pr->log[0]) {
        json_t *evs = log_since(pr, mark);
        json_t *m = nth_event(evs, "message", 0);
        if (!err) {
            assert_non_null(m);
            assert_int_equal(json_is_true(json_object_get(m, "tls")), tc->want_tls);
        }
        if (tc->mode == SMTPCLI_TLS_DISABLED)
            assert_null(chunk_with(evs, "STARTTLS"));
        json_decref(evs);
    }
}

static void test_starttls_modes(void **state)
{
    (void)state;
    const tls_case cases[] = {
        {SMTPCLI_TLS_OPPORTUNISTIC_INSECURE, &g.untrusted, "localhost", 0, true, false, NULL},
        {SMTPCLI_TLS_REQUIRED_INSECURE, &g.untrusted, "mx.example.net", 0, true, false, NULL},
        {SMTPCLI_TLS_REQUIRED, &g.trusting, "localhost", 0, true, true, NULL},
        {SMTPCLI_TLS_REQUIRED, &g.trusting, NULL, 0, true, true, NULL}, /* IP SAN */
        {SMTPCLI_TLS_OPPORTUNISTIC, &g.trusting, "localhost", 0, true, true, NULL},
        {SMTPCLI_TLS_REQUIRED, &g.untrusted, "localhost", KERR_IO, false, false,
         "certificate verify failed"},
        {SMTPCLI_TLS_REQUIRED, &g.trusting, "mx.example.net", KERR_IO, false, false,
         "TLS handshake failed"},
        /* KumoMTA: an opportunistic handshake that fails fails the
         * connection (the dispatcher remembers broken TLS and retries) */
        {SMTPCLI_TLS_OPPORTUNISTIC, &g.untrusted, "localhost", KERR_IO, false, false,
         "certificate verify failed"},
        {SMTPCLI_TLS_DISABLED, &g.trusting, "localhost", 0, false, false, NULL},
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++)
        tls_against(&g.tls, &cases[i], i);
}

static void test_tls_policy_without_starttls(void **state)
{
    (void)state;
    const tls_case cases[] = {
        {SMTPCLI_TLS_REQUIRED, &g.trusting, NULL, KERR_REJECTED, false, false,
         "tls policy is Required but STARTTLS is not advertised"},
        {SMTPCLI_TLS_REQUIRED_INSECURE, &g.trusting, NULL, KERR_REJECTED, false, false,
         "tls policy is RequiredInsecure but STARTTLS is not advertised"},
        {SMTPCLI_TLS_OPPORTUNISTIC, &g.trusting, NULL, 0, false, false, NULL},
        {SMTPCLI_TLS_OPPORTUNISTIC_INSECURE, &g.trusting, NULL, 0, false, false, NULL},
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++)
        tls_against(&g.sink, &cases[i], i);
    /* the same against aiosmtpd without STARTTLS, whose log we can read */
    for (size_t i = 0; i < ARRAY_LEN(cases); i++)
        tls_against(&g.plain, &cases[i], i);
}

/* ---- AUTH ----------------------------------------------------------------------------------- */

static void auth_case(const peer *pr, smtpcli_tls_mode mode, const char *pass, bool allow_plain,
                      bool allow_unverified, int want_err, const char *want_text,
                      bool want_auth_sent)
{
    long mark = log_mark(pr);
    run r;
    run_init(&r);
    smtpcli_params p;
    params_for_tests(&p);
    p.enable_tls = mode;
    p.hostname = "localhost";
    p.auth_username = "user";
    p.auth_password = pass;
    p.allow_smtp_auth_plain_without_tls = allow_plain;
    p.allow_smtp_auth_plain_without_valid_certificate = allow_unverified;
    int err = run_connect(&r, pr->port, &p);
    if (err != want_err)
        fail_msg("auth: err %d, want %d: %d %s", err, want_err, r.ready.code, r.ready.content);
    if (want_text && !strstr(r.ready.content, want_text))
        fail_msg("auth: '%s' lacks '%s'", r.ready.content, want_text);
    if (!err) {
        assert_int_equal(r.ready.code, 235);
        assert_string_equal(r.ready.command, "AUTH PLAIN\r\n");
        const char *rcpts[] = {"a@example.com"};
        run_send(&r, "s@example.com", rcpts, 1, MSG);
        assert_int_equal(r.rc[0].r.code, 250);
    }
    run_fini(&r);
    json_t *evs = log_since(pr, mark);
    json_t *a = nth_event(evs, "auth", 0);
    assert_int_equal(a != NULL, want_auth_sent);
    if (a)
        assert_string_equal(ev_str(a, "user"), "user");
    if (!err)
        assert_string_equal(ev_str(nth_event(evs, "message", 0), "auth"), "user");
    json_decref(evs);
}

static void test_auth_plain(void **state)
{
    (void)state;
    /* over verified TLS */
    auth_case(&g.tls, SMTPCLI_TLS_REQUIRED, "secret", false, false, 0, NULL, true);
    /* over unverified TLS: only when allowed */
    auth_case(&g.tls, SMTPCLI_TLS_REQUIRED_INSECURE, "secret", false, true, 0, NULL, true);
    auth_case(&g.tls, SMTPCLI_TLS_REQUIRED_INSECURE, "secret", false, false, KERR_REJECTED,
              "TLS peer certificate was not validated", false);
    /* in clear text: only when allowed */
    auth_case(&g.plain, SMTPCLI_TLS_DISABLED, "secret", true, false, 0, NULL, true);
    auth_case(&g.plain, SMTPCLI_TLS_OPPORTUNISTIC, "secret", false, false, KERR_REJECTED,
              "TLS is not enabled and AUTH PLAIN is required", false);
    /* refused by the server */
    auth_case(&g.tls, SMTPCLI_TLS_REQUIRED, "wrong", false, false, KERR_REJECTED, NULL, true);
}

/* ---- connection failures, timeouts, lifecycle ---------------------------------------------- */

static void test_banner_timeout(void **state)
{
    (void)state;
    /* a listener that never accepts: the kernel completes the handshake */
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = loopback(0);
    socklen_t l = sizeof(sin);
    assert_int_equal(bind(lfd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    assert_int_equal(listen(lfd, 8), 0);
    assert_int_equal(getsockname(lfd, (struct sockaddr *)&sin, &l), 0);
    int port = ntohs(sin.sin_port);

    run r;
    run_init(&r);
    smtpcli_params p;
    params_for_tests(&p);
    p.timeouts.banner_ns = 300 * MS;
    int64_t t0 = 0;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    t0 = ts.tv_sec * 1000000000LL + ts.tv_nsec;
    assert_int_equal(run_connect(&r, port, &p), KERR_TIMEDOUT);
    clock_gettime(CLOCK_MONOTONIC, &ts);
    int64_t took = ts.tv_sec * 1000000000LL + ts.tv_nsec - t0;
    assert_true(took >= 290 * MS && took < 3000 * MS);
    assert_int_equal(r.ready.code, 421);
    assert_int_equal(r.ready.ec, 4);
    assert_int_equal(r.ready.es, 4);
    assert_int_equal(r.ready.ed, 2);
    char want[200];
    snprintf(want, sizeof(want),
             "KumoMTA internal: failed to connect to 127.0.0.1:%d: Timed Out waiting 300ms for "
             "response to cmd=NONE",
             port);
    assert_string_equal(r.ready.content, want);
    assert_false(r.ready.has_command);
    assert_string_equal(smtpcli_state_name(r.cli), "Closed");
    run_fini(&r);
    close(lfd);
}

static void test_connect_timeout(void **state)
{
    (void)state;
    /* A listener whose accept queue is full: Linux drops further SYNs, so
     * a connect stays pending until our connect_timeout. */
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = loopback(0);
    socklen_t l = sizeof(sin);
    assert_int_equal(bind(lfd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    assert_int_equal(listen(lfd, 0), 0);
    assert_int_equal(getsockname(lfd, (struct sockaddr *)&sin, &l), 0);
    int fillers[4];
    for (int i = 0; i < 4; i++) {
        fillers[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        connect(fillers[i], (struct sockaddr *)&sin, sizeof(sin));
    }
    usleep(100000);
    run r;
    run_init(&r);
    smtpcli_params p;
    params_for_tests(&p);
    p.timeouts.connect_ns = 250 * MS;
    assert_int_equal(run_connect(&r, ntohs(sin.sin_port), &p), KERR_TIMEDOUT);
    assert_int_equal(r.ready.code, 421);
    assert_non_null(strstr(r.ready.content, "Timed Out waiting 250ms to connect"));
    run_fini(&r);
    for (int i = 0; i < 4; i++)
        close(fillers[i]);
    close(lfd);
}

static void test_connect_refused(void **state)
{
    (void)state;
    int port = free_port();
    run r;
    run_init(&r);
    smtpcli_params p;
    params_for_tests(&p);
    p.hostname = "mx.example.net";
    assert_int_equal(run_connect(&r, port, &p), KERR_IO);
    assert_int_equal(r.ready.code, 400);
    assert_int_equal(r.ready.ec, 0);
    char want[200];
    snprintf(want, sizeof(want),
             "KumoMTA internal: failed to connect to mx.example.net [127.0.0.1:%d]: Connection "
             "refused",
             port);
    assert_string_equal(r.ready.content, want);
    assert_false(smtpcli_usable(r.cli));
    run_fini(&r);
}

static void test_source_address(void **state)
{
    (void)state;
    long mark = log_mark(&g.plain);
    run r;
    run_init(&r);
    smtpcli_params p;
    params_for_tests(&p);
    struct sockaddr_in src = {.sin_family = AF_INET};
    inet_pton(AF_INET, "127.0.0.2", &src.sin_addr);
    memcpy(&p.source_address, &src, sizeof(src));
    p.source_address_len = sizeof(src);
    assert_int_equal(run_connect(&r, g.plain.port, &p), 0);
    socklen_t ll = 0;
    const struct sockaddr_in *la = (const struct sockaddr_in *)smtpcli_local_address(r.cli, &ll);
    assert_non_null(la);
    char ip[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &la->sin_addr, ip, sizeof(ip));
    assert_string_equal(ip, "127.0.0.2");
    run_fini(&r);
    json_t *evs = log_since(&g.plain, mark);
    assert_string_equal(ev_str(nth_event(evs, "connect", 0), "peer"), "127.0.0.2");
    json_decref(evs);

    /* an address we do not have fails cleanly */
    run_init(&r);
    inet_pton(AF_INET, "192.0.2.1", &src.sin_addr);
    memcpy(&p.source_address, &src, sizeof(src));
    assert_int_equal(run_connect(&r, g.plain.port, &p), KERR_IO);
    assert_non_null(strstr(r.ready.content, "bind to source address 192.0.2.1"));
    run_fini(&r);
}

static void test_server_says_goodbye_while_idle(void **state)
{
    (void)state;
    run r;
    run_init(&r);
    smtpcli_params p;
    params_for_tests(&p);
    p.ehlo_domain = "kick.test";
    assert_int_equal(run_connect(&r, g.plain.port, &p), 0);
    run_loop(&r, 5000);
    assert_int_equal(r.closed_calls, 1);
    assert_int_equal(r.closed.code, 421);
    assert_string_equal(r.closed.content, "idle too long");
    assert_false(smtpcli_usable(r.cli));
    const char *rcpts[] = {"a@example.com"};
    assert_int_equal(smtpcli_send(r.cli, "s@example.com", rcpts, 1, "x", 1, on_done, &r), KERR_IO);
    run_fini(&r);
}

static void test_idle_timeout(void **state)
{
    (void)state;
    long mark = log_mark(&g.plain);
    run r;
    run_init(&r);
    smtpcli_params p;
    params_for_tests(&p);
    p.timeouts.idle_ns = 200 * MS;
    assert_int_equal(run_connect(&r, g.plain.port, &p), 0);
    run_loop(&r, 5000);
    assert_int_equal(r.closed_calls, 1);
    assert_int_equal(r.closed.code, 421);
    assert_non_null(strstr(r.closed.content, "idle for 200ms"));
    assert_false(smtpcli_usable(r.cli));
    run_loop(&r, 300); /* the QUIT exchange finishes */
    assert_string_equal(smtpcli_state_name(r.cli), "Closed");
    run_fini(&r);
    json_t *evs = log_since(&g.plain, mark);
    assert_non_null(chunk_with(evs, "QUIT\r\n"));
    json_decref(evs);
}

static void abort_cb(evutil_socket_t fd, short what, void *arg)
{
    run *r = arg;
    /* the watchdog's view before it pulls the plug */
    assert_string_equal(smtpcli_state_name(r->cli), "DataDot");
    assert_string_equal(smtpcli_detail(r->cli), ".");
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    int64_t now = ts.tv_sec * 1000000000LL + ts.tv_nsec;
    assert_true(now - smtpcli_last_progress_ns(r->cli) >= 150 * MS);
    assert_true(smtpcli_state_since_ns(r->cli) <= smtpcli_last_progress_ns(r->cli));
    smtpcli_abort(r->cli);
    smtpcli_abort(r->cli); /* twice is harmless */
    r->cli = NULL;
    r->stop = true;
    event_base_loopbreak(r->base);
}

static void test_abort_mid_transaction(void **state)
{
    (void)state;
    run r;
    run_init(&r);
    smtpcli_params p;
    params_for_tests(&p);
    assert_int_equal(run_connect(&r, g.plain.port, &p), 0);
    const char *rcpts[] = {"a@example.com"};
    assert_int_equal(
        smtpcli_send(r.cli, "dotslow@example.com", rcpts, 1, MSG, strlen(MSG), on_done, &r), 0);
    assert_string_equal(smtpcli_state_name(r.cli), "MailFrom");
    assert_string_equal(smtpcli_detail(r.cli), "MAIL FROM:<dotslow@example.com>");
    assert_int_equal(smtpcli_send(r.cli, "s@example.com", rcpts, 1, MSG, strlen(MSG), on_done, &r),
                     KERR_INVAL); /* one at a time */
    struct event *ev = evtimer_new(r.base, abort_cb, &r);
    struct timeval tv = {0, 400000};
    evtimer_add(ev, &tv);
    run_loop(&r, 5000);
    event_free(ev);
    run_loop(&r, 100);
    assert_int_equal(r.done_calls, 0); /* no callbacks after abort */
    run_fini(&r);
}

static void quit_in_done(smtpcli *cli, const smtpcli_result *res, void *ud)
{
    on_done(cli, res, ud);
    smtpcli_quit(cli); /* releasing inside our own callback is allowed */
    ((run *)ud)->cli = NULL;
}

static void test_quit_inside_callback(void **state)
{
    (void)state;
    long mark = log_mark(&g.plain);
    run r;
    run_init(&r);
    smtpcli_params p;
    params_for_tests(&p);
    assert_int_equal(run_connect(&r, g.plain.port, &p), 0);
    const char *rcpts[] = {"a@example.com"};
    assert_int_equal(
        smtpcli_send(r.cli, "s@example.com", rcpts, 1, MSG, strlen(MSG), quit_in_done, &r), 0);
    run_loop(&r, 5000);
    assert_int_equal(r.done_calls, 1);
    run_fini(&r);
    json_t *evs = log_wait(&g.plain, mark, "close", 1);
    assert_non_null(chunk_with(evs, "QUIT\r\n"));
    assert_int_equal(count_events(evs, "close"), 1);
    json_decref(evs);
}

int main(void)
{
    /* KUMOD_LOG=kumod::smtp_client=trace shows every state change;
     * TEST_FILTER=test_auth* runs a subset */
    if (getenv("KUMOD_LOG"))
        diag_set_filter(getenv("KUMOD_LOG"));
    if (getenv("TEST_FILTER"))
        cmocka_set_test_filter(getenv("TEST_FILTER"));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_reply),
        cmocka_unit_test(test_encode_body),
        cmocka_unit_test(test_names_and_durations),
        cmocka_unit_test(test_sink_delivery),
        cmocka_unit_test(test_pipelined_group),
        cmocka_unit_test(test_lockstep),
        cmocka_unit_test(test_rset_between_transactions),
        cmocka_unit_test(test_one_recipient_refused),
        cmocka_unit_test(test_all_recipients_refused),
        cmocka_unit_test(test_data_accepted_for_nobody),
        cmocka_unit_test(test_big_body),
        cmocka_unit_test(test_mail_refused),
        cmocka_unit_test(test_data_refused),
        cmocka_unit_test(test_server_closes_after_421),
        cmocka_unit_test(test_data_dot_timeout),
        cmocka_unit_test(test_helo_fallback),
        cmocka_unit_test(test_dot_stuffing_round_trip),
        cmocka_unit_test(test_eight_bit),
        cmocka_unit_test(test_starttls_modes),
        cmocka_unit_test(test_tls_policy_without_starttls),
        cmocka_unit_test(test_auth_plain),
        cmocka_unit_test(test_banner_timeout),
        cmocka_unit_test(test_connect_timeout),
        cmocka_unit_test(test_connect_refused),
        cmocka_unit_test(test_source_address),
        cmocka_unit_test(test_server_says_goodbye_while_idle),
        cmocka_unit_test(test_idle_timeout),
        cmocka_unit_test(test_abort_mid_transaction),
        cmocka_unit_test(test_quit_inside_callback),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
