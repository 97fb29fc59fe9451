/* Dates for kumo.time, written from RFC 3339, RFC 2822 §3.3 / §4.3 and the
 * documentation of chrono's strftime. The civil-date conversions are the
 * classic era-based ones (400-year cycles of 146097 days), exact for every
 * int64 day count a Time can hold. Pure, any thread, no allocation; malformed
 * text gives KERR_PARSE. */
#include "lua/lib/timefmt.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "core/kerr.h"

static const char *const month_abbr[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                         "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
static const char *const month_full[] = {"January",   "February", "March",    "April",
                                         "May",       "June",     "July",     "August",
                                         "September", "October",  "November", "December"};
static const char *const wday_abbr[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
static const char *const wday_full[] = {"Sunday",   "Monday", "Tuesday", "Wednesday",
                                        "Thursday", "Friday", "Saturday"};

static int64_t floor_div(int64_t a, int64_t b)
{
    int64_t q = a / b;
    return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

int64_t timefmt_days_from_civil(int64_t y, int m, int d)
{
    y -= m <= 2;
    int64_t era = floor_div(y, 400);
    int64_t yoe = y - era * 400;                                  /* [0, 399] */
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1; /* [0, 365] */
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;          /* [0, 146096] */
    return era * 146097 + doe - 719468;
}

static bool is_leap(int64_t y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static int days_in_month(int64_t y, int m)
{
    static const int dm[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    return m == 2 && is_leap(y) ? 29 : dm[m - 1];
}

void timefmt_breakdown(int64_t sec, struct timefmt_tm *tm)
{
    int64_t days = floor_div(sec, 86400);
    int64_t rem = sec - days * 86400;
    tm->hour = (int)(rem / 3600);
    tm->minute = (int)(rem % 3600 / 60);
    tm->second = (int)(rem % 60);
    tm->wday = (int)((days % 7 + 11) % 7); /* 1970-01-01 was a Thursday */
    int64_t z = days + 719468;
    int64_t era = floor_div(z, 146097);
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t y = yoe + era * 400;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    tm->day = (int)(doy - (153 * mp + 2) / 5 + 1);
    tm->month = (int)(mp < 10 ? mp + 3 : mp - 9);
    tm->year = y + (tm->month <= 2);
    tm->yday = (int)(days - timefmt_days_from_civil(tm->year, 1, 1));
}

/* ---- parsing ------------------------------------------------------------ */

struct cursor {
    const char *p, *end;
};

static bool digits(struct cursor *c, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (c->p >= c->end || *c->p < '0' || *c->p > '9')
            return false;
        v = v * 10 + (*c->p++ - '0');
    }
    *out = v;
    return true;
}

static bool lit(struct cursor *c, char ch)
{
    if (c->p < c->end && *c->p == ch) {
        c->p++;
        return true;
    }
    return false;
}

static bool valid_fields(int64_t y, int mo, int d, int h, int mi, int s)
{
    return mo >= 1 && mo <= 12 && d >= 1 && d <= days_in_month(y, mo) && h <= 23 && mi <= 59 &&
           s <= 60;
}

/* A leap second (":60") is counted as the last second of the minute, as
 * POSIX time has no place for it. */
static int64_t to_epoch(int64_t y, int mo, int d, int h, int mi, int s, int off_secs)
{
    if (s == 60)
        s = 59;
    return timefmt_days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s - off_secs;
}

int timefmt_parse_rfc3339(const char *s, size_t n, int64_t *sec, int32_t *nsec)
{
    struct cursor c = {s, s + n};
    int y, mo, d, h, mi, se;
    if (!digits(&c, 4, &y) || !lit(&c, '-') || !digits(&c, 2, &mo) || !lit(&c, '-') ||
        !digits(&c, 2, &d))
        return KERR_PARSE;
    if (!(lit(&c, 'T') || lit(&c, 't') || lit(&c, ' ')))
        return KERR_PARSE;
    if (!digits(&c, 2, &h) || !lit(&c, ':') || !digits(&c, 2, &mi) || !lit(&c, ':') ||
        !digits(&c, 2, &se))
        return KERR_PARSE;
    int32_t ns = 0;
    if (lit(&c, '.')) {
        int nd = 0;
        while (c.p < c.end && *c.p >= '0' && *c.p <= '9') {
            if (nd < 9)
                ns = ns * 10 + (*c.p - '0');
            nd++;
            c.p++;
        }
        if (nd == 0)
            return KERR_PARSE;
        for (int i = nd; i < 9; i++)
            ns *= 10;
    }
    int off = 0;
    if (lit(&c, 'Z') || lit(&c, 'z')) {
        off = 0;
    } else if (c.p < c.end && (*c.p == '+' || *c.p == '-')) {
        int sign = *c.p++ == '-' ? -1 : 1, oh, om;
        if (!digits(&c, 2, &oh) || !lit(&c, ':') || !digits(&c, 2, &om) || oh > 23 || om > 59)
            return KERR_PARSE;
        off = sign * (oh * 3600 + om * 60);
    } else {
        return KERR_PARSE;
    }
    if (c.p != c.end || !valid_fields(y, mo, d, h, mi, se))
        return KERR_PARSE;
    *sec = to_epoch(y, mo, d, h, mi, se, off);
    *nsec = ns;
    return 0;
}

/* Skips folding white space and (possibly nested) comments, RFC 2822 CFWS. */
static void skip_cfws(struct cursor *c)
{
    for (;;) {
        while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\r' || *c->p == '\n'))
            c->p++;
        if (c->p < c->end && *c->p == '(') {
            int depth = 0;
            while (c->p < c->end) {
                if (*c->p == '\\' && c->p + 1 < c->end) {
                    c->p += 2;
                    continue;
                }
                if (*c->p == '(')
                    depth++;
                else if (*c->p == ')' && --depth == 0) {
                    c->p++;
                    break;
                }
                c->p++;
            }
            continue;
        }
        return;
    }
}

static size_t word(struct cursor *c, char *buf, size_t cap)
{
    size_t n = 0;
    while (c->p < c->end && ((*c->p >= 'a' && *c->p <= 'z') || (*c->p >= 'A' && *c->p <= 'Z'))) {
        if (n + 1 < cap)
            buf[n] = *c->p;
        n++;
        c->p++;
    }
    buf[n < cap ? n : cap - 1] = 0;
    return n;
}

static bool number(struct cursor *c, int min_digits, int max_digits, int *out, int *ndigits)
{
    int v = 0, nd = 0;
    while (c->p < c->end && *c->p >= '0' && *c->p <= '9' && nd < max_digits) {
        v = v * 10 + (*c->p++ - '0');
        nd++;
    }
    if (nd < min_digits)
        return false;
    *out = v;
    if (ndigits)
        *ndigits = nd;
    return true;
}

int timefmt_parse_rfc2822(const char *s, size_t n, int64_t *sec, int32_t *nsec)
{
    struct cursor c = {s, s + n};
    char w[16];
    skip_cfws(&c);
    const char *save = c.p;
    if (word(&c, w, sizeof(w)) > 0) {
        /* day-of-week: checked for spelling only, as mail software gets it
         * wrong often enough that readers ignore it */
        bool ok = false;
        for (int i = 0; i < 7; i++)
            ok |= strcasecmp(w, wday_abbr[i]) == 0 || strcasecmp(w, wday_full[i]) == 0;
        if (!ok)
            return KERR_PARSE;
        skip_cfws(&c);
        if (!lit(&c, ','))
            return KERR_PARSE;
        skip_cfws(&c);
    } else {
        c.p = save;
    }
    int d, y, ynd, h, mi, se = 0, mo = 0;
    if (!number(&c, 1, 2, &d, NULL))
        return KERR_PARSE;
    skip_cfws(&c);
    word(&c, w, sizeof(w));
    for (int i = 0; i < 12; i++)
        if (strcasecmp(w, month_abbr[i]) == 0 || strcasecmp(w, month_full[i]) == 0)
            mo = i + 1;
    if (!mo)
        return KERR_PARSE;
    skip_cfws(&c);
    if (!number(&c, 2, 4, &y, &ynd))
        return KERR_PARSE;
    if (ynd == 2) /* RFC 2822 §4.3 */
        y += y < 50 ? 2000 : 1900;
    else if (ynd == 3)
        y += 1900;
    skip_cfws(&c);
    if (!number(&c, 2, 2, &h, NULL))
        return KERR_PARSE;
    skip_cfws(&c);
    if (!lit(&c, ':'))
        return KERR_PARSE;
    skip_cfws(&c);
    if (!number(&c, 2, 2, &mi, NULL))
        return KERR_PARSE;
    skip_cfws(&c);
    if (lit(&c, ':')) {
        skip_cfws(&c);
        if (!number(&c, 2, 2, &se, NULL))
            return KERR_PARSE;
    }
    skip_cfws(&c);
    int off = 0;
    if (c.p < c.end && (*c.p == '+' || *c.p == '-')) {
        int sign = *c.p++ == '-' ? -1 : 1, hhmm;
        if (!number(&c, 4, 4, &hhmm, NULL) || hhmm % 100 > 59)
            return KERR_PARSE;
        off = sign * (hhmm / 100 * 3600 + hhmm % 100 * 60);
    } else {
        static const struct {
            const char *name;
            int hours;
        } zones[] = {{"UT", 0},   {"GMT", 0},  {"UTC", 0},  {"Z", 0},    {"EST", -5}, {"EDT", -4},
                     {"CST", -6}, {"CDT", -5}, {"MST", -7}, {"MDT", -6}, {"PST", -8}, {"PDT", -7}};
        if (word(&c, w, sizeof(w)) == 0)
            return KERR_PARSE;
        bool found = false;
        for (size_t i = 0; i < sizeof(zones) / sizeof(zones[0]); i++)
            if (strcasecmp(w, zones[i].name) == 0) {
                off = zones[i].hours * 3600;
                found = true;
            }
        /* other military zones mean an unknown offset: RFC 2822 §4.3 says
         * to treat them as -0000 */
        if (!found && !(strlen(w) == 1 && w[0] != 'j' && w[0] != 'J'))
            return KERR_PARSE;
    }
    skip_cfws(&c);
    if (c.p != c.end || !valid_fields(y, mo, d, h, mi, se))
        return KERR_PARSE;
    *sec = to_epoch(y, mo, d, h, mi, se, off);
    *nsec = 0;
    return 0;
}

/* ---- formatting ------------------------------------------------------- */

struct out {
    char *buf;
    size_t cap, len;
};

static void put(struct out *o, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++, o->len++)
        if (o->len + 1 < o->cap)
            o->buf[o->len] = s[i];
}

static void puts_(struct out *o, const char *s)
{
    put(o, s, strlen(s));
}

/* A number with chrono's padding: pad is '0', ' ' or 0 (none). */
static void num(struct out *o, int64_t v, int width, char pad)
{
    char tmp[32];
    int n = snprintf(tmp, sizeof(tmp), "%lld", (long long)(v < 0 ? -v : v));
    if (v < 0)
        put(o, "-", 1);
    for (int i = n + (v < 0); pad && i < width; i++)
        put(o, &pad, 1);
    put(o, tmp, (size_t)n);
}

static void frac(struct out *o, int32_t nsec, int digits, bool dot)
{
    if (digits == 0) { /* automatic: 0, 3, 6 or 9 digits */
        if (nsec == 0)
            return;
        digits = nsec % 1000000 == 0 ? 3 : nsec % 1000 == 0 ? 6 : 9;
    }
    char tmp[16];
    snprintf(tmp, sizeof(tmp), "%09d", (int)nsec);
    if (dot)
        put(o, ".", 1);
    put(o, tmp, (size_t)digits);
}

/* ISO 8601 week-based year and week of tm. */
static void iso_week(const struct timefmt_tm *tm, int64_t *iso_year, int *week)
{
    int wd = (tm->wday + 6) % 7; /* Monday = 0 */
    int w = (tm->yday - wd + 10) / 7;
    int64_t y = tm->year;
    if (w < 1) {
        y--;
        int prev_days = is_leap(y) ? 366 : 365;
        w = (tm->yday + prev_days - wd + 10) / 7;
    } else {
        int days = is_leap(y) ? 366 : 365;
        if (w == 53 && (tm->yday - wd + 3) >= days) {
            y++;
            w = 1;
        }
    }
    *iso_year = y;
    *week = w;
}

static void year4(struct out *o, int64_t y, char pad)
{
    if (y > 9999)
        put(o, "+", 1);
    num(o, y, 4, pad);
}

size_t timefmt_format(int64_t sec, int32_t nsec, const char *fmt, char *buf, size_t cap)
{
    struct out o = {buf, cap, 0};
    struct timefmt_tm tm;
    timefmt_breakdown(sec, &tm);
    for (const char *p = fmt; *p;) {
        if (*p != '%') {
            put(&o, p++, 1);
            continue;
        }
        const char *start = p++;
        char pad = 0; /* 0: the specifier's default */
        if (*p == '-' || *p == '_' || *p == '0') {
            pad = *p == '-' ? 1 : *p == '_' ? ' ' : '0';
            p++;
        }
#define PAD(def) (pad == 1 ? 0 : pad ? pad : (def))
        char ch = *p;
        if (ch == 0) { /* a lone '%' at the end */
            puts_(&o, start);
            break;
        }
        p++;
        switch (ch) {
        case 'Y':
            year4(&o, tm.year, PAD('0'));
            break;
        case 'C':
            num(&o, floor_div(tm.year, 100), 2, PAD('0'));
            break;
        case 'y':
            num(&o, tm.year - floor_div(tm.year, 100) * 100, 2, PAD('0'));
            break;
        case 'm':
            num(&o, tm.month, 2, PAD('0'));
            break;
        case 'b':
        case 'h':
            puts_(&o, month_abbr[tm.month - 1]);
            break;
        case 'B':
            puts_(&o, month_full[tm.month - 1]);
            break;
        case 'd':
            num(&o, tm.day, 2, PAD('0'));
            break;
        case 'e':
            num(&o, tm.day, 2, PAD(' '));
            break;
        case 'a':
            puts_(&o, wday_abbr[tm.wday]);
            break;
        case 'A':
            puts_(&o, wday_full[tm.wday]);
            break;
        case 'w':
            num(&o, tm.wday, 1, 0);
            break;
        case 'u':
            num(&o, tm.wday == 0 ? 7 : tm.wday, 1, 0);
            break;
        case 'U':
            num(&o, (tm.yday + 7 - tm.wday) / 7, 2, PAD('0'));
            break;
        case 'W':
            num(&o, (tm.yday + 7 - (tm.wday + 6) % 7) / 7, 2, PAD('0'));
            break;
        case 'G':
        case 'g':
        case 'V': {
            int64_t iy;
            int wk;
            iso_week(&tm, &iy, &wk);
            if (ch == 'G')
                year4(&o, iy, PAD('0'));
            else if (ch == 'g')
                num(&o, iy - floor_div(iy, 100) * 100, 2, PAD('0'));
            else
                num(&o, wk, 2, PAD('0'));
            break;
        }
        case 'j':
            num(&o, tm.yday + 1, 3, PAD('0'));
            break;
        case 'D':
        case 'x':
            num(&o, tm.month, 2, '0');
            put(&o, "/", 1);
            num(&o, tm.day, 2, '0');
            put(&o, "/", 1);
            num(&o, tm.year - floor_div(tm.year, 100) * 100, 2, '0');
            break;
        case 'F':
            year4(&o, tm.year, '0');
            put(&o, "-", 1);
            num(&o, tm.month, 2, '0');
            put(&o, "-", 1);
            num(&o, tm.day, 2, '0');
            break;
        case 'v':
            num(&o, tm.day, 2, ' ');
            put(&o, "-", 1);
            puts_(&o, month_abbr[tm.month - 1]);
            put(&o, "-", 1);
            year4(&o, tm.year, '0');
            break;
        case 'H':
            num(&o, tm.hour, 2, PAD('0'));
            break;
        case 'k':
            num(&o, tm.hour, 2, PAD(' '));
            break;
        case 'I':
            num(&o, (tm.hour + 11) % 12 + 1, 2, PAD('0'));
            break;
        case 'l':
            num(&o, (tm.hour + 11) % 12 + 1, 2, PAD(' '));
            break;
        case 'P':
            puts_(&o, tm.hour < 12 ? "am" : "pm");
            break;
        case 'p':
            puts_(&o, tm.hour < 12 ? "AM" : "PM");
            break;
        case 'M':
            num(&o, tm.minute, 2, PAD('0'));
            break;
        case 'S':
            num(&o, tm.second, 2, PAD('0'));
            break;
        case 'f':
            frac(&o, nsec, 9, false);
            break;
        case '.':
            if (*p == 'f') {
                p++;
                frac(&o, nsec, 0, true);
            } else if ((*p == '3' || *p == '6' || *p == '9') && p[1] == 'f') {
                frac(&o, nsec, *p - '0', true);
                p += 2;
            } else {
                put(&o, start, (size_t)(p - start));
            }
            break;
        case '3':
        case '6':
        case '9':
            if (*p == 'f') {
                p++;
                frac(&o, nsec, ch - '0', false);
            } else {
                put(&o, start, (size_t)(p - start));
            }
            break;
        case 'R':
        case 'T':
        case 'X':
            num(&o, tm.hour, 2, '0');
            put(&o, ":", 1);
            num(&o, tm.minute, 2, '0');
            if (ch != 'R') {
                put(&o, ":", 1);
                num(&o, tm.second, 2, '0');
            }
            break;
        case 'r':
            num(&o, (tm.hour + 11) % 12 + 1, 2, '0');
            put(&o, ":", 1);
            num(&o, tm.minute, 2, '0');
            put(&o, ":", 1);
            num(&o, tm.second, 2, '0');
            puts_(&o, tm.hour < 12 ? " AM" : " PM");
            break;
        case 'Z':
            puts_(&o, "UTC");
            break;
        case 'z':
            puts_(&o, "+0000");
            break;
        case '#':
            if (*p == 'z') {
                p++;
                puts_(&o, "+00");
            } else {
                put(&o, start, (size_t)(p - start));
            }
            break;
        case ':':
            if (*p == 'z') {
                p++;
                puts_(&o, "+00:00");
            } else if (p[0] == ':' && p[1] == 'z') {
                p += 2;
                puts_(&o, "+00:00:00");
            } else if (p[0] == ':' && p[1] == ':' && p[2] == 'z') {
                p += 3;
                puts_(&o, "+00");
            } else {
                put(&o, start, (size_t)(p - start));
            }
            break;
        case 'c':
            puts_(&o, wday_abbr[tm.wday]);
            put(&o, " ", 1);
            puts_(&o, month_abbr[tm.month - 1]);
            put(&o, " ", 1);
            num(&o, tm.day, 2, ' ');
            put(&o, " ", 1);
            num(&o, tm.hour, 2, '0');
            put(&o, ":", 1);
            num(&o, tm.minute, 2, '0');
            put(&o, ":", 1);
            num(&o, tm.second, 2, '0');
            put(&o, " ", 1);
            year4(&o, tm.year, '0');
            break;
        case '+':
            year4(&o, tm.year, '0');
            put(&o, "-", 1);
            num(&o, tm.month, 2, '0');
            put(&o, "-", 1);
            num(&o, tm.day, 2, '0');
            put(&o, "T", 1);
            num(&o, tm.hour, 2, '0');
            put(&o, ":", 1);
            num(&o, tm.minute, 2, '0');
            put(&o, ":", 1);
            num(&o, tm.second, 2, '0');
            frac(&o, nsec, 0, true);
            puts_(&o, "+00:00");
            break;
        case 's':
            num(&o, sec, 1, 0);
            break;
        case 't':
            put(&o, "\t", 1);
            break;
        case 'n':
            put(&o, "\n", 1);
            break;
        case '%':
            put(&o, "%", 1);
            break;
        default:
            put(&o, start, (size_t)(p - start));
            break;
        }
#undef PAD
    }
    if (o.cap)
        o.buf[o.len < o.cap ? o.len : o.cap - 1] = 0;
    return o.len;
}
