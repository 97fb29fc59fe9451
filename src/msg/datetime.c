/* Date parsing and formatting for headers and policy timestamps. Calendar
 * arithmetic is done here (days from civil date) rather than with timegm,
 * so that hostile years and offsets cannot overflow a time_t; values are
 * range-checked before use. Any thread. */
#include "msg/datetime.h"

#include <ctype.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "core/kerr.h"

/* Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
 * well-known algorithm). */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

static void civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d)
{
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    unsigned doe = (unsigned)(z - era * 146097);
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t yy = (int64_t)yoe + era * 400;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    unsigned mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = yy + (*m <= 2);
}

static bool valid_ymdhms(int64_t y, int mo, int d, int h, int mi, int s)
{
    static const int mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    return y >= 1 && y <= 9999 && mo >= 1 && mo <= 12 && d >= 1 && d <= mdays[mo - 1] && h >= 0 &&
           h <= 23 && mi >= 0 && mi <= 59 && s >= 0 && s <= 60;
}

static int digits(const char **p, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (!isdigit((unsigned char)(*p)[i]))
            return KERR_PARSE;
        v = v * 10 + ((*p)[i] - '0');
    }
    *p += n;
    *out = v;
    return 0;
}

int rfc3339_parse(const char *s, int64_t *ns)
{
    const char *p = s;
    int y, mo, d, h, mi, sec;
    if (digits(&p, 4, &y) || *p++ != '-' || digits(&p, 2, &mo) || *p++ != '-' || digits(&p, 2, &d))
        return KERR_PARSE;
    if (*p != 'T' && *p != 't' && *p != ' ')
        return KERR_PARSE;
    p++;
    if (digits(&p, 2, &h) || *p++ != ':' || digits(&p, 2, &mi) || *p++ != ':' ||
        digits(&p, 2, &sec))
        return KERR_PARSE;
    int64_t frac = 0;
    if (*p == '.' || *p == ',') {
        p++;
        int nd = 0;
        while (isdigit((unsigned char)*p)) {
            if (nd < 9) {
                frac = frac * 10 + (*p - '0');
                nd++;
            }
            p++;
        }
        if (nd == 0)
            return KERR_PARSE;
        while (nd++ < 9)
            frac *= 10;
    }
    int off = 0;
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int sign = *p++ == '-' ? -1 : 1;
        int oh, om;
        if (digits(&p, 2, &oh))
            return KERR_PARSE;
        if (*p == ':')
            p++;
        if (digits(&p, 2, &om) || oh > 23 || om > 59)
            return KERR_PARSE;
        off = sign * (oh * 3600 + om * 60);
    } else {
        return KERR_PARSE;
    }
    if (*p || !valid_ymdhms(y, mo, d, h, mi, sec))
        return KERR_PARSE;
    int64_t secs =
        days_from_civil(y, (unsigned)mo, (unsigned)d) * 86400 + h * 3600 + mi * 60 + sec - off;
    /* nanoseconds in 64 bits reach from 1677 to 2262 (found by fuzz_reports:
     * year 1013 overflowed the multiplication) */
    if (secs <= INT64_MIN / 1000000000LL || secs >= INT64_MAX / 1000000000LL)
        return KERR_RANGE;
    *ns = secs * 1000000000LL + frac;
    return 0;
}

/* ---- RFC 5322 ------------------------------------------------------------------- */

typedef struct scan {
    const char *s;
    size_t n, i;
} scan;

/* Skips white space, commas and comments. */
static void skip(scan *c)
{
    while (c->i < c->n) {
        char ch = c->s[c->i];
        if (ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n' || ch == ',') {
            c->i++;
        } else if (ch == '(') {
            int depth = 0;
            while (c->i < c->n) {
                char x = c->s[c->i++];
                if (x == '\\' && c->i < c->n)
                    c->i++;
                else if (x == '(')
                    depth++;
                else if (x == ')' && --depth == 0)
                    break;
            }
        } else {
            return;
        }
    }
}

static bool num(scan *c, int maxd, int *out, int *nd)
{
    skip(c);
    int v = 0, k = 0;
    while (c->i < c->n && k < maxd && isdigit((unsigned char)c->s[c->i])) {
        v = v * 10 + (c->s[c->i++] - '0');
        k++;
    }
    if (nd)
        *nd = k;
    *out = v;
    return k > 0;
}

static bool word(scan *c, char *out, size_t len)
{
    skip(c);
    size_t k = 0;
    while (c->i < c->n && isalpha((unsigned char)c->s[c->i])) {
        if (k + 1 < len)
            out[k++] = c->s[c->i];
        c->i++;
    }
    out[k] = 0;
    return k > 0;
}

int rfc5322_date_parse(const char *s, size_t n, int64_t *secs)
{
    static const char *const months[] = {"jan", "feb", "mar", "apr", "may", "jun",
                                         "jul", "aug", "sep", "oct", "nov", "dec"};
    scan c = {s, n, 0};
    char w[16];
    skip(&c);
    size_t save = c.i;
    if (word(&c, w, sizeof(w))) {
        /* day-of-week: checked only for being a word */
        if (strlen(w) < 3)
            return KERR_PARSE;
    } else {
        c.i = save;
    }
    int d, y, h, mi, sec = 0, nd;
    if (!num(&c, 2, &d, NULL))
        return KERR_PARSE;
    if (!word(&c, w, sizeof(w)) || strlen(w) < 3)
        return KERR_PARSE;
    int mo = 0;
    for (int i = 0; i < 12; i++)
        if (strncasecmp(w, months[i], 3) == 0)
            mo = i + 1;
    if (!mo || !num(&c, 4, &y, &nd))
        return KERR_PARSE;
    if (nd == 2)
        y += y < 50 ? 2000 : 1900; /* RFC 5322 §4.3 */
    else if (nd == 3)
        y += 1900;
    if (!num(&c, 2, &h, NULL))
        return KERR_PARSE;
    skip(&c);
    if (c.i >= c.n || c.s[c.i] != ':')
        return KERR_PARSE;
    c.i++;
    if (!num(&c, 2, &mi, NULL))
        return KERR_PARSE;
    skip(&c);
    if (c.i < c.n && c.s[c.i] == ':') {
        c.i++;
        if (!num(&c, 2, &sec, NULL))
            return KERR_PARSE;
    }
    skip(&c);
    int off = 0;
    if (c.i < c.n && (c.s[c.i] == '+' || c.s[c.i] == '-')) {
        int sign = c.s[c.i++] == '-' ? -1 : 1;
        int z;
        if (!num(&c, 4, &z, &nd) || nd != 4 || z % 100 > 59)
            return KERR_PARSE;
        off = sign * ((z / 100) * 3600 + (z % 100) * 60);
    } else if (word(&c, w, sizeof(w))) {
        /* RFC 5322 §4.3 obs-zone */
        static const struct {
            const char *name;
            int hours;
        } zones[] = {{"UT", 0},   {"GMT", 0},  {"Z", 0},    {"EST", -5}, {"EDT", -4}, {"CST", -6},
                     {"CDT", -5}, {"MST", -7}, {"MDT", -6}, {"PST", -8}, {"PDT", -7}, {"UTC", 0}};
        bool found = false;
        for (size_t i = 0; i < sizeof(zones) / sizeof(zones[0]); i++)
            if (strcasecmp(w, zones[i].name) == 0) {
                off = zones[i].hours * 3600;
                found = true;
            }
        if (!found && strlen(w) != 1) /* military zones count as -0000 */
            return KERR_PARSE;
    } else {
        return KERR_PARSE;
    }
    skip(&c);
    if (c.i != c.n || !valid_ymdhms(y, mo, d, h, mi, sec))
        return KERR_PARSE;
    *secs = days_from_civil(y, (unsigned)mo, (unsigned)d) * 86400 + h * 3600 + mi * 60 + sec - off;
    return 0;
}

void rfc5322_date_format(int64_t secs, char *buf, size_t len)
{
    static const char *const days[] = {"Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"};
    static const char *const months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                         "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    int64_t day = secs >= 0 ? secs / 86400 : (secs - 86399) / 86400;
    int64_t rem = secs - day * 86400;
    int64_t y;
    unsigned m, d;
    civil_from_days(day, &y, &m, &d);
    int dow = (int)(((day % 7) + 7) % 7);
    snprintf(buf, len, "%s, %u %s %lld %02d:%02d:%02d +0000", days[dow], d, months[m - 1],
             (long long)y, (int)(rem / 3600), (int)(rem % 3600 / 60), (int)(rem % 60));
}

void iso8601_format(int64_t secs, char *buf, size_t len)
{
    int64_t day = secs >= 0 ? secs / 86400 : (secs - 86399) / 86400;
    int64_t rem = secs - day * 86400;
    int64_t y;
    unsigned m, d;
    civil_from_days(day, &y, &m, &d);
    snprintf(buf, len, "%04lld-%02u-%02uT%02d:%02d:%02dZ", (long long)y, m, d, (int)(rem / 3600),
             (int)(rem % 3600 / 60), (int)(rem % 60));
}
