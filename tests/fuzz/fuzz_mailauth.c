/* libFuzzer harness for DKIM verification (src/msg/dkim_verify.c): any
 * bytes go through the key-record parser (a key, or a result with a
 * reason) and, as a whole message, through the verification of each of
 * its DKIM-Signature fields against a fixed Ed25519 key record and against
 * the input itself taken as a key record: every outcome is a known result
 * with a reason (none for pass), never a crash; header.b is NUL-terminated
 * and fits its buffer.
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -Isrc \
 *     tests/fuzz/fuzz_mailauth.c src/msg/dkim_verify.c src/msg/dkim.c \
 *     src/msg/dkim_canon.c src/msg/headers.c src/core/kerr.c -lcrypto -o fuzz_mailauth
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "msg/dkim_verify.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char ED_KEY[] = "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *s = (const char *)data;
    char err[256] = "";
    dkim_pubkey *k = NULL;
    int r = dkim_pubkey_parse(s, size, &k, err, sizeof(err));
    if (r == 0) {
        if (!k)
            abort();
        dkim_pubkey_free(k);
    } else if (k || !err[0] || (r != DKIM_PERMERROR && r != DKIM_TEMPERROR)) {
        abort();
    }

    hdr_index ix;
    if (hdr_index_build(s, size, &ix) != 0)
        return 0;
    static dkim_sig sigs[DKIM_MAX_VERIFY];
    const dkim_sig *ok[DKIM_MAX_VERIFY];
    size_t nok = 0;
    const char *recs[2] = {ED_KEY, s};
    size_t lens[2] = {sizeof(ED_KEY) - 1, size};
    for (size_t i = 0; i < ix.n && nok < DKIM_MAX_VERIFY; i++) {
        if (!hdr_name_eq(&ix.fields[i], "DKIM-Signature"))
            continue;
        dkim_sig *sig = &sigs[nok];
        if (dkim_sig_parse_field(&ix.fields[i], sig, err, sizeof(err)) != 0)
            continue;
        ok[nok++] = sig;
        char name[300], reason[256];
        (void)dkim_key_name(sig, name, sizeof(name));
        r = dkim_verify_field(s, size, &ix, &ix.fields[i], sig, recs, lens, 2, 1700000000, reason,
                              sizeof(reason));
        if (r < DKIM_PASS || r > DKIM_NONE || (r == DKIM_PASS) != (reason[0] == 0))
            abort();
    }
    for (size_t i = 0; i < nok; i++) {
        char b[16];
        dkim_header_b(ok, nok, i, b, sizeof(b));
        if (strlen(b) >= sizeof(b))
            abort();
    }
    hdr_index_fini(&ix);
    return 0;
}
