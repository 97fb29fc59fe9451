/* `require 'redis'`, kumo.configure_redis_throttles and kumo.make_throttle
 * (see redis_lua.c). */
#ifndef KUMOD_LUA_REDIS_LUA_H
#define KUMOD_LUA_REDIS_LUA_H

/* Adds the functions to every VM built from now on. Before the first VM. */
void redis_lua_register(void);

#endif
