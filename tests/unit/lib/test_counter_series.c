/* Unit tests for the ring of src/lua/lib/counter_series.c: rotation as time
 * passes (one bucket, several, more than the ring), sum_over rounding and
 * capping, saturation both ways, observe. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cmocka.h>

#include "lua/lib/counter_series.h"

static void test_rotation(void **state)
{
    /* 5 buckets of 60 s, starting at t = 1000 (slot 16) */
    cseries *s = cseries_new(5, 60, 2, 1000);
    assert_non_null(s);
    assert_int_equal(cseries_sum_over(s, UINT64_MAX, 1000), 2);
    cseries_increment(s, 3, 1019);  /* same slot */
    cseries_increment(s, 10, 1020); /* next slot */
    assert_int_equal(cseries_sum_over(s, 60, 1020), 10);
    assert_int_equal(cseries_sum_over(s, 61, 1020), 15); /* rounds up to 2 buckets */
    assert_int_equal(cseries_sum_over(s, 1, 1020), 10);
    assert_int_equal(cseries_sum_over(s, 0, 1020), 10);
    assert_int_equal(cseries_sum_over(s, UINT64_MAX, 1020), 15);
    /* 4 slots later the first bucket is the oldest still kept */
    assert_int_equal(cseries_sum_over(s, UINT64_MAX, 1020 + 3 * 60), 15);
    /* one more and it ages out */
    assert_int_equal(cseries_sum_over(s, UINT64_MAX, 1020 + 4 * 60), 10);
    /* a long silence clears everything */
    assert_int_equal(cseries_sum_over(s, UINT64_MAX, 1020 + 100 * 60), 0);
    cseries_increment(s, 1, 1020 + 100 * 60);
    assert_int_equal(cseries_sum_over(s, UINT64_MAX, 1020 + 100 * 60), 1);
    cseries_free(s);
}

static void test_saturation(void **state)
{
    cseries *s = cseries_new(2, 1, 0, 0);
    cseries_delta(s, -5, 0);
    assert_int_equal(cseries_sum_over(s, 2, 0), 0);
    cseries_increment(s, UINT64_MAX - 1, 0);
    cseries_delta(s, 5, 0);
    assert_true(cseries_sum_over(s, 1, 0) == UINT64_MAX);
    cseries_increment(s, UINT64_MAX, 1); /* the sum of two saturates too */
    assert_true(cseries_sum_over(s, 2, 1) == UINT64_MAX);
    cseries_delta(s, INT64_MIN, 1);
    assert_true(cseries_sum_over(s, 1, 1) == UINT64_MAX - (uint64_t)INT64_MAX - 1);
    cseries_observe(s, 7, 1);
    assert_int_equal(cseries_sum_over(s, 1, 1), 7);
    cseries_free(s);
}

static void test_shape(void **state)
{
    assert_null(cseries_new(0, 1, 0, 0));
    assert_null(cseries_new(1, 0, 0, 0));
    cseries *s = cseries_new(3, 10, 0, 0);
    assert_int_equal(cseries_num_buckets(s), 3);
    assert_int_equal(cseries_bucket_secs(s), 10);
    cseries_free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rotation),
        cmocka_unit_test(test_saturation),
        cmocka_unit_test(test_shape),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
