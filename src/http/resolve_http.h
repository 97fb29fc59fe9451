/* GET /api/admin/resolve-egress-path/v1 (see resolve_http.c). The router
 * (http.c) does not name this module: it registers its route. */
#ifndef KUMOD_HTTP_RESOLVE_HTTP_H
#define KUMOD_HTTP_RESOLVE_HTTP_H

/* Adds the route to the router. Main thread, once, before
 * http_start_listeners(). */
void http_resolve_add_endpoints(void);

#endif
