/* kumo.amqp: the Lua side of AMQP publishing (docs/reference/kumo.amqp/).
 *
 * basic_publish{...} checks its table (unknown fields are errors, as in
 * KumoMTA), fills an amqp_job and submits it to the shared pool of its
 * `connection` settings; build_client(URI) makes a private pool of one
 * connection and connects it at once, so that a bad URI, an unreachable
 * broker or refused credentials are errors of build_client. Publisher
 * confirms: basic_publish puts its channels in confirm mode (kumod's
 * default; `connection.confirm_select = false` turns it off) and returns
 * once the broker has acked the message, raising an error for a nack, a
 * returned (mandatory, unroutable) message, a closed channel or a lost
 * connection. build_client's channel is not in confirm mode, as in KumoMTA,
 * so confirm:wait() reports "NotRequested" once the message is written.
 *
 * Owns: a client userdata (a pool reference), a Confirm's result, and a
 * waiter per call in flight. Runs on the thread of the VM; the publishing
 * itself runs on the pool's threads. A call in flight keeps its coroutine
 * parked (klua_wait) and resumes it from the job's done function. */
#include "lua/lib/amqp.h"

#include <lauxlib.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/kerr.h"
#include "core/reactor.h"
#include "lua/klua.h"
#include "lua/lib/amqp_pool.h"
#include "lua/lib/fields.h"
#include "lua/lib/lualib.h"
#include "lua/lib/waiter.h"

#define CLIENT_MT "kumo.amqp.Client"
#define CONFIRM_MT "kumo.amqp.Confirm"
#define MAX_TABLE_DEPTH 16

typedef struct aclient {
    amqp_pool *pool;
    bool closed;
} aclient;

typedef struct aconfirm {
    bool taken;
    enum amqp_confirm_status status;
    int reply_code;
    char reply_text[256];
} aconfirm;

static const char *const status_names[] = {"NotRequested", "Ack", "Nack"};

/* ---- AMQP field tables from Lua tables ----------------------------------------------------- */

static void to_field(lua_State *L, int idx, amqp_job *j, amqp_field_value_t *v, int depth,
                     const char *fname);

static bool is_array(lua_State *L, int t)
{
    lua_Integer n = (lua_Integer)lua_rawlen(L, t);
    lua_Integer count = 0;
    lua_pushnil(L);
    while (lua_next(L, t)) {
        lua_pop(L, 1);
        count++;
    }
    return n > 0 && count == n;
}

static amqp_table_t to_table(lua_State *L, int t, amqp_job *j, int depth, const char *fname)
{
    t = lua_absindex(L, t);
    if (depth > MAX_TABLE_DEPTH)
        lualib_error(L, fname, "`headers` is nested more than %d deep", MAX_TABLE_DEPTH);
    int n = 0;
    lua_pushnil(L);
    while (lua_next(L, t)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TSTRING)
            lualib_error(L, fname, "`headers`: keys must be strings, not %s",
                         luaL_typename(L, -1));
        n++;
    }
    amqp_table_t out = {n, NULL};
    if (n == 0)
        return out;
    out.entries = amqp_pool_alloc(&j->mem, sizeof(amqp_table_entry_t) * (size_t)n);
    if (!out.entries)
        lualib_error(L, fname, "out of memory");
    int i = 0;
    lua_pushnil(L);
    while (lua_next(L, t)) {
        size_t kl;
        const char *k = lua_tolstring(L, -2, &kl);
        if (kl > 128)
            lualib_error(L, fname, "`headers`: a field name is longer than 128 bytes");
        out.entries[i].key = amqp_job_bytes(j, k, kl);
        to_field(L, -1, j, &out.entries[i].value, depth + 1, fname);
        lua_pop(L, 1);
        i++;
    }
    return out;
}

static void to_field(lua_State *L, int idx, amqp_job *j, amqp_field_value_t *v, int depth,
                     const char *fname)
{
    idx = lua_absindex(L, idx);
    switch (lua_type(L, idx)) {
    case LUA_TSTRING: {
        size_t len;
        const char *s = lua_tolstring(L, idx, &len);
        v->kind = AMQP_FIELD_KIND_UTF8;
        v->value.bytes = amqp_job_bytes(j, s, len);
        break;
    }
    case LUA_TBOOLEAN:
        v->kind = AMQP_FIELD_KIND_BOOLEAN;
        v->value.boolean = lua_toboolean(L, idx);
        break;
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx)) {
            v->kind = AMQP_FIELD_KIND_I64;
            v->value.i64 = lua_tointeger(L, idx);
        } else {
            v->kind = AMQP_FIELD_KIND_F64;
            v->value.f64 = lua_tonumber(L, idx);
        }
        break;
    case LUA_TTABLE:
        if (depth > MAX_TABLE_DEPTH)
            lualib_error(L, fname, "`headers` is nested more than %d deep", MAX_TABLE_DEPTH);
        if (is_array(L, idx)) {
            int n = (int)lua_rawlen(L, idx);
            v->kind = AMQP_FIELD_KIND_ARRAY;
            v->value.array.num_entries = n;
            v->value.array.entries =
                amqp_pool_alloc(&j->mem, sizeof(amqp_field_value_t) * (size_t)n);
            if (!v->value.array.entries)
                lualib_error(L, fname, "out of memory");
            for (int i = 0; i < n; i++) {
                lua_rawgeti(L, idx, i + 1);
                to_field(L, -1, j, &v->value.array.entries[i], depth + 1, fname);
                lua_pop(L, 1);
            }
        } else {
            v->kind = AMQP_FIELD_KIND_TABLE;
            v->value.table = to_table(L, idx, j, depth + 1, fname);
        }
        break;
    default:
        lualib_error(L, fname, "`headers`: a %s cannot be sent in an AMQP field table",
                     luaL_typename(L, idx));
    }
}

/* ---- message properties -------------------------------------------------------------------- */

static void prop_string(lua_State *L, int t, const char *k, amqp_job *j, amqp_bytes_t *dst,
                        amqp_flags_t flag, const char *fname)
{
    size_t len;
    const char *s = fields_opt_string(L, t, k, fname, &len);
    if (!s)
        return;
    if (len > 255)
        lualib_error(L, fname, "`%s` is longer than 255 bytes", k);
    *dst = amqp_job_bytes(j, s, len);
    j->props._flags |= flag;
}

/* The properties of the table at t (basic_publish's top level, or a
 * client's `properties`); type_key names the field for basic.type. */
static void fill_props(lua_State *L, int t, amqp_job *j, const char *type_key, const char *fname)
{
    amqp_basic_properties_t *p = &j->props;
    prop_string(L, t, "app_id", j, &p->app_id, AMQP_BASIC_APP_ID_FLAG, fname);
    prop_string(L, t, "cluster_id", j, &p->cluster_id, AMQP_BASIC_CLUSTER_ID_FLAG, fname);
    prop_string(L, t, "content_encoding", j, &p->content_encoding,
                AMQP_BASIC_CONTENT_ENCODING_FLAG, fname);
    prop_string(L, t, "content_type", j, &p->content_type, AMQP_BASIC_CONTENT_TYPE_FLAG, fname);
    prop_string(L, t, "correlation_id", j, &p->correlation_id, AMQP_BASIC_CORRELATION_ID_FLAG,
                fname);
    prop_string(L, t, "expiration", j, &p->expiration, AMQP_BASIC_EXPIRATION_FLAG, fname);
    prop_string(L, t, "message_id", j, &p->message_id, AMQP_BASIC_MESSAGE_ID_FLAG, fname);
    prop_string(L, t, type_key, j, &p->type, AMQP_BASIC_TYPE_FLAG, fname);
    prop_string(L, t, "reply_to", j, &p->reply_to, AMQP_BASIC_REPLY_TO_FLAG, fname);
    prop_string(L, t, "user_id", j, &p->user_id, AMQP_BASIC_USER_ID_FLAG, fname);
    lua_Integer v;
    if (fields_opt_integer(L, t, "delivery_mode", fname, 1, 2, &v)) {
        p->delivery_mode = (uint8_t)v;
        p->_flags |= AMQP_BASIC_DELIVERY_MODE_FLAG;
    }
    if (fields_opt_integer(L, t, "priority", fname, 0, 255, &v)) {
        p->priority = (uint8_t)v;
        p->_flags |= AMQP_BASIC_PRIORITY_FLAG;
    }
    if (fields_opt_integer(L, t, "timestamp", fname, 0, INT64_MAX, &v)) {
        p->timestamp = (uint64_t)v;
        p->_flags |= AMQP_BASIC_TIMESTAMP_FLAG;
    }
    lua_getfield(L, t, "headers");
    if (lua_type(L, -1) == LUA_TTABLE) {
        p->headers = to_table(L, -1, j, 0, fname);
        p->_flags |= AMQP_BASIC_HEADERS_FLAG;
    } else if (!lua_isnil(L, -1)) {
        lualib_error(L, fname, "`headers` must be a table, not %s", luaL_typename(L, -1));
    }
    lua_pop(L, 1);
}

/* routing_key, payload, exchange: common to both publish forms. */
static void fill_message(lua_State *L, int t, amqp_job *j, const char *fname)
{
    size_t len;
    const char *rk = fields_opt_string(L, t, "routing_key", fname, &len);
    if (!rk)
        lualib_error(L, fname, "`routing_key` is required");
    if (len > 255)
        lualib_error(L, fname, "`routing_key` is longer than 255 bytes");
    j->routing_key = amqp_job_bytes(j, rk, len);
    const char *ex = fields_opt_string(L, t, "exchange", fname, &len);
    if (ex && len > 255)
        lualib_error(L, fname, "`exchange` is longer than 255 bytes");
    j->exchange = ex ? amqp_job_bytes(j, ex, len) : amqp_empty_bytes;
    const char *body = fields_opt_string(L, t, "payload", fname, &len);
    if (!body)
        lualib_error(L, fname, "`payload` is required");
    j->body = amqp_job_bytes(j, body, len);
    if ((len && !j->body.bytes) || (!j->routing_key.bytes && j->routing_key.len))
        lualib_error(L, fname, "out of memory");
}

/* ---- waiting for a job --------------------------------------------------------------------- */

enum wait_kind { W_BASIC_PUBLISH, W_CONNECT, W_PUBLISH, W_PUBLISH_TIMEOUT, W_CLOSE };

static void push_result_table(lua_State *L, enum amqp_confirm_status st, int code,
                              const char *text)
{
    lua_createtable(L, 0, 3);
    lua_pushstring(L, status_names[st]);
    lua_setfield(L, -2, "status");
    if (code) {
        lua_pushinteger(L, code);
        lua_setfield(L, -2, "reply_code");
    }
    if (text && *text) {
        lua_pushstring(L, text);
        lua_setfield(L, -2, "reply_text");
    }
}

/* Resumes the coroutine with (true, results...) or (false, error). */
static void job_done(amqp_job *j)
{
    waiter *aw = j->ud;
    klua_call *call = waiter_finish(aw); /* NULL: shutdown gave up the wait */
    free(aw);
    if (!call)
        return;
    lua_State *co = klua_call_thread(call);
    if (j->rc != 0) {
        lua_pushboolean(co, 0);
        lua_pushstring(co, j->err);
        klua_wait_resume(call, 2);
        return;
    }
    lua_pushboolean(co, 1);
    if (j->kind == AMQP_JOB_PUBLISH) {
        aconfirm *c = lua_newuserdatauv(co, sizeof(*c), 0);
        memset(c, 0, sizeof(*c));
        c->status = j->status;
        c->reply_code = j->reply_code;
        snprintf(c->reply_text, sizeof(c->reply_text), "%s", j->reply_text);
        luaL_setmetatable(co, CONFIRM_MT);
    } else {
        lua_pushnil(co);
    }
    klua_wait_resume(call, 2);
}

static const char *const k_names[] = {"kumo.amqp.basic_publish", "kumo.amqp.build_client",
                                      "client:publish", "client:publish_with_timeout",
                                      "client:close"};

static int wait_k(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    enum wait_kind kind = (enum wait_kind)ctx;
    const char *fname = k_names[kind];
    if (!lua_toboolean(L, -2))
        return lualib_error(L, fname, "%s", lua_tostring(L, -1));
    switch (kind) {
    case W_BASIC_PUBLISH:
    case W_CLOSE:
        return 0;
    case W_CONNECT:
        /* the client userdata was left under the results */
        lua_pop(L, 2);
        return 1;
    case W_PUBLISH:
        return 1; /* the Confirm */
    case W_PUBLISH_TIMEOUT: {
        aconfirm *c = luaL_checkudata(L, -1, CONFIRM_MT);
        push_result_table(L, c->status, c->reply_code, c->reply_text);
        return 1;
    }
    }
    return 0;
}

static void check_can_wait(lua_State *L, const char *fname)
{
    if (!reactor_current() || !lua_isyieldable(L) || !klua_current_call(L))
        lualib_error(L, fname, "may only be called from an event handler or a task (it waits "
                               "for the broker)");
}

/* Submits j (which it owns from here on) and yields; the continuation
 * finishes the call. With drop_ref, the caller's reference to p is given
 * up once the job holds its own. */
static int submit_and_wait(lua_State *L, amqp_pool *p, amqp_job *j, enum wait_kind kind,
                           bool drop_ref)
{
    const char *fname = k_names[kind];
    reactor *r = reactor_current();
    waiter *aw = calloc(1, sizeof(*aw));
    int rc = aw ? amqp_pool_submit(p, j, r, job_done, aw) : KERR_NOMEM;
    if (drop_ref)
        amqp_pool_unref(p);
    if (rc != 0) {
        free(aw);
        amqp_job_free(j);
        return lualib_error(L, fname, "%s",
                            rc == KERR_SHUTDOWN ? "kumod is shutting down" : kerr_str(rc));
    }
    /* from here on nothing may raise: the job will call job_done */
    waiter_park(aw, L, NULL); /* check_can_wait said it can */
    return lua_yieldk(L, 0, (lua_KContext)kind, wait_k);
}

/* ---- kumo.amqp.basic_publish --------------------------------------------------------------- */

static const char *const publish_fields[] = {
    "routing_key",  "payload",    "exchange",   "connection", "app_id",         "cluster_id",
    "content_encoding", "content_type", "correlation_id", "delivery_mode", "expiration",
    "headers",      "message_id", "message_type", "priority",   "reply_to",       "timestamp",
    "user_id",      "mandatory",  "immediate",  NULL};

static const char *const connection_fields[] = {
    "host",         "port",           "username",        "password",       "vhost",
    "connection_name", "heartbeat",   "enable_tls",      "root_ca_cert",   "client_cert",
    "client_private_key", "confirm_select", "pool_size", "connect_timeout", "recycle_timeout",
    "wait_timeout", "publish_timeout", NULL};

static char *dup_field(lua_State *L, int t, const char *k, const char *fname)
{
    size_t len;
    const char *s = fields_opt_string(L, t, k, fname, &len);
    if (!s)
        return NULL;
    if (strlen(s) != len)
        lualib_error(L, fname, "`%s` contains a NUL byte", k);
    char *d = strdup(s);
    if (!d)
        lualib_error(L, fname, "out of memory");
    return d;
}

/* Reads `connection` into c; on error the strings read so far are freed by
 * the caller's amqp_conf_fini, which is why c lives in a userdata here. */
static void read_connection(lua_State *L, int t, amqp_conf *c, const char *fname)
{
    fields_check_known(L, t, fname, "connection", connection_fields);
    c->host = dup_field(L, t, "host", fname);
    if (!c->host)
        lualib_error(L, fname, "`connection.host` is required");
    lua_Integer v;
    if (fields_opt_integer(L, t, "port", fname, 1, 65535, &v))
        c->port = (int)v;
    c->user = dup_field(L, t, "username", fname);
    c->password = dup_field(L, t, "password", fname);
    c->vhost = dup_field(L, t, "vhost", fname);
    c->connection_name = dup_field(L, t, "connection_name", fname);
    c->heartbeat_s = -1;
    if (fields_opt_integer(L, t, "heartbeat", fname, 0, 65535, &v))
        c->heartbeat_s = (int)v;
    c->tls = fields_opt_bool(L, t, "enable_tls", fname, false);
    c->root_ca_cert = dup_field(L, t, "root_ca_cert", fname);
    c->client_cert = dup_field(L, t, "client_cert", fname);
    c->client_key = dup_field(L, t, "client_private_key", fname);
    if (!c->client_cert != !c->client_key)
        lualib_error(L, fname, "Either both client_cert and client_private_key must be "
                               "specified, or neither");
    c->confirm = fields_opt_bool(L, t, "confirm_select", fname, true);
    if (fields_opt_integer(L, t, "pool_size", fname, 1, 1024, &v))
        c->pool_size = (int)v;
    c->connect_ms = fields_opt_duration_ms(L, t, "connect_timeout", fname);
    /* recycling is a poll() of the idle socket here: it needs no limit */
    (void)fields_opt_duration_ms(L, t, "recycle_timeout", fname);
    c->wait_ms = fields_opt_duration_ms(L, t, "wait_timeout", fname);
    c->publish_ms = fields_opt_duration_ms(L, t, "publish_timeout", fname);
}

static int conf_gc(lua_State *L)
{
    amqp_conf_fini(lua_touserdata(L, 1));
    return 0;
}

static amqp_conf *new_conf(lua_State *L)
{
    amqp_conf *c = lua_newuserdatauv(L, sizeof(*c), 0);
    memset(c, 0, sizeof(*c));
    if (luaL_newmetatable(L, "kumo.amqp.conf")) {
        lua_pushcfunction(L, conf_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, -2);
    return c;
}

/* A job userdata that frees an unsubmitted job when a check raises. */
typedef struct jobbox {
    amqp_job *j;
} jobbox;

static int jobbox_gc(lua_State *L)
{
    jobbox *b = lua_touserdata(L, 1);
    amqp_job_free(b->j);
    b->j = NULL;
    return 0;
}

static amqp_job *new_job(lua_State *L, enum amqp_job_kind k, const char *fname)
{
    jobbox *b = lua_newuserdatauv(L, sizeof(*b), 0);
    b->j = NULL;
    if (luaL_newmetatable(L, "kumo.amqp.jobbox")) {
        lua_pushcfunction(L, jobbox_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, -2);
    b->j = amqp_job_new(k);
    if (!b->j)
        lualib_error(L, fname, "out of memory");
    return b->j;
}

/* Takes the job out of its box (at idx): the caller owns it now. */
static amqp_job *take_job(lua_State *L, int idx)
{
    jobbox *b = lua_touserdata(L, idx);
    amqp_job *j = b->j;
    b->j = NULL;
    return j;
}

static int l_basic_publish(lua_State *L)
{
    const char *fname = k_names[W_BASIC_PUBLISH];
    if (lua_type(L, 1) != LUA_TTABLE)
        return lualib_error(L, fname, "expected a table of parameters, not %s",
                            luaL_typename(L, 1));
    lua_settop(L, 1);
    fields_check_known(L, 1, fname, "parameters", publish_fields);
    lua_getfield(L, 1, "connection"); /* 2 */
    if (lua_type(L, 2) != LUA_TTABLE)
        return lualib_error(L, fname, "`connection` must be a table, not %s",
                            luaL_typename(L, 2));
    amqp_conf *c = new_conf(L); /* 3 */
    read_connection(L, 2, c, fname);
    amqp_job *j = new_job(L, AMQP_JOB_PUBLISH, fname); /* 4 */
    fill_message(L, 1, j, fname);
    fill_props(L, 1, j, "message_type", fname);
    j->mandatory = fields_opt_bool(L, 1, "mandatory", fname, false);
    j->immediate = fields_opt_bool(L, 1, "immediate", fname, false);
    check_can_wait(L, fname);
    amqp_pool *p = amqp_pool_shared(c);
    if (!p)
        return lualib_error(L, fname, "kumod is shutting down");
    j = take_job(L, 4);
    return submit_and_wait(L, p, j, W_BASIC_PUBLISH, true);
}

/* ---- kumo.amqp.build_client and the client ------------------------------------------------- */

static int l_build_client(lua_State *L)
{
    const char *fname = k_names[W_CONNECT];
    size_t len;
    const char *uri = lualib_checklstring(L, 1, fname, &len);
    if (strlen(uri) != len || len > 4096)
        return lualib_error(L, fname, "invalid AMQP URI");
    lua_settop(L, 1);
    check_can_wait(L, fname);
    char *u = strdup(uri);
    if (!u)
        return lualib_error(L, fname, "out of memory");
    struct amqp_connection_info info;
    amqp_default_connection_info(&info);
    if (strchr(u, '?') || amqp_parse_url(u, &info) != AMQP_STATUS_OK) {
        free(u);
        return lualib_error(L, fname, "invalid AMQP URI '%s' (expected "
                                      "amqp[s]://[user[:password]@]host[:port][/vhost])",
                            uri);
    }
    amqp_conf c = {
        .host = info.host,
        .port = info.port,
        .user = info.user,
        .password = info.password,
        .vhost = info.vhost,
        .heartbeat_s = -1,
        .tls = info.ssl,
        .connect_ms = 20000, /* KumoMTA's limit for build_client */
    };
    amqp_pool *p = amqp_pool_new(&c);
    free(u);
    if (!p)
        return lualib_error(L, fname, "kumod is shutting down");
    aclient *cl = lua_newuserdatauv(L, sizeof(*cl), 0); /* 2: stays under the results */
    cl->pool = p;
    cl->closed = false;
    luaL_setmetatable(L, CLIENT_MT);
    amqp_job *j = amqp_job_new(AMQP_JOB_CONNECT);
    if (!j)
        return lualib_error(L, fname, "out of memory");
    return submit_and_wait(L, p, j, W_CONNECT, false);
}

static aclient *check_client(lua_State *L, const char *method)
{
    aclient *c = luaL_testudata(L, 1, CLIENT_MT);
    if (!c)
        luaL_error(L, "client:%s: must be called as a method on a client from "
                      "kumo.amqp.build_client",
                   method);
    if (c->closed || !c->pool)
        luaL_error(L, "client:%s: the client is closed", method);
    return c;
}

static const char *const client_publish_fields[] = {"routing_key", "payload", "exchange",
                                                    "options", "properties", NULL};
static const char *const options_fields[] = {"mandatory", "immediate", NULL};
static const char *const properties_fields[] = {
    "app_id",   "cluster_id", "content_encoding", "content_type", "correlation_id",
    "delivery_mode", "expiration", "headers", "message_id", "kind", "priority", "reply_to",
    "timestamp", "user_id", NULL};

static int client_publish(lua_State *L, enum wait_kind kind)
{
    const char *fname = k_names[kind];
    aclient *c = check_client(L, kind == W_PUBLISH ? "publish" : "publish_with_timeout");
    if (lua_type(L, 2) != LUA_TTABLE)
        return lualib_error(L, fname, "expected a table of parameters, not %s",
                            luaL_typename(L, 2));
    int64_t ms = 0;
    if (kind == W_PUBLISH_TIMEOUT) {
        lua_Integer v = lualib_checkinteger(L, 3, fname);
        if (v <= 0 || v > 86400000)
            return lualib_error(L, fname, "the timeout must be between 1 and 86400000 ms");
        ms = v;
    }
    lua_settop(L, 2);
    fields_check_known(L, 2, fname, "parameters", client_publish_fields);
    amqp_job *j = new_job(L, AMQP_JOB_PUBLISH, fname); /* 3 */
    j->publish_ms = ms;
    fill_message(L, 2, j, fname);
    lua_getfield(L, 2, "options"); /* 4 */
    if (lua_type(L, 4) == LUA_TTABLE) {
        fields_check_known(L, 4, fname, "options", options_fields);
        j->mandatory = fields_opt_bool(L, 4, "mandatory", fname, false);
        j->immediate = fields_opt_bool(L, 4, "immediate", fname, false);
    } else if (!lua_isnil(L, 4)) {
        return lualib_error(L, fname, "`options` must be a table, not %s", luaL_typename(L, 4));
    }
    lua_getfield(L, 2, "properties"); /* 5 */
    if (lua_type(L, 5) == LUA_TTABLE) {
        fields_check_known(L, 5, fname, "properties", properties_fields);
        fill_props(L, 5, j, "kind", fname);
    } else if (!lua_isnil(L, 5)) {
        return lualib_error(L, fname, "`properties` must be a table, not %s",
                            luaL_typename(L, 5));
    }
    check_can_wait(L, fname);
    j = take_job(L, 3);
    lua_settop(L, 0);
    return submit_and_wait(L, c->pool, j, kind, false);
}

static int l_client_publish(lua_State *L)
{
    return client_publish(L, W_PUBLISH);
}

static int l_client_publish_with_timeout(lua_State *L)
{
    return client_publish(L, W_PUBLISH_TIMEOUT);
}

static int l_client_close(lua_State *L)
{
    aclient *c = luaL_testudata(L, 1, CLIENT_MT);
    if (!c)
        return luaL_error(L, "client:close: must be called as a method on a client from "
                             "kumo.amqp.build_client");
    if (c->closed)
        return lualib_error(L, k_names[W_CLOSE], "the client is already closed");
    check_can_wait(L, k_names[W_CLOSE]);
    amqp_job *j = amqp_job_new(AMQP_JOB_CLOSE);
    if (!j)
        return lualib_error(L, k_names[W_CLOSE], "out of memory");
    c->closed = true;
    lua_settop(L, 0);
    return submit_and_wait(L, c->pool, j, W_CLOSE, false);
}

static int l_client_gc(lua_State *L)
{
    aclient *c = luaL_checkudata(L, 1, CLIENT_MT);
    amqp_pool_unref(c->pool);
    c->pool = NULL;
    return 0;
}

static int l_client_tostring(lua_State *L)
{
    aclient *c = luaL_checkudata(L, 1, CLIENT_MT);
    lua_pushfstring(L, "AMQPClient(%s)", c->closed ? "closed" : "open");
    return 1;
}

/* ---- the Confirm --------------------------------------------------------------------------- */

static int l_confirm_wait(lua_State *L)
{
    aconfirm *c = luaL_testudata(L, 1, CONFIRM_MT);
    if (!c)
        return luaL_error(L, "confirm:wait: must be called as a method on the result of "
                             "client:publish");
    if (c->taken)
        return lualib_error(L, "confirm:wait", "confirmation already taken");
    c->taken = true;
    push_result_table(L, c->status, c->reply_code, c->reply_text);
    return 1;
}

/* ---- registration -------------------------------------------------------------------------- */

static void amqp_open(lua_State *L)
{
    static const luaL_Reg client_methods[] = {
        {"publish", l_client_publish},
        {"publish_with_timeout", l_client_publish_with_timeout},
        {"close", l_client_close},
        {NULL, NULL}};
    static const luaL_Reg confirm_methods[] = {{"wait", l_confirm_wait}, {NULL, NULL}};
    lualib_new_metatable(L, CLIENT_MT, client_methods, l_client_gc, l_client_tostring);
    lualib_new_metatable(L, CONFIRM_MT, confirm_methods, NULL, NULL);

    static const luaL_Reg fns[] = {
        {"build_client", l_build_client}, {"basic_publish", l_basic_publish}, {NULL, NULL}};
    luaL_getsubtable(L, -1, "amqp");
    luaL_setfuncs(L, fns, 0);
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    lua_pushvalue(L, -2);
    lua_setfield(L, -2, "kumo.amqp");
    lua_pop(L, 2);
}

void amqp_lua_register(void)
{
    klua_register_opener(amqp_open);
}

void amqp_lua_stop(void)
{
    amqp_pools_stop();
}
