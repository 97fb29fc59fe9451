/* GET /api/admin/trace-smtp-server/v1 and /api/admin/trace-smtp-client/v1:
 * websocket endpoints streaming live SMTP traces (see trace_http.c). The
 * router (http.c) does not name this module: it registers its routes. */
#ifndef KUMOD_HTTP_TRACE_HTTP_H
#define KUMOD_HTTP_TRACE_HTTP_H

/* Adds the trace routes to the router. Main thread, once, before
 * http_start_listeners(). */
void http_trace_add_endpoints(void);

#endif
