/* msg:dkim_verify and msg:add_authentication_results (see mailauth.h),
 * and the two pieces msg:arc_verify / msg:arc_seal (arc.c) share with them.
 *
 * Key lookups (mailauth_fetch_keys): one TXT lookup per distinct key name
 * through src/net/dns on the calling reactor, all in flight at once; the
 * wait is parked and the coroutine yields. Each answer's records are copied
 * into the job; when the last one is in, the coroutine resumes into the
 * caller's continuation, which parses the message again as it is then (so
 * nothing points into a buffer that might have been replaced) and reads
 * the records with mailauth_keys_get. Shutdown may abandon a parked wait
 * (the job is then freed by whichever of the wait and its lookups lets go
 * last) or drop lookups unanswered (recorded, never resumed from).
 *
 * dkim_verify checks at most DKIM_MAX_VERIFY signatures, as KumoMTA, and
 * returns the AuthenticationResult tables; mailauth_push_ar writes the RFC
 * 8601 text for add_authentication_results and for the ARC AAR. Errors in
 * arguments are Lua errors; everything about the message is a result. */
#include "lua/lib/mailauth.h"

#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/kerr.h"
#include "core/reactor.h"
#include "lua/klua.h"
#include "lua/lib/lualib.h"
#include "lua/message_lua.h"
#include "msg/dkim_verify.h"
#include "msg/headers.h"
#include "msg/message.h"
#include "net/dns.h"

/* ---- key lookups, shared with msg:arc_verify / msg:arc_seal ---- */

/* One key name and, once answered, its records. */
typedef struct kslot {
    mailauth_keys *j;
    char name[MAILAUTH_KEY_NAME_MAX];
    bool done;
    int status; /* enum dns_status */
    char *error;
    char **recs;
    size_t *lens;
    size_t n;
} kslot;

struct mailauth_keys {
    klua_wait w;
    int refs; /* the wait's, and one per lookup in flight */
    bool cancelled;
    size_t outstanding;
    message *m;
    mailauth_keys_k k;
    size_t n_slots;
    kslot slots[];
};

static void keys_free(mailauth_keys *j)
{
    for (size_t i = 0; i < j->n_slots; i++) {
        kslot *s = &j->slots[i];
        for (size_t k = 0; k < s->n; k++)
            free(s->recs[k]);
        free(s->recs);
        free(s->lens);
        free(s->error);
    }
    message_unref(j->m);
    free(j);
}

static void keys_release(mailauth_keys *j)
{
    if (j && --j->refs == 0)
        keys_free(j);
}

static void slot_fill(kslot *s, const dns_txt *t)
{
    s->done = true;
    s->status = t->status;
    if (t->error)
        s->error = strdup(t->error);
    if (t->status == DNS_OK && t->n) {
        size_t n = t->n > 8 ? 8 : t->n; /* key rotation needs two or three */
        s->recs = calloc(n, sizeof(char *));
        s->lens = calloc(n, sizeof(size_t));
        if (!s->recs || !s->lens) {
            s->status = DNS_FAIL;
            return;
        }
        for (size_t i = 0; i < n; i++) {
            s->recs[i] = malloc(t->lens[i] + 1);
            if (!s->recs[i]) {
                s->status = DNS_FAIL;
                return;
            }
            memcpy(s->recs[i], t->records[i], t->lens[i] + 1);
            s->lens[i] = t->lens[i];
            s->n = i + 1;
        }
    }
}

static void on_txt(const dns_txt *t, void *ud)
{
    kslot *s = ud;
    mailauth_keys *j = s->j;
    slot_fill(s, t);
    j->outstanding--;
    if (j->cancelled || j->outstanding > 0) {
        keys_release(j);
        return;
    }
    klua_call *c = j->w.call;
    klua_wait_unpark(&j->w);
    j->refs--; /* the lookup's; the wait's goes with the continuation */
    klua_wait_resume(c, 0);
}

static void on_txt_drop(void *ud)
{
    /* the resolver went away at shutdown: never resume from here */
    kslot *s = ud;
    s->done = true;
    s->status = DNS_FAIL;
    s->j->outstanding--;
    keys_release(s->j);
}

static void keys_cancel(klua_wait *w)
{
    mailauth_keys *j = (mailauth_keys *)w;
    j->cancelled = true;
    keys_release(j);
}

static const kslot *find_slot(const mailauth_keys *j, const char *name)
{
    for (size_t i = 0; j && i < j->n_slots; i++)
        if (strcasecmp(j->slots[i].name, name) == 0)
            return &j->slots[i];
    return NULL;
}

int mailauth_keys_get(const mailauth_keys *ks, const char *name, const char *const **recs,
                      const size_t **lens, size_t *n, char *reason, size_t rlen)
{
    const kslot *slot = find_slot(ks, name);
    if (!slot || !slot->done || slot->status == DNS_FAIL) {
        snprintf(reason, rlen, "key unavailable: %s",
                 slot && slot->error ? slot->error : "failed to resolve the key");
        return DKIM_TEMPERROR;
    }
    if (slot->status != DNS_OK) {
        snprintf(reason, rlen, "no key for signature");
        return DKIM_PERMERROR;
    }
    *recs = (const char *const *)slot->recs;
    *lens = slot->lens;
    *n = slot->n;
    return 0;
}

/* Runs the continuation and lets the job go; an error it reports (a
 * negative count, the message pushed) is raised after the release. */
static int keys_finish(lua_State *L, mailauth_keys *j, message *m, mailauth_keys_k k)
{
    int r = k(L, m, j);
    keys_release(j);
    if (r < 0)
        return lua_error(L);
    return r;
}

static int keys_k(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    mailauth_keys *j = (mailauth_keys *)ctx;
    return keys_finish(L, j, j->m, j->k);
}

int mailauth_fetch_keys(lua_State *L, const char *fname, message *m, const char *const *names,
                        size_t n, mailauth_keys_k k)
{
    mailauth_keys *j = calloc(1, sizeof(*j) + (n ? n : 1) * sizeof(kslot));
    if (!j)
        return lualib_error(L, fname, "out of memory");
    for (size_t i = 0; i < n; i++) {
        if (find_slot(j, names[i]))
            continue;
        kslot *s = &j->slots[j->n_slots++];
        s->j = j;
        snprintf(s->name, sizeof(s->name), "%s", names[i]);
    }
    j->refs = 1;
    if (j->n_slots == 0)
        return keys_finish(L, j, m, k);
    if (!reactor_current()) {
        free(j);
        return lualib_error(L, fname, "may only be called from an event handler");
    }
    klua_call *c = klua_wait_begin(L);
    if (!c) {
        free(j);
        return lualib_error(L, fname, "may only be called from an event handler");
    }
    j->m = m;
    message_ref(m);
    j->k = k;
    for (size_t i = 0; i < j->n_slots; i++) {
        j->refs++;
        j->outstanding++;
        if (dns_lookup_txt(j->slots[i].name, on_txt, &j->slots[i], on_txt_drop) != 0) {
            /* no lookup: recorded as a DNS failure (temperror) */
            j->refs--;
            j->outstanding--;
            j->slots[i].done = true;
            j->slots[i].status = DNS_FAIL;
        }
    }
    klua_wait_park(&j->w, c, keys_cancel);
    if (j->outstanding == 0) {
        /* cannot happen with a working resolver: every lookup answers later */
        klua_wait_unpark(&j->w);
        return keys_finish(L, j, m, k);
    }
    return lua_yieldk(L, 0, (lua_KContext)j, keys_k);
}

int mailauth_check_resolver(lua_State *L, int idx, const char *fname)
{
    if (lua_isnoneornil(L, idx))
        return 0;
    if (lua_type(L, idx) != LUA_TSTRING)
        return lualib_error(L, fname, "argument #%d must be a resolver name, not %s", idx - 1,
                            luaL_typename(L, idx));
    return lualib_error(L, fname, "resolver %s is not defined", lua_tostring(L, idx));
}

/* ---- results ---- */

static void set_prop(lua_State *L, const char *k, const char *v, size_t n)
{
    lua_pushlstring(L, v, n);
    lua_setfield(L, -2, k);
}

/* Pushes the props table of a (possibly partly) parsed signature. */
static void push_props(lua_State *L, const dkim_tag *tags, size_t n, const char *b)
{
    lua_createtable(L, 0, 8);
    const dkim_tag *t;
    if ((t = dkim_tag_find(tags, n, "d"))) {
        set_prop(L, "header.d", t->value, t->value_len);
        lua_pushliteral(L, "@");
        lua_pushlstring(L, t->value, t->value_len);
        lua_concat(L, 2);
        lua_setfield(L, -2, "header.i");
    }
    static const char *const names[] = {"a", "s", "c", "t", "x"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if ((t = dkim_tag_find(tags, n, names[i]))) {
            char k[16];
            snprintf(k, sizeof(k), "header.%s", names[i]);
            set_prop(L, k, t->value, t->value_len);
        }
    if (b)
        set_prop(L, "header.b", b, strlen(b));
}

static void push_result(lua_State *L, int result, const char *reason)
{
    /* props is on the top of the stack; the result replaces it */
    lua_createtable(L, 0, 4);
    lua_insert(L, -2);
    lua_setfield(L, -2, "props");
    lua_pushliteral(L, "dkim");
    lua_setfield(L, -2, "method");
    lua_pushstring(L, dkim_result_name(result));
    lua_setfield(L, -2, "result");
    if (reason && reason[0]) {
        lua_pushstring(L, reason);
        lua_setfield(L, -2, "reason");
    }
}

/* The second half: pushes the array of results. */
static int verify_finish(lua_State *L, message *m, const mailauth_keys *j)
{
    dkim_sig *sigs = m->data ? calloc(DKIM_MAX_VERIFY, sizeof(dkim_sig)) : NULL;
    const hdr_index *ix = m->data ? message_headers(m) : NULL;
    if (!sigs || !ix) {
        free(sigs);
        lua_pushfstring(L, "msg:dkim_verify: %s",
                        m->data ? "out of memory" : "message data is not loaded");
        return -1;
    }
    const hdr_field *fields[DKIM_MAX_VERIFY];
    int prc[DKIM_MAX_VERIFY];
    char perr[DKIM_MAX_VERIFY][160];
    const dkim_sig *ok[DKIM_MAX_VERIFY];
    size_t nf = 0, nok = 0;
    for (size_t i = 0; i < ix->n && nf < DKIM_MAX_VERIFY; i++) {
        const hdr_field *f = &ix->fields[i];
        if (!hdr_name_eq(f, "DKIM-Signature"))
            continue;
        fields[nf] = f;
        prc[nf] = dkim_sig_parse_field(f, &sigs[nf], perr[nf], sizeof(perr[nf]));
        if (prc[nf] == 0)
            ok[nok++] = &sigs[nf];
        nf++;
    }
    int64_t now = (int64_t)time(NULL);
    lua_createtable(L, (int)nf, 0);
    for (size_t i = 0, k = 0; i < nf; i++) {
        char reason[256];
        int result;
        if (prc[i] != 0) {
            /* props from whatever tags parse (KumoMTA does the same) */
            dkim_tag tags[DKIM_MAX_TAGS];
            size_t nt = 0;
            const char *colon = memchr(fields[i]->raw, ':', fields[i]->raw_len);
            if (!colon || dkim_tags_parse(colon + 1,
                                          fields[i]->raw_len - (size_t)(colon + 1 - fields[i]->raw),
                                          tags, DKIM_MAX_TAGS, &nt) != 0)
                nt = 0;
            push_props(L, tags, nt, NULL);
            push_result(L, DKIM_PERMERROR, perr[i]);
        } else {
            dkim_sig *s = &sigs[i];
            char b[1400];
            dkim_header_b(ok, nok, k++, b, sizeof(b));
            push_props(L, s->tags, s->n_tags, b);
            char name[MAILAUTH_KEY_NAME_MAX];
            const char *const *recs = NULL;
            const size_t *lens = NULL;
            size_t nrec = 0;
            if (s->x >= 0 && now > s->x) {
                result = dkim_verify_field(m->data, m->data_len, ix, fields[i], s, NULL, NULL, 0,
                                           now, reason, sizeof(reason));
            } else if (!dkim_key_name(s, name, sizeof(name))) {
                result = DKIM_PERMERROR;
                snprintf(reason, sizeof(reason), "signature syntax error: d= or s= is not a "
                                                 "domain name");
            } else if ((result = mailauth_keys_get(j, name, &recs, &lens, &nrec, reason,
                                                   sizeof(reason))) == 0) {
                result = dkim_verify_field(m->data, m->data_len, ix, fields[i], s, recs, lens,
                                           nrec, now, reason, sizeof(reason));
            }
            push_result(L, result, reason);
        }
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    free(sigs);
    return 1;
}

static int l_msg_dkim_verify(lua_State *L)
{
    const char *fname = "msg:dkim_verify";
    message *m = klua_check_message(L, 1);
    mailauth_check_resolver(L, 2, fname);
    if (!m->data)
        return lualib_error(L, fname, "message data is not loaded");
    const hdr_index *ix = message_headers(m);
    if (!ix)
        return lualib_error(L, fname, "out of memory");

    /* the key names to look up */
    char names[DKIM_MAX_VERIFY][MAILAUTH_KEY_NAME_MAX];
    const char *np[DKIM_MAX_VERIFY];
    size_t nn = 0;
    dkim_sig *sig = malloc(sizeof(*sig));
    if (!sig)
        return lualib_error(L, fname, "out of memory");
    int64_t now = (int64_t)time(NULL);
    size_t seen = 0;
    for (size_t i = 0; i < ix->n && seen < DKIM_MAX_VERIFY; i++) {
        const hdr_field *f = &ix->fields[i];
        if (!hdr_name_eq(f, "DKIM-Signature"))
            continue;
        seen++;
        char err[8];
        if (dkim_sig_parse_field(f, sig, err, sizeof(err)) != 0 || (sig->x >= 0 && now > sig->x) ||
            !dkim_key_name(sig, names[nn], sizeof(names[nn])))
            continue;
        np[nn] = names[nn];
        nn++;
    }
    free(sig);
    return mailauth_fetch_keys(L, fname, m, np, nn, verify_finish);
}

/* ---- msg:add_authentication_results ---- */

/* RFC 2045 token characters (and '@', which the pvalue grammar takes bare). */
static bool token_char(unsigned char c)
{
    return c > 0x20 && c < 0x7f && !strchr("()<>,;:\\\"/[]?=", c);
}

/* The header is built as a list of pieces in a Lua table (pb->t) and joined
 * at the end: a luaL_Buffer cannot stay open while the results are read,
 * which pushes values onto the stack. */
typedef struct pbuf {
    lua_State *L;
    int t;
    lua_Integer n;
} pbuf;

static void piece(pbuf *pb, const char *s, size_t n)
{
    lua_pushlstring(pb->L, s, n);
    lua_rawseti(pb->L, pb->t, ++pb->n);
}

static void pstr(pbuf *pb, const char *s)
{
    piece(pb, s, strlen(s));
}

static void add_value(pbuf *pb, const char *v, size_t n)
{
    bool plain = n > 0;
    for (size_t i = 0; i < n && plain; i++)
        plain = token_char((unsigned char)v[i]);
    if (plain) {
        piece(pb, v, n);
        return;
    }
    luaL_Buffer b;
    luaL_buffinit(pb->L, &b);
    luaL_addchar(&b, '"');
    for (size_t i = 0; i < n; i++) {
        if (v[i] == '"' || v[i] == '\\')
            luaL_addchar(&b, '\\');
        /* a line break inside would end the header field */
        luaL_addchar(&b, v[i] == '\r' || v[i] == '\n' ? ' ' : v[i]);
    }
    luaL_addchar(&b, '"');
    luaL_pushresult(&b);
    lua_rawseti(pb->L, pb->t, ++pb->n);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static const char *field_str(lua_State *L, const char *fname, int t, const char *key,
                             bool required, size_t i, size_t *len)
{
    lua_getfield(L, t, key);
    if (lua_type(L, -1) == LUA_TSTRING) {
        const char *s = lua_tolstring(L, -1, len);
        lua_pop(L, 1); /* still referenced by the table */
        return s;
    }
    if (lua_isnil(L, -1) && !required) {
        lua_pop(L, 1);
        return NULL;
    }
    return (const char *)(intptr_t)lualib_error(
        L, fname, "results[%zu].%s must be a string, not %s", i, key, luaL_typename(L, -1));
}

int mailauth_push_ar(lua_State *L, const char *fname, const char *prefix, int serv_idx,
                     int results_idx)
{
    serv_idx = lua_absindex(L, serv_idx);
    results_idx = lua_absindex(L, results_idx);
    size_t sl;
    if (lua_type(L, serv_idx) != LUA_TSTRING)
        return lualib_error(L, fname, "argument #%d (server_id) must be a string, not %s",
                            serv_idx - 1, luaL_typename(L, serv_idx));
    const char *serv = lua_tolstring(L, serv_idx, &sl);
    if (!lua_istable(L, results_idx))
        return lualib_error(L, fname, "argument #%d (results) must be an array of "
                                      "authentication results, not %s",
                            results_idx - 1, luaL_typename(L, results_idx));
    lua_newtable(L);
    pbuf pb = {L, lua_gettop(L), 0}, *b = &pb;
    pstr(b, prefix);
    add_value(b, serv, sl);
    size_t n = (size_t)lua_rawlen(L, results_idx);
    if (n == 0)
        pstr(b, "; none");
    for (size_t i = 1; i <= n; i++) {
        lua_rawgeti(L, results_idx, (lua_Integer)i);
        int t = lua_gettop(L);
        if (!lua_istable(L, t))
            return lualib_error(L, fname, "results[%zu] must be a table, not %s", i,
                                luaL_typename(L, t));
        size_t ml, rl, rsl = 0;
        const char *method = field_str(L, fname, t, "method", true, i, &ml);
        const char *result = field_str(L, fname, t, "result", true, i, &rl);
        const char *reason = field_str(L, fname, t, "reason", false, i, &rsl);
        lua_getfield(L, t, "method_version");
        bool has_ver = !lua_isnil(L, -1);
        lua_Integer ver = 0;
        if (has_ver) {
            if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 0)
                return lualib_error(L, fname,
                                    "results[%zu].method_version must be a non-negative integer",
                                    i);
            ver = lua_tointeger(L, -1);
        }
        lua_pop(L, 1);
        pstr(b, ";\r\n\t");
        add_value(b, method, ml);
        if (has_ver) {
            char v[32];
            snprintf(v, sizeof(v), "/%lld", (long long)ver);
            pstr(b, v);
        }
        pstr(b, "=");
        add_value(b, result, rl);
        if (reason) {
            pstr(b, " reason=");
            add_value(b, reason, rsl);
        }
        lua_getfield(L, t, "props");
        int pt = lua_gettop(L);
        if (!lua_isnil(L, pt)) {
            if (!lua_istable(L, pt))
                return lualib_error(L, fname, "results[%zu].props must be a table, not %s", i,
                                    luaL_typename(L, pt));
            /* sorted by name, as KumoMTA's map is */
            size_t np = 0, cap = 0;
            const char **keys = NULL;
            lua_pushnil(L);
            while (lua_next(L, pt)) {
                if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING) {
                    free(keys);
                    return lualib_error(L, fname,
                                        "results[%zu].props must map strings to strings", i);
                }
                if (np == cap) {
                    cap = cap ? cap * 2 : 8;
                    const char **nk = realloc(keys, cap * sizeof(*nk));
                    if (!nk) {
                        free(keys);
                        return lualib_error(L, fname, "out of memory");
                    }
                    keys = nk;
                }
                keys[np++] = lua_tostring(L, -2);
                lua_pop(L, 1);
            }
            if (np > 1)
                qsort(keys, np, sizeof(*keys), cmp_str);
            for (size_t k = 0; k < np; k++) {
                lua_getfield(L, pt, keys[k]);
                size_t vl;
                const char *v = lua_tolstring(L, -1, &vl);
                pstr(b, "\r\n\t");
                /* the key as it is (ptype "." property), non-token bytes as '_' */
                char key[128];
                size_t kl = 0;
                for (const char *p = keys[k]; *p && kl < sizeof(key) - 1; p++)
                    key[kl++] = token_char((unsigned char)*p) ? *p : '_';
                key[kl] = 0;
                pstr(b, key);
                pstr(b, "=");
                /* v stays referenced by the props table */
                lua_pop(L, 1);
                add_value(b, v, vl);
            }
            free(keys);
        }
        lua_settop(L, t - 1);
    }
    pstr(b, "\r\n");
    luaL_Buffer out;
    luaL_buffinit(L, &out);
    for (lua_Integer i = 1; i <= pb.n; i++) {
        lua_rawgeti(L, pb.t, i);
        luaL_addvalue(&out);
    }
    luaL_pushresult(&out);
    lua_replace(L, pb.t); /* the header replaces the pieces */
    return 1;
}

static int l_msg_add_authentication_results(lua_State *L)
{
    const char *fname = "msg:add_authentication_results";
    message *m = klua_check_message(L, 1);
    mailauth_push_ar(L, fname, "Authentication-Results: ", 2, 3);
    if (!m->data)
        return lualib_error(L, fname, "message data is not loaded");
    size_t hl;
    const char *h = lua_tolstring(L, -1, &hl);
    char *buf = malloc(hl + m->data_len + 1);
    if (!buf)
        return lualib_error(L, fname, "out of memory");
    memcpy(buf, h, hl);
    memcpy(buf + hl, m->data, m->data_len);
    buf[hl + m->data_len] = 0;
    message_set_data_take(m, buf, hl + m->data_len);
    return 0;
}

static void mailauth_open(lua_State *L)
{
    message_lua_add_method(L, "dkim_verify", l_msg_dkim_verify);
    message_lua_add_method(L, "add_authentication_results", l_msg_add_authentication_results);
}

void mailauth_lua_register(void)
{
    klua_register_opener(mailauth_open);
}
