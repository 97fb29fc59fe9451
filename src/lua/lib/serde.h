/* kumo.serde: JSON, TOML and YAML for policies, and the Lua -> JSON text
 * encoder the other modules share (memoize keys). The parsers' pure cores
 * are jsonc.h, toml_json.h and yaml_json.h. Runs on the VM's thread. */
#ifndef KUMOD_LUA_LIB_SERDE_H
#define KUMOD_LUA_LIB_SERDE_H
#include <lua.h>
#include <stddef.h>

enum {
    SERDE_PRETTY = 1,    /* serde_json's pretty layout: two-space indent, "key": value */
    SERDE_SORT = 2,      /* object keys in byte order */
    SERDE_RAW_BYTES = 4, /* invalid UTF-8 is written as \xHH escapes instead of failing */
};

/* Encodes the Lua value at idx as JSON text the way KumoMTA's serde_json
 * does: tables whose keys are exactly 1..n are arrays, other tables objects
 * (an empty table is {}), integer keys become strings, integers print as
 * integers and floats as their shortest round-trip form with ".0" when
 * integral, NaN and infinities as null. Userdata with a __tojson metamethod
 * encode as what it returns. Returns 0 with a malloc'd text in *out, or -1
 * with the reason in err (a function, a cycle, invalid UTF-8). */
int serde_encode_json(lua_State *L, int idx, int flags, char **out, size_t *outlen, char *err,
                      size_t errlen);

#endif
