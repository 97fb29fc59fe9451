/* KumoMTA's 413 for a raw request body over request_body_limit.
 *
 * libevent 2.1.12's evhttp refuses such a body itself: as soon as a
 * Content-Length announces more than the limit, or chunks pass it,
 * evhttp_send_error writes its HTML page ("<TITLE>413 Request Entity Too
 * Large</TITLE>") with Connection: close, and our request callback never
 * runs; 2.1.12 has no hook before that page. KumoMTA answers with axum's
 * plain-text rejection,
 * the same text kumod's listener gives when a compressed body inflates past
 * the limit (http.c decode_body). So every server connection's bufferevent
 * is ours (evhttp_set_bevcb, plain and TLS), with an evbuffer callback on
 * its output: evhttp serves one request at a time per connection and
 * writes a whole response into that buffer synchronously (status line,
 * headers, then the body in one evbuffer_add_buffer) before the event
 * loop can send a byte of it, so when the add that completes evhttp's page
 * fires the callback, the page is replaced in place. evhttp still closes
 * the connection after the write (the Connection: close header it reads
 * back is kept), and the client still sees the answer.
 *
 * Not a bufferevent filter: filters break evhttp's deferred replies and
 * its Connection: close handling in 2.1.12.
 *
 * Cost: the callback runs on every add and drain of every response; it
 * returns at once unless an add has the length of one of evhttp's error
 * pages (72-320 bytes), and only then copies out the buffer (at most 2 KiB)
 * to look at it.
 *
 * libevent sends the same page for a chunked body with broken framing and
 * for a trailer over the header limit (it reports them as "data too
 * long" too); they get the same text, as nothing here tells them apart.
 * Its other pages (400 for a malformed request or header block, 501 for a
 * method the listener does not allow, 417) go out as they are.
 *
 * Lingering close. After the 413, and after any other of its error pages
 * (400 for a request it cannot parse, 501, ...), evhttp closes the
 * connection at once,
 * while the client may still be sending the body (evhttp's own
 * EVHTTP_SERVER_LINGERING_CLOSE reads a Content-Length body to its end
 * first, which stalls a client that sent Expect: 100-continue and waits
 * for the 100, so kumod does not set it). A socket closed with unread
 * data answers with a reset, and a client that gets the reset before it
 * read the answer never sees it. So when such a page goes out, the
 * socket is duplicated: evhttp's close then only drops its descriptor
 * (its shutdown still sends the FIN after the 413), and the duplicate
 * reads and discards what the client still sends, until the client
 * closes, LINGER_IDLE_S pass without data, LINGER_MAX_S in all, or
 * LINGER_MAX_BYTES were read; at most LINGER_MAX_CONNS at once.
 *
 * Runs on the reactor thread of the connection. Fails safe: on any doubt
 * (or out of memory) evhttp's page goes out unchanged, without lingering. */
#include "http/errpage.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "core/kerr.h"

/* evhttp_send_error's ERR_FORMAT for 413 with its default reason
 * (libevent 2.1.12 http.c) */
static const char evhttp_page[] = "<HTML><HEAD>\n"
                                  "<TITLE>413 Request Entity Too Large</TITLE>\n"
                                  "</HEAD><BODY>\n"
                                  "<H1>Request Entity Too Large</H1>\n"
                                  "</BODY></HTML>\n";
#define PAGE_LEN (sizeof(evhttp_page) - 1)

/* the largest output buffer that can hold only evhttp's page (a few
 * interim responses, the status line, four short headers and the page) */
#define MAX_PAGE_BUFFER 2048

static const char body_text[] = HTTP_BODY_LIMIT_TEXT;

typedef struct outbuf {
    char *p;
    size_t len, cap;
    bool overflow;
} outbuf;

static void put(outbuf *o, const char *s, size_t n)
{
    if (o->overflow || n > o->cap - o->len) {
        o->overflow = true;
        return;
    }
    memcpy(o->p + o->len, s, n);
    o->len += n;
}

static void puts_(outbuf *o, const char *s)
{
    put(o, s, strlen(s));
}

/* name matches the header line's field name (case-insensitive) */
static bool is_field(const char *line, size_t len, const char *name, const char **value,
                     size_t *vlen)
{
    size_t nl = strlen(name);
    if (len <= nl || line[nl] != ':' || strncasecmp(line, name, nl) != 0)
        return false;
    const char *v = line + nl + 1;
    const char *end = line + len;
    while (v < end && (*v == ' ' || *v == '\t'))
        v++;
    *value = v;
    *vlen = (size_t)(end - v);
    return true;
}

/* The length of "HTTP/<major>.<minor> " at p (n bytes), else 0. evhttp
 * prints the request's own version numbers, whatever they were
 * ("HTTP/1.11", "HTTP/1.-1"), except 1.0, which its error page makes 1.1. */
static size_t version_len(const char *p, size_t n)
{
    if (n < 5 || memcmp(p, "HTTP/", 5) != 0)
        return 0;
    size_t i = 5;
    while (i < n && i < 32 && strchr("0123456789.-", p[i]) && p[i])
        i++;
    return i > 5 && i < n && p[i] == ' ' ? i + 1 : 0;
}

size_t http_errpage_rewrite(const char *buf, size_t len, char *out, size_t cap)
{
    if (len < PAGE_LEN + 4 || memcmp(buf + len - PAGE_LEN, evhttp_page, PAGE_LEN) != 0)
        return 0;
    size_t hend = len - PAGE_LEN; /* just past the blank line */
    if (memcmp(buf + hend - 4, "\r\n\r\n", 4) != 0)
        return 0;
    /* a 100 Continue evhttp wrote earlier and has not sent yet stays */
    size_t pos = 0, vl;
    while ((vl = version_len(buf + pos, hend - pos)) != 0 && hend - pos - vl > 1 &&
           buf[pos + vl] == '1') {
        const char *e = memmem(buf + pos, hend - pos, "\r\n\r\n", 4);
        if (!e || (size_t)(e + 4 - buf) == hend)
            return 0;
        pos = (size_t)(e + 4 - buf);
    }
    static const char status[] = "413 Request Entity Too Large\r\n";
    if (!vl || hend - pos - vl < sizeof(status) - 1 ||
        memcmp(buf + pos + vl, status, sizeof(status) - 1) != 0)
        return 0;
    const char *line = buf + pos + vl + sizeof(status) - 1;
    outbuf o = {.p = out, .cap = cap};
    put(&o, buf, pos + vl); /* any interim response, then evhttp's "HTTP/x.y " */
    puts_(&o, "413 Payload Too Large\r\n");
    bool length_ok = false, closes = false;
    char num[32];
    while (line < buf + hend - 2) {
        const char *eol = memmem(line, (size_t)(buf + hend - line), "\r\n", 2);
        size_t ll = (size_t)(eol - line);
        const char *v;
        size_t fl;
        if (is_field(line, ll, "Content-Length", &v, &fl)) {
            int n = snprintf(num, sizeof(num), "%zu", PAGE_LEN);
            if (length_ok || fl != (size_t)n || memcmp(v, num, fl) != 0)
                return 0;
            length_ok = true;
            n = snprintf(num, sizeof(num), "%zu", sizeof(body_text) - 1);
            puts_(&o, "Content-Length: ");
            put(&o, num, (size_t)n);
            puts_(&o, "\r\n");
        } else if (is_field(line, ll, "Content-Type", &v, &fl)) {
            puts_(&o, "Content-Type: " HTTP_BODY_LIMIT_TYPE "\r\n");
        } else {
            if (is_field(line, ll, "Connection", &v, &fl) && fl == 5 &&
                strncasecmp(v, "close", 5) == 0)
                closes = true;
            put(&o, line, ll + 2);
        }
        line = eol + 2;
    }
    /* evhttp's page always has both: without them it is not that page */
    if (!length_ok || !closes)
        return 0;
    puts_(&o, "\r\n");
    put(&o, body_text, sizeof(body_text) - 1);
    return o.overflow ? 0 : o.len;
}

/* ---- lingering close ---------------------------------------------------------------------- */

#define LINGER_IDLE_S 2
#define LINGER_MAX_S 10
#define LINGER_MAX_BYTES (64u << 20)
#define LINGER_MAX_CONNS 256

typedef struct linger_conn {
    int fd;
    struct event *ev;
    struct timespec started;
    size_t bytes;
    struct linger_conn *next, **pprev;
} linger_conn;

static atomic_int lingering;
static _Thread_local linger_conn *linger_list; /* this reactor's */

static void linger_end(linger_conn *l)
{
    event_free(l->ev);
    close(l->fd);
    *l->pprev = l->next;
    if (l->next)
        l->next->pprev = l->pprev;
    free(l);
    atomic_fetch_sub(&lingering, 1);
}

static void linger_read(evutil_socket_t fd, short what, void *arg)
{
    linger_conn *l = arg;
    if (what & EV_TIMEOUT) {
        linger_end(l);
        return;
    }
    char buf[16384];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof(buf));
        if (n > 0) {
            l->bytes += (size_t)n;
            if (l->bytes < LINGER_MAX_BYTES)
                continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
            struct timespec now;
            clock_gettime(CLOCK_MONOTONIC, &now);
            if (now.tv_sec - l->started.tv_sec < LINGER_MAX_S)
                return;
        }
        linger_end(l); /* EOF, an error, or enough */
        return;
    }
}

/* Keeps the connection of bev open to drain the client's input after
 * evhttp has closed it. */
static void linger_start(struct bufferevent *bev)
{
    int fd = bufferevent_getfd(bev);
    if (fd < 0)
        return;
    if (atomic_fetch_add(&lingering, 1) >= LINGER_MAX_CONNS) {
        atomic_fetch_sub(&lingering, 1);
        return;
    }
    linger_conn *l = calloc(1, sizeof(*l));
    int d = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (l && d >= 0)
        l->ev = event_new(bufferevent_get_base(bev), d, EV_READ | EV_PERSIST, linger_read, l);
    struct timeval idle = {LINGER_IDLE_S, 0};
    if (!l || d < 0 || !l->ev || event_add(l->ev, &idle) != 0) {
        if (l && l->ev)
            event_free(l->ev);
        if (d >= 0)
            close(d);
        free(l);
        atomic_fetch_sub(&lingering, 1);
        return;
    }
    l->fd = d;
    clock_gettime(CLOCK_MONOTONIC, &l->started);
    l->next = linger_list;
    if (linger_list)
        linger_list->pprev = &l->next;
    l->pprev = &linger_list;
    linger_list = l;
}

void http_errpage_linger_stop(void)
{
    while (linger_list)
        linger_end(linger_list);
}

int http_errpage_lingering(void)
{
    return atomic_load(&lingering);
}

/* ---- the page ------------------------------------------------------------------------------ */

/* evhttp_send_error's pages (ERR_FORMAT: "<HTML><HEAD>\n<TITLE>%d %s..."
 * with the reason twice) are this long, for the reasons libevent has */
#define ERR_PAGE_MIN 72
#define ERR_PAGE_MAX 320
static const char err_page_start[] = "<HTML><HEAD>\n<TITLE>";

static void on_output(struct evbuffer *out, const struct evbuffer_cb_info *info, void *arg)
{
    struct bufferevent *bev = arg;
    /* our own add below runs this callback again */
    static _Thread_local bool rewriting;
    /* evhttp adds a page's body with one evbuffer_add_buffer */
    if (rewriting || info->n_added < ERR_PAGE_MIN || info->n_added > ERR_PAGE_MAX)
        return;
    size_t len = evbuffer_get_length(out);
    if (len > MAX_PAGE_BUFFER || len < info->n_added)
        return;
    char buf[MAX_PAGE_BUFFER], rep[MAX_PAGE_BUFFER];
    /* A socket bufferevent keeps the start of its output frozen between
     * its writes (only it drains there), which makes copyout and drain
     * fail: thaw it for this replacement, and freeze it again. */
    bool thawed = false;
    ev_ssize_t got = evbuffer_copyout(out, buf, len);
    if (got < 0) {
        evbuffer_unfreeze(out, 1);
        thawed = true;
        got = evbuffer_copyout(out, buf, len);
    }
    /* one of evhttp's error pages: it closes the connection after it, with
     * whatever the client still sends unread */
    if (got == (ev_ssize_t)len &&
        memcmp(buf + len - info->n_added, err_page_start, sizeof(err_page_start) - 1) == 0) {
        size_t n = info->n_added == PAGE_LEN ? http_errpage_rewrite(buf, len, rep, sizeof(rep))
                                             : 0;
        if (n) {
            rewriting = true;
            /* add first: if that fails, evhttp's page is still whole */
            if (evbuffer_add(out, rep, n) == 0)
                evbuffer_drain(out, len);
            rewriting = false;
        }
        linger_start(bev);
    }
    if (thawed)
        evbuffer_freeze(out, 1);
}

int http_errpage_watch(struct bufferevent *bev)
{
    return evbuffer_add_cb(bufferevent_get_output(bev), on_output, bev) ? 0 : KERR_NOMEM;
}
