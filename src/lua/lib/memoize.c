/* kumo.memoize and kumo.set_lruttl_cache_capacity.
 *
 * A memoized function is a small Lua closure (built from the chunk below)
 * around the user's function: it asks the cache for the key made of its
 * arguments and returns the stored results on a hit without calling the
 * user's function at all; on a miss it calls it (which may yield: DNS,
 * sleeps) and stores every result. Errors are not cached. The index is
 * lruttl.h; the values sit in the cache userdata's uservalue table by slot.
 *
 * Caches live in their VM: one per name per reactor, as DESIGN.md §1 gives
 * each reactor its own VM. A policy reload builds new VMs, so every cache
 * starts empty after one (KumoMTA keeps caches across reloads unless
 * invalidate_with_epoch is set). Cached tables are returned as they are,
 * not copied: a caller that modifies a returned table modifies the cached
 * value (KumoMTA hands out copy-on-write views). Two coroutines missing on
 * the same key at the same time both call the function; the later result
 * wins. populate_timeout, retry_on_populate_timeout and allow_stale_reads
 * are checked and accepted; kumod does not time out a populating call.
 * Runs on the VM's thread. */
#include <lauxlib.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "core/duration.h"
#include "core/reactor.h"
#include "lua/lib/lualib.h"
#include "lua/lib/lruttl.h"
#include "lua/lib/serde.h"

#define CACHE_MT "kumo.MemoizeCache"
#define CACHES_KEY "kumod.memoize.caches"
#define FACTORY_KEY "kumod.memoize.factory"
#define FN "kumo.memoize"

struct mcache {
    lruttl *idx;
    int64_t ttl_ns;
    size_t capacity;
    char params[256]; /* the parameters that made it, to notice changes */
};

static const char factory_src[] = "local get, put, make_key, unpack, pack = ...\n"
                                  "return function(cache, func)\n"
                                  "  return function(...)\n"
                                  "    local key = make_key(...)\n"
                                  "    local r = get(cache, key)\n"
                                  "    if r then return unpack(r, 1, r.n) end\n"
                                  "    r = pack(func(...))\n"
                                  "    put(cache, key, r)\n"
                                  "    return unpack(r, 1, r.n)\n"
                                  "  end\n"
                                  "end\n";

/* The key: the arguments as JSON text, object keys sorted, raw bytes kept. */
static int m_key(lua_State *L)
{
    int n = lua_gettop(L);
    lua_createtable(L, n, 1);
    for (int i = 1; i <= n; i++) {
        lua_pushvalue(L, i);
        lua_rawseti(L, -2, i);
    }
    char err[256];
    char *s;
    size_t len;
    /* n as a prefix: trailing nils count */
    if (serde_encode_json(L, -1, SERDE_SORT | SERDE_RAW_BYTES, &s, &len, err, sizeof(err)) != 0)
        return lualib_error(L, FN, "the arguments cannot be used as a cache key: %s", err);
    lua_pushfstring(L, "%d:", n);
    lua_pushlstring(L, s, len);
    free(s);
    lua_concat(L, 2);
    return 1;
}

static int64_t now_ns(void)
{
    return clock_mono_ns();
}

static int m_get(lua_State *L)
{
    struct mcache *c = luaL_checkudata(L, 1, CACHE_MT);
    size_t len;
    const char *k = luaL_checklstring(L, 2, &len);
    long slot = lruttl_get(c->idx, k, len, now_ns());
    if (slot < 0)
        return 0;
    lua_getiuservalue(L, 1, 1);
    lua_rawgeti(L, -1, (lua_Integer)slot + 1);
    return 1;
}

static int m_put(lua_State *L)
{
    struct mcache *c = luaL_checkudata(L, 1, CACHE_MT);
    size_t len;
    const char *k = luaL_checklstring(L, 2, &len);
    long slot = lruttl_put(c->idx, k, len, now_ns() + c->ttl_ns);
    if (slot < 0)
        return 0; /* out of memory: simply not cached */
    lua_getiuservalue(L, 1, 1);
    lua_pushvalue(L, 3);
    lua_rawseti(L, -2, (lua_Integer)slot + 1);
    return 0;
}

static int m_gc(lua_State *L)
{
    struct mcache *c = luaL_checkudata(L, 1, CACHE_MT);
    lruttl_free(c->idx);
    c->idx = NULL;
    return 0;
}

static const char *const param_keys[] = {"name",
                                         "ttl",
                                         "capacity",
                                         "invalidate_with_epoch",
                                         "populate_timeout",
                                         "retry_on_populate_timeout",
                                         "allow_stale_reads",
                                         NULL};

static int64_t duration_field(lua_State *L, const char *field, bool required)
{
    lua_getfield(L, 2, field);
    int64_t ns = -1;
    if (lua_isnil(L, -1)) {
        if (required)
            lualib_error(L, FN, "missing field `%s` in argument #2", field);
    } else if (lua_type(L, -1) == LUA_TNUMBER) {
        ns = (int64_t)(lua_tonumber(L, -1) * 1e9);
    } else if (lua_type(L, -1) != LUA_TSTRING || duration_parse(lua_tostring(L, -1), &ns) != 0) {
        lualib_error(L, FN, "field `%s` of argument #2: '%s' is not a duration", field,
                     luaL_tolstring(L, -1, NULL));
    }
    lua_pop(L, 1);
    if (ns < 0 && required)
        lualib_error(L, FN, "field `%s` of argument #2 must not be negative", field);
    return ns;
}

static bool bool_field(lua_State *L, const char *field)
{
    lua_getfield(L, 2, field);
    if (!lua_isnil(L, -1) && !lua_isboolean(L, -1))
        lualib_error(L, FN, "field `%s` of argument #2 must be a boolean, not %s", field,
                     luaL_typename(L, -1));
    bool b = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return b;
}

/* KumoMTA's pre-defined cache names (lruttl declare_cache!): memoize may
 * not use them, set_lruttl_cache_capacity only accepts them. */
static const char *const predefined[] = {"acl_check",
                                         "acl_definition",
                                         "dkim_key_cache",
                                         "dkim_signer_cache",
                                         "dns_resolver_ip",
                                         "dns_resolver_ipv4",
                                         "dns_resolver_ipv6",
                                         "dns_resolver_mx",
                                         "egress_source_pools",
                                         "egress_source_sources",
                                         "http_server_auth",
                                         "mod_filesystem_glob_cache",
                                         "mta_sts_policy",
                                         "rustls_client_config",
                                         "smtp_dispatcher_broken_tls",
                                         "smtp_dispatcher_client_certificate",
                                         "smtp_server_tls_config",
                                         NULL};

static bool is_predefined(const char *name)
{
    for (int i = 0; predefined[i]; i++)
        if (strcmp(predefined[i], name) == 0)
            return true;
    return false;
}

static int l_memoize(lua_State *L)
{
    if (lua_type(L, 1) != LUA_TFUNCTION)
        return lualib_error(L, FN, "argument #1 must be a function, not %s", luaL_typename(L, 1));
    if (lua_type(L, 2) != LUA_TTABLE)
        return lualib_error(L, FN, "argument #2 must be a table of parameters, not %s",
                            luaL_typename(L, 2));
    lua_pushnil(L);
    while (lua_next(L, 2)) {
        bool known = false;
        if (lua_type(L, -2) == LUA_TSTRING)
            for (int i = 0; param_keys[i]; i++)
                known |= strcmp(lua_tostring(L, -2), param_keys[i]) == 0;
        if (!known)
            return lualib_error(L, FN,
                                "unknown field `%s` in argument #2, expected one of name, "
                                "ttl, capacity, invalidate_with_epoch, populate_timeout, "
                                "retry_on_populate_timeout, allow_stale_reads",
                                luaL_tolstring(L, -2, NULL));
        lua_pop(L, 1);
    }
    lua_getfield(L, 2, "name");
    if (lua_type(L, -1) != LUA_TSTRING)
        return lualib_error(L, FN, "field `name` of argument #2 must be a string, not %s",
                            luaL_typename(L, -1));
    const char *name = lua_tostring(L, -1);
    if (is_predefined(name))
        return lualib_error(L, FN,
                            "cannot use name `%s` for a memoize cache, as it collides with a "
                            "built-in cache. Suggestion: prefix your cache name with `user.` to "
                            "avoid conflicts with current and future caches.",
                            name);
    int64_t ttl = duration_field(L, "ttl", true);
    lua_getfield(L, 2, "capacity");
    int isint = 0;
    lua_Integer cap = lua_tointegerx(L, -1, &isint);
    if (!isint || cap < 0)
        return lualib_error(L, FN,
                            "field `capacity` of argument #2 must be a non-negative integer");
    lua_pop(L, 1);
    int64_t pt = duration_field(L, "populate_timeout", false);
    bool ie = bool_field(L, "invalidate_with_epoch");
    bool rt = bool_field(L, "retry_on_populate_timeout");
    bool sr = bool_field(L, "allow_stale_reads");
    char params[256];
    snprintf(params, sizeof(params), "%lld/%lld/%lld/%d%d%d", (long long)ttl, (long long)cap,
             (long long)pt, ie, rt, sr);

    /* the VM's cache of that name, replaced when its parameters changed */
    luaL_getsubtable(L, LUA_REGISTRYINDEX, CACHES_KEY);
    lua_getfield(L, -1, name);
    struct mcache *c = luaL_testudata(L, -1, CACHE_MT);
    if (!c || strcmp(c->params, params) != 0) {
        lua_pop(L, 1);
        c = lua_newuserdatauv(L, sizeof(*c), 1);
        memset(c, 0, sizeof(*c));
        luaL_setmetatable(L, CACHE_MT);
        lua_newtable(L);
        lua_setiuservalue(L, -2, 1);
        /* capacity 0 caches nothing: a one-entry index that always expires */
        c->idx = lruttl_new(cap > 0 ? (size_t)cap : 1);
        if (!c->idx)
            return lualib_error(L, FN, "out of memory");
        c->ttl_ns = cap > 0 ? ttl : 0;
        c->capacity = (size_t)cap;
        snprintf(c->params, sizeof(c->params), "%s", params);
        lua_pushvalue(L, -1);
        lua_setfield(L, -3, name);
    }
    lua_getfield(L, LUA_REGISTRYINDEX, FACTORY_KEY);
    lua_pushvalue(L, -2);
    lua_pushvalue(L, 1);
    lua_call(L, 2, 1);
    return 1;
}

/* Capacities set for KumoMTA's pre-defined caches. kumod's own caches of
 * those names (the DNS cache) are bounded by TTL, not by count, so the
 * value is accepted and kept for when they are. */
static int l_set_lruttl_cache_capacity(lua_State *L)
{
    const char *fname = "kumo.set_lruttl_cache_capacity";
    const char *name = lualib_checklstring(L, 1, fname, NULL);
    lua_Integer cap = lualib_checkinteger(L, 2, fname);
    if (cap < 0)
        return lualib_error(L, fname, "argument #2 must not be negative");
    if (!is_predefined(name))
        return lualib_error(L, fname,
                            "could not set capacity for cache %s as that is not a pre-defined "
                            "lruttl cache name",
                            name);
    luaL_getsubtable(L, LUA_REGISTRYINDEX, "kumod.lruttl.capacity");
    lua_pushinteger(L, cap);
    lua_setfield(L, -2, name);
    return 0;
}

static void memoize_setup(lua_State *L)
{
    luaL_newmetatable(L, CACHE_MT);
    lua_pushcfunction(L, m_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushliteral(L, "MemoizeCache");
    lua_setfield(L, -2, "__name");
    lua_pop(L, 1);
    if (luaL_loadbuffer(L, factory_src, sizeof(factory_src) - 1, "=kumo.memoize") != LUA_OK)
        lua_error(L); /* our own chunk */
    lua_pushcfunction(L, m_get);
    lua_pushcfunction(L, m_put);
    lua_pushcfunction(L, m_key);
    lua_getglobal(L, "table");
    lua_getfield(L, -1, "unpack");
    lua_getfield(L, -2, "pack");
    lua_remove(L, -3);
    lua_call(L, 5, 1);
    lua_setfield(L, LUA_REGISTRYINDEX, FACTORY_KEY);
}

static const luaL_Reg fns[] = {{"memoize", l_memoize},
                               {"set_lruttl_cache_capacity", l_set_lruttl_cache_capacity},
                               {NULL, NULL}};
const lualib_module lualib_memoize = {"kumo", fns, memoize_setup};
