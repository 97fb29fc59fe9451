/* Scheduling windows. Time-zone conversion goes through the C library with
 * TZ switched under a mutex: windows are rare and the libc has no
 * thread-safe per-call zone API. */
#include "queue/schedule.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "core/kerr.h"

int sched_parse_rfc3339(const char *s, int64_t *out)
{
    int Y, M, D, h, m, sec, n = 0;
    if (!s || sscanf(s, "%4d-%2d-%2d%*[Tt ]%2d:%2d:%2d%n", &Y, &M, &D, &h, &m, &sec, &n) != 6)
        return KERR_PARSE;
    const char *p = s + n;
    if (*p == '.')
        for (p++; *p >= '0' && *p <= '9'; p++)
            ;
    int off = 0;
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int oh, om;
        if (sscanf(p + 1, "%2d:%2d", &oh, &om) != 2)
            return KERR_PARSE;
        off = (oh * 60 + om) * 60 * (*p == '-' ? -1 : 1);
        p += 6;
    } else {
        return KERR_PARSE;
    }
    if (*p)
        return KERR_PARSE;
    struct tm tm = {0};
    tm.tm_year = Y - 1900;
    tm.tm_mon = M - 1;
    tm.tm_mday = D;
    tm.tm_hour = h;
    tm.tm_min = m;
    tm.tm_sec = sec;
    *out = (int64_t)timegm(&tm) - off;
    return 0;
}

static int parse_hms(const char *s)
{
    int h = 0, m = 0, sec = 0;
    if (!s || sscanf(s, "%d:%d:%d", &h, &m, &sec) < 2)
        return -1;
    return h * 3600 + m * 60 + sec;
}

static unsigned parse_dow(const json_t *v)
{
    static const char *const names[] = {"sun", "mon", "tue", "wed", "thu", "fri", "sat"};
    unsigned mask = 0;
    char buf[256] = "";
    if (json_is_string(v)) {
        snprintf(buf, sizeof(buf), "%s", json_string_value(v));
    } else if (json_is_array(v)) {
        size_t i, o = 0;
        json_t *x;
        json_array_foreach(v, i, x) if (json_is_string(x)) o += (size_t)snprintf(
            buf + o, sizeof(buf) - o, "%s,", json_string_value(x));
    }
    for (char *save, *tok = strtok_r(buf, ", ", &save); tok; tok = strtok_r(NULL, ", ", &save))
        for (int d = 0; d < 7; d++)
            if (strncasecmp(tok, names[d], 3) == 0)
                mask |= 1u << d;
    return mask;
}

static pthread_mutex_t tz_lock = PTHREAD_MUTEX_INITIALIZER;

int64_t sched_window_adjust(const json_t *sc, int64_t due_s)
{
    if (!json_is_object(sc))
        return due_s;
    const json_t *dowv = json_object_get(sc, "dow");
    const char *tz = json_string_value(json_object_get(sc, "tz"));
    int start = parse_hms(json_string_value(json_object_get(sc, "start")));
    int end = parse_hms(json_string_value(json_object_get(sc, "end")));
    unsigned dow = parse_dow(dowv);
    if (!dowv || !tz || start < 0 || end < 0 || dow == 0)
        return due_s;
    pthread_mutex_lock(&tz_lock);
    char *old = getenv("TZ") ? strdup(getenv("TZ")) : NULL;
    setenv("TZ", strcasecmp(tz, "UTC") == 0 ? "UTC0" : tz, 1);
    tzset();
    int64_t result = due_s;
    for (int day = 0; day < 8; day++) {
        time_t t = (time_t)(due_s + (int64_t)day * 86400);
        struct tm lt;
        localtime_r(&t, &lt);
        if (day > 0) {
            /* candidate: this day's window start */
            lt.tm_hour = start / 3600;
            lt.tm_min = (start % 3600) / 60;
            lt.tm_sec = start % 60;
            lt.tm_isdst = -1;
            t = mktime(&lt);
            localtime_r(&t, &lt);
        }
        int tod = lt.tm_hour * 3600 + lt.tm_min * 60 + lt.tm_sec;
        if (!(dow & (1u << lt.tm_wday)))
            continue;
        if (tod >= start && tod < end) {
            result = (int64_t)t;
            break;
        }
        if (tod < start) {
            lt.tm_hour = start / 3600;
            lt.tm_min = (start % 3600) / 60;
            lt.tm_sec = start % 60;
            lt.tm_isdst = -1;
            result = (int64_t)mktime(&lt);
            break;
        }
    }
    if (old) {
        setenv("TZ", old, 1);
        free(old);
    } else {
        unsetenv("TZ");
    }
    tzset();
    pthread_mutex_unlock(&tz_lock);
    return result;
}
