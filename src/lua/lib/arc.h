/* ARC for policies: msg:arc_verify([resolver]) returns the chain's
 * AuthenticationResult (method arc: none, pass or fail with the first
 * reason, props header.oldest-pass), msg:arc_seal(signer, server_id,
 * results[, resolver]) adds an ARC set (ARC-Authentication-Results,
 * ARC-Message-Signature, ARC-Seal) unless the chain failed. RFC 8617; the
 * chain logic is src/msg/arc.c, the key lookups and the RFC 8601 text are
 * shared with msg:dkim_verify (mailauth.c), the signer with msg:dkim_sign
 * (dkim.c). */
#ifndef KUMOD_LUA_LIB_ARC_H
#define KUMOD_LUA_LIB_ARC_H

void arc_lua_register(void);

#endif
