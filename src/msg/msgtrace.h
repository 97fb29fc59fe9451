/* Per-message policy traces for sampled messages (kumod extension, issue
 * 23): what the policy did to one message as it ran (each event handler
 * entered with its file:line, each msg:set_meta, header and envelope
 * change, the queue the message entered), kept in memory for `explain`.
 *
 * Sampling is decided from the spool id alone (a hash compared with the
 * configured rate), so every message struct made for the same id (at
 * reception, and when loaded again for delivery) agrees without storing
 * anything. Unsampled messages pay one load and one compare in
 * message_new and one NULL test per recorded call. The store keeps at most
 * max_traces traces in a ring (the oldest trace is evicted first); each
 * trace keeps at most MSGTRACE_MAX_STEPS steps, each cut to a fixed size.
 *
 * Threads: any. One mutex guards the store and every trace's steps (only
 * sampled messages take it). Traces are reference counted: a message and
 * the store each hold one. */
#ifndef KUMOD_MSG_MSGTRACE_H
#define KUMOD_MSG_MSGTRACE_H
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "core/spoolid.h"

#define MSGTRACE_MAX_STEPS 48
#define MSGTRACE_DEFAULT_MAX 10000

typedef struct msgtrace msgtrace;

/* Sets the sampling rate (0..1; 0 turns tracing off) and the store's size
 * (1..10,000,000). Shrinking evicts the oldest traces. 0 or KERR_INVAL. */
int msgtrace_configure(double rate, size_t max_traces);
void msgtrace_settings(double *rate, size_t *max_traces);

/* The stored trace of id (made on first sight) with a reference for the
 * caller, or NULL when id is not sampled. */
msgtrace *msgtrace_for(const spoolid *id);
/* The stored trace of a sampled id with a reference, never a new one: a
 * message loaded again from the spool joins its trace, and one whose trace
 * was evicted stays untraced instead of evicting a newer one. */
msgtrace *msgtrace_find(const spoolid *id);
/* Like msgtrace_for, for an id whose transaction was sampled under another
 * id (SMTP's pre-split message): made even when id is not sampled. */
msgtrace *msgtrace_force(const spoolid *id);
/* A trace that is never stored (SMTP's pre-split message, whose own id is
 * never seen again: its steps are copied into each message made from it),
 * or NULL when id is not sampled. */
msgtrace *msgtrace_private(const spoolid *id);
msgtrace *msgtrace_ref(msgtrace *t);
void msgtrace_unref(msgtrace *t);

/* Appends a step: kind is a static string ("handler", "set_meta", ...),
 * where the policy's "file:line" (or NULL), the detail printf-formatted.
 * Steps past MSGTRACE_MAX_STEPS are counted, not kept. */
void msgtrace_add(msgtrace *t, const char *kind, const char *where, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Appends a copy of src's steps to dst. */
void msgtrace_copy_steps(msgtrace *dst, const msgtrace *src);

/* {"steps": [{"time_ns", "kind", "where"?, "detail"}...], "dropped": n}
 * for the stored trace of id, or NULL when none is stored. */
json_t *msgtrace_json(const spoolid *id);
/* Traces in the store (tests, the dashboard). */
size_t msgtrace_count(void);
/* Frees the store (process exit). */
void msgtrace_shutdown(void);

#endif
