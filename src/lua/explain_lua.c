/* kumo.configure_explain_sampling { rate = R, max_traces = N } (kumod
 * extension, issue 23): which messages keep a policy trace for `explain`
 * (msg/msgtrace.h). rate is the fraction of messages sampled, by spool id
 * (0 to 1, default 0: off); max_traces bounds the traces kept in memory
 * (default 10000; the oldest is evicted first). Process-wide: the last
 * call wins, and calling it from every VM's copy of the policy with the
 * same values changes nothing. Any thread; bad values are Lua errors. */
#include "lua/explain_lua.h"

#include <lauxlib.h>
#include <string.h>

#include "lua/klua.h"
#include "msg/msgtrace.h"

#define FN "kumo.configure_explain_sampling"

static int l_configure_explain_sampling(lua_State *L)
{
    if (lua_type(L, 1) != LUA_TTABLE)
        return luaL_error(L, "%s: expects a table { rate = NUMBER, max_traces = INTEGER }, got %s",
                          FN, luaL_typename(L, 1));
    double rate = 0;
    lua_Integer max = MSGTRACE_DEFAULT_MAX;
    lua_pushnil(L);
    while (lua_next(L, 1)) {
        const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
        if (k && strcmp(k, "rate") == 0) {
            if (lua_type(L, -1) != LUA_TNUMBER)
                return luaL_error(L, "%s: rate must be a number from 0 to 1, got %s", FN,
                                  luaL_typename(L, -1));
            rate = lua_tonumber(L, -1);
            if (!(rate >= 0 && rate <= 1))
                return luaL_error(L, "%s: rate must be from 0 to 1, got %f", FN, rate);
        } else if (k && strcmp(k, "max_traces") == 0) {
            int isint = 0;
            max = lua_tointegerx(L, -1, &isint);
            if (!isint || max < 1 || max > 10000000)
                return luaL_error(L, "%s: max_traces must be an integer from 1 to 10000000", FN);
        } else {
            return luaL_error(L, "%s: unknown field '%s' (expected rate, max_traces)", FN,
                              k ? k : luaL_typename(L, -2));
        }
        lua_pop(L, 1);
    }
    if (msgtrace_configure(rate, (size_t)max) != 0)
        return luaL_error(L, "%s: out of memory for %lld traces", FN, (long long)max);
    return 0;
}

static void explain_open(lua_State *L)
{
    lua_pushcfunction(L, l_configure_explain_sampling);
    lua_setfield(L, -2, "configure_explain_sampling");
}

void explain_lua_register(void)
{
    klua_register_opener(explain_open);
}
