/* Spool health gate. State lives under one mutex; readers of the latch use
 * an atomic flag so the hot path (every save) costs one load. The monitor
 * thread samples RocksDB's own counters ("rocksdb.background-errors",
 * "rocksdb.is-write-stopped") and statvfs() of each spool path against
 * min_free_space / min_free_inodes, and exports gauges through
 * spool_get_health(). Failing to read a property is not itself an error. */
#include "spool/health.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/statvfs.h>
#include <unistd.h>
#include <time.h>

#include "core/diag.h"
#include "core/kerr.h"
#include "spool/backend.h"

#define HMOD "kumod::spool"

struct spool_health {
    spool_store *stores[2];
    pthread_mutex_t mu;
    pthread_cond_t cond;
    pthread_t thread;
    bool stop;
    atomic_bool latched;
    char reason[256];
    uint64_t fg_errors;           /* since the last unlatch */
    uint64_t bg_start[2];         /* background-error counts at the last unlatch */
    int64_t first_problem_ns;     /* when the current run of problems began; 0 = none */
    int64_t last_error_ns;        /* newest error of any kind */
    spool_health_info info[2];
    int64_t latch_ns, unlatch_ns;
    bool allow_unlatch;
    double min_free_pct, min_free_inodes_pct;
};

static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Caller holds h->mu. */
static void latch_locked(spool_health *h, const char *why)
{
    if (!atomic_load(&h->latched))
        DERROR(HMOD, "spool health gate latched: %s; the spool is not accepting writes", why);
    snprintf(h->reason, sizeof(h->reason), "the spool is not accepting writes");
    atomic_store(&h->latched, true);
    h->last_error_ns = mono_ns();
}

void spool__health_write_failed(spool_health *h, int err)
{
    if (!h)
        return;
    pthread_mutex_lock(&h->mu);
    h->fg_errors++;
    h->last_error_ns = mono_ns();
    if (!h->first_problem_ns)
        h->first_problem_ns = h->last_error_ns;
    char why[128];
    snprintf(why, sizeof(why), "a write failed: %s", kerr_str(err));
    /* a foreground I/O or corruption error latches at once */
    if (err == KERR_IO || err == KERR_CORRUPT)
        latch_locked(h, why);
    pthread_mutex_unlock(&h->mu);
}

void spool__health_op_failed(spool_health *h, int err)
{
    if (!h)
        return;
    pthread_mutex_lock(&h->mu);
    h->fg_errors++;
    h->last_error_ns = mono_ns();
    if (!h->first_problem_ns)
        h->first_problem_ns = h->last_error_ns;
    if (err == KERR_CORRUPT)
        latch_locked(h, "corruption detected while reading");
    pthread_mutex_unlock(&h->mu);
}

bool spool__health_latched(spool_health *h)
{
    return h && atomic_load(&h->latched);
}

static void sample(spool_health *h, int i, spool_health_info *out, bool *disk_low, bool *bg_grew,
                   bool *stopped, bool *bg_above)
{
    spool_store *st = h->stores[i];
    memset(out, 0, sizeof(*out));
    snprintf(out->path, sizeof(out->path), "%s", st->path);
    out->is_rocksdb = st->kind == SPOOL_KIND_ROCKSDB;
    struct statvfs sv;
    if (statvfs(st->path, &sv) == 0 && sv.f_blocks > 0) {
        out->disk_free_bytes = (uint64_t)sv.f_bavail * sv.f_frsize;
        out->disk_free_percent = 100.0 * (double)sv.f_bavail / (double)sv.f_blocks;
        out->disk_free_inodes = sv.f_favail;
        out->disk_free_inodes_percent =
            sv.f_files ? 100.0 * (double)sv.f_favail / (double)sv.f_files : 100.0;
        if (out->disk_free_percent < h->min_free_pct ||
            (sv.f_files && out->disk_free_inodes_percent < h->min_free_inodes_pct))
            *disk_low = true;
    }
    if (st->be->property) {
        static const struct {
            const char *prop;
            size_t off;
        } props[] = {
            {"rocksdb.cur-size-all-mem-tables", offsetof(spool_health_info, mem_table_total)},
            {"rocksdb.cur-size-active-mem-table", offsetof(spool_health_info, mem_table_unflushed)},
            {"rocksdb.estimate-table-readers-mem", offsetof(spool_health_info, mem_table_readers_total)},
            {"rocksdb.block-cache-usage", offsetof(spool_health_info, cache_total)},
            {"rocksdb.background-errors", offsetof(spool_health_info, background_errors)},
            {"rocksdb.is-write-stopped", offsetof(spool_health_info, write_stopped)},
            {"rocksdb.num-running-compactions", offsetof(spool_health_info, num_running_compactions)},
            {"rocksdb.compaction-pending", offsetof(spool_health_info, compaction_pending)},
            {"rocksdb.estimate-pending-compaction-bytes", offsetof(spool_health_info, estimate_pending_compaction_bytes)},
            {"rocksdb.actual-delayed-write-rate", offsetof(spool_health_info, actual_delayed_write_rate)},
        };
        for (size_t k = 0; k < sizeof(props) / sizeof(props[0]); k++) {
            uint64_t v = 0;
            if (st->be->property(st, props[k].prop, &v) == 0)
                *(uint64_t *)((char *)out + props[k].off) = v;
        }
        if (out->background_errors > h->bg_start[i]) {
            *bg_above = true;
            if (out->background_errors > h->info[i].background_errors)
                *bg_grew = true;
        }
        if (out->write_stopped)
            *stopped = true;
    }
}

/* Before clearing the gate, prove that each store takes a synced write
 * again (a RocksDB that hit a WAL error never recovers by itself). */
static bool probe_ok(spool_health *h)
{
    for (int i = 0; i < 2; i++) {
        spool_store *st = h->stores[i];
        if (st->be->probe) {
            if (st->be->probe(st) != 0)
                return false;
            continue;
        }
        char path[1024];
        snprintf(path, sizeof(path), "%s/.kumod-health-probe", st->path);
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd < 0)
            return false;
        bool ok = write(fd, "1", 1) == 1 && fsync(fd) == 0;
        close(fd);
        unlink(path);
        if (!ok)
            return false;
    }
    return true;
}

static void *monitor_main(void *arg)
{
    spool_health *h = arg;
    pthread_mutex_lock(&h->mu);
    while (!h->stop) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 500000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&h->cond, &h->mu, &ts);
        if (h->stop)
            break;
        bool disk_low = false, bg_grew = false, stopped = false, bg_above = false;
        spool_health_info info[2];
        pthread_mutex_unlock(&h->mu);
        for (int i = 0; i < 2; i++)
            sample(h, i, &info[i], &disk_low, &bg_grew, &stopped, &bg_above);
        pthread_mutex_lock(&h->mu);
        memcpy(h->info, info, sizeof(info));
        int64_t now = mono_ns();
        if (disk_low) {
            /* below min_free_space / min_free_inodes: refuse now */
            if (!atomic_load(&h->latched))
                latch_locked(h, "free space or inodes below the configured minimum");
            h->last_error_ns = now;
        }
        if (bg_grew || stopped) {
            h->last_error_ns = now;
            if (!h->first_problem_ns)
                h->first_problem_ns = now;
        }
        bool problem = bg_above || h->fg_errors > 0;
        if (!atomic_load(&h->latched) && problem && h->first_problem_ns &&
            now - h->first_problem_ns >= h->latch_ns)
            latch_locked(h, bg_above ? "RocksDB background errors keep growing"
                                    : "spool operations keep failing");
        bool try_unlatch = atomic_load(&h->latched) && h->allow_unlatch && !disk_low &&
                           now - h->last_error_ns >= h->unlatch_ns;
        if (try_unlatch) {
            pthread_mutex_unlock(&h->mu);
            bool ok = probe_ok(h);
            pthread_mutex_lock(&h->mu);
            if (!ok) {
                h->last_error_ns = mono_ns();
                try_unlatch = false;
            }
        }
        if (try_unlatch) {
            DINFO(HMOD, "spool health gate cleared after %llds without new errors",
                  (long long)(h->unlatch_ns / 1000000000LL));
            atomic_store(&h->latched, false);
            h->fg_errors = 0;
            h->first_problem_ns = 0;
            for (int i = 0; i < 2; i++)
                h->bg_start[i] = info[i].background_errors;
        }
        for (int i = 0; i < 2; i++)
            h->info[i].load_shed_active = atomic_load(&h->latched);
    }
    pthread_mutex_unlock(&h->mu);
    return NULL;
}

spool_health *spool__health_new(spool_store *data, spool_store *meta)
{
    spool_health *h = calloc(1, sizeof(*h));
    if (!h)
        return NULL;
    h->stores[0] = data;
    h->stores[1] = meta;
    const spool_params *p = &data->params;
    h->latch_ns = p->error_latch_ns;
    h->unlatch_ns = p->error_unlatch_ns;
    h->allow_unlatch = p->allow_error_unlatch;
    h->min_free_pct = p->min_free_space_pct;
    h->min_free_inodes_pct = p->min_free_inodes_pct;
    /* the meta spool's settings apply when stricter */
    const spool_params *m = &meta->params;
    if (m->min_free_space_pct > h->min_free_pct)
        h->min_free_pct = m->min_free_space_pct;
    if (m->min_free_inodes_pct > h->min_free_inodes_pct)
        h->min_free_inodes_pct = m->min_free_inodes_pct;
    pthread_mutex_init(&h->mu, NULL);
    pthread_cond_init(&h->cond, NULL);
    for (int i = 0; i < 2; i++) {
        uint64_t v = 0;
        spool_store *st = h->stores[i];
        if (st->be->property && st->be->property(st, "rocksdb.background-errors", &v) == 0)
            h->bg_start[i] = v;
    }
    if (pthread_create(&h->thread, NULL, monitor_main, h) != 0) {
        pthread_mutex_destroy(&h->mu);
        pthread_cond_destroy(&h->cond);
        free(h);
        return NULL;
    }
    return h;
}

void spool__health_free(spool_health *h)
{
    if (!h)
        return;
    pthread_mutex_lock(&h->mu);
    h->stop = true;
    pthread_cond_signal(&h->cond);
    pthread_mutex_unlock(&h->mu);
    pthread_join(h->thread, NULL);
    pthread_mutex_destroy(&h->mu);
    pthread_cond_destroy(&h->cond);
    free(h);
}

int spool__health_get(spool_health *h, spool_health_info out[2], char *reason, size_t len)
{
    pthread_mutex_lock(&h->mu);
    memcpy(out, h->info, sizeof(h->info));
    for (int i = 0; i < 2; i++)
        out[i].load_shed_active = atomic_load(&h->latched);
    if (reason)
        snprintf(reason, len, "%s", atomic_load(&h->latched) ? h->reason : "");
    pthread_mutex_unlock(&h->mu);
    return atomic_load(&h->latched) ? 1 : 0;
}
