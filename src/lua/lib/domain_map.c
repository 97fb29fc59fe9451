/* kumo.domain_map.new (see domain_map.h): a userdata whose uservalue is a
 * plain Lua table from key to value; indexing tries the exact name, then
 * each wildcard from the most specific up. Assignment stores (nil removes).
 * Runs on the VM's thread. */
#include "lua/lib/domain_map.h"

#include <lauxlib.h>
#include <string.h>

#include "lua/lib/lualib.h"

#define DMAP_MT "kumo.DomainMap"
#define DMAP_WILD_MAX 256 /* longer suffixes are joined with lua_concat */

long domain_map_next_candidate(const char *name, size_t len, size_t *pos, int *wild)
{
    if (*pos == 0) {
        *pos = 1;
        *wild = 0;
        return 0;
    }
    /* *pos - 1 is where the last candidate's suffix started; the next
     * wildcard covers the suffix after the next dot */
    size_t start = *pos - 1;
    const char *dot = memchr(name + start, '.', len - start);
    if (!dot || (size_t)(dot - name) + 1 >= len)
        return -1;
    size_t next = (size_t)(dot - name) + 1;
    *pos = next + 1;
    *wild = 1;
    return (long)next;
}

static int dmap_new(lua_State *L)
{
    if (!lua_isnoneornil(L, 1) && !lua_istable(L, 1))
        return lualib_error(L, "kumo.domain_map.new", "argument #1 must be a table, not %s",
                            luaL_typename(L, 1));
    lua_newuserdatauv(L, 0, 1);
    lua_newtable(L);
    if (lua_istable(L, 1)) {
        lua_pushnil(L);
        while (lua_next(L, 1)) {
            if (lua_type(L, -2) != LUA_TSTRING)
                return lualib_error(L, "kumo.domain_map.new",
                                    "keys of argument #1 must be domain strings, not %s",
                                    luaL_typename(L, -2));
            lua_pushvalue(L, -2);
            lua_insert(L, -2);
            lua_rawset(L, -4);
        }
    }
    lua_setiuservalue(L, -2, 1);
    luaL_setmetatable(L, DMAP_MT);
    return 1;
}

static int dmap_index(lua_State *L)
{
    luaL_checkudata(L, 1, DMAP_MT);
    if (lua_type(L, 2) != LUA_TSTRING) {
        lua_pushnil(L);
        return 1;
    }
    size_t len;
    const char *name = lua_tolstring(L, 2, &len);
    lua_getiuservalue(L, 1, 1);
    lua_pushvalue(L, 2);
    if (lua_rawget(L, -2) != LUA_TNIL)
        return 1;
    lua_pop(L, 1);
    char buf[DMAP_WILD_MAX + 2] = "*.";
    size_t pos = 0;
    int wild;
    long off;
    domain_map_next_candidate(name, len, &pos, &wild); /* the exact name, done above */
    while ((off = domain_map_next_candidate(name, len, &pos, &wild)) >= 0) {
        size_t n = len - (size_t)off;
        if (n <= DMAP_WILD_MAX) {
            memcpy(buf + 2, name + off, n);
            lua_pushlstring(L, buf, n + 2);
        } else {
            lua_pushliteral(L, "*.");
            lua_pushlstring(L, name + off, n);
            lua_concat(L, 2);
        }
        if (lua_rawget(L, -2) != LUA_TNIL)
            return 1;
        lua_pop(L, 1);
    }
    lua_pushliteral(L, "*");
    lua_rawget(L, -2);
    return 1;
}

static int dmap_newindex(lua_State *L)
{
    luaL_checkudata(L, 1, DMAP_MT);
    if (lua_type(L, 2) != LUA_TSTRING)
        return lualib_error(L, "kumo.domain_map", "keys must be domain strings, not %s",
                            luaL_typename(L, 2));
    lua_getiuservalue(L, 1, 1);
    lua_pushvalue(L, 2);
    lua_pushvalue(L, 3);
    lua_rawset(L, -3);
    return 0;
}

/* pairs(map) walks the stored keys (wildcards as written). */
static int dmap_pairs(lua_State *L)
{
    luaL_checkudata(L, 1, DMAP_MT);
    lua_getglobal(L, "next");
    lua_getiuservalue(L, 1, 1);
    lua_pushnil(L);
    return 3;
}

static int dmap_tostring(lua_State *L)
{
    lua_pushfstring(L, "DomainMap: %p", lua_touserdata(L, 1));
    return 1;
}

static void dmap_setup(lua_State *L)
{
    static const luaL_Reg mt[] = {{"__index", dmap_index},
                                  {"__newindex", dmap_newindex},
                                  {"__pairs", dmap_pairs},
                                  {"__tostring", dmap_tostring},
                                  {NULL, NULL}};
    luaL_newmetatable(L, DMAP_MT);
    luaL_setfuncs(L, mt, 0);
    lua_pop(L, 1);
}

static const luaL_Reg fns[] = {{"new", dmap_new}, {NULL, NULL}};
const lualib_module lualib_domain_map = {"kumo.domain_map", fns, dmap_setup};
