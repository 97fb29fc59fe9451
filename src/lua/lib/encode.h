/* kumo.encode: {hex,base32,base32hex,base64,base64url}[_nopad]_{encode,decode}
 * over codec.c, and charset_encode / charset_decode over iconv. */
#ifndef KUMOD_LUA_LIB_ENCODE_H
#define KUMOD_LUA_LIB_ENCODE_H

void encode_lua_register(void);

#endif
