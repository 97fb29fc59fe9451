/* resolv.conf (resolver(5)) reading for kumo.dns.load_resolv_conf: the
 * nameserver, domain and search lines and the ndots, timeout, attempts and
 * edns0 options; everything else is skipped, as KumoMTA's loader does. Pure:
 * parses text that the caller read. */
#ifndef KUMOD_NET_RESOLVCONF_H
#define KUMOD_NET_RESOLVCONF_H
#include <stdbool.h>
#include <stddef.h>

#define RESOLVCONF_MAX_NS 16
#define RESOLVCONF_MAX_SEARCH 8

typedef struct resolvconf {
    /* "1.2.3.4:53", "[2001:db8::1]:53", in file order */
    char ns[RESOLVCONF_MAX_NS][64];
    size_t n_ns;
    char domain[256]; /* "" when the file has no domain line */
    /* the last search or domain line's names ("--" excluded) */
    char search[RESOLVCONF_MAX_SEARCH][256];
    size_t n_search;
    int ndots;    /* default 1 */
    int timeout;  /* seconds, default 5 */
    int attempts; /* default 2 */
    bool edns0;
} resolvconf;

/* Parses len bytes of text. A nameserver that is not an IP address is an
 * error (KERR_PARSE, err names the line), as resolver(5) allows only
 * addresses; unknown lines and options are skipped. Returns 0. */
int resolvconf_parse(const char *text, size_t len, resolvconf *out, char *err, size_t errlen);

#endif
