/* libFuzzer harness for src/msg/dkim.c and src/msg/dkim_canon.c: any bytes
 * go through the tag-list parser (tags stay inside the input, no duplicate
 * names), the DKIM-Signature parser (either fails with a message or gives
 * tags that point into the input, l= within range), and both body
 * canonicalizers fed whole and in two pieces (same output length and
 * total), and header canonicalization.
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -Isrc \
 *     tests/fuzz/fuzz_dkim.c src/msg/dkim.c src/msg/dkim_canon.c src/msg/headers.c \
 *     src/core/kerr.c -lcrypto -o fuzz_dkim
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/kerr.h"
#include "msg/dkim.h"
#include "msg/dkim_canon.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void count(void *ctx, const char *p, size_t n)
{
    (void)p;
    *(size_t *)ctx += n;
}

static void in_input(const char *p, size_t n, const uint8_t *data, size_t size)
{
    if ((const uint8_t *)p < data || (const uint8_t *)p + n > data + size)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *s = (const char *)data;
    dkim_tag tags[DKIM_MAX_TAGS];
    size_t n = 0;
    if (dkim_tags_parse(s, size, tags, DKIM_MAX_TAGS, &n) == 0) {
        for (size_t i = 0; i < n; i++) {
            in_input(tags[i].name, tags[i].name_len, data, size);
            in_input(tags[i].value, tags[i].value_len, data, size);
            for (size_t j = 0; j < i; j++)
                if (tags[j].name_len == tags[i].name_len &&
                    memcmp(tags[j].name, tags[i].name, tags[i].name_len) == 0)
                    abort();
        }
    }
    static dkim_sig sig;
    char err[256];
    err[0] = 0;
    if (dkim_sig_parse(s, size, &sig, err, sizeof(err)) == 0) {
        in_input(sig.d->value, sig.d->value_len, data, size);
        in_input(sig.b->value, sig.b->value_len, data, size);
        if (sig.has_l && sig.l > 999999999999999999ULL)
            abort();
    } else if (!err[0]) {
        abort();
    }
    for (int c = 0; c < 2; c++) {
        size_t a = 0, b = 0;
        dkim_bodyc x, y;
        dkim_bodyc_init(&x, (enum dkim_canon)c, UINT64_MAX, count, &a);
        dkim_bodyc_update(&x, s, size);
        dkim_bodyc_final(&x);
        dkim_bodyc_init(&y, (enum dkim_canon)c, UINT64_MAX, count, &b);
        dkim_bodyc_update(&y, s, size / 2);
        dkim_bodyc_update(&y, s + size / 2, size - size / 2);
        dkim_bodyc_final(&y);
        if (a != b || x.total != y.total || a != x.total)
            abort();
        size_t h = 0;
        dkim_canon_header((enum dkim_canon)c, s, size, true, count, &h);
        if (h > 2 * size + 2)
            abort();
    }
    return 0;
}
