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

typedef struct loghook_item {
    char *hook_name;
    bool deferred_spool;
    json_t *record; /* the log record object (its "meta" holds the hook's meta keys) */
    char *text;     /* the record as one JSON line, newline-terminated */
    size_t len;
} loghook_item;

void loghook_item_free(loghook_item *it);

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
