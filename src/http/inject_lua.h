/* kumo.api.inject.inject_v1 and kumo.set_httpinject_recipient_rate_limit:
 * the policy's side of the injection API. */
#ifndef KUMOD_HTTP_INJECT_LUA_H
#define KUMOD_HTTP_INJECT_LUA_H

/* Registers the functions (call from main before the first VM). */
void inject_lua_register(void);

#endif
