/* Binary-to-text codecs for kumo.encode and BinaryResult: lowercase hex,
 * base32 (RFC 4648 §6), base32hex (§7), base64 (§4) and base64url (§5), each
 * with or without padding. Pure functions without state, any thread; the
 * decoders are the entry points of the fuzz harness. */
#ifndef KUMOD_LUA_LIB_CODEC_H
#define KUMOD_LUA_LIB_CODEC_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum codec_kind {
    CODEC_HEX,
    CODEC_BASE32,
    CODEC_BASE32HEX,
    CODEC_BASE64,
    CODEC_BASE64URL,
};

/* Bytes needed to encode n bytes (no NUL). */
size_t codec_encoded_len(enum codec_kind kind, size_t n, bool pad);
/* Encodes in[0..n) into out (codec_encoded_len bytes, no NUL written).
 * Returns the length written. */
size_t codec_encode(enum codec_kind kind, const uint8_t *in, size_t n, char *out, bool pad);

/* Upper bound of the decoded size of n characters. */
size_t codec_decoded_max(enum codec_kind kind, size_t n);
/* Decodes in[0..n) into out (codec_decoded_max bytes). Trailing padding
 * ('=') is optional and may be excessive, as encoders in the wild produce
 * both; everything else is strict: characters outside the alphabet, a length
 * no encoder produces, or non-zero bits after the last byte give KERR_PARSE
 * with *err_pos at the offending character. Hex and base32 accept either case.
 * Returns 0 and the length in *outlen. */
int codec_decode(enum codec_kind kind, const char *in, size_t n, uint8_t *out, size_t *outlen,
                 size_t *err_pos);

#endif
