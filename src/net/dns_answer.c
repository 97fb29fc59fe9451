/* The results of DNS lookups (dns_int.h): the reference-counted MX,
 * address-family and TXT/PTR objects, built from c-ares's answers (the
 * TTLs and negative TTLs read from the wire as hickory reads them), from
 * the test resolver's zones, and for names that need no query (RFC 6761,
 * implicit MX); failures worded as KumoMTA words them.
 *
 * Thread: the reactor whose flight the answer completes; a finished
 * result is only read. Failure: a malformed answer is a DNS_FAIL result
 * naming it; allocation failure aborts (nothing here is sized by a
 * client beyond what the DNS answer carries). */
#include <arpa/inet.h>
#include <ares.h>
#include <ctype.h>
#include <stddef.h>
#include <sys/socket.h>

#include "core/kerr.h"
#include "core/reactor.h"
#include "net/dns_int.h"

/* ---- shared result objects ------------------------------------------------ */

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
struct mx_obj *dns__mx_obj_new(int status, char *error, char *domain_name)
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

static int host_pref_cmp(const void *a, const void *b)
{
    const struct host_pref *x = a, *y = b;
    if (x->pref != y->pref)
        return x->pref < y->pref ? -1 : 1;
    return strcmp(x->name, y->name);
}

void dns__mx_obj_set_hosts(struct mx_obj *m, struct host_pref *hp, size_t n, uint16_t port)
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
        xalloc_fail(0);
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

static void fam_obj_free(struct cobj *o)
{
    struct fam_obj *f = (struct fam_obj *)o;
    free(f->error);
    free(f->addrs);
    free(f);
}

struct fam_obj *dns__fam_obj_new(int family, int status, char *error)
{
    struct fam_obj *f = xcalloc(1, sizeof(*f));
    atomic_init(&f->hdr.refs, 1);
    f->hdr.free_fn = fam_obj_free;
    f->family = family;
    f->status = status;
    f->error = error;
    return f;
}

void dns__fam_obj_add(struct fam_obj *f, int family, const void *raw)
{
    dns_addr *na = xrealloc(f->addrs, (f->n + 1) * sizeof(*na));
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
struct txt_obj *dns__txt_obj_new(int status, char *error, const char *name)
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
        char **nr = xrealloc(t->recs, (idx + 1) * sizeof(*nr));
        t->recs = nr;
        size_t *nl = xrealloc(t->lens, (idx + 1) * sizeof(*nl));
        t->lens = nl;
        t->recs[idx] = xcalloc(1, 1);
        t->lens[idx] = 0;
        t->pub.n++;
    }
    char *r = xrealloc(t->recs[idx], t->lens[idx] + n + 1);
    memcpy(r + t->lens[idx], p, n);
    t->lens[idx] += n;
    r[t->lens[idx]] = 0;
    t->recs[idx] = r;
    t->pub.records = (const char *const *)t->recs;
    t->pub.lens = t->lens;
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

struct cobj *dns__mx_fail_as(const char *display, const char *qname, int64_t start_ns, int status,
                             const char *why)
{
    char el[48];
    fmt_elapsed(clock_mono_ns() - start_ns, el, sizeof(el));
    char *msg = xasprintf("MX lookup for %s failed after %s: %s", display, el, why);
    char *dn = xasprintf("%s.", qname);
    return &dns__mx_obj_new(status, msg, dn)->hdr;
}

struct cobj *dns__mx_fail(struct flight *f, int status, const char *why)
{
    return dns__mx_fail_as(f->display, f->qname, f->start_ns, status, why);
}

struct cobj *dns__fail_obj(struct flight *f, const char *why)
{
    if (f->qtype == T_MX)
        return dns__mx_fail(f, DNS_FAIL, why);
    if (f->qtype == T_TXT || f->qtype == T_PTR)
        return &dns__txt_obj_new(DNS_FAIL,
                                 xasprintf("failed to query DNS for %s (%s): %s", f->display,
                                           f->qtype == T_TXT ? "TXT" : "PTR", why),
                                 f->display)
                    ->hdr;
    int family = f->qtype == T_A ? AF_INET : AF_INET6;
    char *msg = xasprintf("failed to query DNS for %s (%s): %s", f->display,
                          f->qtype == T_A ? "A" : "AAAA", why);
    return &dns__fam_obj_new(family, DNS_FAIL, msg)->hdr;
}

/* No MX records: the domain is its own mail exchanger (RFC 5321 §5.1). */
struct cobj *dns__mx_implicit_as(const char *qname, uint16_t port, uint32_t ttl)
{
    struct mx_obj *m = dns__mx_obj_new(DNS_OK, NULL, xasprintf("%s.", qname));
    struct host_pref hp = {xasprintf("%s.", qname), 1};
    dns__mx_obj_set_hosts(m, &hp, 1, port);
    m->pub.is_mx = false;
    m->pub.ttl = ttl;
    return &m->hdr;
}

static struct cobj *mx_implicit(struct flight *f, uint32_t ttl)
{
    return dns__mx_implicit_as(f->qname, f->port, ttl);
}

/* ---- answers without a name server ------------------------------------------------ */

/* RFC 6761 §6.3 and §6.4: "localhost" and its subdomains are the loopback
 * addresses and have no other records; "invalid" and its subdomains do not
 * exist. Answered without DNS, as hickory (KumoMTA's resolver) does. qname
 * is lower case without the root dot. */
bool dns__under(const char *qname, const char *tld)
{
    size_t n = strlen(qname), t = strlen(tld);
    return strcmp(qname, tld) == 0 ||
           (n > t && qname[n - t - 1] == '.' && strcmp(qname + n - t, tld) == 0);
}

/* The MX answer of the test resolver's zones. */
struct cobj *dns__mx_from_zones(const zone_set *zs, const char *qname, const char *display,
                                uint16_t port, int64_t start_ns)
{
    zone_answer a;
    switch (zone_set_lookup(zs, qname, ZONE_MX, &a)) {
    case ZONE_NXDOMAIN:
        return dns__mx_fail_as(display, qname, start_ns, DNS_NXDOMAIN, "NXDOMAIN");
    case ZONE_SERVFAIL:
        return dns__mx_fail_as(display, qname, start_ns, DNS_FAIL, "SERVFAIL");
    case ZONE_BADNAME:
        return dns__mx_fail_as(display, qname, start_ns, DNS_FAIL, "invalid domain name");
    }
    uint32_t ttl = UINT32_MAX;
    for (size_t i = 0; i < a.n; i++)
        if (a.rrs[i]->ttl < ttl)
            ttl = a.rrs[i]->ttl;
    if (a.n == 0) {
        struct cobj *o = dns__mx_implicit_as(qname, port, 60);
        ((struct mx_obj *)o)->pub.is_secure = a.secure;
        return o;
    }
    struct host_pref *hp = xcalloc(a.n, sizeof(*hp));
    for (size_t i = 0; i < a.n; i++) {
        hp[i].name = xstrdup(a.rrs[i]->target);
        hp[i].pref = a.rrs[i]->pref;
    }
    struct mx_obj *m = dns__mx_obj_new(DNS_OK, NULL, xasprintf("%s.", qname));
    dns__mx_obj_set_hosts(m, hp, a.n, port);
    free(hp);
    m->pub.is_mx = true;
    m->pub.is_secure = a.secure;
    m->pub.ttl = ttl;
    return &m->hdr;
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
        return dns__mx_fail(f, DNS_NXDOMAIN, "NXDOMAIN");
    default:
        return dns__mx_fail(f, DNS_FAIL, ares_strerror(status));
    }

    struct ares_mx_reply *mx = NULL;
    int rc = ares_parse_mx_reply(abuf, alen, &mx);
    if (rc == ARES_ENODATA) /* e.g. only a CNAME whose target has no MX */
        return mx_implicit(f, negative_ttl(abuf, alen));
    if (rc != ARES_SUCCESS) {
        char why[128];
        snprintf(why, sizeof(why), "malformed answer: %s", ares_strerror(rc));
        return dns__mx_fail(f, DNS_FAIL, why);
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
    struct mx_obj *m = dns__mx_obj_new(DNS_OK, NULL, xasprintf("%s.", f->qname));
    dns__mx_obj_set_hosts(m, hp, n, f->port);
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
        struct fam_obj *fo = dns__fam_obj_new(family, DNS_NO_RECORDS, NULL);
        fo->ttl = negative_ttl(abuf, alen);
        return &fo->hdr;
    }
    case ARES_ENOTFOUND: {
        struct fam_obj *fo = dns__fam_obj_new(family, DNS_NXDOMAIN, NULL);
        fo->ttl = negative_ttl(abuf, alen);
        return &fo->hdr;
    }
    default:
        return dns__fail_obj(f, ares_strerror(status));
    }

    struct fam_obj *fo = dns__fam_obj_new(family, DNS_OK, NULL);
    int n = DNS_MAX_ADDRS, rc;
    uint32_t ttl = UINT32_MAX;
    if (family == AF_INET) {
        struct ares_addrttl at[DNS_MAX_ADDRS];
        rc = ares_parse_a_reply(abuf, alen, NULL, at, &n);
        for (int i = 0; rc == ARES_SUCCESS && i < n; i++) {
            dns__fam_obj_add(fo, AF_INET, &at[i].ipaddr);
            if ((uint32_t)(at[i].ttl < 0 ? 0 : at[i].ttl) < ttl)
                ttl = (uint32_t)(at[i].ttl < 0 ? 0 : at[i].ttl);
        }
    } else {
        struct ares_addr6ttl at[DNS_MAX_ADDRS];
        rc = ares_parse_aaaa_reply(abuf, alen, NULL, at, &n);
        for (int i = 0; rc == ARES_SUCCESS && i < n; i++) {
            dns__fam_obj_add(fo, AF_INET6, &at[i].ip6addr);
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
        return dns__fail_obj(f, why);
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
        struct txt_obj *t = dns__txt_obj_new(status == ARES_ENODATA ? DNS_NO_RECORDS : DNS_NXDOMAIN,
                                             NULL, f->display);
        t->pub.ttl = negative_ttl(abuf, alen);
        return &t->hdr;
    }
    default:
        return dns__fail_obj(f, ares_strerror(status));
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
    struct txt_obj *t = dns__txt_obj_new(DNS_OK, NULL, f->display);
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
        return dns__fail_obj(f, why);
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
        return dns__fail_obj(f, "malformed answer");
    struct txt_obj *t = dns__txt_obj_new(DNS_OK, NULL, f->display);
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
        return dns__fail_obj(f, "malformed answer");
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
struct cobj *dns__list_from_zones(const zone_set *zs, const char *qname, const char *display,
                                  uint16_t type)
{
    zone_answer a;
    switch (zone_set_lookup(zs, qname, type, &a)) {
    case ZONE_NXDOMAIN:
        return &dns__txt_obj_new(DNS_NXDOMAIN, NULL, display)->hdr;
    case ZONE_SERVFAIL:
    case ZONE_BADNAME:
        return &dns__txt_obj_new(DNS_FAIL,
                                 xasprintf("failed to query DNS for %s (%s): %s", display,
                                           type == ZONE_TXT ? "TXT" : "PTR",
                                           a.rcode == ZONE_SERVFAIL ? "SERVFAIL" : "invalid name"),
                                 display)
                    ->hdr;
    }
    struct txt_obj *t = dns__txt_obj_new(a.n ? DNS_OK : DNS_NO_RECORDS, NULL, display);
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

struct cobj *dns__from_answer(struct flight *f, int status, const unsigned char *abuf, int alen)
{
    return f->qtype == T_MX    ? mx_from_answer(f, status, abuf, alen)
           : f->qtype == T_TXT ? txt_from_answer(f, status, abuf, alen)
           : f->qtype == T_PTR ? ptr_from_answer(f, status, abuf, alen)
                               : fam_from_answer(f, status, abuf, alen);
}
