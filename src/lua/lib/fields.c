/* Parameter tables of the library's C functions (fields.h). Pure Lua API
 * use on the VM's thread; every failure is a Lua error naming the field. */
#include "lua/lib/fields.h"

#include <lauxlib.h>
#include <string.h>

#include "core/duration.h"
#include "lua/lib/lualib.h"

void fields_check_known(lua_State *L, int t, const char *fname, const char *what,
                        const char *const *names)
{
    lua_pushnil(L);
    while (lua_next(L, t)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TSTRING)
            lualib_error(L, fname, "%s: field names must be strings, not %s", what,
                         luaL_typename(L, -1));
        const char *k = lua_tostring(L, -1);
        bool ok = false;
        for (const char *const *n = names; *n && !ok; n++)
            ok = strcmp(*n, k) == 0;
        if (!ok)
            lualib_error(L, fname, "%s: unknown field `%s`", what, k);
    }
}

const char *fields_opt_string(lua_State *L, int t, const char *k, const char *fname, size_t *len)
{
    lua_getfield(L, t, k);
    const char *s = NULL;
    if (lua_type(L, -1) == LUA_TSTRING)
        s = lua_tolstring(L, -1, len);
    else if (!lua_isnil(L, -1))
        lualib_error(L, fname, "`%s` must be a string, not %s", k, luaL_typename(L, -1));
    lua_pop(L, 1);
    return s;
}

bool fields_opt_integer(lua_State *L, int t, const char *k, const char *fname, lua_Integer lo,
                        lua_Integer hi, lua_Integer *out)
{
    lua_getfield(L, t, k);
    bool have = !lua_isnil(L, -1);
    if (have) {
        int isint = 0;
        lua_Integer v = lua_tointegerx(L, -1, &isint);
        if (!isint || lua_type(L, -1) != LUA_TNUMBER)
            lualib_error(L, fname, "`%s` must be an integer, not %s", k, luaL_typename(L, -1));
        if (v < lo || v > hi)
            lualib_error(L, fname, "`%s` must be between %lld and %lld", k, (long long)lo,
                         (long long)hi);
        *out = v;
    }
    lua_pop(L, 1);
    return have;
}

bool fields_opt_bool(lua_State *L, int t, const char *k, const char *fname, bool def)
{
    lua_getfield(L, t, k);
    bool v = def;
    if (lua_type(L, -1) == LUA_TBOOLEAN)
        v = lua_toboolean(L, -1);
    else if (!lua_isnil(L, -1))
        lualib_error(L, fname, "`%s` must be a boolean, not %s", k, luaL_typename(L, -1));
    lua_pop(L, 1);
    return v;
}

int64_t fields_opt_duration_ms(lua_State *L, int t, const char *k, const char *fname)
{
    lua_getfield(L, t, k);
    int64_t ms = 0;
    if (lua_type(L, -1) == LUA_TNUMBER) {
        double s = lua_tonumber(L, -1);
        if (!(s > 0 && s < 1e9))
            lualib_error(L, fname, "`%s` must be a positive duration", k);
        ms = (int64_t)(s * 1000);
        if (ms == 0)
            ms = 1;
    } else if (lua_type(L, -1) == LUA_TSTRING) {
        int64_t ns;
        if (duration_parse(lua_tostring(L, -1), &ns) != 0 || ns <= 0)
            lualib_error(L, fname, "`%s`: invalid duration '%s'", k, lua_tostring(L, -1));
        ms = ns / 1000000;
        if (ms == 0)
            ms = 1;
    } else if (!lua_isnil(L, -1)) {
        lualib_error(L, fname, "`%s` must be a duration string, not %s", k,
                     luaL_typename(L, -1));
    }
    lua_pop(L, 1);
    return ms;
}
