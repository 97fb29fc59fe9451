/* Log hook records into the queues (see hookq.c): the sink that main
 * registers with loghook_set_sink. */
#ifndef KUMOD_QUEUE_HOOKQ_H
#define KUMOD_QUEUE_HOOKQ_H
#include "log/loghook.h"

/* Turns the record into a message, runs should_enqueue_log_record, and
 * spools and queues it when the policy says so. Any thread. */
void hookq_sink(loghook_item *it_take);

#endif
