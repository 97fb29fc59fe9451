/* kumo.make_message(SENDER, RECIPIENT, BODY): a Message that exists only in
 * memory (docs/reference/kumo/make_message.md), for policies that build mail
 * and for the Lua tests of the Message methods. Reactor threads (any VM).
 * Bad arguments raise a Lua error naming the function and the argument. */
#include "lua/make_message_lua.h"

#include <lauxlib.h>
#include <string.h>

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

static void make_message_open(lua_State *L)
{
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
