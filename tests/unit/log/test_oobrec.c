/* Unit tests for src/log/oobrec.c: the log_oob / log_arf values, which
 * parser decides (ARF before DSN, Ignore skips), relay per disposition,
 * malformed reports reported, and the OOB record built from one
 * per-recipient entry (code and text of the diagnostic, enhanced code from
 * Status, Original- before Final-Recipient, only failures). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/kerr.h"
#include "log/oobrec.h"

#define DSN                                                                                        \
    "Content-Type: multipart/report; report-type=delivery-status; boundary=B\r\n\r\n"             \
    "--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.r.test\r\n\r\n"
#define ARF                                                                                        \
    "Content-Type: multipart/report; report-type=feedback-report; boundary=B\r\n\r\n"             \
    "--B\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\n"                 \
    "User-Agent: x/1\r\nVersion: 1\r\n--B--\r\n"

static void test_disp_and_detect(void **st)
{
    (void)st;
    oobrec_disp d;
    assert_int_equal(oobrec_disp_parse("LogThenDrop", &d), 0);
    assert_int_equal(d, OOBREC_LOG_THEN_DROP);
    assert_int_equal(oobrec_disp_parse("LogThenRelay", &d), 0);
    assert_int_equal(d, OOBREC_LOG_THEN_RELAY);
    assert_int_equal(oobrec_disp_parse("Ignore", &d), 0);
    assert_int_equal(d, OOBREC_IGNORE);
    assert_int_equal(oobrec_disp_parse("yes", &d), KERR_PARSE);

    const char dsn[] = DSN "Final-Recipient: rfc822; a@b\r\nAction: failed\r\nStatus: 5.0.0\r\n--B--\r\n";
    char err[320];
    bool bad;
    oobrec_report *r = oobrec_detect(dsn, sizeof(dsn) - 1, OOBREC_LOG_THEN_DROP,
                                     OOBREC_LOG_THEN_RELAY, &bad, err, sizeof(err));
    assert_non_null(r);
    assert_false(bad);
    assert_int_equal(r->type, LOGREC_OOB);
    assert_false(r->relay);
    oobrec_free(r);
    assert_null(oobrec_detect(dsn, sizeof(dsn) - 1, OOBREC_IGNORE, OOBREC_LOG_THEN_RELAY, &bad,
                              err, sizeof(err)));
    assert_false(bad);
    r = oobrec_detect(ARF, strlen(ARF), OOBREC_LOG_THEN_DROP, OOBREC_LOG_THEN_RELAY, &bad, err,
                      sizeof(err));
    assert_non_null(r);
    assert_int_equal(r->type, LOGREC_FEEDBACK);
    assert_true(r->relay);
    oobrec_free(r);
    assert_null(oobrec_detect(ARF, strlen(ARF), OOBREC_LOG_THEN_DROP, OOBREC_IGNORE, &bad, err,
                              sizeof(err)));
    const char broken[] = DSN "Final-Recipient: rfc822; a@b\r\n--B--\r\n";
    assert_null(oobrec_detect(broken, sizeof(broken) - 1, OOBREC_LOG_THEN_DROP, OOBREC_IGNORE,
                              &bad, err, sizeof(err)));
    assert_true(bad);
    assert_non_null(strstr(err, "not a valid RFC 3464 report: per-recipient group 1: required"));
    assert_null(oobrec_detect("Subject: x\r\n\r\nhi\r\n", 18, OOBREC_LOG_THEN_DROP,
                              OOBREC_LOG_THEN_DROP, &bad, err, sizeof(err)));
    assert_false(bad);
}

static void test_build(void **st)
{
    (void)st;
    const char dsn[] =
        DSN "Original-Recipient: rfc822; <orig@b.test>\r\nFinal-Recipient: rfc822; fin@b.test\r\n"
            "Action: failed\r\nStatus: 5.2.2\r\nRemote-MTA: dns; mx.b.test\r\n"
            "Diagnostic-Code: smtp; 552-5.2.2 mailbox full\r\n 552 5.2.2 really\r\n"
            "Last-Attempt-Date: Tue, 1 Jul 2003 10:52:37 +0000\r\n\r\n"
            "Final-Recipient: rfc822; later@b.test\r\nAction: delayed\r\nStatus: 4.0.0\r\n\r\n"
            "Final-Recipient: rfc822; x@b.test\r\nAction: failed\r\nStatus: 5.0.0\r\n"
            "Diagnostic-Code: X-Unix; exit 67\r\n--B--\r\n";
    char err[320];
    bool bad;
    oobrec_report *rep = oobrec_detect(dsn, sizeof(dsn) - 1, OOBREC_LOG_THEN_DROP, OOBREC_IGNORE,
                                       &bad, err, sizeof(err));
    assert_non_null(rep);
    const char *rcpt0 = "bounces@s.test";
    logrec base = {0};
    base.type = LOGREC_RECEPTION;
    base.recipients = &rcpt0;
    base.n_recipients = 1;
    base.sender = "mailer-daemon@b.test";
    base.peer_addr = "192.0.2.7";
    json_t *pr = json_object_get(rep->report, "per_recipient");
    logrec r;
    const char *who;
    char content[256];
    assert_true(oobrec_build(rep->report, json_array_get(pr, 0), &base, &r, &who, content,
                             sizeof(content)));
    assert_int_equal(r.type, LOGREC_OOB);
    assert_string_equal(r.sender, "bounces@s.test");
    assert_string_equal(r.recipients[0], "orig@b.test");
    assert_int_equal(r.response.code, 552);
    assert_int_equal(r.response.enh_class, 5);
    assert_int_equal(r.response.enh_subject, 2);
    assert_int_equal(r.response.enh_detail, 2);
    assert_string_equal(r.response.content, "5.2.2 mailbox full 552 5.2.2 really");
    assert_string_equal(r.site, "mx.b.test");
    assert_string_equal(r.peer_name, "mx.r.test");
    assert_string_equal(r.peer_addr, "192.0.2.7");
    assert_true(r.timestamp_ns == 1057056757LL * 1000000000LL);
    assert_false(oobrec_build(rep->report, json_array_get(pr, 1), &base, &r, &who, content,
                              sizeof(content)));
    assert_true(oobrec_build(rep->report, json_array_get(pr, 2), &base, &r, &who, content,
                             sizeof(content)));
    assert_string_equal(r.recipients[0], "x@b.test");
    assert_int_equal(r.response.code, 550); /* not an smtp diagnostic */
    assert_string_equal(r.response.content, "");
    assert_true(r.timestamp_ns == 0); /* now */
    oobrec_free(rep);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_disp_and_detect),
        cmocka_unit_test(test_build),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
