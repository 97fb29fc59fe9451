/* The process-wide registry of local log destinations
 * (kumo.configure_local_logs). Owns each destination's configuration and its
 * logger (src/log/logger.c). logs_record() runs on the caller's thread: for
 * every destination that takes the record's type it builds the JSON line
 * (with that destination's meta keys and headers) and queues it, blocking
 * while the destination's queue is full. A read-write lock guards the list:
 * adding and shutting down take it exclusively. Configuration errors are
 * returned with a message naming the key; a record that cannot be built
 * (out of memory) is reported on the diagnostic log and dropped. */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zstd.h>

#include "core/diag.h"
#include "core/duration.h"
#include "core/kerr.h"
#include "log/accounting.h"
#include "log/logger.h"
#include "log/logs.h"
#include "log/logs_int.h"

#define LOG_MOD "kumod::logging"

/* per_record.<Type|Any> */
struct logs_per_record {
    bool present;
    bool enable;
    char *suffix;
    char *log_dir;
    char *segment_header;
};

struct logs_dest {
    logger *lg;
    char *log_dir;
    char **meta;
    size_t n_meta;
    char **headers;
    size_t n_headers;
    struct logs_per_record pr[LOGREC__COUNT + 1]; /* [LOGREC__COUNT] is Any */
    /* Resolved per record type: */
    bool enabled[LOGREC__COUNT];
    int stream[LOGREC__COUNT];
    const char *segment_header[LOGREC__COUNT];
    /* Parsed and validated, not enforced yet (disk monitoring is elsewhere). */
    json_t *min_free_space, *min_free_inodes;
};

static atomic_bool headers_wanted;

void logs__note_headers(void)
{
    atomic_store_explicit(&headers_wanted, true, memory_order_relaxed);
}

bool logs_records_want_data(void)
{
    return atomic_load_explicit(&headers_wanted, memory_order_relaxed);
}

static pthread_once_t logs_once = PTHREAD_ONCE_INIT;
static pthread_rwlock_t logs_lock;
static struct logs_dest **logs_dests;
static size_t logs_n;
static logs_stats logs_retired; /* counters of destinations already shut down */

static void logs_init_lock(void)
{
    /* Prefer writers so that logs_shutdown() is not starved by a steady
     * stream of records. */
    pthread_rwlockattr_t a;
    if (pthread_rwlockattr_init(&a) != 0 ||
        pthread_rwlockattr_setkind_np(&a, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP) != 0 ||
        pthread_rwlock_init(&logs_lock, &a) != 0) {
        DERROR(LOG_MOD, "cannot initialise the log registry lock");
        abort();
    }
    pthread_rwlockattr_destroy(&a);
}

/* These fail only on a bug (a thread relocking, too many readers). */
static void lock_read(void)
{
    pthread_once(&logs_once, logs_init_lock);
    int rc = pthread_rwlock_rdlock(&logs_lock);
    if (rc != 0) {
        DERROR(LOG_MOD, "log registry rdlock: %s", strerror(rc));
        abort();
    }
}

static void lock_write(void)
{
    pthread_once(&logs_once, logs_init_lock);
    int rc = pthread_rwlock_wrlock(&logs_lock);
    if (rc != 0) {
        DERROR(LOG_MOD, "log registry wrlock: %s", strerror(rc));
        abort();
    }
}

static void dest_free(struct logs_dest *d)
{
    if (!d)
        return;
    logger_free(d->lg);
    logs__string_list_free(d->meta, d->n_meta);
    logs__string_list_free(d->headers, d->n_headers);
    for (int i = 0; i <= LOGREC__COUNT; i++) {
        free(d->pr[i].suffix);
        free(d->pr[i].log_dir);
        free(d->pr[i].segment_header);
    }
    json_decref(d->min_free_space);
    json_decref(d->min_free_inodes);
    free(d->log_dir);
    free(d);
}

/* ---- configuration ---- */

static int cfg_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
int logs__cfg_err(char *err, size_t errlen, const char *msg)
{
    return cfg_err(err, errlen, "%s", msg);
}
static int cfg_err(char *err, size_t errlen, const char *fmt, ...)
{
    /* The Lua binding prefixes "kumo.configure_local_logs: ". */
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return KERR_INVAL;
}

static int cfg_string(const json_t *v, const char *what, char **out, char *err, size_t errlen)
{
    if (!json_is_string(v))
        return cfg_err(err, errlen, "`%s` must be a string", what);
    *out = strdup(json_string_value(v));
    return *out ? 0 : KERR_NOMEM;
}

/* A non-negative whole number; Lua may hand us 1e9 as a float. */
int logs__cfg_uint(const json_t *v, const char *what, uint64_t max, uint64_t *out, char *err,
                    size_t errlen)
{
    if (json_is_integer(v) && json_integer_value(v) >= 0 &&
        (uint64_t)json_integer_value(v) <= max) {
        *out = (uint64_t)json_integer_value(v);
        return 0;
    }
    if (json_is_real(v)) {
        double d = json_real_value(v);
        if (d >= 0 && d == floor(d) && d <= (double)max && d < 18446744073709551616.0) {
            *out = (uint64_t)d;
            return 0;
        }
    }
    return cfg_err(err, errlen, "`%s` must be a non-negative integer", what);
}

/* duration-serde: a humantime string, or a number of seconds. */
int logs__cfg_duration(const json_t *v, const char *what, int64_t *out, char *err, size_t errlen)
{
    if (json_is_string(v)) {
        int rc = duration_parse(json_string_value(v), out);
        if (rc < 0)
            return cfg_err(err, errlen, "`%s`: invalid duration \"%s\": %s", what,
                           json_string_value(v), kerr_str(rc));
        return 0;
    }
    if (json_is_number(v)) {
        double s = json_number_value(v);
        if (s >= 0 && s < 9.2e9) {
            *out = json_is_integer(v) ? (int64_t)json_integer_value(v) * 1000000000LL
                                      : (int64_t)llround(s * 1e9);
            return 0;
        }
    }
    return cfg_err(err, errlen, "`%s` must be a duration string or a number of seconds", what);
}

/* MinFree: "10%", "1234" or 1234. */
int logs__cfg_min_free(const json_t *v, const char *what, json_t **out, char *err, size_t errlen)
{
    bool ok = false;
    if (json_is_integer(v)) {
        ok = json_integer_value(v) >= 0;
    } else if (json_is_string(v)) {
        const char *s = json_string_value(v);
        size_t n = strlen(s);
        bool pct = n > 0 && s[n - 1] == '%';
        size_t digits = pct ? n - 1 : n;
        ok = digits > 0 && strspn(s, "0123456789") == digits;
        if (ok && pct)
            ok = digits <= 3 && atoi(s) <= 255; /* u8, as KumoMTA parses it */
    }
    if (!ok)
        return cfg_err(err, errlen,
                       "`%s` must be a percentage string like \"10%%\" or a size in bytes", what);
    *out = json_deep_copy(v);
    return *out ? 0 : KERR_NOMEM;
}

void logs__string_list_free(char **list, size_t n)
{
    for (size_t i = 0; list && i < n; i++)
        free(list[i]);
    free(list);
}

/* meta = {"a", "b*"}; an empty Lua table may arrive as {} rather than []. */
int logs__cfg_string_list(const json_t *v, const char *what, char ***out, size_t *n_out, char *err,
                           size_t errlen)
{
    if (json_is_object(v) && json_object_size(v) == 0)
        return 0;
    if (!json_is_array(v))
        return cfg_err(err, errlen, "`%s` must be a list of strings", what);
    size_t n = json_array_size(v);
    if (n == 0)
        return 0;
    char **list = calloc(n, sizeof(*list));
    if (!list)
        return KERR_NOMEM;
    *out = list;
    for (size_t i = 0; i < n; i++) {
        const json_t *e = json_array_get(v, i);
        if (!json_is_string(e))
            return cfg_err(err, errlen, "`%s` must be a list of strings", what);
        list[i] = strdup(json_string_value(e));
        if (!list[i])
            return KERR_NOMEM;
        *n_out = i + 1;
    }
    return 0;
}

static const char *const per_record_keys = "`suffix`, `log_dir`, `enable`, `template`, "
                                           "`segment_header`";

static int cfg_per_record(struct logs_dest *d, const json_t *v, char *err, size_t errlen)
{
    if (json_is_array(v) && json_array_size(v) == 0)
        return 0;
    if (!json_is_object(v))
        return cfg_err(err, errlen, "`per_record` must be a table keyed by record type");
    const char *tname;
    const json_t *pv;
    json_object_foreach((json_t *)v, tname, pv)
    {
        logrec_type t;
        if (logrec_type_parse(tname, &t) < 0)
            return cfg_err(err, errlen, "per_record: unknown record type `%s`", tname);
        if (!json_is_object(pv))
            return cfg_err(err, errlen, "per_record.%s must be a table", tname);
        struct logs_per_record *pr = &d->pr[t];
        pr->present = true;
        pr->enable = true;
        const char *key;
        const json_t *kv;
        json_object_foreach((json_t *)pv, key, kv)
        {
            int rc = 0;
            char what[96];
            snprintf(what, sizeof(what), "per_record.%s.%s", tname, key);
            if (json_is_null(kv))
                continue;
            if (strcmp(key, "suffix") == 0) {
                rc = cfg_string(kv, what, &pr->suffix, err, errlen);
            } else if (strcmp(key, "log_dir") == 0) {
                rc = cfg_string(kv, what, &pr->log_dir, err, errlen);
                if (rc == 0 && !*pr->log_dir)
                    rc = cfg_err(err, errlen, "`%s` must not be empty", what);
            } else if (strcmp(key, "segment_header") == 0) {
                rc = cfg_string(kv, what, &pr->segment_header, err, errlen);
            } else if (strcmp(key, "enable") == 0) {
                if (!json_is_boolean(kv))
                    return cfg_err(err, errlen, "`%s` must be a boolean", what);
                pr->enable = json_is_true(kv);
            } else if (strcmp(key, "template") == 0) {
                return cfg_err(err, errlen,
                               "`%s`: log record templates are not supported by kumod yet", what);
            } else {
                return cfg_err(err, errlen, "per_record.%s: unknown field `%s`, expected one of %s",
                               tname, key, per_record_keys);
            }
            if (rc < 0)
                return rc;
        }
    }
    return 0;
}

static const char *const top_keys =
    "`log_dir`, `max_file_size`, `back_pressure`, `compression_level`, "
    "`max_segment_duration`, `meta`, `headers`, `per_record`, `filter_event`, "
    "`min_free_space`, `min_free_inodes`";

/* Resolves, for each record type, whether it is logged and to which stream,
 * as KumoMTA's Logger::record_is_enabled and LogThreadState::per_record do:
 * per_record.<Type>, else per_record.Any, else the defaults. */
static int dest_resolve(struct logs_dest *d, logger_config *lc)
{
    int rc = logger_new(lc, &d->lg);
    if (rc < 0)
        return rc;
    for (int t = 0; t < LOGREC__COUNT; t++) {
        const struct logs_per_record *pr = d->pr[t].present               ? &d->pr[t]
                                           : d->pr[LOGREC__COUNT].present ? &d->pr[LOGREC__COUNT]
                                                                          : NULL;
        d->enabled[t] = pr ? pr->enable : true;
        const char *dir = pr && pr->log_dir ? pr->log_dir : d->log_dir;
        const char *suffix = pr ? pr->suffix : NULL;
        d->segment_header[t] = pr ? pr->segment_header : NULL;
        int s = logger_add_stream(d->lg, dir, suffix);
        if (s < 0)
            return s;
        d->stream[t] = s;
    }
    return 0;
}

int logs_add_local_from_json(const json_t *params, char *err, size_t errlen)
{
    if (err && errlen)
        err[0] = '\0';
    if (!json_is_object(params))
        return cfg_err(err, errlen, "expected a table");

    struct logs_dest *d = calloc(1, sizeof(*d));
    if (!d)
        return KERR_NOMEM;
    uint64_t max_file_size = 1000000000, back_pressure = 128000;
    int64_t compression_level = 0, max_segment_ns = 0;
    int rc = 0;

    const char *key;
    const json_t *v;
    json_object_foreach((json_t *)params, key, v)
    {
        /* A nil in the Lua table is the same as leaving the key out. */
        if (json_is_null(v))
            continue;
        if (strcmp(key, "log_dir") == 0) {
            rc = cfg_string(v, key, &d->log_dir, err, errlen);
            if (rc == 0 && !*d->log_dir)
                rc = cfg_err(err, errlen, "`log_dir` must not be empty");
        } else if (strcmp(key, "max_file_size") == 0) {
            rc = logs__cfg_uint(v, key, UINT64_MAX, &max_file_size, err, errlen);
        } else if (strcmp(key, "back_pressure") == 0) {
            rc = logs__cfg_uint(v, key, SIZE_MAX / 2, &back_pressure, err, errlen);
        } else if (strcmp(key, "compression_level") == 0) {
            /* 0 is zstd's default; negative levels are zstd's fast modes. */
            if (json_is_integer(v))
                compression_level = json_integer_value(v);
            if (!json_is_integer(v) || compression_level < ZSTD_minCLevel() ||
                compression_level > ZSTD_maxCLevel())
                rc = cfg_err(err, errlen, "`compression_level` must be an integer from %d to %d",
                             ZSTD_minCLevel(), ZSTD_maxCLevel());
        } else if (strcmp(key, "max_segment_duration") == 0) {
            rc = logs__cfg_duration(v, key, &max_segment_ns, err, errlen);
        } else if (strcmp(key, "meta") == 0) {
            rc = logs__cfg_string_list(v, key, &d->meta, &d->n_meta, err, errlen);
        } else if (strcmp(key, "headers") == 0) {
            rc = logs__cfg_string_list(v, key, &d->headers, &d->n_headers, err, errlen);
        } else if (strcmp(key, "per_record") == 0) {
            rc = cfg_per_record(d, v, err, errlen);
        } else if (strcmp(key, "filter_event") == 0) {
            rc = cfg_err(err, errlen, "`filter_event` is not supported by kumod yet");
        } else if (strcmp(key, "min_free_space") == 0) {
            rc = logs__cfg_min_free(v, key, &d->min_free_space, err, errlen);
        } else if (strcmp(key, "min_free_inodes") == 0) {
            rc = logs__cfg_min_free(v, key, &d->min_free_inodes, err, errlen);
        } else {
            rc = cfg_err(err, errlen, "unknown field `%s`, expected one of %s", key, top_keys);
        }
        if (rc < 0)
            goto fail;
    }
    if (!d->log_dir) {
        rc = cfg_err(err, errlen, "missing field `log_dir`");
        goto fail;
    }
    rc = logger__mkdir_p(d->log_dir);
    if (rc < 0) {
        cfg_err(err, errlen, "creating log directory %s: %s", d->log_dir,
                rc == KERR_NOMEM ? kerr_str(rc) : strerror(errno));
        goto fail;
    }

    char name[512];
    snprintf(name, sizeof(name), "dir-%s", d->log_dir);
    logger_config lc = {.name = name,
                        .max_file_size = max_file_size,
                        .max_segment_ns = max_segment_ns,
                        .compression_level = (int)compression_level,
                        .back_pressure = (size_t)back_pressure};
    rc = dest_resolve(d, &lc);
    if (rc < 0) {
        cfg_err(err, errlen, "%s", kerr_str(rc));
        goto fail;
    }
    rc = logger_start(d->lg);
    if (rc < 0) {
        cfg_err(err, errlen, "starting the logger for %s: %s", d->log_dir, kerr_str(rc));
        goto fail;
    }

    lock_write();
    struct logs_dest **nd = realloc(logs_dests, sizeof(*nd) * (logs_n + 1));
    if (nd) {
        logs_dests = nd;
        logs_dests[logs_n++] = d;
        if (d->n_headers)
            logs__note_headers();
    }
    pthread_rwlock_unlock(&logs_lock);
    if (!nd) {
        rc = KERR_NOMEM;
        cfg_err(err, errlen, "%s", kerr_str(rc));
        goto fail;
    }
    DINFO(LOG_MOD, "local logs configured log_dir=%s max_file_size=%llu back_pressure=%llu",
          d->log_dir, (unsigned long long)max_file_size, (unsigned long long)back_pressure);
    return 0;

fail:
    if (rc == KERR_NOMEM && err && errlen && !err[0])
        cfg_err(err, errlen, "%s", kerr_str(rc));
    dest_free(d);
    return rc;
}

/* ---- records ---- */

/* The log hooks (loghook.c) see every record after the local logs. */
static _Atomic(void (*)(const logrec *)) record_hook;

void logs__set_record_hook(void (*fn)(const logrec *r))
{
    atomic_store(&record_hook, fn);
}

static _Atomic(logs_classify_fn) logs_classifier;

void logs_set_classifier(logs_classify_fn fn)
{
    atomic_store_explicit(&logs_classifier, fn, memory_order_release);
}

const char *logs_classify(const logrec_response *resp)
{
    logs_classify_fn fn = atomic_load_explicit(&logs_classifier, memory_order_acquire);
    return fn ? fn(resp) : NULL;
}

bool logrec_type_classifiable(logrec_type t)
{
    /* KumoMTA's RecordType::is_bounce_classifiable: the response came from
     * the destination (or stands for one: expiry, admin bounce, reports) */
    switch (t) {
    case LOGREC_BOUNCE:
    case LOGREC_TRANSIENT_FAILURE:
    case LOGREC_EXPIRATION:
    case LOGREC_ADMIN_BOUNCE:
    case LOGREC_OOB:
    case LOGREC_FEEDBACK:
    case LOGREC_REJECTION:
        return true;
    default:
        return false;
    }
}

void logs_record(const logrec *r)
{
    logs_record_parts(r, LOGS_LOCAL | LOGS_HOOKS);
}

void logs_record_parts(const logrec *r, unsigned parts)
{
    if (!r)
        return;
    if ((unsigned)r->type >= LOGREC__COUNT) {
        DERROR(LOG_MOD, "logs_record: invalid record type %d", (int)r->type);
        return;
    }
    /* the accounting database counts every reception and delivery,
     * whether or not any log is configured */
    if (!(parts & LOGS_LOCAL))
        ; /* counted with the local half */
    else if (r->type == LOGREC_RECEPTION)
        acct_reception(r->reception_protocol);
    else if (r->type == LOGREC_DELIVERY)
        acct_delivery(r->delivery_protocol);
    void (*hook)(const logrec *) = (parts & LOGS_HOOKS) ? atomic_load(&record_hook) : NULL;
    bool hooks = hook != NULL;
    lock_read();
    size_t n_local = (parts & LOGS_LOCAL) ? logs_n : 0;
    if (n_local == 0 && !hooks) {
        pthread_rwlock_unlock(&logs_lock);
        return;
    }
    /* One event time for every destination. */
    logrec rec = *r;
    if (!rec.timestamp_ns || !rec.created_ns) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        int64_t now = (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
        if (!rec.timestamp_ns)
            rec.timestamp_ns = now;
        if (!rec.created_ns)
            rec.created_ns = now;
    }
    /* once for every destination, on this thread: the classifier is a
     * shared immutable matcher, so this takes no lock */
    if (!rec.bounce_classification && logrec_type_classifiable(rec.type)) {
        logs_classify_fn fn = atomic_load_explicit(&logs_classifier, memory_order_acquire);
        if (fn)
            rec.bounce_classification = fn(&rec.response);
    }
    for (size_t i = 0; i < n_local; i++) {
        struct logs_dest *d = logs_dests[i];
        if (!d->enabled[rec.type])
            continue;
        size_t len;
        char *text = logrec_to_json(&rec, (const char *const *)d->meta, d->n_meta,
                                    (const char *const *)d->headers, d->n_headers, &len);
        if (!text) {
            DERROR(LOG_MOD, "id=%s log_dir=%s type=%s building the log record failed: %s",
                   rec.id ? rec.id : "", d->log_dir, logrec_type_name(rec.type),
                   kerr_str(KERR_NOMEM));
            continue;
        }
        int rc =
            logger_submit_take(d->lg, d->stream[rec.type], d->segment_header[rec.type], text, len);
        if (rc < 0)
            DERROR(LOG_MOD, "id=%s log_dir=%s type=%s queueing the log record failed: %s",
                   rec.id ? rec.id : "", d->log_dir, logrec_type_name(rec.type), kerr_str(rc));
    }
    pthread_rwlock_unlock(&logs_lock);
    /* after the local logs: a hook may queue a message, which logs again */
    if (hooks)
        hook(&rec);
}

int logs_foreach_dir(int (*fn)(const char *dir, void *ud), void *ud)
{
    pthread_once(&logs_once, logs_init_lock);
    pthread_rwlock_rdlock(&logs_lock);
    int rc = 0;
    for (size_t i = 0; i < logs_n && rc == 0; i++) {
        struct logs_dest *d = logs_dests[i];
        rc = fn(d->log_dir, ud);
        for (int t = 0; t <= LOGREC__COUNT && rc == 0; t++)
            if (d->pr[t].present && d->pr[t].log_dir)
                rc = fn(d->pr[t].log_dir, ud);
    }
    pthread_rwlock_unlock(&logs_lock);
    return rc;
}

void logs_flush(void)
{
    lock_read();
    for (size_t i = 0; i < logs_n; i++)
        logger_flush(logs_dests[i]->lg);
    pthread_rwlock_unlock(&logs_lock);
}

void logs_shutdown(void)
{
    lock_write();
    for (size_t i = 0; i < logs_n; i++) {
        struct logs_dest *d = logs_dests[i];
        /* Stopping joins the writer, which makes the counters final. */
        logger_stop(d->lg);
        logger_stats s;
        logger_get_stats(d->lg, &s);
        logs_retired.submitted += s.submitted;
        logs_retired.written += s.written;
        logs_retired.submit_full += s.submit_full;
        dest_free(d);
    }
    free(logs_dests);
    logs_dests = NULL;
    logs_n = 0;
    pthread_rwlock_unlock(&logs_lock);
}

void logs_get_stats(logs_stats *out)
{
    lock_read();
    *out = logs_retired;
    for (size_t i = 0; i < logs_n; i++) {
        logger_stats s;
        logger_get_stats(logs_dests[i]->lg, &s);
        out->submitted += s.submitted;
        out->written += s.written;
        out->submit_full += s.submit_full;
    }
    pthread_rwlock_unlock(&logs_lock);
}
