/* Unit tests for src/smtp/xclient.c: XCLIENT attribute parsing (Postfix's
 * syntax, xtext values) and the 501 texts KumoMTA gives. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include "core/kerr.h"
#include "smtp/xclient.h"

static void test_attributes(void **state)
{
    (void)state;
    xclient_req x;
    char why[256];
    assert_int_equal(xclient_parse("ADDR=42.42.42.42 port=42 DESTADDR=IPV6:2001:db8::1 "
                                   "DESTPORT=2525 HELO=helo.example LOGIN=a+2Bb+40c",
                                   &x, why, sizeof(why)),
                     0);
    assert_true(x.has_addr && x.has_port && x.has_destaddr && x.has_destport && x.has_helo &&
                x.has_login);
    char ip[64];
    inet_ntop(AF_INET, &((struct sockaddr_in *)&x.addr)->sin_addr, ip, sizeof(ip));
    assert_string_equal(ip, "42.42.42.42");
    assert_int_equal(x.port, 42);
    assert_int_equal(x.destaddr.ss_family, AF_INET6);
    inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&x.destaddr)->sin6_addr, ip, sizeof(ip));
    assert_string_equal(ip, "2001:db8::1");
    assert_int_equal(x.destport, 2525);
    assert_string_equal(x.helo, "helo.example");
    assert_string_equal(x.login, "a+b@c"); /* xtext decoded */
}

static void test_unavailable(void **state)
{
    (void)state;
    xclient_req x;
    char why[256];
    assert_int_equal(xclient_parse("HELO=[UNAVAILABLE] LOGIN=[unavailable]", &x, why, sizeof(why)),
                     0);
    assert_true(x.has_helo && x.has_login);
    assert_string_equal(x.helo, "");
    assert_string_equal(x.login, "");
    assert_false(x.has_addr);
}

static void test_errors(void **state)
{
    (void)state;
    static const struct {
        const char *in, *why;
    } rows[] = {
        {"ADDR=nope", "ADDR nope is invalid"},
        {"ADDR=[UNAVAILABLE]", "ADDR [UNAVAILABLE] is invalid"},
        {"PORT=65536", "PORT 65536 is invalid"},
        {"PORT=-1", "PORT -1 is invalid"},
        {"DESTADDR=1.2.3", "DESTADDR 1.2.3 is invalid"},
        {"DESTPORT=x", "DESTPORT x is invalid"},
        {"NAME=spike.porcupine.org", "parameter NAME is not supported"},
        {"PROTO=ESMTP", "parameter PROTO is not supported"},
        {"", "Syntax error in command or arguments"},
        {"ADDR", "Syntax error in command or arguments"},
        {"=1.2.3.4", "Syntax error in command or arguments"},
        {"ADDR=", "Syntax error in command or arguments"},
        {"ADDR=1.2.3.4+", "Syntax error in command or arguments"},
        {"ADDR=1.2.3.4+4", "Syntax error in command or arguments"},
        {"LOGIN=a+zz", "Syntax error in command or arguments"},
        {"LOGIN=a+00b", "Syntax error in command or arguments"}, /* NUL */
        {"LOGIN=+FF", "Syntax error in command or arguments"},   /* not UTF-8 */
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        xclient_req x;
        char why[256] = "";
        int rc = xclient_parse(rows[i].in, &x, why, sizeof(why));
        if (rc != KERR_PARSE || strcmp(why, rows[i].why) != 0)
            print_error("%s -> %d %s\n", rows[i].in, rc, why);
        assert_int_equal(rc, KERR_PARSE);
        assert_string_equal(why, rows[i].why);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_attributes),
                                       cmocka_unit_test(test_unavailable),
                                       cmocka_unit_test(test_errors)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
