/* Unit tests for src/core/wheel.c: arm/cancel/re-arm, far horizons, callbacks
 * that change the wheel while it advances, next_timeout, and a randomized run
 * checked against a plain sorted reference. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/wheel.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

#define DAY_MS (86400LL * 1000)

/* What the tests hang on a wheel entry, as a queued message would. */
struct timer {
    wheel_entry e;
    int id;
    int fired;
    int64_t fired_at;
    /* optional behaviour on fire */
    struct timer *cancel_other;
    struct timer *arm_other;
    int64_t arm_other_at;
    int64_t rearm_every; /* > 0: re-arm self this far after the current clock */
    int rearm_left;
};

/* The clock of the advance in progress and a log of what fired, in order. */
static struct {
    wheel *w;
    int64_t now;
    int log[8192];
    size_t nlog;
} ctx;

static void timer_fn(wheel_entry *e)
{
    struct timer *t = container_of(e, struct timer, e);
    assert_false(wheel_entry_armed(e)); /* disarmed before the call */
    t->fired++;
    t->fired_at = ctx.now;
    if (ctx.nlog < ARRAY_LEN(ctx.log))
        ctx.log[ctx.nlog++] = t->id;
    if (t->cancel_other)
        wheel_cancel(ctx.w, &t->cancel_other->e);
    if (t->arm_other)
        wheel_arm(ctx.w, &t->arm_other->e, t->arm_other_at);
    if (t->rearm_every && t->rearm_left > 0) {
        t->rearm_left--;
        wheel_arm(ctx.w, e, ctx.now + t->rearm_every);
    }
}

static void timer_init(struct timer *t, int id)
{
    memset(t, 0, sizeof(*t));
    wheel_entry_init(&t->e, timer_fn);
    t->id = id;
}

static size_t advance(wheel *w, int64_t now)
{
    ctx.w = w;
    ctx.now = now;
    return wheel_advance(w, now);
}

static void test_new_rejects_bad_geometry(void **state)
{
    (void)state;
    assert_null(wheel_new(0, 10, 0));
    assert_null(wheel_new(3, 10, 0));
    assert_null(wheel_new(4096, 0, 0));
    assert_null(wheel_new(4096, -5, 0));
    wheel *w = wheel_new(1, 1, 0); /* degenerate but valid */
    assert_non_null(w);
    wheel_free(w);
    wheel_free(NULL);
}

/* One entry, a clock stepping by step_ms from start: it must fire at the
 * first step at or after its due time, exactly once. */
struct single_row {
    const char *name;
    size_t slots;
    int64_t tick_ms;
    int64_t start_ms;
    int64_t due_ms;
    int64_t step_ms;
    int64_t want_fire_at;
};

static const struct single_row single_rows[] = {
    {"due now fires on this advance", 4096, 10, 1000, 1000, 0, 1000},
    {"due in the past fires on the next advance", 4096, 10, 1000, 400, 0, 1000},
    {"long past", 4096, 10, 10 * DAY_MS, 5, 0, 10 * DAY_MS},
    {"later in the current tick", 4096, 10, 1000, 1007, 1, 1007},
    {"just after a tick boundary", 4096, 10, 1000, 1011, 1, 1011},
    {"coarse steps round up", 4096, 10, 1000, 1011, 20, 1020},
    {"exactly one revolution", 4096, 10, 0, 40960, 10, 40960},
    {"one revolution minus a tick", 4096, 10, 0, 40950, 10, 40950},
    {"one revolution plus a tick", 4096, 10, 0, 40970, 10, 40970},
    {"7 days, hourly steps", 4096, 10, 5, 7 * DAY_MS + 5, 3600 * 1000, 7 * DAY_MS + 5},
    {"7 days, odd steps", 4096, 10, 5, 7 * DAY_MS + 5, 999983, 7 * DAY_MS + 5 + 189715},
    {"7 days, 1s steps", 4096, 10, 0, 7 * DAY_MS + 3, 1000, 7 * DAY_MS + 1000},
    {"7 days in one jump", 4096, 10, 0, 7 * DAY_MS, 7 * DAY_MS, 7 * DAY_MS},
    {"jump past 7 days", 4096, 10, 0, 7 * DAY_MS, 30 * DAY_MS, 30 * DAY_MS},
    {"clock before zero", 64, 10, -1000, -555, 7, -552},
    {"tiny wheel, many revolutions", 8, 1, 0, 1000, 3, 1002},
};

static void test_single_entry_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(single_rows); i++) {
        const struct single_row *r = &single_rows[i];
        wheel *w = wheel_new(r->slots, r->tick_ms, r->start_ms);
        assert_non_null(w);
        struct timer t;
        timer_init(&t, 1);
        wheel_arm(w, &t.e, r->due_ms);
        assert_true(wheel_entry_armed(&t.e));
        assert_int_equal(wheel_count(w), 1);
        int64_t now = r->start_ms;
        for (int guard = 0; !t.fired && guard < 10000000; guard++) {
            advance(w, now);
            if (!t.fired)
                now += r->step_ms;
        }
        if (t.fired != 1 || t.fired_at != r->want_fire_at) {
            print_error("%s: fired %d times at %lld, want once at %lld\n", r->name, t.fired,
                        (long long)t.fired_at, (long long)r->want_fire_at);
            fail();
        }
        assert_false(wheel_entry_armed(&t.e));
        assert_int_equal(wheel_count(w), 0);
        assert_int_equal(wheel_next_timeout(w, now), -1);
        /* and never again */
        advance(w, now + 100 * DAY_MS);
        assert_int_equal(t.fired, 1);
        wheel_free(w);
    }
}

static void test_arm_cancel_rearm(void **state)
{
    (void)state;
    wheel *w = wheel_new(4096, 10, 0);
    struct timer a, b;
    timer_init(&a, 1);
    timer_init(&b, 2);

    /* cancel of an unarmed entry is a no-op, twice */
    wheel_cancel(w, &a.e);
    wheel_cancel(w, &a.e);
    assert_int_equal(wheel_count(w), 0);

    wheel_arm(w, &a.e, 100);
    wheel_arm(w, &b.e, 200);
    assert_int_equal(wheel_count(w), 2);
    wheel_cancel(w, &a.e);
    assert_false(wheel_entry_armed(&a.e));
    assert_int_equal(wheel_count(w), 1);
    wheel_cancel(w, &a.e);
    assert_int_equal(wheel_count(w), 1);
    assert_int_equal(advance(w, 150), 0);
    assert_int_equal(a.fired, 0);

    /* re-arming an armed entry moves it and does not count it twice */
    wheel_arm(w, &b.e, 500);
    wheel_arm(w, &b.e, 300);
    assert_int_equal(wheel_count(w), 1);
    assert_int_equal(advance(w, 250), 0);
    assert_int_equal(advance(w, 300), 1);
    assert_int_equal(b.fired, 1);
    assert_int_equal(b.fired_at, 300);

    /* later and far: re-arm from 1s to 7 days and back to 2s */
    wheel_arm(w, &a.e, 1000);
    wheel_arm(w, &a.e, 7 * DAY_MS);
    assert_int_equal(advance(w, 1000), 0);
    wheel_arm(w, &a.e, 2000);
    assert_int_equal(advance(w, 1999), 0);
    assert_int_equal(advance(w, 2000), 1);
    assert_int_equal(a.fired, 1);

    /* a fired entry can be armed again */
    wheel_arm(w, &a.e, 2500);
    assert_int_equal(advance(w, 3000), 1);
    assert_int_equal(a.fired, 2);
    assert_int_equal(wheel_count(w), 0);

    /* cancel, then re-arm in the past: fires on the next advance */
    wheel_arm(w, &a.e, 5000);
    wheel_cancel(w, &a.e);
    wheel_arm(w, &a.e, 10);
    assert_int_equal(advance(w, 3000), 1);
    assert_int_equal(a.fired, 3);

    /* armed entries are forgotten by wheel_free (ASan checks nothing leaks) */
    wheel_arm(w, &a.e, 9000);
    wheel_free(w);
}

/* Many entries in one slot and across slots, 7 days out with a 10 ms tick and
 * 4096 slots: each fires within one step after its due time, never before. */
static void test_far_future_population(void **state)
{
    (void)state;
    enum { N = 3000 };
    const int64_t start = 123456;
    wheel *w = wheel_new(4096, 10, start);
    static struct timer ts[N];
    for (int i = 0; i < N; i++) {
        timer_init(&ts[i], i);
        /* spread over 7 days, with clusters on the same slot (multiples of one
         * revolution apart) */
        int64_t due = start + (i % 3 == 0 ? (int64_t)(i / 3) * 40960 : (int64_t)i * 201599);
        if (due > start + 7 * DAY_MS)
            due = start + 7 * DAY_MS;
        wheel_arm(w, &ts[i].e, due);
    }
    assert_int_equal(wheel_count(w), N);
    const int64_t step = 7919; /* not a multiple of the tick */
    int64_t now = start;
    size_t total = 0;
    while (wheel_count(w) > 0) {
        now += step;
        total += advance(w, now);
        assert_true(now < start + 8 * DAY_MS);
    }
    assert_int_equal(total, N);
    for (int i = 0; i < N; i++) {
        assert_int_equal(ts[i].fired, 1);
        assert_true(ts[i].fired_at >= ts[i].e.due_ms);
        assert_true(ts[i].fired_at <= ts[i].e.due_ms + step);
    }
    wheel_free(w);
}

static void test_callbacks_change_the_wheel(void **state)
{
    (void)state;
    wheel *w = wheel_new(64, 10, 0);
    struct timer a, b, c, d, e, f, g;
    timer_init(&a, 'a');
    timer_init(&b, 'b');
    timer_init(&c, 'c');
    timer_init(&d, 'd');
    timer_init(&e, 'e');
    timer_init(&f, 'f');
    timer_init(&g, 'g');

    /* b fires first and cancels c, due in the same tick (so c sits right
     * behind b in the slot being walked) */
    b.cancel_other = &c;
    wheel_arm(w, &b.e, 100);
    wheel_arm(w, &c.e, 101);
    /* d fires and cancels e, due a few ticks later within the same advance */
    d.cancel_other = &e;
    wheel_arm(w, &d.e, 120);
    wheel_arm(w, &e.e, 150);
    /* f fires and moves g from far away to a time this advance has reached:
     * g fires on the next advance */
    f.arm_other = &g;
    f.arm_other_at = 180;
    wheel_arm(w, &f.e, 130);
    wheel_arm(w, &g.e, 5 * DAY_MS);
    /* a re-arms itself every 25ms, three more times */
    a.rearm_every = 25;
    a.rearm_left = 3;
    wheel_arm(w, &a.e, 100);

    ctx.nlog = 0;
    size_t n = advance(w, 200);
    /* b, a, d, f fire; c and e were cancelled; a's re-arms are due at
     * 225.. (after this advance's clock) */
    assert_int_equal(n, 4);
    assert_int_equal(b.fired, 1);
    assert_int_equal(c.fired, 0);
    assert_false(wheel_entry_armed(&c.e));
    assert_int_equal(d.fired, 1);
    assert_int_equal(e.fired, 0);
    assert_false(wheel_entry_armed(&e.e));
    assert_int_equal(f.fired, 1);
    assert_int_equal(g.fired, 0);
    assert_true(wheel_entry_armed(&g.e));
    assert_int_equal(a.fired, 1);
    assert_true(wheel_entry_armed(&a.e));
    assert_int_equal(wheel_count(w), 2);
    assert_int_equal(wheel_next_timeout(w, 200), 0);
    assert_int_equal(advance(w, 200), 1);
    assert_int_equal(g.fired, 1);

    for (int64_t now = 210; now <= 400; now += 10)
        advance(w, now);
    assert_int_equal(a.fired, 4);
    assert_false(wheel_entry_armed(&a.e));
    assert_int_equal(wheel_count(w), 0);
    wheel_free(w);
}

/* A callback that re-arms itself for "now" (or the past) must not loop: it
 * fires once per advance. */
static void test_rearm_now_does_not_livelock(void **state)
{
    (void)state;
    static const int64_t offsets[] = {0, -1, -1000};
    for (size_t i = 0; i < ARRAY_LEN(offsets); i++) {
        wheel *w = wheel_new(16, 10, 0);
        struct timer t;
        timer_init(&t, 1);
        t.arm_other = &t; /* re-arms itself at arm_other_at, set per advance */
        wheel_arm(w, &t.e, 50);
        int64_t now = 0;
        for (int k = 1; k <= 20; k++) {
            now += 37;
            t.arm_other_at = now + offsets[i];
            assert_int_equal(advance(w, now), now >= 50 ? 1 : 0);
        }
        assert_int_equal(t.fired, 20 - 1); /* every advance from 74ms on */
        wheel_free(w);
    }
}

/* An entry armed from a callback for a time the current advance has already
 * reached fires on the next advance (even at the same clock); one due after
 * the clock waits for its time. */
static void test_arm_from_callback_for_reached_time(void **state)
{
    (void)state;
    wheel *w = wheel_new(4096, 10, 0);
    struct timer x, y;
    timer_init(&x, 'x');
    timer_init(&y, 'y');
    x.arm_other = &y;
    x.arm_other_at = 500;
    wheel_arm(w, &x.e, 100);
    ctx.nlog = 0;
    assert_int_equal(advance(w, 1000), 1);
    assert_int_equal(advance(w, 1000), 1);
    assert_int_equal(ctx.nlog, 2);
    assert_int_equal(ctx.log[0], 'x');
    assert_int_equal(ctx.log[1], 'y');

    y.arm_other = &x;
    y.arm_other_at = 1001;
    wheel_arm(w, &y.e, 1000);
    assert_int_equal(advance(w, 1000), 1);
    assert_int_equal(advance(w, 1000), 0);
    assert_int_equal(advance(w, 1001), 1);
    assert_int_equal(x.fired, 2);
    assert_int_equal(x.fired_at, 1001);
    wheel_free(w);
}

struct timeout_row {
    const char *name;
    int64_t now;
    int64_t due; /* -1: nothing armed */
    int64_t want;
};

static void test_next_timeout_table(void **state)
{
    (void)state;
    /* wheel: 4096 slots of 10ms, clock started and last advanced at 1000 */
    static const struct timeout_row rows[] = {
        {"empty", 1000, -1, -1},
        {"due later in this tick", 1000, 1007, 7},
        {"due now", 1003, 1003, 0},
        {"overdue", 1005, 1002, 0},
        {"armed in the past", 1000, 10, 0},
        {"next tick: wake at its start", 1003, 1015, 7},
        {"far away: at most a tick", 1000, 7 * DAY_MS, 10},
        {"one revolution away, same slot", 1000, 1000 + 40960, 10},
        {"advance overdue by several ticks", 1050, 1020, 0},
        {"advance late, due still ahead", 1050, 1056, 6},
        {"a revolution without advance", 1000 + 50000, 7 * DAY_MS, 0},
    };
    for (size_t i = 0; i < ARRAY_LEN(rows); i++) {
        const struct timeout_row *r = &rows[i];
        wheel *w = wheel_new(4096, 10, 1000);
        advance(w, 1000);
        struct timer t;
        timer_init(&t, 1);
        if (r->due >= 0)
            wheel_arm(w, &t.e, r->due);
        int64_t got = wheel_next_timeout(w, r->now);
        if (got != r->want) {
            print_error("%s: next_timeout = %lld, want %lld\n", r->name, (long long)got,
                        (long long)r->want);
            fail();
        }
        wheel_free(w);
    }
}

/* Sleeping exactly what next_timeout says, then advancing, fires every entry
 * on time (within a tick) and never early. */
static void test_next_timeout_drives_the_clock(void **state)
{
    (void)state;
    enum { N = 200 };
    wheel *w = wheel_new(256, 10, 0);
    static struct timer ts[N];
    uint64_t x = 42;
    for (int i = 0; i < N; i++) {
        timer_init(&ts[i], i);
        x = x * 6364136223846793005ULL + 1442695040888963407ULL;
        wheel_arm(w, &ts[i].e, (int64_t)(x >> 33) % 20000);
    }
    int64_t now = 0;
    int wakeups = 0;
    for (;;) {
        int64_t t = wheel_next_timeout(w, now);
        if (t < 0)
            break;
        assert_true(t <= 10);
        now += t;
        advance(w, now);
        wakeups++;
        assert_true(wakeups < 100000);
    }
    for (int i = 0; i < N; i++) {
        assert_int_equal(ts[i].fired, 1);
        assert_true(ts[i].fired_at >= ts[i].e.due_ms);
        assert_true(ts[i].fired_at <= ts[i].e.due_ms + 10);
    }
    wheel_free(w);
}

/* The reference: a plain array of (due, armed) per timer. */
struct ref_timer {
    bool armed;
    int64_t due;
};

static uint64_t rng_state;

static uint64_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static int cmp_int(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

struct random_row {
    uint64_t seed;
    size_t slots;
    int64_t tick_ms;
    int64_t max_step;    /* the clock moves by up to this per advance */
    int64_t max_horizon; /* due times up to this far ahead */
};

static void test_randomized_against_reference(void **state)
{
    (void)state;
    static const struct random_row rows[] = {
        {1, 4096, 10, 200, 7 * DAY_MS},
        {2, 64, 10, 3000, 100000},        /* many revolutions per advance */
        {3, 16, 1, 40, 5000},             /* heavy slot sharing */
        {4, 4096, 10, 50000, 3 * DAY_MS}, /* jumps longer than a revolution */
        {5, 1, 7, 100, 1000},             /* one slot: a sorted-by-nothing list */
    };
    enum { N = 1500, ROUNDS = 3000 };
    static struct timer ts[N];
    static struct ref_timer ref[N];
    static int want[N];
    for (size_t ri = 0; ri < ARRAY_LEN(rows); ri++) {
        const struct random_row *r = &rows[ri];
        rng_state = r->seed * 0x9e3779b97f4a7c15ULL;
        int64_t now = (int64_t)(rng() % 100000);
        wheel *w = wheel_new(r->slots, r->tick_ms, now);
        for (int i = 0; i < N; i++) {
            timer_init(&ts[i], i);
            ref[i].armed = false;
        }
        size_t armed = 0;
        for (int round = 0; round < ROUNDS; round++) {
            /* a burst of arms, re-arms and cancels */
            int ops = (int)(rng() % 8);
            for (int k = 0; k < ops; k++) {
                int i = (int)(rng() % N);
                uint64_t kind = rng() % 10;
                if (kind < 7) {
                    int64_t due;
                    if (kind == 0)
                        due = now - (int64_t)(rng() % 1000); /* in the past */
                    else if (kind == 1)
                        due = now + (int64_t)(rng() % (uint64_t)r->max_horizon);
                    else
                        due = now + (int64_t)(rng() % (uint64_t)(4 * r->max_step + 1));
                    armed += !ref[i].armed;
                    wheel_arm(w, &ts[i].e, due);
                    ref[i].armed = true;
                    ref[i].due = due;
                } else {
                    armed -= ref[i].armed;
                    wheel_cancel(w, &ts[i].e);
                    ref[i].armed = false;
                }
            }
            assert_int_equal(wheel_count(w), armed);

            int64_t from_tick = now / r->tick_ms;
            int64_t step = (int64_t)(rng() % (uint64_t)(r->max_step + 1));
            now += step;
            size_t nwant = 0;
            for (int i = 0; i < N; i++) {
                if (ref[i].armed && ref[i].due <= now) {
                    want[nwant++] = i;
                    ref[i].armed = false;
                    armed--;
                }
            }
            ctx.nlog = 0;
            size_t n = advance(w, now);
            assert_int_equal(n, nwant);
            assert_int_equal(ctx.nlog, nwant);
            assert_int_equal(wheel_count(w), armed);

            /* Within an advance shorter than a revolution, entries fire in
             * tick order (overdue ones first). */
            if ((uint64_t)(now / r->tick_ms - from_tick) < r->slots) {
                int64_t prev = INT64_MIN;
                for (size_t k = 0; k < ctx.nlog; k++) {
                    int64_t t = ts[ctx.log[k]].e.due_ms / r->tick_ms;
                    if (t < from_tick)
                        t = from_tick;
                    assert_true(t >= prev);
                    prev = t;
                }
            }
            for (size_t k = 0; k < ctx.nlog; k++) {
                const struct timer *t = &ts[ctx.log[k]];
                assert_true(t->e.due_ms <= now); /* never early */
                assert_false(wheel_entry_armed(&t->e));
            }
            qsort(ctx.log, ctx.nlog, sizeof(ctx.log[0]), cmp_int);
            assert_memory_equal(ctx.log, want, nwant * sizeof(want[0]));
            for (int i = 0; i < N; i++)
                assert_int_equal(wheel_entry_armed(&ts[i].e), ref[i].armed);

            int64_t to = wheel_next_timeout(w, now);
            if (armed == 0) {
                assert_int_equal(to, -1);
            } else {
                assert_in_range(to, 0, r->tick_ms);
                /* nothing may be due before the time it gives */
                for (int i = 0; i < N; i++)
                    assert_true(!ref[i].armed || ref[i].due >= now + to);
            }
        }
        wheel_free(w);
    }
}

/* Callbacks that arm and cancel random entries while the wheel advances, with
 * the reference kept in step from inside the callbacks. Whatever the order of
 * firing, an entry fires only while armed and due, never twice in one
 * advance, never in the advance that armed it from a callback, and nothing due
 * is left behind. */
static struct {
    struct ref_timer ref[512];
    bool from_callback[512]; /* armed by a callback in the advance under way */
    int fired_now[512];
    size_t armed;
    int64_t now;
    int64_t tick_ms;
} chaos;

static void chaos_fn(wheel_entry *e)
{
    struct timer *t = container_of(e, struct timer, e);
    int i = t->id;
    assert_true(chaos.ref[i].armed);
    assert_true(chaos.ref[i].due <= chaos.now);
    assert_false(chaos.from_callback[i]);
    assert_int_equal(chaos.fired_now[i], 0);
    chaos.fired_now[i]++;
    chaos.ref[i].armed = false;
    chaos.armed--;

    struct timer *all = t - i;
    int ops = (int)(rng() % 4);
    for (int k = 0; k < ops; k++) {
        int j = (int)(rng() % ARRAY_LEN(chaos.ref));
        if (rng() % 3 == 0) {
            wheel_cancel(ctx.w, &all[j].e);
            chaos.armed -= chaos.ref[j].armed;
            chaos.ref[j].armed = false;
            chaos.from_callback[j] = false;
        } else {
            /* from well in the past to a few ticks ahead */
            int64_t due = chaos.now - 50 + (int64_t)(rng() % (uint64_t)(8 * chaos.tick_ms + 50));
            wheel_arm(ctx.w, &all[j].e, due);
            chaos.armed += !chaos.ref[j].armed;
            chaos.ref[j].armed = true;
            chaos.ref[j].due = due;
            chaos.from_callback[j] = due <= chaos.now;
        }
    }
}

static void test_randomized_callbacks(void **state)
{
    (void)state;
    enum { N = ARRAY_LEN(chaos.ref) };
    static struct timer ts[N];
    static const size_t slot_counts[] = {4096, 32, 1};
    for (size_t si = 0; si < ARRAY_LEN(slot_counts); si++) {
        rng_state = 0x5eed + si;
        memset(&chaos, 0, sizeof(chaos));
        chaos.tick_ms = 10;
        int64_t now = 1000;
        wheel *w = wheel_new(slot_counts[si], chaos.tick_ms, now);
        for (int i = 0; i < N; i++) {
            memset(&ts[i], 0, sizeof(ts[i]));
            wheel_entry_init(&ts[i].e, chaos_fn);
            ts[i].id = i;
        }
        for (int i = 0; i < N; i += 2) {
            int64_t due = now + (int64_t)(rng() % 2000);
            wheel_arm(w, &ts[i].e, due);
            chaos.ref[i].armed = true;
            chaos.ref[i].due = due;
            chaos.armed++;
        }
        size_t total = 0;
        for (int round = 0; round < 2000; round++) {
            now += (int64_t)(rng() % 40);
            memset(chaos.from_callback, 0, sizeof(chaos.from_callback));
            memset(chaos.fired_now, 0, sizeof(chaos.fired_now));
            chaos.now = now;
            ctx.w = w;
            size_t n = wheel_advance(w, now);
            size_t fired = 0;
            for (int i = 0; i < N; i++) {
                fired += (size_t)chaos.fired_now[i];
                assert_int_equal(wheel_entry_armed(&ts[i].e), chaos.ref[i].armed);
                /* due and armed now: only if a callback armed it this time */
                if (chaos.ref[i].armed && chaos.ref[i].due <= now)
                    assert_true(chaos.from_callback[i]);
            }
            assert_int_equal(n, fired);
            total += n;
            assert_int_equal(wheel_count(w), chaos.armed);
            if (chaos.armed == 0) {
                /* keep the wheel busy */
                wheel_arm(w, &ts[0].e, now + 5);
                chaos.ref[0].armed = true;
                chaos.ref[0].due = now + 5;
                chaos.armed = 1;
            }
        }
        assert_true(total > 2000); /* the run did exercise the callbacks */
        wheel_free(w);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_new_rejects_bad_geometry),
        cmocka_unit_test(test_single_entry_table),
        cmocka_unit_test(test_arm_cancel_rearm),
        cmocka_unit_test(test_far_future_population),
        cmocka_unit_test(test_callbacks_change_the_wheel),
        cmocka_unit_test(test_rearm_now_does_not_livelock),
        cmocka_unit_test(test_arm_from_callback_for_reached_time),
        cmocka_unit_test(test_next_timeout_table),
        cmocka_unit_test(test_next_timeout_drives_the_clock),
        cmocka_unit_test(test_randomized_against_reference),
        cmocka_unit_test(test_randomized_callbacks),
    };
    return cmocka_run_group_tests_name("core/wheel", tests, NULL, NULL);
}
