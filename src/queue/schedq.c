/* Scheduled queues: one per queue name (campaign:tenant@domain!routing),
 * created on the first message, configured by get_queue_config and
 * get_egress_pool, reaped when empty for reap_interval. A message waits
 * here on the timer wheel until it is due (first attempt, retry with
 * backoff, a delivery window of set_scheduling), expires past max_age, and
 * when due is made ready: it goes to its ready queue
 * (<source>-><site>@<protocol>, the source picked by select_source.c) on
 * that queue's owner, or, for a protocol
 * without ready queues (maildir, null), is delivered from here through the
 * delivery-protocol interface (queue/dispatch.h).
 *
 * Threads: a scheduled queue is touched only on its owner reactor
 * (hash(name) % N); queue_insert() posts from any reactor. Failures: a
 * policy error while configuring is logged and retried a minute later
 * (messages wait on the pending list, safe in the spool); while the spool
 * is unhealthy messages are held as if every source were suspended. */
#include <event2/event.h>
#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/diag.h"
#include "core/duration.h"
#include "core/kerr.h"
#include "log/logs.h"
#include "metrics/lazy_counter.h"
#include "lua/services.h"
#include "net/dns.h"
#include "queue/queue.h"
#include "queue/dispatch.h"
#include "queue/admin.h"
#include "queue/insert_throttle.h"
#include "queue/queue_int.h"
#include "queue/schedule.h"
#include "queue/select_source.h"

static void sched_insert_local(const char *name, qmsg *q);
static void sched_make_ready(schedq *sq, qmsg *q);
static void sched_to_ready(schedq *sq, qmsg *q, const char *source);

static void sched_reap_cb(evutil_socket_t fd, short what, void *arg);
static void sched_load_config(schedq *sq);

schedq *sched_find(const char *name)
{
    qtables *t = tables();
    uint64_t h = name_hash(name) % TABLE_BUCKETS;
    for (schedq *sq = t->sched[h]; sq; sq = sq->hnext)
        if (strcmp(sq->name, name) == 0)
            return sq;
    return NULL;
}

schedq *sched_get(const char *name)
{
    schedq *sq = sched_find(name);
    if (sq)
        return sq;
    qtables *t = tables();
    uint64_t h = name_hash(name) % TABLE_BUCKETS;
    sq = calloc(1, sizeof(*sq));
    if (!sq)
        abort();
    sq->name = strdup(name);
    queue_name_parse(name, &sq->parts);
    qlist_init(&sq->waiting);
    qlist_init(&sq->pending);
    sq->reap_ev = evtimer_new(reactor_base(reactor_current()), sched_reap_cb, sq);
    sq->hnext = t->sched[h];
    t->sched[h] = sq;
    atomic_fetch_add(&st_sched_queues, 1);
    sched_load_config(sq);
    return sq;
}

void sched_free(schedq *sq)
{
    qtables *t = tables();
    uint64_t h = name_hash(sq->name) % TABLE_BUCKETS;
    for (schedq **pp = &t->sched[h]; *pp; pp = &(*pp)->hnext)
        if (*pp == sq) {
            *pp = sq->hnext;
            break;
        }
    if (sq->call)
        klua_call_cancel(sq->call); /* a handler still waiting (shutdown) */
    event_free(sq->reap_ev);
    if (sq->retry_ev)
        event_free(sq->retry_ev);
    queue_config_fini(&sq->cfg);
    if (sq->has_pool)
        egress_pool_fini(&sq->pool);
    queue_name_parts_fini(&sq->parts);
    free(sq->site);
    free(sq->name);
    free(sq);
    atomic_fetch_sub(&st_sched_queues, 1);
}

void sched_arm_reap(schedq *sq)
{
    if (sq->waiting.count || sq->pending.count || sq->busy)
        return;
    int64_t ns = sq->state == CFG_READY ? sq->cfg.reap_interval_ns : 600 * NS_PER_SEC;
    struct timeval tv = {ns / NS_PER_SEC, (ns % NS_PER_SEC) / 1000};
    evtimer_add(sq->reap_ev, &tv);
}

static void sched_reap_cb(evutil_socket_t fd, short what, void *arg)
{
    schedq *sq = arg;
    if (sq->waiting.count || sq->pending.count || sq->busy || sq->state == CFG_LOADING)
        return;
    DDEBUG(QMOD, "queue=%s reaped (empty for reap_interval)", sq->name);
    sched_free(sq);
}

static void sched_site_resolved(const dns_mx *mx, void *ud);

static void sched_config_ready(schedq *sq)
{
    sq->cfg_epoch = klua_config_epoch();
    if (sq->cfg.proto == QPROTO_SMTP && !sq->cfg.mx_list && !sq->site) {
        /* all domains served by the same MX hosts share one ready queue */
        const char *dom = sq->parts.routing_domain ? sq->parts.routing_domain : sq->parts.domain;
        sq->state = CFG_LOADING;
        dns_lookup_mx(dom, sched_site_resolved, sq);
        return;
    }
    sq->state = CFG_READY;
    sq->cfg_loaded_ns = clock_mono_ns();
    while (sq->pending.count) {
        qmsg *q = qlist_pop(&sq->pending);
        sched_place(sq, q);
    }
    sched_arm_reap(sq);
}

static void sched_site_resolved(const dns_mx *mx, void *ud)
{
    schedq *sq = ud;
    const char *dom = sq->parts.routing_domain ? sq->parts.routing_domain : sq->parts.domain;
    free(sq->site);
    /* failures keep the domain as the site; the dispatcher reports them */
    sq->site = strdup(mx->status == DNS_OK && mx->site_name && *mx->site_name ? mx->site_name
                                                                              : dom);
    sched_config_ready(sq);
}

static void sched_retry_cb(evutil_socket_t fd, short what, void *arg)
{
    schedq *sq = arg;
    sched_load_config(sq);
}

static void sched_config_failed(schedq *sq, const char *why)
{
    DERROR(QMOD, "queue=%s cannot configure the queue, will retry in 60s: %s", sq->name, why);
    sq->state = CFG_FAILED;
    if (!sq->retry_ev)
        sq->retry_ev = evtimer_new(reactor_base(reactor_current()), sched_retry_cb, sq);
    struct timeval tv = {60, 0};
    evtimer_add(sq->retry_ev, &tv);
}

static void after_get_egress_pool(klua_call *c, int status, void *ud)
{
    schedq *sq = ud;
    sq->call = NULL;
    if (status != KLUA_OK) {
        sched_config_failed(sq, klua_call_error(c));
        return;
    }
    lua_State *L = klua_call_thread(c);
    if (klua_call_nresults(c) < 1 || lua_type(L, 1) != LUA_TTABLE) {
        char why[300];
        snprintf(why, sizeof(why), "get_egress_pool('%s') returned no pool", sq->cfg.egress_pool);
        sched_config_failed(sq, why);
        return;
    }
    char err[512];
    json_t *j = klua_to_json(L, 1, err, sizeof(err));
    if (!j || egress_pool_from_json(j, &sq->pool, err, sizeof(err)) != 0) {
        json_decref(j);
        sched_config_failed(sq, err);
        return;
    }
    json_decref(j);
    sq->has_pool = true;
    sched_config_ready(sq);
}

static void sched_load_pool(schedq *sq)
{
    klua *vm = klua_current();
    if (!sq->cfg.egress_pool || strcmp(sq->cfg.egress_pool, "unspecified") == 0 ||
        !klua_has_handler(vm, "get_egress_pool")) {
        if (sq->cfg.egress_pool && strcmp(sq->cfg.egress_pool, "unspecified") != 0) {
            char why[300];
            snprintf(why, sizeof(why),
                     "egress_pool '%s' is named but no get_egress_pool handler is registered",
                     sq->cfg.egress_pool);
            sched_config_failed(sq, why);
            return;
        }
        sched_config_ready(sq);
        return;
    }
    klua_call *c;
    lua_State *co = klua_call_begin(vm, "get_egress_pool", &c);
    lua_pushstring(co, sq->cfg.egress_pool);
    sq->call = c;
    klua_call_run(c, 1, after_get_egress_pool, sq);
}

static void after_get_queue_config(klua_call *c, int status, void *ud)
{
    schedq *sq = ud;
    sq->call = NULL;
    if (status != KLUA_OK) {
        sched_config_failed(sq, klua_call_error(c));
        return;
    }
    lua_State *L = klua_call_thread(c);
    queue_config_fini(&sq->cfg);
    if (klua_call_nresults(c) >= 1 && lua_type(L, 1) == LUA_TTABLE) {
        char err[512];
        json_t *j = klua_to_json(L, 1, err, sizeof(err));
        int rc = j ? queue_config_from_json(j, &sq->cfg, err, sizeof(err)) : KERR_PARSE;
        json_decref(j);
        if (rc) {
            sched_config_failed(sq, err);
            return;
        }
    } else {
        queue_config_defaults(&sq->cfg);
    }
    sched_load_pool(sq);
}

static void sched_load_config(schedq *sq)
{
    sq->state = CFG_LOADING;
    free(sq->site);
    sq->site = NULL;
    queue_config_fini(&sq->cfg);
    queue_config_defaults(&sq->cfg);
    if (strcmp(sq->name, DEFERRED_QUEUE) == 0) {
        /* hard-coded: one minute base, the product's backoff for a week */
        sq->cfg.proto = QPROTO_DEFERRED_INJECT;
        sq->cfg.retry_interval_s = 60;
        sched_config_ready(sq);
        return;
    }
    if (strcmp(sq->name, "null") == 0) {
        sq->cfg.proto = QPROTO_NULL;
        sched_config_ready(sq);
        return;
    }
    klua *vm = klua_current();
    if (!klua_has_handler(vm, "get_queue_config")) {
        sched_load_pool(sq);
        return;
    }
    klua_call *c;
    lua_State *co = klua_call_begin(vm, "get_queue_config", &c);
    lua_pushstring(co, sq->parts.domain ? sq->parts.domain : "");
    if (sq->parts.tenant)
        lua_pushstring(co, sq->parts.tenant);
    else
        lua_pushnil(co);
    if (sq->parts.campaign)
        lua_pushstring(co, sq->parts.campaign);
    else
        lua_pushnil(co);
    if (sq->parts.routing_domain)
        lua_pushstring(co, sq->parts.routing_domain);
    else
        lua_pushnil(co);
    sq->call = c;
    klua_call_run(c, 4, after_get_queue_config, sq);
}

/* ---- placing a message in its scheduled queue ---------------------------------------------------- */

const char *sched_site(const schedq *sq, char *sbuf, size_t len)
{
    const char *site = sq->parts.routing_domain ? sq->parts.routing_domain : sq->parts.domain;
    if (sq->cfg.proto == QPROTO_SMTP && sq->site)
        site = sq->site;
    if (sq->cfg.proto == QPROTO_SMTP && sq->cfg.mx_list && !sq->site) {
        size_t o = (size_t)snprintf(sbuf, len, "mx_list:");
        size_t i;
        json_t *e;
        json_array_foreach(sq->cfg.mx_list, i, e) {
            const char *h = json_is_string(e) ? json_string_value(e)
                                              : json_string_value(json_object_get(e, "addr"));
            if (o < len)
                o += (size_t)snprintf(sbuf + o, len - o, "%s%s", i ? "," : "", h);
        }
        site = sbuf;
    }
    if (sq->cfg.proto == QPROTO_DEFERRED_INJECT)
        site = DEFERRED_QUEUE;
    return site;
}

void sched_release(schedq *sq, qmsg *q)
{
    atomic_fetch_sub(&st_scheduled, 1);
    qmsg_add_reason(q, R_DUE_TIME_REACHED);
    sched_make_ready(sq, q);
}

static void sched_timer_fired(wheel_entry *e)
{
    qmsg *q = container_of(e, qmsg, timer);
    schedq *sq = q->sq;
    qlist_del(&sq->waiting, q);
    atomic_fetch_sub(&st_scheduled, 1);
    qmsg_add_reason(q, R_DUE_TIME_REACHED);
    sched_make_ready(sq, q);
    sched_arm_reap(sq);
}

backoff_params sched_backoff(const schedq *sq)
{
    backoff_params p = {sq->cfg.retry_interval_s, sq->cfg.max_retry_interval_s,
                        sq->cfg.max_age_s};
    return p;
}

void expire_message(qmsg *q, const char *queue, const char *content, const char *pool,
                    const char *provider)
{
    rec_ctx x = {.queue = queue, .site = "", .pool = pool, .provider = provider};
    disp_response r = {551, 5, 4, 7, content, NULL};
    atomic_fetch_add(&st_expired, 1);
    if (q->m)
        qmsg_log(LOGREC_EXPIRATION, q->m, q->num_attempts, &x, &r);
    qmsg_forget(q);
    qmsg_free(q);
}

struct expire_load {
    char *queue;
    char *content;
    char *pool;
};

static void expire_load_free(void *ud)
{
    struct expire_load *x = ud;
    free(x->queue);
    free(x->content);
    free(x->pool);
    free(x);
}

static void expire_after_load(qmsg *q, int err, void *ud)
{
    struct expire_load *x = ud;
    expire_message(q, x->queue, x->content, x->pool, NULL);
    expire_load_free(x);
}

/* Expires a message, loading its meta first when it is not resident. */
static void expire_loading(schedq *sq, qmsg *q, const char *content)
{
    struct expire_load *x = calloc(1, sizeof(*x));
    if (!x)
        abort();
    x->queue = strdup(sq->name);
    x->content = strdup(content);
    x->pool = sq->cfg.egress_pool ? strdup(sq->cfg.egress_pool) : NULL;
    qmsg_load(q, logs_records_want_data(), expire_after_load, x, expire_load_free);
}

static void log_delayed(schedq *sq, qmsg *q, int64_t delay_s)
{
    if (!q->m)
        return;
    if (qmsg_has_reason(q, R_READYQ_SUSPENDED)) {
        /* As KumoMTA: a message drained from a suspended ready queue finds
         * no eligible source for its path, which is a transient failure */
        const char *pool = sq->cfg.egress_pool ? sq->cfg.egress_pool : "unspecified";
        char content[600];
        snprintf(content, sizeof(content),
                 "KumoMTA internal: no sources for %s pool=`%s` are eligible for selection at "
                 "this time",
                 sq->name, pool);
        rec_ctx x = {.queue = sq->name, .site = "", .pool = pool};
        disp_response r = {451, 4, 4, 4, content, NULL};
        qmsg_log(LOGREC_TRANSIENT_FAILURE, q->m, q->num_attempts, &x, &r);
        return;
    }
    char ctx[256] = "";
    size_t o = 0;
    for (int i = 0; i < q->n_reasons; i++)
        o += (size_t)snprintf(ctx + o, sizeof(ctx) - o, "%s%s", i ? ", " : "",
                              reason_names[q->reasons[i]]);
    char dur[64];
    duration_format(delay_s * NS_PER_SEC, dur, sizeof(dur));
    time_t due = (time_t)(now_s() + delay_s);
    struct tm tm;
    gmtime_r(&due, &tm);
    char when[64];
    strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
    char content[512];
    snprintf(content, sizeof(content), "Context: %s. Next due in %s at %s", ctx, dur, when);
    rec_ctx x = {.queue = sq->name, .site = "", .pool = sq->cfg.egress_pool};
    disp_response r = {400, 0, 0, 0, content, NULL};
    qmsg_log(LOGREC_DELAYED, q->m, q->num_attempts, &x, &r);
}

void sched_place(schedq *sq, qmsg *q)
{
    if (sq->state != CFG_READY) {
        qlist_push(&sq->pending, q);
        return;
    }
    /* refresh_interval (Ttl) or a config epoch change (Epoch) */
    if (sq->cfg.refresh_epoch ? sq->cfg_epoch != klua_config_epoch()
                              : clock_mono_ns() - sq->cfg_loaded_ns > sq->cfg.refresh_interval_ns) {
        qlist_push(&sq->pending, q);
        sched_load_config(sq);
        return;
    }
    evtimer_del(sq->reap_ev);
    q->sq = sq;
    if (admin_intercept(sq, q))
        return;
    backoff_params bp = sched_backoff(sq);
    if (q->enumerated_pending) {
        q->enumerated_pending = false;
        int64_t age = age_s(q);
        q->num_attempts = (uint16_t)backoff_attempts_from_age(&bp, age);
        backoff_result br = backoff_due_from_age(&bp, q->num_attempts, age);
        if (br.expire) {
            char dur[64], max[64], content[256];
            duration_format(age * NS_PER_SEC, dur, sizeof(dur));
            duration_format(sq->cfg.max_age_s * NS_PER_SEC, max, sizeof(max));
            snprintf(content, sizeof(content),
                     "Next delivery time would be %s after creation, which exceeds max_age=%s",
                     dur, max);
            expire_loading(sq, q, content);
            return;
        }
        q->due_wall_s = br.delay_s > 0 ? now_s() + br.delay_s : 0;
    }
    int64_t now = now_s();
    if (q->m && q->m->scheduling) {
        /* set_scheduling: a deferred first attempt, then the delivery window */
        int64_t first;
        const char *fa = json_string_value(json_object_get(q->m->scheduling, "first_attempt"));
        if (fa && q->num_attempts == 0 && sched_parse_rfc3339(fa, &first) == 0 &&
            first > q->due_wall_s) {
            q->due_wall_s = first;
            qmsg_add_reason(q, R_SCHEDULED_FOR_LATER);
        }
        int64_t base = q->due_wall_s > now ? q->due_wall_s : now;
        int64_t adj = sched_window_adjust(q->m->scheduling, base);
        if (adj > base)
            q->due_wall_s = adj;
    }
    if (q->due_wall_s > now) {
        int64_t delay = q->due_wall_s - now;
        bool quiet = (q->n_reasons == 1 && q->reasons[0] == R_ENUMERATED) ||
                     qmsg_has_reason(q, R_LOGGED_TRANSIENT_FAILURE);
        if (!quiet)
            log_delayed(sq, q, delay);
        wheel_entry_init(&q->timer, sched_timer_fired);
        qlist_push(&sq->waiting, q);
        atomic_fetch_add(&st_scheduled, 1);
        reactor_timer_arm(reactor_current(), &q->timer, clock_mono_ms() + delay * 1000);
        qmsg_shrink(q);
        return;
    }
    sched_make_ready(sq, q);
}

struct insert_job {
    qmsg *q;
    char name[];
};

static void insert_on_owner(void *arg)
{
    struct insert_job *j = arg;
    if (queues_down)
        qmsg_free(j->q);
    else
        sched_insert_local(j->name, j->q);
    free(j);
}

static void sched_insert_remote(const char *name, qmsg *q)
{
    size_t n = strlen(name);
    struct insert_job *j = malloc(sizeof(*j) + n + 1);
    if (!j)
        abort();
    j->q = q;
    memcpy(j->name, name, n + 1);
    reactor_post(owner_of(name), insert_on_owner, j);
}

static void sched_insert_local(const char *name, qmsg *q)
{
    schedq *sq = sched_get(name);
    bool enumerated = q->enumerated_pending;
    q->sq = sq;
    sched_place(sq, q);
    if (enumerated)
        recovery_note_placed(1);
}

int queue_insert(message *m, const char *queue, const char *reason)
{
    if (m->trace) /* sampled (msgtrace.h): the queue the policy chose */
        msgtrace_add(m->trace, "queue", NULL, "into scheduled queue %s (%s)", queue, reason);
    qmsg *q = qmsg_new(m);
    int r = reason_parse(reason);
    qmsg_add_reason(q, r);
    if (r == R_ENUMERATED)
        q->enumerated_pending = true;
    q->due_wall_s = m->due_ns / NS_PER_SEC;
    sched_insert_remote(queue, q);
    return 0;
}

/* ---- making a message ready ---------------------------------------------------------------------- */

static const char *proto_suffix(const queue_config *c, char *buf, size_t len)
{
    switch (c->proto) {
    case QPROTO_SMTP:
        return "smtp_client";
    case QPROTO_LUA:
        snprintf(buf, len, "lua:%s", c->constructor);
        return buf;
    case QPROTO_DEFERRED_INJECT:
        return "defersmtpinject";
    case QPROTO_MAILDIR:
        snprintf(buf, len, "maildir:%s", c->maildir_path);
        return buf;
    case QPROTO_NULL:
        return "null";
    }
    return "unknown";
}

const char *queue_proto_suffix(const queue_config *c, char *buf, size_t len)
{
    return proto_suffix(c, buf, len);
}

/* A direct protocol (maildir) delivers from here, without a ready queue or
 * egress source, as KumoMTA's scheduled queue does: the records have no
 * site, pool, source or peer. Failed recipients are retried about a minute
 * later, without the backoff. */
static void direct_after_load(qmsg *q, int err, void *ud)
{
    schedq *sq = ud;
    const disp_driver *drv = dispatch_driver(sq->cfg.proto);
    char session[37];
    spoolid u; /* a v1 UUID without libuuid: no uuidd round trip */
    spoolid_new(&u);
    spoolid_to_uuid_str(&u, session);
    rec_ctx x = {.queue = sq->name,
                 .site = "",
                 .proto = drv->delivery_protocol,
                 .session_id = session,
                 .provider = sq->cfg.provider_name};
    sq->busy--; /* the load held a reference on the queue */
    if (!q->m) {
        /* not even the meta: nothing to log against; try again later */
        atomic_fetch_add(&st_transfail, 1);
        q->due_wall_s = now_s() + 60;
        sched_place(sq, q);
        return;
    }
    char why[512];
    if (err)
        snprintf(why, sizeof(why), "KumoMTA internal: error in deliver_message: %s",
                 kerr_str(err));
    disp_direct j = {.queue = sq->name, .cfg = &sq->cfg, .m = q->m, .failure = err ? why : NULL};
    message *m = q->m;
    disp_direct_result *res = calloc(1, sizeof(*res));
    bool *failed = calloc(m->n_rcpts ? m->n_rcpts : 1, sizeof(bool));
    if (!res || !failed)
        abort();
    res->rcpt_failed = failed;
    drv->deliver_direct(&j, res);
    if (res->n_delivered) {
        qmsg_log(LOGREC_DELIVERY, m, q->num_attempts, &x, &res->delivered);
        atomic_fetch_add(&st_delivered, 1);
    }
    if (!res->n_failed) {
        free(failed);
        free(res);
        qmsg_forget_delivered(q);
        qmsg_free(q);
        sched_arm_reap(sq);
        return;
    }
    qmsg_log(LOGREC_TRANSIENT_FAILURE, m, q->num_attempts, &x, &res->failed);
    atomic_fetch_add(&st_transfail, 1);
    if (res->n_delivered) {
        /* only the recipients that failed are tried again */
        const char **keep = calloc(res->n_failed, sizeof(char *));
        if (!keep)
            abort();
        size_t nk = 0;
        for (size_t i = 0; i < m->n_rcpts; i++)
            if (failed[i] && nk < res->n_failed)
                keep[nk++] = m->rcpts[i];
        message_set_recipients(m, keep, nk);
        free(keep);
    }
    q->num_attempts++;
    q->n_reasons = 0;
    requeue(q, sq->name, false, 60, &res->failed, R_LOGGED_TRANSIENT_FAILURE);
    free(failed);
    free(res);
}

struct hold_job {
    char *queue;
    char *reason;
};

static void hold_job_free(void *ud)
{
    struct hold_job *h = ud;
    free(h->queue);
    free(h->reason);
    free(h);
}

static void hold_after_load(qmsg *q, int err, void *ud)
{
    struct hold_job *h = ud;
    if (!err && q->m) {
        char content[400];
        snprintf(content, sizeof(content),
                 "KumoMTA internal: delivery suspended: spool unhealthy: %s", h->reason);
        rec_ctx x = {.queue = h->queue, .site = h->queue};
        disp_response r = {451, 4, 4, 4, content, NULL};
        qmsg_log(LOGREC_DELAYED, q->m, q->num_attempts, &x, &r);
    }
    qmsg_add_reason(q, R_SPOOL_UNHEALTHY);
    qmsg_add_reason(q, R_LOGGED_TRANSIENT_FAILURE);
    /* back on its normal retry schedule: no stampede when health returns */
    requeue_post(q, h->queue, true, false, -1);
    hold_job_free(h);
}

/* seed 001: while the spool is unhealthy, hold messages as if every source
 * were suspended. Returns true when it took q. */
static bool hold_for_spool(schedq *sq, qmsg *q)
{
    char why[256];
    if (!services_spool() || !services_suspend_delivery_when_unhealthy() ||
        services_spool_healthy(why, sizeof(why)))
        return false;
    struct hold_job *h = calloc(1, sizeof(*h));
    if (!h)
        abort();
    h->queue = strdup(sq->name);
    h->reason = strdup(why);
    qmsg_load(q, logs_records_want_data(), hold_after_load, h, hold_job_free);
    return true;
}

/* delayed_due_to_message_rate_throttle{queue}: the scheduled queue's
 * max_message_rate sent a message back to wait (metrics page: "moved the
 * message back to its corresponding scheduled queue ... as well as logging
 * a Delayed log record"). */
static metrics_lazy_counter rate_delayed = METRICS_LAZY_COUNTER(
    "delayed_due_to_message_rate_throttle",
    "Number of times a message was delayed due to max_message_rate", "queue");

static void rate_after_load(qmsg *q, int err, void *ud)
{
    (void)err; /* without its meta it waits all the same, unlogged */
    schedq *sq = ud;
    sq->busy--;
    sched_place(sq, q);
}

static void sched_make_ready(schedq *sq, qmsg *q)
{
    if (hold_for_spool(sq, q) || admin_intercept(sq, q) || admin_suspended(sq, q) ||
        insert_throttle_hook(sq, q, sched_make_ready))
        return;
    if (sq->cfg.has_max_message_rate) {
        int64_t wait = throttle_take(&sq->rate, &sq->cfg.max_message_rate, clock_wall_ns());
        if (wait > 0) {
            /* no attempt, no jitter: due when the throttle opens */
            qmsg_add_reason(q, R_MESSAGE_RATE_THROTTLE);
            q->due_wall_s = now_s() + (wait + NS_PER_SEC - 1) / NS_PER_SEC;
            metrics_lazy_counter_inc(&rate_delayed, sq->name);
            if (q->m) {
                sched_place(sq, q);
                return;
            }
            /* the Delayed record needs the meta */
            sq->busy++;
            qmsg_load(q, false, rate_after_load, sq, NULL);
            return;
        }
    }
    if (sq->cfg.proto == QPROTO_NULL) {
        qmsg_forget(q);
        qmsg_free(q);
        return;
    }
    const disp_driver *direct = dispatch_driver(sq->cfg.proto);
    if (direct && direct->deliver_direct) {
        sq->busy++; /* keeps the queue from being reaped during the load */
        qmsg_load(q, true, direct_after_load, sq, NULL);
        return;
    }
    /* the egress source: weighted round robin over the pool, skipping the
     * sources whose selection rates are exhausted (select_source.c) */
    bool usable = !sq->has_pool;
    for (size_t i = 0; sq->has_pool && i < sq->pool.n && !usable; i++)
        usable = sq->pool.entries[i].weight > 0;
    if (!usable) {
        DWARN(QMOD, "queue=%s egress pool %s has no usable source (all weights 0)", sq->name,
              sq->pool.name);
        q->due_wall_s = now_s() + 60;
        qmsg_add_reason(q, R_FAILED_INSERT_READY);
        sched_place(sq, q);
        return;
    }
    selsrc_pick(sq, q, sched_to_ready);
}

static void sched_to_ready(schedq *sq, qmsg *q, const char *source)
{
    char sbuf[4200];
    const char *site = sched_site(sq, sbuf, sizeof(sbuf));
    char pbuf[4200];
    const char *suffix = proto_suffix(&sq->cfg, pbuf, sizeof(pbuf));
    char *rq = NULL;
    if (asprintf(&rq, "%s->%s@%s", source, site, suffix) < 0)
        abort();
    readyq_insert_remote(rq, sq, q);
    free(rq);
}
