/* Tests of src/spool/pending.c (the journal's pending set): what each
 * sequence of saves and removes leaves for the stores, and the table itself
 * against a plain model under many random operations. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <setjmp.h>
#include <stddef.h>

#include <cmocka.h>

#include "core/kerr.h"
#include "spool/pending.h"

static spoolid id_of(uint32_t n)
{
    spoolid id;
    memset(&id, 0, sizeof(id));
    memcpy(id.b, &n, sizeof(n));
    id.b[15] = 0x5a;
    return id;
}

static char *dup_str(const char *s)
{
    char *d = strdup(s);
    assert_non_null(d);
    return d;
}

static void save(spool__pend *p, uint32_t n, const char *meta, const char *data, bool fresh)
{
    spoolid id = id_of(n);
    assert_int_equal(spool__pend_reserve(p, 1), 0);
    spool__pend_save(p, &id, dup_str(meta), strlen(meta), data ? dup_str(data) : NULL,
                     data ? strlen(data) : 0, fresh);
}

static void rm(spool__pend *p, uint32_t n)
{
    spoolid id = id_of(n);
    assert_int_equal(spool__pend_reserve(p, 1), 0);
    spool__pend_remove(p, &id);
}

static const spool__pend_ent *find(const spool__pend *p, uint32_t n)
{
    spoolid id = id_of(n);
    return spool__pend_find(p, &id);
}

static void assert_bytes(const char *got, size_t len, const char *want)
{
    assert_non_null(got);
    assert_int_equal(len, strlen(want));
    assert_memory_equal(got, want, len);
}

/* A new message saved and removed within the lap leaves nothing behind. */
static void test_fresh_save_then_remove_leaves_nothing(void **state)
{
    (void)state;
    spool__pend p = {0};
    save(&p, 1, "m1", "d1", true);
    save(&p, 2, "m2", "d2", true);
    assert_int_equal(p.count, 2);
    assert_int_equal(p.bytes, 8);
    rm(&p, 1);
    assert_null(find(&p, 1));
    assert_int_equal(p.count, 1);
    assert_int_equal(p.bytes, 4);
    assert_int_equal(p.drops, 1);
    const spool__pend_ent *e = find(&p, 2);
    assert_non_null(e);
    assert_int_equal(e->state, PEND_SAVE);
    assert_bytes(e->meta, e->meta_len, "m2");
    assert_bytes(e->data, e->data_len, "d2");
    spool__pend_fini(&p);
}

/* A save of an id the stores may hold (not fresh), then its remove: the
 * remove must reach the stores. */
static void test_remove_of_stored_message_is_kept(void **state)
{
    (void)state;
    spool__pend p = {0};
    save(&p, 7, "m7", "d7", false);
    rm(&p, 7);
    const spool__pend_ent *e = find(&p, 7);
    assert_non_null(e);
    assert_int_equal(e->state, PEND_REMOVE);
    assert_null(e->meta);
    assert_null(e->data);
    assert_int_equal(p.bytes, 0);
    assert_int_equal(p.drops, 0);
    /* and a remove of an id never seen here */
    rm(&p, 8);
    e = find(&p, 8);
    assert_non_null(e);
    assert_int_equal(e->state, PEND_REMOVE);
    spool__pend_fini(&p);
}

/* A meta-only save keeps the pending data; a later full save replaces it;
 * the entry stays fresh. */
static void test_later_saves_replace_halves(void **state)
{
    (void)state;
    spool__pend p = {0};
    save(&p, 3, "m3", "d3", true);
    save(&p, 3, "m3-bis", NULL, false);
    const spool__pend_ent *e = find(&p, 3);
    assert_bytes(e->meta, e->meta_len, "m3-bis");
    assert_bytes(e->data, e->data_len, "d3");
    assert_true(e->fresh);
    save(&p, 3, "m3-ter", "d3-ter", false);
    e = find(&p, 3);
    assert_bytes(e->meta, e->meta_len, "m3-ter");
    assert_bytes(e->data, e->data_len, "d3-ter");
    assert_int_equal(p.bytes, strlen("m3-ter") + strlen("d3-ter"));
    rm(&p, 3);
    assert_null(find(&p, 3));
    /* a meta-only save of a stored message: no data here, the stores' stands */
    save(&p, 4, "m4", NULL, false);
    e = find(&p, 4);
    assert_null(e->data);
    assert_false(e->drop_data);
    spool__pend_fini(&p);
}

/* Saved again after its remove: the stores' halves are deleted, then the
 * new save is put (drop_data when the new save has no data). */
static void test_save_after_remove(void **state)
{
    (void)state;
    spool__pend p = {0};
    rm(&p, 5);
    save(&p, 5, "m5", NULL, true);
    const spool__pend_ent *e = find(&p, 5);
    assert_int_equal(e->state, PEND_SAVE);
    assert_false(e->fresh);
    assert_true(e->drop_data);
    save(&p, 5, "m5", "d5", false);
    e = find(&p, 5);
    assert_false(e->drop_data);
    assert_bytes(e->data, e->data_len, "d5");
    spool__pend_forget(&p, &(spoolid){0}); /* absent: nothing happens */
    spoolid five = id_of(5);
    spool__pend_forget(&p, &five);
    assert_null(find(&p, 5));
    assert_int_equal(p.count, 0);
    assert_int_equal(p.bytes, 0);
    spool__pend_fini(&p);
}

/* The table against a model: many ids in few home slots' worth of space,
 * random saves, removes and forgets; after each step every id is found in
 * the state the model expects (this exercises growth and the backward
 * shift that deletion does instead of leaving tombstones). */
static void test_random_operations_match_a_model(void **state)
{
    (void)state;
    enum { IDS = 3000, STEPS = 60000 };
    /* model: 0 absent, 1 save (fresh), 2 save (not fresh), 3 remove */
    static uint8_t model[IDS];
    memset(model, 0, sizeof(model));
    spool__pend p = {0};
    uint64_t seed = 0x243f6a8885a308d3ULL, drops = 0;
    size_t count = 0;
    for (int step = 0; step < STEPS; step++) {
        seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
        uint32_t n = (uint32_t)(seed >> 33) % IDS;
        int op = (int)((seed >> 20) % 8);
        spoolid id = id_of(n);
        uint8_t before = model[n];
        if (op < 4) {
            bool fresh = op == 0; /* a new message: always with its data */
            char meta[32];
            snprintf(meta, sizeof(meta), "meta-%u-%d", n, step);
            save(&p, n, meta, op % 2 ? NULL : "body", fresh);
            if (before == 0)
                model[n] = fresh ? 1 : 2;
            else if (before == 3)
                model[n] = 2;
            /* an existing save keeps its freshness */
        } else if (op < 7) {
            rm(&p, n);
            if (before == 1) {
                model[n] = 0;
                drops++;
            } else {
                model[n] = 3;
            }
        } else {
            spool__pend_forget(&p, &id);
            model[n] = 0;
        }
        count += (model[n] != 0) - (before != 0);
        if (step % 997 == 0 || step == STEPS - 1) {
            for (uint32_t i = 0; i < IDS; i++) {
                const spool__pend_ent *e = find(&p, i);
                if (model[i] == 0) {
                    assert_null(e);
                    continue;
                }
                assert_non_null(e);
                assert_int_equal(e->state, model[i] == 3 ? PEND_REMOVE : PEND_SAVE);
                assert_int_equal(e->fresh, model[i] == 1);
            }
            assert_int_equal(p.count, count);
            assert_true(p.count * 2 <= p.cap);
        }
    }
    assert_int_equal(p.drops, drops);
    spool__pend_clear(&p);
    assert_int_equal(p.count, 0);
    assert_int_equal(p.bytes, 0);
    assert_null(find(&p, 1));
    spool__pend_fini(&p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fresh_save_then_remove_leaves_nothing),
        cmocka_unit_test(test_remove_of_stored_message_is_kept),
        cmocka_unit_test(test_later_saves_replace_halves),
        cmocka_unit_test(test_save_after_remove),
        cmocka_unit_test(test_random_operations_match_a_model),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
