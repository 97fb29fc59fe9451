/* Queue and egress configuration objects built by kumo.make_queue_config,
 * kumo.make_egress_path, kumo.make_egress_source and kumo.make_egress_pool.
 * The Lua makers validate every key (unknown keys and bad values are errors
 * naming the key) and return the table; the queue layer turns the table's
 * JSON form into these structs. Immutable once built; owned by whoever
 * parsed them. */
#ifndef KUMOD_QUEUE_CONFIG_H
#define KUMOD_QUEUE_CONFIG_H
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/throttle.h"
#include "net/cidr.h"

typedef enum qproto {
    QPROTO_SMTP,
    QPROTO_MAILDIR,
    QPROTO_LUA,
    QPROTO_DEFERRED_INJECT,
    QPROTO_NULL,
} qproto;

typedef struct queue_config {
    int64_t retry_interval_s;
    int64_t max_retry_interval_s; /* 0 = none */
    int64_t max_age_s;
    char *egress_pool; /* NULL = unspecified */
    bool has_max_message_rate;
    throttle_spec max_message_rate;
    qproto proto;
    json_t *mx_list; /* array, SMTP smart hosts; NULL = MX lookup */
    char *maildir_path;
    int dir_mode, file_mode;
    char *constructor;
    /* custom_lua batching: at most batch_size messages per send_batch; a
     * dispatcher waits up to max_batch_latency_ns for min_batch_size */
    int batch_size, min_batch_size;
    int64_t max_batch_latency_ns;
    int64_t reap_interval_ns;
    int64_t refresh_interval_ns;
    bool refresh_epoch;
    char *provider_name;
} queue_config;

int queue_config_from_json(const json_t *j, queue_config *out, char *err, size_t errlen);
void queue_config_defaults(queue_config *c);
void queue_config_fini(queue_config *c);

typedef enum tls_mode {
    TLS_OPPORTUNISTIC,
    TLS_OPPORTUNISTIC_INSECURE,
    TLS_REQUIRED,
    TLS_REQUIRED_INSECURE,
    TLS_DISABLED,
} tls_mode;

/* additional_message_rate_throttles / additional_source_selection_rates
 * entries, and additional_connection_limits (name -> limit). */
typedef struct named_throttle {
    char *name;
    throttle_spec spec;
} named_throttle;
typedef struct named_limit {
    char *name;
    long limit;
    bool local;
} named_limit;

typedef struct egress_path_config {
    long connection_limit;
    bool connection_limit_local; /* "local:N": never shared through redis */
    named_throttle *add_rates;   /* sorted by rate, smallest first */
    size_t n_add_rates;
    named_limit *add_limits; /* sorted by limit, smallest first */
    size_t n_add_limits;
    bool has_source_selection_rate;
    throttle_spec source_selection_rate;
    named_throttle *add_selection_rates; /* sorted, smallest first */
    size_t n_add_selection_rates;
    long max_ready;
    bool has_max_message_rate, has_max_connection_rate;
    throttle_spec max_message_rate, max_connection_rate;
    long max_deliveries_per_connection;
    long max_recipients_per_batch;
    long consecutive_connection_failures_before_delay;
    long smtp_port;
    tls_mode enable_tls;
    bool enable_pipelining, enable_rset;
    char *ehlo_domain;
    char *auth_user, *auth_password;
    bool allow_auth_without_tls;
    int64_t connect_timeout_ns, banner_timeout_ns, ehlo_timeout_ns, mail_from_timeout_ns,
        rcpt_to_timeout_ns, data_timeout_ns, data_dot_timeout_ns, rset_timeout_ns,
        idle_timeout_ns, starttls_timeout_ns, auth_timeout_ns;
    int64_t watchdog_timeout_ns; /* 0 = derive */
    cidr_list prohibited_hosts, skip_hosts;
    int ip_lookup_strategy;
    int64_t refresh_interval_ns;
    bool refresh_epoch;
    char *provider_name;
} egress_path_config;

int egress_path_from_json(const json_t *j, egress_path_config *out, char *err, size_t errlen);
void egress_path_defaults(egress_path_config *c);
void egress_path_fini(egress_path_config *c);

typedef struct egress_source {
    char *name;
    char *source_address; /* NULL = kernel's choice */
    char *ehlo_domain;
    long remote_port; /* 0 = use the path's smtp_port */
} egress_source;

int egress_source_from_json(const json_t *j, egress_source *out, char *err, size_t errlen);
void egress_source_fini(egress_source *s);

typedef struct egress_pool_entry {
    char *name;
    unsigned weight;
} egress_pool_entry;

typedef struct egress_pool {
    char *name;
    egress_pool_entry *entries;
    size_t n;
} egress_pool;

int egress_pool_from_json(const json_t *j, egress_pool *out, char *err, size_t errlen);
void egress_pool_fini(egress_pool *p);

/* LVS weighted round robin over the pool (weight 0 never chosen). state is
 * the caller's cursor pair; returns an index or -1 when all weights are 0. */
typedef struct wrr_state {
    int i;
    int cw;
} wrr_state;
int egress_pool_next(const egress_pool *p, wrr_state *st);

/* Registers the kumo.make_* functions, and (config_lua.c) kumo.invoke_get_*,
 * compute_*_constraints and format_*. */
void queue_config_lua_register(void);
void queue_config_lua_register_invoke(void);

#endif
