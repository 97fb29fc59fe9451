/* The spool's pending set; see pending.h. */
#include <stdlib.h>
#include <string.h>

#include "core/kerr.h"
#include "spool/pending.h"

static size_t slot_of(const spoolid *id, size_t mask)
{
    return (size_t)spoolid_hash(id) & mask;
}

static spool__pend_ent *lookup(const spool__pend *p, const spoolid *id)
{
    if (p->cap == 0)
        return NULL;
    size_t mask = p->cap - 1;
    for (size_t i = slot_of(id, mask);; i = (i + 1) & mask) {
        spool__pend_ent *e = &p->slots[i];
        if (e->state == PEND_FREE)
            return NULL;
        if (memcmp(e->id.b, id->b, sizeof(id->b)) == 0)
            return e;
    }
}

/* A free slot for id, which is not in the set. */
static spool__pend_ent *free_slot(spool__pend *p, const spoolid *id)
{
    size_t mask = p->cap - 1;
    size_t i = slot_of(id, mask);
    while (p->slots[i].state != PEND_FREE)
        i = (i + 1) & mask;
    return &p->slots[i];
}

int spool__pend_reserve(spool__pend *p, size_t n)
{
    /* at most half full: probes stay short */
    if ((p->count + n) * 2 <= p->cap)
        return 0;
    size_t cap = p->cap ? p->cap : 64;
    while ((p->count + n) * 2 > cap)
        cap *= 2;
    spool__pend_ent *slots = calloc(cap, sizeof(*slots));
    if (slots == NULL)
        return KERR_NOMEM;
    spool__pend old = *p;
    p->slots = slots;
    p->cap = cap;
    for (size_t i = 0; i < old.cap; i++)
        if (old.slots[i].state != PEND_FREE)
            *free_slot(p, &old.slots[i].id) = old.slots[i];
    free(old.slots);
    return 0;
}

static void ent_free_bufs(spool__pend *p, spool__pend_ent *e)
{
    p->bytes -= e->meta_len + (e->data ? e->data_len : 0);
    free(e->meta);
    free(e->data);
    e->meta = e->data = NULL;
    e->meta_len = e->data_len = 0;
}

/* Empties e's slot and moves later entries of its probe run back, so that
 * every entry stays reachable from its home slot without tombstones. */
static void ent_delete(spool__pend *p, spool__pend_ent *e)
{
    size_t mask = p->cap - 1;
    size_t hole = (size_t)(e - p->slots);
    ent_free_bufs(p, e);
    p->slots[hole].state = PEND_FREE;
    p->count--;
    for (size_t i = (hole + 1) & mask; p->slots[i].state != PEND_FREE; i = (i + 1) & mask) {
        size_t home = slot_of(&p->slots[i].id, mask);
        /* can the entry at i move to the hole? only if its home is not in
         * the cyclic range (hole, i] */
        bool stays = hole <= i ? (home > hole && home <= i) : (home > hole || home <= i);
        if (stays)
            continue;
        p->slots[hole] = p->slots[i];
        memset(&p->slots[i], 0, sizeof(p->slots[i]));
        hole = i;
    }
}

void spool__pend_save(spool__pend *p, const spoolid *id, char *meta_take, size_t meta_len,
                      char *data_take, size_t data_len, bool fresh)
{
    spool__pend_ent *e = lookup(p, id);
    if (e == NULL) {
        e = free_slot(p, id);
        *e = (spool__pend_ent){.id = *id, .state = PEND_SAVE, .fresh = fresh};
        p->count++;
    } else if (e->state == PEND_REMOVE) {
        /* saved again after its remove (not done by kumod): the stores'
         * halves are deleted, then this save is put */
        e->state = PEND_SAVE;
        e->fresh = false;
        e->drop_data = true;
    } else {
        /* a later save of the same message: the newer halves win */
        p->bytes -= e->meta_len;
        free(e->meta);
        e->meta = NULL;
        if (data_take != NULL && e->data != NULL) {
            p->bytes -= e->data_len;
            free(e->data);
            e->data = NULL;
        }
    }
    e->meta = meta_take;
    e->meta_len = meta_len;
    p->bytes += meta_len;
    if (data_take != NULL) {
        e->data = data_take;
        e->data_len = data_len;
        e->drop_data = false;
        p->bytes += data_len;
    }
}

void spool__pend_remove(spool__pend *p, const spoolid *id)
{
    spool__pend_ent *e = lookup(p, id);
    if (e == NULL) {
        e = free_slot(p, id);
        *e = (spool__pend_ent){.id = *id, .state = PEND_REMOVE};
        p->count++;
        return;
    }
    if (e->state == PEND_SAVE && e->fresh) {
        /* saved and removed within one lap: the stores never see it */
        ent_delete(p, e);
        p->drops++;
        return;
    }
    ent_free_bufs(p, e);
    e->state = PEND_REMOVE;
    e->drop_data = false;
}

void spool__pend_forget(spool__pend *p, const spoolid *id)
{
    spool__pend_ent *e = lookup(p, id);
    if (e != NULL)
        ent_delete(p, e);
}

const spool__pend_ent *spool__pend_find(const spool__pend *p, const spoolid *id)
{
    return lookup(p, id);
}

void spool__pend_clear(spool__pend *p)
{
    if (p->count == 0)
        return;
    for (size_t i = 0; i < p->cap; i++) {
        free(p->slots[i].meta);
        free(p->slots[i].data);
    }
    memset(p->slots, 0, p->cap * sizeof(*p->slots));
    p->count = 0;
    p->bytes = 0;
}

void spool__pend_fini(spool__pend *p)
{
    spool__pend_clear(p);
    free(p->slots);
    p->slots = NULL;
    p->cap = 0;
}
