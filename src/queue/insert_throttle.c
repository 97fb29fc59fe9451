/* The throttle_insert_ready_queue event (docs/reference/events/
 * throttle_insert_ready_queue.md): when a message is about to move from its
 * scheduled queue into a ready queue and the policy has a handler, the
 * message is loaded (meta only) and the handlers run; one that delays the
 * message (throttle:delay_message_if_throttled(msg) sets its due time)
 * sends it back to its scheduled queue until then, counted in
 * delayed_due_to_throttle_insert_ready{queue}. Otherwise the move goes on.
 *
 * Threads: the scheduled queue's owner reactor (the VM of that reactor
 * runs the handlers, which may wait on a shared throttle). Failures: a
 * handler error is logged and the message moves on undelayed; a message
 * the spool cannot load moves on as well (the ready queue reports it). */
#include "queue/insert_throttle.h"

#include <stdlib.h>

#include "core/diag.h"
#include "lua/klua.h"
#include "lua/message_lua.h"
#include "metrics/lazy_counter.h"

struct ins_job {
    schedq *sq;
    qmsg *q;
    insert_throttle_cont cont;
    int64_t due_before;
};

static metrics_lazy_counter delayed = METRICS_LAZY_COUNTER(
    "delayed_due_to_throttle_insert_ready",
    "number of times a message was delayed due to the throttle_insert_ready_queue event.",
    "queue");

static void after_event(klua_call *c, int status, void *ud)
{
    struct ins_job *j = ud;
    schedq *sq = j->sq;
    qmsg *q = j->q;
    insert_throttle_cont cont = j->cont;
    int64_t due_before = j->due_before;
    free(j);
    if (queues_down) { /* shut down while the handler ran: sq is gone */
        qmsg_free(q);
        return;
    }
    sq->busy--;
    if (status == KLUA_ERROR)
        DERROR(QMOD, "queue=%s throttle_insert_ready_queue handler failed: %s", sq->name,
               klua_call_error(c));
    int64_t due = q->m ? q->m->due_ns : 0;
    int64_t now = clock_wall_ns();
    if (status == KLUA_OK && due > now && due != due_before) {
        q->m->due_ns = due_before; /* the delay is the queue's, not the message's */
        qmsg_add_reason(q, R_THROTTLED_INSERT_READY);
        q->due_wall_s = (due + NS_PER_SEC - 1) / NS_PER_SEC;
        metrics_lazy_counter_inc(&delayed, sq->name);
        sched_place(sq, q);
        return;
    }
    q->insert_checked = true;
    cont(sq, q);
}

static void after_load(qmsg *q, int err, void *ud)
{
    struct ins_job *j = ud;
    j->q = q;
    klua *vm = klua_current();
    if (err || !q->m || !vm) {
        j->sq->busy--;
        q->insert_checked = true;
        insert_throttle_cont cont = j->cont;
        schedq *sq = j->sq;
        free(j);
        cont(sq, q);
        return;
    }
    j->due_before = q->m->due_ns;
    klua_call *c;
    lua_State *co = klua_call_begin(vm, "throttle_insert_ready_queue", &c);
    klua_push_message(co, q->m);
    klua_call_run(c, 1, after_event, j);
}

bool insert_throttle_hook(schedq *sq, qmsg *q, insert_throttle_cont cont)
{
    if (q->insert_checked) {
        q->insert_checked = false; /* the next time it is due, again */
        return false;
    }
    klua *vm = klua_current();
    if (!vm || !klua_has_handler(vm, "throttle_insert_ready_queue"))
        return false;
    struct ins_job *j = calloc(1, sizeof(*j));
    if (!j)
        abort();
    j->sq = sq;
    j->cont = cont;
    sq->busy++; /* the queue stays while the event runs */
    qmsg_load(q, false, after_load, j, free);
    return true;
}
