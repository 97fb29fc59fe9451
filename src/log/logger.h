/* One local log destination's writer: a bounded queue of finished record
 * lines and the thread that compresses them into zstd segment files. It
 * knows nothing of record types or JSON; src/log/logs.c decides which
 * stream a line goes to. */
#ifndef KUMOD_LOG_LOGGER_H
#define KUMOD_LOG_LOGGER_H
#include <stddef.h>
#include <stdint.h>

typedef struct logger logger;

typedef struct logger_config {
    const char *name;       /* for diagnostics ("dir-/var/log/kumo"); copied */
    uint64_t max_file_size; /* uncompressed bytes; a segment closes once it reaches this */
    int64_t max_segment_ns; /* a segment closes this long after it opened; 0 = never */
    int compression_level;  /* 0 = zstd's default level */
    size_t back_pressure;   /* queued lines before submitters block; 0 behaves as 1 */
    const char *prefix;     /* before the time in segment names ("acct-"); NULL = none;
                               at most 15 bytes are used */
} logger_config;

/* Creates a stopped logger. Returns 0 or KERR_NOMEM / KERR_INVAL. */
int logger_new(const logger_config *cfg, logger **out);

/* Declares an output stream: segments named <log_dir>/<prefix><UTC open time><suffix>.
 * suffix may be NULL and may contain '/' (subdirectories are created on
 * demand). A stream with the same log_dir and suffix as an earlier one is the
 * same stream. Only before logger_start(). Returns the stream index (>= 0) or
 * KERR_NOMEM / KERR_INVAL. Strings are copied. */
int logger_add_stream(logger *lg, const char *log_dir, const char *suffix);

/* Marks every existing file in each stream's log_dir read-only (closed
 * segments from an earlier run are complete) and starts the writer thread.
 * Returns 0 or KERR_IO / KERR_INVAL. */
int logger_start(logger *lg);

/* Queues one record line for a stream; the logger takes text (malloc'd, len
 * bytes; a '\n' is added when it does not end with one) whatever the result.
 * segment_header, when not NULL or "", is written at the start of a segment
 * this line opens; it is borrowed and must live as long as the logger.
 * Blocks while back_pressure lines are queued. Any thread. Returns 0,
 * KERR_SHUTDOWN once the logger is stopping, or KERR_NOMEM / KERR_INVAL. */
int logger_submit_take(logger *lg, int stream, const char *segment_header, char *text, size_t len);

/* Waits until every line submitted before the call is written and
 * zstd-flushed to its segment file, so a reader of the open segment can
 * decompress it. Any thread but the writer's. */
void logger_flush(logger *lg);

/* Writes what is queued, closes every segment (read-only) and joins the
 * thread; later submissions get KERR_SHUTDOWN. Idempotent. */
void logger_stop(logger *lg);
/* logger_stop(), then frees. NULL is fine. */
void logger_free(logger *lg);

typedef struct logger_stats {
    uint64_t submitted;   /* lines accepted by logger_submit_take() */
    uint64_t written;     /* lines handed to a segment's compressor */
    uint64_t submit_full; /* submissions that found the queue full and waited */
    uint64_t errors;      /* lines lost to open/write/compress errors */
} logger_stats;
void logger_get_stats(const logger *lg, logger_stats *out);

/* Formats a segment's base name for a UTC time in ns since the epoch, as
 * KumoMTA does (chrono "%Y%m%d-%H%M%S%.f"): "20240131-235959" followed by the
 * fraction with 3, 6 or 9 digits (the fewest that are exact; none when it is
 * zero), e.g. "20240131-235959.123456789". Returns the length; buf gets at
 * most len bytes including the NUL. */
size_t logger_segment_name(int64_t unix_ns, char *buf, size_t len);

/* mkdir -p for the log module: 0, KERR_NOMEM, or KERR_IO with errno set. */
int logger__mkdir_p(const char *dir);

#endif
