/* The spool's pending set: what the journal holds and the stores do not yet.
 *
 * While the journal records every group, a group's saves and removes need
 * not reach the RocksDB stores at once: the journal record alone makes them
 * durable, and a replay after a crash writes them to the stores. They wait
 * here, keyed by id, until the journal wraps around; the checkpoint then
 * writes what is left of them to the stores, which are made durable before
 * the journal starts its next lap. Most mail is delivered within a lap
 * (16 MiB of groups: about two seconds at 2,000 5 KB messages a second), and
 * a remove that meets the save of a new message here drops both: such a
 * message never costs the stores a put, a delete, or a flush.
 *
 * The set only holds entries: no locking, no I/O. The spool's writer
 * changes it; its readers look entries up under the spool's lock. */
#ifndef KUMO_SPOOL_PENDING_H
#define KUMO_SPOOL_PENDING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/spoolid.h"

typedef enum spool__pend_state {
    PEND_FREE = 0,
    PEND_SAVE,   /* meta (and data, when not NULL) to put */
    PEND_REMOVE, /* both halves to delete */
} spool__pend_state;

typedef struct spool__pend_ent {
    spoolid id;
    uint8_t state; /* spool__pend_state */
    bool fresh;    /* the stores hold nothing under id: a remove drops the entry */
    bool drop_data; /* PEND_SAVE without data after a remove: delete the stores' data half */
    char *meta;     /* owned */
    size_t meta_len;
    char *data; /* owned; NULL: the data half in the stores stands */
    size_t data_len;
} spool__pend_ent;

typedef struct spool__pend {
    spool__pend_ent *slots; /* open addressing, linear probing; cap is a power of two */
    size_t cap;
    size_t count;
    size_t bytes;   /* meta and data held */
    uint64_t drops; /* saves of new messages dropped by their remove, ever */
} spool__pend;

/* Makes room for n more entries so that the next n saves and removes cannot
 * fail. 0 or KERR_NOMEM. */
int spool__pend_reserve(spool__pend *p, size_t n);
/* Records a save; takes meta and data (data may be NULL: a meta-only save).
 * fresh: the first save of a new id. Needs a reserved slot. */
void spool__pend_save(spool__pend *p, const spoolid *id, char *meta_take, size_t meta_len,
                      char *data_take, size_t data_len, bool fresh);
/* Records a remove. Needs a reserved slot. */
void spool__pend_remove(spool__pend *p, const spoolid *id);
/* Drops id's entry, if any, without recording anything (the caller wrote
 * the stores itself). */
void spool__pend_forget(spool__pend *p, const spoolid *id);
/* The entry for id, or NULL. */
const spool__pend_ent *spool__pend_find(const spool__pend *p, const spoolid *id);
/* Frees every entry's buffers and empties the set (keeps its capacity). */
void spool__pend_clear(spool__pend *p);
void spool__pend_fini(spool__pend *p);

#endif
