/* Where a message is right now, for `explain` (see explainq.h).
 *
 * Asks every reactor through its mailbox; each walks its own scheduled
 * queues (waiting and pending lists) and ready queues (fifo and pending)
 * for the id and describes the one that holds it, reading the queue
 * without changing it. The walk is linear in the number of messages a
 * reactor holds: fine for an operator's question, never on a message's
 * path. A message inside a delivery attempt is in no list and reads as
 * not found; the caller says so. */
#include "queue/explainq.h"

#include <stdlib.h>
#include <string.h>

#include "queue/admin.h"
#include "queue/queue_int.h"

typedef struct ex_bcast {
    atomic_int remaining;
    reactor *origin;
    pthread_mutex_t lock;
    spoolid id;
    json_t *found;
    explainq_done_fn done;
    void *ud;
} ex_bcast;

static json_t *describe(const qmsg *q, const char *state, const schedq *sq, const readyq *rq)
{
    json_t *o = json_object();
    json_object_set_new(o, "state", json_string(state));
    json_object_set_new(o, "num_attempts", json_integer(q->num_attempts));
    json_t *reasons = json_array();
    for (int i = 0; i < q->n_reasons; i++)
        if (q->reasons[i] < R__COUNT)
            json_array_append_new(reasons, json_string(reason_names[q->reasons[i]]));
    json_object_set_new(o, "reasons", reasons);
    if (q->due_wall_s > 0)
        json_object_set_new(o, "due_unix", json_integer(q->due_wall_s));
    if (sq) {
        json_object_set_new(o, "queue", json_string(sq->name));
        json_object_set_new(o, "suspended",
                            json_boolean(admin_sched_suspended(sq->name, &sq->parts)));
        json_object_set_new(o, "retry_interval_s", json_integer(sq->cfg.retry_interval_s));
        json_object_set_new(o, "max_retry_interval_s",
                            json_integer(sq->cfg.max_retry_interval_s));
        json_object_set_new(o, "max_age_s", json_integer(sq->cfg.max_age_s));
        json_object_set_new(o, "expires_unix",
                            json_integer(spoolid_created_ns(&q->id) / NS_PER_SEC +
                                         sq->cfg.max_age_s));
    }
    if (rq) {
        json_object_set_new(o, "ready_queue", json_string(rq->name));
        json_object_set_new(o, "suspended", json_boolean(readyq_suspended(rq)));
        json_object_set_new(o, "connections", json_integer(rq->active));
        json_object_set_new(o, "connection_limit", json_integer(rq->cfg.connection_limit));
        json_object_set_new(o, "ready_count", json_integer(rq->fifo.count));
    }
    return o;
}

static const qmsg *find_in(const qlist *l, const spoolid *id)
{
    for (const qmsg *q = l->head.next; q != &l->head; q = q->next)
        if (spoolid_eq(&q->id, id))
            return q;
    return NULL;
}

static void finish_on_origin(void *arg)
{
    ex_bcast *b = arg;
    explainq_done_fn done = b->done;
    void *ud = b->ud;
    json_t *found = b->found;
    pthread_mutex_destroy(&b->lock);
    free(b);
    done(ud, found);
}

static void look_on_reactor(void *arg)
{
    ex_bcast *b = arg;
    json_t *found = NULL;
    if (!queues_down) {
        qtables *t = tables_peek();
        FOREACH_SCHEDQ(t, sq)
        {
            const qmsg *q = find_in(&sq->waiting, &b->id);
            if (!q)
                q = find_in(&sq->pending, &b->id);
            if (q) {
                found = describe(q, "scheduled", sq, NULL);
                break;
            }
        }
        for (int i = 0; i < TABLE_BUCKETS && !found; i++)
            for (readyq *rq = t->ready[i]; rq && !found; rq = rq->hnext) {
                const qmsg *q = find_in(&rq->fifo, &b->id);
                if (!q)
                    q = find_in(&rq->pending, &b->id);
                if (q)
                    found = describe(q, "ready", NULL, rq);
            }
    }
    pthread_mutex_lock(&b->lock);
    if (found && !b->found)
        b->found = found;
    else
        json_decref(found);
    pthread_mutex_unlock(&b->lock);
    if (atomic_fetch_sub(&b->remaining, 1) == 1)
        reactor_post(b->origin, finish_on_origin, b);
}

void queue_explain_live(const char *id_hex, explainq_done_fn done, void *ud)
{
    ex_bcast *b = calloc(1, sizeof(*b));
    if (!b)
        abort();
    if (spoolid_from_hex(id_hex, &b->id) != 0) {
        free(b);
        done(ud, NULL);
        return;
    }
    b->origin = reactor_current();
    b->done = done;
    b->ud = ud;
    pthread_mutex_init(&b->lock, NULL);
    atomic_store(&b->remaining, reactor_count());
    for (int i = 0; i < reactor_count(); i++)
        reactor_post(reactor_get(i), look_on_reactor, b);
}
