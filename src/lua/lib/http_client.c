/* kumo.http: build_client{}, the Request builder and the Response object
 * (docs/reference/kumo.http/), and build_url. A client is one curl multi
 * handle (src/net/curlev.c) bound to the reactor of the VM that first sends
 * with it, so its connections are reused by every request it makes.
 * request:send() starts the transfer, parks the event's coroutine and
 * yields; the completion resumes it with the Response or raises the
 * transfer's error in it. Nothing here blocks the reactor: curl resolves
 * names on its own threads and polls its sockets through the reactor's
 * event_base.
 *
 * Owns: the client (multi handle, settings), a request's settings until it
 * is sent, an in-flight transfer (easy handle, header list, the response
 * being received), and a response's status, headers and body. Runs on the
 * thread of the VM. Fails with a Lua error naming the method; an
 * in-flight transfer is abandoned (not resumed) when the VM shuts down
 * (klua_wait_park), and failed with an error when its client is closed.
 * Hostile servers: bodies over HTTP_MAX_BODY, endless redirects (more than
 * 10) and hanging peers (the timeout) end in an error, never a stall. */
#include "lua/lib/http_client.h"

#include <ctype.h>
#include <lauxlib.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/duration.h"
#include "core/hex.h"
#include "core/reactor.h"
#include "lua/klua.h"
#include "lua/lib/lualib.h"
#include "lua/lib/waiter.h"
#include "msg/rfc2047.h"
#include "net/curlev.h"

#define CLIENT_MT "kumo.http.Client"
#define REQUEST_MT "kumo.http.Request"
#define RESPONSE_MT "kumo.http.Response"
#define HEADERS_MT "kumo.http.HeaderMap"

/* A response body larger than this fails the request: a policy holds it
 * in memory. */
#define HTTP_MAX_BODY (64u * 1024 * 1024)
#define HTTP_MAX_HEADERS_BYTES (1024u * 1024)

typedef struct http_client {
    curlev *cv;
    reactor *r; /* the reactor cv runs on (set by the first send) */
    char *user_agent;
    long timeout_ms;
    long pool_idle_s;
    bool insecure;
    bool verbose;
    bool closed;
} http_client;

typedef struct http_request {
    char *method;
    char *url;
    struct curl_slist *headers;
    bool has_content_type;
    char *body;
    size_t body_len;
    bool has_body;
    char *user, *password;
    long timeout_ms; /* -1: the client's */
} http_request;

typedef struct buf {
    char *p;
    size_t len, cap;
} buf;

/* One transfer in flight. */
typedef struct xfer {
    waiter wt; /* first: the cancel callback casts back */
    http_client *client;
    int client_ref; /* keeps the client alive while the transfer runs */
    lua_State *main;
    CURL *easy;
    struct curl_slist *headers;
    buf body;
    buf hdrs; /* the last response's header block, "name: value\n" */
    bool too_big;
    char *url;
} xfer;

typedef struct http_response {
    long status;
    char *reason; /* from the status line; NULL -> the standard phrase */
    char *headers; /* "name: value\n" lines, names lowercased */
    size_t headers_len;
    char *body;
    size_t body_len;
    curl_off_t content_length; /* -1: unknown */
} http_response;

static bool buf_add(buf *b, const char *p, size_t n, size_t max)
{
    if (b->len + n > max)
        return false;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 1024;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *np = realloc(b->p, cap);
        if (!np)
            return false;
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->len, p, n);
    b->len += n;
    b->p[b->len] = '\0';
    return true;
}

/* ---- reason phrases (RFC 9110 and its registry) -------------------------------------------- */

static const char *status_phrase(long code)
{
    static const struct {
        int code;
        const char *text;
    } phrases[] = {
        {100, "Continue"},
        {101, "Switching Protocols"},
        {102, "Processing"},
        {103, "Early Hints"},
        {200, "OK"},
        {201, "Created"},
        {202, "Accepted"},
        {203, "Non Authoritative Information"},
        {204, "No Content"},
        {205, "Reset Content"},
        {206, "Partial Content"},
        {207, "Multi-Status"},
        {208, "Already Reported"},
        {226, "IM Used"},
        {300, "Multiple Choices"},
        {301, "Moved Permanently"},
        {302, "Found"},
        {303, "See Other"},
        {304, "Not Modified"},
        {305, "Use Proxy"},
        {307, "Temporary Redirect"},
        {308, "Permanent Redirect"},
        {400, "Bad Request"},
        {401, "Unauthorized"},
        {402, "Payment Required"},
        {403, "Forbidden"},
        {404, "Not Found"},
        {405, "Method Not Allowed"},
        {406, "Not Acceptable"},
        {407, "Proxy Authentication Required"},
        {408, "Request Timeout"},
        {409, "Conflict"},
        {410, "Gone"},
        {411, "Length Required"},
        {412, "Precondition Failed"},
        {413, "Payload Too Large"},
        {414, "URI Too Long"},
        {415, "Unsupported Media Type"},
        {416, "Range Not Satisfiable"},
        {417, "Expectation Failed"},
        {418, "I'm a teapot"},
        {421, "Misdirected Request"},
        {422, "Unprocessable Entity"},
        {423, "Locked"},
        {424, "Failed Dependency"},
        {426, "Upgrade Required"},
        {428, "Precondition Required"},
        {429, "Too Many Requests"},
        {431, "Request Header Fields Too Large"},
        {451, "Unavailable For Legal Reasons"},
        {500, "Internal Server Error"},
        {501, "Not Implemented"},
        {502, "Bad Gateway"},
        {503, "Service Unavailable"},
        {504, "Gateway Timeout"},
        {505, "HTTP Version Not Supported"},
        {506, "Variant Also Negotiates"},
        {507, "Insufficient Storage"},
        {508, "Loop Detected"},
        {510, "Not Extended"},
        {511, "Network Authentication Required"},
    };
    for (size_t i = 0; i < sizeof(phrases) / sizeof(phrases[0]); i++)
        if (phrases[i].code == code)
            return phrases[i].text;
    return NULL;
}

/* ---- argument helpers ---------------------------------------------------------------------- */

/* A duration string ("1 minute") or a number of seconds, in ms. */
static long check_duration_ms(lua_State *L, int idx, const char *fname)
{
    if (lua_type(L, idx) == LUA_TNUMBER) {
        double s = lua_tonumber(L, idx);
        if (!(s >= 0 && s < 1e9))
            luaL_error(L, "%s: the duration must be a non-negative number of seconds", fname);
        return (long)(s * 1000.0 + 0.5);
    }
    if (lua_type(L, idx) != LUA_TSTRING)
        luaL_error(L, "%s: expected a duration string like \"1 minute\" or a number of seconds, "
                      "got %s",
                   fname, luaL_typename(L, idx));
    int64_t ns;
    const char *s = lua_tostring(L, idx);
    if (duration_parse(s, &ns) < 0 || ns < 0)
        luaL_error(L, "%s: invalid duration \"%s\"", fname, s);
    return (long)(ns / 1000000);
}

static char *xstrdup(lua_State *L, const char *s, size_t n)
{
    char *p = malloc(n + 1);
    if (!p)
        luaL_error(L, "kumo.http: out of memory");
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

/* ---- the client ---------------------------------------------------------------------------- */

static http_client *check_client(lua_State *L, const char *method)
{
    http_client *c = luaL_testudata(L, 1, CLIENT_MT);
    if (!c)
        luaL_error(L, "client:%s: must be called as a method on a client from "
                      "kumo.http.build_client",
                   method);
    return c;
}

static int l_client_gc(lua_State *L)
{
    http_client *c = luaL_checkudata(L, 1, CLIENT_MT);
    /* No transfer runs here: each holds a reference to its client. */
    curlev_free(c->cv);
    c->cv = NULL;
    free(c->user_agent);
    c->user_agent = NULL;
    return 0;
}

static int l_client_close(lua_State *L)
{
    http_client *c = check_client(L, "close");
    c->closed = true;
    /* fails the transfers under way: their coroutines get an error */
    curlev *cv = c->cv;
    c->cv = NULL;
    curlev_free(cv);
    return 0;
}

static const char *const client_keys[] = {"user_agent", "connection_verbose", "pool_idle_timeout",
                                          "timeout", "accept_invalid_certs", NULL};

static int l_build_client(lua_State *L)
{
    const char *fname = "kumo.http.build_client";
    if (!lua_isnoneornil(L, 1))
        luaL_checktype(L, 1, LUA_TTABLE);
    else {
        lua_settop(L, 0);
        lua_newtable(L);
    }
    lua_pushnil(L);
    while (lua_next(L, 1)) {
        lua_pop(L, 1);
        bool known = false;
        if (lua_type(L, -1) == LUA_TSTRING)
            for (int i = 0; client_keys[i]; i++)
                known = known || strcmp(client_keys[i], lua_tostring(L, -1)) == 0;
        if (!known)
            return luaL_error(L, "%s: unknown field `%s`, expected one of `user_agent`, "
                                 "`connection_verbose`, `pool_idle_timeout`, `timeout`, "
                                 "`accept_invalid_certs`",
                              fname, luaL_tolstring(L, -1, NULL));
    }
    http_client *c = lua_newuserdatauv(L, sizeof(*c), 0);
    memset(c, 0, sizeof(*c));
    c->timeout_ms = 60000;
    c->pool_idle_s = 90;
    luaL_setmetatable(L, CLIENT_MT);
    int ud = lua_gettop(L);
    if (lua_getfield(L, 1, "user_agent") != LUA_TNIL) {
        if (lua_type(L, -1) != LUA_TSTRING)
            return luaL_error(L, "%s: `user_agent` must be a string", fname);
        size_t n;
        const char *s = lua_tolstring(L, -1, &n);
        c->user_agent = xstrdup(L, s, n);
    }
    lua_pop(L, 1);
    if (lua_getfield(L, 1, "timeout") != LUA_TNIL)
        c->timeout_ms = check_duration_ms(L, -1, fname);
    lua_pop(L, 1);
    if (lua_getfield(L, 1, "pool_idle_timeout") != LUA_TNIL)
        c->pool_idle_s = (check_duration_ms(L, -1, fname) + 999) / 1000;
    lua_pop(L, 1);
    if (lua_getfield(L, 1, "accept_invalid_certs") != LUA_TNIL) {
        if (!lua_isboolean(L, -1))
            return luaL_error(L, "%s: `accept_invalid_certs` must be a boolean", fname);
        c->insecure = lua_toboolean(L, -1);
    }
    lua_pop(L, 1);
    if (lua_getfield(L, 1, "connection_verbose") != LUA_TNIL) {
        if (!lua_isboolean(L, -1))
            return luaL_error(L, "%s: `connection_verbose` must be a boolean", fname);
        c->verbose = lua_toboolean(L, -1);
    }
    lua_pop(L, 1);
    lua_pushvalue(L, ud);
    return 1;
}

/* ---- the request builder ------------------------------------------------------------------- */

static http_request *check_request(lua_State *L, const char *method)
{
    http_request *r = luaL_testudata(L, 1, REQUEST_MT);
    if (!r)
        luaL_error(L, "request:%s: must be called as a method on a request from client:get, "
                      "client:post or client:put",
                   method);
    return r;
}

static int l_request_gc(lua_State *L)
{
    http_request *r = luaL_checkudata(L, 1, REQUEST_MT);
    free(r->method);
    free(r->url);
    curl_slist_free_all(r->headers);
    free(r->body);
    free(r->user);
    free(r->password);
    memset(r, 0, sizeof(*r));
    return 0;
}

static int new_request(lua_State *L, const char *method)
{
    char fname[32];
    snprintf(fname, sizeof(fname), "client:%s", method);
    http_client *c = check_client(L, method);
    if (c->closed)
        return luaL_error(L, "%s: the client is closed", fname);
    size_t n;
    if (lua_type(L, 2) != LUA_TSTRING)
        return luaL_error(L, "%s: the URL must be a string, got %s", fname, luaL_typename(L, 2));
    const char *url = lua_tolstring(L, 2, &n);
    /* parse now, so that a bad URL is reported where it was written */
    CURLU *u = curl_url();
    if (!u)
        return luaL_error(L, "%s: out of memory", fname);
    CURLUcode uc = curl_url_set(u, CURLUPART_URL, url, 0);
    char *scheme = NULL;
    if (uc == CURLUE_OK)
        curl_url_get(u, CURLUPART_SCHEME, &scheme, 0);
    bool http = scheme && (strcmp(scheme, "http") == 0 || strcmp(scheme, "https") == 0);
    curl_free(scheme);
    curl_url_cleanup(u);
    if (uc != CURLUE_OK || strlen(url) != n)
        return luaL_error(L, "%s: invalid URL '%s': %s", fname, url,
                          uc != CURLUE_OK ? curl_url_strerror(uc) : "embedded NUL");
    if (!http)
        return luaL_error(L, "%s: invalid URL '%s': only http and https are supported", fname,
                          url);
    http_request *r = lua_newuserdatauv(L, sizeof(*r), 1);
    memset(r, 0, sizeof(*r));
    r->timeout_ms = -1;
    luaL_setmetatable(L, REQUEST_MT);
    lua_pushvalue(L, 1);
    lua_setiuservalue(L, -2, 1); /* the client */
    r->method = xstrdup(L, method, strlen(method));
    for (char *p = r->method; *p; p++)
        *p = (char)toupper((unsigned char)*p);
    r->url = xstrdup(L, url, n);
    return 1;
}

static int l_client_get(lua_State *L)
{
    return new_request(L, "get");
}
static int l_client_post(lua_State *L)
{
    return new_request(L, "post");
}
static int l_client_put(lua_State *L)
{
    return new_request(L, "put");
}
static int l_client_delete(lua_State *L)
{
    return new_request(L, "delete");
}
static int l_client_patch(lua_State *L)
{
    return new_request(L, "patch");
}
static int l_client_head(lua_State *L)
{
    return new_request(L, "head");
}

/* A header name is a token (RFC 9110 §5.1); a value has no CR, LF or NUL. */
static bool header_name_ok(const char *s, size_t n)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch <= 32 || ch >= 127 || strchr("\"(),/:;<=>?@[\\]{}", ch))
            return false;
    }
    return true;
}

static void add_header(lua_State *L, http_request *r, const char *fname, int ni, int vi)
{
    size_t nl, vl;
    if (lua_type(L, ni) != LUA_TSTRING)
        luaL_error(L, "%s: the header name must be a string", fname);
    if (lua_type(L, vi) != LUA_TSTRING && lua_type(L, vi) != LUA_TNUMBER)
        luaL_error(L, "%s: the value of header '%s' must be a string", fname, lua_tostring(L, ni));
    const char *name = lua_tolstring(L, ni, &nl);
    const char *value = lua_tolstring(L, vi, &vl);
    if (!header_name_ok(name, nl))
        luaL_error(L, "%s: invalid header name '%s'", fname, name);
    if (strlen(value) != vl || strpbrk(value, "\r\n"))
        luaL_error(L, "%s: invalid value for header '%s': it may not hold CR, LF or NUL", fname,
                   name);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    luaL_addlstring(&b, name, nl);
    /* "Name;" is curl's way of sending a header with an empty value */
    if (vl == 0) {
        luaL_addchar(&b, ';');
    } else {
        luaL_addstring(&b, ": ");
        luaL_addlstring(&b, value, vl);
    }
    luaL_pushresult(&b);
    struct curl_slist *l = curl_slist_append(r->headers, lua_tostring(L, -1));
    lua_pop(L, 1);
    if (!l)
        luaL_error(L, "%s: out of memory", fname);
    r->headers = l;
    if (nl == 12 && strncasecmp(name, "content-type", 12) == 0)
        r->has_content_type = true;
}

static int l_req_header(lua_State *L)
{
    http_request *r = check_request(L, "header");
    add_header(L, r, "request:header", 2, 3);
    lua_settop(L, 1);
    return 1;
}

static int l_req_headers(lua_State *L)
{
    http_request *r = check_request(L, "headers");
    if (lua_type(L, 2) != LUA_TTABLE)
        return luaL_error(L, "request:headers: expected a table of name/value pairs");
    lua_pushnil(L);
    while (lua_next(L, 2)) {
        add_header(L, r, "request:headers", -2, -1);
        lua_pop(L, 1);
    }
    lua_settop(L, 1);
    return 1;
}

static int l_req_basic_auth(lua_State *L)
{
    http_request *r = check_request(L, "basic_auth");
    size_t n;
    if (lua_type(L, 2) != LUA_TSTRING)
        return luaL_error(L, "request:basic_auth: the username must be a string");
    const char *u = lua_tolstring(L, 2, &n);
    free(r->user);
    r->user = xstrdup(L, u, n);
    free(r->password);
    r->password = NULL;
    if (!lua_isnoneornil(L, 3)) {
        if (lua_type(L, 3) != LUA_TSTRING)
            return luaL_error(L, "request:basic_auth: the password must be a string");
        const char *p = lua_tolstring(L, 3, &n);
        r->password = xstrdup(L, p, n);
    }
    lua_settop(L, 1);
    return 1;
}

static int l_req_bearer_auth(lua_State *L)
{
    check_request(L, "bearer_auth");
    if (lua_type(L, 2) != LUA_TSTRING)
        return luaL_error(L, "request:bearer_auth: the token must be a string");
    lua_pushliteral(L, "Authorization");
    lua_pushfstring(L, "Bearer %s", lua_tostring(L, 2));
    add_header(L, check_request(L, "bearer_auth"), "request:bearer_auth", -2, -1);
    lua_settop(L, 1);
    return 1;
}

static void set_body(lua_State *L, http_request *r, const char *s, size_t n)
{
    char *p = malloc(n + 1);
    if (!p)
        luaL_error(L, "kumo.http: out of memory");
    memcpy(p, s, n);
    p[n] = '\0';
    free(r->body);
    r->body = p;
    r->body_len = n;
    r->has_body = true;
}

static int l_req_body(lua_State *L)
{
    http_request *r = check_request(L, "body");
    if (lua_type(L, 2) != LUA_TSTRING)
        return luaL_error(L, "request:body: the body must be a string, got %s",
                          luaL_typename(L, 2));
    size_t n;
    const char *s = lua_tolstring(L, 2, &n);
    set_body(L, r, s, n);
    lua_settop(L, 1);
    return 1;
}

static void add_form_escaped(luaL_Buffer *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (isalnum(ch) || ch == '-' || ch == '.' || ch == '_' || ch == '*') {
            luaL_addchar(b, (char)ch);
        } else if (ch == ' ') {
            luaL_addchar(b, '+');
        } else {
            luaL_addchar(b, '%');
            luaL_addchar(b, hex[ch >> 4]);
            luaL_addchar(b, hex[ch & 15]);
        }
    }
}

/* Sorted keys: a Lua table has no order, a request body should not vary. */
static int collect_sorted_keys(lua_State *L, int t, const char *fname)
{
    lua_newtable(L);
    int keys = lua_gettop(L);
    lua_Integer n = 0;
    lua_pushnil(L);
    while (lua_next(L, t)) {
        if (lua_type(L, -2) != LUA_TSTRING)
            luaL_error(L, "%s: parameter names must be strings", fname);
        if (lua_type(L, -1) != LUA_TSTRING && lua_type(L, -1) != LUA_TNUMBER)
            luaL_error(L, "%s: the value of parameter '%s' must be a string", fname,
                       lua_tostring(L, -2));
        lua_pop(L, 1);
        lua_pushvalue(L, -1);
        lua_rawseti(L, keys, ++n);
    }
    lua_getglobal(L, "table");
    lua_getfield(L, -1, "sort");
    lua_pushvalue(L, keys);
    lua_call(L, 1, 0);
    lua_pop(L, 1);
    return keys;
}

static int l_req_form_url_encoded(lua_State *L)
{
    const char *fname = "request:form_url_encoded";
    http_request *r = check_request(L, "form_url_encoded");
    luaL_checktype(L, 2, LUA_TTABLE);
    int keys = collect_sorted_keys(L, 2, fname);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    lua_Integer n = (lua_Integer)lua_rawlen(L, keys);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, keys, i);
        lua_pushvalue(L, -1);
        lua_gettable(L, 2);
        size_t kl, vl;
        const char *k = lua_tolstring(L, -2, &kl);
        const char *v = lua_tolstring(L, -1, &vl);
        /* the buffer may sit on the stack: copy out before popping */
        char *kc = malloc(kl + 1), *vc = malloc(vl + 1);
        if (!kc || !vc) {
            free(kc);
            free(vc);
            return luaL_error(L, "%s: out of memory", fname);
        }
        memcpy(kc, k, kl + 1);
        memcpy(vc, v, vl + 1);
        lua_pop(L, 2);
        if (i > 1)
            luaL_addchar(&b, '&');
        add_form_escaped(&b, kc, kl);
        luaL_addchar(&b, '=');
        add_form_escaped(&b, vc, vl);
        free(kc);
        free(vc);
    }
    luaL_pushresult(&b);
    size_t bl;
    const char *body = lua_tolstring(L, -1, &bl);
    set_body(L, r, body, bl);
    lua_pushliteral(L, "Content-Type");
    lua_pushliteral(L, "application/x-www-form-urlencoded");
    add_header(L, r, fname, -2, -1);
    lua_settop(L, 1);
    return 1;
}

static int l_req_form_multipart_data(lua_State *L)
{
    const char *fname = "request:form_multipart_data";
    http_request *r = check_request(L, "form_multipart_data");
    luaL_checktype(L, 2, LUA_TTABLE);
    int keys = collect_sorted_keys(L, 2, fname);
    /* a boundary that cannot occur in the parts: random, checked */
    char boundary[64];
    luaL_Buffer b;
    for (int attempt = 0;; attempt++) {
        snprintf(boundary, sizeof(boundary), "kumod-%08lx%08lx%04x", (unsigned long)random(),
                 (unsigned long)random(), attempt);
        bool clash = false;
        lua_Integer n = (lua_Integer)lua_rawlen(L, keys);
        for (lua_Integer i = 1; i <= n && !clash; i++) {
            lua_rawgeti(L, keys, i);
            lua_gettable(L, 2);
            clash = strstr(lua_tostring(L, -1), boundary) != NULL;
            lua_pop(L, 1);
        }
        if (!clash)
            break;
    }
    luaL_buffinit(L, &b);
    lua_Integer n = (lua_Integer)lua_rawlen(L, keys);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, keys, i);
        lua_pushvalue(L, -1);
        lua_gettable(L, 2);
        size_t kl, vl;
        const char *k = lua_tolstring(L, -2, &kl);
        const char *v = lua_tolstring(L, -1, &vl);
        if (strpbrk(k, "\"\r\n"))
            return luaL_error(L, "%s: invalid parameter name '%s'", fname, k);
        bool text = utf8_valid(v, vl);
        char *kc = xstrdup(L, k, kl), *vc = xstrdup(L, v, vl);
        lua_pop(L, 2);
        luaL_addstring(&b, "--");
        luaL_addstring(&b, boundary);
        luaL_addstring(&b, "\r\nContent-Disposition: form-data; name=\"");
        luaL_addlstring(&b, kc, kl);
        luaL_addstring(&b, "\"\r\n");
        /* binary strings go as application/octet-stream */
        if (!text)
            luaL_addstring(&b, "Content-Type: application/octet-stream\r\n");
        luaL_addstring(&b, "\r\n");
        luaL_addlstring(&b, vc, vl);
        luaL_addstring(&b, "\r\n");
        free(kc);
        free(vc);
    }
    luaL_addstring(&b, "--");
    luaL_addstring(&b, boundary);
    luaL_addstring(&b, "--\r\n");
    luaL_pushresult(&b);
    size_t bl;
    const char *body = lua_tolstring(L, -1, &bl);
    set_body(L, r, body, bl);
    lua_pushliteral(L, "Content-Type");
    lua_pushfstring(L, "multipart/form-data; boundary=%s", boundary);
    add_header(L, r, fname, -2, -1);
    lua_settop(L, 1);
    return 1;
}

static int l_req_timeout(lua_State *L)
{
    http_request *r = check_request(L, "timeout");
    r->timeout_ms = check_duration_ms(L, 2, "request:timeout");
    lua_settop(L, 1);
    return 1;
}

/* ---- sending ------------------------------------------------------------------------------- */

static size_t on_body(char *p, size_t size, size_t nmemb, void *ud)
{
    xfer *x = ud;
    size_t n = size * nmemb;
    if (!buf_add(&x->body, p, n, HTTP_MAX_BODY)) {
        x->too_big = true;
        return 0; /* curl fails the transfer with CURLE_WRITE_ERROR */
    }
    return n;
}

static size_t on_header(char *p, size_t size, size_t nmemb, void *ud)
{
    xfer *x = ud;
    size_t n = size * nmemb;
    /* a new status line (after a redirect or a 100 Continue) starts over */
    if (n >= 5 && memcmp(p, "HTTP/", 5) == 0) {
        x->hdrs.len = 0;
        return n;
    }
    const char *colon = memchr(p, ':', n);
    if (!colon)
        return n;
    size_t nl = (size_t)(colon - p);
    const char *v = colon + 1;
    const char *end = p + n;
    while (v < end && (*v == ' ' || *v == '\t'))
        v++;
    while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' ' || end[-1] == '\t'))
        end--;
    char name[256];
    if (nl == 0 || nl >= sizeof(name))
        return n;
    for (size_t i = 0; i < nl; i++)
        name[i] = (char)tolower((unsigned char)p[i]);
    if (!buf_add(&x->hdrs, name, nl, HTTP_MAX_HEADERS_BYTES) ||
        !buf_add(&x->hdrs, ": ", 2, HTTP_MAX_HEADERS_BYTES) ||
        !buf_add(&x->hdrs, v, (size_t)(end - v), HTTP_MAX_HEADERS_BYTES) ||
        !buf_add(&x->hdrs, "\n", 1, HTTP_MAX_HEADERS_BYTES)) {
        x->too_big = true;
        return 0;
    }
    return n;
}

static void xfer_free(xfer *x)
{
    if (x->easy)
        curl_easy_cleanup(x->easy);
    curl_slist_free_all(x->headers);
    free(x->body.p);
    free(x->hdrs.p);
    free(x->url);
    if (x->client_ref != LUA_NOREF)
        luaL_unref(x->main, LUA_REGISTRYINDEX, x->client_ref);
    free(x);
}

/* Shutdown: the VM goes away with the transfer under way. */
static void xfer_cancel(klua_wait *w)
{
    xfer *x = (xfer *)w;
    if (x->client->cv)
        curlev_remove(x->client->cv, x->easy);
    xfer_free(x);
}

static void push_response(lua_State *L, xfer *x)
{
    http_response *resp = lua_newuserdatauv(L, sizeof(*resp), 0);
    memset(resp, 0, sizeof(*resp));
    luaL_setmetatable(L, RESPONSE_MT);
    curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &resp->status);
    resp->content_length = -1;
    curl_easy_getinfo(x->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &resp->content_length);
    resp->headers = x->hdrs.p;
    resp->headers_len = x->hdrs.len;
    x->hdrs.p = NULL;
    resp->body = x->body.p;
    resp->body_len = x->body.len;
    x->body.p = NULL;
}

static void on_done(CURL *easy, CURLcode rc, const char *errbuf, void *ud)
{
    (void)easy;
    xfer *x = ud;
    klua_call *call = waiter_finish(&x->wt); /* never NULL: xfer_cancel ends the transfer */
    lua_State *co = klua_call_thread(call);
    if (rc == CURLE_OK) {
        push_response(co, x);
        lua_pushnil(co);
    } else {
        const char *why = errbuf && *errbuf ? errbuf : curl_easy_strerror(rc);
        lua_pushnil(co);
        if (x->too_big)
            lua_pushfstring(co, "error sending request for url (%s): the response is larger "
                                "than %d bytes",
                            x->url, (int)HTTP_MAX_BODY);
        else
            lua_pushfstring(co, "error sending request for url (%s): %s", x->url, why);
    }
    xfer_free(x);
    klua_wait_resume(call, 2);
}

static int send_k(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    (void)ctx;
    if (lua_isnil(L, -2))
        return lua_error(L);
    lua_pop(L, 1);
    return 1;
}

static int l_req_send(lua_State *L)
{
    const char *fname = "request:send";
    http_request *r = check_request(L, "send");
    lua_getiuservalue(L, 1, 1);
    http_client *c = luaL_testudata(L, -1, CLIENT_MT);
    if (!c)
        return luaL_error(L, "%s: the request has no client", fname);
    if (c->closed)
        return luaL_error(L, "%s: the client is closed", fname);
    reactor *re = reactor_current();
    if (!re || !lua_isyieldable(L) || !klua_current_call(L))
        return luaL_error(L, "%s: may only be called from an event handler or a task (it waits "
                             "for the response)",
                          fname);
    if (c->r && c->r != re)
        return luaL_error(L, "%s: the client belongs to another thread", fname);
    if (!c->cv) {
        c->cv = curlev_new(reactor_base(re));
        if (!c->cv)
            return luaL_error(L, "%s: cannot create the HTTP client", fname);
        c->r = re;
    }
    xfer *x = calloc(1, sizeof(*x));
    if (!x)
        return luaL_error(L, "%s: out of memory", fname);
    x->client_ref = LUA_NOREF;
    x->main = L;
    x->client = c;
    x->easy = curl_easy_init();
    x->url = strdup(r->url);
    struct curl_slist *h = NULL;
    bool ok = x->easy && x->url;
    for (struct curl_slist *e = r->headers; ok && e; e = e->next) {
        h = curl_slist_append(h, e->data);
        ok = h != NULL;
    }
    /* curl's own additions that reqwest does not make: a form Content-Type
     * for any body, and Expect: 100-continue for large ones */
    if (ok && r->has_body && !r->has_content_type)
        ok = (h = curl_slist_append(h, "Content-Type:")) != NULL;
    if (ok)
        ok = (h = curl_slist_append(h, "Expect:")) != NULL;
    x->headers = h;
    if (!ok) {
        xfer_free(x);
        return luaL_error(L, "%s: out of memory", fname);
    }
    CURL *e = x->easy;
    curl_easy_setopt(e, CURLOPT_URL, r->url);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(e, CURLOPT_MAXREDIRS, 10L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, r->timeout_ms >= 0 ? r->timeout_ms : c->timeout_ms);
    curl_easy_setopt(e, CURLOPT_MAXAGE_CONN, c->pool_idle_s);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, c->insecure ? 0L : 1L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, c->insecure ? 0L : 2L);
    curl_easy_setopt(e, CURLOPT_VERBOSE, c->verbose ? 1L : 0L);
    curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)HTTP_MAX_BODY);
    if (c->user_agent)
        curl_easy_setopt(e, CURLOPT_USERAGENT, c->user_agent);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, x->headers);
    if (r->user) {
        curl_easy_setopt(e, CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
        curl_easy_setopt(e, CURLOPT_USERNAME, r->user);
        curl_easy_setopt(e, CURLOPT_PASSWORD, r->password ? r->password : "");
    }
    if (strcmp(r->method, "GET") == 0 && !r->has_body) {
        curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    } else if (strcmp(r->method, "HEAD") == 0) {
        curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
    } else {
        if (r->has_body || strcmp(r->method, "POST") == 0 || strcmp(r->method, "PUT") == 0) {
            curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)r->body_len);
            curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, r->has_body ? r->body : "");
        }
        if (strcmp(r->method, "POST") != 0)
            curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, r->method);
        /* a redirected POST stays a POST (301/302/303 would turn it into a GET) */
        curl_easy_setopt(e, CURLOPT_POSTREDIR, 0L);
    }
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, x);

    int rc = curlev_add(c->cv, e, on_done, x);
    if (rc < 0) {
        xfer_free(x);
        return luaL_error(L, "%s: cannot start the request", fname);
    }
    if (!waiter_park(&x->wt, L, xfer_cancel)) {
        curlev_remove(c->cv, e);
        xfer_free(x);
        return luaL_error(L, "%s: may only be called from an event handler or a task (it "
                             "waits for the response)",
                          fname);
    }
    /* nothing may raise an error from here on: the call now waits */
    lua_State *main = klua_state(klua_call_vm(x->wt.call));
    x->main = main;
    lua_pushvalue(L, -1); /* the client */
    lua_xmove(L, main, 1);
    x->client_ref = luaL_ref(main, LUA_REGISTRYINDEX);
    return lua_yieldk(L, 0, 0, send_k);
}

/* ---- the response -------------------------------------------------------------------------- */

void http_response_push(lua_State *L, long status, const char *headers,
                        size_t headers_len, const char *body, size_t body_len,
                        long long content_length)
{
    http_response *resp = lua_newuserdatauv(L, sizeof(*resp), 0);
    memset(resp, 0, sizeof(*resp));
    luaL_setmetatable(L, RESPONSE_MT); /* from here on __gc frees what is set */
    resp->status = status;
    resp->content_length = content_length;
    resp->headers = xstrdup(L, headers ? headers : "", headers ? headers_len : 0);
    resp->headers_len = headers ? headers_len : 0;
    resp->body = xstrdup(L, body ? body : "", body ? body_len : 0);
    resp->body_len = body ? body_len : 0;
}

static http_response *check_response(lua_State *L, const char *method)
{
    http_response *r = luaL_testudata(L, 1, RESPONSE_MT);
    if (!r)
        luaL_error(L, "response:%s: must be called as a method on a response from request:send",
                   method);
    return r;
}

static int l_resp_gc(lua_State *L)
{
    http_response *r = luaL_checkudata(L, 1, RESPONSE_MT);
    free(r->headers);
    free(r->body);
    free(r->reason);
    memset(r, 0, sizeof(*r));
    return 0;
}

static int l_resp_status_code(lua_State *L)
{
    lua_pushinteger(L, check_response(L, "status_code")->status);
    return 1;
}

static int l_resp_status_reason(lua_State *L)
{
    const char *s = status_phrase(check_response(L, "status_reason")->status);
    if (s)
        lua_pushstring(L, s);
    else
        lua_pushnil(L);
    return 1;
}

#define STATUS_RANGE(fn, lo, hi)                                                                   \
    static int fn(lua_State *L)                                                                    \
    {                                                                                              \
        long s = check_response(L, &(#fn)[7])->status; /* the name without "l_resp_" */   \
        lua_pushboolean(L, s >= (lo) && s <= (hi));                                                \
        return 1;                                                                                  \
    }
STATUS_RANGE(l_resp_status_is_informational, 100, 199)
STATUS_RANGE(l_resp_status_is_success, 200, 299)
STATUS_RANGE(l_resp_status_is_redirection, 300, 399)
STATUS_RANGE(l_resp_status_is_client_error, 400, 499)
STATUS_RANGE(l_resp_status_is_server_error, 500, 599)

static int l_resp_content_length(lua_State *L)
{
    http_response *r = check_response(L, "content_length");
    if (r->content_length >= 0)
        lua_pushinteger(L, (lua_Integer)r->content_length);
    else
        lua_pushnil(L);
    return 1;
}

static int l_resp_bytes(lua_State *L)
{
    http_response *r = check_response(L, "bytes");
    lua_pushlstring(L, r->body ? r->body : "", r->body_len);
    return 1;
}

/* The value of the (last) header name in the response, or NULL. */
static const char *find_header(const http_response *r, const char *name, size_t *len)
{
    size_t nl = strlen(name);
    const char *found = NULL;
    for (const char *p = r->headers; p && *p;) {
        const char *eol = strchr(p, '\n');
        if (!eol)
            break;
        if ((size_t)(eol - p) > nl + 1 && memcmp(p, name, nl) == 0 && p[nl] == ':') {
            found = p + nl + 2;
            *len = (size_t)(eol - found);
        }
        p = eol + 1;
    }
    return found;
}

/* The charset parameter of Content-Type, copied into out ("" when none). */
static void content_charset(const http_response *r, char *out, size_t outlen)
{
    out[0] = '\0';
    size_t len;
    const char *ct = find_header(r, "content-type", &len);
    if (!ct)
        return;
    char tmp[256];
    snprintf(tmp, sizeof(tmp), "%.*s", (int)(len < 255 ? len : 255), ct);
    for (char *p = tmp; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    char *cs = strstr(tmp, "charset=");
    if (!cs)
        return;
    cs += 8;
    if (*cs == '"')
        cs++;
    size_t n = strcspn(cs, "\"; \t");
    snprintf(out, outlen, "%.*s", (int)n, cs);
}

static int l_resp_text(lua_State *L)
{
    http_response *r = check_response(L, "text");
    const char *s = r->body ? r->body : "";
    size_t n = r->body_len;
    char charset[64];
    content_charset(r, charset, sizeof(charset));
    /* a byte order mark overrides the declared charset */
    if (n >= 3 && memcmp(s, "\xEF\xBB\xBF", 3) == 0) {
        s += 3;
        n -= 3;
        strcpy(charset, "utf-8");
    } else if (n >= 2 && memcmp(s, "\xFF\xFE", 2) == 0) {
        s += 2;
        n -= 2;
        strcpy(charset, "utf-16le");
    } else if (n >= 2 && memcmp(s, "\xFE\xFF", 2) == 0) {
        s += 2;
        n -= 2;
        strcpy(charset, "utf-16be");
    }
    char *out = NULL;
    size_t ol = 0;
    if (charset[0] && strcmp(charset, "utf-8") != 0 && strcmp(charset, "utf8") != 0)
        out = charset_to_utf8(charset, s, n, &ol);
    if (!out)
        out = utf8_lossy(s, n, &ol);
    if (!out)
        return luaL_error(L, "response:text: out of memory");
    lua_pushlstring(L, out, ol);
    free(out);
    return 1;
}

/* headers(): a table keyed by lowercase names, with case-insensitive
 * lookup through its metatable. Repeated headers are joined with ", "
 * (RFC 9110 §5.3). */
static int l_headers_index(lua_State *L)
{
    if (lua_type(L, 2) != LUA_TSTRING)
        return 0;
    size_t n;
    const char *k = lua_tolstring(L, 2, &n);
    luaL_Buffer b;
    char *low = luaL_buffinitsize(L, &b, n);
    for (size_t i = 0; i < n; i++)
        low[i] = (char)tolower((unsigned char)k[i]);
    luaL_pushresultsize(&b, n);
    lua_rawget(L, 1);
    return 1;
}

static int l_resp_headers(lua_State *L)
{
    http_response *r = check_response(L, "headers");
    lua_newtable(L);
    for (const char *p = r->headers; p && *p;) {
        const char *eol = strchr(p, '\n');
        if (!eol)
            break;
        const char *colon = memchr(p, ':', (size_t)(eol - p));
        if (colon) {
            lua_pushlstring(L, p, (size_t)(colon - p));
            const char *v = colon + 2 <= eol ? colon + 2 : eol;
            lua_pushvalue(L, -1);
            if (lua_rawget(L, -3) == LUA_TSTRING) {
                lua_pushliteral(L, ", ");
                lua_pushlstring(L, v, (size_t)(eol - v));
                lua_concat(L, 3);
            } else {
                lua_pop(L, 1);
                lua_pushlstring(L, v, (size_t)(eol - v));
            }
            lua_rawset(L, -3);
        }
        p = eol + 1;
    }
    luaL_setmetatable(L, HEADERS_MT);
    return 1;
}

/* ---- build_url ----------------------------------------------------------------------------- */

static int l_build_url(lua_State *L)
{
    const char *fname = "kumo.http.build_url";
    if (lua_type(L, 1) != LUA_TSTRING)
        return luaL_error(L, "%s: the base URL must be a string", fname);
    const char *base = lua_tostring(L, 1);
    CURLU *u = curl_url();
    if (!u)
        return luaL_error(L, "%s: out of memory", fname);
    CURLUcode uc = curl_url_set(u, CURLUPART_URL, base, 0);
    if (uc != CURLUE_OK) {
        curl_url_cleanup(u);
        return luaL_error(L, "%s: invalid URL '%s': %s", fname, base, curl_url_strerror(uc));
    }
    if (!lua_isnoneornil(L, 2)) {
        if (lua_type(L, 2) != LUA_TTABLE) {
            curl_url_cleanup(u);
            return luaL_error(L, "%s: the parameters must be a table", fname);
        }
        /* sorted keys, so that the result does not depend on table order;
         * collect_sorted_keys may raise: no curl handle may leak then */
        curl_url_cleanup(u);
        u = NULL;
        int keys = collect_sorted_keys(L, 2, fname);
        u = curl_url();
        if (!u || curl_url_set(u, CURLUPART_URL, base, 0) != CURLUE_OK) {
            curl_url_cleanup(u);
            return luaL_error(L, "%s: out of memory", fname);
        }
        lua_Integer n = (lua_Integer)lua_rawlen(L, keys);
        for (lua_Integer i = 1; i <= n; i++) {
            lua_rawgeti(L, keys, i);
            lua_pushvalue(L, -1);
            lua_gettable(L, 2);
            lua_pushfstring(L, "%s=%s", lua_tostring(L, -2), lua_tostring(L, -1));
            uc = curl_url_set(u, CURLUPART_QUERY, lua_tostring(L, -1),
                              CURLU_APPENDQUERY | CURLU_URLENCODE);
            lua_pop(L, 3);
            if (uc != CURLUE_OK) {
                curl_url_cleanup(u);
                return luaL_error(L, "%s: %s", fname, curl_url_strerror(uc));
            }
        }
    }
    char *out = NULL;
    uc = curl_url_get(u, CURLUPART_URL, &out, 0);
    curl_url_cleanup(u);
    if (uc != CURLUE_OK)
        return luaL_error(L, "%s: %s", fname, curl_url_strerror(uc));
    lua_pushstring(L, out);
    curl_free(out);
    return 1;
}

/* ---- request:aws_sign_v4 ----------------------------------------------------------------- */

/* One application/x-www-form-urlencoded component, decoded ('+' is a
 * space, %XX a byte; a malformed escape stays as it is), pushed. */
static void push_form_decoded(lua_State *L, const char *s, size_t n)
{
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (size_t i = 0; i < n; i++) {
        int hi, lo;
        if (s[i] == '+') {
            luaL_addchar(&b, ' ');
        } else if (s[i] == '%' && i + 2 < n && (hi = hex_digit_value(s[i + 1])) >= 0 &&
                   (lo = hex_digit_value(s[i + 2])) >= 0) {
            luaL_addchar(&b, (char)(hi * 16 + lo));
            i += 2;
        } else {
            luaL_addchar(&b, s[i]);
        }
    }
    luaL_pushresult(&b);
}

/* What request:aws_sign_v4 signs, from the request's URL (as KumoMTA's
 * wrapper takes it): method, the path as written in the URL, the query
 * pairs decoded (a table name -> value) and the host without its port. */
static int l_req_sigv4_parts(lua_State *L)
{
    http_request *r = check_request(L, "aws_sign_v4");
    CURLU *u = curl_url();
    if (!u || curl_url_set(u, CURLUPART_URL, r->url, 0) != CURLUE_OK) {
        if (u)
            curl_url_cleanup(u);
        return luaL_error(L, "request:aws_sign_v4: cannot parse the request's URL '%s'", r->url);
    }
    char *path = NULL, *query = NULL, *host = NULL;
    curl_url_get(u, CURLUPART_PATH, &path, 0);
    curl_url_get(u, CURLUPART_QUERY, &query, 0);
    curl_url_get(u, CURLUPART_HOST, &host, 0);
    curl_url_cleanup(u);
    lua_pushstring(L, r->method);
    lua_pushstring(L, path ? path : "/");
    lua_newtable(L);
    for (const char *q = query; q && *q;) {
        const char *amp = strchr(q, '&');
        size_t len = amp ? (size_t)(amp - q) : strlen(q);
        const char *eq = memchr(q, '=', len);
        if (len) {
            size_t kl = eq ? (size_t)(eq - q) : len;
            push_form_decoded(L, q, kl);
            if (eq)
                push_form_decoded(L, eq + 1, len - kl - 1);
            else
                lua_pushliteral(L, "");
            lua_settable(L, -3);
        }
        q = amp ? amp + 1 : q + len;
    }
    if (host)
        lua_pushstring(L, host);
    else
        lua_pushnil(L);
    curl_free(path);
    curl_free(query);
    curl_free(host);
    return 4;
}

/* request:aws_sign_v4{...}: kumo.crypto.aws_sign_v4 over the request's
 * method, path and query, with a host header from the URL unless the
 * caller's headers have one; Authorization and X-Amz-Date are then set on
 * the request. In Lua, so that a keysource load can yield. */
static const char sigv4_src[] =
    "local kumo, parts = ...\n"
    "return function(req, params)\n"
    "  if type(params) ~= 'table' then\n"
    "    error('request:aws_sign_v4: expected a table of parameters, got ' .. type(params), 2)\n"
    "  end\n"
    "  local method, path, query, host = parts(req)\n"
    "  local headers = {}\n"
    "  if params.headers ~= nil then\n"
    "    if type(params.headers) ~= 'table' then\n"
    "      error('request:aws_sign_v4: headers must be a table, got ' .. type(params.headers), 2)\n"
    "    end\n"
    "    for k, v in pairs(params.headers) do headers[k] = v end\n"
    "  end\n"
    "  if headers.host == nil and host ~= nil then headers.host = host end\n"
    "  local sig = kumo.crypto.aws_sign_v4 {\n"
    "    access_key = params.access_key, secret_key = params.secret_key,\n"
    "    region = params.region, service = params.service,\n"
    "    method = method, uri = path, query_params = query, headers = headers,\n"
    "    payload = params.payload, timestamp = params.timestamp,\n"
    "    session_token = params.session_token,\n"
    "  }\n"
    "  req:header('Authorization', sig.authorization)\n"
    "  req:header('X-Amz-Date', sig.timestamp)\n"
    "  return req\n"
    "end\n";

/* ---- registration -------------------------------------------------------------------------- */

static void http_client_open(lua_State *L)
{
    static const luaL_Reg client_methods[] = {
        {"get", l_client_get},       {"post", l_client_post},   {"put", l_client_put},
        {"delete", l_client_delete}, {"patch", l_client_patch}, {"head", l_client_head},
        {"close", l_client_close},   {NULL, NULL}};
    static const luaL_Reg request_methods[] = {{"header", l_req_header},
                                               {"headers", l_req_headers},
                                               {"basic_auth", l_req_basic_auth},
                                               {"bearer_auth", l_req_bearer_auth},
                                               {"body", l_req_body},
                                               {"form_url_encoded", l_req_form_url_encoded},
                                               {"form_multipart_data", l_req_form_multipart_data},
                                               {"timeout", l_req_timeout},
                                               {"send", l_req_send},
                                               {NULL, NULL}};
    static const luaL_Reg response_methods[] = {
        {"status_code", l_resp_status_code},
        {"status_reason", l_resp_status_reason},
        {"status_is_informational", l_resp_status_is_informational},
        {"status_is_success", l_resp_status_is_success},
        {"status_is_redirection", l_resp_status_is_redirection},
        {"status_is_client_error", l_resp_status_is_client_error},
        {"status_is_server_error", l_resp_status_is_server_error},
        {"headers", l_resp_headers},
        {"content_length", l_resp_content_length},
        {"bytes", l_resp_bytes},
        {"text", l_resp_text},
        {NULL, NULL}};
    lualib_new_metatable(L, CLIENT_MT, client_methods, l_client_gc, NULL);
    lualib_new_metatable(L, REQUEST_MT, request_methods, l_request_gc, NULL);
    /* request:aws_sign_v4, a Lua function over the kumo table (at -1) */
    luaL_getmetatable(L, REQUEST_MT);
    lua_getfield(L, -1, "__index");
    if (luaL_loadbuffer(L, sigv4_src, sizeof(sigv4_src) - 1, "=kumo.http") != LUA_OK)
        lua_error(L); /* our own chunk */
    lua_pushvalue(L, -4);
    lua_pushcfunction(L, l_req_sigv4_parts);
    lua_call(L, 2, 1);
    lua_setfield(L, -2, "aws_sign_v4");
    lua_pop(L, 2);
    lualib_new_metatable(L, RESPONSE_MT, response_methods, l_resp_gc, NULL);
    if (luaL_newmetatable(L, HEADERS_MT)) {
        lua_pushcfunction(L, l_headers_index);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);

    static const luaL_Reg fns[] = {
        {"build_client", l_build_client}, {"build_url", l_build_url}, {NULL, NULL}};
    luaL_getsubtable(L, -1, "http");
    luaL_setfuncs(L, fns, 0);
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    lua_pushvalue(L, -2);
    lua_setfield(L, -2, "kumo.http");
    lua_pop(L, 2);
}

void http_client_lua_register(void)
{
    klua_register_opener(http_client_open);
}
