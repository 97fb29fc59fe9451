/* Unit tests for src/lua/lib/rx.c: what the Rust-syntax pass translates,
 * what it refuses in each mode, replacement expansion and escaping. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "lua/lib/rx.h"

static void test_translate(void **state)
{
    struct {
        const char *in, *out;
    } rows[] = {
        {"a\\u00e9", "a\\x{00e9}"},
        {"\\u{1F600}", "\\x{1F600}"},
        {"\\U0001F600", "\\x{0001F600}"},
        {"\\v", "\\x0B"},
        {"[\\v]", "[\\x0B]"},
        {"[]a]", "[]a]"},
        {"[^]a]", "[^]a]"},
        {"[[:alpha:]]", "[[:alpha:]]"},
        {"(?i)x", "(?i)x"},
        {"(?P<n>x)", "(?P<n>x)"},
        {"a-b[a-z-]", "a-b[a-z-]"},
        {"\\é", "\\é"},
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        size_t n;
        char err[200];
        char *t = rx_translate(rows[i].in, strlen(rows[i].in), RX_FANCY, &n, err, sizeof(err));
        if (!t)
            fail_msg("%s: %s", rows[i].in, err);
        assert_string_equal(t, rows[i].out);
        free(t);
    }
}

static void test_refuse(void **state)
{
    /* mode: 0 both refuse, 1 only plain refuses */
    struct {
        const char *in;
        int plain_only;
    } rows[] = {
        {"[a&&b]", 0},  {"[a--b]", 0},  {"[a~~b]", 0},  {"[[a]]", 0},    {"\\Z", 0},
        {"\\C", 0},     {"\\K", 0},     {"\\Qx\\E", 0}, {"\\0", 0},      {"\\12", 0},
        {"(?#x)", 0},   {"(?|a)", 0},   {"(?R)", 0},    {"(?-1)", 0},    {"(?&n)", 0},
        {"(*FAIL)", 0}, {"a{,2}", 0},   {"(?J)", 0},    {"\\b{end}", 0}, {"x\\", 0},
        {"(a)\\1", 1},  {"(?=a)", 1},   {"(?<!a)", 1},  {"(?>a)", 1},    {"a*+", 1},
        {"\\k<n>", 1},  {"(?(1)a)", 1},
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        for (int mode = 0; mode < 2; mode++) {
            size_t n;
            char err[200] = "";
            char *t = rx_translate(rows[i].in, strlen(rows[i].in), (enum rx_mode)mode, &n, err,
                                   sizeof(err));
            bool refused = t == NULL;
            free(t);
            bool want = mode == RX_PLAIN || !rows[i].plain_only;
            if (refused != want)
                fail_msg("%s mode %d: refused=%d (%s)", rows[i].in, mode, refused, err);
            if (refused)
                assert_non_null(strstr(err, "offset"));
        }
    }
}

static void test_expand(void **state)
{
    char err[200];
    pcre2_code *re = rx_compile("(?<a>\\w)(\\d)", 12, RX_FANCY, err, sizeof(err));
    assert_non_null(re);
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
    const char *s = "x7";
    assert_true(rx_exec(re, s, 2, 0, 0, md) > 0);
    const size_t *ov = pcre2_get_ovector_pointer(md);
    struct {
        const char *rep, *out;
    } rows[] = {{"$a-$2", "x-7"}, {"${a}b", "xb"}, {"$ab", ""},      {"$$a", "$a"}, {"$", "$"},
                {"$0$0", "x7x7"}, {"${9}", ""},    {"a$-b", "a$-b"}, {"${a", "${a"}};
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        char *out = NULL;
        size_t len = 0, cap = 0;
        assert_int_equal(
            rx_expand(re, s, ov, 3, rows[i].rep, strlen(rows[i].rep), &out, &len, &cap), 0);
        char got[64];
        snprintf(got, sizeof(got), "%.*s", (int)len, out ? out : "");
        if (strcmp(got, rows[i].out) != 0)
            fail_msg("%s: got '%s' want '%s'", rows[i].rep, got, rows[i].out);
        free(out);
    }
    pcre2_match_data_free(md);
    pcre2_code_free(re);
}

static void test_escape_and_limits(void **state)
{
    size_t n;
    char *e = rx_escape("a.b$", 4, &n);
    assert_string_equal(e, "a\\.b\\$");
    free(e);
    char err[200];
    pcre2_code *re = rx_compile("(a+)+$", 6, RX_FANCY, err, sizeof(err));
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
    char s[64];
    memset(s, 'a', 40);
    s[40] = 'b';
    assert_int_equal(rx_exec(re, s, 41, 0, 0, md), RX_ELIMIT);
    pcre2_match_data_free(md);
    pcre2_code_free(re);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_translate),
        cmocka_unit_test(test_refuse),
        cmocka_unit_test(test_expand),
        cmocka_unit_test(test_escape_and_limits),
    };
    return cmocka_run_group_tests_name("lua/rx", tests, NULL, NULL);
}
