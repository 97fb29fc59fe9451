/* A ready queue's throttles and connection limits, shared through Redis
 * when kumo.configure_redis_throttles is in effect (net/shthrottle.h), kept
 * in-process otherwise: max_message_rate with
 * additional_message_rate_throttles, max_connection_rate, and the leases of
 * connection_limit with additional_connection_limits. dispatch.c asks
 * here before each connection and each message. */
#ifndef KUMOD_QUEUE_THROTTLE_SHARED_H
#define KUMOD_QUEUE_THROTTLE_SHARED_H
#include <stdbool.h>
#include <stdint.h>

struct readyq;
typedef struct rqthr rqthr;
typedef struct rqleases rqleases;

/* Checks and takes one message (or connection) token. Returns 0 to go on,
 * > 0: the nanoseconds to wait, < 0: the answer is awaited from Redis and
 * dispatch_wake(rq) runs when it comes. Owner reactor of rq. */
int64_t rqthr_message(struct readyq *rq);
int64_t rqthr_connection(struct readyq *rq);

/* How many tokens of a shared throttle to take in one Redis round trip
 * (a twentieth of a second's worth, at most the burst and 64). */
struct throttle_spec;
unsigned rqthr_batch_for(const struct throttle_spec *s);

/* Whether new connections may be tried now (a refused lease holds them
 * off for 3 seconds, then readyq_maintain runs again). */
bool rqthr_may_open(struct readyq *rq);

/* The leases a new connection needs. Returns 0 with *out (NULL when
 * nothing is leased) when granted at once, -1 when a limit is reached, 1
 * when done(owner, leases, granted) will run later (unless cancelled). */
typedef void (*rqlease_done_fn)(void *owner, rqleases *l, bool granted);
int rqlease_acquire(struct readyq *rq, void *owner, rqleases **out, rqlease_done_fn done);
/* The owner goes away while rqlease_acquire waits: what it gets is released. */
void rqlease_cancel(struct readyq *rq, void *owner);
void rqleases_release(rqleases *l);

/* rq is freed: answers still in flight find nothing. */
void rqthr_free(struct readyq *rq);

#endif
