/* Unit tests for src/queue/backoff.c: the retry arithmetic of spec §1.6.
 * Expected values come from KumoMTA's crates/kumod/src/queue/config.rs
 * (delay_for_attempt, infer_num_attempts, compute_delay_based_on_age), its
 * own unit tests in crates/kumod/src/queue/test.rs (calc_due,
 * calc_due_capped, calc_due_defaults, spool_in_delay, bigger_delay), and
 * queue.rs increment_attempts_and_update_delay (jitter and expiry). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "queue/backoff.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define NO_EXPIRES (-1)

/* ---- delay_for_attempt ------------------------------------------------------------ */

struct delay_row {
    int64_t retry, cap; /* cap 0 = none */
    uint32_t attempt;
    int64_t want;
};

static const struct delay_row delay_rows[] = {
    /* defaults: 20 minutes, no cap: 20, 40, 80, 160 min... */
    {1200, 0, 0, 1200},
    {1200, 0, 1, 2400},
    {1200, 0, 2, 4800},
    {1200, 0, 3, 9600},
    {1200, 0, 4, 19200},
    {1200, 0, 5, 38400},
    {1200, 0, 10, 1200 * 1024},
    /* retry_interval 2s */
    {2, 0, 0, 2},
    {2, 0, 1, 4},
    {2, 0, 2, 8},
    {2, 0, 3, 16},
    {2, 0, 8, 512},
    {2, 0, 20, 2 * 1048576},
    /* capped at 8 */
    {2, 8, 0, 2},
    {2, 8, 1, 4},
    {2, 8, 2, 8},
    {2, 8, 3, 8},
    {2, 8, 16, 8},
    {2, 8, 1000, 8},
    /* a cap that is not a power of two of the base */
    {2, 3, 0, 2},
    {2, 3, 1, 3},
    {2, 3, 2, 3},
    /* the seed: max_retry_interval = '1 hour' with the default base */
    {1200, 3600, 0, 1200},
    {1200, 3600, 1, 2400},
    {1200, 3600, 2, 3600},
    {1200, 3600, 3, 3600},
    {1200, 3600, 50, 3600},
    /* cap equal to the base: no exponential backoff at all */
    {60, 60, 0, 60},
    {60, 60, 7, 60},
    /* a cap below the base caps the first delay too (min(...)) */
    {60, 30, 0, 30},
    /* 1 second base */
    {1, 0, 0, 1},
    {1, 0, 5, 32},
    {1, 0, 30, INT64_C(1) << 30},
};

static void test_delay_for_attempt_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(delay_rows); i++) {
        const struct delay_row *r = &delay_rows[i];
        backoff_params p = {r->retry, r->cap, 7 * 86400};
        int64_t got = backoff_delay_for_attempt(&p, r->attempt);
        if (got != r->want) {
            print_error("delay_for_attempt(retry=%lld cap=%lld, attempt=%u) = %lld; want %lld\n",
                        (long long)r->retry, (long long)r->cap, r->attempt, (long long)got,
                        (long long)r->want);
            fail();
        }
    }
}

/* Huge attempt counts saturate: the delay never wraps negative and never
 * decreases as the attempt count grows; with a cap it is exactly the cap. */
static void test_delay_for_attempt_saturates(void **state)
{
    (void)state;
    static const int64_t bases[] = {1, 2, 1200, 86400};
    for (size_t b = 0; b < ARRAY_LEN(bases); b++) {
        backoff_params p = {bases[b], 0, 7 * 86400};
        backoff_params capped = {bases[b], 3600 * 24, 7 * 86400};
        int64_t prev = 0;
        for (uint32_t a = 0; a <= 70000; a += (a < 200 ? 1 : 997)) {
            int64_t d = backoff_delay_for_attempt(&p, a);
            if (d < prev || d <= 0) {
                print_error("base %lld attempt %u: delay %lld after %lld\n", (long long)bases[b], a,
                            (long long)d, (long long)prev);
                fail();
            }
            prev = d;
            int64_t c = backoff_delay_for_attempt(&capped, a);
            int64_t want = d < 86400 ? d : 86400;
            if (c != want) {
                print_error("base %lld capped attempt %u: %lld want %lld\n", (long long)bases[b], a,
                            (long long)c, (long long)want);
                fail();
            }
        }
        /* a u16 attempt count (KumoMTA's type) is far past any overflow */
        assert_true(backoff_delay_for_attempt(&p, 65535) >= backoff_delay_for_attempt(&p, 62));
    }
}

/* KumoMTA's compute_schedule(): the delays until max_age would be reached. */
static size_t compute_schedule(const backoff_params *p, int64_t *out, size_t cap)
{
    size_t n = 0;
    int64_t age = 0;
    for (uint32_t attempt = 0; n < cap; attempt++) {
        int64_t d = backoff_delay_for_attempt(p, attempt);
        age += d;
        if (age >= p->max_age_s)
            break;
        out[n++] = d;
    }
    return n;
}

struct schedule_row {
    const char *name;
    backoff_params p;
    int64_t want[24];
    size_t n;
};

static const struct schedule_row schedule_rows[] = {
    {"calc_due", {2, 0, 1024}, {2, 4, 8, 16, 32, 64, 128, 256, 512}, 9},
    {"calc_due_capped", {2, 8, 128}, {2, 4, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8}, 17},
    {"calc_due_defaults", {1200, 0, 86400}, {1200, 2400, 4800, 9600, 19200, 38400}, 6},
};

static void test_schedule_matches_kumomta(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(schedule_rows); i++) {
        const struct schedule_row *r = &schedule_rows[i];
        int64_t got[64];
        size_t n = compute_schedule(&r->p, got, 64);
        if (n != r->n) {
            print_error("%s: %zu delays, want %zu\n", r->name, n, r->n);
            fail();
        }
        for (size_t j = 0; j < n; j++)
            if (got[j] != r->want[j]) {
                print_error("%s: delay[%zu] = %lld want %lld\n", r->name, j, (long long)got[j],
                            (long long)r->want[j]);
                fail();
            }
    }
}

/* ---- jitter --------------------------------------------------------------------------- */

struct jitter_row {
    int64_t retry;
    double rand01;
    double want;
};

/* J = min(retry_interval / 20, 60); jitter = rand * J - J / 2 */
static const struct jitter_row jitter_rows[] = {
    {1200, 0.0, -30.0},
    {1200, 0.5, 0.0},
    {1200, 0.25, -15.0},
    {1200, 0.75, 15.0},
    {1200, 0.999, 29.94},
    {2, 0.0, -0.05},
    {2, 0.5, 0.0},
    {2, 0.99, 0.049},
    {20, 0.0, -0.5},
    {20, 1.0 - 1e-9, 0.5},
    {600, 0.0, -15.0},
    {600, 0.1, -12.0},
    /* the magnitude is capped at 60 s however long the interval */
    {1201, 0.0, -30.0},
    {3600, 0.0, -30.0},
    {86400, 0.0, -30.0},
    {86400, 0.75, 15.0},
};

static void test_jitter_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(jitter_rows); i++) {
        const struct jitter_row *r = &jitter_rows[i];
        backoff_params p = {r->retry, 0, 7 * 86400};
        double got = backoff_jitter(&p, r->rand01);
        if (got < r->want - 1e-6 || got > r->want + 1e-6) {
            print_error("jitter(retry=%lld, rand=%g) = %.9f; want %.9f\n", (long long)r->retry,
                        r->rand01, got, r->want);
            fail();
        }
    }
}

/* Over the whole [0, 1) input range the jitter stays in [-J/2, J/2). */
static void test_jitter_bounds(void **state)
{
    (void)state;
    static const int64_t retries[] = {1, 2, 10, 20, 59, 600, 1199, 1200, 1201, 7200, 604800};
    for (size_t i = 0; i < ARRAY_LEN(retries); i++) {
        backoff_params p = {retries[i], 0, 7 * 86400};
        double mag = (double)retries[i] / 20.0;
        if (mag > 60.0)
            mag = 60.0;
        double lo = 1e300, hi = -1e300;
        for (int k = 0; k < 10000; k++) {
            double u = (double)k / 10000.0;
            double j = backoff_jitter(&p, u);
            assert_true(j >= -mag / 2.0 - 1e-9);
            assert_true(j < mag / 2.0);
            if (j < lo)
                lo = j;
            if (j > hi)
                hi = j;
        }
        /* it spans the range, not a corner of it */
        assert_true(lo <= -mag / 2.0 + 1e-9);
        assert_true(hi >= mag / 2.0 - mag / 1000.0 - 1e-9);
    }
}

/* ---- backoff_on_failure -----------------------------------------------------------------------
 */

struct failure_row {
    const char *what;
    backoff_params p;
    uint32_t num_attempts;
    int64_t age;
    double rand01;
    int64_t expires_at_age;
    bool expire;
    int64_t delay; /* checked when !expire */
};

static const struct failure_row failure_rows[] = {
    /* the delay is for the pre-increment attempt count, plus jitter */
    {"first failure, no jitter", {1200, 0, 604800}, 0, 5, 0.5, NO_EXPIRES, false, 1200},
    {"second failure", {1200, 0, 604800}, 1, 1300, 0.5, NO_EXPIRES, false, 2400},
    {"third failure", {1200, 0, 604800}, 2, 4000, 0.5, NO_EXPIRES, false, 4800},
    {"lowest jitter", {1200, 0, 604800}, 0, 0, 0.0, NO_EXPIRES, false, 1170},
    /* 1200 + 29.94: `jitter as i64` truncates toward zero */
    {"highest jitter truncates", {1200, 0, 604800}, 0, 0, 0.999, NO_EXPIRES, false, 1229},
    /* -0.6 truncates to 0, not -1 */
    {"small negative jitter truncates to 0",
     {1200, 0, 604800},
     0,
     0,
     0.49,
     NO_EXPIRES,
     false,
     1200},
    {"jitter capped at 60s for long intervals",
     {86400, 0, 604800 * 4},
     0,
     0,
     0.0,
     NO_EXPIRES,
     false,
     86370},
    {"2s base: jitter below a second vanishes", {2, 0, 3600}, 0, 0, 0.0, NO_EXPIRES, false, 2},
    {"2s base attempt 2", {2, 0, 3600}, 2, 6, 0.99, NO_EXPIRES, false, 8},
    {"capped by max_retry_interval", {2, 3, 3600}, 5, 20, 0.5, NO_EXPIRES, false, 3},
    {"seed: 1 hour cap", {1200, 3600, 604800}, 4, 20000, 0.5, NO_EXPIRES, false, 3600},
    /* expiry against max_age: age + delay > max_age (strictly) */
    {"due exactly at max_age stays", {10, 0, 100}, 0, 90, 0.5, NO_EXPIRES, false, 10},
    {"due one second past max_age expires", {10, 0, 100}, 0, 91, 0.5, NO_EXPIRES, true, 0},
    {"seed: 20 minutes max_age, first retry fits", {60, 0, 1200}, 0, 1, 0.5, NO_EXPIRES, false, 60},
    {"seed: 20 minutes max_age, 5th retry (960s) does not",
     {60, 0, 1200},
     4,
     900,
     0.5,
     NO_EXPIRES,
     true,
     0},
    {"jitter decides the boundary (minus)", {1200, 0, 3600}, 0, 2400, 0.0, NO_EXPIRES, false, 1170},
    {"jitter decides the boundary (plus)", {1200, 0, 3600}, 0, 2400, 0.99, NO_EXPIRES, true, 0},
    {"already older than max_age", {10, 0, 100}, 0, 200, 0.5, NO_EXPIRES, true, 0},
    /* a set_scheduling expiry replaces max_age: due >= expires expires */
    {"expires: due before it", {10, 0, 100}, 0, 50, 0.5, 61, false, 10},
    {"expires: due exactly at it expires", {10, 0, 100}, 0, 50, 0.5, 60, true, 0},
    {"expires: later than max_age is allowed", {10, 0, 100}, 0, 95, 0.5, 1000, false, 10},
    {"expires: max_age is not consulted", {10, 0, 100}, 3, 500, 0.5, 100000, false, 80},
    {"expires: earlier than max_age wins", {10, 0, 1000}, 0, 20, 0.5, 25, true, 0},
};

static void test_backoff_on_failure_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(failure_rows); i++) {
        const struct failure_row *r = &failure_rows[i];
        backoff_result br =
            backoff_on_failure(&r->p, r->num_attempts, r->age, r->rand01, r->expires_at_age);
        bool bad = br.expire != r->expire;
        if (!r->expire && (br.delay_s != r->delay || br.due_age_s != r->age + r->delay))
            bad = true;
        if (bad) {
            print_error("%s: expire=%d delay=%lld due_age=%lld; want expire=%d delay=%lld\n",
                        r->what, br.expire, (long long)br.delay_s, (long long)br.due_age_s,
                        r->expire, (long long)r->delay);
            fail();
        }
    }
}

/* Every retry delay lies within [delay - J/2, delay + J/2] (truncated to
 * whole seconds) and is never negative. */
static void test_backoff_on_failure_jitter_window(void **state)
{
    (void)state;
    static const int64_t retries[] = {1, 2, 20, 300, 1200, 3600};
    for (size_t i = 0; i < ARRAY_LEN(retries); i++) {
        backoff_params p = {retries[i], 0, INT64_C(1) << 50};
        double mag = (double)retries[i] / 20.0;
        if (mag > 60.0)
            mag = 60.0;
        for (uint32_t n = 0; n < 12; n++) {
            int64_t base = backoff_delay_for_attempt(&p, n);
            for (int k = 0; k < 100; k++) {
                backoff_result br = backoff_on_failure(&p, n, 0, k / 100.0, NO_EXPIRES);
                assert_false(br.expire);
                assert_true(br.delay_s >= 0);
                assert_true((double)br.delay_s >= (double)base - mag / 2.0 - 1e-9);
                assert_true((double)br.delay_s <= (double)base + mag / 2.0);
            }
        }
    }
}

/* ---- start-up inference: attempts and due from age ------------------------------------------- */

struct age_row {
    int64_t age;
    uint32_t attempts;
    int64_t delay;
};

/* KumoMTA test.rs spool_in_delay: retry 2s, no cap, max_age 256s, ages
 * 2, 6, 10, ... until the first expired age. */
static const struct age_row spool_in_delay_rows[] = {
    {2, 1, 0},   {6, 2, 0},   {10, 2, 0},  {14, 3, 0},  {18, 3, 0},  {22, 3, 0},  {26, 3, 0},
    {30, 4, 0},  {34, 4, 0},  {38, 4, 0},  {42, 4, 0},  {46, 4, 0},  {50, 4, 0},  {54, 4, 0},
    {58, 4, 0},  {62, 5, 0},  {66, 5, 0},  {70, 5, 0},  {74, 5, 0},  {78, 5, 0},  {82, 5, 0},
    {86, 5, 0},  {90, 5, 0},  {94, 5, 0},  {98, 5, 0},  {102, 5, 0}, {106, 5, 0}, {110, 5, 0},
    {114, 5, 0}, {118, 5, 0}, {122, 5, 0}, {126, 6, 0}, {130, 6, 0}, {134, 6, 0}, {138, 6, 0},
    {142, 6, 0}, {146, 6, 0}, {150, 6, 0}, {154, 6, 0}, {158, 6, 0}, {162, 6, 0}, {166, 6, 0},
    {170, 6, 0}, {174, 6, 0}, {178, 6, 0}, {182, 6, 0}, {186, 6, 0}, {190, 6, 0}, {194, 6, 0},
    {198, 6, 0}, {202, 6, 0}, {206, 6, 0}, {210, 6, 0}, {214, 6, 0}, {218, 6, 0}, {222, 6, 0},
    {226, 6, 0}, {230, 6, 0}, {234, 6, 0}, {238, 6, 0}, {242, 6, 0}, {246, 6, 0}, {250, 6, 0},
    {254, 7, 0},
};

/* KumoMTA test.rs bigger_delay: retry 1200s, max_age 3h, ages 1200, 2400... */
static const struct age_row bigger_delay_rows[] = {
    {1200, 1, 0}, {2400, 1, 0}, {3600, 2, 0}, {4800, 2, 0},
    {6000, 2, 0}, {7200, 2, 0}, {8400, 3, 0}, {9600, 3, 0},
};

static void run_age_schedule(const char *name, const backoff_params *p, int64_t first_age,
                             int64_t step, const struct age_row *rows, size_t nrows)
{
    size_t n = 0;
    for (int64_t age = first_age;; age += step) {
        uint32_t a = backoff_attempts_from_age(p, age);
        backoff_result br = backoff_due_from_age(p, a, age);
        if (br.expire)
            break;
        if (n >= nrows || rows[n].age != age || rows[n].attempts != a ||
            rows[n].delay != br.delay_s) {
            print_error("%s: row %zu: age %lld -> attempts %u delay %lld; want %s\n", name, n,
                        (long long)age, a, (long long)br.delay_s,
                        n < nrows ? "a different row" : "expiry");
            fail();
        }
        n++;
    }
    if (n != nrows) {
        print_error("%s: %zu rows before expiry, want %zu\n", name, n, nrows);
        fail();
    }
}

static void test_spool_in_delay(void **state)
{
    (void)state;
    backoff_params p = {2, 0, 256};
    run_age_schedule("spool_in_delay", &p, 2, 4, spool_in_delay_rows,
                     ARRAY_LEN(spool_in_delay_rows));
}

static void test_bigger_delay(void **state)
{
    (void)state;
    backoff_params p = {1200, 0, 3 * 3600};
    run_age_schedule("bigger_delay", &p, 1200, 1200, bigger_delay_rows,
                     ARRAY_LEN(bigger_delay_rows));
}

struct attempts_row {
    backoff_params p;
    int64_t age;
    uint32_t want;
};

/* infer_num_attempts: the largest n with sum(delay(0..n-1)) <= age */
static const struct attempts_row attempts_rows[] = {
    {{2, 0, 1000}, 0, 0},
    {{2, 0, 1000}, 1, 0},
    {{2, 0, 1000}, 2, 1},
    {{2, 0, 1000}, 5, 1},
    {{2, 0, 1000}, 6, 2},
    {{2, 0, 1000}, 13, 2},
    {{2, 0, 1000}, 14, 3},
    {{2, 0, 1000}, 29, 3},
    {{2, 0, 1000}, 30, 4},
    {{2, 8, 1000}, 14, 3},
    {{2, 8, 1000}, 21, 3},
    {{2, 8, 1000}, 22, 4},
    {{2, 8, 1000}, 30, 5},
    {{2, 8, 1000}, 86, 12},
    {{1200, 0, 604800}, 1199, 0},
    {{1200, 0, 604800}, 1200, 1},
    {{1200, 0, 604800}, 3599, 1},
    {{1200, 0, 604800}, 3600, 2},
    {{1200, 0, 604800}, 8400, 3},
    {{1200, 0, 604800}, 604800, 8},
    /* seed: retry at most every hour */
    {{1200, 3600, 604800}, 7199, 2},
    {{1200, 3600, 604800}, 7200, 3},
    {{1200, 3600, 604800}, 10800, 4},
    {{1200, 3600, 604800}, 14400, 5},
    {{1200, 3600, 604800}, 86399, 24},
    {{1200, 3600, 604800}, 86400, 25},
};

static void test_attempts_from_age_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(attempts_rows); i++) {
        const struct attempts_row *r = &attempts_rows[i];
        uint32_t got = backoff_attempts_from_age(&r->p, r->age);
        if (got != r->want) {
            print_error("attempts_from_age(retry=%lld cap=%lld, age=%lld) = %u; want %u\n",
                        (long long)r->p.retry_interval_s, (long long)r->p.max_retry_interval_s,
                        (long long)r->age, got, r->want);
            fail();
        }
    }
}

struct due_row {
    const char *what;
    backoff_params p;
    uint32_t num_attempts;
    int64_t age;
    bool expire;
    int64_t delay;
};

/* compute_delay_based_on_age: overall = sum(delay(1..num_attempts-1)),
 * expired when age >= max_age or overall >= max_age, else
 * max(overall - age, 0). */
static const struct due_row due_rows[] = {
    {"no attempts: due now", {2, 0, 1000}, 0, 0, false, 0},
    {"one attempt: due now", {2, 0, 1000}, 1, 0, false, 0},
    {"two attempts at age 0: delay(1)", {2, 0, 1000}, 2, 0, false, 4},
    {"four attempts at age 0: 4+8+16", {2, 0, 1000}, 4, 0, false, 28},
    {"four attempts at age 10", {2, 0, 1000}, 4, 10, false, 18},
    {"four attempts at age 28", {2, 0, 1000}, 4, 28, false, 0},
    {"four attempts at age 40: not negative", {2, 0, 1000}, 4, 40, false, 0},
    {"capped: 4+8+8", {2, 8, 1000}, 4, 0, false, 20},
    {"overall == max_age expires", {2, 0, 28}, 4, 0, true, 0},
    {"overall just under max_age", {2, 0, 29}, 4, 1, false, 27},
    {"age == max_age expires", {2, 0, 100}, 0, 100, true, 0},
    {"age past max_age expires", {2, 0, 100}, 1, 5000, true, 0},
    {"age just under max_age", {2, 0, 100}, 0, 99, false, 0},
    {"defaults: 3 attempts at age 3600", {1200, 0, 604800}, 3, 3600, false, 3600},
};

static void test_due_from_age_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(due_rows); i++) {
        const struct due_row *r = &due_rows[i];
        backoff_result br = backoff_due_from_age(&r->p, r->num_attempts, r->age);
        if (br.expire != r->expire || (!r->expire && br.delay_s != r->delay)) {
            print_error("%s: expire=%d delay=%lld; want expire=%d delay=%lld\n", r->what, br.expire,
                        (long long)br.delay_s, r->expire, (long long)r->delay);
            fail();
        }
        if (!r->expire && br.due_age_s != r->age + br.delay_s) {
            print_error("%s: due_age %lld != age + delay\n", r->what, (long long)br.due_age_s);
            fail();
        }
    }
}

/* Messages found at start-up with their inferred attempt count are due at
 * once (KumoMTA's sum starts at attempt 1, so the inferred due time never
 * lies in the future) and expire exactly from max_age on. */
static void test_inferred_due_is_now_until_max_age(void **state)
{
    (void)state;
    static const backoff_params ps[] = {
        {2, 0, 256}, {2, 8, 128}, {1200, 0, 604800}, {1200, 3600, 86400}, {60, 0, 1200}};
    for (size_t i = 0; i < ARRAY_LEN(ps); i++) {
        for (int64_t age = 0; age < ps[i].max_age_s + 50; age += 1 + ps[i].max_age_s / 2000) {
            uint32_t a = backoff_attempts_from_age(&ps[i], age);
            backoff_result br = backoff_due_from_age(&ps[i], a, age);
            if (age >= ps[i].max_age_s) {
                assert_true(br.expire);
                continue;
            }
            /* expired before max_age only when the schedule itself reaches it */
            int64_t overall = 0;
            for (uint32_t k = 1; k < a; k++)
                overall += backoff_delay_for_attempt(&ps[i], k);
            assert_int_equal(br.expire, overall >= ps[i].max_age_s);
            if (!br.expire)
                assert_int_equal(br.delay_s, 0);
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_delay_for_attempt_table),
        cmocka_unit_test(test_delay_for_attempt_saturates),
        cmocka_unit_test(test_schedule_matches_kumomta),
        cmocka_unit_test(test_jitter_table),
        cmocka_unit_test(test_jitter_bounds),
        cmocka_unit_test(test_backoff_on_failure_table),
        cmocka_unit_test(test_backoff_on_failure_jitter_window),
        cmocka_unit_test(test_spool_in_delay),
        cmocka_unit_test(test_bigger_delay),
        cmocka_unit_test(test_attempts_from_age_table),
        cmocka_unit_test(test_due_from_age_table),
        cmocka_unit_test(test_inferred_due_is_now_until_max_age),
    };
    return cmocka_run_group_tests_name("queue/backoff", tests, NULL, NULL);
}
