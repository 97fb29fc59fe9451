/* Unit tests for src/lua/lib/cidr_map.c: longest prefix per family, mapped
 * IPv6, removal, and the key grammar with its error messages. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "lua/lib/cidr_map.h"

static cidr key(const char *s)
{
    cidr c;
    char err[300];
    int rc = cidr_map_parse_key(s, strlen(s), &c, err, sizeof(err));
    if (rc != 0)
        fail_msg("%s: %s", s, err);
    return c;
}

static void test_longest_prefix(void **state)
{
    cidr_map *m = cidr_map_new();
    int old;
    const char *blocks[] = {"0.0.0.0/0", "10.0.0.0/8",    "10.1.0.0/16",    "10.1.2.3",
                            "::/0",      "2001:db8::/32", "2001:db8:1::/48"};
    for (int i = 0; i < 7; i++) {
        cidr c = key(blocks[i]);
        assert_int_equal(cidr_map_insert(m, &c, i, &old), 0);
        assert_int_equal(old, -1);
    }
    struct {
        const char *q;
        int slot;
    } rows[] = {{"10.2.3.4", 1},      {"10.1.9.9", 2},        {"10.1.2.3", 3},
                {"192.0.2.1", 0},     {"2001:db8:1::5", 6},   {"2001:db8:2::", 5},
                {"::1", 4},           {"::ffff:10.1.2.3", 3}, {"10.1.0.0/24", 2},
                {"[10.1.2.3]:25", 3}, {"10.1.2.3:25", 3},     {"[2001:db8::1]:25", 5}};
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        cidr q = key(rows[i].q);
        assert_int_equal(cidr_map_lookup(m, &q), rows[i].slot);
    }
    cidr c = key("10.1.0.0/16");
    assert_int_equal(cidr_map_insert(m, &c, 9, &old), 0);
    assert_int_equal(old, 2);
    assert_int_equal(cidr_map_remove(m, &c), 9);
    cidr q = key("10.1.9.9");
    assert_int_equal(cidr_map_lookup(m, &q), 1);
    cidr_map_free(m);
    cidr_map_free(NULL);
}

static void test_empty_map(void **state)
{
    cidr_map *m = cidr_map_new();
    cidr q = key("1.2.3.4");
    assert_int_equal(cidr_map_lookup(m, &q), -1);
    cidr z = key("0.0.0.0/0");
    assert_int_equal(cidr_map_remove(m, &z), -1);
    cidr_map_free(m);
}

static void test_key_errors(void **state)
{
    struct {
        const char *in;
        const char *msg;
    } rows[] = {
        {"10.0.0.1/24", "10.0.0.1/24 is not a valid CIDR: host part of address was not zero. "
                        "Did you mean 10.0.0.0/24?"},
        {"2001:db8::1/32", "Did you mean 2001:db8::/32?"},
        {"x", "x is not a valid CIDR"},
        {"[nope]:25", "failed to parse 'nope', the []-enclosed portion of '[nope]:25'"},
        {"nope:25", "failed to parse 'nope', the :-delimited portion of 'nope:25'"},
        {"10.0.0.0/33", "is not a valid CIDR"},
        {"", "is not a valid CIDR"},
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        cidr c;
        char err[300] = "";
        assert_int_not_equal(
            cidr_map_parse_key(rows[i].in, strlen(rows[i].in), &c, err, sizeof(err)), 0);
        if (!strstr(err, rows[i].msg))
            fail_msg("%s: got '%s'", rows[i].in, err);
    }
    cidr c;
    char err[300];
    assert_int_not_equal(cidr_map_parse_key("1.2.3.4\0x", 9, &c, err, sizeof(err)), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_longest_prefix),
        cmocka_unit_test(test_empty_map),
        cmocka_unit_test(test_key_errors),
    };
    return cmocka_run_group_tests_name("lua/cidr_map", tests, NULL, NULL);
}
