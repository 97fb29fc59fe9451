/* OOB and Feedback records for log_oob / log_arf listener domains (see
 * oobrec.h). Runs on the reactor that received the message; owns only the
 * parsed report it returns. Parse failures never reach the client: they
 * come back as text for the diagnostic log and the message is then
 * treated as an ordinary one.
 *
 * An OOB record follows KumoMTA's: sender is the recipient of the DSN (the
 * original message's envelope sender), recipient the Original-Recipient or
 * else the Final-Recipient, response the Status as enhanced code with the
 * code and text of an "smtp" Diagnostic-Code (550 and "" without one),
 * peer_address the Reporting-MTA's name and the address of the client that
 * delivered the DSN, timestamp the Last-Attempt-Date, num_attempts 0, size
 * 0; meta is the DSN's. Two things KumoMTA does not do (it leaves them as a
 * FIXME): headers are taken from the original message when the report
 * includes it (message/rfc822 or text/rfc822-headers), else from the DSN;
 * and site holds the Remote-MTA's name (the MX the original delivery talked
 * to), which KumoMTA leaves empty. The bounce classifier sees the record like any other (logs.c). */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/kerr.h"
#include "log/oobrec.h"
#include "msg/arf.h"
#include "msg/datetime.h"
#include "msg/rfc3464.h"

int oobrec_disp_parse(const char *s, oobrec_disp *out)
{
    if (strcmp(s, "Ignore") == 0)
        *out = OOBREC_IGNORE;
    else if (strcmp(s, "LogThenDrop") == 0)
        *out = OOBREC_LOG_THEN_DROP;
    else if (strcmp(s, "LogThenRelay") == 0)
        *out = OOBREC_LOG_THEN_RELAY;
    else
        return KERR_PARSE;
    return 0;
}

oobrec_report *oobrec_detect(const char *data, size_t len, oobrec_disp oob, oobrec_disp arf,
                             bool *malformed, char *err, size_t errlen)
{
    *malformed = false;
    json_t *rep = NULL;
    char e2[256];
    logrec_type type = LOGREC_FEEDBACK;
    bool relay = false;
    if (arf != OOBREC_IGNORE) {
        int rc = arf_parse(data, len, &rep, e2, sizeof(e2));
        if (rc) {
            *malformed = true;
            snprintf(err, errlen, "not a valid ARF report: %s",
                     rc == KERR_PARSE ? e2 : kerr_str(rc));
            return NULL; /* KumoMTA does not go on to try it as a DSN either */
        }
        relay = arf == OOBREC_LOG_THEN_RELAY;
    }
    if (!rep && oob != OOBREC_IGNORE) {
        int rc = rfc3464_parse(data, len, &rep, e2, sizeof(e2));
        if (rc) {
            *malformed = true;
            snprintf(err, errlen, "not a valid RFC 3464 report: %s",
                     rc == KERR_PARSE ? e2 : kerr_str(rc));
            return NULL;
        }
        type = LOGREC_OOB;
        relay = oob == OOBREC_LOG_THEN_RELAY;
    }
    if (!rep)
        return NULL;
    oobrec_report *r = malloc(sizeof(*r));
    if (!r) {
        json_decref(rep);
        return NULL;
    }
    r->type = type;
    r->relay = relay;
    r->report = rep;
    return r;
}

void oobrec_free(oobrec_report *r)
{
    if (!r)
        return;
    json_decref(r->report);
    free(r);
}

bool oobrec_build(const json_t *report, const json_t *entry, const logrec *reception,
                  logrec *r, const char **rcpt_slot, char *content_buf, size_t content_len)
{
    const char *action = json_string_value(json_object_get(entry, "action"));
    if (!action || strcmp(action, "failed") != 0)
        return false;
    *r = *reception;
    r->type = LOGREC_OOB;
    /* the DSN goes to the original sender: its recipient */
    r->sender = reception->n_recipients ? reception->recipients[0] : "";
    const json_t *who = json_object_get(entry, "original_recipient");
    if (!json_is_object(who))
        who = json_object_get(entry, "final_recipient");
    *rcpt_slot = json_string_value(json_object_get(who, "recipient"));
    if (!*rcpt_slot)
        *rcpt_slot = "";
    r->recipients = rcpt_slot;
    r->n_recipients = 1;
    r->size = 0;
    r->num_attempts = 0;
    const json_t *remote = json_object_get(entry, "remote_mta");
    const char *site = json_string_value(json_object_get(remote, "name"));
    r->site = site ? site : "";
    const json_t *rm = json_object_get(json_object_get(report, "per_message"), "reporting_mta");
    const char *rname = json_string_value(json_object_get(rm, "name"));
    r->peer_name = rname ? rname : "";
    if (!r->peer_addr)
        r->peer_addr = "0.0.0.0";
    const json_t *st = json_object_get(entry, "status");
    r->response.enh_class = (int)json_integer_value(json_object_get(st, "class"));
    r->response.enh_subject = (int)json_integer_value(json_object_get(st, "subject"));
    r->response.enh_detail = (int)json_integer_value(json_object_get(st, "detail"));
    r->response.code = 550;
    r->response.command = NULL;
    snprintf(content_buf, content_len, "%s", "");
    const json_t *diag = json_object_get(entry, "diagnostic_code");
    const char *dt = json_string_value(json_object_get(diag, "diagnostic_type"));
    const char *dv = json_string_value(json_object_get(diag, "diagnostic"));
    if (dt && dv && strcasecmp(dt, "smtp") == 0) {
        /* "550 5.1.1 text" or a multi-line "550-5.1.1 text ... 550-5.1.1 more" */
        if (isdigit((unsigned char)dv[0]) && isdigit((unsigned char)dv[1]) &&
            isdigit((unsigned char)dv[2]) && (dv[3] == ' ' || dv[3] == '-' || dv[3] == 0)) {
            r->response.code = (dv[0] - '0') * 100 + (dv[1] - '0') * 10 + (dv[2] - '0');
            dv += dv[3] ? 4 : 3;
        }
        snprintf(content_buf, content_len, "%s", dv);
    }
    r->response.content = content_buf;
    const char *when = json_string_value(json_object_get(entry, "last_attempt_date"));
    int64_t ns;
    r->timestamp_ns = when && rfc3339_parse(when, &ns) == 0 ? ns : 0;
    r->bounce_classification = NULL; /* the classifier decides (logs_record) */
    r->feedback_report = NULL;
    r->tls_cipher = r->tls_protocol_version = r->tls_peer_subject_name = NULL;
    return true;
}

size_t oobrec_log(const oobrec_report *rep, const logrec *reception)
{
    if (rep->type == LOGREC_FEEDBACK) {
        logrec r = *reception;
        r.type = LOGREC_FEEDBACK;
        r.feedback_report = rep->report;
        logs_record(&r);
        return 0;
    }
    if (rep->relay)
        logs_record(reception);
    /* headers come from the original message when the report carries it
     * (what a bounce is about: its Subject, campaign headers, Message-ID);
     * meta stays the DSN's own */
    logrec base = *reception;
    const char *orig = json_string_value(json_object_get(rep->report, "original_message"));
    if (orig) {
        base.msg_data = orig;
        base.msg_data_len = json_string_length(json_object_get(rep->report, "original_message"));
    }
    json_t *recips = json_object_get(rep->report, "per_recipient");
    size_t n = 0;
    for (size_t i = 0; i < json_array_size(recips); i++) {
        logrec r;
        const char *rcpt;
        char content[4096];
        if (!oobrec_build(rep->report, json_array_get(recips, i), &base, &r, &rcpt, content,
                          sizeof(content)))
            continue;
        logs_record(&r);
        n++;
    }
    return n;
}
