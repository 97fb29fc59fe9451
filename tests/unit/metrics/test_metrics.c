/* Unit tests for src/metrics/metrics.c: registration rules, counters summed
 * exactly over threads (and over threads that exited), gauges, histogram
 * buckets, label escaping, series removal and slot reuse, callback families,
 * running out of slots, the JSON shape of /metrics.json, and the text
 * exposition checked by Python's prometheus_client parser. Every test ends
 * with metrics_shutdown(), so each starts from an empty registry. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/kerr.h"
#include "metrics/metrics.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

static int teardown(void **state)
{
    (void)state;
    metrics_shutdown();
    return 0;
}

static char *render_text(void)
{
    size_t len = 0;
    char *s = metrics_render_prometheus(&len);
    assert_non_null(s);
    assert_int_equal(strlen(s), len);
    return s;
}

static json_t *render_json(void)
{
    size_t len = 0;
    char *s = metrics_render_json(&len);
    assert_non_null(s);
    assert_int_equal(strlen(s), len);
    json_error_t err;
    json_t *j = json_loads(s, 0, &err);
    if (!j)
        fail_msg("metrics.json does not parse: %s at line %d: %s", err.text, err.line, s);
    free(s);
    return j;
}

static void assert_contains(const char *hay, const char *needle)
{
    if (!strstr(hay, needle))
        fail_msg("expected to find [%s] in:\n%s", needle, hay);
}

static void assert_lacks(const char *hay, const char *needle)
{
    if (strstr(hay, needle))
        fail_msg("did not expect [%s] in:\n%s", needle, hay);
}

/* ---- registration ------------------------------------------------------- */

static void test_registration_rules(void **state)
{
    (void)state;
    metrics_family *f = NULL, *g = NULL;
    const char *svc[] = {"service"};
    const char *two[] = {"a", "b"};

    static const struct {
        const char *name;
        const char *label;
    } bad[] = {
        {"", NULL},    {"1abc", NULL}, {"a-b", NULL}, {"a b", NULL}, {"ok", ""},
        {"ok", "__x"}, {"ok", "a:b"},  {"ok", "9a"},  {"ok", "a-b"}, {NULL, NULL},
    };
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        const char *labels[] = {bad[i].label};
        assert_int_equal(metrics_counter_family(&f, bad[i].name, "h", labels, bad[i].label ? 1 : 0),
                         KERR_INVAL);
    }
    /* duplicate label names; too many; NULL array */
    const char *dup[] = {"x", "x"};
    assert_int_equal(metrics_gauge_family(&f, "g1", "h", dup, 2), KERR_INVAL);
    const char *many[METRICS_MAX_LABELS + 1] = {"a", "b", "c", "d", "e", "f", "g", "h", "i"};
    assert_int_equal(metrics_gauge_family(&f, "g1", "h", many, METRICS_MAX_LABELS + 1), KERR_INVAL);
    assert_int_equal(metrics_gauge_family(&f, "g1", "h", NULL, 1), KERR_INVAL);
    assert_int_equal(metrics_gauge_family(NULL, "g1", "h", NULL, 0), KERR_INVAL);

    /* histogram: "le" reserved, bounds finite and strictly increasing */
    const char *le[] = {"le"};
    assert_int_equal(metrics_histogram_family(&f, "h1", "h", le, 1, NULL, 0), KERR_INVAL);
    const double unsorted[] = {1, 0.5};
    const double same[] = {1, 1};
    const double inf[] = {1, INFINITY};
    double toomany[METRICS_MAX_BUCKETS + 1];
    for (size_t i = 0; i < ARRAY_LEN(toomany); i++)
        toomany[i] = (double)i;
    assert_int_equal(metrics_histogram_family(&f, "h1", "h", NULL, 0, unsorted, 2), KERR_INVAL);
    assert_int_equal(metrics_histogram_family(&f, "h1", "h", NULL, 0, same, 2), KERR_INVAL);
    assert_int_equal(metrics_histogram_family(&f, "h1", "h", NULL, 0, inf, 2), KERR_INVAL);
    assert_int_equal(metrics_histogram_family(&f, "h1", "h", NULL, 0, toomany, ARRAY_LEN(toomany)),
                     KERR_INVAL);
    assert_int_equal(metrics_histogram_family(&f, "h1", "h", NULL, 0, toomany, 0), KERR_INVAL);
    assert_int_equal(
        metrics_histogram_family(&f, "h62", "h", NULL, 0, toomany, METRICS_MAX_BUCKETS), 0);

    /* same registration again: same family */
    assert_int_equal(metrics_counter_family(&f, "total_x", "help", svc, 1), 0);
    assert_int_equal(metrics_counter_family(&g, "total_x", "help", svc, 1), 0);
    assert_ptr_equal(f, g);
    /* any difference: EXISTS, *out untouched */
    g = NULL;
    assert_int_equal(metrics_gauge_family(&g, "total_x", "help", svc, 1), KERR_EXISTS);
    assert_int_equal(metrics_counter_family(&g, "total_x", "other", svc, 1), KERR_EXISTS);
    assert_int_equal(metrics_counter_family(&g, "total_x", "help", two, 2), KERR_EXISTS);
    assert_int_equal(metrics_counter_family(&g, "total_x", "help", NULL, 0), KERR_EXISTS);
    assert_null(g);
    const double b1[] = {1, 2}, b2[] = {1, 3};
    assert_int_equal(metrics_histogram_family(&f, "lat", "h", NULL, 0, b1, 2), 0);
    assert_int_equal(metrics_histogram_family(&g, "lat", "h", NULL, 0, b1, 2), 0);
    assert_ptr_equal(f, g);
    assert_int_equal(metrics_histogram_family(&g, "lat", "h", NULL, 0, b2, 2), KERR_EXISTS);

    /* histogram sample names collide with other families, both ways */
    assert_int_equal(metrics_counter_family(&g, "lat_count", "h", NULL, 0), KERR_EXISTS);
    assert_int_equal(metrics_gauge_family(&g, "lat_sum", "h", NULL, 0), KERR_EXISTS);
    assert_int_equal(metrics_gauge_family(&g, "lat_bucket", "h", NULL, 0), KERR_EXISTS);
    assert_int_equal(metrics_gauge_family(&g, "lat_other", "h", NULL, 0), 0);
    assert_int_equal(metrics_gauge_family(&g, "dur_count", "h", NULL, 0), 0);
    assert_int_equal(metrics_histogram_family(&g, "dur", "h", NULL, 0, NULL, 0), KERR_EXISTS);

    /* callback families: counter or gauge only, never shared */
    assert_int_equal(metrics_callback_family(&g, METRICS_HISTOGRAM, "cb", "h", NULL, 0, NULL, NULL),
                     KERR_INVAL);
    assert_int_equal(metrics_callback_family(&g, METRICS_GAUGE, "cb", "h", NULL, 0, NULL, NULL), 0);
    assert_int_equal(metrics_callback_family(&f, METRICS_GAUGE, "cb", "h", NULL, 0, NULL, NULL),
                     KERR_EXISTS);
    assert_int_equal(metrics_gauge_family(&f, "cb", "h", NULL, 0), KERR_EXISTS);
    assert_int_equal(metrics_callback_family_set(g, NULL, NULL), 0);
    metrics_family *plain;
    assert_int_equal(metrics_gauge_family(&plain, "plain", NULL, NULL, 0), 0);
    assert_int_equal(metrics_callback_family_set(plain, NULL, NULL), KERR_INVAL);
    assert_int_equal(metrics_callback_family_set(NULL, NULL, NULL), KERR_INVAL);

    /* NULL help means no HELP line; "" the same */
    assert_int_equal(metrics_gauge_family(&g, "plain", "", NULL, 0), 0);
    assert_ptr_equal(g, plain);
}

/* ---- counters over threads ------------------------------------------------ */

#define NTHREADS 8
#define NINCS 100000

struct worker {
    metrics_family *fam;
    metrics_counter *shared;
    metrics_histogram *hist;
    int id;
};

static void *worker_main(void *p)
{
    struct worker *w = p;
    char name[16];
    snprintf(name, sizeof name, "t%d", w->id);
    metrics_counter *mine = metrics_counter_get(w->fam, name, NULL);
    for (int i = 0; i < NINCS; i++) {
        metrics_counter_inc(w->shared);
        metrics_counter_add(mine, 2);
        if (i % 100 == 0)
            metrics_histogram_observe(w->hist, (double)(i % 3));
    }
    metrics_counter_unref(mine);
    return NULL;
}

struct scraper {
    atomic_bool stop;
    metrics_counter *shared;
    metrics_family *fam;
    int renders;
    bool went_backwards;
};

/* Scrapes, looks series up and removes them while the workers count. */
static void *scraper_main(void *p)
{
    struct scraper *sc = p;
    uint64_t last = 0;
    int round = 0;
    while (!atomic_load(&sc->stop)) {
        uint64_t v = metrics_counter_value(sc->shared);
        if (v < last)
            sc->went_backwards = true;
        last = v;
        char *t = metrics_render_prometheus(NULL);
        char *j = metrics_render_json(NULL);
        free(t);
        free(j);
        char name[16];
        snprintf(name, sizeof name, "tmp%d", round++ % 4);
        metrics_counter *c = metrics_counter_get(sc->fam, name, NULL);
        metrics_counter_inc(c);
        metrics_series_remove(sc->fam, name, NULL);
        metrics_counter_unref(c);
        sc->renders++;
    }
    return NULL;
}

static void run_workers(struct worker *w)
{
    pthread_t th[NTHREADS];
    for (int i = 0; i < NTHREADS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, worker_main, &w[i]), 0);
    for (int i = 0; i < NTHREADS; i++)
        assert_int_equal(pthread_join(th[i], NULL), 0);
}

static void test_counters_summed_over_threads(void **state)
{
    (void)state;
    metrics_family *total, *per, *lat;
    const char *th[] = {"thread"};
    const double bounds[] = {0.5, 1.5};
    assert_int_equal(metrics_counter_family(&total, "incs_total", "increments", NULL, 0), 0);
    assert_int_equal(metrics_counter_family(&per, "incs_by_thread", "per thread", th, 1), 0);
    assert_int_equal(metrics_histogram_family(&lat, "obs", "observations", NULL, 0, bounds, 2), 0);
    metrics_counter *shared = metrics_counter_get(total, NULL);
    metrics_histogram *hist = metrics_histogram_get(lat, NULL);
    assert_int_equal(metrics_counter_value(shared), 0);

    struct scraper sc = {.shared = shared, .fam = per};
    atomic_init(&sc.stop, false);
    pthread_t sct;
    assert_int_equal(pthread_create(&sct, NULL, scraper_main, &sc), 0);

    struct worker w[NTHREADS];
    for (int i = 0; i < NTHREADS; i++)
        w[i] = (struct worker){.fam = per, .shared = shared, .hist = hist, .id = i};
    run_workers(w);
    assert_int_equal(metrics_counter_value(shared), (uint64_t)NTHREADS * NINCS);

    /* A second round of threads adopts the shards the first left: nothing is
     * lost and nothing counted twice. */
    run_workers(w);
    atomic_store(&sc.stop, true);
    assert_int_equal(pthread_join(sct, NULL), 0);
    assert_false(sc.went_backwards);
    assert_true(sc.renders > 0);

    assert_int_equal(metrics_counter_value(shared), 2ull * NTHREADS * NINCS);
    for (int i = 0; i < NTHREADS; i++) {
        char name[16];
        snprintf(name, sizeof name, "t%d", i);
        metrics_counter *c = metrics_counter_get(per, name, NULL);
        assert_int_equal(metrics_counter_value(c), 2ull * 2 * NINCS);
        metrics_counter_unref(c);
    }
    /* i % 100 == 0 for 1000 values of i per thread per round; i % 3 cycles */
    uint64_t obs = 2ull * NTHREADS * (NINCS / 100);
    assert_int_equal(metrics_histogram_count(hist), obs);

    char *t = render_text();
    char line[128];
    snprintf(line, sizeof line, "\nincs_total %llu\n", 2ull * NTHREADS * NINCS);
    assert_contains(t, line);
    snprintf(line, sizeof line, "incs_by_thread{thread=\"t7\"} %llu\n", 4ull * NINCS);
    assert_contains(t, line);
    snprintf(line, sizeof line, "obs_count %llu\n", (unsigned long long)obs);
    assert_contains(t, line);
    assert_lacks(t, "tmp"); /* the scraper's series were all removed */
    free(t);
    metrics_counter_unref(shared);
    metrics_histogram_unref(hist);
}

/* ---- gauges ------------------------------------------------------------------ */

static void test_gauges(void **state)
{
    (void)state;
    metrics_family *f, *u;
    const char *q[] = {"queue"};
    assert_int_equal(metrics_gauge_family(&f, "scheduled_count", "queued", q, 1), 0);
    assert_int_equal(metrics_gauge_family(&u, "memory_usage", "bytes", NULL, 0), 0);

    metrics_gauge *a = metrics_gauge_get(f, "a.example", NULL);
    metrics_gauge *b = metrics_gauge_get(f, "b.example", NULL);
    metrics_gauge *a2 = metrics_gauge_getv(f, (const char *[]){"a.example"});
    assert_ptr_equal(a, a2); /* same series, another reference */
    metrics_gauge_unref(a2);

    metrics_gauge_set(a, 10);
    metrics_gauge_add(a, 5);
    metrics_gauge_sub(a, 3);
    metrics_gauge_inc(a);
    metrics_gauge_dec(a);
    metrics_gauge_dec(a);
    assert_int_equal(metrics_gauge_value(a), 11);
    metrics_gauge_sub(b, 4);
    assert_int_equal(metrics_gauge_value(b), -4);
    metrics_gauge *m = metrics_gauge_get(u, NULL);
    metrics_gauge_set(m, INT64_MAX);

    char *t = render_text();
    assert_contains(t, "# HELP scheduled_count queued\n# TYPE scheduled_count gauge\n"
                       "scheduled_count{queue=\"a.example\"} 11\n"
                       "scheduled_count{queue=\"b.example\"} -4\n");
    assert_contains(t, "\nmemory_usage 9223372036854775807\n");
    /* families sorted by name */
    assert_true(strstr(t, "memory_usage") < strstr(t, "scheduled_count"));
    free(t);
    metrics_gauge_unref(a);
    metrics_gauge_unref(b);
    metrics_gauge_unref(m);
}

/* ---- histograms --------------------------------------------------------------- */

static void test_histogram_buckets(void **state)
{
    (void)state;
    metrics_family *f, *d;
    const char *svc[] = {"service"};
    const double bounds[] = {1, 2.5, 5};
    assert_int_equal(metrics_histogram_family(&f, "lat", "latency", svc, 1, bounds, 3), 0);
    assert_int_equal(metrics_histogram_family(&d, "dflt", "defaults", NULL, 0, NULL, 0), 0);

    metrics_histogram *h = metrics_histogram_get(f, "smtp", NULL);
    static const struct {
        double v;
    } obs[] = {{0.5}, {1}, {1.25}, {2.5}, {5}, {7}, {-3}};
    for (size_t i = 0; i < ARRAY_LEN(obs); i++)
        metrics_histogram_observe(h, obs[i].v);
    assert_int_equal(metrics_histogram_count(h), ARRAY_LEN(obs));
    assert_true(fabs(metrics_histogram_sum(h) - 14.25) < 1e-12);

    metrics_histogram *n = metrics_histogram_get(f, "nan", NULL);
    metrics_histogram_observe(n, NAN);
    assert_int_equal(metrics_histogram_count(n), 1);

    char *t = render_text();
    /* le is inclusive: 1 is in le="1"; -3 and 0.5 too */
    assert_contains(t, "# TYPE lat histogram\n"
                       "lat_bucket{service=\"nan\",le=\"1\"} 0\n"
                       "lat_bucket{service=\"nan\",le=\"2.5\"} 0\n"
                       "lat_bucket{service=\"nan\",le=\"5\"} 0\n"
                       "lat_bucket{service=\"nan\",le=\"+Inf\"} 1\n"
                       "lat_sum{service=\"nan\"} NaN\n"
                       "lat_count{service=\"nan\"} 1\n"
                       "lat_bucket{service=\"smtp\",le=\"1\"} 3\n"
                       "lat_bucket{service=\"smtp\",le=\"2.5\"} 5\n"
                       "lat_bucket{service=\"smtp\",le=\"5\"} 6\n"
                       "lat_bucket{service=\"smtp\",le=\"+Inf\"} 7\n"
                       "lat_sum{service=\"smtp\"} 14.25\n"
                       "lat_count{service=\"smtp\"} 7\n");
    static const char *const dflt[] = {"0.005", "0.01", "0.025", "0.05", "0.1", "0.25",
                                       "0.5",   "1",    "2.5",   "5",    "10",  "+Inf"};
    for (size_t i = 0; i < ARRAY_LEN(dflt); i++) {
        char line[64];
        snprintf(line, sizeof line, "dflt_bucket{le=\"%s\"} 0\n", dflt[i]);
        assert_contains(t, line);
    }
    assert_contains(t, "dflt_sum 0\ndflt_count 0\n");
    free(t);
    metrics_histogram_unref(h);
    metrics_histogram_unref(n);
}

/* ---- escaping ----------------------------------------------------------------- */

static void test_label_escaping(void **state)
{
    (void)state;
    metrics_family *f;
    const char *labels[] = {"v", "w"};
    assert_int_equal(metrics_counter_family(&f, "esc_total", "back\\slash \"q\"\nline", labels, 2),
                     0);
    metrics_counter *c = metrics_counter_get(f, "a\\b\"c\nd", "caf\xc3\xa9", NULL);
    metrics_counter_inc(c);
    /* a lone continuation byte and a truncated sequence are not UTF-8 */
    metrics_counter *bad = metrics_counter_get(f, "x\x80y", "z\xe2\x82", NULL);
    metrics_counter_add(bad, 2);

    char *t = render_text();
    assert_contains(t, "# HELP esc_total back\\\\slash \"q\"\\nline\n");
    assert_contains(t, "esc_total{v=\"a\\\\b\\\"c\\nd\",w=\"caf\xc3\xa9\"} 1\n");
    assert_contains(t, "esc_total{v=\"x\xef\xbf\xbdy\",w=\"z\xef\xbf\xbd\xef\xbf\xbd\"} 2\n");
    free(t);

    json_t *j = render_json();
    json_t *fam = json_object_get(j, "esc_total");
    assert_non_null(fam);
    assert_string_equal(json_string_value(json_object_get(fam, "help")), "back\\slash \"q\"\nline");
    json_t *arr = json_object_get(fam, "value");
    assert_true(json_is_array(arr));
    assert_int_equal(json_array_size(arr), 2);
    json_t *first = json_array_get(arr, 0); /* "a\\..." sorts before "x..." */
    assert_string_equal(json_string_value(json_object_get(first, "v")), "a\\b\"c\nd");
    assert_string_equal(json_string_value(json_object_get(first, "w")), "caf\xc3\xa9");
    assert_int_equal(json_integer_value(json_object_get(first, "@")), 1);
    json_decref(j);
    metrics_counter_unref(c);
    metrics_counter_unref(bad);
}

/* ---- removal ------------------------------------------------------------------ */

static void *inc_five(void *p)
{
    metrics_counter_add(p, 5);
    return NULL;
}

static void test_removal(void **state)
{
    (void)state;
    metrics_family *f, *one;
    const char *q[] = {"queue"};
    assert_int_equal(metrics_counter_family(&f, "delayed", "delays", q, 1), 0);
    assert_int_equal(metrics_counter_family(&one, "single", "unlabelled", NULL, 0), 0);

    metrics_counter *a = metrics_counter_get(f, "a", NULL);
    metrics_counter *b = metrics_counter_get(f, "b", NULL);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, inc_five, a), 0);
    assert_int_equal(pthread_join(th, NULL), 0);
    metrics_counter_inc(a);
    metrics_counter_inc(b);
    assert_int_equal(metrics_counter_value(a), 6);

    assert_int_equal(metrics_series_remove(f, "a", NULL), 0);
    assert_int_equal(metrics_series_remove(f, "a", NULL), KERR_NOTFOUND);
    assert_int_equal(metrics_series_removev(f, (const char *[]){"nope"}), KERR_NOTFOUND);
    assert_int_equal(metrics_series_remove(f, NULL), KERR_INVAL);
    assert_int_equal(metrics_series_remove(f, "a", "b", NULL), KERR_INVAL);
    assert_int_equal(metrics_series_remove(one, NULL), KERR_INVAL);

    char *t = render_text();
    assert_lacks(t, "queue=\"a\"");
    assert_contains(t, "delayed{queue=\"b\"} 1\n");
    free(t);

    /* the removed series still takes updates while referenced */
    metrics_counter_inc(a);
    assert_int_equal(metrics_counter_value(a), 7);
    metrics_counter_unref(a); /* last reference: freed, its slot zeroed */

    /* a new series (reusing the freed slot) starts at zero, in every shard */
    metrics_counter *a2 = metrics_counter_get(f, "a", NULL);
    metrics_counter *c = metrics_counter_get(f, "c", NULL);
    assert_int_equal(metrics_counter_value(a2), 0);
    assert_int_equal(metrics_counter_value(c), 0);
    t = render_text();
    assert_contains(t, "delayed{queue=\"a\"} 0\ndelayed{queue=\"b\"} 1\ndelayed{queue=\"c\"} 0\n");
    free(t);

    /* remove while nobody else holds it: freed at once (ASan checks) */
    metrics_counter_unref(c);
    assert_int_equal(metrics_series_remove(f, "c", NULL), 0);
    /* many series come and go; the table and slot free lists keep up */
    for (int i = 0; i < 2000; i++) {
        char name[16];
        snprintf(name, sizeof name, "q%d", i);
        metrics_counter *x = metrics_counter_get(f, name, NULL);
        metrics_counter_inc(x);
        metrics_counter_unref(x);
        if (i % 2)
            assert_int_equal(metrics_series_remove(f, name, NULL), 0);
    }
    t = render_text();
    assert_contains(t, "delayed{queue=\"q1998\"} 1\n");
    assert_lacks(t, "delayed{queue=\"q1999\"}");
    free(t);
    metrics_counter_unref(a2);
    metrics_counter_unref(b);
    metrics_counter_unref(NULL);
}

/* ---- callback families ------------------------------------------------------ */

struct cb_state {
    int calls;
    metrics_family *looked_up;
    int bad_rc;
};

static void collect_queues(metrics_emitter *em, void *arg)
{
    struct cb_state *st = arg;
    st->calls++;
    /* out of order, a duplicate (dropped: the first one wins), a wrong count */
    metrics_emit(em, 3, "zeta", NULL);
    metrics_emit(em, 1.5, "alpha", NULL);
    metrics_emitv(em, 99, (const char *[]){"zeta"});
    st->bad_rc = metrics_emit(em, 1, "a", "b", NULL);
    /* a collect function may look series up */
    metrics_gauge *g = metrics_gauge_get(st->looked_up, NULL);
    metrics_gauge_inc(g);
    metrics_gauge_unref(g);
}

static void collect_scalar(metrics_emitter *em, void *arg)
{
    metrics_emit(em, *(double *)arg, NULL);
}

static void test_callback_gauges(void **state)
{
    (void)state;
    metrics_family *f, *s, *c, *calls;
    struct cb_state st = {0};
    double free_pct = 42.25;
    const char *q[] = {"queue"};
    assert_int_equal(metrics_gauge_family(&calls, "collect_calls", "calls", NULL, 0), 0);
    st.looked_up = calls;
    assert_int_equal(
        metrics_callback_family(&f, METRICS_GAUGE, "sched", "per queue", q, 1, collect_queues, &st),
        0);
    assert_int_equal(metrics_callback_family(&s, METRICS_GAUGE, "disk_free_percent", "free", NULL,
                                             0, collect_scalar, &free_pct),
                     0);
    assert_int_equal(
        metrics_callback_family(&c, METRICS_COUNTER, "rocks_total", "rocks", NULL, 0, NULL, NULL),
        0);

    char *t = render_text();
    assert_int_equal(st.calls, 1);
    assert_int_equal(st.bad_rc, KERR_INVAL);
    assert_contains(t, "# TYPE sched gauge\nsched{queue=\"alpha\"} 1.5\nsched{queue=\"zeta\"} 3\n");
    assert_contains(t, "# TYPE disk_free_percent gauge\ndisk_free_percent 42.25\n");
    assert_contains(t, "# HELP rocks_total rocks\n# TYPE rocks_total counter\n# HELP sched");
    free(t);

    free_pct = 0.1;
    json_t *j = render_json();
    assert_int_equal(st.calls, 2);
    assert_true(json_number_value(
                    json_object_get(json_object_get(j, "disk_free_percent"), "value")) == 0.1);
    json_t *v = json_object_get(json_object_get(json_object_get(j, "sched"), "value"), "queue");
    assert_true(json_number_value(json_object_get(v, "zeta")) == 3);
    assert_true(json_number_value(json_object_get(v, "alpha")) == 1.5);
    assert_int_equal(json_object_size(v), 2);
    assert_true(json_is_null(json_object_get(json_object_get(j, "rocks_total"), "value")));
    /* the lookup made by the first collect shows in the second scrape */
    assert_int_equal(
        json_integer_value(json_object_get(json_object_get(j, "collect_calls"), "value")), 1);
    json_decref(j);

    /* replaced: the old callback no longer runs */
    assert_int_equal(metrics_callback_family_set(f, NULL, NULL), 0);
    assert_int_equal(metrics_callback_family_set(c, collect_scalar, &free_pct), 0);
    t = render_text();
    assert_int_equal(st.calls, 2);
    assert_lacks(t, "sched{");
    assert_contains(t, "\nrocks_total 0.1\n");
    free(t);
}

/* ---- running out of slots ---------------------------------------------------- */

static void test_slot_exhaustion(void **state)
{
    (void)state;
    metrics_family *f, *h;
    const char *q[] = {"queue"};
    assert_int_equal(metrics_counter_family(&f, "few", "few slots", q, 1), 0);
    assert_int_equal(metrics_histogram_family(&h, "fewh", "few slots", q, 1, NULL, 0), 0);
    /* 64 slots are reserved for the sink; leave room for two counters */
    metrics__set_slot_limit(66);
    metrics_counter *a = metrics_counter_get(f, "a", NULL);
    metrics_counter *b = metrics_counter_get(f, "b", NULL);
    metrics_counter *c = metrics_counter_get(f, "c", NULL); /* no slot left */
    metrics_histogram *x = metrics_histogram_get(h, "x", NULL);
    metrics_counter_add(a, 1);
    metrics_counter_add(b, 2);
    metrics_counter_add(c, 3);
    metrics_histogram_observe(x, 1);
    assert_int_equal(metrics_counter_value(c), 0);
    assert_int_equal(metrics_histogram_count(x), 0);
    char *t = render_text();
    assert_contains(t, "few{queue=\"a\"} 1\nfew{queue=\"b\"} 2\n");
    assert_lacks(t, "few{queue=\"c\"}");
    assert_lacks(t, "fewh_");
    free(t);
    /* a freed slot is reused */
    metrics_counter_unref(b);
    assert_int_equal(metrics_series_remove(f, "b", NULL), 0);
    metrics_counter *d = metrics_counter_get(f, "d", NULL);
    metrics_counter_inc(d);
    assert_int_equal(metrics_counter_value(d), 1);
    assert_int_equal(metrics_series_remove(f, "c", NULL), 0);
    metrics_counter_unref(a);
    metrics_counter_unref(c);
    metrics_counter_unref(d);
    metrics_histogram_unref(x);
}

/* ---- JSON shape --------------------------------------------------------------- */

static void test_json_shape(void **state)
{
    (void)state;
    metrics_family *plain, *one, *two, *hist, *empty, *nohelp;
    const char *svc[] = {"service"};
    const char *pp[] = {"provider", "pool"};
    assert_int_equal(metrics_counter_family(&plain, "lua_load_count", "loads", NULL, 0), 0);
    assert_int_equal(metrics_gauge_family(&one, "connection_count", "conns", svc, 1), 0);
    assert_int_equal(metrics_counter_family(&two, "by_pp", "two labels", pp, 2), 0);
    assert_int_equal(metrics_histogram_family(&hist, "hist_name", "hist_help", NULL, 0, NULL, 0),
                     0);
    assert_int_equal(metrics_gauge_family(&empty, "ready_count", "ready", svc, 1), 0);
    assert_int_equal(metrics_counter_family(&nohelp, "family_name", NULL, NULL, 0), 0);

    metrics_counter *l = metrics_counter_get(plain, NULL);
    metrics_counter_inc(l);
    metrics_gauge *g1 = metrics_gauge_get(one, "esmtp_listener", NULL);
    metrics_gauge *g2 = metrics_gauge_get(one, "smtp_client", NULL);
    metrics_gauge_set(g2, 3);
    metrics_counter *c = metrics_counter_get(two, "gmail", "pool1", NULL);
    metrics_counter_add(c, 7);
    metrics_histogram *h = metrics_histogram_get(hist, NULL);
    metrics_histogram_observe(h, 0.2);
    metrics_histogram_observe(h, 0.3);

    json_t *j = render_json();
    json_error_t err;
    json_t *want = json_loads(
        "{\"lua_load_count\": {\"help\": \"loads\", \"type\": \"counter\", \"value\": 1},"
        " \"connection_count\": {\"help\": \"conns\", \"type\": \"gauge\","
        "   \"value\": {\"service\": {\"esmtp_listener\": 0, \"smtp_client\": 3}}},"
        " \"by_pp\": {\"help\": \"two labels\", \"type\": \"counter\","
        "   \"value\": [{\"provider\": \"gmail\", \"pool\": \"pool1\", \"@\": 7}]},"
        " \"ready_count\": {\"help\": \"ready\", \"type\": \"gauge\", \"value\": null},"
        " \"family_name\": {\"type\": \"counter\", \"value\": 0},"
        " \"hist_name\": {\"help\": \"hist_help\", \"type\": \"histogram\", \"value\":"
        "   {\"count\": 2, \"sum\": 0.5, \"avg\": 0.25, \"bucket\": [[0.005, 0], [0.01, 0],"
        "    [0.025, 0], [0.05, 0], [0.1, 0], [0.25, 1], [0.5, 2], [1, 2], [2.5, 2], [5, 2],"
        "    [10, 2]]}}}",
        0, &err);
    if (!want)
        fail_msg("expected JSON: %s", err.text);
    /* jansson tells 1 from 1.0 in equality; compare dumps with reals normalized
     * by walking the few numbers that are reals on one side only. */
    json_t *hv = json_object_get(json_object_get(j, "hist_name"), "value");
    assert_true(fabs(json_number_value(json_object_get(hv, "sum")) - 0.5) < 1e-12);
    assert_true(fabs(json_number_value(json_object_get(hv, "avg")) - 0.25) < 1e-12);
    json_object_set_new(hv, "sum", json_real(0.5));
    json_object_set_new(hv, "avg", json_real(0.25));
    json_t *wb =
        json_object_get(json_object_get(json_object_get(want, "hist_name"), "value"), "bucket");
    json_t *gb = json_object_get(hv, "bucket");
    assert_int_equal(json_array_size(gb), 11); /* no +Inf bucket, as KumoMTA */
    for (size_t i = 0; i < json_array_size(wb); i++) {
        json_t *w = json_array_get(wb, i), *g = json_array_get(gb, i);
        assert_true(json_number_value(json_array_get(w, 0)) ==
                    json_number_value(json_array_get(g, 0)));
        json_array_set(w, 0, json_array_get(g, 0));
    }
    if (!json_equal(j, want)) {
        char *got = json_dumps(j, JSON_SORT_KEYS | JSON_INDENT(1));
        fail_msg("metrics.json differs:\n%s", got);
    }
    json_decref(want);
    json_decref(j);
    metrics_counter_unref(l);
    metrics_gauge_unref(g1);
    metrics_gauge_unref(g2);
    metrics_counter_unref(c);
    metrics_histogram_unref(h);
}

static void test_prefix(void **state)
{
    (void)state;
    metrics_family *f;
    assert_int_equal(metrics_counter_family(&f, "msgs", "messages", NULL, 0), 0);
    char *t = metrics_render_prometheus_prefixed("kumo_", NULL);
    assert_non_null(t);
    assert_string_equal(t, "# HELP kumo_msgs messages\n# TYPE kumo_msgs counter\nkumo_msgs 0\n");
    free(t);
    /* characters a name cannot hold are left out */
    t = metrics_render_prometheus_prefixed("1a-b\n{", NULL);
    assert_string_equal(t, "# HELP abmsgs messages\n# TYPE abmsgs counter\nabmsgs 0\n");
    free(t);
}

/* ---- misuse aborts ------------------------------------------------------------ */

static void misuse_wrong_count(metrics_family *f, metrics_family *g)
{
    (void)g;
    metrics_counter_get(f, "a", "b", NULL);
}

static void misuse_wrong_type(metrics_family *f, metrics_family *g)
{
    (void)f;
    metrics_counter_get(g, "a", NULL);
}

static void misuse_render_in_collect_cb(metrics_emitter *em, void *arg)
{
    (void)em;
    (void)arg;
    free(metrics_render_prometheus(NULL));
}

static void misuse_render_in_collect(metrics_family *f, metrics_family *g)
{
    (void)f;
    (void)g;
    metrics_family *c;
    if (metrics_callback_family(&c, METRICS_GAUGE, "cbm", "h", NULL, 0, misuse_render_in_collect_cb,
                                NULL) == 0)
        free(metrics_render_prometheus(NULL));
}

static void test_misuse_aborts(void **state)
{
    (void)state;
    metrics_family *f, *g;
    const char *q[] = {"queue"};
    assert_int_equal(metrics_counter_family(&f, "mc", "h", q, 1), 0);
    assert_int_equal(metrics_gauge_family(&g, "mg", "h", q, 1), 0);
    void (*cases[])(metrics_family *, metrics_family *) = {misuse_wrong_count, misuse_wrong_type,
                                                           misuse_render_in_collect};
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        fflush(NULL);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            int devnull = open("/dev/null", O_WRONLY);
            if (devnull >= 0)
                dup2(devnull, 2);
            cases[i](f, g);
            _exit(0);
        }
        int status = 0;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFSIGNALED(status));
        assert_int_equal(WTERMSIG(status), SIGABRT);
    }
}

/* ---- the exposition through prometheus_client's parser -------------------- */

static const char parse_script[] =
    "import json, sys\n"
    "from prometheus_client.parser import text_string_to_metric_families\n"
    "text = open(sys.argv[1], encoding='utf-8').read()\n"
    "fams, samples = {}, {}\n"
    "for f in text_string_to_metric_families(text):\n"
    "    if f.type not in ('counter', 'gauge', 'histogram'):\n"
    "        sys.exit('family %s of type %s' % (f.name, f.type))\n"
    "    if f.name in fams:\n"
    "        sys.exit('family %s twice' % f.name)\n"
    "    fams[f.name] = [f.type, f.documentation]\n"
    "    for s in f.samples:\n"
    "        k = s.name + '{' + ','.join('%s=%s' % kv for kv in sorted(s.labels.items())) + '}'\n"
    "        if k in samples:\n"
    "            sys.exit('sample %s twice' % k)\n"
    "        samples[k] = s.value\n"
    "print(json.dumps({'families': fams, 'samples': samples}))\n";

/* Runs the parser on path; returns its JSON answer, or fails the test. */
static json_t *python_parse(const char *path)
{
    int pfd[2];
    assert_int_equal(pipe(pfd), 0);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(pfd[1], 1);
        close(pfd[0]);
        close(pfd[1]);
        char *argv[] = {"/usr/bin/python3", "-c", (char *)parse_script, (char *)path, NULL};
        execv(argv[0], argv);
        _exit(127);
    }
    close(pfd[1]);
    char *out = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len + 4096 > cap) {
            cap = cap ? cap * 2 : 65536;
            out = realloc(out, cap);
            assert_non_null(out);
        }
        ssize_t n = read(pfd[0], out + len, cap - len - 1);
        if (n <= 0)
            break;
        len += (size_t)n;
    }
    close(pfd[0]);
    out[len] = 0;
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail_msg("prometheus_client rejected the exposition (status %d): %s", status, out);
    json_error_t err;
    json_t *j = json_loads(out, 0, &err);
    if (!j)
        fail_msg("parser output is not JSON: %s: %s", err.text, out);
    free(out);
    return j;
}

static void expect_sample(json_t *samples, const char *key, double want)
{
    json_t *v = json_object_get(samples, key);
    if (!v)
        fail_msg("sample %s missing from the parsed exposition", key);
    double got = json_number_value(v);
    if (!(got == want || fabs(got - want) <= 1e-9 * fabs(want)))
        fail_msg("sample %s: got %.17g, want %.17g", key, got, want);
}

static void expect_family(json_t *fams, const char *name, const char *type, const char *help)
{
    json_t *f = json_object_get(fams, name);
    if (!f)
        fail_msg("family %s missing from the parsed exposition", name);
    assert_string_equal(json_string_value(json_array_get(f, 0)), type);
    assert_string_equal(json_string_value(json_array_get(f, 1)), help);
}

static void test_exposition_parses(void **state)
{
    (void)state;
    metrics_family *delivered, *conns, *lat, *esc, *cb, *plain, *pp;
    const char *svc[] = {"service"};
    const char *two[] = {"provider", "pool"};
    const double bounds[] = {0.1, 1, 10};
    assert_int_equal(metrics_counter_family(&delivered, "total_messages_delivered",
                                            "total number of messages ever delivered", svc, 1),
                     0);
    assert_int_equal(
        metrics_gauge_family(&conns, "connection_count", "number of active connections", svc, 1),
        0);
    assert_int_equal(metrics_histogram_family(&lat, "deliver_message_latency_rollup",
                                              "latency of deliveries", svc, 1, bounds, 3),
                     0);
    assert_int_equal(metrics_counter_family(&esc, "weird_total", "a \\ b\nc \"d\"", two, 2), 0);
    assert_int_equal(metrics_counter_family(&pp, "by_provider_and_pool", "", two, 2), 0);
    double disk = 12.5;
    assert_int_equal(metrics_callback_family(&cb, METRICS_GAUGE, "disk_free_percent", "free disk",
                                             NULL, 0, collect_scalar, &disk),
                     0);
    assert_int_equal(metrics_gauge_family(&plain, "memory_usage", "bytes", NULL, 0), 0);

    metrics_counter *d1 = metrics_counter_get(delivered, "smtp_client", NULL);
    metrics_counter *d2 = metrics_counter_get(delivered, "smtp_client:src->mx.example", NULL);
    metrics_counter_add(d1, 12345678901ull);
    metrics_counter_add(d2, 3);
    metrics_gauge *c1 = metrics_gauge_get(conns, "esmtp_listener", NULL);
    metrics_gauge_set(c1, -2);
    metrics_histogram *h = metrics_histogram_get(lat, "smtp_client", NULL);
    metrics_histogram_observe(h, 0.05);
    metrics_histogram_observe(h, 0.5);
    metrics_histogram_observe(h, 0.5);
    metrics_histogram_observe(h, 50);
    metrics_counter *e = metrics_counter_get(esc, "q\"uo\\te", "new\nline", NULL);
    metrics_counter_inc(e);
    metrics_counter *p = metrics_counter_get(pp, "gmail", "", NULL);
    metrics_counter_add(p, 4);
    metrics_gauge *m = metrics_gauge_get(plain, NULL);
    metrics_gauge_set(m, 185683968);

    size_t len;
    char *text = metrics_render_prometheus(&len);
    assert_non_null(text);
    char path[] = "/tmp/test_metrics_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, len), (ssize_t)len);
    close(fd);
    json_t *j = python_parse(path);
    unlink(path);
    free(text);

    json_t *fams = json_object_get(j, "families");
    json_t *s = json_object_get(j, "samples");
    /* The parser names counters the OpenMetrics way: family without _total,
     * samples with it. */
    expect_family(fams, "total_messages_delivered", "counter",
                  "total number of messages ever delivered");
    expect_family(fams, "connection_count", "gauge", "number of active connections");
    expect_family(fams, "deliver_message_latency_rollup", "histogram", "latency of deliveries");
    expect_family(fams, "weird", "counter", "a \\ b\nc \"d\"");
    expect_family(fams, "by_provider_and_pool", "counter", "");
    expect_family(fams, "disk_free_percent", "gauge", "free disk");
    expect_family(fams, "memory_usage", "gauge", "bytes");
    assert_int_equal(json_object_size(fams), 7);

    static const struct {
        const char *key;
        double v;
    } want[] = {
        {"total_messages_delivered_total{service=smtp_client}", 12345678901.0},
        {"total_messages_delivered_total{service=smtp_client:src->mx.example}", 3},
        {"connection_count{service=esmtp_listener}", -2},
        {"deliver_message_latency_rollup_bucket{le=0.1,service=smtp_client}", 1},
        {"deliver_message_latency_rollup_bucket{le=1,service=smtp_client}", 3},
        {"deliver_message_latency_rollup_bucket{le=10,service=smtp_client}", 3},
        {"deliver_message_latency_rollup_bucket{le=+Inf,service=smtp_client}", 4},
        {"deliver_message_latency_rollup_sum{service=smtp_client}", 51.05},
        {"deliver_message_latency_rollup_count{service=smtp_client}", 4},
        {"weird_total{pool=new\nline,provider=q\"uo\\te}", 1},
        {"by_provider_and_pool_total{pool=,provider=gmail}", 4},
        {"disk_free_percent{}", 12.5},
        {"memory_usage{}", 185683968},
    };
    for (size_t i = 0; i < ARRAY_LEN(want); i++)
        expect_sample(s, want[i].key, want[i].v);
    assert_int_equal(json_object_size(s), ARRAY_LEN(want));
    json_decref(j);

    metrics_counter_unref(d1);
    metrics_counter_unref(d2);
    metrics_gauge_unref(c1);
    metrics_histogram_unref(h);
    metrics_counter_unref(e);
    metrics_counter_unref(p);
    metrics_gauge_unref(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_registration_rules, teardown),
        cmocka_unit_test_teardown(test_counters_summed_over_threads, teardown),
        cmocka_unit_test_teardown(test_gauges, teardown),
        cmocka_unit_test_teardown(test_histogram_buckets, teardown),
        cmocka_unit_test_teardown(test_label_escaping, teardown),
        cmocka_unit_test_teardown(test_removal, teardown),
        cmocka_unit_test_teardown(test_callback_gauges, teardown),
        cmocka_unit_test_teardown(test_slot_exhaustion, teardown),
        cmocka_unit_test_teardown(test_json_shape, teardown),
        cmocka_unit_test_teardown(test_prefix, teardown),
        cmocka_unit_test_teardown(test_misuse_aborts, teardown),
        cmocka_unit_test_teardown(test_exposition_parses, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
