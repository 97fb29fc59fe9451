/* A bounded cache index with a time to live per entry: string keys map to
 * small integer slots (0..capacity-1) under which the owner keeps the
 * values (kumo.memoize keeps Lua values in a table indexed by slot). When
 * full, inserting evicts the least recently used entry and hands its slot
 * to the new key. Expired entries read as absent. Pure; one thread. */
#ifndef KUMOD_LUA_LIB_LRUTTL_H
#define KUMOD_LUA_LIB_LRUTTL_H
#include <stddef.h>
#include <stdint.h>

typedef struct lruttl lruttl;

/* capacity >= 1. NULL on allocation failure. */
lruttl *lruttl_new(size_t capacity);
void lruttl_free(lruttl *c);

/* The slot of key if present and not expired at now (then it becomes the
 * most recently used), else -1 (an expired entry is dropped). */
long lruttl_get(lruttl *c, const char *key, size_t len, int64_t now);
/* Inserts or refreshes key with the given expiry time; returns its slot,
 * or -1 when memory ran out (the cache is unchanged). */
long lruttl_put(lruttl *c, const char *key, size_t len, int64_t expires);
size_t lruttl_size(const lruttl *c);
size_t lruttl_capacity(const lruttl *c);
/* Counters since creation. */
uint64_t lruttl_evictions(const lruttl *c);

#endif
