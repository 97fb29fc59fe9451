/* The AAA accounting log (kumo.aaa.configure_acct_log): one JSON line per
 * authentication or authorization decision, in zstd segments named
 * acct-<UTC time> under the configured log_dir. */
#ifndef KUMOD_LOG_AAA_LOG_H
#define KUMOD_LOG_AAA_LOG_H
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

/* Parses KumoMTA's AuditLogParams and (unless check_only, for --validate)
 * starts the writer. Once per process: a second call is an error. Returns 0
 * or a KERR_* with err set. */
int aaalog_configure_from_json(const json_t *params, bool check_only, char *err, size_t errlen);

/* Whether a record of this outcome would be written (configured and its
 * log_* switch on), so callers can skip building it. Any thread. */
bool aaalog_wants_authn(bool success);
bool aaalog_wants_authz(bool allow);

/* An Authentication record: attempted identity (identity may be ""),
 * the context ("HttpBasicAuth"), the outcome and the session's auth info
 * {peer_address, identities, groups}. Any thread. */
void aaalog_authn(const char *identity, const char *context, bool success,
                  const json_t *auth_info);

/* An Authorization record. matching_resource and rule are NULL when no
 * rule decided; considered lists the resources looked at before the
 * matching one. Any thread. */
void aaalog_authz(const char *target_resource, const char *privilege, bool allow,
                  const char *matching_resource, const json_t *rule, const json_t *auth_info,
                  char *const *considered, size_t n_considered);

/* Waits until every record made so far is in its segment (for readers). */
void aaalog_flush(void);
/* Writes what is queued and closes the segment. Idempotent. */
void aaalog_shutdown(void);

#endif
