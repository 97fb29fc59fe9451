/* kumo.http.connect_websocket and its WebSocketStream (a WebSocket client
 * on the calling reactor's event base; see http_ws.c). */
#ifndef KUMOD_LUA_LIB_HTTP_WS_H
#define KUMOD_LUA_LIB_HTTP_WS_H

/* Registers the opener that adds kumo.http.connect_websocket to every VM.
 * Call right after http_client_lua_register (kumo.http's Response type is
 * its, and it includes nothing of this file: no include cycle). */
void http_ws_lua_register(void);

#endif
