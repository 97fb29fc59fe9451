/* libFuzzer harness for src/msg/headers.c and src/msg/rfc2047.c: any bytes
 * give a header index that agrees with hdr_next, edits that keep the rest
 * of the message, and decoded values that are valid UTF-8.
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -Isrc \
 *     tests/fuzz/fuzz_msg_headers.c src/msg/headers.c src/msg/rfc2047.c \
 *     src/core/kerr.c -o fuzz_msg_headers */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "msg/headers.h"
#include "msg/rfc2047.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *d = (const char *)data;
    hdr_index ix;
    if (hdr_index_build(d, size, &ix) != 0)
        return 0;
    size_t pos = 0, k = 0;
    hdr_field f;
    while (hdr_next(d, size, &pos, &f)) {
        if (k >= ix.n || ix.fields[k].start != f.start || ix.fields[k].end != f.end)
            abort();
        char *v = hdr_value(&f);
        size_t dl;
        char *u = v ? rfc2047_decode(v, strlen(v), &dl) : NULL;
        if (u && !utf8_valid(u, dl))
            abort();
        char *e = u ? rfc2047_encode(u, dl) : NULL;
        free(e);
        free(u);
        free(v);
        k++;
    }
    if (k != ix.n || ix.block_len != hdr_block_len(d, size))
        abort();
    bool *drop = calloc(ix.n + 1, 1);
    for (size_t i = 0; i < ix.n; i++)
        drop[i] = i % 2;
    size_t ol;
    free(hdr_index_remove(&ix, d, size, drop, &ol));
    free(hdr_index_insert(&ix, d, size, true, "X: y\r\n", 6, &ol));
    free(drop);
    hdr_index_fini(&ix);
    return 0;
}
