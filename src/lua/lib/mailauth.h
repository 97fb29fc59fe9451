/* Message authentication for policies: msg:dkim_verify() and
 * msg:add_authentication_results() (RFC 6376, RFC 8601). The checks are
 * src/msg/dkim_verify.c; this file looks the keys up through src/net/dns
 * on the calling reactor while the coroutine yields. */
#ifndef KUMOD_LUA_LIB_MAILAUTH_H
#define KUMOD_LUA_LIB_MAILAUTH_H

#include <lua.h>
#include <stddef.h>

#include "msg/message.h"

void mailauth_lua_register(void);

/* ---- shared with msg:arc_verify / msg:arc_seal (arc.c) ---- */

#define MAILAUTH_KEY_NAME_MAX 300

/* The TXT records of the key names a verification asked for. */
typedef struct mailauth_keys mailauth_keys;

/* A continuation: runs once every lookup is in, on the calling coroutine,
 * whose stack is as the caller left it. Returns its number of results, or
 * -1 with an error message pushed (raised once the lookups are released). */
typedef int (*mailauth_keys_k)(lua_State *L, message *m, const mailauth_keys *keys);

/* Looks up the TXT records of names (duplicates looked up once) in
 * parallel through kumod's resolver while the calling coroutine yields,
 * then returns k's results. With no names, k runs at once. Raises a Lua
 * error (naming fname) outside an event coroutine or out of memory. */
int mailauth_fetch_keys(lua_State *L, const char *fname, message *m, const char *const *names,
                        size_t n, mailauth_keys_k k);

/* The records of name: 0 with recs/lens/n (valid until k returns), or
 * DKIM_TEMPERROR (the lookup failed or timed out) / DKIM_PERMERROR (no such
 * record) with the reason. */
int mailauth_keys_get(const mailauth_keys *keys, const char *name, const char *const **recs,
                      const size_t **lens, size_t *n, char *reason, size_t rlen);

/* The optional resolver name at idx: nothing (the default) is fine; a name
 * is an error, as kumod has no kumo.dns.define_resolver yet. */
int mailauth_check_resolver(lua_State *L, int idx, const char *fname);

/* Pushes a whole RFC 8601 header, prefix then the authserv-id (a string at
 * serv_idx) and the AuthenticationResult tables of the array at
 * results_idx, folded, ending in CRLF. Raises argument errors naming fname. */
int mailauth_push_ar(lua_State *L, const char *fname, const char *prefix, int serv_idx,
                     int results_idx);

#endif
