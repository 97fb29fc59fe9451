/* kumo.time: now, from_unix_timestamp, with_ymd_hms, parse_rfc2822,
 * parse_rfc3339, parse_duration, start_timer, and the Time and TimeDelta
 * objects (kumo.time.sleep and kumo.sleep are klua.c's). */
#ifndef KUMOD_LUA_LIB_TIME_H
#define KUMOD_LUA_LIB_TIME_H
#include <lua.h>
#include <stdbool.h>
#include <stdint.h>

/* Pushes a Time object (other modules: file metadata times). */
void ktime_push(lua_State *L, int64_t sec, int32_t nsec);
/* True when the value at idx is a Time object; fills *sec and *nsec. */
bool ktime_test(lua_State *L, int idx, int64_t *sec, int32_t *nsec);

void time_lua_register(void);

#endif
