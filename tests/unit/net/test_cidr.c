/* Unit tests for src/net/cidr.c: entries with and without a prefix, both
 * families, bracketed IPv6, matching (IPv4-mapped peers match IPv4
 * entries), and prefixes out of range, including numbers that do not fit
 * an int (found by tests/fuzz/fuzz_cidr.c: "::/999999999999999999994" was
 * read as /128 and "10.0.0.0/4294967297" as /1). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <sys/socket.h>

#include "core/kerr.h"
#include "net/cidr.h"

static void test_parse_valid(void **state)
{
    static const struct {
        const char *s;
        int family, prefix;
    } cases[] = {
        {"127.0.0.1", AF_INET, 32},        {"10.0.0.0/8", AF_INET, 8},
        {"0.0.0.0/0", AF_INET, 0},         {"::1", AF_INET6, 128},
        {"fe80::/10", AF_INET6, 10},       {"[::1]", AF_INET6, 128},
        {"[2001:db8::]/32", AF_INET6, 32}, {"10.0.0.0/008", AF_INET, 8},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        cidr c;
        assert_int_equal(cidr_parse(cases[i].s, &c), 0);
        assert_int_equal(c.family, cases[i].family);
        assert_int_equal(c.prefix, cases[i].prefix);
    }
}

static void test_parse_invalid(void **state)
{
    static const char *const bad[] = {
        "",
        "10.0.0.0/",
        "10.0.0.0/33",
        "::/129",
        "10.0.0.0/-1",
        "10.0.0.0/8x",
        "10.0.0.256",
        "example.com",
        "[::1",
        "10.0.0.0/4294967297",
        "10.0.0.0/4294967304",
        "::/999999999999999999994",
        "::/9223372036854775807",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        cidr c;
        assert_int_equal(cidr_parse(bad[i], &c), KERR_PARSE);
    }
}

static void test_match(void **state)
{
    cidr_list l = {0};
    assert_int_equal(cidr_list_add(&l, "10.0.0.0/8"), 0);
    assert_int_equal(cidr_list_add(&l, "fe80::/10"), 0);
    assert_true(cidr_list_match_str(&l, "10.255.1.2"));
    assert_false(cidr_list_match_str(&l, "11.0.0.1"));
    assert_true(cidr_list_match_str(&l, "fe80::1"));
    assert_false(cidr_list_match_str(&l, "fec0::1"));
    assert_false(cidr_list_match_str(&l, "not an address"));
    cidr_list_fini(&l);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_valid),
        cmocka_unit_test(test_parse_invalid),
        cmocka_unit_test(test_match),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
