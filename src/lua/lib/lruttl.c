/* LRU + TTL index (see lruttl.h): entries in one array of capacity slots,
 * a doubly linked recency list through them, and a chained hash table
 * (power-of-two buckets, at least twice the capacity) over the keys. The
 * keys are copied. Pure; one thread. */
#include "lua/lib/lruttl.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define NIL ((size_t)-1)

struct entry {
    char *key; /* NULL: free slot */
    size_t len;
    uint64_t hash;
    int64_t expires;
    size_t prev, next; /* recency: head is the most recent */
    size_t hnext;      /* hash chain */
};

struct lruttl {
    struct entry *e;
    size_t cap, used;
    size_t *buckets;
    size_t nbuckets;
    size_t head, tail;
    size_t free_hint;
    uint64_t evictions;
};

static uint64_t hash(const char *s, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 0x100000001b3ull;
    }
    return h ^ (h >> 29);
}

lruttl *lruttl_new(size_t capacity)
{
    if (capacity == 0)
        capacity = 1;
    lruttl *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->cap = capacity;
    c->nbuckets = 16;
    while (c->nbuckets < capacity * 2)
        c->nbuckets *= 2;
    c->e = calloc(capacity, sizeof(*c->e));
    c->buckets = malloc(c->nbuckets * sizeof(size_t));
    if (!c->e || !c->buckets) {
        free(c->e);
        free(c->buckets);
        free(c);
        return NULL;
    }
    for (size_t i = 0; i < c->nbuckets; i++)
        c->buckets[i] = NIL;
    c->head = c->tail = NIL;
    return c;
}

void lruttl_free(lruttl *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->cap; i++)
        free(c->e[i].key);
    free(c->e);
    free(c->buckets);
    free(c);
}

static void unlink_lru(lruttl *c, size_t i)
{
    struct entry *x = &c->e[i];
    if (x->prev != NIL)
        c->e[x->prev].next = x->next;
    else
        c->head = x->next;
    if (x->next != NIL)
        c->e[x->next].prev = x->prev;
    else
        c->tail = x->prev;
}

static void push_front(lruttl *c, size_t i)
{
    c->e[i].prev = NIL;
    c->e[i].next = c->head;
    if (c->head != NIL)
        c->e[c->head].prev = i;
    c->head = i;
    if (c->tail == NIL)
        c->tail = i;
}

static size_t find(const lruttl *c, const char *key, size_t len, uint64_t h)
{
    for (size_t i = c->buckets[h & (c->nbuckets - 1)]; i != NIL; i = c->e[i].hnext)
        if (c->e[i].hash == h && c->e[i].len == len && memcmp(c->e[i].key, key, len) == 0)
            return i;
    return NIL;
}

/* Removes entry i from the hash and the recency list; its slot is free. */
static void drop(lruttl *c, size_t i)
{
    size_t *pp = &c->buckets[c->e[i].hash & (c->nbuckets - 1)];
    while (*pp != i)
        pp = &c->e[*pp].hnext;
    *pp = c->e[i].hnext;
    unlink_lru(c, i);
    free(c->e[i].key);
    c->e[i].key = NULL;
    c->used--;
    c->free_hint = i;
}

long lruttl_get(lruttl *c, const char *key, size_t len, int64_t now)
{
    uint64_t h = hash(key, len);
    size_t i = find(c, key, len, h);
    if (i == NIL)
        return -1;
    if (c->e[i].expires <= now) {
        drop(c, i);
        return -1;
    }
    unlink_lru(c, i);
    push_front(c, i);
    return (long)i;
}

long lruttl_put(lruttl *c, const char *key, size_t len, int64_t expires)
{
    uint64_t h = hash(key, len);
    size_t i = find(c, key, len, h);
    if (i != NIL) {
        c->e[i].expires = expires;
        unlink_lru(c, i);
        push_front(c, i);
        return (long)i;
    }
    char *copy = malloc(len ? len : 1);
    if (!copy)
        return -1;
    memcpy(copy, key, len);
    if (c->used == c->cap) {
        c->evictions++;
        drop(c, c->tail);
    }
    i = c->free_hint;
    if (c->e[i].key) {
        for (i = 0; i < c->cap && c->e[i].key; i++)
            ;
    }
    struct entry *x = &c->e[i];
    x->key = copy;
    x->len = len;
    x->hash = h;
    x->expires = expires;
    size_t b = h & (c->nbuckets - 1);
    x->hnext = c->buckets[b];
    c->buckets[b] = i;
    push_front(c, i);
    c->used++;
    c->free_hint = (i + 1) % c->cap;
    return (long)i;
}

size_t lruttl_size(const lruttl *c)
{
    return c->used;
}

size_t lruttl_capacity(const lruttl *c)
{
    return c->cap;
}

uint64_t lruttl_evictions(const lruttl *c)
{
    return c->evictions;
}
