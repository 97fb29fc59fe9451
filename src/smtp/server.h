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
/* Stops accepting and asks sessions to end; returns when they are gone or
 * after a grace period. Call from the main thread. */
void smtpsrv_shutdown(void);
/* Frees the listeners' configurations; after the reactors have stopped. */
void smtpsrv_free(void);

/* The queue layer's entry point: takes a reference to msg (already saved
 * unless deferred_spool); reason is "Received". Runs on the calling
 * reactor. Returns 0 or an error that makes reception answer a transient
 * failure. main.c connects it to queue_insert(). */
typedef int (*smtpsrv_insert_fn)(message *msg_take, const char *queue, const char *reason);
void smtpsrv_set_insert_hook(smtpsrv_insert_fn fn);

/* Counters for metrics. */
typedef struct smtpsrv_stats {
    unsigned long long connections_total, connections_denied, messages_received, rejections;
} smtpsrv_stats;
void smtpsrv_get_stats(smtpsrv_stats *out);

#endif
