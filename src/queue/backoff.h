/* Retry arithmetic for scheduled queues (spec §1.6), pure functions over
 * seconds so they can be tested exhaustively. */
#ifndef KUMOD_QUEUE_BACKOFF_H
#define KUMOD_QUEUE_BACKOFF_H
#include <stdbool.h>
#include <stdint.h>

typedef struct backoff_params {
    int64_t retry_interval_s;     /* base */
    int64_t max_retry_interval_s; /* 0 = no cap */
    int64_t max_age_s;
} backoff_params;

/* min(retry_interval * 2^attempt, max_retry_interval), saturating. */
int64_t backoff_delay_for_attempt(const backoff_params *p, uint32_t attempt);
/* Jitter magnitude J = min(retry_interval/20, 60) seconds; a jitter value is
 * uniform in [-J/2, J/2). rand01 is a uniform number in [0, 1). */
double backoff_jitter(const backoff_params *p, double rand01);

typedef struct backoff_result {
    bool expire;       /* Expiration instead of a retry */
    int64_t delay_s;   /* from now */
    int64_t due_age_s; /* age of the message at its new due time */
} backoff_result;

/* A transient failure with an attempt increment: the delay for the current
 * (pre-increment) attempt count plus jitter; expires when age + delay passes
 * max_age. expires_at_age_s >= 0 is a set_scheduling expiry expressed as an
 * age (then max_age is not consulted, and due >= expires expires). */
backoff_result backoff_on_failure(const backoff_params *p, uint32_t num_attempts, int64_t age_s,
                                  double rand01, int64_t expires_at_age_s);
/* Attempts a message of this age has had by the schedule, as inferred at
 * start-up: the largest n with sum(delay(0..n-1)) <= age. */
uint32_t backoff_attempts_from_age(const backoff_params *p, int64_t age_s);
/* Delay until the next attempt of a message with num_attempts and age, as
 * inferred at start-up; expire is set when age >= max_age or the schedule
 * would pass it. */
backoff_result backoff_due_from_age(const backoff_params *p, uint32_t num_attempts,
                                    int64_t age_s);

#endif
