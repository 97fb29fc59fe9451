/* libFuzzer harness for src/net/cidr.c: relay_hosts / trusted_hosts
 * entries ("10.0.0.0/8", "[::1]/128"). The input is an entry, optionally
 * followed by a 0xFF byte and an address to match. An entry that parses
 * has a prefix within its family's width that is the number written after
 * '/', and its own address matches it. Matching an arbitrary string never
 * crashes. */
#include <arpa/inet.h>
#include <ctype.h>
#include <stdint.h>

#include "core/kerr.h"
#include "net/cidr.h"
#include "support/fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = fuzz_cstr(data, size);
    char *f[2];
    fuzz_fields(s, size, (char)0xFF, f, 2);
    cidr c;
    int rc = cidr_parse(f[0], &c);
    FUZZ_CHECK(rc == 0 || rc == KERR_PARSE, "rc %d", rc);
    if (rc == 0) {
        int width = c.family == AF_INET ? 32 : 128;
        FUZZ_CHECK(c.family == AF_INET || c.family == AF_INET6, "family %d", c.family);
        FUZZ_CHECK(c.prefix >= 0 && c.prefix <= width, "'%s': prefix %d", f[0], c.prefix);
        const char *slash = strrchr(f[0], '/');
        if (slash) {
            /* the prefix is the number written, not that number modulo 2^32 */
            const char *d = slash + 1;
            while (isspace((unsigned char)*d))
                d++;
            if (*d == '+' || *d == '-')
                d++;
            while (*d == '0')
                d++;
            size_t digits = strspn(d, "0123456789");
            FUZZ_CHECK(digits <= 3, "'%s' parsed with prefix %d", f[0], c.prefix);
        }
        char text[INET6_ADDRSTRLEN];
        FUZZ_CHECK(inet_ntop(c.family, c.addr, text, sizeof(text)) != NULL, "ntop");
        cidr_list l = {0};
        FUZZ_CHECK(cidr_list_add(&l, f[0]) == 0, "list_add of '%s' failed", f[0]);
        FUZZ_CHECK(cidr_list_match_str(&l, text), "'%s' does not match its own address %s", f[0],
                   text);
        cidr_list_match_str(&l, f[1]);
        cidr_list_fini(&l);
    }
    free(s);
    return 0;
}
