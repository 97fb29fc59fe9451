/* Unit tests for src/lua/lib/kstring.c (kumo.string's core): wrap, trim,
 * find, and the Public Suffix List rules (normal, wildcard, exception). */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "lua/lib/domain_map.h"
#include "lua/lib/kstring.h"

static void test_wrap(void **state)
{
    struct {
        const char *in, *out;
    } rows[] = {
        {"foo", "foo"},
        {"hello world ", "hello\r\n\tworld"},
        {"hello world foo bar baz woot woot", "hello\r\n\tworld foo\r\n\tbar baz\r\n\twoot woot"},
        {"hi there breakmepleaseIamtoolong", "hi there\r\n\tbreakmepleaseIa\r\n\tmtoolong"},
        {"   ", ""},
        {"", ""},
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        size_t n;
        char *w = kstr_wrap(rows[i].in, strlen(rows[i].in), 10, 15, &n);
        assert_non_null(w);
        assert_string_equal(w, rows[i].out);
        assert_int_equal(n, strlen(rows[i].out));
        free(w);
    }
}

static void test_trim_and_find(void **state)
{
    size_t a, l;
    const char *s = "\xe3\x80\x80 x \xc2\xa0";
    kstr_trim(s, strlen(s), true, true, &a, &l);
    assert_int_equal(l, 1);
    assert_int_equal(s[a], 'x');
    kstr_trim("\xff ", 2, true, true, &a, &l);
    assert_int_equal(a, 0);
    assert_int_equal(l, 1);
    assert_int_equal(kstr_find("abcabc", 6, 1, "abc", 3), 3);
    assert_int_equal(kstr_find("abc", 3, 4, "a", 1), -1);
    assert_int_equal(kstr_find("abc", 3, 2, "", 0), 2);
    assert_int_equal(kstr_rfind("abcabc", 6, "abc", 3), 3);
    assert_int_equal(kstr_rfind("abcabc", 5, "abc", 3), 0);
    assert_int_equal(kstr_rfind("ab", 2, "abc", 3), -1);
}

static void test_psl(void **state)
{
    char buf[256];
    struct {
        const char *in, *suffix, *domain;
    } rows[] = {
        {"www.example.com", "com", "example.com"},
        {"Www.Example.Co.UK.", "co.uk", "example.co.uk"},
        {"com", "com", NULL},
        {"a.b.c.kawasaki.jp", "c.kawasaki.jp", "b.c.kawasaki.jp"},
        {"www.city.kawasaki.jp", "kawasaki.jp", "city.kawasaki.jp"},
        {"x.unknowntld", "unknowntld", "x.unknowntld"},
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        long s = kstr_psl_suffix(rows[i].in, strlen(rows[i].in), buf, sizeof(buf));
        assert_true(s >= 0);
        assert_string_equal(buf + s, rows[i].suffix);
        long d = kstr_psl_domain(rows[i].in, strlen(rows[i].in), buf, sizeof(buf));
        if (rows[i].domain) {
            assert_true(d >= 0);
            assert_string_equal(buf + d, rows[i].domain);
        } else {
            assert_int_equal(d, -1);
        }
    }
    assert_int_equal(kstr_psl_suffix("", 0, buf, sizeof(buf)), -1);
    assert_int_equal(kstr_psl_suffix("a..", 3, buf, sizeof(buf)), -1);
}

static void test_domain_candidates(void **state)
{
    const char *name = "a.b.example.com";
    size_t pos = 0;
    int wild;
    const char *want[] = {"a.b.example.com", "b.example.com", "example.com", "com"};
    for (int i = 0; i < 4; i++) {
        long off = domain_map_next_candidate(name, strlen(name), &pos, &wild);
        assert_true(off >= 0);
        assert_int_equal(wild, i > 0);
        assert_string_equal(name + off, want[i]);
    }
    assert_int_equal(domain_map_next_candidate(name, strlen(name), &pos, &wild), -1);
    pos = 0;
    domain_map_next_candidate("x.", 2, &pos, &wild);
    assert_int_equal(domain_map_next_candidate("x.", 2, &pos, &wild), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_wrap),
        cmocka_unit_test(test_trim_and_find),
        cmocka_unit_test(test_psl),
        cmocka_unit_test(test_domain_candidates),
    };
    return cmocka_run_group_tests_name("lua/kstring", tests, NULL, NULL);
}
