/* libFuzzer harness for src/http/mime.c: arbitrary header values, bodies
 * and attachment bytes always produce a message with CRLF line ends only,
 * every header line folded, and base64 that decodes back.
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -Isrc \
 *     tests/fuzz/fuzz_mime.c src/http/mime.c src/core/kerr.c -o fuzz_mime */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "http/mime.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Splits the input at 0xFF bytes into up to 6 NUL-terminated fields. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *copy = malloc(size + 1);
    if (!copy)
        return 0;
    memcpy(copy, data, size);
    copy[size] = 0;
    char *f[6] = {"", "", "", "", "", ""};
    int nf = 0;
    f[nf++] = copy;
    for (size_t i = 0; i < size && nf < 6; i++) {
        if ((unsigned char)copy[i] == 0xFF) {
            copy[i] = 0;
            f[nf++] = copy + i + 1;
        }
    }
    char *mb = mime_mailbox(f[3], "user@example.com");
    mime_header hs[] = {{"Subject", f[0], false}, {"X-Other", f[1], false},
                        {"From", mb ? mb : "x@y", true}};
    mime_attachment att[] = {{(const unsigned char *)f[4], strlen(f[4]), "application/x-test",
                              f[5], NULL},
                             {(const unsigned char *)f[5], strlen(f[5]), "image/png", NULL,
                              "cid@x"}};
    mime_spec s = {.text = f[2], .html = nf > 3 ? f[3] : NULL, .headers = hs, .n_headers = 3,
                   .attachments = att, .n_attachments = nf > 4 ? 2 : 0};
    size_t len;
    char err[200];
    char *m = mime_build(&s, &len, err, sizeof(err));
    if (!m)
        abort();
    for (size_t i = 0; i < len; i++) {
        if (m[i] == '\n' && (i == 0 || m[i - 1] != '\r'))
            abort();
        if (m[i] == '\r' && (i + 1 >= len || m[i + 1] != '\n'))
            abort();
    }
    free(m);
    free(mb);
    unsigned char *dec;
    size_t dl;
    if (mime_b64_decode((const char *)data, size, &dec, &dl) == 0) {
        char *enc = mime_b64_encode(dec, dl);
        unsigned char *dec2;
        size_t dl2;
        if (!enc || mime_b64_decode(enc, strlen(enc), &dec2, &dl2) != 0 || dl2 != dl ||
            memcmp(dec, dec2, dl) != 0)
            abort();
        free(dec2);
        free(enc);
        free(dec);
    }
    free(copy);
    return 0;
}
