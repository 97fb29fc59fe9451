/* The resolved form of queue and egress configurations: what a table given
 * to kumo.make_queue_config / make_egress_path / make_egress_source /
 * make_egress_pool means, written out with every key, defaults filled in
 * and values in their canonical form (durations as "20m", throttles as
 * "100/h"). It is what kumo.invoke_get_* return and what
 * kumo.format_*_toml write, and it parses back to the same configuration.
 * Pure functions; any thread. */
#ifndef KUMOD_QUEUE_CONFIG_RESOLVE_H
#define KUMOD_QUEUE_CONFIG_RESOLVE_H
#include <jansson.h>
#include <stddef.h>

typedef enum config_kind {
    CONFIG_QUEUE,
    CONFIG_EGRESS_PATH,
    CONFIG_EGRESS_SOURCE,
    CONFIG_EGRESS_POOL,
} config_kind;

/* Validates given (borrowed) as its maker does and returns a new object with
 * every key; NULL with the maker's error in err. A key whose default is
 * "none" is left out (TOML and Lua have no null), and openssl_options /
 * rustls_cipher_suites are not carried (as KumoMTA's page says). */
json_t *config_resolve(config_kind kind, const json_t *given, char *err, size_t errlen);

/* config_resolve, written as TOML (pretty, keys sorted, empty tables
 * inline). malloc'd, or NULL with the reason in err. */
char *config_resolve_toml(config_kind kind, const json_t *given, char *err, size_t errlen);

#endif
