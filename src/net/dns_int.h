/* What the files of the DNS module share (internal). dns.c runs the
 * resolvers (channels, flights, the cache); dns_lookup.c holds the lookup
 * entry points; dns_answer.c builds the results (the reference-counted
 * objects below) from c-ares answers, the test resolver's zones and the
 * names that need no query; dns_config.c holds the configuration (default,
 * named and test resolvers); dns_names.c the names that need no lookup.
 * Threads: a resolver and its flights belong to one reactor; a result is
 * built on that reactor and, once built, only read (by any thread that
 * holds a reference); configuration is read and replaced under its own
 * mutexes. */
#ifndef KUMOD_NET_DNS_INT_H
#define KUMOD_NET_DNS_INT_H
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/reactor.h"
#include "core/xalloc.h"
#include "net/dns.h"
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

/* A growable string. */
struct sbuf {
    char *s;
    size_t len, cap;
};

static inline void sbuf_add(struct sbuf *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 64;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = xrealloc(b->s, cap);
        b->s = p;
        b->cap = cap;
    }
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = '\0';
}

static inline void sbuf_str(struct sbuf *b, const char *s)
{
    sbuf_add(b, s, strlen(s));
}

/* ---- names (dns_names.c) --------------------------------------------------------- */

/* Lower-cases name[0..len) into out (at least len + 1 bytes) without the
 * trailing root dot and checks it as hickory's Name::from_str_relaxed
 * does. Returns the number of labels (the root has 0) or -1. */
int dns__name_normalize(const char *name, size_t len, char *out);
/* Parses a domain literal ("[10.0.0.1]", "[IPv6:::1]", "[::1]"), with an
 * optional ":port" inside or outside the brackets. Returns 1 for a
 * literal (family, raw, port filled), 0 for none, -1 for a malformed one
 * (err filled). */
int dns__parse_literal(const char *s, int *family, unsigned char raw[16], uint16_t *port, char *err,
                       size_t errlen);

/* ---- results ----------------------------------------------------------------- */

/* Results are reference counted: the cache holds one, every delivery one. */
struct cobj {
    atomic_int refs;
    void (*free_fn)(struct cobj *o);
};

struct mx_obj {
    struct cobj hdr; /* first: a struct cobj * is a struct mx_obj * */
    dns_mx pub;
    dns_mx_host *hosts;
    char *error, *domain_name, *site_name;
};

/* An MX host and its preference, before they go into an mx_obj. */
struct host_pref {
    char *name;
    uint16_t pref;
};

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

/* The TXT answer of one name. */
struct txt_obj {
    struct cobj hdr;
    dns_txt pub;
    char **recs;
    size_t *lens;
    char *error, *name;
    int64_t expires_ms;
};

static inline struct cobj *cobj_ref(struct cobj *o)
{
    atomic_fetch_add_explicit(&o->refs, 1, memory_order_relaxed);
    return o;
}

static inline void cobj_unref(struct cobj *o)
{
    if (o && atomic_fetch_sub_explicit(&o->refs, 1, memory_order_acq_rel) == 1)
        o->free_fn(o);
}

/* Takes error and domain_name. */
struct mx_obj *dns__mx_obj_new(int status, char *error, char *domain_name);
/* Takes the names of hp[0..n) into m, sorted by preference then name;
 * port (0: none) is appended to each; sets the site name. */
void dns__mx_obj_set_hosts(struct mx_obj *m, struct host_pref *hp, size_t n, uint16_t port);
/* Takes error. */
struct fam_obj *dns__fam_obj_new(int family, int status, char *error);
void dns__fam_obj_add(struct fam_obj *f, int family, const void *raw);
/* Takes error. */
struct txt_obj *dns__txt_obj_new(int status, char *error, const char *name);

/* ---- flights ------------------------------------------------------------------ */

struct resolver;
struct qctx;
struct waiter;
struct rcfg;

struct hnode {
    struct hnode *next;
    uint64_t h;
    const char *key;
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

/* ---- the resolver of a reactor (dns.c) ------------------------------------------- */

/* Reactor r's resolver, created on first use; NULL when out of resources. */
struct resolver *dns__resolver_get(reactor *r);
struct waiter *dns__waiter_new(int kind);
/* Delivers obj (taken) to w on the next turn of the loop. */
void dns__post_ready(struct resolver *res, struct waiter *w, struct cobj *obj);
/* Joins the query for key, starting it when nobody has. Takes w. */
void dns__flight_join(struct resolver *res, struct rcfg *rc, const char *key, int qtype,
                      const char *qname, const char *display, uint16_t port, struct waiter *w);
/* A new reference to the unexpired answer under key, or NULL. */
struct cobj *dns__cache_get(const char *key);
/* An A (idx 0) or AAAA (idx 1) answer that needs no query, or NULL. */
struct fam_obj *dns__fam_static(const struct rcfg *rc, const char *fq, const char *display,
                                int idx);
void dns__job_link(struct resolver *res, struct addr_job *job);
void dns__job_unlink(struct resolver *res, struct addr_job *job);

/* ---- address jobs (dns_lookup.c) -------------------------------------------------- */

/* One family's answer for job (which takes a reference of its own); asks
 * the other family when the strategy falls back, finishes the job when
 * nothing is outstanding. */
void dns__job_got(struct resolver *res, struct addr_job *job, struct fam_obj *fo);
/* Answers job's caller and frees it. */
void dns__job_finish(struct resolver *res, struct addr_job *job);
void dns__job_free(struct addr_job *job);

/* ---- building answers (dns_answer.c) ---------------------------------------------- */

/* The result of f's query from c-ares's status and answer. */
struct cobj *dns__from_answer(struct flight *f, int status, const unsigned char *abuf, int alen);
/* A failed lookup of f's type, why saying what failed. */
struct cobj *dns__fail_obj(struct flight *f, const char *why);
/* An MX failure as KumoMTA words it ("MX lookup for X failed after T: why"). */
struct cobj *dns__mx_fail_as(const char *display, const char *qname, int64_t start_ns, int status,
                             const char *why);
struct cobj *dns__mx_fail(struct flight *f, int status, const char *why);
/* No MX records: the domain is its own mail exchanger (RFC 5321 §5.1). */
struct cobj *dns__mx_implicit_as(const char *qname, uint16_t port, uint32_t ttl);
/* True when qname (lower case, no root dot) is tld or under it. */
bool dns__under(const char *qname, const char *tld);
/* The answers of the test resolver's zones. */
struct cobj *dns__mx_from_zones(const zone_set *zs, const char *qname, const char *display,
                                uint16_t port, int64_t start_ns);
struct cobj *dns__list_from_zones(const zone_set *zs, const char *qname, const char *display,
                                  uint16_t type);

/* ---- configuration (dns_config.c) ------------------------------------------------ */

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

/* The test resolver's zones, shared by reference. */
struct testres;

/* A named resolver's current definition (a reference), or NULL. */
struct rcfg *dns__rcfg_get(const char *name);
void dns__rcfg_put(struct rcfg *rc);
/* The zones that alone answer lookups through rc (NULL: the default
 * resolver, answered by the test resolver's zones when set), or NULL;
 * *hold is released with dns__testres_put. */
const zone_set *dns__zones_get(const struct rcfg *rc, struct testres **hold);
void dns__testres_put(struct testres *t);
/* Cache and flight keys of a named resolver start with "@ID ". */
void dns__key_prefix(const struct rcfg *rc, char *buf, size_t len);
/* A copy of the default resolver's settings (out->servers_csv is the
 * caller's to free); returns the configuration generation it belongs to. */
unsigned dns__default_config(struct rcfg *out);
/* Bumped by every configure_resolver: channels of an older one retire. */
unsigned dns__config_gen(void);
/* Whether lookups through rc (NULL: the default) consult the hosts file. */
bool dns__use_hosts(const struct rcfg *rc);
/* Frees the configuration (dns_shutdown). */
void dns__config_shutdown(void);

#endif
