/* KeySources and kumo.secrets.load. The forms that need no waiting (a file
 * path, key_data) are loaded in C; the event form calls the handler
 * registered with kumo.on from a small Lua function, so that the handler may
 * wait like any other; the Vault form raises an error that says why (kumod
 * has no HTTP client yet). Key files are read synchronously: they are small
 * (at most SECRETS_MAX_FILE) and local, and a policy loads them rarely.
 * Runs on the thread of the VM. Errors are Lua errors naming the function,
 * the argument and the policy's line. */
#include "lua/lib/secrets.h"

#include <errno.h>
#include <fcntl.h>
#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lua/klua.h"

#define WRAP_KEY "kumod.secrets.wrap"

/* Reads a whole (small) file into a Lua string. Returns 0, or -1 with the
 * error message pushed instead. */
static int push_file(lua_State *L, const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        lua_pushfstring(L, "cannot open key file %s: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        lua_pushfstring(L, "key file %s is not a regular file", path);
        return -1;
    }
    if (st.st_size > SECRETS_MAX_FILE) {
        close(fd);
        lua_pushfstring(L, "key file %s is larger than %d bytes", path, SECRETS_MAX_FILE);
        return -1;
    }
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    size_t total = 0;
    for (;;) {
        char *p = luaL_prepbuffer(&b);
        ssize_t n = read(fd, p, LUAL_BUFFERSIZE);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int e = errno;
            close(fd);
            luaL_pushresult(&b);
            lua_pop(L, 1);
            lua_pushfstring(L, "cannot read key file %s: %s", path, strerror(e));
            return -1;
        }
        if (n == 0)
            break;
        total += (size_t)n;
        luaL_addsize(&b, (size_t)n);
        if (total > SECRETS_MAX_FILE) {
            close(fd);
            luaL_pushresult(&b);
            lua_pop(L, 1);
            lua_pushfstring(L, "key file %s is larger than %d bytes", path, SECRETS_MAX_FILE);
            return -1;
        }
    }
    close(fd);
    luaL_pushresult(&b);
    return 0;
}

/* load_simple(KS, FNAME, WHAT) -> bytes | nil, message. The event form is
 * handled by the Lua side before this is called. */
static int l_load_simple(lua_State *L)
{
    const char *fname = lua_isstring(L, 2) ? lua_tostring(L, 2) : "kumo.secrets.load";
    const char *what = lua_isstring(L, 3) ? lua_tostring(L, 3) : "argument #1";
    switch (lua_type(L, 1)) {
    case LUA_TSTRING: {
        const char *path = lua_tostring(L, 1);
        if (push_file(L, path) == 0)
            return 1;
        lua_pushfstring(L, "%s: %s: %s", fname, what, lua_tostring(L, -1));
        lua_pushnil(L);
        lua_insert(L, -2);
        return 2;
    }
    case LUA_TTABLE:
        lua_getfield(L, 1, "key_data");
        if (lua_type(L, -1) == LUA_TSTRING)
            return 1;
        if (!lua_isnil(L, -1)) {
            lua_pushnil(L);
            lua_pushfstring(L, "%s: %s: key_data must be a string, not %s", fname, what,
                            luaL_typename(L, -2));
            return 2;
        }
        lua_pop(L, 1);
        lua_getfield(L, 1, "vault_path");
        lua_getfield(L, 1, "vault_mount");
        if (!lua_isnil(L, -1) || !lua_isnil(L, -2)) {
            lua_pushnil(L);
            lua_pushfstring(L,
                            "%s: %s: HashiCorp Vault key sources (vault_mount, vault_path) "
                            "are not supported yet: they need kumo's HTTP client, which kumod "
                            "does not have; use key_data, a key file or an event_name source",
                            fname, what);
            return 2;
        }
        lua_pushnil(L);
        lua_pushfstring(L,
                        "%s: %s: a KeySource table needs key_data, event_name or "
                        "vault_mount/vault_path",
                        fname, what);
        return 2;
    default:
        lua_pushnil(L);
        lua_pushfstring(L,
                        "%s: %s: expected a KeySource (a file name or a table with key_data, "
                        "event_name or vault_path), got %s",
                        fname, what, luaL_typename(L, 1));
        return 2;
    }
}

/* Loaded with load_simple and the kumo.on handler table; returns the
 * KeySource loader and the wrapper factory. Errors are raised at the level of
 * the policy function that called the public function. */
static const char wrap_src[] =
    "local load_simple, handlers = ...\n"
    "local function load(ks, fname, what, level)\n"
    "  if type(ks) == 'table' and rawget(ks, 'event_name') ~= nil then\n"
    "    local ev = ks.event_name\n"
    "    if type(ev) ~= 'string' then\n"
    "      error(string.format('%s: %s: event_name must be a string', fname, what), level)\n"
    "    end\n"
    "    local hs = handlers[ev]\n"
    "    if hs == nil then\n"
    "      error(string.format(\"%s: %s: no handler is registered for event '%s'\",\n"
    "        fname, what, ev), level)\n"
    "    end\n"
    "    local args = ks.event_args or {}\n"
    "    if type(args) ~= 'table' then\n"
    "      error(string.format('%s: %s: event_args must be an array', fname, what), level)\n"
    "    end\n"
    "    local v = hs[1](table.unpack(args))\n"
    "    if type(v) ~= 'string' then\n"
    "      error(string.format(\"%s: %s: handler of event '%s' returned %s, not a string\",\n"
    "        fname, what, ev, type(v)), level)\n"
    "    end\n"
    "    return v\n"
    "  end\n"
    "  local v, err = load_simple(ks, fname, what)\n"
    "  if v == nil then error(err, level) end\n"
    "  return v\n"
    "end\n"
    "local function wrap(core, fname, keyarg, mode, fields)\n"
    "  return function(...)\n"
    "    local a = table.pack(...)\n"
    "    local v = a[keyarg]\n"
    "    local what = 'argument #' .. keyarg\n"
    "    if mode == 'fields' then\n"
    "      if type(v) ~= 'table' then\n"
    "        error(string.format('%s: %s must be a table, got %s', fname, what, type(v)), 2)\n"
    "      end\n"
    "      local copy = {}\n"
    "      for k, x in pairs(v) do copy[k] = x end\n"
    "      for _, f in ipairs(fields) do\n"
    "        if copy[f] ~= nil then copy[f] = load(copy[f], fname, f, 3) end\n"
    "      end\n"
    "      a[keyarg] = copy\n"
    "    else\n"
    "      if mode == 'arg_or_key' and type(v) == 'table' and rawget(v, 'key') ~= nil then\n"
    "        v = v.key\n"
    "      end\n"
    "      a[keyarg] = load(v, fname, what, 3)\n"
    "    end\n"
    "    local r = table.pack(pcall(core, table.unpack(a, 1, a.n)))\n"
    "    if r[1] then return table.unpack(r, 2, r.n) end\n"
    "    local e = r[2]\n"
    "    if type(e) == 'string' then\n"
    "      -- the core's error names this wrapper's line: name the caller's\n"
    "      error((e:gsub('^kumo%.secrets:%d+: ', '')), 2)\n"
    "    end\n"
    "    error(e, 0)\n"
    "  end\n"
    "end\n"
    "return load, wrap\n";

/* Pushes the loader (idx 1) or wrapper factory (idx 2), creating them once
 * per VM. */
static void push_helper(lua_State *L, int which)
{
    if (lua_getfield(L, LUA_REGISTRYINDEX, WRAP_KEY) != LUA_TTABLE) {
        lua_pop(L, 1);
        if (luaL_loadbuffer(L, wrap_src, sizeof(wrap_src) - 1, "=kumo.secrets") != LUA_OK)
            lua_error(L); /* our own chunk: a bug, reported as a Lua error */
        lua_pushcfunction(L, l_load_simple);
        lua_getfield(L, LUA_REGISTRYINDEX, "kumod.handlers");
        lua_call(L, 2, 2);
        lua_createtable(L, 2, 0);
        lua_insert(L, -3);
        lua_rawseti(L, -3, 2);
        lua_rawseti(L, -2, 1);
        lua_pushvalue(L, -1);
        lua_setfield(L, LUA_REGISTRYINDEX, WRAP_KEY);
    }
    lua_rawgeti(L, -1, which);
    lua_remove(L, -2);
}

void secrets_wrap(lua_State *L, const char *fname, int keyarg, enum secrets_wrap_mode mode,
                  const char *const *fields)
{
    push_helper(L, 2);
    lua_insert(L, -2);
    lua_pushstring(L, fname);
    lua_pushinteger(L, keyarg);
    lua_pushstring(L, mode == SECRETS_FIELDS       ? "fields"
                      : mode == SECRETS_ARG_OR_KEY ? "arg_or_key"
                                                   : "arg");
    lua_newtable(L);
    for (int i = 0; fields && fields[i]; i++) {
        lua_pushstring(L, fields[i]);
        lua_rawseti(L, -2, i + 1);
    }
    lua_call(L, 5, 1);
}

void secrets_push_loader(lua_State *L)
{
    push_helper(L, 1);
}

/* kumo.secrets.load(SOURCE): the loader with fixed names. */
static const char load_src[] = "local load = ...\n"
                               "return function(ks)\n"
                               "  local v = load(ks, 'kumo.secrets.load', 'argument #1', 3)\n"
                               "  return v\n"
                               "end\n";

static void secrets_open(lua_State *L)
{
    lua_newtable(L);
    if (luaL_loadbuffer(L, load_src, sizeof(load_src) - 1, "=kumo.secrets") != LUA_OK)
        lua_error(L);
    push_helper(L, 1);
    lua_call(L, 1, 1);
    lua_setfield(L, -2, "load");
    lua_setfield(L, -2, "secrets");
}

void secrets_lua_register(void)
{
    klua_register_opener(secrets_open);
}
