/* Server-side websockets over connections taken from evhttp (ws_conn.h):
 * the handshake check and the 101, the read loop (frame parsing, message
 * assembly and control frames from websocket.c), keepalive pings, and the
 * end of the websocket, which hands the owner's state back through
 * on_end before the connection is freed.
 *
 * Owns: the ws_conn (its message buffer and ping timer); the socket and
 * its bufferevent belong to the evhttp connection, freed here when the
 * websocket ends. Thread: the reactor that accepted the request. Failure:
 * bad handshakes are HTTP errors; bad frames end in a Close frame; an
 * error or EOF on the socket ends the websocket at once. */
#include "http/ws_conn.h"

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

struct ws_conn {
    struct evhttp_connection *evcon;
    struct bufferevent *bev;
    const ws_conn_cfg *cfg;
    const ws_conn_ops *ops;
    void *ud;
    ws_msg msg;
    bool closing; /* our Close frame is queued; end once it is written */
    int64_t last_heard_ms;
    struct event *ping_ev;
    char peer[64];
};

/* Hands the owner's state back and frees ours; the socket and bufferevent
 * belong to evcon. */
static void ws_end(ws_conn *w, bool shutdown)
{
    w->ops->on_end(w, w->ud, shutdown);
    if (w->ping_ev)
        event_free(w->ping_ev);
    ws_msg_fini(&w->msg);
    free(w);
}

/* evhttp is freeing the connection (evhttp_free at shutdown). */
static void ws_evcon_closed(struct evhttp_connection *evcon, void *arg)
{
    (void)evcon;
    ws_end(arg, true);
}

/* Ends the websocket: w and the connection are gone on return. */
static void ws_finish(ws_conn *w)
{
    struct evhttp_connection *evcon = w->evcon;
    evhttp_connection_set_closecb(evcon, NULL, NULL);
    ws_end(w, false);
    evhttp_connection_free(evcon);
}

void ws_conn_send(ws_conn *w, uint8_t op, const void *p, size_t n)
{
    uint8_t h[14];
    size_t hl = ws_frame_header(h, op, n, NULL);
    struct evbuffer *out = bufferevent_get_output(w->bev);
    evbuffer_add(out, h, hl);
    if (n)
        evbuffer_add(out, p, n);
}

void ws_conn_close(ws_conn *w, int code, const char *reason)
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
    ws_conn_send(w, WS_OP_CLOSE, p, 2 + rl);
    w->closing = true;
    bufferevent_disable(w->bev, EV_READ);
    if (code != WS_CLOSE_NORMAL)
        DINFO(w->cfg->module, "peer=%s %s closed: %d %s", w->peer, w->cfg->what, code,
              reason ? reason : "");
}

bool ws_conn_closing(const ws_conn *w)
{
    return w->closing;
}

size_t ws_conn_pending_out(const ws_conn *w)
{
    return evbuffer_get_length(bufferevent_get_output(w->bev));
}

const char *ws_conn_peer(const ws_conn *w)
{
    return w->peer;
}

/* Handles the frames in the input. */
static void ws_read_cb(struct bufferevent *bev, void *arg)
{
    ws_conn *w = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    size_t max = w->cfg->max_message;
    w->last_heard_ms = clock_mono_ms();
    while (!w->closing) {
        size_t n = evbuffer_get_length(in);
        if (n == 0)
            break;
        /* a frame is at most 14 header bytes plus the largest message */
        size_t take = n < max + 14 ? n : max + 14;
        uint8_t *buf = evbuffer_pullup(in, (ev_ssize_t)take);
        ws_frame f;
        long used = ws_parse_frame(buf, take, true, max, &f);
        if (used == WS_AGAIN)
            break;
        if (used < 0) {
            ws_conn_close(w, (int)-used, "malformed frame");
            break;
        }
        uint8_t *payload = buf + f.hdr_len;
        ws_unmask(payload, (size_t)f.len, f.mask, 0);
        int r = ws_msg_feed(&w->msg, &f, payload);
        if (r < 0) {
            ws_conn_close(w, -r, r == -WS_CLOSE_BAD_DATA ? "invalid UTF-8" : "protocol error");
        } else if (r == WS_MSG_DATA) {
            if (w->ops->on_message)
                w->ops->on_message(w, w->ud, w->msg.opcode, w->msg.data, w->msg.len);
            ws_msg_reset(&w->msg);
        } else if (r == WS_MSG_CONTROL) {
            if (f.opcode == WS_OP_PING) {
                ws_conn_send(w, WS_OP_PONG, payload, (size_t)f.len);
            } else if (f.opcode == WS_OP_CLOSE) {
                /* §5.5.1: answer with the status it sent */
                unsigned code =
                    f.len >= 2 ? (unsigned)payload[0] << 8 | payload[1] : WS_CLOSE_NORMAL;
                ws_conn_close(w, (int)code, NULL);
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
    if (w->ops->on_writable)
        w->ops->on_writable(w, w->ud);
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
    if (w->cfg->dead_s > 0 && clock_mono_ms() - w->last_heard_ms > w->cfg->dead_s * 1000LL) {
        ws_conn_close(w, WS_CLOSE_GOING_AWAY, "no answer to pings");
        return;
    }
    ws_conn_send(w, WS_OP_PING, w->cfg->ping_payload, strlen(w->cfg->ping_payload));
}

/* ---- the upgrade ------------------------------------------------------------------------------
 */

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

const char *ws_conn_check_upgrade(http_req *hr, const ws_conn_cfg *cfg)
{
    struct evkeyvalq *h = evhttp_request_get_input_headers(hr->req);
    const char *upgrade = evhttp_find_header(h, "Upgrade");
    const char *connection = evhttp_find_header(h, "Connection");
    const char *version = evhttp_find_header(h, "Sec-WebSocket-Version");
    const char *key = evhttp_find_header(h, "Sec-WebSocket-Key");
    bool conn_ok = connection && has_token(connection, "upgrade");
    bool upgrade_ok = upgrade && has_token(upgrade, "websocket");
    if ((!conn_ok || !upgrade_ok) && cfg->not_websocket_error) {
        http_reply_error(hr, 400, "%s", cfg->not_websocket_error);
        return NULL;
    }
    if (!conn_ok) {
        http_reply_error(hr, 400, "Connection header did not include 'upgrade'");
        return NULL;
    }
    if (!upgrade_ok) {
        http_reply_error(hr, 400, "`Upgrade` header did not include 'websocket'");
        return NULL;
    }
    if (!version || strcmp(version, "13") != 0) {
        evhttp_add_header(evhttp_request_get_output_headers(hr->req), "Sec-WebSocket-Version",
                          "13");
        http_reply_error(hr, 426, "WebSocket version 13 is required");
        return NULL;
    }
    /* §4.1: 16 random bytes, base64: 24 characters ending "==" */
    if (!key || strlen(key) != 24 || strcmp(key + 22, "==") != 0) {
        http_reply_error(hr, 400, "`Sec-WebSocket-Key` header missing or invalid");
        return NULL;
    }
    return key;
}

ws_conn *ws_conn_accept(http_req *hr, const char *key, const ws_conn_cfg *cfg,
                        const ws_conn_ops *ops, void *ud)
{
    ws_conn *w = calloc(1, sizeof(*w));
    if (!w) {
        http_reply_error(hr, 500, "out of memory");
        return NULL;
    }
    w->cfg = cfg;
    w->ops = ops;
    w->ud = ud;
    w->msg.max = cfg->max_message;
    w->last_heard_ms = clock_mono_ms();
    snprintf(w->peer, sizeof(w->peer), "%s", hr->peer_ip);
    char accept[29];
    ws_accept_key(key, accept); /* key belongs to hr: before the detach */
    w->evcon = http_req_detach(hr);
    w->bev = evhttp_connection_get_bufferevent(w->evcon);
    evhttp_connection_set_closecb(w->evcon, ws_evcon_closed, w);
    w->ping_ev = event_new(bufferevent_get_base(w->bev), -1, EV_PERSIST, ws_ping_cb, w);
    if (w->ping_ev) {
        struct timeval tv = {cfg->ping_s, 0};
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
    return w;
}

void ws_conn_start(ws_conn *w)
{
    bufferevent_enable(w->bev, EV_READ | EV_WRITE);
    /* a client may have sent its first message right behind the handshake */
    if (evbuffer_get_length(bufferevent_get_input(w->bev)))
        ws_read_cb(w->bev, w);
}
