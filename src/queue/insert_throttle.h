/* The throttle_insert_ready_queue event between a scheduled queue and a
 * ready queue (see insert_throttle.c). */
#ifndef KUMOD_QUEUE_INSERT_THROTTLE_H
#define KUMOD_QUEUE_INSERT_THROTTLE_H
#include <stdbool.h>

#include "queue/queue_int.h"

typedef void (*insert_throttle_cont)(schedq *sq, qmsg *q);

/* Called as q (off every list) is about to be made ready. Returns false
 * when there is nothing to run (no handler, or q has just passed it): the
 * caller goes on. Returns true when it took q: the event runs, then q goes
 * back to sq (delayed) or to cont(sq, q), which passes it this time. */
bool insert_throttle_hook(schedq *sq, qmsg *q, insert_throttle_cont cont);

#endif
