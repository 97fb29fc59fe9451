/* libFuzzer harness for src/core/jsonw.c, the compact JSON writer the log
 * and spool paths use instead of json_dumps. Any input that jansson parses
 * must come out byte for byte as json_dumps(JSON_COMPACT |
 * JSON_ENCODE_ANY) writes it; the text must parse back to an equal value. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/jsonw.h"
#include "support/fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    json_error_t e;
    json_t *v = json_loadb((const char *)data, size, JSON_DECODE_ANY | JSON_ALLOW_NUL, &e);
    if (!v)
        return 0;
    char *want = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    size_t len = 0;
    char *got = jsonw_dumps(v, &len);
    FUZZ_CHECK(want && got, "dump failed: jansson %p writer %p", (void *)want, (void *)got);
    FUZZ_CHECK(strcmp(want, got) == 0 && len == strlen(want), "jansson '%s' writer '%s'", want,
               got);
    json_t *back = json_loadb(got, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &e);
    FUZZ_CHECK(back && json_equal(back, v), "'%s' does not read back: %s", got, e.text);
    json_decref(back);
    free(want);
    free(got);
    json_decref(v);
    return 0;
}
