/* kumo.shaping and require 'tsa' (see tsa_lua.c). */
#ifndef KUMOD_TSA_TSA_LUA_H
#define KUMOD_TSA_TSA_LUA_H
#include <stdbool.h>

/* Registers the openers; tsa_daemon adds the 'tsa' module and
 * kumo.configure_tsa_db_path. Main thread, before the first VM. */
void tsa_lua_register(bool tsa_daemon);
/* After tsa_init: the database path can no longer change. */
void tsa_lua_freeze_db_path(void);
/* --validate and --script: subscribe_automation connects nowhere. */
void tsa_lua_set_subscriptions_enabled(bool on);
bool tsa_lua_subscriptions_enabled(void);

#endif
