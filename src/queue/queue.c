/* The queue engine's hub: the per-reactor tables of scheduled and ready
 * queues, start-up (queue_init), shutdown and the process-wide counters.
 * The engine's parts live beside it (see queue_int.h for the map).
 *
 * Ownership: a scheduled queue and a ready queue live on the reactor
 * hash(name) % N and are touched only there. A queued message (qmsg) is
 * owned by exactly one reactor at a time and moves as a pointer through the
 * mailboxes: reception -> scheduled queue owner -> ready queue owner ->
 * (outcome) -> scheduled queue owner again for a retry. Its message struct is
 * resident only while it is being worked on; while it waits on the timer
 * wheel only the qmsg remains (meta and data stay in the spool).
 *
 * Configuration comes from the policy: get_queue_config / get_egress_pool
 * when a scheduled queue is created, get_egress_source /
 * get_egress_path_config when a ready queue is created. Messages arriving
 * while a queue's configuration loads wait on its pending list. A policy
 * error is logged with its file and line and retried a minute later; the
 * messages stay safe in the spool meanwhile.
 *
 * A message leaves the spool only after its final record was handed to the
 * logger (Delivery, Bounce, Expiration).
 *
 * Threads: tables() and queue_reactor_shutdown() run on each reactor for
 * its own queues; the counters are atomics read from any thread. */
#include "queue/queue.h"

#include <stdlib.h>

#include "queue/queue_int.h"

atomic_llong st_scheduled, st_ready, st_in_flight, st_sched_queues, st_ready_queues;
atomic_ullong st_delivered, st_transfail, st_failed, st_expired, st_watchdog;

void queue_get_stats(queue_stats *out)
{
    out->scheduled = atomic_load(&st_scheduled);
    out->ready = atomic_load(&st_ready);
    out->in_flight = atomic_load(&st_in_flight);
    out->delivered = atomic_load(&st_delivered);
    out->transfail = atomic_load(&st_transfail);
    out->failed = atomic_load(&st_failed);
    out->expired = atomic_load(&st_expired);
    out->watchdog_aborted = atomic_load(&st_watchdog);
    out->scheduled_queues = atomic_load(&st_sched_queues);
    out->ready_queues = atomic_load(&st_ready_queues);
}

qtables *tables(void)
{
    reactor *r = reactor_current();
    qtables *t = reactor_get_slot(r, REACTOR_SLOT_QUEUES);
    if (!t) {
        t = calloc(1, sizeof(*t));
        if (!t)
            abort();
        reactor_set_slot(r, REACTOR_SLOT_QUEUES, t);
    }
    return t;
}

qtables *tables_peek(void)
{
    /* read-only visits (inspection, the dashboard, explain) may reach a
     * reactor whose tables are gone (after queue_reactor_shutdown) or were
     * never made (kumod --tsa): they see no queues rather than creating a
     * table that nothing frees */
    static qtables empty;
    qtables *t = reactor_get_slot(reactor_current(), REACTOR_SLOT_QUEUES);
    return t ? t : &empty;
}

static void qlist_free_all(qlist *l, bool timers)
{
    while (l->count) {
        qmsg *q = qlist_pop(l);
        if (timers && wheel_entry_armed(&q->timer))
            reactor_timer_cancel(reactor_current(), &q->timer);
        qmsg_free(q);
    }
}

void queue_reactor_shutdown(void)
{
    reactor *r = reactor_current();
    qtables *t = reactor_get_slot(r, REACTOR_SLOT_QUEUES);
    selsrc_reactor_shutdown();
    /* the last reactor down: nothing publishes source selection rates now */
    static atomic_int down;
    bool last = atomic_fetch_add(&down, 1) + 1 == reactor_count();
    if (!t) {
        if (last)
            selsrc_free_all();
        return;
    }
    back_reactor_shutdown(t);
    for (int i = 0; i < TABLE_BUCKETS; i++) {
        while (t->sched[i]) {
            schedq *sq = t->sched[i];
            qlist_free_all(&sq->waiting, true);
            qlist_free_all(&sq->pending, false);
            sched_free(sq);
        }
        while (t->ready[i]) {
            readyq *rq = t->ready[i];
            disp_free_all(rq);
            qlist_free_all(&rq->fifo, false);
            qlist_free_all(&rq->pending, false);
            readyq_free(rq);
        }
    }
    free(t);
    reactor_set_slot(r, REACTOR_SLOT_QUEUES, NULL);
    queues_down = true;
    if (last)
        selsrc_free_all(); /* after this reactor's ready queues unpublished */
}

void queue_init(void)
{
    qmsg_pool_init();
    queue_config_lua_register();
    queue_inject_message_register();
}

void queue_set_protocol_ops(const queue_protocol_ops *ops)
{
    (void)ops;
}
