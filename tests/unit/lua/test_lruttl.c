/* Unit tests for src/lua/lib/lruttl.c: slots, recency eviction, expiry,
 * refresh, and a long random run checked against a naive model. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "lua/lib/lruttl.h"

#define K(s) s, strlen(s)

static void test_basic(void **state)
{
    lruttl *c = lruttl_new(2);
    assert_non_null(c);
    assert_int_equal(lruttl_get(c, K("a"), 0), -1);
    long a = lruttl_put(c, K("a"), 100);
    long b = lruttl_put(c, K("b"), 100);
    assert_true(a >= 0 && a < 2 && b >= 0 && b < 2 && a != b);
    assert_int_equal(lruttl_get(c, K("a"), 10), a); /* a is now the most recent */
    long cc = lruttl_put(c, K("c"), 100);           /* evicts b, reuses its slot */
    assert_int_equal(cc, b);
    assert_int_equal(lruttl_get(c, K("b"), 10), -1);
    assert_int_equal(lruttl_get(c, K("a"), 10), a);
    assert_int_equal(lruttl_evictions(c), 1);
    assert_int_equal(lruttl_size(c), 2);
    /* expiry: at the expiry time the entry is gone */
    assert_int_equal(lruttl_get(c, K("a"), 100), -1);
    assert_int_equal(lruttl_size(c), 1);
    /* refresh keeps the slot */
    assert_int_equal(lruttl_put(c, K("c"), 500), cc);
    assert_int_equal(lruttl_get(c, K("c"), 400), cc);
    /* keys are bytes: embedded NULs and prefixes differ */
    long n1 = lruttl_put(c, "x\0y", 3, 1000);
    assert_int_equal(lruttl_get(c, "x\0z", 3, 0), -1);
    assert_int_equal(lruttl_get(c, "x", 1, 0), -1);
    assert_int_equal(lruttl_get(c, "x\0y", 3, 0), n1);
    lruttl_free(c);
    lruttl_free(NULL);
}

static void test_capacity_one_and_zero(void **state)
{
    lruttl *c = lruttl_new(0); /* treated as 1 */
    assert_int_equal(lruttl_capacity(c), 1);
    assert_int_equal(lruttl_put(c, K("a"), 10), 0);
    assert_int_equal(lruttl_put(c, K("b"), 10), 0);
    assert_int_equal(lruttl_get(c, K("a"), 0), -1);
    assert_int_equal(lruttl_get(c, K("b"), 0), 0);
    lruttl_free(c);
}

/* A naive model: arrays of keys with last-use stamps. */
static void test_random_against_model(void **state)
{
    enum { CAP = 16, KEYS = 64, STEPS = 20000 };
    lruttl *c = lruttl_new(CAP);
    int present[KEYS];
    long stamp[KEYS], expires[KEYS], slot[KEYS];
    memset(present, 0, sizeof(present));
    srand(7);
    long now = 0;
    for (int step = 0; step < STEPS; step++) {
        now += rand() % 3;
        int k = rand() % KEYS;
        char key[16];
        snprintf(key, sizeof(key), "k%d", k);
        if (rand() % 2) {
            long got = lruttl_get(c, K(key), now);
            bool live = present[k] && expires[k] > now;
            if (present[k] && !live)
                present[k] = 0;
            if (live) {
                assert_int_equal(got, slot[k]);
                stamp[k] = step;
            } else {
                assert_int_equal(got, -1);
            }
        } else {
            int count = 0, oldest = -1;
            for (int i = 0; i < KEYS; i++)
                if (present[i]) {
                    count++;
                    if (oldest < 0 || stamp[i] < stamp[oldest])
                        oldest = i;
                }
            if (!present[k] && count == CAP)
                present[oldest] = 0;
            long s = lruttl_put(c, K(key), now + 20);
            assert_true(s >= 0 && s < CAP);
            for (int i = 0; i < KEYS; i++)
                if (present[i] && i != k)
                    assert_int_not_equal(slot[i], s);
            present[k] = 1;
            slot[k] = s;
            stamp[k] = step;
            expires[k] = now + 20;
        }
    }
    lruttl_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_basic),
        cmocka_unit_test(test_capacity_one_and_zero),
        cmocka_unit_test(test_random_against_model),
    };
    return cmocka_run_group_tests_name("lua/lruttl", tests, NULL, NULL);
}
