/* Redis client on the reactors: hiredis's asynchronous API attached to the
 * calling reactor's libevent base, one client per (configuration, reactor),
 * never a blocking call. A configuration (redis_cfg) is immutable and shared
 * by every thread; each reactor that issues a command through it gets its
 * own connections, made on first use and remade after a failure.
 *
 * Cluster mode routes each command by the CRC16 hash slot of its key and
 * follows MOVED and ASK redirections, learning the slot map as it goes. */
#ifndef KUMOD_NET_REDIS_H
#define KUMOD_NET_REDIS_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <hiredis/hiredis.h>

struct reactor;
typedef struct redis_cfg redis_cfg;

typedef struct redis_cfg_params {
    const char *const *urls; /* redis://[user][:password@]host[:port][/db] */
    size_t n_urls;
    int cluster; /* -1: cluster when more than one url */
    const char *username, *password; /* for every cluster node */
    int64_t connect_timeout_ns;      /* 0: 30 s */
    int64_t response_timeout_ns;     /* 0: 30 s */
} redis_cfg_params;

/* Parses p into a new configuration (one reference). Returns NULL with a
 * message in err when a url is malformed. Any thread. */
redis_cfg *redis_cfg_new(const redis_cfg_params *p, char *err, size_t errlen);
void redis_cfg_ref(redis_cfg *c);
void redis_cfg_unref(redis_cfg *c);
/* The "service" label of redis_operation_latency: the node urls and a hash
 * of the whole configuration. */
const char *redis_cfg_service(const redis_cfg *c);
bool redis_cfg_is_cluster(const redis_cfg *c);

/* A finished command: reply is hiredis's (borrowed, valid during the
 * callback) or NULL with err saying why (connection refused or lost,
 * response timeout, too many redirections). A reply of type
 * REDIS_REPLY_ERROR is the server's answer, not a transport failure. */
typedef void (*redis_done_fn)(const redisReply *reply, const char *err, void *ud);

/* Issues argv (argc strings of lens bytes; copied) on the calling reactor's
 * client for c. key_idx is the index of the argument that is the key (for
 * cluster routing; -1 for none). op labels the latency metric ("query",
 * "script", "ping"). done runs exactly once on this reactor, never before
 * this returns. Returns 0, or KERR_INVAL off-reactor. */
int redis_command(redis_cfg *c, const char *op, int argc, const char *const *argv,
                  const size_t *lens, int key_idx, redis_done_fn done, void *ud);

/* Frees r's clients; their pending commands complete with an error first.
 * On r's thread or with r stopped. */
void redis_reactor_free(struct reactor *r);

/* The cluster hash slot of a key (hash tags honoured), for tests. */
unsigned redis_key_slot(const char *key, size_t len);

#endif
