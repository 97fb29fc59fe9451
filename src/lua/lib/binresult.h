/* The BinaryResult object of kumo.digest and kumo.crypto: a byte string
 * whose fields give it raw (`bytes`) or encoded (`hex`, `base32`,
 * `base64url_nopad`, ...); tostring() gives hex. Lua side only; the
 * metatable is created on first use in each VM. */
#ifndef KUMOD_LUA_LIB_BINRESULT_H
#define KUMOD_LUA_LIB_BINRESULT_H
#include <lua.h>
#include <stddef.h>
#include <stdint.h>

/* Pushes a new BinaryResult holding a copy of data[0..n). */
void binresult_push(lua_State *L, const uint8_t *data, size_t n);
/* The bytes of the BinaryResult at idx, or NULL when it is not one. */
const uint8_t *binresult_test(lua_State *L, int idx, size_t *n);

#endif
