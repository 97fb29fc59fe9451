/* Deferred SMTP injection (seed 002). Messages received on a listener with
 * deferred_queue = true wait in deferred_smtp_inject.kumomta.internal; this
 * driver runs smtp_server_message_deferred_inject(message, conn_meta) for
 * each, with the connection metadata rebuilt from the message's meta (the
 * listener copied it there at reception). Success rebinds the message into
 * its proper queue (DeferredInjectionRebind); kumo.reject with a 5xx code
 * bounces it; any other error is a TransientFailure (450) and the message
 * goes back to the deferred queue on its one-minute-base schedule. Runs on
 * the ready queue's reactor. */
#include "delivery/deferred.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/diag.h"
#include "lua/klua.h"
#include "lua/message_lua.h"
#include "queue/dispatch.h"

#define DMOD "kumod::deferred_inject"
#define DEFERRED_QUEUE "deferred_smtp_inject.kumomta.internal"

static void dfr_open(dispatcher *d)
{
    disp_opened(d, true, NULL);
}

typedef struct dfr_state {
    message *m;
    klua_call *call;
} dfr_state;

static void after_event(klua_call *c, int status, void *ud)
{
    dispatcher *d = ud;
    dfr_state *st = disp_driver_state(d);
    message *m = st->m;
    free(st);
    disp_set_driver_state(d, NULL);
    if (status == KLUA_OK) {
        disp_rebound(d);
        message_unref(m);
        return;
    }
    if (status == KLUA_REJECT && klua_call_reject_code(c) >= 500) {
        disp_response r = {klua_call_reject_code(c), 0, 0, 0, klua_call_error(c), NULL};
        message_unref(m);
        disp_delivered(d, OUTCOME_PERMANENT, &r);
        return;
    }
    if (status == KLUA_ERROR)
        DERROR(DMOD, "session=%s smtp_server_message_deferred_inject failed: %s",
               disp_session_id(d), klua_call_error(c));
    /* logged against the message's own queue, then back to the special
     * queue for another try */
    disp_set_requeue_queue(d, DEFERRED_QUEUE);
    char content[1024];
    snprintf(content, sizeof(content), "%s", klua_call_error(c));
    int code = status == KLUA_REJECT ? klua_call_reject_code(c) : 450;
    disp_response r = {code, 0, 0, 0, content, NULL};
    message_unref(m);
    disp_delivered(d, OUTCOME_TRANSIENT, &r);
}

static void dfr_send(dispatcher *d, message *m)
{
    disp_set_phase(d, PHASE_DELIVERING_MESSAGE, "deferred_inject: smtp_server_message_deferred_inject");
    /* the queue meta named the special queue: clear it so the normal rules apply */
    json_object_del(m->meta, "queue");
    m->meta_dirty = true;
    klua *vm = klua_current();
    if (!klua_has_handler(vm, "smtp_server_message_deferred_inject")) {
        disp_rebound(d);
        return;
    }
    dfr_state *st = calloc(1, sizeof(*st));
    if (!st)
        abort();
    message_ref(m);
    st->m = m;
    disp_set_driver_state(d, st);
    klua_call *c;
    lua_State *co = klua_call_begin(vm, "smtp_server_message_deferred_inject", &c);
    st->call = c;
    klua_push_message(co, m);
    json_t *conn = json_deep_copy(m->meta);
    klua_push_connmeta(co, conn);
    json_decref(conn);
    klua_call_run(c, 2, after_event, d);
}

static void dfr_close(dispatcher *d)
{
    dfr_state *st = disp_driver_state(d);
    if (!st)
        return;
    disp_set_driver_state(d, NULL);
    if (st->call)
        klua_call_cancel(st->call);
    message_unref(st->m);
    free(st);
}

static const disp_driver deferred_driver = {
    .delivery_protocol = "DeferredSmtpInjection",
    .bare_records = true,
    .open = dfr_open,
    .send = dfr_send,
    .close = dfr_close,
    .abort = dfr_close,
};

void deferred_register(void)
{
    dispatch_register_driver(QPROTO_DEFERRED_INJECT, &deferred_driver);
}
