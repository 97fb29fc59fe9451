/* Ready queues: one per <source>-><site>@<protocol>, created on its owner
 * reactor when the first message of that path is made ready, configured by
 * get_egress_source and get_egress_path_config (refreshed by
 * refresh_interval or a config epoch), holding at most max_ready messages
 * in its fifo for the dispatchers (dispatch.c). A message that does not fit
 * goes back to its scheduled queue without an attempt. Reaped when empty
 * and idle for a minute.
 *
 * Threads: a ready queue is touched only on its owner reactor; messages
 * arrive through its mailbox (readyq_insert_remote). Failures: a policy
 * error while configuring is logged and retried a minute later; messages
 * wait on the pending list meanwhile. */
#include <event2/event.h>
#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/diag.h"
#include "core/kerr.h"
#include "queue/queue_int.h"
#include "queue/throttle_shared.h"

static void readyq_reap_cb(evutil_socket_t fd, short what, void *arg);
static void readyq_load_config(readyq *rq);

readyq *readyq_find(const char *name)
{
    qtables *t = tables();
    uint64_t h = name_hash(name) % TABLE_BUCKETS;
    for (readyq *rq = t->ready[h]; rq; rq = rq->hnext)
        if (strcmp(rq->name, name) == 0)
            return rq;
    return NULL;
}

struct ready_job {
    qmsg *q;
    char *name;
    char *source;
    char *site;
    char *domain, *tenant, *campaign, *routing_domain;
    queue_config proto_cfg;
    char *sched_name;
};

static void ready_job_free(struct ready_job *j)
{
    free(j->name);
    free(j->source);
    free(j->site);
    free(j->domain);
    free(j->tenant);
    free(j->campaign);
    free(j->routing_domain);
    free(j->sched_name);
    queue_config_fini(&j->proto_cfg);
    free(j);
}

static char *dupn(const char *s)
{
    return s ? strdup(s) : NULL;
}

static readyq *readyq_create(struct ready_job *j)
{
    qtables *t = tables();
    uint64_t h = name_hash(j->name) % TABLE_BUCKETS;
    readyq *rq = calloc(1, sizeof(*rq));
    if (!rq)
        abort();
    rq->name = strdup(j->name);
    rq->source_name = strdup(j->source);
    rq->site = strdup(j->site);
    rq->queue_domain = dupn(j->domain);
    rq->tenant = dupn(j->tenant);
    rq->campaign = dupn(j->campaign);
    rq->routing_domain = dupn(j->routing_domain);
    rq->proto = j->proto_cfg.proto;
    /* take the protocol config */
    rq->qcfg = j->proto_cfg;
    memset(&j->proto_cfg, 0, sizeof(j->proto_cfg));
    egress_path_defaults(&rq->cfg);
    qlist_init(&rq->fifo);
    qlist_init(&rq->pending);
    rq->reap_ev = evtimer_new(reactor_base(reactor_current()), readyq_reap_cb, rq);
    rq->hnext = t->ready[h];
    t->ready[h] = rq;
    atomic_fetch_add(&st_ready_queues, 1);
    readyq_load_config(rq);
    return rq;
}

void readyq_free(readyq *rq)
{
    qtables *t = tables();
    uint64_t h = name_hash(rq->name) % TABLE_BUCKETS;
    for (readyq **pp = &t->ready[h]; *pp; pp = &(*pp)->hnext)
        if (*pp == rq) {
            *pp = rq->hnext;
            break;
        }
    if (rq->call)
        klua_call_cancel(rq->call); /* a handler still waiting (shutdown) */
    event_free(rq->reap_ev);
    if (rq->retry_ev)
        event_free(rq->retry_ev);
    if (rq->watchdog_ev)
        event_free(rq->watchdog_ev);
    rqthr_free(rq);
    selsrc_unpublish(rq->name);
    egress_path_fini(&rq->cfg);
    egress_source_fini(&rq->source);
    queue_config_fini(&rq->qcfg);
    free(rq->name);
    free(rq->source_name);
    free(rq->site);
    free(rq->queue_domain);
    free(rq->tenant);
    free(rq->campaign);
    free(rq->routing_domain);
    free(rq);
    atomic_fetch_sub(&st_ready_queues, 1);
}

static void readyq_reap_cb(evutil_socket_t fd, short what, void *arg)
{
    readyq *rq = arg;
    if (rq->fifo.count || rq->pending.count || rq->active || rq->state == CFG_LOADING)
        return;
    readyq_free(rq);
}

void readyq_arm_reap(readyq *rq)
{
    if (rq->fifo.count || rq->pending.count || rq->active)
        return;
    struct timeval tv = {60, 0};
    evtimer_add(rq->reap_ev, &tv);
}

/* Sends a message back to its scheduled queue without an attempt (full,
 * suspended...): delay_s < 0 means a random 0-60 s. */

static void readyq_accept(readyq *rq, qmsg *q)
{
    if (rq->active == 0 && rq->state == CFG_READY &&
        (rq->cfg.refresh_epoch ? rq->cfg_epoch != klua_config_epoch()
                               : clock_mono_ns() - rq->cfg_loaded_ns > rq->cfg.refresh_interval_ns)) {
        qlist_push(&rq->pending, q);
        readyq_load_config(rq);
        return;
    }
    if (rq->fifo.count >= rq->cfg.max_ready) {
        back_to_sched(q, R_READYQ_FULL, -1);
        return;
    }
    evtimer_del(rq->reap_ev);
    qlist_push(&rq->fifo, q);
    atomic_fetch_add(&st_ready, 1);
    readyq_maintain(rq);
}

static void readyq_config_ready(readyq *rq)
{
    rq->state = CFG_READY;
    rq->cfg_loaded_ns = clock_mono_ns();
    rq->cfg_epoch = klua_config_epoch();
    selsrc_publish(rq->name, &rq->cfg);
    while (rq->pending.count)
        readyq_accept(rq, qlist_pop(&rq->pending));
    readyq_arm_reap(rq);
}

static void readyq_retry_cb(evutil_socket_t fd, short what, void *arg)
{
    readyq_load_config(arg);
}

static void readyq_config_failed(readyq *rq, const char *why)
{
    DERROR(QMOD, "ready_queue=%s cannot configure the egress path, will retry in 60s: %s",
           rq->name, why);
    rq->state = CFG_FAILED;
    selsrc_publish(rq->name, NULL); /* the sources' selection goes on meanwhile */
    if (!rq->retry_ev)
        rq->retry_ev = evtimer_new(reactor_base(reactor_current()), readyq_retry_cb, rq);
    struct timeval tv = {60, 0};
    evtimer_add(rq->retry_ev, &tv);
}

static void after_get_egress_path_config(klua_call *c, int status, void *ud)
{
    readyq *rq = ud;
    rq->call = NULL;
    if (status != KLUA_OK) {
        readyq_config_failed(rq, klua_call_error(c));
        return;
    }
    lua_State *L = klua_call_thread(c);
    egress_path_fini(&rq->cfg);
    if (klua_call_nresults(c) >= 1 && lua_type(L, 1) == LUA_TTABLE) {
        char err[512];
        json_t *j = klua_to_json(L, 1, err, sizeof(err));
        int rc = j ? egress_path_from_json(j, &rq->cfg, err, sizeof(err)) : KERR_PARSE;
        json_decref(j);
        if (rc) {
            egress_path_defaults(&rq->cfg);
            readyq_config_failed(rq, err);
            return;
        }
    } else {
        egress_path_defaults(&rq->cfg);
    }
    readyq_config_ready(rq);
}

static void readyq_load_path(readyq *rq)
{
    klua *vm = klua_current();
    if (!klua_has_handler(vm, "get_egress_path_config")) {
        readyq_config_ready(rq);
        return;
    }
    klua_call *c;
    lua_State *co = klua_call_begin(vm, "get_egress_path_config", &c);
    const char *rd = rq->routing_domain ? rq->routing_domain
                                        : (rq->queue_domain ? rq->queue_domain : rq->site);
    lua_pushstring(co, rd);
    lua_pushstring(co, rq->source_name);
    lua_pushstring(co, rq->site);
    rq->call = c;
    klua_call_run(c, 3, after_get_egress_path_config, rq);
}

static void after_get_egress_source(klua_call *c, int status, void *ud)
{
    readyq *rq = ud;
    rq->call = NULL;
    if (status != KLUA_OK) {
        readyq_config_failed(rq, klua_call_error(c));
        return;
    }
    lua_State *L = klua_call_thread(c);
    if (klua_call_nresults(c) < 1 || lua_type(L, 1) != LUA_TTABLE) {
        char why[300];
        snprintf(why, sizeof(why), "get_egress_source('%s') returned no source",
                 rq->source_name);
        readyq_config_failed(rq, why);
        return;
    }
    char err[512];
    json_t *j = klua_to_json(L, 1, err, sizeof(err));
    egress_source_fini(&rq->source);
    if (!j || egress_source_from_json(j, &rq->source, err, sizeof(err)) != 0) {
        json_decref(j);
        readyq_config_failed(rq, err);
        return;
    }
    json_decref(j);
    readyq_load_path(rq);
}

static void readyq_load_config(readyq *rq)
{
    rq->state = CFG_LOADING;
    klua *vm = klua_current();
    if (strcmp(rq->source_name, "unspecified") == 0 ||
        !klua_has_handler(vm, "get_egress_source")) {
        egress_source_fini(&rq->source);
        rq->source.name = strdup(rq->source_name);
        readyq_load_path(rq);
        return;
    }
    klua_call *c;
    lua_State *co = klua_call_begin(vm, "get_egress_source", &c);
    lua_pushstring(co, rq->source_name);
    rq->call = c;
    klua_call_run(c, 1, after_get_egress_source, rq);
}

static void ready_on_owner(void *arg)
{
    struct ready_job *j = arg;
    if (queues_down) {
        if (j->q)
            qmsg_free(j->q);
        ready_job_free(j);
        return;
    }
    readyq *rq = readyq_find(j->name);
    if (!rq)
        rq = readyq_create(j);
    qmsg *q = j->q;
    ready_job_free(j);
    if (!q) { /* readyq_prepare_remote: configured (or on its way) */
        if (rq->state != CFG_LOADING)
            selsrc_publish(rq->name, rq->state == CFG_READY ? &rq->cfg : NULL);
        readyq_arm_reap(rq);
        return;
    }
    if (rq->state != CFG_READY) {
        qlist_push(&rq->pending, q);
        return;
    }
    readyq_accept(rq, q);
}

static struct ready_job *ready_job_new(const char *rq_name, schedq *sq, qmsg *q)
{
    struct ready_job *j = calloc(1, sizeof(*j));
    if (!j)
        abort();
    j->q = q;
    j->name = strdup(rq_name);
    const char *arrow = strstr(rq_name, "->");
    j->source = strndup(rq_name, arrow ? (size_t)(arrow - rq_name) : 0);
    const char *at = strrchr(rq_name, '@');
    j->site = strndup(arrow + 2, at ? (size_t)(at - arrow - 2) : strlen(arrow + 2));
    j->domain = dupn(sq->parts.domain);
    j->tenant = dupn(sq->parts.tenant);
    j->campaign = dupn(sq->parts.campaign);
    j->routing_domain = dupn(sq->parts.routing_domain);
    j->sched_name = strdup(sq->name);
    queue_config_defaults(&j->proto_cfg);
    j->proto_cfg.proto = sq->cfg.proto;
    j->proto_cfg.constructor = dupn(sq->cfg.constructor);
    j->proto_cfg.batch_size = sq->cfg.batch_size;
    j->proto_cfg.min_batch_size = sq->cfg.min_batch_size;
    j->proto_cfg.max_batch_latency_ns = sq->cfg.max_batch_latency_ns;
    j->proto_cfg.mx_list = sq->cfg.mx_list ? json_deep_copy(sq->cfg.mx_list) : NULL;
    j->proto_cfg.egress_pool = dupn(sq->cfg.egress_pool);
    j->proto_cfg.provider_name = dupn(sq->cfg.provider_name);
    return j;
}

void readyq_insert_remote(const char *rq_name, schedq *sq, qmsg *q)
{
    struct ready_job *j = ready_job_new(rq_name, sq, q);
    q->sq = NULL; /* leaves its scheduled queue's reactor */
    atomic_fetch_add(&st_in_flight, 1);
    reactor_post(owner_of(rq_name), ready_on_owner, j);
}

void readyq_prepare_remote(const char *rq_name, schedq *sq)
{
    reactor_post(owner_of(rq_name), ready_on_owner, ready_job_new(rq_name, sq, NULL));
}
