/* Unit tests for src/msg/dkim_canon.c and the tag parsers of src/msg/dkim.c:
 * the RFC 6376 §3.4.5 canonicalization examples, the empty-body and
 * missing-final-CRLF rules (§3.4.3, §3.4.4 with errata 1384), bare LF,
 * l= truncation, the body fed in every split (the streaming state machine
 * must give the same bytes), and tag-list / DKIM-Signature parsing
 * (§3.2, §6.1.1). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/kerr.h"
#include "msg/dkim.h"
#include "msg/dkim_canon.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

typedef struct out {
    char buf[4096];
    size_t len;
} out;

static void sink(void *ctx, const char *p, size_t n)
{
    out *o = ctx;
    assert_true(o->len + n < sizeof(o->buf));
    memcpy(o->buf + o->len, p, n);
    o->len += n;
    o->buf[o->len] = 0;
}

static void body_whole(enum dkim_canon c, const char *in, uint64_t limit, out *o, uint64_t *total)
{
    memset(o, 0, sizeof(*o));
    dkim_bodyc b;
    dkim_bodyc_init(&b, c, limit, sink, o);
    dkim_bodyc_update(&b, in, strlen(in));
    dkim_bodyc_final(&b);
    if (total)
        *total = b.total;
}

struct body_row {
    const char *in, *simple, *relaxed;
};

static const struct body_row body_rows[] = {
    /* RFC 6376 §3.4.5 */
    {" C \r\nD \t E\r\n\r\n\r\n", " C \r\nD \t E\r\n", " C\r\nD E\r\n"},
    /* empty body: simple is one CRLF, relaxed nothing */
    {"", "\r\n", ""},
    {"\r\n\r\n", "\r\n", ""},
    /* whitespace-only lines: content for simple, empty for relaxed */
    {" \r\n\t\r\n", " \r\n\t\r\n", ""},
    /* no final CRLF: one is added */
    {"abc", "abc\r\n", "abc\r\n"},
    {"abc  ", "abc  \r\n", "abc\r\n"},
    /* bare LF is a line end, as sent on the wire */
    {"a\nb \n\n", "a\r\nb \r\n", "a\r\nb\r\n"},
    /* a lone CR is an ordinary byte */
    {"a\rb\r\n", "a\rb\r\n", "a\rb\r\n"},
    {"a\r", "a\r\r\n", "a\r\r\n"},
    /* inner empty lines stay */
    {"a\r\n\r\n\r\nb\r\n\r\n", "a\r\n\r\n\r\nb\r\n", "a\r\n\r\n\r\nb\r\n"},
    /* leading whitespace collapses to one SP under relaxed */
    {"\t\t x\r\n", "\t\t x\r\n", " x\r\n"},
};

static void test_body_rows(void **state)
{
    (void)state;
    out o;
    for (size_t i = 0; i < ARRAY_LEN(body_rows); i++) {
        const struct body_row *r = &body_rows[i];
        uint64_t total;
        body_whole(DKIM_CANON_SIMPLE, r->in, UINT64_MAX, &o, &total);
        assert_string_equal(o.buf, r->simple);
        assert_int_equal(total, strlen(r->simple));
        body_whole(DKIM_CANON_RELAXED, r->in, UINT64_MAX, &o, &total);
        assert_string_equal(o.buf, r->relaxed);
        assert_int_equal(total, strlen(r->relaxed));
    }
}

/* Every split of the input in two and byte-at-a-time give the same output. */
static void test_body_streaming(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(body_rows); i++) {
        for (int c = 0; c < 2; c++) {
            const char *in = body_rows[i].in;
            const char *want = c ? body_rows[i].relaxed : body_rows[i].simple;
            size_t n = strlen(in);
            for (size_t cut = 0; cut <= n; cut++) {
                out o = {0};
                dkim_bodyc b;
                dkim_bodyc_init(&b, (enum dkim_canon)c, UINT64_MAX, sink, &o);
                dkim_bodyc_update(&b, in, cut);
                dkim_bodyc_update(&b, in + cut, n - cut);
                dkim_bodyc_final(&b);
                assert_string_equal(o.buf, want);
            }
            out o = {0};
            dkim_bodyc b;
            dkim_bodyc_init(&b, (enum dkim_canon)c, UINT64_MAX, sink, &o);
            for (size_t k = 0; k < n; k++)
                dkim_bodyc_update(&b, in + k, 1);
            dkim_bodyc_final(&b);
            assert_string_equal(o.buf, want);
        }
    }
}

static void test_body_limit(void **state)
{
    (void)state;
    out o;
    uint64_t total;
    body_whole(DKIM_CANON_RELAXED, " C \r\nD \t E\r\n\r\n\r\n", 4, &o, &total);
    assert_string_equal(o.buf, " C\r\n");
    assert_int_equal(total, 9); /* the whole canonical length is still counted */
    body_whole(DKIM_CANON_SIMPLE, "abc\r\n", 0, &o, &total);
    assert_string_equal(o.buf, "");
    /* many trailing and inner line ends (the CRLF batch) */
    char in[600];
    memset(in, '\n', sizeof(in) - 2);
    in[0] = 'x';
    in[300] = 'y';
    in[sizeof(in) - 2] = 0;
    body_whole(DKIM_CANON_SIMPLE, in, UINT64_MAX, &o, &total);
    assert_int_equal(o.len, 1 + 2 * 299 + 1 + 2);
}

struct hdr_row {
    const char *raw, *simple, *relaxed;
};

static const struct hdr_row hdr_rows[] = {
    /* RFC 6376 §3.4.5 */
    {"A: X", "A: X\r\n", "a:X\r\n"},
    {"B : Y\t\r\n\tZ  ", "B : Y\t\r\n\tZ  \r\n", "b:Y Z\r\n"},
    {"Subject:", "Subject:\r\n", "subject:\r\n"},
    {"SUBJECT:  \t ", "SUBJECT:  \t \r\n", "subject:\r\n"},
    {"X-Long: a\n b", "X-Long: a\r\n b\r\n", "x-long:a b\r\n"},
};

static void test_headers(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(hdr_rows); i++) {
        out o = {0};
        dkim_canon_header(DKIM_CANON_SIMPLE, hdr_rows[i].raw, strlen(hdr_rows[i].raw), true, sink,
                          &o);
        assert_string_equal(o.buf, hdr_rows[i].simple);
        memset(&o, 0, sizeof(o));
        dkim_canon_header(DKIM_CANON_RELAXED, hdr_rows[i].raw, strlen(hdr_rows[i].raw), true, sink,
                          &o);
        assert_string_equal(o.buf, hdr_rows[i].relaxed);
    }
    out o = {0};
    dkim_canon_header(DKIM_CANON_RELAXED, "DKIM-Signature: v=1; b=", 23, false, sink, &o);
    assert_string_equal(o.buf, "dkim-signature:v=1; b=");
}

/* ---- tag lists and signatures ---- */

static void test_tags(void **state)
{
    (void)state;
    dkim_tag t[DKIM_MAX_TAGS];
    size_t n;
    const char *s = " v=1;a = rsa-sha256 ;\r\n\tb=ab c\r\n d ; x_1=;";
    assert_int_equal(dkim_tags_parse(s, strlen(s), t, DKIM_MAX_TAGS, &n), 0);
    assert_int_equal(n, 4);
    assert_int_equal(t[1].value_len, 10);
    assert_memory_equal(t[1].value, "rsa-sha256", 10);
    const dkim_tag *b = dkim_tag_find(t, n, "b");
    assert_non_null(b);
    assert_memory_equal(b->value, "ab c\r\n d", b->value_len);
    assert_int_equal(dkim_tag_find(t, n, "x_1")->value_len, 0);
    static const char *const bad[] = {"v=1; v=1", "=1",       "1v=2",       "v",
                                      "v=\x01",   "v=a\r\nb", "v=\xc3\xa9", ";;"};
    for (size_t i = 0; i < ARRAY_LEN(bad); i++)
        assert_int_equal(dkim_tags_parse(bad[i], strlen(bad[i]), t, DKIM_MAX_TAGS, &n), KERR_PARSE);
    assert_int_equal(dkim_tags_parse("", 0, t, DKIM_MAX_TAGS, &n), 0);
    assert_int_equal(n, 0);
    assert_int_equal(dkim_tags_parse("a=1;b=2", 7, t, 1, &n), KERR_TOOBIG);
}

static void test_sig_parse(void **state)
{
    (void)state;
    dkim_sig sig;
    char err[128];
    const char *ok = "v=1; a=ed25519-sha256; c=relaxed; d=example.com; s=sel; t=10; x=20; "
                     "l=42; i=u@Sub.Example.com; h=To : from; bh=abc=; b=def=";
    assert_int_equal(dkim_sig_parse(ok, strlen(ok), &sig, err, sizeof(err)), 0);
    assert_int_equal(sig.alg, DKIM_ALG_ED25519_SHA256);
    assert_int_equal(sig.header_canon, DKIM_CANON_RELAXED);
    assert_int_equal(sig.body_canon, DKIM_CANON_SIMPLE);
    assert_true(sig.has_l);
    assert_int_equal(sig.l, 42);
    assert_int_equal(sig.t, 10);
    assert_int_equal(sig.x, 20);
    struct {
        const char *v, *err;
    } bad[] = {
        {"v=1; a=rsa-sha256; d=e.com; s=s; h=from; bh=x", "signature missing required tag b="},
        {"v=2; a=rsa-sha256; d=e.com; s=s; h=from; bh=x; b=y", "incompatible signature version"},
        {"v=1; a=rsa-sha1; d=e.com; s=s; h=from; bh=x; b=y", "unsupported signature algorithm"},
        {"v=1; a=rsa-sha256; d=e.com; s=s; h=to; bh=x; b=y", "From field not signed"},
        {"v=1; a=rsa-sha256; d=e.com; s=s; h=from; bh=x; b=y; i=u@other.com",
         "domain mismatch between i= and d="},
        {"v=1; a=rsa-sha256; d=e.com; s=s; h=from; bh=x; b=y; l=99999999999999999999999",
         "l= is not a usable body length"},
        {"v=1; a=rsa-sha256; d=e.com; s=s; h=from; bh=x; b=y; t=5; x=4", "x= is before t="},
        {"v=1; a=rsa-sha256; d=e.com; s=s; h=from; bh=x; b=y; c=fancy/simple",
         "unsupported header canonicalization"},
        {"v=1; a=rsa-sha256; d=e.com; s=s; h=from; bh=x; b=y; q=http", "unsupported query method"},
    };
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        assert_int_not_equal(dkim_sig_parse(bad[i].v, strlen(bad[i].v), &sig, err, sizeof(err)), 0);
        assert_non_null(strstr(err, bad[i].err));
    }
}

/* Signing parameters that could not make a valid tag list are refused. */
static void test_params_check(void **state)
{
    (void)state;
    const char *h[] = {"From", "To"};
    dkim_sign_params p = {.domain = "example.com", .selector = "s", .headers = h, .n_headers = 2};
    char err[128];
    assert_int_equal(dkim_sign_params_check(&p, err, sizeof(err)), 0);
    p.domain = "exa;mple.com";
    assert_int_equal(dkim_sign_params_check(&p, err, sizeof(err)), KERR_INVAL);
    p.domain = "example.com";
    p.auid = "u@elsewhere.com";
    assert_int_equal(dkim_sign_params_check(&p, err, sizeof(err)), KERR_INVAL);
    p.auid = "u@a.example.com";
    assert_int_equal(dkim_sign_params_check(&p, err, sizeof(err)), 0);
    p.atpsh = "sha256";
    assert_int_equal(dkim_sign_params_check(&p, err, sizeof(err)), KERR_INVAL);
    const char *h2[] = {"To", "Bad Name"};
    p.atpsh = NULL;
    p.headers = h2;
    assert_int_equal(dkim_sign_params_check(&p, err, sizeof(err)), KERR_INVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_body_rows),    cmocka_unit_test(test_body_streaming),
        cmocka_unit_test(test_body_limit),   cmocka_unit_test(test_headers),
        cmocka_unit_test(test_tags),         cmocka_unit_test(test_sig_parse),
        cmocka_unit_test(test_params_check),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
