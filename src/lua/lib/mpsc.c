/* kumo.mpsc. A queue is process-wide (kumo.mpsc.define returns the same
 * queue to every reactor's VM and across reloads; queues live until exit)
 * and holds values as JSON (json_t), because a Lua value cannot cross VMs.
 *
 * Threads: any reactor may send; the one consumer parks its coroutine in
 * the queue (q->consumer) and is woken by a job posted to its own reactor,
 * which takes the items under the queue's mutex and resumes it there. A
 * sender to a full bounded queue waits on its own reactor, re-checking every
 * SEND_POLL_MS (a full queue is an overload condition; a poll keeps that
 * path simple and never loses a wake-up). Shutdown abandons parked calls
 * through klua_wait. Errors are Lua errors naming the method. */
#include "lua/lib/mpsc.h"

#include <event2/event.h>
#include <jansson.h>
#include <lauxlib.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "core/reactor.h"
#include "lua/klua.h"
#include "lua/lib/args.h"

#define QUEUE_MT "kumo.MpscQueue"
#define SEND_POLL_MS 5

struct item {
    struct item *next;
    json_t *value;
};

struct consumer {
    klua_wait w;
    reactor *r;
    size_t many; /* 0: recv (one value); n: recv_many(n) */
};

struct mpsc {
    struct mpsc *next_q;
    char *name;
    size_t limit; /* 0: unbounded */
    pthread_mutex_t lock;
    struct item *head, *tail;
    size_t len;
    bool closed;
    struct consumer *consumer; /* parked receiver, or NULL */
    bool receiving;            /* a consumer is parked (exclusive access) */
};

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct mpsc *registry;

/* ---- queue core (lock held) ------------------------------------------------ */

static void push_item(struct mpsc *q, struct item *it)
{
    it->next = NULL;
    if (q->tail)
        q->tail->next = it;
    else
        q->head = it;
    q->tail = it;
    q->len++;
}

static struct item *pop_item(struct mpsc *q)
{
    struct item *it = q->head;
    if (it) {
        q->head = it->next;
        if (!q->head)
            q->tail = NULL;
        q->len--;
    }
    return it;
}

/* ---- receiving --------------------------------------------------------------- */

/* Pushes what a receive returns: for recv one value, for recv_many an array
 * of up to many values; nil when the queue is closed and empty. Lock held on
 * entry; released on return. */
static void deliver(lua_State *L, struct mpsc *q, size_t many)
{
    if (many == 0) {
        struct item *it = pop_item(q);
        pthread_mutex_unlock(&q->lock);
        if (!it) {
            lua_pushnil(L);
            return;
        }
        klua_push_json(L, it->value);
        json_decref(it->value);
        free(it);
        return;
    }
    struct item *list = NULL, **tail = &list;
    size_t n = 0;
    while (n < many && q->head) {
        *tail = pop_item(q);
        tail = &(*tail)->next;
        *tail = NULL;
        n++;
    }
    pthread_mutex_unlock(&q->lock);
    if (n == 0) {
        lua_pushnil(L);
        return;
    }
    lua_createtable(L, (int)n, 0);
    int i = 1;
    while (list) {
        struct item *it = list;
        list = it->next;
        klua_push_json(L, it->value);
        lua_rawseti(L, -2, i++);
        json_decref(it->value);
        free(it);
    }
}

static void job_wake_consumer(void *arg)
{
    struct mpsc *q = arg;
    pthread_mutex_lock(&q->lock);
    struct consumer *c = q->consumer;
    if (!c || c->r != reactor_current() || (!q->head && !q->closed)) {
        pthread_mutex_unlock(&q->lock);
        return;
    }
    q->consumer = NULL;
    q->receiving = false;
    klua_call *call = c->w.call;
    klua_wait_unpark(&c->w);
    size_t many = c->many;
    free(c);
    deliver(klua_call_thread(call), q, many);
    klua_wait_resume(call, 1);
}

/* Lock held: a value arrived or the queue closed; wake the parked consumer. */
static void notify_consumer(struct mpsc *q)
{
    if (q->consumer)
        reactor_post(q->consumer->r, job_wake_consumer, q);
}

static void consumer_cancel(klua_wait *w)
{
    struct consumer *c = (struct consumer *)w;
    /* find its queue: the consumer is registered in exactly one */
    pthread_mutex_lock(&registry_lock);
    for (struct mpsc *q = registry; q; q = q->next_q) {
        pthread_mutex_lock(&q->lock);
        if (q->consumer == c) {
            q->consumer = NULL;
            q->receiving = false;
        }
        pthread_mutex_unlock(&q->lock);
    }
    pthread_mutex_unlock(&registry_lock);
    free(c);
}

static struct mpsc *check_queue(lua_State *L, const char *method)
{
    struct mpsc **ud = luaL_testudata(L, 1, QUEUE_MT);
    if (!ud)
        luaL_error(L, "queue:%s: must be called as a method on a queue from kumo.mpsc.define",
                   method);
    return *ud;
}

static int receive(lua_State *L, const char *method, size_t many, bool wait)
{
    struct mpsc *q = check_queue(L, method);
    pthread_mutex_lock(&q->lock);
    if (q->receiving) {
        pthread_mutex_unlock(&q->lock);
        return luaL_error(L,
                          "queue:%s: another task is already receiving from queue '%s' (an MPSC "
                          "queue has a single consumer)",
                          method, q->name);
    }
    if (q->head || q->closed || !wait) {
        deliver(L, q, many);
        return 1;
    }
    klua_call *call = klua_wait_begin(L);
    reactor *r = reactor_current();
    if (!call || !r) {
        pthread_mutex_unlock(&q->lock);
        return luaL_error(L, "queue:%s: may only wait inside an event handler or task", method);
    }
    struct consumer *c = calloc(1, sizeof(*c));
    if (!c) {
        pthread_mutex_unlock(&q->lock);
        return luaL_error(L, "queue:%s: out of memory", method);
    }
    c->r = r;
    c->many = many;
    klua_wait_park(&c->w, call, consumer_cancel);
    q->consumer = c;
    q->receiving = true;
    pthread_mutex_unlock(&q->lock);
    return lua_yield(L, 0);
}

static int l_recv(lua_State *L)
{
    return receive(L, "recv", 0, true);
}

static int l_try_recv(lua_State *L)
{
    return receive(L, "try_recv", 0, false);
}

static int l_recv_many(lua_State *L)
{
    lua_Integer n = lib_checkinteger(L, 2, "queue:recv_many", "LIMIT");
    if (n < 1)
        return luaL_error(L, "queue:recv_many: LIMIT must be at least 1");
    return receive(L, "recv_many", (size_t)n, true);
}

/* ---- sending ------------------------------------------------------------------- */

static json_t *check_value(lua_State *L, int idx, const char *method)
{
    char err[256];
    json_t *j = klua_to_json(L, idx, err, sizeof(err));
    if (!j)
        luaL_error(L, "queue:%s: the value cannot be queued: %s", method, err);
    return j;
}

/* 1: queued; 0: full; -1: closed. Takes j on success. */
static int try_push(struct mpsc *q, json_t *j)
{
    pthread_mutex_lock(&q->lock);
    int rc;
    if (q->closed) {
        rc = -1;
    } else if (q->limit && q->len >= q->limit) {
        rc = 0;
    } else {
        struct item *it = malloc(sizeof(*it));
        if (!it) {
            rc = 0;
        } else {
            it->value = j;
            push_item(q, it);
            notify_consumer(q);
            rc = 1;
        }
    }
    pthread_mutex_unlock(&q->lock);
    return rc;
}

struct sender {
    klua_wait w;
    struct mpsc *q;
    json_t *value;
    struct event *ev;
    int64_t deadline_ms; /* -1: none */
};

static void sender_free(struct sender *s)
{
    event_free(s->ev);
    json_decref(s->value);
    free(s);
}

static void sender_cancel(klua_wait *w)
{
    sender_free((struct sender *)w);
}

static void sender_poll(evutil_socket_t fd, short what, void *arg)
{
    struct sender *s = arg;
    int rc = try_push(s->q, s->value);
    if (rc == 0 && (s->deadline_ms < 0 || clock_mono_ms() < s->deadline_ms)) {
        struct timeval tv = {0, SEND_POLL_MS * 1000};
        evtimer_add(s->ev, &tv);
        return;
    }
    klua_call *call = s->w.call;
    lua_State *co = klua_call_thread(call);
    klua_wait_unpark(&s->w);
    if (rc == 1)
        s->value = NULL; /* the queue owns it */
    /* the outcome goes back as a status the Lua side turns into an error */
    lua_pushinteger(co, rc);
    sender_free(s);
    klua_wait_resume(call, 1);
}

/* send / send_timeout core: returns 1 queued, or raises. */
static int send_k(lua_State *L, int status, lua_KContext ctx);

static int send_common(lua_State *L, const char *method, double timeout)
{
    struct mpsc *q = check_queue(L, method);
    json_t *j = check_value(L, 2, method);
    int rc = try_push(q, j);
    if (rc == 1)
        return 0;
    if (rc < 0) {
        json_decref(j);
        return luaL_error(L, "queue:%s: queue '%s' is closed", method, q->name);
    }
    klua_call *call = klua_wait_begin(L);
    reactor *r = reactor_current();
    if (!call || !r) {
        json_decref(j);
        return luaL_error(L,
                          "queue:%s: queue '%s' is full, and waiting for room is only "
                          "possible inside an event handler or task",
                          method, q->name);
    }
    struct sender *s = calloc(1, sizeof(*s));
    if (!s) {
        json_decref(j);
        return luaL_error(L, "queue:%s: out of memory", method);
    }
    s->q = q;
    s->value = j;
    s->deadline_ms = timeout < 0 ? -1 : clock_mono_ms() + (int64_t)(timeout * 1000);
    s->ev = evtimer_new(reactor_base(r), sender_poll, s);
    klua_wait_park(&s->w, call, sender_cancel);
    struct timeval tv = {0, SEND_POLL_MS * 1000};
    evtimer_add(s->ev, &tv);
    return lua_yieldk(L, 0, (lua_KContext)(method[4] == '_'), send_k);
}

static int send_k(lua_State *L, int status, lua_KContext ctx)
{
    const char *method = ctx ? "send_timeout" : "send";
    int rc = (int)lua_tointeger(L, -1);
    if (rc == 1)
        return 0;
    struct mpsc *q = check_queue(L, method);
    if (rc < 0)
        return luaL_error(L, "queue:%s: queue '%s' is closed", method, q->name);
    return luaL_error(L, "queue:%s: timed out waiting for room in queue '%s'", method, q->name);
}

static int l_send(lua_State *L)
{
    return send_common(L, "send", -1);
}

static int l_send_timeout(lua_State *L)
{
    if (lua_type(L, 3) != LUA_TNUMBER)
        return luaL_error(L, "queue:send_timeout: TIMEOUT_SECONDS must be a number, got %s",
                          luaL_typename(L, 3));
    double t = lua_tonumber(L, 3);
    struct mpsc *q = check_queue(L, "send_timeout");
    if (!q->limit) /* unbounded: the timeout is ignored */
        t = -1;
    else if (t < 0)
        t = 0;
    return send_common(L, "send_timeout", t);
}

static int l_try_send(lua_State *L)
{
    struct mpsc *q = check_queue(L, "try_send");
    json_t *j = check_value(L, 2, "try_send");
    int rc = try_push(q, j);
    if (rc != 1)
        json_decref(j);
    lua_pushboolean(L, rc == 1);
    return 1;
}

/* ---- other methods -------------------------------------------------------------- */

static int l_close(lua_State *L)
{
    struct mpsc *q = check_queue(L, "close");
    pthread_mutex_lock(&q->lock);
    q->closed = true;
    notify_consumer(q);
    pthread_mutex_unlock(&q->lock);
    return 0;
}

static int l_is_closed(lua_State *L)
{
    struct mpsc *q = check_queue(L, "is_closed");
    pthread_mutex_lock(&q->lock);
    lua_pushboolean(L, q->closed);
    pthread_mutex_unlock(&q->lock);
    return 1;
}

static int consumer_query(lua_State *L, const char *method, bool len)
{
    struct mpsc *q = check_queue(L, method);
    pthread_mutex_lock(&q->lock);
    if (q->receiving) {
        pthread_mutex_unlock(&q->lock);
        return luaL_error(L,
                          "queue:%s: cannot get exclusive access to the consumer side of queue "
                          "'%s': another task is receiving",
                          method, q->name);
    }
    if (len)
        lua_pushinteger(L, (lua_Integer)q->len);
    else
        lua_pushboolean(L, q->len == 0);
    pthread_mutex_unlock(&q->lock);
    return 1;
}

static int l_len(lua_State *L)
{
    return consumer_query(L, "len", true);
}

static int l_is_empty(lua_State *L)
{
    return consumer_query(L, "is_empty", false);
}

static int l_tostring(lua_State *L)
{
    struct mpsc *q = check_queue(L, "__tostring");
    lua_pushfstring(L, "mpsc queue '%s'", q->name);
    return 1;
}

/* ---- define ------------------------------------------------------------------------ */

static int l_define(lua_State *L)
{
    if (lua_type(L, 1) != LUA_TSTRING)
        return luaL_error(L, "kumo.mpsc.define: argument #1 (NAME) must be a string, got %s",
                          luaL_typename(L, 1));
    const char *name = lua_tostring(L, 1);
    size_t limit = 0;
    if (!lua_isnoneornil(L, 2)) {
        int isint = 0;
        lua_Integer n = lua_tointegerx(L, 2, &isint);
        if (!isint || n < 1)
            return luaL_error(L, "kumo.mpsc.define: argument #2 (OPTIONAL_LIMIT) must be a "
                                 "non-zero positive integer or nil");
        limit = (size_t)n;
    }
    pthread_mutex_lock(&registry_lock);
    struct mpsc *q = registry;
    while (q && strcmp(q->name, name) != 0)
        q = q->next_q;
    if (!q) {
        q = calloc(1, sizeof(*q));
        char *dup = strdup(name);
        if (!q || !dup) {
            free(q);
            free(dup);
            pthread_mutex_unlock(&registry_lock);
            return luaL_error(L, "kumo.mpsc.define: out of memory");
        }
        q->name = dup;
        q->limit = limit;
        pthread_mutex_init(&q->lock, NULL);
        q->next_q = registry;
        registry = q;
    }
    pthread_mutex_unlock(&registry_lock);
    struct mpsc **ud = lua_newuserdatauv(L, sizeof(*ud), 0);
    *ud = q;
    luaL_setmetatable(L, QUEUE_MT);
    return 1;
}

static void mpsc_open(lua_State *L)
{
    if (luaL_newmetatable(L, QUEUE_MT)) {
        static const luaL_Reg methods[] = {{"close", l_close},
                                           {"is_closed", l_is_closed},
                                           {"is_empty", l_is_empty},
                                           {"len", l_len},
                                           {"send", l_send},
                                           {"send_timeout", l_send_timeout},
                                           {"try_send", l_try_send},
                                           {"recv", l_recv},
                                           {"try_recv", l_try_recv},
                                           {"recv_many", l_recv_many},
                                           {NULL, NULL}};
        luaL_newlib(L, methods);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, l_tostring);
        lua_setfield(L, -2, "__tostring");
    }
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushcfunction(L, l_define);
    lua_setfield(L, -2, "define");
    lua_setfield(L, -2, "mpsc");
}

void mpsc_lua_register(void)
{
    klua_register_opener(mpsc_open);
}
