/* The HTTP listener (kumo.start_http_listener) and the API it serves:
 * injection (/api/inject/v1), administration (/api/admin/...), liveness
 * and Prometheus metrics. Each reactor runs its own libevent evhttp on its
 * own SO_REUSEPORT socket per listener and owns the requests it accepted;
 * nothing a request handler does blocks its reactor. */
#ifndef KUMOD_HTTP_HTTP_H
#define KUMOD_HTTP_HTTP_H
#include <stddef.h>

/* Registers kumo.start_http_listener and the kumo.aaa ACL helpers
 * (make_access_control_list, set_fall_back_to_acl_map). Call before the
 * first VM is built. */
void http_lua_register(void);

/* Opens every listener configured by init on every reactor and registers
 * the metric families served at /metrics. Call from the main thread after
 * init, once. Returns 0, or a negative KERR_* with a message in err. */
int http_start_listeners(char *err, size_t errlen);

/* Stops accepting, answers 503 to requests that arrive meanwhile, waits
 * (bounded) for requests in flight to finish and frees the listeners. Call
 * from the main thread before the reactors stop. */
void http_shutdown(void);

#endif
