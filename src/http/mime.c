/* MIME message construction for /api/inject/v1's builder content.
 *
 * Mirrors the structure KumoMTA's MessageBuilder produces: a single text
 * part, or multipart/alternative (text, AMP, HTML), wrapped in
 * multipart/related when inline parts (with a Content-ID) exist and in
 * multipart/mixed when attachments exist. Text parts are sent as they are
 * when they are short-lined ASCII, else quoted-printable or base64, whichever
 * is smaller; attachments are base64. Everything is built into one growing
 * buffer; allocation failure is reported, never fatal. Any thread. */
#include "http/mime.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "core/kerr.h"

typedef struct buf {
    char *p;
    size_t n, cap;
    bool failed;
} buf;

static void put(buf *b, const char *s, size_t n)
{
    if (b->failed)
        return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 1024;
        while (cap < b->n + n + 1)
            cap *= 2;
        char *np = realloc(b->p, cap);
        if (!np) {
            b->failed = true;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

static void puts_(buf *b, const char *s)
{
    put(b, s, strlen(s));
}

static const char b64tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

char *mime_b64_encode(const unsigned char *in, size_t len)
{
    char *out = malloc((len + 2) / 3 * 4 + 1);
    if (!out)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < len)
            v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < len)
            v |= in[i + 2];
        out[o++] = b64tbl[(v >> 18) & 63];
        out[o++] = b64tbl[(v >> 12) & 63];
        out[o++] = i + 1 < len ? b64tbl[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < len ? b64tbl[v & 63] : '=';
    }
    out[o] = 0;
    return out;
}

int mime_b64_decode(const char *in, size_t inlen, unsigned char **out, size_t *outlen)
{
    int8_t rev[256];
    memset(rev, -1, sizeof(rev));
    for (int i = 0; i < 64; i++)
        rev[(unsigned char)b64tbl[i]] = (int8_t)i;
    /* the URL-safe alphabet is accepted too */
    rev['-'] = 62;
    rev['_'] = 63;
    unsigned char *o = malloc(inlen / 4 * 3 + 4);
    if (!o)
        return KERR_NOMEM;
    size_t n = 0;
    uint32_t acc = 0;
    int bits = 0;
    bool pad = false;
    for (size_t i = 0; i < inlen; i++) {
        unsigned char c = (unsigned char)in[i];
        if (c == ' ' || c == '\t' || c == '\r' || c == '\n')
            continue;
        if (c == '=') {
            pad = true;
            continue;
        }
        if (pad || rev[c] < 0) {
            free(o);
            return KERR_PARSE;
        }
        acc = (acc << 6) | (uint32_t)rev[c];
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            o[n++] = (unsigned char)(acc >> bits);
        }
    }
    /* 6 leftover bits can never come from a valid encoding */
    if (bits >= 6) {
        free(o);
        return KERR_PARSE;
    }
    *out = o;
    *outlen = n;
    return 0;
}

char *mime_normalize_crlf(const char *s, size_t len, size_t *outlen)
{
    size_t extra = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '\n' && (i == 0 || s[i - 1] != '\r'))
            extra++;
        else if (s[i] == '\r' && (i + 1 >= len || s[i + 1] != '\n'))
            extra++;
    }
    char *o = malloc(len + extra + 1);
    if (!o)
        return NULL;
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '\n' && (i == 0 || s[i - 1] != '\r')) {
            o[n++] = '\r';
            o[n++] = '\n';
        } else if (s[i] == '\r' && (i + 1 >= len || s[i + 1] != '\n')) {
            o[n++] = '\r';
            o[n++] = '\n';
        } else {
            o[n++] = s[i];
        }
    }
    o[n] = 0;
    *outlen = n;
    return o;
}

void mime_date_now(char *out, size_t len)
{
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    static const char *const days[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static const char *const months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                         "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    snprintf(out, len, "%s, %d %s %d %02d:%02d:%02d +0000", days[tm.tm_wday], tm.tm_mday,
             months[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

static bool is_ascii(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] >= 0x80)
            return false;
    return true;
}

bool mime_addr_valid(const char *a)
{
    const char *at = strrchr(a, '@');
    if (!at || at == a || !at[1])
        return false;
    for (const char *p = a; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (c <= ' ' || c == '<' || c == '>' || c == '(' || c == ')' || c == ',' || c == ';' ||
            c == '\\' || c == '[' || c == ']' || c == 0x7f)
            return false;
    }
    return true;
}

/* RFC 2047 B encoded-words for a UTF-8 string starting at column col;
 * every line they occupy stays within 76 characters (so every word is
 * shorter than 75), no word splits a UTF-8 sequence, and words are joined
 * by "\r\n " (a fold). */
static void put_encoded_words(buf *b, const char *s, size_t n, size_t col)
{
    size_t i = 0;
    bool first = true;
    while (i < n) {
        /* "=?UTF-8?B?" + "?=" take 12 columns; base64 turns 3 bytes into 4 */
        size_t avail = 76 - 12 - (first ? (col < 60 ? col : 60) : 1);
        size_t max = avail / 4 * 3;
        if (max < 3) {
            puts_(b, "\r\n ");
            first = false;
            continue;
        }
        size_t take = n - i < max ? n - i : max;
        while (take < n - i && take > 0 && ((unsigned char)s[i + take] & 0xC0) == 0x80)
            take--;
        if (take == 0)
            take = n - i < max ? n - i : max;
        char *enc = mime_b64_encode((const unsigned char *)s + i, take);
        if (!enc) {
            b->failed = true;
            return;
        }
        if (!first)
            puts_(b, "\r\n ");
        puts_(b, "=?UTF-8?B?");
        puts_(b, enc);
        puts_(b, "?=");
        free(enc);
        first = false;
        i += take;
    }
}

char *mime_mailbox(const char *name, const char *addr)
{
    buf b = {0};
    if (!name || !*name) {
        puts_(&b, addr);
        return b.failed ? (free(b.p), NULL) : b.p;
    }
    size_t nl = strlen(name);
    if (!is_ascii(name, nl)) {
        /* typically after "Reply-To: " */
        put_encoded_words(&b, name, nl, 10);
    } else {
        bool plain = true;
        for (size_t i = 0; i < nl; i++) {
            char c = name[i];
            if (!(c == ' ' || c == '!' || (c >= '#' && c <= '\'') || c == '*' || c == '+' ||
                  c == '-' || c == '/' || (c >= '0' && c <= '9') || c == '=' || c == '?' ||
                  (c >= 'A' && c <= 'Z') || (c >= '^' && c <= '~')))
                plain = false;
        }
        if (plain) {
            puts_(&b, name);
        } else {
            put(&b, "\"", 1);
            for (size_t i = 0; i < nl; i++) {
                if (name[i] == '"' || name[i] == '\\')
                    put(&b, "\\", 1);
                if (name[i] == '\r' || name[i] == '\n')
                    continue;
                put(&b, name + i, 1);
            }
            put(&b, "\"", 1);
        }
    }
    puts_(&b, " <");
    puts_(&b, addr);
    puts_(&b, ">");
    if (b.failed) {
        free(b.p);
        return NULL;
    }
    return b.p;
}

/* One header field. Unstructured non-ASCII values become encoded-words;
 * long ASCII values are folded at spaces before 78 columns. Line breaks in
 * values cannot inject fields: they are turned into spaces. */
static void put_header(buf *b, const char *name, const char *value, bool encoded)
{
    puts_(b, name);
    puts_(b, ": ");
    size_t vl = strlen(value);
    char *v = strndup(value, vl);
    if (!v) {
        b->failed = true;
        return;
    }
    for (size_t i = 0; i < vl; i++)
        if (v[i] == '\r' || v[i] == '\n')
            v[i] = ' ';
    if (!encoded && !is_ascii(v, vl)) {
        put_encoded_words(b, v, vl, strlen(name) + 2);
        puts_(b, "\r\n");
        free(v);
        return;
    }
    size_t col = strlen(name) + 2, i = 0;
    while (i < vl) {
        /* the next word, with the spaces before it */
        size_t j = i;
        while (j < vl && v[j] == ' ')
            j++;
        while (j < vl && v[j] != ' ')
            j++;
        size_t wl = j - i;
        if (col + wl > 78 && i > 0 && v[i] == ' ') {
            puts_(b, "\r\n");
            col = 0;
        }
        put(b, v + i, wl);
        col += wl;
        i = j;
    }
    puts_(b, "\r\n");
    free(v);
}

static bool header_given(const mime_spec *s, const char *name)
{
    for (size_t i = 0; i < s->n_headers; i++)
        if (strcasecmp(s->headers[i].name, name) == 0)
            return true;
    return false;
}

static void new_boundary(char *out, size_t len)
{
    unsigned char rnd[18];
    arc4random_buf(rnd, sizeof(rnd));
    char *enc = mime_b64_encode(rnd, sizeof(rnd));
    /* '+' and '/' are legal in boundaries but '=' needs quoting: none here */
    snprintf(out, len, "kumod-%s", enc ? enc : "boundary");
    free(enc);
}

/* Quoted-printable (RFC 2045 6.7) of CRLF text; lines at most 76 chars. */
static void put_qp(buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t col = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\r' && i + 1 < n && s[i + 1] == '\n') {
            puts_(b, "\r\n");
            col = 0;
            i++;
            continue;
        }
        char enc[4];
        size_t el;
        bool at_eol = i + 1 >= n || s[i + 1] == '\r';
        if ((c >= 33 && c <= 126 && c != '=') || ((c == ' ' || c == '\t') && !at_eol)) {
            enc[0] = (char)c;
            el = 1;
        } else {
            enc[0] = '=';
            enc[1] = hex[c >> 4];
            enc[2] = hex[c & 15];
            el = 3;
        }
        if (col + el > 75) {
            puts_(b, "=\r\n");
            col = 0;
        }
        put(b, enc, el);
        col += el;
    }
}

static void put_b64_lines(buf *b, const unsigned char *d, size_t n)
{
    char *enc = mime_b64_encode(d, n);
    if (!enc) {
        b->failed = true;
        return;
    }
    size_t el = strlen(enc);
    for (size_t i = 0; i < el; i += 76) {
        put(b, enc + i, el - i < 76 ? el - i : 76);
        puts_(b, "\r\n");
    }
    free(enc);
}

/* Content-Type parameter value, quoted when needed; non-ASCII file names
 * use RFC 2047 inside the quotes, as KumoMTA does. */
static void put_param(buf *b, const char *name, const char *value)
{
    puts_(b, ";\r\n\t");
    puts_(b, name);
    puts_(b, "=\"");
    size_t vl = strlen(value);
    if (!is_ascii(value, vl)) {
        put_encoded_words(b, value, vl, strlen(name) + 3);
    } else {
        for (size_t i = 0; i < vl; i++) {
            if (value[i] == '"' || value[i] == '\\')
                put(b, "\\", 1);
            if (value[i] == '\r' || value[i] == '\n')
                continue;
            put(b, value + i, 1);
        }
    }
    puts_(b, "\"");
}

/* A text part: headers, blank line, encoded body. */
static void put_text_part(buf *b, const char *ctype, const char *text)
{
    size_t nl;
    char *t = mime_normalize_crlf(text, strlen(text), &nl);
    if (!t) {
        b->failed = true;
        return;
    }
    bool ascii = is_ascii(t, nl);
    /* as-is when it needs no encoding at all */
    bool plain = ascii;
    size_t line = 0;
    for (size_t i = 0; i < nl && plain; i++) {
        unsigned char c = (unsigned char)t[i];
        if (c == '\r' && i + 1 < nl && t[i + 1] == '\n') {
            if (i > 0 && (t[i - 1] == ' ' || t[i - 1] == '\t'))
                plain = false;
            line = 0;
            i++;
            continue;
        }
        if (c == '=' || (c < 32 && c != '\t') || c == 127 || ++line > 76)
            plain = false;
    }
    if (nl && (t[nl - 1] == ' ' || t[nl - 1] == '\t'))
        plain = false;
    puts_(b, "Content-Type: ");
    puts_(b, ctype);
    puts_(b, ";\r\n\tcharset=\"");
    puts_(b, ascii ? "us-ascii" : "utf-8");
    puts_(b, "\"\r\n");
    if (plain) {
        puts_(b, "\r\n");
        put(b, t, nl);
    } else {
        buf q = {0};
        put_qp(&q, t, nl);
        size_t b64len = (nl + 2) / 3 * 4;
        b64len += b64len / 76 * 2;
        if (!q.failed && q.n <= b64len) {
            puts_(b, "Content-Transfer-Encoding: quoted-printable\r\n\r\n");
            put(b, q.p, q.n);
        } else {
            puts_(b, "Content-Transfer-Encoding: base64\r\n\r\n");
            put_b64_lines(b, (const unsigned char *)t, nl);
        }
        free(q.p);
    }
    if (b->n < 2 || b->p[b->n - 2] != '\r' || b->p[b->n - 1] != '\n')
        puts_(b, "\r\n");
    free(t);
}

static void put_attachment(buf *b, const mime_attachment *a)
{
    puts_(b, "Content-Type: ");
    puts_(b, a->content_type);
    if (a->file_name)
        put_param(b, "name", a->file_name);
    puts_(b, "\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: ");
    puts_(b, a->content_id ? "inline" : "attachment");
    if (a->file_name)
        put_param(b, "filename", a->file_name);
    puts_(b, "\r\n");
    if (a->content_id) {
        puts_(b, "Content-ID: <");
        puts_(b, a->content_id);
        puts_(b, ">\r\n");
    }
    puts_(b, "\r\n");
    put_b64_lines(b, a->data, a->len);
}

static void put_alternative(buf *b, const mime_spec *s)
{
    const char *parts[3][2] = {{"text/plain", s->text},
                               {"text/x-amp-html", s->amp_html},
                               {"text/html", s->html}};
    int n = 0;
    for (int i = 0; i < 3; i++)
        if (parts[i][1])
            n++;
    if (n == 1) {
        for (int i = 0; i < 3; i++)
            if (parts[i][1])
                put_text_part(b, parts[i][0], parts[i][1]);
        return;
    }
    char bd[64];
    new_boundary(bd, sizeof(bd));
    puts_(b, "Content-Type: multipart/alternative;\r\n\tboundary=\"");
    puts_(b, bd);
    puts_(b, "\"\r\n\r\n");
    for (int i = 0; i < 3; i++) {
        if (!parts[i][1])
            continue;
        puts_(b, "--");
        puts_(b, bd);
        puts_(b, "\r\n");
        put_text_part(b, parts[i][0], parts[i][1]);
    }
    puts_(b, "--");
    puts_(b, bd);
    puts_(b, "--\r\n");
}

static void put_related(buf *b, const mime_spec *s)
{
    size_t n_inline = 0;
    for (size_t i = 0; i < s->n_attachments; i++)
        if (s->attachments[i].content_id)
            n_inline++;
    if (!n_inline) {
        put_alternative(b, s);
        return;
    }
    char bd[64];
    new_boundary(bd, sizeof(bd));
    puts_(b, "Content-Type: multipart/related;\r\n\tboundary=\"");
    puts_(b, bd);
    puts_(b, "\"\r\n\r\n--");
    puts_(b, bd);
    puts_(b, "\r\n");
    put_alternative(b, s);
    for (size_t i = 0; i < s->n_attachments; i++) {
        if (!s->attachments[i].content_id)
            continue;
        puts_(b, "--");
        puts_(b, bd);
        puts_(b, "\r\n");
        put_attachment(b, &s->attachments[i]);
    }
    puts_(b, "--");
    puts_(b, bd);
    puts_(b, "--\r\n");
}

static void put_mixed(buf *b, const mime_spec *s)
{
    size_t n_att = 0;
    for (size_t i = 0; i < s->n_attachments; i++)
        if (!s->attachments[i].content_id)
            n_att++;
    if (!n_att) {
        put_related(b, s);
        return;
    }
    char bd[64];
    new_boundary(bd, sizeof(bd));
    puts_(b, "Content-Type: multipart/mixed;\r\n\tboundary=\"");
    puts_(b, bd);
    puts_(b, "\"\r\n\r\n--");
    puts_(b, bd);
    puts_(b, "\r\n");
    put_related(b, s);
    for (size_t i = 0; i < s->n_attachments; i++) {
        if (s->attachments[i].content_id)
            continue;
        puts_(b, "--");
        puts_(b, bd);
        puts_(b, "\r\n");
        put_attachment(b, &s->attachments[i]);
    }
    puts_(b, "--");
    puts_(b, bd);
    puts_(b, "--\r\n");
}

char *mime_build(const mime_spec *s, size_t *len, char *err, size_t errlen)
{
    if (!s->text && !s->html) {
        snprintf(err, errlen, "at least one of text_body and/or html_body must be given");
        return NULL;
    }
    buf b = {0};
    for (size_t i = 0; i < s->n_headers; i++)
        put_header(&b, s->headers[i].name, s->headers[i].value, s->headers[i].encoded);
    if (!header_given(s, "Date")) {
        char date[64];
        mime_date_now(date, sizeof(date));
        put_header(&b, "Date", date, true);
    }
    if (s->message_id && !header_given(s, "Message-ID"))
        put_header(&b, "Message-ID", s->message_id, true);
    if (!header_given(s, "MIME-Version"))
        puts_(&b, "MIME-Version: 1.0\r\n");
    /* the root part's own headers follow, then its body */
    put_mixed(&b, s);
    if (b.failed) {
        free(b.p);
        snprintf(err, errlen, "out of memory building the message");
        return NULL;
    }
    *len = b.n;
    return b.p;
}
