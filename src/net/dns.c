/* Asynchronous DNS for delivery: MX, A and AAAA with c-ares on each
 * reactor's libevent loop, a process-wide answer cache, and KumoMTA's
 * site_name factoring.
 *
 * Owns: one resolver per reactor (created on first use, kept in the
 * reactor's REACTOR_SLOT_DNS), each with a c-ares channel whose sockets and
 * timeout are driven by libevent events, a table of queries in flight (so
 * concurrent lookups of one name share one query) and a list of finished
 * lookups; the process-wide cache and configuration, each under a mutex.
 *
 * Threads: a resolver is touched only by its reactor's thread. Callbacks
 * never run inside c-ares or inside dns_lookup_*: finished lookups are
 * queued and delivered from a libevent event of their own, so a callback may
 * start new lookups freely. A configuration change bumps a generation; each
 * resolver notices it before its next query, opens a new channel and retires
 * the old one once its queries have finished.
 *
 * Some answers need no query (fam_static, and the MX equivalents in
 * dns_lookup_mx): the test resolver's zones (src/net/zone) when set, which
 * then answer everything; else the hosts file (src/net/hosts, a cached
 * table: no I/O here) for A/AAAA, then RFC 6761's localhost and invalid.
 * They are delivered like any answer (never inside the call) and not cached.
 *
 * This file holds the resolvers, their channels, the flights and the
 * cache. The lookup entry points (MX, TXT, PTR, address jobs) are in
 * dns_lookup.c; results are built in dns_answer.c (the objects, c-ares
 * answers read from the wire, the zones' and RFC 6761 answers); the
 * configuration (default, named and test resolvers) is dns_config.c's;
 * names that need no lookup (normalization, site_name, literals, reverse
 * names) are dns_names.c's; dns_int.h is what these files share.
 *
 * Failures: every c-ares status ends in a result (DNS_FAIL with the reason),
 * never in a lost callback. MX failures are cached for the negative TTL
 * (5 minutes by default) exactly as KumoMTA does; address failures are not
 * cached. Allocation failure aborts (x-allocators): nothing here is sized by
 * a client. */
#include "net/dns.h"

#include <arpa/inet.h>
#include <ares.h>
#include <ctype.h>
#include <event2/event.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "core/diag.h"
#include "core/kerr.h"
#include "net/dns_int.h"
#include "net/hosts.h"
#include "net/zone.h"

/* ---- MX settings ------------------------------------------------------------ */

static atomic_llong mx_timeout_ms = 5000;
static atomic_llong mx_neg_ttl_ms = 300000;
static atomic_size_t mx_limit = 128;

static pthread_once_t ares_once = PTHREAD_ONCE_INIT;
static int ares_init_status = ARES_ENOTINITIALIZED;

static void ares_init_once(void)
{
    ares_init_status = ares_library_init(ARES_LIB_INIT_ALL);
}

void dns_set_mx_timeout_ms(int64_t ms)
{
    atomic_store(&mx_timeout_ms, ms > 0 ? ms : 1);
}

void dns_set_mx_negative_ttl_ms(int64_t ms)
{
    atomic_store(&mx_neg_ttl_ms, ms > 0 ? ms : 0);
}

void dns_set_mx_concurrency_limit(size_t n)
{
    atomic_store(&mx_limit, n > 0 ? n : 1);
}

/* ---- hash tables ------------------------------------------------------------- */

struct htab {
    struct hnode **b;
    size_t nb, n;
};

static uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ULL;
    }
    return h;
}

static struct hnode **htab_slot(struct htab *t, const char *key, uint64_t h)
{
    if (!t->nb)
        return NULL;
    struct hnode **pp = &t->b[h & (t->nb - 1)];
    for (; *pp; pp = &(*pp)->next)
        if ((*pp)->h == h && strcmp((*pp)->key, key) == 0)
            return pp;
    return NULL;
}

static void htab_insert(struct htab *t, struct hnode *n)
{
    if (t->n + 1 > t->nb) {
        size_t nb = t->nb ? t->nb * 2 : 64;
        struct hnode **b = xcalloc(nb, sizeof(*b));
        for (size_t i = 0; i < t->nb; i++) {
            struct hnode *e = t->b[i];
            while (e) {
                struct hnode *next = e->next;
                e->next = b[e->h & (nb - 1)];
                b[e->h & (nb - 1)] = e;
                e = next;
            }
        }
        free(t->b);
        t->b = b;
        t->nb = nb;
    }
    struct hnode **head = &t->b[n->h & (t->nb - 1)];
    n->next = *head;
    *head = n;
    t->n++;
}

static void htab_unlink(struct htab *t, struct hnode **pp)
{
    *pp = (*pp)->next;
    t->n--;
}

static void htab_remove(struct htab *t, struct hnode *n)
{
    if (!t->nb)
        return;
    for (struct hnode **pp = &t->b[n->h & (t->nb - 1)]; *pp; pp = &(*pp)->next)
        if (*pp == n) {
            htab_unlink(t, pp);
            return;
        }
}

/* ---- the cache ------------------------------------------------------------------ */

struct centry {
    struct hnode hn;
    char *key;
    struct cobj *obj;
    int64_t expires_ms;
};

static struct {
    pthread_mutex_t lock;
    struct htab t;
} cache = {PTHREAD_MUTEX_INITIALIZER, {NULL, 0, 0}};

static void centry_free(struct centry *e)
{
    cobj_unref(e->obj);
    free(e->key);
    free(e);
}

/* Returns a new reference to the unexpired answer under key, or NULL. */
struct cobj *dns__cache_get(const char *key)
{
    uint64_t h = hash_str(key);
    struct cobj *obj = NULL;
    pthread_mutex_lock(&cache.lock);
    struct hnode **pp = htab_slot(&cache.t, key, h);
    if (pp) {
        struct centry *e = (struct centry *)*pp;
        if (e->expires_ms > clock_mono_ms()) {
            obj = cobj_ref(e->obj);
        } else {
            htab_unlink(&cache.t, pp);
            centry_free(e);
        }
    }
    pthread_mutex_unlock(&cache.lock);
    return obj;
}

/* Drops expired entries; when that is not enough, everything in the bucket
 * key hashes to (a crude but bounded eviction). Called with the lock held. */
static void cache_make_room(uint64_t h)
{
    int64_t now = clock_mono_ms();
    for (size_t i = 0; i < cache.t.nb; i++) {
        struct hnode **pp = &cache.t.b[i];
        while (*pp) {
            struct centry *e = (struct centry *)*pp;
            if (e->expires_ms <= now) {
                htab_unlink(&cache.t, pp);
                centry_free(e);
            } else {
                pp = &(*pp)->next;
            }
        }
    }
    if (cache.t.n < DNS_CACHE_MAX)
        return;
    struct hnode **pp = &cache.t.b[h & (cache.t.nb - 1)];
    while (*pp) {
        struct centry *e = (struct centry *)*pp;
        htab_unlink(&cache.t, pp);
        centry_free(e);
    }
}

/* Stores a new reference to obj under key until expires_ms. */
static void cache_put(const char *key, struct cobj *obj, int64_t expires_ms)
{
    uint64_t h = hash_str(key);
    pthread_mutex_lock(&cache.lock);
    struct hnode **pp = htab_slot(&cache.t, key, h);
    if (pp) {
        struct centry *e = (struct centry *)*pp;
        cobj_unref(e->obj);
        e->obj = cobj_ref(obj);
        e->expires_ms = expires_ms;
    } else {
        if (cache.t.n >= DNS_CACHE_MAX)
            cache_make_room(h);
        struct centry *e = xcalloc(1, sizeof(*e));
        e->key = xstrdup(key);
        e->hn.key = e->key;
        e->hn.h = h;
        e->obj = cobj_ref(obj);
        e->expires_ms = expires_ms;
        htab_insert(&cache.t, &e->hn);
    }
    pthread_mutex_unlock(&cache.lock);
}

void dns_cache_clear(void)
{
    pthread_mutex_lock(&cache.lock);
    for (size_t i = 0; i < cache.t.nb; i++) {
        struct hnode *n = cache.t.b[i];
        while (n) {
            struct hnode *next = n->next;
            centry_free((struct centry *)n);
            n = next;
        }
        cache.t.b[i] = NULL;
    }
    cache.t.n = 0;
    pthread_mutex_unlock(&cache.lock);
}

/* ---- per-reactor resolver ------------------------------------------------------- */

struct resolver;
struct chan;

/* A named resolver's channel on one reactor. */
struct nchan {
    struct nchan *next;
    unsigned id;
    char *name;
    struct chan *ch;
};

/* One socket c-ares asked us to watch. */
struct sockev {
    struct sockev *next;
    struct chan *ch;
    ares_socket_t fd;
    struct event *ev;
};

/* One c-ares channel, for one configuration generation. */
struct chan {
    struct chan *next; /* retired list */
    struct resolver *res;
    ares_channel ares;
    unsigned gen;
    int pending; /* queries sent and not yet called back */
    bool retiring;
    struct sockev *socks;
    struct event *timer;
};

struct flight;

/* Lives from ares_query until c-ares calls back, even when the flight gave
 * up on it earlier (MX deadline): then f is NULL. */
struct qctx {
    struct flight *f;
    struct chan *ch;
};

struct addr_job;

struct resolver {
    reactor *r;
    struct event_base *base;
    struct chan *cur;
    struct chan *retired;
    struct htab flights;
    struct flight *done_head, *done_tail;
    struct flight *mxq_head, *mxq_tail; /* waiting for a concurrency slot */
    size_t mx_active;
    struct addr_job *jobs;
    struct event *deliver_ev;
    struct nchan *named; /* channels of named resolvers */
};

static void deliver_cb(evutil_socket_t fd, short what, void *arg);
static void flight_send(struct flight *f);
static void mx_deadline_cb(evutil_socket_t fd, short what, void *arg);

/* Keeps the channel's timer at c-ares' next timeout, or off when idle. */
static void chan_update_timer(struct chan *ch)
{
    struct timeval tv, *tvp = ares_timeout(ch->ares, NULL, &tv);
    if (!tvp) {
        evtimer_del(ch->timer);
        return;
    }
    if (evtimer_add(ch->timer, tvp) != 0)
        DERROR(DNS_MOD, "reactor=%d cannot arm the DNS timer", reactor_index(ch->res->r));
}

static void sock_cb(evutil_socket_t fd, short what, void *arg)
{
    struct sockev *s = arg;
    struct chan *ch = s->ch;
    /* s may be freed inside ares_process_fd (socket closed): not touched after */
    ares_process_fd(ch->ares, (what & EV_READ) ? (ares_socket_t)fd : ARES_SOCKET_BAD,
                    (what & EV_WRITE) ? (ares_socket_t)fd : ARES_SOCKET_BAD);
    chan_update_timer(ch);
}

static void chan_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct chan *ch = arg;
    ares_process_fd(ch->ares, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
    chan_update_timer(ch);
}

static void sock_state_cb(void *data, ares_socket_t fd, int readable, int writable)
{
    struct chan *ch = data;
    struct sockev **pp = &ch->socks;
    while (*pp && (*pp)->fd != fd)
        pp = &(*pp)->next;
    struct sockev *s = *pp;
    if (s) {
        event_free(s->ev);
        s->ev = NULL;
    }
    if (!readable && !writable) {
        if (s) {
            *pp = s->next;
            free(s);
        }
        return;
    }
    if (!s) {
        s = xcalloc(1, sizeof(*s));
        s->ch = ch;
        s->fd = fd;
        s->next = ch->socks;
        ch->socks = s;
    }
    short what = (short)(EV_PERSIST | (readable ? EV_READ : 0) | (writable ? EV_WRITE : 0));
    s->ev = event_new(ch->res->base, (evutil_socket_t)fd, what, sock_cb, s);
    if (!s->ev || event_add(s->ev, NULL) != 0)
        /* the query on this socket will time out */
        DERROR(DNS_MOD, "reactor=%d cannot watch DNS socket fd=%d", reactor_index(ch->res->r),
               (int)fd);
}

static void chan_free(struct chan *ch)
{
    if (!ch)
        return;
    if (ch->ares)
        ares_destroy(ch->ares); /* closes its sockets through sock_state_cb */
    while (ch->socks) {
        struct sockev *s = ch->socks;
        ch->socks = s->next;
        if (s->ev)
            event_free(s->ev);
        free(s);
    }
    if (ch->timer)
        event_free(ch->timer);
    free(ch);
}

static struct chan *chan_new(struct resolver *res, const struct rcfg *rc, char *err,
                             size_t errlen)
{
    struct chan *ch = xcalloc(1, sizeof(*ch));
    ch->res = res;
    ch->timer = evtimer_new(res->base, chan_timer_cb, ch);
    if (!ch->timer) {
        snprintf(err, errlen, "cannot create the DNS timer");
        free(ch);
        return NULL;
    }

    struct ares_options o;
    memset(&o, 0, sizeof(o));
    char *csv;
    int bind_family;
    unsigned char bind_addr[16];
    if (rc) {
        ch->gen = rc->id;
        csv = rc->servers_csv ? xstrdup(rc->servers_csv) : NULL;
        o.flags = rc->flags;
        o.timeout = rc->timeout_ms;
        o.tries = rc->attempts;
        bind_family = rc->bind_family;
        memcpy(bind_addr, rc->bind_addr, sizeof(bind_addr));
    } else {
        struct rcfg d;
        ch->gen = dns__default_config(&d);
        csv = d.servers_csv;
        o.flags = d.flags;
        o.timeout = d.timeout_ms;
        o.tries = d.attempts;
        bind_family = d.bind_family;
        memcpy(bind_addr, d.bind_addr, sizeof(bind_addr));
    }

    o.sock_state_cb = sock_state_cb;
    o.sock_state_cb_data = ch;
    int mask = ARES_OPT_FLAGS | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES | ARES_OPT_SOCK_STATE_CB;
    int arc = ares_init_options(&ch->ares, &o, mask);
    if (arc != ARES_SUCCESS) {
        snprintf(err, errlen, "cannot initialise the DNS resolver: %s", ares_strerror(arc));
        ch->ares = NULL;
        goto fail;
    }
    if (csv) {
        arc = ares_set_servers_ports_csv(ch->ares, csv);
        if (arc != ARES_SUCCESS) {
            snprintf(err, errlen, "cannot use DNS servers %s: %s", csv, ares_strerror(arc));
            goto fail;
        }
    }
    if (bind_family == AF_INET) {
        uint32_t v4;
        memcpy(&v4, bind_addr, 4);
        ares_set_local_ip4(ch->ares, ntohl(v4));
    } else if (bind_family == AF_INET6) {
        ares_set_local_ip6(ch->ares, bind_addr);
    }
    DDEBUG(DNS_MOD, "reactor=%d new DNS channel gen=%u servers=%s", reactor_index(res->r), ch->gen,
           csv ? csv : "(system)");
    free(csv);
    return ch;
fail:
    DERROR(DNS_MOD, "reactor=%d %s", reactor_index(res->r), err);
    free(csv);
    chan_free(ch);
    return NULL;
}

/* A channel no longer used for new queries: freed once its queries are
 * done, never here (we may be inside one of its callbacks). */
static void chan_retire(struct resolver *res, struct chan *ch)
{
    ch->retiring = true;
    ch->next = res->retired;
    res->retired = ch;
    event_active(res->deliver_ev, EV_READ, 0);
}

/* The channel for the current configuration, opened on first use or after a
 * change; the old one is retired and freed once its queries are done. */
static struct chan *res_channel(struct resolver *res, char *err, size_t errlen)
{
    unsigned gen = dns__config_gen();
    if (res->cur && res->cur->gen == gen)
        return res->cur;
    if (res->cur) {
        chan_retire(res, res->cur);
        res->cur = NULL;
    }
    res->cur = chan_new(res, NULL, err, errlen);
    return res->cur;
}

/* The channel of named resolver rc on this reactor, opened on first use;
 * channels of an earlier definition of the same name are retired. */
static struct chan *named_channel(struct resolver *res, const struct rcfg *rc, char *err,
                                  size_t errlen)
{
    struct chan *found = NULL;
    for (struct nchan **pp = &res->named; *pp;) {
        struct nchan *nc = *pp;
        if (nc->id == rc->id) {
            found = nc->ch;
        } else if (strcmp(nc->name, rc->name) == 0) {
            chan_retire(res, nc->ch);
            *pp = nc->next;
            free(nc->name);
            free(nc);
            continue;
        }
        pp = &nc->next;
    }
    if (found)
        return found;
    struct chan *ch = chan_new(res, rc, err, errlen);
    if (!ch)
        return NULL;
    struct nchan *nc = xcalloc(1, sizeof(*nc));
    nc->id = rc->id;
    nc->name = xstrdup(rc->name);
    nc->ch = ch;
    nc->next = res->named;
    res->named = nc;
    return ch;
}

static void reap_channels(struct resolver *res)
{
    struct chan **pp = &res->retired;
    while (*pp) {
        struct chan *ch = *pp;
        if (ch->pending == 0) {
            *pp = ch->next;
            DDEBUG(DNS_MOD, "reactor=%d DNS channel gen=%u retired", reactor_index(res->r),
                   ch->gen);
            chan_free(ch);
        } else {
            pp = &ch->next;
        }
    }
}

struct resolver *dns__resolver_get(reactor *r)
{
    struct resolver *res = reactor_get_slot(r, REACTOR_SLOT_DNS);
    if (res)
        return res;
    pthread_once(&ares_once, ares_init_once);
    if (ares_init_status != ARES_SUCCESS) {
        DERROR(DNS_MOD, "c-ares library init failed: %s", ares_strerror(ares_init_status));
        return NULL;
    }
    res = xcalloc(1, sizeof(*res));
    res->r = r;
    res->base = reactor_base(r);
    res->deliver_ev = event_new(res->base, -1, 0, deliver_cb, res);
    if (!res->deliver_ev) {
        free(res);
        return NULL;
    }
    reactor_set_slot(r, REACTOR_SLOT_DNS, res);
    return res;
}

/* ---- flights ------------------------------------------------------------------- */

static void flight_free(struct flight *f)
{
    while (f->waiters) {
        /* still here: never answered (dns_reactor_free at shutdown) */
        struct waiter *w = f->waiters;
        f->waiters = w->next;
        if (w->drop)
            w->drop(w->ud);
        free(w);
    }
    if (f->deadline)
        event_free(f->deadline);
    cobj_unref(f->result);
    dns__rcfg_put(f->rc);
    free(f->key);
    free(f->qname);
    free(f->display);
    free(f);
}

struct waiter *dns__waiter_new(int kind)
{
    struct waiter *w = xcalloc(1, sizeof(*w));
    w->kind = kind;
    return w;
}

static void flight_add_waiter(struct flight *f, struct waiter *w)
{
    w->next = NULL;
    *f->wtail = w;
    f->wtail = &w->next;
}

static struct flight *flight_alloc(struct resolver *res)
{
    struct flight *f = xcalloc(1, sizeof(*f));
    f->res = res;
    f->wtail = &f->waiters;
    return f;
}

static void done_push(struct resolver *res, struct flight *f)
{
    f->next = NULL;
    if (res->done_tail)
        res->done_tail->next = f;
    else
        res->done_head = f;
    res->done_tail = f;
    event_active(res->deliver_ev, EV_READ, 0);
}

/* Delivers obj (taken) to one waiter on the next turn of the loop. */
void dns__post_ready(struct resolver *res, struct waiter *w, struct cobj *obj)
{
    struct flight *f = flight_alloc(res);
    f->result = obj;
    flight_add_waiter(f, w);
    done_push(res, f);
}

static void mxq_remove(struct resolver *res, struct flight *f)
{
    struct flight **pp = &res->mxq_head, *prev = NULL;
    while (*pp && *pp != f) {
        prev = *pp;
        pp = &(*pp)->next;
    }
    if (!*pp)
        return;
    *pp = f->next;
    if (res->mxq_tail == f)
        res->mxq_tail = prev;
    f->next = NULL;
}

static int64_t neg_ttl_ms(void)
{
    return atomic_load(&mx_neg_ttl_ms);
}

/* The flight has its answer (obj, taken): cache it, leave the table, and
 * queue it for delivery. */
static void flight_complete(struct flight *f, struct cobj *obj)
{
    struct resolver *res = f->res;
    if (f->in_table) {
        htab_remove(&res->flights, &f->hn);
        f->in_table = false;
    }
    if (f->deadline) {
        event_free(f->deadline);
        f->deadline = NULL;
    }
    if (f->counted) {
        res->mx_active--;
        f->counted = false;
        event_active(res->deliver_ev, EV_READ, 0); /* may start a queued MX query */
    }
    if (f->q) { /* given up before c-ares answered: the answer will be dropped */
        f->q->f = NULL;
        f->q = NULL;
    }
    if (f->queued) {
        mxq_remove(res, f);
        f->queued = false;
    }

    int64_t now = clock_mono_ms();
    if (f->qtype == T_TXT || f->qtype == T_PTR) {
        struct txt_obj *t = (struct txt_obj *)obj;
        t->expires_ms = now + (int64_t)t->pub.ttl * 1000;
        if (t->pub.status != DNS_FAIL && t->pub.ttl > 0)
            cache_put(f->key, obj, t->expires_ms);
    } else if (f->qtype == T_MX) {
        struct mx_obj *m = (struct mx_obj *)obj;
        int64_t until;
        if (m->pub.status == DNS_OK || m->pub.status == DNS_NULL_MX) {
            int64_t ms = (int64_t)m->pub.ttl * 1000;
            until = now + (ms > 0 ? ms : DNS_MX_MIN_CACHE_MS);
        } else {
            until = now + neg_ttl_ms();
        }
        m->pub.expires_ms = until;
        if (until > now)
            cache_put(f->key, obj, until);
    } else {
        struct fam_obj *fo = (struct fam_obj *)obj;
        fo->expires_ms = now + (int64_t)fo->ttl * 1000;
        if (fo->status != DNS_FAIL && fo->ttl > 0)
            cache_put(f->key, obj, fo->expires_ms);
    }
    f->result = obj;
    done_push(res, f);
}

/* Joins the query for key, starting it when nobody has. Takes w. */
void dns__flight_join(struct resolver *res, struct rcfg *rc, const char *key, int qtype,
                      const char *qname, const char *display, uint16_t port, struct waiter *w)
{
    uint64_t h = hash_str(key);
    struct hnode **pp = htab_slot(&res->flights, key, h);
    if (pp) {
        flight_add_waiter((struct flight *)*pp, w);
        return;
    }
    struct flight *f = flight_alloc(res);
    f->key = xstrdup(key);
    f->hn.key = f->key;
    f->hn.h = h;
    f->qtype = qtype;
    f->qname = xstrdup(qname);
    f->display = xstrdup(display);
    f->port = port;
    f->start_ns = clock_mono_ns();
    if (rc) {
        atomic_fetch_add(&rc->refs, 1);
        f->rc = rc;
    }
    flight_add_waiter(f, w);
    htab_insert(&res->flights, &f->hn);
    f->in_table = true;

    if (qtype == T_MX) {
        int64_t ms = atomic_load(&mx_timeout_ms);
        f->deadline = evtimer_new(res->base, mx_deadline_cb, f);
        struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000)};
        if (!f->deadline || evtimer_add(f->deadline, &tv) != 0)
            DERROR(DNS_MOD, "reactor=%d cannot arm the MX deadline for %s", reactor_index(res->r),
                   display);
        if (res->mx_active >= atomic_load(&mx_limit)) {
            f->queued = true;
            f->next = NULL;
            if (res->mxq_tail)
                res->mxq_tail->next = f;
            else
                res->mxq_head = f;
            res->mxq_tail = f;
            return;
        }
    }
    flight_send(f);
}

static void start_queued_mx(struct resolver *res)
{
    while (res->mxq_head && res->mx_active < atomic_load(&mx_limit)) {
        struct flight *f = res->mxq_head;
        res->mxq_head = f->next;
        if (!res->mxq_head)
            res->mxq_tail = NULL;
        f->next = NULL;
        f->queued = false;
        flight_send(f);
    }
}

static void on_answer(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
    struct qctx *q = arg;
    struct chan *ch = q->ch;
    struct flight *f = q->f;
    free(q);
    ch->pending--;
    if (ch->retiring && ch->pending == 0)
        event_active(ch->res->deliver_ev, EV_READ, 0);
    if (!f)
        return;
    f->q = NULL;
    if (status == ARES_EDESTRUCTION) /* the resolver is being freed with the flight */
        return;
    flight_complete(f, dns__from_answer(f, status, abuf, alen));
}

static void flight_send(struct flight *f)
{
    struct resolver *res = f->res;
    char err[256];
    struct chan *ch =
        f->rc ? named_channel(res, f->rc, err, sizeof(err)) : res_channel(res, err, sizeof(err));
    if (!ch) {
        flight_complete(f, dns__fail_obj(f, err));
        return;
    }
    struct qctx *q = xcalloc(1, sizeof(*q));
    q->f = f;
    q->ch = ch;
    f->q = q;
    ch->pending++;
    if (f->qtype == T_MX) {
        res->mx_active++;
        f->counted = true;
    }
    DTRACE(DNS_MOD, "reactor=%d query %s type=%d", reactor_index(res->r), f->qname, f->qtype);
    /* may call on_answer before returning (bad name, no servers) */
    ares_query(ch->ares, f->qname[0] ? f->qname : ".", C_IN, f->qtype, on_answer, q);
    chan_update_timer(ch);
}

static void mx_deadline_cb(evutil_socket_t fd, short what, void *arg)
{
    struct flight *f = arg;
    DDEBUG(DNS_MOD, "reactor=%d MX lookup for %s timed out", reactor_index(f->res->r), f->display);
    flight_complete(f, dns__mx_fail(f, DNS_FAIL, "deadline has elapsed"));
}

/* An A (idx 0) or AAAA (idx 1) answer that needs no query: from the test
 * resolver's zones when they are set (and then always), else from the hosts
 * file, else for RFC 6761 names; NULL: ask DNS. fq: lower case, no root
 * dot; display: the name as the caller gave it. */
struct fam_obj *dns__fam_static(const struct rcfg *rc, const char *fq, const char *display, int idx)
{
    int family = idx == 0 ? AF_INET : AF_INET6;
    struct testres *t;
    const zone_set *zs = dns__zones_get(rc, &t);
    if (zs) {
        zone_answer a;
        struct fam_obj *fo;
        switch (zone_set_lookup(zs, fq, idx == 0 ? ZONE_A : ZONE_AAAA, &a)) {
        case ZONE_NXDOMAIN:
            fo = dns__fam_obj_new(family, DNS_NXDOMAIN, NULL);
            break;
        case ZONE_NOERROR:
            fo = dns__fam_obj_new(family, a.n ? DNS_OK : DNS_NO_RECORDS, NULL);
            fo->ttl = a.n ? UINT32_MAX : 60;
            for (size_t i = 0; i < a.n; i++) {
                dns__fam_obj_add(fo, family, a.rrs[i]->addr);
                if (a.rrs[i]->ttl < fo->ttl)
                    fo->ttl = a.rrs[i]->ttl;
            }
            break;
        default:
            fo = dns__fam_obj_new(
                family, DNS_FAIL,
                xasprintf("failed to query DNS for %s (%s): %s", display, idx == 0 ? "A" : "AAAA",
                          a.rcode == ZONE_SERVFAIL ? "SERVFAIL" : "invalid name"));
        }
        dns__testres_put(t);
        return fo;
    }
    bool localhost = dns__under(fq, "localhost");
    if (dns__use_hosts(rc)) {
        hosts_addr ha[DNS_MAX_ADDRS];
        int n = hosts_lookup(fq, family, ha, DNS_MAX_ADDRS);
        /* a name the file lists is answered by the file alone (a family it
         * lacks has no records) except that localhost keeps its loopback */
        if (n > 0 || (n == 0 && !localhost)) {
            struct fam_obj *fo = dns__fam_obj_new(family, n > 0 ? DNS_OK : DNS_NO_RECORDS, NULL);
            for (int i = 0; i < n && i < DNS_MAX_ADDRS; i++)
                dns__fam_obj_add(fo, family, ha[i].raw);
            return fo;
        }
    }
    if (localhost) {
        static const unsigned char v4[4] = {127, 0, 0, 1};
        static const unsigned char v6[16] = {[15] = 1};
        struct fam_obj *fo = dns__fam_obj_new(family, DNS_OK, NULL);
        dns__fam_obj_add(fo, family, idx == 0 ? v4 : v6);
        return fo;
    }
    if (dns__under(fq, "invalid"))
        return dns__fam_obj_new(family, DNS_NXDOMAIN, NULL);
    return NULL;
}

/* ---- delivery -------------------------------------------------------------------- */

static void run_waiter(struct resolver *res, struct waiter *w, struct cobj *obj)
{
    switch (w->kind) {
    case W_MX: {
        struct mx_obj *m = (struct mx_obj *)obj;
        w->mx_cb(&m->pub, w->ud);
        break;
    }
    case W_FAM:
        dns__job_got(res, w->job, (struct fam_obj *)obj);
        break;
    case W_JOB:
        dns__job_finish(res, w->job);
        break;
    case W_TXT:
        w->txt_cb(&((struct txt_obj *)obj)->pub, w->ud);
        break;
    }
}

static void deliver_cb(evutil_socket_t fd, short what, void *arg)
{
    struct resolver *res = arg;
    reap_channels(res);
    start_queued_mx(res);
    while (res->done_head) {
        struct flight *list = res->done_head;
        res->done_head = res->done_tail = NULL;
        while (list) {
            struct flight *f = list;
            list = f->next;
            while (f->waiters) {
                struct waiter *w = f->waiters;
                f->waiters = w->next;
                run_waiter(res, w, f->result);
                free(w);
            }
            flight_free(f);
        }
    }
}

/* ---- address jobs on the resolver ------------------------------------------------ */

void dns__job_link(struct resolver *res, struct addr_job *job)
{
    job->prev = NULL;
    job->next = res->jobs;
    if (res->jobs)
        res->jobs->prev = job;
    res->jobs = job;
}

void dns__job_unlink(struct resolver *res, struct addr_job *job)
{
    if (job->prev)
        job->prev->next = job->next;
    else
        res->jobs = job->next;
    if (job->next)
        job->next->prev = job->prev;
}

/* ---- teardown ------------------------------------------------------------------------- */

void dns_reactor_free(reactor *r)
{
    struct resolver *res = reactor_get_slot(r, REACTOR_SLOT_DNS);
    if (!res)
        return;
    reactor_set_slot(r, REACTOR_SLOT_DNS, NULL);
    /* detach the flights from their queries, so that ares_destroy's
     * ARES_EDESTRUCTION callbacks only free the query contexts */
    for (size_t i = 0; i < res->flights.nb; i++)
        for (struct hnode *n = res->flights.b[i]; n; n = n->next) {
            struct flight *f = (struct flight *)n;
            if (f->q) {
                f->q->f = NULL;
                f->q = NULL;
            }
        }
    chan_free(res->cur);
    while (res->named) {
        struct nchan *nc = res->named;
        res->named = nc->next;
        chan_free(nc->ch);
        free(nc->name);
        free(nc);
    }
    while (res->retired) {
        struct chan *ch = res->retired;
        res->retired = ch->next;
        chan_free(ch);
    }
    for (size_t i = 0; i < res->flights.nb; i++) {
        struct hnode *n = res->flights.b[i];
        while (n) {
            struct hnode *next = n->next;
            flight_free((struct flight *)n);
            n = next;
        }
    }
    free(res->flights.b);
    while (res->done_head) {
        struct flight *f = res->done_head;
        res->done_head = f->next;
        flight_free(f);
    }
    while (res->jobs) {
        struct addr_job *job = res->jobs;
        res->jobs = job->next;
        if (job->drop) /* never answered */
            job->drop(job->ud);
        dns__job_free(job);
    }
    event_free(res->deliver_ev);
    free(res);
}

void dns_shutdown(void)
{
    dns__config_shutdown();
    hosts_stop();
    dns_cache_clear();
    pthread_mutex_lock(&cache.lock);
    free(cache.t.b);
    cache.t.b = NULL;
    cache.t.nb = 0;
    pthread_mutex_unlock(&cache.lock);
}
