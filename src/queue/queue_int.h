/* State shared by the files of the queue engine (src/queue), and only by
 * them: the queued message, the two kinds of queue, the per-reactor tables,
 * the admin registry and the internal functions each file offers the
 * others. Nothing outside src/queue includes this header.
 *
 * Who owns what (each .c file says more in its opening comment):
 *   queue.c    the per-reactor tables, init, shutdown, the process-wide counters
 *   qmsg.c     the queued message, insert reasons, log records, spool loads
 *   schedq.c   scheduled queues: configuration, placement, retry timers,
 *              expiry, making a message ready, direct protocols
 *   select_source.c  the egress source of a message made ready (pool
 *              round robin with the paths' source selection rates)
 *   recovery.c start-up enumeration of the spool
 *   readyq.c   ready queues: configuration, admission
 *   dispatch.c dispatchers (the delivery-protocol interface of dispatch.h),
 *              their number per ready queue, and the progress watchdog
 *   requeue.c  requeue after an attempt, the requeue_message event, rebind
 *   admin.c    the admin registry (bounces, suspensions), broadcasts
 *   inspect.c  inspection and summaries for the admin API and metrics
 *
 * Threads: everything here belongs to the reactor that owns the queue it is
 * in (hash(name) % N) except the counters (atomics) and the admin registry
 * (its mutex). */
#ifndef KUMOD_QUEUE_QUEUE_INT_H
#define KUMOD_QUEUE_QUEUE_INT_H
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/duration.h"
#include "core/reactor.h"
#include "core/spoolid.h"
#include "core/throttle.h"
#include "core/wheel.h"
#include "log/logs.h"
#include "lua/klua.h"
#include "msg/message.h"
#include "msg/queue_name.h"
#include "queue/backoff.h"
#include "queue/config.h"

/* The public headers these files implement (queue/admin.h,
 * queue/dispatch.h) are included by the .c files, not here, so that this
 * header stays below them in the include graph. */
struct disp_driver;
struct disp_response;
/* An admin_cb of queue/admin.h. */
typedef void (*queue__admin_cb)(void *ud, int http_status, json_t *result_take,
                                const char *error);

#define QMOD "kumod::queue"
#define DEFERRED_QUEUE "deferred_smtp_inject.kumomta.internal"

#define container_of(p, T, m) ((T *)((char *)(p)-offsetof(T, m)))

/* ---- insert reasons (spec §5.7), qmsg.c ---------------------------------------- */

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
    R_ADMIN_SUSPENDED, /* kumod's own: held by a scheduled-queue suspension */
    R__COUNT
};

extern const char *const reason_names[R__COUNT];
/* The reason named s ("Received", ...); R_RECEIVED when unknown. */
int reason_parse(const char *s);

/* ---- the queued message, qmsg.c --------------------------------------------------- */

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
    bool insert_checked;     /* throttle_insert_ready_queue passed it just now */
    int64_t due_wall_s;      /* when it is due (0 = now) */
} qmsg;

/* Set on a reactor once queue_reactor_shutdown() has freed its queues:
 * work that arrives later (a spool load finishing, a message posted by
 * another reactor) frees what it carries instead of rebuilding queues. */
extern __thread bool queues_down;

typedef struct qlist {
    qmsg head;
    long count;
} qlist;

static inline void qlist_init(qlist *l)
{
    l->head.next = l->head.prev = &l->head;
    l->count = 0;
}

static inline void qlist_push(qlist *l, qmsg *q)
{
    q->prev = l->head.prev;
    q->next = &l->head;
    l->head.prev->next = q;
    l->head.prev = q;
    l->count++;
}

static inline void qlist_del(qlist *l, qmsg *q)
{
    q->prev->next = q->next;
    q->next->prev = q->prev;
    q->next = q->prev = NULL;
    l->count--;
}

static inline qmsg *qlist_pop(qlist *l)
{
    if (l->count == 0)
        return NULL;
    qmsg *q = l->head.next;
    qlist_del(l, q);
    return q;
}

/* Process-wide counters (queue.c), read by queue_get_stats(). */
extern atomic_llong st_scheduled, st_ready, st_in_flight, st_sched_queues, st_ready_queues;
extern atomic_ullong st_delivered, st_transfail, st_failed, st_expired, st_watchdog;

void qmsg_pool_init(void);
void qmsg_add_reason(qmsg *q, int r);
bool qmsg_has_reason(const qmsg *q, int r);
/* A bare qmsg (zeroed) from the pool. */
qmsg *qmsg_alloc(void);
/* A qmsg for m (reference taken). */
qmsg *qmsg_new(message *m);
void qmsg_free(qmsg *q);

static inline uint64_t name_hash(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

/* The reactor that owns the queue called name. */
static inline reactor *owner_of(const char *name)
{
    return reactor_get((int)(name_hash(name) % (uint64_t)reactor_count()));
}

static inline int64_t now_s(void)
{
    return clock_wall_ns() / NS_PER_SEC;
}

/* Seconds since the message was created (from its spool id). */
static inline int64_t age_s(const qmsg *q)
{
    return (clock_wall_ns() - spoolid_created_ns(&q->id)) / NS_PER_SEC;
}

/* A uniform number in [0, 1) from a per-thread xorshift (jitter). */
double qrand01(void);

/* The context of a log record besides the message itself. */
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
    /* the ready queue whose outcome counts take the record when its site
     * does not name it (a failed resolution has site ""); else site */
    const char *readyq;
} rec_ctx;

/* Hands a record of type t for m to the logger. */
void qmsg_log(logrec_type t, message *m, uint32_t attempts, const rec_ctx *x,
              const struct disp_response *r);
/* Removes q's message from the spool (its fate is logged). */
void qmsg_forget(qmsg *q);
/* The same after a successful delivery: a failed removal is remembered, so
 * that the message is never delivered again by this process. */
void qmsg_forget_delivered(qmsg *q);

typedef void (*load_done_fn)(qmsg *q, int err, void *ud);
/* Makes q->m resident with its data (want_data) on the calling reactor,
 * then calls done. q is the load's while it runs (the caller took it out of
 * every list). ud_free (may be NULL) frees ud instead when the queues shut
 * down while the load is under way; q is then freed too. */
void qmsg_load(qmsg *q, bool want_data, load_done_fn done, void *ud,
               void (*ud_free)(void *ud));
/* The same for a q that stays in its queue's list while it loads
 * (inspection): a shutdown meanwhile frees q with its queue, not here. */
void qmsg_load_in_place(qmsg *q, bool want_data, load_done_fn done, void *ud);
/* Saves a dirty meta (after a policy changed it) without a sync of its own. */
void qmsg_save_if_dirty(qmsg *q);
/* Drops the resident message of a waiting qmsg. */
void qmsg_shrink(qmsg *q);

/* ---- queues and the per-reactor tables, queue.c ------------------------------------ */

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
    int busy; /* direct deliveries (maildir) in flight: keeps the queue from being reaped */
    klua_call *call; /* get_queue_config / get_egress_pool in flight */
};

struct readyq {
    readyq *hnext;
    char *name;
    /* dispatchers its progress watchdog aborted (the per-service series of
     * dispatcher_watchdog_aborted_total; pruned with the queue) */
    unsigned long long watchdog_aborted;
    /* outcomes of the messages it dispatched, for the per-service series of
     * total_messages_delivered / _transfail / _fail (kcli queue-summary's
     * D and T columns); reset when the queue is reaped, as KumoMTA's */
    unsigned long long n_delivered, n_transfail, n_failed;
    /* the response of the last Delivery / TransientFailure / Bounce record
     * made for it (the dashboard's "current response"): a fixed buffer, so
     * recording it allocates nothing */
    char last_resp[160];
    int last_resp_code;
    const char *last_resp_category; /* the classifier's (lives for ever), or NULL */
    int64_t last_resp_ns;
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
    struct rqthr *thr;  /* shared throttles and leases (throttle_shared.c), or NULL */
};

typedef struct qtables {
    schedq *sched[TABLE_BUCKETS];
    readyq *ready[TABLE_BUCKETS];
    /* back_to_sched's messages waiting for a load slot (requeue.c) */
    qlist back_waiting;
    struct event *back_ev;
} qtables;

/* The calling reactor's tables (created on first use). */
qtables *tables(void);
/* The tables if this reactor has them, else an empty set (never NULL): for
 * read-only visits. */
qtables *tables_peek(void);

/* every schedq of the calling reactor */
#define FOREACH_SCHEDQ(t, sq)                                                                      \
    for (int bucket_ = 0; bucket_ < TABLE_BUCKETS; bucket_++)                                      \
        for (schedq *sq = (t)->sched[bucket_], *nx_ = sq ? sq->hnext : NULL; sq;                   \
             sq = nx_, nx_ = sq ? sq->hnext : NULL)

/* ---- scheduled queues, schedq.c ------------------------------------------------------ */

schedq *sched_find(const char *name);
/* Finds or creates (and starts configuring) the scheduled queue name. */
schedq *sched_get(const char *name);
void sched_free(schedq *sq);
/* Arms the reap timer of an empty queue. */
void sched_arm_reap(schedq *sq);
backoff_params sched_backoff(const schedq *sq);
/* The site part of the ready queue names sq's messages go to (sbuf holds
 * it when it has to be built). */
const char *sched_site(const schedq *sq, char *sbuf, size_t len);
/* Puts q (q->sq == sq) on the timer wheel, or makes it ready when due. */
void sched_place(schedq *sq, qmsg *q);
/* Makes ready now a message taken off sq's waiting list (its timer
 * cancelled and st_scheduled not yet decremented). */
void sched_release(schedq *sq, qmsg *q);
/* Logs an Expiration record (when q->m is resident) and drops q. */
void expire_message(qmsg *q, const char *queue, const char *content, const char *pool,
                    const char *provider);

/* ---- source selection, select_source.c ------------------------------------------------ */

/* The calling reactor's view of the source selection rates and the
 * messages waiting on it go (queue shutdown). */
void selsrc_reactor_shutdown(void);
/* A ready queue (its owner reactor) has its egress path config: its
 * selection rates (none when cfg is NULL: not configurable) are what the
 * scheduled queues check from now on, and those waiting for it go on. */
void selsrc_publish(const char *rq_name, const struct egress_path_config *cfg);
/* The ready queue is freed: a scheduled queue that needs it again makes it anew. */
void selsrc_unpublish(const char *rq_name);
/* Everything published (once every reactor's queues are down). */
void selsrc_free_all(void);

/* ---- start-up enumeration, recovery.c ----------------------------------------------- */

/* n enumerated messages are back in their scheduled queues. Any reactor. */
void recovery_note_placed(unsigned long n);

/* ---- ready queues, readyq.c ---------------------------------------------------------- */

readyq *readyq_find(const char *name);
void readyq_free(readyq *rq);
void readyq_arm_reap(readyq *rq);
/* Moves q from sq's reactor to the owner of the ready queue rq_name. */
void readyq_insert_remote(const char *rq_name, schedq *sq, qmsg *q);
/* Makes (and configures) the ready queue rq_name on its owner without a
 * message, for the source selection of sq (select_source.c): it
 * publishes its rates once configured. */
void readyq_prepare_remote(const char *rq_name, schedq *sq);

/* ---- dispatchers, dispatch.c ------------------------------------------------------------ */

/* Starts, wakes or drains the dispatchers of rq for what its fifo holds. */
void readyq_maintain(readyq *rq);
/* Frees every dispatcher of rq at shutdown (the driver aborts). */
void disp_free_all(readyq *rq);
/* KumoMTA's DispatcherSummary array for rq (owner reactor). */
json_t *dispatch_describe(const readyq *rq);
/* Aborts the dispatcher of rq whose session id is session_id (admin
 * abort-ready-q-conn): 0, or KERR_NOTFOUND. Owner reactor. */
int dispatch_abort_session(readyq *rq, const char *session_id);
/* How many of rq's dispatchers wait on its connection rate and on its
 * message rate throttle right now (the dashboard). Owner reactor. */
void dispatch_count_throttled(const readyq *rq, int *conn_rate, int *msg_rate);
/* The progress watchdog's threshold for rq (egress path or protocol). */
int64_t watchdog_threshold_ns(const readyq *rq);
/* The driver registered for protocol proto, or NULL. */
const struct disp_driver *dispatch_driver(int proto);

/* ---- requeue, requeue.c -------------------------------------------------------------------- */

/* Posts q to the owner of the scheduled queue name: increment counts an
 * attempt (backoff), changed means the queue changed (due at once),
 * delay_s >= 0 a fixed delay, < 0 a random 0-60 s. */
void requeue_post(qmsg *q, const char *name, bool increment, bool changed, int64_t delay_s);
/* After an attempt: runs requeue_message when the policy defines it, then
 * requeue_post. */
void requeue(qmsg *q, const char *qname, bool increment, int64_t delay_s,
             const struct disp_response *resp, int reason);
/* Sends a message back to its scheduled queue without an attempt (full,
 * suspended...): delay_s < 0 means a random 0-60 s. */
void back_to_sched(qmsg *q, int reason, int64_t delay_s);
/* Frees the messages still waiting for back_to_sched's load slot
 * (queue_reactor_shutdown). */
void back_reactor_shutdown(qtables *t);

/* ---- the admin registry and broadcasts, admin.c ------------------------------------------------- */

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
    json_t *bounced_by_queue; /* queue name -> count; under admin_lock */
} admin_entry;

void admin_entry_free(admin_entry *e);
bool admin_matches(const admin_entry *e, const char *qname, const queue_name_parts *p);
/* A copy of the string member k of req, or NULL (absent or null). */
char *jstrdup(const json_t *req, const char *k);

/* The fields of an admin request body, as KumoMTA's request structs
 * declare them: a null optional field is the same as an absent one. */
typedef enum adm_ftype {
    AF_STRING,     /* Option<String> */
    AF_STRING_REQ, /* String */
    AF_BOOL,       /* bool with serde(default): absent = false, null refused */
    AF_STRINGS,    /* Vec<String> with serde(default) */
    AF_DURATION,   /* Option<Duration>: humantime string or seconds */
    AF_TIME,       /* Option<DateTime<Utc>>: RFC 3339 */
    AF_STRMAP,     /* HashMap<String, String>, required */
} adm_ftype;
typedef struct adm_field {
    const char *name;
    adm_ftype type;
} adm_field;
/* Checks req against fields (NULL-terminated). deny_unknown refuses
 * fields not listed (serde deny_unknown_fields); otherwise they are
 * ignored. Writes a serde-like "field: invalid type: ..." to err and
 * returns KERR_PARSE on the first problem. */
int admin_check_fields(const json_t *req, const adm_field *fields, bool deny_unknown, char *err,
                       size_t errlen);
/* The active suspension of ready queue name as a
 * SuspendReadyQueueV1ListEntry plus "since" (when it was made), or NULL. */
json_t *readyq_suspension(const char *name);
/* Formats Unix nanoseconds as RFC 3339 UTC with microseconds. */
const char *admin_format_time(int64_t wall_ns, char *buf, size_t len);
/* Parses an RFC 3339 timestamp into Unix nanoseconds. */
int admin_parse_rfc3339(const char *s, int64_t *out_ns);

/* Checked when a message is placed and when it is made ready: returns true
 * when an admin bounce consumed it. */
bool admin_intercept(schedq *sq, qmsg *q);
/* Scheduled-queue suspension: true when it consumed q (a TransientFailure
 * and a retry with an attempt, as KumoMTA does). */
bool admin_suspended(schedq *sq, qmsg *q);
bool readyq_suspended(const readyq *rq);
/* Whether an active scheduled-queue suspension matches qname (the
 * dashboard; takes the registry's mutex only while some entry exists). */
bool admin_sched_suspended(const char *qname, const queue_name_parts *p);

/* One admin request run on every reactor (or on one owner); finish runs
 * on the reactor that asked once every part is done. */
typedef struct bcast {
    atomic_int remaining;
    reactor *origin;
    queue__admin_cb cb;
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

bcast *bcast_new(queue__admin_cb cb, void *ud, const json_t *req, void (*finish)(bcast *));
void bcast_run(bcast *b, reactor_fn fn);
void bcast_part_done(bcast *b);

#endif
