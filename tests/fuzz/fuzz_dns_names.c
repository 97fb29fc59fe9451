/* libFuzzer harness for the hand-written name handling in src/net/dns.c
 * (answers themselves are parsed by c-ares): KumoMTA's site_name factoring
 * of MX host lists and the "domain:port" split. The input is a host list
 * separated by 0xFF bytes. The site name never crashes, and for one valid
 * host it is that host's name (lower case, no root dot); a split port is
 * the number written. */
#include <stdint.h>

#include "net/dns.h"
#include "support/fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = fuzz_cstr(data, size);
    char *f[8];
    size_t n = fuzz_fields(s, size, (char)0xFF, f, 8);
    const char *hosts[8];
    for (size_t i = 0; i < n; i++) {
        hosts[i] = f[i];
        size_t hl;
        uint16_t port;
        if (dns_split_port(f[i], &hl, &port)) {
            FUZZ_CHECK(hl < strlen(f[i]) && f[i][hl] == ':', "split of '%s' at %zu", f[i], hl);
            char *end;
            unsigned long v = strtoul(f[i] + hl + 1, &end, 10);
            FUZZ_CHECK(*end == 0 && v == port, "'%s': port %u", f[i], port);
        }
    }
    char *a = dns_site_name(hosts, n);
    FUZZ_CHECK(a != NULL, "site_name");
    free(a);
    /* one plain name: its own site */
    const char *h = f[0];
    size_t hl = strlen(h);
    bool plain = hl > 0 && hl < 200 && h[0] != '.' && !strstr(h, "..") &&
                 strspn(h, "abcdefghijklmnopqrstuvwxyz0123456789-.") == hl;
    for (const char *p = h, *dot; plain && (dot = strchr(p, '.')); p = dot + 1)
        plain = dot - p <= 63;
    if (plain && strlen(strrchr(h, '.') ? strrchr(h, '.') + 1 : h) <= 63) {
        char *one = dns_site_name(&h, 1);
        size_t want = h[hl - 1] == '.' ? hl - 1 : hl;
        FUZZ_CHECK(strlen(one) == want && strncmp(one, h, want) == 0, "site of '%s' is '%s'", h,
                   one);
        free(one);
    }
    free(s);
    return 0;
}
