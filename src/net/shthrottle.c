/* Shared throttles and connection-limit leases (see shthrottle.h). Owns the
 * process-wide Redis configuration of kumo.configure_redis_throttles, the
 * in-process table of named throttles and limits (used when a spec is
 * local, when Redis is not configured, and as the fallback while it does
 * not answer), the two Redis scripts, and per reactor the list of shared
 * leases it renews.
 *
 * Threads: the configuration and the in-process table are shared (a mutex
 * guards the table; the configuration is swapped under it); Redis requests
 * and lease renewal run on the calling reactor. Failures: a Redis error or
 * timeout answers from the in-process table (logged once per outage); a
 * shared lease whose renewal fails is kept (the connection is already up)
 * and lapses in Redis after its TTL, which only makes room for others.
 * An orderly shutdown releases the leases of the dispatchers it stops and
 * waits (shthrottle_drain) until Redis has them, so the other nodes need
 * not wait for the TTL. */
#include "net/shthrottle.h"

#include <event2/event.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/diag.h"
#include "core/reactor.h"
#include "core/spoolid.h"

#define TMOD "kumod::throttle"
#define US 1000LL

/* GCRA for up to ARGV[3] tokens; the arithmetic of throttle_take_n in
 * microseconds, on the server's clock. Stored as an integer string: Lua
 * 5.1's tostring would round a 16-digit number. Returns {granted,
 * retry_after_us, reset_after_us, remaining}. */
static const char GCRA_LUA[] =
    "local interval = tonumber(ARGV[1])\n"
    "local tolerance = tonumber(ARGV[2])\n"
    "local want = tonumber(ARGV[3])\n"
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000000 + tonumber(t[2])\n"
    "local tat = tonumber(redis.call('GET', KEYS[1]) or '0')\n"
    "if tat < now then tat = now end\n"
    "local slack = tolerance - (tat - now)\n"
    "local room = 0\n"
    "if slack >= interval then room = math.floor(slack / interval) end\n"
    "if room <= 0 then return {0, interval - slack, tat - now, 0} end\n"
    "local n = want\n"
    "if room < n then n = room end\n"
    "local new_tat = tat + n * interval\n"
    "redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX',\n"
    "           math.floor((new_tat - now) / 1000) + 1000)\n"
    "return {n, 0, new_tat - now, room - n}\n";

/* Leases: ARGV = op ("acquire", "renew", "release"), lease id, limit, ttl_ms.
 * Members scored by their expiry (server clock, ms); lapsed ones are
 * dropped before counting. */
static const char LEASE_LUA[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "local ttl = tonumber(ARGV[4])\n"
    "if ARGV[1] == 'release' then return redis.call('ZREM', KEYS[1], ARGV[2]) end\n"
    "redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)\n"
    "if ARGV[1] == 'renew' then\n"
    "  local r = redis.call('ZADD', KEYS[1], 'XX', 'CH', now + ttl, ARGV[2])\n"
    "  redis.call('PEXPIRE', KEYS[1], ttl * 2)\n"
    "  return r\n"
    "end\n"
    "if redis.call('ZSCORE', KEYS[1], ARGV[2]) then return 1 end\n"
    "if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then\n"
    "  redis.call('ZADD', KEYS[1], now + ttl, ARGV[2])\n"
    "  redis.call('PEXPIRE', KEYS[1], ttl * 2)\n"
    "  return 1\n"
    "end\n"
    "return 0\n";

static char gcra_sha[41], lease_sha[41];
static pthread_once_t sha_once = PTHREAD_ONCE_INIT;

static void sha1_hex(const char *s, char out[41])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    if (EVP_Digest(s, strlen(s), md, &n, EVP_sha1(), NULL) != 1 || n != 20)
        abort();
    for (unsigned i = 0; i < 20; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
}

static void init_shas(void)
{
    sha1_hex(GCRA_LUA, gcra_sha);
    sha1_hex(LEASE_LUA, lease_sha);
}

/* ---- the in-process table ---------------------------------------------------------- */

#define LBUCKETS 1024

typedef struct lentry {
    struct lentry *next;
    throttle_state st;
    long leases;
    char name[];
} lentry;

static pthread_mutex_t lmu = PTHREAD_MUTEX_INITIALIZER;
static lentry *ltab[LBUCKETS];
static redis_cfg *shared_cfg; /* under lmu */
static atomic_bool shared_on;
static atomic_bool redis_down; /* the last shared call failed */
static size_t n_entries;

static uint64_t hash_name(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 1099511628211ULL;
    return h;
}

/* lmu held. Drops idle throttles now and then, so the table stays as large
 * as what is in use (names may carry a tenant or a sender). */
static void prune_locked(int64_t now_ns)
{
    for (size_t b = 0; b < LBUCKETS; b++)
        for (lentry **pp = &ltab[b]; *pp;) {
            lentry *e = *pp;
            if (e->leases == 0 && e->st.tat_ns < now_ns) {
                *pp = e->next;
                free(e);
                n_entries--;
            } else
                pp = &e->next;
        }
}

static lentry *lookup_locked(const char *name, bool create)
{
    size_t b = hash_name(name) % LBUCKETS;
    for (lentry *e = ltab[b]; e; e = e->next)
        if (strcmp(e->name, name) == 0)
            return e;
    if (!create)
        return NULL;
    if (n_entries > 64 * LBUCKETS)
        prune_locked(clock_wall_ns());
    size_t len = strlen(name);
    lentry *e = calloc(1, sizeof(*e) + len + 1);
    if (!e)
        abort();
    memcpy(e->name, name, len + 1);
    e->next = ltab[b];
    ltab[b] = e;
    n_entries++;
    return e;
}

void shthrottle_take_local(const char *name, const throttle_spec *spec, unsigned want,
                           int64_t now_ns, shthrottle_result *out)
{
    uint64_t granted = 0;
    throttle_info info;
    pthread_mutex_lock(&lmu);
    lentry *e = lookup_locked(name, true);
    int64_t wait = throttle_take_n(&e->st, spec, now_ns, want, &granted, &info);
    pthread_mutex_unlock(&lmu);
    memset(out, 0, sizeof(*out));
    out->throttled = granted == 0;
    out->granted = (unsigned)granted;
    out->limit = info.limit;
    out->remaining = info.remaining;
    out->reset_after_ns = info.reset_after_ns;
    out->retry_after_ns = wait;
}

long shlease_local_count(const char *name)
{
    pthread_mutex_lock(&lmu);
    lentry *e = lookup_locked(name, false);
    long n = e ? e->leases : 0;
    pthread_mutex_unlock(&lmu);
    return n;
}

/* ---- configuration -------------------------------------------------------------------- */

void shthrottle_configure(redis_cfg *cfg_take)
{
    pthread_once(&sha_once, init_shas);
    pthread_mutex_lock(&lmu);
    redis_cfg *old = shared_cfg;
    shared_cfg = cfg_take;
    atomic_store(&shared_on, cfg_take != NULL);
    atomic_store(&redis_down, false);
    if (!cfg_take) { /* shutdown: the table goes too */
        for (size_t b = 0; b < LBUCKETS; b++)
            while (ltab[b]) {
                lentry *e = ltab[b];
                ltab[b] = e->next;
                free(e);
            }
        n_entries = 0;
    }
    pthread_mutex_unlock(&lmu);
    redis_cfg_unref(old);
    if (cfg_take)
        DINFO(TMOD, "throttles and connection limits are shared through redis %s",
              redis_cfg_service(cfg_take));
}

bool shthrottle_is_shared(void)
{
    return atomic_load(&shared_on);
}

static redis_cfg *cfg_ref(void)
{
    if (!atomic_load(&shared_on) || !reactor_current())
        return NULL;
    pthread_mutex_lock(&lmu);
    redis_cfg *c = shared_cfg;
    if (c)
        redis_cfg_ref(c);
    pthread_mutex_unlock(&lmu);
    return c;
}

static void note_failure(const char *what, const char *err)
{
    if (!atomic_exchange(&redis_down, true))
        DERROR(TMOD,
               "shared %s unavailable: %s; throttles and connection limits are enforced per node "
               "(in-process) until redis answers again",
               what, err);
}

static void note_success(void)
{
    if (atomic_exchange(&redis_down, false))
        DWARN(TMOD, "redis answers again: throttles and connection limits are shared again");
}

/* ---- scripts ---------------------------------------------------------------------------- */

typedef void (*script_fn)(const redisReply *r, const char *err, void *ud);

struct script_call {
    redis_cfg *cfg;
    const char *sha, *body;
    char *key;
    char *args[4];
    int nargs;
    bool evaled;
    script_fn fn;
    void *ud;
};

static void script_call_free(struct script_call *s)
{
    redis_cfg_unref(s->cfg);
    free(s->key);
    for (int i = 0; i < s->nargs; i++)
        free(s->args[i]);
    free(s);
}

static void script_send(struct script_call *s);

static void script_done(const redisReply *r, const char *err, void *ud)
{
    struct script_call *s = ud;
    /* not yet in this server's script cache (restarted, failed over, a
     * cluster node seen for the first time): EVAL loads it */
    if (r && r->type == REDIS_REPLY_ERROR && !s->evaled && strncmp(r->str, "NOSCRIPT", 8) == 0) {
        s->evaled = true;
        script_send(s);
        return;
    }
    s->fn(r, err, s->ud);
    script_call_free(s);
}

static void script_send(struct script_call *s)
{
    const char *argv[8];
    size_t lens[8];
    int n = 0;
    argv[n++] = s->evaled ? "EVAL" : "EVALSHA";
    argv[n++] = s->evaled ? s->body : s->sha;
    argv[n++] = "1";
    argv[n++] = s->key;
    for (int i = 0; i < s->nargs; i++)
        argv[n++] = s->args[i];
    for (int i = 0; i < n; i++)
        lens[i] = strlen(argv[i]);
    if (redis_command(s->cfg, "script", n, argv, lens, 3, script_done, s) != 0) {
        s->fn(NULL, "redis: not on a reactor", s->ud);
        script_call_free(s);
    }
}

/* Takes a reference of cfg. */
static void script_run(redis_cfg *cfg, const char *sha, const char *body, const char *key,
                       const char *const *args, int nargs, script_fn fn, void *ud)
{
    struct script_call *s = calloc(1, sizeof(*s));
    if (!s)
        abort();
    s->cfg = cfg;
    s->sha = sha;
    s->body = body;
    s->key = strdup(key);
    for (int i = 0; i < nargs && i < 4; i++)
        s->args[s->nargs++] = strdup(args[i]);
    s->fn = fn;
    s->ud = ud;
    script_send(s);
}

/* ---- throttles ------------------------------------------------------------------------- */

struct take_job {
    char *name;
    throttle_spec spec;
    unsigned want;
    shthrottle_fn fn;
    void *ud;
};

static bool int_at(const redisReply *r, size_t i, long long *v)
{
    if (i >= r->elements || r->element[i]->type != REDIS_REPLY_INTEGER)
        return false;
    *v = r->element[i]->integer;
    return true;
}

static void take_done(const redisReply *r, const char *err, void *ud)
{
    struct take_job *j = ud;
    shthrottle_result res;
    long long granted, retry, reset, remaining;
    if (r && r->type == REDIS_REPLY_ARRAY && int_at(r, 0, &granted) && int_at(r, 1, &retry) &&
        int_at(r, 2, &reset) && int_at(r, 3, &remaining)) {
        note_success();
        memset(&res, 0, sizeof(res));
        res.shared = true;
        res.granted = granted > 0 ? (unsigned)granted : 0;
        res.throttled = res.granted == 0;
        res.limit = j->spec.max_burst ? j->spec.max_burst : 1;
        res.remaining = remaining > 0 ? (uint64_t)remaining : 0;
        res.retry_after_ns = res.throttled ? (retry > 0 ? retry : 1) * US : 0;
        res.reset_after_ns = reset > 0 ? reset * US : 0;
    } else {
        note_failure("throttle", err                              ? err
                                 : r && r->type == REDIS_REPLY_ERROR ? r->str
                                                                     : "unexpected reply");
        shthrottle_take_local(j->name, &j->spec, j->want, clock_wall_ns(), &res);
    }
    j->fn(&res, j->ud);
    free(j->name);
    free(j);
}

int shthrottle_take(const char *name, const throttle_spec *spec, unsigned want,
                    shthrottle_result *out, shthrottle_fn fn, void *ud)
{
    if (want == 0)
        want = 1;
    int64_t interval_us = spec->limit ? spec->period_ns / (int64_t)spec->limit / US : 0;
    redis_cfg *cfg = spec->local || interval_us <= 0 ? NULL : cfg_ref();
    if (!cfg) {
        shthrottle_take_local(name, spec, want, clock_wall_ns(), out);
        return 0;
    }
    struct take_job *j = calloc(1, sizeof(*j));
    if (!j)
        abort();
    j->name = strdup(name);
    j->spec = *spec;
    j->want = want;
    j->fn = fn;
    j->ud = ud;
    uint64_t burst = spec->max_burst ? spec->max_burst : 1;
    long long tol = burst > (uint64_t)(INT64_MAX / interval_us) ? INT64_MAX / 2
                                                                 : interval_us * (long long)burst;
    if (tol > (1LL << 52)) /* Lua's doubles: keep integers exact */
        tol = 1LL << 52;
    char key[8 + 1024], a0[32], a1[32], a2[32];
    snprintf(key, sizeof(key), "kumod:throttle:%.1000s", name);
    snprintf(a0, sizeof(a0), "%lld", (long long)interval_us);
    snprintf(a1, sizeof(a1), "%lld", tol);
    snprintf(a2, sizeof(a2), "%u", want);
    const char *args[] = {a0, a1, a2};
    script_run(cfg, gcra_sha, GCRA_LUA, key, args, 3, take_done, j);
    return 1;
}

/* ---- leases ----------------------------------------------------------------------------- */

struct shlease {
    shlease *next, *prev; /* the reactor's renewal list (shared leases) */
    bool shared;
    long limit;
    char id[40];
    char name[];
};

typedef struct lease_tab {
    shlease *held;
    struct event *renew_ev;
} lease_tab;

static __thread lease_tab *ltab_thread;

bool shlease_is_shared(const shlease *l)
{
    return l->shared;
}

static shlease *lease_new(const char *name, long limit, bool shared)
{
    size_t len = strlen(name);
    shlease *l = calloc(1, sizeof(*l) + len + 1);
    if (!l)
        abort();
    memcpy(l->name, name, len + 1);
    l->limit = limit;
    l->shared = shared;
    spoolid u;
    spoolid_new(&u);
    spoolid_to_uuid_str(&u, l->id);
    return l;
}

static shlease *local_acquire(const char *name, long limit)
{
    pthread_mutex_lock(&lmu);
    lentry *e = lookup_locked(name, true);
    bool ok = e->leases < limit;
    if (ok)
        e->leases++;
    pthread_mutex_unlock(&lmu);
    return ok ? lease_new(name, limit, false) : NULL;
}

static void lease_script(redis_cfg *cfg, const shlease *l, const char *op, script_fn fn,
                         void *ud)
{
    char key[16 + 1024], lim[32], ttl[32];
    snprintf(key, sizeof(key), "kumod:lease:%.1000s", l->name);
    snprintf(lim, sizeof(lim), "%ld", l->limit);
    snprintf(ttl, sizeof(ttl), "%lld", (long long)(SHLEASE_TTL_NS / 1000000));
    const char *args[] = {op, l->id, lim, ttl};
    script_run(cfg, lease_sha, LEASE_LUA, key, args, 4, fn, ud);
}

static void ignore_reply(const redisReply *r, const char *err, void *ud)
{
    (void)ud;
    if (err || (r && r->type == REDIS_REPLY_ERROR))
        DDEBUG(TMOD, "redis lease renewal/release failed: %s", err ? err : r->str);
}

static void renew_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    lease_tab *t = arg;
    redis_cfg *cfg = cfg_ref();
    if (!cfg)
        return;
    for (shlease *l = t->held; l; l = l->next) {
        redis_cfg_ref(cfg);
        lease_script(cfg, l, "renew", ignore_reply, NULL);
    }
    redis_cfg_unref(cfg);
}

static void hold(shlease *l)
{
    lease_tab *t = ltab_thread;
    if (!t) {
        t = calloc(1, sizeof(*t));
        if (!t)
            abort();
        t->renew_ev = event_new(reactor_base(reactor_current()), -1, EV_PERSIST, renew_cb, t);
        if (!t->renew_ev)
            abort();
        struct timeval tv = {SHLEASE_RENEW_NS / 1000000000LL, 0};
        evtimer_add(t->renew_ev, &tv);
        ltab_thread = t;
    }
    l->next = t->held;
    if (t->held)
        t->held->prev = l;
    t->held = l;
}

static void unhold(shlease *l)
{
    lease_tab *t = ltab_thread;
    if (!t)
        return;
    if (l->prev)
        l->prev->next = l->next;
    else
        t->held = l->next;
    if (l->next)
        l->next->prev = l->prev;
    if (!t->held) { /* nothing to renew: no timer keeps the reactor busy */
        event_free(t->renew_ev);
        free(t);
        ltab_thread = NULL;
    }
}

struct acq_job {
    shlease *l;
    shlease_fn fn;
    void *ud;
};

static void acquire_done(const redisReply *r, const char *err, void *ud)
{
    struct acq_job *j = ud;
    shlease *l = j->l;
    if (r && r->type == REDIS_REPLY_INTEGER) {
        note_success();
        if (r->integer == 1) {
            hold(l);
        } else {
            free(l);
            l = NULL;
        }
    } else {
        note_failure("connection limit", err                              ? err
                                         : r && r->type == REDIS_REPLY_ERROR ? r->str
                                                                             : "unexpected reply");
        shlease *local = local_acquire(l->name, l->limit);
        free(l);
        l = local;
    }
    j->fn(l, j->ud);
    free(j);
}

int shlease_acquire(const char *name, long limit, bool local, shlease **out, shlease_fn fn,
                    void *ud)
{
    redis_cfg *cfg = local ? NULL : cfg_ref();
    if (!cfg) {
        *out = local_acquire(name, limit);
        return 0;
    }
    struct acq_job *j = calloc(1, sizeof(*j));
    if (!j)
        abort();
    j->l = lease_new(name, limit, true);
    j->fn = fn;
    j->ud = ud;
    lease_script(cfg, j->l, "acquire", acquire_done, j);
    return 1;
}

static atomic_int releases_inflight;

static void release_done(const redisReply *r, const char *err, void *ud)
{
    ignore_reply(r, err, ud);
    atomic_fetch_sub(&releases_inflight, 1);
}

void shthrottle_drain(int64_t timeout_ns)
{
    int64_t end = clock_mono_ns() + timeout_ns;
    while (atomic_load(&releases_inflight) > 0 && clock_mono_ns() < end) {
        struct timespec ts = {0, 5 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

void shlease_release(shlease *l)
{
    if (!l)
        return;
    if (l->shared) {
        unhold(l);
        redis_cfg *cfg = cfg_ref();
        if (cfg) {
            atomic_fetch_add(&releases_inflight, 1);
            lease_script(cfg, l, "release", release_done, NULL);
        }
    } else {
        pthread_mutex_lock(&lmu);
        lentry *e = lookup_locked(l->name, false);
        if (e && e->leases > 0)
            e->leases--;
        pthread_mutex_unlock(&lmu);
    }
    free(l);
}
