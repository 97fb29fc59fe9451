/* kumo.encode bindings. Binary codecs are codec.c; charsets go through
 * glibc's iconv, which knows the Latin, Cyrillic, CJK and Unicode code pages
 * policies meet in mail. Runs on the VM's thread, CPU only. Errors are Lua
 * errors naming the function, the argument and (for decoders) the offset of
 * the first bad character. */
#include "lua/lib/encode.h"

#include <errno.h>
#include <iconv.h>
#include <lauxlib.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "lua/klua.h"
#include "lua/lib/args.h"
#include "lua/lib/codec.h"

struct codec_fn {
    const char *name; /* without _encode / _decode */
    enum codec_kind kind;
    bool pad;
};

static const struct codec_fn codecs[] = {
    {"hex", CODEC_HEX, false},
    {"base32", CODEC_BASE32, true},
    {"base32_nopad", CODEC_BASE32, false},
    {"base32hex", CODEC_BASE32HEX, true},
    {"base32hex_nopad", CODEC_BASE32HEX, false},
    {"base64", CODEC_BASE64, true},
    {"base64_nopad", CODEC_BASE64, false},
    {"base64url", CODEC_BASE64URL, true},
    {"base64url_nopad", CODEC_BASE64URL, false},
};

static const char *check_bytes(lua_State *L, int idx, const char *fname, size_t *n)
{
    if (lua_type(L, idx) != LUA_TSTRING)
        luaL_error(L, "kumo.encode.%s: argument #%d must be a string, got %s", fname, idx,
                   luaL_typename(L, idx));
    return lua_tolstring(L, idx, n);
}

static int l_encode(lua_State *L)
{
    const struct codec_fn *c = lua_touserdata(L, lua_upvalueindex(1));
    char fname[48];
    snprintf(fname, sizeof(fname), "%s_encode", c->name);
    size_t n;
    const char *in = check_bytes(L, 1, fname, &n);
    size_t len = codec_encoded_len(c->kind, n, c->pad);
    luaL_Buffer b;
    char *out = luaL_buffinitsize(L, &b, len);
    codec_encode(c->kind, (const uint8_t *)in, n, out, c->pad);
    luaL_pushresultsize(&b, len);
    return 1;
}

static int l_decode(lua_State *L)
{
    const struct codec_fn *c = lua_touserdata(L, lua_upvalueindex(1));
    char fname[48];
    snprintf(fname, sizeof(fname), "%s_decode", c->name);
    size_t n;
    const char *in = check_bytes(L, 1, fname, &n);
    luaL_Buffer b;
    uint8_t *out = (uint8_t *)luaL_buffinitsize(L, &b, codec_decoded_max(c->kind, n));
    size_t len = 0, pos = 0;
    if (codec_decode(c->kind, in, n, out, &len, &pos) != 0)
        return luaL_error(L, "kumo.encode.%s: argument #1 is not valid %s: bad input at byte %d",
                          fname, c->name, (int)pos);
    luaL_pushresultsize(&b, len);
    return 1;
}

/* ---- charsets -------------------------------------------------------------- */

/* Length of the UTF-8 sequence starting at p (1..4), or 0 when it is not
 * a valid one (overlong forms, surrogates and values past U+10FFFF are
 * invalid, RFC 3629). */
static size_t utf8_seq_len(const unsigned char *p, size_t n)
{
    unsigned c = p[0];
    if (c < 0x80)
        return 1;
    size_t len;
    unsigned min;
    if ((c & 0xe0) == 0xc0) {
        len = 2;
        min = 0x80;
        c &= 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
        len = 3;
        min = 0x800;
        c &= 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
        len = 4;
        min = 0x10000;
        c &= 0x07;
    } else {
        return 0;
    }
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        c = (c << 6) | (p[i] & 0x3f);
    }
    if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
        return 0;
    return len;
}

static bool utf8_valid(const char *s, size_t n, size_t *bad)
{
    for (size_t i = 0; i < n;) {
        size_t l = utf8_seq_len((const unsigned char *)s + i, n - i);
        if (!l) {
            *bad = i;
            return false;
        }
        i += l;
    }
    return true;
}

/* Converts in[0..n) with cd into a Lua string. skip_bad: characters the
 * target cannot represent are dropped (input is UTF-8 then). Returns 0, or
 * the errno of the failure with nothing pushed. */
static int convert(lua_State *L, iconv_t cd, const char *in, size_t n, bool skip_bad,
                   size_t *bad_at)
{
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    char *inp = (char *)in;
    size_t inleft = n;
    bool flushing = false;
    for (;;) {
        char *out = luaL_prepbuffer(&b);
        char *outp = out;
        size_t outleft = LUAL_BUFFERSIZE;
        size_t r = flushing ? iconv(cd, NULL, NULL, &outp, &outleft)
                            : iconv(cd, &inp, &inleft, &outp, &outleft);
        luaL_addsize(&b, (size_t)(outp - out));
        if (r != (size_t)-1) {
            if (flushing)
                break;
            flushing = true;
            continue;
        }
        if (errno == E2BIG)
            continue;
        if (errno == EILSEQ && skip_bad && inleft > 0) {
            size_t l = utf8_seq_len((const unsigned char *)inp, inleft);
            l = l ? l : 1;
            inp += l;
            inleft -= l;
            continue;
        }
        int e = errno == EINVAL ? EILSEQ : errno; /* truncated input: invalid too */
        *bad_at = (size_t)(inp - in);
        luaL_pushresult(&b);
        lua_pop(L, 1);
        return e;
    }
    luaL_pushresult(&b);
    return 0;
}

static int l_charset_decode(lua_State *L)
{
    const char *cs = lib_checkstring(L, 1, "kumo.encode.charset_decode", "argument #1 (CHARSET)");
    size_t n;
    const char *in = check_bytes(L, 2, "charset_decode", &n);
    iconv_t cd = iconv_open("UTF-8", cs);
    if (cd == (iconv_t)-1)
        return luaL_error(L, "kumo.encode.charset_decode: unknown charset %s", cs);
    size_t bad = 0;
    int e = convert(L, cd, in, n, false, &bad);
    iconv_close(cd);
    if (e)
        return luaL_error(L,
                          "kumo.encode.charset_decode: input string did not decode from %s "
                          "bytes: invalid sequence at byte %d",
                          cs, (int)bad);
    return 1;
}

static int l_charset_encode(lua_State *L)
{
    const char *cs = lib_checkstring(L, 1, "kumo.encode.charset_encode", "argument #1 (CHARSET)");
    size_t n;
    const char *in = check_bytes(L, 2, "charset_encode", &n);
    bool ignore = lua_isnoneornil(L, 3) ? true : lua_toboolean(L, 3);
    size_t bad = 0;
    if (!utf8_valid(in, n, &bad))
        return luaL_error(L, "kumo.encode.charset_encode: argument #2 is not valid UTF-8 (byte %d)",
                          (int)bad);
    iconv_t cd = iconv_open(cs, "UTF-8");
    if (cd == (iconv_t)-1)
        return luaL_error(L, "kumo.encode.charset_encode: unknown charset %s", cs);
    int e = convert(L, cd, in, n, ignore, &bad);
    iconv_close(cd);
    if (e)
        return luaL_error(L,
                          "kumo.encode.charset_encode: input string did not encode into %s "
                          "bytes: no representation for the character at byte %d",
                          cs, (int)bad);
    return 1;
}

static void encode_open(lua_State *L)
{
    lua_newtable(L);
    for (size_t i = 0; i < sizeof(codecs) / sizeof(codecs[0]); i++) {
        char name[48];
        lua_pushlightuserdata(L, (void *)&codecs[i]);
        lua_pushcclosure(L, l_encode, 1);
        snprintf(name, sizeof(name), "%s_encode", codecs[i].name);
        lua_setfield(L, -2, name);
        lua_pushlightuserdata(L, (void *)&codecs[i]);
        lua_pushcclosure(L, l_decode, 1);
        snprintf(name, sizeof(name), "%s_decode", codecs[i].name);
        lua_setfield(L, -2, name);
    }
    lua_pushcfunction(L, l_charset_decode);
    lua_setfield(L, -2, "charset_decode");
    lua_pushcfunction(L, l_charset_encode);
    lua_setfield(L, -2, "charset_encode");
    lua_setfield(L, -2, "encode");
}

void encode_lua_register(void)
{
    klua_register_opener(encode_open);
}
