/* Unit tests for the parsers behind kumo.serde: src/lua/lib/jsonc.c,
 * toml_json.cpp and yaml_json.c (values, errors, hostile input). */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "lua/lib/jsonc.h"
#include "lua/lib/toml_json.h"
#include "lua/lib/yaml_json.h"

static char *dump(const json_t *j)
{
    return json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
}

static void expect(json_t *j, const char *want)
{
    assert_non_null(j);
    char *s = dump(j);
    if (strcmp(s, want) != 0)
        fail_msg("got %s want %s", s, want);
    free(s);
    json_decref(j);
}

static void test_jsonc(void **state)
{
    char err[256];
    const char *t = "{\"a\": \"/* no */ # no\", /* yes */ \"b\": 1 // yes\n, \"c\": [2] # yes\n}";
    expect(jsonc_parse(t, strlen(t), err, sizeof(err)),
           "{\"a\":\"/* no */ # no\",\"b\":1,\"c\":[2]}");
    const char *esc = "[\"a\\\"//\"] // c";
    expect(jsonc_parse(esc, strlen(esc), err, sizeof(err)), "[\"a\\\"//\"]");
    char buf[] = "1 /* open";
    jsonc_strip_comments(buf, strlen(buf));
    assert_string_equal(buf, "1        ");
    assert_null(jsonc_parse("{", 1, err, sizeof(err)));
    assert_non_null(strstr(err, "line 1"));
    assert_null(jsonc_parse("\"\xff\"", 3, err, sizeof(err)));
}

static void test_toml(void **state)
{
    char err[256];
    const char *t = "a = 1\nb = 'x'\n[t]\nd = 1979-05-27T07:32:00Z\nf = 1.5\n[[arr]]\nk = true\n";
    expect(toml_json_parse(t, strlen(t), NULL, err, sizeof(err)),
           "{\"a\":1,\"arr\":[{\"k\":true}],\"b\":\"x\",\"t\":{\"d\":\"1979-05-27T07:32:00Z\","
           "\"f\":1.5}}");
    assert_null(toml_json_parse("a = nan", 7, NULL, err, sizeof(err)));
    assert_non_null(strstr(err, "at a"));
    assert_null(toml_json_parse("a = 1\na = 2", 11, NULL, err, sizeof(err)));
    assert_non_null(strstr(err, "line 2"));
    assert_null(toml_json_parse("a = \"\xc3\"", 7, NULL, err, sizeof(err)));
    /* not NUL-terminated input is read only up to len */
    assert_null(toml_json_parse("a = 1\0garbage", 13, NULL, err, sizeof(err)));
    json_t *j = json_pack("{s:i, s:{s:[i,s]}, s:n}", "a", 1, "b", "c", 2, "x", "gone");
    char *s = toml_json_encode(j, TOML_JSON_PLAIN, err, sizeof(err));
    assert_string_equal(s, "a = 1\n\n[b]\nc = [ 2, \"x\" ]\n");
    free(s);
    json_decref(j);
    j = json_pack("[i]", 1);
    assert_null(toml_json_encode(j, TOML_JSON_PLAIN, err, sizeof(err)));
    assert_string_equal(err, "a TOML document must be a table");
    json_decref(j);
    j = json_pack("{s:[n]}", "a");
    assert_null(toml_json_encode(j, TOML_JSON_PLAIN, err, sizeof(err)));
    json_decref(j);
}

static void test_yaml(void **state)
{
    char err[256];
    const char *t =
        "a: [1, -2, 0o17, 1e3, .inf, ~, 'q', \"1\", Yes, !!str 5]\nb: {c: &x [1]}\nd: *x\n";
    expect(
        yaml_json_parse(t, strlen(t), err, sizeof(err)),
        "{\"a\":[1,-2,15,1000.0,null,null,\"q\",\"1\",\"Yes\",\"5\"],\"b\":{\"c\":[1]},\"d\":[1]}");
    expect(yaml_json_parse("", 0, err, sizeof(err)), "null");
    expect(yaml_json_parse("99999999999999999999", 20, err, sizeof(err)), "1e20");
    assert_null(yaml_json_parse("a: 1\n---\nb: 1\n", 14, err, sizeof(err)));
    assert_null(yaml_json_parse("[", 1, err, sizeof(err)));
    assert_non_null(strstr(err, "line "));
    assert_null(yaml_json_parse("a: \xff", 4, err, sizeof(err)));
    /* deep nesting: an error, not a stack overflow */
    char *deep = malloc(200001);
    memset(deep, '[', 200000);
    assert_null(yaml_json_parse(deep, 200000, err, sizeof(err)));
    free(deep);
    json_t *j = json_pack("{s:[s,s,s,s], s:{}}", "k", "true", "~", "x y", "a\nb", "e");
    char *s = yaml_json_encode(j, err, sizeof(err));
    assert_string_equal(s, "k:\n- 'true'\n- '~'\n- x y\n- |-\n  a\n  b\ne: {}\n");
    json_t *back = yaml_json_parse(s, strlen(s), err, sizeof(err));
    assert_true(json_equal(back, j));
    json_decref(back);
    free(s);
    json_decref(j);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_jsonc),
        cmocka_unit_test(test_toml),
        cmocka_unit_test(test_yaml),
    };
    return cmocka_run_group_tests_name("lua/serde_cores", tests, NULL, NULL);
}
