/* libFuzzer harness for src/lua/lib/timefmt.c: any text parses as RFC 3339
 * or RFC 2822 or fails with KERR_PARSE; whatever parses formats back (RFC 3339 round-trips
 * to the same instant), and any text works as a strftime format string
 * within the bounds snprintf semantics promise.
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -Isrc \
 *     tests/fuzz/fuzz_timefmt.c src/lua/lib/timefmt.c \
 *     src/core/kerr.c -o fuzz_timefmt
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/kerr.h"
#include "lua/lib/timefmt.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *s = (const char *)data;
    int64_t sec;
    int32_t nsec;
    char buf[256];
    if (timefmt_parse_rfc3339(s, size, &sec, &nsec) == 0) {
        size_t n = timefmt_format(sec, nsec, "%Y-%m-%dT%H:%M:%S%.f+00:00", buf, sizeof(buf));
        int64_t sec2;
        int32_t nsec2;
        if (n >= sizeof(buf) || timefmt_parse_rfc3339(buf, n, &sec2, &nsec2) != 0 || sec2 != sec ||
            nsec2 != nsec)
            abort();
    }
    if (timefmt_parse_rfc2822(s, size, &sec, &nsec) == 0 && (nsec != 0))
        abort();
    /* the input as a format string, for an instant taken from its first bytes */
    char *fmt = malloc(size + 1);
    memcpy(fmt, data, size);
    fmt[size] = 0;
    int64_t t = 0;
    for (size_t i = 0; i < size && i < 5; i++)
        t = t * 256 + data[i];
    size_t need = timefmt_format(t - 500000000000LL, 123456789, fmt, buf, sizeof(buf));
    char *big = malloc(need + 1);
    if (timefmt_format(t - 500000000000LL, 123456789, fmt, big, need + 1) != need ||
        strlen(big) > need)
        abort();
    if (need < sizeof(buf) && strcmp(buf, big) != 0)
        abort();
    free(big);
    free(fmt);
    return 0;
}
