/* A server-side websocket on a connection taken over from evhttp: the
 * upgrade handshake (RFC 6455 §4.2), then frames in and out on the
 * connection's bufferevent, pings, and the closing handshake. The trace
 * endpoints (trace_http.c) and the TSA daemon's subscribers
 * (tsa/tsa_http.c) are built on it; what they stream, and from which
 * queue, is theirs.
 *
 * libevent 2.1's evhttp has no upgrade: once the request is checked the
 * connection is detached from its request (http_req_detach), the 101 is
 * written here and the bufferevent's callbacks are replaced. The evhttp
 * connection object stays the owner of the socket, so it is freed with
 * evhttp_connection_free when the websocket ends; if evhttp frees it first
 * (evhttp_free at shutdown) its close callback ends the websocket.
 *
 * Thread: the reactor that accepted the request, for the whole life of
 * the websocket. Failure: a request that is not a websocket upgrade is
 * answered 400 (426 for another protocol version); a frame the RFC does
 * not allow ends the websocket with a Close frame naming the reason. */
#ifndef KUMOD_HTTP_WS_CONN_H
#define KUMOD_HTTP_WS_CONN_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "http/request.h"
#include "net/websocket.h"

typedef struct ws_conn ws_conn;

typedef struct ws_conn_cfg {
    const char *module; /* diagnostics module of the log lines */
    const char *what;   /* names the websocket in them: "trace websocket" */
    size_t max_message; /* largest message accepted from the client */
    int ping_s;         /* keepalive ping interval */
    int dead_s;         /* > 0: closed (1001) when nothing is heard for this long */
    const char *ping_payload;
    /* The 400 text for a request without "Connection: upgrade" or
     * "Upgrade: websocket"; NULL: one text for each, as KumoMTA's axum
     * says them. */
    const char *not_websocket_error;
} ws_conn_cfg;

/* The owner's callbacks; ud is the pointer given to ws_conn_accept. */
typedef struct ws_conn_ops {
    /* A complete text or binary message (data valid during the call). May
     * send and close. NULL: messages are read and dropped. */
    void (*on_message)(ws_conn *ws, void *ud, uint8_t opcode, const uint8_t *data, size_t len);
    /* The socket took what was written (not called once closing). NULL:
     * nothing. */
    void (*on_writable)(ws_conn *ws, void *ud);
    /* The websocket is over: release ud. shutdown: evhttp is freeing the
     * connection; otherwise either side closed it. ws is freed after the
     * call returns; called exactly once, never from inside
     * ws_conn_accept. */
    void (*on_end)(ws_conn *ws, void *ud, bool shutdown);
} ws_conn_ops;

/* Checks an upgrade request and returns its Sec-WebSocket-Key (owned by
 * the request), or NULL after answering it (400 or 426). */
const char *ws_conn_check_upgrade(http_req *hr, const ws_conn_cfg *cfg);

/* Takes the connection over from hr (answered by the 101 queued here; hr
 * is gone on return), with key from ws_conn_check_upgrade. Nothing is read
 * until ws_conn_start. cfg (static) and ops are kept. Returns NULL after
 * answering 500 when out of memory (hr answered, not taken over). */
ws_conn *ws_conn_accept(http_req *hr, const char *key, const ws_conn_cfg *cfg,
                        const ws_conn_ops *ops, void *ud);

/* Starts reading, and handles what the client sent right behind its
 * handshake: ws and ud may be gone on return. */
void ws_conn_start(ws_conn *ws);

/* Queues one frame (FIN set, unmasked) with payload p[0..n). */
void ws_conn_send(ws_conn *ws, uint8_t opcode, const void *p, size_t n);

/* Queues a Close frame (§5.5.1) with code and reason (NULL: none; cut to
 * fit a control frame) and stops reading; the websocket ends once it is
 * written. A second call does nothing. */
void ws_conn_close(ws_conn *ws, int code, const char *reason);

bool ws_conn_closing(const ws_conn *ws);
/* Bytes queued on the socket and not yet written. */
size_t ws_conn_pending_out(const ws_conn *ws);
/* The client's address, as http_req had it. */
const char *ws_conn_peer(const ws_conn *ws);

#endif
