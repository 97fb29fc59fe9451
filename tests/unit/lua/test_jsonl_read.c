/* Unit tests for src/lua/lib/jsonl_read.c: following a segment that is
 * still being written, moving on only once it is read-only, zstd and plain
 * files, starting after a checkpoint's file, the byte budget. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

#include <cmocka.h>

#include "lua/lib/jsonl_read.h"

static char dir[256];

static void put(const char *name, const void *data, size_t n, const char *mode)
{
    char p[512];
    snprintf(p, sizeof(p), "%s/%s", dir, name);
    FILE *f = fopen(p, mode);
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, n, f), n);
    fclose(f);
}

static void done(const char *name)
{
    char p[512];
    snprintf(p, sizeof(p), "%s/%s", dir, name);
    assert_int_equal(chmod(p, 0444), 0);
}

static int next(jsonl_src *s, char *buf, size_t cap)
{
    const char *line;
    size_t len, budget = 1 << 20;
    bool more;
    int rc = jsonl_src_next(s, &line, &len, &budget, &more);
    if (rc == 1) {
        assert_true(len < cap);
        memcpy(buf, line, len);
        buf[len] = 0;
    }
    return rc;
}

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof(dir), "%s/jsonl_read_XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    assert_non_null(mkdtemp(dir));
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "chmod -R u+w %s && rm -rf %s", dir, dir);
    assert_int_equal(system(cmd), 0);
    return 0;
}

static void test_follow_growing_segment(void **state)
{
    (void)state;
    jsonl_src *s;
    char buf[256];
    assert_int_equal(jsonl_src_open(dir, "*", NULL, false, &s), 0);
    assert_int_equal(next(s, buf, sizeof(buf)), 0); /* no file yet */
    put("20240101-000000", "one\ntw", 6, "w");
    assert_int_equal(next(s, buf, sizeof(buf)), 1);
    assert_string_equal(buf, "one");
    assert_int_equal(jsonl_src_line(s), 1);
    assert_int_equal(next(s, buf, sizeof(buf)), 0); /* "tw" is not a line yet */
    put("20240101-000001", "later\n", 6, "w");
    /* the first segment is still writable: the reader waits on it */
    assert_int_equal(next(s, buf, sizeof(buf)), 0);
    put("20240101-000000", "o\nthree", 7, "a");
    assert_int_equal(next(s, buf, sizeof(buf)), 1);
    assert_string_equal(buf, "two");
    assert_int_equal(next(s, buf, sizeof(buf)), 0);
    done("20240101-000000");
    /* complete: the last line without '\n' counts, then the next file */
    assert_int_equal(next(s, buf, sizeof(buf)), 1);
    assert_string_equal(buf, "three");
    assert_int_equal(jsonl_src_line(s), 3);
    assert_int_equal(next(s, buf, sizeof(buf)), 1);
    assert_string_equal(buf, "later");
    assert_int_equal(jsonl_src_line(s), 1);
    assert_non_null(strstr(jsonl_src_file(s), "/20240101-000001"));
    jsonl_src_free(s);
}

static void test_zstd_and_start_file(void **state)
{
    (void)state;
    const char *text = "{\"a\":1}\n{\"a\":2}\n";
    char comp[256];
    size_t n = ZSTD_compress(comp, sizeof(comp), text, strlen(text), 3);
    assert_false(ZSTD_isError(n));
    put("1.zst", "{\"old\":1}\n", 10, "w");
    put("2.zst", comp, n, "w");
    done("1.zst");
    done("2.zst");
    jsonl_src *s;
    char buf[256];
    char start[512];
    snprintf(start, sizeof(start), "%s/2.zst", dir);
    assert_int_equal(jsonl_src_open(dir, "*.zst", start, false, &s), 0);
    assert_int_equal(next(s, buf, sizeof(buf)), 1);
    assert_string_equal(buf, "{\"a\":1}");
    assert_int_equal(next(s, buf, sizeof(buf)), 1);
    assert_string_equal(buf, "{\"a\":2}");
    assert_int_equal(next(s, buf, sizeof(buf)), 0);
    jsonl_src_free(s);
    /* tail: the newest file only; a checkpoint file (hidden) never matches */
    put(".cp", "x\n", 2, "w");
    assert_int_equal(jsonl_src_open(dir, "*", NULL, true, &s), 0);
    assert_int_equal(next(s, buf, sizeof(buf)), 1);
    assert_string_equal(buf, "{\"a\":1}");
    jsonl_src_free(s);
}

static void test_budget(void **state)
{
    (void)state;
    size_t big = 300 * 1024;
    char *data = malloc(big);
    assert_non_null(data);
    memset(data, 'x', big);
    data[big - 1] = '\n';
    put("big", data, big, "w");
    free(data);
    jsonl_src *s;
    assert_int_equal(jsonl_src_open(dir, "*", NULL, false, &s), 0);
    const char *line;
    size_t len, budget = 100 * 1024;
    bool more = false;
    /* the line needs more than the budget: the call stops with more set */
    assert_int_equal(jsonl_src_next(s, &line, &len, &budget, &more), 0);
    assert_true(more);
    assert_int_equal(budget, 0);
    budget = 1 << 20;
    assert_int_equal(jsonl_src_next(s, &line, &len, &budget, &more), 1);
    assert_int_equal(len, 300 * 1024 - 1);
    jsonl_src_free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_follow_growing_segment, setup, teardown),
        cmocka_unit_test_setup_teardown(test_zstd_and_start_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_budget, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
