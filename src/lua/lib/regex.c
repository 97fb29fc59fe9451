/* kumo.regex: compile (RX_FANCY syntax, see rx.h), escape, and the Regex
 * object's methods (captures, is_match, find, find_all, replace,
 * replace_all, replacen, split). A Regex is a userdata owning its compiled
 * code and its match data; both are freed by __gc. Successive matches
 * follow the usual PCRE2 loop: after an empty match the next attempt at the
 * same place must be non-empty, otherwise the search moves one character
 * on. A match that exceeds the backtracking limits is a Lua error, never a
 * stall. Runs on the VM's thread. */
#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

#include "lua/lib/lualib.h"
#include "lua/lib/rx.h"

#define RE_MT "kumo.Regex"
#define REPL_MT "kumo.RegexReplacement"

struct lre {
    pcre2_code *re;
    pcre2_match_data *md;
};

static struct lre *check_re(lua_State *L, const char *fname)
{
    struct lre *r = luaL_testudata(L, 1, RE_MT);
    if (!r || !r->re)
        lualib_error(L, fname, "must be called as a method of a compiled regex (re:%s(...))",
                     strrchr(fname, ':') ? strrchr(fname, ':') + 1 : fname);
    return r;
}

static int l_compile(lua_State *L)
{
    size_t n;
    const char *p = lualib_checklstring(L, 1, "kumo.regex.compile", &n);
    struct lre *r = lua_newuserdatauv(L, sizeof(*r), 0);
    r->re = NULL;
    r->md = NULL;
    luaL_setmetatable(L, RE_MT);
    char err[300];
    r->re = rx_compile(p, n, RX_FANCY, err, sizeof(err));
    if (!r->re)
        return lualib_error(L, "kumo.regex.compile", "invalid pattern: %s", err);
    r->md = pcre2_match_data_create_from_pattern(r->re, NULL);
    if (!r->md)
        return lualib_error(L, "kumo.regex.compile", "out of memory");
    return 1;
}

static int l_escape(lua_State *L)
{
    size_t n, on;
    const char *s = lualib_checklstring(L, 1, "kumo.regex.escape", &n);
    char *e = rx_escape(s, n, &on);
    if (!e)
        return lualib_error(L, "kumo.regex.escape", "out of memory");
    lua_pushlstring(L, e, on);
    free(e);
    return 1;
}

static int re_gc(lua_State *L)
{
    struct lre *r = luaL_checkudata(L, 1, RE_MT);
    pcre2_match_data_free(r->md);
    pcre2_code_free(r->re);
    r->md = NULL;
    r->re = NULL;
    return 0;
}

/* One match at or after start; raises on limits. Returns the number of
 * pairs (> 0) or 0 for no match. */
static int exec1(lua_State *L, struct lre *r, const char *s, size_t n, size_t start, uint32_t opts,
                 const char *fname)
{
    int rc = rx_exec(r->re, s, n, start, opts, r->md);
    if (rc == PCRE2_ERROR_NOMATCH)
        return 0;
    if (rc == RX_ELIMIT)
        lualib_error(L, fname, "the pattern backtracked too much on this input (match limit)");
    if (rc < 0) {
        PCRE2_UCHAR msg[200];
        pcre2_get_error_message(rc, msg, sizeof(msg));
        lualib_error(L, fname, "matching failed: %s", (const char *)msg);
    }
    return rc;
}

/* Iterates non-overlapping matches; fn returns 0 to go on, 1 to stop. */
typedef int (*match_fn)(lua_State *L, struct lre *r, const char *s, const size_t *ov, int np,
                        void *ud);

static void each_match(lua_State *L, struct lre *r, const char *s, size_t n, const char *fname,
                       match_fn fn, void *ud)
{
    size_t start = 0;
    uint32_t opts = 0;
    while (start <= n) {
        int np = exec1(L, r, s, n, start, opts, fname);
        if (np == 0) {
            if (opts == 0 || start >= n)
                break;
            /* no non-empty match here: move one character on */
            start++;
            while (start < n && ((unsigned char)s[start] & 0xC0) == 0x80)
                start++;
            opts = 0;
            continue;
        }
        const size_t *ov = pcre2_get_ovector_pointer(r->md);
        if (fn(L, r, s, ov, np, ud))
            return;
        start = ov[1];
        opts = ov[0] == ov[1] ? PCRE2_NOTEMPTY_ATSTART | PCRE2_ANCHORED : 0;
    }
}

static int re_is_match(lua_State *L)
{
    struct lre *r = check_re(L, "regex:is_match");
    size_t n;
    const char *s = lualib_checklstring(L, 2, "regex:is_match", &n);
    lua_pushboolean(L, exec1(L, r, s, n, 0, 0, "regex:is_match") > 0);
    return 1;
}

static int re_find(lua_State *L)
{
    struct lre *r = check_re(L, "regex:find");
    size_t n;
    const char *s = lualib_checklstring(L, 2, "regex:find", &n);
    if (exec1(L, r, s, n, 0, 0, "regex:find") == 0)
        return 0;
    const size_t *ov = pcre2_get_ovector_pointer(r->md);
    lua_pushlstring(L, s + ov[0], ov[1] - ov[0]);
    return 1;
}

static int re_captures(lua_State *L)
{
    struct lre *r = check_re(L, "regex:captures");
    size_t n;
    const char *s = lualib_checklstring(L, 2, "regex:captures", &n);
    int np = exec1(L, r, s, n, 0, 0, "regex:captures");
    if (np == 0)
        return 0;
    const size_t *ov = pcre2_get_ovector_pointer(r->md);
    lua_newtable(L);
    for (int i = 0; i < np; i++) {
        if (ov[2 * i] == PCRE2_UNSET)
            continue;
        lua_pushlstring(L, s + ov[2 * i], ov[2 * i + 1] - ov[2 * i]);
        lua_rawseti(L, -2, i);
    }
    uint32_t count, esize;
    PCRE2_SPTR table;
    pcre2_pattern_info(r->re, PCRE2_INFO_NAMECOUNT, &count);
    pcre2_pattern_info(r->re, PCRE2_INFO_NAMEENTRYSIZE, &esize);
    pcre2_pattern_info(r->re, PCRE2_INFO_NAMETABLE, &table);
    for (uint32_t k = 0; k < count; k++) {
        PCRE2_SPTR e = table + k * esize;
        int g = (e[0] << 8) | e[1];
        if (g < np && ov[2 * g] != PCRE2_UNSET) {
            lua_pushlstring(L, s + ov[2 * g], ov[2 * g + 1] - ov[2 * g]);
            lua_setfield(L, -2, (const char *)e + 2);
        }
    }
    return 1;
}

struct collect {
    lua_Integer i;
    size_t last; /* split: end of the previous match */
};

static int collect_match(lua_State *L, struct lre *r, const char *s, const size_t *ov, int np,
                         void *ud)
{
    struct collect *c = ud;
    lua_pushlstring(L, s + ov[0], ov[1] - ov[0]);
    lua_rawseti(L, -2, ++c->i);
    return 0;
}

static int re_find_all(lua_State *L)
{
    struct lre *r = check_re(L, "regex:find_all");
    size_t n;
    const char *s = lualib_checklstring(L, 2, "regex:find_all", &n);
    lua_newtable(L);
    struct collect c = {0, 0};
    each_match(L, r, s, n, "regex:find_all", collect_match, &c);
    return 1;
}

static int split_match(lua_State *L, struct lre *r, const char *s, const size_t *ov, int np,
                       void *ud)
{
    struct collect *c = ud;
    lua_pushlstring(L, s + c->last, ov[0] - c->last);
    lua_rawseti(L, -2, ++c->i);
    c->last = ov[1];
    return 0;
}

static int re_split(lua_State *L)
{
    struct lre *r = check_re(L, "regex:split");
    size_t n;
    const char *s = lualib_checklstring(L, 2, "regex:split", &n);
    lua_newtable(L);
    struct collect c = {0, 0};
    each_match(L, r, s, n, "regex:split", split_match, &c);
    lua_pushlstring(L, s + c.last, n - c.last);
    lua_rawseti(L, -2, ++c.i);
    return 1;
}

struct repl {
    const char *rep;
    size_t rlen;
    lua_Integer limit, done;
    char *out;
    size_t olen, cap;
    size_t last;
    bool oom;
};

static int repl_match(lua_State *L, struct lre *r, const char *s, const size_t *ov, int np,
                      void *ud)
{
    struct repl *x = ud;
    /* the text between the previous match and this one, then the expansion */
    size_t gap = ov[0] - x->last;
    if (x->olen + gap + 1 > x->cap) {
        size_t cap = (x->olen + gap + 1) * 2;
        char *p = realloc(x->out, cap);
        if (!p) {
            x->oom = true;
            return 1;
        }
        x->out = p;
        x->cap = cap;
    }
    memcpy(x->out + x->olen, s + x->last, gap);
    x->olen += gap;
    if (rx_expand(r->re, s, ov, np, x->rep, x->rlen, &x->out, &x->olen, &x->cap) != 0) {
        x->oom = true;
        return 1;
    }
    x->last = ov[1];
    x->done++;
    return x->limit > 0 && x->done >= x->limit;
}

static int replace_impl(lua_State *L, const char *fname, lua_Integer limit, int rep_arg)
{
    struct lre *r = check_re(L, fname);
    size_t n;
    const char *s = lualib_checklstring(L, 2, fname, &n);
    /* the state, and so the output buffer, lives in a userdata whose __gc
     * frees the buffer, so that a Lua error raised mid-way leaks nothing */
    struct repl *x = lua_newuserdatauv(L, sizeof(*x), 0);
    memset(x, 0, sizeof(*x));
    luaL_setmetatable(L, REPL_MT);
    x->rep = lualib_checklstring(L, rep_arg, fname, &x->rlen);
    x->limit = limit;
    each_match(L, r, s, n, fname, repl_match, x);
    if (x->oom)
        return lualib_error(L, fname, "out of memory");
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    luaL_addlstring(&b, x->out ? x->out : "", x->olen);
    luaL_addlstring(&b, s + x->last, n - x->last);
    luaL_pushresult(&b);
    return 1;
}

static int repl_gc(lua_State *L)
{
    struct repl *x = luaL_checkudata(L, 1, REPL_MT);
    free(x->out);
    x->out = NULL;
    return 0;
}

static int re_replace(lua_State *L)
{
    return replace_impl(L, "regex:replace", 1, 3);
}

static int re_replace_all(lua_State *L)
{
    return replace_impl(L, "regex:replace_all", 0, 3);
}

static int re_replacen(lua_State *L)
{
    lua_Integer lim = lualib_checkinteger(L, 3, "regex:replacen");
    if (lim < 0)
        return lualib_error(L, "regex:replacen", "argument #2 (limit) must not be negative");
    return replace_impl(L, "regex:replacen", lim, 4);
}

static int re_tostring(lua_State *L)
{
    lua_pushfstring(L, "Regex: %p", lua_touserdata(L, 1));
    return 1;
}

static void regex_setup(lua_State *L)
{
    static const luaL_Reg methods[] = {
        {"captures", re_captures}, {"is_match", re_is_match}, {"find", re_find},
        {"find_all", re_find_all}, {"replace", re_replace},   {"replace_all", re_replace_all},
        {"replacen", re_replacen}, {"split", re_split},       {NULL, NULL},
    };
    luaL_newmetatable(L, RE_MT);
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, re_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, re_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pop(L, 1);
    luaL_newmetatable(L, REPL_MT);
    lua_pushcfunction(L, repl_gc);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);
}

static const luaL_Reg fns[] = {{"compile", l_compile}, {"escape", l_escape}, {NULL, NULL}};
const lualib_module lualib_regex = {"kumo.regex", fns, regex_setup};
