/* Lua for Traffic Shaping Automation.
 *
 * kumo.shaping (every process): load (policy-extras.shaping's mod.load, a
 * Lua function so that it may wait on DNS and HTTP), subscribe_automation
 * and automation_overrides (what the shaping helper's
 * setup_with_automation uses on a node), and the duration and threshold
 * parsers its rule checks use.
 *
 * require 'tsa' (only in the TSA daemon, kumod --tsa, as documented):
 * start_http_listener (kumo.start_http_listener's listener, serving the
 * TSA endpoints) and configure_tsa_db_path (before the listener starts).
 *
 * Runs on whichever reactor's VM calls; errors are Lua errors naming the
 * function. */
#include "tsa/tsa_lua.h"

#include <lauxlib.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "core/duration.h"
#include "core/throttle.h"
#include "lua/klua.h"
#include "lua/luajson.h"
#include "tsa/tsa_state.h"
#include "tsa/tsa_sub.h"

static bool daemon_mode;
static bool db_frozen;

/* kumo.shaping.load is kumod's shaping helper's load(). A KumoMTA user may
 * run KumoMTA's own helpers on kumod: their policy-extras.shaping then comes
 * first on package.path, has no load() (KumoMTA's is native) and calls
 * kumo.shaping.load itself. So when the module that require() finds has no
 * load, the next policy-extras/shaping.lua on package.path that has one
 * (kumod's, in its share directory) is loaded privately, once per VM. */
static const char load_chunk[] =
    "return function(...)\n"
    "  local m = require('policy-extras.shaping')\n"
    "  if type(m) ~= 'table' or type(m.load) ~= 'function' then\n"
    "    m = package.loaded['kumod.shaping']\n"
    "    if not m then\n"
    "      for t in package.path:gmatch('[^;]+') do\n"
    "        local f = t:gsub('%?', 'policy-extras/shaping')\n"
    "        local h = io.open(f)\n"
    "        if h then\n"
    "          h:close()\n"
    "          local ok, cand = pcall(dofile, f)\n"
    "          if ok and type(cand) == 'table' and type(cand.load) == 'function' then\n"
    "            m = cand\n"
    "            package.loaded['kumod.shaping'] = m\n"
    "            break\n"
    "          end\n"
    "        end\n"
    "      end\n"
    "    end\n"
    "    if not m then\n"
    "      error(\"kumo.shaping.load: kumod's own policy-extras/shaping.lua is not on \" ..\n"
    "            'package.path (it is in the share directory of the installation)', 2)\n"
    "    end\n"
    "  end\n"
    "  return m.load(...)\n"
    "end";

static int l_parse_duration(lua_State *L)
{
    int64_t ns;
    if (lua_type(L, 1) == LUA_TNUMBER) {
        lua_Number n = lua_tonumber(L, 1);
        if (n > 0) {
            lua_pushinteger(L, (lua_Integer)n);
            return 1;
        }
    } else if (lua_type(L, 1) == LUA_TSTRING && duration_parse(lua_tostring(L, 1), &ns) == 0 &&
               ns > 0) {
        lua_pushinteger(L, (lua_Integer)((ns + 999999999) / 1000000000));
        return 1;
    }
    const char *shown = luaL_tolstring(L, 1, NULL);
    lua_pushnil(L);
    lua_pushfstring(L, "'%s' is not a duration (such as \"2 hours\" or \"30s\")", shown);
    return 2;
}

static int l_parse_threshold(lua_State *L)
{
    const char *s = lua_tostring(L, 1);
    throttle_spec spec;
    if (s && throttle_spec_parse(s, &spec) == 0) {
        lua_pushinteger(L, (lua_Integer)spec.limit);
        lua_pushinteger(L, (lua_Integer)(spec.period_ns / 1000000000));
        return 2;
    }
    lua_pushnil(L);
    lua_pushfstring(L, "'%s' is not a threshold (such as \"10/hr\")", s ? s : "?");
    return 2;
}

static int l_subscribe(lua_State *L)
{
    const char *url = luaL_checkstring(L, 1);
    if (!tsa_lua_subscriptions_enabled())
        return 0; /* --validate: nothing connects */
    char err[512];
    if (tsa_sub_start(url, err, sizeof(err)) != 0)
        return luaL_error(L, "kumo.shaping.subscribe_automation: %s", err);
    return 0;
}

static int l_overrides(lua_State *L)
{
    json_t *o = tsa_sub_overrides();
    klua_push_json(L, o);
    json_decref(o);
    return 1;
}

static int l_configure_db(lua_State *L)
{
    size_t len;
    const char *p = luaL_checklstring(L, 1, &len);
    if (len == 0 || strlen(p) != len)
        return luaL_error(L, "configure_tsa_db_path: expected a non-empty path without NUL");
    if (db_frozen)
        return luaL_error(L, "configure_tsa_db_path: must be called in tsa_init, before "
                             "start_http_listener's listener starts");
    tsa_state_set_db_path(p);
    return 0;
}

static void tsa_open(lua_State *L)
{
    /* kumo.shaping */
    lua_newtable(L);
    if (luaL_dostring(L, load_chunk) == LUA_OK)
        lua_setfield(L, -2, "load");
    else
        lua_pop(L, 1);
    lua_pushcfunction(L, l_parse_duration);
    lua_setfield(L, -2, "_parse_duration");
    lua_pushcfunction(L, l_parse_threshold);
    lua_setfield(L, -2, "_parse_threshold");
    lua_pushcfunction(L, l_subscribe);
    lua_setfield(L, -2, "subscribe_automation");
    lua_pushcfunction(L, l_overrides);
    lua_setfield(L, -2, "automation_overrides");
    lua_setfield(L, -2, "shaping");
    if (!daemon_mode)
        return;
    lua_pushcfunction(L, l_configure_db);
    lua_setfield(L, -2, "configure_tsa_db_path");
    /* require 'tsa' */
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    lua_newtable(L);
    lua_getfield(L, -3, "start_http_listener");
    lua_setfield(L, -2, "start_http_listener");
    lua_pushcfunction(L, l_configure_db);
    lua_setfield(L, -2, "configure_tsa_db_path");
    lua_setfield(L, -2, "tsa");
    lua_pop(L, 1);
}

static bool subs_enabled = true;

void tsa_lua_register(bool tsa_daemon)
{
    daemon_mode = tsa_daemon;
    klua_register_opener(tsa_open);
}

void tsa_lua_freeze_db_path(void)
{
    db_frozen = true;
}

void tsa_lua_set_subscriptions_enabled(bool on)
{
    subs_enabled = on;
}

bool tsa_lua_subscriptions_enabled(void)
{
    return subs_enabled;
}
