/* Top-level kumo.* functions that are not a module of their own.
 *
 * Logging: kumo.log_* write to the diagnostic log under the module "lua"
 * (so `lua=debug` in the filter enables log_debug, as KumoMTA documents),
 * prefixed with the calling policy's file:line.
 *
 * Tuning knobs: KumoMTA sizes thread pools (smtpsrv, readyq, qmaint,
 * logging, httpinject, spoolin) and a pool of Lua contexts; kumod has one
 * reactor per core, each with one VM, so these settings have nothing to
 * act on. They are accepted and checked as KumoMTA documents them and the
 * value is kept (advisory), so policies written for KumoMTA load. The
 * memory limits are kept too and their getters return what was set, or the
 * defaults KumoMTA documents (hard: the cgroup's memory.max or the physical
 * RAM; soft: 75% of hard; low threshold: 80% of soft).
 *
 * spawn_task runs the named event in a new coroutine on the calling
 * reactor, started from the reactor's mailbox once the current call yields
 * or returns; a task that never yields holds its reactor, so long-running
 * tasks must wait in kumo functions (mpsc recv, sleep). Process-wide state
 * is atomic or under a mutex; everything else runs on the VM's thread. */
#include "lua/lib/misc.h"

#include <lauxlib.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/diag.h"
#include "core/version.h"
#include "core/reactor.h"
#include "lua/klua.h"
#include "lua/lib/args.h"
#include "lua/lib/fs.h"


#define LUA_LOG_MOD "lua"
#define REGISTRARS_KEY "kumod.event_registrars"

static atomic_bool validation_failed;
static atomic_bool spawn_enabled = true;

bool misc_validation_failed(void)
{
    return atomic_load(&validation_failed);
}

void misc_set_spawn_enabled(bool on)
{
    atomic_store(&spawn_enabled, on);
}

/* ---- logging ----------------------------------------------------------------- */

static int log_at(lua_State *L, int level)
{
    if (!diag_enabled(LUA_LOG_MOD, level))
        return 0;
    int n = lua_gettop(L);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    luaL_where(L, 1);
    luaL_addvalue(&b);
    for (int i = 1; i <= n; i++) {
        if (i > 1)
            luaL_addchar(&b, ' ');
        luaL_tolstring(L, i, NULL);
        luaL_addvalue(&b);
    }
    luaL_pushresult(&b);
    diag_log(LUA_LOG_MOD, level, "%s", lua_tostring(L, -1));
    return 0;
}

static int l_log_error(lua_State *L)
{
    return log_at(L, DIAG_ERROR);
}

static int l_log_warn(lua_State *L)
{
    return log_at(L, DIAG_WARN);
}

static int l_log_info(lua_State *L)
{
    return log_at(L, DIAG_INFO);
}

static int l_log_debug(lua_State *L)
{
    return log_at(L, DIAG_DEBUG);
}

/* ---- introspection ------------------------------------------------------------ */

static int l_traceback(lua_State *L)
{
    lua_Integer level = lib_optinteger(L, 1, "kumo.traceback", "argument #1 (level)", 1);
    if (level < 0)
        return luaL_error(L, "kumo.traceback: argument #1 (level) must not be negative");
    lua_newtable(L);
    lua_Debug ar;
    int i = 0;
    for (int lv = (int)level; lua_getstack(L, lv, &ar); lv++) {
        if (!lua_getinfo(L, "nSlt", &ar))
            break;
        lua_createtable(L, 0, 10);
        lua_pushstring(L, "Call");
        lua_setfield(L, -2, "event");
        if (ar.name) {
            lua_pushstring(L, ar.name);
            lua_setfield(L, -2, "name");
        }
        if (ar.namewhat && *ar.namewhat) {
            lua_pushstring(L, ar.namewhat);
            lua_setfield(L, -2, "name_what");
        }
        lua_pushstring(L, ar.source);
        lua_setfield(L, -2, "source");
        lua_pushstring(L, ar.short_src);
        lua_setfield(L, -2, "short_src");
        if (ar.linedefined >= 0) {
            lua_pushinteger(L, ar.linedefined);
            lua_setfield(L, -2, "line_defined");
        }
        if (ar.lastlinedefined >= 0) {
            lua_pushinteger(L, ar.lastlinedefined);
            lua_setfield(L, -2, "last_line_defined");
        }
        lua_pushstring(L, ar.what);
        lua_setfield(L, -2, "what");
        if (ar.currentline >= 0) {
            lua_pushinteger(L, ar.currentline);
            lua_setfield(L, -2, "curr_line");
        }
        lua_pushboolean(L, ar.istailcall);
        lua_setfield(L, -2, "is_tail_call");
        lua_rawseti(L, -2, ++i);
    }
    return 1;
}

static int l_validation_failed(lua_State *L)
{
    atomic_store(&validation_failed, true);
    return 0;
}

/* kumo.on, wrapped: records "short_src:line" of each frame of the caller's
 * stack under the event name, then calls the original. */
static int l_on_recording(lua_State *L)
{
    const char *name = lib_checkstring(L, 1, "kumo.on", "argument #1 (event name)");
    lua_newtable(L);
    lua_Debug ar;
    int i = 0;
    for (int lv = 1; lua_getstack(L, lv, &ar); lv++) {
        if (!lua_getinfo(L, "Sl", &ar))
            break;
        lua_pushfstring(L, "%s:%d", ar.short_src, ar.currentline > 0 ? ar.currentline : 0);
        lua_rawseti(L, -2, ++i);
    }
    int stack = lua_gettop(L);
    /* call the original first: it refuses registrations from inside events */
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_pushvalue(L, 1);
    lua_pushvalue(L, 2);
    if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
        /* its message was raised from here, a C function: give it the
         * policy's file:line as a direct call would have */
        if (lua_type(L, -1) == LUA_TSTRING) {
            luaL_where(L, 1);
            lua_insert(L, -2);
            lua_concat(L, 2);
        }
        return lua_error(L);
    }
    luaL_getsubtable(L, LUA_REGISTRYINDEX, REGISTRARS_KEY);
    if (lua_getfield(L, -1, name) != LUA_TTABLE) {
        lua_pop(L, 1);
        lua_newtable(L);
        lua_pushvalue(L, -1);
        lua_setfield(L, -3, name);
    }
    lua_pushvalue(L, stack);
    lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
    return 0;
}

static int l_get_event_registrars(lua_State *L)
{
    const char *name =
        lib_checkstring(L, 1, "kumo.get_event_registrars", "argument #1 (event name)");
    luaL_getsubtable(L, LUA_REGISTRYINDEX, REGISTRARS_KEY);
    lua_getfield(L, -1, name);
    return 1;
}

/* ---- spawn_task ------------------------------------------------------------------ */

struct task_start {
    klua *vm;
    int args_ref;
    char *event;
};

static void task_done(klua_call *c, int status, void *ud)
{
    if (status != KLUA_OK)
        DERROR("kumod::lua", "Error while dispatching %s: %s", klua_call_event(c),
               klua_call_error(c));
}

static void job_task_start(void *arg)
{
    struct task_start *t = arg;
    lua_State *L = klua_state(t->vm);
    klua_call *c;
    lua_State *co = klua_call_begin(t->vm, t->event, &c);
    lua_rawgeti(L, LUA_REGISTRYINDEX, t->args_ref);
    lua_xmove(L, co, 1);
    luaL_unref(L, LUA_REGISTRYINDEX, t->args_ref);
    klua_unref(t->vm); /* the call holds its own reference */
    free(t->event);
    free(t);
    klua_call_run(c, 1, task_done, NULL);
}

static int l_spawn_task(lua_State *L)
{
    const char *fn = "kumo.spawn_task";
    if (!lua_istable(L, 1))
        return luaL_error(L, "%s: argument #1 must be a table with event_name and args, got %s", fn,
                          luaL_typename(L, 1));
    lua_getfield(L, 1, "event_name");
    if (lua_type(L, -1) != LUA_TSTRING)
        return luaL_error(L, "%s: event_name must be a string", fn);
    const char *event = lua_tostring(L, -1);
    /* the VM running this code (during a reload it is not yet installed) */
    klua_call *cur = klua_current_call(L);
    klua *vm = cur ? klua_call_vm(cur) : klua_current();
    reactor *r = reactor_current();
    if (!vm || !r)
        return luaL_error(L, "%s: must be called from a policy running on a reactor", fn);
    if (!klua_has_handler(vm, event))
        return luaL_error(L, "%s: no handler is registered for event '%s' (use kumo.on)", fn,
                          event);
    if (!atomic_load(&spawn_enabled))
        return 0;
    struct task_start *t = calloc(1, sizeof(*t));
    char *dup = strdup(event);
    if (!t || !dup) {
        free(t);
        free(dup);
        return luaL_error(L, "%s: out of memory", fn);
    }
    lua_getfield(L, 1, "args");
    t->args_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    t->event = dup;
    t->vm = vm;
    klua_ref(vm);
    reactor_post(r, job_task_start, t);
    return 0;
}

/* ---- configuration monitoring ------------------------------------------------------ */

static pthread_mutex_t globs_lock = PTHREAD_MUTEX_INITIALIZER;
static char **monitor_globs; /* NULL: the default */
static size_t n_monitor_globs;
static const char *const default_globs[] = {"/opt/kumomta/etc/**/*.{lua,json,toml,yaml}"};

static int l_set_config_monitor_globs(lua_State *L)
{
    const char *fn = "kumo.set_config_monitor_globs";
    if (!lua_istable(L, 1))
        return luaL_error(L, "%s: argument #1 (GLOBS) must be an array of strings, got %s", fn,
                          luaL_typename(L, 1));
    size_t n = lua_rawlen(L, 1);
    for (size_t i = 1; i <= n; i++) {
        if (lua_rawgeti(L, 1, (lua_Integer)i) != LUA_TSTRING)
            return luaL_error(L, "%s: GLOBS[%d] must be a string", fn, (int)i);
        lua_pop(L, 1);
    }
    char **v = calloc(n ? n : 1, sizeof(*v));
    if (!v)
        return luaL_error(L, "%s: out of memory", fn);
    for (size_t i = 0; i < n; i++) {
        lua_rawgeti(L, 1, (lua_Integer)i + 1);
        v[i] = strdup(lua_tostring(L, -1));
        lua_pop(L, 1);
        if (!v[i]) {
            while (i--)
                free(v[i]);
            free(v);
            return luaL_error(L, "%s: out of memory", fn);
        }
    }
    pthread_mutex_lock(&globs_lock);
    char **old = monitor_globs;
    size_t n_old = n_monitor_globs;
    monitor_globs = v;
    n_monitor_globs = n;
    pthread_mutex_unlock(&globs_lock);
    for (size_t i = 0; i < n_old; i++)
        free(old[i]);
    free(old);
    return 0;
}

static int l_eval_config_monitor_globs(lua_State *L)
{
    /* copy the patterns into Lua first: no lock held while walking */
    lua_newtable(L);
    int pats = lua_gettop(L);
    pthread_mutex_lock(&globs_lock);
    if (monitor_globs) {
        for (size_t i = 0; i < n_monitor_globs; i++) {
            lua_pushstring(L, monitor_globs[i]);
            lua_rawseti(L, pats, (lua_Integer)i + 1);
        }
    } else {
        lua_pushstring(L, default_globs[0]);
        lua_rawseti(L, pats, 1);
    }
    pthread_mutex_unlock(&globs_lock);
    lua_newtable(L);
    int set = lua_gettop(L);
    for (lua_Integer i = 1; i <= (lua_Integer)lua_rawlen(L, pats); i++) {
        lua_rawgeti(L, pats, i);
        if (fs_glob_push(L, lua_tostring(L, -1), NULL) != 0)
            return luaL_error(L, "kumo.eval_config_monitor_globs: %s", lua_tostring(L, -1));
        for (lua_Integer j = 1; j <= (lua_Integer)lua_rawlen(L, -1); j++) {
            lua_rawgeti(L, -1, j);
            lua_pushboolean(L, 1);
            lua_rawset(L, set);
        }
        lua_pop(L, 2);
    }
    lua_newtable(L);
    lua_Integer k = 0;
    lua_pushnil(L);
    while (lua_next(L, set)) {
        lua_pop(L, 1);
        lua_pushvalue(L, -1);
        lua_rawseti(L, -3, ++k);
    }
    lua_getglobal(L, "table");
    lua_getfield(L, -1, "sort");
    lua_pushvalue(L, -3);
    lua_call(L, 1, 0);
    lua_pop(L, 1);
    return 1;
}

/* ---- tuning knobs ------------------------------------------------------------------- */

enum knob_kind { KNOB_THREADS, KNOB_COUNT, KNOB_SECONDS, KNOB_BYTES };

struct knob {
    const char *name;
    enum knob_kind kind;
    _Atomic int64_t value; /* -1: never set */
};

static struct knob knobs[] = {
    {"set_smtpsrv_threads", KNOB_THREADS, -1},
    {"set_readyq_threads", KNOB_THREADS, -1},
    {"set_qmaint_threads", KNOB_THREADS, -1},
    {"set_ready_qmaint_threads", KNOB_THREADS, -1},
    {"set_logging_threads", KNOB_THREADS, -1},
    {"set_httpinject_threads", KNOB_THREADS, -1},
    {"set_spoolin_threads", KNOB_THREADS, -1},
    {"set_max_lua_context_age", KNOB_SECONDS, -1},
    {"set_max_lua_context_use_count", KNOB_COUNT, -1},
    {"set_max_spare_lua_contexts", KNOB_COUNT, -1},
    {"set_memory_hard_limit", KNOB_BYTES, -1},
    {"set_memory_soft_limit", KNOB_BYTES, -1},
    {"set_memory_low_thresh", KNOB_BYTES, -1},
};
#define KNOB_HARD 10
#define KNOB_SOFT 11
#define KNOB_LOW 12

static int l_knob(lua_State *L)
{
    struct knob *k = lua_touserdata(L, lua_upvalueindex(1));
    int isint = 0;
    lua_Integer v = lua_tointegerx(L, 1, &isint);
    if (!isint)
        return luaL_error(L, "kumo.%s: argument #1 must be an integer, got %s", k->name,
                          lua_type(L, 1) == LUA_TNUMBER ? "a fraction" : luaL_typename(L, 1));
    lua_Integer min = k->kind == KNOB_THREADS || k->kind == KNOB_BYTES ? 1 : 0;
    if (v < min)
        return luaL_error(L, "kumo.%s: argument #1 must be at least %d, got %d", k->name, (int)min,
                          (int)v);
    atomic_store(&k->value, (int64_t)v);
    return 0;
}

static uint64_t physical_ram(void)
{
    long pages = sysconf(_SC_PHYS_PAGES), size = sysconf(_SC_PAGESIZE);
    return pages > 0 && size > 0 ? (uint64_t)pages * (uint64_t)size : 0;
}

/* cgroup v2 memory.max of this process's cgroup; 0 when unlimited or unknown */
static uint64_t cgroup_limit(void)
{
    FILE *f = fopen("/proc/self/cgroup", "r");
    if (!f)
        return 0;
    char line[512], path[600];
    uint64_t limit = 0;
    while (fgets(line, sizeof(line), f)) {
        if (strncmp(line, "0::", 3) != 0)
            continue;
        line[strcspn(line, "\n")] = 0;
        snprintf(path, sizeof(path), "/sys/fs/cgroup%s/memory.max", line + 3);
        FILE *m = fopen(path, "r");
        if (m) {
            char v[64];
            if (fgets(v, sizeof(v), m) && strncmp(v, "max", 3) != 0)
                limit = strtoull(v, NULL, 10);
            fclose(m);
        }
    }
    fclose(f);
    return limit;
}

uint64_t misc_memory_hard_limit(void)
{
    int64_t v = atomic_load(&knobs[KNOB_HARD].value);
    if (v > 0)
        return (uint64_t)v;
    uint64_t ram = physical_ram(), cg = cgroup_limit();
    return cg && (cg < ram || !ram) ? cg : ram;
}

uint64_t misc_memory_soft_limit(void)
{
    int64_t v = atomic_load(&knobs[KNOB_SOFT].value);
    return v > 0 ? (uint64_t)v : misc_memory_hard_limit() / 4 * 3;
}

uint64_t misc_memory_low_thresh(void)
{
    int64_t v = atomic_load(&knobs[KNOB_LOW].value);
    return v > 0 ? (uint64_t)v : misc_memory_soft_limit() / 5 * 4;
}

static void push_limit(lua_State *L, uint64_t v)
{
    if (v == 0)
        lua_pushnil(L);
    else
        lua_pushinteger(L, (lua_Integer)v);
}

static int l_get_memory_hard_limit(lua_State *L)
{
    push_limit(L, misc_memory_hard_limit());
    return 1;
}

static int l_get_memory_soft_limit(lua_State *L)
{
    push_limit(L, misc_memory_soft_limit());
    return 1;
}

static int l_get_memory_low_thresh(lua_State *L)
{
    push_limit(L, misc_memory_low_thresh());
    return 1;
}

/* ---- module -------------------------------------------------------------------------- */

static void misc_open(lua_State *L)
{
    static const luaL_Reg fns[] = {
        {"log_error", l_log_error},
        {"log_warn", l_log_warn},
        {"log_info", l_log_info},
        {"log_debug", l_log_debug},
        {"traceback", l_traceback},
        {"validation_failed", l_validation_failed},
        {"get_event_registrars", l_get_event_registrars},
        {"spawn_task", l_spawn_task},
        {"set_config_monitor_globs", l_set_config_monitor_globs},
        {"eval_config_monitor_globs", l_eval_config_monitor_globs},
        {"get_memory_hard_limit", l_get_memory_hard_limit},
        {"get_memory_soft_limit", l_get_memory_soft_limit},
        {"get_memory_low_thresh", l_get_memory_low_thresh},
        {NULL, NULL},
    };
    luaL_setfuncs(L, fns, 0);
    for (size_t i = 0; i < sizeof(knobs) / sizeof(knobs[0]); i++) {
        lua_pushlightuserdata(L, &knobs[i]);
        lua_pushcclosure(L, l_knob, 1);
        lua_setfield(L, -2, knobs[i].name);
    }
    lua_pushstring(L, kumod_version());
    lua_setfield(L, -2, "version");
    lua_getfield(L, -1, "on");
    lua_pushcclosure(L, l_on_recording, 1);
    lua_setfield(L, -2, "on");
}

void misc_lua_register(void)
{
    klua_register_opener(misc_open);
}
