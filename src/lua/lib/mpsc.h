/* kumo.mpsc: named process-wide multi-producer single-consumer queues of
 * JSON-representable values, shared by every reactor's VM. */
#ifndef KUMOD_LUA_LIB_MPSC_H
#define KUMOD_LUA_LIB_MPSC_H

void mpsc_lua_register(void);

#endif
