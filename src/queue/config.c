/* Validation and parsing of queue and egress configuration tables. One
 * table of known keys per maker drives both the "unknown key" check and the
 * type checks, so the Lua makers and the C parsers never disagree. Pure
 * functions plus the Lua glue; any thread. */
#include "queue/config.h"

#include <arpa/inet.h>
#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/duration.h"
#include "core/kerr.h"
#include "lua/klua.h"
#include "net/sockaddr.h"

typedef enum ctype {
    CT_DURATION,
    CT_INT,
    CT_BOOL,
    CT_STRING,
    CT_THROTTLE,
    CT_STRLIST,
    CT_ENUM,
    CT_TABLE,
    CT_ANY,
    CT_LIMIT, /* connection_limit: integer or "local:N" */
} ctype;

typedef struct ckey {
    const char *name;
    ctype type;
    const char *enums; /* "A|B|C" for CT_ENUM */
} ckey;

static bool enum_ok(const char *enums, const char *v)
{
    size_t n = strlen(v);
    const char *p = enums;
    while (*p) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len == n && strncmp(p, v, n) == 0)
            return true;
        if (!bar)
            break;
        p = bar + 1;
    }
    return false;
}

static int get_duration_s(const json_t *v, int64_t *out_ns)
{
    if (json_is_integer(v) || json_is_real(v)) {
        double d = json_number_value(v);
        if (d < 0)
            return KERR_PARSE;
        *out_ns = (int64_t)(d * 1e9);
        return 0;
    }
    if (json_is_string(v))
        return duration_parse(json_string_value(v), out_ns);
    return KERR_PARSE;
}

static int check_value(const ckey *k, const json_t *v, const char *what, char *err, size_t errlen)
{
    int64_t ns;
    throttle_spec ts;
    switch (k->type) {
    case CT_DURATION:
        if (json_is_null(v) || get_duration_s(v, &ns) == 0)
            return 0;
        snprintf(err, errlen, "%s: %s: invalid duration", what, k->name);
        return KERR_PARSE;
    case CT_INT:
        if (json_is_integer(v) && json_integer_value(v) >= 0)
            return 0;
        snprintf(err, errlen, "%s: %s: expected a non-negative integer", what, k->name);
        return KERR_PARSE;
    case CT_LIMIT:
        if (json_is_integer(v) && json_integer_value(v) >= 0)
            return 0;
        if (json_is_string(v) && strncmp(json_string_value(v), "local:", 6) == 0 &&
            atol(json_string_value(v) + 6) > 0)
            return 0;
        snprintf(err, errlen, "%s: %s: expected an integer or \"local:N\"", what, k->name);
        return KERR_PARSE;
    case CT_BOOL:
        if (json_is_boolean(v))
            return 0;
        snprintf(err, errlen, "%s: %s: expected true or false", what, k->name);
        return KERR_PARSE;
    case CT_STRING:
        if (json_is_string(v))
            return 0;
        snprintf(err, errlen, "%s: %s: expected a string", what, k->name);
        return KERR_PARSE;
    case CT_THROTTLE:
        if (json_is_string(v) && throttle_spec_parse(json_string_value(v), &ts) == 0)
            return 0;
        snprintf(err, errlen, "%s: %s: invalid throttle (expected e.g. \"100/s\" or \"5,000/h\")",
                 what, k->name);
        return KERR_PARSE;
    case CT_STRLIST: {
        if (json_is_object(v) && json_object_size(v) == 0)
            return 0;
        if (json_is_array(v)) {
            size_t i;
            json_t *x;
            json_array_foreach(v, i, x) if (!json_is_string(x)) goto badlist;
            return 0;
        }
    badlist:
        snprintf(err, errlen, "%s: %s: expected a list of strings", what, k->name);
        return KERR_PARSE;
    }
    case CT_ENUM:
        if (json_is_string(v) && enum_ok(k->enums, json_string_value(v)))
            return 0;
        snprintf(err, errlen, "%s: %s: expected one of %s", what, k->name, k->enums);
        return KERR_PARSE;
    case CT_TABLE:
        if (json_is_object(v) || json_is_array(v))
            return 0;
        snprintf(err, errlen, "%s: %s: expected a table", what, k->name);
        return KERR_PARSE;
    case CT_ANY:
        return 0;
    }
    return 0;
}

static int validate(const json_t *j, const ckey *keys, const char *what, char *err,
                    size_t errlen)
{
    if (!json_is_object(j)) {
        snprintf(err, errlen, "%s: expected a table", what);
        return KERR_PARSE;
    }
    const char *name;
    json_t *v;
    json_object_foreach((json_t *)j, name, v) {
        const ckey *k = keys;
        while (k->name && strcmp(k->name, name) != 0)
            k++;
        if (!k->name) {
            snprintf(err, errlen, "%s: unknown field '%s'", what, name);
            return KERR_PARSE;
        }
        int rc = check_value(k, v, what, err, errlen);
        if (rc)
            return rc;
    }
    return 0;
}

static int64_t dur_ns(const json_t *j, const char *key, int64_t dflt)
{
    const json_t *v = json_object_get(j, key);
    int64_t ns;
    if (!v || json_is_null(v) || get_duration_s(v, &ns) != 0)
        return dflt;
    return ns;
}

static char *str_or(const json_t *j, const char *key, const char *dflt)
{
    const char *s = json_string_value(json_object_get(j, key));
    if (!s)
        s = dflt;
    return s ? strdup(s) : NULL;
}

static long long_or(const json_t *j, const char *key, long dflt)
{
    const json_t *v = json_object_get(j, key);
    if (json_is_integer(v))
        return (long)json_integer_value(v);
    if (json_is_string(v) && strncmp(json_string_value(v), "local:", 6) == 0)
        return atol(json_string_value(v) + 6);
    return dflt;
}

static bool bool_or(const json_t *j, const char *key, bool dflt)
{
    const json_t *v = json_object_get(j, key);
    return json_is_boolean(v) ? json_is_true(v) : dflt;
}

/* ---- queue config ------------------------------------------------------------ */

static const ckey queue_keys[] = {
    {"egress_pool", CT_STRING, NULL},
    {"max_age", CT_DURATION, NULL},
    {"retry_interval", CT_DURATION, NULL},
    {"max_retry_interval", CT_DURATION, NULL},
    {"max_message_rate", CT_THROTTLE, NULL},
    {"protocol", CT_TABLE, NULL},
    {"reap_interval", CT_DURATION, NULL},
    {"refresh_interval", CT_DURATION, NULL},
    {"refresh_strategy", CT_ENUM, "Ttl|Epoch"},
    {"provider_name", CT_STRING, NULL},
    {"timerwheel_tick_interval", CT_DURATION, NULL},
    {"strategy", CT_ENUM, "SingletonTimerWheel|SingletonTimerWheelV2|TimerWheel|SkipList"},
    {"shrink_policy", CT_TABLE, NULL},
    {NULL, 0, NULL},
};

void queue_config_defaults(queue_config *c)
{
    memset(c, 0, sizeof(*c));
    c->retry_interval_s = 20 * 60;
    c->max_age_s = 7 * 86400;
    c->proto = QPROTO_SMTP;
    c->dir_mode = 0750;
    c->file_mode = 0640;
    c->batch_size = 1;
    c->min_batch_size = 1;
    c->reap_interval_ns = 600 * NS_PER_SEC;
    c->refresh_interval_ns = 60 * NS_PER_SEC;
}

static int parse_mode(const json_t *v, int *out)
{
    if (json_is_integer(v)) {
        *out = (int)json_integer_value(v);
        return 0;
    }
    if (json_is_string(v)) {
        char *end;
        long m = strtol(json_string_value(v), &end, 8);
        if (*end == 0) {
            *out = (int)m;
            return 0;
        }
    }
    return KERR_PARSE;
}

/* An mx_list {addr=}: "ip", "[ip]", "ip:port" or "[ip6]:port". */
static bool mx_addr_ok(const char *s)
{
    unsigned char raw[16];
    struct sockaddr_storage ss;
    socklen_t len;
    if (inet_pton(AF_INET, s, raw) == 1 || inet_pton(AF_INET6, s, raw) == 1 ||
        net_parse_hostport(s, &ss, &len) == 0)
        return true;
    size_t n = strlen(s);
    char inner[INET6_ADDRSTRLEN + 1];
    if (n < 3 || s[0] != '[' || s[n - 1] != ']' || n - 2 >= sizeof(inner))
        return false;
    memcpy(inner, s + 1, n - 2);
    inner[n - 2] = '\0';
    return inet_pton(AF_INET, inner, raw) == 1 || inet_pton(AF_INET6, inner, raw) == 1;
}

static int parse_protocol(const json_t *p, queue_config *c, char *err, size_t errlen)
{
    if (!json_is_object(p)) {
        snprintf(err, errlen, "make_queue_config: protocol: expected a table");
        return KERR_PARSE;
    }
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)p, k, v) {
        if (strcmp(k, "smtp") == 0) {
            c->proto = QPROTO_SMTP;
            static const ckey smtp_keys[] = {{"mx_list", CT_TABLE, NULL},
                                             {"treat_mx_list_as_secure", CT_BOOL, NULL},
                                             {NULL, 0, NULL}};
            int rc = validate(v, smtp_keys, "make_queue_config: protocol.smtp", err, errlen);
            if (rc)
                return rc;
            json_t *mx = json_object_get(v, "mx_list");
            if (mx) {
                if (!json_is_array(mx) || json_array_size(mx) == 0) {
                    snprintf(err, errlen, "make_queue_config: protocol.smtp.mx_list: expected a "
                                          "non-empty list");
                    return KERR_PARSE;
                }
                size_t i;
                json_t *e;
                json_array_foreach(mx, i, e) {
                    bool ok = json_is_string(e) ||
                              (json_is_object(e) && json_is_string(json_object_get(e, "name")) &&
                               json_is_string(json_object_get(e, "addr")));
                    if (!ok) {
                        snprintf(err, errlen,
                                 "make_queue_config: protocol.smtp.mx_list[%zu]: expected a host "
                                 "name, \"[ip]\" or {name=, addr=}",
                                 i + 1);
                        return KERR_PARSE;
                    }
                    /* KumoMTA's ResolvedAddress: addr is an address, not a name:
                     * "10.0.0.1", "10.0.0.1:2025", "::1", "[::1]", "[::1]:2025" */
                    const char *addr =
                        json_is_object(e) ? json_string_value(json_object_get(e, "addr")) : NULL;
                    if (addr && !mx_addr_ok(addr)) {
                        snprintf(err, errlen,
                                 "make_queue_config: protocol.smtp.mx_list[%zu]: addr '%.200s' is "
                                 "not an IP address with an optional port",
                                 i + 1, addr);
                        return KERR_PARSE;
                    }
                }
                c->mx_list = json_incref(mx);
            }
        } else if (strcmp(k, "maildir_path") == 0) {
            if (!json_is_string(v)) {
                snprintf(err, errlen, "make_queue_config: protocol.maildir_path: expected a path");
                return KERR_PARSE;
            }
            c->proto = QPROTO_MAILDIR;
            free(c->maildir_path);
            c->maildir_path = strdup(json_string_value(v));
        } else if (strcmp(k, "dir_mode") == 0 || strcmp(k, "file_mode") == 0) {
            if (parse_mode(v, k[0] == 'd' ? &c->dir_mode : &c->file_mode) != 0) {
                snprintf(err, errlen, "make_queue_config: protocol.%s: expected a mode", k);
                return KERR_PARSE;
            }
        } else if (strcmp(k, "custom_lua") == 0) {
            static const ckey lua_keys[] = {{"constructor", CT_STRING, NULL},
                                            {"batch_size", CT_INT, NULL},
                                            {"min_batch_size", CT_INT, NULL},
                                            {"max_batch_latency", CT_DURATION, NULL},
                                            {NULL, 0, NULL}};
            int rc = validate(v, lua_keys, "make_queue_config: protocol.custom_lua", err, errlen);
            if (rc)
                return rc;
            const char *ctor = json_string_value(json_object_get(v, "constructor"));
            if (!ctor) {
                snprintf(err, errlen,
                         "make_queue_config: protocol.custom_lua: constructor is required");
                return KERR_PARSE;
            }
            c->proto = QPROTO_LUA;
            free(c->constructor);
            c->constructor = strdup(ctor);
            long bs = long_or(v, "batch_size", 1), mbs = long_or(v, "min_batch_size", 1);
            if (bs < 0 || bs > 100000 || mbs < 0 || mbs > 100000) {
                snprintf(err, errlen,
                         "make_queue_config: protocol.custom_lua: %s must be between 0 and 100000",
                         bs < 0 || bs > 100000 ? "batch_size" : "min_batch_size");
                return KERR_PARSE;
            }
            /* 0 means the same as 1 here (KumoMTA's usize would take it and
             * then hand over empty batches) */
            c->batch_size = bs < 1 ? 1 : (int)bs;
            c->min_batch_size = mbs < 1 ? 1 : (int)mbs;
            c->max_batch_latency_ns = dur_ns(v, "max_batch_latency", 0);
        } else {
            snprintf(err, errlen, "make_queue_config: protocol: unknown field '%s'", k);
            return KERR_PARSE;
        }
    }
    return 0;
}

int queue_config_from_json(const json_t *j, queue_config *c, char *err, size_t errlen)
{
    queue_config_defaults(c);
    int rc = validate(j, queue_keys, "make_queue_config", err, errlen);
    if (rc)
        return rc;
    c->retry_interval_s = dur_ns(j, "retry_interval", 20 * 60 * NS_PER_SEC) / NS_PER_SEC;
    if (c->retry_interval_s < 1)
        c->retry_interval_s = 1;
    c->max_retry_interval_s = dur_ns(j, "max_retry_interval", 0) / NS_PER_SEC;
    c->max_age_s = dur_ns(j, "max_age", 7 * 86400 * NS_PER_SEC) / NS_PER_SEC;
    c->egress_pool = str_or(j, "egress_pool", NULL);
    const char *rate = json_string_value(json_object_get(j, "max_message_rate"));
    if (rate) {
        c->has_max_message_rate = true;
        throttle_spec_parse(rate, &c->max_message_rate);
    }
    json_t *p = json_object_get(j, "protocol");
    if (p && (rc = parse_protocol(p, c, err, errlen)) != 0) {
        queue_config_fini(c);
        return rc;
    }
    c->reap_interval_ns = dur_ns(j, "reap_interval", c->reap_interval_ns);
    c->refresh_interval_ns = dur_ns(j, "refresh_interval", c->refresh_interval_ns);
    const char *rs = json_string_value(json_object_get(j, "refresh_strategy"));
    c->refresh_epoch = rs && strcmp(rs, "Epoch") == 0;
    c->provider_name = str_or(j, "provider_name", NULL);
    return 0;
}

void queue_config_fini(queue_config *c)
{
    free(c->egress_pool);
    json_decref(c->mx_list);
    free(c->maildir_path);
    free(c->constructor);
    free(c->provider_name);
    memset(c, 0, sizeof(*c));
}

/* ---- egress path --------------------------------------------------------------- */

static const ckey path_keys[] = {
    {"connection_limit", CT_LIMIT, NULL},
    {"additional_connection_limits", CT_TABLE, NULL},
    {"enable_tls", CT_ENUM, "Opportunistic|OpportunisticInsecure|Required|RequiredInsecure|Disabled"},
    {"enable_mta_sts", CT_BOOL, NULL},
    {"enable_dane", CT_BOOL, NULL},
    {"enable_pipelining", CT_BOOL, NULL},
    {"enable_rset", CT_BOOL, NULL},
    {"tls_prefer_openssl", CT_BOOL, NULL},
    {"tls_certificate", CT_ANY, NULL},
    {"tls_private_key", CT_ANY, NULL},
    {"openssl_cipher_list", CT_STRING, NULL},
    {"openssl_cipher_suites", CT_STRING, NULL},
    {"openssl_options", CT_STRING, NULL},
    {"rustls_cipher_suites", CT_STRLIST, NULL},
    {"connect_timeout", CT_DURATION, NULL},
    {"banner_timeout", CT_DURATION, NULL},
    {"ehlo_timeout", CT_DURATION, NULL},
    {"mail_from_timeout", CT_DURATION, NULL},
    {"rcpt_to_timeout", CT_DURATION, NULL},
    {"data_timeout", CT_DURATION, NULL},
    {"data_dot_timeout", CT_DURATION, NULL},
    {"rset_timeout", CT_DURATION, NULL},
    {"idle_timeout", CT_DURATION, NULL},
    {"starttls_timeout", CT_DURATION, NULL},
    {"auth_timeout", CT_DURATION, NULL},
    {"system_shutdown_timeout", CT_DURATION, NULL},
    {"max_ready", CT_INT, NULL},
    {"consecutive_connection_failures_before_delay", CT_INT, NULL},
    {"smtp_port", CT_INT, NULL},
    {"smtp_auth_plain_username", CT_STRING, NULL},
    {"smtp_auth_plain_password", CT_ANY, NULL},
    {"allow_smtp_auth_plain_without_tls", CT_BOOL, NULL},
    {"allow_smtp_auth_plain_without_valid_certificate", CT_BOOL, NULL},
    {"max_message_rate", CT_THROTTLE, NULL},
    {"additional_message_rate_throttles", CT_TABLE, NULL},
    {"source_selection_rate", CT_THROTTLE, NULL},
    {"additional_source_selection_rates", CT_TABLE, NULL},
    {"max_connection_rate", CT_THROTTLE, NULL},
    {"max_deliveries_per_connection", CT_INT, NULL},
    {"max_recipients_per_batch", CT_INT, NULL},
    {"prohibited_hosts", CT_STRLIST, NULL},
    {"skip_hosts", CT_STRLIST, NULL},
    {"ip_lookup_strategy", CT_ENUM, "Ipv4Only|Ipv6Only|Ipv4AndIpv6|Ipv6thenIpv4|Ipv4thenIpv6"},
    {"ehlo_domain", CT_STRING, NULL},
    {"aggressive_connection_opening", CT_BOOL, NULL},
    {"refresh_interval", CT_DURATION, NULL},
    {"refresh_strategy", CT_ENUM, "Ttl|Epoch"},
    {"dispatcher_wakeup_strategy", CT_ENUM, "Aggressive|Relaxed"},
    {"maintainer_wakeup_strategy", CT_ENUM, "Aggressive|Relaxed"},
    {"provider_name", CT_STRING, NULL},
    {"remember_broken_tls", CT_DURATION, NULL},
    {"opportunistic_tls_reconnect_on_failed_handshake", CT_BOOL, NULL},
    {"use_lmtp", CT_BOOL, NULL},
    {"reconnect_strategy", CT_ENUM, "ConnectNextHost|TerminateSession|ReconnectSameHost"},
    {"readyq_pool_name", CT_STRING, NULL},
    {"low_memory_reduction_policy", CT_ENUM, "ShrinkDataAndMeta|ShrinkData|NoShrink"},
    {"no_memory_reduction_policy", CT_ENUM, "ShrinkDataAndMeta|ShrinkData|NoShrink"},
    {"try_next_host_on_transport_error", CT_BOOL, NULL},
    {"ignore_8bit_checks", CT_BOOL, NULL},
    {"dispatcher_progress_watchdog_timeout", CT_DURATION, NULL},
    {NULL, 0, NULL},
};

void egress_path_defaults(egress_path_config *c)
{
    memset(c, 0, sizeof(*c));
    c->connection_limit = 32;
    c->max_ready = 1024;
    c->max_deliveries_per_connection = 1024;
    c->max_recipients_per_batch = 100;
    c->consecutive_connection_failures_before_delay = 100;
    c->smtp_port = 25;
    c->enable_tls = TLS_OPPORTUNISTIC;
    c->enable_pipelining = true;
    c->enable_rset = true;
    c->connect_timeout_ns = 60 * NS_PER_SEC;
    c->banner_timeout_ns = 60 * NS_PER_SEC;
    c->ehlo_timeout_ns = 300 * NS_PER_SEC;
    c->mail_from_timeout_ns = 300 * NS_PER_SEC;
    c->rcpt_to_timeout_ns = 300 * NS_PER_SEC;
    c->data_timeout_ns = 300 * NS_PER_SEC;
    c->data_dot_timeout_ns = 300 * NS_PER_SEC;
    c->rset_timeout_ns = 5 * NS_PER_SEC;
    c->idle_timeout_ns = 5 * NS_PER_SEC;
    c->starttls_timeout_ns = 5 * NS_PER_SEC;
    c->auth_timeout_ns = 60 * NS_PER_SEC;
    c->refresh_interval_ns = 60 * NS_PER_SEC;
    static const char *const prohibited[] = {"127.0.0.0/8", "::1", "0.0.0.0", "::"};
    for (int i = 0; i < 4; i++)
        cidr_list_add(&c->prohibited_hosts, prohibited[i]);
}

static void named_throttles_free(named_throttle *t, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(t[i].name);
    free(t);
}

/* events per second, for ordering: the tightest throttle is checked first */
static double rate_of(const throttle_spec *s)
{
    return s->period_ns > 0 ? (double)s->limit * 1e9 / (double)s->period_ns : 0;
}

static int cmp_named_throttle(const void *a, const void *b)
{
    double x = rate_of(&((const named_throttle *)a)->spec),
           y = rate_of(&((const named_throttle *)b)->spec);
    return x < y ? -1 : x > y;
}

static int cmp_named_limit(const void *a, const void *b)
{
    long x = ((const named_limit *)a)->limit, y = ((const named_limit *)b)->limit;
    return x < y ? -1 : x > y;
}

/* A {name = "spec"} table; sorted smallest rate first, as the pages of
 * additional_message_rate_throttles and source_selection_rate say. */
static int parse_named_throttles(const json_t *j, const char *key, named_throttle **out,
                                 size_t *n, char *err, size_t errlen)
{
    const json_t *t = json_object_get(j, key);
    if (!t || json_is_null(t) || (json_is_array(t) && json_array_size(t) == 0))
        return 0;
    if (!json_is_object(t)) {
        snprintf(err, errlen, "make_egress_path: %s: expected a table of name = throttle", key);
        return KERR_PARSE;
    }
    *out = calloc(json_object_size(t) + 1, sizeof(**out));
    if (!*out)
        abort();
    const char *k;
    const json_t *v;
    json_object_foreach((json_t *)t, k, v)
    {
        named_throttle *e = &(*out)[*n];
        if (!json_is_string(v) || throttle_spec_parse(json_string_value(v), &e->spec) != 0) {
            snprintf(err, errlen, "make_egress_path: %s: %s: invalid throttle (expected e.g. \"100/s\")",
                     key, k);
            return KERR_PARSE;
        }
        e->name = strdup(k);
        (*n)++;
    }
    if (*n > 1)
        qsort(*out, *n, sizeof(**out), cmp_named_throttle);
    return 0;
}

static int parse_named_limits(const json_t *j, egress_path_config *c, char *err, size_t errlen)
{
    const json_t *t = json_object_get(j, "additional_connection_limits");
    if (!t || json_is_null(t) || (json_is_array(t) && json_array_size(t) == 0))
        return 0;
    if (!json_is_object(t)) {
        snprintf(err, errlen,
                 "make_egress_path: additional_connection_limits: expected a table of name = limit");
        return KERR_PARSE;
    }
    c->add_limits = calloc(json_object_size(t) + 1, sizeof(*c->add_limits));
    if (!c->add_limits)
        abort();
    const char *k;
    const json_t *v;
    json_object_foreach((json_t *)t, k, v)
    {
        named_limit *e = &c->add_limits[c->n_add_limits];
        const char *s = json_string_value(v);
        if (json_is_integer(v) && json_integer_value(v) > 0)
            e->limit = (long)json_integer_value(v);
        else if (s) {
            e->local = strncmp(s, "local:", 6) == 0;
            char digits[32];
            size_t o = 0;
            for (const char *p = s + (e->local ? 6 : 0); *p && o < sizeof(digits) - 1; p++)
                if (*p != ',' && *p != '_')
                    digits[o++] = *p;
            digits[o] = 0;
            char *end;
            e->limit = strtol(digits, &end, 10);
            if (*end || o == 0)
                e->limit = 0;
        }
        if (e->limit <= 0) {
            snprintf(err, errlen,
                     "make_egress_path: additional_connection_limits: %s: expected a positive "
                     "integer or \"local:N\"",
                     k);
            return KERR_PARSE;
        }
        e->name = strdup(k);
        c->n_add_limits++;
    }
    if (c->n_add_limits > 1)
        qsort(c->add_limits, c->n_add_limits, sizeof(*c->add_limits), cmp_named_limit);
    return 0;
}

int egress_path_from_json(const json_t *j, egress_path_config *c, char *err, size_t errlen)
{
    egress_path_defaults(c);
    int rc = validate(j, path_keys, "make_egress_path", err, errlen);
    if (rc) {
        egress_path_fini(c);
        return rc;
    }
    c->connection_limit = long_or(j, "connection_limit", c->connection_limit);
    const char *cls = json_string_value(json_object_get(j, "connection_limit"));
    c->connection_limit_local = cls && strncmp(cls, "local:", 6) == 0;
    const char *ssr = json_string_value(json_object_get(j, "source_selection_rate"));
    if (ssr && throttle_spec_parse(ssr, &c->source_selection_rate) == 0)
        c->has_source_selection_rate = true;
    rc = parse_named_throttles(j, "additional_message_rate_throttles", &c->add_rates,
                               &c->n_add_rates, err, errlen);
    if (!rc)
        rc = parse_named_throttles(j, "additional_source_selection_rates",
                                   &c->add_selection_rates, &c->n_add_selection_rates, err,
                                   errlen);
    if (!rc)
        rc = parse_named_limits(j, c, err, errlen);
    if (rc) {
        egress_path_fini(c);
        return rc;
    }
    c->max_ready = long_or(j, "max_ready", c->max_ready);
    c->max_deliveries_per_connection =
        long_or(j, "max_deliveries_per_connection", c->max_deliveries_per_connection);
    c->max_recipients_per_batch =
        long_or(j, "max_recipients_per_batch", c->max_recipients_per_batch);
    c->consecutive_connection_failures_before_delay =
        long_or(j, "consecutive_connection_failures_before_delay",
                c->consecutive_connection_failures_before_delay);
    c->smtp_port = long_or(j, "smtp_port", c->smtp_port);
    const char *tls = json_string_value(json_object_get(j, "enable_tls"));
    if (tls) {
        static const char *const modes[] = {"Opportunistic", "OpportunisticInsecure", "Required",
                                            "RequiredInsecure", "Disabled"};
        for (int i = 0; i < 5; i++)
            if (strcmp(tls, modes[i]) == 0)
                c->enable_tls = (tls_mode)i;
    }
    c->enable_pipelining = bool_or(j, "enable_pipelining", true);
    c->enable_rset = bool_or(j, "enable_rset", true);
    c->ehlo_domain = str_or(j, "ehlo_domain", NULL);
    c->auth_user = str_or(j, "smtp_auth_plain_username", NULL);
    const json_t *pw = json_object_get(j, "smtp_auth_plain_password");
    if (json_is_string(pw))
        c->auth_password = strdup(json_string_value(pw));
    else if (json_is_object(pw) && json_is_string(json_object_get(pw, "key_data")))
        c->auth_password = strdup(json_string_value(json_object_get(pw, "key_data")));
    c->allow_auth_without_tls = bool_or(j, "allow_smtp_auth_plain_without_tls", false);
    c->connect_timeout_ns = dur_ns(j, "connect_timeout", c->connect_timeout_ns);
    c->banner_timeout_ns = dur_ns(j, "banner_timeout", c->banner_timeout_ns);
    c->ehlo_timeout_ns = dur_ns(j, "ehlo_timeout", c->ehlo_timeout_ns);
    c->mail_from_timeout_ns = dur_ns(j, "mail_from_timeout", c->mail_from_timeout_ns);
    c->rcpt_to_timeout_ns = dur_ns(j, "rcpt_to_timeout", c->rcpt_to_timeout_ns);
    c->data_timeout_ns = dur_ns(j, "data_timeout", c->data_timeout_ns);
    c->data_dot_timeout_ns = dur_ns(j, "data_dot_timeout", c->data_dot_timeout_ns);
    c->rset_timeout_ns = dur_ns(j, "rset_timeout", c->rset_timeout_ns);
    c->idle_timeout_ns = dur_ns(j, "idle_timeout", c->idle_timeout_ns);
    c->starttls_timeout_ns = dur_ns(j, "starttls_timeout", c->starttls_timeout_ns);
    c->auth_timeout_ns = dur_ns(j, "auth_timeout", c->auth_timeout_ns);
    c->watchdog_timeout_ns = dur_ns(j, "dispatcher_progress_watchdog_timeout", 0);
    c->refresh_interval_ns = dur_ns(j, "refresh_interval", c->refresh_interval_ns);
    const char *rs = json_string_value(json_object_get(j, "refresh_strategy"));
    c->refresh_epoch = rs && strcmp(rs, "Epoch") == 0;
    c->provider_name = str_or(j, "provider_name", NULL);
    const char *rate = json_string_value(json_object_get(j, "max_message_rate"));
    if (rate) {
        c->has_max_message_rate = true;
        throttle_spec_parse(rate, &c->max_message_rate);
    }
    rate = json_string_value(json_object_get(j, "max_connection_rate"));
    if (rate) {
        c->has_max_connection_rate = true;
        throttle_spec_parse(rate, &c->max_connection_rate);
    }
    const char *ls = json_string_value(json_object_get(j, "ip_lookup_strategy"));
    if (ls) {
        static const char *const s[] = {"Ipv4Only", "Ipv6Only", "Ipv4AndIpv6", "Ipv6thenIpv4",
                                        "Ipv4thenIpv6"};
        for (int i = 0; i < 5; i++)
            if (strcmp(ls, s[i]) == 0)
                c->ip_lookup_strategy = i;
    } else {
        c->ip_lookup_strategy = 2;
    }
    static const char *const lists[] = {"prohibited_hosts", "skip_hosts"};
    for (int i = 0; i < 2; i++) {
        json_t *l = json_object_get(j, lists[i]);
        if (!l)
            continue;
        cidr_list *dst = i == 0 ? &c->prohibited_hosts : &c->skip_hosts;
        cidr_list_fini(dst);
        char e2[200];
        if (cidr_list_from_json(l, dst, e2, sizeof(e2)) != 0) {
            snprintf(err, errlen, "make_egress_path: %s: %s", lists[i], e2);
            egress_path_fini(c);
            return KERR_PARSE;
        }
    }
    return 0;
}

void egress_path_fini(egress_path_config *c)
{
    free(c->ehlo_domain);
    free(c->auth_user);
    free(c->auth_password);
    free(c->provider_name);
    named_throttles_free(c->add_rates, c->n_add_rates);
    named_throttles_free(c->add_selection_rates, c->n_add_selection_rates);
    for (size_t i = 0; i < c->n_add_limits; i++)
        free(c->add_limits[i].name);
    free(c->add_limits);
    cidr_list_fini(&c->prohibited_hosts);
    cidr_list_fini(&c->skip_hosts);
    memset(c, 0, sizeof(*c));
}

/* ---- sources and pools ---------------------------------------------------------- */

static const ckey source_keys[] = {
    {"name", CT_STRING, NULL},
    {"ehlo_domain", CT_STRING, NULL},
    {"source_address", CT_STRING, NULL},
    {"remote_port", CT_INT, NULL},
    {"ha_proxy_server", CT_STRING, NULL},
    {"ha_proxy_source_address", CT_STRING, NULL},
    {"socks5_proxy_server", CT_STRING, NULL},
    {"socks5_proxy_source_address", CT_STRING, NULL},
    {"socks5_proxy_username", CT_STRING, NULL},
    {"socks5_proxy_password", CT_ANY, NULL},
    {"suspend_when_unplumbed", CT_ANY, NULL},
    {"suspend_when_proxy_unhealthy", CT_ANY, NULL},
    {"ttl", CT_DURATION, NULL},
    {NULL, 0, NULL},
};

int egress_source_from_json(const json_t *j, egress_source *s, char *err, size_t errlen)
{
    memset(s, 0, sizeof(*s));
    int rc = validate(j, source_keys, "make_egress_source", err, errlen);
    if (rc)
        return rc;
    static const char *const unsupported[] = {"ha_proxy_server", "socks5_proxy_server", NULL};
    for (int i = 0; unsupported[i]; i++)
        if (json_object_get(j, unsupported[i])) {
            snprintf(err, errlen, "make_egress_source: %s: proxies are not supported by kumod yet",
                     unsupported[i]);
            return KERR_PARSE;
        }
    s->name = str_or(j, "name", NULL);
    if (!s->name) {
        snprintf(err, errlen, "make_egress_source: name is required");
        return KERR_PARSE;
    }
    s->source_address = str_or(j, "source_address", NULL);
    if (s->source_address) {
        cidr c;
        if (cidr_parse(s->source_address, &c) != 0) {
            snprintf(err, errlen, "make_egress_source: source_address: '%s' is not an IP address",
                     s->source_address);
            egress_source_fini(s);
            return KERR_PARSE;
        }
    }
    s->ehlo_domain = str_or(j, "ehlo_domain", NULL);
    s->remote_port = long_or(j, "remote_port", 0);
    return 0;
}

void egress_source_fini(egress_source *s)
{
    free(s->name);
    free(s->source_address);
    free(s->ehlo_domain);
    memset(s, 0, sizeof(*s));
}

static const ckey pool_keys[] = {
    {"name", CT_STRING, NULL},
    {"entries", CT_TABLE, NULL},
    {"ttl", CT_DURATION, NULL},
    {NULL, 0, NULL},
};

int egress_pool_from_json(const json_t *j, egress_pool *p, char *err, size_t errlen)
{
    memset(p, 0, sizeof(*p));
    int rc = validate(j, pool_keys, "make_egress_pool", err, errlen);
    if (rc)
        return rc;
    p->name = str_or(j, "name", NULL);
    if (!p->name) {
        snprintf(err, errlen, "make_egress_pool: name is required");
        return KERR_PARSE;
    }
    json_t *e = json_object_get(j, "entries");
    size_t n = json_is_array(e) ? json_array_size(e) : 0;
    p->entries = calloc(n ? n : 1, sizeof(*p->entries));
    for (size_t i = 0; i < n; i++) {
        json_t *x = json_array_get(e, i);
        static const ckey entry_keys[] = {
            {"name", CT_STRING, NULL}, {"weight", CT_INT, NULL}, {NULL, 0, NULL}};
        if ((rc = validate(x, entry_keys, "make_egress_pool: entries", err, errlen)) != 0 ||
            !json_is_string(json_object_get(x, "name"))) {
            if (!rc)
                snprintf(err, errlen, "make_egress_pool: entries[%zu]: name is required", i + 1);
            egress_pool_fini(p);
            return KERR_PARSE;
        }
        p->entries[i].name = strdup(json_string_value(json_object_get(x, "name")));
        p->entries[i].weight = (unsigned)long_or(x, "weight", 1);
        p->n++;
    }
    return 0;
}

void egress_pool_fini(egress_pool *p)
{
    for (size_t i = 0; i < p->n; i++)
        free(p->entries[i].name);
    free(p->entries);
    free(p->name);
    memset(p, 0, sizeof(*p));
}

static unsigned gcd(unsigned a, unsigned b)
{
    while (b) {
        unsigned t = a % b;
        a = b;
        b = t;
    }
    return a;
}

int egress_pool_next(const egress_pool *p, wrr_state *st)
{
    /* LVS interleaved weighted round robin over the entries with a weight */
    int idx[256];
    int n = 0;
    unsigned g = 0, maxw = 0;
    for (size_t i = 0; i < p->n && n < 256; i++) {
        if (p->entries[i].weight == 0)
            continue;
        idx[n++] = (int)i;
        g = gcd(g, p->entries[i].weight);
        if (p->entries[i].weight > maxw)
            maxw = p->entries[i].weight;
    }
    if (n == 0)
        return -1;
    for (int guard = 0; guard < n * (int)(maxw / g + 1) + 1; guard++) {
        st->i = (st->i + 1) % n;
        if (st->i == 0) {
            st->cw -= (int)g;
            if (st->cw <= 0)
                st->cw = (int)maxw;
        }
        if (p->entries[idx[st->i]].weight >= (unsigned)st->cw)
            return idx[st->i];
    }
    return -1;
}

/* ---- Lua makers ------------------------------------------------------------------ */

typedef int (*check_fn)(const json_t *, char *, size_t);

static int check_queue(const json_t *j, char *err, size_t errlen)
{
    queue_config c;
    int rc = queue_config_from_json(j, &c, err, errlen);
    if (rc == 0)
        queue_config_fini(&c);
    return rc;
}

static int check_path(const json_t *j, char *err, size_t errlen)
{
    egress_path_config c;
    int rc = egress_path_from_json(j, &c, err, errlen);
    if (rc == 0)
        egress_path_fini(&c);
    return rc;
}

static int check_source(const json_t *j, char *err, size_t errlen)
{
    egress_source s;
    int rc = egress_source_from_json(j, &s, err, errlen);
    if (rc == 0)
        egress_source_fini(&s);
    return rc;
}

static int check_pool(const json_t *j, char *err, size_t errlen)
{
    egress_pool p;
    int rc = egress_pool_from_json(j, &p, err, errlen);
    if (rc == 0)
        egress_pool_fini(&p);
    return rc;
}

static int make_generic(lua_State *L, check_fn check, const char *what)
{
    if (lua_isnoneornil(L, 1))
        lua_newtable(L);
    luaL_checktype(L, 1, LUA_TTABLE);
    char err[512];
    json_t *j = klua_to_json(L, 1, err, sizeof(err));
    if (!j)
        return luaL_error(L, "kumo.%s: %s", what, err);
    int rc = check(j, err, sizeof(err));
    json_decref(j);
    if (rc)
        return luaL_error(L, "kumo.%s", err);
    lua_pushvalue(L, 1);
    return 1;
}

static int l_make_queue_config(lua_State *L)
{
    return make_generic(L, check_queue, "make_queue_config");
}

static int l_make_egress_path(lua_State *L)
{
    return make_generic(L, check_path, "make_egress_path");
}

static int l_make_egress_source(lua_State *L)
{
    return make_generic(L, check_source, "make_egress_source");
}

static int l_make_egress_pool(lua_State *L)
{
    return make_generic(L, check_pool, "make_egress_pool");
}

static void config_open(lua_State *L)
{
    lua_pushcfunction(L, l_make_queue_config);
    lua_setfield(L, -2, "make_queue_config");
    lua_pushcfunction(L, l_make_egress_path);
    lua_setfield(L, -2, "make_egress_path");
    lua_pushcfunction(L, l_make_egress_source);
    lua_setfield(L, -2, "make_egress_source");
    lua_pushcfunction(L, l_make_egress_pool);
    lua_setfield(L, -2, "make_egress_pool");
}

void queue_config_lua_register(void)
{
    klua_register_opener(config_open);
    queue_config_lua_register_invoke();
}
