/* TOML text <-> jansson values, over toml++ (TOML 1.0). The only C++ in
 * kumod lives behind this C interface (toml_json.cpp). Pure functions, any
 * thread; they never throw and never abort on bad input.
 *
 * Parsing maps TOML onto JSON: tables -> objects, arrays -> arrays, strings,
 * integers (64-bit), booleans; floats -> reals, except inf and nan, which
 * JSON cannot hold (an error names the key). Dates, times and date-times
 * become strings in their RFC 3339 / TOML form ("1979-05-27T07:32:00Z",
 * "1979-05-27", "07:32:00"): KumoMTA's documentation says nothing of them,
 * and a string is what a policy can use. */
#ifndef KUMOD_LUA_LIB_TOML_JSON_H
#define KUMOD_LUA_LIB_TOML_JSON_H
#include <jansson.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Parses len bytes of TOML (need not be NUL-terminated; invalid UTF-8 is a
 * parse error). Returns a new object, or NULL with "line L, column C: why"
 * in err. source names the text in messages (a file name) or is NULL. */
json_t *toml_json_parse(const char *text, size_t len, const char *source, char *err, size_t errlen);
/* The same, but every object keeps the keys in the order the document
 * wrote them (toml_json_parse's follow toml++'s sorted order): for formats
 * where the order of a table's keys means something (bounce rules: the
 * first category listed wins). */
json_t *toml_json_parse_ordered(const char *text, size_t len, const char *source, char *err,
                                size_t errlen);

enum toml_json_style {
    TOML_JSON_PLAIN = 0,   /* basic strings, arrays on one line */
    TOML_JSON_PRETTY = 1,  /* multi-line strings, wrapped arrays, indentation */
    TOML_JSON_COMPACT = 2, /* pretty, keys sorted, empty tables inline (key = {}) */
};

/* Serialises v (must be an object: a TOML document is a table) as TOML.
 * JSON null has no TOML form: a null member is left out, as a Lua nil
 * would be, and a null array element is an error. Returns a malloc'd
 * NUL-terminated string or NULL with the reason in err. Keys come out in
 * sorted order (toml++ keeps tables sorted). */
char *toml_json_encode(const json_t *v, enum toml_json_style style, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif
#endif
