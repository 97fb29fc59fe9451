/* Fixed-size object pool for the long-lived, numerous records (a queued
 * message's qmsg). Objects come from 64 KiB chunks, back to back with no
 * per-object header, and freed objects are reused before a new chunk is
 * taken. Keeping them apart from the short-lived allocations of reception
 * and delivery is what lets a million of them cost their own size, not the
 * fragments of the malloc heap they would otherwise pin.
 *
 * Thread-safe (one mutex; the critical section is a pointer swap). Chunks
 * are kept for reuse, not returned to the system. Sanitizer builds use
 * calloc/free per object so that AddressSanitizer still sees every misuse. */
#ifndef KUMOD_CORE_SLAB_H
#define KUMOD_CORE_SLAB_H
#include <stddef.h>

typedef struct slab slab;

/* obj_size is rounded up to pointer alignment. NULL on allocation failure. */
slab *slab_new(size_t obj_size);
/* Frees every chunk: only when no object is in use any more. */
void slab_free_all(slab *s);
/* A zeroed object; aborts when memory is exhausted, like xcalloc. */
void *slab_alloc(slab *s);
void slab_release(slab *s, void *obj);

typedef struct slab_stats {
    size_t in_use, free, chunks, chunk_bytes;
} slab_stats;
void slab_get_stats(slab *s, slab_stats *out);

#endif
