/* BinaryResult userdata: the bytes live in the userdata block itself (length
 * prefix, then data), so a result costs one allocation and no __gc. Fields are
 * computed on access; a policy reads one or two of them. Runs on the thread of
 * the VM that holds the value. Allocation failure raises a Lua error. */
#include "lua/lib/binresult.h"

#include <lauxlib.h>
#include <stdbool.h>
#include <string.h>

#include "lua/lib/codec.h"

#define BINRESULT_MT "kumo.BinaryResult"

struct binresult {
    size_t n;
    uint8_t data[];
};

static void push_encoded(lua_State *L, const struct binresult *b, enum codec_kind kind, bool pad)
{
    luaL_Buffer buf;
    size_t len = codec_encoded_len(kind, b->n, pad);
    char *p = luaL_buffinitsize(L, &buf, len);
    codec_encode(kind, b->data, b->n, p, pad);
    luaL_pushresultsize(&buf, len);
}

static const struct {
    const char *name;
    enum codec_kind kind;
    bool pad;
} fields[] = {
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

static int l_index(lua_State *L)
{
    const struct binresult *b = luaL_checkudata(L, 1, BINRESULT_MT);
    if (lua_type(L, 2) != LUA_TSTRING) {
        lua_pushnil(L);
        return 1;
    }
    const char *k = lua_tostring(L, 2);
    if (strcmp(k, "bytes") == 0) {
        lua_pushlstring(L, (const char *)b->data, b->n);
        return 1;
    }
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++)
        if (strcmp(k, fields[i].name) == 0) {
            push_encoded(L, b, fields[i].kind, fields[i].pad);
            return 1;
        }
    lua_pushnil(L);
    return 1;
}

static int l_tostring(lua_State *L)
{
    const struct binresult *b = luaL_checkudata(L, 1, BINRESULT_MT);
    push_encoded(L, b, CODEC_HEX, false);
    return 1;
}

static int l_eq(lua_State *L)
{
    size_t na, nb;
    const uint8_t *a = binresult_test(L, 1, &na);
    const uint8_t *b = binresult_test(L, 2, &nb);
    lua_pushboolean(L, a && b && na == nb && memcmp(a, b, na) == 0);
    return 1;
}

static int l_len(lua_State *L)
{
    const struct binresult *b = luaL_checkudata(L, 1, BINRESULT_MT);
    lua_pushinteger(L, (lua_Integer)b->n);
    return 1;
}

/* JSON (kumo.json_encode, digests of tables): the hex form, as tostring. */
static int l_tojson(lua_State *L)
{
    return l_tostring(L);
}

void binresult_push(lua_State *L, const uint8_t *data, size_t n)
{
    struct binresult *b = lua_newuserdatauv(L, sizeof(*b) + n, 0);
    b->n = n;
    if (n)
        memcpy(b->data, data, n);
    if (luaL_newmetatable(L, BINRESULT_MT)) {
        static const luaL_Reg mt[] = {{"__index", l_index},   {"__tostring", l_tostring},
                                      {"__eq", l_eq},         {"__len", l_len},
                                      {"__tojson", l_tojson}, {NULL, NULL}};
        luaL_setfuncs(L, mt, 0);
        lua_pushstring(L, "BinaryResult");
        lua_setfield(L, -2, "__name");
    }
    lua_setmetatable(L, -2);
}

const uint8_t *binresult_test(lua_State *L, int idx, size_t *n)
{
    struct binresult *b = luaL_testudata(L, idx, BINRESULT_MT);
    if (!b)
        return NULL;
    *n = b->n;
    return b->data;
}
