/* A compact snapshot of every queue for the live dashboard: one row per
 * scheduled queue and per ready queue, in plain C structs (no JSON), so
 * that 100,000 queues cost a few milliseconds per snapshot. Taken by
 * asking every reactor for its own queues through the mailboxes; the
 * owner reactors only read. */
#ifndef KUMOD_QUEUE_DASHQ_H
#define KUMOD_QUEUE_DASHQ_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct dashq_sched {
    char *name;
    char *site;     /* the ready-queue site its messages go to; "" until configured */
    char *provider; /* provider_name, or NULL */
    long count;
    int64_t oldest_ns; /* creation time of the oldest message seen (see dashq.c); 0 = none */
    bool suspended;    /* an admin suspension matches it */
} dashq_sched;

typedef struct dashq_ready {
    char *name;
    char *site, *provider, *source; /* provider may be NULL */
    long count;
    int connections;
    long connection_limit;
    bool suspended;
    /* dispatchers waiting on the queue's rate throttles right now */
    int conn_rate_throttled, msg_rate_throttled;
    unsigned long long delivered, transfail, failed;
    /* the last Delivery / TransientFailure / Bounce response of the queue */
    char *last_response; /* "451 4.3.0 text", or NULL */
    int last_code;
    const char *last_category; /* bounce classification (static), NULL for a delivery */
    int64_t last_response_ns;
} dashq_ready;

typedef struct dashq_snapshot {
    dashq_sched *sched;
    size_t n_sched;
    dashq_ready *ready;
    size_t n_ready;
    int64_t taken_ns;   /* wall clock */
    int64_t cost_ns;    /* how long the reactors took, summed */
} dashq_snapshot;

/* Takes a snapshot and calls done(ud, snap) on the calling reactor; snap
 * is the callee's (free with dashq_snapshot_free). */
typedef void (*dashq_done_fn)(void *ud, dashq_snapshot *snap_take);
void queue_dash_snapshot(dashq_done_fn done, void *ud);
void dashq_snapshot_free(dashq_snapshot *s);

#endif
