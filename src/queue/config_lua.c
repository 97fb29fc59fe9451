/* kumo.invoke_get_queue_config, invoke_get_egress_path_config,
 * invoke_get_egress_source, invoke_get_egress_pool: call the policy's
 * handlers with the arguments kumod itself passes them (a queue name is
 * split into domain, tenant, campaign, routing_domain as the scheduled
 * queue does) and return the resolved configuration (config_resolve.h);
 * without a handler, what kumod would use. And the functions over such
 * tables: kumo.compute_egress_path_config_constraints,
 * compute_queue_config_constraints, format_egress_path_config_constraints,
 * format_egress_path_config_toml, format_queue_config_toml.
 *
 * Thread: the reactor (or script) whose VM calls them. The handlers run in
 * the caller's own coroutine (lua_callk through kumod's dispatcher), so a
 * handler may wait; errors, the handler's own or a configuration the makers
 * refuse, are Lua errors naming the function and the policy line. */
#include <lauxlib.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "lua/klua.h"
#include "lua/lib/lualib.h"
#include "lua/luajson.h"
#include "msg/queue_name.h"
#include "queue/config.h"
#include "queue/config_resolve.h"
#include "queue/constraints.h"

/* ---- resolved tables ------------------------------------------------------------ */

/* Pushes the resolved form of the table at idx (nil: every default). */
static void push_resolved(lua_State *L, int idx, config_kind kind, const char *fname)
{
    char err[512];
    json_t *given = NULL;
    if (!lua_isnoneornil(L, idx)) {
        if (lua_type(L, idx) != LUA_TTABLE)
            lualib_error(L, fname, "expected a table, not %s", luaL_typename(L, idx));
        given = klua_to_json(L, idx, err, sizeof(err));
        if (!given)
            lualib_error(L, fname, "%s", err);
    }
    json_t *r = config_resolve(kind, given, err, sizeof(err));
    json_decref(given);
    if (!r)
        lualib_error(L, fname, "%s", err);
    klua_push_json(L, r);
    json_decref(r);
}

static int finish_queue(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    (void)ctx;
    push_resolved(L, lua_gettop(L), CONFIG_QUEUE, "kumo.invoke_get_queue_config");
    return 1;
}

static void push_opt(lua_State *L, const char *s)
{
    if (s)
        lua_pushstring(L, s);
    else
        lua_pushnil(L);
}

static int l_invoke_get_queue_config(lua_State *L)
{
    const char *name = lualib_checklstring(L, 1, "kumo.invoke_get_queue_config", NULL);
    queue_name_parts p;
    if (queue_name_parse(name, &p) != 0)
        return lualib_error(L, "kumo.invoke_get_queue_config", "invalid queue name '%s'", name);
    lua_settop(L, 1);
    klua_push_dispatcher(L);
    lua_pushliteral(L, "get_queue_config");
    lua_pushstring(L, p.domain);
    push_opt(L, p.tenant);
    push_opt(L, p.campaign);
    push_opt(L, p.routing_domain);
    queue_name_parts_fini(&p);
    lua_callk(L, 5, 1, 0, finish_queue);
    return finish_queue(L, LUA_OK, 0);
}

static int finish_path(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    (void)ctx;
    push_resolved(L, lua_gettop(L), CONFIG_EGRESS_PATH, "kumo.invoke_get_egress_path_config");
    return 1;
}

static int l_invoke_get_egress_path_config(lua_State *L)
{
    static const char fname[] = "kumo.invoke_get_egress_path_config";
    for (int i = 1; i <= 3; i++)
        lualib_checklstring(L, i, fname, NULL);
    lua_settop(L, 3);
    klua_push_dispatcher(L);
    lua_pushliteral(L, "get_egress_path_config");
    for (int i = 1; i <= 3; i++)
        lua_pushvalue(L, i);
    lua_callk(L, 4, 1, 0, finish_path);
    return finish_path(L, LUA_OK, 0);
}

/* kumod's rules (readyq.c, schedq.c): "unspecified" never calls the handler;
 * a named source or pool needs one that answers. */
static int finish_source(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    static const char fname[] = "kumo.invoke_get_egress_source";
    if (lua_isnil(L, -1)) {
        if (!ctx)
            return lualib_error(L, fname, "get_egress_source('%s') returned no source",
                                lua_tostring(L, 1));
        lua_pop(L, 1);
        lua_createtable(L, 0, 1);
        lua_pushvalue(L, 1);
        lua_setfield(L, -2, "name");
    }
    push_resolved(L, lua_gettop(L), CONFIG_EGRESS_SOURCE, fname);
    return 1;
}

static bool has_handler(lua_State *L, const char *event)
{
    lua_getfield(L, LUA_REGISTRYINDEX, "kumod.handlers");
    lua_getfield(L, -1, event);
    bool has = !lua_isnil(L, -1);
    lua_pop(L, 2);
    return has;
}

static int l_invoke_get_egress_source(lua_State *L)
{
    const char *name = lualib_checklstring(L, 1, "kumo.invoke_get_egress_source", NULL);
    lua_settop(L, 1);
    if (strcmp(name, "unspecified") == 0 || !has_handler(L, "get_egress_source")) {
        lua_pushnil(L);
        return finish_source(L, LUA_OK, 1);
    }
    klua_push_dispatcher(L);
    lua_pushliteral(L, "get_egress_source");
    lua_pushvalue(L, 1);
    lua_callk(L, 2, 1, 0, finish_source);
    return finish_source(L, LUA_OK, 0);
}

static int finish_pool(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    (void)ctx;
    static const char fname[] = "kumo.invoke_get_egress_pool";
    if (lua_isnil(L, -1))
        return lualib_error(L, fname, "get_egress_pool('%s') returned no pool",
                            lua_tostring(L, 1));
    push_resolved(L, lua_gettop(L), CONFIG_EGRESS_POOL, fname);
    return 1;
}

static int l_invoke_get_egress_pool(lua_State *L)
{
    static const char fname[] = "kumo.invoke_get_egress_pool";
    const char *name = lualib_checklstring(L, 1, fname, NULL);
    lua_settop(L, 1);
    if (strcmp(name, "unspecified") == 0) {
        /* the pool of one source that every unnamed queue uses */
        lua_pushnil(L);
        json_t *p = json_pack("{s:s,s:[{s:s,s:i}]}", "name", "unspecified", "entries", "name",
                              "unspecified", "weight", 1);
        char err[256];
        json_t *r = config_resolve(CONFIG_EGRESS_POOL, p, err, sizeof(err));
        json_decref(p);
        klua_push_json(L, r);
        json_decref(r);
        return 1;
    }
    if (!has_handler(L, "get_egress_pool"))
        return lualib_error(L, fname,
                            "egress_pool '%s' is named but no get_egress_pool handler is "
                            "registered",
                            name);
    klua_push_dispatcher(L);
    lua_pushliteral(L, "get_egress_pool");
    lua_pushvalue(L, 1);
    lua_callk(L, 2, 1, 0, finish_pool);
    return finish_pool(L, LUA_OK, 0);
}

/* ---- constraints ------------------------------------------------------------------ */

/* The parsed configuration of the table at idx, or a Lua error. */
static void check_path(lua_State *L, int idx, const char *fname, egress_path_config *out)
{
    char err[512];
    if (lua_type(L, idx) != LUA_TTABLE)
        lualib_error(L, fname, "argument #%d must be a table, not %s", idx, luaL_typename(L, idx));
    json_t *j = klua_to_json(L, idx, err, sizeof(err));
    if (!j || egress_path_from_json(j, out, err, sizeof(err)) != 0) {
        json_decref(j);
        lualib_error(L, fname, "%s", err);
    }
    json_decref(j);
}

static void check_queue(lua_State *L, int idx, const char *fname, queue_config *out)
{
    char err[512];
    if (lua_type(L, idx) != LUA_TTABLE)
        lualib_error(L, fname, "argument #%d must be a table, not %s", idx, luaL_typename(L, idx));
    json_t *j = klua_to_json(L, idx, err, sizeof(err));
    if (!j || queue_config_from_json(j, out, err, sizeof(err)) != 0) {
        json_decref(j);
        lualib_error(L, fname, "%s", err);
    }
    json_decref(j);
}

static const char *const kinds[] = {"primary", "additional", "reconnect_cycling", "other"};

static void push_ceiling(lua_State *L, const eff_ceiling *c, const char *field)
{
    if (!c->set)
        return;
    lua_createtable(L, 0, 3);
    lua_pushnumber(L, c->value); /* may be math.huge: the open concurrency of a queue */
    lua_setfield(L, -2, "value");
    lua_createtable(L, 0, 2);
    lua_pushstring(L, kinds[c->kind]);
    lua_setfield(L, -2, "kind");
    if (c->kind == CEIL_ADDITIONAL || c->kind == CEIL_OTHER) {
        lua_pushstring(L, c->name);
        lua_setfield(L, -2, "name");
    }
    lua_setfield(L, -2, "source");
    lua_pushstring(L, c->display);
    lua_setfield(L, -2, "display");
    lua_setfield(L, -2, field);
}

static void push_constraints(lua_State *L, const eff_constraints *c)
{
    lua_createtable(L, 0, 5);
    push_ceiling(L, &c->dispatchers, "max_concurrent_dispatchers");
    push_ceiling(L, &c->message_rate, "max_message_rate");
    if (c->has_declared) {
        lua_pushstring(L, c->declared);
        lua_setfield(L, -2, "max_message_rate_declared");
    }
    push_ceiling(L, &c->connection_rate, "max_connection_rate");
    push_ceiling(L, &c->selection_rate, "max_source_selection_rate");
}

static void check_ceiling(lua_State *L, int t, const char *field, eff_ceiling *out,
                          const char *fname)
{
    memset(out, 0, sizeof(*out));
    lua_getfield(L, t, field);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return;
    }
    int c = lua_gettop(L);
    if (lua_type(L, c) != LUA_TTABLE)
        lualib_error(L, fname, "%s: expected a ceiling table, not %s", field,
                     luaL_typename(L, c));
    lua_getfield(L, c, "value");
    lua_getfield(L, c, "display");
    lua_getfield(L, c, "source");
    bool ok = lua_type(L, c + 1) == LUA_TNUMBER &&
              lua_type(L, c + 2) == LUA_TSTRING && lua_type(L, c + 3) == LUA_TTABLE;
    int kind = -1;
    const char *name = NULL;
    if (ok) {
        lua_getfield(L, c + 3, "kind");
        lua_getfield(L, c + 3, "name");
        const char *k = lua_tostring(L, -2);
        for (int i = 0; k && i < 4; i++)
            if (strcmp(k, kinds[i]) == 0)
                kind = i;
        name = lua_tostring(L, -1);
    }
    if (!ok || kind < 0 || ((kind == CEIL_ADDITIONAL || kind == CEIL_OTHER) && !name))
        lualib_error(L, fname,
                     "%s: expected {value = number, source = {kind = 'primary'|'additional'|"
                     "'reconnect_cycling'|'other', name = ...}, display = string}",
                     field);
    out->set = true;
    out->value = lua_tonumber(L, c + 1);
    out->kind = (ceil_kind)kind;
    snprintf(out->name, sizeof(out->name), "%s", name ? name : "");
    snprintf(out->display, sizeof(out->display), "%s", lua_tostring(L, c + 2));
    lua_settop(L, c - 1);
}

static void check_constraints(lua_State *L, int idx, eff_constraints *out, const char *fname)
{
    if (lua_type(L, idx) != LUA_TTABLE)
        lualib_error(L, fname, "argument #%d must be a constraints table, not %s", idx,
                     luaL_typename(L, idx));
    memset(out, 0, sizeof(*out));
    check_ceiling(L, idx, "max_concurrent_dispatchers", &out->dispatchers, fname);
    if (!out->dispatchers.set)
        lualib_error(L, fname, "argument #%d: max_concurrent_dispatchers is required", idx);
    check_ceiling(L, idx, "max_message_rate", &out->message_rate, fname);
    check_ceiling(L, idx, "max_connection_rate", &out->connection_rate, fname);
    check_ceiling(L, idx, "max_source_selection_rate", &out->selection_rate, fname);
    lua_getfield(L, idx, "max_message_rate_declared");
    if (lua_type(L, -1) == LUA_TSTRING) {
        out->has_declared = true;
        snprintf(out->declared, sizeof(out->declared), "%s", lua_tostring(L, -1));
    }
    lua_pop(L, 1);
}

static int l_compute_path_constraints(lua_State *L)
{
    static const char fname[] = "kumo.compute_egress_path_config_constraints";
    eff_constraints extra;
    bool has_extra = !lua_isnoneornil(L, 2);
    if (has_extra)
        check_constraints(L, 2, &extra, fname);
    egress_path_config pc;
    check_path(L, 1, fname, &pc);
    eff_constraints c;
    constraints_of_path(&pc, &c);
    egress_path_fini(&pc);
    if (has_extra)
        constraints_merge(&c, &extra);
    push_constraints(L, &c);
    return 1;
}

static int l_compute_queue_constraints(lua_State *L)
{
    queue_config qc;
    check_queue(L, 1, "kumo.compute_queue_config_constraints", &qc);
    eff_constraints c;
    constraints_of_queue(&qc, &c);
    queue_config_fini(&qc);
    push_constraints(L, &c);
    return 1;
}

static int l_format_constraints(lua_State *L)
{
    eff_constraints c;
    check_constraints(L, 1, &c, "kumo.format_egress_path_config_constraints");
    char *s = constraints_render(&c);
    lua_pushstring(L, s);
    free(s);
    return 1;
}

static int format_toml(lua_State *L, config_kind kind, const char *fname)
{
    char err[512];
    if (lua_type(L, 1) != LUA_TTABLE)
        return lualib_error(L, fname, "argument #1 must be a table, not %s", luaL_typename(L, 1));
    json_t *j = klua_to_json(L, 1, err, sizeof(err));
    char *s = j ? config_resolve_toml(kind, j, err, sizeof(err)) : NULL;
    json_decref(j);
    if (!s)
        return lualib_error(L, fname, "%s", err);
    lua_pushstring(L, s);
    free(s);
    return 1;
}

static int l_format_path_toml(lua_State *L)
{
    return format_toml(L, CONFIG_EGRESS_PATH, "kumo.format_egress_path_config_toml");
}

static int l_format_queue_toml(lua_State *L)
{
    return format_toml(L, CONFIG_QUEUE, "kumo.format_queue_config_toml");
}

static void config_lua_open(lua_State *L)
{
    static const luaL_Reg fns[] = {
        {"invoke_get_queue_config", l_invoke_get_queue_config},
        {"invoke_get_egress_path_config", l_invoke_get_egress_path_config},
        {"invoke_get_egress_source", l_invoke_get_egress_source},
        {"invoke_get_egress_pool", l_invoke_get_egress_pool},
        {"compute_egress_path_config_constraints", l_compute_path_constraints},
        {"compute_queue_config_constraints", l_compute_queue_constraints},
        {"format_egress_path_config_constraints", l_format_constraints},
        {"format_egress_path_config_toml", l_format_path_toml},
        {"format_queue_config_toml", l_format_queue_toml},
        {NULL, NULL},
    };
    luaL_setfuncs(L, fns, 0);
}

void queue_config_lua_register_invoke(void)
{
    klua_register_opener(config_lua_open);
}
