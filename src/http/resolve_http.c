/* GET /api/admin/resolve-egress-path/v1?domain=D[&source=S] (KumoMTA's
 * ResolveEgressPathV1Response): what the live policy would make of a
 * destination, from the configuration side. It calls get_queue_config,
 * resolves the MX (the site name that rolls domains up into one ready
 * queue), calls get_egress_pool for the queue's pool and
 * get_egress_path_config for (domain, source, site), and answers the
 * queue config as the policy returned it, the effective path config, its
 * ceilings, the MX answer and the ready queue name. kumod adds tenant,
 * campaign and routing_domain query parameters (passed to
 * get_queue_config, as a message of that queue would) and egress_pool /
 * sources fields (the pool's sources and weights).
 *
 * Thread: the reactor that took the request; each step is an
 * asynchronous policy call or DNS lookup continued from its callback.
 * Failure: a missing domain is a 400; a policy error or a config the
 * makers refuse is a 500 naming the event and the reason (as the ready
 * queue would log it). */
#include "http/resolve_http.h"

#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/kerr.h"
#include "http/request.h"
#include "lua/klua.h"
#include "lua/luajson.h"
#include "net/dns.h"
#include "queue/admin.h"
#include "queue/config.h"

typedef struct resolve_job {
    http_req *hr;
    char *domain, *source, *tenant, *campaign, *routing_domain;
    json_t *queue_json; /* the table get_queue_config returned ({} without one) */
    queue_config qcfg;
    json_t *mx;     /* MxResolution or null */
    char *site;     /* the site part of the ready queue name */
    json_t *pool;   /* {name, sources: [{name, weight}]} or NULL */
} resolve_job;

static void job_free(resolve_job *j)
{
    free(j->domain);
    free(j->source);
    free(j->tenant);
    free(j->campaign);
    free(j->routing_domain);
    json_decref(j->queue_json);
    queue_config_fini(&j->qcfg);
    json_decref(j->mx);
    free(j->site);
    json_decref(j->pool);
    free(j);
}

static void job_fail(resolve_job *j, const char *what, const char *why)
{
    http_reply_error(j->hr, 500, "%s: %s", what, why);
    job_free(j);
}

static const char *dest(const resolve_job *j)
{
    return j->routing_domain ? j->routing_domain : j->domain;
}

/* The first table result of a finished call as JSON, NULL when the
 * handler returned none; *err set on a conversion failure. */
static json_t *call_table(klua_call *c, char *err, size_t errlen)
{
    lua_State *L = klua_call_thread(c);
    err[0] = 0;
    if (klua_call_nresults(c) < 1 || lua_type(L, 1) != LUA_TTABLE)
        return NULL;
    return klua_to_json(L, 1, err, errlen);
}

static void after_path(klua_call *c, int status, void *ud)
{
    resolve_job *j = ud;
    egress_path_config pc;
    egress_path_defaults(&pc);
    if (c && status != KLUA_OK) {
        egress_path_fini(&pc);
        job_fail(j, "get_egress_path_config", klua_call_error(c));
        return;
    }
    char err[512] = "";
    json_t *t = c ? call_table(c, err, sizeof(err)) : NULL;
    if (t && !err[0])
        egress_path_fini(&pc); /* egress_path_from_json starts from the defaults itself */
    if (err[0] || (t && egress_path_from_json(t, &pc, err, sizeof(err)) != 0)) {
        json_decref(t);
        egress_path_fini(&pc);
        job_fail(j, "get_egress_path_config", err);
        return;
    }
    json_decref(t);
    char pbuf[4200];
    const char *suffix = queue_proto_suffix(&j->qcfg, pbuf, sizeof(pbuf));
    char *qn = NULL;
    if (asprintf(&qn, "%s->%s@%s", j->source, j->site, suffix) < 0)
        qn = NULL;
    json_t *o = json_object();
    json_object_set_new(o, "domain", json_string(j->domain));
    json_object_set_new(o, "source", json_string(j->source));
    json_object_set_new(o, "queue_name", qn ? json_string(qn) : json_null());
    json_object_set_new(o, "queue_config", json_incref(j->queue_json));
    json_object_set_new(o, "path_config", queue_path_config_json(&pc));
    json_object_set_new(o, "constraints", queue_path_constraints_json(&pc));
    json_object_set_new(o, "mx", json_incref(j->mx));
    json_object_set_new(o, "egress_pool", j->qcfg.egress_pool ? json_string(j->qcfg.egress_pool)
                                                              : json_string("unspecified"));
    json_object_set_new(o, "sources", j->pool ? json_incref(json_object_get(j->pool, "sources"))
                                              : json_array());
    free(qn);
    egress_path_fini(&pc);
    http_reply_json(j->hr, 200, o);
    job_free(j);
}

static void call_path(resolve_job *j)
{
    klua *vm = klua_current();
    if (!vm || !klua_has_handler(vm, "get_egress_path_config")) {
        after_path(NULL, KLUA_OK, j);
        return;
    }
    klua_call *c;
    lua_State *co = klua_call_begin(vm, "get_egress_path_config", &c);
    lua_pushstring(co, dest(j));
    lua_pushstring(co, j->source);
    lua_pushstring(co, j->site);
    klua_call_run(c, 3, after_path, j);
}

static void after_pool(klua_call *c, int status, void *ud)
{
    resolve_job *j = ud;
    if (status != KLUA_OK) {
        job_fail(j, "get_egress_pool", klua_call_error(c));
        return;
    }
    char err[512];
    json_t *t = call_table(c, err, sizeof(err));
    egress_pool p = {0};
    if (err[0] || !t || egress_pool_from_json(t, &p, err, sizeof(err)) != 0) {
        json_decref(t);
        egress_pool_fini(&p);
        job_fail(j, "get_egress_pool", err[0] ? err : "returned no pool");
        return;
    }
    json_decref(t);
    json_t *srcs = json_array();
    for (size_t i = 0; i < p.n; i++)
        json_array_append_new(srcs, json_pack("{s:s,s:i}", "name", p.entries[i].name, "weight",
                                              (json_int_t)p.entries[i].weight));
    j->pool = json_pack("{s:s,s:o}", "name", p.name ? p.name : "", "sources", srcs);
    egress_pool_fini(&p);
    call_path(j);
}

static void after_site(resolve_job *j)
{
    klua *vm = klua_current();
    if (j->qcfg.egress_pool && vm && klua_has_handler(vm, "get_egress_pool")) {
        klua_call *c;
        lua_State *co = klua_call_begin(vm, "get_egress_pool", &c);
        lua_pushstring(co, j->qcfg.egress_pool);
        klua_call_run(c, 1, after_pool, j);
        return;
    }
    call_path(j);
}

/* KumoMTA's MxResolution. */
static json_t *mx_json(const dns_mx *mx)
{
    json_t *by = json_object();
    for (size_t i = 0; i < mx->n_hosts; i++) {
        char pref[8];
        snprintf(pref, sizeof(pref), "%u", (unsigned)mx->hosts[i].pref);
        json_t *a = json_object_get(by, pref);
        if (!a) {
            a = json_array();
            json_object_set_new(by, pref, a);
        }
        json_array_append_new(a, json_string(mx->hosts[i].name));
    }
    return json_pack("{s:s,s:o,s:b,s:b,s:b,s:s}", "domain_name",
                     mx->domain_name ? mx->domain_name : "", "by_preference", by,
                     "is_domain_literal", mx->is_domain_literal, "is_mx", mx->is_mx, "is_secure",
                     mx->is_secure, "site_name", mx->site_name ? mx->site_name : "");
}

static void on_mx(const dns_mx *mx, void *ud)
{
    resolve_job *j = ud;
    if (mx->status == DNS_OK) {
        j->mx = mx_json(mx);
    } else {
        /* as the scheduled queue does: the domain stays the site and the
         * delivery attempt reports the failure */
        j->mx = json_null();
    }
    j->site = strdup(mx->status == DNS_OK && mx->site_name && *mx->site_name ? mx->site_name
                                                                             : dest(j));
    after_site(j);
}

static void after_queue(klua_call *c, int status, void *ud)
{
    resolve_job *j = ud;
    if (c && status != KLUA_OK) {
        job_fail(j, "get_queue_config", klua_call_error(c));
        return;
    }
    char err[512] = "";
    json_t *t = c ? call_table(c, err, sizeof(err)) : NULL;
    queue_config_defaults(&j->qcfg);
    if (err[0] || (t && queue_config_from_json(t, &j->qcfg, err, sizeof(err)) != 0)) {
        json_decref(t);
        job_fail(j, "get_queue_config", err);
        return;
    }
    j->queue_json = t ? t : json_object();
    j->mx = json_null();
    if (j->qcfg.proto == QPROTO_SMTP && !j->qcfg.mx_list) {
        if (dns_lookup_mx(dest(j), on_mx, j) != 0)
            on_mx(&(dns_mx){.status = DNS_FAIL}, j);
        return;
    }
    /* smart hosts name the site after themselves, as sched_site does */
    char buf[4200];
    size_t o = 0;
    buf[0] = 0;
    if (j->qcfg.proto == QPROTO_SMTP) {
        o = (size_t)snprintf(buf, sizeof(buf), "mx_list:");
        size_t i;
        json_t *e;
        json_array_foreach(j->qcfg.mx_list, i, e)
        {
            const char *h = json_is_string(e) ? json_string_value(e)
                                              : json_string_value(json_object_get(e, "addr"));
            if (o < sizeof(buf))
                o += (size_t)snprintf(buf + o, sizeof(buf) - o, "%s%s", i ? "," : "",
                                      h ? h : "");
        }
    }
    j->site = strdup(buf[0] ? buf : dest(j));
    after_site(j);
}

static char *opt_dup(http_req *hr, const char *name)
{
    const char *v = http_req_query(hr, name);
    return v && *v ? strdup(v) : NULL;
}

static void http_admin_resolve_egress_path(http_req *hr)
{
    const char *domain = http_req_query(hr, "domain");
    if (!domain || !*domain) {
        http_reply_error(hr, 400, "domain is required");
        return;
    }
    resolve_job *j = calloc(1, sizeof(*j));
    if (!j) {
        http_reply_error(hr, 500, "out of memory");
        return;
    }
    j->hr = hr;
    j->domain = strdup(domain);
    j->source = opt_dup(hr, "source");
    if (!j->source)
        j->source = strdup("unspecified");
    j->tenant = opt_dup(hr, "tenant");
    j->campaign = opt_dup(hr, "campaign");
    j->routing_domain = opt_dup(hr, "routing_domain");
    klua *vm = klua_current();
    if (!vm) {
        http_reply_error(hr, 503, "the policy is not loaded yet");
        job_free(j);
        return;
    }
    if (!klua_has_handler(vm, "get_queue_config")) {
        after_queue(NULL, KLUA_OK, j);
        return;
    }
    klua_call *c;
    lua_State *co = klua_call_begin(vm, "get_queue_config", &c);
    lua_pushstring(co, j->domain);
    const char *opt[] = {j->tenant, j->campaign, j->routing_domain};
    for (int i = 0; i < 3; i++) {
        if (opt[i])
            lua_pushstring(co, opt[i]);
        else
            lua_pushnil(co);
    }
    klua_call_run(c, 4, after_queue, j);
}

static const http_route resolve_routes[] = {
    {"/api/admin/resolve-egress-path/v1", EVHTTP_REQ_GET, http_admin_resolve_egress_path},
};

static const http_endpoints resolve_endpoints = {
    .routes = resolve_routes,
    .n_routes = sizeof(resolve_routes) / sizeof(resolve_routes[0]),
};

void http_resolve_add_endpoints(void)
{
    http_add_endpoints(&resolve_endpoints);
}
