/* A kumod node's subscription to a TSA daemon (shaping:setup_with_automation
 * { subscribe = {URL} }): the websocket URL/subscribe_event_v1 whose
 * suspensions and bounces are applied at once through the admin machinery
 * (queue/admin.h), and URL/get_config_v1/shaping.toml fetched every second
 * whose configuration overrides the shaping helper merges into
 * get_egress_path_config (the config epoch is bumped when they change). */
#ifndef KUMOD_TSA_TSA_SUB_H
#define KUMOD_TSA_TSA_SUB_H
#include <jansson.h>
#include <stddef.h>

/* Starts subscribing to url (http://HOST:PORT[/prefix]); runs on reactor 0
 * from then on, reconnecting after failures. 0 or KERR_INVAL with err. */
int tsa_sub_start(const char *url, char *err, size_t errlen);

/* The overrides last fetched from every subscribed daemon, merged (a new
 * reference; an empty object when there are none). Any thread. */
json_t *tsa_sub_overrides(void);

/* Stops and frees every subscription. Main thread, reactors stopped. */
void tsa_sub_shutdown(void);

#endif
