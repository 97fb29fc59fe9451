/* Picking a message's egress source from its scheduled queue's pool
 * (weighted round robin), with the source_selection_rate and
 * additional_source_selection_rates of each source's egress path (see
 * select_source.c). */
#ifndef KUMOD_QUEUE_SELECT_SOURCE_H
#define KUMOD_QUEUE_SELECT_SOURCE_H

#include "queue/queue_int.h"

/* source is valid only during the call. */
typedef void (*selsrc_cont)(schedq *sq, qmsg *q, const char *source);

/* Takes q (off every list, about to be made ready): calls cont(sq, q,
 * source) now or later on this reactor with the source picked; when every
 * source's selection rate is exhausted q is consumed here instead (a
 * TransientFailure, retried with an attempt, as KumoMTA does). */
void selsrc_pick(schedq *sq, qmsg *q, selsrc_cont cont);

/* selsrc_reactor_shutdown() is declared in queue_int.h (queue.c calls it). */

#endif
