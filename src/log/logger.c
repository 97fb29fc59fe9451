/* Local log writer: one per configure_local_logs destination. Submitters on
 * any thread append finished record lines to a bounded FIFO (back_pressure
 * lines; a full queue blocks the submitter and counts submit_full). One
 * writer thread owns every open segment: a zstd stream per (log_dir, suffix)
 * written to a file named by its UTC open time. A segment closes once it
 * holds max_file_size uncompressed bytes or is max_segment_duration old, and
 * is then made read-only, which is how tailers know it is complete. Whenever
 * the writer empties its queue it zstd-flushes the open segments, so a reader
 * of an open segment sees every record written so far. An open/write error
 * is logged, the segment is abandoned (closed read-only) and that record is
 * lost; the next record opens a new segment. */
#include "log/logger.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zstd.h>

#include "core/diag.h"
#include "core/fsutil.h"
#include "core/kerr.h"

#define LOG_MOD "kumod::logging"
#define NS_PER_S 1000000000LL

struct logger_item {
    struct logger_item *next;
    uint64_t seq;
    int stream;
    const char *segment_header; /* borrowed from the configuration */
    char *text;
    size_t len;
};

struct logger_segment {
    int fd; /* -1: no open segment */
    ZSTD_CCtx *cctx;
    char *path;
    uint64_t written;     /* uncompressed bytes of records (not the header) */
    int64_t expires_mono; /* CLOCK_MONOTONIC ns; 0 = never */
    bool dirty;           /* input given to zstd since the last flush */
};

struct logger_stream {
    char *log_dir;
    char *suffix; /* "" when none */
    struct logger_segment seg;
};

struct logger {
    char *name;
    char prefix[16];
    uint64_t max_file_size;
    int64_t max_segment_ns;
    int compression_level;
    size_t capacity;

    struct logger_stream *streams;
    int n_streams;

    /* Writer-thread only. */
    void *outbuf;
    size_t outcap;
    uint64_t processed_seq;

    pthread_mutex_t lock;
    pthread_cond_t not_empty; /* writer waits: lines queued, flush asked, stop */
    pthread_cond_t not_full;  /* submitters wait for a free slot */
    pthread_cond_t flushed;   /* logger_flush() waits for flushed_seq */
    struct logger_item *head, *tail;
    size_t count;
    uint64_t submit_seq;   /* seq of the last line queued */
    uint64_t flush_target; /* highest seq a logger_flush() waits for */
    uint64_t flushed_seq;  /* every line <= this is written and flushed */
    bool stopping;
    bool started;
    bool writer_idle; /* waiting for the first record: the next submit wakes it */
    pthread_t thread;

    _Atomic uint64_t st_submitted, st_written, st_submit_full, st_errors;
};

static int64_t mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * NS_PER_S + ts.tv_nsec;
}

static int64_t real_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * NS_PER_S + ts.tv_nsec;
}

size_t logger_segment_name(int64_t unix_ns, char *buf, size_t len)
{
    int64_t secs = unix_ns / NS_PER_S;
    int64_t frac = unix_ns % NS_PER_S;
    if (frac < 0) {
        frac += NS_PER_S;
        secs--;
    }
    time_t t = (time_t)secs;
    struct tm tm;
    if (!gmtime_r(&t, &tm))
        memset(&tm, 0, sizeof(tm));
    char fbuf[32] = "";
    /* chrono's %.f: the shortest of 3, 6 or 9 digits that is exact. */
    if (frac == 0)
        fbuf[0] = '\0';
    else if (frac % 1000000 == 0)
        snprintf(fbuf, sizeof(fbuf), ".%03lld", (long long)(frac / 1000000));
    else if (frac % 1000 == 0)
        snprintf(fbuf, sizeof(fbuf), ".%06lld", (long long)(frac / 1000));
    else
        snprintf(fbuf, sizeof(fbuf), ".%09lld", (long long)frac);
    int n = snprintf(buf, len, "%04d%02d%02d-%02d%02d%02d%s", tm.tm_year + 1900, tm.tm_mon + 1,
                     tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, fbuf);
    return n < 0 ? 0 : (size_t)n;
}

int logger_new(const logger_config *cfg, logger **out)
{
    *out = NULL;
    if (!cfg || cfg->max_segment_ns < 0)
        return KERR_INVAL;
    logger *lg = calloc(1, sizeof(*lg));
    if (!lg)
        return KERR_NOMEM;
    lg->name = strdup(cfg->name ? cfg->name : "logger");
    lg->outcap = ZSTD_CStreamOutSize();
    lg->outbuf = malloc(lg->outcap);
    if (!lg->name || !lg->outbuf) {
        free(lg->name);
        free(lg->outbuf);
        free(lg);
        return KERR_NOMEM;
    }
    snprintf(lg->prefix, sizeof(lg->prefix), "%s", cfg->prefix ? cfg->prefix : "");
    lg->max_file_size = cfg->max_file_size;
    lg->max_segment_ns = cfg->max_segment_ns;
    lg->compression_level = cfg->compression_level;
    lg->capacity = cfg->back_pressure ? cfg->back_pressure : 1;

    pthread_condattr_t ca;
    int rc = pthread_condattr_init(&ca);
    if (rc == 0)
        rc = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    if (rc == 0)
        rc = pthread_cond_init(&lg->not_empty, &ca);
    pthread_condattr_destroy(&ca);
    if (rc != 0) {
        free(lg->name);
        free(lg->outbuf);
        free(lg);
        return KERR_NOMEM;
    }
    /* The rest cannot fail with default attributes on Linux. */
    pthread_mutex_init(&lg->lock, NULL);
    pthread_cond_init(&lg->not_full, NULL);
    pthread_cond_init(&lg->flushed, NULL);
    *out = lg;
    return 0;
}

int logger_add_stream(logger *lg, const char *log_dir, const char *suffix)
{
    if (!lg || !log_dir || !*log_dir || lg->started)
        return KERR_INVAL;
    if (!suffix)
        suffix = "";
    for (int i = 0; i < lg->n_streams; i++)
        if (strcmp(lg->streams[i].log_dir, log_dir) == 0 &&
            strcmp(lg->streams[i].suffix, suffix) == 0)
            return i;
    struct logger_stream *ns = realloc(lg->streams, sizeof(*ns) * (size_t)(lg->n_streams + 1));
    if (!ns)
        return KERR_NOMEM;
    lg->streams = ns;
    struct logger_stream *s = &ns[lg->n_streams];
    memset(s, 0, sizeof(*s));
    s->seg.fd = -1;
    s->log_dir = strdup(log_dir);
    s->suffix = strdup(suffix);
    if (!s->log_dir || !s->suffix) {
        free(s->log_dir);
        free(s->suffix);
        return KERR_NOMEM;
    }
    return lg->n_streams++;
}

/* ---- segment files (writer thread) ---- */

/* 0, or KERR_IO with errno set. */
static int write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return KERR_IO;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

int logger__mkdir_p(const char *dir)
{
    if (!*dir)
        return 0;
    int rc = fs_mkdir_p(dir, 0700);
    if (rc < 0)
        return rc;
    struct stat st;
    if (stat(dir, &st) < 0)
        return KERR_IO;
    if (!S_ISDIR(st.st_mode)) {
        errno = ENOTDIR;
        return KERR_IO;
    }
    return 0;
}

/* Removes every write bit: KumoMTA's signal that a segment is complete.
 * 0, or KERR_IO with errno set. */
static int mark_done_fd(int fd)
{
    struct stat st;
    if (fstat(fd, &st) < 0 || fchmod(fd, st.st_mode & ~(mode_t)0222) < 0)
        return KERR_IO;
    return 0;
}

/* Runs ZSTD_compressStream2 with mode until it has consumed in and, for
 * flush/end, until zstd reports nothing left; writes the output. */
static int seg_compress(logger *lg, struct logger_segment *seg, const void *data, size_t len,
                        ZSTD_EndDirective mode)
{
    ZSTD_inBuffer in = {data, len, 0};
    for (;;) {
        ZSTD_outBuffer out = {lg->outbuf, lg->outcap, 0};
        size_t r = ZSTD_compressStream2(seg->cctx, &out, &in, mode);
        if (ZSTD_isError(r)) {
            DERROR(LOG_MOD, "logger=%s segment=%s zstd error: %s", lg->name, seg->path,
                   ZSTD_getErrorName(r));
            return KERR_IO;
        }
        if (out.pos > 0) {
            if (write_all(seg->fd, lg->outbuf, out.pos) < 0) {
                DERROR(LOG_MOD, "logger=%s segment=%s write failed: %s", lg->name, seg->path,
                       strerror(errno));
                return KERR_IO;
            }
        }
        if (mode == ZSTD_e_continue ? in.pos == in.size : r == 0)
            return 0;
    }
}

/* Ends the zstd frame (unless the segment failed), makes the file read-only
 * and closes it. */
static void seg_close(logger *lg, struct logger_segment *seg, bool failed)
{
    if (seg->fd < 0)
        return;
    if (!failed)
        (void)seg_compress(lg, seg, NULL, 0, ZSTD_e_end); /* logs its own error */
    if (mark_done_fd(seg->fd) < 0)
        DERROR(LOG_MOD, "logger=%s segment=%s chmod a-w failed: %s", lg->name, seg->path,
               strerror(errno));
    if (close(seg->fd) < 0)
        DERROR(LOG_MOD, "logger=%s segment=%s close failed: %s", lg->name, seg->path,
               strerror(errno));
    DDEBUG(LOG_MOD, "logger=%s closed segment=%s bytes=%llu", lg->name, seg->path,
           (unsigned long long)seg->written);
    ZSTD_freeCCtx(seg->cctx);
    free(seg->path);
    memset(seg, 0, sizeof(*seg));
    seg->fd = -1;
}

static char *seg_path(const logger *lg, const struct logger_stream *s, int64_t now_ns)
{
    char base[80];
    size_t pl = strlen(lg->prefix);
    memcpy(base, lg->prefix, pl);
    logger_segment_name(now_ns, base + pl, sizeof(base) - pl);
    size_t n = strlen(s->log_dir) + 1 + strlen(base) + strlen(s->suffix) + 1;
    char *path = malloc(n);
    if (path)
        snprintf(path, n, "%s/%s%s", s->log_dir, base, s->suffix);
    return path;
}

static int seg_open(logger *lg, struct logger_stream *s, const char *segment_header)
{
    struct logger_segment *seg = &s->seg;
    int64_t last_ns = -1;
    char *path = NULL;
    int fd = -1;
    bool made_dir = false;
    /* O_EXCL: two segments opened within one clock tick (or by two
     * destinations sharing a directory) must not share a file; take the
     * next tick's name instead. */
    for (int attempt = 0; attempt < 100 && fd < 0; attempt++) {
        int64_t now;
        while ((now = real_now()) == last_ns)
            ; /* the next name is one clock tick away */
        last_ns = now;
        free(path);
        path = seg_path(lg, s, now);
        if (!path)
            return KERR_NOMEM;
        fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0666);
        if (fd >= 0)
            break;
        if (errno == EEXIST || errno == EINTR)
            continue;
        if (errno == ENOENT && !made_dir) {
            /* The suffix may name subdirectories, and log_dir may have been
             * removed under us. */
            made_dir = true;
            char *slash = strrchr(path, '/');
            *slash = '\0';
            int rc = logger__mkdir_p(path);
            int e = errno;
            *slash = '/';
            if (rc == 0)
                continue;
            DERROR(LOG_MOD, "logger=%s creating directory for %s failed: %s", lg->name, path,
                   rc == KERR_NOMEM ? kerr_str(rc) : strerror(e));
            free(path);
            return KERR_IO;
        }
        DERROR(LOG_MOD, "logger=%s open segment=%s failed: %s", lg->name, path, strerror(errno));
        free(path);
        return KERR_IO;
    }
    if (fd < 0) {
        DERROR(LOG_MOD, "logger=%s no free segment name in %s", lg->name, s->log_dir);
        free(path);
        return KERR_IO;
    }

    ZSTD_CCtx *cctx = ZSTD_createCCtx();
    if (!cctx) {
        close(fd);
        unlink(path);
        free(path);
        return KERR_NOMEM;
    }
    if (lg->compression_level != 0) {
        size_t r = ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, lg->compression_level);
        if (ZSTD_isError(r)) {
            DERROR(LOG_MOD, "logger=%s compression_level=%d: %s", lg->name, lg->compression_level,
                   ZSTD_getErrorName(r));
            ZSTD_freeCCtx(cctx);
            close(fd);
            unlink(path);
            free(path);
            return KERR_INVAL;
        }
    }
    seg->fd = fd;
    seg->cctx = cctx;
    seg->path = path;
    seg->written = 0;
    seg->dirty = false;
    seg->expires_mono = lg->max_segment_ns > 0 ? mono_now() + lg->max_segment_ns : 0;
    DDEBUG(LOG_MOD, "logger=%s opened segment=%s", lg->name, path);
    if (segment_header && *segment_header) {
        seg->dirty = true;
        if (seg_compress(lg, seg, segment_header, strlen(segment_header), ZSTD_e_continue) < 0) {
            seg_close(lg, seg, true);
            return KERR_IO;
        }
    }
    return 0;
}

static void write_item(logger *lg, const struct logger_item *it)
{
    struct logger_stream *s = &lg->streams[it->stream];
    struct logger_segment *seg = &s->seg;
    if (seg->fd < 0 && seg_open(lg, s, it->segment_header) < 0) {
        atomic_fetch_add_explicit(&lg->st_errors, 1, memory_order_relaxed);
        return;
    }
    bool need_nl = it->len == 0 || it->text[it->len - 1] != '\n';
    seg->dirty = true;
    if (seg_compress(lg, seg, it->text, it->len, ZSTD_e_continue) < 0 ||
        (need_nl && seg_compress(lg, seg, "\n", 1, ZSTD_e_continue) < 0)) {
        seg_close(lg, seg, true);
        atomic_fetch_add_explicit(&lg->st_errors, 1, memory_order_relaxed);
        return;
    }
    seg->written += it->len + (need_nl ? 1 : 0);
    atomic_fetch_add_explicit(&lg->st_written, 1, memory_order_relaxed);
    /* Like KumoMTA, a segment may exceed max_file_size by its last record. */
    if (seg->written >= lg->max_file_size || (seg->expires_mono && seg->expires_mono <= mono_now()))
        seg_close(lg, seg, false);
}

static void flush_all(logger *lg)
{
    for (int i = 0; i < lg->n_streams; i++) {
        struct logger_segment *seg = &lg->streams[i].seg;
        if (seg->fd < 0 || !seg->dirty)
            continue;
        seg->dirty = false;
        if (seg_compress(lg, seg, NULL, 0, ZSTD_e_flush) < 0)
            seg_close(lg, seg, true);
    }
}

/* Closes segments past max_segment_duration; returns the earliest deadline
 * still pending (0 = none). */
static int64_t expire_segments(logger *lg)
{
    int64_t now = mono_now(), next = 0;
    for (int i = 0; i < lg->n_streams; i++) {
        struct logger_segment *seg = &lg->streams[i].seg;
        if (seg->fd < 0 || !seg->expires_mono)
            continue;
        if (seg->expires_mono <= now)
            seg_close(lg, seg, false);
        else if (!next || seg->expires_mono < next)
            next = seg->expires_mono;
    }
    return next;
}

static void mark_flushed(logger *lg)
{
    pthread_mutex_lock(&lg->lock);
    lg->flushed_seq = lg->processed_seq;
    pthread_cond_broadcast(&lg->flushed);
    pthread_mutex_unlock(&lg->lock);
}

static void *writer_main(void *arg)
{
    logger *lg = arg;
    int64_t deadline = 0;
    int64_t last_flush = 0;
    pthread_mutex_lock(&lg->lock);
    for (;;) {
        if (!lg->head) {
            if (lg->processed_seq > lg->flushed_seq && !lg->stopping &&
                lg->flush_target <= lg->flushed_seq) {
                /* Coalesce: at most one zstd flush (and write) per 20 ms, so a
                 * busy server does not pay a syscall per record. Submitters
                 * do not wake us meanwhile; a logger_flush() or a stop does. */
                int64_t t = mono_now();
                if (t - last_flush < 20000000) {
                    int64_t until = last_flush + 20000000;
                    struct timespec ts = {.tv_sec = until / NS_PER_S, .tv_nsec = until % NS_PER_S};
                    pthread_cond_timedwait(&lg->not_empty, &lg->lock, &ts); /* CLOCK_MONOTONIC */
                    if (mono_now() < until && lg->flush_target <= lg->flushed_seq &&
                        !lg->stopping)
                        continue; /* spurious wake-up */
                    t = mono_now();
                }
                last_flush = t;
            }
            if (lg->processed_seq > lg->flushed_seq) {
                /* Queue drained: make everything written so far readable. */
                pthread_mutex_unlock(&lg->lock);
                flush_all(lg);
                mark_flushed(lg);
                pthread_mutex_lock(&lg->lock);
                continue;
            }
            if (lg->stopping)
                break;
            lg->writer_idle = true;
            if (deadline) {
                struct timespec ts = {.tv_sec = deadline / NS_PER_S,
                                      .tv_nsec = deadline % NS_PER_S};
                int rc = pthread_cond_timedwait(&lg->not_empty, &lg->lock, &ts);
                if (rc != 0 && rc != ETIMEDOUT)
                    DERROR(LOG_MOD, "logger=%s cond_timedwait: %s", lg->name, strerror(rc));
            } else {
                pthread_cond_wait(&lg->not_empty, &lg->lock);
            }
            lg->writer_idle = false;
            pthread_mutex_unlock(&lg->lock);
            deadline = expire_segments(lg);
            pthread_mutex_lock(&lg->lock);
            continue;
        }
        /* Take everything queued in one go: one lock round per batch, not
         * per record. */
        struct logger_item *it = lg->head;
        bool was_full = lg->count >= lg->capacity;
        lg->head = lg->tail = NULL;
        lg->count = 0;
        if (was_full)
            pthread_cond_broadcast(&lg->not_full);
        pthread_mutex_unlock(&lg->lock);

        while (it) {
            struct logger_item *next = it->next;
            write_item(lg, it);
            lg->processed_seq = it->seq;
            free(it->text);
            free(it);
            it = next;
        }
        /* A busy queue may not drain for long; notice old segments anyway. */
        if (deadline && deadline <= mono_now())
            deadline = expire_segments(lg);
        else if (!deadline && lg->max_segment_ns > 0)
            deadline = expire_segments(lg);
        pthread_mutex_lock(&lg->lock);
        if (lg->flush_target > lg->flushed_seq && lg->processed_seq >= lg->flush_target) {
            pthread_mutex_unlock(&lg->lock);
            flush_all(lg);
            mark_flushed(lg);
            last_flush = mono_now();
            pthread_mutex_lock(&lg->lock);
        }
    }
    pthread_mutex_unlock(&lg->lock);
    for (int i = 0; i < lg->n_streams; i++)
        seg_close(lg, &lg->streams[i].seg, false);
    return NULL;
}

/* ---- start-up ---- */

static void mark_existing_done(logger *lg, const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) {
        if (errno != ENOENT)
            DERROR(LOG_MOD, "logger=%s marking existing logs in %s as done: %s", lg->name, dir,
                   strerror(errno));
        return;
    }
    int dfd = dirfd(d);
    struct dirent *de;
    errno = 0;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        struct stat st;
        if (fstatat(dfd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISREG(st.st_mode))
            continue;
        if ((st.st_mode & 0222) && fchmodat(dfd, de->d_name, st.st_mode & ~(mode_t)0222, 0) < 0)
            DERROR(LOG_MOD, "logger=%s chmod a-w %s/%s failed: %s", lg->name, dir, de->d_name,
                   strerror(errno));
        errno = 0;
    }
    if (errno != 0)
        DERROR(LOG_MOD, "logger=%s reading %s: %s", lg->name, dir, strerror(errno));
    closedir(d);
}

int logger_start(logger *lg)
{
    if (!lg || lg->started)
        return KERR_INVAL;
    for (int i = 0; i < lg->n_streams; i++) {
        bool seen = false;
        for (int j = 0; j < i && !seen; j++)
            seen = strcmp(lg->streams[j].log_dir, lg->streams[i].log_dir) == 0;
        if (!seen)
            mark_existing_done(lg, lg->streams[i].log_dir);
    }
    /* The writer takes no signals; they belong to the reactors and main. */
    sigset_t all, old;
    sigfillset(&all);
    int rc = pthread_sigmask(SIG_SETMASK, &all, &old);
    if (rc != 0) {
        DERROR(LOG_MOD, "logger=%s pthread_sigmask: %s", lg->name, strerror(rc));
        return KERR_IO;
    }
    rc = pthread_create(&lg->thread, NULL, writer_main, lg);
    int mrc = pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (mrc != 0)
        DERROR(LOG_MOD, "logger=%s restoring the signal mask: %s", lg->name, strerror(mrc));
    if (rc != 0) {
        DERROR(LOG_MOD, "logger=%s starting writer thread: %s", lg->name, strerror(rc));
        return KERR_IO;
    }
    rc = pthread_setname_np(lg->thread, "kumod-logger");
    if (rc != 0)
        DDEBUG(LOG_MOD, "logger=%s naming writer thread: %s", lg->name, strerror(rc));
    lg->started = true;
    return 0;
}

/* ---- submitters ---- */

int logger_submit_take(logger *lg, int stream, const char *segment_header, char *text, size_t len)
{
    if (!lg || !text || stream < 0 || stream >= lg->n_streams) {
        free(text);
        return KERR_INVAL;
    }
    struct logger_item *it = malloc(sizeof(*it));
    if (!it) {
        free(text);
        return KERR_NOMEM;
    }
    *it = (struct logger_item){
        .stream = stream, .segment_header = segment_header, .text = text, .len = len};

    pthread_mutex_lock(&lg->lock);
    if (lg->count >= lg->capacity && !lg->stopping) {
        atomic_fetch_add_explicit(&lg->st_submit_full, 1, memory_order_relaxed);
        while (lg->count >= lg->capacity && !lg->stopping)
            pthread_cond_wait(&lg->not_full, &lg->lock);
    }
    if (lg->stopping || !lg->started) {
        pthread_mutex_unlock(&lg->lock);
        free(text);
        free(it);
        return KERR_SHUTDOWN;
    }
    it->seq = ++lg->submit_seq;
    if (lg->tail)
        lg->tail->next = it;
    else
        lg->head = it;
    lg->tail = it;
    lg->count++;
    atomic_fetch_add_explicit(&lg->st_submitted, 1, memory_order_relaxed);
    /* Only an idle writer needs waking; a busy one takes this record with
     * its next batch, a coalescing one within 20 ms. */
    if (lg->writer_idle) {
        lg->writer_idle = false;
        pthread_cond_signal(&lg->not_empty);
    }
    pthread_mutex_unlock(&lg->lock);
    return 0;
}

void logger_flush(logger *lg)
{
    if (!lg)
        return;
    pthread_mutex_lock(&lg->lock);
    uint64_t target = lg->submit_seq;
    if (lg->started && target > lg->flushed_seq) {
        if (target > lg->flush_target)
            lg->flush_target = target;
        pthread_cond_signal(&lg->not_empty);
        while (lg->flushed_seq < target)
            pthread_cond_wait(&lg->flushed, &lg->lock);
    }
    pthread_mutex_unlock(&lg->lock);
}

void logger_stop(logger *lg)
{
    if (!lg)
        return;
    pthread_mutex_lock(&lg->lock);
    bool join = lg->started && !lg->stopping;
    lg->stopping = true;
    pthread_cond_signal(&lg->not_empty);
    pthread_cond_broadcast(&lg->not_full);
    pthread_mutex_unlock(&lg->lock);
    if (join) {
        int rc = pthread_join(lg->thread, NULL);
        if (rc != 0)
            DERROR(LOG_MOD, "logger=%s joining writer thread: %s", lg->name, strerror(rc));
    }
}

void logger_free(logger *lg)
{
    if (!lg)
        return;
    logger_stop(lg);
    /* The writer has drained the queue and closed its segments; a logger
     * that never started has neither (submit refuses it). */
    for (int i = 0; i < lg->n_streams; i++) {
        free(lg->streams[i].log_dir);
        free(lg->streams[i].suffix);
    }
    free(lg->streams);
    pthread_cond_destroy(&lg->not_empty);
    pthread_cond_destroy(&lg->not_full);
    pthread_cond_destroy(&lg->flushed);
    pthread_mutex_destroy(&lg->lock);
    free(lg->outbuf);
    free(lg->name);
    free(lg);
}

void logger_get_stats(const logger *lg, logger_stats *out)
{
    memset(out, 0, sizeof(*out));
    if (!lg)
        return;
    out->submitted = atomic_load_explicit(&lg->st_submitted, memory_order_relaxed);
    out->written = atomic_load_explicit(&lg->st_written, memory_order_relaxed);
    out->submit_full = atomic_load_explicit(&lg->st_submit_full, memory_order_relaxed);
    out->errors = atomic_load_explicit(&lg->st_errors, memory_order_relaxed);
}
