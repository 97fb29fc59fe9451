/* Start-up recovery: the spool is enumerated and every message found is
 * put back into its scheduled queue (spec 5.2). Its attempts and due time
 * are inferred from its age, as KumoMTA does, when it is placed
 * (schedq.c). While the spool is not open, listeners answer
 * "421 4.3.2 ... waiting for spool startup" and HTTP injection 503: they ask
 * services_spool_ready(), which recovery_start() sets; reception goes on
 * beside the enumeration, which skips what arrived after the start.
 *
 * Two paths: when the policy defines spool_message_enumerated, or a meta
 * carries scheduling, the meta is parsed into a message, the event runs on
 * a reactor (hash of the id) and the message is inserted like a received
 * one; otherwise the reader thread only scans the meta for its queue name
 * (msg/meta_scan) and hands bare qmsgs, batched per owner reactor, to the
 * scheduled queues (their meta is loaded when a dispatcher needs it).
 *
 * Threads: enum_each, enum_add and enum_flush run on the spool's reader
 * thread; enum_batch_on_owner, the event and the inserts on reactors; the
 * counters are atomics. Failures: an unreadable meta is quarantined: never
 * removed (it may be a message someone was promised), logged with its id,
 * counted (spool_quarantined metric), a copy of the raw record written to
 * <meta spool>/quarantine/<id>.meta for the operator, and listed by
 * GET /api/admin/quarantine/v1 (kcli quarantine-list); an enumeration error is logged; an event error is logged
 * and the message is queued anyway. The line "spool enumeration done: N
 * messages (M unreadable) in Ts" is logged once every message found is
 * back in its scheduled queue. */
#include "queue/recovery.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/diag.h"
#include "core/kerr.h"
#include "lua/message_lua.h"
#include "lua/services.h"
#include "metrics/metrics.h"
#include "msg/meta_scan.h"
#include "queue/queue.h"
#include "queue/queue_int.h"
#include "spool/spool.h"

#define RMOD "kumod::spool"

static void quarantine(const spoolid *id, const char *meta, size_t len);
/* ---- start-up enumeration: batches straight to the owners ------------------------------------- */

/* The spool reader builds, per owner reactor, a batch of bare qmsgs (id
 * and reason only: meta is loaded when a dispatcher needs it) with their
 * queue names, and posts it whole: one mailbox item per ENUM_BATCH
 * messages instead of two posts and a parsed message per message. */
#define ENUM_BATCH 1024

struct enum_batch {
    int n;
    size_t used, cap;
    char *names;               /* NUL-terminated names, back to back */
    uint32_t name_of[ENUM_BATCH]; /* offset into names */
    qmsg *q[ENUM_BATCH];
};

static struct enum_batch **enum_batches; /* per owner; the reader thread only */

static void enum_batch_on_owner(void *arg)
{
    struct enum_batch *b = arg;
    schedq *sq = NULL;
    uint32_t last = UINT32_MAX;
    for (int i = 0; i < b->n && queues_down; i++)
        qmsg_free(b->q[i]);
    for (int i = 0; i < b->n && !queues_down; i++) {
        if (b->name_of[i] != last) {
            last = b->name_of[i];
            sq = sched_get(b->names + last);
        }
        qmsg *q = b->q[i];
        q->sq = sq;
        sched_place(sq, q);
    }
    recovery_note_placed((unsigned long)b->n);
    free(b->names);
    free(b);
}

static void enum_batch_post(int owner)
{
    struct enum_batch *b = enum_batches[owner];
    enum_batches[owner] = NULL;
    if (b)
        reactor_post(reactor_get(owner), enum_batch_on_owner, b);
}

static void enum_add(const spoolid *id, const char *queue)
{
    int owner = (int)(name_hash(queue) % (uint64_t)reactor_count());
    if (!enum_batches) {
        enum_batches = calloc((size_t)reactor_count(), sizeof(*enum_batches));
        if (!enum_batches)
            abort();
    }
    struct enum_batch *b = enum_batches[owner];
    if (!b) {
        b = calloc(1, sizeof(*b));
        if (!b)
            abort();
        enum_batches[owner] = b;
    }
    /* runs of one queue name share one copy */
    size_t n = strlen(queue) + 1;
    if (!b->n || strcmp(b->names + b->name_of[b->n - 1], queue) != 0) {
        if (b->used + n > b->cap) {
            b->cap = (b->used + n) * 2 + 256;
            b->names = realloc(b->names, b->cap);
            if (!b->names)
                abort();
        }
        memcpy(b->names + b->used, queue, n);
        b->name_of[b->n] = (uint32_t)b->used;
        b->used += n;
    } else {
        b->name_of[b->n] = b->name_of[b->n - 1];
    }
    qmsg *q = qmsg_alloc();
    q->id = *id;
    qmsg_add_reason(q, R_ENUMERATED);
    q->enumerated_pending = true;
    b->q[b->n++] = q;
    if (b->n == ENUM_BATCH)
        enum_batch_post(owner);
}

static void enum_flush(void)
{
    if (!enum_batches)
        return;
    for (int i = 0; i < reactor_count(); i++)
        enum_batch_post(i);
    free(enum_batches);
    enum_batches = NULL;
}

/* ---- reading the spool --------------------------------------------------------------- */

/* Counts: found (readable), placed (back in a scheduled queue, reported by
 * the queue layer), unreadable. The done line waits for placed == found. */
static atomic_ullong enum_count, enum_bad, enum_placed;
static atomic_bool enum_read_done, enum_logged;
static int64_t enum_started_ns, enum_started_wall_ns;
static bool enum_lua; /* a spool_message_enumerated handler is defined */
static int enum_read_err;

static void enum_maybe_done(void)
{
    if (!atomic_load(&enum_read_done) ||
        atomic_load(&enum_placed) < atomic_load(&enum_count) ||
        atomic_exchange(&enum_logged, true))
        return;
    if (enum_read_err)
        DERROR(RMOD, "spool enumeration failed: %s", kerr_str(enum_read_err));
    DINFO(RMOD, "spool enumeration done: %llu messages (%llu unreadable) in %.3fs",
          (unsigned long long)atomic_load(&enum_count), (unsigned long long)atomic_load(&enum_bad),
          (double)(clock_mono_ns() - enum_started_ns) / 1e9);
}

void recovery_note_placed(unsigned long n)
{
    atomic_fetch_add(&enum_placed, n);
    enum_maybe_done();
}

static void enum_after_event(klua_call *c, int status, void *ud)
{
    message *m = ud;
    if (status != KLUA_OK) {
        char hex[SPOOLID_HEX_LEN + 1];
        spoolid_to_hex(&m->id, hex);
        DERROR(RMOD, "id=%s spool_message_enumerated failed: %s", hex, klua_call_error(c));
    }
    char *q = queue_name_of_message(m);
    queue_insert(m, q, "Enumerated");
    free(q);
}

static void enum_on_reactor(void *arg)
{
    message *m = arg;
    klua *vm = klua_current();
    if (vm && klua_has_handler(vm, "spool_message_enumerated")) {
        klua_call *c;
        lua_State *co = klua_call_begin(vm, "spool_message_enumerated", &c);
        klua_push_message(co, m);
        klua_call_run(c, 1, enum_after_event, m);
        return;
    }
    enum_after_event(NULL, KLUA_OK, m);
}

/* Reader thread: one call per meta entry. */
static void enum_each(void *ud, const spoolid *id, const char *meta, size_t len)
{
    (void)ud;
    /* accepted since start-up: already queued by its reception */
    if (spoolid_created_ns(id) >= enum_started_wall_ns)
        return;
    if (!enum_lua) {
        char *q;
        bool sched;
        if (meta_scan_queue(meta, len, &q, &sched) == 0) {
            if (!sched) {
                atomic_fetch_add(&enum_count, 1);
                enum_add(id, q);
                free(q);
                return;
            }
            free(q);
        }
    }
    message *m;
    if (message_from_meta_json(id, meta, len, &m) != 0) {
        atomic_fetch_add(&enum_bad, 1);
        quarantine(id, meta, len);
        return;
    }
    atomic_fetch_add(&enum_count, 1);
    uint64_t h = spoolid_hash(id);
    reactor_post(reactor_get((int)(h % (uint64_t)reactor_count())), enum_on_reactor, m);
}

/* ---- quarantine -------------------------------------------------------------------------- */

typedef struct quarantined {
    struct quarantined *next;
    char hex[SPOOLID_HEX_LEN + 1];
    size_t meta_len;
    char *copy; /* where the raw meta was copied, or NULL */
} quarantined;

static pthread_mutex_t q_lock = PTHREAD_MUTEX_INITIALIZER;
static quarantined *q_list;
static metrics_gauge *q_gauge;

/* Writes the raw record next to the meta spool (once: a later start finds
 * it there already), so that the operator can read what could not be
 * parsed without tools for the spool's format. Returns the path or NULL. */
static char *quarantine_copy(const char *hex, const char *meta, size_t len)
{
    const char *base = services_spool_path("meta");
    if (!base)
        return NULL;
    char dir[4096], path[4200];
    snprintf(dir, sizeof(dir), "%s/quarantine", base);
    if (mkdir(dir, 0700) != 0 && errno != EEXIST)
        goto fail;
    snprintf(path, sizeof(path), "%s/%s.meta", dir, hex);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0 && errno == EEXIST)
        return strdup(path);
    if (fd < 0)
        goto fail;
    ssize_t w = write(fd, meta, len);
    if (close(fd) != 0 || w != (ssize_t)len) {
        unlink(path);
        goto fail;
    }
    return strdup(path);
fail:
    DERROR(RMOD, "id=%s cannot write the quarantine copy under %s: %s", hex, dir,
           strerror(errno));
    return NULL;
}

static void quarantine(const spoolid *id, const char *meta, size_t len)
{
    quarantined *q = calloc(1, sizeof(*q));
    if (!q)
        abort();
    spoolid_to_hex(id, q->hex);
    q->meta_len = len;
    q->copy = quarantine_copy(q->hex, meta, len);
    DERROR(RMOD,
           "id=%s unreadable meta in spool (%zu bytes): quarantined; it stays in the spool and "
           "is not delivered (copy: %s; kcli quarantine-list)",
           q->hex, len, q->copy ? q->copy : "none");
    pthread_mutex_lock(&q_lock);
    q->next = q_list;
    q_list = q;
    pthread_mutex_unlock(&q_lock);
    if (q_gauge)
        metrics_gauge_inc(q_gauge);
}

json_t *recovery_quarantine_list(void)
{
    json_t *a = json_array();
    pthread_mutex_lock(&q_lock);
    for (quarantined *q = q_list; q; q = q->next) {
        json_t *o = json_object();
        json_object_set_new(o, "id", json_string(q->hex));
        json_object_set_new(o, "meta_size", json_integer((json_int_t)q->meta_len));
        json_object_set_new(o, "copy", q->copy ? json_string(q->copy) : json_null());
        json_array_append_new(a, o);
    }
    pthread_mutex_unlock(&q_lock);
    return a;
}

void recovery_free(void)
{
    pthread_mutex_lock(&q_lock);
    while (q_list) {
        quarantined *q = q_list;
        q_list = q->next;
        free(q->copy);
        free(q);
    }
    pthread_mutex_unlock(&q_lock);
    metrics_gauge_unref(q_gauge);
    q_gauge = NULL;
}

static void enum_done(void *ud, int err)
{
    (void)ud;
    enum_flush();
    enum_read_err = err;
    atomic_store(&enum_read_done, true);
    enum_maybe_done();
}

/* On reactor 0: whether the policy wants the event decides the path. */
static void enum_start_on_reactor(void *arg)
{
    (void)arg;
    klua *vm = klua_current();
    enum_lua = vm && klua_has_handler(vm, "spool_message_enumerated");
    spool_enumerate(services_spool(), enum_each, enum_done, NULL);
}

int recovery_start(void)
{
    metrics_family *f;
    if (metrics_gauge_family(&f, "spool_quarantined",
                             "messages whose spool meta could not be read at start-up: kept in "
                             "the spool, not delivered (kcli quarantine-list)",
                             NULL, 0) == 0)
        q_gauge = metrics_gauge_get(f, NULL);
    enum_started_ns = clock_mono_ns();
    enum_started_wall_ns = clock_wall_ns();
    /* The spool is open: take mail at once. Enumeration runs beside it and
     * skips what arrives meanwhile (spec 5.2). */
    services_set_spool_ready();
    reactor_post(reactor_get(0), enum_start_on_reactor, NULL);
    return 0;
}
