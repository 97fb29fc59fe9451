/* kumo.dns: the policy's view of src/net/dns. configure_resolver accepts
 * KumoMTA's DnsResolverConfig shape (name_servers as "IP:PORT" strings or
 * {socket_addr=, protocol=, trust_negative_responses=, bind_addr=} tables,
 * domain, search, options) and rejects unknown fields by name, as KumoMTA
 * does; options kumod cannot honour either map onto c-ares or are accepted
 * and ignored, except DNSSEC validation, which is refused; use_hosts_file
 * 'Never' turns the hosts file off. configure_test_resolver (and
 * configure_resolver{Test=...}) installs zones parsed by src/net/zone as the
 * only source of answers, as KumoMTA's test resolver does. lookup_mx and
 * lookup_addr wait without blocking the reactor: they yield the event's
 * coroutine and the DNS callback resumes it with the answer (or an error
 * raised in the coroutine).
 *
 * Owns nothing beyond a call: the configuration lives in src/net/dns.
 * Runs on reactor threads (configure_* and set_* also during --validate on
 * the main thread). Errors are Lua errors naming the function. */
#include "lua/dns_lua.h"

#include <errno.h>
#include <lauxlib.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/duration.h"
#include "core/kerr.h"
#include "core/reactor.h"
#include "lua/klua.h"
#include "net/dns.h"
#include "net/resolvconf.h"
#include "net/zone.h"

static const char *const resolver_keys[] = {"name_servers", "domain", "search", "options", NULL};
static const char *const server_keys[] = {"socket_addr", "protocol", "trust_negative_responses",
                                          "bind_addr", NULL};
static const char *const option_keys[] = {
    "ndots",
    "timeout",
    "attempts",
    "edns0",
    "validate",
    "ip_strategy",
    "cache_size",
    "use_hosts_file",
    "positive_min_ttl",
    "negative_min_ttl",
    "positive_max_ttl",
    "negative_max_ttl",
    "num_concurrent_reqs",
    "preserve_intermediates",
    "try_tcp_on_error",
    "server_ordering_strategy",
    "recursion_desired",
    "case_randomization",
    "trust_anchor_file",
    NULL,
};

/* Raises an error naming every key of the table at idx that is not in
 * allowed (where names the table, e.g. "options"). */
static void check_keys(lua_State *L, int idx, const char *const *allowed, const char *fn,
                       const char *where)
{
    idx = lua_absindex(L, idx);
    char bad[512] = "";
    size_t used = 0;
    int nbad = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        bool ok = false;
        const char *k = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
        for (int i = 0; k && allowed[i] && !ok; i++)
            ok = strcmp(k, allowed[i]) == 0;
        if (!ok && used < sizeof(bad)) {
            int w = snprintf(bad + used, sizeof(bad) - used, "%s`%s`", nbad ? ", " : "",
                             k ? k : luaL_typename(L, -1));
            used += w > 0 ? (size_t)w : 0;
            nbad++;
        }
    }
    if (!nbad)
        return;
    char expected[512] = "";
    size_t eu = 0;
    for (int i = 0; allowed[i] && eu < sizeof(expected); i++) {
        int w = snprintf(expected + eu, sizeof(expected) - eu, "%s%s", i ? ", " : "", allowed[i]);
        eu += w > 0 ? (size_t)w : 0;
    }
    luaL_error(L, "%s: unknown field%s %s%s%s; expected one of: %s", fn, nbad > 1 ? "s" : "", bad,
               where ? " in " : "", where ? where : "", expected);
}

/* A duration given as seconds (number) or a humantime string. */
static int64_t check_duration_ms(lua_State *L, int idx, const char *fn)
{
    if (lua_type(L, idx) == LUA_TNUMBER) {
        double secs = lua_tonumber(L, idx);
        if (!(secs >= 0) || secs > 1e9)
            luaL_error(L, "%s: duration out of range", fn);
        return (int64_t)(secs * 1000.0);
    }
    int64_t ns = 0;
    if (lua_type(L, idx) != LUA_TSTRING || duration_parse(lua_tostring(L, idx), &ns) != 0)
        luaL_error(L, "%s: expected a duration such as '5s' or a number of seconds", fn);
    return ns / NS_PER_MS;
}

static const char *string_field(lua_State *L, int tbl, const char *key, const char *fn)
{
    lua_getfield(L, tbl, key);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return NULL;
    }
    if (lua_type(L, -1) != LUA_TSTRING)
        luaL_error(L, "%s: `%s` must be a string", fn, key);
    const char *s = lua_tostring(L, -1); /* anchored by the table */
    lua_pop(L, 1);
    return s;
}

static int bool_field(lua_State *L, int tbl, const char *key, const char *fn)
{
    lua_getfield(L, tbl, key);
    int t = lua_type(L, -1);
    int v = lua_toboolean(L, -1);
    lua_pop(L, 1);
    if (t == LUA_TNIL)
        return -1;
    if (t != LUA_TBOOLEAN)
        luaL_error(L, "%s: `%s` must be a boolean", fn, key);
    return v;
}

static void parse_options(lua_State *L, int tbl, dns_config *cfg, const char *fn)
{
    check_keys(L, tbl, option_keys, fn, "options");
    lua_getfield(L, tbl, "timeout");
    if (!lua_isnil(L, -1))
        cfg->timeout_ms = check_duration_ms(L, -1, fn);
    lua_pop(L, 1);
    lua_getfield(L, tbl, "attempts");
    if (!lua_isnil(L, -1)) {
        int isint;
        lua_Integer n = lua_tointegerx(L, -1, &isint);
        if (!isint || n < 1 || n > 100)
            luaL_error(L, "%s: options.attempts must be an integer from 1 to 100", fn);
        cfg->attempts = (int)n;
    }
    lua_pop(L, 1);
    int v = bool_field(L, tbl, "edns0", fn);
    if (v >= 0)
        cfg->edns0 = v;
    v = bool_field(L, tbl, "recursion_desired", fn);
    if (v >= 0)
        cfg->no_recursion = !v;
    if (bool_field(L, tbl, "validate", fn) == 1)
        luaL_error(L, "%s: options.validate (DNSSEC) is not supported by kumod's resolver", fn);
    const char *s = string_field(L, tbl, "ip_strategy", fn);
    if (s && dns_ip_strategy_parse(s) < 0 && strcmp(s, "Ipv6AndIpv4") != 0)
        luaL_error(L,
                   "%s: options.ip_strategy '%s' is not one of Ipv4Only, Ipv6Only, "
                   "Ipv4AndIpv6, Ipv6AndIpv4, Ipv6thenIpv4, Ipv4thenIpv6",
                   fn, s);
    /* KumoMTA took a boolean before 2025.05.06 */
    lua_getfield(L, tbl, "use_hosts_file");
    if (lua_type(L, -1) == LUA_TBOOLEAN) {
        cfg->no_hosts_file = !lua_toboolean(L, -1);
        lua_pop(L, 1);
        return;
    }
    lua_pop(L, 1);
    s = string_field(L, tbl, "use_hosts_file", fn);
    if (s && strcmp(s, "Always") != 0 && strcmp(s, "Auto") != 0 && strcmp(s, "Never") != 0)
        luaL_error(L, "%s: options.use_hosts_file '%s' is not one of Always, Auto, Never", fn, s);
    cfg->no_hosts_file = s && strcmp(s, "Never") == 0;
}

/* The options an Unbound configuration may set (configure_unbound_resolver's
 * page): any other is an error naming it. */
static void check_unbound_options(lua_State *L, int tbl, dns_config *cfg, const char *fn)
{
    static const char *const unbound_option_keys[] = {"validate", "trust_anchor_file",
                                                      "use_hosts_file", NULL};
    tbl = lua_absindex(L, tbl);
    lua_pushnil(L);
    while (lua_next(L, tbl)) {
        lua_pop(L, 1);
        const char *k = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "?";
        bool ok = false;
        for (int i = 0; unbound_option_keys[i] && !ok; i++)
            ok = strcmp(k, unbound_option_keys[i]) == 0;
        if (!ok) {
            bool known = false;
            for (int i = 0; option_keys[i] && !known; i++)
                known = strcmp(k, option_keys[i]) == 0;
            luaL_error(L,
                       "%s: options.%s %s for the unbound resolver (it takes only validate, "
                       "trust_anchor_file, use_hosts_file); use kumo.dns.configure_resolver",
                       fn, k, known ? "is not meaningful" : "is not a resolver option");
        }
    }
    /* c-ares, which serves every resolver of kumod, does not validate DNSSEC:
     * a policy that asks for it must not believe it has it */
    if (bool_field(L, tbl, "validate", fn) == 1)
        luaL_error(L,
                   "%s: options.validate (DNSSEC) is not supported: kumod resolves with c-ares, "
                   "which does not validate",
                   fn);
    if (string_field(L, tbl, "trust_anchor_file", fn))
        luaL_error(L,
                   "%s: options.trust_anchor_file is not supported: kumod resolves with c-ares, "
                   "which does not validate DNSSEC",
                   fn);
    parse_options(L, tbl, cfg, fn); /* use_hosts_file */
}

/* Applies a DnsResolverConfig table: as the default resolver, or as the
 * named resolver define_name. unbound: the Unbound form's rules. */
static int configure_from_table(lua_State *L, int tbl, const char *fn, bool unbound,
                                const char *define_name)
{
    tbl = lua_absindex(L, tbl);
    check_keys(L, tbl, resolver_keys, fn, NULL);
    dns_config cfg;
    memset(&cfg, 0, sizeof(cfg));

    lua_getfield(L, tbl, "name_servers");
    int ns = lua_absindex(L, -1);
    size_t n = 0;
    const char **servers = NULL;
    if (!lua_isnil(L, ns)) {
        if (!lua_istable(L, ns))
            return luaL_error(L, "%s: name_servers must be a list", fn);
        n = lua_rawlen(L, ns);
        /* a userdata, so that an error below frees it */
        servers = lua_newuserdatauv(L, (n ? n : 1) * sizeof(*servers), 0);
        for (size_t i = 0; i < n; i++) {
            lua_rawgeti(L, ns, (lua_Integer)i + 1);
            int e = lua_absindex(L, -1);
            if (lua_type(L, e) == LUA_TSTRING) {
                servers[i] = lua_tostring(L, e);
            } else if (lua_istable(L, e)) {
                check_keys(L, e, server_keys, fn, "a name_servers entry");
                servers[i] = string_field(L, e, "socket_addr", fn);
                if (!servers[i])
                    return luaL_error(L, "%s: name_servers[%d] has no socket_addr", fn, (int)i + 1);
                const char *proto = string_field(L, e, "protocol", fn);
                if (unbound && proto)
                    ; /* accepted; the Unbound form chooses UDP/TCP per query */
                else if (proto && strcmp(proto, "tcp") == 0)
                    cfg.use_tcp = true; /* c-ares chooses TCP per channel, not per server */
                else if (proto && strcmp(proto, "udp") != 0 && strcmp(proto, "udp_then_tcp") != 0)
                    return luaL_error(L,
                                      "%s: name_servers[%d].protocol '%s' is not one of udp, "
                                      "tcp, udp_then_tcp",
                                      fn, (int)i + 1, proto);
                (void)bool_field(L, e, "trust_negative_responses", fn);
                const char *bind = string_field(L, e, "bind_addr", fn);
                if (bind)
                    cfg.bind_addr = bind;
            } else {
                return luaL_error(L, "%s: name_servers[%d] must be a string or a table", fn,
                                  (int)i + 1);
            }
            lua_pop(L, 1); /* the entry stays anchored by the list */
        }
    }

    lua_getfield(L, tbl, "domain");
    if (!lua_isnil(L, -1) && lua_type(L, -1) != LUA_TSTRING)
        return luaL_error(L, "%s: domain must be a string", fn);
    lua_pop(L, 1);
    lua_getfield(L, tbl, "search");
    if (!lua_isnil(L, -1) && !lua_istable(L, -1))
        return luaL_error(L, "%s: search must be a list of strings", fn);
    lua_pop(L, 1);

    lua_getfield(L, tbl, "options");
    if (!lua_isnil(L, -1)) {
        if (!lua_istable(L, -1))
            return luaL_error(L, "%s: options must be a table", fn);
        if (unbound)
            check_unbound_options(L, -1, &cfg, fn);
        else
            parse_options(L, -1, &cfg, fn);
    }
    lua_pop(L, 1);

    cfg.name_servers = servers;
    cfg.n_name_servers = n;
    char err[256];
    int rc = define_name ? dns_define_resolver(define_name, &cfg, NULL, err, sizeof(err))
                         : dns_configure_ex(&cfg, err, sizeof(err));
    if (rc != 0)
        return luaL_error(L, "%s: %s", fn, err);
    return 0;
}

/* ---- the test resolver ------------------------------------------------------ */

/* KumoMTA's TestResolverConfig at idx: a list of zones, each a master-file
 * text or {zone = TEXT, secure = BOOL}, or {zones = LIST, servfail =
 * {NAME...}}. Types are checked before anything is built, so that a Lua
 * error never leaves a half-built zone set behind. */
static int configure_test_from(lua_State *L, int idx, const char *fn, const char *define_name)
{
    static const char *const detailed_keys[] = {"zones", "servfail", NULL};
    static const char *const zone_keys[] = {"zone", "secure", NULL};
    idx = lua_absindex(L, idx);
    if (!lua_istable(L, idx))
        return luaL_error(L, "%s: expected a list of zones or {zones=, servfail=}", fn);
    int zones = idx, servfail = 0;
    lua_getfield(L, idx, "zones");
    if (!lua_isnil(L, -1)) {
        check_keys(L, idx, detailed_keys, fn, NULL);
        if (!lua_istable(L, -1))
            return luaL_error(L, "%s: zones must be a list", fn);
        zones = lua_absindex(L, -1);
        lua_getfield(L, idx, "servfail");
        if (!lua_isnil(L, -1)) {
            if (!lua_istable(L, -1))
                return luaL_error(L, "%s: servfail must be a list of names", fn);
            servfail = lua_absindex(L, -1);
        }
    }
    size_t nz = lua_rawlen(L, zones);
    for (size_t i = 1; i <= nz; i++) {
        lua_rawgeti(L, zones, (lua_Integer)i);
        if (lua_istable(L, -1)) {
            check_keys(L, -1, zone_keys, fn, "a zone");
            if (!string_field(L, lua_absindex(L, -1), "zone", fn))
                return luaL_error(L, "%s: zone %d has no `zone` text", fn, (int)i);
            (void)bool_field(L, lua_absindex(L, -1), "secure", fn);
        } else if (lua_type(L, -1) != LUA_TSTRING) {
            return luaL_error(L, "%s: zone %d must be a string or {zone=, secure=}", fn, (int)i);
        }
        lua_pop(L, 1);
    }
    size_t ns = servfail ? lua_rawlen(L, servfail) : 0;
    for (size_t i = 1; i <= ns; i++) {
        lua_rawgeti(L, servfail, (lua_Integer)i);
        if (lua_type(L, -1) != LUA_TSTRING)
            return luaL_error(L, "%s: servfail[%d] must be a name", fn, (int)i);
        lua_pop(L, 1);
    }

    zone_set *zs = zone_set_new();
    char err[300] = "";
    int bad = 0;
    for (size_t i = 1; i <= nz && !bad; i++) {
        lua_rawgeti(L, zones, (lua_Integer)i);
        const char *text;
        size_t len;
        bool secure = false;
        if (lua_istable(L, -1)) {
            lua_getfield(L, -1, "zone");
            text = lua_tolstring(L, -1, &len);
            lua_pop(L, 1); /* anchored by the zone table */
            secure = bool_field(L, lua_absindex(L, -1), "secure", fn) == 1;
        } else {
            text = lua_tolstring(L, -1, &len);
        }
        if (zone_set_add(zs, text, len, secure, err, sizeof(err)) != 0)
            bad = (int)i;
        lua_pop(L, 1);
    }
    for (size_t i = 1; i <= ns && !bad; i++) {
        lua_rawgeti(L, servfail, (lua_Integer)i);
        if (zone_set_add_servfail(zs, lua_tostring(L, -1)) != 0) {
            snprintf(err, sizeof(err), "servfail[%d]: invalid name `%s`", (int)i,
                     lua_tostring(L, -1));
            bad = -1;
        }
        lua_pop(L, 1);
    }
    if (bad) {
        zone_set_free(zs);
        if (bad > 0)
            return luaL_error(L, "%s: zone %d: %s", fn, bad, err);
        return luaL_error(L, "%s: %s", fn, err);
    }
    if (define_name) {
        if (dns_define_resolver(define_name, NULL, zs, err, sizeof(err)) != 0)
            return luaL_error(L, "%s: %s", fn, err);
    } else {
        dns_configure_test(zs);
    }
    return 0;
}

static int l_configure_test_resolver(lua_State *L)
{
    luaL_checkany(L, 1);
    return configure_test_from(L, 1, "kumo.dns.configure_test_resolver", NULL);
}

/* KumoMTA's KumoResolverConfig at idx ('HickorySystemConfig', {Hickory=},
 * {Unbound=}, {Test=}; Aggregate is refused), or, when bare_ok, a bare
 * DnsResolverConfig (what configure_resolver also takes). Applied as the
 * default resolver, or defined as define_name. */
static int configure_any(lua_State *L, int idx, const char *fn, bool bare_ok,
                         const char *define_name)
{
    idx = lua_absindex(L, idx);
    if (lua_type(L, idx) == LUA_TSTRING) {
        const char *s = lua_tostring(L, idx);
        if (strcmp(s, "HickorySystemConfig") != 0)
            return luaL_error(L, "%s: unknown resolver configuration '%s'", fn, s);
        char err[256];
        dns_config cfg;
        memset(&cfg, 0, sizeof(cfg));
        int rc = define_name ? dns_define_resolver(define_name, &cfg, NULL, err, sizeof(err))
                             : dns_configure_ex(&cfg, err, sizeof(err));
        if (rc != 0)
            return luaL_error(L, "%s: %s", fn, err);
        return 0;
    }
    if (!lua_istable(L, idx))
        return luaL_error(L, "%s: expected a resolver configuration table or "
                          "'HickorySystemConfig', got %s", fn, luaL_typename(L, idx));
    /* KumoMTA's structured forms: { Hickory = {...} } and { Unbound = {...} } */
    static const char *const forms[] = {"Hickory", "Unbound", NULL};
    for (int i = 0; forms[i]; i++) {
        lua_getfield(L, idx, forms[i]);
        if (lua_istable(L, -1)) {
            int nkeys = 0;
            lua_pushnil(L);
            while (lua_next(L, idx)) {
                lua_pop(L, 1);
                nkeys++;
            }
            if (nkeys != 1)
                return luaL_error(L, "%s: %s must be the only field", fn, forms[i]);
            return configure_from_table(L, -1, fn, i == 1, define_name);
        }
        lua_pop(L, 1);
    }
    lua_getfield(L, idx, "Test");
    if (!lua_isnil(L, -1)) {
        lua_pushnil(L);
        if (lua_next(L, idx)) {
            lua_pop(L, 1);
            if (lua_next(L, idx)) /* a second key */
                return luaL_error(L, "%s: Test must be the only field", fn);
        }
        return configure_test_from(L, -1, fn, define_name);
    }
    lua_pop(L, 1);
    lua_getfield(L, idx, "Aggregate");
    bool aggregate = !lua_isnil(L, -1);
    lua_pop(L, 1);
    if (aggregate)
        return luaL_error(L, "%s: the Aggregate resolver form is not supported by kumod", fn);
    if (!bare_ok)
        return luaL_error(L,
                          "%s: expected one of {Hickory=...}, {Unbound=...}, {Test=...} or "
                          "'HickorySystemConfig'",
                          fn);
    return configure_from_table(L, idx, fn, false, define_name);
}

static int l_configure_resolver(lua_State *L)
{
    luaL_checkany(L, 1);
    return configure_any(L, 1, "kumo.dns.configure_resolver", true, NULL);
}

static int l_configure_unbound_resolver(lua_State *L)
{
    static const char fn[] = "kumo.dns.configure_unbound_resolver";
    if (!lua_istable(L, 1))
        return luaL_error(L, "%s: argument #1 must be a table, got %s", fn, luaL_typename(L, 1));
    return configure_from_table(L, 1, fn, true, NULL);
}

static int l_define_resolver(lua_State *L)
{
    static const char fn[] = "kumo.dns.define_resolver";
    if (lua_type(L, 1) != LUA_TSTRING)
        return luaL_error(L, "%s: argument #1 (name) must be a string, got %s", fn,
                          luaL_typename(L, 1));
    luaL_checkany(L, 2);
    return configure_any(L, 2, fn, false, lua_tostring(L, 1));
}

/* ---- waiting lookups ---------------------------------------------------------- */

/* The coroutine resumes with (ok, value): the value is the answer, or the
 * error to raise in the caller. */
static int lookup_k(lua_State *L, int status, lua_KContext ctx)
{
    int top = lua_gettop(L);
    if (!lua_toboolean(L, top - 1))
        return lua_error(L);
    return 1;
}

/* KumoMTA's MailExchanger as Lua sees it. */
static void push_mx(lua_State *L, const dns_mx *mx)
{
    lua_createtable(L, 0, 8);
    lua_pushstring(L, mx->domain_name);
    lua_setfield(L, -2, "domain_name");
    lua_pushstring(L, mx->site_name);
    lua_setfield(L, -2, "site_name");
    lua_createtable(L, (int)mx->n_hosts, 0);
    for (size_t i = 0; i < mx->n_hosts; i++) {
        lua_pushstring(L, mx->hosts[i].name);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    lua_setfield(L, -2, "hosts");
    /* by_pref: preference -> hosts at that preference (hosts are sorted) */
    lua_newtable(L);
    for (size_t i = 0; i < mx->n_hosts;) {
        size_t j = i;
        while (j < mx->n_hosts && mx->hosts[j].pref == mx->hosts[i].pref)
            j++;
        lua_createtable(L, (int)(j - i), 0);
        for (size_t k = i; k < j; k++) {
            lua_pushstring(L, mx->hosts[k].name);
            lua_rawseti(L, -2, (lua_Integer)(k - i) + 1);
        }
        lua_rawseti(L, -2, mx->hosts[i].pref);
        i = j;
    }
    lua_setfield(L, -2, "by_pref");
    lua_pushboolean(L, mx->is_domain_literal);
    lua_setfield(L, -2, "is_domain_literal");
    lua_pushboolean(L, mx->is_secure);
    lua_setfield(L, -2, "is_secure");
    lua_pushboolean(L, mx->is_mx);
    lua_setfield(L, -2, "is_mx");
    lua_pushstring(L, "None"); /* MTA-STS is not evaluated */
    lua_setfield(L, -2, "mta_sts");
}

/* A lookup's wait, parked so that a shutdown can abandon it: the resolver
 * may drop the lookup unanswered (drop) and the VM may drop the parked call
 * (cancel), in either order; whichever comes second frees it. */
struct dns_wait {
    klua_wait w;
    bool dns_gone, call_gone;
};

static struct dns_wait *dns_wait_new(klua_call *c);

static void dns_wait_release(struct dns_wait *j)
{
    if (j->dns_gone && j->call_gone)
        free(j);
}

static void dns_wait_cancel(klua_wait *w)
{
    struct dns_wait *j = (struct dns_wait *)w;
    j->call_gone = true;
    dns_wait_release(j);
}

static void dns_wait_drop(void *ud)
{
    struct dns_wait *j = ud;
    j->dns_gone = true; /* the call stays parked until the VM drops it */
    dns_wait_release(j);
}

static struct dns_wait *dns_wait_new(klua_call *c)
{
    struct dns_wait *j = calloc(1, sizeof(*j));
    if (!j)
        abort();
    klua_wait_park(&j->w, c, dns_wait_cancel);
    return j;
}

/* The answer came: the call leaves the park and is resumed. */
static klua_call *dns_wait_answered(void *ud)
{
    struct dns_wait *j = ud;
    klua_call *c = j->w.call;
    klua_wait_unpark(&j->w);
    free(j);
    return c;
}

static void on_mx(const dns_mx *mx, void *ud)
{
    klua_call *c = dns_wait_answered(ud);
    lua_State *co = klua_call_thread(c);
    lua_checkstack(co, 8); /* a yielded C function keeps LUA_MINSTACK free anyway */
    if (mx->status == DNS_OK || mx->status == DNS_NULL_MX) {
        lua_pushboolean(co, 1);
        push_mx(co, mx);
    } else {
        lua_pushboolean(co, 0);
        lua_pushstring(co, mx->error ? mx->error : "MX lookup failed");
    }
    klua_wait_resume(c, 2);
}

/* The optional resolver name at idx (NULL: the default resolver). */
static const char *opt_resolver(lua_State *L, int idx, const char *fn)
{
    if (lua_isnoneornil(L, idx))
        return NULL;
    if (lua_type(L, idx) != LUA_TSTRING)
        luaL_error(L, "%s: argument #%d (resolver name) must be a string, got %s", fn, idx,
                   luaL_typename(L, idx));
    const char *name = lua_tostring(L, idx);
    if (!dns_resolver_defined(name))
        luaL_error(L, "%s: resolver %s is not defined", fn, name);
    return name;
}

/* Raises the error of a lookup that could not start. */
static int start_failed(lua_State *L, const char *fn, int rc, const char *resolver)
{
    if (rc == KERR_NOTFOUND && resolver)
        return luaL_error(L, "%s: resolver %s is not defined", fn, resolver);
    return luaL_error(L, "%s: %s", fn, kerr_str(rc));
}

static int l_lookup_mx(lua_State *L)
{
    const char *domain = luaL_checkstring(L, 1);
    const char *resolver = opt_resolver(L, 2, "kumo.dns.lookup_mx");
    if (!reactor_current())
        return luaL_error(L, "kumo.dns.lookup_mx: may only be called from an event handler");
    klua_call *c = klua_wait_begin(L);
    if (!c)
        return luaL_error(L, "kumo.dns.lookup_mx: may only be called from an event handler");
    struct dns_wait *j = dns_wait_new(c);
    int rc = dns_lookup_mx_via(resolver, domain, on_mx, j, dns_wait_drop);
    if (rc != 0) {
        klua_wait_unpark(&j->w);
        free(j);
        return start_failed(L, "kumo.dns.lookup_mx", rc, resolver);
    }
    return lua_yieldk(L, 0, 0, lookup_k);
}

static void on_addrs(const dns_addrs *res, void *ud)
{
    klua_call *c = dns_wait_answered(ud);
    lua_State *co = klua_call_thread(c);
    lua_checkstack(co, 8);
    if (res->status == DNS_FAIL) {
        lua_pushboolean(co, 0);
        lua_pushstring(co, res->error ? res->error : "address lookup failed");
    } else {
        /* like KumoMTA, a name without addresses is an empty list */
        lua_pushboolean(co, 1);
        lua_createtable(co, (int)res->n_addrs, 0);
        for (size_t i = 0; i < res->n_addrs; i++) {
            lua_pushstring(co, res->addrs[i].text);
            lua_rawseti(co, -2, (lua_Integer)i + 1);
        }
    }
    klua_wait_resume(c, 2);
}

static int l_lookup_addr(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    const char *resolver = opt_resolver(L, 2, "kumo.dns.lookup_addr");
    int strategy = DNS_IPV4_AND_IPV6;
    if (!lua_isnoneornil(L, 3)) {
        const char *s = luaL_checkstring(L, 3);
        strategy = dns_ip_strategy_parse(s);
        if (strategy < 0)
            return luaL_error(L, "kumo.dns.lookup_addr: unknown ip lookup strategy '%s'", s);
    }
    if (!reactor_current())
        return luaL_error(L, "kumo.dns.lookup_addr: may only be called from an event handler");
    klua_call *c = klua_wait_begin(L);
    if (!c)
        return luaL_error(L, "kumo.dns.lookup_addr: may only be called from an event handler");
    struct dns_wait *j = dns_wait_new(c);
    int rc = dns_lookup_addrs_via(resolver, name, strategy, on_addrs, j, dns_wait_drop);
    if (rc != 0) {
        klua_wait_unpark(&j->w);
        free(j);
        return start_failed(L, "kumo.dns.lookup_addr", rc, resolver);
    }
    return lua_yieldk(L, 0, 0, lookup_k);
}

/* ---- TXT, PTR and DNSBL lookups ----------------------------------------------------- */

/* Starts a TXT (ptr false) or PTR lookup for the calling coroutine, which
 * resumes with (ok, dns_txt as pushed by push) and continues in k. */
static void on_txt(const dns_txt *t, void *ud);
static void on_ptr(const dns_txt *t, void *ud);

static int start_records(lua_State *L, const char *fn, const char *resolver, const char *name,
                         bool ptr, lua_KContext ctx, lua_KFunction k)
{
    if (!reactor_current())
        return luaL_error(L, "%s: may only be called from an event handler", fn);
    klua_call *c = klua_wait_begin(L);
    if (!c)
        return luaL_error(L, "%s: may only be called from an event handler", fn);
    struct dns_wait *j = dns_wait_new(c);
    int rc = ptr ? dns_lookup_ptr(resolver, name, on_ptr, j, dns_wait_drop)
                 : dns_lookup_txt_via(resolver, name, on_txt, j, dns_wait_drop);
    if (rc != 0) {
        klua_wait_unpark(&j->w);
        free(j);
        return start_failed(L, fn, rc, resolver);
    }
    return lua_yieldk(L, 0, ctx, k);
}

/* Resumes with (true, records, status name) or (false, error). */
static void resume_records(const dns_txt *t, void *ud, const char *kind)
{
    klua_call *c = dns_wait_answered(ud);
    lua_State *co = klua_call_thread(c);
    lua_checkstack(co, 8);
    if (t->status == DNS_FAIL) {
        lua_pushboolean(co, 0);
        lua_pushfstring(co, "%s", t->error ? t->error : kind);
        lua_pushnil(co);
    } else {
        lua_pushboolean(co, 1);
        lua_createtable(co, (int)t->n, 0);
        for (size_t i = 0; i < t->n; i++) {
            lua_pushlstring(co, t->records[i], t->lens[i]);
            lua_rawseti(co, -2, (lua_Integer)i + 1);
        }
        lua_pushstring(co, dns_status_name(t->status));
    }
    klua_wait_resume(c, 3);
}

static void on_txt(const dns_txt *t, void *ud)
{
    resume_records(t, ud, "TXT lookup failed");
}

static void on_ptr(const dns_txt *t, void *ud)
{
    resume_records(t, ud, "PTR lookup failed");
}

/* lookup_txt and lookup_ptr continue here: (ok, records|error, status) on top. */
static int records_k(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    int top = lua_gettop(L);
    const char *fn = ctx ? "kumo.dns.lookup_ptr" : "kumo.dns.lookup_txt";
    if (!lua_toboolean(L, top - 2))
        return luaL_error(L, "%s: %s", fn, lua_tostring(L, top - 1));
    /* the page: lookup_txt raises an error when the domain does not exist */
    if (!ctx && strcmp(lua_tostring(L, top), "NxDomain") == 0)
        return luaL_error(L, "%s: %s: NXDOMAIN (the domain does not exist)", fn,
                          lua_tostring(L, 1));
    lua_pushvalue(L, top - 1);
    return 1;
}

static int l_lookup_txt(lua_State *L)
{
    static const char fn[] = "kumo.dns.lookup_txt";
    if (lua_type(L, 1) != LUA_TSTRING)
        return luaL_error(L, "%s: argument #1 (domain) must be a string, got %s", fn,
                          luaL_typename(L, 1));
    const char *resolver = opt_resolver(L, 2, fn);
    lua_settop(L, 2);
    return start_records(L, fn, resolver, lua_tostring(L, 1), false, 0, records_k);
}

/* An IP address argument, checked as KumoMTA's IpAddr parse does. */
static const char *check_ip(lua_State *L, int idx, const char *fn)
{
    if (lua_type(L, idx) != LUA_TSTRING)
        luaL_error(L, "%s: argument #%d (IP) must be a string, got %s", fn, idx,
                   luaL_typename(L, idx));
    const char *ip = lua_tostring(L, idx);
    char buf[80];
    if (dns_reverse_ip(ip, buf, sizeof(buf)) != 0)
        luaL_error(L, "%s: argument #%d: '%s' is not an IP address (invalid IP address syntax)",
                   fn, idx, ip);
    return ip;
}

static int l_lookup_ptr(lua_State *L)
{
    static const char fn[] = "kumo.dns.lookup_ptr";
    const char *ip = check_ip(L, 1, fn);
    const char *resolver = opt_resolver(L, 2, fn);
    lua_settop(L, 2);
    return start_records(L, fn, resolver, ip, true, 1, records_k);
}

static int l_reverse_ip(lua_State *L)
{
    const char *ip = check_ip(L, 1, "kumo.dns.reverse_ip");
    char buf[80];
    dns_reverse_ip(ip, buf, sizeof(buf));
    lua_pushstring(L, buf);
    return 1;
}

static int l_ptr_host(lua_State *L)
{
    const char *ip = check_ip(L, 1, "kumo.dns.ptr_host");
    char buf[96];
    dns_ptr_name(ip, buf, sizeof(buf));
    lua_pushstring(L, buf);
    return 1;
}

/* rbl_lookup's IP: an address, or a socket address with a port
 * ("10.0.0.1:25", "[::1]:25"). Writes the bare address into out. */
static bool rbl_ip(const char *s, char *out, size_t outlen)
{
    char buf[80];
    if (dns_reverse_ip(s, buf, sizeof(buf)) == 0) {
        snprintf(out, outlen, "%s", s);
        return true;
    }
    const char *host = s, *close = NULL, *colon;
    size_t n;
    if (s[0] == '[') {
        close = strchr(s, ']');
        if (!close || close[1] != ':')
            return false;
        host = s + 1;
        n = (size_t)(close - host);
        colon = close + 1;
    } else {
        colon = strrchr(s, ':');
        if (!colon)
            return false;
        n = (size_t)(colon - s);
    }
    const char *port = colon + 1;
    if (!*port || strlen(port) > 5)
        return false;
    long v = 0;
    for (const char *d = port; *d; d++) {
        if (*d < '0' || *d > '9')
            return false;
        v = v * 10 + (*d - '0');
    }
    if (v > 65535 || n == 0 || n >= outlen)
        return false;
    memcpy(out, host, n);
    out[n] = '\0';
    /* "::1:25" is not a socket address: a bare IPv6 needs brackets */
    if (!close && strchr(out, ':'))
        return false;
    return dns_reverse_ip(out, buf, sizeof(buf)) == 0;
}

static void on_rbl_addrs(const dns_addrs *res, void *ud)
{
    klua_call *c = dns_wait_answered(ud);
    lua_State *co = klua_call_thread(c);
    lua_checkstack(co, 8);
    if (res->status == DNS_FAIL) {
        lua_pushboolean(co, 0);
        lua_pushstring(co, res->error ? res->error : "address lookup failed");
    } else {
        lua_pushboolean(co, 1);
        if (res->n_addrs)
            lua_pushstring(co, res->addrs[0].text);
        else
            lua_pushnil(co);
    }
    klua_wait_resume(c, 2);
}

/* Stack during rbl_lookup: 1 ip, 2 base, 3 resolver, 4 query name. */
static int rbl_txt_k(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    (void)ctx;
    /* 5 answer ip, then (ok, records|error, status) */
    int top = lua_gettop(L);
    lua_pushvalue(L, 5);
    if (lua_toboolean(L, top - 2)) {
        luaL_Buffer b;
        luaL_buffinit(L, &b);
        int rec = top - 1;
        lua_Integer n = (lua_Integer)lua_rawlen(L, rec);
        for (lua_Integer i = 1; i <= n; i++) {
            lua_rawgeti(L, rec, i);
            luaL_addvalue(&b);
        }
        luaL_pushresult(&b);
    } else {
        lua_pushnil(L); /* as KumoMTA: a failed TXT lookup leaves the reason nil */
    }
    return 2;
}

static int rbl_addr_k(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    (void)ctx;
    static const char fn[] = "kumo.dns.rbl_lookup";
    int top = lua_gettop(L);
    if (!lua_toboolean(L, top - 1))
        return luaL_error(L, "%s: %s", fn, lua_tostring(L, top - 1 + 1));
    if (lua_isnil(L, top)) {
        lua_pushnil(L);
        lua_pushnil(L);
        return 2;
    }
    lua_replace(L, 5); /* the listed address */
    lua_settop(L, 5);
    return start_records(L, fn, lua_tostring(L, 3), lua_tostring(L, 4), false, 0, rbl_txt_k);
}

static int l_rbl_lookup(lua_State *L)
{
    static const char fn[] = "kumo.dns.rbl_lookup";
    if (lua_type(L, 1) != LUA_TSTRING)
        return luaL_error(L, "%s: argument #1 (IP) must be a string, got %s", fn,
                          luaL_typename(L, 1));
    if (lua_type(L, 2) != LUA_TSTRING)
        return luaL_error(L, "%s: argument #2 (base domain) must be a string, got %s", fn,
                          luaL_typename(L, 2));
    const char *resolver = opt_resolver(L, 3, fn);
    char ip[64], rev[80];
    if (!rbl_ip(lua_tostring(L, 1), ip, sizeof(ip)))
        return luaL_error(L, "%s: argument #1: %s is not a valid IpAddr or SocketAddr", fn,
                          lua_tostring(L, 1));
    dns_reverse_ip(ip, rev, sizeof(rev));
    const char *base = lua_tostring(L, 2);
    size_t blen = strlen(base);
    lua_settop(L, 3);
    lua_pushfstring(L, "%s.%s%s", rev, base, blen && base[blen - 1] == '.' ? "" : ".");
    lua_pushnil(L); /* 5: the listed address, once known */
    if (!reactor_current())
        return luaL_error(L, "%s: may only be called from an event handler", fn);
    klua_call *c = klua_wait_begin(L);
    if (!c)
        return luaL_error(L, "%s: may only be called from an event handler", fn);
    struct dns_wait *j = dns_wait_new(c);
    int rc = dns_lookup_addrs_via(resolver, lua_tostring(L, 4), DNS_IPV4_AND_IPV6, on_rbl_addrs,
                                  j, dns_wait_drop);
    if (rc != 0) {
        klua_wait_unpark(&j->w);
        free(j);
        return start_failed(L, fn, rc, resolver);
    }
    return lua_yieldk(L, 0, 0, rbl_addr_k);
}

/* ---- resolv.conf and MTA-STS --------------------------------------------------------- */

static int l_load_resolv_conf(lua_State *L)
{
    static const char fn[] = "kumo.dns.load_resolv_conf";
    const char *path = "/etc/resolv.conf";
    if (!lua_isnoneornil(L, 1)) {
        if (lua_type(L, 1) != LUA_TSTRING)
            return luaL_error(L, "%s: argument #1 (path) must be a string, got %s", fn,
                              luaL_typename(L, 1));
        path = lua_tostring(L, 1);
    }
    /* a small local file, read once at configuration time (init) */
    FILE *f = fopen(path, "r");
    if (!f)
        return luaL_error(L, "%s: reading %s: %s", fn, path, strerror(errno));
    char buf[65536];
    size_t n = fread(buf, 1, sizeof(buf), f);
    bool toobig = n == sizeof(buf) && fgetc(f) != EOF;
    bool bad = ferror(f);
    fclose(f);
    if (bad)
        return luaL_error(L, "%s: reading %s: I/O error", fn, path);
    if (toobig)
        return luaL_error(L, "%s: %s is larger than 64 KiB", fn, path);
    resolvconf *rc = lua_newuserdatauv(L, sizeof(*rc), 0); /* freed by the GC */
    char err[256];
    if (resolvconf_parse(buf, n, rc, err, sizeof(err)) != 0)
        return luaL_error(L, "%s: parsing %s: %s", fn, path, err);
    lua_createtable(L, 0, 4);
    lua_createtable(L, (int)rc->n_ns, 0);
    for (size_t i = 0; i < rc->n_ns; i++) {
        lua_pushstring(L, rc->ns[i]);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    lua_setfield(L, -2, "name_servers");
    if (rc->domain[0]) {
        lua_pushstring(L, rc->domain);
        lua_setfield(L, -2, "domain");
    }
    lua_createtable(L, (int)rc->n_search, 0);
    for (size_t i = 0; i < rc->n_search; i++) {
        lua_pushstring(L, rc->search[i]);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    lua_setfield(L, -2, "search");
    lua_createtable(L, 0, 4);
    lua_pushinteger(L, rc->ndots);
    lua_setfield(L, -2, "ndots");
    lua_pushfstring(L, "%ds", rc->timeout);
    lua_setfield(L, -2, "timeout");
    lua_pushinteger(L, rc->attempts);
    lua_setfield(L, -2, "attempts");
    lua_pushboolean(L, rc->edns0);
    lua_setfield(L, -2, "edns0");
    lua_setfield(L, -2, "options");
    return 1;
}

/* kumod does not fetch MTA-STS policies (lookup_mx reports mta_sts =
 * "None"), so the flag changes nothing; it is kept so that a policy that
 * sets it loads, and checked so that a typo is an error. */
static atomic_bool mta_sts_enabled = true;

static int l_set_mta_sts_enabled(lua_State *L)
{
    if (lua_type(L, 1) != LUA_TBOOLEAN)
        return luaL_error(L, "kumo.dns.set_mta_sts_enabled: argument #1 must be a boolean, got %s",
                          luaL_typename(L, 1));
    atomic_store(&mta_sts_enabled, lua_toboolean(L, 1));
    return 0;
}

/* ---- tunables ------------------------------------------------------------------- */

static int l_set_mx_timeout(lua_State *L)
{
    luaL_checkany(L, 1);
    dns_set_mx_timeout_ms(check_duration_ms(L, 1, "kumo.dns.set_mx_timeout"));
    return 0;
}

static int l_set_mx_negative_cache_ttl(lua_State *L)
{
    luaL_checkany(L, 1);
    dns_set_mx_negative_ttl_ms(check_duration_ms(L, 1, "kumo.dns.set_mx_negative_cache_ttl"));
    return 0;
}

static int l_set_mx_concurrency_limit(lua_State *L)
{
    lua_Integer n = luaL_checkinteger(L, 1);
    if (n < 1)
        return luaL_error(L, "kumo.dns.set_mx_concurrency_limit: the limit must be at least 1");
    dns_set_mx_concurrency_limit((size_t)n);
    return 0;
}

static void dns_lua_open(lua_State *L)
{
    static const luaL_Reg fns[] = {
        {"configure_resolver", l_configure_resolver},
        {"configure_test_resolver", l_configure_test_resolver},
        {"configure_unbound_resolver", l_configure_unbound_resolver},
        {"define_resolver", l_define_resolver},
        {"lookup_mx", l_lookup_mx},
        {"lookup_addr", l_lookup_addr},
        {"lookup_txt", l_lookup_txt},
        {"lookup_ptr", l_lookup_ptr},
        {"rbl_lookup", l_rbl_lookup},
        {"ptr_host", l_ptr_host},
        {"reverse_ip", l_reverse_ip},
        {"load_resolv_conf", l_load_resolv_conf},
        {"set_mta_sts_enabled", l_set_mta_sts_enabled},
        {"set_mx_timeout", l_set_mx_timeout},
        {"set_mx_negative_cache_ttl", l_set_mx_negative_cache_ttl},
        {"set_mx_concurrency_limit", l_set_mx_concurrency_limit},
        {NULL, NULL},
    };
    lua_getfield(L, -1, "dns");
    if (!lua_istable(L, -1)) {
        lua_pop(L, 1);
        lua_newtable(L);
        lua_pushvalue(L, -1);
        lua_setfield(L, -3, "dns");
    }
    luaL_setfuncs(L, fns, 0);
    lua_pop(L, 1);
}

void dns_lua_register(void)
{
    klua_register_opener(dns_lua_open);
}
