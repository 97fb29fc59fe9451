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
#include "log/logs.h"
#include "lua/klua.h"

static pthread_mutex_t svc_lock = PTHREAD_MUTEX_INITIALIZER;
static spool_params spool_defs[2]; /* 0 = data, 1 = meta */
static bool spool_defined[2];
static spool *the_spool;
static atomic_bool spool_ready;
static bool validate_only;

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

static void services_open(lua_State *L)
{
    lua_pushcfunction(L, l_define_spool);
    lua_setfield(L, -2, "define_spool");
    lua_pushcfunction(L, l_configure_local_logs);
    lua_setfield(L, -2, "configure_local_logs");
}

void services_lua_register(void)
{
    klua_register_opener(services_open);
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
    if (spool_new(stores[0], stores[1], &the_spool) != 0) {
        snprintf(err, errlen, "cannot start the spool threads");
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

bool services_spool_ready(void)
{
    return atomic_load(&spool_ready);
}

void services_set_spool_ready(void)
{
    atomic_store(&spool_ready, true);
}

void services_shutdown(void)
{
    if (the_spool) {
        spool_free(the_spool);
        the_spool = NULL;
    }
    for (int i = 0; i < 2; i++)
        if (spool_defined[i]) {
            spool_params_fini(&spool_defs[i]);
            spool_defined[i] = false;
        }
}
