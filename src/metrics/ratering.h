/* A ring of per-second counts for the last hour: how many messages were
 * received, delivered, transiently failed, bounced and expired in each
 * second. It is fed by sampling the process's cumulative totals (the same
 * counters /metrics reports) once a second, so the message paths pay
 * nothing for it; the dashboard reads it for its rates and sparklines.
 *
 * The struct is embedded by its owner and holds no pointers (3600 slots x 5
 * kinds x 4 bytes: about 72 KB). Not thread-safe by itself: the owner
 * serialises sample and read (dashboard.c uses a mutex). */
#ifndef KUMOD_METRICS_RATERING_H
#define KUMOD_METRICS_RATERING_H
#include <stddef.h>
#include <stdint.h>

#define RATERING_SECONDS 3600

enum ratering_kind {
    RATE_RECEIVED,
    RATE_DELIVERED,
    RATE_TRANSIENT,
    RATE_BOUNCED,
    RATE_EXPIRED,
    RATE__COUNT
};

typedef struct ratering {
    int64_t last_s;                 /* the second of the last sample; 0 = none yet */
    uint64_t last_total[RATE__COUNT];
    uint32_t slot[RATERING_SECONDS][RATE__COUNT]; /* indexed by second % RATERING_SECONDS */
} ratering;

/* The name of a kind: "received", "delivered", "transient", "bounced",
 * "expired". */
const char *ratering_kind_name(int kind);

/* Zeroes r. */
void ratering_init(ratering *r);

/* Records the cumulative totals seen at second now_s. The increase since
 * the previous sample is spread evenly over the seconds in between (a
 * late timer does not make a spike); the first sample only sets the
 * baseline. A total that went down (a counter reset) counts from zero; a
 * sample older than the last is ignored. */
void ratering_sample(ratering *r, int64_t now_s, const uint64_t totals[RATE__COUNT]);

/* Copies the counts of kind for the n seconds ending at second now_s (the
 * oldest first; out[n - 1] is second now_s) into out. Seconds never
 * sampled, or more than an hour old, read as 0. n is at most
 * RATERING_SECONDS; returns the number written. */
size_t ratering_series(const ratering *r, int kind, int64_t now_s, uint32_t *out, size_t n);

/* The sum of kind over the n seconds ending at now_s. */
uint64_t ratering_sum(const ratering *r, int kind, int64_t now_s, size_t n);

#endif
