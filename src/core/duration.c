/* Humantime durations, byte sizes and percentages as they appear in KumoMTA
 * policy files. Parsing follows Rust's humantime (the crate KumoMTA uses), plus
 * the extras policies rely on: a bare number means seconds and a part may have
 * a decimal fraction ("1.5s"). Formatting reproduces humantime::format_duration
 * byte for byte, because the text ends up in log records and admin output that
 * tools compare against KumoMTA. Pure functions without state: any thread.
 * Failures are return codes (KERR_PARSE for malformed text, KERR_RANGE when a
 * duration does not fit in int64 nanoseconds); nothing allocates. */
#include "core/duration.h"

#include <stdbool.h>
#include <string.h>

#include "core/kerr.h"

/* humantime's calendar approximations: a month is 30.44 days and a year is
 * 365.25 days. Both parse and format must use the same figures so that
 * format(parse(x)) round-trips. */
#define SECS_PER_MONTH 2630016LL
#define SECS_PER_YEAR 31557600LL
#define NS_PER_MONTH (SECS_PER_MONTH * NS_PER_SEC)
#define NS_PER_YEAR (SECS_PER_YEAR * NS_PER_SEC)

/* More fraction digits than this are ignored: they are below a nanosecond for
 * every unit we know, and 10^18 still fits in a uint64_t. */
#define FRAC_DIGITS_MAX 18

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static bool is_alpha(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static char to_lower(char c)
{
    return (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
}

static const char *skip_space(const char *p)
{
    while (is_space(*p))
        p++;
    return p;
}

/* A decimal number as written: integer part and up to FRAC_DIGITS_MAX digits of
 * fraction (frac / 10^frac_len). */
struct decimal {
    uint64_t ipart;
    uint64_t frac;
    uint64_t frac_scale; /* 10^frac_len; 1 when there is no fraction */
};

/* Reads digits[.digits] at *pp. Returns 0, KERR_PARSE when there is no digit
 * or a '.' is not followed by one, KERR_RANGE when the integer part overflows. */
static int decimal_read(const char **pp, struct decimal *d)
{
    const char *p = *pp;
    if (!is_digit(*p))
        return KERR_PARSE;
    d->ipart = 0;
    d->frac = 0;
    d->frac_scale = 1;
    for (; is_digit(*p); p++) {
        if (__builtin_mul_overflow(d->ipart, 10u, &d->ipart) ||
            __builtin_add_overflow(d->ipart, (uint64_t)(*p - '0'), &d->ipart))
            return KERR_RANGE;
    }
    if (*p == '.') {
        p++;
        if (!is_digit(*p))
            return KERR_PARSE;
        for (int n = 0; is_digit(*p); p++, n++) {
            if (n < FRAC_DIGITS_MAX) {
                d->frac = d->frac * 10 + (uint64_t)(*p - '0');
                d->frac_scale *= 10;
            }
        }
    }
    *pp = p;
    return 0;
}

/* d * unit, truncated to an integer. Returns false on overflow of max. */
static bool decimal_scale(const struct decimal *d, uint64_t unit, uint64_t max, uint64_t *out)
{
    uint64_t whole;
    if (__builtin_mul_overflow(d->ipart, unit, &whole))
        return false;
    /* frac < frac_scale <= 10^18 and unit < 2^64, so the product fits in 128 bits. */
    uint64_t part = (uint64_t)((unsigned __int128)d->frac * unit / d->frac_scale);
    if (__builtin_add_overflow(whole, part, &whole) || whole > max)
        return false;
    *out = whole;
    return true;
}

struct time_unit {
    const char *name;
    int64_t ns;
};

/* humantime's spellings; matching is case-sensitive because "M" (months) and
 * "m" (minutes) differ only in case. */
static const struct time_unit time_units[] = {
    {"nanos", 1},
    {"nsec", 1},
    {"ns", 1},
    {"usec", 1000},
    {"us", 1000},
    {"millis", NS_PER_MS},
    {"msec", NS_PER_MS},
    {"ms", NS_PER_MS},
    {"seconds", NS_PER_SEC},
    {"second", NS_PER_SEC},
    {"secs", NS_PER_SEC},
    {"sec", NS_PER_SEC},
    {"s", NS_PER_SEC},
    {"minutes", 60 * NS_PER_SEC},
    {"minute", 60 * NS_PER_SEC},
    {"mins", 60 * NS_PER_SEC},
    {"min", 60 * NS_PER_SEC},
    {"m", 60 * NS_PER_SEC},
    {"hours", 3600 * NS_PER_SEC},
    {"hour", 3600 * NS_PER_SEC},
    {"hrs", 3600 * NS_PER_SEC},
    {"hr", 3600 * NS_PER_SEC},
    {"h", 3600 * NS_PER_SEC},
    {"days", 86400 * NS_PER_SEC},
    {"day", 86400 * NS_PER_SEC},
    {"d", 86400 * NS_PER_SEC},
    {"weeks", 7 * 86400 * NS_PER_SEC},
    {"week", 7 * 86400 * NS_PER_SEC},
    {"w", 7 * 86400 * NS_PER_SEC},
    {"months", NS_PER_MONTH},
    {"month", NS_PER_MONTH},
    {"M", NS_PER_MONTH},
    {"years", NS_PER_YEAR},
    {"year", NS_PER_YEAR},
    {"y", NS_PER_YEAR},
};

static int64_t time_unit_lookup(const char *name, size_t len)
{
    for (size_t i = 0; i < sizeof(time_units) / sizeof(time_units[0]); i++) {
        if (strlen(time_units[i].name) == len && memcmp(time_units[i].name, name, len) == 0)
            return time_units[i].ns;
    }
    return 0;
}

int duration_parse(const char *s, int64_t *out_ns)
{
    if (!s || !out_ns)
        return KERR_INVAL;
    const char *p = skip_space(s);
    if (!*p)
        return KERR_PARSE;

    uint64_t total = 0;
    for (int part = 0;; part++) {
        struct decimal d;
        int rc = decimal_read(&p, &d);
        if (rc < 0)
            return rc;
        p = skip_space(p);
        const char *unit = p;
        while (is_alpha(*p))
            p++;
        int64_t unit_ns;
        if (p == unit) {
            /* A bare number is seconds, but only on its own: "2s 30" is a typo,
             * not 2s + 30s. */
            if (part != 0 || *p)
                return KERR_PARSE;
            unit_ns = NS_PER_SEC;
        } else {
            unit_ns = time_unit_lookup(unit, (size_t)(p - unit));
            if (!unit_ns)
                return KERR_PARSE;
        }
        uint64_t ns;
        if (!decimal_scale(&d, (uint64_t)unit_ns, INT64_MAX, &ns) ||
            __builtin_add_overflow(total, ns, &total) || total > INT64_MAX)
            return KERR_RANGE;
        p = skip_space(p);
        if (!*p)
            break;
    }
    *out_ns = (int64_t)total;
    return 0;
}

/* Appends to a buffer that may be too short: pos keeps counting so the caller
 * learns the full length, like snprintf. */
struct outbuf {
    char *buf;
    size_t len;
    size_t pos;
};

static void out_char(struct outbuf *o, char c)
{
    if (o->pos + 1 < o->len)
        o->buf[o->pos] = c;
    o->pos++;
}

static void out_str(struct outbuf *o, const char *s)
{
    while (*s)
        out_char(o, *s++);
}

static void out_u64(struct outbuf *o, uint64_t v)
{
    char tmp[20];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n)
        out_char(o, tmp[--n]);
}

/* One "<value><name>" item, space-separated, skipped when zero; plural adds an
 * 's' to values above one (humantime's item_plural). */
static void out_item(struct outbuf *o, bool *started, uint64_t value, const char *name, bool plural)
{
    if (!value)
        return;
    if (*started)
        out_char(o, ' ');
    out_u64(o, value);
    out_str(o, name);
    if (plural && value > 1)
        out_char(o, 's');
    *started = true;
}

size_t duration_format(int64_t ns, char *buf, size_t len)
{
    struct outbuf o = {buf, len, 0};
    /* Negate in unsigned arithmetic so that INT64_MIN works too. */
    uint64_t mag = ns < 0 ? 0 - (uint64_t)ns : (uint64_t)ns;
    if (ns < 0)
        out_char(&o, '-');
    if (mag == 0) {
        out_str(&o, "0s");
    } else {
        uint64_t secs = mag / NS_PER_SEC;
        uint64_t nanos = mag % NS_PER_SEC;
        uint64_t ydays = secs % SECS_PER_YEAR;
        uint64_t mdays = ydays % SECS_PER_MONTH;
        uint64_t day_secs = mdays % 86400;
        bool started = false;
        out_item(&o, &started, secs / SECS_PER_YEAR, "year", true);
        out_item(&o, &started, ydays / SECS_PER_MONTH, "month", true);
        out_item(&o, &started, mdays / 86400, "day", true);
        out_item(&o, &started, day_secs / 3600, "h", false);
        out_item(&o, &started, day_secs % 3600 / 60, "m", false);
        out_item(&o, &started, day_secs % 60, "s", false);
        out_item(&o, &started, nanos / 1000000, "ms", false);
        out_item(&o, &started, nanos / 1000 % 1000, "us", false);
        out_item(&o, &started, nanos % 1000, "ns", false);
    }
    if (len)
        buf[o.pos < len ? o.pos : len - 1] = '\0';
    return o.pos;
}

struct size_unit {
    const char *name; /* lower case; matched case-insensitively */
    uint64_t mult;
};

static const struct size_unit size_units[] = {
    {"", 1},
    {"b", 1},
    {"k", 1ULL << 10},
    {"kb", 1ULL << 10},
    {"kib", 1ULL << 10},
    {"m", 1ULL << 20},
    {"mb", 1ULL << 20},
    {"mib", 1ULL << 20},
    {"g", 1ULL << 30},
    {"gb", 1ULL << 30},
    {"gib", 1ULL << 30},
    {"t", 1ULL << 40},
    {"tb", 1ULL << 40},
    {"tib", 1ULL << 40},
};

static uint64_t size_unit_lookup(const char *name, size_t len)
{
    for (size_t i = 0; i < sizeof(size_units) / sizeof(size_units[0]); i++) {
        const char *u = size_units[i].name;
        if (strlen(u) != len)
            continue;
        size_t j = 0;
        while (j < len && to_lower(name[j]) == u[j])
            j++;
        if (j == len)
            return size_units[i].mult;
    }
    return 0;
}

int size_parse(const char *s, uint64_t *out)
{
    if (!s || !out)
        return KERR_INVAL;
    const char *p = skip_space(s);
    struct decimal d;
    if (decimal_read(&p, &d) < 0)
        return KERR_PARSE;
    p = skip_space(p);
    const char *unit = p;
    while (is_alpha(*p))
        p++;
    uint64_t mult = size_unit_lookup(unit, (size_t)(p - unit));
    if (!mult || *skip_space(p))
        return KERR_PARSE;
    /* A fraction of a byte means the unit was forgotten. */
    if (mult == 1 && d.frac_scale != 1)
        return KERR_PARSE;
    uint64_t v;
    if (!decimal_scale(&d, mult, UINT64_MAX, &v))
        return KERR_PARSE;
    *out = v;
    return 0;
}

int percent_parse(const char *s, double *out)
{
    if (!s || !out)
        return KERR_INVAL;
    const char *p = skip_space(s);
    struct decimal d;
    if (decimal_read(&p, &d) < 0)
        return KERR_PARSE;
    p = skip_space(p);
    /* The '%' is required: callers such as define_spool's min_free_space try a
     * percentage first and fall back to a byte size. */
    if (*p != '%' || *skip_space(p + 1))
        return KERR_PARSE;
    /* Both parts are exact in a double for any sane input, so this is the
     * correctly rounded value (no strtod: it depends on the locale). */
    *out = (double)d.ipart + (double)d.frac / (double)d.frac_scale;
    return 0;
}
