/* Unit tests for src/metrics/ratering.c: the first sample is a baseline,
 * increases land in their second, a late sample spreads its increase, the
 * window forgets what is older than an hour, counter resets and samples
 * from the past. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "metrics/ratering.h"

static ratering *r;

static int setup(void **state)
{
    (void)state;
    r = malloc(sizeof(*r));
    ratering_init(r);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    free(r);
    return 0;
}

static void sample1(int64_t s, uint64_t received, uint64_t delivered)
{
    uint64_t t[RATE__COUNT] = {received, delivered, 0, 0, 0};
    ratering_sample(r, s, t);
}

static void test_baseline_then_deltas(void **state)
{
    (void)state;
    sample1(1000, 500, 400); /* totals since start: not a rate */
    uint32_t out[3];
    ratering_series(r, RATE_RECEIVED, 1000, out, 3);
    assert_int_equal(out[0] + out[1] + out[2], 0);
    sample1(1001, 510, 401);
    sample1(1002, 513, 401);
    ratering_series(r, RATE_RECEIVED, 1002, out, 3);
    assert_int_equal(out[0], 0);
    assert_int_equal(out[1], 10);
    assert_int_equal(out[2], 3);
    ratering_series(r, RATE_DELIVERED, 1002, out, 3);
    assert_int_equal(out[1], 1);
    assert_int_equal(out[2], 0);
    assert_int_equal(ratering_sum(r, RATE_RECEIVED, 1002, 60), 13);
    /* a second not sampled yet reads 0 */
    ratering_series(r, RATE_RECEIVED, 1003, out, 2);
    assert_int_equal(out[0], 3);
    assert_int_equal(out[1], 0);
}

static void test_late_sample_spreads(void **state)
{
    (void)state;
    sample1(2000, 0, 0);
    sample1(2004, 10, 0); /* three seconds late: 10 over 4 seconds */
    uint32_t out[4];
    ratering_series(r, RATE_RECEIVED, 2004, out, 4);
    assert_int_equal(out[0] + out[1] + out[2] + out[3], 10);
    for (int i = 0; i < 4; i++)
        assert_true(out[i] == 2 || out[i] == 3);
    /* the remainder goes to the latest seconds */
    assert_int_equal(out[3], 3);
    assert_int_equal(out[0], 2);
}

static void test_same_second_accumulates(void **state)
{
    (void)state;
    sample1(3000, 0, 0);
    sample1(3001, 4, 0);
    sample1(3001, 6, 0);
    sample1(2999, 100, 0); /* from the past: ignored */
    uint32_t out[1];
    ratering_series(r, RATE_RECEIVED, 3001, out, 1);
    assert_int_equal(out[0], 6);
}

static void test_window_forgets_an_hour_ago(void **state)
{
    (void)state;
    sample1(10000, 0, 0);
    sample1(10001, 7, 0);
    for (int64_t s = 10002; s <= 10001 + RATERING_SECONDS; s++)
        sample1(s, 7, 0);
    assert_int_equal(ratering_sum(r, RATE_RECEIVED, 10001 + RATERING_SECONDS, RATERING_SECONDS),
                     0);
    /* one more second back is outside the window and reads 0, not a stale slot */
    uint32_t *out = calloc(RATERING_SECONDS, sizeof(*out));
    assert_int_equal(ratering_series(r, RATE_RECEIVED, 10001 + RATERING_SECONDS, out,
                                     RATERING_SECONDS + 5),
                     RATERING_SECONDS);
    free(out);
}

static void test_long_gap_and_reset(void **state)
{
    (void)state;
    sample1(20000, 0, 0);
    sample1(20000 + 2 * RATERING_SECONDS, 7200, 0); /* two hours: half is in the window */
    uint64_t sum = ratering_sum(r, RATE_RECEIVED, 20000 + 2 * RATERING_SECONDS, RATERING_SECONDS);
    assert_int_equal(sum, 3600);
    /* a counter that went down counts from zero */
    sample1(20001 + 2 * RATERING_SECONDS, 5, 0);
    uint32_t out[1];
    ratering_series(r, RATE_RECEIVED, 20001 + 2 * RATERING_SECONDS, out, 1);
    assert_int_equal(out[0], 5);
    assert_string_equal(ratering_kind_name(RATE_EXPIRED), "expired");
    assert_string_equal(ratering_kind_name(99), "?");
    assert_int_equal(ratering_series(r, 99, 0, out, 1), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_baseline_then_deltas, setup, teardown),
        cmocka_unit_test_setup_teardown(test_late_sample_spreads, setup, teardown),
        cmocka_unit_test_setup_teardown(test_same_second_accumulates, setup, teardown),
        cmocka_unit_test_setup_teardown(test_window_forgets_an_hour_ago, setup, teardown),
        cmocka_unit_test_setup_teardown(test_long_gap_and_reset, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
