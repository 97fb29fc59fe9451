/* The TSA daemon's endpoints (kumod --tsa).
 *
 * POST /publish_log_v1: the record is evaluated before the answer: the
 * policy's tsa_load_shaping_data event gives the Shaping object, its
 * match_rules method the rules the record matches (both Lua calls may
 * wait, so they run as coroutines on the reactor that took the request),
 * tsa_state decides, and what it decided goes to every subscriber.
 *
 * Subscribers (GET /subscribe_event_v1, /subscribe_suspension_v1) are
 * websockets (http/ws_conn.c, as the trace endpoints are). Each is owned by the reactor
 * that accepted it; a registry behind sub_lock holds, per subscriber, the
 * items not yet written and its reactor, so a decision made on another
 * reactor is handed over with reactor_post (by subscriber id: a
 * subscriber that is gone is simply not found). A subscriber that does
 * not read loses items beyond SUB_MAX_PENDING (logged).
 *
 * Failure: a record that is not a JSON object is a 400; a policy error
 * (no tsa_load_shaping_data handler, an error in it) a 500 naming it, and
 * the node retries the record. */
#include "tsa/tsa_http.h"

#include <event2/http.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/diag.h"
#include "core/reactor.h"
#include "http/request.h"
#include "http/ws_conn.h"
#include "lua/klua.h"
#include "lua/luajson.h"
#include "metrics/metrics.h"
#include "tsa/tsa_state.h"

#define TMOD "tsa_daemon"
#define SUB_MAX_PENDING 100000

static const ws_conn_cfg sub_ws_cfg = {
    .module = TMOD,
    .what = "subscriber",
    .max_message = 64u * 1024, /* nothing is expected from a subscriber */
    .ping_s = 30,
    .ping_payload = "tsa",
    .not_websocket_error = "this endpoint is a websocket: Connection: upgrade and "
                           "Upgrade: websocket are required",
};

/* ---- subscribers --------------------------------------------------------------- */

typedef struct pending {
    struct pending *next;
    char *text;
} pending;

typedef struct ws_sub {
    ws_conn *ws;
    uint64_t id;
} ws_sub;

typedef struct sub_slot {
    struct sub_slot *next;
    uint64_t id;
    reactor *r;
    ws_sub *w; /* touched only on r */
    bool legacy;
    pending *head, **tail;
    size_t n;
    bool wake_posted;
    bool warned;
} sub_slot;

static pthread_mutex_t sub_lock = PTHREAD_MUTEX_INITIALIZER;
static sub_slot *subs;
static uint64_t next_sub_id = 1;

static void slot_free_pending(sub_slot *s)
{
    while (s->head) {
        pending *p = s->head;
        s->head = p->next;
        free(p->text);
        free(p);
    }
    s->tail = &s->head;
    s->n = 0;
}

/* On the subscriber's reactor: writes what is pending. */
static void sub_wake(void *arg)
{
    uint64_t id = (uint64_t)(uintptr_t)arg;
    pthread_mutex_lock(&sub_lock);
    sub_slot *s = subs;
    while (s && s->id != id)
        s = s->next;
    pending *list = NULL;
    ws_sub *w = NULL;
    if (s) {
        list = s->head;
        s->head = NULL;
        s->tail = &s->head;
        s->n = 0;
        s->wake_posted = false;
        w = s->w;
    }
    pthread_mutex_unlock(&sub_lock);
    while (list) {
        pending *p = list;
        list = p->next;
        if (w && !ws_conn_closing(w->ws))
            ws_conn_send(w->ws, WS_OP_TEXT, p->text, strlen(p->text));
        free(p->text);
        free(p);
    }
}

/* Hands one item to every subscriber (any thread). */
static void broadcast(const json_t *item)
{
    char *full = json_dumps(item, JSON_COMPACT);
    if (!full)
        return;
    /* the legacy stream knows only ReadyQ and SchedQ suspensions */
    char *legacy = NULL;
    const json_t *rq = json_object_get(item, "ReadyQSuspension");
    const json_t *sq = json_object_get(item, "SchedQSuspension");
    if (rq || sq) {
        json_t *l = json_pack("{s:O}", rq ? "ReadyQ" : "SchedQ", rq ? rq : sq);
        legacy = l ? json_dumps(l, JSON_COMPACT) : NULL;
        json_decref(l);
    }
    pthread_mutex_lock(&sub_lock);
    for (sub_slot *s = subs; s; s = s->next) {
        const char *text = s->legacy ? legacy : full;
        if (!text)
            continue;
        if (s->n >= SUB_MAX_PENDING) {
            if (!s->warned)
                DWARN(TMOD, "subscriber %llu is not reading: dropping events",
                      (unsigned long long)s->id);
            s->warned = true;
            continue;
        }
        pending *p = calloc(1, sizeof(*p));
        if (!p || !(p->text = strdup(text)))
            abort();
        *s->tail = p;
        s->tail = &p->next;
        s->n++;
        if (!s->wake_posted) {
            s->wake_posted = true;
            reactor_post(s->r, sub_wake, (void *)(uintptr_t)s->id);
        }
    }
    pthread_mutex_unlock(&sub_lock);
    free(full);
    free(legacy);
}

static void sub_unregister(uint64_t id)
{
    pthread_mutex_lock(&sub_lock);
    for (sub_slot **pp = &subs; *pp; pp = &(*pp)->next) {
        if ((*pp)->id == id) {
            sub_slot *s = *pp;
            *pp = s->next;
            slot_free_pending(s);
            free(s);
            break;
        }
    }
    pthread_mutex_unlock(&sub_lock);
}

static void sub_on_end(ws_conn *ws, void *ud, bool shutdown)
{
    ws_sub *w = ud;
    if (!shutdown)
        DINFO(TMOD, "peer=%s subscriber %llu gone", ws_conn_peer(ws), (unsigned long long)w->id);
    sub_unregister(w->id);
    free(w);
}

static const ws_conn_ops sub_ws_ops = {.on_end = sub_on_end};

static void subscribe(http_req *hr, bool legacy)
{
    const char *key = ws_conn_check_upgrade(hr, &sub_ws_cfg);
    if (!key)
        return; /* answered */
    ws_sub *w = calloc(1, sizeof(*w));
    sub_slot *s = calloc(1, sizeof(*s));
    if (!w || !s) {
        free(w);
        free(s);
        http_reply_error(hr, 500, "out of memory");
        return;
    }
    char peer[64];
    snprintf(peer, sizeof(peer), "%s", hr->peer_ip);
    s->r = hr->r;
    s->w = w;
    s->legacy = legacy;
    s->tail = &s->head;
    w->ws = ws_conn_accept(hr, key, &sub_ws_cfg, &sub_ws_ops, w);
    if (!w->ws) {
        free(w);
        free(s);
        return; /* answered */
    }
    /* register first, then send the current state: an item decided in
     * between is sent twice (harmless: applying it is idempotent) rather
     * than lost */
    pthread_mutex_lock(&sub_lock);
    s->id = w->id = next_sub_id++;
    s->next = subs;
    subs = s;
    pthread_mutex_unlock(&sub_lock);
    json_t *items = tsa_state_current_items(time(NULL), legacy);
    size_t i;
    json_t *it;
    json_array_foreach(items, i, it)
    {
        char *text = json_dumps(it, JSON_COMPACT);
        if (text)
            ws_conn_send(w->ws, WS_OP_TEXT, text, strlen(text));
        free(text);
    }
    json_decref(items);
    DINFO(TMOD, "peer=%s subscriber %llu: %s", peer, (unsigned long long)w->id,
          legacy ? "subscribe_suspension_v1" : "subscribe_event_v1");
    ws_conn_start(w->ws);
}

static void h_subscribe_event(http_req *hr)
{
    subscribe(hr, false);
}

static void h_subscribe_suspension(http_req *hr)
{
    subscribe(hr, true);
}

/* ---- publish ---------------------------------------------------------------------- */

typedef struct pub {
    http_req *hr;
    json_t *record;
} pub;

static void pub_free(pub *p)
{
    json_decref(p->record);
    free(p);
}

static void matched_done(klua_call *c, int status, void *ud)
{
    pub *p = ud;
    if (status != KLUA_OK) {
        http_reply_error(p->hr, 500, "match_rules: %s", klua_call_error(c));
        pub_free(p);
        return;
    }
    lua_State *co = klua_call_thread(c);
    json_t *rules = NULL;
    char err[256] = "";
    if (klua_call_nresults(c) >= 1 && lua_istable(co, 1))
        rules = klua_to_json(co, 1, err, sizeof(err));
    if (json_is_object(rules) && json_object_size(rules) == 0) {
        json_decref(rules);
        rules = json_array(); /* an empty Lua table */
    }
    if (!json_is_array(rules)) {
        json_decref(rules);
        http_reply_error(p->hr, 500, "match_rules did not return a list of rules %s", err);
        pub_free(p);
        return;
    }
    json_t *events = tsa_state_evaluate(p->record, rules, time(NULL));
    size_t i;
    json_t *ev;
    json_array_foreach(events, i, ev) broadcast(ev);
    json_decref(events);
    json_decref(rules);
    http_reply_text(p->hr, 200, "text/plain", "", 0);
    pub_free(p);
}

static void loaded_done(klua_call *c, int status, void *ud)
{
    pub *p = ud;
    if (status != KLUA_OK) {
        http_reply_error(p->hr, 500, "tsa_load_shaping_data: %s", klua_call_error(c));
        pub_free(p);
        return;
    }
    lua_State *co = klua_call_thread(c);
    if (klua_call_nresults(c) < 1 || !lua_istable(co, 1)) {
        http_reply_error(p->hr, 500,
                         "tsa_load_shaping_data must return a Shaping object "
                         "(kumo.shaping.load)");
        pub_free(p);
        return;
    }
    lua_getfield(co, 1, "match_rules");
    if (!lua_isfunction(co, -1)) {
        lua_pop(co, 1);
        http_reply_error(p->hr, 500,
                         "tsa_load_shaping_data returned a table that is not a Shaping object");
        pub_free(p);
        return;
    }
    klua_call *c2;
    lua_State *co2 = klua_call_begin_fn(klua_call_vm(c), "match_rules", &c2);
    lua_xmove(co, co2, 1);
    lua_pushvalue(co, 1);
    lua_xmove(co, co2, 1);
    klua_push_json(co2, p->record);
    klua_call_run(c2, 2, matched_done, p);
}

static void h_publish(http_req *hr)
{
    json_t *record = http_req_json_object(hr, false);
    if (!record)
        return; /* answered */
    klua *vm = klua_current();
    if (!vm) {
        json_decref(record);
        http_reply_error(hr, 503, "no policy loaded");
        return;
    }
    pub *p = calloc(1, sizeof(*p));
    if (!p)
        abort();
    p->hr = hr;
    p->record = record;
    klua_call *c;
    klua_call_begin(vm, "tsa_load_shaping_data", &c);
    klua_call_run(c, 0, loaded_done, p);
}

/* ---- the rest ---------------------------------------------------------------------- */

static void h_get_config(http_req *hr)
{
    char *toml = tsa_state_config_toml(time(NULL));
    http_reply_text(hr, 200, "text/plain; charset=utf-8", toml, strlen(toml));
    free(toml);
}

static void h_get_suspension(http_req *hr)
{
    http_reply_json(hr, 200, tsa_state_suspensions(time(NULL)));
}

static void h_get_bounce(http_req *hr)
{
    http_reply_json(hr, 200, tsa_state_bounces(time(NULL)));
}

static void h_status(http_req *hr)
{
    static const char ok[] = "TSA Daemon OK";
    http_reply_text(hr, 200, "text/plain", ok, sizeof(ok) - 1);
}

static const http_route tsa_routes[] = {
    {"/publish_log_v1", EVHTTP_REQ_POST, h_publish},
    {"/get_config_v1/shaping.toml", EVHTTP_REQ_GET, h_get_config},
    {"/get_suspension_v1/suspended.json", EVHTTP_REQ_GET, h_get_suspension},
    {"/get_bounce_v1/bounced.json", EVHTTP_REQ_GET, h_get_bounce},
    {"/subscribe_event_v1", EVHTTP_REQ_GET, h_subscribe_event},
    {"/subscribe_suspension_v1", EVHTTP_REQ_GET, h_subscribe_suspension},
    {"/tsa/status", EVHTTP_REQ_GET, h_status},
};

/* ---- metrics (GET /metrics of the daemon) ---------------------------------------- */

static void collect_records(metrics_emitter *em, void *arg)
{
    (void)arg;
    metrics_emit(em, (double)tsa_state_records_total(), NULL);
}

static void collect_actions(metrics_emitter *em, void *arg)
{
    (void)arg;
    metrics_emit(em, (double)tsa_state_actions_total(), NULL);
}

static void collect_subscribers(metrics_emitter *em, void *arg)
{
    (void)arg;
    size_t n = 0;
    pthread_mutex_lock(&sub_lock);
    for (sub_slot *s = subs; s; s = s->next)
        n++;
    pthread_mutex_unlock(&sub_lock);
    metrics_emit(em, (double)n, NULL);
}

static void tsa_metrics_start(void)
{
    metrics_family *f;
    metrics_callback_family(&f, METRICS_COUNTER, "tsa_records_total",
                            "log records evaluated against the automation rules", NULL, 0,
                            collect_records, NULL);
    metrics_callback_family(&f, METRICS_COUNTER, "tsa_actions_total",
                            "automation rule actions taken (suspensions, bounces, overrides)",
                            NULL, 0, collect_actions, NULL);
    metrics_callback_family(&f, METRICS_GAUGE, "tsa_subscribers",
                            "nodes subscribed to the event stream", NULL, 0,
                            collect_subscribers, NULL);
}

static const http_endpoints tsa_endpoints = {
    .routes = tsa_routes,
    .n_routes = sizeof(tsa_routes) / sizeof(tsa_routes[0]),
    .start = tsa_metrics_start,
};

void tsa_http_add_endpoints(void)
{
    http_add_endpoints(&tsa_endpoints);
    http_serve_only_endpoints();
}
