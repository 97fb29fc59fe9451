/* kumo.make_message and the registration of the message-related kumo
 * modules (kumo.mimepart). */
#ifndef KUMOD_LUA_MAKE_MESSAGE_LUA_H
#define KUMOD_LUA_MAKE_MESSAGE_LUA_H
#include "lua/klua.h"

/* Registers kumo.make_message and kumo.mimepart for every VM (main, before
 * the first VM is built). */
void message_lua_register(void);

#endif
