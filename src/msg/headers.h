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

/* Iterates fields: *pos starts at 0; returns false when the block ends.
 * Each call examines only the bytes of the field it returns (and of stray
 * continuation lines before it), so a full iteration is linear. */
bool hdr_next(const char *data, size_t len, size_t *pos, hdr_field *out);

/* The header block of one buffer, parsed once: every field in order (name,
 * raw extent, offsets), the block's length and where an appended field
 * goes. The fields point into the data they were built from, so an index
 * lives exactly as long as that buffer is unchanged: whoever replaces the
 * buffer drops the index (message_set_data_take does). */
typedef struct hdr_index {
    hdr_field *fields;
    size_t n;
    size_t block_len;  /* hdr_block_len of the data */
    size_t append_at;  /* end of the last field (where append inserts) */
    bool last_has_eol; /* the last field ends with a line ending */
} hdr_index;

/* Parses data's header block in one pass. 0, or KERR_NOMEM. */
int hdr_index_build(const char *data, size_t len, hdr_index *out);
void hdr_index_fini(hdr_index *ix);
/* Position of the first field named name (case-insensitive) at or after
 * from, or -1. */
long hdr_index_find(const hdr_index *ix, const char *name, size_t from);
/* Returns a new buffer without the fields for which drop[i] is true (drop has
 * ix->n entries; NULL drops nothing). */
char *hdr_index_remove(const hdr_index *ix, const char *data, size_t len, const bool *drop,
                       size_t *out_len);
/* Builds "Name: value\r\n" folded as hdr_prepend does. malloc'd. */
char *hdr_format_field(const char *name, const char *value, size_t *out_len);
/* Inserts the formatted field ins (ins_len bytes, ending in CRLF) at the top
 * (at_end false) or at the end of the header block. */
char *hdr_index_insert(const hdr_index *ix, const char *data, size_t len, bool at_end,
                       const char *ins, size_t ins_len, size_t *out_len);

/* Bytes examined by header scans on the calling thread since it started
 * (for complexity tests: a scan of a block of L bytes adds about L). */
unsigned long long hdr_bytes_scanned(void);
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
