/* The metrics registry: families, their series, the per-thread shards that
 * counter and histogram updates land in, and the two renderings (Prometheus
 * text exposition 0.0.4 and KumoMTA's /metrics.json shape).
 *
 * Every counter or histogram series owns a run of "slots" (1 for a counter,
 * buckets + 1 + 1 for a histogram: the bucket counts, the +Inf count, and
 * the sum as double bits), numbered in one process-wide space. Every thread
 * that updates a series has a shard: a table of lazily allocated 512-slot
 * pages indexed by slot number. Only the owning thread writes its shard, so
 * an update is a relaxed load and store of one atomic word, with no lock and
 * no locked instruction; a scrape adds the word up over all shards. Runs never
 * cross a page, so a histogram update touches one page. Gauges are one
 * atomic int64 in the series itself.
 *
 * Owns: the family table (sorted by name), each family's hash table of
 * series, the slot allocator and its free runs, and the shard list. Shards
 * are never freed: when a thread exits its shard is marked orphan (counts
 * kept) and the next new thread adopts it. Freed slots are zeroed in every
 * shard before reuse; that is safe because a series is freed only when its
 * last reference is gone, so nobody writes its slots any more.
 *
 * Threads: any. reg.mu guards the registry (registration, lookup, removal,
 * slot allocation, shard adoption, the first phase of a scrape); updates
 * never take it. reg.scrape_mu runs scrapes one at a time and is held while
 * collect callbacks run, so replacing a callback waits for a scrape in
 * progress. Lock order: scrape_mu, then mu.
 *
 * Failure: allocation failure of the registry's own small objects aborts (as
 * an x-allocator does); a rendering that runs out of memory returns NULL.
 * Misuse that is a bug (label count, wrong family type, a scrape from inside
 * a collect callback) logs and aborts. Running out of slots gives series that
 * work but are never reported, with one warning. */
#include "metrics/metrics.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/diag.h"
#include "core/kerr.h"
#include "core/xalloc.h"

#define METRICS_MOD "kumod::metrics"

#define PAGE_SHIFT 9
#define PAGE_SLOTS (1u << PAGE_SHIFT)
#define PAGE_MASK (PAGE_SLOTS - 1)
#define MAX_PAGES 8192u
#define MAX_SLOTS (MAX_PAGES * PAGE_SLOTS)
#define MAX_RUN (METRICS_MAX_BUCKETS + 2)
/* Slots [0, MAX_RUN) belong to no series: series created when the slots
 * ran out write there, and nobody reads them. */
#define SINK_SLOT 0u

#define LIKELY(x) __builtin_expect(!!(x), 1)
#define UNLIKELY(x) __builtin_expect(!!(x), 0)

typedef _Atomic uint64_t slot_t;

struct shard {
    struct shard *next; /* immutable once the shard is on the list */
    bool orphan;        /* reg.mu: its thread has exited */
    _Atomic(slot_t *) pages[MAX_PAGES];
};

struct mseries {
    struct mseries *hnext; /* reg.mu: family hash chain */
    struct metrics_family *fam;
    _Atomic size_t refs; /* one for the family while linked, one per handle */
    _Atomic int64_t gauge;
    uint32_t slot; /* first of fam->run slots */
    uint32_t hash;
    bool sink;      /* got no slots: updates land in the sink, never reported */
    char *labels[]; /* fam->nlabels values; the strings follow in this block */
};

struct metrics_family {
    char *name;
    char *help; /* "" when none */
    enum metrics_type type;
    size_t nlabels;
    char *labels[METRICS_MAX_LABELS];
    size_t nbounds;
    double bounds[METRICS_MAX_BUCKETS];
    uint32_t run; /* slots per series */
    /* reg.mu */
    struct mseries **tab;
    size_t tabsize; /* a power of two */
    size_t count;
    /* callback families: written with scrape_mu and mu held */
    bool is_callback;
    metrics_collect_fn fn;
    void *arg;
};

struct emitted {
    double v;
    size_t seq;
    char **labels; /* pointers and strings in one block */
};

struct metrics_emitter {
    metrics_family *f;
    struct emitted *items;
    size_t n, cap;
};

struct runlist {
    uint32_t *v;
    size_t n, cap;
};

static struct {
    pthread_mutex_t mu;
    pthread_mutex_t scrape_mu;
    metrics_family **fams; /* sorted by name */
    size_t nfams, capfams;
    uint32_t next_slot, max_slots;
    struct runlist freeruns[MAX_RUN + 1]; /* indexed by run length */
    _Atomic(struct shard *) shards;
    pthread_once_t once;
    pthread_key_t key;
    bool warned_slots;
} reg = {
    .mu = PTHREAD_MUTEX_INITIALIZER,
    .scrape_mu = PTHREAD_MUTEX_INITIALIZER,
    .next_slot = MAX_RUN,
    .max_slots = MAX_SLOTS,
    .once = PTHREAD_ONCE_INIT,
};

static _Thread_local struct shard *tls_shard;
static _Thread_local bool tls_scraping; /* inside a collect callback */

static const double default_bounds[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                        0.5,   1.0,  2.5,   5.0,  10.0};

/* ---- helpers ------------------------------------------------------------ */

static _Noreturn void panic_(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static _Noreturn void panic_(const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    diag_log(METRICS_MOD, DIAG_ERROR, "bug: %s", msg);
    abort();
}

static void lock(pthread_mutex_t *m)
{
    int rc = pthread_mutex_lock(m);
    if (rc != 0)
        panic_("pthread_mutex_lock: %s", strerror(rc));
}

static void unlock(pthread_mutex_t *m)
{
    int rc = pthread_mutex_unlock(m);
    if (rc != 0)
        panic_("pthread_mutex_unlock: %s", strerror(rc));
}

static struct mseries *S(const void *handle)
{
    return (struct mseries *)(uintptr_t)handle;
}

/* ---- shards --------------------------------------------------------------- */

static void shard_detach(void *p)
{
    struct shard *sh = p;
    lock(&reg.mu);
    sh->orphan = true;
    unlock(&reg.mu);
    /* A destructor of another key may still update a metric; it attaches
     * afresh instead of writing a shard that someone may adopt now. */
    tls_shard = NULL;
}

static void shard_key_init(void)
{
    int rc = pthread_key_create(&reg.key, shard_detach);
    if (rc != 0)
        panic_("pthread_key_create: %s", strerror(rc));
}

static struct shard *shard_attach(void)
{
    pthread_once(&reg.once, shard_key_init);
    lock(&reg.mu);
    struct shard *sh = atomic_load_explicit(&reg.shards, memory_order_relaxed);
    while (sh && !sh->orphan)
        sh = sh->next;
    if (sh) {
        sh->orphan = false; /* adopted: the exited thread's counts stay */
    } else {
        sh = xcalloc(1, sizeof *sh);
        sh->next = atomic_load_explicit(&reg.shards, memory_order_relaxed);
        atomic_store_explicit(&reg.shards, sh, memory_order_release);
    }
    unlock(&reg.mu);
    int rc = pthread_setspecific(reg.key, sh);
    if (rc != 0)
        panic_("pthread_setspecific: %s", strerror(rc));
    tls_shard = sh;
    return sh;
}

static __attribute__((noinline)) slot_t *shard_page_new(struct shard *sh, uint32_t pi)
{
    slot_t *pg = xcalloc(PAGE_SLOTS, sizeof *pg);
    atomic_store_explicit(&sh->pages[pi], pg, memory_order_release);
    return pg;
}

/* This thread's words for the run starting at slot. */
static inline slot_t *my_slots(uint32_t slot)
{
    struct shard *sh = tls_shard;
    if (UNLIKELY(!sh))
        sh = shard_attach();
    /* Only this thread stores page pointers of its shard (and
     * metrics_shutdown, which nothing runs beside). */
    slot_t *pg = atomic_load_explicit(&sh->pages[slot >> PAGE_SHIFT], memory_order_relaxed);
    if (UNLIKELY(!pg))
        pg = shard_page_new(sh, slot >> PAGE_SHIFT);
    return pg + (slot & PAGE_MASK);
}

static inline void slot_add(slot_t *p, uint64_t n)
{
    /* Single writer: no read-modify-write instruction needed. */
    atomic_store_explicit(p, atomic_load_explicit(p, memory_order_relaxed) + n,
                          memory_order_relaxed);
}

static inline uint64_t dbits(double d)
{
    uint64_t u;
    memcpy(&u, &d, sizeof u);
    return u;
}

static inline double bitsd(uint64_t u)
{
    double d;
    memcpy(&d, &u, sizeof d);
    return d;
}

/* Another thread's page, or NULL. */
static inline slot_t *shard_page_peek(struct shard *sh, uint32_t slot)
{
    return atomic_load_explicit(&sh->pages[slot >> PAGE_SHIFT], memory_order_acquire);
}

static struct shard *shards_first(void)
{
    return atomic_load_explicit(&reg.shards, memory_order_acquire);
}

static uint64_t slot_sum(uint32_t slot)
{
    uint64_t t = 0;
    for (struct shard *sh = shards_first(); sh; sh = sh->next) {
        slot_t *pg = shard_page_peek(sh, slot);
        if (pg)
            t += atomic_load_explicit(&pg[slot & PAGE_MASK], memory_order_relaxed);
    }
    return t;
}

/* Sums a histogram run: cum[0..nbounds] gets the cumulative bucket counts
 * (cum[nbounds] is the +Inf bucket, i.e. the count), *sum the sum. */
static void hist_sum(const struct mseries *s, uint64_t *cum, double *sum)
{
    size_t nb = s->fam->nbounds;
    memset(cum, 0, (nb + 1) * sizeof *cum);
    double total = 0;
    for (struct shard *sh = shards_first(); sh; sh = sh->next) {
        slot_t *pg = shard_page_peek(sh, s->slot);
        if (!pg)
            continue;
        slot_t *p = pg + (s->slot & PAGE_MASK);
        for (size_t i = 0; i <= nb; i++)
            cum[i] += atomic_load_explicit(&p[i], memory_order_relaxed);
        total += bitsd(atomic_load_explicit(&p[nb + 1], memory_order_relaxed));
    }
    for (size_t i = 1; i <= nb; i++)
        cum[i] += cum[i - 1];
    *sum = total;
}

/* ---- slots (reg.mu held) ------------------------------------------------- */

static bool slots_alloc(uint32_t run, uint32_t *out)
{
    struct runlist *fl = &reg.freeruns[run];
    if (fl->n > 0) {
        *out = fl->v[--fl->n];
        return true;
    }
    uint32_t s = reg.next_slot;
    if ((s & PAGE_MASK) + run > PAGE_SLOTS)
        s = (s | PAGE_MASK) + 1; /* a run never crosses a page */
    if ((uint64_t)s + run > reg.max_slots)
        return false;
    reg.next_slot = s + run;
    *out = s;
    return true;
}

static void slots_free(uint32_t slot, uint32_t run)
{
    for (struct shard *sh = shards_first(); sh; sh = sh->next) {
        slot_t *pg = shard_page_peek(sh, slot);
        if (!pg)
            continue;
        for (uint32_t i = 0; i < run; i++)
            atomic_store_explicit(&pg[(slot & PAGE_MASK) + i], 0, memory_order_relaxed);
    }
    struct runlist *fl = &reg.freeruns[run];
    if (fl->n == fl->cap) {
        fl->cap = fl->cap ? fl->cap * 2 : 64;
        fl->v = xrealloc(fl->v, fl->cap * sizeof *fl->v);
    }
    fl->v[fl->n++] = slot;
}

/* ---- series (reg.mu held unless said) --------------------------------- */

static uint32_t labels_hash(const char *const *v, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) {
        for (const unsigned char *p = (const unsigned char *)v[i]; *p; p++)
            h = (h ^ *p) * 16777619u;
        h = (h ^ 0xffu) * 16777619u; /* separator: ("ab","c") != ("a","bc") */
    }
    return h;
}

static bool labels_equal(char *const *a, const char *const *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(a[i], b[i]) != 0)
            return false;
    return true;
}

static struct mseries **series_slot(metrics_family *f, const char *const *vals, uint32_t h)
{
    if (f->tabsize == 0)
        return NULL;
    struct mseries **pp = &f->tab[h & (f->tabsize - 1)];
    while (*pp && !((*pp)->hash == h && labels_equal((*pp)->labels, vals, f->nlabels)))
        pp = &(*pp)->hnext;
    return pp;
}

static void series_table_grow(metrics_family *f)
{
    size_t nsize = f->tabsize ? f->tabsize * 2 : 8;
    struct mseries **nt = xcalloc(nsize, sizeof *nt);
    for (size_t i = 0; i < f->tabsize; i++) {
        struct mseries *s = f->tab[i];
        while (s) {
            struct mseries *next = s->hnext;
            struct mseries **b = &nt[s->hash & (nsize - 1)];
            s->hnext = *b;
            *b = s;
            s = next;
        }
    }
    free(f->tab);
    f->tab = nt;
    f->tabsize = nsize;
}

static struct mseries *series_new(metrics_family *f, const char *const *vals, uint32_t h)
{
    size_t strbytes = 0;
    for (size_t i = 0; i < f->nlabels; i++)
        strbytes += strlen(vals[i]) + 1;
    struct mseries *s = xcalloc(1, sizeof *s + f->nlabels * sizeof(char *) + strbytes);
    char *p = (char *)(s->labels + f->nlabels);
    for (size_t i = 0; i < f->nlabels; i++) {
        size_t n = strlen(vals[i]) + 1;
        memcpy(p, vals[i], n);
        s->labels[i] = p;
        p += n;
    }
    s->fam = f;
    s->hash = h;
    atomic_init(&s->refs, 1);
    atomic_init(&s->gauge, 0);
    if (f->run > 0 && !slots_alloc(f->run, &s->slot)) {
        s->slot = SINK_SLOT;
        s->sink = true;
        if (!reg.warned_slots) {
            reg.warned_slots = true;
            DWARN(METRICS_MOD, "metric=%s out of metric slots: new series are not reported",
                  f->name);
        }
    }
    if (f->count >= f->tabsize)
        series_table_grow(f);
    struct mseries **b = &f->tab[h & (f->tabsize - 1)];
    s->hnext = *b;
    *b = s;
    f->count++;
    return s;
}

static void series_destroy_locked(struct mseries *s)
{
    if (!s->sink && s->fam->run > 0)
        slots_free(s->slot, s->fam->run);
    free(s);
}

static void series_unref(struct mseries *s)
{
    if (!s)
        return;
    if (atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) == 1) {
        lock(&reg.mu);
        series_destroy_locked(s);
        unlock(&reg.mu);
    }
}

static const char *type_name(enum metrics_type t)
{
    switch (t) {
    case METRICS_COUNTER:
        return "counter";
    case METRICS_GAUGE:
        return "gauge";
    case METRICS_HISTOGRAM:
        return "histogram";
    }
    return "untyped";
}

static void check_values(const metrics_family *f, const char *const *vals, size_t n)
{
    if (n > 0 && !vals)
        panic_("metric=%s label values array is NULL", f->name);
    if (n != f->nlabels)
        panic_("metric=%s takes %zu label values, got %zu", f->name, f->nlabels, n);
    for (size_t i = 0; i < n; i++)
        if (!vals[i])
            panic_("metric=%s label=%s value is NULL", f->name, f->labels[i]);
}

static struct mseries *series_get(metrics_family *f, enum metrics_type want,
                                  const char *const *vals)
{
    if (!f)
        panic_("series lookup on a NULL family");
    if (f->is_callback || f->type != want)
        panic_("metric=%s is a %s%s family, not a %s one", f->name,
               f->is_callback ? "callback " : "", type_name(f->type), type_name(want));
    check_values(f, vals, f->nlabels);
    uint32_t h = labels_hash(vals, f->nlabels);
    lock(&reg.mu);
    struct mseries **pp = series_slot(f, vals, h);
    struct mseries *s = pp ? *pp : NULL;
    if (!s)
        s = series_new(f, vals, h);
    atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
    unlock(&reg.mu);
    return s;
}

/* Reads label values up to the NULL sentinel; returns how many there were
 * (only the first METRICS_MAX_LABELS are stored). */
static size_t collect_values(va_list ap, const char **vals)
{
    size_t n = 0;
    for (;;) {
        const char *v = va_arg(ap, const char *);
        if (!v)
            return n;
        if (n < METRICS_MAX_LABELS)
            vals[n] = v;
        n++;
    }
}

#define GET_VARIADIC(f, want, out)                                                                 \
    do {                                                                                           \
        const char *vals_[METRICS_MAX_LABELS] = {0};                                               \
        va_list ap_;                                                                               \
        va_start(ap_, f);                                                                          \
        size_t n_ = collect_values(ap_, vals_);                                                    \
        va_end(ap_);                                                                               \
        if (!(f))                                                                                  \
            panic_("series lookup on a NULL family");                                              \
        check_values((f), vals_, n_);                                                              \
        (out) = series_get((f), (want), vals_);                                                    \
    } while (0)

metrics_counter *metrics_counter_get(metrics_family *f, ...)
{
    struct mseries *s;
    GET_VARIADIC(f, METRICS_COUNTER, s);
    return (metrics_counter *)s;
}

metrics_counter *metrics_counter_getv(metrics_family *f, const char *const *label_values)
{
    return (metrics_counter *)series_get(f, METRICS_COUNTER, label_values);
}

metrics_gauge *metrics_gauge_get(metrics_family *f, ...)
{
    struct mseries *s;
    GET_VARIADIC(f, METRICS_GAUGE, s);
    return (metrics_gauge *)s;
}

metrics_gauge *metrics_gauge_getv(metrics_family *f, const char *const *label_values)
{
    return (metrics_gauge *)series_get(f, METRICS_GAUGE, label_values);
}

metrics_histogram *metrics_histogram_get(metrics_family *f, ...)
{
    struct mseries *s;
    GET_VARIADIC(f, METRICS_HISTOGRAM, s);
    return (metrics_histogram *)s;
}

metrics_histogram *metrics_histogram_getv(metrics_family *f, const char *const *label_values)
{
    return (metrics_histogram *)series_get(f, METRICS_HISTOGRAM, label_values);
}

void metrics_counter_unref(metrics_counter *c)
{
    series_unref(S(c));
}

void metrics_gauge_unref(metrics_gauge *g)
{
    series_unref(S(g));
}

void metrics_histogram_unref(metrics_histogram *h)
{
    series_unref(S(h));
}

int metrics_series_removev(metrics_family *f, const char *const *label_values)
{
    if (!f || f->is_callback || f->nlabels == 0 || !label_values)
        return KERR_INVAL;
    for (size_t i = 0; i < f->nlabels; i++)
        if (!label_values[i])
            return KERR_INVAL;
    uint32_t h = labels_hash(label_values, f->nlabels);
    lock(&reg.mu);
    struct mseries **pp = series_slot(f, label_values, h);
    struct mseries *s = pp ? *pp : NULL;
    if (!s) {
        unlock(&reg.mu);
        return KERR_NOTFOUND;
    }
    *pp = s->hnext;
    s->hnext = NULL;
    f->count--;
    if (atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) == 1)
        series_destroy_locked(s);
    unlock(&reg.mu);
    return 0;
}

int metrics_series_remove(metrics_family *f, ...)
{
    const char *vals[METRICS_MAX_LABELS] = {0};
    va_list ap;
    va_start(ap, f);
    size_t n = collect_values(ap, vals);
    va_end(ap);
    if (!f || n != f->nlabels)
        return KERR_INVAL;
    return metrics_series_removev(f, vals);
}

/* ---- updates ---------------------------------------------------------- */

void metrics_counter_add(metrics_counter *c, uint64_t n)
{
    slot_add(my_slots(S(c)->slot), n);
}

void metrics_counter_inc(metrics_counter *c)
{
    slot_add(my_slots(S(c)->slot), 1);
}

void metrics_gauge_set(metrics_gauge *g, int64_t v)
{
    atomic_store_explicit(&S(g)->gauge, v, memory_order_relaxed);
}

void metrics_gauge_add(metrics_gauge *g, int64_t n)
{
    atomic_fetch_add_explicit(&S(g)->gauge, n, memory_order_relaxed);
}

void metrics_gauge_sub(metrics_gauge *g, int64_t n)
{
    atomic_fetch_sub_explicit(&S(g)->gauge, n, memory_order_relaxed);
}

void metrics_gauge_inc(metrics_gauge *g)
{
    atomic_fetch_add_explicit(&S(g)->gauge, 1, memory_order_relaxed);
}

void metrics_gauge_dec(metrics_gauge *g)
{
    atomic_fetch_sub_explicit(&S(g)->gauge, 1, memory_order_relaxed);
}

void metrics_histogram_observe(metrics_histogram *h, double v)
{
    const struct mseries *s = S(h);
    const metrics_family *f = s->fam;
    size_t lo = 0, hi = f->nbounds;
    if (isnan(v)) {
        lo = f->nbounds;
    } else {
        while (lo < hi) {
            size_t mid = lo + (hi - lo) / 2;
            if (f->bounds[mid] < v)
                lo = mid + 1;
            else
                hi = mid;
        }
    }
    slot_t *p = my_slots(s->slot);
    slot_add(&p[lo], 1);
    slot_t *sum = &p[f->nbounds + 1];
    atomic_store_explicit(sum, dbits(bitsd(atomic_load_explicit(sum, memory_order_relaxed)) + v),
                          memory_order_relaxed);
}

uint64_t metrics_counter_value(const metrics_counter *c)
{
    const struct mseries *s = S(c);
    return s->sink ? 0 : slot_sum(s->slot);
}

int64_t metrics_gauge_value(const metrics_gauge *g)
{
    return atomic_load_explicit(&S(g)->gauge, memory_order_relaxed);
}

uint64_t metrics_histogram_count(const metrics_histogram *h)
{
    const struct mseries *s = S(h);
    if (s->sink)
        return 0;
    uint64_t cum[METRICS_MAX_BUCKETS + 1];
    double sum;
    hist_sum(s, cum, &sum);
    return cum[s->fam->nbounds];
}

double metrics_histogram_sum(const metrics_histogram *h)
{
    const struct mseries *s = S(h);
    if (s->sink)
        return 0;
    uint64_t cum[METRICS_MAX_BUCKETS + 1];
    double sum;
    hist_sum(s, cum, &sum);
    return sum;
}

/* ---- registration ------------------------------------------------------- */

static bool valid_metric_name(const char *s)
{
    if (!s || !*s)
        return false;
    for (const char *p = s; *p; p++) {
        char c = *p;
        bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
        if (!alpha && !(p > s && c >= '0' && c <= '9'))
            return false;
    }
    return true;
}

static bool valid_label_name(const char *s)
{
    if (!s || !*s || (s[0] == '_' && s[1] == '_'))
        return false;
    for (const char *p = s; *p; p++) {
        char c = *p;
        bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
        if (!alpha && !(p > s && c >= '0' && c <= '9'))
            return false;
    }
    return true;
}

/* Index of the first family whose name is >= name; *found if equal. */
static size_t fam_lower_bound(const char *name, bool *found)
{
    size_t lo = 0, hi = reg.nfams;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (strcmp(reg.fams[mid]->name, name) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = lo < reg.nfams && strcmp(reg.fams[lo]->name, name) == 0;
    return lo;
}

static metrics_family *fam_find(const char *name)
{
    bool found;
    size_t i = fam_lower_bound(name, &found);
    return found ? reg.fams[i] : NULL;
}

static const char *const hist_suffixes[] = {"_bucket", "_sum", "_count"};

/* Would name, of this type, put a sample name into the exposition twice? */
static bool name_collides(const char *name, enum metrics_type type)
{
    size_t n = strlen(name);
    char buf[256];
    for (size_t i = 0; i < 3; i++) {
        size_t sl = strlen(hist_suffixes[i]);
        /* name is some histogram's name + suffix */
        if (n > sl && strcmp(name + n - sl, hist_suffixes[i]) == 0 && n - sl < sizeof buf) {
            memcpy(buf, name, n - sl);
            buf[n - sl] = 0;
            metrics_family *h = fam_find(buf);
            if (h && h->type == METRICS_HISTOGRAM)
                return true;
        }
        /* a histogram whose name + suffix is some family's name */
        if (type == METRICS_HISTOGRAM && n + sl < sizeof buf) {
            memcpy(buf, name, n);
            memcpy(buf + n, hist_suffixes[i], sl + 1);
            if (fam_find(buf))
                return true;
        }
    }
    return false;
}

static bool family_same(const metrics_family *f, enum metrics_type type, const char *help,
                        const char *const *labels, size_t nlabels, const double *bounds,
                        size_t nbounds)
{
    if (f->is_callback || f->type != type || strcmp(f->help, help) != 0 || f->nlabels != nlabels ||
        f->nbounds != nbounds)
        return false;
    for (size_t i = 0; i < nlabels; i++)
        if (strcmp(f->labels[i], labels[i]) != 0)
            return false;
    for (size_t i = 0; i < nbounds; i++)
        if (f->bounds[i] != bounds[i])
            return false;
    return true;
}

static int family_register(metrics_family **out, enum metrics_type type, const char *name,
                           const char *help, const char *const *labels, size_t nlabels,
                           const double *bounds, size_t nbounds, bool callback,
                           metrics_collect_fn fn, void *arg)
{
    if (!out || !valid_metric_name(name) || strlen(name) > 200 || nlabels > METRICS_MAX_LABELS ||
        (nlabels > 0 && !labels))
        return KERR_INVAL;
    if (!help)
        help = "";
    for (size_t i = 0; i < nlabels; i++) {
        if (!valid_label_name(labels[i]))
            return KERR_INVAL;
        if (type == METRICS_HISTOGRAM && strcmp(labels[i], "le") == 0)
            return KERR_INVAL;
        for (size_t j = 0; j < i; j++)
            if (strcmp(labels[i], labels[j]) == 0)
                return KERR_INVAL;
    }
    if (type == METRICS_HISTOGRAM) {
        if (!bounds && nbounds == 0) {
            bounds = default_bounds;
            nbounds = sizeof default_bounds / sizeof default_bounds[0];
        }
        if (!bounds || nbounds == 0 || nbounds > METRICS_MAX_BUCKETS)
            return KERR_INVAL;
        for (size_t i = 0; i < nbounds; i++)
            if (!isfinite(bounds[i]) || (i > 0 && !(bounds[i] > bounds[i - 1])))
                return KERR_INVAL;
    } else if (type == METRICS_COUNTER || type == METRICS_GAUGE) {
        nbounds = 0;
    } else {
        return KERR_INVAL;
    }
    if (callback && tls_scraping)
        panic_("metric=%s callback family registered from a collect function", name);

    lock(&reg.mu);
    bool found;
    size_t idx = fam_lower_bound(name, &found);
    if (found) {
        metrics_family *f = reg.fams[idx];
        int rc = KERR_EXISTS;
        if (!callback && family_same(f, type, help, labels, nlabels, bounds, nbounds)) {
            *out = f;
            rc = 0;
        }
        unlock(&reg.mu);
        return rc;
    }
    if (name_collides(name, type)) {
        unlock(&reg.mu);
        return KERR_EXISTS;
    }

    metrics_family *f = xcalloc(1, sizeof *f);
    f->name = xstrdup(name);
    f->help = xstrdup(help);
    f->type = type;
    f->nlabels = nlabels;
    for (size_t i = 0; i < nlabels; i++)
        f->labels[i] = xstrdup(labels[i]);
    f->nbounds = nbounds;
    for (size_t i = 0; i < nbounds; i++)
        f->bounds[i] = bounds[i];
    if (callback || type == METRICS_GAUGE)
        f->run = 0; /* values come from fn, or live in the series */
    else if (type == METRICS_COUNTER)
        f->run = 1;
    else
        f->run = (uint32_t)nbounds + 2; /* buckets, +Inf, sum */
    f->is_callback = callback;
    f->fn = fn;
    f->arg = arg;

    if (reg.nfams == reg.capfams) {
        reg.capfams = reg.capfams ? reg.capfams * 2 : 64;
        reg.fams = xrealloc(reg.fams, reg.capfams * sizeof *reg.fams);
    }
    memmove(&reg.fams[idx + 1], &reg.fams[idx], (reg.nfams - idx) * sizeof *reg.fams);
    reg.fams[idx] = f;
    reg.nfams++;
    /* An unlabelled family has its one series from the start, so it is
     * reported as 0 before its first update, as KumoMTA does. */
    if (nlabels == 0 && !callback)
        series_new(f, NULL, labels_hash(NULL, 0));
    unlock(&reg.mu);
    *out = f;
    return 0;
}

int metrics_counter_family(metrics_family **out, const char *name, const char *help,
                           const char *const *label_names, size_t nlabels)
{
    return family_register(out, METRICS_COUNTER, name, help, label_names, nlabels, NULL, 0, false,
                           NULL, NULL);
}

int metrics_gauge_family(metrics_family **out, const char *name, const char *help,
                         const char *const *label_names, size_t nlabels)
{
    return family_register(out, METRICS_GAUGE, name, help, label_names, nlabels, NULL, 0, false,
                           NULL, NULL);
}

int metrics_histogram_family(metrics_family **out, const char *name, const char *help,
                             const char *const *label_names, size_t nlabels, const double *buckets,
                             size_t nbuckets)
{
    return family_register(out, METRICS_HISTOGRAM, name, help, label_names, nlabels, buckets,
                           nbuckets, false, NULL, NULL);
}

int metrics_callback_family(metrics_family **out, enum metrics_type type, const char *name,
                            const char *help, const char *const *label_names, size_t nlabels,
                            metrics_collect_fn fn, void *arg)
{
    if (type != METRICS_COUNTER && type != METRICS_GAUGE)
        return KERR_INVAL;
    return family_register(out, type, name, help, label_names, nlabels, NULL, 0, true, fn, arg);
}

int metrics_callback_family_set(metrics_family *f, metrics_collect_fn fn, void *arg)
{
    if (!f || !f->is_callback)
        return KERR_INVAL;
    if (tls_scraping)
        panic_("metric=%s callback replaced from a collect function", f->name);
    lock(&reg.scrape_mu);
    lock(&reg.mu);
    f->fn = fn;
    f->arg = arg;
    unlock(&reg.mu);
    unlock(&reg.scrape_mu);
    return 0;
}

int metrics_emitv(metrics_emitter *em, double value, const char *const *label_values)
{
    const metrics_family *f = em->f;
    if (f->nlabels > 0 && !label_values)
        return KERR_INVAL;
    size_t strbytes = 0;
    for (size_t i = 0; i < f->nlabels; i++) {
        if (!label_values[i])
            return KERR_INVAL;
        strbytes += strlen(label_values[i]) + 1;
    }
    if (em->n == em->cap) {
        em->cap = em->cap ? em->cap * 2 : 16;
        em->items = xrealloc(em->items, em->cap * sizeof *em->items);
    }
    char **labels = xmalloc(f->nlabels * sizeof(char *) + strbytes);
    char *p = (char *)(labels + f->nlabels);
    for (size_t i = 0; i < f->nlabels; i++) {
        size_t n = strlen(label_values[i]) + 1;
        memcpy(p, label_values[i], n);
        labels[i] = p;
        p += n;
    }
    em->items[em->n] = (struct emitted){.v = value, .seq = em->n, .labels = labels};
    em->n++;
    return 0;
}

int metrics_emit(metrics_emitter *em, double value, ...)
{
    const char *vals[METRICS_MAX_LABELS] = {0};
    va_list ap;
    va_start(ap, value);
    size_t n = collect_values(ap, vals);
    va_end(ap);
    if (n != em->f->nlabels)
        return KERR_INVAL;
    return metrics_emitv(em, value, vals);
}

/* ---- scrape: a snapshot of every family ------------------------------------ */

struct snap_item {
    char *const *labels;
    size_t seq;
    struct mseries *s; /* referenced; NULL for emitted items */
    uint64_t u;        /* counter */
    int64_t i;         /* gauge */
    double d;          /* callback value; histogram sum */
    uint64_t *cum;     /* histogram: nbounds + 1 cumulative counts */
};

struct snap_fam {
    metrics_family *f;
    struct snap_item *items;
    size_t n;
    uint64_t *cum_store;
    metrics_emitter em;
};

struct snap {
    struct snap_fam *fams;
    size_t n;
};

static int item_cmp(const void *a, const void *b, void *arg)
{
    const struct snap_item *x = a, *y = b;
    size_t nl = *(const size_t *)arg;
    for (size_t i = 0; i < nl; i++) {
        int c = strcmp(x->labels[i], y->labels[i]);
        if (c)
            return c;
    }
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

static bool item_same_labels(const struct snap_item *x, const struct snap_item *y, size_t nl)
{
    for (size_t i = 0; i < nl; i++)
        if (strcmp(x->labels[i], y->labels[i]) != 0)
            return false;
    return true;
}

static void snap_take(struct snap *sn)
{
    if (tls_scraping)
        panic_("metrics rendered from a collect function");
    lock(&reg.scrape_mu);
    lock(&reg.mu);
    sn->n = reg.nfams;
    sn->fams = xcalloc(sn->n, sizeof *sn->fams);
    for (size_t k = 0; k < sn->n; k++) {
        metrics_family *f = reg.fams[k];
        struct snap_fam *sf = &sn->fams[k];
        sf->f = f;
        sf->em.f = f;
        if (f->is_callback)
            continue;
        sf->items = xcalloc(f->count, sizeof *sf->items);
        for (size_t b = 0; b < f->tabsize; b++) {
            for (struct mseries *s = f->tab[b]; s; s = s->hnext) {
                if (s->sink)
                    continue;
                atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
                sf->items[sf->n++] = (struct snap_item){.labels = s->labels, .s = s};
            }
        }
    }
    unlock(&reg.mu);

    /* Values and callbacks without reg.mu: callbacks may look series up,
     * and summing shards of many series takes a while. */
    for (size_t k = 0; k < sn->n; k++) {
        struct snap_fam *sf = &sn->fams[k];
        metrics_family *f = sf->f;
        if (f->is_callback) {
            if (f->fn) {
                tls_scraping = true;
                f->fn(&sf->em, f->arg);
                tls_scraping = false;
            }
            sf->items = xcalloc(sf->em.n, sizeof *sf->items);
            for (size_t i = 0; i < sf->em.n; i++)
                sf->items[i] = (struct snap_item){.labels = sf->em.items[i].labels,
                                                  .seq = sf->em.items[i].seq,
                                                  .d = sf->em.items[i].v};
            sf->n = sf->em.n;
        } else if (f->type == METRICS_COUNTER) {
            for (size_t i = 0; i < sf->n; i++)
                sf->items[i].u = slot_sum(sf->items[i].s->slot);
        } else if (f->type == METRICS_GAUGE) {
            for (size_t i = 0; i < sf->n; i++)
                sf->items[i].i = atomic_load_explicit(&sf->items[i].s->gauge, memory_order_relaxed);
        } else {
            sf->cum_store = xcalloc(sf->n * (f->nbounds + 1), sizeof *sf->cum_store);
            for (size_t i = 0; i < sf->n; i++) {
                sf->items[i].cum = sf->cum_store + i * (f->nbounds + 1);
                hist_sum(sf->items[i].s, sf->items[i].cum, &sf->items[i].d);
            }
        }
        if (sf->n > 1) {
            size_t nl = f->nlabels;
            qsort_r(sf->items, sf->n, sizeof *sf->items, item_cmp, &nl);
            size_t w = 1;
            for (size_t i = 1; i < sf->n; i++)
                if (!item_same_labels(&sf->items[i], &sf->items[w - 1], nl))
                    sf->items[w++] = sf->items[i];
            sf->n = w; /* only emitted items can repeat; none of them is referenced */
        }
    }
    unlock(&reg.scrape_mu);
}

static void snap_release(struct snap *sn)
{
    lock(&reg.mu);
    for (size_t k = 0; k < sn->n; k++) {
        struct snap_fam *sf = &sn->fams[k];
        for (size_t i = 0; i < sf->n; i++) {
            struct mseries *s = sf->items[i].s;
            if (s && atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) == 1)
                series_destroy_locked(s);
        }
    }
    unlock(&reg.mu);
    for (size_t k = 0; k < sn->n; k++) {
        struct snap_fam *sf = &sn->fams[k];
        for (size_t i = 0; i < sf->em.n; i++)
            free(sf->em.items[i].labels);
        free(sf->em.items);
        free(sf->items);
        free(sf->cum_store);
    }
    free(sn->fams);
}

/* ---- output buffer ------------------------------------------------------ */

struct buf {
    char *p;
    size_t len, cap;
    bool oom;
};

static void buf_put(struct buf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t ncap = b->cap ? b->cap : 4096;
        while (b->len + n + 1 > ncap)
            ncap *= 2;
        char *np = realloc(b->p, ncap);
        if (!np) {
            b->oom = true;
            return;
        }
        b->p = np;
        b->cap = ncap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}

static void buf_puts(struct buf *b, const char *s)
{
    buf_put(b, s, strlen(s));
}

static void buf_putc(struct buf *b, char c)
{
    buf_put(b, &c, 1);
}

static char *buf_finish(struct buf *b, size_t *len)
{
    buf_put(b, "", 0); /* a NUL even when empty */
    if (b->oom) {
        free(b->p);
        if (len)
            *len = 0;
        return NULL;
    }
    if (len)
        *len = b->len;
    return b->p;
}

/* Length of the well-formed UTF-8 sequence at p (RFC 3629), 0 if none. */
static size_t utf8_len(const unsigned char *p, size_t left)
{
    unsigned c = p[0];
    size_t n;
    unsigned lo = 0x80, hi = 0xbf; /* range of the second byte */
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf)
        n = 2;
    else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        if (c == 0xe0)
            lo = 0xa0; /* overlong */
        if (c == 0xed)
            hi = 0x9f; /* surrogates */
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        if (c == 0xf0)
            lo = 0x90;
        if (c == 0xf4)
            hi = 0x8f; /* > U+10FFFF */
    } else
        return 0;
    if (left < n || p[1] < lo || p[1] > hi)
        return 0;
    for (size_t i = 2; i < n; i++)
        if (p[i] < 0x80 || p[i] > 0xbf)
            return 0;
    return n;
}

#define REPLACEMENT_CHAR "\xef\xbf\xbd"

enum esc { ESC_HELP, ESC_LABEL, ESC_JSON };

/* Writes s escaped for where it goes; bytes that are not UTF-8 become
 * U+FFFD, as neither format can carry them. */
static void put_escaped(struct buf *b, const char *s, enum esc mode)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t left = strlen(s);
    while (left > 0) {
        size_t run = 0; /* bytes copied as they are */
        while (run < left) {
            unsigned char c = p[run];
            if (c == '\\' || c == '\n' || (c == '"' && mode != ESC_HELP) ||
                (c < 0x20 && mode == ESC_JSON))
                break;
            size_t n = utf8_len(p + run, left - run);
            if (n == 0)
                break;
            run += n;
        }
        buf_put(b, (const char *)p, run);
        p += run;
        left -= run;
        if (left == 0)
            break;
        unsigned char c = *p;
        if (c == '\\') {
            buf_puts(b, "\\\\");
        } else if (c == '\n') {
            buf_puts(b, "\\n");
        } else if (c == '"') {
            buf_puts(b, "\\\"");
        } else if (c < 0x20) {
            char e[8];
            if (c == '\t')
                strcpy(e, "\\t");
            else if (c == '\r')
                strcpy(e, "\\r");
            else
                snprintf(e, sizeof e, "\\u%04x", c);
            buf_puts(b, e);
        } else {
            buf_puts(b, REPLACEMENT_CHAR);
        }
        p++;
        left--;
    }
}

/* Shortest text that reads back as v. Text format spells NaN and the
 * infinities; JSON has no such numbers and gets null. */
static void fmt_double(char *out, size_t cap, double v, bool json)
{
    if (isnan(v)) {
        snprintf(out, cap, "%s", json ? "null" : "NaN");
        return;
    }
    if (isinf(v)) {
        snprintf(out, cap, "%s", json ? "null" : v > 0 ? "+Inf" : "-Inf");
        return;
    }
    snprintf(out, cap, "%.15g", v);
    if (strtod(out, NULL) != v)
        snprintf(out, cap, "%.17g", v);
    for (char *p = out; *p; p++)
        if (*p == ',')
            *p = '.'; /* a locale with a decimal comma */
}

static void put_double(struct buf *b, double v, bool json)
{
    char tmp[40];
    fmt_double(tmp, sizeof tmp, v, json);
    buf_puts(b, tmp);
}

static void put_u64(struct buf *b, uint64_t v)
{
    char tmp[24];
    snprintf(tmp, sizeof tmp, "%llu", (unsigned long long)v);
    buf_puts(b, tmp);
}

static void put_i64(struct buf *b, int64_t v)
{
    char tmp[24];
    snprintf(tmp, sizeof tmp, "%lld", (long long)v);
    buf_puts(b, tmp);
}

/* The value of a counter, gauge or callback item. */
static void put_scalar(struct buf *b, const metrics_family *f, const struct snap_item *it,
                       bool json)
{
    if (f->is_callback)
        put_double(b, it->d, json);
    else if (f->type == METRICS_COUNTER)
        put_u64(b, it->u);
    else
        put_i64(b, it->i);
}

/* ---- Prometheus text exposition 0.0.4 ------------------------------------ */

static void put_name(struct buf *b, const char *prefix, const char *name, const char *suffix)
{
    buf_puts(b, prefix);
    buf_puts(b, name);
    buf_puts(b, suffix);
}

static void put_text_labels(struct buf *b, const metrics_family *f, char *const *vals,
                            const char *le)
{
    if (f->nlabels == 0 && !le)
        return;
    buf_putc(b, '{');
    for (size_t i = 0; i < f->nlabels; i++) {
        if (i)
            buf_putc(b, ',');
        buf_puts(b, f->labels[i]);
        buf_puts(b, "=\"");
        put_escaped(b, vals[i], ESC_LABEL);
        buf_putc(b, '"');
    }
    if (le) {
        if (f->nlabels)
            buf_putc(b, ',');
        buf_puts(b, "le=\"");
        buf_puts(b, le);
        buf_putc(b, '"');
    }
    buf_putc(b, '}');
}

static void text_family(struct buf *b, const char *prefix, const struct snap_fam *sf)
{
    const metrics_family *f = sf->f;
    if (f->help[0]) {
        buf_puts(b, "# HELP ");
        put_name(b, prefix, f->name, " ");
        put_escaped(b, f->help, ESC_HELP);
        buf_putc(b, '\n');
    }
    buf_puts(b, "# TYPE ");
    put_name(b, prefix, f->name, " ");
    buf_puts(b, type_name(f->type));
    buf_putc(b, '\n');
    for (size_t i = 0; i < sf->n; i++) {
        const struct snap_item *it = &sf->items[i];
        if (f->type != METRICS_HISTOGRAM) {
            put_name(b, prefix, f->name, "");
            put_text_labels(b, f, it->labels, NULL);
            buf_putc(b, ' ');
            put_scalar(b, f, it, false);
            buf_putc(b, '\n');
            continue;
        }
        for (size_t k = 0; k <= f->nbounds; k++) {
            char le[40];
            if (k < f->nbounds)
                fmt_double(le, sizeof le, f->bounds[k], false);
            else
                strcpy(le, "+Inf");
            put_name(b, prefix, f->name, "_bucket");
            put_text_labels(b, f, it->labels, le);
            buf_putc(b, ' ');
            put_u64(b, it->cum[k]);
            buf_putc(b, '\n');
        }
        put_name(b, prefix, f->name, "_sum");
        put_text_labels(b, f, it->labels, NULL);
        buf_putc(b, ' ');
        put_double(b, it->d, false);
        buf_putc(b, '\n');
        put_name(b, prefix, f->name, "_count");
        put_text_labels(b, f, it->labels, NULL);
        buf_putc(b, ' ');
        put_u64(b, it->cum[f->nbounds]);
        buf_putc(b, '\n');
    }
}

char *metrics_render_prometheus_prefixed(const char *prefix, size_t *len)
{
    /* The prefix comes from a query string: keep only name characters. */
    char pfx[128];
    size_t np = 0;
    for (const char *p = prefix ? prefix : ""; *p && np + 1 < sizeof pfx; p++) {
        char c = *p;
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':' ||
            (np > 0 && c >= '0' && c <= '9'))
            pfx[np++] = c;
    }
    pfx[np] = 0;

    struct snap sn;
    snap_take(&sn);
    struct buf b = {0};
    for (size_t k = 0; k < sn.n; k++)
        text_family(&b, pfx, &sn.fams[k]);
    snap_release(&sn);
    return buf_finish(&b, len);
}

char *metrics_render_prometheus(size_t *len)
{
    return metrics_render_prometheus_prefixed(NULL, len);
}

/* ---- JSON (the shape of KumoMTA's /metrics.json) ------------------------------ */

static void put_json_string(struct buf *b, const char *s)
{
    buf_putc(b, '"');
    put_escaped(b, s, ESC_JSON);
    buf_putc(b, '"');
}

static void json_value(struct buf *b, const metrics_family *f, const struct snap_item *it)
{
    if (f->type != METRICS_HISTOGRAM || f->is_callback) {
        put_scalar(b, f, it, true);
        return;
    }
    uint64_t count = it->cum[f->nbounds];
    buf_puts(b, "{\"count\":");
    put_u64(b, count);
    buf_puts(b, ",\"sum\":");
    put_double(b, it->d, true);
    buf_puts(b, ",\"avg\":");
    put_double(b, count ? it->d / (double)count : 0.0, true);
    buf_puts(b, ",\"bucket\":[");
    for (size_t k = 0; k < f->nbounds; k++) {
        if (k)
            buf_putc(b, ',');
        buf_putc(b, '[');
        put_double(b, f->bounds[k], true);
        buf_putc(b, ',');
        put_u64(b, it->cum[k]);
        buf_putc(b, ']');
    }
    buf_puts(b, "]}");
}

static void json_family(struct buf *b, const struct snap_fam *sf)
{
    const metrics_family *f = sf->f;
    put_json_string(b, f->name);
    buf_puts(b, ":{");
    if (f->help[0]) {
        buf_puts(b, "\"help\":");
        put_json_string(b, f->help);
        buf_putc(b, ',');
    }
    buf_puts(b, "\"type\":\"");
    buf_puts(b, type_name(f->type));
    buf_puts(b, "\",\"value\":");
    if (sf->n == 0) {
        buf_puts(b, "null");
    } else if (f->nlabels == 0) {
        json_value(b, f, &sf->items[0]);
    } else if (f->nlabels == 1) {
        buf_putc(b, '{');
        put_json_string(b, f->labels[0]);
        buf_puts(b, ":{");
        for (size_t i = 0; i < sf->n; i++) {
            if (i)
                buf_putc(b, ',');
            put_json_string(b, sf->items[i].labels[0]);
            buf_putc(b, ':');
            json_value(b, f, &sf->items[i]);
        }
        buf_puts(b, "}}");
    } else {
        buf_putc(b, '[');
        for (size_t i = 0; i < sf->n; i++) {
            if (i)
                buf_putc(b, ',');
            buf_putc(b, '{');
            for (size_t l = 0; l < f->nlabels; l++) {
                put_json_string(b, f->labels[l]);
                buf_putc(b, ':');
                put_json_string(b, sf->items[i].labels[l]);
                buf_putc(b, ',');
            }
            buf_puts(b, "\"@\":");
            json_value(b, f, &sf->items[i]);
            buf_putc(b, '}');
        }
        buf_putc(b, ']');
    }
    buf_putc(b, '}');
}

char *metrics_render_json(size_t *len)
{
    struct snap sn;
    snap_take(&sn);
    struct buf b = {0};
    buf_putc(&b, '{');
    for (size_t k = 0; k < sn.n; k++) {
        buf_puts(&b, k ? ",\n" : "\n");
        json_family(&b, &sn.fams[k]);
    }
    buf_puts(&b, "\n}\n");
    snap_release(&sn);
    return buf_finish(&b, len);
}

/* ---- teardown ------------------------------------------------------------ */

void metrics_shutdown(void)
{
    lock(&reg.scrape_mu);
    lock(&reg.mu);
    for (size_t k = 0; k < reg.nfams; k++) {
        metrics_family *f = reg.fams[k];
        for (size_t b = 0; b < f->tabsize; b++) {
            struct mseries *s = f->tab[b];
            while (s) {
                struct mseries *next = s->hnext;
                free(s);
                s = next;
            }
        }
        free(f->tab);
        free(f->name);
        free(f->help);
        for (size_t i = 0; i < f->nlabels; i++)
            free(f->labels[i]);
        free(f);
    }
    free(reg.fams);
    reg.fams = NULL;
    reg.nfams = reg.capfams = 0;
    /* Slots are handed out afresh, so every shard starts from zero. */
    for (struct shard *sh = shards_first(); sh; sh = sh->next) {
        for (uint32_t i = 0; i < MAX_PAGES; i++) {
            slot_t *pg = atomic_load_explicit(&sh->pages[i], memory_order_acquire);
            if (pg) {
                atomic_store_explicit(&sh->pages[i], NULL, memory_order_release);
                free(pg);
            }
        }
    }
    for (size_t r = 0; r <= MAX_RUN; r++) {
        free(reg.freeruns[r].v);
        reg.freeruns[r] = (struct runlist){0};
    }
    reg.next_slot = MAX_RUN;
    reg.max_slots = MAX_SLOTS;
    reg.warned_slots = false;
    unlock(&reg.mu);
    unlock(&reg.scrape_mu);
}

void metrics__set_slot_limit(uint32_t max_slots)
{
    lock(&reg.mu);
    reg.max_slots = max_slots > MAX_SLOTS ? MAX_SLOTS : max_slots;
    unlock(&reg.mu);
}
