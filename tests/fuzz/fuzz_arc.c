/* libFuzzer harness for ARC (src/msg/arc.c): any bytes, as a whole
 * message, go through the collection of its ARC sets (AAR instance parser,
 * ARC-Message-Signature and ARC-Seal tag parsers, structure checks) and
 * the validation of the chain against a fixed Ed25519 key record and the
 * input itself taken as a key record. Properties: the status is none, pass
 * or fail; fail has a reason and pass has none; none means no ARC field;
 * the oldest-pass is 0 or an instance of the chain; the AAR parser returns
 * an instance in 1..50 or an error code.
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -Isrc \
 *     tests/fuzz/fuzz_arc.c src/msg/arc.c src/msg/dkim_verify.c src/msg/dkim.c \
 *     src/msg/dkim_canon.c src/msg/headers.c src/core/kerr.c -lcrypto -o fuzz_arc
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/kerr.h"
#include "msg/arc.h"
#include "msg/dkim_verify.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char ED_KEY[] = "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";

typedef struct input {
    const char *s;
    size_t n;
} input;

static int keys(void *ctx, const dkim_sig *sig, const char *const **recs, const size_t **lens,
                size_t *n, char *reason, size_t rlen)
{
    static const char *r[2];
    static size_t l[2];
    const input *in = ctx;
    char name[300];
    if (!dkim_key_name(sig, name, sizeof(name))) {
        strncpy(reason, "bad name", rlen);
        return DKIM_PERMERROR;
    }
    r[0] = ED_KEY;
    l[0] = sizeof(ED_KEY) - 1;
    r[1] = in->s;
    l[1] = in->n;
    *recs = r;
    *lens = l;
    *n = 2;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *s = (const char *)data;
    int inst = arc_aar_instance(s, size);
    if (!(inst == KERR_PARSE || inst == KERR_RANGE || (inst >= 1 && inst <= ARC_MAX_INSTANCE)))
        abort();
    hdr_index ix;
    if (hdr_index_build(s, size, &ix) != 0)
        return 0;
    static arc_chain c;
    memset(&c, 0, sizeof(c));
    arc_collect(&ix, &c);
    input in = {s, size};
    arc_validate(&c, s, size, &ix, keys, &in, 1700000000);
    if (c.cv != ARC_CV_NONE && c.cv != ARC_CV_PASS && c.cv != ARC_CV_FAIL)
        abort();
    if ((c.cv == ARC_CV_FAIL) != (c.reason[0] != 0))
        abort();
    if (c.cv == ARC_CV_NONE && c.any)
        abort();
    if (c.oldest_pass < 0 || (size_t)c.oldest_pass > c.n || c.n > ARC_MAX_INSTANCE)
        abort();
    if (strnlen(c.reason, sizeof(c.reason)) >= sizeof(c.reason))
        abort();
    hdr_index_fini(&ix);
    return 0;
}
