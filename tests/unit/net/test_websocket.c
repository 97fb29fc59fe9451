/* Unit tests for src/net/websocket.c: the examples of RFC 6455 (the
 * handshake key of §1.3, the frames of §5.7), each header length form,
 * and every frame and message a peer must not send, with the close code
 * the RFC gives for it; the client's key and masked frames, read back by
 * the parser as a server reads them. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "net/websocket.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

static void test_accept_key(void **state)
{
    (void)state;
    char out[29];
    ws_accept_key("dGhlIHNhbXBsZSBub25jZQ==", out); /* RFC 6455 §1.3 */
    assert_string_equal(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
}

/* §5.7: "Hello" unmasked and masked, and a ping. */
static void test_rfc_examples(void **state)
{
    (void)state;
    static const uint8_t plain[] = {0x81, 0x05, 'H', 'e', 'l', 'l', 'o'};
    static const uint8_t masked[] = {0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d,
                                     0x51, 0x58};
    ws_frame f;
    assert_int_equal(ws_parse_frame(plain, sizeof(plain), false, 1000, &f), 7);
    assert_true(f.fin);
    assert_int_equal(f.opcode, WS_OP_TEXT);
    assert_int_equal(f.len, 5);
    assert_int_equal(f.hdr_len, 2);
    /* a server refuses an unmasked frame; a client a masked one */
    assert_int_equal(ws_parse_frame(plain, sizeof(plain), true, 1000, &f), -WS_CLOSE_PROTOCOL);
    assert_int_equal(ws_parse_frame(masked, sizeof(masked), false, 1000, &f), -WS_CLOSE_PROTOCOL);
    assert_int_equal(ws_parse_frame(masked, sizeof(masked), true, 1000, &f), 11);
    uint8_t p[5];
    memcpy(p, masked + 6, 5);
    ws_unmask(p, 5, f.mask, 0);
    assert_memory_equal(p, "Hello", 5);
    /* every prefix asks for more */
    for (size_t i = 0; i < sizeof(masked); i++)
        assert_int_equal(ws_parse_frame(masked, i, true, 1000, &f), WS_AGAIN);
    /* unmasking in pieces at an offset gives the same bytes */
    memcpy(p, masked + 6, 5);
    ws_unmask(p, 2, f.mask, 0);
    ws_unmask(p + 2, 3, f.mask, 2);
    assert_memory_equal(p, "Hello", 5);
}

static void test_header_lengths(void **state)
{
    (void)state;
    static const struct {
        uint64_t len;
        size_t hdr;
    } cases[] = {{0, 2}, {125, 2}, {126, 4}, {65535, 4}, {65536, 10}, {1u << 20, 10}};
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        uint8_t h[14];
        uint8_t mask[4] = {1, 2, 3, 4};
        size_t hl = ws_frame_header(h, WS_OP_BINARY, cases[i].len, NULL);
        assert_int_equal(hl, cases[i].hdr);
        uint8_t *buf = calloc(1, hl + cases[i].len);
        memcpy(buf, h, hl);
        ws_frame f;
        assert_int_equal(ws_parse_frame(buf, hl + cases[i].len, false, 1u << 21, &f),
                         (long)(hl + cases[i].len));
        assert_int_equal(f.len, cases[i].len);
        assert_int_equal(ws_parse_frame(buf, hl + cases[i].len, false, cases[i].len - 1 + 0, &f),
                         cases[i].len ? -WS_CLOSE_TOO_BIG : (long)hl);
        free(buf);
        hl = ws_frame_header(h, WS_OP_BINARY, cases[i].len, mask);
        assert_int_equal(hl, cases[i].hdr + 4);
        assert_memory_equal(h + hl - 4, mask, 4);
    }
}

static void test_bad_frames(void **state)
{
    (void)state;
    static const struct {
        uint8_t b[12];
        size_t n;
        long want;
    } cases[] = {
        {{0xC1, 0x80, 0, 0, 0, 0}, 6, -WS_CLOSE_PROTOCOL},            /* RSV1 */
        {{0x83, 0x80, 0, 0, 0, 0}, 6, -WS_CLOSE_PROTOCOL},            /* reserved opcode */
        {{0x8B, 0x80, 0, 0, 0, 0}, 6, -WS_CLOSE_PROTOCOL},            /* reserved control */
        {{0x09, 0x80, 0, 0, 0, 0}, 6, -WS_CLOSE_PROTOCOL},            /* fragmented ping */
        {{0x89, 0xFE, 0x00, 0x7E}, 4, -WS_CLOSE_PROTOCOL},            /* ping of 126 */
        {{0x81, 0xFE, 0x00, 0x05}, 4, -WS_CLOSE_PROTOCOL},            /* 16-bit length < 126 */
        {{0x81, 0xFF, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF}, 10, -WS_CLOSE_PROTOCOL}, /* 64-bit, small */
        {{0x81, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0}, 10, -WS_CLOSE_PROTOCOL},    /* top bit */
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        ws_frame f;
        assert_int_equal(ws_parse_frame(cases[i].b, cases[i].n, true, 1u << 20, &f),
                         cases[i].want);
    }
}

static int feed(ws_msg *m, uint8_t op, bool fin, const char *p, size_t n)
{
    ws_frame f = {.fin = fin, .opcode = op, .len = n};
    return ws_msg_feed(m, &f, (const uint8_t *)p);
}

static void test_messages(void **state)
{
    (void)state;
    ws_msg m = {.max = 16};
    /* §5.4: fragments with a control frame between them */
    assert_int_equal(feed(&m, WS_OP_TEXT, false, "Hel", 3), WS_MSG_NONE);
    assert_int_equal(feed(&m, WS_OP_PING, true, "x", 1), WS_MSG_CONTROL);
    assert_int_equal(feed(&m, WS_OP_CONT, true, "lo", 2), WS_MSG_DATA);
    assert_int_equal(m.len, 5);
    assert_memory_equal(m.data, "Hello", 5);
    ws_msg_reset(&m);
    /* continuation of nothing; a message inside a message */
    assert_int_equal(feed(&m, WS_OP_CONT, true, "a", 1), -WS_CLOSE_PROTOCOL);
    assert_int_equal(feed(&m, WS_OP_TEXT, false, "a", 1), WS_MSG_NONE);
    assert_int_equal(feed(&m, WS_OP_BINARY, true, "b", 1), -WS_CLOSE_PROTOCOL);
    ws_msg_reset(&m);
    /* over max across fragments */
    assert_int_equal(feed(&m, WS_OP_BINARY, false, "0123456789", 10), WS_MSG_NONE);
    assert_int_equal(feed(&m, WS_OP_CONT, true, "0123456789", 10), -WS_CLOSE_TOO_BIG);
    ws_msg_reset(&m);
    /* text must be UTF-8 once complete (a character may span fragments) */
    assert_int_equal(feed(&m, WS_OP_TEXT, false, "\xC3", 1), WS_MSG_NONE);
    assert_int_equal(feed(&m, WS_OP_CONT, true, "\xA9", 1), WS_MSG_DATA);
    ws_msg_reset(&m);
    assert_int_equal(feed(&m, WS_OP_TEXT, true, "\xC3(", 2), -WS_CLOSE_BAD_DATA);
    ws_msg_reset(&m);
    /* close payloads: empty, code, code and text; 1 byte, bad codes, bad text */
    assert_int_equal(feed(&m, WS_OP_CLOSE, true, "", 0), WS_MSG_CONTROL);
    assert_int_equal(feed(&m, WS_OP_CLOSE, true, "\x03\xE8", 2), WS_MSG_CONTROL);
    assert_int_equal(feed(&m, WS_OP_CLOSE, true, "\x03\xE8ok", 4), WS_MSG_CONTROL);
    assert_int_equal(feed(&m, WS_OP_CLOSE, true, "\x03", 1), -WS_CLOSE_PROTOCOL);
    assert_int_equal(feed(&m, WS_OP_CLOSE, true, "\x03\xED", 2), -WS_CLOSE_PROTOCOL); /* 1005 */
    assert_int_equal(feed(&m, WS_OP_CLOSE, true, "\x00\x10", 2), -WS_CLOSE_PROTOCOL);
    assert_int_equal(feed(&m, WS_OP_CLOSE, true, "\x0F\xA0", 2), WS_MSG_CONTROL); /* 4000 */
    assert_int_equal(feed(&m, WS_OP_CLOSE, true, "\x03\xE8\xFF", 3), -WS_CLOSE_BAD_DATA);
    ws_msg_fini(&m);
}

static void test_client_key(void **state)
{
    (void)state;
    char a[25], b[25];
    assert_int_equal(ws_client_key(a), 0);
    assert_int_equal(ws_client_key(b), 0);
    assert_int_equal(strlen(a), 24); /* 16 bytes in base64 */
    assert_int_equal(a[22], '=');
    assert_int_equal(a[23], '=');
    assert_string_not_equal(a, b); /* fresh randomness each time */
}

static void test_client_frames(void **state)
{
    (void)state;
    static const size_t lens[] = {0, 5, 125, 126, 65535, 65536};
    for (size_t i = 0; i < ARRAY_LEN(lens); i++) {
        size_t n = lens[i];
        uint8_t *p = malloc(n + 1), *out = malloc(n + 14);
        assert_non_null(p);
        assert_non_null(out);
        for (size_t j = 0; j < n; j++)
            p[j] = (uint8_t)(j * 7 + 1);
        size_t fl = ws_client_frame(out, WS_OP_BINARY, p, n);
        assert_true(fl >= n + 6 && fl <= n + 14);
        ws_frame f;
        /* a server wants it masked, complete, with the payload given */
        assert_int_equal(ws_parse_frame(out, fl, true, 1u << 20, &f), (long)fl);
        assert_true(f.fin && f.masked);
        assert_int_equal(f.opcode, WS_OP_BINARY);
        assert_int_equal(f.len, n);
        ws_unmask(out + f.hdr_len, n, f.mask, 0);
        if (n)
            assert_memory_equal(out + f.hdr_len, p, n);
        free(p);
        free(out);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_accept_key),      cmocka_unit_test(test_rfc_examples),
        cmocka_unit_test(test_header_lengths),  cmocka_unit_test(test_bad_frames),
        cmocka_unit_test(test_messages),        cmocka_unit_test(test_client_key),
        cmocka_unit_test(test_client_frames),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
