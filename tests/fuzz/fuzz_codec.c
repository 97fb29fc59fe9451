/* libFuzzer harness for src/lua/lib/codec.c: any input decodes or fails with
 * KERR_PARSE inside the bounds codec_decoded_max promises, and whatever
 * decodes re-encodes to text that decodes to the same bytes. The first byte
 * picks the codec; the rest is the text.
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -Isrc \
 *     tests/fuzz/fuzz_codec.c src/lua/lib/codec.c src/core/kerr.c -o fuzz_codec */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/kerr.h"
#include "lua/lib/codec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    enum codec_kind kind = (enum codec_kind)(data[0] % 5);
    const char *in = (const char *)data + 1;
    size_t n = size - 1;
    uint8_t *out = malloc(codec_decoded_max(kind, n));
    size_t len = 0, pos = 0;
    int rc = codec_decode(kind, in, n, out, &len, &pos);
    if (rc != 0) {
        if (rc != KERR_PARSE || (n && pos >= n))
            abort();
        free(out);
        return 0;
    }
    if (len > codec_decoded_max(kind, n))
        abort();
    for (int pad = 0; pad < 2; pad++) {
        size_t elen = codec_encoded_len(kind, len, pad);
        char *enc = malloc(elen + 1);
        if (codec_encode(kind, out, len, enc, pad) != elen)
            abort();
        uint8_t *back = malloc(codec_decoded_max(kind, elen));
        size_t blen = 0;
        if (codec_decode(kind, enc, elen, back, &blen, NULL) != 0 || blen != len ||
            memcmp(back, out, len) != 0)
            abort();
        free(back);
        free(enc);
    }
    free(out);
    return 0;
}
