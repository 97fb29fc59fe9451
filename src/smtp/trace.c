/* SMTP trace registry: who is subscribed, the events the SMTP server and
 * client hooks emit, and the bounded queue of each subscriber.
 *
 * Owns: the subscriber lists (one per kind, under a read-write lock that
 * producers take shared and subscribe/unsubscribe take exclusive), each
 * subscriber's ring of refcounted events (under the subscriber's mutex),
 * and the events themselves (freed by the last queue that held them).
 *
 * Threads: producers are the reactors running SMTP sessions; each
 * subscriber lives on the reactor of its websocket and is woken there
 * through the reactor mailbox (one post per empty -> non-empty turn).
 * Producers serialize only the connection meta; the JSON of an event is
 * rendered by the subscriber when it takes the event.
 *
 * Failure: a full queue drops the event and counts it (never blocks a
 * producer); an allocation failure drops the event the same way. */
#include "smtp/trace.h"

#include <arpa/inet.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/kerr.h"
#include "core/reactor.h"
#include "core/sbuf.h"
#include "core/utf8.h"
#include "net/cidr.h"

atomic_int trace_active_[TRACE_KINDS];
static atomic_ullong dropped_total;

typedef struct trace_event {
    atomic_uint refs;
    trace_type type;
    char level[8];
    int64_t when_ns;
    char *meta; /* compact JSON, "null" when none */
    size_t len;
    char data[];
} trace_event;

typedef struct slot {
    trace_event *ev; /* NULL: a lag marker */
    bool filtered;   /* the producer applied the subscriber's filter */
    uint64_t lag;
} slot;

/* A client request's string allow-lists, by conn_meta key. */
static const struct {
    const char *field, *meta_key;
} client_lists[] = {
    {"campaign", "campaign"},        {"tenant", "tenant"},
    {"domain", "domain"},            {"routing_domain", "routing_domain"},
    {"egress_pool", "egress_pool"},  {"egress_source", "egress_source"},
    {"mail_from", "sender"},         {"rcpt_to", "recipient"},
    {"mx_host", "mx_host"},          {"ready_queue", "ready_queue_name"},
};
#define N_LISTS (sizeof(client_lists) / sizeof(client_lists[0]))

struct trace_sub {
    trace_kind kind;
    reactor *r;
    trace_wake_fn wake;
    void *ud;
    struct trace_sub *next;
    atomic_int refs;
    bool closed; /* subscriber's thread only */

    /* the filter: written once by trace_sub_set_request before
     * filter_ready is released; read by producers after acquiring it */
    atomic_bool filter_ready;
    bool terse;
    bool has_source, has_mx;
    cidr_list source, mx;
    json_t *lists[N_LISTS]; /* arrays of strings; NULL or empty: any */

    pthread_mutex_t lock;
    slot ring[TRACE_SUB_MAX_EVENTS];
    size_t head, count, bytes;
    uint64_t lagged; /* dropped since the last marker was queued */
    uint64_t lagged_total;
    bool wake_pending;
};

static pthread_rwlock_t subs_lock = PTHREAD_RWLOCK_INITIALIZER;
static trace_sub *subs[TRACE_KINDS];
static int n_subs;

uint64_t trace_dropped_total(void)
{
    return atomic_load(&dropped_total);
}

/* ---- events ---------------------------------------------------------------------------------- */

static void event_unref(trace_event *ev)
{
    if (ev && atomic_fetch_sub(&ev->refs, 1) == 1) {
        free(ev->meta);
        free(ev);
    }
}

static trace_event *event_new(const json_t *meta, trace_type t, const char *level,
                              const char *data, size_t len)
{
    if (len > TRACE_DATA_MAX)
        len = TRACE_DATA_MAX;
    trace_event *ev = malloc(sizeof(*ev) + len + 1);
    if (!ev)
        return NULL;
    atomic_init(&ev->refs, 1);
    ev->type = t;
    snprintf(ev->level, sizeof(ev->level), "%s", level ? level : "INFO");
    ev->when_ns = clock_wall_ns();
    ev->meta = meta ? json_dumps(meta, JSON_COMPACT | JSON_ENCODE_ANY) : strdup("null");
    if (!ev->meta) {
        free(ev);
        return NULL;
    }
    ev->len = len;
    if (len)
        memcpy(ev->data, data, len);
    ev->data[len] = 0;
    return ev;
}

static size_t event_size(const trace_event *ev)
{
    return sizeof(*ev) + ev->len + strlen(ev->meta);
}

/* ---- filters ------------------------------------------------------------------------------- */

/* The IP address of a meta value "ip", "ip:port" or "[ip6]:port"; false
 * when it is absent or not an address. */
static bool meta_ip(const json_t *meta, const char *key, char ip[64])
{
    const char *v = json_string_value(json_object_get(meta, key));
    if (!v)
        return false;
    const char *start = v, *end;
    if (*v == '[') {
        start = v + 1;
        end = strchr(start, ']');
        if (!end)
            return false;
    } else {
        const char *colon = strchr(v, ':');
        end = colon && !strchr(colon + 1, ':') ? colon : v + strlen(v);
    }
    size_t n = (size_t)(end - start);
    if (n == 0 || n >= 64)
        return false;
    memcpy(ip, start, n);
    ip[n] = 0;
    unsigned char buf[16];
    return inet_pton(AF_INET, ip, buf) == 1 || inet_pton(AF_INET6, ip, buf) == 1;
}

/* As KumoMTA: a filter excludes an event only when the event's meta has
 * the property and its value is not allowed; a property not known yet
 * (the domain before a message is taken) does not exclude. */
static bool sub_wants(const trace_sub *s, const json_t *meta)
{
    char ip[64];
    if (s->kind == TRACE_SERVER) {
        if (s->has_source && meta_ip(meta, "received_from", ip) &&
            !cidr_list_match_str(&s->source, ip))
            return false;
        return true;
    }
    if (s->has_source && meta_ip(meta, "source_address", ip) &&
        !cidr_list_match_str(&s->source, ip))
        return false;
    if (s->has_mx && meta_ip(meta, "mx_address", ip) && !cidr_list_match_str(&s->mx, ip))
        return false;
    for (size_t i = 0; i < N_LISTS; i++) {
        if (!s->lists[i] || json_array_size(s->lists[i]) == 0)
            continue;
        const char *v = json_string_value(json_object_get(meta, client_lists[i].meta_key));
        if (!v)
            continue;
        bool found = false;
        size_t j;
        json_t *e;
        json_array_foreach(s->lists[i], j, e)
        {
            if (json_is_string(e) && strcmp(json_string_value(e), v) == 0) {
                found = true;
                break;
            }
        }
        if (!found)
            return false;
    }
    return true;
}

/* ---- producing ------------------------------------------------------------------------------ */

static void sub_unref(trace_sub *s);

static void wake_run(void *arg)
{
    trace_sub *s = arg;
    pthread_mutex_lock(&s->lock);
    s->wake_pending = false;
    pthread_mutex_unlock(&s->lock);
    if (!s->closed)
        s->wake(s->ud);
    sub_unref(s);
}

static void sub_push(trace_sub *s, trace_event *ev, bool filtered)
{
    size_t sz = event_size(ev);
    bool wake = false;
    pthread_mutex_lock(&s->lock);
    /* a lag marker needs a slot of its own before the next event */
    size_t need = s->lagged ? 2 : 1;
    if (s->count + need > TRACE_SUB_MAX_EVENTS || s->bytes + sz > TRACE_SUB_MAX_BYTES) {
        s->lagged++;
        s->lagged_total++;
        pthread_mutex_unlock(&s->lock);
        atomic_fetch_add(&dropped_total, 1);
        return;
    }
    if (s->lagged) {
        slot *m = &s->ring[(s->head + s->count++) % TRACE_SUB_MAX_EVENTS];
        *m = (slot){.ev = NULL, .filtered = true, .lag = s->lagged};
        s->lagged = 0;
    }
    atomic_fetch_add(&ev->refs, 1);
    s->ring[(s->head + s->count++) % TRACE_SUB_MAX_EVENTS] =
        (slot){.ev = ev, .filtered = filtered, .lag = 0};
    s->bytes += sz;
    if (!s->wake_pending) {
        s->wake_pending = true;
        wake = true;
        atomic_fetch_add(&s->refs, 1);
    }
    pthread_mutex_unlock(&s->lock);
    if (wake)
        reactor_post(s->r, wake_run, s);
}

void trace_emit(trace_kind k, const json_t *conn_meta, trace_type t, const char *level,
                const char *data, size_t len)
{
    trace_event *ev = NULL;
    pthread_rwlock_rdlock(&subs_lock);
    for (trace_sub *s = subs[k]; s; s = s->next) {
        bool ready = atomic_load_explicit(&s->filter_ready, memory_order_acquire);
        if (ready && !sub_wants(s, conn_meta))
            continue;
        if (!ev && !(ev = event_new(conn_meta, t, level, data, len))) {
            atomic_fetch_add(&dropped_total, 1);
            break;
        }
        sub_push(s, ev, ready);
    }
    pthread_rwlock_unlock(&subs_lock);
    event_unref(ev);
}

void trace_emitf(trace_kind k, const json_t *conn_meta, const char *level, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    trace_emit(k, conn_meta, TRACE_DIAGNOSTIC, level, buf,
               (size_t)n < sizeof(buf) ? (size_t)n : sizeof(buf) - 1);
}

void trace_smtp_line(trace_kind k, const json_t *conn_meta, trace_type t, const char *line)
{
    sbuf b = {0};
    sbuf_puts(&b, line);
    sbuf_puts(&b, "\r\n");
    size_t n;
    char *p = sbuf_finish(&b, &n);
    if (p)
        trace_emit(k, conn_meta, t, NULL, p, n);
    free(p);
}

void trace_smtp_reply(const json_t *conn_meta, int code, const char *msg)
{
    sbuf b = {0};
    char c[16];
    for (const char *p = msg;;) {
        const char *nl = strchr(p, '\n');
        snprintf(c, sizeof(c), "%d%c", code, nl ? '-' : ' ');
        sbuf_puts(&b, c);
        sbuf_put(&b, p, nl ? (size_t)(nl - p) : strlen(p));
        sbuf_puts(&b, "\r\n");
        if (!nl)
            break;
        p = nl + 1;
    }
    size_t n;
    char *out = sbuf_finish(&b, &n);
    if (out)
        trace_emit(TRACE_SERVER, conn_meta, TRACE_WRITE, NULL, out, n);
    free(out);
}

void trace_smtp_data(trace_kind k, const json_t *conn_meta, trace_type t, const char *data,
                     size_t len)
{
    if (len + 3 > TRACE_DATA_MAX) {
        trace_emit(k, conn_meta, t, NULL, data, TRACE_DATA_MAX);
        trace_emitf(k, conn_meta, "INFO", "message data: %zu bytes (the trace shows the first %u)",
                    len + 3, TRACE_DATA_MAX);
        return;
    }
    char *p = malloc(len + 3);
    if (!p)
        return;
    memcpy(p, data, len);
    memcpy(p + len, ".\r\n", 3);
    trace_emit(k, conn_meta, t, NULL, p, len + 3);
    free(p);
}

/* ---- client tracers ------------------------------------------------------------------------- */

struct trace_conn {
    json_t *meta;
    int refs;
};

trace_conn *trace_conn_new(json_t *meta_take)
{
    if (!trace_on(TRACE_CLIENT) || !meta_take) {
        json_decref(meta_take);
        return NULL;
    }
    trace_conn *tc = malloc(sizeof(*tc));
    if (!tc) {
        json_decref(meta_take);
        return NULL;
    }
    tc->meta = meta_take;
    tc->refs = 1;
    trace_emit(TRACE_CLIENT, tc->meta, TRACE_BEGIN_SESSION, NULL, NULL, 0);
    return tc;
}

trace_conn *trace_conn_ref(trace_conn *tc)
{
    if (tc)
        tc->refs++;
    return tc;
}

void trace_conn_unref(trace_conn *tc)
{
    if (!tc || --tc->refs > 0)
        return;
    json_decref(tc->meta);
    free(tc);
}

void trace_conn_set(trace_conn *tc, const char *key, json_t *value_take)
{
    if (!tc) {
        json_decref(value_take);
        return;
    }
    if (value_take)
        json_object_set_new(tc->meta, key, value_take);
    else
        json_object_del(tc->meta, key);
}

void trace_conn_emit(trace_conn *tc, trace_type t, const char *level, const char *data,
                     size_t len)
{
    if (tc && trace_on(TRACE_CLIENT))
        trace_emit(TRACE_CLIENT, tc->meta, t, level, data, len);
}

/* ---- subscribing ---------------------------------------------------------------------------- */

trace_sub *trace_subscribe(trace_kind k, reactor *r, trace_wake_fn wake, void *ud)
{
    trace_sub *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->kind = k;
    s->r = r;
    s->wake = wake;
    s->ud = ud;
    atomic_init(&s->refs, 1);
    pthread_mutex_init(&s->lock, NULL);
    pthread_rwlock_wrlock(&subs_lock);
    if (n_subs >= TRACE_MAX_SUBSCRIBERS) {
        pthread_rwlock_unlock(&subs_lock);
        pthread_mutex_destroy(&s->lock);
        free(s);
        return NULL;
    }
    n_subs++;
    s->next = subs[k];
    subs[k] = s;
    atomic_fetch_add(&trace_active_[k], 1);
    pthread_rwlock_unlock(&subs_lock);
    return s;
}

static int cidrs_from(const json_t *req, const char *field, cidr_list *out, bool *has, char *err,
                      size_t errlen)
{
    const json_t *v = json_object_get(req, field);
    *has = false;
    if (!v || json_is_null(v))
        return 0;
    char e2[200];
    if (!json_is_array(v) || cidr_list_from_json(v, out, e2, sizeof(e2)) != 0) {
        snprintf(err, errlen, "%s: %s", field,
                 json_is_array(v) ? e2 : "expected a list of CIDR strings");
        return KERR_INVAL;
    }
    *has = true;
    return 0;
}

int trace_sub_set_request(trace_sub *s, const json_t *req, char *err, size_t errlen)
{
    if (!json_is_object(req)) {
        snprintf(err, errlen, "the trace request must be a JSON object");
        return KERR_INVAL;
    }
    if (atomic_load(&s->filter_ready)) {
        snprintf(err, errlen, "the trace request was already given");
        return KERR_INVAL;
    }
    const json_t *terse = json_object_get(req, "terse");
    if (terse && !json_is_boolean(terse)) {
        snprintf(err, errlen, "terse: expected a boolean");
        return KERR_INVAL;
    }
    s->terse = json_is_true(terse);
    int rc = cidrs_from(req, "source_addr", &s->source, &s->has_source, err, errlen);
    if (!rc && s->kind == TRACE_CLIENT)
        rc = cidrs_from(req, "mx_addr", &s->mx, &s->has_mx, err, errlen);
    for (size_t i = 0; !rc && s->kind == TRACE_CLIENT && i < N_LISTS; i++) {
        json_t *v = json_object_get(req, client_lists[i].field);
        if (!v || json_is_null(v))
            continue;
        size_t j;
        json_t *e;
        bool ok = json_is_array(v);
        json_array_foreach(v, j, e) ok = ok && json_is_string(e);
        if (!ok) {
            snprintf(err, errlen, "%s: expected a list of strings", client_lists[i].field);
            rc = KERR_INVAL;
            break;
        }
        s->lists[i] = json_incref(v);
    }
    if (rc) {
        cidr_list_fini(&s->source);
        cidr_list_fini(&s->mx);
        s->has_source = s->has_mx = false;
        for (size_t i = 0; i < N_LISTS; i++) {
            json_decref(s->lists[i]);
            s->lists[i] = NULL;
        }
        return rc;
    }
    atomic_store_explicit(&s->filter_ready, true, memory_order_release);
    return 0;
}

/* ---- rendering -------------------------------------------------------------------------------- */

/* A JSON string of s[0..n), bytes that are not UTF-8 replaced by U+FFFD
 * (String::from_utf8_lossy, as KumoMTA renders what it read). */
static void put_jstr(sbuf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    sbuf_putc(b, '"');
    size_t i = 0;
    while (i < n) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x80) {
            long l = utf8_seq((const unsigned char *)s + i, n - i);
            if (l > 0) {
                sbuf_put(b, s + i, (size_t)l);
                i += (size_t)l;
            } else {
                sbuf_puts(b, "\xEF\xBF\xBD");
                i += (size_t)(-l);
            }
            continue;
        }
        if (c == '"' || c == '\\') {
            sbuf_putc(b, '\\');
            sbuf_putc(b, (char)c);
        } else if (c == '\n') {
            sbuf_puts(b, "\\n");
        } else if (c == '\r') {
            sbuf_puts(b, "\\r");
        } else if (c == '\t') {
            sbuf_puts(b, "\\t");
        } else if (c < 0x20 || c == 0x7F) {
            char u[7] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15], 0};
            sbuf_puts(b, u);
        } else {
            sbuf_putc(b, (char)c);
        }
        i++;
    }
    sbuf_putc(b, '"');
}

/* chrono's RFC 3339 rendering of a DateTime<Utc>: nanoseconds, 'Z'. */
static void put_when(sbuf *b, int64_t ns)
{
    time_t secs = (time_t)(ns / 1000000000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    char buf[64];
    snprintf(buf, sizeof(buf), "\"%04d-%02d-%02dT%02d:%02d:%02d.%09dZ\"", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
             (int)(ns % 1000000000));
    sbuf_puts(b, buf);
}

/* The first line for terse mode, or false when the data has one line
 * only. The server cuts what it read at the first CR after trimming
 * trailing whitespace; the client cuts what it wrote at the first line
 * end (Rust's str::lines). */
static bool first_line(const trace_event *ev, trace_kind k, size_t *n)
{
    size_t len = ev->len;
    if (k == TRACE_SERVER) {
        while (len && (ev->data[len - 1] == ' ' || ev->data[len - 1] == '\t' ||
                       ev->data[len - 1] == '\r' || ev->data[len - 1] == '\n'))
            len--;
        const char *cr = memchr(ev->data, '\r', len);
        if (!cr)
            return false;
        *n = (size_t)(cr - ev->data);
        return true;
    }
    const char *lf = memchr(ev->data, '\n', len);
    if (!lf || (size_t)(lf - ev->data) + 1 >= len)
        return false;
    *n = (size_t)(lf - ev->data);
    if (*n && ev->data[*n - 1] == '\r')
        (*n)--;
    return true;
}

static void put_payload(sbuf *b, const trace_event *ev, trace_kind k, bool terse)
{
    size_t n;
    switch (ev->type) {
    case TRACE_CONNECTED:
        sbuf_puts(b, "\"Connected\"");
        return;
    case TRACE_CLOSED:
        sbuf_puts(b, "\"Closed\"");
        return;
    case TRACE_BEGIN_SESSION:
        sbuf_puts(b, "\"BeginSession\"");
        return;
    case TRACE_MESSAGE_OBTAINED:
        sbuf_puts(b, "\"MessageObtained\"");
        return;
    case TRACE_MESSAGE_DISPOSITION:
        sbuf_puts(b, "{\"MessageDisposition\":");
        sbuf_put(b, ev->data, ev->len);
        sbuf_putc(b, '}');
        return;
    case TRACE_DIAGNOSTIC:
        sbuf_puts(b, "{\"Diagnostic\":{\"level\":");
        put_jstr(b, ev->level, strlen(ev->level));
        sbuf_puts(b, ",\"message\":");
        put_jstr(b, ev->data, ev->len);
        sbuf_puts(b, "}}");
        return;
    case TRACE_READ:
    case TRACE_WRITE: {
        bool abbreviate = terse && ((k == TRACE_SERVER) == (ev->type == TRACE_READ)) &&
                          first_line(ev, k, &n);
        if (abbreviate) {
            char len[32];
            sbuf_puts(b, ev->type == TRACE_READ ? "{\"AbbreviatedRead\":{\"snippet\":"
                                                : "{\"AbbreviatedWrite\":{\"snippet\":");
            put_jstr(b, ev->data, n);
            snprintf(len, sizeof(len), ",\"len\":%zu}}", ev->len);
            sbuf_puts(b, len);
            return;
        }
        sbuf_puts(b, ev->type == TRACE_READ ? "{\"Read\":" : "{\"Write\":");
        put_jstr(b, ev->data, ev->len);
        sbuf_putc(b, '}');
        return;
    }
    }
}

static char *render(const trace_sub *s, const slot *sl, size_t *len)
{
    sbuf b = {0};
    if (!sl->ev) {
        char msg[96];
        int n = snprintf(msg, sizeof(msg), "Tracer Lagged behind and missed %llu events",
                         (unsigned long long)sl->lag);
        sbuf_puts(&b, "{\"conn_meta\":null,\"payload\":{\"Diagnostic\":{\"level\":\"ERROR\","
                      "\"message\":");
        put_jstr(&b, msg, (size_t)n);
        sbuf_puts(&b, "}},\"when\":");
        put_when(&b, clock_wall_ns());
        sbuf_putc(&b, '}');
        return sbuf_finish(&b, len);
    }
    sbuf_puts(&b, "{\"conn_meta\":");
    sbuf_puts(&b, sl->ev->meta);
    sbuf_puts(&b, ",\"payload\":");
    put_payload(&b, sl->ev, s->kind, s->terse);
    sbuf_puts(&b, ",\"when\":");
    put_when(&b, sl->ev->when_ns);
    sbuf_putc(&b, '}');
    return sbuf_finish(&b, len);
}

/* ---- consuming ------------------------------------------------------------------------------- */

char *trace_sub_next(trace_sub *s, size_t *len)
{
    for (;;) {
        slot sl;
        pthread_mutex_lock(&s->lock);
        if (s->count == 0) {
            if (!s->lagged) {
                pthread_mutex_unlock(&s->lock);
                return NULL;
            }
            sl = (slot){.ev = NULL, .filtered = true, .lag = s->lagged};
            s->lagged = 0;
        } else {
            sl = s->ring[s->head];
            s->head = (s->head + 1) % TRACE_SUB_MAX_EVENTS;
            s->count--;
            if (sl.ev)
                s->bytes -= event_size(sl.ev);
        }
        pthread_mutex_unlock(&s->lock);
        if (sl.ev && !sl.filtered && atomic_load(&s->filter_ready)) {
            /* queued before the request said what to trace */
            json_t *meta = json_loads(sl.ev->meta, JSON_DECODE_ANY, NULL);
            bool want = sub_wants(s, meta);
            json_decref(meta);
            if (!want) {
                event_unref(sl.ev);
                continue;
            }
        }
        char *out = render(s, &sl, len);
        event_unref(sl.ev);
        if (out)
            return out;
    }
}

uint64_t trace_sub_lagged_total(const trace_sub *s)
{
    trace_sub *m = (trace_sub *)s;
    pthread_mutex_lock(&m->lock);
    uint64_t n = m->lagged_total;
    pthread_mutex_unlock(&m->lock);
    return n;
}

static void sub_unref(trace_sub *s)
{
    if (atomic_fetch_sub(&s->refs, 1) != 1)
        return;
    for (size_t i = 0; i < s->count; i++)
        event_unref(s->ring[(s->head + i) % TRACE_SUB_MAX_EVENTS].ev);
    cidr_list_fini(&s->source);
    cidr_list_fini(&s->mx);
    for (size_t i = 0; i < N_LISTS; i++)
        json_decref(s->lists[i]);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

void trace_unsubscribe(trace_sub *s)
{
    if (!s)
        return;
    pthread_rwlock_wrlock(&subs_lock);
    for (trace_sub **pp = &subs[s->kind]; *pp; pp = &(*pp)->next) {
        if (*pp == s) {
            *pp = s->next;
            n_subs--;
            atomic_fetch_sub(&trace_active_[s->kind], 1);
            break;
        }
    }
    pthread_rwlock_unlock(&subs_lock);
    /* no producer can reach s now; a wake already posted holds a ref */
    s->closed = true;
    sub_unref(s);
}
