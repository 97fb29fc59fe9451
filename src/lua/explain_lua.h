/* kumo.configure_explain_sampling: the sampling of per-message policy
 * traces for `explain` (a kumod extension; see msg/msgtrace.h). */
#ifndef KUMOD_LUA_EXPLAIN_LUA_H
#define KUMOD_LUA_EXPLAIN_LUA_H

/* Registers the function's opener (src/modules.c). */
void explain_lua_register(void);

#endif
