/* Argument checks for the library's C functions whose errors name the
 * function and the argument even when Lua cannot (luaL_check* says "bad
 * argument #1 to '?'" for a function reached through pcall or a table
 * field). fname is the full name ("kumo.fs.open", "queue:recv_many"); what
 * names the argument ("argument #2 (OPT_MODE)"). */
#ifndef KUMOD_LUA_LIB_ARGS_H
#define KUMOD_LUA_LIB_ARGS_H
#include <lauxlib.h>
#include <lua.h>

static inline const char *lib_checkstring(lua_State *L, int idx, const char *fname,
                                          const char *what)
{
    if (lua_type(L, idx) != LUA_TSTRING)
        luaL_error(L, "%s: %s must be a string, got %s", fname, what, luaL_typename(L, idx));
    return lua_tostring(L, idx);
}

static inline const char *lib_optstring(lua_State *L, int idx, const char *fname, const char *what,
                                        const char *def)
{
    return lua_isnoneornil(L, idx) ? def : lib_checkstring(L, idx, fname, what);
}

static inline lua_Integer lib_checkinteger(lua_State *L, int idx, const char *fname,
                                           const char *what)
{
    int isint = 0;
    lua_Integer v = lua_tointegerx(L, idx, &isint);
    if (!isint)
        luaL_error(L, "%s: %s must be an integer, got %s", fname, what, luaL_typename(L, idx));
    return v;
}

static inline lua_Integer lib_optinteger(lua_State *L, int idx, const char *fname, const char *what,
                                         lua_Integer def)
{
    return lua_isnoneornil(L, idx) ? def : lib_checkinteger(L, idx, fname, what);
}

#endif
