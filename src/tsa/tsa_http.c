/* The TSA daemon's endpoints (kumod --tsa).
 *
 * POST /publish_log_v1: the record is evaluated before the answer: the
 * policy's tsa_load_shaping_data event gives the Shaping object, its
 * match_rules method the rules the record matches (both Lua calls may
 * wait, so they run as coroutines on the reactor that took the request),
 * tsa_state decides, and what it decided goes to every subscriber.
 *
 * Subscribers (GET /subscribe_event_v1, /subscribe_suspension_v1) are
 * websockets (libevent's evhttp has no upgrade: the handler takes the
 * connection over, as trace_http.c does). Each is owned by the reactor
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

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "core/diag.h"
#include "core/reactor.h"
#include "http/request.h"
#include "http/websocket.h"
#include "lua/klua.h"
#include "lua/luajson.h"
#include "metrics/metrics.h"
#include "tsa/tsa_state.h"

#define TMOD "tsa_daemon"
#define SUB_MAX_PENDING 100000
#define WS_MAX_IN (64u * 1024)
#define WS_PING_S 30

/* ---- subscribers --------------------------------------------------------------- */

typedef struct pending {
    struct pending *next;
    char *text;
} pending;

typedef struct ws_sub ws_sub;

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

struct ws_sub {
    struct evhttp_connection *evcon;
    struct bufferevent *bev;
    uint64_t id;
    ws_msg msg;
    bool closing;
    struct event *ping_ev;
    char peer[64];
};

static void ws_sub_send(ws_sub *w, uint8_t op, const void *p, size_t n)
{
    uint8_t h[14];
    size_t hl = ws_frame_header(h, op, n, NULL);
    struct evbuffer *out = bufferevent_get_output(w->bev);
    evbuffer_add(out, h, hl);
    if (n)
        evbuffer_add(out, p, n);
}

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
        if (w && !w->closing)
            ws_sub_send(w, WS_OP_TEXT, p->text, strlen(p->text));
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

static void ws_sub_state_free(ws_sub *w)
{
    sub_unregister(w->id);
    if (w->ping_ev)
        event_free(w->ping_ev);
    ws_msg_fini(&w->msg);
    free(w);
}

static void ws_sub_evcon_closed(struct evhttp_connection *evcon, void *arg)
{
    (void)evcon;
    ws_sub_state_free(arg);
}

static void ws_sub_finish(ws_sub *w)
{
    struct evhttp_connection *evcon = w->evcon;
    DINFO(TMOD, "peer=%s subscriber %llu gone", w->peer, (unsigned long long)w->id);
    evhttp_connection_set_closecb(evcon, NULL, NULL);
    ws_sub_state_free(w);
    evhttp_connection_free(evcon);
}

static void ws_sub_close(ws_sub *w, int code)
{
    if (w->closing)
        return;
    uint8_t p[2] = {(uint8_t)(code >> 8), (uint8_t)code};
    ws_sub_send(w, WS_OP_CLOSE, p, 2);
    w->closing = true;
    bufferevent_disable(w->bev, EV_READ);
}

static void ws_sub_read_cb(struct bufferevent *bev, void *arg)
{
    ws_sub *w = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    while (!w->closing) {
        size_t n = evbuffer_get_length(in);
        if (n == 0)
            break;
        size_t take = n < WS_MAX_IN + 14 ? n : WS_MAX_IN + 14;
        uint8_t *buf = evbuffer_pullup(in, (ev_ssize_t)take);
        ws_frame f;
        long used = ws_parse_frame(buf, take, true, WS_MAX_IN, &f);
        if (used == WS_AGAIN)
            break;
        if (used < 0) {
            ws_sub_close(w, (int)-used);
            break;
        }
        uint8_t *payload = buf + f.hdr_len;
        ws_unmask(payload, (size_t)f.len, f.mask, 0);
        int r = ws_msg_feed(&w->msg, &f, payload);
        if (r < 0) {
            ws_sub_close(w, -r);
        } else if (r == WS_MSG_DATA) {
            ws_msg_reset(&w->msg); /* nothing is expected from a subscriber */
        } else if (r == WS_MSG_CONTROL) {
            if (f.opcode == WS_OP_PING)
                ws_sub_send(w, WS_OP_PONG, payload, (size_t)f.len);
            else if (f.opcode == WS_OP_CLOSE)
                ws_sub_close(w, WS_CLOSE_NORMAL);
        }
        evbuffer_drain(in, (size_t)used);
    }
    if (w->closing && evbuffer_get_length(bufferevent_get_output(bev)) == 0)
        ws_sub_finish(w);
}

static void ws_sub_write_cb(struct bufferevent *bev, void *arg)
{
    (void)bev;
    ws_sub *w = arg;
    if (w->closing)
        ws_sub_finish(w);
}

static void ws_sub_event_cb(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    (void)what;
    ws_sub_finish(arg);
}

static void ws_sub_ping_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    ws_sub *w = arg;
    if (!w->closing)
        ws_sub_send(w, WS_OP_PING, "tsa", 3);
}

static bool has_token(const char *v, const char *token)
{
    size_t tl = strlen(token);
    while (v && *v) {
        while (*v == ' ' || *v == '\t' || *v == ',')
            v++;
        size_t n = strcspn(v, ",");
        size_t e = n;
        while (e && (v[e - 1] == ' ' || v[e - 1] == '\t'))
            e--;
        if (e == tl && strncasecmp(v, token, tl) == 0)
            return true;
        v += n;
    }
    return false;
}

static void subscribe(http_req *hr, bool legacy)
{
    struct evkeyvalq *h = evhttp_request_get_input_headers(hr->req);
    const char *upgrade = evhttp_find_header(h, "Upgrade");
    const char *connection = evhttp_find_header(h, "Connection");
    const char *version = evhttp_find_header(h, "Sec-WebSocket-Version");
    const char *key = evhttp_find_header(h, "Sec-WebSocket-Key");
    if (!connection || !has_token(connection, "upgrade") || !upgrade ||
        !has_token(upgrade, "websocket")) {
        http_reply_error(hr, 400, "this endpoint is a websocket: Connection: upgrade and "
                                  "Upgrade: websocket are required");
        return;
    }
    if (!version || strcmp(version, "13") != 0) {
        evhttp_add_header(evhttp_request_get_output_headers(hr->req), "Sec-WebSocket-Version",
                          "13");
        http_reply_error(hr, 426, "WebSocket version 13 is required");
        return;
    }
    if (!key || strlen(key) != 24 || strcmp(key + 22, "==") != 0) {
        http_reply_error(hr, 400, "`Sec-WebSocket-Key` header missing or invalid");
        return;
    }
    ws_sub *w = calloc(1, sizeof(*w));
    sub_slot *s = calloc(1, sizeof(*s));
    if (!w || !s) {
        free(w);
        free(s);
        http_reply_error(hr, 500, "out of memory");
        return;
    }
    w->msg.max = WS_MAX_IN;
    snprintf(w->peer, sizeof(w->peer), "%s", hr->peer_ip);
    s->r = hr->r;
    s->w = w;
    s->legacy = legacy;
    s->tail = &s->head;
    char accept[29];
    ws_accept_key(key, accept);
    w->evcon = http_req_detach(hr);
    w->bev = evhttp_connection_get_bufferevent(w->evcon);
    evhttp_connection_set_closecb(w->evcon, ws_sub_evcon_closed, w);
    w->ping_ev = event_new(bufferevent_get_base(w->bev), -1, EV_PERSIST, ws_sub_ping_cb, w);
    if (w->ping_ev) {
        struct timeval tv = {WS_PING_S, 0};
        event_add(w->ping_ev, &tv);
    }
    bufferevent_setcb(w->bev, ws_sub_read_cb, ws_sub_write_cb, ws_sub_event_cb, w);
    bufferevent_set_timeouts(w->bev, NULL, NULL);
    evbuffer_add_printf(bufferevent_get_output(w->bev),
                        "HTTP/1.1 101 Switching Protocols\r\n"
                        "Upgrade: websocket\r\n"
                        "Connection: Upgrade\r\n"
                        "Sec-WebSocket-Accept: %s\r\n\r\n",
                        accept);
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
            ws_sub_send(w, WS_OP_TEXT, text, strlen(text));
        free(text);
    }
    json_decref(items);
    bufferevent_enable(w->bev, EV_READ | EV_WRITE);
    DINFO(TMOD, "peer=%s subscriber %llu: %s", w->peer, (unsigned long long)w->id,
          legacy ? "subscribe_suspension_v1" : "subscribe_event_v1");
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
