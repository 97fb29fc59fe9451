/* Unit tests for src/lua/lib/bounce.c: kumod's share/bounce/rules.toml over a
 * table of real-world replies (the texts that Gmail, Microsoft, Yahoo/AOL,
 * Apple, Comcast, Mimecast and stock Postfix/sendmail/Exchange document or
 * send, and kumod's own), rule order (first loaded wins, as in KumoMTA's
 * test_rule_order), the reference page's iana.toml excerpt, errors naming
 * file, category and pattern, joins that PCRE2 cannot hold, threads, and
 * the cost of one classification (printed; BOUNCE_BENCH_N to change). */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/kerr.h"
#include "lua/lib/bounce.h"

#define RULES KUMOD_SOURCE_DIR "/share/bounce/rules.toml"

static bounce_classifier *from_text(const char *toml, char *err, size_t errlen)
{
    bounce_rules *rs = bounce_rules_new();
    assert_non_null(rs);
    if (bounce_rules_add_text(rs, toml, strlen(toml), BOUNCE_TOML, "t.toml", err, errlen) != 0) {
        bounce_rules_free(rs);
        return NULL;
    }
    bounce_classifier *c = bounce_classifier_build(rs, err, errlen);
    bounce_rules_free(rs);
    return c;
}

static bounce_classifier *shipped(void)
{
    char err[512];
    bounce_rules *rs = bounce_rules_new();
    if (bounce_rules_add_file(rs, RULES, err, sizeof(err)) != 0)
        fail_msg("%s", err);
    assert_true(bounce_rules_count(rs) > 100);
    bounce_classifier *c = bounce_classifier_build(rs, err, sizeof(err));
    if (!c)
        fail_msg("%s", err);
    bounce_rules_free(rs);
    return c;
}

static const struct row {
    const char *line, *want;
} table[] = {
    /* Gmail (support.google.com/a/answer/3726730) */
    {"550 5.1.1 The email account that you tried to reach does not exist. Please try "
     "double-checking the recipient's email address for typos or unnecessary spaces. "
     "https://support.google.com/mail/?p=NoSuchUser",
     "InvalidRecipient"},
    {"552 5.2.2 The email account that you tried to reach is over quota. Please direct the "
     "recipient to https://support.google.com/mail/?p=OverQuotaPerm",
     "QuotaIssues"},
    {"452 4.2.2 The email account that you tried to reach is over quota. Please direct the "
     "recipient to https://support.google.com/mail/?p=OverQuotaTemp",
     "QuotaIssues"},
    {"550 5.2.1 The email account that you tried to reach is disabled. "
     "https://support.google.com/mail/?p=DisabledUser",
     "InactiveMailbox"},
    {"550 5.7.26 This mail has been blocked because the sender is unauthenticated. Gmail "
     "requires all senders to authenticate with either SPF or DKIM.",
     "AuthenticationFailed"},
    {"550 5.7.26 Unauthenticated email from example.com is not accepted due to domain's DMARC "
     "policy. Please contact the administrator of example.com domain",
     "AuthenticationFailed"},
    {"421 4.7.28 Our system has detected an unusual rate of unsolicited mail originating from "
     "your IP address. To protect our users from spam, mail sent from your IP address has been "
     "temporarily rate limited.",
     "SpamBlock"},
    {"550 5.7.1 Our system has detected that this message is likely unsolicited mail. To reduce "
     "the amount of spam sent to Gmail, this message has been blocked.",
     "SpamContent"},
    {"550 5.7.25 The IP address sending this message does not have a PTR record setup, or the "
     "corresponding forward DNS entry does not point to the sending IP.",
     "BadConfiguration"},
    {"421 4.7.0 This message is suspicious due to the very low reputation of the sending IP "
     "address. To protect our users from spam, mail sent from your IP address has been "
     "temporarily rate limited.",
     "SpamBlock"},
    {"550 5.7.1 [192.0.2.1] The IP you're using to send mail is not authorized to send email "
     "directly to our servers. Please use the SMTP relay at your service provider instead.",
     "PolicyRelated"},
    {"450 4.2.1 The user you are trying to contact is receiving mail at a rate that prevents "
     "additional messages from being delivered. Please resend your message at a later time.",
     "TransientFailure"},
    {"421 4.7.0 TLS required for RCPT domain, closing connection.", "BadConfiguration"},
    {"552 5.7.0 Our system detected an illegal attachment on your message. Please visit "
     "http://mail.google.com/support/bin/answer.py?answer=6590 to review our attachment "
     "guidelines.",
     "ProhibitedAttachment"},
    {"550 5.7.23 The message was rejected because of Sender Policy Framework violation",
     "AuthenticationFailed"},
    /* Microsoft: Outlook.com and Exchange Online NDRs */
    {"550 5.5.0 Requested action not taken: mailbox unavailable (S2017062302). "
     "[AM0PR01MB1234.eurprd01.prod.exchangelabs.com]",
     "InvalidRecipient"},
    {"550 5.7.1 Unfortunately, messages from [192.0.2.1] weren't sent. Please contact your "
     "Internet service provider since part of their network is on our block list (S3150). You "
     "can also refer your provider to http://mail.live.com/mail/troubleshooting.aspx#errors.",
     "SpamBlock"},
    {"550 5.7.1 Service unavailable, Client host [192.0.2.1] blocked using Spamhaus. To request "
     "removal from this list see https://www.spamhaus.org/query/ip/192.0.2.1 (AS3130).",
     "SpamBlock"},
    {"550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
     "InvalidRecipient"},
    {"550 5.7.708 Service unavailable. Access denied, traffic not accepted from this IP.",
     "SpamBlock"},
    {"550 5.4.1 Recipient address rejected: Access denied. AS(201806281) "
     "[DM6NAM11FT011.eop-nam11.prod.protection.outlook.com]",
     "InvalidRecipient"},
    {"550 5.7.606 Access denied, banned sending IP [192.0.2.1]. To request removal from this "
     "list please visit https://sender.office.com/ and follow the directions.",
     "SpamBlock"},
    {"451 4.7.500 Server busy. Please try again later from [192.0.2.1]. (S77719)",
     "TransientFailure"},
    {"550 5.7.64 TenantAttribution; Relay Access Denied", "RelayDenied"},
    {"452 4.5.3 Too many recipients", "TooManyRecipients"},
    {"550 5.7.520 Access denied, Your organization does not allow external forwarding.",
     "PolicyRelated"},
    {"554 5.2.2 mailbox full; "
     "STOREDRV.Deliver.Exception:QuotaExceededException.MapiExceptionShutoffQuotaExceeded",
     "QuotaIssues"},
    {"550 5.1.8 Access denied, bad outbound sender", "InvalidSender"},
    {"554 5.4.14 Hop count exceeded - possible mail loop ATTR34", "RoutingErrors"},
    /* Yahoo and AOL (senders.yahooinc.com/smtp-error-codes) */
    {"554 delivery error: dd This user doesn't have a yahoo.com account (someone@yahoo.com) [0] "
     "- mta1234.mail.bf1.yahoo.com",
     "InvalidRecipient"},
    {"421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume "
     "or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes",
     "SpamBlock"},
    {"553 5.7.1 [BL21] Connections will not be accepted from 192.0.2.1, because the ip is in "
     "Spamhaus's list; see https://postmaster.yahooinc.com/error-codes",
     "SpamBlock"},
    {"554 5.7.9 Message not accepted for policy reasons. See "
     "https://postmaster.yahooinc.com/error-codes",
     "PolicyRelated"},
    {"552 1 Requested mail action aborted, mailbox not found", "InvalidRecipient"},
    {"451 Message temporarily deferred - [160]", "TransientFailure"},
    {"550 5.7.9 This mail has been blocked because the sender is unauthenticated. Yahoo requires "
     "all senders to authenticate with either SPF or DKIM.",
     "AuthenticationFailed"},
    {"554 5.7.1 [P4] Message blocked due to spam content in the message.", "SpamContent"},
    /* Apple iCloud, Comcast, Mimecast */
    {"554 5.7.1 [CS01] Message rejected due to local policy. Please visit "
     "https://support.apple.com/en-us/HT204137",
     "PolicyRelated"},
    {"550 5.1.1 <someone@icloud.com>: inactive email address", "InactiveMailbox"},
    {"554 5.7.1 192.0.2.1 Comcast block for spam. Please see "
     "http://postmaster.comcast.net/smtp-error-codes.php#BL000000",
     "SpamBlock"},
    {"550 Administrative prohibition - envelope blocked", "PolicyRelated"},
    {"550 Invalid Recipient - https://community.mimecast.com/docs/DOC-1369#550",
     "InvalidRecipient"},
    /* Postfix, sendmail, Exchange, amavis defaults */
    {"550 5.1.1 <bob@example.com>: Recipient address rejected: User unknown in virtual mailbox "
     "table",
     "InvalidRecipient"},
    {"450 4.2.0 <bob@example.com>: Recipient address rejected: Greylisted, see "
     "http://postgrey.schweikert.ch/help/example.com.html",
     "TransientFailure"},
    {"554 5.7.1 <bob@example.com>: Relay access denied", "RelayDenied"},
    {"450 4.1.8 <alice@bad.example>: Sender address rejected: Domain not found", "InvalidSender"},
    {"450 4.1.2 <bob@nonexistent.example>: Recipient address rejected: Domain not found",
     "BadDomain"},
    {"554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org; "
     "https://www.spamhaus.org/query/ip/192.0.2.1",
     "SpamBlock"},
    {"552 5.3.4 Message size exceeds fixed limit", "QuotaIssues"},
    {"554 5.7.0 Reject, id=12345-01 - INFECTED: Eicar-Signature", "VirusRelated"},
    {"421 4.4.2 mx.example.com Error: timeout exceeded", "BadConnection"},
    {"550 5.1.1 <x@example.com>... User unknown", "InvalidRecipient"},
    {"553 5.1.3 <x@@example.com>... User address required", "InvalidRecipient"},
    {"500 5.5.1 Command unrecognized: \"XYZZY\"", "ProtocolErrors"},
    {"503 5.5.1 Error: need MAIL command", "ProtocolErrors"},
    {"554 5.6.0 Message has invalid header", "ContentRelated"},
    {"451 4.3.0 Mail server temporarily rejected message.", "TransientFailure"},
    {"452 4.3.1 Insufficient system storage", "QuotaIssues"},
    {"421 4.3.2 Service not available, closing transmission channel", "TransientFailure"},
    {"550 5.4.6 Routing loop detected", "RoutingErrors"},
    {"530 5.7.0 Must issue a STARTTLS command first", "BadConfiguration"},
    {"535 5.7.8 Authentication credentials invalid", "AuthenticationFailed"},
    {"554 5.7.5 Permanent error evaluating DMARC policy", "AuthenticationFailed"},
    {"450 4.7.1 Client host rejected: cannot find your hostname, [192.0.2.1]", "BadConfiguration"},
    {"554 5.7.1 Your access to this mail system has been rejected due to the sending MTA's poor "
     "reputation.",
     "SpamBlock"},
    {"421 Too many concurrent SMTP connections from this IP address; please try again later.",
     "BadConnection"},
    {"552 5.2.2 Quota exceeded (mailbox for user is full)", "QuotaIssues"},
    {"451 4.4.3 Temporary lookup failure", "DNSFailure"},
    {"550 5.2.1 Mailbox disabled for this recipient", "InactiveMailbox"},
    {"550 5.1.6 Recipient mailbox has moved, no forwarding address", "InactiveMailbox"},
    {"556 5.1.10 Recipient address has a null MX", "BadDomain"},
    /* kumod's own records */
    {"551 5.4.7 Next delivery time would be 2h after creation, which exceeds max_age=1h",
     "MessageExpired"},
    {"400 KumoMTA internal: failed to connect to any candidate hosts: 127.0.0.1:1: Connection "
     "refused",
     "BadConnection"},
    {"451 4.4.4 KumoMTA internal: failed to resolve MX: timeout", "DNSFailure"},
    {"451 4.4.4 failed to resolve queue nx.test: MX lookup for nx.test failed after 2ms: "
     "NXDOMAIN",
     "DNSFailure"},
    {"550 5.4.4 mx.example.com:192.0.2.1 is on the list of prohibited_hosts", "RoutingErrors"},
    /* nothing to go on */
    {"250 2.0.0 OK", NULL},
    {"550 No", NULL},
};

static void test_table(void **state)
{
    (void)state;
    assert_true(sizeof(table) / sizeof(table[0]) >= 50);
    bounce_classifier *c = shipped();
    int bad = 0;
    for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++) {
        const char *got = bounce_classify_line(c, table[i].line, strlen(table[i].line));
        const char *want = table[i].want;
        if (!!got != !!want || (got && strcmp(got, want) != 0)) {
            print_error("row %zu: %s\n  got %s, want %s\n", i, table[i].line,
                        got ? got : "(none)", want ? want : "(none)");
            bad++;
        }
    }
    assert_int_equal(bad, 0);
    /* the parts form: "CODE C.S.D CONTENT", or "CODE CONTENT" without */
    assert_string_equal(bounce_classify(c, 550, 5, 1, 1, "User unknown"), "InvalidRecipient");
    assert_string_equal(bounce_classify(c, 552, 5, 2, 2, "full"), "QuotaIssues");
    assert_null(bounce_classify(c, 552, 0, 0, 0, "5.2.2"));
    assert_string_equal(bounce_classify(c, 451, 0, 0, 0, NULL), "TransientFailure");
    bounce_classifier_free(c);
}

/* KumoMTA's own test_rule_order: first file, first category, first rule */
static void test_rule_order(void **state)
{
    (void)state;
    char err[512];
    bounce_rules *rs = bounce_rules_new();
    const char *f1 = "[rules]\nfoo = [\"woot\", \"aaa\"]\nbar = [\"woot\", \"aaa\", \"bbb\"]\n";
    const char *f2 = "[rules]\nsecond_file = [\"bbb\", \"ccc\"]\n";
    assert_int_equal(bounce_rules_add_text(rs, f1, strlen(f1), BOUNCE_TOML, "f1", err, 512), 0);
    assert_int_equal(bounce_rules_add_text(rs, f2, strlen(f2), BOUNCE_TOML, "f2", err, 512), 0);
    bounce_classifier *c = bounce_classifier_build(rs, err, sizeof(err));
    assert_non_null(c);
    assert_string_equal(bounce_classify_line(c, "woot", 4), "foo");
    assert_string_equal(bounce_classify_line(c, "aaa", 3), "foo");
    assert_string_equal(bounce_classify_line(c, "bbb", 3), "bar");
    assert_string_equal(bounce_classify_line(c, "ccc", 3), "second_file");
    /* position in the line does not matter, rule order does */
    assert_string_equal(bounce_classify_line(c, "ccc bbb aaa", 11), "foo");
    assert_null(bounce_classify_line(c, "zzz", 3));
    bounce_classifier_free(c);
    bounce_rules_free(rs);

    /* category order is the file's, not alphabetical (toml++ sorts) */
    c = from_text("[rules]\nZeta = ['x']\nAlpha = ['x']\n", err, sizeof(err));
    assert_non_null(c);
    assert_string_equal(bounce_classify_line(c, "x", 1), "Zeta");
    bounce_classifier_free(c);

    /* JSON files keep their order too */
    rs = bounce_rules_new();
    const char *j = "{\"rules\": {\"Zeta\": [\"x\"], \"Alpha\": [\"x\", \"y\"]}}";
    assert_int_equal(bounce_rules_add_text(rs, j, strlen(j), BOUNCE_JSON, "j", err, 512), 0);
    c = bounce_classifier_build(rs, err, sizeof(err));
    assert_string_equal(bounce_classify_line(c, "x", 1), "Zeta");
    assert_string_equal(bounce_classify_line(c, "y", 1), "Alpha");
    bounce_classifier_free(c);
    bounce_rules_free(rs);
}

/* The reference page's iana.toml excerpt, with KumoMTA's own test corpus */
static void test_reference_excerpt(void **state)
{
    (void)state;
    static const char excerpt[] =
        "# This file contains rules that match SMTP ENHANCEDSTATUSCODES\n"
        "[rules]\n"
        "InvalidRecipient = [\n"
        "  \"^(451|550) [45]\\\\.1\\\\.[1234] \",\n"
        "  \"^45[02] [45]\\\\.2\\\\.4 \", # Mailing list expansion\n"
        "  \"^5\\\\d{2} [45]\\\\.7\\\\.17 \", # RRVS: Mailbox owner has changed\n"
        "]\n"
        "BadDomain = [\n"
        "  \"^(451|550) [45]\\\\.1\\\\.10 \", # NULL MX\n"
        "  \"^5\\\\d{2} [45]\\\\.7\\\\.18 \", # RRVS: domain owner has changed\n"
        "]\n"
        "InactiveMailbox = [\n"
        "  \"^(451|550) [45]\\\\.1\\\\.[6] \",\n"
        "  \"^[45]\\\\d{2} [45]\\\\.2\\\\.1 \",\n"
        "  \"^525 [45]\\\\.7\\\\.13 \", # User account disabled\n"
        "]\n"
        "InvalidSender = [\n"
        "  \"^(451|550) [45]\\\\.1\\\\.[78] \",\n"
        "  \"^\\\\d{3} [45]\\\\.7\\\\.27 \", # Send address has NULL MX\n"
        "]\n"
        "QuotaIssues = [\n"
        "  \"^552 [45]\\\\.2\\\\.2 \",\n"
        "  \"^552 [45]\\\\.2\\\\.3 \",\n"
        "  \"^452 [45]\\\\.3\\\\.1 \", # Mail System Full\n"
        "  \"^55[24] [45]\\\\.3\\\\.4 \", # Message too large for system\n"
        "]\n";
    char err[512];
    bounce_classifier *c = from_text(excerpt, err, sizeof(err));
    if (!c)
        fail_msg("%s", err);
    struct row rows[] = {
        {"552 5.2.2 mailbox is stuffed", "QuotaIssues"},
        {"552 4.2.2 mailbox is stuffed", "QuotaIssues"},
        {"352 5.2.2 mailbox is stuffed", NULL},
        {"525 4.7.13 user account is disabled", "InactiveMailbox"},
        {"551 4.7.17 mailbox owner has changed", "InvalidRecipient"},
        {"551 4.7.18 domain owner has changed", "BadDomain"},
        {"550 5.1.10 null mx", "BadDomain"},
        {"550 5.1.1 no such user", "InvalidRecipient"},
        {"550 5.1.7 bad sender", "InvalidSender"},
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        const char *got = bounce_classify_line(c, rows[i].line, strlen(rows[i].line));
        if (!rows[i].want)
            assert_null(got);
        else if (!got || strcmp(got, rows[i].want))
            fail_msg("%s: got %s, want %s", rows[i].line, got ? got : "(none)", rows[i].want);
    }
    bounce_classifier_free(c);
}

static void expect_error(const char *toml, const char *const *parts)
{
    char err[512] = "";
    bounce_classifier *c = from_text(toml, err, sizeof(err));
    if (c)
        fail_msg("accepted: %s", toml);
    for (const char *const *p = parts; *p; p++)
        if (!strstr(err, *p))
            fail_msg("error '%s' lacks '%s'", err, *p);
}

static void test_errors(void **state)
{
    (void)state;
    expect_error("[rules]\nSpamBlock = ['ok', '(unclosed']\n",
                 (const char *[]){"t.toml", "category 'SpamBlock'", "pattern '(unclosed'",
                                  "missing closing parenthesis", NULL});
    /* Rust syntax that PCRE2 would read otherwise: refused by the translator */
    expect_error("[rules]\nSpamBlock = ['a\\Kb']\n",
                 (const char *[]){"t.toml", "SpamBlock", "a\\Kb", "unsupported", NULL});
    expect_error("[rules]\nSpamBlock = ['(a)\\1']\n",
                 (const char *[]){"SpamBlock", "backreference", NULL});
    expect_error("[rules]\nSpamBlock = ['(*MARK:x)a']\n", (const char *[]){"SpamBlock", NULL});
    expect_error("[rules]\nSpamBlock = 'x'\n",
                 (const char *[]){"t.toml", "category 'SpamBlock' must be an array",
                                  "not a string", NULL});
    expect_error("[rules]\nSpamBlock = ['x', 3]\n",
                 (const char *[]){"category 'SpamBlock', element 2", "not an integer", NULL});
    expect_error("rules = 1\n", (const char *[]){"'rules' must be a table", NULL});
    expect_error("[rule]\nSpamBlock = ['x']\n", (const char *[]){"no 'rules' table", NULL});
    expect_error("[rules]\ninvalidrecipient = ['x']\n",
                 (const char *[]){"unknown category 'invalidrecipient'", "InvalidRecipient",
                                  NULL});
    expect_error("[rules]\n\"\" = ['x']\n", (const char *[]){"may not be empty", NULL});
    expect_error("[rules\n", (const char *[]){"t.toml", "line 1", NULL});

    /* user-defined labels are fine (KumoMTA 2023.12.28) */
    char err[512];
    bounce_classifier *c = from_text("[rules]\nMyOwnLabel = ['x']\n", err, sizeof(err));
    assert_non_null(c);
    assert_string_equal(bounce_classify_line(c, "x", 1), "MyOwnLabel");
    bounce_classifier_free(c);

    /* files: the extension picks the format; a missing file names itself */
    bounce_rules *rs = bounce_rules_new();
    assert_int_equal(bounce_rules_add_file(rs, "/nonexistent/x.toml", err, sizeof(err)), KERR_IO);
    assert_non_null(strstr(err, "/nonexistent/x.toml"));
    assert_int_equal(bounce_rules_add_file(rs, "/etc/hostname", err, sizeof(err)), KERR_INVAL);
    assert_non_null(strstr(err, ".toml or .json"));
    /* a bad document leaves nothing behind */
    const char *half = "[rules]\nA = ['a']\nB = ['(']\n";
    assert_int_not_equal(
        bounce_rules_add_text(rs, half, strlen(half), BOUNCE_TOML, "h", err, sizeof(err)), 0);
    assert_int_equal(bounce_rules_count(rs), 0);
    bounce_rules_free(rs);
}

/* The join: flags stay inside each pattern, anchored patterns stay
 * anchored, x-mode comments cannot swallow the wrapper, named groups may
 * repeat, and a join too large for one program is split. */
static void test_join(void **state)
{
    (void)state;
    char err[512];
    bounce_classifier *c = from_text("[rules]\n"
                                     "A = ['^abc']\n"
                                     "B = ['(?i)HELLO']\n"
                                     "C = ['hello']\n"
                                     "D = ['(?x) x y z # a comment']\n"
                                     "E = ['(?P<n>q)', '(?P<n>r)$']\n"
                                     "F = ['a|b']\n",
                                     err, sizeof(err));
    if (!c)
        fail_msg("%s", err);
    assert_string_equal(bounce_classify_line(c, "abc", 3), "A");
    assert_string_equal(bounce_classify_line(c, "xabc hello", 10), "B"); /* ^ stays anchored */
    assert_string_equal(bounce_classify_line(c, "say Hello", 9), "B");
    assert_string_equal(bounce_classify_line(c, "xyz", 3), "D");
    assert_string_equal(bounce_classify_line(c, "q", 1), "E");
    assert_string_equal(bounce_classify_line(c, "r", 1), "E");
    assert_string_equal(bounce_classify_line(c, "rrb!", 4), "F"); /* r$ does not match */
    assert_null(bounce_classify_line(c, "zzz", 3));
    assert_string_equal(bounce_classify_line(c, "\xff\xfe b", 4), "F"); /* invalid UTF-8 */
    bounce_classifier_free(c);

    /* 3000 anchored rules of ~100 bytes: more than one PCRE2 program holds */
    size_t n = 3000;
    char *big = malloc(n * 200 + 32);
    size_t o = (size_t)sprintf(big, "[rules]\n");
    for (size_t i = 0; i < n; i++)
        o += (size_t)sprintf(big + o, "L%zu = ['^(?i)rule number %zu [a-z]{1,3}(?:alpha|beta|gamma)"
                                      "\\d+ end of %zu']\n",
                             i, i, i);
    c = from_text(big, err, sizeof(err));
    free(big);
    if (!c)
        fail_msg("%s", err);
    assert_true(bounce_classifier_programs(c) > 1);
    const char *l = "RULE NUMBER 2999 xybeta7 end of 2999";
    assert_string_equal(bounce_classify_line(c, l, strlen(l)), "L2999");
    l = "rule number 7 aalpha1 end of 7";
    assert_string_equal(bounce_classify_line(c, l, strlen(l)), "L7");
    bounce_classifier_free(c);
}

struct thr {
    bounce_classifier *c;
    int bad;
};

static void *classify_many(void *arg)
{
    struct thr *t = arg;
    for (int k = 0; k < 200; k++)
        for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++) {
            const char *got = bounce_classify_line(t->c, table[i].line, strlen(table[i].line));
            if (!!got != !!table[i].want || (got && strcmp(got, table[i].want)))
                t->bad++;
        }
    return NULL;
}

static void test_threads(void **state)
{
    (void)state;
    struct thr t[4];
    pthread_t th[4];
    bounce_classifier *c = shipped();
    for (int i = 0; i < 4; i++) {
        t[i] = (struct thr){c, 0};
        assert_int_equal(pthread_create(&th[i], NULL, classify_many, &t[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(t[i].bad, 0);
    }
    bounce_classifier_free(c);
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* ns per classification over the whole table with the shipped rules (the
 * mix of categorized and uncategorized lines, first and last categories) */
static void test_bench(void **state)
{
    (void)state;
    bounce_classifier *c = shipped();
    size_t rows = sizeof(table) / sizeof(table[0]);
    long n = getenv("BOUNCE_BENCH_N") ? atol(getenv("BOUNCE_BENCH_N")) : 200;
    size_t lens[sizeof(table) / sizeof(table[0])];
    for (size_t i = 0; i < rows; i++)
        lens[i] = strlen(table[i].line);
    volatile size_t sink = 0;
    int64_t t0 = now_ns();
    for (long k = 0; k < n; k++)
        for (size_t i = 0; i < rows; i++)
            sink += (size_t)(uintptr_t)bounce_classify_line(c, table[i].line, lens[i]);
    int64_t dt = now_ns() - t0;
    int64_t worst = 0;
    for (size_t i = 0; i < rows; i++) {
        int64_t a = now_ns();
        for (int k = 0; k < 50; k++)
            sink += (size_t)(uintptr_t)bounce_classify_line(c, table[i].line, lens[i]);
        int64_t d = (now_ns() - a) / 50;
        if (d > worst)
            worst = d;
    }
    (void)sink;
    printf("bounce classify: %zu programs, %.0f ns per classification (mean over %zu lines x "
           "%ld), worst line %lld ns\n",
           bounce_classifier_programs(c), (double)dt / ((double)n * (double)rows), rows, n,
           (long long)worst);
    bounce_classifier_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),  cmocka_unit_test(test_rule_order),
        cmocka_unit_test(test_reference_excerpt), cmocka_unit_test(test_errors),
        cmocka_unit_test(test_join),   cmocka_unit_test(test_threads),
        cmocka_unit_test(test_bench),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
