/* Administrative actions on queues (the /api/admin/... endpoints and kcli):
 * bounces, suspensions, rebinds and inspection. Entries are process-wide
 * (a mutex-protected registry); actions on queued messages are broadcast to
 * every reactor through the mailboxes. Results of asynchronous requests are
 * delivered on the reactor that asked. Request and response JSON follow
 * KumoMTA's admin API (spec §4). */
#ifndef KUMOD_QUEUE_ADMIN_H
#define KUMOD_QUEUE_ADMIN_H
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "queue/config.h"

/* Completion of an asynchronous admin request: result is owned by the
 * callee (NULL with an error text on failure); http_status is the status
 * the HTTP layer should answer (200, 400, 404...). Runs on the calling
 * reactor. */
typedef void (*admin_cb)(void *ud, int http_status, json_t *result_take, const char *error);

/* POST /api/admin/bounce/v1 {reason, domain?, campaign?, tenant?,
 * routing_domain?, queue_names?, duration?, expires?, suppress_logging?}
 * -> {id, bounced, total_bounced}. Matching queued messages get an
 * AdminBounce record and leave the spool; new arrivals too while active. */
void queue_admin_bounce(const json_t *req, admin_cb cb, void *ud);
/* GET: the active bounces (array of {id, campaign, tenant, domain,
 * routing_domain, reason, duration, bounced, total_bounced}). */
json_t *queue_admin_bounce_list(void);
/* DELETE {id}: 0 or KERR_NOTFOUND. */
int queue_admin_bounce_cancel(const char *id);

/* POST /api/admin/suspend/v1 {reason, domain?, campaign?, tenant?,
 * queue_names?, duration?, expires?} -> {id}. */
int queue_admin_suspend(const json_t *req, json_t **result, char *err, size_t errlen);
json_t *queue_admin_suspend_list(void);
int queue_admin_suspend_cancel(const char *id);

/* POST /api/admin/suspend-ready-q/v1 {name, reason, duration?, expires?} -> {id}. */
int queue_admin_suspend_readyq(const json_t *req, json_t **result, char *err, size_t errlen);
json_t *queue_admin_suspend_readyq_list(void);
int queue_admin_suspend_readyq_cancel(const char *id);

/* POST /api/admin/rebind/v1 {reason, data{}, domain?, campaign?, tenant?,
 * routing_domain?, queue_names?, always_flush?, suppress_logging?,
 * trigger_rebind_event?} -> {}. */
void queue_admin_rebind(const json_t *req, admin_cb cb, void *ud);

/* GET /api/admin/inspect-message/v1?id=&want_body= ->
 * {id, message{sender, recipient, meta, scheduling, data?, due, num_attempts}}. */
void queue_admin_inspect_message(const char *id, bool want_body, admin_cb cb, void *ud);
/* GET /api/admin/inspect-sched-q/v1?queue_name=&want_body=&limit= ->
 * {queue_name, messages:[...], num_scheduled, queue_config, ...}. */
void queue_admin_inspect_sched_q(const char *queue_name, bool want_body, long limit, admin_cb cb,
                                 void *ud);
/* GET /api/admin/inspect-ready-q/v1?queue_name= */
void queue_admin_inspect_ready_q(const char *queue_name, bool include_scheduled_queues, admin_cb cb,
                                 void *ud);
/* POST /api/admin/abort-ready-q-conn/v1 {queue_name, session_id}: aborts
 * that dispatcher of the ready queue (its message goes back to its
 * scheduled queue without an attempt); answers 200 with no result, or 404
 * for an unknown queue or session. */
void queue_admin_abort_ready_q_conn(const char *queue_name, const char *session_id, admin_cb cb,
                                    void *ud);
/* GET /api/admin/ready-q-states/v1?queues= -> {states_by_ready_queue:{...}} */
void queue_admin_ready_q_states(const json_t *queues, admin_cb cb, void *ud);
/* A summary for kcli queue-summary: {scheduled:[{name, count}], ready:[{name,
 * count, connections, suspended}]} */
void queue_admin_summary(admin_cb cb, void *ud);

/* The egress path config and its EffectiveConstraints as KumoMTA's
 * inspect-ready-q and resolve-egress-path show them (new objects). */
json_t *queue_path_config_json(const egress_path_config *c);
json_t *queue_path_constraints_json(const egress_path_config *c);
/* The protocol part of a ready queue name ("smtp_client", "maildir:PATH",
 * "lua:NAME"...), written into buf when it is not a constant. */
const char *queue_proto_suffix(const queue_config *c, char *buf, size_t len);

#endif
