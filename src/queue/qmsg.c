/* The queued message (qmsg) and what every part of the queue engine does
 * with one: insert reasons, log records, removal from the spool, and
 * loading its meta and data from the spool on demand.
 *
 * A qmsg is small (timer entry, list links, spool id, attempts, the last
 * insert reasons) and comes from one slab; while it waits only the qmsg is
 * in memory. qmsg_load() makes the message resident: the spool's reader
 * thread reads meta (and data), and the result is handed back to the
 * reactor that asked through its mailbox.
 *
 * Threads: a qmsg belongs to one reactor at a time (it moves as an owned
 * pointer); the load's spool callbacks run on a spool thread and touch only
 * their job. Failures: a load that fails reports its KERR_* code to the
 * caller's done callback, keeping a meta that loaded even when the data did
 * not (the failure is then logged against the message); a load still under
 * way when the queues shut down frees what it carries. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/kerr.h"
#include "core/slab.h"
#include "core/utf8.h"
#include "lua/services.h"
#include "queue/dispatch.h"
#include "queue/queue_int.h"
#include "spool/spool.h"

__thread bool queues_down;

const char *const reason_names[R__COUNT] = {
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
    "AdminSuspended",
};

int reason_parse(const char *s)
{
    for (int i = 0; i < R__COUNT; i++)
        if (strcmp(reason_names[i], s) == 0)
            return i;
    return R_RECEIVED;
}

void qmsg_add_reason(qmsg *q, int r)
{
    if (q->n_reasons && q->reasons[q->n_reasons - 1] == r)
        return; /* adjacent duplicates collapse */
    if (q->n_reasons == 4) {
        memmove(q->reasons, q->reasons + 1, 3);
        q->n_reasons = 3;
    }
    q->reasons[q->n_reasons++] = (uint8_t)r;
}

bool qmsg_has_reason(const qmsg *q, int r)
{
    for (int i = 0; i < q->n_reasons; i++)
        if (q->reasons[i] == r)
            return true;
    return false;
}

/* Every qmsg comes from one pool (see core/slab.h for why). */
static slab *qmsg_slab;

void qmsg_pool_init(void)
{
    if (!qmsg_slab && !(qmsg_slab = slab_new(sizeof(qmsg))))
        abort();
}

qmsg *qmsg_alloc(void)
{
    return slab_alloc(qmsg_slab);
}

qmsg *qmsg_new(message *m)
{
    qmsg *q = qmsg_alloc();
    q->m = m;
    q->id = m->id;
    q->num_attempts = (uint16_t)m->num_attempts;
    return q;
}

void qmsg_free(qmsg *q)
{
    message_unref(q->m);
    slab_release(qmsg_slab, q);
}

double qrand01(void)
{
    static __thread uint64_t s;
    if (!s)
        s = (uint64_t)clock_mono_ns() ^ (uint64_t)(uintptr_t)&s;
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return (double)(s >> 11) / 9007199254740992.0;
}

void qmsg_log(logrec_type t, message *m, uint32_t attempts, const rec_ctx *x,
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
    /* classified here rather than in logs_record, so that the ready queue
     * can keep the category of its last response without a second run of
     * the classifier */
    if (logrec_type_classifiable(t)) {
        const char *cat = logs_classify(&rec.response);
        rec.bounce_classification = cat ? cat : "Uncategorized";
    }
    logs_record(&rec);
    /* the ready queue's own outcome counts: records of a dispatch carry its
     * name as the site and are made on its owner reactor */
    const char *rq_name = x->readyq ? x->readyq : x->site;
    if (!queues_down && rq_name && strstr(rq_name, "->") &&
        (t == LOGREC_DELIVERY || t == LOGREC_BOUNCE || t == LOGREC_TRANSIENT_FAILURE)) {
        readyq *rq = readyq_find(rq_name);
        if (rq) {
            (*(t == LOGREC_DELIVERY ? &rq->n_delivered
               : t == LOGREC_BOUNCE ? &rq->n_failed
                                    : &rq->n_transfail))++;
            if (r->enh_class)
                snprintf(rq->last_resp, sizeof(rq->last_resp), "%d %d.%d.%d %s", r->code,
                         r->enh_class, r->enh_subject, r->enh_detail,
                         r->content ? r->content : "");
            else
                snprintf(rq->last_resp, sizeof(rq->last_resp), "%d %s", r->code,
                         r->content ? r->content : "");
            rq->last_resp_code = r->code;
            rq->last_resp_category = rec.bounce_classification; /* static; NULL: Delivery */
            rq->last_resp_ns = clock_wall_ns();
        }
    }
}

void qmsg_forget(qmsg *q)
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

void qmsg_forget_delivered(qmsg *q)
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

struct load_job {
    qmsg *q;
    reactor *r;
    load_done_fn done;
    void *ud;
    void (*ud_free)(void *ud); /* frees ud when the queues are down before done could run */
    bool in_place; /* q stays in its queue's list (inspection) */
    int err;
    char *meta;
    size_t meta_len;
    char *data;
    size_t data_len;
    bool want_data;
    int stage;
};

static void load_finish_on_reactor(void *arg)
{
    struct load_job *j = arg;
    qmsg *q = j->q;
    if (queues_down) {
        /* An in-place load (inspect) left its qmsg in a queue, freed with
         * it; any other qmsg was in flight and is this job's to free, and
         * so is what the caller handed to done. */
        if (!j->in_place)
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

static void load(qmsg *q, bool want_data, load_done_fn done, void *ud,
                 void (*ud_free)(void *ud), bool in_place)
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
    j->in_place = in_place;
    if (have_meta) {
        j->stage = 1;
        spool_load(sp, &q->id, true, load_step, j);
    } else {
        spool_load(sp, &q->id, false, load_step, j);
    }
}

void qmsg_load(qmsg *q, bool want_data, load_done_fn done, void *ud,
               void (*ud_free)(void *ud))
{
    load(q, want_data, done, ud, ud_free, false);
}

void qmsg_load_in_place(qmsg *q, bool want_data, load_done_fn done, void *ud)
{
    load(q, want_data, done, ud, NULL, true);
}

void qmsg_save_if_dirty(qmsg *q)
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

void qmsg_shrink(qmsg *q)
{
    if (!q->m)
        return;
    qmsg_save_if_dirty(q);
    if (q->m->data_dirty)
        return; /* could not save the data: keep it */
    message_unref(q->m);
    q->m = NULL;
}
