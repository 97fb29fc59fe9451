/* GET /metrics (Prometheus text exposition 0.0.4) and GET /metrics.json,
 * and the kumod metric families fed from the other layers' statistics.
 *
 * The families are callback families of the metrics registry: at each
 * scrape they read queue_get_stats(), smtpsrv_get_stats() and this file's
 * own counters, and the per-queue series (scheduled_count{queue},
 * ready_count and connection_count{service="<proto>:<ready queue>"}) come
 * from a snapshot of every reactor's queues that the scrape requests first
 * through queue_admin_summary (a mailbox round trip, so the scraping
 * reactor never reads another reactor's queues). Only values that exist
 * are reported: the delivery totals carry service="all" and one series
 * per ready queue (counted since the queue was made, as KumoMTA's), and
 * the *_by_provider{provider} and *_by_provider_and_pool/_and_source
 * {provider, pool} families sum the queues of the snapshot by provider
 * (the provider_name, else the site). The spool's monitor
 * feeds disk_free_*{name="data spool"|"meta spool"} and, for RocksDB
 * stores, rocks_spool_*{path}. A family that another layer registered
 * first is left to it.
 *
 * Owns the snapshot (under snap_lock) and the HTTP receive counter. */
#include <pthread.h>
#include <stddef.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/diag.h"
#include "core/kerr.h"
#include "http/metrics_http.h"
#include "http/request.h"
#include "metrics/metrics.h"
#include "msg/message.h"
#include "queue/admin.h"
#include "lua/services.h"
#include "queue/queue.h"
#include "smtp/server.h"
#include "spool/spool.h"

#define MMOD "kumod::http_metrics"

static atomic_ullong http_received;
static pthread_mutex_t snap_lock = PTHREAD_MUTEX_INITIALIZER;
static json_t *snapshot; /* queue_admin_summary result */
static pthread_once_t reg_once = PTHREAD_ONCE_INIT;

void http_metrics_received(unsigned n)
{
    atomic_fetch_add(&http_received, n);
}

unsigned long long http_metrics_received_total(void)
{
    return atomic_load(&http_received);
}

/* ---- collectors ------------------------------------------------------------------ */

static void c_received(metrics_emitter *em, void *arg)
{
    smtpsrv_stats s;
    smtpsrv_get_stats(&s);
    metrics_emit(em, (double)s.messages_received, "esmtp_listener", NULL);
    metrics_emit(em, (double)atomic_load(&http_received), "http_listener", NULL);
}

static void c_conn_total(metrics_emitter *em, void *arg)
{
    smtpsrv_stats s;
    smtpsrv_get_stats(&s);
    metrics_emit(em, (double)s.connections_total, "esmtp_listener", NULL);
}

static void c_conn_denied(metrics_emitter *em, void *arg)
{
    smtpsrv_stats s;
    smtpsrv_get_stats(&s);
    metrics_emit(em, (double)s.connections_denied, "esmtp_listener", NULL);
}

static void readyq_service(const char *name, char *out, size_t len);

enum qfield { Q_DELIVERED, Q_TRANSFAIL, Q_FAILED, Q_SCHEDULED, Q_SCHED_QUEUES };

static void c_queue_total(metrics_emitter *em, void *arg)
{
    queue_stats s;
    queue_get_stats(&s);
    double v = 0;
    switch ((enum qfield)(intptr_t)arg) {
    case Q_DELIVERED:
        v = (double)s.delivered;
        break;
    case Q_TRANSFAIL:
        v = (double)s.transfail;
        break;
    case Q_FAILED:
        v = (double)s.failed;
        break;
    case Q_SCHEDULED:
        v = (double)s.scheduled;
        break;
    case Q_SCHED_QUEUES:
        v = (double)s.scheduled_queues;
        break;
    }
    if ((enum qfield)(intptr_t)arg >= Q_SCHEDULED) {
        metrics_emit(em, v, NULL);
        return;
    }
    metrics_emit(em, v, "all", NULL);
    /* and one series per ready queue (service "<proto>:<ready queue>"),
     * counted since the queue was made: kcli queue-summary's D and T */
    static const char *const field[] = {"delivered", "transfail", "failed"};
    pthread_mutex_lock(&snap_lock);
    size_t i;
    json_t *q;
    json_array_foreach(json_object_get(snapshot, "ready"), i, q)
    {
        const char *name = json_string_value(json_object_get(q, "name"));
        json_t *n = json_object_get(q, field[(intptr_t)arg]);
        if (!name || !json_is_integer(n))
            continue;
        char service[1024];
        readyq_service(name, service, sizeof(service));
        metrics_emit(em, (double)json_integer_value(n), service, NULL);
    }
    pthread_mutex_unlock(&snap_lock);
}

/* ---- by provider (kcli provider-summary) ---------------------------------------------- */

/* The provider a queue is accounted to: its provider_name, or its site. */
static const char *provider_of(const json_t *q)
{
    const char *p = json_string_value(json_object_get(q, "provider"));
    if (p && *p)
        return p;
    p = json_string_value(json_object_get(q, "site"));
    return p && *p ? p : NULL;
}

enum pfield { P_DELIVERED, P_TRANSFAIL, P_FAILED, P_CONNECTIONS, P_QUEUED };

/* *_by_provider{provider} (arg low bit clear) and *_by_provider_and_pool /
 * _and_source {provider, pool} (low bit set): sums over the ready queues
 * (and, for queued, the scheduled queues) of the last snapshot. */
static void c_by_provider(metrics_emitter *em, void *arg)
{
    intptr_t a = (intptr_t)arg;
    bool by_pool = a & 1;
    enum pfield f = (enum pfield)(a >> 1);
    static const char *const rfield[] = {"delivered", "transfail", "failed", "connection_count",
                                         "ready_count"};
    json_t *acc = json_object(); /* key "provider\tpool" -> number */
    pthread_mutex_lock(&snap_lock);
    const char *kinds[2] = {"ready", "scheduled"};
    for (int k = 0; k < (f == P_QUEUED ? 2 : 1); k++) {
        size_t i;
        json_t *q;
        json_array_foreach(json_object_get(snapshot, kinds[k]), i, q)
        {
            const char *prov = provider_of(q);
            const char *pool = json_string_value(json_object_get(q, "pool"));
            double v = json_number_value(json_object_get(q, k ? "count" : rfield[f]));
            if (!prov)
                continue;
            char key[1024];
            snprintf(key, sizeof(key), "%s\t%s", prov, by_pool ? (pool ? pool : "unspecified") : "");
            json_t *cur = json_object_get(acc, key);
            json_object_set_new(acc, key, json_real(json_number_value(cur) + v));
        }
    }
    pthread_mutex_unlock(&snap_lock);
    const char *key;
    json_t *v;
    json_object_foreach(acc, key, v)
    {
        char prov[1024];
        snprintf(prov, sizeof(prov), "%s", key);
        char *tab = strchr(prov, '\t');
        if (tab)
            *tab = 0;
        if (by_pool)
            metrics_emit(em, json_number_value(v), prov, tab ? tab + 1 : "", NULL);
        else
            metrics_emit(em, json_number_value(v), prov, NULL);
    }
    json_decref(acc);
}

static void reg_by_provider(void)
{
    static const struct {
        const char *name, *pool_name, *help;
        enum metrics_type type;
    } fam[] = {
        {"total_messages_delivered_by_provider", "total_messages_delivered_by_provider_and_source",
         "total number of messages ever delivered", METRICS_COUNTER},
        {"total_messages_transfail_by_provider", "total_messages_transfail_by_provider_and_source",
         "total number of message delivery attempts that transiently failed", METRICS_COUNTER},
        {"total_messages_fail_by_provider", "total_messages_fail_by_provider_and_source",
         "total number of message delivery attempts that permanently failed", METRICS_COUNTER},
        {"connection_count_by_provider", "connection_count_by_provider_and_pool",
         "number of active connections", METRICS_GAUGE},
        {"queued_count_by_provider", "queued_count_by_provider_and_pool",
         "number of messages in the ready and scheduled queues", METRICS_GAUGE},
    };
    static const char *const one[] = {"provider"};
    static const char *const two[] = {"provider", "pool"};
    for (size_t i = 0; i < sizeof(fam) / sizeof(fam[0]); i++) {
        for (int by_pool = 0; by_pool < 2; by_pool++) {
            metrics_family *f;
            const char *name = by_pool ? fam[i].pool_name : fam[i].name;
            int rc = metrics_callback_family(&f, fam[i].type, name, fam[i].help,
                                             by_pool ? two : one, by_pool ? 2 : 1, c_by_provider,
                                             (void *)(((intptr_t)i << 1) | by_pool));
            if (rc && rc != KERR_EXISTS)
                DERROR(MMOD, "cannot register metric family %s: %s", name, kerr_str(rc));
        }
    }
}

/* "smtp_client", "maildir", "lua" ... from a ready queue name
 * "<source>-><site>@<proto>[:<detail>]", as KumoMTA's service labels. */
static void readyq_service(const char *name, char *out, size_t len)
{
    const char *at = strrchr(name, '@');
    const char *proto = at ? at + 1 : "unknown";
    size_t pl = strcspn(proto, ":");
    snprintf(out, len, "%.*s:%s", (int)pl, proto, name);
}

/* dispatcher_watchdog_aborted_total: "all", and one series per ready queue
 * (service "<proto>:<ready queue>") that has aborted a dispatcher */
static void c_watchdog(metrics_emitter *em, void *arg)
{
    (void)arg;
    queue_stats s;
    queue_get_stats(&s);
    metrics_emit(em, (double)s.watchdog_aborted, "all", NULL);
    pthread_mutex_lock(&snap_lock);
    size_t i;
    json_t *q;
    json_array_foreach(json_object_get(snapshot, "ready"), i, q)
    {
        const char *name = json_string_value(json_object_get(q, "name"));
        json_int_t n = json_integer_value(json_object_get(q, "watchdog_aborted"));
        if (!name || n <= 0)
            continue;
        char service[1024];
        readyq_service(name, service, sizeof(service));
        metrics_emit(em, (double)n, service, NULL);
    }
    pthread_mutex_unlock(&snap_lock);
}

static void c_scheduled(metrics_emitter *em, void *arg)
{
    pthread_mutex_lock(&snap_lock);
    size_t i;
    json_t *q;
    json_array_foreach(json_object_get(snapshot, "scheduled"), i, q)
    {
        const char *name = json_string_value(json_object_get(q, "name"));
        if (name)
            metrics_emit(em, json_number_value(json_object_get(q, "count")), name, NULL);
    }
    pthread_mutex_unlock(&snap_lock);
}

static void c_ready(metrics_emitter *em, void *arg)
{
    const char *field = arg;
    pthread_mutex_lock(&snap_lock);
    size_t i;
    json_t *q;
    json_array_foreach(json_object_get(snapshot, "ready"), i, q)
    {
        const char *name = json_string_value(json_object_get(q, "name"));
        json_t *v = json_object_get(q, field);
        if (!name || !json_is_number(v))
            continue;
        char service[1024];
        readyq_service(name, service, sizeof(service));
        metrics_emit(em, json_number_value(v), service, NULL);
    }
    pthread_mutex_unlock(&snap_lock);
}

/* disk_free_* and rocks_spool_*: which field of spool_health_info a family
 * reports, and its C type. */
typedef struct health_field {
    size_t off;
    bool is_double, rocks_only, is_bool;
} health_field;

#define HF(field, dbl, rocks)                                                                      \
    {offsetof(spool_health_info, field), dbl, rocks, false}

static const health_field hf_disk_bytes = HF(disk_free_bytes, false, false);
static const health_field hf_disk_inodes = HF(disk_free_inodes, false, false);
static const health_field hf_disk_pct = HF(disk_free_percent, true, false);
static const health_field hf_disk_inodes_pct = HF(disk_free_inodes_percent, true, false);
static const health_field hf_mem_total = HF(mem_table_total, false, true);
static const health_field hf_mem_unflushed = HF(mem_table_unflushed, false, true);
static const health_field hf_readers = HF(mem_table_readers_total, false, true);
static const health_field hf_cache = HF(cache_total, false, true);
static const health_field hf_bg_errors = HF(background_errors, false, true);
static const health_field hf_write_stopped = HF(write_stopped, false, true);
static const health_field hf_compactions = HF(num_running_compactions, false, true);
static const health_field hf_compaction_pending = HF(compaction_pending, false, true);
static const health_field hf_pending_bytes = HF(estimate_pending_compaction_bytes, false, true);
static const health_field hf_delayed_rate = HF(actual_delayed_write_rate, false, true);
static const health_field hf_load_shed = {offsetof(spool_health_info, load_shed_active), false,
                                          true, true};

static void c_spool_health(metrics_emitter *em, void *arg)
{
    const health_field *f = arg;
    spool *sp = services_spool();
    if (!sp)
        return;
    spool_health_info info[2];
    spool_get_health(sp, info);
    static const char *const names[2] = {"data spool", "meta spool"};
    for (int i = 0; i < 2; i++) {
        /* not sampled yet: nothing to report rather than zeros */
        if (!info[i].path[0] || (f->rocks_only && !info[i].is_rocksdb))
            continue;
        const char *p = (const char *)&info[i] + f->off;
        double v;
        if (f->is_bool)
            v = *(const bool *)p ? 1 : 0;
        else if (f->is_double)
            v = *(const double *)p;
        else
            v = (double)*(const uint64_t *)p;
        metrics_emit(em, v, f->rocks_only ? info[i].path : names[i], NULL);
    }
}

/* ---- registration ------------------------------------------------------------------ */

static void reg(enum metrics_type type, const char *name, const char *help, const char *label,
                metrics_collect_fn fn, void *arg)
{
    metrics_family *f;
    const char *labels[1] = {label};
    int rc = metrics_callback_family(&f, type, name, help, label ? labels : NULL, label ? 1 : 0,
                                     fn, arg);
    if (rc == KERR_EXISTS)
        DDEBUG(MMOD, "metric family %s is registered elsewhere; leaving it", name);
    else if (rc)
        DERROR(MMOD, "cannot register metric family %s: %s", name, kerr_str(rc));
}

static void c_message_count(metrics_emitter *em, void *arg)
{
    (void)arg;
    metrics_emit(em, (double)message_live_count(), NULL);
}

static void register_once(void)
{
    reg(METRICS_GAUGE, "message_count", "total number of Message objects", NULL, c_message_count,
        NULL);
    reg(METRICS_COUNTER, "total_messages_received", "total number of messages ever received",
        "service", c_received, NULL);
    reg(METRICS_COUNTER, "total_connection_count", "total number of active connections ever made",
        "service", c_conn_total, NULL);
    reg(METRICS_COUNTER, "total_connections_denied",
        "total number of connections rejected due to load shedding or concurrency limits",
        "service", c_conn_denied, NULL);
    reg(METRICS_COUNTER, "total_messages_delivered", "total number of messages ever delivered",
        "service", c_queue_total, (void *)(intptr_t)Q_DELIVERED);
    reg(METRICS_COUNTER, "total_messages_transfail",
        "total number of message delivery attempts that transiently failed", "service",
        c_queue_total, (void *)(intptr_t)Q_TRANSFAIL);
    reg(METRICS_COUNTER, "total_messages_fail",
        "total number of message delivery attempts that permanently failed", "service",
        c_queue_total, (void *)(intptr_t)Q_FAILED);
    reg(METRICS_COUNTER, "dispatcher_watchdog_aborted_total",
        "total number of dispatcher tasks aborted by the progress watchdog", "service",
        c_watchdog, NULL);
    reg(METRICS_GAUGE, "scheduled_count_total",
        "total number of messages across all scheduled queues", NULL, c_queue_total,
        (void *)(intptr_t)Q_SCHEDULED);
    reg(METRICS_GAUGE, "scheduled_queue_count",
        "how many scheduled queues are tracked by the QueueManager", NULL, c_queue_total,
        (void *)(intptr_t)Q_SCHED_QUEUES);
    reg(METRICS_GAUGE, "scheduled_count", "number of messages in the scheduled queue", "queue",
        c_scheduled, NULL);
    reg(METRICS_GAUGE, "ready_count", "number of messages in the ready queue", "service", c_ready,
        (void *)"ready_count");
    reg(METRICS_GAUGE, "connection_count", "number of active connections", "service", c_ready,
        (void *)"connection_count");
    reg_by_provider();
    static const struct {
        const char *name, *help;
        const health_field *f;
    } health[] = {
        {"disk_free_bytes", "number of available bytes in a monitored location", &hf_disk_bytes},
        {"disk_free_inodes", "number of available inodes in a monitored location",
         &hf_disk_inodes},
        {"disk_free_percent", "percentage of available bytes in a monitored location",
         &hf_disk_pct},
        {"disk_free_inodes_percent", "percentage of available inodes in a monitored location",
         &hf_disk_inodes_pct},
        {"rocks_spool_mem_table_total", "Approximate memory usage (bytes) of all the mem-tables",
         &hf_mem_total},
        {"rocks_spool_mem_table_unflushed",
         "Approximate memory usage (bytes) of un-flushed mem-tables", &hf_mem_unflushed},
        {"rocks_spool_mem_table_readers_total",
         "Approximate memory usage (bytes) of all the table readers", &hf_readers},
        {"rocks_spool_cache_total", "Approximate memory (bytes) usage by cache", &hf_cache},
        {"rocks_spool_background_errors",
         "Accumulated count of background errors encountered by the rocksdb instance",
         &hf_bg_errors},
        {"rocks_spool_write_stopped",
         "Set to 1 when the rocksdb instance is currently refusing writes at the "
         "WriteController layer, 0 otherwise",
         &hf_write_stopped},
        {"rocks_spool_num_running_compactions",
         "Number of background compactions currently running for this rocksdb instance",
         &hf_compactions},
        {"rocks_spool_compaction_pending",
         "Set to 1 when at least one compaction is pending for this rocksdb instance, 0 "
         "otherwise",
         &hf_compaction_pending},
        {"rocks_spool_estimate_pending_compaction_bytes",
         "Estimated total bytes that compaction needs to rewrite to bring all levels back under "
         "their target sizes",
         &hf_pending_bytes},
        {"rocks_spool_actual_delayed_write_rate",
         "Current delayed write rate (bytes/second) applied by rocksdb to throttle foreground "
         "writers",
         &hf_delayed_rate},
        {"rocks_spool_load_shed_active",
         "Set to 1 when this spool's load-shedding gate is latched, 0 otherwise", &hf_load_shed},
    };
    for (size_t i = 0; i < sizeof(health) / sizeof(health[0]); i++)
        reg(METRICS_GAUGE, health[i].name, health[i].help,
            health[i].f->rocks_only ? "path" : "name", c_spool_health, (void *)health[i].f);
}

/* Registers the kumod metric families (once). */
static void http_metrics_register(void)
{
    pthread_once(&reg_once, register_once);
}

/* Drops the queue snapshot of the last scrape (at shutdown). */
static void http_metrics_fini(void)
{
    pthread_mutex_lock(&snap_lock);
    json_decref(snapshot);
    snapshot = NULL;
    pthread_mutex_unlock(&snap_lock);
}

/* ---- endpoints ------------------------------------------------------------------------ */

static void render_and_reply(http_req *hr)
{
    size_t len = 0;
    bool json = strcmp(hr->path, "/metrics.json") == 0;
    char *text = json ? metrics_render_json(&len)
                      : metrics_render_prometheus_prefixed(http_req_query(hr, "prefix"), &len);
    if (!text) {
        http_reply_error(hr, 500, "out of memory rendering metrics");
        return;
    }
    http_reply_text(hr, 200,
                    json ? "application/json; charset=utf-8"
                         : "text/plain; version=0.0.4; charset=utf-8",
                    text, len);
    free(text);
}

static void after_summary(void *ud, int status, json_t *result_take, const char *error)
{
    http_req *hr = ud;
    if (status == 200 && result_take) {
        pthread_mutex_lock(&snap_lock);
        json_decref(snapshot);
        snapshot = result_take;
        pthread_mutex_unlock(&snap_lock);
    } else {
        /* render what we have; the queue series may be stale */
        DWARN(MMOD, "queue summary for metrics failed: %s", error ? error : "?");
        json_decref(result_take);
    }
    render_and_reply(hr);
}

static void http_metrics_prometheus(http_req *hr)
{
    queue_admin_summary(after_summary, hr);
}

static void http_metrics_json(http_req *hr)
{
    queue_admin_summary(after_summary, hr);
}

static const http_route metrics_routes[] = {
    {"/metrics", EVHTTP_REQ_GET, http_metrics_prometheus},
    {"/metrics.json", EVHTTP_REQ_GET, http_metrics_json},
};

static const http_endpoints metrics_endpoints = {
    .routes = metrics_routes,
    .n_routes = sizeof(metrics_routes) / sizeof(metrics_routes[0]),
    .start = http_metrics_register,
    .stop = http_metrics_fini,
};

void http_metrics_add_endpoints(void)
{
    http_add_endpoints(&metrics_endpoints);
}
