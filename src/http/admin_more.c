/* The admin audit trail and the admin endpoints added for kcli's
 * operator commands: POST /api/admin/abort-ready-q-conn/v1 and
 * POST /api/admin/spool-compact/v1.
 *
 * Audit: every admin action (bounce, suspend, suspend-ready-q, rebind, the
 * cancels, the log filter, abort, compact, config epoch) leaves one INFO
 * line under the module kumod::audit naming the action, who asked (the
 * peer address and the authenticated user, "-" without one), the HTTP
 * status it answered and what it matched (the request's criteria and,
 * where the action reports them, the counts). A refused request is
 * audited too: an operator reading the trail wants the attempts as well.
 *
 * Runs on the reactor that accepted the request; spool-compact runs on the
 * spool's compaction thread and its completion is posted back here.
 * Failures answer as KumoMTA's AppError (404 unknown queue, session or
 * spool; 409 while another compaction runs). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uuid/uuid.h>

#include "core/diag.h"
#include "core/kerr.h"
#include "http/request.h"
#include "lua/services.h"
#include "queue/admin.h"
#include "spool/spool.h"

#define AUDIT "kumod::audit"

/* The first identity of the request's AuthInfo, or "-". */
static const char *audit_user(const http_req *hr)
{
    json_t *ids = json_object_get(hr->auth, "identities");
    const char *u = json_string_value(json_object_get(json_array_get(ids, 0), "identity"));
    return u && *u ? u : "-";
}

void http_audit(const http_req *hr, const char *action, int status, const char *fmt, ...)
{
    char what[1024] = "";
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(what, sizeof(what), fmt, ap);
        va_end(ap);
    }
    http_utf8_sanitize(what);
    char user[256];
    snprintf(user, sizeof(user), "%s", audit_user(hr));
    http_utf8_sanitize(user);
    DINFO(AUDIT, "action=%s peer=%s user=%s status=%d %s", action, hr->peer_ip, user, status,
          what);
}

char *http_audit_request(const json_t *body)
{
    char *s = body ? json_dumps(body, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    if (s && strlen(s) > 400)
        strcpy(s + 397, "...");
    return s ? s : strdup("{}");
}

/* ---- POST /api/admin/abort-ready-q-conn/v1 ----------------------------------------------- */

typedef struct abort_ctx {
    http_req *hr;
    char *queue, *session;
} abort_ctx;

static void abort_done(void *ud, int status, json_t *result_take, const char *error)
{
    abort_ctx *c = ud;
    json_decref(result_take);
    http_audit(c->hr, "abort-ready-q-conn", status ? status : 500, "queue_name=\"%s\" session_id=%s%s%s",
               c->queue, c->session, error ? " error=" : "", error ? error : "");
    if (status == 200)
        http_reply_text(c->hr, 200, NULL, NULL, 0);
    else
        http_reply_error(c->hr, status ? status : 500, "%s", error ? error : "request failed");
    free(c->queue);
    free(c->session);
    free(c);
}

void http_admin_abort_ready_q_conn(http_req *hr)
{
    json_t *body = http_req_json_object(hr, false);
    if (!body)
        return;
    json_t *q = json_object_get(body, "queue_name"), *s = json_object_get(body, "session_id");
    uuid_t u;
    const char *why = !q                   ? "missing field `queue_name`"
                      : !json_is_string(q) ? "queue_name: invalid type: expected a string"
                      : !s                 ? "missing field `session_id`"
                      : !json_is_string(s) || uuid_parse(json_string_value(s), u) != 0
                          ? "session_id: UUID parsing failed"
                          : NULL;
    if (why) {
        char *req = http_audit_request(body);
        http_audit(hr, "abort-ready-q-conn", 422, "request=%s", req);
        free(req);
        json_decref(body);
        char msg[200];
        int n = snprintf(msg, sizeof(msg),
                         "Failed to deserialize the JSON body into the target type: %s", why);
        http_reply_text(hr, 422, "text/plain; charset=utf-8", msg, (size_t)n);
        return;
    }
    abort_ctx *c = calloc(1, sizeof(*c));
    if (!c)
        abort();
    c->hr = hr;
    c->queue = strdup(json_string_value(q));
    c->session = strdup(json_string_value(s));
    json_decref(body);
    queue_admin_abort_ready_q_conn(c->queue, c->session, abort_done, c);
}

/* ---- POST /api/admin/spool-compact/v1 ---------------------------------------------------- */

typedef struct compact_ctx {
    http_req *hr;
    char *name;
    int err;
    int64_t t0;
} compact_ctx;

static void compact_on_reactor(void *arg)
{
    compact_ctx *c = arg;
    char took[64];
    snprintf(took, sizeof(took), "%.3fs", (double)(clock_mono_ns() - c->t0) / 1e9);
    if (c->err == 0) {
        http_audit(c->hr, "spool-compact", 200, "name=\"%s\" took=%s", c->name, took);
        http_reply_text(c->hr, 200, NULL, NULL, 0);
    } else {
        http_audit(c->hr, "spool-compact", 500, "name=\"%s\" error=\"%s\"", c->name,
                   kerr_str(c->err));
        http_reply_error(c->hr, 500, "compacting spool %s: %s", c->name, kerr_str(c->err));
    }
    free(c->name);
    free(c);
}

/* on the spool's compaction thread */
static void compact_done(void *ud, int err)
{
    compact_ctx *c = ud;
    c->err = err;
    reactor_post(c->hr->r, compact_on_reactor, c);
}

void http_admin_spool_compact(http_req *hr)
{
    json_t *body = http_req_json_object(hr, false);
    if (!body)
        return;
    json_t *n = json_object_get(body, "name");
    if (!json_is_string(n)) {
        json_decref(body);
        http_audit(hr, "spool-compact", 422, "request without a name");
        static const char msg[] = "Failed to deserialize the JSON body into the target type: "
                                  "missing field `name`";
        http_reply_text(hr, 422, "text/plain; charset=utf-8", msg, sizeof(msg) - 1);
        return;
    }
    compact_ctx *c = calloc(1, sizeof(*c));
    if (!c)
        abort();
    c->hr = hr;
    c->name = strdup(json_string_value(n));
    c->t0 = clock_mono_ns();
    json_decref(body);
    spool *sp = services_spool();
    int rc = sp ? spool_compact(sp, c->name, compact_done, c) : KERR_NOTFOUND;
    if (rc == 0)
        return;
    int status = rc == KERR_NOTFOUND ? 404 : rc == KERR_AGAIN ? 409 : 503;
    http_audit(hr, "spool-compact", status, "name=\"%s\" error=\"%s\"", c->name, kerr_str(rc));
    if (rc == KERR_NOTFOUND)
        http_reply_error(hr, 404, "no spool named %s", c->name);
    else if (rc == KERR_AGAIN)
        http_reply_error(hr, 409, "a compaction of the spool is already running");
    else
        http_reply_error(hr, 503, "the spool is %s", kerr_str(rc));
    free(c->name);
    free(c);
}
