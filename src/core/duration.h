/* Humantime durations and byte sizes as they appear in KumoMTA policies.
 * Pure functions, any thread. */
#ifndef KUMOD_CORE_DURATION_H
#define KUMOD_CORE_DURATION_H
#include <stddef.h>
#include <stdint.h>

#define NS_PER_SEC 1000000000LL
#define NS_PER_MS 1000000LL

/* Parses a humantime duration: "30s", "5m", "20 minutes", "1 hour", "7 days",
 * "2s 481ms", "1h30m", "100ms", "1.5s", or a plain number of seconds ("60").
 * Units: ns nsec, us usec, ms msec, s sec secs second seconds, m min mins
 * minute minutes, h hr hrs hour hours, d day days, w week weeks, M month months
 * (30.44 days), y year years (365.25 days). Whitespace between parts is
 * optional. Returns 0 and stores nanoseconds, or KERR_PARSE / KERR_RANGE. */
int duration_parse(const char *s, int64_t *out_ns);

/* Formats like Rust's humantime: "2s 481ms 890us 590ns", "1day 2h 3m",
 * "2days", "0s" for zero; zero parts are omitted. Negative values get a
 * leading '-'. Writes at most len bytes including the NUL; returns the length
 * the full string needs (like snprintf). */
size_t duration_format(int64_t ns, char *buf, size_t len);

/* Parses a byte size: "1024", "20MB", "20 MiB", "128k", "1.5G" (k/K/kb/KB/KiB =
 * 1024, m/M/MB/MiB = 1024^2, g/G/GB/GiB = 1024^3). Returns 0 or KERR_PARSE. */
int size_parse(const char *s, uint64_t *out);

/* Parses "10%" into 10.0. Returns 0 or KERR_PARSE. */
int percent_parse(const char *s, double *out);

#endif
