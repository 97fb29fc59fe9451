/* Message construction, reference counting and the spool meta document.
 * Reference counts are atomic (Lua userdata on a reactor and a spool
 * callback may drop theirs on different threads); the fields themselves are
 * only touched by the thread that currently owns the message. Allocation
 * failures abort (x-allocation), except data buffers sized by the client,
 * which report KERR_NOMEM. */
#include "msg/message.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/jsonw.h"
#include "core/kerr.h"
#include "core/utf8.h"
#include "core/xalloc.h"

static atomic_long live_messages;

long message_live_count(void)
{
    return atomic_load(&live_messages);
}

static message *message_make(const spoolid *id, const char *sender, const char *const *rcpts,
                             size_t n)
{
    message *m = xcalloc(1, sizeof(*m));
    atomic_fetch_add(&live_messages, 1);
    m->refs = 1;
    if (id)
        m->id = *id;
    else
        spoolid_new(&m->id);
    m->sender = xstrdup(sender ? sender : "");
    message_set_recipients(m, rcpts, n);
    m->meta = json_object();
    m->meta_dirty = true;
    return m;
}

message *message_new(const spoolid *id, const char *sender, const char *const *rcpts, size_t n)
{
    message *m = message_make(id, sender, rcpts, n);
    m->trace = msgtrace_for(&m->id); /* NULL unless sampled: one compare */
    return m;
}

message *message_new_transient(const char *sender, const char *const *rcpts, size_t n)
{
    message *m = message_make(NULL, sender, rcpts, n);
    m->trace = msgtrace_private(&m->id);
    return m;
}

void message_ref(message *m)
{
    __atomic_add_fetch(&m->refs, 1, __ATOMIC_RELAXED);
}

static void free_rcpts(message *m)
{
    for (size_t i = 0; i < m->n_rcpts; i++)
        free(m->rcpts[i]);
    free(m->rcpts);
    m->rcpts = NULL;
    m->n_rcpts = 0;
}

void message_unref(message *m)
{
    if (!m || __atomic_sub_fetch(&m->refs, 1, __ATOMIC_ACQ_REL) > 0)
        return;
    free(m->sender);
    free_rcpts(m);
    json_decref(m->meta);
    json_decref(m->scheduling);
    hdr_index_fini(m->hidx);
    free(m->hidx);
    free(m->data);
    msgtrace_unref(m->trace);
    free(m);
    atomic_fetch_sub(&live_messages, 1);
}

int message_set_data(message *m, const char *buf, size_t len)
{
    char *copy = malloc(len + 1);
    if (!copy)
        return KERR_NOMEM;
    memcpy(copy, buf, len);
    copy[len] = 0;
    message_set_data_take(m, copy, len);
    return 0;
}

static atomic_ulong index_builds;

unsigned long message_header_index_builds(void)
{
    return atomic_load(&index_builds);
}

const hdr_index *message_headers(message *m)
{
    if (m->hidx)
        return m->hidx;
    if (!m->data)
        return NULL;
    hdr_index *ix = malloc(sizeof(*ix));
    if (!ix)
        return NULL;
    if (hdr_index_build(m->data, m->data_len, ix) != 0) {
        free(ix);
        return NULL;
    }
    atomic_fetch_add(&index_builds, 1);
    m->hidx = ix;
    return ix;
}

void message_set_data_take(message *m, char *buf_take, size_t len)
{
    /* the index points into the old buffer */
    hdr_index_fini(m->hidx);
    free(m->hidx);
    m->hidx = NULL;
    free(m->data);
    m->data = buf_take;
    m->data_len = len;
    m->data_dirty = true;
}

int message_set_sender(message *m, const char *sender)
{
    free(m->sender);
    m->sender = xstrdup(sender ? sender : "");
    m->meta_dirty = true;
    return 0;
}

int message_set_recipients(message *m, const char *const *rcpts, size_t n)
{
    char **copy = n ? xcalloc(n, sizeof(char *)) : NULL;
    for (size_t i = 0; i < n; i++)
        copy[i] = xstrdup(rcpts[i] ? rcpts[i] : "");
    free_rcpts(m);
    m->rcpts = copy;
    m->n_rcpts = n;
    m->meta_dirty = true;
    return 0;
}

/* An envelope address as JSON text. Every way in (SMTP, HTTP, the Lua
 * binding) refuses addresses that are not UTF-8; should one still get here,
 * its invalid bytes become U+FFFD rather than the field going missing: a
 * meta without its sender could never be read back (issue 25). */
static json_t *jaddr(const char *s)
{
    size_t n = strlen(s);
    if (utf8_valid(s, n))
        return json_stringn_nocheck(s, n);
    fprintf(stderr, "kumod: envelope address is not valid UTF-8; storing it with replacements\n");
    char *buf = malloc(n * 3 + 1);
    if (!buf) {
        fputs("kumod: out of memory\n", stderr);
        abort();
    }
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        long k = utf8_seq((const unsigned char *)s + i, n - i);
        if (k > 0) {
            memcpy(buf + o, s + i, (size_t)k);
            o += (size_t)k;
            i += (size_t)k;
        } else {
            memcpy(buf + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i += (size_t)-k;
        }
    }
    json_t *j = json_stringn_nocheck(buf, o);
    free(buf);
    return j;
}

char *message_meta_to_json(const message *m, size_t *len)
{
    json_t *doc = json_object();
    json_object_set_new(doc, "sender", jaddr(m->sender));
    if (m->n_rcpts == 1) {
        json_object_set_new(doc, "recipient", jaddr(m->rcpts[0]));
    } else {
        json_t *a = json_array();
        for (size_t i = 0; i < m->n_rcpts; i++)
            json_array_append_new(a, jaddr(m->rcpts[i]));
        json_object_set_new(doc, "recipient", a);
    }
    json_object_set(doc, "meta", m->meta);
    if (m->scheduling)
        json_object_set(doc, "schedule", m->scheduling);
    size_t n = 0;
    char *s = jsonw_dumps(doc, &n);
    json_decref(doc);
    if (!s) {
        fputs("kumod: out of memory\n", stderr);
        abort();
    }
    if (len)
        *len = n;
    return s;
}

int message_from_meta_json(const spoolid *id, const char *buf, size_t len, message **out)
{
    json_error_t e;
    /* JSON_ALLOW_NUL: a policy may store a string holding NUL in meta */
    json_t *doc = json_loadb(buf, len, JSON_ALLOW_NUL, &e);
    if (!doc || !json_is_object(doc)) {
        json_decref(doc);
        return KERR_PARSE;
    }
    const char *sender = json_string_value(json_object_get(doc, "sender"));
    json_t *r = json_object_get(doc, "recipient");
    json_t *meta = json_object_get(doc, "meta");
    if (!sender || !r || (meta && !json_is_object(meta))) {
        json_decref(doc);
        return KERR_PARSE;
    }
    const char *one[1];
    const char **rcpts = one;
    size_t n = 0;
    if (json_is_string(r)) {
        one[0] = json_string_value(r);
        n = 1;
    } else if (json_is_array(r)) {
        n = json_array_size(r);
        rcpts = xcalloc(n ? n : 1, sizeof(char *));
        for (size_t i = 0; i < n; i++) {
            rcpts[i] = json_string_value(json_array_get(r, i));
            if (!rcpts[i]) {
                free(rcpts);
                json_decref(doc);
                return KERR_PARSE;
            }
        }
    } else {
        json_decref(doc);
        return KERR_PARSE;
    }
    message *m = message_make(id, sender, rcpts, n);
    /* loaded again: it joins the trace made at reception, never a new one */
    m->trace = msgtrace_find(id);
    if (rcpts != one)
        free(rcpts);
    if (meta) {
        json_decref(m->meta);
        m->meta = json_incref(meta);
    }
    json_t *sched = json_object_get(doc, "schedule");
    if (sched && json_is_object(sched))
        m->scheduling = json_incref(sched);
    m->meta_dirty = false;
    m->data_dirty = false;
    m->in_spool = true;
    json_decref(doc);
    *out = m;
    return 0;
}

const char *address_domain(const char *addr)
{
    const char *at = strrchr(addr, '@');
    return at ? at + 1 : "";
}
