/* The custom_lua delivery protocol: a policy event constructs a connection
 * object whose send(message) method delivers. */
#ifndef KUMOD_DELIVERY_LUA_DELIVER_H
#define KUMOD_DELIVERY_LUA_DELIVER_H

void lua_deliver_register(void);

#endif
