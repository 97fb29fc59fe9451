/* msg:arc_verify and msg:arc_seal (see arc.h).
 *
 * Both run in two halves on the calling reactor, as msg:dkim_verify does:
 * the first collects the message's ARC sets (src/msg/arc.c) and, when their
 * structure is sound, looks up the keys of every ARC-Message-Signature and
 * ARC-Seal through mailauth_fetch_keys (kumod's resolver, in parallel,
 * while the coroutine yields); the second collects the sets again from the
 * message as it is then (nothing is kept across the yield that points into
 * a buffer the policy may have replaced) and validates the chain. arc_seal
 * then adds the new set, unless the chain failed, in which case the message
 * is left as it is (as the reference page says). A chain whose structure is
 * broken fails without any lookup. Argument errors are Lua errors raised
 * before anything is looked up; everything about the message is a result. */
#include "lua/lib/arc.h"

#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lua/klua.h"
#include "lua/lib/dkim.h"
#include "lua/lib/lualib.h"
#include "lua/lib/mailauth.h"
#include "lua/message_lua.h"
#include "msg/arc.h"
#include "msg/dkim_verify.h"
#include "msg/message.h"

/* The chain of m, collected; NULL with an error message pushed. */
static arc_chain *collect(lua_State *L, const char *fname, message *m)
{
    const hdr_index *ix = m->data ? message_headers(m) : NULL;
    arc_chain *c = ix ? calloc(1, sizeof(*c)) : NULL;
    if (!c) {
        lua_pushfstring(L, "%s: %s", fname, m->data ? "out of memory" : "message data is not loaded");
        return NULL;
    }
    arc_collect(ix, c);
    return c;
}

/* The distinct key names the chain needs (none when it is broken) into
 * names; returns how many. */
static size_t key_names(const arc_chain *c, char (*names)[MAILAUTH_KEY_NAME_MAX],
                        const char **np)
{
    size_t nn = 0;
    for (size_t i = 0; !c->broken && i < c->n; i++) {
        const dkim_sig *sigs[2] = {&c->sets[i].ams_sig, &c->sets[i].as_sig};
        for (int j = 0; j < 2; j++)
            if (dkim_key_name(sigs[j], names[nn], sizeof(names[nn]))) {
                np[nn] = names[nn];
                nn++;
            }
    }
    return nn;
}

/* arc_validate's key source: the looked-up records of sig's key. */
static int keys_of(void *ctx, const dkim_sig *sig, const char *const **recs, const size_t **lens,
                   size_t *n, char *reason, size_t rlen)
{
    char name[MAILAUTH_KEY_NAME_MAX];
    if (!dkim_key_name(sig, name, sizeof(name))) {
        snprintf(reason, rlen, "signature syntax error: d= or s= is not a domain name");
        return DKIM_PERMERROR;
    }
    return mailauth_keys_get(ctx, name, recs, lens, n, reason, rlen);
}

/* The second half: the chain collected again and validated; NULL with an
 * error pushed. */
static arc_chain *validated(lua_State *L, const char *fname, message *m, const mailauth_keys *ks)
{
    arc_chain *c = collect(L, fname, m);
    if (c)
        arc_validate(c, m->data, m->data_len, message_headers(m), keys_of, (void *)ks,
                     (int64_t)time(NULL));
    return c;
}

/* Pushes the AuthenticationResult of the chain. */
static void push_result(lua_State *L, const arc_chain *c)
{
    lua_createtable(L, 0, 4);
    lua_pushliteral(L, "arc");
    lua_setfield(L, -2, "method");
    lua_pushstring(L, arc_cv_name(c->cv));
    lua_setfield(L, -2, "result");
    if (c->cv == ARC_CV_FAIL && c->reason[0]) {
        lua_pushstring(L, c->reason);
        lua_setfield(L, -2, "reason");
    }
    lua_createtable(L, 0, 1);
    if (c->any) {
        /* RFC 8617 §5.2: the oldest AMS that still validates (0: all do);
         * nothing validated is known of a failed chain, so 0 there */
        char v[16];
        snprintf(v, sizeof(v), "%d", c->cv == ARC_CV_PASS ? c->oldest_pass : 0);
        lua_pushstring(L, v);
        lua_setfield(L, -2, "header.oldest-pass");
    }
    lua_setfield(L, -2, "props");
}

/* ---- msg:arc_verify ---- */

static int verify_k(lua_State *L, message *m, const mailauth_keys *ks)
{
    arc_chain *c = validated(L, "msg:arc_verify", m, ks);
    if (!c)
        return -1;
    push_result(L, c);
    free(c);
    return 1;
}

/* Collects the chain of m, frees it and starts the lookups of its keys,
 * continuing with k. The names live on the C stack: the lookups copy them
 * before the coroutine yields (and a yield never returns here). */
static int collect_and_fetch(lua_State *L, const char *fname, message *m, mailauth_keys_k k,
                             bool *broken, size_t *n_sets)
{
    arc_chain *c = collect(L, fname, m);
    if (!c)
        return lua_error(L);
    char names[2 * ARC_MAX_INSTANCE][MAILAUTH_KEY_NAME_MAX];
    const char *np[2 * ARC_MAX_INSTANCE];
    size_t nn = key_names(c, names, np);
    if (broken)
        *broken = c->broken;
    if (n_sets)
        *n_sets = c->n;
    free(c);
    if (broken && *broken)
        return 0;
    return mailauth_fetch_keys(L, fname, m, np, nn, k);
}

static int l_msg_arc_verify(lua_State *L)
{
    const char *fname = "msg:arc_verify";
    message *m = klua_check_message(L, 1);
    mailauth_check_resolver(L, 2, fname);
    return collect_and_fetch(L, fname, m, verify_k, NULL, NULL);
}

/* ---- msg:arc_seal ---- */

#define SEAL_FNAME "msg:arc_seal"
#define AAR_TAIL 6 /* stack slot of the AAR text after "i=N; " */

static int seal_k(lua_State *L, message *m, const mailauth_keys *ks)
{
    arc_chain *c = validated(L, SEAL_FNAME, m, ks);
    if (!c)
        return -1;
    if (c->cv == ARC_CV_FAIL || c->n >= ARC_MAX_INSTANCE) {
        /* a broken chain of custody is not extended (nor one at its limit) */
        free(c);
        return 0;
    }
    const dkim_sign_params *p = NULL;
    dkim_key *key = NULL;
    if (!dkim_lua_to_signer(L, 2, &p, &key)) {
        free(c);
        lua_pushliteral(L, SEAL_FNAME ": the signer is gone");
        return -1;
    }
    size_t tl;
    const char *tail = lua_tolstring(L, AAR_TAIL, &tl);
    char head[64];
    int hl = snprintf(head, sizeof(head), "ARC-Authentication-Results: i=%zu; ", c->n + 1);
    char *aar = tail ? malloc((size_t)hl + tl + 1) : NULL;
    char err[256] = "out of memory";
    char *out = NULL;
    size_t out_len = 0;
    if (aar) {
        memcpy(aar, head, (size_t)hl);
        memcpy(aar + hl, tail, tl);
        aar[(size_t)hl + tl] = 0;
        out = arc_seal(c, p, key, aar, (size_t)hl + tl, m->data, m->data_len,
                       (int64_t)time(NULL), &out_len, err, sizeof(err));
    }
    free(aar);
    free(c);
    if (!out) {
        lua_pushfstring(L, "%s: %s", SEAL_FNAME, err);
        return -1;
    }
    message_set_data_take(m, out, out_len);
    return 0;
}

static int l_msg_arc_seal(lua_State *L)
{
    const char *fname = SEAL_FNAME;
    message *m = klua_check_message(L, 1);
    const dkim_sign_params *p = NULL;
    dkim_key *key = NULL;
    if (!dkim_lua_to_signer(L, 2, &p, &key))
        return lualib_error(L, fname,
                            "argument #1 (signer) must be a signer made by "
                            "kumo.dkim.rsa_sha256_signer or kumo.dkim.ed25519_signer, not %s",
                            luaL_typename(L, 2));
    mailauth_check_resolver(L, 5, fname);
    lua_settop(L, 5);
    /* the AAR's "authserv-id; results" now, so that a bad argument is an
     * error before anything is looked up; the instance goes in front once
     * the chain is known */
    mailauth_push_ar(L, fname, "", 3, 4);
    if (!m->data)
        return lualib_error(L, fname, "message data is not loaded");
    bool broken = false;
    return collect_and_fetch(L, fname, m, seal_k, &broken, NULL);
}

static void arc_open(lua_State *L)
{
    message_lua_add_method(L, "arc_verify", l_msg_arc_verify);
    message_lua_add_method(L, "arc_seal", l_msg_arc_seal);
}

void arc_lua_register(void)
{
    klua_register_opener(arc_open);
}
