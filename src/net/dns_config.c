/* The DNS configuration (dns_int.h): the default resolver's settings
 * (kumo.dns.configure_resolver), the named resolvers
 * (kumo.dns.define_resolver) and the test resolver's zones
 * (kumo.dns.configure_test_resolver). Each is published under a mutex and
 * read by reference or as a copy, so a lookup keeps the configuration it
 * started with while the policy changes it.
 *
 * Threads: any (configuration calls come from Lua on any reactor; lookups
 * read it on theirs). Failure: a bad name server, bind address or range is
 * KERR_INVAL with the reason in err and leaves the configuration as it was;
 * allocation failure aborts. */
#include <arpa/inet.h>
#include <ares.h>
#include <pthread.h>
#include <sys/socket.h>

#include "core/diag.h"
#include "core/kerr.h"
#include "net/dns_int.h"

/* ---- the default resolver ---------------------------------------------------- */

static struct {
    pthread_mutex_t lock;
    char *servers_csv; /* NULL: the system configuration */
    int timeout_ms;
    int attempts;
    int flags;
    int bind_family; /* 0: none */
    unsigned char bind_addr[16];
} cfg = {PTHREAD_MUTEX_INITIALIZER, NULL, 2000, 2, 0, 0, {0}};
static atomic_uint cfg_gen = 1;

/* use_hosts_file: false only after configure_resolver{options={use_hosts_file='Never'}} */
static atomic_bool use_hosts = true;

/* kumo.dns.configure_test_resolver: while set, every lookup is answered
 * from these zones and nothing else (no hosts file, no DNS), as KumoMTA's
 * test resolver replaces its resolver. Shared by reference: a lookup holds
 * the set while it reads it. */
struct testres {
    atomic_int refs;
    zone_set *zs;
};
static struct {
    pthread_mutex_t lock;
    struct testres *cur;
} testres = {PTHREAD_MUTEX_INITIALIZER, NULL};

static struct testres *testres_get(void)
{
    pthread_mutex_lock(&testres.lock);
    struct testres *t = testres.cur;
    if (t)
        atomic_fetch_add(&t->refs, 1);
    pthread_mutex_unlock(&testres.lock);
    return t;
}

void dns__testres_put(struct testres *t)
{
    if (t && atomic_fetch_sub(&t->refs, 1) == 1) {
        zone_set_free(t->zs);
        free(t);
    }
}

static void testres_replace(zone_set *zs)
{
    struct testres *t = NULL;
    if (zs) {
        t = xcalloc(1, sizeof(*t));
        atomic_init(&t->refs, 1);
        t->zs = zs;
    }
    pthread_mutex_lock(&testres.lock);
    struct testres *old = testres.cur;
    testres.cur = t;
    pthread_mutex_unlock(&testres.lock);
    dns__testres_put(old);
}

/* kumo.dns.define_resolver: the named resolvers' current definitions
 * (struct rcfg, dns_int.h). */
static struct {
    pthread_mutex_t lock;
    struct rcfg **v;
    size_t n;
} named = {PTHREAD_MUTEX_INITIALIZER, NULL, 0};
static atomic_uint rcfg_ids = 1;

void dns__rcfg_put(struct rcfg *rc)
{
    if (rc && atomic_fetch_sub(&rc->refs, 1) == 1) {
        free(rc->name);
        free(rc->servers_csv);
        zone_set_free(rc->zs);
        free(rc);
    }
}

/* The named resolver's current definition (a reference), or NULL. */
struct rcfg *dns__rcfg_get(const char *name)
{
    struct rcfg *rc = NULL;
    pthread_mutex_lock(&named.lock);
    for (size_t i = 0; i < named.n && !rc; i++)
        if (strcmp(named.v[i]->name, name) == 0) {
            rc = named.v[i];
            atomic_fetch_add(&rc->refs, 1);
        }
    pthread_mutex_unlock(&named.lock);
    return rc;
}

/* The zones that alone answer lookups through rc (the default resolver:
 * the test resolver's), or NULL; *hold is released with dns__testres_put. */
const zone_set *dns__zones_get(const struct rcfg *rc, struct testres **hold)
{
    *hold = NULL;
    if (rc)
        return rc->zs;
    *hold = testres_get();
    return *hold ? (*hold)->zs : NULL;
}

/* Cache and flight keys of a named resolver start with "@ID ". */
void dns__key_prefix(const struct rcfg *rc, char *buf, size_t len)
{
    if (rc)
        snprintf(buf, len, "@%u ", rc->id);
    else
        buf[0] = '\0';
}

unsigned dns__default_config(struct rcfg *out)
{
    memset(out, 0, sizeof(*out));
    pthread_mutex_lock(&cfg.lock);
    unsigned gen = atomic_load(&cfg_gen);
    out->servers_csv = cfg.servers_csv ? xstrdup(cfg.servers_csv) : NULL;
    out->flags = cfg.flags;
    out->timeout_ms = cfg.timeout_ms;
    out->attempts = cfg.attempts;
    out->bind_family = cfg.bind_family;
    memcpy(out->bind_addr, cfg.bind_addr, sizeof(out->bind_addr));
    pthread_mutex_unlock(&cfg.lock);
    return gen;
}

unsigned dns__config_gen(void)
{
    return atomic_load(&cfg_gen);
}

bool dns__use_hosts(const struct rcfg *rc)
{
    return rc ? rc->use_hosts : atomic_load(&use_hosts);
}

/* ---- configuration ------------------------------------------------------------------- */

/* Parses "ip", "ip:port", "[ipv6]:port" or a bare IPv6 address. */
static int parse_server(const char *s, int *family, unsigned char raw[16], uint16_t *port)
{
    char host[INET6_ADDRSTRLEN + 8];
    const char *portstr = NULL;
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (!close || (size_t)(close - s - 1) >= sizeof(host))
            return KERR_INVAL;
        memcpy(host, s + 1, (size_t)(close - s - 1));
        host[close - s - 1] = '\0';
        if (close[1] == ':')
            portstr = close + 2;
        else if (close[1] != '\0')
            return KERR_INVAL;
    } else {
        const char *colon = strchr(s, ':');
        if (colon && strchr(colon + 1, ':')) { /* bare IPv6 */
            if (strlen(s) >= sizeof(host))
                return KERR_INVAL;
            strcpy(host, s);
        } else {
            size_t n = colon ? (size_t)(colon - s) : strlen(s);
            if (n >= sizeof(host))
                return KERR_INVAL;
            memcpy(host, s, n);
            host[n] = '\0';
            if (colon)
                portstr = colon + 1;
        }
    }
    *port = 53;
    if (portstr) {
        if (!*portstr)
            return KERR_INVAL;
        unsigned long v = 0;
        for (const char *d = portstr; *d; d++) {
            if (*d < '0' || *d > '9')
                return KERR_INVAL;
            v = v * 10 + (unsigned long)(*d - '0');
            if (v > 65535)
                return KERR_INVAL;
        }
        if (v == 0)
            return KERR_INVAL;
        *port = (uint16_t)v;
    }
    if (inet_pton(AF_INET, host, raw) == 1)
        *family = AF_INET;
    else if (inet_pton(AF_INET6, host, raw) == 1)
        *family = AF_INET6;
    else
        return KERR_INVAL;
    return 0;
}

/* Checks c and fills the connection fields of out (servers_csv, timeout,
 * attempts, flags, bind address, use_hosts). Returns 0 or KERR_INVAL with
 * err naming the bad entry. */
static int config_parse(const dns_config *c, struct rcfg *out, char *err, size_t errlen)
{
    struct sbuf csv = {0};
    for (size_t i = 0; i < c->n_name_servers; i++) {
        int family;
        unsigned char raw[16];
        uint16_t port;
        if (!c->name_servers[i] || parse_server(c->name_servers[i], &family, raw, &port) != 0) {
            snprintf(err, errlen, "name server '%s' is not an IP address with an optional port",
                     c->name_servers[i] ? c->name_servers[i] : "(null)");
            free(csv.s);
            return KERR_INVAL;
        }
        char text[INET6_ADDRSTRLEN], one[INET6_ADDRSTRLEN + 16];
        inet_ntop(family, raw, text, sizeof(text));
        if (family == AF_INET)
            snprintf(one, sizeof(one), "%s%s:%u", i ? "," : "", text, (unsigned)port);
        else
            snprintf(one, sizeof(one), "%s[%s]:%u", i ? "," : "", text, (unsigned)port);
        sbuf_str(&csv, one);
    }
    int bind_family = 0;
    unsigned char bind_raw[16] = {0};
    if (c->bind_addr) {
        uint16_t port;
        if (parse_server(c->bind_addr, &bind_family, bind_raw, &port) != 0) {
            snprintf(err, errlen, "bind_addr '%s' is not an IP address with an optional port",
                     c->bind_addr);
            free(csv.s);
            return KERR_INVAL;
        }
    }
    if (c->timeout_ms < 0 || c->timeout_ms > 600000 || c->attempts < 0 || c->attempts > 100) {
        snprintf(err, errlen, "timeout or attempts out of range");
        free(csv.s);
        return KERR_INVAL;
    }
    out->servers_csv = csv.s; /* NULL when no servers: the system configuration */
    out->timeout_ms = c->timeout_ms ? (int)c->timeout_ms : 2000;
    out->attempts = c->attempts ? c->attempts : 2;
    out->flags = (c->use_tcp ? ARES_FLAG_USEVC : 0) | (c->edns0 ? ARES_FLAG_EDNS : 0) |
                 (c->no_recursion ? ARES_FLAG_NORECURSE : 0);
    out->bind_family = bind_family;
    memcpy(out->bind_addr, bind_raw, sizeof(out->bind_addr));
    out->use_hosts = !c->no_hosts_file;
    return 0;
}

int dns_configure_ex(const dns_config *c, char *err, size_t errlen)
{
    struct rcfg p;
    memset(&p, 0, sizeof(p));
    if (config_parse(c, &p, err, errlen) != 0)
        return KERR_INVAL;
    pthread_mutex_lock(&cfg.lock);
    free(cfg.servers_csv);
    cfg.servers_csv = p.servers_csv;
    cfg.timeout_ms = p.timeout_ms;
    cfg.attempts = p.attempts;
    cfg.flags = p.flags;
    cfg.bind_family = p.bind_family;
    memcpy(cfg.bind_addr, p.bind_addr, sizeof(cfg.bind_addr));
    atomic_store(&use_hosts, p.use_hosts);
    atomic_fetch_add(&cfg_gen, 1);
    DINFO(DNS_MOD, "DNS resolver configured: servers=%s timeout_ms=%d attempts=%d",
          cfg.servers_csv ? cfg.servers_csv : "(system)", cfg.timeout_ms, cfg.attempts);
    pthread_mutex_unlock(&cfg.lock);
    /* a real resolver replaces the test one, as in KumoMTA (whose MX cache
     * survives a reconfiguration; so does this one) */
    testres_replace(NULL);
    return 0;
}

int dns_define_resolver(const char *name, const dns_config *c, struct zone_set *zs, char *err,
                        size_t errlen)
{
    if (!name || (!c == !zs)) {
        snprintf(err, errlen, "a resolver needs a name and one configuration");
        zone_set_free(zs);
        return KERR_INVAL;
    }
    struct rcfg *rc = xcalloc(1, sizeof(*rc));
    if (c && config_parse(c, rc, err, errlen) != 0) {
        free(rc);
        return KERR_INVAL;
    }
    atomic_init(&rc->refs, 1);
    rc->id = atomic_fetch_add(&rcfg_ids, 1);
    rc->name = xstrdup(name);
    rc->zs = zs;
    struct rcfg *old = NULL;
    pthread_mutex_lock(&named.lock);
    size_t i = 0;
    while (i < named.n && strcmp(named.v[i]->name, name) != 0)
        i++;
    if (i < named.n) {
        old = named.v[i];
    } else {
        struct rcfg **nv = xrealloc(named.v, (named.n + 1) * sizeof(*nv));
        named.v = nv;
        named.n++;
    }
    named.v[i] = rc;
    pthread_mutex_unlock(&named.lock);
    dns__rcfg_put(old);
    DINFO(DNS_MOD, "DNS resolver '%s' defined: %s", name,
          zs ? "test zones" : rc->servers_csv ? rc->servers_csv : "(system)");
    return 0;
}

bool dns_resolver_defined(const char *name)
{
    struct rcfg *rc = dns__rcfg_get(name);
    dns__rcfg_put(rc);
    return rc != NULL;
}

void dns_configure_test(struct zone_set *zs)
{
    testres_replace(zs);
    /* answers cached from DNS must not shadow the zones */
    dns_cache_clear();
    DINFO(DNS_MOD, "DNS test resolver %s", zs ? "configured" : "removed");
}

int dns_configure(const char *const *name_servers, size_t n)
{
    dns_config c;
    memset(&c, 0, sizeof(c));
    c.name_servers = name_servers;
    c.n_name_servers = n;
    char err[256];
    int rc = dns_configure_ex(&c, err, sizeof(err));
    if (rc != 0)
        DERROR(DNS_MOD, "%s", err);
    return rc;
}

void dns__config_shutdown(void)
{
    testres_replace(NULL);
    pthread_mutex_lock(&named.lock);
    for (size_t i = 0; i < named.n; i++)
        dns__rcfg_put(named.v[i]);
    free(named.v);
    named.v = NULL;
    named.n = 0;
    pthread_mutex_unlock(&named.lock);
    pthread_mutex_lock(&cfg.lock);
    free(cfg.servers_csv);
    cfg.servers_csv = NULL;
    pthread_mutex_unlock(&cfg.lock);
}
