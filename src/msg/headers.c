/* Header block scanning and editing on raw RFC 5322 bytes. Every function
 * works on a caller-owned buffer and returns new malloc'd buffers; nothing
 * is kept except in a hdr_index, which the caller owns. Bare LF line endings
 * are tolerated when reading; what we insert always uses CRLF. Any thread.
 *
 * Every scan is linear in the bytes it covers: hdr_next looks only at the
 * field it returns (it once rescanned the whole block on every call, which
 * made a 64,000-field header block take 28 s), and hdr_index parses a block
 * once for all the lookups a policy makes on one message. Allocation
 * failures return NULL / KERR_NOMEM. */
#include "msg/headers.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/kerr.h"

static _Thread_local unsigned long long scanned;

unsigned long long hdr_bytes_scanned(void)
{
    return scanned;
}

size_t hdr_block_len(const char *data, size_t len)
{
    size_t i = 0;
    while (i < len) {
        const char *nl = memchr(data + i, '\n', len - i);
        if (!nl)
            return len;
        size_t line_end = (size_t)(nl - data) + 1;
        size_t line_len = line_end - i;
        if (line_len == 1 || (line_len == 2 && data[i] == '\r')) {
            scanned += line_end;
            return line_end; /* the blank separator line */
        }
        i = line_end;
    }
    scanned += len;
    return len;
}

bool hdr_next(const char *data, size_t len, size_t *pos, hdr_field *out)
{
    /* The blank line that ends the block is recognised where a field would
     * start, and a continuation line cannot begin with CR or LF, so scanning
     * up to len finds the same fields as scanning up to the block's end. */
    size_t block = len;
    size_t i = *pos;
    size_t first = i;
    for (;;) {
        if (i >= block)
            return false;
        /* blank line ends the block */
        if (data[i] == '\n' || (data[i] == '\r' && i + 1 < len && data[i + 1] == '\n'))
            return false;
        /* a stray continuation line without a field before it: skip it */
        if (data[i] == ' ' || data[i] == '\t') {
            const char *nl = memchr(data + i, '\n', block - i);
            i = nl ? (size_t)(nl - data) + 1 : block;
            continue;
        }
        break;
    }
    size_t start = i;
    size_t end = i;
    /* field continues while the next line starts with WSP */
    for (;;) {
        const char *nl = memchr(data + end, '\n', block - end);
        end = nl ? (size_t)(nl - data) + 1 : block;
        if (end >= block || (data[end] != ' ' && data[end] != '\t'))
            break;
    }
    scanned += end - first;
    const char *colon = memchr(data + start, ':', end - start);
    out->start = start;
    out->end = end;
    out->name = data + start;
    out->name_len = colon ? (size_t)(colon - (data + start)) : 0;
    while (out->name_len && (out->name[out->name_len - 1] == ' '))
        out->name_len--;
    out->raw = data + start;
    size_t rl = end - start;
    while (rl && (data[start + rl - 1] == '\n' || data[start + rl - 1] == '\r'))
        rl--;
    out->raw_len = rl;
    *pos = end;
    return true;
}

bool hdr_name_eq(const hdr_field *f, const char *name)
{
    size_t n = strlen(name);
    return n == f->name_len && strncasecmp(f->name, name, n) == 0;
}

char *hdr_value(const hdr_field *f)
{
    const char *p = f->raw + f->name_len;
    const char *end = f->raw + f->raw_len;
    while (p < end && *p != ':')
        p++;
    if (p < end)
        p++;
    while (p < end && (*p == ' ' || *p == '\t'))
        p++;
    char *out = malloc((size_t)(end - p) + 1);
    if (!out)
        return NULL;
    size_t o = 0;
    while (p < end) {
        if (*p == '\r' || *p == '\n') {
            p++;
            continue;
        }
        out[o++] = *p++;
    }
    out[o] = 0;
    return out;
}

char *hdr_get_first(const char *data, size_t len, const char *name)
{
    size_t pos = 0;
    hdr_field f;
    while (hdr_next(data, len, &pos, &f))
        if (hdr_name_eq(&f, name))
            return hdr_value(&f);
    return NULL;
}

/* Builds "Name: value\r\n", folding at whitespace to keep lines near 78. */
char *hdr_format_field(const char *name, const char *value, size_t *out_len)
{
    size_t nl = strlen(name), vl = strlen(value);
    size_t cap = nl + 2 + vl + 3 * (vl / 60 + 2) + 3;
    char *buf = malloc(cap);
    if (!buf)
        return NULL;
    size_t o = 0;
    memcpy(buf, name, nl);
    o = nl;
    buf[o++] = ':';
    buf[o++] = ' ';
    size_t col = o;
    const char *p = value;
    while (*p) {
        /* next word (including its leading space) */
        const char *q = p + 1;
        while (*q && *q != ' ' && *q != '\t')
            q++;
        size_t wl = (size_t)(q - p);
        if (col + wl > 78 && col > nl + 2 && (*p == ' ' || *p == '\t')) {
            buf[o++] = '\r';
            buf[o++] = '\n';
            col = 0;
        }
        if (o + wl + 3 > cap) {
            cap = (o + wl + 3) * 2;
            char *nb = realloc(buf, cap);
            if (!nb) {
                free(buf);
                return NULL;
            }
            buf = nb;
        }
        memcpy(buf + o, p, wl);
        o += wl;
        col += wl;
        p = q;
    }
    buf[o++] = '\r';
    buf[o++] = '\n';
    buf[o] = 0;
    *out_len = o;
    return buf;
}

static char *splice(const char *data, size_t len, size_t at, const char *ins, size_t ins_len,
                    size_t *out_len)
{
    char *out = malloc(len + ins_len + 1);
    if (!out)
        return NULL;
    memcpy(out, data, at);
    memcpy(out + at, ins, ins_len);
    memcpy(out + at + ins_len, data + at, len - at);
    out[len + ins_len] = 0;
    *out_len = len + ins_len;
    return out;
}

char *hdr_prepend(const char *data, size_t len, const char *name, const char *value,
                  size_t *out_len)
{
    size_t fl;
    char *field = hdr_format_field(name, value, &fl);
    if (!field)
        return NULL;
    char *out = splice(data, len, 0, field, fl, out_len);
    free(field);
    return out;
}

char *hdr_append(const char *data, size_t len, const char *name, const char *value, size_t *out_len)
{
    size_t fl;
    char *field = hdr_format_field(name, value, &fl);
    if (!field)
        return NULL;
    /* insert just before the blank line (or at the end of a body-less message) */
    size_t pos = 0, at = 0;
    hdr_field f;
    while (hdr_next(data, len, &pos, &f))
        at = f.end;
    if (at > 0 && data[at - 1] != '\n') {
        /* last header has no line ending: add one first */
        char *tmp = splice(data, len, at, "\r\n", 2, out_len);
        if (!tmp) {
            free(field);
            return NULL;
        }
        char *out = splice(tmp, *out_len, at + 2, field, fl, out_len);
        free(tmp);
        free(field);
        return out;
    }
    char *out = splice(data, len, at, field, fl, out_len);
    free(field);
    return out;
}

char *hdr_remove(const char *data, size_t len, const char *name, bool prefix, size_t *out_len)
{
    char *out = malloc(len + 1);
    if (!out)
        return NULL;
    size_t o = 0, pos = 0, copied = 0;
    size_t nl = strlen(name);
    hdr_field f;
    while (hdr_next(data, len, &pos, &f)) {
        bool match = prefix ? (f.name_len >= nl && strncasecmp(f.name, name, nl) == 0)
                            : hdr_name_eq(&f, name);
        if (match) {
            memcpy(out + o, data + copied, f.start - copied);
            o += f.start - copied;
            copied = f.end;
        }
    }
    memcpy(out + o, data + copied, len - copied);
    o += len - copied;
    out[o] = 0;
    *out_len = o;
    return out;
}

/* ---- the index --------------------------------------------------------------- */

int hdr_index_build(const char *data, size_t len, hdr_index *out)
{
    memset(out, 0, sizeof(*out));
    size_t cap = 0, pos = 0;
    hdr_field f;
    while (hdr_next(data, len, &pos, &f)) {
        if (out->n == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            hdr_field *nf = realloc(out->fields, ncap * sizeof(*nf));
            if (!nf) {
                hdr_index_fini(out);
                return KERR_NOMEM;
            }
            out->fields = nf;
            cap = ncap;
        }
        out->fields[out->n++] = f;
        out->append_at = f.end;
    }
    /* pos is where the field loop stopped: at the blank line, or at len */
    if (pos < len && data[pos] == '\n')
        out->block_len = pos + 1;
    else if (pos + 1 < len && data[pos] == '\r' && data[pos + 1] == '\n')
        out->block_len = pos + 2;
    else
        out->block_len = pos < len ? hdr_block_len(data, len) : len;
    out->last_has_eol = out->append_at == 0 || data[out->append_at - 1] == '\n';
    return 0;
}

void hdr_index_fini(hdr_index *ix)
{
    if (!ix)
        return;
    free(ix->fields);
    memset(ix, 0, sizeof(*ix));
}

long hdr_index_find(const hdr_index *ix, const char *name, size_t from)
{
    for (size_t i = from; i < ix->n; i++)
        if (hdr_name_eq(&ix->fields[i], name))
            return (long)i;
    return -1;
}

char *hdr_index_remove(const hdr_index *ix, const char *data, size_t len, const bool *drop,
                       size_t *out_len)
{
    char *out = malloc(len + 1);
    if (!out)
        return NULL;
    size_t o = 0, copied = 0;
    for (size_t i = 0; drop && i < ix->n; i++) {
        if (!drop[i])
            continue;
        const hdr_field *f = &ix->fields[i];
        memcpy(out + o, data + copied, f->start - copied);
        o += f->start - copied;
        copied = f->end;
    }
    memcpy(out + o, data + copied, len - copied);
    o += len - copied;
    out[o] = 0;
    *out_len = o;
    return out;
}

char *hdr_index_insert(const hdr_index *ix, const char *data, size_t len, bool at_end,
                       const char *ins, size_t ins_len, size_t *out_len)
{
    size_t at = at_end ? ix->append_at : 0;
    bool add_eol = at_end && !ix->last_has_eol;
    size_t extra = ins_len + (add_eol ? 2 : 0);
    char *out = malloc(len + extra + 1);
    if (!out)
        return NULL;
    memcpy(out, data, at);
    size_t o = at;
    if (add_eol) {
        /* the last field has no line ending (a body-less message) */
        out[o++] = '\r';
        out[o++] = '\n';
    }
    memcpy(out + o, ins, ins_len);
    o += ins_len;
    memcpy(out + o, data + at, len - at);
    o += len - at;
    out[o] = 0;
    *out_len = o;
    return out;
}
