/* A single-pass reader of the spool meta document that pulls out only what
 * start-up enumeration needs to queue a message (its queue name and whether
 * it carries scheduling), without building a jansson tree or a message.
 *
 * It accepts a deliberately narrow subset: plain ASCII, the usual escapes,
 * \uXXXX for ASCII other than NUL. Anything else (UTF-8, surrogates, NUL,
 * odd structure) answers KERR_AGAIN and the caller takes the full jansson
 * path, so every document the fast path accepts reads the same both ways. */
#include "msg/meta_scan.h"

#include <stdlib.h>
#include <string.h>

#include "core/hex.h"
#include "core/kerr.h"
#include "msg/queue_name.h"

typedef struct scan {
    const char *p, *end;
    int depth;
} scan;

#define MAX_DEPTH 64

static void ws(scan *s)
{
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
        s->p++;
}

/* At the opening quote. With out != NULL the decoded text is returned
 * malloc'd (replacing *out). */
static int str(scan *s, char **out)
{
    if (s->p >= s->end || *s->p != '"')
        return KERR_AGAIN;
    s->p++;
    const char *start = s->p;
    bool escaped = false;
    for (;;) {
        if (s->p >= s->end)
            return KERR_AGAIN;
        unsigned char c = (unsigned char)*s->p;
        if (c == '"')
            break;
        if (c < 0x20 || c >= 0x80)
            return KERR_AGAIN;
        if (c == '\\') {
            escaped = true;
            if (s->end - s->p < 2)
                return KERR_AGAIN;
            s->p += (s->p[1] == 'u') ? 6 : 2;
            continue;
        }
        s->p++;
    }
    const char *stop = s->p;
    s->p++; /* closing quote */
    if (!escaped && !out)
        return 0;
    size_t n = (size_t)(stop - start);
    char *buf = out ? malloc(n + 1) : NULL;
    if (out && !buf)
        return KERR_NOMEM;
    size_t o = 0;
    for (const char *q = start; q < stop;) {
        char c = *q++;
        if (c != '\\') {
            if (buf)
                buf[o++] = c;
            continue;
        }
        char e = *q++;
        switch (e) {
        case '"': c = '"'; break;
        case '\\': c = '\\'; break;
        case '/': c = '/'; break;
        case 'b': c = '\b'; break;
        case 'f': c = '\f'; break;
        case 'n': c = '\n'; break;
        case 'r': c = '\r'; break;
        case 't': c = '\t'; break;
        case 'u': {
            int v = 0;
            for (int i = 0; i < 4; i++) {
                int h = q + i < stop ? hex_digit_value(q[i]) : -1;
                if (h < 0) {
                    free(buf);
                    return KERR_AGAIN;
                }
                v = v * 16 + h;
            }
            q += 4;
            if (v == 0 || v >= 0x80) {
                free(buf);
                return KERR_AGAIN;
            }
            c = (char)v;
            break;
        }
        default:
            free(buf);
            return KERR_AGAIN;
        }
        if (buf)
            buf[o++] = c;
    }
    if (buf) {
        buf[o] = 0;
        free(*out);
        *out = buf;
    }
    return 0;
}

static int value(scan *s);

static bool digit_at(const scan *s)
{
    return s->p < s->end && *s->p >= '0' && *s->p <= '9';
}

static int digits(scan *s)
{
    if (!digit_at(s))
        return KERR_AGAIN;
    while (digit_at(s))
        s->p++;
    return 0;
}

/* -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)? */
static int number(scan *s)
{
    if (s->p < s->end && *s->p == '-')
        s->p++;
    if (s->p < s->end && *s->p == '0')
        s->p++;
    else if (digits(s))
        return KERR_AGAIN;
    if (s->p < s->end && *s->p == '.') {
        s->p++;
        if (digits(s))
            return KERR_AGAIN;
    }
    if (s->p < s->end && (*s->p == 'e' || *s->p == 'E')) {
        s->p++;
        if (s->p < s->end && (*s->p == '+' || *s->p == '-'))
            s->p++;
        if (digits(s))
            return KERR_AGAIN;
    }
    return 0;
}

static int literal(scan *s, const char *word)
{
    size_t n = strlen(word);
    if ((size_t)(s->end - s->p) < n || memcmp(s->p, word, n) != 0)
        return KERR_AGAIN;
    s->p += n;
    return 0;
}

/* Calls each(key) positioned at the value; each must consume the value. */
typedef int (*member_fn)(scan *s, const char *key, size_t klen, void *ud);

static int object(scan *s, member_fn each, void *ud)
{
    if (s->p >= s->end || *s->p != '{' || ++s->depth > MAX_DEPTH)
        return KERR_AGAIN;
    s->p++;
    ws(s);
    if (s->p < s->end && *s->p == '}') {
        s->p++;
        s->depth--;
        return 0;
    }
    for (;;) {
        ws(s);
        const char *k = s->p + 1;
        int rc = str(s, NULL);
        if (rc)
            return rc;
        size_t klen = (size_t)(s->p - 1 - k);
        if (memchr(k, '\\', klen))
            return KERR_AGAIN; /* an escaped key: leave it to jansson */
        ws(s);
        if (s->p >= s->end || *s->p != ':')
            return KERR_AGAIN;
        s->p++;
        ws(s);
        rc = each ? each(s, k, klen, ud) : value(s);
        if (rc)
            return rc;
        ws(s);
        if (s->p < s->end && *s->p == ',') {
            s->p++;
            continue;
        }
        if (s->p < s->end && *s->p == '}') {
            s->p++;
            s->depth--;
            return 0;
        }
        return KERR_AGAIN;
    }
}

/* Calls each(index) positioned at the element; NULL skips. */
typedef int (*elem_fn)(scan *s, size_t i, void *ud);

static int array(scan *s, elem_fn each, void *ud)
{
    if (s->p >= s->end || *s->p != '[' || ++s->depth > MAX_DEPTH)
        return KERR_AGAIN;
    s->p++;
    ws(s);
    if (s->p < s->end && *s->p == ']') {
        s->p++;
        s->depth--;
        return 0;
    }
    for (size_t i = 0;; i++) {
        ws(s);
        int rc = each ? each(s, i, ud) : value(s);
        if (rc)
            return rc;
        ws(s);
        if (s->p < s->end && *s->p == ',') {
            s->p++;
            continue;
        }
        if (s->p < s->end && *s->p == ']') {
            s->p++;
            s->depth--;
            return 0;
        }
        return KERR_AGAIN;
    }
}

static int value(scan *s)
{
    if (s->p >= s->end)
        return KERR_AGAIN;
    switch (*s->p) {
    case '"': return str(s, NULL);
    case '{': return object(s, NULL, NULL);
    case '[': return array(s, NULL, NULL);
    case 't': return literal(s, "true");
    case 'f': return literal(s, "false");
    case 'n': return literal(s, "null");
    default: return number(s);
    }
}

typedef struct found {
    char *recipient; /* the first */
    char *queue, *campaign, *tenant, *routing_domain;
    bool sender, recipients_ok, meta_ok, schedule;
    int n_rcpts;
} found;

static bool key_is(const char *k, size_t klen, const char *want)
{
    return strlen(want) == klen && memcmp(k, want, klen) == 0;
}

/* A meta value: taken when it is a string, else skipped (queue naming
 * ignores non-string values). */
static int meta_field(scan *s, char **slot)
{
    if (s->p < s->end && *s->p == '"')
        return str(s, slot);
    free(*slot);
    *slot = NULL;
    return value(s);
}

static int meta_member(scan *s, const char *k, size_t klen, void *ud)
{
    found *f = ud;
    if (key_is(k, klen, "queue"))
        return meta_field(s, &f->queue);
    if (key_is(k, klen, "campaign"))
        return meta_field(s, &f->campaign);
    if (key_is(k, klen, "tenant"))
        return meta_field(s, &f->tenant);
    if (key_is(k, klen, "routing_domain"))
        return meta_field(s, &f->routing_domain);
    return value(s);
}

static int rcpt_elem(scan *s, size_t i, void *ud)
{
    found *f = ud;
    if (s->p >= s->end || *s->p != '"')
        return KERR_AGAIN; /* not a string: the full path decides */
    f->n_rcpts++;
    return str(s, i == 0 ? &f->recipient : NULL);
}

static int top_member(scan *s, const char *k, size_t klen, void *ud)
{
    found *f = ud;
    if (key_is(k, klen, "sender")) {
        if (s->p >= s->end || *s->p != '"')
            return KERR_AGAIN;
        f->sender = true;
        return str(s, NULL);
    }
    if (key_is(k, klen, "recipient")) {
        free(f->recipient);
        f->recipient = NULL;
        f->n_rcpts = 0;
        f->recipients_ok = true;
        if (s->p < s->end && *s->p == '"') {
            f->n_rcpts = 1;
            return str(s, &f->recipient);
        }
        if (s->p < s->end && *s->p == '[')
            return array(s, rcpt_elem, f);
        return KERR_AGAIN;
    }
    if (key_is(k, klen, "meta")) {
        if (s->p >= s->end || *s->p != '{')
            return KERR_AGAIN;
        free(f->queue);
        free(f->campaign);
        free(f->tenant);
        free(f->routing_domain);
        f->queue = f->campaign = f->tenant = f->routing_domain = NULL;
        f->meta_ok = true;
        return object(s, meta_member, f);
    }
    if (key_is(k, klen, "schedule")) {
        f->schedule = s->p < s->end && *s->p == '{';
        return value(s);
    }
    return value(s);
}

static char *nonempty(char *s)
{
    return s && *s ? s : NULL;
}

int meta_scan_queue(const char *buf, size_t len, char **queue_out, bool *has_schedule)
{
    scan s = {buf, buf + len, 0};
    found f = {0};
    *queue_out = NULL;
    ws(&s);
    int rc = object(&s, top_member, &f);
    ws(&s);
    if (rc == 0 && s.p != s.end)
        rc = KERR_AGAIN;
    if (rc == 0 && (!f.sender || !f.recipients_ok))
        rc = KERR_AGAIN;
    if (rc == 0) {
        *has_schedule = f.schedule;
        if (nonempty(f.queue)) {
            *queue_out = f.queue;
            f.queue = NULL;
        } else {
            const char *rcpt = f.n_rcpts ? f.recipient : "";
            const char *at = rcpt ? strrchr(rcpt, '@') : NULL;
            *queue_out = queue_name_build(nonempty(f.campaign), nonempty(f.tenant),
                                          at ? at + 1 : "", nonempty(f.routing_domain));
        }
    }
    free(f.recipient);
    free(f.queue);
    free(f.campaign);
    free(f.tenant);
    free(f.routing_domain);
    return rc;
}
