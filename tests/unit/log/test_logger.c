/* Tests for src/log/logger.c and src/log/logs.c: configuration checks,
 * segment naming, routing by record type, meta/header filtering through a
 * destination, rotation by size and age, read-only segments, reading the
 * open segment after logs_flush(), and back pressure. Each test works in its
 * own temporary directory and shuts the registry down at the end. */
#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <pthread.h>
#include <regex.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>
#include <zstd.h>

#include "core/kerr.h"
#include "log/logger.h"
#include "log/logs.h"

struct fixture {
    char dir[64];
};

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    return remove(path);
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    strcpy(f->dir, "/tmp/kumod-logtest-XXXXXX");
    if (!mkdtemp(f->dir))
        return -1;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    logs_shutdown();
    nftw(f->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(f);
    return 0;
}

/* ---- helpers ---- */

static int add_json(const char *fmt, ...)
{
    char text[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    json_error_t e;
    json_t *cfg = json_loads(text, 0, &e);
    if (!cfg)
        fail_msg("test config is not JSON: %s: %s", e.text, text);
    char err[512];
    int rc = logs_add_local_from_json(cfg, err, sizeof(err));
    if (rc != 0)
        print_message("config error: %s\n", err);
    json_decref(cfg);
    return rc;
}

/* Expects logs_add_local_from_json to fail with a message containing want. */
static void expect_config_error(const char *text, const char *want)
{
    json_t *cfg = json_loads(text, 0, NULL);
    assert_non_null(cfg);
    char err[512] = "";
    int rc = logs_add_local_from_json(cfg, err, sizeof(err));
    json_decref(cfg);
    assert_int_equal(rc, KERR_INVAL);
    if (!strstr(err, want))
        fail_msg("error \"%s\" does not mention \"%s\"", err, want);
}

/* Regular files directly in dir, sorted (segment names sort by time). */
static int list_files(const char *dir, char names[][128], int max)
{
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        char p[512];
        struct stat st;
        snprintf(p, sizeof(p), "%s/%s", dir, de->d_name);
        if (lstat(p, &st) < 0 || !S_ISREG(st.st_mode))
            continue;
        if (n < max)
            snprintf(names[n], 128, "%.127s", de->d_name);
        n++;
    }
    closedir(d);
    if (n > max)
        fail_msg("too many files in %s", dir);
    qsort(names, (size_t)n, sizeof(names[0]), (int (*)(const void *, const void *))strcmp);
    return n;
}

static bool is_writable(const char *path)
{
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    return (st.st_mode & 0222) != 0;
}

/* Decompresses a segment, complete or still open (a flushed block needs no
 * frame end). */
static char *read_segment(const char *path, size_t *len_out)
{
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    ZSTD_DCtx *dctx = ZSTD_createDCtx();
    assert_non_null(dctx);
    size_t incap = ZSTD_DStreamInSize(), outcap = ZSTD_DStreamOutSize();
    char *in = malloc(incap), *tmp = malloc(outcap);
    char *out = NULL;
    size_t len = 0;
    size_t n;
    while ((n = fread(in, 1, incap, fp)) > 0) {
        ZSTD_inBuffer ib = {in, n, 0};
        while (ib.pos < ib.size) {
            ZSTD_outBuffer ob = {tmp, outcap, 0};
            size_t r = ZSTD_decompressStream(dctx, &ob, &ib);
            if (ZSTD_isError(r))
                fail_msg("%s: %s", path, ZSTD_getErrorName(r));
            out = realloc(out, len + ob.pos + 1);
            memcpy(out + len, tmp, ob.pos);
            len += ob.pos;
        }
    }
    /* Drain what zstd still holds for the bytes it has seen. */
    for (;;) {
        ZSTD_inBuffer ib = {NULL, 0, 0};
        ZSTD_outBuffer ob = {tmp, outcap, 0};
        size_t r = ZSTD_decompressStream(dctx, &ob, &ib);
        if (ZSTD_isError(r))
            fail_msg("%s: %s", path, ZSTD_getErrorName(r));
        if (ob.pos == 0)
            break;
        out = realloc(out, len + ob.pos + 1);
        memcpy(out + len, tmp, ob.pos);
        len += ob.pos;
    }
    fclose(fp);
    free(in);
    free(tmp);
    ZSTD_freeDCtx(dctx);
    if (!out)
        out = calloc(1, 1);
    out[len] = '\0';
    *len_out = len;
    return out;
}

static int count_lines(const char *s)
{
    int n = 0;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}

/* Parses the i-th line of text. */
static json_t *line_json(const char *text, int i)
{
    const char *p = text;
    for (int k = 0; k < i; k++) {
        p = strchr(p, '\n');
        assert_non_null(p);
        p++;
    }
    const char *e = strchr(p, '\n');
    assert_non_null(e);
    json_error_t err;
    json_t *j = json_loadb(p, (size_t)(e - p), 0, &err);
    if (!j)
        fail_msg("line %d is not JSON: %s", i, err.text);
    return j;
}

static const char *const rcpt[] = {"rcpt@example.net"};

static void record(logrec_type t, const char *id)
{
    logrec r = {0};
    r.type = t;
    r.id = id;
    r.sender = "sender@example.com";
    r.recipients = rcpt;
    r.n_recipients = 1;
    r.queue = "example.net";
    r.site = "";
    r.response = (logrec_response){.code = 250, .content = "OK"};
    r.nodeid = "557f3ad4-2c8c-11ee-976e-782d7e12e173";
    logs_record(&r);
}

static void assert_segment_name(const char *name, const char *suffix)
{
    regex_t re;
    char pat[256];
    snprintf(pat, sizeof(pat), "^[0-9]{8}-[0-9]{6}(\\.[0-9]{3}|\\.[0-9]{6}|\\.[0-9]{9})?%s$",
             suffix);
    assert_int_equal(regcomp(&re, pat, REG_EXTENDED | REG_NOSUB), 0);
    int rc = regexec(&re, name, 0, NULL, 0);
    regfree(&re);
    if (rc != 0)
        fail_msg("segment name %s does not match %s", name, pat);
}

/* ---- tests ---- */

static void test_segment_name(void **state)
{
    static const struct {
        int64_t ns;
        const char *want;
    } cases[] = {
        {0, "19700101-000000"},
        {1700000000LL * 1000000000 + 123456789, "20231114-221320.123456789"},
        {1700000000LL * 1000000000 + 120000000, "20231114-221320.120"},
        {1700000000LL * 1000000000 + 123456000, "20231114-221320.123456"},
        {1700000000LL * 1000000000 + 5, "20231114-221320.000000005"},
        {1700000000LL * 1000000000, "20231114-221320"},
        {951868799LL * 1000000000 + 999000000, "20000229-235959.999"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char buf[64];
        size_t n = logger_segment_name(cases[i].ns, buf, sizeof(buf));
        assert_string_equal(buf, cases[i].want);
        assert_int_equal(n, strlen(cases[i].want));
    }
}

static void test_config_errors(void **state)
{
    struct fixture *f = *state;
    char t[1024];
    snprintf(t, sizeof(t), "{\"log_dir\":\"%s\",\"bogus\":1}", f->dir);
    expect_config_error(t, "unknown field `bogus`");
    expect_config_error("{\"max_file_size\":10}", "missing field `log_dir`");
    expect_config_error("[]", "expected a table");
    snprintf(t, sizeof(t), "{\"log_dir\":\"%s\",\"max_file_size\":\"big\"}", f->dir);
    expect_config_error(t, "`max_file_size`");
    snprintf(t, sizeof(t), "{\"log_dir\":\"%s\",\"max_segment_duration\":\"soon\"}", f->dir);
    expect_config_error(t, "`max_segment_duration`");
    snprintf(t, sizeof(t), "{\"log_dir\":\"%s\",\"compression_level\":99}", f->dir);
    expect_config_error(t, "`compression_level`");
    snprintf(t, sizeof(t), "{\"log_dir\":\"%s\",\"meta\":[\"a\",1]}", f->dir);
    expect_config_error(t, "`meta`");
    snprintf(t, sizeof(t), "{\"log_dir\":\"%s\",\"per_record\":{\"Nope\":{}}}", f->dir);
    expect_config_error(t, "unknown record type `Nope`");
    snprintf(t, sizeof(t), "{\"log_dir\":\"%s\",\"per_record\":{\"Delivery\":{\"sufix\":\"x\"}}}",
             f->dir);
    expect_config_error(t, "unknown field `sufix`");
    snprintf(t, sizeof(t),
             "{\"log_dir\":\"%s\",\"per_record\":{\"Delivery\":{\"template\":\"{{ id }}\"}}}",
             f->dir);
    expect_config_error(t, "not supported by kumod yet");
    snprintf(t, sizeof(t), "{\"log_dir\":\"%s\",\"filter_event\":\"should_log\"}", f->dir);
    expect_config_error(t, "`filter_event` is not supported by kumod yet");
    snprintf(t, sizeof(t), "{\"log_dir\":\"%s\",\"min_free_space\":\"ten\"}", f->dir);
    expect_config_error(t, "`min_free_space`");

    /* Every documented key (with a Lua-style empty table for headers). */
    assert_int_equal(add_json("{\"log_dir\":\"%s/sub/dir\",\"max_file_size\":1e9,"
                              "\"back_pressure\":10,\"compression_level\":3,"
                              "\"max_segment_duration\":\"5m\",\"meta\":[\"a\"],\"headers\":{},"
                              "\"per_record\":{\"Any\":{\"suffix\":\".x\",\"enable\":true,"
                              "\"segment_header\":\"\",\"log_dir\":null}},"
                              "\"min_free_space\":\"10%%\",\"min_free_inodes\":1000}",
                              f->dir),
                     0);
    char sub[256];
    snprintf(sub, sizeof(sub), "%s/sub/dir", f->dir);
    struct stat st;
    assert_int_equal(stat(sub, &st), 0);
    assert_true(S_ISDIR(st.st_mode));
}

/* One destination: records land, in order, in one segment that a reader can
 * decompress while it is open; shutdown closes it read-only. */
static void test_flush_open_segment(void **state)
{
    struct fixture *f = *state;
    logs_stats before, after;
    logs_get_stats(&before);
    assert_int_equal(add_json("{\"log_dir\":\"%s\"}", f->dir), 0);
    for (int i = 0; i < 10; i++) {
        char id[40];
        snprintf(id, sizeof(id), "id%02d", i);
        record(LOGREC_DELIVERY, id);
    }
    logs_flush();

    char names[8][128];
    assert_int_equal(list_files(f->dir, names, 8), 1);
    assert_segment_name(names[0], "");
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", f->dir, names[0]);
    assert_true(is_writable(path));
    size_t len;
    char *text = read_segment(path, &len);
    assert_int_equal(count_lines(text), 10);
    for (int i = 0; i < 10; i++) {
        json_t *j = line_json(text, i);
        char id[40];
        snprintf(id, sizeof(id), "id%02d", i);
        assert_string_equal(json_string_value(json_object_get(j, "id")), id);
        assert_string_equal(json_string_value(json_object_get(j, "type")), "Delivery");
        json_decref(j);
    }
    free(text);

    /* More records, another flush: the same open segment grows. */
    record(LOGREC_BOUNCE, "late");
    logs_flush();
    text = read_segment(path, &len);
    assert_int_equal(count_lines(text), 11);
    json_t *j = line_json(text, 10);
    assert_string_equal(json_string_value(json_object_get(j, "type")), "Bounce");
    json_decref(j);
    free(text);

    logs_get_stats(&after);
    assert_int_equal(after.submitted - before.submitted, 11);
    assert_int_equal(after.written - before.written, 11);

    logs_shutdown();
    assert_false(is_writable(path));
    assert_int_equal(list_files(f->dir, names, 8), 1);
    text = read_segment(path, &len);
    assert_int_equal(count_lines(text), 11);
    free(text);

    /* After shutdown, records go nowhere. */
    record(LOGREC_DELIVERY, "dropped");
    logs_flush();
    assert_int_equal(list_files(f->dir, names, 8), 1);
}

/* max_file_size counts uncompressed bytes; a segment closes (read-only) as
 * soon as a record takes it to the limit. */
static void test_rotate_by_size(void **state)
{
    struct fixture *f = *state;
    /* Each record is well over 200 bytes: one record per segment. */
    assert_int_equal(add_json("{\"log_dir\":\"%s\",\"max_file_size\":200}", f->dir), 0);
    for (int i = 0; i < 5; i++)
        record(LOGREC_DELIVERY, "r");
    logs_flush();
    char names[16][128];
    assert_int_equal(list_files(f->dir, names, 16), 5);
    for (int i = 0; i < 5; i++) {
        char path[8192 + 160];
        snprintf(path, sizeof(path), "%s/%s", f->dir, names[i]);
        assert_segment_name(names[i], "");
        assert_false(is_writable(path));
        size_t len;
        char *text = read_segment(path, &len);
        assert_int_equal(count_lines(text), 1);
        free(text);
    }
    logs_shutdown();

    /* A limit of a few records' size: records are never split. */
    assert_int_equal(add_json("{\"log_dir\":\"%s/b\",\"max_file_size\":1500}", f->dir), 0);
    for (int i = 0; i < 20; i++)
        record(LOGREC_DELIVERY, "r");
    logs_flush();
    char bdir[256];
    snprintf(bdir, sizeof(bdir), "%s/b", f->dir);
    int n = list_files(bdir, names, 16);
    assert_true(n >= 3 && n < 20);
    int total = 0;
    for (int i = 0; i < n; i++) {
        char path[512];
        snprintf(path, sizeof(path), "%s/%s", bdir, names[i]);
        size_t len;
        char *text = read_segment(path, &len);
        total += count_lines(text);
        if (is_writable(path)) {
            assert_int_equal(i, n - 1); /* only the newest is still open */
            assert_true(len < 1500);
        } else {
            assert_true(len >= 1500);
        }
        free(text);
    }
    assert_int_equal(total, 20);
}

/* max_segment_duration closes an idle segment without another record. */
static void test_rotate_by_age(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(add_json("{\"log_dir\":\"%s\",\"max_segment_duration\":\"200ms\"}", f->dir),
                     0);
    record(LOGREC_RECEPTION, "a");
    logs_flush();
    char names[8][128];
    assert_int_equal(list_files(f->dir, names, 8), 1);
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", f->dir, names[0]);
    assert_true(is_writable(path));
    for (int i = 0; i < 100 && is_writable(path); i++)
        usleep(20000);
    assert_false(is_writable(path));
    size_t len;
    char *text = read_segment(path, &len);
    assert_int_equal(count_lines(text), 1);
    free(text);

    record(LOGREC_RECEPTION, "b");
    logs_flush();
    assert_int_equal(list_files(f->dir, names, 8), 2);
}

/* Files left by an earlier run are complete: read-only at start-up. */
static void test_existing_marked_done(void **state)
{
    struct fixture *f = *state;
    char old[512], hidden[512], other[256], olddir[512], inother[512];
    snprintf(old, sizeof(old), "%s/20200101-000000.5", f->dir);
    snprintf(hidden, sizeof(hidden), "%s/.tailer-state", f->dir);
    snprintf(other, sizeof(other), "%s/other", f->dir);
    snprintf(olddir, sizeof(olddir), "%s/somedir", f->dir);
    snprintf(inother, sizeof(inother), "%s/20200101-000000.7", other);
    FILE *fp = fopen(old, "w");
    fclose(fp);
    fp = fopen(hidden, "w");
    fclose(fp);
    assert_int_equal(mkdir(olddir, 0755), 0);
    assert_int_equal(mkdir(other, 0755), 0);
    fp = fopen(inother, "w");
    fclose(fp);

    assert_int_equal(
        add_json("{\"log_dir\":\"%s\",\"per_record\":{\"Bounce\":{\"log_dir\":\"%s\"}}}", f->dir,
                 other),
        0);
    assert_false(is_writable(old));
    assert_false(is_writable(inother));
    assert_true(is_writable(hidden));
    assert_true(is_writable(olddir));
}

/* per_record: own suffix, own log_dir, enable=false, and Any for the rest;
 * segment_header starts each segment. */
static void test_per_record_routing(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(
        add_json("{\"log_dir\":\"%s\",\"per_record\":{"
                 "\"Delivery\":{\"suffix\":\".del\",\"segment_header\":\"# deliveries\\n\"},"
                 "\"Bounce\":{\"log_dir\":\"%s/bounces\",\"suffix\":\"_b\"},"
                 "\"TransientFailure\":{\"enable\":false},"
                 "\"Any\":{\"suffix\":\".any\"}}}",
                 f->dir, f->dir),
        0);
    /* A second destination with defaults gets every type. */
    assert_int_equal(add_json("{\"log_dir\":\"%s/all\"}", f->dir), 0);

    record(LOGREC_DELIVERY, "d1");
    record(LOGREC_BOUNCE, "b1");
    record(LOGREC_TRANSIENT_FAILURE, "t1");
    record(LOGREC_RECEPTION, "r1");
    record(LOGREC_DELIVERY, "d2");
    logs_flush();

    char names[8][128], path[512];
    size_t len;
    /* Sorted by open time: the Delivery segment opened first. */
    assert_int_equal(list_files(f->dir, names, 8), 2);
    assert_segment_name(names[0], "\\.del");
    assert_segment_name(names[1], "\\.any");

    snprintf(path, sizeof(path), "%s/%s", f->dir, names[0]);
    char *text = read_segment(path, &len);
    assert_true(strncmp(text, "# deliveries\n", 13) == 0);
    assert_int_equal(count_lines(text + 13), 2);
    json_t *j = line_json(text + 13, 1);
    assert_string_equal(json_string_value(json_object_get(j, "id")), "d2");
    json_decref(j);
    free(text);

    /* Any applies to Reception (no per_record of its own); not to the
     * disabled TransientFailure. */
    snprintf(path, sizeof(path), "%s/%s", f->dir, names[1]);
    text = read_segment(path, &len);
    assert_int_equal(count_lines(text), 1);
    j = line_json(text, 0);
    assert_string_equal(json_string_value(json_object_get(j, "type")), "Reception");
    json_decref(j);
    free(text);

    char bdir[256];
    snprintf(bdir, sizeof(bdir), "%s/bounces", f->dir);
    assert_int_equal(list_files(bdir, names, 8), 1);
    assert_segment_name(names[0], "_b");

    char adir[256];
    snprintf(adir, sizeof(adir), "%s/all", f->dir);
    assert_int_equal(list_files(adir, names, 8), 1);
    snprintf(path, sizeof(path), "%s/%s", adir, names[0]);
    text = read_segment(path, &len);
    assert_int_equal(count_lines(text), 5);
    free(text);
}

/* Any with enable=false silences every type without its own per_record. */
static void test_any_disabled(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(add_json("{\"log_dir\":\"%s\",\"per_record\":{"
                              "\"Any\":{\"enable\":false},\"Bounce\":{}}}",
                              f->dir),
                     0);
    record(LOGREC_DELIVERY, "d");
    record(LOGREC_BOUNCE, "b");
    logs_flush();
    char names[8][128];
    assert_int_equal(list_files(f->dir, names, 8), 1);
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", f->dir, names[0]);
    size_t len;
    char *text = read_segment(path, &len);
    assert_int_equal(count_lines(text), 1);
    json_t *j = line_json(text, 0);
    assert_string_equal(json_string_value(json_object_get(j, "type")), "Bounce");
    json_decref(j);
    free(text);
}

/* Each destination logs its own meta keys and headers. */
static void test_meta_and_headers(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(add_json("{\"log_dir\":\"%s/a\",\"meta\":[\"tenant\",\"x_*\"],"
                              "\"headers\":[\"subject\",\"X-Campaign*\"]}",
                              f->dir),
                     0);
    assert_int_equal(add_json("{\"log_dir\":\"%s/b\"}", f->dir), 0);

    static const char msg[] = "Subject: hi\r\n there\r\nX-Campaign-Id: 42\r\nFrom: a@b\r\n\r\nbody";
    json_t *meta = json_pack("{s:s,s:s,s:i}", "tenant", "acme", "x_one", "1", "secret", 5);
    logrec r = {0};
    r.type = LOGREC_RECEPTION;
    r.id = "m";
    r.recipients = rcpt;
    r.n_recipients = 1;
    r.msg_meta = meta;
    r.msg_data = msg;
    r.msg_data_len = sizeof(msg) - 1;
    logs_record(&r);
    json_decref(meta);
    logs_flush();

    char dir[256], names[4][128], path[512];
    size_t len;
    snprintf(dir, sizeof(dir), "%s/a", f->dir);
    assert_int_equal(list_files(dir, names, 4), 1);
    snprintf(path, sizeof(path), "%s/%s", dir, names[0]);
    char *text = read_segment(path, &len);
    json_t *j = line_json(text, 0);
    json_t *m = json_object_get(j, "meta");
    assert_int_equal(json_object_size(m), 2);
    assert_string_equal(json_string_value(json_object_get(m, "tenant")), "acme");
    assert_string_equal(json_string_value(json_object_get(m, "x_one")), "1");
    json_t *h = json_object_get(j, "headers");
    assert_int_equal(json_object_size(h), 2);
    assert_string_equal(json_string_value(json_object_get(h, "Subject")), "hi there");
    assert_string_equal(json_string_value(json_object_get(h, "X-Campaign-Id")), "42");
    json_decref(j);
    free(text);

    snprintf(dir, sizeof(dir), "%s/b", f->dir);
    assert_int_equal(list_files(dir, names, 4), 1);
    snprintf(path, sizeof(path), "%s/%s", dir, names[0]);
    text = read_segment(path, &len);
    j = line_json(text, 0);
    assert_int_equal(json_object_size(json_object_get(j, "meta")), 0);
    assert_int_equal(json_object_size(json_object_get(j, "headers")), 0);
    json_decref(j);
    free(text);
}

#define BP_THREADS 8
#define BP_PER_THREAD 300

static void *bp_submitter(void *arg)
{
    long t = (long)arg;
    for (int i = 0; i < BP_PER_THREAD; i++) {
        char id[32];
        snprintf(id, sizeof(id), "t%ld-%d", t, i);
        record(LOGREC_DELIVERY, id);
    }
    return NULL;
}

/* back_pressure=1: submitters block instead of losing records. */
static void test_back_pressure(void **state)
{
    struct fixture *f = *state;
    logs_stats before, after;
    logs_get_stats(&before);
    assert_int_equal(add_json("{\"log_dir\":\"%s\",\"back_pressure\":1,"
                              "\"max_file_size\":100000}",
                              f->dir),
                     0);
    pthread_t th[BP_THREADS];
    for (long t = 0; t < BP_THREADS; t++)
        assert_int_equal(pthread_create(&th[t], NULL, bp_submitter, (void *)t), 0);
    for (int t = 0; t < BP_THREADS; t++)
        pthread_join(th[t], NULL);
    logs_flush();
    logs_get_stats(&after);
    assert_int_equal(after.submitted - before.submitted, BP_THREADS * BP_PER_THREAD);
    assert_int_equal(after.written - before.written, BP_THREADS * BP_PER_THREAD);
    assert_true(after.submit_full > before.submit_full);

    /* Every record is there once, in per-thread order. */
    char names[64][128];
    int n = list_files(f->dir, names, 64);
    assert_true(n > 1);
    int next[BP_THREADS] = {0};
    int total = 0;
    for (int k = 0; k < n; k++) {
        char path[8192 + 160];
        snprintf(path, sizeof(path), "%s/%s", f->dir, names[k]);
        size_t len;
        char *text = read_segment(path, &len);
        int lines = count_lines(text);
        for (int i = 0; i < lines; i++) {
            json_t *j = line_json(text, i);
            long t;
            int seq;
            assert_int_equal(
                sscanf(json_string_value(json_object_get(j, "id")), "t%ld-%d", &t, &seq), 2);
            assert_int_equal(seq, next[t]);
            next[t]++;
            json_decref(j);
        }
        total += lines;
        free(text);
    }
    assert_int_equal(total, BP_THREADS * BP_PER_THREAD);
}

/* The logger alone: a stream whose log_dir does not exist yet (created on
 * the first segment), duplicate streams, and submissions before start and
 * after stop. */
static void test_logger_direct(void **state)
{
    struct fixture *f = *state;
    char dir[256], names[4][128], path[512];
    snprintf(dir, sizeof(dir), "%s/later/deeper", f->dir);
    logger *lg;
    logger_config cfg = {.name = "t", .max_file_size = 1 << 20, .back_pressure = 4};
    assert_int_equal(logger_new(&cfg, &lg), 0);
    int s = logger_add_stream(lg, dir, ".log");
    assert_true(s >= 0);
    assert_int_equal(logger_add_stream(lg, dir, ".log"), s);
    assert_int_equal(logger_add_stream(lg, dir, NULL), s + 1);
    assert_int_equal(logger_submit_take(lg, s, NULL, strdup("early"), 5), KERR_SHUTDOWN);
    assert_int_equal(logger_start(lg), 0);
    assert_int_equal(logger_submit_take(lg, s, "hdr:", strdup("one\n"), 4), 0);
    assert_int_equal(logger_submit_take(lg, s, "hdr:", strdup("two"), 3), 0);
    assert_int_equal(logger_submit_take(lg, 7, NULL, strdup("bad"), 3), KERR_INVAL);
    logger_flush(lg);
    assert_int_equal(list_files(dir, names, 4), 1);
    assert_segment_name(names[0], "\\.log");
    snprintf(path, sizeof(path), "%s/%s", dir, names[0]);
    size_t len;
    char *text = read_segment(path, &len);
    assert_string_equal(text, "hdr:one\ntwo\n");
    free(text);
    logger_stop(lg);
    assert_false(is_writable(path));
    assert_int_equal(logger_submit_take(lg, s, NULL, strdup("late"), 4), KERR_SHUTDOWN);
    logger_stats st;
    logger_get_stats(lg, &st);
    assert_int_equal(st.submitted, 2);
    assert_int_equal(st.written, 2);
    assert_int_equal(st.errors, 0);
    logger_free(lg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_segment_name),
        cmocka_unit_test_setup_teardown(test_config_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flush_open_segment, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rotate_by_size, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rotate_by_age, setup, teardown),
        cmocka_unit_test_setup_teardown(test_existing_marked_done, setup, teardown),
        cmocka_unit_test_setup_teardown(test_per_record_routing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_any_disabled, setup, teardown),
        cmocka_unit_test_setup_teardown(test_meta_and_headers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_back_pressure, setup, teardown),
        cmocka_unit_test_setup_teardown(test_logger_direct, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
