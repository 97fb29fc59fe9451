/* KumoMTA queue names: campaign:tenant@domain!routing_domain, parts
 * optional, or the meta `queue` verbatim. Pure functions, any thread. */
#ifndef KUMOD_MSG_QUEUE_NAME_H
#define KUMOD_MSG_QUEUE_NAME_H
#include <stddef.h>

#include "msg/message.h"

typedef struct queue_name_parts {
    char *campaign;       /* NULL when absent */
    char *tenant;         /* NULL when absent */
    char *domain;         /* never NULL */
    char *routing_domain; /* NULL when absent */
} queue_name_parts;

/* Builds the name from parts (domain lower-cased). malloc'd. A separator
 * inside a component that parsing would misread (a tenant holding '@', a
 * domain holding '!', '%' anywhere) is written as %XX, so no component,
 * wherever it came from, can change another one; names without such
 * characters are exactly KumoMTA's. */
char *queue_name_build(const char *campaign, const char *tenant, const char *domain,
                       const char *routing_domain);
/* Splits a name: at the first '@' (prefix = campaign:tenant at the first
 * ':'), the domain at the first '!'. A name without '@' is a bare domain.
 * %XX in a component is decoded. */
int queue_name_parse(const char *name, queue_name_parts *out);
void queue_name_parts_fini(queue_name_parts *p);
/* The queue of a message: meta `queue` when set, else built from meta
 * campaign/tenant/routing_domain and the first recipient's domain. */
char *queue_name_of_message(const message *m);

#endif
