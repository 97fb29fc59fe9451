/* Rust-regex syntax on PCRE2 (see rx.h): a single pass over the pattern
 * that copies it, rewriting the few escapes with another PCRE2 spelling and
 * refusing the constructs whose meaning differs. The pass tracks whether it
 * is inside a character class and skips escaped characters; it does not
 * parse (?x) comments, so a refused construct inside such a comment is
 * refused too (harmless: rewrite the comment). Pure; any thread. */
#include "lua/lib/rx.h"

#include <ctype.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RX_MATCH_LIMIT 20000000u /* backtracking steps per match */
#define RX_DEPTH_LIMIT 100000u
#define RX_HEAP_LIMIT (64u << 10) /* KiB of backtracking memory */

struct ob {
    char *p;
    size_t n, cap;
    bool oom;
};

static void ob_put(struct ob *o, const char *s, size_t n)
{
    if (o->oom)
        return;
    if (o->n + n + 1 > o->cap) {
        size_t cap = (o->n + n + 1) * 2 + 16;
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

static bool refuse(char *err, size_t errlen, size_t at, const char *what)
{
    snprintf(err, errlen, "unsupported at offset %zu: %s", at, what);
    return false;
}

/* Handles the escape at p[i] == '\\'; appends its translation and
 * advances *i past it. in_class: inside [...]. */
static bool escape(const char *p, size_t n, size_t *i, bool in_class, enum rx_mode mode,
                   struct ob *o, char *err, size_t errlen)
{
    size_t at = *i;
    if (at + 1 >= n)
        return refuse(err, errlen, at, "a pattern may not end with a backslash");
    char c = p[at + 1];
    switch (c) {
    case 'h':
    case 'H':
    case 'V':
    case 'R':
    case 'X':
    case 'N':
    case 'C':
    case 'K':
    case 'G':
    case 'Q':
    case 'E':
    case 'e':
    case 'c':
    case 'g':
    case 'o':
    case 'Z':
    case 'F':
    case 'L':
    case 'l':
    case 'j':
    case 'J':
    case 'y':
    case 'Y':
    case 'O':
    case 'i':
    case 'I':
    case 'm':
    case 'M':
    case 'q':
    case 'T':
        snprintf(err, errlen,
                 "unsupported at offset %zu: \\%c (not Rust regex syntax, or another meaning "
                 "in PCRE2)",
                 at, c);
        return false;
    case '<':
    case '>':
        return refuse(err, errlen, at, "\\< and \\> word boundaries");
    case '0':
        return refuse(err, errlen, at, "\\0 (octal escapes)");
    case 'v':
        ob_put(o, "\\x0B", 4);
        *i = at + 2;
        return true;
    case 'b':
        if (!in_class && at + 2 < n && p[at + 2] == '{')
            return refuse(err, errlen, at, "\\b{...} word boundary assertions");
        break;
    case 'k':
        if (mode == RX_PLAIN)
            return refuse(err, errlen, at, "backreferences (\\k<name>)");
        break;
    case 'u':
    case 'U': {
        /* \uXXXX, \u{X...}, \UXXXXXXXX -> \x{...} */
        size_t j = at + 2;
        char hex[16];
        size_t hn = 0;
        if (j < n && p[j] == '{') {
            j++;
            while (j < n && p[j] != '}' && hn < 8 && isxdigit((unsigned char)p[j]))
                hex[hn++] = p[j++];
            if (j >= n || p[j] != '}' || hn == 0)
                return refuse(err, errlen, at, "malformed \\u{...} escape");
            j++;
        } else {
            size_t want = c == 'u' ? 4 : 8;
            while (j < n && hn < want && isxdigit((unsigned char)p[j]))
                hex[hn++] = p[j++];
            if (hn != want)
                return refuse(err, errlen, at, "malformed \\u / \\U escape");
        }
        ob_put(o, "\\x{", 3);
        ob_put(o, hex, hn);
        ob_put(o, "}", 1);
        *i = j;
        return true;
    }
    default:
        if (c >= '1' && c <= '9') {
            if (in_class)
                return refuse(err, errlen, at, "octal escapes in a class");
            if (mode == RX_PLAIN)
                return refuse(err, errlen, at, "backreferences");
            if (at + 2 < n && isdigit((unsigned char)p[at + 2]))
                return refuse(err, errlen, at,
                              "multi-digit backreferences (PCRE2 may read them as octal)");
        }
        break;
    }
    /* copy the escape whole, including a multi-byte escaped character */
    size_t len = 2;
    if ((unsigned char)c >= 0x80) {
        while (at + len < n && ((unsigned char)p[at + len] & 0xC0) == 0x80)
            len++;
    }
    ob_put(o, p + at, len);
    *i = at + len;
    return true;
}

/* The group opener at p[i] == '(' . */
static bool group(const char *p, size_t n, size_t *i, enum rx_mode mode, struct ob *o, char *err,
                  size_t errlen)
{
    size_t at = *i;
    if (at + 1 < n && p[at + 1] == '*')
        return refuse(err, errlen, at, "(* verbs and options");
    if (at + 1 >= n || p[at + 1] != '?') {
        ob_put(o, "(", 1);
        *i = at + 1;
        return true;
    }
    const char *q = p + at + 2;
    size_t left = n - at - 2;
    if (left == 0)
        return refuse(err, errlen, at, "incomplete group");
    char c = q[0];
    bool fancy = false;
    const char *what = NULL;
    switch (c) {
    case ':':
        break;
    case '#':
        return refuse(err, errlen, at, "(?# comments)");
    case '|':
        return refuse(err, errlen, at, "(?| branch reset groups)");
    case 'R':
    case '&':
    case '+':
        return refuse(err, errlen, at, "recursion");
    case 'C':
        return refuse(err, errlen, at, "callouts");
    case '\'':
        return refuse(err, errlen, at, "(?'name') groups: write (?<name>...)");
    case '=':
    case '!':
        fancy = true, what = "look-ahead";
        break;
    case '>':
        fancy = true, what = "atomic groups";
        break;
    case '(':
        fancy = true, what = "conditionals";
        break;
    case '<':
        if (left > 1 && (q[1] == '=' || q[1] == '!'))
            fancy = true, what = "look-behind";
        break; /* else a named group */
    case 'P':
        if (left > 1 && q[1] == '>')
            return refuse(err, errlen, at, "recursion");
        if (left > 1 && q[1] == '=')
            fancy = true, what = "backreferences";
        break;
    default:
        if (isdigit((unsigned char)c) || (c == '-' && left > 1 && isdigit((unsigned char)q[1])))
            return refuse(err, errlen, at, "recursion");
        /* flags: (?imsxU-imsxU) or (?flags:...) */
        for (size_t k = 0; k < left && q[k] != ')' && q[k] != ':'; k++) {
            if (!strchr("imsxU-", q[k])) {
                snprintf(err, errlen,
                         "unsupported at offset %zu: inline flag '%c' (supported: i m s x U)",
                         at + 2 + k, q[k]);
                return false;
            }
            if (q[k] == 'x' && k + 1 < left && q[k + 1] == 'x')
                return refuse(err, errlen, at + 2 + k, "inline flag 'xx'");
        }
        break;
    }
    if (fancy && mode == RX_PLAIN) {
        snprintf(err, errlen,
                 "unsupported at offset %zu: %s (kumo.regex_set_map uses plain regex syntax)", at,
                 what);
        return false;
    }
    ob_put(o, "(?", 2);
    *i = at + 2;
    return true;
}

char *rx_translate(const char *p, size_t n, enum rx_mode mode, size_t *outlen, char *err,
                   size_t errlen)
{
    struct ob o = {0};
    bool in_class = false;
    size_t class_start = 0;
    bool ok = true;
    ob_put(&o, "", 0);
    for (size_t i = 0; ok && i < n;) {
        char c = p[i];
        if (c == '\\') {
            ok = escape(p, n, &i, in_class, mode, &o, err, errlen);
            continue;
        }
        if (in_class) {
            if (c == ']' && i > class_start) {
                in_class = false;
            } else if (c == '[') {
                if (i + 1 < n && p[i + 1] == ':') {
                    const char *end = memmem(p + i, n - i, ":]", 2);
                    if (end) {
                        size_t l = (size_t)(end - (p + i)) + 2;
                        ob_put(&o, p + i, l);
                        i += l;
                        continue;
                    }
                }
                ok = refuse(err, errlen, i, "nested character classes");
                continue;
            } else if (i + 1 < n && (c == '&' || c == '-' || c == '~') && p[i + 1] == c &&
                       (c != '-' || i > class_start)) {
                ok = refuse(err, errlen, i, "class set operations (&&, --, ~~)");
                continue;
            }
            ob_put(&o, p + i, 1);
            i++;
            continue;
        }
        switch (c) {
        case '[':
            in_class = true;
            ob_put(&o, "[", 1);
            i++;
            if (i < n && p[i] == '^') {
                ob_put(&o, "^", 1);
                i++;
            }
            /* a ']' right here is a literal in both syntaxes */
            class_start = i;
            continue;
        case '(':
            ok = group(p, n, &i, mode, &o, err, errlen);
            continue;
        case '{':
            if (i + 1 < n && p[i + 1] == ',') {
                ok = refuse(err, errlen, i, "{,n} (write {0,n})");
                continue;
            }
            break;
        case '*':
        case '+':
        case '?':
        case '}':
            if (mode == RX_PLAIN && i + 1 < n && p[i + 1] == '+' && i > 0) {
                ok = refuse(err, errlen, i, "possessive quantifiers");
                continue;
            }
            break;
        default:
            break;
        }
        ob_put(&o, p + i, 1);
        i++;
    }
    if (ok && o.oom) {
        snprintf(err, errlen, "out of memory");
        ok = false;
    }
    if (!ok) {
        free(o.p);
        return NULL;
    }
    *outlen = o.n;
    return o.p;
}

pcre2_code *rx_compile_pcre2(const char *t, size_t tl, uint32_t extra, int *ecp, char *err,
                             size_t errlen)
{
    int ec = PCRE2_ERROR_NOMEMORY;
    pcre2_compile_context *cc = pcre2_compile_context_create(NULL);
    if (!cc) {
        if (ecp)
            *ecp = ec;
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    pcre2_set_newline(cc, PCRE2_NEWLINE_LF);
    PCRE2_SIZE eo = 0;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)t, tl,
                                   PCRE2_UTF | PCRE2_UCP | PCRE2_DOLLAR_ENDONLY |
                                       PCRE2_MATCH_INVALID_UTF | PCRE2_NEVER_BACKSLASH_C | extra,
                                   &ec, &eo, cc);
    pcre2_compile_context_free(cc);
    if (ecp)
        *ecp = re ? 0 : ec;
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(ec, msg, sizeof(msg));
        snprintf(err, errlen, "%s at offset %zu", (const char *)msg, (size_t)eo);
        return NULL;
    }
    (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* the interpreter is the fallback */
    return re;
}

pcre2_code *rx_compile(const char *pat, size_t len, enum rx_mode mode, char *err, size_t errlen)
{
    size_t tl;
    char *t = rx_translate(pat, len, mode, &tl, err, errlen);
    if (!t)
        return NULL;
    pcre2_code *re = rx_compile_pcre2(t, tl, 0, NULL, err, errlen);
    free(t);
    return re;
}

/* One match context for the process: pcre2_match only reads it. */
static pcre2_match_context *rx_mc;
static pthread_once_t rx_mc_once = PTHREAD_ONCE_INIT;

static void make_match_ctx(void)
{
    rx_mc = pcre2_match_context_create(NULL);
    if (rx_mc) {
        pcre2_set_match_limit(rx_mc, RX_MATCH_LIMIT);
        pcre2_set_depth_limit(rx_mc, RX_DEPTH_LIMIT);
        pcre2_set_heap_limit(rx_mc, RX_HEAP_LIMIT);
    }
}

static pcre2_match_context *match_ctx(void)
{
    pthread_once(&rx_mc_once, make_match_ctx);
    return rx_mc;
}

int rx_exec(const pcre2_code *re, const char *s, size_t n, size_t start, uint32_t opts,
            pcre2_match_data *md)
{
    int rc = pcre2_match(re, (PCRE2_SPTR)s, n, start, opts, md, match_ctx());
    if (rc == PCRE2_ERROR_MATCHLIMIT || rc == PCRE2_ERROR_DEPTHLIMIT ||
        rc == PCRE2_ERROR_HEAPLIMIT || rc == PCRE2_ERROR_JIT_STACKLIMIT)
        return RX_ELIMIT;
    return rc;
}

char *rx_escape(const char *s, size_t n, size_t *outlen)
{
    char *out = malloc(n * 2 + 1);
    if (!out)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] && strchr("\\.+*?()|[]{}^$#&-~", s[i]))
            out[o++] = '\\';
        out[o++] = s[i];
    }
    out[o] = 0;
    *outlen = o;
    return out;
}

static int put(char **out, size_t *len, size_t *cap, const char *s, size_t n)
{
    if (*len + n + 1 > *cap) {
        size_t c = (*len + n + 1) * 2;
        char *p = realloc(*out, c);
        if (!p)
            return -1;
        *out = p;
        *cap = c;
    }
    memcpy(*out + *len, s, n);
    *len += n;
    return 0;
}

static bool name_char(char c)
{
    return isalnum((unsigned char)c) || c == '_';
}

int rx_expand(const pcre2_code *re, const char *subj, const size_t *ov, int npairs, const char *rep,
              size_t rlen, char **out, size_t *outlen, size_t *cap)
{
    for (size_t i = 0; i < rlen;) {
        if (rep[i] != '$') {
            size_t j = i;
            while (j < rlen && rep[j] != '$')
                j++;
            if (put(out, outlen, cap, rep + i, j - i))
                return -1;
            i = j;
            continue;
        }
        if (i + 1 < rlen && rep[i + 1] == '$') {
            if (put(out, outlen, cap, "$", 1))
                return -1;
            i += 2;
            continue;
        }
        size_t ns, ne, next;
        if (i + 1 < rlen && rep[i + 1] == '{') {
            const char *close = memchr(rep + i + 2, '}', rlen - i - 2);
            if (!close) {
                if (put(out, outlen, cap, "$", 1))
                    return -1;
                i++;
                continue;
            }
            ns = i + 2;
            ne = (size_t)(close - rep);
            next = ne + 1;
        } else {
            ns = i + 1;
            ne = ns;
            while (ne < rlen && name_char(rep[ne]))
                ne++;
            next = ne;
        }
        if (ne == ns) {
            /* "$" not followed by a name: a literal dollar */
            if (put(out, outlen, cap, "$", 1))
                return -1;
            i++;
            continue;
        }
        char name[128];
        size_t nl = ne - ns < sizeof(name) - 1 ? ne - ns : sizeof(name) - 1;
        memcpy(name, rep + ns, nl);
        name[nl] = 0;
        long idx = -1;
        char *end;
        long v = strtol(name, &end, 10);
        if (*end == 0 && isdigit((unsigned char)name[0]))
            idx = v;
        else {
            int g = pcre2_substring_number_from_name(re, (PCRE2_SPTR)name);
            if (g > 0)
                idx = g;
        }
        if (idx >= 0 && idx < npairs && ov[2 * idx] != PCRE2_UNSET) {
            if (put(out, outlen, cap, subj + ov[2 * idx], ov[2 * idx + 1] - ov[2 * idx]))
                return -1;
        }
        i = next;
    }
    return 0;
}
