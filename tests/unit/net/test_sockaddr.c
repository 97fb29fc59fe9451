/* Unit tests for src/net/sockaddr.c: listen addresses. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>
#include <netinet/in.h>

#include "net/sockaddr.h"

static const struct {
    const char *s;
    int port; /* -1: refused */
} rows[] = {
    {"127.0.0.1:25", 25},
    {"127.0.0.1:0", 0},
    {"0.0.0.0:65535", 65535},
    {"[::1]:2025", 2025},
    {"[::]:587", 587},
    {"127.0.0.1:99999", -1}, /* getaddrinfo alone would wrap it to 34463 */
    {"127.0.0.1:65536", -1},
    {"127.0.0.1:", -1},
    {"127.0.0.1:25x", -1},
    {"127.0.0.1:-1", -1},
    {"127.0.0.1", -1},
    {"localhost:25", -1}, /* numeric only */
    {"[::1]25", -1},
    {"127.0.0.1:0000025", -1},
};

static void test_parse_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        struct sockaddr_storage ss;
        socklen_t len;
        int rc = net_parse_hostport(rows[i].s, &ss, &len);
        if ((rc == 0) != (rows[i].port >= 0))
            print_error("%s: rc=%d\n", rows[i].s, rc);
        assert_int_equal(rc == 0, rows[i].port >= 0);
        if (rc == 0) {
            int port = ss.ss_family == AF_INET
                           ? ntohs(((struct sockaddr_in *)&ss)->sin_port)
                           : ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
            assert_int_equal(port, rows[i].port);
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_parse_table)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
