/* ESMTP listener parameters: parsing of start_esmtp_listener's table and of
 * its nested `peer` / `via` blocks, the application of blocks to a session's
 * effective parameters, and a process-wide cache of the TLS contexts those
 * parameters name.
 *
 * Parsing runs on the thread that runs init (or, for
 * smtp_server_get_dynamic_parameters, on the session's reactor); a parsed
 * block is immutable and read by every reactor. The TLS cache is guarded by
 * a mutex: contexts are built at start-up for every configured block and
 * otherwise on the first STARTTLS that needs one (a `hostname` override
 * without a certificate gets its own self-signed one). Errors are reported
 * with the key's name ("peer.127.0.0.1.banner: expected a string"). */
#include "smtp/listener_cfg.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/duration.h"
#include "core/kerr.h"
#include "lua/lib/cidr_map.h"
#include "net/sockaddr.h"
#include "net/tls.h"

/* Which keys a block sets. */
enum {
    B_HOSTNAME = 1u << 0,
    B_BANNER = 1u << 1,
    B_RELAY_HOSTS = 1u << 2,
    B_CLIENT_TIMEOUT = 1u << 3,
    B_DATA_PROCESSING_TIMEOUT = 1u << 4,
    B_MIN_DATA_RATE = 1u << 5,
    B_MAX_MESSAGES = 1u << 6,
    B_MAX_RECIPIENTS = 1u << 7,
    B_MAX_MESSAGE_SIZE = 1u << 8,
    B_DATA_BUFFER_SIZE = 1u << 9,
    B_LINE_ENDINGS = 1u << 10,
    B_LINE_LENGTH = 1u << 11,
    B_TRACE_HEADERS = 1u << 12,
    B_TLS_CERTIFICATE = 1u << 13,
    B_TLS_PRIVATE_KEY = 1u << 14,
    B_TLS_CLIENT_CA = 1u << 15,
    B_DEFERRED_SPOOL = 1u << 16,
    B_DEFERRED_QUEUE = 1u << 17,
    B_ALLOW_XCLIENT = 1u << 18,
    B_BATCH_HANDLING = 1u << 19,
};

typedef struct lcfg_map {
    cidr_map *map;       /* slot -> blocks[slot] */
    lcfg_block **blocks; /* owned */
    size_t n;
} lcfg_map;

struct lcfg_block {
    unsigned set;
    lcfg_params v; /* the values of the keys in set (strings point into owned below) */
    char *hostname, *banner, *trace_header_name;
    char *tls_certificate, *tls_private_key, *tls_required_client_ca;
    cidr_list relay_hosts;
    json_t *include_meta_names;
    json_t *meta; /* object or NULL */
    lcfg_map peer, via;
};

/* ---- defaults -------------------------------------------------------------------- */

static pthread_once_t defaults_once = PTHREAD_ONCE_INIT;
static char default_hostname[256];
static cidr_list default_relay_hosts;
static json_t *default_meta_names;

static void init_defaults(void)
{
    if (gethostname(default_hostname, sizeof(default_hostname) - 1) != 0)
        snprintf(default_hostname, sizeof(default_hostname), "localhost");
    cidr_list_add(&default_relay_hosts, "127.0.0.1");
    cidr_list_add(&default_relay_hosts, "::1");
    default_meta_names = json_array();
}

void lcfg_defaults(lcfg_params *p)
{
    pthread_once(&defaults_once, init_defaults);
    memset(p, 0, sizeof(*p));
    p->hostname = default_hostname;
    p->banner = "KumoMTA";
    p->relay_hosts = &default_relay_hosts;
    p->client_timeout_ns = 60 * NS_PER_SEC;
    p->data_processing_timeout_ns = 300 * NS_PER_SEC;
    p->min_data_rate = 500; /* as Postfix's smtpd_min_data_rate */
    p->max_messages_per_connection = 10000;
    p->max_recipients_per_message = 1024;
    p->max_message_size = 20 * 1024 * 1024;
    p->data_buffer_size = 128 * 1024;
    p->invalid_line_endings = LE_DENY;
    p->line_length_hard_limit = 998;
    p->received_header = true;
    p->supplemental_header = true;
    p->trace_header_name = "X-KumoRef";
    p->include_meta_names = default_meta_names;
    p->batch_handling = BATCH_BIFURCATE;
}

/* ---- scalar parsers ------------------------------------------------------------------ */

static int cfg_duration(const json_t *v, const char *key, int64_t *out, char *err, size_t errlen)
{
    if (json_is_integer(v) || json_is_real(v)) {
        *out = (int64_t)(json_number_value(v) * 1e9);
        return 0;
    }
    if (!json_is_string(v) || duration_parse(json_string_value(v), out) != 0) {
        snprintf(err, errlen, "%s: invalid duration", key);
        return KERR_PARSE;
    }
    return 0;
}

static int cfg_size(const json_t *v, const char *key, uint64_t *out, char *err, size_t errlen)
{
    if (json_is_integer(v) && json_integer_value(v) >= 0) {
        *out = (uint64_t)json_integer_value(v);
        return 0;
    }
    if (!json_is_string(v) || size_parse(json_string_value(v), out) != 0) {
        snprintf(err, errlen, "%s: invalid size", key);
        return KERR_PARSE;
    }
    return 0;
}

static int cfg_long(const json_t *v, const char *key, long *out, char *err, size_t errlen)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0) {
        snprintf(err, errlen, "%s: expected a non-negative integer", key);
        return KERR_PARSE;
    }
    *out = (long)json_integer_value(v);
    return 0;
}

static int cfg_bool(const json_t *v, const char *key, bool *out, char *err, size_t errlen)
{
    if (!json_is_boolean(v)) {
        snprintf(err, errlen, "%s: expected true or false", key);
        return KERR_PARSE;
    }
    *out = json_is_true(v);
    return 0;
}

static int cfg_str(const json_t *v, const char *key, char **out, char *err, size_t errlen)
{
    if (!json_is_string(v)) {
        snprintf(err, errlen, "%s: expected a string", key);
        return KERR_PARSE;
    }
    free(*out);
    *out = strdup(json_string_value(v));
    return *out ? 0 : KERR_NOMEM;
}

/* KeySource: a path string, or {key_data=...}/{path=...} tables. */
static int cfg_keysource(const json_t *v, const char *key, char **out, char *err, size_t errlen)
{
    if (json_is_object(v)) {
        const json_t *p = json_object_get(v, "path");
        if (p)
            return cfg_str(p, key, out, err, errlen);
        snprintf(err, errlen, "%s: only file paths are supported as key sources", key);
        return KERR_PARSE;
    }
    return cfg_str(v, key, out, err, errlen);
}

/* trace_headers replaces the whole setting: keys it leaves out take their
 * defaults again (KumoMTA deserializes a fresh TraceHeaders). */
static int parse_trace_headers(const json_t *v, lcfg_block *b, char *err, size_t errlen)
{
    if (!json_is_object(v)) {
        snprintf(err, errlen, "trace_headers: expected a table");
        return KERR_PARSE;
    }
    b->v.received_header = true;
    b->v.supplemental_header = true;
    const char *k;
    json_t *x;
    json_object_foreach((json_t *)v, k, x)
    {
        int rc = 0;
        if (strcmp(k, "received_header") == 0)
            rc = cfg_bool(x, "trace_headers.received_header", &b->v.received_header, err, errlen);
        else if (strcmp(k, "supplemental_header") == 0)
            rc = cfg_bool(x, "trace_headers.supplemental_header", &b->v.supplemental_header, err,
                          errlen);
        else if (strcmp(k, "header_name") == 0)
            rc = cfg_str(x, "trace_headers.header_name", &b->trace_header_name, err, errlen);
        else if (strcmp(k, "include_meta_names") == 0) {
            if (json_is_object(x) && json_object_size(x) == 0)
                continue; /* an empty Lua table */
            if (!json_is_array(x)) {
                snprintf(err, errlen, "trace_headers.include_meta_names: expected a list");
                return KERR_PARSE;
            }
            json_decref(b->include_meta_names);
            b->include_meta_names = json_incref(x);
        } else {
            snprintf(err, errlen, "trace_headers: unknown field '%s'", k);
            return KERR_PARSE;
        }
        if (rc)
            return rc;
    }
    b->set |= B_TRACE_HEADERS;
    return 0;
}

/* ---- blocks ----------------------------------------------------------------------------- */

static void map_fini(lcfg_map *m)
{
    for (size_t i = 0; i < m->n; i++)
        lcfg_block_free(m->blocks[i]);
    free(m->blocks);
    if (m->map)
        cidr_map_free(m->map);
    memset(m, 0, sizeof(*m));
}

void lcfg_block_free(lcfg_block *b)
{
    if (!b)
        return;
    free(b->hostname);
    free(b->banner);
    free(b->trace_header_name);
    free(b->tls_certificate);
    free(b->tls_private_key);
    free(b->tls_required_client_ca);
    cidr_list_fini(&b->relay_hosts);
    json_decref(b->include_meta_names);
    json_decref(b->meta);
    map_fini(&b->peer);
    map_fini(&b->via);
    free(b);
}

static lcfg_block *block_parse(const json_t *j, const char *where, int depth, char *err,
                               size_t errlen);

/* A cidr-map of nested blocks: { ['10.0.0.0/8'] = { ... }, ... }. */
static int parse_map(const json_t *v, const char *key, const char *where, int depth, lcfg_map *m,
                     char *err, size_t errlen)
{
    if (!json_is_object(v)) {
        snprintf(err, errlen, "%s%s: expected a table keyed by CIDR blocks", where, key);
        return KERR_PARSE;
    }
    map_fini(m);
    m->map = cidr_map_new();
    size_t n = json_object_size(v);
    m->blocks = calloc(n ? n : 1, sizeof(*m->blocks));
    if (!m->map || !m->blocks)
        return KERR_NOMEM;
    const char *k;
    json_t *x;
    json_object_foreach((json_t *)v, k, x)
    {
        cidr c;
        char why[256];
        if (cidr_map_parse_key(k, strlen(k), &c, why, sizeof(why)) != 0) {
            snprintf(err, errlen, "%s%s: %s", where, key, why);
            return KERR_PARSE;
        }
        char sub[256];
        snprintf(sub, sizeof(sub), "%s%s.%s.", where, key, k);
        lcfg_block *b = block_parse(x, sub, depth + 1, err, errlen);
        if (!b)
            return KERR_PARSE;
        int old = -1;
        if (cidr_map_insert(m->map, &c, (int)m->n, &old) != 0) {
            lcfg_block_free(b);
            return KERR_NOMEM;
        }
        m->blocks[m->n++] = b;
    }
    return 0;
}

/* Applies one key to a block; *known is false for a key it does not know. */
static int block_key(lcfg_block *b, const char *k, const json_t *v, const char *where, int depth,
                     char *err, size_t errlen)
{
    char key[300];
    snprintf(key, sizeof(key), "%s%s", where, k);
    lcfg_params *p = &b->v;
    int rc;
#define SET(bit, expr)                                                                             \
    do {                                                                                           \
        rc = (expr);                                                                               \
        if (rc == 0)                                                                               \
            b->set |= (bit);                                                                       \
        return rc;                                                                                 \
    } while (0)
    if (strcmp(k, "hostname") == 0)
        SET(B_HOSTNAME, cfg_str(v, key, &b->hostname, err, errlen));
    if (strcmp(k, "banner") == 0)
        SET(B_BANNER, cfg_str(v, key, &b->banner, err, errlen));
    if (strcmp(k, "relay_hosts") == 0) {
        cidr_list_fini(&b->relay_hosts);
        char e2[200];
        if (cidr_list_from_json(v, &b->relay_hosts, e2, sizeof(e2)) != 0) {
            snprintf(err, errlen, "%s: %s", key, e2);
            return KERR_PARSE;
        }
        b->set |= B_RELAY_HOSTS;
        return 0;
    }
    if (strcmp(k, "client_timeout") == 0)
        SET(B_CLIENT_TIMEOUT, cfg_duration(v, key, &p->client_timeout_ns, err, errlen));
    if (strcmp(k, "data_processing_timeout") == 0)
        SET(B_DATA_PROCESSING_TIMEOUT,
            cfg_duration(v, key, &p->data_processing_timeout_ns, err, errlen));
    if (strcmp(k, "min_data_rate") == 0)
        SET(B_MIN_DATA_RATE, cfg_long(v, key, &p->min_data_rate, err, errlen));
    if (strcmp(k, "max_messages_per_connection") == 0)
        SET(B_MAX_MESSAGES, cfg_long(v, key, &p->max_messages_per_connection, err, errlen));
    if (strcmp(k, "max_recipients_per_message") == 0)
        SET(B_MAX_RECIPIENTS, cfg_long(v, key, &p->max_recipients_per_message, err, errlen));
    if (strcmp(k, "max_message_size") == 0)
        SET(B_MAX_MESSAGE_SIZE, cfg_size(v, key, &p->max_message_size, err, errlen));
    if (strcmp(k, "data_buffer_size") == 0) {
        rc = cfg_size(v, key, &p->data_buffer_size, err, errlen);
        if (rc == 0 && p->data_buffer_size == 0) {
            snprintf(err, errlen, "%s: must be at least 1", key);
            rc = KERR_PARSE;
        }
        SET(B_DATA_BUFFER_SIZE, rc);
    }
    if (strcmp(k, "line_length_hard_limit") == 0)
        SET(B_LINE_LENGTH, cfg_long(v, key, &p->line_length_hard_limit, err, errlen));
    if (strcmp(k, "invalid_line_endings") == 0) {
        const char *s = json_string_value(v);
        if (s && strcmp(s, "Deny") == 0)
            p->invalid_line_endings = LE_DENY;
        else if (s && strcmp(s, "Allow") == 0)
            p->invalid_line_endings = LE_ALLOW;
        else if (s && strcmp(s, "Fix") == 0)
            p->invalid_line_endings = LE_FIX;
        else {
            snprintf(err, errlen, "%s: expected \"Deny\", \"Allow\" or \"Fix\"", key);
            return KERR_PARSE;
        }
        b->set |= B_LINE_ENDINGS;
        return 0;
    }
    if (strcmp(k, "batch_handling") == 0) {
        const char *s = json_string_value(v);
        if (s && strcmp(s, "BifurcateAlways") == 0)
            p->batch_handling = BATCH_BIFURCATE;
        else if (s && strcmp(s, "BatchByDomain") == 0)
            p->batch_handling = BATCH_BY_DOMAIN;
        else {
            snprintf(err, errlen, "%s: expected \"BifurcateAlways\" or \"BatchByDomain\"", key);
            return KERR_PARSE;
        }
        b->set |= B_BATCH_HANDLING;
        return 0;
    }
    if (strcmp(k, "trace_headers") == 0)
        return parse_trace_headers(v, b, err, errlen);
    if (strcmp(k, "tls_certificate") == 0)
        SET(B_TLS_CERTIFICATE, cfg_keysource(v, key, &b->tls_certificate, err, errlen));
    if (strcmp(k, "tls_private_key") == 0)
        SET(B_TLS_PRIVATE_KEY, cfg_keysource(v, key, &b->tls_private_key, err, errlen));
    if (strcmp(k, "tls_required_client_ca") == 0)
        SET(B_TLS_CLIENT_CA, cfg_keysource(v, key, &b->tls_required_client_ca, err, errlen));
    if (strcmp(k, "meta") == 0) {
        if (!json_is_object(v)) {
            snprintf(err, errlen, "%s: expected a table", key);
            return KERR_PARSE;
        }
        json_decref(b->meta);
        b->meta = json_deep_copy(v);
        return b->meta ? 0 : KERR_NOMEM;
    }
    if (strcmp(k, "deferred_spool") == 0)
        SET(B_DEFERRED_SPOOL, cfg_bool(v, key, &p->deferred_spool, err, errlen));
    if (strcmp(k, "deferred_queue") == 0)
        SET(B_DEFERRED_QUEUE, cfg_bool(v, key, &p->deferred_queue, err, errlen));
    if (strcmp(k, "allow_xclient") == 0)
        SET(B_ALLOW_XCLIENT, cfg_bool(v, key, &p->allow_xclient, err, errlen));
    if (strcmp(k, "require_proxy_protocol") == 0) {
        bool on = false;
        rc = cfg_bool(v, key, &on, err, errlen);
        if (!rc && on) {
            snprintf(err, errlen, "%s: not supported by kumod yet", key);
            rc = KERR_PARSE;
        }
        return rc;
    }
    /* blocks nest, as in KumoMTA (a via block may hold peer blocks); the
     * depth bound keeps a hostile table from exhausting the stack */
    if (strcmp(k, "peer") == 0 || strcmp(k, "via") == 0) {
        if (depth >= 8) {
            snprintf(err, errlen, "%s: nested too deeply", key);
            return KERR_PARSE;
        }
        return parse_map(v, k, where, depth, k[0] == 'p' ? &b->peer : &b->via, err, errlen);
    }
#undef SET
    snprintf(err, errlen, "%sunknown field '%s'", where, k);
    return KERR_PARSE;
}

static lcfg_block *block_parse(const json_t *j, const char *where, int depth, char *err,
                               size_t errlen)
{
    if (!json_is_object(j)) {
        snprintf(err, errlen, "%s: expected a table of listener parameters",
                 *where ? where : "parameters");
        return NULL;
    }
    lcfg_block *b = calloc(1, sizeof(*b));
    if (!b) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)j, k, v)
    {
        if (block_key(b, k, v, where, depth, err, errlen) != 0) {
            lcfg_block_free(b);
            return NULL;
        }
    }
    if (!(b->set & B_TLS_CERTIFICATE) != !(b->set & B_TLS_PRIVATE_KEY) && depth == 0) {
        /* checked on the effective parameters for nested blocks */
        snprintf(err, errlen, "tls_certificate and tls_private_key must be given together");
        lcfg_block_free(b);
        return NULL;
    }
    /* the values point into what the block owns */
    b->v.hostname = b->hostname;
    b->v.banner = b->banner;
    b->v.trace_header_name = b->trace_header_name;
    b->v.include_meta_names = b->include_meta_names;
    b->v.relay_hosts = &b->relay_hosts;
    b->v.tls_certificate = b->tls_certificate;
    b->v.tls_private_key = b->tls_private_key;
    b->v.tls_required_client_ca = b->tls_required_client_ca;
    return b;
}

lcfg_block *lcfg_block_from_json(const json_t *j, char *err, size_t errlen)
{
    return block_parse(j, "", 0, err, errlen);
}

bool lcfg_block_varies(const lcfg_block *b)
{
    return b && (b->peer.n || b->via.n);
}

static const lcfg_block *map_lookup(const lcfg_map *m, const struct sockaddr *sa)
{
    if (!m->n || !sa)
        return NULL;
    cidr c = {0};
    if (sa->sa_family == AF_INET) {
        c.family = AF_INET;
        memcpy(c.addr, &((const struct sockaddr_in *)sa)->sin_addr, 4);
        c.prefix = 32;
    } else if (sa->sa_family == AF_INET6) {
        c.family = AF_INET6;
        memcpy(c.addr, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
        c.prefix = 128;
    } else {
        return NULL;
    }
    int slot = cidr_map_lookup(m->map, &c);
    return slot >= 0 && (size_t)slot < m->n ? m->blocks[slot] : NULL;
}

void lcfg_apply(lcfg_params *p, const lcfg_block *b, const struct sockaddr *local,
                const struct sockaddr *peer, json_t *meta)
{
    if (!b)
        return;
    const lcfg_params *v = &b->v;
    unsigned s = b->set;
    if (s & B_HOSTNAME) {
        p->hostname = v->hostname;
        if (meta)
            json_object_set_new(meta, "hostname", json_string(v->hostname));
    }
    if (s & B_BANNER)
        p->banner = v->banner;
    if (s & B_RELAY_HOSTS) {
        p->relay_hosts = v->relay_hosts;
        p->relay_hosts_set = true;
    }
    if (s & B_CLIENT_TIMEOUT)
        p->client_timeout_ns = v->client_timeout_ns;
    if (s & B_DATA_PROCESSING_TIMEOUT)
        p->data_processing_timeout_ns = v->data_processing_timeout_ns;
    if (s & B_MIN_DATA_RATE)
        p->min_data_rate = v->min_data_rate;
    if (s & B_MAX_MESSAGES)
        p->max_messages_per_connection = v->max_messages_per_connection;
    if (s & B_MAX_RECIPIENTS)
        p->max_recipients_per_message = v->max_recipients_per_message;
    if (s & B_MAX_MESSAGE_SIZE)
        p->max_message_size = v->max_message_size;
    if (s & B_DATA_BUFFER_SIZE)
        p->data_buffer_size = v->data_buffer_size;
    if (s & B_LINE_ENDINGS)
        p->invalid_line_endings = v->invalid_line_endings;
    if (s & B_LINE_LENGTH)
        p->line_length_hard_limit = v->line_length_hard_limit;
    if (s & B_TRACE_HEADERS) {
        lcfg_params d;
        lcfg_defaults(&d);
        p->received_header = v->received_header;
        p->supplemental_header = v->supplemental_header;
        p->trace_header_name = v->trace_header_name ? v->trace_header_name : d.trace_header_name;
        p->include_meta_names =
            v->include_meta_names ? v->include_meta_names : d.include_meta_names;
    }
    if (s & B_TLS_CERTIFICATE)
        p->tls_certificate = v->tls_certificate;
    if (s & B_TLS_PRIVATE_KEY)
        p->tls_private_key = v->tls_private_key;
    if (s & B_TLS_CLIENT_CA)
        p->tls_required_client_ca = v->tls_required_client_ca;
    if (s & B_DEFERRED_SPOOL)
        p->deferred_spool = v->deferred_spool;
    if (s & B_DEFERRED_QUEUE)
        p->deferred_queue = v->deferred_queue;
    if (s & B_ALLOW_XCLIENT)
        p->allow_xclient = v->allow_xclient;
    if (s & B_BATCH_HANDLING)
        p->batch_handling = v->batch_handling;
    if (b->meta && meta) {
        const char *k;
        json_t *x;
        json_object_foreach(b->meta, k, x) json_object_set(meta, k, x);
    }
    /* peer before via: via is the more specific (it may hold peer blocks) */
    lcfg_apply(p, map_lookup(&b->peer, peer), local, peer, meta);
    lcfg_apply(p, map_lookup(&b->via, local), local, peer, meta);
}

/* ---- listeners ------------------------------------------------------------------------ */

void lcfg_listener_free(listener_cfg *ln)
{
    if (!ln)
        return;
    free(ln->listen);
    lcfg_block_free(ln->base);
    free(ln);
}

listener_cfg *lcfg_listener_from_json(const json_t *j, char *err, size_t errlen)
{
    listener_cfg *ln = calloc(1, sizeof(*ln));
    json_t *rest = json_is_object(j) ? json_copy((json_t *)j) : NULL;
    if (!ln || !rest) {
        snprintf(err, errlen, "expected a table");
        free(ln);
        json_decref(rest);
        return NULL;
    }
    ln->listen = strdup("127.0.0.1:2025");
    ln->max_connections = 32768;
    int rc = 0;
    json_t *v = json_object_get(rest, "listen");
    if (v) {
        rc = cfg_str(v, "listen", &ln->listen, err, errlen);
        json_object_del(rest, "listen");
    }
    v = json_object_get(rest, "max_connections");
    if (!rc && v) {
        rc = cfg_long(v, "max_connections", &ln->max_connections, err, errlen);
        json_object_del(rest, "max_connections");
    }
    if (!rc && !(ln->base = block_parse(rest, "", 0, err, errlen)))
        rc = KERR_PARSE;
    json_decref(rest);
    if (!rc && net_parse_hostport(ln->listen, &ln->addr, &ln->addrlen) != 0) {
        snprintf(err, errlen, "listen: '%s' is not an IP:port address", ln->listen);
        rc = KERR_PARSE;
    }
    if (rc) {
        lcfg_listener_free(ln);
        return NULL;
    }
    if (ln->addr.ss_family == AF_INET) {
        const struct sockaddr_in *a4 = (const struct sockaddr_in *)&ln->addr;
        ln->wildcard = a4->sin_addr.s_addr == htonl(INADDR_ANY) || a4->sin_port == 0;
    } else {
        const struct sockaddr_in6 *a6 = (const struct sockaddr_in6 *)&ln->addr;
        ln->wildcard = IN6_IS_ADDR_UNSPECIFIED(&a6->sin6_addr) || a6->sin6_port == 0;
    }
    return ln;
}

/* ---- TLS contexts ------------------------------------------------------------------------ */

typedef struct tls_entry {
    struct tls_entry *next;
    char *key; /* cert \0 key \0 ca \0 hostname */
    size_t keylen;
    SSL_CTX *ctx;
} tls_entry;

static pthread_mutex_t tls_lock = PTHREAD_MUTEX_INITIALIZER;
static tls_entry *tls_cache;

static size_t tls_key(const lcfg_params *p, char *buf, size_t cap)
{
    /* the hostname matters only to a self-signed certificate */
    const char *parts[4] = {p->tls_certificate, p->tls_private_key, p->tls_required_client_ca,
                            p->tls_certificate ? "" : p->hostname};
    size_t n = 0;
    for (int i = 0; i < 4; i++) {
        int w = snprintf(buf + n, cap - n, "%s", parts[i] ? parts[i] : "");
        if (w < 0 || (size_t)w + 1 >= cap - n)
            return 0;
        n += (size_t)w + 1;
    }
    return n;
}

SSL_CTX *lcfg_tls_ctx(const lcfg_params *p, char *err, size_t errlen)
{
    char key[4 * 1024];
    size_t kl = tls_key(p, key, sizeof(key));
    if (!kl) {
        snprintf(err, errlen, "TLS file names too long");
        return NULL;
    }
    if (!p->tls_certificate != !p->tls_private_key) {
        snprintf(err, errlen, "tls_certificate and tls_private_key must be given together");
        return NULL;
    }
    pthread_mutex_lock(&tls_lock);
    for (tls_entry *e = tls_cache; e; e = e->next) {
        if (e->keylen == kl && memcmp(e->key, key, kl) == 0) {
            pthread_mutex_unlock(&tls_lock);
            return e->ctx;
        }
    }
    /* built under the lock: rare (once per distinct setting), and two
     * reactors must not both build and leak one */
    SSL_CTX *ctx =
        tls_server_ctx_new(p->tls_certificate, p->tls_private_key, p->hostname, err, errlen);
    if (ctx && p->tls_required_client_ca &&
        tls_server_ctx_request_client_cert(ctx, p->tls_required_client_ca, err, errlen) != 0) {
        SSL_CTX_free(ctx);
        ctx = NULL;
    }
    tls_entry *e = ctx ? calloc(1, sizeof(*e)) : NULL;
    if (e && (e->key = malloc(kl))) {
        memcpy(e->key, key, kl);
        e->keylen = kl;
        e->ctx = ctx;
        e->next = tls_cache;
        tls_cache = e;
    } else if (ctx) {
        free(e);
        SSL_CTX_free(ctx);
        ctx = NULL;
        snprintf(err, errlen, "out of memory");
    }
    pthread_mutex_unlock(&tls_lock);
    return ctx;
}

void lcfg_tls_cache_clear(void)
{
    pthread_mutex_lock(&tls_lock);
    for (tls_entry *e = tls_cache, *next; e; e = next) {
        next = e->next;
        SSL_CTX_free(e->ctx);
        free(e->key);
        free(e);
    }
    tls_cache = NULL;
    pthread_mutex_unlock(&tls_lock);
}

/* Every block's TLS setting applied over the base one (peer and via blocks
 * inherit what they do not set). */
static int prepare_block(const lcfg_params *parent, const lcfg_block *b, char *err, size_t errlen)
{
    lcfg_params p = *parent;
    lcfg_apply(&p, b, NULL, NULL, NULL);
    if (b->set & (B_TLS_CERTIFICATE | B_TLS_PRIVATE_KEY | B_TLS_CLIENT_CA)) {
        if (!lcfg_tls_ctx(&p, err, errlen))
            return KERR_PARSE;
    }
    const lcfg_map *maps[2] = {&b->peer, &b->via};
    for (int m = 0; m < 2; m++)
        for (size_t i = 0; i < maps[m]->n; i++)
            if (prepare_block(&p, maps[m]->blocks[i], err, errlen) != 0)
                return KERR_PARSE;
    return 0;
}

int lcfg_listener_prepare_tls(listener_cfg *ln, char *err, size_t errlen)
{
    lcfg_params p;
    lcfg_defaults(&p);
    lcfg_apply(&p, ln->base, NULL, NULL, NULL);
    ln->tls = lcfg_tls_ctx(&p, err, errlen);
    if (!ln->tls)
        return KERR_PARSE;
    const lcfg_map *maps[2] = {&ln->base->peer, &ln->base->via};
    for (int m = 0; m < 2; m++)
        for (size_t i = 0; i < maps[m]->n; i++)
            if (prepare_block(&p, maps[m]->blocks[i], err, errlen) != 0)
                return KERR_PARSE;
    return 0;
}
