/* The accounting database (see accounting.h).
 *
 * Owns: the two pending counters (atomics), the path (under a mutex) and
 * the flusher thread. Threads: counters are bumped from any thread; only
 * the flusher (or acct_shutdown on the main thread, after the flusher has
 * stopped) opens SQLite. Failures: an open or write error puts the counts
 * back for the next flush and logs an error; nothing is lost unless the
 * process dies between flushes (as in KumoMTA, the counts are totals for
 * reporting, not a durable record: the logs are). */
#include "log/accounting.h"

#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "core/diag.h"
#include "core/kerr.h"

#define ACCT_MOD "kumod::accounting"
#define ACCT_FLUSH_SECS 300

static atomic_ullong pending_received, pending_delivered;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static char *db_path;
/* started is read without the mutex on every count (double-checked) */
static atomic_bool started;
static bool stopping;
static pthread_t flusher;
/* one flush at a time: the flusher and an explicit acct_flush */
static pthread_mutex_t flush_mu = PTHREAD_MUTEX_INITIALIZER;

void acct_set_path(const char *path)
{
    char *p = strdup(path);
    pthread_mutex_lock(&mu);
    free(db_path);
    db_path = p;
    pthread_mutex_unlock(&mu);
}

static void *flusher_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&mu);
    while (!stopping) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += ACCT_FLUSH_SECS;
        pthread_cond_timedwait(&cond, &mu, &ts);
        if (stopping)
            break;
        pthread_mutex_unlock(&mu);
        acct_flush();
        pthread_mutex_lock(&mu);
    }
    pthread_mutex_unlock(&mu);
    return NULL;
}

static void ensure_started(void)
{
    pthread_mutex_lock(&mu);
    if (!atomic_load(&started) && !stopping) {
        if (pthread_create(&flusher, NULL, flusher_main, NULL) == 0)
            atomic_store(&started, true);
        else
            DERROR(ACCT_MOD, "cannot start the accounting flusher; counts are written at exit");
    }
    pthread_mutex_unlock(&mu);
}

static bool accounted(const char *protocol)
{
    return !protocol || strcmp(protocol, "LogRecord") != 0;
}

void acct_reception(const char *protocol)
{
    if (!accounted(protocol))
        return;
    atomic_fetch_add(&pending_received, 1);
    if (!atomic_load_explicit(&started, memory_order_acquire))
        ensure_started();
}

void acct_delivery(const char *protocol)
{
    if (!accounted(protocol))
        return;
    atomic_fetch_add(&pending_delivered, 1);
    if (!atomic_load_explicit(&started, memory_order_acquire))
        ensure_started();
}

static int write_counts(const char *path, unsigned long long rec, unsigned long long del)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL);
    if (rc != SQLITE_OK)
        goto fail;
    sqlite3_busy_timeout(db, 30000);
    rc = sqlite3_exec(db,
                      "CREATE TABLE IF NOT EXISTS accounting ("
                      " event_time DATETIME NOT NULL PRIMARY KEY,"
                      " received int NOT NULL,"
                      " delivered int NOT NULL)",
                      NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        goto fail;
    rc = sqlite3_prepare_v2(db,
                            "INSERT INTO accounting (event_time, received, delivered)"
                            " VALUES (?1, ?2, ?3) ON CONFLICT (event_time) DO UPDATE SET"
                            " received = received + ?2, delivered = delivered + ?3",
                            -1, &st, NULL);
    if (rc != SQLITE_OK)
        goto fail;
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    char month[32];
    strftime(month, sizeof(month), "%Y-%m-01 00:00:00", &tm);
    sqlite3_bind_text(st, 1, month, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, (sqlite3_int64)rec);
    sqlite3_bind_int64(st, 3, (sqlite3_int64)del);
    rc = sqlite3_step(st);
    if (rc != SQLITE_DONE)
        goto fail;
    sqlite3_finalize(st);
    sqlite3_close(db);
    return 0;
fail:
    DERROR(ACCT_MOD, "failed to record %llu receptions + %llu deliveries in %s: %s; will retry "
                     "later",
           rec, del, path, db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
    sqlite3_finalize(st);
    sqlite3_close(db);
    return KERR_IO;
}

#define ACCT_DEFAULT_DIR "/var/spool/kumomta"

static bool default_dir_exists(void)
{
    struct stat st;
    return stat(ACCT_DEFAULT_DIR, &st) == 0 && S_ISDIR(st.st_mode);
}

int acct_flush(void)
{
    pthread_mutex_lock(&flush_mu);
    unsigned long long rec = atomic_exchange(&pending_received, 0);
    unsigned long long del = atomic_exchange(&pending_delivered, 0);
    int rc = 0;
    if (rec || del) {
        pthread_mutex_lock(&mu);
        bool configured = db_path != NULL;
        char *path = strdup(db_path ? db_path : ACCT_DEFAULT_PATH);
        pthread_mutex_unlock(&mu);
        if (path && !configured && !default_dir_exists()) {
            /* KumoMTA's default place on a machine laid out otherwise: say
             * so once instead of an error every flush; the totals wait */
            static atomic_bool said;
            if (!atomic_exchange(&said, true))
                DINFO(ACCT_MOD,
                      "the accounting totals are not recorded: %s does not exist "
                      "(kumo.configure_accounting_db_path names another database)",
                      ACCT_DEFAULT_DIR);
            rc = KERR_NOTFOUND;
        } else {
            rc = path ? write_counts(path, rec, del) : KERR_NOMEM;
        }
        if (rc != 0) { /* kept for the next flush */
            atomic_fetch_add(&pending_received, rec);
            atomic_fetch_add(&pending_delivered, del);
        } else {
            DDEBUG(ACCT_MOD, "recorded %llu receptions and %llu deliveries in %s", rec, del, path);
        }
        free(path);
    }
    pthread_mutex_unlock(&flush_mu);
    return rc;
}

void acct_shutdown(void)
{
    pthread_mutex_lock(&mu);
    stopping = true;
    bool join = atomic_load(&started);
    pthread_cond_broadcast(&cond);
    pthread_mutex_unlock(&mu);
    if (join)
        pthread_join(flusher, NULL);
    acct_flush();
    pthread_mutex_lock(&mu);
    free(db_path);
    db_path = NULL;
    pthread_mutex_unlock(&mu);
}
