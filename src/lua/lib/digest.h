/* kumo.digest: sha1, sha224, sha256, sha384, sha512, sha512_256, sha3_256,
 * sha3_384, sha3_512, crc32 over any number of values, and hmac_sha1 ...
 * hmac_sha512 with a KeySource key; results are BinaryResult objects. */
#ifndef KUMOD_LUA_LIB_DIGEST_H
#define KUMOD_LUA_LIB_DIGEST_H
#include <stddef.h>
#include <stdint.h>

/* CRC-32 (IEEE 802.3, the zlib/PNG one), continued from crc (0 to start). */
uint32_t digest_crc32(uint32_t crc, const void *data, size_t n);

/* Registers the kumo.digest opener; call before the first VM is built. */
void digest_lua_register(void);

#endif
