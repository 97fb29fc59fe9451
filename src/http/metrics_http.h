/* GET /metrics and /metrics.json (see metrics_http.c). The router (http.c)
 * does not name this module: it registers its routes and its start and
 * stop hooks with the router. */
#ifndef KUMOD_HTTP_METRICS_HTTP_H
#define KUMOD_HTTP_METRICS_HTTP_H

/* Adds the metrics routes to the router. Main thread, once, before
 * http_start_listeners(). */
void http_metrics_add_endpoints(void);

#endif
