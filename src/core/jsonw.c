/* The compact JSON writer (see jsonw.h). Owns nothing; runs on any
 * thread. Strings are copied in runs: a byte table says which bytes end a
 * run (a character to escape, or the first byte of a multi-byte sequence,
 * which is checked with utf8_seq). Failures: allocation (the sbuf's oom)
 * and nesting deeper than JSONW_MAX_DEPTH. */
#include "core/jsonw.h"

#include <stdio.h>
#include <string.h>

#include "core/kerr.h"
#include "core/utf8.h"

/* 0: copied as is; 1: escaped; 2: first byte of a sequence to check */
static const unsigned char CLASS[256] = {
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0x00 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0x10 */
    0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0x20 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0x30 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0x40 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, /* 0x50 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0x60 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0x70 */
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, /* 0x80 */
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, /* 0x90 */
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, /* 0xA0 */
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, /* 0xB0 */
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, /* 0xC0 */
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, /* 0xD0 */
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, /* 0xE0 */
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, /* 0xF0 */
};

static void put_escape(sbuf *b, unsigned char c)
{
    switch (c) {
    case '\\':
        sbuf_put(b, "\\\\", 2);
        return;
    case '"':
        sbuf_put(b, "\\\"", 2);
        return;
    case '\b':
        sbuf_put(b, "\\b", 2);
        return;
    case '\f':
        sbuf_put(b, "\\f", 2);
        return;
    case '\n':
        sbuf_put(b, "\\n", 2);
        return;
    case '\r':
        sbuf_put(b, "\\r", 2);
        return;
    case '\t':
        sbuf_put(b, "\\t", 2);
        return;
    default: {
        /* jansson writes the other controls as \u00XX, upper-case */
        static const char HEX[] = "0123456789ABCDEF";
        char seq[6] = {'\\', 'u', '0', '0', HEX[c >> 4], HEX[c & 15]};
        sbuf_put(b, seq, sizeof(seq));
        return;
    }
    }
}

void jsonw_string(sbuf *b, const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    if (!sbuf_reserve(b, n + 2))
        return;
    sbuf_putc(b, '"');
    size_t run = 0, i = 0;
    while (i < n) {
        unsigned char cls = CLASS[p[i]];
        if (cls == 0) {
            i++;
            continue;
        }
        if (cls == 2) {
            long l = utf8_seq(p + i, n - i);
            if (l > 0) {
                i += (size_t)l;
                continue;
            }
            sbuf_put(b, p + run, i - run);
            sbuf_put(b, "\xEF\xBF\xBD", 3); /* U+FFFD */
            i += (size_t)(-l);
            run = i;
            continue;
        }
        sbuf_put(b, p + run, i - run);
        put_escape(b, p[i]);
        run = ++i;
    }
    sbuf_put(b, p + run, n - run);
    sbuf_putc(b, '"');
}

/* jansson's real format: %.17g, then ".0" when it reads as an integer,
 * and the exponent without '+' or leading zeros */
static void put_real(sbuf *b, double d)
{
    char buf[64];
    int n = snprintf(buf, sizeof(buf), "%.17g", d);
    if (n < 0 || (size_t)n >= sizeof(buf) - 3) {
        b->oom = true;
        return;
    }
    size_t len = (size_t)n;
    /* a locale with another decimal point (kumod runs in "C", but be exact) */
    for (size_t i = 0; i < len; i++)
        if (buf[i] == ',')
            buf[i] = '.';
    if (strspn(buf, "0123456789-") == len) {
        buf[len++] = '.';
        buf[len++] = '0';
        buf[len] = '\0';
    }
    char *e = strchr(buf, 'e');
    if (e) {
        char *start = e + 1, *end = e + 2;
        if (*start == '-')
            start++;
        while (*end == '0')
            end++;
        if (end != start) {
            memmove(start, end, len - (size_t)(end - buf) + 1);
            len -= (size_t)(end - start);
        }
    }
    sbuf_put(b, buf, len);
}

static int put_value(sbuf *b, const json_t *v, int depth)
{
    if (!v)
        return KERR_INVAL;
    switch (json_typeof(v)) {
    case JSON_NULL:
        sbuf_put(b, "null", 4);
        break;
    case JSON_TRUE:
        sbuf_put(b, "true", 4);
        break;
    case JSON_FALSE:
        sbuf_put(b, "false", 5);
        break;
    case JSON_INTEGER: {
        char buf[32];
        int n = snprintf(buf, sizeof(buf), "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        sbuf_put(b, buf, (size_t)n);
        break;
    }
    case JSON_REAL:
        put_real(b, json_real_value(v));
        break;
    case JSON_STRING:
        jsonw_string(b, json_string_value(v), json_string_length(v));
        break;
    case JSON_ARRAY: {
        if (depth >= JSONW_MAX_DEPTH)
            return KERR_INVAL;
        sbuf_putc(b, '[');
        size_t n = json_array_size(v);
        for (size_t i = 0; i < n; i++) {
            if (i)
                sbuf_putc(b, ',');
            int rc = put_value(b, json_array_get(v, i), depth + 1);
            if (rc)
                return rc;
        }
        sbuf_putc(b, ']');
        break;
    }
    case JSON_OBJECT: {
        if (depth >= JSONW_MAX_DEPTH)
            return KERR_INVAL;
        sbuf_putc(b, '{');
        bool first = true;
        /* jansson iterates objects in insertion order, as it dumps them */
        for (void *it = json_object_iter((json_t *)v); it;
             it = json_object_iter_next((json_t *)v, it)) {
            if (!first)
                sbuf_putc(b, ',');
            first = false;
            jsonw_string(b, json_object_iter_key(it), json_object_iter_key_len(it));
            sbuf_putc(b, ':');
            int rc = put_value(b, json_object_iter_value(it), depth + 1);
            if (rc)
                return rc;
        }
        sbuf_putc(b, '}');
        break;
    }
    }
    return b->oom ? KERR_NOMEM : 0;
}

int jsonw_append(sbuf *b, const json_t *v)
{
    int rc = put_value(b, v, 0);
    if (rc == 0 && b->oom)
        rc = KERR_NOMEM;
    return rc;
}

char *jsonw_dumps(const json_t *v, size_t *len)
{
    sbuf b = {0};
    if (jsonw_append(&b, v) != 0) {
        free(b.p);
        return NULL;
    }
    return sbuf_finish(&b, len);
}
