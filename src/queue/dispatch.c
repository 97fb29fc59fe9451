/* Dispatchers: the connections of a ready queue, and the engine's side of
 * the delivery-protocol interface (queue/dispatch.h). How many a ready
 * queue runs (readyq_maintain: connection_limit, rates, suspensions), each
 * one's life (open, take a message, load it, hand it to the driver's send,
 * record the outcome, idle, close), the records of outcomes (Delivery,
 * Bounce, TransientFailure, per recipient when the driver reports so) and
 * the progress watchdog (seed 000) that aborts a dispatcher stuck in one
 * phase.
 *
 * Threads: everything runs on the ready queue's owner reactor; drivers
 * report back on it. Failures: a message the spool cannot give is logged
 * as a TransientFailure and retried (or, without meta, reported lost); a
 * failed connection fails the next message, or after
 * consecutive_connection_failures_before_delay every waiting one; the
 * watchdog requeues the message of an aborted dispatcher without an
 * attempt. */
#include <event2/event.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/diag.h"
#include "core/duration.h"
#include "core/kerr.h"
#include "core/xalloc.h"
#include "log/logs.h"
#include "lua/services.h"
#include "queue/dispatch.h"
#include "queue/queue_int.h"
#include "queue/throttle_shared.h"

struct dispatcher {
    dispatcher *next;
    readyq *rq;
    const disp_driver *drv;
    void *drv_state;
    qmsg *cur;
    /* pipelining (disp_prefetch): the message after cur, loading or with
     * the driver; it becomes cur when cur is reported */
    qmsg *ahead;
    bool ahead_loading;
    bool open, closing, opening;
    bool loading; /* a spool load for cur is in flight */
    bool idle;    /* open, waiting up to idle_timeout for more messages */
    struct event *idle_ev;
    struct event *kick_ev; /* the next step from a fresh stack frame, or the close */
    bool aborted; /* the watchdog fired while loading */
    int delivered;
    /* outcomes over the dispatcher's life, for inspect-ready-q */
    uint64_t n_delivered, n_transfailed, n_failed;
    int64_t started_wall_ns;
    disp_phase phase;
    char detail[128];
    char session_id[37];
    int64_t started_ns, phase_ns, progress_ns;
    char *peer_name, *peer_addr, *tls_cipher, *tls_version, *source_address, *tls_subject;
    char *requeue_to;
    /* custom_lua batching (batch.c's half is below): the messages taken
     * for the next send_batch, accumulating until min_batch_size or the
     * batch latency, then loading, then with the driver. Each slot is the
     * ud of its spool load, so the array never moves while loads run. */
    struct batch_slot *batch;
    size_t n_batch;
    size_t loads_pending;
    int64_t batch_started_ns; /* monotonic; 0 = no partial batch */
    bool accumulating;        /* waiting (idle_ev) for more messages */
    bool batch_ready;         /* complete: goes out once the rate allows */
    /* connection-limit leases (throttle_shared.h), held until it closes */
    rqleases *leases;
    bool leased, leasing;
    /* per-recipient outcomes of the current message */
    int *rcpt_outcome;
    disp_response *rcpt_resp;
    char **rcpt_content;
};

struct batch_slot {
    dispatcher *d;
    qmsg *q;       /* NULL once the slot's message left the batch */
    bool in_load;  /* its spool load owns it */
};

static const disp_driver *drivers[8];

void dispatch_register_driver(int proto, const disp_driver *drv)
{
    if (proto >= 0 && proto < 8)
        drivers[proto] = drv;
}

const disp_driver *dispatch_driver(int proto)
{
    return proto >= 0 && proto < 8 ? drivers[proto] : NULL;
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
static void batch_return(dispatcher *d, int reason);

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
    rqlease_cancel(rq, d);
    rqleases_release(d->leases);
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
    /* a message ahead still held (not attempted) goes back */
    if (d->ahead && !d->ahead_loading)
        back_to_sched(d->ahead, R_DISPATCHER_DROP, 0);
    d->ahead = NULL;
    /* a batch still held goes back (a close while accumulating) */
    if (d->n_batch)
        batch_return(d, R_DISPATCHER_DROP);
    free(d->batch);
    free(d);
    readyq_arm_reap(rq);
}

static void disp_close(dispatcher *d)
{
    bool was_open = d->open;
    disp_set_phase(d, PHASE_CLOSING, NULL);
    /* also after a failed open: the driver frees its state */
    if (d->drv->close)
        d->drv->close(d);
    d->open = false;
    /* messages left in the ready queue when an open connection ended (a
     * 421, max_deliveries_per_connection) need a connection of their own;
     * a dispatcher that never opened (lease refused, connect failed) leaves
     * the retry to its own timers */
    readyq *rq = d->rq;
    bool restart = was_open && d->delivered > 0 && rq->fifo.count;
    disp_destroy(d);
    if (restart)
        readyq_maintain(rq);
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
        qmsg_log(LOGREC_DELIVERY, m, q->num_attempts, &x, r);
        atomic_fetch_add(&st_delivered, 1);
        qmsg_forget_delivered(q);
        qmsg_free(q);
    } else if (outcome == OUTCOME_PERMANENT) {
        qmsg_log(LOGREC_BOUNCE, m, q->num_attempts, &x, r);
        atomic_fetch_add(&st_failed, 1);
        qmsg_forget(q);
        qmsg_free(q);
    } else {
        qmsg_log(LOGREC_TRANSIENT_FAILURE, m, q->num_attempts, &x, r);
        atomic_fetch_add(&st_transfail, 1);
        if (d->requeue_to) {
            /* every message of a batch; disp_delivered clears it after */
            json_object_set_new(m->meta, "queue", json_string(d->requeue_to));
            m->meta_dirty = true;
            free(qname);
            qname = strdup(d->requeue_to);
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
        qmsg_log(o == OUTCOME_DELIVERED ? LOGREC_DELIVERY : LOGREC_BOUNCE, m, q->num_attempts,
                   &x, &d->rcpt_resp[i]);
        m->rcpts = saved;
        m->n_rcpts = saved_n;
        atomic_fetch_add(o == OUTCOME_DELIVERED ? &st_delivered : &st_failed, 1);
    }
    if (nk == 0) {
        atomic_fetch_sub(&st_in_flight, 1);
        qmsg_forget(q);
        qmsg_free(q);
    } else {
        if (nk < n)
            message_set_recipients(m, keep, nk);
        atomic_fetch_sub(&st_in_flight, 1);
        qmsg_log(LOGREC_TRANSIENT_FAILURE, m, q->num_attempts, &x, &tf);
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

static void count_outcome(dispatcher *d, int outcome)
{
    if (outcome == OUTCOME_DELIVERED)
        d->n_delivered++;
    else if (outcome == OUTCOME_PERMANENT)
        d->n_failed++;
    else
        d->n_transfailed++;
    d->delivered++;
}

/* The current message is reported: the one ahead (disp_prefetch) takes its
 * place. While it still loads, its load callback sees it is cur and hands
 * it to send() as disp_next's load would; once with the driver, the
 * driver goes on with it. */
static bool promote_ahead(dispatcher *d)
{
    qmsg *q = d->ahead;
    if (!q)
        return false;
    d->ahead = NULL;
    d->cur = q;
    if (d->ahead_loading) {
        d->ahead_loading = false;
        d->loading = true;
    } else {
        disp_set_phase(d, PHASE_DELIVERING_MESSAGE, NULL);
    }
    return true;
}

/* After the current message (or batch) is settled: the prefetched message
 * becomes current, or the connection closes, or it idles and the
 * dispatcher looks for more. */
static void message_done(dispatcher *d)
{
    free(d->requeue_to);
    d->requeue_to = NULL;
    if (promote_ahead(d))
        return;
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

void disp_not_attempted(dispatcher *d)
{
    qmsg *q = d->cur;
    d->cur = NULL;
    d->progress_ns = clock_mono_ns();
    if (q)
        back_to_sched(q, R_DISPATCHER_DROP, 0);
    message_done(d);
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
        count_outcome(d, outcome);
    } else if (d->n_batch) {
        /* a batch: the one outcome applies to every message in it; each
         * transient failure gets its own jittered retry (requeue) */
        size_t n = d->n_batch;
        d->n_batch = 0;
        d->batch_ready = false;
        d->batch_started_ns = 0;
        for (size_t i = 0; i < n; i++) {
            qmsg *bq = d->batch[i].q;
            d->batch[i].q = NULL;
            if (!bq)
                continue;
            finish_message(d, bq, outcome < 0 ? OUTCOME_TRANSIENT : outcome, r);
            count_outcome(d, outcome);
        }
    }
    message_done(d);
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
        qmsg_log(LOGREC_DEFERRED_INJECTION_REBIND, m, q->num_attempts, &x, &r);
        /* a deferred_spool message stays in memory until it must be saved */
        if (m->in_spool)
            qmsg_save_if_dirty(q);
        atomic_fetch_sub(&st_in_flight, 1);
        q->n_reasons = 0;
        qmsg_add_reason(q, R_RECEIVED);
        q->due_wall_s = 0;
        if (strcmp(newq, "null") == 0) {
            qmsg_forget(q);
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

/* The spool could not give us q: no transaction starts; a TransientFailure
 * and a retry, or, without even its meta, the message is reported lost. */
static void load_failed(dispatcher *d, qmsg *q, int err)
{
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
    atomic_fetch_sub(&st_in_flight, 1);
    if (q->m) {
        char *qname = queue_name_of_message(q->m);
        rec_ctx x = disp_rec(d, q->m, qname);
        qmsg_log(LOGREC_TRANSIENT_FAILURE, q->m, q->num_attempts, &x, &r);
        atomic_fetch_add(&st_transfail, 1);
        requeue(q, qname, true, -1, &r, R_LOGGED_TRANSIENT_FAILURE);
        free(qname);
    } else {
        DERROR(QMOD, "id=%s %s; the message is lost from the spool", hex, content);
        qmsg_free(q);
    }
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
        d->cur = NULL;
        load_failed(d, q, err);
        disp_next(d);
        return;
    }
    q->m->num_attempts = q->num_attempts;
    if (services_was_delivered(&q->id)) {
        /* delivered earlier by this process; only its removal had failed */
        d->cur = NULL;
        atomic_fetch_sub(&st_in_flight, 1);
        qmsg_forget_delivered(q);
        qmsg_free(q);
        disp_next(d);
        return;
    }
    disp_set_phase(d, PHASE_DELIVERING_MESSAGE, NULL);
    /* the insert context of a later requeue describes this attempt only */
    q->n_reasons = 0;
    d->drv->send(d, q->m);
}

/* The load of the message ahead (disp_prefetch) finished. */
static void disp_after_ahead_load(qmsg *q, int err, void *ud)
{
    dispatcher *d = ud;
    if (d->cur == q) {
        /* cur was reported while this loaded: an ordinary send */
        disp_after_load(q, err, d);
        return;
    }
    d->ahead_loading = false;
    if (d->aborted) {
        /* disp_abort left this load to finish the job; never attempted */
        d->ahead = NULL;
        back_to_sched(q, R_DISPATCHER_DROP, 0);
        disp_destroy(d);
        return;
    }
    if (err) {
        d->ahead = NULL;
        load_failed(d, q, err);
        return;
    }
    q->m->num_attempts = q->num_attempts;
    if (services_was_delivered(&q->id)) {
        d->ahead = NULL;
        atomic_fetch_sub(&st_in_flight, 1);
        qmsg_forget_delivered(q);
        qmsg_free(q);
        return;
    }
    q->n_reasons = 0;
    d->drv->ahead(d, q->m);
}

bool disp_prefetch(dispatcher *d)
{
    readyq *rq = d->rq;
    if (!d->drv->ahead || d->ahead || !d->cur || d->loading || d->closing || !d->open ||
        d->n_batch || rq->fifo.count == 0 ||
        d->delivered + 2 > d->rq->cfg.max_deliveries_per_connection)
        return false;
    if (rqthr_message(rq) != 0)
        return false;
    qmsg *q = qlist_pop(&rq->fifo);
    atomic_fetch_sub(&st_ready, 1);
    d->ahead = q;
    d->ahead_loading = true;
    qmsg_load(q, true, disp_after_ahead_load, d, NULL);
    return true;
}

/* ---- batches (custom_lua batch_size, min_batch_size, max_batch_latency) ---------------------------- */

static void batch_go(dispatcher *d);
static void disp_idle_expired(evutil_socket_t fd, short what, void *arg);

/* Whether rq hands its driver batches (send_batch) rather than messages. */
static bool batching(const readyq *rq, const disp_driver *drv)
{
    return drv->send_batch && (rq->qcfg.batch_size > 1 || rq->qcfg.min_batch_size > 1);
}

/* Gives the messages of d's batch that no load owns back to their
 * scheduled queues without an attempt (suspension, shutdown of the path). */
static void batch_return_after(dispatcher *d, int reason, int64_t delay_s)
{
    for (size_t i = 0; i < d->n_batch; i++) {
        qmsg *q = d->batch[i].q;
        if (!q || d->batch[i].in_load)
            continue;
        d->batch[i].q = NULL;
        back_to_sched(q, reason, delay_s);
    }
    d->n_batch = 0;
    d->batch_ready = false;
    d->batch_started_ns = 0;
    d->accumulating = false;
}

static void batch_return(dispatcher *d, int reason)
{
    batch_return_after(d, reason, -1);
}

/* A throttle holds rq for wait_ns. As KumoMTA does (max_message_rate.md:
 * "longer than the idle_timeout ... the messages in the ready queue will
 * be delayed until the throttle would permit them"), a wait of at least
 * idle_timeout sends every message of the ready queue (and of the batches
 * being filled) back to its scheduled queue, due when the throttle opens
 * (no attempt; a Delayed record says why), and d closes. Returns whether
 * it did. */
static bool throttle_ready_queue(dispatcher *d, int64_t wait_ns, int reason)
{
    readyq *rq = d->rq;
    if (wait_ns < rq->cfg.idle_timeout_ns || wait_ns <= 0)
        return false;
    int64_t delay_s = (wait_ns + NS_PER_SEC - 1) / NS_PER_SEC;
    long n = rq->fifo.count;
    while (rq->fifo.count) {
        atomic_fetch_sub(&st_ready, 1);
        back_to_sched(qlist_pop(&rq->fifo), reason, delay_s);
    }
    for (dispatcher *o = rq->dispatchers; o; o = o->next)
        if (o->n_batch && (o == d || o->accumulating) && !o->loading)
            batch_return_after(o, reason, delay_s);
    DDEBUG(QMOD, "ready_queue=%s throttled for %lds (longer than idle_timeout): %ld messages "
                 "back to their scheduled queues",
           rq->name, (long)delay_s, n);
    disp_close_soon(d);
    return true;
}

/* Takes what the ready queue holds, up to batch_size, into d's batch; sends
 * it once it has min_batch_size (or its latency is over), otherwise waits
 * for more (readyq_maintain wakes it) until max_batch_latency after the
 * first message, or idle_timeout, whichever comes first. */
static void batch_fill(dispatcher *d)
{
    readyq *rq = d->rq;
    size_t max = (size_t)rq->qcfg.batch_size, min = (size_t)rq->qcfg.min_batch_size;
    if (!d->batch) {
        d->batch = calloc(max, sizeof(*d->batch));
        if (!d->batch)
            abort();
    }
    if (!d->batch_ready) {
        qmsg *q;
        while (d->n_batch < max && (q = qlist_pop(&rq->fifo))) {
            atomic_fetch_sub(&st_ready, 1);
            d->batch[d->n_batch++] = (struct batch_slot){d, q, false};
        }
        int64_t now = clock_mono_ns();
        if (d->n_batch > 0 && !d->batch_started_ns)
            d->batch_started_ns = now;
        bool late = d->n_batch > 0 &&
                    now - d->batch_started_ns >= rq->qcfg.max_batch_latency_ns;
        if (d->n_batch >= min || late)
            d->batch_ready = true;
    }
    if (d->batch_ready) {
        d->accumulating = false;
        batch_go(d);
        return;
    }
    /* idle (nothing yet) or accumulating (a partial batch) */
    int64_t wait = rq->cfg.idle_timeout_ns;
    if (d->n_batch == 0) {
        if (wait <= 0) {
            disp_close_soon(d);
            return;
        }
        disp_set_phase(d, PHASE_IDLE, NULL);
    } else {
        int64_t left = d->batch_started_ns + rq->qcfg.max_batch_latency_ns - clock_mono_ns();
        if (left < wait || wait <= 0)
            wait = left > 0 ? left : 0;
        char detail[64];
        snprintf(detail, sizeof(detail), "%zu/%zu", d->n_batch, min);
        disp_set_phase(d, PHASE_ACCUMULATING_BATCH, detail);
        d->accumulating = true;
    }
    d->idle = true;
    if (!d->idle_ev)
        d->idle_ev = evtimer_new(reactor_base(reactor_current()), disp_idle_expired, d);
    struct timeval tv = {wait / NS_PER_SEC, (wait % NS_PER_SEC) / 1000};
    evtimer_add(d->idle_ev, &tv);
}

static void batch_loaded(dispatcher *d)
{
    d->loading = false;
    if (d->aborted) {
        /* the watchdog gave up on this dispatcher while the spool was busy */
        for (size_t i = 0; i < d->n_batch; i++) {
            qmsg *q = d->batch[i].q;
            d->batch[i].q = NULL;
            if (q && q->m)
                watchdog_requeue(d, q);
            else if (q)
                back_to_sched(q, R_DISPATCHER_DROP, -1);
        }
        d->n_batch = 0;
        disp_destroy(d);
        return;
    }
    /* close the gaps of messages that left during the loads */
    size_t n = 0;
    for (size_t i = 0; i < d->n_batch; i++)
        if (d->batch[i].q)
            d->batch[n++] = d->batch[i];
    d->n_batch = n;
    if (n == 0) {
        d->batch_ready = false;
        d->batch_started_ns = 0;
        disp_kick(d, 0);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        qmsg *q = d->batch[i].q;
        q->m->num_attempts = q->num_attempts;
        /* the insert context of a later requeue describes this attempt only */
        q->n_reasons = 0;
    }
    disp_set_phase(d, PHASE_DELIVERING_MESSAGE, NULL);
    if (d->rq->qcfg.batch_size == 1) {
        /* min_batch_size > 1 with batch_size 1: one message, the send method */
        d->cur = d->batch[0].q;
        d->batch[0].q = NULL;
        d->n_batch = 0;
        d->batch_ready = false;
        d->batch_started_ns = 0;
        d->drv->send(d, d->cur->m);
        return;
    }
    message **msgs = malloc(n * sizeof(*msgs));
    if (!msgs)
        abort();
    for (size_t i = 0; i < n; i++)
        msgs[i] = d->batch[i].q->m;
    d->drv->send_batch(d, msgs, n);
    free(msgs);
}

static void batch_after_load(qmsg *q, int err, void *ud)
{
    struct batch_slot *slot = ud;
    dispatcher *d = slot->d;
    slot->in_load = false;
    if (!d->aborted) {
        if (err) {
            slot->q = NULL;
            load_failed(d, q, err);
        } else if (services_was_delivered(&q->id)) {
            /* delivered earlier by this process; only its removal had failed */
            slot->q = NULL;
            atomic_fetch_sub(&st_in_flight, 1);
            qmsg_forget_delivered(q);
            qmsg_free(q);
        }
    }
    if (--d->loads_pending == 0)
        batch_loaded(d);
}

/* The batch is complete: one message-rate token for all of it (as KumoMTA
 * takes it per batch), then the spool loads. */
static void batch_go(dispatcher *d)
{
    readyq *rq = d->rq;
    /* the shared (Redis) or local throttles and the additional ones; < 0:
     * Redis answers later and dispatch_wake brings the batch back here */
    int64_t wait = rqthr_message(rq);
    if (wait != 0) {
        if (throttle_ready_queue(d, wait, R_MESSAGE_RATE_THROTTLE))
            return;
        disp_set_phase(d, PHASE_MESSAGE_RATE_THROTTLED, NULL);
        if (wait > 0)
            disp_kick(d, wait);
        return;
    }
    disp_set_phase(d, PHASE_DELIVERING_MESSAGE, NULL);
    d->loading = true;
    /* one extra count until every load is issued: a resident message
     * finishes its load at once */
    d->loads_pending = d->n_batch + 1;
    for (size_t i = 0; i < d->n_batch; i++) {
        d->batch[i].in_load = true;
        qmsg_load(d->batch[i].q, true, batch_after_load, &d->batch[i], NULL);
    }
    if (--d->loads_pending == 0)
        batch_loaded(d);
}

static void disp_idle_expired(evutil_socket_t fd, short what, void *arg)
{
    dispatcher *d = arg;
    if (!d->idle)
        return;
    d->idle = false;
    if (d->accumulating) {
        /* max_batch_latency (or idle_timeout) is over: whatever we have goes */
        d->accumulating = false;
        if (d->n_batch) {
            d->batch_ready = true;
            batch_fill(d);
            return;
        }
    }
    disp_close_soon(d);
}

static void disp_leased(void *owner, rqleases *l, bool granted)
{
    dispatcher *d = owner;
    d->leasing = false;
    if (!granted) {
        disp_close_soon(d); /* the queue tries again in 3 s (rqthr_may_open) */
        return;
    }
    d->leases = l;
    d->leased = true;
    disp_kick(d, 0);
}

/* A throttle answer came from Redis: the dispatchers waiting on one look again. */
void dispatch_wake(readyq *rq);
void dispatch_wake(readyq *rq)
{
    for (dispatcher *d = rq->dispatchers; d; d = d->next)
        if (!d->closing && (d->phase == PHASE_MESSAGE_RATE_THROTTLED ||
                            d->phase == PHASE_CONNECTION_RATE_THROTTLED))
            disp_kick(d, 0);
}

static void disp_next(dispatcher *d)
{
    readyq *rq = d->rq;
    if (d->closing || d->leasing)
        return;
    if (!d->open && !d->opening && !d->leased) {
        /* connection_limit and additional_connection_limits (leases) */
        rqleases *l = NULL;
        int rc = rqlease_acquire(rq, d, &l, disp_leased);
        if (rc == 1) {
            d->leasing = true;
            disp_set_phase(d, PHASE_ACQUIRING_LEASE, "connection limit");
            return;
        }
        if (rc < 0) {
            disp_close_soon(d);
            return;
        }
        d->leases = l;
        d->leased = true;
    }
    if (!d->open && !d->opening) {
        int64_t wait = rqthr_connection(rq);
        if (wait != 0) {
            if (throttle_ready_queue(d, wait, R_CONNECTION_RATE_THROTTLE))
                return;
            disp_set_phase(d, PHASE_CONNECTION_RATE_THROTTLED, NULL);
            if (wait > 0)
                disp_kick(d, wait); /* else dispatch_wake kicks it */
            return;
        }
    }
    bool batched = batching(rq, d->drv);
    if (d->open && !batched && rq->fifo.count) {
        int64_t wait = rqthr_message(rq);
        if (wait != 0) {
            if (throttle_ready_queue(d, wait, R_MESSAGE_RATE_THROTTLE))
                return;
            disp_set_phase(d, PHASE_MESSAGE_RATE_THROTTLED, NULL);
            if (wait > 0)
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
    if (batched) {
        batch_fill(d);
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
    bool resolve_fail; /* content is the resolver's error (disp_resolve_fail) */
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
        char *content = NULL;
        if (b->resolve_fail) {
            /* KumoMTA's wording for a queue whose ready queue cannot be
             * resolved: it names the scheduled queue, the message's own */
            content = xasprintf("failed to resolve queue %s: %s", qname ? qname : "",
                                b->content);
            b->r.content = content;
        }
        atomic_fetch_sub(&st_in_flight, 1);
        if (b->outcome == OUTCOME_PERMANENT) {
            qmsg_log(LOGREC_BOUNCE, q->m, q->num_attempts, &x, &b->r);
            atomic_fetch_add(&st_failed, 1);
            qmsg_forget(q);
            qmsg_free(q);
        } else {
            qmsg_log(LOGREC_TRANSIENT_FAILURE, q->m, q->num_attempts, &x, &b->r);
            atomic_fetch_add(&st_transfail, 1);
            qmsg_add_reason(q, b->reason);
            requeue(q, qname, true, -1, &b->r, R_LOGGED_TRANSIENT_FAILURE);
        }
        free(content);
        free(qname);
    }
    bulk_one_free(b);
}

/* Takes q out of the ready queue's hands: it gets outcome o with response
 * r (recorded against dispatcher d's context) once its meta is loaded.
 * with_proto: the record names the delivery protocol (a failed connection
 * does; KumoMTA's bulk ready-queue operation, before any connection, logs
 * delivery_protocol null). */
static void bulk_one_fail(dispatcher *d, qmsg *q, int o, const disp_response *r, int reason,
                          bool with_proto)
{
    readyq *rq = d->rq;
    struct bulk_one *b = xcalloc(1, sizeof(*b));
    b->outcome = o;
    b->r = *r;
    b->content = xstrdup(r->content ? r->content : "");
    b->r.content = b->content;
    b->r.command = NULL;
    b->reason = reason;
    b->site = xstrdup(rq->name);
    b->pool = xstrdup(rq->qcfg.egress_pool ? rq->qcfg.egress_pool : "unspecified");
    b->source = xstrdup(rq->source_name);
    b->proto = with_proto ? xstrdup(d->drv->delivery_protocol) : NULL;
    b->session = xstrdup(d->session_id);
    b->x.site = b->site;
    b->x.pool = b->pool;
    b->x.source = b->source;
    b->x.proto = b->proto;
    b->x.session_id = b->session;
    qmsg_load(q, logs_records_want_data(), bulk_after_load, b, bulk_one_free);
}

static void bulk_fail(dispatcher *d, disp_outcome o, const disp_response *r, const char *reason,
                      bool with_proto)
{
    d->opening = false;
    int rs = reason ? reason_parse(reason) : R_FAILED_INSERT_READY;
    while (d->rq->fifo.count) {
        qmsg *q = qlist_pop(&d->rq->fifo);
        atomic_fetch_sub(&st_ready, 1);
        bulk_one_fail(d, q, (int)o, r, rs, with_proto);
    }
    disp_close_soon(d);
}

void disp_bulk_fail(dispatcher *d, disp_outcome o, const disp_response *r, const char *reason)
{
    bulk_fail(d, o, r, reason, false);
}

void disp_resolve_fail(dispatcher *d, const char *error)
{
    d->opening = false;
    disp_response r = {451, 4, 4, 4, error, NULL};
    while (d->rq->fifo.count) {
        qmsg *q = qlist_pop(&d->rq->fifo);
        atomic_fetch_sub(&st_ready, 1);
        struct bulk_one *b = xcalloc(1, sizeof(*b));
        b->outcome = OUTCOME_TRANSIENT;
        b->r = r;
        b->content = xstrdup(error);
        b->r.content = b->content;
        b->reason = R_FAILED_INSERT_READY;
        b->resolve_fail = true;
        /* site "", no pool, source, protocol or session: the record of a
         * queue that never reached a ready queue, as KumoMTA writes it */
        b->x.readyq = b->site = xstrdup(d->rq->name);
        qmsg_load(q, logs_records_want_data(), bulk_after_load, b, bulk_one_free);
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
        bulk_fail(d, OUTCOME_TRANSIENT, fail, "TooManyConnectionFailures", true);
        return;
    }
    qmsg *q = qlist_pop(&rq->fifo);
    atomic_fetch_sub(&st_ready, 1);
    bulk_one_fail(d, q, OUTCOME_TRANSIENT, fail, R_LOGGED_TRANSIENT_FAILURE, true);
    disp_close_soon(d);
    readyq_maintain(rq);
}

/* ---- the dispatcher progress watchdog (seed 000) ------------------------------------ */

int64_t watchdog_threshold_ns(const readyq *rq)
{
    if (rq->cfg.watchdog_timeout_ns > 0)
        return rq->cfg.watchdog_timeout_ns;
    const disp_driver *drv = dispatch_driver(rq->proto);
    return drv && drv->watchdog_ns ? drv->watchdog_ns(&rq->cfg) : 600 * NS_PER_SEC;
}

/* Requeues the in-flight message of an aborted dispatcher without an
 * attempt, with a Delayed record saying who aborted it (what: "dispatcher
 * watchdog" or "administrator"). */
static void abort_requeue(dispatcher *d, qmsg *q, const char *what)
{
    int64_t now = clock_mono_ns();
    char age[96], tip[96], content[700];
    duration_format(now - d->started_ns, age, sizeof(age));
    duration_format(now - d->phase_ns, tip, sizeof(tip));
    snprintf(content, sizeof(content),
             "%s aborted task; phase=%s detail=\"%s\" session=%s age=%s time_in_phase=%s", what,
             phase_names[d->phase], d->detail, d->session_id, age, tip);
    char *qname = queue_name_of_message(q->m);
    rec_ctx x = disp_rec(d, q->m, qname);
    x.peer_name = x.peer_addr = NULL;
    x.source_address = NULL;
    disp_response r = {451, 4, 4, 1, content, NULL};
    qmsg_log(LOGREC_DELAYED, q->m, q->num_attempts, &x, &r);
    atomic_fetch_sub(&st_in_flight, 1);
    qmsg_add_reason(q, R_DISPATCHER_DROP);
    requeue(q, qname, false, -1, &r, R_LOGGED_TRANSIENT_FAILURE);
    free(qname);
}

static void watchdog_requeue(dispatcher *d, qmsg *q)
{
    abort_requeue(d, q, "dispatcher watchdog");
}

/* Aborts d: the driver drops its connection, the message in flight goes
 * back to its scheduled queue without an attempt, d is freed (or, while a
 * spool load is under way, disp_after_load finishes the job). Never called
 * from d's own callbacks (the watchdog timer, an admin request). */
static void disp_abort(dispatcher *d, const char *what)
{
    if (d->drv->abort && (d->open || d->opening))
        d->drv->abort(d);
    d->open = d->opening = false;
    qmsg *q = d->cur;
    if (d->loading) {
        d->aborted = true;
        return;
    }
    d->cur = NULL;
    if (q && q->m)
        abort_requeue(d, q, what);
    else if (q)
        back_to_sched(q, R_DISPATCHER_DROP, -1);
    /* a batch with the driver or still accumulating */
    for (size_t i = 0; i < d->n_batch; i++) {
        qmsg *bq = d->batch[i].q;
        d->batch[i].q = NULL;
        if (bq && bq->m)
            abort_requeue(d, bq, what);
        else if (bq)
            back_to_sched(bq, R_DISPATCHER_DROP, -1);
    }
    d->n_batch = 0;
    /* the message ahead was never attempted */
    if (d->ahead && d->ahead_loading) {
        d->aborted = true; /* disp_after_ahead_load finishes the job */
        return;
    }
    if (d->ahead)
        back_to_sched(d->ahead, R_DISPATCHER_DROP, 0);
    d->ahead = NULL;
    disp_destroy(d);
}

int dispatch_abort_session(readyq *rq, const char *session_id)
{
    for (dispatcher *d = rq->dispatchers; d; d = d->next) {
        if (strcasecmp(d->session_id, session_id) != 0)
            continue;
        if (d->closing || d->aborted)
            return 0; /* already on its way out */
        DINFO(QMOD, "ready_queue=%s session=%s dispatcher aborted by administrator; phase=%s",
              rq->name, d->session_id, phase_names[d->phase]);
        disp_abort(d, "administrator");
        readyq_maintain(rq);
        return 0;
    }
    return KERR_NOTFOUND;
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
    int64_t wait = remaining + (int64_t)(qrand01() * (double)jmax);
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
        if (d->closing || d->aborted || (d->idle && !d->accumulating) ||
            now - d->progress_ns < thr)
            continue;
        atomic_fetch_add(&st_watchdog, 1);
        rq->watchdog_aborted++;
        aborted_any = true;
        DWARN(QMOD, "ready_queue=%s session=%s dispatcher watchdog aborted task; phase=%s "
                    "detail=\"%s\"",
              rq->name, d->session_id, phase_names[d->phase], d->detail);
        disp_abort(d, "dispatcher watchdog");
    }
    if (aborted_any)
        readyq_maintain(rq);
    else
        readyq_arm_watchdog(rq);
}

void readyq_maintain(readyq *rq)
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
        for (dispatcher *d = rq->dispatchers; d; d = d->next)
            if (d->accumulating)
                batch_return(d, R_READYQ_SUSPENDED);
        return;
    }
    const disp_driver *drv = dispatch_driver(rq->proto);
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
    while (rq->active < ideal && rqthr_may_open(rq)) {
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
        d->started_wall_ns = clock_wall_ns();
        d->phase = PHASE_STARTING;
        d->next = rq->dispatchers;
        rq->dispatchers = d;
        rq->active++;
        disp_next(d);
    }
    readyq_arm_watchdog(rq);
}

/* KumoMTA's DispatcherSummary for each dispatcher of rq (its owner
 * reactor): DispatcherPhase is an externally tagged enum, so a phase with
 * data is an object; kumod keeps the label or batch sizes in detail. */
void dispatch_count_throttled(const readyq *rq, int *conn_rate, int *msg_rate)
{
    *conn_rate = *msg_rate = 0;
    for (const dispatcher *d = rq->dispatchers; d; d = d->next) {
        if (d->phase == PHASE_CONNECTION_RATE_THROTTLED)
            (*conn_rate)++;
        else if (d->phase == PHASE_MESSAGE_RATE_THROTTLED)
            (*msg_rate)++;
    }
}

json_t *dispatch_describe(const readyq *rq)
{
    json_t *a = json_array();
    int64_t now = clock_mono_ns(), wall = clock_wall_ns();
    for (const dispatcher *d = rq->dispatchers; d; d = d->next) {
        json_t *o = json_object();
        char buf[96];
        json_object_set_new(o, "session_id", json_string(d->session_id));
        json_object_set_new(o, "started_at",
                            json_string(admin_format_time(
                                d->started_wall_ns ? d->started_wall_ns : wall, buf, sizeof(buf))));
        duration_format(now - d->started_ns, buf, sizeof(buf));
        json_object_set_new(o, "age", json_string(buf));
        json_t *phase;
        if (d->phase == PHASE_ACQUIRING_LEASE)
            phase = json_pack("{s:{s:s}}", "AcquiringLease", "label", d->detail);
        else if (d->phase == PHASE_ACCUMULATING_BATCH) {
            unsigned have = 0, want = 0;
            sscanf(d->detail, "%u/%u", &have, &want);
            phase = json_pack("{s:{s:I,s:I}}", "AccumulatingBatch", "have", (json_int_t)have,
                              "want", (json_int_t)want);
        } else
            phase = json_string(phase_names[d->phase]);
        json_object_set_new(o, "phase", phase);
        json_object_set_new(o, "detail", d->detail[0] ? json_string(d->detail) : json_null());
        duration_format(now - d->phase_ns, buf, sizeof(buf));
        json_object_set_new(o, "time_in_current_phase", json_string(buf));
        json_object_set_new(o, "messages_delivered", json_integer((json_int_t)d->n_delivered));
        json_object_set_new(o, "messages_transfailed", json_integer((json_int_t)d->n_transfailed));
        json_object_set_new(o, "messages_failed", json_integer((json_int_t)d->n_failed));
        json_object_set_new(o, "delivered_this_connection",
                            json_integer(d->delivered >= INT32_MAX / 4 ? 0 : d->delivered));
        double age_s = (double)(now - d->started_ns) / (double)NS_PER_SEC;
        json_object_set_new(o, "overall_rate_per_sec",
                            json_real(age_s > 0 ? (double)d->n_delivered / age_s : 0.0));
        json_array_append_new(a, o);
    }
    return a;
}

const char *dispatcher_phase_name(int p);
const char *dispatcher_phase_name(int p)
{
    return p >= 0 && p <= PHASE_CLOSING ? phase_names[p] : "Unknown";
}

void disp_free_all(readyq *rq)
{
    while (rq->dispatchers) {
        dispatcher *d = rq->dispatchers;
        /* also a dispatcher whose open failed but still holds its
         * driver state (the resolver gave up on shutdown) */
        if (d->drv->abort && (d->open || d->opening || d->drv_state))
            d->drv->abort(d);
        if (d->cur && !d->loading)
            qmsg_free(d->cur);
        if (d->ahead && !d->ahead_loading)
            qmsg_free(d->ahead);
        /* batch messages whose spool load is under way are freed by it */
        for (size_t i = 0; i < d->n_batch; i++)
            if (d->batch[i].q && !d->batch[i].in_load)
                qmsg_free(d->batch[i].q);
        free(d->batch);
        rq->dispatchers = d->next;
        rqlease_cancel(rq, d);
        rqleases_release(d->leases);
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
}
