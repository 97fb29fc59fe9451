/* KumoMTA KeySources (a file path, { key_data = ... }, { event_name = ...,
 * event_args = ... }, and the HashiCorp Vault form, which needs an HTTP
 * client kumod does not have yet) and kumo.secrets.load. Other modules that
 * take a key (kumo.digest.hmac_*, kumo.crypto) wrap their C function with
 * secrets_wrap so that the key is loaded in Lua first, where an event
 * handler that provides it may wait. */
#ifndef KUMOD_LUA_LIB_SECRETS_H
#define KUMOD_LUA_LIB_SECRETS_H
#include <lua.h>

/* Largest key file read (synchronously: key files are small and are read
 * from local disk when the policy loads a key). */
#define SECRETS_MAX_FILE (1024 * 1024)

enum secrets_wrap_mode {
    SECRETS_ARG,        /* argument keyarg is a KeySource */
    SECRETS_ARG_OR_KEY, /* argument keyarg is a KeySource or { key = KeySource } */
    SECRETS_FIELDS,     /* argument keyarg is a table whose fields (a NULL-ended list) are
                           KeySources */
};

/* Replaces the function at the top of L's stack (the core) by a Lua
 * function named fname that loads the key(s) of its argument keyarg as mode
 * says, replacing them by their bytes, then calls the core with the same
 * arguments; the core's errors are raised again at the policy's line. The
 * core must not yield. */
void secrets_wrap(lua_State *L, const char *fname, int keyarg, enum secrets_wrap_mode mode,
                  const char *const *fields);

/* Pushes the KeySource loader load(KS, FNAME, WHAT, LEVEL) -> bytes: a
 * Lua function (it may call an event handler that waits) that raises its
 * errors at LEVEL naming FNAME and WHAT. For modules that only load a key
 * on a cache miss (kumo.dkim). */
void secrets_push_loader(lua_State *L);

void secrets_lua_register(void);

#endif
