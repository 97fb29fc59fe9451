/* Writing MIME: replacing a part's body with the right transfer encoding,
 * the kumo.mimepart constructors, and the rebuild that fixes conformance
 * issues (see mime.h). Any thread, one owner per tree; allocation failure
 * returns NULL / KERR_NOMEM. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <uuid/uuid.h>

#include "core/kerr.h"
#include "msg/mime.h"
#include "msg/mime_int.h"
#include "msg/rfc2047.h"
#include "core/sbuf.h"

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
        raw = mpart__dupn(p->body, p->body_len);
        rl = p->body_len;
    }
    free(cte);
    if (!raw || !*text) {
        *len = rl;
        return raw;
    }
    mparams mp;
    const char *charset = NULL;
    bool have = mpart__hdr_params(p, "Content-Type", &mp);
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
    if (!mpart__hdr_params(p, "Content-Type", &mp)) {
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
        if (charset && mpart__param_put(&mp, "charset", charset, strlen(charset)) != 0) {
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
        rc = mpart_hdr_set(p, "Content-Type",
                           content_type ? content_type : "application/octet-stream");
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
        if (!mp.value ||
            (file_name && mpart__param_put(&mp, "filename", file_name, strlen(file_name)) != 0)) {
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
    if (!p->boundary || !mp.value ||
        mpart__param_put(&mp, "boundary", boundary, strlen(boundary))) {
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
    char *name = mpart__dupn(h->raw, nl);
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
    int rc = raw ? mpart__add_raw_header(q, q->nh, raw, rl, nl) : KERR_NOMEM;
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
        q->epilogue = mpart__dupn("\r\n", 2);
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
            raw = mpart__dupn(p->body, rl = p->body_len);
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
