/* Binary-trie longest-prefix map (see cidr_map.h). Node 0 and 1 are the
 * IPv4 and IPv6 roots; children are indexes into the node array, 0 for
 * none (a root is never a child). Pure; one thread at a time. */
#include "lua/lib/cidr_map.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/kerr.h"

struct node {
    uint32_t child[2];
    int32_t slot;
};

struct cidr_map {
    struct node *nodes;
    uint32_t n, cap;
};

cidr_map *cidr_map_new(void)
{
    cidr_map *m = calloc(1, sizeof(*m));
    if (!m)
        return NULL;
    m->cap = 64;
    m->nodes = calloc(m->cap, sizeof(*m->nodes));
    if (!m->nodes) {
        free(m);
        return NULL;
    }
    m->n = 2;
    m->nodes[0].slot = m->nodes[1].slot = -1;
    return m;
}

void cidr_map_free(cidr_map *m)
{
    if (!m)
        return;
    free(m->nodes);
    free(m);
}

static int bit(const uint8_t *a, int i)
{
    return (a[i / 8] >> (7 - i % 8)) & 1;
}

/* IPv4-mapped IPv6 becomes IPv4 (prefix minus 96) when the prefix covers
 * the mapping. */
static cidr normalise(const cidr *c)
{
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    cidr r = *c;
    if (c->family == AF_INET6 && c->prefix >= 96 && memcmp(c->addr, mapped, 12) == 0) {
        r.family = AF_INET;
        memset(r.addr, 0, sizeof(r.addr));
        memcpy(r.addr, c->addr + 12, 4);
        r.prefix = c->prefix - 96;
    }
    return r;
}

int cidr_map_insert(cidr_map *m, const cidr *c0, int slot, int *old)
{
    cidr c = normalise(c0);
    uint32_t cur = c.family == AF_INET ? 0 : 1;
    for (int i = 0; i < c.prefix; i++) {
        int b = bit(c.addr, i);
        if (!m->nodes[cur].child[b]) {
            if (m->n == m->cap) {
                uint32_t cap = m->cap * 2;
                struct node *nn = realloc(m->nodes, cap * sizeof(*nn));
                if (!nn)
                    return KERR_NOMEM;
                m->nodes = nn;
                m->cap = cap;
            }
            m->nodes[m->n] = (struct node){{0, 0}, -1};
            m->nodes[cur].child[b] = m->n++;
        }
        cur = m->nodes[cur].child[b];
    }
    if (old)
        *old = m->nodes[cur].slot;
    m->nodes[cur].slot = slot;
    return 0;
}

int cidr_map_remove(cidr_map *m, const cidr *c0)
{
    cidr c = normalise(c0);
    uint32_t cur = c.family == AF_INET ? 0 : 1;
    for (int i = 0; i < c.prefix; i++) {
        cur = m->nodes[cur].child[bit(c.addr, i)];
        if (!cur)
            return -1;
    }
    int old = m->nodes[cur].slot;
    m->nodes[cur].slot = -1; /* nodes stay: maps are small and rarely shrink */
    return old;
}

int cidr_map_lookup(const cidr_map *m, const cidr *c0)
{
    cidr c = normalise(c0);
    uint32_t cur = c.family == AF_INET ? 0 : 1;
    int best = m->nodes[cur].slot;
    for (int i = 0; i < c.prefix; i++) {
        cur = m->nodes[cur].child[bit(c.addr, i)];
        if (!cur)
            break;
        if (m->nodes[cur].slot >= 0)
            best = m->nodes[cur].slot;
    }
    return best;
}

/* Strict: an address or a block without host bits. */
static int parse_strict(const char *s, cidr *out, char *err, size_t errlen)
{
    if (s[0] == '[' || cidr_parse(s, out) != 0) {
        snprintf(err, errlen, "%s is not a valid CIDR", s);
        return KERR_PARSE;
    }
    int bits = out->family == AF_INET ? 32 : 128;
    bool host = false;
    for (int i = out->prefix; i < bits; i++)
        host |= bit(out->addr, i);
    if (host) {
        cidr fixed = *out;
        for (int i = out->prefix; i < bits; i++)
            fixed.addr[i / 8] &= (uint8_t) ~(1u << (7 - i % 8));
        char a[INET6_ADDRSTRLEN];
        inet_ntop(out->family, fixed.addr, a, sizeof(a));
        snprintf(err, errlen,
                 "%s is not a valid CIDR: host part of address was not zero. Did you mean "
                 "%s/%d?",
                 s, a, out->prefix);
        return KERR_PARSE;
    }
    return 0;
}

int cidr_map_parse_key(const char *s0, size_t len, cidr *out, char *err, size_t errlen)
{
    char s[128];
    if (len == 0 || len >= sizeof(s) || memchr(s0, 0, len)) {
        snprintf(err, errlen, "'%.*s' is not a valid CIDR", (int)(len < 60 ? len : 60), s0);
        return KERR_PARSE;
    }
    memcpy(s, s0, len);
    s[len] = 0;
    char why[256];
    if (parse_strict(s, out, why, sizeof(why)) == 0)
        return 0;
    if (strstr(why, "host part")) {
        snprintf(err, errlen, "%s", why);
        return KERR_PARSE;
    }
    char ip[128];
    const char *what;
    if (s[0] == '[' && strchr(s, ']')) {
        size_t n = (size_t)(strchr(s, ']') - s - 1);
        memcpy(ip, s + 1, n);
        ip[n] = 0;
        what = "[]-enclosed";
    } else if (strrchr(s, ':')) {
        size_t n = (size_t)(strrchr(s, ':') - s);
        memcpy(ip, s, n);
        ip[n] = 0;
        what = ":-delimited";
    } else {
        snprintf(err, errlen, "%s", why);
        return KERR_PARSE;
    }
    if (parse_strict(ip, out, why, sizeof(why)) != 0) {
        snprintf(err, errlen, "failed to parse '%s', the %s portion of '%s', as an IP address: %s",
                 ip, what, s, why);
        return KERR_PARSE;
    }
    return 0;
}
