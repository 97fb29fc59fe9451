/* Message scheduling constraints of msg:set_scheduling{first_attempt,
 * expires, dow, tz, start, end}: RFC 3339 times and delivery windows. */
#ifndef KUMOD_QUEUE_SCHEDULE_H
#define KUMOD_QUEUE_SCHEDULE_H
#include <jansson.h>
#include <stdint.h>

/* Parses an RFC 3339 time ("2023-03-01T17:00:00-08:00", "...Z",
 * fractional seconds allowed). Returns 0 and Unix seconds, or KERR_PARSE. */
int sched_parse_rfc3339(const char *s, int64_t *out);
/* Moves due_s (Unix seconds) into the next delivery window of the
 * scheduling object (dow like "Mon,Wed" or a list, start/end "HH:MM[:SS]",
 * tz an IANA zone name or "UTC"); returns due_s unchanged when there is no
 * window or it is malformed. Thread-safe. */
int64_t sched_window_adjust(const json_t *scheduling, int64_t due_s);

#endif
