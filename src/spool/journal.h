/* The spool journal: one pre-written file that makes a group commit durable
 * with a single fdatasync.
 *
 * Without it a group commit syncs two RocksDB WALs. Each of those is an
 * appending file, so every fsync writes the data and then the inode (the
 * size changed): two device writes, two waits, on each of two files. The
 * journal is a ring written over blocks that already exist (zeros written
 * when the file was created), so its size never changes and fdatasync is one
 * device write. The stores then take the group's writes unsynced (their WALs
 * still reach the page cache at once, so a killed process loses nothing) and
 * are synced only when the journal wraps around: the checkpoint.
 *
 * File layout: two header slots (offsets 0 and 512; the one with the higher
 * generation and a good checksum wins), then records from offset 4096. A
 * record is one group: a 24-byte header (magic, CRC-32C, sequence number,
 * length, number of ops), the op headers, then each op's meta and data bytes,
 * zero-padded to a multiple of 512 bytes (journals written before the
 * padding have records padded to 8 bytes; both replay). Records follow each
 * other; a checkpoint (stores durable up to sequence S) writes S into a
 * header slot and starts again at offset 4096 with S + 1.
 * Recovery reads from offset 4096 while each record is whole and carries the
 * next sequence number: a torn record, or the older lap's leftovers, end it.
 *
 * One thread uses a journal at a time (the spool writer; replay runs before
 * it starts). */
#ifndef KUMO_SPOOL_JOURNAL_H
#define KUMO_SPOOL_JOURNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/spoolid.h"

#define SPOOL_JOURNAL_NAME "kumod-journal"
#define SPOOL_JOURNAL_SIZE_DEFAULT (16ULL << 20)
#define SPOOL_JOURNAL_SIZE_MIN (1ULL << 20)
#define SPOOL_JOURNAL_SIZE_MAX (16ULL << 30)

typedef enum spool__jop_kind {
    JOP_SAVE = 1,      /* meta and data */
    JOP_SAVE_META = 2, /* meta only; the data half is untouched */
    JOP_REMOVE = 3,    /* both halves */
} spool__jop_kind;

typedef struct spool__jop {
    spool__jop_kind kind;
    spoolid id;
    const char *meta; /* borrowed */
    size_t meta_len;
    const char *data; /* borrowed */
    size_t data_len;
} spool__jop;

typedef struct spool__journal spool__journal;

/* Opens path, or creates it with size bytes (rounded up to 4 KiB) of zeros,
 * written and synced before the file takes its name. An existing journal
 * keeps its own size until the next checkpoint after a replay (see reset).
 * 0, or a negative KERR_* code with the reason in err. */
int spool__journal_open(const char *path, uint64_t size, spool__journal **out, char *err,
                        size_t errlen);

/* Writes the records with O_DIRECT from now on (on) or through the page
 * cache (off; the default). A file system that refuses O_DIRECT, at open or
 * at the first write, leaves the journal on the page cache. Direct: each
 * record is copied into an aligned buffer and written, with RWF_DSYNC when
 * synced, in one pwritev2: no dirty pages, no writeback, one syscall per
 * group commit instead of two. */
void spool__journal_set_direct(spool__journal *j, bool on);
/* Whether records go through the O_DIRECT descriptor now. */
bool spool__journal_direct(const spool__journal *j);

/* Calls fn for every op of every record after the checkpoint, in order; the
 * buffers are borrowed for the call. fn returning < 0 stops the replay with
 * that code. Counts what it replayed. */
typedef int (*spool__journal_replay_fn)(void *ud, const spool__jop *ops, size_t n);
int spool__journal_replay(spool__journal *j, spool__journal_replay_fn fn, void *ud,
                          uint64_t *records, uint64_t *ops);

/* Bytes a record of these ops takes in the file. */
size_t spool__journal_record_len(const spool__jop *ops, size_t n);
/* Whether a record of len bytes can ever be journaled (a quarter of the
 * ring at most); larger groups take the stores' own syncs. */
bool spool__journal_takes(const spool__journal *j, size_t len);
/* Whether a record of len bytes fits before the end of the ring; when not,
 * the caller makes the stores durable and checkpoints first. */
bool spool__journal_room(const spool__journal *j, size_t len);

/* Appends one record (len from spool__journal_record_len, with room) and,
 * when sync, fdatasyncs it. 0 or a negative KERR_* code. */
int spool__journal_append(spool__journal *j, const spool__jop *ops, size_t n, size_t len,
                          bool sync);

/* The caller has made every op appended so far durable in the stores:
 * records that, and starts the ring again. Also resizes the file to the
 * size asked at open when it differs. 0 or a negative KERR_* code. */
int spool__journal_checkpoint(spool__journal *j);

/* The file's path and size; records and checkpoints since open. */
const char *spool__journal_path(const spool__journal *j);
uint64_t spool__journal_size(const spool__journal *j);
uint64_t spool__journal_checkpoints(const spool__journal *j);

void spool__journal_close(spool__journal *j);

/* CRC-32C (Castagnoli), continuing from crc (0 to start). */
uint32_t spool__crc32c(uint32_t crc, const void *buf, size_t len);

#endif
