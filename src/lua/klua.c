/* Per-reactor Lua VMs and coroutine event dispatch. Each event call gets a
 * fresh coroutine anchored in the registry; the dispatch loop itself is a
 * small Lua function so that yields pass through chained handlers. A C
 * function that needs to wait stores nothing on the C stack: it records the
 * call (found through the coroutine's extra space) and yields; whoever
 * completes the wait resumes the coroutine on the owning reactor. A VM is
 * reference counted: calls in flight keep an old VM alive across a reload.
 * Runs on reactor threads only (or the main thread for --validate). */
#include "lua/klua.h"

#include <errno.h>
#include <event2/event.h>
#include <lauxlib.h>
#include <libgen.h>
#include <lualib.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/diag.h"
#include "core/reactor.h"
#include "lua/luajson.h"
#include "metrics/metrics.h"
#include "msg/msgtrace.h"

#define KLUA_MOD "kumod::lua"
#define KLUA_MAX_OPENERS 64
#define KLUA_REJECT_MT "kumod.Rejection"
#define KLUA_CONNMETA_MT "kumod.ConnectionMeta"

struct sleep_wait;

struct klua {
    lua_State *L;
    int refs;
    int reactor_idx;
    int dispatch_ref;
    int dispatch_traced_ref; /* the dispatcher that notes each handler (msgtrace.h) */
    struct sleep_wait *sleeps; /* pending kumo.time.sleep timers */
    klua_wait *waits;          /* other parked calls (klua_wait_park) */
};

struct klua_call {
    klua *vm;
    lua_State *co;
    int co_ref;
    const char *event; /* interned in the VM (anchored by the dispatch args) */
    char *event_copy;
    klua_done_fn done;
    void *ud;
    int nres;
    int status;
    int reject_code;
    int reject_disconnect; /* enum klua_disconnect, for kumo.disconnect */
    char *errmsg;
    bool running;
    bool waiting;
    int64_t started_ns;
    int extra_args; /* 1 when the dispatcher's event-name argument is on the stack */
    bool is_script; /* the main chunk of kumod --script: it is the policy, so kumo.on works */
    bool started;    /* resumed at least once: the dispatcher can no longer be swapped */
    msgtrace *trace; /* a sampled message is among the arguments: handlers are noted */
};

static klua_opener openers[KLUA_MAX_OPENERS];
static int n_openers;
static atomic_uint config_epoch;
static void (*reload_hook)(void);
static __thread bool tls_in_init;

static const char *const multi_events[] = {
    "pre_init",          "validate_config",        "get_queue_config",
    "requeue_message",   "throttle_insert_ready_queue", "should_enqueue_log_record",
    "get_acl_definition", NULL,
};

/* The dispatcher: chained events call handlers in registration order until
 * one returns non-nil; single events call their one handler. */
static const char dispatch_src[] =
    "local handlers, multi = ...\n"
    "return function(name, ...)\n"
    "  local hs = handlers[name]\n"
    "  if hs == nil then return nil end\n"
    "  if not multi[name] then return hs[1](...) end\n"
    "  for i = 1, #hs do\n"
    "    local r = table.pack(hs[i](...))\n"
    "    if name == 'requeue_message' then\n"
    "      -- every handler runs until one explicitly returns nil\n"
    "      if r.n > 0 and r[1] == nil then return nil end\n"
    "    elseif r[1] ~= nil then return table.unpack(r, 1, r.n) end\n"
    "  end\n"
    "  return nil\n"
    "end\n";

/* The same dispatcher for a call that carries a sampled message: note(name,
 * fn) records each handler before it runs (klua_call_trace swaps it in). */
static const char dispatch_traced_src[] =
    "local handlers, multi, note = ...\n"
    "return function(name, ...)\n"
    "  local hs = handlers[name]\n"
    "  if hs == nil then return nil end\n"
    "  if not multi[name] then note(name, hs[1]) return hs[1](...) end\n"
    "  for i = 1, #hs do\n"
    "    note(name, hs[i])\n"
    "    local r = table.pack(hs[i](...))\n"
    "    if name == 'requeue_message' then\n"
    "      if r.n > 0 and r[1] == nil then return nil end\n"
    "    elseif r[1] ~= nil then return table.unpack(r, 1, r.n) end\n"
    "  end\n"
    "  return nil\n"
    "end\n";

void klua_register_opener(klua_opener fn)
{
    if (n_openers < KLUA_MAX_OPENERS)
        openers[n_openers++] = fn;
}

bool klua_event_is_multi(const char *event)
{
    for (int i = 0; multi_events[i]; i++)
        if (strcmp(event, multi_events[i]) == 0)
            return true;
    return false;
}

/* ---- message traces (msgtrace.h) ---------------------------------------- */

void klua_where(lua_State *L, int level, char *buf, size_t len)
{
    lua_Debug ar;
    buf[0] = 0;
    if (lua_getstack(L, level, &ar) && lua_getinfo(L, "Sl", &ar) && ar.currentline > 0)
        snprintf(buf, len, "%s:%d", ar.short_src, ar.currentline);
}

/* note(name, fn) of the traced dispatcher: the handler about to run. */
static int l_trace_note(lua_State *L)
{
    klua_call *c = klua_current_call(L);
    if (!c || !c->trace)
        return 0;
    lua_Debug ar;
    char where[128] = "";
    lua_pushvalue(L, 2);
    if (lua_isfunction(L, -1) && lua_getinfo(L, ">S", &ar))
        snprintf(where, sizeof(where), "%s:%d", ar.short_src, ar.linedefined);
    else
        lua_pop(L, 1);
    msgtrace_add(c->trace, "handler", where, "%s", lua_tostring(L, 1) ? lua_tostring(L, 1) : "?");
    return 0;
}

void klua_call_trace(lua_State *co, msgtrace *t)
{
    klua_call *c = klua_current_call(co);
    if (!c || c->co != co || c->started || c->trace || c->extra_args != 1)
        return;
    c->trace = msgtrace_ref(t);
    lua_rawgeti(co, LUA_REGISTRYINDEX, c->vm->dispatch_traced_ref);
    lua_replace(co, 1);
}

/* ---- kumo.on ---------------------------------------------------------- */

static int l_kumo_on(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    klua_call *in_call = *(klua_call **)lua_getextraspace(L);
    if (in_call != NULL && !in_call->is_script)
        return luaL_error(L, "kumo.on('%s'): handlers must be registered when the policy is "
                             "loaded, not from inside an event handler", name);
    lua_getfield(L, LUA_REGISTRYINDEX, "kumod.handlers");
    lua_getfield(L, -1, name);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        lua_newtable(L);
        lua_pushvalue(L, -1);
        lua_setfield(L, -3, name);
    } else if (!klua_event_is_multi(name)) {
        return luaL_error(L, "kumo.on: event '%s' already has a handler; only one may be "
                             "registered for it", name);
    }
    lua_pushvalue(L, 2);
    lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
    return 0;
}

/* ---- kumo.reject ------------------------------------------------------ */

int klua_raise_reject(lua_State *L, int code, const char *msg)
{
    lua_createtable(L, 0, 2);
    lua_pushinteger(L, code);
    lua_setfield(L, -2, "code");
    lua_pushstring(L, msg);
    lua_setfield(L, -2, "message");
    luaL_setmetatable(L, KLUA_REJECT_MT);
    return lua_error(L);
}

static int l_kumo_reject(lua_State *L)
{
    lua_Integer code = luaL_checkinteger(L, 1);
    const char *msg = luaL_checkstring(L, 2);
    if (code < 200 || code > 599)
        return luaL_error(L, "kumo.reject: code %d is not an SMTP reply code", (int)code);
    return klua_raise_reject(L, (int)code, msg);
}

/* kumo.disconnect(CODE, MESSAGE [, REJECT_OR_DISCONNECT]): kumo.reject's
 * error with a "disconnect" field that the SMTP server reads back through
 * klua_call_reject_disconnect. Without the third argument the session is
 * dropped after the reply (the page's second example). */
static int l_kumo_disconnect(lua_State *L)
{
    lua_Integer code = luaL_checkinteger(L, 1);
    const char *msg = luaL_checkstring(L, 2);
    if (code < 200 || code > 599)
        return luaL_error(L, "kumo.disconnect: code %d is not an SMTP reply code", (int)code);
    static const char *const modes[] = {"ForceDisconnect", "FollowWith421", "If421", NULL};
    static const int values[] = {KLUA_DISCONNECT_FORCE, KLUA_DISCONNECT_FOLLOW_421,
                                 KLUA_DISCONNECT_IF_421};
    int mode = KLUA_DISCONNECT_FORCE;
    if (!lua_isnoneornil(L, 3))
        mode = values[luaL_checkoption(L, 3, NULL, modes)];
    lua_createtable(L, 0, 3);
    lua_pushinteger(L, code);
    lua_setfield(L, -2, "code");
    lua_pushstring(L, msg);
    lua_setfield(L, -2, "message");
    lua_pushinteger(L, mode);
    lua_setfield(L, -2, "disconnect");
    luaL_setmetatable(L, KLUA_REJECT_MT);
    return lua_error(L);
}

bool klua_is_reject(lua_State *L, int idx, int *code, const char **msg)
{
    if (!luaL_testudata(L, idx, KLUA_REJECT_MT)) {
        if (lua_type(L, idx) != LUA_TTABLE || !lua_getmetatable(L, idx))
            return false;
        luaL_getmetatable(L, KLUA_REJECT_MT);
        bool same = lua_rawequal(L, -1, -2);
        lua_pop(L, 2);
        if (!same)
            return false;
    }
    idx = lua_absindex(L, idx);
    lua_getfield(L, idx, "code");
    *code = (int)lua_tointeger(L, -1);
    lua_pop(L, 1);
    lua_getfield(L, idx, "message");
    *msg = lua_tostring(L, -1); /* anchored by the table */
    lua_pop(L, 1);
    return true;
}

static int l_reject_tostring(lua_State *L)
{
    int code;
    const char *msg;
    if (klua_is_reject(L, 1, &code, &msg))
        lua_pushfstring(L, "%d %s", code, msg ? msg : "");
    else
        lua_pushstring(L, "rejection");
    return 1;
}

/* ---- waiting ---------------------------------------------------------- */

static void klua_call_step(klua_call *c, int nargs);

klua_call *klua_wait_begin(lua_State *L)
{
    klua_call *c = *(klua_call **)lua_getextraspace(L);
    if (!c || c->co != L || !lua_isyieldable(L))
        return NULL;
    c->waiting = true;
    return c;
}

void klua_wait_resume(klua_call *c, int nres)
{
    klua_call_step(c, nres);
}

void klua_wait_park(klua_wait *w, klua_call *c, void (*cancel)(klua_wait *w))
{
    klua *vm = c->vm;
    w->call = c;
    w->cancel = cancel;
    w->prev = NULL;
    w->next = vm->waits;
    if (w->next)
        w->next->prev = w;
    vm->waits = w;
}

void klua_wait_unpark(klua_wait *w)
{
    klua *vm = w->call->vm;
    if (w->prev)
        w->prev->next = w->next;
    else
        vm->waits = w->next;
    if (w->next)
        w->next->prev = w->prev;
    w->next = w->prev = NULL;
}

struct sleep_wait {
    struct sleep_wait *next, *prev;
    klua_call *c;
    struct event *ev;
};

static void sleep_unlink(klua *vm, struct sleep_wait *w)
{
    if (w->prev)
        w->prev->next = w->next;
    else
        vm->sleeps = w->next;
    if (w->next)
        w->next->prev = w->prev;
}

static void sleep_done(evutil_socket_t fd, short what, void *arg)
{
    struct sleep_wait *w = arg;
    klua_call *c = w->c;
    sleep_unlink(c->vm, w);
    event_free(w->ev);
    free(w);
    klua_wait_resume(c, 0);
}

static int l_sleep(lua_State *L)
{
    double secs = luaL_checknumber(L, 1);
    if (secs < 0)
        secs = 0;
    klua_call *c = klua_wait_begin(L);
    reactor *r = reactor_current();
    if (!c || !r)
        return luaL_error(L, "kumo.time.sleep: may only be called from an event handler");
    struct sleep_wait *w = malloc(sizeof(*w));
    if (!w)
        return luaL_error(L, "kumo.time.sleep: out of memory");
    w->c = c;
    w->prev = NULL;
    w->next = c->vm->sleeps;
    if (w->next)
        w->next->prev = w;
    c->vm->sleeps = w;
    w->ev = evtimer_new(reactor_base(r), sleep_done, w);
    struct timeval tv = {(time_t)secs, (suseconds_t)((secs - (double)(time_t)secs) * 1e6)};
    evtimer_add(w->ev, &tv);
    return lua_yield(L, 0);
}

/* ---- small kumo.* functions ----------------------------------------- */

static int l_available_parallelism(lua_State *L)
{
    const char *env = getenv("KUMO_AVAILABLE_PARALLELISM");
    long n = env ? strtol(env, NULL, 10) : 0;
    if (n <= 0)
        n = sysconf(_SC_NPROCESSORS_ONLN);
    lua_pushinteger(L, n > 0 ? n : 1);
    return 1;
}

static int l_set_diag_filter(lua_State *L)
{
    const char *spec = luaL_checkstring(L, 1);
    if (diag_set_filter(spec) != 0)
        return luaL_error(L, "kumo.set_diagnostic_log_filter: invalid filter '%s'", spec);
    return 0;
}

static int l_bump_epoch(lua_State *L)
{
    klua_bump_epoch();
    return 0;
}

/* ---- conn_meta userdata ------------------------------------------------ */

void klua_push_connmeta(lua_State *L, json_t *obj)
{
    json_t **ud = lua_newuserdatauv(L, sizeof(json_t *), 0);
    *ud = json_incref(obj);
    luaL_setmetatable(L, KLUA_CONNMETA_MT);
}

json_t *klua_check_connmeta(lua_State *L, int idx)
{
    return *(json_t **)luaL_checkudata(L, idx, KLUA_CONNMETA_MT);
}

/* A connection's meta converts to a copy of its JSON object. */
static json_t *connmeta_to_json(lua_State *L, int idx)
{
    return json_deep_copy(klua_check_connmeta(L, idx));
}

static void add_json_converters(void)
{
    luajson_add_udata(KLUA_CONNMETA_MT, connmeta_to_json);
}

static int l_connmeta_gc(lua_State *L)
{
    json_t **ud = luaL_checkudata(L, 1, KLUA_CONNMETA_MT);
    json_decref(*ud);
    *ud = NULL;
    return 0;
}

static int l_connmeta_get(lua_State *L)
{
    json_t *o = klua_check_connmeta(L, 1);
    const char *k = luaL_checkstring(L, 2);
    klua_push_json(L, json_object_get(o, k));
    return 1;
}

static int l_connmeta_set(lua_State *L)
{
    json_t *o = klua_check_connmeta(L, 1);
    const char *k = luaL_checkstring(L, 2);
    char err[256];
    json_t *v = klua_to_json(L, 3, err, sizeof(err));
    if (!v)
        return luaL_error(L, "set_meta('%s'): %s", k, err);
    json_object_set_new(o, k, v);
    return 0;
}

static int l_connmeta_tostring(lua_State *L)
{
    json_t *o = klua_check_connmeta(L, 1);
    char *s = json_dumps(o, JSON_COMPACT);
    lua_pushstring(L, s ? s : "{}");
    free(s);
    return 1;
}

/* ---- VM life cycle ------------------------------------------------------ */

static int l_traceback_msgh(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);
    if (!msg)
        msg = luaL_tolstring(L, 1, NULL);
    luaL_traceback(L, L, msg, 1);
    return 1;
}

/* kumod's Lua share directory: PREFIX/share/kumod/lua beside the installed
 * binary (PREFIX/sbin/kumod), so an installation can be moved; the
 * configured KUMOD_LUA_SHARE_DIR when kumod runs from elsewhere (a build
 * tree). */
static pthread_once_t share_once = PTHREAD_ONCE_INIT;
static char share_dir[4096] = KUMOD_LUA_SHARE_DIR;

static void find_share_dir(void)
{
    char exe[sizeof(share_dir) - 32];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n <= 0)
        return;
    exe[n] = 0;
    char *slash = strrchr(exe, '/');
    if (!slash)
        return;
    *slash = 0; /* PREFIX/sbin */
    slash = strrchr(exe, '/');
    if (!slash || (strcmp(slash, "/sbin") != 0 && strcmp(slash, "/bin") != 0))
        return;
    *slash = 0;
    snprintf(share_dir, sizeof(share_dir), "%s/share/kumod/lua", exe);
}

static const char *lua_share_dir(void)
{
    pthread_once(&share_once, find_share_dir);
    return share_dir;
}

/* A VM with the kumo module and the dispatcher, and no policy loaded yet;
 * package.path starts with the directory of base_path. */
static klua *klua_new_vm(const char *base_path, int reactor_idx, char *err, size_t errlen)
{
    klua *vm = calloc(1, sizeof(*vm));
    if (!vm) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    vm->refs = 1;
    vm->reactor_idx = reactor_idx;
    lua_State *L = vm->L = luaL_newstate();
    if (!L) {
        free(vm);
        snprintf(err, errlen, "cannot create a Lua state");
        return NULL;
    }
    *(klua_call **)lua_getextraspace(L) = NULL;
    luaL_openlibs(L);

    luaL_newmetatable(L, KLUA_REJECT_MT);
    lua_pushcfunction(L, l_reject_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pop(L, 1);
    luaL_newmetatable(L, KLUA_CONNMETA_MT);
    static const luaL_Reg connmeta_methods[] = {
        {"get_meta", l_connmeta_get}, {"set_meta", l_connmeta_set}, {NULL, NULL}};
    luaL_newlib(L, connmeta_methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_connmeta_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, l_connmeta_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pop(L, 1);
    static pthread_once_t json_once = PTHREAD_ONCE_INIT;
    pthread_once(&json_once, add_json_converters);


    lua_newtable(L);
    lua_setfield(L, LUA_REGISTRYINDEX, "kumod.handlers");

    /* the kumo module */
    static const luaL_Reg kumo_fns[] = {
        {"on", l_kumo_on},
        {"reject", l_kumo_reject},
        {"disconnect", l_kumo_disconnect},
        {"available_parallelism", l_available_parallelism},
        {"set_diagnostic_log_filter", l_set_diag_filter},
        {"bump_config_epoch", l_bump_epoch},
        {"sleep", l_sleep},
        {NULL, NULL},
    };
    luaL_newlib(L, kumo_fns);
    lua_newtable(L);
    lua_pushcfunction(L, l_sleep);
    lua_setfield(L, -2, "sleep");
    lua_setfield(L, -2, "time");
    for (int i = 0; i < n_openers; i++)
        openers[i](L);
    lua_pushvalue(L, -1);
    lua_setglobal(L, "kumo");
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    lua_pushvalue(L, -2);
    lua_setfield(L, -2, "kumo");
    lua_pop(L, 2);

    /* package.path: the policy's own directory first, then kumod's Lua
     * share directory (its policy-extras helpers) and, as KumoMTA has them,
     * /opt/kumomta/etc/policy and /opt/kumomta/share, so that
     * require 'policy-extras.X' resolves on a standard layout; then Lua's
     * own defaults. KUMOD_LUA_PATH (tests, a build tree) goes before the
     * share directory. */
    char *dup = strdup(base_path);
    const char *dir = dup ? dirname(dup) : ".";
    const char *extra = getenv("KUMOD_LUA_PATH");
    const char *share = lua_share_dir();
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "path");
    lua_pushfstring(L,
                    "%s/?.lua;%s/?/init.lua;%s%s%s/?.lua;%s/?/init.lua;"
                    "/opt/kumomta/etc/policy/?.lua;/opt/kumomta/etc/policy/?/init.lua;"
                    "/opt/kumomta/share/?.lua;/opt/kumomta/share/?/init.lua;%s",
                    dir, dir, extra && *extra ? extra : "", extra && *extra ? ";" : "", share,
                    share, lua_tostring(L, -1));
    lua_setfield(L, -3, "path");
    lua_pop(L, 2);
    free(dup);

    /* dispatcher */
    if (luaL_loadbuffer(L, dispatch_src, sizeof(dispatch_src) - 1, "=kumod.dispatch") != LUA_OK)
        abort(); /* our own chunk: a bug */
    lua_getfield(L, LUA_REGISTRYINDEX, "kumod.handlers");
    lua_newtable(L);
    for (int i = 0; multi_events[i]; i++) {
        lua_pushboolean(L, 1);
        lua_setfield(L, -2, multi_events[i]);
    }
    lua_call(L, 2, 1);
    lua_pushvalue(L, -1);
    lua_setfield(L, LUA_REGISTRYINDEX, "kumod.dispatch");
    vm->dispatch_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    if (luaL_loadbuffer(L, dispatch_traced_src, sizeof(dispatch_traced_src) - 1,
                        "=kumod.dispatch") != LUA_OK)
        abort();
    lua_getfield(L, LUA_REGISTRYINDEX, "kumod.handlers");
    lua_newtable(L);
    for (int i = 0; multi_events[i]; i++) {
        lua_pushboolean(L, 1);
        lua_setfield(L, -2, multi_events[i]);
    }
    lua_pushcfunction(L, l_trace_note);
    lua_call(L, 3, 1);
    vm->dispatch_traced_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return vm;
}

klua *klua_load(const char *policy_path, int reactor_idx, char *err, size_t errlen)
{
    FILE *f = fopen(policy_path, "r");
    if (!f) {
        snprintf(err, errlen, "cannot open policy file %s: %s", policy_path, strerror(errno));
        return NULL;
    }
    fclose(f);
    klua *vm = klua_new_vm(policy_path, reactor_idx, err, errlen);
    if (!vm)
        return NULL;
    lua_State *L = vm->L;

    /* the policy itself */
    lua_pushcfunction(L, l_traceback_msgh);
    if (luaL_loadfile(L, policy_path) != LUA_OK) {
        snprintf(err, errlen, "%s", lua_tostring(L, -1));
        lua_close(L);
        free(vm);
        return NULL;
    }
    if (lua_pcall(L, 0, 0, -2) != LUA_OK) {
        snprintf(err, errlen, "%s", lua_tostring(L, -1));
        lua_close(L);
        free(vm);
        return NULL;
    }
    lua_pop(L, 1);
    return vm;
}

static void klua_call_free(klua_call *c);

klua *klua_load_script(const char *script_path, int reactor_idx, klua_call **out, char *err,
                       size_t errlen)
{
    klua *vm = klua_new_vm(script_path, reactor_idx, err, errlen);
    if (!vm)
        return NULL;
    klua_call *c;
    lua_State *co = klua_call_begin_fn(vm, "script", &c);
    if (luaL_loadfile(co, script_path) != LUA_OK) {
        snprintf(err, errlen, "%s", lua_tostring(co, -1));
        klua_call_free(c);
        klua_unref(vm);
        return NULL;
    }
    c->is_script = true;
    *out = c;
    return vm;
}


void klua_drop_waits(klua *vm)
{
    while (vm && vm->sleeps) {
        struct sleep_wait *w = vm->sleeps;
        sleep_unlink(vm, w);
        event_free(w->ev);
        klua_call *c = w->c;
        free(w);
        c->done = NULL;
        klua_call_free(c);
    }
    while (vm && vm->waits) {
        klua_wait *w = vm->waits;
        klua_call *c = w->call;
        klua_wait_unpark(w);
        w->cancel(w);
        c->done = NULL;
        klua_call_free(c);
    }
}

void klua_ref(klua *vm)
{
    vm->refs++;
}

void klua_unref(klua *vm)
{
    if (!vm || --vm->refs > 0)
        return;
    lua_close(vm->L);
    free(vm);
}

lua_State *klua_state(klua *vm)
{
    return vm->L;
}

klua *klua_call_vm(klua_call *c)
{
    return c->vm;
}

klua *klua_current(void)
{
    reactor *r = reactor_current();
    return r ? reactor_get_slot(r, REACTOR_SLOT_LUA) : NULL;
}

void klua_install(klua *vm)
{
    reactor *r = reactor_current();
    klua *old = reactor_get_slot(r, REACTOR_SLOT_LUA);
    klua_ref(vm);
    reactor_set_slot(r, REACTOR_SLOT_LUA, vm);
    klua_unref(old);
}

void klua_push_dispatcher(lua_State *L)
{
    lua_getfield(L, LUA_REGISTRYINDEX, "kumod.dispatch");
}

bool klua_has_handler(klua *vm, const char *event)
{
    lua_State *L = vm->L;
    lua_getfield(L, LUA_REGISTRYINDEX, "kumod.handlers");
    lua_getfield(L, -1, event);
    bool has = !lua_isnil(L, -1);
    lua_pop(L, 2);
    return has;
}

/* ---- calls --------------------------------------------------------------- */

lua_State *klua_call_begin(klua *vm, const char *event, klua_call **out)
{
    klua_call *c = calloc(1, sizeof(*c));
    if (!c) {
        fprintf(stderr, "kumod: out of memory starting a Lua call\n");
        abort();
    }
    c->vm = vm;
    klua_ref(vm);
    lua_State *L = vm->L;
    c->co = lua_newthread(L);
    c->co_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    c->event_copy = strdup(event);
    c->event = c->event_copy;
    *(klua_call **)lua_getextraspace(c->co) = c;
    lua_rawgeti(c->co, LUA_REGISTRYINDEX, vm->dispatch_ref);
    lua_pushstring(c->co, event);
    c->extra_args = 1;
    c->started_ns = clock_mono_ns();
    *out = c;
    return c->co;
}

lua_State *klua_call_begin_fn(klua *vm, const char *label, klua_call **out)
{
    klua_call *c = calloc(1, sizeof(*c));
    if (!c) {
        fprintf(stderr, "kumod: out of memory starting a Lua call\n");
        abort();
    }
    c->vm = vm;
    klua_ref(vm);
    lua_State *L = vm->L;
    c->co = lua_newthread(L);
    c->co_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    c->event_copy = strdup(label);
    c->event = c->event_copy;
    *(klua_call **)lua_getextraspace(c->co) = c;
    *out = c;
    return c->co;
}

static void klua_call_free(klua_call *c)
{
    lua_State *L = c->vm->L;
    *(klua_call **)lua_getextraspace(c->co) = NULL;
    luaL_unref(L, LUA_REGISTRYINDEX, c->co_ref);
    free(c->errmsg);
    free(c->event_copy);
    msgtrace_unref(c->trace);
    klua_unref(c->vm);
    free(c);
}

static void klua_call_step(klua_call *c, int nargs)
{
    int nres = 0;
    c->running = true;
    c->started = true;
    int rc = lua_resume(c->co, NULL, nargs, &nres);
    c->running = false;
    if (rc == LUA_YIELD && c->waiting) {
        /* A C function arranged its own wake-up. */
        c->waiting = false;
        lua_pop(c->co, nres);
        return;
    }
    if (rc == LUA_YIELD) {
        /* coroutine.yield at the top of a handler: nobody would resume it */
        c->status = KLUA_ERROR;
        c->errmsg = strdup("event handler yielded outside of a kumo function that waits");
        c->nres = 0;
    } else if (rc == LUA_OK) {
        c->status = KLUA_OK;
        c->nres = nres;
    } else {
        int code;
        const char *msg;
        if (klua_is_reject(c->co, -1, &code, &msg)) {
            c->status = KLUA_REJECT;
            c->reject_code = code;
            lua_getfield(c->co, -1, "disconnect");
            c->reject_disconnect = (int)lua_tointeger(c->co, -1);
            lua_pop(c->co, 1);
            c->errmsg = strdup(msg ? msg : "");
        } else {
            c->status = KLUA_ERROR;
            const char *m = lua_tostring(c->co, -1);
            if (!m)
                m = luaL_tolstring(c->co, -1, NULL);
            c->errmsg = strdup(m ? m : "unknown Lua error");
        }
        c->nres = 0;
    }
    static metrics_family *lat;
    if (!lat)
        metrics_histogram_family(&lat, "lua_event_latency",
                                 "how long a given lua event callback took", (const char *[]){"event"},
                                 1, NULL, 0);
    if (lat && c->started_ns) {
        metrics_histogram *h = metrics_histogram_get(lat, c->event, NULL);
        if (h) {
            metrics_histogram_observe(h, (double)(clock_mono_ns() - c->started_ns) / 1e9);
            metrics_histogram_unref(h);
        }
    }
    if (c->done)
        c->done(c, c->status, c->ud);
    klua_call_free(c);
}

void klua_call_run(klua_call *c, int nargs, klua_done_fn done, void *ud)
{
    c->done = done;
    c->ud = ud;
    /* the dispatch function takes the event name plus the caller's args */
    klua_call_step(c, nargs + c->extra_args);
}

void klua_call_cancel(klua_call *c)
{
    c->done = NULL;
}

lua_State *klua_call_thread(klua_call *c)
{
    return c->co;
}

klua_call *klua_current_call(lua_State *L)
{
    return *(klua_call **)lua_getextraspace(L);
}

int klua_call_nresults(klua_call *c)
{
    return c->nres;
}

const char *klua_call_error(klua_call *c)
{
    return c->errmsg ? c->errmsg : "";
}

int klua_call_reject_disconnect(klua_call *c)
{
    return c->reject_disconnect;
}

int klua_call_reject_code(klua_call *c)
{
    return c->reject_code;
}

const char *klua_call_event(klua_call *c)
{
    return c->event;
}

/* ---- epoch and init flag --------------------------------------------------- */

unsigned klua_config_epoch(void)
{
    return atomic_load(&config_epoch);
}

void klua_set_reload_hook(void (*fn)(void))
{
    reload_hook = fn;
}

void klua_bump_epoch(void)
{
    atomic_fetch_add(&config_epoch, 1);
    if (reload_hook)
        reload_hook();
}

void klua_set_in_init(bool on)
{
    tls_in_init = on;
}

bool klua_in_init(void)
{
    return tls_in_init;
}
