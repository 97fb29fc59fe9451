/* The table of kumo Lua library modules and the one opener that installs
 * them into a VM (see lualib.h). Runs wherever a VM is built (reactor
 * threads, the main thread for --validate); holds no state of its own. */
#include "lua/lib/lualib.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdbool.h>
#include <string.h>

#include "lua/klua.h"

static const lualib_module *const modules[] = {
    &lualib_serde,         &lualib_serde_compat, &lualib_string, &lualib_regex,
    &lualib_regex_set_map, &lualib_domain_map,   &lualib_cidr,   &lualib_memoize,
    &lualib_jsonl,
    &lualib_bounce,        &lualib_trace_header,
};

const lualib_module *const *lualib_modules(size_t *n)
{
    *n = sizeof(modules) / sizeof(modules[0]);
    return modules;
}

void lualib_open(lua_State *L)
{
    int kumo = lua_absindex(L, -1);
    for (size_t i = 0; i < sizeof(modules) / sizeof(modules[0]); i++) {
        const lualib_module *m = modules[i];
        if (m->setup)
            m->setup(L);
        bool sub = strncmp(m->name, "kumo.", 5) == 0;
        if (sub) {
            /* getsubtable: another layer may add to the same sub-table */
            luaL_getsubtable(L, kumo, m->name + 5);
        } else {
            lua_pushvalue(L, kumo);
        }
        luaL_setfuncs(L, m->fns, 0);
        if (sub) {
            luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
            lua_pushvalue(L, -2);
            lua_setfield(L, -2, m->name);
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
}

void lualib_register(void)
{
    klua_register_opener(lualib_open);
}

const char *lualib_checklstring(lua_State *L, int arg, const char *fname, size_t *len)
{
    if (lua_type(L, arg) != LUA_TSTRING && lua_type(L, arg) != LUA_TNUMBER)
        lualib_error(L, fname, "argument #%d must be a string, not %s", arg, luaL_typename(L, arg));
    return lua_tolstring(L, arg, len);
}

lua_Integer lualib_checkinteger(lua_State *L, int arg, const char *fname)
{
    int isnum = 0;
    lua_Integer v = lua_tointegerx(L, arg, &isnum);
    if (!isnum)
        lualib_error(L, fname, "argument #%d must be an integer, not %s", arg,
                     lua_type(L, arg) == LUA_TNUMBER ? "a fractional number"
                                                     : luaL_typename(L, arg));
    return v;
}

lua_Integer lualib_optinteger(lua_State *L, int arg, const char *fname, lua_Integer def)
{
    if (lua_isnoneornil(L, arg))
        return def;
    return lualib_checkinteger(L, arg, fname);
}

int lualib_error(lua_State *L, const char *fname, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    lualib_push_where(L);
    lua_pushfstring(L, "%s: %s", fname, msg);
    lua_concat(L, 2);
    return lua_error(L);
}

void lualib_push_where(lua_State *L)
{
    /* Level 0 is the running C function, level 1 the function that called
     * it. That caller may not be the policy: pcall(kumo.x, ...) puts pcall
     * (a C function) there, and kumod's own Lua glue (chunks named "=...",
     * e.g. =kumod.dispatch, =kumo.fs) may sit between. The line to name is
     * the nearest Lua frame of the policy (or a module it required). */
    lua_Debug ar;
    for (int level = 1; lua_getstack(L, level, &ar); level++) {
        if (!lua_getinfo(L, "Sl", &ar))
            break;
        if (ar.what[0] == 'C' || ar.source[0] == '=' || ar.currentline <= 0)
            continue;
        lua_pushfstring(L, "%s:%d: ", ar.short_src, ar.currentline);
        return;
    }
    lua_pushliteral(L, "");
}

void lualib_new_metatable(lua_State *L, const char *name, const luaL_Reg *methods,
                          lua_CFunction gc, lua_CFunction tostring)
{
    if (luaL_newmetatable(L, name)) {
        lua_newtable(L);
        luaL_setfuncs(L, methods, 0);
        lua_setfield(L, -2, "__index");
        if (gc) {
            lua_pushcfunction(L, gc);
            lua_setfield(L, -2, "__gc");
        }
        if (tostring) {
            lua_pushcfunction(L, tostring);
            lua_setfield(L, -2, "__tostring");
        }
    }
    lua_pop(L, 1);
}
