/* The injection API's core (POST /api/inject/v1), below its two callers:
 * the HTTP endpoint and kumo.api.inject.inject_v1. Reactor threads only;
 * the job lives on the reactor named in its origin. */
#ifndef KUMOD_HTTP_INJECT_H
#define KUMOD_HTTP_INJECT_H
#include <jansson.h>
#include <stdbool.h>

#include "core/reactor.h"

/* Where a request comes from. Strings and auth are copied/referenced by
 * inject_v1_start; local_ip and hostname may be NULL (a request from Lua:
 * no received_via / hostname meta). */
typedef struct inject_origin {
    const char *peer_ip;
    const char *local_ip;
    const char *hostname;
    json_t *auth; /* AuthInfo as JSON: peer_address, identities, groups */
    reactor *r;   /* the calling reactor */
} inject_origin;

/* The outcome: status 200 with result_take (success_count, fail_count,
 * failed_recipients, errors), else the status and error text; deser marks
 * a shape error of the request (a field missing, unknown or of the wrong
 * type: serde's wording behind the path of the value). */
typedef void (*inject_done_fn)(void *ud, int status, json_t *result_take, const char *error,
                               bool deser);

/* Validates body_take (the request object, taken) and generates, saves
 * (synced) and queues one message per recipient, as the HTTP API
 * documents. done runs exactly once, possibly before this returns. */
void inject_v1_start(json_t *body_take, const inject_origin *o, inject_done_fn done, void *ud);

#endif
