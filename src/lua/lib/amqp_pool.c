/* AMQP connection pools (amqp_pool.h): the connection threads, the job
 * queue and the reactor-side completion of jobs.
 *
 * Owns: every pool (configuration, job queue, connection threads and their
 * librabbitmq connections) and every submitted job until its done function
 * has run. Threads: a job is filled and submitted on a reactor; a pool's
 * connection threads take jobs from its queue (under the pool's mutex), run
 * them with librabbitmq (blocking calls, with time limits) and post the
 * completion to the job's reactor, which calls done and frees the job. The
 * only other cross-thread step is the reactor's backstop timer, which takes
 * the pool's mutex to fail a job whose thread is stuck and to shut that
 * connection's socket down (which frees the thread from its blocking call).
 *
 * Failures: a connection that fails (connect, login, write, a closed channel
 * or connection, a confirm that does not come in time) fails the jobs it
 * was running with a message naming the broker and the cause, and is torn
 * down; the next job opens a new one. Nothing is retried here: a failed
 * publish is an error in Lua (for log hooks: a transient failure, retried by
 * the queue), because a publish whose confirm never came may or may not
 * have reached the broker. */
#include "lua/lib/amqp_pool.h"

#include <amqp_framing.h>
#include <amqp_ssl_socket.h>
#include <amqp_tcp_socket.h>
#include <errno.h>
#include <event2/event.h>
#include <poll.h>
#include <stdarg.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "core/diag.h"
#include "core/kerr.h"

#define AMQP_MOD "amqp"
/* publishes sent together before their confirms are awaited */
#define BATCH_MAX 64
#define DEFAULT_TIMEOUT_MS 60000
/* a graceful close waits at most this long for the broker's answer */
#define CLOSE_TIMEOUT_MS 5000

typedef struct aconn aconn;

typedef struct amqp_job_result {
    int rc;
    char err[512];
    enum amqp_confirm_status status;
    int reply_code;
    char reply_text[256];
} amqp_job_result;

struct amqp_job_priv {
    amqp_job *next; /* in the pool's queue */
    amqp_pool *pool;
    reactor *r;
    struct event *timer; /* reactor side */
    int64_t queued_ms;
    /* under the pool's mutex */
    aconn *running;
    bool queued, finished, abandoned;
    /* the connection thread's own */
    amqp_job_result res;
    uint64_t tag;
    bool pending, returned;
};

typedef struct job_alloc {
    amqp_job pub;
    struct amqp_job_priv priv;
} job_alloc;

struct aconn {
    amqp_pool *p;
    amqp_connection_state_t st; /* NULL: not connected */
    int fd;                     /* under p->mu; -1 when not connected */
    uint64_t next_tag;
    aconn *next; /* p->conns, under p->mu */
};

struct amqp_pool {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    amqp_conf conf;
    char *key; /* shared pools: the configuration as a string */
    int refs;  /* users: Lua clients, jobs, the shared registry */
    amqp_job *head, *tail;
    int nthreads, idle, max_threads;
    bool stopping;
    bool registered; /* the shared registry holds a reference (under g_mu) */
    aconn *conns;
    amqp_pool *gnext; /* every pool, under g_mu */
};

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_cv = PTHREAD_COND_INITIALIZER;
static amqp_pool *g_pools;
static int g_threads;
static atomic_bool g_stopped;

static int64_t now_ms(void)
{
    return clock_mono_ms();
}

static struct timeval ms_tv(int64_t ms)
{
    if (ms < 0)
        ms = 0;
    return (struct timeval){.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
}

/* ---- configuration ----------------------------------------------------------------------- */

static char *dupz(const char *s)
{
    return s ? strdup(s) : NULL;
}

void amqp_conf_fini(amqp_conf *c)
{
    free(c->host);
    free(c->user);
    free(c->password);
    free(c->vhost);
    free(c->connection_name);
    free(c->root_ca_cert);
    free(c->client_cert);
    free(c->client_key);
    memset(c, 0, sizeof(*c));
}

static int conf_copy(amqp_conf *d, const amqp_conf *s)
{
    *d = *s;
    d->host = dupz(s->host);
    d->user = dupz(s->user);
    d->password = dupz(s->password);
    d->vhost = dupz(s->vhost);
    d->connection_name = dupz(s->connection_name);
    d->root_ca_cert = dupz(s->root_ca_cert);
    d->client_cert = dupz(s->client_cert);
    d->client_key = dupz(s->client_key);
    if (!d->host || (s->user && !d->user) || (s->password && !d->password) ||
        (s->vhost && !d->vhost) || (s->connection_name && !d->connection_name) ||
        (s->root_ca_cert && !d->root_ca_cert) || (s->client_cert && !d->client_cert) ||
        (s->client_key && !d->client_key)) {
        amqp_conf_fini(d);
        return KERR_NOMEM;
    }
    if (!d->port)
        d->port = d->tls ? 5671 : 5672;
    if (d->heartbeat_s < 0)
        d->heartbeat_s = 60;
    if (d->pool_size <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        d->pool_size = (int)(n > 0 ? n * 4 : 4);
    }
    if (d->connect_ms <= 0)
        d->connect_ms = DEFAULT_TIMEOUT_MS;
    if (d->publish_ms <= 0)
        d->publish_ms = DEFAULT_TIMEOUT_MS;
    if (d->wait_ms <= 0)
        d->wait_ms = DEFAULT_TIMEOUT_MS;
    return 0;
}

/* Every field, so that two different configurations never share a pool;
 * strings are length-prefixed so that no value can imitate another's. */
static char *conf_key(const amqp_conf *c)
{
    const char *s[] = {c->host,         c->user,        c->password,   c->vhost,
                       c->connection_name, c->root_ca_cert, c->client_cert, c->client_key};
    size_t len = 256;
    for (size_t i = 0; i < sizeof(s) / sizeof(s[0]); i++)
        len += (s[i] ? strlen(s[i]) : 0) + 24;
    char *k = malloc(len);
    if (!k)
        return NULL;
    size_t o = (size_t)snprintf(k, len, "%d|%d|%d|%d|%lld|%lld|%lld|%d", c->port, c->heartbeat_s,
                                c->tls, c->pool_size, (long long)c->connect_ms,
                                (long long)c->wait_ms, (long long)c->publish_ms, c->confirm);
    for (size_t i = 0; i < sizeof(s) / sizeof(s[0]); i++) {
        if (s[i])
            o += (size_t)snprintf(k + o, len - o, "|%zu:%s", strlen(s[i]), s[i]);
        else
            o += (size_t)snprintf(k + o, len - o, "|-");
    }
    return k;
}

/* ---- jobs --------------------------------------------------------------------------------- */

amqp_job *amqp_job_new(enum amqp_job_kind k)
{
    job_alloc *a = calloc(1, sizeof(*a));
    if (!a)
        return NULL;
    a->pub.kind = k;
    a->pub.priv = &a->priv;
    init_amqp_pool(&a->pub.mem, 4096);
    return &a->pub;
}

void amqp_job_free(amqp_job *j)
{
    if (!j)
        return;
    empty_amqp_pool(&j->mem);
    free((job_alloc *)j);
}

amqp_bytes_t amqp_job_bytes(amqp_job *j, const void *s, size_t len)
{
    if (!s)
        return amqp_empty_bytes;
    amqp_bytes_t b;
    /* amqp_pool_alloc_bytes leaves len 0 / bytes NULL when memory runs out */
    amqp_pool_alloc_bytes(&j->mem, len ? len : 1, &b);
    if (!b.bytes)
        return (amqp_bytes_t){0, NULL};
    memcpy(b.bytes, s, len);
    b.len = len;
    return b;
}

static void res_fail(amqp_job_result *r, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void res_fail(amqp_job_result *r, int rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->err, sizeof(r->err), fmt, ap);
    va_end(ap);
    r->rc = rc;
}

/* ---- reactor side: completion and the backstop timer ------------------------------------- */

static void res_publish(amqp_job *j, const amqp_job_result *r)
{
    j->rc = r->rc;
    snprintf(j->err, sizeof(j->err), "%s", r->err);
    j->status = r->status;
    j->reply_code = r->reply_code;
    snprintf(j->reply_text, sizeof(j->reply_text), "%s", r->reply_text);
}

/* Runs on the job's reactor once the thread has finished with the job. */
static void job_complete(void *arg)
{
    amqp_job *j = arg;
    struct amqp_job_priv *pv = j->priv;
    amqp_pool *p = pv->pool;
    if (pv->timer)
        event_free(pv->timer);
    pv->timer = NULL;
    j->done(j);
    amqp_job_free(j);
    amqp_pool_unref(p);
}

/* The backstop (reactor): the job is past every time limit its thread
 * keeps by itself. */
static void job_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    amqp_job *j = arg;
    struct amqp_job_priv *pv = j->priv;
    amqp_pool *p = pv->pool;
    event_free(pv->timer);
    pv->timer = NULL;
    pthread_mutex_lock(&p->mu);
    if (pv->finished) {
        /* the completion is already posted and will run */
        pthread_mutex_unlock(&p->mu);
        return;
    }
    bool own = pv->queued;
    if (pv->queued) {
        /* still waiting for a connection: out of the queue, ours again */
        amqp_job *prev = NULL;
        for (amqp_job *q = p->head; q; prev = q, q = q->priv->next) {
            if (q != j)
                continue;
            if (prev)
                prev->priv->next = pv->next;
            else
                p->head = pv->next;
            if (p->tail == j)
                p->tail = prev;
            break;
        }
        pv->queued = false;
    } else {
        /* its thread is stuck in a blocking call: shutting the socket down
         * frees it, and it frees the job when it comes back */
        pv->abandoned = true;
        if (pv->running && pv->running->fd >= 0)
            shutdown(pv->running->fd, SHUT_RDWR);
    }
    j->rc = KERR_TIMEDOUT;
    snprintf(j->err, sizeof(j->err), "%s:%d: no answer within %lld ms%s", p->conf.host,
             p->conf.port, (long long)(now_ms() - pv->queued_ms),
             own ? " (no connection became free)" : "");
    pthread_mutex_unlock(&p->mu);
    j->done(j);
    if (own) {
        amqp_job_free(j);
        amqp_pool_unref(p);
    }
}

/* ---- connections (connection thread) ------------------------------------------------------ */

static void reply_err(amqp_rpc_reply_t r, const char *what, char *err, size_t n)
{
    switch (r.reply_type) {
    case AMQP_RESPONSE_NORMAL:
        snprintf(err, n, "%s: no error", what);
        break;
    case AMQP_RESPONSE_NONE:
        snprintf(err, n, "%s: the broker sent no reply", what);
        break;
    case AMQP_RESPONSE_LIBRARY_EXCEPTION:
        snprintf(err, n, "%s: %s", what, amqp_error_string2(r.library_error));
        break;
    case AMQP_RESPONSE_SERVER_EXCEPTION:
        if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
            amqp_connection_close_t *m = r.reply.decoded;
            snprintf(err, n, "%s: the broker closed the connection: %u %.*s", what,
                     m->reply_code, (int)m->reply_text.len, (const char *)m->reply_text.bytes);
        } else if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
            amqp_channel_close_t *m = r.reply.decoded;
            snprintf(err, n, "%s: the broker closed the channel: %u %.*s", what, m->reply_code,
                     (int)m->reply_text.len, (const char *)m->reply_text.bytes);
        } else {
            snprintf(err, n, "%s: unexpected method 0x%08x from the broker", what,
                     (unsigned)r.reply.id);
        }
        break;
    }
}

static void conn_set_fd(aconn *c, int fd)
{
    pthread_mutex_lock(&c->p->mu);
    c->fd = fd;
    pthread_mutex_unlock(&c->p->mu);
}

/* Closes c's connection: politely (channel.close, connection.close) when
 * graceful, else by dropping the socket. */
static void conn_teardown(aconn *c, bool graceful)
{
    if (!c->st)
        return;
    if (graceful) {
        struct timeval tv = ms_tv(CLOSE_TIMEOUT_MS);
        amqp_set_rpc_timeout(c->st, &tv);
        amqp_channel_close(c->st, 1, AMQP_REPLY_SUCCESS);
        amqp_connection_close(c->st, AMQP_REPLY_SUCCESS);
    }
    conn_set_fd(c, -1);
    amqp_destroy_connection(c->st);
    c->st = NULL;
}

static int conn_open(aconn *c, char *err, size_t n)
{
    const amqp_conf *cf = &c->p->conf;
    char what[300];
    snprintf(what, sizeof(what), "%s:%d", cf->host, cf->port);
    amqp_connection_state_t st = amqp_new_connection();
    if (!st) {
        snprintf(err, n, "%s: out of memory", what);
        return KERR_NOMEM;
    }
    amqp_socket_t *sock = cf->tls ? amqp_ssl_socket_new(st) : amqp_tcp_socket_new(st);
    int rc = sock ? AMQP_STATUS_OK : AMQP_STATUS_NO_MEMORY;
    if (rc == AMQP_STATUS_OK && cf->tls) {
        amqp_ssl_socket_set_verify_peer(sock, 1);
        amqp_ssl_socket_set_verify_hostname(sock, 1);
        if (cf->root_ca_cert)
            rc = amqp_ssl_socket_set_cacert(sock, cf->root_ca_cert);
        if (rc == AMQP_STATUS_OK && cf->client_cert)
            rc = amqp_ssl_socket_set_key(sock, cf->client_cert, cf->client_key);
        if (rc != AMQP_STATUS_OK) {
            snprintf(err, n, "%s: TLS set-up: %s", what, amqp_error_string2(rc));
            amqp_destroy_connection(st);
            return KERR_INVAL;
        }
    }
    struct timeval tv = ms_tv(cf->connect_ms);
    if (rc == AMQP_STATUS_OK)
        rc = amqp_socket_open_noblock(sock, cf->host, cf->port, &tv);
    if (rc != AMQP_STATUS_OK) {
        /* librabbitmq keeps no errno: "a socket error occurred" is all it says */
        snprintf(err, n, "%s: cannot connect: %s", what, amqp_error_string2(rc));
        amqp_destroy_connection(st);
        return KERR_IO;
    }
    amqp_set_handshake_timeout(st, &tv);
    amqp_set_rpc_timeout(st, &tv);
    amqp_table_entry_t prop;
    amqp_table_t props = {0, &prop};
    if (cf->connection_name) {
        prop.key = amqp_cstring_bytes("connection_name");
        prop.value.kind = AMQP_FIELD_KIND_UTF8;
        prop.value.value.bytes = amqp_cstring_bytes(cf->connection_name);
        props.num_entries = 1;
    }
    amqp_rpc_reply_t r = amqp_login_with_properties(
        st, cf->vhost ? cf->vhost : "/", 0, AMQP_DEFAULT_FRAME_SIZE, cf->heartbeat_s, &props,
        AMQP_SASL_METHOD_PLAIN, cf->user ? cf->user : "guest", cf->password ? cf->password : "guest");
    if (r.reply_type == AMQP_RESPONSE_NORMAL) {
        amqp_channel_open(st, 1);
        r = amqp_get_rpc_reply(st);
    }
    if (r.reply_type == AMQP_RESPONSE_NORMAL && cf->confirm) {
        amqp_confirm_select(st, 1);
        r = amqp_get_rpc_reply(st);
    }
    if (r.reply_type != AMQP_RESPONSE_NORMAL) {
        reply_err(r, what, err, n);
        amqp_destroy_connection(st);
        return KERR_IO;
    }
    c->st = st;
    c->next_tag = 0;
    conn_set_fd(c, amqp_get_sockfd(st));
    DDEBUG(AMQP_MOD, "connected to %s", what);
    return 0;
}

/* Reads what the broker sent on an idle connection (heartbeats, a close
 * when it shuts down, late confirms of abandoned publishes). False when the
 * connection is gone or closing. */
static bool conn_alive(aconn *c)
{
    if (!c->st)
        return false;
    for (;;) {
        if (!amqp_data_in_buffer(c->st) && !amqp_frames_enqueued(c->st)) {
            struct pollfd pf = {.fd = amqp_get_sockfd(c->st), .events = POLLIN};
            if (poll(&pf, 1, 0) == 0)
                return true;
        }
        amqp_frame_t f;
        struct timeval tv = {0, 0};
        int rc = amqp_simple_wait_frame_noblock(c->st, &f, &tv);
        if (rc == AMQP_STATUS_TIMEOUT)
            return true;
        if (rc != AMQP_STATUS_OK) {
            DINFO(AMQP_MOD, "%s:%d: connection lost: %s", c->p->conf.host, c->p->conf.port,
                  amqp_error_string2(rc));
            return false;
        }
        if (f.frame_type == AMQP_FRAME_METHOD &&
            (f.payload.method.id == AMQP_CONNECTION_CLOSE_METHOD ||
             f.payload.method.id == AMQP_CHANNEL_CLOSE_METHOD)) {
            DINFO(AMQP_MOD, "%s:%d: the broker closed the connection", c->p->conf.host,
                  c->p->conf.port);
            return false;
        }
        amqp_maybe_release_buffers(c->st);
    }
}

/* ---- running a batch (connection thread) -------------------------------------------------- */

static int64_t job_publish_ms(const amqp_job *j, const amqp_pool *p)
{
    return j->publish_ms > 0 ? j->publish_ms : p->conf.publish_ms;
}

static void mark_confirm(const char *where, amqp_job **batch, int n, int *npending, uint64_t tag,
                         bool multiple, bool ack)
{
    for (int i = 0; i < n; i++) {
        struct amqp_job_priv *pv = batch[i]->priv;
        if (!pv->pending || (multiple ? pv->tag > tag : pv->tag != tag))
            continue;
        pv->pending = false;
        (*npending)--;
        pv->res.status = ack ? AMQP_ACK : AMQP_NACK;
        if (!ack)
            res_fail(&pv->res, KERR_REJECTED, "%s: the broker refused the message (basic.nack)",
                     where);
        else if (pv->returned)
            res_fail(&pv->res, KERR_REJECTED, "%s: the broker returned the message: %d %s", where,
                     pv->res.reply_code, pv->res.reply_text);
    }
}

static void fail_pending(amqp_job **batch, int n, int rc, const char *msg)
{
    for (int i = 0; i < n; i++) {
        struct amqp_job_priv *pv = batch[i]->priv;
        if (pv->pending) {
            pv->pending = false;
            res_fail(&pv->res, rc, "%s", msg);
        }
    }
}

/* A basic.return: the broker could not route a mandatory message. Returns
 * come before the confirm of their message; the message is matched by its
 * exchange and routing key among the unconfirmed ones. */
static int on_return(aconn *c, amqp_frame_t *f, amqp_job **batch, int n)
{
    amqp_basic_return_t *rt = f->payload.method.decoded;
    int code = rt->reply_code;
    char text[256];
    snprintf(text, sizeof(text), "%.*s", (int)rt->reply_text.len,
             (const char *)rt->reply_text.bytes);
    amqp_bytes_t ex = rt->exchange, rk = rt->routing_key;
    for (int i = 0; i < n; i++) {
        amqp_job *j = batch[i];
        struct amqp_job_priv *pv = j->priv;
        if (!pv->pending || pv->returned || !(j->mandatory || j->immediate) ||
            j->exchange.len != ex.len || j->routing_key.len != rk.len ||
            (ex.len && memcmp(j->exchange.bytes, ex.bytes, ex.len)) ||
            (rk.len && memcmp(j->routing_key.bytes, rk.bytes, rk.len)))
            continue;
        pv->returned = true;
        pv->res.reply_code = code;
        snprintf(pv->res.reply_text, sizeof(pv->res.reply_text), "%s", text);
        break;
    }
    /* the returned message's header and body follow */
    amqp_message_t m;
    amqp_rpc_reply_t r = amqp_read_message(c->st, f->channel, &m, 0);
    if (r.reply_type != AMQP_RESPONSE_NORMAL)
        return -1;
    amqp_destroy_message(&m);
    return 0;
}

static void run_publish(aconn *c, amqp_job **batch, int n)
{
    amqp_pool *p = c->p;
    char where[300], msg[600];
    snprintf(where, sizeof(where), "%s:%d", p->conf.host, p->conf.port);
    bool broken = false;
    int npending = 0;
    for (int i = 0; i < n; i++) {
        amqp_job *j = batch[i];
        struct amqp_job_priv *pv = j->priv;
        int rc = amqp_basic_publish(c->st, 1, j->exchange, j->routing_key, j->mandatory,
                                    j->immediate, &j->props, j->body);
        if (rc != AMQP_STATUS_OK) {
            snprintf(msg, sizeof(msg), "%s: publish failed: %s", where, amqp_error_string2(rc));
            for (int k = i; k < n; k++)
                res_fail(&batch[k]->priv->res, KERR_IO, "%s", msg);
            broken = true;
            break;
        }
        if (p->conf.confirm) {
            pv->tag = ++c->next_tag;
            pv->pending = true;
            npending++;
        } else {
            pv->res.status = AMQP_NOT_REQUESTED;
        }
    }
    int64_t t0 = now_ms();
    while (npending > 0 && !broken) {
        int64_t deadline = INT64_MAX;
        for (int i = 0; i < n; i++)
            if (batch[i]->priv->pending && t0 + job_publish_ms(batch[i], p) < deadline)
                deadline = t0 + job_publish_ms(batch[i], p);
        int64_t now = now_ms();
        if (now >= deadline) {
            snprintf(msg, sizeof(msg), "%s: no publisher confirm within %lld ms", where,
                     (long long)(now - t0));
            fail_pending(batch, n, KERR_TIMEDOUT, msg);
            broken = true; /* a confirm may still come: start afresh */
            break;
        }
        amqp_frame_t f;
        struct timeval tv = ms_tv(deadline - now);
        int rc = amqp_simple_wait_frame_noblock(c->st, &f, &tv);
        if (rc == AMQP_STATUS_TIMEOUT)
            continue;
        if (rc != AMQP_STATUS_OK) {
            snprintf(msg, sizeof(msg), "%s: connection lost while waiting for confirms: %s",
                     where, amqp_error_string2(rc));
            fail_pending(batch, n, KERR_IO, msg);
            broken = true;
            break;
        }
        if (f.frame_type != AMQP_FRAME_METHOD)
            continue;
        switch (f.payload.method.id) {
        case AMQP_BASIC_ACK_METHOD: {
            amqp_basic_ack_t *a = f.payload.method.decoded;
            mark_confirm(where, batch, n, &npending, a->delivery_tag, a->multiple, true);
            break;
        }
        case AMQP_BASIC_NACK_METHOD: {
            amqp_basic_nack_t *a = f.payload.method.decoded;
            mark_confirm(where, batch, n, &npending, a->delivery_tag, a->multiple, false);
            break;
        }
        case AMQP_BASIC_RETURN_METHOD:
            if (on_return(c, &f, batch, n) != 0) {
                snprintf(msg, sizeof(msg), "%s: cannot read a returned message", where);
                fail_pending(batch, n, KERR_IO, msg);
                broken = true;
            }
            break;
        case AMQP_CHANNEL_CLOSE_METHOD:
        case AMQP_CONNECTION_CLOSE_METHOD: {
            bool chan = f.payload.method.id == AMQP_CHANNEL_CLOSE_METHOD;
            amqp_channel_close_t *cc = f.payload.method.decoded; /* same layout's first fields */
            unsigned code = chan ? cc->reply_code
                                 : ((amqp_connection_close_t *)f.payload.method.decoded)->reply_code;
            amqp_bytes_t text = chan
                                    ? cc->reply_text
                                    : ((amqp_connection_close_t *)f.payload.method.decoded)->reply_text;
            snprintf(msg, sizeof(msg), "%s: the broker closed the %s: %u %.*s", where,
                     chan ? "channel" : "connection", code, (int)text.len,
                     (const char *)text.bytes);
            fail_pending(batch, n, KERR_REJECTED, msg);
            broken = true;
            break;
        }
        default:
            break; /* connection.blocked and the like: the deadline covers them */
        }
    }
    if (broken)
        conn_teardown(c, false);
    else
        amqp_maybe_release_buffers(c->st);
}

static void run_batch(aconn *c, amqp_job **batch, int n)
{
    amqp_pool *p = c->p;
    if (batch[0]->kind == AMQP_JOB_CLOSE) {
        conn_teardown(c, true);
        return;
    }
    if (c->st && !conn_alive(c))
        conn_teardown(c, false);
    if (!c->st) {
        char err[512];
        int rc = conn_open(c, err, sizeof(err));
        if (rc) {
            for (int i = 0; i < n; i++)
                res_fail(&batch[i]->priv->res, rc, "%s", err);
            return;
        }
    }
    if (batch[0]->kind == AMQP_JOB_CONNECT)
        return;
    (void)p;
    run_publish(c, batch, n);
}

/* ---- the connection thread ---------------------------------------------------------------- */

static void pool_destroy(amqp_pool *p);

static amqp_job *pop_locked(amqp_pool *p)
{
    amqp_job *j = p->head;
    if (j) {
        p->head = j->priv->next;
        if (!p->head)
            p->tail = NULL;
        j->priv->queued = false;
        j->priv->next = NULL;
    }
    return j;
}

/* Hands a job the thread has finished back to its reactor (mutex held). */
static void finish_locked(amqp_job *j, amqp_job **to_free)
{
    struct amqp_job_priv *pv = j->priv;
    pv->running = NULL;
    if (pv->abandoned) {
        /* the reactor already completed it (timeout) */
        pv->next = *to_free;
        *to_free = j;
        return;
    }
    pv->finished = true;
    res_publish(j, &pv->res);
    reactor_post(pv->r, job_complete, j);
}

static void *conn_main(void *arg)
{
    aconn *c = arg;
    amqp_pool *p = c->p;
    pthread_setname_np(pthread_self(), "amqp");
    amqp_job *batch[BATCH_MAX];
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->stopping && !p->head) {
            p->idle++;
            if (c->st && p->conf.heartbeat_s > 0) {
                /* wake up to answer the broker's heartbeats */
                struct timespec ts;
                clock_gettime(CLOCK_REALTIME, &ts);
                ts.tv_sec += p->conf.heartbeat_s > 1 ? p->conf.heartbeat_s / 2 : 1;
                int w = pthread_cond_timedwait(&p->cv, &p->mu, &ts);
                p->idle--;
                if (w == ETIMEDOUT && !p->head && !p->stopping) {
                    pthread_mutex_unlock(&p->mu);
                    if (!conn_alive(c))
                        conn_teardown(c, false);
                    pthread_mutex_lock(&p->mu);
                }
            } else {
                pthread_cond_wait(&p->cv, &p->mu);
                p->idle--;
            }
        }
        if (p->stopping)
            break;
        int n = 0;
        batch[n++] = pop_locked(p);
        while (batch[0]->kind == AMQP_JOB_PUBLISH && n < BATCH_MAX && p->head &&
               p->head->kind == AMQP_JOB_PUBLISH)
            batch[n++] = pop_locked(p);
        for (int i = 0; i < n; i++)
            batch[i]->priv->running = c;
        pthread_mutex_unlock(&p->mu);

        run_batch(c, batch, n);

        amqp_job *to_free = NULL;
        pthread_mutex_lock(&p->mu);
        for (int i = 0; i < n; i++)
            finish_locked(batch[i], &to_free);
        pthread_mutex_unlock(&p->mu);
        while (to_free) {
            amqp_job *j = to_free;
            to_free = j->priv->next;
            amqp_pool *jp = j->priv->pool;
            amqp_job_free(j);
            amqp_pool_unref(jp);
        }
        pthread_mutex_lock(&p->mu);
    }
    /* stopping: what still waits fails now */
    amqp_job *j;
    while ((j = pop_locked(p)) != NULL) {
        res_fail(&j->priv->res, KERR_SHUTDOWN, "%s:%d: kumod is shutting down", p->conf.host,
                 p->conf.port);
        amqp_job *none = NULL;
        finish_locked(j, &none);
    }
    for (aconn **pp = &p->conns; *pp; pp = &(*pp)->next) {
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    }
    pthread_mutex_unlock(&p->mu);
    conn_teardown(c, !g_stopped);
    free(c);
    pthread_mutex_lock(&p->mu);
    p->nthreads--;
    bool last = p->refs == 0 && p->nthreads == 0;
    pthread_mutex_unlock(&p->mu);
    if (last)
        pool_destroy(p);
    pthread_mutex_lock(&g_mu);
    g_threads--;
    pthread_cond_broadcast(&g_cv);
    pthread_mutex_unlock(&g_mu);
    return NULL;
}

/* ---- pools -------------------------------------------------------------------------------- */

static amqp_pool *pool_alloc(const amqp_conf *c, int max_threads)
{
    amqp_pool *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    if (conf_copy(&p->conf, c) != 0) {
        free(p);
        return NULL;
    }
    p->max_threads = max_threads > 0 ? max_threads : p->conf.pool_size;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    p->refs = 1;
    return p;
}

static void pool_destroy(amqp_pool *p)
{
    pthread_mutex_lock(&g_mu);
    for (amqp_pool **pp = &g_pools; *pp; pp = &(*pp)->gnext) {
        if (*pp == p) {
            *pp = p->gnext;
            break;
        }
    }
    pthread_mutex_unlock(&g_mu);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    amqp_conf_fini(&p->conf);
    free(p->key);
    free(p);
}

amqp_pool *amqp_pool_shared(const amqp_conf *c)
{
    char *key = conf_key(c);
    if (!key)
        return NULL;
    pthread_mutex_lock(&g_mu);
    amqp_pool *p = NULL;
    if (!g_stopped) {
        for (p = g_pools; p; p = p->gnext)
            if (p->key && strcmp(p->key, key) == 0)
                break;
        if (p) {
            pthread_mutex_lock(&p->mu);
            p->refs++;
            pthread_mutex_unlock(&p->mu);
        } else if ((p = pool_alloc(c, 0)) != NULL) {
            p->key = key;
            key = NULL;
            p->refs = 2; /* the registry's and the caller's */
            p->registered = true;
            p->gnext = g_pools;
            g_pools = p;
        }
    }
    pthread_mutex_unlock(&g_mu);
    free(key);
    return p;
}

amqp_pool *amqp_pool_new(const amqp_conf *c)
{
    pthread_mutex_lock(&g_mu);
    amqp_pool *p = g_stopped ? NULL : pool_alloc(c, 1);
    if (p) {
        p->gnext = g_pools;
        g_pools = p;
    }
    pthread_mutex_unlock(&g_mu);
    return p;
}

void amqp_pool_unref(amqp_pool *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    bool last = --p->refs == 0;
    if (last) {
        /* no user left, so no job either: the threads may go */
        p->stopping = true;
        pthread_cond_broadcast(&p->cv);
        last = p->nthreads == 0;
    }
    pthread_mutex_unlock(&p->mu);
    if (last)
        pool_destroy(p);
}

int amqp_pool_submit(amqp_pool *p, amqp_job *j, reactor *r, amqp_done_fn done, void *ud)
{
    struct amqp_job_priv *pv = j->priv;
    struct event *timer = evtimer_new(reactor_base(r), job_timeout, j);
    if (!timer)
        return KERR_NOMEM;
    j->done = done;
    j->ud = ud;
    pv->pool = p;
    pv->r = r;
    pv->queued_ms = now_ms();
    aconn *nc = NULL;
    pthread_mutex_lock(&g_mu);
    pthread_mutex_lock(&p->mu);
    if (g_stopped || p->stopping) {
        pthread_mutex_unlock(&p->mu);
        pthread_mutex_unlock(&g_mu);
        event_free(timer);
        return KERR_SHUTDOWN;
    }
    if (p->idle == 0 && p->nthreads < p->max_threads) {
        nc = calloc(1, sizeof(*nc));
        pthread_t th;
        pthread_attr_t at;
        pthread_attr_init(&at);
        pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
        if (nc) {
            nc->p = p;
            nc->fd = -1;
            if (pthread_create(&th, &at, conn_main, nc) == 0) {
                nc->next = p->conns;
                p->conns = nc;
                p->nthreads++;
                g_threads++;
            } else {
                free(nc);
                nc = NULL;
            }
        }
        pthread_attr_destroy(&at);
        if (!nc && p->nthreads == 0) {
            pthread_mutex_unlock(&p->mu);
            pthread_mutex_unlock(&g_mu);
            event_free(timer);
            return KERR_NOMEM;
        }
    }
    p->refs++; /* the job's */
    pv->queued = true;
    pv->next = NULL;
    if (p->tail)
        p->tail->priv->next = j;
    else
        p->head = j;
    p->tail = j;
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
    pthread_mutex_unlock(&g_mu);
    /* the backstop: past every limit the thread keeps by itself */
    int64_t ms = p->conf.wait_ms + p->conf.connect_ms + job_publish_ms(j, p) + 5000;
    pv->timer = timer;
    struct timeval tv = ms_tv(ms);
    evtimer_add(timer, &tv);
    return 0;
}

void amqp_pools_stop(void)
{
    pthread_mutex_lock(&g_mu);
    g_stopped = true;
    for (amqp_pool *p = g_pools; p; p = p->gnext) {
        pthread_mutex_lock(&p->mu);
        p->stopping = true;
        for (aconn *c = p->conns; c; c = c->next)
            if (c->fd >= 0)
                shutdown(c->fd, SHUT_RDWR);
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
    }
    while (g_threads > 0)
        pthread_cond_wait(&g_cv, &g_mu);
    /* the registry's references to the shared pools */
    size_t n = 0;
    for (amqp_pool *p = g_pools; p; p = p->gnext)
        n += p->registered;
    amqp_pool **drop = n ? calloc(n, sizeof(*drop)) : NULL;
    size_t k = 0;
    for (amqp_pool *p = g_pools; p && drop; p = p->gnext)
        if (p->registered) {
            p->registered = false;
            drop[k++] = p;
        }
    pthread_mutex_unlock(&g_mu);
    for (size_t i = 0; i < k; i++)
        amqp_pool_unref(drop[i]);
    free(drop);
}
