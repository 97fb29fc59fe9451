/* Scheduled queues, ready queues, dispatchers, retries and expiry.
 *
 * Ownership: a scheduled queue and a ready queue live on the reactor
 * hash(name) % N and are touched only there. A queued message (qmsg) is
 * owned by exactly one reactor at a time and moves as a pointer through the
 * mailboxes: reception -> scheduled queue owner -> ready queue owner ->
 * (outcome) -> scheduled queue owner again for a retry. Its message struct is
 * resident only while it is being worked on; while it waits on the timer
 * wheel only the qmsg remains (meta and data stay in the spool).
 *
 * Configuration comes from the policy: get_queue_config / get_egress_pool
 * when a scheduled queue is created, get_egress_source /
 * get_egress_path_config when a ready queue is created. Messages arriving
 * while a queue's configuration loads wait on its pending list. A policy
 * error is logged with its file and line and retried a minute later; the
 * messages stay safe in the spool meanwhile.
 *
 * A message leaves the spool only after its final record was handed to the
 * logger (Delivery, Bounce, Expiration). */
#include "queue/queue.h"

#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <lauxlib.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <uuid/uuid.h>

#include "core/diag.h"
#include "core/duration.h"
#include "core/kerr.h"
#include "core/reactor.h"
#include "core/slab.h"
#include "log/logs.h"
#include "lua/klua.h"
#include "lua/message_lua.h"
#include "lua/services.h"
#include "msg/queue_name.h"
#include "net/dns.h"
#include "queue/backoff.h"
#include "queue/config.h"
#include "queue/dispatch.h"
#include "queue/schedule.h"
#include "smtp/server.h"
#include "spool/spool.h"

#define QMOD "kumod::queue"
#define DEFERRED_QUEUE "deferred_smtp_inject.kumomta.internal"

#define container_of(p, T, m) ((T *)((char *)(p)-offsetof(T, m)))

/* ---- insert reasons (spec §5.7) ----------------------------------------------- */

enum reason {
    R_RECEIVED,
    R_ENUMERATED,
    R_SCHEDULED_FOR_LATER,
    R_READYQ_SUSPENDED,
    R_MESSAGE_RATE_THROTTLE,
    R_THROTTLED_INSERT_READY,
    R_READYQ_FULL,
    R_FAILED_INSERT_READY,
    R_GET_QUEUE_NAME_FAILED,
    R_ADMIN_REBIND,
    R_DUE_TIME_REACHED,
    R_MAX_READY_REDUCED,
    R_LOW_MEMORY,
    R_NULL_MX,
    R_MX_ZERO_HOSTS,
    R_MX_PROHIBITED,
    R_MX_SKIPPED,
    R_TOO_MANY_CONN_FAILURES,
    R_TOO_MANY_RECIPIENTS,
    R_CONNECTION_RATE_THROTTLE,
    R_LOGGED_TRANSIENT_FAILURE,
    R_READYQ_REAPED,
    R_DISPATCHER_DROP,
    R_PEER_CLOSED,
    R_PROTOCOL_CHANGED,
    R_SPOOL_UNHEALTHY,
    R_SOURCE_SUSPENDED,
    R__COUNT
};

static const char *const reason_names[R__COUNT] = {
    "Received",
    "Enumerated",
    "ScheduledForLater",
    "ReadyQueueWasSuspended",
    "MessageRateThrottle",
    "ThrottledByThrottleInsertReadyQueue",
    "ReadyQueueWasFull",
    "FailedToInsertIntoReadyQueue",
    "MessageGetQueueNameFailed",
    "AdminRebind",
    "DueTimeWasReached",
    "MaxReadyWasReducedByConfigUpdate",
    "ReadyQueueWasDelayedDueToLowMemory",
    "FailedDueToNullMx",
    "MxResolvedToZeroHosts",
    "MxWasProhibited",
    "MxWasSkipped",
    "TooManyConnectionFailures",
    "TooManyRecipients",
    "ConnectionRateThrottle",
    "LoggedTransientFailure",
    "ReadyQueueWasReaped",
    "DispatcherDrop",
    "PeerClosedConnection",
    "ProtocolChanged",
    "SpoolUnhealthy",
    "SourceIsUnhealthyAndSuspended",
};

static int reason_parse(const char *s)
{
    for (int i = 0; i < R__COUNT; i++)
        if (strcmp(reason_names[i], s) == 0)
            return i;
    return R_RECEIVED;
}

/* ---- queued message --------------------------------------------------------------- */

typedef struct schedq schedq;
typedef struct readyq readyq;

typedef struct qmsg {
    wheel_entry timer;
    struct qmsg *next, *prev;
    message *m; /* resident, or NULL */
    schedq *sq; /* valid on the scheduled queue's reactor only */
    spoolid id;
    uint16_t num_attempts;
    uint8_t reasons[4]; /* most recent insert reasons, R__COUNT = empty */
    uint8_t n_reasons;
    bool enumerated_pending; /* attempts and due still to be inferred */
    int64_t due_wall_s;      /* when it is due (0 = now) */
} qmsg;

/* Set on a reactor once queue_reactor_shutdown() has freed its queues:
 * work that arrives later (a spool load finishing, a message posted by
 * another reactor) frees what it carries instead of rebuilding queues. */
static __thread bool queues_down;

typedef struct qlist {
    qmsg head;
    long count;
} qlist;

static void qlist_init(qlist *l)
{
    l->head.next = l->head.prev = &l->head;
    l->count = 0;
}

static void qlist_push(qlist *l, qmsg *q)
{
    q->prev = l->head.prev;
    q->next = &l->head;
    l->head.prev->next = q;
    l->head.prev = q;
    l->count++;
}

static void qlist_del(qlist *l, qmsg *q)
{
    q->prev->next = q->next;
    q->next->prev = q->prev;
    q->next = q->prev = NULL;
    l->count--;
}

static qmsg *qlist_pop(qlist *l)
{
    if (l->count == 0)
        return NULL;
    qmsg *q = l->head.next;
    qlist_del(l, q);
    return q;
}

static atomic_llong st_scheduled, st_ready, st_in_flight, st_sched_queues, st_ready_queues;
static atomic_ullong st_delivered, st_transfail, st_failed, st_expired, st_watchdog;

void queue_get_stats(queue_stats *out)
{
    out->scheduled = atomic_load(&st_scheduled);
    out->ready = atomic_load(&st_ready);
    out->in_flight = atomic_load(&st_in_flight);
    out->delivered = atomic_load(&st_delivered);
    out->transfail = atomic_load(&st_transfail);
    out->failed = atomic_load(&st_failed);
    out->expired = atomic_load(&st_expired);
    out->watchdog_aborted = atomic_load(&st_watchdog);
    out->scheduled_queues = atomic_load(&st_sched_queues);
    out->ready_queues = atomic_load(&st_ready_queues);
}

static void qmsg_add_reason(qmsg *q, int r)
{
    if (q->n_reasons && q->reasons[q->n_reasons - 1] == r)
        return; /* adjacent duplicates collapse */
    if (q->n_reasons == 4) {
        memmove(q->reasons, q->reasons + 1, 3);
        q->n_reasons = 3;
    }
    q->reasons[q->n_reasons++] = (uint8_t)r;
}

static bool qmsg_has_reason(const qmsg *q, int r)
{
    for (int i = 0; i < q->n_reasons; i++)
        if (q->reasons[i] == r)
            return true;
    return false;
}

/* Every qmsg comes from one pool (see core/slab.h for why). */
static slab *qmsg_slab;

static qmsg *qmsg_alloc(void)
{
    return slab_alloc(qmsg_slab);
}

static qmsg *qmsg_new(message *m)
{
    qmsg *q = qmsg_alloc();
    q->m = m;
    q->id = m->id;
    q->num_attempts = (uint16_t)m->num_attempts;
    return q;
}

static void qmsg_free(qmsg *q)
{
    message_unref(q->m);
    slab_release(qmsg_slab, q);
}

static uint64_t name_hash(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

static reactor *owner_of(const char *name)
{
    return reactor_get((int)(name_hash(name) % (uint64_t)reactor_count()));
}

static int64_t now_s(void)
{
    return clock_wall_ns() / NS_PER_SEC;
}

static int64_t age_s(const qmsg *q)
{
    return (clock_wall_ns() - spoolid_created_ns(&q->id)) / NS_PER_SEC;
}

static double rand01(void)
{
    static __thread uint64_t s;
    if (!s)
        s = (uint64_t)clock_mono_ns() ^ (uint64_t)(uintptr_t)&s;
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return (double)(s >> 11) / 9007199254740992.0;
}

/* ---- records ---------------------------------------------------------------------- */

typedef struct rec_ctx {
    const char *queue;
    const char *site;
    const char *pool, *source;
    const char *proto;
    const char *peer_name, *peer_addr;
    const char *session_id;
    const char *provider;
    const char *tls_cipher, *tls_version, *tls_subject;
    const char *source_address;
} rec_ctx;

static void log_record(logrec_type t, message *m, uint32_t attempts, const rec_ctx *x,
                       const disp_response *r)
{
    char hex[SPOOLID_HEX_LEN + 1];
    spoolid_to_hex(&m->id, hex);
    logrec rec = {0};
    rec.type = t;
    rec.id = hex;
    rec.sender = m->sender;
    rec.recipients = (const char *const *)m->rcpts;
    rec.n_recipients = m->n_rcpts;
    rec.queue = x->queue;
    rec.site = x->site ? x->site : "";
    rec.size = m->data ? m->data_len : 0;
    rec.response.code = r->code;
    rec.response.enh_class = r->enh_class;
    rec.response.enh_subject = r->enh_subject;
    rec.response.enh_detail = r->enh_detail;
    rec.response.content = r->content;
    rec.response.command = r->command;
    rec.peer_name = x->peer_name;
    rec.peer_addr = x->peer_addr;
    rec.created_ns = spoolid_created_ns(&m->id);
    rec.num_attempts = attempts;
    rec.egress_pool = x->pool;
    rec.egress_source = x->source;
    rec.source_address = x->source_address;
    rec.delivery_protocol = x->proto;
    rec.reception_protocol = json_string_value(json_object_get(m->meta, "reception_protocol"));
    rec.session_id = x->session_id;
    rec.provider_name = x->provider;
    rec.tls_cipher = x->tls_cipher;
    rec.tls_protocol_version = x->tls_version;
    rec.tls_peer_subject_name = x->tls_subject;
    rec.msg_meta = m->meta;
    rec.msg_data = m->data;
    rec.msg_data_len = m->data ? m->data_len : 0;
    logs_record(&rec);
}

static void spool_forget(qmsg *q)
{
    spool *sp = services_spool();
    if (sp)
        spool_remove(sp, &q->id, NULL, NULL);
}

static void forget_delivered_done(void *ud, int err)
{
    spoolid *id = ud;
    /* delivered, but still in the spool: never deliver it again here */
    if (err)
        services_note_delivered(id);
    free(id);
}

/* After a successful delivery. */
static void spool_forget_delivered(qmsg *q)
{
    spool *sp = services_spool();
    if (!sp)
        return;
    spoolid *id = malloc(sizeof(*id));
    if (!id)
        abort();
    *id = q->id;
    spool_remove(sp, &q->id, forget_delivered_done, id);
}

/* ---- loading a message from the spool ----------------------------------------------- */

typedef void (*load_done_fn)(qmsg *q, int err, void *ud);

struct load_job {
    qmsg *q;
    reactor *r;
    load_done_fn done;
    void *ud;
    void (*ud_free)(void *ud); /* frees ud when the queues are down before done could run */
    int err;
    char *meta;
    size_t meta_len;
    char *data;
    size_t data_len;
    bool want_data;
    int stage;
};

static void inspect_after_load(qmsg *q, int err, void *ud);

static void load_finish_on_reactor(void *arg)
{
    struct load_job *j = arg;
    qmsg *q = j->q;
    if (queues_down) {
        /* An in-place load (inspect) left its qmsg in a queue, freed with
         * it; any other qmsg was in flight and is this job's to free, and
         * so is what the caller handed to done. */
        if (j->done != inspect_after_load)
            qmsg_free(q);
        if (j->ud_free)
            j->ud_free(j->ud);
        free(j->meta);
        free(j->data);
        free(j);
        return;
    }
    /* keep a meta that loaded even when the data did not: the failure is
     * then logged against the message and it is retried */
    if (j->meta) {
        message *m;
        int rc = message_from_meta_json(&q->id, j->meta, j->meta_len, &m);
        if (rc) {
            if (!j->err)
                j->err = rc;
        } else {
            message_unref(q->m);
            q->m = m;
            m->num_attempts = q->num_attempts;
        }
    }
    if (!j->err && j->data && q->m) {
        message_set_data_take(q->m, j->data, j->data_len);
        q->m->data_dirty = false;
        j->data = NULL;
    }
    free(j->meta);
    free(j->data);
    j->done(q, j->err, j->ud);
    free(j);
}

static void load_step(void *ud, int err, char *buf, size_t len)
{
    struct load_job *j = ud;
    if (err) {
        j->err = err;
        reactor_post(j->r, load_finish_on_reactor, j);
        return;
    }
    if (j->stage == 0 && buf) {
        j->meta = buf;
        j->meta_len = len;
    } else {
        j->data = buf;
        j->data_len = len;
    }
    j->stage++;
    if (j->stage == 1 && j->want_data) {
        spool_load(services_spool(), &j->q->id, true, load_step, j);
        return;
    }
    reactor_post(j->r, load_finish_on_reactor, j);
}

/* Makes q->m resident with its data (want_data) on the calling reactor,
 * then calls done. ud_free (may be NULL) frees ud instead when the queues
 * shut down while the load is under way. */
static void qmsg_load(qmsg *q, bool want_data, load_done_fn done, void *ud,
                      void (*ud_free)(void *ud))
{
    bool have_meta = q->m != NULL;
    bool have_data = q->m && q->m->data;
    if (have_meta && (!want_data || have_data)) {
        done(q, 0, ud);
        return;
    }
    spool *sp = services_spool();
    if (!sp) {
        done(q, KERR_IO, ud);
        return;
    }
    struct load_job *j = calloc(1, sizeof(*j));
    if (!j)
        abort();
    j->q = q;
    j->r = reactor_current();
    j->done = done;
    j->ud = ud;
    j->ud_free = ud_free;
    j->want_data = want_data;
    if (have_meta) {
        j->stage = 1;
        spool_load(sp, &q->id, true, load_step, j);
    } else {
        spool_load(sp, &q->id, false, load_step, j);
    }
}

/* Saves a dirty meta (after a policy changed it) without a sync of its own. */
static void qmsg_save_if_dirty(qmsg *q)
{
    message *m = q->m;
    spool *sp = services_spool();
    if (!m || !sp || !(m->meta_dirty || m->data_dirty))
        return;
    size_t ml;
    char *meta = message_meta_to_json(m, &ml);
    char *data = NULL;
    if (m->data_dirty && m->data) {
        data = malloc(m->data_len + 1);
        if (data)
            memcpy(data, m->data, m->data_len);
    }
    spool_save(sp, &m->id, meta, ml, data, data ? m->data_len : 0, false, NULL, NULL);
    m->meta_dirty = false;
    if (data)
        m->data_dirty = false;
}

/* Drops the resident message of a waiting qmsg. */
static void qmsg_shrink(qmsg *q)
{
    if (!q->m)
        return;
    qmsg_save_if_dirty(q);
    if (q->m->data_dirty)
        return; /* could not save the data: keep it */
    message_unref(q->m);
    q->m = NULL;
}

/* ---- per-reactor tables -------------------------------------------------------------------- */

#define TABLE_BUCKETS 1024

typedef enum cfg_state { CFG_LOADING, CFG_READY, CFG_FAILED } cfg_state;

struct schedq {
    schedq *hnext;
    char *name;
    queue_name_parts parts;
    cfg_state state;
    queue_config cfg;
    egress_pool pool;
    bool has_pool;
    wrr_state wrr;
    char *site; /* resolved site for SMTP queues */
    qlist waiting;
    qlist pending;
    struct event *reap_ev;
    struct event *retry_ev;
    int64_t cfg_loaded_ns;
    unsigned cfg_epoch;
    throttle_state rate;
    int busy; /* maildir writes in flight: keeps the queue from being reaped */
    klua_call *call; /* get_queue_config / get_egress_pool in flight */
};

struct readyq {
    readyq *hnext;
    char *name;
    char *source_name;
    char *site;
    char *queue_domain, *tenant, *campaign, *routing_domain; /* of the first scheduled queue */
    qproto proto;
    queue_config qcfg; /* copy of the protocol part of the scheduled queue's config */
    egress_path_config cfg;
    egress_source source;
    cfg_state state;
    qlist fifo;
    qlist pending;
    int active;
    struct dispatcher *dispatchers;
    struct event *reap_ev;
    struct event *retry_ev;
    struct event *watchdog_ev;
    throttle_state msg_rate, conn_rate;
    int64_t cfg_loaded_ns;
    unsigned cfg_epoch;
    long conn_failures; /* consecutive failed connection plans */
    klua_call *call;    /* get_egress_source / get_egress_path_config in flight */
};

typedef struct qtables {
    schedq *sched[TABLE_BUCKETS];
    readyq *ready[TABLE_BUCKETS];
} qtables;

static qtables *tables(void)
{
    reactor *r = reactor_current();
    qtables *t = reactor_get_slot(r, REACTOR_SLOT_QUEUES);
    if (!t) {
        t = calloc(1, sizeof(*t));
        if (!t)
            abort();
        reactor_set_slot(r, REACTOR_SLOT_QUEUES, t);
    }
    return t;
}

static const disp_driver *drivers[8];

void dispatch_register_driver(int proto, const disp_driver *drv)
{
    if (proto >= 0 && proto < 8)
        drivers[proto] = drv;
}

/* ---- forward declarations -------------------------------------------------------------------- */

static void sched_insert_local(const char *name, qmsg *q);
static void sched_place(schedq *sq, qmsg *q);
static void sched_make_ready(schedq *sq, qmsg *q);
static void readyq_insert_remote(const char *rq_name, schedq *sq, qmsg *q);
static void requeue_post(qmsg *q, const char *name, bool increment, bool changed, int64_t delay_s);
static void requeue(qmsg *q, const char *qname, bool increment, int64_t delay_s,
                    const disp_response *resp, int reason);
static bool admin_intercept(schedq *sq, qmsg *q);
static bool admin_suspended(schedq *sq, qmsg *q);
static bool readyq_suspended(const readyq *rq);

/* ---- scheduled queue creation -------------------------------------------------------------------- */

static void sched_reap_cb(evutil_socket_t fd, short what, void *arg);
static void sched_load_config(schedq *sq);

static schedq *sched_find(const char *name)
{
    qtables *t = tables();
    uint64_t h = name_hash(name) % TABLE_BUCKETS;
    for (schedq *sq = t->sched[h]; sq; sq = sq->hnext)
        if (strcmp(sq->name, name) == 0)
            return sq;
    return NULL;
}

static schedq *sched_get(const char *name)
{
    schedq *sq = sched_find(name);
    if (sq)
        return sq;
    qtables *t = tables();
    uint64_t h = name_hash(name) % TABLE_BUCKETS;
    sq = calloc(1, sizeof(*sq));
    if (!sq)
        abort();
    sq->name = strdup(name);
    queue_name_parse(name, &sq->parts);
    qlist_init(&sq->waiting);
    qlist_init(&sq->pending);
    sq->reap_ev = evtimer_new(reactor_base(reactor_current()), sched_reap_cb, sq);
    sq->hnext = t->sched[h];
    t->sched[h] = sq;
    atomic_fetch_add(&st_sched_queues, 1);
    sched_load_config(sq);
    return sq;
}

static void sched_free(schedq *sq)
{
    qtables *t = tables();
    uint64_t h = name_hash(sq->name) % TABLE_BUCKETS;
    for (schedq **pp = &t->sched[h]; *pp; pp = &(*pp)->hnext)
        if (*pp == sq) {
            *pp = sq->hnext;
            break;
        }
    if (sq->call)
        klua_call_cancel(sq->call); /* a handler still waiting (shutdown) */
    event_free(sq->reap_ev);
    if (sq->retry_ev)
        event_free(sq->retry_ev);
    queue_config_fini(&sq->cfg);
    if (sq->has_pool)
        egress_pool_fini(&sq->pool);
    queue_name_parts_fini(&sq->parts);
    free(sq->site);
    free(sq->name);
    free(sq);
    atomic_fetch_sub(&st_sched_queues, 1);
}

static void sched_arm_reap(schedq *sq)
{
    if (sq->waiting.count || sq->pending.count || sq->busy)
        return;
    int64_t ns = sq->state == CFG_READY ? sq->cfg.reap_interval_ns : 600 * NS_PER_SEC;
    struct timeval tv = {ns / NS_PER_SEC, (ns % NS_PER_SEC) / 1000};
    evtimer_add(sq->reap_ev, &tv);
}

static void sched_reap_cb(evutil_socket_t fd, short what, void *arg)
{
    schedq *sq = arg;
    if (sq->waiting.count || sq->pending.count || sq->busy || sq->state == CFG_LOADING)
        return;
    DDEBUG(QMOD, "queue=%s reaped (empty for reap_interval)", sq->name);
    sched_free(sq);
}

static void sched_site_resolved(const dns_mx *mx, void *ud);

static void sched_config_ready(schedq *sq)
{
    sq->cfg_epoch = klua_config_epoch();
    if (sq->cfg.proto == QPROTO_SMTP && !sq->cfg.mx_list && !sq->site) {
        /* all domains served by the same MX hosts share one ready queue */
        const char *dom = sq->parts.routing_domain ? sq->parts.routing_domain : sq->parts.domain;
        sq->state = CFG_LOADING;
        dns_lookup_mx(dom, sched_site_resolved, sq);
        return;
    }
    sq->state = CFG_READY;
    sq->cfg_loaded_ns = clock_mono_ns();
    while (sq->pending.count) {
        qmsg *q = qlist_pop(&sq->pending);
        sched_place(sq, q);
    }
    sched_arm_reap(sq);
}

static void sched_site_resolved(const dns_mx *mx, void *ud)
{
    schedq *sq = ud;
    const char *dom = sq->parts.routing_domain ? sq->parts.routing_domain : sq->parts.domain;
    free(sq->site);
    /* failures keep the domain as the site; the dispatcher reports them */
    sq->site = strdup(mx->status == DNS_OK && mx->site_name && *mx->site_name ? mx->site_name
                                                                              : dom);
    sched_config_ready(sq);
}

static void sched_retry_cb(evutil_socket_t fd, short what, void *arg)
{
    schedq *sq = arg;
    sched_load_config(sq);
}

static void sched_config_failed(schedq *sq, const char *why)
{
    DERROR(QMOD, "queue=%s cannot configure the queue, will retry in 60s: %s", sq->name, why);
    sq->state = CFG_FAILED;
    if (!sq->retry_ev)
        sq->retry_ev = evtimer_new(reactor_base(reactor_current()), sched_retry_cb, sq);
    struct timeval tv = {60, 0};
    evtimer_add(sq->retry_ev, &tv);
}

static void after_get_egress_pool(klua_call *c, int status, void *ud)
{
    schedq *sq = ud;
    sq->call = NULL;
    if (status != KLUA_OK) {
        sched_config_failed(sq, klua_call_error(c));
        return;
    }
    lua_State *L = klua_call_thread(c);
    if (klua_call_nresults(c) < 1 || lua_type(L, 1) != LUA_TTABLE) {
        char why[300];
        snprintf(why, sizeof(why), "get_egress_pool('%s') returned no pool", sq->cfg.egress_pool);
        sched_config_failed(sq, why);
        return;
    }
    char err[512];
    json_t *j = klua_to_json(L, 1, err, sizeof(err));
    if (!j || egress_pool_from_json(j, &sq->pool, err, sizeof(err)) != 0) {
        json_decref(j);
        sched_config_failed(sq, err);
        return;
    }
    json_decref(j);
    sq->has_pool = true;
    sched_config_ready(sq);
}

static void sched_load_pool(schedq *sq)
{
    klua *vm = klua_current();
    if (!sq->cfg.egress_pool || strcmp(sq->cfg.egress_pool, "unspecified") == 0 ||
        !klua_has_handler(vm, "get_egress_pool")) {
        if (sq->cfg.egress_pool && strcmp(sq->cfg.egress_pool, "unspecified") != 0) {
            char why[300];
            snprintf(why, sizeof(why),
                     "egress_pool '%s' is named but no get_egress_pool handler is registered",
                     sq->cfg.egress_pool);
            sched_config_failed(sq, why);
            return;
        }
        sched_config_ready(sq);
        return;
    }
    klua_call *c;
    lua_State *co = klua_call_begin(vm, "get_egress_pool", &c);
    lua_pushstring(co, sq->cfg.egress_pool);
    sq->call = c;
    klua_call_run(c, 1, after_get_egress_pool, sq);
}

static void after_get_queue_config(klua_call *c, int status, void *ud)
{
    schedq *sq = ud;
    sq->call = NULL;
    if (status != KLUA_OK) {
        sched_config_failed(sq, klua_call_error(c));
        return;
    }
    lua_State *L = klua_call_thread(c);
    queue_config_fini(&sq->cfg);
    if (klua_call_nresults(c) >= 1 && lua_type(L, 1) == LUA_TTABLE) {
        char err[512];
        json_t *j = klua_to_json(L, 1, err, sizeof(err));
        int rc = j ? queue_config_from_json(j, &sq->cfg, err, sizeof(err)) : KERR_PARSE;
        json_decref(j);
        if (rc) {
            sched_config_failed(sq, err);
            return;
        }
    } else {
        queue_config_defaults(&sq->cfg);
    }
    sched_load_pool(sq);
}

static void sched_load_config(schedq *sq)
{
    sq->state = CFG_LOADING;
    free(sq->site);
    sq->site = NULL;
    queue_config_fini(&sq->cfg);
    queue_config_defaults(&sq->cfg);
    if (strcmp(sq->name, DEFERRED_QUEUE) == 0) {
        /* hard-coded: one minute base, the product's backoff for a week */
        sq->cfg.proto = QPROTO_DEFERRED_INJECT;
        sq->cfg.retry_interval_s = 60;
        sched_config_ready(sq);
        return;
    }
    if (strcmp(sq->name, "null") == 0) {
        sq->cfg.proto = QPROTO_NULL;
        sched_config_ready(sq);
        return;
    }
    klua *vm = klua_current();
    if (!klua_has_handler(vm, "get_queue_config")) {
        sched_load_pool(sq);
        return;
    }
    klua_call *c;
    lua_State *co = klua_call_begin(vm, "get_queue_config", &c);
    lua_pushstring(co, sq->parts.domain ? sq->parts.domain : "");
    if (sq->parts.tenant)
        lua_pushstring(co, sq->parts.tenant);
    else
        lua_pushnil(co);
    if (sq->parts.campaign)
        lua_pushstring(co, sq->parts.campaign);
    else
        lua_pushnil(co);
    if (sq->parts.routing_domain)
        lua_pushstring(co, sq->parts.routing_domain);
    else
        lua_pushnil(co);
    sq->call = c;
    klua_call_run(c, 4, after_get_queue_config, sq);
}

/* ---- placing a message in its scheduled queue ---------------------------------------------------- */

static void sched_timer_fired(wheel_entry *e)
{
    qmsg *q = container_of(e, qmsg, timer);
    schedq *sq = q->sq;
    qlist_del(&sq->waiting, q);
    atomic_fetch_sub(&st_scheduled, 1);
    qmsg_add_reason(q, R_DUE_TIME_REACHED);
    sched_make_ready(sq, q);
    sched_arm_reap(sq);
}

static backoff_params sched_backoff(const schedq *sq)
{
    backoff_params p = {sq->cfg.retry_interval_s, sq->cfg.max_retry_interval_s,
                        sq->cfg.max_age_s};
    return p;
}

static void expire_message(qmsg *q, const char *queue, const char *content, const char *pool,
                           const char *provider)
{
    rec_ctx x = {.queue = queue, .site = "", .pool = pool, .provider = provider};
    disp_response r = {551, 5, 4, 7, content, NULL};
    atomic_fetch_add(&st_expired, 1);
    if (q->m)
        log_record(LOGREC_EXPIRATION, q->m, q->num_attempts, &x, &r);
    spool_forget(q);
    qmsg_free(q);
}

struct expire_load {
    char *queue;
    char *content;
    char *pool;
};

static void expire_load_free(void *ud)
{
    struct expire_load *x = ud;
    free(x->queue);
    free(x->content);
    free(x->pool);
    free(x);
}

static void expire_after_load(qmsg *q, int err, void *ud)
{
    struct expire_load *x = ud;
    expire_message(q, x->queue, x->content, x->pool, NULL);
    expire_load_free(x);
}

/* Expires a message, loading its meta first when it is not resident. */
static void expire_loading(schedq *sq, qmsg *q, const char *content)
{
    struct expire_load *x = calloc(1, sizeof(*x));
    if (!x)
        abort();
    x->queue = strdup(sq->name);
    x->content = strdup(content);
    x->pool = sq->cfg.egress_pool ? strdup(sq->cfg.egress_pool) : NULL;
    qmsg_load(q, false, expire_after_load, x, expire_load_free);
}

static void log_delayed(schedq *sq, qmsg *q, int64_t delay_s)
{
    if (!q->m)
        return;
    char ctx[256] = "";
    size_t o = 0;
    for (int i = 0; i < q->n_reasons; i++)
        o += (size_t)snprintf(ctx + o, sizeof(ctx) - o, "%s%s", i ? ", " : "",
                              reason_names[q->reasons[i]]);
    char dur[64];
    duration_format(delay_s * NS_PER_SEC, dur, sizeof(dur));
    time_t due = (time_t)(now_s() + delay_s);
    struct tm tm;
    gmtime_r(&due, &tm);
    char when[64];
    strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
    char content[512];
    snprintf(content, sizeof(content), "Context: %s. Next due in %s at %s", ctx, dur, when);
    rec_ctx x = {.queue = sq->name, .site = "", .pool = sq->cfg.egress_pool};
    disp_response r = {400, 0, 0, 0, content, NULL};
    log_record(LOGREC_DELAYED, q->m, q->num_attempts, &x, &r);
}

static void sched_place(schedq *sq, qmsg *q)
{
    if (sq->state != CFG_READY) {
        qlist_push(&sq->pending, q);
        return;
    }
    /* refresh_interval (Ttl) or a config epoch change (Epoch) */
    if (sq->cfg.refresh_epoch ? sq->cfg_epoch != klua_config_epoch()
                              : clock_mono_ns() - sq->cfg_loaded_ns > sq->cfg.refresh_interval_ns) {
        qlist_push(&sq->pending, q);
        sched_load_config(sq);
        return;
    }
    evtimer_del(sq->reap_ev);
    q->sq = sq;
    if (admin_intercept(sq, q))
        return;
    backoff_params bp = sched_backoff(sq);
    if (q->enumerated_pending) {
        q->enumerated_pending = false;
        int64_t age = age_s(q);
        q->num_attempts = (uint16_t)backoff_attempts_from_age(&bp, age);
        backoff_result br = backoff_due_from_age(&bp, q->num_attempts, age);
        if (br.expire) {
            char dur[64], max[64], content[256];
            duration_format(age * NS_PER_SEC, dur, sizeof(dur));
            duration_format(sq->cfg.max_age_s * NS_PER_SEC, max, sizeof(max));
            snprintf(content, sizeof(content),
                     "Next delivery time would be %s after creation, which exceeds max_age=%s",
                     dur, max);
            expire_loading(sq, q, content);
            return;
        }
        q->due_wall_s = br.delay_s > 0 ? now_s() + br.delay_s : 0;
    }
    int64_t now = now_s();
    if (q->m && q->m->scheduling) {
        /* set_scheduling: a deferred first attempt, then the delivery window */
        int64_t first;
        const char *fa = json_string_value(json_object_get(q->m->scheduling, "first_attempt"));
        if (fa && q->num_attempts == 0 && sched_parse_rfc3339(fa, &first) == 0 &&
            first > q->due_wall_s) {
            q->due_wall_s = first;
            qmsg_add_reason(q, R_SCHEDULED_FOR_LATER);
        }
        int64_t base = q->due_wall_s > now ? q->due_wall_s : now;
        int64_t adj = sched_window_adjust(q->m->scheduling, base);
        if (adj > base)
            q->due_wall_s = adj;
    }
    if (q->due_wall_s > now) {
        int64_t delay = q->due_wall_s - now;
        bool quiet = (q->n_reasons == 1 && q->reasons[0] == R_ENUMERATED) ||
                     qmsg_has_reason(q, R_LOGGED_TRANSIENT_FAILURE);
        if (!quiet)
            log_delayed(sq, q, delay);
        wheel_entry_init(&q->timer, sched_timer_fired);
        qlist_push(&sq->waiting, q);
        atomic_fetch_add(&st_scheduled, 1);
        reactor_timer_arm(reactor_current(), &q->timer, clock_mono_ms() + delay * 1000);
        qmsg_shrink(q);
        return;
    }
    sched_make_ready(sq, q);
}

struct insert_job {
    qmsg *q;
    char name[];
};

static void insert_on_owner(void *arg)
{
    struct insert_job *j = arg;
    if (queues_down)
        qmsg_free(j->q);
    else
        sched_insert_local(j->name, j->q);
    free(j);
}

static void sched_insert_remote(const char *name, qmsg *q)
{
    size_t n = strlen(name);
    struct insert_job *j = malloc(sizeof(*j) + n + 1);
    if (!j)
        abort();
    j->q = q;
    memcpy(j->name, name, n + 1);
    reactor_post(owner_of(name), insert_on_owner, j);
}

static void sched_insert_local(const char *name, qmsg *q)
{
    schedq *sq = sched_get(name);
    bool enumerated = q->enumerated_pending;
    q->sq = sq;
    sched_place(sq, q);
    if (enumerated)
        smtpsrv_enum_placed(1);
}

int queue_insert(message *m, const char *queue, const char *reason)
{
    qmsg *q = qmsg_new(m);
    int r = reason_parse(reason);
    qmsg_add_reason(q, r);
    if (r == R_ENUMERATED)
        q->enumerated_pending = true;
    q->due_wall_s = m->due_ns / NS_PER_SEC;
    sched_insert_remote(queue, q);
    return 0;
}

static int insert_hook(message *m, const char *queue, const char *reason)
{
    return queue_insert(m, queue, reason);
}

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
    smtpsrv_enum_placed((unsigned long)b->n);
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

/* ---- maildir ------------------------------------------------------------------------------------ */

static int mkdir_p(const char *path, int mode)
{
    char buf[4400];
    snprintf(buf, sizeof(buf), "%s", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = 0;
        if (mkdir(buf, (mode_t)mode) != 0 && errno != EEXIST)
            return -errno;
        *p = '/';
    }
    if (mkdir(buf, (mode_t)mode) != 0 && errno != EEXIST)
        return -errno;
    return 0;
}

/* Expands {meta_name} style template fields of maildir_path from meta. */
static void expand_path(const char *tmpl, message *m, char *out, size_t outlen)
{
    size_t o = 0;
    for (const char *p = tmpl; *p && o + 1 < outlen;) {
        if (p[0] == '{' && p[1] == '{') {
            const char *end = strstr(p, "}}");
            if (end) {
                char key[128];
                const char *k = p + 2;
                while (*k == ' ')
                    k++;
                size_t kl = (size_t)(end - k);
                while (kl && k[kl - 1] == ' ')
                    kl--;
                snprintf(key, sizeof(key), "%.*s", (int)kl, k);
                const char *v = NULL;
                char *dom = NULL;
                if (strcmp(key, "meta.queue") == 0 || strcmp(key, "queue") == 0)
                    v = json_string_value(json_object_get(m->meta, "queue"));
                else if (strncmp(key, "meta.", 5) == 0)
                    v = json_string_value(json_object_get(m->meta, key + 5));
                else if (strcmp(key, "domain") == 0 || strcmp(key, "user") == 0) {
                    const char *r = m->n_rcpts ? m->rcpts[0] : "";
                    const char *at = strrchr(r, '@');
                    if (key[0] == 'd')
                        v = at ? at + 1 : "";
                    else
                        v = dom = strndup(r, at ? (size_t)(at - r) : strlen(r));
                }
                o += (size_t)snprintf(out + o, outlen - o, "%s", v ? v : "");
                free(dom);
                p = end + 2;
                continue;
            }
        }
        out[o++] = *p++;
    }
    out[o] = 0;
}

static int maildir_write(const queue_config *c, message *m, char *err, size_t errlen,
                         char *name_out, size_t name_len)
{
    char base[4096];
    expand_path(c->maildir_path, m, base, sizeof(base));
    static const char *const subs[] = {"tmp", "new", "cur"};
    char path[4200], tmp[4400], final[4400];
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof(path), "%s/%s", base, subs[i]);
        int rc = mkdir_p(path, c->dir_mode);
        if (rc) {
            snprintf(err, errlen, "creating %.300s: %s", path, strerror(-rc));
            return KERR_IO;
        }
    }
    static atomic_ulong seq;
    char hostname[128] = "localhost";
    gethostname(hostname, sizeof(hostname) - 1);
    char hex[SPOOLID_HEX_LEN + 1];
    spoolid_to_hex(&m->id, hex);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    char uniq[256];
    snprintf(uniq, sizeof(uniq), "%lld.M%ldP%dQ%lu_%s.%s", (long long)ts.tv_sec,
             ts.tv_nsec / 1000, (int)getpid(), atomic_fetch_add(&seq, 1), hex, hostname);
    snprintf(tmp, sizeof(tmp), "%s/tmp/%s", base, uniq);
    snprintf(final, sizeof(final), "%s/new/%s", base, uniq);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, c->file_mode);
    if (fd < 0) {
        snprintf(err, errlen, "creating %.300s: %s", tmp, strerror(errno));
        return KERR_IO;
    }
    size_t off = 0;
    while (off < m->data_len) {
        ssize_t w = write(fd, m->data + off, m->data_len - off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            snprintf(err, errlen, "writing %.300s: %s", tmp, strerror(errno));
            close(fd);
            unlink(tmp);
            return KERR_IO;
        }
        off += (size_t)w;
    }
    if (fsync(fd) != 0 || close(fd) != 0) {
        snprintf(err, errlen, "syncing %.300s: %s", tmp, strerror(errno));
        unlink(tmp);
        return KERR_IO;
    }
    if (rename(tmp, final) != 0) {
        snprintf(err, errlen, "renaming %.300s: %s", tmp, strerror(errno));
        unlink(tmp);
        return KERR_IO;
    }
    snprintf(name_out, name_len, "%s", uniq);
    return 0;
}

struct maildir_job {
    char *queue;
    queue_config *cfg; /* borrowed from the schedq: same reactor, queue kept alive */
};

static void maildir_after_load(qmsg *q, int err, void *ud)
{
    schedq *sq = ud;
    char session[37];
    spoolid u; /* a v1 UUID without libuuid: no uuidd round trip */
    spoolid_new(&u);
    spoolid_to_uuid_str(&u, session);
    rec_ctx x = {.queue = sq->name,
                 .site = "",
                 .proto = "Maildir",
                 .session_id = session,
                 .provider = sq->cfg.provider_name};
    sq->busy--; /* the load held a reference on the queue */
    char why[512], content[900];
    char hex[300];
    const char *rcpt = q->m && q->m->n_rcpts ? q->m->rcpts[0] : "";
    if (err) {
        snprintf(why, sizeof(why), "KumoMTA internal: error in deliver_message: %s",
                 kerr_str(err));
    } else if (maildir_write(&sq->cfg, q->m, why, sizeof(why), hex, sizeof(hex)) == 0) {
        snprintf(content, sizeof(content), "%s: wrote to maildir with id=%s", rcpt, hex);
        disp_response r = {200, 0, 0, 0, content, NULL};
        log_record(LOGREC_DELIVERY, q->m, q->num_attempts, &x, &r);
        atomic_fetch_add(&st_delivered, 1);
        spool_forget_delivered(q);
        qmsg_free(q);
        sched_arm_reap(sq);
        return;
    }
    /* "Failures to write to the maildir will cause the message to be delayed
     * and retried approximately 1 minute later." */
    DWARN(QMOD, "queue=%s maildir delivery failed: %s", sq->name, why);
    snprintf(content, sizeof(content), "%s: failed to write to maildir: %s", rcpt, why);
    disp_response r = {400, 0, 0, 0, content, NULL};
    atomic_fetch_add(&st_transfail, 1);
    if (!q->m) {
        q->due_wall_s = now_s() + 60;
        sched_place(sq, q);
        return;
    }
    log_record(LOGREC_TRANSIENT_FAILURE, q->m, q->num_attempts, &x, &r);
    q->num_attempts++;
    q->n_reasons = 0;
    requeue(q, sq->name, false, 60, &r, R_LOGGED_TRANSIENT_FAILURE);
}

/* ---- making a message ready ---------------------------------------------------------------------- */

static const char *proto_suffix(const queue_config *c, char *buf, size_t len)
{
    switch (c->proto) {
    case QPROTO_SMTP:
        return "smtp_client";
    case QPROTO_LUA:
        snprintf(buf, len, "lua:%s", c->constructor);
        return buf;
    case QPROTO_DEFERRED_INJECT:
        return "defersmtpinject";
    case QPROTO_MAILDIR:
        snprintf(buf, len, "maildir:%s", c->maildir_path);
        return buf;
    case QPROTO_NULL:
        return "null";
    }
    return "unknown";
}

struct hold_job {
    char *queue;
    char *reason;
};

static void hold_job_free(void *ud)
{
    struct hold_job *h = ud;
    free(h->queue);
    free(h->reason);
    free(h);
}

static void hold_after_load(qmsg *q, int err, void *ud)
{
    struct hold_job *h = ud;
    if (!err && q->m) {
        char content[400];
        snprintf(content, sizeof(content),
                 "KumoMTA internal: delivery suspended: spool unhealthy: %s", h->reason);
        rec_ctx x = {.queue = h->queue, .site = h->queue};
        disp_response r = {451, 4, 4, 4, content, NULL};
        log_record(LOGREC_DELAYED, q->m, q->num_attempts, &x, &r);
    }
    qmsg_add_reason(q, R_SPOOL_UNHEALTHY);
    qmsg_add_reason(q, R_LOGGED_TRANSIENT_FAILURE);
    /* back on its normal retry schedule: no stampede when health returns */
    requeue_post(q, h->queue, true, false, -1);
    hold_job_free(h);
}

/* seed 001: while the spool is unhealthy, hold messages as if every source
 * were suspended. Returns true when it took q. */
static bool hold_for_spool(schedq *sq, qmsg *q)
{
    char why[256];
    if (!services_spool() || !services_suspend_delivery_when_unhealthy() ||
        services_spool_healthy(why, sizeof(why)))
        return false;
    struct hold_job *h = calloc(1, sizeof(*h));
    if (!h)
        abort();
    h->queue = strdup(sq->name);
    h->reason = strdup(why);
    qmsg_load(q, false, hold_after_load, h, hold_job_free);
    return true;
}

static void sched_make_ready(schedq *sq, qmsg *q)
{
    if (hold_for_spool(sq, q) || admin_intercept(sq, q) || admin_suspended(sq, q))
        return;
    if (sq->cfg.has_max_message_rate) {
        int64_t wait = throttle_take(&sq->rate, &sq->cfg.max_message_rate, clock_wall_ns());
        if (wait > 0) {
            /* no attempt, no jitter: due when the throttle opens */
            qmsg_add_reason(q, R_MESSAGE_RATE_THROTTLE);
            q->due_wall_s = now_s() + (wait + NS_PER_SEC - 1) / NS_PER_SEC;
            sched_place(sq, q);
            return;
        }
    }
    switch (sq->cfg.proto) {
    case QPROTO_NULL:
        spool_forget(q);
        qmsg_free(q);
        return;
    case QPROTO_MAILDIR:
        sq->busy++; /* keeps the queue from being reaped during the load */
        qmsg_load(q, true, maildir_after_load, sq, NULL);
        return;
    default:
        break;
    }
    /* pick the egress source: weighted round robin over the pool */
    const char *source = "unspecified";
    if (sq->has_pool) {
        int i = egress_pool_next(&sq->pool, &sq->wrr);
        if (i < 0) {
            DWARN(QMOD, "queue=%s egress pool %s has no usable source (all weights 0)", sq->name,
                  sq->pool.name);
            q->due_wall_s = now_s() + 60;
            qmsg_add_reason(q, R_FAILED_INSERT_READY);
            sched_place(sq, q);
            return;
        }
        source = sq->pool.entries[i].name;
    }
    char sbuf[4200];
    const char *site = sq->parts.routing_domain ? sq->parts.routing_domain : sq->parts.domain;
    if (sq->cfg.proto == QPROTO_SMTP && sq->site)
        site = sq->site;
    if (sq->cfg.proto == QPROTO_SMTP && sq->cfg.mx_list && !sq->site) {
        size_t o = (size_t)snprintf(sbuf, sizeof(sbuf), "mx_list:");
        size_t i;
        json_t *e;
        json_array_foreach(sq->cfg.mx_list, i, e) {
            const char *h = json_is_string(e) ? json_string_value(e)
                                              : json_string_value(json_object_get(e, "addr"));
            o += (size_t)snprintf(sbuf + o, sizeof(sbuf) - o, "%s%s", i ? "," : "", h);
        }
        site = sbuf;
    }
    if (sq->cfg.proto == QPROTO_DEFERRED_INJECT)
        site = DEFERRED_QUEUE;
    char pbuf[4200];
    const char *suffix = proto_suffix(&sq->cfg, pbuf, sizeof(pbuf));
    char *rq = NULL;
    if (asprintf(&rq, "%s->%s@%s", source, site, suffix) < 0)
        abort();
    readyq_insert_remote(rq, sq, q);
    free(rq);
}

/* ---- ready queues ---------------------------------------------------------------------------------- */

struct dispatcher {
    dispatcher *next;
    readyq *rq;
    const disp_driver *drv;
    void *drv_state;
    qmsg *cur;
    bool open, closing, opening;
    bool loading; /* a spool load for cur is in flight */
    bool idle;    /* open, waiting up to idle_timeout for more messages */
    struct event *idle_ev;
    struct event *kick_ev; /* the next step from a fresh stack frame, or the close */
    bool aborted; /* the watchdog fired while loading */
    int delivered;
    disp_phase phase;
    char detail[128];
    char session_id[37];
    int64_t started_ns, phase_ns, progress_ns;
    char *peer_name, *peer_addr, *tls_cipher, *tls_version, *source_address, *tls_subject;
    char *requeue_to;
    /* per-recipient outcomes of the current message */
    int *rcpt_outcome;
    disp_response *rcpt_resp;
    char **rcpt_content;
};

static void readyq_reap_cb(evutil_socket_t fd, short what, void *arg);
static void readyq_maintain(readyq *rq);
static void readyq_arm_watchdog(readyq *rq);
static void readyq_load_config(readyq *rq);

static readyq *readyq_find(const char *name)
{
    qtables *t = tables();
    uint64_t h = name_hash(name) % TABLE_BUCKETS;
    for (readyq *rq = t->ready[h]; rq; rq = rq->hnext)
        if (strcmp(rq->name, name) == 0)
            return rq;
    return NULL;
}

struct ready_job {
    qmsg *q;
    char *name;
    char *source;
    char *site;
    char *domain, *tenant, *campaign, *routing_domain;
    queue_config proto_cfg;
    char *sched_name;
};

static void ready_job_free(struct ready_job *j)
{
    free(j->name);
    free(j->source);
    free(j->site);
    free(j->domain);
    free(j->tenant);
    free(j->campaign);
    free(j->routing_domain);
    free(j->sched_name);
    queue_config_fini(&j->proto_cfg);
    free(j);
}

static char *dupn(const char *s)
{
    return s ? strdup(s) : NULL;
}

static readyq *readyq_create(struct ready_job *j)
{
    qtables *t = tables();
    uint64_t h = name_hash(j->name) % TABLE_BUCKETS;
    readyq *rq = calloc(1, sizeof(*rq));
    if (!rq)
        abort();
    rq->name = strdup(j->name);
    rq->source_name = strdup(j->source);
    rq->site = strdup(j->site);
    rq->queue_domain = dupn(j->domain);
    rq->tenant = dupn(j->tenant);
    rq->campaign = dupn(j->campaign);
    rq->routing_domain = dupn(j->routing_domain);
    rq->proto = j->proto_cfg.proto;
    /* take the protocol config */
    rq->qcfg = j->proto_cfg;
    memset(&j->proto_cfg, 0, sizeof(j->proto_cfg));
    egress_path_defaults(&rq->cfg);
    qlist_init(&rq->fifo);
    qlist_init(&rq->pending);
    rq->reap_ev = evtimer_new(reactor_base(reactor_current()), readyq_reap_cb, rq);
    rq->hnext = t->ready[h];
    t->ready[h] = rq;
    atomic_fetch_add(&st_ready_queues, 1);
    readyq_load_config(rq);
    return rq;
}

static void readyq_free(readyq *rq)
{
    qtables *t = tables();
    uint64_t h = name_hash(rq->name) % TABLE_BUCKETS;
    for (readyq **pp = &t->ready[h]; *pp; pp = &(*pp)->hnext)
        if (*pp == rq) {
            *pp = rq->hnext;
            break;
        }
    if (rq->call)
        klua_call_cancel(rq->call); /* a handler still waiting (shutdown) */
    event_free(rq->reap_ev);
    if (rq->retry_ev)
        event_free(rq->retry_ev);
    if (rq->watchdog_ev)
        event_free(rq->watchdog_ev);
    egress_path_fini(&rq->cfg);
    egress_source_fini(&rq->source);
    queue_config_fini(&rq->qcfg);
    free(rq->name);
    free(rq->source_name);
    free(rq->site);
    free(rq->queue_domain);
    free(rq->tenant);
    free(rq->campaign);
    free(rq->routing_domain);
    free(rq);
    atomic_fetch_sub(&st_ready_queues, 1);
}

static void readyq_reap_cb(evutil_socket_t fd, short what, void *arg)
{
    readyq *rq = arg;
    if (rq->fifo.count || rq->pending.count || rq->active || rq->state == CFG_LOADING)
        return;
    readyq_free(rq);
}

static void readyq_arm_reap(readyq *rq)
{
    if (rq->fifo.count || rq->pending.count || rq->active)
        return;
    struct timeval tv = {60, 0};
    evtimer_add(rq->reap_ev, &tv);
}

/* Sends a message back to its scheduled queue without an attempt (full,
 * suspended...): delay_s < 0 means a random 0-60 s. */
static void back_to_sched(qmsg *q, int reason, int64_t delay_s);

static void readyq_accept(readyq *rq, qmsg *q)
{
    if (rq->active == 0 && rq->state == CFG_READY &&
        (rq->cfg.refresh_epoch ? rq->cfg_epoch != klua_config_epoch()
                               : clock_mono_ns() - rq->cfg_loaded_ns > rq->cfg.refresh_interval_ns)) {
        qlist_push(&rq->pending, q);
        readyq_load_config(rq);
        return;
    }
    if (rq->fifo.count >= rq->cfg.max_ready) {
        back_to_sched(q, R_READYQ_FULL, -1);
        return;
    }
    evtimer_del(rq->reap_ev);
    qlist_push(&rq->fifo, q);
    atomic_fetch_add(&st_ready, 1);
    readyq_maintain(rq);
}

static void readyq_config_ready(readyq *rq)
{
    rq->state = CFG_READY;
    rq->cfg_loaded_ns = clock_mono_ns();
    rq->cfg_epoch = klua_config_epoch();
    while (rq->pending.count)
        readyq_accept(rq, qlist_pop(&rq->pending));
    readyq_arm_reap(rq);
}

static void readyq_retry_cb(evutil_socket_t fd, short what, void *arg)
{
    readyq_load_config(arg);
}

static void readyq_config_failed(readyq *rq, const char *why)
{
    DERROR(QMOD, "ready_queue=%s cannot configure the egress path, will retry in 60s: %s",
           rq->name, why);
    rq->state = CFG_FAILED;
    if (!rq->retry_ev)
        rq->retry_ev = evtimer_new(reactor_base(reactor_current()), readyq_retry_cb, rq);
    struct timeval tv = {60, 0};
    evtimer_add(rq->retry_ev, &tv);
}

static void after_get_egress_path_config(klua_call *c, int status, void *ud)
{
    readyq *rq = ud;
    rq->call = NULL;
    if (status != KLUA_OK) {
        readyq_config_failed(rq, klua_call_error(c));
        return;
    }
    lua_State *L = klua_call_thread(c);
    egress_path_fini(&rq->cfg);
    if (klua_call_nresults(c) >= 1 && lua_type(L, 1) == LUA_TTABLE) {
        char err[512];
        json_t *j = klua_to_json(L, 1, err, sizeof(err));
        int rc = j ? egress_path_from_json(j, &rq->cfg, err, sizeof(err)) : KERR_PARSE;
        json_decref(j);
        if (rc) {
            egress_path_defaults(&rq->cfg);
            readyq_config_failed(rq, err);
            return;
        }
    } else {
        egress_path_defaults(&rq->cfg);
    }
    readyq_config_ready(rq);
}

static void readyq_load_path(readyq *rq)
{
    klua *vm = klua_current();
    if (!klua_has_handler(vm, "get_egress_path_config")) {
        readyq_config_ready(rq);
        return;
    }
    klua_call *c;
    lua_State *co = klua_call_begin(vm, "get_egress_path_config", &c);
    const char *rd = rq->routing_domain ? rq->routing_domain
                                        : (rq->queue_domain ? rq->queue_domain : rq->site);
    lua_pushstring(co, rd);
    lua_pushstring(co, rq->source_name);
    lua_pushstring(co, rq->site);
    rq->call = c;
    klua_call_run(c, 3, after_get_egress_path_config, rq);
}

static void after_get_egress_source(klua_call *c, int status, void *ud)
{
    readyq *rq = ud;
    rq->call = NULL;
    if (status != KLUA_OK) {
        readyq_config_failed(rq, klua_call_error(c));
        return;
    }
    lua_State *L = klua_call_thread(c);
    if (klua_call_nresults(c) < 1 || lua_type(L, 1) != LUA_TTABLE) {
        char why[300];
        snprintf(why, sizeof(why), "get_egress_source('%s') returned no source",
                 rq->source_name);
        readyq_config_failed(rq, why);
        return;
    }
    char err[512];
    json_t *j = klua_to_json(L, 1, err, sizeof(err));
    egress_source_fini(&rq->source);
    if (!j || egress_source_from_json(j, &rq->source, err, sizeof(err)) != 0) {
        json_decref(j);
        readyq_config_failed(rq, err);
        return;
    }
    json_decref(j);
    readyq_load_path(rq);
}

static void readyq_load_config(readyq *rq)
{
    rq->state = CFG_LOADING;
    klua *vm = klua_current();
    if (strcmp(rq->source_name, "unspecified") == 0 ||
        !klua_has_handler(vm, "get_egress_source")) {
        egress_source_fini(&rq->source);
        rq->source.name = strdup(rq->source_name);
        readyq_load_path(rq);
        return;
    }
    klua_call *c;
    lua_State *co = klua_call_begin(vm, "get_egress_source", &c);
    lua_pushstring(co, rq->source_name);
    rq->call = c;
    klua_call_run(c, 1, after_get_egress_source, rq);
}

static void ready_on_owner(void *arg)
{
    struct ready_job *j = arg;
    if (queues_down) {
        qmsg_free(j->q);
        ready_job_free(j);
        return;
    }
    readyq *rq = readyq_find(j->name);
    if (!rq)
        rq = readyq_create(j);
    qmsg *q = j->q;
    ready_job_free(j);
    if (rq->state != CFG_READY) {
        qlist_push(&rq->pending, q);
        return;
    }
    readyq_accept(rq, q);
}

static void readyq_insert_remote(const char *rq_name, schedq *sq, qmsg *q)
{
    struct ready_job *j = calloc(1, sizeof(*j));
    if (!j)
        abort();
    j->q = q;
    q->sq = NULL; /* leaves its scheduled queue's reactor */
    j->name = strdup(rq_name);
    const char *arrow = strstr(rq_name, "->");
    j->source = strndup(rq_name, arrow ? (size_t)(arrow - rq_name) : 0);
    const char *at = strrchr(rq_name, '@');
    j->site = strndup(arrow + 2, at ? (size_t)(at - arrow - 2) : strlen(arrow + 2));
    j->domain = dupn(sq->parts.domain);
    j->tenant = dupn(sq->parts.tenant);
    j->campaign = dupn(sq->parts.campaign);
    j->routing_domain = dupn(sq->parts.routing_domain);
    j->sched_name = strdup(sq->name);
    queue_config_defaults(&j->proto_cfg);
    j->proto_cfg.proto = sq->cfg.proto;
    j->proto_cfg.constructor = dupn(sq->cfg.constructor);
    j->proto_cfg.batch_size = sq->cfg.batch_size;
    j->proto_cfg.mx_list = sq->cfg.mx_list ? json_deep_copy(sq->cfg.mx_list) : NULL;
    j->proto_cfg.egress_pool = dupn(sq->cfg.egress_pool);
    j->proto_cfg.provider_name = dupn(sq->cfg.provider_name);
    atomic_fetch_add(&st_in_flight, 1);
    reactor_post(owner_of(rq_name), ready_on_owner, j);
}

/* ---- dispatchers ------------------------------------------------------------------------------------ */

static const char *const phase_names[] = {
    "Starting",        "AcquiringLease", "Idle", "AccumulatingBatch", "ConnectionRateThrottled",
    "MessageRateThrottled", "AttemptingConnection", "DeliveringMessage", "Closing"};

void *disp_driver_state(dispatcher *d)
{
    return d->drv_state;
}
void disp_set_driver_state(dispatcher *d, void *st)
{
    d->drv_state = st;
}
const char *disp_readyq_name(dispatcher *d)
{
    return d->rq->name;
}
const char *disp_site(dispatcher *d)
{
    return d->rq->site;
}
const char *disp_domain(dispatcher *d)
{
    return d->rq->queue_domain;
}
const char *disp_tenant(dispatcher *d)
{
    return d->rq->tenant;
}
const char *disp_campaign(dispatcher *d)
{
    return d->rq->campaign;
}
const char *disp_routing_domain(dispatcher *d)
{
    return d->rq->routing_domain;
}
const queue_config *disp_queue_config(dispatcher *d)
{
    return &d->rq->qcfg;
}
const egress_path_config *disp_path_config(dispatcher *d)
{
    return &d->rq->cfg;
}
const egress_source *disp_source(dispatcher *d)
{
    return &d->rq->source;
}
const char *disp_session_id(dispatcher *d)
{
    return d->session_id;
}

void disp_set_phase(dispatcher *d, disp_phase p, const char *detail)
{
    int64_t now = clock_mono_ns();
    if (p != d->phase)
        d->phase_ns = now;
    d->phase = p;
    snprintf(d->detail, sizeof(d->detail), "%s", detail ? detail : "");
    d->progress_ns = now;
}

static void set_str(char **dst, const char *v)
{
    free(*dst);
    *dst = v ? strdup(v) : NULL;
}

void disp_set_peer(dispatcher *d, const char *name, const char *addr)
{
    set_str(&d->peer_name, name);
    set_str(&d->peer_addr, addr);
}

void disp_set_tls(dispatcher *d, const char *cipher, const char *version)
{
    set_str(&d->tls_cipher, cipher);
    set_str(&d->tls_version, version);
}

void disp_set_tls_subject(dispatcher *d, const char *subject_lines)
{
    set_str(&d->tls_subject, subject_lines);
}

void disp_set_source_address(dispatcher *d, const char *addr)
{
    set_str(&d->source_address, addr);
}

static void disp_next(dispatcher *d);

static void disp_close(dispatcher *d);

/* One timer per dispatcher instead of event_base_once: a pending step dies
 * with its dispatcher, and repeated kicks fold into one. */
static void disp_kick_cb(evutil_socket_t fd, short what, void *arg)
{
    dispatcher *d = arg;
    if (d->closing)
        disp_close(d);
    else
        disp_next(d);
}

static void disp_kick(dispatcher *d, int64_t wait_ns)
{
    struct timeval tv = {wait_ns / NS_PER_SEC, (wait_ns % NS_PER_SEC) / 1000};
    evtimer_add(d->kick_ev, &tv);
}

static void disp_destroy(dispatcher *d)
{
    readyq *rq = d->rq;
    for (dispatcher **pp = &rq->dispatchers; *pp; pp = &(*pp)->next)
        if (*pp == d) {
            *pp = d->next;
            break;
        }
    rq->active--;
    free(d->peer_name);
    free(d->peer_addr);
    free(d->tls_cipher);
    free(d->tls_version);
    free(d->source_address);
    free(d->tls_subject);
    free(d->requeue_to);
    if (d->idle_ev)
        event_free(d->idle_ev);
    event_free(d->kick_ev);
    free(d->rcpt_outcome);
    free(d->rcpt_resp);
    if (d->rcpt_content) {
        free(d->rcpt_content);
    }
    free(d);
    readyq_arm_reap(rq);
}

static void disp_close(dispatcher *d)
{
    disp_set_phase(d, PHASE_CLOSING, NULL);
    /* also after a failed open: the driver frees its state */
    if (d->drv->close)
        d->drv->close(d);
    d->open = false;
    disp_destroy(d);
}

/* Closes from outside the driver's own callback. */
static void disp_close_soon(dispatcher *d)
{
    if (d->closing)
        return;
    d->closing = true;
    disp_kick(d, 0);
}

void disp_set_requeue_queue(dispatcher *d, const char *queue)
{
    free(d->requeue_to);
    d->requeue_to = queue ? strdup(queue) : NULL;
}

static rec_ctx disp_rec(dispatcher *d, message *m, char *qbuf)
{
    (void)m;
    if (d->drv->bare_records) {
        rec_ctx bare = {.queue = qbuf, .site = d->rq->name, .proto = d->drv->delivery_protocol};
        return bare;
    }
    rec_ctx x = {.queue = qbuf,
                 .site = d->rq->name,
                 .pool = d->rq->qcfg.egress_pool ? d->rq->qcfg.egress_pool : "unspecified",
                 .source = d->rq->source_name,
                 .proto = d->drv->delivery_protocol,
                 .peer_name = d->peer_name,
                 .peer_addr = d->peer_addr,
                 .session_id = d->session_id,
                 .provider = d->rq->cfg.provider_name ? d->rq->cfg.provider_name
                                                      : d->rq->qcfg.provider_name,
                 .tls_cipher = d->tls_cipher,
                 .tls_version = d->tls_version,
                 .tls_subject = d->tls_subject,
                 .source_address = d->source_address};
    return x;
}

static void finish_message(dispatcher *d, qmsg *q, int outcome, const disp_response *r)
{
    message *m = q->m;
    char *qname = queue_name_of_message(m);
    rec_ctx x = disp_rec(d, m, qname);
    atomic_fetch_sub(&st_in_flight, 1);
    if (outcome == OUTCOME_DELIVERED) {
        log_record(LOGREC_DELIVERY, m, q->num_attempts, &x, r);
        atomic_fetch_add(&st_delivered, 1);
        spool_forget_delivered(q);
        qmsg_free(q);
    } else if (outcome == OUTCOME_PERMANENT) {
        log_record(LOGREC_BOUNCE, m, q->num_attempts, &x, r);
        atomic_fetch_add(&st_failed, 1);
        spool_forget(q);
        qmsg_free(q);
    } else {
        log_record(LOGREC_TRANSIENT_FAILURE, m, q->num_attempts, &x, r);
        atomic_fetch_add(&st_transfail, 1);
        if (d->requeue_to) {
            json_object_set_new(m->meta, "queue", json_string(d->requeue_to));
            m->meta_dirty = true;
            free(qname);
            qname = strdup(d->requeue_to);
            free(d->requeue_to);
            d->requeue_to = NULL;
        }
        requeue(q, qname, true, -1, r, R_LOGGED_TRANSIENT_FAILURE);
    }
    free(qname);
}

void disp_recipient_outcome(dispatcher *d, size_t idx, disp_outcome o, const disp_response *r)
{
    qmsg *q = d->cur;
    if (!q || !q->m || idx >= q->m->n_rcpts)
        return;
    if (!d->rcpt_outcome) {
        d->rcpt_outcome = calloc(q->m->n_rcpts, sizeof(int));
        d->rcpt_resp = calloc(q->m->n_rcpts, sizeof(disp_response));
        d->rcpt_content = calloc(q->m->n_rcpts, sizeof(char *));
        for (size_t i = 0; i < q->m->n_rcpts; i++)
            d->rcpt_outcome[i] = -1;
    }
    d->rcpt_outcome[idx] = (int)o;
    d->rcpt_resp[idx] = *r;
    free(d->rcpt_content[idx]);
    /* content and command in one allocation: "content\0command" */
    size_t cl = strlen(r->content ? r->content : ""), ml = r->command ? strlen(r->command) : 0;
    char *both = malloc(cl + ml + 2);
    if (!both)
        abort();
    memcpy(both, r->content ? r->content : "", cl + 1);
    if (r->command)
        memcpy(both + cl + 1, r->command, ml + 1);
    d->rcpt_content[idx] = both;
    d->rcpt_resp[idx].content = both;
    d->rcpt_resp[idx].command = r->command ? both + cl + 1 : NULL;
}

/* Splits per-recipient outcomes: each recipient gets its own record; those
 * that failed transiently stay on the message, which is requeued. */
static void finish_per_recipient(dispatcher *d, qmsg *q)
{
    message *m = q->m;
    size_t n = m->n_rcpts;
    const char **keep = calloc(n ? n : 1, sizeof(char *));
    size_t nk = 0;
    disp_response tf = {0};
    char *tf_content = NULL;
    char *qname = queue_name_of_message(m);
    rec_ctx x = disp_rec(d, m, qname);
    for (size_t i = 0; i < n; i++) {
        int o = d->rcpt_outcome[i] < 0 ? OUTCOME_TRANSIENT : d->rcpt_outcome[i];
        const char *one = m->rcpts[i];
        if (o == OUTCOME_TRANSIENT) {
            keep[nk++] = m->rcpts[i];
            tf = d->rcpt_resp[i];
            free(tf_content);
            tf_content = strdup(tf.content ? tf.content : "");
            tf.content = tf_content;
            continue;
        }
        /* a record for just this recipient */
        char **saved = m->rcpts;
        size_t saved_n = m->n_rcpts;
        m->rcpts = (char **)&one;
        m->n_rcpts = 1;
        log_record(o == OUTCOME_DELIVERED ? LOGREC_DELIVERY : LOGREC_BOUNCE, m, q->num_attempts,
                   &x, &d->rcpt_resp[i]);
        m->rcpts = saved;
        m->n_rcpts = saved_n;
        atomic_fetch_add(o == OUTCOME_DELIVERED ? &st_delivered : &st_failed, 1);
    }
    if (nk == 0) {
        atomic_fetch_sub(&st_in_flight, 1);
        spool_forget(q);
        qmsg_free(q);
    } else {
        if (nk < n)
            message_set_recipients(m, keep, nk);
        atomic_fetch_sub(&st_in_flight, 1);
        log_record(LOGREC_TRANSIENT_FAILURE, m, q->num_attempts, &x, &tf);
        atomic_fetch_add(&st_transfail, 1);
        requeue(q, qname, true, -1, &tf, R_LOGGED_TRANSIENT_FAILURE);
    }
    free(qname);
    free(keep);
    free(tf_content);
    for (size_t i = 0; i < n; i++)
        free(d->rcpt_content[i]);
    free(d->rcpt_content);
    free(d->rcpt_outcome);
    free(d->rcpt_resp);
    d->rcpt_content = NULL;
    d->rcpt_outcome = NULL;
    d->rcpt_resp = NULL;
}

void disp_delivered(dispatcher *d, int outcome, const disp_response *r)
{
    qmsg *q = d->cur;
    d->cur = NULL;
    d->progress_ns = clock_mono_ns();
    if (q) {
        if (outcome < 0 && d->rcpt_outcome)
            finish_per_recipient(d, q);
        else
            finish_message(d, q, outcome < 0 ? OUTCOME_TRANSIENT : outcome, r);
        d->delivered++;
    }
    if (d->closing)
        return;
    if (d->delivered >= d->rq->cfg.max_deliveries_per_connection || !d->open) {
        disp_close_soon(d);
        return;
    }
    disp_set_phase(d, PHASE_IDLE, NULL);
    /* continue from a fresh stack frame: the driver is inside its callback */
    disp_kick(d, 0);
}

static void watchdog_requeue(dispatcher *d, qmsg *q);

void disp_rebound(dispatcher *d)
{
    qmsg *q = d->cur;
    d->cur = NULL;
    d->progress_ns = clock_mono_ns();
    if (q) {
        message *m = q->m;
        char *newq = queue_name_of_message(m);
        rec_ctx x = disp_rec(d, m, newq);
        disp_response r = {250, 0, 0, 0, "ok", NULL};
        log_record(LOGREC_DEFERRED_INJECTION_REBIND, m, q->num_attempts, &x, &r);
        /* a deferred_spool message stays in memory until it must be saved */
        if (m->in_spool)
            qmsg_save_if_dirty(q);
        atomic_fetch_sub(&st_in_flight, 1);
        q->n_reasons = 0;
        qmsg_add_reason(q, R_RECEIVED);
        q->due_wall_s = 0;
        if (strcmp(newq, "null") == 0) {
            spool_forget(q);
            qmsg_free(q);
        } else {
            requeue_post(q, newq, false, false, 0);
        }
        free(newq);
        d->delivered++;
    }
    if (d->closing)
        return;
    disp_set_phase(d, PHASE_IDLE, NULL);
    disp_kick(d, 0);
}

static void disp_after_load(qmsg *q, int err, void *ud)
{
    dispatcher *d = ud;
    d->loading = false;
    if (d->aborted) {
        /* the watchdog gave up on this dispatcher while the spool was busy */
        d->cur = NULL;
        if (!err && q->m)
            watchdog_requeue(d, q);
        else
            qmsg_free(q);
        disp_destroy(d);
        return;
    }
    if (err) {
        /* the spool could not give us the message: no transaction starts */
        char content[300], hex[SPOOLID_HEX_LEN + 1];
        spoolid_to_hex(&q->id, hex);
        if (err == KERR_NOTFOUND)
            snprintf(content, sizeof(content),
                     "KumoMTA internal: error in deliver_message: IO error: No such file or "
                     "directory: message %s is missing from the spool",
                     hex);
        else
            snprintf(content, sizeof(content),
                     "KumoMTA internal: error in deliver_message: %s loading message %s",
                     kerr_str(err), hex);
        disp_response r = {400, 0, 0, 0, content, NULL};
        d->cur = NULL;
        atomic_fetch_sub(&st_in_flight, 1);
        if (q->m) {
            char *qname = queue_name_of_message(q->m);
            rec_ctx x = disp_rec(d, q->m, qname);
            log_record(LOGREC_TRANSIENT_FAILURE, q->m, q->num_attempts, &x, &r);
            atomic_fetch_add(&st_transfail, 1);
            requeue(q, qname, true, -1, &r, R_LOGGED_TRANSIENT_FAILURE);
            free(qname);
        } else {
            DERROR(QMOD, "id=%s %s; the message is lost from the spool", hex, content);
            qmsg_free(q);
        }
        disp_next(d);
        return;
    }
    q->m->num_attempts = q->num_attempts;
    if (services_was_delivered(&q->id)) {
        /* delivered earlier by this process; only its removal had failed */
        d->cur = NULL;
        atomic_fetch_sub(&st_in_flight, 1);
        spool_forget_delivered(q);
        qmsg_free(q);
        disp_next(d);
        return;
    }
    disp_set_phase(d, PHASE_DELIVERING_MESSAGE, NULL);
    /* the insert context of a later requeue describes this attempt only */
    q->n_reasons = 0;
    d->drv->send(d, q->m);
}

static void disp_idle_expired(evutil_socket_t fd, short what, void *arg)
{
    dispatcher *d = arg;
    if (!d->idle)
        return;
    d->idle = false;
    disp_close_soon(d);
}

static void disp_next(dispatcher *d)
{
    readyq *rq = d->rq;
    if (d->closing)
        return;
    int64_t now_ns = clock_wall_ns();
    if (!d->open && !d->opening && rq->cfg.has_max_connection_rate) {
        int64_t wait = throttle_take(&rq->conn_rate, &rq->cfg.max_connection_rate, now_ns);
        if (wait > 0) {
            disp_set_phase(d, PHASE_CONNECTION_RATE_THROTTLED, NULL);
            disp_kick(d, wait);
            return;
        }
    }
    if (d->open && rq->fifo.count && rq->cfg.has_max_message_rate) {
        int64_t wait = throttle_take(&rq->msg_rate, &rq->cfg.max_message_rate, now_ns);
        if (wait > 0) {
            disp_set_phase(d, PHASE_MESSAGE_RATE_THROTTLED, NULL);
            disp_kick(d, wait);
            return;
        }
    }
    if (!d->open) {
        if (d->opening)
            return;
        d->opening = true;
        disp_set_phase(d, PHASE_ATTEMPTING_CONNECTION, NULL);
        d->drv->open(d);
        return;
    }
    if (d->drv->usable && !d->drv->usable(d)) {
        disp_close_soon(d);
        readyq_maintain(rq);
        return;
    }
    qmsg *q = qlist_pop(&rq->fifo);
    if (!q) {
        /* keep the connection for idle_timeout: more mail is likely */
        int64_t idle = rq->cfg.idle_timeout_ns;
        if (idle <= 0) {
            disp_close_soon(d);
            return;
        }
        d->idle = true;
        disp_set_phase(d, PHASE_IDLE, NULL);
        if (!d->idle_ev)
            d->idle_ev = evtimer_new(reactor_base(reactor_current()), disp_idle_expired, d);
        struct timeval tv = {idle / NS_PER_SEC, (idle % NS_PER_SEC) / 1000};
        evtimer_add(d->idle_ev, &tv);
        return;
    }
    atomic_fetch_sub(&st_ready, 1);
    d->cur = q;
    d->loading = true;
    qmsg_load(q, true, disp_after_load, d, NULL);
}

struct bulk_one {
    dispatcher *d; /* only for the record context; copied below */
    int outcome;
    disp_response r;
    char *content;
    int reason;
    rec_ctx x;
    char *site, *pool, *source, *proto, *session;
};

static void bulk_one_free(void *ud)
{
    struct bulk_one *b = ud;
    free(b->content);
    free(b->site);
    free(b->pool);
    free(b->source);
    free(b->proto);
    free(b->session);
    free(b);
}

static void bulk_after_load(qmsg *q, int err, void *ud)
{
    struct bulk_one *b = ud;
    if (err || !q->m) {
        atomic_fetch_sub(&st_in_flight, 1);
        qmsg_free(q);
    } else {
        char *qname = queue_name_of_message(q->m);
        rec_ctx x = b->x;
        x.queue = qname;
        atomic_fetch_sub(&st_in_flight, 1);
        if (b->outcome == OUTCOME_PERMANENT) {
            log_record(LOGREC_BOUNCE, q->m, q->num_attempts, &x, &b->r);
            atomic_fetch_add(&st_failed, 1);
            spool_forget(q);
            qmsg_free(q);
        } else {
            log_record(LOGREC_TRANSIENT_FAILURE, q->m, q->num_attempts, &x, &b->r);
            atomic_fetch_add(&st_transfail, 1);
            qmsg_add_reason(q, b->reason);
            requeue(q, qname, true, -1, &b->r, R_LOGGED_TRANSIENT_FAILURE);
        }
        free(qname);
    }
    bulk_one_free(b);
}

/* Takes q out of the ready queue's hands: it gets outcome o with response
 * r (recorded against dispatcher d's context) once its meta is loaded. */
static void bulk_one_fail(dispatcher *d, qmsg *q, int o, const disp_response *r, int reason)
{
    readyq *rq = d->rq;
    struct bulk_one *b = calloc(1, sizeof(*b));
    if (!b)
        abort();
    b->outcome = o;
    b->r = *r;
    b->content = strdup(r->content ? r->content : "");
    b->r.content = b->content;
    b->r.command = NULL;
    b->reason = reason;
    b->site = strdup(rq->name);
    b->pool = strdup(rq->qcfg.egress_pool ? rq->qcfg.egress_pool : "unspecified");
    b->source = strdup(rq->source_name);
    b->proto = strdup(d->drv->delivery_protocol);
    b->session = strdup(d->session_id);
    b->x.site = b->site;
    b->x.pool = b->pool;
    b->x.source = b->source;
    b->x.proto = b->proto;
    b->x.session_id = b->session;
    qmsg_load(q, false, bulk_after_load, b, bulk_one_free);
}

void disp_bulk_fail(dispatcher *d, disp_outcome o, const disp_response *r, const char *reason)
{
    d->opening = false;
    int rs = reason ? reason_parse(reason) : R_FAILED_INSERT_READY;
    while (d->rq->fifo.count) {
        qmsg *q = qlist_pop(&d->rq->fifo);
        atomic_fetch_sub(&st_ready, 1);
        bulk_one_fail(d, q, (int)o, r, rs);
    }
    disp_close_soon(d);
}

void disp_close_after_this(dispatcher *d)
{
    d->delivered = INT32_MAX / 2;
}

void disp_opened(dispatcher *d, bool ok, const disp_response *fail)
{
    d->opening = false;
    if (ok) {
        d->rq->conn_failures = 0;
        d->open = true;
        disp_set_phase(d, PHASE_IDLE, NULL);
        disp_kick(d, 0);
        return;
    }
    /* no connection: the next message in line takes the failure; after
     * consecutive_connection_failures_before_delay in a row, every message
     * waiting for this path does (the whole ready queue is delayed) */
    readyq *rq = d->rq;
    if (++rq->conn_failures >= rq->cfg.consecutive_connection_failures_before_delay ||
        rq->fifo.count <= 1) {
        rq->conn_failures = 0;
        disp_bulk_fail(d, OUTCOME_TRANSIENT, fail, "TooManyConnectionFailures");
        return;
    }
    qmsg *q = qlist_pop(&rq->fifo);
    atomic_fetch_sub(&st_ready, 1);
    bulk_one_fail(d, q, OUTCOME_TRANSIENT, fail, R_LOGGED_TRANSIENT_FAILURE);
    disp_close_soon(d);
    readyq_maintain(rq);
}

/* ---- the dispatcher progress watchdog (seed 000) ------------------------------------ */

static int64_t watchdog_threshold_ns(const readyq *rq)
{
    if (rq->cfg.watchdog_timeout_ns > 0)
        return rq->cfg.watchdog_timeout_ns;
    switch (rq->proto) {
    case QPROTO_SMTP: {
        /* max(2 x longest per-command timeout, 60s) */
        int64_t m = rq->cfg.mail_from_timeout_ns;
        if (rq->cfg.rcpt_to_timeout_ns > m)
            m = rq->cfg.rcpt_to_timeout_ns;
        if (rq->cfg.data_timeout_ns > m)
            m = rq->cfg.data_timeout_ns;
        if (rq->cfg.data_dot_timeout_ns > m)
            m = rq->cfg.data_dot_timeout_ns;
        return 2 * m > 60 * NS_PER_SEC ? 2 * m : 60 * NS_PER_SEC;
    }
    case QPROTO_MAILDIR:
    case QPROTO_NULL:
        return 60 * NS_PER_SEC;
    default:
        return 600 * NS_PER_SEC;
    }
}

static void watchdog_requeue(dispatcher *d, qmsg *q)
{
    int64_t now = clock_mono_ns();
    char age[96], tip[96], content[700];
    duration_format(now - d->started_ns, age, sizeof(age));
    duration_format(now - d->phase_ns, tip, sizeof(tip));
    snprintf(content, sizeof(content),
             "dispatcher watchdog aborted task; phase=%s detail=\"%s\" session=%s age=%s "
             "time_in_phase=%s",
             phase_names[d->phase], d->detail, d->session_id, age, tip);
    char *qname = queue_name_of_message(q->m);
    rec_ctx x = disp_rec(d, q->m, qname);
    x.peer_name = x.peer_addr = NULL;
    x.source_address = NULL;
    disp_response r = {451, 4, 4, 1, content, NULL};
    log_record(LOGREC_DELAYED, q->m, q->num_attempts, &x, &r);
    atomic_fetch_sub(&st_in_flight, 1);
    qmsg_add_reason(q, R_DISPATCHER_DROP);
    requeue(q, qname, false, -1, &r, R_LOGGED_TRANSIENT_FAILURE);
    free(qname);
}

static void watchdog_fired(evutil_socket_t fd, short what, void *arg);

static void readyq_arm_watchdog(readyq *rq)
{
    if (!rq->dispatchers)
        return;
    int64_t thr = watchdog_threshold_ns(rq);
    int64_t now = clock_mono_ns();
    int64_t earliest = INT64_MAX;
    for (dispatcher *d = rq->dispatchers; d; d = d->next)
        if (d->progress_ns + thr < earliest)
            earliest = d->progress_ns + thr;
    int64_t remaining = earliest - now;
    if (remaining < 0)
        remaining = 0;
    /* jitter up to max(10% of the remaining time, 0.5s) */
    int64_t jmax = remaining / 10 > NS_PER_SEC / 2 ? remaining / 10 : NS_PER_SEC / 2;
    int64_t wait = remaining + (int64_t)(rand01() * (double)jmax);
    if (!rq->watchdog_ev)
        rq->watchdog_ev = evtimer_new(reactor_base(reactor_current()), watchdog_fired, rq);
    struct timeval tv = {wait / NS_PER_SEC, (wait % NS_PER_SEC) / 1000};
    evtimer_add(rq->watchdog_ev, &tv);
}

static void watchdog_fired(evutil_socket_t fd, short what, void *arg)
{
    readyq *rq = arg;
    int64_t thr = watchdog_threshold_ns(rq);
    int64_t now = clock_mono_ns();
    bool aborted_any = false;
    for (dispatcher *d = rq->dispatchers, *next; d; d = next) {
        next = d->next;
        if (d->closing || d->aborted || d->idle || now - d->progress_ns < thr)
            continue;
        atomic_fetch_add(&st_watchdog, 1);
        aborted_any = true;
        DWARN(QMOD, "ready_queue=%s session=%s dispatcher watchdog aborted task; phase=%s "
                    "detail=\"%s\"",
              rq->name, d->session_id, phase_names[d->phase], d->detail);
        if (d->drv->abort && (d->open || d->opening))
            d->drv->abort(d);
        d->open = d->opening = false;
        qmsg *q = d->cur;
        if (d->loading) {
            d->aborted = true; /* disp_after_load finishes the job */
            continue;
        }
        d->cur = NULL;
        if (q && q->m)
            watchdog_requeue(d, q);
        else if (q)
            back_to_sched(q, R_DISPATCHER_DROP, -1);
        disp_destroy(d);
    }
    if (aborted_any)
        readyq_maintain(rq);
    else
        readyq_arm_watchdog(rq);
}

static void readyq_maintain(readyq *rq)
{
    if (rq->state != CFG_READY)
        return;
    char why_unhealthy[256];
    if (readyq_suspended(rq) ||
        (services_spool() && services_suspend_delivery_when_unhealthy() &&
         !services_spool_healthy(why_unhealthy, sizeof(why_unhealthy)))) {
        /* drain back to the scheduled queues; they come back when due */
        while (rq->fifo.count) {
            atomic_fetch_sub(&st_ready, 1);
            back_to_sched(qlist_pop(&rq->fifo), R_READYQ_SUSPENDED, -1);
        }
        return;
    }
    const disp_driver *drv = drivers[rq->proto];
    if (!drv) {
        /* no delivery driver for this protocol yet: messages wait */
        return;
    }
    /* idle connections take new mail before any new one is opened */
    for (dispatcher *d = rq->dispatchers; d && rq->fifo.count; d = d->next) {
        if (!d->idle || d->closing)
            continue;
        d->idle = false;
        evtimer_del(d->idle_ev);
        disp_next(d);
    }
    long limit = rq->cfg.connection_limit > 0 ? rq->cfg.connection_limit : 1;
    long ready = rq->fifo.count;
    long ideal = (long)ceil((double)limit * (1.0 - exp(-0.023 * (double)ready)));
    if (ideal > ready)
        ideal = ready;
    if (ideal < 1 && ready > 0)
        ideal = 1;
    while (rq->active < ideal) {
        dispatcher *d = calloc(1, sizeof(*d));
        if (!d)
            abort();
        d->rq = rq;
        d->drv = drv;
        spoolid u; /* a v1 UUID without libuuid: no uuidd round trip */
        spoolid_new(&u);
        spoolid_to_uuid_str(&u, d->session_id);
        d->kick_ev = evtimer_new(reactor_base(reactor_current()), disp_kick_cb, d);
        if (!d->kick_ev)
            abort();
        d->started_ns = d->phase_ns = d->progress_ns = clock_mono_ns();
        d->phase = PHASE_STARTING;
        d->next = rq->dispatchers;
        rq->dispatchers = d;
        rq->active++;
        disp_next(d);
    }
    readyq_arm_watchdog(rq);
}

/* ---- requeue --------------------------------------------------------------------------------------- */

struct requeue_job {
    qmsg *q;
    bool increment;
    bool queue_changed;
    int64_t delay_s;
    char name[];
};

static void requeue_on_owner(void *arg)
{
    struct requeue_job *j = arg;
    qmsg *q = j->q;
    if (queues_down) {
        qmsg_free(q);
        free(j);
        return;
    }
    schedq *sq = sched_get(j->name);
    q->sq = sq;
    if (sq->state != CFG_READY) {
        /* apply the arithmetic once the config is known: simplest is to
         * treat it as due after the default retry interval */
        if (j->increment)
            q->num_attempts++;
        q->due_wall_s = now_s() + (j->delay_s >= 0 ? j->delay_s : 60);
        qlist_push(&sq->pending, q);
        free(j);
        return;
    }
    if (j->queue_changed) {
        q->num_attempts++;
        q->due_wall_s = 0;
    } else if (j->increment) {
        backoff_params bp = sched_backoff(sq);
        int64_t age = age_s(q);
        int64_t expires_age = -1;
        json_t *sched = q->m ? q->m->scheduling : NULL;
        const char *exp = sched ? json_string_value(json_object_get(sched, "expires")) : NULL;
        if (exp) {
            struct tm tm = {0};
            if (strptime(exp, "%Y-%m-%dT%H:%M:%S", &tm))
                expires_age = (int64_t)timegm(&tm) - spoolid_created_ns(&q->id) / NS_PER_SEC;
        }
        backoff_result br = backoff_on_failure(&bp, q->num_attempts, age, rand01(), expires_age);
        q->num_attempts++;
        if (br.expire) {
            char dur[64], max[64], content[300];
            duration_format(br.due_age_s * NS_PER_SEC, dur, sizeof(dur));
            duration_format(sq->cfg.max_age_s * NS_PER_SEC, max, sizeof(max));
            if (expires_age >= 0)
                snprintf(content, sizeof(content),
                         "Next delivery time would be at %s which exceeds the expiry time %s "
                         "configured via set_scheduling",
                         dur, exp);
            else
                snprintf(content, sizeof(content),
                         "Next delivery time would be %s after creation, which exceeds "
                         "max_age=%s",
                         dur, max);
            expire_message(q, sq->name, content, sq->cfg.egress_pool, sq->cfg.provider_name);
            free(j);
            sched_arm_reap(sq);
            return;
        }
        q->due_wall_s = now_s() + br.delay_s;
    } else {
        int64_t delay = j->delay_s >= 0 ? j->delay_s : (int64_t)(rand01() * 60.0);
        if (age_s(q) + delay >= sq->cfg.max_age_s) {
            char dur[64], max[64], content[300];
            duration_format((age_s(q) + delay) * NS_PER_SEC, dur, sizeof(dur));
            duration_format(sq->cfg.max_age_s * NS_PER_SEC, max, sizeof(max));
            snprintf(content, sizeof(content), "Next delivery time %s > %s", dur, max);
            expire_message(q, sq->name, content, sq->cfg.egress_pool, sq->cfg.provider_name);
            free(j);
            return;
        }
        q->due_wall_s = now_s() + delay;
    }
    free(j);
    sched_place(sq, q);
}

static void requeue_post(qmsg *q, const char *name, bool increment, bool changed, int64_t delay_s)
{
    size_t n = strlen(name);
    struct requeue_job *j = malloc(sizeof(*j) + n + 1);
    if (!j)
        abort();
    j->q = q;
    j->increment = increment;
    j->queue_changed = changed;
    j->delay_s = delay_s;
    memcpy(j->name, name, n + 1);
    reactor_post(owner_of(name), requeue_on_owner, j);
}

static void back_after_load(qmsg *q, int err, void *ud)
{
    int64_t delay_s = (int64_t)(intptr_t)ud;
    if (err || !q->m) {
        char hex[SPOOLID_HEX_LEN + 1];
        spoolid_to_hex(&q->id, hex);
        DERROR(QMOD, "id=%s cannot load the message from the spool: %s", hex, kerr_str(err));
        qmsg_free(q);
        return;
    }
    char *name = queue_name_of_message(q->m);
    requeue_post(q, name, false, false, delay_s);
    free(name);
}

static void back_to_sched(qmsg *q, int reason, int64_t delay_s)
{
    qmsg_add_reason(q, reason);
    atomic_fetch_sub(&st_in_flight, 1);
    /* the queue name lives in the meta: load it when not resident */
    qmsg_load(q, false, back_after_load, (void *)(intptr_t)delay_s, NULL);
}

struct rq_event {
    qmsg *q;
    char *orig_queue;
    bool increment;
    int64_t delay_s;
    disp_response resp;
    char *content;
};

static void after_requeue_event(klua_call *c, int status, void *ud)
{
    struct rq_event *e = ud;
    qmsg *q = e->q;
    if (status == KLUA_REJECT) {
        char *qname = queue_name_of_message(q->m);
        rec_ctx x = {.queue = qname, .site = ""};
        disp_response r = {klua_call_reject_code(c), 0, 0, 0, klua_call_error(c), NULL};
        log_record(LOGREC_BOUNCE, q->m, q->num_attempts, &x, &r);
        atomic_fetch_add(&st_failed, 1);
        spool_forget(q);
        qmsg_free(q);
        free(qname);
    } else {
        if (status == KLUA_ERROR)
            DERROR(QMOD, "requeue_message handler failed; keeping the original queue: %s",
                   klua_call_error(c));
        char *now_queue = status == KLUA_OK ? queue_name_of_message(q->m) : NULL;
        if (now_queue && strcmp(now_queue, e->orig_queue) != 0) {
            if (strcmp(now_queue, "null") == 0) {
                spool_forget(q);
                qmsg_free(q);
            } else {
                qmsg_save_if_dirty(q);
                requeue_post(q, now_queue, false, true, 0);
            }
        } else {
            if (status == KLUA_ERROR && q->m)
                json_object_set_new(q->m->meta, "queue", json_string(e->orig_queue));
            requeue_post(q, e->orig_queue, e->increment, false, e->delay_s);
        }
        free(now_queue);
    }
    free(e->orig_queue);
    free(e->content);
    free(e);
}

static void requeue(qmsg *q, const char *qname, bool increment, int64_t delay_s,
                    const disp_response *resp, int reason)
{
    qmsg_add_reason(q, reason);
    klua *vm = klua_current();
    if (!q->m || !vm || !klua_has_handler(vm, "requeue_message")) {
        requeue_post(q, qname, increment, false, delay_s);
        return;
    }
    struct rq_event *e = calloc(1, sizeof(*e));
    if (!e)
        abort();
    e->q = q;
    e->orig_queue = strdup(qname);
    e->increment = increment;
    e->delay_s = delay_s;
    klua_call *c;
    lua_State *co = klua_call_begin(vm, "requeue_message", &c);
    klua_push_message(co, q->m);
    /* one-line rendition of the response */
    char line[1024];
    if (resp->enh_class)
        snprintf(line, sizeof(line), "%d %d.%d.%d %s", resp->code, resp->enh_class,
                 resp->enh_subject, resp->enh_detail, resp->content ? resp->content : "");
    else
        snprintf(line, sizeof(line), "%d %s", resp->code, resp->content ? resp->content : "");
    lua_pushstring(co, line);
    lua_createtable(co, q->n_reasons, 0);
    for (int i = 0; i < q->n_reasons; i++) {
        lua_pushstring(co, reason_names[q->reasons[i]]);
        lua_rawseti(co, -2, i + 1);
    }
    lua_pushboolean(co, increment);
    if (delay_s >= 0)
        lua_pushinteger(co, delay_s);
    else
        lua_pushnil(co);
    q->m->num_attempts = q->num_attempts; /* before the increment, as documented */
    klua_call_run(c, 5, after_requeue_event, e);
}

/* ---- init ------------------------------------------------------------------------------------------ */

static void qlist_free_all(qlist *l, bool timers)
{
    while (l->count) {
        qmsg *q = qlist_pop(l);
        if (timers && wheel_entry_armed(&q->timer))
            reactor_timer_cancel(reactor_current(), &q->timer);
        qmsg_free(q);
    }
}

void queue_reactor_shutdown(void)
{
    reactor *r = reactor_current();
    qtables *t = reactor_get_slot(r, REACTOR_SLOT_QUEUES);
    if (!t)
        return;
    for (int i = 0; i < TABLE_BUCKETS; i++) {
        while (t->sched[i]) {
            schedq *sq = t->sched[i];
            qlist_free_all(&sq->waiting, true);
            qlist_free_all(&sq->pending, false);
            sched_free(sq);
        }
        while (t->ready[i]) {
            readyq *rq = t->ready[i];
            while (rq->dispatchers) {
                dispatcher *d = rq->dispatchers;
                /* also a dispatcher whose open failed but still holds its
                 * driver state (the resolver gave up on shutdown) */
                if (d->drv->abort && (d->open || d->opening || d->drv_state))
                    d->drv->abort(d);
                if (d->cur && !d->loading)
                    qmsg_free(d->cur);
                rq->dispatchers = d->next;
                free(d->peer_name);
                free(d->peer_addr);
                free(d->tls_cipher);
                free(d->tls_version);
                free(d->source_address);
                free(d->tls_subject);
                free(d->requeue_to);
                if (d->idle_ev)
                    event_free(d->idle_ev);
                event_free(d->kick_ev);
                free(d);
            }
            rq->active = 0;
            qlist_free_all(&rq->fifo, false);
            qlist_free_all(&rq->pending, false);
            readyq_free(rq);
        }
    }
    free(t);
    reactor_set_slot(r, REACTOR_SLOT_QUEUES, NULL);
    queues_down = true;
}

void queue_init(void)
{
    if (!qmsg_slab && !(qmsg_slab = slab_new(sizeof(qmsg))))
        abort();
    queue_config_lua_register();
    smtpsrv_set_insert_hook(insert_hook);
    static const smtpsrv_enum_hooks eh = {enum_add, enum_flush};
    smtpsrv_set_enum_hooks(&eh);
}

void queue_set_protocol_ops(const queue_protocol_ops *ops)
{
    (void)ops;
}

const char *dispatcher_phase_name(int p);
const char *dispatcher_phase_name(int p)
{
    return p >= 0 && p <= PHASE_CLOSING ? phase_names[p] : "Unknown";
}

/* ==== administrative actions (src/queue/admin.h) ==================================== */

#include "queue/admin.h"

#include <pthread.h>

typedef enum admin_kind { ADM_BOUNCE, ADM_SUSPEND, ADM_SUSPEND_READYQ } admin_kind;

typedef struct admin_entry {
    struct admin_entry *next;
    admin_kind kind;
    char id[37];
    char *reason;
    char *domain, *campaign, *tenant, *routing_domain;
    char *name; /* ready queue name for ADM_SUSPEND_READYQ */
    json_t *queue_names;
    int64_t expires_wall_ns;
    int64_t duration_ns;
    bool suppress_logging;
    atomic_ullong bounced;
} admin_entry;

static pthread_mutex_t admin_lock = PTHREAD_MUTEX_INITIALIZER;
static admin_entry *admin_entries;
static atomic_uint admin_generation;
/* Whether admin_entries is non-empty, for admin_find's lock-free fast path
 * (every message that comes due asks): the list itself is only read and
 * written under admin_lock. Set under the lock after each change. */
static atomic_bool admin_any;

static void admin_entry_free(admin_entry *e)
{
    free(e->reason);
    free(e->domain);
    free(e->campaign);
    free(e->tenant);
    free(e->routing_domain);
    free(e->name);
    json_decref(e->queue_names);
    free(e);
}

static bool eq_ci_opt(const char *want, const char *have)
{
    return !want || (have && strcasecmp(want, have) == 0);
}

static bool admin_matches(const admin_entry *e, const char *qname, const queue_name_parts *p)
{
    if (e->queue_names && json_array_size(e->queue_names) > 0) {
        size_t i;
        json_t *v;
        json_array_foreach(e->queue_names, i, v) if (json_is_string(v) &&
                                                     strcmp(json_string_value(v), qname) == 0) return true;
        return false;
    }
    return eq_ci_opt(e->domain, p->domain) && eq_ci_opt(e->campaign, p->campaign) &&
           eq_ci_opt(e->tenant, p->tenant) && eq_ci_opt(e->routing_domain, p->routing_domain);
}

static void admin_expire_locked(void)
{
    int64_t now = clock_wall_ns();
    for (admin_entry **pp = &admin_entries; *pp;) {
        if ((*pp)->expires_wall_ns && (*pp)->expires_wall_ns <= now) {
            admin_entry *dead = *pp;
            *pp = dead->next;
            admin_entry_free(dead);
        } else {
            pp = &(*pp)->next;
        }
    }
    atomic_store_explicit(&admin_any, admin_entries != NULL, memory_order_release);
}

/* Finds the active entry of kind that matches; copies the reason and id.
 * Returns false when none. */
static bool admin_find(admin_kind kind, const char *qname, const queue_name_parts *p,
                       char *reason, size_t rlen, char id[37], bool *suppress)
{
    if (!atomic_load_explicit(&admin_any, memory_order_acquire))
        return false;
    bool found = false;
    pthread_mutex_lock(&admin_lock);
    admin_expire_locked();
    for (admin_entry *e = admin_entries; e; e = e->next) {
        if (e->kind != kind)
            continue;
        bool m = kind == ADM_SUSPEND_READYQ ? strcmp(e->name, qname) == 0
                                            : admin_matches(e, qname, p);
        if (m) {
            snprintf(reason, rlen, "%s", e->reason);
            if (id)
                memcpy(id, e->id, 37);
            if (suppress)
                *suppress = e->suppress_logging;
            if (kind == ADM_BOUNCE)
                atomic_fetch_add(&e->bounced, 1);
            found = true;
            break;
        }
    }
    pthread_mutex_unlock(&admin_lock);
    return found;
}

static char *jstrdup(const json_t *req, const char *k)
{
    const char *s = json_string_value(json_object_get(req, k));
    return s ? strdup(s) : NULL;
}

static int admin_parse(const json_t *req, admin_kind kind, admin_entry **out, char *err,
                       size_t errlen)
{
    if (!json_is_object(req)) {
        snprintf(err, errlen, "expected a JSON object");
        return KERR_PARSE;
    }
    static const char *const allowed_bounce[] = {
        "reason", "domain", "campaign", "tenant", "routing_domain", "queue_names", "duration",
        "expires", "suppress_logging", NULL};
    static const char *const allowed_suspend[] = {"reason", "domain", "campaign", "tenant",
                                                  "queue_names", "duration", "expires", NULL};
    static const char *const allowed_rq[] = {"name", "reason", "duration", "expires", NULL};
    const char *const *allowed = kind == ADM_BOUNCE    ? allowed_bounce
                                 : kind == ADM_SUSPEND ? allowed_suspend
                                                       : allowed_rq;
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)req, k, v) {
        bool ok = false;
        for (int i = 0; allowed[i]; i++)
            ok |= strcmp(allowed[i], k) == 0;
        if (!ok) {
            snprintf(err, errlen, "unknown field `%s`", k);
            return KERR_PARSE;
        }
        if (strcmp(k, "queue_names") == 0 ? !json_is_array(v)
            : strcmp(k, "suppress_logging") == 0 ? !json_is_boolean(v)
                                                 : !json_is_string(v)) {
            snprintf(err, errlen, "invalid type for field `%s`", k);
            return KERR_PARSE;
        }
    }
    if (!json_is_string(json_object_get(req, "reason"))) {
        snprintf(err, errlen, "missing field `reason`");
        return KERR_PARSE;
    }
    if (kind == ADM_SUSPEND_READYQ && !json_is_string(json_object_get(req, "name"))) {
        snprintf(err, errlen, "missing field `name`");
        return KERR_PARSE;
    }
    admin_entry *e = calloc(1, sizeof(*e));
    if (!e)
        abort();
    e->kind = kind;
    uuid_t u;
    uuid_generate_random(u);
    uuid_unparse_lower(u, e->id);
    e->reason = jstrdup(req, "reason");
    e->domain = jstrdup(req, "domain");
    e->campaign = jstrdup(req, "campaign");
    e->tenant = jstrdup(req, "tenant");
    e->routing_domain = jstrdup(req, "routing_domain");
    e->name = jstrdup(req, "name");
    json_t *qn = json_object_get(req, "queue_names");
    e->queue_names = qn ? json_incref(qn) : NULL;
    e->suppress_logging = json_is_true(json_object_get(req, "suppress_logging"));
    /* default duration: 5 minutes, as KumoMTA */
    int64_t dur = 300 * NS_PER_SEC;
    const char *ds = json_string_value(json_object_get(req, "duration"));
    if (ds && duration_parse(ds, &dur) != 0) {
        snprintf(err, errlen, "invalid duration `%s`", ds);
        admin_entry_free(e);
        return KERR_PARSE;
    }
    e->duration_ns = dur;
    e->expires_wall_ns = clock_wall_ns() + dur;
    const char *ex = json_string_value(json_object_get(req, "expires"));
    if (ex) {
        struct tm tm = {0};
        if (!strptime(ex, "%Y-%m-%dT%H:%M:%S", &tm)) {
            snprintf(err, errlen, "invalid expires `%s` (RFC 3339 expected)", ex);
            admin_entry_free(e);
            return KERR_PARSE;
        }
        e->expires_wall_ns = (int64_t)timegm(&tm) * NS_PER_SEC;
    }
    *out = e;
    return 0;
}

static void admin_add(admin_entry *e)
{
    pthread_mutex_lock(&admin_lock);
    e->next = admin_entries;
    admin_entries = e;
    atomic_store_explicit(&admin_any, true, memory_order_release);
    pthread_mutex_unlock(&admin_lock);
    atomic_fetch_add(&admin_generation, 1);
}

static int admin_cancel(admin_kind kind, const char *id)
{
    int rc = KERR_NOTFOUND;
    pthread_mutex_lock(&admin_lock);
    for (admin_entry **pp = &admin_entries; *pp; pp = &(*pp)->next) {
        if ((*pp)->kind == kind && strcmp((*pp)->id, id) == 0) {
            admin_entry *dead = *pp;
            *pp = dead->next;
            admin_entry_free(dead);
            rc = 0;
            break;
        }
    }
    atomic_store_explicit(&admin_any, admin_entries != NULL, memory_order_release);
    pthread_mutex_unlock(&admin_lock);
    atomic_fetch_add(&admin_generation, 1);
    return rc;
}

static json_t *admin_list(admin_kind kind)
{
    json_t *a = json_array();
    pthread_mutex_lock(&admin_lock);
    admin_expire_locked();
    int64_t now = clock_wall_ns();
    for (admin_entry *e = admin_entries; e; e = e->next) {
        if (e->kind != kind)
            continue;
        json_t *o = json_object();
        json_object_set_new(o, "id", json_string(e->id));
        json_object_set_new(o, "reason", json_string(e->reason));
        if (kind == ADM_SUSPEND_READYQ) {
            json_object_set_new(o, "name", json_string(e->name));
        } else {
            json_object_set_new(o, "domain", e->domain ? json_string(e->domain) : json_null());
            json_object_set_new(o, "campaign",
                                e->campaign ? json_string(e->campaign) : json_null());
            json_object_set_new(o, "tenant", e->tenant ? json_string(e->tenant) : json_null());
            if (kind == ADM_BOUNCE)
                json_object_set_new(o, "routing_domain", e->routing_domain
                                                             ? json_string(e->routing_domain)
                                                             : json_null());
            json_object_set_new(o, "queue_names",
                                e->queue_names ? json_incref(e->queue_names) : json_array());
        }
        char dur[64];
        duration_format(e->expires_wall_ns - now, dur, sizeof(dur));
        json_object_set_new(o, "duration", json_string(dur));
        if (kind == ADM_BOUNCE) {
            json_t *b = json_object();
            json_object_set_new(b, "total", json_integer((json_int_t)atomic_load(&e->bounced)));
            json_object_set_new(o, "bounced", b);
            json_object_set_new(o, "total_bounced",
                                json_integer((json_int_t)atomic_load(&e->bounced)));
        }
        json_array_append_new(a, o);
    }
    pthread_mutex_unlock(&admin_lock);
    return a;
}

/* ---- AdminBounce on a message --------------------------------------------------- */

struct abounce {
    char *queue;
    char *reason;
    bool suppress;
};

static void abounce_free(void *ud)
{
    struct abounce *b = ud;
    free(b->queue);
    free(b->reason);
    free(b);
}

static void abounce_after_load(qmsg *q, int err, void *ud)
{
    struct abounce *b = ud;
    if (!err && q->m && !b->suppress) {
        char content[600];
        snprintf(content, sizeof(content), "Administrator bounced with reason: %s", b->reason);
        rec_ctx x = {.queue = b->queue, .site = "localhost"};
        disp_response r = {551, 5, 7, 1, content, NULL};
        log_record(LOGREC_ADMIN_BOUNCE, q->m, q->num_attempts, &x, &r);
    }
    atomic_fetch_add(&st_failed, 0);
    spool_forget(q);
    qmsg_free(q);
    abounce_free(b);
}

static void admin_bounce_msg(const char *queue, qmsg *q, const char *reason, bool suppress)
{
    struct abounce *b = calloc(1, sizeof(*b));
    if (!b)
        abort();
    b->queue = strdup(queue);
    b->reason = strdup(reason);
    b->suppress = suppress;
    qmsg_load(q, false, abounce_after_load, b, abounce_free);
}

/* Checked when a message is placed and when it is made ready: returns true
 * when an admin action consumed or delayed it. */
static bool admin_intercept(schedq *sq, qmsg *q)
{
    char reason[512];
    bool suppress = false;
    if (admin_find(ADM_BOUNCE, sq->name, &sq->parts, reason, sizeof(reason), NULL, &suppress)) {
        admin_bounce_msg(sq->name, q, reason, suppress);
        return true;
    }
    return false;
}

/* ---- broadcast helpers ---------------------------------------------------------------- */

typedef struct bcast {
    atomic_int remaining;
    reactor *origin;
    admin_cb cb;
    void *ud;
    json_t *req;
    json_t *acc; /* accumulated result */
    pthread_mutex_t lock;
    admin_entry *entry;
    long long count;
    char *id;
    bool want_body;
    long limit;
    void (*finish)(struct bcast *b);
} bcast;

static void bcast_done_on_origin(void *arg)
{
    bcast *b = arg;
    b->finish(b);
    json_decref(b->req);
    free(b->id);
    pthread_mutex_destroy(&b->lock);
    free(b);
}

static void bcast_part_done(bcast *b)
{
    if (atomic_fetch_sub(&b->remaining, 1) == 1)
        reactor_post(b->origin, bcast_done_on_origin, b);
}

static bcast *bcast_new(admin_cb cb, void *ud, const json_t *req, void (*finish)(bcast *))
{
    bcast *b = calloc(1, sizeof(*b));
    if (!b)
        abort();
    b->origin = reactor_current();
    b->cb = cb;
    b->ud = ud;
    b->req = req ? json_deep_copy(req) : NULL;
    b->finish = finish;
    pthread_mutex_init(&b->lock, NULL);
    atomic_store(&b->remaining, reactor_count());
    return b;
}

static void bcast_run(bcast *b, reactor_fn fn)
{
    for (int i = 0; i < reactor_count(); i++)
        reactor_post(reactor_get(i), fn, b);
}

/* every schedq of the calling reactor */
#define FOREACH_SCHEDQ(t, sq)                                                                      \
    for (int bucket_ = 0; bucket_ < TABLE_BUCKETS; bucket_++)                                      \
        for (schedq *sq = (t)->sched[bucket_], *nx_ = sq ? sq->hnext : NULL; sq;                   \
             sq = nx_, nx_ = sq ? sq->hnext : NULL)

/* ---- bounce ------------------------------------------------------------------------------ */

static void bounce_on_reactor(void *arg)
{
    bcast *b = arg;
    qtables *t = tables();
    long long n = 0;
    FOREACH_SCHEDQ(t, sq)
    {
        if (!admin_matches(b->entry, sq->name, &sq->parts))
            continue;
        qlist *lists[2] = {&sq->waiting, &sq->pending};
        for (int li = 0; li < 2; li++) {
            while (lists[li]->count) {
                qmsg *q = qlist_pop(lists[li]);
                if (li == 0) {
                    reactor_timer_cancel(reactor_current(), &q->timer);
                    atomic_fetch_sub(&st_scheduled, 1);
                }
                atomic_fetch_add(&b->entry->bounced, 1);
                admin_bounce_msg(sq->name, q, b->entry->reason, b->entry->suppress_logging);
                n++;
            }
        }
        sched_arm_reap(sq);
    }
    pthread_mutex_lock(&b->lock);
    b->count += n;
    pthread_mutex_unlock(&b->lock);
    bcast_part_done(b);
}

static void bounce_finish(bcast *b)
{
    json_t *res = json_object();
    json_object_set_new(res, "id", json_string(b->entry->id));
    json_t *by = json_object();
    json_object_set_new(res, "bounced", by);
    json_object_set_new(res, "total_bounced", json_integer(b->count));
    b->cb(b->ud, 200, res, NULL);
}

void queue_admin_bounce(const json_t *req, admin_cb cb, void *ud)
{
    char err[300];
    admin_entry *e;
    if (admin_parse(req, ADM_BOUNCE, &e, err, sizeof(err)) != 0) {
        cb(ud, 400, NULL, err);
        return;
    }
    admin_add(e);
    bcast *b = bcast_new(cb, ud, req, bounce_finish);
    b->entry = e;
    bcast_run(b, bounce_on_reactor);
}

json_t *queue_admin_bounce_list(void)
{
    return admin_list(ADM_BOUNCE);
}

int queue_admin_bounce_cancel(const char *id)
{
    return admin_cancel(ADM_BOUNCE, id);
}

/* ---- suspensions ------------------------------------------------------------------------- */

/* A suspension of either kind takes effect as it is added: the queues
 * consult the entries (admin_suspended, readyq_suspended). */
static int admin_create(admin_kind kind, const json_t *req, json_t **result, char *err,
                        size_t errlen)
{
    admin_entry *e;
    int rc = admin_parse(req, kind, &e, err, errlen);
    if (rc)
        return rc;
    admin_add(e);
    *result = json_pack("{s:s}", "id", e->id);
    return 0;
}

int queue_admin_suspend(const json_t *req, json_t **result, char *err, size_t errlen)
{
    return admin_create(ADM_SUSPEND, req, result, err, errlen);
}

json_t *queue_admin_suspend_list(void)
{
    return admin_list(ADM_SUSPEND);
}

int queue_admin_suspend_cancel(const char *id)
{
    return admin_cancel(ADM_SUSPEND, id);
}

int queue_admin_suspend_readyq(const json_t *req, json_t **result, char *err, size_t errlen)
{
    return admin_create(ADM_SUSPEND_READYQ, req, result, err, errlen);
}

json_t *queue_admin_suspend_readyq_list(void)
{
    return admin_list(ADM_SUSPEND_READYQ);
}

int queue_admin_suspend_readyq_cancel(const char *id)
{
    return admin_cancel(ADM_SUSPEND_READYQ, id);
}

/* Scheduled-queue suspension: a TransientFailure and a retry with an
 * attempt, as KumoMTA does. Returns true when it consumed q. */
static bool admin_suspended(schedq *sq, qmsg *q);

struct susp_job {
    char *queue;
    char *reason;
};

static void susp_job_free(void *ud)
{
    struct susp_job *s = ud;
    free(s->queue);
    free(s->reason);
    free(s);
}

static void susp_after_load(qmsg *q, int err, void *ud)
{
    struct susp_job *s = ud;
    if (err || !q->m) {
        qmsg_free(q);
    } else {
        char content[600];
        snprintf(content, sizeof(content), "KumoMTA internal: scheduled queue is suspended: %s",
                 s->reason);
        rec_ctx x = {.queue = s->queue, .site = s->queue};
        disp_response r = {451, 4, 4, 4, content, NULL};
        log_record(LOGREC_TRANSIENT_FAILURE, q->m, q->num_attempts, &x, &r);
        atomic_fetch_add(&st_transfail, 1);
        qmsg_add_reason(q, R_LOGGED_TRANSIENT_FAILURE);
        requeue_post(q, s->queue, true, false, -1);
    }
    susp_job_free(s);
}

static bool admin_suspended(schedq *sq, qmsg *q)
{
    char reason[512];
    if (!admin_find(ADM_SUSPEND, sq->name, &sq->parts, reason, sizeof(reason), NULL, NULL))
        return false;
    struct susp_job *s = calloc(1, sizeof(*s));
    if (!s)
        abort();
    s->queue = strdup(sq->name);
    s->reason = strdup(reason);
    qmsg_load(q, false, susp_after_load, s, susp_job_free);
    return true;
}

static bool readyq_suspended(const readyq *rq)
{
    char reason[512];
    return admin_find(ADM_SUSPEND_READYQ, rq->name, NULL, reason, sizeof(reason), NULL, NULL);
}

/* ---- rebind ------------------------------------------------------------------------------- */

struct rebind_one {
    bcast *b;
    char *from;
};

static void rebind_after_event(klua_call *c, int status, void *ud);

static void rebind_apply_done(qmsg *q, struct rebind_one *r)
{
    bcast *b = r->b;
    char *newq = queue_name_of_message(q->m);
    bool changed = strcmp(newq, r->from) != 0;
    bool flush = json_is_true(json_object_get(b->req, "always_flush"));
    if (changed && !json_is_true(json_object_get(b->req, "suppress_logging"))) {
        char content[700];
        snprintf(content, sizeof(content), "Rebound from %s to %s: %s", r->from, newq,
                 json_string_value(json_object_get(b->req, "reason")));
        rec_ctx x = {.queue = newq, .site = ""};
        disp_response resp = {250, 0, 0, 0, content, NULL};
        log_record(LOGREC_ADMIN_REBIND, q->m, q->num_attempts, &x, &resp);
    }
    qmsg_save_if_dirty(q);
    qmsg_add_reason(q, R_ADMIN_REBIND);
    if (changed || flush) {
        q->due_wall_s = 0;
        requeue_post(q, newq, false, false, 0);
    } else {
        requeue_post(q, newq, false, false, -1);
    }
    free(newq);
    free(r->from);
    free(r);
    bcast_part_done(b);
}

static void rebind_after_event(klua_call *c, int status, void *ud)
{
    qmsg *q = ud;
    struct rebind_one *r = (struct rebind_one *)q->next; /* stashed while out of any list */
    q->next = NULL;
    if (status != KLUA_OK)
        DERROR(QMOD, "rebind_message handler failed: %s", klua_call_error(c));
    rebind_apply_done(q, r);
}

static void rebind_after_load(qmsg *q, int err, void *ud)
{
    struct rebind_one *r = ud;
    if (err || !q->m) {
        qmsg_free(q);
        free(r->from);
        bcast_part_done(r->b);
        free(r);
        return;
    }
    json_t *data = json_object_get(r->b->req, "data");
    if (json_is_true(json_object_get(r->b->req, "trigger_rebind_event")) &&
        klua_has_handler(klua_current(), "rebind_message")) {
        klua_call *c;
        lua_State *co = klua_call_begin(klua_current(), "rebind_message", &c);
        klua_push_message(co, q->m);
        klua_push_json(co, data);
        q->next = (qmsg *)(void *)r;
        klua_call_run(c, 2, rebind_after_event, q);
        return;
    }
    const char *k;
    json_t *v;
    json_object_foreach(data, k, v) {
        json_object_set(q->m->meta, k, v);
        q->m->meta_dirty = true;
    }
    rebind_apply_done(q, r);
}

static void rebind_on_reactor(void *arg)
{
    bcast *b = arg;
    admin_entry *e = b->entry;
    qtables *t = tables();
    /* collect first: rebinding may re-insert into queues of this reactor */
    qmsg *list = NULL;
    FOREACH_SCHEDQ(t, sq)
    {
        if (!admin_matches(e, sq->name, &sq->parts))
            continue;
        qlist *lists[2] = {&sq->waiting, &sq->pending};
        for (int li = 0; li < 2; li++) {
            while (lists[li]->count) {
                qmsg *q = qlist_pop(lists[li]);
                if (li == 0) {
                    reactor_timer_cancel(reactor_current(), &q->timer);
                    atomic_fetch_sub(&st_scheduled, 1);
                }
                q->prev = (qmsg *)(void *)strdup(sq->name);
                q->next = list;
                list = q;
            }
        }
        sched_arm_reap(sq);
    }
    while (list) {
        qmsg *q = list;
        list = q->next;
        q->next = NULL;
        struct rebind_one *r = calloc(1, sizeof(*r));
        if (!r)
            abort();
        r->b = b;
        r->from = (char *)(void *)q->prev;
        q->prev = NULL;
        atomic_fetch_add(&b->remaining, 1);
        qmsg_load(q, false, rebind_after_load, r, NULL);
    }
    bcast_part_done(b);
}

static void rebind_finish(bcast *b)
{
    admin_entry_free(b->entry);
    b->cb(b->ud, 200, json_object(), NULL);
}

void queue_admin_rebind(const json_t *req, admin_cb cb, void *ud)
{
    if (!json_is_object(req) || !json_is_string(json_object_get(req, "reason")) ||
        !json_is_object(json_object_get(req, "data"))) {
        cb(ud, 400, NULL, "rebind needs `reason` (string) and `data` (object)");
        return;
    }
    admin_entry *e = calloc(1, sizeof(*e));
    if (!e)
        abort();
    e->kind = ADM_BOUNCE; /* only used for matching */
    e->reason = jstrdup(req, "reason");
    e->domain = jstrdup(req, "domain");
    e->campaign = jstrdup(req, "campaign");
    e->tenant = jstrdup(req, "tenant");
    e->routing_domain = jstrdup(req, "routing_domain");
    json_t *qn = json_object_get(req, "queue_names");
    e->queue_names = json_is_array(qn) ? json_incref(qn) : NULL;
    bcast *b = bcast_new(cb, ud, req, rebind_finish);
    b->entry = e;
    bcast_run(b, rebind_on_reactor);
}

/* ---- inspection --------------------------------------------------------------------------- */

static json_t *qmsg_summary(const qmsg *q)
{
    char hex[SPOOLID_HEX_LEN + 1];
    spoolid_to_hex(&q->id, hex);
    json_t *o = json_object();
    json_object_set_new(o, "id", json_string(hex));
    json_object_set_new(o, "num_attempts", json_integer(q->num_attempts));
    if (q->due_wall_s > 0) {
        time_t due = (time_t)q->due_wall_s;
        struct tm tm;
        gmtime_r(&due, &tm);
        char when[64];
        strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
        json_object_set_new(o, "due", json_string(when));
    } else {
        json_object_set_new(o, "due", json_null());
    }
    return o;
}

struct inspect_one {
    bcast *b;
    json_t *summary;
};

static void inspect_after_load(qmsg *q, int err, void *ud)
{
    struct inspect_one *x = ud;
    bcast *b = x->b;
    json_t *msg = x->summary;
    if (!err && q->m) {
        message *m = q->m;
        json_object_set_new(msg, "sender", json_string(m->sender));
        if (m->n_rcpts == 1) {
            json_object_set_new(msg, "recipient", json_string(m->rcpts[0]));
        } else {
            json_t *a = json_array();
            for (size_t i = 0; i < m->n_rcpts; i++)
                json_array_append_new(a, json_string(m->rcpts[i]));
            json_object_set_new(msg, "recipient", a);
        }
        json_object_set(msg, "meta", m->meta);
        json_object_set_new(msg, "scheduling",
                            m->scheduling ? json_incref(m->scheduling) : json_null());
        if (b->want_body && m->data)
            json_object_set_new(msg, "data", json_stringn(m->data, m->data_len));
        /* a waiting message goes back to its lean form */
        if (q->sq && wheel_entry_armed(&q->timer))
            qmsg_shrink(q);
    }
    pthread_mutex_lock(&b->lock);
    if (!b->acc)
        b->acc = json_object();
    json_t *id = json_object_get(msg, "id");
    json_object_set(b->acc, "id", id);
    json_object_set_new(b->acc, "message", msg);
    pthread_mutex_unlock(&b->lock);
    free(x);
    bcast_part_done(b);
}

static void inspect_msg_on_reactor(void *arg)
{
    bcast *b = arg;
    qtables *t = tables();
    spoolid want;
    spoolid_from_hex(b->id, &want);
    FOREACH_SCHEDQ(t, sq)
    {
        qlist *lists[2] = {&sq->waiting, &sq->pending};
        for (int li = 0; li < 2; li++) {
            for (qmsg *q = lists[li]->head.next; q != &lists[li]->head; q = q->next) {
                if (!spoolid_eq(&q->id, &want))
                    continue;
                struct inspect_one *x = calloc(1, sizeof(*x));
                if (!x)
                    abort();
                x->b = b;
                x->summary = qmsg_summary(q);
                json_object_set_new(x->summary, "queue", json_string(sq->name));
                /* load in place: the qmsg stays in its list */
                qmsg_load(q, b->want_body, inspect_after_load, x, NULL);
                return;
            }
        }
    }
    bcast_part_done(b);
}

static void inspect_msg_finish(bcast *b)
{
    if (!b->acc) {
        b->cb(b->ud, 404, NULL, "message not found in any scheduled queue");
        return;
    }
    json_t *msg = json_object_get(b->acc, "message");
    json_object_del(msg, "id");
    json_object_del(msg, "queue");
    b->cb(b->ud, 200, b->acc, NULL);
}

void queue_admin_inspect_message(const char *id, bool want_body, admin_cb cb, void *ud)
{
    spoolid sid;
    if (!id || spoolid_from_hex(id, &sid) != 0) {
        cb(ud, 400, NULL, "id must be a 32-digit spool id");
        return;
    }
    bcast *b = bcast_new(cb, ud, NULL, inspect_msg_finish);
    b->id = strdup(id);
    b->want_body = want_body;
    bcast_run(b, inspect_msg_on_reactor);
}

static void inspect_sq_on_owner(void *arg)
{
    bcast *b = arg;
    atomic_store(&b->remaining, 1);
    schedq *sq = sched_find(b->id);
    json_t *res = json_object();
    json_object_set_new(res, "queue_name", json_string(b->id));
    json_t *msgs = json_array();
    long n = 0;
    if (sq) {
        for (qmsg *q = sq->waiting.head.next; q != &sq->waiting.head && (b->limit <= 0 || n < b->limit);
             q = q->next, n++)
            json_array_append_new(msgs, qmsg_summary(q));
        json_t *cfg = json_object();
        json_object_set_new(cfg, "retry_interval", json_integer(sq->cfg.retry_interval_s));
        json_object_set_new(cfg, "max_retry_interval",
                            sq->cfg.max_retry_interval_s
                                ? json_integer(sq->cfg.max_retry_interval_s)
                                : json_null());
        json_object_set_new(cfg, "max_age", json_integer(sq->cfg.max_age_s));
        json_object_set_new(cfg, "egress_pool",
                            json_string(sq->cfg.egress_pool ? sq->cfg.egress_pool : "unspecified"));
        json_object_set_new(res, "queue_config", cfg);
        json_object_set_new(res, "num_scheduled", json_integer(sq->waiting.count));
    }
    json_object_set_new(res, "messages", msgs);
    b->acc = res;
    bcast_part_done(b);
}

static void inspect_sq_finish(bcast *b)
{
    if (!json_object_get(b->acc, "queue_config")) {
        json_decref(b->acc);
        b->cb(b->ud, 404, NULL, "no such scheduled queue");
        return;
    }
    b->cb(b->ud, 200, b->acc, NULL);
}

void queue_admin_inspect_sched_q(const char *queue_name, bool want_body, long limit, admin_cb cb,
                                 void *ud)
{
    if (!queue_name || !*queue_name) {
        cb(ud, 400, NULL, "queue_name is required");
        return;
    }
    bcast *b = bcast_new(cb, ud, NULL, inspect_sq_finish);
    b->id = strdup(queue_name);
    b->want_body = want_body;
    b->limit = limit;
    reactor_post(owner_of(queue_name), inspect_sq_on_owner, b);
}

static json_t *readyq_state(readyq *rq)
{
    json_t *o = json_object();
    json_object_set_new(o, "name", json_string(rq->name));
    json_object_set_new(o, "ready_count", json_integer(rq->fifo.count));
    json_object_set_new(o, "connection_count", json_integer(rq->active));
    json_object_set_new(o, "connection_limit", json_integer(rq->cfg.connection_limit));
    json_object_set_new(o, "max_ready", json_integer(rq->cfg.max_ready));
    json_object_set_new(o, "suspended", json_boolean(readyq_suspended(rq)));
    return o;
}

static void inspect_rq_on_owner(void *arg)
{
    bcast *b = arg;
    atomic_store(&b->remaining, 1);
    readyq *rq = readyq_find(b->id);
    b->acc = rq ? readyq_state(rq) : NULL;
    if (rq) {
        json_t *msgs = json_array();
        for (qmsg *q = rq->fifo.head.next; q != &rq->fifo.head; q = q->next)
            json_array_append_new(msgs, qmsg_summary(q));
        json_object_set_new(b->acc, "messages", msgs);
    }
    bcast_part_done(b);
}

static void inspect_rq_finish(bcast *b)
{
    if (!b->acc) {
        b->cb(b->ud, 404, NULL, "no such ready queue");
        return;
    }
    b->cb(b->ud, 200, b->acc, NULL);
}

void queue_admin_inspect_ready_q(const char *queue_name, admin_cb cb, void *ud)
{
    if (!queue_name || !*queue_name) {
        cb(ud, 400, NULL, "queue_name is required");
        return;
    }
    bcast *b = bcast_new(cb, ud, NULL, inspect_rq_finish);
    b->id = strdup(queue_name);
    reactor_post(owner_of(queue_name), inspect_rq_on_owner, b);
}

static void summary_on_reactor(void *arg)
{
    bcast *b = arg;
    qtables *t = tables();
    json_t *sched = json_array(), *ready = json_array();
    FOREACH_SCHEDQ(t, sq)
    {
        json_array_append_new(sched, json_pack("{s:s,s:I}", "name", sq->name, "count",
                                               (json_int_t)(sq->waiting.count + sq->pending.count)));
    }
    for (int i = 0; i < TABLE_BUCKETS; i++)
        for (readyq *rq = t->ready[i]; rq; rq = rq->hnext)
            json_array_append_new(ready, readyq_state(rq));
    pthread_mutex_lock(&b->lock);
    if (!b->acc)
        b->acc = json_pack("{s:[],s:[]}", "scheduled", "ready");
    json_array_extend(json_object_get(b->acc, "scheduled"), sched);
    json_array_extend(json_object_get(b->acc, "ready"), ready);
    pthread_mutex_unlock(&b->lock);
    json_decref(sched);
    json_decref(ready);
    bcast_part_done(b);
}

static void summary_finish(bcast *b)
{
    b->cb(b->ud, 200, b->acc ? b->acc : json_pack("{s:[],s:[]}", "scheduled", "ready"), NULL);
}

void queue_admin_summary(admin_cb cb, void *ud)
{
    bcast *b = bcast_new(cb, ud, NULL, summary_finish);
    bcast_run(b, summary_on_reactor);
}

static void states_finish(bcast *b)
{
    json_t *res = json_object();
    json_t *by = json_object();
    json_t *ready = b->acc ? json_object_get(b->acc, "ready") : NULL;
    size_t i;
    json_t *v;
    json_array_foreach(ready, i, v)
    {
        const char *name = json_string_value(json_object_get(v, "name"));
        json_t *want = json_object_get(b->req ? b->req : NULL, "queues");
        bool include = !json_is_array(want) || json_array_size(want) == 0;
        size_t k;
        json_t *w;
        json_array_foreach(want, k, w) if (json_is_string(w) &&
                                           strcmp(json_string_value(w), name) == 0) include = true;
        if (!include)
            continue;
        json_t *st = json_object();
        if (json_is_true(json_object_get(v, "suspended")))
            json_object_set_new(st, "suspended", json_true());
        json_object_set_new(by, name, st);
    }
    json_object_set_new(res, "states_by_ready_queue", by);
    json_decref(b->acc);
    b->cb(b->ud, 200, res, NULL);
}

void queue_admin_ready_q_states(const json_t *queues, admin_cb cb, void *ud)
{
    json_t *req = json_object();
    if (queues)
        json_object_set(req, "queues", (json_t *)queues);
    bcast *b = bcast_new(cb, ud, req, states_finish);
    json_decref(req);
    bcast_run(b, summary_on_reactor);
}
