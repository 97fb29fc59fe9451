/* Throttle specs in KumoMTA's grammar and a generic cell rate algorithm (GCRA)
 * over them. A spec "LIMIT/PERIOD" admits one event every PERIOD/LIMIT (the
 * emission interval) on average, and up to max_burst events at once after a
 * quiet spell; the whole state is one "theoretical arrival time", so a throttle
 * embedded in a queue costs eight bytes. The state is owned by whoever embeds
 * it (normally one reactor thread); these functions keep no state of their own
 * and run on any thread. Parse errors are KERR_PARSE; taking a token never
 * fails, it only says how long to wait. */
#include "core/throttle.h"

#include <string.h>

#include "core/kerr.h"

#define NS_PER_SEC_ 1000000000LL

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static bool is_alpha(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

/* Parses [start, end) as digits with optional ',' / '_' separators ("5,000",
 * "1_000"). At least one digit; no other characters. */
static int parse_separated(const char *start, const char *end, uint64_t *out)
{
    uint64_t v = 0;
    bool any = false;
    for (const char *p = start; p < end; p++) {
        if (*p == ',' || *p == '_')
            continue;
        if (!is_digit(*p))
            return KERR_PARSE;
        if (__builtin_mul_overflow(v, 10u, &v) ||
            __builtin_add_overflow(v, (uint64_t)(*p - '0'), &v))
            return KERR_PARSE;
        any = true;
    }
    if (!any)
        return KERR_PARSE;
    *out = v;
    return 0;
}

struct period_unit {
    const char *name;
    int64_t secs;
};

/* KumoMTA's spellings, plus plurals for the "10/5 minutes" style. */
static const struct period_unit period_units[] = {
    {"s", 1},     {"sec", 1},     {"secs", 1},     {"second", 1},  {"seconds", 1},
    {"m", 60},    {"min", 60},    {"mins", 60},    {"minute", 60}, {"minutes", 60},
    {"h", 3600},  {"hr", 3600},   {"hrs", 3600},   {"hour", 3600}, {"hours", 3600},
    {"d", 86400}, {"day", 86400}, {"days", 86400},
};

static int64_t period_unit_lookup(const char *name, size_t len)
{
    for (size_t i = 0; i < sizeof(period_units) / sizeof(period_units[0]); i++) {
        if (strlen(period_units[i].name) == len && memcmp(period_units[i].name, name, len) == 0)
            return period_units[i].secs;
    }
    return 0;
}

/* PERIOD is [COUNT[ ]]UNIT over [start, end). */
static int parse_period(const char *start, const char *end, int64_t *out_ns)
{
    const char *p = start;
    int64_t count = 1;
    if (p < end && is_digit(*p)) {
        count = 0;
        for (; p < end && is_digit(*p); p++) {
            if (__builtin_mul_overflow(count, 10, &count) ||
                __builtin_add_overflow(count, *p - '0', &count))
                return KERR_PARSE;
        }
        while (p < end && *p == ' ')
            p++;
    }
    const char *unit = p;
    while (p < end && is_alpha(*p))
        p++;
    if (p != end || p == unit)
        return KERR_PARSE;
    int64_t secs = period_unit_lookup(unit, (size_t)(p - unit));
    int64_t ns;
    if (!secs || count <= 0 || __builtin_mul_overflow(count, secs, &ns) ||
        __builtin_mul_overflow(ns, NS_PER_SEC_, &ns))
        return KERR_PARSE;
    *out_ns = ns;
    return 0;
}

int throttle_spec_parse(const char *s, throttle_spec *out)
{
    static const char local_prefix[] = "local:";
    static const char burst_key[] = ",max_burst=";
    if (!s || !out)
        return KERR_INVAL;
    throttle_spec spec = {0};
    if (strncmp(s, local_prefix, sizeof(local_prefix) - 1) == 0) {
        spec.local = true;
        s += sizeof(local_prefix) - 1;
    }
    /* LIMIT may itself contain ',' ("5,000/hour"), so the option is found by its
     * full key rather than by splitting at the first comma. */
    const char *end = s + strlen(s);
    const char *burst = strstr(s, burst_key);
    bool has_burst = burst != NULL;
    if (has_burst) {
        if (parse_separated(burst + sizeof(burst_key) - 1, end, &spec.max_burst) < 0 ||
            spec.max_burst == 0)
            return KERR_PARSE;
        end = burst;
    }
    const char *slash = memchr(s, '/', (size_t)(end - s));
    if (!slash)
        return KERR_PARSE;
    if (parse_separated(s, slash, &spec.limit) < 0 || spec.limit == 0)
        return KERR_PARSE;
    if (parse_period(slash + 1, end, &spec.period_ns) < 0)
        return KERR_PARSE;
    if (!has_burst)
        spec.max_burst = spec.limit;
    *out = spec;
    return 0;
}

static int64_t sat_add(int64_t a, int64_t b)
{
    int64_t r;
    if (__builtin_add_overflow(a, b, &r))
        return b > 0 ? INT64_MAX : INT64_MIN;
    return r;
}

static int64_t sat_sub(int64_t a, int64_t b)
{
    int64_t r;
    if (__builtin_sub_overflow(a, b, &r))
        return b < 0 ? INT64_MAX : INT64_MIN;
    return r;
}

int64_t throttle_take(throttle_state *st, const throttle_spec *spec, int64_t now_ns)
{
    /* A spec that is not from throttle_spec_parse, or one allowing more than
     * an event per nanosecond, never limits. */
    if (spec->period_ns <= 0 || spec->limit == 0 || spec->limit > (uint64_t)spec->period_ns)
        return 0;
    /* The emission interval, truncated to whole nanoseconds: for "7/s" that
     * admits a few billionths more than asked, which nobody can observe. */
    int64_t interval = spec->period_ns / (int64_t)spec->limit;

    /* The burst tolerance: how far ahead of now the arrival time may run. */
    uint64_t burst = spec->max_burst ? spec->max_burst : 1;
    int64_t tolerance;
    if (burst > (uint64_t)INT64_MAX || __builtin_mul_overflow(interval, (int64_t)burst, &tolerance))
        tolerance = INT64_MAX;

    int64_t tat = st->tat_ns > now_ns ? st->tat_ns : now_ns;
    int64_t new_tat = sat_add(tat, interval);
    /* GCRA admits when new_tat - tolerance <= now; written as a difference
     * from now so that nothing overflows near the ends of the clock. */
    int64_t ahead = sat_sub(new_tat, now_ns);
    if (ahead > tolerance)
        return ahead - tolerance;
    st->tat_ns = new_tat;
    return 0;
}

int64_t throttle_take_n(throttle_state *st, const throttle_spec *spec, int64_t now_ns,
                        uint64_t want, uint64_t *granted, throttle_info *info)
{
    *granted = 0;
    if (want == 0)
        want = 1;
    uint64_t burst = spec->max_burst ? spec->max_burst : 1;
    if (info) {
        info->limit = burst;
        info->remaining = burst;
        info->reset_after_ns = 0;
    }
    if (spec->period_ns <= 0 || spec->limit == 0 || spec->limit > (uint64_t)spec->period_ns) {
        *granted = want;
        return 0;
    }
    int64_t interval = spec->period_ns / (int64_t)spec->limit;
    int64_t tolerance;
    if (burst > (uint64_t)INT64_MAX || __builtin_mul_overflow(interval, (int64_t)burst, &tolerance))
        tolerance = INT64_MAX;
    int64_t tat = st->tat_ns > now_ns ? st->tat_ns : now_ns;
    /* room: how many intervals fit between tat and now + tolerance */
    int64_t behind = sat_sub(tat, now_ns); /* >= 0 */
    int64_t slack = tolerance - behind;    /* may be negative */
    uint64_t room = slack >= interval ? (uint64_t)(slack / interval) : 0;
    if (room == 0) {
        if (info) {
            info->remaining = 0;
            info->reset_after_ns = behind;
        }
        return interval - slack; /* > 0: until one interval fits */
    }
    uint64_t n = want < room ? want : room;
    int64_t step;
    if (n > (uint64_t)INT64_MAX || __builtin_mul_overflow(interval, (int64_t)n, &step))
        step = INT64_MAX;
    st->tat_ns = sat_add(tat, step);
    *granted = n;
    if (info) {
        info->remaining = room - n;
        info->reset_after_ns = sat_sub(st->tat_ns, now_ns);
    }
    return 0;
}
