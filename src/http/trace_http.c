/* The trace websocket endpoints, as KumoMTA serves them to its kcli:
 * GET /api/admin/trace-smtp-server/v1 and /api/admin/trace-smtp-client/v1
 * upgrade to a websocket (RFC 6455); the client sends one text message,
 * its TraceSmtpV1Request / TraceSmtpClientV1Request as JSON, and then
 * receives one text message per event (TraceSmtpV1Event /
 * TraceSmtpClientV1Event JSON) until either side closes.
 *
 * libevent 2.1's evhttp has no upgrade: once the request is authorized
 * the handler takes the evhttp connection over (http_req_detach), writes
 * the 101 itself and replaces the bufferevent's callbacks with its own.
 * The evhttp connection object stays the owner of the socket, so the
 * socket is freed with evhttp_connection_free when the websocket ends; if
 * evhttp frees it first (evhttp_free at shutdown) its close callback ends
 * the websocket's state.
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

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/diag.h"
#include "core/reactor.h"
#include "http/request.h"
#include "http/websocket.h"
#include "smtp/trace.h"

#define HMOD "kumod::http_server"
#define WS_OUT_HIGH (256u * 1024)     /* stop taking events above this */
#define WS_MAX_MESSAGE (64u * 1024)   /* the request; nothing else is expected */
#define WS_PING_S 30                  /* keepalive ping interval */
#define WS_DEAD_S 120                 /* no pong for this long: close */

typedef struct ws_conn {
    struct evhttp_connection *evcon;
    struct bufferevent *bev;
    trace_sub *sub;
    trace_kind kind;
    ws_msg msg;
    bool got_request;
    bool closing; /* our Close frame is queued; end once it is written */
    bool done;
    int64_t last_heard_ms;
    struct event *ping_ev;
    char peer[64];
} ws_conn;

/* Frees our state; the socket and bufferevent belong to evcon. */
static void ws_state_free(ws_conn *w)
{
    trace_unsubscribe(w->sub);
    if (w->ping_ev)
        event_free(w->ping_ev);
    ws_msg_fini(&w->msg);
    free(w);
}

/* evhttp is freeing the connection (evhttp_free at shutdown). */
static void ws_evcon_closed(struct evhttp_connection *evcon, void *arg)
{
    (void)evcon;
    ws_state_free(arg);
}

/* Ends the websocket: w and the connection are gone on return. */
static void ws_finish(ws_conn *w)
{
    struct evhttp_connection *evcon = w->evcon;
    DDEBUG(HMOD, "peer=%s trace websocket closed (events lost to lag: %llu)", w->peer,
           (unsigned long long)trace_sub_lagged_total(w->sub));
    evhttp_connection_set_closecb(evcon, NULL, NULL);
    ws_state_free(w);
    evhttp_connection_free(evcon);
}

static void ws_send(ws_conn *w, uint8_t op, const void *p, size_t n)
{
    uint8_t h[14];
    size_t hl = ws_frame_header(h, op, n, NULL);
    struct evbuffer *out = bufferevent_get_output(w->bev);
    evbuffer_add(out, h, hl);
    if (n)
        evbuffer_add(out, p, n);
}

/* Queues a Close frame (§5.5.1) and stops reading; the connection ends
 * once it is written. */
static void ws_close(ws_conn *w, int code, const char *reason)
{
    if (w->closing)
        return;
    uint8_t p[125];
    size_t rl = reason ? strlen(reason) : 0;
    if (rl > sizeof(p) - 2)
        rl = sizeof(p) - 2;
    p[0] = (uint8_t)(code >> 8);
    p[1] = (uint8_t)code;
    if (rl)
        memcpy(p + 2, reason, rl);
    ws_send(w, WS_OP_CLOSE, p, 2 + rl);
    w->closing = true;
    bufferevent_disable(w->bev, EV_READ);
    if (code != WS_CLOSE_NORMAL)
        DINFO(HMOD, "peer=%s trace websocket closed: %d %s", w->peer, code, reason ? reason : "");
}

/* Moves queued events to the socket while it keeps up. */
static void ws_pump(ws_conn *w)
{
    if (w->closing || !w->got_request)
        return;
    struct evbuffer *out = bufferevent_get_output(w->bev);
    while (evbuffer_get_length(out) < WS_OUT_HIGH) {
        size_t len;
        char *json = trace_sub_next(w->sub, &len);
        if (!json)
            break;
        ws_send(w, WS_OP_TEXT, json, len);
        free(json);
    }
}

static void ws_wake(void *ud)
{
    ws_pump(ud);
}

static void ws_on_message(ws_conn *w)
{
    if (w->got_request) {
        ws_close(w, WS_CLOSE_POLICY, "unexpected message after the trace request");
        return;
    }
    if (w->msg.opcode != WS_OP_TEXT) {
        ws_close(w, WS_CLOSE_UNSUPPORTED, "the trace request is a JSON text message");
        return;
    }
    json_error_t jerr;
    json_t *req = json_loadb((const char *)w->msg.data, w->msg.len, 0, &jerr);
    char err[200];
    if (!req) {
        snprintf(err, sizeof(err), "invalid JSON: %s", jerr.text);
        ws_close(w, WS_CLOSE_POLICY, err);
        return;
    }
    int rc = trace_sub_set_request(w->sub, req, err, sizeof(err));
    json_decref(req);
    if (rc) {
        ws_close(w, WS_CLOSE_POLICY, err);
        return;
    }
    w->got_request = true;
    ws_pump(w);
}

/* Handles the frames in the input; false when w is gone. */
static void ws_read_cb(struct bufferevent *bev, void *arg)
{
    ws_conn *w = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    w->last_heard_ms = clock_mono_ms();
    while (!w->closing) {
        size_t n = evbuffer_get_length(in);
        if (n == 0)
            break;
        /* a frame is at most 14 header bytes plus WS_MAX_MESSAGE */
        uint8_t *buf = evbuffer_pullup(in, (ev_ssize_t)(n < WS_MAX_MESSAGE + 14 ? n : WS_MAX_MESSAGE + 14));
        ws_frame f;
        long used = ws_parse_frame(buf, n < WS_MAX_MESSAGE + 14 ? n : WS_MAX_MESSAGE + 14, true,
                                   WS_MAX_MESSAGE, &f);
        if (used == WS_AGAIN)
            break;
        if (used < 0) {
            ws_close(w, (int)-used, "malformed frame");
            break;
        }
        uint8_t *payload = buf + f.hdr_len;
        ws_unmask(payload, (size_t)f.len, f.mask, 0);
        int r = ws_msg_feed(&w->msg, &f, payload);
        if (r < 0) {
            ws_close(w, -r, r == -WS_CLOSE_BAD_DATA ? "invalid UTF-8" : "protocol error");
        } else if (r == WS_MSG_DATA) {
            ws_on_message(w);
            ws_msg_reset(&w->msg);
        } else if (r == WS_MSG_CONTROL) {
            if (f.opcode == WS_OP_PING) {
                ws_send(w, WS_OP_PONG, payload, (size_t)f.len);
            } else if (f.opcode == WS_OP_CLOSE) {
                /* §5.5.1: answer with the status it sent */
                unsigned code = f.len >= 2 ? (unsigned)payload[0] << 8 | payload[1]
                                           : WS_CLOSE_NORMAL;
                ws_close(w, (int)code, NULL);
            }
        }
        evbuffer_drain(in, (size_t)used);
    }
    if (w->closing && evbuffer_get_length(bufferevent_get_output(bev)) == 0)
        ws_finish(w);
}

static void ws_write_cb(struct bufferevent *bev, void *arg)
{
    ws_conn *w = arg;
    (void)bev;
    if (w->closing) {
        ws_finish(w);
        return;
    }
    ws_pump(w);
}

static void ws_event_cb(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    (void)what; /* EOF or error: the peer is gone either way */
    ws_finish(arg);
}

static void ws_ping_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    ws_conn *w = arg;
    if (w->closing)
        return;
    if (clock_mono_ms() - w->last_heard_ms > WS_DEAD_S * 1000) {
        ws_close(w, WS_CLOSE_GOING_AWAY, "no answer to pings");
        return;
    }
    ws_send(w, WS_OP_PING, "kumod", 5);
}

/* ---- the upgrade ------------------------------------------------------------------------------ */

/* True when the comma-separated header value lists token. */
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

static void trace_upgrade(http_req *hr, trace_kind kind)
{
    struct evkeyvalq *h = evhttp_request_get_input_headers(hr->req);
    const char *upgrade = evhttp_find_header(h, "Upgrade");
    const char *connection = evhttp_find_header(h, "Connection");
    const char *version = evhttp_find_header(h, "Sec-WebSocket-Version");
    const char *key = evhttp_find_header(h, "Sec-WebSocket-Key");
    if (!connection || !has_token(connection, "upgrade")) {
        http_reply_error(hr, 400, "Connection header did not include 'upgrade'");
        return;
    }
    if (!upgrade || !has_token(upgrade, "websocket")) {
        http_reply_error(hr, 400, "`Upgrade` header did not include 'websocket'");
        return;
    }
    if (!version || strcmp(version, "13") != 0) {
        evhttp_add_header(evhttp_request_get_output_headers(hr->req), "Sec-WebSocket-Version",
                          "13");
        http_reply_error(hr, 426, "WebSocket version 13 is required");
        return;
    }
    /* §4.1: 16 random bytes, base64: 24 characters ending "==" */
    if (!key || strlen(key) != 24 || strcmp(key + 22, "==") != 0) {
        http_reply_error(hr, 400, "`Sec-WebSocket-Key` header missing or invalid");
        return;
    }
    ws_conn *w = calloc(1, sizeof(*w));
    if (!w) {
        http_reply_error(hr, 500, "out of memory");
        return;
    }
    w->kind = kind;
    w->msg.max = WS_MAX_MESSAGE;
    w->last_heard_ms = clock_mono_ms();
    snprintf(w->peer, sizeof(w->peer), "%s", hr->peer_ip);
    /* subscribe before the 101 goes out: once the client has it, what it
     * does next is traced */
    w->sub = trace_subscribe(kind, hr->r, ws_wake, w);
    if (!w->sub) {
        free(w);
        http_reply_error(hr, 503, "too many trace subscribers (at most %d)",
                         TRACE_MAX_SUBSCRIBERS);
        return;
    }
    char accept[29];
    ws_accept_key(key, accept);
    w->evcon = http_req_detach(hr);
    w->bev = evhttp_connection_get_bufferevent(w->evcon);
    evhttp_connection_set_closecb(w->evcon, ws_evcon_closed, w);
    w->ping_ev = event_new(bufferevent_get_base(w->bev), -1, EV_PERSIST, ws_ping_cb, w);
    if (w->ping_ev) {
        struct timeval tv = {WS_PING_S, 0};
        event_add(w->ping_ev, &tv);
    }
    bufferevent_setcb(w->bev, ws_read_cb, ws_write_cb, ws_event_cb, w);
    bufferevent_set_timeouts(w->bev, NULL, NULL);
    evbuffer_add_printf(bufferevent_get_output(w->bev),
                        "HTTP/1.1 101 Switching Protocols\r\n"
                        "Upgrade: websocket\r\n"
                        "Connection: Upgrade\r\n"
                        "Sec-WebSocket-Accept: %s\r\n\r\n",
                        accept);
    bufferevent_enable(w->bev, EV_READ | EV_WRITE);
    DINFO(HMOD, "peer=%s trace-smtp-%s subscribed", w->peer,
          kind == TRACE_SERVER ? "server" : "client");
    /* a client may have sent its request right behind the handshake */
    if (evbuffer_get_length(bufferevent_get_input(w->bev)))
        ws_read_cb(w->bev, w);
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
