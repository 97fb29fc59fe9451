/* kumo.http: the HTTP client of policies (build_client, the Request and
 * Response objects, build_url), asynchronous on the reactor through libcurl's
 * multi interface (net/curlev.h). */
#ifndef KUMOD_LUA_LIB_HTTP_CLIENT_H
#define KUMOD_LUA_LIB_HTTP_CLIENT_H

/* Registers the opener that installs kumo.http into every VM. Call from
 * main before the first VM is built. */
void http_client_lua_register(void);

#endif
