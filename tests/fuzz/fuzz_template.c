/* libFuzzer harness for src/http/template.c: any input compiles or fails
 * with KERR_PARSE and a message, and whatever compiles renders without
 * crashing, under each dialect and with HTML escaping on and off. The
 * first byte picks the dialect and escaping; the rest is the template.
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -Isrc \
 *     tests/fuzz/fuzz_template.c src/http/template.c src/core/kerr.c \
 *     $(pkg-config --cflags --libs jansson) -o fuzz_template */
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/kerr.h"
#include "http/template.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    static json_t *vars;
    if (!vars)
        vars = json_loads("{\"name\": \"Ann\", \"n\": 3, \"l\": [1, \"<x>\", {\"k\": null}],"
                          " \"m\": {\"a\": {\"b\": [true, 2.5]}}, \"e\": \"\"}",
                          0, NULL);
    tmpl_dialect d = data[0] % 3 == 0 ? TMPL_JINJA : data[0] % 3 == 1 ? TMPL_HANDLEBARS
                                                                      : TMPL_STATIC;
    bool html = (data[0] & 4) != 0;
    tmpl *t = NULL;
    char err[400];
    int rc = tmpl_compile((const char *)data + 1, size - 1, d, "fuzz", html, &t, err,
                          sizeof(err));
    if (rc != 0) {
        if (rc != KERR_PARSE || strlen(err) == 0)
            abort();
        return 0;
    }
    size_t len;
    char *out = tmpl_render(t, vars, &len, err, sizeof(err));
    free(out);
    tmpl_free(t);
    return 0;
}
