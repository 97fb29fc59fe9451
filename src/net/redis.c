/* Redis client (see redis.h): hiredis async contexts on the reactors'
 * libevent bases. Owns the configurations (shared, immutable, refcounted)
 * and, per reactor (REACTOR_SLOT_REDIS), one client per configuration in
 * use there: its node connections, the cluster slot map it has learnt and
 * the commands in flight.
 *
 * Threads: a client and everything in it is touched only on its reactor.
 * Never blocks: host names are resolved with the reactor's c-ares resolver,
 * connect(2) is non-blocking, replies come through the event loop.
 * Failures: a node that refuses or drops the connection fails the commands
 * sent to it, and for the next second the commands for it fail at once
 * (no connection storm while Redis is down); after that the next command
 * reconnects. A command without an answer within response_timeout fails and
 * its connection is dropped (a stuck server does not hold the callers).
 * The first failure of a node after it was up, and its return, are logged
 * at error and info level. */
#include "net/redis.h"

#include <arpa/inet.h>
#include <event2/event.h>
#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/diag.h"
#include "core/kerr.h"
#include "core/reactor.h"
#include "metrics/metrics.h"
#include "net/dns.h"

#define RMOD "kumod::redis"
#define NS_PER_SEC_ 1000000000LL
#define MAX_REDIRECTS 5
#define DOWN_HOLD_NS (1 * NS_PER_SEC_)

typedef struct cfg_node {
    char *host;
    int port;
    char *user, *pass;
    int db;
} cfg_node;

struct redis_cfg {
    atomic_int refs;
    cfg_node *nodes;
    size_t n_nodes;
    bool cluster;
    int64_t connect_timeout_ns, response_timeout_ns;
    char *service;
};

/* ---- configuration ------------------------------------------------------------------ */

static void cfg_free(redis_cfg *c)
{
    for (size_t i = 0; i < c->n_nodes; i++) {
        free(c->nodes[i].host);
        free(c->nodes[i].user);
        free(c->nodes[i].pass);
    }
    free(c->nodes);
    free(c->service);
    free(c);
}

static char *dupn(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    if (!d)
        abort();
    memcpy(d, s, n);
    d[n] = 0;
    return d;
}

/* redis://[<username>][:<password>@]<hostname>[:port][/[<db>][?protocol=<protocol>]] */
static int parse_url(const char *url, cfg_node *n, char *err, size_t errlen)
{
    memset(n, 0, sizeof(*n));
    n->port = 6379;
    const char *p = url;
    if (strncasecmp(p, "redis://", 8) == 0)
        p += 8;
    else if (strncasecmp(p, "rediss://", 9) == 0) {
        snprintf(err, errlen, "%s: TLS (rediss://) is not supported", url);
        return KERR_INVAL;
    } else if (strstr(p, "://")) {
        snprintf(err, errlen, "%s: not a redis:// url", url);
        return KERR_INVAL;
    }
    const char *end = p + strcspn(p, "/?");
    const char *at = memchr(p, '@', (size_t)(end - p));
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        if (colon) {
            if (colon > p)
                n->user = dupn(p, (size_t)(colon - p));
            n->pass = dupn(colon + 1, (size_t)(at - colon - 1));
        } else if (at > p) {
            n->user = dupn(p, (size_t)(at - p));
        }
        p = at + 1;
    }
    const char *hend = end;
    if (*p == '[') { /* [v6]:port */
        const char *rb = memchr(p, ']', (size_t)(end - p));
        if (!rb)
            goto bad;
        n->host = dupn(p + 1, (size_t)(rb - p - 1));
        hend = rb + 1;
    } else {
        const char *colon = memchr(p, ':', (size_t)(end - p));
        if (colon)
            hend = colon;
        n->host = dupn(p, (size_t)(hend - p));
    }
    if (!n->host[0])
        goto bad;
    if (hend < end && *hend == ':') {
        char *e;
        long port = strtol(hend + 1, &e, 10);
        if (e != end || port <= 0 || port > 65535)
            goto bad;
        n->port = (int)port;
    } else if (hend != end)
        goto bad;
    if (*end == '/' && end[1] && end[1] != '?') {
        char *e;
        long db = strtol(end + 1, &e, 10);
        if ((*e && *e != '?') || db < 0 || db > 1000000)
            goto bad;
        n->db = (int)db;
    }
    return 0;
bad:
    snprintf(err, errlen, "%s: invalid redis url (expected redis://[user][:password@]host[:port][/db])",
             url);
    free(n->host);
    free(n->user);
    free(n->pass);
    memset(n, 0, sizeof(*n));
    return KERR_INVAL;
}

redis_cfg *redis_cfg_new(const redis_cfg_params *p, char *err, size_t errlen)
{
    if (p->n_urls == 0) {
        snprintf(err, errlen, "no redis node given");
        return NULL;
    }
    redis_cfg *c = calloc(1, sizeof(*c));
    if (!c)
        abort();
    atomic_init(&c->refs, 1);
    c->nodes = calloc(p->n_urls, sizeof(*c->nodes));
    if (!c->nodes)
        abort();
    for (size_t i = 0; i < p->n_urls; i++) {
        if (parse_url(p->urls[i], &c->nodes[i], err, errlen) != 0) {
            cfg_free(c);
            return NULL;
        }
        c->n_nodes++;
    }
    c->cluster = p->cluster < 0 ? p->n_urls > 1 : p->cluster != 0;
    if (c->cluster) /* the cluster-wide credentials */
        for (size_t i = 0; i < c->n_nodes; i++) {
            if (p->username && !c->nodes[i].user)
                c->nodes[i].user = strdup(p->username);
            if (p->password && !c->nodes[i].pass)
                c->nodes[i].pass = strdup(p->password);
        }
    c->connect_timeout_ns = p->connect_timeout_ns > 0 ? p->connect_timeout_ns : 30 * NS_PER_SEC_;
    c->response_timeout_ns = p->response_timeout_ns > 0 ? p->response_timeout_ns : 30 * NS_PER_SEC_;
    /* service label: the urls without credentials, then a hash of the lot */
    size_t cap = 64;
    for (size_t i = 0; i < c->n_nodes; i++)
        cap += strlen(c->nodes[i].host) + 32;
    c->service = malloc(cap);
    if (!c->service)
        abort();
    size_t off = 0;
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < c->n_nodes; i++) {
        off += (size_t)snprintf(c->service + off, cap - off, "%sredis://%s:%d", i ? "," : "",
                                c->nodes[i].host, c->nodes[i].port);
        for (const char *s = p->urls[i]; *s; s++)
            h = (h ^ (uint8_t)*s) * 16777619u;
    }
    h = (h ^ (uint32_t)c->cluster) * 16777619u;
    snprintf(c->service + off, cap - off, "-%08x", h);
    return c;
}

void redis_cfg_ref(redis_cfg *c)
{
    atomic_fetch_add(&c->refs, 1);
}

void redis_cfg_unref(redis_cfg *c)
{
    if (c && atomic_fetch_sub(&c->refs, 1) == 1)
        cfg_free(c);
}

const char *redis_cfg_service(const redis_cfg *c)
{
    return c->service;
}

bool redis_cfg_is_cluster(const redis_cfg *c)
{
    return c->cluster;
}

/* ---- CRC16 (XMODEM) key slots, as Redis Cluster defines them ----------------------- */

static uint16_t crc16(const char *buf, size_t len)
{
    uint16_t crc = 0;
    for (size_t i = 0; i < len; i++) {
        crc ^= (uint16_t)((uint8_t)buf[i] << 8);
        for (int b = 0; b < 8; b++)
            crc = (crc & 0x8000) ? (uint16_t)((crc << 1) ^ 0x1021) : (uint16_t)(crc << 1);
    }
    return crc;
}

unsigned redis_key_slot(const char *key, size_t len)
{
    const char *lb = memchr(key, '{', len);
    if (lb) {
        size_t rest = len - (size_t)(lb - key) - 1;
        const char *rb = memchr(lb + 1, '}', rest);
        if (rb && rb > lb + 1)
            return crc16(lb + 1, (size_t)(rb - lb - 1)) & 16383;
    }
    return crc16(key, len) & 16383;
}

/* ---- metrics --------------------------------------------------------------------------- */

static metrics_family *latency_family(void)
{
    static metrics_family *f;
    static atomic_int done;
    if (atomic_load(&done))
        return f;
    static const char *const labels[] = {"service", "operation", "status"};
    static const double buckets[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0};
    metrics_family *nf = NULL;
    /* registering twice returns the same family */
    if (metrics_histogram_family(&nf, "redis_operation_latency",
                                 "The latency of an operation talking to Redis.", labels, 3,
                                 buckets, 11) == 0)
        f = nf;
    atomic_store(&done, 1);
    return f;
}

static void observe(const redis_cfg *c, const char *op, bool ok, int64_t ns)
{
    metrics_family *f = latency_family();
    if (!f)
        return;
    metrics_histogram *h = metrics_histogram_get(f, c->service, op, ok ? "ok" : "error", NULL);
    if (h) {
        metrics_histogram_observe(h, (double)ns / 1e9);
        metrics_histogram_unref(h);
    }
}

/* ---- per-reactor clients ---------------------------------------------------------------- */

typedef struct rclient rclient;
typedef struct rreq rreq;

typedef struct rnode {
    rclient *cl;
    char *host; /* as configured or as a MOVED named it */
    int port;
    const cfg_node *cfg; /* credentials and db; NULL for a node learnt from MOVED */
    char *addr;          /* resolved address, or NULL */
    redisAsyncContext *ac;
    bool connected;
    bool resolving;
    bool was_down; /* logged as down; log its return */
    int64_t down_until_ns;
    rreq *waiting; /* commands held while the host name resolves */
} rnode;

struct rclient {
    rclient *next;
    redis_cfg *cfg;
    struct event_base *base;
    rnode **nodes;
    size_t n_nodes, cap_nodes;
    uint16_t *slots; /* cluster: slot -> node index + 1; 0 unknown */
    rreq *reqs;      /* every command not yet finished */
    int busy;
};

struct rreq {
    rreq *next, *prev; /* in cl->reqs */
    rreq *wnext;       /* in a node's waiting list */
    rclient *cl;
    int argc;
    char **argv;
    size_t *lens;
    int key_idx;
    const char *op;
    redis_done_fn done;
    void *ud;
    struct event *timer;
    int64_t start_ns;
    int redirects;
    int hiredis_refs; /* hiredis callbacks still to come for this request */
    bool finished;
    bool asking;
    struct rnode *node; /* where it was last sent */
};

typedef struct rtab {
    rclient *clients;
} rtab;

static rtab *tab_get(reactor *r, bool create)
{
    rtab *t = reactor_get_slot(r, REACTOR_SLOT_REDIS);
    if (!t && create) {
        t = calloc(1, sizeof(*t));
        if (!t)
            abort();
        reactor_set_slot(r, REACTOR_SLOT_REDIS, t);
    }
    return t;
}

static rnode *node_add(rclient *cl, const char *host, int port, const cfg_node *cfg)
{
    if (cl->n_nodes == cl->cap_nodes) {
        cl->cap_nodes = cl->cap_nodes ? cl->cap_nodes * 2 : 4;
        cl->nodes = realloc(cl->nodes, cl->cap_nodes * sizeof(*cl->nodes));
        if (!cl->nodes)
            abort();
    }
    rnode *n = calloc(1, sizeof(*n));
    if (!n)
        abort();
    n->cl = cl;
    n->host = strdup(host);
    n->port = port;
    n->cfg = cfg;
    unsigned char buf[16];
    if (inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1)
        n->addr = strdup(host);
    cl->nodes[cl->n_nodes++] = n;
    return n;
}

static rclient *client_get(redis_cfg *c, reactor *r)
{
    rtab *t = tab_get(r, true);
    for (rclient *cl = t->clients; cl; cl = cl->next)
        if (cl->cfg == c)
            return cl;
    rclient *cl = calloc(1, sizeof(*cl));
    if (!cl)
        abort();
    redis_cfg_ref(c);
    cl->cfg = c;
    cl->base = reactor_base(r);
    for (size_t i = 0; i < c->n_nodes; i++)
        node_add(cl, c->nodes[i].host, c->nodes[i].port, &c->nodes[i]);
    if (c->cluster) {
        cl->slots = calloc(16384, sizeof(*cl->slots));
        if (!cl->slots)
            abort();
    }
    cl->next = t->clients;
    t->clients = cl;
    return cl;
}

static void req_free(rreq *q)
{
    for (int i = 0; i < q->argc; i++)
        free(q->argv[i]);
    free(q->argv);
    free(q->lens);
    if (q->timer)
        event_free(q->timer);
    free(q);
}

/* Completes q once: the caller's callback, then q leaves the client. q's
 * memory lives on while hiredis still owes it a callback. */
static void req_finish(rreq *q, const redisReply *reply, const char *err)
{
    if (q->finished)
        return;
    q->finished = true;
    rclient *cl = q->cl;
    if (q->prev)
        q->prev->next = q->next;
    else
        cl->reqs = q->next;
    if (q->next)
        q->next->prev = q->prev;
    if (q->timer)
        evtimer_del(q->timer);
    observe(cl->cfg, q->op, reply && reply->type != REDIS_REPLY_ERROR,
            clock_mono_ns() - q->start_ns);
    q->done(reply, err, q->ud);
    if (q->hiredis_refs == 0)
        req_free(q);
}

static void node_mark_down(rnode *n, const char *why)
{
    n->down_until_ns = clock_mono_ns() + DOWN_HOLD_NS;
    if (!n->was_down)
        DERROR(RMOD, "redis node %s:%d unreachable: %s; commands for it fail until it answers again",
               n->host, n->port, why);
    n->was_down = true;
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    rnode *n = ac->data;
    if (status != REDIS_OK) {
        /* hiredis frees ac after this and fails its pending commands */
        n->ac = NULL;
        n->connected = false;
        node_mark_down(n, ac->errstr[0] ? ac->errstr : "connect failed");
        return;
    }
    n->connected = true;
    if (n->was_down)
        DINFO(RMOD, "redis node %s:%d is answering again", n->host, n->port);
    n->was_down = false;
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    rnode *n = ac->data;
    n->ac = NULL;
    n->connected = false;
    if (status != REDIS_OK)
        node_mark_down(n, ac->errstr[0] ? ac->errstr : "connection lost");
}

static void send_to(rnode *n, rreq *q);
static void on_reply(redisAsyncContext *ac, void *r, void *privdata)
{
    rreq *q = privdata;
    redisReply *reply = r;
    q->hiredis_refs--;
    if (q->finished) {
        if (q->hiredis_refs == 0)
            req_free(q);
        return;
    }
    if (q->asking && reply && reply->type == REDIS_REPLY_STATUS)
        return; /* the ASKING that went before the command */
    if (!reply) {
        rnode *n = ac->data;
        char why[300];
        snprintf(why, sizeof(why), "redis %s:%d: %s", n->host, n->port,
                 ac->errstr[0] ? ac->errstr : "connection closed");
        req_finish(q, NULL, why);
        return;
    }
    rclient *cl = q->cl;
    if (reply->type == REDIS_REPLY_ERROR && cl->slots &&
        (strncmp(reply->str, "MOVED ", 6) == 0 || strncmp(reply->str, "ASK ", 4) == 0)) {
        bool ask = reply->str[0] == 'A';
        unsigned slot = 0;
        char hostport[300] = "";
        if (sscanf(reply->str + (ask ? 4 : 6), "%u %299s", &slot, hostport) == 2 && slot < 16384 &&
            q->redirects < MAX_REDIRECTS) {
            char *colon = strrchr(hostport, ':');
            if (colon) {
                *colon = 0;
                int port = atoi(colon + 1);
                rnode *target = NULL;
                for (size_t i = 0; i < cl->n_nodes; i++)
                    if (cl->nodes[i]->port == port && strcmp(cl->nodes[i]->host, hostport) == 0)
                        target = cl->nodes[i];
                if (!target) {
                    /* credentials of the configured nodes hold for the whole cluster */
                    target = node_add(cl, hostport, port, cl->cfg->nodes[0].pass || cl->cfg->nodes[0].user ? &cl->cfg->nodes[0] : NULL);
                }
                size_t idx = 0;
                while (cl->nodes[idx] != target)
                    idx++;
                if (!ask)
                    cl->slots[slot] = (uint16_t)(idx + 1);
                q->redirects++;
                q->asking = ask;
                send_to(target, q);
                return;
            }
        }
    }
    req_finish(q, reply, NULL);
}

static void node_connect(rnode *n)
{
    redisAsyncContext *ac = redisAsyncConnect(n->addr, n->port);
    if (!ac) {
        node_mark_down(n, "out of memory");
        return;
    }
    if (ac->err) {
        node_mark_down(n, ac->errstr);
        redisAsyncFree(ac);
        return;
    }
    ac->data = n;
    if (redisLibeventAttach(ac, n->cl->base) != REDIS_OK) {
        node_mark_down(n, "cannot attach to the event loop");
        redisAsyncFree(ac);
        return;
    }
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    n->ac = ac;
    n->connected = false;
    /* queued ahead of every command on this connection; their errors
     * reach no caller but show as a failing command afterwards */
    if (n->cfg && n->cfg->pass) {
        if (n->cfg->user)
            redisAsyncCommand(ac, NULL, NULL, "AUTH %s %s", n->cfg->user, n->cfg->pass);
        else
            redisAsyncCommand(ac, NULL, NULL, "AUTH %s", n->cfg->pass);
    }
    if (n->cfg && n->cfg->db && !n->cl->cfg->cluster)
        redisAsyncCommand(ac, NULL, NULL, "SELECT %d", n->cfg->db);
}

static void on_resolved(const dns_addrs *res, void *ud)
{
    rnode *n = ud;
    n->resolving = false;
    if (res->status == DNS_OK && res->n_addrs > 0) {
        free(n->addr);
        n->addr = strdup(res->addrs[0].text);
    } else {
        char why[300];
        snprintf(why, sizeof(why), "cannot resolve %s: %s", n->host,
                 res->error ? res->error : "no address");
        node_mark_down(n, why);
    }
    rreq *w = n->waiting;
    n->waiting = NULL;
    while (w) {
        rreq *nx = w->wnext;
        w->wnext = NULL;
        w->hiredis_refs--;
        if (!w->finished)
            send_to(n, w);
        else if (w->hiredis_refs == 0)
            req_free(w);
        w = nx;
    }
}

static void on_resolve_drop(void *ud)
{
    (void)ud; /* the resolver went away first (shutdown): the client frees the waiters */
}

static void send_to(rnode *n, rreq *q)
{
    int64_t now = clock_mono_ns();
    if (!n->ac && n->down_until_ns > now) {
        char why[300];
        snprintf(why, sizeof(why), "redis %s:%d is unreachable (retrying within a second)",
                 n->host, n->port);
        req_finish(q, NULL, why);
        return;
    }
    if (!n->addr) {
        q->hiredis_refs++; /* the waiting list holds it */
        q->wnext = n->waiting;
        n->waiting = q;
        if (!n->resolving) {
            n->resolving = true;
            if (dns_lookup_addrs_owned(n->host, DNS_IPV4_AND_IPV6, on_resolved, n,
                                       on_resolve_drop) != 0) {
                n->resolving = false;
                n->waiting = q->wnext;
                q->wnext = NULL;
                q->hiredis_refs--;
                node_mark_down(n, "cannot start the host name lookup");
                req_finish(q, NULL, "redis: cannot resolve the host name");
            }
        }
        return;
    }
    if (!n->ac)
        node_connect(n);
    q->node = n;
    if (!n->ac) {
        req_finish(q, NULL, "redis: cannot connect");
        return;
    }
    if (q->asking) {
        q->hiredis_refs++;
        redisAsyncCommand(n->ac, on_reply, q, "ASKING");
    }
    q->hiredis_refs++;
    if (redisAsyncCommandArgv(n->ac, on_reply, q, q->argc, (const char **)q->argv, q->lens) !=
        REDIS_OK) {
        q->hiredis_refs--;
        req_finish(q, NULL, "redis: cannot queue the command");
    }
}

static void route(rreq *q)
{
    rclient *cl = q->cl;
    rnode *n = cl->nodes[0];
    if (cl->slots && q->key_idx >= 0 && q->key_idx < q->argc) {
        unsigned slot = redis_key_slot(q->argv[q->key_idx], q->lens[q->key_idx]);
        if (cl->slots[slot])
            n = cl->nodes[cl->slots[slot] - 1];
        else
            /* unknown slot: any configured node answers MOVED when it is not its own */
            n = cl->nodes[slot % cl->cfg->n_nodes];
    }
    /* a configured node that is down: try another one in a cluster */
    if (cl->slots && !n->ac && n->down_until_ns > clock_mono_ns())
        for (size_t i = 0; i < cl->n_nodes; i++)
            if (cl->nodes[i]->ac || cl->nodes[i]->down_until_ns <= clock_mono_ns()) {
                n = cl->nodes[i];
                break;
            }
    send_to(n, q);
}

static void on_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    rreq *q = arg;
    rnode *n = q->node;
    req_finish(q, NULL, "redis: response timeout");
    /* the server or the connection is stuck: drop the connection (its
     * other commands fail now rather than each at its own timeout) */
    if (n && n->ac) {
        redisAsyncContext *ac = n->ac;
        n->ac = NULL;
        n->connected = false;
        node_mark_down(n, "no response within response_timeout");
        ac->onDisconnect = NULL;
        redisAsyncFree(ac);
    }
}

static void on_start(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    rreq *q = arg;
    int64_t to = q->cl->cfg->response_timeout_ns;
    event_assign(q->timer, q->cl->base, -1, 0, on_timeout, q);
    struct timeval tv = {to / NS_PER_SEC_, (to % NS_PER_SEC_) / 1000};
    evtimer_add(q->timer, &tv);
    route(q);
}

int redis_command(redis_cfg *c, const char *op, int argc, const char *const *argv,
                  const size_t *lens, int key_idx, redis_done_fn done, void *ud)
{
    reactor *r = reactor_current();
    if (!r || argc <= 0)
        return KERR_INVAL;
    rclient *cl = client_get(c, r);
    rreq *q = calloc(1, sizeof(*q));
    if (!q)
        abort();
    q->cl = cl;
    q->argc = argc;
    q->argv = calloc((size_t)argc, sizeof(*q->argv));
    q->lens = calloc((size_t)argc, sizeof(*q->lens));
    if (!q->argv || !q->lens)
        abort();
    for (int i = 0; i < argc; i++) {
        q->argv[i] = dupn(argv[i], lens[i]);
        q->lens[i] = lens[i];
    }
    q->key_idx = key_idx;
    q->op = op;
    q->done = done;
    q->ud = ud;
    q->start_ns = clock_mono_ns();
    q->next = cl->reqs;
    if (cl->reqs)
        cl->reqs->prev = q;
    cl->reqs = q;
    /* first a turn of the loop: done never runs before this returns */
    q->timer = evtimer_new(cl->base, on_start, q);
    if (!q->timer)
        abort();
    struct timeval tv = {0, 0};
    evtimer_add(q->timer, &tv);
    return 0;
}

void redis_reactor_free(reactor *r)
{
    rtab *t = tab_get(r, false);
    if (!t)
        return;
    reactor_set_slot(r, REACTOR_SLOT_REDIS, NULL);
    while (t->clients) {
        rclient *cl = t->clients;
        t->clients = cl->next;
        for (size_t i = 0; i < cl->n_nodes; i++) {
            rnode *n = cl->nodes[i];
            if (n->ac) {
                /* fails its pending commands (on_reply with NULL) */
                redisAsyncContext *ac = n->ac;
                n->ac = NULL;
                ac->onDisconnect = NULL;
                redisAsyncFree(ac);
            }
            while (n->waiting) {
                rreq *w = n->waiting;
                n->waiting = w->wnext;
                w->hiredis_refs--;
                if (w->finished && w->hiredis_refs == 0)
                    req_free(w);
                else
                    req_finish(w, NULL, "redis: shutting down");
            }
        }
        while (cl->reqs)
            req_finish(cl->reqs, NULL, "redis: shutting down");
        for (size_t i = 0; i < cl->n_nodes; i++) {
            free(cl->nodes[i]->host);
            free(cl->nodes[i]->addr);
            free(cl->nodes[i]);
        }
        free(cl->nodes);
        free(cl->slots);
        redis_cfg_unref(cl->cfg);
        free(cl);
    }
    free(t);
}
