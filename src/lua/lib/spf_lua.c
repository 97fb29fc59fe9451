/* kumo.spf and kumo.dmarc (see spf_lua.h).
 *
 * A check is an "ajob": the inputs copied out of Lua, and a memo of the DNS
 * answers fetched so far. Each step runs the whole evaluation against the
 * memo (spf_check_host / dmarc_check); when it asks a question the memo
 * cannot answer, the job starts that one lookup (TXT, A, AAAA, MX or PTR
 * through src/net/dns, which caches per TTL and serves the test zones),
 * parks its wait and yields; the answer is copied into the memo and the
 * coroutine resumes into the next step. One lookup is in flight per job, as
 * RFC 7208's evaluation is sequential. Shutdown may abandon a parked wait
 * (the job is freed by whichever of the wait and its lookup lets go last)
 * or drop the lookup unanswered (never resumed from). Bad arguments are
 * Lua errors; everything about DNS and the records is a result. */
#include "lua/lib/spf_lua.h"

#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "core/kerr.h"
#include "core/reactor.h"
#include "lua/klua.h"
#include "lua/lib/lualib.h"
#include "lua/message_lua.h"
#include "msg/address.h"
#include "msg/dmarc.h"
#include "msg/headers.h"
#include "msg/message.h"
#include "msg/spf.h"
#include "net/dns.h"

/* far above what the limits of RFC 7208 §4.6.4 let one check ask */
#define MEMO_MAX 600

typedef struct mentry {
    int qtype;
    char name[264];
    int status; /* enum spf_dns_status */
    char *error;
    char **items;
    size_t *lens;
    size_t n;
} mentry;

enum { JOB_SPF, JOB_DMARC };

typedef struct ajob {
    klua_wait w;
    int refs; /* the wait's, and the lookup's while one is in flight */
    bool cancelled, parked;
    int kind;
    const char *fname;
    /* SPF */
    char *domain, *sender, *helo, *ip, *receiver, *prop_mailfrom, *prop_helo;
    int64_t now;
    /* DMARC */
    char *from, *spf_domain;
    char **dkim;
    size_t n_dkim;
    int sample;
    mentry **memo;
    size_t n_memo;
} ajob;

static void mentry_free(mentry *e)
{
    for (size_t i = 0; i < e->n; i++)
        free(e->items[i]);
    free(e->items);
    free(e->lens);
    free(e->error);
    free(e);
}

static void ajob_free(ajob *j)
{
    for (size_t i = 0; i < j->n_memo; i++)
        mentry_free(j->memo[i]);
    free(j->memo);
    free(j->domain);
    free(j->sender);
    free(j->helo);
    free(j->ip);
    free(j->receiver);
    free(j->prop_mailfrom);
    free(j->prop_helo);
    free(j->from);
    free(j->spf_domain);
    for (size_t i = 0; i < j->n_dkim; i++)
        free(j->dkim[i]);
    free(j->dkim);
    free(j);
}

static void ajob_release(ajob *j)
{
    if (--j->refs == 0)
        ajob_free(j);
}

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

/* ---- the memo ---------------------------------------------------------------- */

static mentry *memo_find(ajob *j, int qtype, const char *name)
{
    for (size_t i = 0; i < j->n_memo; i++)
        if (j->memo[i]->qtype == qtype && strcmp(j->memo[i]->name, name) == 0)
            return j->memo[i];
    return NULL;
}

static int memo_lookup(void *ud, int qtype, const char *name, spf_answer *out)
{
    ajob *j = ud;
    mentry *e = memo_find(j, qtype, name);
    if (!e) {
        if (j->n_memo < MEMO_MAX)
            return SPF_PENDING;
        out->status = SPF_DNS_FAIL;
        out->error = "too many DNS questions";
        return 0;
    }
    out->status = e->status;
    out->error = e->error;
    out->items = (const char *const *)e->items;
    out->lens = e->lens;
    out->n = e->n;
    return 0;
}

static bool entry_add(mentry *e, const char *s, size_t n)
{
    char **ni = realloc(e->items, (e->n + 1) * sizeof(*ni));
    if (ni)
        e->items = ni;
    size_t *nl = realloc(e->lens, (e->n + 1) * sizeof(*nl));
    if (nl)
        e->lens = nl;
    char *c = malloc(n + 1);
    if (!ni || !nl || !c) {
        free(c);
        return false;
    }
    memcpy(c, s, n);
    c[n] = 0;
    e->items[e->n] = c;
    e->lens[e->n++] = n;
    return true;
}

static int map_status(int st)
{
    switch (st) {
    case DNS_OK:
        return SPF_DNS_OK;
    case DNS_NXDOMAIN:
        return SPF_DNS_NXDOMAIN;
    case DNS_NO_RECORDS:
        return SPF_DNS_NODATA;
    default:
        return SPF_DNS_FAIL;
    }
}

/* The entry being fetched is always the last one of the memo. */
static mentry *current(ajob *j)
{
    return j->memo[j->n_memo - 1];
}

static void answered(ajob *j)
{
    mentry *e = current(j);
    if (e->status == SPF_DNS_OK && e->n == 0)
        e->status = SPF_DNS_NODATA;
    if (j->cancelled) {
        ajob_release(j);
        return;
    }
    klua_call *c = j->w.call;
    klua_wait_unpark(&j->w);
    j->parked = false;
    j->refs--; /* the lookup's; the wait's goes with the continuation */
    klua_wait_resume(c, 0);
}

static void fail_entry(mentry *e, const char *why)
{
    e->status = SPF_DNS_FAIL;
    if (!e->error)
        e->error = strdup(why ? why : "DNS failure");
}

static void on_txt(const dns_txt *t, void *ud)
{
    ajob *j = ud;
    mentry *e = current(j);
    e->status = map_status(t->status);
    if (t->error)
        e->error = strdup(t->error);
    for (size_t i = 0; t->status == DNS_OK && i < t->n && i < 64; i++)
        if (!entry_add(e, t->records[i], t->lens[i]))
            fail_entry(e, "out of memory");
    answered(j);
}

/* PTR names come fully qualified ("mail.example.com."); SPF compares them
 * without the root dot and without regard to case. */
static void on_ptr(const dns_txt *t, void *ud)
{
    ajob *j = ud;
    mentry *e = current(j);
    e->status = map_status(t->status);
    if (t->error)
        e->error = strdup(t->error);
    for (size_t i = 0; t->status == DNS_OK && i < t->n && i < 64; i++) {
        char name[256];
        size_t n = t->lens[i];
        if (n && t->records[i][n - 1] == '.')
            n--;
        if (n >= sizeof(name))
            continue;
        for (size_t k = 0; k < n; k++) {
            char c = t->records[i][k];
            name[k] = (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
        }
        if (!entry_add(e, name, n))
            fail_entry(e, "out of memory");
    }
    answered(j);
}

static void on_addrs(const dns_addrs *a, void *ud)
{
    ajob *j = ud;
    mentry *e = current(j);
    e->status = map_status(a->status);
    if (a->error)
        e->error = strdup(a->error);
    for (size_t i = 0; a->status == DNS_OK && i < a->n_addrs && i < 64; i++)
        if (!entry_add(e, a->addrs[i].text, strlen(a->addrs[i].text)))
            fail_entry(e, "out of memory");
    answered(j);
}

static void on_mx(const dns_mx *m, void *ud)
{
    ajob *j = ud;
    mentry *e = current(j);
    /* a domain without MX records stands for itself in delivery; for SPF
     * it has none (§5.4) */
    if (m->status == DNS_OK && !m->is_mx)
        e->status = SPF_DNS_NODATA;
    else if (m->status == DNS_NULL_MX)
        e->status = SPF_DNS_OK;
    else
        e->status = map_status(m->status);
    if (m->error)
        e->error = strdup(m->error);
    for (size_t i = 0; e->status == SPF_DNS_OK && i < m->n_hosts && i < 64; i++)
        if (!entry_add(e, m->hosts[i].name, strlen(m->hosts[i].name)))
            fail_entry(e, "out of memory");
    answered(j);
}

static void on_drop(void *ud)
{
    /* the resolver went away at shutdown: never resume from here */
    ajob *j = ud;
    fail_entry(current(j), "resolver shut down");
    ajob_release(j);
}

static void ajob_cancel(klua_wait *w)
{
    ajob *j = (ajob *)w;
    j->cancelled = true;
    j->parked = false;
    ajob_release(j);
}

/* Starts the lookup for (qtype, name). Returns 0, or KERR_* with the entry
 * answered as a failure when no lookup could start. */
static int start_lookup(ajob *j, int qtype, const char *name)
{
    mentry *e = calloc(1, sizeof(*e));
    mentry **nm = realloc(j->memo, (j->n_memo + 1) * sizeof(*nm));
    if (!e || !nm) {
        free(e);
        if (nm)
            j->memo = nm;
        return KERR_NOMEM;
    }
    j->memo = nm;
    e->qtype = qtype;
    snprintf(e->name, sizeof(e->name), "%s", name);
    j->memo[j->n_memo++] = e;
    j->refs++;
    int rc;
    switch (qtype) {
    case SPF_Q_TXT:
        rc = dns_lookup_txt(name, on_txt, j, on_drop);
        break;
    case SPF_Q_PTR:
        rc = dns_lookup_ptr(NULL, name, on_ptr, j, on_drop);
        break;
    case SPF_Q_MX:
        rc = dns_lookup_mx_owned(name, on_mx, j, on_drop);
        break;
    default:
        rc = dns_lookup_addrs_owned(name, qtype == SPF_Q_A ? DNS_IPV4_ONLY : DNS_IPV6_ONLY,
                                    on_addrs, j, on_drop);
        break;
    }
    if (rc != 0) {
        j->refs--;
        fail_entry(e, "the lookup could not start");
    }
    return rc;
}

/* ---- results ----------------------------------------------------------------- */

static void set_str(lua_State *L, const char *k, const char *v)
{
    if (!v)
        return;
    lua_pushstring(L, v);
    lua_setfield(L, -2, k);
}

/* { disposition = D, result = { method, result, reason, props } }; the
 * props table is on the top of the stack and is consumed. */
static void push_output(lua_State *L, const char *disposition, const char *method,
                        const char *result, const char *reason)
{
    lua_createtable(L, 0, 4);
    lua_insert(L, -2);
    lua_setfield(L, -2, "props");
    set_str(L, "method", method);
    set_str(L, "result", result);
    if (reason && reason[0])
        set_str(L, "reason", reason);
    lua_createtable(L, 0, 2);
    lua_insert(L, -2);
    lua_setfield(L, -2, "result");
    set_str(L, "disposition", disposition);
}

static const char *dmarc_disposition(const dmarc_outcome *o)
{
    /* KumoMTA's names for its Disposition */
    switch (o->result) {
    case DMARC_PASS:
        return "Pass";
    case DMARC_TEMPERROR:
        return "TempError";
    case DMARC_PERMERROR:
        return "PermError";
    case DMARC_FAIL:
        return o->disposition == DMARC_P_REJECT       ? "Reject"
               : o->disposition == DMARC_P_QUARANTINE ? "Quarantine"
                                                      : "None";
    default:
        return "None";
    }
}

/* Runs one step. Returns 1 with the output pushed, or 0 when a lookup was
 * started (the caller yields), or raises. Releases the wait's reference
 * when it finishes. */
static int step(lua_State *L, ajob *j)
{
    int rc;
    spf_outcome so;
    dmarc_outcome dout;
    char qname[260];
    int qtype = SPF_Q_TXT;
    if (j->kind == JOB_SPF) {
        spf_params p = {.domain = j->domain,
                        .sender = j->sender,
                        .helo = j->helo,
                        .client_ip = j->ip,
                        .receiver = j->receiver,
                        .now = j->now};
        rc = spf_check_host(&p, memo_lookup, j, &so);
        if (rc == SPF_PENDING) {
            qtype = so.need_qtype;
            snprintf(qname, sizeof(qname), "%s", so.need_name);
        }
    } else {
        dmarc_input in = {j->from, (const char *const *)j->dkim, j->n_dkim, j->spf_domain,
                          j->sample};
        rc = dmarc_check(&in, memo_lookup, j, &dout);
        if (rc == SPF_PENDING)
            snprintf(qname, sizeof(qname), "%s", dout.need_name);
    }
    if (rc == SPF_PENDING) {
        klua_call *c = klua_wait_begin(L);
        if (!c || !reactor_current()) {
            ajob_release(j);
            return lualib_error(L, j->fname, "may only be called from an event handler");
        }
        int src = start_lookup(j, qtype, qname);
        if (src == KERR_NOMEM) {
            ajob_release(j);
            return lualib_error(L, j->fname, "out of memory");
        }
        if (src != 0)
            return step(L, j); /* recorded as a DNS failure */
        if (!j->parked) {
            klua_wait_park(&j->w, c, ajob_cancel);
            j->parked = true;
        }
        return 0;
    }
    if (rc != 0) {
        ajob_release(j);
        return lualib_error(L, j->fname, "%s",
                            rc == KERR_NOMEM ? "out of memory" : "invalid client IP address");
    }
    lua_createtable(L, 0, 4);
    if (j->kind == JOB_SPF) {
        set_str(L, "smtp.mailfrom", j->prop_mailfrom);
        set_str(L, "smtp.helo", j->prop_helo);
        const char *r = spf_result_name(so.result);
        push_output(L, r, "spf", r, so.reason);
    } else {
        set_str(L, "header.from", j->from);
        if (dout.result == DMARC_FAIL) {
            set_str(L, "policy.published-domain-policy", dmarc_policy_name(dout.published));
            set_str(L, "policy.applied-disposition", dmarc_policy_name(dout.disposition));
        }
        push_output(L, dmarc_disposition(&dout), "dmarc", dmarc_result_name(dout.result),
                    dout.reason);
    }
    ajob_release(j);
    return 1;
}

static int step_k(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    ajob *j = (ajob *)ctx;
    if (step(L, j))
        return 1;
    return lua_yieldk(L, 0, ctx, step_k);
}

static int run(lua_State *L, ajob *j)
{
    j->refs = 1;
    if (step(L, j))
        return 1;
    return lua_yieldk(L, 0, (lua_KContext)j, step_k);
}

/* ---- arguments ----------------------------------------------------------------- */

static void check_resolver(lua_State *L, int idx, const char *fname)
{
    if (lua_isnoneornil(L, idx))
        return;
    if (lua_type(L, idx) != LUA_TSTRING)
        lualib_error(L, fname, "the resolver name must be a string, not %s",
                     luaL_typename(L, idx));
    lualib_error(L, fname, "resolver %s is not defined", lua_tostring(L, idx));
}

static const char *meta_str(json_t *meta, const char *k)
{
    json_t *v = meta ? json_object_get(meta, k) : NULL;
    return json_is_string(v) ? json_string_value(v) : NULL;
}

/* The address of "ip:port", "[ip6]:port" or a bare address, into out. */
static bool received_ip(const char *rf, char *out, size_t outlen)
{
    if (!rf)
        return false;
    size_t n = strlen(rf);
    const char *s = rf;
    if (rf[0] == '[') {
        const char *e = strchr(rf, ']');
        if (!e)
            return false;
        s = rf + 1;
        n = (size_t)(e - s);
    } else {
        const char *c1 = strchr(rf, ':'), *c2 = strrchr(rf, ':');
        if (c1 && c1 == c2)
            n = (size_t)(c1 - rf); /* IPv4 with a port; more colons: bare IPv6 */
    }
    if (n == 0 || n >= outlen)
        return false;
    memcpy(out, s, n);
    out[n] = 0;
    return true;
}

static ajob *ajob_new(lua_State *L, int kind, const char *fname)
{
    ajob *j = calloc(1, sizeof(*j));
    if (!j)
        lualib_error(L, fname, "out of memory");
    j->kind = kind;
    j->fname = fname;
    j->now = (int64_t)time(NULL);
    return j;
}

static const char *domain_of(const char *addr)
{
    const char *at = addr ? strrchr(addr, '@') : NULL;
    return at ? at + 1 : NULL;
}

static int spf_common(lua_State *L, ajob *j, const char *domain, const char *sender,
                      const char *helo, json_t *meta, const char *fname)
{
    char ip[64];
    if (!received_ip(meta_str(meta, "received_from"), ip, sizeof(ip))) {
        ajob_free(j);
        return lualib_error(L, fname, "received_from missing from metadata");
    }
    /* §2.4: a null reverse path is checked as postmaster@ the HELO domain */
    if ((!domain || !*domain) && helo)
        domain = helo;
    j->domain = strdup(domain ? domain : "");
    j->sender = dup_or_null(sender && *sender ? sender : NULL);
    j->helo = dup_or_null(helo);
    j->ip = strdup(ip);
    j->receiver = dup_or_null(meta_str(meta, "hostname"));
    j->prop_mailfrom = dup_or_null(sender && *sender ? sender : NULL);
    j->prop_helo = dup_or_null(helo);
    if (!j->domain || !j->ip) {
        ajob_free(j);
        return lualib_error(L, fname, "out of memory");
    }
    return run(L, j);
}

/* kumo.spf.check_host(DOMAIN, CONN_META, OPT_SENDER, OPT_RESOLVER) or
 * kumo.spf.check_host { domain, conn_meta, sender, resolver }. */
static int l_check_host(lua_State *L)
{
    const char *fname = "kumo.spf.check_host";
    if (lua_istable(L, 1) && lua_gettop(L) == 1) {
        lua_getfield(L, 1, "domain");
        lua_getfield(L, 1, "conn_meta");
        if (lua_isnil(L, -1)) {
            lua_pop(L, 1);
            lua_getfield(L, 1, "connection_meta");
        }
        lua_getfield(L, 1, "sender");
        lua_getfield(L, 1, "resolver");
        lua_remove(L, 1);
    }
    if (lua_type(L, 1) != LUA_TSTRING)
        return lualib_error(L, fname, "domain must be a string, not %s", luaL_typename(L, 1));
    if (!luaL_testudata(L, 2, "kumod.ConnectionMeta"))
        return lualib_error(L, fname, "conn_meta must be the connection metadata, not %s",
                            luaL_typename(L, 2));
    json_t *meta = klua_check_connmeta(L, 2);
    if (!lua_isnoneornil(L, 3) && lua_type(L, 3) != LUA_TSTRING)
        return lualib_error(L, fname, "sender must be a string, not %s", luaL_typename(L, 3));
    check_resolver(L, 4, fname);
    const char *domain = lua_tostring(L, 1);
    const char *sender = lua_tostring(L, 3);
    /* KumoMTA: with a sender, HELO is the session's; without, the domain is the HELO identity */
    const char *helo = sender ? meta_str(meta, "ehlo_domain") : domain;
    ajob *j = ajob_new(L, JOB_SPF, fname);
    return spf_common(L, j, domain, sender, helo, meta, fname);
}

/* kumo.spf.check_msg(MSG, OPT_RESOLVER) */
static int l_check_msg(lua_State *L)
{
    const char *fname = "kumo.spf.check_msg";
    message *m = klua_check_message(L, 1);
    check_resolver(L, 2, fname);
    const char *sender = m->sender ? m->sender : "";
    const char *helo = meta_str(m->meta, "ehlo_domain");
    ajob *j = ajob_new(L, JOB_SPF, fname);
    return spf_common(L, j, domain_of(sender), sender, helo, m->meta, fname);
}

/* The domain of the one mailbox of the message's one From header, into
 * out; else a reason. */
static bool from_domain(message *m, const hdr_index *ix, char *out, size_t outlen,
                        const char **why)
{
    long k = hdr_index_find(ix, "From", 0);
    if (k < 0 || hdr_index_find(ix, "From", (size_t)k + 1) >= 0) {
        *why = "Only single 'From:' header supported";
        return false;
    }
    char *v = hdr_value(&ix->fields[k]);
    addr_list l = {0};
    char err[160];
    bool ok = v && addr_list_parse(v, strlen(v), &l, err, sizeof(err)) == 0 && l.n == 1 &&
              !l.v[0].is_group && l.v[0].mbox.domain && l.v[0].mbox.domain[0] &&
              l.v[0].mbox.domain[0] != '[' && strlen(l.v[0].mbox.domain) < outlen;
    if (ok)
        snprintf(out, outlen, "%s", l.v[0].mbox.domain);
    else
        *why = "'From:' header missing domain";
    free(v);
    addr_list_fini(&l);
    (void)m;
    return ok;
}

static const char *result_str(lua_State *L, int t, const char *k)
{
    lua_getfield(L, t, k);
    const char *s = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
    lua_pop(L, 1); /* still referenced by the table */
    return s;
}

static const char *prop_str(lua_State *L, int t, const char *k)
{
    lua_getfield(L, t, "props");
    const char *s = NULL;
    if (lua_istable(L, -1))
        s = result_str(L, lua_gettop(L), k);
    lua_pop(L, 1);
    return s;
}

/* kumo.dmarc.check_msg(MSG, DKIM_RESULTS, OPT_RESOLVER, SPF_RESULT,
 * USE_REPORTING, OPT_REPORTING_INFO), argument order as KumoMTA's. */
static int l_dmarc_check_msg(lua_State *L)
{
    const char *fname = "kumo.dmarc.check_msg";
    message *m = klua_check_message(L, 1);
    if (!lua_isnoneornil(L, 2) && !lua_istable(L, 2))
        return lualib_error(L, fname, "dkim_results must be an array of authentication "
                                      "results, not %s", luaL_typename(L, 2));
    check_resolver(L, 3, fname);
    if (!lua_isnoneornil(L, 4) && !lua_istable(L, 4))
        return lualib_error(L, fname, "spf_result must be an authentication result, not %s",
                            luaL_typename(L, 4));
    if (lua_toboolean(L, 5)) {
        if (lua_isnoneornil(L, 6))
            return klua_raise_reject(L, 400, "DMARC reporting missing required fields");
        return lualib_error(L, fname, "DMARC reporting is not supported by kumod");
    }
    const hdr_index *ix = klua_msg_need_headers(L, m, "kumo.dmarc.check_msg");
    char from[256];
    const char *why = NULL;
    if (!from_domain(m, ix, from, sizeof(from), &why)) {
        lua_createtable(L, 0, 0);
        push_output(L, "None", "dmarc", "none", why);
        return 1;
    }
    ajob *j = ajob_new(L, JOB_DMARC, fname);
    j->from = strdup(from);
    bool oom = !j->from;
    /* the identifiers that authenticated */
    size_t n = lua_istable(L, 2) ? (size_t)lua_rawlen(L, 2) : 0;
    if (n > 64)
        n = 64;
    j->dkim = calloc(n ? n : 1, sizeof(char *));
    oom |= !j->dkim;
    for (size_t i = 1; !oom && i <= n; i++) {
        lua_rawgeti(L, 2, (lua_Integer)i);
        int t = lua_gettop(L);
        if (lua_istable(L, t)) {
            const char *res = result_str(L, t, "result");
            const char *d = prop_str(L, t, "header.d");
            if (res && d && strcasecmp(res, "pass") == 0) {
                j->dkim[j->n_dkim] = strdup(d);
                oom |= !j->dkim[j->n_dkim++];
            }
        }
        lua_settop(L, t - 1);
    }
    if (lua_istable(L, 4)) {
        const char *res = result_str(L, 4, "result");
        if (res && strcasecmp(res, "pass") == 0) {
            const char *d = domain_of(prop_str(L, 4, "smtp.mailfrom"));
            if (!d || !*d)
                d = prop_str(L, 4, "smtp.helo");
            if (!d || !*d)
                d = domain_of(m->sender);
            j->spf_domain = dup_or_null(d);
        }
    }
    if (oom) {
        ajob_free(j);
        return lualib_error(L, fname, "out of memory");
    }
    j->sample = (int)arc4random_uniform(100);
    return run(L, j);
}

static void spf_open(lua_State *L)
{
    int kumo = lua_absindex(L, -1);
    static const struct {
        const char *mod;
        const char *name;
        lua_CFunction fn;
    } fns[] = {
        {"spf", "check_host", l_check_host},
        {"spf", "check_msg", l_check_msg},
        {"dmarc", "check_msg", l_dmarc_check_msg},
    };
    for (size_t i = 0; i < sizeof(fns) / sizeof(fns[0]); i++) {
        luaL_getsubtable(L, kumo, fns[i].mod);
        lua_pushcfunction(L, fns[i].fn);
        lua_setfield(L, -2, fns[i].name);
        /* require 'kumo.spf' / 'kumo.dmarc' */
        luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
        lua_pushvalue(L, -2);
        lua_setfield(L, -2, fns[i].mod[0] == 's' ? "kumo.spf" : "kumo.dmarc");
        lua_pop(L, 2);
    }
}

void spf_lua_register(void)
{
    klua_register_opener(spf_open);
}
