/* The live half of `explain`: where a message is right now, as the queues
 * that hold it see it (the logs tell the rest; http/explain.c joins
 * the two). */
#ifndef KUMOD_QUEUE_EXPLAINQ_H
#define KUMOD_QUEUE_EXPLAINQ_H
#include <jansson.h>

/* Looks for the message id_hex (32 hex digits) in every scheduled and
 * ready queue and calls done(ud, live) on the calling reactor with
 * {state: "scheduled"|"ready", queue, ready_queue?, due?, num_attempts,
 * reasons: [insert reasons, oldest first], suspended, retry_interval_s,
 * max_retry_interval_s, max_age_s, expires?} (owned by the callee), or
 * NULL when no queue holds it (finished, in a delivery attempt right now,
 * or unknown). */
typedef void (*explainq_done_fn)(void *ud, json_t *live_take);
void queue_explain_live(const char *id_hex, explainq_done_fn done, void *ud);

#endif
