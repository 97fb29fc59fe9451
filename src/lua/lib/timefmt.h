/* Calendar arithmetic, RFC 2822 / RFC 3339 parsing and formatting, and a
 * strftime in the dialect of Rust's chrono (the one KumoMTA's Time:format
 * documents), for kumo.time. A time is (seconds since the Unix epoch,
 * nanoseconds 0..999999999), always UTC. Pure functions, any thread. */
#ifndef KUMOD_LUA_LIB_TIMEFMT_H
#define KUMOD_LUA_LIB_TIMEFMT_H
#include <stddef.h>
#include <stdint.h>

struct timefmt_tm {
    int64_t year;
    int month, day; /* 1-based */
    int hour, minute, second;
    int wday; /* 0 = Sunday */
    int yday; /* 0-based */
};

/* Days since 1970-01-01 of a proleptic Gregorian date, and back. */
int64_t timefmt_days_from_civil(int64_t y, int m, int d);
void timefmt_breakdown(int64_t sec, struct timefmt_tm *tm);

/* Parse RFC 3339 ("2000-01-02T03:04:05.5+01:00"; 't', ' ' and 'z' also
 * accepted) and RFC 2822 ("Sun, 2 Jan 2000 03:04:05 +0000", obsolete zone
 * names, two-digit years, and the "UTC" that mail software writes). Return 0
 * or KERR_PARSE. */
int timefmt_parse_rfc3339(const char *s, size_t n, int64_t *sec, int32_t *nsec);
int timefmt_parse_rfc2822(const char *s, size_t n, int64_t *sec, int32_t *nsec);

/* Formats with chrono's strftime specifiers; an unknown or incomplete
 * specifier is copied literally (chrono's lenient mode). Like snprintf:
 * writes at most cap bytes including a NUL and returns the full length. */
size_t timefmt_format(int64_t sec, int32_t nsec, const char *fmt, char *out, size_t cap);

#endif
