/* The top-level kumo.* functions of the library: log_error/warn/info/debug,
 * version, traceback, validation_failed, spawn_task, get_event_registrars,
 * set_config_monitor_globs / eval_config_monitor_globs, and the tuning knobs
 * (set_*_threads, set_max_lua_context_*, set_max_spare_lua_contexts,
 * set_lruttl_cache_capacity, set/get_memory_*). */
#ifndef KUMOD_LUA_LIB_MISC_H
#define KUMOD_LUA_LIB_MISC_H
#include <stdbool.h>
#include <stdint.h>

/* Whether kumo.validation_failed() was called (kumod --validate fails then). */
bool misc_validation_failed(void);
/* kumo.spawn_task starts tasks only when enabled (not under --validate). */
void misc_set_spawn_enabled(bool on);
/* The effective memory limits in bytes (0: none): what the policy set, or
 * the defaults derived from the cgroup limit and the physical RAM. */
uint64_t misc_memory_hard_limit(void);
uint64_t misc_memory_soft_limit(void);
uint64_t misc_memory_low_thresh(void);

void misc_lua_register(void);

#endif
