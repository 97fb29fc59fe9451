/* HTTP authorization: ACL rules, the built-in ACL map, the
 * get_acl_definition event and the kumo.aaa helpers (see acl.h).
 *
 * Owns the built-in map (parsed once, immutable afterwards) and the
 * process-wide fall-back flag. acl_check runs on a reactor thread: it walks
 * the resource chain, calling get_acl_definition as a coroutine event when
 * the policy defines it, so a policy that loads its ACL from somewhere slow
 * never blocks the reactor. A malformed ACL is an ACL_ERROR (the HTTP layer
 * answers 500 and logs it), never a crash. */
#include "http/acl.h"

#include <lauxlib.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "core/reactor.h"
#include "core/diag.h"
#include "core/kerr.h"
#include "lua/klua.h"
#include "net/cidr.h"

#define AMOD "kumod::http_acl"
#define ACL_MAX_PATH_LEN 256
#define ACL_MAX_PATH_COMPONENTS 10

static atomic_bool fall_back = true;

/* ---- built-in ACL ------------------------------------------------------------- */

#define RULE(crit, priv) "{\"criteria\":" crit ",\"privilege\":\"" priv "\",\"access\":\"Allow\"}"
#define TRUSTED "{\"Identity\":{\"Group\":\"" ACL_TRUSTED_GROUP "\"}}"
#define AUTHED "{\"Identity\":{\"Authenticated\":{}}}"
#define ANYONE "{\"Identity\":{\"Any\":{}}}"

static const char default_acl_text[] =
    "{"
    "\"http_listener/*/api/check-liveness\":[" RULE(ANYONE, "GET") "],"
    "\"http_listener/*/api/inject\":[" RULE(TRUSTED, "POST") "," RULE(AUTHED, "POST") "],"
    "\"http_listener/*/api/admin\":[" RULE(TRUSTED, "GET") "," RULE(TRUSTED, "DELETE") "," RULE(
        TRUSTED, "POST") "," RULE(AUTHED, "GET") "," RULE(AUTHED, "DELETE") "," RULE(AUTHED,
                                                                                  "POST") "],"
    "\"http_listener/*/metrics\":[" RULE(TRUSTED, "GET") "," RULE(AUTHED, "GET") "],"
    "\"http_listener/*/metrics.json\":[" RULE(TRUSTED, "GET") "," RULE(AUTHED, "GET") "],"
    /* the dashboard's page (its data comes from api/admin) */
    "\"http_listener/*/\":[" RULE(TRUSTED, "GET") "," RULE(AUTHED, "GET") "],"
    "\"http_listener/*/ui\":[" RULE(TRUSTED, "GET") "," RULE(AUTHED, "GET") "],"
    /* the TSA daemon's endpoints (kumod --tsa): the nodes are trusted hosts */
    "\"http_listener/*/publish_log_v1\":[" RULE(TRUSTED, "POST") "," RULE(AUTHED, "POST") "],"
    "\"http_listener/*/get_config_v1\":[" RULE(TRUSTED, "GET") "," RULE(AUTHED, "GET") "],"
    "\"http_listener/*/get_suspension_v1\":[" RULE(TRUSTED, "GET") "," RULE(AUTHED, "GET") "],"
    "\"http_listener/*/get_bounce_v1\":[" RULE(TRUSTED, "GET") "," RULE(AUTHED, "GET") "],"
    "\"http_listener/*/subscribe_event_v1\":[" RULE(TRUSTED, "GET") "," RULE(AUTHED, "GET") "],"
    "\"http_listener/*/subscribe_suspension_v1\":[" RULE(TRUSTED, "GET") "," RULE(AUTHED, "GET") "],"
    "\"http_listener/*/tsa/status\":[" RULE(ANYONE, "GET") "]"
    "}";

static json_t *default_acl;
static pthread_once_t default_once = PTHREAD_ONCE_INIT;

static void default_acl_init(void)
{
    json_error_t jerr;
    default_acl = json_loads(default_acl_text, 0, &jerr);
    if (!default_acl) {
        /* our own constant: a bug */
        fprintf(stderr, "kumod: built-in ACL does not parse: %s\n", jerr.text);
        abort();
    }
}

const json_t *acl_default_rules(const char *resource)
{
    pthread_once(&default_once, default_acl_init);
    return json_object_get(default_acl, resource);
}

/* ---- resources --------------------------------------------------------------------- */

static int push_res(char ***v, size_t *n, const char *fmt, const char *a, const char *b)
{
    char *s = NULL;
    if (asprintf(&s, fmt, a, b) < 0)
        return KERR_NOMEM;
    char **nv = realloc(*v, (*n + 1) * sizeof(*nv));
    if (!nv) {
        free(s);
        return KERR_NOMEM;
    }
    *v = nv;
    nv[(*n)++] = s;
    return 0;
}

size_t acl_http_resources(const char *listen, const char *path, char ***out)
{
    char p[ACL_MAX_PATH_LEN + 1];
    snprintf(p, sizeof(p), "%s", path[0] == '/' ? path + 1 : path);
    /* at most ACL_MAX_PATH_COMPONENTS components, as KumoMTA caps them */
    int comps = 1;
    for (char *c = p; *c; c++) {
        if (*c == '/' && ++comps > ACL_MAX_PATH_COMPONENTS) {
            *c = 0;
            break;
        }
    }
    char **v = NULL;
    size_t n = 0;
    char cut[ACL_MAX_PATH_LEN + 1];
    /* with the listener address, longest first */
    snprintf(cut, sizeof(cut), "%s", p);
    for (;;) {
        push_res(&v, &n, "http_listener/%s/%s", listen, cut);
        char *slash = strrchr(cut, '/');
        if (!slash)
            break;
        *slash = 0;
    }
    push_res(&v, &n, "http_listener/%s%s", listen, "");
    snprintf(cut, sizeof(cut), "%s", p);
    for (;;) {
        push_res(&v, &n, "http_listener/*/%s%s", cut, "");
        char *slash = strrchr(cut, '/');
        if (!slash)
            break;
        *slash = 0;
    }
    push_res(&v, &n, "http_listener%s%s", "", "");
    *out = v;
    return n;
}

void acl_resources_free(char **res, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(res[i]);
    free(res);
}

/* ---- rules ----------------------------------------------------------------------------- */

/* The single key of a one-key object (serde's externally tagged enum), or
 * the string itself for a unit variant given as a string. */
static const char *variant(const json_t *j, const json_t **payload)
{
    if (json_is_string(j)) {
        *payload = NULL;
        return json_string_value(j);
    }
    if (!json_is_object(j) || json_object_size(j) != 1)
        return NULL;
    void *it = json_object_iter((json_t *)j);
    *payload = json_object_iter_value(it);
    return json_object_iter_key(it);
}

static bool array_has_string(const json_t *a, const char *s)
{
    size_t i;
    json_t *v;
    json_array_foreach(a, i, v) if (json_is_string(v) && strcmp(json_string_value(v), s) == 0)
        return true;
    return false;
}

/* 1 match, 0 no match, KERR_INVAL malformed (err set). check_only skips
 * the auth-dependent parts (validation). */
static int criteria_match(const json_t *c, const json_t *auth, char *err, size_t errlen,
                          int depth)
{
    if (depth > 32) {
        snprintf(err, errlen, "criteria nested too deeply");
        return KERR_INVAL;
    }
    const json_t *pl;
    const char *k = variant(c, &pl);
    if (!k) {
        snprintf(err, errlen, "a criteria must be an object with one of the keys Identity, "
                              "Machine, AllOf, AnyOf, Not");
        return KERR_INVAL;
    }
    if (strcmp(k, "Identity") == 0) {
        const json_t *ipl;
        const char *ik = pl ? variant(pl, &ipl) : NULL;
        if (!ik) {
            snprintf(err, errlen, "Identity must be one of Individual, Group, Authenticated, "
                                  "Unauthenticated, Any");
            return KERR_INVAL;
        }
        const json_t *ids = json_object_get(auth, "identities");
        if (strcmp(ik, "Individual") == 0 || strcmp(ik, "Group") == 0) {
            if (!json_is_string(ipl)) {
                snprintf(err, errlen, "Identity.%s must be a string", ik);
                return KERR_INVAL;
            }
            const char *want = json_string_value(ipl);
            if (strcmp(ik, "Group") == 0)
                return array_has_string(json_object_get(auth, "groups"), want);
            size_t i;
            json_t *id;
            json_array_foreach(ids, i, id)
            {
                const char *s = json_string_value(json_object_get(id, "identity"));
                if (s && strcmp(s, want) == 0)
                    return 1;
            }
            return 0;
        }
        if (strcmp(ik, "Machine") == 0 || strcmp(ik, "MachineSet") == 0) {
            /* KumoMTA's Identity.Machine (one address) and MachineSet (a list
             * of addresses or CIDR blocks), against the peer address */
            const char *peer = json_string_value(json_object_get(auth, "peer_address"));
            bool set = ik[7] == 'S';
            if (set ? !json_is_array(ipl) : !json_is_string(ipl)) {
                snprintf(err, errlen, "Identity.%s must be %s", ik,
                         set ? "a list of IP addresses or CIDR blocks" : "an IP address");
                return KERR_INVAL;
            }
            size_t n = set ? json_array_size(ipl) : 1;
            int hit = 0;
            for (size_t i = 0; i < n; i++) {
                const json_t *e = set ? json_array_get(ipl, i) : ipl;
                cidr cd;
                if (!json_is_string(e) || cidr_parse(json_string_value(e), &cd) != 0 ||
                    (!set && ((cd.family == AF_INET && cd.prefix != 32) ||
                              (cd.family == AF_INET6 && cd.prefix != 128)))) {
                    snprintf(err, errlen, "Identity.%s: '%s' is not %s", ik,
                             json_is_string(e) ? json_string_value(e) : "(not a string)",
                             set ? "an IP address or CIDR block" : "an IP address");
                    return KERR_INVAL;
                }
                cidr_list l = {.items = &cd, .n = 1};
                if (peer && cidr_list_match_str(&l, peer))
                    hit = 1;
            }
            return hit;
        }
        if (strcmp(ik, "Authenticated") == 0)
            return json_array_size(ids) > 0;
        if (strcmp(ik, "Unauthenticated") == 0)
            return json_array_size(ids) == 0;
        if (strcmp(ik, "Any") == 0)
            return 1;
        snprintf(err, errlen, "unknown Identity criteria '%s'", ik);
        return KERR_INVAL;
    }
    if (strcmp(k, "Machine") == 0) {
        cidr cd;
        if (!json_is_string(pl) || cidr_parse(json_string_value(pl), &cd) != 0) {
            snprintf(err, errlen, "Machine must be an IP address or CIDR block");
            return KERR_INVAL;
        }
        const char *peer = json_string_value(json_object_get(auth, "peer_address"));
        if (!peer)
            return 0;
        cidr_list l = {.items = &cd, .n = 1};
        return cidr_list_match_str(&l, peer);
    }
    if (strcmp(k, "AllOf") == 0 || strcmp(k, "AnyOf") == 0) {
        if (!json_is_array(pl)) {
            snprintf(err, errlen, "%s must be an array of criteria", k);
            return KERR_INVAL;
        }
        bool all = k[1] == 'l';
        int result = all ? 1 : 0;
        size_t i;
        json_t *sub;
        /* evaluate every term so that a malformed one is always reported */
        json_array_foreach(pl, i, sub)
        {
            int r = criteria_match(sub, auth, err, errlen, depth + 1);
            if (r < 0)
                return r;
            if (all && !r)
                result = 0;
            if (!all && r)
                result = 1;
        }
        return result;
    }
    if (strcmp(k, "Not") == 0) {
        int r = pl ? criteria_match(pl, auth, err, errlen, depth + 1) : KERR_INVAL;
        if (!pl)
            snprintf(err, errlen, "Not needs a criteria");
        return r < 0 ? r : !r;
    }
    snprintf(err, errlen, "unknown criteria '%s'", k);
    return KERR_INVAL;
}

static int rule_check(const json_t *rule, int idx, const char **priv, bool *allow, char *err,
                      size_t errlen)
{
    if (!json_is_object(rule)) {
        snprintf(err, errlen, "rule %d: expected a table with criteria, privilege and access",
                 idx + 1);
        return KERR_INVAL;
    }
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)rule, key, v)
    {
        if (strcmp(key, "criteria") && strcmp(key, "privilege") && strcmp(key, "access")) {
            snprintf(err, errlen, "rule %d: unknown field '%s'", idx + 1, key);
            return KERR_INVAL;
        }
    }
    *priv = json_string_value(json_object_get(rule, "privilege"));
    const char *access = json_string_value(json_object_get(rule, "access"));
    if (!*priv) {
        snprintf(err, errlen, "rule %d: privilege must be a string", idx + 1);
        return KERR_INVAL;
    }
    if (!access || (strcmp(access, "Allow") && strcmp(access, "Deny"))) {
        snprintf(err, errlen, "rule %d: access must be 'Allow' or 'Deny'", idx + 1);
        return KERR_INVAL;
    }
    if (!json_object_get(rule, "criteria")) {
        snprintf(err, errlen, "rule %d: criteria is required", idx + 1);
        return KERR_INVAL;
    }
    *allow = access[0] == 'A';
    return 0;
}

int acl_eval(const json_t *rules, const json_t *auth, const char *privilege, char *err,
             size_t errlen)
{
    return acl_eval_rule(rules, auth, privilege, NULL, err, errlen);
}

int acl_eval_rule(const json_t *rules, const json_t *auth, const char *privilege,
                  const json_t **rule_out, char *err, size_t errlen)
{
    if (rule_out)
        *rule_out = NULL;
    if (!json_is_array(rules)) {
        snprintf(err, errlen, "an ACL must be a list of rules");
        return ACL_ERROR;
    }
    size_t i;
    json_t *rule;
    json_array_foreach(rules, i, rule)
    {
        const char *priv;
        bool allow;
        if (rule_check(rule, (int)i, &priv, &allow, err, errlen) != 0)
            return ACL_ERROR;
        if (strcmp(priv, privilege) != 0)
            continue;
        char e2[256];
        int m = criteria_match(json_object_get(rule, "criteria"), auth, e2, sizeof(e2), 0);
        if (m < 0) {
            snprintf(err, errlen, "rule %d: %s", (int)i + 1, e2);
            return ACL_ERROR;
        }
        if (m) {
            if (rule_out)
                *rule_out = rule;
            return allow ? ACL_ALLOW : ACL_DENY;
        }
    }
    return ACL_DENY_DEFAULT;
}

/* ---- kumo.aaa ---------------------------------------------------------------------------- */

static int l_make_acl(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    char err[300];
    json_t *rules = klua_to_json(L, 1, err, sizeof(err));
    if (!rules)
        return luaL_error(L, "kumo.aaa.make_access_control_list: %s", err);
    if (json_is_object(rules) && json_object_size(rules) == 0) {
        json_decref(rules);
        rules = json_array();
    }
    /* validate every rule now, with an empty session, so that mistakes show
     * up where the ACL is made rather than at the first request */
    json_t *probe = json_pack("{s:s,s:[],s:[]}", "peer_address", "0.0.0.0", "identities",
                              "groups");
    size_t i;
    json_t *rule;
    int bad = 0;
    if (!json_is_array(rules)) {
        snprintf(err, sizeof(err), "expected a list of rules");
        bad = 1;
    }
    json_array_foreach(rules, i, rule)
    {
        const char *priv;
        bool allow;
        char e2[256];
        if (rule_check(rule, (int)i, &priv, &allow, err, sizeof(err)) != 0) {
            bad = 1;
            break;
        }
        if (criteria_match(json_object_get(rule, "criteria"), probe, e2, sizeof(e2), 0) < 0) {
            snprintf(err, sizeof(err), "rule %d: %s", (int)i + 1, e2);
            bad = 1;
            break;
        }
    }
    json_decref(probe);
    if (bad) {
        json_decref(rules);
        return luaL_error(L, "kumo.aaa.make_access_control_list: %s", err);
    }
    lua_createtable(L, 0, 1);
    klua_push_json(L, rules);
    lua_setfield(L, -2, "rules");
    json_decref(rules);
    return 1;
}

static int l_set_fall_back(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TBOOLEAN);
    atomic_store(&fall_back, lua_toboolean(L, 1));
    return 0;
}

void acl_lua_open(lua_State *L)
{
    lua_getfield(L, -1, "aaa");
    if (!lua_istable(L, -1)) {
        lua_pop(L, 1);
        lua_newtable(L);
        lua_pushvalue(L, -1);
        lua_setfield(L, -3, "aaa");
    }
    lua_pushcfunction(L, l_make_acl);
    lua_setfield(L, -2, "make_access_control_list");
    lua_pushcfunction(L, l_set_fall_back);
    lua_setfield(L, -2, "set_fall_back_to_acl_map");
    lua_pop(L, 1);
    aaa_lua_open(L);
}

/* ---- caches ------------------------------------------------------------------------------------ */

/* KumoMTA's two AAA caches, process-wide (every reactor's checks share
 * them), each a JSON object used as a hash table under a mutex:
 * - the ACL-definition cache: what get_acl_definition returned for a
 *   resource ({"exp": ms, "acl": RULES | null}), so that a hit does not run
 *   Lua again (kumo.aaa.set_acl_cache_ttl);
 * - the check cache: the outcome of a whole check for (privilege, resource,
 *   auth info) ({"exp", "v", "res", "rule"}) (kumo.aaa.set_check_cache_ttl).
 * Errors are never cached. A full table is emptied rather than evicted
 * entry by entry: both are small in practice (one entry per resource and
 * per distinct session identity). */
#define ACL_CACHE_MAX 8192

static atomic_llong acl_ttl_ms = 300000, check_ttl_ms = 300000;
static pthread_mutex_t cache_mu = PTHREAD_MUTEX_INITIALIZER;
static json_t *acl_cache, *check_cache;

void acl_set_acl_cache_ttl_ms(int64_t ms)
{
    atomic_store(&acl_ttl_ms, ms < 0 ? 0 : ms);
}

void acl_set_check_cache_ttl_ms(int64_t ms)
{
    atomic_store(&check_ttl_ms, ms < 0 ? 0 : ms);
}

void acl_caches_clear(void)
{
    pthread_mutex_lock(&cache_mu);
    json_decref(acl_cache);
    json_decref(check_cache);
    acl_cache = check_cache = NULL;
    pthread_mutex_unlock(&cache_mu);
}

/* A live entry of *cache for key (a new reference), or NULL. */
static json_t *cache_get(json_t **cache, const char *key)
{
    pthread_mutex_lock(&cache_mu);
    json_t *e = *cache ? json_object_get(*cache, key) : NULL;
    if (e && json_integer_value(json_object_get(e, "exp")) <= clock_mono_ms()) {
        json_object_del(*cache, key);
        e = NULL;
    }
    json_incref(e);
    pthread_mutex_unlock(&cache_mu);
    return e;
}

/* Stores e (taken) for ttl_ms. */
static void cache_put(json_t **cache, const char *key, json_t *e, int64_t ttl_ms)
{
    if (ttl_ms <= 0 || !e) {
        json_decref(e);
        return;
    }
    json_object_set_new(e, "exp", json_integer(clock_mono_ms() + ttl_ms));
    pthread_mutex_lock(&cache_mu);
    if (!*cache || json_object_size(*cache) >= ACL_CACHE_MAX) {
        json_decref(*cache);
        *cache = json_object();
    }
    if (*cache)
        json_object_set_new(*cache, key, e);
    else
        json_decref(e);
    pthread_mutex_unlock(&cache_mu);
}

/* ---- the walk --------------------------------------------------------------------------------- */

typedef struct acl_walk {
    char **res;
    size_t n, idx;
    json_t *auth;
    char *privilege;
    char *check_key;  /* the check cache's key */
    acl_done_fn done;
    acl_detail_fn detail;
    void *ud;
    bool in_loop;     /* acl_walk_run is on the stack */
    bool event_done;  /* the current event finished while in_loop */
    int ev_verdict;   /* result of that event: -1 = continue */
    char ev_err[300];
    json_t *rule;     /* the rule that decided (a reference), or NULL */
} acl_walk;

static void walk_free(acl_walk *w)
{
    acl_resources_free(w->res, w->n);
    json_decref(w->auth);
    json_decref(w->rule);
    free(w->privilege);
    free(w->check_key);
    free(w);
}

static void walk_finish(acl_walk *w, int verdict, const char *err)
{
    acl_done_fn done = w->done;
    acl_detail_fn detail = w->detail;
    void *ud = w->ud;
    char e[300];
    snprintf(e, sizeof(e), "%s", err ? err : "");
    const char *resource = verdict == ACL_ALLOW || verdict == ACL_DENY ? w->res[w->idx] : NULL;
    if (verdict != ACL_ERROR && w->check_key) {
        json_t *ce = json_pack("{s:i,s:s?,s:O?}", "v", verdict, "res", resource, "rule", w->rule);
        cache_put(&check_cache, w->check_key, ce, atomic_load(&check_ttl_ms));
    }
    if (detail) {
        char *res_copy = resource ? strdup(resource) : NULL;
        json_t *rule = json_incref(w->rule);
        walk_free(w);
        detail(ud, verdict, verdict == ACL_ERROR ? e : NULL, res_copy, rule);
        free(res_copy);
        json_decref(rule);
        return;
    }
    walk_free(w);
    done(ud, verdict, verdict == ACL_ERROR ? e : NULL);
}

/* Verdict for resource idx from rules (use_default: the built-in map). */
static int walk_eval(acl_walk *w, const json_t *rules, bool use_default, char *err,
                     size_t errlen)
{
    if (use_default) {
        if (!atomic_load(&fall_back))
            return ACL_DENY_DEFAULT;
        rules = acl_default_rules(w->res[w->idx]);
        if (!rules)
            return ACL_DENY_DEFAULT;
    }
    const json_t *rule = NULL;
    int v = acl_eval_rule(rules, w->auth, w->privilege, &rule, err, errlen);
    if (rule) {
        json_decref(w->rule);
        w->rule = json_deep_copy(rule);
    }
    return v;
}

/* The verdict from what get_acl_definition returned (j; NULL: nothing). */
static int walk_eval_returned(acl_walk *w, const json_t *j, char *err, size_t errlen)
{
    if (!j || json_is_null(j))
        return walk_eval(w, NULL, true, err, errlen);
    const json_t *rules = json_is_object(j) ? json_object_get(j, "rules") : j;
    if (json_is_object(j) && !rules)
        return ACL_DENY_DEFAULT;
    char e2[256];
    int verdict = walk_eval(w, rules, false, e2, sizeof(e2));
    if (verdict == ACL_ERROR)
        snprintf(err, errlen, "ACL of %s: %s", w->res[w->idx], e2);
    return verdict;
}

static void walk_run(acl_walk *w);

static void after_acl_event(klua_call *c, int status, void *ud)
{
    acl_walk *w = ud;
    int verdict;
    char err[300] = "";
    if (status != KLUA_OK) {
        snprintf(err, sizeof(err), "get_acl_definition(%s): %s", w->res[w->idx],
                 klua_call_error(c));
        verdict = ACL_ERROR;
    } else {
        lua_State *co = klua_call_thread(c);
        int nres = klua_call_nresults(c);
        json_t *j = NULL;
        char e2[256];
        if (nres >= 1 && !lua_isnil(co, 1) && !(j = klua_to_json(co, 1, e2, sizeof(e2)))) {
            snprintf(err, sizeof(err), "get_acl_definition(%s) returned %s", w->res[w->idx], e2);
            verdict = ACL_ERROR;
        } else {
            verdict = walk_eval_returned(w, j, err, sizeof(err));
            if (verdict != ACL_ERROR) {
                json_t *ce = json_pack("{s:O?}", "acl", j);
                cache_put(&acl_cache, w->res[w->idx], ce, atomic_load(&acl_ttl_ms));
            }
        }
        json_decref(j);
    }
    if (w->in_loop) {
        w->event_done = true;
        w->ev_verdict = verdict;
        snprintf(w->ev_err, sizeof(w->ev_err), "%s", err);
        return;
    }
    if (verdict != ACL_DENY_DEFAULT) {
        walk_finish(w, verdict, err);
        return;
    }
    w->idx++;
    walk_run(w);
}

static void walk_run(acl_walk *w)
{
    klua *vm = klua_current();
    bool has_event = vm && klua_has_handler(vm, "get_acl_definition");
    while (w->idx < w->n) {
        int verdict;
        char err[300] = "";
        json_t *hit = has_event ? cache_get(&acl_cache, w->res[w->idx]) : NULL;
        if (hit) {
            verdict = walk_eval_returned(w, json_object_get(hit, "acl"), err, sizeof(err));
            json_decref(hit);
        } else if (has_event) {
            klua_call *c;
            lua_State *co = klua_call_begin(vm, "get_acl_definition", &c);
            lua_pushstring(co, w->res[w->idx]);
            w->in_loop = true;
            w->event_done = false;
            klua_call_run(c, 1, after_acl_event, w);
            w->in_loop = false;
            if (!w->event_done)
                return; /* the handler waits; after_acl_event continues */
            verdict = w->ev_verdict;
            snprintf(err, sizeof(err), "%s", w->ev_err);
        } else {
            verdict = walk_eval(w, NULL, true, err, sizeof(err));
        }
        if (verdict != ACL_DENY_DEFAULT) {
            walk_finish(w, verdict, err);
            return;
        }
        w->idx++;
    }
    w->idx = w->n ? w->n - 1 : 0;
    walk_finish(w, ACL_DENY_DEFAULT, NULL);
}

static void check_start(char *const *resources, size_t n, const json_t *auth,
                        const char *privilege, acl_done_fn done, acl_detail_fn detail, void *ud)
{
    acl_walk *w = calloc(1, sizeof(*w));
    if (!w) {
        if (detail)
            detail(ud, ACL_ERROR, "out of memory", NULL, NULL);
        else
            done(ud, ACL_ERROR, "out of memory");
        return;
    }
    w->done = done;
    w->detail = detail;
    w->ud = ud;
    w->res = calloc(n ? n : 1, sizeof(char *));
    w->privilege = strdup(privilege);
    w->auth = json_incref((json_t *)auth);
    if (!w->res || !w->privilege) {
        walk_finish(w, ACL_ERROR, "out of memory");
        return;
    }
    for (size_t i = 0; i < n; i++) {
        w->res[i] = strdup(resources[i]);
        w->n = i + 1;
        if (!w->res[i]) {
            walk_finish(w, ACL_ERROR, "out of memory");
            return;
        }
    }
    w->n = n;
    DTRACE(AMOD, "acl check %s on %s", privilege, n ? resources[0] : "");
    /* the check cache: the same question from the same session is answered
     * without walking (nor calling get_acl_definition) again */
    char *a = json_dumps(auth, JSON_COMPACT | JSON_SORT_KEYS);
    if (a && n && asprintf(&w->check_key, "%s\n%s\n%s", privilege, resources[0], a) < 0)
        w->check_key = NULL;
    free(a);
    json_t *hit = w->check_key ? cache_get(&check_cache, w->check_key) : NULL;
    if (hit) {
        int v = (int)json_integer_value(json_object_get(hit, "v"));
        const char *res = json_string_value(json_object_get(hit, "res"));
        json_decref(w->rule);
        w->rule = json_incref(json_object_get(hit, "rule"));
        for (w->idx = 0; res && w->idx + 1 < w->n && strcmp(w->res[w->idx], res) != 0; w->idx++)
            ;
        free(w->check_key); /* already cached */
        w->check_key = NULL;
        json_decref(hit);
        walk_finish(w, v, NULL);
        return;
    }
    walk_run(w);
}

void acl_check(char *const *resources, size_t n, const json_t *auth, const char *privilege,
               acl_done_fn done, void *ud)
{
    check_start(resources, n, auth, privilege, done, NULL, ud);
}

void acl_check_detail(char *const *resources, size_t n, const json_t *auth,
                      const char *privilege, acl_detail_fn detail, void *ud)
{
    check_start(resources, n, auth, privilege, NULL, detail, ud);
}
