/* Field blocks and report parts shared by the DSN (rfc3464.c) and ARF
 * (arf.c) parsers; see report_fields.h. Owns nothing past a call; any
 * thread. Fails with KERR_PARSE (a sentence in err naming the field) on
 * malformed blocks and KERR_NOMEM on allocation failure. */
#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/kerr.h"
#include "msg/datetime.h"
#include "msg/headers.h"
#include "msg/report_fields.h"
#include "msg/rfc2047.h"

static json_t *lossy_string(const char *s, size_t n)
{
    size_t ol;
    char *u = utf8_lossy(s, n, &ol);
    if (!u)
        return NULL;
    json_t *j = json_stringn(u, ol);
    free(u);
    return j;
}

/* The value after the colon, unfolded: a line break and the white space
 * around it become one space (as KumoMTA's unstructured fields read). */
static char *unfold(const hdr_field *f)
{
    const char *p = f->raw + f->name_len, *e = f->raw + f->raw_len;
    while (p < e && *p != ':')
        p++;
    if (p < e)
        p++;
    while (p < e && (*p == ' ' || *p == '\t'))
        p++;
    char *o = malloc((size_t)(e - p) + 1);
    if (!o)
        return NULL;
    size_t k = 0;
    for (; p < e; p++) {
        if (*p == '\r' || *p == '\n') {
            while (k && (o[k - 1] == ' ' || o[k - 1] == '\t'))
                k--;
            while (p + 1 < e && (p[1] == '\r' || p[1] == '\n' || p[1] == ' ' || p[1] == '\t'))
                p++;
            o[k++] = ' ';
            continue;
        }
        o[k++] = *p;
    }
    o[k] = 0;
    return o;
}

int rfields_parse(const char *s, size_t n, json_t **out, char *err, size_t errlen)
{
    json_t *obj = json_object();
    if (!obj)
        return KERR_NOMEM;
    size_t pos = 0, count = 0;
    hdr_field f;
    while (hdr_next(s, n, &pos, &f)) {
        if (!f.name_len) {
            size_t show = f.raw_len > 60 ? 60 : f.raw_len;
            json_t *j = lossy_string(f.raw, show);
            snprintf(err, errlen, "malformed field '%s%s' (no colon)",
                     j ? json_string_value(j) : "?", show < f.raw_len ? "..." : "");
            json_decref(j);
            json_decref(obj);
            return KERR_PARSE;
        }
        if (++count > RFIELDS_MAX_FIELDS) {
            snprintf(err, errlen, "more than %d fields", RFIELDS_MAX_FIELDS);
            json_decref(obj);
            return KERR_PARSE;
        }
        char name[80];
        size_t nl = 0;
        for (size_t i = 0; i < f.name_len && nl + 1 < sizeof(name); i++)
            name[nl++] = (char)tolower((unsigned char)f.name[i]);
        name[nl] = 0;
        char *v = unfold(&f);
        if (!v) {
            json_decref(obj);
            return KERR_NOMEM;
        }
        size_t vl = strlen(v);
        while (vl && isspace((unsigned char)v[vl - 1]))
            vl--;
        if (vl > RFIELDS_MAX_VALUE) {
            json_t *nj = lossy_string(name, nl);
            snprintf(err, errlen, "field %s is longer than %d bytes",
                     nj ? json_string_value(nj) : "?", RFIELDS_MAX_VALUE);
            json_decref(nj);
            free(v);
            json_decref(obj);
            return KERR_PARSE;
        }
        json_t *val = lossy_string(v, vl);
        free(v);
        json_t *key = lossy_string(name, nl); /* the key must be UTF-8 too */
        if (!val || !key) {
            json_decref(val);
            json_decref(key);
            json_decref(obj);
            return KERR_NOMEM;
        }
        json_t *arr = json_object_get(obj, json_string_value(key));
        if (!arr) {
            arr = json_array();
            json_object_set_new(obj, json_string_value(key), arr);
        }
        json_array_append_new(arr, val);
        json_decref(key);
    }
    *out = obj;
    return 0;
}

int rfields_take(json_t *obj, const char *name, const char **val, json_t **hold, char *err,
                 size_t errlen)
{
    *val = NULL;
    *hold = NULL;
    json_t *arr = json_object_get(obj, name);
    if (!arr)
        return 0;
    if (json_array_size(arr) != 1) {
        snprintf(err, errlen, "field %s should have only a single value", name);
        return KERR_PARSE;
    }
    json_incref(arr);
    json_object_del(obj, name);
    *hold = arr;
    *val = json_string_value(json_array_get(arr, 0));
    return 0;
}

static char *trimmed(const char *b, const char *e)
{
    while (b < e && isspace((unsigned char)*b))
        b++;
    while (e > b && isspace((unsigned char)e[-1]))
        e--;
    return strndup(b, (size_t)(e - b));
}

json_t *rfields_typed_pair(const char *v, const char *tk, const char *vk, const char *field,
                           char *err, size_t errlen)
{
    const char *semi = strchr(v, ';');
    if (!semi) {
        snprintf(err, errlen, "%s: expected 'type; value', got '%.80s'", field, v);
        return NULL;
    }
    char *t = trimmed(v, semi), *val = trimmed(semi + 1, v + strlen(v));
    json_t *o = NULL;
    if (t && val) {
        for (char *p = t; *p; p++)
            *p = (char)tolower((unsigned char)*p);
        o = json_pack("{s:s, s:s}", tk, t, vk, val);
    }
    free(t);
    free(val);
    if (!o)
        snprintf(err, errlen, "out of memory");
    return o;
}

json_t *rfields_date(const char *v, const char *field, char *err, size_t errlen)
{
    int64_t secs;
    if (rfc5322_date_parse(v, strlen(v), &secs) != 0) {
        snprintf(err, errlen, "%s: invalid date '%.80s'", field, v);
        return NULL;
    }
    char iso[40];
    iso8601_format(secs, iso, sizeof(iso));
    return json_string(iso);
}

json_t *rfields_address(const char *v)
{
    const char *b = v, *e = v + strlen(v);
    while (b < e && isspace((unsigned char)*b))
        b++;
    while (e > b && isspace((unsigned char)e[-1]))
        e--;
    if (e - b >= 2 && *b == '<' && e[-1] == '>') {
        b++;
        e--;
    }
    return json_stringn(b, (size_t)(e - b));
}

mpart *rfields_find_child(mpart *root, const char *const *types)
{
    for (size_t i = 0; i < root->nkids; i++) {
        char ct[128];
        mpart_content_type(root->kids[i], ct, sizeof(ct));
        for (const char *const *t = types; *t; t++)
            if (strcmp(ct, *t) == 0)
                return root->kids[i];
    }
    return NULL;
}

static char *crlf_to_lf(const char *s, size_t n, size_t *len)
{
    char *o = malloc(n + 1);
    if (!o)
        return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\r' && i + 1 < n && s[i + 1] == '\n')
            continue;
        o[k++] = s[i];
    }
    o[k] = 0;
    *len = k;
    return o;
}

char *rfields_original_message(mpart *root, size_t *len)
{
    static const char *const types[] = {"message/rfc822", "text/rfc822-headers", NULL};
    mpart *p = rfields_find_child(root, types);
    if (!p || p->multipart || !p->body)
        return NULL;
    return crlf_to_lf(p->body, p->body_len, len);
}

char *rfields_part_text(mpart *part, size_t *len)
{
    size_t dl;
    bool text;
    char *d = mpart_body_decoded(part, &dl, &text);
    if (!d)
        return NULL;
    char *o = crlf_to_lf(d, dl, len);
    free(d);
    return o;
}

json_t *rfields_bytes_json(const char *s, size_t n)
{
    if (utf8_valid(s, n))
        return json_stringn(s, n);
    json_t *a = json_array();
    for (size_t i = 0; a && i < n; i++)
        json_array_append_new(a, json_integer((unsigned char)s[i]));
    return a;
}

char *rfields_report_type(mpart *root)
{
    long k = mpart_hdr_find(root, "Content-Type", 0);
    if (k < 0)
        return NULL;
    char *v = mpart_hdr_value(root, (size_t)k);
    if (!v)
        return NULL;
    mparams mp;
    char *rt = NULL;
    if (mparams_parse(v, strlen(v), &mp) == 0) {
        if (mp.value && strcmp(mp.value, "multipart/report") == 0) {
            const char *t = mparams_get(&mp, "report-type");
            rt = strdup(t ? t : "");
            for (char *p = rt; p && *p; p++)
                *p = (char)tolower((unsigned char)*p);
        }
        mparams_fini(&mp);
    }
    free(v);
    return rt;
}
