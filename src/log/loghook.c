/* The log hooks' registry and their half of logging a record (see
 * loghook.h). Owns each hook's configuration. hook_record() runs on the
 * thread that logs (logs_record): for every hook that takes the record's
 * type it builds the record's JSON with that hook's meta keys and headers
 * and hands an item to the sink. A read-write lock guards the list
 * (adding takes it exclusively). A record that cannot be built (out of
 * memory) is reported on the diagnostic log and not hooked. */
#include "log/loghook.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/diag.h"
#include "core/jsonw.h"
#include "core/kerr.h"
#include "log/logs.h"
#include "log/logs_int.h"

#define LOG_MOD "kumod::logging"

struct hook {
    char *name;
    char **meta;
    size_t n_meta;
    char **headers;
    size_t n_headers;
    bool enabled[LOGREC__COUNT];
    bool deferred_spool;
    uint64_t back_pressure;
};

static pthread_rwlock_t hooks_lock = PTHREAD_RWLOCK_INITIALIZER;
static struct hook **hooks;
static size_t n_hooks;
static _Atomic(loghook_sink_fn) sink;

void loghook_set_sink(loghook_sink_fn fn)
{
    atomic_store(&sink, fn);
}

struct loghook_wait {
    atomic_size_t pending; /* unsettled records, plus 1 until end */
    void (*done)(void *ud);
    void *ud;
};

static _Thread_local loghook_wait *current_wait;

loghook_wait *loghook_wait_begin(void)
{
    if (loghook_count() == 0)
        return NULL;
    loghook_wait *w = calloc(1, sizeof(*w));
    if (!w)
        return NULL; /* out of memory: the reply just does not wait */
    atomic_init(&w->pending, 1);
    current_wait = w;
    return w;
}

void loghook_wait_pause(void)
{
    current_wait = NULL;
}

void loghook_wait_resume(loghook_wait *w)
{
    current_wait = w;
}

static void wait_settle(loghook_wait *w)
{
    if (atomic_fetch_sub(&w->pending, 1) == 1) {
        /* the last one after end: done and ud were set before end's
         * decrement, which this one's decrement follows */
        if (w->done)
            w->done(w->ud);
        free(w);
    }
}

int loghook_wait_end(loghook_wait *w, void (*done)(void *ud), void *ud)
{
    if (!w)
        return 0;
    current_wait = NULL;
    w->done = done;
    w->ud = ud;
    if (atomic_fetch_sub(&w->pending, 1) == 1) {
        free(w);
        return 0;
    }
    return 1;
}

void loghook_item_free(loghook_item *it)
{
    if (!it)
        return;
    if (it->wait)
        wait_settle(it->wait);
    free(it->hook_name);
    json_decref(it->record);
    free(it->text);
    free(it);
}

static void hook_free(struct hook *h)
{
    if (!h)
        return;
    free(h->name);
    logs__string_list_free(h->meta, h->n_meta);
    logs__string_list_free(h->headers, h->n_headers);
    free(h);
}

static int err_at(char *err, size_t errlen, const char *fmt, const char *a, const char *b)
{
    char msg[512];
    snprintf(msg, sizeof(msg), fmt, a, b);
    return logs__cfg_err(err, errlen, msg);
}

/* per_record: only `enable` matters to a hook; the file keys are accepted
 * (the same table often serves the local logs too). */
static int parse_per_record(struct hook *h, const json_t *v, char *err, size_t errlen)
{
    if (json_is_array(v) && json_array_size(v) == 0)
        return 0;
    if (!json_is_object(v))
        return logs__cfg_err(err, errlen, "`per_record` must be a table keyed by record type");
    bool set[LOGREC__COUNT + 1] = {0}, on[LOGREC__COUNT + 1] = {0};
    const char *tname;
    const json_t *pv;
    json_object_foreach((json_t *)v, tname, pv)
    {
        logrec_type t;
        if (logrec_type_parse(tname, &t) < 0)
            return err_at(err, errlen, "per_record: unknown record type `%s`%s", tname, "");
        if (!json_is_object(pv))
            return err_at(err, errlen, "per_record.%s must be a table%s", tname, "");
        set[t] = true;
        on[t] = true;
        const char *key;
        const json_t *kv;
        json_object_foreach((json_t *)pv, key, kv)
        {
            if (json_is_null(kv))
                continue;
            if (strcmp(key, "enable") == 0) {
                if (!json_is_boolean(kv))
                    return err_at(err, errlen, "per_record.%s.%s must be a boolean", tname, key);
                on[t] = json_is_true(kv);
            } else if (strcmp(key, "template") == 0) {
                return err_at(err, errlen,
                              "per_record.%s.%s: log record templates are not supported by "
                              "kumod yet",
                              tname, key);
            } else if (strcmp(key, "suffix") != 0 && strcmp(key, "log_dir") != 0 &&
                       strcmp(key, "segment_header") != 0) {
                return err_at(err, errlen,
                              "per_record.%s: unknown field `%s`, expected one of `suffix`, "
                              "`log_dir`, `enable`, `template`, `segment_header`",
                              tname, key);
            }
        }
    }
    for (int t = 0; t < LOGREC__COUNT; t++)
        h->enabled[t] = set[t] ? on[t] : set[LOGREC__COUNT] ? on[LOGREC__COUNT] : true;
    return 0;
}

static void hook_record(const logrec *r);

int loghook_add_from_json(const json_t *params, bool check_only, char *err, size_t errlen)
{
    if (err && errlen)
        err[0] = '\0';
    if (!json_is_object(params))
        return logs__cfg_err(err, errlen, "expected a table");
    struct hook *h = calloc(1, sizeof(*h));
    if (!h)
        return KERR_NOMEM;
    for (int t = 0; t < LOGREC__COUNT; t++)
        h->enabled[t] = true;
    h->back_pressure = 128000;
    int rc = 0;
    const char *key;
    const json_t *v;
    json_object_foreach((json_t *)params, key, v)
    {
        if (json_is_null(v))
            continue;
        if (strcmp(key, "name") == 0) {
            if (!json_is_string(v) || !*json_string_value(v))
                rc = logs__cfg_err(err, errlen, "`name` must be a non-empty string");
            else if (!(h->name = strdup(json_string_value(v))))
                rc = KERR_NOMEM;
        } else if (strcmp(key, "back_pressure") == 0) {
            rc = logs__cfg_uint(v, key, SIZE_MAX / 2, &h->back_pressure, err, errlen);
        } else if (strcmp(key, "meta") == 0) {
            rc = logs__cfg_string_list(v, key, &h->meta, &h->n_meta, err, errlen);
        } else if (strcmp(key, "headers") == 0) {
            rc = logs__cfg_string_list(v, key, &h->headers, &h->n_headers, err, errlen);
        } else if (strcmp(key, "per_record") == 0) {
            rc = parse_per_record(h, v, err, errlen);
        } else if (strcmp(key, "deferred_spool") == 0) {
            if (!json_is_boolean(v))
                rc = logs__cfg_err(err, errlen, "`deferred_spool` must be a boolean");
            h->deferred_spool = json_is_true(v);
        } else {
            rc = err_at(err, errlen,
                        "unknown field `%s`, expected one of `name`, `back_pressure`, `meta`, "
                        "`headers`, `per_record`, `deferred_spool`%s",
                        key, "");
        }
        if (rc < 0)
            goto fail;
    }
    if (!h->name) {
        rc = logs__cfg_err(err, errlen, "missing field `name`");
        goto fail;
    }
    pthread_rwlock_wrlock(&hooks_lock);
    for (size_t i = 0; i < n_hooks; i++) {
        if (strcmp(hooks[i]->name, h->name) == 0) {
            pthread_rwlock_unlock(&hooks_lock);
            rc = err_at(err, errlen, "a log hook named '%s' is already configured%s", h->name,
                        "");
            goto fail;
        }
    }
    if (check_only) {
        pthread_rwlock_unlock(&hooks_lock);
        hook_free(h);
        return 0;
    }
    struct hook **nh = realloc(hooks, sizeof(*nh) * (n_hooks + 1));
    if (nh) {
        hooks = nh;
        hooks[n_hooks++] = h;
        if (h->n_headers)
            logs__note_headers();
    }
    pthread_rwlock_unlock(&hooks_lock);
    if (!nh) {
        rc = KERR_NOMEM;
        goto fail;
    }
    logs__set_record_hook(hook_record);
    DINFO(LOG_MOD, "log hook configured name=%s deferred_spool=%s", h->name,
          h->deferred_spool ? "true" : "false");
    return 0;
fail:
    if (rc == KERR_NOMEM && err && errlen && !err[0])
        logs__cfg_err(err, errlen, kerr_str(rc));
    hook_free(h);
    return rc;
}

static void hook_record(const logrec *r)
{
    /* a hook's own messages: never hooked again (no loop) */
    if (r->reception_protocol && strcmp(r->reception_protocol, "LogRecord") == 0)
        return;
    loghook_sink_fn fn = atomic_load(&sink);
    if (!fn)
        return;
    pthread_rwlock_rdlock(&hooks_lock);
    for (size_t i = 0; i < n_hooks; i++) {
        struct hook *h = hooks[i];
        if (!h->enabled[r->type])
            continue;
        /* the object is the message's log_record meta, its text the body:
         * built once, never parsed back */
        json_t *rec = logrec_to_object(r, (const char *const *)h->meta, h->n_meta,
                                       (const char *const *)h->headers, h->n_headers);
        loghook_item *it = rec ? calloc(1, sizeof(*it)) : NULL;
        sbuf b = {0};
        if (it && jsonw_append(&b, rec) == 0)
            sbuf_putc(&b, '\n');
        char *text = it ? sbuf_finish(&b, &it->len) : NULL;
        if (it) {
            if (current_wait) {
                atomic_fetch_add(&current_wait->pending, 1);
                it->wait = current_wait;
            }
            it->text = text;
            it->record = rec;
            rec = NULL;
            it->hook_name = strdup(h->name);
            it->deferred_spool = h->deferred_spool;
        }
        if (!it || !it->text || !it->hook_name) {
            DERROR(LOG_MOD, "id=%s hook=%s type=%s building the log hook record failed: %s",
                   r->id ? r->id : "", h->name, logrec_type_name(r->type), kerr_str(KERR_NOMEM));
            json_decref(rec);
            loghook_item_free(it);
            continue;
        }
        fn(it);
    }
    pthread_rwlock_unlock(&hooks_lock);
}

size_t loghook_count(void)
{
    pthread_rwlock_rdlock(&hooks_lock);
    size_t n = n_hooks;
    pthread_rwlock_unlock(&hooks_lock);
    return n;
}

void loghook_shutdown(void)
{
    logs__set_record_hook(NULL);
    pthread_rwlock_wrlock(&hooks_lock);
    for (size_t i = 0; i < n_hooks; i++)
        hook_free(hooks[i]);
    free(hooks);
    hooks = NULL;
    n_hooks = 0;
    pthread_rwlock_unlock(&hooks_lock);
}
