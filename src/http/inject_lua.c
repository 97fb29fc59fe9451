/* The injection API from Lua. inject_v1 hands the request table, as JSON,
 * to the same core as POST /api/inject/v1 (http/inject.h) with KumoMTA's
 * origin for it: 127.0.0.1, the local-system identity "kumomta.internal",
 * no listener (no received_via, no hostname meta). The call waits for the
 * synced saves as the HTTP request does; the result is the response table,
 * any refusal of the request a Lua error. set_httpinject_recipient_rate_limit
 * sets http/inject_limit.c's throttle. Reactor threads. */
#include "http/inject_lua.h"

#include <lauxlib.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "core/reactor.h"
#include "core/throttle.h"
#include "http/inject.h"
#include "http/inject_limit.h"
#include "lua/klua.h"
#include "lua/luajson.h"

static int l_set_rate_limit(lua_State *L)
{
    if (lua_isnoneornil(L, 1)) {
        inject_limit_set(NULL);
        return 0;
    }
    if (lua_type(L, 1) != LUA_TSTRING)
        return luaL_error(L, "kumo.set_httpinject_recipient_rate_limit: expected a throttle "
                             "specification string or nil, not %s",
                          luaL_typename(L, 1));
    const char *s = lua_tostring(L, 1);
    throttle_spec spec;
    if (throttle_spec_parse(s, &spec) != 0)
        return luaL_error(L, "kumo.set_httpinject_recipient_rate_limit: invalid throttle '%s'",
                          s);
    inject_limit_set(&spec);
    return 0;
}

/* ---- kumo.api.inject.inject_v1 -------------------------------------------------------------- */

typedef struct lua_inject {
    bool done;       /* the outcome is in */
    bool waiting;    /* the coroutine yielded; resume it */
    klua_call *call; /* when waiting */
    int status;
    json_t *result;
    char *error;
} lua_inject;

/* Pushes the outcome: the result table, or (status != 200) nil and the
 * error text for the continuation to raise. Frees x. */
static int push_outcome(lua_State *L, lua_inject *x)
{
    int n;
    if (x->status == 200) {
        klua_push_json(L, x->result);
        n = 1;
    } else {
        lua_pushnil(L);
        lua_pushfstring(L, "kumo.api.inject.inject_v1: %s", x->error ? x->error : "failed");
        n = 2;
    }
    json_decref(x->result);
    free(x->error);
    free(x);
    return n;
}

static void inject_done(void *ud, int status, json_t *result_take, const char *error, bool deser)
{
    (void)deser;
    lua_inject *x = ud;
    x->done = true;
    x->status = status;
    x->result = result_take;
    x->error = error ? strdup(error) : NULL;
    if (!x->waiting)
        return; /* inject_v1 is still on the stack and picks it up */
    klua_call *c = x->call;
    lua_State *co = klua_call_thread(c);
    int n = push_outcome(co, x);
    klua_wait_resume(c, n);
}

static int inject_k(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    (void)ctx;
    /* the outcome is on top: the result table, or nil and the error */
    if (lua_type(L, -1) == LUA_TSTRING && lua_isnil(L, -2))
        return lua_error(L);
    return 1;
}

static int l_inject_v1(lua_State *L)
{
    if (lua_type(L, 1) != LUA_TTABLE)
        return luaL_error(L, "kumo.api.inject.inject_v1: the request must be a table, not %s",
                          luaL_typename(L, 1));
    reactor *r = reactor_current();
    klua_call *c = klua_current_call(L);
    if (!r || !lua_isyieldable(L) || !c || klua_call_thread(c) != L)
        return luaL_error(L, "kumo.api.inject.inject_v1: may only be called from an event "
                             "handler");
    char err[256];
    json_t *body = klua_to_json(L, 1, err, sizeof(err));
    if (!body)
        return luaL_error(L, "kumo.api.inject.inject_v1: %s", err);
    if (!json_is_object(body)) {
        json_decref(body);
        return luaL_error(L, "kumo.api.inject.inject_v1: the request must be a table with "
                             "named fields");
    }
    lua_inject *x = calloc(1, sizeof(*x));
    json_t *auth = json_pack("{s:s, s:[{s:s, s:s}], s:[]}", "peer_address", "127.0.0.1",
                             "identities", "identity", "kumomta.internal", "context",
                             "LocalSystem", "groups");
    if (!x || !auth) {
        free(x);
        json_decref(auth);
        json_decref(body);
        return luaL_error(L, "kumo.api.inject.inject_v1: out of memory");
    }
    inject_origin o = {.peer_ip = "127.0.0.1", .local_ip = NULL, .hostname = NULL,
                       .auth = auth, .r = r};
    inject_v1_start(body, &o, inject_done, x);
    json_decref(auth);
    if (x->done) {
        int n = push_outcome(L, x);
        return inject_k(L, LUA_OK, n);
    }
    /* the saves are under way: wait for them */
    x->call = klua_wait_begin(L);
    x->waiting = true;
    return lua_yieldk(L, 0, 0, inject_k);
}

static void inject_lua_open(lua_State *L)
{
    lua_pushcfunction(L, l_set_rate_limit);
    lua_setfield(L, -2, "set_httpinject_recipient_rate_limit");
    luaL_getsubtable(L, -1, "api");
    luaL_getsubtable(L, -1, "inject");
    lua_pushcfunction(L, l_inject_v1);
    lua_setfield(L, -2, "inject_v1");
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    lua_pushvalue(L, -2);
    lua_setfield(L, -2, "kumo.api.inject");
    lua_pop(L, 3);
}

void inject_lua_register(void)
{
    klua_register_opener(inject_lua_open);
}
