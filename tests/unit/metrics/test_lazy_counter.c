/* Unit tests for src/metrics/lazy_counter.c: nothing is registered before
 * the first count, each label value is its own series, and a name that
 * clashes with another family leaves the counter silent instead of
 * failing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "metrics/lazy_counter.h"

static char *render(void)
{
    size_t len = 0;
    char *s = metrics_render_prometheus(&len);
    assert_non_null(s);
    return s;
}

static void test_registers_on_first_count(void **state)
{
    (void)state;
    static metrics_lazy_counter lc =
        METRICS_LAZY_COUNTER("delayed_test_total", "Times a test delayed.", "queue");
    char *s = render();
    assert_null(strstr(s, "delayed_test_total"));
    free(s);
    metrics_lazy_counter_inc(&lc, "a.example");
    metrics_lazy_counter_inc(&lc, "a.example");
    metrics_lazy_counter_inc(&lc, "b.example");
    s = render();
    assert_non_null(strstr(s, "# HELP delayed_test_total Times a test delayed.\n"));
    assert_non_null(strstr(s, "delayed_test_total{queue=\"a.example\"} 2\n"));
    assert_non_null(strstr(s, "delayed_test_total{queue=\"b.example\"} 1\n"));
    free(s);
    metrics_shutdown();
}

static void test_clash_is_silent(void **state)
{
    (void)state;
    metrics_family *g = NULL;
    assert_int_equal(metrics_gauge_family(&g, "clash_total", "a gauge", NULL, 0), 0);
    static metrics_lazy_counter lc = METRICS_LAZY_COUNTER("clash_total", "a counter", "queue");
    metrics_lazy_counter_inc(&lc, "q");
    metrics_lazy_counter_inc(&lc, "q");
    char *s = render();
    assert_null(strstr(s, "clash_total{queue="));
    assert_non_null(strstr(s, "# TYPE clash_total gauge\n"));
    free(s);
    metrics_shutdown();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_registers_on_first_count),
        cmocka_unit_test(test_clash_is_silent),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
