/* resolv.conf parsing (see resolvconf.h). Pure and allocation-free: the
 * result is fixed-size; extra name servers and search names past the caps
 * are dropped as the C library drops them (it keeps 3). Any thread. */
#include "net/resolvconf.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/kerr.h"

/* Next whitespace-separated word of [*p, end) into w (cut at wlen-1). */
static bool word(const char **p, const char *end, char *w, size_t wlen)
{
    while (*p < end && isspace((unsigned char)**p))
        (*p)++;
    if (*p >= end)
        return false;
    size_t n = 0;
    while (*p < end && !isspace((unsigned char)**p)) {
        if (n + 1 < wlen)
            w[n++] = **p;
        (*p)++;
    }
    w[n] = '\0';
    return true;
}

static int clamp_int(const char *s, int lo, int hi, int def)
{
    char *e;
    long v = strtol(s, &e, 10);
    if (e == s || *e)
        return def;
    return v < lo ? lo : v > hi ? hi : (int)v;
}

int resolvconf_parse(const char *text, size_t len, resolvconf *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    out->ndots = 1;
    out->timeout = 5;
    out->attempts = 2;
    const char *p = text, *end = text + len;
    int lineno = 0;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        lineno++;
        const char *c = p;
        /* '#' and ';' start comments */
        for (const char *q = p; q < le; q++)
            if (*q == '#' || *q == ';') {
                le = q;
                break;
            }
        char key[32], w[256];
        if (word(&c, le, key, sizeof(key))) {
            if (strcmp(key, "nameserver") == 0 && word(&c, le, w, sizeof(w))) {
                unsigned char raw[16];
                char *pct = strchr(w, '%'); /* a link-local zone id is not kept */
                if (pct)
                    *pct = '\0';
                int fam = inet_pton(AF_INET, w, raw) == 1    ? 4
                          : inet_pton(AF_INET6, w, raw) == 1 ? 6
                                                             : 0;
                if (!fam) {
                    snprintf(err, errlen, "line %d: nameserver '%s' is not an IP address",
                             lineno, w);
                    return KERR_PARSE;
                }
                if (out->n_ns < RESOLVCONF_MAX_NS) {
                    char t[INET6_ADDRSTRLEN];
                    inet_ntop(fam == 4 ? AF_INET : AF_INET6, raw, t, sizeof(t));
                    snprintf(out->ns[out->n_ns++], sizeof(out->ns[0]),
                             fam == 4 ? "%s:53" : "[%s]:53", t);
                }
            } else if (strcmp(key, "domain") == 0 && word(&c, le, w, sizeof(w))) {
                snprintf(out->domain, sizeof(out->domain), "%s", w);
                out->n_search = 0;
                if (strcmp(w, "--") != 0)
                    snprintf(out->search[out->n_search++], sizeof(out->search[0]), "%s", w);
            } else if (strcmp(key, "search") == 0) {
                out->n_search = 0;
                while (word(&c, le, w, sizeof(w)))
                    if (strcmp(w, "--") != 0 && out->n_search < RESOLVCONF_MAX_SEARCH)
                        snprintf(out->search[out->n_search++], sizeof(out->search[0]), "%s", w);
            } else if (strcmp(key, "options") == 0) {
                while (word(&c, le, w, sizeof(w))) {
                    if (strncmp(w, "ndots:", 6) == 0)
                        out->ndots = clamp_int(w + 6, 0, 15, out->ndots);
                    else if (strncmp(w, "timeout:", 8) == 0)
                        out->timeout = clamp_int(w + 8, 1, 30, out->timeout);
                    else if (strncmp(w, "attempts:", 9) == 0)
                        out->attempts = clamp_int(w + 9, 1, 5, out->attempts);
                    else if (strcmp(w, "edns0") == 0)
                        out->edns0 = true;
                }
            }
        }
        p = nl ? nl + 1 : end;
    }
    return 0;
}
