/* kumo.string.eval_template: the template engine (template.h) for policy
 * scripts. Registered from the HTTP layer's opener because the engine lives
 * here, above lua/; it adds itself to the kumo.string table that
 * lua/lib/string.c fills. */
#ifndef KUMOD_HTTP_TEMPLATE_LUA_H
#define KUMOD_HTTP_TEMPLATE_LUA_H
#include <lua.h>

/* Adds eval_template to kumo.string; the kumo table is at the top of L's
 * stack (a klua opener). */
void template_lua_open(lua_State *L);

#endif
