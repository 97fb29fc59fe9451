/* MIME trees: parts, their header fields, parsing and serialising (see
 * mime.h; encodings are in mime_codec.c, body writing, constructors and the
 * rebuild in mime_build.c). A part owns
 * copies of its header fields and body bytes; children are owned through
 * their reference counts. Everything here is pure code on caller-owned
 * trees; any thread, one owner at a time. Hostile input degrades, never
 * fails: a multipart without a usable boundary becomes a leaf, a missing
 * close delimiter ends the last part at the end of the data, nesting below
 * MPART_MAX_DEPTH stays unparsed. */
#include "msg/mime.h"
#include "msg/mime_int.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/kerr.h"
#include "msg/datetime.h"
#include "msg/rfc2047.h"
#include "core/sbuf.h"

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

char *mpart__dupn(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    if (!d)
        return NULL;
    if (n)
        memcpy(d, s, n);
    d[n] = 0;
    return d;
}

int mpart__add_raw_header(mpart *p, size_t at, const char *raw, size_t raw_len, size_t name_len)
{
    if (p->nh == p->caph) {
        size_t nc = p->caph ? p->caph * 2 : 8;
        mpart_hdr *nh = realloc(p->h, nc * sizeof(*nh));
        if (!nh)
            return KERR_NOMEM;
        p->h = nh;
        p->caph = nc;
    }
    char *copy = mpart__dupn(raw, raw_len);
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
    int rc = mpart__add_raw_header(p, at, raw, len, strlen(name));
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
        if ((*rc = mpart__add_raw_header(p, p->nh, s + start, raw_len, name_len)) != 0)
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
                p->preamble = mpart__dupn(s, i);
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
                p->epilogue = mpart__dupn(s + after, n - after);
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
    if (mpart__hdr_params(p, "Content-Type", &ct)) {
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
        p->body = mpart__dupn(s + body, n - body);
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
