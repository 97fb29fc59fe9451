/* Tests of src/spool (facade, RocksDB and LocalDisk backends) against real
 * RocksDB databases and real files in a fresh mkdtemp directory per test. */
#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <setjmp.h>
#include <stddef.h>

#include <cmocka.h>

#include "core/kerr.h"
#include "spool/spool.h"

/* ---- helpers ---------------------------------------------------------- */

static uint64_t id_base;

static void test_id_init(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    id_base = (uint64_t)ts.tv_sec * 10000000u + (uint64_t)ts.tv_nsec / 100u;
}

/* Ids shaped like v1 UUIDs (time_low first, big-endian), unique within the
 * run, made here so these tests do not depend on core/spoolid.c. */
static void test_id(spoolid *id)
{
    static atomic_uint_fast64_t ctr;
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    uint64_t n = atomic_fetch_add(&ctr, 1);
    uint64_t t;

    pthread_once(&once, test_id_init);
    t = id_base + n * 37; /* spread over many aa/bb/cc/dd directories */
    id->b[0] = (uint8_t)(t >> 24);
    id->b[1] = (uint8_t)(t >> 16);
    id->b[2] = (uint8_t)(t >> 8);
    id->b[3] = (uint8_t)t;
    id->b[4] = (uint8_t)(t >> 40);
    id->b[5] = (uint8_t)(t >> 32);
    id->b[6] = (uint8_t)(0x10 | ((t >> 56) & 0x0f));
    id->b[7] = (uint8_t)(t >> 48);
    id->b[8] = (uint8_t)(0x80 | ((n >> 8) & 0x3f));
    id->b[9] = (uint8_t)n;
    for (int i = 10; i < 16; i++)
        id->b[i] = (uint8_t)(0x42 + i + (n >> (8 * (i - 8))));
}

static char *xstrdup_printf(const char *fmt, ...)
{
    va_list ap;
    char *s = NULL;
    va_start(ap, fmt);
    assert_true(vasprintf(&s, fmt, ap) >= 0);
    va_end(ap);
    return s;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

typedef struct fixture {
    char dir[64];
} fixture;

/* journal_size for the stores open_store() makes; NULL: the default. */
static const char *g_journal_size;

static int setup_dir(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    snprintf(f->dir, sizeof(f->dir), "/tmp/kumod-spool-XXXXXX");
    if (mkdtemp(f->dir) == NULL)
        return -1;
    *state = f;
    g_journal_size = NULL; /* a failed test may have left it set */
    return 0;
}

static int teardown_dir(void **state)
{
    fixture *f = *state;
    nftw(f->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(f);
    return 0;
}

/* commit_delay and commit_siblings for the stores open_store() makes;
 * NULL / 0: the defaults. */
static const char *g_commit_delay;
static int g_commit_siblings;

static int open_store(const char *dir, const char *name, spool_kind kind, bool flush,
                      spool_store **out, char *err, size_t errlen)
{
    char *path = xstrdup_printf("%s/%s", dir, name);
    json_t *j = json_pack("{s:s, s:s, s:s, s:b}", "name", name, "path", path, "kind",
                          spool_kind_name(kind), "flush", flush);
    spool_params p;
    int rc;

    if (kind == SPOOL_KIND_ROCKSDB)
        json_object_set_new(
            j, "rocks_params",
            json_pack("{s:i, s:s}", "increase_parallelism", 2, "compression_type", "Snappy"));
    if (g_commit_delay != NULL)
        json_object_set_new(j, "commit_delay", json_string(g_commit_delay));
    if (g_commit_siblings > 0)
        json_object_set_new(j, "commit_siblings", json_integer(g_commit_siblings));
    if (g_journal_size != NULL)
        json_object_set_new(j, "journal_size", json_string(g_journal_size));
    rc = spool_params_from_json(j, &p, err, errlen);
    assert_int_equal(rc, 0);
    rc = spool_store_open(&p, out, err, errlen);
    spool_params_fini(&p);
    json_decref(j);
    free(path);
    return rc;
}

static spool *open_spool(const char *dir, spool_kind kind, bool flush)
{
    spool_store *data, *meta;
    spool *sp;
    char err[256] = "";

    assert_int_equal(open_store(dir, "data", kind, flush, &data, err, sizeof(err)), 0);
    assert_int_equal(open_store(dir, "meta", kind, flush, &meta, err, sizeof(err)), 0);
    assert_int_equal(spool_new(data, meta, &sp), 0);
    return sp;
}

/* Counts callbacks still to come; optionally bounds how many are in flight. */
typedef struct waiter {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int pending;
    int errors;
    int last_err;
} waiter;

static void waiter_init(waiter *w)
{
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    w->pending = w->errors = w->last_err = 0;
}

static void waiter_fini(waiter *w)
{
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
}

/* Waits until fewer than max are pending, then counts one more. */
static void waiter_add(waiter *w, int max)
{
    pthread_mutex_lock(&w->mu);
    while (w->pending >= max)
        pthread_cond_wait(&w->cv, &w->mu);
    w->pending++;
    pthread_mutex_unlock(&w->mu);
}

static void waiter_done(waiter *w, int err)
{
    pthread_mutex_lock(&w->mu);
    w->pending--;
    if (err < 0) {
        w->errors++;
        w->last_err = err;
    }
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

static void waiter_wait(waiter *w)
{
    pthread_mutex_lock(&w->mu);
    while (w->pending > 0)
        pthread_cond_wait(&w->cv, &w->mu);
    pthread_mutex_unlock(&w->mu);
}

static void on_done(void *ud, int err)
{
    waiter_done(ud, err);
}

static char *fmt_buf(const char *prefix, int i, size_t *len)
{
    char *s = xstrdup_printf("%s-%d", prefix, i);
    *len = strlen(s);
    return s;
}

static void save_one(spool *sp, waiter *w, const spoolid *id, const char *meta, const char *data,
                     bool sync)
{
    waiter_add(w, 1 << 30);
    spool_save(sp, id, strdup(meta), strlen(meta), data ? strdup(data) : NULL,
               data ? strlen(data) : 0, sync, on_done, w);
}

/* save_one for the first save of a new message (spool_save_new). */
static void save_new_one(spool *sp, waiter *w, const spoolid *id, const char *meta,
                         const char *data, bool sync)
{
    waiter_add(w, 1 << 30);
    spool_save_new(sp, id, strdup(meta), strlen(meta), strdup(data), strlen(data), sync, on_done,
                   w);
}

typedef struct load_res {
    waiter w;
    int err;
    char *buf;
    size_t len;
} load_res;

static void on_load(void *ud, int err, char *buf_take, size_t len)
{
    load_res *r = ud;
    r->err = err;
    r->buf = buf_take;
    r->len = len;
    waiter_done(&r->w, 0);
}

/* Loads synchronously; returns the error, fills *out (malloc'd) on success. */
static int load_sync(spool *sp, const spoolid *id, bool want_data, char **out, size_t *len)
{
    load_res r;
    waiter_init(&r.w);
    r.buf = NULL;
    waiter_add(&r.w, 1);
    spool_load(sp, id, want_data, on_load, &r);
    waiter_wait(&r.w);
    waiter_fini(&r.w);
    *out = r.buf;
    *len = r.len;
    return r.err;
}

static void assert_loads(spool *sp, const spoolid *id, bool want_data, const char *expect)
{
    char *buf;
    size_t len;
    assert_int_equal(load_sync(sp, id, want_data, &buf, &len), 0);
    assert_int_equal(len, strlen(expect));
    assert_memory_equal(buf, expect, len);
    free(buf);
}

static void assert_absent(spool *sp, const spoolid *id, bool want_data)
{
    char *buf;
    size_t len;
    assert_int_equal(load_sync(sp, id, want_data, &buf, &len), KERR_NOTFOUND);
    assert_null(buf);
}

/* Enumeration result: every id seen and its meta. */
typedef struct seen {
    spoolid id;
    char *meta;
    int count;
} seen;

typedef struct enum_res {
    waiter w;
    seen *items;
    size_t n, cap;
    int err;
} enum_res;

static void on_each(void *ud, const spoolid *id, const char *meta, size_t len)
{
    enum_res *e = ud;
    if (e->n == e->cap) {
        e->cap = e->cap ? e->cap * 2 : 64;
        e->items = realloc(e->items, e->cap * sizeof(*e->items));
    }
    e->items[e->n].id = *id;
    e->items[e->n].meta = strndup(meta, len);
    e->items[e->n].count = 0;
    e->n++;
}

static void on_enum_done(void *ud, int err)
{
    enum_res *e = ud;
    e->err = err;
    waiter_done(&e->w, 0);
}

static void enumerate_sync(spool *sp, enum_res *e)
{
    memset(e, 0, sizeof(*e));
    waiter_init(&e->w);
    waiter_add(&e->w, 1);
    spool_enumerate(sp, on_each, on_enum_done, e);
    waiter_wait(&e->w);
    waiter_fini(&e->w);
    assert_int_equal(e->err, 0);
}

static void enum_res_fini(enum_res *e)
{
    for (size_t i = 0; i < e->n; i++)
        free(e->items[i].meta);
    free(e->items);
}

/* Asserts that e holds exactly ids[0..n) with metas "meta-<i>". */
static void assert_enum_exact(enum_res *e, const spoolid *ids, int n, const bool *gone)
{
    int expected = 0;
    for (int i = 0; i < n; i++) {
        bool found = false;
        char *want = xstrdup_printf("meta-%d", i);
        for (size_t j = 0; j < e->n; j++) {
            if (memcmp(e->items[j].id.b, ids[i].b, 16) != 0)
                continue;
            assert_false(found);
            found = true;
            e->items[j].count++;
            assert_string_equal(e->items[j].meta, want);
        }
        free(want);
        assert_int_equal(found, gone == NULL || !gone[i]);
        expected += gone == NULL || !gone[i];
    }
    for (size_t j = 0; j < e->n; j++)
        assert_int_equal(e->items[j].count, 1);
    assert_int_equal(e->n, (size_t)expected);
}

/* ---- parameters ------------------------------------------------------- */

typedef struct param_case {
    const char *json;
    int rc;
    const char *err_has; /* substring of the error when rc < 0 */
} param_case;

static void test_params_validation(void **state)
{
    (void)state;
    static const param_case cases[] = {
        {"{\"name\":\"data\",\"path\":\"/x\"}", 0, NULL},
        {"{\"name\":\"data\",\"path\":\"/x\",\"kind\":\"RocksDB\"}", 0, NULL},
        {"{\"name\":\"data\",\"path\":\"/x\",\"kind\":\"LocalDisk\"}", 0, NULL},
        {"{\"name\":\"data\",\"path\":\"/x\",\"kind\":\"rocksdb\"}", KERR_INVAL, "kind"},
        {"{\"name\":\"data\",\"path\":\"/x\",\"kind\":\"Sled\"}", KERR_INVAL, "\"Sled\""},
        {"{\"name\":\"data\",\"path\":\"/x\",\"kind\":3}", KERR_INVAL, "kind"},
        {"{\"name\":\"data\",\"path\":\"/x\",\"flsuh\":true}", KERR_INVAL, "\"flsuh\""},
        {"{\"name\":\"data\",\"path\":\"/x\",\"flush\":\"yes\"}", KERR_INVAL, "flush"},
        {"{\"path\":\"/x\"}", KERR_INVAL, "name"},
        {"{\"name\":\"data\"}", KERR_INVAL, "path"},
        {"{\"name\":\"\",\"path\":\"/x\"}", KERR_INVAL, "name"},
        {"{\"name\":\"data\",\"path\":\"/x\",\"store_deadline\":\"10 parsecs\"}", KERR_INVAL,
         "store_deadline"},
        {"{\"name\":\"data\",\"path\":\"/x\",\"error_latch_duration\":true}", KERR_INVAL,
         "error_latch_duration"},
        {"{\"name\":\"data\",\"path\":\"/x\",\"store_deadline\":-1}", KERR_INVAL, "store_deadline"},
        {"{\"name\":\"data\",\"path\":\"/x\",\"min_free_space\":\"200%\"}", KERR_INVAL,
         "min_free_space"},
        {"{\"name\":\"data\",\"path\":\"/x\",\"min_free_inodes\":5000}", KERR_INVAL,
         "min_free_inodes"},
        {"{\"name\":\"data\",\"path\":\"/x\",\"rocks_params\":{\"bogus_knob\":1}}", KERR_INVAL,
         "\"bogus_knob\""},
        {"{\"name\":\"data\",\"path\":\"/x\",\"rocks_params\":{\"compression_type\":\"Brotli\"}}",
         KERR_INVAL, "compression_type"},
        {"{\"name\":\"data\",\"path\":\"/x\",\"rocks_params\":{\"paranoid_checks\":1}}", KERR_INVAL,
         "paranoid_checks"},
        {"{\"name\":\"data\",\"path\":\"/x\",\"rocks_params\":{\"increase_parallelism\":-4}}",
         KERR_INVAL, "increase_parallelism"},
        {"{\"name\":\"data\",\"path\":\"/x\",\"rocks_params\":{\"log_file_time_to_roll\":\"x\"}}",
         KERR_INVAL, "log_file_time_to_roll"},
        {"{\"name\":\"data\",\"path\":\"/x\",\"rocks_params\":[1]}", KERR_INVAL, "rocks_params"},
        {"{\"name\":\"data\",\"path\":\"/x\",\"rocks_params\":{\"increase_parallelism\":4,"
         "\"optimize_level_style_compaction\":67108864,\"paranoid_checks\":true,"
         "\"compression_type\":\"Zstd\",\"write_buffer_size\":33554432,\"max_open_files\":-1,"
         "\"level0_stop_writes_trigger\":40,\"log_level\":\"Warn\","
         "\"obsolete_files_period\":\"1h\",\"limit_concurrent_stores\":8}}",
         0, NULL},
        {"[]", KERR_INVAL, "table"},
        {"{\"name\":\"data\",\"path\":\"/x\",\"commit_delay\":\"1s\"}", KERR_INVAL,
         "commit_delay"},
        {"{\"name\":\"data\",\"path\":\"/x\",\"commit_delay\":\"soon\"}", KERR_INVAL,
         "commit_delay"},
        {"{\"name\":\"data\",\"path\":\"/x\",\"commit_delay\":\"100ms\"}", 0, NULL},
        {"{\"name\":\"data\",\"path\":\"/x\",\"commit_delay\":0}", 0, NULL},
        {"{\"name\":\"data\",\"path\":\"/x\",\"commit_siblings\":0}", KERR_INVAL,
         "commit_siblings"},
        {"{\"name\":\"data\",\"path\":\"/x\",\"commit_siblings\":\"4\"}", KERR_INVAL,
         "commit_siblings"},
        {"{\"name\":\"data\",\"path\":\"/x\",\"commit_siblings\":1}", 0, NULL},
        {"{\"name\":\"data\",\"path\":\"/x\",\"journal_size\":\"256MiB\"}", 0, NULL},
        {"{\"name\":\"data\",\"path\":\"/x\",\"journal_size\":0}", 0, NULL},
        {"{\"name\":\"data\",\"path\":\"/x\",\"journal_size\":\"0\"}", 0, NULL},
        {"{\"name\":\"data\",\"path\":\"/x\",\"journal_size\":\"64k\"}", KERR_INVAL,
         "journal_size"},
        {"{\"name\":\"data\",\"path\":\"/x\",\"journal_size\":\"lots\"}", KERR_INVAL,
         "journal_size"},
        {"{\"name\":\"data\",\"path\":\"/x\",\"journal_size\":-1}", KERR_INVAL,
         "journal_size"},
        {"{\"name\":\"data\",\"path\":\"/x\",\"journal_size\":\"17GiB\"}", KERR_INVAL,
         "journal_size"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        json_error_t jerr;
        json_t *j = json_loads(cases[i].json, 0, &jerr);
        spool_params p;
        char err[256] = "";
        int rc;

        assert_non_null(j);
        rc = spool_params_from_json(j, &p, err, sizeof(err));
        if (rc != cases[i].rc)
            fail_msg("case %zu (%s): rc %d, want %d (%s)", i, cases[i].json, rc, cases[i].rc, err);
        if (cases[i].err_has != NULL && strstr(err, cases[i].err_has) == NULL)
            fail_msg("case %zu: error \"%s\" does not name %s", i, err, cases[i].err_has);
        if (rc == 0)
            spool_params_fini(&p);
        json_decref(j);
    }
}

static void test_params_values(void **state)
{
    (void)state;
    json_t *j =
        json_pack("{s:s, s:s, s:s, s:b, s:s, s:s, s:s, s:s, s:b, s:s}", "name", "meta", "path",
                  "/var/spool/kumo/meta", "kind", "LocalDisk", "flush", 0, "store_deadline",
                  "2s 500ms", "error_latch_duration", "1m", "error_unlatch_duration", "1 hour",
                  "min_free_space", "5%", "allow_error_unlatch", 0, "min_free_inodes", "20%");
    spool_params p;
    char err[256] = "";

    assert_int_equal(spool_params_from_json(j, &p, err, sizeof(err)), 0);
    assert_string_equal(p.name, "meta");
    assert_string_equal(p.path, "/var/spool/kumo/meta");
    assert_int_equal(p.kind, SPOOL_KIND_LOCALDISK);
    assert_false(p.flush);
    assert_int_equal(p.store_deadline_ns, 2500000000LL);
    assert_int_equal(p.error_latch_ns, 60000000000LL);
    assert_int_equal(p.error_unlatch_ns, 3600000000000LL);
    assert_true(p.min_free_space_pct == 5.0);
    assert_true(p.min_free_inodes_pct == 20.0);
    assert_false(p.allow_error_unlatch);
    assert_null(p.rocks_params);
    spool_params_fini(&p);
    json_decref(j);

    /* Defaults: RocksDB, flush on (durable by default), KumoMTA's timings. */
    j = json_pack("{s:s, s:s, s:i}", "name", "data", "path", "/d", "store_deadline", 7);
    assert_int_equal(spool_params_from_json(j, &p, err, sizeof(err)), 0);
    assert_int_equal(p.kind, SPOOL_KIND_ROCKSDB);
    assert_true(p.flush);
    assert_int_equal(p.store_deadline_ns, 7000000000LL);
    assert_int_equal(p.error_latch_ns, 15000000000LL);
    assert_int_equal(p.error_unlatch_ns, 300000000000LL);
    assert_true(p.min_free_space_pct == 10.0);
    assert_true(p.min_free_inodes_pct == 10.0);
    assert_true(p.allow_error_unlatch);
    assert_int_equal(p.commit_delay_ns, 300000);
    assert_int_equal(p.commit_siblings, 4);
    spool_params_fini(&p);
    json_decref(j);

    /* issue 21: KumoMTA documents these among the rocks_params */
    j = json_pack("{s:s, s:s, s:{s:s, s:s, s:s, s:b}}", "name", "data", "path", "/d",
                  "rocks_params", "error_latch_duration", "5s", "error_unlatch_duration", "2m",
                  "store_deadline", "45s", "allow_error_unlatch", 0);
    assert_int_equal(spool_params_from_json(j, &p, err, sizeof(err)), 0);
    assert_int_equal(p.error_latch_ns, 5000000000LL);
    assert_int_equal(p.error_unlatch_ns, 120000000000LL);
    assert_int_equal(p.store_deadline_ns, 45000000000LL);
    assert_false(p.allow_error_unlatch);
    spool_params_fini(&p);
    json_decref(j);
    j = json_pack("{s:s, s:s, s:{s:s}}", "name", "data", "path", "/d", "rocks_params",
                  "error_latch_duration", "soon");
    assert_int_equal(spool_params_from_json(j, &p, err, sizeof(err)), KERR_INVAL);
    assert_non_null(strstr(err, "error_latch_duration"));
    json_decref(j);

    j = json_pack("{s:s, s:s, s:s, s:i}", "name", "data", "path", "/d", "commit_delay", "250us",
                  "commit_siblings", 2);
    assert_int_equal(spool_params_from_json(j, &p, err, sizeof(err)), 0);
    assert_int_equal(p.commit_delay_ns, 250000);
    assert_int_equal(p.commit_siblings, 2);
    spool_params_fini(&p);
    json_decref(j);

    assert_string_equal(spool_kind_name(SPOOL_KIND_ROCKSDB), "RocksDB");
    assert_string_equal(spool_kind_name(SPOOL_KIND_LOCALDISK), "LocalDisk");
}

/* ---- round trips ------------------------------------------------------ */

static void round_trip(const char *dir, spool_kind kind)
{
    spool *sp = open_spool(dir, kind, true);
    spoolid ids[20], missing;
    waiter w;

    waiter_init(&w);
    for (int i = 0; i < 20; i++) {
        char *meta = xstrdup_printf("meta-%d", i);
        char *data = xstrdup_printf("Subject: %d\r\n\r\nbody of message %d\r\n", i, i);
        test_id(&ids[i]);
        /* Every fourth save is meta-only (a requeue rewrites just meta). */
        save_one(sp, &w, &ids[i], meta, i % 4 == 3 ? NULL : data, i % 2 == 0);
        free(meta);
        free(data);
    }
    waiter_wait(&w);
    assert_int_equal(w.errors, 0);

    for (int i = 0; i < 20; i++) {
        char *meta = xstrdup_printf("meta-%d", i);
        char *data = xstrdup_printf("Subject: %d\r\n\r\nbody of message %d\r\n", i, i);
        assert_loads(sp, &ids[i], false, meta);
        if (i % 4 == 3)
            assert_absent(sp, &ids[i], true);
        else
            assert_loads(sp, &ids[i], true, data);
        free(meta);
        free(data);
    }
    test_id(&missing);
    assert_absent(sp, &missing, true);
    assert_absent(sp, &missing, false);

    /* Overwriting meta keeps data; an empty data half is still data. */
    save_one(sp, &w, &ids[0], "meta-0-v2", NULL, true);
    save_one(sp, &w, &ids[1], "meta-1", "", true);
    waiter_wait(&w);
    assert_int_equal(w.errors, 0);
    assert_loads(sp, &ids[0], false, "meta-0-v2");
    assert_loads(sp, &ids[0], true, "Subject: 0\r\n\r\nbody of message 0\r\n");
    assert_loads(sp, &ids[1], true, "");

    spool_stats st;
    spool_get_stats(sp, &st);
    assert_int_equal(st.saves, 22);
    assert_int_equal(st.errors, 0);
    assert_true(st.loads >= 42);
    spool_free(sp);
    waiter_fini(&w);
}

static void test_round_trip_rocks(void **state)
{
    round_trip(((fixture *)*state)->dir, SPOOL_KIND_ROCKSDB);
}

static void test_round_trip_local_disk(void **state)
{
    fixture *f = *state;
    spoolid id;
    waiter w;
    char hex[64], *path, pid[32];
    struct stat sb;
    FILE *fp;

    round_trip(f->dir, SPOOL_KIND_LOCALDISK);

    /* KumoMTA's layout: data/aa/bb/cc/dd/<24 hex>, no temp left in new/. */
    spool *sp = open_spool(f->dir, SPOOL_KIND_LOCALDISK, false);
    waiter_init(&w);
    test_id(&id);
    save_one(sp, &w, &id, "m", "d", false);
    waiter_wait(&w);
    for (int i = 0; i < 16; i++)
        sprintf(hex + 2 * i, "%02x", id.b[i]);
    path = xstrdup_printf("%s/data/data/%.2s/%.2s/%.2s/%.2s/%s", f->dir, hex, hex + 2, hex + 4,
                          hex + 6, hex + 8);
    assert_int_equal(stat(path, &sb), 0);
    assert_int_equal(sb.st_size, 1);
    free(path);
    path = xstrdup_printf("%s/meta/new", f->dir);
    DIR *d = opendir(path);
    struct dirent *de;
    assert_non_null(d);
    while ((de = readdir(d)) != NULL)
        assert_true(de->d_name[0] == '.');
    closedir(d);
    free(path);
    path = xstrdup_printf("%s/meta/lock", f->dir);
    fp = fopen(path, "r");
    assert_non_null(fp);
    assert_non_null(fgets(pid, sizeof(pid), fp));
    fclose(fp);
    assert_int_equal(atol(pid), (long)getpid());
    assert_int_equal(stat(path, &sb), 0);
    assert_true(sb.st_mode & S_ISVTX);
    free(path);

    /* Removing prunes the now-empty directories. */
    spool_remove(sp, &id, on_done, &w);
    waiter_add(&w, 1 << 30);
    waiter_wait(&w);
    assert_int_equal(w.errors, 0);
    path =
        xstrdup_printf("%s/data/data/%.2s/%.2s/%.2s/%.2s", f->dir, hex, hex + 2, hex + 4, hex + 6);
    assert_int_equal(stat(path, &sb), -1);
    free(path);
    spool_free(sp);
    waiter_fini(&w);
}

/* ---- remove and enumerate --------------------------------------------- */

static void remove_and_enumerate(const char *dir, spool_kind kind)
{
    spool *sp = open_spool(dir, kind, false);
    enum { N = 60 };
    spoolid ids[N];
    bool gone[N] = {0};
    enum_res e;
    waiter w;
    uint64_t nremoved = 0;

    waiter_init(&w);
    for (int i = 0; i < N; i++) {
        char *meta = xstrdup_printf("meta-%d", i);
        char *data = xstrdup_printf("DATA %d, not meta", i);
        test_id(&ids[i]);
        save_one(sp, &w, &ids[i], meta, data, i % 3 == 0);
        free(meta);
        free(data);
    }
    waiter_wait(&w);
    assert_int_equal(w.errors, 0);

    /* Enumeration yields exactly the saved set, and metas only. */
    enumerate_sync(sp, &e);
    assert_enum_exact(&e, ids, N, NULL);
    enum_res_fini(&e);

    for (int i = 0; i < N; i += 4) {
        waiter_add(&w, 1 << 30);
        spool_remove(sp, &ids[i], on_done, &w);
        gone[i] = true;
        nremoved++;
    }
    /* Removing something absent is not an error (it may already be gone). */
    spoolid never;
    test_id(&never);
    waiter_add(&w, 1 << 30);
    spool_remove(sp, &never, on_done, &w);
    nremoved++;
    waiter_wait(&w);
    assert_int_equal(w.errors, 0);
    for (int i = 0; i < N; i++) {
        if (!gone[i])
            continue;
        assert_absent(sp, &ids[i], true);
        assert_absent(sp, &ids[i], false);
    }
    enumerate_sync(sp, &e);
    assert_enum_exact(&e, ids, N, gone);
    enum_res_fini(&e);

    /* Save then remove then save again of one id within one group. */
    waiter_add(&w, 1 << 30);
    spool_save(sp, &ids[1], strdup("meta-x"), 6, strdup("x"), 1, false, on_done, &w);
    waiter_add(&w, 1 << 30);
    spool_remove(sp, &ids[1], on_done, &w);
    nremoved++;
    waiter_add(&w, 1 << 30);
    spool_save(sp, &ids[1], strdup("meta-1"), 6, strdup("DATA 1, not meta"), 16, true, on_done, &w);
    waiter_wait(&w);
    assert_int_equal(w.errors, 0);
    assert_loads(sp, &ids[1], false, "meta-1");
    assert_loads(sp, &ids[1], true, "DATA 1, not meta");

    spool_stats st;
    spool_get_stats(sp, &st);
    assert_int_equal(st.removes, nremoved);
    assert_int_equal(st.errors, 0);
    spool_free(sp);
    waiter_fini(&w);
}

static void test_remove_enumerate_rocks(void **state)
{
    remove_and_enumerate(((fixture *)*state)->dir, SPOOL_KIND_ROCKSDB);
}

static void test_remove_enumerate_local_disk(void **state)
{
    remove_and_enumerate(((fixture *)*state)->dir, SPOOL_KIND_LOCALDISK);
}

/* ---- reopen and lock -------------------------------------------------- */

static void reopen(const char *dir, spool_kind kind)
{
    enum { N = 40 };
    spoolid ids[N];
    enum_res e;
    waiter w;
    spool *sp = open_spool(dir, kind, true);

    waiter_init(&w);
    for (int i = 0; i < N; i++) {
        char *meta = xstrdup_printf("meta-%d", i);
        char *data = xstrdup_printf("data-%d", i);
        test_id(&ids[i]);
        save_one(sp, &w, &ids[i], meta, data, true);
        free(meta);
        free(data);
    }
    /* No wait: spool_free must complete what is queued. */
    spool_free(sp);
    waiter_wait(&w);
    assert_int_equal(w.errors, 0);

    sp = open_spool(dir, kind, true);
    enumerate_sync(sp, &e);
    assert_enum_exact(&e, ids, N, NULL);
    enum_res_fini(&e);
    for (int i = 0; i < N; i++) {
        char *data = xstrdup_printf("data-%d", i);
        assert_loads(sp, &ids[i], true, data);
        free(data);
    }
    spool_free(sp);
    waiter_fini(&w);
}

static void test_reopen_rocks(void **state)
{
    reopen(((fixture *)*state)->dir, SPOOL_KIND_ROCKSDB);
}

static void test_reopen_local_disk(void **state)
{
    reopen(((fixture *)*state)->dir, SPOOL_KIND_LOCALDISK);
}

static void lock_excludes(const char *dir, spool_kind kind)
{
    spool_store *a, *b = NULL;
    char err[512] = "";

    assert_int_equal(open_store(dir, "data", kind, true, &a, err, sizeof(err)), 0);
    assert_true(open_store(dir, "data", kind, true, &b, err, sizeof(err)) < 0);
    assert_null(b);
    assert_true(strlen(err) > 0);
    assert_non_null(strstr(err, "data"));
    if (kind == SPOOL_KIND_LOCALDISK) {
        char pid[32];
        snprintf(pid, sizeof(pid), "pid %ld", (long)getpid());
        assert_non_null(strstr(err, pid));
    }
    spool_store_close(a);
    /* Closing releases the lock. */
    assert_int_equal(open_store(dir, "data", kind, true, &b, err, sizeof(err)), 0);
    spool_store_close(b);
}

static void test_lock_rocks(void **state)
{
    lock_excludes(((fixture *)*state)->dir, SPOOL_KIND_ROCKSDB);
}

static void test_lock_local_disk(void **state)
{
    lock_excludes(((fixture *)*state)->dir, SPOOL_KIND_LOCALDISK);
}

/* ---- concurrency and group commit ------------------------------------- */

typedef struct saver {
    spool *sp;
    int count;
    int window; /* saves in flight per thread, like sessions on a reactor */
    size_t size;
    waiter w;
} saver;

static void *saver_main(void *arg)
{
    saver *s = arg;
    for (int i = 0; i < s->count; i++) {
        spoolid id;
        size_t mlen;
        char *meta =
            fmt_buf("{\"sender\":\"a@example.com\",\"recipient\":\"b@example.com\"}", i, &mlen);
        char *data = malloc(s->size);
        memset(data, 'a' + i % 26, s->size);
        test_id(&id);
        waiter_add(&s->w, s->window);
        spool_save(s->sp, &id, meta, mlen, data, s->size, true, on_done, &s->w);
    }
    waiter_wait(&s->w);
    return NULL;
}

/* Runs nthreads savers; returns elapsed seconds. */
static double run_savers(spool *sp, int nthreads, int total, int window, size_t size)
{
    pthread_t th[16];
    saver sv[16];
    struct timespec t0, t1;
    int errors = 0;

    assert_true(nthreads <= 16);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < nthreads; i++) {
        sv[i] = (saver){.sp = sp, .count = total / nthreads, .window = window, .size = size};
        waiter_init(&sv[i].w);
        assert_int_equal(pthread_create(&th[i], NULL, saver_main, &sv[i]), 0);
    }
    for (int i = 0; i < nthreads; i++) {
        pthread_join(th[i], NULL);
        errors += sv[i].w.errors;
        waiter_fini(&sv[i].w);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    assert_int_equal(errors, 0);
    return (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
}

static void group_commit(const char *dir, spool_kind kind)
{
    spool *sp = open_spool(dir, kind, false);
    spool_stats st;
    enum_res e;

    run_savers(sp, 4, 2000, 16, 1000);
    spool_get_stats(sp, &st);
    assert_int_equal(st.saves, 2000);
    assert_int_equal(st.synced_saves, 2000);
    assert_true(st.syncs >= 1);
    /* Several saves per sync: with 64 saves in flight the writer finds a
     * crowd queued behind each fsync. */
    if (st.synced_saves < 2 * st.syncs)
        fail_msg("only %.2f saves per sync (%llu syncs)", (double)st.synced_saves / st.syncs,
                 (unsigned long long)st.syncs);
    enumerate_sync(sp, &e);
    assert_int_equal(e.n, 2000);
    enum_res_fini(&e);
    spool_free(sp);
}

static void test_group_commit_rocks(void **state)
{
    group_commit(((fixture *)*state)->dir, SPOOL_KIND_ROCKSDB);
}

static void test_group_commit_local_disk(void **state)
{
    group_commit(((fixture *)*state)->dir, SPOOL_KIND_LOCALDISK);
}

/* commit_delay: a save with fewer than commit_siblings (here 2) others
 * announced commits at once, alone; a save made while two are announced
 * (spool_expect_save) waits, and the next one shares its sync. The second
 * save comes 5 ms after the first, the window is 80 ms. */
static void commit_delay(const char *dir, spool_kind kind)
{
    spool_stats st;
    waiter w;
    spoolid a, b, c;
    struct timespec five_ms = {0, 5 * 1000 * 1000};

    g_commit_delay = "80ms";
    g_commit_siblings = 2;
    spool *sp = open_spool(dir, kind, true);
    g_commit_delay = NULL;
    g_commit_siblings = 0;
    waiter_init(&w);
    test_id(&a);
    test_id(&b);
    test_id(&c);

    spool_expect_save(1); /* one sibling: below the threshold */
    save_one(sp, &w, &a, "{\"m\":1}", "one", true);
    waiter_wait(&w);
    spool_get_stats(sp, &st);
    assert_int_equal(st.syncs, 1);
    assert_int_equal(st.delayed_groups, 0);

    spool_expect_save(1); /* two */
    save_one(sp, &w, &b, "{\"m\":2}", "two", true);
    nanosleep(&five_ms, NULL);
    save_one(sp, &w, &c, "{\"m\":3}", "three", true);
    spool_expect_save(-2);
    waiter_wait(&w);
    assert_int_equal(w.errors, 0);
    spool_get_stats(sp, &st);
    assert_int_equal(st.synced_saves, 3);
    assert_int_equal(st.delayed_groups, 1);
    if (st.syncs != 2)
        fail_msg("%llu syncs for three saves, want 2 (the last two in one group)",
                 (unsigned long long)st.syncs);
    waiter_fini(&w);
    spool_free(sp);
}

/* spool_save_new_lazy: alone, it does not wake the writer and goes after
 * SPOOL_REMOVE_DELAY_MS; followed by a synced save it joins that save's
 * group (and so its sync); it can be loaded back either way. */
static void lazy_saves(const char *dir, spool_kind kind)
{
    spool_stats st;
    waiter w;
    spoolid a, b, c;
    spool *sp = open_spool(dir, kind, true);
    waiter_init(&w);
    test_id(&a);
    test_id(&b);
    test_id(&c);

    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    waiter_add(&w, 1 << 30);
    spool_save_new_lazy(sp, &a, strdup("{\"lazy\":1}"), 10, strdup("alone"), 5, on_done, &w);
    waiter_wait(&w);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
    spool_get_stats(sp, &st);
    assert_int_equal(w.errors, 0);
    assert_int_equal(st.saves, 1);
    if (ms < SPOOL_REMOVE_DELAY_MS * 0.5)
        fail_msg("a lazy save alone completed after %.1f ms: it woke the writer", ms);

    /* a lazy save, then an urgent synced one: one group, both synced */
    uint64_t groups0 = st.groups;
    waiter_add(&w, 1 << 30);
    spool_save_new_lazy(sp, &b, strdup("{\"lazy\":2}"), 10, strdup("rides"), 5, on_done, &w);
    save_new_one(sp, &w, &c, "{\"urgent\":1}", "urgent", true);
    waiter_wait(&w);
    assert_int_equal(w.errors, 0);
    spool_get_stats(sp, &st);
    assert_int_equal(st.saves, 3);
    assert_int_equal(st.groups - groups0, 1);

    assert_loads(sp, &a, true, "alone");
    assert_loads(sp, &b, true, "rides");
    assert_loads(sp, &b, false, "{\"lazy\":2}");
    waiter_fini(&w);
    spool_free(sp);
}

static void test_lazy_saves_rocks(void **state)
{
    lazy_saves(((fixture *)*state)->dir, SPOOL_KIND_ROCKSDB);
}

static void test_lazy_saves_local_disk(void **state)
{
    lazy_saves(((fixture *)*state)->dir, SPOOL_KIND_LOCALDISK);
}

static void test_commit_delay_rocks(void **state)
{
    commit_delay(((fixture *)*state)->dir, SPOOL_KIND_ROCKSDB);
}

static void test_commit_delay_local_disk(void **state)
{
    commit_delay(((fixture *)*state)->dir, SPOOL_KIND_LOCALDISK);
}

/* Not a pass/fail test: prints the throughput of synced 5 KB saves. */
static void bench(const char *dir, spool_kind kind, int total, int window)
{
    enum { THREADS = 8 };
    spool *sp = open_spool(dir, kind, true);
    spool_stats st;
    double secs = run_savers(sp, THREADS, total, window, 5 * 1024);

    spool_get_stats(sp, &st);
    assert_int_equal(st.saves, (uint64_t)total);
    printf("[ BENCH    ] %s: %d x 5KB synced saves from %d threads (%d in flight each): "
           "%.0f saves/s, %llu syncs, %.1f saves per sync\n",
           spool_kind_name(kind), total, THREADS, window, total / secs,
           (unsigned long long)st.syncs, st.syncs ? (double)st.synced_saves / st.syncs : 0.0);
    spool_free(sp);
}

/* ---- the journal ----------------------------------------------------- */

static void copy_file(const char *from, const char *to)
{
    FILE *in = fopen(from, "rb"), *out = fopen(to, "wb");
    char buf[65536];
    size_t n;
    assert_non_null(in);
    assert_non_null(out);
    while ((n = fread(buf, 1, sizeof(buf), in)) > 0)
        assert_int_equal(fwrite(buf, 1, n, out), n);
    fclose(in);
    assert_int_equal(fclose(out), 0);
}

static void rm_tree(const char *path)
{
    assert_int_equal(nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS), 0);
}

/* Closes sp as a power loss would leave it: the journal as it was while
 * the spool ran, the stores without anything written since it opened (here
 * all of it: the test spools are fresh). */
static void close_as_after_power_loss(spool *sp, const char *dir)
{
    char *jpath = xstrdup_printf("%s/data/kumod-journal", dir);
    char *copy = xstrdup_printf("%s/journal.copy", dir);
    char *ddir = xstrdup_printf("%s/data", dir), *mdir = xstrdup_printf("%s/meta", dir);
    copy_file(jpath, copy);
    spool_free(sp);
    rm_tree(ddir);
    rm_tree(mdir);
    assert_int_equal(mkdir(ddir, 0755), 0);
    copy_file(copy, jpath);
    free(jpath);
    free(copy);
    free(ddir);
    free(mdir);
}

/* A power loss that takes every store write since the journal's last
 * checkpoint: the stores are wiped and the journal, as it was after the
 * acknowledged saves and removes, is put back. Opening the spool must
 * replay it: the saves (one meta rewritten), minus the removes. */
static void test_journal_replays_lost_store_writes(void **state)
{
    enum { N = 30, GONE = 10 }; /* "meta-10" below */
    const char *dir = ((fixture *)*state)->dir;
    spoolid ids[N];
    bool gone[N] = {0};
    enum_res e;
    waiter w;
    spool *sp = open_spool(dir, SPOOL_KIND_ROCKSDB, true);

    waiter_init(&w);
    for (int i = 0; i < N; i++) {
        /* ids[GONE]'s meta is rewritten below (a meta-only save) */
        char *meta = i == GONE ? strdup("meta-stale") : xstrdup_printf("meta-%d", i);
        char *data = xstrdup_printf("data-%d", i);
        test_id(&ids[i]);
        save_one(sp, &w, &ids[i], meta, data, true);
        free(meta);
        free(data);
    }
    waiter_wait(&w);
    for (int i = 0; i < GONE; i++) {
        waiter_add(&w, 1 << 30);
        spool_remove(sp, &ids[i], on_done, &w);
        gone[i] = true;
    }
    save_one(sp, &w, &ids[GONE], "meta-10", NULL, true); /* meta only */
    waiter_wait(&w);
    assert_int_equal(w.errors, 0);
    close_as_after_power_loss(sp, dir);

    for (int round = 0; round < 2; round++) {
        /* Round 2: the replay was checkpointed; opening again changes nothing. */
        sp = open_spool(dir, SPOOL_KIND_ROCKSDB, true);
        enumerate_sync(sp, &e);
        assert_enum_exact(&e, ids, N, gone);
        enum_res_fini(&e);
        assert_loads(sp, &ids[GONE], false, "meta-10");
        for (int i = 0; i < N; i++) {
            char *data = xstrdup_printf("data-%d", i);
            if (gone[i])
                assert_absent(sp, &ids[i], true);
            else
                assert_loads(sp, &ids[i], true, data);
            free(data);
        }
        spool_free(sp);
    }
    waiter_fini(&w);
}

/* journal_size = 0: no journal file; and one left by an earlier run is
 * replayed, then removed. */
static void test_journal_off(void **state)
{
    const char *dir = ((fixture *)*state)->dir;
    char *jpath = xstrdup_printf("%s/data/kumod-journal", dir);
    spoolid id;
    enum_res e;
    waiter w;
    struct stat st;
    spool *sp = open_spool(dir, SPOOL_KIND_ROCKSDB, true);

    waiter_init(&w);
    test_id(&id);
    save_one(sp, &w, &id, "meta-0", "d", true);
    waiter_wait(&w);
    close_as_after_power_loss(sp, dir);

    g_journal_size = "0";
    sp = open_spool(dir, SPOOL_KIND_ROCKSDB, true);
    assert_int_equal(stat(jpath, &st), -1);
    enumerate_sync(sp, &e);
    assert_enum_exact(&e, &id, 1, NULL);
    enum_res_fini(&e);
    assert_loads(sp, &id, true, "d");
    spool_free(sp);
    sp = open_spool(dir, SPOOL_KIND_ROCKSDB, true);
    assert_int_equal(stat(jpath, &st), -1);
    assert_loads(sp, &id, true, "d");
    spool_free(sp);
    g_journal_size = NULL;
    waiter_fini(&w);
    free(jpath);
}

/* A damaged journal stops the start with an error instead of dropping what
 * it may hold. */
static void test_journal_damaged_refuses_start(void **state)
{
    const char *dir = ((fixture *)*state)->dir;
    char *jpath = xstrdup_printf("%s/data/kumod-journal", dir);
    spool_store *data, *meta;
    spool *sp = open_spool(dir, SPOOL_KIND_ROCKSDB, true);
    char err[256];
    spool_free(sp);

    FILE *f = fopen(jpath, "r+b");
    assert_non_null(f);
    char junk[1024];
    memset(junk, 0x5a, sizeof(junk));
    assert_int_equal(fwrite(junk, 1, sizeof(junk), f), sizeof(junk));
    fclose(f);
    assert_int_equal(open_store(dir, "data", SPOOL_KIND_ROCKSDB, true, &data, err, sizeof(err)), 0);
    assert_int_equal(open_store(dir, "meta", SPOOL_KIND_ROCKSDB, true, &meta, err, sizeof(err)), 0);
    assert_true(spool_new(data, meta, &sp) < 0);
    free(jpath);
}

/* ---- a crash (kill -9) with the stores' WALs skipped ------------------ */

enum { CRASH_N = 200, CRASH_REMOVED = 50, CRASH_BIG = 3, CRASH_DATA = 4000 };

/* The body of message i: CRASH_DATA bytes (big ones: 400 KB) derived from i. */
static char *crash_body(int i, size_t *len)
{
    *len = i >= 1000 ? 400 * 1000 : CRASH_DATA;
    char *b = malloc(*len + 1);
    assert_non_null(b);
    for (size_t k = 0; k < *len; k++)
        b[k] = (char)('a' + (i * 7 + (int)k) % 26);
    b[*len] = 0;
    return b;
}

/* Runs in a fresh process (the test binary re-executed, so RocksDB's
 * threads are its own): CRASH_N acknowledged saves, CRASH_REMOVED of them
 * removed, with "big" also CRASH_BIG saves too large for a 1 MiB journal
 * (they go through the WALs), then SIGKILL: whatever sits in memtables is
 * lost, as in a crash. */
static int crash_child(const char *dir, const char *mode)
{
    bool big = strcmp(mode, "big") == 0;
    if (big)
        g_journal_size = "1MiB";
    spool *sp = open_spool(dir, SPOOL_KIND_ROCKSDB, true);
    spoolid ids[CRASH_N];
    waiter w;
    waiter_init(&w);
    for (int i = 0; i < CRASH_N; i++) {
        size_t len;
        char *data = crash_body(i, &len);
        char *meta = xstrdup_printf("crash-%d", i);
        test_id(&ids[i]);
        if (i % 2 == 0) /* half of them as new messages: the journal's pending set drops those removed */
            save_new_one(sp, &w, &ids[i], meta, data, true);
        else
            save_one(sp, &w, &ids[i], meta, data, true);
        free(meta);
        free(data);
        if (big && i == CRASH_N / 2)
            for (int b = 0; b < CRASH_BIG; b++) {
                spoolid id;
                data = crash_body(1000 + b, &len);
                meta = xstrdup_printf("crash-%d", 1000 + b);
                test_id(&id);
                save_one(sp, &w, &id, meta, data, true);
                free(meta);
                free(data);
            }
    }
    waiter_wait(&w);
    for (int i = 0; i < CRASH_REMOVED; i++) {
        waiter_add(&w, 1 << 30);
        spool_remove(sp, &ids[i], on_done, &w);
    }
    waiter_wait(&w);
    if (w.errors != 0)
        return 3;
    kill(getpid(), SIGKILL);
    return 4;
}

static const char *g_self; /* argv[0]: the crash child re-executes it */

static off_t wal_bytes(const char *dir)
{
    off_t total = 0;
    DIR *d = opendir(dir);
    assert_non_null(d);
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        size_t l = strlen(e->d_name);
        if (l > 4 && strcmp(e->d_name + l - 4, ".log") == 0) {
            char *p = xstrdup_printf("%s/%s", dir, e->d_name);
            struct stat st;
            if (stat(p, &st) == 0)
                total += st.st_size;
            free(p);
        }
    }
    closedir(d);
    return total;
}

static void crash_and_check(const char *dir, const char *mode)
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        execl(g_self, g_self, "--crash-child", dir, mode, (char *)NULL);
        _exit(127);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);

    bool big = strcmp(mode, "big") == 0;
    char *ddir = xstrdup_printf("%s/data", dir);
    if (!big) /* the bodies never went through the data store's WAL */
        assert_true(wal_bytes(ddir) < (off_t)CRASH_N * CRASH_DATA / 10);
    free(ddir);

    if (big)
        g_journal_size = "1MiB";
    spool *sp = open_spool(dir, SPOOL_KIND_ROCKSDB, true);
    enum_res e;
    enumerate_sync(sp, &e);
    size_t want = CRASH_N - CRASH_REMOVED + (big ? CRASH_BIG : 0);
    assert_int_equal(e.n, want);
    for (size_t j = 0; j < e.n; j++) {
        int i = -1;
        assert_int_equal(sscanf(e.items[j].meta, "crash-%d", &i), 1);
        assert_true(i >= CRASH_REMOVED);
        size_t len;
        char *body = crash_body(i, &len);
        assert_loads(sp, &e.items[j].id, true, body);
        free(body);
    }
    enum_res_fini(&e);
    spool_free(sp);
    g_journal_size = NULL;
}

/* kill -9 after acknowledged saves and removes: with the journal on, the
 * stores took them without their WALs, so the memtables that held them are
 * gone; the journal brings every one back, and no removed one. */
static void test_journal_recovers_a_crash_without_store_wals(void **state)
{
    crash_and_check(((fixture *)*state)->dir, "small");
}

/* The same with saves too large for the journal in between (1 MiB ring:
 * a 400 KB record does not fit a quarter of it): they go through the WALs
 * after a checkpoint, and journaled saves before and after them survive. */
static void test_journal_recovers_a_crash_around_groups_too_large_for_it(void **state)
{
    crash_and_check(((fixture *)*state)->dir, "big");
}

/* The enumeration holds exactly the ids of ids[0..n) not gone (metas
 * "meta-<i>") plus upd with meta upd_meta. */
static void assert_enum_with(spool *sp, const spoolid *ids, int n, const bool *gone,
                             const spoolid *upd, const char *upd_meta)
{
    enum_res e;
    enumerate_sync(sp, &e);
    bool found = false;
    for (size_t j = 0; j < e.n; j++)
        if (memcmp(e.items[j].id.b, upd->b, 16) == 0) {
            assert_false(found);
            found = true;
            assert_string_equal(e.items[j].meta, upd_meta);
            free(e.items[j].meta);
            e.items[j] = e.items[--e.n];
            j--;
        }
    assert_true(found);
    assert_enum_exact(&e, ids, n, gone);
    enum_res_fini(&e);
}

/* With the journal, a group's saves and removes wait in its pending set
 * until the journal wraps: loads and enumerations see them there, a new
 * message removed within the lap never reaches the stores (never_stored),
 * and an orderly stop writes the rest to the stores, where a restart finds
 * exactly what was left: the second round removes and updates messages that
 * are in the stores by then. */
static void test_journal_pending_set(void **state)
{
    const char *dir = ((fixture *)*state)->dir;
    enum { N = 40 };
    spoolid ids[N], upd;
    bool gone[N] = {0};
    waiter w;
    spool_stats st;
    int nremoved = 0;

    waiter_init(&w);
    spool *sp = open_spool(dir, SPOOL_KIND_ROCKSDB, false);
    spool_get_stats(sp, &st);
    uint64_t laps = st.journal_checkpoints;
    for (int i = 0; i <= N; i++) {
        spoolid *id = i < N ? &ids[i] : &upd;
        char *m = xstrdup_printf("meta-%d", i), *d = xstrdup_printf("body-%d", i);
        test_id(id);
        save_new_one(sp, &w, id, m, d, true);
        free(m);
        free(d);
    }
    waiter_wait(&w);
    assert_int_equal(w.errors, 0);
    for (int i = 0; i < N; i += 7) {
        char *m = xstrdup_printf("meta-%d", i), *d = xstrdup_printf("body-%d", i);
        assert_loads(sp, &ids[i], false, m);
        assert_loads(sp, &ids[i], true, d);
        free(m);
        free(d);
    }
    for (int i = 0; i < N; i += 3) {
        waiter_add(&w, 1 << 30);
        spool_remove(sp, &ids[i], on_done, &w);
        gone[i] = true;
        nremoved++;
    }
    /* a meta-only save: the pending data stays */
    save_one(sp, &w, &upd, "meta-upd-1", NULL, true);
    waiter_wait(&w);
    assert_int_equal(w.errors, 0);
    spool_get_stats(sp, &st);
    assert_int_equal(st.journal_checkpoints, laps); /* all of it still pending */
    assert_int_equal(st.never_stored, nremoved);
    assert_int_equal(st.removes, nremoved);
    for (int i = 0; i < N; i += 3) {
        assert_absent(sp, &ids[i], false);
        assert_absent(sp, &ids[i], true);
    }
    assert_loads(sp, &upd, false, "meta-upd-1");
    assert_loads(sp, &upd, true, "body-40");
    assert_enum_with(sp, ids, N, gone, &upd, "meta-upd-1");
    spool_free(sp);

    /* Restarted: the stores have what was pending. */
    sp = open_spool(dir, SPOOL_KIND_ROCKSDB, false);
    assert_enum_with(sp, ids, N, gone, &upd, "meta-upd-1");
    assert_loads(sp, &ids[1], true, "body-1");
    assert_loads(sp, &upd, true, "body-40");
    /* Removes and a meta-only save of stored messages: pending too, and
     * they must reach the stores. */
    for (int i = 1; i < N; i += 3) {
        waiter_add(&w, 1 << 30);
        spool_remove(sp, &ids[i], on_done, &w);
        gone[i] = true;
    }
    /* an update, then the remove, of stored messages within the lap */
    for (int i = 2; i < N; i += 6) {
        char *m = xstrdup_printf("meta-%d", i);
        save_one(sp, &w, &ids[i], m, NULL, false);
        free(m);
        waiter_add(&w, 1 << 30);
        spool_remove(sp, &ids[i], on_done, &w);
        gone[i] = true;
    }
    save_one(sp, &w, &upd, "meta-upd-2", NULL, true);
    waiter_wait(&w);
    assert_int_equal(w.errors, 0);
    for (int i = 1; i < N; i += 3)
        assert_absent(sp, &ids[i], true);
    assert_loads(sp, &upd, false, "meta-upd-2");
    assert_loads(sp, &upd, true, "body-40");
    spool_get_stats(sp, &st);
    assert_int_equal(st.never_stored, 0);
    assert_enum_with(sp, ids, N, gone, &upd, "meta-upd-2");
    spool_free(sp);

    sp = open_spool(dir, SPOOL_KIND_ROCKSDB, false);
    assert_enum_with(sp, ids, N, gone, &upd, "meta-upd-2");
    for (int i = 0; i < N; i++) {
        if (!gone[i])
            continue;
        assert_absent(sp, &ids[i], false);
        assert_absent(sp, &ids[i], true);
    }
    assert_loads(sp, &ids[5], true, "body-5");
    assert_loads(sp, &upd, true, "body-40");
    spool_free(sp);
    waiter_fini(&w);
}

/* A journal lap that fills up writes what is pending to the stores (a
 * checkpoint) and goes on: with a 1 MiB ring and 40 KB bodies, several laps
 * go by; every message not removed is then loadable, in the stores or
 * still pending, and after a restart. */
static void test_journal_pending_set_across_laps(void **state)
{
    const char *dir = ((fixture *)*state)->dir;
    enum { N = 120, SIZE = 40000 };
    spoolid ids[N];
    bool gone[N] = {0};
    waiter w;
    spool_stats st;
    char *body = malloc(SIZE + 1);
    assert_non_null(body);

    g_journal_size = "1MiB";
    waiter_init(&w);
    spool *sp = open_spool(dir, SPOOL_KIND_ROCKSDB, false);
    for (int i = 0; i < N; i++) {
        char *m = xstrdup_printf("meta-%d", i);
        test_id(&ids[i]);
        memset(body, 'a' + i % 26, SIZE);
        body[SIZE] = 0;
        save_new_one(sp, &w, &ids[i], m, body, true);
        free(m);
        waiter_wait(&w);
        if (i % 4 == 1) { /* removed right away: pending, or in the stores */
            waiter_add(&w, 1 << 30);
            spool_remove(sp, &ids[i - 1], on_done, &w);
            gone[i - 1] = true;
            waiter_wait(&w);
        }
    }
    assert_int_equal(w.errors, 0);
    spool_get_stats(sp, &st);
    assert_true(st.journal_checkpoints >= 3);
    assert_true(st.never_stored > 0);
    enum_res e;
    enumerate_sync(sp, &e);
    assert_enum_exact(&e, ids, N, gone);
    enum_res_fini(&e);
    for (int i = 0; i < N; i++) {
        if (gone[i]) {
            assert_absent(sp, &ids[i], true);
            continue;
        }
        memset(body, 'a' + i % 26, SIZE);
        assert_loads(sp, &ids[i], true, body);
    }
    spool_free(sp);
    sp = open_spool(dir, SPOOL_KIND_ROCKSDB, false);
    enumerate_sync(sp, &e);
    assert_enum_exact(&e, ids, N, gone);
    enum_res_fini(&e);
    spool_free(sp);
    g_journal_size = NULL;
    free(body);
    waiter_fini(&w);
}

static void test_bench_rocks(void **state)
{
    fixture *f = *state;
    char *d1 = xstrdup_printf("%s/w1", f->dir), *d16 = xstrdup_printf("%s/w16", f->dir);
    mkdir(d1, 0755);
    mkdir(d16, 0755);
    bench(d1, SPOOL_KIND_ROCKSDB, 20000, 1);
    bench(d16, SPOOL_KIND_ROCKSDB, 20000, 16);
    free(d1);
    free(d16);
}

static void test_bench_local_disk(void **state)
{
    /* Fewer: a file and a directory or two per half, and the tear-down
     * has to delete them all again. */
    bench(((fixture *)*state)->dir, SPOOL_KIND_LOCALDISK, 4000, 16);
}

int main(int argc, char **argv)
{
    g_self = argv[0];
    if (argc == 4 && strcmp(argv[1], "--crash-child") == 0)
        return crash_child(argv[2], argv[3]);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_params_validation),
        cmocka_unit_test(test_params_values),
        cmocka_unit_test_setup_teardown(test_round_trip_rocks, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_round_trip_local_disk, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_remove_enumerate_rocks, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_remove_enumerate_local_disk, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_reopen_rocks, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_reopen_local_disk, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_lock_rocks, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_lock_local_disk, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_group_commit_rocks, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_journal_pending_set, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_journal_pending_set_across_laps, setup_dir,
                                        teardown_dir),
        cmocka_unit_test_setup_teardown(test_group_commit_local_disk, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_lazy_saves_rocks, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_lazy_saves_local_disk, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_commit_delay_rocks, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_commit_delay_local_disk, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_journal_replays_lost_store_writes, setup_dir,
                                        teardown_dir),
        cmocka_unit_test_setup_teardown(test_journal_off, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_journal_damaged_refuses_start, setup_dir,
                                        teardown_dir),
        cmocka_unit_test_setup_teardown(test_journal_recovers_a_crash_without_store_wals,
                                        setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(
            test_journal_recovers_a_crash_around_groups_too_large_for_it, setup_dir,
            teardown_dir),
        cmocka_unit_test_setup_teardown(test_bench_rocks, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_bench_local_disk, setup_dir, teardown_dir),
    };
    /* e.g. SPOOL_TEST_FILTER='test_bench_*' to run only the benchmarks */
    if (getenv("SPOOL_TEST_FILTER") != NULL)
        cmocka_set_test_filter(getenv("SPOOL_TEST_FILTER"));
    return cmocka_run_group_tests(tests, NULL, NULL);
}
