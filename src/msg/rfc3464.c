/* RFC 3464 delivery status notifications (see rfc3464.h): the one parser
 * behind message:parse_rfc3464 and the OOB records, and the generator
 * behind kumo.generate_rfc3464_message. Pure code on caller-owned bytes,
 * any thread. A DSN that claims to be one (multipart/report) but breaks the
 * RFC's rules (no delivery-status part, a group without its required
 * fields, a status that is not X.Y.Z, a field given twice, a date that does
 * not parse, more than RFC3464_MAX_RECIPIENTS groups) is KERR_PARSE with a
 * sentence naming what is wrong; nothing here aborts on input. Field values
 * that are not UTF-8 are repaired with U+FFFD (a report's text is ASCII by
 * RFC; global-delivery-status allows UTF-8). */
#include <ctype.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "core/kerr.h"
#include "core/spoolid.h"
#include "msg/datetime.h"
#include "msg/mime.h"
#include "msg/report_fields.h"
#include "msg/rfc3464.h"

/* ---- parsing ---------------------------------------------------------------------------- */

typedef enum { F_STR, F_MTA, F_RECIP, F_DIAG, F_DATE, F_ACTION, F_STATUS } ftype;

typedef struct fspec {
    const char *name; /* lower-case field name */
    const char *key;  /* JSON key */
    const char *disp; /* as the RFC writes it, for messages */
    ftype type;
    bool required;
} fspec;

static const fspec per_message_fields[] = {
    {"reporting-mta", "reporting_mta", "Reporting-MTA", F_MTA, true},
    {"original-envelope-id", "original_envelope_id", "Original-Envelope-Id", F_STR, false},
    {"dsn-gateway", "dsn_gateway", "DSN-Gateway", F_MTA, false},
    {"received-from-mta", "received_from_mta", "Received-From-MTA", F_MTA, false},
    {"arrival-date", "arrival_date", "Arrival-Date", F_DATE, false},
    {NULL, NULL, NULL, F_STR, false},
};

static const fspec per_recipient_fields[] = {
    {"final-recipient", "final_recipient", "Final-Recipient", F_RECIP, true},
    {"action", "action", "Action", F_ACTION, true},
    {"status", "status", "Status", F_STATUS, true},
    {"original-recipient", "original_recipient", "Original-Recipient", F_RECIP, false},
    {"remote-mta", "remote_mta", "Remote-MTA", F_MTA, false},
    {"diagnostic-code", "diagnostic_code", "Diagnostic-Code", F_DIAG, false},
    {"last-attempt-date", "last_attempt_date", "Last-Attempt-Date", F_DATE, false},
    {"final-log-id", "final_log_id", "Final-Log-Id", F_STR, false},
    {"will-retry-until", "will_retry_until", "Will-Retry-Until", F_DATE, false},
    {NULL, NULL, NULL, F_STR, false},
};

static json_t *parse_status(const char *v, char *err, size_t errlen)
{
    /* "5.1.1" or "5.1.1 (comment)": class 2, 4 or 5; subject and detail up
     * to three digits (RFC 3463 §2) */
    const char *p = v;
    long part[3];
    for (int i = 0; i < 3; i++) {
        if (!isdigit((unsigned char)*p))
            goto bad;
        char *e;
        part[i] = strtol(p, &e, 10);
        if (e - p > 3)
            goto bad;
        p = e;
        if (i < 2) {
            if (*p != '.')
                goto bad;
            p++;
        }
    }
    if (*p && *p != ' ' && *p != '\t')
        goto bad;
    if (part[0] != 2 && part[0] != 4 && part[0] != 5)
        goto bad;
    while (*p == ' ' || *p == '\t')
        p++;
    json_t *o = json_pack("{s:I, s:I, s:I}", "class", (json_int_t)part[0], "subject",
                          (json_int_t)part[1], "detail", (json_int_t)part[2]);
    if (o && *p)
        json_object_set_new(o, "comment", json_string(p));
    return o;
bad:
    snprintf(err, errlen, "status: invalid status '%.80s' (want class.subject.detail)", v);
    return NULL;
}

static json_t *parse_action(const char *v, char *err, size_t errlen)
{
    static const char *const actions[] = {"failed", "delayed", "delivered", "relayed",
                                          "expanded", NULL};
    char a[16];
    size_t n = 0;
    while (*v == ' ')
        v++;
    for (; *v && *v != ' ' && *v != '(' && n + 1 < sizeof(a); v++)
        a[n++] = (char)tolower((unsigned char)*v);
    a[n] = 0;
    for (const char *const *x = actions; *x; x++)
        if (strcmp(a, *x) == 0)
            return json_string(a);
    snprintf(err, errlen, "action: invalid action '%.40s'", v - n);
    return NULL;
}

/* One group of fields into a JSON object per specs. */
static int parse_group(const char *s, size_t n, const fspec *specs, const char *what,
                       json_t **out, char *err, size_t errlen)
{
    json_t *fields;
    char e2[256];
    int rc = rfields_parse(s, n, &fields, e2, sizeof(e2));
    if (rc) {
        if (rc == KERR_PARSE)
            snprintf(err, errlen, "%s: %s", what, e2);
        return rc;
    }
    json_t *o = json_object();
    for (const fspec *f = specs; o && f->name; f++) {
        const char *v;
        json_t *hold;
        if (rfields_take(fields, f->name, &v, &hold, e2, sizeof(e2)) != 0)
            goto fail;
        if (!v) {
            if (f->required) {
                snprintf(e2, sizeof(e2), "required field %s is missing", f->disp);
                goto fail;
            }
            continue;
        }
        json_t *j = NULL;
        switch (f->type) {
        case F_STR:
            j = json_string(v);
            break;
        case F_MTA:
            j = rfields_typed_pair(v, "mta_type", "name", f->name, e2, sizeof(e2));
            break;
        case F_RECIP:
            j = rfields_typed_pair(v, "recipient_type", "recipient", f->name, e2, sizeof(e2));
            if (j && strcmp(json_string_value(json_object_get(j, "recipient_type")), "rfc822") == 0)
                json_object_set_new(
                    j, "recipient",
                    rfields_address(json_string_value(json_object_get(j, "recipient"))));
            break;
        case F_DIAG:
            j = rfields_typed_pair(v, "diagnostic_type", "diagnostic", f->name, e2, sizeof(e2));
            break;
        case F_DATE:
            j = rfields_date(v, f->name, e2, sizeof(e2));
            break;
        case F_ACTION:
            j = parse_action(v, e2, sizeof(e2));
            break;
        case F_STATUS:
            j = parse_status(v, e2, sizeof(e2));
            break;
        }
        json_decref(hold);
        if (!j)
            goto fail;
        json_object_set_new(o, f->key, j);
    }
    if (!o) {
        json_decref(fields);
        return KERR_NOMEM;
    }
    json_object_set_new(o, "extensions", fields);
    *out = o;
    return 0;
fail:
    snprintf(err, errlen, "%s: %s", what, e2);
    json_decref(o);
    json_decref(fields);
    return KERR_PARSE;
}

static bool blank_line(const char *s, size_t n, size_t at, size_t *next)
{
    size_t i = at;
    while (i < n && (s[i] == ' ' || s[i] == '\t'))
        i++;
    if (i < n && s[i] != '\n')
        return false;
    *next = i < n ? i + 1 : n;
    return true;
}

static int parse_status_body(const char *s, size_t n, json_t *report, char *err,
                             size_t errlen)
{
    json_t *recips = json_array();
    if (!recips)
        return KERR_NOMEM;
    json_object_set_new(report, "per_recipient", recips);
    size_t off = 0;
    int group = 0;
    while (off < n) {
        size_t nx;
        if (blank_line(s, n, off, &nx)) { /* separators, and extra ones */
            off = nx;
            continue;
        }
        /* the group runs to the next blank (or white-space-only) line */
        size_t end = off;
        while (end < n) {
            const char *nl = memchr(s + end, '\n', n - end);
            end = nl ? (size_t)(nl - s) + 1 : n;
            if (end < n && blank_line(s, n, end, &nx))
                break;
        }
        if (group > RFC3464_MAX_RECIPIENTS) {
            snprintf(err, errlen, "more than %d per-recipient groups", RFC3464_MAX_RECIPIENTS);
            return KERR_PARSE;
        }
        json_t *g;
        char what[48];
        snprintf(what, sizeof(what), group ? "per-recipient group %d" : "per-message fields",
                 group);
        int rc = parse_group(s + off, end - off, group ? per_recipient_fields : per_message_fields,
                             what, &g, err, errlen);
        if (rc)
            return rc;
        if (group == 0)
            json_object_set_new(report, "per_message", g);
        else
            json_array_append_new(recips, g);
        group++;
        off = end;
    }
    if (group == 0) {
        snprintf(err, errlen, "the delivery-status part is empty");
        return KERR_PARSE;
    }
    if (group == 1) {
        snprintf(err, errlen, "the report has no per-recipient fields");
        return KERR_PARSE;
    }
    return 0;
}

int rfc3464_parse(const char *data, size_t len, json_t **out, char *err, size_t errlen)
{
    *out = NULL;
    mpart *root;
    if (mpart_parse(data, len, &root) != 0)
        return KERR_NOMEM;
    char *rt = rfields_report_type(root);
    int rc = 0;
    /* not a report, or a report of another kind (an ARF, a read receipt) */
    if (!rt || (*rt && strcmp(rt, "delivery-status") != 0 &&
                strcmp(rt, "global-delivery-status") != 0))
        goto done;
    static const char *const types[] = {"message/delivery-status",
                                        "message/global-delivery-status", NULL};
    mpart *ds = rfields_find_child(root, types);
    if (!ds) {
        snprintf(err, errlen, "delivery-status part missing");
        rc = KERR_PARSE;
        goto done;
    }
    size_t bl;
    char *body = rfields_part_text(ds, &bl);
    json_t *report = json_object();
    if (!body || !report) {
        free(body);
        json_decref(report);
        rc = KERR_NOMEM;
        goto done;
    }
    rc = parse_status_body(body, bl, report, err, errlen);
    free(body);
    if (rc == 0) {
        size_t ol;
        char *orig = rfields_original_message(root, &ol);
        if (orig)
            json_object_set_new(report, "original_message", rfields_bytes_json(orig, ol));
        free(orig);
        *out = report;
    } else {
        json_decref(report);
    }
done:
    free(rt);
    mpart_unref(root);
    return rc;
}

/* ---- generation ------------------------------------------------------------------------- */

typedef struct sb {
    char *p;
    size_t n, cap;
    bool oom;
} sb;

static void sb_add(sb *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->n + n + 1 > b->cap) {
        size_t nc = (b->n + n + 1) * 2;
        char *np = realloc(b->p, nc);
        if (!np) {
            b->oom = true;
            return;
        }
        b->p = np;
        b->cap = nc;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

static void sb_str(sb *b, const char *s)
{
    sb_add(b, s, strlen(s));
}

static void sb_printf(sb *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sb *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    int n = vasprintf(&s, fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->oom = true;
        return;
    }
    sb_add(b, s, (size_t)n);
    free(s);
}

static const char *jstr(const json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "";
}

/* a record's time: unix seconds (integer) or an RFC 3339 string */
static int64_t rec_time(const json_t *rec, const char *k_int, const char *k_str)
{
    json_t *t = json_object_get(rec, k_int);
    if (json_is_integer(t))
        return (int64_t)json_integer_value(t);
    if (json_is_real(t))
        return (int64_t)json_real_value(t);
    int64_t ns;
    if (json_is_string(t) && rfc3339_parse(json_string_value(t), &ns) == 0)
        return ns / 1000000000LL;
    t = json_object_get(rec, k_str);
    if (json_is_string(t) && rfc3339_parse(json_string_value(t), &ns) == 0)
        return ns / 1000000000LL;
    return (int64_t)time(NULL);
}

/* "550 5.7.1 no thanks": the response on one line */
static void response_line(sb *b, const json_t *resp)
{
    json_int_t code = json_integer_value(json_object_get(resp, "code"));
    sb_printf(b, "%lld", (long long)code);
    json_t *enh = json_object_get(resp, "enhanced_code");
    if (json_is_object(enh))
        sb_printf(b, " %lld.%lld.%lld", (long long)json_integer_value(json_object_get(enh, "class")),
                  (long long)json_integer_value(json_object_get(enh, "subject")),
                  (long long)json_integer_value(json_object_get(enh, "detail")));
    const char *c = jstr(resp, "content");
    if (*c) {
        sb_str(b, " ");
        for (const char *p = c; *p; p++)
            sb_add(b, (*p == '\r' || *p == '\n') ? " " : p, 1);
    }
}

static void status_value(sb *b, const json_t *resp)
{
    json_int_t code = json_integer_value(json_object_get(resp, "code"));
    json_t *enh = json_object_get(resp, "enhanced_code");
    if (json_is_object(enh))
        sb_printf(b, "%lld.%lld.%lld", (long long)json_integer_value(json_object_get(enh, "class")),
                  (long long)json_integer_value(json_object_get(enh, "subject")),
                  (long long)json_integer_value(json_object_get(enh, "detail")));
    else
        sb_str(b, code >= 500 ? "5.0.0" : code >= 400 ? "4.0.0" : code >= 200 && code < 300 ? "2.0.0" : "4.0.0");
    const char *c = jstr(resp, "content");
    if (*c) {
        sb_str(b, " ");
        for (const char *p = c; *p; p++)
            sb_add(b, (*p == '\r' || *p == '\n') ? " " : p, 1);
    }
}

/* A text part as the page's samples show it: charset us-ascii when the
 * text is ASCII (quoted-printable only for long lines). */
static mpart *text_part(const char *ctype, const sb *t)
{
    mpart *p = mpart_new_text(ctype, t->p ? t->p : "", t->n);
    bool ascii = true;
    for (size_t i = 0; i < t->n; i++)
        if ((unsigned char)t->p[i] >= 0x80)
            ascii = false;
    if (p && ascii) {
        char v[96];
        snprintf(v, sizeof(v), "%s;\r\n  charset=\"us-ascii\"", ctype);
        if (mpart_hdr_set(p, "Content-Type", v) != 0) {
            mpart_unref(p);
            return NULL;
        }
    }
    return p;
}

static int add_part(sb *b, const char *boundary, mpart *p)
{
    if (!p)
        return KERR_NOMEM;
    size_t n;
    char *s = mpart_serialize(p, &n);
    mpart_unref(p);
    if (!s)
        return KERR_NOMEM;
    sb_printf(b, "--%s\r\n", boundary);
    sb_add(b, s, n);
    if (n < 2 || s[n - 1] != '\n')
        sb_str(b, "\r\n");
    free(s);
    return 0;
}

int rfc3464_generate(const rfc3464_gen_params *p, const char *orig, size_t orig_len,
                     const json_t *rec, char **out, size_t *out_len, char *err, size_t errlen)
{
    *out = NULL;
    *out_len = 0;
    if (!json_is_object(rec)) {
        snprintf(err, errlen, "the log record is not an object");
        return KERR_PARSE;
    }
    const char *type = jstr(rec, "type");
    const char *sender = jstr(rec, "sender");
    bool bounce = strcmp(type, "Bounce") == 0;
    if (!*sender) /* never a report to the null sender */
        return 0;
    for (const char *c = sender; *c; c++)
        if ((unsigned char)*c < 0x20 || *c == 0x7f) {
            snprintf(err, errlen, "the log record's sender contains a control character");
            return KERR_PARSE;
        }
    if (bounce) {
        if (!p->enable_bounce || strcmp(jstr(rec, "delivery_protocol"), "ESMTP") != 0)
            return 0;
    } else if (strcmp(type, "Expiration") != 0 || !p->enable_expiration) {
        return 0;
    }
    json_t *resp = json_object_get(rec, "response");
    if (!json_is_object(resp)) {
        snprintf(err, errlen, "the log record has no response");
        return KERR_PARSE;
    }
    /* recipients: a string or an array of them */
    json_t *rj = json_object_get(rec, "recipient");
    json_t *recips = json_is_array(rj)    ? json_incref(rj)
                      : json_is_string(rj) ? json_pack("[O]", rj)
                                           : json_pack("[s]", "");
    if (!recips)
        return KERR_NOMEM;
    char created[64], last[64];
    rfc5322_date_format(rec_time(rec, "created", "created_time"), created, sizeof(created));
    rfc5322_date_format(rec_time(rec, "timestamp", "event_time"), last, sizeof(last));

    sb text = {0}, status = {0}, msg = {0};
    /* the human-readable part */
    sb_printf(&text, "The message was received at %s\r\nfrom %s and addressed to ", created, sender);
    for (size_t i = 0; i < json_array_size(recips); i++)
        sb_printf(&text, "%s%s", i ? ", " : "", json_string_value(json_array_get(recips, i)) ? json_string_value(json_array_get(recips, i)) : "");
    sb_str(&text, ".\r\n");
    json_t *peer = json_object_get(rec, "peer_address");
    if (bounce && json_is_object(peer)) {
        sb_printf(&text, "While communicating with %s (%s):\r\nResponse: ", jstr(peer, "name"),
                  jstr(peer, "addr"));
        response_line(&text, resp);
        sb_str(&text, "\r\n\r\n");
    } else {
        sb_str(&text, "Status: ");
        response_line(&text, resp);
        sb_str(&text, bounce ? "\r\n\r\n" : "\r\n");
    }
    sb_str(&text, "The message will be deleted from the queue.\r\n"
                  "No further attempts will be made to deliver it.\r\n");

    /* the machine-readable part */
    sb_printf(&status, "Reporting-MTA: %s; %s\r\nArrival-Date: %s\r\n\r\n", p->mta_type,
              p->mta_name, created);
    for (size_t i = 0; i < json_array_size(recips); i++) {
        const char *r = json_string_value(json_array_get(recips, i));
        sb_printf(&status, "Final-Recipient: rfc822;%s\r\nAction: failed\r\nStatus: ", r ? r : "");
        status_value(&status, resp);
        sb_str(&status, "\r\n");
        if (json_is_object(peer))
            sb_printf(&status, "Remote-MTA: dns; %s\r\n", jstr(peer, "name"));
        sb_str(&status, "Diagnostic-Code: smtp; ");
        response_line(&status, resp);
        sb_printf(&status, "\r\nLast-Attempt-Date: %s\r\n\r\n", last);
    }
    json_decref(recips);

    char boundary[80];
    if (p->stable_content) {
        snprintf(boundary, sizeof(boundary), "report-boundary");
    } else {
        spoolid id;
        spoolid_new(&id);
        char u[SPOOLID_UUID_LEN + 1];
        spoolid_to_uuid_str(&id, u);
        snprintf(boundary, sizeof(boundary), "report-%s", u);
    }
    char mid[SPOOLID_UUID_LEN + 1];
    if (p->stable_content) {
        snprintf(mid, sizeof(mid), "UUID");
    } else {
        spoolid id;
        spoolid_new(&id);
        spoolid_to_uuid_str(&id, mid);
    }
    sb_printf(&msg,
              "Content-Type: multipart/report;\r\n  boundary=\"%s\";\r\n"
              "  report-type=\"delivery-status\"\r\nSubject: Returned mail\r\n"
              "Mime-Version: 1.0\r\nMessage-ID: <%s@%s>\r\nTo: %s\r\n"
              "From: Mail Delivery Subsystem <mailer-daemon@%s>\r\n\r\n",
              boundary, mid, p->mta_name, sender, p->mta_name);
    int rc = 0;
    if (text.oom || status.oom)
        rc = KERR_NOMEM;
    if (!rc)
        rc = add_part(&msg, boundary, text_part("text/plain", &text));
    if (!rc)
        rc = add_part(&msg, boundary, text_part("message/delivery-status", &status));
    if (!rc && orig && p->include_original_message != RFC3464_INCLUDE_NO) {
        bool full = p->include_original_message == RFC3464_INCLUDE_FULL;
        if (!full) { /* the header block, without the blank line that ends it */
            mpart *op;
            if (mpart_parse(orig, orig_len, &op) == 0) {
                sb hb = {0};
                for (size_t i = 0; i < op->nh; i++) {
                    sb_add(&hb, op->h[i].raw, op->h[i].raw_len);
                    sb_str(&hb, "\r\n");
                }
                mpart_unref(op);
                sb_printf(&msg, "--%s\r\nContent-Type: text/rfc822-headers\r\n\r\n", boundary);
                if (hb.n)
                    sb_add(&msg, hb.p, hb.n);
                rc = hb.oom ? KERR_NOMEM : 0;
                free(hb.p);
            } else {
                rc = KERR_NOMEM;
            }
        } else {
            sb_printf(&msg, "--%s\r\nContent-Type: message/rfc822\r\n\r\n", boundary);
            sb_add(&msg, orig, orig_len);
            if (orig_len && orig[orig_len - 1] != '\n')
                sb_str(&msg, "\r\n");
        }
    }
    sb_printf(&msg, "--%s--\r\n", boundary);
    free(text.p);
    free(status.p);
    if (!rc && msg.oom)
        rc = KERR_NOMEM;
    if (rc) {
        free(msg.p);
        return rc;
    }
    *out = msg.p;
    *out_len = msg.n;
    return 0;
}
