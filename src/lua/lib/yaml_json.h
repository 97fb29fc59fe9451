/* YAML text <-> jansson values, over libyaml. Pure functions, any thread.
 *
 * Parsing follows the YAML 1.2 core schema for plain scalars, as KumoMTA's
 * serde_yaml does: null/Null/NULL/~/empty -> null, true/True/TRUE and
 * false/False/FALSE -> booleans, decimal/0x/0o integers -> integers,
 * decimals with a point or exponent -> reals (.inf/.nan -> null, since JSON
 * has no such number), everything else and every quoted or !!str scalar ->
 * strings. Mapping keys are the text of scalar keys; a sequence or mapping
 * used as a key is an error. Anchors and aliases work; the total size an
 * alias expansion would reach is bounded, so a "billion laughs" document is
 * an error rather than an exhausted memory. One document per text: two or
 * more is an error (as with KumoMTA), none is null. */
#ifndef KUMOD_LUA_LIB_YAML_JSON_H
#define KUMOD_LUA_LIB_YAML_JSON_H
#include <jansson.h>
#include <stddef.h>

/* Returns a new reference (json_null() for an empty text) or NULL with
 * "line L, column C: why" in err. */
json_t *yaml_json_parse(const char *text, size_t len, char *err, size_t errlen);

/* Serialises v as a block-style YAML document (no "---" marker), quoting
 * strings that would read back as another type. Returns a malloc'd string
 * or NULL with the reason in err. */
char *yaml_json_encode(const json_t *v, char *err, size_t errlen);

#endif
