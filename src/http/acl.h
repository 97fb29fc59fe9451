/* Authorization of HTTP requests in KumoMTA's model (docs: access_control,
 * get_acl_definition, kumo.aaa.make_access_control_list). A request names
 * a chain of resources ("http_listener/<listen>/api/admin/bounce/v1" ...
 * "http_listener"); for each, the policy's get_acl_definition event may
 * return an ACL, otherwise the built-in ACL applies (unless
 * kumo.aaa.set_fall_back_to_acl_map(false)). The first rule whose
 * privilege (the HTTP method) and criteria match decides; no match at all
 * denies.
 *
 * The session is described by an AuthInfo JSON object, borrowed by every
 * function here: {"peer_address": "1.2.3.4", "identities": [{"identity":
 * "u", "context": "HttpBasicAuth"}], "groups": ["..."]}.
 *
 * kumod's built-in ACL differs from KumoMTA's in one respect, as the
 * product asks: admin and metrics endpoints are open to authenticated users
 * as well as to trusted hosts. A policy that wants KumoMTA's stricter rule
 * returns, for the resource http_listener/ * /api/admin (without the
 * spaces), an ACL that allows only the kumomta:http-listener-trusted-ip
 * group. */
#ifndef KUMOD_HTTP_ACL_H
#define KUMOD_HTTP_ACL_H
#include <jansson.h>
#include <lua.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define ACL_TRUSTED_GROUP "kumomta:http-listener-trusted-ip"

enum acl_verdict { ACL_ALLOW, ACL_DENY, ACL_DENY_DEFAULT, ACL_ERROR };

/* Adds kumo.aaa.make_access_control_list and set_fall_back_to_acl_map to
 * the kumo table at -1 (a klua opener). */
void acl_lua_open(lua_State *L);

/* The resource chain of a request to path on the listener bound to listen
 * ("127.0.0.1:8000"). Returns the count and a malloc'd array of malloc'd
 * strings in *out (free with acl_resources_free). */
size_t acl_http_resources(const char *listen, const char *path, char ***out);
void acl_resources_free(char **res, size_t n);

/* Evaluates the rules (a JSON array of {criteria, privilege, access}) for
 * auth and privilege: ACL_ALLOW or ACL_DENY when a rule matches,
 * ACL_DENY_DEFAULT when none does, ACL_ERROR (reason in err) when a rule
 * is malformed. */
int acl_eval(const json_t *rules, const json_t *auth, const char *privilege, char *err,
             size_t errlen);
/* The same, and *rule_out (borrowed from rules) is the rule that matched. */
int acl_eval_rule(const json_t *rules, const json_t *auth, const char *privilege,
                  const json_t **rule_out, char *err, size_t errlen);

/* The built-in rules of resource (borrowed), or NULL. */
const json_t *acl_default_rules(const char *resource);

/* Decides on the calling reactor whether auth may use privilege on the
 * resources (in order; copied). done(ud, verdict, error) runs exactly
 * once, possibly before acl_check returns; error is set for ACL_ERROR. */
typedef void (*acl_done_fn)(void *ud, int verdict, const char *error);
void acl_check(char *const *resources, size_t n, const json_t *auth, const char *privilege,
               acl_done_fn done, void *ud);

/* acl_check with the detail KumoMTA's query_resource_access reports:
 * detail(ud, verdict, error, resource, rule): for ACL_ALLOW and ACL_DENY the
 * resource whose rule decided and that rule (both borrowed for the call);
 * NULL otherwise. */
typedef void (*acl_detail_fn)(void *ud, int verdict, const char *error, const char *resource,
                              const json_t *rule);
void acl_check_detail(char *const *resources, size_t n, const json_t *auth,
                      const char *privilege, acl_detail_fn detail, void *ud);

/* kumo.aaa.set_acl_cache_ttl / set_check_cache_ttl (default 5 minutes; 0
 * disables the cache). acl_caches_clear forgets both caches. Any thread. */
void acl_set_acl_cache_ttl_ms(int64_t ms);
void acl_set_check_cache_ttl_ms(int64_t ms);
void acl_caches_clear(void);

/* The kumo.aaa functions of src/http/aaa_lua.c (a klua opener, after
 * acl_lua_open). */
void aaa_lua_open(lua_State *L);

#endif
