/* Asynchronous DNS for delivery: MX, A and AAAA with c-ares on each
 * reactor's libevent loop, a process-wide answer cache, and KumoMTA's
 * site_name factoring.
 *
 * Owns: one resolver per reactor (created on first use, kept in the
 * reactor's REACTOR_SLOT_DNS), each with a c-ares channel whose sockets and
 * timeout are driven by libevent events, a table of queries in flight (so
 * concurrent lookups of one name share one query) and a list of finished
 * lookups; the process-wide cache and configuration, each under a mutex.
 *
 * Threads: a resolver is touched only by its reactor's thread. Callbacks
 * never run inside c-ares or inside dns_lookup_*: finished lookups are
 * queued and delivered from a libevent event of their own, so a callback may
 * start new lookups freely. A configuration change bumps a generation; each
 * resolver notices it before its next query, opens a new channel and retires
 * the old one once its queries have finished.
 *
 * Some answers need no query (fam_static, and the MX equivalents in
 * dns_lookup_mx): the test resolver's zones (src/net/zone) when set, which
 * then answer everything; else the hosts file (src/net/hosts, a cached
 * table: no I/O here) for A/AAAA, then RFC 6761's localhost and invalid.
 * They are delivered like any answer (never inside the call) and not cached.
 *
 * Failures: every c-ares status ends in a result (DNS_FAIL with the reason),
 * never in a lost callback. MX failures are cached for the negative TTL
 * (5 minutes by default) exactly as KumoMTA does; address failures are not
 * cached. Allocation failure aborts (x-allocators): nothing here is sized by
 * a client. */
#include "net/dns.h"

#include <arpa/inet.h>
#include <ares.h>
#include <ctype.h>
#include <event2/event.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "core/diag.h"
#include "core/kerr.h"
#include "net/hosts.h"
#include "net/zone.h"

#define DNS_MOD "kumod::dns"

#define T_A 1
#define T_SOA 6
#define T_MX 15
#define T_AAAA 28
#define T_TXT 16
#define T_PTR 12
#define C_IN 1

/* hickory's negative TTL when a denial carries no SOA */
#define DNS_DEFAULT_NEG_TTL_S 60
/* KumoMTA keeps an MX answer whose TTL already ran out for 10 s */
#define DNS_MX_MIN_CACHE_MS 10000
#define DNS_CACHE_MAX 131072
#define DNS_MAX_ADDRS 64
#define DNS_MAX_NAME 255

/* ---- allocation ------------------------------------------------------------ */

static void oom(void) __attribute__((noreturn));
static void oom(void)
{
    fprintf(stderr, "kumod: dns: out of memory\n");
    abort();
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        oom();
    return p;
}

static void *xcalloc(size_t n, size_t sz)
{
    void *p = calloc(n ? n : 1, sz ? sz : 1);
    if (!p)
        oom();
    return p;
}

static char *xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = xmalloc(n);
    memcpy(p, s, n);
    return p;
}

static char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *xasprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    int n = vasprintf(&s, fmt, ap);
    va_end(ap);
    if (n < 0)
        oom();
    return s;
}

/* A growable string. */
struct sbuf {
    char *s;
    size_t len, cap;
};

static void sbuf_add(struct sbuf *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 64;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->s, cap);
        if (!p)
            oom();
        b->s = p;
        b->cap = cap;
    }
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = '\0';
}

static void sbuf_str(struct sbuf *b, const char *s)
{
    sbuf_add(b, s, strlen(s));
}

/* ---- names ------------------------------------------------------------------ */

const char *dns_status_name(int status)
{
    switch (status) {
    case DNS_OK:
        return "Ok";
    case DNS_NXDOMAIN:
        return "NxDomain";
    case DNS_NULL_MX:
        return "NullMx";
    case DNS_NO_RECORDS:
        return "NoRecords";
    case DNS_FAIL:
        return "Fail";
    }
    return "Unknown";
}

bool dns_split_port(const char *s, size_t *host_len, uint16_t *port)
{
    const char *colon = strrchr(s, ':');
    if (!colon)
        return false;
    /* "::1" must not read as host ":" port 1 */
    if (memchr(s, ':', (size_t)(colon - s)))
        return false;
    const char *d = colon + 1;
    if (*d == '+') /* Rust's u16 parser takes a leading '+' */
        d++;
    if (!*d)
        return false;
    unsigned long v = 0;
    for (; *d; d++) {
        if (*d < '0' || *d > '9')
            return false;
        v = v * 10 + (unsigned long)(*d - '0');
        if (v > 65535)
            return false;
    }
    *host_len = (size_t)(colon - s);
    *port = (uint16_t)v;
    return true;
}

/* Lower-cases name[0..len) into out (at least len + 1 bytes) without the
 * trailing root dot and checks it the way hickory's Name::from_str_relaxed
 * does: no empty labels, labels of at most 63 bytes, at most 255 bytes on
 * the wire. Returns the number of labels or -1. The root ("." or "") has 0. */
static int name_normalize(const char *name, size_t len, char *out)
{
    if (len > 0 && name[len - 1] == '.')
        len--;
    if (len == 0) {
        out[0] = '\0';
        return 0;
    }
    if (len + 2 > DNS_MAX_NAME)
        return -1;
    int labels = 0;
    size_t lab = 0;
    for (size_t i = 0; i < len; i++) {
        char c = name[i];
        if (c == '.') {
            if (lab == 0)
                return -1;
            labels++;
            lab = 0;
        } else if (++lab > 63) {
            return -1;
        }
        out[i] = (char)tolower((unsigned char)c);
    }
    if (lab == 0)
        return -1;
    out[len] = '\0';
    return labels + 1;
}

/* ---- site_name ------------------------------------------------------------- */

struct column {
    const char **vals;
    size_t n, cap;
    bool has_q;
};

char *dns_site_name(const char *const *hosts, size_t n)
{
    /* Each valid name as its labels, top-level label first. */
    char **bufs = xcalloc(n, sizeof(*bufs));
    const char ***fields = xcalloc(n, sizeof(*fields));
    size_t *nfields = xcalloc(n, sizeof(*nfields));
    size_t maxc = 0;
    for (size_t i = 0; i < n; i++) {
        const char *h = hosts[i];
        size_t hlen = strlen(h);
        uint16_t port = 0;
        bool has_port = dns_split_port(h, &hlen, &port);
        char norm[DNS_MAX_NAME + 2];
        if (hlen > DNS_MAX_NAME)
            continue;
        int nl = name_normalize(h, hlen, norm);
        if (nl < 0)
            continue;
        /* labels, with ":port" stuck to the last one */
        char portbuf[8] = "";
        if (has_port && nl > 0)
            snprintf(portbuf, sizeof(portbuf), ":%u", (unsigned)port);
        size_t nlen = strlen(norm);
        bufs[i] = xmalloc(nlen + strlen(portbuf) + 1);
        memcpy(bufs[i], norm, nlen + 1);
        strcat(bufs[i], portbuf);
        fields[i] = xcalloc((size_t)nl, sizeof(char *));
        nfields[i] = (size_t)nl;
        /* split in place, then reverse */
        size_t k = (size_t)nl;
        char *p = bufs[i];
        while (k > 0) {
            fields[i][--k] = p;
            char *dot = strchr(p, '.');
            if (!dot)
                break;
            *dot = '\0';
            p = dot + 1;
        }
        if ((size_t)nl > maxc)
            maxc = (size_t)nl;
    }

    struct column *cols = xcalloc(maxc, sizeof(*cols));
    for (size_t i = 0; i < n; i++) {
        if (!bufs[i])
            continue;
        for (size_t c = 0; c < maxc; c++) {
            struct column *col = &cols[c];
            if (c >= nfields[i]) {
                col->has_q = true;
                continue;
            }
            const char *f = fields[i][c];
            bool seen = false;
            for (size_t v = 0; v < col->n && !seen; v++)
                seen = strcmp(col->vals[v], f) == 0;
            if (seen)
                continue;
            if (col->n == col->cap) {
                col->cap = col->cap ? col->cap * 2 : 4;
                const char **nv = realloc(col->vals, col->cap * sizeof(*nv));
                if (!nv)
                    oom();
                col->vals = nv;
            }
            col->vals[col->n++] = f;
        }
    }

    struct sbuf out = {0};
    sbuf_add(&out, "", 0);
    for (size_t c = maxc; c-- > 0;) {
        struct column *col = &cols[c];
        if (c != maxc - 1)
            sbuf_str(&out, ".");
        if (col->n == 1) {
            sbuf_str(&out, col->vals[0]);
        } else {
            sbuf_str(&out, "(");
            for (size_t v = 0; v < col->n; v++) {
                if (v)
                    sbuf_str(&out, "|");
                sbuf_str(&out, col->vals[v]);
            }
            sbuf_str(&out, ")");
        }
        if (col->has_q)
            sbuf_str(&out, "?");
    }

    for (size_t c = 0; c < maxc; c++)
        free(cols[c].vals);
    free(cols);
    for (size_t i = 0; i < n; i++) {
        free(bufs[i]);
        free(fields[i]);
    }
    free(bufs);
    free(fields);
    free(nfields);
    return out.s;
}

/* Rust's Debug form of a Duration ("1.5ms", "2.000123s", "830ns"), which
 * is how KumoMTA reports how long a failed MX lookup took. */
static void fmt_elapsed(int64_t ns, char *buf, size_t len)
{
    if (ns < 0)
        ns = 0;
    uint64_t secs = (uint64_t)ns / 1000000000u, nanos = (uint64_t)ns % 1000000000u;
    uint64_t integer, frac, div;
    const char *unit;
    if (secs > 0) {
        integer = secs, frac = nanos, div = 100000000u, unit = "s";
    } else if (nanos >= 1000000u) {
        integer = nanos / 1000000u, frac = nanos % 1000000u, div = 100000u, unit = "ms";
    } else if (nanos >= 1000u) {
        integer = nanos / 1000u, frac = nanos % 1000u, div = 100u, unit = "\xc2\xb5s";
    } else {
        integer = nanos, frac = 0, div = 1, unit = "ns";
    }
    char digits[12];
    size_t nd = 0;
    while (frac > 0 && div > 0 && nd < sizeof(digits)) {
        digits[nd++] = (char)('0' + frac / div);
        frac %= div;
        div /= 10;
    }
    snprintf(buf, len, "%llu%s%.*s%s", (unsigned long long)integer, nd ? "." : "", (int)nd, digits,
             unit);
}

/* ---- shared result objects ------------------------------------------------ */

/* Results are reference counted: the cache holds one, every delivery one. */
struct cobj {
    atomic_int refs;
    void (*free_fn)(struct cobj *o);
};

static struct cobj *cobj_ref(struct cobj *o)
{
    atomic_fetch_add_explicit(&o->refs, 1, memory_order_relaxed);
    return o;
}

static void cobj_unref(struct cobj *o)
{
    if (o && atomic_fetch_sub_explicit(&o->refs, 1, memory_order_acq_rel) == 1)
        o->free_fn(o);
}

struct mx_obj {
    struct cobj hdr; /* first: a struct cobj * is a struct mx_obj * */
    dns_mx pub;
    dns_mx_host *hosts;
    char *error, *domain_name, *site_name;
};

static void mx_obj_free(struct cobj *o)
{
    struct mx_obj *m = (struct mx_obj *)o;
    for (size_t i = 0; i < m->pub.n_hosts; i++)
        free((char *)m->hosts[i].name);
    free(m->hosts);
    free(m->error);
    free(m->domain_name);
    free(m->site_name);
    free(m);
}

/* Takes error and domain_name. */
static struct mx_obj *mx_obj_new(int status, char *error, char *domain_name)
{
    struct mx_obj *m = xcalloc(1, sizeof(*m));
    atomic_init(&m->hdr.refs, 1);
    m->hdr.free_fn = mx_obj_free;
    m->error = error;
    m->domain_name = domain_name;
    m->site_name = xstrdup("");
    m->pub.status = status;
    m->pub.error = error;
    m->pub.domain_name = domain_name;
    m->pub.site_name = m->site_name;
    return m;
}

/* Takes names (each malloc'd) into the result, sorted by preference then name. */
struct host_pref {
    char *name;
    uint16_t pref;
};

static int host_pref_cmp(const void *a, const void *b)
{
    const struct host_pref *x = a, *y = b;
    if (x->pref != y->pref)
        return x->pref < y->pref ? -1 : 1;
    return strcmp(x->name, y->name);
}

static void mx_obj_set_hosts(struct mx_obj *m, struct host_pref *hp, size_t n, uint16_t port)
{
    qsort(hp, n, sizeof(*hp), host_pref_cmp);
    m->hosts = xcalloc(n, sizeof(*m->hosts));
    const char **names = xcalloc(n, sizeof(*names));
    for (size_t i = 0; i < n; i++) {
        if (strcmp(hp[i].name, ".") == 0)
            m->pub.status = DNS_NULL_MX;
        char *name = hp[i].name;
        if (port) {
            name = xasprintf("%s:%u", hp[i].name, (unsigned)port);
            free(hp[i].name);
        }
        m->hosts[i].name = name;
        m->hosts[i].pref = hp[i].pref;
        names[i] = name;
    }
    m->pub.hosts = m->hosts;
    m->pub.n_hosts = n;
    m->pub.port = port;
    free(m->site_name);
    m->site_name = dns_site_name(names, n);
    if (!m->site_name)
        oom();
    m->pub.site_name = m->site_name;
    free(names);
}

const dns_mx *dns_mx_ref(const dns_mx *mx)
{
    struct mx_obj *m = (struct mx_obj *)((char *)mx - offsetof(struct mx_obj, pub));
    cobj_ref(&m->hdr);
    return mx;
}

void dns_mx_unref(const dns_mx *mx)
{
    if (!mx)
        return;
    struct mx_obj *m = (struct mx_obj *)((char *)mx - offsetof(struct mx_obj, pub));
    cobj_unref(&m->hdr);
}

/* The answer for one address family of one name. */
struct fam_obj {
    struct cobj hdr;
    int family;
    int status; /* DNS_OK, DNS_NXDOMAIN, DNS_NO_RECORDS, DNS_FAIL */
    char *error;
    dns_addr *addrs;
    size_t n;
    uint32_t ttl;
    int64_t expires_ms;
};

static void fam_obj_free(struct cobj *o)
{
    struct fam_obj *f = (struct fam_obj *)o;
    free(f->error);
    free(f->addrs);
    free(f);
}

static struct fam_obj *fam_obj_new(int family, int status, char *error)
{
    struct fam_obj *f = xcalloc(1, sizeof(*f));
    atomic_init(&f->hdr.refs, 1);
    f->hdr.free_fn = fam_obj_free;
    f->family = family;
    f->status = status;
    f->error = error;
    return f;
}

static void fam_obj_add(struct fam_obj *f, int family, const void *raw)
{
    dns_addr *na = realloc(f->addrs, (f->n + 1) * sizeof(*na));
    if (!na)
        oom();
    f->addrs = na;
    dns_addr *a = &f->addrs[f->n++];
    memset(a, 0, sizeof(*a));
    a->family = family;
    if (family == AF_INET)
        memcpy(&a->u.v4, raw, sizeof(a->u.v4));
    else
        memcpy(&a->u.v6, raw, sizeof(a->u.v6));
    if (!inet_ntop(family, raw, a->text, sizeof(a->text)))
        snprintf(a->text, sizeof(a->text), "?");
}

/* The TXT answer of one name. */
struct txt_obj {
    struct cobj hdr;
    dns_txt pub;
    char **recs;
    size_t *lens;
    char *error, *name;
    int64_t expires_ms;
};

static void txt_obj_free(struct cobj *o)
{
    struct txt_obj *t = (struct txt_obj *)o;
    for (size_t i = 0; i < t->pub.n; i++)
        free(t->recs[i]);
    free(t->recs);
    free(t->lens);
    free(t->error);
    free(t->name);
    free(t);
}

/* Takes error. */
static struct txt_obj *txt_obj_new(int status, char *error, const char *name)
{
    struct txt_obj *t = xcalloc(1, sizeof(*t));
    atomic_init(&t->hdr.refs, 1);
    t->hdr.free_fn = txt_obj_free;
    t->error = error;
    t->name = xstrdup(name);
    t->pub.status = status;
    t->pub.error = error;
    t->pub.name = t->name;
    return t;
}

/* Appends n bytes to record idx (== t->pub.n starts a new record). */
static void txt_obj_add(struct txt_obj *t, size_t idx, const void *p, size_t n)
{
    if (idx == t->pub.n) {
        char **nr = realloc(t->recs, (idx + 1) * sizeof(*nr));
        if (!nr)
            oom();
        t->recs = nr;
        size_t *nl = realloc(t->lens, (idx + 1) * sizeof(*nl));
        if (!nl)
            oom();
        t->lens = nl;
        t->recs[idx] = xcalloc(1, 1);
        t->lens[idx] = 0;
        t->pub.n++;
    }
    char *r = realloc(t->recs[idx], t->lens[idx] + n + 1);
    if (!r)
        oom();
    memcpy(r + t->lens[idx], p, n);
    t->lens[idx] += n;
    r[t->lens[idx]] = 0;
    t->recs[idx] = r;
    t->pub.records = (const char *const *)t->recs;
    t->pub.lens = t->lens;
}

/* ---- process-wide state ----------------------------------------------------- */

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

static void testres_put(struct testres *t)
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
    testres_put(old);
}

/* kumo.dns.define_resolver: named resolvers. Each definition is an
 * immutable configuration shared by reference: a lookup holds it from its
 * start to its answer, and redefining a name publishes a new one (with a
 * new id, so that cache entries, flights and channels of the old one are
 * never mixed with it). A Test definition answers from its zones alone. */
struct rcfg {
    atomic_int refs;
    unsigned id;
    char *name;
    char *servers_csv; /* NULL: the system configuration */
    int timeout_ms, attempts, flags, bind_family;
    unsigned char bind_addr[16];
    bool use_hosts;
    zone_set *zs; /* a Test resolver's zones, or NULL */
};
static struct {
    pthread_mutex_t lock;
    struct rcfg **v;
    size_t n;
} named = {PTHREAD_MUTEX_INITIALIZER, NULL, 0};
static atomic_uint rcfg_ids = 1;

static void rcfg_put(struct rcfg *rc)
{
    if (rc && atomic_fetch_sub(&rc->refs, 1) == 1) {
        free(rc->name);
        free(rc->servers_csv);
        zone_set_free(rc->zs);
        free(rc);
    }
}

/* The named resolver's current definition (a reference), or NULL. */
static struct rcfg *rcfg_get(const char *name)
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
 * the test resolver's), or NULL; *hold is released with testres_put. */
static const zone_set *zones_get(const struct rcfg *rc, struct testres **hold)
{
    *hold = NULL;
    if (rc)
        return rc->zs;
    *hold = testres_get();
    return *hold ? (*hold)->zs : NULL;
}

/* Cache and flight keys of a named resolver start with "@ID ". */
static void key_prefix(const struct rcfg *rc, char *buf, size_t len)
{
    if (rc)
        snprintf(buf, len, "@%u ", rc->id);
    else
        buf[0] = '\0';
}

static atomic_llong mx_timeout_ms = 5000;
static atomic_llong mx_neg_ttl_ms = 300000;
static atomic_size_t mx_limit = 128;

static pthread_once_t ares_once = PTHREAD_ONCE_INIT;
static int ares_init_status = ARES_ENOTINITIALIZED;

static void ares_init_once(void)
{
    ares_init_status = ares_library_init(ARES_LIB_INIT_ALL);
}

void dns_set_mx_timeout_ms(int64_t ms)
{
    atomic_store(&mx_timeout_ms, ms > 0 ? ms : 1);
}

void dns_set_mx_negative_ttl_ms(int64_t ms)
{
    atomic_store(&mx_neg_ttl_ms, ms > 0 ? ms : 0);
}

void dns_set_mx_concurrency_limit(size_t n)
{
    atomic_store(&mx_limit, n > 0 ? n : 1);
}

/* ---- hash tables ------------------------------------------------------------- */

struct hnode {
    struct hnode *next;
    uint64_t h;
    const char *key;
};

struct htab {
    struct hnode **b;
    size_t nb, n;
};

static uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ULL;
    }
    return h;
}

static struct hnode **htab_slot(struct htab *t, const char *key, uint64_t h)
{
    if (!t->nb)
        return NULL;
    struct hnode **pp = &t->b[h & (t->nb - 1)];
    for (; *pp; pp = &(*pp)->next)
        if ((*pp)->h == h && strcmp((*pp)->key, key) == 0)
            return pp;
    return NULL;
}

static void htab_insert(struct htab *t, struct hnode *n)
{
    if (t->n + 1 > t->nb) {
        size_t nb = t->nb ? t->nb * 2 : 64;
        struct hnode **b = xcalloc(nb, sizeof(*b));
        for (size_t i = 0; i < t->nb; i++) {
            struct hnode *e = t->b[i];
            while (e) {
                struct hnode *next = e->next;
                e->next = b[e->h & (nb - 1)];
                b[e->h & (nb - 1)] = e;
                e = next;
            }
        }
        free(t->b);
        t->b = b;
        t->nb = nb;
    }
    struct hnode **head = &t->b[n->h & (t->nb - 1)];
    n->next = *head;
    *head = n;
    t->n++;
}

static void htab_unlink(struct htab *t, struct hnode **pp)
{
    *pp = (*pp)->next;
    t->n--;
}

static void htab_remove(struct htab *t, struct hnode *n)
{
    if (!t->nb)
        return;
    for (struct hnode **pp = &t->b[n->h & (t->nb - 1)]; *pp; pp = &(*pp)->next)
        if (*pp == n) {
            htab_unlink(t, pp);
            return;
        }
}

/* ---- the cache ------------------------------------------------------------------ */

struct centry {
    struct hnode hn;
    char *key;
    struct cobj *obj;
    int64_t expires_ms;
};

static struct {
    pthread_mutex_t lock;
    struct htab t;
} cache = {PTHREAD_MUTEX_INITIALIZER, {NULL, 0, 0}};

static void centry_free(struct centry *e)
{
    cobj_unref(e->obj);
    free(e->key);
    free(e);
}

/* Returns a new reference to the unexpired answer under key, or NULL. */
static struct cobj *cache_get(const char *key)
{
    uint64_t h = hash_str(key);
    struct cobj *obj = NULL;
    pthread_mutex_lock(&cache.lock);
    struct hnode **pp = htab_slot(&cache.t, key, h);
    if (pp) {
        struct centry *e = (struct centry *)*pp;
        if (e->expires_ms > clock_mono_ms()) {
            obj = cobj_ref(e->obj);
        } else {
            htab_unlink(&cache.t, pp);
            centry_free(e);
        }
    }
    pthread_mutex_unlock(&cache.lock);
    return obj;
}

/* Drops expired entries; when that is not enough, everything in the bucket
 * key hashes to (a crude but bounded eviction). Called with the lock held. */
static void cache_make_room(uint64_t h)
{
    int64_t now = clock_mono_ms();
    for (size_t i = 0; i < cache.t.nb; i++) {
        struct hnode **pp = &cache.t.b[i];
        while (*pp) {
            struct centry *e = (struct centry *)*pp;
            if (e->expires_ms <= now) {
                htab_unlink(&cache.t, pp);
                centry_free(e);
            } else {
                pp = &(*pp)->next;
            }
        }
    }
    if (cache.t.n < DNS_CACHE_MAX)
        return;
    struct hnode **pp = &cache.t.b[h & (cache.t.nb - 1)];
    while (*pp) {
        struct centry *e = (struct centry *)*pp;
        htab_unlink(&cache.t, pp);
        centry_free(e);
    }
}

/* Stores a new reference to obj under key until expires_ms. */
static void cache_put(const char *key, struct cobj *obj, int64_t expires_ms)
{
    uint64_t h = hash_str(key);
    pthread_mutex_lock(&cache.lock);
    struct hnode **pp = htab_slot(&cache.t, key, h);
    if (pp) {
        struct centry *e = (struct centry *)*pp;
        cobj_unref(e->obj);
        e->obj = cobj_ref(obj);
        e->expires_ms = expires_ms;
    } else {
        if (cache.t.n >= DNS_CACHE_MAX)
            cache_make_room(h);
        struct centry *e = xcalloc(1, sizeof(*e));
        e->key = xstrdup(key);
        e->hn.key = e->key;
        e->hn.h = h;
        e->obj = cobj_ref(obj);
        e->expires_ms = expires_ms;
        htab_insert(&cache.t, &e->hn);
    }
    pthread_mutex_unlock(&cache.lock);
}

void dns_cache_clear(void)
{
    pthread_mutex_lock(&cache.lock);
    for (size_t i = 0; i < cache.t.nb; i++) {
        struct hnode *n = cache.t.b[i];
        while (n) {
            struct hnode *next = n->next;
            centry_free((struct centry *)n);
            n = next;
        }
        cache.t.b[i] = NULL;
    }
    cache.t.n = 0;
    pthread_mutex_unlock(&cache.lock);
}

/* ---- per-reactor resolver ------------------------------------------------------- */

struct resolver;
struct chan;

/* A named resolver's channel on one reactor. */
struct nchan {
    struct nchan *next;
    unsigned id;
    char *name;
    struct chan *ch;
};

/* One socket c-ares asked us to watch. */
struct sockev {
    struct sockev *next;
    struct chan *ch;
    ares_socket_t fd;
    struct event *ev;
};

/* One c-ares channel, for one configuration generation. */
struct chan {
    struct chan *next; /* retired list */
    struct resolver *res;
    ares_channel ares;
    unsigned gen;
    int pending; /* queries sent and not yet called back */
    bool retiring;
    struct sockev *socks;
    struct event *timer;
};

struct flight;

/* Lives from ares_query until c-ares calls back, even when the flight gave
 * up on it earlier (MX deadline): then f is NULL. */
struct qctx {
    struct flight *f;
    struct chan *ch;
};

struct addr_job;

enum { W_MX, W_FAM, W_JOB, W_TXT };
struct waiter {
    struct waiter *next;
    int kind;
    dns_mx_cb mx_cb;
    dns_txt_cb txt_cb;
    void *ud;
    void (*drop)(void *ud); /* for ud when the lookup is dropped unanswered */
    struct addr_job *job;
};

/* A query in flight shared by its waiters, or (not in the table) a finished
 * lookup waiting for delivery. */
struct flight {
    struct hnode hn;     /* in res->flights while in flight */
    struct flight *next; /* done list or MX wait queue */
    struct resolver *res;
    char *key;
    int qtype;
    char *qname;   /* lower case, no trailing dot */
    char *display; /* the name as first asked, for messages */
    uint16_t port;
    int64_t start_ns;
    struct qctx *q;
    struct event *deadline;
    struct waiter *waiters, **wtail;
    struct cobj *result;
    struct rcfg *rc; /* a named resolver (a reference), or NULL: the default */
    bool in_table, queued, counted;
};

/* An address lookup: one or two family answers combined per strategy. */
struct addr_job {
    struct addr_job *prev, *next; /* res->jobs */
    dns_addr_cb cb;
    void *ud;
    void (*drop)(void *ud); /* for ud when the lookup is dropped unanswered */
    int strategy;
    char *name;
    char *fq;
    char *error;            /* set for an invalid name */
    uint16_t port;          /* a literal's port */
    struct fam_obj *fam[2]; /* [0] A, [1] AAAA */
    int outstanding;
    struct rcfg *rc; /* a named resolver (a reference), or NULL */
};

struct resolver {
    reactor *r;
    struct event_base *base;
    struct chan *cur;
    struct chan *retired;
    struct htab flights;
    struct flight *done_head, *done_tail;
    struct flight *mxq_head, *mxq_tail; /* waiting for a concurrency slot */
    size_t mx_active;
    struct addr_job *jobs;
    struct event *deliver_ev;
    struct nchan *named; /* channels of named resolvers */
};

static void deliver_cb(evutil_socket_t fd, short what, void *arg);
static void flight_send(struct flight *f);
static void mx_deadline_cb(evutil_socket_t fd, short what, void *arg);

/* Keeps the channel's timer at c-ares' next timeout, or off when idle. */
static void chan_update_timer(struct chan *ch)
{
    struct timeval tv, *tvp = ares_timeout(ch->ares, NULL, &tv);
    if (!tvp) {
        evtimer_del(ch->timer);
        return;
    }
    if (evtimer_add(ch->timer, tvp) != 0)
        DERROR(DNS_MOD, "reactor=%d cannot arm the DNS timer", reactor_index(ch->res->r));
}

static void sock_cb(evutil_socket_t fd, short what, void *arg)
{
    struct sockev *s = arg;
    struct chan *ch = s->ch;
    /* s may be freed inside ares_process_fd (socket closed): not touched after */
    ares_process_fd(ch->ares, (what & EV_READ) ? (ares_socket_t)fd : ARES_SOCKET_BAD,
                    (what & EV_WRITE) ? (ares_socket_t)fd : ARES_SOCKET_BAD);
    chan_update_timer(ch);
}

static void chan_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct chan *ch = arg;
    ares_process_fd(ch->ares, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
    chan_update_timer(ch);
}

static void sock_state_cb(void *data, ares_socket_t fd, int readable, int writable)
{
    struct chan *ch = data;
    struct sockev **pp = &ch->socks;
    while (*pp && (*pp)->fd != fd)
        pp = &(*pp)->next;
    struct sockev *s = *pp;
    if (s) {
        event_free(s->ev);
        s->ev = NULL;
    }
    if (!readable && !writable) {
        if (s) {
            *pp = s->next;
            free(s);
        }
        return;
    }
    if (!s) {
        s = xcalloc(1, sizeof(*s));
        s->ch = ch;
        s->fd = fd;
        s->next = ch->socks;
        ch->socks = s;
    }
    short what = (short)(EV_PERSIST | (readable ? EV_READ : 0) | (writable ? EV_WRITE : 0));
    s->ev = event_new(ch->res->base, (evutil_socket_t)fd, what, sock_cb, s);
    if (!s->ev || event_add(s->ev, NULL) != 0)
        /* the query on this socket will time out */
        DERROR(DNS_MOD, "reactor=%d cannot watch DNS socket fd=%d", reactor_index(ch->res->r),
               (int)fd);
}

static void chan_free(struct chan *ch)
{
    if (!ch)
        return;
    if (ch->ares)
        ares_destroy(ch->ares); /* closes its sockets through sock_state_cb */
    while (ch->socks) {
        struct sockev *s = ch->socks;
        ch->socks = s->next;
        if (s->ev)
            event_free(s->ev);
        free(s);
    }
    if (ch->timer)
        event_free(ch->timer);
    free(ch);
}

static struct chan *chan_new(struct resolver *res, const struct rcfg *rc, char *err,
                             size_t errlen)
{
    struct chan *ch = xcalloc(1, sizeof(*ch));
    ch->res = res;
    ch->timer = evtimer_new(res->base, chan_timer_cb, ch);
    if (!ch->timer) {
        snprintf(err, errlen, "cannot create the DNS timer");
        free(ch);
        return NULL;
    }

    struct ares_options o;
    memset(&o, 0, sizeof(o));
    char *csv;
    int bind_family;
    unsigned char bind_addr[16];
    if (rc) {
        ch->gen = rc->id;
        csv = rc->servers_csv ? xstrdup(rc->servers_csv) : NULL;
        o.flags = rc->flags;
        o.timeout = rc->timeout_ms;
        o.tries = rc->attempts;
        bind_family = rc->bind_family;
        memcpy(bind_addr, rc->bind_addr, sizeof(bind_addr));
    } else {
        pthread_mutex_lock(&cfg.lock);
        ch->gen = atomic_load(&cfg_gen);
        csv = cfg.servers_csv ? xstrdup(cfg.servers_csv) : NULL;
        o.flags = cfg.flags;
        o.timeout = cfg.timeout_ms;
        o.tries = cfg.attempts;
        bind_family = cfg.bind_family;
        memcpy(bind_addr, cfg.bind_addr, sizeof(bind_addr));
        pthread_mutex_unlock(&cfg.lock);
    }

    o.sock_state_cb = sock_state_cb;
    o.sock_state_cb_data = ch;
    int mask = ARES_OPT_FLAGS | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES | ARES_OPT_SOCK_STATE_CB;
    int arc = ares_init_options(&ch->ares, &o, mask);
    if (arc != ARES_SUCCESS) {
        snprintf(err, errlen, "cannot initialise the DNS resolver: %s", ares_strerror(arc));
        ch->ares = NULL;
        goto fail;
    }
    if (csv) {
        arc = ares_set_servers_ports_csv(ch->ares, csv);
        if (arc != ARES_SUCCESS) {
            snprintf(err, errlen, "cannot use DNS servers %s: %s", csv, ares_strerror(arc));
            goto fail;
        }
    }
    if (bind_family == AF_INET) {
        uint32_t v4;
        memcpy(&v4, bind_addr, 4);
        ares_set_local_ip4(ch->ares, ntohl(v4));
    } else if (bind_family == AF_INET6) {
        ares_set_local_ip6(ch->ares, bind_addr);
    }
    DDEBUG(DNS_MOD, "reactor=%d new DNS channel gen=%u servers=%s", reactor_index(res->r), ch->gen,
           csv ? csv : "(system)");
    free(csv);
    return ch;
fail:
    DERROR(DNS_MOD, "reactor=%d %s", reactor_index(res->r), err);
    free(csv);
    chan_free(ch);
    return NULL;
}

/* A channel no longer used for new queries: freed once its queries are
 * done, never here (we may be inside one of its callbacks). */
static void chan_retire(struct resolver *res, struct chan *ch)
{
    ch->retiring = true;
    ch->next = res->retired;
    res->retired = ch;
    event_active(res->deliver_ev, EV_READ, 0);
}

/* The channel for the current configuration, opened on first use or after a
 * change; the old one is retired and freed once its queries are done. */
static struct chan *res_channel(struct resolver *res, char *err, size_t errlen)
{
    unsigned gen = atomic_load(&cfg_gen);
    if (res->cur && res->cur->gen == gen)
        return res->cur;
    if (res->cur) {
        chan_retire(res, res->cur);
        res->cur = NULL;
    }
    res->cur = chan_new(res, NULL, err, errlen);
    return res->cur;
}

/* The channel of named resolver rc on this reactor, opened on first use;
 * channels of an earlier definition of the same name are retired. */
static struct chan *named_channel(struct resolver *res, const struct rcfg *rc, char *err,
                                  size_t errlen)
{
    struct chan *found = NULL;
    for (struct nchan **pp = &res->named; *pp;) {
        struct nchan *nc = *pp;
        if (nc->id == rc->id) {
            found = nc->ch;
        } else if (strcmp(nc->name, rc->name) == 0) {
            chan_retire(res, nc->ch);
            *pp = nc->next;
            free(nc->name);
            free(nc);
            continue;
        }
        pp = &nc->next;
    }
    if (found)
        return found;
    struct chan *ch = chan_new(res, rc, err, errlen);
    if (!ch)
        return NULL;
    struct nchan *nc = xcalloc(1, sizeof(*nc));
    nc->id = rc->id;
    nc->name = xstrdup(rc->name);
    nc->ch = ch;
    nc->next = res->named;
    res->named = nc;
    return ch;
}

static void reap_channels(struct resolver *res)
{
    struct chan **pp = &res->retired;
    while (*pp) {
        struct chan *ch = *pp;
        if (ch->pending == 0) {
            *pp = ch->next;
            DDEBUG(DNS_MOD, "reactor=%d DNS channel gen=%u retired", reactor_index(res->r),
                   ch->gen);
            chan_free(ch);
        } else {
            pp = &ch->next;
        }
    }
}

static struct resolver *resolver_get(reactor *r)
{
    struct resolver *res = reactor_get_slot(r, REACTOR_SLOT_DNS);
    if (res)
        return res;
    pthread_once(&ares_once, ares_init_once);
    if (ares_init_status != ARES_SUCCESS) {
        DERROR(DNS_MOD, "c-ares library init failed: %s", ares_strerror(ares_init_status));
        return NULL;
    }
    res = xcalloc(1, sizeof(*res));
    res->r = r;
    res->base = reactor_base(r);
    res->deliver_ev = event_new(res->base, -1, 0, deliver_cb, res);
    if (!res->deliver_ev) {
        free(res);
        return NULL;
    }
    reactor_set_slot(r, REACTOR_SLOT_DNS, res);
    return res;
}

/* ---- flights ------------------------------------------------------------------- */

static void flight_free(struct flight *f)
{
    while (f->waiters) {
        /* still here: never answered (dns_reactor_free at shutdown) */
        struct waiter *w = f->waiters;
        f->waiters = w->next;
        if (w->drop)
            w->drop(w->ud);
        free(w);
    }
    if (f->deadline)
        event_free(f->deadline);
    cobj_unref(f->result);
    rcfg_put(f->rc);
    free(f->key);
    free(f->qname);
    free(f->display);
    free(f);
}

static struct waiter *waiter_new(int kind)
{
    struct waiter *w = xcalloc(1, sizeof(*w));
    w->kind = kind;
    return w;
}

static void flight_add_waiter(struct flight *f, struct waiter *w)
{
    w->next = NULL;
    *f->wtail = w;
    f->wtail = &w->next;
}

static struct flight *flight_alloc(struct resolver *res)
{
    struct flight *f = xcalloc(1, sizeof(*f));
    f->res = res;
    f->wtail = &f->waiters;
    return f;
}

static void done_push(struct resolver *res, struct flight *f)
{
    f->next = NULL;
    if (res->done_tail)
        res->done_tail->next = f;
    else
        res->done_head = f;
    res->done_tail = f;
    event_active(res->deliver_ev, EV_READ, 0);
}

/* Delivers obj (taken) to one waiter on the next turn of the loop. */
static void post_ready(struct resolver *res, struct waiter *w, struct cobj *obj)
{
    struct flight *f = flight_alloc(res);
    f->result = obj;
    flight_add_waiter(f, w);
    done_push(res, f);
}

static void mxq_remove(struct resolver *res, struct flight *f)
{
    struct flight **pp = &res->mxq_head, *prev = NULL;
    while (*pp && *pp != f) {
        prev = *pp;
        pp = &(*pp)->next;
    }
    if (!*pp)
        return;
    *pp = f->next;
    if (res->mxq_tail == f)
        res->mxq_tail = prev;
    f->next = NULL;
}

static int64_t neg_ttl_ms(void)
{
    return atomic_load(&mx_neg_ttl_ms);
}

/* The flight has its answer (obj, taken): cache it, leave the table, and
 * queue it for delivery. */
static void flight_complete(struct flight *f, struct cobj *obj)
{
    struct resolver *res = f->res;
    if (f->in_table) {
        htab_remove(&res->flights, &f->hn);
        f->in_table = false;
    }
    if (f->deadline) {
        event_free(f->deadline);
        f->deadline = NULL;
    }
    if (f->counted) {
        res->mx_active--;
        f->counted = false;
        event_active(res->deliver_ev, EV_READ, 0); /* may start a queued MX query */
    }
    if (f->q) { /* given up before c-ares answered: the answer will be dropped */
        f->q->f = NULL;
        f->q = NULL;
    }
    if (f->queued) {
        mxq_remove(res, f);
        f->queued = false;
    }

    int64_t now = clock_mono_ms();
    if (f->qtype == T_TXT || f->qtype == T_PTR) {
        struct txt_obj *t = (struct txt_obj *)obj;
        t->expires_ms = now + (int64_t)t->pub.ttl * 1000;
        if (t->pub.status != DNS_FAIL && t->pub.ttl > 0)
            cache_put(f->key, obj, t->expires_ms);
    } else if (f->qtype == T_MX) {
        struct mx_obj *m = (struct mx_obj *)obj;
        int64_t until;
        if (m->pub.status == DNS_OK || m->pub.status == DNS_NULL_MX) {
            int64_t ms = (int64_t)m->pub.ttl * 1000;
            until = now + (ms > 0 ? ms : DNS_MX_MIN_CACHE_MS);
        } else {
            until = now + neg_ttl_ms();
        }
        m->pub.expires_ms = until;
        if (until > now)
            cache_put(f->key, obj, until);
    } else {
        struct fam_obj *fo = (struct fam_obj *)obj;
        fo->expires_ms = now + (int64_t)fo->ttl * 1000;
        if (fo->status != DNS_FAIL && fo->ttl > 0)
            cache_put(f->key, obj, fo->expires_ms);
    }
    f->result = obj;
    done_push(res, f);
}

/* Joins the query for key, starting it when nobody has. Takes w. */
static void flight_join(struct resolver *res, struct rcfg *rc, const char *key, int qtype,
                        const char *qname, const char *display, uint16_t port, struct waiter *w)
{
    uint64_t h = hash_str(key);
    struct hnode **pp = htab_slot(&res->flights, key, h);
    if (pp) {
        flight_add_waiter((struct flight *)*pp, w);
        return;
    }
    struct flight *f = flight_alloc(res);
    f->key = xstrdup(key);
    f->hn.key = f->key;
    f->hn.h = h;
    f->qtype = qtype;
    f->qname = xstrdup(qname);
    f->display = xstrdup(display);
    f->port = port;
    f->start_ns = clock_mono_ns();
    if (rc) {
        atomic_fetch_add(&rc->refs, 1);
        f->rc = rc;
    }
    flight_add_waiter(f, w);
    htab_insert(&res->flights, &f->hn);
    f->in_table = true;

    if (qtype == T_MX) {
        int64_t ms = atomic_load(&mx_timeout_ms);
        f->deadline = evtimer_new(res->base, mx_deadline_cb, f);
        struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000)};
        if (!f->deadline || evtimer_add(f->deadline, &tv) != 0)
            DERROR(DNS_MOD, "reactor=%d cannot arm the MX deadline for %s", reactor_index(res->r),
                   display);
        if (res->mx_active >= atomic_load(&mx_limit)) {
            f->queued = true;
            f->next = NULL;
            if (res->mxq_tail)
                res->mxq_tail->next = f;
            else
                res->mxq_head = f;
            res->mxq_tail = f;
            return;
        }
    }
    flight_send(f);
}

static void start_queued_mx(struct resolver *res)
{
    while (res->mxq_head && res->mx_active < atomic_load(&mx_limit)) {
        struct flight *f = res->mxq_head;
        res->mxq_head = f->next;
        if (!res->mxq_head)
            res->mxq_tail = NULL;
        f->next = NULL;
        f->queued = false;
        flight_send(f);
    }
}

static struct cobj *mx_from_answer(struct flight *f, int status, const unsigned char *abuf,
                                   int alen);
static struct cobj *fam_from_answer(struct flight *f, int status, const unsigned char *abuf,
                                    int alen);
static struct cobj *txt_from_answer(struct flight *f, int status, const unsigned char *abuf,
                                    int alen);
static struct cobj *ptr_from_answer(struct flight *f, int status, const unsigned char *abuf,
                                    int alen);
static struct cobj *fail_obj(struct flight *f, const char *why);

static void on_answer(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
    struct qctx *q = arg;
    struct chan *ch = q->ch;
    struct flight *f = q->f;
    free(q);
    ch->pending--;
    if (ch->retiring && ch->pending == 0)
        event_active(ch->res->deliver_ev, EV_READ, 0);
    if (!f)
        return;
    f->q = NULL;
    if (status == ARES_EDESTRUCTION) /* the resolver is being freed with the flight */
        return;
    struct cobj *obj = f->qtype == T_MX    ? mx_from_answer(f, status, abuf, alen)
                       : f->qtype == T_TXT ? txt_from_answer(f, status, abuf, alen)
                       : f->qtype == T_PTR ? ptr_from_answer(f, status, abuf, alen)
                                           : fam_from_answer(f, status, abuf, alen);
    flight_complete(f, obj);
}

static void flight_send(struct flight *f)
{
    struct resolver *res = f->res;
    char err[256];
    struct chan *ch =
        f->rc ? named_channel(res, f->rc, err, sizeof(err)) : res_channel(res, err, sizeof(err));
    if (!ch) {
        flight_complete(f, fail_obj(f, err));
        return;
    }
    struct qctx *q = xcalloc(1, sizeof(*q));
    q->f = f;
    q->ch = ch;
    f->q = q;
    ch->pending++;
    if (f->qtype == T_MX) {
        res->mx_active++;
        f->counted = true;
    }
    DTRACE(DNS_MOD, "reactor=%d query %s type=%d", reactor_index(res->r), f->qname, f->qtype);
    /* may call on_answer before returning (bad name, no servers) */
    ares_query(ch->ares, f->qname[0] ? f->qname : ".", C_IN, f->qtype, on_answer, q);
    chan_update_timer(ch);
}

/* ---- reading answers ----------------------------------------------------------- */

static uint16_t rd16(const unsigned char *p)
{
    return (uint16_t)((p[0] << 8) | p[1]);
}

static uint32_t rd32(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/* Skips an encoded name at p; returns its length in the message or -1. */
static long skip_name(const unsigned char *p, const unsigned char *abuf, int alen)
{
    char *s = NULL;
    long enclen = 0;
    int rc = ares_expand_name(p, abuf, alen, &s, &enclen);
    if (rc != ARES_SUCCESS)
        return -1;
    ares_free_string(s);
    return enclen;
}

/* Walks the answer and authority sections: the smallest TTL of the answer
 * records of type want, and the negative TTL an SOA in the authority section
 * gives (RFC 2308 §5: the smaller of its TTL and its MINIMUM). Returns 0 or
 * KERR_PARSE. */
static int scan_ttls(const unsigned char *abuf, int alen, int want, uint32_t *min_ttl,
                     bool *have_ttl, uint32_t *neg_ttl, bool *have_neg)
{
    *have_ttl = *have_neg = false;
    if (!abuf || alen < 12)
        return KERR_PARSE;
    const unsigned char *end = abuf + alen, *p = abuf + 12;
    unsigned qd = rd16(abuf + 4), an = rd16(abuf + 6), ns = rd16(abuf + 8);
    for (unsigned i = 0; i < qd; i++) {
        long n = skip_name(p, abuf, alen);
        if (n < 0 || p + n + 4 > end)
            return KERR_PARSE;
        p += n + 4;
    }
    for (unsigned i = 0; i < an + ns; i++) {
        long n = skip_name(p, abuf, alen);
        if (n < 0 || p + n + 10 > end)
            return KERR_PARSE;
        p += n;
        int type = rd16(p);
        uint32_t ttl = rd32(p + 4);
        if (ttl > 0x7fffffffu) /* RFC 2181 §8 */
            ttl = 0;
        uint16_t rdlen = rd16(p + 8);
        p += 10;
        if (p + rdlen > end)
            return KERR_PARSE;
        if (i < an && type == want) {
            if (!*have_ttl || ttl < *min_ttl)
                *min_ttl = ttl;
            *have_ttl = true;
        } else if (i >= an && type == T_SOA) {
            long m1 = skip_name(p, abuf, alen);
            long m2 = m1 < 0 ? -1 : skip_name(p + m1, abuf, alen);
            if (m2 >= 0 && m1 + m2 + 20 <= rdlen) {
                uint32_t minimum = rd32(p + m1 + m2 + 16);
                *neg_ttl = minimum < ttl ? minimum : ttl;
                *have_neg = true;
            }
        }
        p += rdlen;
    }
    return 0;
}

static uint32_t negative_ttl(const unsigned char *abuf, int alen)
{
    uint32_t t = 0, neg = 0;
    bool have_t, have_neg;
    if (scan_ttls(abuf, alen, -1, &t, &have_t, &neg, &have_neg) == 0 && have_neg)
        return neg;
    return DNS_DEFAULT_NEG_TTL_S;
}

static struct cobj *mx_fail_as(const char *display, const char *qname, int64_t start_ns, int status,
                               const char *why)
{
    char el[48];
    fmt_elapsed(clock_mono_ns() - start_ns, el, sizeof(el));
    char *msg = xasprintf("MX lookup for %s failed after %s: %s", display, el, why);
    char *dn = xasprintf("%s.", qname);
    return &mx_obj_new(status, msg, dn)->hdr;
}

static struct cobj *mx_fail(struct flight *f, int status, const char *why)
{
    return mx_fail_as(f->display, f->qname, f->start_ns, status, why);
}

static struct cobj *fail_obj(struct flight *f, const char *why)
{
    if (f->qtype == T_MX)
        return mx_fail(f, DNS_FAIL, why);
    if (f->qtype == T_TXT || f->qtype == T_PTR)
        return &txt_obj_new(DNS_FAIL,
                            xasprintf("failed to query DNS for %s (%s): %s", f->display,
                                      f->qtype == T_TXT ? "TXT" : "PTR", why),
                            f->display)
                    ->hdr;
    int family = f->qtype == T_A ? AF_INET : AF_INET6;
    char *msg = xasprintf("failed to query DNS for %s (%s): %s", f->display,
                          f->qtype == T_A ? "A" : "AAAA", why);
    return &fam_obj_new(family, DNS_FAIL, msg)->hdr;
}

static void mx_deadline_cb(evutil_socket_t fd, short what, void *arg)
{
    struct flight *f = arg;
    DDEBUG(DNS_MOD, "reactor=%d MX lookup for %s timed out", reactor_index(f->res->r), f->display);
    flight_complete(f, mx_fail(f, DNS_FAIL, "deadline has elapsed"));
}

/* No MX records: the domain is its own mail exchanger (RFC 5321 §5.1). */
static struct cobj *mx_implicit_as(const char *qname, uint16_t port, uint32_t ttl)
{
    struct mx_obj *m = mx_obj_new(DNS_OK, NULL, xasprintf("%s.", qname));
    struct host_pref hp = {xasprintf("%s.", qname), 1};
    mx_obj_set_hosts(m, &hp, 1, port);
    m->pub.is_mx = false;
    m->pub.ttl = ttl;
    return &m->hdr;
}

static struct cobj *mx_implicit(struct flight *f, uint32_t ttl)
{
    return mx_implicit_as(f->qname, f->port, ttl);
}

/* ---- answers without a name server ------------------------------------------------ */

/* RFC 6761 §6.3 and §6.4: "localhost" and its subdomains are the loopback
 * addresses and have no other records; "invalid" and its subdomains do not
 * exist. Answered without DNS, as hickory (KumoMTA's resolver) does. qname
 * is lower case without the root dot. */
static bool under(const char *qname, const char *tld)
{
    size_t n = strlen(qname), t = strlen(tld);
    return strcmp(qname, tld) == 0 ||
           (n > t && qname[n - t - 1] == '.' && strcmp(qname + n - t, tld) == 0);
}

/* The MX answer of the test resolver's zones. */
static struct cobj *mx_from_zones(const zone_set *zs, const char *qname, const char *display,
                                  uint16_t port, int64_t start_ns)
{
    zone_answer a;
    switch (zone_set_lookup(zs, qname, ZONE_MX, &a)) {
    case ZONE_NXDOMAIN:
        return mx_fail_as(display, qname, start_ns, DNS_NXDOMAIN, "NXDOMAIN");
    case ZONE_SERVFAIL:
        return mx_fail_as(display, qname, start_ns, DNS_FAIL, "SERVFAIL");
    case ZONE_BADNAME:
        return mx_fail_as(display, qname, start_ns, DNS_FAIL, "invalid domain name");
    }
    uint32_t ttl = UINT32_MAX;
    for (size_t i = 0; i < a.n; i++)
        if (a.rrs[i]->ttl < ttl)
            ttl = a.rrs[i]->ttl;
    if (a.n == 0) {
        struct cobj *o = mx_implicit_as(qname, port, 60);
        ((struct mx_obj *)o)->pub.is_secure = a.secure;
        return o;
    }
    struct host_pref *hp = xcalloc(a.n, sizeof(*hp));
    for (size_t i = 0; i < a.n; i++) {
        hp[i].name = xstrdup(a.rrs[i]->target);
        hp[i].pref = a.rrs[i]->pref;
    }
    struct mx_obj *m = mx_obj_new(DNS_OK, NULL, xasprintf("%s.", qname));
    mx_obj_set_hosts(m, hp, a.n, port);
    free(hp);
    m->pub.is_mx = true;
    m->pub.is_secure = a.secure;
    m->pub.ttl = ttl;
    return &m->hdr;
}

/* An A (idx 0) or AAAA (idx 1) answer that needs no query: from the test
 * resolver's zones when they are set (and then always), else from the hosts
 * file, else for RFC 6761 names; NULL: ask DNS. fq: lower case, no root
 * dot; display: the name as the caller gave it. */
static struct fam_obj *fam_static(const struct rcfg *rc, const char *fq, const char *display,
                                  int idx)
{
    int family = idx == 0 ? AF_INET : AF_INET6;
    struct testres *t;
    const zone_set *zs = zones_get(rc, &t);
    if (zs) {
        zone_answer a;
        struct fam_obj *fo;
        switch (zone_set_lookup(zs, fq, idx == 0 ? ZONE_A : ZONE_AAAA, &a)) {
        case ZONE_NXDOMAIN:
            fo = fam_obj_new(family, DNS_NXDOMAIN, NULL);
            break;
        case ZONE_NOERROR:
            fo = fam_obj_new(family, a.n ? DNS_OK : DNS_NO_RECORDS, NULL);
            fo->ttl = a.n ? UINT32_MAX : 60;
            for (size_t i = 0; i < a.n; i++) {
                fam_obj_add(fo, family, a.rrs[i]->addr);
                if (a.rrs[i]->ttl < fo->ttl)
                    fo->ttl = a.rrs[i]->ttl;
            }
            break;
        default:
            fo = fam_obj_new(family, DNS_FAIL,
                             xasprintf("failed to query DNS for %s (%s): %s", display,
                                       idx == 0 ? "A" : "AAAA",
                                       a.rcode == ZONE_SERVFAIL ? "SERVFAIL" : "invalid name"));
        }
        testres_put(t);
        return fo;
    }
    bool localhost = under(fq, "localhost");
    if (rc ? rc->use_hosts : atomic_load(&use_hosts)) {
        hosts_addr ha[DNS_MAX_ADDRS];
        int n = hosts_lookup(fq, family, ha, DNS_MAX_ADDRS);
        /* a name the file lists is answered by the file alone (a family it
         * lacks has no records) except that localhost keeps its loopback */
        if (n > 0 || (n == 0 && !localhost)) {
            struct fam_obj *fo = fam_obj_new(family, n > 0 ? DNS_OK : DNS_NO_RECORDS, NULL);
            for (int i = 0; i < n && i < DNS_MAX_ADDRS; i++)
                fam_obj_add(fo, family, ha[i].raw);
            return fo;
        }
    }
    if (localhost) {
        static const unsigned char v4[4] = {127, 0, 0, 1};
        static const unsigned char v6[16] = {[15] = 1};
        struct fam_obj *fo = fam_obj_new(family, DNS_OK, NULL);
        fam_obj_add(fo, family, idx == 0 ? v4 : v6);
        return fo;
    }
    if (under(fq, "invalid"))
        return fam_obj_new(family, DNS_NXDOMAIN, NULL);
    return NULL;
}

static struct cobj *mx_from_answer(struct flight *f, int status, const unsigned char *abuf,
                                   int alen)
{
    switch (status) {
    case ARES_SUCCESS:
        break;
    case ARES_ENODATA:
        return mx_implicit(f, negative_ttl(abuf, alen));
    case ARES_ENOTFOUND:
        return mx_fail(f, DNS_NXDOMAIN, "NXDOMAIN");
    default:
        return mx_fail(f, DNS_FAIL, ares_strerror(status));
    }

    struct ares_mx_reply *mx = NULL;
    int rc = ares_parse_mx_reply(abuf, alen, &mx);
    if (rc == ARES_ENODATA) /* e.g. only a CNAME whose target has no MX */
        return mx_implicit(f, negative_ttl(abuf, alen));
    if (rc != ARES_SUCCESS) {
        char why[128];
        snprintf(why, sizeof(why), "malformed answer: %s", ares_strerror(rc));
        return mx_fail(f, DNS_FAIL, why);
    }
    size_t n = 0;
    for (struct ares_mx_reply *r = mx; r; r = r->next)
        n++;
    struct host_pref *hp = xcalloc(n, sizeof(*hp));
    size_t i = 0;
    for (struct ares_mx_reply *r = mx; r; r = r->next, i++) {
        size_t len = strlen(r->host);
        char *name = xmalloc(len + 2);
        for (size_t k = 0; k < len; k++)
            name[k] = (char)tolower((unsigned char)r->host[k]);
        /* fully qualified, as KumoMTA shows it; the root ("" here) becomes "." */
        if (len == 0 || name[len - 1] != '.')
            name[len++] = '.';
        name[len] = '\0';
        hp[i].name = name;
        hp[i].pref = r->priority;
    }
    ares_free_data(mx);

    uint32_t ttl = 0, neg = 0;
    bool have_ttl = false, have_neg = false;
    if (scan_ttls(abuf, alen, T_MX, &ttl, &have_ttl, &neg, &have_neg) != 0 || !have_ttl)
        ttl = 0;
    struct mx_obj *m = mx_obj_new(DNS_OK, NULL, xasprintf("%s.", f->qname));
    mx_obj_set_hosts(m, hp, n, f->port);
    free(hp);
    m->pub.is_mx = true;
    m->pub.ttl = ttl;
    return &m->hdr;
}

static struct cobj *fam_from_answer(struct flight *f, int status, const unsigned char *abuf,
                                    int alen)
{
    int family = f->qtype == T_A ? AF_INET : AF_INET6;
    switch (status) {
    case ARES_SUCCESS:
        break;
    case ARES_ENODATA: {
        struct fam_obj *fo = fam_obj_new(family, DNS_NO_RECORDS, NULL);
        fo->ttl = negative_ttl(abuf, alen);
        return &fo->hdr;
    }
    case ARES_ENOTFOUND: {
        struct fam_obj *fo = fam_obj_new(family, DNS_NXDOMAIN, NULL);
        fo->ttl = negative_ttl(abuf, alen);
        return &fo->hdr;
    }
    default:
        return fail_obj(f, ares_strerror(status));
    }

    struct fam_obj *fo = fam_obj_new(family, DNS_OK, NULL);
    int n = DNS_MAX_ADDRS, rc;
    uint32_t ttl = UINT32_MAX;
    if (family == AF_INET) {
        struct ares_addrttl at[DNS_MAX_ADDRS];
        rc = ares_parse_a_reply(abuf, alen, NULL, at, &n);
        for (int i = 0; rc == ARES_SUCCESS && i < n; i++) {
            fam_obj_add(fo, AF_INET, &at[i].ipaddr);
            if ((uint32_t)(at[i].ttl < 0 ? 0 : at[i].ttl) < ttl)
                ttl = (uint32_t)(at[i].ttl < 0 ? 0 : at[i].ttl);
        }
    } else {
        struct ares_addr6ttl at[DNS_MAX_ADDRS];
        rc = ares_parse_aaaa_reply(abuf, alen, NULL, at, &n);
        for (int i = 0; rc == ARES_SUCCESS && i < n; i++) {
            fam_obj_add(fo, AF_INET6, &at[i].ip6addr);
            if ((uint32_t)(at[i].ttl < 0 ? 0 : at[i].ttl) < ttl)
                ttl = (uint32_t)(at[i].ttl < 0 ? 0 : at[i].ttl);
        }
    }
    if (rc == ARES_ENODATA || (rc == ARES_SUCCESS && fo->n == 0)) {
        /* only a CNAME (or other types) in the answer */
        fo->status = DNS_NO_RECORDS;
        fo->ttl = negative_ttl(abuf, alen);
        return &fo->hdr;
    }
    if (rc != ARES_SUCCESS) {
        cobj_unref(&fo->hdr);
        char why[128];
        snprintf(why, sizeof(why), "malformed answer: %s", ares_strerror(rc));
        return fail_obj(f, why);
    }
    fo->ttl = ttl;
    return &fo->hdr;
}

/* The answer of a TXT or PTR query that c-ares did not answer with
 * records (no data, no such name, or a failure), or NULL for
 * ARES_SUCCESS: the caller then parses the records. */
static struct cobj *list_from_status(struct flight *f, int status, const unsigned char *abuf,
                                     int alen)
{
    switch (status) {
    case ARES_SUCCESS:
        return NULL;
    case ARES_ENODATA:
    case ARES_ENOTFOUND: {
        struct txt_obj *t = txt_obj_new(status == ARES_ENODATA ? DNS_NO_RECORDS : DNS_NXDOMAIN,
                                        NULL, f->display);
        t->pub.ttl = negative_ttl(abuf, alen);
        return &t->hdr;
    }
    default:
        return fail_obj(f, ares_strerror(status));
    }
}

static struct cobj *txt_from_answer(struct flight *f, int status, const unsigned char *abuf,
                                    int alen)
{
    struct cobj *o = list_from_status(f, status, abuf, alen);
    if (o)
        return o;
    struct ares_txt_ext *txt = NULL;
    int rc = ares_parse_txt_reply_ext(abuf, alen, &txt);
    struct txt_obj *t = txt_obj_new(DNS_OK, NULL, f->display);
    if (rc == ARES_SUCCESS) {
        for (struct ares_txt_ext *r = txt; r; r = r->next) {
            if (r->record_start || t->pub.n == 0)
                txt_obj_add(t, t->pub.n, r->txt, r->length);
            else
                txt_obj_add(t, t->pub.n - 1, r->txt, r->length);
        }
        ares_free_data(txt);
    }
    if (rc == ARES_ENODATA || (rc == ARES_SUCCESS && t->pub.n == 0)) {
        t->pub.status = DNS_NO_RECORDS;
        t->pub.ttl = negative_ttl(abuf, alen);
        return &t->hdr;
    }
    if (rc != ARES_SUCCESS) {
        cobj_unref(&t->hdr);
        char why[128];
        snprintf(why, sizeof(why), "malformed answer: %s", ares_strerror(rc));
        return fail_obj(f, why);
    }
    uint32_t ttl = 0, neg = 0;
    bool have_ttl = false, have_neg = false;
    if (scan_ttls(abuf, alen, T_TXT, &ttl, &have_ttl, &neg, &have_neg) != 0 || !have_ttl)
        ttl = 0;
    t->pub.ttl = ttl;
    return &t->hdr;
}

/* The PTR records of an answer: the names they point to, fully qualified
 * with the root dot, as hickory prints them. */
static struct cobj *ptr_from_answer(struct flight *f, int status, const unsigned char *abuf,
                                    int alen)
{
    struct cobj *o = list_from_status(f, status, abuf, alen);
    if (o)
        return o;
    if (!abuf || alen < 12)
        return fail_obj(f, "malformed answer");
    struct txt_obj *t = txt_obj_new(DNS_OK, NULL, f->display);
    const unsigned char *end = abuf + alen, *p = abuf + 12;
    unsigned qd = rd16(abuf + 4), an = rd16(abuf + 6);
    uint32_t min_ttl = UINT32_MAX;
    bool bad = false;
    for (unsigned i = 0; i < qd && !bad; i++) {
        long n = skip_name(p, abuf, alen);
        if (n < 0 || p + n + 4 > end)
            bad = true;
        else
            p += n + 4;
    }
    for (unsigned i = 0; i < an && !bad; i++) {
        long n = skip_name(p, abuf, alen);
        if (n < 0 || p + n + 10 > end) {
            bad = true;
            break;
        }
        p += n;
        int type = rd16(p);
        uint32_t ttl = rd32(p + 4);
        uint16_t rdlen = rd16(p + 8);
        p += 10;
        if (p + rdlen > end) {
            bad = true;
            break;
        }
        if (type == T_PTR) {
            char *target = NULL;
            long enclen = 0;
            if (ares_expand_name(p, abuf, alen, &target, &enclen) != ARES_SUCCESS) {
                bad = true;
                break;
            }
            char *fq = xasprintf("%s.", target);
            ares_free_string(target);
            txt_obj_add(t, t->pub.n, fq, strlen(fq));
            free(fq);
            if (ttl > 0x7fffffffu)
                ttl = 0;
            if (ttl < min_ttl)
                min_ttl = ttl;
        }
        p += rdlen;
    }
    if (bad) {
        cobj_unref(&t->hdr);
        return fail_obj(f, "malformed answer");
    }
    if (t->pub.n == 0) {
        t->pub.status = DNS_NO_RECORDS;
        t->pub.ttl = negative_ttl(abuf, alen);
    } else {
        t->pub.ttl = min_ttl;
    }
    return &t->hdr;
}

/* The TXT (TXT and SPF records: type ZONE_TXT) or PTR (ZONE_PTR) answer
 * of the test resolver's zones: one record per RR, a TXT record's strings
 * joined, a PTR record its target; the TTL the smallest of the RRs'. */
static struct cobj *list_from_zones(const zone_set *zs, const char *qname, const char *display,
                                    uint16_t type)
{
    zone_answer a;
    switch (zone_set_lookup(zs, qname, type, &a)) {
    case ZONE_NXDOMAIN:
        return &txt_obj_new(DNS_NXDOMAIN, NULL, display)->hdr;
    case ZONE_SERVFAIL:
    case ZONE_BADNAME:
        return &txt_obj_new(DNS_FAIL,
                            xasprintf("failed to query DNS for %s (%s): %s", display,
                                      type == ZONE_TXT ? "TXT" : "PTR",
                                      a.rcode == ZONE_SERVFAIL ? "SERVFAIL" : "invalid name"),
                            display)
                    ->hdr;
    }
    struct txt_obj *t = txt_obj_new(a.n ? DNS_OK : DNS_NO_RECORDS, NULL, display);
    t->pub.ttl = a.n ? UINT32_MAX : 60;
    for (size_t i = 0; i < a.n; i++) {
        size_t idx = t->pub.n;
        if (type == ZONE_TXT) {
            txt_obj_add(t, idx, "", 0);
            for (size_t k = 0; k < a.rrs[i]->n_txt; k++)
                txt_obj_add(t, idx, a.rrs[i]->txt[k], strlen(a.rrs[i]->txt[k]));
        } else {
            txt_obj_add(t, idx, a.rrs[i]->target, strlen(a.rrs[i]->target));
        }
        if (a.rrs[i]->ttl < t->pub.ttl)
            t->pub.ttl = a.rrs[i]->ttl;
    }
    return &t->hdr;
}

/* ---- delivery -------------------------------------------------------------------- */

static void job_got(struct resolver *res, struct addr_job *job, struct fam_obj *fo);
static void job_finish(struct resolver *res, struct addr_job *job);

static void run_waiter(struct resolver *res, struct waiter *w, struct cobj *obj)
{
    switch (w->kind) {
    case W_MX: {
        struct mx_obj *m = (struct mx_obj *)obj;
        w->mx_cb(&m->pub, w->ud);
        break;
    }
    case W_FAM:
        job_got(res, w->job, (struct fam_obj *)obj);
        break;
    case W_JOB:
        job_finish(res, w->job);
        break;
    case W_TXT:
        w->txt_cb(&((struct txt_obj *)obj)->pub, w->ud);
        break;
    }
}

static void deliver_cb(evutil_socket_t fd, short what, void *arg)
{
    struct resolver *res = arg;
    reap_channels(res);
    start_queued_mx(res);
    while (res->done_head) {
        struct flight *list = res->done_head;
        res->done_head = res->done_tail = NULL;
        while (list) {
            struct flight *f = list;
            list = f->next;
            while (f->waiters) {
                struct waiter *w = f->waiters;
                f->waiters = w->next;
                run_waiter(res, w, f->result);
                free(w);
            }
            flight_free(f);
        }
    }
}

/* ---- domain literals -------------------------------------------------------------- */

/* Parses "[10.0.0.1]", "[IPv6:::1]", "[::1]" (non-conforming, accepted by
 * KumoMTA), optionally with ":port" inside or outside the brackets. Returns
 * 1 for a literal (family, raw, port filled), 0 for no literal, -1 for a
 * malformed one (err filled). */
static int parse_literal(const char *s, int *family, unsigned char raw[16], uint16_t *port,
                         char *err, size_t errlen)
{
    size_t len = strlen(s);
    uint16_t p = 0;
    bool has_port = dns_split_port(s, &len, &p);
    if (len == 0 || s[0] != '[')
        return 0;
    if (s[len - 1] != ']') {
        snprintf(err, errlen,
                 "domain_name `%.*s` is a malformed literal domain with no trailing `]`", (int)len,
                 s);
        return -1;
    }
    char lit[128];
    if (len - 2 >= sizeof(lit)) {
        snprintf(err, errlen, "invalid address: `%.*s`", (int)len, s);
        return -1;
    }
    for (size_t i = 0; i < len - 2; i++)
        lit[i] = (char)tolower((unsigned char)s[1 + i]);
    lit[len - 2] = '\0';
    size_t llen = strlen(lit);
    uint16_t p2;
    if (dns_split_port(lit, &llen, &p2)) {
        if (has_port) {
            snprintf(err, errlen,
                     "invalid address: `%.*s` specifies a port both inside and outside a "
                     "literal address enclosed in square brackets",
                     (int)len, s);
            return -1;
        }
        lit[llen] = '\0';
        p = p2;
        has_port = true;
    }
    const char *a = lit;
    if (strncmp(a, "ipv6:", 5) == 0) {
        if (inet_pton(AF_INET6, a + 5, raw) != 1) {
            snprintf(err, errlen, "invalid ipv6 address: `%s`", a + 5);
            return -1;
        }
        *family = AF_INET6;
    } else if (inet_pton(AF_INET, a, raw) == 1) {
        *family = AF_INET;
    } else if (inet_pton(AF_INET6, a, raw) == 1) {
        *family = AF_INET6;
    } else {
        snprintf(err, errlen, "invalid address: `%s`", a);
        return -1;
    }
    *port = has_port ? p : 0;
    return 1;
}

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
    *rc = rcfg_get(resolver);
    return *rc ? 0 : KERR_NOTFOUND;
}

/* What every lookup starts with: the named resolver's configuration (via)
 * and reactor r's resolver. 0, KERR_NOTFOUND or KERR_NOMEM (then nothing
 * is held). */
static int lookup_begin(reactor *r, const char *resolver, struct rcfg **rc,
                        struct resolver **res)
{
    if (via(resolver, rc) != 0)
        return KERR_NOTFOUND;
    *res = resolver_get(r);
    if (!*res) {
        rcfg_put(*rc);
        return KERR_NOMEM;
    }
    return 0;
}

int dns_lookup_mx_via(const char *resolver, const char *domain, dns_mx_cb cb, void *ud,
                      void (*drop)(void *ud))
{
    reactor *r = reactor_current();
    if (!r || !cb || !domain)
        return KERR_INVAL;
    struct rcfg *rc;
    struct resolver *res;
    int begun = lookup_begin(r, resolver, &rc, &res);
    if (begun != 0)
        return begun;
    int rv = mx_start(res, rc, domain, cb, ud, drop);
    rcfg_put(rc);
    return rv;
}

static int mx_start(struct resolver *res, struct rcfg *rc, const char *domain, dns_mx_cb cb,
                    void *ud, void (*drop)(void *ud))
{
    struct waiter *w = waiter_new(W_MX);
    w->mx_cb = cb;
    w->ud = ud;
    w->drop = drop;

    char err[256];
    int family;
    unsigned char raw[16];
    uint16_t port = 0;
    int lit = parse_literal(domain, &family, raw, &port, err, sizeof(err));
    if (lit != 0) {
        struct mx_obj *m;
        if (lit < 0) {
            m = mx_obj_new(DNS_FAIL, xstrdup(err), xstrdup(domain));
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
            m = mx_obj_new(DNS_OK, NULL, xstrdup(domain));
            /* the port is already in the address text */
            mx_obj_set_hosts(m, &hp, 1, 0);
            m->pub.port = port;
            /* KumoMTA: a literal's site is its address, not a factoring */
            free(m->site_name);
            m->site_name = xstrdup(m->hosts[0].name);
            m->pub.site_name = m->site_name;
            m->pub.is_domain_literal = true;
        }
        post_ready(res, w, &m->hdr);
        return 0;
    }

    size_t len = strlen(domain);
    if (!dns_split_port(domain, &len, &port))
        port = 0;
    char qname[DNS_MAX_NAME + 2];
    if (len > DNS_MAX_NAME || name_normalize(domain, len, qname) < 0) {
        struct mx_obj *m =
            mx_obj_new(DNS_FAIL, xasprintf("MX lookup for %s failed: invalid domain name", domain),
                       xstrdup(domain));
        post_ready(res, w, &m->hdr);
        return 0;
    }
    struct testres *t;
    const zone_set *zs = zones_get(rc, &t);
    if (zs) {
        post_ready(res, w, mx_from_zones(zs, qname, domain, port, clock_mono_ns()));
        testres_put(t);
        return 0;
    }
    if (under(qname, "localhost")) {
        post_ready(res, w, mx_implicit_as(qname, port, 0));
        return 0;
    }
    if (under(qname, "invalid")) {
        post_ready(res, w, mx_fail_as(domain, qname, clock_mono_ns(), DNS_NXDOMAIN, "NXDOMAIN"));
        return 0;
    }
    char key[DNS_MAX_NAME + 48], pfx[24];
    key_prefix(rc, pfx, sizeof(pfx));
    if (port)
        snprintf(key, sizeof(key), "%sMX %s:%u", pfx, qname, (unsigned)port);
    else
        snprintf(key, sizeof(key), "%sMX %s", pfx, qname);
    struct cobj *hit = cache_get(key);
    if (hit) {
        post_ready(res, w, hit);
        return 0;
    }
    flight_join(res, rc, key, T_MX, qname, domain, port, w);
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
    const zone_set *zs = zones_get(rc, &t);
    if (zs) {
        post_ready(res, w,
                   list_from_zones(zs, qname, display, qtype == T_TXT ? ZONE_TXT : ZONE_PTR));
        testres_put(t);
        return;
    }
    if (under(qname, "localhost") || under(qname, "invalid")) {
        post_ready(res, w,
                   &txt_obj_new(under(qname, "invalid") ? DNS_NXDOMAIN : DNS_NO_RECORDS, NULL,
                                display)
                        ->hdr);
        return;
    }
    char key[DNS_MAX_NAME + 48], pfx[24];
    key_prefix(rc, pfx, sizeof(pfx));
    snprintf(key, sizeof(key), "%s%s %s", pfx, qtype == T_TXT ? "TXT" : "PTR", qname);
    struct cobj *hit = cache_get(key);
    if (hit) {
        post_ready(res, w, hit);
        return;
    }
    flight_join(res, rc, key, qtype, qname, display, 0, w);
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
    reactor *r = reactor_current();
    if (!r || !cb || !name)
        return KERR_INVAL;
    struct rcfg *rc;
    struct resolver *res;
    int begun = lookup_begin(r, resolver, &rc, &res);
    if (begun != 0)
        return begun;
    txt_start(res, rc, name, cb, ud, drop);
    rcfg_put(rc);
    return 0;
}

static void txt_start(struct resolver *res, struct rcfg *rc, const char *name, dns_txt_cb cb,
                      void *ud, void (*drop)(void *ud))
{
    struct waiter *w = waiter_new(W_TXT);
    w->txt_cb = cb;
    w->ud = ud;
    w->drop = drop;
    size_t len = strlen(name);
    char qname[DNS_MAX_NAME + 2];
    if (len > DNS_MAX_NAME || name_normalize(name, len, qname) < 0) {
        post_ready(res, w,
                   &txt_obj_new(DNS_FAIL,
                                xasprintf("failed to query DNS for %s (TXT): invalid domain name",
                                          name),
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
    reactor *r = reactor_current();
    if (!r || !cb || !ip)
        return KERR_INVAL;
    char qname[DNS_MAX_NAME + 2];
    if (dns_ptr_name(ip, qname, sizeof(qname)) != 0)
        return KERR_INVAL;
    struct rcfg *rc;
    struct resolver *res;
    int begun = lookup_begin(r, resolver, &rc, &res);
    if (begun != 0)
        return begun;
    struct waiter *w = waiter_new(W_TXT);
    w->txt_cb = cb;
    w->ud = ud;
    w->drop = drop;
    list_lookup(res, rc, w, T_PTR, qname, ip);
    rcfg_put(rc);
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

static void job_unlink(struct resolver *res, struct addr_job *job)
{
    if (job->prev)
        job->prev->next = job->next;
    else
        res->jobs = job->next;
    if (job->next)
        job->next->prev = job->prev;
}

static void job_free(struct addr_job *job)
{
    for (int i = 0; i < 2; i++)
        if (job->fam[i])
            cobj_unref(&job->fam[i]->hdr);
    rcfg_put(job->rc);
    free(job->name);
    free(job->fq);
    free(job->error);
    free(job);
}

/* Asks for one family (0: A, 1: AAAA). */
static void job_request(struct resolver *res, struct addr_job *job, int idx)
{
    job->outstanding++;
    struct waiter *w = waiter_new(W_FAM);
    w->job = job;
    struct fam_obj *st = fam_static(job->rc, job->fq, job->name, idx);
    if (st) {
        post_ready(res, w, &st->hdr);
        return;
    }
    char key[DNS_MAX_NAME + 48], pfx[24];
    key_prefix(job->rc, pfx, sizeof(pfx));
    snprintf(key, sizeof(key), "%s%s %s", pfx, idx == 0 ? "A" : "AAAA", job->fq);
    struct cobj *hit = cache_get(key);
    if (hit) {
        post_ready(res, w, hit);
        return;
    }
    flight_join(res, job->rc, key, idx == 0 ? T_A : T_AAAA, job->fq, job->name, 0, w);
}

static bool fam_has_addrs(const struct fam_obj *fo)
{
    return fo && fo->status == DNS_OK && fo->n > 0;
}

static void job_got(struct resolver *res, struct addr_job *job, struct fam_obj *fo)
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
        job_finish(res, job);
}

static void job_finish(struct resolver *res, struct addr_job *job)
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
    job_unlink(res, job);
    job->cb(&out, job->ud);
    free(addrs);
    job_free(job);
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
    reactor *r = reactor_current();
    if (!r || !cb || !host || strategy < DNS_IPV4_AND_IPV6 || strategy > DNS_IPV4_THEN_IPV6)
        return KERR_INVAL;
    struct rcfg *rc;
    struct resolver *res;
    int begun = lookup_begin(r, resolver, &rc, &res);
    if (begun != 0)
        return begun;
    struct addr_job *job = xcalloc(1, sizeof(*job));
    job->rc = rc; /* the job holds the reference */
    job->cb = cb;
    job->ud = ud;
    job->drop = drop;
    job->strategy = strategy;
    job->name = xstrdup(host);
    job->next = res->jobs;
    if (res->jobs)
        res->jobs->prev = job;
    res->jobs = job;

    /* literals need no DNS */
    char err[256];
    int family = 0;
    unsigned char raw[16];
    uint16_t port = 0;
    int lit = parse_literal(host, &family, raw, &port, err, sizeof(err));
    if (lit == 0 && inet_pton(AF_INET, host, raw) == 1)
        lit = 1, family = AF_INET;
    else if (lit == 0 && inet_pton(AF_INET6, host, raw) == 1)
        lit = 1, family = AF_INET6;
    if (lit != 0) {
        if (lit < 0) {
            job->error = xstrdup(err);
        } else {
            struct fam_obj *fo = fam_obj_new(family, DNS_OK, NULL);
            fam_obj_add(fo, family, raw);
            job->fam[family == AF_INET ? 0 : 1] = fo;
            job->port = port;
        }
        struct waiter *w = waiter_new(W_JOB);
        w->job = job;
        post_ready(res, w, NULL);
        return 0;
    }

    size_t len = strlen(host);
    char fq[DNS_MAX_NAME + 2];
    if (len > DNS_MAX_NAME || name_normalize(host, len, fq) <= 0) {
        job->error = xasprintf("invalid host name `%s`", host);
        struct waiter *w = waiter_new(W_JOB);
        w->job = job;
        post_ready(res, w, NULL);
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
        struct rcfg **nv = realloc(named.v, (named.n + 1) * sizeof(*nv));
        if (!nv)
            oom();
        named.v = nv;
        named.n++;
    }
    named.v[i] = rc;
    pthread_mutex_unlock(&named.lock);
    rcfg_put(old);
    DINFO(DNS_MOD, "DNS resolver '%s' defined: %s", name,
          zs ? "test zones" : rc->servers_csv ? rc->servers_csv : "(system)");
    return 0;
}

bool dns_resolver_defined(const char *name)
{
    struct rcfg *rc = rcfg_get(name);
    rcfg_put(rc);
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

/* ---- teardown ------------------------------------------------------------------------- */

void dns_reactor_free(reactor *r)
{
    struct resolver *res = reactor_get_slot(r, REACTOR_SLOT_DNS);
    if (!res)
        return;
    reactor_set_slot(r, REACTOR_SLOT_DNS, NULL);
    /* detach the flights from their queries, so that ares_destroy's
     * ARES_EDESTRUCTION callbacks only free the query contexts */
    for (size_t i = 0; i < res->flights.nb; i++)
        for (struct hnode *n = res->flights.b[i]; n; n = n->next) {
            struct flight *f = (struct flight *)n;
            if (f->q) {
                f->q->f = NULL;
                f->q = NULL;
            }
        }
    chan_free(res->cur);
    while (res->named) {
        struct nchan *nc = res->named;
        res->named = nc->next;
        chan_free(nc->ch);
        free(nc->name);
        free(nc);
    }
    while (res->retired) {
        struct chan *ch = res->retired;
        res->retired = ch->next;
        chan_free(ch);
    }
    for (size_t i = 0; i < res->flights.nb; i++) {
        struct hnode *n = res->flights.b[i];
        while (n) {
            struct hnode *next = n->next;
            flight_free((struct flight *)n);
            n = next;
        }
    }
    free(res->flights.b);
    while (res->done_head) {
        struct flight *f = res->done_head;
        res->done_head = f->next;
        flight_free(f);
    }
    while (res->jobs) {
        struct addr_job *job = res->jobs;
        res->jobs = job->next;
        if (job->drop) /* never answered */
            job->drop(job->ud);
        job_free(job);
    }
    event_free(res->deliver_ev);
    free(res);
}

void dns_shutdown(void)
{
    testres_replace(NULL);
    pthread_mutex_lock(&named.lock);
    for (size_t i = 0; i < named.n; i++)
        rcfg_put(named.v[i]);
    free(named.v);
    named.v = NULL;
    named.n = 0;
    pthread_mutex_unlock(&named.lock);
    hosts_stop();
    dns_cache_clear();
    pthread_mutex_lock(&cache.lock);
    free(cache.t.b);
    cache.t.b = NULL;
    cache.t.nb = 0;
    pthread_mutex_unlock(&cache.lock);
    pthread_mutex_lock(&cfg.lock);
    free(cfg.servers_csv);
    cfg.servers_csv = NULL;
    pthread_mutex_unlock(&cfg.lock);
}

/* ---- reverse names ---------------------------------------------------------------------- */

int dns_reverse_ip(const char *ip, char *out, size_t outlen)
{
    unsigned char raw[16];
    size_t used = 0;
    if (inet_pton(AF_INET, ip, raw) == 1) {
        int n = snprintf(out, outlen, "%u.%u.%u.%u", raw[3], raw[2], raw[1], raw[0]);
        return n > 0 && (size_t)n < outlen ? 0 : KERR_RANGE;
    }
    if (inet_pton(AF_INET6, ip, raw) != 1)
        return KERR_INVAL;
    static const char hex[] = "0123456789abcdef";
    if (outlen < 64)
        return KERR_RANGE;
    for (int i = 15; i >= 0; i--) {
        out[used++] = hex[raw[i] & 15];
        out[used++] = '.';
        out[used++] = hex[raw[i] >> 4];
        out[used++] = i ? '.' : '\0';
    }
    return 0;
}

int dns_ptr_name(const char *ip, char *out, size_t outlen)
{
    int rc = dns_reverse_ip(ip, out, outlen);
    if (rc != 0)
        return rc;
    size_t n = strlen(out);
    const char *tail = strchr(ip, ':') ? ".ip6.arpa" : ".in-addr.arpa";
    if (n + strlen(tail) + 1 > outlen)
        return KERR_RANGE;
    strcpy(out + n, tail);
    return 0;
}
