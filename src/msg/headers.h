/* RFC 5322 header block access on raw message bytes: find, unfold, add and
 * remove header fields. Pure functions over caller-owned buffers; results
 * are malloc'd. Accepts CRLF and bare LF. */
#ifndef KUMOD_MSG_HEADERS_H
#define KUMOD_MSG_HEADERS_H
#include <stdbool.h>
#include <stddef.h>

/* Length of the header block including the blank line that ends it (or the
 * whole buffer when there is no body). */
size_t hdr_block_len(const char *data, size_t len);

typedef struct hdr_field {
    const char *name; /* points into data */
    size_t name_len;
    const char *raw; /* whole field including folded lines, without final EOL */
    size_t raw_len;
    size_t start, end; /* byte offsets of the field including its final EOL */
} hdr_field;

/* Iterates fields: *pos starts at 0; returns false when the block ends. */
bool hdr_next(const char *data, size_t len, size_t *pos, hdr_field *out);
/* Unfolded value (leading whitespace trimmed, CRLF+WSP folded to the WSP). */
char *hdr_value(const hdr_field *f);
bool hdr_name_eq(const hdr_field *f, const char *name);
/* First value of name, or NULL. */
char *hdr_get_first(const char *data, size_t len, const char *name);
/* Returns a new buffer with name: value inserted at the top / at the end of
 * the header block. The value is folded at 78 columns when long. */
char *hdr_prepend(const char *data, size_t len, const char *name, const char *value,
                  size_t *out_len);
char *hdr_append(const char *data, size_t len, const char *name, const char *value,
                 size_t *out_len);
/* Returns a new buffer without any field named name (prefix match when
 * prefix is true, case-insensitive). */
char *hdr_remove(const char *data, size_t len, const char *name, bool prefix, size_t *out_len);

#endif
