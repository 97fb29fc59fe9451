/* Log hook records into the queues: the sink of log/loghook. Each record a
 * hook takes becomes a message (sender and recipients of the original, the
 * hook's meta keys, `log_record` = the record, `reception_protocol` =
 * "LogRecord", the JSON record as its body) that the policy's
 * should_enqueue_log_record event sees; when it returns true the message
 * is saved to the spool (unless the hook has deferred_spool) and inserted
 * into the queue it names, from where a custom_lua protocol delivers it
 * like any message: retries, backoff, expiry and restarts come from the
 * queues and the spool.
 *
 * The save is lazy (spool_save_new_lazy): it costs no group commit of its
 * own but rides on the next one, ahead of what follows it in the writer's
 * queue. The SMTP server hands the hooks a Reception record before it
 * saves the message, so the record's message is in the message's own
 * synced group, and the 250 waits for it (loghook's barrier); a Delivery
 * or Bounce record's message goes ahead of the spool remove of the message
 * it reports. A crash therefore loses a record only together with the
 * event it records, which then happens (and is logged) again.
 *
 * Threads: the sink runs on the thread that logged the record, normally a
 * reactor (its VM runs the event); from elsewhere the item is posted to
 * reactor 0. The spool's completion comes back to that reactor. When the
 * event handler does not wait, the save is issued before logs_record
 * returns, so it is ahead of the spool remove that follows a Delivery or
 * Bounce record: a crash never keeps the removal and loses the record.
 * Failures (handler error, no spool, a failed save) are reported on the
 * diagnostic log with the hook's name and the record is dropped. */
#include "queue/hookq.h"

#include <lua.h>
#include <stdlib.h>
#include <string.h>

#include "core/diag.h"
#include "core/kerr.h"
#include "core/reactor.h"
#include "core/spoolid.h"
#include "lua/klua.h"
#include "lua/message_lua.h"
#include "lua/services.h"
#include "msg/queue_name.h"
#include "queue/queue.h"
#include "spool/spool.h"

#define HMOD "kumod::log_hook"

typedef struct hook_job {
    loghook_item *it;
    message *m;
    reactor *r;
    int err;
} hook_job;

static void job_free(hook_job *j)
{
    loghook_item_free(j->it);
    message_unref(j->m);
    free(j);
}

static void insert(hook_job *j)
{
    char *queue = queue_name_of_message(j->m);
    if (!queue) {
        DERROR(HMOD, "hook=%s cannot name the queue of the log record: out of memory",
               j->it->hook_name);
        job_free(j);
        return;
    }
    message *m = j->m;
    j->m = NULL;
    queue_insert(m, queue, "Received");
    free(queue);
    job_free(j);
}

static void saved_on_reactor(void *arg)
{
    hook_job *j = arg;
    if (j->err) {
        char hex[SPOOLID_HEX_LEN + 1];
        spoolid_to_hex(&j->m->id, hex);
        DERROR(HMOD, "id=%s hook=%s saving the log record message failed: %s", hex,
               j->it->hook_name, kerr_str(j->err));
        job_free(j);
        return;
    }
    insert(j);
}

static void saved(void *ud, int err)
{
    hook_job *j = ud; /* spool thread: back to the reactor */
    j->err = err;
    reactor_post(j->r, saved_on_reactor, j);
}

static void enqueue(hook_job *j)
{
    message *m = j->m;
    if (j->it->deferred_spool) {
        insert(j);
        return;
    }
    spool *sp = services_spool();
    size_t ml = 0;
    char *meta = sp ? message_meta_to_json(m, &ml) : NULL;
    char *data = meta ? malloc(m->data_len + 1) : NULL;
    if (!data) {
        DERROR(HMOD, "hook=%s cannot save the log record message: %s", j->it->hook_name,
               sp ? kerr_str(KERR_NOMEM) : "the spool is not open");
        free(meta);
        job_free(j);
        return;
    }
    memcpy(data, m->data, m->data_len);
    m->in_spool = true;
    m->meta_dirty = m->data_dirty = false;
    j->r = reactor_current();
    spool_save_new_lazy(sp, &m->id, meta, ml, data, m->data_len, saved, j);
}

static void after_event(klua_call *c, int status, void *ud)
{
    hook_job *j = ud;
    if (status != KLUA_OK) {
        DERROR(HMOD, "hook=%s Error while calling should_enqueue_log_record: %s",
               j->it->hook_name, klua_call_error(c));
        job_free(j);
        return;
    }
    lua_State *L = klua_call_thread(c);
    bool yes = klua_call_nresults(c) >= 1 && lua_toboolean(L, 1);
    if (!yes) {
        job_free(j);
        return;
    }
    enqueue(j);
}

/* The message of a record: what should_enqueue_log_record is given. */
static message *make_message(const loghook_item *it)
{
    json_t *rec = it->record;
    const char *sender = json_string_value(json_object_get(rec, "sender"));
    const json_t *rv = json_object_get(rec, "recipient");
    const char *one[1];
    const char **rcpts = one;
    size_t n = 0;
    if (json_is_string(rv)) {
        one[0] = json_string_value(rv);
        n = 1;
    } else if (json_is_array(rv) && json_array_size(rv) > 0) {
        rcpts = calloc(json_array_size(rv), sizeof(*rcpts));
        if (!rcpts)
            return NULL;
        size_t i;
        json_t *e;
        json_array_foreach(rv, i, e)
        {
            if (json_is_string(e))
                rcpts[n++] = json_string_value(e);
        }
    }
    message *m = NULL;
    if (n > 0) {
        spoolid id;
        spoolid_new(&id);
        m = message_new(&id, sender ? sender : "", rcpts, n);
    }
    if (rcpts != one)
        free(rcpts);
    if (!m)
        return NULL;
    json_t *meta = json_object_get(rec, "meta");
    if (json_is_object(meta))
        json_object_update(m->meta, meta);
    json_object_set(m->meta, "log_record", rec);
    json_object_set_new(m->meta, "reception_protocol", json_string("LogRecord"));
    m->meta_dirty = true;
    return m;
}

static void process(loghook_item *it)
{
    klua *vm = klua_current();
    if (!vm) {
        DERROR(HMOD, "hook=%s no policy to run should_enqueue_log_record; record dropped",
               it->hook_name);
        loghook_item_free(it);
        return;
    }
    if (!klua_has_handler(vm, "should_enqueue_log_record")) {
        /* nothing asks for the record: KumoMTA drops it too */
        loghook_item_free(it);
        return;
    }
    hook_job *j = calloc(1, sizeof(*j));
    message *m = j ? make_message(it) : NULL;
    if (!m) {
        if (j)
            DWARN(HMOD, "hook=%s a log record without recipients is not hooked", it->hook_name);
        else
            DERROR(HMOD, "hook=%s out of memory", it->hook_name);
        free(j);
        loghook_item_free(it);
        return;
    }
    message_set_data_take(m, it->text, it->len);
    m->data_dirty = true;
    it->text = NULL;
    j->it = it;
    j->m = m;
    klua_call *c;
    lua_State *co = klua_call_begin(vm, "should_enqueue_log_record", &c);
    klua_push_message(co, m);
    lua_pushstring(co, it->hook_name);
    klua_call_run(c, 2, after_event, j);
}

static void job_process(void *arg)
{
    process(arg);
}

void hookq_sink(loghook_item *it_take)
{
    if (reactor_current() && klua_current()) {
        process(it_take);
        return;
    }
    if (reactor_count() > 0) {
        reactor_post(reactor_get(0), job_process, it_take);
        return;
    }
    DERROR(HMOD, "hook=%s a record logged with no reactor running was dropped",
           it_take->hook_name);
    loghook_item_free(it_take);
}
