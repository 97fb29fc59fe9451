/* kumo.http.connect_websocket(URL) and the WebSocketStream it returns
 * (docs/reference/kumo.http/connect_websocket.md): a WebSocket client
 * (RFC 6455) over ws:// or wss://, with the frame code of net/websocket.c.
 *
 * Owns: per stream, the connection (a bufferevent on the event base of the
 * reactor whose VM connected, TLS through bufferevent_openssl with the
 * peer's certificate verified against the system CA store and its name
 * checked), the handshake answer until it is handed to Lua as a
 * kumo.http.Response, the messages received and not yet taken, and the
 * coroutine parked in connect_websocket, recv or recv_batch. Runs on that
 * reactor's thread only: the name is resolved by the reactor's async
 * resolver (net/dns.h, which reads /etc/hosts first), nothing blocks, and
 * the calling coroutine yields until there is something to give it.
 *
 * Failure: a Lua error naming the URL, from connect_websocket (bad URL,
 * name not found, refused, TLS verification, an answer that is not a valid
 * 101 upgrade, no answer within WS_HANDSHAKE_S), and from recv/recv_batch
 * once the stream is broken. After the server's Close frame recv returns
 * nil, as KumoMTA's does, and recv_batch with nothing left raises
 * "websocket closed" naming the peer's close code and reason. A peer that breaks the protocol or sends a
 * message over WS_MAX_MESSAGE gets a Close with the RFC's code and the
 * stream ends with an error saying why. The stream's __gc closes the
 * connection; a parked wait is abandoned at VM shutdown (klua_drop_waits).
 * Using a stream from another reactor's VM raises an error. */
#include "lua/lib/http_ws.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <lauxlib.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "core/duration.h"
#include "core/reactor.h"
#include "lua/klua.h"
#include "lua/lib/http_client.h"
#include "lua/lib/lualib.h"
#include "lua/lib/waiter.h"
#include "net/dns.h"
#include "net/tls.h"
#include "net/websocket.h"

#define WS_MT "kumo.http.WebSocketStream"
/* The largest message accepted (one frame or all fragments together). */
#define WS_MAX_MESSAGE (16u * 1024 * 1024)
/* Messages received and not yet taken beyond this stop reading from the
 * socket until recv takes some (the peer then waits in TCP). */
#define WS_QUEUE_MAX (4u * WS_MAX_MESSAGE)
#define WS_MAX_HANDSHAKE (64u * 1024)
#define WS_HANDSHAKE_S 60
#define WS_MAX_ADDRS 8

enum ws_state { WSS_RESOLVING, WSS_CONNECTING, WSS_HANDSHAKE, WSS_OPEN, WSS_CLOSED };
enum ws_wait { WSW_NONE, WSW_CONNECT, WSW_RECV, WSW_BATCH };

typedef struct wsq {
    struct wsq *next;
    size_t len;
    char data[];
} wsq;

typedef struct wsconn {
    waiter wt; /* first: the cancel callback casts back */
    enum ws_state state;
    enum ws_wait waiting;
    bool abandoned; /* the connect wait was cancelled during the lookup */
    bool paused;    /* reading stopped: too much queued */
    bool opened;    /* the upgrade succeeded (the stream may have ended since) */
    bool peer_closed; /* the server ended the stream with a Close frame */
    reactor *r;
    klua *vm;
    struct event_base *base;
    char *url, *host, *target, *hosthdr;
    uint16_t port;
    bool tls;
    dns_addr addrs[WS_MAX_ADDRS];
    size_t n_addrs, next_addr;
    struct bufferevent *bev;
    char key[25];
    long status;
    char *hdrs;
    size_t hdrs_len;
    ws_msg msg;
    wsq *qhead, *qtail;
    size_t qbytes;
    struct event *timer;   /* recv_batch's deadline */
    struct event *wake_ev; /* resumes the parked coroutine from the loop */
    char err[512];       /* why the connect failed or the stream ended */
} wsconn;

typedef struct ws_ud {
    wsconn *c;
} ws_ud;

/* ---- state ------------------------------------------------------------------------------ */

static void q_free(wsconn *c)
{
    while (c->qhead) {
        wsq *m = c->qhead;
        c->qhead = m->next;
        free(m);
    }
    c->qtail = NULL;
    c->qbytes = 0;
}

static void drop_bev(wsconn *c)
{
    if (c->bev) {
        bufferevent_free(c->bev);
        c->bev = NULL;
    }
}

static void conn_free(wsconn *c)
{
    drop_bev(c);
    if (c->timer)
        event_free(c->timer);
    if (c->wake_ev)
        event_free(c->wake_ev);
    q_free(c);
    ws_msg_fini(&c->msg);
    free(c->url);
    free(c->host);
    free(c->target);
    free(c->hosthdr);
    free(c->hdrs);
    free(c);
}

/* Resumes the parked coroutine; its continuation reads the outcome from c.
 * The coroutine runs at once (klua_wait_resume), so this is only called
 * from the top of a libevent callback: nothing touches c afterwards (the
 * coroutine may drop the stream). */
static void resume_now(wsconn *c)
{
    if (c->waiting == WSW_NONE)
        return;
    c->waiting = WSW_NONE;
    evtimer_del(c->timer);
    event_del(c->wake_ev);
    klua_call *call = waiter_finish(&c->wt);
    if (call)
        klua_wait_resume(call, 0);
}

static void wake_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    resume_now(arg);
}

/* Something for the parked coroutine: resume it on the next loop turn, out
 * of the callback that found it (which goes on using c). */
static void wake(wsconn *c)
{
    if (c->waiting != WSW_NONE)
        event_active(c->wake_ev, EV_TIMEOUT, 0);
}

/* The stream or the attempt ends: why (kept when one is set already). */
static void fail(wsconn *c, const char *fmt, const char *arg)
{
    if (!c->err[0])
        snprintf(c->err, sizeof(c->err), fmt, arg);
    drop_bev(c);
    c->state = WSS_CLOSED;
    wake(c);
}

static void send_frame(wsconn *c, uint8_t op, const void *p, size_t n)
{
    if (!c->bev)
        return;
    uint8_t *f = malloc(n + 14);
    if (!f)
        return;
    size_t fl = ws_client_frame(f, op, p, n);
    if (fl)
        bufferevent_write(c->bev, f, fl);
    free(f);
}

/* After our Close went out: the connection is done. */
static void closed_write_cb(struct bufferevent *bev, void *arg)
{
    (void)bev;
    drop_bev(arg);
}

static void closed_event_cb(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    (void)what;
    drop_bev(arg);
}

/* Sends a Close with code and ends the stream once it is written. */
static void close_with(wsconn *c, unsigned code)
{
    uint8_t p[2] = {(uint8_t)(code >> 8), (uint8_t)code};
    send_frame(c, WS_OP_CLOSE, p, 2);
    c->state = WSS_CLOSED;
    if (c->bev) {
        bufferevent_disable(c->bev, EV_READ);
        bufferevent_setcb(c->bev, NULL, closed_write_cb, closed_event_cb, c);
        struct timeval tv = {5, 0};
        bufferevent_set_timeouts(c->bev, NULL, &tv);
    }
    wake(c);
}

/* ---- frames --------------------------------------------------------------------------------- */

static void process_frames(wsconn *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    while (c->state == WSS_OPEN && !c->paused) {
        size_t n = evbuffer_get_length(in);
        if (n == 0)
            return;
        /* the header first: a large frame is made contiguous once, when
         * all of it is in, not at every read */
        size_t take = n < 14 ? n : 14;
        uint8_t *buf = evbuffer_pullup(in, (ev_ssize_t)take);
        ws_frame f;
        memset(&f, 0, sizeof(f));
        long used = ws_parse_frame(buf, take, false, WS_MAX_MESSAGE, &f);
        if (used == WS_AGAIN) {
            if (f.hdr_len == 0 || n < f.hdr_len + f.len)
                return; /* more to come */
            take = f.hdr_len + (size_t)f.len;
            buf = evbuffer_pullup(in, (ev_ssize_t)take);
            used = ws_parse_frame(buf, take, false, WS_MAX_MESSAGE, &f);
        }
        int r = used < 0 ? (int)used : ws_msg_feed(&c->msg, &f, buf + f.hdr_len);
        if (r < 0) {
            if (r == -WS_CLOSE_TOO_BIG)
                snprintf(c->err, sizeof(c->err),
                         "websocket %s: the server sent a message larger than %u bytes", c->url,
                         WS_MAX_MESSAGE);
            else
                snprintf(c->err, sizeof(c->err),
                         "websocket %s: the server broke the protocol (close code %d)", c->url,
                         -r);
            close_with(c, (unsigned)-r);
            return;
        }
        if (r == WS_MSG_DATA) {
            wsq *m = malloc(sizeof(*m) + c->msg.len);
            if (!m) {
                snprintf(c->err, sizeof(c->err), "websocket %s: out of memory", c->url);
                close_with(c, WS_CLOSE_TOO_BIG);
                return;
            }
            m->next = NULL;
            m->len = c->msg.len;
            memcpy(m->data, c->msg.data, c->msg.len);
            if (c->qtail)
                c->qtail->next = m;
            else
                c->qhead = m;
            c->qtail = m;
            c->qbytes += m->len;
            ws_msg_reset(&c->msg);
            if (c->qbytes > WS_QUEUE_MAX) {
                c->paused = true;
                bufferevent_disable(c->bev, EV_READ);
            }
            if (c->waiting == WSW_RECV)
                wake(c);
        } else if (r == WS_MSG_CONTROL) {
            const uint8_t *p = buf + f.hdr_len;
            if (f.opcode == WS_OP_PING) {
                send_frame(c, WS_OP_PONG, p, (size_t)f.len);
            } else if (f.opcode == WS_OP_CLOSE) {
                c->peer_closed = true;
                if (f.len >= 2)
                    snprintf(c->err, sizeof(c->err),
                             "websocket %s: closed by the server (code %u, reason \"%.*s\")",
                             c->url, (unsigned)p[0] << 8 | p[1], (int)f.len - 2,
                             (const char *)p + 2);
                else
                    snprintf(c->err, sizeof(c->err),
                             "websocket %s: closed by the server (no code)", c->url);
                /* §5.5.1: answer with the code received */
                unsigned code = f.len >= 2 ? ((unsigned)p[0] << 8 | p[1]) : WS_CLOSE_NORMAL;
                evbuffer_drain(in, (size_t)used);
                close_with(c, code);
                return;
            }
        }
        evbuffer_drain(in, (size_t)used);
    }
}

/* ---- the opening handshake -------------------------------------------------------------------- */

/* The value of header name in the lowercased block, or NULL. */
static const char *hdr_find(const char *hdrs, const char *name, size_t *len)
{
    size_t nl = strlen(name);
    for (const char *p = hdrs; p && *p;) {
        const char *eol = strchr(p, '\n');
        if (!eol)
            break;
        if ((size_t)(eol - p) > nl + 1 && strncmp(p, name, nl) == 0 && p[nl] == ':') {
            const char *v = p + nl + 1;
            while (v < eol && *v == ' ')
                v++;
            *len = (size_t)(eol - v);
            return v;
        }
        p = eol + 1;
    }
    return NULL;
}

/* Does the comma-separated list v[0..n) hold token (case-insensitive)? */
static bool has_token(const char *v, size_t n, const char *token)
{
    size_t tl = strlen(token);
    const char *end = v + n;
    while (v < end) {
        while (v < end && (*v == ' ' || *v == ','))
            v++;
        const char *s = v;
        while (v < end && *v != ',')
            v++;
        const char *e = v;
        while (e > s && e[-1] == ' ')
            e--;
        if ((size_t)(e - s) == tl && strncasecmp(s, token, tl) == 0)
            return true;
    }
    return false;
}

/* Parses the answer's head (head[0..n), without the blank line). */
static bool parse_answer(wsconn *c, char *head, size_t n)
{
    head[n] = 0;
    char *eol = strstr(head, "\r\n");
    if (eol)
        *eol = 0;
    int status = 0, off = 0;
    if (sscanf(head, "HTTP/1.%*1[01] %3d%n", &status, &off) != 1 || status < 100) {
        fail(c, "websocket %s: the server did not answer with HTTP", c->url);
        return false;
    }
    c->status = status;
    size_t cap = n + 1, len = 0;
    char *h = malloc(cap);
    if (!h) {
        fail(c, "websocket %s: out of memory", c->url);
        return false;
    }
    for (char *p = eol ? eol + 2 : head + n; *p;) {
        char *e = strstr(p, "\r\n");
        size_t ll = e ? (size_t)(e - p) : strlen(p);
        char *colon = memchr(p, ':', ll);
        if (colon && colon > p) {
            for (char *q = p; q < colon; q++)
                h[len++] = (char)tolower((unsigned char)*q);
            h[len++] = ':';
            h[len++] = ' ';
            const char *v = colon + 1, *ve = p + ll;
            while (v < ve && (*v == ' ' || *v == '\t'))
                v++;
            while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
                ve--;
            memcpy(h + len, v, (size_t)(ve - v));
            len += (size_t)(ve - v);
            h[len++] = '\n';
        }
        if (!e)
            break;
        p = e + 2;
    }
    h[len] = 0;
    c->hdrs = h;
    c->hdrs_len = len;
    if (status != 101) {
        snprintf(c->err, sizeof(c->err),
                 "websocket %s: the server answered HTTP status %d instead of 101 Switching "
                 "Protocols",
                 c->url, status);
        fail(c, "%s", "");
        return false;
    }
    size_t vl;
    const char *v = hdr_find(h, "upgrade", &vl);
    if (!v || !has_token(v, vl, "websocket")) {
        fail(c, "websocket %s: the 101 answer lacks Upgrade: websocket", c->url);
        return false;
    }
    v = hdr_find(h, "connection", &vl);
    if (!v || !has_token(v, vl, "upgrade")) {
        fail(c, "websocket %s: the 101 answer lacks Connection: Upgrade", c->url);
        return false;
    }
    char want[29];
    ws_accept_key(c->key, want);
    v = hdr_find(h, "sec-websocket-accept", &vl);
    if (!v || vl != 28 || memcmp(v, want, 28) != 0) {
        fail(c, "websocket %s: the server's Sec-WebSocket-Accept is missing or wrong", c->url);
        return false;
    }
    return true;
}

static void read_cb(struct bufferevent *bev, void *arg)
{
    wsconn *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    if (c->state == WSS_HANDSHAKE) {
        struct evbuffer_ptr end = evbuffer_search(in, "\r\n\r\n", 4, NULL);
        if (end.pos < 0) {
            if (evbuffer_get_length(in) > WS_MAX_HANDSHAKE)
                fail(c, "websocket %s: the server's answer is too large", c->url);
            return;
        }
        size_t n = (size_t)end.pos;
        if (n > WS_MAX_HANDSHAKE) {
            fail(c, "websocket %s: the server's answer is too large", c->url);
            return;
        }
        char *head = malloc(n + 1);
        if (!head) {
            fail(c, "websocket %s: out of memory", c->url);
            return;
        }
        evbuffer_remove(in, head, n);
        evbuffer_drain(in, 4);
        bool ok = parse_answer(c, head, n);
        free(head);
        if (!ok)
            return;
        c->state = WSS_OPEN;
        c->opened = true;
        bufferevent_set_timeouts(bev, NULL, NULL); /* a stream may stay quiet */
        wake(c);
    }
    if (c->state == WSS_OPEN)
        process_frames(c);
}

static void connect_next(wsconn *c);
static void batch_timer_cb(evutil_socket_t fd, short what, void *arg);

static void event_cb(struct bufferevent *bev, short what, void *arg)
{
    wsconn *c = arg;
    if (what & BEV_EVENT_CONNECTED) {
        c->state = WSS_HANDSHAKE;
        if (ws_client_key(c->key) < 0) {
            fail(c, "websocket %s: no randomness for the key", c->url);
            return;
        }
        evbuffer_add_printf(bufferevent_get_output(bev),
                            "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\n"
                            "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                            "Sec-WebSocket-Version: 13\r\n\r\n",
                            c->target, c->hosthdr, c->key);
        return;
    }
    if (c->state == WSS_CONNECTING) {
        const char *ip = c->addrs[c->next_addr - 1].text;
        SSL *ssl = c->tls ? bufferevent_openssl_get_ssl(bev) : NULL;
        long vr = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;
        unsigned long e = c->tls ? bufferevent_get_openssl_error(bev) : 0;
        if (vr != X509_V_OK) {
            snprintf(c->err, sizeof(c->err),
                     "websocket %s: TLS certificate verification failed: %s", c->url,
                     X509_verify_cert_error_string(vr));
        } else if (e) {
            char es[200];
            ERR_error_string_n(e, es, sizeof(es));
            snprintf(c->err, sizeof(c->err), "websocket %s: TLS handshake with %s failed: %s",
                     c->url, ip, es);
        } else if (c->next_addr < c->n_addrs) {
            drop_bev(c);
            connect_next(c);
            return;
        } else {
            snprintf(c->err, sizeof(c->err), "websocket %s: cannot connect to %s port %u%s",
                     c->url, ip, c->port, (what & BEV_EVENT_TIMEOUT) ? ": timed out" : "");
        }
        fail(c, "%s", "");
        return;
    }
    if (c->state == WSS_HANDSHAKE) {
        fail(c, (what & BEV_EVENT_TIMEOUT) ? "websocket %s: no answer to the upgrade request"
                                           : "websocket %s: the connection ended before the "
                                             "upgrade answer",
             c->url);
        return;
    }
    /* open: the peer went away without a Close */
    if (c->state == WSS_OPEN)
        process_frames(c); /* what came before the end */
    if (c->state == WSS_OPEN)
        fail(c, (what & BEV_EVENT_EOF) ? "websocket %s: the server closed the connection"
                                       : "websocket %s: the connection failed",
             c->url);
}


/* ---- connecting ------------------------------------------------------------------------------ */

static SSL_CTX *g_ctx;
static char g_ctx_err[256];

static void ctx_init(void)
{
    g_ctx = tls_client_ctx_new(1, g_ctx_err, sizeof(g_ctx_err));
}

/* One verifying client context for every stream of the process (an SSL_CTX
 * is shared read-only across threads); the CA store is the system's
 * (OpenSSL's default paths, SSL_CERT_FILE / SSL_CERT_DIR honoured). */
static SSL_CTX *client_ctx(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, ctx_init);
    return g_ctx;
}

static bool is_ip_literal(const char *h)
{
    unsigned char b[16];
    return inet_pton(AF_INET, h, b) == 1 || inet_pton(AF_INET6, h, b) == 1;
}

static void connect_next(wsconn *c)
{
    const dns_addr *a = &c->addrs[c->next_addr++];
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    socklen_t sl;
    if (a->family == AF_INET) {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
        s4->sin_family = AF_INET;
        s4->sin_port = htons(c->port);
        s4->sin_addr = a->u.v4;
        sl = sizeof(*s4);
    } else {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(c->port);
        s6->sin6_addr = a->u.v6;
        sl = sizeof(*s6);
    }
    c->state = WSS_CONNECTING;
    if (c->tls) {
        SSL_CTX *ctx = client_ctx();
        SSL *ssl = ctx ? SSL_new(ctx) : NULL;
        if (!ssl) {
            snprintf(c->err, sizeof(c->err), "websocket %s: cannot set up TLS: %s", c->url,
                     g_ctx_err[0] ? g_ctx_err : "SSL_new failed");
            fail(c, "%s", "");
            return;
        }
        X509_VERIFY_PARAM *vp = SSL_get0_param(ssl);
        bool ok;
        if (is_ip_literal(c->host)) {
            ok = X509_VERIFY_PARAM_set1_ip_asc(vp, c->host) == 1;
        } else {
            X509_VERIFY_PARAM_set_hostflags(vp, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
            ok = SSL_set1_host(ssl, c->host) == 1 &&
                 SSL_set_tlsext_host_name(ssl, c->host) == 1;
        }
        if (!ok) {
            SSL_free(ssl);
            fail(c, "websocket %s: cannot set the TLS peer name", c->url);
            return;
        }
        c->bev = bufferevent_openssl_socket_new(c->base, -1, ssl, BUFFEREVENT_SSL_CONNECTING,
                                                BEV_OPT_CLOSE_ON_FREE);
        if (c->bev)
            bufferevent_openssl_set_allow_dirty_shutdown(c->bev, 1);
        else
            SSL_free(ssl);
    } else {
        c->bev = bufferevent_socket_new(c->base, -1, BEV_OPT_CLOSE_ON_FREE);
    }
    if (!c->bev) {
        fail(c, "websocket %s: cannot create a socket", c->url);
        return;
    }
    bufferevent_setcb(c->bev, read_cb, NULL, event_cb, c);
    struct timeval tv = {WS_HANDSHAKE_S, 0};
    bufferevent_set_timeouts(c->bev, &tv, &tv);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    if (bufferevent_socket_connect(c->bev, (struct sockaddr *)&ss, (int)sl) != 0) {
        /* an immediate failure: the next address, or the error */
        event_cb(c->bev, BEV_EVENT_ERROR, c);
    }
}

static void on_addrs(const dns_addrs *res, void *ud)
{
    wsconn *c = ud;
    if (c->abandoned) {
        conn_free(c);
        return;
    }
    if (res->status != DNS_OK || res->n_addrs == 0) {
        snprintf(c->err, sizeof(c->err), "websocket %s: cannot resolve %s: %s", c->url, c->host,
                 res->error ? res->error : dns_status_name(res->status));
        fail(c, "%s", "");
        return;
    }
    c->n_addrs = res->n_addrs < WS_MAX_ADDRS ? res->n_addrs : WS_MAX_ADDRS;
    memcpy(c->addrs, res->addrs, c->n_addrs * sizeof(dns_addr));
    connect_next(c);
}

static void on_addrs_drop(void *ud)
{
    wsconn *c = ud;
    if (c->abandoned)
        conn_free(c);
    /* else the wait is still parked: its cancel frees c at shutdown */
    else
        c->abandoned = true;
}

/* Shutdown with a coroutine parked on c. */
static void ws_cancel(klua_wait *w)
{
    wsconn *c = (wsconn *)w;
    enum ws_wait was = c->waiting;
    c->waiting = WSW_NONE;
    evtimer_del(c->timer);
    event_del(c->wake_ev);
    if (was != WSW_CONNECT)
        return; /* the stream's userdata owns c: __gc frees it */
    if (c->state == WSS_RESOLVING && !c->abandoned)
        c->abandoned = true; /* the lookup's answer or drop frees c */
    else
        conn_free(c);
}

/* Splits a ws:// or wss:// URL. Returns an error text or NULL. */
static const char *parse_url(wsconn *c, const char *url)
{
    const char *p;
    if (strncasecmp(url, "ws://", 5) == 0) {
        p = url + 5;
        c->port = 80;
    } else if (strncasecmp(url, "wss://", 6) == 0) {
        p = url + 6;
        c->port = 443;
        c->tls = true;
    } else {
        return "the URL must start with ws:// or wss://";
    }
    size_t al = strcspn(p, "/?#");
    const char *auth = p, *rest = p + al;
    if (memchr(auth, '@', al))
        return "credentials in the URL are not supported";
    const char *hs = auth, *he;
    const char *portp = NULL;
    if (al && *auth == '[') {
        const char *rb = memchr(auth, ']', al);
        if (!rb)
            return "unterminated [ in the host";
        hs = auth + 1;
        he = rb;
        if (rb + 1 < auth + al) {
            if (rb[1] != ':')
                return "garbage after the IPv6 address";
            portp = rb + 2;
        }
    } else {
        const char *colon = memchr(auth, ':', al);
        he = colon ? colon : auth + al;
        if (colon)
            portp = colon + 1;
    }
    if (he == hs)
        return "the URL has no host";
    if (portp) {
        unsigned long v = 0;
        const char *q = portp;
        for (; q < auth + al; q++) {
            if (*q < '0' || *q > '9')
                return "invalid port";
            v = v * 10 + (unsigned long)(*q - '0');
            if (v > 65535)
                return "invalid port";
        }
        if (q == portp || v == 0)
            return "invalid port";
        c->port = (uint16_t)v;
    }
    for (const char *q = hs; q < he; q++)
        if ((unsigned char)*q <= ' ' || *q == '%')
            return "invalid character in the host";
    size_t rl = strcspn(rest, "#");
    c->host = strndup(hs, (size_t)(he - hs));
    c->hosthdr = strndup(auth, al);
    c->target = malloc(rl + 2);
    if (!c->host || !c->hosthdr || !c->target)
        return "out of memory";
    for (size_t i = 0; i < rl; i++)
        if ((unsigned char)rest[i] <= ' ' || rest[i] == 0x7f)
            return "invalid character in the path";
    if (rl == 0 || rest[0] == '?')
        snprintf(c->target, rl + 2, "/%.*s", (int)rl, rest);
    else
        snprintf(c->target, rl + 2, "%.*s", (int)rl, rest);
    return NULL;
}

static void check_context(lua_State *L, const char *fname, reactor **re)
{
    *re = reactor_current();
    if (!*re || !lua_isyieldable(L) || !klua_current_call(L))
        luaL_error(L, "%s: may only be called from an event handler or a task (it waits for "
                      "the server)",
                   fname);
}

static int connect_k(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    wsconn *c = (wsconn *)ctx;
    if (!c->opened) {
        lua_pushstring(L, c->err[0] ? c->err : "websocket: cannot connect");
        conn_free(c);
        return lua_error(L);
    }
    /* the userdata takes c over before anything may raise */
    ws_ud *u = lua_newuserdatauv(L, sizeof(*u), 0);
    u->c = c;
    luaL_setmetatable(L, WS_MT);
    http_response_push(L, c->status, c->hdrs, c->hdrs_len, NULL, 0, -1);
    return 2;
}

static int l_connect_websocket(lua_State *L)
{
    const char *fname = "kumo.http.connect_websocket";
    const char *url = luaL_checkstring(L, 1);
    reactor *re;
    check_context(L, fname, &re);
    wsconn *c = calloc(1, sizeof(*c));
    if (!c)
        return luaL_error(L, "%s: out of memory", fname);
    c->msg.max = WS_MAX_MESSAGE;
    const char *bad = parse_url(c, url);
    c->url = strdup(url);
    if (bad || !c->url) {
        conn_free(c);
        return luaL_error(L, "%s: invalid URL \"%s\": %s", fname, url, bad ? bad : "out of memory");
    }
    c->r = re;
    c->vm = klua_call_vm(klua_current_call(L));
    c->base = reactor_base(re);
    c->timer = evtimer_new(c->base, batch_timer_cb, c);
    c->wake_ev = event_new(c->base, -1, 0, wake_cb, c);
    if (!c->timer || !c->wake_ev) {
        conn_free(c);
        return luaL_error(L, "%s: out of memory", fname);
    }
    c->state = WSS_RESOLVING;
    /* the answer comes later, never from inside this call */
    if (dns_lookup_addrs_owned(c->host, DNS_IPV4_AND_IPV6, on_addrs, c, on_addrs_drop) != 0) {
        conn_free(c);
        return luaL_error(L, "%s: cannot start resolving %s", fname, lua_tostring(L, 1));
    }
    if (!waiter_park(&c->wt, L, ws_cancel)) {
        c->abandoned = true; /* the lookup's answer frees c */
        return luaL_error(L, "%s: may only be called from an event handler or a task", fname);
    }
    c->waiting = WSW_CONNECT;
    return lua_yieldk(L, 0, (lua_KContext)c, connect_k);
}

/* ---- the stream --------------------------------------------------------------------------------- */

static wsconn *check_stream(lua_State *L, const char *method)
{
    ws_ud *u = luaL_testudata(L, 1, WS_MT);
    if (!u)
        luaL_error(L, "stream:%s: must be called as a method on a stream from "
                      "kumo.http.connect_websocket",
                   method);
    if (!u->c)
        luaL_error(L, "stream:%s: the stream is closed", method);
    wsconn *c = u->c;
    klua_call *call = klua_current_call(L);
    if (!call)
        luaL_error(L, "stream:%s: may only be called from an event handler or a task", method);
    if (reactor_current() != c->r || klua_call_vm(call) != c->vm)
        luaL_error(L, "stream:%s: the stream belongs to another thread's Lua state; use it "
                      "from the task that connected it",
                   method);
    if (c->waiting != WSW_NONE)
        luaL_error(L, "stream:%s: another coroutine is already waiting on this stream", method);
    if (!lua_isyieldable(L))
        luaL_error(L, "stream:%s: may only be called from an event handler or a task", method);
    return c;
}

static const char *closed_text(wsconn *c)
{
    return c->err[0] ? c->err : "websocket closed";
}

/* Takes the first queued message: pushes it and frees it. */
static void pop_message(lua_State *L, wsconn *c)
{
    wsq *m = c->qhead;
    c->qhead = m->next;
    if (!c->qhead)
        c->qtail = NULL;
    c->qbytes -= m->len;
    /* lua_pushlstring may raise (memory): keep m until it is pushed */
    m->next = NULL;
    lua_pushlstring(L, m->data, m->len);
    free(m);
}

/* Reading stopped for a full queue: start again once it drained. */
static void maybe_unpause(wsconn *c)
{
    if (c->paused && c->qbytes <= WS_QUEUE_MAX / 2 && c->state == WSS_OPEN && c->bev) {
        c->paused = false;
        bufferevent_enable(c->bev, EV_READ);
        process_frames(c);
    }
}

static int recv_k(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    (void)ctx;
    ws_ud *u = luaL_checkudata(L, 1, WS_MT);
    wsconn *c = u->c;
    if (c->qhead) {
        pop_message(L, c);
        maybe_unpause(c);
        return 1;
    }
    if (c->state == WSS_OPEN)
        return luaL_error(L, "stream:recv: woken without a message"); /* cannot happen */
    if (c->peer_closed) {
        /* the orderly end of the stream: nil, as KumoMTA's recv gives */
        lua_pushnil(L);
        return 1;
    }
    return luaL_error(L, "stream:recv: %s", closed_text(c));
}

static void park(lua_State *L, wsconn *c, enum ws_wait kind, const char *fname)
{
    if (!waiter_park(&c->wt, L, ws_cancel))
        luaL_error(L, "%s: may only be called from an event handler or a task", fname);
    c->waiting = kind;
}

static int l_recv(lua_State *L)
{
    wsconn *c = check_stream(L, "recv");
    lua_settop(L, 1);
    if (c->qhead || c->state != WSS_OPEN)
        return recv_k(L, LUA_OK, 0);
    park(L, c, WSW_RECV, "stream:recv");
    return lua_yieldk(L, 0, 0, recv_k);
}

static int batch_k(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    (void)ctx;
    ws_ud *u = luaL_checkudata(L, 1, WS_MT);
    wsconn *c = u->c;
    if (!c->qhead && c->state != WSS_OPEN)
        return luaL_error(L, "stream:recv_batch: %s", closed_text(c));
    lua_newtable(L);
    for (lua_Integer i = 1; c->qhead; i++) {
        pop_message(L, c);
        lua_rawseti(L, -2, i);
    }
    maybe_unpause(c);
    return 1;
}

static void batch_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    resume_now(arg);
}

static int l_recv_batch(lua_State *L)
{
    const char *fname = "stream:recv_batch";
    wsconn *c = check_stream(L, "recv_batch");
    int64_t ms;
    if (lua_type(L, 2) == LUA_TNUMBER) {
        double s = lua_tonumber(L, 2);
        if (!(s >= 0 && s < 1e9))
            return luaL_error(L, "%s: the duration must be a non-negative number of seconds",
                              fname);
        ms = (int64_t)(s * 1000.0 + 0.5);
    } else if (lua_type(L, 2) == LUA_TSTRING) {
        int64_t ns;
        const char *s = lua_tostring(L, 2);
        if (duration_parse(s, &ns) < 0 || ns < 0)
            return luaL_error(L, "%s: invalid duration \"%s\"", fname, s);
        ms = ns / 1000000;
    } else {
        return luaL_error(L, "%s: expected a duration string like \"10s\" or a number of "
                             "seconds, got %s",
                          fname, luaL_typename(L, 2));
    }
    lua_settop(L, 1);
    if (c->state != WSS_OPEN || ms == 0)
        return batch_k(L, LUA_OK, 0);
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
    park(L, c, WSW_BATCH, fname);
    evtimer_add(c->timer, &tv);
    return lua_yieldk(L, 0, 0, batch_k);
}

/* A TLS stream dropped by __gc: its Close is being written. */
static void linger_write_cb(struct bufferevent *bev, void *arg)
{
    (void)arg;
    bufferevent_free(bev);
}

static void linger_event_cb(struct bufferevent *bev, short what, void *arg)
{
    (void)what;
    (void)arg;
    bufferevent_free(bev);
}

static int l_stream_gc(lua_State *L)
{
    ws_ud *u = luaL_checkudata(L, 1, WS_MT);
    wsconn *c = u->c;
    u->c = NULL;
    if (!c)
        return 0;
    if (c->waiting != WSW_NONE) {
        /* cannot happen: a parked coroutine holds the stream; leave c
         * rather than free what a callback may still use */
        return 0;
    }
    if (c->state == WSS_OPEN && c->bev && reactor_current() == c->r) {
        /* say goodbye (1001, going away): plain sockets write it now; a
         * TLS stream lingers until it is written (at most 2 s) */
        static const uint8_t going_away[2] = {WS_CLOSE_GOING_AWAY >> 8,
                                              WS_CLOSE_GOING_AWAY & 0xff};
        send_frame(c, WS_OP_CLOSE, going_away, 2);
        struct bufferevent *bev = c->bev;
        struct evbuffer *out = bufferevent_get_output(bev);
        if (!c->tls) {
            /* the output buffer belongs to the bufferevent (frozen for
             * us): send a copy; the frame is tiny and the buffer empty */
            size_t n = evbuffer_get_length(out);
            const unsigned char *p = evbuffer_pullup(out, (ev_ssize_t)n);
            if (p)
                (void)send(bufferevent_getfd(bev), p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        }
        if (c->tls && evbuffer_get_length(out) > 0) {
            c->bev = NULL;
            bufferevent_disable(bev, EV_READ);
            bufferevent_setcb(bev, NULL, linger_write_cb, linger_event_cb, NULL);
            struct timeval tv = {2, 0};
            bufferevent_set_timeouts(bev, NULL, &tv);
        }
    }
    conn_free(c);
    return 0;
}

static int l_stream_tostring(lua_State *L)
{
    ws_ud *u = luaL_checkudata(L, 1, WS_MT);
    lua_pushfstring(L, "WebSocketStream(%s)", u->c ? u->c->url : "closed");
    return 1;
}

/* ---- registration ------------------------------------------------------------------------------- */

/* After kumo.http's own opener (modules.c registers them in that order):
 * adds connect_websocket to kumo.http (the kumo table is at -1). */
static void http_ws_open(lua_State *L)
{
    static const luaL_Reg methods[] = {
        {"recv", l_recv}, {"recv_batch", l_recv_batch}, {NULL, NULL}};
    lualib_new_metatable(L, WS_MT, methods, l_stream_gc, l_stream_tostring);
    luaL_getsubtable(L, -1, "http");
    lua_pushcfunction(L, l_connect_websocket);
    lua_setfield(L, -2, "connect_websocket");
    lua_pop(L, 1);
}

void http_ws_lua_register(void)
{
    klua_register_opener(http_ws_open);
}
