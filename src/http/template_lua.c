/* kumo.string.eval_template(NAME, SOURCE, CONTEXT, OPT_DIALECT): compiles
 * SOURCE with the template engine of the injection API and renders it once
 * against CONTEXT (a table, converted to JSON; nil is an empty context).
 * NAME picks the output escaping as MiniJinja does (.html: HTML entities,
 * .json/.yaml: JSON values). Runs on the calling VM's thread, synchronously
 * (a template renders in memory, bounded by TMPL_MAX_OUTPUT). Fails with a
 * Lua error naming the function: bad argument types, an unknown dialect, a
 * context that cannot be converted, a syntax error (with the template name
 * and line), or output over the limit. */
#include "http/template_lua.h"

#include <jansson.h>
#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

#include "core/kerr.h"
#include "http/template.h"
#include "lua/luajson.h"

#define FN "kumo.string.eval_template"

static int l_eval_template(lua_State *L)
{
    static const char *const what[] = {"argument #1 (NAME)", "argument #2 (SOURCE)"};
    for (int i = 0; i < 2; i++)
        if (lua_type(L, i + 1) != LUA_TSTRING)
            return luaL_error(L, FN ": %s must be a string, got %s", what[i],
                              luaL_typename(L, i + 1));
    const char *name = lua_tostring(L, 1);
    size_t srclen;
    const char *src = lua_tolstring(L, 2, &srclen);
    tmpl_dialect dialect = TMPL_JINJA;
    if (!lua_isnoneornil(L, 4)) {
        if (lua_type(L, 4) != LUA_TSTRING)
            return luaL_error(L, FN ": argument #4 (OPT_DIALECT) must be a string, got %s",
                              luaL_typename(L, 4));
        if (tmpl_dialect_parse(lua_tostring(L, 4), &dialect) != 0)
            return luaL_error(L,
                              FN ": argument #4 (OPT_DIALECT): unknown dialect '%s' (expected "
                              "Jinja, Static or Handlebars)",
                              lua_tostring(L, 4));
    }
    char err[512];
    json_t *vars;
    if (lua_isnoneornil(L, 3)) {
        vars = json_object();
    } else {
        if (lua_type(L, 3) != LUA_TTABLE)
            return luaL_error(L, FN ": argument #3 (CONTEXT) must be a table, got %s",
                              luaL_typename(L, 3));
        vars = klua_to_json(L, 3, err, sizeof(err));
        if (!vars)
            return luaL_error(L, FN ": argument #3 (CONTEXT): %s", err);
        if (!json_is_object(vars)) {
            /* an empty table converts to [] */
            json_decref(vars);
            vars = json_object();
        }
    }
    if (!vars)
        return luaL_error(L, FN ": out of memory");
    tmpl_escape esc = tmpl_escape_for_name(name, dialect);
    tmpl *t = NULL;
    int rc = tmpl_compile(src, srclen, dialect, name, esc == TMPL_ESC_HTML, &t, err, sizeof(err));
    if (rc) {
        json_decref(vars);
        if (rc == KERR_NOMEM)
            return luaL_error(L, FN ": out of memory");
        return luaL_error(L, FN ": %s", err);
    }
    tmpl_set_escape(t, esc);
    size_t len;
    char *out = tmpl_render(t, vars, &len, err, sizeof(err));
    tmpl_free(t);
    json_decref(vars);
    if (!out)
        return luaL_error(L, FN ": %s", err);
    lua_pushlstring(L, out, len);
    free(out);
    return 1;
}

void template_lua_open(lua_State *L)
{
    luaL_getsubtable(L, -1, "string");
    lua_pushcfunction(L, l_eval_template);
    lua_setfield(L, -2, "eval_template");
    lua_pop(L, 1);
}
