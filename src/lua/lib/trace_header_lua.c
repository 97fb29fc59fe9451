/* kumo.apply_supplemental_trace_header(MSG [, PARAMS]): the supplemental
 * trace header of start_esmtp_listener's trace_headers, added to a message
 * the policy holds. PARAMS has trace_headers' keys (received_header,
 * supplemental_header, header_name, include_meta_names); omitted or nil
 * means the defaults (X-KumoRef, no meta names). Only the supplemental
 * header is added (received_header applies to reception). Reactor
 * threads; bad parameters are Lua errors naming the key. */
#include <lauxlib.h>
#include <string.h>

#include "core/kerr.h"
#include "lua/lib/lualib.h"
#include "lua/luajson.h"
#include "lua/message_lua.h"
#include "msg/trace_header.h"

#define FN "kumo.apply_supplemental_trace_header"

static bool valid_header_name(const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++)
        if ((unsigned char)*s <= 32 || (unsigned char)*s >= 127 || *s == ':')
            return false;
    return true;
}

static int l_apply(lua_State *L)
{
    message *m = klua_msg_need_data(L, 1, FN);
    bool supplemental = true;
    const char *name = "X-KumoRef";
    json_t *names = NULL;
    if (!lua_isnoneornil(L, 2)) {
        if (lua_type(L, 2) != LUA_TTABLE)
            return lualib_error(L, FN, "argument #2 must be a table or nil, not %s",
                                luaL_typename(L, 2));
        lua_pushnil(L);
        while (lua_next(L, 2)) {
            const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
            if (!k)
                return lualib_error(L, FN, "parameter keys must be strings");
            if (strcmp(k, "supplemental_header") == 0 || strcmp(k, "received_header") == 0) {
                if (lua_type(L, -1) != LUA_TBOOLEAN)
                    return lualib_error(L, FN, "%s: expected a boolean, not %s", k,
                                        luaL_typename(L, -1));
                if (k[0] == 's')
                    supplemental = lua_toboolean(L, -1);
            } else if (strcmp(k, "header_name") == 0) {
                if (lua_type(L, -1) != LUA_TSTRING || !valid_header_name(lua_tostring(L, -1)))
                    return lualib_error(L, FN, "header_name: expected a header name");
                name = lua_tostring(L, -1); /* anchored by the table */
            } else if (strcmp(k, "include_meta_names") == 0) {
                if (lua_type(L, -1) != LUA_TTABLE)
                    return lualib_error(L, FN, "include_meta_names: expected a list of strings");
                lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
                for (lua_Integer i = 1; i <= n; i++) {
                    int t = lua_rawgeti(L, -1, i);
                    lua_pop(L, 1);
                    if (t != LUA_TSTRING)
                        return lualib_error(L, FN, "include_meta_names[%lld]: expected a string",
                                            (long long)i);
                }
            } else {
                return lualib_error(L, FN, "unknown parameter '%s'", k);
            }
            lua_pop(L, 1);
        }
        lua_getfield(L, 2, "include_meta_names");
        if (lua_type(L, -1) == LUA_TTABLE) {
            names = json_array();
            lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
            for (lua_Integer i = 1; i <= n; i++) {
                lua_rawgeti(L, -1, i);
                json_array_append_new(names, json_string(lua_tostring(L, -1)));
                lua_pop(L, 1);
            }
        }
        lua_pop(L, 1);
    }
    if (!supplemental) {
        json_decref(names);
        return 0;
    }
    int rc = trace_header_supplemental(m, name, names);
    json_decref(names);
    if (rc != 0)
        return lualib_error(L, FN, "%s", kerr_str(rc));
    return 0;
}

static const luaL_Reg fns[] = {
    {"apply_supplemental_trace_header", l_apply},
    {NULL, NULL},
};

const lualib_module lualib_trace_header = {"kumo", fns, NULL};
