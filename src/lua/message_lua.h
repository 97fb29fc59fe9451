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
/* For the other files of Message methods: the message at idx with its
 * data loaded (else a Lua error naming method); its header index; a header
 * field's value decoded to UTF-8, pushed; set_scheduling's validation and
 * assignment (takes s; pushes the Lua form, returns 1). */
message *klua_msg_need_data(lua_State *L, int idx, const char *method);
const hdr_index *klua_msg_need_headers(lua_State *L, message *m, const char *method);
void klua_push_header_value(lua_State *L, const hdr_field *f);
int klua_msg_apply_scheduling(lua_State *L, message *m, json_t *s, const char *method);
/* Adds the methods of message_more_lua.c to the table at -1. */
void message_more_lua_methods(lua_State *L);

/* Adds a method to the Message userdata of L's VM (for modules of higher
 * or sibling layers, such as kumo.dkim's msg:dkim_sign). Call from a klua
 * opener: message_lua_open has run by then. */
void message_lua_add_method(lua_State *L, const char *name, lua_CFunction fn);
/* Records a step in m's policy trace (msgtrace.h) with the calling Lua
 * line; callers test m->trace first so that unsampled messages pay one
 * branch. */
void klua_msg_trace(lua_State *L, message *m, const char *kind, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Registers the metatables (called for every VM by klua). */
void message_lua_open(lua_State *L);

#endif
