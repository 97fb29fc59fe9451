/* The Lua side of Redis and throttles: `require 'redis'` (redis.open and
 * conn:query), kumo.configure_redis_throttles, and kumo.make_throttle with
 * :throttle(), :sleep_if_throttled() and :delay_message_if_throttled(msg)
 * (docs/reference/redis/, kumo/configure_redis_throttles.md,
 * kumo/make_throttle.md).
 *
 * Threads: runs on the reactor of the calling VM. conn:query and a shared
 * throttle yield the calling coroutine while Redis answers (net/redis.c
 * resumes it on this reactor); nothing here blocks. Failures: a bad
 * parameter, a bad throttle spec or a Redis error reply is a Lua error
 * naming the function; a throttle whose Redis does not answer is
 * evaluated in-process (net/shthrottle.h). */
#include "lua/redis_lua.h"

#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

#include "core/duration.h"
#include "core/reactor.h"
#include "lua/klua.h"
#include "lua/message_lua.h"
#include "msg/message.h"
#include "net/redis.h"
#include "net/shthrottle.h"

#define CONN_MT "kumod.redis.conn"
#define THROTTLE_MT "kumod.throttle"

/* ---- parameters (redis.open and configure_redis_throttles) --------------------------- */

static int64_t opt_duration(lua_State *L, int t, const char *key, const char *fname)
{
    lua_getfield(L, t, key);
    int64_t ns = 0;
    if (!lua_isnil(L, -1)) {
        const char *s = lua_tostring(L, -1);
        if (!s || duration_parse(s, &ns) != 0 || ns <= 0)
            luaL_error(L, "%s: %s: invalid duration '%s'", fname, key,
                       s ? s : luaL_typename(L, -1));
    }
    lua_pop(L, 1);
    return ns;
}

static const char *opt_string(lua_State *L, int t, const char *key, const char *fname)
{
    lua_getfield(L, t, key);
    const char *s = NULL;
    if (!lua_isnil(L, -1)) {
        if (lua_type(L, -1) != LUA_TSTRING)
            luaL_error(L, "%s: %s must be a string", fname, key);
        s = lua_tostring(L, -1);
    }
    lua_pop(L, 1); /* the table keeps the string alive */
    return s;
}

static redis_cfg *cfg_from_params(lua_State *L, int t, const char *fname)
{
    t = lua_absindex(L, t);
    luaL_checktype(L, t, LUA_TTABLE);
    static const char *const known[] = {"node",           "pool_size",       "read_from_replicas",
                                        "username",       "password",        "connect_timeout",
                                        "wait_timeout",   "response_timeout", "recycle_timeout",
                                        "cluster",        NULL};
    lua_pushnil(L);
    while (lua_next(L, t)) {
        bool ok = false;
        if (lua_type(L, -2) == LUA_TSTRING)
            for (int i = 0; known[i]; i++)
                ok = ok || strcmp(known[i], lua_tostring(L, -2)) == 0;
        if (!ok)
            luaL_error(L, "%s: unknown field '%s'", fname, luaL_tolstring(L, -2, NULL));
        lua_pop(L, 1);
    }
    const char *urls[64];
    size_t n = 0;
    lua_getfield(L, t, "node");
    if (lua_type(L, -1) == LUA_TSTRING) {
        urls[n++] = lua_tostring(L, -1);
    } else if (lua_type(L, -1) == LUA_TTABLE) {
        lua_Integer len = luaL_len(L, -1);
        if (len < 1 || len > 64)
            luaL_error(L, "%s: node must list 1 to 64 urls", fname);
        for (lua_Integer i = 1; i <= len; i++) {
            lua_rawgeti(L, -1, i);
            if (lua_type(L, -1) != LUA_TSTRING)
                luaL_error(L, "%s: node[%d] must be a string", fname, (int)i);
            urls[n++] = lua_tostring(L, -1);
            lua_pop(L, 1); /* the node table keeps it */
        }
    } else {
        luaL_error(L, "%s: node is required (a redis url or a list of them)", fname);
    }
    redis_cfg_params p = {.urls = urls, .n_urls = n, .cluster = -1};
    lua_getfield(L, t, "cluster");
    if (!lua_isnil(L, -1)) {
        if (!lua_isboolean(L, -1))
            luaL_error(L, "%s: cluster must be a boolean", fname);
        p.cluster = lua_toboolean(L, -1);
    }
    lua_pop(L, 1);
    lua_getfield(L, t, "pool_size");
    if (!lua_isnil(L, -1) && (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 0))
        luaL_error(L, "%s: pool_size must be a non-negative integer", fname);
    lua_pop(L, 1);
    p.username = opt_string(L, t, "username", fname);
    p.password = opt_string(L, t, "password", fname);
    p.connect_timeout_ns = opt_duration(L, t, "connect_timeout", fname);
    p.response_timeout_ns = opt_duration(L, t, "response_timeout", fname);
    opt_duration(L, t, "wait_timeout", fname);
    opt_duration(L, t, "recycle_timeout", fname);
    char err[512];
    redis_cfg *c = redis_cfg_new(&p, err, sizeof(err));
    lua_pop(L, 1); /* node */
    if (!c)
        luaL_error(L, "%s: %s", fname, err);
    return c;
}

/* ---- redis.open / conn:query ---------------------------------------------------------- */

typedef struct lconn {
    redis_cfg *cfg;
} lconn;

static int l_open(lua_State *L)
{
    redis_cfg *c = cfg_from_params(L, 1, "redis.open");
    lconn *u = lua_newuserdatauv(L, sizeof(*u), 0);
    u->cfg = c;
    luaL_setmetatable(L, CONN_MT);
    return 1;
}

static int conn_gc(lua_State *L)
{
    lconn *u = luaL_checkudata(L, 1, CONN_MT);
    redis_cfg_unref(u->cfg);
    u->cfg = NULL;
    return 0;
}

static void push_reply(lua_State *L, const redisReply *r, int depth)
{
    lua_checkstack(L, 4);
    switch (r->type) {
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
        lua_pushlstring(L, r->str, r->len);
        break;
    case REDIS_REPLY_INTEGER:
        lua_pushinteger(L, r->integer);
        break;
    case REDIS_REPLY_ARRAY:
        lua_createtable(L, (int)(r->elements < 1000000 ? r->elements : 0), 0);
        for (size_t i = 0; i < r->elements; i++) {
            if (depth > 32)
                lua_pushnil(L);
            else
                push_reply(L, r->element[i], depth + 1);
            lua_rawseti(L, -2, (lua_Integer)i + 1);
        }
        break;
    default: /* nil */
        lua_pushnil(L);
        break;
    }
}

/* The coroutine resumes with (ok, value). */
static int resume_k(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    (void)ctx;
    int top = lua_gettop(L);
    if (!lua_toboolean(L, top - 1))
        return lua_error(L);
    return 1;
}

struct query_wait {
    klua_wait w;
    bool done_gone, call_gone;
};

static void query_release(struct query_wait *q)
{
    if (q->done_gone && q->call_gone)
        free(q);
}

static void query_cancel(klua_wait *w)
{
    struct query_wait *q = (struct query_wait *)w;
    q->call_gone = true;
    query_release(q);
}

static void query_done(const redisReply *r, const char *err, void *ud)
{
    struct query_wait *q = ud;
    q->done_gone = true;
    if (q->call_gone) {
        query_release(q);
        return;
    }
    klua_call *c = q->w.call;
    klua_wait_unpark(&q->w);
    free(q);
    lua_State *co = klua_call_thread(c);
    lua_checkstack(co, 8);
    if (!r) {
        lua_pushboolean(co, 0);
        lua_pushfstring(co, "redis query: %s", err ? err : "failed");
    } else if (r->type == REDIS_REPLY_ERROR) {
        lua_pushboolean(co, 0);
        lua_pushfstring(co, "redis query: %s", r->str);
    } else {
        lua_pushboolean(co, 1);
        push_reply(co, r, 0);
    }
    klua_wait_resume(c, 2);
}

static int l_query(lua_State *L)
{
    lconn *u = luaL_checkudata(L, 1, CONN_MT);
    int argc = lua_gettop(L) - 1;
    if (argc < 1)
        return luaL_error(L, "conn:query: a command is required");
    if (argc > 4096)
        return luaL_error(L, "conn:query: too many arguments");
    const char **argv = lua_newuserdatauv(L, sizeof(char *) * (size_t)argc, 0);
    size_t *lens = lua_newuserdatauv(L, sizeof(size_t) * (size_t)argc, 0);
    for (int i = 0; i < argc; i++) {
        int t = lua_type(L, i + 2);
        if (t == LUA_TBOOLEAN) {
            lua_pushstring(L, lua_toboolean(L, i + 2) ? "1" : "0");
            lua_replace(L, i + 2);
        } else if (t != LUA_TSTRING && t != LUA_TNUMBER)
            return luaL_error(L, "conn:query: argument #%d must be a string or a number, not %s",
                              i + 1, luaL_typename(L, i + 2));
        argv[i] = lua_tolstring(L, i + 2, &lens[i]);
    }
    klua_call *c = reactor_current() ? klua_wait_begin(L) : NULL;
    if (!c)
        return luaL_error(L, "conn:query: may only be called from an event handler");
    struct query_wait *q = calloc(1, sizeof(*q));
    if (!q)
        return luaL_error(L, "conn:query: out of memory");
    klua_wait_park(&q->w, c, query_cancel);
    /* the key is the first argument after the command for nearly every
     * command; others go to any node in a cluster */
    if (redis_command(u->cfg, "query", argc, argv, lens, argc > 1 ? 1 : -1, query_done, q) != 0) {
        klua_wait_unpark(&q->w);
        free(q);
        return luaL_error(L, "conn:query: not on a reactor");
    }
    return lua_yieldk(L, 0, 0, resume_k);
}

static int l_redis_open_module(lua_State *L)
{
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, l_open);
    lua_setfield(L, -2, "open");
    return 1;
}

/* ---- kumo.configure_redis_throttles ----------------------------------------------------- */

static int l_configure_redis_throttles(lua_State *L)
{
    /* the page says it "should" be called from init; anywhere else it
     * applies from then on, as there */
    redis_cfg *c = cfg_from_params(L, 1, "kumo.configure_redis_throttles");
    shthrottle_configure(c);
    return 0;
}

/* ---- kumo.make_throttle ------------------------------------------------------------------- */

typedef struct lthrottle {
    throttle_spec spec;
    char name[];
} lthrottle;

static int l_make_throttle(lua_State *L)
{
    size_t nlen;
    const char *name = luaL_checklstring(L, 1, &nlen);
    const char *spec = luaL_checkstring(L, 2);
    if (nlen > 1000)
        return luaL_error(L, "kumo.make_throttle: the name is longer than 1000 bytes");
    throttle_spec ts;
    if (throttle_spec_parse(spec, &ts) != 0)
        return luaL_error(L, "kumo.make_throttle: invalid throttle spec '%s' (expected e.g. "
                             "\"100/s\", \"local:5,000/hour\" or \"60/minute,max_burst=1\")",
                          spec);
    lthrottle *t = lua_newuserdatauv(L, sizeof(*t) + nlen + 1, 0);
    t->spec = ts;
    memcpy(t->name, name, nlen + 1);
    luaL_setmetatable(L, THROTTLE_MT);
    return 1;
}

static void push_result(lua_State *L, const shthrottle_result *r)
{
    lua_createtable(L, 0, 5);
    lua_pushboolean(L, r->throttled);
    lua_setfield(L, -2, "throttled");
    lua_pushinteger(L, (lua_Integer)r->limit);
    lua_setfield(L, -2, "limit");
    lua_pushinteger(L, (lua_Integer)r->remaining);
    lua_setfield(L, -2, "remaining");
    lua_pushnumber(L, (double)r->reset_after_ns / 1e9);
    lua_setfield(L, -2, "reset_after");
    if (r->throttled) {
        lua_pushnumber(L, (double)r->retry_after_ns / 1e9);
        lua_setfield(L, -2, "retry_after");
    }
}

struct take_wait {
    klua_wait w;
    bool done_gone, call_gone;
};

static void take_cancel(klua_wait *w)
{
    struct take_wait *q = (struct take_wait *)w;
    q->call_gone = true;
    if (q->done_gone)
        free(q);
}

static void take_done(const shthrottle_result *r, void *ud)
{
    struct take_wait *q = ud;
    q->done_gone = true;
    if (q->call_gone) {
        free(q);
        return;
    }
    klua_call *c = q->w.call;
    klua_wait_unpark(&q->w);
    free(q);
    lua_State *co = klua_call_thread(c);
    lua_checkstack(co, 8);
    lua_pushboolean(co, 1);
    push_result(co, r);
    klua_wait_resume(c, 2);
}

static int l_throttle(lua_State *L)
{
    lthrottle *t = luaL_checkudata(L, 1, THROTTLE_MT);
    shthrottle_result r;
    /* a shared throttle waits for Redis: only where the coroutine may yield
     * (an event handler); elsewhere (the policy's main chunk) in-process */
    if (!reactor_current() || !lua_isyieldable(L) || !klua_current_call(L)) {
        shthrottle_take_local(t->name, &t->spec, 1, clock_wall_ns(), &r);
        push_result(L, &r);
        return 1;
    }
    struct take_wait *q = calloc(1, sizeof(*q));
    if (!q)
        return luaL_error(L, "throttle: out of memory");
    /* take_done never runs before this returns (net/redis.h) */
    if (shthrottle_take(t->name, &t->spec, 1, &r, take_done, q) == 0) {
        free(q);
        push_result(L, &r);
        return 1;
    }
    klua_call *c = klua_wait_begin(L);
    klua_wait_park(&q->w, c, take_cancel);
    return lua_yieldk(L, 0, 0, resume_k);
}

/* :delay_message_if_throttled(msg) sets the due time: the scheduled queue
 * (throttle_insert_ready_queue) sees it moved and delays the message. */
static int l_msg_delay_to(lua_State *L)
{
    message *m = klua_check_message(L, 1);
    double secs = luaL_checknumber(L, 2);
    if (secs < 0)
        secs = 0;
    int64_t due = clock_wall_ns() + (int64_t)(secs * 1e9);
    m->due_ns = due > 0 ? due : 1;
    return 0;
}

static const char THROTTLE_LUA[] =
    "local T, sleep, delay_to = ...\n"
    "function T.sleep_if_throttled(self)\n"
    "  local was = false\n"
    "  while true do\n"
    "    local r = self:throttle()\n"
    "    if not r.throttled then return was end\n"
    "    was = true\n"
    "    sleep(r.retry_after)\n"
    "  end\n"
    "end\n"
    "function T.delay_message_if_throttled(self, msg)\n"
    "  local r = self:throttle()\n"
    "  if r.throttled then delay_to(msg, r.retry_after) return true end\n"
    "  return false\n"
    "end\n";

static int throttle_tostring(lua_State *L)
{
    lthrottle *t = luaL_checkudata(L, 1, THROTTLE_MT);
    lua_pushfstring(L, "Throttle(%s)", t->name);
    return 1;
}

static void redis_lua_open(lua_State *L)
{
    int kumo = lua_absindex(L, -1);
    lua_pushcfunction(L, l_configure_redis_throttles);
    lua_setfield(L, kumo, "configure_redis_throttles");
    lua_pushcfunction(L, l_make_throttle);
    lua_setfield(L, kumo, "make_throttle");

    if (luaL_newmetatable(L, CONN_MT)) {
        lua_pushcfunction(L, conn_gc);
        lua_setfield(L, -2, "__gc");
        lua_createtable(L, 0, 1);
        lua_pushcfunction(L, l_query);
        lua_setfield(L, -2, "query");
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);

    if (luaL_newmetatable(L, THROTTLE_MT)) {
        lua_pushcfunction(L, throttle_tostring);
        lua_setfield(L, -2, "__tostring");
        lua_createtable(L, 0, 3);
        lua_pushcfunction(L, l_throttle);
        lua_setfield(L, -2, "throttle");
        /* the waiting methods in Lua over :throttle() and kumo.time.sleep */
        if (luaL_loadbuffer(L, THROTTLE_LUA, sizeof(THROTTLE_LUA) - 1, "=throttle") != LUA_OK)
            lua_error(L);
        lua_pushvalue(L, -2);
        lua_getfield(L, kumo, "time");
        lua_getfield(L, -1, "sleep");
        lua_remove(L, -2);
        lua_pushcfunction(L, l_msg_delay_to);
        lua_call(L, 3, 0);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);

    /* require 'redis' */
    luaL_requiref(L, "redis", l_redis_open_module, 0);
    lua_pop(L, 1);
}

void redis_lua_register(void)
{
    klua_register_opener(redis_lua_open);
}
