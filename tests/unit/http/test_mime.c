/* Unit tests for src/http/mime.c: the MIME structure of built messages
 * (KumoMTA's mailparsing MessageBuilder: single part, alternative, related,
 * mixed), transfer encodings, RFC 2047 headers and mailboxes, base64 and
 * CRLF normalisation. Structural checks parse the output back with simple
 * helpers; Python's email package checks the same messages end to end in
 * tests/e2e/test_http.py. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/kerr.h"
#include "http/mime.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

static int count(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = strstr(hay, needle); p; p = strstr(p + 1, needle))
        n++;
    return n;
}

/* No bare CR or LF anywhere, and no line longer than 998 octets. */
static void assert_wire_safe(const char *m, size_t len)
{
    size_t line = 0;
    for (size_t i = 0; i < len; i++) {
        if (m[i] == '\r') {
            assert_true(i + 1 < len && m[i + 1] == '\n');
            i++;
            line = 0;
            continue;
        }
        assert_true(m[i] != '\n');
        assert_true(++line <= 998);
    }
}

static void test_b64_round_trip(void **state)
{
    for (size_t n = 0; n < 70; n++) {
        unsigned char in[70];
        for (size_t i = 0; i < n; i++)
            in[i] = (unsigned char)(i * 37 + n);
        char *enc = mime_b64_encode(in, n);
        assert_non_null(enc);
        assert_int_equal(strlen(enc), (n + 2) / 3 * 4);
        unsigned char *dec;
        size_t dl;
        assert_int_equal(mime_b64_decode(enc, strlen(enc), &dec, &dl), 0);
        assert_int_equal(dl, n);
        assert_memory_equal(dec, in, n);
        free(dec);
        free(enc);
    }
    unsigned char *dec;
    size_t dl;
    /* whitespace is skipped, padding optional, URL-safe accepted */
    assert_int_equal(mime_b64_decode("aGVs\r\nbG8", 9, &dec, &dl), 0);
    assert_int_equal(dl, 5);
    assert_memory_equal(dec, "hello", 5);
    free(dec);
    assert_int_equal(mime_b64_decode("-_8=", 4, &dec, &dl), 0);
    assert_int_equal(dl, 2);
    free(dec);
    assert_int_equal(mime_b64_decode("a*b=", 4, &dec, &dl), KERR_PARSE);
    assert_int_equal(mime_b64_decode("ab=c", 4, &dec, &dl), KERR_PARSE);
    assert_int_equal(mime_b64_decode("a", 1, &dec, &dl), KERR_PARSE);
}

static void test_normalize_crlf(void **state)
{
    static const struct {
        const char *in, *want;
    } rows[] = {
        {"a\nb", "a\r\nb"},     {"a\r\nb", "a\r\nb"}, {"a\rb", "a\r\nb"},
        {"\n\n", "\r\n\r\n"},   {"a\r", "a\r\n"},     {"\r\r\n", "\r\n\r\n"},
        {"", ""},
    };
    for (size_t i = 0; i < ARRAY_LEN(rows); i++) {
        size_t ol;
        char *o = mime_normalize_crlf(rows[i].in, strlen(rows[i].in), &ol);
        assert_string_equal(o, rows[i].want);
        assert_int_equal(ol, strlen(rows[i].want));
        free(o);
    }
}

static void test_mailbox(void **state)
{
    static const struct {
        const char *name, *addr, *want;
    } rows[] = {
        {NULL, "a@b.c", "a@b.c"},
        {"", "a@b.c", "a@b.c"},
        {"John Smith", "a@b.c", "John Smith <a@b.c>"},
        {"Smith, John", "a@b.c", "\"Smith, John\" <a@b.c>"},
        {"Say \"hi\"", "a@b.c", "\"Say \\\"hi\\\"\" <a@b.c>"},
        {"Zoë", "a@b.c", "=?UTF-8?B?Wm/Dqw==?= <a@b.c>"},
    };
    for (size_t i = 0; i < ARRAY_LEN(rows); i++) {
        char *m = mime_mailbox(rows[i].name, rows[i].addr);
        assert_string_equal(m, rows[i].want);
        free(m);
    }
    assert_true(mime_addr_valid("user@example.com"));
    assert_true(mime_addr_valid("first.last+tag@sub.example.com"));
    assert_false(mime_addr_valid("nope"));
    assert_false(mime_addr_valid("@example.com"));
    assert_false(mime_addr_valid("user@"));
    assert_false(mime_addr_valid("us er@example.com"));
    assert_false(mime_addr_valid("<user@example.com>"));
}

static char *build(const mime_spec *s, size_t *len)
{
    char err[200];
    char *m = mime_build(s, len, err, sizeof(err));
    assert_non_null(m);
    assert_wire_safe(m, *len);
    return m;
}

static void test_text_only(void **state)
{
    mime_header hs[] = {{"Subject", "plain", false}, {"To", "a@b.c", true}};
    mime_spec s = {.text = "hello\nworld", .headers = hs, .n_headers = 2,
                   .message_id = "<id@host>"};
    size_t len;
    char *m = build(&s, &len);
    assert_non_null(strstr(m, "Subject: plain\r\nTo: a@b.c\r\nDate: "));
    assert_non_null(strstr(m, "\r\nMessage-ID: <id@host>\r\nMIME-Version: 1.0\r\n"
                              "Content-Type: text/plain;\r\n\tcharset=\"us-ascii\"\r\n\r\n"
                              "hello\r\nworld\r\n"));
    assert_null(strstr(m, "Content-Transfer-Encoding"));
    assert_null(strstr(m, "multipart"));
    free(m);
}

static void test_given_date_and_message_id_are_kept(void **state)
{
    mime_header hs[] = {{"Date", "Tue, 1 Jul 2003 10:52:37 +0200", false},
                        {"Message-ID", "<mine@x>", false},
                        {"MIME-Version", "1.0", false}};
    mime_spec s = {.text = "x", .headers = hs, .n_headers = 3, .message_id = "<auto@x>"};
    size_t len;
    char *m = build(&s, &len);
    assert_int_equal(count(m, "Date: "), 1);
    assert_int_equal(count(m, "Message-ID: "), 1);
    assert_int_equal(count(m, "MIME-Version: "), 1);
    assert_null(strstr(m, "auto@x"));
    free(m);
}

static void test_encodings(void **state)
{
    /* non-ASCII: utf-8 and quoted-printable; '=' and long lines force QP */
    mime_spec s = {.text = "Grüße =\n" "0123456789012345678901234567890123456789012345678901234567890123456789"
                           "0123456789\n"};
    size_t len;
    char *m = build(&s, &len);
    assert_non_null(strstr(m, "charset=\"utf-8\"\r\nContent-Transfer-Encoding: quoted-printable"));
    assert_non_null(strstr(m, "Gr=C3=BC=C3=9Fe =3D\r\n"));
    /* soft line break keeps lines within 76 */
    assert_non_null(strstr(m, "=\r\n"));
    free(m);
    /* mostly non-ASCII: base64 is smaller than QP */
    mime_spec s2 = {.text = "☃☃☃☃☃☃☃☃☃☃☃☃☃☃☃☃☃☃☃☃☃☃☃☃☃☃☃☃☃☃☃☃☃☃☃☃☃☃☃☃"};
    m = build(&s2, &len);
    assert_non_null(strstr(m, "Content-Transfer-Encoding: base64"));
    free(m);
    /* trailing whitespace on a line needs QP */
    mime_spec s3 = {.text = "a \nb"};
    m = build(&s3, &len);
    assert_non_null(strstr(m, "quoted-printable\r\n\r\na=20\r\nb"));
    free(m);
}

static void test_unstructured_header_encoding(void **state)
{
    mime_header hs[] = {{"Subject", "Hello ☃ – a long subject line that goes on and on and on "
                                    "until it needs more than one encoded word",
                         false},
                        {"X-Long", "word word word word word word word word word word word "
                                   "word word word word word word word word word",
                         false},
                        {"X-Inject", "a\r\nBcc: evil@example.com", false}};
    mime_spec s = {.text = "x", .headers = hs, .n_headers = 3};
    size_t len;
    char *m = build(&s, &len);
    assert_non_null(strstr(m, "Subject: =?UTF-8?B?"));
    assert_true(count(m, "=?UTF-8?B?") >= 2);
    /* folded, never longer than 78 */
    assert_non_null(strstr(m, "?=\r\n =?UTF-8?B?"));
    assert_non_null(strstr(m, "X-Long: word"));
    assert_non_null(strstr(m, "\r\n word"));
    /* line breaks in a value cannot start a new field */
    assert_null(strstr(m, "\r\nBcc:"));
    const char *hdr_end = strstr(m, "\r\n\r\n");
    for (const char *p = m; p < hdr_end;) {
        const char *eol = strstr(p, "\r\n");
        assert_true(eol - p <= 78);
        p = eol + 2;
    }
    free(m);
}

static const unsigned char BIN[] = {0, 1, 2, 255, 254, 10, 13, 'x'};

static void test_structure(void **state)
{
    mime_attachment att[] = {
        {BIN, sizeof(BIN), "application/octet-stream", "data.bin", NULL},
        {(const unsigned char *)"<svg/>", 6, "image/svg+xml", "Bild ü.svg", "logo@x"},
    };
    struct {
        const char *text, *html;
        size_t n_att;
        const char *want[4];
    } rows[] = {
        {"t", "<p>h</p>", 0, {"Content-Type: multipart/alternative;", NULL}},
        {NULL, "<p>h</p>", 0, {"Content-Type: text/html;", NULL}},
        {"t", NULL, 1, {"Content-Type: multipart/mixed;", "Content-Type: text/plain;", NULL}},
        {"t", "<p>h</p>", 2,
         {"Content-Type: multipart/mixed;", "Content-Type: multipart/related;",
          "Content-Type: multipart/alternative;", NULL}},
    };
    for (size_t i = 0; i < ARRAY_LEN(rows); i++) {
        mime_spec s = {.text = rows[i].text, .html = rows[i].html, .attachments = att,
                       .n_attachments = rows[i].n_att};
        size_t len;
        char *m = build(&s, &len);
        /* the root part's Content-Type comes first, after MIME-Version */
        const char *root = strstr(m, "MIME-Version: 1.0\r\n") + strlen("MIME-Version: 1.0\r\n");
        assert_memory_equal(root, rows[i].want[0], strlen(rows[i].want[0]));
        for (int k = 1; rows[i].want[k]; k++)
            assert_non_null(strstr(m, rows[i].want[k]));
        /* every boundary that opens also closes */
        for (const char *b = strstr(m, "boundary=\""); b; b = strstr(b + 1, "boundary=\"")) {
            char bd[80], close[90];
            sscanf(b + 10, "%79[^\"]", bd);
            snprintf(close, sizeof(close), "\r\n--%s--\r\n", bd);
            assert_non_null(strstr(m, close));
        }
        if (rows[i].n_att >= 1) {
            assert_non_null(strstr(m, "Content-Type: application/octet-stream;\r\n\tname=\"data.bin\"\r\n"
                                      "Content-Transfer-Encoding: base64\r\n"
                                      "Content-Disposition: attachment;\r\n\tfilename=\"data.bin\"\r\n"
                                      "\r\nAAEC//4KDXg=\r\n"));
        }
        if (rows[i].n_att >= 2) {
            assert_non_null(strstr(m, "Content-Disposition: inline;"));
            assert_non_null(strstr(m, "Content-ID: <logo@x>\r\n"));
            assert_non_null(strstr(m, "name=\"=?UTF-8?B?QmlsZCDDvC5zdmc=?=\""));
        }
        free(m);
    }
}

static void test_no_body_is_an_error(void **state)
{
    mime_spec s = {0};
    size_t len;
    char err[200];
    assert_null(mime_build(&s, &len, err, sizeof(err)));
    assert_string_equal(err, "at least one of text_body and/or html_body must be given");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_b64_round_trip),
        cmocka_unit_test(test_normalize_crlf),
        cmocka_unit_test(test_mailbox),
        cmocka_unit_test(test_text_only),
        cmocka_unit_test(test_given_date_and_message_id_are_kept),
        cmocka_unit_test(test_encodings),
        cmocka_unit_test(test_unstructured_header_encoding),
        cmocka_unit_test(test_structure),
        cmocka_unit_test(test_no_body_is_an_error),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
