/* A node's subscriptions to TSA daemons.
 *
 * Owns: per subscribed URL, a websocket client to URL/subscribe_event_v1
 * and a poller of URL/get_config_v1/shaping.toml (HTTP/1.0, once a
 * second), both on reactor 0's event base; the admin entries it created
 * (by the item's rule_hash, so an item sent again, as every reconnect
 * sends the whole current state, replaces rather than piles up); the
 * overrides last fetched (behind ov_lock: the shaping helper reads them
 * from any reactor's VM).
 *
 * Failure: a daemon that is down or answers wrongly is logged once per
 * outage (WARN, naming the URL and the reason) and retried with a delay
 * growing from 1 s to 10 s; mail keeps flowing meanwhile, with the
 * suspensions already applied running to their expiry and the overrides
 * last fetched kept. Items that are not understood are logged and
 * skipped. */
#include "tsa/tsa_sub.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <netdb.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "core/diag.h"
#include "core/kerr.h"
#include "core/reactor.h"
#include "net/websocket.h"
#include "lua/klua.h"
#include "lua/lib/toml_json.h"
#include "queue/admin.h"

#define SMOD "kumod::tsa"
#define WS_MAX (1024u * 1024)
#define POLL_MS 1000
#define MAX_BACKOFF_S 10

typedef struct tsub {
    struct tsub *next;
    char *url, *host, *prefix;
    struct sockaddr_storage addr;
    socklen_t alen;
    struct event_base *base;
    /* websocket */
    struct bufferevent *ws;
    bool ws_open;
    ws_msg msg;
    int backoff_s;
    bool down_logged;
    struct event *retry_ev;
    /* config poll */
    struct bufferevent *poll;
    struct event *poll_ev;
    char *last_body;
    bool poll_down_logged;
    json_t *overrides; /* under ov_lock */
    json_t *applied;   /* rule_hash -> {id, expires, kind}; reactor 0 only */
} tsub;

static pthread_mutex_t ov_lock = PTHREAD_MUTEX_INITIALIZER;
static tsub *subs;

static void ws_connect(tsub *s);

/* ---- applying what the daemon decided ------------------------------------------ */

static void bounce_done(void *ud, int http_status, json_t *result, const char *error)
{
    (void)ud;
    if (http_status != 200)
        DERROR(SMOD, "TSA bounce could not be applied: %s", error ? error : "error");
    json_decref(result);
}

static void apply_item(tsub *s, json_t *item)
{
    const char *kind = NULL;
    json_t *body = NULL;
    const char *k;
    json_t *v;
    json_object_foreach(item, k, v)
    {
        kind = k;
        body = v;
    }
    const char *rule_hash = json_string_value(json_object_get(body, "rule_hash"));
    const char *reason = json_string_value(json_object_get(body, "reason"));
    const char *expires = json_string_value(json_object_get(body, "expires"));
    if (!kind || !json_is_object(body) || !rule_hash || !reason || !expires) {
        char *t = json_dumps(item, JSON_COMPACT);
        DERROR(SMOD, "Received unsupported record type %s from TSA %s", t ? t : "?", s->url);
        free(t);
        return;
    }
    char key[1200];
    snprintf(key, sizeof(key), "%s|%s", kind, rule_hash);
    json_t *prev = json_object_get(s->applied, key);
    if (prev && strcmp(json_string_value(json_object_get(prev, "expires")), expires) == 0)
        return; /* already applied (a reconnect sends the whole state again) */
    char full_reason[1400];
    snprintf(full_reason, sizeof(full_reason), "%s (rule_hash=%s)", reason, rule_hash);
    json_t *req = json_pack("{s:s,s:s}", "reason", full_reason, "expires", expires);
    json_t *result = NULL;
    char err[256] = "";
    int rc = 0;
    const char *prev_id = prev ? json_string_value(json_object_get(prev, "id")) : NULL;
    if (strcmp(kind, "ReadyQSuspension") == 0 || strcmp(kind, "ReadyQ") == 0) {
        if (prev_id)
            queue_admin_suspend_readyq_cancel(prev_id);
        json_object_set(req, "name", json_object_get(body, "site_name"));
        rc = queue_admin_suspend_readyq(req, &result, err, sizeof(err));
    } else if (strcmp(kind, "SchedQSuspension") == 0 || strcmp(kind, "SchedQ") == 0) {
        if (prev_id)
            queue_admin_suspend_cancel(prev_id);
        static const char *f[] = {"domain", "tenant", "campaign"};
        for (int i = 0; i < 3; i++) {
            json_t *x = json_object_get(body, f[i]);
            if (json_is_string(x))
                json_object_set(req, f[i], x);
        }
        rc = queue_admin_suspend(req, &result, err, sizeof(err));
    } else if (strcmp(kind, "SchedQBounce") == 0) {
        if (prev_id)
            queue_admin_bounce_cancel(prev_id);
        static const char *f[] = {"domain", "tenant", "campaign"};
        for (int i = 0; i < 3; i++) {
            json_t *x = json_object_get(body, f[i]);
            if (json_is_string(x))
                json_object_set(req, f[i], x);
        }
        queue_admin_bounce(req, bounce_done, NULL);
        json_object_set_new(s->applied, key, json_pack("{s:s}", "expires", expires));
        DINFO(SMOD, "TSA %s: bounce %s", s->url, full_reason);
        json_decref(req);
        return;
    } else {
        DERROR(SMOD, "Received unsupported record type %s from TSA %s", kind, s->url);
        json_decref(req);
        return;
    }
    json_decref(req);
    if (rc != 0) {
        DERROR(SMOD, "TSA %s: cannot apply %s: %s", s->url, kind, err);
        json_decref(result);
        return;
    }
    const char *id = json_string_value(json_object_get(result, "id"));
    json_object_set_new(s->applied, key,
                        json_pack("{s:s,s:s}", "expires", expires, "id", id ? id : ""));
    DINFO(SMOD, "TSA %s: %s applied until %s: %s", s->url, kind, expires, full_reason);
    json_decref(result);
}

/* ---- the websocket ------------------------------------------------------------------ */

static void ws_send(tsub *s, uint8_t op, const void *p, size_t n)
{
    uint8_t *f = malloc(n + 14);
    if (!f)
        abort();
    size_t fl = ws_client_frame(f, op, p, n);
    if (fl)
        evbuffer_add(bufferevent_get_output(s->ws), f, fl);
    free(f);
}

static void retry_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    ws_connect(arg);
}

/* The connection failed or ended: try again later. */
static void ws_down(tsub *s, const char *why)
{
    if (s->ws) {
        bufferevent_free(s->ws);
        s->ws = NULL;
    }
    s->ws_open = false;
    ws_msg_reset(&s->msg);
    s->backoff_s = s->backoff_s ? s->backoff_s * 2 : 1;
    if (s->backoff_s > MAX_BACKOFF_S)
        s->backoff_s = MAX_BACKOFF_S;
    if (!s->down_logged)
        DWARN(SMOD, "TSA subscription %s: %s; retrying (every %d s at most); mail keeps flowing",
              s->url, why, MAX_BACKOFF_S);
    else
        DDEBUG(SMOD, "TSA subscription %s: %s; retrying in %d s", s->url, why, s->backoff_s);
    s->down_logged = true;
    struct timeval tv = {s->backoff_s, 0};
    evtimer_add(s->retry_ev, &tv);
}

static void ws_read_cb(struct bufferevent *bev, void *arg)
{
    tsub *s = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    if (!s->ws_open) {
        struct evbuffer_ptr end = evbuffer_search(in, "\r\n\r\n", 4, NULL);
        if (end.pos < 0) {
            if (evbuffer_get_length(in) > 16384)
                ws_down(s, "oversized handshake answer");
            return;
        }
        char line[128] = "";
        size_t n = (size_t)end.pos < sizeof(line) - 1 ? (size_t)end.pos : sizeof(line) - 1;
        evbuffer_copyout(in, line, n);
        line[n] = 0;
        line[strcspn(line, "\r\n")] = 0;
        if (strncmp(line, "HTTP/1.1 101", 12) != 0) {
            char why[200];
            snprintf(why, sizeof(why), "subscribe_event_v1 answered '%s'", line);
            ws_down(s, why);
            return;
        }
        evbuffer_drain(in, (size_t)end.pos + 4);
        s->ws_open = true;
        s->backoff_s = 0;
        DINFO(SMOD, "TSA subscription %s: connected", s->url);
        s->down_logged = false;
    }
    for (;;) {
        size_t n = evbuffer_get_length(in);
        if (n == 0)
            return;
        size_t take = n < WS_MAX + 14 ? n : WS_MAX + 14;
        uint8_t *buf = evbuffer_pullup(in, (ev_ssize_t)take);
        ws_frame f;
        long used = ws_parse_frame(buf, take, false, WS_MAX, &f);
        if (used == WS_AGAIN)
            return;
        if (used < 0) {
            ws_down(s, "malformed websocket frame");
            return;
        }
        uint8_t *payload = buf + f.hdr_len;
        int r = ws_msg_feed(&s->msg, &f, payload);
        if (r < 0) {
            ws_down(s, "websocket protocol error");
            return;
        }
        if (r == WS_MSG_DATA) {
            json_error_t jerr;
            json_t *item = json_loadb((const char *)s->msg.data, s->msg.len, 0, &jerr);
            if (json_is_object(item))
                apply_item(s, item);
            else
                DERROR(SMOD, "TSA %s sent something that is not a JSON object: %s", s->url,
                       jerr.text);
            json_decref(item);
            ws_msg_reset(&s->msg);
        } else if (r == WS_MSG_CONTROL) {
            if (f.opcode == WS_OP_PING) {
                ws_send(s, WS_OP_PONG, payload, (size_t)f.len);
            } else if (f.opcode == WS_OP_CLOSE) {
                ws_down(s, "the daemon closed the stream");
                return;
            }
        }
        evbuffer_drain(in, (size_t)used);
    }
}

static void ws_event_cb(struct bufferevent *bev, short what, void *arg)
{
    tsub *s = arg;
    if (what & BEV_EVENT_CONNECTED) {
        char key[25];
        if (ws_client_key(key) < 0) {
            ws_down(s, "no randomness for the websocket key");
            return;
        }
        evbuffer_add_printf(bufferevent_get_output(bev),
                            "GET %s/subscribe_event_v1 HTTP/1.1\r\nHost: %s\r\n"
                            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                            "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n",
                            s->prefix, s->host, key);
        return;
    }
    ws_down(s, (what & BEV_EVENT_EOF) ? "connection closed" : "cannot connect");
}

static void ws_connect(tsub *s)
{
    s->ws = bufferevent_socket_new(s->base, -1, BEV_OPT_CLOSE_ON_FREE);
    if (!s->ws) {
        ws_down(s, "cannot create a socket");
        return;
    }
    bufferevent_setcb(s->ws, ws_read_cb, NULL, ws_event_cb, s);
    bufferevent_enable(s->ws, EV_READ | EV_WRITE);
    if (bufferevent_socket_connect(s->ws, (struct sockaddr *)&s->addr, (int)s->alen) != 0)
        ws_down(s, "cannot connect");
}

/* ---- the configuration poll ------------------------------------------------------------ */

static void poll_finish(tsub *s)
{
    struct evbuffer *in = bufferevent_get_input(s->poll);
    size_t n = evbuffer_get_length(in);
    char *text = malloc(n + 1);
    if (!text)
        abort();
    evbuffer_remove(in, text, n);
    text[n] = 0;
    bufferevent_free(s->poll);
    s->poll = NULL;
    char *body = strstr(text, "\r\n\r\n");
    if (strncmp(text, "HTTP/1.", 7) != 0 || strlen(text) < 12 || strncmp(text + 9, "200", 3) != 0 ||
        !body) {
        if (!s->poll_down_logged)
            DWARN(SMOD, "TSA %s/get_config_v1/shaping.toml: no valid answer; keeping the "
                        "overrides last fetched",
                  s->url);
        s->poll_down_logged = true;
        free(text);
        return;
    }
    s->poll_down_logged = false;
    body += 4;
    if (s->last_body && strcmp(s->last_body, body) == 0) {
        free(text);
        return;
    }
    char err[256];
    json_t *j = toml_json_parse(body, strlen(body), "get_config_v1/shaping.toml", err, sizeof(err));
    if (!j) {
        DERROR(SMOD, "TSA %s: the configuration overrides do not parse: %s", s->url, err);
        free(text);
        return;
    }
    free(s->last_body);
    s->last_body = strdup(body);
    pthread_mutex_lock(&ov_lock);
    bool same = json_equal(s->overrides, j);
    json_decref(s->overrides);
    s->overrides = j;
    pthread_mutex_unlock(&ov_lock);
    if (same) {
        free(text); /* only the comments changed (or the first, empty, fetch) */
        return;
    }
    DINFO(SMOD, "TSA %s: configuration overrides changed (%zu domains)", s->url,
          json_object_size(j));
    klua_bump_epoch();
    free(text);
}

static void poll_event_cb(struct bufferevent *bev, short what, void *arg)
{
    tsub *s = arg;
    if (what & BEV_EVENT_CONNECTED) {
        evbuffer_add_printf(bufferevent_get_output(bev),
                            "GET %s/get_config_v1/shaping.toml HTTP/1.0\r\nHost: %s\r\n"
                            "Connection: close\r\n\r\n",
                            s->prefix, s->host);
        return;
    }
    if ((what & BEV_EVENT_EOF) && evbuffer_get_length(bufferevent_get_input(bev))) {
        poll_finish(s);
        return;
    }
    bufferevent_free(s->poll);
    s->poll = NULL;
}

static void poll_read_cb(struct bufferevent *bev, void *arg)
{
    tsub *s = arg;
    if (evbuffer_get_length(bufferevent_get_input(bev)) > 16u * 1024 * 1024) {
        DERROR(SMOD, "TSA %s: configuration overrides over 16 MB: ignored", s->url);
        bufferevent_free(s->poll);
        s->poll = NULL;
    }
}

static void poll_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    tsub *s = arg;
    if (s->poll)
        return; /* the previous one is still under way */
    s->poll = bufferevent_socket_new(s->base, -1, BEV_OPT_CLOSE_ON_FREE);
    if (!s->poll)
        return;
    struct timeval to = {5, 0};
    bufferevent_set_timeouts(s->poll, &to, &to);
    bufferevent_setcb(s->poll, poll_read_cb, NULL, poll_event_cb, s);
    bufferevent_enable(s->poll, EV_READ | EV_WRITE);
    if (bufferevent_socket_connect(s->poll, (struct sockaddr *)&s->addr, (int)s->alen) != 0) {
        bufferevent_free(s->poll);
        s->poll = NULL;
    }
}

/* ---- starting ------------------------------------------------------------------------- */

static void start_on_reactor(void *arg)
{
    tsub *s = arg;
    s->base = reactor_base(reactor_get(0));
    s->retry_ev = evtimer_new(s->base, retry_cb, s);
    s->poll_ev = event_new(s->base, -1, EV_PERSIST, poll_cb, s);
    struct timeval tv = {POLL_MS / 1000, (POLL_MS % 1000) * 1000};
    event_add(s->poll_ev, &tv);
    ws_connect(s);
    poll_cb(-1, 0, s);
}

int tsa_sub_start(const char *url, char *err, size_t errlen)
{
    if (strncmp(url, "http://", 7) != 0) {
        snprintf(err, errlen, "'%s': only http:// subscribe URLs are supported", url);
        return KERR_INVAL;
    }
    const char *hp = url + 7;
    size_t hl = strcspn(hp, "/");
    char host[256], port[16] = "80";
    if (hl == 0 || hl >= sizeof(host)) {
        snprintf(err, errlen, "'%s': no host", url);
        return KERR_INVAL;
    }
    memcpy(host, hp, hl);
    host[hl] = 0;
    char *name = host;
    char *colon = strrchr(host, ':');
    if (host[0] == '[') {
        char *rb = strchr(host, ']');
        if (!rb) {
            snprintf(err, errlen, "'%s': bad IPv6 address", url);
            return KERR_INVAL;
        }
        *rb = 0;
        name = host + 1;
        colon = rb[1] == ':' ? rb + 1 : NULL;
    }
    if (colon) {
        *colon = 0;
        snprintf(port, sizeof(port), "%s", colon + 1);
    }
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai = NULL;
    int rc = getaddrinfo(name, port, &hints, &ai);
    if (rc != 0 || !ai) {
        snprintf(err, errlen, "'%s': cannot resolve %s: %s", url, name, gai_strerror(rc));
        return KERR_INVAL;
    }
    tsub *s = calloc(1, sizeof(*s));
    if (!s)
        abort();
    memcpy(&s->addr, ai->ai_addr, ai->ai_addrlen);
    s->alen = ai->ai_addrlen;
    freeaddrinfo(ai);
    s->url = strdup(url);
    s->host = strndup(hp, hl);
    const char *path = hp + hl;
    s->prefix = strdup(path);
    size_t pl = strlen(s->prefix);
    while (pl && s->prefix[pl - 1] == '/')
        s->prefix[--pl] = 0;
    s->msg.max = WS_MAX;
    s->applied = json_object();
    s->overrides = json_object();
    pthread_mutex_lock(&ov_lock);
    s->next = subs;
    subs = s;
    pthread_mutex_unlock(&ov_lock);
    reactor_post(reactor_get(0), start_on_reactor, s);
    return 0;
}

json_t *tsa_sub_overrides(void)
{
    json_t *out = json_object();
    pthread_mutex_lock(&ov_lock);
    for (tsub *s = subs; s; s = s->next)
        json_object_update(out, s->overrides);
    pthread_mutex_unlock(&ov_lock);
    return out;
}

void tsa_sub_shutdown(void)
{
    pthread_mutex_lock(&ov_lock);
    tsub *list = subs;
    subs = NULL;
    pthread_mutex_unlock(&ov_lock);
    while (list) {
        tsub *s = list;
        list = s->next;
        if (s->ws)
            bufferevent_free(s->ws);
        if (s->poll)
            bufferevent_free(s->poll);
        if (s->retry_ev)
            event_free(s->retry_ev);
        if (s->poll_ev)
            event_free(s->poll_ev);
        ws_msg_fini(&s->msg);
        json_decref(s->overrides);
        json_decref(s->applied);
        free(s->last_body);
        free(s->url);
        free(s->host);
        free(s->prefix);
        free(s);
    }
}
