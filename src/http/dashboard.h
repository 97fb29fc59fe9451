/* The live dashboard (GET /, /ui/..., /api/admin/dashboard/v1/...; see
 * dashboard.c). Registers itself with the router, as metrics_http does. */
#ifndef KUMOD_HTTP_DASHBOARD_H
#define KUMOD_HTTP_DASHBOARD_H

/* Adds the dashboard's routes and its start/stop hooks (the per-second
 * counter ring and its sampler). Main thread, once, before
 * http_start_listeners(). */
void http_dashboard_add_endpoints(void);

#endif
