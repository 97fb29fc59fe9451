/* The trace websocket endpoints, as KumoMTA serves them to its kcli:
 * GET /api/admin/trace-smtp-server/v1 and /api/admin/trace-smtp-client/v1
 * upgrade to a websocket (RFC 6455, ws_conn.c); the client sends one text
 * message, its TraceSmtpV1Request / TraceSmtpClientV1Request as JSON, and
 * then receives one text message per event (TraceSmtpV1Event /
 * TraceSmtpClientV1Event JSON) until either side closes.
 *
 * Thread: the reactor that accepted the request owns the websocket and
 * its subscription; trace events arrive through the subscription's queue
 * (smtp/trace.c) and are written only while the socket's output holds
 * less than WS_OUT_HIGH bytes, so a client that does not read makes its
 * own queue overflow (counted as lag) and never holds up a producer.
 *
 * Failure: a handshake that is not a websocket upgrade is a 400 (426 for
 * another protocol version); a frame or request the RFC or the API does
 * not allow ends the websocket with a Close frame naming the reason. */
#include "http/trace_http.h"

#include <stdio.h>
#include <stdlib.h>

#include "core/diag.h"
#include "http/request.h"
#include "http/ws_conn.h"
#include "smtp/trace.h"

#define HMOD "kumod::http_server"
#define WS_OUT_HIGH (256u * 1024) /* stop taking events above this */

static const ws_conn_cfg trace_ws_cfg = {
    .module = HMOD,
    .what = "trace websocket",
    .max_message = 64u * 1024, /* the request; nothing else is expected */
    .ping_s = 30,
    .dead_s = 120,
    .ping_payload = "kumod",
};

typedef struct trace_ws {
    ws_conn *ws;
    trace_sub *sub;
    bool got_request;
} trace_ws;

/* Moves queued events to the socket while it keeps up. */
static void trace_pump(trace_ws *t)
{
    if (!t->got_request || ws_conn_closing(t->ws))
        return;
    while (ws_conn_pending_out(t->ws) < WS_OUT_HIGH) {
        size_t len;
        char *json = trace_sub_next(t->sub, &len);
        if (!json)
            break;
        ws_conn_send(t->ws, WS_OP_TEXT, json, len);
        free(json);
    }
}

static void trace_wake(void *ud)
{
    trace_pump(ud);
}

static void trace_on_writable(ws_conn *ws, void *ud)
{
    (void)ws;
    trace_pump(ud);
}

static void trace_on_message(ws_conn *ws, void *ud, uint8_t opcode, const uint8_t *data, size_t len)
{
    trace_ws *t = ud;
    if (t->got_request) {
        ws_conn_close(ws, WS_CLOSE_POLICY, "unexpected message after the trace request");
        return;
    }
    if (opcode != WS_OP_TEXT) {
        ws_conn_close(ws, WS_CLOSE_UNSUPPORTED, "the trace request is a JSON text message");
        return;
    }
    json_error_t jerr;
    json_t *req = json_loadb((const char *)data, len, 0, &jerr);
    char err[200];
    if (!req) {
        snprintf(err, sizeof(err), "invalid JSON: %s", jerr.text);
        ws_conn_close(ws, WS_CLOSE_POLICY, err);
        return;
    }
    int rc = trace_sub_set_request(t->sub, req, err, sizeof(err));
    json_decref(req);
    if (rc) {
        ws_conn_close(ws, WS_CLOSE_POLICY, err);
        return;
    }
    t->got_request = true;
    trace_pump(t);
}

static void trace_on_end(ws_conn *ws, void *ud, bool shutdown)
{
    trace_ws *t = ud;
    if (!shutdown)
        DDEBUG(HMOD, "peer=%s trace websocket closed (events lost to lag: %llu)", ws_conn_peer(ws),
               (unsigned long long)trace_sub_lagged_total(t->sub));
    trace_unsubscribe(t->sub);
    free(t);
}

static const ws_conn_ops trace_ws_ops = {
    .on_message = trace_on_message,
    .on_writable = trace_on_writable,
    .on_end = trace_on_end,
};

static void trace_upgrade(http_req *hr, trace_kind kind)
{
    const char *key = ws_conn_check_upgrade(hr, &trace_ws_cfg);
    if (!key)
        return; /* answered */
    trace_ws *t = calloc(1, sizeof(*t));
    if (!t) {
        http_reply_error(hr, 500, "out of memory");
        return;
    }
    /* subscribe before the 101 goes out: once the client has it, what it
     * does next is traced */
    t->sub = trace_subscribe(kind, hr->r, trace_wake, t);
    if (!t->sub) {
        free(t);
        http_reply_error(hr, 503, "too many trace subscribers (at most %d)", TRACE_MAX_SUBSCRIBERS);
        return;
    }
    char peer[64];
    snprintf(peer, sizeof(peer), "%s", hr->peer_ip);
    t->ws = ws_conn_accept(hr, key, &trace_ws_cfg, &trace_ws_ops, t);
    if (!t->ws) {
        trace_unsubscribe(t->sub);
        free(t);
        return; /* answered */
    }
    DINFO(HMOD, "peer=%s trace-smtp-%s subscribed", peer,
          kind == TRACE_SERVER ? "server" : "client");
    ws_conn_start(t->ws);
}

static void http_trace_smtp_server(http_req *hr)
{
    trace_upgrade(hr, TRACE_SERVER);
}

static void http_trace_smtp_client(http_req *hr)
{
    trace_upgrade(hr, TRACE_CLIENT);
}

static const http_route trace_routes[] = {
    {"/api/admin/trace-smtp-server/v1", EVHTTP_REQ_GET, http_trace_smtp_server},
    {"/api/admin/trace-smtp-client/v1", EVHTTP_REQ_GET, http_trace_smtp_client},
};

static const http_endpoints trace_endpoints = {
    .routes = trace_routes,
    .n_routes = sizeof(trace_routes) / sizeof(trace_routes[0]),
};

void http_trace_add_endpoints(void)
{
    http_add_endpoints(&trace_endpoints);
}
