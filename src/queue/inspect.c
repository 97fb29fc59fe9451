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

#include "core/duration.h"
#include "lua/services.h"
#include "queue/admin.h"
#include "queue/constraints.h"
#include "spool/spool.h"
#include "queue/queue_int.h"

/* ---- inspection --------------------------------------------------------------------------- */

/* A JSON string of possibly invalid UTF-8 (String::from_utf8_lossy):
 * each byte that does not start a well-formed sequence becomes U+FFFD. */
static json_t *lossy_string(const char *p, size_t len)
{
    json_t *j = json_stringn(p, len);
    if (j)
        return j;
    char *out = malloc(len * 3 + 1);
    if (!out)
        return json_null();
    size_t o = 0;
    const unsigned char *u = (const unsigned char *)p;
    for (size_t i = 0; i < len;) {
        int n = u[i] < 0x80             ? 0
                : (u[i] & 0xE0) == 0xC0 ? 1
                : (u[i] & 0xF0) == 0xE0 ? 2
                : (u[i] & 0xF8) == 0xF0 ? 3
                                        : -1;
        bool ok = n >= 0 && i + (size_t)n < len && !(n == 1 && u[i] < 0xC2) && u[i] != 0;
        for (int k = 1; ok && k <= n; k++)
            ok = (u[i + k] & 0xC0) == 0x80;
        if (ok) {
            memcpy(out + o, p + i, (size_t)n + 1);
            o += (size_t)n + 1;
            i += (size_t)n + 1;
        } else {
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i++;
        }
    }
    j = json_stringn(out, o);
    free(out);
    return j ? j : json_null();
}

static void set_time(json_t *o, const char *key, int64_t wall_ns)
{
    char buf[64];
    json_object_set_new(o, key, json_string(admin_format_time(wall_ns, buf, sizeof(buf))));
}

static void set_duration(json_t *o, const char *key, int64_t ns)
{
    char buf[96];
    duration_format(ns, buf, sizeof(buf));
    json_object_set_new(o, key, json_string(buf));
}

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
        if (m->scheduling)
            json_object_set(msg, "scheduling", m->scheduling);
        json_object_set_new(msg, "data",
                            b->want_body && m->data ? lossy_string(m->data, m->data_len)
                                                    : json_null());
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
    qtables *t = tables_peek();
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
    /* MessageInformation: due and num_attempts are optional there
     * (KumoMTA's inspect-message leaves them out); kumod knows them */
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

/* inspect-sched-q: the sample is taken on the owner (ids, due times,
 * attempts), then each message is read from the spool in turn on the
 * reader thread, so nothing of the queue is touched while it loads. */
typedef struct sq_item {
    spoolid id;
    int64_t due_wall_s;
    uint16_t num_attempts;
} sq_item;

typedef struct sq_insp {
    bcast *b;
    sq_item *items;
    size_t n, i;
    message *cur;
} sq_insp;

static void sq_load_next(sq_insp *x);

static void sq_add_current(sq_insp *x, char *data, size_t data_len)
{
    message *m = x->cur;
    sq_item *it = &x->items[x->i];
    json_t *info = json_object();
    json_object_set_new(info, "sender", json_string(m->sender ? m->sender : ""));
    if (m->n_rcpts == 1) {
        json_object_set_new(info, "recipient", json_string(m->rcpts[0]));
    } else {
        json_t *a = json_array();
        for (size_t r = 0; r < m->n_rcpts; r++)
            json_array_append_new(a, json_string(m->rcpts[r]));
        json_object_set_new(info, "recipient", a);
    }
    json_object_set(info, "meta", m->meta ? m->meta : json_object());
    json_object_set_new(info, "data", data ? lossy_string(data, data_len) : json_null());
    if (it->due_wall_s > 0)
        set_time(info, "due", it->due_wall_s * NS_PER_SEC);
    json_object_set_new(info, "num_attempts", json_integer(it->num_attempts));
    if (m->scheduling)
        json_object_set(info, "scheduling", m->scheduling);
    char hex[SPOOLID_HEX_LEN + 1];
    spoolid_to_hex(&it->id, hex);
    json_array_append_new(json_object_get(x->b->acc, "messages"),
                          json_pack("{s:s,s:o}", "id", hex, "message", info));
}

static void sq_on_data(void *ud, int err, char *buf, size_t len)
{
    sq_insp *x = ud;
    if (!err)
        sq_add_current(x, buf ? buf : "", buf ? len : 0);
    free(buf);
    message_unref(x->cur);
    x->cur = NULL;
    x->i++;
    sq_load_next(x);
}

static void sq_on_meta(void *ud, int err, char *buf, size_t len)
{
    sq_insp *x = ud;
    message *m = NULL;
    /* a message gone meanwhile (delivered, bounced) is left out */
    if (!err && buf && message_from_meta_json(&x->items[x->i].id, buf, len, &m) == 0) {
        x->cur = m;
        free(buf);
        if (x->b->want_body) {
            spool_load(services_spool(), &x->items[x->i].id, true, sq_on_data, x);
            return;
        }
        sq_add_current(x, NULL, 0);
        message_unref(m);
        x->cur = NULL;
    } else {
        free(buf);
    }
    x->i++;
    sq_load_next(x);
}

static void sq_load_next(sq_insp *x)
{
    spool *sp = services_spool();
    if (x->i >= x->n || !sp) {
        bcast *b = x->b;
        free(x->items);
        free(x);
        bcast_part_done(b);
        return;
    }
    spool_load(sp, &x->items[x->i].id, false, sq_on_meta, x);
}

static void inspect_sq_on_owner(void *arg)
{
    bcast *b = arg;
    atomic_store(&b->remaining, 1);
    schedq *sq = sched_find(b->id);
    if (!sq) {
        b->acc = NULL;
        bcast_part_done(b);
        return;
    }
    json_t *res = json_object();
    json_object_set_new(res, "queue_name", json_string(b->id));
    json_object_set_new(res, "messages", json_array());
    /* QueueConfig as KumoMTA serializes it: durations in humantime */
    json_t *cfg = json_object();
    set_duration(cfg, "retry_interval", sq->cfg.retry_interval_s * NS_PER_SEC);
    if (sq->cfg.max_retry_interval_s)
        set_duration(cfg, "max_retry_interval", sq->cfg.max_retry_interval_s * NS_PER_SEC);
    else
        json_object_set_new(cfg, "max_retry_interval", json_null());
    set_duration(cfg, "max_age", sq->cfg.max_age_s * NS_PER_SEC);
    json_object_set_new(cfg, "egress_pool",
                        sq->cfg.egress_pool ? json_string(sq->cfg.egress_pool) : json_null());
    set_duration(cfg, "reap_interval", sq->cfg.reap_interval_ns);
    set_duration(cfg, "refresh_interval", sq->cfg.refresh_interval_ns);
    json_object_set_new(cfg, "refresh_strategy",
                        json_string(sq->cfg.refresh_epoch ? "Epoch" : "Ttl"));
    json_object_set_new(cfg, "provider_name",
                        sq->cfg.provider_name ? json_string(sq->cfg.provider_name) : json_null());
    json_object_set_new(res, "queue_config", cfg);
    json_object_set_new(res, "num_scheduled", json_integer(sq->waiting.count + sq->pending.count));
    json_object_set_new(res, "delayed_metric", json_integer(sq->waiting.count));
    int64_t now = clock_wall_ns();
    set_time(res, "now", now);
    set_time(res, "last_changed", now);
    b->acc = res;
    sq_insp *x = calloc(1, sizeof(*x));
    size_t cap = (size_t)(sq->waiting.count + sq->pending.count);
    if (b->limit > 0 && (size_t)b->limit < cap)
        cap = (size_t)b->limit;
    x->items = calloc(cap ? cap : 1, sizeof(*x->items));
    if (!x || !x->items)
        abort();
    x->b = b;
    qlist *lists[2] = {&sq->waiting, &sq->pending};
    for (int li = 0; li < 2; li++)
        for (qmsg *q = lists[li]->head.next; q != &lists[li]->head && x->n < cap; q = q->next) {
            x->items[x->n].id = q->id;
            x->items[x->n].due_wall_s = q->due_wall_s;
            x->items[x->n].num_attempts = q->num_attempts;
            x->n++;
        }
    sq_load_next(x);
}

static void inspect_sq_finish(bcast *b)
{
    if (!b->acc) {
        char msg[600];
        snprintf(msg, sizeof(msg), "no such queue %s", b->id);
        b->cb(b->ud, 404, NULL, msg);
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
    json_object_set_new(o, "delivered", json_integer((json_int_t)rq->n_delivered));
    json_object_set_new(o, "transfail", json_integer((json_int_t)rq->n_transfail));
    json_object_set_new(o, "failed", json_integer((json_int_t)rq->n_failed));
    const char *prov = rq->cfg.provider_name ? rq->cfg.provider_name : rq->qcfg.provider_name;
    json_object_set_new(o, "provider", prov ? json_string(prov) : json_null());
    json_object_set_new(o, "site", json_string(rq->site ? rq->site : ""));
    json_object_set_new(o, "pool",
                        json_string(rq->qcfg.egress_pool ? rq->qcfg.egress_pool : "unspecified"));
    json_object_set_new(o, "source",
                        json_string(rq->source_name ? rq->source_name : "unspecified"));
    return o;
}

static json_t *ceiling(double value, const char *display)
{
    return json_pack("{s:f,s:{s:s},s:s}", "value", value, "source", "kind", "primary", "display",
                     display);
}

static json_t *rate_ceiling(const throttle_spec *t)
{
    char disp[96];
    throttle_display(t, disp, sizeof(disp));
    return ceiling((double)t->limit * (double)NS_PER_SEC / (double)t->period_ns, disp);
}

static json_t *rate_or_null(bool has, const throttle_spec *t)
{
    return has ? rate_ceiling(t) : json_null();
}

/* The egress path config as inspect-ready-q and resolve-egress-path show
 * it (the operator's units for rates). */
json_t *queue_path_config_json(const egress_path_config *c)
{
    json_t *pc = json_object();
    json_t *mr = rate_or_null(c->has_max_message_rate, &c->max_message_rate);
    json_object_set_new(pc, "connection_limit", json_integer(c->connection_limit));
    json_object_set_new(pc, "max_ready", json_integer(c->max_ready));
    json_object_set_new(pc, "max_message_rate",
                        json_is_null(mr) ? json_null()
                                         : json_incref(json_object_get(mr, "display")));
    json_decref(mr);
    json_t *cr = rate_or_null(c->has_max_connection_rate, &c->max_connection_rate);
    json_object_set_new(pc, "max_connection_rate",
                        json_is_null(cr) ? json_null()
                                         : json_incref(json_object_get(cr, "display")));
    json_decref(cr);
    json_object_set_new(pc, "max_deliveries_per_connection",
                        json_integer(c->max_deliveries_per_connection));
    json_object_set_new(pc, "max_recipients_per_batch", json_integer(c->max_recipients_per_batch));
    json_object_set_new(pc, "consecutive_connection_failures_before_delay",
                        json_integer(c->consecutive_connection_failures_before_delay));
    json_object_set_new(pc, "smtp_port", json_integer(c->smtp_port));
    json_object_set_new(pc, "enable_pipelining", json_boolean(c->enable_pipelining));
    json_object_set_new(pc, "enable_rset", json_boolean(c->enable_rset));
    json_object_set_new(pc, "ehlo_domain",
                        c->ehlo_domain ? json_string(c->ehlo_domain) : json_null());
    set_duration(pc, "connect_timeout", c->connect_timeout_ns);
    set_duration(pc, "idle_timeout", c->idle_timeout_ns);
    json_object_set_new(pc, "provider_name",
                        c->provider_name ? json_string(c->provider_name) : json_null());
    return pc;
}

/* EffectiveConstraints (constraints.c: the same computation as
 * kumo.compute_egress_path_config_constraints). */
json_t *queue_path_constraints_json(const egress_path_config *c)
{
    eff_constraints ec;
    constraints_of_path(c, &ec);
    return constraints_to_json(&ec);
}

/* KumoMTA's InspectReadyQV1Response, from what kumod's ready queue holds */
static json_t *readyq_inspect(readyq *rq, bool want_sched)
{
    json_t *o = json_object();
    json_object_set_new(o, "queue_name", json_string(rq->name));
    /* kumod keeps the site, not the MX answer it came from */
    json_object_set_new(o, "mx", json_null());
    json_object_set_new(o, "egress_source",
                        json_string(rq->source_name ? rq->source_name : "unspecified"));
    json_object_set_new(o, "egress_pool",
                        json_string(rq->qcfg.egress_pool ? rq->qcfg.egress_pool : "unspecified"));
    const char *at = strrchr(rq->name, '@');
    json_object_set_new(o, "protocol", json_string(at ? at + 1 : ""));
    json_t *st = json_object();
    json_object_set_new(st, "ready_count", json_integer(rq->fifo.count));
    json_object_set_new(st, "connection_count", json_integer(rq->active));
    json_object_set_new(st, "connection_rate_throttled", json_null());
    json_object_set_new(st, "connection_limited", json_null());
    json_t *susp = readyq_suspension(rq->name);
    if (susp)
        json_object_del(susp, "since");
    json_object_set_new(st, "suspended", susp ? susp : json_null());
    set_duration(st, "watchdog_threshold", watchdog_threshold_ns(rq));
    json_object_set_new(o, "state", st);
    json_object_set_new(o, "path_config", queue_path_config_json(&rq->cfg));
    json_object_set_new(o, "constraints", queue_path_constraints_json(&rq->cfg));
    if (want_sched) {
        /* kumod's ready queue remembers the scheduled queue that made it */
        json_t *names = json_array();
        if (rq->queue_domain) {
            char *qn =
                queue_name_build(rq->campaign, rq->tenant, rq->queue_domain, rq->routing_domain);
            if (qn)
                json_array_append_new(names, json_string(qn));
            free(qn);
        }
        json_object_set_new(o, "scheduled_queue_names", names);
    }
    json_object_set_new(o, "dispatchers", dispatch_describe(rq));
    set_time(o, "now", clock_wall_ns());
    return o;
}

static void inspect_rq_on_owner(void *arg)
{
    bcast *b = arg;
    atomic_store(&b->remaining, 1);
    readyq *rq = readyq_find(b->id);
    b->acc = rq ? readyq_inspect(rq, b->want_body) : NULL;
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

void queue_admin_inspect_ready_q(const char *queue_name, bool include_scheduled_queues, admin_cb cb,
                                 void *ud)
{
    if (!queue_name || !*queue_name) {
        cb(ud, 400, NULL, "queue_name is required");
        return;
    }
    bcast *b = bcast_new(cb, ud, NULL, inspect_rq_finish);
    b->id = strdup(queue_name);
    b->want_body = include_scheduled_queues;
    reactor_post(owner_of(queue_name), inspect_rq_on_owner, b);
}

/* ---- abort-ready-q-conn ------------------------------------------------------------------ */

static void abort_on_owner(void *arg)
{
    bcast *b = arg;
    atomic_store(&b->remaining, 1);
    readyq *rq = readyq_find(b->id);
    const char *session = json_string_value(json_object_get(b->req, "session_id"));
    b->count = !rq ? -1 : dispatch_abort_session(rq, session) == 0 ? 1 : 0;
    bcast_part_done(b);
}

static void abort_finish(bcast *b)
{
    if (b->count < 0)
        b->cb(b->ud, 404, NULL, "no such ready queue");
    else if (b->count == 0)
        b->cb(b->ud, 404, NULL, "no such session in that ready queue");
    else
        b->cb(b->ud, 200, NULL, NULL);
}

void queue_admin_abort_ready_q_conn(const char *queue_name, const char *session_id, admin_cb cb,
                                    void *ud)
{
    json_t *req = json_pack("{s:s}", "session_id", session_id);
    bcast *b = bcast_new(cb, ud, req, abort_finish);
    json_decref(req);
    b->id = strdup(queue_name);
    reactor_post(owner_of(queue_name), abort_on_owner, b);
}

static void summary_on_reactor(void *arg)
{
    bcast *b = arg;
    qtables *t = tables_peek();
    json_t *sched = json_array(), *ready = json_array();
    FOREACH_SCHEDQ(t, sq)
    {
        json_t *o = json_pack("{s:s,s:I}", "name", sq->name, "count",
                              (json_int_t)(sq->waiting.count + sq->pending.count));
        /* what the by-provider metric families account it to */
        char sbuf[4200];
        json_object_set_new(o, "site", json_string(sq->state == CFG_READY
                                                       ? sched_site(sq, sbuf, sizeof(sbuf))
                                                       : ""));
        json_object_set_new(o, "provider", sq->cfg.provider_name
                                               ? json_string(sq->cfg.provider_name)
                                               : json_null());
        json_object_set_new(o, "pool", json_string(sq->cfg.egress_pool ? sq->cfg.egress_pool
                                                                        : "unspecified"));
        json_array_append_new(sched, o);
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
        /* KumoMTA lists a queue only with a state; each is a QueueState
         * {context, since}. kumod's one: an admin suspension. */
        json_t *susp =
            json_is_true(json_object_get(v, "suspended")) ? readyq_suspension(name) : NULL;
        if (!susp)
            continue;
        json_t *st = json_object();
        json_object_set_new(st, "suspended",
                            json_pack("{s:O,s:O}", "context", json_object_get(susp, "reason"),
                                      "since", json_object_get(susp, "since")));
        json_decref(susp);
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
