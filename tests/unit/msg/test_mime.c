/* Unit tests for src/msg/mime.c: parsing into parts with an exact round
 * trip, RFC 2046 delimiters (the CRLF before a delimiter belongs to it),
 * transfer decoding, MIME parameters with RFC 2231 continuations, the
 * conformance flags, rebuild, and malformed MIME that degrades instead of
 * failing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/kerr.h"
#include "msg/mime.h"

static const char multi[] =
    "Subject: s\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n"
    "pre\r\n--b1\r\nContent-Type: multipart/alternative; boundary=b2\r\n\r\n"
    "--b2\r\nContent-Type: text/plain\r\n\r\nplain\r\n--b2\r\nContent-Type: text/html\r\n\r\n"
    "<p>html</p>\r\n--b2--\r\n"
    "\r\n--b1\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: "
    "base64\r\n\r\n"
    "AAEC\r\n--b1--\r\nepi\r\n";

static char *body_of(const mpart *p, size_t *len)
{
    bool text;
    return mpart_body_decoded(p, len, &text);
}

static void test_tree_and_round_trip(void **state)
{
    (void)state;
    mpart *p;
    assert_int_equal(mpart_parse(multi, sizeof(multi) - 1, &p), 0);
    assert_true(p->multipart);
    assert_int_equal(p->nkids, 2);
    assert_true(p->kids[0]->multipart);
    assert_int_equal(p->kids[0]->nkids, 2);
    assert_string_equal(p->kids[0]->kids[1]->id, "0.0.1");
    size_t len;
    char *b = body_of(p->kids[0]->kids[0], &len);
    assert_string_equal(b, "plain");
    free(b);
    b = body_of(p->kids[1], &len);
    assert_int_equal(len, 3);
    assert_memory_equal(b, "\x00\x01\x02", 3);
    free(b);
    char *out = mpart_serialize(p, &len);
    assert_int_equal(len, sizeof(multi) - 1);
    assert_memory_equal(out, multi, len);
    free(out);
    mpart_unref(p);
}

static void test_transfer_codings(void **state)
{
    (void)state;
    static const char *const rows[][2] = {
        {"", ""},      {"hello world", "hello world"},    {"caf\xc3\xa9", NULL},
        {"a=b", NULL}, {"trailing space \r\nnext", NULL},
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        const char *in = rows[i][0];
        size_t el, dl;
        char *e = mpart_qpenc(in, strlen(in), &el);
        char *d = mpart_qpdec(e, el, &dl);
        assert_int_equal(dl, strlen(in));
        assert_memory_equal(d, in, dl);
        free(e);
        free(d);
        e = mpart_b64enc((const unsigned char *)in, strlen(in), &el);
        d = mpart_b64dec(e, el, &dl);
        assert_int_equal(dl, strlen(in));
        assert_memory_equal(d, in, dl);
        free(e);
        free(d);
    }
    /* long QP lines are soft-broken at 76 */
    char longline[300];
    memset(longline, 'x', sizeof(longline) - 1);
    longline[sizeof(longline) - 1] = 0;
    size_t el;
    char *e = mpart_qpenc(longline, strlen(longline), &el);
    size_t col = 0;
    for (size_t i = 0; i < el; i++) {
        col = e[i] == '\n' ? 0 : col + 1;
        assert_true(col <= 77);
    }
    free(e);
    /* malformed escapes are kept */
    size_t dl;
    char *d = mpart_qpdec("=ZZ=4", 5, &dl);
    assert_string_equal(d, "=ZZ=4");
    free(d);
}

static void test_params(void **state)
{
    (void)state;
    static const char *const in = "Text/Plain; charset=\"utf-8\"; format=flowed (comment); "
                                  "title*0*=utf-8''%E2%82; title*1*=%AC%20x; name=\"a \\\"q\\\"\"";
    mparams mp;
    assert_int_equal(mparams_parse(in, strlen(in), &mp), 0);
    assert_string_equal(mp.value, "text/plain");
    assert_string_equal(mparams_get(&mp, "charset"), "utf-8");
    assert_string_equal(mparams_get(&mp, "FORMAT"), "flowed");
    assert_string_equal(mparams_get(&mp, "title"), "\xe2\x82\xac x");
    assert_string_equal(mparams_get(&mp, "name"), "a \"q\"");
    char *f = mparams_format(&mp);
    mparams back;
    assert_int_equal(mparams_parse(f, strlen(f), &back), 0);
    assert_string_equal(mparams_get(&back, "title"), "\xe2\x82\xac x");
    assert_string_equal(mparams_get(&back, "name"), "a \"q\"");
    mparams_fini(&back);
    free(f);
    mparams_fini(&mp);
}

static void test_conformance(void **state)
{
    (void)state;
    static const struct {
        const char *msg;
        unsigned want;
    } rows[] = {
        {"Date: Tue, 1 Jul 2003 10:52:37 +0200\r\nMessage-ID: <a@b>\r\nMIME-Version: "
         "1.0\r\n\r\nok\r\n",
         0},
        {"Subject: x\r\n\r\nok\r\n", MCONF_MISSING_HEADERS},
        {"Subject\r\n\r\n", MCONF_MISSING_HEADERS | MCONF_MISSING_COLON_VALUE},
        {"Subject : x\r\n\r\n", MCONF_MISSING_HEADERS | MCONF_NAME_ENDS_WITH_SPACE},
        {"Subject: x\n\nbare lf\n", MCONF_MISSING_HEADERS | MCONF_NON_CANONICAL_LINE_ENDINGS},
        {"Subject: caf\xc3\xa9\r\n\r\n", MCONF_MISSING_HEADERS | MCONF_NEEDS_TRANSFER_ENCODING},
        {"Date: someday\r\nMessage-ID: <a@b>\r\nMIME-Version: 2.0\r\n\r\n",
         MCONF_MISSING_DATE_HEADER | MCONF_MISSING_MIME_VERSION},
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        mpart *p;
        assert_int_equal(mpart_parse(rows[i].msg, strlen(rows[i].msg), &p), 0);
        if (mpart_conformance(p) != rows[i].want) {
            char *got = mconf_format(mpart_conformance(p));
            char *want = mconf_format(rows[i].want);
            print_error("row %zu: got %s, want %s\n", i, got, want);
            free(got);
            free(want);
            fail();
        }
        mpart_unref(p);
    }
    char longmsg[200];
    snprintf(longmsg, sizeof(longmsg), "Subject: x\r\n\r\n%0100d\r\n", 0);
    mpart *p;
    assert_int_equal(mpart_parse(longmsg, strlen(longmsg), &p), 0);
    assert_true(mpart_conformance(p) & MCONF_LINE_TOO_LONG);
    mpart *q = mpart_rebuild(p, NULL);
    size_t len;
    char *out = mpart_serialize(q, &len);
    mpart *r;
    assert_int_equal(mpart_parse(out, len, &r), 0);
    assert_int_equal(mpart_conformance(r) & ~MCONF_MISSING_HEADERS, 0);
    free(out);
    mpart_unref(r);
    mpart_unref(q);
    mpart_unref(p);

    unsigned flags;
    char err[300];
    assert_int_equal(mconf_parse("LINE_TOO_LONG|MISSING_DATE_HEADER||", &flags, err, sizeof(err)),
                     0);
    assert_int_equal(flags, MCONF_LINE_TOO_LONG | MCONF_MISSING_DATE_HEADER);
    assert_int_equal(mconf_parse("NOPE", &flags, err, sizeof(err)), KERR_PARSE);
    assert_non_null(strstr(err, "'NOPE'"));
    char *names = mconf_format(MCONF_MISSING_MIME_VERSION | MCONF_LINE_TOO_LONG);
    assert_string_equal(names, "LINE_TOO_LONG|MISSING_MIME_VERSION");
    free(names);
}

static void test_malformed_degrades(void **state)
{
    (void)state;
    static const char *const rows[] = {
        "Content-Type: multipart/mixed\r\n\r\nno boundary",
        "Content-Type: multipart/mixed; boundary=b\r\n\r\nno delimiter",
        "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nunterminated",
        "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b--",
        "",
        "\r\n",
        "no colon and no end",
        " continuation first\r\nA: b\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        mpart *p;
        assert_int_equal(mpart_parse(rows[i], strlen(rows[i]), &p), 0);
        size_t len;
        char *s = mpart_serialize(p, &len);
        assert_non_null(s);
        free(s);
        mpart *q = mpart_rebuild(p, NULL);
        assert_non_null(q);
        mpart_unref(q);
        mpart_unref(p);
    }
    /* nesting deeper than MPART_MAX_DEPTH stays an unparsed leaf */
    char *deep = malloc(100 * 64 + 1);
    deep[0] = 0;
    for (int i = 0; i < 100; i++)
        strcat(deep, "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n");
    mpart *p;
    assert_int_equal(mpart_parse(deep, strlen(deep), &p), 0);
    int depth = 0;
    for (mpart *c = p; c->multipart && c->nkids; c = c->kids[0])
        depth++;
    assert_true(depth <= MPART_MAX_DEPTH);
    mpart_unref(p);
    free(deep);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tree_and_round_trip),
        cmocka_unit_test(test_transfer_codings),
        cmocka_unit_test(test_params),
        cmocka_unit_test(test_conformance),
        cmocka_unit_test(test_malformed_degrades),
    };
    return cmocka_run_group_tests_name("msg/mime", tests, NULL, NULL);
}
