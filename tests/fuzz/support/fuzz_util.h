/* Small helpers shared by the libFuzzer harnesses in tests/fuzz: turning
 * the fuzzer's bytes into NUL-terminated strings and fields, and a check
 * that aborts with a message (libFuzzer reports the abort as a crash and
 * saves the input). Header-only; nothing here is part of kumod. */
#ifndef KUMOD_FUZZ_UTIL_H
#define KUMOD_FUZZ_UTIL_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* Aborts with file, line and the failed property. */
#define FUZZ_CHECK(cond, ...)                                                                      \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: property failed: %s: ", __FILE__, __LINE__, #cond);            \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* A NUL-terminated copy of the input (interior NULs stay and end the C
 * string early, as they would for a parser fed a C string). */
static inline char *fuzz_cstr(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    if (!s)
        abort();
    memcpy(s, data, size);
    s[size] = 0;
    return s;
}

/* Splits a NUL-terminated copy in place at every `sep` byte into at most
 * max fields; missing fields are "". Returns the number found. */
static inline size_t fuzz_fields(char *s, size_t len, char sep, char **out, size_t max)
{
    size_t n = 0;
    for (size_t i = 0; i < max; i++)
        out[i] = "";
    if (max == 0)
        return 0;
    out[n++] = s;
    for (size_t i = 0; i < len && n < max; i++) {
        if (s[i] == sep) {
            s[i] = 0;
            out[n++] = s + i + 1;
        }
    }
    return n;
}

/* Well-formed UTF-8 (RFC 3629: no overlongs, no surrogates, <= U+10FFFF). */
static inline bool fuzz_utf8_ok(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        unsigned c = p[i];
        size_t k;
        unsigned min;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            k = 1, min = 0x80, c &= 0x1F;
        } else if ((c & 0xF0) == 0xE0) {
            k = 2, min = 0x800, c &= 0x0F;
        } else if ((c & 0xF8) == 0xF0) {
            k = 3, min = 0x10000, c &= 0x07;
        } else {
            return false;
        }
        if (i + k >= n)
            return false;
        for (size_t j = 1; j <= k; j++) {
            if ((p[i + j] & 0xC0) != 0x80)
                return false;
            c = (c << 6) | (p[i + j] & 0x3F);
        }
        if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
            return false;
        i += k + 1;
    }
    return true;
}

#endif
