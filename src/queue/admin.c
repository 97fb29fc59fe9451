/* Administrative actions on queued messages (queue/admin.h): the registry
 * of active bounces and suspensions, the AdminBounce of a message, and the
 * broadcast helpers that run an admin request on every reactor and answer
 * on the one that asked. Rebind is in requeue.c, inspection in inspect.c.
 *
 * Threads: the registry is process-wide under admin_lock (read when a
 * message is placed or made ready, so the lookup returns at once when it
 * is empty); a broadcast runs its part on each reactor for that reactor's
 * queues. Failures: a malformed request is refused with a message naming
 * the field (HTTP 400); entries expire by themselves. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <uuid/uuid.h>

#include "core/duration.h"
#include "core/kerr.h"
#include "log/logs.h"
#include "queue/admin.h"
#include "queue/dispatch.h"
#include "queue/queue_int.h"

static pthread_mutex_t admin_lock = PTHREAD_MUTEX_INITIALIZER;
static admin_entry *admin_entries;
/* Whether admin_entries is non-empty, for admin_find's lock-free fast path
 * (every message that comes due asks): the list itself is only read and
 * written under admin_lock. Set under the lock after each change. */
static atomic_bool admin_any;
static atomic_uint admin_generation;

void admin_entry_free(admin_entry *e)
{
    free(e->reason);
    free(e->domain);
    free(e->campaign);
    free(e->tenant);
    free(e->routing_domain);
    free(e->name);
    json_decref(e->queue_names);
    json_decref(e->bounced_by_queue);
    free(e);
}

static bool eq_ci_opt(const char *want, const char *have)
{
    return !want || (have && strcasecmp(want, have) == 0);
}

bool admin_matches(const admin_entry *e, const char *qname, const queue_name_parts *p)
{
    if (e->queue_names && json_array_size(e->queue_names) > 0) {
        size_t i;
        json_t *v;
        json_array_foreach(e->queue_names, i, v) if (json_is_string(v) &&
                                                     strcmp(json_string_value(v), qname) == 0) return true;
        return false;
    }
    return eq_ci_opt(e->domain, p->domain) && eq_ci_opt(e->campaign, p->campaign) &&
           eq_ci_opt(e->tenant, p->tenant) && eq_ci_opt(e->routing_domain, p->routing_domain);
}

static void admin_expire_locked(void)
{
    int64_t now = clock_wall_ns();
    for (admin_entry **pp = &admin_entries; *pp;) {
        if ((*pp)->expires_wall_ns && (*pp)->expires_wall_ns <= now) {
            admin_entry *dead = *pp;
            *pp = dead->next;
            admin_entry_free(dead);
        } else {
            pp = &(*pp)->next;
        }
    }
    atomic_store_explicit(&admin_any, admin_entries != NULL, memory_order_release);
}

/* Counts n messages of queue qname bounced by e (admin_lock held). */
static void bounced_add_locked(admin_entry *e, const char *qname, long long n)
{
    atomic_fetch_add(&e->bounced, (unsigned long long)n);
    if (!e->bounced_by_queue)
        e->bounced_by_queue = json_object();
    json_t *c = json_object_get(e->bounced_by_queue, qname);
    json_object_set_new(e->bounced_by_queue, qname,
                        json_integer((c ? json_integer_value(c) : 0) + n));
}

/* Finds the active entry of kind that matches; copies the reason and id.
 * Returns false when none. */
static bool admin_find(admin_kind kind, const char *qname, const queue_name_parts *p,
                       char *reason, size_t rlen, char id[37], bool *suppress)
{
    if (!atomic_load_explicit(&admin_any, memory_order_acquire))
        return false;
    bool found = false;
    pthread_mutex_lock(&admin_lock);
    admin_expire_locked();
    for (admin_entry *e = admin_entries; e; e = e->next) {
        if (e->kind != kind)
            continue;
        bool m = kind == ADM_SUSPEND_READYQ ? strcmp(e->name, qname) == 0
                                            : admin_matches(e, qname, p);
        if (m) {
            snprintf(reason, rlen, "%s", e->reason);
            if (id)
                memcpy(id, e->id, 37);
            if (suppress)
                *suppress = e->suppress_logging;
            if (kind == ADM_BOUNCE)
                bounced_add_locked(e, qname, 1);
            found = true;
            break;
        }
    }
    pthread_mutex_unlock(&admin_lock);
    return found;
}

char *jstrdup(const json_t *req, const char *k)
{
    const char *s = json_string_value(json_object_get(req, k));
    return s ? strdup(s) : NULL;
}

/* serde's description of an unexpected JSON value */
static void describe_value(const json_t *v, char *out, size_t len)
{
    switch (json_typeof(v)) {
    case JSON_NULL:
        snprintf(out, len, "null");
        break;
    case JSON_TRUE:
    case JSON_FALSE:
        snprintf(out, len, "boolean `%s`", json_is_true(v) ? "true" : "false");
        break;
    case JSON_INTEGER:
        snprintf(out, len, "integer `%" JSON_INTEGER_FORMAT "`", json_integer_value(v));
        break;
    case JSON_REAL:
        snprintf(out, len, "floating point `%g`", json_real_value(v));
        break;
    case JSON_STRING:
        snprintf(out, len, "string \"%.100s\"", json_string_value(v));
        break;
    case JSON_ARRAY:
        snprintf(out, len, "sequence");
        break;
    default:
        snprintf(out, len, "map");
        break;
    }
}

static int type_err(const char *path, const json_t *v, const char *expected, char *err,
                    size_t errlen)
{
    char d[160];
    describe_value(v, d, sizeof(d));
    snprintf(err, errlen, "%s: invalid type: %s, expected %s", path, d, expected);
    return KERR_PARSE;
}

int admin_parse_rfc3339(const char *s, int64_t *out_ns)
{
    struct tm tm = {0};
    const char *p = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
    if (!p)
        p = strptime(s, "%Y-%m-%d %H:%M:%S", &tm);
    if (!p)
        return KERR_PARSE;
    int64_t frac_ns = 0;
    if (*p == '.') {
        int64_t scale = 100000000;
        p++;
        if (*p < '0' || *p > '9')
            return KERR_PARSE;
        for (; *p >= '0' && *p <= '9'; p++, scale /= 10)
            frac_ns += (*p - '0') * scale;
    }
    long off_s = 0;
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if ((*p == '+' || *p == '-') && p[1] >= '0' && p[1] <= '9' && p[2] >= '0' &&
               p[2] <= '9' && p[3] == ':' && p[4] >= '0' && p[4] <= '9' && p[5] >= '0' &&
               p[5] <= '9') {
        off_s = ((p[1] - '0') * 10 + (p[2] - '0')) * 3600 + ((p[4] - '0') * 10 + (p[5] - '0')) * 60;
        if (*p == '-')
            off_s = -off_s;
        p += 6;
    } else {
        return KERR_PARSE;
    }
    if (*p)
        return KERR_PARSE;
    *out_ns = ((int64_t)timegm(&tm) - off_s) * NS_PER_SEC + frac_ns;
    return 0;
}

int admin_check_fields(const json_t *req, const adm_field *fields, bool deny_unknown, char *err,
                       size_t errlen)
{
    if (!json_is_object(req)) {
        snprintf(err, errlen, "invalid type: expected a JSON object");
        return KERR_PARSE;
    }
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)req, k, v) {
        const adm_field *f = NULL;
        for (const adm_field *x = fields; x->name; x++)
            if (strcmp(x->name, k) == 0)
                f = x;
        if (!f) {
            if (!deny_unknown)
                continue;
            char list[400] = "";
            size_t o = 0;
            for (const adm_field *x = fields; x->name && o < sizeof(list); x++)
                o += (size_t)snprintf(list + o, sizeof(list) - o, "%s`%s`", o ? ", " : "", x->name);
            snprintf(err, errlen, "unknown field `%s`, expected one of %s", k, list);
            return KERR_PARSE;
        }
        switch (f->type) {
        case AF_STRING:
            if (!json_is_null(v) && !json_is_string(v))
                return type_err(k, v, "a string", err, errlen);
            break;
        case AF_STRING_REQ:
            if (!json_is_string(v))
                return type_err(k, v, "a string", err, errlen);
            break;
        case AF_BOOL:
            if (!json_is_boolean(v))
                return type_err(k, v, "a boolean", err, errlen);
            break;
        case AF_STRINGS: {
            if (!json_is_array(v))
                return type_err(k, v, "a sequence", err, errlen);
            size_t i;
            json_t *x;
            json_array_foreach(v, i, x) if (!json_is_string(x))
            {
                char path[200];
                snprintf(path, sizeof(path), "%s[%zu]", k, i);
                return type_err(path, x, "a string", err, errlen);
            }
            break;
        }
        case AF_DURATION: {
            int64_t ns;
            if (json_is_null(v))
                break;
            if (json_is_integer(v) && json_integer_value(v) >= 0)
                break;
            if (json_is_real(v) && json_real_value(v) >= 0)
                break;
            if (json_is_string(v) && duration_parse(json_string_value(v), &ns) == 0)
                break;
            if (json_is_string(v)) {
                snprintf(err, errlen, "%s: invalid value: string \"%.100s\", expected a duration",
                         k, json_string_value(v));
                return KERR_PARSE;
            }
            return type_err(k, v, "a duration", err, errlen);
        }
        case AF_TIME: {
            int64_t ns;
            if (json_is_null(v))
                break;
            if (!json_is_string(v))
                return type_err(k, v, "an RFC 3339 formatted date and time string", err, errlen);
            if (admin_parse_rfc3339(json_string_value(v), &ns) != 0) {
                snprintf(err, errlen, "%s: input contains invalid characters", k);
                return KERR_PARSE;
            }
            break;
        }
        case AF_STRMAP: {
            if (!json_is_object(v))
                return type_err(k, v, "a map", err, errlen);
            const char *mk;
            json_t *mv;
            json_object_foreach(v, mk, mv) if (!json_is_string(mv))
            {
                char path[200];
                snprintf(path, sizeof(path), "%s.%.100s", k, mk);
                return type_err(path, mv, "a string", err, errlen);
            }
            break;
        }
        }
    }
    for (const adm_field *x = fields; x->name; x++) {
        if ((x->type == AF_STRING_REQ || x->type == AF_STRMAP) && !json_object_get(req, x->name)) {
            snprintf(err, errlen, "missing field `%s`", x->name);
            return KERR_PARSE;
        }
    }
    return 0;
}

/* The fields of BounceV1Request, SuspendV1Request and
 * SuspendReadyQueueV1Request. Only the bounce request refuses unknown
 * fields, as KumoMTA's structs do. */
static const adm_field bounce_fields[] = {
    {"campaign", AF_STRING},       {"tenant", AF_STRING},
    {"domain", AF_STRING},         {"routing_domain", AF_STRING},
    {"reason", AF_STRING_REQ},     {"duration", AF_DURATION},
    {"suppress_logging", AF_BOOL}, {"expires", AF_TIME},
    {"queue_names", AF_STRINGS},   {NULL, 0}};
static const adm_field suspend_fields[] = {{"campaign", AF_STRING},     {"tenant", AF_STRING},
                                           {"domain", AF_STRING},       {"reason", AF_STRING_REQ},
                                           {"duration", AF_DURATION},   {"expires", AF_TIME},
                                           {"queue_names", AF_STRINGS}, {NULL, 0}};
static const adm_field suspend_rq_fields[] = {{"name", AF_STRING_REQ},
                                              {"reason", AF_STRING_REQ},
                                              {"duration", AF_DURATION},
                                              {"expires", AF_TIME},
                                              {NULL, 0}};

static int admin_parse(const json_t *req, admin_kind kind, admin_entry **out, char *err,
                       size_t errlen)
{
    const adm_field *fields = kind == ADM_BOUNCE    ? bounce_fields
                              : kind == ADM_SUSPEND ? suspend_fields
                                                    : suspend_rq_fields;
    int rc = admin_check_fields(req, fields, kind == ADM_BOUNCE, err, errlen);
    if (rc)
        return rc;
    admin_entry *e = calloc(1, sizeof(*e));
    if (!e)
        abort();
    e->kind = kind;
    uuid_t u;
    uuid_generate_random(u);
    uuid_unparse_lower(u, e->id);
    e->reason = jstrdup(req, "reason");
    if (kind != ADM_SUSPEND_READYQ) {
        e->domain = jstrdup(req, "domain");
        e->campaign = jstrdup(req, "campaign");
        e->tenant = jstrdup(req, "tenant");
        if (kind == ADM_BOUNCE)
            e->routing_domain = jstrdup(req, "routing_domain");
        json_t *qn = json_object_get(req, "queue_names");
        e->queue_names = json_array_size(qn) ? json_incref(qn) : NULL;
    } else {
        e->name = jstrdup(req, "name");
    }
    e->suppress_logging =
        kind == ADM_BOUNCE && json_is_true(json_object_get(req, "suppress_logging"));
    /* default duration: 5 minutes, as KumoMTA; expires wins over duration */
    int64_t dur = 300 * NS_PER_SEC;
    json_t *d = json_object_get(req, "duration");
    if (json_is_string(d))
        duration_parse(json_string_value(d), &dur);
    else if (json_is_integer(d))
        dur = json_integer_value(d) * NS_PER_SEC;
    else if (json_is_real(d))
        dur = (int64_t)(json_real_value(d) * (double)NS_PER_SEC);
    int64_t now = clock_wall_ns();
    e->expires_wall_ns = now + dur;
    const char *ex = json_string_value(json_object_get(req, "expires"));
    if (ex) {
        admin_parse_rfc3339(ex, &e->expires_wall_ns);
        if (e->expires_wall_ns < now)
            e->expires_wall_ns = now;
        dur = e->expires_wall_ns - now;
    }
    e->duration_ns = dur;
    *out = e;
    return 0;
}

static void admin_add(admin_entry *e)
{
    pthread_mutex_lock(&admin_lock);
    e->next = admin_entries;
    admin_entries = e;
    atomic_store_explicit(&admin_any, true, memory_order_release);
    pthread_mutex_unlock(&admin_lock);
    atomic_fetch_add(&admin_generation, 1);
}

/* Removes the entry; with taken != NULL hands it to the caller instead of
 * freeing it. */
static int admin_cancel_take(admin_kind kind, const char *id, admin_entry **taken)
{
    int rc = KERR_NOTFOUND;
    pthread_mutex_lock(&admin_lock);
    for (admin_entry **pp = &admin_entries; *pp; pp = &(*pp)->next) {
        if ((*pp)->kind == kind && strcmp((*pp)->id, id) == 0) {
            admin_entry *dead = *pp;
            *pp = dead->next;
            if (taken) {
                dead->next = NULL;
                *taken = dead;
            } else {
                admin_entry_free(dead);
            }
            rc = 0;
            break;
        }
    }
    atomic_store_explicit(&admin_any, admin_entries != NULL, memory_order_release);
    pthread_mutex_unlock(&admin_lock);
    atomic_fetch_add(&admin_generation, 1);
    return rc;
}

static int admin_cancel(admin_kind kind, const char *id)
{
    return admin_cancel_take(kind, id, NULL);
}

static json_t *opt_str(const char *s)
{
    return s ? json_string(s) : json_null();
}

/* The list entries of KumoMTA's BounceV1ListEntry, SuspendV1ListEntry and
 * SuspendReadyQueueV1ListEntry: duration is the time left. */
static json_t *admin_list(admin_kind kind)
{
    json_t *a = json_array();
    pthread_mutex_lock(&admin_lock);
    admin_expire_locked();
    int64_t now = clock_wall_ns();
    for (admin_entry *e = admin_entries; e; e = e->next) {
        if (e->kind != kind)
            continue;
        json_t *o = json_object();
        json_object_set_new(o, "id", json_string(e->id));
        json_object_set_new(o, "reason", json_string(e->reason));
        char dur[64];
        duration_format(e->expires_wall_ns - now, dur, sizeof(dur));
        json_object_set_new(o, "duration", json_string(dur));
        if (kind == ADM_SUSPEND_READYQ) {
            json_object_set_new(o, "name", json_string(e->name));
            char when[64];
            json_object_set_new(
                o, "expires",
                json_string(admin_format_time(e->expires_wall_ns, when, sizeof(when))));
        } else {
            json_object_set_new(o, "domain", opt_str(e->domain));
            json_object_set_new(o, "campaign", opt_str(e->campaign));
            json_object_set_new(o, "tenant", opt_str(e->tenant));
        }
        if (kind == ADM_BOUNCE) {
            json_object_set_new(o, "routing_domain", opt_str(e->routing_domain));
            json_object_set_new(o, "bounced",
                                e->bounced_by_queue ? json_deep_copy(e->bounced_by_queue)
                                                    : json_object());
            json_object_set_new(o, "total_bounced",
                                json_integer((json_int_t)atomic_load(&e->bounced)));
        }
        json_array_append_new(a, o);
    }
    pthread_mutex_unlock(&admin_lock);
    return a;
}

const char *admin_format_time(int64_t wall_ns, char *buf, size_t len)
{
    time_t t = (time_t)(wall_ns / NS_PER_SEC);
    struct tm tm;
    gmtime_r(&t, &tm);
    char base[40];
    strftime(base, sizeof(base), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf, len, "%s.%06lldZ", base, (long long)((wall_ns % NS_PER_SEC) / 1000));
    return buf;
}

/* ---- AdminBounce on a message --------------------------------------------------- */

struct abounce {
    char *queue;
    char *reason;
    bool suppress;
};

static void abounce_free(void *ud)
{
    struct abounce *b = ud;
    free(b->queue);
    free(b->reason);
    free(b);
}

static void abounce_after_load(qmsg *q, int err, void *ud)
{
    struct abounce *b = ud;
    if (!err && q->m && !b->suppress) {
        char content[600];
        snprintf(content, sizeof(content), "Administrator bounced with reason: %s", b->reason);
        rec_ctx x = {.queue = b->queue, .site = "localhost"};
        disp_response r = {551, 5, 7, 1, content, NULL};
        qmsg_log(LOGREC_ADMIN_BOUNCE, q->m, q->num_attempts, &x, &r);
    }
    atomic_fetch_add(&st_failed, 0);
    qmsg_forget(q);
    qmsg_free(q);
    abounce_free(b);
}

static void admin_bounce_msg(const char *queue, qmsg *q, const char *reason, bool suppress)
{
    struct abounce *b = calloc(1, sizeof(*b));
    if (!b)
        abort();
    b->queue = strdup(queue);
    b->reason = strdup(reason);
    b->suppress = suppress;
    qmsg_load(q, logs_records_want_data(), abounce_after_load, b, abounce_free);
}

/* Checked when a message is placed and when it is made ready: returns true
 * when an admin action consumed or delayed it. */
bool admin_intercept(schedq *sq, qmsg *q)
{
    char reason[512];
    bool suppress = false;
    if (admin_find(ADM_BOUNCE, sq->name, &sq->parts, reason, sizeof(reason), NULL, &suppress)) {
        admin_bounce_msg(sq->name, q, reason, suppress);
        return true;
    }
    return false;
}

static void bcast_done_on_origin(void *arg)
{
    bcast *b = arg;
    b->finish(b);
    json_decref(b->req);
    free(b->id);
    pthread_mutex_destroy(&b->lock);
    free(b);
}

void bcast_part_done(bcast *b)
{
    if (atomic_fetch_sub(&b->remaining, 1) == 1)
        reactor_post(b->origin, bcast_done_on_origin, b);
}

bcast *bcast_new(admin_cb cb, void *ud, const json_t *req, void (*finish)(bcast *))
{
    bcast *b = calloc(1, sizeof(*b));
    if (!b)
        abort();
    b->origin = reactor_current();
    b->cb = cb;
    b->ud = ud;
    b->req = req ? json_deep_copy(req) : NULL;
    b->finish = finish;
    pthread_mutex_init(&b->lock, NULL);
    atomic_store(&b->remaining, reactor_count());
    return b;
}

void bcast_run(bcast *b, reactor_fn fn)
{
    for (int i = 0; i < reactor_count(); i++)
        reactor_post(reactor_get(i), fn, b);
}

/* ---- bounce ------------------------------------------------------------------------------ */

static void bounce_on_reactor(void *arg)
{
    bcast *b = arg;
    qtables *t = tables();
    long long n = 0;
    FOREACH_SCHEDQ(t, sq)
    {
        if (!admin_matches(b->entry, sq->name, &sq->parts))
            continue;
        long long nq = 0;
        qlist *lists[2] = {&sq->waiting, &sq->pending};
        for (int li = 0; li < 2; li++) {
            while (lists[li]->count) {
                qmsg *q = qlist_pop(lists[li]);
                if (li == 0) {
                    reactor_timer_cancel(reactor_current(), &q->timer);
                    atomic_fetch_sub(&st_scheduled, 1);
                }
                admin_bounce_msg(sq->name, q, b->entry->reason, b->entry->suppress_logging);
                nq++;
            }
        }
        if (nq) {
            pthread_mutex_lock(&admin_lock);
            bounced_add_locked(b->entry, sq->name, nq);
            pthread_mutex_unlock(&admin_lock);
            pthread_mutex_lock(&b->lock);
            if (!b->acc)
                b->acc = json_object();
            json_object_set_new(b->acc, sq->name, json_integer(nq));
            pthread_mutex_unlock(&b->lock);
        }
        n += nq;
        sched_arm_reap(sq);
    }
    pthread_mutex_lock(&b->lock);
    b->count += n;
    pthread_mutex_unlock(&b->lock);
    bcast_part_done(b);
}

static void bounce_finish(bcast *b)
{
    json_t *res = json_object();
    json_object_set_new(res, "id", json_string(b->entry->id));
    json_object_set_new(res, "bounced", b->acc ? b->acc : json_object());
    b->acc = NULL;
    json_object_set_new(res, "total_bounced", json_integer(b->count));
    b->cb(b->ud, 200, res, NULL);
}

void queue_admin_bounce(const json_t *req, admin_cb cb, void *ud)
{
    char err[300];
    admin_entry *e;
    if (admin_parse(req, ADM_BOUNCE, &e, err, sizeof(err)) != 0) {
        cb(ud, 422, NULL, err);
        return;
    }
    admin_add(e);
    bcast *b = bcast_new(cb, ud, req, bounce_finish);
    b->entry = e;
    bcast_run(b, bounce_on_reactor);
}

json_t *queue_admin_bounce_list(void)
{
    return admin_list(ADM_BOUNCE);
}

int queue_admin_bounce_cancel(const char *id)
{
    return admin_cancel(ADM_BOUNCE, id);
}

/* ---- suspensions ------------------------------------------------------------------------- */

/* A suspension of either kind takes effect as it is added: the queues
 * consult the entries (admin_suspended, readyq_suspended). */
static int admin_create(admin_kind kind, const json_t *req, json_t **result, char *err,
                        size_t errlen)
{
    admin_entry *e;
    int rc = admin_parse(req, kind, &e, err, errlen);
    if (rc)
        return rc;
    admin_add(e);
    *result = json_pack("{s:s}", "id", e->id);
    return 0;
}

int queue_admin_suspend(const json_t *req, json_t **result, char *err, size_t errlen)
{
    return admin_create(ADM_SUSPEND, req, result, err, errlen);
}

json_t *queue_admin_suspend_list(void)
{
    return admin_list(ADM_SUSPEND);
}

/* suspend-cancel: the messages the suspension held (each got a
 * TransientFailure and a retry time) are due at once, rather than waiting
 * out their retry interval: the operator who lifts a suspension wants the
 * mail to move. (kumod's own; KumoMTA leaves them to their retry.) */
struct release_job {
    admin_entry *entry;
    atomic_int remaining;
};

static void release_on_reactor(void *arg)
{
    struct release_job *j = arg;
    qtables *t = tables();
    FOREACH_SCHEDQ(t, sq)
    {
        if (!admin_matches(j->entry, sq->name, &sq->parts))
            continue;
        qlist held;
        qlist_init(&held);
        for (qmsg *q = sq->waiting.head.next, *next; q != &sq->waiting.head; q = next) {
            next = q->next;
            if (!qmsg_has_reason(q, R_ADMIN_SUSPENDED))
                continue;
            reactor_timer_cancel(reactor_current(), &q->timer);
            qlist_del(&sq->waiting, q);
            qlist_push(&held, q);
        }
        /* collected first: making one ready may put others on the list */
        qmsg *q;
        while ((q = qlist_pop(&held)))
            sched_release(sq, q);
        sched_arm_reap(sq);
    }
    if (atomic_fetch_sub(&j->remaining, 1) == 1) {
        admin_entry_free(j->entry);
        free(j);
    }
}

int queue_admin_suspend_cancel(const char *id)
{
    admin_entry *e = NULL;
    int rc = admin_cancel_take(ADM_SUSPEND, id, &e);
    if (rc != 0 || !e)
        return rc;
    struct release_job *j = calloc(1, sizeof(*j));
    if (!j)
        abort();
    j->entry = e;
    atomic_store(&j->remaining, reactor_count());
    for (int i = 0; i < reactor_count(); i++)
        reactor_post(reactor_get(i), release_on_reactor, j);
    return 0;
}

int queue_admin_suspend_readyq(const json_t *req, json_t **result, char *err, size_t errlen)
{
    return admin_create(ADM_SUSPEND_READYQ, req, result, err, errlen);
}

json_t *queue_admin_suspend_readyq_list(void)
{
    return admin_list(ADM_SUSPEND_READYQ);
}

int queue_admin_suspend_readyq_cancel(const char *id)
{
    return admin_cancel(ADM_SUSPEND_READYQ, id);
}

/* Scheduled-queue suspension: a TransientFailure and a retry with an
 * attempt, as KumoMTA does. Returns true when it consumed q. */

struct susp_job {
    char *queue;
    char *reason;
};

static void susp_job_free(void *ud)
{
    struct susp_job *s = ud;
    free(s->queue);
    free(s->reason);
    free(s);
}

static void susp_after_load(qmsg *q, int err, void *ud)
{
    struct susp_job *s = ud;
    if (err || !q->m) {
        qmsg_free(q);
    } else {
        char content[600];
        snprintf(content, sizeof(content), "KumoMTA internal: scheduled queue is suspended: %s",
                 s->reason);
        rec_ctx x = {.queue = s->queue, .site = s->queue};
        disp_response r = {451, 4, 4, 4, content, NULL};
        qmsg_log(LOGREC_TRANSIENT_FAILURE, q->m, q->num_attempts, &x, &r);
        atomic_fetch_add(&st_transfail, 1);
        qmsg_add_reason(q, R_ADMIN_SUSPENDED); /* suspend-cancel releases it */
        qmsg_add_reason(q, R_LOGGED_TRANSIENT_FAILURE);
        requeue_post(q, s->queue, true, false, -1);
    }
    susp_job_free(s);
}

bool admin_suspended(schedq *sq, qmsg *q)
{
    char reason[512];
    if (!admin_find(ADM_SUSPEND, sq->name, &sq->parts, reason, sizeof(reason), NULL, NULL))
        return false;
    struct susp_job *s = calloc(1, sizeof(*s));
    if (!s)
        abort();
    s->queue = strdup(sq->name);
    s->reason = strdup(reason);
    qmsg_load(q, logs_records_want_data(), susp_after_load, s, susp_job_free);
    return true;
}

bool admin_sched_suspended(const char *qname, const queue_name_parts *p)
{
    char reason[8];
    return admin_find(ADM_SUSPEND, qname, p, reason, sizeof(reason), NULL, NULL);
}

json_t *readyq_suspension(const char *name)
{
    json_t *found = NULL;
    json_t *all = admin_list(ADM_SUSPEND_READYQ);
    size_t i;
    json_t *v;
    json_array_foreach(
        all, i, v) if (!found && strcmp(json_string_value(json_object_get(v, "name")), name) == 0)
        found = json_incref(v);
    json_decref(all);
    if (found) {
        /* since: when the entry was made */
        pthread_mutex_lock(&admin_lock);
        for (admin_entry *e = admin_entries; e; e = e->next)
            if (e->kind == ADM_SUSPEND_READYQ &&
                strcmp(e->id, json_string_value(json_object_get(found, "id"))) == 0) {
                char when[64];
                json_object_set_new(found, "since",
                                    json_string(admin_format_time(
                                        e->expires_wall_ns - e->duration_ns, when, sizeof(when))));
            }
        pthread_mutex_unlock(&admin_lock);
    }
    return found;
}

bool readyq_suspended(const readyq *rq)
{
    char reason[512];
    return admin_find(ADM_SUSPEND_READYQ, rq->name, NULL, reason, sizeof(reason), NULL, NULL);
}
