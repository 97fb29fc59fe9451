/* Source selection (docs/reference/kumo/make_egress_path/
 * source_selection_rate.md, additional_source_selection_rates.md): the
 * weighted round robin over a scheduled queue's pool proposes a source; if
 * that source's egress path has selection rates, they are checked smallest
 * first and the first one exhausted makes the source ineligible for this
 * message, and the round robin proposes the next one among those left.
 * When none is left the message gets a TransientFailure ("no sources for
 * ... are eligible for selection at this time") and is retried with an
 * attempt, as KumoMTA does. A queue without a pool has the one source
 * "unspecified", which is checked the same way.
 *
 * The source is chosen before the ready queue (which owns the egress path
 * config) is known, so this file keeps its own cache, per reactor, of the
 * selection rates of each (domain, source, ready queue) it has asked
 * get_egress_path_config about: one call per path per refresh_interval (or
 * config epoch, with refresh_strategy Epoch), never one per message; a
 * stale entry keeps answering while it is refreshed. Messages that need an
 * entry still loading wait on it.
 *
 * The throttles are those of net/shthrottle.h, under KumoMTA's names
 * ("kumomta.source_selection_rate.<ready queue>.<source>" and the
 * additional names as given): shared through Redis when
 * kumo.configure_redis_throttles is on (tokens taken in batches as the
 * ready queues do, queue/throttle_shared.h), in-process otherwise.
 *
 * Threads: the scheduled queue's owner reactor; the cache is per reactor.
 * Failures: a policy error in get_egress_path_config is logged and the
 * path counts as having no selection rates until the next try a minute
 * later (the ready queue reports the same error); Redis errors are
 * answered in-process by shthrottle; at shutdown the waiting messages are
 * freed (they are in the spool) and late answers find queues_down. */
#include "queue/select_source.h"

#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/diag.h"
#include "core/kerr.h"
#include "net/shthrottle.h"
#include "queue/admin.h"
#include "queue/dispatch.h"
#include "queue/throttle_shared.h"

#define PBUCKETS 256
#define CREDIT_TTL_NS (1LL * NS_PER_SEC)
#define FAILED_RETRY_NS (60LL * NS_PER_SEC)
#define MAX_CANDIDATES 256

typedef struct sthr {
    char *name;
    throttle_spec spec;
    unsigned credit;
    int64_t credit_exp_ns, wait_until_ns;
    bool inflight;
} sthr;

struct seljob;

typedef struct pentry {
    struct pentry *next;
    char *key; /* domain "\x01" ready queue name */
    bool loaded;
    klua_call *call; /* get_egress_path_config in flight */
    sthr *t;         /* smallest rate first */
    size_t n;
    unsigned gen; /* bumped when t is rebuilt */
    int64_t loaded_ns, refresh_ns;
    bool refresh_epoch;
    unsigned epoch;
    struct seljob *waiters;
} pentry;

typedef struct ptable {
    pentry *b[PBUCKETS];
    size_t n, inserts;
} ptable;

static __thread ptable *ptab;

typedef struct seljob {
    struct seljob *next;
    schedq *sq;
    qmsg *q;
    selsrc_cont cont;
    int64_t sq_loaded_ns; /* the queue's config this job started with */
    int cand;             /* the candidate being checked, -1 = pick one */
    uint64_t excl[MAX_CANDIDATES / 64];
    bool on_heap;
} seljob;

static void job_step(seljob *j);

/* ---- the path cache ------------------------------------------------------------------------- */

static void entry_clear(pentry *e)
{
    for (size_t i = 0; i < e->n; i++)
        free(e->t[i].name);
    free(e->t);
    e->t = NULL;
    e->n = 0;
}

static void entry_free(pentry *e)
{
    entry_clear(e);
    free(e->key);
    free(e);
}

static double rate_of(const throttle_spec *s)
{
    return s->period_ns > 0 ? (double)s->limit * 1e9 / (double)s->period_ns : 0;
}

static void add_thr(pentry *e, const char *name, const throttle_spec *spec)
{
    e->t = realloc(e->t, (e->n + 1) * sizeof(*e->t));
    if (!e->t)
        abort();
    size_t at = e->n;
    while (at > 0 && rate_of(&e->t[at - 1].spec) > rate_of(spec)) {
        e->t[at] = e->t[at - 1];
        at--;
    }
    memset(&e->t[at], 0, sizeof(e->t[at]));
    e->t[at].name = strdup(name);
    e->t[at].spec = *spec;
    e->n++;
}

static void wake_waiters(pentry *e)
{
    seljob *w = e->waiters;
    e->waiters = NULL;
    while (w) {
        seljob *next = w->next;
        w->next = NULL;
        job_step(w);
        w = next;
    }
}

static void path_loaded(klua_call *c, int status, void *ud)
{
    pentry *e = ud;
    e->call = NULL;
    const char *rq_name = strchr(e->key, '\x01') + 1;
    egress_path_config cfg;
    egress_path_defaults(&cfg);
    if (status != KLUA_OK) {
        DERROR(QMOD, "ready_queue=%s get_egress_path_config failed; no source selection rates "
                     "apply until it is asked again in 60s: %s",
               rq_name, klua_call_error(c));
        cfg.refresh_interval_ns = FAILED_RETRY_NS;
    } else {
        lua_State *L = klua_call_thread(c);
        if (klua_call_nresults(c) >= 1 && lua_type(L, 1) == LUA_TTABLE) {
            char err[512];
            json_t *j = klua_to_json(L, 1, err, sizeof(err));
            int rc = j ? egress_path_from_json(j, &cfg, err, sizeof(err)) : KERR_PARSE;
            json_decref(j);
            if (rc) {
                egress_path_fini(&cfg);
                egress_path_defaults(&cfg);
                cfg.refresh_interval_ns = FAILED_RETRY_NS;
            }
        }
    }
    entry_clear(e);
    e->gen++;
    if (cfg.has_source_selection_rate) {
        const char *arrow = strstr(rq_name, "->");
        char name[4400];
        snprintf(name, sizeof(name), "kumomta.source_selection_rate.%s.%.*s", rq_name,
                 (int)(arrow - rq_name), rq_name);
        add_thr(e, name, &cfg.source_selection_rate);
    }
    for (size_t i = 0; i < cfg.n_add_selection_rates; i++)
        add_thr(e, cfg.add_selection_rates[i].name, &cfg.add_selection_rates[i].spec);
    e->loaded = true;
    e->loaded_ns = clock_mono_ns();
    e->refresh_ns = cfg.refresh_interval_ns;
    e->refresh_epoch = cfg.refresh_epoch;
    e->epoch = klua_config_epoch();
    egress_path_fini(&cfg);
    wake_waiters(e);
}

static void entry_load(pentry *e, const char *domain, const char *source, const char *site)
{
    klua *vm = klua_current();
    if (!vm || !klua_has_handler(vm, "get_egress_path_config")) {
        e->loaded = true;
        e->loaded_ns = clock_mono_ns();
        e->refresh_ns = 60 * NS_PER_SEC;
        e->refresh_epoch = true; /* a reload may add the handler */
        e->epoch = klua_config_epoch();
        return;
    }
    klua_call *c;
    lua_State *co = klua_call_begin(vm, "get_egress_path_config", &c);
    lua_pushstring(co, domain);
    lua_pushstring(co, source);
    lua_pushstring(co, site);
    e->call = c;
    klua_call_run(c, 3, path_loaded, e);
}

static bool entry_stale(const pentry *e)
{
    return e->refresh_epoch ? e->epoch != klua_config_epoch()
                            : clock_mono_ns() - e->loaded_ns > e->refresh_ns;
}

static void prune(ptable *t)
{
    for (size_t b = 0; b < PBUCKETS; b++)
        for (pentry **pp = &t->b[b]; *pp;) {
            pentry *e = *pp;
            bool busy = e->call || e->waiters;
            for (size_t i = 0; i < e->n && !busy; i++)
                busy = e->t[i].inflight;
            if (!busy && e->loaded && entry_stale(e)) {
                *pp = e->next;
                entry_free(e);
                t->n--;
            } else {
                pp = &e->next;
            }
        }
}

/* The entry of (domain, rq_name), created and loading when new, refreshed
 * in the background when stale. */
static pentry *entry_get(const char *domain, const char *source, const char *site,
                         const char *rq_name)
{
    if (!ptab) {
        ptab = calloc(1, sizeof(*ptab));
        if (!ptab)
            abort();
    }
    char key[9000];
    snprintf(key, sizeof(key), "%.3000s\x01%.5900s", domain, rq_name);
    size_t b = name_hash(key) % PBUCKETS;
    for (pentry *e = ptab->b[b]; e; e = e->next)
        if (strcmp(e->key, key) == 0) {
            if (e->loaded && !e->call && entry_stale(e))
                entry_load(e, domain, source, site);
            return e;
        }
    if (++ptab->inserts % 1024 == 0)
        prune(ptab);
    pentry *e = calloc(1, sizeof(*e));
    if (!e)
        abort();
    e->key = strdup(key);
    e->next = ptab->b[b];
    ptab->b[b] = e;
    ptab->n++;
    entry_load(e, domain, source, site);
    return e;
}

static pentry *entry_find(const char *key)
{
    if (!ptab)
        return NULL;
    for (pentry *e = ptab->b[name_hash(key) % PBUCKETS]; e; e = e->next)
        if (strcmp(e->key, key) == 0)
            return e;
    return NULL;
}

void selsrc_reactor_shutdown(void)
{
    if (!ptab)
        return;
    for (size_t b = 0; b < PBUCKETS; b++)
        while (ptab->b[b]) {
            pentry *e = ptab->b[b];
            ptab->b[b] = e->next;
            if (e->call)
                klua_call_cancel(e->call);
            for (seljob *w = e->waiters, *next; w; w = next) {
                next = w->next;
                qmsg_free(w->q); /* safe in the spool */
                free(w);
            }
            entry_free(e);
        }
    free(ptab);
    ptab = NULL;
}

/* ---- the selection throttles ---------------------------------------------------------------- */

struct take_ud {
    char *key;
    unsigned gen;
    size_t idx;
};

static void apply(sthr *t, const shthrottle_result *r)
{
    int64_t now = clock_mono_ns();
    if (r->granted > 0) {
        t->credit = r->granted;
        t->credit_exp_ns = now + CREDIT_TTL_NS;
        t->wait_until_ns = 0;
    } else {
        t->wait_until_ns = now + (r->retry_after_ns > 0 ? r->retry_after_ns : 1);
    }
}

static void take_done(const shthrottle_result *r, void *ud)
{
    struct take_ud *u = ud;
    pentry *e = queues_down ? NULL : entry_find(u->key);
    if (e) {
        if (e->gen == u->gen && u->idx < e->n) {
            e->t[u->idx].inflight = false;
            apply(&e->t[u->idx], r);
        }
        wake_waiters(e);
    }
    free(u->key);
    free(u);
}

/* 0: a token of every throttle taken (eligible); 1: one is exhausted
 * (ineligible); -1: Redis answers later (take_done wakes the waiters). */
static int take(pentry *e)
{
    int64_t now = clock_mono_ns();
    for (size_t i = 0; i < e->n; i++) {
        sthr *t = &e->t[i];
        if (t->wait_until_ns > now)
            return 1;
        if (t->credit > 0 && now < t->credit_exp_ns)
            continue;
        if (t->inflight)
            return -1;
        t->credit = 0;
        bool shared = shthrottle_is_shared() && !t->spec.local;
        struct take_ud *u = calloc(1, sizeof(*u));
        if (!u)
            abort();
        u->key = strdup(e->key);
        u->gen = e->gen;
        u->idx = i;
        shthrottle_result r;
        if (shthrottle_take(t->name, &t->spec, shared ? rqthr_batch_for(&t->spec) : 1, &r,
                            take_done, u) == 1) {
            t->inflight = true;
            return -1;
        }
        free(u->key);
        free(u);
        apply(t, &r);
        if (t->credit == 0)
            return 1;
    }
    for (size_t i = 0; i < e->n; i++)
        e->t[i].credit--;
    return 0;
}

/* ---- the selection --------------------------------------------------------------------------- */

static bool excluded(const seljob *j, int i)
{
    return i < MAX_CANDIDATES && (j->excl[i / 64] >> (i % 64)) & 1;
}

static int pick(seljob *j)
{
    schedq *sq = j->sq;
    if (!sq->has_pool)
        return excluded(j, 0) ? -1 : 0;
    bool any = false;
    for (size_t w = 0; w < MAX_CANDIDATES / 64; w++)
        any = any || j->excl[w];
    if (!any)
        return egress_pool_next(&sq->pool, &sq->wrr);
    /* the round robin goes on over the sources left (weight 0: never) */
    egress_pool_entry *copy = malloc(sq->pool.n * sizeof(*copy));
    if (!copy)
        abort();
    for (size_t i = 0; i < sq->pool.n; i++) {
        copy[i] = sq->pool.entries[i];
        if (excluded(j, (int)i))
            copy[i].weight = 0;
    }
    egress_pool tmp = {sq->pool.name, copy, sq->pool.n};
    int r = egress_pool_next(&tmp, &sq->wrr);
    free(copy);
    return r;
}

static seljob *persist(seljob *j)
{
    if (j->on_heap)
        return j;
    seljob *h = malloc(sizeof(*h));
    if (!h)
        abort();
    *h = *j;
    h->on_heap = true;
    h->sq->busy++; /* the queue stays while the job waits */
    return h;
}

static void job_end(seljob *j)
{
    if (j->on_heap) {
        j->sq->busy--;
        schedq *sq = j->sq;
        free(j);
        sched_arm_reap(sq);
    }
}

struct none_job {
    char *queue, *pool, *provider;
};

static void none_job_free(void *ud)
{
    struct none_job *n = ud;
    free(n->queue);
    free(n->pool);
    free(n->provider);
    free(n);
}

static void none_after_load(qmsg *q, int err, void *ud)
{
    struct none_job *n = ud;
    if (err || !q->m) {
        qmsg_free(q); /* stays in the spool */
    } else {
        char content[600];
        snprintf(content, sizeof(content),
                 "KumoMTA internal: no sources for %s pool=`%s` are eligible for selection at "
                 "this time",
                 n->queue, n->pool);
        rec_ctx x = {.queue = n->queue, .site = "", .pool = n->pool, .provider = n->provider};
        disp_response r = {451, 4, 4, 4, content, NULL};
        qmsg_log(LOGREC_TRANSIENT_FAILURE, q->m, q->num_attempts, &x, &r);
        atomic_fetch_add(&st_transfail, 1);
        qmsg_add_reason(q, R_LOGGED_TRANSIENT_FAILURE);
        requeue_post(q, n->queue, true, false, -1);
    }
    none_job_free(n);
}

static void none_eligible(seljob *j)
{
    schedq *sq = j->sq;
    struct none_job *n = calloc(1, sizeof(*n));
    if (!n)
        abort();
    n->queue = strdup(sq->name);
    n->pool = strdup(sq->cfg.egress_pool ? sq->cfg.egress_pool : "unspecified");
    n->provider = sq->cfg.provider_name ? strdup(sq->cfg.provider_name) : NULL;
    DDEBUG(QMOD, "queue=%s no source of pool %s is eligible (selection rates)", sq->name,
           n->pool);
    qmsg *q = j->q;
    job_end(j);
    qmsg_load(q, false, none_after_load, n, none_job_free);
}

static void job_step(seljob *j)
{
    schedq *sq = j->sq;
    if (j->on_heap && (sq->state != CFG_READY || sq->cfg_loaded_ns != j->sq_loaded_ns)) {
        /* reconfigured while it waited: it starts over */
        qmsg *q = j->q;
        job_end(j);
        sched_place(sq, q);
        return;
    }
    char sbuf[4200], pbuf[4200];
    const char *site = sched_site(sq, sbuf, sizeof(sbuf));
    const char *suffix = queue_proto_suffix(&sq->cfg, pbuf, sizeof(pbuf));
    const char *domain = sq->parts.routing_domain ? sq->parts.routing_domain
                                                  : (sq->parts.domain ? sq->parts.domain : site);
    for (;;) {
        if (j->cand < 0) {
            j->cand = pick(j);
            if (j->cand < 0) {
                none_eligible(j);
                return;
            }
        }
        const char *source = sq->has_pool ? sq->pool.entries[j->cand].name : "unspecified";
        char rq_name[8800];
        snprintf(rq_name, sizeof(rq_name), "%s->%s@%s", source, site, suffix);
        pentry *e = entry_get(domain, source, site, rq_name);
        int rc = e->loaded ? (e->n ? take(e) : 0) : -1;
        if (rc < 0) {
            j = persist(j);
            j->next = e->waiters;
            e->waiters = j;
            return;
        }
        if (rc == 0) {
            qmsg *q = j->q;
            selsrc_cont cont = j->cont;
            job_end(j);
            cont(sq, q, source);
            return;
        }
        if (j->cand >= MAX_CANDIDATES) { /* beyond what the round robin sees */
            none_eligible(j);
            return;
        }
        j->excl[j->cand / 64] |= 1ULL << (j->cand % 64);
        j->cand = -1;
    }
}

void selsrc_pick(schedq *sq, qmsg *q, selsrc_cont cont)
{
    seljob j = {.sq = sq, .q = q, .cont = cont, .sq_loaded_ns = sq->cfg_loaded_ns, .cand = -1};
    job_step(&j);
}
