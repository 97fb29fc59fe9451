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
 * counters are atomics. Failures: an unreadable meta is logged and removed
 * from the spool; an enumeration error is logged; an event error is logged
 * and the message is queued anyway. The line "spool enumeration done: N
 * messages (M unreadable) in Ts" is logged once every message found is
 * back in its scheduled queue. */
#include "queue/recovery.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "core/diag.h"
#include "core/kerr.h"
#include "lua/message_lua.h"
#include "lua/services.h"
#include "msg/meta_scan.h"
#include "queue/queue.h"
#include "queue/queue_int.h"
#include "spool/spool.h"

#define RMOD "kumod::spool"
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
        char hex[SPOOLID_HEX_LEN + 1];
        spoolid_to_hex(id, hex);
        DERROR(RMOD, "id=%s unreadable meta in spool; removing it", hex);
        atomic_fetch_add(&enum_bad, 1);
        spool_remove(services_spool(), id, NULL, NULL);
        return;
    }
    atomic_fetch_add(&enum_count, 1);
    uint64_t h = spoolid_hash(id);
    reactor_post(reactor_get((int)(h % (uint64_t)reactor_count())), enum_on_reactor, m);
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
    enum_started_ns = clock_mono_ns();
    enum_started_wall_ns = clock_wall_ns();
    /* The spool is open: take mail at once. Enumeration runs beside it and
     * skips what arrives meanwhile (spec 5.2). */
    services_set_spool_ready();
    reactor_post(reactor_get(0), enum_start_on_reactor, NULL);
    return 0;
}
