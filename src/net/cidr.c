/* CIDR parsing and matching. IPv4-mapped IPv6 peers (::ffff:a.b.c.d) match
 * IPv4 entries. Pure; any thread. */
#include "net/cidr.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/kerr.h"

int cidr_parse(const char *s, cidr *out)
{
    char buf[80];
    size_t n = strlen(s);
    if (n == 0 || n >= sizeof(buf))
        return KERR_PARSE;
    if (s[0] == '[' && n > 2) {
        /* [addr] or [addr]/len */
        const char *close = strchr(s, ']');
        if (!close)
            return KERR_PARSE;
        snprintf(buf, sizeof(buf), "%.*s%s", (int)(close - s - 1), s + 1, close + 1);
    } else {
        memcpy(buf, s, n + 1);
    }
    char *slash = strchr(buf, '/');
    int prefix = -1;
    if (slash) {
        *slash = 0;
        char *end;
        long p = strtol(slash + 1, &end, 10);
        /* range-checked before the narrowing: "/4294967297" is not "/1" */
        if (*end || slash[1] == 0 || p < 0 || p > 128)
            return KERR_PARSE;
        prefix = (int)p;
    }
    memset(out, 0, sizeof(*out));
    if (inet_pton(AF_INET, buf, out->addr) == 1) {
        out->family = AF_INET;
        if (prefix < 0)
            prefix = 32;
        if (prefix > 32)
            return KERR_PARSE;
    } else if (inet_pton(AF_INET6, buf, out->addr) == 1) {
        out->family = AF_INET6;
        if (prefix < 0)
            prefix = 128;
        if (prefix > 128)
            return KERR_PARSE;
    } else {
        return KERR_PARSE;
    }
    out->prefix = prefix;
    return 0;
}

int cidr_list_add(cidr_list *l, const char *s)
{
    cidr c;
    int rc = cidr_parse(s, &c);
    if (rc)
        return rc;
    cidr *n = realloc(l->items, (l->n + 1) * sizeof(cidr));
    if (!n)
        return KERR_NOMEM;
    l->items = n;
    l->items[l->n++] = c;
    return 0;
}

int cidr_list_from_json(const json_t *j, cidr_list *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    if (json_is_string(j)) {
        if (cidr_list_add(out, json_string_value(j)) != 0) {
            snprintf(err, errlen, "invalid address or CIDR '%s'", json_string_value(j));
            return KERR_PARSE;
        }
        return 0;
    }
    if (json_is_object(j) && json_object_size(j) == 0)
        return 0; /* an empty Lua table */
    if (!json_is_array(j)) {
        snprintf(err, errlen, "expected a list of addresses or CIDR blocks");
        return KERR_PARSE;
    }
    size_t i;
    json_t *v;
    json_array_foreach(j, i, v) {
        const char *s = json_string_value(v);
        if (!s || cidr_list_add(out, s) != 0) {
            snprintf(err, errlen, "invalid address or CIDR '%s'", s ? s : "(not a string)");
            cidr_list_fini(out);
            return KERR_PARSE;
        }
    }
    return 0;
}

void cidr_list_fini(cidr_list *l)
{
    free(l->items);
    l->items = NULL;
    l->n = 0;
}

static bool prefix_eq(const uint8_t *a, const uint8_t *b, int bits)
{
    int bytes = bits / 8, rem = bits % 8;
    if (memcmp(a, b, (size_t)bytes) != 0)
        return false;
    if (rem == 0)
        return true;
    uint8_t mask = (uint8_t)(0xff << (8 - rem));
    return (a[bytes] & mask) == (b[bytes] & mask);
}

static bool match_raw(const cidr_list *l, int family, const uint8_t *addr)
{
    for (size_t i = 0; i < l->n; i++) {
        const cidr *c = &l->items[i];
        if (c->family == family && prefix_eq(c->addr, addr, c->prefix))
            return true;
    }
    return false;
}

bool cidr_list_match(const cidr_list *l, const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        return match_raw(l, AF_INET, (const uint8_t *)&in->sin_addr);
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        const uint8_t *a = (const uint8_t *)&in6->sin6_addr;
        if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr) && match_raw(l, AF_INET, a + 12))
            return true;
        return match_raw(l, AF_INET6, a);
    }
    return false;
}

bool cidr_list_match_str(const cidr_list *l, const char *ip)
{
    uint8_t a[16];
    if (inet_pton(AF_INET, ip, a) == 1)
        return match_raw(l, AF_INET, a);
    if (inet_pton(AF_INET6, ip, a) == 1)
        return match_raw(l, AF_INET6, a);
    return false;
}
