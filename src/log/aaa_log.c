/* The AAA accounting log: kumo.aaa.configure_acct_log's parameters, the
 * Authentication / Authorization record shapes of KumoMTA's AcctLogRecord
 * ("type" first, then an RFC 3339 UTC timestamp), and one logger (one
 * stream, segment names prefixed "acct-") that writes them.
 *
 * Threads: configured on the main thread while the policy loads (init /
 * pre_init); records are made on reactor threads and queued to the
 * logger's writer thread. The logger pointer is published atomically and
 * lives until aaalog_shutdown at exit.
 *
 * Failure: configuration errors are returned with a message; a record that
 * cannot be built (out of memory) or queued is dropped with a diagnostic,
 * never failing the request it describes. min_free_space/min_free_inodes
 * are validated as KumoMTA does but, as for configure_local_logs, not
 * enforced here. */
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zstd.h>

#include "core/diag.h"
#include "core/kerr.h"
#include "log/aaa_log.h"
#include "log/logger.h"
#include "log/logs_int.h"

#define AAA_MOD "kumod::acct"

enum { W_AUTHN_OK = 1, W_AUTHN_FAIL = 2, W_AUTHZ_ALLOW = 4, W_AUTHZ_DENY = 8 };

static _Atomic(logger *) aaa_logger;
static atomic_uint aaa_wants;
static atomic_flag aaa_configured = ATOMIC_FLAG_INIT;

static int cfg_err(char *err, size_t errlen, const char *msg)
{
    return logs__cfg_err(err, errlen, msg);
}

static const char *const aaa_keys =
    "`log_dir`, `max_file_size`, `back_pressure`, `compression_level`, "
    "`max_segment_duration`, `min_free_space`, `min_free_inodes`, `log_authz_allow`, "
    "`log_authz_deny`, `log_authn_ok`, `log_authn_fail`";

int aaalog_configure_from_json(const json_t *params, bool check_only, char *err, size_t errlen)
{
    if (err && errlen)
        err[0] = '\0';
    if (!json_is_object(params))
        return cfg_err(err, errlen, "expected a table");
    const char *log_dir = NULL;
    uint64_t max_file_size = 1000000000, back_pressure = 128000;
    int64_t max_segment_ns = 0, level = 0;
    unsigned wants = W_AUTHN_OK | W_AUTHN_FAIL | W_AUTHZ_ALLOW | W_AUTHZ_DENY;
    json_t *min_space = NULL, *min_inodes = NULL;
    int rc = 0;
    const char *key;
    const json_t *v;
    json_object_foreach((json_t *)params, key, v)
    {
        char msg[512];
        unsigned bit = strcmp(key, "log_authz_allow") == 0  ? W_AUTHZ_ALLOW
                       : strcmp(key, "log_authz_deny") == 0 ? W_AUTHZ_DENY
                       : strcmp(key, "log_authn_ok") == 0   ? W_AUTHN_OK
                       : strcmp(key, "log_authn_fail") == 0 ? W_AUTHN_FAIL
                                                            : 0;
        if (json_is_null(v))
            continue;
        if (bit) {
            if (!json_is_boolean(v)) {
                snprintf(msg, sizeof(msg), "`%s` must be a boolean", key);
                rc = cfg_err(err, errlen, msg);
            } else if (json_is_true(v)) {
                wants |= bit;
            } else {
                wants &= ~bit;
            }
        } else if (strcmp(key, "log_dir") == 0) {
            log_dir = json_string_value(v);
            if (!log_dir || !*log_dir)
                rc = cfg_err(err, errlen, "`log_dir` must be a non-empty string");
        } else if (strcmp(key, "max_file_size") == 0) {
            rc = logs__cfg_uint(v, key, UINT64_MAX, &max_file_size, err, errlen);
        } else if (strcmp(key, "back_pressure") == 0) {
            rc = logs__cfg_uint(v, key, SIZE_MAX / 2, &back_pressure, err, errlen);
        } else if (strcmp(key, "compression_level") == 0) {
            if (json_is_integer(v))
                level = json_integer_value(v);
            if (!json_is_integer(v) || level < ZSTD_minCLevel() || level > ZSTD_maxCLevel()) {
                snprintf(msg, sizeof(msg), "`compression_level` must be an integer from %d to %d",
                         ZSTD_minCLevel(), ZSTD_maxCLevel());
                rc = cfg_err(err, errlen, msg);
            }
        } else if (strcmp(key, "max_segment_duration") == 0) {
            rc = logs__cfg_duration(v, key, &max_segment_ns, err, errlen);
        } else if (strcmp(key, "min_free_space") == 0) {
            json_decref(min_space);
            min_space = NULL;
            rc = logs__cfg_min_free(v, key, &min_space, err, errlen);
        } else if (strcmp(key, "min_free_inodes") == 0) {
            json_decref(min_inodes);
            min_inodes = NULL;
            rc = logs__cfg_min_free(v, key, &min_inodes, err, errlen);
        } else {
            snprintf(msg, sizeof(msg), "unknown field `%s`, expected one of %s", key, aaa_keys);
            rc = cfg_err(err, errlen, msg);
        }
        if (rc < 0)
            break;
    }
    json_decref(min_space);
    json_decref(min_inodes);
    if (rc < 0)
        return rc;
    if (!log_dir)
        return cfg_err(err, errlen, "missing field `log_dir`");
    if (atomic_flag_test_and_set(&aaa_configured))
        return cfg_err(err, errlen, "the accounting log is already configured; call it once");
    if (check_only)
        return 0;
    char msg[600];
    rc = logger__mkdir_p(log_dir);
    if (rc < 0) {
        snprintf(msg, sizeof(msg), "creating log directory %s: %s", log_dir, kerr_str(rc));
        atomic_flag_clear(&aaa_configured);
        return cfg_err(err, errlen, msg);
    }
    char name[512];
    snprintf(name, sizeof(name), "acct-%s", log_dir);
    logger_config lc = {.name = name,
                        .max_file_size = max_file_size,
                        .max_segment_ns = max_segment_ns,
                        .compression_level = (int)level,
                        .back_pressure = (size_t)back_pressure,
                        .prefix = "acct-"};
    logger *lg = NULL;
    rc = logger_new(&lc, &lg);
    if (rc == 0) {
        int s = logger_add_stream(lg, log_dir, NULL);
        rc = s < 0 ? s : logger_start(lg);
    }
    if (rc < 0) {
        logger_free(lg);
        snprintf(msg, sizeof(msg), "starting the accounting log in %s: %s", log_dir,
                 kerr_str(rc));
        atomic_flag_clear(&aaa_configured);
        return cfg_err(err, errlen, msg);
    }
    atomic_store(&aaa_wants, wants);
    atomic_store(&aaa_logger, lg);
    DINFO(AAA_MOD, "accounting log configured log_dir=%s", log_dir);
    return 0;
}

bool aaalog_wants_authn(bool success)
{
    return atomic_load(&aaa_logger) &&
           (atomic_load(&aaa_wants) & (success ? W_AUTHN_OK : W_AUTHN_FAIL));
}

bool aaalog_wants_authz(bool allow)
{
    return atomic_load(&aaa_logger) &&
           (atomic_load(&aaa_wants) & (allow ? W_AUTHZ_ALLOW : W_AUTHZ_DENY));
}

/* chrono's RFC 3339 for DateTime<Utc>: the fraction with 3, 6 or 9 digits,
 * the fewest that are exact, none when zero. */
static void timestamp_now(char *buf, size_t len)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    size_t n = strftime(buf, len, "%Y-%m-%dT%H:%M:%S", &tm);
    long ns = ts.tv_nsec;
    if (ns == 0)
        snprintf(buf + n, len - n, "Z");
    else if (ns % 1000000 == 0)
        snprintf(buf + n, len - n, ".%03ldZ", ns / 1000000);
    else if (ns % 1000 == 0)
        snprintf(buf + n, len - n, ".%06ldZ", ns / 1000);
    else
        snprintf(buf + n, len - n, ".%09ldZ", ns);
}

/* auth_info as KumoMTA prints it: peer_address, identities, groups. */
static json_t *auth_copy(const json_t *auth)
{
    const json_t *peer = json_object_get(auth, "peer_address");
    const json_t *ids = json_object_get(auth, "identities");
    const json_t *groups = json_object_get(auth, "groups");
    return json_pack("{s:O,s:o,s:o}", "peer_address", peer ? (json_t *)peer : json_null(),
                     "identities", json_is_array(ids) ? json_deep_copy(ids) : json_array(),
                     "groups", json_is_array(groups) ? json_deep_copy(groups) : json_array());
}

static void submit(json_t *rec)
{
    logger *lg = atomic_load(&aaa_logger);
    char *text = rec ? json_dumps(rec, JSON_COMPACT) : NULL;
    json_decref(rec);
    if (!lg || !text) {
        if (lg)
            DERROR(AAA_MOD, "cannot build an accounting record: out of memory");
        free(text);
        return;
    }
    int rc = logger_submit_take(lg, 0, NULL, text, strlen(text));
    if (rc < 0 && rc != KERR_SHUTDOWN)
        DERROR(AAA_MOD, "cannot queue an accounting record: %s", kerr_str(rc));
}

void aaalog_authn(const char *identity, const char *context, bool success,
                  const json_t *auth_info)
{
    if (!aaalog_wants_authn(success))
        return;
    char ts[64];
    timestamp_now(ts, sizeof(ts));
    submit(json_pack("{s:s,s:s,s:{s:s,s:s},s:b,s:o}", "type", "Authentication", "timestamp", ts,
                     "attempted_identity", "identity", identity ? identity : "", "context",
                     context ? context : "GenericAuth", "success", success, "auth_info",
                     auth_copy(auth_info)));
}

void aaalog_authz(const char *target_resource, const char *privilege, bool allow,
                  const char *matching_resource, const json_t *rule, const json_t *auth_info,
                  char *const *considered, size_t n_considered)
{
    if (!aaalog_wants_authz(allow))
        return;
    char ts[64];
    timestamp_now(ts, sizeof(ts));
    json_t *list = json_array();
    for (size_t i = 0; list && i < n_considered; i++)
        json_array_append_new(list, json_string(considered[i]));
    submit(json_pack("{s:s,s:s,s:s,s:s,s:s,s:o,s:o,s:o,s:o}", "type", "Authorization",
                     "timestamp", ts, "target_resource", target_resource ? target_resource : "",
                     "privilege", privilege ? privilege : "", "access", allow ? "Allow" : "Deny",
                     "matching_resource",
                     matching_resource ? json_string(matching_resource) : json_null(), "rule",
                     rule ? json_deep_copy(rule) : json_null(), "auth_info",
                     auth_copy(auth_info), "considered_resources", list));
}

void aaalog_flush(void)
{
    logger *lg = atomic_load(&aaa_logger);
    if (lg)
        logger_flush(lg);
}

void aaalog_shutdown(void)
{
    logger *lg = atomic_exchange(&aaa_logger, NULL);
    logger_free(lg);
}
