/* kumo.counter_series. The ring (cseries_*) is pure: buckets are indexed by
 * absolute slot number now / bucket_secs, and every access first zeroes the
 * slots that time has passed over. The Lua side keeps one process-wide
 * registry of named series under a mutex (any reactor may count into a
 * series); a handle points at its registry entry, so a re-definition with
 * another shape replaces the ring for every holder. Entries live until exit.
 * Errors are Lua errors naming the function and parameter. */
#include "lua/lib/counter_series.h"

#include <lauxlib.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "core/duration.h"
#include "core/reactor.h"
#include "lua/klua.h"
#include "lua/lib/args.h"

struct cseries {
    uint32_t n;
    uint64_t bucket_secs;
    uint64_t cur; /* absolute slot of the current bucket */
    uint64_t b[];
};

cseries *cseries_new(uint32_t n, uint64_t bucket_secs, uint64_t initial, uint64_t now)
{
    if (n == 0 || bucket_secs == 0)
        return NULL;
    cseries *s = calloc(1, sizeof(*s) + (size_t)n * sizeof(uint64_t));
    if (!s)
        return NULL;
    s->n = n;
    s->bucket_secs = bucket_secs;
    s->cur = now / bucket_secs;
    s->b[s->cur % n] = initial;
    return s;
}

void cseries_free(cseries *s)
{
    free(s);
}

uint32_t cseries_num_buckets(const cseries *s)
{
    return s->n;
}

uint64_t cseries_bucket_secs(const cseries *s)
{
    return s->bucket_secs;
}

static uint64_t *rotate(cseries *s, uint64_t now)
{
    uint64_t slot = now / s->bucket_secs;
    if (slot > s->cur) {
        uint64_t gap = slot - s->cur;
        if (gap > s->n)
            gap = s->n;
        for (uint64_t k = 1; k <= gap; k++)
            s->b[(slot - gap + k) % s->n] = 0;
        s->cur = slot;
    }
    return &s->b[s->cur % s->n];
}

static uint64_t sat_add(uint64_t a, uint64_t b)
{
    uint64_t r;
    return __builtin_add_overflow(a, b, &r) ? UINT64_MAX : r;
}

void cseries_delta(cseries *s, int64_t delta, uint64_t now)
{
    uint64_t *b = rotate(s, now);
    if (delta >= 0) {
        *b = sat_add(*b, (uint64_t)delta);
    } else {
        uint64_t m = (uint64_t)(-(delta + 1)) + 1; /* |delta| without overflow */
        *b = *b > m ? *b - m : 0;
    }
}

void cseries_increment(cseries *s, uint64_t v, uint64_t now)
{
    uint64_t *b = rotate(s, now);
    *b = sat_add(*b, v);
}

void cseries_observe(cseries *s, uint64_t v, uint64_t now)
{
    *rotate(s, now) = v;
}

uint64_t cseries_sum_over(cseries *s, uint64_t span_secs, uint64_t now)
{
    rotate(s, now);
    uint64_t k = span_secs / s->bucket_secs + (span_secs % s->bucket_secs != 0);
    if (k < 1)
        k = 1;
    if (k > s->n)
        k = s->n;
    uint64_t sum = 0;
    for (uint64_t i = 0; i < k; i++)
        sum = sat_add(sum, s->b[(s->cur - i) % s->n]);
    return sum;
}

/* ---- Lua ------------------------------------------------------------------------ */

#define SERIES_MT "kumo.CounterSeries"

struct entry {
    struct entry *next;
    char *name;
    cseries *s;
};

static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static struct entry *reg;

static uint64_t now_secs(void)
{
    return (uint64_t)(clock_mono_ns() / 1000000000LL);
}

/* A span: integer seconds or a duration string; rounded up to whole seconds. */
static uint64_t check_span(lua_State *L, int idx, const char *fname, const char *what)
{
    if (lua_isinteger(L, idx)) {
        lua_Integer v = lua_tointeger(L, idx);
        if (v < 0)
            luaL_error(L, "%s: %s must not be negative", fname, what);
        return (uint64_t)v;
    }
    if (lua_type(L, idx) == LUA_TNUMBER) {
        double d = lua_tonumber(L, idx);
        if (!(d >= 0) || d > 1e15)
            luaL_error(L, "%s: %s is out of range", fname, what);
        return (uint64_t)ceil(d);
    }
    if (lua_type(L, idx) == LUA_TSTRING) {
        int64_t ns;
        const char *s = lua_tostring(L, idx);
        if (duration_parse(s, &ns) != 0 || ns < 0)
            luaL_error(L, "%s: %s: invalid duration '%s'", fname, what, s);
        return (uint64_t)(ns / NS_PER_SEC + (ns % NS_PER_SEC != 0));
    }
    luaL_error(L, "%s: %s must be a number of seconds or a duration string, got %s", fname, what,
               luaL_typename(L, idx));
    return 0;
}

static uint64_t check_u64(lua_State *L, int idx, const char *fname, const char *what)
{
    int isint = 0;
    lua_Integer v = lua_tointegerx(L, idx, &isint);
    if (!isint)
        luaL_error(L, "%s: %s must be an integer, got %s", fname, what, luaL_typename(L, idx));
    if (v < 0)
        luaL_error(L, "%s: %s must be >= 0", fname, what);
    return (uint64_t)v;
}

static int l_define(lua_State *L)
{
    const char *fn = "kumo.counter_series.define";
    if (!lua_istable(L, 1))
        return luaL_error(L, "%s: argument #1 must be a table, got %s", fn, luaL_typename(L, 1));
    lua_getfield(L, 1, "name");
    if (lua_type(L, -1) != LUA_TSTRING)
        return luaL_error(L, "%s: 'name' must be a string", fn);
    const char *name = lua_tostring(L, -1);
    lua_getfield(L, 1, "num_buckets");
    int isint = 0;
    lua_Integer n = lua_tointegerx(L, -1, &isint);
    if (!isint || n < 1 || n > 1000000)
        return luaL_error(L, "%s: 'num_buckets' must be an integer >= 1", fn);
    lua_getfield(L, 1, "bucket_size");
    uint64_t bs = check_span(L, -1, fn, "'bucket_size'");
    if (bs == 0)
        bs = 1; /* the minimum effective bucket size */
    lua_getfield(L, 1, "initial_value");
    uint64_t initial = lua_isnil(L, -1) ? 0 : check_u64(L, -1, fn, "'initial_value'");

    uint64_t now = now_secs();
    pthread_mutex_lock(&reg_lock);
    struct entry *e = reg;
    while (e && strcmp(e->name, name) != 0)
        e = e->next;
    if (!e || cseries_num_buckets(e->s) != (uint32_t)n || cseries_bucket_secs(e->s) != bs) {
        cseries *s = cseries_new((uint32_t)n, bs, initial, now);
        if (!e && s) {
            e = calloc(1, sizeof(*e));
            if (e && !(e->name = strdup(name))) {
                free(e);
                e = NULL;
            }
            if (e) {
                e->next = reg;
                reg = e;
            }
        }
        if (!e || !s) {
            pthread_mutex_unlock(&reg_lock);
            cseries_free(s);
            return luaL_error(L, "%s: out of memory", fn);
        }
        cseries_free(e->s);
        e->s = s;
    }
    pthread_mutex_unlock(&reg_lock);
    struct entry **ud = lua_newuserdatauv(L, sizeof(*ud), 0);
    *ud = e;
    luaL_setmetatable(L, SERIES_MT);
    return 1;
}

static struct entry *check_series(lua_State *L, const char *method)
{
    struct entry **ud = luaL_testudata(L, 1, SERIES_MT);
    if (!ud)
        luaL_error(L, "series:%s: must be called as a method on a counter series", method);
    return *ud;
}

static int l_increment(lua_State *L)
{
    struct entry *e = check_series(L, "increment");
    uint64_t v = check_u64(L, 2, "series:increment", "value");
    pthread_mutex_lock(&reg_lock);
    cseries_increment(e->s, v, now_secs());
    pthread_mutex_unlock(&reg_lock);
    return 0;
}

static int l_delta(lua_State *L)
{
    struct entry *e = check_series(L, "delta");
    int isint = 0;
    lua_Integer v = lua_tointegerx(L, 2, &isint);
    if (!isint)
        return luaL_error(L, "series:delta: value must be an integer, got %s", luaL_typename(L, 2));
    pthread_mutex_lock(&reg_lock);
    cseries_delta(e->s, v, now_secs());
    pthread_mutex_unlock(&reg_lock);
    return 0;
}

static int l_observe(lua_State *L)
{
    struct entry *e = check_series(L, "observe");
    uint64_t v = check_u64(L, 2, "series:observe", "value");
    pthread_mutex_lock(&reg_lock);
    cseries_observe(e->s, v, now_secs());
    pthread_mutex_unlock(&reg_lock);
    return 0;
}

/* Sums are unsigned 64-bit; Lua integers are signed, so sums past 2^63-1
 * are returned as floats rather than wrapping negative. */
static void push_u64(lua_State *L, uint64_t v)
{
    if (v > (uint64_t)INT64_MAX)
        lua_pushnumber(L, (double)v);
    else
        lua_pushinteger(L, (lua_Integer)v);
}

static int l_sum(lua_State *L)
{
    struct entry *e = check_series(L, "sum");
    pthread_mutex_lock(&reg_lock);
    uint64_t v = cseries_sum_over(e->s, UINT64_MAX, now_secs());
    pthread_mutex_unlock(&reg_lock);
    push_u64(L, v);
    return 1;
}

static int l_sum_over(lua_State *L)
{
    struct entry *e = check_series(L, "sum_over");
    uint64_t span = check_span(L, 2, "series:sum_over", "duration");
    pthread_mutex_lock(&reg_lock);
    uint64_t v = cseries_sum_over(e->s, span, now_secs());
    pthread_mutex_unlock(&reg_lock);
    push_u64(L, v);
    return 1;
}

static void counter_series_open(lua_State *L)
{
    if (luaL_newmetatable(L, SERIES_MT)) {
        static const luaL_Reg methods[] = {{"increment", l_increment}, {"delta", l_delta},
                                           {"observe", l_observe},     {"sum", l_sum},
                                           {"sum_over", l_sum_over},   {NULL, NULL}};
        luaL_newlib(L, methods);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushcfunction(L, l_define);
    lua_setfield(L, -2, "define");
    lua_setfield(L, -2, "counter_series");
}

void counter_series_lua_register(void)
{
    klua_register_opener(counter_series_open);
}
