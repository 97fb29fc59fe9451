/* Lua <-> JSON conversion (see luajson.c). The functions keep the klua_
 * names they had when they lived in klua.c, so that their many callers
 * did not change; klua.h includes this header. */
#ifndef KUMOD_LUA_LUAJSON_H
#define KUMOD_LUA_LUAJSON_H
#include <jansson.h>
#include <lua.h>

/* Pushes j as a Lua value (objects and arrays as tables, null as nil). */
void klua_push_json(lua_State *L, const json_t *j);
/* Returns a new reference, or NULL with err set (tables with mixed keys,
 * functions, cycles). Empty tables become {}. Userdata convert through a
 * converter registered for their metatable, else their __tojson
 * metamethod. */
json_t *klua_to_json(lua_State *L, int idx, char *err, size_t errlen);

/* Converts the userdata at idx (whose metatable is the registered one). */
typedef json_t *(*luajson_udata_fn)(lua_State *L, int idx);
/* Registers the converter of userdata with the named metatable. Call once
 * per metatable, before any conversion (not thread-safe). */
void luajson_add_udata(const char *metatable, luajson_udata_fn to_json);

#endif
