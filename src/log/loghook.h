/* Log hooks (kumo.configure_log_hook): every log record that a hook takes
 * becomes an item (the record as JSON text and as an object, with the
 * hook's name) handed to a sink that a higher layer registers: the queue
 * layer turns it into a message, asks should_enqueue_log_record, spools it
 * and queues it (queue/hookq.c). Records of messages that are themselves
 * log records (reception_protocol "LogRecord") are never hooked, so a
 * hook's own deliveries do not loop. */
#ifndef KUMOD_LOG_LOGHOOK_H
#define KUMOD_LOG_LOGHOOK_H
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

typedef struct loghook_wait loghook_wait;

typedef struct loghook_item {
    loghook_wait *wait; /* the barrier current when the record was logged, or NULL */
    char *hook_name;
    bool deferred_spool;
    json_t *record; /* the log record object (its "meta" holds the hook's meta keys) */
    char *text;     /* the record as one JSON line, newline-terminated */
    size_t len;
} loghook_item;

/* Frees the item. This is when its record counts as settled for the
 * barrier it belongs to: the sink frees an item once the record's message
 * is durable in the spool (or queued, with deferred_spool), or once the
 * record was dropped. */
void loghook_item_free(loghook_item *it);

/* A barrier over the hook records logged by this thread between
 * loghook_wait_begin and loghook_wait_end, so that a reply can wait until
 * they are settled: the SMTP server holds its 250 until the Reception
 * records' messages are in the spool, so a kill -9 right after the 250 can
 * not lose the record of a message it acknowledged. begin returns NULL
 * (nothing to wait for) when no hook is configured; barriers do not nest.
 * end returns 0 when every record is already settled (the barrier is gone
 * and done is never called), or 1: then done(ud) runs once, on the thread
 * that settles the last record (normally the caller's reactor), and the
 * barrier frees itself. A NULL done abandons the barrier (nothing waits). */
loghook_wait *loghook_wait_begin(void);
/* Leave the barrier open but stop adding this thread's records to it
 * (while the caller waits for something else), and take it up again. */
void loghook_wait_pause(void);
void loghook_wait_resume(loghook_wait *w);
int loghook_wait_end(loghook_wait *w, void (*done)(void *ud), void *ud);

/* Receives each item (ownership moves) on the thread that logged the
 * record. Set once by main before the policy runs. */
typedef void (*loghook_sink_fn)(loghook_item *it_take);
void loghook_set_sink(loghook_sink_fn fn);

/* Adds a hook from the JSON form of the Lua table of
 * kumo.configure_log_hook{}: name (required, unique), back_pressure
 * (128000), meta ([]), headers ([]), per_record ({<Type|Any> = {enable,
 * suffix, log_dir, segment_header}}; template is refused), deferred_spool
 * (false). Unknown keys are an error naming the key. With check_only the
 * parameters are checked and nothing is added (--validate). Thread-safe. */
int loghook_add_from_json(const json_t *params, bool check_only, char *err, size_t errlen);

/* Hooks configured (tests). */
size_t loghook_count(void);
/* Forgets every hook (shutdown). */
void loghook_shutdown(void);

#endif
