/* YAML <-> JSON over libyaml's event API (see yaml_json.h). The parser
 * builds jansson values on an explicit stack of open containers, so deep
 * nesting costs heap, not C stack, and is capped. Anchored nodes are shared
 * by reference (json_incref) when aliased; every node carries a weight (the
 * number of values it expands to) and the document's total weight is capped.
 * Pure; any thread. */
#include "lua/lib/yaml_json.h"

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#define YJ_MAX_DEPTH 256
#define YJ_MAX_WEIGHT 4000000 /* values after alias expansion */

struct anchor {
    char *name;
    json_t *v;
    size_t weight;
};

struct frame {
    json_t *c; /* the open array or object */
    char *key; /* object: the pending key, or NULL */
    size_t keylen;
    char *anchor; /* anchor of this container, registered when it closes */
    size_t weight;
};

struct yj {
    struct frame st[YJ_MAX_DEPTH];
    int depth;
    struct anchor *anchors;
    size_t n_anchors, cap_anchors;
    size_t total;
    json_t *root;
    char *err;
    size_t errlen;
};

static bool match(const char *s, size_t n, const char *const *words)
{
    for (int i = 0; words[i]; i++)
        if (strlen(words[i]) == n && memcmp(s, words[i], n) == 0)
            return true;
    return false;
}

static const char *const nulls[] = {"~", "null", "Null", "NULL", NULL};
static const char *const trues[] = {"true", "True", "TRUE", NULL};
static const char *const falses[] = {"false", "False", "FALSE", NULL};

/* Integer per the core schema: [-+]?[0-9]+ | 0o[0-7]+ | 0x[0-9a-fA-F]+. */
static bool scalar_int(const char *s, size_t n, json_int_t *out)
{
    char buf[80];
    if (n == 0 || n >= sizeof(buf))
        return false;
    memcpy(buf, s, n);
    buf[n] = 0;
    int base = 10;
    const char *p = buf;
    bool neg = false;
    if (n > 2 && buf[0] == '0' && (buf[1] == 'x' || buf[1] == 'o')) {
        base = buf[1] == 'x' ? 16 : 8;
        p = buf + 2;
    } else if (*p == '-' || *p == '+') {
        neg = *p == '-';
        p++;
    }
    if (!*p)
        return false;
    for (const char *q = p; *q; q++) {
        bool ok = base == 16  ? strchr("0123456789abcdefABCDEF", *q) != NULL
                  : base == 8 ? (*q >= '0' && *q <= '7')
                              : (*q >= '0' && *q <= '9');
        if (!ok)
            return false;
    }
    errno = 0;
    unsigned long long u = strtoull(p, NULL, base);
    if (errno == ERANGE)
        return false; /* too big: a float or a string, as below */
    if (neg) {
        if (u > (unsigned long long)INT64_MAX + 1)
            return false;
        *out = (json_int_t)(0 - u);
    } else {
        if (u > (unsigned long long)INT64_MAX)
            return false;
        *out = (json_int_t)u;
    }
    return true;
}

/* Float per the core schema: [-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?
 * and .inf/.nan spellings. *special is set for inf/nan. */
static bool scalar_float(const char *s, size_t n, double *out, bool *special)
{
    static const char *const infs[] = {".inf",  ".Inf",  ".INF",  "+.inf", "+.Inf",
                                       "+.INF", "-.inf", "-.Inf", "-.INF", NULL};
    static const char *const nans[] = {".nan", ".NaN", ".NAN", NULL};
    *special = false;
    if (match(s, n, infs) || match(s, n, nans)) {
        *special = true;
        return true;
    }
    size_t i = 0;
    if (i < n && (s[i] == '-' || s[i] == '+'))
        i++;
    size_t digits = 0;
    while (i < n && s[i] >= '0' && s[i] <= '9')
        i++, digits++;
    if (i < n && s[i] == '.') {
        i++;
        while (i < n && s[i] >= '0' && s[i] <= '9')
            i++, digits++;
    }
    if (digits == 0)
        return false;
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < n && (s[i] == '-' || s[i] == '+'))
            i++;
        size_t ed = 0;
        while (i < n && s[i] >= '0' && s[i] <= '9')
            i++, ed++;
        if (ed == 0)
            return false;
    }
    if (i != n || n >= 400)
        return false;
    char buf[400];
    memcpy(buf, s, n);
    buf[n] = 0;
    *out = strtod(buf, NULL);
    return true;
}

static json_t *scalar_value(const yaml_event_t *ev)
{
    const char *s = (const char *)ev->data.scalar.value;
    size_t n = ev->data.scalar.length;
    const char *tag = (const char *)ev->data.scalar.tag;
    bool plain = ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
    if (tag && strcmp(tag, YAML_STR_TAG) == 0)
        plain = false;
    if (plain) {
        if (n == 0 || match(s, n, nulls))
            return json_null();
        if (match(s, n, trues))
            return json_true();
        if (match(s, n, falses))
            return json_false();
        json_int_t i;
        if (scalar_int(s, n, &i))
            return json_integer(i);
        double d;
        bool special;
        if (scalar_float(s, n, &d, &special))
            return special || !isfinite(d) ? json_null() : json_real(d);
    }
    return json_stringn_nocheck(s, n);
}

static int fail(struct yj *y, size_t line, size_t col, const char *why)
{
    snprintf(y->err, y->errlen, "line %zu, column %zu: %s", line + 1, col + 1, why);
    return -1;
}

static int add_anchor(struct yj *y, const char *name, json_t *v, size_t weight)
{
    if (y->n_anchors == y->cap_anchors) {
        size_t cap = y->cap_anchors ? y->cap_anchors * 2 : 8;
        struct anchor *a = realloc(y->anchors, cap * sizeof(*a));
        if (!a)
            return -1;
        y->anchors = a;
        y->cap_anchors = cap;
    }
    char *dup = strdup(name);
    if (!dup)
        return -1;
    /* a later anchor of the same name shadows the earlier one */
    y->anchors[y->n_anchors++] = (struct anchor){dup, json_incref(v), weight};
    return 0;
}

static struct anchor *find_anchor(struct yj *y, const char *name)
{
    for (size_t i = y->n_anchors; i-- > 0;)
        if (strcmp(y->anchors[i].name, name) == 0)
            return &y->anchors[i];
    return NULL;
}

/* Places a completed value (taking the reference) into the open container
 * or as the root. For an object whose key is pending, v is the key when it
 * is a scalar; keys that are not scalars are rejected by the caller. */
static int place(struct yj *y, json_t *v, size_t weight, const yaml_event_t *ev)
{
    y->total += weight;
    if (y->total > YJ_MAX_WEIGHT) {
        json_decref(v);
        return fail(y, ev->start_mark.line, ev->start_mark.column,
                    "document too large after alias expansion");
    }
    if (y->depth == 0) {
        if (y->root) {
            json_decref(v);
            return fail(y, ev->start_mark.line, ev->start_mark.column, "more than one root value");
        }
        y->root = v;
        return 0;
    }
    struct frame *f = &y->st[y->depth - 1];
    f->weight += weight;
    if (json_is_array(f->c)) {
        json_array_append_new(f->c, v);
        return 0;
    }
    /* object: the value for the pending key */
    int rc = json_object_setn_new_nocheck(f->c, f->key, f->keylen, v);
    free(f->key);
    f->key = NULL;
    return rc == 0 ? 0 : fail(y, ev->start_mark.line, ev->start_mark.column, "out of memory");
}

/* In an object with no pending key, a scalar is the next key. */
static bool wants_key(struct yj *y)
{
    return y->depth > 0 && json_is_object(y->st[y->depth - 1].c) && y->st[y->depth - 1].key == NULL;
}

static int set_key(struct yj *y, const char *s, size_t n)
{
    struct frame *f = &y->st[y->depth - 1];
    f->key = malloc(n + 1);
    if (!f->key)
        return -1;
    memcpy(f->key, s, n);
    f->key[n] = 0;
    f->keylen = n;
    return 0;
}

static int on_event(struct yj *y, const yaml_event_t *ev)
{
    const yaml_mark_t *m = &ev->start_mark;
    switch (ev->type) {
    case YAML_SCALAR_EVENT: {
        if (wants_key(y))
            return set_key(y, (const char *)ev->data.scalar.value, ev->data.scalar.length) == 0
                       ? 0
                       : fail(y, m->line, m->column, "out of memory");
        json_t *v = scalar_value(ev);
        if (!v)
            return fail(y, m->line, m->column, "out of memory");
        if (ev->data.scalar.anchor && add_anchor(y, (const char *)ev->data.scalar.anchor, v, 1))
            return fail(y, m->line, m->column, "out of memory");
        return place(y, v, 1, ev);
    }
    case YAML_ALIAS_EVENT: {
        struct anchor *a = find_anchor(y, (const char *)ev->data.alias.anchor);
        if (!a)
            return fail(y, m->line, m->column, "unknown anchor");
        if (wants_key(y)) {
            if (!json_is_string(a->v))
                return fail(y, m->line, m->column, "a mapping key must be a scalar");
            return set_key(y, json_string_value(a->v), json_string_length(a->v)) == 0
                       ? 0
                       : fail(y, m->line, m->column, "out of memory");
        }
        return place(y, json_incref(a->v), a->weight, ev);
    }
    case YAML_SEQUENCE_START_EVENT:
    case YAML_MAPPING_START_EVENT: {
        if (wants_key(y))
            return fail(y, m->line, m->column, "a mapping key must be a scalar");
        if (y->depth == YJ_MAX_DEPTH)
            return fail(y, m->line, m->column, "nested too deeply");
        bool seq = ev->type == YAML_SEQUENCE_START_EVENT;
        const yaml_char_t *anchor =
            seq ? ev->data.sequence_start.anchor : ev->data.mapping_start.anchor;
        struct frame *f = &y->st[y->depth];
        *f = (struct frame){.c = seq ? json_array() : json_object()};
        if (!f->c || (anchor && !(f->anchor = strdup((const char *)anchor)))) {
            json_decref(f->c);
            return fail(y, m->line, m->column, "out of memory");
        }
        y->depth++;
        return 0;
    }
    case YAML_SEQUENCE_END_EVENT:
    case YAML_MAPPING_END_EVENT: {
        struct frame f = y->st[--y->depth];
        free(f.key); /* none pending after a well-formed mapping */
        size_t w = f.weight + 1;
        y->total -= f.weight; /* counted again through place() */
        int rc = 0;
        if (f.anchor) {
            rc = add_anchor(y, f.anchor, f.c, w);
            free(f.anchor);
        }
        if (rc)
            return fail(y, m->line, m->column, "out of memory");
        return place(y, f.c, w, ev);
    }
    case YAML_DOCUMENT_START_EVENT:
        if (y->root)
            return fail(y, m->line, m->column,
                        "deserializing from YAML containing more than one document is not "
                        "supported");
        return 0;
    default:
        return 0;
    }
}

json_t *yaml_json_parse(const char *text, size_t len, char *err, size_t errlen)
{
    struct yj *y = calloc(1, sizeof(*y));
    if (!y) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    y->err = err;
    y->errlen = errlen;
    yaml_parser_t p;
    if (!yaml_parser_initialize(&p)) {
        free(y);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    yaml_parser_set_input_string(&p, (const unsigned char *)text, len);
    int rc = 0;
    for (;;) {
        yaml_event_t ev;
        if (!yaml_parser_parse(&p, &ev)) {
            snprintf(err, errlen, "line %zu, column %zu: %s%s%s", p.problem_mark.line + 1,
                     p.problem_mark.column + 1, p.problem ? p.problem : "syntax error",
                     p.context ? " " : "", p.context ? p.context : "");
            rc = -1;
            break;
        }
        bool end = ev.type == YAML_STREAM_END_EVENT;
        rc = on_event(y, &ev);
        yaml_event_delete(&ev);
        if (rc || end)
            break;
    }
    yaml_parser_delete(&p);
    while (y->depth > 0) {
        struct frame *f = &y->st[--y->depth];
        json_decref(f->c);
        free(f->key);
        free(f->anchor);
    }
    for (size_t i = 0; i < y->n_anchors; i++) {
        free(y->anchors[i].name);
        json_decref(y->anchors[i].v);
    }
    free(y->anchors);
    json_t *root = y->root;
    free(y);
    if (rc) {
        json_decref(root);
        return NULL;
    }
    return root ? root : json_null();
}

/* ---- encoding ---------------------------------------------------------- */

struct buf {
    char *p;
    size_t n, cap;
    bool oom;
};

static int buf_write(void *data, unsigned char *s, size_t n)
{
    struct buf *b = data;
    if (b->n + n + 1 > b->cap) {
        size_t cap = (b->n + n + 1) * 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = true;
            return 0;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
    return 1;
}

/* Would this string, written plain, read back as something else? */
static bool needs_quotes(const char *s, size_t n)
{
    if (n == 0 || match(s, n, nulls) || match(s, n, trues) || match(s, n, falses))
        return true;
    json_int_t i;
    double d;
    bool special;
    if (scalar_int(s, n, &i) || scalar_float(s, n, &d, &special))
        return true;
    /* the old YAML 1.1 booleans, which other readers still honour */
    static const char *const yes_no[] = {"y",  "Y",  "yes", "Yes", "YES", "n",   "N",   "no", "No",
                                         "NO", "on", "On",  "ON",  "off", "Off", "OFF", NULL};
    return match(s, n, yes_no);
}

static int emit_value(yaml_emitter_t *e, const json_t *v, int depth)
{
    yaml_event_t ev;
    char num[64];
    if (depth > YJ_MAX_DEPTH)
        return -1;
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        if (!yaml_mapping_start_event_initialize(&ev, NULL, NULL, 1, YAML_BLOCK_MAPPING_STYLE) ||
            !yaml_emitter_emit(e, &ev))
            return -1;
        const char *k;
        size_t klen;
        json_t *m;
        json_object_keylen_foreach((json_t *)v, k, klen, m)
        {
            json_t *key = json_stringn_nocheck(k, klen);
            int rc = key ? emit_value(e, key, depth + 1) : -1;
            json_decref(key);
            if (rc || emit_value(e, m, depth + 1))
                return -1;
        }
        if (!yaml_mapping_end_event_initialize(&ev) || !yaml_emitter_emit(e, &ev))
            return -1;
        return 0;
    }
    case JSON_ARRAY: {
        if (!yaml_sequence_start_event_initialize(&ev, NULL, NULL, 1, YAML_BLOCK_SEQUENCE_STYLE) ||
            !yaml_emitter_emit(e, &ev))
            return -1;
        size_t i;
        json_t *m;
        json_array_foreach(v, i, m)
        {
            if (emit_value(e, m, depth + 1))
                return -1;
        }
        if (!yaml_sequence_end_event_initialize(&ev) || !yaml_emitter_emit(e, &ev))
            return -1;
        return 0;
    }
    case JSON_STRING: {
        const char *s = json_string_value(v);
        size_t n = json_string_length(v);
        yaml_scalar_style_t style = needs_quotes(s, n)   ? YAML_SINGLE_QUOTED_SCALAR_STYLE
                                    : memchr(s, '\n', n) ? YAML_LITERAL_SCALAR_STYLE
                                                         : YAML_ANY_SCALAR_STYLE;
        if (!yaml_scalar_event_initialize(&ev, NULL, NULL, (yaml_char_t *)s, (int)n, 1, 1, style))
            return -1;
        return yaml_emitter_emit(e, &ev) ? 0 : -1;
    }
    case JSON_INTEGER:
        snprintf(num, sizeof(num), "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        break;
    case JSON_REAL: {
        double d = json_real_value(v);
        snprintf(num, sizeof(num), "%.17g", d);
        /* shortest text that reads back as the same number */
        for (int prec = 1; prec <= 17; prec++) {
            char t[64];
            snprintf(t, sizeof(t), "%.*g", prec, d);
            if (strtod(t, NULL) == d) {
                memcpy(num, t, sizeof(t));
                break;
            }
        }
        if (!strpbrk(num, ".eEn"))
            strcat(num, ".0");
        break;
    }
    case JSON_TRUE:
        strcpy(num, "true");
        break;
    case JSON_FALSE:
        strcpy(num, "false");
        break;
    case JSON_NULL:
        strcpy(num, "null");
        break;
    }
    if (!yaml_scalar_event_initialize(&ev, NULL, NULL, (yaml_char_t *)num, (int)strlen(num), 1, 1,
                                      YAML_PLAIN_SCALAR_STYLE))
        return -1;
    return yaml_emitter_emit(e, &ev) ? 0 : -1;
}

char *yaml_json_encode(const json_t *v, char *err, size_t errlen)
{
    yaml_emitter_t e;
    struct buf b = {0};
    if (!yaml_emitter_initialize(&e)) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    yaml_emitter_set_output(&e, buf_write, &b);
    yaml_emitter_set_unicode(&e, 1);
    yaml_emitter_set_width(&e, -1);
    yaml_event_t ev;
    int ok = yaml_stream_start_event_initialize(&ev, YAML_UTF8_ENCODING) &&
             yaml_emitter_emit(&e, &ev) &&
             yaml_document_start_event_initialize(&ev, NULL, NULL, NULL, 1) &&
             yaml_emitter_emit(&e, &ev) && emit_value(&e, v, 0) == 0 &&
             yaml_document_end_event_initialize(&ev, 1) && yaml_emitter_emit(&e, &ev) &&
             yaml_stream_end_event_initialize(&ev) && yaml_emitter_emit(&e, &ev) &&
             yaml_emitter_flush(&e);
    if (!ok) {
        snprintf(err, errlen, "%s",
                 b.oom       ? "out of memory"
                 : e.problem ? e.problem
                             : "value cannot be written as YAML (nested too deeply?)");
        yaml_emitter_delete(&e);
        free(b.p);
        return NULL;
    }
    yaml_emitter_delete(&e);
    return b.p ? b.p : strdup("");
}
