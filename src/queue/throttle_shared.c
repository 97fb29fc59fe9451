/* A ready queue's throttles and connection leases (see throttle_shared.h).
 * Owns, per ready queue (rq->thr, made on first use), the token credit of
 * each rate throttle and the lease requests in flight.
 *
 * Shared throttles cost one Redis round trip per batch of tokens, not per
 * message: a throttle that allows more than 20 events a second takes up to
 * a twentieth of a second's worth at once (at most 64), and the tokens not
 * used within a second are dropped (they were counted, so the cluster never
 * exceeds the limit; an idle node only gives some of it away). Slow
 * throttles such as "60/m" take one token at a time. When half a batch is
 * left the next batch is asked for (prefetch), so that while tokens are
 * available a dispatcher never waits on a Redis round trip.
 *
 * Threads: the ready queue's owner reactor. Failures: Redis errors are
 * answered from the in-process throttles by net/shthrottle.c; a ready queue
 * freed while Redis answers leaves its state orphaned until the last
 * answer, which frees it. */
#include "queue/throttle_shared.h"

#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/diag.h"
#include "net/shthrottle.h"
#include "queue/queue_int.h"

#define CREDIT_TTL_NS (1LL * NS_PER_SEC)
#define LEASE_RETRY_NS (3LL * NS_PER_SEC)
#define MAX_BATCH 64

typedef struct tentry {
    char *name;
    throttle_spec spec;
    unsigned credit;
    int64_t credit_exp_ns;
    int64_t wait_until_ns;
    bool inflight;
} tentry;

typedef struct tlist {
    tentry *e;
    size_t n;
} tlist;

struct lease_job;

struct rqthr {
    readyq *rq; /* NULL once orphaned */
    int64_t built_for;
    tlist msg, conn;
    int inflight;
    int64_t lease_blocked_until_ns;
    struct event *lease_retry_ev;
    struct lease_job *jobs;
};

struct rqleases {
    shlease **l;
    size_t n;
};

void dispatch_wake(readyq *rq);

static void tlist_fini(tlist *t)
{
    for (size_t i = 0; i < t->n; i++)
        free(t->e[i].name);
    free(t->e);
    t->e = NULL;
    t->n = 0;
}

static void tlist_add(tlist *t, const char *name, const throttle_spec *spec)
{
    t->e = realloc(t->e, (t->n + 1) * sizeof(*t->e));
    if (!t->e)
        abort();
    tentry *e = &t->e[t->n++];
    memset(e, 0, sizeof(*e));
    e->name = strdup(name);
    e->spec = *spec;
}

static double rate_of(const throttle_spec *s)
{
    return s->period_ns > 0 ? (double)s->limit * 1e9 / (double)s->period_ns : 0;
}

static void build(rqthr *t)
{
    readyq *rq = t->rq;
    tlist_fini(&t->msg);
    tlist_fini(&t->conn);
    char name[4400];
    /* max_message_rate joins the additional ones in rate order (smallest first) */
    bool placed = !rq->cfg.has_max_message_rate;
    snprintf(name, sizeof(name), "kumomta.max_message_rate.%s", rq->name);
    for (size_t i = 0; i < rq->cfg.n_add_rates; i++) {
        if (!placed && rate_of(&rq->cfg.max_message_rate) <= rate_of(&rq->cfg.add_rates[i].spec)) {
            tlist_add(&t->msg, name, &rq->cfg.max_message_rate);
            placed = true;
        }
        tlist_add(&t->msg, rq->cfg.add_rates[i].name, &rq->cfg.add_rates[i].spec);
    }
    if (!placed)
        tlist_add(&t->msg, name, &rq->cfg.max_message_rate);
    if (rq->cfg.has_max_connection_rate) {
        snprintf(name, sizeof(name), "kumomta.max_connection_rate.%s", rq->name);
        tlist_add(&t->conn, name, &rq->cfg.max_connection_rate);
    }
    t->built_for = rq->cfg_loaded_ns;
}

static rqthr *get(readyq *rq)
{
    if (!rq->thr) {
        rq->thr = calloc(1, sizeof(*rq->thr));
        if (!rq->thr)
            abort();
        rq->thr->rq = rq;
        build(rq->thr);
    } else if (rq->thr->built_for != rq->cfg_loaded_ns) {
        build(rq->thr); /* reconfigured: new limits, fresh credit */
    }
    return rq->thr;
}

static void thr_free(rqthr *t)
{
    tlist_fini(&t->msg);
    tlist_fini(&t->conn);
    if (t->lease_retry_ev)
        event_free(t->lease_retry_ev);
    free(t);
}

/* ---- rate throttles ---------------------------------------------------------------------- */

struct take_job {
    rqthr *t;
    tlist *list;
    char *name; /* the entry may have been rebuilt meanwhile */
};

unsigned rqthr_batch_for(const throttle_spec *s)
{
    double per_sec = rate_of(s);
    double want = per_sec / 20.0;
    if (want < 1)
        return 1;
    uint64_t burst = s->max_burst ? s->max_burst : 1;
    if (want > (double)burst)
        want = (double)burst;
    return want > MAX_BATCH ? MAX_BATCH : (unsigned)want;
}

static void apply(tentry *e, const shthrottle_result *r)
{
    int64_t now = clock_mono_ns();
    bool have = e->credit > 0 && now < e->credit_exp_ns;
    if (r->granted > 0) {
        /* a prefetched batch adds to what is left of the current one */
        e->credit = (have ? e->credit : 0) + r->granted;
        e->credit_exp_ns = now + CREDIT_TTL_NS;
        e->wait_until_ns = 0;
    } else if (!have) {
        e->wait_until_ns = now + (r->retry_after_ns > 0 ? r->retry_after_ns : 1);
    }
}

static void take_done(const shthrottle_result *r, void *ud)
{
    struct take_job *j = ud;
    rqthr *t = j->t;
    t->inflight--;
    if (t->rq) {
        for (size_t i = 0; i < j->list->n; i++)
            if (strcmp(j->list->e[i].name, j->name) == 0) {
                j->list->e[i].inflight = false;
                apply(&j->list->e[i], r);
            }
        dispatch_wake(t->rq);
    } else if (t->inflight == 0 && !t->jobs) {
        thr_free(t);
    }
    free(j->name);
    free(j);
}

/* Asks for a batch of e's tokens: 0 when answered at once (applied), 1
 * when Redis answers later (take_done applies it and wakes the queue). */
static int start_take(rqthr *t, tlist *list, tentry *e)
{
    shthrottle_result r;
    struct take_job *j = calloc(1, sizeof(*j));
    if (!j)
        abort();
    j->t = t;
    j->list = list;
    j->name = strdup(e->name);
    if (shthrottle_take(e->name, &e->spec, rqthr_batch_for(&e->spec), &r, take_done, j) == 0) {
        free(j->name);
        free(j);
        apply(e, &r);
        return 0;
    }
    e->inflight = true;
    t->inflight++;
    return 1;
}

static int64_t check(rqthr *t, tlist *list)
{
    int64_t now = clock_mono_ns();
    for (size_t i = 0; i < list->n; i++) {
        tentry *e = &list->e[i];
        if (e->wait_until_ns > now)
            return e->wait_until_ns - now;
        if (e->credit > 0 && now < e->credit_exp_ns) {
            /* half the batch left: the next one is asked for now, so that
             * a dispatcher never waits on Redis while tokens flow */
            if (!e->inflight && !e->spec.local && shthrottle_is_shared() &&
                e->credit <= rqthr_batch_for(&e->spec) / 2)
                start_take(t, list, e);
            continue;
        }
        if (e->inflight)
            return -1;
        e->credit = 0;
        if (start_take(t, list, e) == 1)
            return -1;
        if (e->credit == 0)
            return e->wait_until_ns - now;
    }
    /* every throttle has a token for this one */
    for (size_t i = 0; i < list->n; i++)
        list->e[i].credit--;
    return 0;
}

int64_t rqthr_message(readyq *rq)
{
    if (!rq->cfg.has_max_message_rate && rq->cfg.n_add_rates == 0)
        return 0;
    if (!shthrottle_is_shared() && rq->cfg.n_add_rates == 0)
        return throttle_take(&rq->msg_rate, &rq->cfg.max_message_rate, clock_wall_ns());
    if (rq->cfg.max_message_rate.local && rq->cfg.n_add_rates == 0)
        return throttle_take(&rq->msg_rate, &rq->cfg.max_message_rate, clock_wall_ns());
    return check(get(rq), &get(rq)->msg);
}

int64_t rqthr_connection(readyq *rq)
{
    if (!rq->cfg.has_max_connection_rate)
        return 0;
    if (!shthrottle_is_shared() || rq->cfg.max_connection_rate.local)
        return throttle_take(&rq->conn_rate, &rq->cfg.max_connection_rate, clock_wall_ns());
    return check(get(rq), &get(rq)->conn);
}

/* ---- connection leases -------------------------------------------------------------------- */

typedef struct lease_job {
    struct lease_job *next;
    rqthr *t;
    void *owner; /* NULL once cancelled */
    rqlease_done_fn done;
    named_limit *want; /* copies: the config may be rebuilt meanwhile */
    size_t n_want, next_idx;
    rqleases *got;
} lease_job;

bool rqthr_may_open(readyq *rq)
{
    return !rq->thr || rq->thr->lease_blocked_until_ns <= clock_mono_ns();
}

void rqleases_release(rqleases *l)
{
    if (!l)
        return;
    for (size_t i = 0; i < l->n; i++)
        shlease_release(l->l[i]);
    free(l->l);
    free(l);
}

static void job_free(lease_job *j)
{
    for (size_t i = 0; i < j->n_want; i++)
        free(j->want[i].name);
    free(j->want);
    rqleases_release(j->got);
    free(j);
}

static void job_unlink(lease_job *j)
{
    for (lease_job **pp = &j->t->jobs; *pp; pp = &(*pp)->next)
        if (*pp == j) {
            *pp = j->next;
            return;
        }
}

static void lease_retry_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    rqthr *t = arg;
    /* the timer is the authority: libevent's coarse monotonic clock can
     * fire it a few ms before clock_mono_ns() reaches the block's end, and
     * a rqthr_may_open that still said no would arm nothing and leave the
     * ready queue waiting for ever */
    t->lease_blocked_until_ns = 0;
    if (t->rq)
        readyq_maintain(t->rq);
}

static void refused(rqthr *t, const char *name)
{
    readyq *rq = t->rq;
    t->lease_blocked_until_ns = clock_mono_ns() + LEASE_RETRY_NS;
    DDEBUG(QMOD, "readyq=%s connection limit %s reached; trying again in 3s", rq->name, name);
    if (!t->lease_retry_ev)
        t->lease_retry_ev = evtimer_new(reactor_base(reactor_current()), lease_retry_cb, t);
    struct timeval tv = {LEASE_RETRY_NS / NS_PER_SEC, 0};
    evtimer_add(t->lease_retry_ev, &tv);
}

static void lease_step(lease_job *j, shlease *l);

static void lease_cb(shlease *l, void *ud);

/* Acquires the leases one after another, smallest limit first. Returns
 * 0 (all granted), -1 (refused) or 1 (waiting for lease_cb). */
static int lease_advance(lease_job *j)
{
    while (j->next_idx < j->n_want) {
        named_limit *w = &j->want[j->next_idx];
        shlease *l = NULL;
        if (shlease_acquire(w->name, w->limit, w->local, &l, lease_cb, j) == 1)
            return 1;
        if (!l)
            return -1;
        lease_step(j, l);
    }
    return 0;
}

static void lease_step(lease_job *j, shlease *l)
{
    rqleases *g = j->got;
    g->l = realloc(g->l, (g->n + 1) * sizeof(*g->l));
    if (!g->l)
        abort();
    g->l[g->n++] = l;
    j->next_idx++;
}

static void lease_cb(shlease *l, void *ud)
{
    lease_job *j = ud;
    rqthr *t = j->t;
    int rc = -1;
    if (l) {
        lease_step(j, l);
        rc = j->owner ? lease_advance(j) : 0;
        if (rc == 1)
            return; /* the next one is on its way */
    }
    job_unlink(j);
    if (j->owner && t->rq) {
        if (rc == 0) {
            rqleases *got = j->got;
            j->got = NULL;
            j->done(j->owner, got, true);
        } else {
            refused(t, j->want[j->next_idx].name);
            j->done(j->owner, NULL, false);
        }
    }
    job_free(j);
    if (!t->rq && t->inflight == 0 && !t->jobs)
        thr_free(t);
}

int rqlease_acquire(readyq *rq, void *owner, rqleases **out, rqlease_done_fn done)
{
    *out = NULL;
    bool shared = shthrottle_is_shared();
    size_t n = rq->cfg.n_add_limits + 1;
    named_limit *want = calloc(n, sizeof(*want));
    if (!want)
        abort();
    size_t k = 0;
    /* connection_limit itself is a lease only when shared: in-process the
     * ready queue's own count of dispatchers is the limit */
    if (shared && !rq->cfg.connection_limit_local && rq->cfg.connection_limit > 0) {
        char name[4400];
        snprintf(name, sizeof(name), "kumomta.connection_limit.%s", rq->name);
        want[k].name = strdup(name);
        want[k].limit = rq->cfg.connection_limit;
        k++;
    }
    for (size_t i = 0; i < rq->cfg.n_add_limits; i++) {
        want[k] = rq->cfg.add_limits[i];
        want[k].name = strdup(want[k].name);
        k++;
    }
    if (k == 0) {
        free(want);
        return 0;
    }
    /* smallest first (additional_connection_limits.md) */
    for (size_t i = 1; i < k; i++)
        for (size_t m = i; m > 0 && want[m].limit < want[m - 1].limit; m--) {
            named_limit tmp = want[m];
            want[m] = want[m - 1];
            want[m - 1] = tmp;
        }
    rqthr *t = get(rq);
    lease_job *j = calloc(1, sizeof(*j));
    j->got = calloc(1, sizeof(*j->got));
    if (!j || !j->got)
        abort();
    j->t = t;
    j->owner = owner;
    j->done = done;
    j->want = want;
    j->n_want = k;
    int rc = lease_advance(j);
    if (rc == 1) {
        j->next = t->jobs;
        t->jobs = j;
        return 1;
    }
    if (rc == 0) {
        *out = j->got;
        j->got = NULL;
    } else {
        refused(t, j->want[j->next_idx].name);
    }
    job_free(j);
    return rc;
}

void rqlease_cancel(readyq *rq, void *owner)
{
    if (!rq->thr)
        return;
    for (lease_job *j = rq->thr->jobs; j; j = j->next)
        if (j->owner == owner)
            j->owner = NULL;
}

void rqthr_free(readyq *rq)
{
    rqthr *t = rq->thr;
    if (!t)
        return;
    rq->thr = NULL;
    t->rq = NULL;
    for (lease_job *j = t->jobs; j; j = j->next)
        j->owner = NULL;
    if (t->lease_retry_ev) {
        event_free(t->lease_retry_ev);
        t->lease_retry_ev = NULL;
    }
    if (t->inflight == 0 && !t->jobs)
        thr_free(t);
}
