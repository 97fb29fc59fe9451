/* require 'sqlite' (see sqlite.h).
 *
 * Owns: the connections (a refcounted sqldb: the Lua userdata holds one
 * reference, each query under way another, so db:close() or a collected
 * handle never frees a connection a worker is using) and the process-wide
 * worker pool, started on the first query.
 *
 * Threads: sqlite.open runs where it is called (opening reads the file
 * header at most; SQLITE_OPEN_FULLMUTEX makes the handle safe to pass to a
 * worker). db:execute converts its parameters on the reactor, runs
 * prepare/bind/step on a worker under the connection's mutex (so that the
 * change count read after a statement is that statement's), and converts
 * the rows back to Lua on the reactor. Called outside an event coroutine
 * (a policy's main chunk, where nothing is being served yet) it runs inline.
 *
 * Also kumo.configure_accounting_db_path, the Lua side of src/log/accounting.
 *
 * Failures: a bad argument, bad SQL, a bind error or a closed connection is
 * a Lua error naming the function and, for SQL errors, the statement. */
#include "lua/lib/sqlite.h"

#include <lauxlib.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/reactor.h"
#include "core/workpool.h"
#include "log/accounting.h"
#include "lua/klua.h"
#include "lua/lib/lualib.h"

#define DB_MT "kumo.sqlite.Connection"
#define SQLITE_THREADS 2

typedef struct sqldb {
    atomic_int refs;
    pthread_mutex_t mu;
    sqlite3 *db; /* NULL once closed */
} sqldb;

static void sqldb_unref(sqldb *d)
{
    if (d && atomic_fetch_sub(&d->refs, 1) == 1) {
        if (d->db)
            sqlite3_close_v2(d->db);
        pthread_mutex_destroy(&d->mu);
        free(d);
    }
}

/* ---- values --------------------------------------------------------------------------- */

typedef struct sval {
    int type; /* SQLITE_NULL, SQLITE_INTEGER, SQLITE_FLOAT, SQLITE_TEXT */
    sqlite3_int64 i;
    double d;
    char *s;
    size_t len;
    char *name; /* a named parameter (":name"), or NULL */
} sval;

static void sval_fini(sval *v)
{
    free(v->s);
    free(v->name);
}

/* A query: parameters in, rows or a change count out. */
typedef struct sjob {
    klua_wait w;
    bool cancelled;
    sqldb *d;
    char *sql;
    sval *params;
    size_t n_params;
    /* result */
    bool ok, rows;
    char err[512];
    sqlite3_int64 changes;
    int ncols;
    char **colnames;
    sval *cells; /* n_rows * ncols */
    size_t n_rows, cap_cells;
} sjob;

static void sjob_free(sjob *j)
{
    for (size_t i = 0; i < j->n_params; i++)
        sval_fini(&j->params[i]);
    free(j->params);
    for (size_t i = 0; i < j->n_rows * (size_t)j->ncols; i++)
        sval_fini(&j->cells[i]);
    free(j->cells);
    for (int i = 0; i < j->ncols && j->colnames; i++)
        free(j->colnames[i]);
    free(j->colnames);
    free(j->sql);
    sqldb_unref(j->d);
    free(j);
}

static int bind_one(sqlite3_stmt *st, int idx, const sval *v)
{
    switch (v->type) {
    case SQLITE_INTEGER:
        return sqlite3_bind_int64(st, idx, v->i);
    case SQLITE_FLOAT:
        return sqlite3_bind_double(st, idx, v->d);
    case SQLITE_TEXT:
        return sqlite3_bind_text(st, idx, v->s, (int)v->len, SQLITE_STATIC);
    default:
        return sqlite3_bind_null(st, idx);
    }
}

static bool cell_add(sjob *j, sqlite3_stmt *st, int col)
{
    if (j->n_rows * (size_t)j->ncols + (size_t)col >= j->cap_cells) {
        size_t cap = j->cap_cells ? j->cap_cells * 2 : 64;
        sval *nc = realloc(j->cells, cap * sizeof(*nc));
        if (!nc)
            return false;
        j->cells = nc;
        j->cap_cells = cap;
    }
    sval *v = &j->cells[j->n_rows * (size_t)j->ncols + (size_t)col];
    memset(v, 0, sizeof(*v));
    v->type = sqlite3_column_type(st, col);
    switch (v->type) {
    case SQLITE_INTEGER:
        v->i = sqlite3_column_int64(st, col);
        break;
    case SQLITE_FLOAT:
        v->d = sqlite3_column_double(st, col);
        break;
    case SQLITE_TEXT:
    case SQLITE_BLOB: {
        const void *p = v->type == SQLITE_TEXT ? (const void *)sqlite3_column_text(st, col)
                                               : sqlite3_column_blob(st, col);
        v->len = (size_t)sqlite3_column_bytes(st, col);
        v->s = malloc(v->len + 1);
        if (!v->s)
            return false;
        if (v->len)
            memcpy(v->s, p, v->len);
        v->s[v->len] = 0;
        v->type = SQLITE_TEXT;
        break;
    }
    default:
        v->type = SQLITE_NULL;
    }
    return true;
}

/* On a worker (or inline): runs the statement and keeps its results. */
static void sjob_work(void *arg)
{
    sjob *j = arg;
    pthread_mutex_lock(&j->d->mu);
    sqlite3 *db = j->d->db;
    sqlite3_stmt *st = NULL;
    if (!db) {
        snprintf(j->err, sizeof(j->err), "connection was closed");
        goto out;
    }
    const char *tail = NULL;
    if (sqlite3_prepare_v2(db, j->sql, -1, &st, &tail) != SQLITE_OK) {
        snprintf(j->err, sizeof(j->err), "%s in query `%s'", sqlite3_errmsg(db), j->sql);
        goto out;
    }
    if (!st) { /* only whitespace or comments */
        j->ok = true;
        j->changes = 0;
        goto out;
    }
    for (size_t i = 0; i < j->n_params; i++) {
        const sval *v = &j->params[i];
        int idx = v->name ? sqlite3_bind_parameter_index(st, v->name) : (int)i + 1;
        int rc = idx > 0 && idx <= sqlite3_bind_parameter_count(st) ? bind_one(st, idx, v)
                                                                    : SQLITE_RANGE;
        if (rc != SQLITE_OK) {
            if (v->name)
                snprintf(j->err, sizeof(j->err), "binding parameter %s: %s in query `%s'",
                         v->name, rc == SQLITE_RANGE ? "no such parameter" : sqlite3_errstr(rc),
                         j->sql);
            else
                snprintf(j->err, sizeof(j->err), "binding parameter %zu: %s in query `%s'", i + 1,
                         rc == SQLITE_RANGE ? "no such parameter" : sqlite3_errstr(rc), j->sql);
            goto out;
        }
    }
    int rc = sqlite3_step(st);
    if (rc == SQLITE_DONE && sqlite3_column_count(st) == 0) {
        /* a statement that cannot return rows: the rows it changed */
        j->changes = sqlite3_changes64(db);
        j->ok = true;
        goto out;
    }
    j->rows = true;
    j->ncols = sqlite3_column_count(st);
    j->colnames = calloc((size_t)j->ncols, sizeof(char *));
    if (!j->colnames) {
        snprintf(j->err, sizeof(j->err), "out of memory");
        goto out;
    }
    for (int c = 0; c < j->ncols; c++) {
        const char *n = sqlite3_column_name(st, c);
        j->colnames[c] = strdup(n ? n : "");
    }
    while (rc == SQLITE_ROW) {
        for (int c = 0; c < j->ncols; c++)
            if (!cell_add(j, st, c)) {
                /* the row's cells so far are counted for freeing */
                for (int k = 0; k < c; k++)
                    sval_fini(&j->cells[j->n_rows * (size_t)j->ncols + (size_t)k]);
                snprintf(j->err, sizeof(j->err), "out of memory");
                goto out;
            }
        j->n_rows++;
        rc = sqlite3_step(st);
    }
    if (rc != SQLITE_DONE) {
        snprintf(j->err, sizeof(j->err), "%s in query `%s'", sqlite3_errmsg(db), j->sql);
        goto out;
    }
    j->ok = true;
out:
    sqlite3_finalize(st);
    pthread_mutex_unlock(&j->d->mu);
}

static void push_sval(lua_State *L, const sval *v)
{
    switch (v->type) {
    case SQLITE_INTEGER:
        lua_pushinteger(L, (lua_Integer)v->i);
        break;
    case SQLITE_FLOAT:
        lua_pushnumber(L, v->d);
        break;
    case SQLITE_TEXT:
        lua_pushlstring(L, v->s, v->len);
        break;
    default:
        lua_pushnil(L);
    }
}

/* Pushes (true, result) or (false, error). */
static void push_result(lua_State *L, const sjob *j)
{
    lua_checkstack(L, 8);
    if (!j->ok) {
        lua_pushboolean(L, 0);
        lua_pushstring(L, j->err);
        return;
    }
    lua_pushboolean(L, 1);
    if (!j->rows) {
        lua_pushinteger(L, (lua_Integer)j->changes);
        return;
    }
    lua_createtable(L, (int)j->n_rows, 0);
    for (size_t r = 0; r < j->n_rows; r++) {
        const sval *row = &j->cells[r * (size_t)j->ncols];
        if (j->ncols == 1) {
            push_sval(L, row);
        } else {
            lua_createtable(L, 0, j->ncols);
            for (int c = 0; c < j->ncols; c++) {
                push_sval(L, &row[c]);
                lua_setfield(L, -2, j->colnames[c]);
            }
        }
        lua_rawseti(L, -2, (lua_Integer)r + 1);
    }
}

/* ---- the pool ---------------------------------------------------------------------------- */

static pthread_mutex_t pool_mu = PTHREAD_MUTEX_INITIALIZER;
static workpool *pool;
static bool pool_stopped;

static workpool *get_pool(void)
{
    pthread_mutex_lock(&pool_mu);
    if (!pool && !pool_stopped)
        pool = workpool_new("sqlite", SQLITE_THREADS);
    workpool *p = pool;
    pthread_mutex_unlock(&pool_mu);
    return p;
}

void sqlite_lua_stop_pool(void)
{
    pthread_mutex_lock(&pool_mu);
    workpool *p = pool;
    pool = NULL;
    pool_stopped = true;
    pthread_mutex_unlock(&pool_mu);
    workpool_free(p);
}

/* ---- Lua ----------------------------------------------------------------------------------- */

static sqldb **check_db(lua_State *L, const char *fname)
{
    sqldb **ud = luaL_testudata(L, 1, DB_MT);
    if (!ud)
        lualib_error(L, fname, "must be called as a method of a connection made by sqlite.open, "
                               "not on %s",
                     luaL_typename(L, 1));
    return ud;
}

static int l_open(lua_State *L)
{
    static const char fname[] = "sqlite.open";
    if (lua_type(L, 1) != LUA_TSTRING)
        return lualib_error(L, fname, "argument #1 (path) must be a string, not %s",
                            luaL_typename(L, 1));
    lua_Integer busy = lualib_optinteger(L, 2, fname, 500);
    if (busy < 0 || busy > INT32_MAX)
        return lualib_error(L, fname, "argument #2 (busy timeout) must be a number of "
                                      "milliseconds >= 0");
    const char *path = lua_tostring(L, 1);
    sqldb **ud = lua_newuserdatauv(L, sizeof(*ud), 0);
    *ud = NULL;
    luaL_setmetatable(L, DB_MT);
    sqldb *d = calloc(1, sizeof(*d));
    if (!d)
        return lualib_error(L, fname, "out of memory");
    atomic_init(&d->refs, 1);
    pthread_mutex_init(&d->mu, NULL);
    *ud = d;
    int rc = sqlite3_open_v2(path, &d->db,
                             SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX |
                                 SQLITE_OPEN_URI,
                             NULL);
    if (rc != SQLITE_OK) {
        char msg[512];
        snprintf(msg, sizeof(msg), "%s", d->db ? sqlite3_errmsg(d->db) : sqlite3_errstr(rc));
        return lualib_error(L, fname, "cannot open %s: %s", path, msg); /* __gc frees d */
    }
    sqlite3_busy_timeout(d->db, (int)busy);
    return 1;
}

static int execute_k(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    (void)ctx;
    int top = lua_gettop(L);
    if (!lua_toboolean(L, top - 1))
        return lualib_error(L, "db:execute", "%s", lua_tostring(L, top));
    return 1;
}

static void sjob_cancel(klua_wait *w)
{
    ((sjob *)w)->cancelled = true; /* freed when the worker's answer comes back */
}

static void sjob_done(void *arg)
{
    sjob *j = arg;
    if (j->cancelled) {
        sjob_free(j);
        return;
    }
    klua_call *c = j->w.call;
    klua_wait_unpark(&j->w);
    push_result(klua_call_thread(c), j);
    sjob_free(j);
    klua_wait_resume(c, 2);
}

/* The value at idx as a parameter; false (with err) for other types. */
static bool to_sval(lua_State *L, int idx, sval *v, char *err, size_t errlen)
{
    memset(v, 0, sizeof(*v));
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        v->type = SQLITE_NULL;
        return true;
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx)) {
            v->type = SQLITE_INTEGER;
            v->i = lua_tointeger(L, idx);
        } else {
            v->type = SQLITE_FLOAT;
            v->d = lua_tonumber(L, idx);
        }
        return true;
    case LUA_TSTRING: {
        const char *s = lua_tolstring(L, idx, &v->len);
        v->s = malloc(v->len + 1);
        if (!v->s) {
            snprintf(err, errlen, "out of memory");
            return false;
        }
        memcpy(v->s, s, v->len + 1);
        v->type = SQLITE_TEXT;
        return true;
    }
    default:
        snprintf(err, errlen, "only numbers, strings and nil can be passed as parameter values, "
                              "not %s",
                 luaL_typename(L, idx));
        return false;
    }
}

static void copy_err(char *err, size_t errlen, const char *s)
{
    size_t n = strlen(s);
    if (n >= errlen)
        n = errlen - 1;
    memmove(err, s, n);
    err[n] = '\0';
}

/* Collects the parameters after the SQL (stack from index 3): none, one
 * scalar, one table (a list: positional; string keys: named ":key"), or
 * several scalars (positional). */
static bool collect_params(lua_State *L, sjob *j, char *err, size_t errlen)
{
    int top = lua_gettop(L);
    if (top < 3)
        return true;
    if (top == 3 && lua_istable(L, 3)) {
        size_t n = 0;
        lua_pushnil(L);
        while (lua_next(L, 3)) {
            lua_pop(L, 1);
            n++;
        }
        j->params = calloc(n ? n : 1, sizeof(sval));
        if (!j->params) {
            snprintf(err, errlen, "out of memory");
            return false;
        }
        size_t seq = lua_rawlen(L, 3);
        if (seq == n) { /* a list */
            for (size_t i = 0; i < n; i++) {
                lua_rawgeti(L, 3, (lua_Integer)i + 1);
                bool ok = to_sval(L, -1, &j->params[i], err, errlen);
                lua_pop(L, 1);
                j->n_params = i + 1;
                if (!ok) {
                    char e2[600];
                    snprintf(e2, sizeof(e2), "parameter %zu: %s", i + 1, err);
                    copy_err(err, errlen, e2);
                    return false;
                }
            }
            return true;
        }
        lua_pushnil(L);
        while (lua_next(L, 3)) {
            if (lua_type(L, -2) != LUA_TSTRING) {
                lua_pop(L, 2);
                snprintf(err, errlen, "a parameter table must be a list or have only string keys");
                return false;
            }
            sval *v = &j->params[j->n_params];
            bool ok = to_sval(L, -1, v, err, errlen);
            j->n_params++;
            if (ok) {
                const char *k = lua_tostring(L, -2);
                v->name = malloc(strlen(k) + 2);
                if (v->name) {
                    v->name[0] = ':';
                    strcpy(v->name + 1, k);
                } else {
                    snprintf(err, errlen, "out of memory");
                    ok = false;
                }
            } else {
                char e2[600];
                snprintf(e2, sizeof(e2), "parameter :%s: %s", lua_tostring(L, -2), err);
                copy_err(err, errlen, e2);
            }
            lua_pop(L, 1);
            if (!ok) {
                lua_pop(L, 1);
                return false;
            }
        }
        return true;
    }
    size_t n = (size_t)(top - 2);
    j->params = calloc(n, sizeof(sval));
    if (!j->params) {
        snprintf(err, errlen, "out of memory");
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        j->n_params = i + 1;
        if (!to_sval(L, 3 + (int)i, &j->params[i], err, errlen)) {
            char e2[600];
            snprintf(e2, sizeof(e2), "parameter %zu: %s", i + 1, err);
            copy_err(err, errlen, e2);
            return false;
        }
    }
    return true;
}

static int l_execute(lua_State *L)
{
    static const char fname[] = "db:execute";
    sqldb **ud = check_db(L, fname);
    if (lua_type(L, 2) != LUA_TSTRING)
        return lualib_error(L, fname, "argument #1 (query) must be a string, not %s",
                            luaL_typename(L, 2));
    if (!*ud || !(*ud)->db)
        return lualib_error(L, fname, "connection was closed");
    sjob *j = calloc(1, sizeof(*j));
    char err[400];
    if (!j)
        return lualib_error(L, fname, "out of memory");
    j->d = *ud;
    atomic_fetch_add(&j->d->refs, 1);
    j->sql = strdup(lua_tostring(L, 2));
    if (!j->sql || !collect_params(L, j, err, sizeof(err))) {
        if (!j->sql)
            snprintf(err, sizeof(err), "out of memory");
        sjob_free(j);
        return lualib_error(L, fname, "%s", err);
    }
    reactor *r = reactor_current();
    workpool *p = r ? get_pool() : NULL;
    klua_call *c = p ? klua_wait_begin(L) : NULL;
    if (c) {
        if (workpool_submit(p, r, sjob_work, sjob_done, j) == 0) {
            klua_wait_park(&j->w, c, sjob_cancel);
            return lua_yieldk(L, 0, 0, execute_k);
        }
        /* the pool is stopping: klua_wait_begin pushed nothing; run here */
    }
    /* not in an event coroutine (a policy's main chunk): inline */
    sjob_work(j);
    push_result(L, j);
    sjob_free(j);
    return execute_k(L, 0, 0);
}

static int l_close(lua_State *L)
{
    sqldb **ud = check_db(L, "db:close");
    sqldb *d = *ud;
    if (d) {
        pthread_mutex_lock(&d->mu); /* waits for a query under way */
        if (d->db)
            sqlite3_close_v2(d->db);
        d->db = NULL;
        pthread_mutex_unlock(&d->mu);
    }
    return 0;
}

static int l_gc(lua_State *L)
{
    sqldb **ud = luaL_testudata(L, 1, DB_MT);
    if (ud && *ud) {
        sqldb_unref(*ud);
        *ud = NULL;
    }
    return 0;
}

/* kumo.configure_accounting_db_path (src/log/accounting): lives here as
 * the other SQLite-facing Lua function. */
static int l_configure_accounting_db_path(lua_State *L)
{
    static const char fname[] = "kumo.configure_accounting_db_path";
    size_t len;
    if (lua_type(L, 1) != LUA_TSTRING)
        return lualib_error(L, fname, "argument #1 (path) must be a string, not %s",
                            luaL_typename(L, 1));
    const char *path = lua_tolstring(L, 1, &len);
    if (len == 0 || strlen(path) != len)
        return lualib_error(L, fname, "argument #1 (path) must be a non-empty path without NUL");
    acct_set_path(path);
    return 0;
}

static void sqlite_open(lua_State *L)
{
    lua_pushcfunction(L, l_configure_accounting_db_path);
    lua_setfield(L, -2, "configure_accounting_db_path");
    if (luaL_newmetatable(L, DB_MT)) {
        static const luaL_Reg methods[] = {{"execute", l_execute}, {"close", l_close}, {NULL, NULL}};
        luaL_newlib(L, methods);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, l_gc);
        lua_setfield(L, -2, "__gc");
        lua_pushliteral(L, "sqlite.Connection");
        lua_setfield(L, -2, "__name");
    }
    lua_pop(L, 1);
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    lua_newtable(L);
    lua_pushcfunction(L, l_open);
    lua_setfield(L, -2, "open");
    lua_setfield(L, -2, "sqlite");
    lua_pop(L, 1);
}

void sqlite_lua_register(void)
{
    klua_register_opener(sqlite_open);
}
