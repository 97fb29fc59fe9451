/* Unit tests for src/queue/config.c: the JSON forms of make_queue_config,
 * make_egress_path, make_egress_source and make_egress_pool (defaults, every
 * key type, unknown keys and bad values named in the error) and the
 * weighted round robin over an egress pool. Reference behaviour: KumoMTA
 * crates/kumod/src/queue/config.rs (serde deny_unknown_fields, defaults),
 * crates/kumo-api-types/src/egress_path.rs and
 * crates/kumod/src/egress_source.rs (EgressPoolSourceSelector::next_impl and
 * its round_robin test). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "core/duration.h"
#include "core/kerr.h"
#include "queue/config.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define S NS_PER_SEC

static json_t *J(const char *text)
{
    json_error_t e;
    json_t *j = json_loads(text, JSON_DECODE_ANY, &e);
    if (!j) {
        print_error("bad test JSON %s: %s\n", text, e.text);
        fail();
    }
    return j;
}

/* A behaviour that is known to differ from KumoMTA: the check runs, a
 * mismatch is reported as skipped (an expected failure), and a match fails
 * so that the marker is removed once the bug is fixed (strict xfail). */
#define KNOWN_BUG(ok, why)                                                                         \
    do {                                                                                           \
        if (ok) {                                                                                  \
            print_error("known bug is fixed, remove the KNOWN_BUG marker: %s\n", why);             \
            fail();                                                                                \
        }                                                                                          \
        print_message("[  XFAIL   ] BUG: %s\n", why);                                              \
        skip();                                                                                    \
    } while (0)

/* ---- make_queue_config --------------------------------------------------------------- */

static void test_queue_config_defaults(void **state)
{
    (void)state;
    json_t *j = J("{}");
    queue_config c;
    char err[512] = "";
    assert_int_equal(queue_config_from_json(j, &c, err, sizeof(err)), 0);
    assert_int_equal(c.retry_interval_s, 20 * 60);
    assert_int_equal(c.max_retry_interval_s, 0);
    assert_int_equal(c.max_age_s, 7 * 86400);
    assert_null(c.egress_pool);
    assert_false(c.has_max_message_rate);
    assert_int_equal(c.proto, QPROTO_SMTP);
    assert_null(c.mx_list);
    assert_null(c.maildir_path);
    assert_null(c.constructor);
    assert_int_equal(c.reap_interval_ns, 600 * S);
    assert_int_equal(c.refresh_interval_ns, 60 * S);
    assert_false(c.refresh_epoch);
    assert_null(c.provider_name);
    queue_config_fini(&c);
    json_decref(j);

    /* queue_config_defaults() is the same thing */
    queue_config d;
    queue_config_defaults(&d);
    assert_int_equal(d.retry_interval_s, 1200);
    assert_int_equal(d.max_age_s, 604800);
    assert_int_equal(d.proto, QPROTO_SMTP);
    queue_config_fini(&d);
}

struct qc_row {
    const char *json;
    int64_t retry, max_retry, max_age; /* -1: not checked */
};

static const struct qc_row qc_duration_rows[] = {
    /* the seed's examples */
    {"{\"max_age\": \"20 minutes\"}", 1200, 0, 1200},
    {"{\"max_retry_interval\": \"1 hour\"}", 1200, 3600, 604800},
    {"{\"retry_interval\": \"20 minutes\"}", 1200, 0, 604800},
    /* humantime forms and plain seconds */
    {"{\"retry_interval\": \"2s\", \"max_retry_interval\": \"3s\", \"max_age\": \"10s\"}", 2, 3,
     10},
    {"{\"retry_interval\": \"1h 30m\"}", 5400, 0, 604800},
    {"{\"retry_interval\": 30, \"max_age\": 3600}", 30, 0, 3600},
    {"{\"max_age\": \"7 days\"}", 1200, 0, 604800},
    {"{\"max_age\": \"2weeks\"}", 1200, 0, 1209600},
    {"{\"max_retry_interval\": null}", 1200, 0, 604800},
};

static void test_queue_config_durations(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(qc_duration_rows); i++) {
        const struct qc_row *r = &qc_duration_rows[i];
        json_t *j = J(r->json);
        queue_config c;
        char err[512] = "";
        int rc = queue_config_from_json(j, &c, err, sizeof(err));
        if (rc != 0 || c.retry_interval_s != r->retry || c.max_retry_interval_s != r->max_retry ||
            c.max_age_s != r->max_age) {
            print_error("%s: rc=%d (%s) retry=%lld max_retry=%lld max_age=%lld\n", r->json, rc, err,
                        (long long)c.retry_interval_s, (long long)c.max_retry_interval_s,
                        (long long)c.max_age_s);
            fail();
        }
        queue_config_fini(&c);
        json_decref(j);
    }
}

static void test_queue_config_every_key(void **state)
{
    (void)state;
    json_t *j = J("{\"egress_pool\": \"pool-a\", \"max_age\": \"1 day\","
                  " \"retry_interval\": \"5m\", \"max_retry_interval\": \"1h\","
                  " \"max_message_rate\": \"100/s\","
                  " \"protocol\": {\"smtp\": {\"mx_list\": [\"smart.host.local\","
                  "   {\"name\": \"mx.example.com\", \"addr\": \"10.0.0.1\"}],"
                  "   \"treat_mx_list_as_secure\": true}},"
                  " \"reap_interval\": \"30s\", \"refresh_interval\": \"5m\","
                  " \"refresh_strategy\": \"Epoch\", \"provider_name\": \"prov\","
                  " \"timerwheel_tick_interval\": \"2s\", \"strategy\": \"SkipList\","
                  " \"shrink_policy\": [{\"interval\": \"1m\", \"policy\": \"ShrinkData\"}]}");
    queue_config c;
    char err[512] = "";
    int rc = queue_config_from_json(j, &c, err, sizeof(err));
    if (rc)
        print_error("%s\n", err);
    assert_int_equal(rc, 0);
    assert_string_equal(c.egress_pool, "pool-a");
    assert_int_equal(c.max_age_s, 86400);
    assert_int_equal(c.retry_interval_s, 300);
    assert_int_equal(c.max_retry_interval_s, 3600);
    assert_true(c.has_max_message_rate);
    assert_int_equal(c.max_message_rate.limit, 100);
    assert_int_equal(c.max_message_rate.period_ns, 1 * S);
    assert_int_equal(c.proto, QPROTO_SMTP);
    assert_non_null(c.mx_list);
    assert_int_equal(json_array_size(c.mx_list), 2);
    assert_string_equal(json_string_value(json_array_get(c.mx_list, 0)), "smart.host.local");
    assert_string_equal(json_string_value(json_object_get(json_array_get(c.mx_list, 1), "addr")),
                        "10.0.0.1");
    assert_int_equal(c.reap_interval_ns, 30 * S);
    assert_int_equal(c.refresh_interval_ns, 300 * S);
    assert_true(c.refresh_epoch);
    assert_string_equal(c.provider_name, "prov");
    queue_config_fini(&c);
    json_decref(j);

    j = J("{\"refresh_strategy\": \"Ttl\", \"strategy\": \"SingletonTimerWheel\"}");
    assert_int_equal(queue_config_from_json(j, &c, err, sizeof(err)), 0);
    assert_false(c.refresh_epoch);
    queue_config_fini(&c);
    json_decref(j);
    static const char *const strategies[] = {"SingletonTimerWheel", "SingletonTimerWheelV2",
                                             "TimerWheel", "SkipList"};
    for (size_t i = 0; i < ARRAY_LEN(strategies); i++) {
        json_t *s = json_pack("{ss}", "strategy", strategies[i]);
        assert_int_equal(queue_config_from_json(s, &c, err, sizeof(err)), 0);
        queue_config_fini(&c);
        json_decref(s);
    }
}

static void test_queue_config_protocols(void **state)
{
    (void)state;
    queue_config c;
    char err[512] = "";

    /* the seed's maildir example */
    json_t *j = J("{\"protocol\": {\"maildir_path\": \"/var/tmp/kumo-maildir\"}}");
    assert_int_equal(queue_config_from_json(j, &c, err, sizeof(err)), 0);
    assert_int_equal(c.proto, QPROTO_MAILDIR);
    assert_string_equal(c.maildir_path, "/var/tmp/kumo-maildir");
    queue_config_fini(&c);
    json_decref(j);

    /* modes as integers (Lua has no octal literal: 488 == 0750) and octal text */
    j = J("{\"protocol\": {\"maildir_path\": \"/m/{{meta.queue}}\", \"dir_mode\": 488,"
          " \"file_mode\": \"0600\"}}");
    assert_int_equal(queue_config_from_json(j, &c, err, sizeof(err)), 0);
    assert_int_equal(c.proto, QPROTO_MAILDIR);
    assert_string_equal(c.maildir_path, "/m/{{meta.queue}}");
    assert_int_equal(c.dir_mode, 0750);
    assert_int_equal(c.file_mode, 0600);
    queue_config_fini(&c);
    json_decref(j);

    /* the seed's custom_lua example */
    j = J("{\"protocol\": {\"custom_lua\": {\"constructor\": \"make.webhook\"}}}");
    assert_int_equal(queue_config_from_json(j, &c, err, sizeof(err)), 0);
    assert_int_equal(c.proto, QPROTO_LUA);
    assert_string_equal(c.constructor, "make.webhook");
    assert_int_equal(c.batch_size, 1);
    /* KumoMTA's defaults: min_batch_size 1, max_batch_latency 0 */
    assert_int_equal(c.min_batch_size, 1);
    assert_int_equal(c.max_batch_latency_ns, 0);
    queue_config_fini(&c);
    json_decref(j);

    j = J("{\"protocol\": {\"custom_lua\": {\"constructor\": \"make.batch\", \"batch_size\": 10,"
          " \"min_batch_size\": 2, \"max_batch_latency\": \"1s\"}}}");
    assert_int_equal(queue_config_from_json(j, &c, err, sizeof(err)), 0);
    assert_int_equal(c.proto, QPROTO_LUA);
    assert_string_equal(c.constructor, "make.batch");
    assert_int_equal(c.batch_size, 10);
    assert_int_equal(c.min_batch_size, 2);
    assert_int_equal(c.max_batch_latency_ns, 1 * S);
    queue_config_fini(&c);
    json_decref(j);

    /* smtp without mx_list: MX resolution */
    j = J("{\"protocol\": {\"smtp\": {}}}");
    assert_int_equal(queue_config_from_json(j, &c, err, sizeof(err)), 0);
    assert_int_equal(c.proto, QPROTO_SMTP);
    assert_null(c.mx_list);
    queue_config_fini(&c);
    json_decref(j);
}

struct err_row {
    const char *json;
    const char *needle1, *needle2; /* must appear in the error text (needle2 may be NULL) */
};

static const struct err_row qc_err_rows[] = {
    /* unknown keys, named */
    {"{\"retry_intervall\": \"5m\"}", "retry_intervall", "unknown"},
    {"{\"max_age\": \"1d\", \"egress_pools\": \"x\"}", "egress_pools", "unknown"},
    {"{\"protocol\": {\"smtpx\": {}}}", "smtpx", NULL},
    {"{\"protocol\": {\"smtp\": {\"mx_lists\": []}}}", "mx_lists", NULL},
    {"{\"protocol\": {\"custom_lua\": {\"constructor\": \"c\", \"batchsize\": 2}}}", "batchsize",
     NULL},
    /* bad durations */
    {"{\"max_age\": \"20 lightyears\"}", "max_age", NULL},
    {"{\"retry_interval\": \"soon\"}", "retry_interval", NULL},
    {"{\"max_retry_interval\": \"-5s\"}", "max_retry_interval", NULL},
    {"{\"reap_interval\": true}", "reap_interval", NULL},
    {"{\"refresh_interval\": \"\"}", "refresh_interval", NULL},
    {"{\"retry_interval\": -3}", "retry_interval", NULL},
    /* bad throttles */
    {"{\"max_message_rate\": \"fast\"}", "max_message_rate", NULL},
    {"{\"max_message_rate\": \"100/fortnight\"}", "max_message_rate", NULL},
    {"{\"max_message_rate\": 100}", "max_message_rate", NULL},
    /* bad enums and types */
    {"{\"refresh_strategy\": \"Sometimes\"}", "refresh_strategy", NULL},
    {"{\"strategy\": \"Heap\"}", "strategy", NULL},
    {"{\"egress_pool\": 7}", "egress_pool", NULL},
    {"{\"provider_name\": [\"a\"]}", "provider_name", NULL},
    {"{\"protocol\": \"smtp\"}", "protocol", NULL},
    /* protocol contents */
    {"{\"protocol\": {\"custom_lua\": {}}}", "constructor", NULL},
    {"{\"protocol\": {\"custom_lua\": {\"constructor\": 5}}}", "constructor", NULL},
    {"{\"protocol\": {\"custom_lua\": {\"constructor\": \"c\", \"batch_size\": \"ten\"}}}",
     "batch_size", NULL},
    {"{\"protocol\": {\"custom_lua\": {\"constructor\": \"c\", \"batch_size\": -1}}}",
     "batch_size", NULL},
    {"{\"protocol\": {\"custom_lua\": {\"constructor\": \"c\", \"min_batch_size\": "
     "1000000000}}}",
     "min_batch_size", NULL},
    {"{\"protocol\": {\"custom_lua\": {\"constructor\": \"c\", \"max_batch_latency\": "
     "\"x\"}}}",
     "max_batch_latency", NULL},
    {"{\"protocol\": {\"custom_lua\": {\"constructor\": \"c\", \"batch_size\": -1}}}",
     "batch_size", NULL},
    {"{\"protocol\": {\"custom_lua\": {\"constructor\": \"c\", \"min_batch_size\": 1e9}}}",
     "min_batch_size", NULL},
    {"{\"protocol\": {\"custom_lua\": {\"constructor\": \"c\", \"max_batch_latency\": \"x\"}}}",
     "max_batch_latency", NULL},
    {"{\"protocol\": {\"maildir_path\": 5}}", "maildir_path", NULL},
    {"{\"protocol\": {\"maildir_path\": \"/x\", \"dir_mode\": \"rwx\"}}", "dir_mode", NULL},
    {"{\"protocol\": {\"smtp\": {\"mx_list\": []}}}", "mx_list", NULL},
    {"{\"protocol\": {\"smtp\": {\"mx_list\": [5]}}}", "mx_list", NULL},
    {"{\"protocol\": {\"smtp\": {\"mx_list\": [{\"name\": \"x\"}]}}}", "mx_list", NULL},
    /* not a table at all */
    {"[1, 2]", "make_queue_config", NULL},
    {"\"x\"", "make_queue_config", NULL},
};

static void check_errors(const char *what, const struct err_row *rows, size_t n,
                         int (*parse)(const json_t *, char *, size_t))
{
    for (size_t i = 0; i < n; i++) {
        const struct err_row *r = &rows[i];
        json_t *j = J(r->json);
        char err[512] = "";
        int rc = parse(j, err, sizeof(err));
        json_decref(j);
        bool ok =
            rc == KERR_PARSE && strstr(err, r->needle1) && (!r->needle2 || strstr(err, r->needle2));
        if (!ok) {
            print_error("%s(%s) = %d, \"%s\"; want KERR_PARSE naming '%s'%s%s\n", what, r->json, rc,
                        err, r->needle1, r->needle2 ? " and " : "", r->needle2 ? r->needle2 : "");
            fail();
        }
    }
}

static int parse_queue(const json_t *j, char *err, size_t errlen)
{
    queue_config c;
    int rc = queue_config_from_json(j, &c, err, errlen);
    if (rc == 0)
        queue_config_fini(&c);
    return rc;
}

static void test_queue_config_errors(void **state)
{
    (void)state;
    check_errors("queue_config_from_json", qc_err_rows, ARRAY_LEN(qc_err_rows), parse_queue);
}

/* ---- make_egress_path --------------------------------------------------------------- */

static void test_egress_path_defaults(void **state)
{
    (void)state;
    json_t *j = J("{}");
    egress_path_config c;
    char err[512] = "";
    assert_int_equal(egress_path_from_json(j, &c, err, sizeof(err)), 0);
    assert_int_equal(c.connection_limit, 32);
    assert_int_equal(c.max_ready, 1024);
    assert_int_equal(c.max_deliveries_per_connection, 1024);
    assert_int_equal(c.max_recipients_per_batch, 100);
    assert_int_equal(c.consecutive_connection_failures_before_delay, 100);
    assert_int_equal(c.smtp_port, 25);
    assert_int_equal(c.enable_tls, TLS_OPPORTUNISTIC);
    assert_true(c.enable_pipelining);
    assert_true(c.enable_rset);
    assert_null(c.ehlo_domain);
    assert_null(c.auth_user);
    assert_null(c.auth_password);
    assert_false(c.allow_auth_without_tls);
    assert_false(c.has_max_message_rate);
    assert_false(c.has_max_connection_rate);
    assert_int_equal(c.connect_timeout_ns, 60 * S);
    assert_int_equal(c.banner_timeout_ns, 60 * S);
    assert_int_equal(c.ehlo_timeout_ns, 300 * S);
    assert_int_equal(c.mail_from_timeout_ns, 300 * S);
    assert_int_equal(c.rcpt_to_timeout_ns, 300 * S);
    assert_int_equal(c.data_timeout_ns, 300 * S);
    assert_int_equal(c.data_dot_timeout_ns, 300 * S);
    assert_int_equal(c.rset_timeout_ns, 5 * S);
    assert_int_equal(c.idle_timeout_ns, 5 * S);
    assert_int_equal(c.starttls_timeout_ns, 5 * S);
    assert_int_equal(c.auth_timeout_ns, 60 * S);
    assert_int_equal(c.watchdog_timeout_ns, 0);
    assert_int_equal(c.refresh_interval_ns, 60 * S);
    assert_false(c.refresh_epoch);
    assert_int_equal(c.ip_lookup_strategy, 2); /* Ipv4AndIpv6 */
    /* prohibited_hosts = {"127.0.0.0/8", "::1", "0.0.0.0", "::"} */
    assert_int_equal(c.prohibited_hosts.n, 4);
    assert_true(cidr_list_match_str(&c.prohibited_hosts, "127.0.0.1"));
    assert_true(cidr_list_match_str(&c.prohibited_hosts, "127.255.1.2"));
    assert_true(cidr_list_match_str(&c.prohibited_hosts, "::1"));
    assert_true(cidr_list_match_str(&c.prohibited_hosts, "0.0.0.0"));
    assert_true(cidr_list_match_str(&c.prohibited_hosts, "::"));
    assert_false(cidr_list_match_str(&c.prohibited_hosts, "10.0.0.1"));
    assert_int_equal(c.skip_hosts.n, 0);
    egress_path_fini(&c);
    json_decref(j);
}

static void test_egress_path_every_key_type(void **state)
{
    (void)state;
    json_t *j = J("{\"connection_limit\": \"local:5\", \"max_ready\": 10,"
                  " \"max_deliveries_per_connection\": 3, \"max_recipients_per_batch\": 7,"
                  " \"consecutive_connection_failures_before_delay\": 9, \"smtp_port\": 2525,"
                  " \"enable_tls\": \"Required\", \"enable_mta_sts\": false,"
                  " \"enable_dane\": true, \"enable_pipelining\": false, \"enable_rset\": false,"
                  " \"tls_prefer_openssl\": true, \"openssl_cipher_list\": \"HIGH\","
                  " \"rustls_cipher_suites\": [\"TLS13_AES_256_GCM_SHA384\"],"
                  " \"connect_timeout\": \"10s\", \"banner_timeout\": \"11s\","
                  " \"ehlo_timeout\": \"12s\", \"mail_from_timeout\": \"13s\","
                  " \"rcpt_to_timeout\": \"14s\", \"data_timeout\": \"15s\","
                  " \"data_dot_timeout\": \"16s\", \"rset_timeout\": \"17s\","
                  " \"idle_timeout\": \"18s\", \"starttls_timeout\": \"19s\","
                  " \"auth_timeout\": \"20s\", \"system_shutdown_timeout\": \"21s\","
                  " \"smtp_auth_plain_username\": \"u\","
                  " \"smtp_auth_plain_password\": {\"key_data\": \"p\"},"
                  " \"allow_smtp_auth_plain_without_tls\": true,"
                  " \"max_message_rate\": \"10/s\", \"max_connection_rate\": \"5/min\","
                  " \"source_selection_rate\": \"1,000/h\","
                  " \"additional_connection_limits\": {\"k\": 4},"
                  " \"additional_message_rate_throttles\": {\"k\": \"1/s\"},"
                  " \"prohibited_hosts\": [\"10.0.0.0/8\"], \"skip_hosts\": [\"192.0.2.1\"],"
                  " \"ip_lookup_strategy\": \"Ipv4Only\", \"ehlo_domain\": \"ehlo.example\","
                  " \"aggressive_connection_opening\": true, \"refresh_interval\": \"2m\","
                  " \"refresh_strategy\": \"Epoch\", \"dispatcher_wakeup_strategy\": \"Relaxed\","
                  " \"maintainer_wakeup_strategy\": \"Aggressive\", \"provider_name\": \"p\","
                  " \"remember_broken_tls\": \"1h\","
                  " \"opportunistic_tls_reconnect_on_failed_handshake\": true,"
                  " \"use_lmtp\": false, \"reconnect_strategy\": \"TerminateSession\","
                  " \"readyq_pool_name\": \"rq\", \"low_memory_reduction_policy\": \"ShrinkData\","
                  " \"no_memory_reduction_policy\": \"NoShrink\","
                  " \"try_next_host_on_transport_error\": true, \"ignore_8bit_checks\": true,"
                  " \"dispatcher_progress_watchdog_timeout\": \"90s\"}");
    egress_path_config c;
    char err[512] = "";
    int rc = egress_path_from_json(j, &c, err, sizeof(err));
    if (rc)
        print_error("%s\n", err);
    assert_int_equal(rc, 0);
    assert_int_equal(c.connection_limit, 5);
    assert_int_equal(c.max_ready, 10);
    assert_int_equal(c.max_deliveries_per_connection, 3);
    assert_int_equal(c.max_recipients_per_batch, 7);
    assert_int_equal(c.consecutive_connection_failures_before_delay, 9);
    assert_int_equal(c.smtp_port, 2525);
    assert_int_equal(c.enable_tls, TLS_REQUIRED);
    assert_false(c.enable_pipelining);
    assert_false(c.enable_rset);
    assert_int_equal(c.connect_timeout_ns, 10 * S);
    assert_int_equal(c.banner_timeout_ns, 11 * S);
    assert_int_equal(c.ehlo_timeout_ns, 12 * S);
    assert_int_equal(c.mail_from_timeout_ns, 13 * S);
    assert_int_equal(c.rcpt_to_timeout_ns, 14 * S);
    assert_int_equal(c.data_timeout_ns, 15 * S);
    assert_int_equal(c.data_dot_timeout_ns, 16 * S);
    assert_int_equal(c.rset_timeout_ns, 17 * S);
    assert_int_equal(c.idle_timeout_ns, 18 * S);
    assert_int_equal(c.starttls_timeout_ns, 19 * S);
    assert_int_equal(c.auth_timeout_ns, 20 * S);
    assert_string_equal(c.auth_user, "u");
    assert_string_equal(c.auth_password, "p");
    assert_true(c.allow_auth_without_tls);
    assert_true(c.has_max_message_rate);
    assert_int_equal(c.max_message_rate.limit, 10);
    assert_int_equal(c.max_message_rate.period_ns, 1 * S);
    assert_true(c.has_max_connection_rate);
    assert_int_equal(c.max_connection_rate.limit, 5);
    assert_int_equal(c.max_connection_rate.period_ns, 60 * S);
    /* a given list replaces the default prohibited_hosts */
    assert_int_equal(c.prohibited_hosts.n, 1);
    assert_true(cidr_list_match_str(&c.prohibited_hosts, "10.1.2.3"));
    assert_false(cidr_list_match_str(&c.prohibited_hosts, "127.0.0.1"));
    assert_int_equal(c.skip_hosts.n, 1);
    assert_true(cidr_list_match_str(&c.skip_hosts, "192.0.2.1"));
    assert_int_equal(c.ip_lookup_strategy, 0); /* Ipv4Only */
    assert_string_equal(c.ehlo_domain, "ehlo.example");
    assert_int_equal(c.refresh_interval_ns, 120 * S);
    assert_true(c.refresh_epoch);
    assert_string_equal(c.provider_name, "p");
    assert_int_equal(c.watchdog_timeout_ns, 90 * S);
    egress_path_fini(&c);
    json_decref(j);

    /* every enable_tls value, and the plain-integer connection limit */
    static const char *const tls[] = {"Opportunistic", "OpportunisticInsecure", "Required",
                                      "RequiredInsecure", "Disabled"};
    static const tls_mode want[] = {TLS_OPPORTUNISTIC, TLS_OPPORTUNISTIC_INSECURE, TLS_REQUIRED,
                                    TLS_REQUIRED_INSECURE, TLS_DISABLED};
    for (size_t i = 0; i < ARRAY_LEN(tls); i++) {
        json_t *t = json_pack("{sssi}", "enable_tls", tls[i], "connection_limit", 3);
        assert_int_equal(egress_path_from_json(t, &c, err, sizeof(err)), 0);
        assert_int_equal(c.enable_tls, want[i]);
        assert_int_equal(c.connection_limit, 3);
        egress_path_fini(&c);
        json_decref(t);
    }
    /* a plain string password */
    json_t *p = J("{\"smtp_auth_plain_password\": \"secret\"}");
    assert_int_equal(egress_path_from_json(p, &c, err, sizeof(err)), 0);
    assert_string_equal(c.auth_password, "secret");
    egress_path_fini(&c);
    json_decref(p);
}

static const struct err_row path_err_rows[] = {
    {"{\"connection_limits\": 5}", "connection_limits", "unknown"},
    {"{\"enable_tls\": \"Opportunistic\", \"tls\": true}", "tls", "unknown"},
    {"{\"enable_tls\": \"Sometimes\"}", "enable_tls", NULL},
    {"{\"enable_tls\": true}", "enable_tls", NULL},
    {"{\"connect_timeout\": \"soon\"}", "connect_timeout", NULL},
    {"{\"idle_timeout\": \"5 parsecs\"}", "idle_timeout", NULL},
    {"{\"dispatcher_progress_watchdog_timeout\": \"x\"}", "dispatcher_progress_watchdog_timeout",
     NULL},
    {"{\"max_message_rate\": \"lots\"}", "max_message_rate", NULL},
    {"{\"max_connection_rate\": \"5/fortnight\"}", "max_connection_rate", NULL},
    {"{\"source_selection_rate\": \"/s\"}", "source_selection_rate", NULL},
    {"{\"connection_limit\": \"global:5\"}", "connection_limit", NULL},
    {"{\"connection_limit\": -1}", "connection_limit", NULL},
    {"{\"connection_limit\": \"local:0\"}", "connection_limit", NULL},
    {"{\"max_ready\": \"10\"}", "max_ready", NULL},
    {"{\"max_ready\": -5}", "max_ready", NULL},
    {"{\"smtp_port\": 2.5}", "smtp_port", NULL},
    {"{\"enable_pipelining\": \"yes\"}", "enable_pipelining", NULL},
    {"{\"prohibited_hosts\": [\"not-an-ip\"]}", "prohibited_hosts", NULL},
    {"{\"skip_hosts\": [5]}", "skip_hosts", NULL},
    {"{\"ip_lookup_strategy\": \"Ipv5\"}", "ip_lookup_strategy", NULL},
    {"{\"reconnect_strategy\": \"Never\"}", "reconnect_strategy", NULL},
    {"{\"ehlo_domain\": 5}", "ehlo_domain", NULL},
    {"[]", "make_egress_path", NULL},
};

static int parse_path(const json_t *j, char *err, size_t errlen)
{
    egress_path_config c;
    int rc = egress_path_from_json(j, &c, err, errlen);
    if (rc == 0)
        egress_path_fini(&c);
    return rc;
}

static void test_egress_path_errors(void **state)
{
    (void)state;
    check_errors("egress_path_from_json", path_err_rows, ARRAY_LEN(path_err_rows), parse_path);
}

/* ---- make_egress_source ------------------------------------------------------------- */

static void test_egress_source(void **state)
{
    (void)state;
    egress_source s;
    char err[512] = "";
    json_t *j = J("{\"name\": \"ip-1\"}");
    assert_int_equal(egress_source_from_json(j, &s, err, sizeof(err)), 0);
    assert_string_equal(s.name, "ip-1");
    assert_null(s.source_address);
    assert_null(s.ehlo_domain);
    assert_int_equal(s.remote_port, 0);
    egress_source_fini(&s);
    json_decref(j);

    j = J("{\"name\": \"ip-2\", \"source_address\": \"10.0.0.2\","
          " \"ehlo_domain\": \"mta2.example.com\", \"remote_port\": 2525, \"ttl\": \"5m\","
          " \"suspend_when_unplumbed\": {\"trigger\": \"Immediate\", \"duration\": \"1m\"}}");
    assert_int_equal(egress_source_from_json(j, &s, err, sizeof(err)), 0);
    assert_string_equal(s.name, "ip-2");
    assert_string_equal(s.source_address, "10.0.0.2");
    assert_string_equal(s.ehlo_domain, "mta2.example.com");
    assert_int_equal(s.remote_port, 2525);
    egress_source_fini(&s);
    json_decref(j);

    j = J("{\"name\": \"v6\", \"source_address\": \"2001:db8::1\"}");
    assert_int_equal(egress_source_from_json(j, &s, err, sizeof(err)), 0);
    assert_string_equal(s.source_address, "2001:db8::1");
    egress_source_fini(&s);
    json_decref(j);
}

static const struct err_row source_err_rows[] = {
    {"{\"name\": \"a\", \"source_addr\": \"10.0.0.1\"}", "source_addr", "unknown"},
    {"{\"name\": \"a\", \"helo_domain\": \"x\"}", "helo_domain", "unknown"},
    {"{\"source_address\": \"10.0.0.1\"}", "name", NULL},
    {"{\"name\": 5}", "name", NULL},
    {"{\"name\": \"a\", \"source_address\": \"not-an-ip\"}", "source_address", NULL},
    {"{\"name\": \"a\", \"remote_port\": \"25\"}", "remote_port", NULL},
    {"{\"name\": \"a\", \"ttl\": \"forever\"}", "ttl", NULL},
    {"[]", "make_egress_source", NULL},
};

static int parse_source(const json_t *j, char *err, size_t errlen)
{
    egress_source s;
    int rc = egress_source_from_json(j, &s, err, errlen);
    if (rc == 0)
        egress_source_fini(&s);
    return rc;
}

static void test_egress_source_errors(void **state)
{
    (void)state;
    check_errors("egress_source_from_json", source_err_rows, ARRAY_LEN(source_err_rows),
                 parse_source);
}

/* ---- make_egress_pool ------------------------------------------------------------------ */

static void test_egress_pool(void **state)
{
    (void)state;
    egress_pool p;
    char err[512] = "";
    json_t *j = J("{\"name\": \"pool\", \"entries\": [{\"name\": \"one\", \"weight\": 5},"
                  " {\"name\": \"two\"}, {\"name\": \"zero\", \"weight\": 0}], \"ttl\": \"1m\"}");
    assert_int_equal(egress_pool_from_json(j, &p, err, sizeof(err)), 0);
    assert_string_equal(p.name, "pool");
    assert_int_equal(p.n, 3);
    assert_string_equal(p.entries[0].name, "one");
    assert_int_equal(p.entries[0].weight, 5);
    assert_string_equal(p.entries[1].name, "two");
    assert_int_equal(p.entries[1].weight, 1); /* default weight */
    assert_string_equal(p.entries[2].name, "zero");
    assert_int_equal(p.entries[2].weight, 0);
    egress_pool_fini(&p);
    json_decref(j);

    /* a pool without entries */
    j = J("{\"name\": \"empty\"}");
    assert_int_equal(egress_pool_from_json(j, &p, err, sizeof(err)), 0);
    assert_int_equal(p.n, 0);
    egress_pool_fini(&p);
    json_decref(j);
}

static const struct err_row pool_err_rows[] = {
    {"{\"name\": \"p\", \"entry\": []}", "entry", "unknown"},
    {"{\"name\": \"p\", \"entries\": [{\"name\": \"a\", \"wieght\": 2}]}", "wieght", "unknown"},
    {"{\"entries\": []}", "name", NULL},
    {"{\"name\": \"p\", \"entries\": [{\"weight\": 2}]}", "name", NULL},
    {"{\"name\": \"p\", \"entries\": [{\"name\": \"a\", \"weight\": -1}]}", "weight", NULL},
    {"{\"name\": \"p\", \"entries\": [{\"name\": \"a\", \"weight\": \"2\"}]}", "weight", NULL},
    {"{\"name\": \"p\", \"ttl\": \"whenever\"}", "ttl", NULL},
    {"[]", "make_egress_pool", NULL},
};

static int parse_pool(const json_t *j, char *err, size_t errlen)
{
    egress_pool p;
    int rc = egress_pool_from_json(j, &p, err, errlen);
    if (rc == 0)
        egress_pool_fini(&p);
    return rc;
}

static void test_egress_pool_errors(void **state)
{
    (void)state;
    check_errors("egress_pool_from_json", pool_err_rows, ARRAY_LEN(pool_err_rows), parse_pool);
}

/* ---- weighted round robin ---------------------------------------------------------------- */

struct wrr_row {
    const char *what;
    const char *pool_json;
    const char *want; /* space-separated names of the first picks, or "-" for none */
};

/* Sequences produced by KumoMTA's EgressPoolSourceSelector::next_impl (LVS
 * interleaved WRR with gcd steps; weight-0 entries are dropped) from a
 * fresh selector. */
static const struct wrr_row wrr_rows[] = {
    {"kumomta round_robin pool (5, 2, 3)",
     "[{\"name\": \"one\", \"weight\": 5}, {\"name\": \"two\", \"weight\": 2},"
     " {\"name\": \"three\", \"weight\": 3}]",
     "two three one one one three one two three one two three one one one three one two three "
     "one"},
    {"equal weights", "[{\"name\": \"a\"}, {\"name\": \"b\"}, {\"name\": \"c\"}]",
     "b c a b c a b c a b c a"},
    {"weight 0 in the middle is skipped",
     "[{\"name\": \"a\"}, {\"name\": \"z\", \"weight\": 0}, {\"name\": \"b\"}]", "b a b a b a b a"},
    {"several weight-0 entries are skipped",
     "[{\"name\": \"a\", \"weight\": 2}, {\"name\": \"b\", \"weight\": 0},"
     " {\"name\": \"c\", \"weight\": 0}, {\"name\": \"d\", \"weight\": 1}]",
     "d a a d a a d a a"},
    {"gcd step of 2", "[{\"name\": \"a\", \"weight\": 4}, {\"name\": \"b\", \"weight\": 2}]",
     "b a a b a a b a a"},
    {"one source", "[{\"name\": \"only\", \"weight\": 3}]", "only only only only"},
    {"one usable source beside a weight-0 one",
     "[{\"name\": \"a\", \"weight\": 2}, {\"name\": \"b\", \"weight\": 0}]", "a a a a a"},
    {"all weights 0", "[{\"name\": \"a\", \"weight\": 0}, {\"name\": \"b\", \"weight\": 0}]",
     "- - -"},
    {"no entries", "[]", "- -"},
};

static void run_wrr(const char *pool_json, int picks, char *out, size_t outlen)
{
    json_t *entries = J(pool_json);
    json_t *j = json_pack("{sssO}", "name", "p", "entries", entries);
    egress_pool p;
    char err[512] = "";
    assert_int_equal(egress_pool_from_json(j, &p, err, sizeof(err)), 0);
    wrr_state st = {0, 0};
    size_t o = 0;
    out[0] = 0;
    for (int k = 0; k < picks; k++) {
        int i = egress_pool_next(&p, &st);
        const char *name = i < 0 ? "-" : p.entries[i].name;
        if (i >= 0)
            assert_true((size_t)i < p.n);
        o += (size_t)snprintf(out + o, outlen - o, "%s%s", k ? " " : "", name);
    }
    egress_pool_fini(&p);
    json_decref(j);
    json_decref(entries);
}

static int count_words(const char *s)
{
    int n = 0;
    for (const char *p = s; *p;) {
        while (*p == ' ')
            p++;
        if (!*p)
            break;
        n++;
        while (*p && *p != ' ')
            p++;
    }
    return n;
}

static void test_pool_wrr_sequences(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(wrr_rows); i++) {
        const struct wrr_row *r = &wrr_rows[i];
        char got[1024];
        run_wrr(r->pool_json, count_words(r->want), got, sizeof(got));
        if (strcmp(got, r->want) != 0) {
            print_error("%s:\n  got  %s\n  want %s\n", r->what, got, r->want);
            fail();
        }
    }
}

/* KumoMTA's own test: 100 picks from (5, 2, 3) are exactly 50, 20, 30. */
static void test_pool_wrr_proportions(void **state)
{
    (void)state;
    json_t *j = J("{\"name\": \"pool\", \"entries\": [{\"name\": \"one\", \"weight\": 5},"
                  " {\"name\": \"two\", \"weight\": 2}, {\"name\": \"z\", \"weight\": 0},"
                  " {\"name\": \"three\", \"weight\": 3}]}");
    egress_pool p;
    char err[512] = "";
    assert_int_equal(egress_pool_from_json(j, &p, err, sizeof(err)), 0);
    wrr_state st = {0, 0};
    int counts[4] = {0};
    for (int k = 0; k < 100; k++) {
        int i = egress_pool_next(&p, &st);
        assert_true(i >= 0 && i < 4);
        counts[i]++;
    }
    assert_int_equal(counts[0], 50);
    assert_int_equal(counts[1], 20);
    assert_int_equal(counts[2], 0);
    assert_int_equal(counts[3], 30);
    /* and again over a long run: the ratio holds in every full cycle */
    for (int k = 0; k < 1000; k++)
        counts[egress_pool_next(&p, &st)]++;
    assert_int_equal(counts[0], 550);
    assert_int_equal(counts[1], 220);
    assert_int_equal(counts[2], 0);
    assert_int_equal(counts[3], 330);
    egress_pool_fini(&p);
    json_decref(j);
}

/* KumoMTA drops weight-0 entries before indexing, so with a weight-0 entry
 * first the fresh selector starts at the second *usable* source. */
static void test_pool_wrr_leading_zero_weight(void **state)
{
    (void)state;
    char got[256];
    run_wrr("[{\"name\": \"z\", \"weight\": 0}, {\"name\": \"a\", \"weight\": 2},"
            " {\"name\": \"b\", \"weight\": 1}]",
            9, got, sizeof(got));
    /* never the weight-0 entry, and 2:1 in every cycle of three */
    assert_null(strstr(got, "z"));
    /* the phase KumoMTA's LVS round robin gives */
    assert_string_equal(got, "b a a b a a b a a");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_queue_config_defaults),
        cmocka_unit_test(test_queue_config_durations),
        cmocka_unit_test(test_queue_config_every_key),
        cmocka_unit_test(test_queue_config_protocols),
        cmocka_unit_test(test_queue_config_errors),
        cmocka_unit_test(test_egress_path_defaults),
        cmocka_unit_test(test_egress_path_every_key_type),
        cmocka_unit_test(test_egress_path_errors),
        cmocka_unit_test(test_egress_source),
        cmocka_unit_test(test_egress_source_errors),
        cmocka_unit_test(test_egress_pool),
        cmocka_unit_test(test_egress_pool_errors),
        cmocka_unit_test(test_pool_wrr_sequences),
        cmocka_unit_test(test_pool_wrr_proportions),
        cmocka_unit_test(test_pool_wrr_leading_zero_weight),
    };
    return cmocka_run_group_tests_name("queue/config", tests, NULL, NULL);
}
