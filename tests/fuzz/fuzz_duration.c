/* libFuzzer harness for src/core/duration.c: humantime durations, byte
 * sizes and percentages as policies write them ("5m", "20 MiB", "10%").
 * Any input parses or fails with an error code; a duration that parses
 * formats back into text that parses to the same value. */
#include <stdint.h>

#include "core/duration.h"
#include "core/kerr.h"
#include "support/fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = fuzz_cstr(data, size);
    int64_t ns;
    int rc = duration_parse(s, &ns);
    FUZZ_CHECK(rc == 0 || rc == KERR_PARSE || rc == KERR_RANGE, "duration_parse rc %d", rc);
    if (rc == 0) {
        char buf[256];
        size_t need = duration_format(ns, buf, sizeof(buf));
        FUZZ_CHECK(need < sizeof(buf), "format of %lld needs %zu", (long long)ns, need);
        if (ns >= 0) {
            int64_t again;
            int rc2 = duration_parse(buf, &again);
            FUZZ_CHECK(rc2 == 0 && again == ns, "'%s' -> %lld -> '%s' -> rc %d %lld", s,
                       (long long)ns, buf, rc2, (long long)again);
        }
        /* a short buffer truncates like snprintf and reports the same need */
        char small[5];
        FUZZ_CHECK(duration_format(ns, small, sizeof(small)) == need, "short format");
        FUZZ_CHECK(strlen(small) == (need < 4 ? need : 4), "truncated length");
    }
    uint64_t sz;
    rc = size_parse(s, &sz);
    FUZZ_CHECK(rc == 0 || rc == KERR_PARSE, "size_parse rc %d", rc);
    double pct;
    rc = percent_parse(s, &pct);
    FUZZ_CHECK(rc == 0 || rc == KERR_PARSE, "percent_parse rc %d", rc);
    free(s);
    return 0;
}
