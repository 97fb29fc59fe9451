/* POST /api/inject/v1: KumoMTA's HTTP injection API (spec §4).
 *
 * The request is validated field by field (400 naming the field), its
 * templates and attachments are compiled once (422 with the reason), then
 * each recipient in turn gets its own message: expanded content (the RFC
 * 5322 string, or a MIME message built from the builder object), meta
 * (http_auth, reception_protocol, received_from, received_via, hostname,
 * extra), the http_message_generated event, trace headers, and a synced
 * spool save. All saves of a request run concurrently and share group
 * commits; only when every save has completed are the Reception records
 * written, the messages handed to their queues and the 200 sent. So a 200
 * means every message counted in success_count is durable.
 *
 * Owns the inject job (parsed body, compiled templates, the messages) from
 * the request to the reply, all on the reactor that accepted the request;
 * spool completions are posted back to it. A recipient that fails (bad
 * address, a policy error or rejection, a failed save or insert) is counted
 * in fail_count with its reason; when every recipient failed because the
 * spool refuses writes the answer is 503. deferred_generation: the
 * messages are generated at once (kumod's generation is cheap enough that
 * queueing the request itself buys nothing), and the answer is KumoMTA's
 * documented one for a queued request: every count 0, no errors (template
 * errors are still 422, as KumoMTA compiles before queueing). */
#include <event2/event.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "core/diag.h"
#include "core/kerr.h"
#include "core/reactor.h"
#include "core/spoolid.h"
#include "http/mime.h"
#include "http/inject.h"
#include "http/inject_limit.h"
#include "http/request.h"
#include "http/template.h"
#include "log/loghook.h"
#include "log/logs.h"
#include "lua/klua.h"
#include "lua/message_lua.h"
#include "lua/services.h"
#include "msg/headers.h"
#include "msg/message.h"
#include "msg/queue_name.h"
#include "msg/trace_header.h"
#include "queue/queue.h"
#include "spool/spool.h"

#define IMOD "kumod::http_inject"

typedef struct inj_hdr {
    const char *name;
    tmpl *value;            /* unstructured header template */
    tmpl *mb_name, *mb_addr; /* From / Reply-To: name and address templates */
} inj_hdr;

typedef struct inj_attach {
    unsigned char *data;
    size_t len;
    const char *content_type, *file_name, *content_id;
} inj_attach;

typedef struct inj_rcpt {
    const char *email;
    const char *name;
    const json_t *subst;
    const json_t *metadata;
    message *m;
    char *queue;
    char *error;
    int save_err;
    int64_t rx_time_ns; /* the Reception record's time, once prelogged */
    bool null_queue;
    bool saved;
    bool prelogged; /* the log hooks have its Reception record */
} inj_rcpt;

typedef struct inject_job {
    /* where the request came from (copies) and who hears the outcome */
    char *peer_ip, *local_ip, *hostname; /* local_ip, hostname: NULL from Lua */
    json_t *auth;
    reactor *r;
    inject_done_fn done;
    void *done_ud;
    json_t *body;
    const char *sender;
    tmpl_dialect dialect;
    /* content */
    bool builder;
    tmpl *content;
    tmpl *text, *html, *amp;
    inj_hdr *hdrs;
    size_t n_hdrs;
    bool have_to;
    inj_attach *att;
    size_t n_att;
    const json_t *subst;
    /* options */
    bool deferred_spool;
    bool deferred_generation; /* answer as KumoMTA's queued generation does */
    bool received_header, supplemental_header;
    const char *trace_header_name;
    const json_t *include_meta_names;
    /* progress */
    inj_rcpt *rc;
    size_t n, next;
    int saves_pending;
    /* the barrier over the prelogged Reception records (log/loghook.h):
     * the 200 waits until their hook messages are in the spool */
    loghook_wait *hooks;
    bool hooks_open; /* loghook_wait_begin was called (hooks may be NULL) */
    bool running;  /* job_step is on the stack */
    bool ev_done;  /* the event of rc[next] finished while running */
    int ev_status;
    char *ev_error;
    int stalled;   /* job_step returned waiting for an event */
} inject_job;

/* ---- validation ---------------------------------------------------------------------------- */

typedef struct verr {
    int status;
    bool deser; /* a shape error: answered as axum's Json extractor does (422) */
    char msg[600];
} verr;

static int bad(verr *e, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int bad(verr *e, int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
    va_end(ap);
    e->status = status;
    return -1;
}

/* A shape error as KumoMTA reports it: serde's message behind the path of
 * the value (serde_path_to_error), answered 422 "Failed to deserialize the
 * JSON body into the target type: PATH: MESSAGE". serde_json's " at line L
 * column C" is not reproduced (jansson keeps no positions). */
static int shape(verr *e, const char *path, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int shape(verr *e, const char *path, const char *fmt, ...)
{
    int n = *path ? snprintf(e->msg, sizeof(e->msg), "%s: ", path) : 0;
    if (n < 0 || (size_t)n >= sizeof(e->msg))
        n = 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg + n, sizeof(e->msg) - (size_t)n, fmt, ap);
    va_end(ap);
    e->status = 422;
    e->deser = true;
    return -1;
}

/* serde's "invalid type: UNEXPECTED, expected WHAT" for value v. */
static int shape_type(verr *e, const char *path, const json_t *v, const char *what)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return shape(e, path, "invalid type: map, expected %s", what);
    case JSON_ARRAY:
        return shape(e, path, "invalid type: sequence, expected %s", what);
    case JSON_STRING: {
        char *q = json_dumps(v, JSON_ENCODE_ANY);
        int rc = shape(e, path, "invalid type: string %.200s, expected %s", q ? q : "\"\"", what);
        free(q);
        return rc;
    }
    case JSON_INTEGER:
        return shape(e, path, "invalid type: integer `%lld`, expected %s",
                     (long long)json_integer_value(v), what);
    case JSON_REAL:
        return shape(e, path, "invalid type: floating point `%g`, expected %s", json_real_value(v),
                     what);
    case JSON_TRUE:
    case JSON_FALSE:
        return shape(e, path, "invalid type: boolean `%s`, expected %s",
                     json_is_true(v) ? "true" : "false", what);
    default:
        return shape(e, path, "invalid type: null, expected %s", what);
    }
}

/* path + "." + key (or key alone at the top). */
static const char *join_path(char *buf, size_t len, const char *path, const char *key)
{
    snprintf(buf, len, "%s%s%s", path, *path ? "." : "", key);
    return buf;
}

/* Inside content's builder object every shape error is the untagged enum's. */
static int content_shape(verr *e)
{
    return shape(e, "content", "data did not match any variant of untagged enum Content");
}

/* Checks that obj has only the allowed keys (serde's deny_unknown_fields:
 * the allowed ones are listed in declaration order). */
static int only_keys(const json_t *obj, const char *path, const char *const *allowed, verr *e)
{
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)obj, k, v)
    {
        bool ok = false;
        for (int i = 0; allowed[i]; i++)
            if (strcmp(allowed[i], k) == 0)
                ok = true;
        if (!ok) {
            char list[400];
            size_t o = 0;
            list[0] = 0;
            for (int i = 0; allowed[i] && o < sizeof(list); i++)
                o += (size_t)snprintf(list + o, sizeof(list) - o, "%s`%s`", i ? ", " : "",
                                      allowed[i]);
            return shape(e, path, "unknown field `%.100s`, expected one of %s", k, list);
        }
    }
    return 0;
}

/* Optional string field: absent or null -> NULL. */
static int opt_string(const json_t *obj, const char *key, const char *where, const char **out,
                      verr *e)
{
    json_t *v = json_object_get(obj, key);
    *out = NULL;
    if (!v || json_is_null(v))
        return 0;
    char p[200];
    if (!json_is_string(v))
        return shape_type(e, join_path(p, sizeof(p), where, key), v, "a string");
    *out = json_string_value(v);
    return 0;
}

static int opt_bool(const json_t *obj, const char *key, const char *where, bool *out, verr *e)
{
    json_t *v = json_object_get(obj, key);
    if (!v)
        return 0;
    char p[200];
    if (!json_is_boolean(v))
        return shape_type(e, join_path(p, sizeof(p), where, key), v, "a boolean");
    *out = json_is_true(v);
    return 0;
}

static int opt_object(const json_t *obj, const char *key, const char *where, const json_t **out,
                      verr *e)
{
    json_t *v = json_object_get(obj, key);
    *out = NULL;
    if (!v || json_is_null(v))
        return 0;
    char p[200];
    if (!json_is_object(v))
        return shape_type(e, join_path(p, sizeof(p), where, key), v, "a map");
    *out = v;
    return 0;
}

/* Compiles one templated field. field names it in the error as KumoMTA
 * does ("'content.text_body'", "headers['Subject']"); name is the template's
 * own name, whose .html suffix turns on escaping in MiniJinja. */
static int compile_field(inject_job *j, const char *src, const char *field, const char *name,
                         tmpl **out, verr *e)
{
    char err[400];
    size_t nl = strlen(name);
    bool html = nl > 5 && strcmp(name + nl - 5, ".html") == 0;
    int rc = tmpl_compile(src, strlen(src), j->dialect, name, html, out, err, sizeof(err));
    if (rc == KERR_NOMEM)
        return bad(e, 500, "out of memory");
    if (rc)
        return bad(e, 422, "failed parsing field %s as template: %s", field, err);
    return 0;
}

static int parse_mailbox_field(inject_job *j, const json_t *content, const char *key,
                               const char *hname, verr *e)
{
    json_t *v = json_object_get(content, key);
    if (!v || json_is_null(v))
        return 0;
    char where[64];
    snprintf(where, sizeof(where), "content.%s", key);
    if (!json_is_object(v))
        return content_shape(e);
    static const char *const keys[] = {"email", "name", NULL};
    if (only_keys(v, where, keys, e))
        return -1;
    const char *email, *name;
    if (opt_string(v, "email", where, &email, e) || opt_string(v, "name", where, &name, e))
        return -1;
    if (!email)
        return content_shape(e);
    if (!strstr(email, "{{") && !mime_addr_valid(email))
        return bad(e, 422, "failed parsing content.%s: invalid address '%s'", key, email);
    inj_hdr *h = &j->hdrs[j->n_hdrs++];
    h->name = hname;
    char tn[64], fl[80];
    snprintf(tn, sizeof(tn), "content.%s.email", key);
    snprintf(fl, sizeof(fl), "'%s'", tn);
    if (compile_field(j, email, fl, tn, &h->mb_addr, e))
        return -1;
    if (name) {
        snprintf(tn, sizeof(tn), "content.%s.name", key);
        snprintf(fl, sizeof(fl), "'%s'", tn);
        if (compile_field(j, name, fl, tn, &h->mb_name, e))
            return -1;
    }
    return 0;
}

static int cmp_hdr(const void *a, const void *b)
{
    return strcmp(((const inj_hdr *)a)->name, ((const inj_hdr *)b)->name);
}

static int parse_builder(inject_job *j, const json_t *c, verr *e)
{
    static const char *const keys[] = {"text_body", "html_body", "amp_html_body", "attachments",
                                       "headers",   "from",      "subject",       "reply_to",
                                       NULL};
    if (only_keys(c, "content", keys, e))
        return -1;
    const char *text, *html, *amp, *subject;
    if (opt_string(c, "text_body", "content", &text, e) ||
        opt_string(c, "html_body", "content", &html, e) ||
        opt_string(c, "amp_html_body", "content", &amp, e) ||
        opt_string(c, "subject", "content", &subject, e))
        return -1;
    const json_t *headers;
    if (opt_object(c, "headers", "content", &headers, e))
        return -1;
    json_t *atts = json_object_get(c, "attachments");
    if (atts && !json_is_null(atts) && !json_is_array(atts))
        return content_shape(e);
    /* KumoMTA checks the bodies after the types */
    if (!text && !html)
        return bad(e, 422, "at least one of text_body and/or html_body must be given");
    if (text && compile_field(j, text, "'content.text_body'", "text_body.txt", &j->text, e))
        return -1;
    if (html && compile_field(j, html, "'content.html_body'", "html_body.html", &j->html, e))
        return -1;
    if (amp &&
        compile_field(j, amp, "'content.amp_html_body'", "amp_html_body.html", &j->amp, e))
        return -1;
    size_t nh = json_object_size(headers) + 3;
    j->hdrs = calloc(nh, sizeof(*j->hdrs));
    if (!j->hdrs)
        return bad(e, 500, "out of memory");
    if (parse_mailbox_field(j, c, "from", "From", e) ||
        parse_mailbox_field(j, c, "reply_to", "Reply-To", e))
        return -1;
    if (subject) {
        inj_hdr *h = &j->hdrs[j->n_hdrs++];
        h->name = "Subject";
        if (compile_field(j, subject, "headers['Subject']", "headers[Subject]", &h->value, e))
            return -1;
    }
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)headers, k, v)
    {
        if (!json_is_string(v))
            return content_shape(e);
        if (!*k || strpbrk(k, ": \t\r\n"))
            return bad(e, 422, "content.headers: invalid header name '%s'", k);
        bool dup = false;
        for (size_t i = 0; i < j->n_hdrs; i++)
            if (strcasecmp(j->hdrs[i].name, k) == 0)
                dup = true;
        if (dup)
            continue; /* from/reply_to/subject take precedence, as in KumoMTA */
        if (strcasecmp(k, "to") == 0)
            j->have_to = true;
        inj_hdr *h = &j->hdrs[j->n_hdrs++];
        h->name = k;
        char tn[300], fl[310];
        snprintf(tn, sizeof(tn), "headers[%s]", k);
        snprintf(fl, sizeof(fl), "headers['%s']", k);
        if (compile_field(j, json_string_value(v), fl, tn, &h->value, e))
            return -1;
    }
    /* KumoMTA keeps headers in a sorted map */
    qsort(j->hdrs, j->n_hdrs, sizeof(*j->hdrs), cmp_hdr);
    size_t na = json_array_size(atts);
    j->att = calloc(na ? na : 1, sizeof(*j->att));
    if (!j->att)
        return bad(e, 500, "out of memory");
    size_t i;
    json_t *a;
    json_array_foreach(atts, i, a)
    {
        char where[64];
        snprintf(where, sizeof(where), "content.attachments[%zu]", i);
        if (!json_is_object(a))
            return content_shape(e);
        static const char *const akeys[] = {"data",      "content_type", "content_id",
                                            "file_name", "base64",       NULL};
        if (only_keys(a, where, akeys, e))
            return -1;
        const char *w2 = where;
        const char *data, *ctype, *cid, *fname;
        bool b64 = false;
        if (opt_string(a, "data", w2, &data, e) || opt_string(a, "content_type", w2, &ctype, e) ||
            opt_string(a, "content_id", w2, &cid, e) || opt_string(a, "file_name", w2, &fname, e) ||
            opt_bool(a, "base64", w2, &b64, e))
            return -1;
        if (!data)
            return content_shape(e);
        if (!ctype)
            return content_shape(e);
        if (!*ctype || strpbrk(ctype, "\r\n"))
            return bad(e, 422, "%s: invalid content_type", where);
        inj_attach *at = &j->att[j->n_att++];
        at->content_type = ctype;
        at->content_id = cid;
        at->file_name = fname;
        if (b64) {
            if (mime_b64_decode(data, strlen(data), &at->data, &at->len) != 0)
                return bad(e, 422, "%s.data: invalid base64", where);
        } else {
            at->len = strlen(data);
            at->data = malloc(at->len + 1);
            if (!at->data)
                return bad(e, 500, "out of memory");
            memcpy(at->data, data, at->len);
        }
    }
    j->builder = true;
    return 0;
}

static int parse_trace_headers(inject_job *j, const json_t *th, verr *e)
{
    j->received_header = false;
    j->supplemental_header = true;
    j->trace_header_name = "X-KumoRef";
    if (!th || json_is_null(th))
        return 0;
    if (!json_is_object(th))
        return shape_type(e, "trace_headers", th, "struct TraceHeaders");
    static const char *const keys[] = {"received_header", "supplemental_header", "header_name",
                                       "include_meta_names", NULL};
    if (only_keys(th, "trace_headers", keys, e))
        return -1;
    const char *name;
    if (opt_bool(th, "received_header", "trace_headers", &j->received_header, e) ||
        opt_bool(th, "supplemental_header", "trace_headers", &j->supplemental_header, e) ||
        opt_string(th, "header_name", "trace_headers", &name, e))
        return -1;
    if (name) {
        if (!*name || strpbrk(name, ": \t\r\n"))
            return bad(e, 400, "trace_headers.header_name: invalid header name '%s'", name);
        j->trace_header_name = name;
    }
    json_t *inc = json_object_get(th, "include_meta_names");
    if (inc && !json_is_null(inc)) {
        /* an empty Lua-style {} is an empty list too */
        if (json_is_object(inc) && json_object_size(inc) == 0)
            inc = NULL;
        else if (!json_is_array(inc))
            return shape_type(e, "trace_headers.include_meta_names", inc, "a sequence");
        size_t i;
        json_t *v;
        json_array_foreach(inc, i, v)
        {
            char p[80];
            snprintf(p, sizeof(p), "trace_headers.include_meta_names[%zu]", i);
            if (!json_is_string(v))
                return shape_type(e, p, v, "a string");
        }
        j->include_meta_names = inc;
    }
    return 0;
}

static int parse_request(inject_job *j, verr *e)
{
    json_t *b = j->body;
    static const char *const keys[] = {"envelope_sender", "recipients",         "content",
                                       "substitutions",   "deferred_spool",     "deferred_generation",
                                       "trace_headers",   "template_dialect",   NULL};
    if (only_keys(b, "", keys, e))
        return -1;
    json_t *sender = json_object_get(b, "envelope_sender");
    if (!sender)
        return shape(e, "", "missing field `envelope_sender`");
    if (!json_is_string(sender))
        return shape_type(e, "envelope_sender", sender, "a string");
    j->sender = json_string_value(sender);
    if (*j->sender && !mime_addr_valid(j->sender))
        return bad(e, 400, "envelope_sender: invalid address '%s'", j->sender);
    json_t *rcpts = json_object_get(b, "recipients");
    if (!rcpts)
        return shape(e, "", "missing field `recipients`");
    if (json_is_object(rcpts) && json_object_size(rcpts) == 0)
        rcpts = NULL; /* an empty Lua table (from inject_v1) is an empty list */
    else if (!json_is_array(rcpts))
        return shape_type(e, "recipients", rcpts, "a sequence");
    json_t *content = json_object_get(b, "content");
    if (!content)
        return shape(e, "", "missing field `content`");
    if (!json_is_string(content) && !json_is_object(content))
        return content_shape(e);
    if (opt_object(b, "substitutions", "", &j->subst, e))
        return -1;
    if (opt_bool(b, "deferred_spool", "", &j->deferred_spool, e) ||
        opt_bool(b, "deferred_generation", "", &j->deferred_generation, e))
        return -1;
    const char *dialect;
    if (opt_string(b, "template_dialect", "", &dialect, e))
        return -1;
    j->dialect = TMPL_JINJA;
    if (dialect && tmpl_dialect_parse(dialect, &j->dialect) != 0)
        return shape(e, "template_dialect",
                     "unknown variant `%.100s`, expected one of `Jinja`, `Static`, `Handlebars`",
                     dialect);
    if (parse_trace_headers(j, json_object_get(b, "trace_headers"), e))
        return -1;
    j->n = json_array_size(rcpts);
    j->rc = calloc(j->n ? j->n : 1, sizeof(*j->rc));
    if (!j->rc)
        return bad(e, 500, "out of memory");
    size_t i;
    json_t *r;
    json_array_foreach(rcpts, i, r)
    {
        char where[48];
        snprintf(where, sizeof(where), "recipients[%zu]", i);
        if (!json_is_object(r))
            return shape_type(e, where, r, "struct Recipient");
        static const char *const rkeys[] = {"email", "name", "substitutions", "metadata", NULL};
        if (only_keys(r, where, rkeys, e))
            return -1;
        const char *w2 = where;
        inj_rcpt *rc = &j->rc[i];
        if (opt_string(r, "email", w2, &rc->email, e) || opt_string(r, "name", w2, &rc->name, e) ||
            opt_object(r, "substitutions", w2, &rc->subst, e) ||
            opt_object(r, "metadata", w2, &rc->metadata, e))
            return -1;
        if (!rc->email)
            return shape(e, where, "missing field `email`");
    }
    /* content last: its errors are 422 once the shape is right */
    if (json_is_string(content))
        return compile_field(j, json_string_value(content), "'content'", "content", &j->content,
                             e);
    int rc = parse_builder(j, content, e);
    if (rc && e->deser)
        content_shape(e);
    return rc;
}

/* ---- generation --------------------------------------------------------------------------- */

static void job_free(inject_job *j)
{
    tmpl_free(j->content);
    tmpl_free(j->text);
    tmpl_free(j->html);
    tmpl_free(j->amp);
    for (size_t i = 0; i < j->n_hdrs; i++) {
        tmpl_free(j->hdrs[i].value);
        tmpl_free(j->hdrs[i].mb_name);
        tmpl_free(j->hdrs[i].mb_addr);
    }
    free(j->hdrs);
    for (size_t i = 0; i < j->n_att; i++)
        free(j->att[i].data);
    free(j->att);
    for (size_t i = 0; i < j->n && j->rc; i++) {
        message_unref(j->rc[i].m);
        free(j->rc[i].queue);
        free(j->rc[i].error);
    }
    free(j->rc);
    free(j->ev_error);
    json_decref(j->body);
    free(j->peer_ip);
    free(j->local_ip);
    free(j->hostname);
    json_decref(j->auth);
    if (j->hooks_open)
        loghook_wait_end(j->hooks, NULL, NULL); /* nothing will wait for it */
    free(j);
}

static void rcpt_fail(inj_rcpt *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void rcpt_fail(inj_rcpt *r, const char *fmt, ...)
{
    char msg[1200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (!r->error && asprintf(&r->error, "%s: %s", r->email, msg) < 0)
        r->error = NULL;
    if (!r->error)
        r->error = strdup("out of memory");
    if (r->error)
        http_utf8_sanitize(r->error);
}

static char *render(const tmpl *t, const json_t *vars, size_t *len, char *err, size_t errlen)
{
    size_t l;
    char *s = tmpl_render(t, vars, &l, err, errlen);
    if (s && len)
        *len = l;
    return s;
}

/* Checks the header block of a generated RFC 5322 message: every line up
 * to the blank line is a field or a continuation. */
static int check_header_block(const char *d, size_t n, char *err, size_t errlen)
{
    size_t pos = 0;
    int line = 0;
    while (pos < n) {
        const char *eol = memchr(d + pos, '\n', n - pos);
        size_t end = eol ? (size_t)(eol - d) : n;
        size_t l = end - pos;
        if (l && d[end - 1] == '\r')
            l--;
        line++;
        if (l == 0)
            return 0;
        if (d[pos] == ' ' || d[pos] == '\t') {
            if (line == 1) {
                snprintf(err, errlen, "failed to parse content: it starts with a continuation "
                                      "line");
                return KERR_PARSE;
            }
        } else {
            size_t k = 0;
            while (k < l && d[pos + k] != ':' && (unsigned char)d[pos + k] > 32 &&
                   (unsigned char)d[pos + k] < 127)
                k++;
            if (k == 0 || k >= l || d[pos + k] != ':') {
                snprintf(err, errlen, "failed to parse content: line %d is not a header field",
                         line);
                return KERR_PARSE;
            }
        }
        pos = eol ? end + 1 : n;
    }
    return 0;
}

static json_t *make_vars(const inject_job *j, const inj_rcpt *r)
{
    json_t *vars = j->subst ? json_deep_copy(j->subst) : json_object();
    if (!vars)
        return NULL;
    json_object_set_new(vars, "email", json_string(r->email));
    if (r->name)
        json_object_set_new(vars, "name", json_string(r->name));
    char *to = mime_mailbox(r->name, r->email);
    if (to)
        json_object_set_new(vars, "to_header", json_string(to));
    free(to);
    if (r->subst)
        json_object_update(vars, (json_t *)r->subst);
    return vars;
}

/* The listener's hostname; from Lua (no listener) the machine's name. */
static const char *job_hostname(const inject_job *j, char *buf, size_t len)
{
    if (j->hostname)
        return j->hostname;
    snprintf(buf, len, "localhost");
    gethostname(buf, len - 1);
    buf[len - 1] = 0;
    return buf;
}

static char *generate_builder(inject_job *j, inj_rcpt *r, const json_t *vars, const char *idhex,
                              size_t *len, char *err, size_t errlen)
{
    char *text = NULL, *html = NULL, *amp = NULL, *out = NULL;
    mime_header *hs = calloc(j->n_hdrs + 1, sizeof(*hs));
    char **vals = calloc(j->n_hdrs + 1, sizeof(char *));
    if (!hs || !vals) {
        snprintf(err, errlen, "out of memory");
        goto done;
    }
    if ((j->text && !(text = render(j->text, vars, NULL, err, errlen))) ||
        (j->html && !(html = render(j->html, vars, NULL, err, errlen))) ||
        (j->amp && !(amp = render(j->amp, vars, NULL, err, errlen))))
        goto done;
    size_t nh = 0;
    for (size_t i = 0; i < j->n_hdrs; i++) {
        inj_hdr *h = &j->hdrs[i];
        hs[nh].name = h->name;
        if (h->mb_addr) {
            char *addr = render(h->mb_addr, vars, NULL, err, errlen);
            char *name = addr && h->mb_name ? render(h->mb_name, vars, NULL, err, errlen) : NULL;
            if (!addr || (h->mb_name && !name)) {
                free(addr);
                goto done;
            }
            if (!mime_addr_valid(addr)) {
                snprintf(err, errlen, "failed parsing content.%s: invalid address '%s'",
                         strcmp(h->name, "From") == 0 ? "from" : "reply_to", addr);
                free(addr);
                free(name);
                goto done;
            }
            vals[nh] = mime_mailbox(name, addr);
            free(addr);
            free(name);
            hs[nh].encoded = true;
        } else {
            vals[nh] = render(h->value, vars, NULL, err, errlen);
        }
        if (!vals[nh])
            goto done;
        hs[nh].value = vals[nh];
        nh++;
        /* the recipient's To goes after the sorted headers, unless given */
    }
    char *to = NULL;
    if (!j->have_to) {
        to = mime_mailbox(r->name, r->email);
        if (!to) {
            snprintf(err, errlen, "out of memory");
            goto done;
        }
        hs[nh].name = "To";
        hs[nh].value = to;
        hs[nh].encoded = true;
        vals[nh] = to;
        nh++;
    }
    mime_attachment *ma = calloc(j->n_att ? j->n_att : 1, sizeof(*ma));
    if (!ma) {
        snprintf(err, errlen, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < j->n_att; i++) {
        ma[i].data = j->att[i].data;
        ma[i].len = j->att[i].len;
        ma[i].content_type = j->att[i].content_type;
        ma[i].file_name = j->att[i].file_name;
        ma[i].content_id = j->att[i].content_id;
    }
    char msgid[320], host[256];
    snprintf(msgid, sizeof(msgid), "<%s@%s>", idhex, job_hostname(j, host, sizeof(host)));
    mime_spec spec = {.text = text,
                      .html = html,
                      .amp_html = amp,
                      .headers = hs,
                      .n_headers = nh,
                      .attachments = ma,
                      .n_attachments = j->n_att,
                      .message_id = msgid};
    out = mime_build(&spec, len, err, errlen);
    free(ma);
done:
    free(text);
    free(html);
    free(amp);
    for (size_t i = 0; vals && i <= j->n_hdrs; i++)
        free(vals[i]);
    free(vals);
    free(hs);
    return out;
}

static char *generate_rfc822(inject_job *j, const json_t *vars, size_t *len, char *err,
                             size_t errlen)
{
    size_t rl;
    char *raw = render(j->content, vars, &rl, err, errlen);
    if (!raw)
        return NULL;
    size_t nl;
    char *norm = mime_normalize_crlf(raw, rl, &nl);
    free(raw);
    if (!norm) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    if (check_header_block(norm, nl, err, errlen) != 0) {
        free(norm);
        return NULL;
    }
    char *mv = hdr_get_first(norm, nl, "MIME-Version");
    if (!mv) {
        size_t l2;
        char *with = hdr_append(norm, nl, "MIME-Version", "1.0", &l2);
        free(norm);
        if (!with) {
            snprintf(err, errlen, "out of memory");
            return NULL;
        }
        norm = with;
        nl = l2;
    }
    free(mv);
    if (nl < 2 || norm[nl - 2] != '\r' || norm[nl - 1] != '\n') {
        char *g = realloc(norm, nl + 3);
        if (!g) {
            free(norm);
            snprintf(err, errlen, "out of memory");
            return NULL;
        }
        norm = g;
        memcpy(norm + nl, "\r\n", 3);
        nl += 2;
    }
    *len = nl;
    return norm;
}

static int prepend_text(message *m, const char *prefix)
{
    size_t pl = strlen(prefix);
    char *d = malloc(pl + m->data_len + 1);
    if (!d)
        return KERR_NOMEM;
    memcpy(d, prefix, pl);
    memcpy(d + pl, m->data, m->data_len);
    d[pl + m->data_len] = 0;
    message_set_data_take(m, d, pl + m->data_len);
    return 0;
}

/* The summary KumoMTA stores as http_auth: the Basic user, else the first
 * identity, else the peer address. */
static const char *auth_summary(const json_t *auth)
{
    size_t i;
    json_t *v;
    json_t *ids = json_object_get(auth, "identities");
    json_array_foreach(ids, i, v)
    {
        const char *ctx = json_string_value(json_object_get(v, "context"));
        if (ctx && strcmp(ctx, "HttpBasicAuth") == 0)
            return json_string_value(json_object_get(v, "identity"));
    }
    const char *first = json_string_value(json_object_get(json_array_get(ids, 0), "identity"));
    if (first)
        return first;
    const char *peer = json_string_value(json_object_get(auth, "peer_address"));
    return peer ? peer : "";
}

/* Builds rc's message; 0 or -1 with rc->error set. */
static int make_message(inject_job *j, inj_rcpt *r)
{
    if (!mime_addr_valid(r->email)) {
        rcpt_fail(r, "recipient email %s: invalid address", r->email);
        return -1;
    }
    json_t *vars = make_vars(j, r);
    if (!vars) {
        rcpt_fail(r, "out of memory");
        return -1;
    }
    spoolid id;
    spoolid_new(&id);
    char hex[SPOOLID_HEX_LEN + 1];
    spoolid_to_hex(&id, hex);
    char err[600];
    size_t len = 0;
    char *data = j->builder ? generate_builder(j, r, vars, hex, &len, err, sizeof(err))
                            : generate_rfc822(j, vars, &len, err, sizeof(err));
    json_decref(vars);
    if (!data) {
        rcpt_fail(r, "%s", err);
        return -1;
    }
    const char *rcpt = r->email;
    message *m = message_new(&id, j->sender, &rcpt, 1);
    message_set_data_take(m, data, len);
    if (j->received_header) {
        char host[256] = "localhost";
        gethostname(host, sizeof(host) - 1);
        host[sizeof(host) - 1] = 0;
        char date[64];
        mime_date_now(date, sizeof(date));
        const char *at = strrchr(j->sender, '@');
        char *recv = NULL;
        if (asprintf(&recv,
                     "Received: from %s (%s)\r\n  by %s (KumoMTA)\r\n  with HTTP id %s for "
                     "<%s>;\r\n  %s\r\n",
                     at ? at + 1 : "", j->peer_ip, host, hex, r->email, date) < 0 ||
            prepend_text(m, recv) != 0) {
            free(recv);
            message_unref(m);
            rcpt_fail(r, "out of memory");
            return -1;
        }
        free(recv);
    }
    json_t *meta = m->meta;
    json_object_set_new(meta, "http_auth", json_string(auth_summary(j->auth)));
    json_object_set_new(meta, "reception_protocol", json_string("HTTP"));
    json_object_set_new(meta, "received_from", json_string(j->peer_ip));
    if (j->local_ip)
        json_object_set_new(meta, "received_via", json_string(j->local_ip));
    if (j->hostname)
        json_object_set_new(meta, "hostname", json_string(j->hostname));
    if (r->metadata && json_object_size(r->metadata))
        json_object_set_new(meta, "extra", json_deep_copy(r->metadata));
    r->m = m;
    return 0;
}

static void job_step(inject_job *j);
static void job_complete(inject_job *j);

struct save_ctx {
    inject_job *j;
    size_t idx;
    reactor *r;
    int err;
};

static void save_done_on_reactor(void *arg)
{
    struct save_ctx *x = arg;
    inject_job *j = x->j;
    if (x->err) {
        j->rc[x->idx].save_err = x->err;
    } else {
        j->rc[x->idx].saved = true;
    }
    free(x);
    j->saves_pending--;
    if (j->saves_pending == 0 && j->next == j->n && !j->running)
        job_complete(j);
}

static void save_done(void *ud, int err)
{
    struct save_ctx *x = ud;
    x->err = err;
    /* runs on a spool thread: the job belongs to its reactor */
    reactor_post(x->r, save_done_on_reactor, x);
}

static void log_reception(inject_job *j, inj_rcpt *rc, unsigned parts);

/* After the event: queue name, trace header, save. */
static void rcpt_after_event(inject_job *j, inj_rcpt *r)
{
    message *m = r->m;
    r->queue = queue_name_of_message(m);
    if (!r->queue) {
        rcpt_fail(r, "cannot determine the queue");
        return;
    }
    if (strcmp(r->queue, "null") == 0) {
        r->null_queue = true;
        return;
    }
    if (j->supplemental_header &&
        trace_header_supplemental(m, j->trace_header_name, j->include_meta_names) != 0) {
        rcpt_fail(r, "out of memory");
        return;
    }
    if (j->deferred_spool)
        return;
    spool *sp = services_spool();
    if (!sp) {
        r->save_err = KERR_UNHEALTHY;
        return;
    }
    size_t ml;
    char *meta = message_meta_to_json(m, &ml);
    char *data = malloc(m->data_len + 1);
    struct save_ctx *x = malloc(sizeof(*x));
    if (!meta || !data || !x) {
        free(meta);
        free(data);
        free(x);
        rcpt_fail(r, "out of memory");
        return;
    }
    memcpy(data, m->data, m->data_len);
    data[m->data_len] = 0;
    x->j = j;
    x->idx = (size_t)(r - j->rc);
    x->r = j->r;
    x->err = 0;
    j->saves_pending++;
    m->meta_dirty = m->data_dirty = false;
    /* The log hooks get the Reception record now, ahead of the save, so
     * that the hook's message rides in the same spool group commit (as
     * the SMTP server does); the local logs get it in job_complete, once
     * the save succeeded. */
    if (!j->hooks_open) {
        j->hooks = loghook_wait_begin();
        j->hooks_open = true;
    } else if (j->hooks) {
        loghook_wait_resume(j->hooks);
    }
    if (j->hooks) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        r->rx_time_ns = (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
        r->prelogged = true;
        log_reception(j, r, LOGS_HOOKS);
    }
    loghook_wait_pause();
    /* durable before the 200 */
    spool_save_new(sp, &m->id, meta, ml, data, m->data_len, true, save_done, x);
}

static void after_generated(klua_call *c, int status, void *ud)
{
    inject_job *j = ud;
    inj_rcpt *r = &j->rc[j->next];
    if (status == KLUA_REJECT) {
        rcpt_fail(r, "%d %s", klua_call_reject_code(c), klua_call_error(c));
    } else if (status != KLUA_OK) {
        DERROR(IMOD, "peer=%s http_message_generated failed: %s", j->peer_ip,
               klua_call_error(c));
        rcpt_fail(r, "%s", klua_call_error(c));
    }
    if (j->running) {
        j->ev_done = true;
        return;
    }
    /* the handler waited: continue from here */
    if (!r->error)
        rcpt_after_event(j, r);
    j->next++;
    job_step(j);
}

static void job_step(inject_job *j)
{
    j->running = true;
    klua *vm = klua_current();
    bool has_event = vm && klua_has_handler(vm, "http_message_generated");
    while (j->next < j->n) {
        inj_rcpt *r = &j->rc[j->next];
        http_metrics_received(1);
        if (make_message(j, r) != 0) {
            j->next++;
            continue;
        }
        if (has_event) {
            klua_call *c;
            lua_State *co = klua_call_begin(vm, "http_message_generated", &c);
            klua_push_message(co, r->m);
            klua_push_json(co, j->auth);
            j->ev_done = false;
            klua_call_run(c, 2, after_generated, j);
            if (!j->ev_done) {
                /* the handler waits; after_generated resumes the job */
                j->running = false;
                return;
            }
        }
        if (!r->error)
            rcpt_after_event(j, r);
        j->next++;
    }
    j->running = false;
    if (j->saves_pending == 0)
        job_complete(j);
}

static void log_reception(inject_job *j, inj_rcpt *rc, unsigned parts)
{
    char hex[SPOOLID_HEX_LEN + 1];
    logrec r;
    logrec_reception(&r, hex, rc->m, rc->queue);
    if (rc->prelogged)
        r.timestamp_ns = rc->rx_time_ns; /* both halves say the same time */
    r.peer_name = "";
    r.peer_addr = j->peer_ip;
    r.reception_protocol = "HTTP";
    logs_record_parts(&r, parts);
}

/* The answer held until the Reception records' hook messages are in the
 * spool (log/loghook.h), so that a kill -9 right after it loses no record
 * of an accepted message. */
struct held_answer {
    inject_done_fn done;
    void *ud;
    json_t *res;
    reactor *r;
};

static void answer_on_reactor(void *arg)
{
    struct held_answer *h = arg;
    h->done(h->ud, 200, h->res, NULL, false);
    free(h);
}

static void hooks_settled(void *arg)
{
    struct held_answer *h = arg;
    reactor_post(h->r, answer_on_reactor, h);
}

static void job_complete(inject_job *j)
{
    json_t *failed = json_array(), *errors = json_array();
    size_t ok = 0, unhealthy = 0;
    spool *sp = services_spool();
    loghook_wait *hooks = j->hooks;
    if (!j->hooks_open)
        hooks = loghook_wait_begin();
    else if (hooks)
        loghook_wait_resume(hooks);
    j->hooks_open = false; /* ended below, whatever happens */
    j->hooks = NULL;
    for (size_t i = 0; i < j->n; i++) {
        inj_rcpt *r = &j->rc[i];
        if (!r->error && r->save_err) {
            if (r->save_err == KERR_UNHEALTHY)
                unhealthy++;
            rcpt_fail(r, "spool save failed: %s", kerr_str(r->save_err));
        }
        if (!r->error && !r->null_queue) {
            log_reception(j, r, r->prelogged ? LOGS_LOCAL : LOGS_LOCAL | LOGS_HOOKS);
            message_ref(r->m);
            if (queue_insert(r->m, r->queue, "Received") != 0) {
                if (r->saved && sp)
                    spool_remove(sp, &r->m->id, NULL, NULL);
                rcpt_fail(r, "failed to insert into queue %s", r->queue);
            }
        }
        if (r->error) {
            json_array_append_new(failed, json_string(r->email));
            json_array_append_new(errors, json_string(r->error));
        } else {
            ok++;
        }
    }
    inject_done_fn done = j->done;
    void *ud = j->done_ud;
    if (j->n && unhealthy == j->n) {
        /* nothing was logged (every save failed): no record to wait for */
        loghook_wait_end(hooks, NULL, NULL);
        json_decref(failed);
        json_decref(errors);
        job_free(j);
        done(ud, 503, NULL, kerr_str(KERR_UNHEALTHY), false);
        return;
    }
    if (j->deferred_generation) {
        /* KumoMTA queues the request itself and answers at once with every
         * count 0 (documented); the outcome of each recipient shows in
         * the logs, as it does there */
        json_array_clear(failed);
        json_array_clear(errors);
    }
    json_t *res = json_object();
    json_object_set_new(res, "success_count",
                        json_integer(j->deferred_generation ? 0 : (json_int_t)ok));
    json_object_set_new(res, "fail_count",
                        json_integer(j->deferred_generation ? 0 : (json_int_t)(j->n - ok)));
    json_object_set_new(res, "failed_recipients", failed);
    json_object_set_new(res, "errors", errors);
    DDEBUG(IMOD, "peer=%s injected %zu of %zu", j->peer_ip, ok, j->n);
    struct held_answer *h = malloc(sizeof(*h));
    if (h) {
        h->done = done;
        h->ud = ud;
        h->res = res;
        h->r = j->r;
    }
    job_free(j);
    if (h && loghook_wait_end(hooks, hooks_settled, h) == 1)
        return;
    if (!h)
        loghook_wait_end(hooks, NULL, NULL); /* out of memory: answer without waiting */
    free(h);
    done(ud, 200, res, NULL, false);
}

void inject_v1_start(json_t *body_take, const inject_origin *o, inject_done_fn done, void *ud)
{
    inject_job *j = calloc(1, sizeof(*j));
    if (j) {
        j->peer_ip = strdup(o->peer_ip ? o->peer_ip : "");
        j->local_ip = o->local_ip ? strdup(o->local_ip) : NULL;
        j->hostname = o->hostname ? strdup(o->hostname) : NULL;
    }
    if (!j || !j->peer_ip || (o->local_ip && !j->local_ip) || (o->hostname && !j->hostname)) {
        if (j)
            job_free(j);
        json_decref(body_take);
        done(ud, 500, NULL, "out of memory", false);
        return;
    }
    j->auth = json_incref(o->auth);
    j->r = o->r;
    j->done = done;
    j->done_ud = ud;
    j->body = body_take;
    verr e = {0};
    if (parse_request(j, &e) != 0) {
        job_free(j);
        done(ud, e.status, NULL, e.msg, e.deser);
        return;
    }
    if (http_shutting_down()) {
        job_free(j);
        done(ud, 503, NULL, "shutting down", false);
        return;
    }
    char why[256];
    if (!services_spool() || !services_spool_ready()) {
        job_free(j);
        done(ud, 503, NULL, "waiting for spool startup", false);
        return;
    }
    if (!services_spool_healthy(why, sizeof(why))) {
        job_free(j);
        done(ud, 503, NULL, why, false);
        return;
    }
    job_step(j);
}

/* The HTTP answer: the result as JSON, a shape error as axum's Json
 * extractor answers it, any other error as KumoMTA's AppError. */
static void http_done(void *ud, int status, json_t *result_take, const char *error, bool deser)
{
    http_req *hr = ud;
    if (status == 200) {
        http_reply_json(hr, 200, result_take);
        return;
    }
    json_decref(result_take);
    if (deser) {
        char msg[700];
        int n = snprintf(msg, sizeof(msg),
                         "Failed to deserialize the JSON body into the target type: %s", error);
        http_utf8_sanitize(msg);
        http_reply_text(hr, 422, "text/plain; charset=utf-8", msg,
                        n < (int)sizeof(msg) ? (size_t)n : sizeof(msg) - 1);
        return;
    }
    http_reply_error(hr, status, "%s", error);
}

/* set_httpinject_recipient_rate_limit: the request sleeps until the
 * throttle admits its recipients (asking again after each wait, as KumoMTA
 * does), then runs. */
typedef struct limit_wait {
    http_req *hr;
    json_t *body;
    uint64_t n;
} limit_wait;

static void inject_go(http_req *hr, json_t *body)
{
    inject_origin o = {.peer_ip = hr->peer_ip,
                       .local_ip = hr->local_ip,
                       .hostname = http_listener_hostname(hr->ln),
                       .auth = hr->auth,
                       .r = hr->r};
    inject_v1_start(body, &o, http_done, hr);
}

static void limit_retry(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    limit_wait *w = arg;
    int64_t wait = inject_limit_take(w->n);
    if (wait > 0) {
        struct timeval tv = {wait / 1000000000, (wait % 1000000000) / 1000 + 1};
        if (event_base_once(reactor_base(w->hr->r), -1, EV_TIMEOUT, limit_retry, w, &tv) == 0)
            return;
    }
    http_req *hr = w->hr;
    json_t *body = w->body;
    free(w);
    inject_go(hr, body);
}

void http_inject_v1(http_req *hr)
{
    json_t *body = http_req_json_object(hr, false);
    if (!body)
        return;
    uint64_t n = json_array_size(json_object_get(body, "recipients"));
    if (inject_limit_take(n) > 0) {
        limit_wait *w = malloc(sizeof(*w));
        if (w) {
            *w = (limit_wait){hr, body, n};
            limit_retry(-1, 0, w);
            return;
        }
    }
    inject_go(hr, body);
}
