/* DNS zones given as master-file text (RFC 1035 §5), answering lookups
 * without a name server: what kumo.dns.configure_test_resolver installs, so
 * that policies and tests resolve MX, A, AAAA, TXT, CNAME and PTR records
 * from zones they write themselves, as KumoMTA's test resolver does.
 *
 * A zone_set is built once (zone_set_add per zone text) and then only read:
 * lookups from any number of threads need no lock. Names are compared
 * case-insensitively, fully qualified ("mx.example.com."). */
#ifndef KUMOD_NET_ZONE_H
#define KUMOD_NET_ZONE_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Record types, by their DNS numbers. */
enum zone_type {
    ZONE_A = 1,
    ZONE_NS = 2,
    ZONE_CNAME = 5,
    ZONE_SOA = 6,
    ZONE_PTR = 12,
    ZONE_MX = 15,
    ZONE_TXT = 16,
    ZONE_AAAA = 28,
    ZONE_SRV = 33,
    ZONE_SPF = 99,
};

typedef struct zone_rr {
    const char *owner; /* lower case, fully qualified */
    uint16_t type;     /* enum zone_type */
    uint32_t ttl;
    unsigned char addr[16]; /* A: 4 bytes, AAAA: 16 */
    uint16_t pref;          /* MX preference; SRV priority */
    const char *target;     /* MX exchange, CNAME, PTR, NS, SRV target: lower case, fully
                               qualified ("." for a null MX) */
    const char *const *txt; /* TXT and SPF: the character-strings, in order */
    size_t n_txt;
} zone_rr;

typedef struct zone_set zone_set;

zone_set *zone_set_new(void);
void zone_set_free(zone_set *zs);

/* Parses one zone and adds it; the zone's name is its first $ORIGIN, which
 * the text must set before any relative name. A zone with the name of an
 * earlier one replaces it. Supports $ORIGIN, $TTL, '@', relative names,
 * omitted owners (the previous one), TTL and class (IN) in either order,
 * BIND TTL units (1h30m), parentheses across lines, ';' comments and quoted
 * strings with \X and \DDD escapes; types A, AAAA, MX, TXT, SPF, CNAME, PTR,
 * NS, SOA and SRV. secure marks the zone's answers as DNSSEC-validated.
 * Returns 0, or KERR_PARSE with err saying which line and why (zs is then
 * unchanged). */
int zone_set_add(zone_set *zs, const char *text, size_t len, bool secure, char *err, size_t errlen);

/* Makes every lookup of name (exactly) answer SERVFAIL. Returns 0 or
 * KERR_INVAL for an invalid name. */
int zone_set_add_servfail(zone_set *zs, const char *name);

enum zone_rcode { ZONE_NOERROR = 0, ZONE_NXDOMAIN, ZONE_SERVFAIL, ZONE_BADNAME };

#define ZONE_MAX_ANSWER 64

typedef struct zone_answer {
    int rcode;   /* enum zone_rcode */
    bool secure; /* from a zone added with secure */
    const zone_rr *rrs[ZONE_MAX_ANSWER];
    size_t n;        /* NOERROR with n == 0: the name has no such records */
    char canon[256]; /* the CNAME target followed, or "" */
} zone_answer;

/* Answers a query as KumoMTA's test resolver does: the zone is the closest
 * enclosing one (none: NXDOMAIN); the records of that name and type, else
 * the answer for the target of the name's CNAME (chains of up to 8), else an empty
 * NOERROR, even for a name the zone does not mention. The records are
 * borrowed from zs. Returns out->rcode. */
int zone_set_lookup(const zone_set *zs, const char *name, uint16_t type, zone_answer *out);

/* "A", "MX", ... for a type; NULL when unknown. */
const char *zone_type_name(uint16_t type);

#endif
