/* kumo.make_message(SENDER, RECIPIENT, BODY): a Message that exists only in
 * memory (docs/reference/kumo/make_message.md), for policies that build mail
 * and for the Lua tests of the Message methods; and
 * kumo.generate_rfc3464_message(PARAMS, OPT_ORIG_MSG, LOG_RECORD), a
 * delivery status report built from a log record (msg/rfc3464.c), from the
 * null sender to the record's sender. Reactor threads (any VM).
 * Bad arguments raise a Lua error naming the function and the argument. */
#include "lua/make_message_lua.h"

#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

#include "core/kerr.h"
#include "lua/klua.h"
#include "msg/rfc3464.h"

#include "lua/message_lua.h"
#include "lua/mimepart_lua.h"
#include "msg/rfc2047.h"

/* An envelope address: a string or EnvelopeAddress, valid UTF-8 without
 * controls (what is stored in the spool meta must read back). */
static const char *check_env_addr(lua_State *L, int idx, const char *what)
{
    const char *a = klua_check_address(L, idx);
    size_t n = strlen(a);
    if (!utf8_valid(a, n))
        luaL_error(L, "kumo.make_message: %s is not valid UTF-8", what);
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)a[i] < 0x20 || a[i] == 0x7f)
            luaL_error(L, "kumo.make_message: %s contains a control character", what);
    return a;
}

static int l_make_message(lua_State *L)
{
    const char *sender = check_env_addr(L, 1, "SENDER");
    const char *rcpt = check_env_addr(L, 2, "RECIPIENT");
    size_t len;
    const char *body = luaL_checklstring(L, 3, &len);
    message *m = message_new(NULL, sender, &rcpt, 1);
    if (message_set_data(m, body, len) != 0) {
        message_unref(m);
        return luaL_error(L, "kumo.make_message: out of memory");
    }
    klua_push_message(L, m);
    message_unref(m);
    return 1;
}

static int l_generate_rfc3464_message(lua_State *L)
{
    const char *fn = "kumo.generate_rfc3464_message";
    luaL_checktype(L, 1, LUA_TTABLE);
    message *orig = lua_isnoneornil(L, 2) ? NULL : klua_msg_need_data(L, 2, "generate_rfc3464_message");
    luaL_checktype(L, 3, LUA_TTABLE);
    rfc3464_gen_params p = {0};
    lua_pushnil(L);
    while (lua_next(L, 1)) {
        const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "?";
        if (strcmp(k, "include_original_message") == 0) {
            const char *v = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "";
            if (strcmp(v, "No") == 0)
                p.include_original_message = RFC3464_INCLUDE_NO;
            else if (strcmp(v, "HeadersOnly") == 0)
                p.include_original_message = RFC3464_INCLUDE_HEADERS;
            else if (strcmp(v, "FullContent") == 0)
                p.include_original_message = RFC3464_INCLUDE_FULL;
            else
                return luaL_error(L, "%s: include_original_message must be one of 'FullContent', "
                                     "'HeadersOnly' or 'No'", fn);
        } else if (strcmp(k, "enable_expiration") == 0 || strcmp(k, "enable_bounce") == 0 ||
                   strcmp(k, "stable_content") == 0) {
            if (lua_type(L, -1) != LUA_TBOOLEAN)
                return luaL_error(L, "%s: %s must be a boolean", fn, k);
            bool on = lua_toboolean(L, -1);
            if (k[0] == 's')
                p.stable_content = on;
            else if (k[7] == 'e')
                p.enable_expiration = on;
            else
                p.enable_bounce = on;
        } else if (strcmp(k, "reporting_mta") == 0) {
            if (lua_type(L, -1) != LUA_TTABLE)
                return luaL_error(L, "%s: reporting_mta must be a table {mta_type, name}", fn);
            lua_getfield(L, -1, "mta_type");
            lua_getfield(L, -2, "name");
            p.mta_type = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
            p.mta_name = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
            lua_pop(L, 2); /* still anchored by the table in PARAMS */
            if (!p.mta_type || !p.mta_name)
                return luaL_error(L, "%s: reporting_mta needs mta_type and name strings", fn);
            for (const char *c = p.mta_name; *c; c++)
                if ((unsigned char)*c <= 0x20 || *c == '>' || *c == '<')
                    return luaL_error(L, "%s: reporting_mta.name is not a host name", fn);
        } else {
            return luaL_error(L, "%s: unknown field '%s' in PARAMS", fn, k);
        }
        lua_pop(L, 1);
    }
    lua_getfield(L, 1, "include_original_message");
    bool has_include = !lua_isnil(L, -1);
    lua_pop(L, 1);
    if (!has_include)
        return luaL_error(L, "%s: PARAMS.include_original_message is required", fn);
    if (!p.mta_name)
        return luaL_error(L, "%s: PARAMS.reporting_mta is required", fn);
    char err[256];
    json_t *rec = klua_to_json(L, 3, err, sizeof(err));
    if (!rec)
        return luaL_error(L, "%s: LOG_RECORD: %s", fn, err);
    char *out;
    size_t len;
    int rc = rfc3464_generate(&p, orig ? orig->data : NULL, orig ? orig->data_len : 0, rec, &out,
                              &len, err, sizeof(err));
    const char *to = json_string_value(json_object_get(rec, "sender"));
    char *rcpt = to ? strdup(to) : NULL;
    json_decref(rec);
    if (rc) {
        free(rcpt);
        return luaL_error(L, "%s: %s", fn, rc == KERR_PARSE ? err : kerr_str(rc));
    }
    if (!out) {
        free(rcpt);
        lua_pushnil(L);
        return 1;
    }
    const char *r = rcpt;
    message *m = message_new(NULL, "", &r, 1);
    free(rcpt);
    message_set_data_take(m, out, len);
    klua_push_message(L, m);
    message_unref(m);
    return 1;
}

static void make_message_open(lua_State *L)
{
    lua_pushcfunction(L, l_generate_rfc3464_message);
    lua_setfield(L, -2, "generate_rfc3464_message");
    lua_pushcfunction(L, l_make_message);
    lua_setfield(L, -2, "make_message");
}

void message_lua_register(void)
{
    /* the Message and EnvelopeAddress metatables first: everything after
     * them may push messages */
    klua_register_opener(message_lua_open);
    klua_register_opener(make_message_open);
    klua_register_opener(mimepart_lua_open);
}
