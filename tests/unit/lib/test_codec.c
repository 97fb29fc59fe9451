/* Unit tests for src/lua/lib/codec.c (RFC 4648 §10 vectors, lenient padding,
 * strict everything else) and the CRC-32 of src/lua/lib/digest.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "core/kerr.h"
#include "lua/lib/codec.h"
#include "lua/lib/digest.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

struct row {
    enum codec_kind kind;
    bool pad;
    const char *plain;
    const char *coded;
};

static const struct row rows[] = {
    {CODEC_BASE64, true, "", ""},
    {CODEC_BASE64, true, "f", "Zg=="},
    {CODEC_BASE64, true, "fo", "Zm8="},
    {CODEC_BASE64, true, "foo", "Zm9v"},
    {CODEC_BASE64, true, "foobar", "Zm9vYmFy"},
    {CODEC_BASE64, false, "f", "Zg"},
    {CODEC_BASE64URL, true, "\xfb\xff", "-_8="},
    {CODEC_BASE32, true, "f", "MY======"},
    {CODEC_BASE32, true, "fooba", "MZXW6YTB"},
    {CODEC_BASE32, true, "foobar", "MZXW6YTBOI======"},
    {CODEC_BASE32, false, "foobar", "MZXW6YTBOI"},
    {CODEC_BASE32HEX, true, "foob", "CPNMUOG="},
    {CODEC_HEX, false, "\x00\xff\x10", "00ff10"},
};

static void test_vectors(void **state)
{
    for (size_t i = 0; i < ARRAY_LEN(rows); i++) {
        const struct row *r = &rows[i];
        size_t plen = strlen(r->plain);
        if (r->kind == CODEC_HEX)
            plen = 3;
        char out[64];
        size_t n = codec_encode(r->kind, (const uint8_t *)r->plain, plen, out, r->pad);
        assert_int_equal(n, codec_encoded_len(r->kind, plen, r->pad));
        assert_int_equal(n, strlen(r->coded));
        assert_memory_equal(out, r->coded, n);
        uint8_t dec[64];
        size_t dlen = 0;
        assert_int_equal(codec_decode(r->kind, r->coded, strlen(r->coded), dec, &dlen, NULL), 0);
        assert_true(dlen <= codec_decoded_max(r->kind, strlen(r->coded)));
        assert_int_equal(dlen, plen);
        assert_memory_equal(dec, r->plain, plen);
    }
}

struct bad {
    enum codec_kind kind;
    const char *in;
    size_t pos;
};

static const struct bad bads[] = {
    {CODEC_BASE64, "Z", 0},        /* 6 bits: no byte */
    {CODEC_BASE64, "Zh==", 1},     /* trailing bits set */
    {CODEC_BASE64, "Zm*v", 2},     /* outside the alphabet */
    {CODEC_BASE64, "Zm=v", 2},     /* padding inside */
    {CODEC_BASE64URL, "ab+/", 2},  /* base64 characters in base64url */
    {CODEC_BASE32, "MZX", 2},      /* 15 bits: impossible length */
    {CODEC_BASE32, "M1======", 1}, /* '1' is not base32 */
    {CODEC_BASE32HEX, "W0", 0},    /* 'W' is past base32hex */
    {CODEC_HEX, "abc", 2},         {CODEC_HEX, "0g", 1},
    {CODEC_HEX, "00==", 2}, /* hex has no padding */
};

static void test_rejects(void **state)
{
    for (size_t i = 0; i < ARRAY_LEN(bads); i++) {
        uint8_t out[16];
        size_t n, pos = 99;
        assert_int_equal(codec_decode(bads[i].kind, bads[i].in, strlen(bads[i].in), out, &n, &pos),
                         KERR_PARSE);
        assert_int_equal(pos, bads[i].pos);
    }
}

static void test_padding_and_case(void **state)
{
    uint8_t out[16];
    size_t n;
    assert_int_equal(codec_decode(CODEC_BASE64, "Zg", 2, out, &n, NULL), 0);
    assert_int_equal(n, 1);
    assert_int_equal(codec_decode(CODEC_BASE64, "Zg=====", 7, out, &n, NULL), 0);
    assert_int_equal(n, 1);
    assert_int_equal(codec_decode(CODEC_BASE32, "my", 2, out, &n, NULL), 0);
    assert_int_equal(out[0], 'f');
    assert_int_equal(codec_decode(CODEC_HEX, "FF", 2, out, &n, NULL), 0);
    assert_int_equal(out[0], 0xff);
    assert_int_equal(codec_decode(CODEC_BASE64, "====", 4, out, &n, NULL), 0);
    assert_int_equal(n, 0);
}

/* Every byte string up to 3 bytes over a small alphabet round-trips through
 * every codec and both paddings. */
static void test_roundtrip(void **state)
{
    static const uint8_t vals[] = {0x00, 0x01, 0x7f, 0x80, 0xfe, 0xff};
    enum codec_kind kinds[] = {CODEC_HEX, CODEC_BASE32, CODEC_BASE32HEX, CODEC_BASE64,
                               CODEC_BASE64URL};
    for (size_t len = 0; len <= 3; len++) {
        size_t combos = 1;
        for (size_t i = 0; i < len; i++)
            combos *= ARRAY_LEN(vals);
        for (size_t c = 0; c < combos; c++) {
            uint8_t in[3];
            size_t x = c;
            for (size_t i = 0; i < len; i++, x /= ARRAY_LEN(vals))
                in[i] = vals[x % ARRAY_LEN(vals)];
            for (size_t k = 0; k < ARRAY_LEN(kinds); k++)
                for (int pad = 0; pad < 2; pad++) {
                    char enc[16];
                    uint8_t dec[16];
                    size_t n = codec_encode(kinds[k], in, len, enc, pad), dn;
                    assert_int_equal(codec_decode(kinds[k], enc, n, dec, &dn, NULL), 0);
                    assert_int_equal(dn, len);
                    assert_memory_equal(dec, in, len);
                }
        }
    }
}

static void test_crc32(void **state)
{
    assert_int_equal(digest_crc32(0, "123456789", 9), 0xCBF43926u); /* the check value */
    assert_int_equal(digest_crc32(0, "", 0), 0);
    uint32_t c = digest_crc32(0, "hello", 5);
    assert_int_equal(c, 0x3610a686u);
    assert_int_equal(digest_crc32(c, "world", 5), digest_crc32(0, "helloworld", 10));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vectors),
        cmocka_unit_test(test_rejects),
        cmocka_unit_test(test_padding_and_case),
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_crc32),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
