/* Unit tests for src/msg/spf.c and src/msg/dmarc.c (with src/msg/psl.c):
 * a table of SPF checks against a fake DNS (every result, include and
 * redirect, the 10-lookup and 2-void-lookup limits, MX and PTR, CIDR,
 * IPv6, macros with the RFC 7208 §7.4 examples, exp=), each run both with
 * every answer at hand and through the SPF_PENDING one-question-at-a-time
 * protocol (which must give the same outcome); record syntax; DMARC record
 * parsing, relaxed/strict alignment through the public suffix list and the
 * policy evaluation. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cmocka.h>

#include "core/kerr.h"
#include "msg/dmarc.h"
#include "msg/psl.h"
#include "msg/spf.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* The fake DNS: "TYPE name value" lines; TYPE FAIL makes every question
 * about name fail. A name with no line of the asked type is NODATA when
 * it has other lines, else NXDOMAIN. */
static const char *ZONE[] = {
    "TXT pass.test v=spf1 +all",
    "TXT fail.test v=spf1 -all",
    "TXT softfail.test v=spf1 ~all",
    "TXT neutral.test v=spf1 ?all",
    "TXT default.test v=spf1 ip4:10.9.9.9",
    "TXT notspf.test some other record",
    "TXT two.test v=spf1 -all",
    "TXT two.test v=spf1 +all",
    "TXT syntax.test v=spf1 ip4:300.1.1.1 -all",
    "TXT badmech.test v=spf1 foo -all",
    "TXT badcidr.test v=spf1 ip4:10.0.0.0/33 -all",
    "TXT ip.test v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 -all",
    "TXT a.test v=spf1 a -all",
    "A a.test 192.0.2.10",
    "AAAA a.test 2001:db8::10",
    "TXT acidr.test v=spf1 a:a.test/24 -all",
    "TXT mx.test v=spf1 mx -all",
    "MX mx.test mx1.mx.test.",
    "MX mx.test mx2.mx.test.",
    "A mx1.mx.test 198.51.100.1",
    "A mx2.mx.test 198.51.100.2",
    "TXT include.test v=spf1 include:pass-inner.test -all",
    "TXT pass-inner.test v=spf1 ip4:203.0.113.0/24 -all",
    "TXT include-none.test v=spf1 include:nothing.test -all",
    "TXT include-temp.test v=spf1 include:flaky.test -all",
    "FAIL flaky.test",
    "TXT redirect.test v=spf1 redirect=fail.test",
    "TXT redirect-none.test v=spf1 redirect=nothing.test",
    "TXT exists.test v=spf1 exists:%{ir}.%{l1r-}.lp._spf.%{d} -all",
    "A 1.2.0.192.strong.lp._spf.exists.test 127.0.0.2",
    "TXT ptr.test v=spf1 ptr -all",
    "PTR 192.0.2.20 host.ptr.test.",
    "PTR 192.0.2.20 other.example.",
    "A host.ptr.test 192.0.2.20",
    "A other.example 192.0.2.20",
    "TXT limit.test v=spf1 a:l1.test a:l2.test a:l3.test a:l4.test a:l5.test a:l6.test "
    "a:l7.test a:l8.test a:l9.test a:l10.test a:l11.test -all",
    "TXT tenlimit.test v=spf1 a:l1.test a:l2.test a:l3.test a:l4.test a:l5.test a:l6.test "
    "a:l7.test a:l8.test a:l9.test a:l10.test +all",
    "A l1.test 10.1.1.1", "A l2.test 10.1.1.1", "A l3.test 10.1.1.1", "A l4.test 10.1.1.1",
    "A l5.test 10.1.1.1", "A l6.test 10.1.1.1", "A l7.test 10.1.1.1", "A l8.test 10.1.1.1",
    "A l9.test 10.1.1.1", "A l10.test 10.1.1.1", "A l11.test 192.0.2.1",
    "TXT void.test v=spf1 a:v1.test a:v2.test a:v3.test +all",
    "TXT twovoid.test v=spf1 a:v1.test a:v2.test +all",
    "TXT loop.test v=spf1 include:loop.test -all",
    "TXT exp.test v=spf1 -all exp=explain.exp.test",
    "TXT explain.exp.test %{i} is not one of %{d}'s designated mail servers",
    "TXT temp-a.test v=spf1 a:flaky.test -all",
    "TXT mx-many.test v=spf1 mx -all",
    "MX mx-many.test m1.x.test.", "MX mx-many.test m2.x.test.", "MX mx-many.test m3.x.test.",
    "MX mx-many.test m4.x.test.", "MX mx-many.test m5.x.test.", "MX mx-many.test m6.x.test.",
    "MX mx-many.test m7.x.test.", "MX mx-many.test m8.x.test.", "MX mx-many.test m9.x.test.",
    "MX mx-many.test m10.x.test.", "MX mx-many.test m11.x.test.",
    "TXT case.test V=SPF1 IP4:192.0.2.1 -ALL",
    "TXT unknownmod.test v=spf1 foo=bar%{d} +all",
    "TXT dupredir.test v=spf1 redirect=a.test redirect=b.test",
    "TXT helo.test v=spf1 exists:%{h}.h.helo.test -all",
    "A mail.client.example.h.helo.test 127.0.0.2",
    "TXT pmacro.test v=spf1 exists:%{p}.p.pmacro.test -all",
    "A host.ptr.test.p.pmacro.test 127.0.0.2",
};

typedef struct fake {
    bool pending_mode;
    char known[512][300]; /* questions answered so far in pending mode */
    size_t n_known;
    const char *items[16];
    size_t n_items;
    char asked[64][300];
    size_t n_asked;
} fake;

static const char *qname(int t)
{
    switch (t) {
    case SPF_Q_A:
        return "A";
    case SPF_Q_AAAA:
        return "AAAA";
    case SPF_Q_MX:
        return "MX";
    case SPF_Q_TXT:
        return "TXT";
    default:
        return "PTR";
    }
}

static int lookup(void *ud, int qtype, const char *name, spf_answer *out)
{
    fake *f = ud;
    char key[300];
    snprintf(key, sizeof(key), "%s %s", qname(qtype), name);
    if (f->n_asked < 64)
        snprintf(f->asked[f->n_asked++], 300, "%s", key);
    if (f->pending_mode) {
        bool have = false;
        for (size_t i = 0; i < f->n_known; i++)
            have |= strcmp(f->known[i], key) == 0;
        if (!have)
            return SPF_PENDING;
    }
    f->n_items = 0;
    bool any = false;
    size_t kl = strlen(key);
    size_t nl = strlen(name);
    for (size_t i = 0; i < ARRAY_LEN(ZONE); i++) {
        const char *z = ZONE[i];
        if (strncmp(z, "FAIL ", 5) == 0 && strcmp(z + 5, name) == 0) {
            out->status = SPF_DNS_FAIL;
            out->error = "SERVFAIL";
            return 0;
        }
        const char *sp = strchr(z, ' ');
        if (strncasecmp(sp + 1, name, nl) == 0 && sp[1 + nl] == ' ')
            any = true;
        if (strncmp(z, key, kl) == 0 && z[kl] == ' ' && f->n_items < 16)
            f->items[f->n_items++] = z + kl + 1;
    }
    out->items = f->items;
    out->n = f->n_items;
    out->status = f->n_items ? SPF_DNS_OK : any ? SPF_DNS_NODATA : SPF_DNS_NXDOMAIN;
    return 0;
}

struct spf_row {
    const char *domain, *sender, *ip;
    int want;
    const char *reason; /* substring, or NULL */
};

static const struct spf_row spf_rows[] = {
    {"pass.test", "a@pass.test", "192.0.2.1", SPF_PASS, "matched 'all' directive"},
    {"fail.test", "a@fail.test", "192.0.2.1", SPF_FAIL, "matched '-all' directive"},
    {"softfail.test", NULL, "192.0.2.1", SPF_SOFTFAIL, "'~all'"},
    {"neutral.test", NULL, "192.0.2.1", SPF_NEUTRAL, "'?all'"},
    {"default.test", NULL, "192.0.2.1", SPF_NEUTRAL, "default result"},
    {"nothing.test", NULL, "192.0.2.1", SPF_NONE, "no SPF records found for nothing.test"},
    {"notspf.test", NULL, "192.0.2.1", SPF_NONE, "no SPF records found"},
    {"flaky.test", NULL, "192.0.2.1", SPF_TEMPERROR, "SERVFAIL"},
    {"two.test", NULL, "192.0.2.1", SPF_PERMERROR, "multiple SPF records"},
    {"syntax.test", NULL, "192.0.2.1", SPF_PERMERROR, "invalid address"},
    {"badmech.test", NULL, "192.0.2.1", SPF_PERMERROR, "invalid mechanism 'foo'"},
    {"badcidr.test", NULL, "192.0.2.1", SPF_PERMERROR, "cidr"},
    {"ip.test", NULL, "192.0.2.99", SPF_PASS, "ip4:192.0.2.0/24"},
    {"ip.test", NULL, "192.0.3.1", SPF_FAIL, NULL},
    {"ip.test", NULL, "2001:db8:1::5", SPF_PASS, "ip6:2001:db8::/32"},
    {"ip.test", NULL, "::ffff:192.0.2.5", SPF_PASS, "ip4:"},
    {"a.test", NULL, "192.0.2.10", SPF_PASS, "'a'"},
    {"a.test", NULL, "192.0.2.11", SPF_FAIL, NULL},
    {"a.test", NULL, "2001:db8::10", SPF_PASS, "'a'"},
    {"acidr.test", NULL, "192.0.2.200", SPF_PASS, "a:a.test/24"},
    {"mx.test", NULL, "198.51.100.2", SPF_PASS, "'mx'"},
    {"mx.test", NULL, "198.51.100.3", SPF_FAIL, NULL},
    {"include.test", NULL, "203.0.113.7", SPF_PASS, "include:pass-inner.test"},
    {"include.test", NULL, "192.0.2.1", SPF_FAIL, "'-all'"},
    {"include-none.test", NULL, "192.0.2.1", SPF_PERMERROR,
     "none while evaluating include:nothing.test"},
    {"include-temp.test", NULL, "192.0.2.1", SPF_TEMPERROR, "temperror while evaluating include"},
    {"redirect.test", NULL, "192.0.2.1", SPF_FAIL, "'-all'"},
    {"redirect-none.test", NULL, "192.0.2.1", SPF_PERMERROR, "redirect=nothing.test"},
    {"exists.test", "strong-bad@email.example.com", "192.0.2.1", SPF_PASS, "exists:"},
    {"exists.test", "weak-bad@email.example.com", "192.0.2.1", SPF_FAIL, NULL},
    {"ptr.test", NULL, "192.0.2.20", SPF_PASS, "'ptr'"},
    {"ptr.test", NULL, "192.0.2.21", SPF_FAIL, NULL},
    {"limit.test", NULL, "192.0.2.1", SPF_PERMERROR, "DNS lookup limits exceeded"},
    {"tenlimit.test", NULL, "192.0.2.1", SPF_PASS, NULL},
    {"void.test", NULL, "192.0.2.1", SPF_PERMERROR, "void lookup limit exceeded"},
    {"twovoid.test", NULL, "192.0.2.1", SPF_PASS, NULL},
    {"loop.test", NULL, "192.0.2.1", SPF_PERMERROR, "DNS lookup limits exceeded"},
    {"exp.test", "x@exp.test", "192.0.2.3", SPF_FAIL,
     "192.0.2.3 is not one of exp.test's designated mail servers"},
    {"temp-a.test", NULL, "192.0.2.1", SPF_TEMPERROR, "SERVFAIL"},
    {"mx-many.test", NULL, "192.0.2.1", SPF_PERMERROR, "too many MX records"},
    {"case.test", NULL, "192.0.2.1", SPF_PASS, NULL},
    {"unknownmod.test", NULL, "192.0.2.1", SPF_PASS, NULL},
    {"dupredir.test", NULL, "192.0.2.1", SPF_PERMERROR, "duplicate modifier"},
    {"helo.test", NULL, "192.0.2.1", SPF_PASS, NULL},
    {"pmacro.test", NULL, "192.0.2.20", SPF_PASS, NULL},
    {"pmacro.test", NULL, "192.0.2.21", SPF_FAIL, NULL},
    {"single-label", NULL, "192.0.2.1", SPF_NONE, "invalid domain name"},
    {"bad..name.test", NULL, "192.0.2.1", SPF_NONE, "invalid domain name"},
};

static void run_spf(const struct spf_row *r, bool pending, spf_outcome *o)
{
    static fake f;
    memset(&f, 0, sizeof(f));
    f.pending_mode = pending;
    spf_params p = {.domain = r->domain,
                    .sender = r->sender,
                    .helo = "mail.client.example",
                    .client_ip = r->ip,
                    .receiver = "mx.receiver.example",
                    .now = 1700000000};
    int rounds = 0;
    for (;;) {
        f.n_asked = 0;
        int rc = spf_check_host(&p, lookup, &f, o);
        if (rc == 0)
            break;
        assert_int_equal(rc, SPF_PENDING);
        assert_true(pending);
        assert_true(f.n_known < 512);
        snprintf(f.known[f.n_known++], 300, "%s %s", qname(o->need_qtype), o->need_name);
        assert_true(++rounds < 400);
    }
}

static void test_spf_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(spf_rows); i++) {
        const struct spf_row *r = &spf_rows[i];
        spf_outcome a, b;
        run_spf(r, false, &a);
        run_spf(r, true, &b);
        if (a.result != r->want || (r->reason && !strstr(a.reason, r->reason)))
            fail_msg("row %zu %s from %s: got %s (%s), want %s (%s)", i, r->domain, r->ip,
                     spf_result_name(a.result), a.reason, spf_result_name(r->want),
                     r->reason ? r->reason : "");
        /* one question at a time gives the same outcome */
        assert_int_equal(a.result, b.result);
        assert_string_equal(a.reason, b.reason);
    }
}

/* RFC 7208 §7.4's examples, observed through the name exists: asks. */
static void test_macro_examples(void **state)
{
    (void)state;
    static const struct {
        const char *macro, *ip, *want;
    } rows[] = {
        {"%{s}", "192.0.2.3", "strong-bad@email.example.com"},
        {"%{o}", "192.0.2.3", "email.example.com"},
        {"%{d}", "192.0.2.3", "email.example.com"},
        {"%{d4}", "192.0.2.3", "email.example.com"},
        {"%{d3}", "192.0.2.3", "email.example.com"},
        {"%{d2}", "192.0.2.3", "example.com"},
        {"%{d1}", "192.0.2.3", "com"},
        {"%{dr}", "192.0.2.3", "com.example.email"},
        {"%{d2r}", "192.0.2.3", "example.email"},
        {"%{l}", "192.0.2.3", "strong-bad"},
        {"%{l-}", "192.0.2.3", "strong.bad"},
        {"%{lr}", "192.0.2.3", "strong-bad"},
        {"%{lr-}", "192.0.2.3", "bad.strong"},
        {"%{l1r-}", "192.0.2.3", "strong"},
        {"%{ir}.%{v}._spf.%{d2}", "192.0.2.3", "3.2.0.192.in-addr._spf.example.com"},
        {"%{lr-}.lp._spf.%{d2}", "192.0.2.3", "bad.strong.lp._spf.example.com"},
        {"%{lr-}.lp.%{ir}.%{v}._spf.%{d2}", "192.0.2.3",
         "bad.strong.lp.3.2.0.192.in-addr._spf.example.com"},
        {"%{ir}.%{v}.%{l1r-}.lp._spf.%{d2}", "192.0.2.3",
         "3.2.0.192.in-addr.strong.lp._spf.example.com"},
        {"%{d2}.trusted-domains.example.net", "192.0.2.3", "example.com.trusted-domains.example.net"},
        {"%{ir}.%{v}._spf.%{d2}", "2001:db8::cb01",
         "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6._spf.example.com"},
        {"%%%-.%{L}.x.example", "192.0.2.3", "%%20.strong-bad.x.example"},
        {"%{S}.x.example", "192.0.2.3", "strong-bad%40email.example.com.x.example"},
    };
    char rec[300];
    for (size_t i = 0; i < ARRAY_LEN(rows); i++) {
        /* a record served for this row only */
        snprintf(rec, sizeof(rec), "TXT email.example.com v=spf1 exists:%s -all", rows[i].macro);
        static fake f;
        memset(&f, 0, sizeof(f));
        const char *saved = ZONE[0];
        ZONE[0] = rec;
        spf_params p = {.domain = "email.example.com",
                        .sender = "strong-bad@email.example.com",
                        .client_ip = rows[i].ip};
        spf_outcome o;
        assert_int_equal(spf_check_host(&p, lookup, &f, &o), 0);
        ZONE[0] = saved;
        char want[300];
        snprintf(want, sizeof(want), "A %s", rows[i].want);
        bool seen = false;
        for (size_t k = 0; k < f.n_asked; k++)
            seen |= strcmp(f.asked[k], want) == 0;
        if (!seen)
            fail_msg("%s: asked %s, want %s (%s)", rows[i].macro, f.n_asked > 1 ? f.asked[1] : "-",
                     want, o.reason);
    }
}

/* hostile inputs end in a result, never a crash */
static void test_hostile(void **state)
{
    (void)state;
    char big[4000];
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = 0;
    big[10] = '@';
    static fake f;
    memset(&f, 0, sizeof(f));
    spf_outcome o;
    spf_params p = {.domain = "pass.test", .sender = big, .client_ip = "192.0.2.1"};
    assert_int_equal(spf_check_host(&p, lookup, &f, &o), 0);
    assert_int_equal(o.result, SPF_PASS);
    p.domain = big;
    assert_int_equal(spf_check_host(&p, lookup, &f, &o), 0);
    assert_int_equal(o.result, SPF_NONE);
    p.domain = "pass.test";
    p.client_ip = "not an ip";
    assert_int_equal(spf_check_host(&p, lookup, &f, &o), KERR_INVAL);
}

static void test_record_syntax(void **state)
{
    (void)state;
    static const struct {
        const char *rec;
        bool ok;
    } rows[] = {
        {"v=spf1", true},
        {"v=spf1 ", true},
        {"v=spf1  -all  ", true},
        {"v=spf1 a/24//64 mx:example.com/24 -all", true},
        {"v=spf1 a//64", true},
        {"v=spf1 ip6:::1/128 ip4:10.0.0.0/8", true},
        {"v=spf1 include:%{d}", true},
        {"v=spf1 exists:%{i}.%{d}.example.org", true},
        {"v=spf1 a:example", false},        /* domain-end needs "." toplabel */
        {"v=spf1 a:example.123", false},    /* toplabel not all digits */
        {"v=spf1 exists:%{x}.example.org", false},
        {"v=spf1 exists:%{c}.example.org", false}, /* c only in explanations */
        {"v=spf1 exists:%{d0}.example.org", false},
        {"v=spf1 exists:%{ir.example.org", false},
        {"v=spf1 exists:%(ir).example.org", false},
        {"v=spf1 include", false},
        {"v=spf1 all:x", false},
        {"v=spf1 ip4:1.2.3.4/032", false},
        {"v=spf1 ip6:1.2.3.4", false},
        {"v=spf1 redirect=a.example redirect=b.example", false},
        {"v=spf1 exp=a.example exp=b.example", false},
        {"v=spf1 -all\t", false},
        {"v=spf1 ~\xe2\x80\x8binclude:x.example", false},
        {"v=spf10 -all", false},
    };
    static spf_record r;
    char err[200];
    for (size_t i = 0; i < ARRAY_LEN(rows); i++) {
        int rc = spf_record_parse(rows[i].rec, strlen(rows[i].rec), &r, err, sizeof(err));
        if ((rc == 0) != rows[i].ok)
            fail_msg("%s: rc %d (%s)", rows[i].rec, rc, rc ? err : "");
    }
    assert_int_equal(spf_record_parse("v=spf1 a/24//64 -all", 20, &r, err, sizeof(err)), 0);
    assert_int_equal(r.terms[0].cidr4, 24);
    assert_int_equal(r.terms[0].cidr6, 64);
    assert_null(r.terms[0].spec);
    /* too many terms */
    char big[2000] = "v=spf1";
    for (int i = 0; i < 200; i++)
        strcat(big, " a");
    assert_int_equal(spf_record_parse(big, strlen(big), &r, err, sizeof(err)), KERR_PARSE);
}

/* ---- DMARC ---- */

static void test_psl(void **state)
{
    (void)state;
    static const struct {
        const char *d, *org;
    } rows[] = {
        {"example.com", "example.com"},
        {"a.b.example.com", "example.com"},
        {"mail.example.co.uk", "example.co.uk"},
        {"x.www.ck", "www.ck"}, /* !www.ck beats *.ck */
        {"foo.bar.ck", "foo.bar.ck"},
        {"a.b.c.unlisted-tld", "c.unlisted-tld"}, /* the default rule */
        {"com", NULL},
        {"co.uk", NULL},
    };
    for (size_t i = 0; i < ARRAY_LEN(rows); i++) {
        char out[256];
        bool ok = psl_org_domain(rows[i].d, out, sizeof(out));
        if (rows[i].org) {
            assert_true(ok);
            assert_string_equal(out, rows[i].org);
        } else {
            assert_false(ok);
        }
    }
    assert_true(dmarc_aligned("mail.example.com", "example.com", false));
    assert_false(dmarc_aligned("mail.example.com", "example.com", true));
    assert_true(dmarc_aligned("EXAMPLE.com.", "example.com", true));
    assert_false(dmarc_aligned("example.co.uk", "other.co.uk", false));
}

static const char *DZONE[] = {
    "_dmarc.example.com|v=DMARC1; p=reject; sp=quarantine; adkim=r; aspf=s",
    "_dmarc.strict.example|v=DMARC1; p=quarantine; adkim=s; aspf=s",
    "_dmarc.pct.example|v=DMARC1; p=reject; pct=50",
    "_dmarc.bad.example|v=DMARC1; p=bogus",
    "_dmarc.badrua.example|v=DMARC1; p=bogus; rua=mailto:d@badrua.example",
    "_dmarc.two.example|v=DMARC1; p=none",
    "_dmarc.two.example|v=DMARC1; p=reject",
    "_dmarc.other.example|v=spf1 -all",
    "FAIL|_dmarc.flaky.example",
};

static int dlookup(void *ud, int qtype, const char *name, spf_answer *out)
{
    (void)ud;
    assert_int_equal(qtype, SPF_Q_TXT);
    static const char *items[8];
    size_t n = 0, nl = strlen(name);
    for (size_t i = 0; i < ARRAY_LEN(DZONE); i++) {
        if (strncmp(DZONE[i], "FAIL|", 5) == 0 && strcmp(DZONE[i] + 5, name) == 0) {
            out->status = SPF_DNS_FAIL;
            out->error = "SERVFAIL";
            return 0;
        }
        if (strncmp(DZONE[i], name, nl) == 0 && DZONE[i][nl] == '|')
            items[n++] = DZONE[i] + nl + 1;
    }
    out->items = items;
    out->n = n;
    out->status = n ? SPF_DNS_OK : SPF_DNS_NXDOMAIN;
    return 0;
}

static void test_dmarc(void **state)
{
    (void)state;
    static const struct {
        const char *from, *dkim, *spf;
        int sample;
        int want, disp;
        const char *reason;
    } rows[] = {
        {"example.com", "example.com", NULL, 0, DMARC_PASS, -1, "DKIM aligned"},
        {"example.com", "mail.example.com", NULL, 0, DMARC_PASS, -1, NULL}, /* adkim=r */
        {"example.com", NULL, "example.com", 0, DMARC_PASS, -1, "SPF aligned"},
        {"example.com", NULL, "bounce.example.com", 0, DMARC_FAIL, DMARC_P_REJECT, "aspf=s"},
        {"example.com", "other.example", "other.example", 0, DMARC_FAIL, DMARC_P_REJECT, NULL},
        {"sub.example.com", NULL, NULL, 0, DMARC_FAIL, DMARC_P_QUARANTINE, NULL}, /* sp */
        {"sub.example.com", "example.com", NULL, 0, DMARC_PASS, -1, NULL},
        {"strict.example", "mail.strict.example", "mail.strict.example", 0, DMARC_FAIL,
         DMARC_P_QUARANTINE, "adkim=s"},
        {"pct.example", NULL, NULL, 10, DMARC_FAIL, DMARC_P_REJECT, NULL},
        {"pct.example", NULL, NULL, 70, DMARC_FAIL, DMARC_P_QUARANTINE, "sampled out"},
        {"none.example", NULL, NULL, 0, DMARC_NONE, -1, "no DMARC records found for none.example"},
        {"other.example", NULL, NULL, 0, DMARC_NONE, -1, NULL},
        {"two.example", NULL, NULL, 0, DMARC_NONE, -1, "multiple DMARC records"},
        {"bad.example", NULL, NULL, 0, DMARC_PERMERROR, -1, "invalid p= tag"},
        {"badrua.example", NULL, NULL, 0, DMARC_FAIL, DMARC_P_NONE, NULL},
        {"flaky.example", NULL, NULL, 0, DMARC_TEMPERROR, -1, "SERVFAIL"},
    };
    for (size_t i = 0; i < ARRAY_LEN(rows); i++) {
        const char *dk[1] = {rows[i].dkim};
        dmarc_input in = {rows[i].from, dk, rows[i].dkim ? 1 : 0, rows[i].spf, rows[i].sample};
        dmarc_outcome o;
        assert_int_equal(dmarc_check(&in, dlookup, NULL, &o), 0);
        if (o.result != rows[i].want || o.disposition != rows[i].disp ||
            (rows[i].reason && !strstr(o.reason, rows[i].reason)))
            fail_msg("row %zu %s: got %s/%d (%s)", i, rows[i].from, dmarc_result_name(o.result),
                     o.disposition, o.reason);
    }
    dmarc_record r;
    char err[100];
    assert_int_equal(dmarc_record_parse("v=DMARC1;p=none", 15, &r, err, sizeof(err)), 0);
    assert_int_equal(dmarc_record_parse(" v=DMARC1; p=none", 17, &r, err, sizeof(err)), 0);
    assert_int_equal(dmarc_record_parse("v=DMARC2; p=none", 16, &r, err, sizeof(err)), KERR_PARSE);
    assert_int_equal(dmarc_record_parse("p=none; v=DMARC1", 16, &r, err, sizeof(err)), KERR_PARSE);
    assert_int_equal(
        dmarc_record_parse("v=DMARC1; p=reject; pct=200; adkim=x", 36, &r, err, sizeof(err)), 0);
    assert_int_equal(r.pct, 100);
    assert_false(r.adkim_strict);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_spf_table),    cmocka_unit_test(test_macro_examples),
        cmocka_unit_test(test_record_syntax), cmocka_unit_test(test_psl),
        cmocka_unit_test(test_dmarc),       cmocka_unit_test(test_hostile),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
