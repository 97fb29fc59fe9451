/* Exponential backoff with jitter and the start-up inference of attempts
 * and due time from a message's age, following KumoMTA's arithmetic. Pure. */
#include "queue/backoff.h"

#define BACKOFF_MAX_S (INT64_C(1) << 40)

int64_t backoff_delay_for_attempt(const backoff_params *p, uint32_t attempt)
{
    int64_t d = p->retry_interval_s;
    for (uint32_t i = 0; i < attempt && d < BACKOFF_MAX_S; i++)
        d *= 2;
    if (d > BACKOFF_MAX_S)
        d = BACKOFF_MAX_S;
    if (p->max_retry_interval_s > 0 && d > p->max_retry_interval_s)
        d = p->max_retry_interval_s;
    return d;
}

double backoff_jitter(const backoff_params *p, double rand01)
{
    double mag = (double)p->retry_interval_s / 20.0;
    if (mag > 60.0)
        mag = 60.0;
    return rand01 * mag - mag / 2.0;
}

backoff_result backoff_on_failure(const backoff_params *p, uint32_t num_attempts, int64_t age_s,
                                  double rand01, int64_t expires_at_age_s)
{
    backoff_result r = {0};
    /* truncation toward zero of the jitter, as the reference does */
    int64_t delay = backoff_delay_for_attempt(p, num_attempts) +
                    (int64_t)backoff_jitter(p, rand01);
    if (delay < 0)
        delay = 0;
    r.delay_s = delay;
    r.due_age_s = age_s + delay;
    if (expires_at_age_s >= 0)
        r.expire = r.due_age_s >= expires_at_age_s;
    else
        r.expire = r.due_age_s > p->max_age_s;
    return r;
}

uint32_t backoff_attempts_from_age(const backoff_params *p, int64_t age_s)
{
    int64_t elapsed = 0;
    uint32_t n = 0;
    for (;;) {
        int64_t d = backoff_delay_for_attempt(p, n);
        if (elapsed + d > age_s || n >= 65535)
            return n;
        elapsed += d;
        n++;
    }
}

backoff_result backoff_due_from_age(const backoff_params *p, uint32_t num_attempts, int64_t age_s)
{
    backoff_result r = {0};
    if (age_s >= p->max_age_s) {
        r.expire = true;
        return r;
    }
    int64_t overall = 0;
    for (uint32_t i = 1; i < num_attempts && overall < BACKOFF_MAX_S; i++)
        overall += backoff_delay_for_attempt(p, i);
    if (overall >= p->max_age_s) {
        r.expire = true;
        return r;
    }
    r.delay_s = overall - age_s > 0 ? overall - age_s : 0;
    r.due_age_s = age_s + r.delay_s;
    return r;
}
