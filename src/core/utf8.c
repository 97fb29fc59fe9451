/* UTF-8 validation; see utf8.h. Pure, any thread, allocates nothing. */
#include "core/utf8.h"

long utf8_seq(const unsigned char *s, size_t n)
{
    unsigned char b = s[0];
    if (b < 0x80)
        return 1;
    size_t need;
    unsigned char lo = 0x80, hi = 0xBF;
    if (b >= 0xC2 && b <= 0xDF)
        need = 1;
    else if (b == 0xE0)
        need = 2, lo = 0xA0; /* no overlong 3-byte forms */
    else if ((b >= 0xE1 && b <= 0xEC) || b == 0xEE || b == 0xEF)
        need = 2;
    else if (b == 0xED)
        need = 2, hi = 0x9F; /* no UTF-16 surrogates */
    else if (b == 0xF0)
        need = 3, lo = 0x90; /* no overlong 4-byte forms */
    else if (b >= 0xF1 && b <= 0xF3)
        need = 3;
    else if (b == 0xF4)
        need = 3, hi = 0x8F; /* nothing above U+10FFFF */
    else
        return -1;
    for (size_t k = 1; k <= need; k++) {
        if (k >= n || s[k] < lo || s[k] > hi)
            return -(long)k;
        lo = 0x80, hi = 0xBF;
    }
    return (long)need + 1;
}

size_t utf8_invalid_at(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        if (u[i] < 0x80) { /* the common case: ASCII runs */
            i++;
            continue;
        }
        long k = utf8_seq(u + i, n - i);
        if (k < 0)
            return i;
        i += (size_t)k;
    }
    return n;
}
