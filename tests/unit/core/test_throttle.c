/* Unit tests for src/core/throttle.c: the KumoMTA throttle grammar and the GCRA
 * limiter (burst, steady rate, waits, idle refill, long-run rate). */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "core/kerr.h"
#include "core/throttle.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define SEC 1000000000LL
#define MSEC 1000000LL

struct parse_row {
    const char *in;
    int rc;
    uint64_t limit;
    int64_t period_s;
    uint64_t max_burst;
    bool local;
};

static const struct parse_row parse_rows[] = {
    {"100/s", 0, 100, 1, 100, false},
    {"100/sec", 0, 100, 1, 100, false},
    {"100/second", 0, 100, 1, 100, false},
    {"50/m", 0, 50, 60, 50, false},
    {"50/min", 0, 50, 60, 50, false},
    {"50/minute", 0, 50, 60, 50, false},
    {"1,000/hr", 0, 1000, 3600, 1000, false},
    {"1_000/h", 0, 1000, 3600, 1000, false},
    {"1000/hour", 0, 1000, 3600, 1000, false},
    {"5,000/hour", 0, 5000, 3600, 5000, false},
    {"10_000/d", 0, 10000, 86400, 10000, false},
    {"10,000/day", 0, 10000, 86400, 10000, false},
    {"1_0,0/hour", 0, 100, 3600, 100, false},
    {"local:10/m", 0, 10, 60, 10, true},
    {"local:100/hr", 0, 100, 3600, 100, true},
    {"10/5m", 0, 10, 300, 10, false},
    {"local:100/123m", 0, 100, 123 * 60, 100, true},
    {"10/5 minutes", 0, 10, 300, 10, false},
    {"2/3days", 0, 2, 3 * 86400, 2, false},
    {"50/day,max_burst=5", 0, 50, 86400, 5, false},
    {"local:5,000/hour,max_burst=10", 0, 5000, 3600, 10, true},
    {"1,000,000/d,max_burst=1_000", 0, 1000000, 86400, 1000, false},
    {"18446744073709551615/s", 0, UINT64_MAX, 1, UINT64_MAX, false},
    /* rejected */
    {"0/s", KERR_PARSE, 0, 0, 0, false},
    {"0,000/s", KERR_PARSE, 0, 0, 0, false},
    {"abc", KERR_PARSE, 0, 0, 0, false},
    {"10/", KERR_PARSE, 0, 0, 0, false},
    {"10/xyz", KERR_PARSE, 0, 0, 0, false},
    {"", KERR_PARSE, 0, 0, 0, false},
    {"local:", KERR_PARSE, 0, 0, 0, false},
    {"/s", KERR_PARSE, 0, 0, 0, false},
    {",_/s", KERR_PARSE, 0, 0, 0, false},
    {"10", KERR_PARSE, 0, 0, 0, false},
    {"-1/s", KERR_PARSE, 0, 0, 0, false},
    {"10 /s", KERR_PARSE, 0, 0, 0, false},
    {"10/ s", KERR_PARSE, 0, 0, 0, false},
    {"10/s ", KERR_PARSE, 0, 0, 0, false},
    {"10/S", KERR_PARSE, 0, 0, 0, false},
    {"10/ms", KERR_PARSE, 0, 0, 0, false},
    {"10/0m", KERR_PARSE, 0, 0, 0, false},
    {"10/5", KERR_PARSE, 0, 0, 0, false},
    {"10/s/s", KERR_PARSE, 0, 0, 0, false},
    {"10/s,max_burst=0", KERR_PARSE, 0, 0, 0, false},
    {"10/s,max_burst=", KERR_PARSE, 0, 0, 0, false},
    {"10/s,max_burst=x", KERR_PARSE, 0, 0, 0, false},
    {"10/s,burst=5", KERR_PARSE, 0, 0, 0, false},
    {"Local:10/s", KERR_PARSE, 0, 0, 0, false},
    {"18446744073709551616/s", KERR_PARSE, 0, 0, 0, false},
    {"10/99999999999999d", KERR_PARSE, 0, 0, 0, false},
};

static void test_spec_parse_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(parse_rows); i++) {
        const struct parse_row *r = &parse_rows[i];
        throttle_spec spec;
        memset(&spec, 0xa5, sizeof(spec));
        int rc = throttle_spec_parse(r->in, &spec);
        if (rc != r->rc) {
            print_error("throttle_spec_parse(\"%s\") = %d; want %d\n", r->in, rc, r->rc);
            fail();
        }
        if (rc != 0)
            continue;
        if (spec.limit != r->limit || spec.period_ns != r->period_s * SEC ||
            spec.max_burst != r->max_burst || spec.local != r->local) {
            print_error("throttle_spec_parse(\"%s\") = {%llu, %lld, %llu, %d}\n", r->in,
                        (unsigned long long)spec.limit, (long long)spec.period_ns,
                        (unsigned long long)spec.max_burst, spec.local);
            fail();
        }
    }
    throttle_spec spec;
    assert_int_equal(throttle_spec_parse(NULL, &spec), KERR_INVAL);
}

/* One call pattern: at at_ms (relative to a base time), take repeat times and
 * expect each take to give want_ns (0 = allowed). */
struct step {
    int64_t at_ms;
    int repeat;
    int64_t want_ns;
};

struct take_row {
    const char *name;
    const char *spec;
    struct step steps[8];
};

static const struct take_row take_rows[] = {
    {"full burst then one per interval",
     "10/s",
     {{0, 10, 0},
      {0, 1, 100 * MSEC},
      {40, 1, 60 * MSEC},
      {100, 1, 0},
      {100, 1, 100 * MSEC},
      {-1, 0, 0}}},
    {"max_burst=1 spaces every event",
     "60/m,max_burst=1",
     {{0, 1, 0},
      {0, 1, SEC},
      {500, 1, 500 * MSEC},
      {1000, 1, 0},
      {1500, 1, 500 * MSEC},
      {-1, 0, 0}}},
    {"small burst of a daily limit",
     "50/day,max_burst=5",
     {{0, 5, 0}, {0, 1, 1728 * SEC}, {1728000, 1, 0}, {1728000, 1, 1728 * SEC}, {-1, 0, 0}}},
    {"refused takes do not push the wait out",
     "1/s",
     {{0, 1, 0}, {0, 3, SEC}, {250, 3, 750 * MSEC}, {1000, 1, 0}, {-1, 0, 0}}},
    {"idle time refills the burst but never beyond it",
     "10/s",
     {{0, 10, 0}, {60000, 10, 0}, {60000, 1, 100 * MSEC}, {-1, 0, 0}}},
    {"steady rate at exactly the limit is never refused",
     "4/s,max_burst=1",
     {{0, 1, 0},
      {250, 1, 0},
      {500, 1, 0},
      {750, 1, 0},
      {1000, 1, 0},
      {1100, 1, 150 * MSEC},
      {-1, 0, 0}}},
    {"more than one event per nanosecond is never limited",
     "2,000,000,000/s",
     {{0, 1000, 0}, {-1, 0, 0}}},
    {"counted period: 10 per 5 minutes",
     "10/5m,max_burst=2",
     {{0, 2, 0}, {0, 1, 30 * SEC}, {30000, 1, 0}, {30000, 1, 30 * SEC}, {-1, 0, 0}}},
};

static void test_take_table(void **state)
{
    (void)state;
    /* A monotonic clock in ns, far from zero as a real one is. */
    const int64_t base = 12345 * SEC;
    for (size_t i = 0; i < ARRAY_LEN(take_rows); i++) {
        const struct take_row *r = &take_rows[i];
        throttle_spec spec;
        assert_int_equal(throttle_spec_parse(r->spec, &spec), 0);
        throttle_state st = {0};
        for (const struct step *s = r->steps; s->at_ms >= 0; s++) {
            for (int k = 0; k < s->repeat; k++) {
                int64_t now = base + s->at_ms * MSEC;
                throttle_state before = st;
                int64_t got = throttle_take(&st, &spec, now);
                if (got != s->want_ns) {
                    print_error("%s (%s): at %lldms take #%d gave %lld, want %lld\n", r->name,
                                r->spec, (long long)s->at_ms, k + 1, (long long)got,
                                (long long)s->want_ns);
                    fail();
                }
                if (got > 0 && st.tat_ns != before.tat_ns) {
                    print_error("%s: a refused take changed the state\n", r->name);
                    fail();
                }
            }
        }
    }
}

struct rate_row {
    const char *spec;
    int64_t horizon_s;
    uint64_t want; /* burst at the start plus limit per period over the horizon */
};

/* A caller that takes as fast as it is allowed, sleeping exactly the wait it is
 * told, gets the burst plus the configured rate, and never a token early. */
static void test_long_run_rate(void **state)
{
    (void)state;
    static const struct rate_row rows[] = {
        {"1000/h,max_burst=10", 10 * 3600, 10 + 10 * 1000},
        {"100/s", 60, 100 + 60 * 100},
        {"7/s,max_burst=1", 100, 1 + 700},
        {"3/5m", 3600, 3 + 12 * 3},
    };
    for (size_t i = 0; i < ARRAY_LEN(rows); i++) {
        throttle_spec spec;
        assert_int_equal(throttle_spec_parse(rows[i].spec, &spec), 0);
        throttle_state st = {0};
        const int64_t start = 1000 * SEC;
        int64_t now = start;
        uint64_t taken = 0;
        while (now <= start + rows[i].horizon_s * SEC) {
            int64_t wait = throttle_take(&st, &spec, now);
            if (wait == 0) {
                taken++;
            } else {
                assert_true(wait > 0);
                /* one nanosecond early is still refused */
                throttle_state copy = st;
                assert_true(throttle_take(&copy, &spec, now + wait - 1) > 0);
                now += wait;
            }
        }
        /* Truncating the interval to whole ns may admit one extra at the end. */
        if (taken < rows[i].want || taken > rows[i].want + 1) {
            print_error("%s over %llds: %llu taken, want %llu\n", rows[i].spec,
                        (long long)rows[i].horizon_s, (unsigned long long)taken,
                        (unsigned long long)rows[i].want);
            fail();
        }
    }
}

#define NS_PER_SEC_T 1000000000LL

/* throttle_take_n: the batched GCRA that the Redis script mirrors. */
static void test_take_n(void **state)
{
    (void)state;
    throttle_spec spec;
    assert_int_equal(throttle_spec_parse("60/m", &spec), 0);
    throttle_state st = {0};
    int64_t now = 1000 * NS_PER_SEC_T;
    uint64_t got = 0;
    throttle_info info;
    /* the whole burst (60) at once, then nothing */
    assert_int_equal(throttle_take_n(&st, &spec, now, 100, &got, &info), 0);
    assert_int_equal(got, 60);
    assert_int_equal(info.limit, 60);
    assert_int_equal(info.remaining, 0);
    assert_int_equal(info.reset_after_ns, 60 * NS_PER_SEC_T);
    int64_t wait = throttle_take_n(&st, &spec, now, 5, &got, &info);
    assert_int_equal(got, 0);
    assert_int_equal(wait, NS_PER_SEC_T); /* one interval */
    /* 2.5 s later: two tokens, of five asked */
    assert_int_equal(throttle_take_n(&st, &spec, now + 2500000000LL, 5, &got, &info), 0);
    assert_int_equal(got, 2);
    assert_int_equal(info.remaining, 0);
    /* a partial grant leaves the state as taking them one by one would */
    throttle_state a = {0}, b = {0};
    assert_int_equal(throttle_spec_parse("10/s,max_burst=3", &spec), 0);
    for (int i = 0; i < 50; i++) {
        int64_t t = now + i * 37000000LL;
        uint64_t n = 0, ones = 0;
        int64_t wa = throttle_take_n(&a, &spec, t, 2, &n, NULL);
        for (int k = 0; k < 2; k++)
            if (throttle_take(&b, &spec, t) == 0)
                ones++;
        assert_int_equal(n, ones);
        assert_int_equal(a.tat_ns, b.tat_ns);
        if (n == 0)
            assert_true(wa > 0);
    }
    /* want = 1 decides exactly as throttle_take */
    throttle_state c = {0}, d = {0};
    assert_int_equal(throttle_spec_parse("7/s", &spec), 0);
    for (int i = 0; i < 200; i++) {
        int64_t t = now + i * 50000000LL;
        uint64_t n = 0;
        int64_t w1 = throttle_take_n(&c, &spec, t, 1, &n, NULL);
        int64_t w2 = throttle_take(&d, &spec, t);
        assert_int_equal(w1, w2);
        assert_int_equal(n, w2 == 0 ? 1 : 0);
    }
    /* a spec allowing more than one per ns never limits */
    throttle_spec fast = {.limit = 10, .period_ns = 5, .max_burst = 10};
    throttle_state e = {0};
    assert_int_equal(throttle_take_n(&e, &fast, now, 1000, &got, NULL), 0);
    assert_int_equal(got, 1000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_spec_parse_table),
        cmocka_unit_test(test_take_table),
        cmocka_unit_test(test_long_run_rate),
        cmocka_unit_test(test_take_n),
    };
    return cmocka_run_group_tests_name("core/throttle", tests, NULL, NULL);
}
