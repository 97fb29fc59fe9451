/* A growable byte buffer for parsers and builders. Sized by their
 * input, so allocation is fallible: a failed growth sets oom, later appends
 * do nothing, and sbuf_finish returns NULL. The bytes are always
 * NUL-terminated once anything was appended. Header-only (static inline). */
#ifndef KUMOD_CORE_SBUF_H
#define KUMOD_CORE_SBUF_H
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

typedef struct sbuf {
    char *p;
    size_t len, cap;
    bool oom;
} sbuf;

static inline bool sbuf_reserve(sbuf *b, size_t more)
{
    if (b->oom)
        return false;
    if (b->len + more + 1 <= b->cap)
        return true;
    size_t ncap = b->cap ? b->cap : 64;
    while (ncap < b->len + more + 1) {
        if (ncap > ((size_t)-1) / 2) {
            b->oom = true;
            return false;
        }
        ncap *= 2;
    }
    char *np = realloc(b->p, ncap);
    if (!np) {
        b->oom = true;
        return false;
    }
    b->p = np;
    b->cap = ncap;
    return true;
}

static inline void sbuf_put(sbuf *b, const void *s, size_t n)
{
    if (!sbuf_reserve(b, n))
        return;
    if (n)
        memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}

static inline void sbuf_puts(sbuf *b, const char *s)
{
    sbuf_put(b, s, strlen(s));
}

static inline void sbuf_putc(sbuf *b, char c)
{
    sbuf_put(b, &c, 1);
}

/* Returns the malloc'd bytes (an empty string when nothing was appended),
 * or NULL after an allocation failure; the buffer is reset either way. */
static inline char *sbuf_finish(sbuf *b, size_t *len)
{
    if (!b->oom && !b->p)
        sbuf_reserve(b, 0);
    if (b->oom) {
        free(b->p);
        b->p = NULL;
        b->len = b->cap = 0;
        b->oom = false;
        return NULL;
    }
    b->p[b->len] = 0;
    char *p = b->p;
    if (len)
        *len = b->len;
    b->p = NULL;
    b->len = b->cap = 0;
    return p;
}

static inline void sbuf_fini(sbuf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
    b->oom = false;
}

#endif
