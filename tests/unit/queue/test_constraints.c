/* Unit tests for src/queue/constraints.c and src/queue/config_resolve.c:
 * the ceilings of kumo.compute_egress_path_config_constraints' page (its
 * example, additional entries, the merge with a queue's rate), throttle
 * display in the operator's units, and that every resolved configuration
 * (all defaults, and a full one) parses back through config.c to the same
 * resolved form. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/throttle.h"
#include "queue/config.h"
#include "queue/config_resolve.h"
#include "queue/constraints.h"

static void path_of(const char *json, egress_path_config *out)
{
    char err[256];
    json_t *j = json_loads(json, 0, NULL);
    assert_non_null(j);
    assert_int_equal(egress_path_from_json(j, out, err, sizeof(err)), 0);
    json_decref(j);
}

static void test_throttle_display(void **state)
{
    (void)state;
    static const char *const rows[][2] = {
        {"100/s", "100/s"},        {"10000/hr", "10000/h"},   {"5,000/hour", "5000/h"},
        {"60/minute", "60/m"},     {"1/day", "1/d"},          {"local:5/s", "local:5/s"},
        {"10/30s", "10/30s"},      {"10/s,max_burst=2", "10/s,max_burst=2"},
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        throttle_spec t;
        char buf[96];
        assert_int_equal(throttle_spec_parse(rows[i][0], &t), 0);
        throttle_display(&t, buf, sizeof(buf));
        assert_string_equal(buf, rows[i][1]);
    }
}

static void test_page_example(void **state)
{
    (void)state;
    egress_path_config c;
    path_of("{\"max_message_rate\":\"1000/s\",\"max_connection_rate\":\"10/s\","
            "\"max_deliveries_per_connection\":10}",
            &c);
    eff_constraints ec;
    constraints_of_path(&c, &ec);
    egress_path_fini(&c);
    assert_true(ec.dispatchers.value == 32 && ec.dispatchers.kind == CEIL_PRIMARY);
    assert_true(ec.message_rate.set && ec.message_rate.value == 100);
    assert_int_equal(ec.message_rate.kind, CEIL_RECONNECT_CYCLING);
    assert_string_equal(ec.message_rate.display, "10 \xc3\x97 10/s = 100/s");
    assert_true(ec.has_declared);
    assert_string_equal(ec.declared, "1000/s");
    assert_false(ec.selection_rate.set);
    char *text = constraints_render(&ec);
    assert_string_equal(text, "ceilings:\n"
                              "  concurrent dispatchers: 32\n"
                              "    source: connection_limit\n"
                              "  message rate:           10 \xc3\x97 10/s = 100/s\n"
                              "    source: max_deliveries_per_connection \xc3\x97 max_connection_rate\n"
                              "    declared: max_message_rate = 1000/s \xe2\x86\x90 effectively unreachable\n"
                              "  connection rate:        10/s\n"
                              "    source: max_connection_rate\n");
    free(text);
    /* the JSON shape, and back */
    json_t *j = constraints_to_json(&ec);
    eff_constraints back;
    char err[128];
    assert_int_equal(constraints_from_json(j, &back, err, sizeof(err)), 0);
    assert_string_equal(back.message_rate.display, ec.message_rate.display);
    assert_int_equal(back.message_rate.kind, CEIL_RECONNECT_CYCLING);
    json_decref(j);
}

static void test_additional_and_merge(void **state)
{
    (void)state;
    egress_path_config c;
    path_of("{\"connection_limit\":10,\"additional_connection_limits\":{\"shared\":4},"
            "\"source_selection_rate\":\"100/s\","
            "\"additional_source_selection_rates\":{\"pool\":\"60/m\"},"
            "\"max_message_rate\":\"100/s\"}",
            &c);
    eff_constraints ec;
    constraints_of_path(&c, &ec);
    egress_path_fini(&c);
    assert_int_equal(ec.dispatchers.kind, CEIL_ADDITIONAL);
    assert_string_equal(ec.dispatchers.name, "shared");
    assert_true(ec.dispatchers.value == 4);
    assert_int_equal(ec.selection_rate.kind, CEIL_ADDITIONAL);
    assert_true(ec.selection_rate.value == 1);
    assert_false(ec.has_declared);

    queue_config q;
    char err[256];
    json_t *j = json_loads("{\"max_message_rate\":\"10/s\"}", 0, NULL);
    assert_int_equal(queue_config_from_json(j, &q, err, sizeof(err)), 0);
    json_decref(j);
    eff_constraints qc;
    constraints_of_queue(&q, &qc);
    queue_config_fini(&q);
    assert_true(isinf(qc.dispatchers.value));
    constraints_merge(&ec, &qc);
    assert_true(ec.dispatchers.value == 4); /* the open ceiling loses */
    assert_int_equal(ec.message_rate.kind, CEIL_OTHER);
    assert_string_equal(ec.message_rate.name, "scheduled queue max_message_rate");
    assert_true(ec.has_declared);
    assert_string_equal(ec.declared, "100/s");
}

static void round_trip(config_kind kind, const char *given_text)
{
    char err[512];
    json_t *given = json_loads(given_text, 0, NULL);
    assert_non_null(given);
    json_t *r = config_resolve(kind, given, err, sizeof(err));
    if (!r)
        fail_msg("%s: %s", given_text, err);
    json_t *r2 = config_resolve(kind, r, err, sizeof(err));
    if (!r2)
        fail_msg("resolved form of %s refused: %s", given_text, err);
    assert_true(json_equal(r, r2));
    char *toml = config_resolve_toml(kind, given, err, sizeof(err));
    assert_non_null(toml);
    free(toml);
    json_decref(r);
    json_decref(r2);
    json_decref(given);
}

static void test_resolve_round_trip(void **state)
{
    (void)state;
    round_trip(CONFIG_QUEUE, "{}");
    round_trip(CONFIG_QUEUE, "{\"retry_interval\":600,\"max_message_rate\":\"5,000/hour\","
                             "\"egress_pool\":\"p\",\"protocol\":{\"maildir_path\":\"/tmp/m\"}}");
    round_trip(CONFIG_EGRESS_PATH, "{}");
    round_trip(CONFIG_EGRESS_PATH,
               "{\"connection_limit\":\"local:3\",\"additional_message_rate_throttles\":"
               "{\"a\":\"10/s\"},\"connect_timeout\":\"90s\",\"skip_hosts\":[\"10.0.0.0/8\"]}");
    round_trip(CONFIG_EGRESS_SOURCE, "{\"name\":\"ip-1\",\"source_address\":\"10.0.0.1\"}");
    round_trip(CONFIG_EGRESS_POOL, "{\"name\":\"p\",\"entries\":[{\"name\":\"a\"}]}");
    /* refused as the makers refuse it */
    char err[256];
    json_t *bad = json_loads("{\"nope\":1}", 0, NULL);
    assert_null(config_resolve(CONFIG_EGRESS_PATH, bad, err, sizeof(err)));
    assert_non_null(strstr(err, "unknown field 'nope'"));
    json_decref(bad);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_throttle_display),
        cmocka_unit_test(test_page_example),
        cmocka_unit_test(test_additional_and_merge),
        cmocka_unit_test(test_resolve_round_trip),
    };
    return cmocka_run_group_tests_name("queue/constraints", tests, NULL, NULL);
}
