/* kumo.dns for policies: configure_resolver, lookup_mx, lookup_addr and the
 * MX tunables (set_mx_timeout, set_mx_negative_cache_ttl,
 * set_mx_concurrency_limit), over src/net/dns. */
#ifndef KUMOD_LUA_DNS_LUA_H
#define KUMOD_LUA_DNS_LUA_H

/* Registers the kumo.dns opener; call before the first VM is built. */
void dns_lua_register(void);

#endif
