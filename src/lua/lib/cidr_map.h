/* A longest-prefix map from IPv4/IPv6 CIDR blocks to integer slots: the
 * core of kumo.cidr.make_map (the Lua values live in a table of the
 * binding, indexed by slot). One binary trie per address family, nodes in
 * one array. IPv4-mapped IPv6 addresses (::ffff:a.b.c.d) look up as IPv4.
 * Not thread-safe; pure otherwise. */
#ifndef KUMOD_LUA_LIB_CIDR_MAP_H
#define KUMOD_LUA_LIB_CIDR_MAP_H
#include <stddef.h>

#include "net/cidr.h"

typedef struct cidr_map cidr_map;

cidr_map *cidr_map_new(void);
void cidr_map_free(cidr_map *m);

/* Associates block c with slot (>= 0), replacing and returning in *old the
 * slot it had (-1 if none). 0 or KERR_NOMEM. */
int cidr_map_insert(cidr_map *m, const cidr *c, int slot, int *old);
/* Forgets block c; returns its slot or -1. */
int cidr_map_remove(cidr_map *m, const cidr *c);
/* The slot of the longest block that contains all of c (an address is a
 * /32 or /128), or -1. */
int cidr_map_lookup(const cidr_map *m, const cidr *c);

/* Parses a map key as KumoMTA's cidr map does: "10.0.0.0/8", "::1",
 * "fe80::/10", and for convenience "127.0.0.1:25", "[127.0.0.1]",
 * "[::1]:25" (the port is ignored). A block with host bits set
 * ("10.0.0.1/24") is refused with a suggestion ("Did you mean
 * 10.0.0.0/24?"). s need not be NUL-terminated. 0, or KERR_PARSE with the
 * reason in err. */
int cidr_map_parse_key(const char *s, size_t len, cidr *out, char *err, size_t errlen);

#endif
