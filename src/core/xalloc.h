/* Allocation that cannot fail: for kumod's own small, bounded objects
 * (queue records, names, configuration), where running out of memory
 * leaves nothing sensible to do but stop with a clear line. Input-sized
 * buffers use fallible allocation instead (core/sbuf.h). A zero size asks
 * for one byte, so a successful call never returns NULL. Any thread. */
#ifndef KUMOD_CORE_XALLOC_H
#define KUMOD_CORE_XALLOC_H
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

/* Prints "kumod: out of memory (N bytes)" to stderr and aborts. */
void xalloc_fail(size_t n) __attribute__((noreturn, cold));

static inline void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        xalloc_fail(n);
    return p;
}

static inline void *xcalloc(size_t n, size_t sz)
{
    void *p = calloc(n ? n : 1, sz ? sz : 1);
    if (!p)
        xalloc_fail(n * sz);
    return p;
}

static inline void *xrealloc(void *old, size_t n)
{
    void *p = realloc(old, n ? n : 1);
    if (!p)
        xalloc_fail(n);
    return p;
}

/* The first n bytes of s, NUL-terminated (s need not be). */
static inline char *xstrndup(const char *s, size_t n)
{
    char *p = xmalloc(n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

/* A copy of s; NULL for NULL. */
static inline char *xstrdup(const char *s)
{
    return s ? xstrndup(s, strlen(s)) : NULL;
}

char *xvasprintf(const char *fmt, va_list ap) __attribute__((format(printf, 1, 0)));
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
