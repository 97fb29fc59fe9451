/* RFC 5965 feedback reports (see arf.h), on the field-block helpers that the
 * DSN parser shares (report_fields.c). Pure code, any thread; malformed
 * reports are KERR_PARSE with a sentence naming the problem, never an
 * abort. Field names follow KumoMTA's ARFReport (including its spelling
 * "original_rcpto_to"); Arrival-Date falls back to the older Received-Date
 * and, like KumoMTA, a date that does not parse is left null rather than
 * failing the whole report. A base64 X- header in the original message
 * that decodes to kumod's supplemental trace object ({"_@_": "\\_/", ...},
 * start_esmtp_listener's trace_headers) becomes supplemental_trace. */
#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/kerr.h"
#include "msg/arf.h"
#include "msg/headers.h"
#include "msg/mime.h"
#include "msg/report_fields.h"

static int b64val(int c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

/* base64 without white space -> bytes; NULL when it is not base64 */
static char *b64_decode(const char *s, size_t n, size_t *out_len)
{
    char *o = malloc(n * 3 / 4 + 4);
    if (!o)
        return NULL;
    size_t k = 0;
    unsigned v = 0;
    int bits = 0, pad = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (isspace(c))
            continue;
        if (c == '=') {
            pad++;
            continue;
        }
        int d = b64val(c);
        if (d < 0 || pad) {
            free(o);
            return NULL;
        }
        v = (v << 6) | (unsigned)d;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            o[k++] = (char)((v >> bits) & 0xff);
        }
    }
    *out_len = k;
    return o;
}

static json_t *find_trace(const char *orig, size_t len)
{
    size_t pos = 0;
    hdr_field f;
    while (hdr_next(orig, len, &pos, &f)) {
        if (f.name_len < 2 || strncasecmp(f.name, "x-", 2) != 0)
            continue;
        const char *v = memchr(f.raw, ':', f.raw_len);
        if (!v)
            continue;
        v++;
        size_t dl;
        char *d = b64_decode(v, f.raw_len - (size_t)(v - f.raw), &dl);
        if (!d)
            continue;
        json_t *j = json_loadb(d, dl, 0, NULL);
        free(d);
        json_t *mark = json_object_get(j, "_@_");
        if (json_is_object(j) && json_is_string(mark) &&
            strcmp(json_string_value(mark), "\\_/") == 0) {
            json_object_del(j, "_@_");
            return j;
        }
        json_decref(j);
    }
    return NULL;
}

typedef enum { A_STR, A_ADDR, A_MTA, A_DATE, A_U32 } atype;

static int take_single(json_t *fields, json_t *o, const char *name, const char *key, atype t,
                       bool required, char *err, size_t errlen)
{
    const char *v;
    json_t *hold, *j = NULL;
    if (rfields_take(fields, name, &v, &hold, err, errlen) != 0)
        return KERR_PARSE;
    if (!v) {
        if (required) {
            snprintf(err, errlen, "required field %s is missing", name);
            return KERR_PARSE;
        }
        return json_object_set_new(o, key, json_null()) ? KERR_NOMEM : 0;
    }
    int rc = 0;
    switch (t) {
    case A_STR:
        j = json_string(v);
        break;
    case A_ADDR:
        j = rfields_address(v);
        break;
    case A_MTA:
        j = rfields_typed_pair(v, "mta_type", "name", name, err, errlen);
        if (!j)
            rc = KERR_PARSE;
        break;
    case A_DATE: {
        char e2[128];
        j = rfields_date(v, name, e2, sizeof(e2));
        if (!j)
            j = json_null();
        break;
    }
    case A_U32: {
        char *e;
        unsigned long long n = strtoull(v, &e, 10);
        while (*e == ' ')
            e++;
        if (!isdigit((unsigned char)*v) || *e || n > 0xffffffffULL) {
            snprintf(err, errlen, "%s: invalid count '%.40s'", name, v);
            rc = KERR_PARSE;
        } else {
            j = json_integer((json_int_t)n);
        }
        break;
    }
    }
    json_decref(hold);
    if (rc)
        return rc;
    return json_object_set_new(o, key, j) ? KERR_NOMEM : 0;
}

static int take_multi(json_t *fields, json_t *o, const char *name, const char *key, bool addr)
{
    json_t *arr = json_object_get(fields, name);
    json_t *out = json_array();
    if (!out)
        return KERR_NOMEM;
    for (size_t i = 0; i < json_array_size(arr); i++) {
        const char *v = json_string_value(json_array_get(arr, i));
        json_array_append_new(out, addr ? rfields_address(v) : json_string(v));
    }
    json_object_del(fields, name);
    return json_object_set_new(o, key, out) ? KERR_NOMEM : 0;
}

static int parse_fields(const char *s, size_t n, json_t *o, char *err, size_t errlen)
{
    json_t *fields;
    int rc = rfields_parse(s, n, &fields, err, errlen);
    if (rc)
        return rc;
    const char *arrival = json_object_get(fields, "arrival-date") ? "arrival-date" : "received-date";
    if ((rc = take_single(fields, o, "feedback-type", "feedback_type", A_STR, true, err, errlen)) ||
        (rc = take_single(fields, o, "user-agent", "user_agent", A_STR, true, err, errlen)) ||
        (rc = take_single(fields, o, "version", "version", A_STR, true, err, errlen)) ||
        (rc = take_single(fields, o, arrival, "arrival_date", A_DATE, false, err, errlen)) ||
        (rc = take_single(fields, o, "incidents", "incidents", A_U32, false, err, errlen)) ||
        (rc = take_single(fields, o, "original-envelope-id", "original_envelope_id", A_STR, false,
                          err, errlen)) ||
        (rc = take_single(fields, o, "original-mail-from", "original_mail_from", A_ADDR, false, err,
                          errlen)) ||
        (rc = take_single(fields, o, "reporting-mta", "reporting_mta", A_MTA, false, err, errlen)) ||
        (rc = take_single(fields, o, "source-ip", "source_ip", A_STR, false, err, errlen)) ||
        (rc = take_multi(fields, o, "authentication-results", "authentication_results", false)) ||
        (rc = take_multi(fields, o, "original-rcpt-to", "original_rcpto_to", true)) ||
        (rc = take_multi(fields, o, "reported-domain", "reported_domain", false)) ||
        (rc = take_multi(fields, o, "reported-uri", "reported_uri", false))) {
        json_decref(fields);
        return rc;
    }
    json_object_set_new(o, "extensions", fields);
    return 0;
}

int arf_parse(const char *data, size_t len, json_t **out, char *err, size_t errlen)
{
    *out = NULL;
    mpart *root;
    if (mpart_parse(data, len, &root) != 0)
        return KERR_NOMEM;
    char *rt = rfields_report_type(root);
    int rc = 0;
    if (!rt || strcmp(rt, "feedback-report") != 0)
        goto done;
    static const char *const types[] = {"message/feedback-report", NULL};
    mpart *fp = rfields_find_child(root, types);
    if (!fp) {
        snprintf(err, errlen, "feedback-report part missing");
        rc = KERR_PARSE;
        goto done;
    }
    size_t bl;
    char *body = rfields_part_text(fp, &bl);
    json_t *o = json_object();
    if (!body || !o) {
        free(body);
        json_decref(o);
        rc = KERR_NOMEM;
        goto done;
    }
    char e2[256];
    rc = parse_fields(body, bl, o, e2, sizeof(e2));
    free(body);
    if (rc) {
        snprintf(err, errlen, "feedback report: %s", e2);
        json_decref(o);
        goto done;
    }
    size_t ol;
    char *orig = rfields_original_message(root, &ol);
    json_t *trace = orig ? find_trace(orig, ol) : NULL;
    json_object_set_new(o, "original_message", orig ? rfields_bytes_json(orig, ol) : json_null());
    json_object_set_new(o, "supplemental_trace", trace ? trace : json_null());
    free(orig);
    *out = o;
done:
    free(rt);
    mpart_unref(root);
    return rc;
}
