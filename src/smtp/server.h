/* The ESMTP listener (kumo.start_esmtp_listener) and its server sessions.
 * Each reactor accepts on its own SO_REUSEPORT socket per listener and owns
 * the sessions it accepted. After DATA a session runs the policy events,
 * saves the messages with group commit, logs Reception, hands each message
 * to the queue layer through the insert hook and only then replies 250. */
#ifndef KUMOD_SMTP_SERVER_H
#define KUMOD_SMTP_SERVER_H
#include <stdbool.h>
#include <stddef.h>

#include "msg/message.h"

/* Registers kumo.start_esmtp_listener and kumo.make_listener_domain. */
void smtpsrv_lua_register(void);
/* Opens the listening sockets configured by init on every reactor. */
int smtpsrv_start_listeners(char *err, size_t errlen);
/* Marks the spool ready (listeners stop answering 421) and starts
 * enumerating it in the background. The line "spool enumeration done" is
 * logged once every message found is back in its scheduled queue. */
int smtpsrv_start_enumeration(void);
/* Stops accepting and asks sessions to end; returns when they are gone or
 * after a grace period. Call from the main thread. */
void smtpsrv_shutdown(void);

/* The queue layer's entry point: takes a reference to msg (already saved
 * unless deferred_spool); reasons is "Received" or "Enumerated". Runs on the
 * calling reactor (or a spool thread for enumeration). Returns 0 or an error
 * that makes reception answer a transient failure. */
typedef int (*smtpsrv_insert_fn)(message *msg_take, const char *queue, const char *reason);
void smtpsrv_set_insert_hook(smtpsrv_insert_fn fn);

/* Enumeration's fast path, used when no spool_message_enumerated handler
 * is defined and the meta carries no scheduling: add() queues a message
 * known by id and queue name, flush() hands over what add() batched. Both
 * run on the spool reader thread. The queue layer reports each enumerated
 * message it has placed in its scheduled queue with smtpsrv_enum_placed(),
 * whichever path brought it. */
typedef struct smtpsrv_enum_hooks {
    void (*add)(const spoolid *id, const char *queue);
    void (*flush)(void);
} smtpsrv_enum_hooks;
void smtpsrv_set_enum_hooks(const smtpsrv_enum_hooks *hooks);
void smtpsrv_enum_placed(unsigned long n);

/* Counters for metrics. */
typedef struct smtpsrv_stats {
    unsigned long long connections_total, connections_denied, messages_received, rejections;
} smtpsrv_stats;
void smtpsrv_get_stats(smtpsrv_stats *out);

#endif
