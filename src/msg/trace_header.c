/* The supplemental trace header. The JSON object is compact (jansson,
 * keys in insertion order: "_@_", "recipient", then the named meta values
 * that are present), base64 without line breaks, the one token folded with
 * CRLF TAB so that the field stays under 78 columns. Owns nothing. */
#include "msg/trace_header.h"

#include <stdlib.h>
#include <string.h>

#include "core/kerr.h"

static const char b64chars[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static char *b64(const unsigned char *in, size_t n)
{
    char *out = malloc((n + 2) / 3 * 4 + 1);
    if (!out)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)in[i] << 16;
        if (i + 1 < n)
            v |= (unsigned)in[i + 1] << 8;
        if (i + 2 < n)
            v |= in[i + 2];
        out[o++] = b64chars[(v >> 18) & 63];
        out[o++] = b64chars[(v >> 12) & 63];
        out[o++] = i + 1 < n ? b64chars[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < n ? b64chars[v & 63] : '=';
    }
    out[o] = 0;
    return out;
}

int trace_header_supplemental(message *m, const char *name, const json_t *include_meta_names)
{
    if (!m->data)
        return KERR_INVAL;
    json_t *o = json_object();
    if (!o)
        return KERR_NOMEM;
    json_object_set_new(o, "_@_", json_string("\\_/"));
    if (m->n_rcpts == 1) {
        json_object_set_new(o, "recipient", json_string(m->rcpts[0]));
    } else {
        json_t *a = json_array();
        for (size_t i = 0; i < m->n_rcpts; i++)
            json_array_append_new(a, json_string(m->rcpts[i]));
        json_object_set_new(o, "recipient", a);
    }
    size_t i;
    json_t *v;
    json_array_foreach(include_meta_names, i, v)
    {
        const char *mn = json_string_value(v);
        json_t *mv = mn && m->meta ? json_object_get(m->meta, mn) : NULL;
        if (mv)
            json_object_set(o, mn, mv);
    }
    char *js = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    char *enc = js ? b64((const unsigned char *)js, strlen(js)) : NULL;
    free(js);
    if (!enc)
        return KERR_NOMEM;
    size_t bl = strlen(enc), hn = strlen(name) + 2;
    char *buf = malloc(hn + bl + bl / 60 * 3 + 8 + m->data_len);
    if (!buf) {
        free(enc);
        return KERR_NOMEM;
    }
    size_t fo = 0, col = hn;
    memcpy(buf, name, hn - 2);
    memcpy(buf + hn - 2, ": ", 2);
    fo = hn;
    for (size_t k = 0; k < bl; k++) {
        if (col >= 75) {
            memcpy(buf + fo, "\r\n\t", 3);
            fo += 3;
            col = 1;
        }
        buf[fo++] = enc[k];
        col++;
    }
    free(enc);
    memcpy(buf + fo, "\r\n", 2);
    fo += 2;
    memcpy(buf + fo, m->data, m->data_len);
    buf[fo + m->data_len] = 0;
    message_set_data_take(m, buf, fo + m->data_len);
    return 0;
}
