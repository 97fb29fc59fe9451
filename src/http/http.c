/* HTTP listener: kumo.start_http_listener, one evhttp per reactor per
 * listener on its own SO_REUSEPORT socket, request routing,
 * authentication (trusted hosts, Basic and Bearer through the
 * http_server_validate_auth_* events, cached per reactor for 60 s) and
 * authorization (acl.c), and the reply helpers the endpoint handlers use.
 *
 * Owns the listener configurations (process-wide, immutable once the
 * listeners start) and, per reactor, the evhttp objects, the bound sockets
 * and the authentication cache. A request lives on the reactor that
 * accepted it from accept to reply; while a policy event or another
 * asynchronous step runs, libevent keeps the request even if the client
 * goes away, and the reply then simply has nowhere to go.
 *
 * Failure: every error a client can cause is a 4xx with a JSON body naming
 * the problem; a Lua error in an authentication event is a 500 "try again
 * later" and a diagnostic with file and line. A body over
 * request_body_limit is refused with KumoMTA's plain-text 413 "Failed to
 * buffer the request body: length limit exceeded": a raw one by libevent
 * itself before it is buffered (after reading and dropping a body
 * announced by Content-Length, or as soon as chunks pass the limit; then
 * it closes the connection), its HTML page replaced by errpage.c on the
 * bufferevent conn_bevcb makes; a compressed one by decode_body once it
 * inflates past the limit (the connection stays open). */
#include "http/http.h"
#include "http/template_lua.h"
#include "net/listen.h"
#include "net/sockaddr.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <lauxlib.h>
#include <netdb.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <unistd.h>
#include <zlib.h>

#include "core/diag.h"
#include "core/duration.h"
#include "core/kerr.h"
#include "core/reactor.h"
#include "http/acl.h"
#include "http/errpage.h"
#include "http/mime.h"
#include "http/request.h"
#include "log/aaa_log.h"
#include "lua/klua.h"
#include "lua/services.h"
#include "net/cidr.h"
#include "net/tls.h"

#define HMOD "kumod::http_server"
#define MAX_LISTENERS 16
#define DEFAULT_BODY_LIMIT (2u * 1024 * 1024)
#define AUTH_CACHE_SLOTS 128
#define AUTH_CACHE_TTL_MS 60000
#define REQUEST_TIMEOUT_S 60

struct http_listener {
    char *listen;
    char *hostname;
    bool use_tls;
    char *tls_certificate, *tls_private_key;
    uint64_t request_body_limit;
    cidr_list trusted_hosts;
    SSL_CTX *tls;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    char bound[96]; /* the listen address as an ACL resource names it */
};

static http_listener *listeners[MAX_LISTENERS];
static int n_listeners;
static pthread_mutex_t listeners_lock = PTHREAD_MUTEX_INITIALIZER;
static atomic_bool shutting_down;
static atomic_int inflight;

/* per reactor, per listener */
typedef struct http_slot {
    struct evhttp *http;
    struct evhttp_bound_socket *bound;
} http_slot;
static http_slot *slots; /* [reactor * MAX_LISTENERS + i] */

bool http_shutting_down(void)
{
    return atomic_load(&shutting_down);
}

const char *http_listener_hostname(const http_listener *ln)
{
    return ln->hostname;
}

/* ---- configuration ------------------------------------------------------------------ */

static void listener_free(http_listener *c)
{
    if (!c)
        return;
    free(c->listen);
    free(c->hostname);
    free(c->tls_certificate);
    free(c->tls_private_key);
    cidr_list_fini(&c->trusted_hosts);
    if (c->tls)
        SSL_CTX_free(c->tls);
    free(c);
}

static int cfg_string(json_t *v, const char *key, char **out, char *err, size_t errlen)
{
    if (!json_is_string(v)) {
        snprintf(err, errlen, "%s: expected a string", key);
        return KERR_INVAL;
    }
    free(*out);
    *out = strdup(json_string_value(v));
    return *out ? 0 : KERR_NOMEM;
}

static http_listener *listener_from_json(json_t *j, char *err, size_t errlen)
{
    if (!json_is_object(j)) {
        snprintf(err, errlen, "expected a table of parameters");
        return NULL;
    }
    http_listener *c = calloc(1, sizeof(*c));
    if (!c) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    c->listen = strdup("127.0.0.1:8000");
    char host[256] = "localhost";
    gethostname(host, sizeof(host) - 1);
    host[sizeof(host) - 1] = 0;
    c->hostname = strdup(host);
    c->request_body_limit = DEFAULT_BODY_LIMIT;
    bool trusted_given = false;
    const char *key;
    json_t *v;
    int rc = 0;
    json_object_foreach(j, key, v)
    {
        if (strcmp(key, "listen") == 0) {
            rc = cfg_string(v, key, &c->listen, err, errlen);
        } else if (strcmp(key, "hostname") == 0) {
            rc = cfg_string(v, key, &c->hostname, err, errlen);
        } else if (strcmp(key, "use_tls") == 0) {
            if (!json_is_boolean(v)) {
                snprintf(err, errlen, "use_tls: expected a boolean");
                rc = KERR_INVAL;
            }
            c->use_tls = json_is_true(v);
        } else if (strcmp(key, "tls_certificate") == 0) {
            rc = cfg_string(v, key, &c->tls_certificate, err, errlen);
        } else if (strcmp(key, "tls_private_key") == 0) {
            rc = cfg_string(v, key, &c->tls_private_key, err, errlen);
        } else if (strcmp(key, "request_body_limit") == 0) {
            if (json_is_integer(v) && json_integer_value(v) > 0) {
                c->request_body_limit = (uint64_t)json_integer_value(v);
            } else if (!json_is_string(v) ||
                       size_parse(json_string_value(v), &c->request_body_limit) != 0 ||
                       c->request_body_limit == 0) {
                snprintf(err, errlen, "request_body_limit: expected a positive number of bytes");
                rc = KERR_INVAL;
            }
        } else if (strcmp(key, "trusted_hosts") == 0) {
            cidr_list_fini(&c->trusted_hosts);
            char e2[256];
            if (cidr_list_from_json(v, &c->trusted_hosts, e2, sizeof(e2)) != 0) {
                snprintf(err, errlen, "trusted_hosts: %s", e2);
                rc = KERR_INVAL;
            }
            trusted_given = true;
        } else {
            snprintf(err, errlen, "unknown field '%s'", key);
            rc = KERR_INVAL;
        }
        if (rc)
            break;
    }
    if (!rc && (!c->listen || !c->hostname)) {
        snprintf(err, errlen, "out of memory");
        rc = KERR_NOMEM;
    }
    if (!rc && !trusted_given) {
        if (cidr_list_add(&c->trusted_hosts, "127.0.0.1") != 0 ||
            cidr_list_add(&c->trusted_hosts, "::1") != 0) {
            snprintf(err, errlen, "out of memory");
            rc = KERR_NOMEM;
        }
    }
    if (!rc && (c->tls_certificate == NULL) != (c->tls_private_key == NULL)) {
        snprintf(err, errlen, "tls_certificate and tls_private_key must be given together");
        rc = KERR_INVAL;
    }
    if (!rc && net_parse_hostport(c->listen, &c->addr, &c->addrlen) != 0) {
        snprintf(err, errlen, "listen: '%s' is not an IP:port address", c->listen);
        rc = KERR_INVAL;
    }
    if (rc) {
        listener_free(c);
        return NULL;
    }
    net_format_addr((struct sockaddr *)&c->addr, NULL, 0, c->bound, sizeof(c->bound));
    return c;
}

static int l_start_http_listener(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    char err[512];
    json_t *j = klua_to_json(L, 1, err, sizeof(err));
    if (!j)
        return luaL_error(L, "kumo.start_http_listener: %s", err);
    http_listener *c = listener_from_json(j, err, sizeof(err));
    json_decref(j);
    if (!c)
        return luaL_error(L, "kumo.start_http_listener: %s", err);
    if (services_validate_only()) {
        listener_free(c);
        return 0;
    }
    pthread_mutex_lock(&listeners_lock);
    if (slots || n_listeners >= MAX_LISTENERS) {
        bool started = slots != NULL;
        pthread_mutex_unlock(&listeners_lock);
        listener_free(c);
        if (started)
            return luaL_error(L, "kumo.start_http_listener: must be called from the init event");
        return luaL_error(L, "kumo.start_http_listener: at most %d listeners", MAX_LISTENERS);
    }
    listeners[n_listeners++] = c;
    pthread_mutex_unlock(&listeners_lock);
    return 0;
}

static void http_open(lua_State *L)
{
    lua_pushcfunction(L, l_start_http_listener);
    lua_setfield(L, -2, "start_http_listener");
    acl_lua_open(L);
    template_lua_open(L);
}

void http_lua_register(void)
{
    klua_register_opener(http_open);
}

static const char *method_name(enum evhttp_cmd_type m)
{
    switch (m) {
    case EVHTTP_REQ_GET:
        return "GET";
    case EVHTTP_REQ_POST:
        return "POST";
    case EVHTTP_REQ_HEAD:
        return "HEAD";
    case EVHTTP_REQ_PUT:
        return "PUT";
    case EVHTTP_REQ_DELETE:
        return "DELETE";
    case EVHTTP_REQ_OPTIONS:
        return "OPTIONS";
    case EVHTTP_REQ_TRACE:
        return "TRACE";
    case EVHTTP_REQ_CONNECT:
        return "CONNECT";
    case EVHTTP_REQ_PATCH:
        return "PATCH";
    }
    return "UNKNOWN";
}

/* ---- replies ---------------------------------------------------------------------------- */

static const char *reason_phrase(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 413:
        return "Payload Too Large";
    case 415:
        return "Unsupported Media Type";
    case 422:
        return "Unprocessable Entity";
    case 500:
        return "Internal Server Error";
    case 503:
        return "Service Unavailable";
    default:
        return "Status";
    }
}

static void hr_free(http_req *hr)
{
    evhttp_clear_headers(&hr->query);
    free(hr->path);
    json_decref(hr->auth);
    acl_resources_free(hr->resources, hr->n_resources);
    free(hr->body);
    free(hr);
    atomic_fetch_sub(&inflight, 1);
}

void http__req_release(http_req *hr)
{
    hr_free(hr);
}

void http_reply_text(http_req *hr, int status, const char *content_type, const char *body,
                     size_t len)
{
    struct evbuffer *out = evbuffer_new();
    struct evkeyvalq *h = evhttp_request_get_output_headers(hr->req);
    if (content_type)
        evhttp_add_header(h, "Content-Type", content_type);
    if (out && body && len)
        evbuffer_add(out, body, len);
    DDEBUG(HMOD, "peer=%s %s %s -> %d", hr->peer_ip, method_name(hr->method),
           hr->path ? hr->path : "?", status);
    evhttp_send_reply(hr->req, status, reason_phrase(status), out);
    if (out)
        evbuffer_free(out);
    hr_free(hr);
}

struct evhttp_connection *http_req_detach(http_req *hr)
{
    struct evhttp_connection *evcon = evhttp_request_get_connection(hr->req);
    DDEBUG(HMOD, "peer=%s %s %s -> connection taken over", hr->peer_ip, method_name(hr->method),
           hr->path ? hr->path : "?");
    hr_free(hr);
    return evcon;
}

void http_reply_json(http_req *hr, int status, json_t *body_take)
{
    char *s = NULL;
    if (body_take) {
        s = json_dumps(body_take, JSON_COMPACT | JSON_ENCODE_ANY);
        json_decref(body_take);
    }
    http_reply_text(hr, status, "application/json", s, s ? strlen(s) : 0);
    free(s);
}

/* Replaces every byte that is not part of well-formed UTF-8 with '?': a
 * message may quote client bytes or be cut in the middle of a character,
 * and JSON strings must be valid. */
void http_utf8_sanitize(char *s)
{
    unsigned char *p = (unsigned char *)s;
    while (*p) {
        int n = *p < 0x80 ? 0 : (*p & 0xE0) == 0xC0 ? 1 : (*p & 0xF0) == 0xE0 ? 2
                          : (*p & 0xF8) == 0xF0 ? 3 : -1;
        bool ok = n >= 0 && !(n == 1 && *p < 0xC2);
        for (int i = 1; ok && i <= n; i++)
            ok = (p[i] & 0xC0) == 0x80;
        if (!ok) {
            *p++ = '?';
            continue;
        }
        p += n + 1;
    }
}

/* KumoMTA's handlers fail with an AppError, which axum renders as a
 * text/plain body "Error: <message>"; clients (its kcli among them) show
 * that text as it is. */
void http_reply_error(http_req *hr, int status, const char *fmt, ...)
{
    char msg[2048];
    int n = snprintf(msg, sizeof(msg), "Error: ");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg + n, sizeof(msg) - (size_t)n, fmt, ap);
    va_end(ap);
    http_utf8_sanitize(msg);
    http_reply_text(hr, status, "text/plain; charset=utf-8", msg, strlen(msg));
}

/* ---- request accessors -------------------------------------------------------------------- */

const char *http_req_query(const http_req *hr, const char *name)
{
    return evhttp_find_header(&hr->query, name);
}

bool http_req_query_bool(const http_req *hr, const char *name, bool dflt)
{
    const char *v = http_req_query(hr, name);
    if (!v)
        return dflt;
    return strcasecmp(v, "true") == 0 || strcmp(v, "1") == 0 || strcasecmp(v, "yes") == 0;
}

const char *http_req_body(const http_req *hr, size_t *len)
{
    if (hr->body) {
        *len = hr->body_len;
        return hr->body;
    }
    struct evbuffer *in = evhttp_request_get_input_buffer(hr->req);
    *len = evbuffer_get_length(in);
    if (!*len)
        return "";
    return (const char *)evbuffer_pullup(in, -1);
}

json_t *http_req_json_object(http_req *hr, bool allow_empty)
{
    size_t len;
    const char *body = http_req_body(hr, &len);
    if (len == 0 && allow_empty)
        return json_object();
    json_error_t jerr;
    json_t *j = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!j) {
        /* axum's Json extractor: 400 with this text, no "Error: " */
        char msg[400];
        int n = snprintf(msg, sizeof(msg),
                         "Failed to parse the request body as JSON: %s at line %d column %d",
                         jerr.text, jerr.line, jerr.column);
        http_utf8_sanitize(msg);
        http_reply_text(hr, 400, "text/plain; charset=utf-8", msg,
                        n < (int)sizeof(msg) ? (size_t)n : sizeof(msg) - 1);
        return NULL;
    }
    if (!json_is_object(j)) {
        json_decref(j);
        http_reply_error(hr, 400, "the request body must be a JSON object");
        return NULL;
    }
    return j;
}

/* ---- request body decoding ---------------------------------------------------------------- */

/* KumoMTA's listener decodes gzip and deflate request bodies (tower-http's
 * RequestDecompressionLayer) before the body limit applies, so the limit
 * is on the decoded size: a small compressed body cannot expand without
 * bound. "identity" is no encoding; anything else is 415 with the
 * encodings that are accepted, as tower-http answers. */
#define INFLATE_CHUNK 65536

/* Inflates in into hr->body (at most limit bytes). windowbits selects the
 * wrapper: 16+15 gzip, 15 zlib ("deflate" as RFC 9110 defines it); a raw
 * deflate stream (what some clients send as "deflate") is retried with
 * -15. Returns 0, 413 or 400. */
static int inflate_body(http_req *hr, const unsigned char *in, size_t inlen, int windowbits,
                        uint64_t limit)
{
    z_stream zs;
    memset(&zs, 0, sizeof(zs));
    if (inflateInit2(&zs, windowbits) != Z_OK)
        return 400;
    size_t cap = inlen * 4 + 1024, len = 0;
    if (cap > limit + 1)
        cap = (size_t)limit + 1;
    char *out = malloc(cap + 1);
    int rc = out ? 0 : 400;
    zs.next_in = (unsigned char *)in;
    zs.avail_in = (uInt)inlen;
    while (rc == 0) {
        if (len == cap) {
            if (cap > limit) {
                rc = 413;
                break;
            }
            size_t ncap = cap * 2 > limit + 1 ? (size_t)limit + 1 : cap * 2;
            char *np = realloc(out, ncap + 1);
            if (!np) {
                rc = 400;
                break;
            }
            out = np;
            cap = ncap;
        }
        zs.next_out = (unsigned char *)out + len;
        zs.avail_out = (uInt)(cap - len);
        int z = inflate(&zs, Z_NO_FLUSH);
        len = cap - zs.avail_out;
        if (z == Z_STREAM_END) {
            if (len > limit)
                rc = 413;
            break;
        }
        if (z != Z_OK && !(z == Z_BUF_ERROR && zs.avail_out == 0))
            rc = 400;
        else if (zs.avail_in == 0 && zs.avail_out != 0)
            rc = 400; /* truncated stream */
    }
    inflateEnd(&zs);
    if (rc != 0) {
        free(out);
        if (rc == 400 && windowbits == 15)
            return inflate_body(hr, in, inlen, -15, limit);
        return rc;
    }
    out[len] = 0;
    hr->body = out;
    hr->body_len = len;
    return 0;
}

/* Decodes the body per Content-Encoding. Returns false after answering. */
static bool decode_body(http_req *hr)
{
    const char *enc =
        evhttp_find_header(evhttp_request_get_input_headers(hr->req), "Content-Encoding");
    if (!enc)
        return true;
    while (*enc == ' ' || *enc == '\t')
        enc++;
    size_t el = strlen(enc);
    while (el && (enc[el - 1] == ' ' || enc[el - 1] == '\t'))
        el--;
    int wb;
    if (el == 4 && strncasecmp(enc, "gzip", 4) == 0)
        wb = 16 + 15;
    else if (el == 7 && strncasecmp(enc, "deflate", 7) == 0)
        wb = 15;
    else if (el == 8 && strncasecmp(enc, "identity", 8) == 0)
        return true;
    else {
        evhttp_add_header(evhttp_request_get_output_headers(hr->req), "Accept-Encoding",
                          "gzip,deflate,identity");
        http_reply_text(hr, 415, NULL, NULL, 0);
        return false;
    }
    struct evbuffer *in = evhttp_request_get_input_buffer(hr->req);
    size_t inlen = evbuffer_get_length(in);
    if (inlen == 0)
        return true;
    const unsigned char *raw = evbuffer_pullup(in, -1);
    int rc = raw ? inflate_body(hr, raw, inlen, wb, hr->ln->request_body_limit) : 400;
    if (rc == 413) {
        /* the same answer as errpage.c's for a raw body over the limit */
        static const char msg[] = HTTP_BODY_LIMIT_TEXT;
        http_reply_text(hr, 413, HTTP_BODY_LIMIT_TYPE, msg, sizeof(msg) - 1);
        return false;
    }
    if (rc != 0) {
        char msg[160];
        int n = snprintf(msg, sizeof(msg), "Failed to buffer the request body: invalid %.*s data",
                         (int)el, enc);
        http_reply_text(hr, 400, "text/plain; charset=utf-8", msg, (size_t)n);
        return false;
    }
    return true;
}

/* ---- routing ------------------------------------------------------------------------------- */

enum {
    M_GET = EVHTTP_REQ_GET,
    M_POST = EVHTTP_REQ_POST,
    M_DELETE = EVHTTP_REQ_DELETE,
};

static const http_route routes[] = {
    {"/api/inject/v1", M_POST, http_inject_v1},
    {"/api/check-liveness/v1", M_GET, http_check_liveness_v1},
    {"/api/admin/bounce/v1", M_GET | M_POST | M_DELETE, http_admin_bounce},
    {"/api/admin/suspend/v1", M_GET | M_POST | M_DELETE, http_admin_suspend},
    {"/api/admin/suspend-ready-q/v1", M_GET | M_POST | M_DELETE, http_admin_suspend_ready_q},
    {"/api/admin/rebind/v1", M_POST, http_admin_rebind},
    {"/api/admin/inspect-message/v1", M_GET, http_admin_inspect_message},
    {"/api/admin/inspect-sched-q/v1", M_GET, http_admin_inspect_sched_q},
    {"/api/admin/inspect-ready-q/v1", M_GET, http_admin_inspect_ready_q},
    {"/api/admin/ready-q-states/v1", M_GET, http_admin_ready_q_states},
    {"/api/admin/quarantine/v1", M_GET, http_admin_quarantine},
    {"/api/admin/set_diagnostic_log_filter/v1", M_POST, http_admin_set_log_filter},
    {"/api/admin/bump-config-epoch", M_POST, http_admin_bump_config_epoch},
    {"/api/admin/abort-ready-q-conn/v1", M_POST, http_admin_abort_ready_q_conn},
    {"/api/admin/spool-compact/v1", M_POST, http_admin_spool_compact},
};

/* Endpoint modules that register themselves (metrics_http.c): written by
 * the main thread before the listeners start, read-only afterwards. */
#define MAX_ENDPOINTS 16
static const http_endpoints *endpoints[MAX_ENDPOINTS];
static int n_endpoints;

/* The TSA daemon (kumod --tsa) serves only its endpoint modules: no
 * injection or queue administration where there is no spool. */
static bool only_endpoints;

void http_serve_only_endpoints(void)
{
    only_endpoints = true;
}

void http_add_endpoints(const http_endpoints *e)
{
    if (n_endpoints == MAX_ENDPOINTS)
        abort(); /* a programming error: raise MAX_ENDPOINTS */
    endpoints[n_endpoints++] = e;
}

/* ---- authentication ------------------------------------------------------------------------- */

/* One cached outcome of a validate event, keyed by the Authorization
 * header. The cache lives on its reactor's thread only. */
typedef struct auth_entry {
    char *key;
    int64_t expires_ms;
    unsigned epoch;
    json_t *info; /* {identities, groups} to merge, or JSON false when refused */
} auth_entry;

static __thread auth_entry *auth_cache;

static const json_t *auth_cache_get(const char *key)
{
    if (!auth_cache)
        return NULL;
    int64_t now = clock_mono_ms();
    unsigned epoch = klua_config_epoch();
    for (int i = 0; i < AUTH_CACHE_SLOTS; i++) {
        auth_entry *e = &auth_cache[i];
        if (e->key && strcmp(e->key, key) == 0) {
            if (e->expires_ms > now && e->epoch == epoch)
                return e->info;
            return NULL;
        }
    }
    return NULL;
}

static void auth_cache_put(const char *key, json_t *info)
{
    if (!auth_cache) {
        auth_cache = calloc(AUTH_CACHE_SLOTS, sizeof(*auth_cache));
        if (!auth_cache)
            return;
    }
    /* the same key, else a free slot, else the one expiring first */
    auth_entry *slot = NULL;
    for (int i = 0; i < AUTH_CACHE_SLOTS && !slot; i++)
        if (auth_cache[i].key && strcmp(auth_cache[i].key, key) == 0)
            slot = &auth_cache[i];
    for (int i = 0; i < AUTH_CACHE_SLOTS && !slot; i++)
        if (!auth_cache[i].key)
            slot = &auth_cache[i];
    if (!slot) {
        slot = &auth_cache[0];
        for (int i = 1; i < AUTH_CACHE_SLOTS; i++)
            if (auth_cache[i].expires_ms < slot->expires_ms)
                slot = &auth_cache[i];
    }
    free(slot->key);
    json_decref(slot->info);
    slot->key = strdup(key);
    slot->info = json_incref(info);
    slot->expires_ms = clock_mono_ms() + AUTH_CACHE_TTL_MS;
    slot->epoch = klua_config_epoch();
    if (!slot->key) {
        json_decref(slot->info);
        slot->info = NULL;
    }
}

static void auth_cache_clear(void)
{
    if (!auth_cache)
        return;
    for (int i = 0; i < AUTH_CACHE_SLOTS; i++) {
        free(auth_cache[i].key);
        json_decref(auth_cache[i].info);
    }
    free(auth_cache);
    auth_cache = NULL;
}

typedef struct auth_job {
    http_req *hr;
    char *header;
    char *user; /* Basic user, or NULL for Bearer */
    bool bearer;
} auth_job;

static void authorize(http_req *hr);

static bool is_authenticated(const http_req *hr)
{
    return json_array_size(json_object_get(hr->auth, "identities")) > 0;
}

/* Applies a validate outcome (info as cached) to hr and continues. */
static void auth_apply(http_req *hr, const json_t *info, bool bearer, const char *user)
{
    const char *ctx = bearer ? "BearerToken" : "HttpBasicAuth";
    if (json_is_false(info)) {
        aaalog_authn(user, ctx, false, hr->auth);
        http_reply_error(hr, 401, "%s Authentication Failed for %s",
                         bearer ? "BearerToken" : "HttpBasicAuth", user ? user : "");
        return;
    }
    size_t i;
    json_t *v;
    json_t *ids = json_object_get(hr->auth, "identities");
    json_t *groups = json_object_get(hr->auth, "groups");
    json_array_foreach(json_object_get(info, "identities"), i, v)
        json_array_append(ids, v);
    json_array_foreach(json_object_get(info, "groups"), i, v)
    {
        if (json_is_string(v))
            json_array_append(groups, v);
    }
    aaalog_authn(user, ctx, true, hr->auth);
    authorize(hr);
}

/* Normalises what the event returned into {identities, groups} or false.
 * Returns NULL (err set) for a value that is neither a boolean nor an
 * AuthInfo table. */
static json_t *auth_outcome(lua_State *co, int nres, bool bearer, const char *user, char *err,
                            size_t errlen)
{
    if (nres < 1 || lua_isnil(co, 1) || (lua_isboolean(co, 1) && !lua_toboolean(co, 1)))
        return json_false();
    if (lua_isboolean(co, 1)) {
        return json_pack("{s:[{s:s,s:s}],s:[]}", "identities", "identity", bearer ? "" : user,
                         "context", bearer ? "BearerToken" : "HttpBasicAuth", "groups");
    }
    if (!lua_istable(co, 1)) {
        snprintf(err, errlen, "expected a boolean or an AuthInfo table, got %s",
                 luaL_typename(co, 1));
        return NULL;
    }
    char e2[256];
    json_t *j = klua_to_json(co, 1, e2, sizeof(e2));
    if (!j) {
        snprintf(err, errlen, "%s", e2);
        return NULL;
    }
    json_t *ids = json_object_get(j, "identities");
    json_t *groups = json_object_get(j, "groups");
    if (!json_is_object(j) || (ids && !json_is_array(ids) && json_object_size(ids)) ||
        (groups && !json_is_array(groups) && json_object_size(groups))) {
        json_decref(j);
        snprintf(err, errlen, "an AuthInfo has identities and groups lists");
        return NULL;
    }
    json_t *out = json_pack("{s:[],s:[]}", "identities", "groups");
    size_t i;
    json_t *v;
    json_array_foreach(ids, i, v)
    {
        const char *id = json_string_value(json_object_get(v, "identity"));
        const char *ctx = json_string_value(json_object_get(v, "context"));
        if (!id) {
            json_decref(j);
            json_decref(out);
            snprintf(err, errlen, "identities[%zu].identity must be a string", i + 1);
            return NULL;
        }
        json_array_append_new(json_object_get(out, "identities"),
                              json_pack("{s:s,s:s}", "identity", id, "context",
                                        ctx ? ctx : "GenericAuth"));
    }
    json_array_foreach(groups, i, v) if (json_is_string(v))
        json_array_append(json_object_get(out, "groups"), v);
    json_decref(j);
    return out;
}

static void after_validate(klua_call *c, int status, void *ud)
{
    auth_job *job = ud;
    http_req *hr = job->hr;
    if (status != KLUA_OK) {
        DERROR(HMOD, "peer=%s %s: %s", hr->peer_ip, klua_call_event(c), klua_call_error(c));
        http_reply_error(hr, 500, "try again later");
    } else {
        char err[300];
        json_t *info = auth_outcome(klua_call_thread(c), klua_call_nresults(c), job->bearer,
                                    job->user, err, sizeof(err));
        if (!info) {
            DERROR(HMOD, "peer=%s %s returned an unusable value: %s", hr->peer_ip,
                   klua_call_event(c), err);
            http_reply_error(hr, 500, "try again later");
        } else {
            auth_cache_put(job->header, info);
            auth_apply(hr, info, job->bearer, job->user);
            json_decref(info);
        }
    }
    free(job->header);
    free(job->user);
    free(job);
}

static void authenticate(http_req *hr)
{
    const char *authz =
        evhttp_find_header(evhttp_request_get_input_headers(hr->req), "Authorization");
    if (!authz) {
        authorize(hr);
        return;
    }
    const char *sp = strchr(authz, ' ');
    bool basic = sp && (size_t)(sp - authz) == 5 && strncmp(authz, "Basic", 5) == 0;
    bool bearer = sp && (size_t)(sp - authz) == 6 && strncmp(authz, "Bearer", 6) == 0;
    if (!basic && !bearer) {
        http_reply_error(hr, 400, "Malformed or unsupported Authorization header");
        return;
    }
    char *user = NULL, *password = NULL;
    const char *token = sp + 1;
    if (basic) {
        unsigned char *dec = NULL;
        size_t dl = 0;
        if (mime_b64_decode(token, strlen(token), &dec, &dl) != 0 || memchr(dec, 0, dl)) {
            free(dec);
            http_reply_error(hr, 400, "Malformed or unsupported Authorization header");
            return;
        }
        char *colon = memchr(dec, ':', dl);
        if (colon) {
            user = strndup((char *)dec, (size_t)(colon - (char *)dec));
            password = strndup(colon + 1, dl - (size_t)(colon + 1 - (char *)dec));
        } else {
            user = strndup((char *)dec, dl);
        }
        free(dec);
    }
    const json_t *cached = auth_cache_get(authz);
    if (cached) {
        auth_apply(hr, cached, bearer, user);
        free(user);
        free(password);
        return;
    }
    klua *vm = klua_current();
    if (!vm) {
        free(user);
        free(password);
        http_reply_error(hr, 503, "the policy is not loaded yet");
        return;
    }
    auth_job *job = calloc(1, sizeof(*job));
    if (!job || !(job->header = strdup(authz))) {
        free(job);
        free(user);
        free(password);
        http_reply_error(hr, 500, "try again later");
        return;
    }
    job->hr = hr;
    job->user = user;
    job->bearer = bearer;
    klua_call *c;
    lua_State *co = klua_call_begin(
        vm, bearer ? "http_server_validate_auth_bearer" : "http_server_validate_auth_basic", &c);
    int nargs;
    if (bearer) {
        lua_pushstring(co, token);
        nargs = 1;
    } else {
        lua_pushstring(co, user ? user : "");
        if (password)
            lua_pushstring(co, password);
        else
            lua_pushnil(co);
        nargs = 2;
    }
    free(password);
    klua_call_run(c, nargs, after_validate, job);
}

/* ---- authorization and dispatch ---------------------------------------------------------------- */

static void after_acl(void *ud, int verdict, const char *error)
{
    http_req *hr = ud;
    if (verdict == ACL_ALLOW) {
        if (atomic_load(&shutting_down)) {
            http_reply_error(hr, 503, "shutting down");
            return;
        }
        hr->route->fn(hr);
        return;
    }
    if (verdict == ACL_ERROR) {
        DERROR(HMOD, "peer=%s %s %s: ACL error: %s", hr->peer_ip, method_name(hr->method),
               hr->path, error ? error : "");
        http_reply_error(hr, 500, "try again later");
        return;
    }
    /* who: the identities, else <Unauthenticated>; then the peer */
    char who[512];
    size_t wl = 0;
    size_t i;
    json_t *v;
    json_array_foreach(json_object_get(hr->auth, "identities"), i, v)
    {
        const char *id = json_string_value(json_object_get(v, "identity"));
        wl += (size_t)snprintf(who + wl, wl < sizeof(who) ? sizeof(who) - wl : 0, "%s%s",
                               wl ? "," : "", id && *id ? id : "<token>");
        if (wl >= sizeof(who))
            break;
    }
    if (!wl)
        snprintf(who, sizeof(who), "<Unauthenticated>");
    bool trusted = false;
    json_array_foreach(json_object_get(hr->auth, "groups"), i, v)
    {
        if (json_is_string(v) && strcmp(json_string_value(v), ACL_TRUSTED_GROUP) == 0)
            trusted = true;
    }
    const char *how = verdict == ACL_DENY ? "denied" : "not permitted";
    if (!is_authenticated(hr) && !trusted) {
        /* credentials might help: say which kind we take */
        evhttp_add_header(evhttp_request_get_output_headers(hr->req), "WWW-Authenticate",
                          "Basic realm=\"kumod\"");
        http_reply_error(hr, 401, "%s from %s %s %s on %s", who, hr->peer_ip, how,
                         method_name(hr->method), hr->resources[0]);
        return;
    }
    http_reply_error(hr, 403, "%s from %s %s %s on %s", who, hr->peer_ip, how,
                     method_name(hr->method), hr->resources[0]);
}

/* The decision with its detail, for the accounting log (KumoMTA's
 * AuditRecord): considered_resources are those walked before the one whose
 * rule decided (all of them when none did). */
static void after_acl_detail(void *ud, int verdict, const char *error, const char *resource,
                             const json_t *rule)
{
    http_req *hr = ud;
    if (verdict != ACL_ERROR && aaalog_wants_authz(verdict == ACL_ALLOW)) {
        size_t n = 0;
        while (n < hr->n_resources && !(resource && strcmp(hr->resources[n], resource) == 0))
            n++;
        aaalog_authz(hr->n_resources ? hr->resources[0] : hr->path, method_name(hr->method),
                     verdict == ACL_ALLOW, resource, rule, hr->auth, hr->resources, n);
    }
    after_acl(hr, verdict, error);
}

static void authorize(http_req *hr)
{
    acl_check_detail(hr->resources, hr->n_resources, hr->auth, method_name(hr->method),
                     after_acl_detail, hr);
}

static void on_request(struct evhttp_request *req, void *arg)
{
    http_listener *ln = arg;
    http_req *hr = calloc(1, sizeof(*hr));
    if (!hr) {
        evhttp_send_error(req, 500, "out of memory");
        return;
    }
    atomic_fetch_add(&inflight, 1);
    TAILQ_INIT(&hr->query);
    hr->req = req;
    hr->ln = ln;
    hr->r = reactor_current();
    hr->method = evhttp_request_get_command(req);
    struct evhttp_connection *conn = evhttp_request_get_connection(req);
    if (conn) {
        net_format_addr(evhttp_connection_get_addr(conn), hr->peer_ip, sizeof(hr->peer_ip), NULL, 0);
        struct bufferevent *bev = evhttp_connection_get_bufferevent(conn);
        struct sockaddr_storage local;
        socklen_t ll = sizeof(local);
        if (bev && getsockname(bufferevent_getfd(bev), (struct sockaddr *)&local, &ll) == 0)
            net_format_addr((struct sockaddr *)&local, hr->local_ip, sizeof(hr->local_ip), NULL, 0);
    }
    if (!hr->local_ip[0])
        net_format_addr((struct sockaddr *)&ln->addr, hr->local_ip, sizeof(hr->local_ip), NULL, 0);
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *raw_path = uri ? evhttp_uri_get_path(uri) : NULL;
    hr->path = evhttp_uridecode(raw_path && *raw_path ? raw_path : "/", 0, NULL);
    if (!hr->path) {
        http_reply_error(hr, 400, "malformed request path");
        return;
    }
    const char *q = uri ? evhttp_uri_get_query(uri) : NULL;
    if (q && evhttp_parse_query_str(q, &hr->query) != 0) {
        http_reply_error(hr, 400, "malformed query string");
        return;
    }
    hr->auth = json_pack("{s:s,s:[],s:[]}", "peer_address", hr->peer_ip, "identities", "groups");
    if (!hr->auth) {
        http_reply_error(hr, 500, "out of memory");
        return;
    }
    if (atomic_load(&shutting_down)) {
        http_reply_error(hr, 503, "shutting down");
        return;
    }
    const http_route *rt = NULL;
    for (size_t i = 0; !only_endpoints && i < sizeof(routes) / sizeof(routes[0]); i++)
        if (strcmp(routes[i].path, hr->path) == 0)
            rt = &routes[i];
    for (int e = 0; e < n_endpoints; e++)
        for (size_t i = 0; i < endpoints[e]->n_routes; i++)
            if (strcmp(endpoints[e]->routes[i].path, hr->path) == 0)
                rt = &endpoints[e]->routes[i];
    if (!rt) {
        http_reply_error(hr, 404, "no such endpoint: %s", hr->path);
        return;
    }
    if (!(rt->methods & (unsigned)hr->method)) {
        char allow[64] = "";
        static const unsigned ms[] = {M_GET, M_POST, M_DELETE};
        for (int i = 0; i < 3; i++)
            if (rt->methods & ms[i])
                snprintf(allow + strlen(allow), sizeof(allow) - strlen(allow), "%s%s",
                         allow[0] ? ", " : "", method_name((enum evhttp_cmd_type)ms[i]));
        evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", allow);
        http_reply_error(hr, 405, "method %s is not allowed on %s (allowed: %s)",
                         method_name(hr->method), hr->path, allow);
        return;
    }
    hr->route = rt;
    if (!decode_body(hr))
        return;
    hr->n_resources = acl_http_resources(ln->bound, hr->path, &hr->resources);
    if (cidr_list_match_str(&ln->trusted_hosts, hr->peer_ip))
        json_array_append_new(json_object_get(hr->auth, "groups"),
                              json_string(ACL_TRUSTED_GROUP));
    authenticate(hr);
}

/* ---- start and stop ------------------------------------------------------------------------------ */

/* Every server connection's bufferevent, made here (plain ones too) so
 * that errpage.c can answer libevent's own 413 as KumoMTA does. A plain one
 * has the options evhttp gives its own (none: evhttp closes the socket
 * itself). Out of memory, NULL makes evhttp use a plain bufferevent of its
 * own; on a TLS listener the client's handshake then reads as a malformed
 * request (400, closed). */
static struct bufferevent *conn_bevcb(struct event_base *base, void *arg)
{
    http_listener *ln = arg;
    struct bufferevent *bev;
    if (ln->use_tls) {
        SSL *ssl = SSL_new(ln->tls);
        if (!ssl)
            return NULL;
        /* frees ssl itself when it fails (BEV_OPT_CLOSE_ON_FREE) */
        bev = bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                             BEV_OPT_CLOSE_ON_FREE);
    } else {
        bev = bufferevent_socket_new(base, -1, 0);
    }
    if (bev && http_errpage_watch(bev) != 0)
        DWARN(HMOD, "listener %s: out of memory: libevent's own 413 page goes out as it is",
              ln->listen);
    return bev;
}

typedef struct sync_job {
    int rc;
    char err[512];
} sync_job;

static void run_on_every_reactor(reactor_fn fn, char *err, size_t errlen, int *rc_out)
{
    *rc_out = 0;
    for (int r = 0; r < reactor_count(); r++) {
        sync_job j = {.rc = 0};
        reactor_call_sync(reactor_get(r), fn, &j);
        if (j.rc != 0 && *rc_out == 0) {
            *rc_out = j.rc;
            if (err)
                snprintf(err, errlen, "%s", j.err);
        }
    }
}

static void open_on_reactor(void *arg)
{
    sync_job *j = arg;
    reactor *r = reactor_current();
    for (int i = 0; i < n_listeners && j->rc == 0; i++) {
        http_listener *ln = listeners[i];
        http_slot *slot = &slots[reactor_index(r) * MAX_LISTENERS + i];
        int fd = net_listen_reuseport(&ln->addr, ln->addrlen, reactor_index(r) == 0, false);
        if (fd < 0) {
            snprintf(j->err, sizeof(j->err), "http listener: cannot listen on %s: %s", ln->listen,
                     net_listen_strerror(fd));
            j->rc = KERR_IO;
            break;
        }
        struct evhttp *http = evhttp_new(reactor_base(r));
        if (!http) {
            close(fd);
            snprintf(j->err, sizeof(j->err), "http listener %s: out of memory", ln->listen);
            j->rc = KERR_NOMEM;
            break;
        }
        evhttp_set_allowed_methods(http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                             EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
                                             EVHTTP_REQ_OPTIONS | EVHTTP_REQ_PATCH);
        evhttp_set_max_body_size(http, (ev_ssize_t)ln->request_body_limit);
        evhttp_set_max_headers_size(http, 64 * 1024);
        evhttp_set_timeout(http, REQUEST_TIMEOUT_S);
        /* no EVHTTP_SERVER_LINGERING_CLOSE: it reads an oversized body to
         * its end before the 413, which stalls a client that waits for
         * the 100 to Expect: 100-continue; errpage.c drains the rest of
         * the body after the 413 instead, so the client sees the answer
         * rather than a reset */
        evhttp_set_gencb(http, on_request, ln);
        evhttp_set_bevcb(http, conn_bevcb, ln);
        struct evhttp_bound_socket *bs = evhttp_accept_socket_with_handle(http, fd);
        if (!bs) {
            close(fd);
            evhttp_free(http);
            snprintf(j->err, sizeof(j->err), "http listener: cannot accept on %s", ln->listen);
            j->rc = KERR_IO;
            break;
        }
        slot->http = http;
        slot->bound = bs;
    }
}

int http_start_listeners(char *err, size_t errlen)
{
    for (int e = 0; e < n_endpoints; e++)
        if (endpoints[e]->start)
            endpoints[e]->start();
    if (n_listeners == 0)
        return 0;
    for (int i = 0; i < n_listeners; i++) {
        http_listener *ln = listeners[i];
        if (!ln->use_tls)
            continue;
        char e2[512];
        ln->tls = tls_server_ctx_new(ln->tls_certificate, ln->tls_private_key, ln->hostname, e2,
                                     sizeof(e2));
        if (!ln->tls) {
            snprintf(err, errlen, "http listener %s: TLS: %s", ln->listen, e2);
            return KERR_INVAL;
        }
    }
    pthread_mutex_lock(&listeners_lock);
    slots = calloc((size_t)reactor_count() * MAX_LISTENERS, sizeof(*slots));
    pthread_mutex_unlock(&listeners_lock);
    if (!slots) {
        snprintf(err, errlen, "out of memory");
        return KERR_NOMEM;
    }
    int rc;
    run_on_every_reactor(open_on_reactor, err, errlen, &rc);
    if (rc)
        return rc;
    for (int i = 0; i < n_listeners; i++) {
        char bound[INET6_ADDRSTRLEN + 8];
        net_format_addr((struct sockaddr *)&listeners[i]->addr, NULL, 0, bound, sizeof(bound));
        DINFO(HMOD, "%s listener on %s (hostname %s)", listeners[i]->use_tls ? "https" : "http",
              bound, listeners[i]->hostname);
    }
    return 0;
}

static void stop_accepting_on_reactor(void *arg)
{
    (void)arg;
    int r = reactor_index(reactor_current());
    for (int i = 0; i < n_listeners; i++) {
        http_slot *slot = &slots[r * MAX_LISTENERS + i];
        if (slot->http && slot->bound) {
            evhttp_del_accept_socket(slot->http, slot->bound);
            slot->bound = NULL;
        }
    }
}

static void free_on_reactor(void *arg)
{
    (void)arg;
    int r = reactor_index(reactor_current());
    /* only when no request is in flight: evhttp_free frees their requests */
    if (atomic_load(&inflight) == 0) {
        for (int i = 0; i < n_listeners; i++) {
            http_slot *slot = &slots[r * MAX_LISTENERS + i];
            if (slot->http) {
                evhttp_free(slot->http);
                slot->http = NULL;
            }
        }
    }
    http_errpage_linger_stop();
    auth_cache_clear();
}

void http_shutdown(void)
{
    atomic_store(&shutting_down, true);
    if (slots) {
        int rc;
        run_on_every_reactor(stop_accepting_on_reactor, NULL, 0, &rc);
        /* requests in flight finish their spool saves and replies (bounded) */
        for (int i = 0; i < 500 && atomic_load(&inflight) > 0; i++)
            usleep(10000);
        if (atomic_load(&inflight) > 0)
            DWARN(HMOD, "%d HTTP requests still in flight at shutdown", atomic_load(&inflight));
        run_on_every_reactor(free_on_reactor, NULL, 0, &rc);
        if (atomic_load(&inflight) == 0) {
            free(slots);
            slots = NULL;
        }
    }
    if (!slots) {
        for (int e = 0; e < n_endpoints; e++)
            if (endpoints[e]->stop)
                endpoints[e]->stop();
        for (int i = 0; i < n_listeners; i++) {
            listener_free(listeners[i]);
            listeners[i] = NULL;
        }
        n_listeners = 0;
    }
}
