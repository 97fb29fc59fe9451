/* JSON with comments, as KumoMTA's json_parse/json_load accept it: C block
 * comments, C++ line comments and shell (#) line comments outside strings
 * read as spaces. Pure functions, any thread. */
#ifndef KUMOD_LUA_LIB_JSONC_H
#define KUMOD_LUA_LIB_JSONC_H
#include <jansson.h>
#include <stddef.h>

/* Overwrites every comment in buf (len bytes) with spaces, keeping line
 * breaks so that error positions stay right. An unterminated block comment
 * runs to the end. */
void jsonc_strip_comments(char *buf, size_t len);

/* Parses len bytes of JSON-with-comments (any value at the top level).
 * Returns a new reference or NULL with "line L column C: why" in err. */
json_t *jsonc_parse(const char *text, size_t len, char *err, size_t errlen);

#endif
