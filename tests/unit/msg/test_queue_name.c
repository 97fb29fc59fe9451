/* Unit tests for src/msg/queue_name.c: building, parsing and round-tripping
 * KumoMTA queue names (spec §1.4), and the queue of a message. Reference:
 * KumoMTA crates/message/src/queue_name.rs (QueueNameComponents::parse and
 * ::format with their snapshot tests) and Message::get_queue_name in
 * crates/message/src/message.rs. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/kerr.h"
#include "msg/message.h"
#include "msg/queue_name.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* See test_config.c: a strict expected failure for a known difference. */
#define KNOWN_BUG(ok, why)                                                                         \
    do {                                                                                           \
        if (ok) {                                                                                  \
            print_error("known bug is fixed, remove the KNOWN_BUG marker: %s\n", why);             \
            fail();                                                                                \
        }                                                                                          \
        print_message("[  XFAIL   ] BUG: %s\n", why);                                              \
        skip();                                                                                    \
    } while (0)

static bool str_eq_null(const char *a, const char *b)
{
    if (!a || !b)
        return a == b;
    return strcmp(a, b) == 0;
}

#define N(s) ((s) ? (s) : "(null)")

/* ---- build ------------------------------------------------------------------------ */

struct build_row {
    const char *campaign, *tenant, *domain, *routing_domain;
    const char *want;
};

static const struct build_row build_rows[] = {
    {"camp", "tenant", "example.com", "routing.example", "camp:tenant@example.com!routing.example"},
    {"camp", "tenant", "example.com", NULL, "camp:tenant@example.com"},
    {NULL, "tenant", "example.com", NULL, "tenant@example.com"},
    {NULL, "tenant", "example.com", "r.example", "tenant@example.com!r.example"},
    {"camp", NULL, "example.com", NULL, "camp:@example.com"},
    {"camp", NULL, "example.com", "r.example", "camp:@example.com!r.example"},
    {NULL, NULL, "example.com", NULL, "example.com"},
    {NULL, NULL, "example.com", "r.example", "example.com!r.example"},
    /* routing domains that are IP literals, with and without a port */
    {NULL, NULL, "example.com", "[10.0.0.1]", "example.com![10.0.0.1]"},
    {NULL, NULL, "example.com", "[10.0.0.1]:2025", "example.com![10.0.0.1]:2025"},
    {NULL, NULL, "example.com", "[IPv6:::1]", "example.com![IPv6:::1]"},
    {"c", "t", "example.com", "routing.com:2025", "c:t@example.com!routing.com:2025"},
    /* the domain is lower-cased, the other parts are kept as they are */
    {"Camp", "Tenant", "ExAmple.COM", "Routing.Example", "Camp:Tenant@example.com!Routing.Example"},
    /* the domain may itself be an IP literal */
    {NULL, NULL, "[10.0.0.1]", NULL, "[10.0.0.1]"},
};

static void test_build_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(build_rows); i++) {
        const struct build_row *r = &build_rows[i];
        char *got = queue_name_build(r->campaign, r->tenant, r->domain, r->routing_domain);
        if (strcmp(got, r->want) != 0) {
            print_error("build(%s, %s, %s, %s) = \"%s\"; want \"%s\"\n", N(r->campaign),
                        N(r->tenant), r->domain, N(r->routing_domain), got, r->want);
            free(got);
            fail();
        }
        free(got);
    }
}

/* ---- parse ------------------------------------------------------------------------ */

struct parse_row {
    const char *name;
    const char *campaign, *tenant, *domain, *routing_domain;
};

/* KumoMTA's snapshot tests, plus the splitting rules at their edges. An
 * empty tenant ("campaign:@domain") is written as "" here: see
 * test_parse_empty_tenant for how kumod represents it. */
static const struct parse_row parse_rows[] = {
    {"foo.com", NULL, NULL, "foo.com", NULL},
    {"tenant@foo.com", NULL, "tenant", "foo.com", NULL},
    {"campaign:tenant@foo.com", "campaign", "tenant", "foo.com", NULL},
    {"campaign:tenant@foo.com!routing.com", "campaign", "tenant", "foo.com", "routing.com"},
    /* test_routing_domain_with_port */
    {"foo.com:2025", NULL, NULL, "foo.com:2025", NULL},
    {"foo.com!routing.com:2025", NULL, NULL, "foo.com", "routing.com:2025"},
    {"tenant@foo.com!routing.com:2025", NULL, "tenant", "foo.com", "routing.com:2025"},
    {"campaign:tenant@foo.com!routing.com:2025", "campaign", "tenant", "foo.com",
     "routing.com:2025"},
    /* IP-literal routing domains (the requeue_message smart-host example) */
    {"example.com![10.0.0.1]", NULL, NULL, "example.com", "[10.0.0.1]"},
    {"t@example.com![10.0.0.1]:2025", NULL, "t", "example.com", "[10.0.0.1]:2025"},
    {"[10.0.0.1]", NULL, NULL, "[10.0.0.1]", NULL},
    /* the first '@' splits, the first ':' of the prefix, the first '!' of the domain */
    {"a:b:c@d.com", "a", "b:c", "d.com", NULL},
    {"t@d.com@e.com", NULL, "t", "d.com@e.com", NULL},
    {"t@d.com!r1!r2", NULL, "t", "d.com", "r1!r2"},
    {"c!x:t@d.com", "c!x", "t", "d.com", NULL},
    /* a ':' after the '@' belongs to the domain */
    {"t@d.com:25", NULL, "t", "d.com:25", NULL},
    /* special queues are plain names */
    {"null", NULL, NULL, "null", NULL},
    {"deferred_smtp_inject.kumomta.internal", NULL, NULL, "deferred_smtp_inject.kumomta.internal",
     NULL},
};

static void test_parse_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(parse_rows); i++) {
        const struct parse_row *r = &parse_rows[i];
        queue_name_parts p;
        int rc = queue_name_parse(r->name, &p);
        bool ok = rc == 0 && str_eq_null(p.campaign, r->campaign) &&
                  str_eq_null(p.tenant, r->tenant) && str_eq_null(p.domain, r->domain) &&
                  str_eq_null(p.routing_domain, r->routing_domain);
        if (!ok) {
            print_error("parse(\"%s\") = %d {%s, %s, %s, %s}; want {%s, %s, %s, %s}\n", r->name, rc,
                        N(p.campaign), N(p.tenant), N(p.domain), N(p.routing_domain),
                        N(r->campaign), N(r->tenant), r->domain, N(r->routing_domain));
            queue_name_parts_fini(&p);
            fail();
        }
        queue_name_parts_fini(&p);
    }
}

/* KumoMTA: "campaign:@foo.com" parses to tenant Some("") and "@foo.com" to
 * tenant Some(""), so get_queue_config sees tenant == "" rather than nil. */
static void test_parse_empty_tenant(void **state)
{
    (void)state;
    queue_name_parts p, q;
    assert_int_equal(queue_name_parse("campaign:@foo.com", &p), 0);
    assert_string_equal(p.campaign, "campaign");
    assert_string_equal(p.domain, "foo.com");
    assert_null(p.routing_domain);
    assert_int_equal(queue_name_parse("campaign:@foo.com!routing.com:2025", &q), 0);
    assert_string_equal(q.campaign, "campaign");
    assert_string_equal(q.domain, "foo.com");
    assert_string_equal(q.routing_domain, "routing.com:2025");
    bool ok = str_eq_null(p.tenant, "") && str_eq_null(q.tenant, "");
    queue_name_parts_fini(&p);
    queue_name_parts_fini(&q);
    /* KumoMTA's QueueNameComponents::parse gives tenant Some(""): get_queue_config
     * receives tenant '' rather than nil */
    assert_true(ok);
}

static void test_parse_rejects_empty(void **state)
{
    (void)state;
    queue_name_parts p;
    assert_int_equal(queue_name_parse("", &p), KERR_PARSE);
    queue_name_parts_fini(&p);
}

/* ---- round trip --------------------------------------------------------------------- */

static const char *const roundtrip_names[] = {
    "foo.com",
    "tenant@foo.com",
    "campaign:tenant@foo.com",
    "campaign:@foo.com",
    "campaign:tenant@foo.com!routing.com",
    "campaign:@foo.com!routing.com",
    "tenant@foo.com!routing.com",
    "foo.com!routing.com",
    "foo.com![10.0.0.1]",
    "foo.com![10.0.0.1]:2025",
    "camp:ten@foo.com![192.0.2.7]:587",
    "[10.0.0.1]",
    "a:b:c@d.com!r1!r2",
    "null",
};

static void test_round_trip(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(roundtrip_names); i++) {
        const char *name = roundtrip_names[i];
        queue_name_parts p;
        assert_int_equal(queue_name_parse(name, &p), 0);
        char *again = queue_name_build(p.campaign, p.tenant, p.domain, p.routing_domain);
        bool same = strcmp(again, name) == 0;
        if (!same)
            print_error("parse+build(\"%s\") = \"%s\"\n", name, again);
        free(again);
        queue_name_parts_fini(&p);
        assert_true(same);
    }
    /* and build -> parse -> build for every combination of present parts */
    static const char *const camps[] = {NULL, "c"};
    static const char *const tenants[] = {NULL, "t"};
    static const char *const rds[] = {NULL, "r.example", "[10.0.0.1]", "[10.0.0.1]:25"};
    for (size_t a = 0; a < 2; a++)
        for (size_t b = 0; b < 2; b++)
            for (size_t c = 0; c < ARRAY_LEN(rds); c++) {
                char *name = queue_name_build(camps[a], tenants[b], "d.example", rds[c]);
                queue_name_parts p;
                assert_int_equal(queue_name_parse(name, &p), 0);
                assert_true(str_eq_null(p.campaign, camps[a]));
                if (tenants[b])
                    assert_string_equal(p.tenant, tenants[b]);
                assert_string_equal(p.domain, "d.example");
                assert_true(str_eq_null(p.routing_domain, rds[c]));
                char *again = queue_name_build(p.campaign, p.tenant, p.domain, p.routing_domain);
                assert_string_equal(again, name);
                free(again);
                free(name);
                queue_name_parts_fini(&p);
            }
}

/* ---- queue_name_of_message --------------------------------------------------------------- */

struct msg_row {
    const char *rcpt;      /* first recipient */
    const char *meta_json; /* meta object */
    const char *want;
};

static const struct msg_row msg_rows[] = {
    {"user@Example.COM", "{}", "example.com"},
    {"user@example.com", "{\"tenant\": \"t1\"}", "t1@example.com"},
    {"user@example.com", "{\"campaign\": \"c1\"}", "c1:@example.com"},
    {"user@example.com", "{\"campaign\": \"c1\", \"tenant\": \"t1\"}", "c1:t1@example.com"},
    {"user@example.com", "{\"routing_domain\": \"[10.0.0.1]\"}", "example.com![10.0.0.1]"},
    {"user@example.com",
     "{\"campaign\": \"c1\", \"tenant\": \"t1\", \"routing_domain\": \"relay.example\"}",
     "c1:t1@example.com!relay.example"},
    {"user@example.com", "{\"routing_domain\": \"[10.0.0.1]:2025\", \"tenant\": \"T\"}",
     "T@example.com![10.0.0.1]:2025"},
    /* meta queue overrides everything else, verbatim */
    {"user@example.com",
     "{\"queue\": \"[10.0.0.1]\", \"campaign\": \"c1\", \"tenant\": \"t1\","
     " \"routing_domain\": \"r\"}",
     "[10.0.0.1]"},
    {"user@example.com", "{\"queue\": \"SmartHost.Test\"}", "SmartHost.Test"},
    {"user@example.com", "{\"queue\": \"null\"}", "null"},
    {"user@example.com", "{\"queue\": \"c:t@other.example!r\"}", "c:t@other.example!r"},
    /* unrelated meta does not count */
    {"user@example.com", "{\"received_from\": \"127.0.0.1:1\", \"x\": 5}", "example.com"},
    /* the domain is the part after the last '@' of the recipient */
    {"\"odd@local\"@Quoted.Example", "{}", "quoted.example"},
};

static void test_queue_name_of_message(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(msg_rows); i++) {
        const struct msg_row *r = &msg_rows[i];
        const char *rcpts[] = {r->rcpt, "second@other.example"};
        message *m = message_new(NULL, "sender@s.example", rcpts, 2);
        json_error_t e;
        json_t *meta = json_loads(r->meta_json, 0, &e);
        assert_non_null(meta);
        json_object_update(m->meta, meta);
        json_decref(meta);
        char *got = queue_name_of_message(m);
        bool same = strcmp(got, r->want) == 0;
        if (!same)
            print_error("queue of rcpt %s meta %s = \"%s\"; want \"%s\"\n", r->rcpt, r->meta_json,
                        got, r->want);
        free(got);
        message_unref(m);
        assert_true(same);
    }
}

/* Only the first recipient decides the domain. */
static void test_queue_name_first_recipient(void **state)
{
    (void)state;
    const char *rcpts[] = {"a@First.example", "b@second.example", "c@third.example"};
    message *m = message_new(NULL, "s@s.example", rcpts, 3);
    char *q = queue_name_of_message(m);
    assert_string_equal(q, "first.example");
    free(q);
    const char *swapped[] = {"b@second.example", "a@First.example"};
    assert_int_equal(message_set_recipients(m, swapped, 2), 0);
    q = queue_name_of_message(m);
    assert_string_equal(q, "second.example");
    free(q);
    /* changing meta changes the queue */
    json_object_set_new(m->meta, "tenant", json_string("t"));
    q = queue_name_of_message(m);
    assert_string_equal(q, "t@second.example");
    free(q);
    json_object_set_new(m->meta, "queue", json_string("elsewhere"));
    q = queue_name_of_message(m);
    assert_string_equal(q, "elsewhere");
    free(q);
    json_object_del(m->meta, "queue");
    q = queue_name_of_message(m);
    assert_string_equal(q, "t@second.example");
    free(q);
    message_unref(m);
}

/* Issue 25, defect 6: a component taken from meta cannot change the domain
 * (or any other component) of the name. */
static void test_components_cannot_inject(void **state)
{
    (void)state;
    static const struct {
        const char *campaign, *tenant, *domain, *routing;
    } rows[] = {
        {NULL, "x@evil.test!evil.test", "local.test", NULL},
        {"c:d", "t@u", "local.test", NULL},
        {NULL, "a:b", "local.test", NULL},
        {"camp", "50%off", "local.test", "r@x!y"},
        {"@", "!", "local.test", "@"},
        {NULL, "%41", "local.test", NULL},
        {NULL, "a%00b", "local.test", NULL}, /* found by fuzz_queue_name */
    };
    for (size_t i = 0; i < ARRAY_LEN(rows); i++) {
        char *name = queue_name_build(rows[i].campaign, rows[i].tenant, rows[i].domain,
                                      rows[i].routing);
        queue_name_parts p;
        assert_int_equal(queue_name_parse(name, &p), 0);
        bool ok = str_eq_null(p.domain, rows[i].domain) &&
                  str_eq_null(p.tenant, rows[i].tenant) &&
                  str_eq_null(p.campaign, rows[i].campaign) &&
                  str_eq_null(p.routing_domain, rows[i].routing);
        if (!ok)
            print_error("row %zu: %s -> campaign=%s tenant=%s domain=%s routing=%s\n", i, name,
                        N(p.campaign), N(p.tenant), N(p.domain), N(p.routing_domain));
        queue_name_parts_fini(&p);
        free(name);
        assert_true(ok);
    }
    /* only what would be misread is escaped: names KumoMTA writes stay verbatim */
    char *name = queue_name_build(NULL, "x@evil.test!evil.test", "Local.Test", NULL);
    assert_string_equal(name, "x%40evil.test!evil.test@local.test");
    free(name);
    /* the tenant of a message (meta) cannot route it elsewhere */
    const char *rcpt[] = {"u@local.test"};
    message *m = message_new(NULL, "s@example.com", rcpt, 1);
    json_object_set_new(m->meta, "tenant", json_string("x@evil.test!evil.test"));
    char *q = queue_name_of_message(m);
    queue_name_parts p;
    assert_int_equal(queue_name_parse(q, &p), 0);
    bool dom_ok = strcmp(p.domain, "local.test") == 0 && p.routing_domain == NULL;
    queue_name_parts_fini(&p);
    free(q);
    message_unref(m);
    assert_true(dom_ok);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_build_table),
        cmocka_unit_test(test_parse_table),
        cmocka_unit_test(test_parse_empty_tenant),
        cmocka_unit_test(test_parse_rejects_empty),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_queue_name_of_message),
        cmocka_unit_test(test_queue_name_first_recipient),
        cmocka_unit_test(test_components_cannot_inject),
    };
    return cmocka_run_group_tests_name("msg/queue_name", tests, NULL, NULL);
}
