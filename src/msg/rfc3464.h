/* RFC 3464 delivery status notifications: parsing an inbound DSN (for
 * message:parse_rfc3464 and the OOB records of a log_oob listener domain;
 * one parser serves both) and building one from a log record
 * (kumo.generate_rfc3464_message). Pure code on caller-owned bytes, any
 * thread. */
#ifndef KUMOD_MSG_RFC3464_H
#define KUMOD_MSG_RFC3464_H
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

/* At most this many per-recipient groups in one report. */
#define RFC3464_MAX_RECIPIENTS 1000

/* Parses data (a whole message). Returns 0 with *out = NULL when it is not
 * a delivery status report (not multipart/report, or a report-type other
 * than delivery-status), 0 with *out set to
 *   { per_message = { reporting_mta = {mta_type, name}, original_envelope_id?,
 *                     dsn_gateway?, received_from_mta?, arrival_date?,
 *                     extensions = {name = [values]} },
 *     per_recipient = [ { final_recipient = {recipient_type, recipient},
 *                         action, status = {class, subject, detail, comment?},
 *                         original_recipient?, remote_mta?, diagnostic_code =
 *                         {diagnostic_type, diagnostic}?, last_attempt_date?,
 *                         final_log_id?, will_retry_until?, extensions } ],
 *     original_message? }
 * (dates as RFC 3339 UTC strings, absent fields absent), or KERR_PARSE with
 * a sentence in err when it claims to be one but is malformed. */
int rfc3464_parse(const char *data, size_t len, json_t **out, char *err, size_t errlen);

typedef enum rfc3464_include { RFC3464_INCLUDE_NO, RFC3464_INCLUDE_HEADERS, RFC3464_INCLUDE_FULL } rfc3464_include;

typedef struct rfc3464_gen_params {
    rfc3464_include include_original_message;
    bool enable_expiration, enable_bounce, stable_content;
    const char *mta_type, *mta_name; /* reporting_mta */
} rfc3464_gen_params;

/* Builds a report for the log record rec (a JSON log record: type, sender,
 * recipient, response, peer_address, created, timestamp,
 * delivery_protocol). orig/orig_len is the original message (may be NULL).
 * Returns 0 with *out (malloc'd message text, CRLF) or *out = NULL when
 * no report applies (type not enabled, a Bounce not over ESMTP, a null
 * sender); KERR_PARSE with err when rec lacks what a report needs. */
int rfc3464_generate(const rfc3464_gen_params *p, const char *orig, size_t orig_len,
                     const json_t *rec, char **out, size_t *out_len, char *err, size_t errlen);

#endif
