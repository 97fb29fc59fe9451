/* Unit tests for src/msg/msgtrace.c: sampling by id, the ring that evicts
 * the oldest trace, a loaded message joining (never re-making) a trace,
 * the step cap, private traces, resizing, and cutting long details on a
 * character boundary. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "core/kerr.h"
#include "core/spoolid.h"
#include "msg/msgtrace.h"

static void make_ids(spoolid *ids, size_t n)
{
    for (size_t i = 0; i < n; i++)
        spoolid_new(&ids[i]);
}

static int teardown(void **state)
{
    (void)state;
    msgtrace_shutdown();
    return 0;
}

static void test_off_by_default(void **state)
{
    (void)state;
    spoolid id;
    spoolid_new(&id);
    assert_null(msgtrace_for(&id));
    assert_null(msgtrace_private(&id));
    assert_null(msgtrace_json(&id));
}

static void test_ring_evicts_oldest(void **state)
{
    (void)state;
    assert_int_equal(msgtrace_configure(1.0, 3), 0);
    spoolid ids[5];
    make_ids(ids, 5);
    for (int i = 0; i < 5; i++) {
        msgtrace *t = msgtrace_for(&ids[i]);
        assert_non_null(t);
        msgtrace_add(t, "set_meta", "policy.lua:7", "meta n = %d", i);
        msgtrace_unref(t);
    }
    assert_int_equal(msgtrace_count(), 3);
    assert_null(msgtrace_json(&ids[0]));
    assert_null(msgtrace_json(&ids[1]));
    /* an evicted id loaded again stays untraced and evicts nothing */
    assert_null(msgtrace_find(&ids[0]));
    for (int i = 2; i < 5; i++) {
        json_t *j = msgtrace_json(&ids[i]);
        assert_non_null(j);
        json_t *st = json_array_get(json_object_get(j, "steps"), 0);
        char want[32];
        snprintf(want, sizeof(want), "meta n = %d", i);
        assert_string_equal(json_string_value(json_object_get(st, "detail")), want);
        assert_string_equal(json_string_value(json_object_get(st, "where")), "policy.lua:7");
        assert_string_equal(json_string_value(json_object_get(st, "kind")), "set_meta");
        json_decref(j);
        msgtrace *t = msgtrace_find(&ids[i]);
        assert_non_null(t);
        msgtrace_unref(t);
    }
    /* shrinking keeps the newest */
    assert_int_equal(msgtrace_configure(1.0, 1), 0);
    assert_int_equal(msgtrace_count(), 1);
    assert_null(msgtrace_json(&ids[3]));
    json_t *j = msgtrace_json(&ids[4]);
    assert_non_null(j);
    json_decref(j);
    assert_int_equal(msgtrace_configure(1.0, 0), KERR_INVAL);
    assert_int_equal(msgtrace_configure(1.5, 2), KERR_INVAL);
}

static void test_trace_outlives_eviction_while_held(void **state)
{
    (void)state;
    assert_int_equal(msgtrace_configure(1.0, 1), 0);
    spoolid ids[2];
    make_ids(ids, 2);
    msgtrace *held = msgtrace_for(&ids[0]);
    msgtrace *t2 = msgtrace_for(&ids[1]);                  /* evicts the first */
    msgtrace_add(held, "handler", NULL, "still writable"); /* no use after free (ASan) */
    assert_null(msgtrace_json(&ids[0]));
    msgtrace_unref(held);
    msgtrace_unref(t2);
}

static void test_step_cap_and_cut(void **state)
{
    (void)state;
    assert_int_equal(msgtrace_configure(1.0, 4), 0);
    spoolid id;
    spoolid_new(&id);
    msgtrace *t = msgtrace_for(&id);
    char big[600];
    /* 'é' is two bytes: a cut must not split one */
    for (size_t i = 0; i + 2 < sizeof(big); i += 2)
        memcpy(big + i, "\xc3\xa9", 2);
    big[sizeof(big) - 2] = 0;
    msgtrace_add(t, "set_meta", NULL, "%s", big);
    for (int i = 1; i < MSGTRACE_MAX_STEPS + 10; i++)
        msgtrace_add(t, "set_meta", NULL, "step %d", i);
    json_t *j = msgtrace_json(&id);
    json_t *steps = json_object_get(j, "steps");
    assert_int_equal(json_array_size(steps), MSGTRACE_MAX_STEPS);
    assert_int_equal(json_integer_value(json_object_get(j, "dropped")), 10);
    const char *d = json_string_value(json_object_get(json_array_get(steps, 0), "detail"));
    assert_non_null(d); /* valid UTF-8, or jansson would have refused it */
    assert_true(strlen(d) < 200);
    assert_string_equal(d + strlen(d) - 3, "...");
    json_decref(j);
    msgtrace_unref(t);
}

static void test_private_copy(void **state)
{
    (void)state;
    assert_int_equal(msgtrace_configure(1.0, 4), 0);
    spoolid base, id;
    spoolid_new(&base);
    spoolid_new(&id);
    msgtrace *b = msgtrace_private(&base);
    assert_non_null(b);
    msgtrace_add(b, "handler", "p.lua:1", "smtp_server_data");
    assert_int_equal(msgtrace_count(), 0); /* private: not stored */
    msgtrace *t = msgtrace_force(&id);
    msgtrace_copy_steps(t, b);
    msgtrace_unref(b);
    json_t *j = msgtrace_json(&id);
    assert_int_equal(json_array_size(json_object_get(j, "steps")), 1);
    json_decref(j);
    msgtrace_unref(t);
}

static void test_rate_samples_a_fraction(void **state)
{
    (void)state;
    assert_int_equal(msgtrace_configure(0.25, 100000), 0);
    enum { N = 20000 };
    static spoolid ids[N];
    make_ids(ids, N);
    int n = 0;
    for (int i = 0; i < N; i++) {
        msgtrace *t = msgtrace_for(&ids[i]);
        if (t) {
            n++;
            /* the decision is the id's: asked again, the same answer */
            msgtrace *again = msgtrace_find(&ids[i]);
            assert_ptr_equal(again, t);
            msgtrace_unref(again);
            msgtrace_unref(t);
        } else {
            assert_null(msgtrace_find(&ids[i]));
        }
    }
    assert_in_range(n, N / 4 - N / 20, N / 4 + N / 20);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_off_by_default, teardown),
        cmocka_unit_test_teardown(test_ring_evicts_oldest, teardown),
        cmocka_unit_test_teardown(test_trace_outlives_eviction_while_held, teardown),
        cmocka_unit_test_teardown(test_step_cap_and_cut, teardown),
        cmocka_unit_test_teardown(test_private_copy, teardown),
        cmocka_unit_test_teardown(test_rate_samples_a_fraction, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
