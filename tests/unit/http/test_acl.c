/* Unit tests for src/http/acl.c: the resource chain of an HTTP request
 * (KumoMTA's HttpEndpointResource, including its own test case), rule
 * evaluation for every criteria kind, and kumod's built-in ACL. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "http/acl.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

static void test_resource_chain(void **state)
{
    /* the expansion KumoMTA's test_http_endpoint_resource_expansion expects */
    static const char *const want[] = {
        "http_listener/127.0.0.1:8080/foo/bar/baz", "http_listener/127.0.0.1:8080/foo/bar",
        "http_listener/127.0.0.1:8080/foo",         "http_listener/127.0.0.1:8080",
        "http_listener/*/foo/bar/baz",              "http_listener/*/foo/bar",
        "http_listener/*/foo",                      "http_listener",
    };
    char **res;
    size_t n = acl_http_resources("127.0.0.1:8080", "/foo/bar/baz", &res);
    assert_int_equal(n, ARRAY_LEN(want));
    for (size_t i = 0; i < n; i++)
        assert_string_equal(res[i], want[i]);
    acl_resources_free(res, n);
    /* at most 10 components */
    n = acl_http_resources("[::1]:8000", "/1/2/3/4/5/6/7/8/9/10/11/12", &res);
    assert_string_equal(res[0], "http_listener/[::1]:8000/1/2/3/4/5/6/7/8/9/10");
    assert_int_equal(n, 10 + 1 + 10 + 1);
    acl_resources_free(res, n);
}

static json_t *auth(const char *peer, const char *ids, const char *groups)
{
    char buf[512];
    snprintf(buf, sizeof(buf), "{\"peer_address\": \"%s\", \"identities\": %s, \"groups\": %s}",
             peer, ids, groups);
    json_t *j = json_loads(buf, 0, NULL);
    assert_non_null(j);
    return j;
}

struct eval_row {
    const char *criteria;
    const char *privilege; /* of the rule; the request is always GET */
    const char *access;
    int want;
};

static const struct eval_row eval_rows[] = {
    {"{\"Identity\": {\"Any\": {}}}", "GET", "Allow", ACL_ALLOW},
    {"{\"Identity\": {\"Any\": {}}}", "POST", "Allow", ACL_DENY_DEFAULT},
    {"{\"Identity\": {\"Any\": {}}}", "GET", "Deny", ACL_DENY},
    {"{\"Identity\": \"Any\"}", "GET", "Allow", ACL_ALLOW},
    {"{\"Identity\": {\"Authenticated\": {}}}", "GET", "Allow", ACL_ALLOW},
    {"{\"Identity\": {\"Unauthenticated\": {}}}", "GET", "Allow", ACL_DENY_DEFAULT},
    {"{\"Identity\": {\"Individual\": \"daniel\"}}", "GET", "Allow", ACL_ALLOW},
    {"{\"Identity\": {\"Individual\": \"other\"}}", "GET", "Allow", ACL_DENY_DEFAULT},
    {"{\"Identity\": {\"Group\": \"admins\"}}", "GET", "Allow", ACL_ALLOW},
    {"{\"Identity\": {\"Group\": \"" ACL_TRUSTED_GROUP "\"}}", "GET", "Allow", ACL_DENY_DEFAULT},
    {"{\"Machine\": \"10.1.2.3\"}", "GET", "Allow", ACL_ALLOW},
    {"{\"Machine\": \"10.0.0.0/8\"}", "GET", "Allow", ACL_ALLOW},
    {"{\"Machine\": \"192.168.0.0/16\"}", "GET", "Allow", ACL_DENY_DEFAULT},
    {"{\"AllOf\": [{\"Identity\": {\"Group\": \"admins\"}}, {\"Machine\": \"10.1.2.3\"}]}",
     "GET", "Allow", ACL_ALLOW},
    {"{\"AllOf\": [{\"Identity\": {\"Group\": \"admins\"}}, {\"Machine\": \"10.9.9.9\"}]}",
     "GET", "Allow", ACL_DENY_DEFAULT},
    {"{\"AnyOf\": [{\"Identity\": {\"Group\": \"x\"}}, {\"Machine\": \"10.1.2.3\"}]}", "GET",
     "Allow", ACL_ALLOW},
    {"{\"Not\": {\"Identity\": {\"Group\": \"admins\"}}}", "GET", "Allow", ACL_DENY_DEFAULT},
    {"{\"Not\": {\"Identity\": {\"Group\": \"x\"}}}", "GET", "Allow", ACL_ALLOW},
    /* malformed */
    {"{\"Identity\": {\"Frob\": 1}}", "GET", "Allow", ACL_ERROR},
    {"{\"Bogus\": 1}", "GET", "Allow", ACL_ERROR},
    {"{\"Machine\": \"not an ip\"}", "GET", "Allow", ACL_ERROR},
    {"{\"AllOf\": {}}", "GET", "Allow", ACL_ERROR},
    {"{\"Identity\": {\"Any\": {}}}", "GET", "Maybe", ACL_ERROR},
};

static void test_eval(void **state)
{
    json_t *a = auth("10.1.2.3", "[{\"identity\": \"daniel\", \"context\": \"HttpBasicAuth\"}]",
                     "[\"admins\"]");
    for (size_t i = 0; i < ARRAY_LEN(eval_rows); i++) {
        char buf[600];
        snprintf(buf, sizeof(buf), "[{\"criteria\": %s, \"privilege\": \"%s\", \"access\": \"%s\"}]",
                 eval_rows[i].criteria, eval_rows[i].privilege, eval_rows[i].access);
        json_t *rules = json_loads(buf, 0, NULL);
        assert_non_null(rules);
        char err[300] = "";
        int v = acl_eval(rules, a, "GET", err, sizeof(err));
        if (v != eval_rows[i].want)
            print_error("row %zu: %s -> %d (%s), want %d\n", i, buf, v, err, eval_rows[i].want);
        assert_int_equal(v, eval_rows[i].want);
        if (v == ACL_ERROR)
            assert_true(err[0] != 0);
        json_decref(rules);
    }
    json_decref(a);
}

static void test_first_matching_rule_wins(void **state)
{
    json_t *a = auth("10.1.2.3", "[{\"identity\": \"u\", \"context\": \"HttpBasicAuth\"}]",
                     "[\"injectors\"]");
    json_t *rules = json_loads(
        "[{\"criteria\": {\"Identity\": {\"Group\": \"injectors\"}}, \"privilege\": \"GET\","
        "  \"access\": \"Deny\"},"
        " {\"criteria\": {\"Identity\": {\"Authenticated\": {}}}, \"privilege\": \"GET\","
        "  \"access\": \"Allow\"}]",
        0, NULL);
    char err[200];
    assert_int_equal(acl_eval(rules, a, "GET", err, sizeof(err)), ACL_DENY);
    json_decref(rules);
    json_decref(a);
}

static void test_builtin_acl(void **state)
{
    json_t *anon = auth("192.0.2.1", "[]", "[]");
    json_t *trusted = auth("127.0.0.1", "[]", "[\"" ACL_TRUSTED_GROUP "\"]");
    json_t *user = auth("192.0.2.1", "[{\"identity\": \"u\", \"context\": \"HttpBasicAuth\"}]",
                        "[]");
    struct {
        const char *resource, *priv;
        const json_t *who;
        int want;
    } rows[] = {
        {"http_listener/*/api/check-liveness", "GET", anon, ACL_ALLOW},
        {"http_listener/*/api/inject", "POST", anon, ACL_DENY_DEFAULT},
        {"http_listener/*/api/inject", "POST", trusted, ACL_ALLOW},
        {"http_listener/*/api/inject", "POST", user, ACL_ALLOW},
        {"http_listener/*/api/admin", "DELETE", anon, ACL_DENY_DEFAULT},
        {"http_listener/*/api/admin", "DELETE", trusted, ACL_ALLOW},
        {"http_listener/*/api/admin", "GET", user, ACL_ALLOW},
        {"http_listener/*/metrics", "GET", anon, ACL_DENY_DEFAULT},
        {"http_listener/*/metrics.json", "GET", user, ACL_ALLOW},
        {"http_listener/*/metrics", "POST", trusted, ACL_DENY_DEFAULT},
    };
    for (size_t i = 0; i < ARRAY_LEN(rows); i++) {
        const json_t *rules = acl_default_rules(rows[i].resource);
        assert_non_null(rules);
        char err[200];
        assert_int_equal(acl_eval(rules, rows[i].who, rows[i].priv, err, sizeof(err)),
                         rows[i].want);
    }
    assert_null(acl_default_rules("http_listener/*/api"));
    assert_null(acl_default_rules("http_listener"));
    json_decref(anon);
    json_decref(trusted);
    json_decref(user);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_resource_chain),
        cmocka_unit_test(test_eval),
        cmocka_unit_test(test_first_matching_rule_wins),
        cmocka_unit_test(test_builtin_acl),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
