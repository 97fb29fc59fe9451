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
 * The source is chosen before the message reaches its ready queue, which
 * owns the egress path config on its own reactor. So each ready queue,
 * once configured, publishes its selection rates in a process-wide table
 * (selsrc_publish, under a mutex); a scheduled queue's reactor keeps its
 * own view of the entries it uses (with the token credit), brought up to
 * date when the published generation changes. A candidate whose ready
 * queue does not exist yet has it made and configured on its owner
 * (readyq_prepare_remote: get_egress_path_config runs there, once, as for
 * any ready queue), and the messages that need it wait until it
 * publishes. No Lua call here: per message, one hash lookup under the
 * mutex per candidate.
 *
 * The throttles are those of net/shthrottle.h, under KumoMTA's names
 * ("kumomta.source_selection_rate.<ready queue>.<source>" and the
 * additional names as given): shared through Redis when
 * kumo.configure_redis_throttles is on (tokens taken in batches as the
 * ready queues do, queue/throttle_shared.h), in-process otherwise.
 *
 * Threads: the scheduled queue's owner reactor, except selsrc_publish /
 * selsrc_unpublish (a ready queue's owner) and the published table (its
 * mutex). Failures: a ready queue that cannot be configured publishes no
 * rates (the message goes on; the ready queue reports the error); Redis
 * errors are answered in-process by shthrottle; at shutdown the waiting
 * messages are freed (they are in the spool) and late answers find
 * queues_down. */
#include "queue/select_source.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/diag.h"
#include "core/kerr.h"
#include "log/logs.h"
#include "net/shthrottle.h"
#include "queue/admin.h"
#include "queue/dispatch.h"
#include "queue/throttle_shared.h"

#define PBUCKETS 256
#define CREDIT_TTL_NS (1LL * NS_PER_SEC)
#define MAX_CANDIDATES 256

typedef struct sthr {
    char *name;
    throttle_spec spec;
    unsigned credit;
    int64_t credit_exp_ns, wait_until_ns;
    bool inflight;
} sthr;

struct seljob;

/* What a scheduled queue's reactor knows of one ready queue's selection
 * rates, with its token credit and the jobs waiting. */
typedef struct pentry {
    struct pentry *next;
    char *key; /* the ready queue name */
    bool loaded;
    bool asked;   /* a waiter of the published entry: woken when it loads */
    sthr *t;      /* smallest rate first */
    size_t n;
    unsigned gen; /* of the published rates it was built from */
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

/* ---- what the ready queues published (process-wide) ------------------------------------------ */

typedef struct pwait {
    struct pwait *next;
    reactor *r;
} pwait;

typedef struct pub {
    struct pub *next;
    char *name;
    named_throttle *t;
    size_t n;
    unsigned gen;
    bool loaded;
    pwait *waiters;
} pub;

#define PUB_BUCKETS 1024
static pthread_mutex_t pub_mu = PTHREAD_MUTEX_INITIALIZER;
static pub *pub_tab[PUB_BUCKETS];
static unsigned pub_gen;

static pub **pub_slot(const char *name)
{
    pub **pp = &pub_tab[name_hash(name) % PUB_BUCKETS];
    while (*pp && strcmp((*pp)->name, name) != 0)
        pp = &(*pp)->next;
    return pp;
}

static void pub_clear(pub *p)
{
    for (size_t i = 0; i < p->n; i++)
        free(p->t[i].name);
    free(p->t);
    p->t = NULL;
    p->n = 0;
}

static void wake_on_reactor(void *arg);

static void notify(pwait *w, const char *name)
{
    while (w) {
        pwait *next = w->next;
        reactor_post(w->r, wake_on_reactor, strdup(name));
        free(w);
        w = next;
    }
}

void selsrc_publish(const char *rq_name, const egress_path_config *cfg)
{
    /* the new list first, outside the lock */
    size_t n = cfg ? cfg->n_add_selection_rates + (cfg->has_source_selection_rate ? 1 : 0) : 0;
    named_throttle *t = n ? calloc(n, sizeof(*t)) : NULL;
    if (n && !t)
        abort();
    size_t k = 0;
    if (cfg && cfg->has_source_selection_rate) {
        const char *arrow = strstr(rq_name, "->");
        int slen = arrow ? (int)(arrow - rq_name) : 0;
        char name[4400];
        snprintf(name, sizeof(name), "kumomta.source_selection_rate.%.3000s.%.*s", rq_name,
                 slen, rq_name);
        t[k].name = strdup(name);
        t[k++].spec = cfg->source_selection_rate;
    }
    for (size_t i = 0; cfg && i < cfg->n_add_selection_rates; i++) {
        t[k].name = strdup(cfg->add_selection_rates[i].name);
        t[k++].spec = cfg->add_selection_rates[i].spec;
    }
    pthread_mutex_lock(&pub_mu);
    pub **pp = pub_slot(rq_name);
    pub *p = *pp;
    if (!p) {
        p = calloc(1, sizeof(*p));
        if (!p)
            abort();
        p->name = strdup(rq_name);
        *pp = p;
    }
    /* the same rates again (a refresh, a second ask): same generation, so
     * the credit and the answers in flight stay valid */
    bool same = p->loaded && p->n == n;
    for (size_t i = 0; same && i < n; i++)
        same = strcmp(p->t[i].name, t[i].name) == 0 && p->t[i].spec.limit == t[i].spec.limit &&
               p->t[i].spec.period_ns == t[i].spec.period_ns &&
               p->t[i].spec.max_burst == t[i].spec.max_burst &&
               p->t[i].spec.local == t[i].spec.local;
    named_throttle *old = NULL;
    size_t old_n = 0;
    if (same) {
        old = t;
        old_n = n;
    } else {
        old = p->t;
        old_n = p->n;
        p->t = t;
        p->n = n;
        p->gen = ++pub_gen;
    }
    p->loaded = true;
    pwait *w = p->waiters;
    p->waiters = NULL;
    pthread_mutex_unlock(&pub_mu);
    for (size_t i = 0; i < old_n; i++)
        free(old[i].name);
    free(old);
    notify(w, rq_name);
}

void selsrc_unpublish(const char *rq_name)
{
    pthread_mutex_lock(&pub_mu);
    pub **pp = pub_slot(rq_name);
    pub *p = *pp;
    if (p)
        *pp = p->next;
    pthread_mutex_unlock(&pub_mu);
    if (!p)
        return;
    /* anyone still waiting asks again (the ready queue is made anew) */
    notify(p->waiters, rq_name);
    pub_clear(p);
    free(p->name);
    free(p);
}

void selsrc_free_all(void)
{
    pthread_mutex_lock(&pub_mu);
    for (size_t b = 0; b < PUB_BUCKETS; b++)
        while (pub_tab[b]) {
            pub *p = pub_tab[b];
            pub_tab[b] = p->next;
            for (pwait *w = p->waiters, *next; w; w = next) {
                next = w->next;
                free(w);
            }
            pub_clear(p);
            free(p->name);
            free(p);
        }
    pthread_mutex_unlock(&pub_mu);
}

/* ---- the per-reactor view ---------------------------------------------------------------- */

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

/* Brings e up to date with what its ready queue published. Returns true
 * when the ready queue must be asked to configure itself (nothing
 * published yet); e is then not loaded and waits. */
static bool entry_sync(pentry *e)
{
    bool ask = false;
    pthread_mutex_lock(&pub_mu);
    pub **pp = pub_slot(e->key);
    pub *p = *pp;
    if (!p) {
        p = calloc(1, sizeof(*p));
        if (!p)
            abort();
        p->name = strdup(e->key);
        *pp = p;
        ask = true;
    }
    if (p->loaded) {
        if (!e->loaded || e->gen != p->gen) {
            entry_clear(e);
            for (size_t i = 0; i < p->n; i++)
                add_thr(e, p->t[i].name, &p->t[i].spec);
            e->gen = p->gen;
        }
        e->loaded = true;
    } else {
        e->loaded = false;
        if (!e->asked) {
            pwait *w = calloc(1, sizeof(*w));
            if (!w)
                abort();
            w->r = reactor_current();
            w->next = p->waiters;
            p->waiters = w;
            e->asked = true;
        }
    }
    pthread_mutex_unlock(&pub_mu);
    return ask;
}

static void wake_on_reactor(void *arg)
{
    char *name = arg;
    pentry *e = NULL;
    if (!queues_down && ptab)
        for (e = ptab->b[name_hash(name) % PBUCKETS]; e && strcmp(e->key, name) != 0;)
            e = e->next;
    free(name);
    if (!e)
        return;
    e->asked = false;
    /* the jobs look again (job_step syncs the entry) */
    wake_waiters(e);
}

static void prune(ptable *t)
{
    for (size_t b = 0; b < PBUCKETS; b++)
        for (pentry **pp = &t->b[b]; *pp;) {
            pentry *e = *pp;
            bool busy = e->waiters || e->asked;
            for (size_t i = 0; i < e->n && !busy; i++)
                busy = e->t[i].inflight || e->t[i].wait_until_ns > clock_mono_ns();
            if (!busy) {
                *pp = e->next;
                entry_free(e);
                t->n--;
            } else {
                pp = &e->next;
            }
        }
}

/* The entry of ready queue rq_name, up to date with what it published;
 * when nothing is published yet the ready queue is made (and configured:
 * get_egress_path_config runs there, once, as for any ready queue) and
 * the entry is not loaded until it has. */
static pentry *entry_get(schedq *sq, const char *rq_name)
{
    if (!ptab) {
        ptab = calloc(1, sizeof(*ptab));
        if (!ptab)
            abort();
    }
    size_t b = name_hash(rq_name) % PBUCKETS;
    pentry *e = ptab->b[b];
    while (e && strcmp(e->key, rq_name) != 0)
        e = e->next;
    if (!e) {
        if (++ptab->inserts % 1024 == 0)
            prune(ptab);
        e = calloc(1, sizeof(*e));
        if (!e)
            abort();
        e->key = strdup(rq_name);
        e->next = ptab->b[b];
        ptab->b[b] = e;
        ptab->n++;
    }
    if (entry_sync(e))
        readyq_prepare_remote(rq_name, sq);
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
    qmsg_load(q, logs_records_want_data(), none_after_load, n, none_job_free);
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
        pentry *e = entry_get(sq, rq_name);
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
