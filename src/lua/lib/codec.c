/* hex / base32 / base32hex / base64 / base64url, with and without padding,
 * for kumo.encode and the BinaryResult fields of kumo.digest. Written from
 * RFC 4648. Decoding follows what KumoMTA policies rely on: padding may be
 * missing or repeated, the rest is canonical (a string that decodes has
 * exactly one encoding, bar padding and letter case). Pure, any thread; never
 * allocates; hostile input only ever yields KERR_PARSE. */
#include "lua/lib/codec.h"

#include "core/hex.h"
#include "core/kerr.h"

static const char hex_digits[] = "0123456789abcdef";
static const char b32_alpha[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
static const char b32hex_alpha[] = "0123456789ABCDEFGHIJKLMNOPQRSTUV";
static const char b64_alpha[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
static const char b64url_alpha[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static const char *alphabet(enum codec_kind kind)
{
    switch (kind) {
    case CODEC_BASE32:
        return b32_alpha;
    case CODEC_BASE32HEX:
        return b32hex_alpha;
    case CODEC_BASE64:
        return b64_alpha;
    case CODEC_BASE64URL:
        return b64url_alpha;
    default:
        return hex_digits;
    }
}

static int bits_per_char(enum codec_kind kind)
{
    switch (kind) {
    case CODEC_HEX:
        return 4;
    case CODEC_BASE32:
    case CODEC_BASE32HEX:
        return 5;
    default:
        return 6;
    }
}

/* Characters per padded block: 8 for base32 (5 bytes), 4 for base64 (3). */
static size_t block_chars(enum codec_kind kind)
{
    return bits_per_char(kind) == 5 ? 8 : 4;
}

size_t codec_encoded_len(enum codec_kind kind, size_t n, bool pad)
{
    if (kind == CODEC_HEX)
        return 2 * n;
    int bits = bits_per_char(kind);
    size_t chars = (n * 8 + (size_t)bits - 1) / (size_t)bits;
    if (pad) {
        size_t b = block_chars(kind);
        chars = (chars + b - 1) / b * b;
    }
    return chars;
}

size_t codec_encode(enum codec_kind kind, const uint8_t *in, size_t n, char *out, bool pad)
{
    const char *alpha = alphabet(kind);
    int bits = bits_per_char(kind);
    unsigned mask = (1u << bits) - 1;
    size_t o = 0;
    uint32_t acc = 0;
    int nacc = 0;
    for (size_t i = 0; i < n; i++) {
        acc = (acc << 8) | in[i];
        nacc += 8;
        while (nacc >= bits) {
            nacc -= bits;
            out[o++] = alpha[(acc >> nacc) & mask];
        }
        acc &= (1u << nacc) - 1;
    }
    if (nacc > 0)
        out[o++] = alpha[(acc << (bits - nacc)) & mask];
    if (pad && kind != CODEC_HEX) {
        size_t b = block_chars(kind);
        while (o % b)
            out[o++] = '=';
    }
    return o;
}

size_t codec_decoded_max(enum codec_kind kind, size_t n)
{
    return n * (size_t)bits_per_char(kind) / 8 + 1;
}

/* The value of c in kind's alphabet, or -1. */
static int symbol_value(enum codec_kind kind, char c)
{
    switch (kind) {
    case CODEC_HEX:
        return hex_digit_value(c);
    case CODEC_BASE32:
        if (c >= 'A' && c <= 'Z')
            return c - 'A';
        if (c >= 'a' && c <= 'z')
            return c - 'a';
        if (c >= '2' && c <= '7')
            return c - '2' + 26;
        return -1;
    case CODEC_BASE32HEX:
        if (c >= '0' && c <= '9')
            return c - '0';
        if (c >= 'A' && c <= 'V')
            return c - 'A' + 10;
        if (c >= 'a' && c <= 'v')
            return c - 'a' + 10;
        return -1;
    case CODEC_BASE64:
    case CODEC_BASE64URL:
        if (c >= 'A' && c <= 'Z')
            return c - 'A';
        if (c >= 'a' && c <= 'z')
            return c - 'a' + 26;
        if (c >= '0' && c <= '9')
            return c - '0' + 52;
        if (kind == CODEC_BASE64)
            return c == '+' ? 62 : c == '/' ? 63 : -1;
        return c == '-' ? 62 : c == '_' ? 63 : -1;
    }
    return -1;
}

int codec_decode(enum codec_kind kind, const char *in, size_t n, uint8_t *out, size_t *outlen,
                 size_t *err_pos)
{
    size_t dummy;
    if (!err_pos)
        err_pos = &dummy;
    if (kind != CODEC_HEX)
        while (n > 0 && in[n - 1] == '=')
            n--;
    int bits = bits_per_char(kind);
    /* A length that no encoder produces: the last character would carry
     * fewer than 8 new bits' worth, i.e. a partial byte only. */
    size_t rem_bits = (n * (size_t)bits) % 8;
    if (rem_bits >= (size_t)bits) {
        *err_pos = n ? n - 1 : 0;
        return KERR_PARSE;
    }
    uint32_t acc = 0;
    int nacc = 0;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int v = symbol_value(kind, in[i]);
        if (v < 0) {
            *err_pos = i;
            return KERR_PARSE;
        }
        acc = (acc << bits) | (uint32_t)v;
        nacc += bits;
        if (nacc >= 8) {
            nacc -= 8;
            out[o++] = (uint8_t)(acc >> nacc);
            acc &= (1u << nacc) - 1;
        }
    }
    if (acc != 0) {
        /* non-zero trailing bits: not the canonical encoding of any bytes */
        *err_pos = n - 1;
        return KERR_PARSE;
    }
    *outlen = o;
    return 0;
}
