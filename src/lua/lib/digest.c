/* kumo.digest over OpenSSL 3 EVP: each function feeds every argument to one
 * hash (strings as their bytes, anything else as its compact JSON text) and
 * returns a BinaryResult. hmac_* load their KeySource first (secrets_wrap).
 * Runs on the VM's thread; hashing is CPU only and proportional to the input
 * the policy already holds in memory. Errors (a value JSON cannot represent,
 * a non-string message) are Lua errors naming the function and argument. */
#include "lua/lib/digest.h"

#include <jansson.h>
#include <lauxlib.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lua/klua.h"
#include "lua/lib/binresult.h"
#include "lua/lib/secrets.h"

/* ---- CRC-32 (reflected polynomial 0xEDB88320) ----------------------------- */

static uint32_t crc_table[256];

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
}

uint32_t digest_crc32(uint32_t crc, const void *data, size_t n)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, crc_init);
    const uint8_t *p = data;
    crc = ~crc;
    while (n--)
        crc = crc_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

/* ---- hashes --------------------------------------------------------------- */

struct algo {
    const char *lua_name;
    const EVP_MD *(*md)(void); /* NULL: crc32 */
};

static const struct algo algos[] = {
    {"sha1", EVP_sha1},         {"sha224", EVP_sha224},
    {"sha256", EVP_sha256},     {"sha384", EVP_sha384},
    {"sha512", EVP_sha512},     {"sha512_256", EVP_sha512_256},
    {"sha3_256", EVP_sha3_256}, {"sha3_384", EVP_sha3_384},
    {"sha3_512", EVP_sha3_512}, {"crc32", NULL},
};

/* Replaces every argument that is not a string by its compact JSON text. */
static void args_to_bytes(lua_State *L, int nargs, const char *fname)
{
    for (int i = 1; i <= nargs; i++) {
        if (lua_type(L, i) == LUA_TSTRING)
            continue;
        char err[256];
        json_t *j = klua_to_json(L, i, err, sizeof(err));
        if (!j)
            luaL_error(L, "kumo.digest.%s: argument #%d: %s", fname, i, err);
        char *s = json_dumps(j, JSON_ENCODE_ANY | JSON_COMPACT);
        json_decref(j);
        if (!s)
            luaL_error(L, "kumo.digest.%s: argument #%d cannot be encoded as JSON", fname, i);
        lua_pushstring(L, s);
        free(s);
        lua_replace(L, i);
    }
}

static int l_digest(lua_State *L)
{
    const struct algo *a = lua_touserdata(L, lua_upvalueindex(1));
    int nargs = lua_gettop(L);
    args_to_bytes(L, nargs, a->lua_name);
    uint8_t out[EVP_MAX_MD_SIZE];
    unsigned outlen = 0;
    if (!a->md) {
        uint32_t crc = 0;
        for (int i = 1; i <= nargs; i++) {
            size_t n;
            const char *p = lua_tolstring(L, i, &n);
            crc = digest_crc32(crc, p, n);
        }
        /* big-endian, as the checksum is usually printed */
        out[0] = (uint8_t)(crc >> 24);
        out[1] = (uint8_t)(crc >> 16);
        out[2] = (uint8_t)(crc >> 8);
        out[3] = (uint8_t)crc;
        binresult_push(L, out, 4);
        return 1;
    }
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok = ctx && EVP_DigestInit_ex(ctx, a->md(), NULL) == 1;
    for (int i = 1; ok && i <= nargs; i++) {
        size_t n;
        const char *p = lua_tolstring(L, i, &n);
        ok = EVP_DigestUpdate(ctx, p, n) == 1;
    }
    ok = ok && EVP_DigestFinal_ex(ctx, out, &outlen) == 1;
    EVP_MD_CTX_free(ctx);
    if (!ok)
        return luaL_error(L, "kumo.digest.%s: OpenSSL digest failed", a->lua_name);
    binresult_push(L, out, outlen);
    return 1;
}

/* hmac_*(KEY, MSG) after secrets_wrap: KEY is the key's bytes. */
static int l_hmac(lua_State *L)
{
    const struct algo *a = lua_touserdata(L, lua_upvalueindex(1));
    size_t klen, mlen;
    const char *key = lua_tolstring(L, 1, &klen);
    if (lua_type(L, 2) != LUA_TSTRING)
        return luaL_error(L, "kumo.digest.hmac_%s: argument #2 (MSG) must be a string, got %s",
                          a->lua_name, luaL_typename(L, 2));
    const char *msg = lua_tolstring(L, 2, &mlen);
    uint8_t out[EVP_MAX_MD_SIZE];
    unsigned outlen = 0;
    if (!HMAC(a->md(), key, (int)klen, (const unsigned char *)msg, mlen, out, &outlen))
        return luaL_error(L, "kumo.digest.hmac_%s: HMAC failed", a->lua_name);
    binresult_push(L, out, outlen);
    return 1;
}

static void digest_open(lua_State *L)
{
    lua_newtable(L);
    for (size_t i = 0; i < sizeof(algos) / sizeof(algos[0]); i++) {
        lua_pushlightuserdata(L, (void *)&algos[i]);
        lua_pushcclosure(L, l_digest, 1);
        lua_setfield(L, -2, algos[i].lua_name);
    }
    static const char *const hmacs[] = {"sha1", "sha224", "sha256", "sha384", "sha512", NULL};
    for (int h = 0; hmacs[h]; h++) {
        const struct algo *a = NULL;
        for (size_t i = 0; i < sizeof(algos) / sizeof(algos[0]); i++)
            if (strcmp(algos[i].lua_name, hmacs[h]) == 0)
                a = &algos[i];
        char name[64];
        snprintf(name, sizeof(name), "kumo.digest.hmac_%s", hmacs[h]);
        lua_pushlightuserdata(L, (void *)a);
        lua_pushcclosure(L, l_hmac, 1);
        secrets_wrap(L, name, 1, SECRETS_ARG, NULL);
        lua_setfield(L, -2, name + strlen("kumo.digest."));
    }
    lua_setfield(L, -2, "digest");
}

void digest_lua_register(void)
{
    klua_register_opener(digest_open);
}
