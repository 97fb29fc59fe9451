/* The kumo Lua library of src/lua/lib: one table of modules (kumo.serde,
 * kumo.string, kumo.regex, ...), each a list of C functions installed under
 * its name in the kumo table of every VM. The table is the single list of
 * what src/lua/lib registers, so that a status table for the documentation
 * can be generated from it (lualib_modules()). Each module keeps its pure
 * C core in its own header; the bindings here only convert arguments.
 * Registration runs on the main thread before the first VM is built; the
 * opener then runs on each reactor thread for its own VM. */
#ifndef KUMOD_LUA_LIB_LUALIB_H
#define KUMOD_LUA_LIB_LUALIB_H
#include <lauxlib.h>
#include <lua.h>
#include <stddef.h>

typedef struct lualib_module {
    /* Where the functions go: "kumo" for the kumo table itself, or
     * "kumo.NAME" for a sub-table (also reachable as require 'kumo.NAME'). */
    const char *name;
    const luaL_Reg *fns; /* NULL-terminated; static */
    /* Optional: per-VM set-up (metatables) run before fns are installed. */
    void (*setup)(lua_State *L);
} lualib_module;

/* Every module of src/lua/lib, in registration order. */
const lualib_module *const *lualib_modules(size_t *n);

/* Registers one klua opener that installs every module above. Call once
 * from main before the reactors start. */
void lualib_register(void);

/* Installs the modules into the kumo table at -1 (what the opener does;
 * exposed for tests that build their own lua_State). */
void lualib_open(lua_State *L);

/* Shared argument helpers. Errors raised through them name the function
 * (fname, e.g. "kumo.serde.toml_parse") and the argument position. */
const char *lualib_checklstring(lua_State *L, int arg, const char *fname, size_t *len);
lua_Integer lualib_checkinteger(lua_State *L, int arg, const char *fname);
lua_Integer lualib_optinteger(lua_State *L, int arg, const char *fname, lua_Integer def);
/* Raises "FNAME: MESSAGE" with the caller's file:line in front, so that a
 * policy's error names the line that made the call. Never returns. */
int lualib_error(lua_State *L, const char *fname, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Pushes "FILE:LINE: " of the policy line that called the running C
 * function (skipping pcall and kumod's own Lua glue), or "" when no Lua
 * frame of the policy is on the stack. */
void lualib_push_where(lua_State *L);
/* Creates the metatable name (once per state; later calls change nothing)
 * with methods as its __index table, and gc / tostring as __gc /
 * __tostring when not NULL. Leaves the stack as it was. */
void lualib_new_metatable(lua_State *L, const char *name, const luaL_Reg *methods,
                          lua_CFunction gc, lua_CFunction tostring);

/* The modules (defined in their own files). */
extern const lualib_module lualib_serde, lualib_serde_compat, lualib_string, lualib_regex,
    lualib_regex_set_map, lualib_domain_map, lualib_cidr, lualib_memoize, lualib_jsonl,
    lualib_bounce, lualib_trace_header;

#endif
