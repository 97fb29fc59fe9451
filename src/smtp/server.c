/* ESMTP server: listener configuration, accept, and the session state
 * machine (RFC 5321, 3207, 4954 PLAIN, 6152, 6531, 2920).
 *
 * Each session belongs to the reactor that accepted it. Input is parsed
 * from the bufferevent's input buffer one command at a time; while a policy
 * event or a spool save is in flight the session is "busy" and pipelined
 * input simply waits in the buffer. Replies are written through one function
 * (sess_reply) that also produces Rejection records. A session is never
 * freed inside its own callback: it is marked and reaped from a zero-delay
 * event once nothing refers to it any more.
 *
 * Failure handling: a Lua error in a handler answers 421 4.3.0 "technical
 * difficulties" (naming nothing internal) and logs the error with file and
 * line; a failed spool save answers 451 and leaves nothing acknowledged. */
#include "smtp/server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <lauxlib.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>
#include <uuid/uuid.h>

#include "core/diag.h"
#include "core/duration.h"
#include "core/kerr.h"
#include "core/reactor.h"
#include "core/utf8.h"
#include "log/loghook.h"
#include "log/logs.h"
#include "lua/klua.h"
#include "lua/message_lua.h"
#include "lua/services.h"
#include "msg/headers.h"
#include "msg/meta_scan.h"
#include "msg/queue_name.h"
#include "net/cidr.h"
#include "net/listen.h"
#include "net/sockaddr.h"
#include "net/tls.h"
#include "net/wthrough.h"
#include "smtp/listener_cfg.h"
#include "log/oobrec.h"
#include "smtp/rewrite_response.h"
#include "smtp/trace.h"
#include "msg/trace_header.h"
#include "smtp/xclient.h"
#include "spool/spool.h"
#include "metrics/metrics.h"

#define SMOD "kumod::smtp_server"
#define MAX_LISTENERS 16
/* One read takes at most this much: a 5 KB message with its commands in one
 * go; with the evbuffer chain header it stays one 16 KiB allocation. */
#define SESS_READ_MAX (16384 - 128)

/* ---- listener configuration ---------------------------------------------- */

static listener_cfg *listeners[MAX_LISTENERS];
static int n_listeners;
static pthread_mutex_t listeners_lock = PTHREAD_MUTEX_INITIALIZER;
static smtpsrv_insert_fn insert_hook;
static atomic_bool shutting_down;
static atomic_int live_sessions;
static atomic_ullong st_connections, st_denied, st_received, st_rejections;

/* One listening socket per reactor and listener (SO_REUSEPORT: the kernel
 * spreads connections over the reactors). */
typedef struct acceptor {
    listener_cfg *ln;
    int fd;
    struct event *ev;    /* EV_READ on fd */
    struct event *pause; /* re-arms ev after a resource error */
} acceptor;
static acceptor **evlisteners; /* [reactor * MAX_LISTENERS + i] */

void smtpsrv_set_insert_hook(smtpsrv_insert_fn fn)
{
    insert_hook = fn;
}

void smtpsrv_get_stats(smtpsrv_stats *out)
{
    out->connections_total = atomic_load(&st_connections);
    out->connections_denied = atomic_load(&st_denied);
    out->messages_received = atomic_load(&st_received);
    out->rejections = atomic_load(&st_rejections);
}

static int l_start_esmtp_listener(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    char err[512];
    json_t *j = klua_to_json(L, 1, err, sizeof(err));
    if (!j)
        return luaL_error(L, "kumo.start_esmtp_listener: %s", err);
    listener_cfg *c = lcfg_listener_from_json(j, err, sizeof(err));
    json_decref(j);
    if (!c)
        return luaL_error(L, "kumo.start_esmtp_listener: %s", err);
    if (services_validate_only()) {
        lcfg_listener_free(c);
        return 0;
    }
    pthread_mutex_lock(&listeners_lock);
    if (n_listeners >= MAX_LISTENERS) {
        pthread_mutex_unlock(&listeners_lock);
        lcfg_listener_free(c);
        return luaL_error(L, "kumo.start_esmtp_listener: at most %d listeners", MAX_LISTENERS);
    }
    listeners[n_listeners++] = c;
    pthread_mutex_unlock(&listeners_lock);
    return 0;
}

/* make_listener_domain returns a plain table; this validates its keys. */
static int l_make_listener_domain(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_pushnil(L);
    while (lua_next(L, 1)) {
        const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "?";
        if (strcmp(k, "relay_to") && strcmp(k, "relay_from") && strcmp(k, "log_oob") &&
            strcmp(k, "log_arf") && strcmp(k, "relay_from_authz"))
            return luaL_error(L, "kumo.make_listener_domain: unknown field '%s'", k);
        if (strcmp(k, "relay_from") == 0) {
            char err[256];
            json_t *j = klua_to_json(L, -1, err, sizeof(err));
            cidr_list cl;
            int rc = j ? cidr_list_from_json(j, &cl, err, sizeof(err)) : -1;
            json_decref(j);
            if (rc != 0)
                return luaL_error(L, "kumo.make_listener_domain: relay_from: %s", err);
            cidr_list_fini(&cl);
        }
        if (strcmp(k, "log_oob") == 0 || strcmp(k, "log_arf") == 0) {
            oobrec_disp d;
            if (lua_type(L, -1) != LUA_TBOOLEAN &&
                (lua_type(L, -1) != LUA_TSTRING || oobrec_disp_parse(lua_tostring(L, -1), &d) != 0))
                return luaL_error(L,
                                  "kumo.make_listener_domain: %s: expected a boolean value or one "
                                  "of 'Ignore', 'LogThenDrop' or 'LogThenRelay', but got %s",
                                  k, luaL_tolstring(L, -1, NULL));
        }
        lua_pop(L, 1);
    }
    lua_pushvalue(L, 1);
    return 1;
}

static void smtpsrv_open(lua_State *L)
{
    lua_pushcfunction(L, l_start_esmtp_listener);
    lua_setfield(L, -2, "start_esmtp_listener");
    lua_pushcfunction(L, l_make_listener_domain);
    lua_setfield(L, -2, "make_listener_domain");
}

void smtpsrv_lua_register(void)
{
    klua_register_opener(smtpsrv_open);
}

/* ---- session --------------------------------------------------------------- */

typedef enum sess_state {
    SS_CONNECT, /* connection_accepted event running, no banner yet */
    SS_HELO,    /* waiting for EHLO/HELO */
    SS_READY,   /* greeted, no transaction */
    SS_MAIL,    /* MAIL FROM accepted */
    SS_RCPT,    /* at least one RCPT accepted */
    SS_DATA,    /* reading message data */
    SS_AUTH,    /* waiting for the AUTH PLAIN continuation line */
    SS_CLOSING,
} sess_state;

static const char *const state_names[] = {"Connect", "Helo", "Ready", "MailFrom",
                                          "RcptTo",  "Data", "Auth",  "Closing"};

typedef struct ldom {
    char *domain;
    bool found, relay_to;
    oobrec_disp log_oob, log_arf;
    cidr_list relay_from;
} ldom;

#define LDOM_CACHE 16

typedef struct sess sess;
typedef void (*sess_cont)(sess *s, klua_call *c, int status);

struct sess {
    sess *next_live, *prev_live; /* this reactor's sessions */
    listener_cfg *ln;
    lcfg_params p;      /* effective parameters: listener, peer, via, dynamic */
    lcfg_block *dyn;    /* what smtp_server_get_dynamic_parameters returned */
    SSL_CTX *tls_ctx;   /* p's context, looked up at STARTTLS */
    bool after_xclient; /* the dynamic parameters run for XCLIENT: then 220 */
    reactor *r;
    struct bufferevent *bev;
    sess_state state;
    bool busy;    /* an event or a save is in flight: input waits */
    bool in_loop; /* inside sess_process */
    bool dead;    /* socket gone; reap when refs drop */
    bool reap_armed;
    bool close_after_write;
    bool peer_eof; /* the client shut its sending side: answer what it sent, then close */
    bool starttls_pending;
    bool expecting;        /* counted in spool_expect_save */
    bool filtered;         /* s->bev is the TLS filter: libevent writes, not sess_flush */
    struct evbuffer *outq; /* replies not yet written (plain sessions) */
    struct evbuffer *inq;  /* what the client sent, not yet processed (plain sessions) */
    struct event *rev;     /* plain sessions read for themselves: EV_READ, idle timeout */
    bool discarding_line;  /* over-long command being skipped */
    /* Deadlines that trickled bytes do not extend (the idle timeout does
     * restart on every byte): when the partial command line in the input
     * began to arrive (0: none), and when DATA's 354 went out. */
    int64_t line_since_ns, data_since_ns;
    int drain_polls;
    int refs; /* pending spool saves and similar */
    char session_id[37];
    struct sockaddr_storage peer, local; /* as XCLIENT may have changed them */
    char peer_ip[INET6_ADDRSTRLEN];
    char peer_str[INET6_ADDRSTRLEN + 8];
    char local_str[INET6_ADDRSTRLEN + 8];
    char local_ip[INET6_ADDRSTRLEN];
    json_t *meta;
    char *ehlo_domain;
    bool tls;
    char *tls_cipher, *tls_version;
    char *tls_subject; /* verified client certificate's subject, an entry a line */
    char *authn_id;
    /* transaction */
    char *sender;
    char **rcpts;
    size_t n_rcpts, cap_rcpts;
    long rcpt_count;
    char *line; /* the command being processed (for Rejection records) */
    /* data */
    char *data;
    size_t data_len, data_cap;
    bool too_big;
    /* post-DATA processing */
    message *base;
    message **batch;
    oobrec_report **reports; /* per batch message: an OOB/ARF report, or NULL */
    size_t n_batch, batch_idx;
    int saves_pending, save_err;
    bool timed_out;
    /* the DATA reply held until the Reception records' hook messages are
     * in the spool (log/loghook.h's barrier) */
    int held_code;
    char *held_text;
    /* between the passes of finish_reception: the hook barrier, the time of
     * the Reception records, which messages' records the hooks already have */
    loghook_wait *hooks_wait;
    int64_t rx_time_ns;
    bool *prelogged;
    struct event *deadline_ev;
    klua_call *call;
    sess_cont cont;
    /* relay check in progress */
    char *pending_rcpt;
    int ldom_step;
    ldom ldoms[LDOM_CACHE];
    int n_ldoms;
};

static void sess_process(sess *s);
static bool sess_too_slow(sess *s);
static void sess_reap_soon(sess *s);
static void sess_peer_eof(sess *s);
static void tls_drain_check(evutil_socket_t fd, short what, void *arg);

static void sess_set_state(sess *s, sess_state st)
{
    if (s->state != st)
        DTRACE(SMOD, "session=%s state %s -> %s", s->session_id, state_names[s->state],
               state_names[st]);
    s->state = st;
}

/* A session that is receiving a body announces its save to the spool's
 * group commit (see spool_expect_save); every way out of the transaction
 * takes the announcement back. */
static void sess_expecting(sess *s, bool on)
{
    if (s->expecting != on) {
        s->expecting = on;
        spool_expect_save(on ? 1 : -1);
    }
}

static void tx_reset(sess *s)
{
    sess_expecting(s, false);
    free(s->sender);
    s->sender = NULL;
    for (size_t i = 0; i < s->n_rcpts; i++)
        free(s->rcpts[i]);
    s->n_rcpts = 0;
    free(s->data);
    s->data = NULL;
    s->data_len = s->data_cap = 0;
    s->too_big = false;
    message_unref(s->base);
    s->base = NULL;
    for (size_t i = 0; i < s->n_batch; i++) {
        message_unref(s->batch[i]);
        if (s->reports)
            oobrec_free(s->reports[i]);
    }
    free(s->batch);
    s->batch = NULL;
    free(s->reports);
    s->reports = NULL;
    free(s->prelogged);
    s->prelogged = NULL;
    if (s->hooks_wait) { /* a transaction that ended between the passes */
        loghook_wait_pause();
        loghook_wait_end(s->hooks_wait, NULL, NULL);
        s->hooks_wait = NULL;
    }
    s->n_batch = s->batch_idx = 0;
    s->timed_out = false;
    if (s->deadline_ev)
        event_del(s->deadline_ev);
}

static __thread sess *live_list;

static void sess_free(sess *s)
{
    if (s->prev_live)
        s->prev_live->next_live = s->next_live;
    else if (live_list == s)
        live_list = s->next_live;
    if (s->next_live)
        s->next_live->prev_live = s->prev_live;
    tx_reset(s);
    free(s->rcpts);
    free(s->held_text);
    if (s->outq)
        evbuffer_free(s->outq);
    if (s->inq)
        evbuffer_free(s->inq);
    if (s->rev)
        event_free(s->rev); /* before bufferevent_free closes the socket */
    if (s->bev)
        bufferevent_free(s->bev);
    if (s->deadline_ev)
        event_free(s->deadline_ev);
    free(s->ehlo_domain);
    free(s->tls_cipher);
    free(s->tls_version);
    free(s->tls_subject);
    free(s->authn_id);
    free(s->line);
    lcfg_block_free(s->dyn);
    for (int i = 0; i < s->n_ldoms; i++) {
        free(s->ldoms[i].domain);
        cidr_list_fini(&s->ldoms[i].relay_from);
    }
    if (trace_on(TRACE_SERVER) && s->meta)
        trace_emit(TRACE_SERVER, s->meta, TRACE_CLOSED, NULL, NULL, 0);
    json_decref(s->meta);
    atomic_fetch_sub(&s->ln->active, 1);
    atomic_fetch_sub(&live_sessions, 1);
    free(s);
}

static void sess_reap(evutil_socket_t fd, short what, void *arg)
{
    sess *s = arg;
    s->reap_armed = false;
    if (s->refs > 0)
        return; /* the last save to complete reaps */
    sess_free(s);
}

static void sess_reap_soon(sess *s)
{
    s->dead = true;
    if (s->call) {
        klua_call_cancel(s->call);
        s->call = NULL;
    }
    if (s->rev)
        event_del(s->rev);
    if (s->bev) {
        bufferevent_disable(s->bev, EV_READ | EV_WRITE);
        bufferevent_setcb(s->bev, NULL, NULL, NULL, NULL);
    }
    if (!s->reap_armed) {
        s->reap_armed = true;
        struct timeval zero = {0, 0};
        event_base_once(reactor_base(s->r), -1, EV_TIMEOUT, sess_reap, s, &zero);
    }
}

/* Parses "5.7.1 text" into the enhanced code and the rest. */
static const char *split_enhanced(const char *msg, int *cls, int *sub, int *det)
{
    int a, b, c, n = 0;
    if (sscanf(msg, "%1d.%3d.%3d%n", &a, &b, &c, &n) == 3 && (a == 2 || a == 4 || a == 5) &&
        (msg[n] == ' ' || msg[n] == 0)) {
        *cls = a;
        *sub = b;
        *det = c;
        return msg[n] ? msg + n + 1 : msg + n;
    }
    *cls = *sub = *det = 0;
    return msg;
}

static void log_rejection(sess *s, int code, const char *msg, const char *command)
{
    atomic_fetch_add(&st_rejections, 1);
    logrec r = {0};
    r.type = LOGREC_REJECTION;
    r.id = "";
    r.sender = s->sender ? s->sender : "";
    const char *last = s->n_rcpts ? s->rcpts[s->n_rcpts - 1] : "";
    r.recipients = &last;
    r.n_recipients = 1;
    r.queue = "";
    r.site = "";
    r.response.code = code;
    r.response.content =
        split_enhanced(msg, &r.response.enh_class, &r.response.enh_subject, &r.response.enh_detail);
    r.response.command = command;
    r.peer_name = s->ehlo_domain ? s->ehlo_domain : "";
    r.peer_addr = s->peer_ip;
    r.session_id = s->session_id;
    r.msg_meta = s->meta;
    logs_record(&r);
}

/* Writes a reply (multi-line when msg holds '\n'), logs a Rejection for 4xx
 * and 5xx (except 421 4.3.2 load/shutdown notices, as KumoMTA), and closes
 * after a 421. */
/* Plain sessions write their replies through (net/wthrough.h) when a
 * command or a pipelined group is done; what is left goes with EV_WRITE,
 * which sess_write_cb disables again. */
static struct evbuffer *sess_out(sess *s)
{
    return s->filtered ? bufferevent_get_output(s->bev) : s->outq;
}

/* Input: a plain session reads for itself (sess_rev_cb, net_read_some)
 * into inq and never enables its bufferevent's EV_READ; after STARTTLS the
 * TLS filter reads. */
static struct evbuffer *sess_in(sess *s)
{
    return s->filtered ? bufferevent_get_input(s->bev) : s->inq;
}

/* Turns reading (and with it the idle timeout) on or off. */
static void sess_reading(sess *s, bool on)
{
    if (s->peer_eof)
        on = false; /* nothing more will come */
    if (s->filtered) {
        if (on)
            bufferevent_enable(s->bev, EV_READ);
        else
            bufferevent_disable(s->bev, EV_READ);
    } else if (on) {
        struct timeval tv = {s->p.client_timeout_ns / NS_PER_SEC,
                             (s->p.client_timeout_ns % NS_PER_SEC) / 1000};
        event_add(s->rev, &tv);
    } else {
        event_del(s->rev);
    }
}

static void sess_flush(sess *s)
{
    if (!s->bev || s->dead || s->filtered || evbuffer_get_length(s->outq) == 0)
        return;
    if (!net_write_through(s->outq, s->bev))
        bufferevent_enable(s->bev, EV_WRITE);
    else if (s->close_after_write && !s->in_loop)
        sess_reap_soon(s);
}

/* Nothing of ours is waiting to be written. */
static bool sess_out_empty(sess *s)
{
    return net_out_empty(s->filtered ? NULL : s->outq, s->bev);
}

static void sess_reply(sess *s, int code, const char *msg, const char *command)
{
    if (!s->bev || s->dead)
        return;
    /* the policy's last word (smtp_server_rewrite_response) comes first:
     * the Rejection record, the trace and the 421 close follow the
     * rewritten reply */
    char *rewritten = NULL;
    if (smtpsrv_rewrite_response(&code, msg, command, s->meta, &rewritten) && rewritten)
        msg = rewritten;
    if (trace_on(TRACE_SERVER))
        trace_smtp_reply(s->meta, code, msg);
    if (code >= 400 && code < 600 && !(code == 421 && strncmp(msg, "4.3.2 ", 6) == 0))
        log_rejection(s, code, msg, command);
    struct evbuffer *out = sess_out(s);
    const char *p = msg;
    for (;;) {
        const char *nl = strchr(p, '\n');
        if (nl) {
            evbuffer_add_printf(out, "%d-%.*s\r\n", code, (int)(nl - p), p);
            p = nl + 1;
        } else {
            evbuffer_add_printf(out, "%d %s\r\n", code, p);
            break;
        }
    }
    if (code == 421) {
        s->close_after_write = true;
        sess_set_state(s, SS_CLOSING);
        sess_reading(s, false);
    }
    free(rewritten);
    if (!s->in_loop)
        sess_flush(s);
}

static void sess_replyf(sess *s, int code, const char *command, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void sess_replyf(sess *s, int code, const char *command, const char *fmt, ...)
{
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    sess_reply(s, code, buf, command);
}

/* A Lua error: generic 421 to the peer, the details to the diagnostic log. */
static void sess_tech_difficulties(sess *s, klua_call *c)
{
    DERROR(SMOD, "session=%s peer=%s error in %s: %s", s->session_id, s->peer_str,
           klua_call_event(c), klua_call_error(c));
    sess_replyf(s, 421, s->line, "4.3.0 %s technical difficulties", s->p.hostname);
}

/* Handles a rejection or error from a call; returns true when it did. */
static bool sess_call_failed(sess *s, klua_call *c, int status, const char *command)
{
    if (status == KLUA_REJECT) {
        int code = klua_call_reject_code(c);
        sess_reply(s, code, klua_call_error(c), command);
        int how = klua_call_reject_disconnect(c);
        if (how == KLUA_DISCONNECT_FOLLOW_421 && code != 421)
            sess_replyf(s, 421, NULL, "%s disconnecting due to previous error",
                        s->p.hostname);
        if (how == KLUA_DISCONNECT_FORCE || how == KLUA_DISCONNECT_FOLLOW_421 ||
            (how == KLUA_DISCONNECT_IF_421 && code == 421)) {
            /* kumo.disconnect: whatever the code, the session ends here */
            s->close_after_write = true;
            sess_set_state(s, SS_CLOSING);
            sess_reading(s, false);
        }
        return true;
    }
    if (status == KLUA_ERROR) {
        sess_tech_difficulties(s, c);
        return true;
    }
    return false;
}

static void sess_call_done(klua_call *c, int status, void *ud)
{
    sess *s = ud;
    s->call = NULL;
    s->busy = false;
    sess_cont cont = s->cont;
    s->cont = NULL;
    cont(s, c, status);
    if (!s->in_loop && !s->dead)
        sess_process(s);
}

/* Begins an event call; the caller pushes nargs values onto the returned
 * coroutine and then calls sess_run(). */
static lua_State *sess_begin(sess *s, const char *event, klua_call **c)
{
    return klua_call_begin(klua_current(), event, c);
}

static void sess_run(sess *s, klua_call *c, int nargs, sess_cont cont)
{
    s->busy = true;
    s->cont = cont;
    s->call = c;
    klua_call_run(c, nargs, sess_call_done, s);
}

static bool has_handler(const char *event)
{
    return klua_has_handler(klua_current(), event);
}

/* ---- greeting ------------------------------------------------------------------ */

static void sess_greet(sess *s)
{
    sess_set_state(s, SS_HELO);
    sess_replyf(s, 220, NULL, "%s %s", s->p.hostname, s->p.banner);
}

static void after_connection_accepted(sess *s, klua_call *c, int status)
{
    if (sess_call_failed(s, c, status, NULL))
        return;
    sess_greet(s);
}

/* ---- per-connection parameters ------------------------------------------------------ */

/* The effective parameters from the defaults, the listener's (with the peer
 * and via blocks that match the session's addresses) and dyn; dyn's
 * strings stay referenced, so the caller frees the old one after. */
static void sess_eval_params(sess *s, const lcfg_block *dyn)
{
    lcfg_defaults(&s->p);
    const struct sockaddr *local = (const struct sockaddr *)&s->local;
    const struct sockaddr *peer = (const struct sockaddr *)&s->peer;
    lcfg_apply(&s->p, s->ln->base, local, peer, s->meta);
    lcfg_apply(&s->p, dyn, local, peer, s->meta);
    json_object_set_new(s->meta, "hostname", json_string(s->p.hostname));
    if (s->bev && !s->filtered) {
        struct timeval tv = {s->p.client_timeout_ns / NS_PER_SEC,
                             (s->p.client_timeout_ns % NS_PER_SEC) / 1000};
        bufferevent_set_timeouts(s->bev, &tv, &tv); /* the write timeout */
    }
}

static void sess_connection_accepted(sess *s)
{
    if (!has_handler("smtp_server_connection_accepted")) {
        sess_greet(s);
        return;
    }
    klua_call *c;
    lua_State *co = sess_begin(s, "smtp_server_connection_accepted", &c);
    klua_push_connmeta(co, s->meta);
    sess_run(s, c, 1, after_connection_accepted);
}

static void after_dynamic_parameters(sess *s, klua_call *c, int status)
{
    if (sess_call_failed(s, c, status, s->after_xclient ? s->line : NULL))
        return;
    lua_State *L = klua_call_thread(c);
    lcfg_block *dyn = NULL;
    if (klua_call_nresults(c) >= 1 && !lua_isnil(L, 1)) {
        char err[512] = "expected a table of listener parameters";
        json_t *j = lua_type(L, 1) == LUA_TTABLE ? klua_to_json(L, 1, err, sizeof(err)) : NULL;
        dyn = j ? lcfg_block_from_json(j, err, sizeof(err)) : NULL;
        json_decref(j);
        if (!dyn) {
            DERROR(SMOD, "session=%s peer=%s error in smtp_server_get_dynamic_parameters: %s",
                   s->session_id, s->peer_str, err);
            sess_replyf(s, 421, s->line, "4.3.0 %s technical difficulties", s->p.hostname);
            return;
        }
    }
    sess_eval_params(s, dyn);
    lcfg_block_free(s->dyn);
    s->dyn = dyn;
    if (s->after_xclient) {
        s->after_xclient = false;
        sess_set_state(s, s->ehlo_domain ? SS_READY : SS_HELO);
        sess_replyf(s, 220, s->line, "%s %s", s->p.hostname, s->p.banner);
        return;
    }
    sess_connection_accepted(s);
}

/* smtp_server_get_dynamic_parameters(listener, conn_meta): overrides for
 * this connection, applied over the listener's parameters. Then the
 * connection_accepted event and the banner, or XCLIENT's 220. */
static void sess_dynamic_parameters(sess *s)
{
    if (!has_handler("smtp_server_get_dynamic_parameters")) {
        sess_eval_params(s, NULL);
        lcfg_block_free(s->dyn);
        s->dyn = NULL;
        if (s->after_xclient) {
            s->after_xclient = false;
            sess_set_state(s, s->ehlo_domain ? SS_READY : SS_HELO);
            sess_replyf(s, 220, s->line, "%s %s", s->p.hostname, s->p.banner);
            return;
        }
        sess_connection_accepted(s);
        return;
    }
    klua_call *c;
    lua_State *co = sess_begin(s, "smtp_server_get_dynamic_parameters", &c);
    lua_pushstring(co, s->ln->listen);
    klua_push_connmeta(co, s->meta);
    sess_run(s, c, 2, after_dynamic_parameters);
}

/* ---- XCLIENT ---------------------------------------------------------------------------- */

/* Postfix's XCLIENT, for peers whose parameters have allow_xclient: the
 * session takes the given peer (ADDR, PORT) and local (DESTADDR, DESTPORT)
 * addresses, HELO name and login, forgets any transaction, re-evaluates its
 * parameters (peer, via, dynamic) for the new addresses and answers with
 * the banner. Reply codes as Postfix's XCLIENT_README: 220, 501 syntax,
 * 503 inside a transaction, 550 not authorized; texts as KumoMTA's. */
static void cmd_xclient(sess *s, const char *arg)
{
    if (!s->p.allow_xclient) {
        sess_reply(s, 550, "insufficient authorization", NULL);
        return;
    }
    if (s->state == SS_MAIL || s->state == SS_RCPT) {
        sess_reply(s, 503, "mail transaction in progress", NULL);
        return;
    }
    xclient_req x;
    char why[300];
    if (xclient_parse(arg, &x, why, sizeof(why)) != 0) {
        sess_reply(s, 501, why, NULL);
        return;
    }
    if (x.has_addr || x.has_port) {
        if (!json_object_get(s->meta, "orig_received_from"))
            json_object_set_new(s->meta, "orig_received_from", json_string(s->peer_str));
        int port = x.has_port ? x.port : net_sockaddr_port(&s->peer);
        if (x.has_addr)
            s->peer = x.addr;
        net_sockaddr_set_port(&s->peer, port);
        net_format_addr((struct sockaddr *)&s->peer, s->peer_ip, sizeof(s->peer_ip), s->peer_str,
                        sizeof(s->peer_str));
        json_object_set_new(s->meta, "received_from", json_string(s->peer_str));
    }
    if (x.has_destaddr || x.has_destport) {
        if (!json_object_get(s->meta, "orig_received_via"))
            json_object_set_new(s->meta, "orig_received_via", json_string(s->local_str));
        int port = x.has_destport ? x.destport : net_sockaddr_port(&s->local);
        if (x.has_destaddr)
            s->local = x.destaddr;
        net_sockaddr_set_port(&s->local, port);
        net_format_addr((struct sockaddr *)&s->local, s->local_ip, sizeof(s->local_ip),
                        s->local_str, sizeof(s->local_str));
        json_object_set_new(s->meta, "received_via", json_string(s->local_str));
    }
    DINFO(SMOD, "session=%s XCLIENT: peer %s via %s", s->session_id, s->peer_str, s->local_str);
    /* No transaction is open; the EHLO name stays (as in KumoMTA) unless
     * HELO names another or [UNAVAILABLE] */
    tx_reset(s);
    if (x.has_helo) {
        free(s->ehlo_domain);
        s->ehlo_domain = x.helo[0] ? strdup(x.helo) : NULL;
        if (x.helo[0])
            json_object_set_new(s->meta, "ehlo_domain", json_string(x.helo));
        else
            json_object_del(s->meta, "ehlo_domain");
    }
    if (x.has_login) {
        free(s->authn_id);
        s->authn_id = x.login[0] ? strdup(x.login) : NULL;
        if (x.login[0])
            json_object_set_new(s->meta, "authn_id", json_string(x.login));
        else
            json_object_del(s->meta, "authn_id");
        json_object_del(s->meta, "authz_id");
    }
    for (int i = 0; i < s->n_ldoms; i++) {
        free(s->ldoms[i].domain);
        cidr_list_fini(&s->ldoms[i].relay_from);
        memset(&s->ldoms[i], 0, sizeof(s->ldoms[i]));
    }
    s->n_ldoms = 0;
    s->after_xclient = true;
    sess_dynamic_parameters(s);
}

/* ---- EHLO ---------------------------------------------------------------------- */

static void finish_ehlo(sess *s, const char *domain, bool ehlo, json_t *exts)
{
    free(s->ehlo_domain);
    s->ehlo_domain = strdup(domain);
    json_object_set_new(s->meta, "ehlo_domain", json_string(domain));
    tx_reset(s);
    sess_set_state(s, SS_READY);
    if (!ehlo) {
        sess_replyf(s, 250, NULL, "Hello %s!", domain);
        return;
    }
    char buf[2048];
    int n = snprintf(buf, sizeof(buf), "%s Aloha %s", s->p.hostname, domain);
    if (exts) {
        size_t i;
        json_t *v;
        json_array_foreach(exts, i, v)
        {
            if (json_is_string(v))
                n += snprintf(buf + n, sizeof(buf) - (size_t)n, "\n%s", json_string_value(v));
        }
    } else {
        n += snprintf(buf + n, sizeof(buf) - (size_t)n,
                      "\nPIPELINING\nENHANCEDSTATUSCODES\n8BITMIME\nSMTPUTF8");
        if (!s->tls)
            n += snprintf(buf + n, sizeof(buf) - (size_t)n, "\nSTARTTLS");
        if (s->tls && has_handler("smtp_server_auth_plain"))
            n += snprintf(buf + n, sizeof(buf) - (size_t)n, "\nAUTH PLAIN");
        if (s->p.allow_xclient)
            n += snprintf(buf + n, sizeof(buf) - (size_t)n, "\n%s", XCLIENT_EHLO);
    }
    sess_reply(s, 250, buf, NULL);
}

static json_t *default_exts(sess *s)
{
    json_t *a = json_array();
    json_array_append_new(a, json_string("PIPELINING"));
    json_array_append_new(a, json_string("ENHANCEDSTATUSCODES"));
    json_array_append_new(a, json_string("8BITMIME"));
    json_array_append_new(a, json_string("SMTPUTF8"));
    if (!s->tls)
        json_array_append_new(a, json_string("STARTTLS"));
    if (s->tls && has_handler("smtp_server_auth_plain"))
        json_array_append_new(a, json_string("AUTH PLAIN"));
    if (s->p.allow_xclient)
        json_array_append_new(a, json_string(XCLIENT_EHLO));
    return a;
}

static void after_ehlo(sess *s, klua_call *c, int status)
{
    char *domain = s->pending_rcpt ? strdup(s->pending_rcpt) : strdup("");
    bool ehlo = s->ldom_step == 1;
    free(s->pending_rcpt);
    s->pending_rcpt = NULL;
    if (sess_call_failed(s, c, status, s->line)) {
        free(domain);
        return;
    }
    json_t *exts = NULL;
    if (ehlo && klua_call_nresults(c) >= 1 && lua_type(klua_call_thread(c), 1) == LUA_TTABLE) {
        char err[128];
        exts = klua_to_json(klua_call_thread(c), 1, err, sizeof(err));
        if (exts && !json_is_array(exts)) {
            json_decref(exts);
            exts = NULL;
        }
    }
    finish_ehlo(s, domain, ehlo, exts);
    json_decref(exts);
    free(domain);
}

static void cmd_ehlo(sess *s, const char *arg, bool ehlo)
{
    if (!*arg) {
        sess_reply(s, 501, "Syntax error in command or arguments: expected a domain", s->line);
        return;
    }
    if (!has_handler("smtp_server_ehlo")) {
        finish_ehlo(s, arg, ehlo, NULL);
        return;
    }
    klua_call *c;
    lua_State *co = sess_begin(s, "smtp_server_ehlo", &c);
    lua_pushstring(co, arg);
    klua_push_connmeta(co, s->meta);
    json_t *exts = default_exts(s);
    klua_push_json(co, exts);
    json_decref(exts);
    s->pending_rcpt = strdup(arg);
    s->ldom_step = ehlo ? 1 : 0;
    sess_run(s, c, 3, after_ehlo);
}

/* ---- MAIL FROM ------------------------------------------------------------------- */

/* Extracts the <path> after "FROM:" / "TO:"; returns a malloc'd address or
 * NULL on syntax error. params points after the path. */
static char *parse_path(const char *arg, const char *prefix, const char **params)
{
    size_t pl = strlen(prefix);
    if (strncasecmp(arg, prefix, pl) != 0)
        return NULL;
    const char *p = arg + pl;
    while (*p == ' ')
        p++;
    if (*p != '<')
        return NULL;
    const char *close = strchr(p, '>');
    if (!close)
        return NULL;
    const char *addr = p + 1;
    size_t len = (size_t)(close - addr);
    /* strip a source route (@a,@b:user@dom) */
    const char *colon = memchr(addr, ':', len);
    if (len && addr[0] == '@' && colon) {
        len -= (size_t)(colon + 1 - addr);
        addr = colon + 1;
    }
    for (size_t i = 0; i < len; i++)
        if (addr[i] == ' ' || addr[i] == '<' || (unsigned char)addr[i] < 0x20)
            return NULL;
    if (params) {
        const char *q = close + 1;
        while (*q == ' ')
            q++;
        *params = q;
    }
    return strndup(addr, len);
}

static bool valid_mailbox(const char *a)
{
    const char *at = strrchr(a, '@');
    return at && at != a && at[1] != 0 && !strchr(at + 1, '@');
}

static void after_mail_from(sess *s, klua_call *c, int status)
{
    if (sess_call_failed(s, c, status, s->line)) {
        free(s->sender);
        s->sender = NULL;
        return;
    }
    sess_set_state(s, SS_MAIL);
    sess_replyf(s, 250, s->line, "OK EnvelopeAddress(\"%s\")", s->sender);
}

static void cmd_mail(sess *s, const char *arg)
{
    /* KumoMTA does not insist on EHLO first */
    if (s->state == SS_MAIL || s->state == SS_RCPT) {
        sess_reply(s, 503, "5.5.0 MAIL FROM already issued; you must RSET first", s->line);
        return;
    }
    const char *params;
    char *addr = parse_path(arg, "FROM:", &params);
    if (!addr) {
        sess_reply(s, 501, "5.1.7 Bad sender's mailbox address syntax", s->line);
        return;
    }
    if (*addr && !valid_mailbox(addr)) {
        sess_replyf(s, 501, s->line, "5.1.7 Invalid sender address syntax: %s", addr);
        free(addr);
        return;
    }
    /* ESMTP parameters: SIZE (RFC 1870), BODY (RFC 6152), SMTPUTF8 (RFC 6531) */
    char pbuf[512];
    snprintf(pbuf, sizeof(pbuf), "%s", params);
    for (char *save, *tok = strtok_r(pbuf, " ", &save); tok; tok = strtok_r(NULL, " ", &save)) {
        if (strncasecmp(tok, "SIZE=", 5) == 0) {
            char *end;
            unsigned long long sz = strtoull(tok + 5, &end, 10);
            if (*end || end == tok + 5) {
                sess_reply(s, 501, "Syntax error in command or arguments: invalid SIZE", s->line);
                free(addr);
                return;
            }
            if (sz > s->p.max_message_size) {
                sess_reply(s, 552, "5.3.4 message too big", s->line);
                free(addr);
                return;
            }
        } else if (strncasecmp(tok, "BODY=", 5) == 0) {
            if (strcasecmp(tok + 5, "7BIT") && strcasecmp(tok + 5, "8BITMIME")) {
                sess_reply(s, 501, "Syntax error in command or arguments: invalid BODY", s->line);
                free(addr);
                return;
            }
        } else if (strcasecmp(tok, "SMTPUTF8") == 0) {
            /* accepted: we carry UTF-8 addresses unchanged */
        } else {
            sess_replyf(s, 555, s->line, "5.5.4 unsupported MAIL FROM parameter %s", tok);
            free(addr);
            return;
        }
    }
    s->sender = addr;
    if (!has_handler("smtp_server_mail_from")) {
        sess_set_state(s, SS_MAIL);
        sess_replyf(s, 250, s->line, "OK EnvelopeAddress(\"%s\")", s->sender);
        return;
    }
    klua_call *c;
    lua_State *co = sess_begin(s, "smtp_server_mail_from", &c);
    klua_push_address(co, s->sender);
    klua_push_connmeta(co, s->meta);
    sess_run(s, c, 2, after_mail_from);
}

/* ---- relaying and RCPT TO ---------------------------------------------------------- */

static ldom *ldom_find(sess *s, const char *domain)
{
    for (int i = 0; i < s->n_ldoms; i++)
        if (strcasecmp(s->ldoms[i].domain, domain) == 0)
            return &s->ldoms[i];
    return NULL;
}

static ldom *ldom_slot(sess *s, const char *domain)
{
    ldom *d;
    if (s->n_ldoms < LDOM_CACHE) {
        d = &s->ldoms[s->n_ldoms++];
    } else {
        /* evict the oldest */
        free(s->ldoms[0].domain);
        cidr_list_fini(&s->ldoms[0].relay_from);
        memmove(&s->ldoms[0], &s->ldoms[1], sizeof(ldom) * (LDOM_CACHE - 1));
        d = &s->ldoms[LDOM_CACHE - 1];
    }
    memset(d, 0, sizeof(*d));
    d->domain = strdup(domain);
    return d;
}

static bool lua_field_truthy(lua_State *L, int idx, const char *k)
{
    lua_getfield(L, idx, k);
    bool on = false;
    if (lua_type(L, -1) == LUA_TBOOLEAN)
        on = lua_toboolean(L, -1);
    else if (lua_type(L, -1) == LUA_TSTRING)
        on = strcmp(lua_tostring(L, -1), "Ignore") != 0;
    lua_pop(L, 1);
    return on;
}

/* log_oob / log_arf: true is LogThenRelay, false Ignore (make_listener_domain
 * refused anything else) */
static oobrec_disp lua_field_disp(lua_State *L, int idx, const char *k)
{
    lua_getfield(L, idx, k);
    oobrec_disp d = OOBREC_IGNORE;
    if (lua_type(L, -1) == LUA_TBOOLEAN)
        d = lua_toboolean(L, -1) ? OOBREC_LOG_THEN_RELAY : OOBREC_IGNORE;
    else if (lua_type(L, -1) == LUA_TSTRING && oobrec_disp_parse(lua_tostring(L, -1), &d) != 0)
        d = OOBREC_IGNORE;
    lua_pop(L, 1);
    return d;
}

static void fill_ldom(ldom *d, klua_call *c, int status)
{
    d->found = false;
    if (status != KLUA_OK || klua_call_nresults(c) < 1)
        return;
    lua_State *L = klua_call_thread(c);
    if (lua_type(L, 1) != LUA_TTABLE)
        return;
    d->found = true;
    d->relay_to = lua_field_truthy(L, 1, "relay_to");
    d->log_oob = lua_field_disp(L, 1, "log_oob");
    d->log_arf = lua_field_disp(L, 1, "log_arf");
    lua_getfield(L, 1, "relay_from");
    if (!lua_isnil(L, -1)) {
        char err[128];
        json_t *j = klua_to_json(L, -1, err, sizeof(err));
        if (j)
            cidr_list_from_json(j, &d->relay_from, err, sizeof(err));
        json_decref(j);
    }
    lua_pop(L, 1);
}

/* reports: whether a recipient domain that logs OOB/ARF reports counts (it
 * does for RCPT TO; after DATA only a report is accepted there) */
static bool relay_allowed_ex(sess *s, const char *sender, const char *rcpt, bool reports)
{
    if (cidr_list_match(s->p.relay_hosts, (struct sockaddr *)&s->peer))
        return true;
    ldom *sd = ldom_find(s, address_domain(sender));
    if (sd && sd->found && cidr_list_match(&sd->relay_from, (struct sockaddr *)&s->peer))
        return true;
    ldom *rd = ldom_find(s, address_domain(rcpt));
    if (rd && rd->found && (rd->relay_to || (reports && (rd->log_oob || rd->log_arf))))
        return true;
    return false;
}

static bool relay_allowed(sess *s, const char *sender, const char *rcpt)
{
    return relay_allowed_ex(s, sender, rcpt, true);
}

/* After DATA: a report to a log_oob / log_arf domain is logged and then
 * relayed or dropped as its disposition says (log/oobrec.c); anything
 * else goes by relay_to / relay_from / relay_hosts. The first recipient
 * speaks for the batch, as in KumoMTA. */
static bool data_relay_decision(sess *s, size_t i)
{
    message *m = s->batch[i];
    if (!s->reports) {
        s->reports = calloc(s->n_batch ? s->n_batch : 1, sizeof(*s->reports));
        if (!s->reports)
            return relay_allowed_ex(s, m->sender, m->rcpts[0], false);
        for (size_t k = 0; k < s->n_batch; k++) {
            char err[320];
            bool bad;
            message *mk = s->batch[k];
            ldom *dk = ldom_find(s, address_domain(mk->rcpts[0]));
            if (!dk || !dk->found || (!dk->log_oob && !dk->log_arf))
                continue;
            s->reports[k] = oobrec_detect(mk->data, mk->data_len, dk->log_oob, dk->log_arf, &bad,
                                          err, sizeof(err));
            if (bad)
                DWARN(SMOD, "session=%s from=<%s> to=<%s>: %s; handled as an ordinary message",
                      s->session_id, mk->sender, mk->rcpts[0], err);
        }
    }
    if (s->reports[i])
        return s->reports[i]->relay;
    return relay_allowed_ex(s, m->sender, m->rcpts[0], false);
}

static void rcpt_continue(sess *s);

static void after_listener_domain(sess *s, klua_call *c, int status)
{
    const char *dom =
        s->ldom_step == 0 ? address_domain(s->sender) : address_domain(s->pending_rcpt);
    if (status == KLUA_ERROR) {
        sess_tech_difficulties(s, c);
        free(s->pending_rcpt);
        s->pending_rcpt = NULL;
        return;
    }
    fill_ldom(ldom_slot(s, dom), c, status);
    s->ldom_step++;
    rcpt_continue(s);
}

static void after_rcpt_to(sess *s, klua_call *c, int status)
{
    char *rcpt = s->pending_rcpt;
    s->pending_rcpt = NULL;
    if (sess_call_failed(s, c, status, s->line)) {
        free(rcpt);
        return;
    }
    if (s->n_rcpts == s->cap_rcpts) {
        s->cap_rcpts = s->cap_rcpts ? s->cap_rcpts * 2 : 8;
        s->rcpts = realloc(s->rcpts, s->cap_rcpts * sizeof(char *));
        if (!s->rcpts)
            abort();
    }
    s->rcpts[s->n_rcpts++] = rcpt;
    sess_set_state(s, SS_RCPT);
    sess_replyf(s, 250, s->line, "OK EnvelopeAddress(\"%s\")", rcpt);
}

/* The RCPT steps: listener domain of the sender, then of the recipient
 * (each cached per session), then the relay decision, the limits, and the
 * smtp_server_rcpt_to event. */
static void rcpt_continue(sess *s)
{
    const char *rcpt = s->pending_rcpt;
    bool lookup = has_handler("get_listener_domain");
    while (lookup && s->ldom_step < 2) {
        const char *dom = s->ldom_step == 0 ? address_domain(s->sender) : address_domain(rcpt);
        if (!*dom || ldom_find(s, dom)) {
            s->ldom_step++;
            continue;
        }
        klua_call *c;
        lua_State *co = sess_begin(s, "get_listener_domain", &c);
        lua_pushstring(co, dom);
        lua_pushstring(co, s->ln->listen);
        klua_push_connmeta(co, s->meta);
        sess_run(s, c, 3, after_listener_domain);
        return;
    }
    if (!relay_allowed(s, s->sender, rcpt)) {
        sess_replyf(s, 550, s->line, "5.7.1 relaying not permitted for %s", s->peer_str);
        free(s->pending_rcpt);
        s->pending_rcpt = NULL;
        return;
    }
    if ((long)s->n_rcpts == s->p.max_recipients_per_message) {
        sess_reply(s, 452, "4.5.3 too many recipients", s->line);
        free(s->pending_rcpt);
        s->pending_rcpt = NULL;
        return;
    }
    if (s->rcpt_count == s->p.max_messages_per_connection) {
        free(s->pending_rcpt);
        s->pending_rcpt = NULL;
        if (s->n_rcpts == 0)
            sess_replyf(s, 421, s->line, "4.5.3 %s too many recipients on this connection",
                        s->p.hostname);
        else
            sess_reply(s, 452, "4.5.3 too many recipients on this connection", s->line);
        return;
    }
    s->rcpt_count++;
    if (!has_handler("smtp_server_rcpt_to")) {
        after_rcpt_to(s, NULL, KLUA_OK);
        return;
    }
    klua_call *c;
    lua_State *co = sess_begin(s, "smtp_server_rcpt_to", &c);
    klua_push_address(co, rcpt);
    klua_push_connmeta(co, s->meta);
    sess_run(s, c, 2, after_rcpt_to);
}

static void cmd_rcpt(sess *s, const char *arg)
{
    if (s->state != SS_MAIL && s->state != SS_RCPT) {
        sess_reply(s, 503, "5.5.0 MAIL FROM must be issued first", s->line);
        return;
    }
    const char *params;
    char *addr = parse_path(arg, "TO:", &params);
    if (addr && *params) {
        /* No RCPT parameter is advertised (no DSN): RFC 5321 4.1.1.11 */
        char tok[128];
        size_t tl = strcspn(params, " ");
        snprintf(tok, sizeof(tok), "%.*s", (int)(tl < 100 ? tl : 100), params);
        sess_replyf(s, 555, s->line, "5.5.4 unsupported RCPT TO parameter %s", tok);
        free(addr);
        return;
    }
    if (!addr || !valid_mailbox(addr)) {
        /* <postmaster> without a domain is allowed by RFC 5321 4.1.1.3 */
        if (addr && strcasecmp(addr, "postmaster") == 0) {
            free(addr);
            addr = strdup("postmaster");
        } else {
            free(addr);
            sess_reply(s, 501, "5.1.3 Invalid recipient address syntax", s->line);
            return;
        }
    }
    s->pending_rcpt = addr;
    s->ldom_step = 0;
    rcpt_continue(s);
}

/* ---- DATA ----------------------------------------------------------------------------- */

static void cmd_data(sess *s)
{
    if (s->state == SS_MAIL) {
        sess_reply(s, 503, "5.5.0 RCPT TO must be issued first", s->line);
        return;
    }
    if (s->state != SS_RCPT) {
        sess_reply(s, 503, "5.5.0 MAIL FROM must be issued first", s->line);
        return;
    }
    sess_set_state(s, SS_DATA);
    /* The buffer starts with a virtual CRLF so that a message consisting of
     * just "." is found by the same CRLF.CRLF search. */
    s->data_cap = 64 * 1024;
    s->data = malloc(s->data_cap);
    if (!s->data) {
        sess_reply(s, 452, "4.3.1 insufficient system storage", s->line);
        sess_set_state(s, SS_RCPT);
        return;
    }
    memcpy(s->data, "\r\n", 2);
    s->data_len = 2;
    s->too_big = false;
    s->data_since_ns = clock_mono_ns();
    sess_expecting(s, true);
    sess_reply(s, 354, "Send body; end with CRLF.CRLF", s->line);
}

static bool has_lone_cr_or_lf(const char *d, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (d[i] == '\n' && (i == 0 || d[i - 1] != '\r'))
            return true;
        if (d[i] == '\r' && (i + 1 >= n || d[i + 1] != '\n'))
            return true;
    }
    return false;
}

static char *normalize_crlf(const char *d, size_t n, size_t *out_len)
{
    char *o = malloc(n * 2 + 1);
    if (!o)
        return NULL;
    size_t j = 0;
    for (size_t i = 0; i < n; i++) {
        if (d[i] == '\r') {
            o[j++] = '\r';
            o[j++] = '\n';
            if (i + 1 < n && d[i + 1] == '\n')
                i++;
        } else if (d[i] == '\n') {
            o[j++] = '\r';
            o[j++] = '\n';
        } else {
            o[j++] = d[i];
        }
    }
    o[j] = 0;
    *out_len = j;
    return o;
}

static bool lines_within(const char *d, size_t n, long limit)
{
    size_t start = 0;
    for (size_t i = 0; i + 1 < n; i++) {
        if (d[i] == '\r' && d[i + 1] == '\n') {
            if ((long)(i - start) > limit)
                return false;
            start = i + 2;
            i++;
        }
    }
    return (long)(n - start) <= limit;
}

static void data_received(sess *s);

/* Consumes DATA input. Returns true when the terminator was seen. */
static bool data_consume(sess *s, struct evbuffer *in)
{
    for (;;) {
        size_t avail = evbuffer_get_length(in);
        if (avail == 0)
            return false;
        size_t want = avail;
        if (!s->too_big && s->data_len + want + 1 > s->data_cap) {
            size_t ncap = s->data_cap;
            while (s->data_len + want + 1 > ncap)
                ncap *= 2;
            char *nd = realloc(s->data, ncap);
            if (!nd) {
                s->too_big = true; /* treat as over-size: we cannot hold it */
            } else {
                s->data = nd;
                s->data_cap = ncap;
            }
        }
        if (s->too_big) {
            /* keep only a tail long enough to spot the terminator */
            size_t keep = s->data_len > 4 ? 4 : s->data_len;
            memmove(s->data, s->data + s->data_len - keep, keep);
            s->data_len = keep;
            if (want > s->data_cap - s->data_len - 1)
                want = s->data_cap - s->data_len - 1;
        }
        size_t scan_from = s->data_len > 4 ? s->data_len - 4 : 0;
        int got = evbuffer_remove(in, s->data + s->data_len, want);
        if (got <= 0)
            return false;
        s->data_len += (size_t)got;
        /* find CRLF.CRLF */
        char *hit = NULL;
        for (char *p = s->data + scan_from; p + 5 <= s->data + s->data_len; p++) {
            p = memchr(p, '\r', (size_t)(s->data + s->data_len - p));
            if (!p || p + 5 > s->data + s->data_len)
                break;
            if (memcmp(p, "\r\n.\r\n", 5) == 0) {
                hit = p;
                break;
            }
        }
        if (hit) {
            size_t end = (size_t)(hit - s->data) + 2; /* keep the final CRLF */
            size_t extra = s->data_len - (end + 3);
            /* give back what followed the terminator (pipelined commands) */
            if (extra)
                evbuffer_prepend(in, hit + 5, extra);
            s->data_len = end;
            /* the whole body may arrive in one read (data_buffer_size) */
            if (s->data_len - 2 > s->p.max_message_size)
                s->too_big = true;
            return true;
        }
        if (!s->too_big && s->data_len - 2 > s->p.max_message_size)
            s->too_big = true;
    }
}

static void data_finish_reading(sess *s)
{
    if (trace_on(TRACE_SERVER) && !s->too_big)
        trace_smtp_data(TRACE_SERVER, s->meta, TRACE_READ, s->data + 2, s->data_len - 2);
    if (s->too_big) {
        sess_reply(s, 552, "5.3.4 message too big", "DATA");
        tx_reset(s);
        sess_set_state(s, SS_READY);
        return;
    }
    /* drop the virtual leading CRLF, then unstuff */
    size_t n = s->data_len - 2;
    char *d = s->data;
    memmove(d, d + 2, n);
    /* RFC 5321 4.5.2: a line starting with ".." loses its first dot. The
     * line-start test looks at the input, never at what was written back. */
    size_t o = 0;
    bool line_start = true;
    for (size_t i = 0; i < n; i++) {
        char ch = d[i];
        bool drop = line_start && ch == '.' && i + 1 < n && d[i + 1] == '.';
        line_start = ch == '\n' && i >= 1 && d[i - 1] == '\r';
        if (!drop)
            d[o++] = ch;
    }
    s->data_len = o;
    d[o] = 0;
    if (!lines_within(d, o, s->p.line_length_hard_limit)) {
        sess_reply(s, 500, "5.2.3 line too long", "DATA");
        tx_reset(s);
        sess_set_state(s, SS_READY);
        return;
    }
    data_received(s);
}

/* ---- post-DATA processing --------------------------------------------------------------- */

static void post_data_fail(sess *s, int code, const char *msg)
{
    sess_reply(s, code, msg, "DATA");
    tx_reset(s);
    if (s->state != SS_CLOSING)
        sess_set_state(s, SS_READY);
}

static void deadline_fired(evutil_socket_t fd, short what, void *arg)
{
    sess *s = arg;
    s->timed_out = true;
    if (s->call) {
        klua_call_cancel(s->call);
        s->call = NULL;
        s->busy = false;
        s->cont = NULL;
        post_data_fail(s, 451, "4.4.5 data_processing_timeout exceeded (rx)");
        sess_process(s);
    } else if (s->saves_pending > 0) {
        /* the saves finish on their own and are unwound then; input waits */
        sess_reply(s, 451, "4.4.5 data_processing_timeout exceeded (spool)", "DATA");
        sess_set_state(s, SS_READY);
    }
}

static void process_batch_next(sess *s);
static void finish_reception(sess *s);

static void after_message_received(sess *s, klua_call *c, int status)
{
    if (sess_call_failed(s, c, status, "DATA")) {
        if (s->state != SS_CLOSING) {
            tx_reset(s);
            sess_set_state(s, SS_READY);
        }
        return;
    }
    s->batch_idx++;
    process_batch_next(s);
}

static char *make_received(sess *s, const spoolid *id, const char *rcpt)
{
    char hex[SPOOLID_HEX_LEN + 1];
    spoolid_to_hex(id, hex);
    char date[64];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    char rest[48];
    strftime(rest, sizeof(rest), "%b %Y %H:%M:%S +0000", &tm);
    static const char *const days[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    snprintf(date, sizeof(date), "%s, %d %s", days[tm.tm_wday], tm.tm_mday, rest);
    const char *proto =
        s->authn_id ? (s->tls ? "ESMTPSA" : "ESMTP") : (s->tls ? "ESMTPS" : "ESMTP");
    char tlsinfo[160] = "";
    if (s->tls)
        snprintf(tlsinfo, sizeof(tlsinfo), " (%s:%s) ", s->tls_version ? s->tls_version : "",
                 s->tls_cipher ? s->tls_cipher : "");
    char *out = NULL;
    if (asprintf(&out,
                 "Received: from %s (%s)\r\n  by %s (KumoMTA %s) \r\n  with %s%s id %s for "
                 "<%s>;\r\n  %s\r\n",
                 s->ehlo_domain ? s->ehlo_domain : "unspecified", s->peer_ip, s->p.hostname,
                 s->local_ip, proto, tlsinfo, hex, rcpt, date) < 0)
        return NULL;
    return out;
}

/* The supplemental trace header (msg/trace_header.c builds it, as for HTTP
 * injection and kumo.apply_supplemental_trace_header). */
static int apply_supplemental(sess *s, message *m)
{
    if (!s->p.supplemental_header)
        return 0;
    return trace_header_supplemental(m, s->p.trace_header_name, s->p.include_meta_names);
}

static void process_batch_next(sess *s)
{
    while (s->batch_idx < s->n_batch) {
        message *m = s->batch[s->batch_idx];
        if (s->p.deferred_queue) {
            json_object_set_new(m->meta, "queue",
                                json_string("deferred_smtp_inject.kumomta.internal"));
            s->batch_idx++;
            continue;
        }
        if (!has_handler("smtp_server_message_received")) {
            s->batch_idx++;
            continue;
        }
        klua_call *c;
        lua_State *co = sess_begin(s, "smtp_server_message_received", &c);
        klua_push_message(co, m);
        klua_push_connmeta(co, s->meta);
        sess_run(s, c, 2, after_message_received);
        return;
    }
    finish_reception(s);
}

static void build_batches(sess *s, lua_State *L, bool from_split)
{
    message *b = s->base;
    /* groups of recipient indexes */
    size_t n_groups = 0;
    char ***groups = NULL;
    size_t *sizes = NULL;
    if (from_split) {
        size_t ng = lua_rawlen(L, 1);
        groups = calloc(ng ? ng : 1, sizeof(char **));
        sizes = calloc(ng ? ng : 1, sizeof(size_t));
        for (size_t g = 0; g < ng; g++) {
            lua_rawgeti(L, 1, (lua_Integer)g + 1);
            size_t nr = lua_type(L, -1) == LUA_TTABLE ? lua_rawlen(L, -1) : 0;
            groups[n_groups] = calloc(nr ? nr : 1, sizeof(char *));
            for (size_t k = 0; k < nr; k++) {
                lua_rawgeti(L, -1, (lua_Integer)k + 1);
                const char *a = lua_type(L, -1) == LUA_TSTRING
                                    ? lua_tostring(L, -1)
                                    : (const char *)luaL_testudata(L, -1, "kumod.EnvelopeAddress");
                if (a)
                    groups[n_groups][sizes[n_groups]++] = strdup(a);
                lua_pop(L, 1);
            }
            lua_pop(L, 1);
            if (sizes[n_groups])
                n_groups++;
            else
                free(groups[n_groups]);
        }
    } else {
        groups = calloc(b->n_rcpts, sizeof(char **));
        sizes = calloc(b->n_rcpts, sizeof(size_t));
        for (size_t i = 0; i < b->n_rcpts; i++) {
            size_t g = n_groups;
            if (s->p.batch_handling == BATCH_BY_DOMAIN) {
                for (size_t k = 0; k < n_groups; k++)
                    if (strcasecmp(address_domain(groups[k][0]), address_domain(b->rcpts[i])) == 0)
                        g = k;
            }
            if (g == n_groups) {
                groups[g] = calloc(b->n_rcpts, sizeof(char *));
                n_groups++;
            }
            groups[g][sizes[g]++] = strdup(b->rcpts[i]);
        }
    }
    s->batch = calloc(n_groups ? n_groups : 1, sizeof(message *));
    s->n_batch = 0;
    for (size_t g = 0; g < n_groups; g++) {
        spoolid id;
        spoolid_new(&id);
        message *m = message_new(&id, b->sender, (const char *const *)groups[g], sizes[g]);
        if (b->trace) {
            /* the transaction was sampled: its steps so far belong to each message */
            if (!m->trace)
                m->trace = msgtrace_force(&id);
            msgtrace_copy_steps(m->trace, b->trace);
        }
        json_decref(m->meta);
        m->meta = json_deep_copy(b->meta);
        if (b->scheduling)
            m->scheduling = json_deep_copy(b->scheduling);
        char *rcv = s->p.received_header ? make_received(s, &id, groups[g][0]) : NULL;
        size_t rl = rcv ? strlen(rcv) : 0;
        char *buf = malloc(rl + b->data_len + 1);
        if (!buf)
            abort();
        if (rcv)
            memcpy(buf, rcv, rl);
        memcpy(buf + rl, b->data, b->data_len);
        buf[rl + b->data_len] = 0;
        message_set_data_take(m, buf, rl + b->data_len);
        free(rcv);
        s->batch[s->n_batch++] = m;
        for (size_t k = 0; k < sizes[g]; k++)
            free(groups[g][k]);
        free(groups[g]);
    }
    free(groups);
    free(sizes);
}

static void after_split(sess *s, klua_call *c, int status)
{
    if (sess_call_failed(s, c, status, "DATA")) {
        if (s->state != SS_CLOSING) {
            tx_reset(s);
            sess_set_state(s, SS_READY);
        }
        return;
    }
    bool from_split =
        c && klua_call_nresults(c) >= 1 && lua_type(klua_call_thread(c), 1) == LUA_TTABLE;
    build_batches(s, c ? klua_call_thread(c) : NULL, from_split);
    s->batch_idx = 0;
    process_batch_next(s);
}

static void after_data_event(sess *s, klua_call *c, int status)
{
    if (sess_call_failed(s, c, status, "DATA")) {
        if (s->state != SS_CLOSING) {
            tx_reset(s);
            sess_set_state(s, SS_READY);
        }
        return;
    }
    if (has_handler("smtp_server_split_transaction")) {
        klua_call *c2;
        lua_State *co = sess_begin(s, "smtp_server_split_transaction", &c2);
        klua_push_message(co, s->base);
        klua_push_connmeta(co, s->meta);
        sess_run(s, c2, 2, after_split);
        return;
    }
    after_split(s, NULL, KLUA_OK);
}

static void data_received(sess *s)
{
    atomic_fetch_add(&st_received, 1);
    if (has_lone_cr_or_lf(s->data, s->data_len)) {
        if (s->p.invalid_line_endings == LE_DENY) {
            post_data_fail(s, 552, "5.6.0 message data must use CRLF for line endings");
            return;
        }
        if (s->p.invalid_line_endings == LE_FIX) {
            size_t nl;
            char *fixed = normalize_crlf(s->data, s->data_len, &nl);
            if (!fixed) {
                post_data_fail(s, 451, "4.3.0 insufficient memory");
                return;
            }
            free(s->data);
            s->data = fixed;
            s->data_len = nl;
        }
    }
    s->base = message_new_transient(s->sender, (const char *const *)s->rcpts, s->n_rcpts);
    json_decref(s->base->meta);
    s->base->meta = json_deep_copy(s->meta);
    message_set_data_take(s->base, s->data, s->data_len);
    s->data = NULL;
    s->data_len = s->data_cap = 0;
    /* the processing deadline covers everything from here to the reply */
    if (!s->deadline_ev)
        s->deadline_ev = evtimer_new(reactor_base(s->r), deadline_fired, s);
    struct timeval tv = {s->p.data_processing_timeout_ns / NS_PER_SEC,
                         (s->p.data_processing_timeout_ns % NS_PER_SEC) / 1000};
    evtimer_add(s->deadline_ev, &tv);
    if (has_handler("smtp_server_data")) {
        klua_call *c;
        lua_State *co = sess_begin(s, "smtp_server_data", &c);
        klua_push_message(co, s->base);
        klua_push_connmeta(co, s->meta);
        sess_run(s, c, 2, after_data_event);
        return;
    }
    after_data_event(s, NULL, KLUA_OK);
}

/* ---- saving, logging, inserting -------------------------------------------------------- */

struct save_ctx {
    sess *s;
    int err;
    int64_t started_ns;
};

/* A label-less histogram, registered on first use (any thread). */
static metrics_histogram *lazy_histogram(_Atomic(metrics_histogram *) *slot, const char *name,
                                         const char *help)
{
    metrics_histogram *v = atomic_load(slot);
    if (v)
        return v;
    metrics_family *f = NULL;
    if (metrics_histogram_family(&f, name, help, NULL, 0, NULL, 0) != 0 || !f)
        return NULL;
    v = metrics_histogram_get(f, NULL);
    metrics_histogram *expected = NULL;
    if (!atomic_compare_exchange_strong(slot, &expected, v)) {
        metrics_histogram_unref(v);
        v = expected;
    }
    return v;
}

static _Atomic(metrics_histogram *) save_latency_h, log_latency_h;

static metrics_histogram *save_latency(void)
{
    return lazy_histogram(&save_latency_h, "message_save_latency",
                          "how long it takes to save a message to spool");
}

static metrics_histogram *log_latency(void)
{
    return lazy_histogram(&log_latency_h, "log_submit_latency",
                          "latency of log event submission operations");
}

static void save_done_on_reactor(void *arg)
{
    struct save_ctx *x = arg;
    sess *s = x->s;
    if (x->err && !s->save_err)
        s->save_err = x->err;
    free(x);
    s->refs--;
    s->saves_pending--;
    if (s->dead) {
        if (s->refs == 0 && !s->reap_armed)
            sess_free(s);
        return;
    }
    if (s->saves_pending == 0) {
        finish_reception(s);
        if (!s->busy && !s->dead)
            sess_process(s);
    }
}

static void save_done(void *ud, int err)
{
    struct save_ctx *x = ud;
    x->err = err; /* a failed save must never be acknowledged */
    metrics_histogram *h = save_latency();
    if (h)
        metrics_histogram_observe(h, (double)(clock_mono_ns() - x->started_ns) / 1e9);
    reactor_post(x->s->r, save_done_on_reactor, x);
}

static void log_reception(sess *s, message *m, const char *queue, const oobrec_report *rep,
                          unsigned parts)
{
    char hex[SPOOLID_HEX_LEN + 1];
    logrec r;
    logrec_reception(&r, hex, m, queue);
    r.timestamp_ns = s->rx_time_ns;
    r.peer_name = s->ehlo_domain ? s->ehlo_domain : "";
    r.peer_addr = s->peer_ip;
    r.reception_protocol = "ESMTP";
    r.session_id = s->session_id;
    r.tls_cipher = s->tls ? s->tls_cipher : NULL;
    r.tls_protocol_version = s->tls ? s->tls_version : NULL;
    r.tls_peer_subject_name = s->tls ? s->tls_subject : NULL;
    int64_t t0 = clock_mono_ns();
    if (rep) /* Feedback instead of Reception; OOB records (log/oobrec.c) */
        oobrec_log(rep, &r);
    else
        logs_record_parts(&r, parts);
    metrics_histogram *h = log_latency();
    if (h)
        metrics_histogram_observe(h, (double)(clock_mono_ns() - t0) / 1e9);
}

static void send_data_reply(sess *s, int code, const char *text)
{
    sess_reply(s, code, text, "DATA"); /* a 421 closes the session there */
}

static void hooks_settled_on_reactor(void *arg)
{
    sess *s = arg;
    s->refs--;
    char *text = s->held_text;
    s->held_text = NULL;
    s->busy = false;
    if (s->dead) {
        free(text);
        if (s->refs == 0 && !s->reap_armed)
            sess_free(s);
        return;
    }
    send_data_reply(s, s->held_code, text);
    free(text);
    if (!s->busy && !s->dead)
        sess_process(s);
}

/* The last Reception record's hook message is settled (any thread). */
static void hooks_settled(void *ud)
{
    sess *s = ud;
    reactor_post(s->r, hooks_settled_on_reactor, s);
}

/* Called after the events (saves_pending == 0 and nothing saved yet) and
 * again when all saves completed. */
static void finish_reception(sess *s)
{
    spool *sp = services_spool();
    if (s->timed_out) {
        /* the reply was already sent: unwind what got saved */
        for (size_t i = 0; i < s->n_batch; i++)
            if (sp)
                spool_remove(sp, &s->batch[i]->id, NULL, NULL);
        tx_reset(s);
        s->busy = false;
        return;
    }
    if (s->save_err) {
        DERROR(SMOD, "session=%s spool save failed: %s", s->session_id, kerr_str(s->save_err));
        for (size_t i = 0; i < s->n_batch; i++)
            if (sp)
                spool_remove(sp, &s->batch[i]->id, NULL, NULL);
        int err = s->save_err;
        s->save_err = 0;
        s->busy = false;
        char why[128];
        if (err == KERR_UNHEALTHY || !services_spool_healthy(why, sizeof(why)))
            post_data_fail(s, 451, "4.3.2 the spool is not accepting writes");
        else if (err == KERR_TIMEDOUT)
            post_data_fail(s, 451, "4.4.5 spool write timed out");
        else
            post_data_fail(s, 451, "4.3.0 the spool could not store the message. Try later");
        return;
    }
    /* First pass: trace headers, relay decision, saves. */
    bool any_saving = false;
    if (!s->busy && s->saves_pending == 0 && s->batch_idx == s->n_batch) {
        s->batch_idx = s->n_batch + 1; /* marks "saves issued" */
        sess_expecting(s, false);
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        s->rx_time_ns = (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
        /* The log hooks get each saved message's Reception record now,
         * ahead of its save, so that the hook's message is in the same
         * spool group commit; the 250 waits for both (the barrier), and
         * the local logs get the record once the save succeeded. */
        s->hooks_wait = loghook_wait_begin();
        for (size_t i = 0; i < s->n_batch; i++) {
            message *m = s->batch[i];
            if (apply_supplemental(s, m) != 0) {
                post_data_fail(s, 451, "4.3.0 insufficient memory");
                return;
            }
            char *q = queue_name_of_message(m);
            bool relay = data_relay_decision(s, i);
            bool save = relay && strcmp(q, "null") != 0 && !s->p.deferred_spool;
            if (save && s->hooks_wait && !(s->reports && s->reports[i])) {
                if (!s->prelogged)
                    s->prelogged = calloc(s->n_batch, sizeof(*s->prelogged));
                if (s->prelogged) {
                    log_reception(s, m, q, NULL, LOGS_HOOKS);
                    s->prelogged[i] = true;
                }
            }
            free(q);
            if (!save)
                continue;
            if (!sp) {
                post_data_fail(s, 451, "4.3.2 waiting for spool startup");
                return;
            }
            size_t ml;
            char *meta = message_meta_to_json(m, &ml);
            char *data = malloc(m->data_len + 1);
            if (!data) {
                free(meta);
                post_data_fail(s, 451, "4.3.0 insufficient memory");
                return;
            }
            memcpy(data, m->data, m->data_len);
            struct save_ctx *x = malloc(sizeof(*x));
            if (!x)
                abort();
            x->s = s;
            x->err = 0;
            x->started_ns = clock_mono_ns();
            s->refs++;
            s->saves_pending++;
            any_saving = true;
            m->meta_dirty = m->data_dirty = false;
            /* durable before the 250 unless the operator opted out; a
             * policy that called msg:save() already stored it once, and
             * spool_save_new's "nothing stored yet" would then be untrue */
            bool sync = services_spool_sync() || m->force_sync;
            if (m->in_spool)
                spool_save(sp, &m->id, meta, ml, data, m->data_len, sync, save_done, x);
            else
                spool_save_new(sp, &m->id, meta, ml, data, m->data_len, sync, save_done, x);
            m->in_spool = true;
        }
        loghook_wait_pause();
        if (any_saving) {
            s->busy = true;
            return;
        }
    }
    s->busy = false;
    if (s->deadline_ev)
        event_del(s->deadline_ev);
    /* Second pass: Reception records, then hand over to the queues. */
    loghook_wait *hooks = s->hooks_wait;
    s->hooks_wait = NULL;
    if (hooks)
        loghook_wait_resume(hooks);
    else
        hooks = loghook_wait_begin();
    char *ids = malloc(s->n_batch * (SPOOLID_HEX_LEN + 1) + 1);
    if (!ids)
        abort();
    size_t il = 0;
    ids[0] = 0;
    bool relayed_any = false, black_holed = false, was_report = false;
    int failed = 0;
    for (size_t i = 0; i < s->n_batch; i++) {
        message *m = s->batch[i];
        char hex[SPOOLID_HEX_LEN + 1];
        spoolid_to_hex(&m->id, hex);
        il += (size_t)sprintf(ids + il, "%s%s", il ? " " : "", hex);
        char *q = queue_name_of_message(m);
        bool relay = data_relay_decision(s, i);
        oobrec_report *rep = s->reports ? s->reports[i] : NULL;
        if (rep)
            was_report = true;
        if (trace_on(TRACE_SERVER))
            trace_emitf(TRACE_SERVER, s->meta, "INFO",
                        "Message from=<%s> to=<%s>%s id=%s queue=%s will_enqueue=%s%s", m->sender,
                        m->rcpts[0], m->n_rcpts > 1 ? " (and more)" : "", hex, q,
                        relay && strcmp(q, "null") != 0 ? "true" : "false",
                        rep ? " was_arf_or_oob=true" : "");
        log_reception(s, m, q, rep,
                      s->prelogged && s->prelogged[i] ? LOGS_LOCAL : LOGS_LOCAL | LOGS_HOOKS);
        if (strcmp(q, "null") == 0) {
            black_holed = true;
        } else if (relay) {
            relayed_any = true;
            if (insert_hook) {
                message_ref(m);
                if (insert_hook(m, q, "Received") != 0)
                    failed++;
            }
        }
        free(q);
    }
    size_t n = s->n_batch;
    tx_reset(s);
    sess_set_state(s, SS_READY);
    int code;
    char *reply = NULL;
    int rc;
    if (!black_holed && !relayed_any && !was_report) {
        code = 550;
        rc = asprintf(&reply, "5.7.1 relaying not permitted");
    } else if (failed && (size_t)failed == n) {
        code = 421;
        rc = asprintf(&reply, "4.3.0 %s technical difficulties", s->p.hostname);
    } else {
        code = 250;
        rc = asprintf(&reply, "%s ids=%s", failed ? "PARTIAL" : "OK", ids);
    }
    if (rc < 0)
        abort();
    free(ids);
    if (loghook_wait_end(hooks, hooks_settled, s) == 0) {
        send_data_reply(s, code, reply);
        free(reply);
        return;
    }
    /* busy: pipelined commands wait behind the held reply */
    s->held_code = code;
    s->held_text = reply;
    s->busy = true;
    s->refs++;
}

/* ---- AUTH PLAIN ------------------------------------------------------------------------ */

static int b64_decode(const char *in, unsigned char *out, size_t outcap)
{
    static int8_t rev[256];
    static bool init;
    if (!init) {
        memset(rev, -1, sizeof(rev));
        const char *t = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        for (int i = 0; t[i]; i++)
            rev[(unsigned char)t[i]] = (int8_t)i;
        init = true;
    }
    size_t o = 0;
    unsigned v = 0;
    int bits = 0;
    for (const char *p = in; *p && *p != '='; p++) {
        int8_t d = rev[(unsigned char)*p];
        if (d < 0)
            return -1;
        v = (v << 6) | (unsigned)d;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (o >= outcap)
                return -1;
            out[o++] = (unsigned char)(v >> bits);
        }
    }
    return (int)o;
}

static void after_auth(sess *s, klua_call *c, int status)
{
    char *authc = s->pending_rcpt;
    s->pending_rcpt = NULL;
    if (status == KLUA_REJECT) {
        free(authc);
        sess_reply(s, klua_call_reject_code(c), klua_call_error(c), s->line);
        return;
    }
    bool ok =
        status == KLUA_OK && klua_call_nresults(c) >= 1 &&
        (lua_toboolean(klua_call_thread(c), 1) || lua_type(klua_call_thread(c), 1) == LUA_TTABLE);
    if (status == KLUA_ERROR)
        DERROR(SMOD, "session=%s error in smtp_server_auth_plain: %s", s->session_id,
               klua_call_error(c));
    if (!ok) {
        free(authc);
        sess_reply(s, 535, "5.7.8 AUTH invalid", s->line);
        return;
    }
    free(s->authn_id);
    s->authn_id = authc;
    json_object_set_new(s->meta, "authn_id", json_string(authc));
    sess_reply(s, 235, "2.7.0 AUTH OK!", s->line);
}

static void auth_plain_response(sess *s, const char *b64)
{
    unsigned char buf[1024];
    int n = b64_decode(b64, buf, sizeof(buf) - 1);
    if (n < 0) {
        sess_reply(s, 501, "5.5.2 Invalid base64 response", s->line);
        return;
    }
    buf[n] = 0;
    /* authz NUL authc NUL password */
    unsigned char *z1 = memchr(buf, 0, (size_t)n);
    unsigned char *z2 = z1 ? memchr(z1 + 1, 0, (size_t)(buf + n - z1 - 1)) : NULL;
    if (!z1 || !z2) {
        sess_reply(s, 501, "5.5.2 Invalid decoded PLAIN response", s->line);
        return;
    }
    const char *authz = (char *)buf, *authc = (char *)z1 + 1, *pass = (char *)z2 + 1;
    /* RFC 4616: the identities are UTF-8; they go into the connection meta */
    if (!utf8_valid(authz, strlen(authz)) || !utf8_valid(authc, strlen(authc))) {
        sess_reply(s, 501, "5.5.2 Invalid UTF8 in decoded PLAIN response", s->line);
        return;
    }
    if (!*authz)
        authz = authc; /* RFC 4616: an empty authorization identity means authc */
    free(s->line);
    s->line = strdup(b64); /* what a Rejection record names as the command */
    klua_call *c;
    lua_State *co = sess_begin(s, "smtp_server_auth_plain", &c);
    lua_pushstring(co, authz);
    lua_pushstring(co, authc);
    lua_pushlstring(co, pass, (size_t)(buf + n - (unsigned char *)pass));
    klua_push_connmeta(co, s->meta);
    if (*authz)
        json_object_set_new(s->meta, "authz_id", json_string(authz));
    s->pending_rcpt = strdup(authc);
    sess_run(s, c, 4, after_auth);
}

static void cmd_auth(sess *s, const char *arg)
{
    if (s->authn_id) {
        sess_reply(s, 503, "5.5.1 AUTH me once, can't get authed again!", s->line);
        return;
    }
    if (s->state == SS_MAIL || s->state == SS_RCPT) {
        sess_reply(s, 503, "5.5.1 AUTH not permitted inside a transaction", s->line);
        return;
    }
    char mech[32] = "";
    const char *sp = strchr(arg, ' ');
    snprintf(mech, sizeof(mech), "%.*s", sp ? (int)(sp - arg) : (int)strlen(arg), arg);
    if (strcasecmp(mech, "PLAIN") != 0 || !has_handler("smtp_server_auth_plain")) {
        sess_replyf(s, 504, s->line, "5.5.4 AUTH %s not supported", mech);
        return;
    }
    if (!s->tls) {
        sess_replyf(s, 524, s->line, "5.7.11 AUTH %s requires an encrypted channel", mech);
        return;
    }
    if (sp && sp[1]) {
        auth_plain_response(s, sp + 1);
        return;
    }
    sess_set_state(s, SS_AUTH);
    sess_reply(s, 334, " ", s->line);
}

/* ---- STARTTLS -------------------------------------------------------------------------- */

static void sess_read_cb(struct bufferevent *bev, void *arg);
static void sess_write_cb(struct bufferevent *bev, void *arg);
static void sess_event_cb(struct bufferevent *bev, short what, void *arg);

static void start_tls_now(sess *s)
{
    s->starttls_pending = false;
    SSL *ssl = SSL_new(s->tls_ctx);
    if (!ssl) {
        sess_reap_soon(s);
        return;
    }
    struct bufferevent *tb = bufferevent_openssl_filter_new(
        reactor_base(s->r), s->bev, ssl, BUFFEREVENT_SSL_ACCEPTING, BEV_OPT_CLOSE_ON_FREE);
    if (!tb) {
        SSL_free(ssl);
        sess_reap_soon(s);
        return;
    }
    s->bev = tb;
    s->filtered = true;
    bufferevent_setcb(tb, sess_read_cb, sess_write_cb, sess_event_cb, s);
    struct timeval tv = {s->p.client_timeout_ns / NS_PER_SEC, 0};
    bufferevent_set_timeouts(tb, &tv, &tv);
    /* data_buffer_size: how much one read may take (DATA's bytes per syscall) */
    bufferevent_set_max_single_read(tb, (size_t)s->p.data_buffer_size);
    bufferevent_enable(tb, EV_READ | EV_WRITE);
}

static void cmd_starttls(sess *s)
{
    if (s->tls) {
        sess_reply(s, 501, "Cannot STARTTLS as TLS is already active", s->line);
        return;
    }
    /* peer, via or dynamic parameters may name other certificates */
    char err[512];
    s->tls_ctx = lcfg_tls_ctx(&s->p, err, sizeof(err));
    if (!s->tls_ctx) {
        DERROR(SMOD, "session=%s peer=%s STARTTLS: %s", s->session_id, s->peer_str, err);
        sess_reply(s, 454, "4.7.0 TLS not available due to temporary reason", s->line);
        return;
    }
    sess_reply(s, 220, "Ready to Start TLS", s->line);
    /* RFC 3207 §4.2: discard anything the client pipelined after STARTTLS */
    struct evbuffer *in = sess_in(s);
    evbuffer_drain(in, evbuffer_get_length(in));
    sess_reading(s, false);
    s->starttls_pending = true;
    s->busy = true;
    sess_flush(s); /* the 220 leaves in the clear, before the handshake */
    if (sess_out_empty(s))
        start_tls_now(s);
}

/* ---- command dispatch -------------------------------------------------------------------- */

/* A command line is UTF-8 text without NUL or other control characters
 * (TAB aside); KumoMTA answers anything else 501 5.5.2. This also keeps
 * every address and EHLO name valid JSON text for the spool and the logs
 * (issue 25). */
static bool valid_command_line(const char *l, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)l[i];
        if (ch == 0 || (ch < 0x20 && ch != '\t'))
            return false;
    }
    return utf8_valid(l, n);
}

static void dispatch_line(sess *s, char *line)
{
    if (trace_on(TRACE_SERVER))
        trace_smtp_line(TRACE_SERVER, s->meta, TRACE_READ, line);
    free(s->line);
    s->line = strdup(line);
    if (s->state == SS_AUTH) {
        sess_set_state(s, s->ehlo_domain ? SS_READY : SS_HELO);
        if (strcmp(line, "*") == 0) {
            sess_reply(s, 501, "5.5.0 AUTH cancelled by client", s->line);
            return;
        }
        auth_plain_response(s, line);
        return;
    }
    char verb[16];
    size_t vl = strcspn(line, " ");
    snprintf(verb, sizeof(verb), "%.*s", (int)(vl < 15 ? vl : 15), line);
    const char *arg = line + vl;
    while (*arg == ' ')
        arg++;
    if (strcasecmp(verb, "EHLO") == 0)
        cmd_ehlo(s, arg, true);
    else if (strcasecmp(verb, "HELO") == 0)
        cmd_ehlo(s, arg, false);
    else if (strcasecmp(verb, "MAIL") == 0)
        cmd_mail(s, arg);
    else if (strcasecmp(verb, "RCPT") == 0)
        cmd_rcpt(s, arg);
    else if (strcasecmp(verb, "DATA") == 0)
        cmd_data(s);
    else if (strcasecmp(verb, "RSET") == 0) {
        tx_reset(s);
        if (s->state != SS_HELO)
            sess_set_state(s, SS_READY);
        sess_reply(s, 250, "Reset state", NULL);
    } else if (strcasecmp(verb, "NOOP") == 0)
        sess_reply(s, 250, "the goggles do nothing", NULL);
    else if (strcasecmp(verb, "QUIT") == 0) {
        sess_reply(s, 221, "So long, and thanks for all the fish!", NULL);
        s->close_after_write = true;
        sess_set_state(s, SS_CLOSING);
        sess_reading(s, false);
    } else if (strcasecmp(verb, "STARTTLS") == 0)
        cmd_starttls(s);
    else if (strcasecmp(verb, "AUTH") == 0)
        cmd_auth(s, arg);
    else if (strcasecmp(verb, "XCLIENT") == 0)
        cmd_xclient(s, arg);
    else /* VRFY, EXPN, HELP and LHLO too, as KumoMTA */
        sess_reply(s, 502, "5.5.1 Command unimplemented", s->line);
}

/* Runs commands from the input buffer until it is empty or the session
 * waits. Never frees the session (callbacks mark it). */
static void sess_process(sess *s)
{
    if (s->in_loop || s->dead || !s->bev)
        return;
    s->in_loop = true;
    struct evbuffer *in = sess_in(s);
    while (!s->busy && !s->dead && s->state != SS_CLOSING && s->state != SS_CONNECT) {
        if (s->state == SS_DATA) {
            if (!data_consume(s, in))
                break;
            data_finish_reading(s);
            continue;
        }
        size_t eol_len = 0;
        struct evbuffer_ptr eol = evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_CRLF);
        if (eol.pos < 0) {
            size_t pending = evbuffer_get_length(in);
            if (pending && !s->line_since_ns)
                s->line_since_ns = clock_mono_ns();
            if ((long)pending > s->p.line_length_hard_limit) {
                /* keep reading until the line ends, then answer once */
                evbuffer_drain(in, pending);
                s->discarding_line = true;
            }
            break;
        }
        size_t n = (size_t)eol.pos;
        s->line_since_ns = 0;
        if (s->discarding_line || (long)n > s->p.line_length_hard_limit) {
            evbuffer_drain(in, n + eol_len);
            s->discarding_line = false;
            sess_reply(s, 500, "5.2.3 line too long", NULL);
            continue;
        }
        char *line = malloc(n + 1);
        if (!line)
            abort();
        evbuffer_remove(in, line, n);
        line[n] = 0;
        evbuffer_drain(in, eol_len);
        if (!valid_command_line(line, n)) {
            sess_reply(s, 501, "5.5.2 Invalid UTF-8 in command", NULL);
            free(line);
            continue;
        }
        dispatch_line(s, line);
        free(line);
    }
    s->in_loop = false;
    if (s->peer_eof && !s->busy && !s->dead)
        s->close_after_write = true; /* all it sent is answered; a partial line never will be */
    sess_flush(s);
    if (s->bev && !s->dead && s->close_after_write && sess_out_empty(s)) {
        if (s->tls)
            tls_drain_check(-1, 0, s);
        else
            sess_reap_soon(s);
    }
}

/* ---- libevent callbacks ------------------------------------------------------------------- */

static void sess_read_cb(struct bufferevent *bev, void *arg)
{
    if (!sess_too_slow(arg))
        sess_process(arg);
}

/* The client said nothing for client_timeout (reading is on only while the
 * session waits for the client). */
static void sess_idle_timeout(sess *s)
{
    DDEBUG(SMOD, "session=%s peer=%s idle too long in state %s", s->session_id, s->peer_str,
           state_names[s->state]);
    sess_replyf(s, 421, NULL, "4.3.2 %s idle too long", s->p.hostname);
}

/* Whether the client has taken too long over the command line or the DATA
 * transfer in progress, however steadily it trickles bytes (slowloris): a
 * command line must arrive within client_timeout of its first byte; DATA
 * gets client_timeout plus what min_data_rate allows for its size so far.
 * Checked when bytes arrive; a client that sends nothing at all meets the
 * idle timeout instead. Answers 421 and returns true when it is over. */
static bool sess_too_slow(sess *s)
{
    if (s->busy || s->dead)
        return false;
    int64_t now = clock_mono_ns();
    if (s->state == SS_DATA && s->data_since_ns) {
        int64_t allowed = s->p.client_timeout_ns;
        if (s->p.min_data_rate > 0)
            allowed += (int64_t)((double)s->data_len / (double)s->p.min_data_rate * 1e9);
        if (s->p.min_data_rate > 0 && now - s->data_since_ns > allowed) {
            DINFO(SMOD, "session=%s peer=%s DATA too slow: %zu bytes in %.1fs (floor %ld B/s)",
                  s->session_id, s->peer_str, s->data_len, (double)(now - s->data_since_ns) / 1e9,
                  s->p.min_data_rate);
            sess_replyf(s, 421, NULL, "4.4.2 %s data transfer too slow", s->p.hostname);
            return true;
        }
        return false;
    }
    if (s->line_since_ns && now - s->line_since_ns > s->p.client_timeout_ns) {
        DINFO(SMOD, "session=%s peer=%s command line took over %.0fs in state %s", s->session_id,
              s->peer_str, (double)s->p.client_timeout_ns / 1e9, state_names[s->state]);
        sess_replyf(s, 421, NULL, "4.4.2 %s command timed out", s->p.hostname);
        return true;
    }
    return false;
}

/* A plain session's socket: readable, or idle for client_timeout. */
static void sess_rev_cb(evutil_socket_t fd, short what, void *arg)
{
    sess *s = arg;
    if (s->dead)
        return;
    if (what & EV_TIMEOUT) {
        if (!s->busy) /* waiting on policy/spool: the processing deadline governs */
            sess_idle_timeout(s);
        return;
    }
    /* data_buffer_size: the bytes one read may take while DATA streams in */
    size_t max = s->state == SS_DATA ? (size_t)s->p.data_buffer_size : SESS_READ_MAX;
    ssize_t n = net_read_some(s->inq, fd, max);
    if (n > 0) {
        if (!sess_too_slow(s))
            sess_process(s);
        return;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    if (n == 0) {
        sess_peer_eof(s);
        return;
    }
    DDEBUG(SMOD, "session=%s peer=%s read failed: %s", s->session_id, s->peer_str,
           strerror(errno));
    sess_reap_soon(s);
}

/* End of stream from the client. A client may pipeline its last commands
 * and QUIT, then shut its sending side (shutdown(SHUT_WR)) while it waits
 * for the replies: what it sent before the EOF is still answered, including
 * a transaction whose spool save is in flight; then the session ends
 * (sess_process sets close_after_write once nothing is pending). */
static void sess_peer_eof(sess *s)
{
    if (!s->peer_eof)
        DDEBUG(SMOD, "session=%s peer=%s closed its sending side in state %s", s->session_id,
               s->peer_str, state_names[s->state]);
    if (s->filtered && !s->tls) {
        sess_reap_soon(s); /* mid-handshake: there is nothing to answer */
        return;
    }
    s->peer_eof = true;
    sess_reading(s, false);
    sess_process(s);
}

/* A pending drain poll holds a reference: the session can be reaped while
 * it waits (the client resets the connection, or a second poll chain,
 * started by sess_write_cb, finished first), and the poll must not then
 * run on freed memory (ASan, found by the network fuzzer). */
static void tls_drain_poll(evutil_socket_t fd, short what, void *arg)
{
    sess *s = arg;
    s->refs--;
    if (s->dead) {
        if (s->refs == 0 && !s->reap_armed)
            sess_free(s);
        return;
    }
    tls_drain_check(fd, what, s);
}

/* A TLS session's final reply sits in the filter's underlying buffer after
 * the filter drained: wait (briefly) until the socket took it. */
static void tls_drain_check(evutil_socket_t fd, short what, void *arg)
{
    sess *s = arg;
    struct bufferevent *under = s->bev ? bufferevent_get_underlying(s->bev) : NULL;
    if (!s->dead && under && evbuffer_get_length(bufferevent_get_output(under)) > 0 &&
        s->drain_polls++ < 100) {
        struct timeval tv = {0, 10000};
        s->refs++;
        event_base_once(reactor_base(s->r), -1, EV_TIMEOUT, tls_drain_poll, s, &tv);
        return;
    }
    sess_reap_soon(s);
}

static void sess_write_cb(struct bufferevent *bev, void *arg)
{
    sess *s = arg;
    if (!s->filtered && evbuffer_get_length(bufferevent_get_output(bev)) == 0)
        bufferevent_disable(bev, EV_WRITE); /* back to write-through */
    if (s->starttls_pending) {
        start_tls_now(s);
        return;
    }
    if (s->close_after_write) {
        if (s->tls) {
            tls_drain_check(-1, 0, s);
            return;
        }
        sess_reap_soon(s);
    }
}

/* tls_required_client_ca: a client certificate that verified against it
 * gives the connection its tls_peer_subject_name ("C=US", "CN=..."); one
 * that is missing or does not verify leaves it unset. */
static void sess_client_cert(sess *s, SSL *ssl)
{
    X509 *cert = SSL_get1_peer_certificate(ssl);
    if (!cert)
        return;
    long vr = SSL_get_verify_result(ssl);
    if (vr != X509_V_OK) {
        DDEBUG(SMOD, "session=%s peer=%s client certificate not verified: %s", s->session_id,
               s->peer_str, X509_verify_cert_error_string(vr));
        X509_free(cert);
        return;
    }
    X509_NAME *nm = X509_get_subject_name(cert);
    int n = nm ? X509_NAME_entry_count(nm) : 0;
    json_t *arr = json_array();
    struct evbuffer *lines = evbuffer_new();
    for (int i = 0; i < n && arr && lines; i++) {
        X509_NAME_ENTRY *e = X509_NAME_get_entry(nm, i);
        int nid = e ? OBJ_obj2nid(X509_NAME_ENTRY_get_object(e)) : NID_undef;
        const char *sn = nid != NID_undef ? OBJ_nid2sn(nid) : NULL;
        unsigned char *u = NULL;
        int ul = sn ? ASN1_STRING_to_UTF8(&u, X509_NAME_ENTRY_get_data(e)) : -1;
        /* one entry per line in the log record: a newline inside would split it */
        if (ul >= 0 && !memchr(u, '\n', (size_t)ul) && utf8_valid((char *)u, (size_t)ul)) {
            char *one = NULL;
            if (asprintf(&one, "%s=%.*s", sn, ul, (const char *)u) >= 0) {
                json_array_append_new(arr, json_string(one));
                evbuffer_add_printf(lines, "%s%s", i ? "\n" : "", one);
                free(one);
            }
        }
        OPENSSL_free(u);
    }
    X509_free(cert);
    if (arr && json_array_size(arr) > 0 && lines) {
        size_t ll = evbuffer_get_length(lines);
        free(s->tls_subject);
        s->tls_subject = malloc(ll + 1);
        if (s->tls_subject) {
            evbuffer_remove(lines, s->tls_subject, ll);
            s->tls_subject[ll] = 0;
        }
        json_object_set(s->meta, "tls_peer_subject_name", arr);
    }
    json_decref(arr);
    if (lines)
        evbuffer_free(lines);
}

static void sess_event_cb(struct bufferevent *bev, short what, void *arg)
{
    sess *s = arg;
    if (what & BEV_EVENT_CONNECTED) {
        /* TLS handshake done */
        SSL *ssl = bufferevent_openssl_get_ssl(bev);
        s->tls = true;
        s->busy = false;
        free(s->tls_cipher);
        free(s->tls_version);
        s->tls_cipher = strdup(SSL_get_cipher_name(ssl));
        s->tls_version = strdup(SSL_get_version(ssl));
        json_object_set_new(s->meta, "tls_cipher", json_string(s->tls_cipher));
        json_object_set_new(s->meta, "tls_protocol_version", json_string(s->tls_version));
        if (trace_on(TRACE_SERVER))
            trace_emitf(TRACE_SERVER, s->meta, "INFO", "STARTTLS handshake complete: %s %s",
                        s->tls_version, s->tls_cipher);
        if (s->p.tls_required_client_ca)
            sess_client_cert(s, ssl);
        /* RFC 3207 §4.2: the client must say EHLO again */
        free(s->ehlo_domain);
        s->ehlo_domain = NULL;
        tx_reset(s);
        sess_set_state(s, SS_HELO);
        sess_process(s);
        return;
    }
    if (what & BEV_EVENT_TIMEOUT) {
        /* libevent turned off what timed out: reading (TLS sessions) or
         * writing (the client does not read its replies) */
        if (s->filtered && !s->tls) {
            /* the TLS handshake after STARTTLS did not finish within
             * client_timeout: no reply can be sent in either form, so the
             * session ends (else one silent client held it for ever) */
            DDEBUG(SMOD, "session=%s peer=%s TLS handshake timed out", s->session_id,
                   s->peer_str);
            sess_reap_soon(s);
            return;
        }
        if (s->busy) {
            /* waiting on policy/spool: the processing deadline governs */
            bufferevent_enable(bev, (what & BEV_EVENT_READING) ? EV_READ : EV_WRITE);
            return;
        }
        bufferevent_enable(bev, s->filtered ? EV_READ | EV_WRITE : EV_WRITE);
        sess_idle_timeout(s);
        return;
    }
    if ((what & BEV_EVENT_EOF) && !(what & BEV_EVENT_ERROR)) {
        sess_peer_eof(s);
        return;
    }
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
        if (what & BEV_EVENT_ERROR) {
            unsigned long e = bufferevent_get_openssl_error(bev);
            if (e) {
                char buf[256];
                ERR_error_string_n(e, buf, sizeof(buf));
                DDEBUG(SMOD, "session=%s peer=%s TLS error: %s", s->session_id, s->peer_str, buf);
            }
        }
        sess_reap_soon(s);
    }
}

static void on_accept(listener_cfg *ln, int fd, struct sockaddr *sa, socklen_t salen)
{
    reactor *r = reactor_current();
    atomic_fetch_add(&st_connections, 1);
    sess *s = calloc(1, sizeof(*s));
    if (!s) {
        close(fd);
        return;
    }
    s->ln = ln;
    s->r = r;
    s->next_live = live_list;
    if (live_list)
        live_list->prev_live = s;
    live_list = s;
    atomic_fetch_add(&ln->active, 1);
    atomic_fetch_add(&live_sessions, 1);
    memcpy(&s->peer, sa, (size_t)salen < sizeof(s->peer) ? (size_t)salen : sizeof(s->peer));
    net_format_addr(sa, s->peer_ip, sizeof(s->peer_ip), s->peer_str, sizeof(s->peer_str));
    if (ln->wildcard) {
        socklen_t ll = sizeof(s->local);
        getsockname(fd, (struct sockaddr *)&s->local, &ll);
    } else {
        s->local = ln->addr; /* bound to one address and port: that is the local end */
    }
    net_format_addr((struct sockaddr *)&s->local, s->local_ip, sizeof(s->local_ip), s->local_str,
                    sizeof(s->local_str));
    spoolid u; /* a v1 UUID without libuuid: no uuidd round trip */
    spoolid_new(&u);
    spoolid_to_uuid_str(&u, s->session_id);
    /* TCP_NODELAY comes from the listening socket (Linux copies it to the
     * accepted one). */
    s->bev = bufferevent_socket_new(reactor_base(r), fd, BEV_OPT_CLOSE_ON_FREE);
    s->outq = evbuffer_new();
    s->inq = evbuffer_new();
    s->rev = event_new(reactor_base(r), fd, EV_READ | EV_PERSIST, sess_rev_cb, s);
    if (!s->bev || !s->outq || !s->inq || !s->rev) {
        if (!s->bev)
            close(fd); /* else bufferevent_free closes it */
        sess_free(s);
        return;
    }
    s->meta = json_object();
    json_object_set_new(s->meta, "reception_protocol", json_string("ESMTP"));
    json_object_set_new(s->meta, "received_via", json_string(s->local_str));
    json_object_set_new(s->meta, "received_from", json_string(s->peer_str));
    if (trace_on(TRACE_SERVER))
        trace_emit(TRACE_SERVER, s->meta, TRACE_CONNECTED, NULL, NULL, 0);
    bufferevent_setcb(s->bev, sess_read_cb, sess_write_cb, sess_event_cb, s);
    sess_eval_params(s, NULL); /* the listener's, with its peer and via blocks */
    sess_reading(s, true);     /* the bufferevent writes only; EV_WRITE: see sess_flush */
    DDEBUG(SMOD, "session=%s accepted peer=%s via=%s", s->session_id, s->peer_str, s->local_str);

    /* pre-banner refusals */
    if (atomic_load(&shutting_down)) {
        sess_replyf(s, 421, NULL, "4.3.2 %s shutting down", s->p.hostname);
        return;
    }
    if (atomic_load(&ln->active) > ln->max_connections) {
        atomic_fetch_add(&st_denied, 1);
        sess_replyf(s, 421, NULL, "4.3.2 %s too many concurrent sessions", s->p.hostname);
        return;
    }
    if (!services_spool_ready()) {
        sess_replyf(s, 421, NULL, "4.3.2 %s waiting for spool startup. Try again soon!",
                    s->p.hostname);
        return;
    }
    char why[256];
    if (!services_spool_healthy(why, sizeof(why))) {
        sess_replyf(s, 421, NULL, "4.3.2 %s %s. Try later", s->p.hostname, why);
        return;
    }
    s->state = SS_CONNECT;
    sess_dynamic_parameters(s);
    if (!s->busy && !s->dead)
        sess_process(s);
}

/* ---- start and stop ----------------------------------------------------------------------------
 */

struct open_job {
    char err[512];
    int rc;
};

static void acceptor_resume(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    acceptor *a = arg;
    event_add(a->ev, NULL);
}

/* One accept per readiness report: the poll is level-triggered, so a
 * backlog reports again at once, and a lone connection costs no second
 * accept4 that would only fail with EAGAIN. */
static void acceptor_ready(evutil_socket_t lfd, short what, void *arg)
{
    (void)what;
    acceptor *a = arg;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    int fd = accept4(lfd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0) {
        on_accept(a->ln, fd, (struct sockaddr *)&ss, sl);
        return;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR || errno == ECONNABORTED ||
        errno == EPROTO)
        return;
    /* EMFILE, ENFILE, ENOBUFS, ENOMEM: the connection stays in the backlog;
     * stop polling for a moment instead of spinning on it. */
    DERROR(SMOD, "esmtp listener %s: accept failed: %s; pausing this listener for 100 ms",
           a->ln->listen, strerror(errno));
    event_del(a->ev);
    struct timeval tv = {0, 100 * 1000};
    evtimer_add(a->pause, &tv);
}

static void acceptor_free(acceptor *a)
{
    if (!a)
        return;
    if (a->ev)
        event_free(a->ev);
    if (a->pause)
        event_free(a->pause);
    if (a->fd >= 0)
        close(a->fd);
    free(a);
}

static void open_on_reactor(void *arg)
{
    struct open_job *j = arg;
    reactor *r = reactor_current();
    for (int i = 0; i < n_listeners && j->rc == 0; i++) {
        listener_cfg *ln = listeners[i];
        int fd = net_listen_reuseport(&ln->addr, ln->addrlen, reactor_index(r) == 0, true);
        if (fd < 0) {
            snprintf(j->err, sizeof(j->err), "cannot listen on %s: %s", ln->listen,
                     net_listen_strerror(fd));
            j->rc = -1;
            break;
        }
        acceptor *a = calloc(1, sizeof(*a));
        if (a) {
            a->ln = ln;
            a->fd = fd;
            a->ev = event_new(reactor_base(r), fd, EV_READ | EV_PERSIST, acceptor_ready, a);
            a->pause = evtimer_new(reactor_base(r), acceptor_resume, a);
        }
        if (!a || !a->ev || !a->pause || event_add(a->ev, NULL) != 0) {
            snprintf(j->err, sizeof(j->err), "cannot listen on %s", ln->listen);
            if (a)
                acceptor_free(a);
            else
                close(fd);
            j->rc = -1;
            break;
        }
        evlisteners[reactor_index(r) * MAX_LISTENERS + i] = a;
    }
}

int smtpsrv_start_listeners(char *err, size_t errlen)
{
    evlisteners = calloc((size_t)reactor_count() * MAX_LISTENERS, sizeof(*evlisteners));
    if (!evlisteners)
        return -1;
    for (int i = 0; i < n_listeners; i++) {
        listener_cfg *ln = listeners[i];
        char e2[512];
        if (lcfg_listener_prepare_tls(ln, e2, sizeof(e2)) != 0) {
            snprintf(err, errlen, "esmtp listener %s: TLS: %s", ln->listen, e2);
            return -1;
        }
        struct sockaddr_in *in = (struct sockaddr_in *)&ln->addr;
        bool loopback = ln->addr.ss_family == AF_INET
                            ? (ntohl(in->sin_addr.s_addr) >> 24) == 127
                            : IN6_IS_ADDR_LOOPBACK(&((struct sockaddr_in6 *)&ln->addr)->sin6_addr);
        lcfg_params p;
        lcfg_defaults(&p);
        lcfg_apply(&p, ln->base, NULL, NULL, NULL);
        if (p.deferred_queue && !loopback && !p.relay_hosts_set)
            DWARN(SMOD,
                  "esmtp listener %s has deferred_queue=true on a non-loopback address: "
                  "it must only face trusted injectors (check relay_hosts)",
                  ln->listen);
    }
    for (int r = 0; r < reactor_count(); r++) {
        struct open_job j = {0};
        reactor_call_sync(reactor_get(r), open_on_reactor, &j);
        if (j.rc != 0) {
            snprintf(err, errlen, "%s", j.err);
            return -1;
        }
    }
    for (int i = 0; i < n_listeners; i++) {
        char bound[INET6_ADDRSTRLEN + 8];
        net_format_addr((struct sockaddr *)&listeners[i]->addr, NULL, 0, bound, sizeof(bound));
        lcfg_params p;
        lcfg_defaults(&p);
        lcfg_apply(&p, listeners[i]->base, NULL, NULL, NULL);
        DINFO(SMOD, "esmtp listener on %s (hostname %s)", bound, p.hostname);
    }
    return 0;
}

/* ---- shutdown -----------------------------------------------------------------------------------
 */

/* Shutdown, after the grace period: sessions still open are dropped. */
static void close_sessions_on_reactor(void *arg)
{
    (void)arg;
    for (sess *s = live_list, *next; s; s = next) {
        next = s->next_live;
        if (s->call) {
            klua_call_cancel(s->call);
            s->call = NULL;
        }
        if (s->refs == 0)
            sess_free(s);
    }
}

static void close_listeners_on_reactor(void *arg)
{
    (void)arg;
    reactor *r = reactor_current();
    for (int i = 0; i < n_listeners; i++) {
        acceptor **slot = &evlisteners[reactor_index(r) * MAX_LISTENERS + i];
        if (*slot) {
            acceptor_free(*slot);
            *slot = NULL;
        }
    }
}

void smtpsrv_shutdown(void)
{
    atomic_store(&shutting_down, true);
    if (evlisteners) {
        for (int r = 0; r < reactor_count(); r++) {
            reactor_call_sync(reactor_get(r), close_listeners_on_reactor, NULL);
        }
    }
    /* Let sessions in the middle of a transaction finish (bounded). */
    for (int i = 0; i < 300 && atomic_load(&live_sessions) > 0; i++)
        usleep(10000);
    for (int r = 0; r < reactor_count() && atomic_load(&live_sessions) > 0; r++) {
        reactor_call_sync(reactor_get(r), close_sessions_on_reactor, NULL);
    }
    free(evlisteners);
    evlisteners = NULL;
    /* The listeners' configurations stay: a session whose spool save is
     * still in flight finishes its reception (relay checks, replies) when
     * the save completes, while the spool drains. smtpsrv_free, once the
     * reactors have stopped, frees them. */
}

void smtpsrv_free(void)
{
    for (int i = 0; i < n_listeners; i++) {
        lcfg_listener_free(listeners[i]);
        listeners[i] = NULL;
    }
    n_listeners = 0;
    lcfg_tls_cache_clear();
}
