/* kumo.nats: NATS JetStream publishing for policies (nats.h), over libnats.
 *
 * A client is a libnats connection and JetStream context driven by a thread
 * of its own, with a queue of jobs filled on the reactor: the connect (the
 * first job; connect{} waits for it), then the publishes in order. A publish
 * that awaits its acknowledgement goes out with js_PublishMsgAsync; libnats
 * calls ack_handler on one of its threads with the broker's answer (or an
 * error once request_timeout passes), and the handler finds the job by its
 * message in a table under a global mutex (so it never needs the client)
 * and posts the result to the job's reactor. Without await_ack the message
 * is published and the job completes at once. libnats reconnects by itself
 * (without limit unless max_reconnects says otherwise); while it is away,
 * publishes wait in its reconnect buffer and their acknowledgements time
 * out, which fails them (for log hooks: a transient failure, retried).
 *
 * Owns: the clients (refcounted by their Lua userdata and their jobs), the
 * jobs, the table of unacknowledged publishes. Failures: connect errors are
 * errors of connect{}; a publish fails with the broker's or libnats's words;
 * shutdown fails what waits (nats_lua_stop, before the reactors stop). */
#include "lua/lib/nats.h"

#include <lauxlib.h>
#include <nats/nats.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/kerr.h"
#include "core/reactor.h"
#include "lua/klua.h"
#include "lua/lib/fields.h"
#include "lua/lib/lualib.h"
#include "lua/lib/secrets.h"
#include "lua/lib/waiter.h"

#define CLIENT_MT "kumo.nats.Client"
#define OPTS_MT "kumo.nats.options"
#define MAX_SUBJECT 1024
#define MAX_SERVERS 64
#define PENDING_BUCKETS 256

typedef struct nclient nclient;
enum nkind { NJ_CONNECT, NJ_PUBLISH };

typedef struct njob {
    waiter wt; /* the policy's call */
    enum nkind kind;
    nclient *c;
    reactor *r;
    struct njob *next;  /* the client's queue */
    struct njob *hnext; /* the pending table */
    natsMsg *msg;       /* ours until libnats takes it */
    const natsMsg *key; /* in the pending table */
    bool await_ack;
    /* result */
    int rc;
    char err[512];
    char stream[256], domain[256];
    uint64_t seq;
    bool duplicate;
} njob;

struct nclient {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int refs; /* the userdata and the jobs */
    njob *head, *tail;
    bool close_req, dead, exited;
    natsOptions *opts;
    int64_t request_ms, max_pending;
    char where[272]; /* "nats " and the servers, for messages */
    natsConnection *nc;
    jsCtx *js;
    nclient *gnext;
};

typedef struct nuser {
    nclient *c;
    bool closed;
} nuser;

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_cv = PTHREAD_COND_INITIALIZER;
static nclient *g_clients;
static int g_threads;
static atomic_bool g_stopped;
static bool g_used; /* libnats was initialised (under g_mu) */
static njob *g_pending[PENDING_BUCKETS];

/* ---- the table of unacknowledged publishes ---------------------------------------------- */

static size_t bucket(const natsMsg *m)
{
    return ((uintptr_t)m >> 4) % PENDING_BUCKETS;
}

static void pending_put(njob *j)
{
    pthread_mutex_lock(&g_mu);
    size_t b = bucket(j->key);
    j->hnext = g_pending[b];
    g_pending[b] = j;
    pthread_mutex_unlock(&g_mu);
}

static njob *pending_take(const natsMsg *m)
{
    pthread_mutex_lock(&g_mu);
    njob **pp = &g_pending[bucket(m)];
    while (*pp && (*pp)->key != m)
        pp = &(*pp)->hnext;
    njob *j = *pp;
    if (j)
        *pp = j->hnext;
    pthread_mutex_unlock(&g_mu);
    return j;
}

/* Takes every unacknowledged publish of c out of the table. */
static njob *pending_take_all(nclient *c)
{
    njob *out = NULL;
    pthread_mutex_lock(&g_mu);
    for (size_t b = 0; b < PENDING_BUCKETS; b++) {
        njob **pp = &g_pending[b];
        while (*pp) {
            njob *j = *pp;
            if (j->c == c) {
                *pp = j->hnext;
                j->hnext = out;
                out = j;
            } else {
                pp = &j->hnext;
            }
        }
    }
    pthread_mutex_unlock(&g_mu);
    return out;
}

/* ---- clients ------------------------------------------------------------------------------- */

static void client_free(nclient *c)
{
    pthread_mutex_lock(&g_mu);
    for (nclient **pp = &g_clients; *pp; pp = &(*pp)->gnext) {
        if (*pp == c) {
            *pp = c->gnext;
            break;
        }
    }
    pthread_mutex_unlock(&g_mu);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
    free(c);
}

static void client_unref(nclient *c)
{
    pthread_mutex_lock(&c->mu);
    bool last = --c->refs == 0;
    if (last) {
        c->close_req = true;
        pthread_cond_signal(&c->cv);
        last = c->exited;
    }
    pthread_mutex_unlock(&c->mu);
    if (last)
        client_free(c);
}

static void job_free(njob *j)
{
    if (j->msg)
        natsMsg_Destroy(j->msg);
    free(j);
}

static void status_text(natsStatus s, char *buf, size_t n)
{
    natsStatus ls = NATS_OK;
    const char *last = nats_GetLastError(&ls);
    if (last && *last && ls == s) {
        /* libnats prefixes "(file.c:line): " */
        const char *p = last[0] == '(' ? strstr(last, "): ") : NULL;
        snprintf(buf, n, "%s", p ? p + 3 : last);
    }
    else
        snprintf(buf, n, "%s", natsStatus_GetText(s));
}

/* Runs on the job's reactor: resumes the coroutine with (true, result) or
 * (false, error). */
static void job_done(void *arg)
{
    njob *j = arg;
    nclient *c = j->c;
    klua_call *call = waiter_finish(&j->wt); /* NULL: shutdown gave up the wait */
    if (call) {
        lua_State *co = klua_call_thread(call);
        if (j->rc) {
            lua_pushboolean(co, 0);
            lua_pushstring(co, j->err);
        } else {
            lua_pushboolean(co, 1);
            if (j->kind == NJ_PUBLISH) {
                lua_createtable(co, 0, 4);
                if (j->await_ack) {
                    lua_pushstring(co, j->stream);
                    lua_setfield(co, -2, "stream");
                    lua_pushinteger(co, (lua_Integer)j->seq);
                    lua_setfield(co, -2, "sequence");
                    lua_pushstring(co, j->domain);
                    lua_setfield(co, -2, "domain");
                    lua_pushboolean(co, j->duplicate);
                    lua_setfield(co, -2, "duplicate");
                }
            } else {
                lua_pushnil(co);
            }
        }
        job_free(j);
        client_unref(c);
        klua_wait_resume(call, 2);
        return;
    }
    job_free(j);
    client_unref(c);
}

static void job_fail_post(njob *j, int rc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void job_fail_post(njob *j, int rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(j->err, sizeof(j->err), fmt, ap);
    va_end(ap);
    j->rc = rc;
    reactor_post(j->r, job_done, j);
}

/* libnats's thread: the broker's answer to an asynchronous publish. */
static void ack_handler(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure)
{
    (void)js;
    (void)closure;
    njob *j = pending_take(msg);
    if (j) {
        if (pa) {
            snprintf(j->stream, sizeof(j->stream), "%s", pa->Stream ? pa->Stream : "");
            snprintf(j->domain, sizeof(j->domain), "%s", pa->Domain ? pa->Domain : "");
            j->seq = pa->Sequence;
            j->duplicate = pa->Duplicate;
            j->rc = 0;
            reactor_post(j->r, job_done, j);
        } else {
            natsStatus s = pae ? pae->Err : NATS_ERR;
            const char *text = pae && pae->ErrText && *pae->ErrText ? pae->ErrText
                                                                    : natsStatus_GetText(s);
            if (pae && pae->ErrCode)
                job_fail_post(j, KERR_IO, "%s: publish to '%s' failed: %s (JetStream error %d)",
                              j->c->where, natsMsg_GetSubject(msg), text, (int)pae->ErrCode);
            else
                job_fail_post(j, KERR_IO, "%s: publish to '%s' failed: %s", j->c->where,
                              natsMsg_GetSubject(msg), text);
        }
    }
    natsMsg_Destroy(msg);
}

static void connected_cb(natsConnection *nc, void *closure)
{
    (void)nc;
    (void)closure; /* retry_on_initial_connect: the connection came up */
}

static void run_publish(nclient *c, njob *j)
{
    char why[256];
    if (!j->await_ack) {
        natsStatus s = natsConnection_PublishMsg(c->nc, j->msg);
        natsMsg_Destroy(j->msg);
        j->msg = NULL;
        if (s != NATS_OK) {
            status_text(s, why, sizeof(why));
            job_fail_post(j, KERR_IO, "%s: publish failed: %s", c->where, why);
        } else {
            j->rc = 0;
            reactor_post(j->r, job_done, j);
        }
        return;
    }
    natsMsg *m = j->msg;
    j->msg = NULL;
    j->key = m;
    pending_put(j);
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MaxWait = c->request_ms;
    natsStatus s = js_PublishMsgAsync(c->js, &m, &po);
    if (s != NATS_OK) {
        if (m)
            natsMsg_Destroy(m); /* still ours */
        if (pending_take(j->key) == j) {
            status_text(s, why, sizeof(why));
            job_fail_post(j, KERR_IO, "%s: publish failed: %s", c->where, why);
        }
    }
}

static njob *pop_locked(nclient *c)
{
    njob *j = c->head;
    if (j) {
        c->head = j->next;
        if (!c->head)
            c->tail = NULL;
        j->next = NULL;
    }
    return j;
}

static void *client_main(void *arg)
{
    nclient *c = arg;
    pthread_setname_np(pthread_self(), "nats");
    char why[256];
    pthread_mutex_lock(&c->mu);
    njob *j = pop_locked(c); /* the connect, queued before the thread started */
    pthread_mutex_unlock(&c->mu);
    natsStatus s = natsConnection_Connect(&c->nc, c->opts);
    if (s == NATS_NOT_YET_CONNECTED)
        s = NATS_OK; /* retry_on_initial_connect: it goes on in the background */
    if (s == NATS_OK) {
        jsOptions o;
        jsOptions_Init(&o);
        o.Wait = c->request_ms;
        o.PublishAsync.AckHandler = ack_handler;
        o.PublishAsync.MaxPending = c->max_pending;
        /* a full window makes js_PublishMsgAsync wait here, never on a reactor */
        o.PublishAsync.StallWait = c->request_ms;
        s = natsConnection_JetStream(&c->js, c->nc, &o);
    }
    if (s != NATS_OK) {
        status_text(s, why, sizeof(why));
        pthread_mutex_lock(&c->mu);
        c->dead = true;
        pthread_mutex_unlock(&c->mu);
        job_fail_post(j, KERR_IO, "%s: cannot connect: %s", c->where, why);
    } else {
        j->rc = 0;
        reactor_post(j->r, job_done, j);
    }
    pthread_mutex_lock(&c->mu);
    while (!c->dead) {
        while (!c->head && !c->close_req)
            pthread_cond_wait(&c->cv, &c->mu);
        if (!c->head || atomic_load(&g_stopped))
            break; /* close() lets what is queued go out first; shutdown does not */
        j = pop_locked(c);
        pthread_mutex_unlock(&c->mu);
        run_publish(c, j);
        pthread_mutex_lock(&c->mu);
    }
    c->dead = true;
    while ((j = pop_locked(c)) != NULL)
        job_fail_post(j, KERR_SHUTDOWN, "%s: %s", c->where,
                      atomic_load(&g_stopped) ? "kumod is shutting down" : "client was closed");
    pthread_mutex_unlock(&c->mu);
    if (c->js && !atomic_load(&g_stopped)) {
        /* close() with acknowledgements outstanding: give them their time */
        jsPubOptions po;
        jsPubOptions_Init(&po);
        po.MaxWait = c->request_ms;
        js_PublishAsyncComplete(c->js, &po);
    }
    for (njob *p = pending_take_all(c); p;) {
        njob *next = p->hnext;
        job_fail_post(p, KERR_IO, "%s: the connection was closed before the acknowledgement",
                      c->where);
        p = next;
    }
    if (c->nc)
        natsConnection_Close(c->nc);
    jsCtx_Destroy(c->js);
    natsConnection_Destroy(c->nc);
    natsOptions_Destroy(c->opts);
    c->js = NULL;
    c->nc = NULL;
    c->opts = NULL;
    pthread_mutex_lock(&c->mu);
    c->exited = true;
    bool last = c->refs == 0;
    pthread_mutex_unlock(&c->mu);
    if (last)
        client_free(c);
    pthread_mutex_lock(&g_mu);
    g_threads--;
    pthread_cond_broadcast(&g_cv);
    pthread_mutex_unlock(&g_mu);
    return NULL;
}

/* ---- Lua: waiting -------------------------------------------------------------------------- */

static void check_can_wait(lua_State *L, const char *fname)
{
    if (!reactor_current() || !lua_isyieldable(L) || !klua_current_call(L))
        lualib_error(L, fname, "may only be called from an event handler or a task (it waits "
                               "for the server)");
}

static int connect_k(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    (void)ctx;
    if (!lua_toboolean(L, -2))
        return lualib_error(L, "kumo.nats.connect", "%s", lua_tostring(L, -1));
    lua_pop(L, 2);
    return 1; /* the client userdata, left under the results */
}

static int publish_k(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    (void)ctx;
    if (!lua_toboolean(L, -2))
        return lualib_error(L, "client:publish", "%s", lua_tostring(L, -1));
    return 1;
}

/* Queues j on c and parks the coroutine; the caller yields. Returns 0, or
 * KERR_SHUTDOWN (j stays the caller's) when c no longer takes jobs. */
static int submit(lua_State *L, nclient *c, njob *j)
{
    pthread_mutex_lock(&c->mu);
    if (c->dead || c->close_req || atomic_load(&g_stopped)) {
        pthread_mutex_unlock(&c->mu);
        return KERR_SHUTDOWN;
    }
    c->refs++;
    j->c = c;
    j->r = reactor_current();
    if (c->tail)
        c->tail->next = j;
    else
        c->head = j;
    c->tail = j;
    pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->mu);
    waiter_park(&j->wt, L, NULL); /* check_can_wait said it can */
    return 0;
}

/* ---- kumo.nats.connect --------------------------------------------------------------------- */

static const char *const config_fields[] = {
    "servers",        "auth",          "name",          "no_echo",         "max_reconnects",
    "connection_timeout", "tls_required", "tls_first", "certificate",     "client_cert",
    "client_key",     "ping_interval", "sender_capacity", "client_capacity", "inbox_prefix",
    "request_timeout", "retry_on_initial_connect", "ignore_discovered_servers",
    "retain_servers_order", NULL};
static const char *const auth_fields[] = {"username", "password", "token", NULL};

typedef struct optsbox {
    natsOptions *o;
} optsbox;

static int optsbox_gc(lua_State *L)
{
    optsbox *b = lua_touserdata(L, 1);
    natsOptions_Destroy(b->o);
    b->o = NULL;
    return 0;
}

static void check_status(lua_State *L, natsStatus s, const char *fname, const char *what)
{
    if (s == NATS_OK)
        return;
    char why[256];
    status_text(s, why, sizeof(why));
    lualib_error(L, fname, "%s: %s", what, why);
}

static const char *opt_cstring(lua_State *L, int t, const char *k, const char *fname)
{
    size_t len;
    const char *s = fields_opt_string(L, t, k, fname, &len);
    if (s && strlen(s) != len)
        lualib_error(L, fname, "`%s` contains a NUL byte", k);
    return s;
}

/* The core of connect: the auth key sources are already loaded (strings). */
static int l_connect_core(lua_State *L)
{
    const char *fname = "kumo.nats.connect";
    if (lua_type(L, 1) != LUA_TTABLE)
        return lualib_error(L, fname, "expected a table of parameters, not %s",
                            luaL_typename(L, 1));
    lua_settop(L, 1);
    fields_check_known(L, 1, fname, "parameters", config_fields);
    optsbox *box = lua_newuserdatauv(L, sizeof(*box), 0); /* 2 */
    box->o = NULL;
    if (luaL_newmetatable(L, OPTS_MT)) {
        lua_pushcfunction(L, optsbox_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, 2);
    pthread_mutex_lock(&g_mu);
    g_used = true;
    pthread_mutex_unlock(&g_mu);
    check_status(L, natsOptions_Create(&box->o), fname, "cannot create the options");
    natsOptions *o = box->o;

    /* servers */
    lua_getfield(L, 1, "servers"); /* 3 */
    if (lua_type(L, 3) != LUA_TTABLE)
        return lualib_error(L, fname, "`servers` must be a list of addresses, not %s",
                            luaL_typename(L, 3));
    int n = (int)lua_rawlen(L, 3);
    if (n < 1 || n > MAX_SERVERS)
        return lualib_error(L, fname, "`servers` must list between 1 and %d addresses",
                            MAX_SERVERS);
    const char *servers[MAX_SERVERS];
    char where[256] = "";
    for (int i = 0; i < n; i++) {
        lua_rawgeti(L, 3, i + 1);
        size_t len;
        const char *s = lua_tolstring(L, -1, &len);
        if (lua_type(L, -1) != LUA_TSTRING || strlen(s) != len || len == 0 || len > 1024)
            return lualib_error(L, fname, "`servers[%d]` must be an address string", i + 1);
        servers[i] = s; /* held by the servers table */
        lua_pop(L, 1);
        size_t w = strlen(where);
        snprintf(where + w, sizeof(where) - w, "%s%s", i ? "," : "", s);
    }
    check_status(L, natsOptions_SetServers(o, servers, n), fname, "servers");

    /* auth */
    lua_getfield(L, 1, "auth"); /* 4 */
    if (lua_type(L, 4) == LUA_TTABLE) {
        fields_check_known(L, 4, fname, "auth", auth_fields);
        const char *user = opt_cstring(L, 4, "username", fname);
        const char *pass = opt_cstring(L, 4, "password", fname);
        const char *token = opt_cstring(L, 4, "token", fname);
        if (!user != !pass)
            return lualib_error(L, fname,
                                "either specify both of username and password or neither");
        if (user)
            check_status(L, natsOptions_SetUserInfo(o, user, pass), fname, "auth");
        if (token)
            check_status(L, natsOptions_SetToken(o, token), fname, "auth");
    } else if (!lua_isnil(L, 4)) {
        return lualib_error(L, fname, "`auth` must be a table, not %s", luaL_typename(L, 4));
    }

    const char *s;
    if ((s = opt_cstring(L, 1, "name", fname)) != NULL)
        check_status(L, natsOptions_SetName(o, s), fname, "name");
    if (fields_opt_bool(L, 1, "no_echo", fname, false))
        check_status(L, natsOptions_SetNoEcho(o, true), fname, "no_echo");
    lua_Integer v = 0;
    fields_opt_integer(L, 1, "max_reconnects", fname, 0, INT32_MAX, &v);
    /* 0 (the default): no limit */
    check_status(L, natsOptions_SetMaxReconnect(o, v == 0 ? -1 : (int)v), fname,
                 "max_reconnects");
    int64_t ms = fields_opt_duration_ms(L, 1, "connection_timeout", fname);
    check_status(L, natsOptions_SetTimeout(o, ms ? ms : 5000), fname, "connection_timeout");
    if (fields_opt_bool(L, 1, "tls_required", fname, false))
        check_status(L, natsOptions_SetSecure(o, true), fname, "tls_required");
    if (fields_opt_bool(L, 1, "tls_first", fname, false))
        return lualib_error(L, fname, "`tls_first` is not supported: the NATS client library "
                                      "of this build (libnats %s) cannot start TLS before the "
                                      "server's INFO",
                            nats_GetVersion());
    if ((s = opt_cstring(L, 1, "certificate", fname)) != NULL)
        check_status(L, natsOptions_LoadCATrustedCertificates(o, s), fname, "certificate");
    const char *cert = opt_cstring(L, 1, "client_cert", fname);
    const char *key = opt_cstring(L, 1, "client_key", fname);
    if (!cert != !key)
        return lualib_error(L, fname, "either specify both of client_cert and client_key or "
                                      "neither");
    if (cert)
        check_status(L, natsOptions_LoadCertificatesChain(o, cert, key), fname, "client_cert");
    if ((ms = fields_opt_duration_ms(L, 1, "ping_interval", fname)) > 0)
        check_status(L, natsOptions_SetPingInterval(o, ms), fname, "ping_interval");
    lua_Integer cap = 128;
    fields_opt_integer(L, 1, "client_capacity", fname, 1, 1 << 20, &cap);
    fields_opt_integer(L, 1, "sender_capacity", fname, 1, 1 << 20, &cap);
    if ((s = opt_cstring(L, 1, "inbox_prefix", fname)) != NULL)
        check_status(L, natsOptions_SetCustomInboxPrefix(o, s), fname, "inbox_prefix");
    int64_t request_ms = fields_opt_duration_ms(L, 1, "request_timeout", fname);
    if (fields_opt_bool(L, 1, "retry_on_initial_connect", fname, false))
        check_status(L, natsOptions_SetRetryOnFailedConnect(o, true, connected_cb, NULL), fname,
                     "retry_on_initial_connect");
    if (fields_opt_bool(L, 1, "ignore_discovered_servers", fname, false))
        check_status(L, natsOptions_SetIgnoreDiscoveredServers(o, true), fname,
                     "ignore_discovered_servers");
    if (fields_opt_bool(L, 1, "retain_servers_order", fname, false))
        check_status(L, natsOptions_SetNoRandomize(o, true), fname, "retain_servers_order");
    check_can_wait(L, fname);

    nclient *c = calloc(1, sizeof(*c));
    njob *j = calloc(1, sizeof(*j));
    if (!c || !j) {
        free(c);
        free(j);
        return lualib_error(L, fname, "out of memory");
    }
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    c->opts = o;
    box->o = NULL;
    c->request_ms = request_ms ? request_ms : 10000;
    c->max_pending = cap;
    snprintf(c->where, sizeof(c->where), "nats %s", where);
    c->refs = 2; /* the userdata's and the connect job's */
    j->kind = NJ_CONNECT;
    j->c = c;
    j->r = reactor_current();
    c->head = c->tail = j;

    pthread_mutex_lock(&g_mu);
    pthread_t th;
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    int rc = atomic_load(&g_stopped) ? -1 : pthread_create(&th, &at, client_main, c);
    pthread_attr_destroy(&at);
    if (rc == 0) {
        g_threads++;
        c->gnext = g_clients;
        g_clients = c;
    }
    pthread_mutex_unlock(&g_mu);
    if (rc != 0) {
        natsOptions_Destroy(c->opts);
        pthread_mutex_destroy(&c->mu);
        pthread_cond_destroy(&c->cv);
        free(c);
        free(j);
        return lualib_error(L, fname, "%s", atomic_load(&g_stopped) ? "kumod is shutting down"
                                                                    : "cannot start a thread");
    }
    /* nothing may raise from here on */
    nuser *u = lua_newuserdatauv(L, sizeof(*u), 0);
    u->c = c;
    u->closed = false;
    luaL_setmetatable(L, CLIENT_MT);
    waiter_park(&j->wt, L, NULL); /* check_can_wait said it can */
    return lua_yieldk(L, 0, 0, connect_k);
}

/* ---- the client ---------------------------------------------------------------------------- */

static nuser *check_client(lua_State *L, const char *method)
{
    nuser *u = luaL_testudata(L, 1, CLIENT_MT);
    if (!u)
        luaL_error(L, "client:%s: must be called as a method on a client from kumo.nats.connect",
                   method);
    return u;
}

static bool valid_subject(const char *s, size_t len)
{
    if (len == 0 || len > MAX_SUBJECT)
        return false;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)s[i] <= ' ' || s[i] == 0x7f)
            return false;
    return true;
}

static bool valid_header_name(const char *s, size_t len)
{
    if (len == 0 || len > 256)
        return false;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)s[i] <= ' ' || s[i] == ':' || (unsigned char)s[i] >= 0x7f)
            return false;
    return true;
}

static bool valid_header_value(const char *s, size_t len)
{
    if (len > 65536)
        return false;
    for (size_t i = 0; i < len; i++)
        if (s[i] == '\r' || s[i] == '\n' || s[i] == 0)
            return false;
    return true;
}

typedef struct msgbox {
    natsMsg *m;
} msgbox;

static int msgbox_gc(lua_State *L)
{
    msgbox *b = lua_touserdata(L, 1);
    if (b->m)
        natsMsg_Destroy(b->m);
    b->m = NULL;
    return 0;
}

static const char *const publish_fields[] = {"subject", "payload", "headers", "await_ack",
                                             NULL};

static int l_publish(lua_State *L)
{
    const char *fname = "client:publish";
    nuser *u = check_client(L, "publish");
    if (u->closed || !u->c)
        return lualib_error(L, fname, "client was closed");
    if (lua_type(L, 2) != LUA_TTABLE)
        return lualib_error(L, fname, "expected a table of parameters, not %s",
                            luaL_typename(L, 2));
    lua_settop(L, 2);
    fields_check_known(L, 2, fname, "parameters", publish_fields);
    size_t slen, plen;
    const char *subject = fields_opt_string(L, 2, "subject", fname, &slen);
    if (!subject)
        return lualib_error(L, fname, "`subject` is required");
    if (!valid_subject(subject, slen))
        return lualib_error(L, fname, "`subject` must be 1 to %d bytes without spaces or "
                                      "control characters",
                            MAX_SUBJECT);
    const char *payload = fields_opt_string(L, 2, "payload", fname, &plen);
    if (!payload)
        return lualib_error(L, fname, "`payload` is required");
    if (plen > 64u * 1024 * 1024)
        return lualib_error(L, fname, "`payload` is larger than 64 MiB");
    bool await_ack = fields_opt_bool(L, 2, "await_ack", fname, true);
    msgbox *box = lua_newuserdatauv(L, sizeof(*box), 0); /* 3 */
    box->m = NULL;
    if (luaL_newmetatable(L, "kumo.nats.msgbox")) {
        lua_pushcfunction(L, msgbox_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, 3);
    check_status(L, natsMsg_Create(&box->m, subject, NULL, payload, (int)plen), fname,
                 "cannot build the message");
    lua_getfield(L, 2, "headers"); /* 4 */
    if (lua_type(L, 4) == LUA_TTABLE) {
        lua_pushnil(L);
        while (lua_next(L, 4)) {
            size_t kl, vl;
            const char *k = lua_tolstring(L, -2, &kl);
            if (lua_type(L, -2) != LUA_TSTRING || !valid_header_name(k, kl))
                return lualib_error(L, fname, "`headers`: names must be strings of printable "
                                              "characters without ':'");
            if (lua_type(L, -1) != LUA_TSTRING)
                return lualib_error(L, fname, "`headers`: the value of '%s' must be a string, "
                                              "not %s",
                                    k, luaL_typename(L, -1));
            const char *val = lua_tolstring(L, -1, &vl);
            if (!valid_header_value(val, vl))
                return lualib_error(L, fname, "`headers`: the value of '%s' must not contain "
                                              "CR, LF or NUL",
                                    k);
            check_status(L, natsMsgHeader_Set(box->m, k, val), fname, "headers");
            lua_pop(L, 1);
        }
    } else if (!lua_isnil(L, 4)) {
        return lualib_error(L, fname, "`headers` must be a table, not %s", luaL_typename(L, 4));
    }
    check_can_wait(L, fname);
    njob *j = calloc(1, sizeof(*j));
    if (!j)
        return lualib_error(L, fname, "out of memory");
    j->kind = NJ_PUBLISH;
    j->await_ack = await_ack;
    j->msg = box->m;
    box->m = NULL;
    if (submit(L, u->c, j) != 0) {
        job_free(j);
        return lualib_error(L, fname, "client was closed");
    }
    lua_settop(L, 0);
    return lua_yieldk(L, 0, 0, publish_k);
}

static int l_close(lua_State *L)
{
    nuser *u = check_client(L, "close");
    if (!u->closed && u->c) {
        u->closed = true;
        pthread_mutex_lock(&u->c->mu);
        u->c->close_req = true;
        pthread_cond_signal(&u->c->cv);
        pthread_mutex_unlock(&u->c->mu);
    }
    return 0;
}

static int l_client_gc(lua_State *L)
{
    nuser *u = luaL_checkudata(L, 1, CLIENT_MT);
    if (u->c)
        client_unref(u->c);
    u->c = NULL;
    return 0;
}

static int l_client_tostring(lua_State *L)
{
    nuser *u = luaL_checkudata(L, 1, CLIENT_MT);
    lua_pushfstring(L, "NATSClient(%s%s)", u->c ? u->c->where + 5 : "",
                    u->closed ? ", closed" : "");
    return 1;
}

/* ---- registration -------------------------------------------------------------------------- */

/* connect loads the auth key sources first (a KeySource may call an event
 * handler that waits), then calls the core, whose errors it raises again at
 * the policy's line (the core's own position is this chunk's). */
static const char connect_src[] =
    "local core, load = ...\n"
    "local KEYS = { username = true, password = true, token = true }\n"
    "return function(config)\n"
    "  if type(config) == 'table' and type(config.auth) == 'table' then\n"
    "    local auth, c = {}, {}\n"
    "    for k, v in pairs(config.auth) do\n"
    "      if KEYS[k] then\n"
    "        auth[k] = load(v, 'kumo.nats.connect', 'auth.' .. k, 3)\n"
    "      else\n"
    "        auth[k] = v\n"
    "      end\n"
    "    end\n"
    "    for k, v in pairs(config) do c[k] = v end\n"
    "    c.auth = auth\n"
    "    config = c\n"
    "  end\n"
    "  local ok, client = pcall(core, config)\n"
    "  if not ok then\n"
    "    if type(client) == 'string' then\n"
    "      client = client:gsub('^kumo%.nats:%d+: ', '')\n"
    "    end\n"
    "    error(client, 2)\n"
    "  end\n"
    "  return client\n"
    "end\n";

static void nats_open(lua_State *L)
{
    if (luaL_newmetatable(L, CLIENT_MT)) {
        static const luaL_Reg methods[] = {
            {"publish", l_publish}, {"close", l_close}, {NULL, NULL}};
        lua_newtable(L);
        luaL_setfuncs(L, methods, 0);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, l_client_gc);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, l_client_tostring);
        lua_setfield(L, -2, "__tostring");
    }
    lua_pop(L, 1);
    luaL_getsubtable(L, -1, "nats");
    if (luaL_loadbuffer(L, connect_src, sizeof(connect_src) - 1, "=kumo.nats") != LUA_OK)
        lua_error(L); /* our own chunk */
    lua_pushcfunction(L, l_connect_core);
    secrets_push_loader(L);
    lua_call(L, 2, 1);
    lua_setfield(L, -2, "connect");
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    lua_pushvalue(L, -2);
    lua_setfield(L, -2, "kumo.nats");
    lua_pop(L, 2);
}

void nats_lua_register(void)
{
    klua_register_opener(nats_open);
}

void nats_lua_stop(void)
{
    pthread_mutex_lock(&g_mu);
    atomic_store(&g_stopped, true);
    for (nclient *c = g_clients; c; c = c->gnext) {
        pthread_mutex_lock(&c->mu);
        c->close_req = true;
        pthread_cond_signal(&c->cv);
        pthread_mutex_unlock(&c->mu);
    }
    while (g_threads > 0)
        pthread_cond_wait(&g_cv, &g_mu);
    pthread_mutex_unlock(&g_mu);
}

void nats_lua_shutdown(void)
{
    pthread_mutex_lock(&g_mu);
    bool used = g_used;
    g_used = false;
    pthread_mutex_unlock(&g_mu);
    /* libnats's own threads and memory: every connection is gone, and so
     * are the VMs, whose garbage (options and messages of calls that
     * failed) is freed through libnats */
    if (used)
        nats_CloseAndWait(5000);
}
