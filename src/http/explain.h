/* GET /api/admin/explain/v1?id=...: one message's story from the logs and
 * the queues (see explain.c); and the last failure inspect-message shows. */
#ifndef KUMOD_HTTP_EXPLAIN_H
#define KUMOD_HTTP_EXPLAIN_H
#include <jansson.h>

#include "http/request.h"

/* Adds the explain route and its worker thread's start/stop hooks. Main
 * thread, once, before http_start_listeners(). */
void http_explain_add_endpoints(void);

/* Completes inspect-message's answer result_take ({id, message{...}},
 * taken) with message.last_failure (the last TransientFailure record of
 * the local logs: time, response, num_attempts, ready_queue, peer,
 * classification; or null) and answers hr with it. */
void http_explain_add_last_failure(http_req *hr, json_t *result_take);

#endif
