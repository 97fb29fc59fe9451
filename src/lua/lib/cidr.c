/* kumo.cidr.make_map: a userdata over cidr_map.h whose uservalue table
 * holds the values by slot. Indexing with something that is not an address
 * or block gives nil (as the reference page's example expects); assigning
 * under such a key is an error naming it. Runs on the VM's thread. */
#include <lauxlib.h>
#include <stdlib.h>

#include "lua/lib/cidr_map.h"
#include "lua/lib/lualib.h"

#define CMAP_MT "kumo.CidrMap"

struct cmap {
    cidr_map *m;
    int next_slot;
};

static struct cmap *check(lua_State *L)
{
    struct cmap *c = luaL_checkudata(L, 1, CMAP_MT);
    if (!c->m)
        luaL_error(L, "kumo.cidr map used after being freed");
    return c;
}

/* Stores the value at -1 under key at kidx; pops the value. */
static void cmap_set(lua_State *L, int ud, int kidx, const char *fname)
{
    struct cmap *c = lua_touserdata(L, ud);
    int vidx = lua_gettop(L);
    kidx = lua_absindex(L, kidx);
    size_t len;
    if (lua_type(L, kidx) != LUA_TSTRING)
        lualib_error(L, fname, "keys must be address or CIDR strings, not %s",
                     luaL_typename(L, kidx));
    const char *k = lua_tolstring(L, kidx, &len);
    cidr key;
    char err[300];
    if (cidr_map_parse_key(k, len, &key, err, sizeof(err)) != 0)
        lualib_error(L, fname, "%s", err);
    lua_getiuservalue(L, ud, 1);
    if (lua_isnil(L, vidx)) {
        int old = cidr_map_remove(c->m, &key);
        if (old >= 0) {
            lua_pushnil(L);
            lua_rawseti(L, -2, old);
        }
        lua_settop(L, vidx - 1);
        return;
    }
    int old;
    if (cidr_map_insert(c->m, &key, c->next_slot, &old) != 0)
        lualib_error(L, fname, "out of memory");
    int slot = c->next_slot;
    if (old >= 0) {
        /* keep the old slot number: put it back */
        cidr_map_insert(c->m, &key, old, NULL);
        slot = old;
    } else {
        c->next_slot++;
    }
    lua_pushvalue(L, vidx);
    lua_rawseti(L, -2, slot);
    lua_settop(L, vidx - 1);
}

static int cmap_make(lua_State *L)
{
    if (!lua_isnoneornil(L, 1) && !lua_istable(L, 1))
        return lualib_error(L, "kumo.cidr.make_map", "argument #1 must be a table, not %s",
                            luaL_typename(L, 1));
    struct cmap *c = lua_newuserdatauv(L, sizeof(*c), 1);
    c->m = NULL;
    c->next_slot = 1;
    luaL_setmetatable(L, CMAP_MT);
    lua_newtable(L);
    lua_setiuservalue(L, -2, 1);
    if (!(c->m = cidr_map_new()))
        return lualib_error(L, "kumo.cidr.make_map", "out of memory");
    int ud = lua_gettop(L);
    if (lua_istable(L, 1)) {
        lua_pushnil(L);
        while (lua_next(L, 1)) {
            cmap_set(L, ud, -2, "kumo.cidr.make_map");
        }
    }
    return 1;
}

static int cmap_index(lua_State *L)
{
    struct cmap *c = check(L);
    size_t len;
    cidr key;
    char err[300];
    if (lua_type(L, 2) != LUA_TSTRING)
        return 0;
    const char *k = lua_tolstring(L, 2, &len);
    if (cidr_map_parse_key(k, len, &key, err, sizeof(err)) != 0)
        return 0;
    int slot = cidr_map_lookup(c->m, &key);
    if (slot < 0)
        return 0;
    lua_getiuservalue(L, 1, 1);
    lua_rawgeti(L, -1, slot);
    return 1;
}

static int cmap_newindex(lua_State *L)
{
    check(L);
    lua_settop(L, 3);
    cmap_set(L, 1, 2, "kumo.cidr map");
    return 0;
}

static int cmap_gc(lua_State *L)
{
    struct cmap *c = luaL_checkudata(L, 1, CMAP_MT);
    cidr_map_free(c->m);
    c->m = NULL;
    return 0;
}

static int cmap_tostring(lua_State *L)
{
    lua_pushfstring(L, "CidrMap: %p", lua_touserdata(L, 1));
    return 1;
}

static void cmap_setup(lua_State *L)
{
    static const luaL_Reg mt[] = {{"__index", cmap_index},
                                  {"__newindex", cmap_newindex},
                                  {"__gc", cmap_gc},
                                  {"__tostring", cmap_tostring},
                                  {NULL, NULL}};
    luaL_newmetatable(L, CMAP_MT);
    luaL_setfuncs(L, mt, 0);
    lua_pop(L, 1);
}

static const luaL_Reg fns[] = {{"make_map", cmap_make}, {NULL, NULL}};
const lualib_module lualib_cidr = {"kumo.cidr", fns, cmap_setup};
