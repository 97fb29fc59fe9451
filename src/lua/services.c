/* kumo.define_spool / kumo.configure_local_logs and the process-wide spool
 * they produce. Definitions are recorded under a mutex while init runs on
 * reactor 0; main opens the stores afterwards on its own thread. */
#include "lua/services.h"

#include <jansson.h>
#include <lauxlib.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "core/diag.h"
#include "core/kerr.h"
#include "log/loghook.h"
#include "log/logs.h"
#include "lua/klua.h"

static pthread_mutex_t svc_lock = PTHREAD_MUTEX_INITIALIZER;
static spool_params spool_defs[2]; /* 0 = data, 1 = meta */
static bool spool_defined[2];
static spool *the_spool;
static atomic_bool spool_ready;
static bool validate_only;
static atomic_bool suspend_when_unhealthy = true;

/* delivered-but-not-removed ids: a small open-addressing set */
static pthread_mutex_t delivered_lock = PTHREAD_MUTEX_INITIALIZER;
static spoolid *delivered;
static size_t delivered_cap, delivered_n;

static bool id_zero(const spoolid *id)
{
    for (int i = 0; i < 16; i++)
        if (id->b[i])
            return false;
    return true;
}

void services_note_delivered(const spoolid *id)
{
    pthread_mutex_lock(&delivered_lock);
    if ((delivered_n + 1) * 2 > delivered_cap) {
        size_t ncap = delivered_cap ? delivered_cap * 2 : 1024;
        spoolid *n = calloc(ncap, sizeof(*n));
        if (!n) {
            pthread_mutex_unlock(&delivered_lock);
            return;
        }
        for (size_t i = 0; i < delivered_cap; i++) {
            if (id_zero(&delivered[i]))
                continue;
            size_t j = spoolid_hash(&delivered[i]) & (ncap - 1);
            while (!id_zero(&n[j]))
                j = (j + 1) & (ncap - 1);
            n[j] = delivered[i];
        }
        free(delivered);
        delivered = n;
        delivered_cap = ncap;
    }
    size_t j = spoolid_hash(id) & (delivered_cap - 1);
    while (!id_zero(&delivered[j]) && !spoolid_eq(&delivered[j], id))
        j = (j + 1) & (delivered_cap - 1);
    if (id_zero(&delivered[j])) {
        delivered[j] = *id;
        delivered_n++;
    }
    pthread_mutex_unlock(&delivered_lock);
}

bool services_was_delivered(const spoolid *id)
{
    if (!delivered_n)
        return false;
    bool found = false;
    pthread_mutex_lock(&delivered_lock);
    if (delivered_cap) {
        size_t j = spoolid_hash(id) & (delivered_cap - 1);
        while (!id_zero(&delivered[j])) {
            if (spoolid_eq(&delivered[j], id)) {
                found = true;
                break;
            }
            j = (j + 1) & (delivered_cap - 1);
        }
    }
    pthread_mutex_unlock(&delivered_lock);
    return found;
}

bool services_suspend_delivery_when_unhealthy(void)
{
    return atomic_load(&suspend_when_unhealthy);
}

static int l_suspend_when_unhealthy(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TBOOLEAN);
    if (!klua_in_init())
        return luaL_error(L, "kumo.suspend_delivery_when_spool_unhealthy may only be called from "
                             "inside the init event handler");
    atomic_store(&suspend_when_unhealthy, lua_toboolean(L, 1));
    return 0;
}

void services_set_validate_only(bool on)
{
    validate_only = on;
}

bool services_validate_only(void)
{
    return validate_only;
}

static int l_define_spool(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    char err[512];
    json_t *j = klua_to_json(L, 1, err, sizeof(err));
    if (!j)
        return luaL_error(L, "kumo.define_spool: %s", err);
    spool_params p;
    int rc = spool_params_from_json(j, &p, err, sizeof(err));
    json_decref(j);
    if (rc != 0)
        return luaL_error(L, "kumo.define_spool: %s", err);
    int slot = strcmp(p.name, "data") == 0 ? 0 : strcmp(p.name, "meta") == 0 ? 1 : -1;
    if (slot < 0) {
        snprintf(err, sizeof(err), "kumo.define_spool: name must be 'data' or 'meta', not '%s'",
                 p.name);
        spool_params_fini(&p);
        return luaL_error(L, "%s", err);
    }
    pthread_mutex_lock(&svc_lock);
    if (spool_defined[slot])
        spool_params_fini(&spool_defs[slot]);
    spool_defs[slot] = p;
    spool_defined[slot] = true;
    pthread_mutex_unlock(&svc_lock);
    return 0;
}

static int l_configure_local_logs(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    char err[512];
    json_t *j = klua_to_json(L, 1, err, sizeof(err));
    if (!j)
        return luaL_error(L, "kumo.configure_local_logs: %s", err);
    int rc = 0;
    if (!validate_only)
        rc = logs_add_local_from_json(j, err, sizeof(err));
    json_decref(j);
    if (rc != 0)
        return luaL_error(L, "kumo.configure_local_logs: %s", err);
    return 0;
}

static int l_configure_log_hook(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    char err[512];
    json_t *j = klua_to_json(L, 1, err, sizeof(err));
    if (!j)
        return luaL_error(L, "kumo.configure_log_hook: %s", err);
    /* --validate checks the parameters without starting anything */
    int rc = loghook_add_from_json(j, validate_only, err, sizeof(err));
    json_decref(j);
    if (rc != 0)
        return luaL_error(L, "kumo.configure_log_hook: %s", err);
    return 0;
}

static void services_open(lua_State *L)
{
    lua_pushcfunction(L, l_configure_log_hook);
    lua_setfield(L, -2, "configure_log_hook");
    lua_pushcfunction(L, l_define_spool);
    lua_setfield(L, -2, "define_spool");
    lua_pushcfunction(L, l_configure_local_logs);
    lua_setfield(L, -2, "configure_local_logs");
    lua_pushcfunction(L, l_suspend_when_unhealthy);
    lua_setfield(L, -2, "suspend_delivery_when_spool_unhealthy");
}

void services_lua_register(void)
{
    klua_register_opener(services_open);
}

/* adapts logs_foreach_dir's callback to services_foreach_dir's */
static int log_dir_cb(const char *dir, void *arg)
{
    struct {
        int (*fn)(const char *, bool, void *);
        void *ud;
    } *w = arg;
    return w->fn(dir, false, w->ud);
}

const char *services_spool_path(const char *name)
{
    int slot = strcmp(name, "data") == 0 ? 0 : strcmp(name, "meta") == 0 ? 1 : -1;
    return slot >= 0 && spool_defined[slot] ? spool_defs[slot].path : NULL;
}

int services_check_spools_defined(char *err, size_t errlen)
{
    static const char *const names[2] = {"data", "meta"};
    for (int i = 0; i < 2; i++) {
        if (!spool_defined[i]) {
            snprintf(err, errlen,
                     "no spool named '%s' is defined: call kumo.define_spool{name='%s', ...} "
                     "in your init handler",
                     names[i], names[i]);
            return KERR_INVAL;
        }
    }
    return 0;
}

int services_foreach_dir(int (*fn)(const char *dir, bool spool, void *ud), void *ud)
{
    for (int i = 0; i < 2; i++)
        if (spool_defined[i] && spool_defs[i].path) {
            int rc = fn(spool_defs[i].path, true, ud);
            if (rc)
                return rc;
        }
    struct {
        int (*fn)(const char *, bool, void *);
        void *ud;
    } w = {fn, ud};
    return logs_foreach_dir(log_dir_cb, &w);
}

int services_open_spool(char *err, size_t errlen)
{
    static const char *const names[2] = {"data", "meta"};
    spool_store *stores[2] = {NULL, NULL};
    for (int i = 0; i < 2; i++) {
        if (!spool_defined[i]) {
            snprintf(err, errlen,
                     "no spool named '%s' is defined: call kumo.define_spool{name='%s', ...} "
                     "in your init handler",
                     names[i], names[i]);
            goto fail;
        }
        char e2[512];
        int rc = spool_store_open(&spool_defs[i], &stores[i], e2, sizeof(e2));
        if (rc != 0) {
            snprintf(err, errlen, "opening spool '%s' at %s: %s", names[i], spool_defs[i].path,
                     e2);
            goto fail;
        }
    }
    int src = spool_new(stores[0], stores[1], &the_spool);
    if (src != 0) {
        snprintf(err, errlen, "cannot start the spool: %s (details above)", kerr_str(src));
        return -1;
    }
    return 0;
fail:
    for (int i = 0; i < 2; i++)
        if (stores[i])
            spool_store_close(stores[i]);
    return -1;
}

spool *services_spool(void)
{
    return the_spool;
}

bool services_spool_sync(void)
{
    return (spool_defined[0] && spool_defs[0].flush) || (spool_defined[1] && spool_defs[1].flush);
}

bool services_spool_healthy(char *reason, size_t len)
{
    if (!the_spool) {
        if (reason)
            snprintf(reason, len, "waiting for spool startup");
        return false;
    }
    return spool_healthy(the_spool, reason, len);
}

bool services_spool_ready(void)
{
    return atomic_load(&spool_ready);
}

void services_set_spool_ready(void)
{
    atomic_store(&spool_ready, true);
}

void services_spool_stop(void)
{
    spool_stop(the_spool);
}

void services_shutdown(void)
{
    if (the_spool) {
        spool_stats st;
        spool_get_stats(the_spool, &st);
        DINFO("kumod::spool",
              "spool stats: saves=%llu syncs=%llu synced_saves=%llu (%.1f saves per sync) "
              "removes=%llu loads=%llu errors=%llu delayed_groups=%llu groups=%llu "
              "journal_checkpoints=%llu never_stored=%llu",
              (unsigned long long)st.saves, (unsigned long long)st.syncs,
              (unsigned long long)st.synced_saves,
              st.syncs ? (double)st.synced_saves / (double)st.syncs : 0.0,
              (unsigned long long)st.removes, (unsigned long long)st.loads,
              (unsigned long long)st.errors, (unsigned long long)st.delayed_groups,
              (unsigned long long)st.groups, (unsigned long long)st.journal_checkpoints,
              (unsigned long long)st.never_stored);
        spool_free(the_spool);
        the_spool = NULL;
    }
    free(delivered);
    delivered = NULL;
    delivered_cap = delivered_n = 0;
    for (int i = 0; i < 2; i++)
        if (spool_defined[i]) {
            spool_params_fini(&spool_defs[i]);
            spool_defined[i] = false;
        }
}
