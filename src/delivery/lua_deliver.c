/* custom_lua delivery. open() runs the constructor event named by the queue
 * config with (domain, tenant, campaign) and keeps the returned object in the
 * VM's registry; send() calls object:send(message) in a coroutine, so a
 * handler may wait without blocking the reactor. With batch_size > 1 the
 * dispatcher hands over batches instead and send_batch() calls
 * object:send_batch(messages); its result applies to every message. The return string is the
 * delivery response (code 200); kumo.reject(4xx) is a transient failure
 * (421 also closes), kumo.reject(5xx) a bounce; any other error (a missing
 * method too) is a transient failure without a peer in its record and
 * closes the connection. Runs on the ready queue's
 * reactor. */
#include "delivery/lua_deliver.h"

#include <lauxlib.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/diag.h"
#include "lua/klua.h"
#include "lua/message_lua.h"
#include "queue/dispatch.h"

#define LMOD "kumod::lua_deliver"

typedef struct lua_conn {
    klua *vm;
    int obj_ref;
    klua_call *call;
    char peer_name[300];
} lua_conn;

static void lconn_free(lua_conn *lc)
{
    if (lc->vm) {
        if (lc->obj_ref != LUA_NOREF)
            luaL_unref(klua_state(lc->vm), LUA_REGISTRYINDEX, lc->obj_ref);
        klua_unref(lc->vm);
    }
    free(lc);
}

static void after_constructor(klua_call *c, int status, void *ud)
{
    dispatcher *d = ud;
    lua_conn *lc = disp_driver_state(d);
    lc->call = NULL;
    char content[1024];
    if (status != KLUA_OK) {
        DERROR(LMOD, "ready_queue=%s constructor %s failed: %s", disp_readyq_name(d),
               disp_queue_config(d)->constructor, klua_call_error(c));
        snprintf(content, sizeof(content), "KumoMTA internal: failed to connect: %s",
                 klua_call_error(c));
        disp_response r = {status == KLUA_REJECT ? klua_call_reject_code(c) : 400, 0, 0, 0,
                           content, NULL};
        disp_opened(d, false, &r);
        return;
    }
    lua_State *L = klua_call_thread(c);
    if (klua_call_nresults(c) < 1 || lua_type(L, 1) != LUA_TTABLE) {
        snprintf(content, sizeof(content),
                 "KumoMTA internal: error in deliver_message: invalid connection object");
        DERROR(LMOD, "ready_queue=%s constructor '%s' did not return a connection object (a "
                     "table with a send method)",
               disp_readyq_name(d), disp_queue_config(d)->constructor);
        disp_response r = {400, 0, 0, 0, content, NULL};
        disp_opened(d, false, &r);
        return;
    }
    /* anchor the object in the VM that made it (the coroutine is gone after this) */
    lua_State *main = klua_state(lc->vm);
    lua_xmove(L, main, 1);
    lc->obj_ref = luaL_ref(main, LUA_REGISTRYINDEX);
    /* the records of this connection name it (KumoMTA's ResolvedAddress
     * "Lua via <constructor>", 0.0.0.0) */
    disp_set_peer(d, lc->peer_name, "0.0.0.0");
    disp_opened(d, true, NULL);
}

static void ldeliver_open(dispatcher *d)
{
    lua_conn *lc = calloc(1, sizeof(*lc));
    if (!lc)
        abort();
    lc->obj_ref = LUA_NOREF;
    lc->vm = klua_current();
    klua_ref(lc->vm);
    snprintf(lc->peer_name, sizeof(lc->peer_name), "Lua via %s",
             disp_queue_config(d)->constructor);
    disp_set_driver_state(d, lc);
    const char *ctor = disp_queue_config(d)->constructor;
    disp_set_phase(d, PHASE_ATTEMPTING_CONNECTION, NULL);
    klua_call *c;
    lua_State *co = klua_call_begin(lc->vm, ctor, &c);
    const char *dom = disp_domain(d);
    lua_pushstring(co, dom ? dom : "");
    if (disp_tenant(d))
        lua_pushstring(co, disp_tenant(d));
    else
        lua_pushnil(co);
    if (disp_campaign(d))
        lua_pushstring(co, disp_campaign(d));
    else
        lua_pushnil(co);
    lc->call = c;
    klua_call_run(c, 3, after_constructor, d);
}

/* Any failure other than kumo.reject: a transient failure of the message
 * (or batch) whose record has no peer, and the connection closes (as
 * KumoMTA's dispatcher does when deliver_message fails). */
static void send_failed(dispatcher *d, const char *content)
{
    disp_response r = {400, 0, 0, 0, content, NULL};
    disp_set_peer(d, NULL, NULL);
    disp_close_after_this(d);
    disp_delivered(d, OUTCOME_TRANSIENT, &r);
}

static void after_send(klua_call *c, int status, void *ud)
{
    dispatcher *d = ud;
    lua_conn *lc = disp_driver_state(d);
    lc->call = NULL;
    if (status == KLUA_OK) {
        lua_State *L = klua_call_thread(c);
        const char *s = klua_call_nresults(c) >= 1 ? lua_tostring(L, 1) : NULL;
        disp_response r = {200, 0, 0, 0, s ? s : "", NULL};
        disp_delivered(d, OUTCOME_DELIVERED, &r);
        return;
    }
    if (status == KLUA_REJECT) {
        int code = klua_call_reject_code(c);
        disp_response r = {code, 0, 0, 0, klua_call_error(c), NULL};
        if (code == 421)
            disp_close_after_this(d); /* the policy's signal to close */
        disp_delivered(d, code >= 400 && code < 500 ? OUTCOME_TRANSIENT : OUTCOME_PERMANENT, &r);
        return;
    }
    DERROR(LMOD, "ready_queue=%s session=%s send failed: %s", disp_readyq_name(d),
           disp_session_id(d), klua_call_error(c));
    char content[1024];
    snprintf(content, sizeof(content), "KumoMTA internal: error in deliver_message: %s",
             klua_call_error(c));
    send_failed(d, content);
}

static void ldeliver_send(dispatcher *d, message *m)
{
    lua_conn *lc = disp_driver_state(d);
    disp_set_phase(d, PHASE_DELIVERING_MESSAGE, "lua: send");
    klua_call *c;
    lua_State *co = klua_call_begin_fn(lc->vm, "send", &c);
    lua_rawgeti(co, LUA_REGISTRYINDEX, lc->obj_ref);
    lua_getfield(co, -1, "send");
    if (lua_type(co, -1) != LUA_TFUNCTION) {
        lua_pop(co, 2);
        /* finish the (empty) call so it is freed */
        lua_pushnil(co);
        klua_call_run(c, 0, NULL, NULL);
        send_failed(d, "KumoMTA internal: error in deliver_message: sender:send method not "
                       "found");
        return;
    }
    lua_insert(co, -2); /* send, obj */
    klua_push_message(co, m);
    lc->call = c;
    klua_call_run(c, 2, after_send, d);
}

/* batch_size > 1: object:send_batch(messages), messages an array of the
 * batch's Message objects; the one result applies to every message. */
static void ldeliver_send_batch(dispatcher *d, message **msgs, size_t n)
{
    lua_conn *lc = disp_driver_state(d);
    disp_set_phase(d, PHASE_DELIVERING_MESSAGE, "lua: send_batch");
    klua_call *c;
    lua_State *co = klua_call_begin_fn(lc->vm, "send_batch", &c);
    lua_rawgeti(co, LUA_REGISTRYINDEX, lc->obj_ref);
    lua_getfield(co, -1, "send_batch");
    if (lua_type(co, -1) != LUA_TFUNCTION || n > INT_MAX) {
        lua_pop(co, 2);
        lua_pushnil(co);
        klua_call_run(c, 0, NULL, NULL);
        send_failed(d, "KumoMTA internal: error in deliver_message: sender:send_batch method "
                       "not found");
        return;
    }
    lua_insert(co, -2); /* send_batch, obj */
    lua_createtable(co, (int)n, 0);
    for (size_t i = 0; i < n; i++) {
        klua_push_message(co, msgs[i]);
        lua_rawseti(co, -2, (lua_Integer)i + 1);
    }
    lc->call = c;
    klua_call_run(c, 2, after_send, d);
}

static void ldeliver_close(dispatcher *d)
{
    lua_conn *lc = disp_driver_state(d);
    if (!lc)
        return;
    disp_set_driver_state(d, NULL);
    if (lc->call)
        klua_call_cancel(lc->call);
    if (lc->obj_ref != LUA_NOREF) {
        /* object:close() when it has one; nobody waits for it */
        klua_call *c;
        lua_State *co = klua_call_begin_fn(lc->vm, "close", &c);
        lua_rawgeti(co, LUA_REGISTRYINDEX, lc->obj_ref);
        lua_getfield(co, -1, "close");
        if (lua_type(co, -1) == LUA_TFUNCTION) {
            lua_insert(co, -2);
            klua_call_run(c, 1, NULL, NULL);
        } else {
            lua_settop(co, 0);
            lua_pushnil(co);
            klua_call_run(c, 0, NULL, NULL);
        }
    }
    lconn_free(lc);
}

static const disp_driver lua_driver = {
    .delivery_protocol = "Lua",
    .open = ldeliver_open,
    .send = ldeliver_send,
    .send_batch = ldeliver_send_batch,
    .close = ldeliver_close,
    .abort = ldeliver_close,
};

void lua_deliver_register(void)
{
    dispatch_register_driver(QPROTO_LUA, &lua_driver);
}
