/* The HTTP injection rate limit: a throttle on recipients per request,
 * shared by every HTTP listener (not by kumo.api.inject.inject_v1). */
#ifndef KUMOD_HTTP_INJECT_LIMIT_H
#define KUMOD_HTTP_INJECT_LIMIT_H
#include <stdint.h>

#include "core/throttle.h"

/* Sets the throttle (copied), or clears it (NULL). Any thread. */
void inject_limit_set(const throttle_spec *spec);
/* Takes n recipients. Returns 0 when admitted, else the nanoseconds to wait
 * before asking again. Any thread. */
int64_t inject_limit_take(uint64_t n);

#endif
