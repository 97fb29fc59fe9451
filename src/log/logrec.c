/* Delivery log records as KumoMTA's JsonLogRecord serialises them: record
 * type names, and one record to one compact JSON line with the meta keys and
 * message headers a destination asked for. Pure functions on borrowed input,
 * any thread; they own nothing past the call. Failure is only allocation (or
 * an invalid type): logrec_to_json() then returns NULL.
 *
 * The fields, in KumoMTA's order (crates/kumo-log-types JsonLogRecord):
 *   type                   string, RecordType name
 *   id                     string ("" for Rejection)
 *   sender                 string
 *   recipient              string when one, else array (also [] for none)
 *   queue, site            string
 *   size                   integer
 *   response               {code, enhanced_code: {class, subject, detail} | null,
 *                           content: string on one line, command: string | null}
 *   peer_address           {name, addr} | null (addr is a string, "ip" or "ip:port")
 *   timestamp, event_time  unix seconds (integer), RFC 3339 UTC ("...T..[.f]Z")
 *   created, created_time  the same for the spool id's creation time
 *   num_attempts           integer
 *   bounce_classification  string, "Uncategorized" by default
 *   egress_pool            string | null
 *   egress_source          string | null
 *   source_address         {address} | null
 *   feedback_report        object | null
 *   meta, headers          object, {} when nothing is configured or found
 *   delivery_protocol      string | null
 *   reception_protocol     string | null
 *   nodeid                 string, a UUID (nil UUID when unknown)
 * and only when present:
 *   tls_cipher, tls_protocol_version  string
 *   tls_peer_subject_name  array of strings ("C=US", "CN=mx.example.com")
 *   provider_name          string
 *   session_id             string (UUID)
 * Strings that KumoMTA types as String (not Option) are "" when NULL here, so
 * that KumoMTA's own tools can read our records. Invalid UTF-8 is replaced by
 * U+FFFD as Rust's from_utf8_lossy does. */
#include <ctype.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "core/jsonw.h"
#include "core/kerr.h"
#include "core/spoolid.h"
#include "core/utf8.h"
#include "log/logs.h"
#include "msg/message.h"

#define NS_PER_S 1000000000LL

static const char *const logrec_names[LOGREC__COUNT] = {
    [LOGREC_RECEPTION] = "Reception",
    [LOGREC_DELIVERY] = "Delivery",
    [LOGREC_BOUNCE] = "Bounce",
    [LOGREC_TRANSIENT_FAILURE] = "TransientFailure",
    [LOGREC_EXPIRATION] = "Expiration",
    [LOGREC_ADMIN_BOUNCE] = "AdminBounce",
    [LOGREC_OOB] = "OOB",
    [LOGREC_FEEDBACK] = "Feedback",
    [LOGREC_REJECTION] = "Rejection",
    [LOGREC_ADMIN_REBIND] = "AdminRebind",
    [LOGREC_DEFERRED_INJECTION_REBIND] = "DeferredInjectionRebind",
    [LOGREC_DELAYED] = "Delayed",
    [LOGREC_XFER_OUT] = "XferOut",
    [LOGREC_XFER_IN] = "XferIn",
};

const char *logrec_type_name(logrec_type t)
{
    if (t == LOGREC__COUNT)
        return "Any";
    if ((unsigned)t >= LOGREC__COUNT)
        return NULL;
    return logrec_names[t];
}

int logrec_type_parse(const char *name, logrec_type *out)
{
    if (!name)
        return KERR_PARSE;
    /* Case-sensitive, as serde matches enum variants. */
    if (strcmp(name, "Any") == 0) {
        *out = LOGREC__COUNT;
        return 0;
    }
    for (int i = 0; i < LOGREC__COUNT; i++) {
        if (strcmp(name, logrec_names[i]) == 0) {
            *out = (logrec_type)i;
            return 0;
        }
    }
    return KERR_PARSE;
}

/* ---- strings ---- */

static json_t *jstr_n(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        long k = utf8_seq(u + i, n - i);
        if (k < 0 || u[i] == 0)
            break;
        i += (size_t)k;
    }
    if (i == n)
        return json_stringn_nocheck(s, n);
    /* Slow path: rebuild with replacements (each at most 3 bytes for 1). */
    char *buf = malloc(n * 3 + 1);
    if (!buf)
        return NULL;
    size_t o = 0;
    for (i = 0; i < n;) {
        long k = utf8_seq(u + i, n - i);
        if (k > 0 && u[i] != 0) {
            memcpy(buf + o, s + i, (size_t)k);
            o += (size_t)k;
            i += (size_t)k;
        } else {
            /* NUL would truncate the C strings jansson hands out. */
            memcpy(buf + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i += k < 0 ? (size_t)-k : 1;
        }
    }
    json_t *j = json_stringn_nocheck(buf, o);
    free(buf);
    return j;
}

/* NULL -> JSON null. */
static json_t *jstr_or_null(const char *s)
{
    return s ? jstr_n(s, strlen(s)) : json_null();
}

/* NULL -> "" for fields KumoMTA never leaves empty. */
static json_t *jstr_or_empty(const char *s)
{
    return jstr_n(s ? s : "", s ? strlen(s) : 0);
}

/* rfc5321 Response::content: CRLF, lone CR and LF each become one space. */
static json_t *jstr_single_line(const char *s)
{
    if (!s)
        s = "";
    size_t n = strlen(s);
    if (!memchr(s, '\r', n) && !memchr(s, '\n', n))
        return jstr_n(s, n);
    char *buf = malloc(n + 1);
    if (!buf)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\r' && s[i + 1] == '\n')
            continue;
        buf[o++] = (s[i] == '\r' || s[i] == '\n') ? ' ' : s[i];
    }
    json_t *j = jstr_n(buf, o);
    free(buf);
    return j;
}

/* ---- times ---- */

static void split_ns(int64_t ns, int64_t *secs, int64_t *frac)
{
    *secs = ns / NS_PER_S;
    *frac = ns % NS_PER_S;
    if (*frac < 0) {
        *frac += NS_PER_S;
        (*secs)--;
    }
}

/* chrono's Serialize for DateTime<Utc>: RFC 3339 with the fewest of 0, 3,
 * 6 or 9 fraction digits that is exact, and "Z". */
static json_t *jtime(int64_t ns)
{
    int64_t secs, frac;
    split_ns(ns, &secs, &frac);
    time_t t = (time_t)secs;
    struct tm tm;
    if (!gmtime_r(&t, &tm))
        return NULL;
    char fbuf[32] = "";
    if (frac == 0)
        fbuf[0] = '\0';
    else if (frac % 1000000 == 0)
        snprintf(fbuf, sizeof(fbuf), ".%03lld", (long long)(frac / 1000000));
    else if (frac % 1000 == 0)
        snprintf(fbuf, sizeof(fbuf), ".%06lld", (long long)(frac / 1000));
    else
        snprintf(fbuf, sizeof(fbuf), ".%09lld", (long long)frac);
    char buf[128];
    snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d%sZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, fbuf);
    return json_string_nocheck(buf);
}

static json_t *junix(int64_t ns)
{
    int64_t secs, frac;
    split_ns(ns, &secs, &frac);
    return json_integer((json_int_t)secs);
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * NS_PER_S + ts.tv_nsec;
}

/* ---- meta and headers ---- */

static bool ends_with_star(const char *s, size_t *prefix_len)
{
    size_t n = strlen(s);
    *prefix_len = n ? n - 1 : 0;
    return n > 0 && s[n - 1] == '*';
}

/* KumoMTA's Logger::extract_meta: "name*" takes every key with that prefix
 * (null values too); a plain name takes that key unless it is null. */
static int filter_meta(json_t *out, const json_t *meta, const char *const *keys, size_t n)
{
    if (!json_is_object(meta))
        return 0;
    for (size_t i = 0; i < n; i++) {
        if (!keys[i])
            continue;
        size_t plen;
        if (ends_with_star(keys[i], &plen)) {
            const char *k;
            json_t *v;
            /* json_object_foreach wants a mutable object; it only reads. */
            json_object_foreach((json_t *)meta, k, v)
            {
                if (strncmp(k, keys[i], plen) == 0 &&
                    json_object_set_new(out, k, json_deep_copy(v)) < 0)
                    return KERR_NOMEM;
            }
        } else {
            const json_t *v = json_object_get(meta, keys[i]);
            if (v && !json_is_null(v) && json_object_set_new(out, keys[i], json_deep_copy(v)) < 0)
                return KERR_NOMEM;
        }
    }
    return 0;
}

struct hdr {
    const char *name;
    size_t name_len;
    const char *raw; /* value as it appears, folds included */
    size_t raw_len;
    int first; /* index of the first header with this name */
    bool taken;
};

static bool is_wsp(char c)
{
    return c == ' ' || c == '\t';
}

/* Splits the header block (up to the first empty line) into headers, the
 * way mailparsing's Header::parse does: the name ends at ':' (or blank), one
 * run of spaces after ':' is skipped, a line starting with WSP continues the
 * value. A malformed block yields no headers, as KumoMTA's does. */
static int split_headers(const char *d, size_t n, struct hdr **out, size_t *n_out)
{
    struct hdr *h = NULL;
    size_t nh = 0, cap = 0;
    size_t i = 0;
    *out = NULL;
    *n_out = 0;
    while (i < n) {
        if (d[i] == '\n' || (d[i] == '\r' && i + 1 < n && d[i + 1] == '\n'))
            break; /* end of the header block */
        if (is_wsp(d[i]) || d[i] == '\r') {
            free(h);
            return 0;
        }
        size_t start = i, name_end = 0;
        bool have_name_end = false;
        while (i < n && d[i] != ':' && d[i] != '\n') {
            unsigned char c = (unsigned char)d[i];
            if (is_wsp((char)c)) {
                if (!have_name_end)
                    name_end = i, have_name_end = true;
            } else if (c != '\r' && (c < 33 || c > 126)) {
                free(h);
                return 0;
            }
            i++;
        }
        if (!have_name_end)
            name_end = i;
        size_t vstart = i, vend = i;
        if (i < n && d[i] == ':') {
            i++;
            while (i < n && d[i] == ' ')
                i++;
            vstart = vend = i;
            for (;;) {
                while (i < n && d[i] != '\n') {
                    if (d[i] != '\r')
                        vend = i + 1;
                    i++;
                }
                if (i < n)
                    i++; /* the LF */
                if (i < n && is_wsp(d[i]))
                    continue; /* folded: RFC 5322 2.2.3 */
                break;
            }
        } else if (i < n) {
            i++; /* name without colon: empty value */
        }
        if (nh == cap) {
            cap = cap ? cap * 2 : 16;
            struct hdr *nhp = realloc(h, cap * sizeof(*h));
            if (!nhp) {
                free(h);
                return KERR_NOMEM;
            }
            h = nhp;
        }
        h[nh] = (struct hdr){.name = d + start,
                             .name_len = name_end - start,
                             .raw = d + vstart,
                             .raw_len = vend > vstart ? vend - vstart : 0,
                             .first = (int)nh};
        for (size_t j = 0; j < nh; j++) {
            if (h[j].name_len == h[nh].name_len &&
                strncasecmp(h[j].name, h[nh].name, h[nh].name_len) == 0) {
                h[nh].first = h[j].first;
                break;
            }
        }
        nh++;
    }
    *out = h;
    *n_out = nh;
    return 0;
}

/* mailparsing's unstructured value: line breaks dropped, every run of
 * folding white space becomes one space. RFC 2047 encoded words are left as
 * they are. */
static json_t *unfold_value(const char *raw, size_t n)
{
    char *buf = malloc(n + 1);
    if (!buf)
        return NULL;
    size_t o = 0;
    bool in_ws = false;
    for (size_t i = 0; i < n; i++) {
        char c = raw[i];
        if (c == '\r' || c == '\n')
            continue;
        if (is_wsp(c)) {
            if (!in_ws)
                buf[o++] = ' ';
            in_ws = true;
            continue;
        }
        in_ws = false;
        buf[o++] = c;
    }
    json_t *j = jstr_n(buf, o);
    free(buf);
    return j;
}

/* Puts every header named like h[group] under the first one's spelling:
 * a string for one occurrence, an array for several. */
static int capture_header(json_t *out, struct hdr *h, size_t nh, int group)
{
    json_t *vals = json_array();
    if (!vals)
        return KERR_NOMEM;
    for (size_t j = (size_t)group; j < nh; j++) {
        if (h[j].first != group)
            continue;
        h[j].taken = true;
        if (json_array_append_new(vals, unfold_value(h[j].raw, h[j].raw_len)) < 0) {
            json_decref(vals);
            return KERR_NOMEM;
        }
    }
    json_t *v = json_array_size(vals) == 1 ? json_incref(json_array_get(vals, 0)) : vals;
    if (v != vals)
        json_decref(vals);
    json_t *key = jstr_n(h[group].name, h[group].name_len);
    int rc = key ? json_object_set_new(out, json_string_value(key), v) : (json_decref(v), -1);
    json_decref(key);
    return rc < 0 ? KERR_NOMEM : 0;
}

/* KumoMTA's Logger::extract_fields for headers: names match
 * case-insensitively, "Prefix*" takes every header starting so, and a
 * header is captured once even if several patterns match it. */
static int extract_headers(json_t *out, const char *data, size_t len, const char *const *names,
                           size_t n)
{
    if (!data || !len || !n)
        return 0;
    struct hdr *h;
    size_t nh;
    int rc = split_headers(data, len, &h, &nh);
    if (rc < 0)
        return rc;
    for (size_t i = 0; i < n && rc == 0; i++) {
        if (!names[i])
            continue;
        size_t plen;
        bool prefix = ends_with_star(names[i], &plen);
        if (!prefix)
            plen = strlen(names[i]);
        for (size_t j = 0; j < nh && rc == 0; j++) {
            if (h[j].first != (int)j || h[j].taken)
                continue;
            bool match = prefix
                             ? h[j].name_len >= plen && strncasecmp(h[j].name, names[i], plen) == 0
                             : h[j].name_len == plen && strncasecmp(h[j].name, names[i], plen) == 0;
            if (match)
                rc = capture_header(out, h, nh, (int)j);
        }
    }
    free(h);
    return rc;
}

/* ---- the record ---- */

static json_t *jenhanced(const logrec_response *r)
{
    if (r->enh_class == 0)
        return json_null();
    json_t *o = json_object();
    if (!o)
        return NULL;
    if (json_object_set_new_nocheck(o, "class", json_integer(r->enh_class)) < 0 ||
        json_object_set_new_nocheck(o, "subject", json_integer(r->enh_subject)) < 0 ||
        json_object_set_new_nocheck(o, "detail", json_integer(r->enh_detail)) < 0) {
        json_decref(o);
        return NULL;
    }
    return o;
}

static json_t *jresponse(const logrec_response *r)
{
    json_t *o = json_object();
    if (!o)
        return NULL;
    if (json_object_set_new_nocheck(o, "code", json_integer(r->code)) < 0 ||
        json_object_set_new_nocheck(o, "enhanced_code", jenhanced(r)) < 0 ||
        json_object_set_new_nocheck(o, "content", jstr_single_line(r->content)) < 0 ||
        json_object_set_new_nocheck(o, "command", jstr_or_null(r->command)) < 0) {
        json_decref(o);
        return NULL;
    }
    return o;
}

static json_t *jrecipients(const logrec *r)
{
    /* serde_with OneOrMany<_, PreferOne>. */
    if (r->n_recipients == 1 && r->recipients)
        return jstr_or_empty(r->recipients[0]);
    json_t *a = json_array();
    if (!a)
        return NULL;
    for (size_t i = 0; i < r->n_recipients && r->recipients; i++) {
        if (json_array_append_new(a, jstr_or_empty(r->recipients[i])) < 0) {
            json_decref(a);
            return NULL;
        }
    }
    return a;
}

static json_t *jpeer(const logrec *r)
{
    if (!r->peer_name && !r->peer_addr)
        return json_null();
    json_t *o = json_object();
    if (!o)
        return NULL;
    if (json_object_set_new_nocheck(o, "name", jstr_or_empty(r->peer_name)) < 0 ||
        json_object_set_new_nocheck(o, "addr", jstr_or_empty(r->peer_addr)) < 0) {
        json_decref(o);
        return NULL;
    }
    return o;
}

static json_t *jsource(const char *addr)
{
    if (!addr)
        return json_null();
    json_t *o = json_object();
    if (o && json_object_set_new_nocheck(o, "address", jstr_or_empty(addr)) < 0) {
        json_decref(o);
        return NULL;
    }
    return o;
}

/* One entry per line of the string (see logs.h). */
static json_t *jsubject(const char *s)
{
    json_t *a = json_array();
    while (a && *s) {
        const char *nl = strchr(s, '\n');
        size_t n = nl ? (size_t)(nl - s) : strlen(s);
        if (n && s[n - 1] == '\r')
            n--;
        if (json_array_append_new(a, jstr_n(s, n)) < 0) {
            json_decref(a);
            return NULL;
        }
        s += nl ? (size_t)(nl - s) + 1 : n;
    }
    return a;
}

json_t *logrec_to_object(const logrec *r, const char *const *meta_keys, size_t n_meta,
                         const char *const *header_names, size_t n_headers)
{
    const char *type = r ? logrec_type_name(r->type) : NULL;
    if (!type || r->type == LOGREC__COUNT)
        return NULL;
    int64_t now = (r->timestamp_ns && r->created_ns) ? 0 : now_ns();
    int64_t ts = r->timestamp_ns ? r->timestamp_ns : now;
    int64_t created = r->created_ns ? r->created_ns : now;

    json_t *o = json_object();
    json_t *meta = json_object();
    json_t *headers = json_object();
    if (!o || !meta || !headers)
        goto out;
    if (filter_meta(meta, r->msg_meta, meta_keys, n_meta) < 0 ||
        extract_headers(headers, r->msg_data, r->msg_data_len, header_names, n_headers) < 0)
        goto out;

    /* Each set_new steals its value, also on failure; a NULL value fails. */
    int bad = 0;
#define PUT(key, val) bad |= json_object_set_new_nocheck(o, key, val)
    PUT("type", json_string_nocheck(type));
    PUT("id", jstr_or_empty(r->id));
    PUT("sender", jstr_or_empty(r->sender));
    PUT("recipient", jrecipients(r));
    PUT("queue", jstr_or_empty(r->queue));
    PUT("site", jstr_or_empty(r->site));
    PUT("size", json_integer((json_int_t)r->size));
    PUT("response", jresponse(&r->response));
    PUT("peer_address", jpeer(r));
    PUT("timestamp", junix(ts));
    PUT("event_time", jtime(ts));
    PUT("created", junix(created));
    PUT("created_time", jtime(created));
    PUT("num_attempts", json_integer(r->num_attempts));
    PUT("bounce_classification",
        jstr_or_empty(r->bounce_classification ? r->bounce_classification : "Uncategorized"));
    PUT("egress_pool", jstr_or_null(r->egress_pool));
    PUT("egress_source", jstr_or_null(r->egress_source));
    PUT("source_address", jsource(r->source_address));
    PUT("feedback_report", r->feedback_report ? json_deep_copy(r->feedback_report) : json_null());
    PUT("meta", json_incref(meta));
    PUT("headers", json_incref(headers));
    PUT("delivery_protocol", jstr_or_null(r->delivery_protocol));
    PUT("reception_protocol", jstr_or_null(r->reception_protocol));
    PUT("nodeid", jstr_or_empty(r->nodeid ? r->nodeid : "00000000-0000-0000-0000-000000000000"));
    if (r->tls_cipher)
        PUT("tls_cipher", jstr_or_empty(r->tls_cipher));
    if (r->tls_protocol_version)
        PUT("tls_protocol_version", jstr_or_empty(r->tls_protocol_version));
    if (r->tls_peer_subject_name)
        PUT("tls_peer_subject_name", jsubject(r->tls_peer_subject_name));
    if (r->provider_name)
        PUT("provider_name", jstr_or_empty(r->provider_name));
    if (r->session_id)
        PUT("session_id", jstr_or_empty(r->session_id));
#undef PUT
    if (bad)
        goto out;

    json_decref(meta);
    json_decref(headers);
    return o;
out:
    json_decref(o);
    json_decref(meta);
    json_decref(headers);
    return NULL;
}

char *logrec_to_json(const logrec *r, const char *const *meta_keys, size_t n_meta,
                     const char *const *header_names, size_t n_headers, size_t *len_out)
{
    if (len_out)
        *len_out = 0;
    json_t *o = logrec_to_object(r, meta_keys, n_meta, header_names, n_headers);
    if (!o)
        return NULL;
    /* Compact separators like serde_json; objects keep insertion order. */
    char *text = jsonw_dumps(o, len_out);
    json_decref(o);
    return text;
}

void logrec_reception(logrec *r, char hex[33], const struct message *m, const char *queue)
{
    spoolid_to_hex(&m->id, hex);
    *r = (logrec){0};
    r->type = LOGREC_RECEPTION;
    r->id = hex;
    r->sender = m->sender;
    r->recipients = (const char *const *)m->rcpts;
    r->n_recipients = m->n_rcpts;
    r->queue = queue;
    r->site = "";
    r->size = m->data_len;
    r->response.code = 250;
    r->response.content = "";
    r->created_ns = spoolid_created_ns(&m->id);
    r->msg_meta = m->meta;
    r->msg_data = m->data;
    r->msg_data_len = m->data_len;
}
