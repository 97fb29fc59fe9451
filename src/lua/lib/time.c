/* kumo.time bindings over timefmt.c. Time and TimeDelta are userdata of
 * (seconds, nanoseconds 0..999999999); arithmetic checks for overflow and
 * raises "time would overflow". Timers feed the user_lua_latency histogram
 * (label = the timer's label) once, at done(), at the end of a <close>
 * scope, or when collected. Runs on the VM's thread; errors are Lua errors
 * naming the function and argument. */
#include "lua/lib/time.h"

#include <lauxlib.h>
#include <math.h>
#include <stdio.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "core/duration.h"
#include "core/kerr.h"
#include "core/reactor.h"
#include "lua/klua.h"
#include "lua/lib/timefmt.h"
#include "metrics/metrics.h"

#define TIME_MT "kumo.Time"
#define DELTA_MT "kumo.TimeDelta"
#define TIMER_MT "kumo.Timer"

/* chrono's range, about +-262,000 years: keeps every field computation far
 * from int64 overflow. */
#define MAX_SECS 8210266876799LL

struct kt {
    int64_t sec;
    int32_t nsec;
};

static bool normalise(int64_t sec, int64_t nsec, struct kt *out)
{
    sec += nsec / NS_PER_SEC;
    nsec %= NS_PER_SEC;
    if (nsec < 0) {
        nsec += NS_PER_SEC;
        sec--;
    }
    if (sec > MAX_SECS || sec < -MAX_SECS)
        return false;
    out->sec = sec;
    out->nsec = (int32_t)nsec;
    return true;
}

static void push_kt(lua_State *L, struct kt v, const char *mt)
{
    struct kt *u = lua_newuserdatauv(L, sizeof(*u), 0);
    *u = v;
    luaL_setmetatable(L, mt);
}

void ktime_push(lua_State *L, int64_t sec, int32_t nsec)
{
    push_kt(L, (struct kt){sec, nsec}, TIME_MT);
}

bool ktime_test(lua_State *L, int idx, int64_t *sec, int32_t *nsec)
{
    struct kt *t = luaL_testudata(L, idx, TIME_MT);
    if (!t)
        return false;
    *sec = t->sec;
    *nsec = t->nsec;
    return true;
}

static void push_delta(lua_State *L, struct kt v)
{
    push_kt(L, v, DELTA_MT);
}

static struct kt now_kt(void)
{
    int64_t ns = clock_wall_ns();
    return (struct kt){ns / NS_PER_SEC, (int32_t)(ns % NS_PER_SEC)};
}

/* ---- constructors ---------------------------------------------------------- */

static int l_now(lua_State *L)
{
    push_kt(L, now_kt(), TIME_MT);
    return 1;
}

/* seconds (integer or float) -> kt; false when out of range */
static bool secs_to_kt(lua_State *L, int idx, struct kt *out)
{
    if (lua_isinteger(L, idx))
        return normalise(lua_tointeger(L, idx), 0, out);
    double d = lua_tonumber(L, idx);
    if (!isfinite(d) || fabs(d) > (double)MAX_SECS)
        return false;
    double whole = floor(d);
    return normalise((int64_t)whole, (int64_t)llround((d - whole) * 1e9), out);
}

static int l_from_unix_timestamp(lua_State *L)
{
    if (lua_type(L, 1) != LUA_TNUMBER)
        return luaL_error(L,
                          "kumo.time.from_unix_timestamp: timestamp must be either an integer "
                          "or floating point number of seconds, got %s",
                          luaL_typename(L, 1));
    struct kt t;
    if (!secs_to_kt(L, 1, &t))
        return luaL_error(L, "kumo.time.from_unix_timestamp: invalid timestamp");
    push_kt(L, t, TIME_MT);
    return 1;
}

static int l_with_ymd_hms(lua_State *L)
{
    static const char *const names[] = {"YEAR", "MONTH", "DAY", "HOUR", "MINUTE", "SECOND"};
    lua_Integer v[6];
    for (int i = 0; i < 6; i++) {
        int isnum = 0;
        v[i] = lua_tointegerx(L, i + 1, &isnum);
        if (!isnum)
            return luaL_error(L, "kumo.time.with_ymd_hms: argument #%d (%s) must be an integer",
                              i + 1, names[i]);
    }
    if (v[0] < -262000 || v[0] > 262000 || v[1] < 1 || v[1] > 12 || v[2] < 1 || v[2] > 31 ||
        v[3] < 0 || v[3] > 23 || v[4] < 0 || v[4] > 59 || v[5] < 0 || v[5] > 59)
        return luaL_error(L, "kumo.time.with_ymd_hms: invalid date/time");
    int64_t days = timefmt_days_from_civil(v[0], (int)v[1], (int)v[2]);
    struct timefmt_tm tm;
    timefmt_breakdown(days * 86400, &tm);
    if (tm.day != v[2]) /* 31 April and the like */
        return luaL_error(L, "kumo.time.with_ymd_hms: invalid date/time");
    push_kt(L, (struct kt){days * 86400 + v[3] * 3600 + v[4] * 60 + v[5], 0}, TIME_MT);
    return 1;
}

static int parse_common(lua_State *L, const char *fname,
                        int (*parse)(const char *, size_t, int64_t *, int32_t *))
{
    if (lua_type(L, 1) != LUA_TSTRING)
        return luaL_error(L, "kumo.time.%s: argument #1 must be a string, got %s", fname,
                          luaL_typename(L, 1));
    size_t n;
    const char *s = lua_tolstring(L, 1, &n);
    struct kt t;
    if (parse(s, n, &t.sec, &t.nsec) != 0 || t.sec > MAX_SECS || t.sec < -MAX_SECS)
        return luaL_error(L, "kumo.time.%s: '%s%s' is not a valid %s timestamp", fname,
                          lua_pushlstring(L, s, n > 80 ? 80 : n), n > 80 ? "..." : "",
                          strcmp(fname, "parse_rfc2822") == 0 ? "RFC 2822" : "RFC 3339");
    push_kt(L, t, TIME_MT);
    return 1;
}

static int l_parse_rfc2822(lua_State *L)
{
    return parse_common(L, "parse_rfc2822", timefmt_parse_rfc2822);
}

static int l_parse_rfc3339(lua_State *L)
{
    return parse_common(L, "parse_rfc3339", timefmt_parse_rfc3339);
}

static int l_parse_duration(lua_State *L)
{
    struct kt d = {0, 0};
    switch (lua_type(L, 1)) {
    case LUA_TNUMBER:
        if (!secs_to_kt(L, 1, &d))
            return luaL_error(L, "kumo.time.parse_duration: seconds out of range");
        break;
    case LUA_TSTRING: {
        int64_t ns;
        const char *s = lua_tostring(L, 1);
        if (duration_parse(s, &ns) != 0)
            return luaL_error(L, "kumo.time.parse_duration: invalid duration '%s'", s);
        normalise(0, ns, &d);
        break;
    }
    default:
        return luaL_error(L,
                          "kumo.time.parse_duration: invalid duration value: expected a number "
                          "of seconds or a duration string, got %s",
                          luaL_typename(L, 1));
    }
    push_delta(L, d);
    return 1;
}

/* ---- Time ---------------------------------------------------------------------- */

static size_t format_into(lua_State *L, const struct kt *t, const char *fmt)
{
    char small[128];
    size_t n = timefmt_format(t->sec, t->nsec, fmt, small, sizeof(small));
    if (n < sizeof(small)) {
        lua_pushlstring(L, small, n);
        return n;
    }
    char *big = malloc(n + 1);
    if (!big)
        return (size_t)luaL_error(L, "out of memory formatting a time");
    timefmt_format(t->sec, t->nsec, fmt, big, n + 1);
    lua_pushlstring(L, big, n);
    free(big);
    return n;
}

static int l_time_tostring(lua_State *L)
{
    struct kt *t = luaL_checkudata(L, 1, TIME_MT);
    format_into(L, t, "%Y-%m-%d %H:%M:%S%.f UTC");
    return 1;
}

static int l_time_format(lua_State *L)
{
    struct kt *t = luaL_checkudata(L, 1, TIME_MT);
    if (lua_type(L, 2) != LUA_TSTRING)
        return luaL_error(L, "Time:format: argument #1 must be a format string, got %s",
                          luaL_typename(L, 2));
    format_into(L, t, lua_tostring(L, 2));
    return 1;
}

static struct kt delta_between(const struct kt *a, const struct kt *b)
{
    struct kt d = {0, 0};
    normalise(a->sec - b->sec, (int64_t)a->nsec - b->nsec, &d);
    return d;
}

static int l_time_index(lua_State *L)
{
    struct kt *t = luaL_checkudata(L, 1, TIME_MT);
    if (lua_type(L, 2) != LUA_TSTRING) {
        lua_pushnil(L);
        return 1;
    }
    const char *k = lua_tostring(L, 2);
    struct timefmt_tm tm;
    timefmt_breakdown(t->sec, &tm);
    if (strcmp(k, "year") == 0)
        lua_pushinteger(L, tm.year);
    else if (strcmp(k, "month") == 0)
        lua_pushinteger(L, tm.month);
    else if (strcmp(k, "day") == 0)
        lua_pushinteger(L, tm.day);
    else if (strcmp(k, "hour") == 0)
        lua_pushinteger(L, tm.hour);
    else if (strcmp(k, "minute") == 0)
        lua_pushinteger(L, tm.minute);
    else if (strcmp(k, "second") == 0)
        lua_pushinteger(L, tm.second);
    else if (strcmp(k, "unix_timestamp") == 0)
        lua_pushinteger(L, t->sec);
    else if (strcmp(k, "unix_timestamp_millis") == 0)
        lua_pushinteger(L, t->sec * 1000 + t->nsec / 1000000);
    else if (strcmp(k, "rfc2822") == 0)
        format_into(L, t, "%a, %-d %b %Y %H:%M:%S +0000");
    else if (strcmp(k, "rfc3339") == 0)
        format_into(L, t, "%Y-%m-%dT%H:%M:%S%.f+00:00");
    else if (strcmp(k, "elapsed") == 0) {
        struct kt now = now_kt();
        push_delta(L, delta_between(&now, t));
    } else if (strcmp(k, "format") == 0)
        lua_pushcfunction(L, l_time_format);
    else
        lua_pushnil(L);
    return 1;
}

static int cmp_kt(const struct kt *a, const struct kt *b)
{
    if (a->sec != b->sec)
        return a->sec < b->sec ? -1 : 1;
    return a->nsec < b->nsec ? -1 : a->nsec > b->nsec;
}

static int l_eq(lua_State *L)
{
    /* __eq is only called for two userdata; both must be of one kind */
    struct kt *a = luaL_testudata(L, 1, TIME_MT), *b = luaL_testudata(L, 2, TIME_MT);
    if (!a || !b) {
        a = luaL_testudata(L, 1, DELTA_MT);
        b = luaL_testudata(L, 2, DELTA_MT);
    }
    lua_pushboolean(L, a && b && cmp_kt(a, b) == 0);
    return 1;
}

static int l_lt(lua_State *L)
{
    const char *mt = luaL_testudata(L, 1, TIME_MT) ? TIME_MT : DELTA_MT;
    struct kt *a = luaL_checkudata(L, 1, mt), *b = luaL_checkudata(L, 2, mt);
    lua_pushboolean(L, cmp_kt(a, b) < 0);
    return 1;
}

static int l_le(lua_State *L)
{
    const char *mt = luaL_testudata(L, 1, TIME_MT) ? TIME_MT : DELTA_MT;
    struct kt *a = luaL_checkudata(L, 1, mt), *b = luaL_checkudata(L, 2, mt);
    lua_pushboolean(L, cmp_kt(a, b) <= 0);
    return 1;
}

static int arith(lua_State *L, int sign)
{
    struct kt *ta = luaL_testudata(L, 1, TIME_MT), *tb = luaL_testudata(L, 2, TIME_MT);
    struct kt *da = luaL_testudata(L, 1, DELTA_MT), *db = luaL_testudata(L, 2, DELTA_MT);
    struct kt r;
    const char *op = sign > 0 ? "+" : "-";
    if (ta && db) { /* Time +- TimeDelta */
        if (!normalise(ta->sec + sign * db->sec, (int64_t)ta->nsec + sign * db->nsec, &r))
            return luaL_error(L, "time would overflow");
        push_kt(L, r, TIME_MT);
    } else if (ta && tb && sign < 0) { /* Time - Time */
        push_delta(L, delta_between(ta, tb));
    } else if (da && db) {
        if (!normalise(da->sec + sign * db->sec, (int64_t)da->nsec + sign * db->nsec, &r))
            return luaL_error(L, "time would overflow");
        push_delta(L, r);
    } else if (da && tb && sign > 0) { /* TimeDelta + Time */
        if (!normalise(tb->sec + da->sec, (int64_t)tb->nsec + da->nsec, &r))
            return luaL_error(L, "time would overflow");
        push_kt(L, r, TIME_MT);
    } else {
        return luaL_error(L,
                          "cannot compute %s %s %s: Time %s TimeDelta, Time - Time and "
                          "TimeDelta %s TimeDelta are defined",
                          luaL_typename(L, 1), op, luaL_typename(L, 2), op, op);
    }
    return 1;
}

static int l_add(lua_State *L)
{
    return arith(L, 1);
}

static int l_sub(lua_State *L)
{
    return arith(L, -1);
}

/* ---- TimeDelta ----------------------------------------------------------------- */

static bool delta_ns(const struct kt *d, int64_t *ns)
{
    int64_t s;
    return !__builtin_mul_overflow(d->sec, NS_PER_SEC, &s) &&
           !__builtin_add_overflow(s, d->nsec, ns);
}

static int l_delta_human(lua_State *L, const struct kt *d)
{
    int64_t ns;
    char buf[160];
    if (delta_ns(d, &ns)) {
        duration_format(ns, buf, sizeof(buf));
    } else {
        /* past +-292 years humantime's nanoseconds overflow: whole seconds */
        snprintf(buf, sizeof(buf), "%llds", (long long)d->sec);
    }
    lua_pushstring(L, buf);
    return 1;
}

static int l_delta_tostring(lua_State *L)
{
    return l_delta_human(L, luaL_checkudata(L, 1, DELTA_MT));
}

static int l_delta_index(lua_State *L)
{
    struct kt *d = luaL_checkudata(L, 1, DELTA_MT);
    if (lua_type(L, 2) != LUA_TSTRING) {
        lua_pushnil(L);
        return 1;
    }
    const char *k = lua_tostring(L, 2);
    int64_t ns;
    bool fits = delta_ns(d, &ns);
    if (strcmp(k, "seconds") == 0)
        lua_pushnumber(L, (double)d->sec + d->nsec / 1e9);
    else if (strcmp(k, "nanoseconds") == 0)
        fits ? lua_pushinteger(L, ns) : lua_pushnil(L);
    else if (strcmp(k, "microseconds") == 0)
        lua_pushinteger(L, fits ? ns / 1000 : d->sec * 1000000 + d->nsec / 1000);
    else if (strcmp(k, "milliseconds") == 0)
        lua_pushinteger(L, fits ? ns / 1000000 : d->sec * 1000 + d->nsec / 1000000);
    else if (strcmp(k, "human") == 0)
        return l_delta_human(L, d);
    else
        lua_pushnil(L);
    return 1;
}

/* ---- timers ---------------------------------------------------------------- */

struct ktimer {
    int64_t start_ns;
    bool done;
    char label[];
};

static double timer_finish(struct ktimer *t)
{
    double secs = (double)(clock_mono_ns() - t->start_ns) / 1e9;
    if (t->done)
        return secs;
    t->done = true;
    static metrics_family *fam; /* registration is idempotent across threads */
    metrics_family *f = __atomic_load_n(&fam, __ATOMIC_ACQUIRE);
    if (!f) {
        metrics_histogram_family(&f, "user_lua_latency",
                                 "how long something user-defined took to run in your lua policy",
                                 (const char *[]){"label"}, 1, NULL, 0);
        __atomic_store_n(&fam, f, __ATOMIC_RELEASE);
    }
    if (f) {
        metrics_histogram *h = metrics_histogram_get(f, t->label, NULL);
        metrics_histogram_observe(h, secs);
        metrics_histogram_unref(h);
    }
    return secs;
}

static int l_start_timer(lua_State *L)
{
    if (lua_type(L, 1) != LUA_TSTRING)
        return luaL_error(L, "kumo.time.start_timer: argument #1 (LABEL) must be a string, got %s",
                          luaL_typename(L, 1));
    size_t n;
    const char *label = lua_tolstring(L, 1, &n);
    struct ktimer *t = lua_newuserdatauv(L, sizeof(*t) + n + 1, 0);
    t->start_ns = clock_mono_ns();
    t->done = false;
    memcpy(t->label, label, n + 1);
    luaL_setmetatable(L, TIMER_MT);
    return 1;
}

static int l_timer_done(lua_State *L)
{
    struct ktimer *t = luaL_checkudata(L, 1, TIMER_MT);
    lua_pushnumber(L, timer_finish(t));
    return 1;
}

static int l_timer_close(lua_State *L)
{
    timer_finish(luaL_checkudata(L, 1, TIMER_MT));
    return 0;
}

/* ---- module -------------------------------------------------------------------- */

static void time_open(lua_State *L)
{
    luaL_newmetatable(L, TIME_MT);
    static const luaL_Reg time_mt[] = {{"__index", l_time_index},
                                       {"__tostring", l_time_tostring},
                                       {"__eq", l_eq},
                                       {"__lt", l_lt},
                                       {"__le", l_le},
                                       {"__add", l_add},
                                       {"__sub", l_sub},
                                       {"__tojson", l_time_tostring},
                                       {NULL, NULL}};
    luaL_setfuncs(L, time_mt, 0);
    lua_pushstring(L, "Time");
    lua_setfield(L, -2, "__name");
    lua_pop(L, 1);
    luaL_newmetatable(L, DELTA_MT);
    static const luaL_Reg delta_mt[] = {{"__index", l_delta_index},
                                        {"__tostring", l_delta_tostring},
                                        {"__eq", l_eq},
                                        {"__lt", l_lt},
                                        {"__le", l_le},
                                        {"__add", l_add},
                                        {"__sub", l_sub},
                                        {"__tojson", l_delta_tostring},
                                        {NULL, NULL}};
    luaL_setfuncs(L, delta_mt, 0);
    lua_pushstring(L, "TimeDelta");
    lua_setfield(L, -2, "__name");
    lua_pop(L, 1);
    luaL_newmetatable(L, TIMER_MT);
    static const luaL_Reg timer_methods[] = {{"done", l_timer_done}, {NULL, NULL}};
    luaL_newlib(L, timer_methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_timer_close);
    lua_setfield(L, -2, "__close");
    lua_pushcfunction(L, l_timer_close);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);

    /* kumo.time exists already (klua.c puts sleep in it) */
    if (lua_getfield(L, -1, "time") != LUA_TTABLE) {
        lua_pop(L, 1);
        lua_newtable(L);
        lua_pushvalue(L, -1);
        lua_setfield(L, -3, "time");
    }
    static const luaL_Reg fns[] = {
        {"now", l_now},
        {"from_unix_timestamp", l_from_unix_timestamp},
        {"with_ymd_hms", l_with_ymd_hms},
        {"parse_rfc2822", l_parse_rfc2822},
        {"parse_rfc3339", l_parse_rfc3339},
        {"parse_duration", l_parse_duration},
        {"start_timer", l_start_timer},
        {NULL, NULL},
    };
    luaL_setfuncs(L, fns, 0);
    lua_pop(L, 1);
}

void time_lua_register(void)
{
    klua_register_opener(time_open);
}
