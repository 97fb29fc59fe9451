/* kumo.aaa beyond make_access_control_list (which acl.c keeps):
 * load_acl_map (KumoMTA's ACL map file, TOML, from a KeySource) and its
 * map:get(resource), make_http_url_resource, query_resource_access and
 * the two cache TTLs.
 *
 * Owns: the loaded maps (a JSON object resource -> rules, immutable, held
 * by the map's userdata). query_resource_access runs the same walk as the
 * HTTP listener's check (acl_check_detail: get_acl_definition, the
 * built-in map, the caches); the calling coroutine waits while a
 * get_acl_definition handler waits, and is always resumed from the loop,
 * never from inside the call.
 *
 * Threads: reactor threads (and the main thread while a policy loads).
 * Errors are Lua errors naming the function and the argument. */
#include <jansson.h>
#include <lauxlib.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>

#include "core/duration.h"
#include "core/reactor.h"
#include "http/acl.h"
#include "log/aaa_log.h"
#include "lua/klua.h"
#include "lua/lib/lualib.h"
#include "lua/lib/secrets.h"
#include "lua/lib/toml_json.h"
#include "lua/luajson.h"
#include "lua/services.h"

#define MAP_MT "kumo.aaa.AclMap"
#define RESOURCE_MT "kumo.aaa.Resource"

/* ---- load_acl_map ---------------------------------------------------------------------- */

/* One rule, checked as make_access_control_list checks it. */
static bool rule_ok(const json_t *rule, char *err, size_t errlen)
{
    json_t *probe =
        json_pack("{s:s,s:[],s:[]}", "peer_address", "0.0.0.0", "identities", "groups");
    json_t *one = json_pack("[O]", rule);
    const char *priv = json_string_value(json_object_get(rule, "privilege"));
    int v = one && probe && priv ? acl_eval(one, probe, priv, err, errlen) : ACL_ERROR;
    if (v == ACL_ERROR && (!one || !probe || !priv))
        snprintf(err, errlen, "out of memory");
    json_decref(one);
    json_decref(probe);
    return v != ACL_ERROR;
}

/* KumoMTA's ACL file ({acl = {RESOURCE = [{allow, privileges, identity |
 * criteria}]}}) as a map resource -> rules (one rule per privilege). */
static json_t *build_map(const json_t *file, char *err, size_t errlen)
{
    const char *key;
    json_t *v;
    if (!json_is_object(file)) {
        snprintf(err, errlen, "expected a table");
        return NULL;
    }
    json_object_foreach((json_t *)file, key, v) if (strcmp(key, "acl") != 0)
    {
        snprintf(err, errlen, "unknown field `%s`, expected `acl`", key);
        return NULL;
    }
    const json_t *acl = json_object_get(file, "acl");
    json_t *map = json_object();
    if (!acl)
        return map;
    if (!json_is_object(acl)) {
        snprintf(err, errlen, "acl must be a table of resources");
        goto bad;
    }
    const char *res;
    json_t *entries;
    json_object_foreach((json_t *)acl, res, entries)
    {
        if (!json_is_array(entries)) {
            snprintf(err, errlen, "acl.\"%s\" must be an array of entries ([[acl.\"%s\"]])", res,
                     res);
            goto bad;
        }
        json_t *rules = json_array();
        json_object_set_new(map, res, rules);
        size_t i;
        json_t *e;
        json_array_foreach(entries, i, e)
        {
            const char *k;
            json_t *f;
            if (!json_is_object(e)) {
                snprintf(err, errlen, "acl.\"%s\"[%zu] must be a table", res, i + 1);
                goto bad;
            }
            json_object_foreach(e, k, f) if (strcmp(k, "allow") && strcmp(k, "privileges") &&
                                             strcmp(k, "identity") && strcmp(k, "criteria"))
            {
                snprintf(err, errlen,
                         "acl.\"%s\"[%zu]: unknown field `%s`, expected one of `allow`, "
                         "`privileges`, `identity`, `criteria`",
                         res, i + 1, k);
                goto bad;
            }
            const json_t *allow = json_object_get(e, "allow");
            const json_t *privs = json_object_get(e, "privileges");
            const json_t *ident = json_object_get(e, "identity");
            const json_t *crit = json_object_get(e, "criteria");
            if (!json_is_boolean(allow)) {
                snprintf(err, errlen, "acl.\"%s\"[%zu]: `allow` must be true or false", res,
                         i + 1);
                goto bad;
            }
            if (!json_is_array(privs)) {
                snprintf(err, errlen, "acl.\"%s\"[%zu]: `privileges` must be a list of strings",
                         res, i + 1);
                goto bad;
            }
            if (!ident == !crit) {
                snprintf(err, errlen, "acl.\"%s\"[%zu]: exactly one of `identity` and "
                                      "`criteria` is required", res, i + 1);
                goto bad;
            }
            json_t *criteria = ident ? json_pack("{s:O}", "Identity", ident) : json_incref((json_t *)crit);
            size_t pi;
            json_t *p;
            json_array_foreach(privs, pi, p)
            {
                if (!json_is_string(p)) {
                    json_decref(criteria);
                    snprintf(err, errlen, "acl.\"%s\"[%zu]: `privileges` must be a list of strings",
                             res, i + 1);
                    goto bad;
                }
                json_t *rule = json_pack("{s:O,s:O,s:s}", "criteria", criteria, "privilege", p,
                                         "access", json_is_true(allow) ? "Allow" : "Deny");
                char e2[256];
                if (!rule || !rule_ok(rule, e2, sizeof(e2))) {
                    json_decref(rule);
                    json_decref(criteria);
                    snprintf(err, errlen, "acl.\"%s\"[%zu]: %s", res, i + 1, e2);
                    goto bad;
                }
                json_array_append_new(rules, rule);
            }
            json_decref(criteria);
        }
    }
    return map;
bad:
    json_decref(map);
    return NULL;
}

/* The core after secrets_wrap: argument 1 is the map file's bytes. */
static int l_load_acl_map_core(lua_State *L)
{
    static const char fname[] = "kumo.aaa.load_acl_map";
    size_t len;
    const char *text = lua_tolstring(L, 1, &len);
    if (!text)
        return lualib_error(L, fname, "the KeySource gave no data");
    char err[512];
    json_t *file = toml_json_parse(text, len, "acl map", err, sizeof(err));
    if (!file)
        return lualib_error(L, fname, "failed to parse acl map data: %s", err);
    json_t *map = build_map(file, err, sizeof(err));
    json_decref(file);
    if (!map)
        return lualib_error(L, fname, "failed to parse acl map data: %s", err);
    json_t **ud = lua_newuserdatauv(L, sizeof(*ud), 0);
    *ud = map;
    luaL_setmetatable(L, MAP_MT);
    return 1;
}

static int l_map_get(lua_State *L)
{
    json_t **ud = luaL_testudata(L, 1, MAP_MT);
    if (!ud)
        return lualib_error(L, "map:get", "must be called as a method of a map made by "
                                          "kumo.aaa.load_acl_map");
    if (lua_type(L, 2) != LUA_TSTRING)
        return lualib_error(L, "map:get", "argument #1 (resource) must be a string, not %s",
                            luaL_typename(L, 2));
    const json_t *rules = json_object_get(*ud, lua_tostring(L, 2));
    if (!rules) {
        lua_pushnil(L);
        return 1;
    }
    /* the shape make_access_control_list returns, which get_acl_definition takes */
    lua_createtable(L, 0, 1);
    klua_push_json(L, rules);
    lua_setfield(L, -2, "rules");
    return 1;
}

static int l_map_gc(lua_State *L)
{
    json_t **ud = luaL_testudata(L, 1, MAP_MT);
    if (ud) {
        json_decref(*ud);
        *ud = NULL;
    }
    return 0;
}

/* ---- make_http_url_resource --------------------------------------------------------------- */

/* "ip:port" or "[ipv6]:port" (a SocketAddr), normalised into out. */
static bool socket_addr(const char *s, char *out, size_t outlen)
{
    char host[64];
    const char *colon;
    size_t n;
    bool v6 = s[0] == '[';
    if (v6) {
        const char *close = strchr(s, ']');
        if (!close || close[1] != ':')
            return false;
        n = (size_t)(close - s - 1);
        if (n >= sizeof(host))
            return false;
        memcpy(host, s + 1, n);
        colon = close + 1;
    } else {
        colon = strrchr(s, ':');
        if (!colon || colon == s)
            return false;
        n = (size_t)(colon - s);
        if (n >= sizeof(host))
            return false;
        memcpy(host, s, n);
    }
    host[n] = '\0';
    const char *p = colon + 1;
    if (!*p || strlen(p) > 5)
        return false;
    long port = 0;
    for (; *p; p++) {
        if (*p < '0' || *p > '9')
            return false;
        port = port * 10 + (*p - '0');
    }
    if (port > 65535)
        return false;
    unsigned char raw[16];
    char t[INET6_ADDRSTRLEN];
    if (!v6 && inet_pton(AF_INET, host, raw) == 1)
        inet_ntop(AF_INET, raw, t, sizeof(t));
    else if (v6 && inet_pton(AF_INET6, host, raw) == 1)
        inet_ntop(AF_INET6, raw, t, sizeof(t));
    else
        return false;
    snprintf(out, outlen, v6 ? "[%s]:%ld" : "%s:%ld", t, port);
    return true;
}

/* The path of an absolute URL ("https://host/a/b?q") or of a path ("/a/b"). */
static bool url_path(const char *url, char *out, size_t outlen)
{
    const char *p = url;
    const char *scheme_end = strstr(url, "://");
    if (scheme_end) {
        for (const char *c = url; c < scheme_end; c++)
            if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') ||
                  (c > url && ((*c >= '0' && *c <= '9') || *c == '+' || *c == '-' || *c == '.'))))
                return false;
        if (scheme_end == url)
            return false;
        p = scheme_end + 3;
        size_t auth = strcspn(p, "/?#");
        if (auth == 0)
            return false;
        p += auth;
    } else if (url[0] != '/') {
        return false;
    }
    size_t n = strcspn(p, "?#");
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)p[i] <= ' ' || p[i] == 0x7f)
            return false;
    if (n == 0)
        p = "/", n = 1;
    if (n >= outlen)
        n = outlen - 1;
    memcpy(out, p, n);
    out[n] = '\0';
    return true;
}

static int l_make_http_url_resource(lua_State *L)
{
    static const char fname[] = "kumo.aaa.make_http_url_resource";
    if (lua_type(L, 1) != LUA_TSTRING)
        return lualib_error(L, fname, "argument #1 (local address) must be a string, not %s",
                            luaL_typename(L, 1));
    if (lua_type(L, 2) != LUA_TSTRING)
        return lualib_error(L, fname, "argument #2 (URL) must be a string, not %s",
                            luaL_typename(L, 2));
    char listen[80], path[1024];
    if (!socket_addr(lua_tostring(L, 1), listen, sizeof(listen)))
        return lualib_error(L, fname,
                            "argument #1: '%s' is not a socket address such as 127.0.0.1:8080",
                            lua_tostring(L, 1));
    if (!url_path(lua_tostring(L, 2), path, sizeof(path)))
        return lualib_error(L, fname, "argument #2: '%s' is not a valid URL", lua_tostring(L, 2));
    char **res = NULL;
    size_t n = acl_http_resources(listen, path, &res);
    lua_createtable(L, 0, 2);
    lua_createtable(L, (int)n, 0);
    for (size_t i = 0; i < n; i++) {
        lua_pushstring(L, res[i]);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    lua_setfield(L, -2, "resources");
    lua_pushstring(L, n ? res[0] : "");
    lua_setfield(L, -2, "resource_id");
    acl_resources_free(res, n);
    luaL_setmetatable(L, RESOURCE_MT);
    return 1;
}

/* ---- query_resource_access ----------------------------------------------------------------- */

typedef struct query {
    klua_wait w;
    klua_call *call; /* NULL: not waiting (yet) */
    bool finished, abandoned, cancelled;
    int verdict;
    char *error, *resource;
    json_t *rule;
} query;

static void query_free(query *q)
{
    free(q->error);
    free(q->resource);
    json_decref(q->rule);
    free(q);
}

/* Pushes (true, disposition) or (false, error). */
static void push_outcome(lua_State *L, const query *q)
{
    lua_checkstack(L, 6);
    if (q->verdict == ACL_ERROR) {
        lua_pushboolean(L, 0);
        lua_pushstring(L, q->error ? q->error : "ACL error");
        return;
    }
    lua_pushboolean(L, 1);
    lua_createtable(L, 0, 3);
    lua_pushboolean(L, q->verdict == ACL_ALLOW);
    lua_setfield(L, -2, "allow");
    if (q->resource) {
        lua_pushstring(L, q->resource);
        lua_setfield(L, -2, "resource");
    }
    if (q->rule) {
        klua_push_json(L, q->rule);
        lua_setfield(L, -2, "rule");
    }
}

static void query_resume(void *arg)
{
    query *q = arg;
    if (q->cancelled) {
        query_free(q);
        return;
    }
    klua_call *c = q->call;
    klua_wait_unpark(&q->w);
    push_outcome(klua_call_thread(c), q);
    query_free(q);
    klua_wait_resume(c, 2);
}

static void query_cancel(klua_wait *w)
{
    /* shutdown: the outcome, if it still comes, frees the query */
    ((query *)w)->cancelled = true;
}

static void query_done(void *ud, int verdict, const char *error, const char *resource,
                       const json_t *rule)
{
    query *q = ud;
    q->finished = true;
    q->verdict = verdict;
    q->error = error ? strdup(error) : NULL;
    q->resource = resource ? strdup(resource) : NULL;
    q->rule = rule ? json_deep_copy(rule) : NULL;
    if (q->abandoned || q->cancelled) {
        query_free(q);
        return;
    }
    if (q->call) /* waiting: resume from the loop, not from inside this walk */
        reactor_post(reactor_current(), query_resume, q);
}

static int query_k(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    (void)ctx;
    int top = lua_gettop(L);
    if (!lua_toboolean(L, top - 1))
        return lualib_error(L, "kumo.aaa.query_resource_access", "%s", lua_tostring(L, top));
    return 1;
}

static int l_query_resource_access(lua_State *L)
{
    static const char fname[] = "kumo.aaa.query_resource_access";
    bool is_resource = false;
    if (lua_istable(L, 1) && lua_getmetatable(L, 1)) {
        luaL_getmetatable(L, RESOURCE_MT);
        is_resource = lua_rawequal(L, -1, -2);
        lua_pop(L, 2);
    }
    if (!is_resource)
        return lualib_error(L, fname,
                            "argument #1 (resource) must be a resource made by "
                            "kumo.aaa.make_http_url_resource, not %s",
                            luaL_typename(L, 1));
    if (!lua_istable(L, 2))
        return lualib_error(L, fname, "argument #2 (auth info) must be a table, not %s",
                            luaL_typename(L, 2));
    if (lua_type(L, 3) != LUA_TSTRING)
        return lualib_error(L, fname, "argument #3 (privilege) must be a string, not %s",
                            luaL_typename(L, 3));
    char err[300];
    json_t *auth = klua_to_json(L, 2, err, sizeof(err));
    if (auth && json_is_array(auth) && json_array_size(auth) == 0) {
        json_decref(auth);
        auth = json_object();
    }
    if (!auth || !json_is_object(auth)) {
        json_decref(auth);
        return lualib_error(L, fname, "argument #2 (auth info): %s",
                            auth ? "expected {identities=, groups=, peer_address=}" : err);
    }
    const char *k;
    json_t *v;
    json_object_foreach(auth, k, v)
    {
        bool ok = (strcmp(k, "identities") == 0 && json_is_array(v)) ||
                  (strcmp(k, "groups") == 0 && json_is_array(v)) ||
                  (strcmp(k, "peer_address") == 0 && (json_is_string(v) || json_is_null(v)));
        if (!ok) {
            snprintf(err, sizeof(err), "argument #2 (auth info): `%s` %s", k,
                     strcmp(k, "identities") && strcmp(k, "groups") && strcmp(k, "peer_address")
                         ? "is not a field of an AuthInfo (identities, groups, peer_address)"
                         : "has the wrong type");
            json_decref(auth);
            return lualib_error(L, fname, "%s", err);
        }
    }
    /* the walk wants lists even when the table left them out */
    if (!json_object_get(auth, "identities"))
        json_object_set_new(auth, "identities", json_array());
    if (!json_object_get(auth, "groups"))
        json_object_set_new(auth, "groups", json_array());

    lua_getfield(L, 1, "resources");
    size_t n = lua_rawlen(L, -1);
    char **res = calloc(n ? n : 1, sizeof(char *));
    for (size_t i = 0; res && i < n; i++) {
        lua_rawgeti(L, -1, (lua_Integer)i + 1);
        res[i] = (char *)lua_tostring(L, -1); /* anchored by the resource table */
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    query *q = calloc(1, sizeof(*q));
    if (!res || !q || !n) {
        free(res);
        free(q);
        json_decref(auth);
        return lualib_error(L, fname, n ? "out of memory" : "the resource is empty");
    }
    acl_check_detail(res, n, auth, lua_tostring(L, 3), query_done, q);
    free(res);
    json_decref(auth);
    if (q->finished) {
        push_outcome(L, q);
        query_free(q);
        return query_k(L, 0, 0);
    }
    /* a get_acl_definition handler waits: so does this call */
    klua_call *c = reactor_current() ? klua_wait_begin(L) : NULL;
    if (!c) {
        q->abandoned = true;
        return lualib_error(L, fname, "get_acl_definition waits, and this call is not in an "
                                      "event handler that can wait");
    }
    q->call = c;
    klua_wait_park(&q->w, c, query_cancel);
    return lua_yieldk(L, 0, 0, query_k);
}

/* ---- cache TTLs --------------------------------------------------------------------------------- */

static int64_t check_ttl(lua_State *L, const char *fname)
{
    if (lua_type(L, 1) == LUA_TNUMBER) {
        double secs = lua_tonumber(L, 1);
        if (!(secs >= 0) || secs > 1e9)
            lualib_error(L, fname, "argument #1: duration out of range");
        return (int64_t)(secs * 1000.0);
    }
    int64_t ns = 0;
    if (lua_type(L, 1) != LUA_TSTRING || duration_parse(lua_tostring(L, 1), &ns) != 0 || ns < 0)
        lualib_error(L, fname,
                     "argument #1 must be a duration such as '5 minutes' or a number of "
                     "seconds, not %s",
                     lua_type(L, 1) == LUA_TSTRING ? lua_tostring(L, 1) : luaL_typename(L, 1));
    return ns / NS_PER_MS;
}

static int l_set_acl_cache_ttl(lua_State *L)
{
    acl_set_acl_cache_ttl_ms(check_ttl(L, "kumo.aaa.set_acl_cache_ttl"));
    return 0;
}

static int l_set_check_cache_ttl(lua_State *L)
{
    acl_set_check_cache_ttl_ms(check_ttl(L, "kumo.aaa.set_check_cache_ttl"));
    return 0;
}

/* ---- registration ------------------------------------------------------------------------------- */

/* kumo.aaa.configure_acct_log(PARAMS): the accounting log (src/log/aaa_log.c);
 * once per process, as KumoMTA's OnceLock; --validate only checks PARAMS. */
static int l_configure_acct_log(lua_State *L)
{
    static const char fname[] = "kumo.aaa.configure_acct_log";
    if (!lua_istable(L, 1))
        return lualib_error(L, fname, "argument #1 (params) must be a table, not %s",
                            luaL_typename(L, 1));
    char err[600];
    json_t *j = klua_to_json(L, 1, err, sizeof(err));
    if (!j)
        return lualib_error(L, fname, "%s", err);
    int rc = aaalog_configure_from_json(j, services_validate_only(), err, sizeof(err));
    json_decref(j);
    if (rc != 0)
        return lualib_error(L, fname, "%s", err);
    return 0;
}

void aaa_lua_open(lua_State *L)
{
    if (luaL_newmetatable(L, MAP_MT)) {
        lua_createtable(L, 0, 1);
        lua_pushcfunction(L, l_map_get);
        lua_setfield(L, -2, "get");
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, l_map_gc);
        lua_setfield(L, -2, "__gc");
        lua_pushliteral(L, "AclMap");
        lua_setfield(L, -2, "__name");
    }
    lua_pop(L, 1);
    if (luaL_newmetatable(L, RESOURCE_MT)) {
        lua_pushliteral(L, "HttpUrlResource");
        lua_setfield(L, -2, "__name");
    }
    lua_pop(L, 1);
    luaL_getsubtable(L, -1, "aaa");
    lua_pushcfunction(L, l_load_acl_map_core);
    secrets_wrap(L, "kumo.aaa.load_acl_map", 1, SECRETS_ARG, NULL);
    lua_setfield(L, -2, "load_acl_map");
    static const luaL_Reg fns[] = {
        {"configure_acct_log", l_configure_acct_log},
        {"make_http_url_resource", l_make_http_url_resource},
        {"query_resource_access", l_query_resource_access},
        {"set_acl_cache_ttl", l_set_acl_cache_ttl},
        {"set_check_cache_ttl", l_set_check_cache_ttl},
        {NULL, NULL},
    };
    luaL_setfuncs(L, fns, 0);
    lua_pop(L, 1);
}
