/* kumo.uuid over libuuid (versions 1 and 4: MAC-address node id and the
 * kernel's random source) plus versions 6 and 7, which libuuid 2.38 lacks and
 * which are reorderings of a version 1 UUID and of the clock plus random bits.
 * The Uuid userdata holds its 16 bytes. Runs on the VM's thread; errors name
 * the function. */
#include "lua/lib/uuid.h"

#include <lauxlib.h>
#include <stdbool.h>
#include <strings.h>
#include <string.h>
#include <sys/random.h>
#include <uuid/uuid.h>

#include "core/hex.h"
#include "core/kerr.h"
#include "core/reactor.h"
#include "lua/klua.h"

#define UUID_MT "kumo.Uuid"

int kuuid_parse(const char *s, size_t n, uint8_t out[16])
{
    if (n >= 9 && strncasecmp(s, "urn:uuid:", 9) == 0) {
        s += 9;
        n -= 9;
    } else if (n >= 2 && s[0] == '{' && s[n - 1] == '}') {
        s++;
        n -= 2;
        if (n != 36)
            return KERR_PARSE;
    }
    bool hyphens;
    if (n == 36)
        hyphens = true;
    else if (n == 32)
        hyphens = false;
    else
        return KERR_PARSE;
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        if (hyphens && (i == 8 || i == 13 || i == 18 || i == 23)) {
            if (s[i] != '-')
                return KERR_PARSE;
            i++;
            continue;
        }
        int hi = hex_digit_value(s[i]), lo = i + 1 < n ? hex_digit_value(s[i + 1]) : -1;
        if (hi < 0 || lo < 0)
            return KERR_PARSE;
        out[o++] = (uint8_t)(hi << 4 | lo);
        i += 2;
    }
    return o == 16 ? 0 : KERR_PARSE;
}

void kuuid_v1_to_v6(const uint8_t v1[16], uint8_t out[16])
{
    uint64_t time_low =
        (uint64_t)v1[0] << 24 | (uint64_t)v1[1] << 16 | (uint64_t)v1[2] << 8 | v1[3];
    uint64_t time_mid = (uint64_t)v1[4] << 8 | v1[5];
    uint64_t time_hi = ((uint64_t)v1[6] << 8 | v1[7]) & 0x0fff;
    uint64_t ts = time_hi << 48 | time_mid << 32 | time_low; /* 60 bits */
    out[0] = (uint8_t)(ts >> 52);
    out[1] = (uint8_t)(ts >> 44);
    out[2] = (uint8_t)(ts >> 36);
    out[3] = (uint8_t)(ts >> 28);
    out[4] = (uint8_t)(ts >> 20);
    out[5] = (uint8_t)(ts >> 12);
    out[6] = (uint8_t)(0x60 | ((ts >> 8) & 0x0f));
    out[7] = (uint8_t)ts;
    memcpy(out + 8, v1 + 8, 8); /* variant + clock sequence, node */
}

void kuuid_make_v7(uint64_t unix_ms, const uint8_t rnd[10], uint8_t out[16])
{
    for (int i = 0; i < 6; i++)
        out[i] = (uint8_t)(unix_ms >> (40 - 8 * i));
    memcpy(out + 6, rnd, 10);
    out[6] = (uint8_t)(0x70 | (out[6] & 0x0f));
    out[8] = (uint8_t)(0x80 | (out[8] & 0x3f));
}

static void push_uuid(lua_State *L, const uint8_t b[16])
{
    uint8_t *u = lua_newuserdatauv(L, 16, 0);
    memcpy(u, b, 16);
    luaL_setmetatable(L, UUID_MT);
}

static void format(const uint8_t *u, char out[37])
{
    uuid_unparse_lower(u, out);
}

static int l_index(lua_State *L)
{
    const uint8_t *u = luaL_checkudata(L, 1, UUID_MT);
    if (lua_type(L, 2) != LUA_TSTRING) {
        lua_pushnil(L);
        return 1;
    }
    const char *k = lua_tostring(L, 2);
    char h[37];
    format(u, h);
    if (strcmp(k, "bytes") == 0) {
        lua_pushlstring(L, (const char *)u, 16);
    } else if (strcmp(k, "hyphenated") == 0) {
        lua_pushstring(L, h);
    } else if (strcmp(k, "simple") == 0) {
        char s[33];
        size_t o = 0;
        for (const char *p = h; *p; p++)
            if (*p != '-')
                s[o++] = *p;
        s[o] = 0;
        lua_pushstring(L, s);
    } else if (strcmp(k, "braced") == 0) {
        lua_pushfstring(L, "{%s}", h);
    } else if (strcmp(k, "urn") == 0) {
        lua_pushfstring(L, "urn:uuid:%s", h);
    } else {
        lua_pushnil(L);
    }
    return 1;
}

static int l_tostring(lua_State *L)
{
    const uint8_t *u = luaL_checkudata(L, 1, UUID_MT);
    char h[37];
    format(u, h);
    lua_pushstring(L, h);
    return 1;
}

static int l_eq(lua_State *L)
{
    const uint8_t *a = luaL_testudata(L, 1, UUID_MT), *b = luaL_testudata(L, 2, UUID_MT);
    lua_pushboolean(L, a && b && memcmp(a, b, 16) == 0);
    return 1;
}

static int l_new_v1(lua_State *L)
{
    uuid_t u;
    uuid_generate_time(u);
    push_uuid(L, u);
    return 1;
}

static int l_new_v4(lua_State *L)
{
    uuid_t u;
    uuid_generate_random(u);
    push_uuid(L, u);
    return 1;
}

static int l_new_v6(lua_State *L)
{
    uuid_t v1;
    uint8_t u[16];
    uuid_generate_time(v1);
    kuuid_v1_to_v6(v1, u);
    push_uuid(L, u);
    return 1;
}

static int l_new_v7(lua_State *L)
{
    uint8_t rnd[10], u[16];
    if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd))
        return luaL_error(L, "kumo.uuid.new_v7: no random bytes available");
    kuuid_make_v7((uint64_t)(clock_wall_ns() / 1000000), rnd, u);
    push_uuid(L, u);
    return 1;
}

static int l_parse(lua_State *L)
{
    if (lua_type(L, 1) != LUA_TSTRING)
        return luaL_error(L, "kumo.uuid.parse: argument #1 must be a string, got %s",
                          luaL_typename(L, 1));
    size_t n;
    const char *s = lua_tolstring(L, 1, &n);
    uint8_t u[16];
    if (kuuid_parse(s, n, u) != 0)
        return luaL_error(L,
                          "kumo.uuid.parse: invalid UUID '%s%s': expected 32 hex digits, "
                          "hyphenated 8-4-4-4-12, optionally in braces or after urn:uuid:",
                          lua_pushlstring(L, s, n > 64 ? 64 : n), n > 64 ? "..." : "");
    push_uuid(L, u);
    return 1;
}

static void uuid_open(lua_State *L)
{
    if (luaL_newmetatable(L, UUID_MT)) {
        static const luaL_Reg mt[] = {{"__index", l_index},
                                      {"__tostring", l_tostring},
                                      {"__eq", l_eq},
                                      {"__tojson", l_tostring},
                                      {NULL, NULL}};
        luaL_setfuncs(L, mt, 0);
        lua_pushstring(L, "Uuid");
        lua_setfield(L, -2, "__name");
    }
    lua_pop(L, 1);
    static const luaL_Reg fns[] = {{"new_v1", l_new_v1}, {"new_v4", l_new_v4}, {"new_v6", l_new_v6},
                                   {"new_v7", l_new_v7}, {"parse", l_parse},   {NULL, NULL}};
    luaL_newlib(L, fns);
    lua_setfield(L, -2, "uuid");
}

void uuid_lua_register(void)
{
    klua_register_opener(uuid_open);
}
