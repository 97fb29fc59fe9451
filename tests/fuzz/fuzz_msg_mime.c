/* libFuzzer harness for src/msg/mime.c: any bytes parse (malformed MIME
 * degrades, never fails), serialise, decode every body and parameter, and
 * rebuild into a message whose re-parse has no 8-bit or line-ending issue.
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -Isrc \
 *     tests/fuzz/fuzz_msg_mime.c src/msg/mime*.c src/msg/rfc2047.c \
 *     src/msg/datetime.c src/core/kerr.c -luuid -o fuzz_msg_mime */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "msg/mime.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void walk(const mpart *p, int depth)
{
    size_t len;
    bool text;
    free(mpart_body_decoded(p, &len, &text));
    for (size_t i = 0; i < p->nh; i++) {
        char *v = mpart_hdr_value(p, i);
        mparams mp;
        if (v && mparams_parse(v, strlen(v), &mp) == 0) {
            free(mparams_format(&mp));
            mparams_fini(&mp);
        }
        free(v);
    }
    for (size_t i = 0; i < p->nkids && depth < 64; i++)
        walk(p->kids[i], depth + 1);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    mpart *p;
    if (mpart_parse((const char *)data, size, &p) != 0)
        return 0;
    walk(p, 0);
    size_t len;
    free(mpart_serialize(p, &len));
    mpart *q = mpart_rebuild(p, NULL);
    if (q) {
        char *out = mpart_serialize(q, &len);
        mpart *r;
        if (out && mpart_parse(out, len, &r) == 0) {
            if (mpart_conformance(r) &
                (MCONF_NEEDS_TRANSFER_ENCODING | MCONF_NON_CANONICAL_LINE_ENDINGS))
                abort();
            mpart_unref(r);
        }
        free(out);
        mpart_unref(q);
    }
    mpart_unref(p);
    return 0;
}
