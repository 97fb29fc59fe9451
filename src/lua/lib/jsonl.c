/* kumo.jsonl: new_writer (a LogWriter over the log layer's segment writer,
 * log/logger.c: zstd segments rolled on size and age, closed read-only),
 * new_tailer and new_multi_tailer (over jsonl_read.c) and their LogBatch
 * objects, with checkpoints stored as ".<checkpoint_name>" JSON files
 * ({"file": PATH, "line": N}) written atomically (temporary file, rename).
 *
 * Threads: everything here runs on the VM's reactor thread, except the
 * writer's compression, which runs on the logger's own thread. A tailer
 * never blocks the reactor for long: tailer:batches() calls the C step
 * below, which reads at most STEP_BUDGET bytes of segment data, and then
 * sleeps (kumo.time.sleep, so the reactor runs other work) for 0 seconds
 * when more is ready, or until the next batch deadline or the poll
 * interval when it has caught up with the writer.
 *
 * Failure: bad configuration and a filter's error are Lua errors naming the
 * function; an unreadable or corrupt segment and a line that is not JSON
 * are diagnostics (the reader moves on), never a stall. */
#include <errno.h>
#include <jansson.h>
#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/diag.h"
#include "core/duration.h"
#include "core/kerr.h"
#include "log/logger.h"
#include "lua/klua.h"
#include "lua/lib/jsonl_read.h"
#include "lua/lib/lualib.h"
#include "lua/luajson.h"

#define JL_MOD "jsonl"
#define WRITER_MT "kumod.jsonl.LogWriter"
#define TAILER_MT "kumod.jsonl.LogTailer"
#define BATCH_MT "kumod.jsonl.LogBatch"
#define STEP_BUDGET (1024u * 1024)
#define DEFAULT_POLL_NS (250 * 1000000LL)

static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* ---- config helpers ------------------------------------------------------ */

static const char *opt_string(lua_State *L, int t, const char *key, const char *fname,
                              bool required)
{
    lua_getfield(L, t, key);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        if (required)
            lualib_error(L, fname, "missing required field '%s'", key);
        return NULL;
    }
    if (lua_type(L, -1) != LUA_TSTRING)
        lualib_error(L, fname, "field '%s' must be a string, got %s", key, luaL_typename(L, -1));
    const char *s = lua_tostring(L, -1);
    lua_pop(L, 1); /* still referenced by the config table */
    return s;
}

static lua_Integer opt_int(lua_State *L, int t, const char *key, const char *fname,
                           lua_Integer def, lua_Integer min)
{
    lua_getfield(L, t, key);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return def;
    }
    int ok = 0;
    lua_Integer v = lua_tointegerx(L, -1, &ok);
    if (!ok || v < min)
        lualib_error(L, fname, "field '%s' must be an integer >= %lld", key, (long long)min);
    lua_pop(L, 1);
    return v;
}

static int64_t opt_duration(lua_State *L, int t, const char *key, const char *fname, int64_t def)
{
    lua_getfield(L, t, key);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return def;
    }
    int64_t ns;
    if (lua_type(L, -1) == LUA_TNUMBER) {
        ns = (int64_t)(lua_tonumber(L, -1) * 1e9);
    } else if (lua_type(L, -1) != LUA_TSTRING || duration_parse(lua_tostring(L, -1), &ns) != 0) {
        return lualib_error(L, fname, "field '%s' must be a duration such as \"1s\" or \"500ms\"",
                            key);
    }
    lua_pop(L, 1);
    if (ns < 0)
        lualib_error(L, fname, "field '%s' must not be negative", key);
    return ns;
}

/* ---- LogWriter ------------------------------------------------------------ */

typedef struct writer {
    logger *lg; /* NULL until the first line, and after close */
    int stream;
    char *dir, *suffix, *name;
    logger_config cfg;
} writer;

static writer *check_writer(lua_State *L, const char *fname)
{
    writer **w = luaL_testudata(L, 1, WRITER_MT);
    if (!w || !*w)
        lualib_error(L, fname, "expected a LogWriter as self");
    return *w;
}

static void writer_stop(writer *w)
{
    logger_free(w->lg); /* writes what is queued, closes the segment read-only */
    w->lg = NULL;
}

static int writer_open(lua_State *L, writer *w, const char *fname)
{
    if (w->lg)
        return 0;
    int rc = logger__mkdir_p(w->dir);
    if (rc)
        return lualib_error(L, fname, "cannot create %s: %s", w->dir, strerror(errno));
    logger *lg;
    rc = logger_new(&w->cfg, &lg);
    if (rc)
        return lualib_error(L, fname, "cannot create the writer: %s", kerr_str(rc));
    int st = logger_add_stream(lg, w->dir, w->suffix);
    if (st < 0 || (rc = logger_start(lg)) != 0) {
        logger_free(lg);
        return lualib_error(L, fname, "cannot start the writer in %s: %s", w->dir,
                            kerr_str(st < 0 ? st : rc));
    }
    w->lg = lg;
    w->stream = st;
    return 0;
}

static void write_text(lua_State *L, writer *w, const char *fname, const char *s, size_t n)
{
    writer_open(L, w, fname);
    char *copy = malloc(n + 1);
    if (!copy)
        lualib_error(L, fname, "out of memory");
    memcpy(copy, s, n);
    copy[n] = 0;
    int rc = logger_submit_take(w->lg, w->stream, NULL, copy, n);
    if (rc)
        lualib_error(L, fname, "write failed: %s", kerr_str(rc));
}

static int l_write_line(lua_State *L)
{
    writer *w = check_writer(L, "writer:write_line");
    size_t n;
    if (lua_type(L, 2) != LUA_TSTRING)
        return lualib_error(L, "writer:write_line", "argument #1 (line) must be a string, got %s",
                            luaL_typename(L, 2));
    const char *s = lua_tolstring(L, 2, &n);
    write_text(L, w, "writer:write_line", s, n);
    return 0;
}

static int l_write_record(lua_State *L)
{
    writer *w = check_writer(L, "writer:write_record");
    char err[256];
    json_t *j = klua_to_json(L, 2, err, sizeof(err));
    if (!j)
        return lualib_error(L, "writer:write_record", "argument #1: %s", err);
    char *s = json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY);
    json_decref(j);
    if (!s)
        return lualib_error(L, "writer:write_record", "cannot encode the value as JSON");
    lua_pushstring(L, s); /* so that an error below does not leak s */
    free(s);
    size_t n;
    const char *t = lua_tolstring(L, -1, &n);
    write_text(L, w, "writer:write_record", t, n);
    return 0;
}

static int l_writer_close(lua_State *L)
{
    writer **wp = luaL_checkudata(L, 1, WRITER_MT);
    if (*wp)
        writer_stop(*wp);
    return 0;
}

static int l_writer_gc(lua_State *L)
{
    writer **wp = luaL_checkudata(L, 1, WRITER_MT);
    writer *w = *wp;
    if (w) {
        writer_stop(w);
        free(w->dir);
        free(w->suffix);
        free(w->name);
        free(w);
        *wp = NULL;
    }
    return 0;
}

static int l_new_writer(lua_State *L)
{
    const char *fn = "kumo.jsonl.new_writer";
    if (lua_type(L, 1) != LUA_TTABLE)
        return lualib_error(L, fn, "argument #1 must be a table, got %s", luaL_typename(L, 1));
    const char *dir = opt_string(L, 1, "log_dir", fn, true);
    lua_Integer max_size = opt_int(L, 1, "max_file_size", fn, 134217728, 1);
    lua_Integer level = opt_int(L, 1, "compression_level", fn, 3, 0);
    if (level > 21)
        return lualib_error(L, fn, "field 'compression_level' must be 0 (zstd's default) or 1-21");
    int64_t seg = opt_duration(L, 1, "max_segment_duration", fn, 0);
    const char *suffix = opt_string(L, 1, "suffix", fn, false);
    const char *tz = opt_string(L, 1, "tz", fn, false);
    if (tz && strcmp(tz, "UTC") != 0 && strcmp(tz, "Etc/UTC") != 0 && strcmp(tz, "GMT") != 0)
        return lualib_error(L, fn,
                            "field 'tz': only UTC segment names are supported by kumod, got '%s'",
                            tz);
    writer **wp = lua_newuserdatauv(L, sizeof(*wp), 0);
    *wp = NULL;
    luaL_setmetatable(L, WRITER_MT);
    writer *w = calloc(1, sizeof(*w));
    if (!w)
        return lualib_error(L, fn, "out of memory");
    *wp = w;
    w->dir = strdup(dir);
    w->suffix = suffix ? strdup(suffix) : NULL;
    size_t nl = strlen(dir) + 8;
    w->name = malloc(nl);
    if (!w->dir || (suffix && !w->suffix) || !w->name)
        return lualib_error(L, fn, "out of memory");
    snprintf(w->name, nl, "jsonl-%s", dir);
    w->cfg.name = w->name;
    w->cfg.max_file_size = (uint64_t)max_size;
    w->cfg.max_segment_ns = seg;
    w->cfg.compression_level = (int)level;
    w->cfg.back_pressure = 4096;
    return 1;
}

/* ---- LogBatch ------------------------------------------------------------- */

typedef struct logbatch {
    json_t *records; /* array; NULL once committed */
    char *name;
    char *cp_path; /* NULL: no checkpoint */
    char *file;
    uint64_t line;
    bool committed;
} logbatch;

static logbatch *check_batch(lua_State *L, const char *fname)
{
    logbatch **b = luaL_testudata(L, 1, BATCH_MT);
    if (!b || !*b)
        lualib_error(L, fname, "expected a LogBatch as self");
    return *b;
}

static int l_batch_records(lua_State *L)
{
    logbatch *b = check_batch(L, "batch:records");
    size_t n = b->records ? json_array_size(b->records) : 0;
    lua_createtable(L, (int)n, 0);
    for (size_t i = 0; i < n; i++) {
        klua_push_json(L, json_array_get(b->records, i));
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    return 1;
}

static int batch_iter_next(lua_State *L)
{
    logbatch **bp = lua_touserdata(L, lua_upvalueindex(1));
    lua_Integer i = lua_tointeger(L, lua_upvalueindex(2));
    logbatch *b = bp ? *bp : NULL;
    if (!b || !b->records || (size_t)i >= json_array_size(b->records)) {
        lua_pushnil(L);
        return 1;
    }
    lua_pushinteger(L, i + 1);
    lua_replace(L, lua_upvalueindex(2));
    klua_push_json(L, json_array_get(b->records, (size_t)i));
    return 1;
}

static int l_batch_iter_records(lua_State *L)
{
    check_batch(L, "batch:iter_records");
    lua_pushvalue(L, 1);
    lua_pushinteger(L, 0);
    lua_pushcclosure(L, batch_iter_next, 2);
    return 1;
}

static int l_batch_consumer_name(lua_State *L)
{
    logbatch *b = check_batch(L, "batch:consumer_name");
    lua_pushstring(L, b->committed ? "" : b->name);
    return 1;
}

/* Writes {"file": ..., "line": N} to path atomically: a hidden temporary
 * file in the same directory, then rename. */
static int save_checkpoint(const char *path, const char *file, uint64_t line, char *err,
                           size_t errlen)
{
    json_t *j = json_pack("{s:s,s:I}", "file", file, "line", (json_int_t)line);
    char *txt = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    size_t pl = strlen(path);
    char *tmp = malloc(pl + 8);
    if (!txt || !tmp) {
        free(txt);
        free(tmp);
        snprintf(err, errlen, "out of memory");
        return KERR_NOMEM;
    }
    snprintf(tmp, pl + 8, "%sXXXXXX", path);
    int fd = mkstemp(tmp);
    int rc = 0;
    if (fd < 0) {
        snprintf(err, errlen, "cannot create %s: %s", tmp, strerror(errno));
        rc = KERR_IO;
    } else {
        size_t n = strlen(txt);
        if (write(fd, txt, n) != (ssize_t)n || fsync(fd) != 0) {
            snprintf(err, errlen, "cannot write %s: %s", tmp, strerror(errno));
            rc = KERR_IO;
        }
        close(fd);
        if (rc == 0 && rename(tmp, path) != 0) {
            snprintf(err, errlen, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
            rc = KERR_IO;
        }
        if (rc)
            unlink(tmp);
    }
    free(txt);
    free(tmp);
    return rc;
}

static int l_batch_commit(lua_State *L)
{
    logbatch *b = check_batch(L, "batch:commit");
    if (b->committed)
        return luaL_error(L, "batch has already been committed");
    if (b->cp_path && b->file) {
        char err[512];
        if (save_checkpoint(b->cp_path, b->file, b->line, err, sizeof(err)) != 0)
            return lualib_error(L, "batch:commit", "%s", err);
    }
    b->committed = true;
    json_decref(b->records);
    b->records = NULL;
    return 0;
}

static void batch_free(logbatch *b)
{
    if (!b)
        return;
    json_decref(b->records);
    free(b->name);
    free(b->cp_path);
    free(b->file);
    free(b);
}

static int l_batch_gc(lua_State *L)
{
    logbatch **bp = luaL_checkudata(L, 1, BATCH_MT);
    batch_free(*bp);
    *bp = NULL;
    return 0;
}

/* ---- tailers -------------------------------------------------------------- */

typedef struct consumer {
    char *name;
    size_t max_batch;
    int64_t latency_ns;
    char *cp_path;  /* dir/.checkpoint_name, or NULL */
    char *skip_file; /* from the checkpoint: lines up to (skip_file, skip_line) were done */
    uint64_t skip_line;
    int filter;     /* registry ref or LUA_NOREF */
    json_t *batch;  /* records gathered, or NULL */
    int64_t batch_start;
    char *pos_file; /* the last line this consumer has seen */
    uint64_t pos_line;
} consumer;

typedef struct tailer {
    jsonl_src *src;
    consumer *cons;
    size_t ncons;
    bool multi, closed;
    int64_t poll_ns;
    json_t *pending; /* the record being dispatched */
    char *dir;
} tailer;

static const char *base_name(const char *p)
{
    const char *b = strrchr(p, '/');
    return b ? b + 1 : p;
}

static void tailer_free(lua_State *L, tailer *t)
{
    if (!t)
        return;
    jsonl_src_free(t->src);
    json_decref(t->pending);
    free(t->dir);
    for (size_t i = 0; i < t->ncons; i++) {
        consumer *c = &t->cons[i];
        free(c->name);
        free(c->cp_path);
        free(c->skip_file);
        free(c->pos_file);
        json_decref(c->batch);
        if (L && c->filter != LUA_NOREF)
            luaL_unref(L, LUA_REGISTRYINDEX, c->filter);
    }
    free(t->cons);
    free(t);
}

static int l_tailer_gc(lua_State *L)
{
    tailer **tp = luaL_checkudata(L, 1, TAILER_MT);
    tailer_free(L, *tp);
    *tp = NULL;
    return 0;
}

static int l_tailer_close(lua_State *L)
{
    tailer **tp = luaL_checkudata(L, 1, TAILER_MT);
    if (*tp)
        (*tp)->closed = true;
    return 0;
}

/* Reads the checkpoint at c->cp_path into skip_file/skip_line. */
static int load_checkpoint(consumer *c, char *err, size_t errlen)
{
    json_error_t je;
    json_t *j = json_load_file(c->cp_path, 0, &je);
    if (!j) {
        if (access(c->cp_path, F_OK) != 0)
            return 0; /* none yet */
        snprintf(err, errlen, "checkpoint %s: %s", c->cp_path, je.text);
        return KERR_PARSE;
    }
    json_t *f = json_object_get(j, "file"), *l = json_object_get(j, "line");
    if (!json_is_string(f) || !json_is_integer(l) || json_integer_value(l) < 0) {
        json_decref(j);
        snprintf(err, errlen, "checkpoint %s: expected {\"file\": ..., \"line\": N}", c->cp_path);
        return KERR_PARSE;
    }
    c->skip_file = strdup(json_string_value(f));
    c->skip_line = (uint64_t)json_integer_value(l);
    json_decref(j);
    return c->skip_file ? 0 : KERR_NOMEM;
}

/* Fills one consumer from the table at idx (or from the tailer's own table
 * for new_tailer); filter_idx: the filter function's index or 0. */
static void read_consumer(lua_State *L, int idx, int filter_idx, const char *dir, consumer *c,
                          bool tail, const char *fn)
{
    c->filter = LUA_NOREF;
    const char *name = filter_idx < 0 ? "default" : opt_string(L, idx, "name", fn, true);
    c->name = strdup(name);
    c->max_batch = (size_t)opt_int(L, idx, "max_batch_size", fn, 100, 1);
    c->latency_ns = opt_duration(L, idx, "max_batch_latency", fn, 1000000000LL);
    const char *cp = opt_string(L, idx, "checkpoint_name", fn, false);
    if (!c->name)
        lualib_error(L, fn, "out of memory");
    if (cp) {
        if (!*cp || strchr(cp, '/'))
            lualib_error(L, fn, "checkpoint_name must be a non-empty name without '/'");
        size_t n = strlen(dir) + strlen(cp) + 3;
        c->cp_path = malloc(n);
        if (!c->cp_path)
            lualib_error(L, fn, "out of memory");
        snprintf(c->cp_path, n, "%s/.%s", dir, cp);
        char err[512];
        if (!tail && load_checkpoint(c, err, sizeof(err)) != 0)
            lualib_error(L, fn, "%s", err);
    }
    if (filter_idx > 0 && !lua_isnil(L, filter_idx)) {
        if (lua_type(L, filter_idx) != LUA_TFUNCTION)
            lualib_error(L, fn, "filter must be a function, got %s", luaL_typename(L, filter_idx));
        lua_pushvalue(L, filter_idx);
        c->filter = luaL_ref(L, LUA_REGISTRYINDEX);
    }
}

static int new_tailer(lua_State *L, bool multi)
{
    const char *fn = multi ? "kumo.jsonl.new_multi_tailer" : "kumo.jsonl.new_tailer";
    if (lua_type(L, 1) != LUA_TTABLE)
        return lualib_error(L, fn, "argument #1 must be a table, got %s", luaL_typename(L, 1));
    if (lua_gettop(L) < 2)
        lua_settop(L, 2); /* argument #2 (the filter) is nil when absent */
    const char *dir = opt_string(L, 1, "directory", fn, true);
    const char *pattern = opt_string(L, 1, "pattern", fn, false);
    int64_t poll = opt_duration(L, 1, "poll_watcher", fn, DEFAULT_POLL_NS);
    lua_getfield(L, 1, "tail");
    bool tail = lua_toboolean(L, -1);
    lua_pop(L, 1);
    tailer **tp = lua_newuserdatauv(L, sizeof(*tp), 0);
    *tp = NULL;
    luaL_setmetatable(L, TAILER_MT);
    int ud = lua_gettop(L);
    tailer *t = calloc(1, sizeof(*t));
    if (!t)
        return lualib_error(L, fn, "out of memory");
    *tp = t;
    t->multi = multi;
    t->dir = strdup(dir);
    if (!t->dir)
        return lualib_error(L, fn, "out of memory");
    t->poll_ns = poll > 0 ? poll : DEFAULT_POLL_NS;
    if (multi) {
        lua_getfield(L, 1, "consumers");
        int ci = lua_gettop(L);
        if (lua_type(L, ci) != LUA_TTABLE || lua_rawlen(L, ci) == 0)
            return lualib_error(L, fn, "field 'consumers' must be a non-empty array of tables");
        size_t n = lua_rawlen(L, ci);
        t->cons = calloc(n, sizeof(*t->cons));
        if (!t->cons)
            return lualib_error(L, fn, "out of memory");
        for (size_t i = 0; i < n; i++)
            t->cons[i].filter = LUA_NOREF;
        for (size_t i = 0; i < n; i++) {
            lua_rawgeti(L, ci, (lua_Integer)i + 1);
            if (lua_type(L, -1) != LUA_TTABLE)
                return lualib_error(L, fn, "consumers[%zu] must be a table", i + 1);
            t->ncons = i + 1;
            int e = lua_gettop(L);
            lua_getfield(L, e, "filter");
            read_consumer(L, e, lua_gettop(L), dir, &t->cons[i], tail, fn);
            for (size_t k = 0; k < i; k++)
                if (strcmp(t->cons[k].name, t->cons[i].name) == 0)
                    return lualib_error(L, fn, "consumer name '%s' is used twice",
                                        t->cons[i].name);
            lua_settop(L, ci);
        }
        lua_settop(L, ud);
    } else {
        t->cons = calloc(1, sizeof(*t->cons));
        if (!t->cons)
            return lualib_error(L, fn, "out of memory");
        t->ncons = 1;
        t->cons[0].filter = LUA_NOREF;
        /* the filter is argument #2; -1 marks "default" as the name */
        read_consumer(L, 1, -1, dir, &t->cons[0], tail, fn);
        if (!lua_isnoneornil(L, 2)) {
            if (lua_type(L, 2) != LUA_TFUNCTION)
                return lualib_error(L, fn, "argument #2 (filter) must be a function, got %s",
                                    luaL_typename(L, 2));
            lua_pushvalue(L, 2);
            t->cons[0].filter = luaL_ref(L, LUA_REGISTRYINDEX);
        }
    }
    /* start at the earliest checkpoint */
    const char *start = NULL;
    for (size_t i = 0; i < t->ncons; i++) {
        const char *f = t->cons[i].skip_file;
        if (!f) {
            start = NULL;
            break;
        }
        if (!start || strcmp(base_name(f), base_name(start)) < 0)
            start = f;
    }
    int rc = jsonl_src_open(dir, pattern, start, tail, &t->src);
    if (rc)
        return lualib_error(L, fn, "cannot read directory %s: %s", dir,
                            rc == KERR_IO ? strerror(errno) : kerr_str(rc));
    lua_settop(L, ud);
    return 1;
}

static int l_new_tailer(lua_State *L)
{
    return new_tailer(L, false);
}

static int l_new_multi_tailer(lua_State *L)
{
    return new_tailer(L, true);
}

static bool set_str(char **dst, const char *s)
{
    if (*dst && strcmp(*dst, s) == 0)
        return true;
    char *n = strdup(s);
    if (!n)
        return false;
    free(*dst);
    *dst = n;
    return true;
}

/* One line for every consumer: checkpoint skip, filter, batch. */
static void dispatch_line(lua_State *L, tailer *t, json_t *rec, const char *file, uint64_t line,
                          int64_t now, bool *full)
{
    for (size_t i = 0; i < t->ncons; i++) {
        consumer *c = &t->cons[i];
        if (c->skip_file) {
            int d = strcmp(base_name(file), base_name(c->skip_file));
            if (d < 0 || (d == 0 && line <= c->skip_line))
                continue;
            free(c->skip_file);
            c->skip_file = NULL;
        }
        if (!set_str(&c->pos_file, file))
            luaL_error(L, "kumo.jsonl: out of memory");
        c->pos_line = line;
        if (!rec)
            continue;
        if (c->filter != LUA_NOREF) {
            lua_rawgeti(L, LUA_REGISTRYINDEX, c->filter);
            klua_push_json(L, rec);
            lua_call(L, 1, 1); /* a filter's error goes to the caller */
            bool keep = lua_toboolean(L, -1);
            lua_pop(L, 1);
            if (!keep)
                continue;
        }
        if (!c->batch) {
            c->batch = json_array();
            c->batch_start = now;
            if (!c->batch)
                luaL_error(L, "kumo.jsonl: out of memory");
        }
        json_array_append(c->batch, rec);
        if (json_array_size(c->batch) >= c->max_batch)
            *full = true;
    }
}

static void push_batch(lua_State *L, consumer *c)
{
    logbatch **bp = lua_newuserdatauv(L, sizeof(*bp), 0);
    *bp = NULL;
    luaL_setmetatable(L, BATCH_MT);
    logbatch *b = calloc(1, sizeof(*b));
    if (!b)
        luaL_error(L, "kumo.jsonl: out of memory");
    *bp = b;
    b->records = c->batch;
    c->batch = NULL;
    b->name = strdup(c->name);
    b->cp_path = c->cp_path ? strdup(c->cp_path) : NULL;
    b->file = c->pos_file ? strdup(c->pos_file) : NULL;
    b->line = c->pos_line;
    if (!b->name || (c->cp_path && !b->cp_path) || (c->pos_file && !b->file))
        luaL_error(L, "kumo.jsonl: out of memory");
}

static bool batch_ready(const consumer *c, int64_t now)
{
    return c->batch && json_array_size(c->batch) &&
           (json_array_size(c->batch) >= c->max_batch || now - c->batch_start >= c->latency_ns);
}

/* tailer:_step(): reads up to STEP_BUDGET bytes and returns a ready batch
 * (a table of them for a multi tailer), or nil and the seconds to sleep
 * before the next step, or nil alone once closed. */
static int l_tailer_step(lua_State *L)
{
    tailer **tp = luaL_checkudata(L, 1, TAILER_MT);
    tailer *t = *tp;
    if (!t || t->closed) {
        lua_pushnil(L);
        return 1;
    }
    json_decref(t->pending);
    t->pending = NULL;
    size_t budget = STEP_BUDGET;
    bool more = false, full = false;
    int lines = 0;
    while (!full && lines < 10000) {
        const char *line;
        size_t len;
        int rc = jsonl_src_next(t->src, &line, &len, &budget, &more);
        if (rc == 0)
            break;
        if (rc < 0) {
            DWARN(JL_MOD, "tailer: segment %s/%s: %s; going on with the next one", t->dir,
                  jsonl_src_segment(t->src), kerr_str(rc));
            continue;
        }
        lines++;
        json_t *rec = NULL;
        size_t k = 0;
        while (k < len && (line[k] == ' ' || line[k] == '\t'))
            k++;
        if (k < len) {
            json_error_t je;
            rec = json_loadb(line, len, JSON_DECODE_ANY, &je);
            if (!rec)
                DWARN(JL_MOD, "tailer: %s line %llu is not JSON (%s); skipped",
                      jsonl_src_file(t->src), (unsigned long long)jsonl_src_line(t->src),
                      je.text);
        }
        /* held by the tailer so that it is released even when a filter
         * raises an error out of dispatch_line */
        t->pending = rec;
        dispatch_line(L, t, rec, jsonl_src_file(t->src), jsonl_src_line(t->src), mono_ns(),
                      &full);
        t->pending = NULL;
        json_decref(rec);
    }
    if (lines >= 10000)
        more = true;
    int64_t now = mono_ns();
    if (t->multi) {
        lua_newtable(L);
        lua_Integer n = 0;
        for (size_t i = 0; i < t->ncons; i++) {
            if (batch_ready(&t->cons[i], now)) {
                push_batch(L, &t->cons[i]);
                lua_rawseti(L, -2, ++n);
            }
        }
        if (n)
            return 1;
        lua_pop(L, 1);
    } else if (batch_ready(&t->cons[0], now)) {
        push_batch(L, &t->cons[0]);
        return 1;
    }
    int64_t wait = more ? 0 : t->poll_ns;
    for (size_t i = 0; i < t->ncons && !more; i++) {
        const consumer *c = &t->cons[i];
        if (c->batch && json_array_size(c->batch)) {
            int64_t left = c->batch_start + c->latency_ns - now;
            if (left < wait)
                wait = left > 0 ? left : 0;
        }
    }
    lua_pushnil(L);
    lua_pushnumber(L, (double)wait / 1e9);
    return 2;
}

/* tailer:batches() is Lua: it loops over _step and sleeps through
 * kumo.time.sleep, which yields the event coroutine to the reactor. */
static const char batches_src[] =
    "local methods, sleep = ...\n"
    "function methods.batches(self)\n"
    "  return function()\n"
    "    while true do\n"
    "      local b, wait = self:_step()\n"
    "      if b ~= nil then return b end\n"
    "      if wait == nil then return nil end\n"
    "      sleep(wait)\n"
    "    end\n"
    "  end\n"
    "end\n";

static void jsonl_setup(lua_State *L)
{
    /* the kumo table is at the top: kumo.time.sleep for the glue */
    int kumo = lua_gettop(L);
    static const luaL_Reg wm[] = {{"write_line", l_write_line},
                                  {"write_record", l_write_record},
                                  {"close", l_writer_close},
                                  {NULL, NULL}};
    if (luaL_newmetatable(L, WRITER_MT)) {
        luaL_newlib(L, wm);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, l_writer_gc);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, l_writer_close);
        lua_setfield(L, -2, "__close");
    }
    lua_pop(L, 1);
    static const luaL_Reg bm[] = {{"records", l_batch_records},
                                  {"iter_records", l_batch_iter_records},
                                  {"consumer_name", l_batch_consumer_name},
                                  {"commit", l_batch_commit},
                                  {NULL, NULL}};
    if (luaL_newmetatable(L, BATCH_MT)) {
        luaL_newlib(L, bm);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, l_batch_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);
    static const luaL_Reg tm[] = {{"_step", l_tailer_step}, {"close", l_tailer_close}, {NULL, NULL}};
    if (luaL_newmetatable(L, TAILER_MT)) {
        luaL_newlib(L, tm);
        if (luaL_loadbuffer(L, batches_src, sizeof(batches_src) - 1, "=kumo.jsonl") == LUA_OK) {
            lua_pushvalue(L, -2);
            lua_getfield(L, kumo, "time");
            lua_getfield(L, -1, "sleep");
            lua_remove(L, -2);
            lua_call(L, 2, 0);
        } else {
            lua_pop(L, 1);
        }
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, l_tailer_gc);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, l_tailer_close);
        lua_setfield(L, -2, "__close");
    }
    lua_pop(L, 1);
}

static const luaL_Reg fns[] = {
    {"new_writer", l_new_writer},
    {"new_tailer", l_new_tailer},
    {"new_multi_tailer", l_new_multi_tailer},
    {NULL, NULL},
};
const lualib_module lualib_jsonl = {"kumo.jsonl", fns, jsonl_setup};
