/* MIME parsing, editing, building and rebuilding (see mime.h). A part owns
 * copies of its header fields and body bytes; children are owned through
 * their reference counts. Everything here is pure code on caller-owned
 * trees; any thread, one owner at a time. Hostile input degrades, never
 * fails: a multipart without a usable boundary becomes a leaf, a missing
 * close delimiter ends the last part at the end of the data, nesting below
 * MPART_MAX_DEPTH stays unparsed. */
#include "msg/mime.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <uuid/uuid.h>

#include "core/kerr.h"
#include "msg/datetime.h"
#include "msg/rfc2047.h"
#include "msg/sbuf.h"

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
                int o = snprintf(err, errlen, "invalid MessageConformance flag '%.*s', possible "
                                              "values are ",
                                 (int)(n > 100 ? 100 : n), s);
                for (size_t i = 0; i < N_CONF && o >= 0 && (size_t)o < errlen; i++)
                    o += snprintf(err + o, errlen - (size_t)o, "%s'%s'", i ? ", " : "",
                                  sorted[i]);
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

static int hexv(char c)
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
        int h = i + 2 < n ? hexv(s[i + 1]) : -1, l = i + 2 < n ? hexv(s[i + 2]) : -1;
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

/* ---- parts ------------------------------------------------------------------------ */

mpart *mpart_new(void)
{
    mpart *p = calloc(1, sizeof(*p));
    if (p)
        p->refs = 1;
    return p;
}

void mpart_ref(mpart *p)
{
    p->refs++;
}

void mpart_unref(mpart *p)
{
    if (!p || --p->refs > 0)
        return;
    for (size_t i = 0; i < p->nh; i++)
        free(p->h[i].raw);
    free(p->h);
    free(p->body);
    free(p->preamble);
    free(p->epilogue);
    for (size_t i = 0; i < p->nkids; i++)
        mpart_unref(p->kids[i]);
    free(p->kids);
    free(p->boundary);
    free(p);
}

int mpart_add_child(mpart *p, mpart *child)
{
    if (p->nkids == p->capk) {
        size_t nc = p->capk ? p->capk * 2 : 4;
        mpart **nk = realloc(p->kids, nc * sizeof(*nk));
        if (!nk)
            return KERR_NOMEM;
        p->kids = nk;
        p->capk = nc;
    }
    mpart_ref(child);
    p->kids[p->nkids++] = child;
    return 0;
}

static char *dupn(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    if (!d)
        return NULL;
    if (n)
        memcpy(d, s, n);
    d[n] = 0;
    return d;
}

static int add_raw_header(mpart *p, size_t at, const char *raw, size_t raw_len, size_t name_len)
{
    if (p->nh == p->caph) {
        size_t nc = p->caph ? p->caph * 2 : 8;
        mpart_hdr *nh = realloc(p->h, nc * sizeof(*nh));
        if (!nh)
            return KERR_NOMEM;
        p->h = nh;
        p->caph = nc;
    }
    char *copy = dupn(raw, raw_len);
    if (!copy)
        return KERR_NOMEM;
    if (at > p->nh)
        at = p->nh;
    memmove(p->h + at + 1, p->h + at, (p->nh - at) * sizeof(*p->h));
    p->h[at] = (mpart_hdr){copy, raw_len, name_len};
    p->nh++;
    return 0;
}

long mpart_hdr_find(const mpart *p, const char *name, size_t from)
{
    size_t n = strlen(name);
    for (size_t i = from; i < p->nh; i++) {
        const mpart_hdr *h = &p->h[i];
        size_t nl = h->name_len;
        while (nl && (h->raw[nl - 1] == ' ' || h->raw[nl - 1] == '\t'))
            nl--; /* "Subject :" still names Subject */
        if (nl == n && strncasecmp(h->raw, name, n) == 0)
            return (long)i;
    }
    return -1;
}

char *mpart_hdr_value(const mpart *p, size_t i)
{
    const mpart_hdr *h = &p->h[i];
    const char *v = h->raw + (h->name_len ? h->name_len + 1 : h->raw_len);
    const char *end = h->raw + h->raw_len;
    while (v < end && (*v == ' ' || *v == '\t'))
        v++;
    sbuf b = {0};
    for (; v < end; v++)
        if (*v != '\r' && *v != '\n')
            sbuf_putc(&b, *v);
    return sbuf_finish(&b, NULL);
}

int mpart_hdr_insert(mpart *p, size_t at, const char *name, const char *value)
{
    sbuf b = {0};
    sbuf_puts(&b, name);
    sbuf_put(&b, ": ", 2);
    sbuf_puts(&b, value);
    size_t len;
    char *raw = sbuf_finish(&b, &len);
    if (!raw)
        return KERR_NOMEM;
    int rc = add_raw_header(p, at, raw, len, strlen(name));
    free(raw);
    return rc;
}

void mpart_hdr_remove_all(mpart *p, const char *name)
{
    size_t o = 0;
    for (size_t i = 0; i < p->nh; i++) {
        if (mpart_hdr_find(p, name, i) == (long)i) {
            free(p->h[i].raw);
            continue;
        }
        p->h[o++] = p->h[i];
    }
    p->nh = o;
}

int mpart_hdr_set(mpart *p, const char *name, const char *value)
{
    long k = mpart_hdr_find(p, name, 0);
    size_t at = k >= 0 ? (size_t)k : p->nh;
    mpart_hdr_remove_all(p, name);
    return mpart_hdr_insert(p, at, name, value);
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
static int param_put(mparams *mp, const char *name, const char *value, size_t vl)
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
    mp->values[mp->n] = dupn(value, vl);
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
        if (v[i] == '%' && i + 2 < n && (h = hexv(v[i + 1])) >= 0 &&
            (l = hexv(v[i + 2])) >= 0) {
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
    out->value = dupn(s + v0, i - v0);
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
        rc = param_put(out, name, v, vl);
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
static bool hdr_params(const mpart *p, const char *name, mparams *mp)
{
    long k = mpart_hdr_find(p, name, 0);
    if (k < 0)
        return false;
    char *v = mpart_hdr_value(p, (size_t)k);
    bool ok = v && mparams_parse(v, strlen(v), mp) == 0;
    free(v);
    return ok;
}

/* ---- parsing ----------------------------------------------------------------------- */

/* End of the line starting at i (index of its '\n', or n) */
static size_t line_end(const char *s, size_t n, size_t i)
{
    const char *nl = memchr(s + i, '\n', n - i);
    return nl ? (size_t)(nl - s) : n;
}

/* Parses the header fields of s[0..n) into p; returns the body offset. */
static size_t parse_headers(mpart *p, const char *s, size_t n, int *rc)
{
    size_t i = 0;
    while (i < n) {
        if (s[i] == '\n')
            return i + 1;
        if (s[i] == '\r' && i + 1 < n && s[i + 1] == '\n')
            return i + 2;
        size_t start = i;
        size_t e = line_end(s, n, i);
        while (e < n && e + 1 < n && (s[e + 1] == ' ' || s[e + 1] == '\t'))
            e = line_end(s, n, e + 1);
        size_t raw_len = e - start;
        if (raw_len && s[start + raw_len - 1] == '\r')
            raw_len--;
        i = e < n ? e + 1 : n;
        if (s[start] == ' ' || s[start] == '\t') {
            /* a continuation without a field: keep it as a colon-less line */
            p->conformance |= MCONF_MISSING_COLON_VALUE;
        }
        const char *colon = memchr(s + start, ':', raw_len);
        const char *nl = memchr(s + start, '\n', raw_len);
        size_t name_len = 0;
        if (colon && (!nl || colon < nl) && colon > s + start) {
            name_len = (size_t)(colon - (s + start));
            if (s[start + name_len - 1] == ' ' || s[start + name_len - 1] == '\t')
                p->conformance |= MCONF_NAME_ENDS_WITH_SPACE;
        } else {
            p->conformance |= MCONF_MISSING_COLON_VALUE;
        }
        if ((*rc = add_raw_header(p, p->nh, s + start, raw_len, name_len)) != 0)
            return n;
    }
    return n;
}

/* Whether the line s[i..e) is a delimiter of boundary b; *close when it is
 * the close delimiter. */
static bool is_delimiter(const char *s, size_t i, size_t e, const char *b, size_t bl, bool *close)
{
    if (e - i < 2 + bl || s[i] != '-' || s[i + 1] != '-' || memcmp(s + i + 2, b, bl) != 0)
        return false;
    size_t k = i + 2 + bl;
    *close = false;
    if (k + 2 <= e && s[k] == '-' && s[k + 1] == '-') {
        *close = true;
        k += 2;
    }
    for (; k < e; k++)
        if (s[k] != ' ' && s[k] != '\t' && s[k] != '\r')
            return false;
    return true;
}

static int parse_part(const char *s, size_t n, int depth, const char *id, mpart **out);

static int parse_multipart(mpart *p, const char *s, size_t n, int depth)
{
    const char *b = p->boundary;
    size_t bl = strlen(b);
    size_t i = 0;
    long prev_start = -1; /* start of the part being collected */
    size_t k = 0;
    bool closed = false;
    while (i < n && !closed) {
        size_t e = line_end(s, n, i);
        bool close;
        if (is_delimiter(s, i, e, b, bl, &close)) {
            /* the line ending before the delimiter belongs to it (RFC 2046 §5.1.1) */
            size_t cut = i;
            if (cut > 0 && s[cut - 1] == '\n') {
                cut--;
                if (cut > 0 && s[cut - 1] == '\r')
                    cut--;
            }
            if (prev_start < 0) {
                p->preamble = dupn(s, i);
                p->pre_len = i;
                if (!p->preamble)
                    return KERR_NOMEM;
            } else {
                size_t ps = (size_t)prev_start;
                char id[64];
                snprintf(id, sizeof(id), "%.40s.%zu", p->id, k++);
                mpart *kid;
                int rc = parse_part(s + ps, cut > ps ? cut - ps : 0, depth + 1, id, &kid);
                if (rc)
                    return rc;
                rc = mpart_add_child(p, kid);
                mpart_unref(kid);
                if (rc)
                    return rc;
            }
            if (close) {
                closed = true;
                /* the epilogue starts right after "--boundary--" */
                size_t after = i + 2 + bl + 2;
                p->epilogue = dupn(s + after, n - after);
                p->epi_len = n - after;
                if (!p->epilogue)
                    return KERR_NOMEM;
                break;
            }
            prev_start = (long)(e < n ? e + 1 : n);
        }
        i = e < n ? e + 1 : n;
    }
    if (prev_start < 0)
        return KERR_PARSE; /* no delimiter at all */
    if (!closed) {
        /* missing close delimiter: the last part runs to the end */
        size_t ps = (size_t)prev_start;
        char id[64];
        snprintf(id, sizeof(id), "%.40s.%zu", p->id, k);
        mpart *kid;
        int rc = parse_part(s + ps, n - ps, depth + 1, id, &kid);
        if (rc)
            return rc;
        rc = mpart_add_child(p, kid);
        mpart_unref(kid);
        if (rc)
            return rc;
        p->conformance |= MCONF_INVALID_MIME_HEADERS;
    }
    return 0;
}

static int parse_part(const char *s, size_t n, int depth, const char *id, mpart **out)
{
    mpart *p = mpart_new();
    if (!p)
        return KERR_NOMEM;
    snprintf(p->id, sizeof(p->id), "%s", id);
    int rc = 0;
    size_t body = parse_headers(p, s, n, &rc);
    if (rc) {
        mpart_unref(p);
        return rc;
    }
    mparams ct;
    bool multipart = false;
    if (hdr_params(p, "Content-Type", &ct)) {
        if (strncmp(ct.value, "multipart/", 10) == 0) {
            const char *b = mparams_get(&ct, "boundary");
            if (b && *b && strlen(b) <= 200 && depth < MPART_MAX_DEPTH) {
                p->boundary = strdup(b);
                multipart = p->boundary != NULL;
            } else if (!b || !*b) {
                p->conformance |= MCONF_INVALID_MIME_HEADERS;
            }
        }
        mparams_fini(&ct);
    }
    if (multipart) {
        p->multipart = true;
        rc = parse_multipart(p, s + body, n - body, depth);
        if (rc == KERR_PARSE) {
            /* no delimiter: keep it as an opaque leaf */
            p->multipart = false;
            p->conformance |= MCONF_INVALID_MIME_HEADERS;
            for (size_t i = 0; i < p->nkids; i++)
                mpart_unref(p->kids[i]);
            p->nkids = 0;
            free(p->preamble);
            p->preamble = NULL;
            p->pre_len = 0;
            rc = 0;
        }
        if (rc) {
            mpart_unref(p);
            return rc;
        }
    }
    if (!p->multipart) {
        p->body = dupn(s + body, n - body);
        p->body_len = n - body;
        if (!p->body) {
            mpart_unref(p);
            return KERR_NOMEM;
        }
    }
    *out = p;
    return 0;
}

static unsigned data_conformance(const char *s, size_t n)
{
    unsigned c = 0;
    size_t line_start = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch >= 0x80)
            c |= MCONF_NEEDS_TRANSFER_ENCODING;
        if (ch == '\n') {
            if (i == 0 || s[i - 1] != '\r')
                c |= MCONF_NON_CANONICAL_LINE_ENDINGS;
            size_t ll = i - line_start - (i > line_start && s[i - 1] == '\r');
            if (ll > 78)
                c |= MCONF_LINE_TOO_LONG;
            line_start = i + 1;
        } else if (ch == '\r' && (i + 1 >= n || s[i + 1] != '\n')) {
            c |= MCONF_NON_CANONICAL_LINE_ENDINGS;
        }
    }
    if (n - line_start > 78)
        c |= MCONF_LINE_TOO_LONG;
    return c;
}

static unsigned tree_conformance(const mpart *p)
{
    unsigned c = p->conformance;
    for (size_t i = 0; i < p->nkids; i++)
        c |= tree_conformance(p->kids[i]);
    return c;
}

int mpart_parse(const char *data, size_t len, mpart **out)
{
    int rc = parse_part(data, len, 0, "0", out);
    if (rc)
        return rc;
    mpart *root = *out;
    unsigned c = data_conformance(data, len) | tree_conformance(root);
    long k = mpart_hdr_find(root, "Date", 0);
    int64_t secs;
    char *v = k >= 0 ? mpart_hdr_value(root, (size_t)k) : NULL;
    if (!v || rfc5322_date_parse(v, strlen(v), &secs) != 0)
        c |= MCONF_MISSING_DATE_HEADER;
    free(v);
    k = mpart_hdr_find(root, "Message-ID", 0);
    v = k >= 0 ? mpart_hdr_value(root, (size_t)k) : NULL;
    if (!v || !strchr(v, '@'))
        c |= MCONF_MISSING_MESSAGE_ID_HEADER;
    free(v);
    k = mpart_hdr_find(root, "MIME-Version", 0);
    v = k >= 0 ? mpart_hdr_value(root, (size_t)k) : NULL;
    if (!v || strncmp(v, "1.0", 3) != 0 || (v[3] && v[3] != ' ' && v[3] != '('))
        c |= MCONF_MISSING_MIME_VERSION;
    free(v);
    root->conformance = c;
    return 0;
}

unsigned mpart_conformance(const mpart *root)
{
    return root->conformance;
}

/* ---- serialising ------------------------------------------------------------------------ */

static void put_part(sbuf *b, const mpart *p, int depth)
{
    for (size_t i = 0; i < p->nh; i++) {
        sbuf_put(b, p->h[i].raw, p->h[i].raw_len);
        sbuf_put(b, "\r\n", 2);
    }
    sbuf_put(b, "\r\n", 2);
    if (!p->multipart) {
        sbuf_put(b, p->body, p->body_len);
        return;
    }
    if (p->preamble)
        sbuf_put(b, p->preamble, p->pre_len);
    for (size_t i = 0; i < p->nkids; i++) {
        if (i > 0)
            sbuf_put(b, "\r\n", 2);
        sbuf_put(b, "--", 2);
        sbuf_puts(b, p->boundary);
        sbuf_put(b, "\r\n", 2);
        if (depth < 64)
            put_part(b, p->kids[i], depth + 1);
    }
    sbuf_put(b, p->nkids ? "\r\n--" : "--", p->nkids ? 4 : 2);
    sbuf_puts(b, p->boundary);
    sbuf_put(b, "--", 2);
    if (p->epilogue)
        sbuf_put(b, p->epilogue, p->epi_len);
    else
        sbuf_put(b, "\r\n", 2);
}

char *mpart_serialize(const mpart *p, size_t *len)
{
    sbuf b = {0};
    put_part(&b, p, 0);
    return sbuf_finish(&b, len);
}

/* ---- bodies ------------------------------------------------------------------------ */

char *mpart_body_decoded(const mpart *p, size_t *len, bool *text)
{
    if (p->multipart)
        return NULL;
    char ct[128];
    mpart_content_type(p, ct, sizeof(ct));
    *text = strncmp(ct, "text/", 5) == 0;
    long k = mpart_hdr_find(p, "Content-Transfer-Encoding", 0);
    char *cte = k >= 0 ? mpart_hdr_value(p, (size_t)k) : NULL;
    char *raw;
    size_t rl;
    if (cte && strncasecmp(cte, "base64", 6) == 0)
        raw = mpart_b64dec(p->body, p->body_len, &rl);
    else if (cte && strncasecmp(cte, "quoted-printable", 16) == 0)
        raw = mpart_qpdec(p->body, p->body_len, &rl);
    else {
        raw = dupn(p->body, p->body_len);
        rl = p->body_len;
    }
    free(cte);
    if (!raw || !*text) {
        *len = rl;
        return raw;
    }
    mparams mp;
    const char *charset = NULL;
    bool have = hdr_params(p, "Content-Type", &mp);
    if (have)
        charset = mparams_get(&mp, "charset");
    char *u = NULL;
    if (charset)
        u = charset_to_utf8(charset, raw, rl, len);
    if (!u)
        u = utf8_lossy(raw, rl, len);
    if (have)
        mparams_fini(&mp);
    free(raw);
    return u;
}

static bool needs_encoding(const char *s, size_t n)
{
    size_t col = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x80 || c == 0)
            return true;
        if (c == '\r') {
            if (i + 1 >= n || s[i + 1] != '\n')
                return true;
            continue;
        }
        if (c == '\n') {
            if (i == 0 || s[i - 1] != '\r')
                return true;
            col = 0;
            continue;
        }
        if (++col > 76)
            return true;
    }
    return false;
}

/* Sets the charset parameter of a text Content-Type (keeping the others). */
static int set_ctype(mpart *p, const char *ctype, const char *charset)
{
    mparams mp = {0};
    if (!hdr_params(p, "Content-Type", &mp)) {
        memset(&mp, 0, sizeof(mp));
        mp.value = strdup(ctype ? ctype : "text/plain");
        if (!mp.value)
            return KERR_NOMEM;
    } else if (ctype) {
        free(mp.value);
        mp.value = strdup(ctype);
        if (!mp.value) {
            mparams_fini(&mp);
            return KERR_NOMEM;
        }
    }
    if (charset) {
        for (size_t i = 0; i < mp.n; i++)
            if (strcasecmp(mp.names[i], "charset") == 0) {
                free(mp.values[i]);
                mp.values[i] = strdup(charset);
                if (!mp.values[i]) {
                    mparams_fini(&mp);
                    return KERR_NOMEM;
                }
                charset = NULL;
            }
        if (charset && param_put(&mp, "charset", charset, strlen(charset)) != 0) {
            mparams_fini(&mp);
            return KERR_NOMEM;
        }
    }
    char *v = mparams_format(&mp);
    mparams_fini(&mp);
    if (!v)
        return KERR_NOMEM;
    int rc = mpart_hdr_set(p, "Content-Type", v);
    free(v);
    return rc;
}

int mpart_set_body(mpart *p, const char *data, size_t len, bool text, const char *content_type)
{
    if (p->multipart)
        return KERR_INVAL;
    char *enc;
    size_t el;
    const char *cte = NULL;
    const char *charset = NULL;
    if (text) {
        /* text is stored as UTF-8 with CRLF line ends */
        char *canon = NULL;
        size_t cl = 0;
        sbuf c = {0};
        for (size_t i = 0; i < len; i++) {
            if (data[i] == '\n' && (i == 0 || data[i - 1] != '\r'))
                sbuf_putc(&c, '\r');
            sbuf_putc(&c, data[i]);
            if (data[i] == '\r' && (i + 1 >= len || data[i + 1] != '\n'))
                sbuf_putc(&c, '\n');
        }
        canon = sbuf_finish(&c, &cl);
        if (!canon)
            return KERR_NOMEM;
        if (!utf8_valid(canon, cl)) {
            char *fixed = utf8_lossy(canon, cl, &cl);
            free(canon);
            if (!(canon = fixed))
                return KERR_NOMEM;
        }
        if (needs_encoding(canon, cl)) {
            enc = mpart_qpenc(canon, cl, &el);
            free(canon);
            cte = "quoted-printable";
            charset = "utf-8";
        } else {
            enc = canon;
            el = cl;
            charset = "us-ascii";
        }
    } else {
        enc = mpart_b64enc((const unsigned char *)data, len, &el);
        cte = "base64";
    }
    if (!enc)
        return KERR_NOMEM;
    int rc = 0;
    if (text)
        rc = set_ctype(p, content_type, charset);
    else if (content_type || mpart_hdr_find(p, "Content-Type", 0) < 0)
        rc = mpart_hdr_set(p, "Content-Type", content_type ? content_type
                                                           : "application/octet-stream");
    if (rc == 0) {
        if (cte)
            rc = mpart_hdr_set(p, "Content-Transfer-Encoding", cte);
        else
            mpart_hdr_remove_all(p, "Content-Transfer-Encoding");
    }
    if (rc) {
        free(enc);
        return rc;
    }
    free(p->body);
    p->body = enc;
    p->body_len = el;
    return 0;
}

/* ---- building -------------------------------------------------------------------------- */

mpart *mpart_new_text(const char *content_type, const char *text, size_t len)
{
    mpart *p = mpart_new();
    if (!p || mpart_set_body(p, text, len, true, content_type) != 0) {
        mpart_unref(p);
        return NULL;
    }
    return p;
}

mpart *mpart_new_binary(const char *content_type, const char *data, size_t len,
                        const char *file_name, bool is_inline, const char *content_id)
{
    mpart *p = mpart_new();
    if (!p || mpart_set_body(p, data, len, false, content_type) != 0)
        goto fail;
    if (file_name || is_inline) {
        mparams mp = {0};
        mp.value = strdup(is_inline ? "inline" : "attachment");
        if (!mp.value || (file_name && param_put(&mp, "filename", file_name,
                                                 strlen(file_name)) != 0)) {
            mparams_fini(&mp);
            goto fail;
        }
        char *v = mparams_format(&mp);
        mparams_fini(&mp);
        int rc = v ? mpart_hdr_set(p, "Content-Disposition", v) : KERR_NOMEM;
        free(v);
        if (rc)
            goto fail;
    }
    if (content_id) {
        char *cid = malloc(strlen(content_id) + 3);
        if (!cid)
            goto fail;
        sprintf(cid, content_id[0] == '<' ? "%s" : "<%s>", content_id);
        int rc = mpart_hdr_set(p, "Content-ID", cid);
        free(cid);
        if (rc)
            goto fail;
    }
    return p;
fail:
    mpart_unref(p);
    return NULL;
}

mpart *mpart_new_multipart(const char *content_type, const char *boundary)
{
    mpart *p = mpart_new();
    if (!p)
        return NULL;
    char gen[40];
    if (!boundary) {
        uuid_t u;
        uuid_generate_random(u);
        uuid_unparse_lower(u, gen);
        boundary = gen;
    }
    p->multipart = true;
    p->boundary = strdup(boundary);
    mparams mp = {0};
    mp.value = strdup(content_type);
    if (!p->boundary || !mp.value || param_put(&mp, "boundary", boundary, strlen(boundary))) {
        mparams_fini(&mp);
        mpart_unref(p);
        return NULL;
    }
    char *v = mparams_format(&mp);
    mparams_fini(&mp);
    int rc = v ? mpart_hdr_set(p, "Content-Type", v) : KERR_NOMEM;
    free(v);
    if (rc) {
        mpart_unref(p);
        return NULL;
    }
    return p;
}

/* ---- rebuilding -------------------------------------------------------------------------- */

static bool is_ascii(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] >= 0x80)
            return false;
    return true;
}

/* Re-encodes one header field into q: unfolded value, trimmed name,
 * RFC 2047 for 8-bit values (converted from from_charset when they are not
 * UTF-8), folded at white space near 78 columns. */
static int rebuild_header(mpart *q, const mpart *p, size_t i, const char *from_charset)
{
    const mpart_hdr *h = &p->h[i];
    if (!h->name_len)
        return 0; /* MISSING_COLON_VALUE: nothing to keep */
    size_t nl = h->name_len;
    while (nl && (h->raw[nl - 1] == ' ' || h->raw[nl - 1] == '\t'))
        nl--;
    if (!nl)
        return 0;
    for (size_t k = 0; k < nl; k++)
        if ((unsigned char)h->raw[k] < 33 || (unsigned char)h->raw[k] > 126)
            return 0; /* not a field name (RFC 5322 §3.6.8 ftext): nothing to keep */
    char *name = dupn(h->raw, nl);
    char *v = mpart_hdr_value(p, i);
    if (!name || !v) {
        free(name);
        free(v);
        return KERR_NOMEM;
    }
    size_t vl = strlen(v);
    char *val = v;
    if (!is_ascii(v, vl)) {
        char *u = NULL;
        size_t ul;
        if (!utf8_valid(v, vl) && from_charset)
            u = charset_to_utf8(from_charset, v, vl, &ul);
        if (!u)
            u = utf8_lossy(v, vl, &ul);
        val = u ? rfc2047_encode(u, ul) : NULL;
        free(u);
        free(v);
        v = NULL;
        if (!val) {
            free(name);
            return KERR_NOMEM;
        }
    }
    /* fold at white space so no line passes 78 columns where possible */
    sbuf b = {0};
    sbuf_puts(&b, name);
    sbuf_put(&b, ": ", 2);
    size_t col = nl + 2;
    const char *s = val;
    bool first = true;
    while (*s) {
        const char *w = s;
        while (*w == ' ' || *w == '\t')
            w++;
        const char *e = w;
        while (*e && *e != ' ' && *e != '\t' && *e != '\r' && *e != '\n')
            e++;
        size_t wl = (size_t)(e - w);
        if (*e == '\r' || *e == '\n') {
            /* an encoded-word run already folded by rfc2047_encode */
            sbuf_put(&b, s, (size_t)(e - s));
            while (*e == '\r' || *e == '\n')
                e++;
            sbuf_put(&b, "\r\n", 2);
            col = 0;
            s = e;
            first = false;
            continue;
        }
        if (!first && col + 1 + wl > 78) {
            sbuf_put(&b, "\r\n\t", 3);
            col = 1;
        } else if (!first && w > s) {
            sbuf_putc(&b, ' ');
            col++;
        }
        sbuf_put(&b, w, wl);
        col += wl;
        first = false;
        s = e;
    }
    free(val);
    size_t rl;
    char *raw = sbuf_finish(&b, &rl);
    int rc = raw ? add_raw_header(q, q->nh, raw, rl, nl) : KERR_NOMEM;
    free(raw);
    free(name);
    return rc;
}

static mpart *rebuild_part(const mpart *p, const char *from_charset, int depth)
{
    mpart *q = mpart_new();
    if (!q)
        return NULL;
    snprintf(q->id, sizeof(q->id), "%s", p->id);
    for (size_t i = 0; i < p->nh; i++) {
        if (!p->multipart && mpart_hdr_find(p, "Content-Transfer-Encoding", i) == (long)i)
            continue; /* chosen again for the new body */
        if (rebuild_header(q, p, i, from_charset) != 0)
            goto fail;
    }
    if (p->multipart) {
        q->multipart = true;
        q->boundary = strdup(p->boundary);
        q->epilogue = dupn("\r\n", 2);
        q->epi_len = 2;
        if (!q->boundary || !q->epilogue)
            goto fail;
        for (size_t i = 0; i < p->nkids; i++) {
            mpart *k = depth < 64 ? rebuild_part(p->kids[i], from_charset, depth + 1) : NULL;
            if (!k || mpart_add_child(q, k) != 0) {
                mpart_unref(k);
                goto fail;
            }
            mpart_unref(k);
        }
        return q;
    }
    size_t len;
    bool text;
    char *body = mpart_body_decoded(p, &len, &text);
    if (!body)
        goto fail;
    if (text && from_charset) {
        /* mpart_body_decoded repaired bytes it could not read; read the raw
         * bytes in the assumed charset instead when they are not UTF-8 */
        long k = mpart_hdr_find(p, "Content-Transfer-Encoding", 0);
        char *raw = NULL;
        size_t rl = 0;
        char *cte = k >= 0 ? mpart_hdr_value(p, (size_t)k) : NULL;
        if (cte && strncasecmp(cte, "base64", 6) == 0)
            raw = mpart_b64dec(p->body, p->body_len, &rl);
        else if (cte && strncasecmp(cte, "quoted-printable", 16) == 0)
            raw = mpart_qpdec(p->body, p->body_len, &rl);
        else
            raw = dupn(p->body, rl = p->body_len);
        free(cte);
        if (raw && !utf8_valid(raw, rl)) {
            size_t ul;
            char *u = charset_to_utf8(from_charset, raw, rl, &ul);
            if (u) {
                free(body);
                body = u;
                len = ul;
            }
        }
        free(raw);
    }
    int rc = mpart_set_body(q, body, len, text, NULL);
    free(body);
    if (rc)
        goto fail;
    return q;
fail:
    mpart_unref(q);
    return NULL;
}

mpart *mpart_rebuild(const mpart *p, const char *from_charset)
{
    return rebuild_part(p, from_charset, 0);
}
