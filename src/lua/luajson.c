/* Conversion between Lua values and JSON (jansson): what kumo.json_*,
 * the Message binding (meta, scheduling), the policy's configuration
 * tables and the HTTP and SMTP layers use. A lower helper of the lua layer:
 * it knows no VM, no event and no userdata of its own; the userdata that
 * convert (a connection's meta) register a converter here.
 *
 * Threads: any thread that owns the lua_State; the converter table is
 * written once at start-up (under the caller's pthread_once) and only
 * read afterwards. Failures: klua_to_json returns NULL with a message
 * (functions, mixed keys, nesting deeper than 64 or a cycle); lua errors
 * (stack overflow) are raised in the caller's state. */
#include "lua/luajson.h"

#include <lauxlib.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/utf8.h"

#define MAX_UDATA 8

static struct {
    const char *metatable;
    luajson_udata_fn to_json;
} udata[MAX_UDATA];
static int n_udata;

void luajson_add_udata(const char *metatable, luajson_udata_fn to_json)
{
    if (n_udata == MAX_UDATA)
        abort(); /* a programming error: raise MAX_UDATA */
    udata[n_udata].metatable = metatable;
    udata[n_udata].to_json = to_json;
    n_udata++;
}

void klua_push_json(lua_State *L, const json_t *j)
{
    luaL_checkstack(L, 4, "json nesting too deep");
    if (!j) {
        lua_pushnil(L);
        return;
    }
    switch (json_typeof(j)) {
    case JSON_OBJECT: {
        lua_createtable(L, 0, (int)json_object_size(j));
        const char *k;
        const json_t *v;
        json_object_foreach((json_t *)j, k, v) {
            klua_push_json(L, v);
            lua_setfield(L, -2, k);
        }
        break;
    }
    case JSON_ARRAY: {
        lua_createtable(L, (int)json_array_size(j), 0);
        size_t i;
        const json_t *v;
        json_array_foreach(j, i, v) {
            klua_push_json(L, v);
            lua_rawseti(L, -2, (lua_Integer)i + 1);
        }
        break;
    }
    case JSON_STRING:
        lua_pushlstring(L, json_string_value(j), json_string_length(j));
        break;
    case JSON_INTEGER:
        lua_pushinteger(L, (lua_Integer)json_integer_value(j));
        break;
    case JSON_REAL:
        lua_pushnumber(L, json_real_value(j));
        break;
    case JSON_TRUE:
        lua_pushboolean(L, 1);
        break;
    case JSON_FALSE:
        lua_pushboolean(L, 0);
        break;
    case JSON_NULL:
        lua_pushnil(L);
        break;
    }
}

static json_t *klua_to_json_depth(lua_State *L, int idx, int depth, char *err, size_t errlen)
{
    idx = lua_absindex(L, idx);
    if (depth > 64) {
        snprintf(err, errlen, "value nested too deeply (or contains a cycle)");
        return NULL;
    }
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
    case LUA_TNONE:
        return json_null();
    case LUA_TBOOLEAN:
        return json_boolean(lua_toboolean(L, idx));
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx))
            return json_integer((json_int_t)lua_tointeger(L, idx));
        return json_real(lua_tonumber(L, idx));
    case LUA_TSTRING: {
        size_t len;
        const char *s = lua_tolstring(L, idx, &len);
        /* JSON text is UTF-8: a string that is not would make the whole
         * document unwritable (meta in the spool, a log record), so it is
         * refused here, where the policy line can be named. */
        size_t bad = utf8_invalid_at(s, len);
        if (bad != len) {
            snprintf(err, errlen,
                     "string is not valid UTF-8 (byte 0x%02x at offset %zu); "
                     "only UTF-8 text can be stored as JSON",
                     (unsigned char)s[bad], bad);
            return NULL;
        }
        return json_stringn_nocheck(s, len);
    }
    case LUA_TTABLE: {
        luaL_checkstack(L, 6, "json nesting too deep");
        /* An array when the keys are exactly 1..n (n >= 1). */
        lua_Integer n = (lua_Integer)lua_rawlen(L, idx);
        size_t count = 0;
        bool all_int = true;
        lua_pushnil(L);
        while (lua_next(L, idx)) {
            count++;
            if (!lua_isinteger(L, -2))
                all_int = false;
            lua_pop(L, 1);
        }
        if (count > 0 && all_int && (lua_Integer)count == n) {
            json_t *a = json_array();
            for (lua_Integer i = 1; i <= n; i++) {
                lua_rawgeti(L, idx, i);
                json_t *v = klua_to_json_depth(L, -1, depth + 1, err, errlen);
                lua_pop(L, 1);
                if (!v) {
                    json_decref(a);
                    return NULL;
                }
                json_array_append_new(a, v);
            }
            return a;
        }
        json_t *o = json_object();
        lua_pushnil(L);
        while (lua_next(L, idx)) {
            char kbuf[32];
            const char *k;
            if (lua_type(L, -2) == LUA_TSTRING) {
                size_t klen;
                k = lua_tolstring(L, -2, &klen);
                if (!utf8_valid(k, klen) || strlen(k) != klen) {
                    snprintf(err, errlen, "table key is not valid UTF-8 text");
                    lua_pop(L, 2);
                    json_decref(o);
                    return NULL;
                }
            } else if (lua_isinteger(L, -2)) {
                snprintf(kbuf, sizeof(kbuf), "%lld", (long long)lua_tointeger(L, -2));
                k = kbuf;
            } else {
                snprintf(err, errlen, "table key of type %s cannot be converted to JSON",
                         luaL_typename(L, -2));
                lua_pop(L, 2);
                json_decref(o);
                return NULL;
            }
            json_t *v = klua_to_json_depth(L, -1, depth + 1, err, errlen);
            if (!v) {
                lua_pop(L, 2);
                json_decref(o);
                return NULL;
            }
            json_object_set_new(o, k, v);
            lua_pop(L, 1);
        }
        return o;
    }
    case LUA_TUSERDATA:
        for (int i = 0; i < n_udata; i++)
            if (luaL_testudata(L, idx, udata[i].metatable))
                return udata[i].to_json(L, idx);
        if (luaL_getmetafield(L, idx, "__tojson") != LUA_TNIL) {
            lua_pushvalue(L, idx);
            lua_call(L, 1, 1);
            json_t *j = klua_to_json_depth(L, -1, depth + 1, err, errlen);
            lua_pop(L, 1);
            return j;
        }
        /* fall through */
    default:
        snprintf(err, errlen, "a %s value cannot be converted to JSON", luaL_typename(L, idx));
        return NULL;
    }
}

json_t *klua_to_json(lua_State *L, int idx, char *err, size_t errlen)
{
    return klua_to_json_depth(L, idx, 0, err, errlen);
}
