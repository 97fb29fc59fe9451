/* kumo.spf.check_host, kumo.spf.check_msg and kumo.dmarc.check_msg for
 * policies (docs/reference/kumo.spf/, policy-extras.mail_auth). The checks
 * are src/msg/spf.c and src/msg/dmarc.c; this file answers their DNS
 * questions through src/net/dns on the calling reactor while the coroutine
 * yields. */
#ifndef KUMOD_LUA_LIB_SPF_LUA_H
#define KUMOD_LUA_LIB_SPF_LUA_H

void spf_lua_register(void);

#endif
