/* Compact JSON text of a jansson value, written straight into an sbuf.
 *
 * The output is byte for byte what json_dumps(v, JSON_COMPACT |
 * JSON_ENCODE_ANY) gives for the same value (keys in insertion order,
 * jansson's escapes and its shortest-round-trip reals), so files and spool
 * records written either way are interchangeable. It exists because
 * jansson's dumper hands every token to a callback and checks every string
 * character by character: on the log and spool paths, which turn each
 * message's meta and each log record into text several times, that was a
 * tenth of kumod's CPU. This writer copies runs of plain bytes with one
 * memcpy.
 *
 * Where jansson fails, this writer does not: a string that is not valid
 * UTF-8 (only possible through jansson's *_nocheck constructors) has each
 * invalid sequence replaced by U+FFFD, so the text is always valid JSON.
 * Nesting deeper than JSONW_MAX_DEPTH fails with KERR_INVAL: twice what
 * jansson's parser accepts, so that anything parsed can be wrapped (a meta
 * inside its spool record) and written, and the recursion stays bounded.
 * Pure functions, any thread. */
#ifndef KUMOD_CORE_JSONW_H
#define KUMOD_CORE_JSONW_H
#include <jansson.h>
#include <stddef.h>

#include "core/sbuf.h"

#define JSONW_MAX_DEPTH 4096

/* Appends the text of v. Returns 0, KERR_INVAL (too deep, or NULL) or
 * KERR_NOMEM (the buffer's growth failed; b->oom is set). */
int jsonw_append(sbuf *b, const json_t *v);

/* Appends s[0..n) as a quoted JSON string. */
void jsonw_string(sbuf *b, const char *s, size_t n);

/* The text of v as a malloc'd NUL-terminated string (its length in *len
 * when len is not NULL), or NULL on failure. */
char *jsonw_dumps(const json_t *v, size_t *len);

#endif
