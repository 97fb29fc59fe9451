/* kumo.string.normalize_smtp_response's core: replaces the per-recipient,
 * per-transaction parts of an SMTP response (timestamps, UUIDs, hashes, IP
 * addresses, base64, email addresses, durations, the right-hand side of
 * lhs=rhs) with tokens such as {hash}, so that log processing can group
 * similar responses. Best effort, as the reference page says. Pure; any
 * thread. */
#ifndef KUMOD_LUA_LIB_SMTPNORM_H
#define KUMOD_LUA_LIB_SMTPNORM_H
#include <stddef.h>

/* Normalizes s (n bytes, any bytes; non-ASCII bytes count as letters).
 * Returns malloc'd NUL-terminated text and its length in *outlen, or NULL
 * when out of memory. */
char *smtpnorm_normalize(const char *s, size_t n, size_t *outlen);

#endif
