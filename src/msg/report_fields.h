/* What the RFC 3464 (DSN) and RFC 5965 (ARF) parsers share: a
 * multipart/report's machine-readable parts are blocks of header-like
 * fields ("Name: value"), and both carry the original message in a
 * message/rfc822 or text/rfc822-headers part. These helpers turn such a
 * block into a JSON object { lower-cased-name: [value, ...] } of valid
 * UTF-8 strings (bytes that are not UTF-8 become U+FFFD), then take the
 * named fields out of it one by one, leaving the rest as the report's
 * "extensions". Pure code on caller-owned bytes, any thread; errors are
 * KERR_PARSE with a sentence in err naming the field. */
#ifndef KUMOD_MSG_REPORT_FIELDS_H
#define KUMOD_MSG_REPORT_FIELDS_H
#include <jansson.h>
#include <stddef.h>

#include "msg/mime.h"

/* At most this many fields in one block, and this many bytes in one value:
 * a report bigger than that is hostile, not a bounce. */
#define RFIELDS_MAX_FIELDS 4096
#define RFIELDS_MAX_VALUE 65536

/* One block of fields -> *out (new reference). */
int rfields_parse(const char *s, size_t n, json_t **out, char *err, size_t errlen);
/* Removes field name from obj; *val is its only value (borrowed from a
 * reference the caller receives in *hold, to json_decref) or NULL when
 * absent. KERR_PARSE when the field occurs more than once. */
int rfields_take(json_t *obj, const char *name, const char **val, json_t **hold, char *err,
                 size_t errlen);
/* "type; value" -> {tk: type (trimmed), vk: value (trimmed)}; NULL (and
 * err) without the ';'. lower_type lower-cases the type. */
json_t *rfields_typed_pair(const char *v, const char *tk, const char *vk, const char *field,
                           char *err, size_t errlen);
/* An RFC 5322 date -> "1994-07-07T21:15:49Z"; NULL (and err) when invalid. */
json_t *rfields_date(const char *v, const char *field, char *err, size_t errlen);
/* An address as written in a report ("<a@b>", " a@b ") -> "a@b". */
json_t *rfields_address(const char *v);

/* The child of root whose content type is one of types (NULL-terminated),
 * or NULL. Only root's direct children are examined, as RFC 6522 places
 * the report parts there. */
mpart *rfields_find_child(mpart *root, const char *const *types);
/* The original message part's raw body with CRLF turned into LF, malloc'd
 * (its length in *len), or NULL when the report carries none. */
char *rfields_original_message(mpart *root, size_t *len);
/* The body of part, transfer-decoded, CRLF turned into LF. malloc'd. */
char *rfields_part_text(mpart *part, size_t *len);
/* bytes -> a JSON string when they are UTF-8, else an array of byte values
 * (so that nothing is transcoded lossily). */
json_t *rfields_bytes_json(const char *s, size_t n);
/* The report-type parameter of root's Content-Type when root is
 * multipart/report (lower-cased, "" when absent); NULL otherwise. malloc'd. */
char *rfields_report_type(mpart *root);

#endif
