/* The encodings under MIME: conformance flag names, base64 and
 * quoted-printable (RFC 2045 §6.7, §6.8) and MIME parameters (RFC 2045
 * §5.1, RFC 2231 continuations and charsets). Pure functions; any thread;
 * allocation failure returns NULL / KERR_NOMEM. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/kerr.h"
#include "msg/mime.h"
#include "msg/mime_int.h"
#include "msg/rfc2047.h"
#include "core/sbuf.h"

/* ---- conformance names ------------------------------------------------------------- */

static const struct {
    const char *name;
    unsigned bit;
} conf_names[] = {
#define MCONF_ROW_(name, bit) {#name, bit},
    MCONF_MAP(MCONF_ROW_)
#undef MCONF_ROW_
};
#define N_CONF (sizeof(conf_names) / sizeof(conf_names[0]))

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

int mconf_parse(const char *s, unsigned *out, char *err, size_t errlen)
{
    *out = 0;
    while (*s) {
        size_t n = strcspn(s, "|");
        if (n) {
            bool found = false;
            for (size_t i = 0; i < N_CONF; i++)
                if (strlen(conf_names[i].name) == n && strncmp(conf_names[i].name, s, n) == 0) {
                    *out |= conf_names[i].bit;
                    found = true;
                }
            if (!found) {
                const char *sorted[N_CONF];
                for (size_t i = 0; i < N_CONF; i++)
                    sorted[i] = conf_names[i].name;
                qsort(sorted, N_CONF, sizeof(sorted[0]), cmp_str);
                int o = snprintf(err, errlen,
                                 "invalid MessageConformance flag '%.*s', possible "
                                 "values are ",
                                 (int)(n > 100 ? 100 : n), s);
                for (size_t i = 0; i < N_CONF && o >= 0 && (size_t)o < errlen; i++)
                    o += snprintf(err + o, errlen - (size_t)o, "%s'%s'", i ? ", " : "", sorted[i]);
                return KERR_PARSE;
            }
        }
        s += n;
        if (*s == '|')
            s++;
    }
    return 0;
}

char *mconf_format(unsigned flags)
{
    const char *names[N_CONF];
    size_t n = 0;
    for (size_t i = 0; i < N_CONF; i++)
        if (flags & conf_names[i].bit)
            names[n++] = conf_names[i].name;
    qsort(names, n, sizeof(names[0]), cmp_str);
    sbuf b = {0};
    for (size_t i = 0; i < n; i++) {
        if (i)
            sbuf_putc(&b, '|');
        sbuf_puts(&b, names[i]);
    }
    return sbuf_finish(&b, NULL);
}

/* ---- base64 and quoted-printable ----------------------------------------------------- */

static const char b64chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

char *mpart_b64enc(const unsigned char *d, size_t n, size_t *outlen)
{
    sbuf b = {0};
    size_t col = 0;
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)d[i] << 16;
        if (i + 1 < n)
            v |= (unsigned)d[i + 1] << 8;
        if (i + 2 < n)
            v |= d[i + 2];
        char q[4] = {b64chars[(v >> 18) & 63], b64chars[(v >> 12) & 63],
                     i + 1 < n ? b64chars[(v >> 6) & 63] : '=', i + 2 < n ? b64chars[v & 63] : '='};
        if (col == 76) {
            sbuf_put(&b, "\r\n", 2);
            col = 0;
        }
        sbuf_put(&b, q, 4);
        col += 4;
    }
    if (n)
        sbuf_put(&b, "\r\n", 2);
    return sbuf_finish(&b, outlen);
}

char *mpart_b64dec(const char *s, size_t n, size_t *outlen)
{
    sbuf b = {0};
    unsigned acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        const char *p = s[i] ? strchr(b64chars, s[i]) : NULL;
        if (s[i] == '=')
            break;
        if (!p)
            continue; /* line breaks and stray bytes are skipped (RFC 2045 §6.8) */
        acc = (acc << 6) | (unsigned)(p - b64chars);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            sbuf_putc(&b, (char)((acc >> bits) & 0xFF));
        }
    }
    return sbuf_finish(&b, outlen);
}

int mpart__hexv(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

char *mpart_qpdec(const char *s, size_t n, size_t *outlen)
{
    sbuf b = {0};
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '=') {
            sbuf_putc(&b, s[i]);
            continue;
        }
        /* soft line break: "=" then optional white space then EOL */
        size_t j = i + 1;
        while (j < n && (s[j] == ' ' || s[j] == '\t'))
            j++;
        if (j < n && (s[j] == '\r' || s[j] == '\n')) {
            if (s[j] == '\r' && j + 1 < n && s[j + 1] == '\n')
                j++;
            i = j;
            continue;
        }
        if (j >= n) {
            i = j;
            continue;
        }
        int h = i + 2 < n ? mpart__hexv(s[i + 1]) : -1, l = i + 2 < n ? mpart__hexv(s[i + 2]) : -1;
        if (h >= 0 && l >= 0) {
            sbuf_putc(&b, (char)(h * 16 + l));
            i += 2;
        } else {
            sbuf_putc(&b, '='); /* not an escape: kept (RFC 2045 §6.7 note 1) */
        }
    }
    return sbuf_finish(&b, outlen);
}

char *mpart_qpenc(const char *s, size_t n, size_t *outlen)
{
    static const char hex[] = "0123456789ABCDEF";
    sbuf b = {0};
    size_t col = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\r' && i + 1 < n && s[i + 1] == '\n') {
            sbuf_put(&b, "\r\n", 2);
            col = 0;
            i++;
            continue;
        }
        if (c == '\n') {
            sbuf_put(&b, "\r\n", 2);
            col = 0;
            continue;
        }
        bool at_eol = i + 1 >= n || s[i + 1] == '\r' || s[i + 1] == '\n';
        bool lit = (c >= 33 && c <= 126 && c != '=') || ((c == ' ' || c == '\t') && !at_eol);
        size_t need = lit ? 1 : 3;
        if (col + need > 75) {
            sbuf_put(&b, "=\r\n", 3);
            col = 0;
        }
        if (lit) {
            sbuf_putc(&b, (char)c);
        } else {
            char e[3] = {'=', hex[c >> 4], hex[c & 15]};
            sbuf_put(&b, e, 3);
        }
        col += need;
    }
    return sbuf_finish(&b, outlen);
}

/* ---- MIME parameters ------------------------------------------------------------------- */

void mparams_fini(mparams *mp)
{
    free(mp->value);
    for (size_t i = 0; i < mp->n; i++) {
        free(mp->names[i]);
        free(mp->values[i]);
    }
    free(mp->names);
    free(mp->values);
    memset(mp, 0, sizeof(*mp));
}

const char *mparams_get(const mparams *mp, const char *name)
{
    for (size_t i = 0; i < mp->n; i++)
        if (strcasecmp(mp->names[i], name) == 0)
            return mp->values[i];
    return NULL;
}

static bool is_tspecial(char c)
{
    return strchr("()<>@,;:\\\"/[]?=", c) != NULL;
}

static void skip_ws_comments(const char *s, size_t n, size_t *i)
{
    while (*i < n) {
        if (s[*i] == ' ' || s[*i] == '\t' || s[*i] == '\r' || s[*i] == '\n') {
            (*i)++;
        } else if (s[*i] == '(') {
            int depth = 0;
            while (*i < n) {
                char c = s[(*i)++];
                if (c == '\\' && *i < n)
                    (*i)++;
                else if (c == '(')
                    depth++;
                else if (c == ')' && --depth == 0)
                    break;
            }
        } else {
            return;
        }
    }
}

/* Sets (or extends, for RFC 2231 continuations) parameter name. */
int mpart__param_put(mparams *mp, const char *name, const char *value, size_t vl)
{
    for (size_t i = 0; i < mp->n; i++) {
        if (strcasecmp(mp->names[i], name) == 0) {
            size_t ol = strlen(mp->values[i]);
            char *nv = realloc(mp->values[i], ol + vl + 1);
            if (!nv)
                return KERR_NOMEM;
            memcpy(nv + ol, value, vl);
            nv[ol + vl] = 0;
            mp->values[i] = nv;
            return 0;
        }
    }
    char **nn = realloc(mp->names, (mp->n + 1) * sizeof(char *));
    if (!nn)
        return KERR_NOMEM;
    mp->names = nn;
    char **nv = realloc(mp->values, (mp->n + 1) * sizeof(char *));
    if (!nv)
        return KERR_NOMEM;
    mp->values = nv;
    mp->names[mp->n] = strdup(name);
    mp->values[mp->n] = mpart__dupn(value, vl);
    if (!mp->names[mp->n] || !mp->values[mp->n]) {
        free(mp->names[mp->n]);
        free(mp->values[mp->n]);
        return KERR_NOMEM;
    }
    mp->n++;
    return 0;
}

/* RFC 2231 §4: [charset'language']percent-encoded -> raw bytes; the
 * charset (when this section names one) is copied into cs. */
static char *decode_2231(const char *v, size_t n, bool with_charset, char *cs, size_t cslen,
                         size_t *outl)
{
    sbuf raw = {0};
    size_t i = 0;
    if (with_charset) {
        const char *q1 = memchr(v, '\'', n);
        const char *q2 = q1 ? memchr(q1 + 1, '\'', n - (size_t)(q1 + 1 - v)) : NULL;
        if (q2) {
            size_t cl = (size_t)(q1 - v);
            if (cl && cl < cslen) {
                memcpy(cs, v, cl);
                cs[cl] = 0;
            }
            i = (size_t)(q2 + 1 - v);
        }
    }
    for (; i < n; i++) {
        int h, l;
        if (v[i] == '%' && i + 2 < n && (h = mpart__hexv(v[i + 1])) >= 0 &&
            (l = mpart__hexv(v[i + 2])) >= 0) {
            sbuf_putc(&raw, (char)(h * 16 + l));
            i += 2;
        } else {
            sbuf_putc(&raw, v[i]);
        }
    }
    return sbuf_finish(&raw, outl);
}

int mparams_parse(const char *s, size_t n, mparams *out)
{
    memset(out, 0, sizeof(*out));
    size_t i = 0;
    skip_ws_comments(s, n, &i);
    size_t v0 = i;
    while (i < n && s[i] != ';' && s[i] != ' ' && s[i] != '\t' && s[i] != '(')
        i++;
    out->value = mpart__dupn(s + v0, i - v0);
    if (!out->value)
        return KERR_NOMEM;
    for (char *p = out->value; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    int rc = 0;
    char ext_names[8][256], ext_cs[8][64];
    size_t n_ext = 0;
    while (i < n && rc == 0) {
        skip_ws_comments(s, n, &i);
        if (i >= n)
            break;
        if (s[i] != ';') {
            i++; /* junk between parameters: skipped */
            continue;
        }
        i++;
        skip_ws_comments(s, n, &i);
        size_t a0 = i;
        while (i < n && s[i] != '=' && s[i] != ';' && !isspace((unsigned char)s[i]) &&
               !is_tspecial(s[i]))
            i++;
        size_t al = i - a0;
        skip_ws_comments(s, n, &i);
        if (al == 0 || al > 200 || i >= n || s[i] != '=')
            continue;
        i++;
        skip_ws_comments(s, n, &i);
        sbuf val = {0};
        if (i < n && s[i] == '"') {
            i++;
            while (i < n && s[i] != '"') {
                if (s[i] == '\\' && i + 1 < n)
                    i++;
                if (s[i] != '\r' && s[i] != '\n')
                    sbuf_putc(&val, s[i]);
                i++;
            }
            if (i < n)
                i++;
        } else {
            while (i < n && s[i] != ';' && !isspace((unsigned char)s[i]))
                sbuf_putc(&val, s[i++]);
        }
        size_t vl;
        char *v = sbuf_finish(&val, &vl);
        if (!v)
            return KERR_NOMEM;
        char name[256];
        memcpy(name, s + a0, al);
        name[al] = 0;
        /* RFC 2231: name*=charset''..., name*0=..., name*1*=... */
        bool ext = al > 1 && name[al - 1] == '*';
        if (ext)
            name[--al] = 0;
        char *star = strchr(name, '*');
        bool first_section = true;
        if (star) {
            first_section = strcmp(star, "*0") == 0;
            *star = 0;
        }
        if (ext) {
            /* sections are joined as bytes and converted from the charset of
             * the first section once all are in (a character may span two) */
            size_t dl;
            char cs[64] = {0};
            char *d = decode_2231(v, vl, first_section, cs, sizeof(cs), &dl);
            free(v);
            if (!d)
                return KERR_NOMEM;
            v = d;
            vl = dl;
            if (cs[0] && n_ext < 8) {
                snprintf(ext_names[n_ext], sizeof(ext_names[0]), "%s", name);
                for (char *q = ext_names[n_ext]; *q; q++)
                    *q = (char)tolower((unsigned char)*q);
                snprintf(ext_cs[n_ext], sizeof(ext_cs[0]), "%s", cs);
                n_ext++;
            }
        } else if (!utf8_valid(v, vl) && !star) {
            size_t dl;
            char *d = utf8_lossy(v, vl, &dl);
            free(v);
            if (!d)
                return KERR_NOMEM;
            v = d;
            vl = dl;
        } else if (!star && strstr(v, "=?")) {
            /* RFC 2047 words in a quoted filename: not standard but common */
            size_t dl;
            char *d = rfc2047_decode(v, vl, &dl);
            free(v);
            if (!d)
                return KERR_NOMEM;
            v = d;
            vl = dl;
        }
        for (char *p = name; *p; p++)
            *p = (char)tolower((unsigned char)*p);
        rc = mpart__param_put(out, name, v, vl);
        free(v);
    }
    /* every value ends as UTF-8: extended ones from their charset, the rest
     * repaired */
    for (size_t k = 0; rc == 0 && k < out->n; k++) {
        const char *cs = NULL;
        for (size_t e = 0; e < n_ext; e++)
            if (strcmp(ext_names[e], out->names[k]) == 0)
                cs = ext_cs[e];
        char *v = out->values[k];
        size_t vl = strlen(v), dl;
        if (!cs && utf8_valid(v, vl))
            continue;
        char *d = cs ? charset_to_utf8(cs, v, vl, &dl) : NULL;
        if (!d)
            d = utf8_lossy(v, vl, &dl);
        if (!d) {
            rc = KERR_NOMEM;
            break;
        }
        free(v);
        out->values[k] = d;
    }
    if (rc)
        mparams_fini(out);
    return rc;
}

char *mparams_format(const mparams *mp)
{
    sbuf b = {0};
    sbuf_puts(&b, mp->value ? mp->value : "");
    for (size_t i = 0; i < mp->n; i++) {
        sbuf_puts(&b, ";\r\n\t");
        sbuf_puts(&b, mp->names[i]);
        const char *v = mp->values[i];
        bool ascii = true;
        for (const char *p = v; *p; p++)
            if ((unsigned char)*p >= 0x80 || (unsigned char)*p < 0x20)
                ascii = false;
        if (!ascii) {
            /* RFC 2231 §4 */
            static const char hex[] = "0123456789ABCDEF";
            sbuf_puts(&b, "*=UTF-8''");
            for (const unsigned char *p = (const unsigned char *)v; *p; p++) {
                if (isalnum(*p) || strchr("!#$&+-.^_`|~", *p)) {
                    sbuf_putc(&b, (char)*p);
                } else {
                    char e[3] = {'%', hex[*p >> 4], hex[*p & 15]};
                    sbuf_put(&b, e, 3);
                }
            }
            continue;
        }
        sbuf_puts(&b, "=\"");
        for (const char *p = v; *p; p++) {
            if (*p == '"' || *p == '\\')
                sbuf_putc(&b, '\\');
            sbuf_putc(&b, *p);
        }
        sbuf_putc(&b, '"');
    }
    return sbuf_finish(&b, NULL);
}

void mpart_content_type(const mpart *p, char *buf, size_t len)
{
    long k = mpart_hdr_find(p, "Content-Type", 0);
    snprintf(buf, len, "text/plain");
    if (k < 0)
        return;
    char *v = mpart_hdr_value(p, (size_t)k);
    mparams mp;
    if (v && mparams_parse(v, strlen(v), &mp) == 0) {
        if (strchr(mp.value, '/'))
            snprintf(buf, len, "%s", mp.value);
        mparams_fini(&mp);
    }
    free(v);
}

/* The parsed parameters of header name, or false when absent. */
bool mpart__hdr_params(const mpart *p, const char *name, mparams *mp)
{
    long k = mpart_hdr_find(p, name, 0);
    if (k < 0)
        return false;
    char *v = mpart_hdr_value(p, (size_t)k);
    bool ok = v && mparams_parse(v, strlen(v), mp) == 0;
    free(v);
    return ok;
}
