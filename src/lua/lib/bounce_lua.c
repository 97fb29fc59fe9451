/* kumo.configure_bounce_classifier{files, ...}: reads and checks the rule
 * files (bounce.h), builds the classifier and installs it process-wide, and
 * hands the log layer the function that classifies each Bounce,
 * TransientFailure, Expiration... record (logs_set_classifier).
 *
 * The installed classifier is published through one atomic pointer, so the
 * threads that log (every reactor) read it without a lock. A classifier that
 * is replaced (a second configure call, or a reload) is kept, never freed,
 * because a thread may still be matching with it; reloads are rare and a
 * classifier is small. As in KumoMTA, the classifier reloads its files when
 * the configuration epoch changes (SIGHUP, kumo.bump_config_epoch): the first
 * thread to log after the change rebuilds it while the others go on with
 * the old one; a reload that fails keeps the old one and says why on the
 * diagnostic log.
 *
 * back_pressure, pool_size, cache_size and uncategorized_cache_size are
 * checked and accepted: kumod classifies on the logging thread itself (a
 * classification costs about a microsecond, see README), so it needs
 * neither KumoMTA's thread pool nor its caches. Configure runs on the VM's
 * thread (init, on reactor 0); classification on any thread. */
#include <lauxlib.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "core/diag.h"
#include "log/logs.h"
#include "lua/klua.h"
#include "lua/lib/bounce.h"
#include "lua/lib/lualib.h"

#define FN "kumo.configure_bounce_classifier"
#define BOUNCE_MOD "kumod::bounce_classify"

struct installed {
    bounce_classifier *c;
    char **files;
    size_t n_files;
    atomic_uint epoch; /* the config epoch it was built for (or last tried) */
    struct installed *prev; /* retired ones, kept */
};

static _Atomic(struct installed *) current;
static atomic_bool reloading;

static bounce_classifier *load(char *const *files, size_t n, char *err, size_t errlen)
{
    bounce_rules *rs = bounce_rules_new();
    if (!rs) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    for (size_t i = 0; i < n; i++)
        if (bounce_rules_add_file(rs, files[i], err, errlen) != 0) {
            bounce_rules_free(rs);
            return NULL;
        }
    bounce_classifier *c = bounce_classifier_build(rs, err, errlen);
    bounce_rules_free(rs);
    return c;
}

static struct installed *install(bounce_classifier *c, char **files, size_t n, unsigned epoch)
{
    struct installed *in = calloc(1, sizeof(*in));
    if (!in)
        return NULL;
    in->c = c;
    in->files = files;
    in->n_files = n;
    atomic_init(&in->epoch, epoch);
    in->prev = atomic_load(&current);
    atomic_store_explicit(&current, in, memory_order_release);
    return in;
}

static char **copy_files(char *const *files, size_t n)
{
    char **v = calloc(n ? n : 1, sizeof(*v));
    if (!v)
        return NULL;
    for (size_t i = 0; i < n; i++)
        if (!(v[i] = strdup(files[i]))) {
            while (i)
                free(v[--i]);
            free(v);
            return NULL;
        }
    return v;
}

/* One thread rebuilds from the same files; the others keep classifying
 * with what is installed. */
static struct installed *reload(struct installed *in, unsigned epoch)
{
    if (atomic_exchange(&reloading, true))
        return in;
    char err[1024];
    bounce_classifier *c = load(in->files, in->n_files, err, sizeof(err));
    char **files = c ? copy_files(in->files, in->n_files) : NULL;
    struct installed *now = files ? install(c, files, in->n_files, epoch) : NULL;
    if (now) {
        DINFO(BOUNCE_MOD, "bounce classifier reloaded for config epoch %u", epoch);
        in = now;
    } else {
        if (c) {
            snprintf(err, sizeof(err), "out of memory");
            bounce_classifier_free(c);
            if (files)
                for (size_t i = 0; i < in->n_files; i++)
                    free(files[i]);
            free(files);
        }
        DERROR(BOUNCE_MOD,
               "reloading the bounce classifier for config epoch %u failed, keeping the "
               "previous rules: %s",
               epoch, err);
        atomic_store(&in->epoch, epoch);
    }
    atomic_store(&reloading, false);
    return in;
}

static const char *classify_record(const logrec_response *r)
{
    struct installed *in = atomic_load_explicit(&current, memory_order_acquire);
    if (!in)
        return NULL;
    unsigned epoch = klua_config_epoch();
    if (atomic_load_explicit(&in->epoch, memory_order_relaxed) != epoch)
        in = reload(in, epoch);
    return bounce_classify(in->c, r->code, r->enh_class, r->enh_subject, r->enh_detail,
                           r->content);
}

static void check_count(lua_State *L, const char *key)
{
    lua_getfield(L, 1, key);
    if (!lua_isnil(L, -1)) {
        if (!lua_isinteger(L, -1))
            lualib_error(L, FN, "'%s' must be an integer, not %s", key, luaL_typename(L, -1));
        if (lua_tointeger(L, -1) < 0)
            lualib_error(L, FN, "'%s' may not be negative", key);
    }
    lua_pop(L, 1);
}

static int l_configure(lua_State *L)
{
    static const char *const keys[] = {"files", "back_pressure", "pool_size", "cache_size",
                                       "uncategorized_cache_size", NULL};
    if (!lua_istable(L, 1))
        return lualib_error(L, FN, "argument #1 must be a table {files = {...}}, not %s",
                            luaL_typename(L, 1));
    lua_settop(L, 1);
    lua_pushnil(L);
    while (lua_next(L, 1)) {
        bool known = false;
        if (lua_type(L, -2) == LUA_TSTRING)
            for (const char *const *k = keys; *k && !known; k++)
                known = strcmp(*k, lua_tostring(L, -2)) == 0;
        if (!known)
            return lualib_error(L, FN, "unknown field '%s' (expected files, back_pressure, "
                                       "pool_size, cache_size, uncategorized_cache_size)",
                                lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "?");
        lua_pop(L, 1);
    }
    for (const char *const *k = keys + 1; *k; k++)
        check_count(L, *k);

    lua_getfield(L, 1, "files");
    if (!lua_istable(L, 2))
        return lualib_error(L, FN, "'files' must be an array of rule file paths, not %s",
                            luaL_typename(L, 2));
    size_t n = (size_t)luaL_len(L, 2);
    /* the list as C strings: the files table keeps them alive during the call */
    char **files = lua_newuserdatauv(L, (n ? n : 1) * sizeof(char *), 0);
    for (size_t i = 0; i < n; i++) {
        lua_geti(L, 2, (lua_Integer)i + 1);
        if (lua_type(L, -1) != LUA_TSTRING)
            return lualib_error(L, FN, "files[%zu] must be a path string, not %s", i + 1,
                                luaL_typename(L, -1));
        files[i] = (char *)lua_tostring(L, -1);
        lua_pop(L, 1);
    }
    char err[1024];
    bounce_classifier *c = load(files, n, err, sizeof(err));
    if (!c)
        return lualib_error(L, FN, "%s", err);
    char **owned = copy_files(files, n);
    if (!owned || !install(c, owned, n, klua_config_epoch())) {
        bounce_classifier_free(c);
        if (owned)
            for (size_t i = 0; i < n; i++)
                free(owned[i]);
        free(owned);
        return lualib_error(L, FN, "out of memory");
    }
    logs_set_classifier(classify_record);
    return 0;
}

static const luaL_Reg fns[] = {{"configure_bounce_classifier", l_configure}, {NULL, NULL}};
const lualib_module lualib_bounce = {"kumo", fns, NULL};
