/* DNS for delivery: MX, A and AAAA lookups driven by c-ares on the calling
 * reactor's event loop, a process-wide cache that honours TTLs (failed MX
 * lookups are cached for the negative TTL, as KumoMTA does), and KumoMTA's
 * site_name factoring of MX host lists.
 *
 * Lookups run on the calling reactor: dns_lookup_mx() and dns_lookup_addrs()
 * must be called on a reactor thread, and their callback runs later on that
 * same thread, never before the call returns. Concurrent lookups of the same
 * name on one reactor share one query. Results passed to a callback are
 * borrowed for the duration of the callback (an MX result can be kept with
 * dns_mx_ref()). */
#ifndef KUMOD_NET_DNS_H
#define KUMOD_NET_DNS_H
#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/reactor.h"

enum dns_status {
    DNS_OK = 0,
    DNS_NXDOMAIN,   /* the name does not exist */
    DNS_NULL_MX,    /* RFC 7505: the domain accepts no mail; hosts is {"."} */
    DNS_NO_RECORDS, /* addresses only: the name exists but has no A/AAAA asked for */
    DNS_FAIL,       /* timeout, SERVFAIL, REFUSED, malformed answer or name: see error */
};

/* "Ok", "NxDomain", "NullMx", "NoRecords", "Fail". */
const char *dns_status_name(int status);

/* ---- MX ---------------------------------------------------------------- */

typedef struct dns_mx_host {
    /* Lower case and fully qualified ("mx1.example.com."), with ":port" when
     * the domain carried one; "." for a null MX; for a domain literal the
     * address ("10.0.0.1", "::1", "10.0.0.1:2525", "[::1]:2525"). */
    const char *name;
    uint16_t pref;
} dns_mx_host;

/* KumoMTA's MailExchanger. Immutable and shared with the cache. */
typedef struct dns_mx {
    int status;               /* enum dns_status */
    const char *error;        /* DNS_NXDOMAIN / DNS_FAIL: KumoMTA's text; else NULL */
    const char *domain_name;  /* "example.com." (literals: as given, "[10.0.0.1]") */
    const char *site_name;    /* "" for a null MX or a failure */
    const dns_mx_host *hosts; /* by preference, then name; none on failure */
    size_t n_hosts;
    uint16_t port;          /* from "domain:port" or "[addr]:port"; 0 when absent */
    bool is_domain_literal; /* "[10.0.0.1]", "[IPv6:::1]" */
    bool is_mx;             /* false when the domain had no MX and stands for itself */
    bool is_secure;         /* DNSSEC: always false (c-ares does not validate) */
    uint32_t ttl;           /* seconds the answer was cacheable for when fetched */
    int64_t expires_ms;     /* clock_mono_ms() at which the cache drops it; 0: never */
} dns_mx;

typedef void (*dns_mx_cb)(const dns_mx *mx, void *ud);

/* Resolves the mail exchangers of domain ("example.com", "example.com:2525",
 * "[10.0.0.1]", "[IPv6:::1]"). No MX records: the domain itself, is_mx
 * false. Returns 0 (cb will run exactly once, later, on this reactor) or
 * KERR_INVAL when not called on a reactor thread / KERR_NOMEM (cb will not
 * run). domain is copied. */
int dns_lookup_mx(const char *domain, dns_mx_cb cb, void *ud);
/* The same, for a ud that the callback owns: drop(ud) is called instead of
 * cb when the lookup is dropped unanswered (the reactor's resolver freed at
 * shutdown), so that it is not leaked. */
int dns_lookup_mx_owned(const char *domain, dns_mx_cb cb, void *ud, void (*drop)(void *ud));

/* Keeps an MX result beyond its callback; any thread. */
const dns_mx *dns_mx_ref(const dns_mx *mx);
void dns_mx_unref(const dns_mx *mx);

/* ---- addresses ----------------------------------------------------------- */

/* KumoMTA's ip_lookup_strategy. */
enum dns_ip_strategy {
    DNS_IPV4_AND_IPV6 = 0, /* A and AAAA in parallel (the default) */
    DNS_IPV4_ONLY,
    DNS_IPV6_ONLY,
    DNS_IPV6_THEN_IPV4, /* AAAA; A only if AAAA gave nothing or failed */
    DNS_IPV4_THEN_IPV6, /* A; AAAA only if A gave nothing or failed */
};

/* Parses "Ipv4AndIpv6", "Ipv4Only", "Ipv6Only", "Ipv6ThenIpv4",
 * "Ipv4ThenIpv6" (also hickory's "Ipv6thenIpv4", "Ipv4thenIpv6"). Returns
 * the enum value or KERR_INVAL. */
int dns_ip_strategy_parse(const char *s);
const char *dns_ip_strategy_name(int strategy);

typedef struct dns_addr {
    int family; /* AF_INET or AF_INET6 */
    union {
        struct in_addr v4;
        struct in6_addr v6;
    } u;
    char text[INET6_ADDRSTRLEN]; /* "10.0.0.1", "::1" */
} dns_addr;

typedef struct dns_addrs {
    int status;            /* DNS_OK (n_addrs > 0), DNS_NXDOMAIN, DNS_NO_RECORDS, DNS_FAIL */
    const char *error;     /* DNS_FAIL: why; else NULL */
    const char *name;      /* the host as given */
    const dns_addr *addrs; /* IPv4 first, then IPv6, each in answer order */
    size_t n_addrs;
    uint32_t ttl;       /* smallest TTL of the answers used */
    int64_t expires_ms; /* clock_mono_ms() of the earliest expiry; 0: a literal */
    uint16_t port;      /* a literal's port ("[10.0.0.1]:25", "[10.0.0.1:25]"); else 0 */
} dns_addrs;

typedef void (*dns_addr_cb)(const dns_addrs *res, void *ud);

/* Resolves host ("mx1.example.com.", "mx1.example.com", or a literal:
 * "10.0.0.1", "::1", "[10.0.0.1]", "[IPv6:::1]", answered without DNS) to
 * addresses per strategy (enum dns_ip_strategy). Same contract as
 * dns_lookup_mx(). An unknown name is DNS_NXDOMAIN with no addresses, not an
 * error. host is copied. */
int dns_lookup_addrs(const char *host, int strategy, dns_addr_cb cb, void *ud);
/* The same with drop(ud) called when the lookup is dropped unanswered (see
 * dns_lookup_mx_owned). */
int dns_lookup_addrs_owned(const char *host, int strategy, dns_addr_cb cb, void *ud,
                           void (*drop)(void *ud));

/* ---- TXT ---------------------------------------------------------------- */

/* The TXT records of a name (DKIM keys, SPF policies). Each record is its
 * character-strings joined without separator (RFC 6376 §3.6.2.2, RFC 7208
 * §3.3); records may hold any bytes, NUL included. Immutable and shared
 * with the cache. */
typedef struct dns_txt {
    int status;         /* DNS_OK (n > 0), DNS_NXDOMAIN, DNS_NO_RECORDS, DNS_FAIL */
    const char *error;  /* DNS_FAIL: why; else NULL */
    const char *name;   /* the name as given */
    const char *const *records;
    const size_t *lens; /* byte length of each record */
    size_t n;
    uint32_t ttl;
} dns_txt;

typedef void (*dns_txt_cb)(const dns_txt *res, void *ud);

/* Resolves the TXT records of name, cached for their TTL (answers without
 * records for the negative TTL; failures are not cached). Same contract as
 * dns_lookup_mx_owned (drop may be NULL); answered from the test zones when
 * kumo.dns.configure_test_resolver set them. name is copied. */
int dns_lookup_txt(const char *name, dns_txt_cb cb, void *ud, void (*drop)(void *ud));

/* ---- PTR -------------------------------------------------------------------- */

/* Resolves the PTR records of ip ("10.0.0.1", "::1"): a dns_txt whose
 * records are the host names, fully qualified with the root dot
 * ("localhost."). Same contract as dns_lookup_txt; KERR_INVAL when ip is not
 * an IP address. */
int dns_lookup_ptr(const char *resolver, const char *ip, dns_txt_cb cb, void *ud,
                   void (*drop)(void *ud));

/* ---- named resolvers (kumo.dns.define_resolver) ----------------------------- */

/* The lookups through a named resolver (NULL: the default one). They return
 * KERR_NOTFOUND (cb will not run) when no resolver has that name; otherwise
 * as dns_lookup_mx_owned, dns_lookup_txt and dns_lookup_addrs_owned. */
int dns_lookup_mx_via(const char *resolver, const char *domain, dns_mx_cb cb, void *ud,
                      void (*drop)(void *ud));
int dns_lookup_txt_via(const char *resolver, const char *name, dns_txt_cb cb, void *ud,
                       void (*drop)(void *ud));
int dns_lookup_addrs_via(const char *resolver, const char *host, int strategy, dns_addr_cb cb,
                         void *ud, void (*drop)(void *ud));

/* ---- configuration (any thread, process-wide) ----------------------------- */

typedef struct dns_config {
    /* "ip" (port 53), "ip:port" or "[ipv6]:port"; none: the system's
     * /etc/resolv.conf. Strings are copied. */
    const char *const *name_servers;
    size_t n_name_servers;
    int64_t timeout_ms; /* per attempt; 0: 2000 */
    int attempts;       /* 0: 2 */
    bool use_tcp;       /* TCP only (default: UDP, TCP when truncated) */
    bool edns0;
    bool no_recursion;
    const char *bind_addr; /* local address for queries ("ip" or "ip:port"; the port is
                              ignored), or NULL */
    bool no_hosts_file;    /* use_hosts_file = 'Never': do not consult the hosts file */
} dns_config;

/* Replaces the resolver configuration. Resolvers created afterwards use it;
 * existing ones switch before their next query (queries in flight finish on
 * the old servers). Returns 0 or KERR_INVAL with err naming the bad entry. */
int dns_configure_ex(const dns_config *cfg, char *err, size_t errlen);
/* kumo.dns.configure_test_resolver: takes zs (built by src/net/zone) and
 * answers every MX, A, AAAA and TXT lookup from it alone (no hosts file, no DNS;
 * literals still need no resolver) until the next dns_configure_ex() or
 * dns_configure_test(NULL). Forgets cached answers. Any thread. */
struct zone_set;
void dns_configure_test(struct zone_set *zs);
/* The answers that need no name server, in this order: the test zones
 * when set; the hosts file (src/net/hosts: /etc/hosts, CARES_HOSTS) for A
 * and AAAA, where a name the file lists has only the file's addresses;
 * RFC 6761: localhost names are 127.0.0.1 / ::1 with no MX (so they are
 * their own mail exchanger), names under "invalid" do not exist. */

/* Defines (or redefines) the resolver called name: either name servers and
 * options (cfg, as dns_configure_ex; no servers: the system's) or test
 * zones (zs, taken: answers from them alone). Lookups already under way
 * finish with the definition they started with. Returns 0 or KERR_INVAL
 * with err set (zs is freed then too). Any thread. */
struct zone_set;
int dns_define_resolver(const char *name, const dns_config *cfg, struct zone_set *zs, char *err,
                        size_t errlen);
bool dns_resolver_defined(const char *name);

/* dns_configure_ex with default options. */
int dns_configure(const char *const *name_servers, size_t n);

/* KumoMTA's kumo.dns.set_mx_timeout (default 5 s: an MX lookup fails with
 * "deadline has elapsed" after this long), set_mx_negative_cache_ttl (default
 * 5 minutes: how long a failed MX lookup stays cached) and
 * set_mx_concurrency_limit (default 128; here per reactor). */
void dns_set_mx_timeout_ms(int64_t ms);
void dns_set_mx_negative_ttl_ms(int64_t ms);
void dns_set_mx_concurrency_limit(size_t n);

/* Forgets every cached answer. */
void dns_cache_clear(void);

/* Frees r's resolver. Call once r has stopped (or on r's thread outside any
 * DNS callback). Lookups still pending are dropped: their callbacks never
 * run. */
void dns_reactor_free(reactor *r);
/* Frees the cache and the configuration; after every dns_reactor_free(). */
void dns_shutdown(void);

/* ---- pure helpers --------------------------------------------------------- */

/* KumoMTA's site_name factoring of a host list in preference order: names
 * are lower-cased, split into labels and aligned from the right; each column
 * becomes its one label or "(a|b|c)" in order of first appearance, with "?"
 * after it when some hosts are shorter. A ":port" suffix sticks to the last
 * label. Invalid names are skipped. Returns a malloc'd string (NULL only
 * when out of memory). */
char *dns_site_name(const char *const *hosts, size_t n);

/* KumoMTA's has_colon_port: when s ends in ":PORT" (a valid u16) and what
 * precedes it has no ':', stores the length of that prefix and the port and
 * returns true. */
bool dns_split_port(const char *s, size_t *host_len, uint16_t *port);

/* KumoMTA's reverse_ip: "10.0.0.1" -> "1.0.0.10"; "::1" -> the 32 nibbles
 * in reverse, dot-separated. dns_ptr_name adds ".in-addr.arpa" or
 * ".ip6.arpa". Return 0, KERR_INVAL when ip is not an IP address,
 * KERR_RANGE when out (>= 80 bytes suffices) is too small. */
int dns_reverse_ip(const char *ip, char *out, size_t outlen);
int dns_ptr_name(const char *ip, char *out, size_t outlen);

#endif
