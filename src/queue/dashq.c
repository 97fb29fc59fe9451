/* The dashboard's snapshot of every queue (see dashq.h).
 *
 * Each reactor fills rows for the queues it owns (they are its own, so no
 * lock is taken on them), appends them under the snapshot's mutex, and the
 * last one posts the result back to the reactor that asked. The oldest
 * message of a scheduled queue is taken from the first messages of its two
 * lists (messages join a list at its tail, so the head holds the longest
 * waiting ones; a requeued old message can sit further back): reading
 * every message would cost a walk over the whole queue each second.
 * Failure: out of memory aborts, as the x-allocators do. */
#include "queue/dashq.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "queue/dispatch.h"
#include "queue/queue_int.h"
#include "core/xalloc.h"

#define OLDEST_SAMPLE 16

typedef struct dash_bcast {
    atomic_int remaining;
    reactor *origin;
    pthread_mutex_t lock;
    dashq_snapshot *snap;
    size_t cap_sched, cap_ready;
    dashq_done_fn done;
    void *ud;
} dash_bcast;

static char *xstrdup0(const char *s)
{
    if (!s)
        return NULL;
    char *d = strdup(s);
    if (!d)
        abort();
    return d;
}

static int64_t oldest_of(const schedq *sq)
{
    int64_t oldest = 0;
    const qlist *lists[2] = {&sq->waiting, &sq->pending};
    for (int li = 0; li < 2; li++) {
        int n = 0;
        for (const qmsg *q = lists[li]->head.next; q != &lists[li]->head && n < OLDEST_SAMPLE;
             q = q->next, n++) {
            int64_t c = spoolid_created_ns(&q->id);
            if (!oldest || c < oldest)
                oldest = c;
        }
    }
    return oldest;
}

static void finish_on_origin(void *arg)
{
    dash_bcast *b = arg;
    dashq_done_fn done = b->done;
    void *ud = b->ud;
    dashq_snapshot *s = b->snap;
    pthread_mutex_destroy(&b->lock);
    free(b);
    done(ud, s);
}

static void fill_on_reactor(void *arg)
{
    dash_bcast *b = arg;
    qtables *t = tables_peek();
    int64_t t0 = clock_mono_ns();
    size_t ns = 0, nr = 0, cs = 64, cr = 64;
    dashq_sched *sched = xrealloc(NULL, cs * sizeof(*sched));
    dashq_ready *ready = xrealloc(NULL, cr * sizeof(*ready));
    if (!queues_down) {
        FOREACH_SCHEDQ(t, sq)
        {
            if (ns == cs)
                sched = xrealloc(sched, (cs *= 2) * sizeof(*sched));
            dashq_sched *o = &sched[ns++];
            char sbuf[4200];
            o->name = xstrdup0(sq->name);
            o->site = xstrdup0(sq->state == CFG_READY ? sched_site(sq, sbuf, sizeof(sbuf)) : "");
            o->provider = xstrdup0(sq->cfg.provider_name);
            o->count = sq->waiting.count + sq->pending.count;
            o->oldest_ns = oldest_of(sq);
            o->suspended = admin_sched_suspended(sq->name, &sq->parts);
        }
        for (int i = 0; i < TABLE_BUCKETS; i++)
            for (readyq *rq = t->ready[i]; rq; rq = rq->hnext) {
                if (nr == cr)
                    ready = xrealloc(ready, (cr *= 2) * sizeof(*ready));
                dashq_ready *o = &ready[nr++];
                memset(o, 0, sizeof(*o));
                o->name = xstrdup0(rq->name);
                o->site = xstrdup0(rq->site ? rq->site : "");
                o->provider = xstrdup0(rq->cfg.provider_name ? rq->cfg.provider_name
                                                             : rq->qcfg.provider_name);
                o->source = xstrdup0(rq->source_name ? rq->source_name : "unspecified");
                o->count = rq->fifo.count;
                o->connections = rq->active;
                o->connection_limit = rq->cfg.connection_limit;
                o->suspended = readyq_suspended(rq);
                dispatch_count_throttled(rq, &o->conn_rate_throttled, &o->msg_rate_throttled);
                o->delivered = rq->n_delivered;
                o->transfail = rq->n_transfail;
                o->failed = rq->n_failed;
                if (rq->last_resp[0]) {
                    o->last_response = xstrdup0(rq->last_resp);
                    o->last_code = rq->last_resp_code;
                    o->last_category = rq->last_resp_category;
                    o->last_response_ns = rq->last_resp_ns;
                }
            }
    }
    int64_t cost = clock_mono_ns() - t0;
    pthread_mutex_lock(&b->lock);
    dashq_snapshot *s = b->snap;
    if (s->n_sched + ns > b->cap_sched) {
        b->cap_sched = s->n_sched + ns;
        s->sched = xrealloc(s->sched, b->cap_sched * sizeof(*s->sched));
    }
    if (ns)
        memcpy(s->sched + s->n_sched, sched, ns * sizeof(*sched));
    s->n_sched += ns;
    if (s->n_ready + nr > b->cap_ready) {
        b->cap_ready = s->n_ready + nr;
        s->ready = xrealloc(s->ready, b->cap_ready * sizeof(*s->ready));
    }
    if (nr)
        memcpy(s->ready + s->n_ready, ready, nr * sizeof(*ready));
    s->n_ready += nr;
    s->cost_ns += cost;
    pthread_mutex_unlock(&b->lock);
    free(sched);
    free(ready);
    if (atomic_fetch_sub(&b->remaining, 1) == 1)
        reactor_post(b->origin, finish_on_origin, b);
}

void queue_dash_snapshot(dashq_done_fn done, void *ud)
{
    dash_bcast *b = calloc(1, sizeof(*b));
    dashq_snapshot *s = calloc(1, sizeof(*s));
    if (!b || !s)
        abort();
    s->taken_ns = clock_wall_ns();
    b->snap = s;
    b->origin = reactor_current();
    b->done = done;
    b->ud = ud;
    pthread_mutex_init(&b->lock, NULL);
    atomic_store(&b->remaining, reactor_count());
    for (int i = 0; i < reactor_count(); i++)
        reactor_post(reactor_get(i), fill_on_reactor, b);
}

void dashq_snapshot_free(dashq_snapshot *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->n_sched; i++) {
        free(s->sched[i].name);
        free(s->sched[i].site);
        free(s->sched[i].provider);
    }
    for (size_t i = 0; i < s->n_ready; i++) {
        free(s->ready[i].name);
        free(s->ready[i].site);
        free(s->ready[i].provider);
        free(s->ready[i].source);
        free(s->ready[i].last_response);
    }
    free(s->sched);
    free(s->ready);
    free(s);
}
