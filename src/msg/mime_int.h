/* Helpers shared by the files of the MIME module (mime.c, mime_codec.c,
 * mime_build.c); not for other modules. */
#ifndef KUMOD_MSG_MIME_INT_H
#define KUMOD_MSG_MIME_INT_H
#include <stdbool.h>
#include <stddef.h>

#include "msg/mime.h"

/* Copy of s[0..n) NUL-terminated; NULL on OOM. */
char *mpart__dupn(const char *s, size_t n);
/* Inserts a raw field at position at (copied). 0 or KERR_NOMEM. */
int mpart__add_raw_header(mpart *p, size_t at, const char *raw, size_t raw_len, size_t name_len);
/* Value of a hex digit, or -1. */
int mpart__hexv(char c);
/* Sets parameter name (appending to its value when present: RFC 2231
 * continuations). 0 or KERR_NOMEM. */
int mpart__param_put(mparams *mp, const char *name, const char *value, size_t vl);
/* Parses the first field named name as MIME parameters; false when absent. */
bool mpart__hdr_params(const mpart *p, const char *name, mparams *mp);

#endif
