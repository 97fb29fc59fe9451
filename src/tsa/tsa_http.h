/* The TSA daemon's HTTP API (tsa-daemon.openapi.json): POST
 * /publish_log_v1 (a node's log record, evaluated against the automation
 * rules of the Shaping object tsa_load_shaping_data returns),
 * GET /get_config_v1/shaping.toml, /get_suspension_v1/suspended.json,
 * /get_bounce_v1/bounced.json, /tsa/status, and the websocket streams
 * /subscribe_event_v1 and /subscribe_suspension_v1 (legacy). */
#ifndef KUMOD_TSA_TSA_HTTP_H
#define KUMOD_TSA_TSA_HTTP_H

/* Registers the endpoints, and makes the listeners leave out the router's
 * own table (no injection or queue administration in the daemon).
 * Main thread, before http_start_listeners. */
void tsa_http_add_endpoints(void);

#endif
