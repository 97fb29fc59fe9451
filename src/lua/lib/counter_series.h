/* kumo.counter_series: named, process-wide rolling counters over a ring of
 * time buckets (saturating unsigned 64-bit values). The ring itself is a
 * pure structure, exposed for unit tests; times are whole seconds of a
 * monotonic clock. */
#ifndef KUMOD_LUA_LIB_COUNTER_SERIES_H
#define KUMOD_LUA_LIB_COUNTER_SERIES_H
#include <stdint.h>

typedef struct cseries cseries;

/* A ring of n >= 1 buckets of bucket_secs >= 1 seconds; the current bucket
 * starts at initial. NULL when out of memory. */
cseries *cseries_new(uint32_t n, uint64_t bucket_secs, uint64_t initial, uint64_t now);
void cseries_free(cseries *s);
uint32_t cseries_num_buckets(const cseries *s);
uint64_t cseries_bucket_secs(const cseries *s);
/* Adds delta (negative: subtracts) to the current bucket, saturating at 0
 * and UINT64_MAX. */
void cseries_delta(cseries *s, int64_t delta, uint64_t now);
void cseries_increment(cseries *s, uint64_t v, uint64_t now);
void cseries_observe(cseries *s, uint64_t v, uint64_t now);
/* Sum of the buckets covering the last span_secs (rounded up to whole
 * buckets, at least the current one, at most all), saturating. */
uint64_t cseries_sum_over(cseries *s, uint64_t span_secs, uint64_t now);

void counter_series_lua_register(void);

#endif
