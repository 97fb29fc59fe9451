/* The delivery-protocol interface: the only way the queue engine knows a
 * protocol. Each protocol (delivery/smtp_deliver.c, delivery/lua_deliver.c,
 * delivery/deferred.c, delivery/maildir.c) fills a disp_driver and
 * registers it for its qproto with dispatch_register_driver() at start-up,
 * before the first message is queued.
 *
 * Two kinds of protocol:
 * - connection protocols (open/send/close): a dispatcher is one
 *   "connection" of a ready queue; it opens, delivers messages one at a
 *   time (or, for a batching protocol, in batches: send_batch), and closes. The driver reports back through the disp_*
 *   functions, always on the ready queue's reactor. The dispatcher records
 *   its phase, a detail string and the time of its last progress for the
 *   watchdog.
 * - direct protocols (deliver_direct): the scheduled queue delivers a due
 *   message itself, on its own reactor, without a ready queue or egress
 *   source: maildir, as KumoMTA does (its scheduled queue writes the
 *   maildir; records have no site, pool or source). */
#ifndef KUMOD_QUEUE_DISPATCH_H
#define KUMOD_QUEUE_DISPATCH_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "log/logs.h"
#include "msg/message.h"
#include "queue/config.h"

typedef struct dispatcher dispatcher;

typedef enum disp_phase {
    PHASE_STARTING,
    PHASE_ACQUIRING_LEASE,
    PHASE_IDLE,
    PHASE_ACCUMULATING_BATCH,
    PHASE_CONNECTION_RATE_THROTTLED,
    PHASE_MESSAGE_RATE_THROTTLED,
    PHASE_ATTEMPTING_CONNECTION,
    PHASE_DELIVERING_MESSAGE,
    PHASE_CLOSING,
} disp_phase;

typedef enum disp_outcome {
    OUTCOME_DELIVERED,
    OUTCOME_TRANSIENT,
    OUTCOME_PERMANENT,
} disp_outcome;

typedef struct disp_response {
    int code;
    int enh_class, enh_subject, enh_detail; /* class 0 = none */
    const char *content;
    const char *command; /* may be NULL */
} disp_response;

/* One message for a direct protocol. */
typedef struct disp_direct {
    const char *queue;       /* the scheduled queue's name */
    const queue_config *cfg; /* its configuration (maildir_path, modes...) */
    message *m;              /* resident with its data, never NULL */
    const char *failure;     /* why the message's data could not be loaded, or NULL */
} disp_direct;

/* What a direct protocol did with each recipient of the message. */
typedef struct disp_direct_result {
    size_t n_delivered, n_failed;
    disp_response delivered; /* for the Delivery record, when n_delivered */
    disp_response failed;    /* for the TransientFailure record, when n_failed */
    bool *rcpt_failed;       /* the caller's, one per recipient: set for each that failed */
    char delivered_buf[4096], failed_buf[4096]; /* the responses' contents */
} disp_direct_result;

typedef struct disp_driver {
    const char *delivery_protocol; /* "Lua", "ESMTP", ... for log records */
    /* records carry no peer, egress pool/source or session (deferred injection) */
    bool bare_records;
    /* Opens the connection; reports with disp_opened(). */
    void (*open)(dispatcher *d);
    /* Delivers one resident message; reports with disp_delivered(). */
    void (*send)(dispatcher *d, message *m);
    /* Batching protocols (custom_lua with batch_size or min_batch_size
     * above 1; NULL: never batched): delivers n resident messages of the
     * ready queue at once (1 <= n <= batch_size; the array is the caller's
     * and only valid during the call). Reports once with disp_delivered(),
     * whose outcome and response apply to every message of the batch. */
    void (*send_batch)(dispatcher *d, message **msgs, size_t n);
    /* Pipelining drivers (NULL: none): receives the message that follows
     * the current one on this connection, taken by disp_prefetch() and
     * resident. It becomes the current message when the current one is
     * reported (disp_delivered); the driver then reports it like one given
     * to send(), or with disp_not_attempted(). send() is not called for it.
     * May be called from inside disp_prefetch(). */
    void (*ahead)(dispatcher *d, message *m);
    /* Releases the driver state (may send QUIT); never reports. */
    void (*close)(dispatcher *d);
    /* Drops everything at once (watchdog); never reports afterwards. */
    void (*abort)(dispatcher *d);
    /* Whether an idle connection can take another message (NULL: yes). */
    bool (*usable)(dispatcher *d);
    /* How long a dispatcher may go without progress before the watchdog
     * aborts it, unless the path sets watchdog_timeout (NULL: 600 s). */
    int64_t (*watchdog_ns)(const egress_path_config *cfg);
    /* Direct protocols only (open, send and close unused): delivers j->m
     * to each of its recipients now, or reports j->failure for all, on the
     * scheduled queue's reactor, and fills res (zeroed but for
     * rcpt_failed). Those delivered get one Delivery record, those that
     * failed one TransientFailure record, and the message is retried about
     * a minute later for the failed recipients only. */
    void (*deliver_direct)(const disp_direct *j, disp_direct_result *res);
} disp_driver;

/* Accessors for drivers. */
void *disp_driver_state(dispatcher *d);
void disp_set_driver_state(dispatcher *d, void *st);
const char *disp_readyq_name(dispatcher *d);
const char *disp_site(dispatcher *d);
const char *disp_domain(dispatcher *d); /* the scheduled queue's domain */
const char *disp_tenant(dispatcher *d);
const char *disp_campaign(dispatcher *d);
const char *disp_routing_domain(dispatcher *d);
const queue_config *disp_queue_config(dispatcher *d);
const egress_path_config *disp_path_config(dispatcher *d);
const egress_source *disp_source(dispatcher *d);
const char *disp_session_id(dispatcher *d);
void disp_set_phase(dispatcher *d, disp_phase p, const char *detail);
/* Peer and TLS details for the records of this connection. */
void disp_set_peer(dispatcher *d, const char *name, const char *addr);
void disp_set_tls(dispatcher *d, const char *cipher, const char *version);
/* Subject entries of the peer certificate, one per line; NULL clears. */
void disp_set_tls_subject(dispatcher *d, const char *subject_lines);
void disp_set_source_address(dispatcher *d, const char *addr);

/* ok=false: every message waiting in the ready queue... only the current
 * attempt fails; the response is logged as a TransientFailure for the next
 * message and the dispatcher closes. */
void disp_opened(dispatcher *d, bool ok, const disp_response *fail);
/* The outcome for the message handed to send(), or for every message of
 * the batch handed to send_batch(). For a message with several
 * recipients a driver may report per recipient by calling
 * disp_recipient_outcome() for each and then disp_delivered(d, -1, NULL). */
void disp_delivered(dispatcher *d, int outcome, const disp_response *r);
/* For protocols that hand a message on instead of delivering it (deferred
 * SMTP injection): logs a DeferredInjectionRebind record, saves the message
 * if the policy changed it, and inserts it into the queue its meta and
 * recipient now name, due at once. */
void disp_rebound(dispatcher *d);
/* Applies one outcome to every message waiting in the ready queue (null MX,
 * prohibited hosts, no usable host: KumoMTA's bulk ready-queue operation),
 * with reason as the insert reason of those requeued; their records have
 * delivery_protocol null, as no connection was attempted. The dispatcher
 * then closes. Call instead of disp_opened(). */
void disp_bulk_fail(dispatcher *d, disp_outcome o, const disp_response *r, const char *reason);
/* The same for a destination that cannot be resolved (the MX lookup
 * failed): every waiting message gets a TransientFailure 451 4.4.4
 * "failed to resolve queue <its queue>: <error>" with site "" and no
 * pool, source, protocol or session, KumoMTA's record of a failed
 * ready-queue insert, and is retried. */
void disp_resolve_fail(dispatcher *d, const char *error);
/* The connection cannot be reused: close after the current message. */
void disp_close_after_this(dispatcher *d);
/* A transient failure of the current message goes back to this queue (its
 * meta `queue` is set to it) instead of the queue its meta names. */
void disp_set_requeue_queue(dispatcher *d, const char *queue);
/* Pipelining (drivers with `ahead`): called while the current message is
 * with the driver, takes the next message of the ready queue now so that
 * the driver can start it before the current one is answered. Nothing is
 * taken (false) when the ready queue is empty, a message rate limit does
 * not allow one at once, max_deliveries_per_connection would be passed,
 * the connection is closing, or a message is already ahead. true: the
 * message is loading; `ahead` receives it, unless its load fails (the
 * dispatcher then logs and retries it as for any message, and the driver
 * never hears of it). */
bool disp_prefetch(dispatcher *d);
/* The current message was never acted on by the peer (the connection ended
 * before any reply to it): it goes back to its scheduled queue, due at
 * once, without a record and without counting an attempt. Reports it like
 * disp_delivered(). */
void disp_not_attempted(dispatcher *d);
void disp_recipient_outcome(dispatcher *d, size_t rcpt_index, disp_outcome o,
                            const disp_response *r);

void dispatch_register_driver(int proto, const disp_driver *drv);

#endif
