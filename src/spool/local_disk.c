/* The LocalDisk spool backend, in KumoMTA's exact layout: <path>/lock (flock
 * held while open, contains our pid, sticky bit set), temporary files in
 * <path>/new/, and each entry at <path>/data/aa/bb/cc/dd/<24 hex>, where
 * aa..dd are the first four id bytes (the big-endian UUID time_low) and the
 * 24 hex digits are the other twelve. It owns the lock fd and directory fds.
 *
 * A put is write temp -> fdatasync -> rename -> fsync of the directories the
 * rename touched; apply() does each step for the whole group before the next
 * one, so a small group of N synced puts costs N overlapped data syncs plus
 * one fsync per distinct directory, and a large group two syncfs() calls in
 * all (one before the renames, one after). apply() runs on the
 * facade's writer thread only, which is also the only thread creating or
 * pruning directories; get() and iterate() run on reader threads and only
 * read. Failures are reported per op as KERR_IO (with the temp file removed);
 * a missing entry is KERR_NOTFOUND; deleting a missing entry succeeds. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/hex.h"
#include "core/kerr.h"
#include "spool/backend.h"

/* Synced puts in flight at once: each holds an fd until its fdatasync. */
#define LD_CHUNK 256
/* From this many synced puts in a group on, one syncfs() replaces the
 * per-file fdatasync and per-directory fsync calls. */
#define LD_SYNCFS_MIN 8
/* "aa/bb/cc/dd/" + 24 hex digits */
#define LD_REL_LEN 36
/* "aa/bb/cc/dd" */
#define LD_DIR_LEN 11

typedef struct ld_store {
    spool_store base;
    int lock_fd;
    int new_fd;       /* <path>/new */
    int data_fd;      /* <path>/data */
    uint64_t tmp_seq; /* writer thread only */
} ld_store;

static const char hexdigits[] = "0123456789abcdef";

/* rel gets "aa/bb/cc/dd/<24 hex>"; its first LD_DIR_LEN bytes are the leaf
 * directory. */
static void ld_relpath(const spoolid *id, char rel[LD_REL_LEN + 1])
{
    char *o = rel;
    for (int i = 0; i < 4; i++) {
        *o++ = hexdigits[id->b[i] >> 4];
        *o++ = hexdigits[id->b[i] & 15];
        *o++ = '/';
    }
    for (int i = 4; i < 16; i++) {
        *o++ = hexdigits[id->b[i] >> 4];
        *o++ = hexdigits[id->b[i] & 15];
    }
    *o = '\0';
}

/* Parses exactly 2*n hex digits of s into out. */
static bool hex_bytes(const char *s, uint8_t *out, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int hi = hex_digit_value(s[2 * i]), lo;
        if (hi < 0)
            return false;
        lo = hex_digit_value(s[2 * i + 1]);
        if (lo < 0)
            return false;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return s[2 * n] == '\0';
}

static int write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t w = write(fd, buf, len);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return KERR_IO;
        }
        buf += w;
        len -= (size_t)w;
    }
    return 0;
}

/* ---- apply ------------------------------------------------------------ */

typedef struct ld_put {
    size_t op; /* index into ops */
    int fd;    /* open until synced; -1 after close */
    char tmp[SPOOLID_HEX_LEN + 24];
    char rel[LD_REL_LEN + 1];
} ld_put;

typedef struct ld_dirs {
    char (*names)[LD_DIR_LEN + 1]; /* relative to data/; "." is data/ itself */
    size_t n, cap;
} ld_dirs;

static int ld_dirs_add(ld_dirs *d, const char *name, size_t len)
{
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 64;
        void *p = realloc(d->names, cap * sizeof(d->names[0]));
        if (p == NULL)
            return KERR_NOMEM;
        d->names = p;
        d->cap = cap;
    }
    memcpy(d->names[d->n], name, len);
    d->names[d->n][len] = '\0';
    d->n++;
    return 0;
}

static int dircmp(const void *a, const void *b)
{
    return strcmp(a, b);
}

/* fsyncs each distinct directory once. */
static int ld_dirs_sync(ld_store *ls, ld_dirs *d)
{
    int rc = 0;
    qsort(d->names, d->n, sizeof(d->names[0]), dircmp);
    for (size_t i = 0; i < d->n; i++) {
        int fd;
        if (i > 0 && strcmp(d->names[i], d->names[i - 1]) == 0)
            continue;
        if (strcmp(d->names[i], ".") == 0) {
            if (fsync(ls->data_fd) < 0)
                rc = KERR_IO;
            continue;
        }
        fd = openat(ls->data_fd, d->names[i], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0) {
            /* A later delete in the same batch may have pruned the directory
             * again: then there is nothing left in it to make durable. */
            if (errno != ENOENT)
                rc = KERR_IO;
            continue;
        }
        if (fsync(fd) < 0)
            rc = KERR_IO;
        close(fd);
    }
    d->n = 0;
    return rc;
}

/* Renames the temp file into place, creating aa/bb/cc/dd as needed. Each
 * directory created here must itself be made durable in its parent, so the
 * parents go into dirs (when dirs is not NULL), as does the leaf. */
static int ld_rename(ld_store *ls, ld_put *p, ld_dirs *dirs)
{
    /* Ids are time-based and dd changes every 100 ns, so nearly every entry
     * gets a new leaf directory: try the deepest level first and climb only
     * on ENOENT (usually to cc, rarely higher). */
    size_t lvl = 4;
    for (;;) {
        char dir[LD_DIR_LEN + 1];
        size_t len = lvl * 3 - 1;
        memcpy(dir, p->rel, len);
        dir[len] = '\0';
        if (mkdirat(ls->data_fd, dir, 0755) == 0) {
            if (dirs != NULL && ld_dirs_add(dirs, lvl == 1 ? "." : p->rel, lvl == 1 ? 1 : len - 3))
                return KERR_NOMEM;
        } else if (errno == ENOENT && lvl > 1) {
            lvl--;
            continue;
        } else if (errno != EEXIST) {
            return KERR_IO;
        }
        if (lvl == 4)
            break;
        lvl++;
    }
    if (renameat(ls->new_fd, p->tmp, ls->data_fd, p->rel) < 0)
        return KERR_IO;
    if (dirs != NULL && ld_dirs_add(dirs, p->rel, LD_DIR_LEN) < 0)
        return KERR_NOMEM;
    return 0;
}

/* Removes now-empty aa/bb/cc/dd directories, deepest first (KumoMTA prunes
 * them every 10 minutes; here the writer does it as it goes, so no other
 * thread ever races a rename against an rmdir). */
static void ld_prune(ld_store *ls, const char *rel)
{
    for (size_t lvl = 4; lvl >= 1; lvl--) {
        char dir[LD_DIR_LEN + 1];
        size_t len = lvl * 3 - 1;
        memcpy(dir, rel, len);
        dir[len] = '\0';
        /* ENOTEMPTY is the normal way this loop ends. */
        if (unlinkat(ls->data_fd, dir, AT_REMOVEDIR) < 0)
            break;
    }
}

static void ld_put_fail(ld_store *ls, ld_put *p, spool__wop *op, int rc)
{
    if (p->fd >= 0) {
        close(p->fd);
        p->fd = -1;
    }
    /* The temp file may already be gone (renamed or never created). */
    (void)unlinkat(ls->new_fd, p->tmp, 0);
    op->err = rc;
}

static void ld_fail_synced(ld_store *ls, spool__wop *ops, ld_put *puts, size_t np)
{
    for (size_t j = 0; j < np; j++) {
        spool__wop *op = &ops[puts[j].op];
        if (op->sync && op->err == 0)
            ld_put_fail(ls, &puts[j], op, KERR_IO);
    }
}

/* Applies ops[0..n) which hold at most LD_CHUNK synced puts. */
static void ld_apply_chunk(ld_store *ls, spool__wop *ops, size_t n, ld_put *puts, ld_dirs *dirs)
{
    size_t np = 0, k = 0, nsync = 0;
    bool any_sync = false, use_syncfs;

    for (size_t i = 0; i < n; i++)
        nsync += ops[i].buf != NULL && ops[i].sync;
    use_syncfs = nsync >= LD_SYNCFS_MIN;

    /* 1. Write every temp file. Only those waiting for their own fdatasync
     * stay open. */
    for (size_t i = 0; i < n; i++) {
        spool__wop *op = &ops[i];
        ld_put *p;
        char hex[SPOOLID_HEX_LEN + 1];
        op->err = 0;
        if (op->buf == NULL)
            continue;
        p = &puts[np++];
        p->op = i;
        for (int j = 0; j < 16; j++) {
            hex[2 * j] = hexdigits[op->id->b[j] >> 4];
            hex[2 * j + 1] = hexdigits[op->id->b[j] & 15];
        }
        hex[SPOOLID_HEX_LEN] = '\0';
        snprintf(p->tmp, sizeof(p->tmp), "%s.%" PRIu64, hex, ++ls->tmp_seq);
        ld_relpath(op->id, p->rel);
        p->fd = openat(ls->new_fd, p->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (p->fd < 0) {
            op->err = KERR_IO;
            continue;
        }
        if (write_all(p->fd, op->buf, op->len) < 0) {
            ld_put_fail(ls, p, op, KERR_IO);
            continue;
        }
        if (op->sync && !use_syncfs) {
            /* Start write-back of every file before waiting on any, so the
             * fdatasync calls below overlap instead of queueing. A failure
             * here is only a lost hint; fdatasync reports real errors. */
            (void)sync_file_range(p->fd, 0, 0, SYNC_FILE_RANGE_WRITE);
        } else {
            if (close(p->fd) < 0) {
                p->fd = -1;
                ld_put_fail(ls, p, op, KERR_IO);
                continue;
            }
            p->fd = -1;
        }
    }

    /* 2. Make the synced contents durable before any name points at them.
     * syncfs() reports write-back errors of the whole file system since our
     * directory fd was opened (Linux >= 5.8), so an error fails every synced
     * put of the chunk: we cannot tell whose it was. */
    if (use_syncfs && syncfs(ls->new_fd) < 0)
        ld_fail_synced(ls, ops, puts, np);
    for (size_t j = 0; j < np; j++) {
        ld_put *p = &puts[j];
        if (p->fd < 0)
            continue;
        if (fdatasync(p->fd) < 0) {
            ld_put_fail(ls, p, &ops[p->op], KERR_IO);
            continue;
        }
        if (close(p->fd) < 0) {
            p->fd = -1;
            ld_put_fail(ls, p, &ops[p->op], KERR_IO);
            continue;
        }
        p->fd = -1;
    }

    /* 3. Renames and deletes, in queue order. */
    for (size_t i = 0; i < n; i++) {
        spool__wop *op = &ops[i];
        char rel[LD_REL_LEN + 1];
        if (op->buf != NULL) {
            ld_put *p = &puts[k++];
            int rc;
            if (op->err < 0)
                continue;
            rc = ld_rename(ls, p, op->sync && !use_syncfs ? dirs : NULL);
            if (rc < 0)
                ld_put_fail(ls, p, op, rc);
            else
                any_sync |= op->sync;
            continue;
        }
        ld_relpath(op->id, rel);
        if (unlinkat(ls->data_fd, rel, 0) < 0) {
            if (errno != ENOENT && errno != ENOTDIR)
                op->err = KERR_IO;
            continue;
        }
        ld_prune(ls, rel);
    }

    /* 4. Make the new names durable. A failure leaves the files in place but
     * fails every synced put of the chunk: we cannot tell which it hit. */
    if (any_sync && (use_syncfs ? syncfs(ls->data_fd) : ld_dirs_sync(ls, dirs)) < 0) {
        for (size_t j = 0; j < np; j++) {
            spool__wop *op = &ops[puts[j].op];
            if (op->sync && op->err == 0)
                op->err = KERR_IO;
        }
    }
    dirs->n = 0;
}

static void ld_apply(spool_store *st, spool__wop *ops, size_t n)
{
    ld_store *ls = (ld_store *)st;
    ld_dirs dirs = {0};
    ld_put *puts;
    size_t start = 0;

    puts = malloc(sizeof(*puts) * (n < 4 * LD_CHUNK ? n + 1 : 4 * LD_CHUNK));
    if (puts == NULL) {
        for (size_t i = 0; i < n; i++)
            ops[i].err = KERR_NOMEM;
        return;
    }
    /* Cut the group into chunks holding at most LD_CHUNK synced puts (each
     * keeps an fd open) and 4*LD_CHUNK puts in all. */
    while (start < n) {
        size_t end = start, nsync = 0, nput = 0;
        while (end < n) {
            if (ops[end].buf != NULL) {
                if (nput == 4 * LD_CHUNK || (ops[end].sync && nsync == LD_CHUNK))
                    break;
                nput++;
                nsync += ops[end].sync;
            }
            end++;
        }
        ld_apply_chunk(ls, ops + start, end - start, puts, &dirs);
        start = end;
    }
    free(dirs.names);
    free(puts);
}

/* ---- reads ------------------------------------------------------------ */

/* Reads the whole file at dirfd/name into a malloc'd buffer. */
static int ld_read(int dirfd, const char *name, char **out, size_t *len)
{
    struct stat sb;
    size_t have = 0, cap;
    char *buf;
    int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC);

    *out = NULL;
    *len = 0;
    if (fd < 0)
        return (errno == ENOENT || errno == ENOTDIR) ? KERR_NOTFOUND : KERR_IO;
    if (fstat(fd, &sb) < 0) {
        close(fd);
        return KERR_IO;
    }
    cap = (size_t)sb.st_size;
    buf = malloc(cap ? cap : 1);
    if (buf == NULL) {
        close(fd);
        return KERR_NOMEM;
    }
    /* Entries are written once and renamed into place, so the size from
     * fstat is the size; stop at EOF anyway. */
    while (have < cap) {
        ssize_t r = read(fd, buf + have, cap - have);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            free(buf);
            close(fd);
            return KERR_IO;
        }
        if (r == 0)
            break;
        have += (size_t)r;
    }
    close(fd);
    *out = buf;
    *len = have;
    return 0;
}

static int ld_get(spool_store *st, const spoolid *id, char **out, size_t *len)
{
    ld_store *ls = (ld_store *)st;
    char rel[LD_REL_LEN + 1];
    ld_relpath(id, rel);
    return ld_read(ls->data_fd, rel, out, len);
}

typedef struct ld_walk {
    ld_store *ls;
    spool__each_fn each;
    void *ud;
    unsigned *skipped;
    spoolid id;
    bool stop;
} ld_walk;

/* Walks one directory level: depth 0..3 are aa..dd, depth 4 holds entries. */
static int ld_walk_dir(ld_walk *w, int dirfd, int depth)
{
    DIR *d = fdopendir(dirfd);
    struct dirent *de;
    int rc = 0;

    if (d == NULL) {
        close(dirfd);
        return KERR_IO;
    }
    for (;;) {
        errno = 0;
        de = readdir(d);
        if (de == NULL) {
            if (errno != 0)
                rc = KERR_IO;
            break;
        }
        if (de->d_name[0] == '.')
            continue;
        if (depth < 4) {
            int sub;
            if (!hex_bytes(de->d_name, &w->id.b[depth], 1)) {
                (*w->skipped)++;
                continue;
            }
            sub = openat(dirfd, de->d_name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
            if (sub < 0) {
                /* Pruned by the writer since readdir saw it. */
                if (errno != ENOENT)
                    (*w->skipped)++;
                continue;
            }
            rc = ld_walk_dir(w, sub, depth + 1);
        } else {
            char *buf;
            size_t len;
            int r;
            if (!hex_bytes(de->d_name, &w->id.b[4], 12)) {
                (*w->skipped)++;
                continue;
            }
            r = ld_read(dirfd, de->d_name, &buf, &len);
            if (r == KERR_NOTFOUND)
                continue; /* removed since readdir saw it */
            if (r < 0) {
                (*w->skipped)++;
                continue;
            }
            if (w->each(w->ud, &w->id, buf, len) != 0)
                w->stop = true;
            free(buf);
        }
        if (rc < 0 || w->stop)
            break;
    }
    closedir(d);
    return rc;
}

static int ld_iterate(spool_store *st, spool__each_fn each, void *ud, unsigned *skipped)
{
    ld_store *ls = (ld_store *)st;
    ld_walk w = {.ls = ls, .each = each, .ud = ud, .skipped = skipped};
    int fd = openat(ls->data_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return KERR_IO;
    return ld_walk_dir(&w, fd, 0);
}

/* ---- open / close ----------------------------------------------------- */

static void ld_close(spool_store *st)
{
    ld_store *ls = (ld_store *)st;
    if (ls->data_fd >= 0)
        close(ls->data_fd);
    if (ls->new_fd >= 0)
        close(ls->new_fd);
    /* Closing the last fd of the open file description drops the flock. */
    if (ls->lock_fd >= 0)
        close(ls->lock_fd);
    spool__store_fini(&ls->base);
    free(ls);
}

static const spool__backend ld_backend = {
    .apply = ld_apply,
    .get = ld_get,
    .iterate = ld_iterate,
    .close = ld_close,
};

static int ld_lock(ld_store *ls, const char *path, char *err, size_t errlen)
{
    char pid[32];
    struct stat sb;
    int n;

    ls->lock_fd = openat(AT_FDCWD, path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (ls->lock_fd < 0) {
        snprintf(err, errlen, "spool %s: cannot open %s: %s", ls->base.name, path, strerror(errno));
        return KERR_IO;
    }
    /* The sticky bit keeps tmpwatch-like cleaners away from the lock; only
     * a courtesy, as in KumoMTA, so failing to set it is not an error. */
    if (fstat(ls->lock_fd, &sb) == 0)
        (void)fchmod(ls->lock_fd, (sb.st_mode & 07777) | S_ISVTX);
    if (flock(ls->lock_fd, LOCK_EX | LOCK_NB) < 0) {
        int e = errno;
        ssize_t r = pread(ls->lock_fd, pid, sizeof(pid) - 1, 0);
        pid[r > 0 ? r : 0] = '\0';
        pid[strcspn(pid, "\r\n")] = '\0';
        if (e == EWOULDBLOCK) {
            snprintf(err, errlen, "spool %s: %s is locked%s%s%s", ls->base.name, path,
                     pid[0] ? " by pid " : "", pid, pid[0] ? "" : " by another process");
            return KERR_EXISTS;
        }
        snprintf(err, errlen, "spool %s: cannot lock %s: %s", ls->base.name, path, strerror(e));
        return KERR_IO;
    }
    n = snprintf(pid, sizeof(pid), "%ld\n", (long)getpid());
    if (ftruncate(ls->lock_fd, 0) < 0 || pwrite(ls->lock_fd, pid, (size_t)n, 0) != n) {
        snprintf(err, errlen, "spool %s: cannot write %s: %s", ls->base.name, path,
                 strerror(errno));
        return KERR_IO;
    }
    return 0;
}

/* Temp files left by a crash are garbage: their entries never got a name. */
static int ld_clean_new(ld_store *ls)
{
    int fd = openat(ls->new_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *d;
    struct dirent *de;
    int rc = 0;

    if (fd < 0)
        return KERR_IO;
    d = fdopendir(fd);
    if (d == NULL) {
        close(fd);
        return KERR_IO;
    }
    for (;;) {
        errno = 0;
        de = readdir(d);
        if (de == NULL) {
            if (errno != 0)
                rc = KERR_IO;
            break;
        }
        if (de->d_name[0] == '.')
            continue;
        if (unlinkat(ls->new_fd, de->d_name, 0) < 0 && errno != ENOENT)
            rc = KERR_IO;
    }
    closedir(d);
    return rc;
}

int spool__local_disk_open(const spool_params *p, spool_store **out, char *err, size_t errlen)
{
    ld_store *ls;
    size_t plen = strlen(p->path);
    char *sub;
    int rc, dfd;

    *out = NULL;
    ls = calloc(1, sizeof(*ls));
    sub = malloc(plen + 8);
    if (ls == NULL || sub == NULL) {
        free(ls);
        free(sub);
        return KERR_NOMEM;
    }
    ls->lock_fd = ls->new_fd = ls->data_fd = -1;
    spool__store_init(&ls->base, &ld_backend, p);
    ls->base.sync_all = p->flush;
    if (ls->base.name == NULL || ls->base.path == NULL) {
        rc = KERR_NOMEM;
        goto fail;
    }

    if (spool__mkdir_p(p->path) < 0) {
        snprintf(err, errlen, "spool %s: cannot create %s: %s", p->name, p->path, strerror(errno));
        rc = KERR_IO;
        goto fail;
    }
    snprintf(sub, plen + 8, "%s/lock", p->path);
    rc = ld_lock(ls, sub, err, errlen);
    if (rc < 0)
        goto fail;

    snprintf(sub, plen + 8, "%s/new", p->path);
    if (spool__mkdir_p(sub) < 0 ||
        (ls->new_fd = openat(AT_FDCWD, sub, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0)
        goto fail_io;
    snprintf(sub, plen + 8, "%s/data", p->path);
    if (spool__mkdir_p(sub) < 0 ||
        (ls->data_fd = openat(AT_FDCWD, sub, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0)
        goto fail_io;
    /* new/ and data/ may have just been created: make their names durable
     * before any entry below them is acknowledged. */
    dfd = openat(AT_FDCWD, p->path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        goto fail_io;
    if (fsync(dfd) < 0) {
        close(dfd);
        goto fail_io;
    }
    close(dfd);
    if (ld_clean_new(ls) < 0) {
        snprintf(sub, plen + 8, "%s/new", p->path);
        goto fail_io;
    }
    free(sub);
    *out = &ls->base;
    return 0;

fail_io:
    snprintf(err, errlen, "spool %s: %s: %s", p->name, sub, strerror(errno));
    rc = KERR_IO;
fail:
    free(sub);
    ld_close(&ls->base);
    return rc;
}
