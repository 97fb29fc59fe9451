/* kumo.domain_map: a dictionary keyed by domain names in which a key
 * "*.example.com" answers for every name below example.com (any depth), but
 * not for example.com itself, and an exact key always wins over a wildcard.
 * Keys compare as given (byte for byte, as in KumoMTA). Pure core below,
 * Lua binding in domain_map.c; values live in a Lua table held by the map.
 *
 * The lookup order, most specific first, for "a.b.example.com":
 *   a.b.example.com, *.b.example.com, *.example.com, *.com, *
 * so that a key "*" alone answers for every name no other key covers. */
#ifndef KUMOD_LUA_LIB_DOMAIN_MAP_H
#define KUMOD_LUA_LIB_DOMAIN_MAP_H
#include <stddef.h>

/* Iterates the candidate keys of name (len bytes): *pos starts at 0; each
 * call returns the offset in name where the suffix of the next candidate
 * starts and sets *wild when the candidate is "*." + that suffix (exact
 * name first, with *wild = 0). Returns -1 when there are no more. */
long domain_map_next_candidate(const char *name, size_t len, size_t *pos, int *wild);

#endif
