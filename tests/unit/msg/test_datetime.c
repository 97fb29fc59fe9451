/* Unit tests for rfc3339_parse (src/msg/datetime.c): values, offsets,
 * fractions, and years that nanoseconds in 64 bits cannot hold (fuzz_reports
 * found year 1013 overflowing the multiplication). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "core/kerr.h"
#include "msg/datetime.h"

static void test_values(void **state)
{
    (void)state;
    int64_t ns = 0;
    assert_int_equal(rfc3339_parse("1970-01-01T00:00:00Z", &ns), 0);
    assert_int_equal(ns, 0);
    assert_int_equal(rfc3339_parse("2024-03-08T17:51:42.481711Z", &ns), 0);
    assert_int_equal(ns, 1709920302481711000LL);
    assert_int_equal(rfc3339_parse("2024-03-08 18:51:42+01:00", &ns), 0);
    assert_int_equal(ns, 1709920302000000000LL);
    assert_int_equal(rfc3339_parse("2024-03-08T17:51:42", &ns), KERR_PARSE);
    assert_int_equal(rfc3339_parse("2024-13-08T17:51:42Z", &ns), KERR_PARSE);
}

static void test_years_out_of_range(void **state)
{
    (void)state;
    int64_t ns = 0;
    assert_int_equal(rfc3339_parse("1013-01-01T00:00:00Z", &ns), KERR_RANGE);
    assert_int_equal(rfc3339_parse("0001-01-01T00:00:00Z", &ns), KERR_RANGE);
    assert_int_equal(rfc3339_parse("9999-12-31T23:59:59Z", &ns), KERR_RANGE);
    assert_int_equal(rfc3339_parse("2263-01-01T00:00:00Z", &ns), KERR_RANGE);
    assert_int_equal(rfc3339_parse("1678-01-01T00:00:00Z", &ns), 0);
    assert_true(ns < 0);
    assert_int_equal(rfc3339_parse("2261-12-31T23:59:59Z", &ns), 0);
    assert_true(ns > 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_values),
        cmocka_unit_test(test_years_out_of_range),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
