/* SMTP client session (RFC 5321, 3207 STARTTLS, 4954/4616 AUTH PLAIN,
 * 2920 PIPELINING, 6152 8BITMIME, 6531 SMTPUTF8, 3463 enhanced codes).
 *
 * What: one outbound connection as an explicit state machine. Every state
 * change goes through smtpcli_set_state(), which logs old -> new by name,
 * stamps the time of progress the dispatcher watchdog reads, and arms the
 * timeout of the new state. A transaction keeps two cursors over its
 * command list, Postfix style: `sent` (commands written) and `recvd`
 * (replies read). With PIPELINING, [RSET] MAIL RCPT... DATA go out in one
 * write and the replies are matched in order; without it the session writes
 * one command, waits for its reply, and decides what comes next.
 *
 * Owns: the socket and its bufferevents (plain, then the OpenSSL filter on
 * top after STARTTLS), three events (state timer, deferred completion,
 * garbage collection), copies of the parameters, the transaction in flight.
 *
 * Thread: the thread running the event_base it was created on (a reactor).
 *
 * Failure: a refusal by the server is a response handed to the owner; a
 * broken connection, a malformed reply or a timeout closes the connection
 * and becomes a "KumoMTA internal" response (timeouts 421 4.4.2, others 400)
 * for whatever was waiting. The session is never freed inside one of its own
 * callbacks: released sessions are reaped from a zero-delay event. */
#include "smtp/client.h"
#include "smtp/trace.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "core/diag.h"
#include "core/kerr.h"
#include "core/reactor.h"
#include "core/xalloc.h"
#include "net/sockaddr.h"
#include "net/wthrough.h"

#define CMOD "kumod::smtp_client"
#define PULL_MAX (64 * 1024)         /* the most reply text we look at in one go */
#define CLI_READ_MAX (16384 - 128)   /* one read; one 16 KiB evbuffer chain */
#define BODY_WRITE_LOWAT (32 * 1024) /* progress callbacks while the body drains */

/* ---- small helpers --------------------------------------------------------------------------- */

static bool has_crlf(const char *s)
{
    return s && strpbrk(s, "\r\n") != NULL;
}

static bool is_8bit(const char *s)
{
    for (; s && *s; s++)
        if ((unsigned char)*s >= 0x80)
            return true;
    return false;
}

void smtpcli_format_duration(int64_t ns, char *buf, size_t buflen)
{
    static const struct {
        int64_t unit;
        int digits;
        const char *suffix;
    } units[] = {{1000000000LL, 9, "s"}, {1000000LL, 6, "ms"}, {1000LL, 3, "\xc2\xb5s"}};
    if (ns < 0)
        ns = 0;
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        if (ns < units[i].unit)
            continue;
        long long whole = ns / units[i].unit;
        long long frac = ns % units[i].unit;
        if (frac == 0) {
            snprintf(buf, buflen, "%lld%s", whole, units[i].suffix);
            return;
        }
        char fb[16];
        snprintf(fb, sizeof(fb), "%0*lld", units[i].digits, frac);
        size_t n = strlen(fb);
        while (n > 0 && fb[n - 1] == '0')
            fb[--n] = 0;
        snprintf(buf, buflen, "%lld.%s%s", whole, fb, units[i].suffix);
        return;
    }
    snprintf(buf, buflen, "%lldns", (long long)ns);
}

/* ---- parameters -------------------------------------------------------------------------- */

static const char *const tls_mode_names[] = {"Opportunistic", "OpportunisticInsecure", "Required",
                                             "RequiredInsecure", "Disabled"};

int smtpcli_tls_mode_parse(const char *s, smtpcli_tls_mode *out)
{
    for (size_t i = 0; s && i < sizeof(tls_mode_names) / sizeof(tls_mode_names[0]); i++) {
        if (strcmp(s, tls_mode_names[i]) == 0) {
            *out = (smtpcli_tls_mode)i;
            return 0;
        }
    }
    return KERR_PARSE;
}

const char *smtpcli_tls_mode_name(smtpcli_tls_mode m)
{
    return (unsigned)m < sizeof(tls_mode_names) / sizeof(tls_mode_names[0]) ? tls_mode_names[m]
                                                                            : "?";
}

void smtpcli_params_init(smtpcli_params *p)
{
    const int64_t s = 1000000000LL;
    memset(p, 0, sizeof(*p));
    p->ehlo_domain = "localhost";
    p->enable_tls = SMTPCLI_TLS_OPPORTUNISTIC;
    p->enable_pipelining = true;
    p->enable_rset = true;
    p->timeouts = (smtpcli_timeouts){.connect_ns = 60 * s,
                                     .banner_ns = 60 * s,
                                     .ehlo_ns = 300 * s,
                                     .mail_from_ns = 300 * s,
                                     .rcpt_to_ns = 300 * s,
                                     .data_ns = 300 * s,
                                     .data_dot_ns = 300 * s,
                                     .rset_ns = 5 * s,
                                     .idle_ns = 5 * s,
                                     .starttls_ns = 5 * s,
                                     .auth_ns = 60 * s};
}

static void ssl_err_text(char *buf, size_t buflen)
{
    unsigned long e = ERR_get_error();
    if (e)
        ERR_error_string_n(e, buf, buflen);
    else
        snprintf(buf, buflen, "unknown error");
    ERR_clear_error();
}

SSL_CTX *smtpcli_tls_ctx_new(const char *ca_file, char *err, size_t errlen)
{
    char ebuf[256];
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        ssl_err_text(ebuf, sizeof(ebuf));
        snprintf(err, errlen, "creating a TLS client context: %s", ebuf);
        return NULL;
    }
    if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
        ssl_err_text(ebuf, sizeof(ebuf));
        snprintf(err, errlen, "loading the system trust store: %s", ebuf);
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (ca_file && SSL_CTX_load_verify_locations(ctx, ca_file, NULL) != 1) {
        ssl_err_text(ebuf, sizeof(ebuf));
        snprintf(err, errlen, "%s: %s", ca_file, ebuf);
        SSL_CTX_free(ctx);
        return NULL;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    return ctx;
}

/* ---- reply parser -------------------------------------------------------------------------- */

/* "d.ddd.ddd " at s: class 2/4/5, subject and detail up to 3 digits, then
 * a space (KumoMTA requires text after the code). Returns its length
 * including the space, or 0. */
static size_t enhanced_prefix(const char *s, size_t n, int *cls, int *sub, int *det)
{
    size_t i = 0;
    int v[3] = {0, 0, 0};
    for (int part = 0; part < 3; part++) {
        size_t start = i;
        while (i < n && s[i] >= '0' && s[i] <= '9' && i - start < 3)
            v[part] = v[part] * 10 + (s[i++] - '0');
        if (i == start || (part == 0 && i - start != 1))
            return 0;
        char want = part < 2 ? '.' : ' ';
        if (i >= n || s[i] != want)
            return 0;
        i++;
    }
    if (v[0] != 2 && v[0] != 4 && v[0] != 5)
        return 0;
    *cls = v[0];
    *sub = v[1];
    *det = v[2];
    return i;
}

static void reply_append(smtpcli_reply *r, const char *s, size_t n)
{
    size_t room = sizeof(r->text) - 1 - r->text_len;
    if (n > room)
        n = room;
    memcpy(r->text + r->text_len, s, n);
    r->text_len += n;
    r->text[r->text_len] = 0;
}

int smtpcli_parse_reply(const char *buf, size_t len, size_t *used, smtpcli_reply *out)
{
    out->code = 0;
    out->enh_class = out->enh_subject = out->enh_detail = 0;
    out->n_lines = 0;
    out->text_len = 0;
    out->text[0] = 0;
    size_t pos = 0;
    for (;;) {
        const char *line = buf + pos;
        size_t avail = len - pos;
        const char *lf = memchr(line, '\n', avail);
        if (!lf) {
            if (avail > SMTPCLI_LINE_MAX) {
                snprintf(out->text, sizeof(out->text), "Response line is too long");
                return SMTPCLI_PARSE_INVALID;
            }
            return SMTPCLI_PARSE_AGAIN;
        }
        size_t n = (size_t)(lf - line);
        size_t next = pos + n + 1;
        if (n > 0 && line[n - 1] == '\r')
            n--;
        if (n > SMTPCLI_LINE_MAX) {
            snprintf(out->text, sizeof(out->text), "Response line is too long");
            return SMTPCLI_PARSE_INVALID;
        }
        /* RFC 5321 §4.2: Reply-code [ SP / "-" textstring ] */
        bool ok = n >= 3 && line[0] >= '2' && line[0] <= '5' && line[1] >= '0' && line[1] <= '9' &&
                  line[2] >= '0' && line[2] <= '9' && (n == 3 || line[3] == ' ' || line[3] == '-');
        int code = ok ? (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0') : 0;
        if (ok && out->n_lines > 0 && code != out->code)
            ok = false;
        if (!ok) {
            snprintf(out->text, sizeof(out->text), "Malformed Response: %.*s",
                     (int)(n > 200 ? 200 : n), line);
            return SMTPCLI_PARSE_INVALID;
        }
        bool final = n == 3 || line[3] == ' ';
        const char *txt = n > 4 ? line + 4 : "";
        size_t tl = n > 4 ? n - 4 : 0;
        if (out->n_lines == 0) {
            out->code = code;
            size_t skip =
                enhanced_prefix(txt, tl, &out->enh_class, &out->enh_subject, &out->enh_detail);
            txt += skip;
            tl -= skip;
        } else {
            reply_append(out, "\n", 1);
            int c2, s2, d2;
            size_t skip = out->enh_class ? enhanced_prefix(txt, tl, &c2, &s2, &d2) : 0;
            if (skip && c2 == out->enh_class && s2 == out->enh_subject && d2 == out->enh_detail) {
                txt += skip;
                tl -= skip;
            }
        }
        reply_append(out, txt, tl);
        out->n_lines++;
        pos = next;
        if (final) {
            *used = pos;
            return SMTPCLI_PARSE_OK;
        }
    }
}

/* ---- body encoding -------------------------------------------------------------------------- */

int smtpcli_encode_body(struct evbuffer *out, const char *data, size_t len, bool *eightbit)
{
    /* Reserve roughly what the result needs so the chains grow once. */
    if (evbuffer_expand(out, len + len / 32 + 8) != 0)
        return KERR_NOMEM;
    bool bol = true, hi = false;
    size_t i = 0;
    while (i < len) {
        if (bol && data[i] == '.' && evbuffer_add(out, ".", 1) != 0)
            return KERR_NOMEM;
        size_t j = i;
        while (j < len && data[j] != '\r' && data[j] != '\n') {
            hi |= (unsigned char)data[j] >= 0x80;
            j++;
        }
        if (j > i && evbuffer_add(out, data + i, j - i) != 0)
            return KERR_NOMEM;
        if (j == len) {
            bol = false;
            i = j;
            break;
        }
        /* CRLF, a bare LF or a bare CR all end the line */
        if (data[j] == '\r' && j + 1 < len && data[j + 1] == '\n')
            j++;
        if (evbuffer_add(out, "\r\n", 2) != 0)
            return KERR_NOMEM;
        bol = true;
        i = j + 1;
    }
    if (!bol && evbuffer_add(out, "\r\n", 2) != 0)
        return KERR_NOMEM;
    if (evbuffer_add(out, ".\r\n", 3) != 0)
        return KERR_NOMEM;
    if (eightbit)
        *eightbit = hi;
    return 0;
}

/* ---- the session ------------------------------------------------------------------------------
 */

#define STATE_MAP(X)                                                                               \
    X(CONNECTING, "Connecting")                                                                    \
    X(BANNER, "Banner")                                                                            \
    X(EHLO, "Ehlo")                                                                                \
    X(HELO, "Helo")                                                                                \
    X(STARTTLS, "StartTls")                                                                        \
    X(TLS_HANDSHAKE, "TlsHandshake")                                                               \
    X(AUTH, "Auth")                                                                                \
    X(READY, "Ready")                                                                              \
    X(RSET, "Rset")                                                                                \
    X(MAIL, "MailFrom")                                                                            \
    X(RCPT, "RcptTo")                                                                              \
    X(DATA, "Data")                                                                                \
    X(BODY, "SendingBody")                                                                         \
    X(DATA_DOT, "DataDot")                                                                         \
    X(QUIT, "Quit")                                                                                \
    X(CLOSED, "Closed")

typedef enum cli_state {
#define X(name, text) CS_##name,
    STATE_MAP(X)
#undef X
} cli_state;

static const char *const state_names[] = {
#define X(name, text) text,
    STATE_MAP(X)
#undef X
};

typedef enum cmd_kind { CK_RSET, CK_MAIL, CK_RCPT, CK_DATA } cmd_kind;

typedef struct txcmd {
    cmd_kind kind;
    size_t rcpt; /* CK_RCPT: index into the results */
    char *line;  /* with CRLF */
} txcmd;

/* One transaction. Replies to cmds[0..recvd) have been read; cmds[0..sent)
 * have been written. */
typedef struct tx {
    smtpcli_done_fn done;
    void *ud;
    smtpcli_rcpt_result *res;
    char **rcpts;
    size_t n;
    txcmd *cmds;
    size_t n_cmds, sent, recvd;
    struct evbuffer *body; /* encoded, with the final dot */
    smtpcli_response rset, mail, data, dot;
    size_t n_accepted;
    bool abandon;     /* DATA was accepted with nobody to deliver to: lone dot */
    bool saw_421;     /* the server is closing the connection */
    bool desync;      /* replies and commands are out of step */
    bool finish_now;  /* decided before any I/O: finish from the deferred event */
    bool fail_now;    /* a write behind it failed: fail it from the deferred event */
    bool behind;      /* queued with smtpcli_send_next */
    bool any_reply;   /* a reply to one of its commands (or its dot) was read */
    bool body_queued; /* its body and dot are written or queued */
} tx;

struct smtpcli {
    struct event_base *base;
    struct bufferevent *bev;
    /* Plain connections write through (see cli_flush): commands collect
     * here and leave with one writev; corked while a pipelined group is
     * being built. Once TLS starts, writes go to the filter instead. */
    struct evbuffer *outq;
    struct evbuffer *inq; /* replies not yet parsed (plain connections) */
    struct event *rev;    /* plain connections read for themselves (net_read_some) */
    bool corked, filtered;
    struct bufferevent *dead_bev; /* closed, waiting to be freed outside its callbacks */
    struct event *timer, *defer_ev, *gc_ev;
    cli_state state;
    int64_t state_since, last_progress;
    char detail[300];
    char cmd[600]; /* connection-phase command awaiting its reply, with CRLF */

    /* parameters */
    char *ehlo_domain, *hostname, *label, *session_id, *auth_user, *auth_pass;
    smtpcli_tls_mode tls_mode;
    bool enable_pipelining, enable_rset, ignore_8bit;
    bool allow_auth_plain, allow_auth_unverified;
    smtpcli_timeouts to;
    SSL_CTX *tls_ctx;

    struct sockaddr_storage peer, local;
    socklen_t peer_len, local_len;
    char peer_ip[INET6_ADDRSTRLEN];
    char peer_str[INET6_ADDRSTRLEN + 8]; /* ip:port */
    char *peer_desc;                     /* "name [ip]:port" or "ip:port" */
    char logid[80];                      /* "session=<id>", first in every diagnostic */

    smtpcli_ready_fn on_ready;
    void *ready_ud;
    smtpcli_closed_fn on_closed;
    void *closed_ud;
    smtpcli_body_fn on_body;
    void *body_ud;

    smtpcli_caps caps;
    bool tried_helo;
    bool tls_up;
    smtpcli_tls_info tls;
    char *tls_cipher, *tls_version;
    char **subject;
    size_t n_subject;

    bool use_rset; /* RSET before the next MAIL */
    bool released; /* the owner let go: no more callbacks */
    bool reaping;  /* free from gc_ev */
    bool in_input;
    bool ready_reported;
    smtpcli_response last; /* last EHLO/HELO/AUTH response */

    /* a failure to report from the deferred event */
    int pending_err;
    smtpcli_response pending_resp;

    tx *tx;
    /* smtpcli_send_next: the transaction after tx; its commands go out
     * behind tx's dot. tail_after_body: bytes written behind the last body
     * queued, so that "the body is out" is "no more than that pending". */
    tx *next;
    size_t tail_after_body;
    trace_conn *trace; /* NULL unless traced */
    bool trace_mute;   /* AUTH credentials are not traced */
};

static void cli_read_cb(struct bufferevent *bev, void *arg);
static void cli_write_cb(struct bufferevent *bev, void *arg);
static void cli_event_cb(struct bufferevent *bev, short what, void *arg);
static void cli_process_input(smtpcli *c);
static void tx_finish(smtpcli *c, const smtpcli_response *failure);
static void tx_continue(smtpcli *c, const struct tx *prev, const smtpcli_response *failure);
static int tx_write_behind(smtpcli *c);
static int tx_write_group(smtpcli *c, struct tx *t);
static void tx_build_cmds(smtpcli *c, struct tx *t, bool rset);

/* ---- responses ---- */

static void resp_clear(smtpcli_response *r)
{
    free(r->content);
    free(r->command);
    memset(r, 0, sizeof(*r));
}

static void resp_copy(smtpcli_response *dst, const smtpcli_response *src)
{
    resp_clear(dst);
    dst->code = src->code;
    dst->enh_class = src->enh_class;
    dst->enh_subject = src->enh_subject;
    dst->enh_detail = src->enh_detail;
    dst->content = xstrdup(src->content ? src->content : "");
    dst->command = xstrdup(src->command);
}

/* Converts a parsed reply; command (may be NULL) is what it answers. */
static void resp_from_reply(smtpcli_response *dst, const smtpcli_reply *r, const char *command)
{
    resp_clear(dst);
    dst->code = r->code;
    dst->enh_class = r->enh_class;
    dst->enh_subject = r->enh_subject;
    dst->enh_detail = r->enh_detail;
    dst->content = xstrdup(r->text);
    for (char *p = dst->content; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
    dst->command = xstrdup(command);
}

static void resp_internal(smtpcli_response *dst, int code, int enh_class, int enh_subject,
                          int enh_detail, const char *command, const char *fmt, ...)
    __attribute__((format(printf, 7, 8)));
static void resp_internal(smtpcli_response *dst, int code, int enh_class, int enh_subject,
                          int enh_detail, const char *command, const char *fmt, ...)
{
    resp_clear(dst);
    char body[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(body, sizeof(body), fmt, ap);
    va_end(ap);
    dst->code = code;
    dst->enh_class = enh_class;
    dst->enh_subject = enh_subject;
    dst->enh_detail = enh_detail;
    dst->content = xasprintf("KumoMTA internal: %s", body);
    dst->command = xstrdup(command);
}

static bool is_2xx(const smtpcli_response *r)
{
    return r->code >= 200 && r->code < 300;
}

/* "MAIL FROM:<a>" from "MAIL FROM:<a>\r\n", for messages; "NONE" for NULL. */
static void cmd_for_err(const char *cmd, char *buf, size_t buflen)
{
    if (!cmd) {
        snprintf(buf, buflen, "NONE");
        return;
    }
    size_t n = strcspn(cmd, "\r\n");
    snprintf(buf, buflen, "%.*s", (int)n, cmd);
}

/* ---- state ---- */

static int64_t state_timeout(const smtpcli *c, cli_state st)
{
    switch (st) {
    case CS_CONNECTING:
        return c->to.connect_ns;
    case CS_BANNER:
        return c->to.banner_ns;
    case CS_EHLO:
    case CS_HELO:
        return c->to.ehlo_ns;
    case CS_STARTTLS:
    case CS_TLS_HANDSHAKE:
        return c->to.starttls_ns;
    case CS_AUTH:
        return c->to.auth_ns;
    case CS_READY:
    case CS_QUIT:
        return c->to.idle_ns;
    case CS_RSET:
        return c->to.rset_ns;
    case CS_MAIL:
        return c->to.mail_from_ns;
    case CS_RCPT:
        return c->to.rcpt_to_ns;
    case CS_DATA:
    case CS_BODY:
        return c->to.data_ns;
    case CS_DATA_DOT:
        return c->to.data_dot_ns;
    case CS_CLOSED:
        return 0;
    }
    return 0;
}

static void arm_timer(smtpcli *c, int64_t ns)
{
    if (ns <= 0) {
        if (event_del(c->timer) != 0)
            DWARN(CMOD, "%s event_del failed", c->logid);
        return;
    }
    struct timeval tv = {.tv_sec = (time_t)(ns / 1000000000LL),
                         .tv_usec = (suseconds_t)((ns % 1000000000LL) / 1000)};
    if (evtimer_add(c->timer, &tv) != 0)
        DERROR(CMOD, "%s cannot arm the %s timer", c->logid, state_names[c->state]);
}

/* The one place the state changes. Also called with the same state when the
 * next reply of a pipelined group becomes the one awaited: that is progress
 * and restarts the timer with that command's timeout. */
static void smtpcli_set_state(smtpcli *c, cli_state st)
{
    int64_t now = clock_mono_ns();
    if (c->state != st) {
        DTRACE(CMOD, "%s peer=%s state %s -> %s", c->logid, c->peer_str, state_names[c->state],
               state_names[st]);
        c->state = st;
        c->state_since = now;
    }
    c->last_progress = now;
    arm_timer(c, state_timeout(c, st));
}

static void set_detail(smtpcli *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_detail(smtpcli *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->detail, sizeof(c->detail), fmt, ap);
    va_end(ap);
    /* commands end in CRLF; the detail is one line */
    c->detail[strcspn(c->detail, "\r\n")] = 0;
}

/* ---- teardown ---- */

static void tx_free(tx *t);

static void cli_free(smtpcli *c)
{
    tx_free(c->tx);
    tx_free(c->next);
    if (c->outq)
        evbuffer_free(c->outq);
    if (c->inq)
        evbuffer_free(c->inq);
    if (c->rev)
        event_free(c->rev); /* deleted by conn_close, before the socket closes */
    if (c->bev)
        bufferevent_free(c->bev);
    if (c->dead_bev)
        bufferevent_free(c->dead_bev);
    event_free(c->timer);
    event_free(c->defer_ev);
    event_free(c->gc_ev);
    resp_clear(&c->last);
    resp_clear(&c->pending_resp);
    free(c->tls_cipher);
    free(c->tls_version);
    for (size_t i = 0; i < c->n_subject; i++)
        free(c->subject[i]);
    free(c->subject);
    free(c->ehlo_domain);
    free(c->hostname);
    free(c->label);
    free(c->session_id);
    if (c->auth_pass)
        OPENSSL_cleanse(c->auth_pass, strlen(c->auth_pass));
    free(c->auth_user);
    free(c->auth_pass);
    free(c->peer_desc);
    trace_conn_unref(c->trace);
    free(c);
}

/* Frees the closed bufferevent and, once released, the session. Runs from
 * the loop, never inside a callback of what it frees. */
static void cli_gc_cb(evutil_socket_t fd, short what, void *arg)
{
    smtpcli *c = arg;
    if (c->dead_bev) {
        bufferevent_free(c->dead_bev);
        c->dead_bev = NULL;
    }
    if (c->reaping)
        cli_free(c);
}

static void gc_soon(smtpcli *c)
{
    event_active(c->gc_ev, EV_TIMEOUT, 0);
}

/* Stops all I/O on the connection; the bufferevent is freed from gc_ev. */
static void conn_close(smtpcli *c)
{
    if (c->rev)
        event_del(c->rev);
    if (c->bev) {
        bufferevent_setcb(c->bev, NULL, NULL, NULL, NULL);
        if (bufferevent_disable(c->bev, EV_READ | EV_WRITE) != 0)
            DWARN(CMOD, "%s bufferevent_disable failed", c->logid);
        c->dead_bev = c->bev;
        c->bev = NULL;
        gc_soon(c);
        if (c->trace)
            trace_conn_emit(c->trace, TRACE_CLOSED, NULL, NULL, 0);
    }
    smtpcli_set_state(c, CS_CLOSED);
}

static void cli_reap_soon(smtpcli *c)
{
    c->released = true;
    c->reaping = true;
    if (c->bev)
        conn_close(c);
    if (event_del(c->timer) != 0)
        DWARN(CMOD, "%s event_del failed", c->logid);
    gc_soon(c);
}

/* ---- writing ---- */

/* Writes what is queued in outq through (net/wthrough.h); the bufferevent
 * keeps EV_WRITE on and finishes whatever is left. */
static void cli_flush(smtpcli *c)
{
    if (!c->bev || c->filtered || c->corked)
        return;
    (void)net_write_through(c->outq, c->bev);
}

/* Bytes of ours still waiting to be written. */
static size_t cli_out_len(smtpcli *c)
{
    if (!c->bev)
        return 0;
    return (c->filtered ? 0 : evbuffer_get_length(c->outq)) +
           evbuffer_get_length(bufferevent_get_output(c->bev));
}

static int cli_write(smtpcli *c, const char *s, size_t n)
{
    if (!c->bev)
        return KERR_IO;
    if (c->trace && !c->trace_mute)
        trace_conn_emit(c->trace, TRACE_WRITE, NULL, s, n);
    if (c->filtered)
        return bufferevent_write(c->bev, s, n) != 0 ? KERR_NOMEM : 0;
    if (evbuffer_add(c->outq, s, n) != 0)
        return KERR_NOMEM;
    cli_flush(c);
    return 0;
}

/* ---- connection phase ---- */

static bool in_connect_phase(cli_state st)
{
    return st <= CS_AUTH;
}

/* Reports the end of the connection phase: closes on failure, and tells the
 * owner once. resp is copied. */
static void fail_ready(smtpcli *c, int err, const smtpcli_response *resp)
{
    DDEBUG(CMOD, "%s peer=%s connection failed in %s: %d %s", c->logid, c->peer_str,
           state_names[c->state], resp->code, resp->content ? resp->content : "");
    conn_close(c);
    if (c->released || c->ready_reported)
        return;
    c->ready_reported = true;
    c->on_ready(c, err, resp, c->ready_ud);
}

static void fail_ready_internal(smtpcli *c, int err, int code, const char *command, const char *fmt,
                                ...) __attribute__((format(printf, 5, 6)));
static void fail_ready_internal(smtpcli *c, int err, int code, const char *command, const char *fmt,
                                ...)
{
    char body[1800];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(body, sizeof(body), fmt, ap);
    va_end(ap);
    smtpcli_response r = {0};
    if (code == 421)
        resp_internal(&r, 421, 4, 4, 2, command, "failed to connect to %s: %s", c->peer_desc, body);
    else
        resp_internal(&r, code, 0, 0, 0, command, "failed to connect to %s: %s", c->peer_desc,
                      body);
    fail_ready(c, err, &r);
    resp_clear(&r);
}

static void send_conn_cmd(smtpcli *c, cli_state st, const char *detail, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void send_conn_cmd(smtpcli *c, cli_state st, const char *detail, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->cmd, sizeof(c->cmd), fmt, ap);
    va_end(ap);
    set_detail(c, "%s", detail ? detail : c->cmd);
    smtpcli_set_state(c, st);
    if (cli_write(c, c->cmd, strlen(c->cmd)) != 0)
        fail_ready_internal(c, KERR_NOMEM, 400, c->cmd, "out of memory writing a command");
}

static void report_ready(smtpcli *c)
{
    set_detail(c, "idle");
    smtpcli_set_state(c, CS_READY);
    DDEBUG(CMOD, "%s peer=%s ready tls=%s esmtp=%d pipelining=%d", c->logid, c->peer_str,
           c->tls_up ? c->tls.protocol_version : "no", c->caps.esmtp, c->caps.pipelining);
    if (c->released || c->ready_reported)
        return;
    c->ready_reported = true;
    c->on_ready(c, 0, &c->last, c->ready_ud);
}

static void start_auth_or_ready(smtpcli *c)
{
    if (!c->auth_user) {
        report_ready(c);
        return;
    }
    if (!c->tls_up && !c->allow_auth_plain) {
        fail_ready_internal(c, KERR_REJECTED, 400, NULL,
                            "TLS is not enabled and AUTH PLAIN is required. Skipping");
        return;
    }
    if (c->tls_up && !c->tls.authenticated && !c->allow_auth_unverified) {
        fail_ready_internal(c, KERR_REJECTED, 400, NULL,
                            "TLS peer certificate was not validated and AUTH PLAIN requires "
                            "a valid certificate. Skipping");
        return;
    }
    /* RFC 4616: [authzid] NUL authcid NUL passwd, sent as the initial response */
    size_t ul = strlen(c->auth_user), pl = c->auth_pass ? strlen(c->auth_pass) : 0;
    size_t raw_len = ul + pl + 2;
    unsigned char *raw = malloc(raw_len);
    char *b64 = malloc(4 * ((raw_len + 2) / 3) + 1);
    if (!raw || !b64)
        abort();
    raw[0] = 0;
    memcpy(raw + 1, c->auth_user, ul);
    raw[1 + ul] = 0;
    if (pl)
        memcpy(raw + 2 + ul, c->auth_pass, pl);
    int bl = EVP_EncodeBlock((unsigned char *)b64, raw, (int)raw_len);
    OPENSSL_cleanse(raw, raw_len);
    free(raw);
    if (bl < 0) {
        free(b64);
        fail_ready_internal(c, KERR_IO, 400, NULL, "cannot encode the AUTH PLAIN credentials");
        return;
    }
    /* the response's command names the mechanism only: it ends up in logs */
    snprintf(c->cmd, sizeof(c->cmd), "AUTH PLAIN\r\n");
    set_detail(c, "AUTH PLAIN");
    smtpcli_set_state(c, CS_AUTH);
    if (c->trace)
        trace_conn_emit(c->trace, TRACE_WRITE, NULL, "AUTH PLAIN <redacted>\r\n", 23);
    c->trace_mute = true;
    int rc = cli_write(c, "AUTH PLAIN ", 11);
    if (!rc)
        rc = cli_write(c, b64, (size_t)bl);
    if (!rc)
        rc = cli_write(c, "\r\n", 2);
    c->trace_mute = false;
    OPENSSL_cleanse(b64, (size_t)bl);
    free(b64);
    if (rc)
        fail_ready_internal(c, rc, 400, c->cmd, "out of memory writing AUTH");
}

static void after_ehlo(smtpcli *c)
{
    if (!c->tls_up && c->tls_mode != SMTPCLI_TLS_DISABLED) {
        if (c->caps.starttls) {
            send_conn_cmd(c, CS_STARTTLS, NULL, "STARTTLS\r\n");
            return;
        }
        if (c->tls_mode == SMTPCLI_TLS_REQUIRED || c->tls_mode == SMTPCLI_TLS_REQUIRED_INSECURE) {
            fail_ready_internal(c, KERR_REJECTED, 400, NULL,
                                "tls policy is %s but STARTTLS is not advertised",
                                smtpcli_tls_mode_name(c->tls_mode));
            return;
        }
    }
    start_auth_or_ready(c);
}

/* EHLO keywords (RFC 5321 §4.1.1.1): every line after the first. */
static void parse_caps(smtpcli *c, const char *text)
{
    memset(&c->caps, 0, sizeof(c->caps));
    c->caps.esmtp = true;
    const char *p = strchr(text, '\n');
    while (p) {
        p++;
        const char *end = strchr(p, '\n');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        char line[512];
        snprintf(line, sizeof(line), "%.*s", (int)n, p);
        char *sp = line + strcspn(line, " =");
        char sep = *sp;
        *sp = 0;
        const char *param = sep ? sp + 1 : "";
        if (strcasecmp(line, "PIPELINING") == 0)
            c->caps.pipelining = true;
        else if (strcasecmp(line, "STARTTLS") == 0)
            c->caps.starttls = true;
        else if (strcasecmp(line, "8BITMIME") == 0)
            c->caps.eightbitmime = true;
        else if (strcasecmp(line, "SMTPUTF8") == 0)
            c->caps.smtputf8 = true;
        else if (strcasecmp(line, "ENHANCEDSTATUSCODES") == 0)
            c->caps.enhancedstatuscodes = true;
        else if (strcasecmp(line, "SIZE") == 0)
            c->caps.max_size = strtoull(param, NULL, 10);
        else if (strcasecmp(line, "AUTH") == 0) {
            /* "AUTH LOGIN PLAIN", or the old "AUTH=PLAIN" form */
            char mechs[512];
            snprintf(mechs, sizeof(mechs), "%s", param);
            for (char *save = NULL, *m = strtok_r(mechs, " ", &save); m;
                 m = strtok_r(NULL, " ", &save))
                if (strcasecmp(m, "PLAIN") == 0)
                    c->caps.auth_plain = true;
        }
        p = end;
    }
}

static void on_ehlo_reply(smtpcli *c, const smtpcli_reply *r)
{
    resp_from_reply(&c->last, r, c->cmd);
    if (r->code == 250) {
        parse_caps(c, r->text);
        after_ehlo(c);
        return;
    }
    if (r->code >= 500 && !c->tried_helo) {
        /* RFC 5321 §3.2: a server that refuses EHLO may still speak HELO */
        c->tried_helo = true;
        send_conn_cmd(c, CS_HELO, NULL, "HELO %s\r\n", c->ehlo_domain);
        return;
    }
    fail_ready(c, KERR_REJECTED, &c->last);
}

static void on_helo_reply(smtpcli *c, const smtpcli_reply *r)
{
    resp_from_reply(&c->last, r, c->cmd);
    if (r->code != 250) {
        fail_ready(c, KERR_REJECTED, &c->last);
        return;
    }
    memset(&c->caps, 0, sizeof(c->caps));
    after_ehlo(c);
}

static bool is_ip_literal(const char *s)
{
    unsigned char buf[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1;
}

static void start_tls(smtpcli *c)
{
    bool insecure = c->tls_mode == SMTPCLI_TLS_OPPORTUNISTIC_INSECURE ||
                    c->tls_mode == SMTPCLI_TLS_REQUIRED_INSECURE;
    const char *name = c->hostname ? c->hostname : c->peer_ip;
    char ebuf[300];
    SSL_CTX *ctx = c->tls_ctx, *own = NULL;
    if (!ctx) {
        own = smtpcli_tls_ctx_new(NULL, ebuf, sizeof(ebuf));
        if (!own) {
            fail_ready_internal(c, KERR_IO, 400, c->cmd, "%s", ebuf);
            return;
        }
        ctx = own;
    }
    SSL *ssl = SSL_new(ctx);
    SSL_CTX_free(own); /* the SSL holds its own reference */
    if (!ssl) {
        ssl_err_text(ebuf, sizeof(ebuf));
        fail_ready_internal(c, KERR_IO, 400, c->cmd, "SSL_new: %s", ebuf);
        return;
    }
    SSL_set_verify(ssl, insecure ? SSL_VERIFY_NONE : SSL_VERIFY_PEER, NULL);
    bool ip = is_ip_literal(name);
    int ok = 1;
    if (!ip)
        ok = SSL_set_tlsext_host_name(ssl, name) == 1;
    if (ok && !insecure) {
        if (ip)
            ok = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name) == 1;
        else
            ok = SSL_set1_host(ssl, name) == 1;
    }
    if (!ok) {
        ssl_err_text(ebuf, sizeof(ebuf));
        SSL_free(ssl);
        fail_ready_internal(c, KERR_IO, 400, c->cmd, "configuring TLS for %s: %s", name, ebuf);
        return;
    }
    /* Anything the server sent after its 220 was sent in clear text and
     * must not be taken as coming from inside TLS (the CVE-2011-0411 class
     * of injection), so it is dropped. */
    event_del(c->rev); /* from now on the TLS filter reads */
    struct evbuffer *in = c->inq;
    if (evbuffer_drain(in, evbuffer_get_length(in)) != 0)
        DWARN(CMOD, "%s evbuffer_drain failed", c->logid);
    /* the body watermark moves up to the filter; TLS drives the socket */
    bufferevent_setwatermark(c->bev, EV_WRITE, 0, 0);
    struct bufferevent *tb = bufferevent_openssl_filter_new(
        c->base, c->bev, ssl, BUFFEREVENT_SSL_CONNECTING, BEV_OPT_CLOSE_ON_FREE);
    if (!tb) {
        /* libevent 2.1 may or may not have freed ssl on this path (it
         * depends on where it failed); leaking it on this out-of-memory
         * path beats a double free. */
        fail_ready_internal(c, KERR_NOMEM, 400, c->cmd, "cannot start TLS: out of memory");
        return;
    }
    c->bev = tb;
    c->filtered = true;
    bufferevent_openssl_set_allow_dirty_shutdown(tb, 1);
    bufferevent_setwatermark(tb, EV_WRITE, BODY_WRITE_LOWAT, 0);
    bufferevent_setcb(tb, cli_read_cb, cli_write_cb, cli_event_cb, c);
    if (bufferevent_enable(tb, EV_READ | EV_WRITE) != 0) {
        fail_ready_internal(c, KERR_IO, 400, c->cmd, "cannot start TLS: bufferevent_enable");
        return;
    }
    set_detail(c, "TLS handshake with %s", name);
    smtpcli_set_state(c, CS_TLS_HANDSHAKE);
}

static void collect_tls_info(smtpcli *c)
{
    SSL *ssl = bufferevent_openssl_get_ssl(c->bev);
    bool insecure = c->tls_mode == SMTPCLI_TLS_OPPORTUNISTIC_INSECURE ||
                    c->tls_mode == SMTPCLI_TLS_REQUIRED_INSECURE;
    const SSL_CIPHER *ci = ssl ? SSL_get_current_cipher(ssl) : NULL;
    const char *cn = ci ? SSL_CIPHER_standard_name(ci) : NULL;
    if (ci && !cn)
        cn = SSL_CIPHER_get_name(ci);
    c->tls_cipher = xstrdup(cn ? cn : "");
    c->tls_version = xstrdup(ssl ? SSL_get_version(ssl) : "");
    c->tls.cipher = c->tls_cipher;
    c->tls.protocol_version = c->tls_version;
    c->tls.provider_name = "openssl";
    c->tls.authenticated = ssl && !insecure && SSL_get_verify_result(ssl) == X509_V_OK;
    X509 *cert = ssl ? SSL_get1_peer_certificate(ssl) : NULL;
    if (cert) {
        X509_NAME *nm = X509_get_subject_name(cert);
        int n = nm ? X509_NAME_entry_count(nm) : 0;
        if (n > 0) {
            c->subject = calloc((size_t)n, sizeof(char *));
            if (!c->subject)
                abort();
        }
        for (int i = 0; i < n; i++) {
            X509_NAME_ENTRY *e = X509_NAME_get_entry(nm, i);
            int nid = e ? OBJ_obj2nid(X509_NAME_ENTRY_get_object(e)) : NID_undef;
            const char *sn = nid != NID_undef ? OBJ_nid2sn(nid) : NULL;
            unsigned char *u = NULL;
            int ul = sn ? ASN1_STRING_to_UTF8(&u, X509_NAME_ENTRY_get_data(e)) : -1;
            if (ul >= 0)
                c->subject[c->n_subject++] = xasprintf("%s=%.*s", sn, ul, (const char *)u);
            OPENSSL_free(u);
        }
        X509_free(cert);
    }
    c->tls.subject_name = (const char *const *)c->subject;
    c->tls.n_subject_name = c->n_subject;
}

static void on_tls_up(smtpcli *c)
{
    c->tls_up = true;
    collect_tls_info(c);
    if (c->trace) {
        char msg[300];
        int n = snprintf(msg, sizeof(msg), "STARTTLS handshake complete: %s %s verified=%s",
                         c->tls.protocol_version, c->tls.cipher,
                         c->tls.authenticated ? "true" : "false");
        trace_conn_emit(c->trace, TRACE_DIAGNOSTIC, "INFO", msg,
                        (size_t)n < sizeof(msg) ? (size_t)n : sizeof(msg) - 1);
    }
    DDEBUG(CMOD, "%s peer=%s TLS up: %s %s verified=%d", c->logid, c->peer_str,
           c->tls.protocol_version, c->tls.cipher, c->tls.authenticated);
    /* RFC 3207 §4.2: forget what the server said before TLS; EHLO again */
    memset(&c->caps, 0, sizeof(c->caps));
    c->tried_helo = false;
    send_conn_cmd(c, CS_EHLO, NULL, "EHLO %s\r\n", c->ehlo_domain);
}

static void on_connected(smtpcli *c)
{
    c->local_len = sizeof(c->local);
    if (getsockname(bufferevent_getfd(c->bev), (struct sockaddr *)&c->local, &c->local_len) != 0)
        c->local_len = 0;
    if (c->trace) {
        char full[INET6_ADDRSTRLEN + 16];
        net_format_addr((struct sockaddr *)&c->local, NULL, 0, full, sizeof(full));
        if (c->local_len)
            trace_conn_set(c->trace, "source_address", json_string(full));
        trace_conn_emit(c->trace, TRACE_CONNECTED, NULL, NULL, 0);
    }
    /* the bufferevent writes; replies are read by cli_rev_cb */
    if (bufferevent_enable(c->bev, EV_WRITE) != 0 || event_add(c->rev, NULL) != 0) {
        fail_ready_internal(c, KERR_IO, 400, NULL, "bufferevent_enable failed");
        return;
    }
    c->cmd[0] = 0;
    set_detail(c, "banner");
    smtpcli_set_state(c, CS_BANNER);
}

/* ---- transactions ---- */

static void tx_free(tx *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < t->n; i++) {
        resp_clear(&t->res[i].response);
        free(t->rcpts[i]);
    }
    for (size_t i = 0; i < t->n_cmds; i++)
        free(t->cmds[i].line);
    resp_clear(&t->rset);
    resp_clear(&t->mail);
    resp_clear(&t->data);
    resp_clear(&t->dot);
    if (t->body)
        evbuffer_free(t->body);
    free(t->res);
    free(t->rcpts);
    free(t->cmds);
    free(t);
}

static cli_state state_for_cmd(cmd_kind k)
{
    switch (k) {
    case CK_RSET:
        return CS_RSET;
    case CK_MAIL:
        return CS_MAIL;
    case CK_RCPT:
        return CS_RCPT;
    case CK_DATA:
        return CS_DATA;
    }
    return CS_MAIL;
}

/* Makes cmds[recvd] the awaited reply. */
static void tx_await(smtpcli *c)
{
    tx *t = c->tx;
    txcmd *cmd = &t->cmds[t->recvd];
    int len = (int)strcspn(cmd->line, "\r\n");
    if (cmd->kind == CK_RCPT)
        set_detail(c, "%.*s (%zu/%zu)", len, cmd->line, cmd->rcpt + 1, t->n);
    else
        set_detail(c, "%.*s", len, cmd->line);
    smtpcli_set_state(c, state_for_cmd(cmd->kind));
}

/* Transport failure inside a transaction: every recipient still without a
 * definite answer gets `failure`. */
static void tx_transport_fail(smtpcli *c, const smtpcli_response *failure)
{
    DDEBUG(CMOD, "%s peer=%s transaction failed in %s: %s", c->logid, c->peer_str,
           state_names[c->state], failure->content);
    conn_close(c);
    tx_finish(c, failure);
}

static void tx_write_failed(smtpcli *c, int rc)
{
    smtpcli_response r = {0};
    resp_internal(&r, 400, 0, 0, 0, NULL, "failed to send message: %s", kerr_str(rc));
    tx_transport_fail(c, &r);
    resp_clear(&r);
}

/* Lock-step: writes the next command if the replies so far allow it, or
 * finishes. Pipelined: everything is written already. */
static void tx_advance(smtpcli *c)
{
    tx *t = c->tx;
    if (t->recvd < t->sent) {
        tx_await(c);
        return;
    }
    const txcmd *prev = &t->cmds[t->recvd - 1];
    if ((prev->kind == CK_RSET && !is_2xx(&t->rset)) ||
        (prev->kind == CK_MAIL && !is_2xx(&t->mail))) {
        tx_finish(c, NULL);
        return;
    }
    const txcmd *next = &t->cmds[t->sent];
    if (next->kind == CK_DATA && t->n_accepted == 0) {
        tx_finish(c, NULL);
        return;
    }
    int rc = cli_write(c, next->line, strlen(next->line));
    if (rc) {
        tx_write_failed(c, rc);
        return;
    }
    t->sent++;
    tx_await(c);
}

static void tx_after_data(smtpcli *c)
{
    tx *t = c->tx;
    bool anyone = (!t->rset.code || is_2xx(&t->rset)) && is_2xx(&t->mail) && t->n_accepted > 0;
    if (t->data.code == 354 && !anyone) {
        /* RFC 2920 §3.1: the server took DATA although nobody can receive
         * the message (it cannot know we pipelined); a lone dot ends it. */
        t->abandon = true;
        int rc = cli_write(c, ".\r\n", 3);
        if (rc) {
            tx_write_failed(c, rc);
            return;
        }
        set_detail(c, ".");
        smtpcli_set_state(c, CS_DATA_DOT);
        return;
    }
    if (t->data.code != 354) {
        tx_finish(c, NULL);
        return;
    }
    size_t len = evbuffer_get_length(t->body);
    if (c->trace) {
        size_t shown = len < TRACE_DATA_MAX ? len : TRACE_DATA_MAX;
        const char *p = (const char *)evbuffer_pullup(t->body, (ev_ssize_t)shown);
        if (p)
            trace_conn_emit(c->trace, TRACE_WRITE, NULL, p, shown);
    }
    if (!c->next && c->on_body && !c->released && smtpcli_pipelines(c))
        c->on_body(c, c->body_ud); /* may queue the next transaction */
    c->tail_after_body = 0;
    t->body_queued = true;
    c->corked = true;
    if (c->filtered ? bufferevent_write_buffer(c->bev, t->body) != 0
                    : evbuffer_add_buffer(c->outq, t->body) != 0) {
        c->corked = false;
        tx_write_failed(c, KERR_NOMEM);
        return;
    }
    /* the next transaction's commands leave in the same write */
    int rc = tx_write_behind(c);
    c->corked = false;
    if (rc) {
        tx_write_failed(c, rc);
        return;
    }
    cli_flush(c);
    set_detail(c, "sending %zu bytes of message data", len);
    smtpcli_set_state(c, CS_BODY);
    if (!c->filtered && cli_out_len(c) <= c->tail_after_body) {
        /* the kernel took it all at once: no write callback will come */
        set_detail(c, ".");
        smtpcli_set_state(c, CS_DATA_DOT);
    }
}

static void tx_on_reply(smtpcli *c, const smtpcli_reply *r)
{
    tx *t = c->tx;
    t->any_reply = true;
    if (r->code == 421)
        t->saw_421 = true;
    if (c->state == CS_BODY || c->state == CS_DATA_DOT) {
        /* A reply while the body is still going out can only be the
         * server giving up on it: take it as the answer to the dot, and
         * since the rest of the body would now be read as commands, the
         * connection is not used again. (Only commands written behind the
         * dot may still be pending: then the body is out.) */
        if (c->state == CS_BODY && cli_out_len(c) > c->tail_after_body)
            t->desync = true;
        resp_from_reply(&t->dot, r, ".\r\n");
        tx_finish(c, NULL);
        return;
    }
    txcmd *cmd = &t->cmds[t->recvd++];
    switch (cmd->kind) {
    case CK_RSET:
        resp_from_reply(&t->rset, r, cmd->line);
        break;
    case CK_MAIL:
        resp_from_reply(&t->mail, r, cmd->line);
        break;
    case CK_RCPT: {
        smtpcli_rcpt_result *rr = &t->res[cmd->rcpt];
        resp_from_reply(&rr->response, r, cmd->line);
        rr->accepted = r->code >= 200 && r->code < 300;
        if (rr->accepted)
            t->n_accepted++;
        break;
    }
    case CK_DATA:
        resp_from_reply(&t->data, r, cmd->line);
        tx_after_data(c);
        return;
    }
    tx_advance(c);
}

/* Ends the transaction: decides each recipient's response, leaves the
 * session ready (or closed) and calls done. failure is non-NULL when the
 * connection broke. */
static void tx_finish(smtpcli *c, const smtpcli_response *failure)
{
    tx *t = c->tx;
    bool rset_failed = t->rset.code && !is_2xx(&t->rset);
    bool mail_failed = t->mail.code && !is_2xx(&t->mail);
    for (size_t i = 0; i < t->n; i++) {
        smtpcli_rcpt_result *rr = &t->res[i];
        if (rset_failed) {
            resp_copy(&rr->response, &t->rset);
        } else if (mail_failed) {
            resp_copy(&rr->response, &t->mail);
        } else if (rr->response.code && !rr->accepted) {
            /* its own refusal stands */
        } else if (rr->accepted && t->dot.code && !t->abandon) {
            resp_copy(&rr->response, &t->dot);
        } else if (rr->accepted && t->data.code && t->data.code != 354) {
            resp_copy(&rr->response, &t->data);
        } else if (failure) {
            resp_copy(&rr->response, failure);
        } else if (!rr->response.code) {
            /* cannot happen: every path above answers; keep the owner safe */
            resp_internal(&rr->response, 400, 0, 0, 0, NULL,
                          "failed to send message: no response recorded");
        }
    }
    bool clean = !failure && !t->abandon && is_2xx(&t->dot);
    /* KumoMTA: RSET after anything unusual; after a clean send only if
     * enable_rset (postfix may count RSET as junk, so the first message
     * of a connection never starts with one). */
    c->use_rset = clean ? c->enable_rset : true;
    tx *nx = c->next;
    c->next = NULL;
    if (!failure && c->bev) {
        if (t->saw_421 || t->desync) {
            conn_close(c);
        } else if (!nx) {
            set_detail(c, "idle");
            smtpcli_set_state(c, CS_READY);
        }
    }
    smtpcli_result res = {.rcpts = t->res,
                          .n_rcpts = t->n,
                          .transport_failed = failure != NULL,
                          .unanswered = failure && t->behind && !t->any_reply};
    /* The next transaction is the session's before done runs, so that the
     * owner can queue the one after it from there. */
    c->tx = nx;
    if (!c->released)
        t->done(c, &res, t->ud);
    if (nx && !c->released && c->tx == nx)
        tx_continue(c, t, failure);
    tx_free(t);
}

/* prev ended and nx (queued behind it) is the session's transaction: it
 * waits for its replies, starts now, or fails with the connection. */
static void tx_continue(smtpcli *c, const tx *prev, const smtpcli_response *failure)
{
    tx *nx = c->tx;
    if (!c->bev) {
        /* the connection ended with prev: nothing of nx was answered */
        smtpcli_response r = {0};
        if (failure)
            resp_copy(&r, failure);
        else if (prev->saw_421 && prev->dot.code == 421)
            resp_copy(&r, &prev->dot);
        else
            resp_internal(&r, 400, 0, 0, 0, NULL,
                          "failed to send message: the connection closed after the previous "
                          "message");
        tx_finish(c, &r);
        resp_clear(&r);
        return;
    }
    if (nx->finish_now) {
        event_active(c->defer_ev, EV_TIMEOUT, 0);
        return;
    }
    if (nx->sent > 0) {
        tx_await(c);
        return;
    }
    /* prev ended before its body: nx starts as smtpcli_send would */
    tx_build_cmds(c, nx, c->use_rset);
    c->use_rset = true;
    int rc = tx_write_group(c, nx);
    if (rc) {
        tx_write_failed(c, rc);
        return;
    }
    tx_await(c);
}

/* A transaction for sender/rcpts/data, not yet the session's: copies,
 * the encoded body, MAIL, RCPT and DATA lines (cmds[0..n+2); RSET is
 * added by tx_build_cmds), and KumoMTA's 8-bit checks (finish_now). */
static int tx_new(smtpcli *c, const char *sender, const char *const *rcpts, size_t n,
                  const char *data, size_t len, smtpcli_done_fn done, void *ud, tx **out)
{
    if (n == 0 || !done || !sender || has_crlf(sender))
        return KERR_INVAL;
    for (size_t i = 0; i < n; i++)
        if (!rcpts[i] || has_crlf(rcpts[i]))
            return KERR_INVAL;
    tx *t = calloc(1, sizeof(*t));
    if (!t)
        return KERR_NOMEM;
    t->done = done;
    t->ud = ud;
    t->n = n;
    t->res = calloc(n, sizeof(*t->res));
    t->rcpts = calloc(n, sizeof(char *));
    t->cmds = calloc(n + 3, sizeof(*t->cmds));
    t->body = evbuffer_new();
    bool eightbit = false;
    if (!t->res || !t->rcpts || !t->cmds || !t->body ||
        smtpcli_encode_body(t->body, data, len, &eightbit) != 0) {
        tx_free(t);
        return KERR_NOMEM;
    }
    bool env8 = is_8bit(sender);
    for (size_t i = 0; i < n; i++) {
        t->rcpts[i] = xstrdup(rcpts[i]);
        t->res[i].recipient = t->rcpts[i];
        env8 |= is_8bit(rcpts[i]);
    }
    *out = t;

    /* KumoMTA's 8-bit checks, before anything is written */
    const char *body_param = "", *utf8_param = "";
    if (eightbit) {
        if (c->caps.eightbitmime)
            body_param = " BODY=8BITMIME";
        else if (!c->ignore_8bit) {
            resp_internal(&t->mail, 554, 5, 6, 3, NULL,
                          "DATA is 8bit, destination does not support 8BITMIME. Conversion via "
                          "msg:check_fix_conformance during reception is required");
            t->finish_now = true;
        }
    }
    if (env8 && !t->finish_now) {
        if (c->caps.smtputf8)
            utf8_param = " SMTPUTF8";
        else if (!c->ignore_8bit) {
            resp_internal(&t->mail, 554, 5, 6, 7, NULL,
                          "envelope is 8bit, destination does not support SMTPUTF8.");
            t->finish_now = true;
        }
    }
    if (t->finish_now)
        return 0;
    size_t k = 0;
    t->cmds[k++] =
        (txcmd){.kind = CK_MAIL,
                .line = xasprintf("MAIL FROM:<%s>%s%s\r\n", sender, body_param, utf8_param)};
    for (size_t i = 0; i < n; i++)
        t->cmds[k++] =
            (txcmd){.kind = CK_RCPT, .rcpt = i, .line = xasprintf("RCPT TO:<%s>\r\n", rcpts[i])};
    t->cmds[k++] = (txcmd){.kind = CK_DATA, .line = xasprintf("DATA\r\n")};
    t->n_cmds = k;
    return 0;
}

/* Puts RSET in front of the commands when rset. */
static void tx_build_cmds(smtpcli *c, tx *t, bool rset)
{
    (void)c;
    if (!rset)
        return;
    memmove(t->cmds + 1, t->cmds, t->n_cmds * sizeof(*t->cmds));
    t->cmds[0] = (txcmd){.kind = CK_RSET, .line = xasprintf("RSET\r\n")};
    t->n_cmds++;
}

/* Writes t's first group: every command up to DATA when pipelining (RFC
 * 2920 §3.1: DATA may end a group; the body waits for 354), else the first
 * one. It all goes to the output before we return to the loop, so it
 * leaves in one write (with whatever was queued before it). Returns 0 or
 * the error of a failed write (part of the group may be queued). */
static int tx_write_group(smtpcli *c, tx *t)
{
    bool pipeline = c->enable_pipelining && c->caps.pipelining;
    size_t upto = pipeline ? t->n_cmds : 1;
    bool was_corked = c->corked;
    c->corked = true;
    int rc = 0;
    for (size_t i = t->sent; i < upto && !rc; i++) {
        rc = cli_write(c, t->cmds[i].line, strlen(t->cmds[i].line));
        if (!rc)
            t->sent++;
    }
    c->corked = was_corked;
    if (!rc)
        cli_flush(c);
    DTRACE(CMOD, "%s peer=%s transaction: %zu recipient(s), %zu bytes, %s%s", c->logid, c->peer_str,
           t->n, evbuffer_get_length(t->body), pipeline ? "pipelined" : "lock-step",
           t->behind ? " behind the previous message" : "");
    return rc;
}

/* The current transaction's body and dot are queued: the next transaction's
 * commands go behind them (RSET first when enable_rset; the reply to the
 * dot ends the current transaction whatever it says, RFC 5321 4.1.1.4). */
static int tx_write_behind(smtpcli *c)
{
    tx *nx = c->next;
    if (!nx || nx->sent || nx->finish_now || nx->fail_now || !c->bev)
        return 0;
    tx_build_cmds(c, nx, c->enable_rset);
    size_t bytes = 0;
    for (size_t i = 0; i < nx->n_cmds; i++)
        bytes += strlen(nx->cmds[i].line);
    c->tail_after_body = bytes;
    return tx_write_group(c, nx);
}

int smtpcli_send(smtpcli *c, const char *sender, const char *const *rcpts, size_t n,
                 const char *data, size_t len, smtpcli_done_fn done, void *ud)
{
    if (!c || c->tx || c->next)
        return KERR_INVAL;
    tx *t = NULL;
    int rc = tx_new(c, sender, rcpts, n, data, len, done, ud, &t);
    if (rc == KERR_INVAL)
        return rc;
    if (!smtpcli_usable(c)) {
        tx_free(t);
        return KERR_IO;
    }
    if (rc)
        return rc;
    c->tx = t;
    if (t->finish_now) {
        event_active(c->defer_ev, EV_TIMEOUT, 0);
        return 0;
    }
    tx_build_cmds(c, t, c->use_rset);
    /* Assume the worst until the transaction ends cleanly. */
    c->use_rset = true;
    rc = tx_write_group(c, t);
    if (rc) {
        /* part of the group may be queued: the connection is out of
         * step, so it closes; done hears about it from the loop */
        resp_internal(&t->mail, 400, 0, 0, 0, NULL, "failed to send message: %s", kerr_str(rc));
        conn_close(c);
        t->finish_now = true;
        event_active(c->defer_ev, EV_TIMEOUT, 0);
        return 0;
    }
    tx_await(c);
    return 0;
}

bool smtpcli_pipelines(const smtpcli *c)
{
    return c && c->enable_pipelining && c->caps.pipelining;
}

int smtpcli_send_next(smtpcli *c, const char *sender, const char *const *rcpts, size_t n,
                      const char *data, size_t len, smtpcli_done_fn done, void *ud)
{
    if (!c || !c->tx || c->next)
        return KERR_INVAL;
    if (!smtpcli_pipelines(c) || !c->bev || c->released)
        return KERR_IO;
    tx *t = NULL;
    int rc = tx_new(c, sender, rcpts, n, data, len, done, ud, &t);
    if (rc)
        return rc;
    t->behind = true;
    c->next = t;
    tx *cur = c->tx;
    if (cur->body_queued) {
        /* the current body is queued or out already: go now */
        rc = tx_write_behind(c);
        if (rc) {
            /* part of it may be queued: out of step; both fail from the loop */
            conn_close(c);
            cur->fail_now = true;
            event_active(c->defer_ev, EV_TIMEOUT, 0);
        }
    }
    return 0;
}

/* The command whose reply the session waits for, with its CRLF; NULL for
 * the banner and while the body is being written. */
static const char *awaited_cmd(const smtpcli *c)
{
    switch (c->state) {
    case CS_EHLO:
    case CS_HELO:
    case CS_STARTTLS:
    case CS_TLS_HANDSHAKE:
    case CS_AUTH:
        return c->cmd[0] ? c->cmd : NULL;
    case CS_RSET:
    case CS_MAIL:
    case CS_RCPT:
    case CS_DATA:
        return c->tx && c->tx->recvd < c->tx->n_cmds ? c->tx->cmds[c->tx->recvd].line : NULL;
    case CS_DATA_DOT:
        return ".\r\n";
    case CS_QUIT:
        return "QUIT\r\n";
    default:
        return NULL;
    }
}

/* ---- input ---- */

/* The connection ended or broke (err, text): tell whoever waits. */
static void cli_transport_fail(smtpcli *c, int err, bool timeout, const char *what)
{
    cli_state st = c->state;
    if (c->released) {
        cli_reap_soon(c);
        return;
    }
    if (in_connect_phase(st)) {
        fail_ready_internal(c, err, timeout ? 421 : 400, awaited_cmd(c), "%s", what);
        return;
    }
    if (c->tx) {
        const char *cmd = awaited_cmd(c);
        smtpcli_response r = {0};
        if (timeout)
            resp_internal(&r, 421, 4, 4, 2, cmd, "failed to send message to %s%s%s: %s",
                          c->label ? c->label : "", c->label ? " " : "", c->peer_desc, what);
        else
            resp_internal(&r, 400, 0, 0, 0, cmd, "failed to send message: %s", what);
        tx_transport_fail(c, &r);
        resp_clear(&r);
        return;
    }
    if (st == CS_READY) {
        smtpcli_response r = {0};
        resp_internal(&r, timeout ? 421 : 400, timeout ? 4 : 0, timeout ? 4 : 0, timeout ? 2 : 0,
                      NULL, "%s: %s", c->peer_desc, what);
        conn_close(c);
        if (c->on_closed && !c->released)
            c->on_closed(c, &r, c->closed_ud);
        resp_clear(&r);
        return;
    }
    conn_close(c);
}

static void on_reply(smtpcli *c, const smtpcli_reply *r)
{
    c->last_progress = clock_mono_ns();
    DTRACE(CMOD, "%s peer=%s recv in %s: %d %.200s", c->logid, c->peer_str, state_names[c->state],
           r->code, r->text);
    switch (c->state) {
    case CS_BANNER:
        resp_from_reply(&c->last, r, NULL);
        if (r->code == 220)
            send_conn_cmd(c, CS_EHLO, NULL, "EHLO %s\r\n", c->ehlo_domain);
        else
            fail_ready(c, KERR_REJECTED, &c->last);
        return;
    case CS_EHLO:
        on_ehlo_reply(c, r);
        return;
    case CS_HELO:
        on_helo_reply(c, r);
        return;
    case CS_STARTTLS:
        if (r->code == 220) {
            start_tls(c);
        } else {
            resp_from_reply(&c->last, r, c->cmd);
            fail_ready(c, KERR_REJECTED, &c->last);
        }
        return;
    case CS_AUTH:
        resp_from_reply(&c->last, r, c->cmd);
        if (r->code == 235)
            report_ready(c);
        else
            fail_ready(c, KERR_REJECTED, &c->last);
        return;
    case CS_READY: {
        /* Unsolicited: a server only says something on its own to say
         * goodbye (421), and anything else is out of sync. Either way the
         * connection is finished. */
        smtpcli_response why = {0};
        resp_from_reply(&why, r, NULL);
        DDEBUG(CMOD, "%s peer=%s unsolicited reply while idle: %d %s", c->logid, c->peer_str,
               why.code, why.content);
        conn_close(c);
        if (c->on_closed && !c->released)
            c->on_closed(c, &why, c->closed_ud);
        resp_clear(&why);
        return;
    }
    case CS_RSET:
    case CS_MAIL:
    case CS_RCPT:
    case CS_DATA:
    case CS_BODY:
    case CS_DATA_DOT:
        if (c->tx) {
            tx_on_reply(c, r);
            return;
        }
        break;
    case CS_QUIT:
        conn_close(c);
        if (c->released)
            cli_reap_soon(c);
        return;
    case CS_CONNECTING:
    case CS_TLS_HANDSHAKE:
    case CS_CLOSED:
        break;
    }
}

static void cli_process_input(smtpcli *c)
{
    if (c->in_input)
        return;
    c->in_input = true;
    while (c->bev && !c->reaping && c->state != CS_CLOSED && c->state != CS_TLS_HANDSHAKE &&
           c->state != CS_CONNECTING) {
        struct evbuffer *in = c->filtered ? bufferevent_get_input(c->bev) : c->inq;
        size_t len = evbuffer_get_length(in);
        if (len == 0)
            break;
        size_t want = len < PULL_MAX ? len : PULL_MAX;
        const char *p = (const char *)evbuffer_pullup(in, (ev_ssize_t)want);
        if (!p) {
            cli_transport_fail(c, KERR_NOMEM, false, "out of memory reading a response");
            break;
        }
        smtpcli_reply r;
        size_t used = 0;
        int rc = smtpcli_parse_reply(p, want, &used, &r);
        if (rc == SMTPCLI_PARSE_AGAIN) {
            if (want >= PULL_MAX)
                cli_transport_fail(c, KERR_PARSE, false, "Response too long");
            break;
        }
        if (rc == SMTPCLI_PARSE_INVALID) {
            cli_transport_fail(c, KERR_PARSE, false, r.text);
            break;
        }
        if (c->trace)
            trace_conn_emit(c->trace, TRACE_READ, NULL, p, used);
        if (evbuffer_drain(in, used) != 0) {
            cli_transport_fail(c, KERR_NOMEM, false, "evbuffer_drain failed");
            break;
        }
        on_reply(c, &r);
    }
    c->in_input = false;
}

/* ---- libevent callbacks ---- */

static void cli_read_cb(struct bufferevent *bev, void *arg)
{
    cli_process_input(arg);
}

/* A plain connection's socket is readable: one read without libevent's
 * FIONREAD probe (net/wthrough.h). End of stream and errors take the same
 * path as the bufferevent's. */
static void cli_rev_cb(evutil_socket_t fd, short what, void *arg)
{
    smtpcli *c = arg;
    if (!c->bev || c->filtered)
        return;
    ssize_t n = net_read_some(c->inq, fd, CLI_READ_MAX);
    if (n > 0) {
        cli_process_input(c);
        return;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    int e = errno;
    event_del(c->rev); /* as libevent does: no more reads after EOF or an error */
    errno = e;         /* describe_bev_error reads it */
    cli_event_cb(c->bev, BEV_EVENT_READING | (n == 0 ? BEV_EVENT_EOF : BEV_EVENT_ERROR), c);
}

static void cli_write_cb(struct bufferevent *bev, void *arg)
{
    smtpcli *c = arg;
    if (c->state != CS_BODY)
        return;
    if (evbuffer_get_length(bufferevent_get_output(bev)) > c->tail_after_body) {
        /* the body is draining: progress, and the data timer measures stalls */
        smtpcli_set_state(c, CS_BODY);
        return;
    }
    set_detail(c, ".");
    smtpcli_set_state(c, CS_DATA_DOT);
}

static void describe_bev_error(smtpcli *c, struct bufferevent *bev, short what, char *buf,
                               size_t buflen)
{
    unsigned long e;
    size_t off = 0;
    buf[0] = 0;
    while ((e = bufferevent_get_openssl_error(bev)) != 0 && off + 2 < buflen) {
        if (ERR_GET_LIB(e) == 0)
            continue; /* libevent also queues bare SSL_get_error() codes */
        char one[256];
        ERR_error_string_n(e, one, sizeof(one));
        off += (size_t)snprintf(buf + off, buflen - off, "%s%s", off ? "; " : "", one);
    }
    if (c->state == CS_TLS_HANDSHAKE) {
        SSL *ssl = bufferevent_openssl_get_ssl(bev);
        long vr = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;
        if (vr != X509_V_OK && off + 2 < buflen)
            off += (size_t)snprintf(buf + off, buflen - off, "%s(%s)", off ? " " : "",
                                    X509_verify_cert_error_string(vr));
    }
    if (off)
        return;
    if (what & BEV_EVENT_EOF) {
        snprintf(buf, buflen, "Connection closed by peer");
        return;
    }
    int err = EVUTIL_SOCKET_ERROR();
    if (!err) {
        socklen_t l = sizeof(err);
        evutil_socket_t fd = bufferevent_getfd(bev);
        if (fd < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &l) != 0)
            err = 0;
    }
    snprintf(buf, buflen, "%s", err ? strerror(err) : "connection error");
}

static void cli_event_cb(struct bufferevent *bev, short what, void *arg)
{
    smtpcli *c = arg;
    if (what & BEV_EVENT_CONNECTED) {
        if (c->state == CS_CONNECTING)
            on_connected(c);
        else if (c->state == CS_TLS_HANDSHAKE)
            on_tls_up(c);
        return;
    }
    if (!(what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)))
        return;
    char why[768];
    describe_bev_error(c, bev, what, why, sizeof(why));
    /* A server may say its last words (421) and close at once. */
    cli_process_input(c);
    if (c->state == CS_CLOSED || c->reaping)
        return;
    char text[1600];
    if (c->state == CS_TLS_HANDSHAKE) {
        snprintf(text, sizeof(text), "TLS handshake failed: %s", why);
    } else if (c->state == CS_CONNECTING || c->state == CS_QUIT || c->state == CS_READY) {
        snprintf(text, sizeof(text), "%s", why);
    } else if (c->state == CS_BODY) {
        snprintf(text, sizeof(text), "Error %s sending message payload data", why);
    } else {
        char cmd[600];
        cmd_for_err(awaited_cmd(c), cmd, sizeof(cmd));
        snprintf(text, sizeof(text), "Error %s reading response to cmd=%s", why, cmd);
    }
    cli_transport_fail(c, KERR_IO, false, text);
}

static void cli_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    smtpcli *c = arg;
    char dur[32], text[800];
    smtpcli_format_duration(state_timeout(c, c->state), dur, sizeof(dur));
    DDEBUG(CMOD, "%s peer=%s timed out after %s in %s (%s)", c->logid, c->peer_str, dur,
           state_names[c->state], c->detail);
    switch (c->state) {
    case CS_READY: {
        /* idle_timeout: say goodbye; the owner hears the session is over */
        smtpcli_response r = {0};
        resp_internal(&r, 421, 4, 4, 2, NULL, "%s: idle for %s, closing the connection",
                      c->peer_desc, dur);
        if (cli_write(c, "QUIT\r\n", 6) == 0) {
            set_detail(c, "QUIT");
            smtpcli_set_state(c, CS_QUIT);
        } else {
            conn_close(c);
        }
        if (c->on_closed && !c->released)
            c->on_closed(c, &r, c->closed_ud);
        resp_clear(&r);
        return;
    }
    case CS_QUIT:
        conn_close(c);
        if (c->released)
            cli_reap_soon(c);
        return;
    case CS_CLOSED:
        return;
    case CS_CONNECTING:
        snprintf(text, sizeof(text), "Timed Out waiting %s to connect", dur);
        break;
    case CS_BODY:
        snprintf(text, sizeof(text), "Timed Out sending message payload data");
        break;
    case CS_TLS_HANDSHAKE:
        snprintf(text, sizeof(text), "Timed Out waiting %s for response to cmd=STARTTLS", dur);
        break;
    default: {
        char cmd[600];
        cmd_for_err(awaited_cmd(c), cmd, sizeof(cmd));
        snprintf(text, sizeof(text), "Timed Out waiting %s for response to cmd=%s", dur, cmd);
        break;
    }
    }
    cli_transport_fail(c, KERR_TIMEDOUT, true, text);
}

static void cli_deferred_cb(evutil_socket_t fd, short what, void *arg)
{
    smtpcli *c = arg;
    if (c->released)
        return;
    if (c->pending_err) {
        int err = c->pending_err;
        c->pending_err = 0;
        fail_ready(c, err, &c->pending_resp);
        return;
    }
    if (c->tx && c->tx->fail_now) {
        smtpcli_response r = {0};
        resp_internal(&r, 400, 0, 0, 0, NULL, "failed to send message: %s", kerr_str(KERR_NOMEM));
        tx_finish(c, &r);
        resp_clear(&r);
        return;
    }
    if (c->tx && c->tx->finish_now)
        tx_finish(c, NULL);
}

/* ---- public ---- */

static void defer_connect_failure(smtpcli *c, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void defer_connect_failure(smtpcli *c, int err, const char *fmt, ...)
{
    char body[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(body, sizeof(body), fmt, ap);
    va_end(ap);
    resp_internal(&c->pending_resp, 400, 0, 0, 0, NULL, "failed to connect to %s: %s", c->peer_desc,
                  body);
    c->pending_err = err;
    event_active(c->defer_ev, EV_TIMEOUT, 0);
}

static void addr_str(const struct sockaddr *sa, char *ip, size_t iplen, char *full, size_t fulllen)
{
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &in->sin_addr, ip, (socklen_t)iplen);
        snprintf(full, fulllen, "%s:%d", ip, ntohs(in->sin_port));
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &in6->sin6_addr, ip, (socklen_t)iplen);
        snprintf(full, fulllen, "[%s]:%d", ip, ntohs(in6->sin6_port));
    } else {
        snprintf(ip, iplen, "unknown");
        snprintf(full, fulllen, "unknown");
    }
}

smtpcli *smtpcli_connect(struct event_base *base, const struct sockaddr *addr, socklen_t addrlen,
                         const smtpcli_params *p, smtpcli_ready_fn on_ready, void *ud)
{
    if (!base || !addr || !p || !on_ready || !p->ehlo_domain ||
        addrlen > sizeof(struct sockaddr_storage) ||
        (addr->sa_family != AF_INET && addr->sa_family != AF_INET6) || has_crlf(p->ehlo_domain) ||
        strchr(p->ehlo_domain, ' '))
        return NULL;
    smtpcli *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->base = base;
    c->timer = evtimer_new(base, cli_timer_cb, c);
    c->defer_ev = event_new(base, -1, 0, cli_deferred_cb, c);
    c->gc_ev = event_new(base, -1, 0, cli_gc_cb, c);
    if (!c->timer || !c->defer_ev || !c->gc_ev) {
        if (c->timer)
            event_free(c->timer);
        if (c->defer_ev)
            event_free(c->defer_ev);
        if (c->gc_ev)
            event_free(c->gc_ev);
        free(c);
        return NULL;
    }
    c->ehlo_domain = xstrdup(p->ehlo_domain);
    c->hostname = xstrdup(p->hostname);
    c->label = xstrdup(p->label);
    c->session_id = xstrdup(p->session_id);
    c->auth_user = xstrdup(p->auth_username);
    c->auth_pass = xstrdup(p->auth_password);
    c->tls_mode = p->enable_tls;
    c->enable_pipelining = p->enable_pipelining;
    c->enable_rset = p->enable_rset;
    c->ignore_8bit = p->ignore_8bit_checks;
    c->allow_auth_plain = p->allow_smtp_auth_plain_without_tls;
    c->allow_auth_unverified = p->allow_smtp_auth_plain_without_valid_certificate;
    c->to = p->timeouts;
    c->tls_ctx = p->tls_ctx;
    c->trace = trace_conn_ref(p->trace);
    c->on_ready = on_ready;
    c->ready_ud = ud;
    memcpy(&c->peer, addr, addrlen);
    c->peer_len = addrlen;
    addr_str(addr, c->peer_ip, sizeof(c->peer_ip), c->peer_str, sizeof(c->peer_str));
    c->peer_desc =
        c->hostname ? xasprintf("%s [%s]", c->hostname, c->peer_str) : xstrdup(c->peer_str);
    snprintf(c->logid, sizeof(c->logid), "session=%.64s", c->session_id ? c->session_id : "-");
    c->state = CS_CONNECTING;
    c->state_since = c->last_progress = clock_mono_ns();
    set_detail(c, "connect to %s", c->peer_desc);

    int fd = socket(addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        defer_connect_failure(c, KERR_IO, "socket: %s", strerror(errno));
        return c;
    }
    int one = 1;
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) != 0)
        DDEBUG(CMOD, "%s TCP_NODELAY: %s", c->logid, strerror(errno));
    if (p->source_address_len > 0) {
#ifdef IP_BIND_ADDRESS_NO_PORT
        /* let connect() pick the port, so many sessions can share a source
         * address toward different peers */
        if (setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one)) != 0)
            DDEBUG(CMOD, "%s IP_BIND_ADDRESS_NO_PORT: %s", c->logid, strerror(errno));
#endif
        if (bind(fd, (const struct sockaddr *)&p->source_address, p->source_address_len) != 0) {
            char ip[INET6_ADDRSTRLEN], full[INET6_ADDRSTRLEN + 8];
            addr_str((const struct sockaddr *)&p->source_address, ip, sizeof(ip), full,
                     sizeof(full));
            defer_connect_failure(c, KERR_IO, "bind to source address %s: %s", ip, strerror(errno));
            close(fd);
            return c;
        }
    }
    c->bev = bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (!c->bev) {
        close(fd);
        defer_connect_failure(c, KERR_NOMEM, "bufferevent_socket_new failed");
        return c;
    }
    c->outq = evbuffer_new();
    c->inq = evbuffer_new();
    c->rev = event_new(base, fd, EV_READ | EV_PERSIST, cli_rev_cb, c);
    if (!c->outq || !c->inq || !c->rev) {
        defer_connect_failure(c, KERR_NOMEM, "evbuffer_new failed");
        return c;
    }
    bufferevent_setcb(c->bev, cli_read_cb, cli_write_cb, cli_event_cb, c);
    bufferevent_setwatermark(c->bev, EV_WRITE, BODY_WRITE_LOWAT, 0);
    smtpcli_set_state(c, CS_CONNECTING);
    if (bufferevent_socket_connect(c->bev, (struct sockaddr *)&c->peer, (int)c->peer_len) != 0) {
        int e = errno;
        conn_close(c);
        c->state = CS_CONNECTING; /* report as a connect failure */
        defer_connect_failure(c, KERR_IO, "%s", strerror(e));
        return c;
    }
    DDEBUG(CMOD, "%s connecting to %s", c->logid, c->peer_desc);
    return c;
}

void smtpcli_set_body_cb(smtpcli *c, smtpcli_body_fn fn, void *ud)
{
    c->on_body = fn;
    c->body_ud = ud;
}

void smtpcli_set_closed_cb(smtpcli *c, smtpcli_closed_fn fn, void *ud)
{
    c->on_closed = fn;
    c->closed_ud = ud;
}

void smtpcli_quit(smtpcli *c)
{
    if (!c || c->released)
        return;
    c->released = true;
    if (c->state == CS_READY && c->bev && !c->tx) {
        if (cli_write(c, "QUIT\r\n", 6) == 0) {
            set_detail(c, "QUIT");
            smtpcli_set_state(c, CS_QUIT);
            return; /* reaped on 221, close or idle_timeout */
        }
    }
    if (c->state == CS_QUIT && c->bev)
        return; /* already saying goodbye (idle timeout) */
    cli_reap_soon(c);
}

void smtpcli_abort(smtpcli *c)
{
    if (!c || c->reaping)
        return;
    DDEBUG(CMOD, "%s peer=%s aborted in %s (%s)", c->logid, c->peer_str, state_names[c->state],
           c->detail);
    cli_reap_soon(c);
}

const char *smtpcli_state_name(const smtpcli *c)
{
    return state_names[c->state];
}

const char *smtpcli_detail(const smtpcli *c)
{
    return c->detail;
}

int64_t smtpcli_last_progress_ns(const smtpcli *c)
{
    return c->last_progress;
}

int64_t smtpcli_state_since_ns(const smtpcli *c)
{
    return c->state_since;
}

bool smtpcli_usable(const smtpcli *c)
{
    return c && !c->released && c->bev && c->state == CS_READY && !c->tx && c->ready_reported;
}

bool smtpcli_alive(const smtpcli *c)
{
    return c && !c->released && c->bev && c->ready_reported && c->state != CS_CLOSED &&
           c->state != CS_QUIT;
}

const char *smtpcli_peer(const smtpcli *c)
{
    return c->peer_str;
}

const struct sockaddr *smtpcli_local_address(const smtpcli *c, socklen_t *len)
{
    if (!c->local_len)
        return NULL;
    if (len)
        *len = c->local_len;
    return (const struct sockaddr *)&c->local;
}

const smtpcli_caps *smtpcli_capabilities(const smtpcli *c)
{
    return &c->caps;
}

const smtpcli_tls_info *smtpcli_tls(const smtpcli *c)
{
    return c->tls_up ? &c->tls : NULL;
}
