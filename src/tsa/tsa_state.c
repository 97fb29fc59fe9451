/* The TSA daemon's decisions and their persistence.
 *
 * Owns: every live entry (ReadyQ/SchedQ suspensions, SchedQ bounces,
 * configuration overrides, Threshold event series) in one list behind
 * state_lock, and the SQLite database that mirrors it (one table: kind,
 * key, expires, data as JSON). Entries are keyed as KumoMTA keys them: a
 * suspension by its action and the record's site (the egress path, which
 * names the source), a Threshold series by rule and site, so that each
 * site/source counts on its own.
 *
 * Threads: tsa_state_evaluate and the exports run on any reactor (under
 * state_lock, no I/O); the database is opened and read by the main thread
 * at start-up, then written only by db_thread, which takes batches of
 * upserts from a queue, so no reactor waits on an fsync.
 *
 * Failure: a database that cannot be opened stops the daemon at start-up
 * (tsa_state_open); a failed write is logged (the entry stays live in
 * memory and is written again when it changes); records without the
 * fields a rule needs (no tenant for SuspendTenant) are logged and
 * skipped, as KumoMTA does. */
#include "tsa/tsa_state.h"

#include <openssl/evp.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/diag.h"
#include "core/kerr.h"
#include "core/throttle.h"
#include "msg/queue_name.h"

#define TMOD "tsa_daemon"

typedef struct entry {
    struct entry *next;
    char *kind; /* "rq", "sq", "bounce", "config", "event" */
    char *key;
    int64_t expires; /* unix seconds */
    json_t *data;
} entry;

static pthread_mutex_t state_lock = PTHREAD_MUTEX_INITIALIZER;
static entry *entries;
static uint64_t n_records, n_actions;
static char *db_path;

/* ---- the writer thread ------------------------------------------------------ */

typedef struct db_job {
    struct db_job *next;
    char *kind, *key, *data; /* data NULL: delete */
    int64_t expires;
} db_job;

static sqlite3 *db;
static pthread_t db_tid;
static bool db_running;
static pthread_mutex_t db_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t db_cond = PTHREAD_COND_INITIALIZER;
static db_job *db_head, **db_tail = &db_head;
static bool db_stop;

static void db_job_free(db_job *j)
{
    free(j->kind);
    free(j->key);
    free(j->data);
    free(j);
}

static void db_exec_batch(db_job *jobs)
{
    sqlite3_exec(db, "BEGIN", NULL, NULL, NULL);
    sqlite3_stmt *up = NULL, *del = NULL;
    sqlite3_prepare_v2(db,
                       "INSERT OR REPLACE INTO tsa_state(kind, key, expires, data) "
                       "VALUES (?1, ?2, ?3, ?4)",
                       -1, &up, NULL);
    sqlite3_prepare_v2(db, "DELETE FROM tsa_state WHERE kind = ?1 AND key = ?2", -1, &del, NULL);
    for (db_job *j = jobs; j; j = j->next) {
        sqlite3_stmt *st = j->data ? up : del;
        if (!st)
            continue;
        sqlite3_reset(st);
        sqlite3_bind_text(st, 1, j->kind, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, j->key, -1, SQLITE_STATIC);
        if (j->data) {
            sqlite3_bind_int64(st, 3, j->expires);
            sqlite3_bind_text(st, 4, j->data, -1, SQLITE_STATIC);
        }
        if (sqlite3_step(st) != SQLITE_DONE)
            DERROR(TMOD, "tsa database %s: cannot write %s %s: %s", db_path, j->kind, j->key,
                   sqlite3_errmsg(db));
    }
    sqlite3_finalize(up);
    sqlite3_finalize(del);
    char sql[96];
    snprintf(sql, sizeof(sql), "DELETE FROM tsa_state WHERE expires <= %lld",
             (long long)time(NULL));
    sqlite3_exec(db, sql, NULL, NULL, NULL);
    if (sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
        DERROR(TMOD, "tsa database %s: commit failed: %s", db_path, sqlite3_errmsg(db));
}

static void *db_thread(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&db_lock);
    for (;;) {
        while (!db_head && !db_stop)
            pthread_cond_wait(&db_cond, &db_lock);
        db_job *jobs = db_head;
        db_head = NULL;
        db_tail = &db_head;
        bool stop = db_stop;
        pthread_mutex_unlock(&db_lock);
        if (jobs)
            db_exec_batch(jobs);
        while (jobs) {
            db_job *n = jobs->next;
            db_job_free(jobs);
            jobs = n;
        }
        pthread_mutex_lock(&db_lock);
        if (stop && !db_head)
            break;
    }
    pthread_mutex_unlock(&db_lock);
    return NULL;
}

/* Queues the write of e (or its deletion). Under state_lock. */
static void persist(const entry *e, bool remove)
{
    if (!db_running)
        return;
    db_job *j = calloc(1, sizeof(*j));
    if (!j)
        abort();
    j->kind = strdup(e->kind);
    j->key = strdup(e->key);
    j->expires = e->expires;
    j->data = remove ? NULL : json_dumps(e->data, JSON_COMPACT);
    if (!j->kind || !j->key || (!remove && !j->data))
        abort();
    pthread_mutex_lock(&db_lock);
    *db_tail = j;
    db_tail = &j->next;
    pthread_cond_signal(&db_cond);
    pthread_mutex_unlock(&db_lock);
}

/* ---- entries ------------------------------------------------------------------ */

static void entry_free(entry *e)
{
    free(e->kind);
    free(e->key);
    json_decref(e->data);
    free(e);
}

/* Drops expired entries. Under state_lock. */
static void expire_locked(int64_t now_s)
{
    for (entry **pp = &entries; *pp;) {
        entry *e = *pp;
        if (e->expires <= now_s) {
            *pp = e->next;
            entry_free(e);
        } else {
            pp = &e->next;
        }
    }
}

static entry *find_locked(const char *kind, const char *key)
{
    for (entry *e = entries; e; e = e->next)
        if (strcmp(e->kind, kind) == 0 && strcmp(e->key, key) == 0)
            return e;
    return NULL;
}

/* Inserts or replaces; takes data. Under state_lock. */
static entry *upsert_locked(const char *kind, const char *key, int64_t expires, json_t *data)
{
    entry *e = find_locked(kind, key);
    if (!e) {
        e = calloc(1, sizeof(*e));
        if (!e)
            abort();
        e->kind = strdup(kind);
        e->key = strdup(key);
        if (!e->kind || !e->key)
            abort();
        e->next = entries;
        entries = e;
    } else {
        json_decref(e->data);
    }
    e->expires = expires;
    e->data = data;
    persist(e, false);
    return e;
}

void tsa_format_time(int64_t s, char out[32])
{
    time_t t = (time_t)s;
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* ---- opening ---------------------------------------------------------------------- */

void tsa_state_set_db_path(const char *path)
{
    char *p = strdup(path);
    if (!p)
        abort();
    free(db_path);
    db_path = p;
}

const char *tsa_state_db_path(void)
{
    return db_path ? db_path : "/var/spool/kumomta/tsa.db";
}

int tsa_state_open(char *err, size_t errlen)
{
    const char *path = tsa_state_db_path();
    if (!db_path)
        tsa_state_set_db_path(path);
    int rc = sqlite3_open_v2(db_path, &db,
                             SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_URI |
                                 SQLITE_OPEN_NOMUTEX,
                             NULL);
    if (rc != SQLITE_OK) {
        snprintf(err, errlen, "tsa: cannot open database %s: %s", db_path,
                 db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
        sqlite3_close(db);
        db = NULL;
        return KERR_IO;
    }
    sqlite3_busy_timeout(db, 5000);
    char *msg = NULL;
    if (sqlite3_exec(db,
                     "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
                     "CREATE TABLE IF NOT EXISTS tsa_state (kind TEXT NOT NULL, key TEXT NOT "
                     "NULL, expires INTEGER NOT NULL, data TEXT NOT NULL, PRIMARY KEY (kind, "
                     "key))",
                     NULL, NULL, &msg) != SQLITE_OK) {
        snprintf(err, errlen, "tsa: database %s: %s", db_path, msg ? msg : "error");
        sqlite3_free(msg);
        sqlite3_close(db);
        db = NULL;
        return KERR_IO;
    }
    sqlite3_stmt *st = NULL;
    int64_t now = time(NULL);
    size_t loaded = 0;
    if (sqlite3_prepare_v2(db, "SELECT kind, key, expires, data FROM tsa_state WHERE expires > ?1",
                           -1, &st, NULL) == SQLITE_OK) {
        sqlite3_bind_int64(st, 1, now);
        pthread_mutex_lock(&state_lock);
        while (sqlite3_step(st) == SQLITE_ROW) {
            const char *kind = (const char *)sqlite3_column_text(st, 0);
            const char *key = (const char *)sqlite3_column_text(st, 1);
            int64_t expires = sqlite3_column_int64(st, 2);
            const char *data = (const char *)sqlite3_column_text(st, 3);
            json_t *j = data ? json_loads(data, 0, NULL) : NULL;
            if (!kind || !key || !j) {
                json_decref(j);
                continue;
            }
            upsert_locked(kind, key, expires, j);
            loaded++;
        }
        pthread_mutex_unlock(&state_lock);
        sqlite3_finalize(st);
    }
    db_stop = false;
    if (pthread_create(&db_tid, NULL, db_thread, NULL) != 0) {
        snprintf(err, errlen, "tsa: cannot start the database thread");
        sqlite3_close(db);
        db = NULL;
        return KERR_IO;
    }
    db_running = true;
    DINFO(TMOD, "tsa database %s: %zu live entries loaded", db_path, loaded);
    return 0;
}

void tsa_state_close(void)
{
    if (db_running) {
        pthread_mutex_lock(&db_lock);
        db_stop = true;
        pthread_cond_signal(&db_cond);
        pthread_mutex_unlock(&db_lock);
        pthread_join(db_tid, NULL);
        db_running = false;
    }
    if (db) {
        sqlite3_close(db);
        db = NULL;
    }
    pthread_mutex_lock(&state_lock);
    while (entries) {
        entry *e = entries;
        entries = e->next;
        entry_free(e);
    }
    pthread_mutex_unlock(&state_lock);
    free(db_path);
    db_path = NULL;
}

/* ---- evaluation -------------------------------------------------------------------- */

static void sha256_hex(const char *s, char out[65])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    EVP_Digest(s, strlen(s), md, &len, EVP_sha256(), NULL);
    for (unsigned i = 0; i < len && i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
    out[64] = 0;
}

/* The identity of a rule: its regexes, actions, trigger, duration. */
static void rule_hash(const json_t *rule, char out[65])
{
    json_t *r = json_pack("{s:O?,s:O?,s:O?,s:O?,s:O?}", "regex", json_object_get(rule, "regex"),
                          "action", json_object_get(rule, "action"), "trigger",
                          json_object_get(rule, "trigger"), "duration",
                          json_object_get(rule, "duration"), "match_internal",
                          json_object_get(rule, "match_internal"));
    char *s = r ? json_dumps(r, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    sha256_hex(s ? s : "", out);
    free(s);
    json_decref(r);
}

static void action_hash(const char *rhash, const json_t *action, char out[65])
{
    char *a = json_dumps(action, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
    size_t n = strlen(rhash) + (a ? strlen(a) : 0) + 2;
    char *buf = malloc(n);
    if (!buf)
        abort();
    snprintf(buf, n, "%s|%s", rhash, a ? a : "");
    sha256_hex(buf, out);
    free(buf);
    free(a);
}

/* "automation rule: REGEX" or "(R1,R2)" for several, as KumoMTA says it. */
static void rule_reason(const json_t *rule, char *out, size_t len)
{
    const json_t *re = json_object_get(rule, "regex");
    size_t n = json_is_array(re) ? json_array_size(re) : 0;
    snprintf(out, len, "automation rule: %s", n > 1 ? "(" : "");
    for (size_t i = 0; i < n; i++) {
        const char *s = json_string_value(json_array_get(re, i));
        size_t l = strlen(out);
        snprintf(out + l, len - l, "%s%s", i ? "," : "", s ? s : "");
    }
    if (n > 1) {
        size_t l = strlen(out);
        snprintf(out + l, len - l, ")");
    }
}

static int64_t record_time(const json_t *record, int64_t now_s)
{
    const json_t *t = json_object_get(record, "timestamp");
    if (json_is_integer(t))
        return json_integer_value(t);
    if (json_is_real(t))
        return (int64_t)json_real_value(t);
    if (json_is_string(t)) {
        struct tm tm = {0};
        const char *end = strptime(json_string_value(t), "%Y-%m-%dT%H:%M:%S", &tm);
        if (end)
            return (int64_t)timegm(&tm);
    }
    return now_s;
}

/* The first recipient's domain (NULL for postmaster or nothing). */
static const char *record_domain(const json_t *record, char *buf, size_t len)
{
    const json_t *r = json_object_get(record, "recipient");
    if (json_is_array(r))
        r = json_array_get(r, 0);
    const char *s = json_string_value(r);
    const char *at = s ? strrchr(s, '@') : NULL;
    if (!at || !at[1])
        return NULL;
    snprintf(buf, len, "%s", at + 1);
    size_t l = strlen(buf);
    if (l && buf[l - 1] == '>')
        buf[l - 1] = 0;
    for (char *c = buf; *c; c++)
        if (*c >= 'A' && *c <= 'Z')
            *c = (char)(*c - 'A' + 'a');
    return buf;
}

/* Adds ts to the rule's series for this site; returns how many events
 * fall in the window. Under state_lock. */
static uint64_t threshold_count(const char *scope, int64_t period_s, int64_t ts, int64_t now_s)
{
    entry *e = find_locked("event", scope);
    json_t *series = json_array();
    if (e) {
        size_t i;
        json_t *v;
        json_array_foreach(json_object_get(e->data, "series"), i, v)
        {
            int64_t t = json_integer_value(v);
            /* keep a little more than the window, as KumoMTA does */
            if (t > now_s - period_s - 300)
                json_array_append_new(series, json_integer(t));
        }
    }
    json_array_append_new(series, json_integer(ts));
    uint64_t count = 0;
    size_t i;
    json_t *v;
    int64_t newest = ts;
    json_array_foreach(series, i, v)
    {
        int64_t t = json_integer_value(v);
        if (t >= now_s - period_s)
            count++;
        if (t > newest)
            newest = t;
    }
    upsert_locked("event", scope, newest + period_s + 300,
                  json_pack("{s:I,s:o}", "duration", (json_int_t)period_s, "series", series));
    return count;
}

static void push_item(json_t *events, const char *kind, json_t *body)
{
    json_array_append_new(events, json_pack("{s:o}", kind, body));
}

json_t *tsa_state_evaluate(const json_t *record, const json_t *rules, int64_t now_s)
{
    json_t *events = json_array();
    char dbuf[256];
    const char *domain = record_domain(record, dbuf, sizeof(dbuf));
    if (!domain || !json_is_array(rules))
        return events;
    const char *site = json_string_value(json_object_get(record, "site"));
    if (!site)
        site = "";
    const char *source = json_string_value(json_object_get(record, "egress_source"));
    if (!source)
        source = "unspecified";
    const char *queue = json_string_value(json_object_get(record, "queue"));
    queue_name_parts qp = {0};
    bool have_q = queue && queue_name_parse(queue, &qp) == 0;
    int64_t ts = record_time(record, now_s);

    pthread_mutex_lock(&state_lock);
    n_records++;
    expire_locked(now_s);
    size_t ri;
    json_t *rule;
    json_array_foreach(rules, ri, rule)
    {
        json_int_t dur = json_integer_value(json_object_get(rule, "duration"));
        if (!dur && json_is_real(json_object_get(rule, "duration")))
            dur = (json_int_t)json_real_value(json_object_get(rule, "duration"));
        int64_t expires = ts + dur;
        if (dur <= 0 || expires <= now_s)
            continue; /* a late record whose effect would already be over */
        char rhash[65];
        rule_hash(rule, rhash);
        const json_t *trig = json_object_get(rule, "trigger");
        const char *thr = json_string_value(json_object_get(trig, "Threshold"));
        if (thr) {
            throttle_spec spec;
            if (throttle_spec_parse(thr, &spec) != 0) {
                DERROR(TMOD, "automation rule %s: bad Threshold '%s'", rhash, thr);
                continue;
            }
            char scope[1024];
            snprintf(scope, sizeof(scope), "%s|%s", rhash, site);
            uint64_t count =
                threshold_count(scope, spec.period_ns / 1000000000LL, ts, now_s);
            DDEBUG(TMOD, "rule %s site %s: %llu of %llu events", rhash, site,
                   (unsigned long long)count, (unsigned long long)spec.limit);
            if (count < spec.limit)
                continue;
        }
        char reason[1024];
        rule_reason(rule, reason, sizeof(reason));
        char when[32];
        tsa_format_time(expires, when);
        const json_t *actions = json_object_get(rule, "action");
        size_t ai;
        json_t *action;
        json_array_foreach(actions, ai, action)
        {
            char ahash[65];
            action_hash(rhash, action, ahash);
            char rule_hash_str[1024], key[1200];
            snprintf(rule_hash_str, sizeof(rule_hash_str), "%s-%s", site, ahash);
            const char *simple = json_string_value(action);
            n_actions++;
            if (simple && strcmp(simple, "Suspend") == 0) {
                snprintf(key, sizeof(key), "%s|%s", ahash, site);
                json_t *body = json_pack("{s:s,s:s,s:s,s:s,s:s}", "rule_hash", rule_hash_str,
                                         "site_name", site, "reason", reason, "source", source,
                                         "expires", when);
                upsert_locked("rq", key, expires, json_incref(body));
                push_item(events, "ReadyQSuspension", body);
                DINFO(TMOD, "suspend ready queue %s until %s: %s", site, when, reason);
            } else if (simple && (strcmp(simple, "SuspendTenant") == 0 ||
                                  strcmp(simple, "SuspendCampaign") == 0 ||
                                  strncmp(simple, "Bounce", 6) == 0)) {
                bool bounce = strncmp(simple, "Bounce", 6) == 0;
                bool want_tenant = strcmp(simple, "Bounce") != 0;
                bool want_campaign = strstr(simple, "Campaign") != NULL;
                const char *tenant = have_q ? qp.tenant : NULL;
                const char *campaign = want_campaign && have_q ? qp.campaign : NULL;
                const char *qdomain = have_q ? qp.domain : domain;
                if (want_tenant && !tenant) {
                    DERROR(TMOD,
                           "cannot apply %s for automation rule %s: the record's queue %s has "
                           "no tenant",
                           simple, reason, queue ? queue : "(none)");
                    continue;
                }
                char r2[1400];
                if (bounce)
                    snprintf(r2, sizeof(r2), "%s domain=%s", reason, qdomain);
                else
                    snprintf(r2, sizeof(r2), "%s tenant=%s domain=%s", reason, tenant, qdomain);
                if (bounce && tenant && want_tenant) {
                    size_t l = strlen(r2);
                    snprintf(r2 + l, sizeof(r2) - l, " tenant=%s", tenant);
                }
                if (campaign) {
                    size_t l = strlen(r2);
                    snprintf(r2 + l, sizeof(r2) - l, " campaign=%s", campaign);
                }
                snprintf(key, sizeof(key), "%s|%s|%s|%s", ahash, qdomain,
                         want_tenant && tenant ? tenant : "", campaign ? campaign : "");
                json_t *body = json_pack("{s:s,s:s,s:s,s:s}", "rule_hash", rule_hash_str, "domain",
                                         qdomain, "reason", r2, "expires", when);
                json_object_set_new(body, "tenant",
                                    want_tenant && tenant ? json_string(tenant) : json_null());
                json_object_set_new(body, "campaign", campaign ? json_string(campaign) : json_null());
                upsert_locked(bounce ? "bounce" : "sq", key, expires, json_incref(body));
                push_item(events, bounce ? "SchedQBounce" : "SchedQSuspension", body);
                DINFO(TMOD, "%s until %s: %s", simple, when, r2);
            } else if (json_is_object(action)) {
                const json_t *cfg = json_object_get(action, "SetConfig");
                bool domain_cfg = false;
                if (!cfg) {
                    cfg = json_object_get(action, "SetDomainConfig");
                    domain_cfg = true;
                }
                const char *name = json_string_value(json_object_get(cfg, "name"));
                const json_t *value = json_object_get(cfg, "value");
                if (!name || !value)
                    continue;
                bool rollup = !domain_cfg && json_is_true(json_object_get(rule, "was_rollup"));
                snprintf(key, sizeof(key), "%s|%s", ahash, site);
                json_t *body = json_pack("{s:s,s:b,s:s,s:s,s:O,s:s,s:s,s:s}", "domain", domain,
                                         "mx_rollup", rollup, "source", source, "name", name,
                                         "value", value, "reason", reason, "rule_hash",
                                         rule_hash_str, "site_name", site);
                upsert_locked("config", key, expires, body);
                DINFO(TMOD, "config override for %s source %s until %s: %s", domain, source, when,
                      name);
            }
        }
    }
    pthread_mutex_unlock(&state_lock);
    if (have_q)
        queue_name_parts_fini(&qp);
    return events;
}

/* ---- exports ------------------------------------------------------------------------- */

json_t *tsa_state_suspensions(int64_t now_s)
{
    json_t *rq = json_array(), *sq = json_array();
    pthread_mutex_lock(&state_lock);
    expire_locked(now_s);
    for (entry *e = entries; e; e = e->next) {
        if (strcmp(e->kind, "rq") == 0)
            json_array_append(rq, e->data);
        else if (strcmp(e->kind, "sq") == 0)
            json_array_append(sq, e->data);
    }
    pthread_mutex_unlock(&state_lock);
    return json_pack("{s:o,s:o}", "ready_q", rq, "sched_q", sq);
}

json_t *tsa_state_bounces(int64_t now_s)
{
    json_t *out = json_array();
    pthread_mutex_lock(&state_lock);
    expire_locked(now_s);
    for (entry *e = entries; e; e = e->next)
        if (strcmp(e->kind, "bounce") == 0)
            json_array_append(out, e->data);
    pthread_mutex_unlock(&state_lock);
    return out;
}

json_t *tsa_state_current_items(int64_t now_s, int legacy)
{
    json_t *out = json_array();
    pthread_mutex_lock(&state_lock);
    expire_locked(now_s);
    for (entry *e = entries; e; e = e->next) {
        const char *kind = NULL;
        if (strcmp(e->kind, "rq") == 0)
            kind = legacy ? "ReadyQ" : "ReadyQSuspension";
        else if (strcmp(e->kind, "sq") == 0)
            kind = legacy ? "SchedQ" : "SchedQSuspension";
        else if (strcmp(e->kind, "bounce") == 0 && !legacy)
            kind = "SchedQBounce";
        if (kind)
            json_array_append_new(out, json_pack("{s:O}", kind, e->data));
    }
    pthread_mutex_unlock(&state_lock);
    return out;
}

/* TOML text of a JSON value (string, number, boolean, array, table). */
static void toml_value(FILE *f, const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_STRING: {
        fputc('"', f);
        for (const unsigned char *c = (const unsigned char *)json_string_value(v); *c; c++) {
            if (*c == '"' || *c == '\\')
                fprintf(f, "\\%c", *c);
            else if (*c < 0x20 || *c == 0x7f)
                fprintf(f, "\\u%04x", *c);
            else
                fputc(*c, f);
        }
        fputc('"', f);
        break;
    }
    case JSON_INTEGER:
        fprintf(f, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        break;
    case JSON_REAL:
        fprintf(f, "%.17g", json_real_value(v));
        break;
    case JSON_TRUE:
        fputs("true", f);
        break;
    case JSON_FALSE:
        fputs("false", f);
        break;
    case JSON_ARRAY: {
        fputc('[', f);
        size_t i;
        json_t *x;
        json_array_foreach(v, i, x)
        {
            if (i)
                fputs(", ", f);
            toml_value(f, x);
        }
        fputc(']', f);
        break;
    }
    case JSON_OBJECT: {
        fputc('{', f);
        const char *k;
        json_t *x;
        bool first = true;
        json_object_foreach((json_t *)v, k, x)
        {
            fprintf(f, "%s", first ? " " : ", ");
            first = false;
            json_t *ks = json_string(k);
            toml_value(f, ks);
            json_decref(ks);
            fputs(" = ", f);
            toml_value(f, x);
        }
        fputs(" }", f);
        break;
    }
    default:
        fputs("\"\"", f);
    }
}

static void toml_key(FILE *f, const char *k)
{
    size_t n = strspn(k, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-");
    if (n && !k[n]) {
        fputs(k, f); /* a bare key */
        return;
    }
    json_t *s = json_string(k);
    if (s)
        toml_value(f, s);
    else
        fputs("\"\"", f);
    json_decref(s);
}

static int cmp_config(const void *a, const void *b)
{
    const entry *x = *(entry *const *)a, *y = *(entry *const *)b;
    if (x->expires != y->expires)
        return x->expires < y->expires ? -1 : 1;
    int c;
    static const char *keys[] = {"domain", "source", "name"};
    for (int i = 0; i < 3; i++) {
        const char *s1 = json_string_value(json_object_get(x->data, keys[i]));
        const char *s2 = json_string_value(json_object_get(y->data, keys[i]));
        if ((c = strcmp(s1 ? s1 : "", s2 ? s2 : "")) != 0)
            return c;
    }
    return 0;
}

char *tsa_state_config_toml(int64_t now_s)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f)
        abort();
    pthread_mutex_lock(&state_lock);
    expire_locked(now_s);
    size_t n = 0;
    for (entry *e = entries; e; e = e->next)
        if (strcmp(e->kind, "config") == 0)
            n++;
    entry **v = calloc(n ? n : 1, sizeof(*v));
    if (!v)
        abort();
    n = 0;
    for (entry *e = entries; e; e = e->next)
        if (strcmp(e->kind, "config") == 0)
            v[n++] = e;
    qsort(v, n, sizeof(*v), cmp_config);
    fprintf(f, "# Generated by tsa-daemon\n# Number of entries: %zu\n\n", n);
    /* one table per domain, then one per domain and source, in the order of
     * their first (earliest expiring) entry */
    bool *done = calloc(n ? n : 1, sizeof(*done));
    if (!done)
        abort();
    for (size_t i = 0; i < n; i++) {
        if (done[i])
            continue;
        const char *dom = json_string_value(json_object_get(v[i]->data, "domain"));
        fputc('[', f);
        toml_key(f, dom);
        fprintf(f, "]\nmx_rollup = %s\n\n",
                json_is_true(json_object_get(v[i]->data, "mx_rollup")) ? "true" : "false");
        for (size_t j = i; j < n; j++) {
            if (done[j] || strcmp(json_string_value(json_object_get(v[j]->data, "domain")), dom))
                continue;
            const char *src = json_string_value(json_object_get(v[j]->data, "source"));
            fputc('[', f);
            toml_key(f, dom);
            fputs(".sources.", f);
            toml_key(f, src);
            fputs("]\n", f);
            for (size_t k = j; k < n; k++) {
                const json_t *d = v[k]->data;
                if (done[k] || strcmp(json_string_value(json_object_get(d, "domain")), dom) ||
                    strcmp(json_string_value(json_object_get(d, "source")), src))
                    continue;
                done[k] = true;
                char when[32];
                tsa_format_time(v[k]->expires, when);
                const char *reason = json_string_value(json_object_get(d, "reason"));
                fputs("# reason: ", f);
                for (const char *c = reason ? reason : ""; *c; c++)
                    fputc(*c == '\n' || *c == '\r' ? ' ' : *c, f);
                fprintf(f, "\n# expires: %s\n", when);
                toml_key(f, json_string_value(json_object_get(d, "name")));
                fputs(" = ", f);
                toml_value(f, json_object_get(d, "value"));
                fputc('\n', f);
            }
            fputc('\n', f);
        }
    }
    pthread_mutex_unlock(&state_lock);
    fprintf(f, "\n# Generated by tsa-daemon\n# Number of entries: %zu\n", n);
    free(v);
    free(done);
    fclose(f);
    return buf;
}

uint64_t tsa_state_records_total(void)
{
    pthread_mutex_lock(&state_lock);
    uint64_t n = n_records;
    pthread_mutex_unlock(&state_lock);
    return n;
}

uint64_t tsa_state_actions_total(void)
{
    pthread_mutex_lock(&state_lock);
    uint64_t n = n_actions;
    pthread_mutex_unlock(&state_lock);
    return n;
}
