/* The /api/admin/... endpoints and /api/check-liveness/v1: JSON in and out
 * as KumoMTA's admin API (spec §4), each a thin adapter over the queue
 * layer's admin functions (queue/admin.h), the diagnostic filter and the
 * config epoch.
 *
 * Runs on the reactor that accepted the request; asynchronous admin
 * actions (bounce, rebind, inspection) answer through admin_done on that
 * same reactor. Owns nothing beyond the request. A body that does not fit
 * KumoMTA's request struct is a 422 naming the field, as axum's Json
 * extractor answers; an unknown id is a 404 (plain text, as KumoMTA).
 * Every action is audited (http_audit, admin_more.c): one kumod::audit
 * line with who asked and what it matched. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/diag.h"
#include "core/kerr.h"
#include "http/explain.h"
#include "http/request.h"
#include "lua/klua.h"
#include "lua/services.h"
#include "queue/admin.h"
#include "queue/recovery.h"

#include <uuid/uuid.h>


static const char text_plain[] = "text/plain; charset=utf-8";

/* 422 as axum's Json extractor answers a body that does not deserialize */
static void reply_unprocessable(http_req *hr, const char *why)
{
    char msg[600];
    int n = snprintf(msg, sizeof(msg),
                     "Failed to deserialize the JSON body into the target type: %s", why);
    http_utf8_sanitize(msg);
    http_reply_text(hr, 422, text_plain, msg, n < (int)sizeof(msg) ? (size_t)n : sizeof(msg) - 1);
}

/* Completion of an asynchronous admin request: answers hr. */
static void admin_done(void *ud, int status, json_t *result_take, const char *error)
{
    http_req *hr = ud;
    if (status >= 200 && status < 300) {
        http_reply_json(hr, status, result_take ? result_take : json_object());
        return;
    }
    json_decref(result_take);
    if (status == 422) {
        reply_unprocessable(hr, error ? error : "invalid request");
        return;
    }
    http_reply_error(hr, status ? status : 500, "%s", error ? error : "request failed");
}

/* An asynchronous admin action being audited: logged when it completes,
 * with the counts its result reports. */
typedef struct audited {
    http_req *hr;
    const char *action;
    char *req;
} audited;

static void audited_done(void *ud, int status, json_t *result_take, const char *error)
{
    audited *a = ud;
    char counts[64] = "";
    json_t *tb = json_object_get(result_take, "total_bounced");
    json_t *rb = json_object_get(result_take, "kumod_rebound");
    if (json_is_integer(tb))
        snprintf(counts, sizeof(counts), " bounced=%lld", (long long)json_integer_value(tb));
    if (json_is_integer(rb)) {
        snprintf(counts, sizeof(counts), " rebound=%lld", (long long)json_integer_value(rb));
        json_object_del(result_take, "kumod_rebound"); /* KumoMTA's response is {} */
    }
    const char *id = json_string_value(json_object_get(result_take, "id"));
    http_audit(a->hr, a->action, status, "request=%s%s%s%s%s%s", a->req, id ? " id=" : "",
               id ? id : "", counts, error ? " error=" : "", error ? error : "");
    free(a->req);
    http_req *hr = a->hr;
    free(a);
    admin_done(hr, status, result_take, error);
}

static audited *audited_new(http_req *hr, const char *action, const json_t *body)
{
    audited *a = calloc(1, sizeof(*a));
    if (!a)
        abort();
    a->hr = hr;
    a->action = action;
    a->req = http_audit_request(body);
    return a;
}

/* DELETE {"id": uuid} (BounceV1CancelRequest, SuspendV1CancelRequest;
 * other fields are ignored): the id in its canonical lower-case form, or
 * NULL after answering. */
static char *delete_id(http_req *hr)
{
    json_t *body = http_req_json_object(hr, false);
    if (!body)
        return NULL;
    json_t *id = json_object_get(body, "id");
    uuid_t u;
    if (!id) {
        reply_unprocessable(hr, "missing field `id`");
    } else if (!json_is_string(id)) {
        reply_unprocessable(hr, "id: invalid type: expected a UUID string");
    } else if (uuid_parse(json_string_value(id), u) != 0) {
        char why[200];
        snprintf(why, sizeof(why), "id: UUID parsing failed: %.100s", json_string_value(id));
        reply_unprocessable(hr, why);
    } else {
        json_decref(body);
        char *s = malloc(37);
        if (!s) {
            http_reply_error(hr, 500, "out of memory");
            return NULL;
        }
        uuid_unparse_lower(u, s);
        return s;
    }
    json_decref(body);
    return NULL;
}

/* KumoMTA answers a cancel in plain text: "removed <id>", or 404
 * "<what> entry <id> not found". */
static void reply_removed(http_req *hr, int rc, const char *what, char *id)
{
    char action[64];
    snprintf(action, sizeof(action), "%s-cancel", what);
    http_audit(hr, action, rc == 0 ? 200 : 404, "id=%s%s", id, rc == 0 ? "" : " (no such entry)");
    char msg[200];
    int n = rc == 0 ? snprintf(msg, sizeof(msg), "removed %s", id)
                    : snprintf(msg, sizeof(msg), "%s entry %s not found", what, id);
    http_reply_text(hr, rc == 0 ? 200 : 404, text_plain, msg, (size_t)n);
    free(id);
}

void http_admin_bounce(http_req *hr)
{
    if (hr->method == EVHTTP_REQ_GET) {
        http_reply_json(hr, 200, queue_admin_bounce_list());
        return;
    }
    if (hr->method == EVHTTP_REQ_DELETE) {
        char *id = delete_id(hr);
        if (id)
            reply_removed(hr, queue_admin_bounce_cancel(id), "bounce", id);
        return;
    }
    json_t *body = http_req_json_object(hr, false);
    if (!body)
        return;
    queue_admin_bounce(body, audited_done, audited_new(hr, "bounce", body));
    json_decref(body);
}

typedef int (*suspend_fn)(const json_t *req, json_t **result, char *err, size_t errlen);

static void suspend_common(http_req *hr, suspend_fn add, json_t *(*list)(void),
                           int (*cancel)(const char *), const char *what)
{
    if (hr->method == EVHTTP_REQ_GET) {
        http_reply_json(hr, 200, list());
        return;
    }
    if (hr->method == EVHTTP_REQ_DELETE) {
        char *id = delete_id(hr);
        if (id)
            reply_removed(hr, cancel(id), what, id);
        return;
    }
    json_t *body = http_req_json_object(hr, false);
    if (!body)
        return;
    json_t *result = NULL;
    char err[400] = "";
    int rc = add(body, &result, err, sizeof(err));
    char *req = http_audit_request(body);
    const char *id = json_string_value(json_object_get(result, "id"));
    http_audit(hr, what, rc == 0 ? 200 : rc == KERR_PARSE ? 422 : 400, "request=%s%s%s%s%s", req,
               id ? " id=" : "", id ? id : "", rc ? " error=" : "", rc ? err : "");
    free(req);
    json_decref(body);
    if (rc != 0) {
        json_decref(result);
        if (rc == KERR_PARSE)
            reply_unprocessable(hr, err[0] ? err : kerr_str(rc));
        else
            http_reply_error(hr, rc == KERR_NOTFOUND ? 404 : 400, "%s",
                             err[0] ? err : kerr_str(rc));
        return;
    }
    http_reply_json(hr, 200, result ? result : json_object());
}

void http_admin_suspend(http_req *hr)
{
    suspend_common(hr, queue_admin_suspend, queue_admin_suspend_list, queue_admin_suspend_cancel,
                   "suspend");
}

void http_admin_suspend_ready_q(http_req *hr)
{
    suspend_common(hr, queue_admin_suspend_readyq, queue_admin_suspend_readyq_list,
                   queue_admin_suspend_readyq_cancel, "suspend-ready-q");
}

void http_admin_rebind(http_req *hr)
{
    json_t *body = http_req_json_object(hr, false);
    if (!body)
        return;
    queue_admin_rebind(body, audited_done, audited_new(hr, "rebind", body));
    json_decref(body);
}

/* inspect-message: a found message gets its last failure from the logs
 * (explain.c), as the queued record keeps no response */
static void inspect_done(void *ud, int status, json_t *result_take, const char *error)
{
    if (status == 200 && result_take) {
        http_explain_add_last_failure(ud, result_take);
        return;
    }
    admin_done(ud, status, result_take, error);
}

void http_admin_inspect_message(http_req *hr)
{
    const char *id = http_req_query(hr, "id");
    if (!id) {
        http_reply_error(hr, 400, "missing query parameter `id`");
        return;
    }
    queue_admin_inspect_message(id, http_req_query_bool(hr, "want_body", false), inspect_done, hr);
}

void http_admin_inspect_sched_q(http_req *hr)
{
    const char *q = http_req_query(hr, "queue_name");
    if (!q) {
        http_reply_error(hr, 400, "missing query parameter `queue_name`");
        return;
    }
    long limit = 0;
    const char *ls = http_req_query(hr, "limit");
    if (ls) {
        char *end;
        limit = strtol(ls, &end, 10);
        if (*end || end == ls || limit < 0) {
            http_reply_error(hr, 400, "limit: expected a non-negative integer, found '%s'", ls);
            return;
        }
    }
    queue_admin_inspect_sched_q(q, http_req_query_bool(hr, "want_body", false), limit, admin_done,
                                hr);
}

void http_admin_inspect_ready_q(http_req *hr)
{
    const char *q = http_req_query(hr, "queue_name");
    if (!q) {
        http_reply_error(hr, 400, "missing query parameter `queue_name`");
        return;
    }
    queue_admin_inspect_ready_q(q, http_req_query_bool(hr, "include_scheduled_queues", false),
                                admin_done, hr);
}

/* kumod's own: the messages start-up recovery could not read (kept in the
 * spool, not delivered) */
void http_admin_quarantine(http_req *hr)
{
    http_reply_json(hr, 200, recovery_quarantine_list());
}

void http_admin_ready_q_states(http_req *hr)
{
    json_t *queues = json_array();
    const char *qs = http_req_query(hr, "queues");
    if (qs && *qs) {
        char *dup = strdup(qs), *save = NULL;
        for (char *t = dup ? strtok_r(dup, ",", &save) : NULL; t; t = strtok_r(NULL, ",", &save))
            json_array_append_new(queues, json_string(t));
        free(dup);
    }
    queue_admin_ready_q_states(queues, admin_done, hr);
    json_decref(queues);
}

void http_admin_set_log_filter(http_req *hr)
{
    json_t *body = http_req_json_object(hr, false);
    if (!body)
        return;
    json_t *f = json_object_get(body, "filter");
    if (!json_is_string(f)) {
        json_decref(body);
        reply_unprocessable(hr, f ? "filter: invalid type: expected a string"
                                  : "missing field `filter`");
        return;
    }
    int rc = diag_set_filter(json_string_value(f));
    http_audit(hr, "set-log-filter", rc == 0 ? 200 : 400, "filter=\"%s\"", json_string_value(f));
    if (rc != 0) {
        http_reply_error(hr, 400, "invalid diagnostic log filter '%s'", json_string_value(f));
        json_decref(body);
        return;
    }
    json_decref(body);
    http_reply_text(hr, 200, NULL, NULL, 0);
}

void http_admin_bump_config_epoch(http_req *hr)
{
    http_audit(hr, "bump-config-epoch", 200, "config epoch bump requested");
    klua_bump_epoch();
    http_reply_text(hr, 200, NULL, NULL, 0);
}

void http_check_liveness_v1(http_req *hr)
{
    static const char ctype[] = "text/plain; charset=utf-8";
    const char *why = NULL;
    char reason[256];
    if (http_shutting_down())
        why = "shutting down";
    else if (!services_spool() || !services_spool_ready())
        why = "waiting for spool startup";
    else if (!services_spool_healthy(reason, sizeof(reason)))
        why = reason;
    if (why) {
        http_reply_text(hr, 503, ctype, why, strlen(why));
        return;
    }
    http_reply_text(hr, 200, ctype, "OK", 2);
}
