/* Unit tests for src/core/spoolid.c: UUID v1 layout, the creation time read
 * back from the timestamp, text forms, uniqueness across threads, hashing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <pthread.h>
#include <time.h>

#include "core/kerr.h"
#include "core/spoolid.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

static int64_t realtime_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

struct hex_row {
    const char *in;
    int rc;
    const char *canon; /* 32-digit form expected back, when rc == 0 */
};

static const struct hex_row hex_rows[] = {
    {"969e5707a91b11ee952a0123456789ab", 0, "969e5707a91b11ee952a0123456789ab"},
    {"969E5707A91B11EE952A0123456789AB", 0, "969e5707a91b11ee952a0123456789ab"},
    {"969e5707-a91b-11ee-952a-0123456789ab", 0, "969e5707a91b11ee952a0123456789ab"},
    {"00000000000000000000000000000000", 0, "00000000000000000000000000000000"},
    {"", KERR_PARSE, NULL},
    {"969e5707a91b11ee952a0123456789a", KERR_PARSE, NULL},
    {"969e5707a91b11ee952a0123456789abc", KERR_PARSE, NULL},
    {"969e5707a91b11ee952a0123456789ag", KERR_PARSE, NULL},
    {"969e5707a91b11ee952a01234567 9ab", KERR_PARSE, NULL},
    {"969e5707a-91b-11ee-952a-0123456789ab", KERR_PARSE, NULL},
    {"969e5707-a91b-11ee-952a-0123456789-b", KERR_PARSE, NULL},
    {"969e5707a91b11ee952a0123456789ab----", KERR_PARSE, NULL},
    {"969e5707_a91b_11ee_952a_0123456789ab", KERR_PARSE, NULL},
};

static void test_from_hex_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(hex_rows); i++) {
        const struct hex_row *r = &hex_rows[i];
        spoolid id;
        int rc = spoolid_from_hex(r->in, &id);
        if (rc != r->rc) {
            print_error("spoolid_from_hex(\"%s\") = %d; want %d\n", r->in, rc, r->rc);
            fail();
        }
        if (rc == 0) {
            char hex[SPOOLID_HEX_LEN + 1];
            spoolid_to_hex(&id, hex);
            assert_string_equal(hex, r->canon);
        }
    }
    spoolid id;
    assert_int_equal(spoolid_from_hex(NULL, &id), KERR_INVAL);
}

struct time_row {
    const char *hex;
    int64_t unix_ns;
};

/* Vectors made with Python's uuid module (uuid.UUID(fields=...).time). */
static const struct time_row time_rows[] = {
    {"969e5707a91b11ee952a0123456789ab", 1704164645123456700LL}, /* 2024-01-02T03:04:05.1234567Z */
    {"138140001dd211b28000000000000001", 0},                     /* the Unix epoch */
};

static void test_created_ns_vectors(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(time_rows); i++) {
        spoolid id;
        assert_int_equal(spoolid_from_hex(time_rows[i].hex, &id), 0);
        assert_int_equal(spoolid_created_ns(&id), time_rows[i].unix_ns);
    }
}

/* ids made up by a client (explain's id parameter) at either end of the
 * 60-bit clock: a saturated time, no signed overflow (UBSan) */
static void test_created_ns_saturates(void **state)
{
    (void)state;
    spoolid id;
    assert_int_equal(spoolid_from_hex("ffffffffffffffffffffffffffffffff", &id), 0);
    assert_true(spoolid_created_ns(&id) > 0);
    assert_int_equal(spoolid_created_ns(&id), INT64_MAX / 100 * 100);
}

static void test_new_is_v1_with_current_time(void **state)
{
    (void)state;
    int64_t before = realtime_ns();
    spoolid id;
    spoolid_new(&id);
    int64_t after = realtime_ns();
    assert_int_equal(id.b[6] >> 4, 1);       /* version 1 */
    assert_int_equal(id.b[8] & 0xc0, 0x80);  /* RFC 4122 variant */
    assert_int_equal(id.b[10] & 0x01, 0x01); /* random node: multicast bit */
    int64_t created = spoolid_created_ns(&id);
    /* 100 ns resolution, and the id may run a few ticks ahead of the clock
     * when ids were made faster than one per tick just before. */
    assert_true(created >= before - 100);
    assert_true(created <= after + 1000000);

    char hex[SPOOLID_HEX_LEN + 1];
    spoolid_to_hex(&id, hex);
    assert_int_equal(strlen(hex), SPOOLID_HEX_LEN);
    spoolid back;
    assert_int_equal(spoolid_from_hex(hex, &back), 0);
    assert_true(spoolid_eq(&id, &back));
}

/* Every id takes a later timestamp than the one before it, so a burst of ids
 * in one thread is unique and ordered by creation time. */
static void test_new_monotonic(void **state)
{
    (void)state;
    spoolid prev;
    spoolid_new(&prev);
    for (int i = 0; i < 200000; i++) {
        spoolid id;
        spoolid_new(&id);
        assert_true(spoolid_created_ns(&id) > spoolid_created_ns(&prev));
        assert_false(spoolid_eq(&id, &prev));
        /* node and clock sequence are fixed for the process */
        assert_memory_equal(&id.b[8], &prev.b[8], 8);
        prev = id;
    }
}

#define THREADS 4
#define PER_THREAD 50000

struct worker {
    pthread_t tid;
    spoolid *ids;
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    for (int i = 0; i < PER_THREAD; i++)
        spoolid_new(&w->ids[i]);
    return NULL;
}

static int cmp_created(const void *a, const void *b)
{
    int64_t x = spoolid_created_ns(a), y = spoolid_created_ns(b);
    return (x > y) - (x < y);
}

static void test_new_unique_across_threads(void **state)
{
    (void)state;
    spoolid *all = calloc(THREADS * PER_THREAD, sizeof(*all));
    assert_non_null(all);
    struct worker workers[THREADS];
    for (int t = 0; t < THREADS; t++) {
        workers[t].ids = all + t * PER_THREAD;
        assert_int_equal(pthread_create(&workers[t].tid, NULL, worker_main, &workers[t]), 0);
    }
    for (int t = 0; t < THREADS; t++)
        assert_int_equal(pthread_join(workers[t].tid, NULL), 0);
    /* Node and clock sequence are shared, so the timestamps alone must differ. */
    qsort(all, THREADS * PER_THREAD, sizeof(*all), cmp_created);
    for (int i = 1; i < THREADS * PER_THREAD; i++)
        assert_true(spoolid_created_ns(&all[i]) > spoolid_created_ns(&all[i - 1]));
    free(all);
}

/* The hyphenated form: libuuid's uuid_unparse_lower layout, and it parses
 * back to the same id. */
static void test_uuid_str(void **state)
{
    (void)state;
    spoolid id, back;
    assert_int_equal(spoolid_from_hex("0123456789abcdef0123456789ABCDEF", &id), 0);
    char s[SPOOLID_UUID_LEN + 1];
    spoolid_to_uuid_str(&id, s);
    assert_string_equal(s, "01234567-89ab-cdef-0123-456789abcdef");
    assert_int_equal(spoolid_from_hex(s, &back), 0);
    assert_true(spoolid_eq(&id, &back));
    spoolid_new(&id);
    spoolid_to_uuid_str(&id, s);
    assert_int_equal(strlen(s), 36);
    assert_int_equal(s[14], '1'); /* version 1 */
}

static void test_eq_and_hash(void **state)
{
    (void)state;
    spoolid a, b;
    assert_int_equal(spoolid_from_hex("969e5707a91b11ee952a0123456789ab", &a), 0);
    b = a;
    assert_true(spoolid_eq(&a, &b));
    assert_int_equal(spoolid_hash(&a), spoolid_hash(&b));
    for (int i = 0; i < 16; i++) {
        b = a;
        b.b[i] ^= 0x01;
        assert_false(spoolid_eq(&a, &b));
        assert_int_not_equal(spoolid_hash(&a), spoolid_hash(&b));
    }

    /* Ids made back to back differ in a few low time bits only; their hashes
     * must still spread evenly over the buckets of a table. */
    enum { N = 65536, BUCKETS = 1024 };
    static unsigned counts[BUCKETS];
    memset(counts, 0, sizeof(counts));
    for (int i = 0; i < N; i++) {
        spoolid id;
        spoolid_new(&id);
        counts[spoolid_hash(&id) & (BUCKETS - 1)]++;
    }
    for (int i = 0; i < BUCKETS; i++)
        assert_in_range(counts[i], 20, 120); /* expected 64 per bucket */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_from_hex_table),
        cmocka_unit_test(test_created_ns_vectors),
        cmocka_unit_test(test_created_ns_saturates),
        cmocka_unit_test(test_new_is_v1_with_current_time),
        cmocka_unit_test(test_new_monotonic),
        cmocka_unit_test(test_new_unique_across_threads),
        cmocka_unit_test(test_eq_and_hash),
        cmocka_unit_test(test_uuid_str),
    };
    return cmocka_run_group_tests_name("core/spoolid", tests, NULL, NULL);
}
