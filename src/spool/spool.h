/* The spool facade: durable storage of message meta and data, keyed by
 * spoolid, over two backend stores ("data" and "meta", as KumoMTA's
 * kumo.define_spool defines them). It owns one writer thread doing group
 * commit and reader threads for loads and enumeration. Callbacks run on a
 * spool thread: callers hand results back to their reactor themselves.
 *
 * Crash ordering: a save makes data durable before meta, so the meta
 * enumeration at start-up never finds a message whose data is missing; a
 * remove deletes meta before data. */
#ifndef KUMOD_SPOOL_SPOOL_H
#define KUMOD_SPOOL_SPOOL_H
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/spoolid.h"
#include "spool/store.h"

/* "RocksDB" or "LocalDisk": the names kumo.define_spool's kind takes. */
const char *spool_kind_name(spool_kind kind);

/* Fills p from params. On error returns KERR_INVAL and writes a message for
 * the operator into err. */
int spool_params_from_json(const json_t *params, spool_params *p, char *err, size_t errlen);
void spool_params_fini(spool_params *p);

/* Opens (creating if needed) the backend at p->path. Takes a lock so two
 * processes never share a spool. */
int spool_store_open(const spool_params *p, spool_store **out, char *err, size_t errlen);
void spool_store_close(spool_store *st);

typedef struct spool spool;

/* Builds the facade over both stores (ownership moves in) and starts its
 * threads. */
int spool_new(spool_store *data_take, spool_store *meta_take, spool **out);
/* Completes every queued operation and stops the threads; what is asked of
 * the spool afterwards fails at once with KERR_SHUTDOWN. Called at shutdown
 * while the reactors still run, so that the completions it posts to them
 * are handled there. The stores stay open until spool_free. */
void spool_stop(spool *sp);
/* spool_stop if not done yet, then closes the stores. */
void spool_free(spool *sp);

typedef void (*spool_done_fn)(void *ud, int err);
/* buf_take is malloc'd and owned by the callee on success (NULL on error). */
typedef void (*spool_load_fn)(void *ud, int err, char *buf_take, size_t len);
typedef void (*spool_each_fn)(void *ud, const spoolid *id, const char *meta, size_t len);

/* Saves meta and, when data_take is not NULL, data. Both buffers are
 * malloc'd and owned by the spool from this call on. When sync is true the
 * callback runs only once both halves are durable on disk (many saves share
 * one sync: group commit). cb may be NULL. */
void spool_save(spool *sp, const spoolid *id, char *meta_take, size_t meta_len,
                char *data_take, size_t data_len, bool sync, spool_done_fn cb, void *ud);
/* spool_save for the first save of a new message (data_take not NULL):
 * nothing is stored under id yet. While the journal records every group, a
 * remove that follows within the same journal lap then leaves nothing for
 * the stores to write (the message is only ever in the journal). */
void spool_save_new(spool *sp, const spoolid *id, char *meta_take, size_t meta_len,
                    char *data_take, size_t data_len, bool sync, spool_done_fn cb, void *ud);
/* spool_save_new, unsynced and not urgent: like a remove, it waits for the
 * next group of saves (and is synced with it when that group is), or goes
 * SPOOL_REMOVE_DELAY_MS later when none comes. For records whose loss can
 * only come with the loss of what follows them in the queue: a log-hook
 * message saved ahead of the save or remove of the message it reports
 * (the journal writes groups in order, and any sync covers every write
 * before it), so a crash loses both or neither. */
void spool_save_new_lazy(spool *sp, const spoolid *id, char *meta_take, size_t meta_len,
                         char *data_take, size_t data_len, spool_done_fn cb, void *ud);
/* +1: a save is on its way (an SMTP session is receiving a body); -1 once
 * it is issued or abandoned. While at least commit_siblings are announced,
 * the writer waits commit_delay before a group commit so that they can join. */
void spool_expect_save(int delta);
/* Removes both halves; not synced by itself (rides on the next sync). Not
 * urgent either: it waits for the next group of saves, or at most
 * SPOOL_REMOVE_DELAY_MS when no save comes, instead of waking the writer on
 * its own. cb may be NULL. */
void spool_remove(spool *sp, const spoolid *id, spool_done_fn cb, void *ud);
#define SPOOL_REMOVE_DELAY_MS 10
/* Loads the data (want_data) or the meta of id. KERR_NOTFOUND if absent. */
void spool_load(spool *sp, const spoolid *id, bool want_data, spool_load_fn cb, void *ud);
/* Calls each for every meta entry (the buffer is borrowed for the call), then
 * done. Never reads data. Runs on a reader thread. */
void spool_enumerate(spool *sp, spool_each_fn each, spool_done_fn done, void *ud);

typedef struct spool_stats {
    uint64_t saves;        /* saves completed */
    uint64_t syncs;        /* group-commit syncs performed */
    uint64_t synced_saves; /* saves that rode on those syncs */
    uint64_t removes;
    uint64_t loads;
    uint64_t errors;
    uint64_t delayed_groups; /* group commits that waited commit_delay */
    uint64_t groups;         /* writer wake-ups: groups of saves and removes written together */
    uint64_t journal_checkpoints; /* journal laps: both stores synced, ring started again */
    uint64_t never_stored; /* messages saved and removed within one journal lap: never written
                              to the stores */
} spool_stats;
void spool_get_stats(spool *sp, spool_stats *out);
/* Flushes and compacts the whole key range of the store named name (a
 * kumo.define_spool name) on a thread of its own; cb gets 0 or the error
 * on that thread (at once, with 0, for a store with nothing to compact).
 * Returns 0 when cb will be called, KERR_NOTFOUND for an unknown name,
 * KERR_AGAIN while another compaction runs, KERR_SHUTDOWN when stopping. */
int spool_compact(spool *sp, const char *name, spool_done_fn cb, void *ud);

/* True when the spool accepts writes; otherwise reason names the condition
 * ("the spool is not accepting writes"). Any thread, cheap. While
 * unhealthy, saves and removes fail with KERR_UNHEALTHY. */
bool spool_healthy(spool *sp, char *reason, size_t len);
/* Fills out[0] (data) and out[1] (meta). */
void spool_get_health(spool *sp, spool_health_info out[2]);

#endif
