/* Process-wide services configured by the policy's init event:
 * kumo.define_spool and kumo.configure_local_logs. The spool is opened by
 * main after init; everything here is set up before reactors take traffic. */
#ifndef KUMOD_LUA_SERVICES_H
#define KUMOD_LUA_SERVICES_H
#include <stdbool.h>
#include <stddef.h>

#include "spool/spool.h"

void services_lua_register(void);
/* The directory of spool "data" or "meta" (NULL when not defined). */
const char *services_spool_path(const char *name);
/* 0 when init defined both the data and the meta spool; otherwise an
 * error naming the missing one (what --validate reports). */
int services_check_spools_defined(char *err, size_t errlen);
/* Calls fn for each spool directory (spool = true) and log directory
 * defined so far; stops at and returns the first non-zero result. */
int services_foreach_dir(int (*fn)(const char *dir, bool spool, void *ud), void *ud);
/* Opens the data and meta spools defined in init (once). */
int services_open_spool(char *err, size_t errlen);
/* The spool, once open (NULL before). */
spool *services_spool(void);
/* True once start-up enumeration has finished. */
bool services_spool_ready(void);
void services_set_spool_ready(void);
/* Lets the spool finish what is queued and stops its threads, while the
 * reactors still run to take the completions. */
void services_spool_stop(void);
void services_shutdown(void);
/* Whether receptions wait for a sync before acknowledging: true unless the
 * policy set flush = false on its spools (kumod is durable by default). */
bool services_spool_sync(void);
/* kumo.suspend_delivery_when_spool_unhealthy (default true). */
bool services_suspend_delivery_when_unhealthy(void);
/* True when the spool is open and healthy; otherwise reason says why. */
bool services_spool_healthy(char *reason, size_t len);
/* Remembers a message that was delivered but could not be removed from the
 * spool, so this process never delivers it again (duplicate prevention while
 * the spool refuses writes). */
void services_note_delivered(const spoolid *id);
bool services_was_delivered(const spoolid *id);
/* Set with --validate: init must not open listeners, spools or logs. */
void services_set_validate_only(bool on);
bool services_validate_only(void);

#endif
