/* kumo.dkim: rsa_sha256_signer, ed25519_signer, set_signing_threads, and
 * the Message method msg:dkim_sign(signer). The signing itself is
 * src/msg/dkim.c; this file keeps the process-wide signer and key caches
 * (dkim_signer_cache, dkim_key_cache), the dkimsign worker pool and the
 * dkim_signer_* metrics. */
#ifndef KUMOD_LUA_LIB_DKIM_H
#define KUMOD_LUA_LIB_DKIM_H

#include <lua.h>
#include <stdbool.h>

#include "msg/dkim.h"

void dkim_lua_register(void);
/* The signer at idx (made by kumo.dkim.rsa_sha256_signer / ed25519_signer):
 * its parameters and key, valid while the signer stays on the stack; false
 * when idx holds something else. */
bool dkim_lua_to_signer(lua_State *L, int idx, const dkim_sign_params **params, dkim_key **key);
/* Stops the dkimsign pool (if started) once its jobs are done; at exit,
 * while the reactors still run (their done halves are posted to them). */
void dkim_lua_stop_pool(void);
/* Empties the caches; at exit, once no VM is left. */
void dkim_lua_shutdown(void);

#endif
