/* Tests for src/log/logrec.c: record type names and the exact JSON of a log
 * record (field set, order, types, null versus omitted), meta filtering and
 * header extraction. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "core/kerr.h"
#include "log/logs.h"

/* 2023-11-14T22:13:20Z */
#define T0 1700000000LL
#define NS 1000000000LL

static const char *const one_rcpt[] = {"rcpt@example.net"};

static logrec base_record(logrec_type t)
{
    logrec r = {0};
    r.type = t;
    r.id = "0123456789abcdef0123456789abcdef";
    r.sender = "sender@example.com";
    r.recipients = one_rcpt;
    r.n_recipients = 1;
    r.queue = "example.net";
    r.site = "";
    r.size = 1234;
    r.response = (logrec_response){.code = 250, .content = "OK"};
    r.timestamp_ns = T0 * NS + 123456789;
    r.created_ns = T0 * NS - 5 * NS;
    r.nodeid = "557f3ad4-2c8c-11ee-976e-782d7e12e173";
    return r;
}

/* Serialises r, checks it is one line, parses it back. */
static json_t *to_json(const logrec *r, const char *const *meta, size_t n_meta,
                       const char *const *hdrs, size_t n_hdrs)
{
    size_t len = 0;
    char *text = logrec_to_json(r, meta, n_meta, hdrs, n_hdrs, &len);
    assert_non_null(text);
    assert_int_equal(len, strlen(text));
    assert_null(strchr(text, '\n'));
    json_error_t e;
    json_t *j = json_loads(text, JSON_REJECT_DUPLICATES, &e);
    if (!j)
        fail_msg("bad JSON (%s): %s", e.text, text);
    free(text);
    assert_true(json_is_object(j));
    return j;
}

static void assert_str_field(const json_t *o, const char *key, const char *want)
{
    const json_t *v = json_object_get(o, key);
    if (!json_is_string(v))
        fail_msg("field %s is not a string", key);
    assert_string_equal(json_string_value(v), want);
}

static void assert_int_field(const json_t *o, const char *key, long long want)
{
    const json_t *v = json_object_get(o, key);
    if (!json_is_integer(v))
        fail_msg("field %s is not an integer", key);
    assert_int_equal(json_integer_value(v), want);
}

static void assert_null_field(const json_t *o, const char *key)
{
    const json_t *v = json_object_get(o, key);
    if (!v || !json_is_null(v))
        fail_msg("field %s should be present and null", key);
}

static void assert_absent(const json_t *o, const char *key)
{
    if (json_object_get(o, key))
        fail_msg("field %s should be omitted", key);
}

/* The keys of o, in order, joined with ','. */
static char *keys_of(const json_t *o)
{
    static char buf[1024];
    buf[0] = '\0';
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)o, k, v)
    {
        if (buf[0])
            strcat(buf, ",");
        strcat(buf, k);
    }
    return buf;
}

#define BASE_KEYS                                                                                  \
    "type,id,sender,recipient,queue,site,size,response,peer_address,timestamp,event_time,"         \
    "created,created_time,num_attempts,bounce_classification,egress_pool,egress_source,"           \
    "source_address,feedback_report,meta,headers,delivery_protocol,reception_protocol,nodeid"

static void test_type_names(void **state)
{
    static const struct {
        logrec_type t;
        const char *name;
    } cases[] = {
        {LOGREC_RECEPTION, "Reception"},
        {LOGREC_DELIVERY, "Delivery"},
        {LOGREC_BOUNCE, "Bounce"},
        {LOGREC_TRANSIENT_FAILURE, "TransientFailure"},
        {LOGREC_EXPIRATION, "Expiration"},
        {LOGREC_ADMIN_BOUNCE, "AdminBounce"},
        {LOGREC_OOB, "OOB"},
        {LOGREC_FEEDBACK, "Feedback"},
        {LOGREC_REJECTION, "Rejection"},
        {LOGREC_ADMIN_REBIND, "AdminRebind"},
        {LOGREC_DEFERRED_INJECTION_REBIND, "DeferredInjectionRebind"},
        {LOGREC_DELAYED, "Delayed"},
        {LOGREC_XFER_OUT, "XferOut"},
        {LOGREC_XFER_IN, "XferIn"},
        {LOGREC__COUNT, "Any"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        assert_string_equal(logrec_type_name(cases[i].t), cases[i].name);
        logrec_type t = LOGREC_DELIVERY;
        assert_int_equal(logrec_type_parse(cases[i].name, &t), 0);
        assert_int_equal(t, cases[i].t);
    }
    logrec_type t;
    assert_int_equal(logrec_type_parse("delivery", &t), KERR_PARSE);
    assert_int_equal(logrec_type_parse("Nope", &t), KERR_PARSE);
    assert_int_equal(logrec_type_parse("", &t), KERR_PARSE);
    assert_int_equal(logrec_type_parse(NULL, &t), KERR_PARSE);
    assert_null(logrec_type_name((logrec_type)99));
}

/* Every field set: exact bytes, so order and compact separators are pinned. */
static void test_exact_full_record(void **state)
{
    json_t *meta = json_pack("{s:s}", "tenant", "acme");
    json_t *fbr = json_pack("{s:s}", "feedback_type", "abuse");
    logrec r = base_record(LOGREC_DELIVERY);
    r.site = "source->mx.example.net@smtp_client";
    r.response = (logrec_response){.code = 250,
                                   .enh_class = 2,
                                   .enh_subject = 0,
                                   .enh_detail = 0,
                                   .content = "OK ids=1",
                                   .command = "."};
    r.peer_name = "mx.example.net.";
    r.peer_addr = "192.0.2.1:25";
    r.num_attempts = 3;
    r.bounce_classification = "InvalidRecipient";
    r.egress_pool = "pool0";
    r.egress_source = "source2";
    r.source_address = "10.0.0.1:53210";
    r.feedback_report = fbr;
    r.delivery_protocol = "ESMTP";
    r.reception_protocol = "HTTP";
    r.tls_cipher = "TLS_AES_256_GCM_SHA384";
    r.tls_protocol_version = "TLSv1.3";
    r.tls_peer_subject_name = "C=US\nCN=mx.example.net";
    r.provider_name = "example";
    r.session_id = "db5e6704-05d3-4c8b-9cac-e3edd39e5c7a";
    r.msg_meta = meta;
    const char *mk[] = {"tenant"};
    size_t len;
    char *text = logrec_to_json(&r, mk, 1, NULL, 0, &len);
    assert_non_null(text);
    assert_string_equal(
        text,
        "{\"type\":\"Delivery\",\"id\":\"0123456789abcdef0123456789abcdef\","
        "\"sender\":\"sender@example.com\",\"recipient\":\"rcpt@example.net\","
        "\"queue\":\"example.net\",\"site\":\"source->mx.example.net@smtp_client\","
        "\"size\":1234,\"response\":{\"code\":250,\"enhanced_code\":{\"class\":2,\"subject\":0,"
        "\"detail\":0},\"content\":\"OK ids=1\",\"command\":\".\"},"
        "\"peer_address\":{\"name\":\"mx.example.net.\",\"addr\":\"192.0.2.1:25\"},"
        "\"timestamp\":1700000000,\"event_time\":\"2023-11-14T22:13:20.123456789Z\","
        "\"created\":1699999995,\"created_time\":\"2023-11-14T22:13:15Z\","
        "\"num_attempts\":3,\"bounce_classification\":\"InvalidRecipient\","
        "\"egress_pool\":\"pool0\",\"egress_source\":\"source2\","
        "\"source_address\":{\"address\":\"10.0.0.1:53210\"},"
        "\"feedback_report\":{\"feedback_type\":\"abuse\"},\"meta\":{\"tenant\":\"acme\"},"
        "\"headers\":{},\"delivery_protocol\":\"ESMTP\",\"reception_protocol\":\"HTTP\","
        "\"nodeid\":\"557f3ad4-2c8c-11ee-976e-782d7e12e173\","
        "\"tls_cipher\":\"TLS_AES_256_GCM_SHA384\",\"tls_protocol_version\":\"TLSv1.3\","
        "\"tls_peer_subject_name\":[\"C=US\",\"CN=mx.example.net\"],"
        "\"provider_name\":\"example\","
        "\"session_id\":\"db5e6704-05d3-4c8b-9cac-e3edd39e5c7a\"}");
    assert_int_equal(len, strlen(text));
    free(text);
    json_decref(meta);
    json_decref(fbr);
}

/* Each record type with the fields a caller leaves unset: every field
 * compared, nulls where KumoMTA has Option, omitted tls/provider/session. */
static void test_each_type_minimal(void **state)
{
    for (int t = 0; t < LOGREC__COUNT; t++) {
        logrec r = base_record((logrec_type)t);
        if (t == LOGREC_REJECTION)
            r.id = "";
        r.response = (logrec_response){.code = 400, .content = "KumoMTA internal: oops"};
        json_t *j = to_json(&r, NULL, 0, NULL, 0);
        assert_string_equal(keys_of(j), BASE_KEYS);
        assert_str_field(j, "type", logrec_type_name((logrec_type)t));
        assert_str_field(j, "id", t == LOGREC_REJECTION ? "" : "0123456789abcdef0123456789abcdef");
        assert_str_field(j, "sender", "sender@example.com");
        assert_str_field(j, "recipient", "rcpt@example.net");
        assert_str_field(j, "queue", "example.net");
        assert_str_field(j, "site", "");
        assert_int_field(j, "size", 1234);
        json_t *resp = json_object_get(j, "response");
        assert_string_equal(keys_of(resp), "code,enhanced_code,content,command");
        assert_int_field(resp, "code", 400);
        assert_null_field(resp, "enhanced_code");
        assert_str_field(resp, "content", "KumoMTA internal: oops");
        assert_null_field(resp, "command");
        assert_null_field(j, "peer_address");
        assert_int_field(j, "timestamp", T0);
        assert_str_field(j, "event_time", "2023-11-14T22:13:20.123456789Z");
        assert_int_field(j, "created", T0 - 5);
        assert_str_field(j, "created_time", "2023-11-14T22:13:15Z");
        assert_int_field(j, "num_attempts", 0);
        assert_str_field(j, "bounce_classification", "Uncategorized");
        assert_null_field(j, "egress_pool");
        assert_null_field(j, "egress_source");
        assert_null_field(j, "source_address");
        assert_null_field(j, "feedback_report");
        assert_true(json_is_object(json_object_get(j, "meta")));
        assert_int_equal(json_object_size(json_object_get(j, "meta")), 0);
        assert_true(json_is_object(json_object_get(j, "headers")));
        assert_int_equal(json_object_size(json_object_get(j, "headers")), 0);
        assert_null_field(j, "delivery_protocol");
        assert_null_field(j, "reception_protocol");
        assert_str_field(j, "nodeid", "557f3ad4-2c8c-11ee-976e-782d7e12e173");
        assert_absent(j, "tls_cipher");
        assert_absent(j, "tls_protocol_version");
        assert_absent(j, "tls_peer_subject_name");
        assert_absent(j, "provider_name");
        assert_absent(j, "session_id");
        json_decref(j);
    }
    /* "Any" is for configuration only. */
    logrec r = base_record(LOGREC__COUNT);
    assert_null(logrec_to_json(&r, NULL, 0, NULL, 0, NULL));
}

/* KumoMTA never writes null for String fields; neither do we. */
static void test_null_strings(void **state)
{
    logrec r = {0};
    r.type = LOGREC_EXPIRATION;
    r.timestamp_ns = T0 * NS;
    r.created_ns = T0 * NS;
    json_t *j = to_json(&r, NULL, 0, NULL, 0);
    assert_str_field(j, "id", "");
    assert_str_field(j, "sender", "");
    assert_str_field(j, "queue", "");
    assert_str_field(j, "site", "");
    assert_true(json_is_array(json_object_get(j, "recipient")));
    assert_int_equal(json_array_size(json_object_get(j, "recipient")), 0);
    assert_str_field(json_object_get(j, "response"), "content", "");
    assert_str_field(j, "nodeid", "00000000-0000-0000-0000-000000000000");
    json_decref(j);

    /* Only one half of the peer known: the object, with "" for the other. */
    r.peer_name = "ehlo.example";
    j = to_json(&r, NULL, 0, NULL, 0);
    json_t *peer = json_object_get(j, "peer_address");
    assert_string_equal(keys_of(peer), "name,addr");
    assert_str_field(peer, "name", "ehlo.example");
    assert_str_field(peer, "addr", "");
    json_decref(j);
}

static void test_recipient_forms(void **state)
{
    static const char *const two[] = {"a@example.net", "b@example.net"};
    logrec r = base_record(LOGREC_RECEPTION);
    json_t *j = to_json(&r, NULL, 0, NULL, 0);
    assert_str_field(j, "recipient", "rcpt@example.net");
    json_decref(j);

    r.recipients = two;
    r.n_recipients = 2;
    j = to_json(&r, NULL, 0, NULL, 0);
    json_t *a = json_object_get(j, "recipient");
    assert_true(json_is_array(a));
    assert_int_equal(json_array_size(a), 2);
    assert_string_equal(json_string_value(json_array_get(a, 0)), "a@example.net");
    assert_string_equal(json_string_value(json_array_get(a, 1)), "b@example.net");
    json_decref(j);

    r.n_recipients = 0;
    j = to_json(&r, NULL, 0, NULL, 0);
    assert_true(json_is_array(json_object_get(j, "recipient")));
    assert_int_equal(json_array_size(json_object_get(j, "recipient")), 0);
    json_decref(j);
}

static void test_times(void **state)
{
    static const struct {
        int64_t ns;
        long long secs;
        const char *rfc3339;
    } cases[] = {
        {T0 * NS, T0, "2023-11-14T22:13:20Z"},
        {T0 * NS + 120000000, T0, "2023-11-14T22:13:20.120Z"},
        {T0 * NS + 123456000, T0, "2023-11-14T22:13:20.123456Z"},
        {T0 * NS + 100, T0, "2023-11-14T22:13:20.000000100Z"},
        {T0 * NS + 999999999, T0, "2023-11-14T22:13:20.999999999Z"},
        {1 * NS, 1, "1970-01-01T00:00:01Z"},
        {951782400LL * NS + 1000, 951782400, "2000-02-29T00:00:00.000001Z"},
        {-1500000000LL, -2, "1969-12-31T23:59:58.500Z"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        logrec r = base_record(LOGREC_DELIVERY);
        r.timestamp_ns = cases[i].ns;
        r.created_ns = cases[i].ns;
        json_t *j = to_json(&r, NULL, 0, NULL, 0);
        assert_int_field(j, "timestamp", cases[i].secs);
        assert_str_field(j, "event_time", cases[i].rfc3339);
        assert_int_field(j, "created", cases[i].secs);
        assert_str_field(j, "created_time", cases[i].rfc3339);
        json_decref(j);
    }
    /* 0 means now. */
    logrec r = base_record(LOGREC_DELIVERY);
    r.timestamp_ns = 0;
    r.created_ns = 0;
    json_t *j = to_json(&r, NULL, 0, NULL, 0);
    assert_true(json_integer_value(json_object_get(j, "timestamp")) > T0);
    assert_int_equal(json_integer_value(json_object_get(j, "timestamp")),
                     json_integer_value(json_object_get(j, "created")));
    json_decref(j);
}

static void test_response(void **state)
{
    static const struct {
        const char *in, *out;
    } cases[] = {
        {"hello\r\nthere\r\n", "hello there "},
        {"hello\r", "hello "},
        {"hello\nthere\r\n", "hello there "},
        {"hello\r\nthere\n", "hello there "},
        {"one line", "one line"},
        {"", ""},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        logrec r = base_record(LOGREC_TRANSIENT_FAILURE);
        r.response = (logrec_response){.code = 451,
                                       .enh_class = 4,
                                       .enh_subject = 4,
                                       .enh_detail = 1,
                                       .content = cases[i].in,
                                       .command = "RCPT TO"};
        json_t *j = to_json(&r, NULL, 0, NULL, 0);
        json_t *resp = json_object_get(j, "response");
        assert_int_field(resp, "code", 451);
        json_t *enh = json_object_get(resp, "enhanced_code");
        assert_string_equal(keys_of(enh), "class,subject,detail");
        assert_int_field(enh, "class", 4);
        assert_int_field(enh, "subject", 4);
        assert_int_field(enh, "detail", 1);
        assert_str_field(resp, "content", cases[i].out);
        assert_str_field(resp, "command", "RCPT TO");
        json_decref(j);
    }
}

static void test_meta_filter(void **state)
{
    json_t *meta =
        json_pack("{s:s, s:i, s:n, s:s, s:n, s:{s:b}, s:s}", "tenant", "acme", "campaign", 7,
                  "gone", "x_a", "1", "x_b", "x_c", "deep", 1, "other", "no");
    const char *keys[] = {"tenant", "campaign", "gone", "missing", "x_*"};
    logrec r = base_record(LOGREC_DELIVERY);
    r.msg_meta = meta;
    json_t *j = to_json(&r, keys, 5, NULL, 0);
    json_t *m = json_object_get(j, "meta");
    /* A plain name skips null and missing keys; a prefix takes nulls too. */
    assert_int_equal(json_object_size(m), 5);
    assert_str_field(m, "tenant", "acme");
    assert_int_field(m, "campaign", 7);
    assert_absent(m, "gone");
    assert_absent(m, "missing");
    assert_absent(m, "other");
    assert_str_field(m, "x_a", "1");
    assert_null_field(m, "x_b");
    assert_true(json_is_true(json_object_get(json_object_get(m, "x_c"), "deep")));
    json_decref(j);

    /* Nothing configured: {} whatever the message has. */
    j = to_json(&r, NULL, 0, NULL, 0);
    assert_int_equal(json_object_size(json_object_get(j, "meta")), 0);
    json_decref(j);

    /* No meta at all. */
    r.msg_meta = NULL;
    j = to_json(&r, keys, 5, NULL, 0);
    assert_int_equal(json_object_size(json_object_get(j, "meta")), 0);
    json_decref(j);
    json_decref(meta);
}

static const char msg_crlf[] = "Subject: hello\r\n"
                               "  world\r\n"
                               "X-Tenant: acme\r\n"
                               "x-campaign:   spring\tsale  \r\n"
                               "To: a@example.net\r\n"
                               "to: b@example.net\r\n"
                               "Received: from a\r\n"
                               "\tby b;\r\n"
                               " Tue, 1 Jan 2030 00:00:00 +0000\r\n"
                               "Empty:\r\n"
                               "\r\n"
                               "X-In-Body: no\r\n";

static void test_headers(void **state)
{
    logrec r = base_record(LOGREC_RECEPTION);
    r.msg_data = msg_crlf;
    r.msg_data_len = sizeof(msg_crlf) - 1;
    const char *names[] = {"subject", "X-*", "TO", "received", "Empty", "Missing", "x-tenant"};
    json_t *j = to_json(&r, NULL, 0, names, 7);
    json_t *h = json_object_get(j, "headers");
    assert_string_equal(keys_of(h), "Subject,X-Tenant,x-campaign,To,Received,Empty");
    /* Unfolded; white space runs become one space. */
    assert_str_field(h, "Subject", "hello world");
    assert_str_field(h, "X-Tenant", "acme");
    assert_str_field(h, "x-campaign", "spring sale ");
    assert_str_field(h, "Received", "from a by b; Tue, 1 Jan 2030 00:00:00 +0000");
    assert_str_field(h, "Empty", "");
    /* Repeated: an array under the first spelling. */
    json_t *to = json_object_get(h, "To");
    assert_true(json_is_array(to));
    assert_int_equal(json_array_size(to), 2);
    assert_string_equal(json_string_value(json_array_get(to, 0)), "a@example.net");
    assert_string_equal(json_string_value(json_array_get(to, 1)), "b@example.net");
    assert_absent(h, "X-In-Body");
    json_decref(j);

    /* Bare LF line endings work the same. */
    static const char msg_lf[] = "Subject: a\n b\nX-One: 1\n\nX-Two: 2\n";
    r.msg_data = msg_lf;
    r.msg_data_len = sizeof(msg_lf) - 1;
    const char *all[] = {"*"};
    j = to_json(&r, NULL, 0, all, 1);
    h = json_object_get(j, "headers");
    assert_string_equal(keys_of(h), "Subject,X-One");
    assert_str_field(h, "Subject", "a b");
    assert_str_field(h, "X-One", "1");
    json_decref(j);

    /* Headers only (no body), no trailing newline. */
    static const char msg_nobody[] = "X-Last: end";
    r.msg_data = msg_nobody;
    r.msg_data_len = sizeof(msg_nobody) - 1;
    j = to_json(&r, NULL, 0, all, 1);
    assert_str_field(json_object_get(j, "headers"), "X-Last", "end");
    json_decref(j);

    /* A block starting with white space is malformed: nothing is taken. */
    static const char msg_bad[] = " Subject: x\r\n\r\n";
    r.msg_data = msg_bad;
    r.msg_data_len = sizeof(msg_bad) - 1;
    j = to_json(&r, NULL, 0, all, 1);
    assert_int_equal(json_object_size(json_object_get(j, "headers")), 0);
    json_decref(j);

    /* No message data: {}. */
    r.msg_data = NULL;
    r.msg_data_len = 0;
    j = to_json(&r, NULL, 0, names, 7);
    assert_int_equal(json_object_size(json_object_get(j, "headers")), 0);
    json_decref(j);
}

/* Invalid UTF-8 and NUL bytes become U+FFFD, one per maximal bad subpart. */
static void test_lossy_utf8(void **state)
{
    static const char msg[] = "Subject: a\xff"
                              "b\xe2\x82z\xc3\xa9\r\n"
                              "X-Nul: a\0b\r\n\r\n";
    logrec r = base_record(LOGREC_RECEPTION);
    r.msg_data = msg;
    r.msg_data_len = sizeof(msg) - 1;
    r.sender = "bad\xc0@example.com";
    const char *names[] = {"subject", "x-nul"};
    json_t *j = to_json(&r, NULL, 0, names, 2);
    json_t *h = json_object_get(j, "headers");
    assert_str_field(h, "Subject",
                     "a\xef\xbf\xbd"
                     "b\xef\xbf\xbdz\xc3\xa9");
    assert_str_field(h, "X-Nul",
                     "a\xef\xbf\xbd"
                     "b");
    assert_str_field(j, "sender", "bad\xef\xbf\xbd@example.com");
    json_decref(j);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_type_names),        cmocka_unit_test(test_exact_full_record),
        cmocka_unit_test(test_each_type_minimal), cmocka_unit_test(test_null_strings),
        cmocka_unit_test(test_recipient_forms),   cmocka_unit_test(test_times),
        cmocka_unit_test(test_response),          cmocka_unit_test(test_meta_filter),
        cmocka_unit_test(test_headers),           cmocka_unit_test(test_lossy_utf8),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
