/* The types the spool facade (spool.c) and its backends (backend.h,
 * rocks.c, local_disk.c) and health gate (health.c) share: the kind of a
 * store, the parameters of kumo.define_spool and a store's health. Only
 * types, so that the backends sit below the facade in the include graph. */
#ifndef KUMOD_SPOOL_STORE_H
#define KUMOD_SPOOL_STORE_H
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum spool_kind { SPOOL_KIND_ROCKSDB, SPOOL_KIND_LOCALDISK } spool_kind;

/* One backend instance (the "data" or the "meta" spool). */
typedef struct spool_store spool_store;

/* Parameters of kumo.define_spool{}, validated from the JSON form of the Lua
 * table: name (required), path (required), kind ("RocksDB" default |
 * "LocalDisk"), flush (bool; absent means true in kumod: durable by default),
 * rocks_params (object), min_free_space, min_free_inodes ("10%" default),
 * store_deadline ("30s"), error_latch_duration ("15s"),
 * error_unlatch_duration ("5m"), allow_error_unlatch (true), commit_delay
 * ("300us") and commit_siblings (4) (kumod's own; the larger delay and the
 * smaller siblings count of the two spools count), journal_size ("16MiB",
 * kumod's own: the group-commit journal of two RocksDB spools, in the data
 * spool's directory; 0 on either spool turns it off, else the larger size
 * counts; see spool/journal.h).
 * Unknown keys are an error naming the key. */
typedef struct spool_params {
    char *name;
    char *path;
    spool_kind kind;
    bool flush;
    json_t *rocks_params; /* owned; may be NULL */
    double min_free_space_pct;
    double min_free_inodes_pct;
    int64_t store_deadline_ns;
    int64_t error_latch_ns;
    int64_t error_unlatch_ns;
    bool allow_error_unlatch;
    int64_t commit_delay_ns; /* kumod's own; see spool_expect_save */
    long commit_siblings;    /* kumod's own: saves announced for the delay to apply */
    uint64_t journal_size;   /* kumod's own: bytes; 0 = no journal */
} spool_params;

/* commit_delay: 300 µs by default, at most 100 ms, 0 turns it off. */
#define SPOOL_COMMIT_DELAY_DEFAULT_NS (300 * 1000LL)
#define SPOOL_COMMIT_DELAY_MAX_NS (100 * 1000 * 1000LL)
/* commit_siblings: the delay applies only while at least this many saves are
 * announced (PostgreSQL's commit_delay/commit_siblings pair). */
#define SPOOL_COMMIT_SIBLINGS_DEFAULT 4

/* Health of one store as the monitor last saw it (for metrics). */
typedef struct spool_health_info {
    char path[512];
    bool is_rocksdb;
    bool load_shed_active;
    uint64_t mem_table_total, mem_table_unflushed, mem_table_readers_total, cache_total;
    uint64_t background_errors, write_stopped, num_running_compactions, compaction_pending;
    uint64_t estimate_pending_compaction_bytes, actual_delayed_write_rate;
    uint64_t disk_free_bytes, disk_free_inodes;
    double disk_free_percent, disk_free_inodes_percent;
} spool_health_info;

#endif
