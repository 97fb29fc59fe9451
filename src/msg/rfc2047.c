/* RFC 2047 encoded words and UTF-8 repair for header text. Owns nothing:
 * each call returns a new buffer. Charsets other than UTF-8, US-ASCII and
 * ISO-8859-1 go through glibc's iconv (one descriptor per call, closed before
 * return). Any thread; allocation failure returns NULL. */
#include "msg/rfc2047.h"

#include <errno.h>
#include <iconv.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>

#include "core/sbuf.h"

/* Length of the valid UTF-8 sequence at s (at most n bytes), or 0. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    if (c < 0x80)
        return 1;
    size_t len;
    uint32_t cp;
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
        cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
        (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return len;
}

bool utf8_valid(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        size_t l = utf8_seq(p + i, n - i);
        if (!l)
            return false;
        i += l;
    }
    return true;
}

static void put_lossy(sbuf *b, const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0, run = 0;
    while (i < n) {
        size_t l = utf8_seq(p + i, n - i);
        if (l) {
            i += l;
            continue;
        }
        sbuf_put(b, s + run, i - run);
        sbuf_put(b, "\xEF\xBF\xBD", 3);
        i++;
        run = i;
    }
    sbuf_put(b, s + run, n - run);
}

char *utf8_lossy(const char *s, size_t n, size_t *out_len)
{
    sbuf b = {0};
    put_lossy(&b, s, n);
    return sbuf_finish(&b, out_len);
}

static void put_latin1(sbuf *b, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x80) {
            sbuf_putc(b, (char)c);
        } else {
            char two[2] = {(char)(0xC0 | (c >> 6)), (char)(0x80 | (c & 0x3F))};
            sbuf_put(b, two, 2);
        }
    }
}

/* Appends s (in charset) as UTF-8; false when the charset is unknown. */
static bool put_charset(sbuf *b, const char *charset, const char *s, size_t n)
{
    /* RFC 2231 §5 allows a language suffix: "utf-8*en" */
    char cs[64];
    size_t cl = strcspn(charset, "*");
    if (cl >= sizeof(cs))
        return false;
    memcpy(cs, charset, cl);
    cs[cl] = 0;
    if (strcasecmp(cs, "utf-8") == 0 || strcasecmp(cs, "utf8") == 0 ||
        strcasecmp(cs, "us-ascii") == 0 || strcasecmp(cs, "ascii") == 0) {
        put_lossy(b, s, n);
        return true;
    }
    if (strcasecmp(cs, "iso-8859-1") == 0 || strcasecmp(cs, "latin1") == 0) {
        put_latin1(b, s, n);
        return true;
    }
    iconv_t cd = iconv_open("UTF-8", cs);
    if (cd == (iconv_t)-1)
        return false;
    char *in = (char *)s;
    size_t inleft = n;
    char out[512];
    while (inleft > 0) {
        char *o = out;
        size_t oleft = sizeof(out);
        size_t r = iconv(cd, &in, &inleft, &o, &oleft);
        put_lossy(b, out, (size_t)(o - out));
        if (r == (size_t)-1 && errno != E2BIG) {
            /* an invalid or truncated sequence: mark it and go on */
            sbuf_put(b, "\xEF\xBF\xBD", 3);
            in++;
            inleft--;
        }
    }
    iconv_close(cd);
    return true;
}

char *charset_to_utf8(const char *charset, const char *s, size_t n, size_t *out_len)
{
    sbuf b = {0};
    if (!put_charset(&b, charset, s, n)) {
        sbuf_fini(&b);
        return NULL;
    }
    return sbuf_finish(&b, out_len);
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

static int b64val(char c)
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

/* Decodes the text of one encoded word into raw bytes (appended to out).
 * False when it is not valid for its encoding. */
static bool decode_word_text(char enc, const char *t, size_t n, sbuf *out)
{
    if (enc == 'Q' || enc == 'q') {
        for (size_t i = 0; i < n; i++) {
            if (t[i] == '_') {
                sbuf_putc(out, ' ');
            } else if (t[i] == '=') {
                if (i + 2 >= n)
                    return false;
                int h = hexval(t[i + 1]), l = hexval(t[i + 2]);
                if (h < 0 || l < 0)
                    return false;
                sbuf_putc(out, (char)(h * 16 + l));
                i += 2;
            } else {
                sbuf_putc(out, t[i]);
            }
        }
        return true;
    }
    unsigned acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        if (t[i] == '=')
            break;
        int v = b64val(t[i]);
        if (v < 0)
            return false;
        acc = (acc << 6) | (unsigned)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            sbuf_putc(out, (char)((acc >> bits) & 0xFF));
        }
    }
    return true;
}

/* Recognises an encoded word at s[i..n): returns its length (0 if none) and
 * its parts. Encoded words hold no white space (RFC 2047 §2). */
static size_t match_word(const char *s, size_t n, size_t i, const char **cs, size_t *csl, char *enc,
                         const char **txt, size_t *txtl)
{
    if (i + 1 >= n || s[i] != '=' || s[i + 1] != '?')
        return 0;
    size_t p = i + 2, c0 = p;
    while (p < n && s[p] != '?' && s[p] != ' ' && s[p] != '\t' && s[p] != '\r' && s[p] != '\n')
        p++;
    if (p >= n || s[p] != '?' || p == c0 || p + 2 >= n || s[p + 2] != '?')
        return 0;
    char e = s[p + 1];
    if (e != 'B' && e != 'b' && e != 'Q' && e != 'q')
        return 0;
    size_t t0 = p + 3, q = t0;
    while (q + 1 < n && !(s[q] == '?' && s[q + 1] == '=')) {
        if (s[q] == ' ' || s[q] == '\t' || s[q] == '\r' || s[q] == '\n')
            return 0;
        q++;
    }
    if (q + 1 >= n)
        return 0;
    *cs = s + c0;
    *csl = p - c0;
    *enc = e;
    *txt = s + t0;
    *txtl = q - t0;
    return q + 2 - i;
}

char *rfc2047_decode(const char *s, size_t n, size_t *out_len)
{
    sbuf b = {0}, raw = {0};
    size_t i = 0, plain = 0;
    bool prev_word = false;
    size_t ws_start = 0;
    while (i < n) {
        const char *cs, *txt;
        size_t csl, txtl;
        char enc;
        size_t wl = match_word(s, n, i, &cs, &csl, &enc, &txt, &txtl);
        if (wl) {
            char charset[64];
            bool ok = csl < sizeof(charset);
            if (ok) {
                memcpy(charset, cs, csl);
                charset[csl] = 0;
                raw.len = 0;
                ok = decode_word_text(enc, txt, txtl, &raw);
            }
            if (ok) {
                /* text before the word; white space between two words goes */
                size_t upto = prev_word ? ws_start : i;
                put_lossy(&b, s + plain, upto - plain);
                sbuf_reserve(&raw, 0);
                ok = raw.oom || put_charset(&b, charset, raw.p ? raw.p : "", raw.len);
            }
            if (ok) {
                i += wl;
                plain = i;
                prev_word = true;
                ws_start = i;
                continue;
            }
        }
        if (s[i] == ' ' || s[i] == '\t' || s[i] == '\r' || s[i] == '\n') {
            i++; /* white space keeps prev_word: it may sit between two words */
            continue;
        }
        prev_word = false;
        i++;
    }
    put_lossy(&b, s + plain, n - plain);
    bool oom = raw.oom;
    sbuf_fini(&raw);
    if (oom) {
        sbuf_fini(&b);
        return NULL;
    }
    return sbuf_finish(&b, out_len);
}

static bool is_ascii(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] >= 0x80)
            return false;
    return true;
}

char *rfc2047_encode(const char *s, size_t n)
{
    sbuf b = {0};
    if (is_ascii(s, n)) {
        sbuf_put(&b, s, n);
        return sbuf_finish(&b, NULL);
    }
    static const char hex[] = "0123456789ABCDEF";
    const char *prefix = "=?UTF-8?q?";
    size_t word = 0; /* bytes in the current word */
    size_t i = 0;
    /* the value is first made valid UTF-8 so that words split on character
     * boundaries */
    size_t ln;
    char *v = utf8_lossy(s, n, &ln);
    if (!v)
        return NULL;
    while (i < ln) {
        size_t cl = utf8_seq((const unsigned char *)v + i, ln - i);
        if (!cl)
            cl = 1;
        size_t need = 0;
        for (size_t k = 0; k < cl; k++) {
            unsigned char c = (unsigned char)v[i + k];
            bool lit = c > 0x20 && c < 0x7F && c != '=' && c != '?' && c != '_' && c != '"';
            need += (lit || c == ' ') ? 1 : 3;
        }
        if (word && word + need + 2 > 75) {
            sbuf_puts(&b, "?=\r\n ");
            word = 0;
        }
        if (!word) {
            sbuf_puts(&b, prefix);
            word = strlen(prefix);
        }
        for (size_t k = 0; k < cl; k++) {
            unsigned char c = (unsigned char)v[i + k];
            if (c == ' ') {
                sbuf_putc(&b, '_');
            } else if (c > 0x20 && c < 0x7F && c != '=' && c != '?' && c != '_' && c != '"') {
                sbuf_putc(&b, (char)c);
            } else {
                char e[3] = {'=', hex[c >> 4], hex[c & 15]};
                sbuf_put(&b, e, 3);
            }
        }
        word += need;
        i += cl;
    }
    if (word)
        sbuf_puts(&b, "?=");
    free(v);
    return sbuf_finish(&b, NULL);
}
