/* kumo.fs. Filesystem calls run synchronously on the reactor: globbing and
 * directory listing walk local configuration directories (as KumoMTA warns,
 * scope the pattern; kumo.fs.glob caches its result per VM for ttl seconds),
 * and the file object reads and writes in pieces of at most FS_CHUNK bytes,
 * letting the reactor run other work between pieces (the Lua side yields
 * with kumo.sleep(0) when called from a task or handler), so that a large
 * file never holds the reactor for long. Errors are Lua errors naming the
 * function, the path and strerror. */
#include "lua/lib/fs.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <lauxlib.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/reactor.h"
#include "lua/klua.h"
#include "lua/lib/args.h"
#include "lua/lib/time.h"

#define FS_CHUNK (1024 * 1024)
#define FILE_MT "kumo.AsyncFile"
#define GLOB_CACHE "kumod.fs.glob_cache"
#define MAX_BRACE_EXPANSIONS 1024

/* ---- glob ------------------------------------------------------------------ */

/* Expands the first {a,b,...} group of pat (recursively) into the array at
 * the top of the stack. Returns false when there are too many expansions. */
static bool brace_expand(lua_State *L, const char *pat)
{
    const char *open = NULL;
    for (const char *p = pat; *p; p++) {
        if (*p == '\\' && p[1]) {
            p++;
            continue;
        }
        if (*p == '{') {
            open = p;
            break;
        }
    }
    const char *close = NULL;
    if (open) {
        int depth = 0;
        for (const char *p = open; *p; p++) {
            if (*p == '\\' && p[1]) {
                p++;
                continue;
            }
            if (*p == '{')
                depth++;
            else if (*p == '}' && --depth == 0) {
                close = p;
                break;
            }
        }
    }
    if (!open || !close) {
        if (lua_rawlen(L, -1) >= MAX_BRACE_EXPANSIONS)
            return false;
        lua_pushstring(L, pat);
        lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
        return true;
    }
    const char *alt = open + 1;
    int depth = 0;
    for (const char *p = open + 1; p <= close; p++) {
        if (*p == '\\' && p[1]) {
            p++;
            continue;
        }
        if (*p == '{')
            depth++;
        else if (*p == '}' && depth > 0)
            depth--;
        else if ((*p == ',' && depth == 0) || p == close) {
            luaL_Buffer b;
            luaL_buffinit(L, &b);
            luaL_addlstring(&b, pat, (size_t)(open - pat));
            luaL_addlstring(&b, alt, (size_t)(p - alt));
            luaL_addstring(&b, close + 1);
            luaL_pushresult(&b);
            char *one = strdup(lua_tostring(L, -1));
            lua_pop(L, 1);
            if (!one)
                return false;
            bool ok = brace_expand(L, one);
            free(one);
            if (!ok)
                return false;
            alt = p + 1;
        }
    }
    return true;
}

static bool has_magic(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] == '*' || s[i] == '?' || s[i] == '[' || s[i] == '\\')
            return true;
    return false;
}

/* out = a + b (+ "/" when slash); false when it does not fit */
static bool join(char *out, size_t cap, const char *a, const char *b, bool slash)
{
    int n = snprintf(out, cap, "%s%s%s", a, b, slash ? "/" : "");
    return n >= 0 && (size_t)n < cap;
}

static void add_result(lua_State *L, int out, const char *path)
{
    lua_pushstring(L, path);
    lua_pushboolean(L, 1);
    lua_rawset(L, out); /* a set: "**" can reach one path more than once */
}

/* Matches the segments of pat starting at seg against the directory dir
 * (with prefix the text to put before names: "" or "dir/"). */
static void walk(lua_State *L, int out, const char *dir, const char *prefix, const char *seg,
                 int depth)
{
    if (depth > 64)
        return;
    while (*seg == '/')
        seg++;
    if (!*seg) {
        add_result(L, out, *prefix ? prefix : dir);
        return;
    }
    const char *slash = strchr(seg, '/');
    size_t len = slash ? (size_t)(slash - seg) : strlen(seg);
    const char *rest = slash ? slash + 1 : "";
    char name[512];
    if (len >= sizeof(name))
        return;
    memcpy(name, seg, len);
    name[len] = 0;
    char path[4096];
    if (strcmp(name, "**") == 0) {
        /* zero directories */
        walk(L, out, dir, prefix, rest, depth + 1);
        DIR *d = opendir(dir);
        if (!d)
            return;
        struct dirent *e;
        while ((e = readdir(d))) {
            if (e->d_name[0] == '.')
                continue;
            if (!join(path, sizeof(path), prefix, e->d_name, false))
                continue;
            struct stat st;
            char np[4096];
            if (stat(path, &st) == 0 && S_ISDIR(st.st_mode) && join(np, sizeof(np), path, "", true))
                walk(L, out, path, np, seg, depth + 1); /* "**" again below it */
        }
        closedir(d);
        return;
    }
    if (!has_magic(name, len)) {
        struct stat st;
        if (!join(path, sizeof(path), prefix, name, false) || lstat(path, &st) != 0)
            return;
        char np[4096];
        if (!*rest)
            add_result(L, out, path);
        else if (stat(path, &st) == 0 && S_ISDIR(st.st_mode) &&
                 join(np, sizeof(np), path, "", true))
            walk(L, out, path, np, rest, depth + 1);
        return;
    }
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        if (fnmatch(name, e->d_name, FNM_PERIOD) != 0)
            continue;
        if (!join(path, sizeof(path), prefix, e->d_name, false))
            continue;
        if (!*rest) {
            add_result(L, out, path);
            continue;
        }
        struct stat st;
        char np[4096];
        if (stat(path, &st) == 0 && S_ISDIR(st.st_mode) && join(np, sizeof(np), path, "", true))
            walk(L, out, path, np, rest, depth + 1);
    }
    closedir(d);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

int fs_glob_push(lua_State *L, const char *pattern, const char *relative_to)
{
    luaL_checkstack(L, 16, "glob");
    lua_newtable(L);
    int pats = lua_gettop(L);
    if (!brace_expand(L, pattern)) {
        lua_pop(L, 1);
        lua_pushfstring(L, "pattern '%s' expands to more than %d alternatives", pattern,
                        MAX_BRACE_EXPANSIONS);
        return -1;
    }
    lua_newtable(L);
    int out = lua_gettop(L);
    for (lua_Integer i = 1; i <= (lua_Integer)lua_rawlen(L, pats); i++) {
        lua_rawgeti(L, pats, i);
        const char *p = lua_tostring(L, -1);
        if (p[0] == '/')
            walk(L, out, "/", "/", p + 1, 0);
        else
            walk(L, out, ".", "", p, 0);
        lua_pop(L, 1);
    }
    /* sorted array, relative_to stripped */
    size_t n = 0;
    lua_pushnil(L);
    while (lua_next(L, out)) {
        n++;
        lua_pop(L, 1);
    }
    const char **arr = n ? malloc(n * sizeof(*arr)) : NULL;
    if (n && !arr) {
        lua_pop(L, 2);
        lua_pushstring(L, "out of memory");
        return -1;
    }
    size_t i = 0;
    lua_pushnil(L);
    while (lua_next(L, out)) {
        arr[i++] = lua_tostring(L, -2); /* anchored by the set */
        lua_pop(L, 1);
    }
    if (n > 1)
        qsort(arr, n, sizeof(*arr), cmp_str);
    lua_createtable(L, (int)n, 0);
    size_t rl = relative_to ? strlen(relative_to) : 0;
    while (rl > 1 && relative_to[rl - 1] == '/')
        rl--;
    for (i = 0; i < n; i++) {
        const char *p = arr[i];
        if (rl && strncmp(p, relative_to, rl) == 0 && p[rl] == '/')
            p += rl + 1;
        lua_pushstring(L, p);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    free(arr);
    lua_replace(L, pats);
    lua_settop(L, pats);
    return 0;
}

static int glob_common(lua_State *L, const char *fname, bool cached)
{
    if (lua_type(L, 1) != LUA_TSTRING)
        return luaL_error(L, "%s: argument #1 (pattern) must be a string, got %s", fname,
                          luaL_typename(L, 1));
    const char *pattern = lua_tostring(L, 1);
    const char *rel = lib_optstring(L, 2, fname, "argument #2 (relative_to)", ".");
    double ttl = 60;
    if (cached && !lua_isnoneornil(L, 3)) {
        if (lua_type(L, 3) != LUA_TNUMBER)
            return luaL_error(L, "%s: argument #3 (ttl_seconds) must be a number", fname);
        ttl = lua_tonumber(L, 3);
    }
    double now = (double)clock_mono_ns() / 1e9;
    if (cached) {
        luaL_getsubtable(L, LUA_REGISTRYINDEX, GLOB_CACHE);
        lua_pushfstring(L, "%s\n%s", pattern, rel);
        lua_pushvalue(L, -1);
        lua_rawget(L, -3);
        if (lua_istable(L, -1)) {
            lua_rawgeti(L, -1, 1);
            double expires = lua_tonumber(L, -1);
            lua_pop(L, 1);
            if (expires > now) {
                /* a copy, so that the caller may modify its array */
                lua_rawgeti(L, -1, 2);
                int src = lua_gettop(L);
                lua_Integer n = (lua_Integer)lua_rawlen(L, src);
                lua_createtable(L, (int)n, 0);
                for (lua_Integer i = 1; i <= n; i++) {
                    lua_rawgeti(L, src, i);
                    lua_rawseti(L, -2, i);
                }
                return 1;
            }
        }
        lua_pop(L, 1);
    }
    if (fs_glob_push(L, pattern, rel) != 0)
        return luaL_error(L, "%s: %s", fname, lua_tostring(L, -1));
    if (cached && ttl > 0) {
        /* stack: cache, key, result */
        lua_createtable(L, 2, 0);
        lua_pushnumber(L, now + ttl);
        lua_rawseti(L, -2, 1);
        lua_newtable(L);
        lua_Integer n = (lua_Integer)lua_rawlen(L, -3);
        for (lua_Integer i = 1; i <= n; i++) {
            lua_rawgeti(L, -3, i);
            lua_rawseti(L, -2, i);
        }
        lua_rawseti(L, -2, 2);
        lua_pushvalue(L, -3);
        lua_insert(L, -2);
        lua_rawset(L, -5);
    }
    return 1;
}

static int l_glob(lua_State *L)
{
    return glob_common(L, lua_tostring(L, lua_upvalueindex(1)), true);
}

static int l_uncached_glob(lua_State *L)
{
    return glob_common(L, lua_tostring(L, lua_upvalueindex(1)), false);
}

static int l_read_dir(lua_State *L)
{
    const char *fname = lua_tostring(L, lua_upvalueindex(1));
    if (lua_type(L, 1) != LUA_TSTRING)
        return luaL_error(L, "%s: argument #1 (path) must be a string, got %s", fname,
                          luaL_typename(L, 1));
    const char *path = lua_tostring(L, 1);
    DIR *d = opendir(path);
    if (!d)
        return luaL_error(L, "%s: %s: %s", fname, path, strerror(errno));
    size_t pl = strlen(path);
    bool slash = pl > 0 && path[pl - 1] == '/';
    lua_newtable(L);
    struct dirent *e;
    lua_Integer i = 0;
    while ((e = readdir(d))) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        lua_pushfstring(L, "%s%s%s", path, slash ? "" : "/", e->d_name);
        lua_rawseti(L, -2, ++i);
    }
    closedir(d);
    /* sort with table.sort for a stable, readable order */
    lua_getglobal(L, "table");
    if (lua_istable(L, -1)) {
        lua_getfield(L, -1, "sort");
        lua_pushvalue(L, -3);
        lua_call(L, 1, 0);
    }
    lua_pop(L, 1);
    return 1;
}

static int metadata(lua_State *L, const char *fname, bool follow)
{
    if (lua_type(L, 1) != LUA_TSTRING)
        return luaL_error(L, "%s: argument #1 (PATH) must be a string, got %s", fname,
                          luaL_typename(L, 1));
    const char *path = lua_tostring(L, 1);
    struct stat st;
    if ((follow ? stat(path, &st) : lstat(path, &st)) != 0)
        return luaL_error(L, "%s: %s: %s", fname, path, strerror(errno));
    lua_createtable(L, 0, 20);
    lua_pushvalue(L, 1);
    lua_setfield(L, -2, "path");
#define SETB(k, v)                                                                                 \
    lua_pushboolean(L, (v));                                                                       \
    lua_setfield(L, -2, k)
#define SETI(k, v)                                                                                 \
    lua_pushinteger(L, (lua_Integer)(v));                                                          \
    lua_setfield(L, -2, k)
    SETB("is_file", S_ISREG(st.st_mode));
    SETB("is_dir", S_ISDIR(st.st_mode));
    SETB("is_symlink", S_ISLNK(st.st_mode));
    SETB("readonly", (st.st_mode & 0222) == 0);
    SETI("len", st.st_size);
    SETI("size", st.st_size);
    SETI("dev", st.st_dev);
    SETI("ino", st.st_ino);
    SETI("mode", st.st_mode);
    SETI("nlink", st.st_nlink);
    SETI("uid", st.st_uid);
    SETI("gid", st.st_gid);
    SETI("rdev", st.st_rdev);
    SETI("blksize", st.st_blksize);
    SETI("blocks", st.st_blocks);
#undef SETB
#undef SETI
    ktime_push(L, st.st_mtim.tv_sec, (int32_t)st.st_mtim.tv_nsec);
    lua_setfield(L, -2, "mtime");
    ktime_push(L, st.st_atim.tv_sec, (int32_t)st.st_atim.tv_nsec);
    lua_setfield(L, -2, "atime");
    ktime_push(L, st.st_ctim.tv_sec, (int32_t)st.st_ctim.tv_nsec);
    lua_setfield(L, -2, "ctime");
    return 1;
}

static int l_metadata(lua_State *L)
{
    return metadata(L, "kumo.fs.metadata_for_path", true);
}

static int l_symlink_metadata(lua_State *L)
{
    return metadata(L, "kumo.fs.symlink_metadata_for_path", false);
}

/* ---- files --------------------------------------------------------------------- */

struct kfile {
    int fd;
    char *name;
};

static struct kfile *check_file(lua_State *L, const char *method)
{
    struct kfile *f = luaL_testudata(L, 1, FILE_MT);
    if (!f)
        luaL_error(L, "file:%s: must be called as a method on a file from kumo.fs.open", method);
    if (f->fd < 0)
        luaL_error(L, "file:%s: the file is closed", method);
    return f;
}

static int l_open(lua_State *L)
{
    if (lua_type(L, 1) != LUA_TSTRING)
        return luaL_error(L, "kumo.fs.open: argument #1 (FILENAME) must be a string, got %s",
                          luaL_typename(L, 1));
    const char *name = lua_tostring(L, 1);
    const char *mode = lib_optstring(L, 2, "kumo.fs.open", "argument #2 (OPT_MODE)", "r");
    static const struct {
        const char *m, *mb;
        int flags;
    } modes[] = {
        {"r", "rb", O_RDONLY},
        {"w", "wb", O_WRONLY | O_CREAT | O_TRUNC},
        {"a", "ab", O_WRONLY | O_CREAT | O_APPEND},
        {"r+", "r+b", O_RDWR | O_CREAT},
        {"w+", "w+b", O_RDWR | O_CREAT | O_TRUNC},
        {"a+", "a+b", O_RDWR | O_CREAT | O_APPEND},
    };
    int flags = -1;
    for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++)
        if (strcmp(mode, modes[i].m) == 0 || strcmp(mode, modes[i].mb) == 0)
            flags = modes[i].flags;
    if (flags < 0)
        return luaL_error(L,
                          "kumo.fs.open: argument #2 (OPT_MODE) '%s' is not one of r, w, a, "
                          "r+, w+, a+ (optionally with b)",
                          mode);
    struct kfile *f = lua_newuserdatauv(L, sizeof(*f), 0);
    f->fd = -1;
    f->name = NULL;
    luaL_setmetatable(L, FILE_MT);
    f->fd = open(name, flags | O_CLOEXEC, 0666);
    if (f->fd < 0)
        return luaL_error(L, "kumo.fs.open: %s: %s", name, strerror(errno));
    f->name = strdup(name);
    return 1;
}

/* read_chunk(f, max) -> string (possibly empty at the end of the file) */
static int l_read_chunk(lua_State *L)
{
    struct kfile *f = check_file(L, "read");
    lua_Integer max = luaL_checkinteger(L, 2);
    size_t want = max > FS_CHUNK ? FS_CHUNK : (size_t)max;
    luaL_Buffer b;
    char *p = luaL_buffinitsize(L, &b, want ? want : 1);
    ssize_t n;
    do
        n = read(f->fd, p, want);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return luaL_error(L, "file:read: %s: %s", f->name, strerror(errno));
    luaL_pushresultsize(&b, (size_t)n);
    return 1;
}

/* write_chunk(f, s, offset) -> bytes written from offset (at most FS_CHUNK) */
static int l_write_chunk(lua_State *L)
{
    struct kfile *f = check_file(L, "write");
    size_t len;
    const char *s = luaL_checklstring(L, 2, &len);
    lua_Integer off = luaL_checkinteger(L, 3);
    if (off < 0 || (size_t)off > len)
        return luaL_error(L, "file:write: bad offset");
    size_t want = len - (size_t)off;
    if (want > FS_CHUNK)
        want = FS_CHUNK;
    ssize_t n;
    do
        n = write(f->fd, s + off, want);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return luaL_error(L, "file:write: %s: %s", f->name, strerror(errno));
    lua_pushinteger(L, n);
    return 1;
}

static int l_seek(lua_State *L)
{
    struct kfile *f = check_file(L, "seek");
    const char *whence = lib_optstring(L, 2, "file:seek", "OPT_WHENCE", "cur");
    lua_Integer pos = lib_optinteger(L, 3, "file:seek", "OPT_POS", 0);
    int w;
    if (strcmp(whence, "cur") == 0)
        w = SEEK_CUR;
    else if (strcmp(whence, "set") == 0)
        w = SEEK_SET;
    else if (strcmp(whence, "end") == 0)
        w = SEEK_END;
    else
        return luaL_error(L, "file:seek: OPT_WHENCE must be 'cur', 'set' or 'end', not '%s'",
                          whence);
    off_t r = lseek(f->fd, (off_t)pos, w);
    if (r < 0)
        return luaL_error(L, "file:seek: %s: %s", f->name, strerror(errno));
    lua_pushinteger(L, (lua_Integer)r);
    return 1;
}

/* writes go straight to the file descriptor: nothing is buffered */
static int l_flush(lua_State *L)
{
    check_file(L, "flush");
    return 0;
}

static int l_close(lua_State *L)
{
    struct kfile *f = luaL_checkudata(L, 1, FILE_MT);
    if (f->fd >= 0)
        close(f->fd);
    f->fd = -1;
    free(f->name);
    f->name = NULL;
    return 0;
}

static int l_size_left(lua_State *L)
{
    struct kfile *f = check_file(L, "read");
    struct stat st;
    off_t cur = lseek(f->fd, 0, SEEK_CUR);
    if (fstat(f->fd, &st) != 0 || cur < 0 || !S_ISREG(st.st_mode))
        lua_pushnil(L); /* a pipe or device: read until the end */
    else
        lua_pushinteger(L, st.st_size > cur ? (lua_Integer)(st.st_size - cur) : 0);
    return 1;
}

/* The public read/write loop over the chunk functions: between chunks the
 * coroutine yields to the reactor (kumo.sleep(0)) when it can. */
static const char file_src[] =
    "local read_chunk, write_chunk, size_left, chunk, sleep = ...\n"
    "local function pause()\n"
    "  if coroutine.isyieldable() then pcall(sleep, 0) end\n"
    "end\n"
    "local M = {}\n"
    "function M.read(f, size)\n"
    "  if size ~= nil and math.type(size) ~= 'integer' then\n"
    "    error('file:read: OPT_SIZE must be an integer', 2)\n"
    "  end\n"
    "  if size ~= nil then\n"
    "    if size < 0 then error('file:read: OPT_SIZE must not be negative', 2) end\n"
    "    return read_chunk(f, size)\n"
    "  end\n"
    "  local left = size_left(f)\n"
    "  local parts = {}\n"
    "  while true do\n"
    "    local s = read_chunk(f, chunk)\n"
    "    if #s == 0 then break end\n"
    "    parts[#parts + 1] = s\n"
    "    if left ~= nil then left = left - #s; if left <= 0 then break end end\n"
    "    pause()\n"
    "  end\n"
    "  return table.concat(parts)\n"
    "end\n"
    "function M.write(f, buf)\n"
    "  if type(buf) ~= 'string' then\n"
    "    error('file:write: BUFFER must be a string, got ' .. type(buf), 2)\n"
    "  end\n"
    "  local off = 0\n"
    "  while off < #buf do\n"
    "    off = off + write_chunk(f, buf, off)\n"
    "    if off < #buf then pause() end\n"
    "  end\n"
    "end\n"
    "return M\n";

static void fs_open_module(lua_State *L)
{
    /* file metatable */
    if (luaL_newmetatable(L, FILE_MT)) {
        lua_newtable(L); /* methods */
        if (luaL_loadbuffer(L, file_src, sizeof(file_src) - 1, "=kumo.fs") != LUA_OK)
            lua_error(L);
        lua_pushcfunction(L, l_read_chunk);
        lua_pushcfunction(L, l_write_chunk);
        lua_pushcfunction(L, l_size_left);
        lua_pushinteger(L, FS_CHUNK);
        lua_getfield(L, -8, "sleep"); /* kumo.sleep: kumo is below the metatable */
        lua_call(L, 5, 1);
        lua_getfield(L, -1, "read");
        lua_setfield(L, -3, "read");
        lua_getfield(L, -1, "write");
        lua_setfield(L, -3, "write");
        lua_pop(L, 1);
        static const luaL_Reg m[] = {
            {"seek", l_seek}, {"flush", l_flush}, {"close", l_close}, {NULL, NULL}};
        luaL_setfuncs(L, m, 0);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, l_close);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, l_close);
        lua_setfield(L, -2, "__close");
    }
    lua_pop(L, 1);

    lua_newtable(L);
    static const struct {
        const char *name;
        lua_CFunction fn;
    } fns[] = {{"glob", l_glob}, {"uncached_glob", l_uncached_glob}, {"read_dir", l_read_dir}};
    for (size_t i = 0; i < 3; i++) {
        char full[64];
        snprintf(full, sizeof(full), "kumo.fs.%s", fns[i].name);
        lua_pushstring(L, full);
        lua_pushcclosure(L, fns[i].fn, 1);
        lua_setfield(L, -2, fns[i].name);
        /* the deprecated kumo.* aliases */
        snprintf(full, sizeof(full), "kumo.%s", fns[i].name);
        lua_pushstring(L, full);
        lua_pushcclosure(L, fns[i].fn, 1);
        lua_setfield(L, -3, fns[i].name);
    }
    lua_pushcfunction(L, l_metadata);
    lua_setfield(L, -2, "metadata_for_path");
    lua_pushcfunction(L, l_symlink_metadata);
    lua_setfield(L, -2, "symlink_metadata_for_path");
    lua_pushcfunction(L, l_open);
    lua_setfield(L, -2, "open");
    lua_setfield(L, -2, "fs");
}

void fs_lua_register(void)
{
    klua_register_opener(fs_open_module);
}
