/* Scheduled queues, ready queues and the dispatchers that drain them.
 *
 * Every scheduled queue and ready queue has one owner reactor,
 * hash(name) % N; a queued message (struct qmsg, about 100 bytes: timer
 * entry, list links, spool id, attempt count) moves between owners as an
 * owned pointer through the mailboxes. Meta and data rest in the spool while
 * a message waits and are loaded when a dispatcher needs them. */
#ifndef KUMOD_QUEUE_QUEUE_H
#define KUMOD_QUEUE_QUEUE_H
#include <stdbool.h>
#include <stdint.h>

#include "msg/message.h"

/* Registers the Lua makers. Call before the first VM is built. (main.c
 * connects the SMTP server's insert hook to queue_insert.) */
void queue_init(void);
/* kumo.inject_message (queue/inject_message.c); queue_init registers it. */
void queue_inject_message_register(void);
/* Frees the calling reactor's queues (messages stay in the spool). Run on
 * each reactor at shutdown. */
void queue_reactor_shutdown(void);

/* Inserts msg (reference taken) into the scheduled queue named queue, with
 * the insert reason ("Received", "Enumerated", ...). Any reactor thread. */
int queue_insert(message *msg_take, const char *queue, const char *reason);

typedef struct queue_stats {
    long long scheduled, ready, in_flight;
    unsigned long long delivered, transfail, failed, expired, watchdog_aborted;
    long long scheduled_queues, ready_queues;
} queue_stats;
void queue_get_stats(queue_stats *out);

/* The SMTP delivery layer plugs in here (it lives above us). */
struct readyq;
typedef struct queue_protocol_ops {
    /* Resolves the site of a queue whose protocol is SMTP; calls done(ud,
     * site, err) on the calling reactor. */
    void (*resolve_site)(const char *domain, const void *queue_cfg,
                         void (*done)(void *ud, const char *site, const char *err), void *ud);
} queue_protocol_ops;
void queue_set_protocol_ops(const queue_protocol_ops *ops);

#endif
