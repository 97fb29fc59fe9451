/* Named throttles and connection-limit leases, shared through Redis once
 * kumo.configure_redis_throttles has named one, else kept in this process.
 *
 * Throttles are GCRA (core/throttle.h) evaluated atomically in Redis by one
 * Lua script (EVALSHA; the server's clock, so nodes need not agree on the
 * time). Leases are members of a sorted set scored by their expiry: a node
 * that dies stops renewing its leases and they lapse after
 * SHLEASE_TTL_NS.
 *
 * Redis unreachable (KumoMTA's pages do not say what happens then): the
 * same throttle or limit is evaluated in this process instead, an error is
 * logged when that starts and a notice when Redis answers again, and the
 * next call after that is shared again. Nothing waits for Redis beyond its
 * response_timeout. */
#ifndef KUMOD_NET_SHTHROTTLE_H
#define KUMOD_NET_SHTHROTTLE_H
#include <stdbool.h>
#include <stdint.h>

#include "core/throttle.h"
#include "net/redis.h"

#define SHLEASE_TTL_NS (10LL * 1000000000LL)
#define SHLEASE_RENEW_NS (3LL * 1000000000LL)

/* Makes cfg (a reference moves in; NULL to go back to in-process) the
 * store of every non-local throttle and limit. Any thread. */
void shthrottle_configure(redis_cfg *cfg_take);
/* Whether Redis sharing is configured (not whether it answers). */
bool shthrottle_is_shared(void);

typedef struct shthrottle_result {
    bool throttled;
    uint64_t limit;         /* the burst: events allowed at once */
    uint64_t remaining;     /* events still allowed now */
    unsigned granted;       /* tokens taken (0 when throttled) */
    int64_t reset_after_ns; /* until the throttle is back to its full burst */
    int64_t retry_after_ns; /* throttled: until one token is available */
    bool shared;            /* evaluated in Redis */
} shthrottle_result;

typedef void (*shthrottle_fn)(const shthrottle_result *r, void *ud);

/* Takes up to want (>= 1) tokens of the throttle called name. Returns 0 when
 * answered at once into *out (fn is not called), 1 when fn(result, ud) will
 * run later on this reactor. Off-reactor always answers at once (local). */
int shthrottle_take(const char *name, const throttle_spec *spec, unsigned want,
                    shthrottle_result *out, shthrottle_fn fn, void *ud);

/* The in-process evaluation on its own (what the fallback uses). */
void shthrottle_take_local(const char *name, const throttle_spec *spec, unsigned want,
                           int64_t now_ns, shthrottle_result *out);

typedef struct shlease shlease;
/* lease is NULL when the limit is reached. */
typedef void (*shlease_fn)(shlease *lease, void *ud);

/* Acquires one of limit leases called name (shared unless local or Redis is
 * not configured). Returns 0 when answered at once into *out (the lease or
 * NULL), 1 when fn runs later on this reactor. A granted lease is renewed on
 * this reactor until shlease_release, which must run here too. */
int shlease_acquire(const char *name, long limit, bool local, shlease **out, shlease_fn fn,
                    void *ud);
void shlease_release(shlease *l);
bool shlease_is_shared(const shlease *l);

/* Waits, up to timeout_ns, until the lease releases sent so far have been
 * answered (orderly shutdown: the reactors still run). Any thread but a
 * reactor. */
void shthrottle_drain(int64_t timeout_ns);

/* The in-process holders of name (tests, inspection). */
long shlease_local_count(const char *name);

#endif
