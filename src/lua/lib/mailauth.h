/* Message authentication for policies: msg:dkim_verify() and
 * msg:add_authentication_results() (RFC 6376, RFC 8601). The checks are
 * src/msg/dkim_verify.c; this file looks the keys up through src/net/dns
 * on the calling reactor while the coroutine yields. */
#ifndef KUMOD_LUA_LIB_MAILAUTH_H
#define KUMOD_LUA_LIB_MAILAUTH_H

void mailauth_lua_register(void);

#endif
