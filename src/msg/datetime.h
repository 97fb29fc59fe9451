/* Dates in mail: RFC 5322 §3.3 date-time (Date:, Last-Attempt-Date:) and
 * RFC 3339 / ISO 8601 timestamps (message:set_due, JSON output). Times are
 * seconds since the epoch (UTC) plus nanoseconds. Pure code, any thread. */
#ifndef KUMOD_MSG_DATETIME_H
#define KUMOD_MSG_DATETIME_H
#include <stddef.h>
#include <stdint.h>

/* "2024-03-08T17:51:42.481711Z", "2024-03-08 17:51:42+01:00", ... 0 and the
 * time in *ns (since the epoch), KERR_PARSE, or KERR_RANGE for a valid time
 * that nanoseconds in 64 bits cannot hold (before 1677 or after 2262). */
int rfc3339_parse(const char *s, int64_t *ns);
/* "Fri, 8 Mar 2024 17:51:42 +0000" (day name optional, obsolete zones
 * such as "GMT", "EST" and military letters accepted, two-digit years per
 * RFC 5322 §4.3, comments ignored). 0 and *secs, or KERR_PARSE. */
int rfc5322_date_parse(const char *s, size_t n, int64_t *secs);
/* "Tue, 1 Jul 2003 10:52:37 +0000" for secs (UTC). */
void rfc5322_date_format(int64_t secs, char *buf, size_t len);
/* "2003-07-01T10:52:37Z" for secs (UTC). */
void iso8601_format(int64_t secs, char *buf, size_t len);

#endif
