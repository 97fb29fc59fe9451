/* One HTTP request as the endpoint handlers see it (internal to src/http).
 * A handler receives an authorized request on the reactor that accepted
 * it and must answer it exactly once, now or later on the same reactor,
 * with one of the http_reply_* functions; the request is freed by the
 * reply. Handlers never block: slow work goes through mailboxes, the
 * spool's callbacks or Lua coroutines. */
#ifndef KUMOD_HTTP_REQUEST_H
#define KUMOD_HTTP_REQUEST_H
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "core/reactor.h"

typedef struct http_listener http_listener;

typedef struct http_req {
    struct evhttp_request *req;
    const http_listener *ln;
    reactor *r;
    enum evhttp_cmd_type method;
    char *path;                 /* decoded, without the query */
    struct evkeyvalq query;     /* decoded query parameters */
    char peer_ip[64];           /* "127.0.0.1" */
    char local_ip[64];          /* the address the request came in on */
    json_t *auth;               /* AuthInfo (see acl.h); owned */
    const struct http_route *route;
    char **resources;           /* ACL resource chain */
    size_t n_resources;
    void *handler_state;        /* free for the handler's own use */
    char *body;                 /* the decoded body of a Content-Encoding request; owned */
    size_t body_len;
} http_req;

/* The value of query parameter name, or NULL. */
const char *http_req_query(const http_req *hr, const char *name);
/* Query parameter as a boolean ("true"/"1"/"yes"; absent -> dflt). */
bool http_req_query_bool(const http_req *hr, const char *name, bool dflt);

/* The request body, contiguous (libevent has read all of it, at most the
 * listener's request_body_limit). */
const char *http_req_body(const http_req *hr, size_t *len);

/* Parses the body as a JSON object. On failure answers 400 with the
 * reason itself (the request is then gone) and returns NULL. An empty
 * body yields an empty object when allow_empty is set. */
json_t *http_req_json_object(http_req *hr, bool allow_empty);

/* The listener's hostname parameter. */
const char *http_listener_hostname(const http_listener *ln);

/* Answers and frees hr. body_take (may be NULL: empty body) is released. */
void http_reply_json(http_req *hr, int status, json_t *body_take);
/* Answers as KumoMTA's AppError does: text/plain "Error: msg". */
void http_reply_error(http_req *hr, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void http_reply_text(http_req *hr, int status, const char *content_type, const char *body,
                     size_t len);

/* Ends hr without an answer and hands its connection to the caller (a
 * websocket upgrade): the request wrapper is freed and no longer counts
 * as in flight; the evhttp connection stays open with the request in it,
 * and the caller owns it from now on (it replaces the bufferevent's
 * callbacks and frees it with evhttp_connection_free). */
struct evhttp_connection *http_req_detach(http_req *hr);

/* Replaces bytes that are not well-formed UTF-8 with '?' (in place), so
 * that a message can go into a JSON string. */
void http_utf8_sanitize(char *s);

/* True once http_shutdown has begun. */
bool http_shutting_down(void);

/* One endpoint of the router: its path, the methods it takes
 * (EVHTTP_REQ_* bits) and its handler. */
typedef struct http_route {
    const char *path;
    unsigned methods;
    void (*fn)(http_req *hr);
} http_route;

/* An endpoint module the router does not name registers its routes here,
 * with hooks run when the listeners start (start) and once every listener
 * is freed at shutdown (stop); either may be NULL. e must outlive the
 * process. Main thread, before http_start_listeners(). */
typedef struct http_endpoints {
    const http_route *routes;
    size_t n_routes;
    void (*start)(void);
    void (*stop)(void);
} http_endpoints;
void http_add_endpoints(const http_endpoints *e);
/* Serve the registered endpoint modules only, not the router's own table
 * (inject, admin): the TSA daemon's listeners. Main thread, before
 * http_start_listeners(). */
void http_serve_only_endpoints(void);

/* Endpoint handlers of the router's own table (inject.c, admin_http.c). */
void http_inject_v1(http_req *hr);
void http_check_liveness_v1(http_req *hr);
void http_admin_bounce(http_req *hr);
void http_admin_suspend(http_req *hr);
void http_admin_suspend_ready_q(http_req *hr);
void http_admin_rebind(http_req *hr);
void http_admin_inspect_message(http_req *hr);
void http_admin_inspect_sched_q(http_req *hr);
void http_admin_inspect_ready_q(http_req *hr);
void http_admin_ready_q_states(http_req *hr);
void http_admin_quarantine(http_req *hr);
void http_admin_set_log_filter(http_req *hr);
void http_admin_bump_config_epoch(http_req *hr);
/* admin_more.c */
void http_admin_abort_ready_q_conn(http_req *hr);
void http_admin_spool_compact(http_req *hr);

/* One INFO line under kumod::audit for an admin action: the action, the
 * peer address and authenticated user of hr, the status answered and what
 * it matched (printf-style fmt, may be NULL). Before the reply (hr is
 * freed by it). */
void http_audit(const http_req *hr, const char *action, int status, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* The request body as compact JSON for the audit line (malloc'd, cut at
 * 400 bytes). */
char *http_audit_request(const json_t *body);

/* metrics_http.c: counts one message received over HTTP
 * (total_messages_received). */
void http_metrics_received(unsigned n);
/* The count so far. */
unsigned long long http_metrics_received_total(void);

/* Frees hr without answering it: for a handler that took its
 * evhttp_request over (stream.c). Counts the request as finished. */
void http__req_release(http_req *hr);

#endif
