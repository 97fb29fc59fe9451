/* kumo.serde and its deprecated aliases on kumo (json_*, toml_*) as thin
 * bindings over jsonc.c, toml_json.cpp and yaml_json.c, plus a direct Lua ->
 * JSON text encoder (serde_encode_json) that formats numbers as KumoMTA
 * does, which jansson's encoder cannot. The *_load functions read the whole
 * file with blocking I/O: they are meant for policy start-up and for config
 * files, as in KumoMTA (files are capped at 64 MiB). Every error is a Lua
 * error naming the function and, for parse errors, line and column. Runs on
 * the VM's thread; no state. */
#include "lua/lib/serde.h"

#include <errno.h>
#include <lauxlib.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "lua/klua.h"
#include "lua/lib/jsonc.h"
#include "lua/lib/lualib.h"
#include "lua/lib/toml_json.h"
#include "lua/lib/yaml_json.h"

#define SERDE_MAX_FILE (64u << 20)
#define SERDE_MAX_DEPTH 128

/* ---- Lua -> JSON text ------------------------------------------------------ */

struct jbuf {
    char *p;
    size_t n, cap;
    bool oom;
};

static void jb_put(struct jbuf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

static void jb_puts(struct jbuf *b, const char *s)
{
    jb_put(b, s, strlen(s));
}

/* Length of the valid UTF-8 sequence at s (1..4), or 0 if invalid. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    size_t len;
    unsigned min;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        len = 2, min = 0x80;
    else if (c >= 0xE0 && c <= 0xEF)
        len = 3, min = 0x800;
    else if (c >= 0xF0 && c <= 0xF4)
        len = 4, min = 0x10000;
    else
        return 0;
    if (n < len)
        return 0;
    unsigned cp = c & (0x3F >> (len - 1));
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return len;
}

static int put_string(struct jbuf *b, const char *s, size_t n, int flags, char *err, size_t errlen)
{
    jb_put(b, "\"", 1);
    size_t run = 0; /* start of the pending unescaped run */
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        const char *esc = NULL;
        char ubuf[8];
        switch (c) {
        case '"':
            esc = "\\\"";
            break;
        case '\\':
            esc = "\\\\";
            break;
        case '\n':
            esc = "\\n";
            break;
        case '\r':
            esc = "\\r";
            break;
        case '\t':
            esc = "\\t";
            break;
        case '\b':
            esc = "\\b";
            break;
        case '\f':
            esc = "\\f";
            break;
        default:
            if (c < 0x20) {
                snprintf(ubuf, sizeof(ubuf), "\\u%04x", c);
                esc = ubuf;
            }
        }
        if (esc) {
            jb_put(b, s + run, i - run);
            jb_puts(b, esc);
            run = ++i;
            continue;
        }
        size_t l = utf8_seq((const unsigned char *)s + i, n - i);
        if (l == 0) {
            if (!(flags & SERDE_RAW_BYTES)) {
                snprintf(err, errlen, "string is not valid UTF-8 (byte %zu)", i + 1);
                return -1;
            }
            jb_put(b, s + run, i - run);
            snprintf(ubuf, sizeof(ubuf), "\\x%02x", c);
            jb_puts(b, ubuf);
            run = ++i;
            continue;
        }
        i += l;
    }
    jb_put(b, s + run, n - run);
    jb_put(b, "\"", 1);
    return 0;
}

/* Shortest round-trip digits, laid out as serde_json (ryu) does. */
static void fmt_double(double d, char *out, size_t outlen)
{
    if (d == 0) {
        snprintf(out, outlen, "%s", signbit(d) ? "-0.0" : "0.0");
        return;
    }
    char t[40];
    for (int p = 0; p < 17; p++) {
        snprintf(t, sizeof(t), "%.*e", p, d);
        if (strtod(t, NULL) == d)
            break;
    }
    /* t is [-]D[.DDD]e[+-]XX */
    char digits[24];
    size_t nd = 0;
    const char *q = t;
    bool neg = *q == '-';
    if (neg)
        q++;
    for (; *q && *q != 'e'; q++)
        if (*q != '.')
            digits[nd++] = *q;
    digits[nd] = 0;
    int e = atoi(q + 1);
    int kk = e + 1; /* position of the decimal point after the first digit group */
    int k = kk - (int)nd;
    char *o = out;
    size_t left = outlen;
#define OUT(...)                                                                                   \
    do {                                                                                           \
        int w_ = snprintf(o, left, __VA_ARGS__);                                                   \
        if (w_ > 0 && (size_t)w_ < left) {                                                         \
            o += w_;                                                                               \
            left -= (size_t)w_;                                                                    \
        }                                                                                          \
    } while (0)
    if (neg)
        OUT("-");
    if (k >= 0 && kk <= 16) {
        OUT("%s", digits);
        for (int i = 0; i < k; i++)
            OUT("0");
        OUT(".0");
    } else if (kk > 0 && kk <= 16) {
        OUT("%.*s.%s", kk, digits, digits + kk);
    } else if (kk > -5 && kk <= 0) {
        OUT("0.");
        for (int i = 0; i < -kk; i++)
            OUT("0");
        OUT("%s", digits);
    } else if (nd == 1) {
        OUT("%se%d", digits, kk - 1);
    } else {
        OUT("%c.%se%d", digits[0], digits + 1, kk - 1);
    }
#undef OUT
}

static void newline(struct jbuf *b, int flags, int depth)
{
    if (!(flags & SERDE_PRETTY))
        return;
    jb_put(b, "\n", 1);
    for (int i = 0; i < depth; i++)
        jb_put(b, "  ", 2);
}

struct key {
    char *s;
    size_t n;
};

static int key_cmp(const void *a, const void *b)
{
    const struct key *x = a, *y = b;
    int c = memcmp(x->s, y->s, x->n < y->n ? x->n : y->n);
    return c ? c : (x->n > y->n) - (x->n < y->n);
}

static int enc(lua_State *L, int idx, struct jbuf *b, int flags, int depth, char *err,
               size_t errlen);

static int enc_table(lua_State *L, int idx, struct jbuf *b, int flags, int depth, char *err,
                     size_t errlen)
{
    lua_Integer n = (lua_Integer)lua_rawlen(L, idx);
    size_t count = 0;
    bool all_int = true;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        count++;
        if (!lua_isinteger(L, -2))
            all_int = false;
        lua_pop(L, 1);
    }
    if (count > 0 && all_int && (lua_Integer)count == n) {
        jb_put(b, "[", 1);
        for (lua_Integer i = 1; i <= n; i++) {
            if (i > 1)
                jb_put(b, ",", 1);
            newline(b, flags, depth + 1);
            lua_rawgeti(L, idx, i);
            int rc = enc(L, -1, b, flags, depth + 1, err, errlen);
            lua_pop(L, 1);
            if (rc)
                return rc;
        }
        newline(b, flags, depth);
        jb_put(b, "]", 1);
        return 0;
    }
    if (count == 0) {
        jb_put(b, "{}", 2);
        return 0;
    }
    /* Keys are copied as text (a number key must not be converted in place
     * during lua_next), sorted when asked, then each value fetched by key. */
    struct key *keys = calloc(count, sizeof(*keys));
    if (!keys) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    size_t nk = 0;
    int rc = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        int kt = lua_type(L, -2);
        if (kt != LUA_TSTRING && kt != LUA_TNUMBER) {
            snprintf(err, errlen, "table key of type %s cannot be converted to JSON",
                     lua_typename(L, kt));
            lua_pop(L, 2);
            rc = -1;
            break;
        }
        lua_pushvalue(L, -2);
        size_t kl;
        const char *ks = lua_tolstring(L, -1, &kl);
        if (nk < count && (keys[nk].s = malloc(kl + 1)) != NULL) {
            memcpy(keys[nk].s, ks, kl + 1);
            keys[nk++].n = kl;
        }
        lua_pop(L, 2);
    }
    if (rc == 0 && nk < count) {
        snprintf(err, errlen, "out of memory");
        rc = -1;
    }
    if (rc == 0 && (flags & SERDE_SORT))
        qsort(keys, nk, sizeof(*keys), key_cmp);
    if (rc == 0) {
        jb_put(b, "{", 1);
        for (size_t i = 0; i < nk && rc == 0; i++) {
            if (i > 0)
                jb_put(b, ",", 1);
            newline(b, flags, depth + 1);
            rc = put_string(b, keys[i].s, keys[i].n, flags, err, errlen);
            if (rc)
                break;
            jb_puts(b, (flags & SERDE_PRETTY) ? ": " : ":");
            /* the key was a string or a number: look it up as it was */
            lua_pushlstring(L, keys[i].s, keys[i].n);
            if (lua_rawget(L, idx) == LUA_TNIL) {
                lua_pop(L, 1);
                lua_Integer ik;
                char *end;
                ik = strtoll(keys[i].s, &end, 10);
                if (*end == 0)
                    lua_rawgeti(L, idx, ik);
                else
                    lua_pushnumber(L, strtod(keys[i].s, NULL)), lua_rawget(L, idx);
            }
            rc = enc(L, -1, b, flags, depth + 1, err, errlen);
            lua_pop(L, 1);
        }
        if (rc == 0) {
            newline(b, flags, depth);
            jb_put(b, "}", 1);
        }
    }
    for (size_t i = 0; i < nk; i++)
        free(keys[i].s);
    free(keys);
    return rc;
}

static int enc(lua_State *L, int idx, struct jbuf *b, int flags, int depth, char *err,
               size_t errlen)
{
    idx = lua_absindex(L, idx);
    if (depth > SERDE_MAX_DEPTH) {
        snprintf(err, errlen, "value nested too deeply (or contains a cycle)");
        return -1;
    }
    luaL_checkstack(L, 8, "json nesting too deep");
    char num[64];
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
    case LUA_TNONE:
        jb_puts(b, "null");
        return 0;
    case LUA_TBOOLEAN:
        jb_puts(b, lua_toboolean(L, idx) ? "true" : "false");
        return 0;
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx)) {
            snprintf(num, sizeof(num), "%lld", (long long)lua_tointeger(L, idx));
        } else {
            double d = lua_tonumber(L, idx);
            if (!isfinite(d))
                strcpy(num, "null");
            else
                fmt_double(d, num, sizeof(num));
        }
        jb_puts(b, num);
        return 0;
    case LUA_TSTRING: {
        size_t n;
        const char *s = lua_tolstring(L, idx, &n);
        return put_string(b, s, n, flags, err, errlen);
    }
    case LUA_TTABLE:
        return enc_table(L, idx, b, flags, depth, err, errlen);
    case LUA_TUSERDATA: {
        /* connection metadata and __tojson objects: through klua's converter */
        json_t *j = klua_to_json(L, idx, err, errlen);
        if (!j)
            return -1;
        klua_push_json(L, j);
        json_decref(j);
        int rc = enc(L, -1, b, flags, depth + 1, err, errlen);
        lua_pop(L, 1);
        return rc;
    }
    default:
        snprintf(err, errlen, "a %s value cannot be converted to JSON", luaL_typename(L, idx));
        return -1;
    }
}

int serde_encode_json(lua_State *L, int idx, int flags, char **out, size_t *outlen, char *err,
                      size_t errlen)
{
    struct jbuf b = {0};
    int rc = enc(L, idx, &b, flags, 0, err, errlen);
    if (rc == 0 && b.oom) {
        snprintf(err, errlen, "out of memory");
        rc = -1;
    }
    if (rc) {
        free(b.p);
        return -1;
    }
    *out = b.p;
    *outlen = b.n;
    return 0;
}

/* ---- reading files ----------------------------------------------------- */

/* Reads path whole; raises a Lua error naming fname on failure. The buffer
 * is a Lua userdata box (freed by the GC even if a later step raises). */
static char *read_file(lua_State *L, const char *fname, const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        lualib_error(L, fname, "reading file %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > SERDE_MAX_FILE) {
        fclose(f);
        lualib_error(L, fname, "reading file %s: not a regular file of at most %u bytes", path,
                     SERDE_MAX_FILE);
    }
    char *buf = lua_newuserdatauv(L, (size_t)st.st_size + 1, 0);
    size_t n = fread(buf, 1, (size_t)st.st_size, f);
    bool bad = ferror(f);
    fclose(f);
    if (bad)
        lualib_error(L, fname, "reading file %s: read error", path);
    buf[n] = 0;
    *len = n;
    return buf;
}

/* ---- the bindings ------------------------------------------------------ */

enum fmt { FMT_JSON, FMT_TOML, FMT_YAML };
static const char *const fmt_names[] = {"json", "toml", "yaml"};

static json_t *parse_text(enum fmt f, const char *s, size_t n, const char *source, char *err,
                          size_t errlen)
{
    switch (f) {
    case FMT_JSON:
        return jsonc_parse(s, n, err, errlen);
    case FMT_TOML:
        return toml_json_parse(s, n, source, err, errlen);
    case FMT_YAML:
        return yaml_json_parse(s, n, err, errlen);
    }
    return NULL;
}

static int do_parse(lua_State *L, enum fmt f, const char *fname)
{
    size_t n;
    const char *s = lualib_checklstring(L, 1, fname, &n);
    char err[512];
    json_t *j = parse_text(f, s, n, NULL, err, sizeof(err));
    if (!j)
        return lualib_error(L, fname, "parsing argument #1 as %s: %s", fmt_names[f], err);
    klua_push_json(L, j);
    json_decref(j);
    return 1;
}

static int do_load(lua_State *L, enum fmt f, const char *fname)
{
    const char *path = lualib_checklstring(L, 1, fname, NULL);
    size_t n;
    const char *s = read_file(L, fname, path, &n);
    char err[512];
    json_t *j = parse_text(f, s, n, path, err, sizeof(err));
    if (!j)
        return lualib_error(L, fname, "parsing %s as %s: %s", path, fmt_names[f], err);
    klua_push_json(L, j);
    json_decref(j);
    return 1;
}

static int do_json_encode(lua_State *L, int flags, const char *fname)
{
    char err[256];
    char *s;
    size_t n;
    if (serde_encode_json(L, 1, flags, &s, &n, err, sizeof(err)) != 0)
        return lualib_error(L, fname, "%s", err);
    lua_pushlstring(L, s, n);
    free(s);
    return 1;
}

static int do_other_encode(lua_State *L, enum fmt f, int style, const char *fname)
{
    char err[256];
    luaL_checkany(L, 1);
    json_t *j = klua_to_json(L, 1, err, sizeof(err));
    if (!j)
        return lualib_error(L, fname, "%s", err);
    char *s = f == FMT_TOML ? toml_json_encode(j, (enum toml_json_style)style, err, sizeof(err))
                            : yaml_json_encode(j, err, sizeof(err));
    json_decref(j);
    if (!s)
        return lualib_error(L, fname, "%s", err);
    lua_pushstring(L, s);
    free(s);
    return 1;
}

#define SERDE_FNS(P, NS)                                                                           \
    static int P##json_parse(lua_State *L)                                                         \
    {                                                                                              \
        return do_parse(L, FMT_JSON, NS "json_parse");                                             \
    }                                                                                              \
    static int P##json_load(lua_State *L)                                                          \
    {                                                                                              \
        return do_load(L, FMT_JSON, NS "json_load");                                               \
    }                                                                                              \
    static int P##json_encode(lua_State *L)                                                        \
    {                                                                                              \
        return do_json_encode(L, 0, NS "json_encode");                                             \
    }                                                                                              \
    static int P##json_encode_pretty(lua_State *L)                                                 \
    {                                                                                              \
        return do_json_encode(L, SERDE_PRETTY | SERDE_SORT, NS "json_encode_pretty");              \
    }                                                                                              \
    static int P##toml_parse(lua_State *L)                                                         \
    {                                                                                              \
        return do_parse(L, FMT_TOML, NS "toml_parse");                                             \
    }                                                                                              \
    static int P##toml_load(lua_State *L)                                                          \
    {                                                                                              \
        return do_load(L, FMT_TOML, NS "toml_load");                                               \
    }                                                                                              \
    static int P##toml_encode(lua_State *L)                                                        \
    {                                                                                              \
        return do_other_encode(L, FMT_TOML, TOML_JSON_PLAIN, NS "toml_encode");                    \
    }                                                                                              \
    static int P##toml_encode_pretty(lua_State *L)                                                 \
    {                                                                                              \
        return do_other_encode(L, FMT_TOML, TOML_JSON_PRETTY, NS "toml_encode_pretty");            \
    }

SERDE_FNS(s_, "kumo.serde.")
SERDE_FNS(k_, "kumo.")

static int k_yaml_parse(lua_State *L)
{
    return do_parse(L, FMT_YAML, "kumo.yaml_parse");
}
static int k_yaml_load(lua_State *L)
{
    return do_load(L, FMT_YAML, "kumo.yaml_load");
}
static int k_yaml_encode(lua_State *L)
{
    return do_other_encode(L, FMT_YAML, 0, "kumo.yaml_encode");
}

static int s_toml_encode_pretty_compact(lua_State *L)
{
    return do_other_encode(L, FMT_TOML, TOML_JSON_COMPACT, "kumo.serde.toml_encode_pretty_compact");
}
static int s_yaml_parse(lua_State *L)
{
    return do_parse(L, FMT_YAML, "kumo.serde.yaml_parse");
}
static int s_yaml_load(lua_State *L)
{
    return do_load(L, FMT_YAML, "kumo.serde.yaml_load");
}
static int s_yaml_encode(lua_State *L)
{
    return do_other_encode(L, FMT_YAML, 0, "kumo.serde.yaml_encode");
}

static const luaL_Reg serde_fns[] = {
    {"json_parse", s_json_parse},
    {"json_load", s_json_load},
    {"json_encode", s_json_encode},
    {"json_encode_pretty", s_json_encode_pretty},
    {"toml_parse", s_toml_parse},
    {"toml_load", s_toml_load},
    {"toml_encode", s_toml_encode},
    {"toml_encode_pretty", s_toml_encode_pretty},
    {"toml_encode_pretty_compact", s_toml_encode_pretty_compact},
    {"yaml_parse", s_yaml_parse},
    {"yaml_load", s_yaml_load},
    {"yaml_encode", s_yaml_encode},
    {NULL, NULL},
};

/* The names KumoMTA had before kumo.serde; json_decode is kumod's own
 * older spelling of json_parse and stays for policies that use it. */
static const luaL_Reg compat_fns[] = {
    {"json_parse", k_json_parse},
    {"json_decode", k_json_parse},
    {"json_load", k_json_load},
    {"json_encode", k_json_encode},
    {"json_encode_pretty", k_json_encode_pretty},
    {"toml_parse", k_toml_parse},
    {"toml_load", k_toml_load},
    {"toml_encode", k_toml_encode},
    {"toml_encode_pretty", k_toml_encode_pretty},
    {"yaml_parse", k_yaml_parse},
    {"yaml_load", k_yaml_load},
    {"yaml_encode", k_yaml_encode},
    {NULL, NULL},
};

const lualib_module lualib_serde = {"kumo.serde", serde_fns, NULL};
const lualib_module lualib_serde_compat = {"kumo", compat_fns, NULL};
