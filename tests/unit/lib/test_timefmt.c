/* Unit tests for src/lua/lib/timefmt.c: civil-date conversion against
 * timegm-independent known values, RFC 3339 / RFC 2822 parsing (accepted and
 * rejected forms), and chrono-style formatting. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "core/kerr.h"
#include "lua/lib/timefmt.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

static void test_civil(void **state)
{
    assert_int_equal(timefmt_days_from_civil(1970, 1, 1), 0);
    assert_int_equal(timefmt_days_from_civil(2000, 3, 1), 11017);
    assert_int_equal(timefmt_days_from_civil(1969, 12, 31), -1);
    assert_int_equal(timefmt_days_from_civil(1600, 1, 1), -135140);
    /* every day from 1599 to 2401 round-trips and advances by one */
    int64_t first = timefmt_days_from_civil(1599, 1, 1);
    int64_t last = timefmt_days_from_civil(2401, 12, 31);
    for (int64_t d = first; d <= last; d++) {
        struct timefmt_tm tm;
        timefmt_breakdown(d * 86400 + 3723, &tm);
        assert_int_equal(timefmt_days_from_civil(tm.year, tm.month, tm.day), d);
        assert_int_equal(tm.hour * 3600 + tm.minute * 60 + tm.second, 3723);
        assert_int_equal(tm.wday, (int)(((d % 7) + 11) % 7));
    }
}

struct prow {
    int rfc; /* 3339 or 2822 */
    const char *in;
    int rc;
    int64_t sec;
    int32_t nsec;
};

static const struct prow prows[] = {
    {3339, "2000-01-02T03:04:05+00:00", 0, 946782245, 0},
    {3339, "2000-01-02T03:04:05Z", 0, 946782245, 0},
    {3339, "2000-01-02 03:04:05.5-00:30", 0, 946784045, 500000000},
    {3339, "1969-12-31T23:59:59.999999999Z", 0, -1, 999999999},
    {3339, "2016-12-31T23:59:60Z", 0, 1483228799, 0}, /* leap second */
    {3339, "2000-01-02T03:04:05", KERR_PARSE, 0, 0},
    {3339, "2000-01-02T03:04:05.Z", KERR_PARSE, 0, 0},
    {3339, "2000-02-30T03:04:05Z", KERR_PARSE, 0, 0},
    {3339, "2000-01-02T24:00:00Z", KERR_PARSE, 0, 0},
    {3339, "2000-01-02T03:04:05Z ", KERR_PARSE, 0, 0},
    {2822, "Sun, 2 Jan 2000 03:04:05 +0000", 0, 946782245, 0},
    {2822, "2 Jan 2000 03:04:05 +0100", 0, 946778645, 0},
    {2822, "Sunday, 2 January 2000 03:04:05 PDT", 0, 946782245 + 7 * 3600, 0},
    {2822, "Sun, 2 Jan 99 03:04 Z", 0, 915246240, 0},
    {2822, "Sun , 2 Jan 2000 03 : 04 : 05 (x (nested)) +0000 (c)", 0, 946782245, 0},
    {2822, "Sun, 2 Jan 2000 03:04:05 A", 0, 946782245, 0}, /* military: -0000 */
    {2822, "Sun, 2 Jan 2000 03:04:05 J", KERR_PARSE, 0, 0},
    {2822, "Sun, 2 Foo 2000 03:04:05 +0000", KERR_PARSE, 0, 0},
    {2822, "Sun 2 Jan 2000 03:04:05 +0000", KERR_PARSE, 0, 0},
    {2822, "Sun, 2 Jan 2000 03:04:05 +000", KERR_PARSE, 0, 0},
    {2822, "Sun, 2 Jan 2000 03:04:05", KERR_PARSE, 0, 0},
    {2822, "", KERR_PARSE, 0, 0},
};

static void test_parse(void **state)
{
    for (size_t i = 0; i < ARRAY_LEN(prows); i++) {
        int64_t sec = 0;
        int32_t nsec = 0;
        const struct prow *r = &prows[i];
        int rc = r->rfc == 3339 ? timefmt_parse_rfc3339(r->in, strlen(r->in), &sec, &nsec)
                                : timefmt_parse_rfc2822(r->in, strlen(r->in), &sec, &nsec);
        if (rc != r->rc)
            fail_msg("%s: rc %d, expected %d", r->in, rc, r->rc);
        if (rc == 0) {
            if (sec != r->sec || nsec != r->nsec)
                fail_msg("%s: %lld.%09d, expected %lld.%09d", r->in, (long long)sec, nsec,
                         (long long)r->sec, r->nsec);
        }
    }
}

static void test_format(void **state)
{
    char buf[128];
    assert_int_equal(timefmt_format(946782245, 0, "%Y-%m-%d", buf, sizeof(buf)), 10);
    assert_string_equal(buf, "2000-01-02");
    /* snprintf-like truncation */
    assert_int_equal(timefmt_format(946782245, 0, "%Y-%m-%d", buf, 5), 10);
    assert_string_equal(buf, "2000");
    timefmt_format(-62135596800LL, 0, "%Y|%C|%y", buf, sizeof(buf)); /* 0001-01-01 */
    assert_string_equal(buf, "0001|00|01");
    timefmt_format(253402300800LL, 0, "%Y", buf, sizeof(buf)); /* 10000-01-01 */
    assert_string_equal(buf, "+10000");
    timefmt_format(0, 123000, "%.f|%.3f|%9f|%f", buf, sizeof(buf));
    assert_string_equal(buf, ".000123|.000|000123000|000123000");
    timefmt_format(0, 0, "%", buf, sizeof(buf));
    assert_string_equal(buf, "%");
    timefmt_format(0, 0, "%-", buf, sizeof(buf));
    assert_string_equal(buf, "%-");
    timefmt_format(0, 0, "%::z %:::z %#z %:x", buf, sizeof(buf));
    assert_string_equal(buf, "+00:00:00 +00 +00 %:x");
    /* ISO weeks at year boundaries: 2008-12-29 is 2009-W01, 2010-01-03 is 2009-W53 */
    timefmt_format(timefmt_days_from_civil(2008, 12, 29) * 86400, 0, "%G-%V", buf, sizeof(buf));
    assert_string_equal(buf, "2009-01");
    timefmt_format(timefmt_days_from_civil(2010, 1, 3) * 86400, 0, "%G-%V", buf, sizeof(buf));
    assert_string_equal(buf, "2009-53");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_civil),
        cmocka_unit_test(test_parse),
        cmocka_unit_test(test_format),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
