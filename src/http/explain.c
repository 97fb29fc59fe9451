/* GET /api/admin/explain/v1?id=...: one message's story, from kumod's own
 * records and live state; and the last failure that inspect-message shows.
 *
 * The story joins two sources. The live one asks the queues where the
 * message is now (queue/explainq.h: queue, due time, the insert reasons
 * that say why then, suspension, retry settings) and, when it is queued,
 * loads its envelope and meta (inspect-message). The recorded one reads
 * the local logs (every configure_local_logs directory and its per-record
 * subdirectories, zstd JSON segments, the open one included) for the
 * records carrying the id: Reception, each TransientFailure, Delayed,
 * and the final Delivery / Bounce / Expiration / AdminBounce. A spool id
 * holds its creation time, so the scan starts at the segment that was
 * open when the message was made, and it stops after EXPLAIN_BUDGET bytes
 * read (the answer then says it is incomplete). The waits between
 * attempts are the gaps between the records, named after what the
 * previous record said (a suspension, a throttle, else the retry
 * backoff).
 *
 * A sampled message (kumo.configure_explain_sampling, msg/msgtrace.h) also
 * has a policy trace kept in memory: its steps (handlers entered, meta and
 * header changes with the policy's file:line, the queue entered) become
 * "Policy" events merged by time into the story, and a message known only
 * by its trace (rejected, not logged) is still explained.
 *
 * inspect-message's last failure comes from the same scan (the last
 * TransientFailure record), not from the queued-message record (which
 * stays 96 bytes) nor from the spool (no extra write per failure).
 *
 * Threads: the handlers run on the reactor that accepted the request; the
 * scan runs on this module's worker thread (file I/O and decompression
 * never block a reactor) and its result is answered back on that reactor.
 * Failures: a bad id is a 400, an id found nowhere a 404 saying where it
 * was looked for; unreadable segments are skipped and counted. */
#include <ctype.h>
#include <dirent.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "core/diag.h"
#include "core/duration.h"
#include "core/kerr.h"
#include "core/spoolid.h"
#include "core/workpool.h"
#include "http/explain.h"
#include "http/request.h"
#include "log/logger.h"
#include "log/logs.h"
#include "msg/msgtrace.h"
#include "lua/lib/jsonl_read.h"
#include "queue/admin.h"
#include "queue/explainq.h"

#define XMOD "kumod::explain"
#define EXPLAIN_BUDGET ((size_t)1 << 30) /* compressed bytes read per question */
#define MAX_RECORDS 1000

static workpool *pool;

/* ---- the log scan (worker thread) ---------------------------------------------------------- */

typedef struct scan_job {
    http_req *hr;
    char id[SPOOLID_HEX_LEN + 1];
    int64_t created_ns;
    char **dirs;
    size_t n_dirs;
    bool only_failures; /* inspect-message: the last TransientFailure only */
    /* results */
    json_t *records; /* sorted by event time */
    bool truncated;
    unsigned segments_unreadable;
    json_t *live;    /* explainq's answer, or NULL */
    json_t *inspect; /* inspect-message's message, or NULL */
    json_t *result;  /* inspect-message: the answer being completed */
    json_t *trace;   /* the sampled message's policy trace (msgtrace_json), or NULL */
} scan_job;

static int add_dir(char ***v, size_t *n, const char *d)
{
    for (size_t i = 0; i < *n; i++)
        if (strcmp((*v)[i], d) == 0)
            return 0;
    char **nv = realloc(*v, (*n + 1) * sizeof(*nv));
    if (!nv)
        return KERR_NOMEM;
    *v = nv;
    if (!(nv[*n] = strdup(d)))
        return KERR_NOMEM;
    (*n)++;
    return 0;
}

static int collect_dir(const char *dir, void *ud)
{
    scan_job *j = ud;
    add_dir(&j->dirs, &j->n_dirs, dir);
    /* per_record suffixes may name subdirectories: one level of them */
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        char p[PATH_MAX];
        struct stat st;
        snprintf(p, sizeof(p), "%s/%s", dir, de->d_name);
        if (stat(p, &st) == 0 && S_ISDIR(st.st_mode))
            add_dir(&j->dirs, &j->n_dirs, p);
    }
    closedir(d);
    return 0;
}

/* The newest segment of dir whose name sorts at or before first (the one
 * open when the message was made), or NULL for "from the oldest". */
static char *start_segment(const char *dir, const char *first)
{
    DIR *d = opendir(dir);
    if (!d)
        return NULL;
    char *best = NULL;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        if (strcmp(de->d_name, first) <= 0 && (!best || strcmp(de->d_name, best) > 0)) {
            free(best);
            best = strdup(de->d_name);
        }
    }
    closedir(d);
    return best;
}

/* "2026-12-07T18:35:52.123456Z" -> unix ns (0 when unreadable) */
static int64_t parse_time_ns(const char *s)
{
    struct tm tm = {0};
    if (!s)
        return 0;
    const char *p = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
    if (!p)
        return 0;
    int64_t ns = (int64_t)timegm(&tm) * NS_PER_SEC;
    if (*p == '.') {
        int64_t frac = 0, scale = NS_PER_SEC;
        for (p++; isdigit((unsigned char)*p) && scale > 1; p++) {
            scale /= 10;
            frac += (*p - '0') * scale;
        }
        ns += frac;
    }
    return ns;
}

static int64_t rec_time(const json_t *r)
{
    int64_t ns = parse_time_ns(json_string_value(json_object_get(r, "event_time")));
    if (!ns)
        ns = json_integer_value(json_object_get(r, "timestamp")) * NS_PER_SEC;
    return ns;
}

static int type_rank(const char *t)
{
    return !t                                  ? 9
           : strcmp(t, "Reception") == 0       ? 0
           : strcmp(t, "TransientFailure") == 0 ? 1
           : strcmp(t, "Delayed") == 0          ? 2
                                                : 3;
}

static int cmp_rec(const void *a, const void *b)
{
    const json_t *x = *(json_t *const *)a, *y = *(json_t *const *)b;
    int64_t tx = rec_time(x), ty = rec_time(y);
    if (tx != ty)
        return tx < ty ? -1 : 1;
    return type_rank(json_string_value(json_object_get(x, "type"))) -
           type_rank(json_string_value(json_object_get(y, "type")));
}

static bool same_record(const json_t *a, const json_t *b)
{
    static const char *const keys[] = {"type", "event_time", "num_attempts", "response"};
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
        if (!json_equal(json_object_get(a, keys[i]), json_object_get(b, keys[i])))
            return false;
    return true;
}

static void scan_dir(scan_job *j, const char *dir, const char *first, size_t *budget,
                     json_t *found)
{
    char *start = start_segment(dir, first);
    jsonl_src *src = NULL;
    if (jsonl_src_open(dir, "*", start, false, &src) != 0) {
        free(start);
        return;
    }
    free(start);
    for (;;) {
        const char *line;
        size_t len;
        bool more = false;
        int rc = jsonl_src_next(src, &line, &len, budget, &more);
        if (rc == KERR_PARSE) {
            j->segments_unreadable++;
            continue;
        }
        if (rc < 0)
            break;
        if (rc == 0) {
            if (more)
                j->truncated = true;
            break;
        }
        if (!memmem(line, len, j->id, SPOOLID_HEX_LEN))
            continue;
        json_t *r = json_loadb(line, len, 0, NULL);
        const char *rid = json_string_value(json_object_get(r, "id"));
        const char *type = json_string_value(json_object_get(r, "type"));
        bool keep = rid && strcmp(rid, j->id) == 0 && type &&
                    (!j->only_failures || strcmp(type, "TransientFailure") == 0);
        size_t i;
        json_t *v;
        json_array_foreach(found, i, v) if (keep && same_record(v, r)) keep = false;
        if (keep && json_array_size(found) < MAX_RECORDS) {
            /* what the story needs; meta and headers stay in the logs */
            json_object_del(r, "headers");
            json_array_append_new(found, r);
        } else {
            json_decref(r);
        }
    }
    jsonl_src_free(src);
}

static void scan_work(void *arg)
{
    scan_job *j = arg;
    logs_flush(); /* the open segments hold every record made so far */
    char first[64];
    /* a little before: the segment open then may carry a slightly older name */
    logger_segment_name(j->created_ns > 2 * NS_PER_SEC ? j->created_ns - 2 * NS_PER_SEC : 0, first,
                        sizeof(first));
    size_t budget = EXPLAIN_BUDGET;
    json_t *found = json_array();
    for (size_t i = 0; i < j->n_dirs && budget > 0; i++)
        scan_dir(j, j->dirs[i], first, &budget, found);
    size_t n = json_array_size(found);
    json_t **v = malloc((n ? n : 1) * sizeof(*v));
    for (size_t i = 0; v && i < n; i++)
        v[i] = json_array_get(found, i);
    if (v)
        qsort(v, n, sizeof(*v), cmp_rec);
    j->records = json_array();
    for (size_t i = 0; v && i < n; i++)
        json_array_append(j->records, v[i]);
    free(v);
    json_decref(found);
}

static void scan_job_free(scan_job *j)
{
    for (size_t i = 0; i < j->n_dirs; i++)
        free(j->dirs[i]);
    free(j->dirs);
    json_decref(j->records);
    json_decref(j->live);
    json_decref(j->inspect);
    json_decref(j->result);
    json_decref(j->trace);
    free(j);
}

/* Starts the scan of j on the worker; done runs on the calling reactor. */
static void scan_start(scan_job *j, reactor_fn done)
{
    logs_foreach_dir(collect_dir, j);
    if (!pool || workpool_submit(pool, reactor_current(), scan_work, done, j) != 0) {
        /* no worker (stopping): answer with what the queues know */
        j->records = json_array();
        j->truncated = true;
        done(j);
    }
}

/* ---- the story ----------------------------------------------------------------------------- */

static const char *jstr(const json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

static char *response_text(const json_t *resp)
{
    if (!json_is_object(resp))
        return NULL;
    char *out = NULL;
    const json_t *enh = json_object_get(resp, "enhanced_code");
    const char *content = jstr(resp, "content");
    int rc;
    if (json_is_object(enh))
        rc = asprintf(&out, "%lld %lld.%lld.%lld %s",
                      (long long)json_integer_value(json_object_get(resp, "code")),
                      (long long)json_integer_value(json_object_get(enh, "class")),
                      (long long)json_integer_value(json_object_get(enh, "subject")),
                      (long long)json_integer_value(json_object_get(enh, "detail")),
                      content ? content : "");
    else
        rc = asprintf(&out, "%lld %s", (long long)json_integer_value(json_object_get(resp, "code")),
                      content ? content : "");
    return rc < 0 ? NULL : out;
}

static void set_iso(json_t *o, const char *k, int64_t ns)
{
    time_t t = (time_t)(ns / NS_PER_SEC);
    struct tm tm;
    char buf[64];
    gmtime_r(&t, &tm);
    strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
    json_object_set_new(o, k, json_string(buf));
}

static void fmt_dur(int64_t s, char *buf, size_t len)
{
    if (s < 0)
        s = 0;
    if (s < 60)
        snprintf(buf, len, "%llds", (long long)s);
    else if (s < 3600)
        snprintf(buf, len, "%lldm %llds", (long long)(s / 60), (long long)(s % 60));
    else
        snprintf(buf, len, "%lldh %lldm", (long long)(s / 3600), (long long)(s % 3600 / 60));
}

static char *peer_text(const json_t *r)
{
    const json_t *p = json_object_get(r, "peer_address");
    if (!json_is_object(p))
        return NULL;
    char *out = NULL;
    const char *name = jstr(p, "name"), *addr = jstr(p, "addr");
    if (name && addr && strcmp(name, addr) == 0)
        name = NULL; /* a literal [ip] host: once is enough */
    if (asprintf(&out, "%s%s%s%s", name ? name : "", name && *name && addr ? " [" : "",
                 addr ? addr : "", name && *name && addr ? "]" : "") < 0)
        return NULL;
    return out;
}

static void copy_str(json_t *ev, const char *k, const json_t *r, const char *rk)
{
    const char *s = jstr(r, rk);
    if (s && *s)
        json_object_set_new(ev, k, json_string(s));
}

/* What a wait after record r was about, from what r said. */
static const char *wait_cause(const json_t *r)
{
    const char *c = jstr(json_object_get(r, "response"), "content");
    if (c && strcasestr(c, "suspend"))
        return "suspension";
    if (c && strcasestr(c, "throttl"))
        return "throttle";
    if (c && strcasestr(c, "rate"))
        return "rate limit";
    return "retry backoff";
}

static json_t *event_of(const json_t *r)
{
    const char *type = jstr(r, "type");
    json_t *ev = json_object();
    json_object_set_new(ev, "kind", json_string(type ? type : "?"));
    set_iso(ev, "time", rec_time(r));
    char *resp = response_text(json_object_get(r, "response"));
    char *peer = peer_text(r);
    /* a record's num_attempts counts the attempts before it (KumoMTA's) */
    long long att = json_integer_value(json_object_get(r, "num_attempts")) + 1;
    char summary[1024] = "";
    if (strcmp(type, "Reception") == 0) {
        const json_t *meta = json_object_get(r, "meta");
        const char *via = jstr(meta, "received_via");
        const char *rcpt = jstr(r, "recipient");
        snprintf(summary, sizeof(summary), "received from %s%s%s over %s into queue %s, %lld bytes, "
                 "%s -> %s",
                 peer ? peer : "?", via ? " on listener " : "", via ? via : "",
                 jstr(r, "reception_protocol") ? jstr(r, "reception_protocol") : "?",
                 jstr(r, "queue") ? jstr(r, "queue") : "?",
                 (long long)json_integer_value(json_object_get(r, "size")),
                 jstr(r, "sender") ? jstr(r, "sender") : "",
                 rcpt ? rcpt : "(several recipients)");
        if (peer)
            json_object_set_new(ev, "peer", json_string(peer));
        copy_str(ev, "queue", r, "queue");
    } else {
        if (strcmp(type, "TransientFailure") == 0)
            snprintf(summary, sizeof(summary), "attempt %lld failed temporarily", att);
        else if (strcmp(type, "Delivery") == 0)
            snprintf(summary, sizeof(summary), "delivered on attempt %lld%s%s", att,
                     peer ? " to " : "", peer ? peer : "");
        else if (strcmp(type, "Bounce") == 0)
            snprintf(summary, sizeof(summary), "bounced (permanent failure) on attempt %lld", att);
        else if (strcmp(type, "Expiration") == 0)
            snprintf(summary, sizeof(summary), "expired after %lld attempts", att - 1);
        else if (strcmp(type, "AdminBounce") == 0)
            snprintf(summary, sizeof(summary), "bounced by an administrator");
        else if (strcmp(type, "Delayed") == 0)
            snprintf(summary, sizeof(summary), "delayed");
        else
            snprintf(summary, sizeof(summary), "%s record", type);
        if (resp)
            json_object_set_new(ev, "response", json_string(resp));
        if (peer)
            json_object_set_new(ev, "peer", json_string(peer));
        copy_str(ev, "queue", r, "queue");
        const char *site = jstr(r, "site");
        if (site && strstr(site, "->"))
            json_object_set_new(ev, "ready_queue", json_string(site));
        copy_str(ev, "source", r, "egress_source");
        copy_str(ev, "pool", r, "egress_pool");
        if (strcmp(type, "Delivery") != 0)
            copy_str(ev, "classification", r, "bounce_classification");
        const char *tv = jstr(r, "tls_protocol_version"), *tc = jstr(r, "tls_cipher");
        if (tv || tc) {
            char tls[256];
            snprintf(tls, sizeof(tls), "%s%s%s", tv ? tv : "", tv && tc ? " " : "", tc ? tc : "");
            json_object_set_new(ev, "tls", json_string(tls));
        }
        const json_t *sa = json_object_get(r, "source_address");
        if (json_is_object(sa) && jstr(sa, "address"))
            json_object_set_new(ev, "source_address", json_string(jstr(sa, "address")));
        json_object_set_new(ev, "attempt", json_integer(att));
    }
    json_object_set_new(ev, "summary", json_string(summary));
    free(resp);
    free(peer);
    return ev;
}

/* Why a queued message is due when it is, in words. */
static void why_then(const json_t *live, char *out, size_t len)
{
    const json_t *reasons = json_object_get(live, "reasons");
    size_t n = json_array_size(reasons);
    const char *last = n ? json_string_value(json_array_get(reasons, n - 1)) : "Received";
    long long att = json_integer_value(json_object_get(live, "num_attempts"));
    char ri[64];
    fmt_dur(json_integer_value(json_object_get(live, "retry_interval_s")), ri, sizeof(ri));
    if (json_is_true(json_object_get(live, "suspended")) &&
        strcmp(jstr(live, "state"), "scheduled") == 0)
        snprintf(out, len, "its scheduled queue is suspended by an administrator; it is retried "
                 "when the suspension ends or at the next retry");
    else if (strcmp(last, "LoggedTransientFailure") == 0)
        snprintf(out, len, "retry after transient failure number %lld: the backoff starts at "
                 "retry_interval %s and doubles with each attempt (capped by "
                 "max_retry_interval), with jitter", att, ri);
    else if (strcmp(last, "AdminSuspended") == 0)
        snprintf(out, len, "held by a scheduled-queue suspension");
    else if (strcmp(last, "ScheduledForLater") == 0)
        snprintf(out, len, "the message's own scheduling (first attempt time or time window)");
    else if (strcmp(last, "ReadyQueueWasSuspended") == 0)
        snprintf(out, len, "its ready queue was suspended when it became due");
    else if (strcmp(last, "ReadyQueueWasFull") == 0)
        snprintf(out, len, "its ready queue was full (max_ready) when it became due");
    else if (strstr(last, "Throttle"))
        snprintf(out, len, "throttled (%s) when it became due", last);
    else if (strcmp(last, "TooManyConnectionFailures") == 0)
        snprintf(out, len, "connections to its destination kept failing");
    else
        snprintf(out, len, "%s", last);
}

/* A policy trace step as a story event: kind "Policy". */
static json_t *policy_event(const json_t *st)
{
    json_t *ev = json_object();
    int64_t ns = json_integer_value(json_object_get(st, "time_ns"));
    json_object_set_new(ev, "kind", json_string("Policy"));
    set_iso(ev, "time", ns);
    json_object_set_new(ev, "time_ns", json_integer(ns));
    const char *kind = jstr(st, "kind"), *where = jstr(st, "where"), *detail = jstr(st, "detail");
    json_object_set_new(ev, "step", json_string(kind ? kind : "?"));
    if (where)
        json_object_set_new(ev, "where", json_string(where));
    char summary[512];
    if (kind && strcmp(kind, "handler") == 0)
        snprintf(summary, sizeof(summary), "handler for %s entered", detail ? detail : "?");
    else if (kind && strcmp(kind, "queue") == 0)
        snprintf(summary, sizeof(summary), "inserted %s", detail ? detail : "");
    else
        snprintf(summary, sizeof(summary), "%s: %s", kind ? kind : "?", detail ? detail : "");
    if (kind && strcmp(kind, "handler") == 0 && detail)
        json_object_set_new(ev, "event", json_string(detail));
    json_object_set_new(ev, "detail", json_string(detail ? detail : ""));
    json_object_set_new(ev, "summary", json_string(summary));
    return ev;
}

/* Appends the trace steps made at or before until_ns (all when < 0). */
static void add_steps(json_t *events, const json_t *steps, size_t *next, int64_t until_ns)
{
    for (; *next < json_array_size(steps); (*next)++) {
        const json_t *st = json_array_get(steps, *next);
        if (until_ns >= 0 && json_integer_value(json_object_get(st, "time_ns")) > until_ns)
            break;
        json_array_append_new(events, policy_event(st));
    }
}

static json_t *story(scan_job *j, const char **outcome_out)
{
    json_t *events = json_array();
    size_t n = json_array_size(j->records);
    const char *final = NULL;
    const json_t *final_rec = NULL;
    const json_t *steps = json_object_get(j->trace, "steps");
    size_t next_step = 0;
    for (size_t i = 0; i < n; i++) {
        const json_t *r = json_array_get(j->records, i);
        /* the policy's steps happened before the record that followed them */
        add_steps(events, steps, &next_step, rec_time(r));
        json_array_append_new(events, event_of(r));
        const char *type = jstr(r, "type");
        if (strcmp(type, "TransientFailure") == 0 || strcmp(type, "Delayed") == 0) {
            /* the wait that followed, until the next record or now */
            int64_t from = rec_time(r);
            int64_t to = i + 1 < n ? rec_time(json_array_get(j->records, i + 1)) : 0;
            json_t *w = json_object();
            json_object_set_new(w, "kind", json_string("Wait"));
            set_iso(w, "time", from);
            char d[64], s[256];
            if (to) {
                fmt_dur((to - from) / NS_PER_SEC, d, sizeof(d));
                snprintf(s, sizeof(s), "waited %s (%s)", d, wait_cause(r));
                json_object_set_new(w, "duration_s", json_integer((to - from) / NS_PER_SEC));
            } else {
                fmt_dur((clock_wall_ns() - from) / NS_PER_SEC, d, sizeof(d));
                snprintf(s, sizeof(s), "waiting for %s so far (%s)", d, wait_cause(r));
            }
            json_object_set_new(w, "cause", json_string(wait_cause(r)));
            json_object_set_new(w, "summary", json_string(s));
            json_array_append_new(events, w);
        } else if (strcmp(type, "Reception") != 0) {
            final = type;
            final_rec = r;
        }
    }
    add_steps(events, steps, &next_step, -1);
    static __thread char outcome[1024];
    if (j->live) {
        json_t *cur = json_object();
        json_object_set_new(cur, "kind", json_string("Current"));
        set_iso(cur, "time", clock_wall_ns());
        char why[512], s[1024];
        why_then(j->live, why, sizeof(why));
        const char *state = jstr(j->live, "state");
        json_int_t due = json_integer_value(json_object_get(j->live, "due_unix"));
        if (strcmp(state, "ready") == 0) {
            snprintf(s, sizeof(s), "in ready queue %s, waiting for a connection (%lld of %lld "
                     "open, %lld ready)%s",
                     jstr(j->live, "ready_queue"),
                     (long long)json_integer_value(json_object_get(j->live, "connections")),
                     (long long)json_integer_value(json_object_get(j->live, "connection_limit")),
                     (long long)json_integer_value(json_object_get(j->live, "ready_count")),
                     json_is_true(json_object_get(j->live, "suspended"))
                         ? "; the ready queue is suspended"
                         : "");
            json_object_set_new(cur, "ready_queue", json_string(jstr(j->live, "ready_queue")));
        } else {
            char d[64];
            int64_t now_s = clock_wall_ns() / NS_PER_SEC;
            fmt_dur(due - now_s, d, sizeof(d));
            snprintf(s, sizeof(s), "in scheduled queue %s after %lld attempt(s); %s%s%s; why then: "
                     "%s",
                     jstr(j->live, "queue"),
                     (long long)json_integer_value(json_object_get(j->live, "num_attempts")),
                     due > now_s ? "next attempt due in " : "due now", due > now_s ? d : "",
                     "", why);
            json_object_set_new(cur, "queue", json_string(jstr(j->live, "queue")));
        }
        if (due > 0)
            set_iso(cur, "due", due * NS_PER_SEC);
        json_object_set_new(cur, "reason", json_string(why));
        json_object_set_new(cur, "summary", json_string(s));
        json_array_append_new(events, cur);
        snprintf(outcome, sizeof(outcome), "still queued (%.900s)", s);
    } else if (final) {
        char *resp = response_text(json_object_get(final_rec, "response"));
        snprintf(outcome, sizeof(outcome), "%s%s%s", final, resp ? ": " : "", resp ? resp : "");
        free(resp);
    } else if (n) {
        snprintf(outcome, sizeof(outcome), "no final record yet and in no queue: a delivery "
                 "attempt is under way, or its last records are not in the local logs");
    } else {
        snprintf(outcome, sizeof(outcome), "only its policy trace is known: no log record "
                 "carries it and it is in no queue (rejected, or not logged)");
    }
    *outcome_out = outcome;
    return events;
}

static void explain_done(void *arg)
{
    scan_job *j = arg;
    http_req *hr = j->hr;
    spoolid sid;
    if (spoolid_from_hex(j->id, &sid) == 0)
        j->trace = msgtrace_json(&sid);
    if (!j->live && json_array_size(j->records) == 0 && !j->trace) {
        http_reply_error(hr, 404,
                         "no message with id %s: it is in no queue, no local log record since "
                         "its creation carries it, and no policy trace is kept for it%s",
                         j->id, j->truncated ? " (the log scan stopped early)" : "");
        scan_job_free(j);
        return;
    }
    const char *outcome = NULL;
    json_t *events = story(j, &outcome);
    json_t *res = json_object();
    json_object_set_new(res, "id", json_string(j->id));
    set_iso(res, "created", j->created_ns);
    json_object_set_new(res, "outcome", json_string(outcome ? outcome : ""));
    json_object_set_new(res, "events", events);
    if (j->live)
        json_object_set(res, "live", j->live);
    if (j->inspect) {
        json_t *env = json_object();
        static const char *const keys[] = {"sender", "recipient", "meta", "scheduling"};
        for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
            if (json_object_get(j->inspect, keys[i]))
                json_object_set(env, keys[i], json_object_get(j->inspect, keys[i]));
        json_object_set_new(res, "message", env);
    }
    json_t *tr = json_object();
    json_object_set_new(tr, "sampled", json_boolean(j->trace != NULL));
    if (j->trace) {
        json_object_set_new(tr, "steps",
                            json_integer((json_int_t)json_array_size(
                                json_object_get(j->trace, "steps"))));
        json_object_set(tr, "dropped", json_object_get(j->trace, "dropped"));
    }
    json_object_set_new(res, "trace", tr);
    json_object_set_new(res, "log_records", json_integer((json_int_t)json_array_size(j->records)));
    json_object_set_new(res, "logs_incomplete", json_boolean(j->truncated));
    json_object_set_new(res, "segments_unreadable", json_integer(j->segments_unreadable));
    http_reply_json(hr, 200, res);
    scan_job_free(j);
}

static void after_inspect(void *ud, int status, json_t *result_take, const char *error)
{
    (void)error;
    scan_job *j = ud;
    if (status == 200)
        j->inspect = json_incref(json_object_get(result_take, "message"));
    json_decref(result_take);
    scan_start(j, explain_done);
}

static void after_live(void *ud, json_t *live_take)
{
    scan_job *j = ud;
    j->live = live_take;
    if (live_take) {
        queue_admin_inspect_message(j->id, false, after_inspect, j);
        return;
    }
    scan_start(j, explain_done);
}

static scan_job *job_for(http_req *hr, const char *id)
{
    spoolid sid;
    if (!id || strlen(id) != SPOOLID_HEX_LEN || spoolid_from_hex(id, &sid) != 0) {
        http_reply_error(hr, 400, "id must be a spool id of 32 hex digits, got '%.40s'",
                         id ? id : "");
        return NULL;
    }
    scan_job *j = calloc(1, sizeof(*j));
    if (!j) {
        http_reply_error(hr, 500, "out of memory");
        return NULL;
    }
    j->hr = hr;
    spoolid_to_hex(&sid, j->id); /* lower case, as the records have it */
    j->created_ns = spoolid_created_ns(&sid);
    if (j->created_ns < 0) /* not a time kumod made: read every segment */
        j->created_ns = 0;
    return j;
}

static void h_explain(http_req *hr)
{
    const char *id = http_req_query(hr, "id");
    if (!id) {
        http_reply_error(hr, 400, "missing query parameter `id`");
        return;
    }
    scan_job *j = job_for(hr, id);
    if (j)
        queue_explain_live(j->id, after_live, j);
}

/* ---- inspect-message's last failure ---------------------------------------------------------- */

static void last_failure_done(void *arg)
{
    scan_job *j = arg;
    json_t *msg = json_object_get(j->result, "message");
    size_t n = json_array_size(j->records);
    if (n) {
        const json_t *r = json_array_get(j->records, n - 1);
        json_t *lf = json_object();
        set_iso(lf, "time", rec_time(r));
        char *resp = response_text(json_object_get(r, "response"));
        json_object_set_new(lf, "response", resp ? json_string(resp) : json_null());
        free(resp);
        json_object_set(lf, "num_attempts", json_object_get(r, "num_attempts"));
        json_object_set_new(lf, "attempt",
                            json_integer(json_integer_value(json_object_get(r, "num_attempts")) + 1));
        copy_str(lf, "ready_queue", r, "site");
        copy_str(lf, "classification", r, "bounce_classification");
        char *peer = peer_text(r);
        if (peer)
            json_object_set_new(lf, "peer", json_string(peer));
        free(peer);
        json_object_set_new(msg, "last_failure", lf);
    } else {
        json_object_set_new(msg, "last_failure", json_null());
    }
    json_t *res = j->result;
    j->result = NULL;
    http_reply_json(j->hr, 200, res);
    scan_job_free(j);
}

void http_explain_add_last_failure(http_req *hr, json_t *result_take)
{
    const char *id = json_string_value(json_object_get(result_take, "id"));
    spoolid sid;
    if (!id || spoolid_from_hex(id, &sid) != 0 || !json_object_get(result_take, "message")) {
        http_reply_json(hr, 200, result_take);
        return;
    }
    scan_job *j = calloc(1, sizeof(*j));
    if (!j) {
        http_reply_json(hr, 200, result_take);
        return;
    }
    j->hr = hr;
    spoolid_to_hex(&sid, j->id);
    j->created_ns = spoolid_created_ns(&sid);
    if (j->created_ns < 0)
        j->created_ns = 0;
    j->only_failures = true;
    j->result = result_take;
    scan_start(j, last_failure_done);
}

/* ---- registration --------------------------------------------------------------------------- */

static void explain_start(void)
{
    if (!pool)
        pool = workpool_new("explain", 1);
    if (!pool)
        DWARN(XMOD, "no worker thread for explain: answers will not read the logs");
}

static void explain_stop(void)
{
    workpool_free(pool);
    pool = NULL;
}

static const http_route explain_routes[] = {
    {"/api/admin/explain/v1", EVHTTP_REQ_GET, h_explain},
};

static const http_endpoints explain_endpoints = {explain_routes, 1, explain_start, explain_stop};

void http_explain_add_endpoints(void)
{
    http_add_endpoints(&explain_endpoints);
}
