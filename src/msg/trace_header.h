/* KumoMTA's supplemental trace header (trace_headers.supplemental_header):
 * a header holding base64 of {"_@_":"\_/","recipient":...} plus the meta
 * values named by include_meta_names, prepended to the message. Pure; any
 * thread that owns the message. */
#ifndef KUMOD_MSG_TRACE_HEADER_H
#define KUMOD_MSG_TRACE_HEADER_H
#include <jansson.h>

#include "msg/message.h"

/* Prepends "NAME: <base64>" (folded at 75 columns) to m's data, which must
 * be resident. recipient is a string for one recipient, an array for
 * several. include_meta_names: an array of strings or NULL (borrowed).
 * Returns 0 or KERR_NOMEM / KERR_INVAL (no data). */
int trace_header_supplemental(message *m, const char *name, const json_t *include_meta_names);

#endif
