/* Inbound reports on a listener domain with log_oob / log_arf
 * (make_listener_domain): deciding whether a received message is an
 * RFC 3464 bounce (OOB) or an RFC 5965 feedback report, and logging the
 * records KumoMTA logs for it — one OOB record per failed recipient of a
 * DSN, a Feedback record in place of the Reception record of an ARF. Any
 * reactor thread (the SMTP server calls it after DATA); it never fails the
 * message: a report that does not parse is logged on the diagnostic log
 * and the message is handled as any other (relay rules apply). */
#ifndef KUMOD_LOG_OOBREC_H
#define KUMOD_LOG_OOBREC_H
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "log/logs.h"

/* The documented values of log_oob / log_arf: false / "Ignore",
 * "LogThenDrop", true / "LogThenRelay". */
typedef enum oobrec_disp { OOBREC_IGNORE = 0, OOBREC_LOG_THEN_DROP, OOBREC_LOG_THEN_RELAY } oobrec_disp;
/* "Ignore" | "LogThenDrop" | "LogThenRelay" -> 0, else KERR_PARSE. */
int oobrec_disp_parse(const char *s, oobrec_disp *out);

typedef struct oobrec_report {
    logrec_type type; /* LOGREC_OOB or LOGREC_FEEDBACK */
    bool relay;       /* LogThenRelay: the message goes on to its queue */
    json_t *report;   /* what rfc3464_parse / arf_parse returned */
} oobrec_report;

/* Checks data as an ARF (when arf is not Ignore) and then as a DSN (when
 * oob is not Ignore), as KumoMTA does. Returns the report, or NULL when the
 * message is not one (or is malformed: then err says why and *malformed is
 * set, for the caller's diagnostic). */
oobrec_report *oobrec_detect(const char *data, size_t len, oobrec_disp oob, oobrec_disp arf,
                             bool *malformed, char *err, size_t errlen);
void oobrec_free(oobrec_report *r);

/* Logs rep for the message whose Reception record would be reception:
 * a Feedback record (the reception record with type Feedback and the
 * feedback_report); or, for a DSN, the Reception record only when it is
 * relayed (LogThenDrop logs nothing else, log_oob's page) and then one OOB
 * record per recipient whose action is "failed". Returns the number of OOB
 * records logged. */
size_t oobrec_log(const oobrec_report *rep, const logrec *reception);

/* The OOB record of one per-recipient entry of a parsed DSN, into *r
 * (strings borrowed from the report and from reception; rcpt_slot holds the
 * recipient pointer). Exposed for tests. Returns false when the entry is
 * not a failure. */
bool oobrec_build(const json_t *report, const json_t *entry, const logrec *reception,
                  logrec *r, const char **rcpt_slot, char *content_buf, size_t content_len);

#endif
