/* kumo.crypto over OpenSSL 3 EVP. Keys are KeySources, loaded by the
 * secrets_wrap wrapper before the C functions here run, so these only see
 * bytes. aws_sign_v4 builds the canonical request, string to sign and
 * signature of AWS SigV4 as AWS documents them (path segments and query
 * parameters percent-encoded once, RFC 3986 unreserved characters kept;
 * header names lower-cased, values trimmed with inner runs of spaces
 * collapsed; x-amz-date always signed, x-amz-security-token with a session
 * token, x-amz-content-sha256 for s3). Runs on the VM's thread, CPU only.
 * Errors are Lua errors naming the function and the parameter. */
#include "lua/lib/crypto.h"

#include <lauxlib.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "core/kerr.h"
#include "lua/klua.h"
#include "lua/lib/args.h"
#include "lua/lib/binresult.h"
#include "lua/lib/codec.h"
#include "lua/lib/secrets.h"
#include "lua/lib/time.h"
#include "lua/lib/timefmt.h"

/* ---- AES ------------------------------------------------------------------- */

static const EVP_CIPHER *aes_cipher(lua_State *L, const char *fname, const char *alg, size_t keylen,
                                    bool *cbc)
{
    if (strcmp(alg, "Cbc") == 0)
        *cbc = true;
    else if (strcmp(alg, "Ecb") == 0)
        *cbc = false;
    else
        luaL_error(L, "kumo.crypto.%s: argument #1 (ALGORITHM) must be 'Cbc' or 'Ecb', not '%s'",
                   fname, alg);
    if (keylen == 16)
        return *cbc ? EVP_aes_128_cbc() : EVP_aes_128_ecb();
    if (keylen == 32)
        return *cbc ? EVP_aes_256_cbc() : EVP_aes_256_ecb();
    luaL_error(L, "kumo.crypto.%s: Key length must be 16 or 32 bytes, got %d", fname, (int)keylen);
    return NULL;
}

/* Runs the cipher over in; on success pushes the output (after prefix, if
 * any) as a BinaryResult (binary) or a string. Returns false on a cipher
 * failure (wrong padding: a wrong key or damaged data). */
static bool run_cipher(lua_State *L, const EVP_CIPHER *c, const uint8_t *key, const uint8_t *iv,
                       bool enc, const uint8_t *in, size_t n, const uint8_t *prefix,
                       size_t prefix_len, bool binary)
{
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    size_t cap = prefix_len + n + 32;
    uint8_t *out = malloc(cap);
    int l1 = 0, l2 = 0;
    bool ok = ctx && out && n <= (size_t)INT32_MAX &&
              EVP_CipherInit_ex(ctx, c, NULL, key, iv, enc ? 1 : 0) == 1 &&
              EVP_CipherUpdate(ctx, out + prefix_len, &l1, in, (int)n) == 1 &&
              EVP_CipherFinal_ex(ctx, out + prefix_len + l1, &l2) == 1;
    EVP_CIPHER_CTX_free(ctx);
    if (ok) {
        if (prefix_len)
            memcpy(out, prefix, prefix_len);
        size_t total = prefix_len + (size_t)l1 + (size_t)l2;
        if (binary)
            binresult_push(L, out, total);
        else
            lua_pushlstring(L, (const char *)out, total);
    }
    free(out);
    return ok;
}

static const char *check_data(lua_State *L, int idx, const char *fname, const char *what, size_t *n)
{
    const uint8_t *b = binresult_test(L, idx, n);
    if (b)
        return (const char *)b;
    if (lua_type(L, idx) != LUA_TSTRING)
        luaL_error(L, "kumo.crypto.%s: argument #%d (%s) must be a string, got %s", fname, idx,
                   what, luaL_typename(L, idx));
    return lua_tolstring(L, idx, n);
}

static int l_aes_encrypt(lua_State *L)
{
    const char *alg =
        lib_checkstring(L, 1, "kumo.crypto.aes_encrypt_block", "argument #1 (ALGORITHM)");
    size_t n, klen;
    const char *plain = check_data(L, 2, "aes_encrypt_block", "PLAINTEXT", &n);
    const char *key = lua_tolstring(L, 3, &klen);
    bool cbc;
    const EVP_CIPHER *c = aes_cipher(L, "aes_encrypt_block", alg, klen, &cbc);
    uint8_t iv[16];
    if (cbc && RAND_bytes(iv, sizeof(iv)) != 1)
        return luaL_error(L, "kumo.crypto.aes_encrypt_block: no random bytes for the IV");
    if (!run_cipher(L, c, (const uint8_t *)key, cbc ? iv : NULL, true, (const uint8_t *)plain, n,
                    iv, cbc ? sizeof(iv) : 0, true))
        return luaL_error(L, "kumo.crypto.aes_encrypt_block: encryption failed");
    return 1;
}

static int l_aes_decrypt(lua_State *L)
{
    const char *alg =
        lib_checkstring(L, 1, "kumo.crypto.aes_decrypt_block", "argument #1 (ALGORITHM)");
    size_t n, klen;
    const char *data = check_data(L, 2, "aes_decrypt_block", "CIPHERTEXT", &n);
    const char *key = lua_tolstring(L, 3, &klen);
    bool cbc;
    const EVP_CIPHER *c = aes_cipher(L, "aes_decrypt_block", alg, klen, &cbc);
    const uint8_t *iv = NULL;
    if (cbc) {
        if (n < 16)
            return luaL_error(L, "kumo.crypto.aes_decrypt_block: ciphertext must be prefixed by iv "
                                 "with len at least 16");
        iv = (const uint8_t *)data;
        data += 16;
        n -= 16;
    }
    if (!run_cipher(L, c, (const uint8_t *)key, iv, false, (const uint8_t *)data, n, NULL, 0,
                    false))
        return luaL_error(L,
                          "kumo.crypto.aes_decrypt_block: Decryption failed with AES %s mode "
                          "(wrong key, or damaged or truncated ciphertext)",
                          cbc ? "CBC" : "ECB");
    return 1;
}

/* ---- AWS SigV4 ------------------------------------------------------------- */

static void sha256_hex(const void *data, size_t n, char out[65])
{
    uint8_t md[32];
    unsigned len = 0;
    EVP_Digest(data, n, md, &len, EVP_sha256(), NULL);
    codec_encode(CODEC_HEX, md, 32, out, false);
    out[64] = 0;
}

static void hmac256(const void *key, size_t klen, const char *msg, uint8_t out[32])
{
    unsigned len = 32;
    HMAC(EVP_sha256(), key, (int)klen, (const unsigned char *)msg, strlen(msg), out, &len);
}

/* AWS's URI encoding: everything but A-Z a-z 0-9 - _ . ~ as %XX (upper case),
 * and '/' too unless keep_slash. */
static void uri_encode(luaL_Buffer *b, const char *s, size_t n, bool keep_slash)
{
    static const char hexu[] = "0123456789ABCDEF";
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
            c == '-' || c == '_' || c == '.' || c == '~' || (keep_slash && c == '/')) {
            luaL_addchar(b, (char)c);
        } else {
            luaL_addchar(b, '%');
            luaL_addchar(b, hexu[c >> 4]);
            luaL_addchar(b, hexu[c & 15]);
        }
    }
}

struct kv {
    char *k, *v;
};

static int kv_cmp(const void *a, const void *b)
{
    const struct kv *x = a, *y = b;
    int c = strcmp(x->k, y->k);
    return c ? c : strcmp(x->v, y->v);
}

/* String field f of the params table (at 1), required or optional. */
static const char *param_str(lua_State *L, const char *f, bool required, size_t *n)
{
    lua_getfield(L, 1, f);
    if (lua_isnil(L, -1) && !required)
        return NULL;
    if (lua_type(L, -1) != LUA_TSTRING)
        luaL_error(L, "kumo.crypto.aws_sign_v4: '%s' must be a string, got %s", f,
                   luaL_typename(L, -1));
    return lua_tolstring(L, -1, n);
}

/* Reads a string->string table field into a malloc'd, sorted kv array;
 * names are encoded (query) or lower-cased (headers). The strings are
 * pushed onto the Lua stack so errors cannot leak them: the array only
 * points into Lua strings. */
static struct kv *read_map(lua_State *L, const char *field, bool is_query, size_t *count)
{
    *count = 0;
    lua_getfield(L, 1, field);
    int t = lua_gettop(L);
    if (lua_isnil(L, t))
        return NULL;
    if (!lua_istable(L, t))
        luaL_error(L, "kumo.crypto.aws_sign_v4: '%s' must be a table, got %s", field,
                   luaL_typename(L, t));
    size_t cap = 0;
    lua_pushnil(L);
    while (lua_next(L, t)) {
        cap++;
        lua_pop(L, 1);
    }
    luaL_checkstack(L, (int)(2 * cap + 16), "too many entries");
    /* the array is a userdata so that an error below frees it */
    struct kv *arr = lua_newuserdatauv(L, (cap ? cap : 1) * sizeof(*arr), 0);
    size_t i = 0;
    lua_pushnil(L);
    while (lua_next(L, t)) {
        int kt = lua_type(L, -2), vt = lua_type(L, -1);
        if (kt != LUA_TSTRING || (vt != LUA_TSTRING && vt != LUA_TNUMBER))
            luaL_error(L, "kumo.crypto.aws_sign_v4: '%s' must map strings to strings", field);
        size_t kn, vn;
        lua_pushvalue(L, -2);
        const char *k = lua_tolstring(L, -1, &kn);
        const char *v = lua_tolstring(L, -2, &vn);
        luaL_Buffer b;
        /* encoded/lowered key */
        luaL_buffinit(L, &b);
        if (is_query) {
            uri_encode(&b, k, kn, false);
        } else {
            for (size_t j = 0; j < kn; j++)
                luaL_addchar(&b, (char)((k[j] >= 'A' && k[j] <= 'Z') ? k[j] + 32 : k[j]));
        }
        luaL_pushresult(&b);
        luaL_buffinit(L, &b);
        if (is_query) {
            uri_encode(&b, v, vn, false);
        } else {
            /* trim and collapse runs of spaces */
            size_t s = 0, e = vn;
            while (s < e && (v[s] == ' ' || v[s] == '\t'))
                s++;
            while (e > s && (v[e - 1] == ' ' || v[e - 1] == '\t'))
                e--;
            bool sp = false;
            for (size_t j = s; j < e; j++) {
                bool is_sp = v[j] == ' ' || v[j] == '\t';
                if (is_sp && sp)
                    continue;
                luaL_addchar(&b, is_sp ? ' ' : v[j]);
                sp = is_sp;
            }
        }
        luaL_pushresult(&b);
        /* stack: ... key value keycopy enckey encval: anchor both in the map
         * userdata's table of strings kept on the stack */
        arr[i].k = (char *)lua_tostring(L, -2);
        arr[i].v = (char *)lua_tostring(L, -1);
        lua_rotate(L, t + 2, 2); /* keep enckey, encval below the iteration */
        lua_pop(L, 2);           /* keycopy, value */
        i++;
    }
    *count = i;
    qsort(arr, i, sizeof(*arr), kv_cmp);
    return arr;
}

static int l_aws_sign_v4(lua_State *L)
{
    size_t n;
    const char *access = param_str(L, "access_key", true, &n);
    size_t slen;
    const char *secret = param_str(L, "secret_key", true, &slen);
    const char *region = param_str(L, "region", true, &n);
    const char *service = param_str(L, "service", true, &n);
    const char *method = param_str(L, "method", true, &n);
    size_t urilen;
    const char *uri = param_str(L, "uri", true, &urilen);
    size_t plen = 0;
    const char *payload = param_str(L, "payload", false, &plen);
    if (!payload)
        payload = "";
    const char *token = param_str(L, "session_token", false, &n);

    int64_t sec;
    int32_t nsec;
    lua_getfield(L, 1, "timestamp");
    if (lua_isnil(L, -1)) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        sec = ts.tv_sec;
    } else if (ktime_test(L, -1, &sec, &nsec)) {
    } else if (lua_type(L, -1) == LUA_TSTRING) {
        size_t tn;
        const char *ts = lua_tolstring(L, -1, &tn);
        if (timefmt_parse_rfc3339(ts, tn, &sec, &nsec) != 0)
            return luaL_error(L, "kumo.crypto.aws_sign_v4: 'timestamp' '%s' is not RFC 3339", ts);
    } else {
        return luaL_error(L,
                          "kumo.crypto.aws_sign_v4: 'timestamp' must be a Time object or an "
                          "RFC 3339 string, got %s",
                          luaL_typename(L, -1));
    }
    char amz_date[32], date[16];
    timefmt_format(sec, 0, "%Y%m%dT%H%M%SZ", amz_date, sizeof(amz_date));
    timefmt_format(sec, 0, "%Y%m%d", date, sizeof(date));

    char payload_hash[65];
    sha256_hex(payload, plen, payload_hash);

    size_t nq, nh;
    struct kv *q = read_map(L, "query_params", true, &nq);
    struct kv *h0 = read_map(L, "headers", false, &nh);
    bool has_host = false;
    for (size_t i = 0; i < nh; i++)
        has_host |= strcmp(h0[i].k, "host") == 0;
    if (!has_host)
        return luaL_error(L, "kumo.crypto.aws_sign_v4: headers must include 'host'");
    /* the headers kumod adds */
    struct kv *h = lua_newuserdatauv(L, (nh + 3) * sizeof(*h), 0);
    size_t hn = 0;
    for (size_t i = 0; i < nh; i++)
        if (strcmp(h0[i].k, "x-amz-date") && (!token || strcmp(h0[i].k, "x-amz-security-token")) &&
            (strcmp(service, "s3") || strcmp(h0[i].k, "x-amz-content-sha256")))
            h[hn++] = h0[i];
    h[hn++] = (struct kv){"x-amz-date", amz_date};
    if (token)
        h[hn++] = (struct kv){"x-amz-security-token", (char *)token};
    if (strcmp(service, "s3") == 0)
        h[hn++] = (struct kv){"x-amz-content-sha256", payload_hash};
    qsort(h, hn, sizeof(*h), kv_cmp);

    /* canonical request */
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    luaL_addstring(&b, method);
    luaL_addchar(&b, '\n');
    if (urilen == 0)
        luaL_addchar(&b, '/');
    else
        uri_encode(&b, uri, urilen, true);
    luaL_addchar(&b, '\n');
    for (size_t i = 0; i < nq; i++) {
        if (i)
            luaL_addchar(&b, '&');
        luaL_addstring(&b, q[i].k);
        luaL_addchar(&b, '=');
        luaL_addstring(&b, q[i].v);
    }
    luaL_addchar(&b, '\n');
    for (size_t i = 0; i < hn; i++) {
        luaL_addstring(&b, h[i].k);
        luaL_addchar(&b, ':');
        luaL_addstring(&b, h[i].v);
        luaL_addchar(&b, '\n');
    }
    luaL_addchar(&b, '\n');
    for (size_t i = 0; i < hn; i++) {
        if (i)
            luaL_addchar(&b, ';');
        luaL_addstring(&b, h[i].k);
    }
    luaL_addchar(&b, '\n');
    luaL_addstring(&b, payload_hash);
    luaL_pushresult(&b);
    size_t crlen;
    const char *canonical = lua_tolstring(L, -1, &crlen);
    int canon_idx = lua_gettop(L);

    luaL_buffinit(L, &b);
    for (size_t i = 0; i < hn; i++) {
        if (i)
            luaL_addchar(&b, ';');
        luaL_addstring(&b, h[i].k);
    }
    luaL_pushresult(&b);
    int signed_idx = lua_gettop(L);

    char canon_hash[65];
    sha256_hex(canonical, crlen, canon_hash);
    const char *scope = lua_pushfstring(L, "%s/%s/%s/aws4_request", date, region, service);
    int scope_idx = lua_gettop(L);
    const char *sts =
        lua_pushfstring(L, "AWS4-HMAC-SHA256\n%s\n%s\n%s", amz_date, scope, canon_hash);
    int sts_idx = lua_gettop(L);

    /* kSigning = HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), service), "aws4_request") */
    luaL_buffinit(L, &b);
    luaL_addstring(&b, "AWS4");
    luaL_addlstring(&b, secret, slen);
    luaL_pushresult(&b);
    size_t k0len;
    const char *k0 = lua_tolstring(L, -1, &k0len);
    uint8_t k1[32], k2[32], k3[32], k4[32], sig[32];
    hmac256(k0, k0len, date, k1);
    hmac256(k1, 32, region, k2);
    hmac256(k2, 32, service, k3);
    hmac256(k3, 32, "aws4_request", k4);
    hmac256(k4, 32, sts, sig);
    char sig_hex[65];
    codec_encode(CODEC_HEX, sig, 32, sig_hex, false);
    sig_hex[64] = 0;
    OPENSSL_cleanse(k1, sizeof(k1));
    OPENSSL_cleanse(k4, sizeof(k4));

    lua_createtable(L, 0, 5);
    lua_pushfstring(L, "AWS4-HMAC-SHA256 Credential=%s/%s, SignedHeaders=%s, Signature=%s", access,
                    lua_tostring(L, scope_idx), lua_tostring(L, signed_idx), sig_hex);
    lua_setfield(L, -2, "authorization");
    lua_pushstring(L, amz_date);
    lua_setfield(L, -2, "timestamp");
    lua_pushstring(L, sig_hex);
    lua_setfield(L, -2, "signature");
    lua_pushvalue(L, canon_idx);
    lua_setfield(L, -2, "canonical_request");
    lua_pushvalue(L, sts_idx);
    lua_setfield(L, -2, "string_to_sign");
    return 1;
}

static void crypto_open(lua_State *L)
{
    lua_newtable(L);
    lua_pushcfunction(L, l_aes_encrypt);
    secrets_wrap(L, "kumo.crypto.aes_encrypt_block", 3, SECRETS_ARG_OR_KEY, NULL);
    lua_setfield(L, -2, "aes_encrypt_block");
    lua_pushcfunction(L, l_aes_decrypt);
    secrets_wrap(L, "kumo.crypto.aes_decrypt_block", 3, SECRETS_ARG_OR_KEY, NULL);
    lua_setfield(L, -2, "aes_decrypt_block");
    static const char *const keys[] = {"access_key", "secret_key", NULL};
    lua_pushcfunction(L, l_aws_sign_v4);
    secrets_wrap(L, "kumo.crypto.aws_sign_v4", 1, SECRETS_FIELDS, keys);
    lua_setfield(L, -2, "aws_sign_v4");
    lua_setfield(L, -2, "crypto");
}

void crypto_lua_register(void)
{
    klua_register_opener(crypto_open);
}
