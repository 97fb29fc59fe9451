/* The reading side of kumo.jsonl: a directory of JSONL segment files (zstd
 * compressed, as the logger writes them, or plain text) read in file-name
 * order, line by line, following the newest segment as it grows. A segment
 * is complete once it is read-only (the writer's chmod a-w when it closes
 * it); only then does the reader move on to the next name. Reads are
 * bounded by a byte budget so that a caller on a reactor can stop and yield
 * between chunks. Pure file I/O, no Lua; one thread at a time. */
#ifndef KUMOD_LUA_LIB_JSONL_READ_H
#define KUMOD_LUA_LIB_JSONL_READ_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct jsonl_src jsonl_src;

/* Opens a reader over dir's files matching pattern (fnmatch; names starting
 * with '.', such as checkpoints, never match). It starts at start_file (a
 * path or base name; files sorting before it are skipped) when not NULL,
 * or with tail at the newest file, else at the oldest. Returns 0 or
 * KERR_NOMEM / KERR_IO (dir unreadable; errno set). */
int jsonl_src_open(const char *dir, const char *pattern, const char *start_file, bool tail,
                   jsonl_src **out);

/* The next complete line (without its '\n'; valid until the next call):
 * returns 1 with line and len set, 0 when nothing more is available now (the
 * newest segment is still open, or there is no file yet), or KERR_IO /
 * KERR_NOMEM / KERR_PARSE (a corrupt zstd stream: the rest of that file is
 * skipped; the next call goes on with the next file). *budget is decreased
 * by the bytes read from disk; once it reaches 0 the call returns 0 with
 * *more set, meaning that more may be read at once. */
int jsonl_src_next(jsonl_src *s, const char **line, size_t *len, size_t *budget, bool *more);

/* The path of the file the last line came from and that line's number
 * (1-based); "" and 0 before the first line. */
const char *jsonl_src_file(const jsonl_src *s);
uint64_t jsonl_src_line(const jsonl_src *s);

/* The base name of the segment being read (or failing): "" before the
 * first. */
const char *jsonl_src_segment(const jsonl_src *s);

void jsonl_src_free(jsonl_src *s);

#endif
