/* Resolved queue and egress configurations (see config_resolve.h). One
 * table per kind lists every documented key with its default as KumoMTA
 * documents it (JSON text; NULL for "none"); values given by the policy are
 * first checked by the parsers of config.c, then brought to their canonical
 * form. The unit test parses each resolved form back through config.c, so
 * a default here that the parser would refuse fails the build's tests.
 * Pure; any thread. */
#include "queue/config_resolve.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/duration.h"
#include "core/kerr.h"
#include "lua/lib/toml_json.h"
#include "queue/config.h"
#include "queue/constraints.h"

typedef enum norm { N_KEEP, N_DUR, N_THROTTLE, N_THROTTLE_MAP, N_POOL_ENTRIES, N_MAP, N_LIST } norm;

typedef struct rkey {
    const char *key;
    const char *dflt; /* JSON text, NULL = none */
    norm n;
} rkey;

static const rkey queue_rkeys[] = {
    {"retry_interval", "\"20m\"", N_DUR},
    {"max_retry_interval", NULL, N_DUR},
    {"max_age", "\"7days\"", N_DUR},
    {"egress_pool", NULL, N_KEEP},
    {"max_message_rate", NULL, N_THROTTLE},
    {"protocol", "{\"smtp\":{}}", N_KEEP},
    {"reap_interval", "\"10m\"", N_DUR},
    {"refresh_interval", "\"1m\"", N_DUR},
    {"timerwheel_tick_interval", NULL, N_DUR},
    {"strategy", "\"SingletonTimerWheel\"", N_KEEP},
    {"refresh_strategy", "\"Ttl\"", N_KEEP},
    {"provider_name", NULL, N_KEEP},
    {"shrink_policy", "[]", N_LIST},
    {NULL, NULL, N_KEEP},
};

static const rkey path_rkeys[] = {
    {"connection_limit", "32", N_KEEP},
    {"additional_connection_limits", "{}", N_MAP},
    {"enable_tls", "\"Opportunistic\"", N_KEEP},
    {"enable_mta_sts", "true", N_KEEP},
    {"enable_dane", "false", N_KEEP},
    {"enable_pipelining", "true", N_KEEP},
    {"enable_rset", "true", N_KEEP},
    {"tls_prefer_openssl", "false", N_KEEP},
    {"tls_certificate", NULL, N_KEEP},
    {"tls_private_key", NULL, N_KEEP},
    {"openssl_cipher_list", NULL, N_KEEP},
    {"openssl_cipher_suites", NULL, N_KEEP},
    {"connect_timeout", "\"1m\"", N_DUR},
    {"banner_timeout", "\"1m\"", N_DUR},
    {"ehlo_timeout", "\"5m\"", N_DUR},
    {"mail_from_timeout", "\"5m\"", N_DUR},
    {"rcpt_to_timeout", "\"5m\"", N_DUR},
    {"data_timeout", "\"5m\"", N_DUR},
    {"data_dot_timeout", "\"5m\"", N_DUR},
    {"rset_timeout", "\"5s\"", N_DUR},
    {"idle_timeout", "\"5s\"", N_DUR},
    {"starttls_timeout", "\"5s\"", N_DUR},
    {"auth_timeout", "\"1m\"", N_DUR},
    {"system_shutdown_timeout", NULL, N_DUR},
    {"max_ready", "1024", N_KEEP},
    {"consecutive_connection_failures_before_delay", "100", N_KEEP},
    {"smtp_port", "25", N_KEEP},
    {"smtp_auth_plain_username", NULL, N_KEEP},
    {"smtp_auth_plain_password", NULL, N_KEEP},
    {"allow_smtp_auth_plain_without_tls", "false", N_KEEP},
    {"allow_smtp_auth_plain_without_valid_certificate", "false", N_KEEP},
    {"max_message_rate", NULL, N_THROTTLE},
    {"additional_message_rate_throttles", "{}", N_THROTTLE_MAP},
    {"source_selection_rate", NULL, N_THROTTLE},
    {"additional_source_selection_rates", "{}", N_THROTTLE_MAP},
    {"max_connection_rate", NULL, N_THROTTLE},
    {"max_deliveries_per_connection", "1024", N_KEEP},
    {"max_recipients_per_batch", "100", N_KEEP},
    {"prohibited_hosts", "[\"127.0.0.0/8\",\"::1\",\"0.0.0.0\",\"::\"]", N_LIST},
    {"skip_hosts", "[]", N_LIST},
    {"ip_lookup_strategy", "\"Ipv4AndIpv6\"", N_KEEP},
    {"ehlo_domain", NULL, N_KEEP},
    {"aggressive_connection_opening", "false", N_KEEP},
    {"refresh_interval", "\"1m\"", N_DUR},
    {"refresh_strategy", "\"Ttl\"", N_KEEP},
    {"dispatcher_wakeup_strategy", "\"Aggressive\"", N_KEEP},
    {"maintainer_wakeup_strategy", "\"Aggressive\"", N_KEEP},
    {"provider_name", NULL, N_KEEP},
    {"remember_broken_tls", NULL, N_DUR},
    {"opportunistic_tls_reconnect_on_failed_handshake", "false", N_KEEP},
    {"use_lmtp", "false", N_KEEP},
    {"reconnect_strategy", "\"ConnectNextHost\"", N_KEEP},
    {"readyq_pool_name", NULL, N_KEEP},
    {"low_memory_reduction_policy", "\"ShrinkDataAndMeta\"", N_KEEP},
    {"no_memory_reduction_policy", "\"ShrinkDataAndMeta\"", N_KEEP},
    {"try_next_host_on_transport_error", "false", N_KEEP},
    {"ignore_8bit_checks", "false", N_KEEP},
    {"dispatcher_progress_watchdog_timeout", NULL, N_DUR},
    {NULL, NULL, N_KEEP},
};

static const rkey source_rkeys[] = {
    {"name", NULL, N_KEEP},
    {"ehlo_domain", NULL, N_KEEP},
    {"source_address", NULL, N_KEEP},
    {"remote_port", NULL, N_KEEP},
    {"ha_proxy_server", NULL, N_KEEP},
    {"ha_proxy_source_address", NULL, N_KEEP},
    {"socks5_proxy_server", NULL, N_KEEP},
    {"socks5_proxy_source_address", NULL, N_KEEP},
    {"socks5_proxy_username", NULL, N_KEEP},
    {"socks5_proxy_password", NULL, N_KEEP},
    {"suspend_when_unplumbed", NULL, N_KEEP},
    {"suspend_when_proxy_unhealthy", NULL, N_KEEP},
    {"ttl", "\"1m\"", N_DUR},
    {NULL, NULL, N_KEEP},
};

static const rkey pool_rkeys[] = {
    {"name", NULL, N_KEEP},
    {"entries", "[]", N_POOL_ENTRIES},
    {"ttl", "\"1m\"", N_DUR},
    {NULL, NULL, N_KEEP},
};

static json_t *dur_string(int64_t ns)
{
    char buf[96];
    duration_format(ns, buf, sizeof(buf));
    return json_string(buf);
}

static json_t *normalize(const json_t *v, norm n)
{
    switch (n) {
    case N_DUR:
        if (json_is_number(v))
            return dur_string((int64_t)(json_number_value(v) * 1e9));
        if (json_is_string(v)) {
            int64_t ns;
            if (duration_parse(json_string_value(v), &ns) == 0)
                return dur_string(ns);
        }
        break;
    case N_THROTTLE:
        if (json_is_string(v)) {
            throttle_spec t;
            char buf[96];
            if (throttle_spec_parse(json_string_value(v), &t) == 0) {
                throttle_display(&t, buf, sizeof(buf));
                return json_string(buf);
            }
        }
        break;
    case N_THROTTLE_MAP:
        if (json_is_object(v)) {
            json_t *o = json_object();
            const char *k;
            json_t *x;
            json_object_foreach((json_t *)v, k, x) json_object_set_new(o, k, normalize(x, N_THROTTLE));
            return o;
        }
        if (json_is_array(v) && json_array_size(v) == 0)
            return json_object(); /* an empty Lua table */
        break;
    case N_POOL_ENTRIES:
        if (json_is_array(v)) {
            json_t *a = json_array();
            size_t i;
            json_t *e;
            json_array_foreach(v, i, e)
            {
                json_t *o = json_deep_copy(e);
                if (json_is_object(o) && !json_object_get(o, "weight"))
                    json_object_set_new(o, "weight", json_integer(1));
                json_array_append_new(a, o);
            }
            return a;
        }
        if (json_is_object(v) && json_object_size(v) == 0)
            return json_array();
        break;
    case N_MAP:
        if (json_is_array(v) && json_array_size(v) == 0)
            return json_object();
        break;
    case N_LIST:
        if (json_is_object(v) && json_object_size(v) == 0)
            return json_array();
        break;
    case N_KEEP:
        break;
    }
    /* an empty Lua table is {} to the JSON converter: keep the key's kind */
    return json_deep_copy(v);
}

static int validate_kind(config_kind kind, const json_t *j, char *err, size_t errlen)
{
    int rc;
    switch (kind) {
    case CONFIG_QUEUE: {
        queue_config c;
        if ((rc = queue_config_from_json(j, &c, err, errlen)) == 0)
            queue_config_fini(&c);
        return rc;
    }
    case CONFIG_EGRESS_PATH: {
        egress_path_config c;
        if ((rc = egress_path_from_json(j, &c, err, errlen)) == 0)
            egress_path_fini(&c);
        return rc;
    }
    case CONFIG_EGRESS_SOURCE: {
        egress_source s;
        if ((rc = egress_source_from_json(j, &s, err, errlen)) == 0)
            egress_source_fini(&s);
        return rc;
    }
    case CONFIG_EGRESS_POOL: {
        egress_pool p;
        if ((rc = egress_pool_from_json(j, &p, err, errlen)) == 0)
            egress_pool_fini(&p);
        return rc;
    }
    }
    return KERR_INVAL;
}

json_t *config_resolve(config_kind kind, const json_t *given, char *err, size_t errlen)
{
    static const rkey *const tables[] = {queue_rkeys, path_rkeys, source_rkeys, pool_rkeys};
    json_t *empty = NULL;
    if (!given || (json_is_array(given) && json_array_size(given) == 0))
        given = empty = json_object();
    if (validate_kind(kind, given, err, errlen) != 0) {
        json_decref(empty);
        return NULL;
    }
    json_t *out = json_object();
    for (const rkey *k = tables[kind]; k->key; k++) {
        const json_t *v = json_object_get(given, k->key);
        json_t *r = NULL;
        if (v && !json_is_null(v))
            r = normalize(v, k->n);
        else if (k->dflt)
            r = json_loads(k->dflt, JSON_DECODE_ANY, NULL);
        if (r)
            json_object_set_new(out, k->key, r);
    }
    json_decref(empty);
    return out;
}

char *config_resolve_toml(config_kind kind, const json_t *given, char *err, size_t errlen)
{
    json_t *r = config_resolve(kind, given, err, errlen);
    if (!r)
        return NULL;
    char *s = toml_json_encode(r, TOML_JSON_COMPACT, err, errlen);
    json_decref(r);
    return s;
}
