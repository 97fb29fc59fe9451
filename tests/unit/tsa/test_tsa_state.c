/* Unit tests for src/tsa/tsa_state.c: what the TSA daemon decides for a
 * record and the rules it matched (Immediate and Threshold triggers per
 * rule and site, Suspend / SuspendTenant / SuspendCampaign / Bounce /
 * SetConfig / SetDomainConfig), the item shapes of kumo-api-types' tsa.rs,
 * the generated shaping TOML, expiry, and the SQLite copy that a restart
 * reads back. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "tsa/tsa_state.h"

#define NOW 1800000000LL

static json_t *record(const char *queue, const char *content)
{
    return json_pack("{s:s,s:s,s:s,s:s,s:I,s:{s:i,s:s}}", "type", "TransientFailure", "recipient",
                     "user@dest.example", "site", "ip-1->mx.dest.example@smtp_client", "queue",
                     queue, "timestamp", (json_int_t)NOW, "response", "code", 421, "content",
                     content);
}

static json_t *rules(const char *json)
{
    json_error_t e;
    json_t *r = json_loads(json, 0, &e);
    assert_non_null(r);
    return r;
}

static char db[256];

static int setup(void **state)
{
    (void)state;
    snprintf(db, sizeof(db), "/tmp/tsa_state_test_%d.db", (int)getpid());
    unlink(db);
    tsa_state_set_db_path(db);
    char err[256];
    assert_int_equal(tsa_state_open(err, sizeof(err)), 0);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    tsa_state_close();
    unlink(db);
    char p[300];
    snprintf(p, sizeof(p), "%s-wal", db);
    unlink(p);
    snprintf(p, sizeof(p), "%s-shm", db);
    unlink(p);
    return 0;
}

static void test_suspend_immediate(void **state)
{
    (void)state;
    json_t *rec = record("dest.example", "rate limited");
    json_t *r = rules("[{\"regex\":[\"4\\\\.7\\\\.28\"],\"action\":[\"Suspend\"],"
                      "\"trigger\":\"Immediate\",\"duration\":3600}]");
    json_t *ev = tsa_state_evaluate(rec, r, NOW);
    assert_int_equal(json_array_size(ev), 1);
    json_t *s = json_object_get(json_array_get(ev, 0), "ReadyQSuspension");
    assert_non_null(s);
    assert_string_equal(json_string_value(json_object_get(s, "site_name")),
                        "ip-1->mx.dest.example@smtp_client");
    assert_string_equal(json_string_value(json_object_get(s, "source")), "unspecified");
    assert_string_equal(json_string_value(json_object_get(s, "reason")),
                        "automation rule: 4\\.7\\.28");
    assert_string_equal(json_string_value(json_object_get(s, "expires")), "2027-01-15T09:00:00Z");
    const char *hash = json_string_value(json_object_get(s, "rule_hash"));
    assert_true(strncmp(hash, "ip-1->mx.dest.example@smtp_client-", 34) == 0);
    assert_int_equal(strlen(hash), 34 + 64);
    /* the same decision again replaces, not adds */
    json_decref(tsa_state_evaluate(rec, r, NOW + 1));
    json_t *all = tsa_state_suspensions(NOW + 1);
    assert_int_equal(json_array_size(json_object_get(all, "ready_q")), 1);
    json_decref(all);
    /* expired: gone */
    all = tsa_state_suspensions(NOW + 3600);
    assert_int_equal(json_array_size(json_object_get(all, "ready_q")), 0);
    json_decref(all);
    /* a record whose effect would already be over decides nothing */
    json_t *ev2 = tsa_state_evaluate(rec, r, NOW + 7200);
    assert_int_equal(json_array_size(ev2), 0);
    json_decref(ev2);
    json_decref(ev);
    json_decref(r);
    json_decref(rec);
}

static void test_threshold_per_site(void **state)
{
    (void)state;
    json_t *r = rules("[{\"regex\":[\"RL\"],\"action\":[\"Suspend\"],"
                      "\"trigger\":{\"Threshold\":\"3/hr\"},\"duration\":600}]");
    json_t *rec = record("dest.example", "RL0000");
    for (int i = 0; i < 2; i++) {
        json_t *ev = tsa_state_evaluate(rec, r, NOW);
        assert_int_equal(json_array_size(ev), 0);
        json_decref(ev);
    }
    /* another site counts on its own */
    json_t *other = json_deep_copy(rec);
    json_object_set_new(other, "site", json_string("ip-2->mx.dest.example@smtp_client"));
    json_t *ev = tsa_state_evaluate(other, r, NOW);
    assert_int_equal(json_array_size(ev), 0);
    json_decref(ev);
    ev = tsa_state_evaluate(rec, r, NOW);
    assert_int_equal(json_array_size(ev), 1);
    json_decref(ev);
    json_decref(other);
    json_decref(rec);
    json_decref(r);
}

static void test_tenant_campaign_bounce(void **state)
{
    (void)state;
    json_t *r = rules("[{\"regex\":[\"x\"],\"action\":[\"SuspendTenant\",\"SuspendCampaign\","
                      "\"BounceCampaign\"],\"duration\":60}]");
    json_t *rec = record("c1:t1@dest.example", "x");
    json_t *ev = tsa_state_evaluate(rec, r, NOW);
    assert_int_equal(json_array_size(ev), 3);
    json_t *t = json_object_get(json_array_get(ev, 0), "SchedQSuspension");
    json_t *c = json_object_get(json_array_get(ev, 1), "SchedQSuspension");
    json_t *b = json_object_get(json_array_get(ev, 2), "SchedQBounce");
    assert_non_null(t);
    assert_non_null(c);
    assert_non_null(b);
    assert_true(json_is_null(json_object_get(t, "campaign")));
    assert_string_equal(json_string_value(json_object_get(t, "reason")),
                        "automation rule: x tenant=t1 domain=dest.example");
    assert_string_equal(json_string_value(json_object_get(c, "campaign")), "c1");
    assert_string_equal(json_string_value(json_object_get(c, "reason")),
                        "automation rule: x tenant=t1 domain=dest.example campaign=c1");
    assert_string_equal(json_string_value(json_object_get(b, "tenant")), "t1");
    json_decref(ev);
    /* no tenant: nothing (logged) */
    json_t *rec2 = record("dest.example", "x");
    json_t *r2 = rules("[{\"regex\":[\"x\"],\"action\":[\"SuspendTenant\"],\"duration\":60}]");
    ev = tsa_state_evaluate(rec2, r2, NOW);
    assert_int_equal(json_array_size(ev), 0);
    json_decref(ev);
    json_t *items = tsa_state_current_items(NOW, 1);
    /* legacy stream: the two suspensions, not the bounce */
    size_t n = json_array_size(items);
    assert_true(n >= 2);
    for (size_t i = 0; i < n; i++)
        assert_null(json_object_get(json_array_get(items, i), "SchedQBounce"));
    json_decref(items);
    json_decref(rec);
    json_decref(rec2);
    json_decref(r);
    json_decref(r2);
}

static void test_config_toml_and_restart(void **state)
{
    (void)state;
    json_t *r = rules("[{\"regex\":[\"RL\",\"X\"],\"action\":[{\"SetConfig\":{\"name\":"
                      "\"max_connection_rate\",\"value\":\"10000/h\"}},{\"SetDomainConfig\":"
                      "{\"name\":\"connection_limit\",\"value\":2}}],\"duration\":7200,"
                      "\"was_rollup\":true}]");
    json_t *rec = record("dest.example", "RL0000");
    json_object_set_new(rec, "egress_source", json_string("ip-1"));
    json_decref(tsa_state_evaluate(rec, r, NOW));
    char *toml = tsa_state_config_toml(NOW);
    assert_non_null(strstr(toml, "# Generated by tsa-daemon\n# Number of entries: 2\n"));
    assert_non_null(strstr(toml, "[\"dest.example\".sources.ip-1]\n"));
    assert_non_null(strstr(toml, "# reason: automation rule: (RL,X)\n"));
    assert_non_null(strstr(toml, "max_connection_rate = \"10000/h\"\n"));
    assert_non_null(strstr(toml, "connection_limit = 2\n"));
    free(toml);
    /* a restart reads it back */
    tsa_state_close();
    tsa_state_set_db_path(db);
    char err[256];
    assert_int_equal(tsa_state_open(err, sizeof(err)), 0);
    toml = tsa_state_config_toml(NOW);
    assert_non_null(strstr(toml, "# Number of entries: 2\n"));
    free(toml);
    json_decref(rec);
    json_decref(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_suspend_immediate, setup, teardown),
        cmocka_unit_test_setup_teardown(test_threshold_per_site, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tenant_campaign_bounce, setup, teardown),
        cmocka_unit_test_setup_teardown(test_config_toml_and_restart, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
