/* Requeue: a message goes back to a scheduled queue after an attempt
 * (backoff with jitter, or expiry past max_age or the expires of
 * set_scheduling), after the requeue_message event when the policy
 * defines one, or without an attempt (ready queue full, suspended,
 * watchdog). Also the admin rebind (/api/admin/rebind/v1): matching
 * messages get new meta (or the rebind_message event) and are re-inserted
 * into the queue their meta now names.
 *
 * Threads: requeue() runs where the outcome is known (a ready queue's
 * reactor) and posts to the owner of the target scheduled queue, where
 * requeue_on_owner applies the arithmetic; rebind runs on every reactor
 * (a broadcast). Failures: a requeue_message handler error keeps the
 * original queue; a message whose meta cannot be loaded is logged and
 * dropped from memory (it stays in the spool for the next start). */
#include <event2/event.h>
#include <lauxlib.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/diag.h"
#include "core/duration.h"
#include "core/kerr.h"
#include "log/logs.h"
#include "lua/message_lua.h"
#include "queue/admin.h"
#include "queue/dispatch.h"
#include "queue/queue_int.h"

/* ---- requeue --------------------------------------------------------------------------------------- */

struct requeue_job {
    qmsg *q;
    bool increment;
    bool queue_changed;
    bool back_slot; /* holds one of back_to_sched's load slots */
    int64_t delay_s;
    char name[];
};

static void back_slot_release(void);

static void requeue_on_owner_job(struct requeue_job *j);

static void requeue_on_owner(void *arg)
{
    struct requeue_job *j = arg;
    bool slot = j->back_slot;
    requeue_on_owner_job(j); /* frees j */
    if (slot)
        back_slot_release();
}

static void requeue_on_owner_job(struct requeue_job *j)
{
    qmsg *q = j->q;
    if (queues_down) {
        qmsg_free(q);
        free(j);
        return;
    }
    schedq *sq = sched_get(j->name);
    q->sq = sq;
    if (sq->state != CFG_READY) {
        /* apply the arithmetic once the config is known: simplest is to
         * treat it as due after the default retry interval */
        if (j->increment)
            q->num_attempts++;
        q->due_wall_s = now_s() + (j->delay_s >= 0 ? j->delay_s : 60);
        qlist_push(&sq->pending, q);
        free(j);
        return;
    }
    if (j->queue_changed) {
        q->num_attempts++;
        q->due_wall_s = 0;
    } else if (j->increment) {
        backoff_params bp = sched_backoff(sq);
        int64_t age = age_s(q);
        int64_t expires_age = -1;
        json_t *sched = q->m ? q->m->scheduling : NULL;
        const char *exp = sched ? json_string_value(json_object_get(sched, "expires")) : NULL;
        if (exp) {
            struct tm tm = {0};
            if (strptime(exp, "%Y-%m-%dT%H:%M:%S", &tm))
                expires_age = (int64_t)timegm(&tm) - spoolid_created_ns(&q->id) / NS_PER_SEC;
        }
        backoff_result br = backoff_on_failure(&bp, q->num_attempts, age, qrand01(), expires_age);
        q->num_attempts++;
        if (br.expire) {
            char dur[64], max[64], content[300];
            duration_format(br.due_age_s * NS_PER_SEC, dur, sizeof(dur));
            duration_format(sq->cfg.max_age_s * NS_PER_SEC, max, sizeof(max));
            if (expires_age >= 0)
                snprintf(content, sizeof(content),
                         "Next delivery time would be at %s which exceeds the expiry time %s "
                         "configured via set_scheduling",
                         dur, exp);
            else
                snprintf(content, sizeof(content),
                         "Next delivery time would be %s after creation, which exceeds "
                         "max_age=%s",
                         dur, max);
            expire_message(q, sq->name, content, sq->cfg.egress_pool, sq->cfg.provider_name);
            free(j);
            sched_arm_reap(sq);
            return;
        }
        q->due_wall_s = now_s() + br.delay_s;
    } else {
        int64_t delay = j->delay_s >= 0 ? j->delay_s : (int64_t)(qrand01() * 60.0);
        if (age_s(q) + delay >= sq->cfg.max_age_s) {
            char dur[64], max[64], content[300];
            duration_format((age_s(q) + delay) * NS_PER_SEC, dur, sizeof(dur));
            duration_format(sq->cfg.max_age_s * NS_PER_SEC, max, sizeof(max));
            snprintf(content, sizeof(content), "Next delivery time %s > %s", dur, max);
            expire_message(q, sq->name, content, sq->cfg.egress_pool, sq->cfg.provider_name);
            free(j);
            return;
        }
        q->due_wall_s = now_s() + delay;
    }
    free(j);
    sched_place(sq, q);
}

static void requeue_post_job(qmsg *q, const char *name, bool increment, bool changed,
                             int64_t delay_s, bool back_slot)
{
    size_t n = strlen(name);
    struct requeue_job *j = malloc(sizeof(*j) + n + 1);
    if (!j)
        abort();
    j->q = q;
    j->increment = increment;
    j->queue_changed = changed;
    j->back_slot = back_slot;
    j->delay_s = delay_s;
    memcpy(j->name, name, n + 1);
    reactor_post(owner_of(name), requeue_on_owner, j);
}

void requeue_post(qmsg *q, const char *name, bool increment, bool changed, int64_t delay_s)
{
    requeue_post_job(q, name, increment, changed, delay_s, false);
}

/* ---- back to the scheduled queue without an attempt ------------------------------------ */

/* A message sent back without an attempt (its ready queue is full, the
 * queue is suspended...) needs its meta: the queue name and the Delayed
 * record come from it. After a restart every enumerated message comes due
 * at once and most of them overflow the ready queue; unbounded, that meant
 * one meta load per message at the same moment, and each loaded message
 * (its Message and jansson meta, a few KB with a tenant's meta) stayed
 * resident until its owner reactor had placed it again: tens of thousands
 * at a time, hundreds of MB at 1,000,000 queued. So at most BACK_LOADS_MAX
 * such messages are loaded at once (process-wide, from the load until the
 * owner has placed and unloaded it); the others wait as bare qmsgs on
 * their reactor's list, which a timer drains as slots free up. */
#define BACK_LOADS_MAX 1024
#define BACK_RETRY_MS 5

static atomic_int back_loads;

static void back_slot_release(void)
{
    atomic_fetch_sub(&back_loads, 1);
}

static void back_after_load(qmsg *q, int err, void *ud)
{
    int64_t delay_s = (int64_t)(intptr_t)ud;
    if (err || !q->m) {
        char hex[SPOOLID_HEX_LEN + 1];
        spoolid_to_hex(&q->id, hex);
        DERROR(QMOD, "id=%s cannot load the message from the spool: %s", hex, kerr_str(err));
        qmsg_free(q);
        back_slot_release();
        return;
    }
    char *name = queue_name_of_message(q->m);
    requeue_post_job(q, name, false, false, delay_s, true);
    free(name);
}

static bool back_take_slot(void)
{
    int n = atomic_load(&back_loads);
    while (n < BACK_LOADS_MAX)
        if (atomic_compare_exchange_weak(&back_loads, &n, n + 1))
            return true;
    return false;
}

static void back_drain_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    qtables *t = arg;
    /* a waiting message keeps its delay in due_wall_s (requeue_on_owner
     * sets the due time from the delay) */
    while (t->back_waiting.count && back_take_slot()) {
        qmsg *q = qlist_pop(&t->back_waiting);
        int64_t delay_s = q->due_wall_s;
        q->due_wall_s = 0;
        qmsg_load(q, logs_records_want_data(), back_after_load, (void *)(intptr_t)delay_s, NULL);
    }
    if (t->back_waiting.count) {
        struct timeval tv = {0, BACK_RETRY_MS * 1000};
        evtimer_add(t->back_ev, &tv);
    }
}

void back_to_sched(qmsg *q, int reason, int64_t delay_s)
{
    qmsg_add_reason(q, reason);
    atomic_fetch_sub(&st_in_flight, 1);
    qtables *t = tables();
    if (!t->back_ev) {
        qlist_init(&t->back_waiting);
        t->back_ev = evtimer_new(reactor_base(reactor_current()), back_drain_cb, t);
        if (!t->back_ev)
            abort();
    }
    if (t->back_waiting.count || !back_take_slot()) {
        q->due_wall_s = delay_s;
        qlist_push(&t->back_waiting, q);
        if (!evtimer_pending(t->back_ev, NULL)) {
            struct timeval tv = {0, BACK_RETRY_MS * 1000};
            evtimer_add(t->back_ev, &tv);
        }
        return;
    }
    /* the queue name lives in the meta: load it when not resident */
    qmsg_load(q, logs_records_want_data(), back_after_load, (void *)(intptr_t)delay_s, NULL);
}

void back_reactor_shutdown(qtables *t)
{
    if (!t->back_ev)
        return;
    while (t->back_waiting.count)
        qmsg_free(qlist_pop(&t->back_waiting));
    event_free(t->back_ev);
    t->back_ev = NULL;
}

struct rq_event {
    qmsg *q;
    char *orig_queue;
    bool increment;
    int64_t delay_s;
    disp_response resp;
    char *content;
};

static void after_requeue_event(klua_call *c, int status, void *ud)
{
    struct rq_event *e = ud;
    qmsg *q = e->q;
    if (status == KLUA_REJECT) {
        char *qname = queue_name_of_message(q->m);
        rec_ctx x = {.queue = qname, .site = ""};
        disp_response r = {klua_call_reject_code(c), 0, 0, 0, klua_call_error(c), NULL};
        qmsg_log(LOGREC_BOUNCE, q->m, q->num_attempts, &x, &r);
        atomic_fetch_add(&st_failed, 1);
        qmsg_forget(q);
        qmsg_free(q);
        free(qname);
    } else {
        if (status == KLUA_ERROR)
            DERROR(QMOD, "requeue_message handler failed; keeping the original queue: %s",
                   klua_call_error(c));
        char *now_queue = status == KLUA_OK ? queue_name_of_message(q->m) : NULL;
        if (now_queue && strcmp(now_queue, e->orig_queue) != 0) {
            if (strcmp(now_queue, "null") == 0) {
                qmsg_forget(q);
                qmsg_free(q);
            } else {
                qmsg_save_if_dirty(q);
                requeue_post(q, now_queue, false, true, 0);
            }
        } else {
            if (status == KLUA_ERROR && q->m)
                json_object_set_new(q->m->meta, "queue", json_string(e->orig_queue));
            requeue_post(q, e->orig_queue, e->increment, false, e->delay_s);
        }
        free(now_queue);
    }
    free(e->orig_queue);
    free(e->content);
    free(e);
}

void requeue(qmsg *q, const char *qname, bool increment, int64_t delay_s,
             const disp_response *resp, int reason)
{
    qmsg_add_reason(q, reason);
    klua *vm = klua_current();
    if (!q->m || !vm || !klua_has_handler(vm, "requeue_message")) {
        requeue_post(q, qname, increment, false, delay_s);
        return;
    }
    struct rq_event *e = calloc(1, sizeof(*e));
    if (!e)
        abort();
    e->q = q;
    e->orig_queue = strdup(qname);
    e->increment = increment;
    e->delay_s = delay_s;
    klua_call *c;
    lua_State *co = klua_call_begin(vm, "requeue_message", &c);
    klua_push_message(co, q->m);
    /* one-line rendition of the response */
    char line[1024];
    if (resp->enh_class)
        snprintf(line, sizeof(line), "%d %d.%d.%d %s", resp->code, resp->enh_class,
                 resp->enh_subject, resp->enh_detail, resp->content ? resp->content : "");
    else
        snprintf(line, sizeof(line), "%d %s", resp->code, resp->content ? resp->content : "");
    lua_pushstring(co, line);
    lua_createtable(co, q->n_reasons, 0);
    for (int i = 0; i < q->n_reasons; i++) {
        lua_pushstring(co, reason_names[q->reasons[i]]);
        lua_rawseti(co, -2, i + 1);
    }
    lua_pushboolean(co, increment);
    if (delay_s >= 0)
        lua_pushinteger(co, delay_s);
    else
        lua_pushnil(co);
    q->m->num_attempts = q->num_attempts; /* before the increment, as documented */
    klua_call_run(c, 5, after_requeue_event, e);
}

/* ---- rebind ------------------------------------------------------------------------------- */

struct rebind_one {
    bcast *b;
    char *from;
};

static void rebind_after_event(klua_call *c, int status, void *ud);

static void rebind_apply_done(qmsg *q, struct rebind_one *r)
{
    bcast *b = r->b;
    char *newq = queue_name_of_message(q->m);
    bool changed = strcmp(newq, r->from) != 0;
    bool flush = json_is_true(json_object_get(b->req, "always_flush"));
    if (changed && !json_is_true(json_object_get(b->req, "suppress_logging"))) {
        char content[700];
        snprintf(content, sizeof(content), "Rebound from %s to %s: %s", r->from, newq,
                 json_string_value(json_object_get(b->req, "reason")));
        rec_ctx x = {.queue = newq, .site = ""};
        disp_response resp = {250, 0, 0, 0, content, NULL};
        qmsg_log(LOGREC_ADMIN_REBIND, q->m, q->num_attempts, &x, &resp);
    }
    qmsg_save_if_dirty(q);
    qmsg_add_reason(q, R_ADMIN_REBIND);
    if (changed || flush) {
        q->due_wall_s = 0;
        requeue_post(q, newq, false, false, 0);
    } else {
        requeue_post(q, newq, false, false, -1);
    }
    free(newq);
    free(r->from);
    free(r);
    bcast_part_done(b);
}

static void rebind_after_event(klua_call *c, int status, void *ud)
{
    qmsg *q = ud;
    struct rebind_one *r = (struct rebind_one *)q->next; /* stashed while out of any list */
    q->next = NULL;
    if (status != KLUA_OK)
        DERROR(QMOD, "rebind_message handler failed: %s", klua_call_error(c));
    rebind_apply_done(q, r);
}

static void rebind_after_load(qmsg *q, int err, void *ud)
{
    struct rebind_one *r = ud;
    if (err || !q->m) {
        qmsg_free(q);
        free(r->from);
        bcast_part_done(r->b);
        free(r);
        return;
    }
    json_t *data = json_object_get(r->b->req, "data");
    if (json_is_true(json_object_get(r->b->req, "trigger_rebind_event")) &&
        klua_has_handler(klua_current(), "rebind_message")) {
        klua_call *c;
        lua_State *co = klua_call_begin(klua_current(), "rebind_message", &c);
        klua_push_message(co, q->m);
        klua_push_json(co, data);
        q->next = (qmsg *)(void *)r;
        klua_call_run(c, 2, rebind_after_event, q);
        return;
    }
    const char *k;
    json_t *v;
    json_object_foreach(data, k, v) {
        json_object_set(q->m->meta, k, v);
        q->m->meta_dirty = true;
    }
    rebind_apply_done(q, r);
}

static void rebind_on_reactor(void *arg)
{
    bcast *b = arg;
    admin_entry *e = b->entry;
    qtables *t = tables();
    /* collect first: rebinding may re-insert into queues of this reactor */
    qmsg *list = NULL;
    long long n_taken = 0;
    FOREACH_SCHEDQ(t, sq)
    {
        if (!admin_matches(e, sq->name, &sq->parts))
            continue;
        qlist *lists[2] = {&sq->waiting, &sq->pending};
        for (int li = 0; li < 2; li++) {
            while (lists[li]->count) {
                qmsg *q = qlist_pop(lists[li]);
                if (li == 0) {
                    reactor_timer_cancel(reactor_current(), &q->timer);
                    atomic_fetch_sub(&st_scheduled, 1);
                }
                q->prev = (qmsg *)(void *)strdup(sq->name);
                q->next = list;
                list = q;
                n_taken++;
            }
        }
        sched_arm_reap(sq);
    }
    pthread_mutex_lock(&b->lock);
    b->count += n_taken;
    pthread_mutex_unlock(&b->lock);
    while (list) {
        qmsg *q = list;
        list = q->next;
        q->next = NULL;
        struct rebind_one *r = calloc(1, sizeof(*r));
        if (!r)
            abort();
        r->b = b;
        r->from = (char *)(void *)q->prev;
        q->prev = NULL;
        atomic_fetch_add(&b->remaining, 1);
        /* the rebind_message event may read and edit the body too
         * (msg:append_header...), as in KumoMTA: load it for the event */
        bool event = json_is_true(json_object_get(b->req, "trigger_rebind_event")) &&
                     klua_has_handler(klua_current(), "rebind_message");
        qmsg_load(q, event, rebind_after_load, r, NULL);
    }
    bcast_part_done(b);
}

static void rebind_finish(bcast *b)
{
    admin_entry_free(b->entry);
    /* KumoMTA answers {}; the count is for the audit line (the HTTP layer
     * takes it out) */
    b->cb(b->ud, 200, json_pack("{s:I}", "kumod_rebound", (json_int_t)b->count), NULL);
}

void queue_admin_rebind(const json_t *req, admin_cb cb, void *ud)
{
    /* KumoMTA's RebindV1Request (unknown fields are ignored); kumod also
     * takes queue_names as the bounce and suspend requests do */
    static const adm_field fields[] = {{"campaign", AF_STRING},
                                       {"tenant", AF_STRING},
                                       {"domain", AF_STRING},
                                       {"routing_domain", AF_STRING},
                                       {"reason", AF_STRING_REQ},
                                       {"suppress_logging", AF_BOOL},
                                       {"data", AF_STRMAP},
                                       {"trigger_rebind_event", AF_BOOL},
                                       {"always_flush", AF_BOOL},
                                       {"queue_names", AF_STRINGS},
                                       {NULL, 0}};
    char err[400];
    if (admin_check_fields(req, fields, false, err, sizeof(err)) != 0) {
        cb(ud, 422, NULL, err);
        return;
    }
    admin_entry *e = calloc(1, sizeof(*e));
    if (!e)
        abort();
    e->kind = ADM_BOUNCE; /* only used for matching */
    e->reason = jstrdup(req, "reason");
    e->domain = jstrdup(req, "domain");
    e->campaign = jstrdup(req, "campaign");
    e->tenant = jstrdup(req, "tenant");
    e->routing_domain = jstrdup(req, "routing_domain");
    json_t *qn = json_object_get(req, "queue_names");
    e->queue_names = json_is_array(qn) ? json_incref(qn) : NULL;
    bcast *b = bcast_new(cb, ud, req, rebind_finish);
    b->entry = e;
    bcast_run(b, rebind_on_reactor);
}
