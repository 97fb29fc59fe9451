/* Unit tests for src/net/resolvconf.c: name servers of both families
 * (bracketed with port 53), the options subset with defaults, the last of
 * search/domain winning, comments, and a name server that is no address. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <string.h>

#include "core/kerr.h"
#include "net/resolvconf.h"

static int parse(const char *s, resolvconf *rc)
{
    char err[128];
    return resolvconf_parse(s, strlen(s), rc, err, sizeof(err));
}

static void test_nameservers(void **state)
{
    (void)state;
    resolvconf rc;
    assert_int_equal(parse("nameserver 1.2.3.4\nnameserver 2001:db8::1 # v6\n", &rc), 0);
    assert_int_equal(rc.n_ns, 2);
    assert_string_equal(rc.ns[0], "1.2.3.4:53");
    assert_string_equal(rc.ns[1], "[2001:db8::1]:53");
    assert_int_equal(rc.ndots, 1);
    assert_int_equal(rc.timeout, 5);
    assert_int_equal(rc.attempts, 2);
    assert_false(rc.edns0);
    assert_string_equal(rc.domain, "");
    assert_int_equal(rc.n_search, 0);
}

static void test_options_and_search(void **state)
{
    (void)state;
    resolvconf rc;
    assert_int_equal(parse("options ndots:5 timeout:7 attempts:4 edns0 rotate\n"
                           "domain example.com\nsearch a.example b.example\n"
                           "; comment\nnameserver 1.2.3.4\n",
                           &rc),
                     0);
    assert_int_equal(rc.ndots, 5);
    assert_int_equal(rc.timeout, 7);
    assert_int_equal(rc.attempts, 4);
    assert_true(rc.edns0);
    assert_string_equal(rc.domain, "example.com");
    assert_int_equal(rc.n_search, 2);
    assert_string_equal(rc.search[0], "a.example");
    assert_string_equal(rc.search[1], "b.example");
    /* a later domain line replaces the search list */
    assert_int_equal(parse("search a.example\ndomain d.example\n", &rc), 0);
    assert_int_equal(rc.n_search, 1);
    assert_string_equal(rc.search[0], "d.example");
}

static void test_bad(void **state)
{
    (void)state;
    resolvconf rc;
    char err[128];
    const char *s = "nameserver 1.2.3.4\nnameserver dns.example\n";
    assert_int_equal(resolvconf_parse(s, strlen(s), &rc, err, sizeof(err)), KERR_PARSE);
    assert_non_null(strstr(err, "line 2"));
    assert_int_equal(parse("", &rc), 0);
    assert_int_equal(rc.n_ns, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_nameservers),
        cmocka_unit_test(test_options_and_search),
        cmocka_unit_test(test_bad),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
