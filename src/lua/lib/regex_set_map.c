/* kumo.regex_set_map.new: the map's patterns (RX_PLAIN syntax, see rx.h:
 * KumoMTA builds these with the plain regex crate) are joined into one
 * alternation, each alternative ending in (*MARK:i), so that one PCRE2
 * search finds a match and names the pattern that made it. Patterns are
 * ordered by key, so when several match at the leftmost place the first key
 * in byte order wins (KumoMTA's choice among several matches is
 * unspecified). The map is immutable after new; the values sit in the
 * userdata's uservalue table by pattern number. Runs on the VM's thread. */
#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

#include "lua/lib/lualib.h"
#include "lua/lib/rx.h"

#define RSM_MT "kumo.RegexSetMap"
#define FN "kumo.regex_set_map.new"

struct rsm {
    pcre2_code *re; /* NULL for an empty map */
    pcre2_match_data *md;
};

static int key_cmp(const void *a, const void *b)
{
    const char *x = *(const char *const *)a, *y = *(const char *const *)b;
    return strcmp(x, y);
}

static int rsm_new(lua_State *L)
{
    if (!lua_isnoneornil(L, 1) && !lua_istable(L, 1))
        return lualib_error(L, FN, "argument #1 must be a table, not %s", luaL_typename(L, 1));
    lua_settop(L, 1);
    struct rsm *m = lua_newuserdatauv(L, sizeof(*m), 1);
    m->re = NULL;
    m->md = NULL;
    luaL_setmetatable(L, RSM_MT);
    lua_newtable(L); /* values by pattern number */
    lua_pushvalue(L, -1);
    lua_setiuservalue(L, 2, 1);
    if (lua_isnil(L, 1))
        return lua_settop(L, 2), 1;

    /* the keys, sorted (anchored in the argument table) */
    size_t n = 0;
    lua_pushnil(L);
    while (lua_next(L, 1)) {
        if (lua_type(L, -2) != LUA_TSTRING)
            return lualib_error(L, FN, "keys of argument #1 must be pattern strings, not %s",
                                luaL_typename(L, -2));
        n++;
        lua_pop(L, 1);
    }
    if (n == 0)
        return lua_settop(L, 2), 1;
    const char **keys = lua_newuserdatauv(L, n * sizeof(char *), 0); /* GC'd scratch */
    size_t k = 0;
    lua_pushnil(L);
    while (lua_next(L, 1)) {
        keys[k++] = lua_tostring(L, -2);
        lua_pop(L, 1);
    }
    qsort(keys, n, sizeof(*keys), key_cmp);

    /* translate each on its own (errors name the pattern), then join */
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (size_t i = 0; i < n; i++) {
        char err[300];
        size_t tl;
        size_t klen = strlen(keys[i]);
        char *t = rx_translate(keys[i], klen, RX_PLAIN, &tl, err, sizeof(err));
        if (!t)
            return lualib_error(L, FN, "compiling rules: pattern '%s': %s", keys[i], err);
        /* each alternative in its own group so that its flags and
         * alternations stay inside it */
        luaL_addstring(&b, i ? "|(?:" : "(?:");
        luaL_addlstring(&b, t, tl);
        free(t);
        lua_pushfstring(L, ")(*MARK:%d)", (int)i + 1);
        luaL_addvalue(&b);
        /* values: keys[i] -> value, stored by number */
        lua_getfield(L, 1, keys[i]);
        lua_rawseti(L, 3, (lua_Integer)i + 1);
    }
    luaL_pushresult(&b);
    size_t jl;
    const char *joined = lua_tolstring(L, -1, &jl);
    /* already translated: compile directly, with rx's options */
    pcre2_compile_context *cc = pcre2_compile_context_create(NULL);
    if (!cc)
        return lualib_error(L, FN, "out of memory");
    pcre2_set_newline(cc, PCRE2_NEWLINE_LF);
    int ec;
    PCRE2_SIZE eo;
    m->re = pcre2_compile((PCRE2_SPTR)joined, jl,
                          PCRE2_UTF | PCRE2_UCP | PCRE2_DOLLAR_ENDONLY | PCRE2_MATCH_INVALID_UTF |
                              PCRE2_NEVER_BACKSLASH_C,
                          &ec, &eo, cc);
    pcre2_compile_context_free(cc);
    if (!m->re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(ec, msg, sizeof(msg));
        /* find which pattern: compile them one by one for the message */
        for (size_t i = 0; i < n; i++) {
            char err[300];
            pcre2_code *one = rx_compile(keys[i], strlen(keys[i]), RX_PLAIN, err, sizeof(err));
            if (!one)
                return lualib_error(L, FN, "compiling rules: pattern '%s': %s", keys[i], err);
            pcre2_code_free(one);
        }
        return lualib_error(L, FN, "compiling rules: %s", (const char *)msg);
    }
    (void)pcre2_jit_compile(m->re, PCRE2_JIT_COMPLETE);
    m->md = pcre2_match_data_create(1, NULL);
    if (!m->md)
        return lualib_error(L, FN, "out of memory");
    lua_settop(L, 2);
    return 1;
}

static int rsm_index(lua_State *L)
{
    struct rsm *m = luaL_checkudata(L, 1, RSM_MT);
    if (!m->re || lua_type(L, 2) != LUA_TSTRING)
        return 0;
    size_t n;
    const char *s = lua_tolstring(L, 2, &n);
    int rc = rx_exec(m->re, s, n, 0, 0, m->md);
    if (rc == RX_ELIMIT)
        return lualib_error(L, "kumo.regex_set_map",
                            "the patterns backtracked too much on this input (match limit)");
    if (rc <= 0)
        return 0;
    PCRE2_SPTR mark = pcre2_get_mark(m->md);
    if (!mark)
        return 0;
    lua_getiuservalue(L, 1, 1);
    lua_rawgeti(L, -1, atoi((const char *)mark));
    return 1;
}

static int rsm_newindex(lua_State *L)
{
    return lualib_error(L, "kumo.regex_set_map",
                        "a regex set map is immutable: build a table and pass it to new()");
}

static int rsm_gc(lua_State *L)
{
    struct rsm *m = luaL_checkudata(L, 1, RSM_MT);
    pcre2_match_data_free(m->md);
    pcre2_code_free(m->re);
    m->md = NULL;
    m->re = NULL;
    return 0;
}

static int rsm_tostring(lua_State *L)
{
    lua_pushfstring(L, "RegexSetMap: %p", lua_touserdata(L, 1));
    return 1;
}

static void rsm_setup(lua_State *L)
{
    static const luaL_Reg mt[] = {{"__index", rsm_index},
                                  {"__newindex", rsm_newindex},
                                  {"__gc", rsm_gc},
                                  {"__tostring", rsm_tostring},
                                  {NULL, NULL}};
    luaL_newmetatable(L, RSM_MT);
    luaL_setfuncs(L, mt, 0);
    lua_pop(L, 1);
}

static const luaL_Reg fns[] = {{"new", rsm_new}, {NULL, NULL}};
const lualib_module lualib_regex_set_map = {"kumo.regex_set_map", fns, rsm_setup};
