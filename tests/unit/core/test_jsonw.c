/* Unit tests for src/core/jsonw.c: the writer's text equals jansson's
 * json_dumps(JSON_COMPACT | JSON_ENCODE_ANY) for documents covering every
 * type, escape, real format and key order; invalid UTF-8 is repaired;
 * nesting past the limit fails. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/jsonw.h"
#include "core/kerr.h"

static void same_as_jansson(const json_t *v)
{
    char *want = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    assert_non_null(want);
    size_t len = 0;
    char *got = jsonw_dumps(v, &len);
    assert_non_null(got);
    assert_string_equal(got, want);
    assert_int_equal(len, strlen(want));
    free(want);
    free(got);
}

static void test_documents(void **state)
{
    (void)state;
    static const char *docs[] = {
        "null", "true", "false", "0", "-1", "9223372036854775807", "-9223372036854775808",
        "\"\"", "\"plain\"", "\"caf\\u00e9 \\u20ac \\ud83d\\ude00\"",
        "\"q\\\" b\\\\ s/ \\b\\f\\n\\r\\t \\u0001\\u001f\\u007f\"",
        "[]", "{}", "[1,[2,[3,{}]],\"x\"]",
        "{\"z\":1,\"a\":2,\"m\":{\"y\":[true,false,null],\"b\":\"\\u0000x\"}}",
        "[0.5,1.0,-0.0,1e20,1.5e-7,123456789.125,3.141592653589793,1e300,2.2250738585072014e-308]",
        "[100.0,0.1,1e-5,-12.75e10]",
        "{\"type\":\"Delivery\",\"id\":\"abc\",\"recipient\":[\"a@b\",\"c@d\"],"
        "\"response\":{\"code\":250,\"enhanced_code\":null,\"content\":\"ok\"},\"meta\":{}}",
    };
    for (size_t i = 0; i < sizeof(docs) / sizeof(docs[0]); i++) {
        json_error_t e;
        json_t *v = json_loads(docs[i], JSON_DECODE_ANY | JSON_ALLOW_NUL, &e);
        if (!v)
            fail_msg("doc %zu does not parse: %s", i, e.text);
        same_as_jansson(v);
        json_decref(v);
    }
}

static void test_keys_keep_insertion_order(void **state)
{
    (void)state;
    json_t *o = json_object();
    const char *keys[] = {"zeta", "alpha", "mid", "beta", "a\"q", "\xc3\xa9"};
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
        json_object_set_new(o, keys[i], json_integer((json_int_t)i));
    json_object_del(o, "mid");
    json_object_set_new(o, "mid", json_string("again"));
    same_as_jansson(o);
    json_decref(o);
}

static void test_every_control_and_long_strings(void **state)
{
    (void)state;
    char s[300];
    for (int i = 0; i < 256; i++)
        s[i] = (char)(i < 128 ? i : 'x');
    memcpy(s + 256, "\xe2\x82\xac tail \xf0\x9f\x98\x80", 13);
    json_t *v = json_stringn(s, 269);
    assert_non_null(v);
    same_as_jansson(v);
    json_decref(v);
    /* a long run of plain text and escapes every so often */
    size_t n = 100000;
    char *big = malloc(n);
    for (size_t i = 0; i < n; i++)
        big[i] = (char)(i % 97 == 0 ? '\n' : 'a' + (char)(i % 26));
    v = json_stringn(big, n);
    same_as_jansson(v);
    json_decref(v);
    free(big);
}

static void test_invalid_utf8_is_repaired(void **state)
{
    (void)state;
    /* only reachable through *_nocheck: jansson's dump fails on it */
    json_t *v = json_stringn_nocheck("a\xff" "b\xe2\x82" "c\xc3", 7);
    char *got = jsonw_dumps(v, NULL);
    assert_string_equal(got, "\"a\xef\xbf\xbd" "b\xef\xbf\xbd" "c\xef\xbf\xbd\"");
    assert_null(json_dumps(v, JSON_ENCODE_ANY));
    free(got);
    json_decref(v);
}

static void test_depth_limit(void **state)
{
    (void)state;
    json_t *root = json_array(), *cur = root;
    for (int i = 0; i < JSONW_MAX_DEPTH + 5; i++) {
        json_t *a = json_array();
        json_array_append_new(cur, a);
        cur = a;
    }
    sbuf b = {0};
    assert_int_equal(jsonw_append(&b, root), KERR_INVAL);
    free(b.p);
    assert_int_equal(jsonw_append(&b, NULL), KERR_INVAL);
    json_decref(root);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_documents),
        cmocka_unit_test(test_keys_keep_insertion_order),
        cmocka_unit_test(test_every_control_and_long_strings),
        cmocka_unit_test(test_invalid_utf8_is_repaired),
        cmocka_unit_test(test_depth_limit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
