/* The SMTP response normalizer (smtpnorm.h). Written from the reference
 * page of kumo.string.normalize_smtp_response: the text is split into
 * whitespace-separated words and each word is tried against recognizers in
 * a fixed order, the first that matches deciding its token:
 *
 *   word        a dictionary-looking word stays as it is (see below)
 *   duration    "11s 999ms" runs (found before splitting, since they hold
 *               spaces) and ISO 8601 durations (P1DT2H) -> {duration}
 *   timestamp   RFC 3339 -> {timestamp}
 *   uuid        hyphenated, simple (32 hex), braced, urn:uuid: -> {uuid}
 *   hash        8+ bytes of letters, digits and - . _ with at least three
 *               letters and three digits -> {hash}
 *   ipaddr      IPv4 or IPv6, optionally with :port -> {ipaddr}
 *   base64      base64 or base64url, groups of 4 -> {base64}
 *   email       RFC 5321 address -> {email}
 *   lhs=rhs     rhs normalized recursively
 *
 * Brackets that open or close a word ("[aGVs IP: 1.2.3.4].") are turned
 * into spaces first, so that what they enclose is seen as words.
 *
 * KumoMTA leaves words of an English dictionary alone (many are valid
 * base64: "duration"); kumod carries no dictionary and instead treats as a
 * word any run of ASCII letters (with single inner hyphens or apostrophes)
 * written all lower-case, all upper-case or capitalized. A letters-only
 * base64 blob in one of those shapes is therefore kept (mixed case, as
 * base64 almost always is, is still tokenized). Pure; any thread; fails
 * only when out of memory. */
#include "lua/lib/smtpnorm.h"

#include <arpa/inet.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "core/sbuf.h"

static bool is_alpha(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}
static bool is_upper(char c)
{
    return c >= 'A' && c <= 'Z';
}
static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}
static bool is_hex(char c)
{
    return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}
static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f';
}
/* a "word" byte for the \b of the duration scan; non-ASCII bytes are
 * parts of letters */
static bool is_wordch(char c)
{
    return is_alpha(c) || is_digit(c) || c == '_' || (unsigned char)c >= 0x80;
}
static bool is_punct(char c)
{
    return (c >= '!' && c <= '/') || (c >= ':' && c <= '@') || (c >= '[' && c <= '`') ||
           (c >= '{' && c <= '~');
}

/* ---- recognizers (w, n: one word) ---------------------------------------- */

static bool looks_like_word(const char *w, size_t n)
{
    size_t i = 0;
    while (i < n) {
        size_t start = i;
        while (i < n && is_alpha(w[i]))
            i++;
        size_t len = i - start;
        if (!len)
            return false;
        bool all_lower = true, all_upper = true;
        for (size_t k = start; k < i; k++) {
            if (is_upper(w[k]))
                all_lower = false;
            else
                all_upper = false;
        }
        bool capital = is_upper(w[start]);
        for (size_t k = start + 1; k < i && capital; k++)
            if (is_upper(w[k]))
                capital = false;
        if (!all_lower && !all_upper && !capital)
            return false;
        if (i == n)
            return true;
        if (w[i] != '-' && w[i] != '\'')
            return false;
        i++;
        if (i == n)
            return false;
    }
    return false;
}

/* digits at w[*i]; true when at least one (with an optional .fraction
 * when frac) */
static bool digits(const char *w, size_t n, size_t *i, bool frac)
{
    size_t s = *i;
    while (*i < n && is_digit(w[*i]))
        (*i)++;
    if (*i == s)
        return false;
    if (frac && *i + 1 < n && w[*i] == '.' && is_digit(w[*i + 1])) {
        (*i)++;
        while (*i < n && is_digit(w[*i]))
            (*i)++;
    }
    return true;
}

static bool iso_duration(const char *w, size_t n)
{
    if (!n || w[0] != 'P')
        return false;
    size_t i = 1;
    const char *parts = "YMWD";
    for (const char *d = parts; *d; d++) {
        size_t save = i;
        if (digits(w, n, &i, true) && i < n && w[i] == *d)
            i++;
        else
            i = save;
    }
    if (i < n && w[i] == 'T') {
        i++;
        for (const char *d = "HMS"; *d; d++) {
            size_t save = i;
            if (digits(w, n, &i, true) && i < n && w[i] == *d)
                i++;
            else
                i = save;
        }
    }
    return i == n;
}

/* exactly k digits at w[*i], value in [lo, hi] */
static bool num(const char *w, size_t n, size_t *i, int k, int lo, int hi)
{
    int v = 0;
    for (int j = 0; j < k; j++) {
        if (*i >= n || !is_digit(w[*i]))
            return false;
        v = v * 10 + (w[(*i)++] - '0');
    }
    return v >= lo && v <= hi;
}

static bool lit(const char *w, size_t n, size_t *i, char c)
{
    if (*i < n && w[*i] == c) {
        (*i)++;
        return true;
    }
    return false;
}

static bool rfc3339(const char *w, size_t n)
{
    size_t i = 0;
    if (!num(w, n, &i, 4, 0, 9999) || !lit(w, n, &i, '-') || !num(w, n, &i, 2, 1, 12) ||
        !lit(w, n, &i, '-') || !num(w, n, &i, 2, 1, 31))
        return false;
    if (i >= n || (w[i] != 'T' && w[i] != 't'))
        return false;
    i++;
    if (!num(w, n, &i, 2, 0, 23) || !lit(w, n, &i, ':') || !num(w, n, &i, 2, 0, 59) ||
        !lit(w, n, &i, ':') || !num(w, n, &i, 2, 0, 60))
        return false;
    if (lit(w, n, &i, '.')) {
        size_t s = i;
        while (i < n && is_digit(w[i]))
            i++;
        if (i == s)
            return false;
    }
    if (lit(w, n, &i, 'Z') || lit(w, n, &i, 'z'))
        return i == n;
    if (i < n && (w[i] == '+' || w[i] == '-')) {
        i++;
        return num(w, n, &i, 2, 0, 23) && lit(w, n, &i, ':') && num(w, n, &i, 2, 0, 59) &&
               i == n;
    }
    return false;
}

static bool hex_run(const char *w, size_t k)
{
    for (size_t i = 0; i < k; i++)
        if (!is_hex(w[i]))
            return false;
    return true;
}

static bool uuid_hyphenated(const char *w, size_t n)
{
    static const size_t groups[] = {8, 4, 4, 4, 12};
    if (n != 36)
        return false;
    size_t i = 0;
    for (int g = 0; g < 5; g++) {
        if (!hex_run(w + i, groups[g]))
            return false;
        i += groups[g];
        if (g < 4 && w[i++] != '-')
            return false;
    }
    return true;
}

static bool uuid(const char *w, size_t n)
{
    if (n == 32)
        return hex_run(w, 32);
    if (n == 38 && w[0] == '{' && w[37] == '}')
        return uuid_hyphenated(w + 1, 36);
    if (n == 45 && strncmp(w, "urn:uuid:", 9) == 0)
        return uuid_hyphenated(w + 9, 36);
    return uuid_hyphenated(w, n);
}

static bool hashlike(const char *w, size_t n)
{
    if (n < 8)
        return false;
    int alpha = 0, dig = 0;
    for (size_t i = 0; i < n; i++) {
        if (is_alpha(w[i]))
            alpha++;
        else if (is_digit(w[i]))
            dig++;
        else if (w[i] != '-' && w[i] != '.' && w[i] != '_')
            return false;
    }
    return alpha > 2 && dig > 2;
}

static bool ipv4_digits(const char *w, size_t n)
{
    size_t i = 0;
    for (int part = 0; part < 4; part++) {
        if (part && !lit(w, n, &i, '.'))
            return false;
        size_t s = i;
        while (i < n && i - s < 3 && is_digit(w[i]))
            i++;
        if (i == s)
            return false;
    }
    return i == n;
}

static bool ipv6(const char *w, size_t n)
{
    char buf[INET6_ADDRSTRLEN + 16];
    if (n >= sizeof(buf))
        return false;
    memcpy(buf, w, n);
    buf[n] = 0;
    /* fe80::1%eth0: the zone is not part of the address */
    char *pct = strchr(buf, '%');
    if (pct) {
        if (strncmp(buf, "fe80:", 5) != 0 || !pct[1])
            return false;
        *pct = 0;
    }
    unsigned char a[16];
    return inet_pton(AF_INET6, buf, a) == 1;
}

static bool ipaddr(const char *w, size_t n)
{
    if (ipv4_digits(w, n) || ipv6(w, n))
        return true;
    /* with a :port */
    size_t c = n;
    while (c > 0 && w[c - 1] != ':')
        c--;
    if (c == 0 || n - c < 1 || n - c > 5)
        return false;
    for (size_t i = c; i < n; i++)
        if (!is_digit(w[i]))
            return false;
    size_t host = c - 1;
    return host > 0 && (ipv4_digits(w, host) || ipv6(w, host));
}

static bool b64ch(char c)
{
    return is_alpha(c) || is_digit(c) || c == '+' || c == '/' || c == '_' || c == '-';
}

static bool base64(const char *w, size_t n)
{
    if (n < 4 || n % 4)
        return false;
    size_t body = n;
    if (w[n - 1] == '=') {
        body = w[n - 2] == '=' ? n - 2 : n - 1;
        if (n < 8)
            return false;
    }
    for (size_t i = 0; i < body; i++)
        if (!b64ch(w[i]))
            return false;
    return true;
}

static bool atext(char c)
{
    return is_alpha(c) || is_digit(c) || strchr("!#$%&'*+/=?^_`{|}~-", c) != NULL;
}

static bool email(const char *w, size_t n)
{
    /* the last @ separates the domain (a quoted local part may hold @) */
    const char *at = NULL;
    for (size_t k = n; k > 0 && !at; k--)
        if (w[k - 1] == '@')
            at = w + k - 1;
    if (!at)
        return false;
    size_t ln = (size_t)(at - w), dn = n - ln - 1;
    if (!ln || !dn)
        return false;
    if (w[0] == '"') {
        if (ln < 2 || w[ln - 1] != '"')
            return false;
        for (size_t i = 1; i + 1 < ln; i++) {
            unsigned char c = (unsigned char)w[i];
            if (c == '\\') {
                if (++i + 1 >= ln)
                    return false;
            } else if (c == '"' || c < 1 || c > 0x7f || c == '\r' || c == '\n') {
                return false;
            }
        }
    } else {
        bool prev_dot = true;
        for (size_t i = 0; i < ln; i++) {
            if (w[i] == '.') {
                if (prev_dot)
                    return false;
                prev_dot = true;
            } else if (atext(w[i])) {
                prev_dot = false;
            } else {
                return false;
            }
        }
        if (prev_dot)
            return false;
    }
    const char *d = at + 1;
    if (d[0] == '[')
        return d[dn - 1] == ']' && dn > 2;
    int labels = 0;
    size_t i = 0;
    while (i < dn) {
        size_t s = i;
        while (i < dn && (is_alpha(d[i]) || is_digit(d[i]) || d[i] == '-'))
            i++;
        if (i == s || d[s] == '-' || d[i - 1] == '-')
            return false;
        labels++;
        if (i == dn)
            break;
        if (d[i] != '.' || i + 1 == dn)
            return false;
        i++;
    }
    return labels >= 2;
}

/* Appends the normalized form of the word to out and returns true, or
 * returns false (out unchanged) when no recognizer applies. */
static bool normalize_word(sbuf *out, const char *w, size_t n)
{
    const char *tok = NULL;
    if (looks_like_word(w, n))
        return false;
    if ((n == 12 && memcmp(w, "__DURATION__", 12) == 0) || iso_duration(w, n))
        tok = "{duration}";
    else if (rfc3339(w, n))
        tok = "{timestamp}";
    else if (uuid(w, n))
        tok = "{uuid}";
    else if (hashlike(w, n))
        tok = "{hash}";
    else if (ipaddr(w, n))
        tok = "{ipaddr}";
    else if (base64(w, n))
        tok = "{base64}";
    else if (email(w, n))
        tok = "{email}";
    if (tok) {
        sbuf_puts(out, tok);
        return true;
    }
    const char *eq = memchr(w, '=', n);
    if (!eq)
        return false;
    size_t mark = out->len;
    sbuf_put(out, w, (size_t)(eq - w) + 1);
    if (normalize_word(out, eq + 1, n - (size_t)(eq - w) - 1))
        return true;
    out->len = mark;
    if (out->p)
        out->p[mark] = 0;
    return false;
}

/* ---- whole-text passes --------------------------------------------------- */

static const char *const units[] = {"ns", "us", "ms", "s", "m", "h", "day", "month", "year"};

/* One "<digits><unit>" at s[i] followed by a word boundary: its length, or
 * 0. */
static size_t duration_item(const char *s, size_t n, size_t i)
{
    size_t j = i;
    while (j < n && is_digit(s[j]))
        j++;
    if (j == i)
        return 0;
    for (size_t u = 0; u < sizeof(units) / sizeof(units[0]); u++) {
        size_t ul = strlen(units[u]);
        if (j + ul <= n && memcmp(s + j, units[u], ul) == 0 &&
            (j + ul == n || !is_wordch(s[j + ul])))
            return j + ul - i;
    }
    return 0;
}

/* Replaces runs like "11s 999ms 990us" (starting at a word boundary) with
 * __DURATION__. */
static void pass_durations(sbuf *out, const char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        size_t len = 0;
        if (is_digit(s[i]) && (i == 0 || !is_wordch(s[i - 1])))
            len = duration_item(s, n, i);
        if (!len) {
            sbuf_put(out, s + i, 1);
            i++;
            continue;
        }
        size_t end = i + len;
        for (;;) {
            size_t j = end;
            while (j < n && is_space(s[j]))
                j++;
            size_t l2 = j > end ? duration_item(s, n, j) : 0;
            if (!l2)
                break;
            end = j + l2;
        }
        sbuf_puts(out, "__DURATION__");
        i = end;
    }
}

/* " [x" -> "  x" and "x] " -> "x  ": brackets at the edges of words become
 * spaces (with the byte next to them, as the reference behaves). */
static void pass_brackets(sbuf *out, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        bool next_open = i + 1 < n && (s[i + 1] == '[' || s[i + 1] == '(' || s[i + 1] == '{');
        if ((is_space(c) || out->len == 0) && next_open) {
            i++;
            sbuf_put(out, " ", 1);
            continue;
        }
        if ((c == ']' || c == ')' || c == '}') &&
            (i + 1 == n || is_space(s[i + 1]) || is_punct(s[i + 1]))) {
            i++;
            sbuf_put(out, " ", 1);
            continue;
        }
        sbuf_put(out, &c, 1);
    }
}

char *smtpnorm_normalize(const char *s, size_t n, size_t *outlen)
{
    sbuf a = {0}, b = {0}, out = {0};
    pass_durations(&a, s, n);
    const char *t = a.p ? a.p : "";
    size_t tn = a.len;
    if (memchr(t, '[', tn) || memchr(t, '(', tn) || memchr(t, '{', tn)) {
        pass_brackets(&b, t, tn);
        t = b.p ? b.p : "";
        tn = b.len;
    }
    sbuf_put(&out, "", 0);
    size_t i = 0;
    while (i < tn) {
        while (i < tn && is_space(t[i]))
            i++;
        if (i == tn)
            break;
        size_t st = i;
        while (i < tn && !is_space(t[i]))
            i++;
        if (out.len)
            sbuf_put(&out, " ", 1);
        if (!normalize_word(&out, t + st, i - st))
            sbuf_put(&out, t + st, i - st);
    }
    bool oom = a.oom || b.oom || out.oom;
    free(a.p);
    free(b.p);
    if (oom) {
        free(out.p);
        return NULL;
    }
    *outlen = out.len;
    return out.p;
}
