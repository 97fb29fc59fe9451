/* The Lua face of a message (spec §2.4) and of envelope addresses. The
 * userdata holds a reference on the message. Reactor threads only. */
#ifndef KUMOD_LUA_MESSAGE_LUA_H
#define KUMOD_LUA_MESSAGE_LUA_H
#include <lua.h>

#include "msg/message.h"

void klua_push_message(lua_State *L, message *m);
message *klua_check_message(lua_State *L, int idx);
/* EnvelopeAddress userdata: .user .domain .email, tostring. */
void klua_push_address(lua_State *L, const char *addr);
/* Accepts an address userdata or a string. */
const char *klua_check_address(lua_State *L, int idx);
/* Adds a method to the Message userdata of L's VM (for modules of higher
 * or sibling layers, such as kumo.dkim's msg:dkim_sign). Call from a klua
 * opener: message_lua_open has run by then. */
void message_lua_add_method(lua_State *L, const char *name, lua_CFunction fn);
/* Registers the metatables (called for every VM by klua). */
void message_lua_open(lua_State *L);

#endif
