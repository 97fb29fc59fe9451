/* kumo.http: the HTTP client of policies (build_client, the Request and
 * Response objects, build_url), asynchronous on the reactor through libcurl's
 * multi interface (net/curlev.h). */
#ifndef KUMOD_LUA_LIB_HTTP_CLIENT_H
#define KUMOD_LUA_LIB_HTTP_CLIENT_H
#include <lua.h>
#include <stddef.h>

/* Registers the opener that installs kumo.http into every VM. Call from
 * main before the first VM is built. */
void http_client_lua_register(void);

/* Pushes a kumo.http.Response (Response.md) for a response received by
 * other means than the client (the upgrade answer of connect_websocket):
 * status (status_reason gives its standard phrase, as for the client), the header block
 * as "name: value\n" lines, names lowercase, and the body; all copied.
 * content_length < 0: unknown. Raises a Lua error when out of memory; the
 * VM must have kumo.http opened. */
void http_response_push(lua_State *L, long status, const char *headers,
                        size_t headers_len, const char *body, size_t body_len,
                        long long content_length);

#endif
