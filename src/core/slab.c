#include "core/slab.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__SANITIZE_ADDRESS__)
#define SLAB_PASSTHROUGH 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SLAB_PASSTHROUGH 1
#endif
#endif
#ifndef SLAB_PASSTHROUGH
#define SLAB_PASSTHROUGH 0
#endif

#define CHUNK_BYTES (64u * 1024u)

struct chunk {
    struct chunk *next;
};

struct slab {
    pthread_mutex_t mu;
    size_t size;        /* object size, aligned */
    size_t per_chunk;   /* objects per chunk */
    void *free_list;    /* freed objects, linked through their first word */
    char *fresh;        /* untouched objects of the newest chunk */
    size_t fresh_left;
    struct chunk *chunks;
    size_t n_chunks, in_use, n_free;
};

slab *slab_new(size_t obj_size)
{
    slab *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    size_t a = sizeof(void *);
    s->size = (obj_size < a ? a : obj_size + a - 1) / a * a;
    size_t hdr = (sizeof(struct chunk) + a - 1) / a * a;
    s->per_chunk = (CHUNK_BYTES - hdr) / s->size;
    if (s->per_chunk == 0)
        s->per_chunk = 1;
    pthread_mutex_init(&s->mu, NULL);
    return s;
}

void slab_free_all(slab *s)
{
    if (!s)
        return;
    for (struct chunk *c = s->chunks, *n; c; c = n) {
        n = c->next;
        free(c);
    }
    pthread_mutex_destroy(&s->mu);
    free(s);
}

static void oom(void)
{
    fputs("kumod: out of memory\n", stderr);
    abort();
}

void *slab_alloc(slab *s)
{
    if (SLAB_PASSTHROUGH) {
        void *p = calloc(1, s->size);
        if (!p)
            oom();
        pthread_mutex_lock(&s->mu);
        s->in_use++;
        pthread_mutex_unlock(&s->mu);
        return p;
    }
    void *p;
    pthread_mutex_lock(&s->mu);
    if (s->free_list) {
        p = s->free_list;
        memcpy(&s->free_list, p, sizeof(void *));
        s->n_free--;
    } else {
        if (s->fresh_left == 0) {
            size_t a = sizeof(void *);
            size_t hdr = (sizeof(struct chunk) + a - 1) / a * a;
            struct chunk *c = malloc(hdr + s->per_chunk * s->size);
            if (!c) {
                pthread_mutex_unlock(&s->mu);
                oom();
            }
            c->next = s->chunks;
            s->chunks = c;
            s->n_chunks++;
            s->fresh = (char *)c + hdr;
            s->fresh_left = s->per_chunk;
        }
        p = s->fresh;
        s->fresh += s->size;
        s->fresh_left--;
    }
    s->in_use++;
    pthread_mutex_unlock(&s->mu);
    memset(p, 0, s->size);
    return p;
}

void slab_release(slab *s, void *obj)
{
    if (!obj)
        return;
    if (SLAB_PASSTHROUGH) {
        free(obj);
        pthread_mutex_lock(&s->mu);
        s->in_use--;
        pthread_mutex_unlock(&s->mu);
        return;
    }
    pthread_mutex_lock(&s->mu);
    memcpy(obj, &s->free_list, sizeof(void *));
    s->free_list = obj;
    s->n_free++;
    s->in_use--;
    pthread_mutex_unlock(&s->mu);
}

void slab_get_stats(slab *s, slab_stats *out)
{
    pthread_mutex_lock(&s->mu);
    out->in_use = s->in_use;
    out->free = s->n_free + s->fresh_left;
    out->chunks = s->n_chunks;
    out->chunk_bytes = CHUNK_BYTES;
    pthread_mutex_unlock(&s->mu);
}
