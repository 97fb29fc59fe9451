/* The RocksDB spool backend: one database per store (the "data" and the
 * "meta" spool live at separate paths), key = the 16 raw id bytes, value =
 * the bytes of that half. It owns the rocksdb_t handle, its options and a
 * flock on the database's LOCK file.
 * Writes arrive from the facade's writer thread as one WriteBatch per group
 * commit, with a synced write (WAL fsync) when any op in it asks for
 * durability; reads and iteration come from reader threads (RocksDB is
 * thread-safe for that). Every errptr is checked and freed; failures map to
 * KERR_CORRUPT (Corruption), KERR_INVAL (Invalid argument), KERR_AGAIN
 * (Incomplete, a write stall) or KERR_IO (everything else). */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include <rocksdb/c.h>

#include "core/duration.h"
#include "core/kerr.h"
#include "spool/backend.h"

typedef struct rocks_store {
    spool_store base;
    int lock_fd; /* flock on <path>/LOCK, see rocks_lock */
    rocksdb_t *db;
    rocksdb_options_t *opts;
    rocksdb_writeoptions_t *wo_sync;
    rocksdb_writeoptions_t *wo_nosync;
    rocksdb_writeoptions_t *wo_nowal; /* skip_wal: no WAL append at all */
    rocksdb_readoptions_t *ro_get;
    rocksdb_readoptions_t *ro_scan;
    rocksdb_writebatch_t *wb; /* writer thread only; cleared per apply */
} rocks_store;

/* RocksDB's Status::ToString() starts with the code's name. */
static int rocks_err_code(const char *msg)
{
    if (strncmp(msg, "Corruption", 10) == 0)
        return KERR_CORRUPT;
    if (strncmp(msg, "Invalid argument", 16) == 0)
        return KERR_INVAL;
    if (strncmp(msg, "Operation aborted", 17) == 0 || strncmp(msg, "Result incomplete", 17) == 0)
        return KERR_AGAIN;
    return KERR_IO;
}

/* ---- rocks_params ---------------------------------------------------- */

typedef enum rparam_type {
    RP_INT,         /* integer in [min, max] */
    RP_BOOL,        /* true/false */
    RP_COMPRESSION, /* "None" | "Snappy" | ... */
    RP_LOGLEVEL,    /* "Debug" | "Info" | ... */
    RP_DURATION,    /* "6h" or a number of seconds; the setter gets ns */
} rparam_type;

typedef void (*rparam_set_fn)(rocksdb_options_t *o, int64_t v);

typedef struct rparam {
    const char *key;
    rparam_type type;
    int64_t min, max;
    rparam_set_fn set; /* NULL: accepted for KumoMTA compatibility, no effect */
} rparam;

#define RSET(name, call)                                                                           \
    static void rset_##name(rocksdb_options_t *o, int64_t v)                                       \
    {                                                                                              \
        call;                                                                                      \
    }
RSET(increase_parallelism, rocksdb_options_increase_parallelism(o, (int)v))
RSET(optimize_level, rocksdb_options_optimize_level_style_compaction(o, (uint64_t)v))
RSET(optimize_universal, rocksdb_options_optimize_universal_style_compaction(o, (uint64_t)v))
RSET(paranoid_checks, rocksdb_options_set_paranoid_checks(o, (unsigned char)v))
RSET(compression_type, rocksdb_options_set_compression(o, (int)v))
RSET(compaction_readahead_size, rocksdb_options_compaction_readahead_size(o, (size_t)v))
RSET(dynamic_level_bytes,
     rocksdb_options_set_level_compaction_dynamic_level_bytes(o, (unsigned char)v))
RSET(max_open_files, rocksdb_options_set_max_open_files(o, (int)v))
RSET(log_level, rocksdb_options_set_info_log_level(o, (int)v))
RSET(memtable_huge_page_size, rocksdb_options_set_memtable_huge_page_size(o, (size_t)v))
RSET(log_file_time_to_roll, rocksdb_options_set_log_file_time_to_roll(o, (size_t)(v / NS_PER_SEC)))
RSET(obsolete_files_period,
     rocksdb_options_set_delete_obsolete_files_period_micros(o, (uint64_t)(v / 1000)))
RSET(write_buffer_size, rocksdb_options_set_write_buffer_size(o, (size_t)v))
RSET(db_write_buffer_size, rocksdb_options_set_db_write_buffer_size(o, (size_t)v))
RSET(max_write_buffer_number, rocksdb_options_set_max_write_buffer_number(o, (int)v))
RSET(l0_compaction_trigger, rocksdb_options_set_level0_file_num_compaction_trigger(o, (int)v))
RSET(l0_slowdown_trigger, rocksdb_options_set_level0_slowdown_writes_trigger(o, (int)v))
RSET(l0_stop_trigger, rocksdb_options_set_level0_stop_writes_trigger(o, (int)v))
RSET(max_background_jobs, rocksdb_options_set_max_background_jobs(o, (int)v))
RSET(target_file_size_base, rocksdb_options_set_target_file_size_base(o, (uint64_t)v))
RSET(max_bytes_for_level_base, rocksdb_options_set_max_bytes_for_level_base(o, (uint64_t)v))
RSET(max_total_wal_size, rocksdb_options_set_max_total_wal_size(o, (uint64_t)v))
RSET(bytes_per_sync, rocksdb_options_set_bytes_per_sync(o, (uint64_t)v))
RSET(wal_bytes_per_sync, rocksdb_options_set_wal_bytes_per_sync(o, (uint64_t)v))
#undef RSET

/* Applied in this order (not the JSON's): the optimize_* presets first, so
 * explicit sizes given next to them win, as in KumoMTA's RocksSpool::new. */
static const rparam rparams[] = {
    {"increase_parallelism", RP_INT, 1, 1024, rset_increase_parallelism},
    {"optimize_level_style_compaction", RP_INT, 0, INT64_MAX, rset_optimize_level},
    {"optimize_universal_style_compaction", RP_INT, 0, INT64_MAX, rset_optimize_universal},
    {"compaction_readahead_size", RP_INT, 0, INT64_MAX, rset_compaction_readahead_size},
    {"max_open_files", RP_INT, -1, INT_MAX, rset_max_open_files},
    {"memtable_huge_page_size", RP_INT, 0, INT64_MAX, rset_memtable_huge_page_size},
    {"paranoid_checks", RP_BOOL, 0, 1, rset_paranoid_checks},
    {"level_compaction_dynamic_level_bytes", RP_BOOL, 0, 1, rset_dynamic_level_bytes},
    {"compression_type", RP_COMPRESSION, 0, 0, rset_compression_type},
    {"log_level", RP_LOGLEVEL, 0, 0, rset_log_level},
    {"log_file_time_to_roll", RP_DURATION, 0, INT64_MAX, rset_log_file_time_to_roll},
    {"obsolete_files_period", RP_DURATION, 0, INT64_MAX, rset_obsolete_files_period},
    {"write_buffer_size", RP_INT, 1, INT64_MAX, rset_write_buffer_size},
    {"db_write_buffer_size", RP_INT, 0, INT64_MAX, rset_db_write_buffer_size},
    {"max_write_buffer_number", RP_INT, 1, INT_MAX, rset_max_write_buffer_number},
    {"level0_file_num_compaction_trigger", RP_INT, 1, INT_MAX, rset_l0_compaction_trigger},
    {"level0_slowdown_writes_trigger", RP_INT, 0, INT_MAX, rset_l0_slowdown_trigger},
    {"level0_stop_writes_trigger", RP_INT, 1, INT_MAX, rset_l0_stop_trigger},
    {"max_background_jobs", RP_INT, 1, INT_MAX, rset_max_background_jobs},
    {"target_file_size_base", RP_INT, 1, INT64_MAX, rset_target_file_size_base},
    {"max_bytes_for_level_base", RP_INT, 1, INT64_MAX, rset_max_bytes_for_level_base},
    {"max_total_wal_size", RP_INT, 0, INT64_MAX, rset_max_total_wal_size},
    {"bytes_per_sync", RP_INT, 0, INT64_MAX, rset_bytes_per_sync},
    {"wal_bytes_per_sync", RP_INT, 0, INT64_MAX, rset_wal_bytes_per_sync},
    /* KumoMTA bounds its blocking-pool tasks with these; here one writer
     * thread serialises stores and removes already. */
    {"limit_concurrent_stores", RP_INT, 1, INT_MAX, NULL},
    {"limit_concurrent_loads", RP_INT, 1, INT_MAX, NULL},
    {"limit_concurrent_removes", RP_INT, 1, INT_MAX, NULL},
    /* documented among the rocks_params, applied by the spool facade (they
     * are also define_spool keys of their own; see spool_params_from_json) */
    {"store_deadline", RP_DURATION, 0, INT64_MAX, NULL},
    {"error_latch_duration", RP_DURATION, 0, INT64_MAX, NULL},
    {"error_unlatch_duration", RP_DURATION, 0, INT64_MAX, NULL},
    {"allow_error_unlatch", RP_BOOL, 0, 1, NULL},
};

typedef struct rname {
    const char *name;
    int value;
} rname;

static const rname compression_names[] = {
    {"None", rocksdb_no_compression},   {"Snappy", rocksdb_snappy_compression},
    {"Zlib", rocksdb_zlib_compression}, {"Bz2", rocksdb_bz2_compression},
    {"Lz4", rocksdb_lz4_compression},   {"Lz4hc", rocksdb_lz4hc_compression},
    {"Zstd", rocksdb_zstd_compression},
};

/* rocksdb::InfoLogLevel */
static const rname loglevel_names[] = {
    {"Debug", 0}, {"Info", 1}, {"Warn", 2}, {"Error", 3}, {"Fatal", 4}, {"Header", 5},
};

static int rname_lookup(const rname *names, size_t n, const char *s, int *out)
{
    for (size_t i = 0; i < n; i++) {
        if (strcmp(names[i].name, s) == 0) {
            *out = names[i].value;
            return 0;
        }
    }
    return KERR_INVAL;
}

static int rparam_value(const rparam *rp, const json_t *v, int64_t *out, char *err, size_t errlen)
{
    switch (rp->type) {
    case RP_INT: {
        double d;
        if (json_is_integer(v)) {
            json_int_t i = json_integer_value(v);
            if (i < rp->min || i > rp->max)
                goto range;
            *out = (int64_t)i;
            return 0;
        }
        if (!json_is_real(v))
            break;
        d = json_real_value(v);
        if (d != floor(d) || d < (double)rp->min || d >= (double)rp->max)
            goto range;
        *out = (int64_t)d;
        return 0;
    range:
        snprintf(err, errlen, "rocks_params: %s: out of range (%lld..%lld)", rp->key,
                 (long long)rp->min, (long long)rp->max);
        return KERR_INVAL;
    }
    case RP_BOOL:
        if (!json_is_boolean(v))
            break;
        *out = json_is_true(v);
        return 0;
    case RP_COMPRESSION:
    case RP_LOGLEVEL: {
        const rname *names = rp->type == RP_COMPRESSION ? compression_names : loglevel_names;
        size_t n = rp->type == RP_COMPRESSION
                       ? sizeof(compression_names) / sizeof(compression_names[0])
                       : sizeof(loglevel_names) / sizeof(loglevel_names[0]);
        int val;
        if (!json_is_string(v))
            break;
        if (rname_lookup(names, n, json_string_value(v), &val) < 0) {
            int off = snprintf(err, errlen, "rocks_params: %s: unknown value \"%s\" (one of",
                               rp->key, json_string_value(v));
            for (size_t i = 0; i < n && off >= 0 && (size_t)off < errlen; i++)
                off += snprintf(err + off, errlen - (size_t)off, " %s", names[i].name);
            if (off >= 0 && (size_t)off < errlen)
                snprintf(err + off, errlen - (size_t)off, ")");
            return KERR_INVAL;
        }
        *out = val;
        return 0;
    }
    case RP_DURATION:
        if (json_is_string(v)) {
            int64_t ns;
            if (duration_parse(json_string_value(v), &ns) < 0 || ns < 0) {
                snprintf(err, errlen, "rocks_params: %s: invalid duration \"%s\"", rp->key,
                         json_string_value(v));
                return KERR_INVAL;
            }
            *out = ns;
            return 0;
        }
        if (json_is_number(v)) {
            double secs = json_number_value(v);
            if (!(secs >= 0) || secs > (double)(INT64_MAX / NS_PER_SEC)) {
                snprintf(err, errlen, "rocks_params: %s: invalid duration", rp->key);
                return KERR_INVAL;
            }
            *out = (int64_t)(secs * (double)NS_PER_SEC);
            return 0;
        }
        break;
    }
    static const char *const type_names[] = {
        [RP_INT] = "an integer",
        [RP_BOOL] = "a boolean",
        [RP_COMPRESSION] = "a compression name string",
        [RP_LOGLEVEL] = "a log level string",
        [RP_DURATION] = "a duration",
    };
    snprintf(err, errlen, "rocks_params: %s: expected %s", rp->key, type_names[rp->type]);
    return KERR_INVAL;
}

/* Validates rocks_params and, when o is not NULL, applies it to o.
 * *explicit_compression tells whether compression_type was given. */
static int rparams_apply(const json_t *params, rocksdb_options_t *o, bool *explicit_compression,
                         char *err, size_t errlen)
{
    const size_t n = sizeof(rparams) / sizeof(rparams[0]);
    const char *key;
    json_t *v;

    if (explicit_compression)
        *explicit_compression = false;
    if (params == NULL || json_is_null(params))
        return 0;
    if (!json_is_object(params)) {
        snprintf(err, errlen, "rocks_params: expected an object");
        return KERR_INVAL;
    }
    json_object_foreach((json_t *)params, key, v)
    {
        size_t i;
        for (i = 0; i < n; i++)
            if (strcmp(rparams[i].key, key) == 0)
                break;
        if (i == n) {
            snprintf(err, errlen, "rocks_params: unknown key \"%s\"", key);
            return KERR_INVAL;
        }
    }
    for (size_t i = 0; i < n; i++) {
        int64_t val;
        int rc;
        v = json_object_get(params, rparams[i].key);
        if (v == NULL || json_is_null(v))
            continue;
        rc = rparam_value(&rparams[i], v, &val, err, errlen);
        if (rc < 0)
            return rc;
        if (rparams[i].type == RP_COMPRESSION && explicit_compression)
            *explicit_compression = true;
        if (o != NULL && rparams[i].set != NULL)
            rparams[i].set(o, val);
    }
    return 0;
}

int spool__rocks_check_params(const json_t *rocks_params, char *err, size_t errlen)
{
    return rparams_apply(rocks_params, NULL, NULL, err, errlen);
}

/* ---- backend ops ------------------------------------------------------ */

static void rocks_apply(spool_store *st, spool__wop *ops, size_t n)
{
    rocks_store *rs = (rocks_store *)st;
    bool sync = false;
    char *errp = NULL;
    int rc = 0;

    if (n == 0)
        return;
    rocksdb_writebatch_clear(rs->wb);
    for (size_t i = 0; i < n; i++) {
        if (ops[i].buf != NULL)
            rocksdb_writebatch_put(rs->wb, (const char *)ops[i].id->b, sizeof(ops[i].id->b),
                                   ops[i].buf, ops[i].len);
        else
            rocksdb_writebatch_delete(rs->wb, (const char *)ops[i].id->b, sizeof(ops[i].id->b));
        sync |= ops[i].sync;
    }
    /* One write for the whole group: one WAL append and, when any op needs
     * it, one WAL fsync shared by all of them. This write blocks during a
     * RocksDB write stall; that holds up only this writer thread. */
    rocksdb_write(rs->db, sync ? rs->wo_sync : st->skip_wal ? rs->wo_nowal : rs->wo_nosync, rs->wb,
                  &errp);
    if (errp != NULL) {
        rc = rocks_err_code(errp);
        rocksdb_free(errp);
    }
    rocksdb_writebatch_clear(rs->wb);
    for (size_t i = 0; i < n; i++)
        ops[i].err = rc;
}

static int rocks_get(spool_store *st, const spoolid *id, char **out, size_t *len)
{
    rocks_store *rs = (rocks_store *)st;
    char *errp = NULL;
    size_t vlen = 0;
    char *v;

    *out = NULL;
    *len = 0;
    /* The C API documents the value as malloc()ed: it is handed on as is. */
    v = rocksdb_get(rs->db, rs->ro_get, (const char *)id->b, sizeof(id->b), &vlen, &errp);
    if (errp != NULL) {
        int rc = rocks_err_code(errp);
        rocksdb_free(errp);
        free(v);
        return rc;
    }
    if (v == NULL)
        return KERR_NOTFOUND;
    *out = v;
    *len = vlen;
    return 0;
}

static int rocks_iterate(spool_store *st, spool__each_fn each, void *ud, unsigned *skipped)
{
    rocks_store *rs = (rocks_store *)st;
    rocksdb_iterator_t *it = rocksdb_create_iterator(rs->db, rs->ro_scan);
    char *errp = NULL;
    int rc = 0;

    for (rocksdb_iter_seek_to_first(it); rocksdb_iter_valid(it); rocksdb_iter_next(it)) {
        size_t klen, vlen;
        const char *k = rocksdb_iter_key(it, &klen);
        const char *v = rocksdb_iter_value(it, &vlen);
        spoolid id;
        if (klen != sizeof(id.b)) {
            (*skipped)++;
            continue;
        }
        memcpy(id.b, k, sizeof(id.b));
        if (each(ud, &id, v, vlen) != 0)
            break;
    }
    rocksdb_iter_get_error(it, &errp);
    if (errp != NULL) {
        rc = rocks_err_code(errp);
        rocksdb_free(errp);
    }
    rocksdb_iter_destroy(it);
    return rc;
}

/* The memtables written out as tables (synced, with the MANIFEST): every
 * write so far is durable, WAL or not. */
static int rocks_persist(spool_store *st)
{
    rocks_store *rs = (rocks_store *)st;
    rocksdb_flushoptions_t *fo = rocksdb_flushoptions_create();
    char *errp = NULL;
    rocksdb_flushoptions_set_wait(fo, 1);
    rocksdb_flush(rs->db, fo, &errp);
    rocksdb_flushoptions_destroy(fo);
    if (errp == NULL)
        return 0;
    int rc = rocks_err_code(errp);
    rocksdb_free(errp);
    return rc < 0 ? rc : KERR_IO;
}

static int rocks_compact(spool_store *st)
{
    rocks_store *rs = (rocks_store *)st;
    int rc = rocks_persist(st);
    if (rc != 0)
        return rc;
    /* the whole key range: NULL start and limit */
    rocksdb_compact_range(rs->db, NULL, 0, NULL, 0);
    /* the C API reports no status for compact_range; a background error
     * it hit shows in the property */
    uint64_t bg = 0;
    if (rocksdb_property_int(rs->db, "rocksdb.background-errors", &bg) == 0 && bg > 0)
        return KERR_IO;
    return 0;
}

static void rocks_close(spool_store *st)
{
    rocks_store *rs = (rocks_store *)st;
    if (rs->db != NULL) {
        /* Orderly close: persist the memtables as tables now, so the next
         * start does not replay the WAL (seconds with a large queue). A
         * failure (full disk...) changes nothing: the WAL, or the spool
         * journal for writes that skipped it, still has it all. */
        (void)rocks_persist(st);
        rocksdb_close(rs->db);
    }
    if (rs->wb != NULL)
        rocksdb_writebatch_destroy(rs->wb);
    if (rs->ro_scan != NULL)
        rocksdb_readoptions_destroy(rs->ro_scan);
    if (rs->ro_get != NULL)
        rocksdb_readoptions_destroy(rs->ro_get);
    if (rs->wo_nosync != NULL)
        rocksdb_writeoptions_destroy(rs->wo_nosync);
    if (rs->wo_nowal != NULL)
        rocksdb_writeoptions_destroy(rs->wo_nowal);
    if (rs->wo_sync != NULL)
        rocksdb_writeoptions_destroy(rs->wo_sync);
    if (rs->opts != NULL)
        rocksdb_options_destroy(rs->opts);
    if (rs->lock_fd >= 0)
        close(rs->lock_fd);
    spool__store_fini(&rs->base);
    free(rs);
}

static int rocks_sync_wal(spool_store *st)
{
    rocks_store *rs = (rocks_store *)st;
    char *errp = NULL;
    rocksdb_flush_wal(rs->db, 1, &errp);
    if (errp == NULL)
        return 0;
    int rc = rocks_err_code(errp);
    rocksdb_free(errp);
    return rc < 0 ? rc : KERR_IO;
}

static int rocks_property(spool_store *st, const char *name, uint64_t *out)
{
    rocks_store *rs = (rocks_store *)st;
    if (!rs->db)
        return KERR_INVAL;
    return rocksdb_property_int(rs->db, name, out) == 0 ? 0 : KERR_NOTFOUND;
}

/* A 17-byte key can never collide with a 16-byte spool id, and enumeration
 * skips keys of any other size. */
static int rocks_probe(spool_store *st)
{
    rocks_store *rs = (rocks_store *)st;
    static const char key[17] = "\0kumod-probe-key";
    char *err = NULL;
    rocksdb_put(rs->db, rs->wo_sync, key, sizeof(key), "1", 1, &err);
    if (err) {
        rocksdb_free(err);
        return KERR_IO;
    }
    rocksdb_delete(rs->db, rs->wo_sync, key, sizeof(key), &err);
    if (err) {
        rocksdb_free(err);
        return KERR_IO;
    }
    return 0;
}

static const spool__backend rocks_backend = {
    .property = rocks_property,
    .probe = rocks_probe,
    .apply = rocks_apply,
    .get = rocks_get,
    .iterate = rocks_iterate,
    .close = rocks_close,
    .sync_wal = rocks_sync_wal,
    .persist = rocks_persist,
    .compact = rocks_compact,
};

/* RocksDB locks <path>/LOCK itself (fcntl), but only after it has rotated
 * the info LOG of whoever holds the database. A flock on the same file, which
 * does not interfere with RocksDB's fcntl lock, turns a second open away
 * before it touches anything. */
static int rocks_lock(rocks_store *rs, const char *path, char *err, size_t errlen)
{
    size_t len = strlen(path) + sizeof("/LOCK");
    char *lock = malloc(len);
    int rc = 0;

    if (lock == NULL)
        return KERR_NOMEM;
    snprintf(lock, len, "%s/LOCK", path);
    rs->lock_fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (rs->lock_fd < 0) {
        snprintf(err, errlen, "spool %s: cannot open %s: %s", rs->base.name, lock, strerror(errno));
        rc = KERR_IO;
    } else if (flock(rs->lock_fd, LOCK_EX | LOCK_NB) < 0) {
        if (errno == EWOULDBLOCK) {
            snprintf(err, errlen, "spool %s: %s is locked: the database is in use", rs->base.name,
                     lock);
            rc = KERR_EXISTS;
        } else {
            snprintf(err, errlen, "spool %s: cannot lock %s: %s", rs->base.name, lock,
                     strerror(errno));
            rc = KERR_IO;
        }
    }
    free(lock);
    return rc;
}

int spool__rocks_open(const spool_params *p, spool_store **out, char *err, size_t errlen)
{
    rocks_store *rs;
    bool explicit_compression;
    char *errp = NULL;
    int rc;

    *out = NULL;
    rs = calloc(1, sizeof(*rs));
    if (rs == NULL)
        return KERR_NOMEM;
    rs->lock_fd = -1;
    spool__store_init(&rs->base, &rocks_backend, p);
    if (rs->base.name == NULL || rs->base.path == NULL) {
        rc = KERR_NOMEM;
        goto fail;
    }
    rc = spool__mkdir_p(p->path);
    if (rc < 0) {
        snprintf(err, errlen, "spool %s: cannot create %s: %s", p->name, p->path, strerror(errno));
        goto fail;
    }
    rc = rocks_lock(rs, p->path, err, errlen);
    if (rc < 0)
        goto fail;

    rs->opts = rocksdb_options_create();
    rocksdb_options_set_create_if_missing(rs->opts, 1);
    rocksdb_options_set_use_fsync(rs->opts, p->flush ? 1 : 0);
    /* RocksDB keeps 1000 info logs by default, a bit much. */
    rocksdb_options_set_keep_log_file_num(rs->opts, 10);
    rocksdb_options_set_compression(rs->opts, rocksdb_snappy_compression);
    /* Debian's RocksDB is built with assertions: a failing write to its own
     * LOG (full or read-only disk) aborts the process. Log only the header
     * unless the policy asks for more with rocks_params.log_level. */
    rocksdb_options_set_info_log_level(rs->opts, 5);
    rocksdb_options_set_log_file_time_to_roll(rs->opts, 86400);
    rocksdb_options_set_delete_obsolete_files_period_micros(rs->opts, 6ULL * 3600 * 1000000);
    /* Our default memtable is 16 MiB, not RocksDB's 64 MiB: a spool writes
     * each body once and reads it once, so a big memtable only costs
     * resident memory (up to max_write_buffer_number of them per spool)
     * and WAL to replay after a crash. rocks_params.write_buffer_size and
     * optimize_*_style_compaction still override it. */
    rocksdb_options_set_write_buffer_size(rs->opts, 16u << 20);
    rc = rparams_apply(p->rocks_params, rs->opts, &explicit_compression, err, errlen);
    if (rc < 0)
        goto fail;

    rs->db = rocksdb_open(rs->opts, p->path, &errp);
    if (errp != NULL && !explicit_compression && strstr(errp, "not linked") != NULL) {
        /* Snappy is the default only "if available". */
        rocksdb_free(errp);
        errp = NULL;
        rocksdb_options_set_compression(rs->opts, rocksdb_no_compression);
        rs->db = rocksdb_open(rs->opts, p->path, &errp);
    }
    if (errp != NULL) {
        snprintf(err, errlen, "spool %s: cannot open RocksDB at %s: %s", p->name, p->path, errp);
        rc = rocks_err_code(errp);
        if (rc == KERR_INVAL)
            rc = KERR_IO;
        rocksdb_free(errp);
        rs->db = NULL;
        goto fail;
    }

    rs->wo_sync = rocksdb_writeoptions_create();
    rocksdb_writeoptions_set_sync(rs->wo_sync, 1);
    rs->wo_nosync = rocksdb_writeoptions_create();
    rocksdb_writeoptions_set_sync(rs->wo_nosync, 0);
    rs->wo_nowal = rocksdb_writeoptions_create();
    rocksdb_writeoptions_set_sync(rs->wo_nowal, 0);
    rocksdb_writeoptions_disable_WAL(rs->wo_nowal, 1);
    rs->ro_get = rocksdb_readoptions_create();
    /* A load reads a message once per delivery attempt, typically hours
     * apart: caching its blocks only grows resident memory. */
    rocksdb_readoptions_set_fill_cache(rs->ro_get, 0);
    rs->ro_scan = rocksdb_readoptions_create();
    /* A start-up scan touches every meta entry once; keep it out of the
     * block cache that loads use. */
    rocksdb_readoptions_set_fill_cache(rs->ro_scan, 0);
    rs->wb = rocksdb_writebatch_create();
    *out = &rs->base;
    return 0;

fail:
    rocks_close(&rs->base);
    return rc;
}
