/* Unit tests for src/msg/rfc3464.c and src/msg/arf.c (with the field
 * helpers of report_fields.c): the RFCs' examples and provider-style
 * samples (tests/e2e/data/reports) parse to the documented shapes; what is
 * not a report is NULL; malformed reports fail with a sentence naming the
 * problem; bytes that are not UTF-8 never make invalid JSON. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/kerr.h"
#include "msg/arf.h"
#include "msg/rfc3464.h"

static char *slurp(const char *name, size_t *len)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/tests/e2e/data/reports/%s", KUMOD_SOURCE_DIR, name);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    char *buf = malloc(1 << 20);
    *len = fread(buf, 1, (1 << 20) - 1, f);
    buf[*len] = 0;
    fclose(f);
    return buf;
}

static const char *path_str(json_t *j, const char *path)
{
    /* "a.b.0.c": objects by key, arrays by index */
    char tmp[256];
    snprintf(tmp, sizeof(tmp), "%s", path);
    for (char *tok = strtok(tmp, "."); tok && j; tok = strtok(NULL, "."))
        j = json_is_array(j) ? json_array_get(j, (size_t)atoi(tok)) : json_object_get(j, tok);
    return json_string_value(j);
}

static json_int_t path_int(json_t *j, const char *path)
{
    char tmp[256];
    snprintf(tmp, sizeof(tmp), "%s", path);
    for (char *tok = strtok(tmp, "."); tok && j; tok = strtok(NULL, "."))
        j = json_is_array(j) ? json_array_get(j, (size_t)atoi(tok)) : json_object_get(j, tok);
    assert_true(json_is_integer(j));
    return json_integer_value(j);
}

static json_t *dsn_file(const char *name)
{
    size_t n;
    char *d = slurp(name, &n);
    json_t *r = NULL;
    char err[256] = "";
    int rc = rfc3464_parse(d, n, &r, err, sizeof(err));
    if (rc)
        fail_msg("%s: %s", name, err);
    free(d);
    assert_non_null(r);
    return r;
}

static void test_rfc_examples(void **st)
{
    (void)st;
    json_t *a = dsn_file("rfc3464_a.eml");
    assert_string_equal(path_str(a, "per_message.reporting_mta.mta_type"), "dns");
    assert_string_equal(path_str(a, "per_message.reporting_mta.name"), "cs.utk.edu");
    assert_string_equal(path_str(a, "per_recipient.0.original_recipient.recipient"),
                        "louisl@larry.slip.umd.edu");
    assert_string_equal(path_str(a, "per_recipient.0.action"), "failed");
    assert_int_equal(path_int(a, "per_recipient.0.status.class"), 4);
    assert_string_equal(path_str(a, "per_recipient.0.diagnostic_code.diagnostic_type"), "smtp");
    assert_string_equal(path_str(a, "per_recipient.0.diagnostic_code.diagnostic"),
                        "426 connection timed out");
    assert_string_equal(path_str(a, "per_recipient.0.last_attempt_date"), "1994-07-07T21:15:49Z");
    assert_string_equal(path_str(a, "original_message"), "[original message goes here]\n");
    json_decref(a);

    json_t *b = dsn_file("rfc3464_b.eml");
    assert_int_equal(json_array_size(json_object_get(b, "per_recipient")), 3);
    assert_string_equal(path_str(b, "per_recipient.0.status.comment"), "(permanent failure)");
    assert_string_equal(path_str(b, "per_recipient.1.action"), "delayed");
    assert_string_equal(path_str(b, "per_recipient.1.status.comment"),
                        "(hpnjld.njd.jp.com: host name lookup failure)");
    assert_string_equal(path_str(b, "per_recipient.2.remote_mta.name"), "sdcc13.ucsd.edu");
    json_decref(b);
}

static void test_providers(void **st)
{
    (void)st;
    json_t *g = dsn_file("gmail.eml");
    assert_string_equal(path_str(g, "per_recipient.0.final_recipient.recipient"),
                        "no.such.user@gmail.com");
    assert_int_equal(path_int(g, "per_recipient.0.status.detail"), 1);
    assert_non_null(strstr(path_str(g, "per_recipient.0.diagnostic_code.diagnostic"),
                           "550-5.1.1 The email account that you tried to reach does not exist."));
    assert_string_equal(path_str(g, "per_message.arrival_date"), "2026-03-02T18:15:01Z");
    assert_string_equal(path_str(g, "per_message.extensions.x-original-message-id.0"),
                        "<20260302181500.1234@example.com>");
    json_decref(g);
    json_t *m = dsn_file("microsoft.eml");
    assert_string_equal(path_str(m, "per_message.reporting_mta.name"),
                        "AM0PR01MB0001.eurprd01.prod.exchangelabs.com");
    assert_string_equal(path_str(m, "per_recipient.0.extensions.x-display-name.0"), "someone");
    json_decref(m);
    json_t *y = dsn_file("yahoo.eml");
    assert_string_equal(path_str(y, "per_recipient.0.original_recipient.recipient"),
                        "gone.away@yahoo.com");
    assert_string_equal(path_str(y, "per_recipient.1.will_retry_until"), "2026-03-05T12:00:05Z");
    json_decref(y);
}

#define HEAD                                                                                       \
    "Content-Type: multipart/report; report-type=delivery-status; boundary=B\r\n\r\n"             \
    "--B\r\nContent-Type: message/delivery-status\r\n\r\n"
#define GOOD "Reporting-MTA: dns; mx\r\n\r\nFinal-Recipient: rfc822; a@b\r\nAction: failed\r\n"

static void test_not_reports_and_malformed(void **st)
{
    (void)st;
    static const char *const not_reports[] = {
        "Subject: x\r\n\r\nbody\r\n",
        "Content-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\n\r\nx\r\n--B--\r\n",
        "Content-Type: multipart/report; report-type=feedback-report; boundary=B\r\n\r\n--B--\r\n",
        "",
    };
    for (size_t i = 0; i < sizeof(not_reports) / sizeof(*not_reports); i++) {
        json_t *r = (json_t *)1;
        char err[256];
        assert_int_equal(rfc3464_parse(not_reports[i], strlen(not_reports[i]), &r, err, sizeof(err)),
                         0);
        assert_null(r);
    }
    static const struct {
        const char *in, *err;
    } bad[] = {
        {"Content-Type: multipart/report; boundary=B\r\n\r\n--B\r\n\r\nx\r\n--B--\r\n",
         "delivery-status part missing"},
        {HEAD "Reporting-MTA: dns; mx\r\n--B--\r\n", "no per-recipient fields"},
        {HEAD GOOD "Status: 9.9.9\r\n--B--\r\n", "invalid status '9.9.9'"},
        {HEAD GOOD "Status: 5.1.1234\r\n--B--\r\n", "invalid status"},
        {HEAD GOOD "--B--\r\n", "per-recipient group 1: required field Status is missing"},
        {HEAD GOOD "Status: 5.1.1\r\nStatus: 5.1.1\r\n--B--\r\n", "status should have only a single"},
        {HEAD "Reporting-MTA: mx\r\n\r\nFinal-Recipient: rfc822; a@b\r\n--B--\r\n",
         "per-message fields: reporting-mta: expected 'type; value'"},
        {HEAD GOOD "Status: 5.0.0\r\nnot a field\r\n--B--\r\n", "malformed field 'not a field'"},
        {HEAD GOOD "Status: 5.0.0\r\nAction: bounced\r\n--B--\r\n", "only a single value"},
        {HEAD "Reporting-MTA: dns; mx\r\n\r\nFinal-Recipient: rfc822; a@b\r\nAction: bounced\r\n"
              "Status: 5.0.0\r\n--B--\r\n",
         "invalid action 'bounced'"},
        {HEAD GOOD "Status: 5.0.0\r\nLast-Attempt-Date: someday\r\n--B--\r\n", "invalid date"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++) {
        json_t *r = NULL;
        char err[256] = "";
        int rc = rfc3464_parse(bad[i].in, strlen(bad[i].in), &r, err, sizeof(err));
        if (rc != KERR_PARSE || !strstr(err, bad[i].err))
            fail_msg("case %zu: rc %d err '%s', want '%s'", i, rc, err, bad[i].err);
        assert_null(r);
    }
}

static void test_limits_and_bytes(void **st)
{
    (void)st;
    /* too many recipients */
    size_t cap = 64 * 1024 * 64;
    char *big = malloc(cap);
    size_t n = (size_t)sprintf(big, HEAD "Reporting-MTA: dns; mx\r\n");
    for (int i = 0; i <= RFC3464_MAX_RECIPIENTS + 1; i++)
        n += (size_t)sprintf(big + n, "\r\nFinal-Recipient: rfc822; a%d@b\r\nAction: failed\r\n"
                                      "Status: 5.0.0\r\n", i);
    n += (size_t)sprintf(big + n, "--B--\r\n");
    json_t *r = NULL;
    char err[256] = "";
    assert_int_equal(rfc3464_parse(big, n, &r, err, sizeof(err)), KERR_PARSE);
    assert_non_null(strstr(err, "per-recipient groups"));
    free(big);
    /* non-UTF-8 values are repaired, the original message kept as bytes */
    const char in[] = "Content-Type: multipart/report; boundary=B\r\n\r\n"
                      "--B\r\nContent-Type: message/delivery-status\r\n\r\n"
                      "Reporting-MTA: dns; m\xffx\r\n\r\nFinal-Recipient: rfc822; a@b\r\n"
                      "Action: failed\r\nStatus: 5.0.0 caf\xe9\r\nX-\xc3\x28: v\r\n"
                      "--B\r\nContent-Type: message/rfc822\r\n\r\nSubject: \xff\r\n\r\nx\r\n--B--\r\n";
    assert_int_equal(rfc3464_parse(in, sizeof(in) - 1, &r, err, sizeof(err)), 0);
    assert_string_equal(path_str(r, "per_message.reporting_mta.name"), "m\xef\xbf\xbdx");
    assert_string_equal(path_str(r, "per_recipient.0.status.comment"), "caf\xef\xbf\xbd");
    assert_true(json_is_array(json_object_get(r, "original_message")));
    char *s = json_dumps(r, 0);
    assert_non_null(s);
    free(s);
    json_decref(r);
}

static json_t *arf_file(const char *name)
{
    size_t n;
    char *d = slurp(name, &n);
    json_t *r = NULL;
    char err[256] = "";
    if (arf_parse(d, n, &r, err, sizeof(err)))
        fail_msg("%s: %s", name, err);
    free(d);
    assert_non_null(r);
    return r;
}

static void test_arf(void **st)
{
    (void)st;
    json_t *a = arf_file("rfc5965_b.eml");
    assert_string_equal(path_str(a, "feedback_type"), "abuse");
    assert_string_equal(path_str(a, "user_agent"), "SomeGenerator/1.0");
    assert_string_equal(path_str(a, "version"), "1");
    assert_string_equal(path_str(a, "original_mail_from"), "somespammer@example.net");
    assert_string_equal(path_str(a, "original_rcpto_to.0"), "user@example.com");
    assert_string_equal(path_str(a, "reporting_mta.name"), "mail.example.com");
    assert_string_equal(path_str(a, "source_ip"), "192.0.2.1");
    assert_string_equal(path_str(a, "authentication_results.0"),
                        "mail.example.com; spf=fail smtp.mail=somespammer@example.com");
    assert_string_equal(path_str(a, "reported_uri.1"), "mailto:user@example.com");
    assert_string_equal(path_str(a, "extensions.removal-recipient.0"), "user@example.com");
    assert_true(json_is_null(json_object_get(a, "incidents")));
    assert_true(json_is_null(json_object_get(a, "supplemental_trace")));
    /* "EDT" is an obsolete zone RFC 5322 still reads: -0400 */
    assert_string_equal(path_str(a, "arrival_date"), "2005-03-08T18:00:00Z");
    assert_non_null(strstr(path_str(a, "original_message"), "Spam Spam Spam\nSpam"));
    json_decref(a);

    json_t *j = arf_file("jmrp.eml");
    assert_string_equal(path_str(j, "supplemental_trace.recipient"), "jane@outlook.com");
    assert_null(json_object_get(json_object_get(j, "supplemental_trace"), "_@_"));
    json_decref(j);
    json_t *y = arf_file("yahoo_arf.eml");
    assert_int_equal(path_int(y, "incidents"), 1);
    assert_string_equal(path_str(y, "arrival_date"), "2026-03-06T03:10:00Z"); /* Received-Date */
    assert_string_equal(path_str(y, "original_rcpto_to.0"), "reader@yahoo.com");
    json_decref(y);

    /* a DSN is not an ARF; an ARF without its part or fields is malformed */
    size_t n;
    char *d = slurp("gmail.eml", &n);
    json_t *r = (json_t *)1;
    char err[256] = "";
    assert_int_equal(arf_parse(d, n, &r, err, sizeof(err)), 0);
    assert_null(r);
    free(d);
    static const struct {
        const char *in, *err;
    } bad[] = {
        {"Content-Type: multipart/report; report-type=feedback-report; boundary=B\r\n\r\n"
         "--B\r\nContent-Type: text/plain\r\n\r\nx\r\n--B--\r\n",
         "feedback-report part missing"},
        {"Content-Type: multipart/report; report-type=feedback-report; boundary=B\r\n\r\n"
         "--B\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\n"
         "Version: 1\r\n--B--\r\n",
         "required field user-agent is missing"},
        {"Content-Type: multipart/report; report-type=feedback-report; boundary=B\r\n\r\n"
         "--B\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\n"
         "User-Agent: x\r\nVersion: 1\r\nIncidents: many\r\n--B--\r\n",
         "incidents: invalid count"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++) {
        r = NULL;
        int rc = arf_parse(bad[i].in, strlen(bad[i].in), &r, err, sizeof(err));
        if (rc != KERR_PARSE || !strstr(err, bad[i].err))
            fail_msg("arf case %zu: rc %d err '%s'", i, rc, err);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rfc_examples),
        cmocka_unit_test(test_providers),
        cmocka_unit_test(test_not_reports_and_malformed),
        cmocka_unit_test(test_limits_and_bytes),
        cmocka_unit_test(test_arf),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
