/* Unit tests for src/core/slab.c: distinct zeroed objects, reuse of freed
 * ones before new chunks, accounting, and use from several threads. Under
 * AddressSanitizer the pool passes through to calloc/free; the tests that
 * look at chunk reuse then check only what still holds. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/slab.h"

#if defined(__SANITIZE_ADDRESS__)
#define POOLED 0
#else
#define POOLED 1
#endif

struct obj {
    uint64_t a, b, c;
    char tail[69]; /* odd size: rounded up to pointer alignment */
};

static int cmp_ptr(const void *x, const void *y)
{
    uintptr_t a = *(const uintptr_t *)x, b = *(const uintptr_t *)y;
    return a < b ? -1 : a > b;
}

static void test_distinct_zeroed_aligned(void **state)
{
    (void)state;
    slab *s = slab_new(sizeof(struct obj));
    assert_non_null(s);
    enum { N = 5000 }; /* several chunks */
    void **p = malloc(N * sizeof(*p));
    for (int i = 0; i < N; i++) {
        p[i] = slab_alloc(s);
        assert_int_equal((uintptr_t)p[i] % sizeof(void *), 0);
        const unsigned char *b = p[i];
        for (size_t k = 0; k < sizeof(struct obj); k++)
            assert_int_equal(b[k], 0);
        memset(p[i], 0xa5, sizeof(struct obj));
    }
    qsort(p, N, sizeof(*p), cmp_ptr);
    for (int i = 1; i < N; i++) /* no overlap */
        assert_true((uintptr_t)p[i] - (uintptr_t)p[i - 1] >= sizeof(struct obj));
    slab_stats st;
    slab_get_stats(s, &st);
    assert_int_equal(st.in_use, N);
    if (POOLED) {
        /* 64 KiB chunks of 96-byte objects: 682 per chunk */
        assert_int_equal(st.chunks, (N + 681) / 682);
    }
    for (int i = 0; i < N; i++)
        slab_release(s, p[i]);
    slab_get_stats(s, &st);
    assert_int_equal(st.in_use, 0);
    free(p);
    slab_free_all(s);
}

static void test_freed_objects_are_reused_and_rezeroed(void **state)
{
    (void)state;
    slab *s = slab_new(sizeof(struct obj));
    enum { N = 2000 };
    void *p[N];
    for (int i = 0; i < N; i++) {
        p[i] = slab_alloc(s);
        memset(p[i], 0xff, sizeof(struct obj));
    }
    slab_stats before;
    slab_get_stats(s, &before);
    for (int i = 0; i < N; i++)
        slab_release(s, p[i]);
    for (int i = 0; i < N; i++) {
        p[i] = slab_alloc(s);
        const unsigned char *b = p[i];
        for (size_t k = 0; k < sizeof(struct obj); k++)
            assert_int_equal(b[k], 0);
    }
    slab_stats after;
    slab_get_stats(s, &after);
    assert_int_equal(after.chunks, before.chunks); /* nothing new taken */
    assert_int_equal(after.in_use, N);
    for (int i = 0; i < N; i++)
        slab_release(s, p[i]);
    slab_free_all(s);
}

static void test_tiny_objects_hold_the_free_link(void **state)
{
    (void)state;
    slab *s = slab_new(1);
    void *a = slab_alloc(s), *b = slab_alloc(s);
    assert_ptr_not_equal(a, b);
    slab_release(s, a);
    slab_release(s, b);
    slab_release(s, NULL); /* ignored */
    slab_stats st;
    slab_get_stats(s, &st);
    assert_int_equal(st.in_use, 0);
    slab_free_all(s);
}

struct worker {
    slab *s;
    int rounds;
    bool bad;
};

/* Allocate a batch, stamp it with this thread's mark, check the stamps
 * survive (no object handed out twice), free, repeat. */
static void *worker_main(void *arg)
{
    struct worker *w = arg;
    enum { B = 300 };
    struct obj *p[B];
    for (int r = 0; r < w->rounds; r++) {
        for (int i = 0; i < B; i++) {
            p[i] = slab_alloc(w->s);
            p[i]->a = (uintptr_t)w;
            p[i]->b = (uint64_t)i;
        }
        for (int i = 0; i < B; i++)
            if (p[i]->a != (uintptr_t)w || p[i]->b != (uint64_t)i)
                w->bad = true;
        for (int i = 0; i < B; i++)
            slab_release(w->s, p[i]);
    }
    return NULL;
}

static void test_threads(void **state)
{
    (void)state;
    slab *s = slab_new(sizeof(struct obj));
    struct worker w[4];
    pthread_t t[4];
    for (int i = 0; i < 4; i++) {
        w[i] = (struct worker){s, 200, false};
        assert_int_equal(pthread_create(&t[i], NULL, worker_main, &w[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        assert_false(w[i].bad);
    }
    slab_stats st;
    slab_get_stats(s, &st);
    assert_int_equal(st.in_use, 0);
    if (POOLED)
        assert_true(st.chunks <= 2); /* at most 1,200 live at once */
    slab_free_all(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_distinct_zeroed_aligned),
        cmocka_unit_test(test_freed_objects_are_reused_and_rezeroed),
        cmocka_unit_test(test_tiny_objects_hold_the_free_link),
        cmocka_unit_test(test_threads),
    };
    return cmocka_run_group_tests_name("core/slab", tests, NULL, NULL);
}
