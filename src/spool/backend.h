/* The internal contract between the spool facade (spool.c) and its backends
 * (rocks.c, local_disk.c): the vtable each backend implements, its opener,
 * and the helpers of backend.c the backends share. The backends include
 * this header and store.h, never spool.h. Not for use outside src/spool.
 *
 * Threads: apply() is called only by the facade's single writer thread, so a
 * backend may keep unlocked scratch state for it. get() and iterate() are
 * called from reader threads, concurrently with each other and with apply(). */
#ifndef KUMOD_SPOOL_BACKEND_H
#define KUMOD_SPOOL_BACKEND_H
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "core/spoolid.h"
#include "spool/store.h"

/* One write of a group commit. */
typedef struct spool__wop {
    const spoolid *id; /* borrowed for the call */
    const char *buf;   /* borrowed; NULL means delete id */
    size_t len;
    bool sync; /* must be durable when apply() returns */
    int err;   /* out: 0 or a negative KERR_* code */
} spool__wop;

/* Called per entry by iterate(); buf is borrowed for the call. Returning
 * non-zero stops the iteration. */
typedef int (*spool__each_fn)(void *ud, const spoolid *id, const char *buf, size_t len);

typedef struct spool__backend {
    /* Applies ops in order, each one's outcome in its err. Puts and deletes of
     * the same id keep their order. When any op has sync set, every synced op
     * is durable on return. Writer thread only. */
    void (*apply)(spool_store *st, spool__wop *ops, size_t n);
    /* Reads the value of id into a malloc'd buffer (*out owned by the
     * caller). 0, KERR_NOTFOUND, KERR_IO, KERR_CORRUPT or KERR_NOMEM. */
    int (*get)(spool_store *st, const spoolid *id, char **out, size_t *len);
    /* Calls each for every entry. Returns 0 or the first hard error; entries
     * that cannot be read are skipped and counted in *skipped. */
    int (*iterate)(spool_store *st, spool__each_fn each, void *ud, unsigned *skipped);
    void (*close)(spool_store *st);
    /* Reads an integer property of the store (RocksDB's "rocksdb.*"); NULL
     * or a negative return when unknown. Any thread. */
    int (*property)(spool_store *st, const char *name, uint64_t *out);
    /* Writes and removes a probe record, synced; 0 when the store takes
     * writes again. Any thread. NULL: the health gate probes the directory. */
    int (*probe)(spool_store *st);
    /* Makes every write applied so far durable (a WAL sync). Called from
     * the facade's syncer thread while the writer thread applies to the
     * other store. NULL: the backend syncs inside apply() only. */
    int (*sync_wal)(spool_store *st);
    /* Makes every write applied so far durable, also those applied while
     * skip_wal was set (RocksDB: the memtables written out as tables and
     * synced). Writer thread, or before the writer starts. NULL: the
     * backend has no WAL to skip. */
    int (*persist)(spool_store *st);
    /* Flushes the memtables and compacts the whole key range (admin
     * spool-compact). Blocks for as long as that takes; any thread but the
     * writer's (the facade runs it on a thread of its own). NULL: nothing to
     * compact (LocalDisk). */
    int (*compact)(spool_store *st);
} spool__backend;

/* The part every backend store starts with. */
struct spool_store {
    const spool__backend *be;
    spool_kind kind;
    char *name; /* owned */
    char *path; /* owned */
    /* LocalDisk with flush=true syncs every write, not only sync'ed saves
     * (KumoMTA's semantics); the facade reads this to count syncs right. */
    bool sync_all;
    /* Set by the facade while the spool journal records every group: unsynced
     * writes then skip the store's own WAL (the journal is the log that
     * brings them back after a crash), and a journal checkpoint calls
     * persist() instead of sync_wal(). Writes that ask for a sync still go
     * through the WAL. Read by apply() only. */
    bool skip_wal;
    spool_params params; /* copy of the scalar settings (strings and json not owned) */
};

int spool__rocks_open(const spool_params *p, spool_store **out, char *err, size_t errlen);
/* Checks rocks_params (a JSON object, may be NULL) without opening anything.
 * 0, or KERR_INVAL with a message naming the key in err. */
int spool__rocks_check_params(const json_t *rocks_params, char *err, size_t errlen);
int spool__local_disk_open(const spool_params *p, spool_store **out, char *err, size_t errlen);

/* mkdir -p with mode 0755. 0 or KERR_IO (errno tells why). */
int spool__mkdir_p(const char *path);

/* Fills the common part; name and path are copied (NULL when out of memory). */
void spool__store_init(spool_store *st, const spool__backend *be, const spool_params *p);
void spool__store_fini(spool_store *st);

#endif
