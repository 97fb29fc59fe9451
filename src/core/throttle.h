/* Throttle specs ("100/s", "local:5,000/hour,max_burst=10") and a GCRA
 * limiter over them. Pure; the state is owned by whoever embeds it. */
#ifndef KUMOD_CORE_THROTTLE_H
#define KUMOD_CORE_THROTTLE_H
#include <stdbool.h>
#include <stdint.h>

typedef struct throttle_spec {
    uint64_t limit;     /* events per period, > 0 */
    int64_t period_ns;  /* > 0 */
    uint64_t max_burst; /* defaults to limit */
    bool local;         /* "local:" prefix: never shared through redis */
} throttle_spec;

/* Grammar: [local:]LIMIT/PERIOD[,max_burst=N]. LIMIT may contain ',' or '_'
 * digit separators. PERIOD is a unit (s sec second m min minute h hr hour d
 * day) optionally prefixed by a count ("5m", "10 minutes" style count+unit).
 * Returns 0 or KERR_PARSE. */
int throttle_spec_parse(const char *s, throttle_spec *out);

typedef struct throttle_state {
    int64_t tat_ns; /* theoretical arrival time; 0 = fresh */
} throttle_state;

/* GCRA: tries to take one token at now_ns. Returns 0 when allowed (and
 * updates st), otherwise the nanoseconds until a token would be available
 * (st unchanged). */
int64_t throttle_take(throttle_state *st, const throttle_spec *spec, int64_t now_ns);

/* What a caller of throttle_take_n may report (X-RateLimit style). */
typedef struct throttle_info {
    uint64_t limit;         /* the burst */
    uint64_t remaining;     /* tokens still available at now */
    int64_t reset_after_ns; /* until the full burst is available again */
} throttle_info;

/* GCRA for up to want tokens at once: takes as many as fit (at most want)
 * and stores that count in *granted. Returns 0 when at least one was taken,
 * otherwise the nanoseconds until one would be (st unchanged). info (may be
 * NULL) receives the limit, the tokens remaining and the reset time. With
 * want = 1 it decides exactly as throttle_take. The Redis script of
 * net/shthrottle.c is this same arithmetic in microseconds. */
int64_t throttle_take_n(throttle_state *st, const throttle_spec *spec, int64_t now_ns,
                        uint64_t want, uint64_t *granted, throttle_info *info);

#endif
