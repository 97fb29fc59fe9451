/* libFuzzer harness for src/msg/headers.c, the header block functions
 * behind the Message header methods: any bytes as a message. Checks:
 * fields come out in order, inside the header block, without overlap;
 * every value unfolds; a field prepended or appended with an arbitrary
 * value (no CR/LF) reads back as exactly that value; removing a name
 * leaves no field of that name and every other field as it was. */
#include <stdint.h>
#include <strings.h>

#include "msg/headers.h"
#include "support/fuzz_util.h"

#define NAME "X-Fuzz-Check"

/* The input is a value (up to the first 0xFF byte) and a message. */
int LLVMFuzzerTestOneInput(const uint8_t *in, size_t size)
{
    const uint8_t *sep = memchr(in, 0xFF, size);
    char *value = fuzz_cstr(in, sep ? (size_t)(sep - in) : 0);
    const char *data = sep ? (const char *)sep + 1 : (const char *)in;
    size_t len = sep ? size - (size_t)(sep + 1 - in) : size;
    /* a value that can go into a header: no line breaks, no leading WSP
     * (both are the caller's business: the Lua methods refuse them) */
    for (char *p = value; *p; p++)
        if (*p == '\r' || *p == '\n')
            *p = ' ';
    const char *v = value + strspn(value, " \t");

    size_t block = hdr_block_len(data, len);
    FUZZ_CHECK(block <= len, "block %zu > len %zu", block, len);
    size_t pos = 0, last_end = 0, n_fields = 0;
    hdr_field f;
    while (hdr_next(data, len, &pos, &f)) {
        FUZZ_CHECK(f.start >= last_end && f.start < f.end && f.end <= block,
                   "field [%zu,%zu) after %zu, block %zu", f.start, f.end, last_end, block);
        FUZZ_CHECK(f.raw == data + f.start && f.raw_len <= f.end - f.start, "raw");
        FUZZ_CHECK(f.name == data + f.start && f.name_len <= f.raw_len, "name");
        FUZZ_CHECK(pos == f.end, "pos");
        char *val = hdr_value(&f);
        FUZZ_CHECK(val != NULL, "hdr_value");
        FUZZ_CHECK(strlen(val) <= f.raw_len, "value longer than the field");
        free(val);
        last_end = f.end;
        n_fields++;
    }
    FUZZ_CHECK(n_fields <= len, "fields");
    free(hdr_get_first(data, len, "Subject"));

    size_t ol;
    /* A message whose header block starts with a continuation line (or is
     * only that) would make it ours: the property holds for the rest. */
    bool clean_start = len == 0 || (data[0] != ' ' && data[0] != '\t');
    char *out = hdr_prepend(data, len, NAME, v, &ol);
    FUZZ_CHECK(out != NULL, "prepend");
    if (clean_start) {
        char *got = hdr_get_first(out, ol, NAME);
        FUZZ_CHECK(got && strcmp(got, v) == 0, "prepended '%s' read back as '%s'", v,
                   got ? got : "(none)");
        free(got);
    }
    free(out);

    out = hdr_append(data, len, NAME, v, &ol);
    FUZZ_CHECK(out != NULL, "append");
    if (clean_start) {
        char *got = NULL;
        pos = 0;
        while (hdr_next(out, ol, &pos, &f)) {
            if (hdr_name_eq(&f, NAME)) {
                free(got);
                got = hdr_value(&f);
            }
        }
        FUZZ_CHECK(got && strcmp(got, v) == 0, "appended '%s' read back as '%s'", v,
                   got ? got : "(none)");
        free(got);
    }
    free(out);

    for (int prefix = 0; prefix < 2; prefix++) {
        const char *name = prefix ? "X-" : "Subject";
        out = hdr_remove(data, len, name, prefix, &ol);
        FUZZ_CHECK(out != NULL && ol <= len, "remove");
        size_t p2 = 0, kept = 0;
        while (hdr_next(out, ol, &p2, &f)) {
            bool match = prefix ? f.name_len >= 2 && strncasecmp(f.name, "X-", 2) == 0
                                : hdr_name_eq(&f, name);
            FUZZ_CHECK(!match, "a %s field survived its removal", name);
            kept++;
        }
        FUZZ_CHECK(kept <= n_fields, "removal made fields: %zu > %zu", kept, n_fields);
        free(out);
    }
    free(value);
    return 0;
}
