/* SPF check_host() (see spf.h). Owns nothing beyond one call: the parsed
 * record of each level of include/redirect is on the heap for the length
 * of that level, answers are borrowed from the caller's lookup function.
 *
 * Every exit is a result with a reason, in KumoMTA's words where it has
 * them ("matched 'all' directive", "no SPF records found for D", "DNS
 * lookup limits exceeded", "default result"); SPF_PENDING unwinds the
 * whole evaluation so the caller can fetch one more answer and start
 * again. Out of memory is the only failure that is not a result. */
#include "msg/spf.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/kerr.h"

#define MAX_DNS_MECHANISMS 10 /* §4.6.4 */
#define MAX_VOID_LOOKUPS 2    /* §4.6.4 */
#define MAX_NAMES 10          /* MX and PTR names looked at, §4.6.4 */
#define EXPAND_MAX 2048

/* internal outcomes beside enum spf_result (0..6) */
enum { MATCH = 100, NOMATCH, PEND, NOMEM };

const char *spf_result_name(int r)
{
    static const char *const names[] = {"none",     "neutral",   "pass",     "fail",
                                        "softfail", "temperror", "permerror"};
    return r >= 0 && r <= SPF_PERMERROR ? names[r] : "permerror";
}

/* ---- syntax ------------------------------------------------------------------- */

bool spf_is_record(const char *txt, size_t len)
{
    return len >= 6 && strncasecmp(txt, "v=spf1", 6) == 0 && (len == 6 || txt[6] == ' ');
}

static bool is_delim(char c)
{
    return c && strchr(".-+,/_=", c) != NULL;
}

/* Scans the macro-expand at s[0..n) (s[0] == '%'); returns its length or 0. */
static size_t macro_len(const char *s, size_t n, bool explain)
{
    if (n < 2)
        return 0;
    if (s[1] == '%' || s[1] == '_' || s[1] == '-')
        return 2;
    if (s[1] != '{' || n < 4)
        return 0;
    size_t j = 2;
    char l = (char)tolower((unsigned char)s[j]);
    if (!strchr("slodiphv", l) && !(explain && strchr("crt", l)))
        return 0;
    if (!l)
        return 0;
    j++;
    size_t d0 = j;
    while (j < n && isdigit((unsigned char)s[j]))
        j++;
    if (j > d0) {
        /* §7.3: a DIGIT transformer must be nonzero */
        bool nonzero = false;
        for (size_t k = d0; k < j; k++)
            nonzero |= s[k] != '0';
        if (!nonzero || j - d0 > 3)
            return 0;
    }
    if (j < n && (s[j] == 'r' || s[j] == 'R'))
        j++;
    while (j < n && is_delim(s[j]))
        j++;
    if (j >= n || s[j] != '}')
        return 0;
    return j + 1;
}

static bool toplabel_ok(const char *s, size_t n)
{
    /* §12: alphanumerics and inner hyphens, not all digits */
    if (n == 0 || n > 63 || s[0] == '-' || s[n - 1] == '-')
        return false;
    bool alpha = false;
    for (size_t i = 0; i < n; i++) {
        if (isalpha((unsigned char)s[i]))
            alpha = true;
        else if (s[i] == '-')
            alpha = true; /* 1*alphanum "-" ... alphanum */
        else if (!isdigit((unsigned char)s[i]))
            return false;
    }
    return alpha;
}

bool spf_macro_valid(const char *s, size_t n, bool explain, bool domain_spec)
{
    size_t last_macro_end = (size_t)-1;
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        if (c == '%') {
            size_t ml = macro_len(s + i, n - i, explain);
            if (!ml)
                return false;
            i += ml;
            last_macro_end = i;
        } else if ((c >= 0x21 && c <= 0x7e) || (explain && c == ' ')) {
            i++;
        } else {
            return false;
        }
    }
    if (!domain_spec)
        return true;
    if (n == 0)
        return false;
    if (last_macro_end == n)
        return true;
    /* domain-end = "." toplabel ["."] */
    size_t e = n;
    if (s[e - 1] == '.')
        e--;
    size_t b = e;
    while (b > 0 && s[b - 1] != '.')
        b--;
    if (b == 0 || (last_macro_end != (size_t)-1 && last_macro_end > b))
        return false;
    return toplabel_ok(s + b, e - b);
}

static int parse_cidr(const char *s, size_t n, int max)
{
    if (n == 0 || n > 3 || (n > 1 && s[0] == '0'))
        return -1;
    int v = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isdigit((unsigned char)s[i]))
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v <= max ? v : -1;
}

/* Splits a trailing dual-cidr-length ("/24", "//64", "/24//64") off
 * s[0..*n); returns false when what looks like one is malformed. */
static bool split_dual_cidr(const char *s, size_t *n, int *c4, int *c6)
{
    *c4 = *c6 = -1;
    size_t e = *n, i = e;
    while (i > 0 && isdigit((unsigned char)s[i - 1]))
        i--;
    if (i == e || i == 0 || s[i - 1] != '/')
        return true; /* none */
    size_t slash = i - 1;
    if (slash > 0 && s[slash - 1] == '/') {
        if ((*c6 = parse_cidr(s + i, e - i, 128)) < 0)
            return false;
        e = slash - 1;
        i = e;
        while (i > 0 && isdigit((unsigned char)s[i - 1]))
            i--;
        if (i == e || i == 0 || s[i - 1] != '/') {
            *n = e;
            return true;
        }
        slash = i - 1;
    }
    if ((*c4 = parse_cidr(s + i, e - i, 32)) < 0)
        return false;
    *n = slash;
    return true;
}

static bool name_char(char c, bool first)
{
    return isalpha((unsigned char)c) ||
           (!first && (isdigit((unsigned char)c) || c == '-' || c == '_' || c == '.'));
}

static int perr(char *err, size_t errlen, const char *fmt, const char *t, size_t tl)
{
    snprintf(err, errlen, fmt, (int)(tl > 200 ? 200 : tl), t);
    return KERR_PARSE;
}

static int parse_term(const char *t, size_t tl, spf_record *r, char *err, size_t errlen)
{
    spf_term *m = &r->terms[r->n];
    memset(m, 0, sizeof(*m));
    m->text = t;
    m->text_len = tl;
    m->cidr4 = m->cidr6 = -1;
    for (size_t i = 0; i < tl; i++)
        if ((unsigned char)t[i] < 0x21 || (unsigned char)t[i] > 0x7e)
            return perr(err, errlen, "invalid token '%.*s'", t, tl);
    /* modifier: name "=" macro-string */
    size_t k = 0;
    while (k < tl && name_char(t[k], k == 0))
        k++;
    if (k > 0 && k < tl && t[k] == '=') {
        m->spec = t + k + 1;
        m->spec_len = tl - k - 1;
        bool redirect = k == 8 && strncasecmp(t, "redirect", 8) == 0;
        bool exp = k == 3 && strncasecmp(t, "exp", 3) == 0;
        if (redirect || exp) {
            int *slot = redirect ? &r->redirect : &r->exp;
            if (*slot >= 0)
                return perr(err, errlen, "duplicate modifier '%.*s'", t, tl);
            if (!spf_macro_valid(m->spec, m->spec_len, false, true))
                return perr(err, errlen, "invalid domain in '%.*s'", t, tl);
            *slot = (int)r->n;
            m->kind = redirect ? 'R' : 'X';
        } else {
            if (!spf_macro_valid(m->spec, m->spec_len, false, false))
                return perr(err, errlen, "invalid modifier '%.*s'", t, tl);
            m->kind = 'U';
        }
        return 0;
    }
    m->qualifier = '+';
    size_t i = 0;
    if (strchr("+-~?", t[0])) {
        m->qualifier = t[0];
        i = 1;
    }
    size_t ne = i;
    while (ne < tl && t[ne] != ':' && t[ne] != '/')
        ne++;
    const char *nm = t + i;
    size_t nl = ne - i;
    const char *rest = t + ne;
    size_t rl = tl - ne;
#define IS(lit) (nl == sizeof(lit) - 1 && strncasecmp(nm, lit, nl) == 0)
    if (IS("all")) {
        m->kind = 'A';
        if (rl)
            return perr(err, errlen, "invalid mechanism '%.*s'", t, tl);
        return 0;
    }
    if (IS("include") || IS("exists")) {
        m->kind = IS("include") ? 'I' : 'e';
        if (rl < 2 || rest[0] != ':' || !spf_macro_valid(rest + 1, rl - 1, false, true))
            return perr(err, errlen, "invalid mechanism '%.*s'", t, tl);
        m->spec = rest + 1;
        m->spec_len = rl - 1;
        return 0;
    }
    if (IS("a") || IS("mx") || IS("ptr")) {
        m->kind = IS("a") ? 'a' : IS("mx") ? 'm' : 'p';
        size_t sl = rl;
        if (m->kind != 'p' && !split_dual_cidr(rest, &sl, &m->cidr4, &m->cidr6))
            return perr(err, errlen, "invalid dual-cidr-length in '%.*s'", t, tl);
        if (sl > 0) {
            if (rest[0] != ':' || !spf_macro_valid(rest + 1, sl - 1, false, true))
                return perr(err, errlen, "invalid mechanism '%.*s'", t, tl);
            m->spec = rest + 1;
            m->spec_len = sl - 1;
        }
        return 0;
    }
    if (IS("ip4") || IS("ip6")) {
        bool v6 = IS("ip6");
        m->kind = v6 ? '6' : '4';
        if (rl < 2 || rest[0] != ':')
            return perr(err, errlen, "invalid mechanism '%.*s'", t, tl);
        const char *a = rest + 1;
        size_t al = rl - 1;
        const char *slash = memchr(a, '/', al);
        int len = v6 ? 128 : 32;
        if (slash) {
            len = parse_cidr(slash + 1, al - (size_t)(slash + 1 - a), v6 ? 128 : 32);
            if (len < 0)
                return perr(err, errlen, "invalid cidr length in '%.*s'", t, tl);
            al = (size_t)(slash - a);
        }
        char buf[64];
        unsigned char raw[16];
        if (al == 0 || al >= sizeof(buf))
            return perr(err, errlen, "invalid address in '%.*s'", t, tl);
        memcpy(buf, a, al);
        buf[al] = 0;
        if (inet_pton(v6 ? AF_INET6 : AF_INET, buf, raw) != 1)
            return perr(err, errlen, "invalid address in '%.*s'", t, tl);
        m->spec = a;
        m->spec_len = al;
        if (v6)
            m->cidr6 = len;
        else
            m->cidr4 = len;
        return 0;
    }
#undef IS
    return perr(err, errlen, "invalid mechanism '%.*s'", t, tl);
}

int spf_record_parse(const char *txt, size_t len, spf_record *out, char *err, size_t errlen)
{
    out->n = 0;
    out->redirect = out->exp = -1;
    if (!spf_is_record(txt, len)) {
        snprintf(err, errlen, "expected SPF version 1");
        return KERR_PARSE;
    }
    size_t i = 6;
    while (i < len) {
        while (i < len && txt[i] == ' ')
            i++;
        if (i >= len)
            break;
        size_t e = i;
        while (e < len && txt[e] != ' ')
            e++;
        if (out->n == SPF_MAX_TERMS) {
            snprintf(err, errlen, "too many terms (more than %d)", SPF_MAX_TERMS);
            return KERR_PARSE;
        }
        if (parse_term(txt + i, e - i, out, err, errlen) != 0)
            return KERR_PARSE;
        out->n++;
        i = e;
    }
    return 0;
}

/* ---- evaluation ------------------------------------------------------------------ */

typedef struct ectx {
    const spf_params *p;
    spf_lookup_fn fn;
    void *ud;
    spf_outcome *out;
    int family;
    unsigned char ip[16];
    char ip_text[INET6_ADDRSTRLEN];
    char sender[600];
    const char *local, *sdomain;
    size_t local_len;
    unsigned lookups, voids;
    int depth;
} ectx;

static int res(ectx *c, int r, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int res(ectx *c, int r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->out->reason, sizeof(c->out->reason), fmt, ap);
    va_end(ap);
    return r;
}

static int ask(ectx *c, int qtype, const char *name, spf_answer *a)
{
    memset(a, 0, sizeof(*a));
    if (c->fn(c->ud, qtype, name, a) == SPF_PENDING) {
        c->out->need_qtype = qtype;
        snprintf(c->out->need_name, sizeof(c->out->need_name), "%s", name);
        return PEND;
    }
    return 0;
}

static int count_mechanism(ectx *c)
{
    if (++c->lookups > MAX_DNS_MECHANISMS)
        return res(c, SPF_PERMERROR, "DNS lookup limits exceeded");
    return 0;
}

static int count_void(ectx *c, const spf_answer *a)
{
    if ((a->status == SPF_DNS_NXDOMAIN || a->status == SPF_DNS_NODATA || a->n == 0) &&
        a->status != SPF_DNS_FAIL && ++c->voids > MAX_VOID_LOOKUPS)
        return res(c, SPF_PERMERROR, "void lookup limit exceeded");
    return 0;
}

/* Normalizes a name for a query into out[256]: lower case, no trailing
 * dot, §4.8's truncation from the left to 253 bytes; false when it is not
 * a name we can ask about. */
static bool norm_name(const char *s, size_t n, char *out)
{
    if (n > 0 && s[n - 1] == '.')
        n--;
    while (n > 253) {
        const char *dot = memchr(s, '.', n);
        if (!dot)
            return false;
        n -= (size_t)(dot + 1 - s);
        s = dot + 1;
    }
    if (n == 0)
        return false;
    size_t lab = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '.') {
            if (lab == 0)
                return false;
            lab = 0;
        } else if (ch < 0x21 || ch > 0x7e || strchr("\\:[]", ch) || ++lab > 63) {
            return false;
        }
        out[i] = (char)tolower(ch);
    }
    if (lab == 0)
        return false;
    out[n] = 0;
    return true;
}

static bool parse_ip(const char *s, int *family, unsigned char raw[16])
{
    if (inet_pton(AF_INET, s, raw) == 1) {
        *family = AF_INET;
        return true;
    }
    if (inet_pton(AF_INET6, s, raw) != 1)
        return false;
    static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (memcmp(raw, mapped, 12) == 0) {
        memmove(raw, raw + 12, 4);
        *family = AF_INET;
    } else {
        *family = AF_INET6;
    }
    return true;
}

static bool prefix_eq(const unsigned char *a, const unsigned char *b, int bits)
{
    int full = bits / 8, rem = bits % 8;
    if (memcmp(a, b, (size_t)full) != 0)
        return false;
    if (rem == 0)
        return true;
    unsigned char mask = (unsigned char)(0xff << (8 - rem));
    return (a[full] & mask) == (b[full] & mask);
}

/* Whether any address text in a matches the client within the cidr. */
static bool addrs_match(ectx *c, const spf_answer *a, int cidr)
{
    for (size_t i = 0; a->status == SPF_DNS_OK && i < a->n; i++) {
        unsigned char raw[16];
        if (inet_pton(c->family, a->items[i], raw) == 1 &&
            prefix_eq(raw, c->ip, cidr >= 0 ? cidr : c->family == AF_INET ? 32 : 128))
            return true;
    }
    return false;
}

static int validated_name(ectx *c, const char *domain, bool for_ptr, char *out, bool *found);

typedef struct obuf {
    char *b;
    size_t n, cap;
    bool over;
} obuf;

static void oput(obuf *o, const char *s, size_t n)
{
    if (o->n + n >= o->cap) {
        o->over = true;
        return;
    }
    memcpy(o->b + o->n, s, n);
    o->n += n;
    o->b[o->n] = 0;
}

/* Expands the macro-string s[0..n) (already checked) into out. Returns 0,
 * PEND, or SPF_PERMERROR when the result does not fit. */
static int expand(ectx *c, const char *s, size_t n, const char *domain, bool explain, char *out,
                  size_t outlen)
{
    obuf o = {out, 0, outlen, false};
    out[0] = 0;
    for (size_t i = 0; i < n && !o.over;) {
        if (s[i] != '%') {
            oput(&o, s + i, 1);
            i++;
            continue;
        }
        size_t ml = macro_len(s + i, n - i, explain);
        if (!ml)
            return res(c, SPF_PERMERROR, "invalid macro in '%.*s'", (int)(n > 200 ? 200 : n), s);
        if (ml == 2) {
            oput(&o, s[i + 1] == '%' ? "%" : s[i + 1] == '_' ? " " : "%20",
                 s[i + 1] == '-' ? 3 : 1);
            i += 2;
            continue;
        }
        char letter = s[i + 2];
        bool upper = isupper((unsigned char)letter);
        char val[EXPAND_MAX];
        val[0] = 0;
        switch (tolower((unsigned char)letter)) {
        case 's':
            snprintf(val, sizeof(val), "%s", c->sender);
            break;
        case 'l':
            snprintf(val, sizeof(val), "%.*s", (int)c->local_len, c->local);
            break;
        case 'o':
            snprintf(val, sizeof(val), "%s", c->sdomain);
            break;
        case 'd':
            snprintf(val, sizeof(val), "%s", domain);
            break;
        case 'i':
            if (c->family == AF_INET) {
                snprintf(val, sizeof(val), "%u.%u.%u.%u", c->ip[0], c->ip[1], c->ip[2], c->ip[3]);
            } else {
                static const char hx[] = "0123456789abcdef";
                size_t k = 0;
                for (int b = 0; b < 16; b++) {
                    val[k++] = hx[c->ip[b] >> 4];
                    val[k++] = '.';
                    val[k++] = hx[c->ip[b] & 15];
                    val[k++] = '.';
                }
                val[k - 1] = 0;
            }
            break;
        case 'p': {
            bool found = false;
            char name[256];
            int rc = validated_name(c, domain, false, name, &found);
            if (rc != 0)
                return rc;
            snprintf(val, sizeof(val), "%s", found ? name : "unknown");
            break;
        }
        case 'v':
            snprintf(val, sizeof(val), "%s", c->family == AF_INET ? "in-addr" : "ip6");
            break;
        case 'h':
            snprintf(val, sizeof(val), "%s", c->p->helo && *c->p->helo ? c->p->helo : "unknown");
            break;
        case 'c':
            snprintf(val, sizeof(val), "%s", c->ip_text);
            break;
        case 'r':
            snprintf(val, sizeof(val), "%s",
                     c->p->receiver && *c->p->receiver ? c->p->receiver : "unknown");
            break;
        case 't':
            snprintf(val, sizeof(val), "%lld", (long long)c->p->now);
            break;
        }
        /* transformers: digits, 'r', delimiters */
        size_t j = i + 3, end = i + ml - 1;
        unsigned keep = 0;
        while (j < end && isdigit((unsigned char)s[j]))
            keep = keep * 10 + (unsigned)(s[j++] - '0');
        bool rev = false;
        if (j < end && (s[j] == 'r' || s[j] == 'R')) {
            rev = true;
            j++;
        }
        char delims[8] = ".";
        if (j < end) {
            size_t dl = end - j < sizeof(delims) - 1 ? end - j : sizeof(delims) - 1;
            memcpy(delims, s + j, dl);
            delims[dl] = 0;
        }
        /* split */
        const char *parts[EXPAND_MAX / 2 + 1];
        size_t plen[EXPAND_MAX / 2 + 1], np = 0, vl = strlen(val), st = 0;
        for (size_t k = 0; k <= vl; k++)
            if (k == vl || strchr(delims, val[k])) {
                parts[np] = val + st;
                plen[np++] = k - st;
                st = k + 1;
            }
        if (rev)
            for (size_t a = 0, b = np - 1; a < b; a++, b--) {
                const char *tp = parts[a];
                parts[a] = parts[b];
                parts[b] = tp;
                size_t tl = plen[a];
                plen[a] = plen[b];
                plen[b] = tl;
            }
        size_t first = keep && keep < np ? np - keep : 0;
        for (size_t k = first; k < np; k++) {
            if (k > first)
                oput(&o, ".", 1);
            if (!upper) {
                oput(&o, parts[k], plen[k]);
                continue;
            }
            for (size_t q = 0; q < plen[k]; q++) {
                unsigned char ch = (unsigned char)parts[k][q];
                if (isalnum(ch) || strchr("-._~", ch)) {
                    oput(&o, (const char *)&ch, 1);
                } else {
                    char e[4];
                    snprintf(e, sizeof(e), "%%%02X", ch);
                    oput(&o, e, 3);
                }
            }
        }
        i += ml;
    }
    if (o.over)
        return res(c, SPF_PERMERROR, "macro expansion too long");
    return 0;
}

/* The domain a mechanism or modifier names, into out[256]. */
static int target_of(ectx *c, const spf_term *t, const char *domain, char *out)
{
    if (!t->spec || t->kind == '4' || t->kind == '6') {
        snprintf(out, 256, "%s", domain);
        return 0;
    }
    char buf[EXPAND_MAX];
    int rc = expand(c, t->spec, t->spec_len, domain, false, buf, sizeof(buf));
    if (rc != 0)
        return rc;
    if (!norm_name(buf, strlen(buf), out))
        return res(c, SPF_PERMERROR, "invalid domain name '%.200s' in '%.*s'", buf,
                   (int)(t->text_len > 200 ? 200 : t->text_len), t->text);
    return 0;
}

static int addr_qtype(ectx *c)
{
    return c->family == AF_INET ? SPF_Q_A : SPF_Q_AAAA;
}

/* §5.5 / §7.3: the client's validated names. For the ptr mechanism, found
 * says whether one is domain or under it; for %{p}, out is the best one
 * (domain itself, then a name under it, then any). */
static int validated_name(ectx *c, const char *domain, bool for_ptr, char *out, bool *found)
{
    *found = false;
    spf_answer pa;
    int rc = ask(c, SPF_Q_PTR, c->ip_text, &pa);
    if (rc != 0)
        return rc;
    if (for_ptr && (rc = count_void(c, &pa)) != 0)
        return rc;
    if (pa.status != SPF_DNS_OK)
        return 0; /* a DNS error here is no match (§5.5) */
    /* copy the names: the next questions may come from the same memo */
    size_t nn = pa.n > MAX_NAMES ? MAX_NAMES : pa.n;
    char names[MAX_NAMES][256];
    size_t ok = 0;
    for (size_t i = 0; i < nn; i++)
        if (norm_name(pa.items[i], strlen(pa.items[i]), names[ok]))
            ok++;
    size_t dl = strlen(domain);
    int best = -1, best_rank = 3;
    for (size_t i = 0; i < ok; i++) {
        spf_answer aa;
        if ((rc = ask(c, addr_qtype(c), names[i], &aa)) != 0)
            return rc;
        if (aa.status != SPF_DNS_OK || !addrs_match(c, &aa, -1))
            continue; /* an error skips the name (§5.5) */
        size_t nl = strlen(names[i]);
        int rank = strcmp(names[i], domain) == 0 ? 0
                   : (nl > dl && names[i][nl - dl - 1] == '.' &&
                      strcmp(names[i] + nl - dl, domain) == 0)
                       ? 1
                       : 2;
        if (for_ptr && rank < 2) {
            *found = true;
            snprintf(out, 256, "%s", names[i]);
            return 0;
        }
        if (rank < best_rank) {
            best_rank = rank;
            best = (int)i;
        }
    }
    if (!for_ptr && best >= 0) {
        *found = true;
        snprintf(out, 256, "%s", names[best]);
    }
    return 0;
}

static int check_host(ectx *c, const char *domain, bool initial);

static int eval_mechanism(ectx *c, const spf_term *t, const char *domain)
{
    char target[256];
    spf_answer a;
    int rc;
    switch (t->kind) {
    case 'A':
        return MATCH;
    case '4':
    case '6': {
        unsigned char raw[16];
        char buf[64];
        snprintf(buf, sizeof(buf), "%.*s", (int)t->spec_len, t->spec);
        int fam = t->kind == '4' ? AF_INET : AF_INET6;
        if (fam != c->family || inet_pton(fam, buf, raw) != 1)
            return NOMATCH;
        return prefix_eq(raw, c->ip, fam == AF_INET ? t->cidr4 : t->cidr6) ? MATCH : NOMATCH;
    }
    case 'a':
    case 'e':
        if ((rc = count_mechanism(c)) != 0 || (rc = target_of(c, t, domain, target)) != 0)
            return rc;
        if ((rc = ask(c, t->kind == 'e' ? SPF_Q_A : addr_qtype(c), target, &a)) != 0)
            return rc;
        if (a.status == SPF_DNS_FAIL)
            return res(c, SPF_TEMPERROR, "error looking up IP for %s: %s", target,
                       a.error ? a.error : "DNS failure");
        if ((rc = count_void(c, &a)) != 0)
            return rc;
        if (t->kind == 'e')
            return a.status == SPF_DNS_OK && a.n > 0 ? MATCH : NOMATCH;
        return addrs_match(c, &a, c->family == AF_INET ? t->cidr4 : t->cidr6) ? MATCH : NOMATCH;
    case 'm': {
        if ((rc = count_mechanism(c)) != 0 || (rc = target_of(c, t, domain, target)) != 0)
            return rc;
        if ((rc = ask(c, SPF_Q_MX, target, &a)) != 0)
            return rc;
        if (a.status == SPF_DNS_FAIL)
            return res(c, SPF_TEMPERROR, "error looking up MX for %s: %s", target,
                       a.error ? a.error : "DNS failure");
        if ((rc = count_void(c, &a)) != 0)
            return rc;
        if (a.status != SPF_DNS_OK)
            return NOMATCH;
        if (a.n > MAX_NAMES)
            return res(c, SPF_PERMERROR, "too many MX records for %s", target);
        char hosts[MAX_NAMES][256];
        size_t nh = 0;
        for (size_t i = 0; i < a.n; i++)
            if (norm_name(a.items[i], strlen(a.items[i]), hosts[nh]))
                nh++;
        for (size_t i = 0; i < nh; i++) {
            spf_answer ha;
            if ((rc = ask(c, addr_qtype(c), hosts[i], &ha)) != 0)
                return rc;
            if (ha.status == SPF_DNS_FAIL)
                return res(c, SPF_TEMPERROR, "error looking up IP for %s: %s", hosts[i],
                           ha.error ? ha.error : "DNS failure");
            if (addrs_match(c, &ha, c->family == AF_INET ? t->cidr4 : t->cidr6))
                return MATCH;
        }
        return NOMATCH;
    }
    case 'p': {
        if ((rc = count_mechanism(c)) != 0 || (rc = target_of(c, t, domain, target)) != 0)
            return rc;
        bool found = false;
        char name[256];
        if ((rc = validated_name(c, target, true, name, &found)) != 0)
            return rc;
        return found ? MATCH : NOMATCH;
    }
    case 'I': {
        if ((rc = count_mechanism(c)) != 0 || (rc = target_of(c, t, domain, target)) != 0)
            return rc;
        rc = check_host(c, target, false);
        switch (rc) {
        case SPF_PASS:
            return MATCH;
        case SPF_FAIL:
        case SPF_SOFTFAIL:
        case SPF_NEUTRAL:
            return NOMATCH;
        case SPF_TEMPERROR: {
            if (strstr(c->out->reason, " while evaluating include:"))
                return rc; /* said once, by the innermost include */
            char inner[SPF_REASON_MAX];
            snprintf(inner, sizeof(inner), "%s", c->out->reason);
            return res(c, SPF_TEMPERROR, "temperror while evaluating include:%s: %.300s", target,
                       inner);
        }
        case SPF_NONE:
        case SPF_PERMERROR: {
            if (strstr(c->out->reason, " while evaluating include:"))
                return SPF_PERMERROR;
            char inner[SPF_REASON_MAX];
            snprintf(inner, sizeof(inner), "%s", c->out->reason);
            return res(c, SPF_PERMERROR, "%s while evaluating include:%s: %.300s",
                       spf_result_name(rc), target, inner);
        }
        default:
            return rc; /* PEND, NOMEM */
        }
    }
    }
    return NOMATCH;
}

/* §6.2: the explanation of a fail, when exp= gives one; 0 with
 * c->out->reason set, 1 when there is none, or PEND. */
static int explain(ectx *c, const spf_term *t, const char *domain)
{
    char target[256], save[SPF_REASON_MAX];
    snprintf(save, sizeof(save), "%s", c->out->reason);
    int rc = target_of(c, t, domain, target);
    if (rc == PEND)
        return PEND;
    if (rc != 0)
        goto none;
    spf_answer a;
    if ((rc = ask(c, SPF_Q_TXT, target, &a)) != 0)
        return rc;
    if (a.status != SPF_DNS_OK || a.n != 1)
        goto none;
    size_t len = a.lens ? a.lens[0] : strlen(a.items[0]);
    if (!spf_macro_valid(a.items[0], len, true, false))
        goto none;
    char buf[EXPAND_MAX];
    rc = expand(c, a.items[0], len, domain, true, buf, sizeof(buf));
    if (rc == PEND)
        return PEND;
    if (rc != 0)
        goto none;
    res(c, SPF_FAIL, "%.500s", buf);
    return 0;
none:
    snprintf(c->out->reason, sizeof(c->out->reason), "%s", save);
    return 1;
}

static bool multi_label_ok(const char *d)
{
    char tmp[256];
    return norm_name(d, strlen(d), tmp) && strchr(tmp, '.') && strlen(d) <= 253;
}

static int check_host(ectx *c, const char *domain, bool initial)
{
    if (initial && !multi_label_ok(domain))
        return res(c, SPF_NONE, "invalid domain name: %.200s", domain);
    if (++c->depth > 2 * MAX_DNS_MECHANISMS + 2) /* bounded by the lookup limit anyway */
        return res(c, SPF_PERMERROR, "DNS lookup limits exceeded");
    spf_answer a;
    int rc = ask(c, SPF_Q_TXT, domain, &a);
    if (rc != 0)
        return rc;
    if (a.status == SPF_DNS_FAIL)
        return res(c, SPF_TEMPERROR, "error looking up TXT for %s: %s", domain,
                   a.error ? a.error : "DNS failure");
    if (!initial && (rc = count_void(c, &a)) != 0)
        return rc;
    const char *txt = NULL;
    size_t txt_len = 0, found = 0;
    for (size_t i = 0; a.status == SPF_DNS_OK && i < a.n; i++) {
        size_t l = a.lens ? a.lens[i] : strlen(a.items[i]);
        if (spf_is_record(a.items[i], l)) {
            found++;
            txt = a.items[i];
            txt_len = l;
        }
    }
    if (found == 0)
        return res(c, SPF_NONE, "no SPF records found for %s", domain);
    if (found > 1)
        return res(c, SPF_PERMERROR, "multiple SPF records found for %s", domain);
    spf_record *r = malloc(sizeof(*r));
    if (!r)
        return NOMEM;
    char err[300];
    if (spf_record_parse(txt, txt_len, r, err, sizeof(err)) != 0) {
        free(r);
        return res(c, SPF_PERMERROR, "failed to parse spf record: %s", err);
    }
    for (size_t i = 0; i < r->n; i++) {
        const spf_term *t = &r->terms[i];
        if (strchr("RXU", t->kind))
            continue;
        rc = eval_mechanism(c, t, domain);
        if (rc == NOMATCH)
            continue;
        if (rc == MATCH) {
            int q = t->qualifier;
            rc = q == '-' ? SPF_FAIL : q == '~' ? SPF_SOFTFAIL : q == '?' ? SPF_NEUTRAL : SPF_PASS;
            const char *tx = t->text + (t->text[0] == '+');
            int tl = (int)(t->text_len - (t->text[0] == '+'));
            res(c, rc, "matched '%.*s' directive", tl > 300 ? 300 : tl, tx);
            if (rc == SPF_FAIL && r->exp >= 0) {
                int e = explain(c, &r->terms[r->exp], domain);
                if (e == PEND || e == NOMEM)
                    rc = e;
            }
        }
        free(r);
        return rc;
    }
    if (r->redirect >= 0) {
        char target[256];
        if ((rc = count_mechanism(c)) != 0 ||
            (rc = target_of(c, &r->terms[r->redirect], domain, target)) != 0) {
            free(r);
            return rc;
        }
        free(r);
        rc = check_host(c, target, false);
        if (rc == SPF_NONE) /* §6.1 */
            return res(c, SPF_PERMERROR, "redirect=%s: no SPF record", target);
        return rc;
    }
    free(r);
    return res(c, SPF_NEUTRAL, "default result");
}

int spf_check_host(const spf_params *p, spf_lookup_fn fn, void *ud, spf_outcome *out)
{
    memset(out, 0, sizeof(*out));
    ectx c;
    memset(&c, 0, sizeof(c));
    c.p = p;
    c.fn = fn;
    c.ud = ud;
    c.out = out;
    if (!p->client_ip || !parse_ip(p->client_ip, &c.family, c.ip))
        return KERR_INVAL;
    inet_ntop(c.family, c.ip, c.ip_text, sizeof(c.ip_text));
    const char *domain = p->domain ? p->domain : "";
    /* §4.3: no local part means "postmaster" */
    if (p->sender && *p->sender && strlen(p->sender) < sizeof(c.sender) - 12) {
        const char *at = strrchr(p->sender, '@');
        if (at && at != p->sender)
            snprintf(c.sender, sizeof(c.sender), "%s", p->sender);
        else
            snprintf(c.sender, sizeof(c.sender), "postmaster@%s", at ? at + 1 : p->sender);
    } else {
        snprintf(c.sender, sizeof(c.sender), "postmaster@%s", domain);
    }
    char *at = strrchr(c.sender, '@');
    c.local = c.sender;
    c.local_len = (size_t)(at - c.sender);
    c.sdomain = at + 1;
    char d[256];
    const char *start = domain;
    if (norm_name(domain, strlen(domain), d))
        start = d;
    int rc = check_host(&c, start, true);
    out->dns_mechanisms = c.lookups;
    out->void_lookups = c.voids;
    if (rc == PEND)
        return SPF_PENDING;
    if (rc == NOMEM)
        return KERR_NOMEM;
    out->result = rc;
    return 0;
}
