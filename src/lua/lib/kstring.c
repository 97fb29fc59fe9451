/* kumo.string's pure core (see kstring.h). The PSL rules are read once
 * into a sorted array and searched by binary search; a process that never
 * asks for them never reads the file. Any thread. */
#include "lua/lib/kstring.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

size_t kstr_charlen(const char *s, size_t n)
{
    unsigned char c = (unsigned char)s[0];
    size_t len = c < 0x80 ? 1 : c >= 0xF0 && c <= 0xF4 ? 4 : c >= 0xE0 ? 3 : c >= 0xC2 ? 2 : 1;
    if (len > n)
        return 1;
    for (size_t i = 1; i < len; i++)
        if (((unsigned char)s[i] & 0xC0) != 0x80)
            return 1;
    return len;
}

static bool is_space_cp(uint32_t cp)
{
    return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
           cp == 0x205F || cp == 0x3000;
}

static uint32_t decode(const char *s, size_t len)
{
    const unsigned char *u = (const unsigned char *)s;
    if (len == 1)
        return u[0];
    uint32_t cp = u[0] & (0x7F >> len);
    for (size_t i = 1; i < len; i++)
        cp = (cp << 6) | (u[i] & 0x3F);
    return cp;
}

size_t kstr_space_at(const char *s, size_t n)
{
    if (n == 0)
        return 0;
    size_t len = kstr_charlen(s, n);
    if (len == 1 && (unsigned char)s[0] >= 0x80)
        return 0; /* an invalid byte is no space */
    return is_space_cp(decode(s, len)) ? len : 0;
}

size_t kstr_space_before(const char *s, size_t n)
{
    /* every White_Space character is at most 3 bytes long */
    for (size_t len = 1; len <= 3 && len <= n; len++) {
        if (kstr_charlen(s + n - len, len) == len && kstr_space_at(s + n - len, len) == len)
            return len;
    }
    return 0;
}

void kstr_trim(const char *s, size_t n, bool front, bool back, size_t *start, size_t *len)
{
    size_t a = 0, b = n, k;
    if (front)
        while (a < b && (k = kstr_space_at(s + a, b - a)) > 0)
            a += k;
    if (back)
        while (b > a && (k = kstr_space_before(s + a, b - a)) > 0)
            b -= k;
    *start = a;
    *len = b - a;
}

long kstr_find(const char *s, size_t n, size_t from, const char *pat, size_t plen)
{
    if (from > n)
        return -1;
    if (plen == 0)
        return (long)from;
    if (plen > n - from)
        return -1;
    const char *p = memmem(s + from, n - from, pat, plen);
    return p ? (long)(p - s) : -1;
}

long kstr_rfind(const char *s, size_t to, const char *pat, size_t plen)
{
    if (plen == 0)
        return (long)to;
    if (plen > to)
        return -1;
    for (size_t i = to - plen + 1; i-- > 0;)
        if (memcmp(s + i, pat, plen) == 0)
            return (long)i;
    return -1;
}

/* ---- wrap --------------------------------------------------------------- */

struct out {
    char *p;
    size_t n, cap;
    bool oom;
};

static void put(struct out *o, const char *s, size_t n)
{
    if (o->oom || n == 0)
        return;
    if (o->n + n + 1 > o->cap) {
        size_t cap = (o->n + n + 1) * 2;
        char *p = realloc(o->p, cap);
        if (!p) {
            o->oom = true;
            return;
        }
        o->p = p;
        o->cap = cap;
    }
    memcpy(o->p + o->n, s, n);
    o->n += n;
    o->p[o->n] = 0;
}

static bool ascii_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\f' || c == '\r';
}

/* Emits a finished line: continuation lines start with a tab. */
static void flush_line(struct out *res, struct out *line, bool crlf)
{
    if (res->n > 0)
        put(res, "\t", 1);
    put(res, line->p, line->n);
    if (crlf)
        put(res, "\r\n", 2);
    line->n = 0;
}

char *kstr_wrap(const char *text, size_t n, size_t soft, size_t hard, size_t *outlen)
{
    struct out res = {0}, line = {0};
    if (hard == 0)
        hard = 1;
    size_t i = 0;
    while (i < n) {
        while (i < n && ascii_space(text[i]))
            i++;
        size_t w0 = i;
        while (i < n && !ascii_space(text[i]))
            i++;
        size_t wl = i - w0;
        if (wl == 0)
            break;
        if (line.n + wl < soft) {
            if (line.n)
                put(&line, " ", 1);
            put(&line, text + w0, wl);
            continue;
        }
        if (line.n)
            flush_line(&res, &line, true);
        if (wl <= hard) {
            put(&line, text + w0, wl);
        } else {
            for (size_t k = 0; k < wl; k++) {
                put(&line, text + w0 + k, 1);
                if (line.n >= hard)
                    flush_line(&res, &line, true);
            }
        }
    }
    if (line.n)
        flush_line(&res, &line, false);
    /* trailing whitespace (a hard cut at the very end leaves a CRLF) */
    while (res.n > 0 && ascii_space(res.p[res.n - 1]))
        res.n--;
    bool oom = res.oom || line.oom;
    free(line.p);
    if (oom) {
        free(res.p);
        return NULL;
    }
    if (!res.p) {
        res.p = malloc(1);
        if (!res.p)
            return NULL;
    }
    res.p[res.n] = 0;
    *outlen = res.n;
    return res.p;
}

/* ---- Public Suffix List -------------------------------------------------- */

#define PSL_PATH "/usr/share/publicsuffix/public_suffix_list.dat"

static pthread_once_t psl_once = PTHREAD_ONCE_INIT;
static char **psl_rules; /* sorted; "!x" exceptions and "*.x" wildcards as written */
static size_t psl_n;
static bool psl_ok;

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void psl_load(void)
{
    FILE *f = fopen(PSL_PATH, "r");
    if (!f)
        return;
    char line[512];
    size_t cap = 0;
    while (fgets(line, sizeof(line), f)) {
        /* a rule is the first whitespace-free run of a line */
        size_t l = strcspn(line, " \t\r\n");
        if (l == 0 || (line[0] == '/' && line[1] == '/'))
            continue;
        line[l] = 0;
        if (psl_n == cap) {
            cap = cap ? cap * 2 : 8192;
            char **r = realloc(psl_rules, cap * sizeof(*r));
            if (!r)
                break;
            psl_rules = r;
        }
        if (!(psl_rules[psl_n] = strdup(line)))
            break;
        psl_n++;
    }
    fclose(f);
    qsort(psl_rules, psl_n, sizeof(*psl_rules), cmp_str);
    psl_ok = psl_n > 0;
}

static bool has_rule(const char *prefix, const char *s, size_t n)
{
    char key[300];
    if (n + strlen(prefix) >= sizeof(key))
        return false;
    snprintf(key, sizeof(key), "%s%.*s", prefix, (int)n, s);
    const char *k = key;
    return bsearch(&k, psl_rules, psl_n, sizeof(*psl_rules), cmp_str) != NULL;
}

const char *kstr_psl_path(void)
{
    return PSL_PATH;
}

/* Offset of the public suffix in the normalised name d (len n), or -1. */
static long suffix_of(const char *d, size_t n)
{
    if (n == 0 || d[0] == '.' || d[n - 1] == '.')
        return -1;
    /* label starts, from the right: the rule covering the most labels wins;
     * an exception rule wins over all and covers one label less */
    long best = -1; /* offset where the suffix starts */
    size_t off = n;
    long prev = -1; /* start of the label to the right of the current one */
    for (;;) {
        size_t start = off;
        while (start > 0 && d[start - 1] != '.')
            start--;
        const char *lab = d + start;
        size_t sl = n - start;
        if (has_rule("!", lab, sl))
            return prev; /* the exception's parent is the suffix */
        if (has_rule("", lab, sl))
            best = (long)start;
        if (prev >= 0 && has_rule("*.", d + prev, n - (size_t)prev))
            best = (long)start; /* *.parent covers this label */
        if (start == 0)
            break;
        prev = (long)start;
        off = start - 1;
    }
    if (best < 0) {
        /* the default rule "*": the last label */
        size_t start = n;
        while (start > 0 && d[start - 1] != '.')
            start--;
        best = (long)start;
    }
    return best;
}

static size_t normalise(const char *s, size_t n, char *buf, size_t buflen)
{
    if (n > 0 && s[n - 1] == '.')
        n--;
    if (n >= buflen)
        n = buflen - 1;
    for (size_t i = 0; i < n; i++)
        buf[i] = (s[i] >= 'A' && s[i] <= 'Z') ? (char)(s[i] + 32) : s[i];
    buf[n] = 0;
    return n;
}

long kstr_psl_suffix(const char *domain, size_t n, char *buf, size_t buflen)
{
    pthread_once(&psl_once, psl_load);
    if (!psl_ok)
        return -2;
    size_t len = normalise(domain, n, buf, buflen);
    if (memchr(buf, 0, len))
        return -1;
    return suffix_of(buf, len);
}

long kstr_psl_domain(const char *domain, size_t n, char *buf, size_t buflen)
{
    long s = kstr_psl_suffix(domain, n, buf, buflen);
    if (s <= 0)
        return s == -2 ? -2 : -1;
    /* one more label to the left of the suffix */
    size_t start = (size_t)s - 1; /* the dot */
    if (start == 0)
        return -1;
    while (start > 0 && buf[start - 1] != '.')
        start--;
    return (long)start;
}
