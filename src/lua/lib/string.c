/* kumo.string (and require 'kumo.string'): thin bindings over kstring.h.
 * Every function takes Lua strings as bytes; where the reference relies on
 * characters (empty split patterns, White_Space) they are read as UTF-8 and
 * invalid bytes count as single characters. normalize_smtp_response's
 * core is smtpnorm.c; eval_template is added to this table by the HTTP
 * layer, which owns the template engine (http/template_lua.c). Runs on the
 * VM's thread; no state. */
#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

#include "lua/lib/args.h"
#include "lua/lib/kstring.h"
#include "lua/lib/lualib.h"
#include "lua/lib/smtpnorm.h"

#define S(name) "kumo.string." name

/* Appends s[a..b) at t[*i]. */
static void push_piece(lua_State *L, const char *s, size_t a, size_t b, lua_Integer *i)
{
    lua_pushlstring(L, s + a, b - a);
    lua_rawseti(L, -2, ++*i);
}

/* Rust's str::splitn semantics for limit (0 = nothing, -1 = no limit),
 * forwards. An empty pattern matches at every character boundary, giving
 * "" first and last, as Rust does. */
static void split_fwd(lua_State *L, const char *s, size_t n, const char *p, size_t pl,
                      lua_Integer limit)
{
    lua_newtable(L);
    lua_Integer i = 0;
    if (limit == 0)
        return;
    size_t start = 0, from = 0;
    for (;;) {
        if (limit > 0 && i == limit - 1)
            break;
        long m = kstr_find(s, n, from, p, pl);
        if (m < 0)
            break;
        if (pl == 0) {
            /* boundaries: 0, after each character, n */
            push_piece(L, s, start, (size_t)m, &i);
            start = (size_t)m;
            if (m == (long)n)
                break;
            from = (size_t)m + kstr_charlen(s + m, n - (size_t)m);
            continue;
        }
        push_piece(L, s, start, (size_t)m, &i);
        start = from = (size_t)m + pl;
    }
    /* the rest; for an empty pattern this is the "" after the last
     * boundary: "abc" split "" is ["", "a", "b", "c", ""], as in Rust */
    push_piece(L, s, start, n, &i);
}

static void split_rev(lua_State *L, const char *s, size_t n, const char *p, size_t pl,
                      lua_Integer limit)
{
    lua_newtable(L);
    lua_Integer i = 0;
    if (limit == 0)
        return;
    size_t end = n, to = n;
    for (;;) {
        if (limit > 0 && i == limit - 1)
            break;
        long m = kstr_rfind(s, to, p, pl);
        if (m < 0)
            break;
        if (pl == 0) {
            push_piece(L, s, (size_t)m, end, &i);
            end = (size_t)m;
            if (m == 0)
                break;
            /* step back one character */
            size_t k = (size_t)m - 1;
            while (k > 0 && ((unsigned char)s[k] & 0xC0) == 0x80 && (size_t)m - k < 4)
                k--;
            if (kstr_charlen(s + k, (size_t)m - k) != (size_t)m - k)
                k = (size_t)m - 1;
            to = k;
            continue;
        }
        push_piece(L, s, (size_t)m + pl, end, &i);
        end = to = (size_t)m;
    }
    push_piece(L, s, 0, end, &i);
}

static int l_split(lua_State *L)
{
    size_t n, pl;
    const char *s = lualib_checklstring(L, 1, S("split"), &n);
    const char *p = lualib_checklstring(L, 2, S("split"), &pl);
    split_fwd(L, s, n, p, pl, -1);
    return 1;
}

static int l_rsplit(lua_State *L)
{
    size_t n, pl;
    const char *s = lualib_checklstring(L, 1, S("rsplit"), &n);
    const char *p = lualib_checklstring(L, 2, S("rsplit"), &pl);
    split_rev(L, s, n, p, pl, -1);
    return 1;
}

static lua_Integer check_limit(lua_State *L, int arg, const char *fname)
{
    lua_Integer v = lualib_checkinteger(L, arg, fname);
    if (v < 0)
        lualib_error(L, fname, "argument #%d must not be negative", arg);
    return v;
}

static int l_splitn(lua_State *L)
{
    size_t n, pl;
    const char *s = lualib_checklstring(L, 1, S("splitn"), &n);
    lua_Integer lim = check_limit(L, 2, S("splitn"));
    const char *p = lualib_checklstring(L, 3, S("splitn"), &pl);
    split_fwd(L, s, n, p, pl, lim);
    return 1;
}

static int l_rsplitn(lua_State *L)
{
    size_t n, pl;
    const char *s = lualib_checklstring(L, 1, S("rsplitn"), &n);
    lua_Integer lim = check_limit(L, 2, S("rsplitn"));
    const char *p = lualib_checklstring(L, 3, S("rsplitn"), &pl);
    split_rev(L, s, n, p, pl, lim);
    return 1;
}

static int replace_impl(lua_State *L, const char *fname, lua_Integer count, int to_arg)
{
    size_t n, fl, tl;
    const char *s = lualib_checklstring(L, 1, fname, &n);
    const char *from = lualib_checklstring(L, 2, fname, &fl);
    const char *to = lualib_checklstring(L, to_arg, fname, &tl);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    size_t pos = 0;
    lua_Integer done = 0;
    while (count < 0 || done < count) {
        long m = kstr_find(s, n, pos, from, fl);
        if (m < 0)
            break;
        luaL_addlstring(&b, s + pos, (size_t)m - pos);
        luaL_addlstring(&b, to, tl);
        done++;
        if (fl == 0) {
            if ((size_t)m >= n) {
                pos = n;
                break;
            }
            size_t cl = kstr_charlen(s + m, n - (size_t)m);
            luaL_addlstring(&b, s + m, cl);
            pos = (size_t)m + cl;
            if (pos == n && (count < 0 || done < count)) {
                luaL_addlstring(&b, to, tl); /* the boundary at the end */
                break;
            }
        } else {
            pos = (size_t)m + fl;
        }
    }
    luaL_addlstring(&b, s + pos, n - pos);
    luaL_pushresult(&b);
    return 1;
}

static int l_replace(lua_State *L)
{
    return replace_impl(L, S("replace"), -1, 3);
}

static int l_replacen(lua_State *L)
{
    lua_Integer c = check_limit(L, 4, S("replacen"));
    return replace_impl(L, S("replacen"), c, 3);
}

static int split_ws(lua_State *L, const char *fname, int ascii)
{
    size_t n;
    const char *s = lualib_checklstring(L, 1, fname, &n);
    lua_newtable(L);
    lua_Integer i = 0;
    size_t pos = 0;
    while (pos < n) {
        size_t k;
        while (pos < n && (k = ascii ? (strchr(" \t\n\f\r", s[pos]) && s[pos] ? 1 : 0)
                                     : kstr_space_at(s + pos, n - pos)) > 0)
            pos += k;
        if (pos >= n)
            break;
        size_t start = pos;
        while (pos < n && (ascii ? !(s[pos] && strchr(" \t\n\f\r", s[pos]))
                                 : kstr_space_at(s + pos, n - pos) == 0))
            pos += ascii ? 1 : kstr_charlen(s + pos, n - pos);
        push_piece(L, s, start, pos, &i);
    }
    return 1;
}

static int l_split_whitespace(lua_State *L)
{
    return split_ws(L, S("split_whitespace"), 0);
}

static int l_split_ascii_whitespace(lua_State *L)
{
    return split_ws(L, S("split_ascii_whitespace"), 1);
}

static int trim_impl(lua_State *L, const char *fname, bool front, bool back)
{
    size_t n, a, l;
    const char *s = lualib_checklstring(L, 1, fname, &n);
    kstr_trim(s, n, front, back, &a, &l);
    lua_pushlstring(L, s + a, l);
    return 1;
}

static int l_trim(lua_State *L)
{
    return trim_impl(L, S("trim"), true, true);
}
static int l_trim_start(lua_State *L)
{
    return trim_impl(L, S("trim_start"), true, false);
}
static int l_trim_end(lua_State *L)
{
    return trim_impl(L, S("trim_end"), false, true);
}

static int l_starts_with(lua_State *L)
{
    size_t n, pl;
    const char *s = lualib_checklstring(L, 1, S("starts_with"), &n);
    const char *p = lualib_checklstring(L, 2, S("starts_with"), &pl);
    lua_pushboolean(L, pl <= n && memcmp(s, p, pl) == 0);
    return 1;
}

static int l_ends_with(lua_State *L)
{
    size_t n, pl;
    const char *s = lualib_checklstring(L, 1, S("ends_with"), &n);
    const char *p = lualib_checklstring(L, 2, S("ends_with"), &pl);
    lua_pushboolean(L, pl <= n && memcmp(s + n - pl, p, pl) == 0);
    return 1;
}

static int psl_impl(lua_State *L, const char *fname, int domain)
{
    size_t n;
    const char *s = lualib_checklstring(L, 1, fname, &n);
    char buf[512];
    long off =
        domain ? kstr_psl_domain(s, n, buf, sizeof(buf)) : kstr_psl_suffix(s, n, buf, sizeof(buf));
    if (off == -2)
        return lualib_error(L, fname,
                            "the public suffix list %s cannot be read (install the "
                            "publicsuffix package)",
                            kstr_psl_path());
    if (off < 0)
        return 0;
    lua_pushstring(L, buf + off);
    return 1;
}

static int l_psl_domain(lua_State *L)
{
    return psl_impl(L, S("psl_domain"), 1);
}
static int l_psl_suffix(lua_State *L)
{
    return psl_impl(L, S("psl_suffix"), 0);
}

static int l_wrap(lua_State *L)
{
    size_t n, outlen;
    const char *s = lualib_checklstring(L, 1, S("wrap"), &n);
    lua_Integer soft = lualib_optinteger(L, 2, S("wrap"), 75);
    lua_Integer hard = lualib_optinteger(L, 3, S("wrap"), 900);
    if (soft < 0 || hard < 0)
        return lualib_error(L, S("wrap"), "limits must not be negative");
    char *w = kstr_wrap(s, n, (size_t)soft, (size_t)hard, &outlen);
    if (!w)
        return lualib_error(L, S("wrap"), "out of memory");
    lua_pushlstring(L, w, outlen);
    free(w);
    return 1;
}

static int l_normalize_smtp_response(lua_State *L)
{
    size_t n;
    lib_checkstring(L, 1, S("normalize_smtp_response"), "argument #1 (TEXT)");
    const char *s = lua_tolstring(L, 1, &n);
    size_t outlen;
    char *r = smtpnorm_normalize(s, n, &outlen);
    if (!r)
        return lualib_error(L, S("normalize_smtp_response"), "out of memory");
    lua_pushlstring(L, r, outlen);
    free(r);
    return 1;
}

static const luaL_Reg fns[] = {
    {"normalize_smtp_response", l_normalize_smtp_response},
    {"split", l_split},
    {"rsplit", l_rsplit},
    {"splitn", l_splitn},
    {"rsplitn", l_rsplitn},
    {"replace", l_replace},
    {"replacen", l_replacen},
    {"split_whitespace", l_split_whitespace},
    {"split_ascii_whitespace", l_split_ascii_whitespace},
    {"trim", l_trim},
    {"trim_start", l_trim_start},
    {"trim_end", l_trim_end},
    {"starts_with", l_starts_with},
    {"ends_with", l_ends_with},
    {"psl_domain", l_psl_domain},
    {"psl_suffix", l_psl_suffix},
    {"wrap", l_wrap},
    {NULL, NULL},
};
const lualib_module lualib_string = {"kumo.string", fns, NULL};
