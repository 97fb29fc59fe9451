/* The HTTP injection rate limit (kumo.set_httpinject_recipient_rate_limit):
 * one GCRA state for the process behind a mutex, since the requests of every
 * reactor take from it. Any thread. */
#include "http/inject_limit.h"

#include <pthread.h>
#include <stdbool.h>

#include "core/reactor.h"

static pthread_mutex_t limit_lock = PTHREAD_MUTEX_INITIALIZER;
static bool limit_set;
static throttle_spec limit_spec;
static throttle_state limit_state;

/* GCRA for a quantity: n emission intervals at once. A request larger than
 * the burst is admitted once the throttle is idle (it could never fit). */
int64_t inject_limit_take(uint64_t n)
{
    pthread_mutex_lock(&limit_lock);
    int64_t wait = 0;
    if (limit_set && n > 0 && limit_spec.limit > 0 && limit_spec.period_ns > 0 &&
        limit_spec.limit <= (uint64_t)limit_spec.period_ns) {
        int64_t now = clock_mono_ns();
        int64_t interval = limit_spec.period_ns / (int64_t)limit_spec.limit;
        uint64_t burst = limit_spec.max_burst ? limit_spec.max_burst : 1;
        double tol = (double)interval * (double)burst;
        double need = (double)interval * (double)n;
        if (need > tol)
            tol = need;
        int64_t tat = limit_state.tat_ns > now ? limit_state.tat_ns : now;
        double new_tat = (double)tat + need;
        double ahead = new_tat - (double)now;
        if (ahead > tol) {
            wait = (int64_t)(ahead - tol) + 1;
        } else {
            limit_state.tat_ns = new_tat > 9e18 ? INT64_MAX : (int64_t)new_tat;
        }
    }
    pthread_mutex_unlock(&limit_lock);
    return wait;
}

void inject_limit_set(const throttle_spec *spec)
{
    pthread_mutex_lock(&limit_lock);
    limit_set = spec != NULL;
    if (spec)
        limit_spec = *spec;
    limit_state.tat_ns = 0;
    pthread_mutex_unlock(&limit_lock);
}
