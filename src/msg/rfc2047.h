/* Header text to and from UTF-8: RFC 2047 encoded words ("=?charset?B|Q?...?="),
 * lossy UTF-8 repair, and the encoding of non-ASCII header values. Pure
 * functions over caller-owned bytes; results are malloc'd and NUL-terminated
 * (NULL only when memory runs out). Any thread. */
#ifndef KUMOD_MSG_RFC2047_H
#define KUMOD_MSG_RFC2047_H
#include <stdbool.h>
#include <stddef.h>

/* True when s[0..n) is valid UTF-8 (RFC 3629: no overlongs, no surrogates). */
bool utf8_valid(const char *s, size_t n);
/* Copy of s[0..n) with every invalid UTF-8 sequence replaced by U+FFFD. */
char *utf8_lossy(const char *s, size_t n, size_t *out_len);

/* Decodes the encoded words of an unstructured header value (RFC 2047 §6):
 * each well-formed word becomes its text converted to UTF-8 (utf-8, us-ascii
 * and iso-8859-1 natively, other charsets through iconv; an unknown charset
 * or a malformed word is kept as it is), white space between two adjacent
 * encoded words is dropped, and the rest is made valid UTF-8 (lossy). */
char *rfc2047_decode(const char *s, size_t n, size_t *out_len);

/* Encodes a UTF-8 value for a header: ASCII values are returned as they are;
 * otherwise the value becomes a sequence of "=?UTF-8?q?...?=" words of at
 * most 75 bytes each, separated by CRLF SP so the header stays folded. */
char *rfc2047_encode(const char *s, size_t n);

/* Converts n bytes in charset to UTF-8 (lossy). NULL when the charset is
 * unknown. */
char *charset_to_utf8(const char *charset, const char *s, size_t n, size_t *out_len);

#endif
