/* The spool health gate (spec §5.3): decides whether the spool accepts
 * writes. It latches at once on a foreground I/O or corruption error, and
 * after error_latch_duration while background errors keep growing or any
 * operation failed; with allow_error_unlatch it clears itself after
 * error_unlatch_duration without new errors. A monitor thread samples the
 * backends (RocksDB properties, free space and inodes of the spool
 * filesystems) twice a second. Thread-safe. */
#ifndef KUMOD_SPOOL_HEALTH_H
#define KUMOD_SPOOL_HEALTH_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "spool/store.h"

typedef struct spool_health spool_health;

spool_health *spool__health_new(spool_store *data, spool_store *meta);
void spool__health_free(spool_health *h);
/* A foreground write failed with err (a KERR_* code). */
void spool__health_write_failed(spool_health *h, int err);
/* A load or other operation failed (debounced). */
void spool__health_op_failed(spool_health *h, int err);
bool spool__health_latched(spool_health *h);
/* The last sample of both stores (data, meta). Returns 1 while the gate is
 * latched (reason, may be NULL, says why), else 0. */
int spool__health_get(spool_health *h, spool_health_info out[2], char *reason, size_t len);

#endif
