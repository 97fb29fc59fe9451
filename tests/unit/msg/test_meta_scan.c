/* Unit tests for src/msg/meta_scan.c: the fast enumeration reader must name
 * the same queue as the full path (message_from_meta_json followed by
 * queue_name_of_message) for every document it accepts, and hand anything
 * outside its subset back (KERR_AGAIN) instead of guessing. */
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
#include "msg/meta_scan.h"
#include "msg/queue_name.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

static const spoolid ID = {{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}};

/* The full path's answer, or NULL when it rejects the document. */
static char *full_queue(const char *doc, bool *sched)
{
    message *m;
    if (message_from_meta_json(&ID, doc, strlen(doc), &m) != 0)
        return NULL;
    char *q = queue_name_of_message(m);
    *sched = m->scheduling != NULL;
    message_unref(m);
    return q;
}

/* Documents the fast path must read, each checked against the full path. */
static const char *const accepted[] = {
    "{\"sender\":\"a@b\",\"recipient\":\"u@Example.COM\",\"meta\":{}}",
    "{\"sender\":\"a@b\",\"recipient\":\"u@example.com\",\"meta\":{\"queue\":\"special\"}}",
    "{\"sender\":\"a@b\",\"recipient\":\"u@example.com\",\"meta\":{\"queue\":\"\"}}",
    "{\"sender\":\"a@b\",\"recipient\":\"u@example.com\","
    "\"meta\":{\"campaign\":\"c1\",\"tenant\":\"t1\",\"routing_domain\":\"r.example\"}}",
    "{\"sender\":\"a@b\",\"recipient\":\"u@example.com\",\"meta\":{\"tenant\":\"t1\"}}",
    "{\"sender\":\"a@b\",\"recipient\":\"u@example.com\",\"meta\":{\"campaign\":\"c1\"}}",
    "{\"sender\":\"a@b\",\"recipient\":\"u@example.com\",\"meta\":{\"tenant\":5,"
    "\"campaign\":null,\"x\":[1,2.5e3,-0.1,true,false,null,{\"y\":\"z\"}]}}",
    "{\"sender\":\"a@b\",\"recipient\":[\"one@first.example\",\"two@second.example\"],"
    "\"meta\":{}}",
    "{\"sender\":\"a@b\",\"recipient\":[],\"meta\":{}}",
    "{\"sender\":\"a@b\",\"recipient\":\"no-at-sign\"}",
    "{\"sender\":\"a@b\",\"recipient\":\"u@example.com\",\"meta\":{\"queue\":\"esc\\\"aped\\\\"
    "\\u0041\\n\"}}",
    " { \"recipient\" : \"u@example.com\" , \"sender\" : \"a@b\" , \"meta\" : "
    "{ \"tenant\" : \"t\" } } \n",
    "{\"sender\":\"a@b\",\"recipient\":\"u@example.com\",\"meta\":{\"tenant\":\"a\","
    "\"tenant\":\"b\"}}",
    "{\"sender\":\"a@b\",\"recipient\":\"u@example.com\",\"meta\":{\"tenant\":\"a\","
    "\"tenant\":7}}",
    "{\"sender\":\"a@b\",\"recipient\":\"u@example.com\",\"meta\":{},"
    "\"schedule\":{\"first_attempt\":\"2030-01-01T00:00:00Z\"}}",
    "{\"sender\":\"a@b\",\"recipient\":\"u@example.com\",\"meta\":{},\"schedule\":null}",
};

static void test_same_queue_as_full_path(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(accepted); i++) {
        const char *doc = accepted[i];
        char *fast = NULL;
        bool fsched = false, sched = true;
        int rc = meta_scan_queue(doc, strlen(doc), &fast, &sched);
        if (rc != 0)
            fail_msg("fast path refused document %zu: %s", i, doc);
        char *want = full_queue(doc, &fsched);
        if (!want)
            fail_msg("full path refused document %zu: %s", i, doc);
        if (strcmp(fast, want) != 0 || sched != fsched)
            fail_msg("document %zu: fast %s (schedule %d), full %s (schedule %d)", i, fast,
                     sched, want, fsched);
        free(fast);
        free(want);
    }
}

/* Outside the subset, or malformed: handed back, nothing leaked. */
static const char *const refused[] = {
    "",
    "[]",
    "{",
    "{\"sender\":\"a@b\"}",
    "{\"recipient\":\"u@example.com\"}",
    "{\"sender\":\"a@b\",\"recipient\":5}",
    "{\"sender\":\"a@b\",\"recipient\":[\"u@example.com\",5]}",
    "{\"sender\":\"a@b\",\"recipient\":\"u@example.com\",\"meta\":[]}",
    "{\"sender\":\"a@b\",\"recipient\":\"u@ex\xc3\xa9.com\"}",
    "{\"sender\":\"a@b\",\"recipient\":\"u@example.com\",\"meta\":{\"q\":\"\\u00e9\"}}",
    "{\"sender\":\"a@b\",\"recipient\":\"u@example.com\",\"meta\":{\"q\":\"\\u0000\"}}",
    "{\"sender\":\"a@b\",\"recipient\":\"u@example.com\",\"meta\":{\"te\\u006eant\":\"x\"}}",
    "{\"sender\":\"a@b\",\"recipient\":\"u@example.com\",\"meta\":{\"n\":01}}",
    "{\"sender\":\"a@b\",\"recipient\":\"u@example.com\",\"meta\":{\"n\":1.}}",
    "{\"sender\":\"a@b\",\"recipient\":\"u@example.com\",\"meta\":{\"b\":tru}}",
    "{\"sender\":\"a@b\",\"recipient\":\"u@example.com\"} trailing",
    "{\"sender\":\"a@b\",\"recipient\":\"u@example.com\",\"meta\":{\"s\":\"unterminated}}",
    "{\"sender\":\"a@b\",\"recipient\":\"u@example.com\",\"meta\":{\"s\":\"ctl\x01\"}}",
};

static void test_refuses_outside_subset(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(refused); i++) {
        char *q = (char *)"untouched";
        bool sched = false;
        int rc = meta_scan_queue(refused[i], strlen(refused[i]), &q, &sched);
        if (rc != KERR_AGAIN)
            fail_msg("document %zu accepted (rc %d, queue %s): %s", i, rc, rc ? "-" : q,
                     refused[i]);
        assert_null(q);
    }
}

/* Deep nesting is left to the full parser. */
static void test_deep_nesting_refused(void **state)
{
    (void)state;
    char doc[1024];
    size_t o = (size_t)snprintf(doc, sizeof(doc),
                                "{\"sender\":\"a@b\",\"recipient\":\"u@x\",\"meta\":{\"d\":");
    for (int i = 0; i < 100; i++)
        doc[o++] = '[';
    for (int i = 0; i < 100; i++)
        doc[o++] = ']';
    o += (size_t)snprintf(doc + o, sizeof(doc) - o, "}}");
    char *q = NULL;
    bool sched;
    assert_int_equal(meta_scan_queue(doc, o, &q, &sched), KERR_AGAIN);
    assert_null(q);
}

/* What the spool writer produces reads back the same. */
static void test_round_trip_of_written_meta(void **state)
{
    (void)state;
    const char *rcpts[] = {"first@Dest.Example", "second@other.example"};
    message *m = message_new(&ID, "sender@example.com", rcpts, 2);
    json_object_set_new(m->meta, "campaign", json_string("spring"));
    json_object_set_new(m->meta, "tenant", json_string("acme"));
    json_object_set_new(m->meta, "received_from", json_string("127.0.0.1:1234"));
    size_t len;
    char *doc = message_meta_to_json(m, &len);
    char *want = queue_name_of_message(m);
    char *q = NULL;
    bool sched = true;
    assert_int_equal(meta_scan_queue(doc, len, &q, &sched), 0);
    assert_string_equal(q, want);
    assert_string_equal(q, "spring:acme@dest.example");
    assert_false(sched);
    free(q);
    free(want);
    free(doc);
    message_unref(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_same_queue_as_full_path),
        cmocka_unit_test(test_refuses_outside_subset),
        cmocka_unit_test(test_deep_nesting_refused),
        cmocka_unit_test(test_round_trip_of_written_meta),
    };
    return cmocka_run_group_tests_name("msg/meta_scan", tests, NULL, NULL);
}
