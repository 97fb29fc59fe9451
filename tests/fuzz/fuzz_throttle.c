/* libFuzzer harness for src/core/throttle.c: throttle specs
 * ("local:5,000/hour,max_burst=10") and the GCRA limiter over them. The
 * input is a spec, optionally followed by a 0xFF byte and 8-byte clock
 * readings. A spec that parses has a positive limit and period; taking
 * tokens at any clock readings (including the ends of int64) never
 * overflows (UBSan) and answers a wait that is not negative. */
#include <stdint.h>

#include "core/kerr.h"
#include "core/throttle.h"
#include "support/fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *sep = memchr(data, 0xFF, size);
    size_t spec_len = sep ? (size_t)(sep - data) : size;
    char *s = fuzz_cstr(data, spec_len);
    throttle_spec spec;
    int rc = throttle_spec_parse(s, &spec);
    FUZZ_CHECK(rc == 0 || rc == KERR_PARSE, "rc %d", rc);
    if (rc == 0) {
        FUZZ_CHECK(spec.limit > 0 && spec.period_ns > 0, "'%s': limit %llu period %lld", s,
                   (unsigned long long)spec.limit, (long long)spec.period_ns);
        throttle_state st = {0};
        const uint8_t *p = sep ? sep + 1 : data + size;
        const uint8_t *end = data + size;
        int64_t now = 1;
        for (int i = 0; i < 64; i++) {
            if (end - p >= 8) {
                uint64_t u;
                memcpy(&u, p, 8);
                now = (int64_t)u;
                p += 8;
            }
            int64_t wait = throttle_take(&st, &spec, now);
            FUZZ_CHECK(wait >= 0, "negative wait %lld", (long long)wait);
        }
    }
    free(s);
    return 0;
}
