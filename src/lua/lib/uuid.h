/* kumo.uuid: new_v1, new_v4, new_v6, new_v7 and parse, returning Uuid
 * objects (fields bytes, hyphenated, simple, braced, urn). */
#ifndef KUMOD_LUA_LIB_UUID_H
#define KUMOD_LUA_LIB_UUID_H
#include <stddef.h>
#include <stdint.h>

/* Parses the hyphenated, simple (32 hex digits), braced and urn:uuid: forms,
 * either case. Returns 0 or KERR_PARSE. */
int kuuid_parse(const char *s, size_t n, uint8_t out[16]);
/* Version 6 from a version 1 UUID: the same timestamp, clock sequence and
 * node, with the timestamp's bits reordered most significant first (RFC 9562
 * §5.6). */
void kuuid_v1_to_v6(const uint8_t v1[16], uint8_t out[16]);
/* Version 7 (RFC 9562 §5.7) from a Unix time in milliseconds and 10 random
 * bytes. */
void kuuid_make_v7(uint64_t unix_ms, const uint8_t rnd[10], uint8_t out[16]);

void uuid_lua_register(void);

#endif
