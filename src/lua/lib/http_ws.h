/* kumo.http.connect_websocket and its WebSocketStream (a WebSocket client
 * on the calling reactor's event base; see http_ws.c). */
#ifndef KUMOD_LUA_LIB_HTTP_WS_H
#define KUMOD_LUA_LIB_HTTP_WS_H
#include <lua.h>

/* Installs connect_websocket into the kumo.http table at http_table and
 * the stream's metatable; called by kumo.http's opener (http_client.c). */
void http_ws_open(lua_State *L, int http_table);

#endif
