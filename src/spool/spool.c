/* The spool facade: parses kumo.define_spool parameters, opens the backend
 * stores, and runs the threads that do all spool I/O. It owns both stores,
 * the request queues, one writer thread and SPOOL_READERS reader threads.
 *
 * Writer (group commit): spool_save/spool_remove append a request to the
 * write queue under the mutex. The writer takes everything queued at once
 * and applies it in three steps: (1) every data half in one backend write,
 * synced when any save in the group asked for sync; (2) every meta half and
 * every meta delete, in queue order, the same way; (3) the data deletes of
 * the removes, unsynced (they ride on the next sync). Only then does it call
 * the callbacks, in queue order. So data is durable before its meta, a remove
 * deletes meta before data, and many sessions share one fsync. While the
 * writer syncs, new requests pile up and form the next group. Removes do not
 * wake the writer: they join the next group of saves, or go on their own
 * SPOOL_REMOVE_DELAY_MS after the first of them when no save comes (a third
 * of the writer's wake-ups in a relay at 10 sessions were removes alone).
 * Lazy saves (spool_save_new_lazy: log-hook records) wait the same way.
 *
 * Readers: loads and enumerations go to separate reader threads so that they
 * are never stuck behind an fsync; at most one reader runs an enumeration at
 * a time, so loads always have a thread.
 *
 * Callbacks run on the spool threads; callers post results to their own
 * reactors. Every public function may be called from any thread, including
 * from inside a callback, except spool_free. Failures are reported through
 * the callbacks as negative KERR_* codes and counted in the stats; a failed
 * data half fails its save without writing its meta. */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <limits.h>
#include <sys/stat.h>
#include <unistd.h>
#include <time.h>

#include "core/duration.h"
#include "core/kerr.h"
#include "core/reactor.h"
#include "core/diag.h"
#include "spool/backend.h"
#include "spool/health.h"
#include "spool/journal.h"
#include "spool/pending.h"
#include "spool/spool.h"

#define SPOOL_READERS 2
/* At most this many requests share one commit: bounds the latency of the
 * first of them and the writer's scratch memory after a burst. */
#define SPOOL_GROUP_MAX 4096

/* ---- parameters ------------------------------------------------------- */

const char *spool_kind_name(spool_kind kind)
{
    switch (kind) {
    case SPOOL_KIND_ROCKSDB:
        return "RocksDB";
    case SPOOL_KIND_LOCALDISK:
        return "LocalDisk";
    }
    return "unknown";
}

static const char *const param_keys[] = {
    "name",
    "path",
    "kind",
    "flush",
    "rocks_params",
    "min_free_space",
    "min_free_inodes",
    "store_deadline",
    "error_latch_duration",
    "error_unlatch_duration",
    "allow_error_unlatch",
    "commit_delay",
    "commit_siblings",
    "journal_size",
};

/* Returns the value of an optional key; NULL when absent or null (a Lua nil
 * never reaches here, but a JSON caller may send null for "default"). */
static const json_t *opt_get(const json_t *params, const char *key)
{
    const json_t *v = json_object_get(params, key);
    return (v == NULL || json_is_null(v)) ? NULL : v;
}

static int param_string(const json_t *params, const char *key, char **out, char *err, size_t errlen)
{
    const json_t *v = opt_get(params, key);
    if (v == NULL) {
        snprintf(err, errlen, "define_spool: %s is required", key);
        return KERR_INVAL;
    }
    if (!json_is_string(v) || json_string_length(v) == 0) {
        snprintf(err, errlen, "define_spool: %s: expected a non-empty string", key);
        return KERR_INVAL;
    }
    *out = strdup(json_string_value(v));
    return *out == NULL ? KERR_NOMEM : 0;
}

static int param_int(const json_t *params, const char *key, long lo, long hi, long *out,
                     char *err, size_t errlen)
{
    const json_t *v = opt_get(params, key);
    if (v == NULL)
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi) {
        snprintf(err, errlen, "define_spool: %s: expected an integer from %ld to %ld", key, lo,
                 hi);
        return KERR_INVAL;
    }
    *out = (long)json_integer_value(v);
    return 0;
}

static int param_bool(const json_t *params, const char *key, bool *out, char *err, size_t errlen)
{
    const json_t *v = opt_get(params, key);
    if (v == NULL)
        return 0;
    if (!json_is_boolean(v)) {
        snprintf(err, errlen, "define_spool: %s: expected a boolean", key);
        return KERR_INVAL;
    }
    *out = json_is_true(v);
    return 0;
}

/* A humantime string ("30s", "5m") or a number of seconds. */
static int param_duration(const json_t *params, const char *key, int64_t *out, char *err,
                          size_t errlen)
{
    const json_t *v = opt_get(params, key);
    if (v == NULL)
        return 0;
    if (json_is_string(v)) {
        int64_t ns;
        if (duration_parse(json_string_value(v), &ns) < 0 || ns < 0) {
            snprintf(err, errlen, "define_spool: %s: invalid duration \"%s\"", key,
                     json_string_value(v));
            return KERR_INVAL;
        }
        *out = ns;
        return 0;
    }
    if (json_is_number(v)) {
        double secs = json_number_value(v);
        if (!(secs >= 0) || secs > (double)(INT64_MAX / NS_PER_SEC)) {
            snprintf(err, errlen, "define_spool: %s: invalid duration %g", key, secs);
            return KERR_INVAL;
        }
        *out = (int64_t)llround(secs * (double)NS_PER_SEC);
        return 0;
    }
    snprintf(err, errlen, "define_spool: %s: expected a duration such as \"30s\"", key);
    return KERR_INVAL;
}

/* A byte size ("64MiB", "1GB") or a number of bytes; 0 turns it off. */
static int param_size(const json_t *params, const char *key, uint64_t lo, uint64_t hi,
                      uint64_t *out, char *err, size_t errlen)
{
    const json_t *v = opt_get(params, key);
    uint64_t n;
    if (v == NULL)
        return 0;
    bool ok = false;
    if (json_is_string(v)) {
        ok = size_parse(json_string_value(v), &n) == 0;
    } else if (json_is_integer(v) && json_integer_value(v) >= 0) {
        n = (uint64_t)json_integer_value(v);
        ok = true;
    }
    if (!ok) {
        snprintf(err, errlen, "define_spool: %s: expected a size such as \"64MiB\", or 0", key);
        return KERR_INVAL;
    }
    if (n != 0 && (n < lo || n > hi)) {
        snprintf(err, errlen, "define_spool: %s: 0 (off) or from %lluMiB to %lluGiB", key,
                 (unsigned long long)(lo >> 20), (unsigned long long)(hi >> 30));
        return KERR_INVAL;
    }
    *out = n;
    return 0;
}

/* "10%". KumoMTA also takes an absolute number of bytes or inodes, which
 * spool_params cannot hold yet: that is refused rather than misread. */
static int param_percent(const json_t *params, const char *key, double *out, char *err,
                         size_t errlen)
{
    const json_t *v = opt_get(params, key);
    double pct;
    if (v == NULL)
        return 0;
    if (json_is_number(v)) {
        snprintf(err, errlen,
                 "define_spool: %s: absolute values are not supported; use a percentage "
                 "such as \"10%%\"",
                 key);
        return KERR_INVAL;
    }
    if (!json_is_string(v) || percent_parse(json_string_value(v), &pct) < 0 || !(pct >= 0) ||
        pct > 100) {
        snprintf(err, errlen, "define_spool: %s: expected a percentage such as \"10%%\"", key);
        return KERR_INVAL;
    }
    *out = pct;
    return 0;
}

int spool_params_from_json(const json_t *params, spool_params *p, char *err, size_t errlen)
{
    const json_t *v;
    const char *key;
    json_t *val;
    int rc;

    memset(p, 0, sizeof(*p));
    p->kind = SPOOL_KIND_ROCKSDB;
    p->flush = true;
    p->min_free_space_pct = 10.0;
    p->min_free_inodes_pct = 10.0;
    p->store_deadline_ns = 30 * NS_PER_SEC;
    p->error_latch_ns = 15 * NS_PER_SEC;
    p->error_unlatch_ns = 5 * 60 * NS_PER_SEC;
    p->allow_error_unlatch = true;
    p->commit_delay_ns = SPOOL_COMMIT_DELAY_DEFAULT_NS;
    p->commit_siblings = SPOOL_COMMIT_SIBLINGS_DEFAULT;
    p->journal_size = SPOOL_JOURNAL_SIZE_DEFAULT;

    if (!json_is_object(params)) {
        snprintf(err, errlen, "define_spool: expected a table");
        return KERR_INVAL;
    }
    json_object_foreach((json_t *)params, key, val)
    {
        size_t i, n = sizeof(param_keys) / sizeof(param_keys[0]);
        for (i = 0; i < n; i++)
            if (strcmp(param_keys[i], key) == 0)
                break;
        if (i == n) {
            snprintf(err, errlen, "define_spool: unknown key \"%s\"", key);
            return KERR_INVAL;
        }
    }

    if ((rc = param_string(params, "name", &p->name, err, errlen)) < 0 ||
        (rc = param_string(params, "path", &p->path, err, errlen)) < 0)
        goto fail;
    v = opt_get(params, "kind");
    if (v != NULL) {
        const char *k = json_string_value(v);
        if (k != NULL && strcmp(k, "RocksDB") == 0) {
            p->kind = SPOOL_KIND_ROCKSDB;
        } else if (k != NULL && strcmp(k, "LocalDisk") == 0) {
            p->kind = SPOOL_KIND_LOCALDISK;
        } else {
            snprintf(err, errlen,
                     "define_spool: kind: unknown spool kind \"%s\" (expected \"RocksDB\" or "
                     "\"LocalDisk\")",
                     k != NULL ? k : "(not a string)");
            rc = KERR_INVAL;
            goto fail;
        }
    }
    if ((rc = param_bool(params, "flush", &p->flush, err, errlen)) < 0 ||
        (rc = param_bool(params, "allow_error_unlatch", &p->allow_error_unlatch, err, errlen)) <
            0 ||
        (rc = param_percent(params, "min_free_space", &p->min_free_space_pct, err, errlen)) < 0 ||
        (rc = param_percent(params, "min_free_inodes", &p->min_free_inodes_pct, err, errlen)) < 0 ||
        (rc = param_duration(params, "store_deadline", &p->store_deadline_ns, err, errlen)) < 0 ||
        (rc = param_duration(params, "error_latch_duration", &p->error_latch_ns, err, errlen)) <
            0 ||
        (rc = param_duration(params, "error_unlatch_duration", &p->error_unlatch_ns, err, errlen)) <
            0 ||
        (rc = param_duration(params, "commit_delay", &p->commit_delay_ns, err, errlen)) < 0 ||
        (rc = param_int(params, "commit_siblings", 1, 100000, &p->commit_siblings, err, errlen)) <
            0 ||
        (rc = param_size(params, "journal_size", SPOOL_JOURNAL_SIZE_MIN, SPOOL_JOURNAL_SIZE_MAX,
                         &p->journal_size, err, errlen)) < 0)
        goto fail;
    if (p->commit_delay_ns > SPOOL_COMMIT_DELAY_MAX_NS) {
        snprintf(err, errlen, "define_spool: commit_delay: at most 100ms (a delay that long "
                              "only adds latency)");
        rc = KERR_INVAL;
        goto fail;
    }

    v = opt_get(params, "rocks_params");
    if (v != NULL) {
        /* Checked for every kind (a typo is a typo); used by RocksDB only,
         * as in KumoMTA. */
        rc = spool__rocks_check_params(v, err, errlen);
        /* KumoMTA documents the health and deadline settings among the
         * rocks_params: there, they win over the define_spool keys */
        if (rc == 0 && json_is_object(v) &&
            ((rc = param_bool(v, "allow_error_unlatch", &p->allow_error_unlatch, err, errlen)) <
                 0 ||
             (rc = param_duration(v, "store_deadline", &p->store_deadline_ns, err, errlen)) < 0 ||
             (rc = param_duration(v, "error_latch_duration", &p->error_latch_ns, err, errlen)) <
                 0 ||
             (rc = param_duration(v, "error_unlatch_duration", &p->error_unlatch_ns, err,
                                  errlen)) < 0))
            goto fail;
        if (rc < 0)
            goto fail;
        p->rocks_params = json_deep_copy(v);
        if (p->rocks_params == NULL) {
            rc = KERR_NOMEM;
            goto fail;
        }
    }
    return 0;

fail:
    if (rc == KERR_NOMEM)
        snprintf(err, errlen, "define_spool: out of memory");
    spool_params_fini(p);
    return KERR_INVAL;
}

void spool_params_fini(spool_params *p)
{
    if (p == NULL)
        return;
    free(p->name);
    free(p->path);
    json_decref(p->rocks_params);
    p->name = p->path = NULL;
    p->rocks_params = NULL;
}

/* ---- stores ----------------------------------------------------------- */

int spool_store_open(const spool_params *p, spool_store **out, char *err, size_t errlen)
{
    *out = NULL;
    if (p == NULL || p->name == NULL || p->path == NULL) {
        snprintf(err, errlen, "spool_store_open: name and path are required");
        return KERR_INVAL;
    }
    switch (p->kind) {
    case SPOOL_KIND_ROCKSDB:
        return spool__rocks_open(p, out, err, errlen);
    case SPOOL_KIND_LOCALDISK:
        return spool__local_disk_open(p, out, err, errlen);
    }
    snprintf(err, errlen, "spool %s: unknown kind %d", p->name, (int)p->kind);
    return KERR_INVAL;
}

void spool_store_close(spool_store *st)
{
    if (st != NULL)
        st->be->close(st);
}

/* ---- requests and queues ---------------------------------------------- */

typedef enum req_type { REQ_SAVE, REQ_REMOVE, REQ_LOAD, REQ_ENUM } req_type;

typedef struct spool_req {
    struct spool_req *next;
    req_type type;
    bool sync;
    bool want_data;
    bool fresh; /* a save: the first of a new id (see spool_save_new) */
    bool lazy;  /* a remove, or a lazy save: does not wake the writer */
    spoolid id;
    char *meta; /* owned */
    size_t meta_len;
    char *data; /* owned; NULL for a meta-only save */
    size_t data_len;
    spool_done_fn done;
    spool_load_fn load;
    spool_each_fn each;
    void *ud;
    int err;
} spool_req;

typedef struct req_list {
    spool_req *head;
    spool_req **tailp;
} req_list;

static void rl_init(req_list *l)
{
    l->head = NULL;
    l->tailp = &l->head;
}

static void rl_push(req_list *l, spool_req *r)
{
    r->next = NULL;
    *l->tailp = r;
    l->tailp = &r->next;
}

static spool_req *rl_pop(req_list *l)
{
    spool_req *r = l->head;
    if (r != NULL) {
        l->head = r->next;
        if (l->head == NULL)
            l->tailp = &l->head;
    }
    return r;
}

struct spool {
    spool_store *data;
    spool_store *meta;
    /* one admin compaction at a time, on a thread of its own (joined by
     * spool_stop_threads); under mu */
    pthread_t compactor;
    bool compactor_joinable;
    bool compacting;
    spool_store *compact_store;
    spool_done_fn compact_cb;
    void *compact_ud;

    pthread_mutex_t mu;
    pthread_cond_t wcond; /* writer: work queued or stopping */
    pthread_cond_t rcond; /* readers: work queued, enumeration done, or stopping */
    req_list wq;          /* saves and removes */
    size_t wq_urgent;     /* requests in wq other than removes */
    struct timespec wq_lazy_due; /* CLOCK_MONOTONIC: when removes alone go */
    req_list loadq;
    req_list enumq;
    bool wstop, rstop; /* drain, then exit */
    bool writer_alive; /* false once the writer has exited: reject writes */
    int readers_alive; /* 0 once every reader has exited: reject reads */
    bool enum_running;

    pthread_t writer;
    pthread_t readers[SPOOL_READERS];
    int nreaders;
    bool writer_started;

    /* writer thread only */
    spool_req **batch;
    size_t batch_cap;
    spool__wop *wops;
    size_t wops_cap;
    uint64_t *seen; /* open-addressing set of removed ids (hashes), see cut_segment */
    size_t seen_cap;

    /* The syncer: syncs the data store's WAL while the writer writes and
     * syncs the meta store, so a group commit waits for one fsync, not two
     * in a row. Only when the data backend has sync_wal. */
    pthread_t syncer;
    bool syncer_started;
    pthread_mutex_t smu;
    pthread_cond_t scond;
    bool sync_asked, sync_done, sync_stop;
    int sync_rc;

    /* The journal (two RocksDB stores): one fdatasync per group commit;
     * the stores are synced when it wraps. NULL without one, or after it
     * failed. jops: the writer's scratch for a group's record. */
    spool__journal *journal;
    spool__jop *jops;
    size_t jops_cap;
    /* What the journal holds and the stores do not yet (pending.h). The
     * writer changes it under pmu; readers look ids up under pmu. */
    pthread_mutex_t pmu;
    spool__pend pend;

    int64_t commit_delay_ns;
    long commit_siblings;
    _Atomic uint64_t saves, syncs, synced_saves, removes, loads, errors, delayed_groups, groups;
    _Atomic uint64_t journal_checkpoints, never_stored;
    spool_health *health;
};

/* Saves announced by spool_expect_save() and not yet issued (one process,
 * one spool: a plain global). */
static _Atomic int saves_expected;

void spool_expect_save(int delta)
{
    atomic_fetch_add_explicit(&saves_expected, delta, memory_order_relaxed);
}

static void stat_add(_Atomic uint64_t *c, uint64_t n)
{
    if (n != 0)
        atomic_fetch_add_explicit(c, n, memory_order_relaxed);
}

/* ---- the writer ------------------------------------------------------- */

static uint64_t id_hash(const spoolid *id)
{
    return spoolid_hash(id) | 1; /* 0 marks an empty slot */
}

/* Returns true when h was already in the set; adds it otherwise. */
static bool seen_test_add(spool *sp, uint64_t h)
{
    size_t mask = sp->seen_cap - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask) {
        if (sp->seen[i] == h)
            return true;
        if (sp->seen[i] == 0) {
            sp->seen[i] = h;
            return false;
        }
    }
}

static bool seen_has(spool *sp, uint64_t h)
{
    size_t mask = sp->seen_cap - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask) {
        if (sp->seen[i] == h)
            return true;
        if (sp->seen[i] == 0)
            return false;
    }
}

/* The three-step group write reorders a save that follows a remove of the
 * same id (its data put would land before the remove's data delete). Such a
 * save starts a new segment. Returns the end of the segment starting at
 * start. Hash collisions only cut a segment early, which is harmless. */
static size_t cut_segment(spool *sp, size_t start, size_t n, size_t nremoves)
{
    if (nremoves == 0)
        return n;
    if (sp->seen_cap < 2 * nremoves + 2) {
        size_t cap = 64;
        while (cap < 2 * nremoves + 2)
            cap *= 2;
        free(sp->seen);
        sp->seen = malloc(cap * sizeof(*sp->seen));
        if (sp->seen == NULL) {
            sp->seen_cap = 0;
            return start + 1; /* degrade to one request per segment */
        }
        sp->seen_cap = cap;
    }
    memset(sp->seen, 0, sp->seen_cap * sizeof(*sp->seen));
    for (size_t i = start; i < n; i++) {
        spool_req *r = sp->batch[i];
        uint64_t h = id_hash(&r->id);
        if (r->type == REQ_REMOVE)
            (void)seen_test_add(sp, h);
        else if (seen_has(sp, h) && i > start)
            return i;
    }
    return n;
}

static spool__wop *wops_reserve(spool *sp, size_t n)
{
    if (sp->wops_cap < n) {
        spool__wop *w = realloc(sp->wops, n * sizeof(*w));
        if (w == NULL)
            return NULL;
        sp->wops = w;
        sp->wops_cap = n;
    }
    return sp->wops;
}

/* Runs one apply() over ops[0..n) and copies each outcome back. */
static void run_apply(spool_store *st, spool__wop *ops, size_t n, spool_req **who)
{
    if (n == 0)
        return;
    st->be->apply(st, ops, n);
    for (size_t i = 0; i < n; i++)
        if (ops[i].err < 0 && who[i]->err == 0) {
            char hex[SPOOLID_HEX_LEN + 1];
            spoolid_to_hex(ops[i].id, hex);
            DERROR("kumod::spool", "id=%s %s of the %s spool at %s failed: %s", hex,
                   ops[i].buf ? "write" : "delete", st->name, st->path, kerr_str(ops[i].err));
            who[i]->err = ops[i].err;
        }
}

static void *syncer_main(void *arg)
{
    spool *sp = arg;
    (void)pthread_setname_np(pthread_self(), "spool-syncer"); /* cosmetic */
    pthread_mutex_lock(&sp->smu);
    for (;;) {
        while (!sp->sync_asked && !sp->sync_stop)
            pthread_cond_wait(&sp->scond, &sp->smu);
        if (!sp->sync_asked)
            break;
        sp->sync_asked = false;
        pthread_mutex_unlock(&sp->smu);
        int rc = sp->data->be->sync_wal(sp->data);
        pthread_mutex_lock(&sp->smu);
        sp->sync_rc = rc;
        sp->sync_done = true;
        pthread_cond_broadcast(&sp->scond);
    }
    pthread_mutex_unlock(&sp->smu);
    return NULL;
}

static void data_sync_start(spool *sp)
{
    pthread_mutex_lock(&sp->smu);
    sp->sync_done = false;
    sp->sync_asked = true;
    pthread_cond_broadcast(&sp->scond);
    pthread_mutex_unlock(&sp->smu);
}

static int data_sync_wait(spool *sp)
{
    pthread_mutex_lock(&sp->smu);
    while (!sp->sync_done)
        pthread_cond_wait(&sp->scond, &sp->smu);
    int rc = sp->sync_rc;
    pthread_mutex_unlock(&sp->smu);
    return rc;
}

/* Makes every write applied so far to both stores durable: their WAL syncs,
 * in parallel when the syncer runs. */
static int stores_sync(spool *sp)
{
    int rc, drc;
    if (!sp->syncer_started) {
        rc = sp->data->be->sync_wal(sp->data);
        drc = sp->meta->be->sync_wal(sp->meta);
        return rc < 0 ? rc : drc;
    }
    data_sync_start(sp);
    rc = sp->meta->be->sync_wal(sp->meta);
    drc = data_sync_wait(sp);
    return rc < 0 ? rc : drc;
}

/* While the journal records every group, the stores take their unsynced
 * writes without their WALs (skip_wal): one write of each body instead of
 * two, and no WAL pages for the kernel to write back. Only with backends
 * that can persist such writes later. */
static void stores_skip_wal(spool *sp, bool on)
{
    bool can = sp->data->be->persist != NULL && sp->meta->be->persist != NULL;
    sp->data->skip_wal = sp->meta->skip_wal = on && can;
}

/* Every write applied so far to both stores made durable: a WAL sync, or,
 * when writes skipped the WAL, the memtables persisted as tables. */
static int stores_durable(spool *sp)
{
    if (!sp->data->skip_wal && !sp->meta->skip_wal)
        return stores_sync(sp);
    int rc = sp->meta->be->persist(sp->meta);
    int drc = sp->data->be->persist(sp->data);
    return rc < 0 ? rc : drc;
}

/* The stores durable, then a new lap of the journal. */
/* Writes the pending set to the stores (unsynced; the caller makes them
 * durable) in the order of a group commit: data puts, then metas and meta
 * deletes, then data deletes. On success the set is emptied; on failure it
 * is kept (the journal still holds all of it). Writer thread, or when it is
 * not running. */
static int pend_flush(spool *sp)
{
    spool__pend *p = &sp->pend;
    if (p->count == 0)
        return 0;
    /* its own array: the writer's scratch (sp->wops) is in use by the
     * group that asked for this checkpoint */
    spool__wop *ops = malloc(p->count * sizeof(*ops));
    if (ops == NULL)
        return KERR_NOMEM;
    for (int step = 0; step < 3; step++) {
        spool_store *st = step == 1 ? sp->meta : sp->data;
        size_t k = 0;
        for (size_t i = 0; i < p->cap; i++) {
            const spool__pend_ent *e = &p->slots[i];
            if (e->state == PEND_FREE)
                continue;
            bool save = e->state == PEND_SAVE;
            if (step == 0 && save && e->data != NULL)
                ops[k++] = (spool__wop){&e->id, e->data, e->data_len, false, 0};
            else if (step == 1)
                ops[k++] = (spool__wop){&e->id, save ? e->meta : NULL, save ? e->meta_len : 0,
                                        false, 0};
            else if (step == 2 && (!save || e->drop_data))
                ops[k++] = (spool__wop){&e->id, NULL, 0, false, 0};
        }
        if (k == 0)
            continue;
        st->be->apply(st, ops, k);
        for (size_t i = 0; i < k; i++)
            if (ops[i].err < 0) {
                int rc = ops[i].err;
                DERROR("kumod::spool", "writing the journal's pending operations to the %s spool "
                                       "at %s failed: %s",
                       st->name, st->path, kerr_str(rc));
                free(ops);
                return rc;
            }
    }
    free(ops);
    pthread_mutex_lock(&sp->pmu);
    spool__pend_clear(p);
    pthread_mutex_unlock(&sp->pmu);
    return 0;
}

static int journal_checkpoint(spool *sp)
{
    int rc = pend_flush(sp);
    if (rc == 0)
        rc = stores_durable(sp);
    if (rc == 0)
        rc = spool__journal_checkpoint(sp->journal);
    if (rc == 0)
        stat_add(&sp->journal_checkpoints, 1);
    return rc;
}

/* The journal failed (a write or its sync): group commits sync the stores
 * themselves from now on. Once the stores are synced the journal holds
 * nothing they lack, and it is removed so that no restart replays an old
 * record over newer removes. */
static void journal_give_up(spool *sp, int err)
{
    const char *path = spool__journal_path(sp->journal);
    int rc = pend_flush(sp);
    if (rc == 0)
        rc = stores_durable(sp);
    stores_skip_wal(sp, false);
    if (rc == 0 && unlink(path) == 0) {
        DERROR("kumod::spool",
               "the spool journal %s failed (%s): removed it; group commits sync the %s and %s "
               "spools directly until restart",
               path, kerr_str(err), sp->data->name, sp->meta->name);
    } else {
        DERROR("kumod::spool",
               "the spool journal %s failed (%s) and the spools could not be synced (%s): kept "
               "it for the next start to replay; group commits sync the spools directly",
               path, kerr_str(err), kerr_str(rc < 0 ? rc : KERR_IO));
    }
    spool__journal_close(sp->journal);
    sp->journal = NULL;
}

/* Fills sp->jops with the journal ops of a group: every request that has
 * not failed (all < 0 errors were set by the stores' writes). */
static size_t journal_ops(spool *sp, spool_req **reqs, size_t n, bool *sync)
{
    size_t m = 0;
    *sync = false;
    for (size_t i = 0; i < n; i++) {
        spool_req *r = reqs[i];
        if (r->err < 0)
            continue;
        spool__jop *o = &sp->jops[m++];
        o->id = r->id;
        if (r->type == REQ_SAVE) {
            o->kind = r->data != NULL ? JOP_SAVE : JOP_SAVE_META;
            o->meta = r->meta;
            o->meta_len = r->meta_len;
            o->data = r->data;
            o->data_len = r->data != NULL ? r->data_len : 0;
            *sync |= r->sync;
        } else {
            *o = (spool__jop){JOP_REMOVE, r->id, NULL, 0, NULL, 0};
        }
    }
    return m;
}

/* The removes of a group, straight to the stores (metas first, so that no
 * meta points at deleted data); unsynced. For a group whose journal record
 * failed, after the journal was given up. */
static void write_removes(spool *sp, spool_req **reqs, size_t n)
{
    spool__wop *ops = wops_reserve(sp, n);
    spool_req **who = malloc(n * sizeof(*who));
    for (int step = 0; step < 2; step++) {
        size_t k = 0;
        for (size_t i = 0; i < n; i++) {
            spool_req *r = reqs[i];
            if (r->type != REQ_REMOVE || r->err < 0)
                continue;
            if (ops == NULL || who == NULL) {
                r->err = KERR_NOMEM;
                continue;
            }
            ops[k] = (spool__wop){&r->id, NULL, 0, false, 0};
            who[k++] = r;
        }
        run_apply(step == 0 ? sp->meta : sp->data, ops, k, who);
    }
    free(who);
    if (sp->pend.count > 0) {
        /* what the journal still held for them is void now */
        pthread_mutex_lock(&sp->pmu);
        for (size_t i = 0; i < n; i++)
            if (reqs[i]->type == REQ_REMOVE && reqs[i]->err == 0)
                spool__pend_forget(&sp->pend, &reqs[i]->id);
        pthread_mutex_unlock(&sp->pmu);
    }
}

/* A group the journal records: its record (synced when a save asked for
 * it) is all it writes; its saves and removes wait in the pending set for
 * the next checkpoint, where a remove that met its message's save leaves
 * nothing to write. */
static void write_journaled(spool *sp, spool_req **reqs, size_t n)
{
    bool jsync;
    size_t m = journal_ops(sp, reqs, n, &jsync);
    int rc = m == 0 ? 0
                    : spool__journal_append(sp->journal, sp->jops, m,
                                            spool__journal_record_len(sp->jops, m), jsync);
    if (rc < 0) {
        /* Not durable: the saves fail (their clients were not acknowledged
         * and will retry). Giving the journal up writes what it had pending
         * to the stores; this group's removes then go there too. */
        for (size_t i = 0; i < n; i++)
            if (reqs[i]->type == REQ_SAVE)
                reqs[i]->err = rc;
        journal_give_up(sp, rc);
        write_removes(sp, reqs, n);
        return;
    }
    uint64_t drops = sp->pend.drops;
    pthread_mutex_lock(&sp->pmu);
    for (size_t i = 0; i < n; i++) {
        spool_req *r = reqs[i];
        if (r->type == REQ_SAVE) {
            spool__pend_save(&sp->pend, &r->id, r->meta, r->meta_len, r->data,
                             r->data != NULL ? r->data_len : 0, r->fresh);
            r->meta = r->data = NULL;
        } else {
            spool__pend_remove(&sp->pend, &r->id);
        }
    }
    pthread_mutex_unlock(&sp->pmu);
    stat_add(&sp->never_stored, sp->pend.drops - drops);
}

static void write_segment(spool *sp, spool_req **reqs, size_t n)
{
    spool__wop *ops = wops_reserve(sp, n);
    spool_req **who;
    size_t k, nsaves = 0, nremoves = 0, nsynced_ok = 0, nerr = 0;
    bool any_synced = false;
    bool journaled = false; /* this group: one journal record instead of the stores' syncs */

    who = malloc((n ? n : 1) * sizeof(*who));
    if (ops == NULL || who == NULL) {
        free(who);
        for (size_t i = 0; i < n; i++)
            reqs[i]->err = KERR_NOMEM;
        goto callbacks;
    }
    for (size_t i = 0; i < n; i++)
        reqs[i]->err = 0;

    if (sp->journal != NULL) {
        if (sp->jops_cap < n) {
            spool__jop *j = realloc(sp->jops, n * sizeof(*j));
            if (j != NULL) {
                sp->jops = j;
                sp->jops_cap = n;
            }
        }
        size_t len = 0;
        if (sp->jops_cap >= n) {
            bool unused;
            len = spool__journal_record_len(sp->jops, journal_ops(sp, reqs, n, &unused));
            journaled = spool__journal_takes(sp->journal, len);
        }
        if (journaled) {
            /* room in the pending set, so that recording the group there
             * cannot fail once its record is written */
            pthread_mutex_lock(&sp->pmu);
            journaled = spool__pend_reserve(&sp->pend, n) == 0;
            pthread_mutex_unlock(&sp->pmu);
        }
        /* A group that does not fit the journal (or no memory for its ops)
         * goes through the stores' WALs and syncs, after a new lap of the
         * journal with the stores made durable, so that no replay ever puts
         * older records back over this group. A group that fits, but not in
         * what is left of this lap, also waits for a new one. */
        if (!journaled || !spool__journal_room(sp->journal, len)) {
            int rc = journal_checkpoint(sp);
            if (rc < 0) {
                journal_give_up(sp, rc);
                journaled = false;
            }
        }
        if (!journaled)
            stores_skip_wal(sp, false);
    }
    if (journaled) {
        write_journaled(sp, reqs, n);
        free(who);
        goto callbacks;
    }
    if (sp->pend.count > 0) {
        /* The journal was given up with operations still pending (the
         * stores refused them then): they go before this group, or it
         * fails. */
        int rc = pend_flush(sp);
        if (rc < 0) {
            for (size_t i = 0; i < n; i++)
                reqs[i]->err = rc;
            free(who);
            goto callbacks;
        }
    }

    /* 1. Every data half. With a syncer, written unsynced here and synced
     * by the syncer while step 2 writes and syncs the metas: both fsyncs
     * overlap. A crash between them can leave a synced meta whose data was
     * not synced (a power loss; a killed process loses nothing, the page
     * cache has both). That message was never acknowledged, since acks wait
     * for both syncs; it then takes the missing-data path of any other
     * spool damage (TransientFailure records until it expires) and reaches
     * no recipient. */
    bool parallel = false;
    k = 0;
    for (size_t i = 0; i < n; i++) {
        spool_req *r = reqs[i];
        if (r->type != REQ_SAVE || r->data == NULL)
            continue;
        bool sync = r->sync || sp->data->sync_all;
        if (sync && sp->syncer_started) {
            parallel = true;
            sync = false;
        }
        ops[k] = (spool__wop){&r->id, r->data, r->data_len, sync, 0};
        who[k++] = r;
    }
    run_apply(sp->data, ops, k, who);
    if (parallel)
        data_sync_start(sp);

    /* 2. Every meta half and meta delete, in queue order. A save whose data
     * failed writes no meta: there would be nothing to deliver. */
    k = 0;
    for (size_t i = 0; i < n; i++) {
        spool_req *r = reqs[i];
        if (r->err < 0)
            continue;
        if (r->type == REQ_SAVE)
            ops[k] = (spool__wop){&r->id, r->meta, r->meta_len, r->sync || sp->meta->sync_all, 0};
        else
            ops[k] = (spool__wop){&r->id, NULL, 0, false, 0};
        who[k++] = r;
    }
    run_apply(sp->meta, ops, k, who);
    if (parallel) {
        int src = data_sync_wait(sp);
        if (src < 0) {
            /* The data is not known durable: fail every save of the group
             * and take back the metas just written (unsynced deletes; the
             * client was not acknowledged and will retry). */
            DERROR("kumod::spool", "sync of the %s spool at %s failed: %s", sp->data->name,
                   sp->data->path, kerr_str(src));
            k = 0;
            for (size_t i = 0; i < n; i++) {
                spool_req *r = reqs[i];
                if (r->type != REQ_SAVE || r->data == NULL)
                    continue;
                if (r->err == 0)
                    ops[k++] = (spool__wop){&r->id, NULL, 0, false, 0};
                r->err = src;
            }
            if (k)
                sp->meta->be->apply(sp->meta, ops, k);
        }
    }

    /* 3. The data halves of the removes, now that no meta points at them.
     * Unsynced: an unsynced delete is at worst undone by a crash, and the
     * meta is already gone. */
    k = 0;
    for (size_t i = 0; i < n; i++) {
        spool_req *r = reqs[i];
        if (r->type != REQ_REMOVE || r->err < 0)
            continue;
        ops[k] = (spool__wop){&r->id, NULL, 0, false, 0};
        who[k++] = r;
    }
    run_apply(sp->data, ops, k, who);

    /* A group too large for the journal went through the stores' syncs;
     * the journal started a new lap before it, so that no replay puts older
     * records back over this group. The groups after it skip the WALs
     * again. */
    if (sp->journal != NULL)
        stores_skip_wal(sp, true);

    free(who);

callbacks:
    for (size_t i = 0; i < n; i++) {
        spool_req *r = reqs[i];
        if (r->type == REQ_SAVE) {
            bool synced =
                r->sync || (sp->meta->sync_all && (r->data == NULL || sp->data->sync_all));
            any_synced |= synced;
            if (r->err == 0) {
                nsaves++;
                nsynced_ok += synced;
            }
            free(r->meta);
            free(r->data);
            r->meta = r->data = NULL;
        } else if (r->err == 0) {
            nremoves++;
        }
        nerr += r->err < 0;
    }
    for (size_t i = 0; i < n; i++)
        if (reqs[i]->err < 0 && reqs[i]->err != KERR_UNHEALTHY) {
            spool__health_write_failed(sp->health, reqs[i]->err);
            break;
        }
    stat_add(&sp->saves, nsaves);
    stat_add(&sp->removes, nremoves);
    stat_add(&sp->errors, nerr);
    stat_add(&sp->synced_saves, nsynced_ok);
    if (any_synced)
        stat_add(&sp->syncs, 1);
    for (size_t i = 0; i < n; i++) {
        spool_req *r = reqs[i];
        if (r->done != NULL)
            r->done(r->ud, r->err);
        free(r);
    }
}

static void *writer_main(void *arg)
{
    spool *sp = arg;

    (void)pthread_setname_np(pthread_self(), "spool-writer"); /* cosmetic */
    for (;;) {
        spool_req *list;
        size_t n = 0, nremoves = 0, start = 0;

        pthread_mutex_lock(&sp->mu);
        while (!sp->wstop && sp->wq_urgent == 0) {
            if (sp->wq.head == NULL)
                pthread_cond_wait(&sp->wcond, &sp->mu);
            else if (pthread_cond_timedwait(&sp->wcond, &sp->mu, &sp->wq_lazy_due) == ETIMEDOUT)
                break;
        }
        if (sp->wq.head == NULL) {
            sp->writer_alive = false;
            pthread_mutex_unlock(&sp->mu);
            break;
        }
        /* Commit delay: when at least commit_siblings more saves are on
         * their way (sessions receiving a body), give them commit_delay to
         * join this group. One pair of fsyncs then covers more messages,
         * which under heavy load costs less CPU and fewer thread wake-ups
         * per message than it adds in latency; with few sessions the
         * latency matters more, and the group goes at once. A lone client
         * never waits: its own save is no longer expected once it is
         * queued. A plain sleep, not a wait that each arriving save would
         * cut short with a wake-up of its own. */
        if (sp->commit_delay_ns > 0 && !sp->wstop && sp->wq_urgent > 0 &&
            atomic_load_explicit(&saves_expected, memory_order_relaxed) >= sp->commit_siblings) {
            struct timespec ts = {(time_t)(sp->commit_delay_ns / NS_PER_SEC),
                                  (long)(sp->commit_delay_ns % NS_PER_SEC)};
            pthread_mutex_unlock(&sp->mu);
            while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
                ;
            stat_add(&sp->delayed_groups, 1);
            pthread_mutex_lock(&sp->mu);
        }
        /* Group commit: take everything queued. */
        stat_add(&sp->groups, 1);
        list = sp->wq.head;
        rl_init(&sp->wq);
        sp->wq_urgent = 0;
        pthread_mutex_unlock(&sp->mu);

        for (spool_req *r = list; r != NULL; r = r->next)
            n++;
        if (sp->batch_cap < n) {
            spool_req **b = realloc(sp->batch, n * sizeof(*b));
            if (b == NULL) {
                /* Fall back to one request at a time. */
                for (spool_req *r = list, *next; r != NULL; r = next) {
                    next = r->next;
                    write_segment(sp, &r, 1);
                }
                continue;
            }
            sp->batch = b;
            sp->batch_cap = n;
        }
        n = 0;
        for (spool_req *r = list; r != NULL; r = r->next) {
            sp->batch[n++] = r;
            nremoves += r->type == REQ_REMOVE;
        }
        while (start < n) {
            size_t lim = n - start > SPOOL_GROUP_MAX ? start + SPOOL_GROUP_MAX : n;
            size_t end = cut_segment(sp, start, lim, nremoves);
            write_segment(sp, sp->batch + start, end - start);
            start = end;
        }
    }
    return NULL;
}

/* ---- the readers ------------------------------------------------------ */

typedef struct enum_ctx {
    spool_req *req;
    spool__pend snap; /* the pending set's ids and metas when the enumeration began */
} enum_ctx;

static int enum_each(void *ud, const spoolid *id, const char *buf, size_t len)
{
    enum_ctx *ec = ud;
    /* the pending set has the newer state of this id */
    if (spool__pend_find(&ec->snap, id) == NULL)
        ec->req->each(ec->req->ud, id, buf, len);
    return 0;
}

/* Copies the ids and metas of the pending set (what the journal holds and
 * the meta store does not yet). 0 or KERR_NOMEM. */
static int pend_snapshot(spool *sp, spool__pend *snap)
{
    int rc = 0;
    pthread_mutex_lock(&sp->pmu);
    const spool__pend *p = &sp->pend;
    if (p->count > 0)
        rc = spool__pend_reserve(snap, p->count);
    for (size_t i = 0; rc == 0 && i < p->cap; i++) {
        const spool__pend_ent *e = &p->slots[i];
        if (e->state == PEND_REMOVE) {
            spool__pend_remove(snap, &e->id);
        } else if (e->state == PEND_SAVE) {
            char *meta = malloc(e->meta_len ? e->meta_len : 1);
            if (meta == NULL) {
                rc = KERR_NOMEM;
                break;
            }
            memcpy(meta, e->meta, e->meta_len);
            spool__pend_save(snap, &e->id, meta, e->meta_len, NULL, 0, false);
        }
    }
    pthread_mutex_unlock(&sp->pmu);
    return rc;
}

/* A load the pending set answers: 1 (rc and *buf set), or 0 when the
 * stores have to. */
static int load_pending(spool *sp, const spool_req *r, int *rc, char **buf, size_t *len)
{
    int found = 1;
    pthread_mutex_lock(&sp->pmu);
    const spool__pend_ent *e = spool__pend_find(&sp->pend, &r->id);
    const char *src = NULL;
    size_t n = 0;
    if (e == NULL) {
        found = 0;
    } else if (e->state == PEND_REMOVE || (r->want_data && e->data == NULL && e->drop_data)) {
        *rc = KERR_NOTFOUND;
    } else if (!r->want_data) {
        src = e->meta;
        n = e->meta_len;
    } else if (e->data != NULL) {
        src = e->data;
        n = e->data_len;
    } else {
        found = 0; /* a meta-only save: the data half is in the stores */
    }
    if (src != NULL) {
        *buf = malloc(n ? n : 1);
        *rc = *buf != NULL ? 0 : KERR_NOMEM;
        if (*buf != NULL) {
            memcpy(*buf, src, n);
            *len = n;
        }
    }
    pthread_mutex_unlock(&sp->pmu);
    return found;
}

static void do_load(spool *sp, spool_req *r)
{
    spool_store *st = r->want_data ? sp->data : sp->meta;
    char *buf = NULL;
    size_t len = 0;
    int rc;
    if (!load_pending(sp, r, &rc, &buf, &len))
        rc = st->be->get(st, &r->id, &buf, &len);

    stat_add(&sp->loads, 1);
    if (rc < 0 && rc != KERR_NOTFOUND) {
        stat_add(&sp->errors, 1);
        spool__health_op_failed(sp->health, rc);
    }
    r->load(r->ud, rc, buf, len);
}

static void do_enumerate(spool *sp, spool_req *r)
{
    enum_ctx ec = {r, {0}};
    unsigned skipped = 0;
    int rc;

    /* The meta store only: start-up must never read message bodies. The
     * pending set's metas come after it. */
    rc = pend_snapshot(sp, &ec.snap);
    if (rc == 0)
        rc = sp->meta->be->iterate(sp->meta, enum_each, &ec, &skipped);
    for (size_t i = 0; rc == 0 && i < ec.snap.cap; i++) {
        const spool__pend_ent *e = &ec.snap.slots[i];
        if (e->state == PEND_SAVE)
            r->each(r->ud, &e->id, e->meta, e->meta_len);
    }
    spool__pend_fini(&ec.snap);
    stat_add(&sp->errors, skipped + (rc < 0));
    if (r->done != NULL)
        r->done(r->ud, rc);
}

static void *reader_main(void *arg)
{
    spool *sp = arg;

    (void)pthread_setname_np(pthread_self(), "spool-reader"); /* cosmetic */
    pthread_mutex_lock(&sp->mu);
    for (;;) {
        spool_req *r = rl_pop(&sp->loadq);
        if (r == NULL && !sp->enum_running) {
            r = rl_pop(&sp->enumq);
            if (r != NULL)
                sp->enum_running = true;
        }
        if (r == NULL) {
            if (sp->rstop && sp->loadq.head == NULL && sp->enumq.head == NULL)
                break;
            pthread_cond_wait(&sp->rcond, &sp->mu);
            continue;
        }
        req_type type = r->type;
        pthread_mutex_unlock(&sp->mu);
        if (type == REQ_LOAD)
            do_load(sp, r);
        else
            do_enumerate(sp, r);
        free(r);
        pthread_mutex_lock(&sp->mu);
        if (type == REQ_ENUM) {
            sp->enum_running = false;
            /* A queued enumeration may now run on the other reader. */
            pthread_cond_broadcast(&sp->rcond);
        }
    }
    sp->readers_alive--;
    pthread_mutex_unlock(&sp->mu);
    return NULL;
}

/* ---- lifecycle -------------------------------------------------------- */

static void compactor_join(spool *sp)
{
    pthread_mutex_lock(&sp->mu);
    bool j = sp->compactor_joinable;
    sp->compactor_joinable = false;
    pthread_mutex_unlock(&sp->mu);
    if (j)
        pthread_join(sp->compactor, NULL);
}

static void spool_stop_threads(spool *sp)
{

    /* Readers first: an enumeration callback may still queue removes (for
     * entries it cannot parse), which the writer must then complete. */
    pthread_mutex_lock(&sp->mu);
    sp->rstop = true;
    pthread_cond_broadcast(&sp->rcond);
    pthread_mutex_unlock(&sp->mu);
    /* a compaction under way finishes first: the stores close after it */
    compactor_join(sp);
    for (int i = 0; i < sp->nreaders; i++)
        pthread_join(sp->readers[i], NULL);
    sp->nreaders = 0;

    pthread_mutex_lock(&sp->mu);
    sp->wstop = true;
    pthread_cond_broadcast(&sp->wcond);
    pthread_mutex_unlock(&sp->mu);
    if (sp->writer_started)
        pthread_join(sp->writer, NULL);
    sp->writer_started = false;
    if (sp->syncer_started) {
        pthread_mutex_lock(&sp->smu);
        sp->sync_stop = true;
        pthread_cond_broadcast(&sp->scond);
        pthread_mutex_unlock(&sp->smu);
        pthread_join(sp->syncer, NULL);
        sp->syncer_started = false;
    }
}

/* Replay sink: one journal record into the stores, in the writer's order
 * (data, then metas and meta deletes, then data deletes); unsynced, the
 * caller syncs once at the end. */
static int replay_apply(void *ud, const spool__jop *jops, size_t n)
{
    spool *sp = ud;
    spool__wop *ops = wops_reserve(sp, n);
    size_t k;
    if (ops == NULL)
        return KERR_NOMEM;
    for (int step = 0; step < 3; step++) {
        spool_store *st = step == 1 ? sp->meta : sp->data;
        k = 0;
        for (size_t i = 0; i < n; i++) {
            const spool__jop *o = &jops[i];
            if (step == 0 && o->kind == JOP_SAVE)
                ops[k++] = (spool__wop){&o->id, o->data, o->data_len, false, 0};
            else if (step == 1)
                ops[k++] = (spool__wop){&o->id, o->kind == JOP_REMOVE ? NULL : o->meta,
                                        o->meta_len, false, 0};
            else if (step == 2 && o->kind == JOP_REMOVE)
                ops[k++] = (spool__wop){&o->id, NULL, 0, false, 0};
        }
        if (k == 0)
            continue;
        st->be->apply(st, ops, k);
        for (size_t i = 0; i < k; i++)
            if (ops[i].err < 0)
                return ops[i].err;
    }
    return 0;
}

/* Opens the journal of two RocksDB stores, replays what it holds past its
 * last checkpoint (messages acknowledged before a crash whose store writes
 * were not synced), syncs the stores and starts a new lap. A journal left
 * by a run that had one is replayed even when this one turns it off. */
static int journal_start(spool *sp)
{
    const spool_params *dp = &sp->data->params, *mp = &sp->meta->params;
    bool want = dp->journal_size != 0 && mp->journal_size != 0;
    uint64_t size = dp->journal_size > mp->journal_size ? dp->journal_size : mp->journal_size;
    uint64_t records = 0, nops = 0;
    char path[PATH_MAX], err[512];
    int rc;

    if (sp->data->be->sync_wal == NULL || sp->meta->be->sync_wal == NULL)
        return 0; /* LocalDisk: its own syncs */
    if ((size_t)snprintf(path, sizeof(path), "%s/%s", sp->data->path, SPOOL_JOURNAL_NAME) >=
        sizeof(path))
        return KERR_INVAL;
    bool existed = access(path, F_OK) == 0;
    if (!want && !existed)
        return 0;
    rc = spool__journal_open(path, want ? size : SPOOL_JOURNAL_SIZE_DEFAULT, &sp->journal, err,
                             sizeof(err));
    if (rc < 0 && !existed) {
        /* Nothing to replay, only a new ring to make: a small or nearly full
         * spool volume must still start and drain by delivery, so kumod
         * goes on without the journal (group commits sync the stores' WALs,
         * as with journal_size = 0) and says why, once. */
        DWARN("kumod::spool",
              "spool journal %s (%llu KiB) not created: %s; running without the journal "
              "(each group commit syncs the spools' write-ahead logs)",
              path, (unsigned long long)(size >> 10), err);
        sp->journal = NULL;
        return 0;
    }
    if (rc < 0) {
        DERROR("kumod::spool", "spool journal: %s", err);
        return rc;
    }
    spool__journal_set_direct(sp->journal, true);
    rc = spool__journal_replay(sp->journal, replay_apply, sp, &records, &nops);
    if (rc < 0) {
        DERROR("kumod::spool",
               "spool journal %s: replay failed after %llu records: %s; the spools are left as "
               "they are and the journal is kept",
               path, (unsigned long long)records, kerr_str(rc));
        goto fail;
    }
    if (!want) {
        rc = stores_sync(sp);
        if (rc == 0 && unlink(path) != 0)
            rc = KERR_IO;
        if (rc < 0) {
            DERROR("kumod::spool", "spool journal %s: cannot retire it: %s", path, kerr_str(rc));
            goto fail;
        }
        DINFO("kumod::spool", "spool journal %s: replayed %llu records (%llu operations), "
                              "then removed it (journal_size = 0)",
              path, (unsigned long long)records, (unsigned long long)nops);
        spool__journal_close(sp->journal);
        sp->journal = NULL;
        return 0;
    }
    rc = journal_checkpoint(sp);
    if (rc < 0) {
        DERROR("kumod::spool", "spool journal %s: cannot start a new lap: %s", path,
               kerr_str(rc));
        goto fail;
    }
    stores_skip_wal(sp, true); /* replayed through the WALs; from now on the journal logs */
    DINFO("kumod::spool",
          "spool journal %s (%llu KiB%s): replayed %llu records (%llu operations)", path,
          (unsigned long long)(spool__journal_size(sp->journal) >> 10),
          spool__journal_direct(sp->journal) ? ", direct I/O" : "", (unsigned long long)records,
          (unsigned long long)nops);
    return 0;

fail:
    spool__journal_close(sp->journal);
    sp->journal = NULL;
    return rc;
}

static void spool_release(spool *sp)
{
    spool__journal_close(sp->journal);
    sp->journal = NULL;
    free(sp->jops);
    spool_store_close(sp->data);
    spool_store_close(sp->meta);
    pthread_cond_destroy(&sp->rcond);
    pthread_cond_destroy(&sp->wcond);
    pthread_mutex_destroy(&sp->mu);
    pthread_cond_destroy(&sp->scond);
    pthread_mutex_destroy(&sp->smu);
    free(sp->batch);
    free(sp->wops);
    free(sp->seen);
    spool__pend_fini(&sp->pend);
    pthread_mutex_destroy(&sp->pmu);
    free(sp);
}

int spool_new(spool_store *data_take, spool_store *meta_take, spool **out)
{
    sigset_t all, old;
    spool *sp;
    int rc = 0;

    *out = NULL;
    if (data_take == NULL || meta_take == NULL || data_take == meta_take) {
        /* Ownership moved in, so the stores are closed even on failure. */
        spool_store_close(data_take);
        if (meta_take != data_take)
            spool_store_close(meta_take);
        return KERR_INVAL;
    }
    sp = calloc(1, sizeof(*sp));
    if (sp == NULL) {
        spool_store_close(data_take);
        spool_store_close(meta_take);
        return KERR_NOMEM;
    }
    sp->data = data_take;
    sp->commit_delay_ns = data_take->params.commit_delay_ns > meta_take->params.commit_delay_ns
                              ? data_take->params.commit_delay_ns
                              : meta_take->params.commit_delay_ns;
    sp->commit_siblings = data_take->params.commit_siblings < meta_take->params.commit_siblings
                              ? data_take->params.commit_siblings
                              : meta_take->params.commit_siblings;
    sp->meta = meta_take;
    rl_init(&sp->wq);
    rl_init(&sp->loadq);
    rl_init(&sp->enumq);
    /* The writer's timed wait (removes waiting for company) runs on the
     * monotonic clock. */
    pthread_condattr_t mono;
    bool init_ok = pthread_condattr_init(&mono) == 0;
    init_ok = init_ok && pthread_condattr_setclock(&mono, CLOCK_MONOTONIC) == 0 &&
              pthread_mutex_init(&sp->mu, NULL) == 0 &&
              pthread_cond_init(&sp->wcond, &mono) == 0 &&
              pthread_cond_init(&sp->rcond, NULL) == 0 &&
              pthread_mutex_init(&sp->smu, NULL) == 0 && pthread_cond_init(&sp->scond, NULL) == 0 &&
              pthread_mutex_init(&sp->pmu, NULL) == 0;
    pthread_condattr_destroy(&mono);
    if (!init_ok) {
        /* glibc never fails these. */
        spool_release(sp);
        return KERR_NOMEM;
    }

    rc = journal_start(sp);
    if (rc < 0) {
        spool_release(sp);
        return rc;
    }

    /* Spool threads take no signals: they belong to the main thread. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    if (sp->data->be->sync_wal != NULL) {
        if (pthread_create(&sp->syncer, NULL, syncer_main, sp) != 0)
            rc = KERR_NOMEM;
        else
            sp->syncer_started = true;
    }
    if (rc == 0) {
        sp->writer_alive = true;
        if (pthread_create(&sp->writer, NULL, writer_main, sp) != 0) {
            sp->writer_alive = false;
            rc = KERR_NOMEM;
        } else {
            sp->writer_started = true;
        }
    }
    for (int i = 0; rc == 0 && i < SPOOL_READERS; i++) {
        pthread_mutex_lock(&sp->mu);
        sp->readers_alive++;
        pthread_mutex_unlock(&sp->mu);
        if (pthread_create(&sp->readers[i], NULL, reader_main, sp) != 0) {
            pthread_mutex_lock(&sp->mu);
            sp->readers_alive--;
            pthread_mutex_unlock(&sp->mu);
            rc = KERR_NOMEM;
            break;
        }
        sp->nreaders++;
    }
    if (rc == 0) {
        sp->health = spool__health_new(sp->data, sp->meta);
        if (!sp->health)
            rc = KERR_NOMEM;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc < 0) {
        spool_stop_threads(sp);
        spool_release(sp);
        return rc;
    }
    *out = sp;
    return 0;
}

void spool_stop(spool *sp)
{
    if (sp != NULL)
        spool_stop_threads(sp);
}

void spool_free(spool *sp)
{
    if (sp == NULL)
        return;
    spool__health_free(sp->health);
    sp->health = NULL;
    spool_stop_threads(sp);
    if (sp->journal != NULL) {
        /* An orderly stop leaves nothing to replay. */
        int rc = journal_checkpoint(sp);
        if (rc < 0)
            DERROR("kumod::spool", "spool journal %s: final checkpoint failed: %s (the next "
                                   "start replays it)",
                   spool__journal_path(sp->journal), kerr_str(rc));
    }
    spool_release(sp);
}

/* ---- admin compaction ------------------------------------------------- */

static void *compactor_main(void *arg)
{
    spool *sp = arg;
    (void)pthread_setname_np(pthread_self(), "spool-compact"); /* cosmetic */
    int64_t t0 = clock_mono_ns();
    int rc = sp->compact_store->be->compact(sp->compact_store);
    DINFO("kumod::spool", "spool %s compacted in %.3fs: %s", sp->compact_store->name,
          (double)(clock_mono_ns() - t0) / 1e9, rc ? kerr_str(rc) : "ok");
    spool_done_fn cb = sp->compact_cb;
    void *ud = sp->compact_ud;
    pthread_mutex_lock(&sp->mu);
    sp->compacting = false;
    pthread_mutex_unlock(&sp->mu);
    cb(ud, rc);
    return NULL;
}

int spool_compact(spool *sp, const char *name, spool_done_fn cb, void *ud)
{
    spool_store *st = NULL;
    if (sp->data->name && strcmp(sp->data->name, name) == 0)
        st = sp->data;
    else if (sp->meta->name && strcmp(sp->meta->name, name) == 0)
        st = sp->meta;
    if (!st)
        return KERR_NOTFOUND;
    if (!st->be->compact) {
        cb(ud, 0); /* LocalDisk: nothing to compact */
        return 0;
    }
    pthread_mutex_lock(&sp->mu);
    if (sp->compacting || sp->rstop) {
        pthread_mutex_unlock(&sp->mu);
        return sp->rstop ? KERR_SHUTDOWN : KERR_AGAIN;
    }
    bool j = sp->compactor_joinable;
    sp->compactor_joinable = false;
    pthread_mutex_unlock(&sp->mu);
    if (j)
        pthread_join(sp->compactor, NULL); /* the previous one, already done */
    pthread_mutex_lock(&sp->mu);
    sp->compacting = true;
    sp->compact_store = st;
    sp->compact_cb = cb;
    sp->compact_ud = ud;
    int rc = pthread_create(&sp->compactor, NULL, compactor_main, sp) == 0 ? 0 : KERR_NOMEM;
    sp->compactor_joinable = rc == 0;
    if (rc)
        sp->compacting = false;
    pthread_mutex_unlock(&sp->mu);
    return rc;
}

/* ---- the operations --------------------------------------------------- */

static void enqueue_write(spool *sp, spool_req *r)
{
    if (spool__health_latched(sp->health)) {
        /* the gate is latched: refuse at once, keep nothing half-written */
        free(r->meta);
        free(r->data);
        if (r->done != NULL)
            r->done(r->ud, KERR_UNHEALTHY);
        free(r);
        return;
    }
    pthread_mutex_lock(&sp->mu);
    if (sp->writer_alive) {
        bool was_empty = sp->wq.head == NULL;
        rl_push(&sp->wq, r);
        if (!r->lazy) {
            if (sp->wq_urgent++ == 0)
                pthread_cond_signal(&sp->wcond);
        } else if (was_empty) {
            /* The first remove of a batch sets its deadline; the writer
             * moves from an untimed wait to a timed one. */
            clock_gettime(CLOCK_MONOTONIC, &sp->wq_lazy_due);
            sp->wq_lazy_due.tv_nsec += SPOOL_REMOVE_DELAY_MS * 1000000L;
            if (sp->wq_lazy_due.tv_nsec >= 1000000000L) {
                sp->wq_lazy_due.tv_sec++;
                sp->wq_lazy_due.tv_nsec -= 1000000000L;
            }
            pthread_cond_signal(&sp->wcond);
        }
        pthread_mutex_unlock(&sp->mu);
        return;
    }
    pthread_mutex_unlock(&sp->mu);
    free(r->meta);
    free(r->data);
    stat_add(&sp->errors, 1);
    if (r->done != NULL)
        r->done(r->ud, KERR_SHUTDOWN);
    free(r);
}

static void save(spool *sp, const spoolid *id, char *meta_take, size_t meta_len, char *data_take,
                 size_t data_len, bool sync, bool fresh, bool lazy, spool_done_fn cb, void *ud)
{
    spool_req *r = calloc(1, sizeof(*r));
    if (r == NULL || meta_take == NULL) {
        free(r);
        free(meta_take);
        free(data_take);
        stat_add(&sp->errors, 1);
        if (cb != NULL)
            cb(ud, meta_take == NULL ? KERR_INVAL : KERR_NOMEM);
        return;
    }
    r->type = REQ_SAVE;
    r->id = *id;
    r->meta = meta_take;
    r->meta_len = meta_len;
    r->data = data_take;
    r->data_len = data_len;
    r->sync = sync;
    r->fresh = fresh && data_take != NULL;
    r->lazy = lazy;
    r->done = cb;
    r->ud = ud;
    enqueue_write(sp, r);
}

void spool_save(spool *sp, const spoolid *id, char *meta_take, size_t meta_len, char *data_take,
                size_t data_len, bool sync, spool_done_fn cb, void *ud)
{
    save(sp, id, meta_take, meta_len, data_take, data_len, sync, false, false, cb, ud);
}

void spool_save_new(spool *sp, const spoolid *id, char *meta_take, size_t meta_len,
                    char *data_take, size_t data_len, bool sync, spool_done_fn cb, void *ud)
{
    save(sp, id, meta_take, meta_len, data_take, data_len, sync, true, false, cb, ud);
}

void spool_save_new_lazy(spool *sp, const spoolid *id, char *meta_take, size_t meta_len,
                         char *data_take, size_t data_len, spool_done_fn cb, void *ud)
{
    save(sp, id, meta_take, meta_len, data_take, data_len, false, true, true, cb, ud);
}

void spool_remove(spool *sp, const spoolid *id, spool_done_fn cb, void *ud)
{
    spool_req *r = calloc(1, sizeof(*r));
    if (r == NULL) {
        stat_add(&sp->errors, 1);
        if (cb != NULL)
            cb(ud, KERR_NOMEM);
        return;
    }
    r->type = REQ_REMOVE;
    r->lazy = true;
    r->id = *id;
    r->done = cb;
    r->ud = ud;
    enqueue_write(sp, r);
}

/* Queues r for a reader; false when the readers are gone. */
static bool enqueue_read(spool *sp, req_list *q, spool_req *r)
{
    bool ok;
    pthread_mutex_lock(&sp->mu);
    ok = sp->readers_alive > 0;
    if (ok) {
        rl_push(q, r);
        /* Broadcast: a reader busy-waiting for an enumeration slot must not
         * swallow the only wake-up meant for a load. */
        pthread_cond_broadcast(&sp->rcond);
    }
    pthread_mutex_unlock(&sp->mu);
    return ok;
}

void spool_load(spool *sp, const spoolid *id, bool want_data, spool_load_fn cb, void *ud)
{
    spool_req *r = calloc(1, sizeof(*r));
    if (r == NULL) {
        stat_add(&sp->errors, 1);
        cb(ud, KERR_NOMEM, NULL, 0);
        return;
    }
    r->type = REQ_LOAD;
    r->id = *id;
    r->want_data = want_data;
    r->load = cb;
    r->ud = ud;
    if (!enqueue_read(sp, &sp->loadq, r)) {
        free(r);
        cb(ud, KERR_SHUTDOWN, NULL, 0);
    }
}

void spool_enumerate(spool *sp, spool_each_fn each, spool_done_fn done, void *ud)
{
    spool_req *r = calloc(1, sizeof(*r));
    if (r == NULL) {
        stat_add(&sp->errors, 1);
        if (done != NULL)
            done(ud, KERR_NOMEM);
        return;
    }
    r->type = REQ_ENUM;
    r->each = each;
    r->done = done;
    r->ud = ud;
    if (!enqueue_read(sp, &sp->enumq, r)) {
        free(r);
        if (done != NULL)
            done(ud, KERR_SHUTDOWN);
    }
}

bool spool_healthy(spool *sp, char *reason, size_t len)
{
    if (!spool__health_latched(sp->health)) {
        if (reason && len)
            reason[0] = 0;
        return true;
    }
    if (reason)
        snprintf(reason, len, "the spool is not accepting writes");
    return false;
}

void spool_get_health(spool *sp, spool_health_info out[2])
{
    if (sp->health)
        spool__health_get(sp->health, out, NULL, 0);
    else
        memset(out, 0, 2 * sizeof(*out));
}

void spool_get_stats(spool *sp, spool_stats *out)
{
    out->saves = atomic_load_explicit(&sp->saves, memory_order_relaxed);
    out->syncs = atomic_load_explicit(&sp->syncs, memory_order_relaxed);
    out->synced_saves = atomic_load_explicit(&sp->synced_saves, memory_order_relaxed);
    out->removes = atomic_load_explicit(&sp->removes, memory_order_relaxed);
    out->loads = atomic_load_explicit(&sp->loads, memory_order_relaxed);
    out->errors = atomic_load_explicit(&sp->errors, memory_order_relaxed);
    out->delayed_groups = atomic_load_explicit(&sp->delayed_groups, memory_order_relaxed);
    out->groups = atomic_load_explicit(&sp->groups, memory_order_relaxed);
    out->journal_checkpoints = atomic_load_explicit(&sp->journal_checkpoints, memory_order_relaxed);
    out->never_stored = atomic_load_explicit(&sp->never_stored, memory_order_relaxed);
}
