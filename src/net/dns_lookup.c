/* The lookup entry points of the DNS module (dns.h): MX, TXT, PTR and
 * address lookups, plain or through a named resolver. Each checks and
 * normalizes the name, answers at once what needs no query (domain
 * literals, the test resolver's zones, RFC 6761 names, the hosts file,
 * the cache) and otherwise joins a flight on the reactor's resolver
 * (dns.c); an address lookup is a job that combines the A and AAAA
 * answers per its strategy.
 *
 * Thread: the calling reactor's; callbacks never run inside the call
 * (answers are delivered from the resolver's event). Failure: bad
 * arguments are KERR_INVAL, an unknown named resolver KERR_NOTFOUND; a
 * name DNS cannot have is answered as a failed lookup, never dropped. */
#include <arpa/inet.h>
#include <ctype.h>
#include <sys/socket.h>

#include "core/kerr.h"
#include "core/reactor.h"
#include "net/dns_int.h"

/* ---- MX lookups -------------------------------------------------------------------- */

static int mx_start(struct resolver *res, struct rcfg *rc, const char *domain, dns_mx_cb cb,
                    void *ud, void (*drop)(void *ud));

int dns_lookup_mx(const char *domain, dns_mx_cb cb, void *ud)
{
    return dns_lookup_mx_owned(domain, cb, ud, NULL);
}

int dns_lookup_mx_owned(const char *domain, dns_mx_cb cb, void *ud, void (*drop)(void *ud))
{
    return dns_lookup_mx_via(NULL, domain, cb, ud, drop);
}

/* Resolves the named resolver for a lookup: 0 with *rc NULL (the default)
 * or a reference, KERR_NOTFOUND when the name is not defined. */
static int via(const char *resolver, struct rcfg **rc)
{
    *rc = NULL;
    if (!resolver)
        return 0;
    *rc = dns__rcfg_get(resolver);
    return *rc ? 0 : KERR_NOTFOUND;
}

/* What every lookup starts with: on a reactor, with arguments the caller
 * found valid (args_ok), the named resolver's configuration (via) and the
 * reactor's resolver. 0, KERR_INVAL, KERR_NOTFOUND or KERR_NOMEM (then
 * nothing is held). */
static int lookup_begin(bool args_ok, const char *resolver, struct rcfg **rc, struct resolver **res)
{
    reactor *r = reactor_current();
    if (!r || !args_ok)
        return KERR_INVAL;
    if (via(resolver, rc) != 0)
        return KERR_NOTFOUND;
    *res = dns__resolver_get(r);
    if (!*res) {
        dns__rcfg_put(*rc);
        return KERR_NOMEM;
    }
    return 0;
}

int dns_lookup_mx_via(const char *resolver, const char *domain, dns_mx_cb cb, void *ud,
                      void (*drop)(void *ud))
{
    struct rcfg *rc;
    struct resolver *res;
    int begun = lookup_begin(cb && domain, resolver, &rc, &res);
    if (begun != 0)
        return begun;
    int rv = mx_start(res, rc, domain, cb, ud, drop);
    dns__rcfg_put(rc);
    return rv;
}

static int mx_start(struct resolver *res, struct rcfg *rc, const char *domain, dns_mx_cb cb,
                    void *ud, void (*drop)(void *ud))
{
    struct waiter *w = dns__waiter_new(W_MX);
    w->mx_cb = cb;
    w->ud = ud;
    w->drop = drop;

    char err[256];
    int family;
    unsigned char raw[16];
    uint16_t port = 0;
    int lit = dns__parse_literal(domain, &family, raw, &port, err, sizeof(err));
    if (lit != 0) {
        struct mx_obj *m;
        if (lit < 0) {
            m = dns__mx_obj_new(DNS_FAIL, xstrdup(err), xstrdup(domain));
        } else {
            char text[INET6_ADDRSTRLEN];
            inet_ntop(family, raw, text, sizeof(text));
            struct host_pref hp;
            if (!port)
                hp.name = xstrdup(text);
            else if (family == AF_INET)
                hp.name = xasprintf("%s:%u", text, (unsigned)port);
            else
                hp.name = xasprintf("[%s]:%u", text, (unsigned)port);
            hp.pref = 1;
            m = dns__mx_obj_new(DNS_OK, NULL, xstrdup(domain));
            /* the port is already in the address text */
            dns__mx_obj_set_hosts(m, &hp, 1, 0);
            m->pub.port = port;
            /* KumoMTA: a literal's site is its address, not a factoring */
            free(m->site_name);
            m->site_name = xstrdup(m->hosts[0].name);
            m->pub.site_name = m->site_name;
            m->pub.is_domain_literal = true;
        }
        dns__post_ready(res, w, &m->hdr);
        return 0;
    }

    size_t len = strlen(domain);
    if (!dns_split_port(domain, &len, &port))
        port = 0;
    char qname[DNS_MAX_NAME + 2];
    if (len > DNS_MAX_NAME || dns__name_normalize(domain, len, qname) < 0) {
        struct mx_obj *m = dns__mx_obj_new(
            DNS_FAIL, xasprintf("MX lookup for %s failed: invalid domain name", domain),
            xstrdup(domain));
        dns__post_ready(res, w, &m->hdr);
        return 0;
    }
    struct testres *t;
    const zone_set *zs = dns__zones_get(rc, &t);
    if (zs) {
        dns__post_ready(res, w, dns__mx_from_zones(zs, qname, domain, port, clock_mono_ns()));
        dns__testres_put(t);
        return 0;
    }
    if (dns__under(qname, "localhost")) {
        dns__post_ready(res, w, dns__mx_implicit_as(qname, port, 0));
        return 0;
    }
    if (dns__under(qname, "invalid")) {
        dns__post_ready(res, w,
                        dns__mx_fail_as(domain, qname, clock_mono_ns(), DNS_NXDOMAIN, "NXDOMAIN"));
        return 0;
    }
    char key[DNS_MAX_NAME + 48], pfx[24];
    dns__key_prefix(rc, pfx, sizeof(pfx));
    if (port)
        snprintf(key, sizeof(key), "%sMX %s:%u", pfx, qname, (unsigned)port);
    else
        snprintf(key, sizeof(key), "%sMX %s", pfx, qname);
    struct cobj *hit = dns__cache_get(key);
    if (hit) {
        dns__post_ready(res, w, hit);
        return 0;
    }
    dns__flight_join(res, rc, key, T_MX, qname, domain, port, w);
    return 0;
}

/* ---- TXT lookups ------------------------------------------------------------------ */

/* Answers w (a W_TXT waiter) with the TXT or PTR (qtype) records of the
 * normalized qname, display being the name as asked: from the test
 * resolver's zones, the special-use names (RFC 6761: localhost has no
 * such records, invalid does not exist; reverse names are never under
 * them), the cache, or a query joined to one in flight. */
static void list_lookup(struct resolver *res, struct rcfg *rc, struct waiter *w, int qtype,
                        const char *qname, const char *display)
{
    struct testres *t;
    const zone_set *zs = dns__zones_get(rc, &t);
    if (zs) {
        dns__post_ready(
            res, w, dns__list_from_zones(zs, qname, display, qtype == T_TXT ? ZONE_TXT : ZONE_PTR));
        dns__testres_put(t);
        return;
    }
    if (dns__under(qname, "localhost") || dns__under(qname, "invalid")) {
        dns__post_ready(
            res, w,
            &dns__txt_obj_new(dns__under(qname, "invalid") ? DNS_NXDOMAIN : DNS_NO_RECORDS, NULL,
                              display)
                 ->hdr);
        return;
    }
    char key[DNS_MAX_NAME + 48], pfx[24];
    dns__key_prefix(rc, pfx, sizeof(pfx));
    snprintf(key, sizeof(key), "%s%s %s", pfx, qtype == T_TXT ? "TXT" : "PTR", qname);
    struct cobj *hit = dns__cache_get(key);
    if (hit) {
        dns__post_ready(res, w, hit);
        return;
    }
    dns__flight_join(res, rc, key, qtype, qname, display, 0, w);
}

int dns_lookup_txt(const char *name, dns_txt_cb cb, void *ud, void (*drop)(void *ud))
{
    return dns_lookup_txt_via(NULL, name, cb, ud, drop);
}

static void txt_start(struct resolver *res, struct rcfg *rc, const char *name, dns_txt_cb cb,
                      void *ud, void (*drop)(void *ud));

int dns_lookup_txt_via(const char *resolver, const char *name, dns_txt_cb cb, void *ud,
                       void (*drop)(void *ud))
{
    struct rcfg *rc;
    struct resolver *res;
    int begun = lookup_begin(cb && name, resolver, &rc, &res);
    if (begun != 0)
        return begun;
    txt_start(res, rc, name, cb, ud, drop);
    dns__rcfg_put(rc);
    return 0;
}

static void txt_start(struct resolver *res, struct rcfg *rc, const char *name, dns_txt_cb cb,
                      void *ud, void (*drop)(void *ud))
{
    struct waiter *w = dns__waiter_new(W_TXT);
    w->txt_cb = cb;
    w->ud = ud;
    w->drop = drop;
    size_t len = strlen(name);
    char qname[DNS_MAX_NAME + 2];
    if (len > DNS_MAX_NAME || dns__name_normalize(name, len, qname) < 0) {
        dns__post_ready(
            res, w,
            &dns__txt_obj_new(
                 DNS_FAIL, xasprintf("failed to query DNS for %s (TXT): invalid domain name", name),
                 name)
                 ->hdr);
        return;
    }
    list_lookup(res, rc, w, T_TXT, qname, name);
}

/* ---- PTR lookups -------------------------------------------------------------------- */

int dns_lookup_ptr(const char *resolver, const char *ip, dns_txt_cb cb, void *ud,
                   void (*drop)(void *ud))
{
    char qname[DNS_MAX_NAME + 2];
    bool ok = cb && ip && dns_ptr_name(ip, qname, sizeof(qname)) == 0;
    struct rcfg *rc;
    struct resolver *res;
    int begun = lookup_begin(ok, resolver, &rc, &res);
    if (begun != 0)
        return begun;
    struct waiter *w = dns__waiter_new(W_TXT);
    w->txt_cb = cb;
    w->ud = ud;
    w->drop = drop;
    list_lookup(res, rc, w, T_PTR, qname, ip);
    dns__rcfg_put(rc);
    return 0;
}

/* ---- address lookups ----------------------------------------------------------------- */

int dns_ip_strategy_parse(const char *s)
{
    static const struct {
        const char *name;
        int v;
    } names[] = {
        {"Ipv4AndIpv6", DNS_IPV4_AND_IPV6},   {"Ipv4Only", DNS_IPV4_ONLY},
        {"Ipv6Only", DNS_IPV6_ONLY},          {"Ipv6ThenIpv4", DNS_IPV6_THEN_IPV4},
        {"Ipv4ThenIpv6", DNS_IPV4_THEN_IPV6}, {"Ipv6thenIpv4", DNS_IPV6_THEN_IPV4},
        {"Ipv4thenIpv6", DNS_IPV4_THEN_IPV6},
    };
    if (!s)
        return KERR_INVAL;
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (strcmp(s, names[i].name) == 0)
            return names[i].v;
    return KERR_INVAL;
}

const char *dns_ip_strategy_name(int strategy)
{
    switch (strategy) {
    case DNS_IPV4_AND_IPV6:
        return "Ipv4AndIpv6";
    case DNS_IPV4_ONLY:
        return "Ipv4Only";
    case DNS_IPV6_ONLY:
        return "Ipv6Only";
    case DNS_IPV6_THEN_IPV4:
        return "Ipv6ThenIpv4";
    case DNS_IPV4_THEN_IPV6:
        return "Ipv4ThenIpv6";
    }
    return "?";
}

void dns__job_free(struct addr_job *job)
{
    for (int i = 0; i < 2; i++)
        if (job->fam[i])
            cobj_unref(&job->fam[i]->hdr);
    dns__rcfg_put(job->rc);
    free(job->name);
    free(job->fq);
    free(job->error);
    free(job);
}

/* Asks for one family (0: A, 1: AAAA). */
static void job_request(struct resolver *res, struct addr_job *job, int idx)
{
    job->outstanding++;
    struct waiter *w = dns__waiter_new(W_FAM);
    w->job = job;
    struct fam_obj *st = dns__fam_static(job->rc, job->fq, job->name, idx);
    if (st) {
        dns__post_ready(res, w, &st->hdr);
        return;
    }
    char key[DNS_MAX_NAME + 48], pfx[24];
    dns__key_prefix(job->rc, pfx, sizeof(pfx));
    snprintf(key, sizeof(key), "%s%s %s", pfx, idx == 0 ? "A" : "AAAA", job->fq);
    struct cobj *hit = dns__cache_get(key);
    if (hit) {
        dns__post_ready(res, w, hit);
        return;
    }
    dns__flight_join(res, job->rc, key, idx == 0 ? T_A : T_AAAA, job->fq, job->name, 0, w);
}

static bool fam_has_addrs(const struct fam_obj *fo)
{
    return fo && fo->status == DNS_OK && fo->n > 0;
}

void dns__job_got(struct resolver *res, struct addr_job *job, struct fam_obj *fo)
{
    int idx = fo->family == AF_INET ? 0 : 1;
    if (job->fam[idx])
        cobj_unref(&job->fam[idx]->hdr);
    job->fam[idx] = (struct fam_obj *)cobj_ref(&fo->hdr);
    job->outstanding--;
    /* KumoMTA's ThenX strategies fall back on an empty answer or an error */
    if (job->strategy == DNS_IPV6_THEN_IPV4 && idx == 1 && !fam_has_addrs(fo) && !job->fam[0])
        job_request(res, job, 0);
    else if (job->strategy == DNS_IPV4_THEN_IPV6 && idx == 0 && !fam_has_addrs(fo) && !job->fam[1])
        job_request(res, job, 1);
    if (job->outstanding == 0)
        dns__job_finish(res, job);
}

void dns__job_finish(struct resolver *res, struct addr_job *job)
{
    dns_addrs out;
    memset(&out, 0, sizeof(out));
    out.name = job->name;
    out.port = job->port;
    size_t n = 0;
    for (int i = 0; i < 2; i++)
        if (job->fam[i] && job->fam[i]->status == DNS_OK)
            n += job->fam[i]->n;
    dns_addr *addrs = xcalloc(n, sizeof(*addrs));
    bool any_fail = false, all_nx = true, have_ttl = false;
    const char *first_err = NULL;
    for (int i = 0; i < 2; i++) {
        struct fam_obj *fo = job->fam[i];
        if (!fo)
            continue;
        if (fo->status == DNS_FAIL) {
            any_fail = true;
            if (!first_err)
                first_err = fo->error;
            continue;
        }
        if (fo->status != DNS_NXDOMAIN)
            all_nx = false;
        if (fo->n)
            memcpy(addrs + out.n_addrs, fo->addrs, fo->n * sizeof(*addrs));
        out.n_addrs += fo->n;
        if (!have_ttl || fo->ttl < out.ttl) {
            out.ttl = fo->ttl;
            out.expires_ms = fo->expires_ms;
        }
        have_ttl = true;
    }
    out.addrs = addrs;
    if (job->error) {
        out.status = DNS_FAIL;
        out.error = job->error;
    } else if (out.n_addrs > 0) {
        out.status = DNS_OK;
    } else if (any_fail) {
        out.status = DNS_FAIL;
        out.error = first_err;
    } else {
        out.status = all_nx ? DNS_NXDOMAIN : DNS_NO_RECORDS;
    }
    dns__job_unlink(res, job);
    job->cb(&out, job->ud);
    free(addrs);
    dns__job_free(job);
}

int dns_lookup_addrs(const char *host, int strategy, dns_addr_cb cb, void *ud)
{
    return dns_lookup_addrs_owned(host, strategy, cb, ud, NULL);
}

int dns_lookup_addrs_owned(const char *host, int strategy, dns_addr_cb cb, void *ud,
                           void (*drop)(void *ud))
{
    return dns_lookup_addrs_via(NULL, host, strategy, cb, ud, drop);
}

int dns_lookup_addrs_via(const char *resolver, const char *host, int strategy, dns_addr_cb cb,
                         void *ud, void (*drop)(void *ud))
{
    struct rcfg *rc;
    struct resolver *res;
    int begun =
        lookup_begin(cb && host && strategy >= DNS_IPV4_AND_IPV6 && strategy <= DNS_IPV4_THEN_IPV6,
                     resolver, &rc, &res);
    if (begun != 0)
        return begun;
    struct addr_job *job = xcalloc(1, sizeof(*job));
    job->rc = rc; /* the job holds the reference */
    job->cb = cb;
    job->ud = ud;
    job->drop = drop;
    job->strategy = strategy;
    job->name = xstrdup(host);
    dns__job_link(res, job);

    /* literals need no DNS */
    char err[256];
    int family = 0;
    unsigned char raw[16];
    uint16_t port = 0;
    int lit = dns__parse_literal(host, &family, raw, &port, err, sizeof(err));
    if (lit == 0 && inet_pton(AF_INET, host, raw) == 1)
        lit = 1, family = AF_INET;
    else if (lit == 0 && inet_pton(AF_INET6, host, raw) == 1)
        lit = 1, family = AF_INET6;
    if (lit != 0) {
        if (lit < 0) {
            job->error = xstrdup(err);
        } else {
            struct fam_obj *fo = dns__fam_obj_new(family, DNS_OK, NULL);
            dns__fam_obj_add(fo, family, raw);
            job->fam[family == AF_INET ? 0 : 1] = fo;
            job->port = port;
        }
        struct waiter *w = dns__waiter_new(W_JOB);
        w->job = job;
        dns__post_ready(res, w, NULL);
        return 0;
    }

    size_t len = strlen(host);
    char fq[DNS_MAX_NAME + 2];
    if (len > DNS_MAX_NAME || dns__name_normalize(host, len, fq) <= 0) {
        job->error = xasprintf("invalid host name `%s`", host);
        struct waiter *w = dns__waiter_new(W_JOB);
        w->job = job;
        dns__post_ready(res, w, NULL);
        return 0;
    }
    job->fq = xstrdup(fq);
    switch (strategy) {
    case DNS_IPV4_AND_IPV6:
        job_request(res, job, 0);
        job_request(res, job, 1);
        break;
    case DNS_IPV4_ONLY:
    case DNS_IPV4_THEN_IPV6:
        job_request(res, job, 0);
        break;
    case DNS_IPV6_ONLY:
    case DNS_IPV6_THEN_IPV4:
        job_request(res, job, 1);
        break;
    }
    return 0;
}
