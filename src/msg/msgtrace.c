/* The store of per-message policy traces (see msgtrace.h).
 *
 * A trace is a small array of steps (time, kind, where, detail), each
 * string cut to a fixed size so that a trace is at most
 * MSGTRACE_MAX_STEPS * sizeof(step) bytes. The store is a ring of
 * max_traces slots in the order traces were made, plus a chained hash
 * table on the spool id: a new trace takes the next slot and the trace
 * there is evicted (the store drops its reference; a message still
 * holding it keeps recording into it until it is freed, unseen).
 *
 * The sampling threshold is an atomic so that message_new on any thread
 * reads it without the mutex; everything else is under store_lock, which
 * only sampled messages and explain take. Allocation failures drop the
 * trace or the step (a trace is a diagnostic, never worth an abort). */
#include "msg/msgtrace.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>

#include "core/kerr.h"
#include "core/reactor.h"

#define WHERE_LEN 96
#define DETAIL_LEN 200

typedef struct step {
    int64_t t_ns;
    const char *kind; /* static */
    char where[WHERE_LEN];
    char detail[DETAIL_LEN];
} step;

struct msgtrace {
    atomic_int refs;
    spoolid id;
    bool stored;
    size_t slot;
    struct msgtrace *hnext;
    step *steps;
    unsigned n, cap, dropped;
};

/* 0: off; else a message is sampled when (hash >> 11) < threshold (53 bits) */
static _Atomic uint64_t threshold;
static double cfg_rate;

static pthread_mutex_t store_lock = PTHREAD_MUTEX_INITIALIZER;
static msgtrace **ring; /* max_traces slots */
static size_t ring_cap, ring_next;
static msgtrace **buckets; /* n_buckets, a power of two */
static size_t n_buckets, n_stored;

static size_t bucket_of(const spoolid *id)
{
    return (size_t)spoolid_hash(id) & (n_buckets - 1);
}

static void trace_free(msgtrace *t)
{
    free(t->steps);
    free(t);
}

msgtrace *msgtrace_ref(msgtrace *t)
{
    if (t)
        atomic_fetch_add_explicit(&t->refs, 1, memory_order_relaxed);
    return t;
}

void msgtrace_unref(msgtrace *t)
{
    if (t && atomic_fetch_sub_explicit(&t->refs, 1, memory_order_acq_rel) == 1)
        trace_free(t);
}

/* Removes t from the store; store_lock held. The caller unrefs it. */
static void unstore(msgtrace *t)
{
    msgtrace **pp = &buckets[bucket_of(&t->id)];
    while (*pp && *pp != t)
        pp = &(*pp)->hnext;
    if (*pp)
        *pp = t->hnext;
    t->hnext = NULL;
    ring[t->slot] = NULL;
    t->stored = false;
    n_stored--;
}

static msgtrace *lookup(const spoolid *id)
{
    if (!buckets)
        return NULL;
    for (msgtrace *t = buckets[bucket_of(id)]; t; t = t->hnext)
        if (spoolid_eq(&t->id, id))
            return t;
    return NULL;
}

/* Resizes the store to cap slots, keeping the newest traces; store_lock held. */
static int resize(size_t cap)
{
    size_t nb = 16;
    while (nb < cap * 2)
        nb <<= 1;
    msgtrace **nring = calloc(cap, sizeof(*nring));
    msgtrace **nbuckets = calloc(nb, sizeof(*nbuckets));
    if (!nring || !nbuckets) {
        free(nring);
        free(nbuckets);
        return KERR_NOMEM;
    }
    /* the old ring from oldest to newest: the newest cap survive */
    size_t keep = 0, evict = n_stored > cap ? n_stored - cap : 0;
    msgtrace **old = ring;
    size_t old_cap = ring_cap;
    for (size_t k = 0; k < old_cap; k++) {
        msgtrace *t = old[(ring_next + k) % old_cap];
        if (!t)
            continue;
        if (evict) {
            /* older than the newest cap: evicted */
            evict--;
            t->stored = false;
            t->hnext = NULL;
            n_stored--;
            msgtrace_unref(t);
            continue;
        }
        t->slot = keep++;
        nring[t->slot] = t;
    }
    free(old);
    free(buckets);
    ring = nring;
    ring_cap = cap;
    ring_next = keep % cap;
    buckets = nbuckets;
    n_buckets = nb;
    for (size_t k = 0; k < keep; k++) {
        msgtrace *t = ring[k];
        size_t b = bucket_of(&t->id);
        t->hnext = buckets[b];
        buckets[b] = t;
    }
    return 0;
}

int msgtrace_configure(double rate, size_t max_traces)
{
    if (!(rate >= 0.0 && rate <= 1.0) || max_traces < 1 || max_traces > 10000000)
        return KERR_INVAL;
    pthread_mutex_lock(&store_lock);
    int rc = ring_cap == max_traces ? 0 : resize(max_traces);
    if (rc == 0) {
        cfg_rate = rate;
        uint64_t th = rate >= 1.0 ? ((uint64_t)1 << 53) : (uint64_t)(rate * 9007199254740992.0);
        if (rate > 0 && th == 0)
            th = 1;
        atomic_store(&threshold, th);
    }
    pthread_mutex_unlock(&store_lock);
    return rc;
}

void msgtrace_settings(double *rate, size_t *max_traces)
{
    pthread_mutex_lock(&store_lock);
    *rate = cfg_rate;
    *max_traces = ring_cap ? ring_cap : MSGTRACE_DEFAULT_MAX;
    pthread_mutex_unlock(&store_lock);
}

static msgtrace *get_or_make(const spoolid *id)
{
    pthread_mutex_lock(&store_lock);
    msgtrace *t = lookup(id);
    if (t) {
        msgtrace_ref(t);
        pthread_mutex_unlock(&store_lock);
        return t;
    }
    if (!ring_cap) {
        pthread_mutex_unlock(&store_lock);
        return NULL; /* never configured */
    }
    t = calloc(1, sizeof(*t));
    if (!t) {
        pthread_mutex_unlock(&store_lock);
        return NULL;
    }
    atomic_init(&t->refs, 2); /* the store's and the caller's */
    t->id = *id;
    msgtrace *old = ring[ring_next];
    if (old) {
        unstore(old);
        msgtrace_unref(old);
    }
    t->slot = ring_next;
    ring[t->slot] = t;
    ring_next = (ring_next + 1) % ring_cap;
    size_t b = bucket_of(id);
    t->hnext = buckets[b];
    buckets[b] = t;
    t->stored = true;
    n_stored++;
    pthread_mutex_unlock(&store_lock);
    return t;
}

msgtrace *msgtrace_for(const spoolid *id)
{
    uint64_t th = atomic_load_explicit(&threshold, memory_order_relaxed);
    if (!th || (spoolid_hash(id) >> 11) >= th)
        return NULL;
    return get_or_make(id);
}

msgtrace *msgtrace_find(const spoolid *id)
{
    uint64_t th = atomic_load_explicit(&threshold, memory_order_relaxed);
    if (!th || (spoolid_hash(id) >> 11) >= th)
        return NULL;
    pthread_mutex_lock(&store_lock);
    msgtrace *t = msgtrace_ref(lookup(id));
    pthread_mutex_unlock(&store_lock);
    return t;
}

msgtrace *msgtrace_force(const spoolid *id)
{
    return get_or_make(id);
}

msgtrace *msgtrace_private(const spoolid *id)
{
    uint64_t th = atomic_load_explicit(&threshold, memory_order_relaxed);
    if (!th || (spoolid_hash(id) >> 11) >= th)
        return NULL;
    msgtrace *t = calloc(1, sizeof(*t));
    if (t) {
        atomic_init(&t->refs, 1);
        t->id = *id;
    }
    return t;
}

/* Appends one step; store_lock held. */
static step *push_step(msgtrace *t)
{
    if (t->n >= MSGTRACE_MAX_STEPS) {
        t->dropped++;
        return NULL;
    }
    if (t->n == t->cap) {
        unsigned nc = t->cap ? t->cap * 2 : 8;
        if (nc > MSGTRACE_MAX_STEPS)
            nc = MSGTRACE_MAX_STEPS;
        step *ns = realloc(t->steps, nc * sizeof(*ns));
        if (!ns) {
            t->dropped++;
            return NULL;
        }
        t->steps = ns;
        t->cap = nc;
    }
    return &t->steps[t->n++];
}

void msgtrace_add(msgtrace *t, const char *kind, const char *where, const char *fmt, ...)
{
    if (!t)
        return;
    char detail[DETAIL_LEN];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
    if (n >= (int)sizeof(detail)) {
        /* cut on a character boundary, and say it was cut */
        size_t p = sizeof(detail) - 4;
        while (p > 0 && ((unsigned char)detail[p - 1] & 0xC0) == 0x80)
            p--;
        if (p > 0 && (unsigned char)detail[p - 1] >= 0xC0)
            p--;
        memcpy(detail + p, "...", 4);
    }
    int64_t now = clock_wall_ns();
    pthread_mutex_lock(&store_lock);
    step *s = push_step(t);
    if (s) {
        s->t_ns = now;
        s->kind = kind;
        snprintf(s->where, sizeof(s->where), "%s", where ? where : "");
        memcpy(s->detail, detail, sizeof(detail));
    }
    pthread_mutex_unlock(&store_lock);
}

void msgtrace_copy_steps(msgtrace *dst, const msgtrace *src)
{
    if (!dst || !src || dst == src)
        return;
    pthread_mutex_lock(&store_lock);
    for (unsigned i = 0; i < src->n; i++) {
        step *s = push_step(dst);
        if (s)
            *s = src->steps[i];
    }
    dst->dropped += src->dropped;
    pthread_mutex_unlock(&store_lock);
}

json_t *msgtrace_json(const spoolid *id)
{
    pthread_mutex_lock(&store_lock);
    msgtrace *t = lookup(id);
    json_t *out = NULL;
    if (t) {
        out = json_object();
        json_t *steps = json_array();
        for (unsigned i = 0; i < t->n; i++) {
            const step *s = &t->steps[i];
            json_t *o = json_object();
            json_object_set_new(o, "time_ns", json_integer(s->t_ns));
            json_object_set_new(o, "kind", json_string(s->kind));
            if (s->where[0])
                json_object_set_new(o, "where", json_string(s->where));
            /* details hold policy text: invalid UTF-8 becomes a note */
            json_t *d = json_string(s->detail);
            json_object_set_new(o, "detail", d ? d : json_string("(not UTF-8 text)"));
            json_array_append_new(steps, o);
        }
        json_object_set_new(out, "steps", steps);
        json_object_set_new(out, "dropped", json_integer(t->dropped));
    }
    pthread_mutex_unlock(&store_lock);
    return out;
}

size_t msgtrace_count(void)
{
    pthread_mutex_lock(&store_lock);
    size_t n = n_stored;
    pthread_mutex_unlock(&store_lock);
    return n;
}

void msgtrace_shutdown(void)
{
    pthread_mutex_lock(&store_lock);
    for (size_t k = 0; k < ring_cap; k++) {
        msgtrace *t = ring[k];
        if (t) {
            t->stored = false;
            t->hnext = NULL;
            msgtrace_unref(t);
        }
    }
    free(ring);
    free(buckets);
    ring = NULL;
    buckets = NULL;
    ring_cap = ring_next = n_buckets = n_stored = 0;
    atomic_store(&threshold, 0);
    cfg_rate = 0;
    pthread_mutex_unlock(&store_lock);
}
