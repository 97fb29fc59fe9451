/* Counters, gauges and histograms in one process-wide registry, rendered as
 * the Prometheus text exposition format 0.0.4 (GET /metrics) and as the JSON
 * document KumoMTA serves at GET /metrics.json. Knows nothing of mail.
 *
 * A family has a name, HELP text, a type and a fixed list of label names. A
 * series is one set of label values in a family; looking one up returns a
 * handle that is cheap to update from any thread: counters and histograms
 * write to a per-thread shard without locks or atomic read-modify-write
 * (values are summed over the shards at scrape time), gauges are one atomic
 * int64. Registration, lookup, removal and rendering take a registry mutex;
 * updates never do.
 *
 * Handles and references. metrics_*_get() returns a handle holding one
 * reference; the caller gives it back with metrics_*_unref() (or keeps it for
 * the life of the process). A series stays in its family, and in the
 * exposition, until metrics_series_remove() takes it out; dropping
 * references does not remove it. A removed series that is still referenced
 * stays valid to update (the updates are simply no longer reported) and is
 * freed when its last reference goes, so a queue that is reaped may remove
 * its series while another thread still holds one.
 *
 * Misuse that is a bug (wrong number of label values, a counter lookup on a
 * gauge family) prints a message and aborts, as an x-allocator does when
 * memory runs out. */
#ifndef KUMOD_METRICS_METRICS_H
#define KUMOD_METRICS_METRICS_H
#include <stddef.h>
#include <stdint.h>

enum metrics_type { METRICS_COUNTER = 1, METRICS_GAUGE, METRICS_HISTOGRAM };

#define METRICS_MAX_LABELS 8   /* label names per family */
#define METRICS_MAX_BUCKETS 62 /* finite histogram bounds per family */

typedef struct metrics_family metrics_family;
typedef struct metrics_counter metrics_counter;
typedef struct metrics_gauge metrics_gauge;
typedef struct metrics_histogram metrics_histogram;
typedef struct metrics_emitter metrics_emitter;

/* --- Registration --------------------------------------------------------
 * Registers a family and stores it in *out. Families live until
 * metrics_shutdown(). name must match [a-zA-Z_:][a-zA-Z0-9_:]*; label names
 * [a-zA-Z_][a-zA-Z0-9_]*, not starting with "__", distinct, at most
 * METRICS_MAX_LABELS ("le" is reserved in histograms). help may be NULL
 * (no HELP line). All strings are copied. Registering the same name again
 * with the same type, help, labels (and buckets) gives back the existing
 * family and returns 0, so every reactor may register at start-up; any
 * difference, or a name that collides with a histogram's _bucket/_sum/_count
 * series, returns KERR_EXISTS. Bad names or arguments return KERR_INVAL.
 * A family without labels has its single series from the start (value 0). */
int metrics_counter_family(metrics_family **out, const char *name, const char *help,
                           const char *const *label_names, size_t nlabels);
int metrics_gauge_family(metrics_family **out, const char *name, const char *help,
                         const char *const *label_names, size_t nlabels);
/* buckets: strictly increasing finite upper bounds (the +Inf bucket is
 * implicit), 1..METRICS_MAX_BUCKETS of them; NULL and 0 give the Prometheus
 * defaults .005 .01 .025 .05 .1 .25 .5 1 2.5 5 10. */
int metrics_histogram_family(metrics_family **out, const char *name, const char *help,
                             const char *const *label_names, size_t nlabels, const double *buckets,
                             size_t nbuckets);

/* Callback families: fn computes the series at each scrape by calling
 * metrics_emit() once per series. type is METRICS_COUNTER or METRICS_GAUGE.
 * fn runs on the scraping thread, without the registry mutex held, one
 * scrape at a time; it may look series up but must not render, register a
 * callback family or call metrics_callback_family_set(). arg is borrowed
 * and must stay valid until fn is replaced. A callback family is never
 * shared: registering the name again returns KERR_EXISTS. */
typedef void (*metrics_collect_fn)(metrics_emitter *em, void *arg);
int metrics_callback_family(metrics_family **out, enum metrics_type type, const char *name,
                            const char *help, const char *const *label_names, size_t nlabels,
                            metrics_collect_fn fn, void *arg);
/* Replaces the callback of a callback family (fn NULL: the family reports no
 * series). When this returns, the old fn is not running and will not run
 * again, so its arg may be freed. Returns 0 or KERR_INVAL (not a callback
 * family). */
int metrics_callback_family_set(metrics_family *f, metrics_collect_fn fn, void *arg);
/* Reports one series from inside a collect function: one label value per
 * label name of the family, then a NULL. Values are copied. A later series
 * with the same label values as an earlier one is dropped. Returns 0, or
 * KERR_INVAL for a wrong number of label values (the series is dropped). */
int metrics_emit(metrics_emitter *em, double value, ...) __attribute__((sentinel));
int metrics_emitv(metrics_emitter *em, double value, const char *const *label_values);

/* --- Series lookup ---------------------------------------------------------
 * Finds or creates the series with these label values (exactly one per
 * label name of the family, in the same order, then a NULL; a family
 * without labels takes just the NULL) and returns a handle holding a new
 * reference. The *v forms take an array of exactly nlabels values. Label
 * values are copied and may be any bytes; invalid UTF-8 is replaced when
 * rendered. Takes the registry mutex: look a series up once and keep the
 * handle, not once per event. Never returns NULL. */
metrics_counter *metrics_counter_get(metrics_family *f, ...) __attribute__((sentinel));
metrics_counter *metrics_counter_getv(metrics_family *f, const char *const *label_values);
metrics_gauge *metrics_gauge_get(metrics_family *f, ...) __attribute__((sentinel));
metrics_gauge *metrics_gauge_getv(metrics_family *f, const char *const *label_values);
metrics_histogram *metrics_histogram_get(metrics_family *f, ...) __attribute__((sentinel));
metrics_histogram *metrics_histogram_getv(metrics_family *f, const char *const *label_values);

/* Drops a reference; the handle must not be used afterwards. NULL is fine. */
void metrics_counter_unref(metrics_counter *c);
void metrics_gauge_unref(metrics_gauge *g);
void metrics_histogram_unref(metrics_histogram *h);

/* Takes the series out of its family: it is no longer rendered, and a later
 * lookup of the same label values creates a fresh series starting at zero.
 * Handles still referenced stay valid (see above). Returns 0, KERR_NOTFOUND,
 * or KERR_INVAL (callback family, or a family without labels). */
int metrics_series_remove(metrics_family *f, ...) __attribute__((sentinel));
int metrics_series_removev(metrics_family *f, const char *const *label_values);

/* --- Updates: any thread, lock-free, no allocation after a thread's first
 * update of a series in a new 512-slot page. */
void metrics_counter_add(metrics_counter *c, uint64_t n);
void metrics_counter_inc(metrics_counter *c);
void metrics_gauge_set(metrics_gauge *g, int64_t v);
void metrics_gauge_add(metrics_gauge *g, int64_t n);
void metrics_gauge_sub(metrics_gauge *g, int64_t n);
void metrics_gauge_inc(metrics_gauge *g);
void metrics_gauge_dec(metrics_gauge *g);
/* Counts v in the first bucket whose bound is >= v (NaN and values above
 * the last bound in +Inf) and adds it to the sum. */
void metrics_histogram_observe(metrics_histogram *h, double v);

/* Current values, summed over the thread shards (what a scrape would show). */
uint64_t metrics_counter_value(const metrics_counter *c);
int64_t metrics_gauge_value(const metrics_gauge *g);
uint64_t metrics_histogram_count(const metrics_histogram *h);
double metrics_histogram_sum(const metrics_histogram *h);

/* --- Rendering: any thread; scrapes run one at a time. The caller frees the
 * returned NUL-terminated string with free(); *len (if len is not NULL) gets
 * its length. NULL when memory runs out. Families are sorted by name and
 * series by their label values. */
char *metrics_render_prometheus(size_t *len);
/* The same with prefix (may be NULL) put before every metric name, as
 * KumoMTA's /metrics?prefix= does. */
char *metrics_render_prometheus_prefixed(const char *prefix, size_t *len);
/* {"name": {"help": "...", "type": "counter", "value": V}, ...} where V is
 * null (no series), a number (no labels), {"label": {"value": N, ...}} (one
 * label) or [{"l1": "v1", "l2": "v2", "@": N}, ...] (more); a histogram's N is
 * {"count": C, "sum": S, "avg": A, "bucket": [[bound, cumulative], ...]}
 * without the +Inf bucket. "help" is left out when empty. */
char *metrics_render_json(size_t *len);

/* Frees every family and series and forgets every callback; the registry
 * may then be used afresh. No handle or family pointer may be used after
 * this, and no other thread may be using metrics while it runs. For tests
 * and the very end of an orderly exit. */
void metrics_shutdown(void);

/* Tests only: caps the number of value slots (default 4M) so that running
 * out can be tested. Series created without a slot still work but are never
 * reported. */
void metrics__set_slot_limit(uint32_t max_slots);

#endif
