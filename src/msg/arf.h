/* RFC 5965 Abuse Reporting Format (feedback loop reports): parsing an
 * inbound report into the feedback_report object of a Feedback log record.
 * Pure code on caller-owned bytes, any thread. */
#ifndef KUMOD_MSG_ARF_H
#define KUMOD_MSG_ARF_H
#include <jansson.h>
#include <stddef.h>

/* Returns 0 with *out = NULL when data is not a feedback report
 * (not multipart/report; report-type=feedback-report), 0 with *out =
 *   { feedback_type, user_agent, version, arrival_date, incidents,
 *     original_envelope_id, original_mail_from, reporting_mta, source_ip,
 *     authentication_results [], original_rcpto_to [], reported_domain [],
 *     reported_uri [], extensions {name = [values]}, original_message,
 *     supplemental_trace }
 * (absent single fields are null; original_message is a string when it is
 * UTF-8, else an array of byte values), or KERR_PARSE with a sentence in
 * err when the report is malformed (no message/feedback-report part, a
 * required field missing or repeated). */
int arf_parse(const char *data, size_t len, json_t **out, char *err, size_t errlen);

#endif
