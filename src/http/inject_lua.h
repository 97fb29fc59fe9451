/* kumo.api.inject.inject_v1 and kumo.set_httpinject_recipient_rate_limit:
 * the policy's side of the injection API. */
#ifndef KUMOD_HTTP_INJECT_LUA_H
#define KUMOD_HTTP_INJECT_LUA_H
#include <stddef.h>
#include <stdint.h>

/* Registers the functions (call from main before the first VM). */
void inject_lua_register(void);

/* The HTTP injection rate limit (set_httpinject_recipient_rate_limit):
 * takes n recipients from the process-wide throttle. Returns 0 when
 * admitted, else the nanoseconds to wait before asking again. Any thread. */
int64_t inject_limit_take(uint64_t n);

#endif
