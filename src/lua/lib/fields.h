/* Reading object-style parameter tables ({ host = ..., port = ... }) in C
 * functions of the library, with KumoMTA's strictness: an unknown field is
 * an error, and so is a field of the wrong type. Every error is raised with
 * lualib_error, naming fname (the function) and the field. t is an absolute
 * stack index of the table. */
#ifndef KUMOD_LUA_LIB_FIELDS_H
#define KUMOD_LUA_LIB_FIELDS_H
#include <lua.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Raises for a key that is not a string or not in names (NULL-ended);
 * what names the table ("parameters", "connection"). */
void fields_check_known(lua_State *L, int t, const char *fname, const char *what,
                        const char *const *names);
/* The string field k, or NULL when absent (len set when not NULL). The
 * pointer lives as long as the table holds the string. */
const char *fields_opt_string(lua_State *L, int t, const char *k, const char *fname,
                              size_t *len);
/* Whether the integer field k is there; raises unless lo <= value <= hi. */
bool fields_opt_integer(lua_State *L, int t, const char *k, const char *fname, lua_Integer lo,
                        lua_Integer hi, lua_Integer *out);
bool fields_opt_bool(lua_State *L, int t, const char *k, const char *fname, bool def);
/* A duration: a string ("5s", "2 minutes") or a number of seconds; 0 when
 * absent, else at least 1 ms. */
int64_t fields_opt_duration_ms(lua_State *L, int t, const char *k, const char *fname);

#endif
