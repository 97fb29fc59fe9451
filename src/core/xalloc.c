/* The out-of-line half of core/xalloc.h. */
#include "core/xalloc.h"

#include <stdio.h>

void xalloc_fail(size_t n)
{
    fprintf(stderr, "kumod: out of memory (%zu bytes)\n", n);
    abort();
}

char *xvasprintf(const char *fmt, va_list ap)
{
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0)
        xalloc_fail(strlen(fmt));
    return s;
}

char *xasprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = xvasprintf(fmt, ap);
    va_end(ap);
    return s;
}
