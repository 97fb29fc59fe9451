/* Configuration helpers that logs.c shares with loghook.c and aaa_log.c
 * (the other parts of the log module). Errors are written into err (which the Lua binding
 * prefixes with the function name). */
#ifndef KUMOD_LOG_LOGS_INT_H
#define KUMOD_LOG_LOGS_INT_H
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "log/logs.h"

/* Called by logs_record for every record (after the local destinations,
 * with timestamps filled in), on the caller's thread. */
void logs__set_record_hook(void (*fn)(const logrec *r));

/* A destination or hook that extracts headers was added: from now on
 * logs_records_want_data() is true. */
void logs__note_headers(void);

/* Writes msg into err; returns KERR_INVAL. */
int logs__cfg_err(char *err, size_t errlen, const char *msg);
/* A non-negative whole number up to max. */
int logs__cfg_uint(const json_t *v, const char *what, uint64_t max, uint64_t *out, char *err,
                   size_t errlen);
/* A list of strings (an empty table may be {}); *out is calloc'd, each
 * entry strdup'd; on error the caller frees what was filled (*n_out). */
int logs__cfg_string_list(const json_t *v, const char *what, char ***out, size_t *n_out,
                          char *err, size_t errlen);
/* Frees such a list (NULL is fine). */
void logs__string_list_free(char **list, size_t n);

/* duration-serde: a humantime string or a number of seconds, in ns. */
int logs__cfg_duration(const json_t *v, const char *what, int64_t *out, char *err, size_t errlen);
/* MinFree: "10%", "1234" or 1234; *out gets a copy of v. */
int logs__cfg_min_free(const json_t *v, const char *what, json_t **out, char *err, size_t errlen);

#endif
