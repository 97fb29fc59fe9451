/* kumo.mimepart and the MimePart, HeaderMap and Header objects
 * (docs/reference/kumo.mimepart/, mimepart/, headermap/, header/) over the
 * MIME trees of msg/mime.h. Reactor threads. */
#ifndef KUMOD_LUA_MIMEPART_LUA_H
#define KUMOD_LUA_MIMEPART_LUA_H
#include <lua.h>

#include "msg/mime.h"

/* Pushes a MimePart handle (takes a new reference on p). */
void klua_push_mimepart(lua_State *L, mpart *p);
/* Pushes the get_simple_structure table of p. */
void klua_push_simple_structure(lua_State *L, mpart *p);
/* The parts get_simple_structure picks (borrowed; NULL when absent). */
mpart *mpart_find_text(mpart *root, const char *content_type);
/* Adds the kumo.mimepart module to the kumo table at -1 and registers the
 * metatables. */
void mimepart_lua_open(lua_State *L);

#endif
