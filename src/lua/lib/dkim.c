/* kumo.dkim and msg:dkim_sign (see dkim.h).
 *
 * Signers. kumo.dkim.rsa_sha256_signer{} / ed25519_signer{} are small Lua
 * functions over three C steps: lookup (checks the parameters, builds the
 * cache key of the signer and of its KeySource, and looks the signer up),
 * create (looks the key up, parses it on a miss, builds the signer) and,
 * only when the key is not cached, the KeySource loader of kumo.secrets in
 * between, which may call an event handler that waits. Signers and keys
 * live in two process-wide LRU caches with a TTL (dkim_signer_cache,
 * dkim_key_cache; 1024 entries each, as in KumoMTA), shared by the
 * reactors under a mutex and reference counted, so a signer made on one
 * reactor serves them all.
 *
 * Signing. msg:dkim_sign hashes the message on the calling reactor
 * (dkim_sign_prepare: header fields and body, streaming) and then makes the
 * signature either right there (the default, as KumoMTA documents) or, once
 * kumo.dkim.set_signing_threads(N) has started the dkimsign pool, on a
 * worker while the calling coroutine yields; the result is posted back to
 * the reactor, which prepends the header. Only the 32-byte digest crosses
 * threads, never the message. Errors are Lua errors naming the function and
 * the policy's line. */
#include "lua/lib/dkim.h"

#include <lauxlib.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "core/duration.h"
#include "core/kerr.h"
#include "core/reactor.h"
#include "core/workpool.h"
#include "lua/klua.h"
#include "lua/lib/lruttl.h"
#include "lua/lib/lualib.h"
#include "lua/lib/secrets.h"
#include "lua/message_lua.h"
#include "metrics/metrics.h"
#include "msg/dkim.h"

#define SIGNER_MT "kumod.DkimSigner"
#define CACHE_CAPACITY 1024
#define DEFAULT_TTL_NS (300LL * 1000000000LL)

/* ---- metrics ---- */

static struct {
    metrics_counter *hit, *miss, *lookup, *key_hit, *key_miss, *key_lookup;
    metrics_histogram *creation, *key_fetch, *parse, *sign;
} M;

static metrics_counter *counter(const char *name, const char *help)
{
    metrics_family *f = NULL;
    if (metrics_counter_family(&f, name, help, NULL, 0) != 0)
        abort(); /* a name clash is a bug */
    return metrics_counter_get(f, NULL);
}

static metrics_histogram *histogram(const char *name, const char *help)
{
    metrics_family *f = NULL;
    if (metrics_histogram_family(&f, name, help, NULL, 0, NULL, 0) != 0)
        abort();
    return metrics_histogram_get(f, NULL);
}

static void metrics_init(void)
{
    M.hit = counter("dkim_signer_cache_hit", "How many dkim signer requests hit cache.");
    M.miss = counter("dkim_signer_cache_miss", "How many dkim signer requests miss cache.");
    M.lookup =
        counter("dkim_signer_cache_lookup_count", "How many cache dkim signer requests occurred.");
    M.key_hit =
        counter("dkim_signer_key_cache_hit", "How many cache dkim signer requests hit key cache.");
    M.key_miss = counter("dkim_signer_key_cache_miss",
                         "How many cache dkim signer requests miss key cache.");
    M.key_lookup =
        counter("dkim_signer_key_cache_lookup_count", "How many cache dkim key requests occurred.");
    M.creation = histogram("dkim_signer_creation",
                           "How many seconds it takes to create a signer on a cache miss.");
    M.key_fetch = histogram("dkim_signer_key_fetch", "How long it takes to obtain a dkim key.");
    M.parse = histogram("dkim_signer_message_parse",
                        "How many seconds it takes to parse messages as prep for signing.");
    M.sign =
        histogram("dkim_signer_sign", "How many seconds it takes to dkim sign parsed messages.");
}

static pthread_once_t metrics_once = PTHREAD_ONCE_INIT;

static double secs_since(int64_t t0_ns)
{
    return (double)(clock_mono_ns() - t0_ns) / 1e9;
}

/* ---- signers ---- */

typedef struct signer {
    atomic_int refs;
    dkim_sign_params p;
    char *domain, *selector, *auid, *atps;
    char **headers;
    dkim_key *key;
} signer;

static void signer_unref(void *v)
{
    signer *s = v;
    if (!s || atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) != 1)
        return;
    for (size_t i = 0; i < s->p.n_headers; i++)
        free(s->headers[i]);
    free(s->headers);
    free(s->domain);
    free(s->selector);
    free(s->auid);
    free(s->atps);
    dkim_key_unref(s->key);
    free(s);
}

static void signer_ref(signer *s)
{
    atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
}

static void key_unref(void *v)
{
    dkim_key_unref(v);
}

/* ---- process-wide caches ---- */

typedef struct pcache {
    pthread_mutex_t mu;
    lruttl *idx;
    void **vals;
    void (*unref)(void *);
    void (*ref)(void *);
} pcache;

static void ref_signer(void *v)
{
    signer_ref(v);
}

static void ref_key(void *v)
{
    dkim_key_ref(v);
}

static pcache signers = {PTHREAD_MUTEX_INITIALIZER, NULL, NULL, signer_unref, ref_signer};
static pcache keys = {PTHREAD_MUTEX_INITIALIZER, NULL, NULL, key_unref, ref_key};

static bool pcache_ready(pcache *c)
{
    if (c->idx)
        return true;
    c->idx = lruttl_new(CACHE_CAPACITY);
    c->vals = calloc(CACHE_CAPACITY, sizeof(void *));
    if (!c->idx || !c->vals) {
        lruttl_free(c->idx);
        free(c->vals);
        c->idx = NULL;
        c->vals = NULL;
        return false;
    }
    return true;
}

/* A new reference to the value of key, or NULL. */
static void *pcache_get(pcache *c, const char *key, size_t len)
{
    void *v = NULL;
    pthread_mutex_lock(&c->mu);
    if (pcache_ready(c)) {
        long slot = lruttl_get(c->idx, key, len, clock_mono_ns());
        if (slot >= 0 && c->vals[slot]) {
            v = c->vals[slot];
            c->ref(v);
        }
    }
    pthread_mutex_unlock(&c->mu);
    return v;
}

/* Stores a new reference to v (an evicted or expired value is released). */
static void pcache_put(pcache *c, const char *key, size_t len, void *v, int64_t ttl_ns)
{
    void *old = NULL;
    pthread_mutex_lock(&c->mu);
    if (pcache_ready(c)) {
        long slot = lruttl_put(c->idx, key, len, clock_mono_ns() + ttl_ns);
        if (slot >= 0) {
            old = c->vals[slot];
            c->ref(v);
            c->vals[slot] = v;
        }
    }
    pthread_mutex_unlock(&c->mu);
    if (old)
        c->unref(old);
}

static void pcache_clear(pcache *c)
{
    pthread_mutex_lock(&c->mu);
    if (c->idx) {
        for (size_t i = 0; i < CACHE_CAPACITY; i++)
            if (c->vals[i])
                c->unref(c->vals[i]);
        free(c->vals);
        lruttl_free(c->idx);
        c->vals = NULL;
        c->idx = NULL;
    }
    pthread_mutex_unlock(&c->mu);
}

/* ---- the signing pool ---- */

static pthread_mutex_t pool_mu = PTHREAD_MUTEX_INITIALIZER;
static _Atomic(workpool *) pool;

/* ---- parameters ---- */

typedef struct sparams {
    const char *domain, *selector, *auid, *atps, *atpsh;
    const char *headers[256];
    size_t n_headers;
    int64_t expiration;
    bool body_length, reporting, over_sign;
    enum dkim_canon hc, bc;
    int64_t ttl_ns;
} sparams;

static const char *const known[] = {"domain",
                                    "selector",
                                    "headers",
                                    "atps",
                                    "atpsh",
                                    "agent_user_identifier",
                                    "expiration",
                                    "body_length",
                                    "reporting",
                                    "header_canonicalization",
                                    "body_canonicalization",
                                    "key",
                                    "over_sign",
                                    "ttl",
                                    NULL};

/* Parameter errors: nil, "FNAME: message" (raised at the policy's line by
 * the Lua side). */
static int perr(lua_State *L, const char *fname, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int perr(lua_State *L, const char *fname, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    lua_pushnil(L);
    lua_pushfstring(L, "%s: %s", fname, msg);
    return 2;
}

/* Reads field name of the table at 3 as an optional string; returns 0 or
 * pushes an error (returns 2). */
static int opt_str(lua_State *L, const char *fname, const char *name, const char **out,
                   bool required)
{
    int t = lua_getfield(L, 3, name);
    if (t == LUA_TNIL) {
        lua_pop(L, 1);
        *out = NULL;
        if (required)
            return perr(L, fname, "missing required field '%s'", name);
        return 0;
    }
    if (t != LUA_TSTRING) {
        int r = perr(L, fname, "field '%s' must be a string, not %s", name, lua_typename(L, t));
        return r;
    }
    size_t len;
    *out = lua_tolstring(L, -1, &len);
    lua_pop(L, 1); /* the table keeps the string alive */
    if (strlen(*out) != len)
        return perr(L, fname, "field '%s' must not contain NUL bytes", name);
    return 0;
}

static int opt_bool(lua_State *L, const char *fname, const char *name, bool *out)
{
    int t = lua_getfield(L, 3, name);
    if (t != LUA_TNIL && t != LUA_TBOOLEAN)
        return perr(L, fname, "field '%s' must be a boolean, not %s", name, lua_typename(L, t));
    *out = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return 0;
}

static int opt_canon(lua_State *L, const char *fname, const char *name, enum dkim_canon *out)
{
    const char *v = NULL;
    int r = opt_str(L, fname, name, &v, false);
    if (r)
        return r;
    if (!v || strcasecmp(v, "relaxed") == 0)
        *out = DKIM_CANON_RELAXED;
    else if (strcasecmp(v, "simple") == 0)
        *out = DKIM_CANON_SIMPLE;
    else
        return perr(L, fname, "field '%s' must be \"Relaxed\" or \"Simple\", not \"%s\"", name, v);
    return 0;
}

static int read_params(lua_State *L, const char *fname, sparams *sp)
{
    memset(sp, 0, sizeof(*sp));
    if (lua_type(L, 3) != LUA_TTABLE)
        return perr(L, fname, "argument #1 must be a table of parameters, not %s",
                    luaL_typename(L, 3));
    lua_pushnil(L);
    while (lua_next(L, 3)) {
        bool ok = false;
        if (lua_type(L, -2) == LUA_TSTRING)
            for (int i = 0; known[i]; i++)
                ok |= strcmp(known[i], lua_tostring(L, -2)) == 0;
        if (!ok) {
            const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "(not a name)";
            return perr(L, fname, "unknown field '%s'", k);
        }
        lua_pop(L, 1);
    }
    int r;
    if ((r = opt_str(L, fname, "domain", &sp->domain, true)) ||
        (r = opt_str(L, fname, "selector", &sp->selector, true)) ||
        (r = opt_str(L, fname, "agent_user_identifier", &sp->auid, false)) ||
        (r = opt_str(L, fname, "atps", &sp->atps, false)) ||
        (r = opt_str(L, fname, "atpsh", &sp->atpsh, false)) ||
        (r = opt_bool(L, fname, "body_length", &sp->body_length)) ||
        (r = opt_bool(L, fname, "reporting", &sp->reporting)) ||
        (r = opt_bool(L, fname, "over_sign", &sp->over_sign)) ||
        (r = opt_canon(L, fname, "header_canonicalization", &sp->hc)) ||
        (r = opt_canon(L, fname, "body_canonicalization", &sp->bc)))
        return r;
    if (sp->atpsh) {
        /* KumoMTA's names are Sha1 and Sha256; the tag's values are lower case */
        if (strcasecmp(sp->atpsh, "sha1") == 0)
            sp->atpsh = "sha1";
        else if (strcasecmp(sp->atpsh, "sha256") == 0)
            sp->atpsh = "sha256";
        else if (strcasecmp(sp->atpsh, "none") == 0)
            sp->atpsh = "none";
        else
            return perr(L, fname, "field 'atpsh' must be \"Sha1\" or \"Sha256\", not \"%s\"",
                        sp->atpsh);
    }
    int t = lua_getfield(L, 3, "headers");
    if (t != LUA_TTABLE)
        return perr(L, fname, "field 'headers' must be a list of header names, not %s",
                    lua_typename(L, t));
    size_t n = lua_rawlen(L, -1);
    if (n == 0)
        return perr(L, fname, "field 'headers' must list at least one header name");
    if (n > sizeof(sp->headers) / sizeof(sp->headers[0]))
        return perr(L, fname, "field 'headers' lists more than %zu names",
                    sizeof(sp->headers) / sizeof(sp->headers[0]));
    for (size_t i = 1; i <= n; i++) {
        if (lua_rawgeti(L, -1, (lua_Integer)i) != LUA_TSTRING)
            return perr(L, fname, "field 'headers' must hold strings, not %s",
                        luaL_typename(L, -1));
        sp->headers[sp->n_headers++] = lua_tostring(L, -1);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    t = lua_getfield(L, 3, "expiration");
    if (t != LUA_TNIL) {
        int isint = 0;
        lua_Integer e = lua_tointegerx(L, -1, &isint);
        if (t != LUA_TNUMBER || !isint || e < 0 || e > 100LL * 365 * 86400)
            return perr(L, fname, "field 'expiration' must be a number of seconds");
        sp->expiration = e;
    }
    lua_pop(L, 1);
    sp->ttl_ns = DEFAULT_TTL_NS;
    t = lua_getfield(L, 3, "ttl");
    if (t == LUA_TNUMBER) {
        double v = lua_tonumber(L, -1);
        if (!(v >= 0 && v < 1e9))
            return perr(L, fname, "field 'ttl' must be a non-negative number of seconds");
        sp->ttl_ns = (int64_t)(v * 1e9);
    } else if (t == LUA_TSTRING) {
        if (duration_parse(lua_tostring(L, -1), &sp->ttl_ns) != 0 || sp->ttl_ns < 0)
            return perr(L, fname, "field 'ttl': '%s' is not a duration", lua_tostring(L, -1));
    } else if (t != LUA_TNIL) {
        return perr(L, fname, "field 'ttl' must be a number or a duration string, not %s",
                    lua_typename(L, t));
    }
    lua_pop(L, 1);
    return 0;
}

static void to_dkim_params(const sparams *sp, enum dkim_alg alg, dkim_sign_params *p)
{
    *p = (dkim_sign_params){
        .alg = alg,
        .header_canon = sp->hc,
        .body_canon = sp->bc,
        .domain = sp->domain,
        .selector = sp->selector,
        .headers = sp->headers,
        .n_headers = sp->n_headers,
        .over_sign = sp->over_sign,
        .body_length = sp->body_length,
        .reporting = sp->reporting,
        .auid = sp->auid,
        .atps = sp->atps,
        .atpsh = sp->atpsh,
        .expiration = sp->expiration,
    };
}

/* A growing byte string for cache keys (a luaL_Buffer would not allow the
 * table reads in between). */
typedef struct kbuf {
    char *p;
    size_t len, cap;
    bool oom;
} kbuf;

static void kb_add(kbuf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 128;
        while (cap < b->len + n)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

/* name NUL value NUL */
static void kb_pair(kbuf *b, const char *name, const char *v, size_t n)
{
    kb_add(b, name, strlen(name) + 1);
    kb_add(b, v, n);
    kb_add(b, "", 1);
}

/* Pushes the cache key of the KeySource at ks, or nil when it cannot be
 * cached (an event source with table arguments) or is not a KeySource
 * (the loader then says why). */
static void push_key_id(lua_State *L, int ks)
{
    kbuf b = {0};
    size_t n;
    bool ok = true;
    if (lua_type(L, ks) == LUA_TSTRING) {
        const char *v = lua_tolstring(L, ks, &n);
        kb_pair(&b, "file", v, n);
    } else if (lua_type(L, ks) == LUA_TTABLE) {
        static const char *const fields[] = {"key_data",   "event_name",    "vault_mount",
                                             "vault_path", "vault_address", "vault_key",
                                             NULL};
        for (int i = 0; fields[i]; i++) {
            int t = lua_getfield(L, ks, fields[i]);
            if (t == LUA_TSTRING || t == LUA_TNUMBER) {
                const char *v = lua_tolstring(L, -1, &n);
                kb_pair(&b, fields[i], v, n);
            }
            lua_pop(L, 1);
        }
        if (lua_getfield(L, ks, "event_args") == LUA_TTABLE) {
            size_t na = lua_rawlen(L, -1);
            for (size_t i = 1; ok && i <= na; i++) {
                int at = lua_rawgeti(L, -1, (lua_Integer)i);
                if (at == LUA_TSTRING || at == LUA_TNUMBER || at == LUA_TBOOLEAN) {
                    const char *v = luaL_tolstring(L, -1, &n);
                    kb_pair(&b, "arg", v, n);
                    lua_pop(L, 1);
                } else {
                    ok = false;
                }
                lua_pop(L, 1);
            }
        }
        lua_pop(L, 1);
    } else {
        ok = false;
    }
    if (ok && !b.oom && b.len)
        lua_pushlstring(L, b.p, b.len);
    else
        lua_pushnil(L);
    free(b.p);
}

/* lookup(KIND, FNAME, PARAMS) -> signer | false, ckey, kkey | nil, err */
static int l_lookup(lua_State *L)
{
    const char *kind = luaL_checkstring(L, 1);
    const char *fname = luaL_checkstring(L, 2);
    pthread_once(&metrics_once, metrics_init);
    sparams sp;
    int r = read_params(L, fname, &sp);
    if (r)
        return r;
    lua_getfield(L, 3, "key");
    if (lua_isnil(L, -1))
        return perr(L, fname, "missing required field 'key'");
    int ks = lua_gettop(L);
    /* the key's id is computed first, away from the buffer below */
    push_key_id(L, ks);
    int kid = lua_gettop(L);
    if (lua_isnil(L, kid)) {
        lua_pushboolean(L, 0);
        lua_pushnil(L);
        lua_pushnil(L);
        return 3;
    }
    char num[64];
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    luaL_addstring(&b, kind);
    const char *strs[] = {sp.domain, sp.selector, sp.auid, sp.atps, sp.atpsh};
    for (size_t i = 0; i < sizeof(strs) / sizeof(strs[0]); i++) {
        luaL_addchar(&b, 0);
        luaL_addstring(&b, strs[i] ? strs[i] : "\x01");
    }
    luaL_addchar(&b, 0);
    for (size_t i = 0; i < sp.n_headers; i++) {
        luaL_addstring(&b, sp.headers[i]);
        luaL_addchar(&b, ':');
    }
    snprintf(num, sizeof(num), "%c%lld/%d%d%d%d%d/%lld", 0, (long long)sp.expiration,
             sp.body_length, sp.reporting, sp.over_sign, (int)sp.hc, (int)sp.bc,
             (long long)sp.ttl_ns);
    luaL_addlstring(&b, num, 1 + strlen(num + 1));
    luaL_addchar(&b, 0);
    lua_pushvalue(L, kid);
    luaL_addvalue(&b);
    luaL_pushresult(&b);
    int cid = lua_gettop(L);
    size_t clen;
    const char *ckey = lua_tolstring(L, cid, &clen);
    metrics_counter_inc(M.lookup);
    signer *s = pcache_get(&signers, ckey, clen);
    if (s) {
        metrics_counter_inc(M.hit);
        signer **ud = lua_newuserdatauv(L, sizeof(*ud), 0);
        *ud = s;
        luaL_setmetatable(L, SIGNER_MT);
        return 1;
    }
    metrics_counter_inc(M.miss);
    lua_pushboolean(L, 0);
    lua_pushvalue(L, cid);
    lua_pushvalue(L, kid);
    return 3;
}

/* create(KIND, FNAME, PARAMS, CKEY, KKEY, BYTES|nil, T0|nil)
 *   -> signer | false, t0 (the key must be loaded) | nil, err */
static int l_create(lua_State *L)
{
    const char *kind = luaL_checkstring(L, 1);
    const char *fname = luaL_checkstring(L, 2);
    enum dkim_alg alg = strcmp(kind, "rsa") == 0 ? DKIM_ALG_RSA_SHA256 : DKIM_ALG_ED25519_SHA256;
    sparams sp;
    int r = read_params(L, fname, &sp);
    if (r)
        return r;
    size_t clen = 0, klen = 0;
    const char *ckey = lua_tolstring(L, 4, &clen);
    const char *kkey = lua_tolstring(L, 5, &klen);
    bool have_bytes = lua_type(L, 6) == LUA_TSTRING;
    int64_t t0 = lua_isinteger(L, 7) ? (int64_t)lua_tointeger(L, 7) : clock_mono_ns();

    dkim_sign_params p;
    to_dkim_params(&sp, alg, &p);
    char err[256];
    if (dkim_sign_params_check(&p, err, sizeof(err)) != 0)
        return perr(L, fname, "%s", err);

    dkim_key *key = NULL;
    if (!have_bytes) {
        if (kkey) {
            metrics_counter_inc(M.key_lookup);
            key = pcache_get(&keys, kkey, klen);
        }
        if (!key) {
            lua_pushboolean(L, 0);
            lua_pushinteger(L, (lua_Integer)t0);
            return 2;
        }
        if (dkim_key_alg(key) != alg) {
            dkim_key_unref(key);
            return perr(L, fname, "key: the key is not an %s key",
                        alg == DKIM_ALG_RSA_SHA256 ? "RSA" : "Ed25519");
        }
        metrics_counter_inc(M.key_hit);
    } else {
        if (kkey)
            metrics_counter_inc(M.key_miss);
        size_t n;
        const char *bytes = lua_tolstring(L, 6, &n);
        if (dkim_key_parse(alg, bytes, n, &key, err, sizeof(err)) != 0)
            return perr(L, fname, "key: %s", err);
        metrics_histogram_observe(M.key_fetch, secs_since(t0));
        if (kkey)
            pcache_put(&keys, kkey, klen, key, sp.ttl_ns);
    }

    signer *s = calloc(1, sizeof(*s));
    bool ok = s != NULL;
    if (ok) {
        atomic_init(&s->refs, 1);
        s->p = p;
        s->key = key;
        key = NULL;
        s->domain = strdup(sp.domain);
        s->selector = strdup(sp.selector);
        s->auid = sp.auid ? strdup(sp.auid) : NULL;
        s->atps = sp.atps ? strdup(sp.atps) : NULL;
        s->headers = calloc(sp.n_headers, sizeof(char *));
        ok = s->domain && s->selector && (!sp.auid || s->auid) && (!sp.atps || s->atps) &&
             s->headers;
        for (size_t i = 0; ok && i < sp.n_headers; i++) {
            s->headers[i] = strdup(sp.headers[i]);
            ok = s->headers[i] != NULL;
            s->p.n_headers = i + 1;
        }
        s->p.domain = s->domain;
        s->p.selector = s->selector;
        s->p.auid = s->auid;
        s->p.atps = s->atps;
        s->p.headers = (const char *const *)s->headers;
        /* atpsh points at a string literal (normalized above) */
    }
    dkim_key_unref(key);
    if (!ok) {
        signer_unref(s);
        return perr(L, fname, "out of memory");
    }
    if (ckey)
        pcache_put(&signers, ckey, clen, s, sp.ttl_ns);
    metrics_histogram_observe(M.creation, secs_since(t0));
    signer **ud = lua_newuserdatauv(L, sizeof(*ud), 0);
    *ud = s;
    luaL_setmetatable(L, SIGNER_MT);
    return 1;
}

static const char ctor_src[] = "local lookup, create, load_key = ...\n"
                               "return function(kind, fname)\n"
                               "  return function(params)\n"
                               "    local s, ckey, kkey = lookup(kind, fname, params)\n"
                               "    if s == nil then error(ckey, 2) end\n"
                               "    if s then return s end\n"
                               "    local t0\n"
                               "    s, t0 = create(kind, fname, params, ckey, kkey)\n"
                               "    if s == false then\n"
                               "      local bytes = load_key(params.key, fname, 'key', 3)\n"
                               "      s, t0 = create(kind, fname, params, ckey, kkey, bytes, t0)\n"
                               "    end\n"
                               "    if s == nil then error(t0, 2) end\n"
                               "    return s\n"
                               "  end\n"
                               "end\n";

static int l_signer_gc(lua_State *L)
{
    signer **ud = luaL_checkudata(L, 1, SIGNER_MT);
    signer_unref(*ud);
    *ud = NULL;
    return 0;
}

static int l_signer_tostring(lua_State *L)
{
    signer **ud = luaL_checkudata(L, 1, SIGNER_MT);
    signer *s = *ud;
    lua_pushfstring(L, "DkimSigner(%s, d=%s, s=%s)",
                    s->p.alg == DKIM_ALG_RSA_SHA256 ? "rsa-sha256" : "ed25519-sha256", s->domain,
                    s->selector);
    return 1;
}

bool dkim_lua_to_signer(lua_State *L, int idx, const dkim_sign_params **params, dkim_key **key)
{
    signer **ud = luaL_testudata(L, idx, SIGNER_MT);
    if (!ud || !*ud)
        return false;
    *params = &(*ud)->p;
    *key = (*ud)->key;
    return true;
}

/* ---- set_signing_threads ---- */

static int l_set_signing_threads(lua_State *L)
{
    const char *fname = "kumo.dkim.set_signing_threads";
    lua_Integer n = lualib_checkinteger(L, 1, fname);
    if (n < 1 || n > 1024)
        return lualib_error(L, fname, "the number of threads must be between 1 and 1024");
    pthread_mutex_lock(&pool_mu);
    workpool *p = atomic_load(&pool);
    if (p) {
        int have = workpool_threads(p);
        pthread_mutex_unlock(&pool_mu);
        if (have == (int)n)
            return 0; /* a policy reloaded with the same setting */
        return lualib_error(L, fname, "dkimsign pool is already configured (%d threads)", have);
    }
    p = workpool_new("dkimsign", (int)n);
    atomic_store(&pool, p);
    pthread_mutex_unlock(&pool_mu);
    if (!p)
        return lualib_error(L, fname, "cannot start %d threads", (int)n);
    return 0;
}

/* ---- msg:dkim_sign ---- */

static int prepend(message *m, const char *hdr, size_t hlen)
{
    char *buf = malloc(hlen + m->data_len + 1);
    if (!buf)
        return KERR_NOMEM;
    memcpy(buf, hdr, hlen);
    memcpy(buf + hlen, m->data, m->data_len);
    buf[hlen + m->data_len] = 0;
    message_set_data_take(m, buf, hlen + m->data_len);
    return 0;
}

typedef struct sjob {
    klua_wait w;
    bool cancelled;
    message *m;
    signer *s;
    dkim_sign_job j;
    unsigned char sig[DKIM_MAX_SIG];
    size_t siglen;
    int rc;
    char err[256];
} sjob;

static void sjob_free(sjob *j)
{
    dkim_sign_job_fini(&j->j);
    signer_unref(j->s);
    message_unref(j->m);
    free(j);
}

static void sjob_work(void *arg)
{
    sjob *j = arg;
    int64_t t0 = clock_mono_ns();
    j->rc = dkim_sign_digest(j->s->key, j->j.digest, j->sig, &j->siglen, j->err, sizeof(j->err));
    metrics_histogram_observe(M.sign, secs_since(t0));
}

static void sjob_cancel(klua_wait *w)
{
    /* shutdown: the call is gone; the job frees itself when it comes back */
    ((sjob *)w)->cancelled = true;
}

static int finish(message *m, const dkim_sign_job *dj, const unsigned char *sig, size_t siglen,
                  char *err, size_t errlen)
{
    size_t hlen;
    char *h = dkim_sign_finish(dj, sig, siglen, &hlen);
    int rc = h && m->data ? prepend(m, h, hlen) : KERR_NOMEM;
    free(h);
    if (rc)
        snprintf(err, errlen, "%s", m->data ? "out of memory" : "message data is not loaded");
    return rc;
}

static void sjob_done(void *arg)
{
    sjob *j = arg;
    if (j->cancelled) {
        sjob_free(j);
        return;
    }
    klua_call *c = j->w.call;
    klua_wait_unpark(&j->w);
    if (j->rc == 0)
        j->rc = finish(j->m, &j->j, j->sig, j->siglen, j->err, sizeof(j->err));
    lua_State *co = klua_call_thread(c);
    lua_checkstack(co, 4);
    lua_pushboolean(co, j->rc == 0);
    lua_pushstring(co, j->rc == 0 ? "" : j->err);
    sjob_free(j);
    klua_wait_resume(c, 2);
}

static int sign_k(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    (void)ctx;
    int top = lua_gettop(L);
    if (!lua_toboolean(L, top - 1))
        return lualib_error(L, "msg:dkim_sign", "%s", lua_tostring(L, top));
    return 0;
}

static int l_msg_dkim_sign(lua_State *L)
{
    const char *fname = "msg:dkim_sign";
    message *m = klua_check_message(L, 1);
    signer **ud = luaL_testudata(L, 2, SIGNER_MT);
    if (!ud || !*ud)
        return lualib_error(L, fname,
                            "argument #1 must be a signer made by kumo.dkim.rsa_sha256_signer "
                            "or kumo.dkim.ed25519_signer, not %s",
                            luaL_typename(L, 2));
    if (!m->data)
        return lualib_error(L, fname, "message data is not loaded");
    pthread_once(&metrics_once, metrics_init);
    signer *s = *ud;
    char err[256];
    int64_t t0 = clock_mono_ns();
    dkim_sign_job dj;
    if (dkim_sign_prepare(&s->p, m->data, m->data_len, (int64_t)time(NULL), &dj, err,
                          sizeof(err)) != 0)
        return lualib_error(L, fname, "%s", err);
    metrics_histogram_observe(M.parse, secs_since(t0));

    workpool *p = atomic_load(&pool);
    reactor *r = reactor_current();
    klua_call *c = p && r ? klua_wait_begin(L) : NULL;
    if (c) {
        sjob *j = calloc(1, sizeof(*j));
        if (!j) {
            dkim_sign_job_fini(&dj);
            return lualib_error(L, fname, "out of memory");
        }
        j->j = dj;
        j->m = m;
        message_ref(m);
        j->s = s;
        signer_ref(s);
        if (workpool_submit(p, r, sjob_work, sjob_done, j) == 0) {
            klua_wait_park(&j->w, c, sjob_cancel);
            return lua_yieldk(L, 0, 0, sign_k);
        }
        /* the pool is stopping: sign here */
        dj = j->j;
        j->j.hdr = NULL;
        sjob_free(j);
    }

    /* no pool (KumoMTA's default), or not in a coroutine: sign inline */
    unsigned char sig[DKIM_MAX_SIG];
    size_t siglen = 0;
    t0 = clock_mono_ns();
    int rc = dkim_sign_digest(s->key, dj.digest, sig, &siglen, err, sizeof(err));
    metrics_histogram_observe(M.sign, secs_since(t0));
    if (rc == 0)
        rc = finish(m, &dj, sig, siglen, err, sizeof(err));
    dkim_sign_job_fini(&dj);
    if (rc)
        return lualib_error(L, fname, "%s", err);
    return 0;
}

/* ---- registration ---- */

static void dkim_open(lua_State *L)
{
    luaL_newmetatable(L, SIGNER_MT);
    lua_pushcfunction(L, l_signer_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, l_signer_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushliteral(L, "DkimSigner");
    lua_setfield(L, -2, "__name");
    lua_pop(L, 1);

    int kumo = lua_absindex(L, -1);
    luaL_getsubtable(L, kumo, "dkim");
    if (luaL_loadbuffer(L, ctor_src, sizeof(ctor_src) - 1, "=kumo.dkim") != LUA_OK)
        lua_error(L); /* our own chunk */
    lua_pushcfunction(L, l_lookup);
    lua_pushcfunction(L, l_create);
    secrets_push_loader(L);
    lua_call(L, 3, 1);
    lua_pushvalue(L, -1);
    lua_pushliteral(L, "rsa");
    lua_pushliteral(L, "kumo.dkim.rsa_sha256_signer");
    lua_call(L, 2, 1);
    lua_setfield(L, -3, "rsa_sha256_signer");
    lua_pushliteral(L, "ed25519");
    lua_pushliteral(L, "kumo.dkim.ed25519_signer");
    lua_call(L, 2, 1);
    lua_setfield(L, -2, "ed25519_signer");
    lua_pushcfunction(L, l_set_signing_threads);
    lua_setfield(L, -2, "set_signing_threads");
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    lua_pushvalue(L, -2);
    lua_setfield(L, -2, "kumo.dkim");
    lua_pop(L, 2);

    message_lua_add_method(L, "dkim_sign", l_msg_dkim_sign);
}

void dkim_lua_register(void)
{
    klua_register_opener(dkim_open);
}

void dkim_lua_stop_pool(void)
{
    pthread_mutex_lock(&pool_mu);
    workpool *p = atomic_exchange(&pool, NULL);
    pthread_mutex_unlock(&pool_mu);
    workpool_free(p);
}

void dkim_lua_shutdown(void)
{
    dkim_lua_stop_pool();
    pcache_clear(&signers);
    pcache_clear(&keys);
}
