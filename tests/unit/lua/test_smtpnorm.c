/* Unit tests for src/lua/lib/smtpnorm.c (kumo.string.normalize_smtp_response):
 * the example of the reference page and one case per recognizer. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "lua/lib/smtpnorm.h"

static void check(const char *in, const char *want)
{
    size_t n;
    char *out = smtpnorm_normalize(in, strlen(in), &n);
    assert_non_null(out);
    if (strcmp(out, want) != 0)
        fail_msg("normalize(%s)\n  got  %s\n  want %s", in, out, want);
    assert_int_equal(n, strlen(want));
    free(out);
}

static void test_reference_example(void **state)
{
    (void)state;
    check("550 5.1.1 The email account that you tried to reach does not exist.\n"
          "Please try double-checking the recipient's email address for typos\n"
          "or unnecessary spaces. For more information, go to\n"
          "https://support.google.com/mail/?p=NoSuchUser "
          "41be03b00d2f7-b93bf44f0c0si6882731a12.803 - gsmtp",
          "550 5.1.1 The email account that you tried to reach does not exist. "
          "Please try double-checking the recipient's email address for typos "
          "or unnecessary spaces. For more information, go to "
          "https://support.google.com/mail/?p=NoSuchUser {hash} - gsmtp");
}

static void test_recognizers(void **state)
{
    (void)state;
    check("retry again at 2025-11-06T17:11:34.261306612Z", "retry again at {timestamp}");
    check("at 2025-11-06T17:11:34+01:00 ok", "at {timestamp} ok");
    check("a uuid 10aa5da5-3f3b-4176-beb9-32875830f082", "a uuid {uuid}");
    check("{10aa5da5-3f3b-4176-beb9-32875830f082}x", "{10aa5da5-3f3b-4176-beb9-32875830f082}x");
    check("aGVsbG8uCg==", "{base64}");
    check("hello aGVsbG8K aGVsbG8K", "hello {base64} {base64}");
    check("hello", "hello");
    check("does that work with this mail", "does that work with this mail");
    check("421 4.1.0 10.0.0.1 throttled try later", "421 4.1.0 {ipaddr} throttled try later");
    check("421 4.1.0 ::1 throttled", "421 4.1.0 {ipaddr} throttled");
    check("Accepting connection from 42.69.10.20:25", "Accepting connection from {ipaddr}");
    check("duration 00:10:34", "duration 00:10:34");
    check("rejecting mail for some.body@gmail.com", "rejecting mail for {email}");
    check("OK ids=8a5475ccbbc611eda12250ebf67f93bd", "OK ids={uuid}");
    check("a=b=aGVsbG8K", "a=b={base64}");
    check("550 Mail is rejected by recipients [aGVsbG8uCg== IP: 10.10.10.10]. "
          "https://service.mail.qq.com/detail/0/92.",
          "550 Mail is rejected by recipients {base64} IP: {ipaddr} "
          "https://service.mail.qq.com/detail/0/92.");
    check("header (RFC5322) in", "header RFC5322 in");
    check("Next due in 11s 999ms 990us 55ns at 2026-04-05T07:34:04.198063031Z",
          "Next due in {duration} at {timestamp}");
    check("P23DT23H P4Y P1Y2M3DT4H5M6S", "{duration} {duration} {duration}");
    check("P1Y2M3DT4H5M6Shello", "{hash}");
    check("abc11s 999ms", "abc11s {duration}");
    check("2year 1month 3day", "{duration}");
    check("5h 30m", "{duration}");
    check("2yearhello", "2yearhello");
    check("  many   spaces\t\there ", "many spaces here");
    check("", "");
}

static void test_hostile(void **state)
{
    (void)state;
    /* invalid UTF-8, NULs, long runs: no crash, bytes kept */
    const char in[] = "\xff\xfe abc\x80 ((([[[ ]]])))";
    size_t n;
    char *out = smtpnorm_normalize(in, sizeof(in) - 1, &n);
    assert_non_null(out);
    free(out);
    size_t big = 1 << 20;
    char *s = malloc(big);
    assert_non_null(s);
    for (size_t i = 0; i < big; i++)
        s[i] = "1s ["[i % 4];
    out = smtpnorm_normalize(s, big, &n);
    assert_non_null(out);
    free(out);
    free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reference_example),
        cmocka_unit_test(test_recognizers),
        cmocka_unit_test(test_hostile),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
