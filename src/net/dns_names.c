/* Names without lookups (dns.h, dns_int.h): DNS status names, host:port
 * splitting, name normalization as hickory checks names, KumoMTA's
 * site_name factoring of MX host lists, domain literals ("[10.0.0.1]",
 * "[IPv6:::1]") and reverse names (in-addr.arpa, ip6.arpa).
 *
 * Pure functions over caller memory: any thread. Failure: a malformed name
 * or literal is an error return (with the reason where the caller shows
 * it); allocation failure aborts. */
#include <arpa/inet.h>
#include <ctype.h>
#include <sys/socket.h>

#include "core/kerr.h"
#include "net/dns_int.h"

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
int dns__name_normalize(const char *name, size_t len, char *out)
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
        int nl = dns__name_normalize(h, hlen, norm);
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
                const char **nv = xrealloc(col->vals, col->cap * sizeof(*nv));
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

/* ---- domain literals -------------------------------------------------------------- */

/* Parses "[10.0.0.1]", "[IPv6:::1]", "[::1]" (non-conforming, accepted by
 * KumoMTA), optionally with ":port" inside or outside the brackets. Returns
 * 1 for a literal (family, raw, port filled), 0 for no literal, -1 for a
 * malformed one (err filled). */
int dns__parse_literal(const char *s, int *family, unsigned char raw[16], uint16_t *port, char *err,
                       size_t errlen)
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
