/* Inspection for the admin API and the metrics: one message by id
 * (inspect-message), a scheduled queue (inspect-sched-q), a ready queue
 * (inspect-ready-q), the ready queues' states and the summary kcli and
 * /metrics read. Each request asks the reactors that own the queues
 * through their mailboxes and answers on the reactor that asked.
 *
 * Threads: the parts run on the owner reactors and only read their
 * queues (a message inspected while it waits is loaded in place and goes
 * back to its lean form). Failures: an unknown id or queue answers 404. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "queue/admin.h"
#include "queue/queue_int.h"

/* ---- inspection --------------------------------------------------------------------------- */

static json_t *qmsg_summary(const qmsg *q)
{
    char hex[SPOOLID_HEX_LEN + 1];
    spoolid_to_hex(&q->id, hex);
    json_t *o = json_object();
    json_object_set_new(o, "id", json_string(hex));
    json_object_set_new(o, "num_attempts", json_integer(q->num_attempts));
    if (q->due_wall_s > 0) {
        time_t due = (time_t)q->due_wall_s;
        struct tm tm;
        gmtime_r(&due, &tm);
        char when[64];
        strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
        json_object_set_new(o, "due", json_string(when));
    } else {
        json_object_set_new(o, "due", json_null());
    }
    return o;
}

struct inspect_one {
    bcast *b;
    json_t *summary;
};

static void inspect_after_load(qmsg *q, int err, void *ud)
{
    struct inspect_one *x = ud;
    bcast *b = x->b;
    json_t *msg = x->summary;
    if (!err && q->m) {
        message *m = q->m;
        json_object_set_new(msg, "sender", json_string(m->sender));
        if (m->n_rcpts == 1) {
            json_object_set_new(msg, "recipient", json_string(m->rcpts[0]));
        } else {
            json_t *a = json_array();
            for (size_t i = 0; i < m->n_rcpts; i++)
                json_array_append_new(a, json_string(m->rcpts[i]));
            json_object_set_new(msg, "recipient", a);
        }
        json_object_set(msg, "meta", m->meta);
        json_object_set_new(msg, "scheduling",
                            m->scheduling ? json_incref(m->scheduling) : json_null());
        if (b->want_body && m->data)
            json_object_set_new(msg, "data", json_stringn(m->data, m->data_len));
        /* a waiting message goes back to its lean form */
        if (q->sq && wheel_entry_armed(&q->timer))
            qmsg_shrink(q);
    }
    pthread_mutex_lock(&b->lock);
    if (!b->acc)
        b->acc = json_object();
    json_t *id = json_object_get(msg, "id");
    json_object_set(b->acc, "id", id);
    json_object_set_new(b->acc, "message", msg);
    pthread_mutex_unlock(&b->lock);
    free(x);
    bcast_part_done(b);
}

static void inspect_msg_on_reactor(void *arg)
{
    bcast *b = arg;
    qtables *t = tables();
    spoolid want;
    spoolid_from_hex(b->id, &want);
    FOREACH_SCHEDQ(t, sq)
    {
        qlist *lists[2] = {&sq->waiting, &sq->pending};
        for (int li = 0; li < 2; li++) {
            for (qmsg *q = lists[li]->head.next; q != &lists[li]->head; q = q->next) {
                if (!spoolid_eq(&q->id, &want))
                    continue;
                struct inspect_one *x = calloc(1, sizeof(*x));
                if (!x)
                    abort();
                x->b = b;
                x->summary = qmsg_summary(q);
                json_object_set_new(x->summary, "queue", json_string(sq->name));
                /* load in place: the qmsg stays in its list */
                qmsg_load(q, b->want_body, inspect_after_load, x, NULL);
                return;
            }
        }
    }
    bcast_part_done(b);
}

static void inspect_msg_finish(bcast *b)
{
    if (!b->acc) {
        b->cb(b->ud, 404, NULL, "message not found in any scheduled queue");
        return;
    }
    json_t *msg = json_object_get(b->acc, "message");
    json_object_del(msg, "id");
    json_object_del(msg, "queue");
    b->cb(b->ud, 200, b->acc, NULL);
}

void queue_admin_inspect_message(const char *id, bool want_body, admin_cb cb, void *ud)
{
    spoolid sid;
    if (!id || spoolid_from_hex(id, &sid) != 0) {
        cb(ud, 400, NULL, "id must be a 32-digit spool id");
        return;
    }
    bcast *b = bcast_new(cb, ud, NULL, inspect_msg_finish);
    b->id = strdup(id);
    b->want_body = want_body;
    bcast_run(b, inspect_msg_on_reactor);
}

static void inspect_sq_on_owner(void *arg)
{
    bcast *b = arg;
    atomic_store(&b->remaining, 1);
    schedq *sq = sched_find(b->id);
    json_t *res = json_object();
    json_object_set_new(res, "queue_name", json_string(b->id));
    json_t *msgs = json_array();
    long n = 0;
    if (sq) {
        for (qmsg *q = sq->waiting.head.next; q != &sq->waiting.head && (b->limit <= 0 || n < b->limit);
             q = q->next, n++)
            json_array_append_new(msgs, qmsg_summary(q));
        json_t *cfg = json_object();
        json_object_set_new(cfg, "retry_interval", json_integer(sq->cfg.retry_interval_s));
        json_object_set_new(cfg, "max_retry_interval",
                            sq->cfg.max_retry_interval_s
                                ? json_integer(sq->cfg.max_retry_interval_s)
                                : json_null());
        json_object_set_new(cfg, "max_age", json_integer(sq->cfg.max_age_s));
        json_object_set_new(cfg, "egress_pool",
                            json_string(sq->cfg.egress_pool ? sq->cfg.egress_pool : "unspecified"));
        json_object_set_new(res, "queue_config", cfg);
        json_object_set_new(res, "num_scheduled", json_integer(sq->waiting.count));
    }
    json_object_set_new(res, "messages", msgs);
    b->acc = res;
    bcast_part_done(b);
}

static void inspect_sq_finish(bcast *b)
{
    if (!json_object_get(b->acc, "queue_config")) {
        json_decref(b->acc);
        b->cb(b->ud, 404, NULL, "no such scheduled queue");
        return;
    }
    b->cb(b->ud, 200, b->acc, NULL);
}

void queue_admin_inspect_sched_q(const char *queue_name, bool want_body, long limit, admin_cb cb,
                                 void *ud)
{
    if (!queue_name || !*queue_name) {
        cb(ud, 400, NULL, "queue_name is required");
        return;
    }
    bcast *b = bcast_new(cb, ud, NULL, inspect_sq_finish);
    b->id = strdup(queue_name);
    b->want_body = want_body;
    b->limit = limit;
    reactor_post(owner_of(queue_name), inspect_sq_on_owner, b);
}

static json_t *readyq_state(readyq *rq)
{
    json_t *o = json_object();
    json_object_set_new(o, "name", json_string(rq->name));
    json_object_set_new(o, "ready_count", json_integer(rq->fifo.count));
    json_object_set_new(o, "connection_count", json_integer(rq->active));
    json_object_set_new(o, "connection_limit", json_integer(rq->cfg.connection_limit));
    json_object_set_new(o, "max_ready", json_integer(rq->cfg.max_ready));
    json_object_set_new(o, "suspended", json_boolean(readyq_suspended(rq)));
    json_object_set_new(o, "watchdog_aborted", json_integer((json_int_t)rq->watchdog_aborted));
    return o;
}

static void inspect_rq_on_owner(void *arg)
{
    bcast *b = arg;
    atomic_store(&b->remaining, 1);
    readyq *rq = readyq_find(b->id);
    b->acc = rq ? readyq_state(rq) : NULL;
    if (rq) {
        json_t *msgs = json_array();
        for (qmsg *q = rq->fifo.head.next; q != &rq->fifo.head; q = q->next)
            json_array_append_new(msgs, qmsg_summary(q));
        json_object_set_new(b->acc, "messages", msgs);
    }
    bcast_part_done(b);
}

static void inspect_rq_finish(bcast *b)
{
    if (!b->acc) {
        b->cb(b->ud, 404, NULL, "no such ready queue");
        return;
    }
    b->cb(b->ud, 200, b->acc, NULL);
}

void queue_admin_inspect_ready_q(const char *queue_name, admin_cb cb, void *ud)
{
    if (!queue_name || !*queue_name) {
        cb(ud, 400, NULL, "queue_name is required");
        return;
    }
    bcast *b = bcast_new(cb, ud, NULL, inspect_rq_finish);
    b->id = strdup(queue_name);
    reactor_post(owner_of(queue_name), inspect_rq_on_owner, b);
}

static void summary_on_reactor(void *arg)
{
    bcast *b = arg;
    qtables *t = tables();
    json_t *sched = json_array(), *ready = json_array();
    FOREACH_SCHEDQ(t, sq)
    {
        json_array_append_new(sched, json_pack("{s:s,s:I}", "name", sq->name, "count",
                                               (json_int_t)(sq->waiting.count + sq->pending.count)));
    }
    for (int i = 0; i < TABLE_BUCKETS; i++)
        for (readyq *rq = t->ready[i]; rq; rq = rq->hnext)
            json_array_append_new(ready, readyq_state(rq));
    pthread_mutex_lock(&b->lock);
    if (!b->acc)
        b->acc = json_pack("{s:[],s:[]}", "scheduled", "ready");
    json_array_extend(json_object_get(b->acc, "scheduled"), sched);
    json_array_extend(json_object_get(b->acc, "ready"), ready);
    pthread_mutex_unlock(&b->lock);
    json_decref(sched);
    json_decref(ready);
    bcast_part_done(b);
}

static void summary_finish(bcast *b)
{
    b->cb(b->ud, 200, b->acc ? b->acc : json_pack("{s:[],s:[]}", "scheduled", "ready"), NULL);
}

void queue_admin_summary(admin_cb cb, void *ud)
{
    bcast *b = bcast_new(cb, ud, NULL, summary_finish);
    bcast_run(b, summary_on_reactor);
}

static void states_finish(bcast *b)
{
    json_t *res = json_object();
    json_t *by = json_object();
    json_t *ready = b->acc ? json_object_get(b->acc, "ready") : NULL;
    size_t i;
    json_t *v;
    json_array_foreach(ready, i, v)
    {
        const char *name = json_string_value(json_object_get(v, "name"));
        json_t *want = json_object_get(b->req ? b->req : NULL, "queues");
        bool include = !json_is_array(want) || json_array_size(want) == 0;
        size_t k;
        json_t *w;
        json_array_foreach(want, k, w) if (json_is_string(w) &&
                                           strcmp(json_string_value(w), name) == 0) include = true;
        if (!include)
            continue;
        json_t *st = json_object();
        if (json_is_true(json_object_get(v, "suspended")))
            json_object_set_new(st, "suspended", json_true());
        json_object_set_new(by, name, st);
    }
    json_object_set_new(res, "states_by_ready_queue", by);
    json_decref(b->acc);
    b->cb(b->ud, 200, res, NULL);
}

void queue_admin_ready_q_states(const json_t *queues, admin_cb cb, void *ud)
{
    json_t *req = json_object();
    if (queues)
        json_object_set(req, "queues", (json_t *)queues);
    bcast *b = bcast_new(cb, ud, req, states_finish);
    json_decref(req);
    bcast_run(b, summary_on_reactor);
}
