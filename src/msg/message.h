/* A message in flight: envelope, meta (a JSON object), raw data, and
 * scheduling. Reference counted because Lua userdata, a session and a spool
 * request may hold it at once; everything else is owned by the one thread
 * that holds it at a time (handing it over is a move). Queued messages do
 * not keep this struct: they keep a small record and load it on demand. */
#ifndef KUMOD_MSG_MESSAGE_H
#define KUMOD_MSG_MESSAGE_H
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/spoolid.h"
#include "msg/headers.h"
#include "msg/msgtrace.h"

typedef struct message {
    int refs;
    spoolid id;
    char *sender;
    char **rcpts;
    size_t n_rcpts;
    json_t *meta;       /* object, never NULL */
    json_t *scheduling; /* object or NULL */
    char *data;         /* NULL when not loaded */
    size_t data_len;
    uint32_t num_attempts;
    bool force_sync;
    bool data_dirty;
    bool meta_dirty;
    bool in_spool;   /* saved (or loaded from the spool) at least once */
    int64_t due_ns;  /* wall clock; 0 = now */
    hdr_index *hidx; /* the parsed header block of data, built on first use; NULL when stale */
    msgtrace *trace; /* the policy trace when the id is sampled (msgtrace.h), else NULL */
} message;

/* New message with a fresh id; copies sender, takes nothing. */
message *message_new(const spoolid *id, const char *sender, const char *const *rcpts, size_t n);
/* Like message_new with a fresh id, for a message that only exists until
 * it is split into the messages that are queued (SMTP's DATA): its policy
 * trace, when sampled, is private (msgtrace_private). */
message *message_new_transient(const char *sender, const char *const *rcpts, size_t n);
void message_ref(message *m);
void message_unref(message *m);

/* The header index of the data, built on first use and kept until the data
 * changes (every change goes through message_set_data_take, which drops
 * it). NULL when the data is not loaded or memory ran out. Owned by m. */
const hdr_index *message_headers(message *m);
/* Header indexes built in this process (complexity tests: a policy's header
 * reads on one message share one build). */
unsigned long message_header_index_builds(void);

/* Replaces the data with a copy of buf (or takes buf_take). */
int message_set_data(message *m, const char *buf, size_t len);
void message_set_data_take(message *m, char *buf_take, size_t len);
int message_set_sender(message *m, const char *sender);
int message_set_recipients(message *m, const char *const *rcpts, size_t n);

/* The spool meta document: {"sender", "recipient" (string or array), "meta",
 * "schedule"?}. malloc'd text. */
char *message_meta_to_json(const message *m, size_t *len);
/* Rebuilds a message (without data) from its spool meta document. */
int message_from_meta_json(const spoolid *id, const char *buf, size_t len, message **out);

/* Message structs alive in this process (the message_count metric). */
long message_live_count(void);

/* Domain part of an address (after the last '@'), or "" when none. */
const char *address_domain(const char *addr);

#endif
