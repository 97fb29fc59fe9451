/* Unit tests for src/core/duration.c: humantime parsing and formatting (checked
 * against values humantime itself produces), byte sizes and percentages. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "core/duration.h"
#include "core/kerr.h"

#define S NS_PER_SEC
#define MS NS_PER_MS
#define MONTH (2630016LL * S)
#define YEAR (31557600LL * S)
#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

struct parse_row {
    const char *in;
    int rc;
    int64_t ns;
};

static const struct parse_row parse_rows[] = {
    /* humantime's own unit table */
    {"17nsec", 0, 17},
    {"17nanos", 0, 17},
    {"33ns", 0, 33},
    {"3usec", 0, 3000},
    {"78us", 0, 78000},
    {"31msec", 0, 31 * MS},
    {"31millis", 0, 31 * MS},
    {"6ms", 0, 6 * MS},
    {"3000s", 0, 3000 * S},
    {"300sec", 0, 300 * S},
    {"300secs", 0, 300 * S},
    {"50seconds", 0, 50 * S},
    {"1second", 0, 1 * S},
    {"100m", 0, 6000 * S},
    {"12min", 0, 720 * S},
    {"12mins", 0, 720 * S},
    {"1minute", 0, 60 * S},
    {"7minutes", 0, 420 * S},
    {"2h", 0, 7200 * S},
    {"7hr", 0, 25200 * S},
    {"7hrs", 0, 25200 * S},
    {"1hour", 0, 3600 * S},
    {"24hours", 0, 86400 * S},
    {"1day", 0, 86400 * S},
    {"2days", 0, 172800 * S},
    {"365d", 0, 31536000 * S},
    {"1week", 0, 604800 * S},
    {"7weeks", 0, 4233600 * S},
    {"52w", 0, 31449600 * S},
    {"1month", 0, MONTH},
    {"3months", 0, 3 * MONTH},
    {"12M", 0, 31560192 * S},
    {"1year", 0, YEAR},
    {"7years", 0, 7 * YEAR},
    {"17y", 0, 536479200 * S},
    /* combinations and spacing */
    {"20 min 17 nsec ", 0, 1200 * S + 17},
    {"2h 15m", 0, 8100 * S},
    {"1h30m", 0, 5400 * S},
    {"2s 481ms 890us 590ns", 0, 2481890590LL},
    {"  5m  ", 0, 300 * S},
    {"1day 2h 3m", 0, (86400 + 7200 + 180) * S},
    /* long words as policies write them */
    {"20 minutes", 0, 1200 * S},
    {"7 days", 0, 7 * 86400 * S},
    {"1 hour", 0, 3600 * S},
    {"30s", 0, 30 * S},
    {"100ms", 0, 100 * MS},
    /* extras: fractions and bare seconds */
    {"1.5s", 0, 1500 * MS},
    {"0.25h", 0, 900 * S},
    {"1.000000001s", 0, S + 1},
    {"60", 0, 60 * S},
    {" 60 ", 0, 60 * S},
    {"1.5", 0, 1500 * MS},
    {"0", 0, 0},
    {"0s", 0, 0},
    /* the largest value that fits, and one past it */
    {"9223372036854775807ns", 0, INT64_MAX},
    {"9223372036854775808ns", KERR_RANGE, 0},
    {"292years", 0, 292 * YEAR},
    {"293years", KERR_RANGE, 0},
    {"99999999999999999999s", KERR_RANGE, 0},
    {"9223372036854775807ns 1ns", KERR_RANGE, 0},
    /* rejected */
    {"", KERR_PARSE, 0},
    {"   ", KERR_PARSE, 0},
    {"-5s", KERR_PARSE, 0},
    {"+5s", KERR_PARSE, 0},
    {"abc", KERR_PARSE, 0},
    {"s", KERR_PARSE, 0},
    {"5 parsecs", KERR_PARSE, 0},
    {"5H", KERR_PARSE, 0},
    {"2s 30", KERR_PARSE, 0},
    {"1.s", KERR_PARSE, 0},
    {".5s", KERR_PARSE, 0},
    {"5s,", KERR_PARSE, 0},
    {"5s; 3m", KERR_PARSE, 0},
    {"1 hour min", KERR_PARSE, 0},
    {"5m x", KERR_PARSE, 0},
};

static void test_duration_parse_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(parse_rows); i++) {
        const struct parse_row *r = &parse_rows[i];
        int64_t ns = -12345;
        int rc = duration_parse(r->in, &ns);
        if (rc != r->rc || (rc == 0 && ns != r->ns)) {
            print_error("duration_parse(\"%s\") = %d, %lld; want %d, %lld\n", r->in, rc,
                        (long long)ns, r->rc, (long long)r->ns);
            fail();
        }
        if (rc != 0 && ns != -12345) {
            print_error("duration_parse(\"%s\") wrote its output on failure\n", r->in);
            fail();
        }
    }
}

struct format_row {
    int64_t ns;
    const char *out;
};

static const struct format_row format_rows[] = {
    {0, "0s"},
    {1, "1ns"},
    {2481890590LL, "2s 481ms 890us 590ns"},
    {86400 * S, "1day"},
    {(2 * 86400 + 3 * 3600) * S, "2days 3h"},
    {(86400 + 7200 + 180) * S, "1day 2h 3m"},
    {9420 * S, "2h 37m"},
    {32 * MS, "32ms"},
    {60 * S, "1m"},
    {86399 * S, "23h 59m 59s"},
    {604800 * S, "7days"},
    {2592000 * S, "30days"},
    {2678400 * S, "1month 13h 26m 24s"},
    {MONTH, "1month"},
    {2 * MONTH, "2months"},
    {YEAR, "1year"},
    {2 * YEAR, "2years"},
    {31536000 * S, "11months 30days 3h 50m 24s"},
    {YEAR + MONTH + (86400 + 3661) * S + 1001001, "1year 1month 1day 1h 1m 1s 1ms 1us 1ns"},
    {1000000 * S, "11days 13h 46m 40s"},
    {259200 * S + 1, "3days 1ns"},
    {3600 * S + 1000, "1h 1us"},
    {-1500 * MS, "-1s 500ms"},
    {INT64_MAX, "292years 3months 7days 16h 6m 28s 854ms 775us 807ns"},
    {INT64_MIN, "-292years 3months 7days 16h 6m 28s 854ms 775us 808ns"},
};

static void test_duration_format_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(format_rows); i++) {
        const struct format_row *r = &format_rows[i];
        char buf[128];
        size_t n = duration_format(r->ns, buf, sizeof(buf));
        if (strcmp(buf, r->out) != 0 || n != strlen(r->out)) {
            print_error("duration_format(%lld) = \"%s\" (%zu); want \"%s\"\n", (long long)r->ns,
                        buf, n, r->out);
            fail();
        }
    }
}

/* Whatever we print, we read back as the same value (humantime's promise). */
static void test_duration_roundtrip(void **state)
{
    (void)state;
    uint64_t x = 0x9e3779b97f4a7c15ULL;
    for (int i = 0; i < 20000; i++) {
        /* xorshift64: deterministic, spread over the whole positive range */
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        int64_t ns = (int64_t)(x >> (1 + (unsigned)i % 40));
        char buf[128];
        duration_format(ns, buf, sizeof(buf));
        int64_t back = -1;
        assert_int_equal(duration_parse(buf, &back), 0);
        if (back != ns) {
            print_error("\"%s\" parsed as %lld, formatted from %lld\n", buf, (long long)back,
                        (long long)ns);
            fail();
        }
    }
}

struct trunc_row {
    size_t len;
    const char *out;
};

/* Too-short buffers are truncated and NUL-terminated; the return value is the
 * full length, like snprintf. */
static void test_duration_format_truncates(void **state)
{
    (void)state;
    static const struct trunc_row rows[] = {
        {1, ""}, {2, "2"}, {5, "2s 4"}, {20, "2s 481ms 890us 590n"}, {21, "2s 481ms 890us 590ns"},
    };
    for (size_t i = 0; i < ARRAY_LEN(rows); i++) {
        char buf[32];
        memset(buf, 'x', sizeof(buf));
        size_t n = duration_format(2481890590LL, buf, rows[i].len);
        assert_int_equal(n, 20);
        assert_string_equal(buf, rows[i].out);
    }
    char sentinel = 'x';
    assert_int_equal(duration_format(-1, &sentinel, 0), 4); /* "-1ns" */
    assert_int_equal(sentinel, 'x');
}

struct size_row {
    const char *in;
    int rc;
    uint64_t v;
};

static const struct size_row size_rows[] = {
    {"1024", 0, 1024},
    {"0", 0, 0},
    {"20MB", 0, 20ULL << 20},
    {"20 MiB", 0, 20ULL << 20},
    {"20mb", 0, 20ULL << 20},
    {"20M", 0, 20ULL << 20},
    {"128k", 0, 128ULL << 10},
    {"128K", 0, 128ULL << 10},
    {"128kb", 0, 128ULL << 10},
    {"128KB", 0, 128ULL << 10},
    {"128KiB", 0, 128ULL << 10},
    {"1.5G", 0, 3ULL << 29},
    {"2GB", 0, 2ULL << 30},
    {"2 GiB", 0, 2ULL << 30},
    {"1T", 0, 1ULL << 40},
    {"100b", 0, 100},
    {"100 B", 0, 100},
    {" 7k ", 0, 7 << 10},
    {"0.5k", 0, 512},
    {"18446744073709551615", 0, UINT64_MAX},
    {"18446744073709551616", KERR_PARSE, 0},
    {"16777216T", KERR_PARSE, 0},
    {"", KERR_PARSE, 0},
    {"MB", KERR_PARSE, 0},
    {"-1", KERR_PARSE, 0},
    {"1.5", KERR_PARSE, 0},
    {"10 parsecs", KERR_PARSE, 0},
    {"10kk", KERR_PARSE, 0},
    {"10 k b", KERR_PARSE, 0},
    {"1e6", KERR_PARSE, 0},
};

static void test_size_parse_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(size_rows); i++) {
        const struct size_row *r = &size_rows[i];
        uint64_t v = 0;
        int rc = size_parse(r->in, &v);
        if (rc != r->rc || (rc == 0 && v != r->v)) {
            print_error("size_parse(\"%s\") = %d, %llu; want %d, %llu\n", r->in, rc,
                        (unsigned long long)v, r->rc, (unsigned long long)r->v);
            fail();
        }
    }
}

struct percent_row {
    const char *in;
    int rc;
    double v;
};

static const struct percent_row percent_rows[] = {
    {"10%", 0, 10.0},           {"0%", 0, 0.0},          {"100%", 0, 100.0},
    {"12.5%", 0, 12.5},         {" 5 % ", 0, 5.0},       {"150%", 0, 150.0},
    {"10", KERR_PARSE, 0},      {"%", KERR_PARSE, 0},    {"", KERR_PARSE, 0},
    {"-5%", KERR_PARSE, 0},     {"ten%", KERR_PARSE, 0}, {"10%%", KERR_PARSE, 0},
    {"10% off", KERR_PARSE, 0}, {"10GB", KERR_PARSE, 0},
};

static void test_percent_parse_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(percent_rows); i++) {
        const struct percent_row *r = &percent_rows[i];
        double v = -1;
        int rc = percent_parse(r->in, &v);
        if (rc != r->rc || (rc == 0 && v != r->v)) {
            print_error("percent_parse(\"%s\") = %d, %g; want %d, %g\n", r->in, rc, v, r->rc, r->v);
            fail();
        }
    }
}

static void test_null_arguments(void **state)
{
    (void)state;
    int64_t ns;
    uint64_t sz;
    double pct;
    assert_int_equal(duration_parse(NULL, &ns), KERR_INVAL);
    assert_int_equal(duration_parse("1s", NULL), KERR_INVAL);
    assert_int_equal(size_parse(NULL, &sz), KERR_INVAL);
    assert_int_equal(percent_parse(NULL, &pct), KERR_INVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_duration_parse_table),
        cmocka_unit_test(test_duration_format_table),
        cmocka_unit_test(test_duration_roundtrip),
        cmocka_unit_test(test_duration_format_truncates),
        cmocka_unit_test(test_size_parse_table),
        cmocka_unit_test(test_percent_parse_table),
        cmocka_unit_test(test_null_arguments),
    };
    return cmocka_run_group_tests_name("core/duration", tests, NULL, NULL);
}
