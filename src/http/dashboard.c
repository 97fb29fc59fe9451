/* The live dashboard: its page (GET / and /ui/..., files compiled into the
 * binary from share/ui), its server-sent events (GET
 * /api/admin/dashboard/v1/events) and the same state as one JSON document
 * (GET /api/admin/dashboard/v1/state), plus the ring of per-second counts
 * that its rates and sparklines come from.
 *
 * The ring (metrics/ratering.h) is sampled once a second on reactor 0 from
 * the cumulative counters /metrics reports, so the message paths pay
 * nothing for it; it lives from the listeners' start to their stop, under
 * ring_lock (one writer a second, readers only while a dashboard is open).
 *
 * Each reactor keeps its own event-stream clients and, while it has any, a
 * one-second tick: it takes one snapshot of every queue (queue/dashq.h;
 * plain structs), builds the part every client shares once (totals,
 * sparklines, providers, suspensions), then each client's own page of the
 * two queue tables, filtered, sorted and cut on the server, so a browser
 * never receives 100,000 rows. A snapshot that cost more than
 * SNAP_BUDGET_NS stretches the interval to keep the cost near 5% of a
 * core. The admin buttons of the page call the admin API itself, under its
 * ACL, so the page never acts with more rights than its client has.
 *
 * Failures: a client that goes away or stops reading is dropped at the
 * next tick; at shutdown every stream is ended so the listener can close. */
#include <ctype.h>
#include <event2/event.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "core/diag.h"
#include "core/duration.h"
#include "core/reactor.h"
#include "http/dashboard.h"
#include "http/request.h"
#include "http/stream.h"
#include "http/ui_assets.h"
#include "log/logs.h"
#include "lua/services.h"
#include "metrics/ratering.h"
#include "queue/admin.h"
#include "queue/dashq.h"
#include "queue/queue.h"
#include "smtp/server.h"

#define DMOD "kumod::dashboard"
#define SNAP_BUDGET_NS (50LL * 1000 * 1000) /* beyond this a snapshot slows the ticks */
#define MAX_PAGE 500
#define MAX_CLIENTS_PER_REACTOR 64
#define SPARK_POINTS 120 /* the hour in 30 s steps */
#define TOP_PROVIDERS 50

/* ---- the ring of per-second counts ------------------------------------------------------ */

static pthread_mutex_t ring_lock = PTHREAD_MUTEX_INITIALIZER;
static ratering *ring;
static struct event *sample_ev; /* reactor 0 */

static void sample_totals(uint64_t t[RATE__COUNT])
{
    queue_stats qs;
    smtpsrv_stats ss;
    queue_get_stats(&qs);
    smtpsrv_get_stats(&ss);
    t[RATE_RECEIVED] = ss.messages_received + http_metrics_received_total();
    t[RATE_DELIVERED] = qs.delivered;
    t[RATE_TRANSIENT] = qs.transfail;
    t[RATE_BOUNCED] = qs.failed;
    t[RATE_EXPIRED] = qs.expired;
}

static void on_sample(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what, (void)arg;
    uint64_t t[RATE__COUNT];
    sample_totals(t);
    pthread_mutex_lock(&ring_lock);
    if (ring)
        ratering_sample(ring, clock_wall_ns() / NS_PER_SEC, t);
    pthread_mutex_unlock(&ring_lock);
}

static void sampler_start_on_reactor(void *arg)
{
    (void)arg;
    sample_ev = event_new(reactor_base(reactor_current()), -1, EV_PERSIST, on_sample, NULL);
    struct timeval tv = {1, 0};
    if (sample_ev)
        event_add(sample_ev, &tv);
    on_sample(-1, 0, NULL);
}

static void sampler_stop_on_reactor(void *arg)
{
    (void)arg;
    if (sample_ev)
        event_free(sample_ev);
    sample_ev = NULL;
}

/* ---- a client's view -------------------------------------------------------------------- */

enum { T_SCHED, T_READY };

typedef struct table_view {
    char filter[128];
    char sort[16];
    bool desc;
    long offset, limit;
} table_view;

typedef struct dash_client {
    struct dash_client *next;
    http_stream *s;
    table_view view[2];
} dash_client;

static void view_from_query(const http_req *hr, table_view v[2])
{
    static const char *const pfx[2] = {"sched_", "ready_"};
    for (int t = 0; t < 2; t++) {
        char k[32];
        const char *x;
        snprintf(k, sizeof(k), "%sfilter", pfx[t]);
        x = http_req_query(hr, k);
        snprintf(v[t].filter, sizeof(v[t].filter), "%s", x ? x : "");
        snprintf(k, sizeof(k), "%ssort", pfx[t]);
        x = http_req_query(hr, k);
        snprintf(v[t].sort, sizeof(v[t].sort), "%s", x && *x ? x : "count");
        snprintf(k, sizeof(k), "%sdesc", pfx[t]);
        v[t].desc = http_req_query_bool(hr, k, true);
        snprintf(k, sizeof(k), "%soffset", pfx[t]);
        x = http_req_query(hr, k);
        v[t].offset = x ? strtol(x, NULL, 10) : 0;
        if (v[t].offset < 0)
            v[t].offset = 0;
        snprintf(k, sizeof(k), "%slimit", pfx[t]);
        x = http_req_query(hr, k);
        v[t].limit = x ? strtol(x, NULL, 10) : 25;
        if (v[t].limit <= 0 || v[t].limit > MAX_PAGE)
            v[t].limit = v[t].limit <= 0 ? 25 : MAX_PAGE;
    }
}

/* ---- the state built from a snapshot ---------------------------------------------------- */

/* What one reactor keeps between ticks: its clients, the last snapshot and
 * the one before (ready-queue rates are the difference). */
typedef struct dash_reactor {
    dash_client *clients;
    int n_clients;
    struct event *tick_ev;
    bool snap_in_flight;
    int64_t next_snap_mono;
    dashq_snapshot *cur, *prev;
    /* pending one-shot state requests, answered after the next snapshot */
    struct state_req *waiting;
} dash_reactor;

typedef struct state_req {
    struct state_req *next;
    http_req *hr;
    table_view view[2];
} state_req;

static __thread dash_reactor *dr;

static bool contains_ci(const char *hay, const char *needle)
{
    if (!*needle)
        return true;
    return hay && strcasestr(hay, needle) != NULL;
}

/* ready-queue message rate (per second) from the snapshot before */
static int cmp_ready_name(const void *a, const void *b)
{
    return strcmp(((const dashq_ready *)a)->name, ((const dashq_ready *)b)->name);
}

static double ready_rate(const dashq_ready *r)
{
    if (!dr->prev || dr->prev->n_ready == 0 || dr->cur->taken_ns <= dr->prev->taken_ns)
        return 0;
    dashq_ready key = {.name = r->name};
    const dashq_ready *p =
        bsearch(&key, dr->prev->ready, dr->prev->n_ready, sizeof(key), cmp_ready_name);
    if (!p)
        return 0;
    unsigned long long now = r->delivered + r->failed + r->transfail;
    unsigned long long then = p->delivered + p->failed + p->transfail;
    double dt = (double)(dr->cur->taken_ns - dr->prev->taken_ns) / 1e9;
    return now >= then && dt > 0 ? (double)(now - then) / dt : 0;
}

/* Sort keys, resolved once per table instead of once per comparison. */
enum {
    K_COUNT,
    K_NAME,
    K_OLDEST,
    K_SITE,
    K_PROVIDER,
    K_SUSPENDED,
    K_CONNECTIONS,
    K_RATE,
    K_DELIVERED,
    K_TRANSFAIL,
    K_FAILED,
    K_LAST,
};

static int sort_key_of(int table, const char *k)
{
    static const struct {
        const char *name;
        int key;
        bool ready_only;
    } keys[] = {
        {"name", K_NAME, false},          {"oldest", K_OLDEST, false},
        {"site", K_SITE, false},          {"provider", K_PROVIDER, false},
        {"suspended", K_SUSPENDED, false}, {"connections", K_CONNECTIONS, true},
        {"rate", K_RATE, true},           {"delivered", K_DELIVERED, true},
        {"transfail", K_TRANSFAIL, true}, {"failed", K_FAILED, true},
        {"last", K_LAST, true},
    };
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
        if (strcmp(keys[i].name, k) == 0) {
            if (keys[i].ready_only && table == T_SCHED)
                return K_COUNT;
            if (keys[i].key == K_OLDEST && table == T_READY)
                return K_COUNT;
            return keys[i].key;
        }
    return K_COUNT;
}

typedef struct sort_ctx {
    int table;
    int key;
    bool desc;
    const double *rates;
} sort_ctx;

static __thread sort_ctx sctx;

static int cmp_str0(const char *a, const char *b)
{
    return strcmp(a ? a : "", b ? b : "");
}

static int cmp_num(double a, double b)
{
    return a < b ? -1 : a > b ? 1 : 0;
}

static int cmp_rows(const void *pa, const void *pb)
{
    size_t ia = *(const size_t *)pa, ib = *(const size_t *)pb;
    int c = 0;
    if (sctx.table == T_SCHED) {
        const dashq_sched *a = &dr->cur->sched[ia], *b = &dr->cur->sched[ib];
        switch (sctx.key) {
        case K_NAME:
            return sctx.desc ? -cmp_str0(a->name, b->name) : cmp_str0(a->name, b->name);
        case K_OLDEST: /* oldest first when descending by age */
            c = cmp_num((double)(b->oldest_ns ? b->oldest_ns : INT64_MAX),
                        (double)(a->oldest_ns ? a->oldest_ns : INT64_MAX));
            break;
        case K_SITE:
            c = cmp_str0(a->site, b->site);
            break;
        case K_PROVIDER:
            c = cmp_str0(a->provider, b->provider);
            break;
        case K_SUSPENDED:
            c = cmp_num(a->suspended, b->suspended);
            break;
        default:
            c = cmp_num((double)a->count, (double)b->count);
        }
        if (!c)
            c = cmp_str0(a->name, b->name) * (sctx.desc ? -1 : 1);
    } else {
        const dashq_ready *a = &dr->cur->ready[ia], *b = &dr->cur->ready[ib];
        switch (sctx.key) {
        case K_NAME:
            return sctx.desc ? -cmp_str0(a->name, b->name) : cmp_str0(a->name, b->name);
        case K_CONNECTIONS:
            c = cmp_num(a->connections, b->connections);
            break;
        case K_RATE:
            c = cmp_num(sctx.rates[ia], sctx.rates[ib]);
            break;
        case K_DELIVERED:
            c = cmp_num((double)a->delivered, (double)b->delivered);
            break;
        case K_TRANSFAIL:
            c = cmp_num((double)a->transfail, (double)b->transfail);
            break;
        case K_FAILED:
            c = cmp_num((double)a->failed, (double)b->failed);
            break;
        case K_SITE:
            c = cmp_str0(a->site, b->site);
            break;
        case K_PROVIDER:
            c = cmp_str0(a->provider, b->provider);
            break;
        case K_LAST:
            c = cmp_str0(a->last_response, b->last_response);
            break;
        case K_SUSPENDED:
            c = cmp_num(a->suspended, b->suspended);
            break;
        default:
            c = cmp_num((double)a->count, (double)b->count);
        }
        if (!c)
            c = cmp_str0(a->name, b->name) * (sctx.desc ? -1 : 1);
    }
    return sctx.desc ? -c : c;
}

/* Puts idx[k] where a full sort would (everything before it compares
 * lower, everything after higher): quickselect with a median-of-three
 * pivot, linear on average. The rows are distinct (ties fall back to the
 * queue name, unique in a table). */
static void select_nth(size_t *idx, size_t lo, size_t hi, size_t k)
{
    while (hi - lo > 16) {
        size_t mid = lo + (hi - lo) / 2, a = lo, b = mid, c = hi - 1;
        /* median of three as the pivot, moved to hi - 1 */
        if (cmp_rows(&idx[a], &idx[b]) > 0) {
            size_t t = a;
            a = b;
            b = t;
        }
        if (cmp_rows(&idx[b], &idx[c]) > 0)
            b = cmp_rows(&idx[a], &idx[c]) > 0 ? a : c;
        size_t t = idx[b];
        idx[b] = idx[hi - 1];
        idx[hi - 1] = t;
        size_t store = lo;
        for (size_t i = lo; i < hi - 1; i++)
            if (cmp_rows(&idx[i], &idx[hi - 1]) < 0) {
                t = idx[i];
                idx[i] = idx[store];
                idx[store++] = t;
            }
        t = idx[store];
        idx[store] = idx[hi - 1];
        idx[hi - 1] = t;
        if (k == store)
            return;
        if (k < store)
            hi = store;
        else
            lo = store + 1;
    }
    qsort(idx + lo, hi - lo, sizeof(*idx), cmp_rows);
}

/* Orders idx[off .. off+lim) as a full sort of idx[0..m) would, without
 * sorting the rest: a page of 25 out of 100,000 queues costs two linear
 * selections and a sort of 25, not a sort of 100,000. */
static void sort_page(size_t *idx, size_t m, size_t off, size_t lim)
{
    if (off >= m)
        return;
    size_t end = off + lim < m ? off + lim : m;
    if (m <= 64 || end - off > m / 4) {
        qsort(idx, m, sizeof(*idx), cmp_rows);
        return;
    }
    if (off > 0)
        select_nth(idx, 0, m, off); /* [0, off) now holds the rows before the page */
    if (end < m)
        select_nth(idx, off, m, end); /* and [end, m) the rows after it */
    qsort(idx + off, end - off, sizeof(*idx), cmp_rows);
}

/* RFC 3339 UTC, to the second */
static void set_time(json_t *o, const char *k, int64_t ns)
{
    if (!ns) {
        json_object_set_new(o, k, json_null());
        return;
    }
    time_t t = (time_t)(ns / NS_PER_SEC);
    struct tm tm;
    char buf[64];
    gmtime_r(&t, &tm);
    strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
    json_object_set_new(o, k, json_string(buf));
}

static json_t *sched_row(const dashq_sched *q, int64_t now_ns)
{
    json_t *o = json_pack("{s:s,s:I,s:s,s:b}", "name", q->name, "count", (json_int_t)q->count,
                          "site", q->site ? q->site : "", "suspended", q->suspended);
    json_object_set_new(o, "provider", q->provider ? json_string(q->provider) : json_null());
    json_object_set_new(o, "oldest_age_s",
                        q->oldest_ns ? json_integer((now_ns - q->oldest_ns) / NS_PER_SEC)
                                     : json_null());
    return o;
}

static json_t *ready_row(const dashq_ready *q, double rate)
{
    json_t *o = json_pack("{s:s,s:I,s:i,s:I,s:b,s:s,s:s,s:I,s:I,s:I,s:f}", "name", q->name,
                          "count", (json_int_t)q->count, "connections", q->connections,
                          "connection_limit", (json_int_t)q->connection_limit, "suspended",
                          q->suspended, "site", q->site ? q->site : "", "source",
                          q->source ? q->source : "", "delivered", (json_int_t)q->delivered,
                          "transfail", (json_int_t)q->transfail, "failed",
                          (json_int_t)q->failed, "rate", rate);
    json_object_set_new(o, "provider", q->provider ? json_string(q->provider) : json_null());
    json_t *thr = json_array();
    if (q->conn_rate_throttled)
        json_array_append_new(thr, json_string("connection rate"));
    if (q->msg_rate_throttled)
        json_array_append_new(thr, json_string("message rate"));
    if (q->connection_limit > 0 && q->connections >= q->connection_limit)
        json_array_append_new(thr, json_string("connection limit"));
    json_object_set_new(o, "throttled", thr);
    if (q->last_response) {
        json_t *lr = json_pack("{s:s,s:i,s:s}", "response", q->last_response, "code",
                               q->last_code, "category",
                               q->last_category ? q->last_category
                               : q->last_code >= 200 && q->last_code < 300 ? "Delivered"
                                                                           : "Uncategorized");
        set_time(lr, "at", q->last_response_ns);
        json_object_set_new(o, "last_response", lr);
    } else {
        json_object_set_new(o, "last_response", json_null());
    }
    return o;
}

/* One table: filtered, sorted and paged. */
static json_t *table_json(int table, const table_view *v, const double *rates)
{
    dashq_snapshot *s = dr->cur;
    size_t n = table == T_SCHED ? s->n_sched : s->n_ready;
    size_t *idx = malloc((n ? n : 1) * sizeof(*idx));
    if (!idx)
        return json_null();
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        bool keep;
        if (table == T_SCHED) {
            const dashq_sched *q = &s->sched[i];
            keep = contains_ci(q->name, v->filter) || contains_ci(q->site, v->filter) ||
                   contains_ci(q->provider, v->filter);
        } else {
            const dashq_ready *q = &s->ready[i];
            keep = contains_ci(q->name, v->filter) || contains_ci(q->provider, v->filter) ||
                   contains_ci(q->last_response, v->filter);
        }
        if (keep)
            idx[m++] = i;
    }
    sctx = (sort_ctx){table, sort_key_of(table, v->sort), v->desc, rates};
    if (m > 1)
        sort_page(idx, m, (size_t)v->offset, (size_t)v->limit);
    json_t *rows = json_array();
    int64_t now = clock_wall_ns();
    for (size_t k = (size_t)v->offset; k < m && k < (size_t)(v->offset + v->limit); k++)
        json_array_append_new(rows, table == T_SCHED ? sched_row(&s->sched[idx[k]], now)
                                                     : ready_row(&s->ready[idx[k]],
                                                                 rates ? rates[idx[k]] : 0));
    free(idx);
    return json_pack("{s:I,s:I,s:I,s:I,s:s,s:b,s:s,s:o}", "total", (json_int_t)n, "matched",
                     (json_int_t)m, "offset", (json_int_t)v->offset, "limit",
                     (json_int_t)v->limit, "sort", v->sort, "desc", v->desc, "filter",
                     v->filter, "rows", rows);
}

static json_t *spark_json(void)
{
    json_t *o = json_object();
    int64_t now = clock_wall_ns() / NS_PER_SEC;
    static __thread uint32_t buf[RATERING_SECONDS];
    pthread_mutex_lock(&ring_lock);
    for (int k = 0; k < RATE__COUNT && ring; k++) {
        /* the last completed second: the current one is still filling */
        ratering_series(ring, k, now - 1, buf, RATERING_SECONDS);
        json_t *hour = json_array(), *minute = json_array();
        int step = RATERING_SECONDS / SPARK_POINTS;
        for (int p = 0; p < SPARK_POINTS; p++) {
            uint64_t sum = 0;
            for (int i = 0; i < step; i++)
                sum += buf[p * step + i];
            json_array_append_new(hour, json_real((double)sum / step));
        }
        for (int i = RATERING_SECONDS - 60; i < RATERING_SECONDS; i++)
            json_array_append_new(minute, json_integer(buf[i]));
        uint64_t last10 = 0;
        for (int i = RATERING_SECONDS - 10; i < RATERING_SECONDS; i++)
            last10 += buf[i];
        json_object_set_new(o, ratering_kind_name(k),
                            json_pack("{s:f,s:I,s:o,s:o}", "per_second", (double)last10 / 10.0,
                                      "last_hour",
                                      (json_int_t)ratering_sum(ring, k, now - 1,
                                                               RATERING_SECONDS),
                                      "hour", hour, "minute", minute));
    }
    pthread_mutex_unlock(&ring_lock);
    return o;
}

static long rss_kb(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long pages = 0, rss = 0;
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &rss) != 2)
            rss = 0;
        fclose(f);
    }
    return rss * (sysconf(_SC_PAGESIZE) / 1024);
}

/* Ready queues grouped by provider (else site) and, inside, their current
 * responses by bounce category: the busiest TOP_PROVIDERS. */
static json_t *providers_json(void)
{
    dashq_snapshot *s = dr->cur;
    json_t *by = json_object();
    for (size_t i = 0; i < s->n_ready; i++) {
        const dashq_ready *q = &s->ready[i];
        const char *key = q->provider ? q->provider : q->site && *q->site ? q->site : q->name;
        json_t *p = json_object_get(by, key);
        if (!p) {
            p = json_pack("{s:s,s:b,s:i,s:i,s:i,s:i,s:{}}", "name", key, "is_provider",
                          q->provider != NULL, "queues", 0, "ready", 0, "connections", 0,
                          "suspended", 0, "categories");
            json_object_set_new(by, key, p);
        }
#define ADD(k, n)                                                                                  \
    json_object_set_new(p, k, json_integer(json_integer_value(json_object_get(p, k)) + (n)))
        ADD("queues", 1);
        ADD("ready", q->count);
        ADD("connections", q->connections);
        ADD("suspended", q->suspended ? 1 : 0);
#undef ADD
        if (!q->last_response)
            continue;
        const char *cat = q->last_category ? q->last_category
                          : q->last_code >= 200 && q->last_code < 300 ? "Delivered"
                                                                      : "Uncategorized";
        json_t *cats = json_object_get(p, "categories");
        json_t *c = json_object_get(cats, cat);
        if (!c) {
            c = json_pack("{s:i,s:[]}", "queues", 0, "responses");
            json_object_set_new(cats, cat, c);
        }
        json_object_set_new(c, "queues",
                            json_integer(json_integer_value(json_object_get(c, "queues")) + 1));
        json_t *resps = json_object_get(c, "responses");
        bool seen = false;
        size_t k;
        json_t *v;
        json_array_foreach(resps, k, v) if (strcmp(json_string_value(v), q->last_response) == 0)
            seen = true;
        if (!seen && json_array_size(resps) < 3)
            json_array_append_new(resps, json_string(q->last_response));
    }
    /* busiest first */
    size_t n = json_object_size(by);
    json_t **arr = malloc((n ? n : 1) * sizeof(*arr));
    size_t m = 0;
    const char *k;
    json_t *v;
    json_object_foreach(by, k, v) if (arr) arr[m++] = v;
    for (size_t i = 1; arr && i < m; i++) /* insertion sort is fine for the top list */
        for (size_t j = i; j > 0; j--) {
            json_int_t a = json_integer_value(json_object_get(arr[j - 1], "ready")) +
                           json_integer_value(json_object_get(arr[j - 1], "queues"));
            json_int_t b = json_integer_value(json_object_get(arr[j], "ready")) +
                           json_integer_value(json_object_get(arr[j], "queues"));
            if (a >= b)
                break;
            json_t *t = arr[j];
            arr[j] = arr[j - 1];
            arr[j - 1] = t;
        }
    json_t *out = json_array();
    for (size_t i = 0; i < m && i < TOP_PROVIDERS; i++)
        json_array_append(out, arr[i]);
    free(arr);
    json_t *res = json_pack("{s:I,s:o}", "total", (json_int_t)n, "rows", out);
    json_decref(by);
    return res;
}

/* The part of an event every client of this reactor shares. */
static json_t *common_json(void)
{
    queue_stats qs;
    queue_get_stats(&qs);
    char reason[256] = "";
    bool healthy = services_spool_healthy(reason, sizeof(reason));
    json_t *o = json_object();
    set_time(o, "now", clock_wall_ns());
    json_object_set_new(o, "rates", spark_json());
    json_object_set_new(
        o, "spool",
        json_pack("{s:I,s:I,s:I,s:I,s:I,s:b,s:s}", "scheduled", (json_int_t)qs.scheduled, "ready",
                  (json_int_t)qs.ready, "in_flight", (json_int_t)qs.in_flight, "scheduled_queues",
                  (json_int_t)qs.scheduled_queues, "ready_queues", (json_int_t)qs.ready_queues,
                  "healthy", healthy, "reason", healthy ? "" : reason));
    json_object_set_new(o, "memory", json_pack("{s:I}", "rss_kb", (json_int_t)rss_kb()));
    json_object_set_new(o, "providers", providers_json());
    json_object_set_new(o, "suspensions", queue_admin_suspend_list());
    json_object_set_new(o, "ready_suspensions", queue_admin_suspend_readyq_list());
    json_object_set_new(o, "bounces", queue_admin_bounce_list());
    json_object_set_new(o, "snapshot_cost_ms",
                        json_real((double)dr->cur->cost_ns / 1e6));
    return o;
}

static char *event_text(const char *common, const table_view v[2], const double *rates,
                        size_t *len)
{
    json_t *view = json_pack("{s:o,s:o}", "scheduled", table_json(T_SCHED, &v[0], NULL), "ready",
                             table_json(T_READY, &v[1], rates));
    char *vs = json_dumps(view, JSON_COMPACT);
    json_decref(view);
    char *out = NULL;
    int n = asprintf(&out, "{\"common\":%s,\"view\":%s}", common, vs ? vs : "null");
    free(vs);
    if (n < 0)
        return NULL;
    *len = (size_t)n;
    return out;
}

static void tick_arm(int64_t delay_ms);

static void after_snapshot(void *ud, dashq_snapshot *snap)
{
    (void)ud;
    if (!dr) {
        dashq_snapshot_free(snap);
        return;
    }
    dr->snap_in_flight = false;
    dashq_snapshot_free(dr->prev);
    dr->prev = dr->cur;
    dr->cur = snap;
    if (snap->n_ready > 1) /* ready may be NULL when there are none */
        qsort(snap->ready, snap->n_ready, sizeof(*snap->ready), cmp_ready_name);
    /* slow snapshots (huge queue counts) are taken less often */
    int64_t every = NS_PER_SEC;
    if (snap->cost_ns > SNAP_BUDGET_NS)
        every = snap->cost_ns * 20;
    /* a little early: the next tick, a second from now, must find it due */
    dr->next_snap_mono = clock_mono_ns() + every - NS_PER_SEC / 5;
    double *rates = calloc(snap->n_ready ? snap->n_ready : 1, sizeof(*rates));
    for (size_t i = 0; rates && i < snap->n_ready; i++)
        rates[i] = ready_rate(&snap->ready[i]);
    json_t *common = common_json();
    char *cs = json_dumps(common, JSON_COMPACT);
    json_decref(common);
    for (dash_client *c = dr->clients; c && cs; c = c->next) {
        size_t len;
        char *ev = event_text(cs, c->view, rates, &len);
        if (!ev)
            continue;
        char *frame = NULL;
        int n = asprintf(&frame, "event: state\ndata: %s\n\n", ev);
        free(ev);
        if (n > 0)
            http_stream_send(c->s, frame, (size_t)n);
        free(frame);
    }
    while (dr->waiting) {
        state_req *w = dr->waiting;
        dr->waiting = w->next;
        size_t len;
        char *ev = cs ? event_text(cs, w->view, rates, &len) : NULL;
        if (ev)
            http_reply_text(w->hr, 200, "application/json", ev, len);
        else
            http_reply_error(w->hr, 500, "out of memory");
        free(ev);
        free(w);
    }
    free(cs);
    free(rates);
}

static void dash_reactor_free(void)
{
    if (!dr)
        return;
    if (dr->tick_ev)
        event_free(dr->tick_ev);
    dashq_snapshot_free(dr->cur);
    dashq_snapshot_free(dr->prev);
    free(dr);
    dr = NULL;
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what, (void)arg;
    /* drop clients that went away; end them all at shutdown */
    bool down = http_shutting_down();
    for (dash_client **pc = &dr->clients; *pc;) {
        dash_client *c = *pc;
        if (down || !http_stream_alive(c->s)) {
            *pc = c->next;
            DDEBUG(DMOD, "peer=%s event stream ended", http_stream_peer(c->s));
            http_stream_end(c->s);
            free(c);
            dr->n_clients--;
            continue;
        }
        pc = &c->next;
    }
    while (down && dr->waiting) {
        state_req *w = dr->waiting;
        dr->waiting = w->next;
        http_reply_error(w->hr, 503, "shutting down");
        free(w);
    }
    if (!dr->clients && !dr->waiting) {
        if (!dr->snap_in_flight)
            dash_reactor_free();
        else
            tick_arm(1000);
        return;
    }
    if (!dr->snap_in_flight && clock_mono_ns() >= dr->next_snap_mono) {
        dr->snap_in_flight = true;
        queue_dash_snapshot(after_snapshot, NULL);
    } else if (dr->clients) {
        /* a comment line keeps proxies and the browser's idle timers happy */
        for (dash_client *c = dr->clients; c; c = c->next)
            http_stream_send(c->s, ": tick\n\n", 8);
    }
    tick_arm(1000);
}

static void tick_arm(int64_t delay_ms)
{
    if (!dr->tick_ev)
        dr->tick_ev = event_new(reactor_base(reactor_current()), -1, 0, on_tick, NULL);
    struct timeval tv = {delay_ms / 1000, (delay_ms % 1000) * 1000};
    if (dr->tick_ev)
        event_add(dr->tick_ev, &tv);
}

static bool dash_reactor_get(void)
{
    if (!dr) {
        dr = calloc(1, sizeof(*dr));
        if (!dr)
            return false;
    }
    return true;
}

/* ---- endpoints ----------------------------------------------------------------------------- */

static void h_events(http_req *hr)
{
    if (!dash_reactor_get()) {
        http_reply_error(hr, 500, "out of memory");
        return;
    }
    if (dr->n_clients >= MAX_CLIENTS_PER_REACTOR) {
        http_reply_error(hr, 503, "too many dashboard clients (%d on this thread)",
                         dr->n_clients);
        return;
    }
    dash_client *c = calloc(1, sizeof(*c));
    if (!c) {
        http_reply_error(hr, 500, "out of memory");
        return;
    }
    view_from_query(hr, c->view);
    c->s = http_stream_start(hr, "text/event-stream");
    if (!c->s) {
        free(c);
        return;
    }
    http_stream_send(c->s, "retry: 2000\n\n", 13);
    c->next = dr->clients;
    dr->clients = c;
    dr->n_clients++;
    /* the first state at once: a fresh snapshot unless one is on its way */
    dr->next_snap_mono = 0;
    tick_arm(0);
}

static void h_state(http_req *hr)
{
    if (!dash_reactor_get()) {
        http_reply_error(hr, 500, "out of memory");
        return;
    }
    state_req *w = calloc(1, sizeof(*w));
    if (!w) {
        http_reply_error(hr, 500, "out of memory");
        return;
    }
    w->hr = hr;
    view_from_query(hr, w->view);
    w->next = dr->waiting;
    dr->waiting = w;
    dr->next_snap_mono = 0;
    tick_arm(0);
}

static void h_asset(http_req *hr)
{
    const char *name = hr->path;
    if (strcmp(name, "/") == 0 || strcmp(name, "/ui") == 0 || strcmp(name, "/ui/") == 0)
        name = "/ui/index.html";
    for (size_t i = 0; i < ui_assets_count; i++) {
        if (strcmp(name + 4, ui_assets[i].name) == 0) {
            evhttp_add_header(evhttp_request_get_output_headers(hr->req), "Cache-Control",
                              "no-cache");
            /* the page loads nothing from elsewhere and runs no inline code */
            evhttp_add_header(evhttp_request_get_output_headers(hr->req),
                              "Content-Security-Policy",
                              "default-src 'self'; img-src 'self' data:; "
                              "style-src 'self'; script-src 'self'; connect-src 'self'");
            http_reply_text(hr, 200, ui_assets[i].content_type, (const char *)ui_assets[i].data,
                            ui_assets[i].len);
            return;
        }
    }
    http_reply_error(hr, 404, "no such file: %s", hr->path);
}

static void dashboard_start(void)
{
    pthread_mutex_lock(&ring_lock);
    if (!ring) {
        ring = malloc(sizeof(*ring));
        if (ring)
            ratering_init(ring);
    }
    pthread_mutex_unlock(&ring_lock);
    if (reactor_count() > 0)
        reactor_call_sync(reactor_get(0), sampler_start_on_reactor, NULL);
}

/* Whatever a reactor still holds once the listeners are gone. */
static void cleanup_on_reactor(void *arg)
{
    (void)arg;
    if (!dr)
        return;
    while (dr->clients) {
        dash_client *c = dr->clients;
        dr->clients = c->next;
        http_stream_end(c->s);
        free(c);
    }
    while (dr->waiting) {
        state_req *w = dr->waiting;
        dr->waiting = w->next;
        http_reply_error(w->hr, 503, "shutting down");
        free(w);
    }
    dash_reactor_free(); /* a snapshot still on its way frees itself */
}

static void dashboard_stop(void)
{
    for (int i = 0; i < reactor_count(); i++)
        reactor_call_sync(reactor_get(i), cleanup_on_reactor, NULL);
    if (reactor_count() > 0)
        reactor_call_sync(reactor_get(0), sampler_stop_on_reactor, NULL);
    pthread_mutex_lock(&ring_lock);
    free(ring);
    ring = NULL;
    pthread_mutex_unlock(&ring_lock);
}

enum { M_GET = EVHTTP_REQ_GET };

static const http_route dash_routes[] = {
    {"/", M_GET, h_asset},
    {"/ui", M_GET, h_asset},
    {"/ui/", M_GET, h_asset},
    {"/ui/index.html", M_GET, h_asset},
    {"/ui/dashboard.js", M_GET, h_asset},
    {"/ui/dashboard.css", M_GET, h_asset},
    {"/api/admin/dashboard/v1/events", M_GET, h_events},
    {"/api/admin/dashboard/v1/state", M_GET, h_state},
};

static const http_endpoints dash_endpoints = {
    dash_routes, sizeof(dash_routes) / sizeof(dash_routes[0]), dashboard_start, dashboard_stop};

void http_dashboard_add_endpoints(void)
{
    http_add_endpoints(&dash_endpoints);
}
