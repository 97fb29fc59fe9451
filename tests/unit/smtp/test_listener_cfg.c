/* Unit tests for src/smtp/listener_cfg.c: parsing of start_esmtp_listener's
 * table with nested peer and via blocks, the order in which blocks apply
 * (base, peer, via), meta, and the errors a bad table gets. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include "smtp/listener_cfg.h"

static struct sockaddr_in v4(const char *ip)
{
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    inet_pton(AF_INET, ip, &a.sin_addr);
    return a;
}

static listener_cfg *parse(const char *text, char *err, size_t errlen)
{
    json_error_t je;
    json_t *j = json_loads(text, 0, &je);
    assert_non_null(j);
    listener_cfg *ln = lcfg_listener_from_json(j, err, errlen);
    json_decref(j);
    return ln;
}

static void test_peer_then_via(void **state)
{
    (void)state;
    char err[512];
    listener_cfg *ln = parse(
        "{\"listen\": \"0.0.0.0:25\", \"banner\": \"base\", \"max_connections\": 7,"
        " \"meta\": {\"tier\": \"base\"},"
        " \"peer\": {\"127.0.0.1\": {\"banner\": \"loopback\", \"allow_xclient\": true},"
        "            \"192.168.1.0/24\": {\"banner\": \"lan\", \"meta\": {\"tier\": \"lan\"}}},"
        " \"via\": {\"10.0.0.1\": {\"hostname\": \"mx.example-customer.com\","
        "                          \"peer\": {\"127.0.0.1\": {\"banner\": \"nested\"}}}}}",
        err, sizeof(err));
    assert_non_null(ln);
    assert_int_equal(ln->max_connections, 7);
    assert_true(ln->wildcard);
    struct sockaddr_in lan = v4("192.168.1.77"), lo = v4("127.0.0.1"), other = v4("8.8.8.8");
    struct sockaddr_in via1 = v4("10.0.0.1"), via2 = v4("10.0.0.2");

    lcfg_params p;
    json_t *meta = json_object();
    lcfg_defaults(&p);
    lcfg_apply(&p, ln->base, (struct sockaddr *)&via2, (struct sockaddr *)&lan, meta);
    assert_string_equal(p.banner, "lan");
    assert_false(p.allow_xclient);
    assert_string_equal(json_string_value(json_object_get(meta, "tier")), "lan");

    lcfg_defaults(&p);
    lcfg_apply(&p, ln->base, (struct sockaddr *)&via2, (struct sockaddr *)&lo, meta);
    assert_string_equal(p.banner, "loopback");
    assert_true(p.allow_xclient);

    /* via applies after peer: its nested peer block wins */
    lcfg_defaults(&p);
    lcfg_apply(&p, ln->base, (struct sockaddr *)&via1, (struct sockaddr *)&lo, meta);
    assert_string_equal(p.banner, "nested");
    assert_string_equal(p.hostname, "mx.example-customer.com");
    assert_string_equal(json_string_value(json_object_get(meta, "hostname")),
                        "mx.example-customer.com");

    lcfg_defaults(&p);
    lcfg_apply(&p, ln->base, (struct sockaddr *)&via2, (struct sockaddr *)&other, NULL);
    assert_string_equal(p.banner, "base");
    assert_int_equal(p.data_buffer_size, 128 * 1024);
    json_decref(meta);
    lcfg_listener_free(ln);
}

static void test_errors(void **state)
{
    (void)state;
    static const struct {
        const char *in, *err;
    } rows[] = {
        {"{\"bogus\": 1}", "unknown field 'bogus'"},
        {"{\"peer\": {\"10.0.0.1/8\": {}}}",
         "peer: 10.0.0.1/8 is not a valid CIDR: host part of address was not zero. Did you mean "
         "10.0.0.0/8?"},
        {"{\"peer\": {\"10.0.0.0/8\": {\"listen\": \"1.2.3.4:25\"}}}",
         "peer.10.0.0.0/8.unknown field 'listen'"},
        {"{\"via\": {\"10.0.0.1\": {\"banner\": 5}}}", "via.10.0.0.1.banner: expected a string"},
        {"{\"peer\": []}", "peer: expected a table keyed by CIDR blocks"},
        {"{\"data_buffer_size\": 0}", "data_buffer_size: must be at least 1"},
        {"{\"tls_certificate\": \"/x\"}",
         "tls_certificate and tls_private_key must be given together"},
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        char err[512] = "";
        listener_cfg *ln = parse(rows[i].in, err, sizeof(err));
        if (ln || strcmp(err, rows[i].err) != 0)
            print_error("%s -> %s\n", rows[i].in, err);
        assert_null(ln);
        assert_string_equal(err, rows[i].err);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_peer_then_via),
                                       cmocka_unit_test(test_errors)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
