/* UTF-8 validation (RFC 3629: no overlongs, no surrogates, nothing above
 * U+10FFFF). Pure functions, any thread.
 *
 * Text that leaves kumod as JSON (meta in the spool, log records, the HTTP
 * API) must be valid UTF-8: jansson refuses anything else. Input that a
 * client or a policy controls is checked with these at the edge, so that a
 * stray byte is refused with a clear error there instead of turning into an
 * unreadable spool record or a lost field later. */
#ifndef KUMOD_CORE_UTF8_H
#define KUMOD_CORE_UTF8_H
#include <stdbool.h>
#include <stddef.h>

/* Length of the valid UTF-8 sequence at s[0..n) (n >= 1), or, when it is
 * invalid, the negated length of its maximal subpart (what one U+FFFD
 * replaces, Unicode §3.9). */
long utf8_seq(const unsigned char *s, size_t n);

/* Offset of the first byte of s[0..n) that is not part of a valid UTF-8
 * sequence, or n when all of it is valid. NUL counts as valid here. */
size_t utf8_invalid_at(const char *s, size_t n);

static inline bool utf8_valid(const char *s, size_t n)
{
    return utf8_invalid_at(s, n) == n;
}

#endif
